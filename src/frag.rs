//! Fragmentation figures, computed on read from counters the tiers keep.
//!
//! External fragmentation (free memory too scattered to serve a request):
//!
//! - the buddy zone's *unusable free space index* per order, as the
//!   kernel's `/sys/kernel/debug/extfrag/unusable_index`: for order `o`,
//!   the share of free pages that sit in blocks smaller than `2^o` pages,
//!   `(free_pages - suitable_blocks << o) / free_pages`, in thousandths,
//!   printed `0.000`..`1.000`. As in the kernel, a zone with no free page
//!   reads 1.000 at every order (nothing can be allocated from it);
//! - for the slab caches, the share of slab memory held by partially used
//!   slabs (`slabs_partial`): their free objects can only serve their own
//!   size class, and their pages cannot go back to the buddy.
//!
//! Internal fragmentation (bytes handed out beyond the request):
//!
//! - the page tier and the large tier are counted exactly on their slow
//!   paths ([`PAGE_TIER`], [`LARGE_TIER`]): bytes asked for and bytes
//!   handed out (whole pages; for large blocks the mapping's length), summed
//!   over every allocation since the start;
//! - the slab tier's small-object fast path counts nothing per object (it
//!   must stay a handful of instructions), so its figure is a bound from the
//!   class table: an object of class `c` serves requests from
//!   `size(c - 1) + 1` to `size(c)` bytes, so at most
//!   `size(c) - size(c - 1) - 1` bytes of it are waste
//!   ([`slab_worst_waste`]), and at least none.

use crate::buddy::NR_ORDERS;
use crate::os::PAGE_SIZE;
use crate::slab::{size_of_class, CacheStats, NR_CLASSES};
use crate::stats::Snapshot;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicUsize, Ordering};

/// The unusable free space index of `order` in thousandths (0..=1000),
/// from the number of free blocks per order. The kernel's integer
/// arithmetic: rounded down.
pub fn unusable_index(free_blocks: &[usize; NR_ORDERS], order: usize) -> u32 {
    let free_pages: usize = free_blocks.iter().enumerate().map(|(o, n)| n << o).sum();
    if free_pages == 0 {
        return 1000;
    }
    // Pages in blocks of `order` or bigger: all usable for an `order` request.
    let suitable_pages: usize = free_blocks[order..].iter().enumerate().map(|(i, n)| n << (order + i)).sum();
    ((free_pages - suitable_pages) as u128 * 1000 / free_pages as u128) as u32
}

/// A figure in thousandths, printed as the kernel does (`%d.%03d`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Thousandths(pub u32);

impl fmt::Display for Thousandths {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut text = crate::stats::FixedBuf::<16>::new();
        write!(text, "{}.{:03}", self.0 / 1000, self.0 % 1000)?;
        f.pad(text.as_str())
    }
}

/// `part / whole` in thousandths, rounded down; 0 when `whole` is 0.
pub fn thousandths(part: usize, whole: usize) -> Thousandths {
    if whole == 0 {
        return Thousandths(0);
    }
    Thousandths((part as u128 * 1000 / whole as u128) as u32)
}

/// Slab memory in partially used slabs, and in all slabs, in bytes.
pub fn slab_partial_bytes(caches: &[CacheStats]) -> (usize, usize) {
    let slab_bytes = |c: &CacheStats, n: usize| n * c.pagesperslab * PAGE_SIZE;
    let partial = caches.iter().map(|c| slab_bytes(c, c.partial_slabs)).sum();
    let all = caches.iter().map(|c| slab_bytes(c, c.num_slabs)).sum();
    (partial, all)
}

/// The most bytes an object of size class `class` can hold beyond its
/// request (a request one byte above the next smaller class).
pub fn slab_worst_waste(class: usize) -> usize {
    let below = if class == 0 { 0 } else { size_of_class(class - 1) };
    size_of_class(class) - below - 1
}

/// Bytes asked for and handed out by one tier, counted on its slow path.
pub struct TierCounter {
    requested: AtomicUsize,
    handed: AtomicUsize,
    count: AtomicUsize,
}

/// A plain copy of a [`TierCounter`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TierWaste {
    /// Bytes asked for, summed over every allocation since the start.
    pub requested: usize,
    /// Bytes handed out for them.
    pub handed: usize,
    /// Allocations counted.
    pub count: usize,
}

impl TierWaste {
    /// Bytes handed out beyond the requests.
    pub fn waste(&self) -> usize {
        self.handed.saturating_sub(self.requested)
    }
}

impl TierCounter {
    /// Zero counts.
    pub const fn new() -> Self {
        TierCounter { requested: AtomicUsize::new(0), handed: AtomicUsize::new(0), count: AtomicUsize::new(0) }
    }

    /// Counts one allocation of `handed` bytes for a request of `requested`.
    pub fn add(&self, requested: usize, handed: usize) {
        self.requested.fetch_add(requested, Ordering::Relaxed);
        self.handed.fetch_add(handed, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn read(&self) -> TierWaste {
        TierWaste {
            requested: self.requested.load(Ordering::Relaxed),
            handed: self.handed.load(Ordering::Relaxed),
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

impl Default for TierCounter {
    fn default() -> Self {
        Self::new()
    }
}

/// Page-tier runs: requests and whole pages.
pub static PAGE_TIER: TierCounter = TierCounter::new();
/// Large blocks: requests and mapping lengths.
pub static LARGE_TIER: TierCounter = TierCounter::new();

/// The slab tier's bound: bytes in objects the program holds, and the most
/// of them that can be waste, summed over the size classes from their
/// `active_objs` (as [`crate::stats::Snapshot::active_objs`] counts them).
pub fn slab_bound(active_objs: impl Fn(usize) -> usize) -> (usize, usize) {
    let mut held = 0;
    let mut worst = 0;
    for class in 0..NR_CLASSES {
        let n = active_objs(class);
        held += n * size_of_class(class);
        worst += n * slab_worst_waste(class);
    }
    (held, worst)
}

/// Writes the `extfrag` text view of `s`: the unusable free space index
/// (the kernel's line format), the partial-slab share, and internal
/// fragmentation per tier and per size-class cache, each figure saying
/// whether it is exact or a bound.
pub fn write_extfrag(out: &mut dyn Write, s: &Snapshot) -> fmt::Result {
    writeln!(out, "unusable_index (buddy, exact)")?;
    write!(out, "Node 0, zone {:>8} ", "buddyslab")?;
    for order in 0..NR_ORDERS {
        write!(out, "{} ", Thousandths(s.unusable_index(order)))?;
    }
    writeln!(out)?;
    let (partial, all) = s.slab_partial_bytes();
    writeln!(
        out,
        "slab memory in partial slabs (exact): {} of {} KiB ({})",
        partial / 1024,
        all / 1024,
        thousandths(partial, all)
    )?;
    writeln!(out, "internal fragmentation: bytes handed out beyond the request")?;
    writeln!(out, "{:<17} {:>14} {:>14} {:>12} {:>10}  basis", "# tier", "requested", "handed_out", "waste", "allocs")?;
    for (name, t) in [("pages", s.page_tier), ("large", s.large_tier)] {
        writeln!(
            out,
            "{:<17} {:>14} {:>14} {:>12} {:>10}  exact, since start",
            name,
            t.requested,
            t.handed,
            t.waste(),
            t.count
        )?;
    }
    let (held, worst) = slab_bound(|c| s.active_objs(c));
    writeln!(out, "{:<17} {:>14} {:>14} {:>12} {:>10}  bound from the class table, live objects", "slab", "-", held, worst, "-")?;
    writeln!(out, "{:<17} {:>10} {:>12} {:>12} {:>8}", "# cache", "active", "held_bytes", "worst_waste", "partial")?;
    for class in 0..NR_CLASSES {
        let n = s.active_objs(class);
        if n == 0 && s.caches[class].num_slabs == 0 {
            continue;
        }
        writeln!(
            out,
            "{:<17} {:>10} {:>12} {:>12} {:>8}",
            crate::stats::CacheName(class),
            n,
            n * size_of_class(class),
            n * slab_worst_waste(class),
            s.caches[class].partial_slabs
        )?;
    }
    Ok(())
}

/// Writes the `extfrag` JSON object of `s`: `unusable_index` (numbers
/// 0..1 with three decimals, per order), `slab_partial_bytes`,
/// `slab_bytes`, and `internal` with `pages` and `large` (exact:
/// `requested`, `handed_out`, `allocs`) and `slab` (`held`, `worst_waste`:
/// a bound, `exact` false).
pub fn write_extfrag_json(out: &mut dyn Write, s: &Snapshot) -> fmt::Result {
    write!(out, "{{\"unusable_index\":[")?;
    for order in 0..NR_ORDERS {
        write!(out, "{}{}", if order > 0 { "," } else { "" }, Thousandths(s.unusable_index(order)))?;
    }
    let (partial, all) = s.slab_partial_bytes();
    write!(out, "],\"slab_partial_bytes\":{},\"slab_bytes\":{},\"internal\":{{", partial, all)?;
    for (name, t) in [("pages", s.page_tier), ("large", s.large_tier)] {
        write!(
            out,
            "\"{}\":{{\"requested\":{},\"handed_out\":{},\"allocs\":{},\"exact\":true}},",
            name, t.requested, t.handed, t.count
        )?;
    }
    let (held, worst) = slab_bound(|c| s.active_objs(c));
    write!(out, "\"slab\":{{\"held\":{},\"worst_waste\":{},\"exact\":false}}}}}}", held, worst)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::buddy::Zone;
    use crate::page::{Chunk, MAX_ORDER, ChunkSource, CHUNK_DESC_ALIGN, CHUNK_DESC_SIZE, CHUNK_PAGES};

    fn free_blocks(zone: &Zone) -> [usize; NR_ORDERS] {
        core::array::from_fn(|o| zone.nr_free(o))
    }

    /// The case: a fresh chunk, 1024 order-0 pages taken, every
    /// other one freed. Nothing coalesces, so no free block is bigger than
    /// one page: order 0 is wholly usable, every higher order wholly not.
    #[test]
    fn every_other_page_free_is_unusable_above_order_0() {
        let desc = crate::buddy::map_aligned(CHUNK_DESC_SIZE, CHUNK_DESC_ALIGN).unwrap() as *mut Chunk;
        let mut zone = Zone::new();
        // SAFETY: fresh zeroed memory for the descriptor; a fake chunk base
        // (the zone only does index arithmetic on it); every page freed is
        // one the zone handed out and is freed once.
        unsafe {
            Chunk::init(desc, 1 << 40, ChunkSource::Mmap);
            zone.add_chunk(desc, true);
            assert_eq!(unusable_index(&free_blocks(&zone), MAX_ORDER), 0, "one whole chunk is free");
            let mut pages = Vec::new();
            for _ in 0..CHUNK_PAGES {
                pages.push(zone.alloc(0).unwrap().0);
            }
            assert_eq!(zone.free_pages, 0);
            for order in 0..NR_ORDERS {
                assert_eq!(unusable_index(&free_blocks(&zone), order), 1000, "no free page: nothing usable");
            }
            pages.sort_by_key(|p| *p as usize);
            for p in pages.iter().step_by(2) {
                zone.free(*p, 0, false);
            }
            zone.check();
            assert_eq!(zone.free_pages, CHUNK_PAGES / 2);
            let free = free_blocks(&zone);
            assert_eq!(free[0], CHUNK_PAGES / 2);
            assert_eq!(unusable_index(&free, 0), 0);
            for order in 1..NR_ORDERS {
                assert_eq!(unusable_index(&free, order), 1000, "order {order}");
            }
            let mut line = String::new();
            write!(line, "{} {} {}", Thousandths(unusable_index(&free, 0)), Thousandths(unusable_index(&free, 1)), Thousandths(250))
                .unwrap();
            assert_eq!(line, "0.000 1.000 0.250");

            // Free one more page next to a free one: an order-1 block forms.
            // 513 free pages, 2 of them in an order-1 block: order 1 and up
            // cannot use 511 of them.
            zone.free(pages[1], 0, false);
            let free = free_blocks(&zone);
            assert_eq!((free[0], free[1]), (CHUNK_PAGES / 2 - 1, 1));
            assert_eq!(unusable_index(&free, 0), 0);
            assert_eq!(unusable_index(&free, 1), (511 * 1000 / 513) as u32);
            assert_eq!(unusable_index(&free, 2), 1000);
            crate::os::munmap(desc as usize, CHUNK_DESC_SIZE).unwrap();
        }
    }

    #[test]
    fn unusable_index_by_hand() {
        let mut free = [0usize; NR_ORDERS];
        // 4 single pages, 2 order-2 blocks (8 pages), 1 order-3 block (8).
        free[0] = 4;
        free[2] = 2;
        free[3] = 1;
        assert_eq!(unusable_index(&free, 0), 0);
        assert_eq!(unusable_index(&free, 1), 200); // 4 of 20
        assert_eq!(unusable_index(&free, 2), 200);
        assert_eq!(unusable_index(&free, 3), 600); // 12 of 20
        assert_eq!(unusable_index(&free, 4), 1000);
    }

    #[test]
    fn slab_figures_from_stats_and_the_class_table() {
        let c = |pages, partial, all| CacheStats { pagesperslab: pages, partial_slabs: partial, num_slabs: all, ..Default::default() };
        assert_eq!(slab_partial_bytes(&[c(1, 3, 4), c(2, 0, 1)]), (3 * PAGE_SIZE, 6 * PAGE_SIZE));
        assert_eq!(thousandths(3, 6), Thousandths(500));
        assert_eq!(thousandths(1, 0), Thousandths(0));
        assert_eq!(slab_worst_waste(0), size_of_class(0) - 1);
        for class in 1..NR_CLASSES {
            // A request one byte over the class below lands here.
            let request = size_of_class(class - 1) + 1;
            assert_eq!(crate::slab::class_of(request), class);
            assert_eq!(slab_worst_waste(class), size_of_class(class) - request);
        }
        let (held, worst) = slab_bound(|class| if class == 1 { 10 } else { 0 });
        assert_eq!((held, worst), (10 * size_of_class(1), 10 * slab_worst_waste(1)));
    }

    #[test]
    fn tier_counter_sums() {
        let t = TierCounter::new();
        t.add(5000, 8192);
        t.add(4096, 4096);
        assert_eq!(t.read(), TierWaste { requested: 9096, handed: 12288, count: 2 });
        assert_eq!(t.read().waste(), 3192);
    }
}
