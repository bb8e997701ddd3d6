//! Per-thread run lists: page-tier runs a thread freed, kept for its next
//! request of the same number of pages.
//!
//! The kernel's per-CPU page lists hold blocks of the low orders beside
//! single pages, so that a freed block is handed out again without the
//! zone lock. Runs of the page tier (16 KiB to 256 KiB, any number of
//! pages) get the same here, per thread: a `free` of a run pushes it on
//! the calling thread's list for its page count, and the next `malloc` of
//! that many pages pops it. Neither takes a lock, marks the run's pages
//! again, or walks the page-table shadow (the run stays handed out to the
//! page tier, as a kernel's per-CPU page stays allocated out of the buddy
//! lists). Before these lists, a `malloc(65536)`+`free` pair cost 1650
//! instructions and took the zone lock twice; at 16 threads on 2 CPUs the
//! zone lock was the second most waited-on lock of the powerlaw workload.
//!
//! - **links**: through the head page's descriptor (`Page::next`), never
//!   inside the run: a dangling pointer into a freed run cannot steer the
//!   next `malloc`.
//! - **double free**: a cached run's head is [`PG_CACHED`]; `free`,
//!   `realloc` and `malloc_usable_size` of it stop the process as of a
//!   free block.
//! - **bounds**: at most [`DEPTH`] runs per page count and
//!   [`CACHE_BYTES`] in all per thread; a run that does not fit goes back
//!   to the zone as before.
//! - **life**: a thread's lists are emptied into the zone at its exit
//!   (a pthread key destructor) and by `malloc_trim`. A run is counted as
//!   a page run (`NR_PAGE_RUNS`) while cached, as the kernel counts a
//!   per-CPU page as allocated.

use crate::mm::page::{Page, PG_CACHED, PG_PAGES};
use crate::os::PAGE_SHIFT;
use core::ptr;

/// Largest run kept, in pages (the page tier's largest run, 256 KiB).
pub const MAX_PAGES: usize = 64;
/// Runs kept per page count.
pub const DEPTH: u8 = 8;
/// Bytes kept per thread in all.
pub const CACHE_BYTES: usize = 1 << 20;
/// A request for `n` pages may get a run of up to `n + n / SLACK`: with
/// exact lengths only, a program of mixed sizes found its length's list
/// empty on most requests while the lists were full of others.
pub const SLACK: usize = 8;

const UNINIT: u8 = 0;
const ACTIVE: u8 = 1;
const DEAD: u8 = 2;
/// Registering: `pthread_setspecific` may allocate, and a `free` of a run
/// from in there must not register again.
const BUSY: u8 = 3;

/// A thread's run lists. All-zero is the empty, not yet registered state.
#[repr(C)]
pub struct RunCache {
    /// Head of the list of runs of `i` pages (index 0 unused).
    heads: [*mut Page; MAX_PAGES + 1],
    /// Runs on each list.
    counts: [u8; MAX_PAGES + 1],
    /// Bytes on all lists.
    bytes: usize,
    /// `UNINIT`, `BUSY` (registering), `ACTIVE` (registered for the exit
    /// destructor) or `DEAD`.
    state: u8,
    /// Runs taken from the lists, modulo [`TICK_EVERY`].
    taken: u8,
}

/// Every this many runs a thread takes from its lists it ticks the decay
/// clock, as a run from the zone does each time: a program whose page
/// runs all come from its lists must still see the memory it freed before
/// go back after a decay period.
const TICK_EVERY: u8 = 8;

crate::os::zeroed_thread_local! {
    /// The calling thread's run lists.
    fn current() -> *mut RunCache, "buddyslab_run_cache_v1"
}

/// The pthread key whose destructor empties a thread's lists at exit.
static KEY: crate::os::ThreadExitKey = crate::os::ThreadExitKey::new();

/// Creates the thread-exit key. Called once from the heap's set-up;
/// until then no run is cached.
pub fn init_thread_exit_key() {
    KEY.create(thread_exit);
}

/// A run of at least `npages` pages and at most an eighth more from the
/// calling thread's lists (the shortest there), marked `PG_PAGES` again
/// and still handed out; null when there is none. Its `span` says its
/// length.
#[inline]
pub fn take(npages: usize) -> *mut Page {
    if cfg!(feature = "secure") || npages > MAX_PAGES {
        return ptr::null_mut();
    }
    let rc = current();
    let most = (npages + npages / SLACK).min(MAX_PAGES);
    // SAFETY: the lists are this thread's alone; a head on list `n` is a
    // run of `n` pages that nothing else uses.
    unsafe {
        let Some(npages) = (npages..=most).find(|&n| !(*rc).heads[n].is_null()) else {
            return ptr::null_mut();
        };
        let head = (*rc).heads[npages];
        (*rc).heads[npages] = (*head).next;
        (*rc).counts[npages] -= 1;
        (*rc).bytes -= npages << PAGE_SHIFT;
        (*head).next = ptr::null_mut();
        (*head).set_kind(PG_PAGES);
        (*rc).taken = (*rc).taken.wrapping_add(1);
        if (*rc).taken % TICK_EVERY == 0 {
            crate::mm::decay_tick();
        }
        head
    }
}

/// Keeps the live run at `head` (`PG_PAGES`, freed by the caller) on the
/// calling thread's list for its page count; false when it does not fit
/// there (the caller gives it to the zone).
///
/// # Safety
/// `head` heads a live page-tier run that nothing uses any more.
#[inline]
pub unsafe fn put(head: *mut Page) -> bool {
    if cfg!(feature = "secure") {
        return false;
    }
    let rc = current();
    // SAFETY: per the caller; the lists are this thread's alone.
    unsafe {
        let npages = (*head).span as usize;
        if npages > MAX_PAGES
            || (*rc).counts[npages] >= DEPTH
            || (*rc).bytes + (npages << PAGE_SHIFT) > CACHE_BYTES
            || ((*rc).state != ACTIVE && !register(rc))
        {
            return false;
        }
        (*head).set_kind(PG_CACHED);
        (*head).next = (*rc).heads[npages];
        (*rc).heads[npages] = head;
        (*rc).counts[npages] += 1;
        (*rc).bytes += npages << PAGE_SHIFT;
        true
    }
}

/// Registers `rc` for the exit destructor; false when it cannot be (the
/// key is not made yet, the thread is exiting, or this is a `free` from
/// inside the registering).
#[cold]
#[inline(never)]
#[link_section = ".text.hot.buddyslab"]
fn register(rc: *mut RunCache) -> bool {
    // SAFETY: the lists are this thread's alone.
    unsafe {
        if (*rc).state != UNINIT {
            return false;
        }
        (*rc).state = BUSY;
        let registered = KEY.set(rc.cast());
        (*rc).state = if registered { ACTIVE } else { UNINIT };
        registered
    }
}

/// Gives every run on `rc`'s lists back to the zone; returns the bytes.
///
/// # Safety
/// `rc` is the calling thread's lists.
#[link_section = ".text.hot.buddyslab"]
unsafe fn empty(rc: *mut RunCache) -> usize {
    // SAFETY: per the caller.
    let bytes = unsafe { (*rc).bytes };
    for npages in 1..=MAX_PAGES {
        // SAFETY: listed heads are cached runs nothing uses.
        unsafe {
            let mut head = (*rc).heads[npages];
            (*rc).heads[npages] = ptr::null_mut();
            (*rc).counts[npages] = 0;
            while !head.is_null() {
                let next = (*head).next;
                (*head).next = ptr::null_mut();
                (*head).set_kind(PG_PAGES);
                crate::mm::free_pages_exact(head);
                head = next;
            }
        }
    }
    // SAFETY: per the caller.
    unsafe { (*rc).bytes = 0 };
    bytes
}

/// Gives the calling thread's cached runs back to the zone (for
/// `malloc_trim`); returns the bytes.
pub fn flush_current() -> usize {
    // SAFETY: this thread's lists.
    unsafe { empty(current()) }
}

/// Bytes on the calling thread's lists.
#[cfg(all(test, not(feature = "secure")))]
pub fn cached_bytes() -> usize {
    // SAFETY: this thread's lists; a plain read.
    unsafe { (*current()).bytes }
}

/// Empties the exiting thread's lists and leaves them dead: the pthread
/// key destructor.
#[link_section = ".text.hot.buddyslab"]
extern "C" fn thread_exit(arg: *mut libc::c_void) {
    let rc = arg.cast::<RunCache>();
    debug_assert_eq!(rc, current());
    // SAFETY: glibc passes back the value we stored: this thread's lists.
    unsafe {
        empty(rc);
        (*rc).state = DEAD;
    }
}

#[cfg(test)]
mod tests {
    /// The secure build keeps no lists: a freed run goes to the zone at
    /// once.
    #[cfg(feature = "secure")]
    #[test]
    fn the_secure_build_keeps_no_runs() {
        use super::*;
        crate::heap::ensure_init();
        let (head, _) = crate::mm::alloc_pages_exact(3, 0).expect("pages");
        // SAFETY: a live run of ours that nothing uses.
        assert!(!unsafe { put(head) });
        assert!(take(3).is_null());
        // SAFETY: as above.
        unsafe { crate::mm::free_pages_exact(head) };
    }

    /// The lists themselves, in the builds that keep them.
    #[cfg(not(feature = "secure"))]
    mod lists {
        use super::super::*;
        use proptest::prelude::*;

        #[derive(Clone, Debug)]
        enum Op {
            /// A run of this many pages: from the lists when they hold one.
            Alloc(usize),
            /// Frees the live run at this index (modulo their number).
            Free(usize),
            /// That many runs of this many pages, then frees them all: a list
            /// fills to its depth, or the lists to their bytes.
            Burst(usize, usize),
        }

        fn op() -> impl Strategy<Value = Op> {
            prop_oneof![
                3 => (1usize..=MAX_PAGES).prop_map(Op::Alloc),
                // A few page counts, so that lists fill to their depth.
                3 => prop::sample::select(vec![1usize, 4, 16, 17, 18, 64]).prop_map(Op::Alloc),
                5 => any::<usize>().prop_map(Op::Free),
                1 => (prop::sample::select(vec![1usize, 4, 16, 64]), 1usize..=12).prop_map(|(n, k)| Op::Burst(n, k)),
            ]
        }

        /// The two tests below put runs on lists; one at a time, so that the
        /// exiting thread's runs are not cached again by the model's thread.
        static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

        fn kind(head: *mut Page) -> u8 {
            // SAFETY: descriptors of our runs are live.
            unsafe { (*head).kind() }
        }

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(64))]

            /// The lists against a model: last freed, first handed out, per
            /// page count, the shortest that holds the request within its
            /// slack; the depth and byte bounds; cached heads marked,
            /// handed-out ones not; all back in the zone when emptied.
            #[test]
            fn model_run_lists(ops in prop::collection::vec(op(), 1..160)) {
                let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
                crate::heap::ensure_init();
                flush_current();
                let mut live: Vec<*mut Page> = Vec::new();
                let mut model: Vec<Vec<*mut Page>> = vec![Vec::new(); MAX_PAGES + 1];
                let mut bytes = 0usize;
                let ops = ops.into_iter().flat_map(|op| match op {
                    // Freed newest first: the burst's runs are the last `k` live.
                    Op::Burst(n, k) => [vec![Op::Alloc(n); k], vec![Op::Free(usize::MAX); k]].concat(),
                    op => vec![op],
                });
                for op in ops {
                    match op {
                        Op::Alloc(n) => {
                            let got = take(n);
                            // The shortest listed length from n to n + n/8.
                            let len = (n..=(n + n / SLACK).min(MAX_PAGES)).find(|&m| !model[m].is_empty());
                            prop_assert_eq!(got, len.map_or(ptr::null_mut(), |m| model[m].pop().unwrap()));
                            let head = if let Some(m) = len {
                                bytes -= m << PAGE_SHIFT;
                                head_ok(got, m)?;
                                got
                            } else {
                                let Some((head, _)) = crate::mm::alloc_pages_exact(n, 0) else { continue };
                                head
                            };
                            live.push(head);
                        }
                        Op::Free(i) if !live.is_empty() => {
                            let head = if i == usize::MAX { live.pop().unwrap() } else { live.swap_remove(i % live.len()) };
                            // SAFETY: a live run of ours.
                            let n = unsafe { (*head).span } as usize;
                            let fits = model[n].len() < DEPTH as usize && bytes + (n << PAGE_SHIFT) <= CACHE_BYTES;
                            // SAFETY: as above; nothing uses it.
                            let kept = unsafe { put(head) };
                            prop_assert_eq!(kept, fits);
                            if kept {
                                prop_assert_eq!(kind(head), PG_CACHED);
                                model[n].push(head);
                                bytes += n << PAGE_SHIFT;
                            } else {
                                // SAFETY: as above.
                                unsafe { crate::mm::free_pages_exact(head) };
                            }
                        }
                        Op::Free(_) | Op::Burst(..) => {}
                    }
                    prop_assert_eq!(cached_bytes(), bytes);
                }
                prop_assert_eq!(flush_current(), bytes);
                prop_assert_eq!(cached_bytes(), 0);
                for list in &model {
                    for &head in list {
                        // Back in the zone: free, or already another run's.
                        prop_assert_ne!(kind(head), PG_CACHED);
                    }
                }
                for head in live {
                    prop_assert_eq!(kind(head), PG_PAGES);
                    // SAFETY: a live run of ours.
                    unsafe { crate::mm::free_pages_exact(head) };
                }
                crate::mm::ZONE.lock().check();
            }
        }

        fn head_ok(head: *mut Page, n: usize) -> Result<(), TestCaseError> {
            prop_assert_eq!(kind(head), PG_PAGES);
            // SAFETY: descriptors of our runs are live.
            prop_assert_eq!(unsafe { (*head).span } as usize, n);
            Ok(())
        }

        /// A run freed by a thread that then exits goes back to the zone.
        #[test]
        fn an_exiting_thread_gives_its_runs_back() {
            let _serial = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
            crate::heap::ensure_init();
            let heads = std::thread::spawn(|| {
                let heads: Vec<usize> = (0..3)
                    .map(|_| crate::mm::alloc_pages_exact(23, 0).expect("pages").0 as usize)
                    .collect();
                for &h in &heads {
                    // SAFETY: live runs of ours, nothing uses them.
                    assert!(unsafe { put(h as *mut Page) });
                }
                assert_eq!(cached_bytes(), (3 * 23) << PAGE_SHIFT);
                heads
            })
            .join()
            .unwrap();
            for h in heads {
                // Free in the zone (or handed out again since), not left
                // cached by the dead thread.
                assert_ne!(kind(h as *mut Page), PG_CACHED);
            }
        }
    }
}
