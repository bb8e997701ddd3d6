//! The Rust face: `#[global_allocator] static A: BuddySlab = BuddySlab;`.

#[cfg(not(feature = "secure"))]
use crate::heap;
// The secure build's checks and quarantine, behind the same functions.
#[cfg(feature = "secure")]
use crate::heap::secure as heap;
use core::alloc::{GlobalAlloc, Layout};

/// buddyslab as a Rust global allocator. Out-of-memory returns null, and
/// Rust's own path (`handle_alloc_error`) takes it from there.
#[derive(Clone, Copy, Debug, Default)]
pub struct BuddySlab;

// SAFETY: every block returned is at least `layout.size()` bytes, aligned to
// `layout.align()`, and stays valid until passed back to `dealloc` or
// `realloc`; the heap is thread-safe.
unsafe impl GlobalAlloc for BuddySlab {
    #[inline]
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if layout.align() <= heap::MIN_ALIGN {
            heap::malloc(layout.size())
        } else {
            heap::aligned_alloc(layout.align(), layout.size())
        }
    }

    #[inline]
    unsafe fn dealloc(&self, ptr: *mut u8, _layout: Layout) {
        // SAFETY: `ptr` came from this allocator and is given up by the caller.
        unsafe { heap::free(ptr) }
    }

    #[inline]
    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        heap::zeroed_alloc(layout.size(), layout.align())
    }

    #[inline]
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: `ptr` is live with `layout`; GlobalAlloc guarantees
        // new_size > 0 and that the rounded size does not overflow.
        unsafe { heap::realloc_aligned(ptr, new_size, layout.align().max(heap::MIN_ALIGN)) }
    }
}
