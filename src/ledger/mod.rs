//! The ledger: the region tree (`vma`, the kernel's `vm_area_struct`s) and
//! the page-table shadow (`pagetable`). It observes the tiers below through
//! the hooks it registers with them; none of them names it.

pub mod pagetable;
pub mod vma;

use crate::mm::hooks::{self, ChunkAdded, PageHooks, PageUse};
use crate::mm::page::{ChunkSource, CHUNK_SHIFT, CHUNK_SIZE};
use crate::os::PAGE_SIZE;
use pagetable::Tier;
use vma::VmaKind;

/// Registers the ledger with the page allocator, so that it hears of every
/// chunk and page run. Called first thing when the process sets up, before
/// anything is allocated.
pub fn install() {
    hooks::register(&HOOKS);
}

static HOOKS: PageHooks = PageHooks {
    chunk_added,
    handed_out,
    given_back: pagetable::give_back,
    releasing: pagetable::releasing,
    advised: pagetable::advised,
};

/// Pages went to a tier: the shadow counts them handed out. A named
/// function rather than a closure, whose shim the compiler would place in
/// the cold text, out of reach of the `link_section` (every program runs
/// it; see "Hot text" in docs/ARCHITECTURE.md).
#[link_section = ".text.hot.buddyslab"]
fn handed_out(start: usize, len: usize, to: PageUse) {
    let tier = match to {
        PageUse::Slab => Tier::Slab,
        PageUse::Pages => Tier::Pages,
        PageUse::Meta => Tier::Meta,
    };
    pagetable::hand_out(start, len, tier);
}

/// A chunk joined the zone: its region and its metadata's go in the tree,
/// its pages and its metadata's in the shadow.
#[link_section = ".text.hot.buddyslab"]
fn chunk_added(c: ChunkAdded) {
    let kind = match c.source {
        ChunkSource::Brk => VmaKind::Heap,
        ChunkSource::Mmap => VmaKind::Chunk,
    };
    let (desc, desc_len) = c.descriptors;
    vma::record(c.base, c.base + CHUNK_SIZE, kind);
    vma::record(desc, desc + desc_len, VmaKind::Meta);
    pagetable::map(c.base, CHUNK_SIZE);
    // The descriptor's pages are written as the chunk's pages come into
    // use (see `mm::zone::prepare_chunk`): all counted handed out now, an
    // upper bound, as the prediction is.
    pagetable::map(desc, desc_len);
    pagetable::hand_out(desc, desc_len, Tier::Meta);
    if let Some((leaf, len)) = c.leaf {
        vma::record(leaf, leaf + len, VmaKind::Meta);
        // A leaf is touched at one entry per chunk; count its first page.
        pagetable::map(leaf, len);
        let slot = ((c.base >> CHUNK_SHIFT) & 4095) * core::mem::size_of::<usize>();
        pagetable::hand_out(leaf + (slot & !(PAGE_SIZE - 1)), PAGE_SIZE, Tier::Meta);
    }
}
