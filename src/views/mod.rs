//! The views: the stats snapshot and its listings, fragmentation, the heap
//! map, the address space and the heap profile. They read what the tiers
//! count; the tiers never call them.

pub mod addrspace;
pub mod frag;
pub mod heapmap;
pub mod prof;
pub mod snapshot;
pub mod stats;
