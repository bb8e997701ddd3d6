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
//! index) → per-CPU page lists (`pcp`, by CPU) → `ZONE` → `vma::TREE` →
//! `pagetable::TABLE_POOL`.
//! A CPU depot lock may be held while its slab cache is refilled (and so
//! while the zone grows). No code holds a slab cache lock while calling
//! into the buddy: slab refill and release drop the cache lock first, as
//! SLUB does. The atfork handlers take every lock in this order.

use crate::os::{self, PAGE_SHIFT, PAGE_SIZE};
use crate::pcp;
use crate::page::{
    self, Chunk, ChunkSource, Page, PageList, CHUNK_DESC_ALIGN, CHUNK_DESC_SIZE, CHUNK_PAGES,
    CHUNK_SHIFT, CHUNK_SIZE, MAX_ORDER, PG_FREE, PG_NONE, PG_TAIL,
};
use crate::sync::Mutex;
use crate::vma::{self, VmaKind};
use core::sync::atomic::{AtomicBool, AtomicU32, AtomicUsize, Ordering};

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
        unsafe {
            let head = self.free_area[current].first();
            Some(self.take(head, current, order))
        }
    }

    /// Allocates a block of `order` pages at the lowest address any free
    /// block offers, for metadata that is never freed (the page-table
    /// shadow's tables): kept together at the bottom, such pages do not pin
    /// chunks all over the zone, as the kernel groups unmovable pages.
    /// Walks every free list: for rare allocations only.
    ///
    /// # Safety
    /// As [`Zone::alloc`].
    pub unsafe fn alloc_lowest(&mut self, order: usize) -> Option<(*mut Page, bool)> {
        let mut best: Option<(usize, *mut Page, usize)> = None;
        for current in order..NR_ORDERS {
            // SAFETY: entries of our lists are live.
            unsafe {
                self.free_area[current].for_each(|p| {
                    let addr = page::page_address(p);
                    if best.map_or(true, |(a, _, _)| addr < a) {
                        best = Some((addr, p, current));
                    }
                });
            }
        }
        let (_, head, current) = best?;
        // SAFETY: `head` heads a free block on free_area[current].
        Some(unsafe { self.take(head, current, order) })
    }

    /// Takes the free block `head` of order `current` off its list and
    /// splits it down to `order`, the upper halves going back to the lists.
    ///
    /// # Safety
    /// `head` heads a free block on `free_area[current]`, `current >= order`.
    unsafe fn take(&mut self, head: *mut Page, mut current: usize, order: usize) -> (*mut Page, bool) {
        // SAFETY: per the caller.
        unsafe { self.free_area[current].remove(head) };
        self.free_pages -= 1 << current;
        // SAFETY: `head` is the head of a free block we now own.
        let zero = unsafe { (*head).zero };
        let index = Chunk::index_of(head);
        let chunk = Chunk::of_page(head);
        if current == MAX_ORDER {
            // SAFETY: a live chunk; its descriptors are about to be written.
            unsafe { (*chunk).descriptors_released = false };
        }
        while current > order {
            current -= 1;
            // SAFETY: the upper half of the block lies in the same chunk.
            unsafe {
                let upper = Chunk::page(chunk, index + (1 << current));
                (*upper).zero = zero;
                (*upper).span = (*head).span; // keeps the block's decay stamp
                self.push_free(upper, current);
            }
        }
        // SAFETY: `head` is ours now.
        unsafe {
            (*head).set_kind(PG_NONE);
            (*head).order = order as u8;
        }
        (head, zero)
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
            (*merged).span = clock_ms(); // decay stamp: free since now
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
            (*head).span = clock_ms();
            self.push_free(head, MAX_ORDER);
        }
    }

    /// Moves free blocks whose memory is dirty (not known zero) off the
    /// free lists onto `out`, for release without the zone lock: only
    /// blocks of orders below `below_order`, free since at least
    /// `min_age_ms` before `now` (by their decay stamp), lowest orders
    /// first, until `max_pages` pages are taken. An isolated block's head
    /// is `PG_NONE`, so no buddy merges with it meanwhile; its `order`
    /// stays. Give each back with [`Zone::free`] (or, for a whole chunk,
    /// [`Zone::put_free_chunk`]). Returns the pages taken.
    ///
    /// # Safety
    /// The zone's descriptors are live; `out` is a list of the caller's.
    pub unsafe fn isolate_dirty(&mut self, out: &mut PageList, filter: ReleaseFilter) -> usize {
        let mut taken = 0;
        for order in 0..filter.below_order.min(NR_ORDERS) {
            let mut p = self.free_area[order].first();
            while !p.is_null() && taken < filter.max_pages {
                // SAFETY: entries of our lists are live; `next` is read
                // before the entry is unlinked.
                unsafe {
                    let next = (*p).next;
                    let old_enough = filter.now_ms.wrapping_sub((*p).span) >= filter.min_age_ms;
                    let holds_resident = !(*p).zero
                        || (order == MAX_ORDER && !(*Chunk::of_page(p)).descriptors_released);
                    if holds_resident && old_enough {
                        self.free_area[order].remove(p);
                        self.free_pages -= 1 << order;
                        (*p).set_kind(PG_NONE);
                        out.push_front(p);
                        taken += 1 << order;
                    }
                    p = next;
                }
            }
        }
        taken
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
                    for i in 0..1usize << order {
                        assert_eq!(page::tag(p.add(i)), 0, "page {i} of a free block of order {order}: fast-path tag");
                    }
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
    // SAFETY: as above.
    unsafe { page::set_tags(first, npages, 0) };
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
        // A slab's pages get their tag once its node is set (`add_slab`).
        page::set_tags(first, npages, 0);
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
    decay_tick();
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

/// Allocates a block of `order` pages at the lowest free address (see
/// [`Zone::alloc_lowest`]), growing the zone when needed.
pub fn alloc_pages_lowest(order: usize) -> Option<(*mut Page, bool)> {
    debug_assert!(order <= MAX_ORDER);
    loop {
        // SAFETY: the global zone's descriptors are live.
        if let Some(r) = unsafe { ZONE.lock().alloc_lowest(order) } {
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
    crate::pagetable::give_back(page::page_address(head), PAGE_SIZE << order);
    if order <= pcp::PCP_MAX_ORDER {
        // SAFETY: per the caller.
        unsafe { pcp::free(head, order) };
        decay_tick();
        return;
    }
    // SAFETY: per the caller.
    unsafe { ZONE.lock().free(head, order, false) }
    decay_tick();
}

/// Frees the pages `[first, first + npages)` of an earlier allocation.
///
/// # Safety
/// As [`Zone::free_range`].
pub unsafe fn free_page_range(first: *mut Page, npages: usize) {
    if npages != 0 {
        crate::pagetable::give_back(page::page_address(first), npages << PAGE_SHIFT);
        // SAFETY: per the caller.
        unsafe { ZONE.lock().free_range(first, npages) }
        decay_tick();
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
    crate::pagetable::hand_out(page::page_address(head), npages << PAGE_SHIFT, crate::pagetable::Tier::Pages);
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
    // Growing adds up to 4 MiB of resident memory. If the zone holds much
    // free memory it cannot use for this request (free blocks, all of
    // them smaller than `order`), give back as much of it first, so that
    // fragmentation does not make the resident set only grow.
    release_for_growth(order);
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
    use crate::pagetable::{self, Tier};
    pagetable::map(base, CHUNK_SIZE);
    // Adding the chunk wrote every page descriptor: the descriptor's pages
    // are all touched.
    pagetable::map(desc as usize, CHUNK_DESC_SIZE);
    pagetable::hand_out(desc as usize, CHUNK_DESC_SIZE, Tier::Meta);
    if let Some((leaf, len)) = leaf {
        META_BYTES.fetch_add(len, Ordering::Relaxed);
        vma::record(leaf, leaf + len, VmaKind::Meta);
        // A leaf is touched at one entry per chunk; count its first page.
        pagetable::map(leaf, len);
        let slot = ((base >> CHUNK_SHIFT) & 4095) * core::mem::size_of::<usize>();
        pagetable::hand_out(leaf + (slot & !(PAGE_SIZE - 1)), PAGE_SIZE, Tier::Meta);
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

// ---------------------------------------------------------------------------
// Giving memory back: decay, growth and trim.
//
// A free block whose memory may be resident is *dirty*; one known to read
// as zero (fresh from the kernel, or released with `MADV_DONTNEED`) is
// clean (`Page::zero`). Every free block's head carries a decay stamp
// (`Page::span`): the coarse time it became free. Memory goes back to the
// kernel in three ways:
//
// - decay: slow paths (page handout and return, growth) call
//   [`decay_tick`]; a few times per decay period it runs the registered
//   shrinkers (slab caches give back slabs empty for a whole period) and
//   releases dirty free blocks free for at least the period;
// - growth: before the zone grows for a request no free block can serve,
//   up to a chunk's worth of dirty free blocks too small for it go back
//   (see [`grow`]), so fragmentation does not ratchet the resident set;
// - trim ([`release_free_memory`] with no age, from `malloc_trim`):
//   everything free goes back at once.
//
// Release takes the chosen blocks off the free lists under the zone lock
// (isolated: no allocation or merge sees them), calls `madvise` without
// the lock, and frees them again as clean blocks. A wholly free chunk also
// gives back its page descriptors but the first page (which holds the
// head's), so an idle chunk costs 4 KiB of metadata instead of 40.

/// Default [`DECAY_MS`]: how long free memory stays resident, in
/// milliseconds (`BUDDYSLAB_DECAY_MS`).
pub const DEFAULT_DECAY_MS: u32 = 1000;

/// Milliseconds a free block or an empty slab stays resident before decay
/// gives it back. 0 gives memory back at the next tick.
pub static DECAY_MS: AtomicU32 = AtomicU32::new(DEFAULT_DECAY_MS);

/// Slow-path events between two clock reads.
const TICK_EVERY: u32 = 8;
/// The coarse clock: [`os::monotonic_ms`] as last read by a tick.
static CLOCK_MS: AtomicU32 = AtomicU32::new(0);
static EVENTS: AtomicU32 = AtomicU32::new(0);
static LAST_SCAN_MS: AtomicU32 = AtomicU32::new(0);
/// Bytes given back to the kernel so far, by decay, growth and trim.
pub static RELEASED_BYTES: AtomicUsize = AtomicUsize::new(0);

/// The coarse clock in milliseconds (no system call: the value the last
/// tick read).
#[inline]
pub fn clock_ms() -> u32 {
    CLOCK_MS.load(Ordering::Relaxed)
}

/// Which free blocks [`Zone::isolate_dirty`] takes.
#[derive(Clone, Copy, Debug)]
pub struct ReleaseFilter {
    /// Only orders below this.
    pub below_order: usize,
    /// Only blocks whose stamp is at least this old at `now_ms`.
    pub min_age_ms: u32,
    /// The time the ages are measured at.
    pub now_ms: u32,
    /// Stop after this many pages.
    pub max_pages: usize,
}

/// What a shrinker is asked to do: give back what it holds that has been
/// idle for at least `min_age_ms` at `now_ms`, or everything (`None`,
/// `malloc_trim`). It returns the pages (or page-equivalents) it gave back.
#[derive(Clone, Copy, Debug)]
pub struct ShrinkControl {
    /// The coarse clock now.
    pub now_ms: u32,
    /// Idle time that makes memory releasable; `None` for all of it.
    pub min_age_ms: Option<u32>,
}

/// A tier above the buddy allocator that caches memory (slab caches' empty
/// slabs, a cache of large mappings), as the kernel's `struct shrinker`.
/// Must not be called with any allocator lock held, and must take locks
/// only in the global order.
pub type Shrinker = fn(ShrinkControl) -> usize;

const MAX_SHRINKERS: usize = 4;
static SHRINKERS: [AtomicUsize; MAX_SHRINKERS] = [const { AtomicUsize::new(0) }; MAX_SHRINKERS];

/// Registers a shrinker that decay and [`shrink_all`] call. Registering
/// the same function twice is a no-op. False when all slots are taken.
pub fn register_shrinker(f: Shrinker) -> bool {
    let value = f as usize;
    for slot in SHRINKERS.iter() {
        match slot.compare_exchange(0, value, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return true,
            Err(existing) if existing == value => return true,
            Err(_) => {}
        }
    }
    false
}

fn run_shrinkers(control: ShrinkControl) -> usize {
    let mut n = 0;
    for slot in SHRINKERS.iter() {
        let f = slot.load(Ordering::Acquire);
        if f != 0 {
            // SAFETY: only `Shrinker` function pointers are stored.
            let f: Shrinker = unsafe { core::mem::transmute::<usize, Shrinker>(f) };
            n += f(control);
        }
    }
    n
}

/// The decay hook: every tier calls it on its slow paths (never per
/// object). Cheap: one atomic add, a clock read every few calls, and a
/// scan at most four times per decay period, by one thread at a time.
/// Must be called with no allocator lock held but (optionally) CPU depot
/// locks and `CPUS_GROW`, which come first in the lock order.
pub fn decay_tick() {
    if EVENTS.fetch_add(1, Ordering::Relaxed) % TICK_EVERY != 0 {
        return;
    }
    let now = os::monotonic_ms();
    CLOCK_MS.store(now, Ordering::Relaxed);
    let period = DECAY_MS.load(Ordering::Relaxed);
    let last = LAST_SCAN_MS.load(Ordering::Relaxed);
    if now.wrapping_sub(last) < period / 4 {
        return;
    }
    if LAST_SCAN_MS.compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed).is_err() {
        return; // another thread scans
    }
    decay_now(now);
}

/// Runs one decay scan at `now_ms` (the shrinkers, then the buddy's dirty
/// free blocks). Returns the pages given back. Tests and tiers that know
/// the time may call it directly.
pub fn decay_now(now_ms: u32) -> usize {
    let period = DECAY_MS.load(Ordering::Relaxed);
    let shrunk = run_shrinkers(ShrinkControl { now_ms, min_age_ms: Some(period) });
    // Blocks on the per-CPU page lists are invisible to the zone; back on
    // its lists they are stamped now and go at the next scan if unused.
    pcp::drain_all();
    let filter = ReleaseFilter { below_order: NR_ORDERS, min_age_ms: period, now_ms, max_pages: usize::MAX };
    shrunk + (release(filter) >> PAGE_SHIFT)
}

/// Runs every shrinker for everything it holds (for `malloc_trim`).
pub fn shrink_all() -> usize {
    run_shrinkers(ShrinkControl { now_ms: clock_ms(), min_age_ms: None })
}

/// Gives every dirty free block back to the kernel (`malloc_trim`).
/// Returns the bytes released.
pub fn release_free_memory() -> usize {
    pcp::drain_all();
    let filter = ReleaseFilter { below_order: NR_ORDERS, min_age_ms: 0, now_ms: clock_ms(), max_pages: usize::MAX };
    release(filter)
}

/// Free memory held before the zone grows for a block of `order`: when
/// the zone holds more than two chunks' worth of free pages but none in a
/// block big enough, up to a chunk's worth of dirty blocks that are too
/// small go back first (lowest orders first).
fn release_for_growth(order: usize) {
    let free = ZONE.lock().free_pages;
    if free < 2 * CHUNK_PAGES {
        return;
    }
    release(ReleaseFilter { below_order: order, min_age_ms: 0, now_ms: clock_ms(), max_pages: CHUNK_PAGES });
}

/// Isolates the blocks `filter` picks, releases them with
/// `MADV_DONTNEED`, and frees them again as clean. Returns bytes released.
fn release(filter: ReleaseFilter) -> usize {
    let mut taken = PageList::new();
    {
        let mut zone = ZONE.lock();
        // SAFETY: the global zone's descriptors are live.
        if unsafe { zone.isolate_dirty(&mut taken, filter) } == 0 {
            return 0;
        }
    }
    let mut released = 0;
    // SAFETY: the isolated blocks are on no zone list and no one else
    // uses them until they are freed below.
    unsafe {
        taken.for_each(|head| {
            let order = (*head).order as usize;
            let (addr, len) = (page::page_address(head), PAGE_SIZE << order);
            if !(*head).zero && os::madvise_dontneed(addr, len).is_ok() {
                released += len;
                (*head).zero = true;
                crate::pagetable::advised(addr, len);
            }
            let chunk = Chunk::of_page(head);
            if order == MAX_ORDER && !(*chunk).descriptors_released {
                // The chunk is wholly free: its descriptors past the first
                // page are all PG_FREE tails, and reading back zero
                // (PG_NONE) serves them as well. They are written again
                // when the chunk is split.
                let (desc, len) = (chunk as usize + PAGE_SIZE, CHUNK_DESC_SIZE - PAGE_SIZE);
                if os::madvise_dontneed(desc, len).is_ok() {
                    released += len;
                    (*chunk).descriptors_released = true;
                    crate::pagetable::advised(desc, len);
                }
            }
        });
    }
    let mut zone = ZONE.lock();
    loop {
        // SAFETY: isolated from this zone above.
        let head = unsafe { taken.pop_front() };
        if head.is_null() {
            break;
        }
        // SAFETY: an isolated free block of its recorded order. A whole
        // chunk goes back by its head alone, so its released descriptors
        // stay untouched.
        unsafe {
            let order = (*head).order as usize;
            if order == MAX_ORDER {
                (*head).set_kind(PG_FREE);
                zone.put_free_chunk(head, (*head).zero);
            } else {
                zone.free(head, order, (*head).zero);
            }
        }
    }
    drop(zone);
    RELEASED_BYTES.fetch_add(released, Ordering::Relaxed);
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

    /// Trim gives every dirty free block back: chunks that were written
    /// and freed read back as zero and are no longer resident.
    #[test]
    fn release_free_memory_makes_free_chunks_non_resident() {
        let mut blocks = Vec::new();
        for _ in 0..20 {
            let (head, _) = alloc_pages(MAX_ORDER).unwrap();
            // SAFETY: a whole chunk we own; dirty a few pages of it.
            unsafe {
                for i in 0..8 {
                    ((page::page_address(head) + i * 100 * PAGE_SIZE) as *mut u8).write(1);
                }
            }
            blocks.push(page::page_address(head));
        }
        for &addr in &blocks {
            // SAFETY: allocated above with this order.
            unsafe { free_pages(page::page_of(addr), MAX_ORDER) };
        }
        assert!(release_free_memory() >= 20 * 8 * PAGE_SIZE);
        ZONE.lock().check();
        // Other tests share the global zone and may take a chunk meanwhile.
        let idle = blocks.iter().filter(|&&a| os::resident_pages(a, CHUNK_SIZE) == 0).count();
        assert!(idle >= 17, "only {idle} of 20 released chunks are non-resident");
    }

    #[test]
    fn isolate_dirty_takes_what_the_filter_says() {
        let mut t = TestZone::new(1);
        // SAFETY: test zone descriptors are live; blocks are freed once.
        unsafe {
            // Every page handed out singly, then a dirty free block of
            // each order 0..=3 made by freeing neighbours: page 1, pages
            // 4..6, 8..12, 16..24 (their buddies stay allocated).
            for _ in 0..CHUNK_PAGES {
                t.zone.alloc(0).unwrap();
            }
            let chunk = t.chunks[0];
            CLOCK_MS.store(1000, Ordering::Relaxed);
            for index in [1].into_iter().chain(4..6).chain(8..12).chain(16..24) {
                t.zone.free(Chunk::page(chunk, index), 0, false);
            }
            t.zone.check();
            for order in 0..4 {
                assert_eq!(t.zone.nr_free(order), 1);
            }
            let dirty_pages = 1 + 2 + 4 + 8;
            let free_before = t.zone.free_pages;
            let mut out = PageList::new();
            // Too young: nothing.
            let f = ReleaseFilter { below_order: NR_ORDERS, min_age_ms: 500, now_ms: 1200, max_pages: usize::MAX };
            assert_eq!(t.zone.isolate_dirty(&mut out, f), 0);
            // Orders below 2 only.
            let f = ReleaseFilter { below_order: 2, min_age_ms: 500, now_ms: 1600, max_pages: usize::MAX };
            assert_eq!(t.zone.isolate_dirty(&mut out, f), 3);
            assert_eq!(t.zone.free_pages, free_before - 3);
            t.zone.check();
            // The rest, but at most 4 pages: order 2 fits, order 3 not.
            let f = ReleaseFilter { below_order: NR_ORDERS, min_age_ms: 0, now_ms: 1600, max_pages: 4 };
            assert_eq!(t.zone.isolate_dirty(&mut out, f), 4);
            assert_eq!(out.len(), 3);
            let f = ReleaseFilter { below_order: NR_ORDERS, min_age_ms: 0, now_ms: 1600, max_pages: usize::MAX };
            assert_eq!(t.zone.isolate_dirty(&mut out, f), 8);
            assert_eq!(t.zone.free_pages, free_before - dirty_pages);
            // Back as clean blocks, on their lists again.
            loop {
                let h = out.pop_front();
                if h.is_null() {
                    break;
                }
                let order = (*h).order as usize;
                t.zone.free(h, order, true);
            }
            t.zone.check();
            assert_eq!(t.zone.free_pages, free_before);
            assert_eq!(t.zone.isolate_dirty(&mut out, f), 0, "released blocks are clean");
        }
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
