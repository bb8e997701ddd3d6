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
//! full is the shared cache's lock taken: a full depot's next list goes
//! to the cache's barn ([`super::barn`]), still whole, and an empty
//! depot's refill takes the barn's newest list before any slab. Threads
//! on different CPUs therefore do not meet on one lock for the objects
//! they keep recycling.
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
/// shared cache when the depot is empty (see [`cache::alloc_for_bin`];
/// `max` bounds only never-used objects). Returns the list and its length.
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
    cache::alloc_for_bin(&super::home_caches()[class], max)
}

/// Gives back `count` objects of `class` (a list linked through the first
/// word) to this CPU's depot, or to the shared cache when it is full.
///
/// # Safety
/// Every object on the list is a free object of `class`, given up.
pub unsafe fn free_batch(class: usize, list: *mut u8, count: usize) {
    let cpu = current_cpu();
    // SAFETY: per the caller.
    unsafe { leave_list(cpu_caches(cpu % MAX_CPUS), cpu, class, list, count) }
}

/// [`free_batch`] into the depot of CPU `cpu` (a remote bin going home,
/// see `magazine::send_home`), or to the shared caches when that CPU has
/// no depots yet or its depot is full.
///
/// # Safety
/// As [`free_batch`].
pub unsafe fn free_batch_on(cpu: usize, class: usize, list: *mut u8, count: usize) {
    // SAFETY: per the caller.
    unsafe { leave_list(CPUS[cpu % MAX_CPUS].load(Ordering::Acquire), cpu, class, list, count) }
}

/// Leaves the list in depot `class` of `pc` (null: none), the depots of
/// `cpu`, when it has room, else in the barn of that CPU's node when that
/// has room, else returns its objects to their slabs.
///
/// # Safety
/// As [`free_batch`]; `pc` is null or published CPU depots.
#[link_section = ".text.hot.buddyslab"]
unsafe fn leave_list(pc: *mut CpuCaches, cpu: usize, class: usize, list: *mut u8, count: usize) {
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
    if let Some(node) = super::node_caches(super::node_of_cpu(cpu)) {
        // SAFETY: per the caller.
        if unsafe { cache::stash(&node[class], list, count) } {
            return;
        }
    }
    // SAFETY: per the caller.
    unsafe { super::free_home(list, count) }
}

/// Empties every CPU's depots, and every node's barns, into the shared
/// caches (for `malloc_trim`).
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
    for cache in super::nodes().flat_map(|node| node.iter()) {
        super::drain_barn(cache, None);
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

    /// A list that finds its CPU's depot full goes back to its slabs while
    /// the class has less than `BARN_MIN_BYTES` out; with more, it waits,
    /// whole, in the barn of the CPU's node, its objects still out of
    /// their slabs; the node's next refill past the depot takes it back as
    /// it is, and a drain (idle, or whatever its age) walks what the barn
    /// keeps home and gives the barn's page back.
    #[test]
    fn a_list_the_depot_cannot_take_waits_in_the_barn() {
        let _serial = crate::slab::DRAIN_TEST_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        std::thread::spawn(|| {
            // No decay scan, and no drain before the zone grows, while the
            // barn is checked.
            let _deferred = crate::mm::defer_decay();
            // Pinned: every call below reads the same CPU's depot.
            // SAFETY: no preconditions.
            let cpu = unsafe { libc::sched_getcpu() } as usize;
            // SAFETY: a zeroed cpu_set_t is the empty set; valid pointers.
            let pinned = unsafe {
                let mut set: libc::cpu_set_t = core::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &set) == 0
            };
            if !pinned || cpu >= crate::slab::MAX_NODES || cpu >= MAX_CPUS {
                std::eprintln!("a_list_the_depot_cannot_take_waits_in_the_barn: cannot pin, skipped");
                return;
            }
            // A class no other test uses.
            let class = crate::slab::class_of(3300);
            let cache = &crate::slab::home_caches()[class];
            let take = |n: usize| {
                let (list, got) = cache::alloc_bulk(cache, n);
                assert!(got >= n, "{got} objects");
                (list, got)
            };
            // A refill on this CPU makes its depots; then both are emptied.
            let (list, n) = alloc_batch(class, 1);
            // SAFETY: `n` free objects of the class, just taken.
            unsafe { free_batch(class, list, n) };
            drain_all();
            assert_eq!((cached_objects(class), cache::stashed(cache)), (0, 0));
            // The barn keeps nothing for a class the program holds little of.
            let (list, n) = take(2);
            // SAFETY: as above; the depot has room.
            unsafe { free_batch(class, list, n) };
            let (small, m) = take(2);
            // SAFETY: as above.
            unsafe {
                free_batch(class, small, m);
                let (extra, k) = take(2);
                free_batch(class, extra, k);
            }
            assert_eq!(cache::stashed(cache), 0, "a barn kept a list of a class with few objects out");
            drain_all();
            // Enough objects out (the program's) for the barn to keep lists.
            let size = crate::slab::size_of_class(class);
            let mut held = std::vec::Vec::new();
            let mut out = 0;
            while out * size < crate::slab::barn::BARN_MIN_BYTES {
                let (list, got) = cache::alloc_bulk(cache, 64);
                assert!(got > 0);
                held.push((list, got));
                out += got;
            }
            let mut in_depot = std::vec::Vec::new();
            for _ in 0..DEPOT_LISTS {
                let (list, n) = take(2);
                // SAFETY: as above.
                unsafe { free_batch(class, list, n) };
                in_depot.push((list, n));
            }
            let active = cache.lock().active_objs;
            let (list, n) = take(3);
            // SAFETY: as above.
            unsafe { free_batch(class, list, n) };
            assert_eq!(cache::stashed(cache), n, "the list did not reach the barn");
            assert_eq!(cache.lock().active_objs, active + n, "the barn's objects went back to their slabs");
            // Refills: the depot's lists, newest first, then the barn's.
            for &expected in in_depot.iter().rev() {
                assert_eq!(alloc_batch(class, 64), expected);
            }
            assert_eq!(alloc_batch(class, 64), (list, n));
            assert_eq!(cache::stashed(cache), 0);
            // Into the barn again, behind a full depot.
            for &(l, m) in &in_depot {
                // SAFETY: the lists just taken back, whole.
                unsafe { free_batch(class, l, m) };
            }
            // SAFETY: as above.
            unsafe { free_batch(class, list, n) };
            assert_eq!(cache::stashed(cache), n);
            let now = crate::mm::clock_ms();
            assert_eq!(crate::slab::drain_barn(cache, Some((now, 60_000))), 0, "a barn just used is not idle");
            assert_eq!(cache::stashed(cache), n);
            assert_eq!(crate::slab::drain_barn(cache, Some((now.wrapping_add(60_000), 60_000))), 1, "an idle barn goes home");
            assert_eq!(cache::stashed(cache), 0);
            assert_eq!(cache.lock().active_objs, active, "the barn's objects are back in their slabs");
            assert_eq!(crate::slab::drain_barn(cache, None), 0, "nothing left, no page");
            for (list, got) in held {
                // SAFETY: the objects held, free objects of the class.
                unsafe { crate::slab::free_home(list, got) };
            }
            cache.lock().check();
            drain_all();
        })
        .join()
        .unwrap();
    }
}
