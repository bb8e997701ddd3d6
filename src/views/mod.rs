//! The views: the stats snapshot and its listings, fragmentation, the heap
//! map, the address space and the heap profile, and when and where they
//! are written (the triggers, the live page, the tool's pipe). They read
//! what the tiers count; the tiers never call them (the slow-path trigger
//! is a hook the views register in `counters`).

pub mod addrspace;
pub mod frag;
pub mod heapmap;
pub mod live;
pub mod prof;
pub mod report;
pub mod snapshot;
pub mod stats;
pub(crate) mod tool;
