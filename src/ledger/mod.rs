//! The ledger: the region tree (`vma`, the kernel's `vm_area_struct`s) and
//! the page-table shadow (`pagetable`). It observes the tiers below through
//! the hooks it registers with them; none of them names it.

pub mod pagetable;
pub mod vma;
