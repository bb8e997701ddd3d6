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
//!   must stay a handful of instructions). Two figures stand in:
//!   - a bound from the class table: an object of class `c` serves
//!     requests from `size(c - 1) + 1` to `size(c)` bytes, so at most
//!     `size(c) - size(c - 1) - 1` bytes of it are waste
//!     ([`slab_worst_waste`]), and at least none;
//!   - a sample: [`sample_request`] records one request's size, called
//!     from the magazine's refill slow path (one request per bin refill).
//!     Per class it keeps `samples` and `requested_sum`; from them come
//!     the mean request, the sampled waste fraction
//!     `(size(c) - mean) / size(c)`, and the estimated live waste
//!     `active_objs(c) * (size(c) - mean)` ([`SampledWaste`]). A class
//!     with no sample has no estimate and the views say so.

use crate::mm::NR_ORDERS;
use crate::os::PAGE_SIZE;
use crate::slab::{size_of_class, CacheStats, NR_CLASSES};
use crate::views::snapshot::Snapshot;
use core::fmt::{self, Write};

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
        let mut text = crate::os::fmt::FixedBuf::<16>::new();
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

pub use crate::counters::{SlabSample, SlabSampler, TierCounter, TierWaste, LARGE_TIER, PAGE_TIER};
pub use crate::slab::{sample_request, SLAB_SAMPLES};

impl Snapshot {
    /// The buddy zone's unusable free space index of `order`, in
    /// thousandths (see [`crate::views::frag`]).
    pub fn unusable_index(&self, order: usize) -> u32 {
        unusable_index(&self.buddy_free, order)
    }

    /// Slab memory in partially used slabs and in all slabs, in bytes.
    pub fn slab_partial_bytes(&self) -> (usize, usize) {
        slab_partial_bytes(&self.caches)
    }

    /// The sampled internal fragmentation of size class `class` (see
    /// [`slab_sampled`]).
    pub fn slab_sampled(&self, class: usize) -> SampledWaste {
        slab_sampled(self.slab_samples[class], class, self.active_objs(class))
    }

    /// The sampled figures over all classes with samples, and the live
    /// objects of classes without one.
    pub fn slab_sampled_total(&self) -> (SampledWaste, usize) {
        slab_sampled_total(&self.slab_samples, |c| self.active_objs(c))
    }
}

/// The sampled internal fragmentation of a size class, or of all of them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SampledWaste {
    /// Requests sampled.
    pub samples: usize,
    /// Their sizes, summed.
    pub requested_sum: usize,
    /// The object sizes that served them, summed (`samples * size(c)`).
    pub handed_sum: usize,
    /// Live objects of the sampled classes.
    pub active_objs: usize,
    /// Estimated bytes wasted in them: `active_objs * (size - mean)`, the
    /// mean kept as the fraction `requested_sum / samples` (rounded down
    /// once, at the end).
    pub est_live_waste: usize,
}

impl SampledWaste {
    /// The mean request in bytes, rounded down; `None` with no sample.
    pub fn mean_request(&self) -> Option<usize> {
        (self.samples > 0).then(|| self.requested_sum / self.samples)
    }

    /// `(size - mean) / size` over the samples, in thousandths (rounded
    /// down); `None` with no sample.
    pub fn waste_fraction(&self) -> Option<Thousandths> {
        (self.samples > 0).then(|| thousandths(self.handed_sum.saturating_sub(self.requested_sum), self.handed_sum))
    }
}

/// The sampled figures of class `class` with `active_objs` live objects.
pub fn slab_sampled(sample: SlabSample, class: usize, active_objs: usize) -> SampledWaste {
    let handed_sum = sample.samples * size_of_class(class);
    let waste_sum = handed_sum.saturating_sub(sample.requested_sum);
    let est_live_waste = if sample.samples == 0 {
        0
    } else {
        (active_objs as u128 * waste_sum as u128 / sample.samples as u128) as usize
    };
    SampledWaste {
        samples: sample.samples,
        requested_sum: sample.requested_sum,
        handed_sum,
        active_objs: if sample.samples == 0 { 0 } else { active_objs },
        est_live_waste,
    }
}

/// The sampled figures summed over the classes with samples, and the live
/// objects of classes without one (not estimated).
pub fn slab_sampled_total(samples: &[SlabSample; NR_CLASSES], active_objs: impl Fn(usize) -> usize) -> (SampledWaste, usize) {
    let mut total = SampledWaste::default();
    let mut unsampled = 0;
    for (class, &sample) in samples.iter().enumerate() {
        let n = active_objs(class);
        if sample.samples == 0 {
            unsampled += n;
            continue;
        }
        let w = slab_sampled(sample, class, n);
        total.samples += w.samples;
        total.requested_sum += w.requested_sum;
        total.handed_sum += w.handed_sum;
        total.active_objs += w.active_objs;
        total.est_live_waste += w.est_live_waste;
    }
    (total, unsampled)
}

/// The slab tier's bound: bytes in objects the program holds, and the most
/// of them that can be waste, summed over the size classes from their
/// `active_objs` (as [`crate::views::snapshot::Snapshot::active_objs`] counts them).
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
    let (sampled, unsampled) = s.slab_sampled_total();
    if sampled.samples == 0 {
        writeln!(out, "{:<17} {:>14} {:>14} {:>12} {:>10}  sampled: no samples", "slab", "-", "-", "-", "-")?;
    } else {
        writeln!(
            out,
            "{:<17} {:>14} {:>14} {:>12} {:>10}  sampled: {} requests, waste fraction {}; {} live objects in classes without samples not estimated",
            "slab",
            "-",
            sampled_held(s),
            sampled.est_live_waste,
            "-",
            sampled.samples,
            sampled.waste_fraction().unwrap_or(Thousandths(0)),
            unsampled
        )?;
    }
    writeln!(
        out,
        "{:<17} {:>10} {:>12} {:>12} {:>8} {:>8} {:>6} {:>12} {:>8}",
        "# cache", "active", "held_bytes", "worst_waste", "samples", "mean_req", "frac", "est_waste", "partial"
    )?;
    for class in 0..NR_CLASSES {
        let n = s.active_objs(class);
        let w = s.slab_sampled(class);
        if n == 0 && s.caches[class].num_slabs == 0 && w.samples == 0 {
            continue;
        }
        write!(
            out,
            "{:<17} {:>10} {:>12} {:>12} {:>8} ",
            crate::views::snapshot::CacheName(class),
            n,
            n * size_of_class(class),
            n * slab_worst_waste(class),
            w.samples
        )?;
        match (w.mean_request(), w.waste_fraction()) {
            (Some(mean), Some(fraction)) => write!(out, "{:>8} {:>6} {:>12}", mean, fraction, w.est_live_waste)?,
            _ => write!(out, "{:>8} {:>6} {:>12}", "-", "-", "no sample")?,
        }
        writeln!(out, " {:>8}", s.caches[class].partial_slabs)?;
    }
    Ok(())
}

/// Bytes held in live objects of the classes that have samples.
fn sampled_held(s: &Snapshot) -> usize {
    (0..NR_CLASSES).filter(|&c| s.slab_samples[c].samples > 0).map(|c| s.active_objs(c) * size_of_class(c)).sum()
}

/// Writes `null` or the value.
struct OrNull<T>(Option<T>);

impl<T: fmt::Display> fmt::Display for OrNull<T> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.0 {
            Some(v) => v.fmt(f),
            None => f.write_str("null"),
        }
    }
}

/// Writes the `extfrag` JSON object of `s`: `unusable_index` (numbers
/// 0..1 with three decimals, per order), `slab_partial_bytes`,
/// `slab_bytes`, `internal` with `pages` and `large` (exact:
/// `requested`, `handed_out`, `allocs`) and `slab` (`held`, `worst_waste`:
/// a bound, `exact` false; `sampled`: `samples`, `requested_sum`,
/// `handed_sum`, `waste_fraction`, `active_objs` and `est_live_waste` of
/// the classes with samples, `unsampled_active_objs`), and `slab_classes`,
/// one object per class in use or sampled (`mean_request`,
/// `waste_fraction`, `est_live_waste` are `null` without a sample).
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
    let (sampled, unsampled) = s.slab_sampled_total();
    write!(
        out,
        "\"slab\":{{\"held\":{},\"worst_waste\":{},\"exact\":false,\"sampled\":{{\"samples\":{},\"requested_sum\":{},\"handed_sum\":{},\"waste_fraction\":{},\"held\":{},\"active_objs\":{},\"est_live_waste\":{},\"unsampled_active_objs\":{}}}}}}},\"slab_classes\":[",
        held,
        worst,
        sampled.samples,
        sampled.requested_sum,
        sampled.handed_sum,
        OrNull(sampled.waste_fraction()),
        sampled_held(s),
        sampled.active_objs,
        sampled.est_live_waste,
        unsampled
    )?;
    let mut first = true;
    for class in 0..NR_CLASSES {
        let n = s.active_objs(class);
        let w = s.slab_sampled(class);
        if n == 0 && s.caches[class].num_slabs == 0 && w.samples == 0 {
            continue;
        }
        let sampled = w.samples > 0;
        write!(
            out,
            "{}{{\"name\":\"{}\",\"size\":{},\"active_objs\":{},\"worst_waste\":{},\"samples\":{},\"requested_sum\":{},\"mean_request\":{},\"waste_fraction\":{},\"est_live_waste\":{},\"partial_slabs\":{}}}",
            if first { "" } else { "," },
            crate::views::snapshot::CacheName(class),
            size_of_class(class),
            n,
            n * slab_worst_waste(class),
            w.samples,
            w.requested_sum,
            OrNull(w.mean_request()),
            OrNull(w.waste_fraction()),
            OrNull(sampled.then_some(w.est_live_waste)),
            s.caches[class].partial_slabs
        )?;
        first = false;
    }
    write!(out, "]}}")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::mm::Zone;
    use crate::mm::page::{Chunk, MAX_ORDER, ChunkSource, CHUNK_DESC_ALIGN, CHUNK_DESC_SIZE, CHUNK_PAGES};

    fn free_blocks(zone: &Zone) -> [usize; NR_ORDERS] {
        core::array::from_fn(|o| zone.nr_free(o))
    }

    /// The case: a fresh chunk, 1024 order-0 pages taken, every
    /// other one freed. Nothing coalesces, so no free block is bigger than
    /// one page: order 0 is wholly usable, every higher order wholly not.
    #[test]
    fn every_other_page_free_is_unusable_above_order_0() {
        let desc = crate::os::map_aligned(CHUNK_DESC_SIZE, CHUNK_DESC_ALIGN).unwrap() as *mut Chunk;
        let mut zone = Zone::new();
        // SAFETY: fresh zeroed memory for the descriptor; a fake chunk base
        // (the zone only does index arithmetic on it); every page freed is
        // one the zone handed out and is freed once.
        unsafe {
            Chunk::init(desc, 1 << 40, ChunkSource::Mmap);
            crate::mm::prepare_chunk(desc, true);
            zone.add_chunk(desc);
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

    /// Known requests recorded through a private sampler: the figures
    /// derived from them, in the snapshot's methods and in both views.
    #[test]
    fn sampled_slab_waste_from_known_requests() {
        let class = crate::slab::class_of(33);
        assert_eq!(size_of_class(class), 48);
        let sampler = SlabSampler::<NR_CLASSES>::new();
        for _ in 0..100 {
            sampler.record(class, 33);
        }
        sampler.record(NR_CLASSES, 1); // not a size class: ignored
        let samples = sampler.read();
        assert_eq!(samples[class], SlabSample { samples: 100, requested_sum: 3300 });
        assert_eq!(samples.iter().map(|s| s.samples).sum::<usize>(), 100);
        let w = slab_sampled(samples[class], class, 10);
        assert_eq!(w.mean_request(), Some(33));
        assert_eq!(w.waste_fraction(), Some(Thousandths(312)));
        assert_eq!(w.est_live_waste, 150);
        assert_eq!(slab_sampled(SlabSample::default(), class, 10).mean_request(), None);

        // A mean that is not whole: 50 of 17 B and 50 of 48 B, mean 32.5.
        let mixed = SlabSample { samples: 100, requested_sum: 50 * 17 + 50 * 48 };
        let m = slab_sampled(mixed, class, 10);
        assert_eq!(m.mean_request(), Some(32));
        assert_eq!(m.waste_fraction(), Some(Thousandths(1550 * 1000 / 4800)));
        assert_eq!(m.est_live_waste, 155, "10 * 15.5, not 10 * (48 - 32)");

        // The views, over a snapshot given these samples and live counts.
        let other = crate::slab::class_of(1000);
        let mut s = crate::views::snapshot::snapshot();
        s.slab_samples = samples;
        for c in 0..NR_CLASSES {
            s.caches[c].active_objs = s.cached_objs[c];
        }
        s.caches[class].active_objs += 10;
        s.caches[other].active_objs += 7;
        s.caches[class].partial_slabs = 0;
        assert_eq!(s.slab_sampled(class), w);
        let (total, unsampled) = s.slab_sampled_total();
        assert_eq!((total.samples, total.est_live_waste, unsampled), (100, 150, 7));

        let mut text = String::new();
        write_extfrag(&mut text, &s).unwrap();
        let row = |name: &str| -> Vec<String> {
            let line = text.lines().find(|l| l.split_whitespace().next() == Some(name)).unwrap_or_else(|| panic!("{name}:\n{text}"));
            line.split_whitespace().map(str::to_string).collect()
        };
        let worst = (10 * slab_worst_waste(class)).to_string();
        assert_eq!(row("kmalloc-48"), ["kmalloc-48", "10", "480", &worst, "100", "33", "0.312", "150", "0"]);
        let big = row(&crate::views::snapshot::CacheName(other).to_string());
        assert_eq!(big[4..8], ["0", "-", "-", "no"], "{text}");
        assert!(
            text.contains("sampled: 100 requests, waste fraction 0.312; 7 live objects in classes without samples not estimated"),
            "{text}"
        );

        let mut json = String::new();
        write_extfrag_json(&mut json, &s).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{e}: {json}"));
        let sampled = &v["internal"]["slab"]["sampled"];
        assert_eq!(sampled["samples"], 100);
        assert_eq!(sampled["waste_fraction"].as_f64(), Some(0.312));
        assert_eq!(sampled["est_live_waste"], 150);
        assert_eq!(sampled["held"], 480);
        assert_eq!(sampled["unsampled_active_objs"], 7);
        let classes = v["slab_classes"].as_array().unwrap();
        let c48 = classes.iter().find(|c| c["name"] == "kmalloc-48").unwrap();
        assert_eq!((c48["mean_request"].as_u64(), c48["est_live_waste"].as_u64()), (Some(33), Some(150)));
        assert_eq!(c48["waste_fraction"].as_f64(), Some(0.312));
        let cbig = classes.iter().find(|c| c["size"] == size_of_class(other)).unwrap();
        assert!(cbig["mean_request"].is_null() && cbig["waste_fraction"].is_null() && cbig["est_live_waste"].is_null());
        assert_eq!(cbig["samples"], 0);
    }

    /// The public entry point feeds the snapshot. Other threads may sample
    /// too, so the counts grow by at least what was recorded here.
    #[test]
    fn sample_request_reaches_the_snapshot() {
        let class = crate::slab::class_of(3000);
        let before = crate::views::snapshot::snapshot().slab_samples[class];
        for _ in 0..3 {
            sample_request(class, 2900);
        }
        sample_request(usize::MAX, 5);
        let after = crate::views::snapshot::snapshot().slab_samples[class];
        assert!(after.samples >= before.samples + 3);
        assert!(after.requested_sum >= before.requested_sum + 3 * 2900);
    }
}
