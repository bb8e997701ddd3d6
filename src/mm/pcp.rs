//! Per-CPU page lists: the kernel's `per_cpu_pages` in front of the zone.
//!
//! Slab refills and releases move blocks of order 0 to [`PCP_MAX_ORDER`]
//! (4 to 32 KiB) all the time. Each CPU keeps a short list of such blocks
//! per order under its own lock; only when a list is empty (refill) or
//! past its high mark (drain) is the zone lock taken, and then for a batch
//! of blocks at once. So slab refills on different CPUs do not serialise
//! on the zone lock.
//!
//! Blocks on a per-CPU list are not `PG_FREE`: like the kernel's pcp
//! pages, the zone does not see them and does not merge them with their
//! buddies until they are drained back. `/proc/buddyinfo` does not count
//! them either, and neither does the `buddyinfo` view. Trimming drains
//! every list first ([`drain_all`]) so wholly free chunks can be found.
//!
//! Lock order: a CPU's page-list lock is taken after the slab cache locks
//! and before the zone lock (see [`crate::mm`]).

use super::zone::{self, ZONE};
use crate::os;
use super::page::{Page, PageList, PG_NONE};
use crate::os::sync::Mutex;

/// Highest order kept on per-CPU lists.
pub const PCP_MAX_ORDER: usize = 3;
/// CPUs with their own lists; higher CPU numbers share by modulo.
const MAX_PCP: usize = 64;

/// One CPU's lists, one per order.
pub struct PerCpuPages {
    lists: [PageList; PCP_MAX_ORDER + 1],
}

static PCP: [Mutex<PerCpuPages>; MAX_PCP] =
    [const { Mutex::new(PerCpuPages { lists: [const { PageList::new() }; PCP_MAX_ORDER + 1] }) }; MAX_PCP];

/// Blocks moved between a list and the zone at once: 8 pages' worth.
const fn batch(order: usize) -> usize {
    8 >> order
}

/// Blocks a list may hold before a batch goes back to the zone: 16 pages'
/// worth per order, 64 KiB. Freed pages are resident; while they wait on
/// one CPU's list, another CPU touches fresh pages, so a high mark is
/// memory held per CPU (at 64 pages per order it was 1 MiB).
const fn high(order: usize) -> usize {
    2 * batch(order)
}

/// Takes a block of `order` (≤ [`PCP_MAX_ORDER`]) from this CPU's list,
/// refilling the list from the zone with one lock acquisition when it is
/// empty. `None` when the zone has nothing left (the caller grows it).
pub fn alloc(order: usize) -> Option<(*mut Page, bool)> {
    debug_assert!(order <= PCP_MAX_ORDER);
    let mut pcp = PCP[os::current_cpu() % MAX_PCP].lock();
    let list = &mut pcp.lists[order];
    // SAFETY: blocks on our lists are ours, off the zone.
    let head = unsafe { list.pop_front() };
    if !head.is_null() {
        // SAFETY: as above.
        return Some((head, unsafe { (*head).zero }));
    }
    let mut zone = ZONE.lock();
    // SAFETY: the global zone's descriptors are live.
    let first = unsafe { zone.alloc(order) }?;
    for _ in 1..batch(order) {
        // SAFETY: as above.
        let Some((head, zero)) = (unsafe { zone.alloc(order) }) else { break };
        // SAFETY: the block is ours and stays off the zone.
        unsafe {
            (*head).zero = zero;
            list.push_front(head);
        }
    }
    Some(first)
}

/// Gives back a block of `order` (≤ [`PCP_MAX_ORDER`]) to this CPU's list;
/// past the high mark, a batch goes back to the zone.
///
/// # Safety
/// `head` was allocated with this `order` and is no longer used.
pub unsafe fn free(head: *mut Page, order: usize) {
    debug_assert!(order <= PCP_MAX_ORDER);
    // SAFETY: per the caller: the block's descriptors are ours to reset,
    // so an address inside it is no slab object or run any more.
    unsafe {
        zone::mark(head, 1 << order, PG_NONE);
        (*head).order = order as u8;
        (*head).zero = false;
    }
    let mut pcp = PCP[os::current_cpu() % MAX_PCP].lock();
    let list = &mut pcp.lists[order];
    // SAFETY: the block is ours.
    unsafe { list.push_front(head) };
    if list.len() > high(order) {
        let mut zone = ZONE.lock();
        for _ in 0..batch(order) {
            // SAFETY: blocks on our lists are allocated blocks of `order`.
            unsafe {
                let block = list.pop_front();
                zone.free(block, order, (*block).zero);
            }
        }
    }
}

/// Gives every block on every CPU's lists back to the zone (before
/// trimming, and for tests).
#[link_section = ".text.hot.buddyslab"]
pub fn drain_all() {
    for pcp in PCP.iter() {
        let mut pcp = pcp.lock();
        if pcp.lists.iter().all(|l| l.is_empty()) {
            continue;
        }
        let mut zone = ZONE.lock();
        for (order, list) in pcp.lists.iter_mut().enumerate() {
            loop {
                // SAFETY: blocks on our lists are allocated blocks of `order`.
                unsafe {
                    let block = list.pop_front();
                    if block.is_null() {
                        break;
                    }
                    zone.free(block, order, (*block).zero);
                }
            }
        }
    }
}

/// Blocks of each order held on all CPUs' lists, as pages.
#[cfg_attr(not(test), allow(dead_code))] // the unit tests use it
pub fn pages_held() -> usize {
    PCP.iter()
        .map(|pcp| {
            let pcp = pcp.lock();
            pcp.lists.iter().enumerate().map(|(order, l)| l.len() << order).sum::<usize>()
        })
        .sum()
}

/// Takes every CPU's page-list lock (atfork prepare).
pub fn lock_all_for_fork() {
    PCP.iter().for_each(|p| p.lock_for_fork());
}

/// Releases what [`lock_all_for_fork`] took.
///
/// # Safety
/// [`lock_all_for_fork`] ran in this thread (or in the forking parent).
pub unsafe fn unlock_all_after_fork(in_child: bool) {
    // SAFETY: per the caller.
    PCP.iter().rev().for_each(|p| unsafe { p.unlock_after_fork(in_child) });
}

#[cfg(test)]
mod tests {
    use super::*;
    use core::ptr;

    #[test]
    fn blocks_cycle_through_the_lists_and_drain_back() {
        let mut taken = [ptr::null_mut::<Page>(); 64];
        for (i, slot) in taken.iter_mut().enumerate() {
            let order = i % (PCP_MAX_ORDER + 1);
            *slot = crate::mm::alloc_pages(order).expect("memory").0;
        }
        // Distinct, non-overlapping blocks.
        let mut spans: std::vec::Vec<(usize, usize)> = taken
            .iter()
            .enumerate()
            .map(|(i, &p)| {
                let a = crate::mm::page::page_address(p);
                (a, a + (4096 << (i % (PCP_MAX_ORDER + 1))))
            })
            .collect();
        spans.sort();
        assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "per-CPU blocks overlap");
        for (i, &p) in taken.iter().enumerate() {
            // SAFETY: allocated above with this order.
            unsafe { crate::mm::free_pages(p, i % (PCP_MAX_ORDER + 1)) };
        }
        assert!(pages_held() > 0, "freed blocks should wait on the per-CPU lists");
        drain_all();
        assert_eq!(pages_held(), 0);
        ZONE.lock().check();
    }
}
