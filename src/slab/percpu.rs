//! Per-CPU depots: the layer between the per-thread magazines and the
//! shared [`KmemCache`](super::KmemCache)s, in the spirit of the kernel's
//! SLAB, which kept an `array_cache` per CPU in front of each cache's slab
//! lists.
//!
//! For every CPU and size class there is a small *depot* under its own
//! lock: up to [`DEPOT_LISTS`] lists of free objects, each a batch a bin
//! gave back (linked through the objects' first word, as bins are). A
//! thread whose bin is empty takes a whole list from its CPU's depot; a
//! thread whose bin is full leaves one there. Both are O(1): no object is
//! touched and no slab descriptor either. Only when the depot is empty or
//! full is the shared cache's lock taken. Threads on different CPUs
//! therefore do not meet on one lock for the objects they keep recycling.
//!
//! The CPU number comes from the rseq area glibc 2.35+ registers for every
//! thread (`__rseq_offset` from the thread pointer, field `cpu_id`), and
//! from `sched_getcpu()` when glibc has no rseq registration
//! (`__rseq_size == 0`, or the kernel refused it). A thread may migrate
//! between reading the number and taking the lock; that only costs
//! locality, never correctness: each depot has its own lock.
//!
//! The depots for a CPU are allocated the first time that CPU is seen, from
//! buddy pages marked as allocator metadata.
//!
//! Lock order: a CPU depot lock is taken before any slab cache lock (see
//! [`crate::mm`] for the whole order).

use super::{cache, NR_CLASSES};
use crate::mm;
use crate::os::sync::Mutex;
use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};

/// Lists one CPU's depot holds for one class: two, so a bin that
/// overflows and one that runs dry on the same CPU meet here without the
/// cache lock; every further list is memory held per CPU and class.
pub const DEPOT_LISTS: usize = 2;
/// CPUs with their own depots; higher CPU numbers share by modulo.
pub const MAX_CPUS: usize = 256;

/// Free objects of one class cached for one CPU: up to [`DEPOT_LISTS`]
/// lists, each with its length.
pub struct Depot {
    nr: usize,
    lists: [(*mut u8, usize); DEPOT_LISTS],
}

// SAFETY: the pointers are free objects owned by whoever holds the lock.
unsafe impl Send for Depot {}

/// One CPU's depots, one per size class.
pub struct CpuCaches {
    depots: [Mutex<Depot>; NR_CLASSES],
}

const CPU_CACHES_ORDER: usize = mm::order_for_pages(core::mem::size_of::<CpuCaches>().div_ceil(4096));

static CPUS: [AtomicPtr<CpuCaches>; MAX_CPUS] = [const { AtomicPtr::new(ptr::null_mut()) }; MAX_CPUS];
static CPUS_GROW: Mutex<()> = Mutex::new(());

pub use crate::os::current_cpu;

/// The depots of `cpu`, allocated on first use; null when no memory.
fn cpu_caches(cpu: usize) -> *mut CpuCaches {
    let c = CPUS[cpu].load(Ordering::Acquire);
    if !c.is_null() {
        return c;
    }
    allocate_cpu_caches(cpu)
}

#[cold]
#[inline(never)]
#[link_section = ".text.hot.buddyslab"]
fn allocate_cpu_caches(cpu: usize) -> *mut CpuCaches {
    // No decay scan (and its system calls) while CPUS_GROW is held.
    let _deferred = mm::defer_decay();
    let _g = CPUS_GROW.lock();
    let c = CPUS[cpu].load(Ordering::Acquire);
    if !c.is_null() {
        return c;
    }
    let Some((head, zero)) = mm::alloc_pages(CPU_CACHES_ORDER) else { return ptr::null_mut() };
    // The pages stay PG_NONE: a free() of an address inside them is
    // reported as not ours.
    let mem = crate::mm::page::page_address(head) as *mut CpuCaches;
    if !zero {
        // SAFETY: the block is ours and large enough.
        unsafe { ptr::write_bytes(mem.cast::<u8>(), 0, core::mem::size_of::<CpuCaches>()) };
    }
    // All-zero bytes are valid: unlocked mutexes over empty depots.
    CPUS[cpu].store(mem, Ordering::Release);
    mem
}

/// Takes free objects of `class` for the calling thread's bin, linked
/// through their first word: a list from this CPU's depot, or from the
/// shared cache when the depot is empty (see [`cache::alloc_bulk`]; `max`
/// bounds only never-used objects). Returns the list and its length.
pub fn alloc_batch(class: usize, max: usize) -> (*mut u8, usize) {
    let pc = cpu_caches(current_cpu() % MAX_CPUS);
    if !pc.is_null() {
        // SAFETY: CPU depots live forever once published.
        let mut depot = unsafe { (*pc).depots[class].lock() };
        if depot.nr > 0 {
            depot.nr -= 1;
            let nr = depot.nr;
            return depot.lists[nr];
        }
    }
    cache::alloc_bulk(&super::home_caches()[class], max)
}

/// Gives back `count` objects of `class` (a list linked through the first
/// word) to this CPU's depot, or to the shared cache when it is full.
///
/// # Safety
/// Every object on the list is a free object of `class`, given up.
pub unsafe fn free_batch(class: usize, list: *mut u8, count: usize) {
    // SAFETY: per the caller.
    unsafe { leave_list(cpu_caches(current_cpu() % MAX_CPUS), class, list, count) }
}

/// [`free_batch`] into the depot of CPU `cpu` (a remote bin going home,
/// see `magazine::send_home`), or to the shared caches when that CPU has
/// no depots yet or its depot is full.
///
/// # Safety
/// As [`free_batch`].
pub unsafe fn free_batch_on(cpu: usize, class: usize, list: *mut u8, count: usize) {
    // SAFETY: per the caller.
    unsafe { leave_list(CPUS[cpu % MAX_CPUS].load(Ordering::Acquire), class, list, count) }
}

/// Leaves the list in depot `class` of `pc` (null: none) when it has
/// room, else returns its objects to their slabs.
///
/// # Safety
/// As [`free_batch`]; `pc` is null or published CPU depots.
#[link_section = ".text.hot.buddyslab"]
unsafe fn leave_list(pc: *mut CpuCaches, class: usize, list: *mut u8, count: usize) {
    if !pc.is_null() {
        // SAFETY: CPU depots live forever once published.
        let mut depot = unsafe { (*pc).depots[class].lock() };
        if depot.nr < DEPOT_LISTS {
            let nr = depot.nr;
            depot.lists[nr] = (list, count);
            depot.nr += 1;
            return;
        }
    }
    // SAFETY: per the caller.
    unsafe { super::free_home(list, count) }
}

/// Empties every CPU's depots into the shared caches (for `malloc_trim`).
pub fn drain_all() {
    for slot in CPUS.iter() {
        let pc = slot.load(Ordering::Acquire);
        if pc.is_null() {
            continue;
        }
        // SAFETY: published CPU depots live forever.
        let depots = unsafe { &(*pc).depots };
        for depot_lock in depots.iter() {
            loop {
                let mut depot = depot_lock.lock();
                if depot.nr == 0 {
                    break;
                }
                depot.nr -= 1;
                let (list, n) = depot.lists[depot.nr];
                drop(depot);
                // SAFETY: `n` free objects of this depot's class.
                unsafe { super::free_home(list, n) };
            }
        }
    }
}

/// Objects held in all CPU depots for `class` (for stats and tests).
pub fn cached_objects(class: usize) -> usize {
    CPUS.iter()
        .map(|slot| {
            let pc = slot.load(Ordering::Acquire);
            if pc.is_null() {
                return 0;
            }
            // SAFETY: published CPU depots live forever.
            let depot = unsafe { (*pc).depots[class].lock() };
            depot.lists[..depot.nr].iter().map(|l| l.1).sum::<usize>()
        })
        .sum()
}

/// Takes the CPU-depot growth lock and every CPU depot lock, CPU by CPU
/// and class by class (atfork prepare; first in the lock order).
pub fn lock_all_for_fork() {
    CPUS_GROW.lock_for_fork();
    for slot in CPUS.iter() {
        let pc = slot.load(Ordering::Acquire);
        if !pc.is_null() {
            // SAFETY: published CPU depots live forever.
            unsafe { (*pc).depots.iter().for_each(|a| a.lock_for_fork()) };
        }
    }
}

/// Releases what [`lock_all_for_fork`] took.
///
/// # Safety
/// [`lock_all_for_fork`] ran in this thread (or in the forking parent).
pub unsafe fn unlock_all_after_fork(in_child: bool) {
    for slot in CPUS.iter() {
        let pc = slot.load(Ordering::Acquire);
        if !pc.is_null() {
            // SAFETY: taken by lock_all_for_fork, no guards exist.
            unsafe { (*pc).depots.iter().for_each(|a| a.unlock_after_fork(in_child)) };
        }
    }
    // SAFETY: as above.
    unsafe { CPUS_GROW.unlock_after_fork(in_child) };
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn current_cpu_matches_the_kernel() {
        // The thread may migrate between the two reads; retry a few times.
        let agrees = (0..100).any(|_| {
            let ours = current_cpu() % MAX_CPUS;
            // SAFETY: no preconditions.
            let kernel = unsafe { libc::sched_getcpu() } as usize % MAX_CPUS;
            ours == kernel
        });
        assert!(agrees, "rseq cpu_id never matched sched_getcpu");
    }
}
