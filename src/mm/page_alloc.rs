//! The page allocator's front door: blocks of `2^order` pages and exact
//! runs of pages, from the per-CPU page lists when they have them and from
//! the zone otherwise, growing the zone by a chunk when it has nothing.
//! Every call is also a decay tick (see `reclaim`).

use super::chunk::grow;
use super::page::{self, Chunk, Page, CHUNK_PAGES, GROUP_RUNS, GROUP_SLABS, MAX_ORDER};
use super::reclaim::decay_tick;
use super::zone::{mark_run, order_for_pages, ZONE};
use super::{hooks, pcp};
use crate::os::{PAGE_SHIFT, PAGE_SIZE};
use core::sync::atomic::{AtomicUsize, Ordering};

/// Allocates a block of `order` pages from the global zone, growing it by a
/// chunk when needed. Returns the head descriptor and whether the memory is
/// known zero, or `None` when the system has no memory left.
#[link_section = ".text.hot.buddyslab"]
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
#[link_section = ".text.hot.buddyslab"]
pub unsafe fn free_pages(head: *mut Page, order: usize) {
    hooks::given_back(page::page_address(head), PAGE_SIZE << order);
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

/// A zeroed page for one thread's own structures (the thread cache's
/// slow-path part, the secure build's quarantine), taken when the thread
/// first needs it and given back at its exit with [`free_thread_page`]:
/// from the per-CPU page lists, which hand out the page an exited thread
/// gave back last, still resident. It stays untyped (`PG_NONE`), so a
/// `free` into it is reported as not ours; the ledger sees it as
/// metadata. `None` when no memory is left.
pub fn alloc_thread_page() -> Option<usize> {
    let (head, zero) = alloc_pages(0)?;
    let addr = page::page_address(head);
    hooks::handed_out(addr, PAGE_SIZE, hooks::PageUse::Meta);
    if !zero {
        // SAFETY: a page of our own, unused.
        unsafe { core::ptr::write_bytes(addr as *mut u8, 0, PAGE_SIZE) };
    }
    Some(addr)
}

/// Gives back a page of [`alloc_thread_page`].
///
/// # Safety
/// `addr` came from `alloc_thread_page` and nothing uses it any more.
pub unsafe fn free_thread_page(addr: usize) {
    // SAFETY: per the caller, an order-0 block of `alloc_pages`.
    unsafe { free_pages(page::page_of(addr), 0) }
}

/// Frees the pages `[first, first + npages)` of an earlier allocation.
///
/// # Safety
/// As [`Zone::free_range`].
#[link_section = ".text.hot.buddyslab"]
pub unsafe fn free_page_range(first: *mut Page, npages: usize) {
    if npages != 0 {
        hooks::given_back(page::page_address(first), npages << PAGE_SHIFT);
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
/// the kernel's `alloc_pages_exact`, in chunks of the runs' group (see
/// `FreeArea`): from free blocks next to each other when page alignment
/// is enough and some are at hand (see [`Zone::alloc_from_fragments`]),
/// otherwise from a block of the covering order whose pages past `npages`
/// go straight back to the free lists; only before the zone would grow,
/// from the slabs' group's neighbouring free blocks. The run is marked
/// `PG_PAGES` with `span == npages`. Returns the head and whether the
/// memory is known zero.
pub fn alloc_pages_exact(npages: usize, align_order: usize) -> Option<(*mut Page, bool)> {
    debug_assert!((1..=CHUNK_PAGES).contains(&npages) && align_order <= MAX_ORDER);
    let order = order_for_pages(npages).max(align_order);
    decay_tick();
    let unaligned = align_order == 0;
    let (head, zero) = loop {
        {
            let mut zone = ZONE.lock();
            // SAFETY: the global zone's descriptors are live; a block taken
            // is ours, and its run is marked before its tail goes back, so
            // no tail page merges with a page of the run.
            unsafe {
                if let Some(run) = unaligned.then(|| zone.alloc_from_fragments(npages, GROUP_RUNS)).flatten() {
                    break run;
                }
                if let Some((head, zero)) = zone.alloc_in(order, GROUP_RUNS) {
                    let index = Chunk::index_of(head);
                    zone.push_spare(Chunk::of_page(head), index + npages, index + (1 << order), zero, (*head).span);
                    break (head, zero);
                }
                if let Some(run) = unaligned.then(|| zone.alloc_from_fragments(npages, GROUP_SLABS)).flatten() {
                    break run;
                }
            }
        }
        if !grow(order) {
            return None;
        }
    };
    // SAFETY: the run is ours.
    unsafe {
        mark_run(head, npages, crate::mm::page::PG_PAGES, 0);
        (*head).span = npages as u32;
    }
    NR_PAGE_RUNS.fetch_add(1, Ordering::Relaxed);
    PAGE_RUN_PAGES.fetch_add(npages, Ordering::Relaxed);
    hooks::handed_out(page::page_address(head), npages << PAGE_SHIFT, hooks::PageUse::Pages);
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

/// Grows a run from [`alloc_pages_exact`] in place to `npages` pages when
/// the pages right after it are free blocks, as glibc's `realloc` grows a
/// chunk into a free neighbour: a growth chain (a buffer grown by half,
/// again and again) then copies nothing while its run has free pages
/// behind it, which runs cut from neighbouring free blocks often do.
/// Returns false, with nothing changed, when they are not free (or the
/// run would leave its chunk).
///
/// # Safety
/// `head` heads a live run of fewer than `npages` pages.
pub unsafe fn grow_pages_exact(head: *mut Page, npages: usize) -> bool {
    // SAFETY: per the caller.
    let old = unsafe { (*head).span } as usize;
    debug_assert!(npages > old);
    // SAFETY: the global zone's descriptors are live; per the caller.
    if !unsafe { ZONE.lock().extend_run(head, old, npages) } {
        return false;
    }
    // SAFETY: the run and its growth are ours.
    unsafe {
        mark_run(head, npages, crate::mm::page::PG_PAGES, 0);
        (*head).span = npages as u32;
    }
    PAGE_RUN_PAGES.fetch_add(npages - old, Ordering::Relaxed);
    let grown = page::page_address(head) + (old << PAGE_SHIFT);
    hooks::handed_out(grown, (npages - old) << PAGE_SHIFT, hooks::PageUse::Pages);
    decay_tick();
    true
}

