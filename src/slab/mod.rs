//! The slab tier: one [`KmemCache`] per size class, plus the allocator's
//! own metadata cache for VMA tree nodes (the kernel's `vm_area_cachep`).
//!
//! `CACHES[0..NR_CLASSES]` serve user requests up to [`SLAB_MAX`];
//! `CACHES[VM_AREA_CACHE]` holds [`crate::vma::VmArea`] nodes. A slab's head
//! page descriptor records its cache index, so `free` finds the cache from
//! the object's address alone.

pub mod cache;
pub mod magazine;
pub mod percpu;
pub mod size_class;

pub use cache::{CacheStats, KmemCache};
pub use size_class::{class_for_aligned, class_of, size_of_class, ClassInfo, CLASSES, NR_CLASSES, SLAB_MAX};

use crate::sync::Mutex;

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

/// Every slab cache, by index.
pub static CACHES: [Mutex<KmemCache>; NR_CACHES] = build_caches();

/// Name of cache `index` for the views.
pub fn cache_name(index: usize) -> &'static str {
    if index == VM_AREA_CACHE {
        "vm_area_struct"
    } else {
        "kmalloc"
    }
}
