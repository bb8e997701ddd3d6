//! The page allocator: page descriptors and the chunk map (`page`), the
//! zone and its `free_area[order]` (`zone`), per-CPU page lists (`pcp`).
//! It uses only `os` and `options`; what it must tell the layers above
//! (regions mapped, pages handed out and given back) goes through the
//! hooks they register (`hooks`).

pub mod hooks;
pub mod page;
pub mod pcp;
mod zone;

pub use zone::*;
