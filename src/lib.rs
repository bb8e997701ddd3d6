//! buddyslab: a `malloc` built the way the Linux kernel manages memory.
//!
//! The layers, each using only those below it:
//!
//! ```text
//!  global (GlobalAlloc)        cdylib/ (C ABI, separate crate)
//!            \                  /
//!             heap: size/alignment -> tier, pointer -> owner
//!            /          |          \
//!   slab (kmem_cache)  large (mmap)  stats (views)
//!           |            |
//!   buddy (free_area[order], chunks)
//!           |            |
//!   page (struct page, chunk map) + vma (region tree) + pagetable (shadow)
//!           |
//!   os (system calls) + sync (futex mutex)
//! ```
//!
//! Use it from Rust as the global allocator:
//!
//! ```
//! #[global_allocator]
//! static A: buddyslab::BuddySlab = buddyslab::BuddySlab;
//!
//! fn main() {
//!     let v: Vec<u64> = (0..1000).collect();
//!     assert_eq!(v.iter().sum::<u64>(), 499_500);
//!     // The block came from buddyslab's slab tier.
//!     assert!(buddyslab::heap::is_slab_object(v.as_ptr() as *mut u8) || v.capacity() * 8 > 32 * 1024);
//! }
//! ```
//!
//! or from C by preloading `libbuddyslab.so`. The README's design section
//! describes the architecture and the rules the code keeps (above all:
//! the allocator never allocates from itself).

// No `std` outside tests: the preloaded library then carries no std
// runtime (argument capture at load, backtrace symbolisation, libgcc_s
// for unwinding), whose code and data every process would map and touch.
#![cfg_attr(not(test), no_std)]

#[cfg(all(not(test), not(target_arch = "x86_64")))]
extern crate std;

// The public API: the global allocator and the views of the heap. The
// tiers below are public only so that the C face (a separate crate), the
// tool and the integration tests can reach them; they are hidden from the
// documentation and carry no stability promise.
pub mod addrspace;
pub mod frag;
pub mod global;
pub mod heapmap;
pub mod prof;
pub mod stats;

#[doc(hidden)]
pub mod buddy;
#[doc(hidden)]
pub mod heap;
#[doc(hidden)]
pub mod large;
#[doc(hidden)]
pub mod options;
#[doc(hidden)]
pub mod os;
#[doc(hidden)]
pub mod page;
#[doc(hidden)]
pub mod pagetable;
#[doc(hidden)]
pub mod pcp;
#[doc(hidden)]
pub mod slab;
#[doc(hidden)]
pub mod sync;
#[doc(hidden)]
pub mod vma;

pub use global::BuddySlab;
