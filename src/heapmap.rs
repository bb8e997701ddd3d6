//! The heap map: an SVG picture of every chunk, one row per chunk and one
//! cell per page, coloured by what the page is doing, so fragmentation can
//! be seen at a glance.
//!
//! Cell states, read from the page descriptors ([`crate::page`]):
//!
//! - free, by the buddy order of the block it lies in (pale to deep blue;
//!   a wholly free chunk is one order-10 block);
//! - slab, by the cache that owns it (a warm ramp by size class; the region
//!   tree's `vm_area_struct` cache in violet);
//! - a run handed out whole by the page tier (green);
//! - a page-table shadow page (purple, from [`crate::pagetable`]'s owner
//!   tier);
//! - other (grey): pages on a per-CPU list ([`crate::pcp`]), the shadow's
//!   spare table pages, blocks being released, or a block between the zone
//!   and its tier.
//!
//! A run of neighbouring pages in the same state is drawn as one `<rect>`
//! whose width is its page count (one unit per page), so a row always
//! spans 1024 units and the file stays small. Each row is a
//! `<g class="chunk">` group; the legend lists every state present with
//! its page count.
//!
//! Written without allocating: `BUDDYSLAB_HEAPMAP=path.svg` makes the
//! exit hook ([`crate::stats::print_at_exit`]) open the file with a raw
//! `openat` and write through [`crate::stats::FdWriter`]; from Rust, [`write_svg`]
//! writes to any `fmt::Write`. The zone lock is held only while one
//! chunk's descriptors are copied into a 1 KiB stack array, never while
//! the writer runs.

use crate::buddy::ZONE;
use crate::os;
use crate::page::{self, Chunk, CHUNK_PAGES, CHUNK_SIZE, MAX_ORDER, PG_FREE, PG_NONE, PG_PAGES, PG_SLAB};
use crate::pagetable::{self, Tier};
use crate::slab::NR_CACHES;
use crate::stats::{self, CacheName};
use crate::vma::VmaKind;
use core::fmt::{self, Write};
use core::ptr;

/// Cell state: free, order `k`, is `FREE + k`.
const FREE: u8 = 0;
/// Cell state: slab of cache `c` is `SLAB + c`.
const SLAB: u8 = 16;
/// Cell state: a page-tier run.
const RUN: u8 = SLAB + NR_CACHES as u8;
/// Cell state: a page of the page-table shadow.
const TABLE: u8 = RUN + 1;
/// Cell state: anything else (per-CPU lists, isolated, in transit).
const OTHER: u8 = RUN + 2;
/// Number of cell states.
const STATES: usize = OTHER as usize + 1;

/// Width of the address column, in SVG units.
const LABEL: usize = 120;
/// Height of one chunk row.
const ROW: usize = 10;
/// Vertical distance between rows.
const PITCH: usize = 12;
/// Top margin (title line).
const TOP: usize = 28;
/// Height of one legend line and the width of one legend column.
const LEGEND_LINE: usize = 16;
const LEGEND_COLUMN: usize = 286;
const LEGEND_COLUMNS: usize = 4;
/// Total width.
const WIDTH: usize = LABEL + CHUNK_PAGES + 10;

/// `BUDDYSLAB_HEAPMAP`: where the map goes at exit.
pub static FILE: stats::ExitFile = stats::ExitFile::new("heap map");

/// Records the path `BUDDYSLAB_HEAPMAP` names (see [`stats::ExitFile::set`]).
pub fn set_path(value: &'static [u8]) {
    FILE.set(value)
}

/// Whether a heap map is to be written at exit.
pub fn requested() -> bool {
    FILE.requested()
}

/// Writes the map to the file `BUDDYSLAB_HEAPMAP` names, if any. Called by
/// the exit hook; reports a file that cannot be opened on stderr.
pub fn write_requested() {
    FILE.write(|w| write_svg(w))
}

/// Calls `f` with the base of every chunk the region tree lists, in
/// address order (no lock held while `f` runs).
fn for_each_chunk(mut f: impl FnMut(usize) -> fmt::Result) -> fmt::Result {
    stats::for_each_region(|r| {
        if r.kind != VmaKind::Heap && r.kind != VmaKind::Chunk {
            return Ok(());
        }
        let mut base = (r.start + CHUNK_SIZE - 1) & !(CHUNK_SIZE - 1);
        while base + CHUNK_SIZE <= r.end {
            if !page::chunk_of(base).is_null() {
                f(base)?;
            }
            base += CHUNK_SIZE;
        }
        Ok(())
    })
}

/// The state of every page of the chunk at `base`, or `None` when no chunk
/// is registered there. Takes the zone lock while reading descriptors.
fn read_chunk(base: usize, cells: &mut [u8; CHUNK_PAGES]) -> bool {
    let chunk = page::chunk_of(base);
    if chunk.is_null() {
        return false;
    }
    {
        let _zone = ZONE.lock();
        // SAFETY: a registered chunk descriptor is live. Free blocks'
        // descriptors are stable under the zone lock; slab and run heads
        // may be changing under their own locks, so their fields are read
        // volatile and every step is clamped to the chunk: a stale value
        // can only miscolour a cell, never read out of bounds.
        unsafe {
            if (*chunk).descriptors_released {
                cells.fill(FREE + MAX_ORDER as u8);
            } else {
                let mut i = 0;
                while i < CHUNK_PAGES {
                    let p = Chunk::page(chunk, i);
                    let order = ptr::read_volatile(ptr::addr_of!((*p).order)) as usize;
                    let (state, n) = match (*p).kind() {
                        PG_FREE if order <= MAX_ORDER && i & ((1 << order) - 1) == 0 => {
                            (FREE + order as u8, 1 << order)
                        }
                        PG_SLAB if order <= MAX_ORDER => {
                            let class = ptr::read_volatile(ptr::addr_of!((*p).class)) as usize;
                            (if class < NR_CACHES { SLAB + class as u8 } else { OTHER }, 1 << order)
                        }
                        PG_PAGES => (RUN, ptr::read_volatile(ptr::addr_of!((*p).span)).max(1) as usize),
                        // A block off the zone that no tier has marked (a
                        // per-CPU list's, the shadow's table pool, one being
                        // released): the zone left its order in the head and
                        // its tails unmarked, so they are skipped with it.
                        PG_NONE if order <= MAX_ORDER && i & ((1 << order) - 1) == 0 => (OTHER, 1 << order),
                        _ => (OTHER, 1),
                    };
                    let end = (i + n).min(CHUNK_PAGES);
                    cells[i..end].fill(state);
                    i = end;
                }
            }
        }
    }
    // The shadow's own tables are zone pages no tier marks; its owner
    // tier tells them apart (lock-free reads).
    for (i, cell) in cells.iter_mut().enumerate() {
        if *cell == OTHER && pagetable::tier_of(pagetable::entry(base + (i << os::PAGE_SHIFT))) == Tier::PageTable {
            *cell = TABLE;
        }
    }
    true
}

/// The CSS fill of a state.
struct Fill(u8);

impl fmt::Display for Fill {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        if s <= FREE + MAX_ORDER as u8 {
            // Pale for small free blocks, deeper for large ones.
            write!(f, "hsl(210,65%,{}%)", 90 - 3 * (s - FREE) as usize)
        } else if s == SLAB + crate::slab::VM_AREA_CACHE as u8 {
            f.write_str("hsl(285,45%,55%)")
        } else if (SLAB..RUN).contains(&s) {
            // Yellow (small objects) through orange and red to magenta.
            let class = (s - SLAB) as usize;
            let hue = (360 + 50 - class * 90 / crate::slab::NR_CLASSES) % 360;
            write!(f, "hsl({hue},80%,50%)")
        } else if s == RUN {
            f.write_str("hsl(130,50%,38%)")
        } else if s == TABLE {
            f.write_str("hsl(265,55%,35%)")
        } else {
            f.write_str("#9a9a9a")
        }
    }
}

/// The CSS class name of a state.
struct Class(u8);

impl fmt::Display for Class {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        if s <= FREE + MAX_ORDER as u8 {
            write!(f, "f{}", s - FREE)
        } else if (SLAB..RUN).contains(&s) {
            write!(f, "s{}", s - SLAB)
        } else if s == RUN {
            f.write_str("run")
        } else if s == TABLE {
            f.write_str("pt")
        } else {
            f.write_str("other")
        }
    }
}

/// What the legend calls a state.
struct Label(u8);

impl fmt::Display for Label {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        if s <= FREE + MAX_ORDER as u8 {
            write!(f, "free, order {}", s - FREE)
        } else if (SLAB..RUN).contains(&s) {
            write!(f, "slab {}", CacheName((s - SLAB) as usize))
        } else if s == RUN {
            f.write_str("page-tier run")
        } else if s == TABLE {
            f.write_str("page-table shadow")
        } else {
            f.write_str("per-CPU lists, table pool, in transit")
        }
    }
}

/// Writes the heap map as one SVG document: a title line, one
/// `<g class="chunk">` row per chunk (its address, then runs of cells),
/// a legend of the states present with their page counts, and the
/// fragmentation figures of a fresh [`stats::snapshot`].
pub fn write_svg(out: &mut dyn Write) -> fmt::Result {
    write_svg_of(out, &stats::snapshot())
}

/// Lines of fragmentation figures under the legend ([`write_frag_legend`]).
const FRAG_LINES: usize = 6;

/// [`write_svg`] with the fragmentation figures of `s` (the cells are
/// read fresh).
pub fn write_svg_of(out: &mut dyn Write, s: &stats::Snapshot) -> fmt::Result {
    let mut cells = [0u8; CHUNK_PAGES];
    // First pass: how many rows and legend lines the picture needs.
    let (mut chunks, mut counts) = (0usize, [0usize; STATES]);
    for_each_chunk(|base| {
        if read_chunk(base, &mut cells) {
            chunks += 1;
            cells.iter().for_each(|&c| counts[c as usize] += 1);
        }
        Ok(())
    })?;
    let states = counts.iter().filter(|&&n| n > 0).count();
    // Room for a few states that may appear between the passes.
    let legend_lines = (states + 4).div_ceil(LEGEND_COLUMNS);
    let legend_top = TOP + chunks * PITCH + 14;
    let frag_top = legend_top + legend_lines * LEGEND_LINE + 10;
    let height = frag_top + FRAG_LINES * LEGEND_LINE + 8;
    writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{WIDTH}\" height=\"{height}\" viewBox=\"0 0 {WIDTH} {height}\" font-family=\"monospace\" font-size=\"11\">"
    )?;
    writeln!(out, "<style>")?;
    for s in 0..STATES as u8 {
        if s > FREE + MAX_ORDER as u8 && s < SLAB {
            continue;
        }
        writeln!(out, ".{}{{fill:{}}}", Class(s), Fill(s))?;
    }
    writeln!(out, "</style>")?;
    writeln!(out, "<rect width=\"{WIDTH}\" height=\"{height}\" fill=\"white\"/>")?;
    writeln!(
        out,
        "<text x=\"4\" y=\"16\">buddyslab heap map: {chunks} chunks of {CHUNK_PAGES} pages, one cell per 4 KiB page</text>"
    )?;

    // Second pass: the rows, with the counts the legend shows.
    let mut counts = [0usize; STATES];
    let mut row = 0usize;
    for_each_chunk(|base| {
        if !read_chunk(base, &mut cells) {
            return Ok(());
        }
        let y = TOP + row * PITCH;
        writeln!(out, "<g class=\"chunk\" data-base=\"{base:#x}\">")?;
        writeln!(out, "<text x=\"4\" y=\"{}\">{base:#014x}</text>", y + ROW - 1)?;
        let mut i = 0;
        while i < CHUNK_PAGES {
            let state = cells[i];
            let run = cells[i..].iter().take_while(|&&c| c == state).count();
            counts[state as usize] += run;
            writeln!(out, "<rect x=\"{}\" y=\"{y}\" width=\"{run}\" height=\"{ROW}\" class=\"{}\"/>", LABEL + i, Class(state))?;
            i += run;
        }
        writeln!(out, "</g>")?;
        row += 1;
        Ok(())
    })?;

    for (item, (s, &n)) in counts.iter().enumerate().filter(|(_, &n)| n > 0).enumerate() {
        let x = 4 + (item % LEGEND_COLUMNS) * LEGEND_COLUMN;
        let y = legend_top + (item / LEGEND_COLUMNS) * LEGEND_LINE;
        writeln!(
            out,
            "<g class=\"legend\"><rect x=\"{x}\" y=\"{y}\" width=\"12\" height=\"12\" class=\"{}\"/><text x=\"{}\" y=\"{}\">{}: {n} pages</text></g>",
            Class(s as u8),
            x + 16,
            y + 10,
            Label(s as u8)
        )?;
    }
    write_frag_legend(out, s, frag_top)?;
    writeln!(out, "</svg>")
}

/// Writes the fragmentation figures of `s` as [`FRAG_LINES`] `<text
/// class="frag">` lines from `top`, labelled as the views label them:
/// the unusable free space index per order (the kernel's format), the
/// partial-slab share, and internal waste per tier (pages and large exact,
/// slab sampled and bounded).
fn write_frag_legend(out: &mut dyn Write, s: &stats::Snapshot, top: usize) -> fmt::Result {
    use crate::frag::{self, Thousandths};
    let line = |i: usize| top + i * LEGEND_LINE + 10;
    write!(out, "<text class=\"frag\" data-figure=\"unusable_index\" x=\"4\" y=\"{}\">unusable free space index, orders 0..{} (buddy, exact):", line(0), MAX_ORDER)?;
    for order in 0..=MAX_ORDER {
        write!(out, " {}", Thousandths(s.unusable_index(order)))?;
    }
    writeln!(out, "</text>")?;
    let (partial, all) = s.slab_partial_bytes();
    writeln!(
        out,
        "<text class=\"frag\" data-figure=\"slab_partial\" x=\"4\" y=\"{}\">slab memory in partial slabs (exact): {} of it, {} of {} KiB</text>",
        line(1),
        frag::thousandths(partial, all),
        partial / 1024,
        all / 1024
    )?;
    for (i, (name, t)) in [("pages", s.page_tier), ("large", s.large_tier)].into_iter().enumerate() {
        writeln!(
            out,
            "<text class=\"frag\" data-figure=\"internal_{name}\" x=\"4\" y=\"{}\">internal waste, {name} (exact, since start): {} B beyond {} B requested, {} B handed out, {} allocations</text>",
            line(2 + i),
            t.waste(),
            t.requested,
            t.handed,
            t.count
        )?;
    }
    let (sampled, unsampled) = s.slab_sampled_total();
    write!(out, "<text class=\"frag\" data-figure=\"internal_slab_sampled\" x=\"4\" y=\"{}\">internal waste, slab (sampled", line(4))?;
    match sampled.waste_fraction() {
        Some(fraction) => writeln!(
            out,
            ", {} requests): est. {} B in {} live objects, waste fraction {}; {} live objects of unsampled classes</text>",
            sampled.samples, sampled.est_live_waste, sampled.active_objs, fraction, unsampled
        )?,
        None => writeln!(out, "): no samples</text>")?,
    }
    let (held, worst) = frag::slab_bound(|c| s.active_objs(c));
    writeln!(
        out,
        "<text class=\"frag\" data-figure=\"internal_slab_bound\" x=\"4\" y=\"{}\">internal waste, slab (bound from the class table): at most {} B of {} B in live objects</text>",
        line(5),
        worst,
        held
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_have_distinct_classes_and_the_map_is_a_document() {
        let mut seen = [const { stats::FixedBuf::<16>::new() }; STATES];
        for s in 0..STATES as u8 {
            let _ = write!(seen[s as usize], "{}", Class(s));
        }
        for (a, x) in seen.iter().enumerate() {
            for y in &seen[a + 1..] {
                let (x, y) = (x.as_str(), y.as_str());
                assert!(x != y || x == "other", "two states share class {x}");
            }
        }
        // The test binary's heap is not buddyslab's, but boxes made here
        // through the tiers directly do show up.
        let p = crate::heap::malloc(100);
        assert!(!p.is_null());
        let mut text = String::new();
        write_svg(&mut text).unwrap();
        // SAFETY: `p` came from `heap::malloc` above and is freed once.
        unsafe { crate::heap::free(p) };
        assert!(text.starts_with("<svg ") && text.trim_end().ends_with("</svg>"));
        let rows = text.matches("<g class=\"chunk\"").count();
        assert!(rows >= 1, "{text}");
        let widths: usize = text
            .lines()
            .filter(|l| l.starts_with("<rect x=") && l.contains("height=\"10\""))
            .map(|l| l.split("width=\"").nth(1).unwrap().split('"').next().unwrap().parse::<usize>().unwrap())
            .sum();
        assert_eq!(widths, rows * CHUNK_PAGES);
    }

    /// The numbers of a `<text class="frag">` line.
    fn numbers(svg: &str, figure: &str) -> Vec<f64> {
        let key = format!("data-figure=\"{figure}\"");
        let line = svg.lines().find(|l| l.contains(&key)).unwrap_or_else(|| panic!("{figure} missing:\n{svg}"));
        let text = &line[line.find('>').unwrap() + 1..line.rfind("</text>").unwrap()];
        // The label's own digits ("orders 0..10") come before the colon.
        let figures = text.split_once(':').unwrap().1;
        figures
            .split(|c: char| !(c.is_ascii_digit() || c == '.'))
            .map(|t| t.trim_end_matches('.'))
            .filter(|t| !t.is_empty())
            .map(|t| t.parse().unwrap())
            .collect()
    }

    /// The legend's fragmentation figures are the snapshot's, exactly.
    #[test]
    fn legend_carries_the_snapshot_figures() {
        // Over the largest slab class, so the page tier serves it.
        let p = crate::heap::malloc(crate::slab::SLAB_MAX + 5000);
        assert!(!p.is_null());
        let mut s = stats::snapshot();
        // Samples in one class, so the sampled line has figures.
        let class = crate::slab::class_of(33);
        s.slab_samples = [crate::frag::SlabSample::default(); crate::slab::NR_CLASSES];
        s.slab_samples[class] = crate::frag::SlabSample { samples: 100, requested_sum: 3300 };
        let mut svg = String::new();
        write_svg_of(&mut svg, &s).unwrap();
        // SAFETY: allocated above, freed once.
        unsafe { crate::heap::free(p) };

        let index: Vec<f64> = (0..=MAX_ORDER).map(|o| s.unusable_index(o) as f64 / 1000.0).collect();
        assert_eq!(numbers(&svg, "unusable_index"), index);
        let (partial, all) = s.slab_partial_bytes();
        let share = crate::frag::thousandths(partial, all).0 as f64 / 1000.0;
        assert_eq!(numbers(&svg, "slab_partial"), [share, (partial / 1024) as f64, (all / 1024) as f64]);
        for (name, t) in [("pages", s.page_tier), ("large", s.large_tier)] {
            let want = [t.waste(), t.requested, t.handed, t.count].map(|n| n as f64);
            assert_eq!(numbers(&svg, &format!("internal_{name}")), want, "{name}");
        }
        assert!(s.page_tier.count > 0, "the request over SLAB_MAX went to the page tier");
        let (sampled, unsampled) = s.slab_sampled_total();
        assert_eq!(sampled.samples, 100);
        let fraction = sampled.waste_fraction().unwrap().0 as f64 / 1000.0;
        assert!(svg.contains("internal waste, slab (sampled, 100 requests): est. "), "{svg}");
        let want = [sampled.est_live_waste as f64, sampled.active_objs as f64, fraction, unsampled as f64];
        assert_eq!(numbers(&svg, "internal_slab_sampled"), want);
        let (held, worst) = crate::frag::slab_bound(|c| s.active_objs(c));
        assert_eq!(numbers(&svg, "internal_slab_bound"), [worst as f64, held as f64]);

        // Without samples the line says so.
        s.slab_samples = [crate::frag::SlabSample::default(); crate::slab::NR_CLASSES];
        let mut svg = String::new();
        write_svg_of(&mut svg, &s).unwrap();
        assert!(svg.contains("internal waste, slab (sampled): no samples</text>"), "{svg}");
    }
}
