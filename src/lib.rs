//! buddyslab: a `malloc` built the way the Linux kernel manages memory.
//!
//! The layers, each using only those below it (docs/ARCHITECTURE.md has
//! them in full; `tests/layers.rs` checks the order):
//!
//! ```text
//!  global (GlobalAlloc)            cdylib/ (C ABI, separate crate)
//!              \                    /
//!    heap::secure (`secure` feature only): canaries, quarantine, guards
//!              |
//!    heap: size/alignment -> tier, pointer -> owner; set-up, fork
//!              |
//!    views: snapshot, stats, frag, heapmap, addrspace, prof (they read)
//!              |
//!    large: the mmap-threshold tier (its blocks are regions of the tree)
//!              |
//!    ledger: region tree (vma) + page-table shadow, told through hooks
//!              |
//!    slab: size classes, kmem_cache, per-CPU depots, magazines
//!              |
//!    profile: the heap profile's sampling budgets, stacks and live samples
//!              |
//!    mm: page descriptors, zone and free_area[order], pcp, chunks, reclaim
//!              |
//!    counters, options, os (system calls, sync, fmt)
//! ```
//!
//! The public API is [`BuddySlab`], the views ([`stats`], [`frag`],
//! [`heapmap`], [`addrspace`], [`prof`]) and [`heap`]; the tiers are
//! private.
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
//! or from C by preloading `libbuddyslab.so`. The `secure` feature (and
//! the second library, `libbuddyslab_secure.so`) puts `heap::secure`, a
//! layer of canaries, quarantine and guard pages, between both faces and
//! the heap's dispatch. The README's design section describes the
//! architecture and the rules the code keeps (above all: the allocator
//! never allocates from itself).

// No `std` outside tests: the preloaded library then carries no std
// runtime (argument capture at load, backtrace symbolisation, libgcc_s
// for unwinding), whose code and data every process would map and touch.
#![cfg_attr(not(test), no_std)]

#[cfg(all(not(test), not(target_arch = "x86_64")))]
extern crate std;

// The layers, lowest first (docs/ARCHITECTURE.md; tests/layers.rs checks
// that no module names one above its own).
pub(crate) mod os;
pub(crate) mod options;
pub(crate) mod counters;
pub(crate) mod mm;
pub(crate) mod profile;
pub(crate) mod slab;
pub(crate) mod ledger;
pub(crate) mod large;
pub mod views;
#[doc(hidden)]
pub mod heap;
pub mod global;
#[doc(hidden)]
pub mod internals;

// The public API: the global allocator and the views of the heap.
pub use views::{addrspace, frag, heapmap, live, prof, report, stats};

pub use global::BuddySlab;
