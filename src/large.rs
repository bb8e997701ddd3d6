//! The mmap-threshold tier: a request at or above the threshold (128 KiB by
//! default, like glibc's `M_MMAP_THRESHOLD`) gets a mapping of its own,
//! recorded in the region tree as `[buddyslab:large]`. `free` finds it there
//! and unmaps it; `realloc` resizes it with `mremap`, which moves page
//! table entries instead of copying bytes.
//!
//! Requests between 32 KiB and the threshold, and any request the buddy
//! allocator cannot hold (over 4 MiB), are sent here or to the page tier by
//! [`crate::heap`]; this module only maps, unmaps and remaps.

use crate::buddy::{align_up, map_aligned};
use crate::os::{self, PAGE_SIZE};
use crate::vma::{self, VmaKind};
use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering};

/// Default mmap threshold (glibc's `DEFAULT_MMAP_THRESHOLD_MIN`).
pub const DEFAULT_MMAP_THRESHOLD: usize = 128 * 1024;
/// Largest threshold `mallopt` accepts (glibc's `HEAP_MAX_SIZE / 2` on
/// 64-bit).
pub const MAX_MMAP_THRESHOLD: usize = 32 * 1024 * 1024;

/// Requests of at least this many bytes get their own mapping.
pub static MMAP_THRESHOLD: AtomicUsize = AtomicUsize::new(DEFAULT_MMAP_THRESHOLD);
/// Live large blocks.
pub static NR_LARGE: AtomicUsize = AtomicUsize::new(0);
/// Bytes mapped for live large blocks.
pub static LARGE_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Maps a block of at least `size` bytes aligned to `align` (a power of
/// two). Null when the system refuses or the size is impossible.
pub fn alloc(size: usize, align: usize) -> *mut u8 {
    if size > isize::MAX as usize - 2 * PAGE_SIZE {
        return ptr::null_mut();
    }
    let len = align_up(size.max(1), PAGE_SIZE);
    let Ok(start) = map_aligned(len, align.max(PAGE_SIZE)) else { return ptr::null_mut() };
    if !vma::record_sized(start, start + len, VmaKind::Large, size) {
        // Without a record, free could not find it: give it back.
        // SAFETY: mapped just now, never handed out.
        unsafe {
            let _ = os::munmap(start, len);
        }
        return ptr::null_mut();
    }
    NR_LARGE.fetch_add(1, Ordering::Relaxed);
    LARGE_BYTES.fetch_add(len, Ordering::Relaxed);
    start as *mut u8
}

/// Unmaps the large block at `p`. Returns false when `p` is not the start
/// of a large block (the caller reports the bad pointer).
///
/// # Safety
/// If `p` is a large block, nothing uses it afterwards.
pub unsafe fn free(p: *mut u8) -> bool {
    match vma::remove_exact(p as usize, VmaKind::Large) {
        Ok(region) => {
            let len = region.end - region.start;
            // SAFETY: the region was ours and is now out of the tree.
            unsafe {
                let _ = os::munmap(region.start, len);
            }
            NR_LARGE.fetch_sub(1, Ordering::Relaxed);
            LARGE_BYTES.fetch_sub(len, Ordering::Relaxed);
            true
        }
        Err(_) => false,
    }
}

/// Usable bytes of the large block at `p`, or `None` if `p` is not one.
pub fn usable_size(p: *mut u8) -> Option<usize> {
    match vma::lookup(p as usize) {
        Some(r) if r.kind == VmaKind::Large && r.start == p as usize => Some(r.end - r.start),
        _ => None,
    }
}

/// Resizes the large block at `p` to hold `new_size` bytes with `mremap`
/// (moving it if needed, without copying). Null when the kernel refuses
/// (the block is then unchanged). `p` must be a large block.
///
/// # Safety
/// `p` is a live large block; after a non-null return that differs from
/// `p`, the old address must not be used.
pub unsafe fn resize(p: *mut u8, new_size: usize) -> *mut u8 {
    if new_size > isize::MAX as usize - 2 * PAGE_SIZE {
        return ptr::null_mut();
    }
    let new_len = align_up(new_size.max(1), PAGE_SIZE);
    let mut old_len = 0;
    let moved = vma::remap(p as usize, VmaKind::Large, |r| {
        old_len = r.end - r.start;
        if new_len == old_len {
            return Some((r.start, r.end, new_size));
        }
        // SAFETY: the region is one whole mapping of ours; the tree lock
        // is held, so its record changes with it.
        let new = unsafe { os::mremap_maymove(r.start, old_len, new_len) }.ok()?;
        Some((new, new + new_len, new_size))
    });
    match moved {
        Some(r) => {
            LARGE_BYTES.fetch_add(new_len, Ordering::Relaxed);
            LARGE_BYTES.fetch_sub(old_len, Ordering::Relaxed);
            r.start as *mut u8
        }
        None => ptr::null_mut(),
    }
}
