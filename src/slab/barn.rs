//! The barn: whole lists of free objects a cache keeps for its node when
//! the per-CPU depots in front of it are full, named after the per-node
//! store of full sheaves that the kernel's SLUB gained in Linux 6.18.
//!
//! A program that frees a burst of objects and then allocates the next
//! burst (sh8bench frees four fifths of its half a million blocks at a
//! time, then allocates as many) overflows its bin, its spare and its
//! CPU's two depot lists within a few hundred frees. Without the barn every
//! further list went back to its slabs object by object
//! ([`super::free_home`]): one dependent load per object, each a cold line
//! by then, only for the next burst's refills to take the same objects
//! off the same slabs again. The barn keeps such lists as they are, up to
//! [`BARN_BYTES`] of objects and [`BARN_LISTS`] lists a cache, and the
//! cache hands them back whole to the next refills, newest first, before
//! it looks at a slab: both moves touch no object.
//!
//! Only a cache with [`BARN_MIN_BYTES`] of objects out of its slabs keeps
//! lists, and no more objects than it has out elsewhere: the barn is for
//! the classes a program holds hundreds of thousands of. Without that
//! bound larson's sixty-odd classes of a few hundred objects each kept
//! lists in every barn as its threads traded objects, and its peak RSS
//! went from 19.3 to 21.0 MiB to 23.8 to 24.4 MiB (larson-sized, three
//! interleaved runs each); with it, 19.9 to 20.7 MiB.
//!
//! What the barn holds is memory no other size class can use, so it goes
//! home (each list walked back to its slabs) when the barn has sat
//! unused, neither given a list nor asked for one, for a decay period,
//! at `malloc_trim`, and before the buddy allocator would map a new chunk
//! (the slab shrinker, [`super::shrink_idle`]): a burst's objects are
//! reused by the next burst or returned, never kept by a class that has
//! gone quiet.
//!
//! Storage: the lists' heads and lengths, in one buddy page per barn,
//! taken on the first list and given back when the barn goes home. The
//! owning cache's lock covers the barn; the page is taken and given back
//! with that lock released (no cache lock is held across a call into the
//! buddy allocator).

use crate::mm::page::{self, Page};
use crate::os::PAGE_SIZE;
use core::ptr;

/// Lists one barn holds at most: one page of (head, length) pairs.
pub const BARN_LISTS: usize = PAGE_SIZE / core::mem::size_of::<(*mut u8, usize)>();

/// Bytes of objects one barn holds at most.
pub const BARN_BYTES: usize = 4 << 20;

/// Bytes of objects a cache must have out of its slabs (in use, or in
/// bins, depots and the barn) before its barn keeps anything.
pub const BARN_MIN_BYTES: usize = 1 << 20;

/// Free lists of one cache, kept whole (see the module comment).
pub struct Barn {
    /// The page holding the lists (null: none yet, or given back).
    page: *mut Page,
    /// Lists held, in the page's first `nr` slots, oldest first.
    nr: usize,
    /// Objects on those lists.
    objects: usize,
    /// Coarse time (`mm::clock_ms`) a list was last put or taken.
    used_ms: u32,
}

impl Barn {
    /// An empty barn with no page.
    pub const fn new() -> Self {
        Barn { page: ptr::null_mut(), nr: 0, objects: 0, used_ms: 0 }
    }

    /// Whether the barn has its page.
    pub fn has_page(&self) -> bool {
        !self.page.is_null()
    }

    /// Gives the barn its page, `head`, a free buddy page of order 0 that
    /// is the barn's from now on.
    ///
    /// # Safety
    /// The barn has no page; `head` is as above.
    pub unsafe fn set_page(&mut self, head: *mut Page) {
        debug_assert!(self.page.is_null() && self.nr == 0);
        self.page = head;
    }

    /// The lists, oldest first.
    fn slots(&self) -> *mut (*mut u8, usize) {
        page::page_address(self.page) as *mut (*mut u8, usize)
    }

    /// Lists held.
    pub fn lists(&self) -> usize {
        self.nr
    }

    /// Objects held.
    pub fn objects(&self) -> usize {
        self.objects
    }

    /// Keeps `list`, `count` free objects linked through their first
    /// word, at `now_ms`; false (and nothing kept) when the barn has no
    /// page, [`BARN_LISTS`] lists, or would hold more than `max_objects`.
    ///
    /// # Safety
    /// The objects are free objects of the owning cache's class, given up.
    pub unsafe fn put(&mut self, list: *mut u8, count: usize, max_objects: usize, now_ms: u32) -> bool {
        if self.page.is_null() || self.nr == BARN_LISTS || self.objects + count > max_objects {
            return false;
        }
        // SAFETY: `nr < BARN_LISTS`: a slot of the barn's page.
        unsafe { self.slots().add(self.nr).write((list, count)) };
        self.nr += 1;
        self.objects += count;
        self.used_ms = now_ms;
        true
    }

    /// The newest list and its length, taken out at `now_ms`.
    pub fn take(&mut self, now_ms: u32) -> Option<(*mut u8, usize)> {
        if self.nr == 0 {
            return None;
        }
        self.nr -= 1;
        // SAFETY: slot `nr` was written by `put`.
        let (list, count) = unsafe { self.slots().add(self.nr).read() };
        self.objects -= count;
        self.used_ms = now_ms;
        Some((list, count))
    }

    /// Whether nothing was put or taken for `age_ms` before `now_ms`.
    pub fn idle(&self, now_ms: u32, age_ms: u32) -> bool {
        now_ms.wrapping_sub(self.used_ms) >= age_ms
    }

    /// Everything the barn holds, page included, leaving it empty with no
    /// page: the caller walks the lists home ([`Barn::list`]) and gives
    /// the page back ([`Barn::into_page`]) with the cache lock released.
    pub fn detach(&mut self) -> Barn {
        core::mem::replace(self, Barn { used_ms: self.used_ms, ..Barn::new() })
    }

    /// List `i` (oldest first) and its length.
    ///
    /// # Safety
    /// `i < self.lists()`.
    pub unsafe fn list(&self, i: usize) -> (*mut u8, usize) {
        debug_assert!(i < self.nr);
        // SAFETY: per the caller, a slot `put` wrote.
        unsafe { self.slots().add(i).read() }
    }

    /// The barn's page (null: none), for its owner to give back.
    pub fn into_page(self) -> *mut Page {
        self.page
    }
}

impl Default for Barn {
    fn default() -> Self {
        Barn::new()
    }
}

// SAFETY: the page and the lists belong to whoever holds the owning
// cache's lock.
unsafe impl Send for Barn {}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A barn with a page of its own from the buddy allocator.
    fn barn_with_page() -> (Barn, *mut Page) {
        let (head, _) = crate::mm::alloc_pages(0).expect("a page");
        let mut b = Barn::new();
        // SAFETY: a free page of order 0, the barn's now.
        unsafe { b.set_page(head) };
        (b, head)
    }

    fn give_back(b: Barn) {
        let head = b.into_page();
        if !head.is_null() {
            // SAFETY: the page `barn_with_page` took.
            unsafe { crate::mm::free_pages(head, 0) };
        }
    }

    #[test]
    fn a_barn_without_a_page_keeps_nothing() {
        let mut b = Barn::new();
        // SAFETY: nothing is kept; the list is never read.
        assert!(!unsafe { b.put(8 as *mut u8, 1, usize::MAX, 0) });
        assert_eq!((b.lists(), b.objects(), b.take(0)), (0, 0, None));
    }

    #[test]
    fn lists_come_back_newest_first_and_the_bounds_hold() {
        let (mut b, _) = barn_with_page();
        // SAFETY: the "lists" are never walked; only their words travel.
        unsafe {
            assert!(b.put(0x1000 as *mut u8, 3, 1000, 5));
            assert!(b.put(0x2000 as *mut u8, 4, 1000, 6));
            // The bound: one object more than allowed.
            assert!(!b.put(0x3000 as *mut u8, 1000 - 6, 1000, 7));
            assert!(b.put(0x3000 as *mut u8, 1000 - 7, 1000, 7));
        }
        assert_eq!(b.objects(), 1000);
        assert!(!b.idle(7 + 999, 1000) && b.idle(7 + 1000, 1000));
        assert_eq!(b.take(8), Some((0x3000 as *mut u8, 1000 - 7)));
        assert_eq!(b.take(9), Some((0x2000 as *mut u8, 4)));
        assert!(!b.idle(9 + 999, 1000), "a take is a use");
        assert_eq!((b.lists(), b.objects()), (1, 3));
        // The list bound.
        let mut n = 1;
        // SAFETY: as above.
        while unsafe { b.put((0x1000 * (n + 1)) as *mut u8, 1, usize::MAX, 10) } {
            n += 1;
        }
        assert_eq!(n, BARN_LISTS);
        let all = b.detach();
        assert_eq!((b.lists(), b.objects(), b.has_page()), (0, 0, false));
        assert_eq!((all.lists(), all.objects()), (BARN_LISTS, 3 + BARN_LISTS - 1));
        // SAFETY: 0 < lists.
        assert_eq!(unsafe { all.list(0) }, (0x1000 as *mut u8, 3), "oldest first");
        give_back(all);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// Against a model (a stack of (list, length) under the same two
        /// bounds): any sequence of puts and takes keeps exactly the lists
        /// the model keeps, hands them back in the model's order, counts
        /// the same objects, and a detach returns every list left.
        #[test]
        fn a_barn_is_a_bounded_stack_of_lists(ops in proptest::collection::vec((any::<bool>(), 1usize..600), 1..800), max in prop::sample::select(vec![1000usize, 20_000, usize::MAX])) {
            let (mut b, _) = barn_with_page();
            let mut model: Vec<(usize, usize)> = Vec::new();
            for (i, &(put, count)) in ops.iter().enumerate() {
                let list = (i + 1) << 4;
                if put {
                    let fits = model.len() < BARN_LISTS && model.iter().map(|l| l.1).sum::<usize>() + count <= max;
                    // SAFETY: the lists are never walked.
                    prop_assert_eq!(unsafe { b.put(list as *mut u8, count, max, i as u32) }, fits);
                    if fits {
                        model.push((list, count));
                    }
                } else {
                    prop_assert_eq!(b.take(i as u32).map(|(l, n)| (l as usize, n)), model.pop());
                }
                prop_assert_eq!(b.lists(), model.len());
                prop_assert_eq!(b.objects(), model.iter().map(|l| l.1).sum::<usize>());
            }
            let all = b.detach();
            // SAFETY: i < lists.
            let left: Vec<(usize, usize)> = (0..all.lists()).map(|i| unsafe { all.list(i) }).map(|(l, n)| (l as usize, n)).collect();
            prop_assert_eq!(left, model);
            give_back(all);
        }
    }
}
