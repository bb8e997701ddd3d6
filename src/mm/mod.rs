//! The page allocator, in the order its files use one another: page
//! descriptors and the chunk map (`page`), the zone and its
//! `free_area[order]` (`zone`), per-CPU page lists (`pcp`), per-thread lists of
//! freed page-tier runs (`runs`), growth by
//! chunks (`chunk`), giving memory back (`reclaim`: decay, shrinkers,
//! `madvise`), and the front door that allocates and frees pages
//! (`page_alloc`). It uses only `os`, `options` and `counters`; what it
//! must tell the layers above (chunks mapped, pages handed out and given
//! back) goes through the hooks they register (`hooks`).

mod chunk;
pub mod hooks;
pub mod page;
mod page_alloc;
pub mod pcp;
mod reclaim;
pub mod runs;
mod zone;

pub use crate::os::{align_up, pages_for};
pub use chunk::*;
pub use page_alloc::*;
pub use reclaim::*;
pub use zone::*;
