//! The slab tier: one [`KmemCache`] per size class and *node*, plus the
//! allocator's own metadata cache for VMA tree nodes (the kernel's
//! `vm_area_cachep`).
//!
//! Nodes: the kernel keeps one `kmem_cache_node` (slab lists under their
//! own lock) per NUMA node. buddyslab keeps one set of caches per CPU
//! (up to [`MAX_NODES`], CPUs beyond share by modulo): threads running on
//! different CPUs refill from and return to different slabs under
//! different locks, so they neither wait for each other nor share cache
//! lines of slab memory or slab descriptors. Node 0 is the static
//! [`CACHES`], usable before anything is allocated; the others are made
//! from buddy pages the first time their CPU refills. Objects always go
//! back to the node their slab belongs to (its head descriptor records
//! node and cache index), whichever CPU frees them.
//!
//! `CACHES[0..NR_CLASSES]` serve user requests up to [`SLAB_MAX`];
//! `CACHES[VM_AREA_CACHE]` holds [`crate::ledger::vma::VmArea`] nodes (node 0
//! only).

pub mod barn;
pub mod cache;
pub mod link;
pub mod magazine;
pub mod percpu;
#[cfg(feature = "secure")]
pub mod shuffle;
pub mod size_class;

pub use cache::{CacheStats, KmemCache};
pub use size_class::{class_for_aligned, class_of, is_slot_start, size_of_class, CLASSES, NR_CLASSES, SLAB_MAX, TABLE_MAX};

use crate::mm;
use crate::mm::page::Page;
use crate::os::sync::Mutex;
use core::ptr;
use core::sync::atomic::{AtomicPtr, Ordering};

/// Index of the VMA node cache in [`CACHES`].
pub const VM_AREA_CACHE: usize = NR_CLASSES;
/// Number of caches.
pub const NR_CACHES: usize = NR_CLASSES + 1;
/// Object size of the VMA node cache.
pub const VM_AREA_SIZE: usize = 64;

const fn build_caches() -> [Mutex<KmemCache>; NR_CACHES] {
    let mut out = [const { Mutex::new(KmemCache::new(0, size_class::geometry(16))) }; NR_CACHES];
    let mut i = 0;
    while i < NR_CLASSES {
        out[i] = Mutex::new(KmemCache::new(i as u8, size_class::geometry(size_class::class_size(i))));
        i += 1;
    }
    out[VM_AREA_CACHE] = Mutex::new(KmemCache::new(VM_AREA_CACHE as u8, size_class::geometry(VM_AREA_SIZE)));
    out
}

/// One node's caches, by index.
pub type NodeCaches = [Mutex<KmemCache>; NR_CACHES];

/// Node 0's caches (and the only VMA node cache), by index.
pub static CACHES: NodeCaches = build_caches();

/// Nodes at most; CPU `n` uses node `n % MAX_NODES`.
pub const MAX_NODES: usize = 64;

static NODES: [AtomicPtr<NodeCaches>; MAX_NODES] = {
    let mut nodes = [const { AtomicPtr::new(ptr::null_mut()) }; MAX_NODES];
    nodes[0] = AtomicPtr::new(&raw const CACHES as *mut NodeCaches);
    nodes
};
/// Lock for making nodes (see [`crate::mm`] for the lock order).
pub static NODES_GROW: Mutex<()> = Mutex::new(());

const NODE_ORDER: usize = mm::order_for_pages(core::mem::size_of::<NodeCaches>().div_ceil(4096));

/// The node of the calling thread's CPU (a hint: the thread may move).
#[inline]
pub fn home_node() -> usize {
    node_of_cpu(crate::os::current_cpu())
}

/// The node of CPU `cpu`.
#[inline]
pub fn node_of_cpu(cpu: usize) -> usize {
    cpu % MAX_NODES
}

/// The caches of the calling thread's CPU's node, made on first use;
/// node 0's when memory for a new node cannot be had.
#[inline]
pub fn home_caches() -> &'static NodeCaches {
    let node = home_node();
    let p = NODES[node].load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: published nodes live forever.
        return unsafe { &*p };
    }
    make_node(node)
}

#[cold]
#[inline(never)]
#[link_section = ".text.hot.buddyslab"]
fn make_node(node: usize) -> &'static NodeCaches {
    // No decay scan (and its system calls) while NODES_GROW is held.
    let _deferred = mm::defer_decay();
    let _g = NODES_GROW.lock();
    let p = NODES[node].load(Ordering::Acquire);
    if !p.is_null() {
        // SAFETY: published nodes live forever.
        return unsafe { &*p };
    }
    // The pages stay PG_NONE, so a free() into them is reported as not ours.
    let Some((head, _)) = mm::alloc_pages(NODE_ORDER) else { return &CACHES };
    let mem = crate::mm::page::page_address(head) as *mut Mutex<KmemCache>;
    for index in 0..NR_CACHES {
        let size = if index < NR_CLASSES { size_class::class_size(index) } else { VM_AREA_SIZE };
        let cache = KmemCache::new(index as u8, size_class::geometry(size)).on_node(node as u8);
        // SAFETY: the block is ours and holds NR_CACHES caches.
        unsafe { mem.add(index).write(Mutex::new(cache)) };
    }
    let p = mem.cast::<NodeCaches>();
    NODES[node].store(p, Ordering::Release);
    // SAFETY: just initialised; lives forever.
    unsafe { &*p }
}

/// The caches of `node`, if it has been made.
pub fn node_caches(node: usize) -> Option<&'static NodeCaches> {
    let p = NODES.get(node)?.load(Ordering::Acquire);
    // SAFETY: published nodes live forever.
    (!p.is_null()).then(|| unsafe { &*p })
}

/// Objects of class `index` kept in the barns of every node (for stats
/// and tests).
pub fn stashed_objects(index: usize) -> usize {
    nodes().map(|node| cache::stashed(&node[index])).sum()
}

/// Every node made so far, in node order.
pub fn nodes() -> impl Iterator<Item = &'static NodeCaches> {
    (0..MAX_NODES).filter_map(node_caches)
}

/// The cache that owns the slab headed by `slab`.
///
/// # Safety
/// `slab` heads a live slab.
#[inline]
pub unsafe fn cache_of_slab(slab: *mut Page) -> &'static Mutex<KmemCache> {
    // SAFETY: per the caller; the node of a slab was published before the
    // slab was made.
    unsafe {
        let node = NODES[(*slab).node as usize].load(Ordering::Acquire);
        &(*node)[(*slab).class as usize]
    }
}

/// The node of the user slab holding `p`, if `p` lies in one.
pub fn node_of(p: *const u8) -> Option<usize> {
    let desc = crate::mm::page::page_of(p as usize);
    // SAFETY: descriptors of published chunks are live.
    (!desc.is_null() && unsafe { (*desc).user_class } != 0).then(|| unsafe { (*desc).node } as usize)
}

/// Returns `count` free objects (a list linked through their first word,
/// of any classes and nodes) each to the cache that owns its slab.
///
/// # Safety
/// Every object on the list is a free object of a user slab, given up.
#[link_section = ".text.hot.buddyslab"]
pub unsafe fn free_home(list: *mut u8, count: usize) {
    // SAFETY: per the caller; `cache_of_slab` names each slab's owner.
    unsafe { cache::free_bulk_by(list, count, |slab| cache_of_slab(slab)) }
}

/// Sends every list in the barn of `cache` home to its slabs and gives
/// the barn's page back, when the barn has sat unused for `idle`'s age at
/// its time (`(now_ms, age_ms)`), or whatever its age (`None`). Returns
/// the pages given back to the buddy allocator (the barn's page).
pub fn drain_barn(cache: &Mutex<KmemCache>, idle: Option<(u32, u32)>) -> usize {
    let Some(barn) = cache::take_barn(cache, idle) else { return 0 };
    for i in 0..barn.lists() {
        // SAFETY: a list the barn kept: free objects of user slabs, now
        // ours alone.
        unsafe {
            let (list, n) = barn.list(i);
            free_home(list, n);
        }
    }
    // SAFETY: the barn's page (order 0), no longer read.
    unsafe { mm::free_pages(barn.into_page(), 0) };
    1
}

/// Figures of cache `index`, summed over every node.
pub fn cache_stats(index: usize) -> CacheStats {
    let mut sum = CacheStats::default();
    for node in nodes() {
        let s = node[index].lock().stats();
        sum.objsize = s.objsize;
        sum.objperslab = s.objperslab;
        sum.pagesperslab = s.pagesperslab;
        sum.active_objs += s.active_objs;
        sum.num_objs += s.num_objs;
        sum.active_slabs += s.active_slabs;
        sum.num_slabs += s.num_slabs;
        sum.partial_slabs += s.partial_slabs;
    }
    sum
}

/// Takes every cache lock, node by node (atfork prepare; see
/// [`crate::mm`] for the order).
pub fn lock_all_for_fork() {
    for node in nodes() {
        node.iter().for_each(|c| c.lock_for_fork());
    }
}

/// Releases what [`lock_all_for_fork`] took.
///
/// # Safety
/// [`lock_all_for_fork`] ran in this thread (or in the forking parent).
pub unsafe fn unlock_all_after_fork(in_child: bool) {
    for node in nodes() {
        // SAFETY: taken by lock_all_for_fork; no guards exist.
        node.iter().rev().for_each(|c| unsafe { c.unlock_after_fork(in_child) });
    }
}

/// Name of cache `index` for the views.
pub fn cache_name(index: usize) -> &'static str {
    if index == VM_AREA_CACHE {
        "vm_area_struct"
    } else {
        "kmalloc"
    }
}

/// The slab caches' shrinker (registered with the buddy allocator): every
/// cache whose reserved empty slabs have sat unused for `min_age_ms` gives
/// them back; with no age, every cache does. Returns the pages given back.
#[link_section = ".text.hot.buddyslab"]
pub fn shrink_idle(control: mm::ShrinkControl) -> usize {
    let mut released = 0;
    for cache in nodes().flat_map(|node| node.iter()) {
        // A barn goes home first, so the slabs its lists empty are in the
        // reserve below (and go back at once when nothing is kept).
        released += drain_barn(cache, control.min_age_ms.map(|age| (control.now_ms, age)));
        let idle = match control.min_age_ms {
            None => true,
            Some(age) => {
                let c = cache.lock();
                !c.slabs_empty.is_empty() && control.now_ms.wrapping_sub(c.empty_since) >= age
            }
        };
        if idle {
            released += cache::shrink(cache);
        }
    }
    released
}

/// The slab tier's request samples.
#[link_section = ".bss.cold.buddyslab"]
pub static SLAB_SAMPLES: crate::counters::SlabSampler<NR_CLASSES> = crate::counters::SlabSampler::new();

/// Records one sampled request of `size` bytes served by size class
/// `class`. Cold and lock-free (two relaxed additions), allocates nothing;
/// meant for the magazine's refill slow path, never the fast path.
#[cold]
#[inline(never)]
#[link_section = ".text.hot.buddyslab"]
pub fn sample_request(class: usize, size: usize) {
    SLAB_SAMPLES.record(class, size);
}

/// Taken by the unit tests that empty every depot and barn (`trim`,
/// [`percpu::drain_all`]) or check what one holds, so that one test never
/// drains what another is counting.
#[cfg(test)]
pub static DRAIN_TEST_LOCK: std::sync::Mutex<()> = std::sync::Mutex::new(());

#[cfg(test)]
mod tests {
    use super::*;

    /// Checks every cache of every node and the zone: between them they
    /// look at the fast-path tag of every slab page and every free page.
    fn check_everything() {
        for node in nodes() {
            node.iter().for_each(|c| c.lock().check());
        }
        crate::mm::ZONE.lock().check();
    }

    /// `free`'s fast path reads a page's tag, not its descriptor: objects
    /// of several classes (slabs of orders 0 to 3) come from the heap and
    /// go back, and a trim gives their slabs back to the buddy allocator;
    /// every slab page must carry its class and node, and every page of a
    /// free block no tag, all along.
    #[test]
    fn fast_path_tags_follow_slabs_into_and_out_of_use() {
        let _serial = DRAIN_TEST_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        let sizes = [16, 100, 700, 3000, 9000, 30000];
        let mut held: std::vec::Vec<*mut u8> = std::vec::Vec::new();
        for &size in &sizes {
            held.extend((0..300).map(|_| crate::heap::malloc(size)));
        }
        assert!(held.iter().all(|p| !p.is_null()));
        check_everything();
        for p in held.drain(..) {
            // SAFETY: allocated above, freed once.
            unsafe { crate::heap::free(p) };
        }
        crate::heap::trim();
        check_everything();
    }
}
