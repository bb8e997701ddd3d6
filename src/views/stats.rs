//! Counters and the views printed from them, without allocating.
//!
//! Figures are read from the tiers' own counters under their locks, one
//! lock at a time (a snapshot is therefore not atomic across tiers, as
//! `/proc` files are not). Text goes through [`FixedBuf`], a stack buffer
//! implementing `fmt::Write`, or [`FdWriter`], which flushes such a buffer
//! to a file descriptor with `write(2)` whenever it fills.
//!
//! The views, in the kernel's formats:
//!
//! - `buddyinfo` ([`write_buddyinfo`]): free blocks per order, as
//!   `/proc/buddyinfo`;
//! - `slabinfo` ([`write_slabinfo`]): one row per cache, as `/proc/slabinfo`
//!   version 2.1 (active objects exclude those cached in the CPU depots and
//!   in the calling thread's bins: those are free for the program);
//! - `maps` ([`write_maps`]): every region of the VMA tree, as
//!   `/proc/self/maps`;
//! - `faults` ([`write_faults`]): the page-table shadow's minor faults by
//!   tier, predicted at hand-out (an upper bound) and observed (pages
//!   `mincore` found resident since), refaults after give-back, pages
//!   handed out and never touched, next to the kernel's `ru_minflt` and
//!   its part outside buddyslab's memory.
//!
//! [`write_views`] writes all four as text, [`write_json`] as one JSON
//! object. No lock is held while the caller's writer runs (it may be a
//! `String` that allocates from this very heap): figures are copied out
//! first, regions a batch at a time.

use crate::ledger::pagetable::{Tier, NR_TIERS};
use crate::ledger::vma::{self, Region, VmaKind};
use crate::mm::NR_ORDERS;
use crate::os::{self, PAGE_SIZE};
use crate::slab;
use core::fmt::{self, Write};
pub use crate::os::fmt::{fmt_hex, FixedBuf};
pub use super::snapshot::{for_each_region, snapshot, CacheName, ExitFile, FdWriter, Snapshot, Totals, VIEWS_VERSION};
pub use crate::counters::{CALL_NAMES, ENTRY_NAMES};
use core::sync::atomic::Ordering;

/// Writes the totals as `/proc/meminfo` does (`Name:  value kB`), then the
/// calls per entry point.
pub fn write_totals(out: &mut dyn Write, t: &Totals) -> fmt::Result {
    for (name, bytes) in [
        ("InUse", t.in_use),
        ("InUsePeak", t.in_use_peak),
        ("Mapped", t.mapped),
        ("Resident", t.resident),
        ("PeakRSS", t.peak_rss),
        ("Metadata", t.metadata),
    ] {
        let mut label = FixedBuf::<20>::new();
        write!(label, "{name}:")?;
        writeln!(out, "{:<16}{:>10} kB", label.as_str(), bytes / 1024)?;
    }
    write!(out, "Calls:         ")?;
    for (name, n) in CALL_NAMES.iter().zip(t.calls) {
        write!(out, " {name} {n}")?;
    }
    writeln!(out)
}

/// The totals as a JSON object (bytes, and calls by entry point).
pub fn write_totals_json(out: &mut dyn Write, t: &Totals) -> fmt::Result {
    write!(
        out,
        "{{\"in_use\":{},\"in_use_peak\":{},\"mapped\":{},\"resident\":{},\"peak_rss\":{},\"metadata\":{},\"calls\":{{",
        t.in_use, t.in_use_peak, t.mapped, t.resident, t.peak_rss, t.metadata
    )?;
    for (i, (name, n)) in CALL_NAMES.iter().zip(t.calls).enumerate() {
        write!(out, "{}\"{name}\":{n}", if i > 0 { "," } else { "" })?;
    }
    write!(out, "}}}}")
}

/// glibc's `struct mallinfo2`, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MallInfo2 {
    /// Non-mmapped space allocated (bytes in chunks).
    pub arena: usize,
    /// Number of free chunks (free buddy blocks).
    pub ordblks: usize,
    /// Number of free fastbin blocks (free slab objects in partial slabs).
    pub smblks: usize,
    /// Number of mmapped regions (large blocks).
    pub hblks: usize,
    /// Bytes in mmapped regions.
    pub hblkhd: usize,
    /// Unused (always 0, as in glibc).
    pub usmblks: usize,
    /// Bytes in free slab objects.
    pub fsmblks: usize,
    /// Bytes in use, not counting large blocks.
    pub uordblks: usize,
    /// Free bytes in chunks.
    pub fordblks: usize,
    /// Releasable top-most free space (wholly free chunks).
    pub keepcost: usize,
}

/// Fills a `mallinfo2` from a snapshot.
pub fn mallinfo2() -> MallInfo2 {
    let s = snapshot();
    let free_objects: usize = s.caches[..slab::NR_CLASSES].iter().map(|c| c.num_objs - c.active_objs).sum();
    let free_object_bytes: usize =
        s.caches[..slab::NR_CLASSES].iter().map(|c| (c.num_objs - c.active_objs) * c.objsize).sum();
    // glibc counts as mmapped only chunks at or above the threshold; a
    // large block below it (served from the cache of released mappings
    // while the threshold adapts) counts as heap, as it would there.
    let threshold = crate::large::MMAP_THRESHOLD.load(Ordering::Relaxed);
    let (mut hblks, mut hblkhd) = (0, 0);
    let _ = for_each_region(|r| {
        if r.kind == VmaKind::Large && r.end - r.start >= threshold {
            hblks += 1;
            hblkhd += r.end - r.start;
        }
        Ok(())
    });
    let hblkhd = hblkhd.min(s.large_bytes);
    MallInfo2 {
        arena: s.chunk_bytes(),
        ordblks: s.buddy_free.iter().sum(),
        smblks: free_objects,
        hblks,
        hblkhd,
        usmblks: 0,
        fsmblks: free_object_bytes,
        uordblks: s.in_use_bytes() - hblkhd,
        fordblks: s.free_pages * PAGE_SIZE + free_object_bytes,
        keepcost: s.buddy_free[NR_ORDERS - 1] * crate::mm::page::CHUNK_SIZE,
    }
}

/// Writes glibc's `malloc_stats` summary, then the text views.
pub fn write_malloc_stats(out: &mut dyn Write) -> fmt::Result {
    let s = snapshot();
    let system = s.chunk_bytes();
    let in_use = s.in_use_bytes() - s.large_bytes;
    writeln!(out, "Arena 0:")?;
    writeln!(out, "system bytes     = {:>10}", system)?;
    writeln!(out, "in use bytes     = {:>10}", in_use)?;
    writeln!(out, "Total (incl. mmap):")?;
    writeln!(out, "system bytes     = {:>10}", system + s.large_bytes)?;
    writeln!(out, "in use bytes     = {:>10}", in_use + s.large_bytes)?;
    writeln!(out, "max mmap regions = {:>10}", s.nr_large)?;
    writeln!(out, "max mmap bytes   = {:>10}", s.large_bytes)?;
    write_views_of(out, &s)
}

/// Prints [`write_malloc_stats`] to stderr.
pub fn print_malloc_stats() {
    let mut w = FdWriter::new(2);
    let _ = write_malloc_stats(&mut w);
    w.flush();
}

/// `malloc_info(3)`'s XML, in glibc's shape (one `heap`, as glibc prints
/// one per arena): the free slab objects by size class (`sizes`), the free
/// bytes, mapped blocks, and the memory the allocator holds from the
/// system. Tools that parse glibc's output (the `type` and `size`
/// attributes of `total`, `system` and `aspace`) read it unchanged.
pub fn write_malloc_info(w: &mut impl fmt::Write) -> fmt::Result {
    let s = snapshot();
    let m = mallinfo2();
    writeln!(w, "<malloc version=\"1\">")?;
    writeln!(w, "<heap nr=\"0\">")?;
    writeln!(w, "<sizes>")?;
    let mut from = 1;
    for c in &s.caches[..slab::NR_CLASSES] {
        let free = c.num_objs - c.active_objs;
        if free > 0 {
            writeln!(w, "  <size from=\"{from}\" to=\"{}\" total=\"{}\" count=\"{free}\"/>", c.objsize, free * c.objsize)?;
        }
        from = c.objsize + 1;
    }
    writeln!(w, "</sizes>")?;
    let held = s.chunk_bytes();
    writeln!(w, "<total type=\"fast\" count=\"0\" size=\"0\"/>")?;
    writeln!(w, "<total type=\"rest\" count=\"{}\" size=\"{}\"/>", m.ordblks + m.smblks, m.fordblks)?;
    writeln!(w, "<system type=\"current\" size=\"{held}\"/>")?;
    writeln!(w, "<system type=\"max\" size=\"{held}\"/>")?;
    writeln!(w, "<aspace type=\"total\" size=\"{held}\"/>")?;
    writeln!(w, "<aspace type=\"mprotect\" size=\"{held}\"/>")?;
    writeln!(w, "</heap>")?;
    writeln!(w, "<total type=\"fast\" count=\"0\" size=\"0\"/>")?;
    writeln!(w, "<total type=\"rest\" count=\"{}\" size=\"{}\"/>", m.ordblks + m.smblks, m.fordblks)?;
    writeln!(w, "<total type=\"mmap\" count=\"{}\" size=\"{}\"/>", m.hblks, m.hblkhd)?;
    writeln!(w, "<system type=\"current\" size=\"{}\"/>", held + m.hblkhd)?;
    writeln!(w, "<system type=\"max\" size=\"{}\"/>", held + m.hblkhd)?;
    writeln!(w, "<aspace type=\"total\" size=\"{held}\"/>")?;
    writeln!(w, "<aspace type=\"mprotect\" size=\"{held}\"/>")?;
    writeln!(w, "</malloc>")
}

/// Writes `/proc/buddyinfo`'s line for the zone.
pub fn write_buddyinfo(out: &mut dyn Write, s: &Snapshot) -> fmt::Result {
    write!(out, "Node 0, zone {:>8} ", "buddyslab")?;
    for n in s.buddy_free {
        write!(out, "{:>6} ", n)?;
    }
    writeln!(out)
}

/// Writes `/proc/slabinfo` (version 2.1): the header and one row per cache.
/// Tunables are zeros, as SLUB prints them.
pub fn write_slabinfo(out: &mut dyn Write, s: &Snapshot) -> fmt::Result {
    writeln!(out, "slabinfo - version: 2.1")?;
    writeln!(
        out,
        "# name            <active_objs> <num_objs> <objsize> <objperslab> <pagesperslab> : tunables <limit> <batchcount> <sharedfactor> : slabdata <active_slabs> <num_slabs> <sharedavail>"
    )?;
    // A cache with no slab says nothing: left out (the JSON keeps it).
    for (i, c) in s.caches.iter().enumerate().filter(|(_, c)| c.num_slabs != 0) {
        writeln!(
            out,
            "{:<17} {:>6} {:>6} {:>6} {:>4} {:>4} : tunables {:>4} {:>4} {:>4} : slabdata {:>6} {:>6} {:>6}",
            CacheName(i),
            s.active_objs(i),
            c.num_objs,
            c.objsize,
            c.objperslab,
            c.pagesperslab,
            0,
            0,
            0,
            c.active_slabs,
            c.num_slabs,
            0
        )?;
    }
    Ok(())
}

fn perms(r: &Region) -> &'static str {
    match (r.prot & vma::PROT_READ != 0, r.prot & vma::PROT_WRITE != 0) {
        (true, true) => "rw-p",
        (true, false) => "r--p",
        (false, true) => "-w-p",
        (false, false) => "---p",
    }
}

/// Writes every region as `/proc/self/maps` does.
pub fn write_maps(out: &mut dyn Write) -> fmt::Result {
    for_each_region(|r| {
        // The kernel pads the name to column 74 (`seq_pad`).
        let mut head = FixedBuf::<80>::new();
        write!(head, "{:08x}-{:08x} {} 00000000 00:00 0", r.start, r.end, perms(r))?;
        writeln!(out, "{:<73}{}", head.as_str(), r.kind.name())
    })
}

/// Pages resident per region kind (`VmaKind` order: heap, chunk, large,
/// large-cached, meta), from `mincore` over every region.
pub fn resident_by_kind() -> [usize; VMA_KINDS.len()] {
    let mut resident = [0usize; VMA_KINDS.len()];
    let _ = for_each_region(|r| {
        resident[r.kind as usize] += os::resident_pages(r.start, r.end - r.start);
        Ok(())
    });
    resident
}

/// Writes the fault table. Per tier: faults predicted at hand-out (an
/// upper bound: every page handed out counted as touched), faults observed
/// (pages the kernel then reported resident), refaults among them (pages
/// given back with `MADV_DONTNEED` and faulted in again), pages handed out
/// now and, of those, pages never touched. Then the process's `ru_minflt`,
/// its part outside buddyslab's memory (`ru_minflt` less the observed
/// total), resident pages by region kind, and what the observation cost.
pub fn write_faults(out: &mut dyn Write, s: &Snapshot) -> fmt::Result {
    let f = &s.faults;
    writeln!(out, "faults - minor page faults of buddyslab's memory, by tier (4 KiB pages)")?;
    writeln!(out, "{:<10} {:>10} {:>10} {:>10} {:>12} {:>10}", "# tier", "predicted", "observed", "refaults", "handed_pages", "untouched")?;
    for t in Tier::ALL.iter().skip(1) {
        let i = *t as usize;
        writeln!(
            out,
            "{:<10} {:>10} {:>10} {:>10} {:>12} {:>10}",
            t.name(),
            f.predicted[i],
            f.observed[i],
            f.refaults[i],
            f.handed_pages[i],
            f.untouched_pages[i]
        )?;
    }
    let handed: usize = f.handed_pages.iter().sum();
    let untouched: usize = f.untouched_pages.iter().sum();
    writeln!(
        out,
        "{:<10} {:>10} {:>10} {:>10} {:>12} {:>10}",
        "total",
        f.total_predicted(),
        f.total_observed(),
        f.total_refaults(),
        handed,
        untouched
    )?;
    writeln!(out, "# predicted: pages handed out first since mapped or given back: a fault each if all were written (upper bound)")?;
    writeln!(out, "# observed:  of those, pages the kernel has since reported resident (mincore): faults that happened")?;
    writeln!(out, "# refaults:  observed pages that buddyslab had given back (MADV_DONTNEED) and that faulted in again")?;
    writeln!(out, "# untouched: pages handed out now that are not resident: asked for, never touched")?;
    writeln!(out, "{:<10} {:>10}", "ru_minflt", s.minflt)?;
    writeln!(out, "{:<10} {:>10}   (ru_minflt - observed: loader, libc, stack, the program's own data)", "outside", s.minflt.saturating_sub(f.total_observed()))?;
    let resident = resident_by_kind();
    write!(out, "resident pages (mincore):")?;
    for (kind, n) in VMA_KINDS.iter().zip(resident) {
        write!(out, " {} {}", kind.name(), n)?;
    }
    writeln!(out)?;
    writeln!(out, "observation: {} mincore calls over {} pages so far", f.mincore_calls, f.mincore_pages)?;
    writeln!(
        out,
        "page-table shadow: {} table pages; released to the OS: {} KiB in {} madvise calls",
        f.table_pages,
        s.released_bytes / 1024,
        s.release_calls
    )
}

/// The JSON `faults` object: `predicted`, `observed`, `refaults` (totals,
/// and per tier in `by_tier`, `observed_by_tier`, `refaults_by_tier`),
/// `minflt` (the kernel's `ru_minflt`), `outside` (`minflt` less
/// `observed`), `handed_pages` and `untouched_pages` per tier,
/// `resident_pages` per region kind, the observation's `mincore_calls`
/// and `mincore_pages`, `table_pages`, `released_bytes`, `release_calls`.
/// The meanings are [`write_faults`]'s.
fn write_faults_json(out: &mut dyn Write, s: &Snapshot) -> fmt::Result {
    let f = &s.faults;
    write!(
        out,
        "{{\"predicted\":{},\"observed\":{},\"refaults\":{},\"minflt\":{},\"outside\":{}",
        f.total_predicted(),
        f.total_observed(),
        f.total_refaults(),
        s.minflt,
        s.minflt.saturating_sub(f.total_observed())
    )?;
    let by_tier: [(&str, &dyn Fn(usize) -> u64); 5] = [
        ("by_tier", &|i| f.predicted[i]),
        ("observed_by_tier", &|i| f.observed[i]),
        ("refaults_by_tier", &|i| f.refaults[i]),
        ("handed_pages", &|i| f.handed_pages[i] as u64),
        ("untouched_pages", &|i| f.untouched_pages[i] as u64),
    ];
    for (name, figure) in by_tier {
        write!(out, ",\"{name}\":{{")?;
        for (i, t) in Tier::ALL.iter().skip(1).enumerate() {
            write!(out, "{}\"{}\":{}", if i > 0 { "," } else { "" }, t.name(), figure(*t as usize))?;
        }
        write!(out, "}}")?;
    }
    write!(out, ",\"resident_pages\":{{")?;
    for (i, (kind, n)) in VMA_KINDS.iter().zip(resident_by_kind()).enumerate() {
        write!(out, "{}\"{}\":{}", if i > 0 { "," } else { "" }, kind.name(), n)?;
    }
    write!(
        out,
        "}},\"mincore_calls\":{},\"mincore_pages\":{},\"table_pages\":{},\"released_bytes\":{},\"release_calls\":{}}}",
        f.mincore_calls, f.mincore_pages, f.table_pages, s.released_bytes, s.release_calls
    )
}

const VMA_KINDS: [VmaKind; 5] = [VmaKind::Heap, VmaKind::Chunk, VmaKind::Large, VmaKind::LargeCached, VmaKind::Meta];

/// Writes the four text views of `s` (and the current regions).
pub fn write_views_of(out: &mut dyn Write, s: &Snapshot) -> fmt::Result {
    writeln!(out, "== totals")?;
    write_totals(out, &s.totals())?;
    writeln!(out, "== buddyinfo")?;
    write_buddyinfo(out, s)?;
    writeln!(out, "== slabinfo")?;
    write_slabinfo(out, s)?;
    writeln!(out, "== maps")?;
    write_maps(out)?;
    writeln!(out, "== faults")?;
    write_faults(out, s)?;
    writeln!(out, "== extfrag")?;
    crate::views::frag::write_extfrag(out, s)?;
    writeln!(out, "== address_space")?;
    crate::views::addrspace::write_address_space(out)
}

/// Writes the four text views of a fresh snapshot.
pub fn write_views(out: &mut dyn Write) -> fmt::Result {
    write_views_of(out, &snapshot())
}

/// Writes the views as one JSON object: `buddyinfo` (free blocks per
/// order), `slabinfo` (one object per cache), `maps` (one object per
/// region) and `faults` (`predicted`, `minflt`, by-tier figures and
/// resident pages by region kind). Integers are JSON numbers; addresses
/// are hex strings.
pub fn write_json(out: &mut dyn Write) -> fmt::Result {
    write_json_of(out, &snapshot())
}

/// [`write_json`] of the snapshot `s` (and the current regions).
pub fn write_json_of(out: &mut dyn Write, s: &Snapshot) -> fmt::Result {
    write!(out, "{{\"version\":{VIEWS_VERSION},\"pid\":{},\"totals\":", os::getpid())?;
    write_totals_json(out, &s.totals())?;
    write!(out, ",\"buddyinfo\":[")?;
    for (i, n) in s.buddy_free.iter().enumerate() {
        write!(out, "{}{}", if i > 0 { "," } else { "" }, n)?;
    }
    write!(out, "],\"slabinfo\":[")?;
    for (i, c) in s.caches.iter().enumerate() {
        write!(
            out,
            "{}{{\"name\":\"{}\",\"active_objs\":{},\"num_objs\":{},\"objsize\":{},\"objperslab\":{},\"pagesperslab\":{},\"active_slabs\":{},\"num_slabs\":{}}}",
            if i > 0 { "," } else { "" },
            CacheName(i),
            s.active_objs(i),
            c.num_objs,
            c.objsize,
            c.objperslab,
            c.pagesperslab,
            c.active_slabs,
            c.num_slabs
        )?;
    }
    write!(out, "],\"maps\":[")?;
    let mut first = true;
    for_each_region(|r| {
        let sep = if first { "" } else { "," };
        first = false;
        write!(
            out,
            "{}{{\"start\":\"{:#x}\",\"end\":\"{:#x}\",\"perms\":\"{}\",\"name\":\"{}\",\"kb\":{}}}",
            sep,
            r.start,
            r.end,
            perms(r),
            r.kind.name(),
            (r.end - r.start) / 1024
        )
    })?;
    write!(out, "],\"faults\":")?;
    write_faults_json(out, s)?;
    write!(out, ",\"extfrag\":")?;
    crate::views::frag::write_extfrag_json(out, s)?;
    write!(out, ",\"address_space\":")?;
    crate::views::addrspace::write_address_space_json(out)?;
    writeln!(out, "}}")
}

const _: () = assert!(NR_TIERS == Tier::ALL.len());

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_fixed_buffer() {
        let mut b = [0u8; 32];
        assert_eq!(fmt_hex(&mut b, 0), b"0x0");
        assert_eq!(fmt_hex(&mut b, 0xdead_beef), b"0xdeadbeef");
        assert_eq!(fmt_hex(&mut b, usize::MAX), b"0xffffffffffffffff");
        let mut f = FixedBuf::<8>::new();
        assert!(write!(f, "{}", 1234).is_ok());
        assert!(write!(f, "{}", 567890).is_err());
        assert_eq!(f.as_str(), "12345678");
    }

    #[test]
    fn malloc_stats_text_has_glibc_lines_then_the_views() {
        let mut t = String::new();
        write_malloc_stats(&mut t).unwrap();
        assert!(t.starts_with("Arena 0:\nsystem bytes     = "));
        assert!(t.contains("Total (incl. mmap):"));
        for view in ["== buddyinfo\nNode 0, zone buddyslab", "== slabinfo\nslabinfo - version: 2.1", "== maps", "== faults", "== extfrag\nunusable_index", "== address_space\naddress space"] {
            assert!(t.contains(view), "{view} missing from:\n{t}");
        }
    }

    #[test]
    fn json_view_parses_and_agrees_with_the_snapshot() {
        // Something in a chunk, so the maps are not empty.
        let p = crate::heap::malloc(1000);
        let mut text = String::new();
        write_json(&mut text).unwrap();
        let v: serde_json::Value = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{e}: {text}"));
        assert_eq!(v["version"], VIEWS_VERSION);
        assert!(text.starts_with("{\"version\":"), "{text}");
        assert!(text.find("\"totals\"").unwrap() < text.find("\"buddyinfo\"").unwrap(), "the totals come first");
        let totals = &v["totals"];
        assert!(totals["in_use"].as_u64().unwrap() >= 1000);
        assert!(totals["in_use_peak"].as_u64().unwrap() >= totals["in_use"].as_u64().unwrap());
        assert!(totals["mapped"].as_u64().unwrap() >= totals["in_use"].as_u64().unwrap());
        assert!(totals["resident"].as_u64().unwrap() <= totals["mapped"].as_u64().unwrap());
        assert_eq!(totals["calls"].as_object().unwrap().len(), CALL_NAMES.len());
        assert_eq!(v["buddyinfo"].as_array().unwrap().len(), NR_ORDERS);
        let slabinfo = v["slabinfo"].as_array().unwrap();
        assert_eq!(slabinfo.len(), slab::NR_CACHES);
        assert_eq!(slabinfo[0]["name"], "kmalloc-16");
        assert_eq!(slabinfo[slab::VM_AREA_CACHE]["name"], "vm_area_struct");
        assert!(v["maps"].as_array().unwrap().iter().any(|r| r["name"] == "[buddyslab:chunk]"));
        assert!(v["faults"]["predicted"].as_u64().unwrap() > 0);
        assert!(v["faults"]["minflt"].as_u64().unwrap() > 0);
        let extfrag = &v["extfrag"];
        let index = extfrag["unusable_index"].as_array().unwrap();
        assert_eq!(index.len(), NR_ORDERS);
        assert!(index.iter().all(|x| (0.0..=1.0).contains(&x.as_f64().unwrap())));
        assert!(extfrag["slab_partial_bytes"].as_u64().unwrap() <= extfrag["slab_bytes"].as_u64().unwrap());
        assert_eq!(extfrag["internal"]["pages"]["exact"], true);
        assert_eq!(extfrag["internal"]["slab"]["exact"], false);
        // 1000 bytes asked of the slab tier is at least one page-less object.
        assert!(extfrag["internal"]["slab"]["held"].as_u64().unwrap() >= 1008);
        assert!(v["address_space"].as_array().unwrap().iter().any(|m| m["segment"] == "[stack]"));
        // SAFETY: allocated above.
        unsafe { crate::heap::free(p) };
    }

    #[test]
    fn text_views_open_with_the_totals_and_leave_out_empty_caches() {
        let p = crate::heap::malloc(100);
        let mut t = String::new();
        write_views(&mut t).unwrap();
        assert!(t.starts_with("== totals\nInUse: "), "{t}");
        let s = snapshot();
        let rows: Vec<&str> = t.lines().skip_while(|l| !l.starts_with("# name")).skip(1).take_while(|l| !l.starts_with("==")).collect();
        let nonempty = s.caches.iter().filter(|c| c.num_slabs != 0).count();
        assert!((1..slab::NR_CACHES).contains(&nonempty));
        assert_eq!(rows.len(), nonempty, "{rows:?}");
        assert!(rows.iter().all(|r| !r.contains(" : slabdata      0      0 ")), "{rows:?}");
        // SAFETY: allocated above.
        unsafe { crate::heap::free(p) };
    }

    #[test]
    fn fd_writer_passes_long_text_through() {
        let mut fds = [0; 2];
        // SAFETY: a valid two-int array.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        let mut w = FdWriter::new(fds[1]);
        let line = "0123456789".repeat(100);
        for _ in 0..10 {
            writeln!(w, "{line}").unwrap();
        }
        w.flush();
        // SAFETY: our pipe's write end.
        unsafe { libc::close(fds[1]) };
        let mut got = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: reading into a live buffer from our pipe.
            let n = unsafe { libc::read(fds[0], buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
            got.extend_from_slice(&buf[..n as usize]);
        }
        // SAFETY: our pipe's read end.
        unsafe { libc::close(fds[0]) };
        assert_eq!(got.len(), 10 * 1001);
        assert!(got.starts_with(line.as_bytes()));
    }
}
