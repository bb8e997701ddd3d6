//! Process life: the one-time set-up (options, keys, the ledger's hooks,
//! the exit and fork handlers) and `fork`: the lock order the handlers
//! take is the allocator's, written out once here.

use crate::large;
use crate::ledger::pagetable;
use crate::mm;
use crate::os;
use crate::slab::{self, magazine};
use crate::views::report;
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicU8, Ordering};



const INIT_NONE: u8 = 0;
const INIT_RUNNING: u8 = 1;
const INIT_DONE: u8 = 2;
static INIT: AtomicU8 = AtomicU8::new(INIT_NONE);
/// Runs the one-time set-up (options, fork handlers) if it has not run.
/// Safe to call re-entrantly: `pthread_atfork` may call `malloc`, which
/// then proceeds with defaults while set-up finishes. Every allocator
/// structure is statically initialised, so nothing depends on this having
/// run except options and fork safety.
#[inline]
#[link_section = ".text.hot.buddyslab"]
pub fn ensure_init() {
    if INIT.load(Ordering::Acquire) != INIT_DONE {
        init_slow();
    }
}

/// The heap profile on the views' triggers (the signal, the interval);
/// at exit `views::prof::write_at_exit` writes it with the leak report.
fn write_profile_on_trigger(reason: report::Reason) {
    if !matches!(reason, report::Reason::Exit) {
        crate::views::prof::write_profile();
    }
}

#[cold]
#[inline(never)]
#[link_section = ".text.hot.buddyslab"]
fn init_slow() {
    // The ledger first, by every caller (registering twice is harmless):
    // it must hear of the first chunk, and a thread that finds another
    // one setting up goes on to allocate without waiting for it.
    crate::ledger::install();
    if INIT.compare_exchange(INIT_NONE, INIT_RUNNING, Ordering::AcqRel, Ordering::Acquire).is_err() {
        return;
    }
    os::check_page_size();
    slab::link::init_keys();
    crate::options::read_environment();
    mm::register_shrinker(slab::shrink_idle);
    // The views' triggers (signal, interval, live page) and the exit hook,
    // as the options ask: registers `report::print_at_exit` with `atexit`
    // and the slow-path hook with the counters.
    report::start();
    if crate::profile::init() {
        // Registered after the views' report, so it runs before it.
        let _ = os::at_exit(crate::views::prof::write_at_exit);
        // On the views' signal and at their interval too.
        report::register_writer(write_profile_on_trigger);
    }
    magazine::init_thread_exit_key();
    crate::mm::runs::init_thread_exit_key();
    // The handlers are plain functions that only take and release the
    // allocator's locks; registering may allocate, which is fine: no
    // allocator lock is held here.
    let _ = os::at_fork(Some(fork_prepare), Some(fork_parent), Some(fork_child));
    INIT.store(INIT_DONE, Ordering::Release);
}

/// Declares that this copy of buddyslab is the process's `malloc` (the C
/// face calls this first thing): chunks may then come from `brk`.
#[link_section = ".text.hot.buddyslab"]
pub fn set_process_malloc() {
    mm::USE_BRK.store(true, Ordering::Relaxed);
    ensure_init();
}

// fork: why the locks are taken where they are.
//
// The child of a multi-threaded process gets a copy of memory in which
// other threads may have been half-way through changing the allocator's
// structures; the prepare handler therefore takes every allocator lock,
// so the copy is consistent, and the handlers after `fork` release them.
// Where it takes them decides whether `fork` can deadlock:
//
// - glibc's `fork` runs the atfork prepare handlers first and only then
//   takes stdio's list lock (`_IO_list_lock`, held across the system call
//   so the child's `FILE` list is consistent). A prepare handler that
//   takes allocator locks therefore holds them while it waits for the
//   stdio lock, and the holder of the stdio lock may be waiting (through
//   a `FILE` lock) for a thread that is inside `malloc` waiting for an
//   allocator lock: a cycle (glibc bug 19431; glibc's own test
//   `tst-malloc-fork-deadlock`). glibc's malloc avoids it by taking its
//   locks inside `fork`, after the stdio lock. An interposed malloc
//   cannot run there, so buddyslab's prepare handler takes the stdio
//   list lock itself, first, and its own locks after it: glibc's order.
//   The list lock is recursive, so `fork`'s own `_IO_list_lock` then
//   only counts up; in the parent `fork` counts it down once and our
//   parent handler once more; in the child `fork` resets it
//   (`_IO_list_resetlock`) before the child handlers run, so ours leaves
//   it alone. Nothing in buddyslab takes a stdio lock while it holds an
//   allocator lock, so the stdio lock is always first.
// - The other known answer, mimalloc's (no lock held across `fork`, the
//   child repairs what it finds), needs every shared structure to be
//   repairable from any half-done change; buddyslab's zone, slab lists
//   and region tree are not, so the locks stay.
// - A single-threaded process (glibc's `__libc_single_threaded`, the
//   flag `fork` itself tests) takes no lock at all, as glibc does: no
//   other thread can hold one, and when `fork` runs in a signal handler
//   that interrupted `malloc` in this very thread (glibc's
//   `tst-mallocfork2`), taking the lock the interrupted code holds would
//   wait forever. The child then continues, as the parent does, with the
//   interrupted call when the handler returns.
//
// Our handlers are registered when the allocator starts, before the
// program's own (registration allocates), and prepare handlers run in
// the reverse order of registration: ours runs last, after any handler
// of the program's that allocates.

extern "C" {
    /// glibc's stdio list lock (recursive), exported since 2.2.5.
    fn _IO_list_lock();
    /// Releases one level of [`_IO_list_lock`].
    fn _IO_list_unlock();
    /// Non-zero while the process has never had a second thread (glibc
    /// 2.32 and later); `fork` decides on it whether to take locks.
    static __libc_single_threaded: u8;
}

/// Whether the running `fork`'s prepare handler took the locks. Forks of a
/// multi-threaded process are serialised by glibc from the prepare handlers
/// to the parent and child handlers, so one flag serves.
static FORK_LOCKED: AtomicBool = AtomicBool::new(false);

/// Takes the stdio list lock, then every allocator lock in the lock order
/// (see [`crate::mm`]); nothing in a single-threaded process.
extern "C" fn fork_prepare() {
    // SAFETY: a byte glibc keeps for exactly this question.
    if unsafe { ptr::read_volatile(&raw const __libc_single_threaded) } != 0 {
        return;
    }
    // SAFETY: a recursive lock; released by fork_parent, reset by glibc in
    // the child.
    unsafe { _IO_list_lock() };
    large::CACHE.lock_for_fork();
    slab::percpu::lock_all_for_fork();
    slab::NODES_GROW.lock_for_fork();
    mm::GROW.lock_for_fork();
    mm::CHUNKS_AHEAD.lock_for_fork();
    mm::DESCS_AHEAD.lock_for_fork();
    slab::lock_all_for_fork();
    crate::mm::pcp::lock_all_for_fork();
    mm::ZONE.lock_for_fork();
    crate::ledger::vma::TREE.lock_for_fork();
    pagetable::TABLE_POOL.lock_for_fork();
    crate::profile::STATE.lock_for_fork();
    FORK_LOCKED.store(true, Ordering::Relaxed);
}

fn fork_release(in_child: bool) {
    // SAFETY: fork_prepare took each of these in this thread (the child's
    // only thread is the one that forked) and left no guards.
    unsafe {
        crate::profile::STATE.unlock_after_fork(in_child);
        pagetable::TABLE_POOL.unlock_after_fork(in_child);
        crate::ledger::vma::TREE.unlock_after_fork(in_child);
        mm::ZONE.unlock_after_fork(in_child);
        crate::mm::pcp::unlock_all_after_fork(in_child);
        slab::unlock_all_after_fork(in_child);
        mm::DESCS_AHEAD.unlock_after_fork(in_child);
        mm::CHUNKS_AHEAD.unlock_after_fork(in_child);
        mm::GROW.unlock_after_fork(in_child);
        slab::NODES_GROW.unlock_after_fork(in_child);
        slab::percpu::unlock_all_after_fork(in_child);
        large::CACHE.unlock_after_fork(in_child);
    }
}

extern "C" fn fork_parent() {
    if FORK_LOCKED.swap(false, Ordering::Relaxed) {
        fork_release(false);
        // SAFETY: the level fork_prepare took; fork released its own.
        unsafe { _IO_list_unlock() };
    }
}

extern "C" fn fork_child() {
    if FORK_LOCKED.swap(false, Ordering::Relaxed) {
        fork_release(true);
    }
}
