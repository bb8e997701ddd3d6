//! The buddy page allocator: `free_area[order]` for orders 0..=10.
//!
//! A block of order `k` is `2^k` pages, aligned to its own size inside a
//! 4 MiB chunk. Allocation takes the smallest free block of at least the
//! wanted order and splits it, putting the upper halves back on the lower
//! free lists. Freeing looks at the block's buddy, at page index
//! `index ^ (1 << order)`; when the buddy is a free block of the same order
//! the two merge and the search repeats one order up, so a chunk whose pages
//! are all free is always one order-10 block again.
//!
//! Invariants (checked by [`Zone::check`]):
//! - every free block is on exactly one list, `free_area[order]`, its head
//!   descriptor has `kind == PG_FREE` and `order == order`, and its pages do
//!   not overlap any other block;
//! - no two free buddies of the same order exist (they would have merged);
//! - `free_pages == Σ nr_free[k] << k`.
//!
//! The zone grows by whole chunks (4 MiB, aligned): from `brk` when
//! buddyslab is the process's `malloc` (set by the C face), otherwise from
//! `mmap`, and from `mmap` whenever `brk` cannot grow.
//!
//! Lock order (outermost first), shared by every module:
//! `large::CACHE` → `percpu::CPUS_GROW` → CPU depot locks (by CPU, then
//! class) → `slab::NODES_GROW` → `GROW` → slab cache locks (by node, then
//! index) → per-CPU page lists (`pcp`, by CPU) → `ZONE` → `vma::TREE`.
//! A CPU depot lock may be held while its slab cache is refilled (and so
//! while the zone grows). No code holds a slab cache lock while calling
//! into the buddy: slab refill and release drop the cache lock first, as
//! SLUB does. The atfork handlers take every lock in this order.

use crate::os::{self, PAGE_SHIFT, PAGE_SIZE};
use crate::pcp;
use crate::page::{
    self, Chunk, ChunkSource, Page, PageList, CHUNK_DESC_ALIGN, CHUNK_DESC_SIZE, CHUNK_PAGES,
    CHUNK_SIZE, MAX_ORDER, PG_FREE, PG_NONE, PG_TAIL,
};
use crate::sync::Mutex;
use crate::vma::{self, VmaKind};
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Number of orders, `MAX_ORDER + 1`.
pub const NR_ORDERS: usize = MAX_ORDER + 1;

/// The free lists and page counts of all chunks.
pub struct Zone {
    free_area: [PageList; NR_ORDERS],
    /// Pages in all chunks, free or not.
    pub managed_pages: usize,
    /// Pages in free blocks.
    pub free_pages: usize,
    /// Chunks added.
    pub nr_chunks: usize,
}

impl Zone {
    /// A zone with no memory.
    pub const fn new() -> Self {
        Zone {
            free_area: [const { PageList::new() }; NR_ORDERS],
            managed_pages: 0,
            free_pages: 0,
            nr_chunks: 0,
        }
    }

    /// Free blocks of order `order`.
    pub fn nr_free(&self, order: usize) -> usize {
        self.free_area[order].len()
    }

    /// Whether a block of at least `order` is free.
    pub fn can_alloc(&self, order: usize) -> bool {
        self.free_area[order..].iter().any(|l| !l.is_empty())
    }

    /// Adds a whole chunk as one free order-10 block.
    ///
    /// # Safety
    /// `chunk` is an initialised descriptor whose pages are not in use and
    /// not already in this or another zone.
    pub unsafe fn add_chunk(&mut self, chunk: *mut Chunk, zero: bool) {
        // SAFETY: the caller hands over the chunk's pages.
        unsafe {
            let head = Chunk::page(chunk, 0);
            mark(head, CHUNK_PAGES, PG_FREE);
            (*head).zero = zero;
            self.push_free(head, MAX_ORDER);
        }
        self.managed_pages += CHUNK_PAGES;
        self.nr_chunks += 1;
    }

    /// # Safety
    /// `head` heads a free block of `order` that is on no list.
    unsafe fn push_free(&mut self, head: *mut Page, order: usize) {
        // SAFETY: per the caller.
        unsafe {
            (*head).order = order as u8;
            (*head).set_kind(PG_FREE);
            self.free_area[order].push_front(head);
        }
        self.free_pages += 1 << order;
    }

    /// Allocates a block of `order` pages. Returns its head descriptor and
    /// whether its memory is known to be zero. The head's `kind` is left
    /// `PG_NONE`; the caller marks the block for its tier.
    ///
    /// # Safety
    /// The zone's descriptors are live (always true for the global zone).
    pub unsafe fn alloc(&mut self, order: usize) -> Option<(*mut Page, bool)> {
        let mut current = order;
        while current <= MAX_ORDER && self.free_area[current].is_empty() {
            current += 1;
        }
        if current > MAX_ORDER {
            return None;
        }
        // SAFETY: the list is non-empty and its entries are live.
        let head = unsafe { self.free_area[current].pop_front() };
        self.free_pages -= 1 << current;
        // SAFETY: `head` is the head of a free block we now own.
        let zero = unsafe { (*head).zero };
        let index = Chunk::index_of(head);
        let chunk = Chunk::of_page(head);
        while current > order {
            current -= 1;
            // SAFETY: the upper half of the block lies in the same chunk.
            unsafe {
                let upper = Chunk::page(chunk, index + (1 << current));
                (*upper).zero = zero;
                self.push_free(upper, current);
            }
        }
        // SAFETY: `head` is ours now.
        unsafe {
            (*head).set_kind(PG_NONE);
            (*head).order = order as u8;
        }
        Some((head, zero))
    }

    /// Frees the block of `order` pages headed by `head`, merging with free
    /// buddies.
    ///
    /// # Safety
    /// The block was allocated from this zone with this order (or is a
    /// naturally aligned part of such a block) and is no longer used.
    pub unsafe fn free(&mut self, head: *mut Page, order: usize, zero: bool) {
        let chunk = Chunk::of_page(head);
        let mut index = Chunk::index_of(head);
        let mut order = order;
        let mut zero = zero;
        debug_assert!(index & ((1 << order) - 1) == 0, "block not aligned to its order");
        // SAFETY: the block's pages are ours to mark.
        unsafe { mark(head, 1 << order, PG_FREE) };
        while order < MAX_ORDER {
            let buddy_index = index ^ (1 << order);
            // SAFETY: the buddy lies in the same chunk.
            let buddy = unsafe { Chunk::page(chunk, buddy_index) };
            // SAFETY: descriptors in a live chunk are readable under the zone lock.
            let mergeable = unsafe { (*buddy).kind() == PG_FREE && (*buddy).order as usize == order };
            if !mergeable {
                break;
            }
            // SAFETY: the buddy heads a free block of this order, so it is on
            // free_area[order].
            unsafe {
                self.free_area[order].remove(buddy);
                zero &= (*buddy).zero;
            }
            self.free_pages -= 1 << order;
            index &= !(1 << order);
            order += 1;
        }
        // SAFETY: index is the head of the merged free block.
        unsafe {
            let merged = Chunk::page(chunk, index);
            (*merged).zero = zero;
            self.push_free(merged, order);
        }
    }

    /// Frees `npages` pages starting at `first` that were part of an
    /// allocation: the range is cut into naturally aligned blocks, each
    /// freed on its own (as the kernel's `free_pages_exact`).
    ///
    /// # Safety
    /// The pages lie in one chunk, were allocated from this zone and are no
    /// longer used.
    pub unsafe fn free_range(&mut self, first: *mut Page, npages: usize) {
        let chunk = Chunk::of_page(first);
        let mut index = Chunk::index_of(first);
        let end = index + npages;
        while index < end {
            let order = largest_block(index, end - index);
            // SAFETY: [index, index + 2^order) lies inside the range.
            unsafe { self.free(Chunk::page(chunk, index), order, false) };
            index += 1 << order;
        }
    }

    /// Moves every wholly free chunk (order-10 block) off the free lists
    /// onto `out`, so their memory can be released without holding the
    /// zone lock; give each back with [`Zone::put_free_chunk`].
    ///
    /// # Safety
    /// The zone's descriptors are live; `out` is a list of the caller's.
    pub unsafe fn take_free_chunks(&mut self, out: &mut PageList) {
        loop {
            // SAFETY: entries of free_area are live descriptors.
            let head = unsafe { self.free_area[MAX_ORDER].pop_front() };
            if head.is_null() {
                return;
            }
            self.free_pages -= CHUNK_PAGES;
            // SAFETY: just unlinked from our list.
            unsafe { out.push_front(head) };
        }
    }

    /// Puts back a whole free chunk taken by [`Zone::take_free_chunks`].
    ///
    /// # Safety
    /// `head` came from `take_free_chunks` on this zone.
    pub unsafe fn put_free_chunk(&mut self, head: *mut Page, zero: bool) {
        // SAFETY: per the caller, a free order-10 block on no list.
        unsafe {
            (*head).zero = zero;
            self.push_free(head, MAX_ORDER);
        }
    }

    /// Checks the invariants in the module comment; panics on a breach.
    /// For tests and debugging; walks every free list.
    pub fn check(&self) {
        let mut pages = 0usize;
        for (order, list) in self.free_area.iter().enumerate() {
            // SAFETY: entries of our lists are live.
            unsafe {
                list.for_each(|p| {
                    assert_eq!((*p).kind(), PG_FREE, "free block head not PG_FREE");
                    assert_eq!((*p).order as usize, order, "free block on the wrong list");
                    let index = Chunk::index_of(p);
                    assert_eq!(index & ((1 << order) - 1), 0, "free block misaligned");
                    if order < MAX_ORDER {
                        let buddy = Chunk::page(Chunk::of_page(p), index ^ (1 << order));
                        assert!(
                            !((*buddy).kind() == PG_FREE && (*buddy).order as usize == order),
                            "two free buddies of order {order} did not merge"
                        );
                    }
                });
            }
            pages += list.len() << order;
        }
        assert_eq!(pages, self.free_pages, "free page count drifted");
    }
}

impl Default for Zone {
    fn default() -> Self {
        Self::new()
    }
}

/// Largest order of a naturally aligned block starting at page `index`
/// that fits in `npages`.
#[inline]
pub fn largest_block(index: usize, npages: usize) -> usize {
    let by_alignment = if index == 0 { MAX_ORDER } else { index.trailing_zeros() as usize };
    let by_length = (usize::BITS - 1 - npages.leading_zeros()) as usize;
    by_alignment.min(by_length).min(MAX_ORDER)
}

/// Smallest order whose block holds `npages` pages.
#[inline]
pub const fn order_for_pages(npages: usize) -> usize {
    debug_assert!(npages > 0);
    (usize::BITS - (npages - 1).leading_zeros()) as usize
}

/// Sets the kind of `npages` descriptors starting at `first` and clears
/// their `user_class`; for runs handed out whole see [`mark_run`].
///
/// # Safety
/// The pages lie in one chunk and belong to the caller.
pub unsafe fn mark(first: *mut Page, npages: usize, kind: u8) {
    for i in 0..npages {
        // SAFETY: within the chunk by the caller's promise.
        unsafe {
            let p = first.add(i);
            (*p).user_class = 0;
            (*p).set_kind(kind);
        }
    }
}

/// Marks a run handed out whole: the head gets `head_kind`, every other
/// page `PG_TAIL` with its distance to the head, so any address inside the
/// run leads back to the head. Every page gets `user_class` (see
/// [`Page::user_class`]).
///
/// # Safety
/// The pages lie in one chunk and belong to the caller.
pub unsafe fn mark_run(first: *mut Page, npages: usize, head_kind: u8, user_class: u8) {
    // SAFETY: within the chunk by the caller's promise.
    unsafe {
        for i in 1..npages {
            let p = first.add(i);
            (*p).span = i as u32;
            (*p).user_class = user_class;
            (*p).set_kind(PG_TAIL);
        }
        (*first).user_class = user_class;
        (*first).set_kind(head_kind);
    }
}

// ---------------------------------------------------------------------------
// The global zone and its growth.

/// The zone every tier draws pages from.
pub static ZONE: Mutex<Zone> = Mutex::new(Zone::new());

/// Growth state; its lock serialises chunk creation and chunk map updates.
pub struct Growth {
    /// Chunks obtained from `brk`.
    pub brk_chunks: usize,
    /// Chunks obtained from `mmap`.
    pub mmap_chunks: usize,
    /// `brk` refused at least once (another mapping, `RLIMIT_DATA`).
    pub brk_refused: usize,
}

/// Lock for chunk growth and release; first in the lock order.
pub static GROW: Mutex<Growth> = Mutex::new(Growth { brk_chunks: 0, mmap_chunks: 0, brk_refused: 0 });

/// Whether chunks may come from `brk`. Set by the C face: only the
/// process's `malloc` may own the program break.
pub static USE_BRK: AtomicBool = AtomicBool::new(false);

/// Total bytes of metadata mapped (chunk descriptors, chunk map leaves).
pub static META_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Allocates a block of `order` pages from the global zone, growing it by a
/// chunk when needed. Returns the head descriptor and whether the memory is
/// known zero, or `None` when the system has no memory left.
pub fn alloc_pages(order: usize) -> Option<(*mut Page, bool)> {
    debug_assert!(order <= MAX_ORDER);
    loop {
        if order <= pcp::PCP_MAX_ORDER {
            if let Some(r) = pcp::alloc(order) {
                return Some(r);
            }
        }
        // SAFETY: the global zone's descriptors are live.
        if let Some(r) = unsafe { ZONE.lock().alloc(order) } {
            return Some(r);
        }
        if !grow(order) {
            return None;
        }
    }
}

/// Frees a block of `order` pages to the global zone.
///
/// # Safety
/// `head` was returned by [`alloc_pages`] with this `order` and is unused.
pub unsafe fn free_pages(head: *mut Page, order: usize) {
    if order <= pcp::PCP_MAX_ORDER {
        // SAFETY: per the caller.
        return unsafe { pcp::free(head, order) };
    }
    // SAFETY: per the caller.
    unsafe { ZONE.lock().free(head, order, false) }
}

/// Frees the pages `[first, first + npages)` of an earlier allocation.
///
/// # Safety
/// As [`Zone::free_range`].
pub unsafe fn free_page_range(first: *mut Page, npages: usize) {
    if npages != 0 {
        // SAFETY: per the caller.
        unsafe { ZONE.lock().free_range(first, npages) }
    }
}

/// Live page-tier runs (requests served with whole pages).
pub static NR_PAGE_RUNS: AtomicUsize = AtomicUsize::new(0);
/// Pages in live page-tier runs.
pub static PAGE_RUN_PAGES: AtomicUsize = AtomicUsize::new(0);

/// Allocates exactly `npages` pages aligned to `2^align_order` pages, as
/// the kernel's `alloc_pages_exact`: a block of the covering order is taken
/// and the pages past `npages` go straight back to the free lists. The run
/// is marked `PG_PAGES` with `span == npages`. Returns the head and whether
/// the memory is known zero.
pub fn alloc_pages_exact(npages: usize, align_order: usize) -> Option<(*mut Page, bool)> {
    debug_assert!((1..=CHUNK_PAGES).contains(&npages) && align_order <= MAX_ORDER);
    let order = order_for_pages(npages).max(align_order);
    let (head, zero) = alloc_pages(order)?;
    // SAFETY: the block is ours; the tail pages go back unused.
    unsafe {
        mark_run(head, npages, crate::page::PG_PAGES, 0);
        (*head).span = npages as u32;
        free_page_range(head.add(npages), (1 << order) - npages);
    }
    NR_PAGE_RUNS.fetch_add(1, Ordering::Relaxed);
    PAGE_RUN_PAGES.fetch_add(npages, Ordering::Relaxed);
    Some((head, zero))
}

/// Frees a run from [`alloc_pages_exact`].
///
/// # Safety
/// `head` heads a live run (`PG_PAGES`) that nothing uses any more.
pub unsafe fn free_pages_exact(head: *mut Page) {
    // SAFETY: per the caller.
    let npages = unsafe { (*head).span } as usize;
    NR_PAGE_RUNS.fetch_sub(1, Ordering::Relaxed);
    PAGE_RUN_PAGES.fetch_sub(npages, Ordering::Relaxed);
    // SAFETY: per the caller.
    unsafe { free_page_range(head, npages) };
}

/// Shrinks a run from [`alloc_pages_exact`] to `npages` pages in place,
/// freeing the pages past the new end.
///
/// # Safety
/// `head` heads a live run of at least `npages` pages (`npages >= 1`);
/// the pages past `npages` are no longer used.
pub unsafe fn shrink_pages_exact(head: *mut Page, npages: usize) {
    // SAFETY: per the caller.
    unsafe {
        let old = (*head).span as usize;
        debug_assert!(npages >= 1 && npages <= old);
        (*head).span = npages as u32;
        PAGE_RUN_PAGES.fetch_sub(old - npages, Ordering::Relaxed);
        free_page_range(head.add(npages), old - npages);
    }
}

/// Adds one chunk to the zone. Returns false when no memory could be had.
#[cold]
#[inline(never)]
fn grow(order: usize) -> bool {
    crate::heap::ensure_init();
    let mut growth = GROW.lock();
    if ZONE.lock().can_alloc(order) {
        return true; // another thread grew the zone while we waited
    }
    let Some((base, source)) = map_chunk(&mut growth) else { return false };
    let Ok(desc) = map_aligned(CHUNK_DESC_SIZE, CHUNK_DESC_ALIGN) else {
        // SAFETY: the chunk was mapped just now and is unused.
        unsafe { unmap_chunk(base, source) };
        return false;
    };
    META_BYTES.fetch_add(CHUNK_DESC_SIZE, Ordering::Relaxed);
    let desc = desc as *mut Chunk;
    // SAFETY: `desc` is fresh zeroed memory of the right size and alignment.
    unsafe { Chunk::init(desc, base, source) };
    // SAFETY: initialised, unpublished, registration serialised by GROW.
    let leaf = match unsafe { page::register_chunk(desc) } {
        Ok(leaf) => leaf,
        Err(_) => {
            // SAFETY: nothing refers to either mapping yet.
            unsafe {
                unmap_chunk(base, source);
                let _ = os::munmap(desc as usize, CHUNK_DESC_SIZE);
            }
            return false;
        }
    };
    // SAFETY: the chunk is published and its pages are unused; fresh memory
    // from the kernel reads as zero.
    unsafe { ZONE.lock().add_chunk(desc, true) };
    drop(growth);
    // Record the regions after releasing GROW: inserting may allocate a
    // tree node, which may need pages, which may grow the zone again.
    let kind = match source {
        ChunkSource::Brk => VmaKind::Heap,
        ChunkSource::Mmap => VmaKind::Chunk,
    };
    vma::record(base, base + CHUNK_SIZE, kind);
    vma::record(desc as usize, desc as usize + CHUNK_DESC_SIZE, VmaKind::Meta);
    if let Some((leaf, len)) = leaf {
        META_BYTES.fetch_add(len, Ordering::Relaxed);
        vma::record(leaf, leaf + len, VmaKind::Meta);
    }
    true
}

/// Gets 4 MiB of aligned address space: from `brk` if allowed and possible,
/// otherwise from `mmap`.
fn map_chunk(growth: &mut Growth) -> Option<(usize, ChunkSource)> {
    if USE_BRK.load(Ordering::Relaxed) {
        let current = os::brk_current();
        let start = align_up(current, CHUNK_SIZE);
        if let Some(want) = start.checked_add(CHUNK_SIZE) {
            // SAFETY: growing the break only adds fresh pages.
            if unsafe { os::brk_set(want) } == want {
                growth.brk_chunks += 1;
                return Some((start, ChunkSource::Brk));
            }
        }
        growth.brk_refused += 1;
    }
    let base = map_aligned(CHUNK_SIZE, CHUNK_SIZE).ok()?;
    growth.mmap_chunks += 1;
    Some((base, ChunkSource::Mmap))
}

/// # Safety
/// The chunk at `base` is unused and unpublished.
unsafe fn unmap_chunk(base: usize, source: ChunkSource) {
    match source {
        // A chunk at the top of the break could be given back with brk, but
        // this only runs on a failed grow; leave the break where it is.
        ChunkSource::Brk => {}
        // SAFETY: per the caller.
        ChunkSource::Mmap => unsafe {
            let _ = os::munmap(base, CHUNK_SIZE);
        },
    }
}

/// Maps `len` bytes aligned to `align` (a power of two ≥ a page) by mapping
/// `len + align` and trimming both ends.
pub fn map_aligned(len: usize, align: usize) -> Result<usize, os::Errno> {
    debug_assert!(align.is_power_of_two() && align >= PAGE_SIZE && len % PAGE_SIZE == 0);
    if align == PAGE_SIZE {
        return os::mmap_anonymous(len, false);
    }
    let span = len.checked_add(align - PAGE_SIZE).ok_or(os::Errno(libc::ENOMEM))?;
    let raw = os::mmap_anonymous(span, false)?;
    let start = align_up(raw, align);
    // SAFETY: the head and tail slack are parts of our fresh mapping that
    // nobody has seen.
    unsafe {
        if start > raw {
            let _ = os::munmap(raw, start - raw);
        }
        let end = start + len;
        if raw + span > end {
            let _ = os::munmap(end, raw + span - end);
        }
    }
    Ok(start)
}

/// Rounds `x` up to a multiple of `align` (a power of two). Wraps to 0 on
/// overflow; callers that take sizes from users check first.
#[inline]
pub const fn align_up(x: usize, align: usize) -> usize {
    x.wrapping_add(align - 1) & !(align - 1)
}

/// Pages needed for `bytes`.
#[inline]
pub const fn pages_for(bytes: usize) -> usize {
    (bytes + PAGE_SIZE - 1) >> PAGE_SHIFT
}

/// Releases wholly free chunks' memory to the OS with `MADV_DONTNEED`,
/// keeping the address space. Chunks already known zero are skipped.
/// Returns the bytes released.
pub fn release_free_chunks() -> usize {
    // Take every wholly free chunk off the free lists at once, release
    // their memory without the zone lock, then put them all back: each
    // chunk is looked at exactly once.
    pcp::drain_all();
    let mut taken = PageList::new();
    {
        let mut zone = ZONE.lock();
        // SAFETY: the global zone's descriptors are live.
        unsafe { zone.take_free_chunks(&mut taken) };
    }
    let mut released = 0;
    // SAFETY: the chunks are off the free lists, so nobody else uses them.
    unsafe {
        taken.for_each(|head| {
            if !(*head).zero && os::madvise_dontneed(page::page_address(head), CHUNK_SIZE).is_ok() {
                released += CHUNK_SIZE;
                (*head).zero = true;
            }
        });
    }
    let mut zone = ZONE.lock();
    loop {
        // SAFETY: taken from this zone above.
        let head = unsafe { taken.pop_front() };
        if head.is_null() {
            break;
        }
        // SAFETY: as above; `zero` was set when released.
        unsafe { zone.put_free_chunk(head, (*head).zero) };
    }
    released
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::collections::BTreeMap;

    /// A private zone over chunks mapped for the test (not published in the
    /// chunk map: the zone never looks there).
    struct TestZone {
        zone: Zone,
        chunks: Vec<*mut Chunk>,
    }

    impl TestZone {
        fn new(nr_chunks: usize) -> Self {
            let mut zone = Zone::new();
            let mut chunks = Vec::new();
            for i in 0..nr_chunks {
                let desc = map_aligned(CHUNK_DESC_SIZE, CHUNK_DESC_ALIGN).unwrap() as *mut Chunk;
                // A fake base: the zone only does index arithmetic on it.
                // SAFETY: fresh zeroed memory.
                unsafe {
                    Chunk::init(desc, (i + 1) << 40, ChunkSource::Mmap);
                    zone.add_chunk(desc, true);
                }
                chunks.push(desc);
            }
            TestZone { zone, chunks }
        }
    }

    impl Drop for TestZone {
        fn drop(&mut self) {
            for &c in &self.chunks {
                // SAFETY: mapped in `new`, unused now.
                unsafe { os::munmap(c as usize, CHUNK_DESC_SIZE).unwrap() };
            }
        }
    }

    /// More wholly free chunks than any batch size: every one is released
    /// once, and the call returns (it used to loop forever past 16).
    #[test]
    fn release_free_chunks_terminates_and_releases_each_once() {
        let mut blocks = Vec::new();
        for _ in 0..20 {
            let (head, _) = alloc_pages(MAX_ORDER).unwrap();
            // SAFETY: a whole chunk we own; dirty one page of it.
            unsafe { (page::page_address(head) as *mut u8).write(1) };
            blocks.push(head);
        }
        for head in blocks {
            // SAFETY: allocated above with this order.
            unsafe { free_pages(head, MAX_ORDER) };
        }
        // Other tests share the global zone; allow them a few chunks.
        assert!(release_free_chunks() >= 17 * CHUNK_SIZE);
        assert_eq!(release_free_chunks(), 0, "zero chunks are not released twice");
        ZONE.lock().check();
    }

    #[test]
    fn order_helpers() {
        assert_eq!(order_for_pages(1), 0);
        assert_eq!(order_for_pages(2), 1);
        assert_eq!(order_for_pages(3), 2);
        assert_eq!(order_for_pages(1024), 10);
        assert_eq!(largest_block(0, 1024), 10);
        assert_eq!(largest_block(4, 100), 2);
        assert_eq!(largest_block(8, 5), 2);
        assert_eq!(largest_block(5, 1), 0);
    }

    #[test]
    fn split_and_coalesce_back_to_one_chunk() {
        let mut t = TestZone::new(1);
        // SAFETY: test zone descriptors are live.
        unsafe {
            let (a, zero) = t.zone.alloc(0).unwrap();
            assert!(zero);
            // Splitting an order-10 block for one page leaves one free block
            // at every order 0..=9.
            for order in 0..MAX_ORDER {
                assert_eq!(t.zone.nr_free(order), 1, "order {order}");
            }
            assert_eq!(t.zone.nr_free(MAX_ORDER), 0);
            t.zone.check();
            t.zone.free(a, 0, false);
            t.zone.check();
            assert_eq!(t.zone.nr_free(MAX_ORDER), 1);
            assert_eq!(t.zone.free_pages, CHUNK_PAGES);
        }
    }

    #[test]
    fn free_range_of_an_exact_allocation() {
        let mut t = TestZone::new(1);
        // SAFETY: test zone descriptors are live.
        unsafe {
            let (head, _) = t.zone.alloc(3).unwrap();
            // Keep 5 of 8 pages, give the other 3 back, then the 5.
            t.zone.free_range(head.add(5), 3);
            t.zone.check();
            assert_eq!(t.zone.free_pages, CHUNK_PAGES - 5);
            t.zone.free_range(head, 5);
            t.zone.check();
            assert_eq!(t.zone.nr_free(MAX_ORDER), 1);
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Alloc(usize),
        Free(usize),
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec(
            prop_oneof![
                3 => (0usize..=MAX_ORDER).prop_map(Op::Alloc),
                2 => any::<usize>().prop_map(Op::Free),
            ],
            1..400,
        )
    }

    proptest! {
        /// Random alloc/free sequences against a model of live blocks: no
        /// two live blocks overlap, blocks are aligned to their order, the
        /// page counts match, and freeing everything coalesces back to whole
        /// chunks.
        #[test]
        fn model_no_overlap_and_full_coalescing(ops in ops()) {
            let mut t = TestZone::new(3);
            // (chunk index, first page) -> (order, head)
            let mut live: BTreeMap<(usize, usize), (usize, *mut Page)> = BTreeMap::new();
            let mut live_pages = 0usize;
            for op in ops {
                match op {
                    Op::Alloc(order) => {
                        // SAFETY: test zone descriptors are live.
                        match unsafe { t.zone.alloc(order) } {
                            Some((head, _)) => {
                                let chunk = Chunk::of_page(head);
                                let ci = t.chunks.iter().position(|&c| c == chunk).unwrap();
                                let index = Chunk::index_of(head);
                                prop_assert_eq!(index % (1 << order), 0);
                                let end = index + (1 << order);
                                for (&(c, start), &(o, _)) in &live {
                                    if c == ci {
                                        prop_assert!(end <= start || start + (1 << o) <= index,
                                            "overlap: new [{index},{end}) with [{start},{})", start + (1 << o));
                                    }
                                }
                                live.insert((ci, index), (order, head));
                                live_pages += 1 << order;
                            }
                            None => prop_assert!(t.zone.free_pages < 3 * CHUNK_PAGES),
                        }
                    }
                    Op::Free(pick) => {
                        if live.is_empty() { continue; }
                        let key = *live.keys().nth(pick % live.len()).unwrap();
                        let (order, head) = live.remove(&key).unwrap();
                        // SAFETY: allocated above with this order, unused.
                        unsafe { t.zone.free(head, order, false) };
                        live_pages -= 1 << order;
                    }
                }
                t.zone.check();
                prop_assert_eq!(t.zone.free_pages + live_pages, 3 * CHUNK_PAGES);
            }
            for (_, (order, head)) in std::mem::take(&mut live) {
                // SAFETY: as above.
                unsafe { t.zone.free(head, order, false) };
            }
            t.zone.check();
            prop_assert_eq!(t.zone.nr_free(MAX_ORDER), 3);
            for order in 0..MAX_ORDER {
                prop_assert_eq!(t.zone.nr_free(order), 0);
            }
        }
    }
}
