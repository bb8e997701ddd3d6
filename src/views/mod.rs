//! The views: the stats snapshot and its listings, fragmentation, the heap
//! map and the address space. They read what the tiers count; the tiers
//! never call them.

pub mod addrspace;
pub mod frag;
pub mod heapmap;
pub mod snapshot;
pub mod stats;
