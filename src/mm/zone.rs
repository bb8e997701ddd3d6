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
//! Each order keeps its free blocks on lists by the group of their chunk
//! (slabs, or exact page runs; a wholly free chunk is of no group) and by
//! whether their memory may be resident (*dirty*) or is known to read as
//! zero (*clean*); allocation takes a dirty block of its own group first
//! (see `FreeArea` and "Giving memory back" below).
//!
//! Invariants (checked by [`Zone::check`]):
//! - every free block is on exactly one list, `free_area[order]`'s list
//!   for its chunk's group (no group for order 10, and only there) and its
//!   `zero` flag; its head descriptor has `kind == PG_FREE` and
//!   `order == order`, and its pages do not overlap any other block;
//! - no two free buddies of the same order exist (they would have merged);
//! - `free_pages == Σ nr_free[k] << k`, `dirty_pages` likewise over the
//!   dirty lists.
//!
//! The zone grows by whole chunks (4 MiB, aligned): from `brk` when
//! buddyslab is the process's `malloc` (set by the C face), otherwise from
//! `mmap`, and from `mmap` whenever `brk` cannot grow.
//!
//! Lock order (outermost first), shared by every module:
//! `large::CACHE` → `percpu::CPUS_GROW` → CPU depot locks (by CPU, then
//! class) → `slab::NODES_GROW` → `GROW` → `CHUNKS_AHEAD` → `DESCS_AHEAD`
//! → slab cache locks (by node, then index) → per-CPU page lists (`pcp`, by CPU) → `ZONE` → `vma::TREE` →
//! `pagetable::TABLE_POOL` → `profile::STATE` (a leaf: nothing is locked
//! while it is held). (`GROW` is only ever tried, never waited for,
//! outside the atfork handlers, and holds nothing else.)
//! No code holds a CPU depot or slab cache lock while calling into the
//! buddy: slab refill and release drop them first, as SLUB does. Code that
//! calls into the buddy holding another lock allocation needs
//! (`large::CACHE`, `CPUS_GROW`, `NODES_GROW`) holds a
//! [`defer_decay`] guard, so no decay scan, and none of its system calls,
//! runs under that lock. The atfork handlers take every lock in this order.

use super::page::{
    self, Chunk, Page, PageList, CHUNK_PAGES, GROUP_FREE, GROUP_RUNS, GROUP_SLABS, MAX_ORDER, NR_GROUPS, PG_FREE,
    PG_NONE, PG_TAIL,
};
use crate::os::sync::Mutex;
use core::sync::atomic::{AtomicU32, Ordering};

/// Number of orders, `MAX_ORDER + 1`.
pub const NR_ORDERS: usize = MAX_ORDER + 1;

/// Index, in [`FreeArea::lists`], of the list of blocks whose memory may
/// be resident.
const DIRTY: usize = 0;
/// Index, in [`FreeArea::lists`], of the list of blocks that read as zero.
const CLEAN: usize = 1;

/// One order's free blocks, kept apart twice.
///
/// By whether their memory may be resident, as jemalloc keeps dirty
/// extents apart from purged ones. Dirty blocks (`zero == false`) are
/// pushed at the front when freed: allocation takes the most recently
/// freed, decay releases from the back, where the blocks idle longest
/// are. Clean blocks (`zero == true`: fresh from the kernel, or released)
/// are handed out only when no dirty block serves, so released memory is
/// not faulted in again while resident free memory is at hand.
///
/// And by their chunk's group ([`Chunk::group`]), as the kernel keeps the
/// pageblocks of each migrate type apart. Slabs take naturally aligned
/// blocks of a power-of-two size; exact page runs take any number of
/// pages and leave odd pieces behind. In chunks of their own, the runs'
/// pieces serve other runs (see [`Zone::alloc_from_fragments`]) instead of
/// being taken by slabs that then keep the runs' pages from merging, and
/// slabs keep finding aligned blocks. A wholly free chunk (order 10)
/// belongs to no group; a group takes another's blocks only before the
/// zone would grow.
struct FreeArea {
    /// `[group][DIRTY or CLEAN]`.
    lists: [[PageList; 2]; NR_GROUPS],
}

impl FreeArea {
    const fn new() -> Self {
        FreeArea { lists: [const { [const { PageList::new() }; 2] }; NR_GROUPS] }
    }

    fn len(&self) -> usize {
        self.lists.iter().flatten().map(PageList::len).sum()
    }

    fn dirty_len(&self) -> usize {
        self.lists.iter().map(|l| l[DIRTY].len()).sum()
    }

    fn is_empty(&self) -> bool {
        self.lists.iter().flatten().all(PageList::is_empty)
    }

    /// The list a free block of `order` belongs on, by its chunk's group
    /// and its `zero` flag.
    ///
    /// # Safety
    /// `head` is a live descriptor in a live chunk.
    unsafe fn list_for(&mut self, head: *mut Page, order: usize) -> &mut PageList {
        // SAFETY: per the caller.
        unsafe { &mut self.lists[group_of(head, order) as usize][(*head).zero as usize] }
    }
}

/// The group whose lists hold a free block of `order` headed by `head`.
///
/// # Safety
/// `head` is a live descriptor in a live chunk.
#[inline]
unsafe fn group_of(head: *mut Page, order: usize) -> u8 {
    if order == MAX_ORDER {
        GROUP_FREE
    } else {
        // SAFETY: per the caller.
        unsafe { (*Chunk::of_page(head)).group }
    }
}

/// The free lists and page counts of all chunks.
pub struct Zone {
    free_area: [FreeArea; NR_ORDERS],
    /// Pages in all chunks, free or not.
    pub managed_pages: usize,
    /// Pages in free blocks.
    pub free_pages: usize,
    /// Pages in free blocks whose memory may be resident (dirty).
    pub dirty_pages: usize,
    /// Chunks added.
    pub nr_chunks: usize,
}

/// Whether coarse time `a` is later than `b` (both from [`clock_ms`],
/// which wraps after 49 days).
#[inline]
fn later(a: u32, b: u32) -> bool {
    (a.wrapping_sub(b) as i32) > 0
}

impl Zone {
    /// A zone with no memory.
    pub const fn new() -> Self {
        Zone {
            free_area: [const { FreeArea::new() }; NR_ORDERS],
            managed_pages: 0,
            free_pages: 0,
            dirty_pages: 0,
            nr_chunks: 0,
        }
    }

    /// Free blocks of order `order`.
    pub fn nr_free(&self, order: usize) -> usize {
        self.free_area[order].len()
    }

    /// Free blocks of order `order` whose memory may be resident.
    pub fn nr_dirty(&self, order: usize) -> usize {
        self.free_area[order].dirty_len()
    }

    /// Whether a block of at least `order` is free.
    pub fn can_alloc(&self, order: usize) -> bool {
        self.free_area[order..].iter().any(|a| !a.is_empty())
    }

    /// Adds a whole chunk, made ready by [`prepare_chunk`], as one free
    /// order-10 block.
    ///
    /// # Safety
    /// `chunk` went through [`prepare_chunk`], and its pages are not in use
    /// and not already in this or another zone.
    pub unsafe fn add_chunk(&mut self, chunk: *mut Chunk) {
        // SAFETY: the caller hands over the chunk's pages.
        unsafe { self.push_free(Chunk::page(chunk, 0), MAX_ORDER) };
        self.managed_pages += CHUNK_PAGES;
        self.nr_chunks += 1;
    }

    /// # Safety
    /// `head` heads a free block of `order` that is on no list; its `zero`
    /// and decay stamp (`span`) are set.
    unsafe fn push_free(&mut self, head: *mut Page, order: usize) {
        // SAFETY: per the caller.
        unsafe {
            (*head).order = order as u8;
            (*head).set_kind(PG_FREE);
            if !(*head).zero {
                self.dirty_pages += 1 << order;
            }
            self.free_area[order].list_for(head, order).push_front(head);
        }
        self.free_pages += 1 << order;
    }

    /// # Safety
    /// `head` heads a free block on `free_area[order]`.
    unsafe fn unlink_free(&mut self, head: *mut Page, order: usize) {
        // SAFETY: per the caller; `zero` and the chunk's group say which
        // list holds it.
        unsafe {
            if !(*head).zero {
                self.dirty_pages -= 1 << order;
            }
            self.free_area[order].list_for(head, order).remove(head);
        }
        self.free_pages -= 1 << order;
    }

    /// Allocates a block of `order` pages for a slab or the allocator's
    /// metadata: [`Zone::alloc_in`] for [`GROUP_SLABS`].
    ///
    /// # Safety
    /// The zone's descriptors are live (always true for the global zone).
    pub unsafe fn alloc(&mut self, order: usize) -> Option<(*mut Page, bool)> {
        // SAFETY: per the caller.
        unsafe { self.alloc_in(order, GROUP_SLABS) }
    }

    /// Allocates a block of `order` pages for chunk group `group`
    /// ([`GROUP_SLABS`] or [`GROUP_RUNS`]). Returns its head descriptor and
    /// whether its memory is known to be zero. The head's `kind` is left
    /// `PG_NONE`; the caller marks the block for its tier.
    ///
    /// In this order: a dirty block of the group (split if bigger), a dirty
    /// free chunk, a clean block of the group, a clean free chunk, and only
    /// then a block of the other group, dirty before clean. Dirty first:
    /// its pages are resident already, while each page of a clean block
    /// faults when touched, and clean blocks are often memory that decay
    /// gave back, which must not be faulted in again while resident free
    /// memory is at hand.
    ///
    /// # Safety
    /// The zone's descriptors are live (always true for the global zone).
    pub unsafe fn alloc_in(&mut self, order: usize, group: u8) -> Option<(*mut Page, bool)> {
        debug_assert!(group == GROUP_SLABS || group == GROUP_RUNS);
        let other = if group == GROUP_SLABS { GROUP_RUNS } else { GROUP_SLABS };
        let first_in = |zone: &Self, g: u8, zero: usize| {
            (order..MAX_ORDER).find_map(|o| {
                let p = zone.free_area[o].lists[g as usize][zero].first();
                (!p.is_null()).then_some((p, o))
            })
        };
        let free_chunk = |zone: &Self, zero: usize| {
            let p = zone.free_area[MAX_ORDER].lists[GROUP_FREE as usize][zero].first();
            (!p.is_null()).then_some((p, MAX_ORDER))
        };
        let found = first_in(self, group, DIRTY)
            .or_else(|| free_chunk(self, DIRTY))
            .or_else(|| first_in(self, group, CLEAN))
            .or_else(|| free_chunk(self, CLEAN))
            .or_else(|| first_in(self, other, DIRTY))
            .or_else(|| first_in(self, other, CLEAN));
        let (head, current) = found?;
        // SAFETY: `head` heads a free block on free_area[current].
        Some(unsafe { self.take(head, current, order, group) })
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
            for list in self.free_area[current].lists.iter().flatten() {
                // SAFETY: entries of our lists are live.
                unsafe {
                    list.for_each(|p| {
                        let addr = page::page_address(p);
                        if best.is_none_or(|(a, _, _)| addr < a) {
                            best = Some((addr, p, current));
                        }
                    });
                }
            }
        }
        let (_, head, current) = best?;
        // SAFETY: `head` heads a free block on free_area[current].
        Some(unsafe { self.take(head, current, order, GROUP_SLABS) })
    }

    /// Allocates exactly `npages` pages (page-aligned, any count) from free
    /// blocks of chunk group `group` that lie next to each other in memory
    /// though they are not buddies, as an allocator with address-ordered
    /// coalescing (glibc's heap, jemalloc's extents) would: the pieces a
    /// buddy allocator cannot merge (an exact run's freed tail beside a
    /// block freed later) serve runs instead of piling up while bigger
    /// blocks are split for every run. Looks at a few blocks of the two
    /// orders below the run's, dirty ones first, and walks forward from
    /// each over free blocks (a free page right after a free block heads
    /// the next free block: blocks do not overlap). The pages past the run
    /// in its last block go back to the free lists. Returns the run's head
    /// (marked `PG_NONE`, as all its pages are) and whether all of it reads
    /// as zero; `None` when no candidate has room.
    ///
    /// # Safety
    /// The zone's descriptors are live.
    #[link_section = ".text.hot.buddyslab"]
    pub unsafe fn alloc_from_fragments(&mut self, npages: usize, group: u8) -> Option<(*mut Page, bool)> {
        const CANDIDATES: usize = 8;
        let order = order_for_pages(npages);
        if order == 0 || order >= MAX_ORDER {
            return None;
        }
        for zero in [DIRTY, CLEAN] {
            for candidate_order in (order.saturating_sub(2)..order).rev() {
                let mut p = self.free_area[candidate_order].lists[group as usize][zero].first();
                for _ in 0..CANDIDATES {
                    if p.is_null() {
                        break;
                    }
                    // SAFETY: entries of our lists are live; the walk stays
                    // in the candidate's chunk.
                    unsafe {
                        let chunk = Chunk::of_page(p);
                        let start = Chunk::index_of(p);
                        let mut end = start + (1 << candidate_order);
                        while end - start < npages && end < CHUNK_PAGES {
                            let next = Chunk::page(chunk, end);
                            if (*next).kind() != PG_FREE {
                                break;
                            }
                            end += 1 << (*next).order;
                        }
                        if end - start >= npages {
                            return Some(self.take_range(chunk, start, npages));
                        }
                        p = (*p).next;
                    }
                }
            }
        }
        None
    }

    /// Takes the pages from `old` to `npages` after `head` off the free
    /// lists, for the run `head` heads to grow into, if free blocks cover
    /// them (and they stay in its chunk); false, with nothing changed,
    /// otherwise. The caller marks the grown run.
    ///
    /// # Safety
    /// `head` heads a run of `old` pages, fewer than `npages`, handed out
    /// by this zone.
    pub unsafe fn extend_run(&mut self, head: *mut Page, old: usize, npages: usize) -> bool {
        let chunk = Chunk::of_page(head);
        let start = Chunk::index_of(head);
        if start + npages > CHUNK_PAGES {
            return false;
        }
        let mut end = start + old;
        while end < start + npages {
            // SAFETY: a page of the run's chunk. The page right after a
            // block heads the next block, so one that says PG_FREE heads a
            // free block (a block just taken has its head marked first).
            unsafe {
                let p = Chunk::page(chunk, end);
                if (*p).kind() != PG_FREE {
                    return false;
                }
                end += 1 << (*p).order;
            }
        }
        // SAFETY: free blocks start right after the run and cover the growth.
        unsafe { self.take_range(chunk, start + old, npages - old) };
        true
    }

    /// Takes pages `[start, start + npages)` of `chunk`, which free blocks
    /// starting at `start` cover, off the free lists; the rest of the last
    /// block goes back (see [`Zone::push_spare`]). Each block taken has its
    /// head marked `PG_NONE`, which is all a concurrent merge or walk can
    /// look at (a buddy inside a free block is that block's head); the
    /// caller marks the run's pages for its tier, after the zone lock.
    ///
    /// # Safety
    /// Free blocks of this zone start at `start` and cover the range.
    #[link_section = ".text.hot.buddyslab"]
    unsafe fn take_range(&mut self, chunk: *mut Chunk, start: usize, npages: usize) -> (*mut Page, bool) {
        let end = start + npages;
        let mut index = start;
        let mut zero = true;
        let mut spare = None;
        while index < end {
            // SAFETY: per the caller, `index` heads a free block.
            unsafe {
                let p = Chunk::page(chunk, index);
                let order = (*p).order as usize;
                debug_assert!((*p).kind() == PG_FREE && order < MAX_ORDER);
                self.unlink_free(p, order);
                (*p).set_kind(PG_NONE);
                zero &= (*p).zero;
                let block_end = index + (1 << order);
                if block_end > end {
                    spare = Some((block_end, (*p).zero, (*p).span));
                }
                index = block_end;
            }
        }
        // SAFETY: the run is ours; the spare pages are the rest of the last
        // block taken.
        unsafe {
            let head = Chunk::page(chunk, start);
            (*head).order = order_for_pages(npages) as u8;
            if let Some((block_end, spare_zero, stamp)) = spare {
                self.push_spare(chunk, end, block_end, spare_zero, stamp);
            }
            (head, zero)
        }
    }

    /// Puts back pages `[from, to)` of `chunk`, the end of a free block
    /// taken whole (`to` is its end) whose first part became a run, as
    /// naturally aligned free blocks with the block's `zero` and stamp.
    /// They merge with nothing: cut from the front of the rest, each is
    /// bigger than the ones before it, so its buddy lies in the run, never
    /// among them or outside the block. That buddy's first page, which may
    /// still say `PG_FREE` from when the block was free, is marked
    /// `PG_NONE`, so the zone never shows two free buddies; the run's other
    /// pages need not be marked under the lock. The pieces' pages are
    /// `PG_FREE` already, as every page of a free block is.
    ///
    /// # Safety
    /// `[from, to)` is the end of a free block of this zone just taken off
    /// its list, `to` the block's end, and `from` past its start.
    pub(super) unsafe fn push_spare(&mut self, chunk: *mut Chunk, from: usize, to: usize, zero: bool, stamp: u32) {
        let mut i = from;
        while i < to {
            let order = largest_block(i, to - i);
            // SAFETY: per the caller, a free piece of the block nobody has,
            // and its buddy a page of the run.
            unsafe {
                debug_assert!(i ^ (1 << order) < from);
                (*Chunk::page(chunk, i ^ (1 << order))).set_kind(PG_NONE);
                let piece = Chunk::page(chunk, i);
                (*piece).zero = zero;
                (*piece).span = stamp;
                self.push_free(piece, order);
            }
            i += 1 << order;
        }
    }

    /// Takes the free block `head` of order `current` off its list and
    /// splits it down to `order`, the upper halves going back to the lists;
    /// a whole chunk split joins `group`.
    ///
    /// # Safety
    /// `head` heads a free block on `free_area[current]`, `current >= order`.
    #[link_section = ".text.hot.buddyslab"]
    unsafe fn take(&mut self, head: *mut Page, mut current: usize, order: usize, group: u8) -> (*mut Page, bool) {
        // SAFETY: per the caller.
        unsafe { self.unlink_free(head, current) };
        // SAFETY: `head` is the head of a free block we now own.
        let zero = unsafe { (*head).zero };
        let index = Chunk::index_of(head);
        let chunk = Chunk::of_page(head);
        if current == MAX_ORDER {
            // SAFETY: a live chunk; its descriptors are about to be written.
            unsafe {
                (*chunk).descriptors_released = false;
                (*chunk).group = group;
            }
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
    /// buddies; `zero` says whether its memory reads as zero. A dirty block
    /// is stamped free since now.
    ///
    /// # Safety
    /// The block was allocated from this zone with this order (or is a
    /// naturally aligned part of such a block) and is no longer used.
    pub unsafe fn free(&mut self, head: *mut Page, order: usize, zero: bool) {
        // SAFETY: per the caller.
        unsafe { self.free_stamped(head, order, zero, clock_ms()) }
    }

    /// [`Zone::free`] with the time the block's memory was last used: the
    /// merged block keeps the latest stamp of its dirty parts (clean parts
    /// hold nothing resident, so their age does not matter), so that a
    /// released block put back beside an idle dirty buddy does not make the
    /// buddy look freshly used.
    ///
    /// # Safety
    /// As [`Zone::free`].
    #[link_section = ".text.hot.buddyslab"]
    unsafe fn free_stamped(&mut self, head: *mut Page, order: usize, zero: bool, stamp: u32) {
        let chunk = Chunk::of_page(head);
        let mut index = Chunk::index_of(head);
        let mut order = order;
        let mut zero = zero;
        let mut last_used = (!zero).then_some(stamp);
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
                self.unlink_free(buddy, order);
                if !(*buddy).zero {
                    let b = (*buddy).span;
                    last_used = Some(last_used.map_or(b, |s| if later(b, s) { b } else { s }));
                }
                zero &= (*buddy).zero;
            }
            index &= !(1 << order);
            order += 1;
        }
        // SAFETY: index is the head of the merged free block.
        unsafe {
            if order == MAX_ORDER {
                (*chunk).group = GROUP_FREE;
            }
            let merged = Chunk::page(chunk, index);
            (*merged).zero = zero;
            (*merged).span = last_used.unwrap_or(stamp); // decay stamp
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

    /// Puts back a whole free chunk taken by [`Zone::isolate_idle`].
    ///
    /// # Safety
    /// `head` came from `isolate_idle` on this zone, as an order-10 block.
    unsafe fn put_free_chunk(&mut self, head: *mut Page, zero: bool, stamp: u32) {
        // SAFETY: per the caller, a free order-10 block on no list.
        unsafe {
            (*Chunk::of_page(head)).group = GROUP_FREE;
            (*head).zero = zero;
            (*head).span = stamp;
            self.push_free(head, MAX_ORDER);
        }
    }

    /// Takes free blocks that hold resident memory idle for as long as
    /// `filter` asks off the free lists into `out`, for release without
    /// the zone lock; returns how many. Each dirty list is walked from its
    /// back, where the blocks idle longest are, and the walk stops at the
    /// first block used more recently (the lists are in the order blocks
    /// were freed, so the cost is the blocks taken, not the blocks free); a
    /// whole chunk that is clean but whose page descriptors are still
    /// resident is taken too. Highest orders first. An isolated block's
    /// head is `PG_NONE`, so no buddy merges with it meanwhile; its
    /// `order`, `zero` and stamp stay. Give each back with
    /// [`Zone::put_back_released`].
    ///
    /// # Safety
    /// The zone's descriptors are live.
    #[link_section = ".text.hot.buddyslab"]
    pub unsafe fn isolate_idle(&mut self, out: &mut [*mut Page], filter: ReleaseFilter) -> usize {
        // SAFETY: entries of our lists are live.
        let idle = |p: *mut Page| filter.idle(unsafe { (*p).span });
        let mut n = 0;
        for order in (0..NR_ORDERS).rev() {
            for group in 0..NR_GROUPS {
                while n < out.len() {
                    let p = self.free_area[order].lists[group][DIRTY].last();
                    if p.is_null() || !idle(p) {
                        break;
                    }
                    // SAFETY: `p` heads a free block on free_area[order].
                    unsafe {
                        self.unlink_free(p, order);
                        (*p).set_kind(PG_NONE);
                    }
                    out[n] = p;
                    n += 1;
                }
            }
        }
        // Wholly free clean chunks with resident descriptors: few, walked whole.
        let mut p = self.free_area[MAX_ORDER].lists[GROUP_FREE as usize][CLEAN].first();
        while !p.is_null() && n < out.len() {
            // SAFETY: entries of our lists are live; `next` is read before
            // the entry is unlinked.
            unsafe {
                let next = (*p).next;
                if !(*Chunk::of_page(p)).descriptors_released && idle(p) {
                    self.unlink_free(p, MAX_ORDER);
                    (*p).set_kind(PG_NONE);
                    out[n] = p;
                    n += 1;
                }
                p = next;
            }
        }
        n
    }

    /// Puts back a block taken by [`Zone::isolate_idle`], its memory now
    /// given back to the kernel (`zero`) or not (the `madvise` failed).
    ///
    /// # Safety
    /// `head` came from `isolate_idle` on this zone and is on no list.
    pub unsafe fn put_back_released(&mut self, head: *mut Page, zero: bool) {
        // SAFETY: per the caller: an isolated free block of its recorded
        // order. A whole chunk goes back by its head alone, so its released
        // descriptors stay untouched.
        unsafe {
            let (order, stamp) = ((*head).order as usize, (*head).span);
            if order == MAX_ORDER {
                (*head).set_kind(PG_FREE);
                self.put_free_chunk(head, zero, stamp);
            } else {
                self.free_stamped(head, order, zero, stamp);
            }
        }
    }

    /// Checks the invariants in the module comment; panics on a breach.
    /// For tests and debugging; walks every free list.
    pub fn check(&self) {
        let mut pages = 0usize;
        let mut dirty = 0usize;
        for (order, area) in self.free_area.iter().enumerate() {
            let lists = area.lists.iter().enumerate().flat_map(|(g, l)| [(g, &l[DIRTY], false), (g, &l[CLEAN], true)]);
            for (group, list, clean) in lists {
                assert!(list.is_empty() || (group == GROUP_FREE as usize) == (order == MAX_ORDER), "order {order} on group {group}'s lists");
                // SAFETY: entries of our lists are live.
                unsafe {
                    list.for_each(|p| {
                        assert_eq!((*p).kind(), PG_FREE, "free block head not PG_FREE");
                        assert_eq!((*p).order as usize, order, "free block on the wrong list");
                        assert_eq!((*p).zero, clean, "free block on the wrong one of dirty and clean");
                        assert_eq!((*Chunk::of_page(p)).group as usize, group, "free block on another group's list");
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
                // The list's own count agrees with a walk.
                let mut walked = 0;
                // SAFETY: as above.
                unsafe { list.for_each(|_| walked += 1) };
                assert_eq!(walked, list.len(), "list length drifted");
                if !clean {
                    dirty += list.len() << order;
                }
            }
            pages += area.len() << order;
        }
        assert_eq!(pages, self.free_pages, "free page count drifted");
        assert_eq!(dirty, self.dirty_pages, "dirty page count drifted");
    }
}

impl Default for Zone {
    fn default() -> Self {
        Self::new()
    }
}

/// Writes the descriptor of a new chunk as one free block, `zero` saying
/// whether its memory reads as zero: the head's kind, flags and stamp.
/// The other 1 023 page descriptors stay as fresh memory reads, `PG_NONE`
/// with a zero tag, as those of a chunk whose descriptors were released
/// do: no code reads a page inside a free block but its head (a buddy, a
/// block's successor and the heap map's walk are all heads), and a block
/// handed out has its pages marked for its tier, a block freed has them
/// marked `PG_FREE`. So a descriptor page is written only when a page it
/// describes is first used, or heads a block split off: writing all of
/// them made every process fault in ten pages (40 KiB) of descriptors for
/// its first chunk, most of which describe pages a small program never
/// uses. (`free` of an address in a page never used reports it as not
/// allocated by buddyslab rather than free.)
///
/// # Safety
/// `chunk` is an initialised descriptor ([`Chunk::init`]) in zeroed
/// memory that no zone holds and no one else writes.
pub unsafe fn prepare_chunk(chunk: *mut Chunk, zero: bool) {
    // SAFETY: per the caller, the descriptors are ours to write.
    unsafe {
        let head = Chunk::page(chunk, 0);
        (*chunk).group = GROUP_FREE;
        debug_assert!((1..CHUNK_PAGES).all(|i| (*Chunk::page(chunk, i)).kind() == PG_NONE));
        (*head).set_kind(PG_FREE);
        (*head).zero = zero;
        (*head).span = clock_ms();
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


/// The coarse clock: [`os::monotonic_ms`] as last read by a tick.
pub(super) static CLOCK_MS: AtomicU32 = AtomicU32::new(0);

/// The coarse clock in milliseconds (no system call: the value the last
/// tick read).
#[inline]
pub fn clock_ms() -> u32 {
    CLOCK_MS.load(Ordering::Relaxed)
}

/// Which free blocks [`Zone::isolate_idle`] takes.
#[derive(Clone, Copy, Debug)]
pub struct ReleaseFilter {
    /// Only blocks idle for at least this long at `now_ms`; `None` for
    /// every dirty block whatever its age.
    pub min_age_ms: Option<u32>,
    /// The time the ages are measured at.
    pub now_ms: u32,
}

impl ReleaseFilter {
    /// Every dirty block idle for `min_age_ms` (`None`: every one).
    pub const fn idle_for(min_age_ms: Option<u32>, now_ms: u32) -> Self {
        ReleaseFilter { min_age_ms, now_ms }
    }

    /// Whether a block stamped `stamp` is idle long enough. A stamp later
    /// than `now_ms` (another thread's tick moved the clock on) is young.
    pub(super) fn idle(&self, stamp: u32) -> bool {
        match self.min_age_ms {
            None => true,
            Some(min) => (self.now_ms.wrapping_sub(stamp) as i32) >= min as i32,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::page::*;
    use crate::mm::reclaim::for_each_dirty_run;
    use crate::mm::*;
    use crate::os::{self, map_aligned, PAGE_SIZE};
    use core::ptr;
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
                    prepare_chunk(desc, true);
                    zone.add_chunk(desc);
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

    /// Hands out every page of the test zone's first chunk singly, then
    /// frees pages `1`, `4..6`, `8..12` and `16..24` at coarse times 1000,
    /// 1100, 1200 and 1300: a dirty free block of each order 0..=3 (their
    /// buddies stay allocated), freed in that order.
    ///
    /// # Safety
    /// `t` is fresh.
    unsafe fn four_dirty_blocks(t: &mut TestZone) {
        // SAFETY: test zone descriptors are live; blocks are freed once.
        unsafe {
            for _ in 0..CHUNK_PAGES {
                t.zone.alloc(0).unwrap();
            }
            let chunk = t.chunks[0];
            let groups: [(core::ops::Range<usize>, u32); 4] = [(1..2, 1000), (4..6, 1100), (8..12, 1200), (16..24, 1300)];
            for (pages, stamp) in groups {
                for index in pages {
                    t.zone.free_stamped(Chunk::page(chunk, index), 0, false, stamp);
                }
            }
            t.zone.check();
        }
    }

    #[test]
    fn isolate_idle_takes_only_blocks_idle_long_enough() {
        let mut t = TestZone::new(1);
        // SAFETY: test zone descriptors are live; isolated blocks go back once.
        unsafe {
            four_dirty_blocks(&mut t);
            for order in 0..4 {
                assert_eq!((t.zone.nr_free(order), t.zone.nr_dirty(order)), (1, 1), "order {order}");
            }
            let dirty_pages = 1 + 2 + 4 + 8;
            assert_eq!(t.zone.dirty_pages, dirty_pages);
            let free_before = t.zone.free_pages;
            let mut out = [ptr::null_mut(); 8];
            // Idle for 500 ms at 1600: the blocks freed at 1000 and 1100.
            let f = ReleaseFilter::idle_for(Some(500), 1600);
            assert_eq!(t.zone.isolate_idle(&mut out, f), 2);
            assert_eq!(out[..2].iter().map(|&p| (*p).order).collect::<Vec<_>>(), [1, 0], "highest order first");
            assert_eq!(t.zone.free_pages, free_before - 3);
            t.zone.check();
            // A clock behind the stamps (another thread's tick) takes nothing.
            let f = ReleaseFilter::idle_for(Some(0), 900);
            assert_eq!(t.zone.isolate_idle(&mut out[2..], f), 0);
            // Trim takes the rest, as far as `out` has room.
            let f = ReleaseFilter::idle_for(None, 0);
            assert_eq!(t.zone.isolate_idle(&mut out[2..3], f), 1);
            assert_eq!((*out[2]).order, 3);
            assert_eq!(t.zone.isolate_idle(&mut out[3..], f), 1);
            assert_eq!(t.zone.free_pages, free_before - dirty_pages);
            assert_eq!(t.zone.dirty_pages, 0);
            // Back as released: clean, on their lists again, never taken again.
            for &p in &out[..4] {
                t.zone.put_back_released(p, true);
            }
            t.zone.check();
            assert_eq!(t.zone.free_pages, free_before);
            assert_eq!(t.zone.dirty_pages, 0);
            assert_eq!(t.zone.isolate_idle(&mut out, f), 0, "released blocks are clean");
        }
    }

    #[test]
    fn a_released_block_put_back_keeps_its_dirty_buddy_s_age() {
        let mut t = TestZone::new(1);
        // SAFETY: test zone descriptors are live; blocks are freed once.
        unsafe {
            let (a, _) = t.zone.alloc(0).unwrap();
            let (b, _) = t.zone.alloc(0).unwrap();
            assert_eq!(Chunk::index_of(b), 1, "buddies");
            t.zone.free_stamped(b, 0, false, 1000);
            // `a` comes back released (clean) at 5000: the merged block is
            // dirty and as idle as `b`, not freshly used.
            t.zone.free_stamped(a, 0, true, 5000);
            t.zone.check();
            // It merges all the way up: the rest of the chunk is free and clean.
            let merged = t.zone.free_area[MAX_ORDER].lists[GROUP_FREE as usize][DIRTY].first();
            assert_eq!((Chunk::index_of(merged), (*merged).span), (0, 1000));
        }
    }

    #[test]
    fn dirty_blocks_are_handed_out_before_clean_ones() {
        let mut t = TestZone::new(2);
        // SAFETY: test zone descriptors are live; blocks are freed once.
        unsafe {
            // Both chunks are clean. Dirty an order-5 block in the second.
            let (first, _) = t.zone.alloc(MAX_ORDER).unwrap();
            let (second, _) = t.zone.alloc(MAX_ORDER).unwrap();
            t.zone.free(first, MAX_ORDER, true);
            t.zone.free_range(second.add(32), CHUNK_PAGES - 32);
            t.zone.free(second, 5, false);
            t.zone.check();
            assert_eq!(t.zone.dirty_pages, CHUNK_PAGES, "the second chunk merged dirty");
            // Order-0 requests split the dirty chunk, not the clean one.
            for _ in 0..4 {
                let (p, zero) = t.zone.alloc(0).unwrap();
                assert!(!zero && Chunk::of_page(p) == Chunk::of_page(second));
            }
            t.zone.check();
        }
    }

    #[test]
    fn runs_and_slabs_take_blocks_in_chunks_of_their_own() {
        let mut t = TestZone::new(3);
        // SAFETY: test zone descriptors are live; blocks are freed once.
        unsafe {
            let (slab, _) = t.zone.alloc_in(0, GROUP_SLABS).unwrap();
            let (run, _) = t.zone.alloc_in(4, GROUP_RUNS).unwrap();
            let (slab_chunk, run_chunk) = (Chunk::of_page(slab), Chunk::of_page(run));
            assert!(slab_chunk != run_chunk);
            assert_eq!(((*slab_chunk).group, (*run_chunk).group), (GROUP_SLABS, GROUP_RUNS));
            // Later requests stay in their group's chunk while it has room.
            for _ in 0..20 {
                assert_eq!(Chunk::of_page(t.zone.alloc_in(2, GROUP_SLABS).unwrap().0), slab_chunk);
                assert_eq!(Chunk::of_page(t.zone.alloc_in(3, GROUP_RUNS).unwrap().0), run_chunk);
            }
            t.zone.check();
            // With no free chunk left and its own chunk full, a group takes
            // the other's blocks rather than fail.
            let (third, _) = t.zone.alloc_in(MAX_ORDER, GROUP_SLABS).unwrap();
            assert_eq!((*Chunk::of_page(third)).group, GROUP_SLABS);
            while let Some((p, _)) = t.zone.alloc_in(6, GROUP_SLABS) {
                if Chunk::of_page(p) == run_chunk {
                    break;
                }
                assert_eq!(Chunk::of_page(p), slab_chunk);
            }
            t.zone.check();
            // A chunk whose blocks all come back is free again, of no group.
            t.zone.free(third, MAX_ORDER, false);
            assert_eq!((*Chunk::of_page(third)).group, GROUP_FREE);
            t.zone.check();
        }
    }

    #[test]
    fn a_run_grows_into_free_pages_after_it() {
        let mut t = TestZone::new(1);
        // SAFETY: test zone descriptors are live; blocks are freed once.
        unsafe {
            // A run of 9 pages from a fresh chunk: 7 free pages follow it
            // in its order-4 block, then free blocks to the chunk's end.
            let (head, _) = t.zone.alloc_in(4, GROUP_RUNS).unwrap();
            let index = Chunk::index_of(head);
            t.zone.push_spare(Chunk::of_page(head), index + 9, index + 16, true, 0);
            mark(head, 9, PG_NONE);
            t.zone.check();
            assert!(t.zone.extend_run(head, 9, 14));
            mark(head, 14, PG_NONE);
            t.zone.check();
            assert_eq!(t.zone.free_pages, CHUNK_PAGES - 14);
            // Past the chunk's end: no.
            assert!(!t.zone.extend_run(head, 14, CHUNK_PAGES + 1));
            // Into a page in use: no, and nothing changes.
            let (other, _) = t.zone.alloc_in(0, GROUP_RUNS).unwrap();
            assert_eq!(Chunk::index_of(other), 14);
            assert!(!t.zone.extend_run(head, 14, 20));
            assert_eq!(t.zone.free_pages, CHUNK_PAGES - 15);
            t.zone.check();
            t.zone.free(other, 0, false);
            t.zone.free_range(head, 14);
            t.zone.check();
            assert_eq!(t.zone.nr_free(MAX_ORDER), 1);
        }
    }

    #[test]
    fn adjacent_released_blocks_go_back_in_one_call() {
        let mut t = TestZone::new(1);
        // SAFETY: test zone descriptors are live; isolated blocks go back once.
        unsafe {
            four_dirty_blocks(&mut t);
            // Pages 2 and 3 too: then pages 1..6 are free, in three blocks
            // (1, 2..4, 4..6) none of which are buddies of each other.
            let chunk = t.chunks[0];
            t.zone.free(Chunk::page(chunk, 2), 0, false);
            t.zone.free(Chunk::page(chunk, 3), 0, false);
            t.zone.check();
            let mut out = [ptr::null_mut(); 8];
            let n = t.zone.isolate_idle(&mut out, ReleaseFilter::idle_for(None, 0));
            assert_eq!(n, 5);
            let batch = &mut out[..n];
            batch.sort_unstable_by_key(|&p| page::page_address(p));
            let mut runs = Vec::new();
            for_each_dirty_run(batch, |start, len, blocks| runs.push((start, len, blocks.len())));
            let base = page::page_address(Chunk::page(chunk, 0));
            let page = |i: usize| base + i * PAGE_SIZE;
            // 1..6 in one, 8..12 and 16..24 on their own.
            assert_eq!(runs, [(page(1), 5 * PAGE_SIZE, 3), (page(8), 4 * PAGE_SIZE, 1), (page(16), 8 * PAGE_SIZE, 1)]);
            for &p in batch.iter() {
                t.zone.put_back_released(p, true);
            }
            t.zone.check();
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
            // Handed out, as `alloc_pages_exact` marks a run: no page of it
            // may look like a free buddy while part of it is freed.
            mark(head, 8, PG_NONE);
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
        /// A block of this order for the runs' group.
        AllocRuns(usize),
        /// An exact run of this many pages from adjacent free blocks.
        Run(usize),
        Free(usize),
        /// Release every dirty block (as trim does, without the system call).
        Release,
    }

    fn ops() -> impl Strategy<Value = Vec<Op>> {
        prop::collection::vec(
            prop_oneof![
                3 => (0usize..=MAX_ORDER).prop_map(Op::Alloc),
                2 => (0usize..=MAX_ORDER).prop_map(Op::AllocRuns),
                2 => (2usize..80).prop_map(Op::Run),
                3 => any::<usize>().prop_map(Op::Free),
                1 => Just(Op::Release),
            ],
            1..400,
        )
    }

    proptest! {
        /// Random alloc/free sequences against a model of live blocks and
        /// runs: no two live ones overlap, blocks are aligned to their
        /// order, the page counts match, and freeing everything coalesces
        /// back to whole chunks.
        #[test]
        fn model_no_overlap_and_full_coalescing(ops in ops()) {
            let mut t = TestZone::new(3);
            // (chunk index, first page) -> (pages, head)
            let mut live: BTreeMap<(usize, usize), (usize, *mut Page)> = BTreeMap::new();
            let mut live_pages = 0usize;
            for op in ops {
                let got = match op {
                    // SAFETY: test zone descriptors are live.
                    Op::Alloc(order) => unsafe { t.zone.alloc(order) }.map(|(head, _)| (head, 1 << order, order)),
                    // SAFETY: as above.
                    Op::Run(n) => unsafe { t.zone.alloc_from_fragments(n, GROUP_RUNS).or_else(|| t.zone.alloc_from_fragments(n, GROUP_SLABS)) }
                        .map(|(head, _)| (head, n, 0)),
                    // SAFETY: as above.
                    Op::AllocRuns(order) => unsafe { t.zone.alloc_in(order, GROUP_RUNS) }.map(|(head, _)| (head, 1 << order, order)),
                    Op::Free(pick) => {
                        if live.is_empty() { continue; }
                        let key = *live.keys().nth(pick % live.len()).unwrap();
                        let (npages, head) = live.remove(&key).unwrap();
                        // SAFETY: allocated above with these pages, unused.
                        unsafe { t.zone.free_range(head, npages) };
                        live_pages -= npages;
                        None
                    }
                    Op::Release => {
                        let mut out = [ptr::null_mut(); 16];
                        let f = ReleaseFilter::idle_for(None, 0);
                        // SAFETY: test zone descriptors are live; the
                        // isolated blocks go back at once.
                        unsafe {
                            let n = t.zone.isolate_idle(&mut out, f);
                            t.zone.check();
                            for &p in &out[..n] {
                                t.zone.put_back_released(p, true);
                            }
                        }
                        None
                    }
                };
                if let Some((head, npages, align_order)) = got {
                    // Handed out, as the tiers mark what they take.
                    // SAFETY: the pages are ours.
                    unsafe { mark(head, npages, PG_NONE) };
                    let chunk = Chunk::of_page(head);
                    let ci = t.chunks.iter().position(|&c| c == chunk).unwrap();
                    let index = Chunk::index_of(head);
                    prop_assert_eq!(index % (1 << align_order), 0);
                    let end = index + npages;
                    prop_assert!(end <= CHUNK_PAGES);
                    for (&(c, start), &(n, _)) in &live {
                        if c == ci {
                            prop_assert!(end <= start || start + n <= index,
                                "overlap: new [{index},{end}) with [{start},{})", start + n);
                        }
                    }
                    live.insert((ci, index), (npages, head));
                    live_pages += npages;
                } else if let Op::Alloc(_) | Op::AllocRuns(_) = op {
                    prop_assert!(t.zone.free_pages < 3 * CHUNK_PAGES);
                }
                t.zone.check();
                prop_assert_eq!(t.zone.free_pages + live_pages, 3 * CHUNK_PAGES);
            }
            for (_, (npages, head)) in std::mem::take(&mut live) {
                // SAFETY: as above.
                unsafe { t.zone.free_range(head, npages) };
            }
            t.zone.check();
            prop_assert_eq!(t.zone.nr_free(MAX_ORDER), 3);
            for order in 0..MAX_ORDER {
                prop_assert_eq!(t.zone.nr_free(order), 0);
            }
        }
    }

    #[test]
    fn a_run_is_cut_from_free_blocks_that_are_not_buddies() {
        let mut t = TestZone::new(1);
        // SAFETY: test zone descriptors are live; blocks are freed once.
        unsafe {
            four_dirty_blocks(&mut t);
            // Free pages 6..8 and 12..16 too: pages 4..24 are free, as the
            // blocks 4..8, 8..16 and 16..24, none of them buddies.
            let chunk = t.chunks[0];
            for index in (6..8).chain(12..16) {
                t.zone.free(Chunk::page(chunk, index), 0, false);
            }
            t.zone.check();
            // 12 pages: no free block of order 4, but 8..16 and 16..24 lie
            // side by side.
            let (head, zero) = t.zone.alloc_from_fragments(12, GROUP_SLABS).expect("a run of fragments");
            assert!(!zero);
            assert_eq!(Chunk::index_of(head), 8, "from the order-3 block freed last");
            // The rest of the last block goes back: 20..24, beside 4..8.
            t.zone.check();
            assert_eq!(t.zone.nr_free(2), 2);
            assert_eq!(t.zone.nr_free(3), 0);
            assert!(t.zone.alloc_from_fragments(30, GROUP_SLABS).is_none(), "no 30 free pages side by side");
            assert!(t.zone.alloc_from_fragments(12, GROUP_RUNS).is_none(), "not from another group's blocks");
            mark(head, 12, PG_NONE);
            t.zone.free_range(head, 12);
            t.zone.check();
        }
    }
}
