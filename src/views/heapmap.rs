//! The heap map: an SVG picture of every chunk, one row per chunk and one
//! cell per page, coloured by what the page is doing, so fragmentation can
//! be seen at a glance.
//!
//! Cell states, read from the page descriptors (`crate::mm::page`):
//!
//! - free, by the buddy order of the block it lies in (pale to deep blue;
//!   a wholly free chunk is one order-10 block);
//! - slab, by the cache that owns it: one hue per family of size classes
//!   (tiny, objects up to 128 B, yellow; small, up to 1 KiB, orange;
//!   medium, up to 8 KiB, red; large, up to 32 KiB, magenta), lighter for
//!   the smaller classes of a family; the region tree's `vm_area_struct`
//!   cache in light violet (metadata);
//! - a run handed out whole by the page tier (green);
//! - a page-table shadow page (deep violet, metadata, from
//!   `crate::ledger::pagetable`'s owner tier);
//! - other (grey): pages on a per-CPU list (`crate::mm::pcp`), the shadow's
//!   spare table pages, blocks being released, or a block between the zone
//!   and its tier.
//!
//! Pages handed out and never touched (the page-table shadow has not seen
//! them resident: `pagetable::never_touched`, after the observation a
//! snapshot makes) are drawn pale (`fill-opacity` 0.35, `data-untouched`),
//! their hover title says so, and a line under the legend counts them:
//! memory the program asked for and the kernel never had to back.
//!
//! Seventy classes cannot each have a colour one can tell apart, so the
//! colour says the family and a hover title (`<title>`) on every run of
//! cells says the rest: its address, pages, class, object size, tier and
//! slab geometry, or what the page is for. A run of neighbouring pages in
//! the same state is drawn as one `<rect>` whose width is its page count
//! (one unit per page), so a row always spans 1024 units and the file
//! stays small. Each row is a `<g class="chunk">` group whose title sums
//! the chunk up; the legend lists every state present with its page
//! count, in one section per colour family. Text widths are counted
//! (`TextWidth`, seven units per character) and the picture is made
//! wide enough for its longest line.
//!
//! Written without allocating: `BUDDYSLAB_HEAPMAP=path.svg` makes the
//! exit hook ([`crate::views::report::print_at_exit`]) open the file with a raw
//! `openat` and write through [`crate::views::snapshot::FdWriter`]; from Rust, [`write_svg`]
//! writes to any `fmt::Write`. The zone lock is held only while one
//! chunk's descriptors are copied into a 1 KiB stack array, never while
//! the writer runs.

use crate::mm::ZONE;
use crate::os;
use crate::mm::page::{self, Chunk, CHUNK_PAGES, CHUNK_SIZE, MAX_ORDER, PG_CACHED, PG_FREE, PG_NONE, PG_PAGES, PG_SLAB};
use crate::ledger::pagetable::{self, Tier};
use crate::slab::{size_of_class, CLASSES, NR_CACHES, NR_CLASSES, SLAB_MAX, VM_AREA_CACHE};
use crate::views::snapshot::{self as stats, CacheName};
use crate::ledger::vma::VmaKind;
use core::fmt::{self, Write};
use core::ptr;

/// Cell state: free, order `k`, is `FREE + k`.
const FREE: u8 = 0;
/// Cell state: slab of cache `c` is `SLAB + c`.
const SLAB: u8 = 16;
/// Cell state: a slab of the region tree's `vm_area_struct` cache.
const VM_AREA: u8 = SLAB + VM_AREA_CACHE as u8;
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
/// Height of one legend line.
const LEGEND_LINE: usize = 16;
/// Room left for legend lines of states that appear between the two
/// passes over the chunks (one more state takes at most one line).
const LEGEND_SLACK: usize = 1;
/// A legend swatch and the space after it; the space between columns.
const SWATCH: usize = 16;
const COLUMN_GAP: usize = 14;
/// The least width: the address column and one unit per page.
const ROWS_WIDTH: usize = LABEL + CHUNK_PAGES + 10;
/// Advance of one character of the 11-unit monospace font, rounded up
/// (DejaVu Sans Mono's is 0.6 em, 6.6 units): every text is laid out as
/// this many units per character, so no line runs past the edge.
pub(crate) const CHAR_W: usize = 7;

/// A colour family of slab size classes: the classes of objects up to
/// `max` bytes (and over the previous family's) share a hue, lighter for
/// the smaller ones, so a glance tells tiny slabs from large ones and the
/// hover title names the class.
struct Family {
    name: &'static str,
    max: usize,
    hue: usize,
}

const FAMILIES: [Family; 4] = [
    Family { name: "tiny", max: 128, hue: 50 },
    Family { name: "small", max: 1024, hue: 25 },
    Family { name: "medium", max: 8192, hue: 355 },
    Family { name: "large", max: SLAB_MAX, hue: 318 },
];

/// The family of size class `class`.
fn family_of(class: usize) -> usize {
    let size = size_of_class(class);
    FAMILIES.iter().position(|f| size <= f.max).unwrap_or(FAMILIES.len() - 1)
}

/// The classes of family `family`, smallest first (a class's size grows
/// with its index).
fn classes_of(family: usize) -> core::ops::Range<usize> {
    let first = (0..NR_CLASSES).find(|&c| family_of(c) >= family).unwrap_or(NR_CLASSES);
    let end = (0..NR_CLASSES).find(|&c| family_of(c) > family).unwrap_or(NR_CLASSES);
    first..end
}

/// The legend's sections: free blocks, one per slab family, then page-tier
/// runs, metadata and the rest.
const SECTIONS: usize = FAMILIES.len() + 2;

/// The legend section of state `s`.
fn section_of(s: u8) -> usize {
    if s <= FREE + MAX_ORDER as u8 {
        0
    } else if (SLAB..SLAB + NR_CLASSES as u8).contains(&s) {
        1 + family_of((s - SLAB) as usize)
    } else {
        SECTIONS - 1
    }
}

/// Whether `s` is a state a cell can have (the numbers between the free
/// orders and the slabs are unused).
fn is_state(s: u8) -> bool {
    (s as usize) < STATES && !(s > FREE + MAX_ORDER as u8 && s < SLAB)
}

/// The states of legend section `section`, in legend order.
fn states_in(section: usize) -> impl Iterator<Item = u8> {
    (0..STATES as u8).filter(move |&s| is_state(s) && section_of(s) == section)
}

/// `BUDDYSLAB_HEAPMAP`: where the map goes at exit.
pub static FILE: stats::ExitFile = stats::ExitFile::new("heap map", &crate::options::HEAPMAP_PATH);

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
fn read_chunk(base: usize, cells: &mut [u8; CHUNK_PAGES], untouched: &mut [bool; CHUNK_PAGES]) -> bool {
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
                        // A run on a thread's run list is the page tier's too.
                        PG_PAGES | PG_CACHED => (RUN, ptr::read_volatile(ptr::addr_of!((*p).span)).max(1) as usize),
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
    for (i, fresh) in untouched.iter_mut().enumerate() {
        *fresh = pagetable::never_touched(pagetable::entry(base + (i << os::PAGE_SHIFT)));
    }
    true
}

/// The line under the legend that counts the pale cells, at `top`.
fn write_untouched_line(out: &mut dyn Write, pages: usize, top: usize) -> fmt::Result {
    writeln!(
        out,
        "<text class=\"untouched\" data-figure=\"untouched\" x=\"4\" y=\"{}\">pale cells: handed out, never touched (not resident): {}</text>",
        top + 10,
        Plural(pages, "page")
    )
}

/// The CSS fill of a state.
struct Fill(u8);

impl fmt::Display for Fill {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        if s <= FREE + MAX_ORDER as u8 {
            // Pale for small free blocks, deeper for large ones.
            write!(f, "hsl(210,65%,{}%)", 90 - 3 * (s - FREE) as usize)
        } else if s == VM_AREA {
            f.write_str("hsl(275,45%,62%)")
        } else if (SLAB..RUN).contains(&s) {
            // The family's hue, light for its smallest class, deep for
            // its largest.
            let class = (s - SLAB) as usize;
            let family = family_of(class);
            let classes = classes_of(family);
            let step = class - classes.start;
            let lightness = 72 - 34 * step / (classes.len() - 1).max(1);
            write!(f, "hsl({},80%,{lightness}%)", FAMILIES[family].hue)
        } else if s == RUN {
            f.write_str("hsl(130,50%,38%)")
        } else if s == TABLE {
            f.write_str("hsl(270,55%,33%)")
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

/// A state's full name (the legend's `data-name`, the start of a hover
/// title).
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

/// A state's legend item: short, since its section says the rest.
struct ItemName(u8);

impl fmt::Display for ItemName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.0;
        if s <= FREE + MAX_ORDER as u8 {
            write!(f, "order {}", s - FREE)
        } else if s == VM_AREA {
            f.write_str("vm_area_struct slabs")
        } else if (SLAB..RUN).contains(&s) {
            write!(f, "{} B", size_of_class((s - SLAB) as usize))
        } else if s == RUN {
            f.write_str("page-tier runs")
        } else {
            write!(f, "{}", Label(s))
        }
    }
}

/// What a page in state `s` is, for a hover title: the state's name, then
/// its object size and tier, or what the page is for; unless `brief` (a
/// cell's title, written once per run of cells), also the slab geometry
/// and the block size.
struct Describe {
    state: u8,
    brief: bool,
}

impl fmt::Display for Describe {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = self.state;
        write!(f, "{}", Label(s))?;
        if s <= FREE + MAX_ORDER as u8 {
            let order = (s - FREE) as usize;
            if !self.brief {
                write!(f, ": in buddy blocks of {} ({} KiB)", Plural(1 << order, "page"), 4 << order)?;
            }
            Ok(())
        } else if s == VM_AREA {
            write!(f, ": {} B nodes of buddyslab's region tree, metadata", crate::slab::VM_AREA_SIZE)
        } else if (SLAB..RUN).contains(&s) {
            let class = (s - SLAB) as usize;
            let info = &CLASSES[class];
            write!(f, ": {} B objects, {} tier", info.size, FAMILIES[family_of(class)].name)?;
            if !self.brief {
                write!(f, ", slabs of {} holding {}", Plural(1 << info.order, "page"), Plural(info.objects as usize, "object"))?;
            }
            Ok(())
        } else if s == RUN {
            write!(f, ": requests over {} KiB, handed out as whole pages", SLAB_MAX / 1024)
        } else if s == TABLE {
            f.write_str(": buddyslab's record of which pages are touched, metadata")
        } else if self.brief {
            Ok(())
        } else {
            f.write_str(": on a per-CPU page list, in the shadow's table pool, or between the zone and a tier")
        }
    }
}

/// A legend section's heading; `short` for a row's title.
struct SectionName {
    section: usize,
    short: bool,
}

impl fmt::Display for SectionName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.section {
            0 if self.short => f.write_str("free"),
            0 => f.write_str("free blocks"),
            s if s <= FAMILIES.len() => {
                let classes = classes_of(s - 1);
                write!(f, "{} slabs", FAMILIES[s - 1].name)?;
                if self.short || classes.is_empty() {
                    return Ok(());
                }
                write!(f, ", {}-{} B", size_of_class(classes.start), size_of_class(classes.end - 1))
            }
            _ if self.short => f.write_str("runs, metadata and other"),
            _ => f.write_str("runs, metadata, other"),
        }
    }
}

/// `1 page`, `2 pages`: a count and its noun (one whose plural adds `s`).
pub(crate) struct Plural<'a>(pub usize, pub &'a str);

impl fmt::Display for Plural<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}{}", self.0, self.1, if self.0 == 1 { "" } else { "s" })
    }
}

/// Counts the characters a reader sees in SVG written through it (markup
/// skipped, an entity one character) and keeps the longest run between
/// two tags or line ends: how wide a text will be, found without
/// allocating.
#[derive(Default)]
pub(crate) struct TextWidth {
    in_tag: bool,
    in_entity: bool,
    current: usize,
    widest: usize,
}

impl TextWidth {
    /// The width of `args` drawn as one text, in SVG units.
    pub(crate) fn of(args: fmt::Arguments<'_>) -> usize {
        let mut w = TextWidth::default();
        let _ = w.write_fmt(args);
        w.units()
    }

    /// The widest text seen, in SVG units.
    pub(crate) fn units(&self) -> usize {
        self.widest.max(self.current) * CHAR_W
    }
}

impl Write for TextWidth {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        for c in s.chars() {
            match c {
                '<' | '\n' => {
                    self.widest = self.widest.max(self.current);
                    self.current = 0;
                    self.in_tag = c == '<';
                }
                '>' if self.in_tag => self.in_tag = false,
                _ if self.in_tag => {}
                ';' if self.in_entity => self.in_entity = false,
                _ if self.in_entity => {}
                '&' => {
                    self.in_entity = true;
                    self.current += 1;
                }
                _ => self.current += 1,
            }
        }
        Ok(())
    }
}

/// Where the legend's parts go. Widths come from the longest text each
/// part can hold (every state of a section, with the largest count the
/// map can show), so both passes lay it out alike and nothing runs past
/// the right edge.
struct Legend {
    /// Where the items start, right of the section headings.
    items_x: usize,
    /// Per section: the width of one item column and items per line.
    column: [usize; SECTIONS],
    per_line: [usize; SECTIONS],
}

impl Legend {
    /// The layout for counts up to `most` pages.
    fn new(most: usize) -> Legend {
        let heading =
            (0..SECTIONS).map(|section| TextWidth::of(format_args!("{}: {}", SectionName { section, short: false }, Plural(most, "page")))).max();
        let mut legend = Legend { items_x: 4 + heading.unwrap_or(0) + COLUMN_GAP, column: [0; SECTIONS], per_line: [1; SECTIONS] };
        for (section, column) in legend.column.iter_mut().enumerate() {
            let widest = states_in(section).map(|s| TextWidth::of(format_args!("{}: {}", ItemName(s), Plural(most, "page")))).max();
            *column = SWATCH + widest.unwrap_or(0) + COLUMN_GAP;
        }
        legend
    }

    /// The least picture width that holds one column of every section.
    fn least_width(&self) -> usize {
        self.items_x + self.column.iter().max().unwrap_or(&0)
    }

    /// Fits the columns into a picture `width` wide.
    fn fit(&mut self, width: usize) {
        for (per_line, column) in self.per_line.iter_mut().zip(self.column) {
            *per_line = (width.saturating_sub(self.items_x) / column).max(1);
        }
    }

    /// Lines the legend takes for `counts`.
    fn lines(&self, counts: &[usize; STATES]) -> usize {
        (0..SECTIONS).map(|section| states_in(section).filter(|&s| counts[s as usize] > 0).count().div_ceil(self.per_line[section])).sum()
    }

    /// Writes the legend from `top`: per section with pages, its heading
    /// and total, then an item per state present (swatch, name, pages,
    /// a hover title saying what it is). Returns the lines written.
    fn write(&self, out: &mut dyn Write, counts: &[usize; STATES], top: usize) -> Result<usize, fmt::Error> {
        let mut line = 0;
        for section in 0..SECTIONS {
            let total: usize = states_in(section).map(|s| counts[s as usize]).sum();
            if total == 0 {
                continue;
            }
            writeln!(
                out,
                "<text class=\"section\" x=\"4\" y=\"{}\" font-weight=\"bold\">{}: {}</text>",
                top + line * LEGEND_LINE + 10,
                SectionName { section, short: false },
                Plural(total, "page")
            )?;
            let per_line = self.per_line[section];
            for (item, s) in states_in(section).filter(|&s| counts[s as usize] > 0).enumerate() {
                let x = self.items_x + (item % per_line) * self.column[section];
                let y = top + (line + item / per_line) * LEGEND_LINE;
                writeln!(
                    out,
                    "<g class=\"legend\" data-name=\"{}\"><title>{}</title><rect x=\"{x}\" y=\"{y}\" width=\"12\" height=\"12\" class=\"{}\"/><text x=\"{}\" y=\"{}\">{}: {}</text></g>",
                    Label(s),
                    Describe { state: s, brief: false },
                    Class(s),
                    x + SWATCH,
                    y + 10,
                    ItemName(s),
                    Plural(counts[s as usize], "page")
                )?;
            }
            line += states_in(section).filter(|&s| counts[s as usize] > 0).count().div_ceil(per_line);
        }
        Ok(line)
    }
}

/// Writes the heap map as one SVG document: a title line, one
/// `<g class="chunk">` row per chunk (its address, then runs of cells,
/// each with a hover title saying what its pages are), a legend of the
/// states present with their page counts, grouped as the colours are, and
/// the fragmentation figures of a fresh [`stats::snapshot`].
pub fn write_svg(out: &mut dyn Write) -> fmt::Result {
    write_svg_of(out, &stats::snapshot())
}

/// Lines of fragmentation figures under the legend ([`write_frag_legend`]).
const FRAG_LINES: usize = 6;

/// The title line.
fn write_title(out: &mut dyn Write, chunks: usize) -> fmt::Result {
    writeln!(
        out,
        "<text x=\"4\" y=\"16\">buddyslab heap map: {} of {CHUNK_PAGES} pages, one cell per 4 KiB page; hover over a cell to see what it is</text>",
        Plural(chunks, "chunk")
    )
}

/// [`write_svg`] with the fragmentation figures of `s` (the cells are
/// read fresh).
pub fn write_svg_of(out: &mut dyn Write, s: &stats::Snapshot) -> fmt::Result {
    let mut cells = [0u8; CHUNK_PAGES];
    let mut untouched = [false; CHUNK_PAGES];
    // First pass: how many rows and legend lines the picture needs.
    let (mut chunks, mut counts) = (0usize, [0usize; STATES]);
    for_each_chunk(|base| {
        if read_chunk(base, &mut cells, &mut untouched) {
            chunks += 1;
            cells.iter().for_each(|&c| counts[c as usize] += 1);
        }
        Ok(())
    })?;
    // The width holds the rows, the longest text line and a column of
    // every legend section.
    let mut legend = Legend::new(chunks * CHUNK_PAGES);
    let mut text = TextWidth::default();
    write_title(&mut text, chunks)?;
    write_frag_legend(&mut text, s, 0)?;
    write_untouched_line(&mut text, chunks * CHUNK_PAGES, 0)?;
    let width = ROWS_WIDTH.max(4 + text.units() + 8).max(legend.least_width() + 4);
    legend.fit(width);
    let legend_top = TOP + chunks * PITCH + 14;
    let height = legend_top + (legend.lines(&counts) + LEGEND_SLACK) * LEGEND_LINE + 10 + (1 + FRAG_LINES) * LEGEND_LINE + 8;
    writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{width}\" height=\"{height}\" viewBox=\"0 0 {width} {height}\" font-family=\"monospace\" font-size=\"11\">"
    )?;
    writeln!(out, "<style>")?;
    for s in (0..STATES as u8).filter(|&s| is_state(s)) {
        writeln!(out, ".{}{{fill:{}}}", Class(s), Fill(s))?;
    }
    writeln!(out, "</style>")?;
    writeln!(out, "<rect width=\"{width}\" height=\"{height}\" fill=\"white\"/>")?;
    write_title(out, chunks)?;

    // Second pass: the rows, with the counts the legend shows.
    let mut counts = [0usize; STATES];
    let mut untouched_pages = 0;
    let mut row = 0usize;
    for_each_chunk(|base| {
        if !read_chunk(base, &mut cells, &mut untouched) {
            return Ok(());
        }
        let y = TOP + row * PITCH;
        let mut in_section = [0usize; SECTIONS];
        cells.iter().for_each(|&c| in_section[section_of(c)] += 1);
        write!(out, "<g class=\"chunk\" data-base=\"{base:#x}\"><title>chunk {base:#x}")?;
        let mut sep = ": ";
        for (section, &n) in in_section.iter().enumerate().filter(|(_, &n)| n > 0) {
            write!(out, "{sep}{} {}", SectionName { section, short: true }, Plural(n, "page"))?;
            sep = "; ";
        }
        writeln!(out, "</title>")?;
        writeln!(out, "<text x=\"4\" y=\"{}\">{base:#014x}</text>", y + ROW - 1)?;
        let mut i = 0;
        while i < CHUNK_PAGES {
            let (state, fresh) = (cells[i], untouched[i]);
            let run = (i..CHUNK_PAGES).take_while(|&j| cells[j] == state && untouched[j] == fresh).count();
            counts[state as usize] += run;
            if fresh {
                untouched_pages += run;
            }
            writeln!(
                out,
                "<rect x=\"{}\" y=\"{y}\" width=\"{run}\" height=\"{ROW}\" class=\"{}\"{}><title>{:#x}, {}{}: {}</title></rect>",
                LABEL + i,
                Class(state),
                if fresh { " fill-opacity=\"0.35\" data-untouched=\"1\"" } else { "" },
                base + (i << os::PAGE_SHIFT),
                Plural(run, "page"),
                if fresh { ", handed out, never touched" } else { "" },
                Describe { state, brief: true }
            )?;
            i += run;
        }
        writeln!(out, "</g>")?;
        row += 1;
        Ok(())
    })?;

    let lines = legend.write(out, &counts, legend_top)?;
    write_untouched_line(out, untouched_pages, legend_top + lines * LEGEND_LINE + 10)?;
    write_frag_legend(out, s, legend_top + (lines + 1) * LEGEND_LINE + 10)?;
    writeln!(out, "</svg>")
}

/// Writes the fragmentation figures of `s` as [`FRAG_LINES`] `<text
/// class="frag">` lines from `top`, labelled as the views label them:
/// the unusable free space index per order (the kernel's format), the
/// partial-slab share, and internal waste per tier (pages and large exact,
/// slab sampled and bounded).
fn write_frag_legend(out: &mut dyn Write, s: &stats::Snapshot, top: usize) -> fmt::Result {
    use crate::views::frag::{self, Thousandths};
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
            "<text class=\"frag\" data-figure=\"internal_{name}\" x=\"4\" y=\"{}\">internal waste, {name} (exact, since start): {} B beyond {} B requested, {} B handed out, {}</text>",
            line(2 + i),
            t.waste(),
            t.requested,
            t.handed,
            Plural(t.count, "allocation")
        )?;
    }
    let (sampled, unsampled) = s.slab_sampled_total();
    write!(out, "<text class=\"frag\" data-figure=\"internal_slab_sampled\" x=\"4\" y=\"{}\">internal waste, slab (sampled", line(4))?;
    match sampled.waste_fraction() {
        Some(fraction) => writeln!(
            out,
            ", {}): est. {} B in {}, waste fraction {}; {} of unsampled classes</text>",
            Plural(sampled.samples, "request"),
            sampled.est_live_waste,
            Plural(sampled.active_objs, "live object"),
            fraction,
            Plural(unsampled, "live object")
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
        let mut seen = [const { crate::os::fmt::FixedBuf::<16>::new() }; STATES];
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
        let p = crate::heap::malloc(SLAB_MAX + 5000);
        assert!(!p.is_null());
        let mut s = stats::snapshot();
        // Samples in one class, so the sampled line has figures.
        let class = crate::slab::class_of(33);
        s.slab_samples = [crate::views::frag::SlabSample::default(); crate::slab::NR_CLASSES];
        s.slab_samples[class] = crate::views::frag::SlabSample { samples: 100, requested_sum: 3300 };
        let mut svg = String::new();
        write_svg_of(&mut svg, &s).unwrap();
        // SAFETY: allocated above, freed once.
        unsafe { crate::heap::free(p) };

        let index: Vec<f64> = (0..=MAX_ORDER).map(|o| s.unusable_index(o) as f64 / 1000.0).collect();
        assert_eq!(numbers(&svg, "unusable_index"), index);
        let (partial, all) = s.slab_partial_bytes();
        let share = crate::views::frag::thousandths(partial, all).0 as f64 / 1000.0;
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
        let (held, worst) = crate::views::frag::slab_bound(|c| s.active_objs(c));
        assert_eq!(numbers(&svg, "internal_slab_bound"), [worst as f64, held as f64]);

        // Without samples the line says so.
        s.slab_samples = [crate::views::frag::SlabSample::default(); crate::slab::NR_CLASSES];
        let mut svg = String::new();
        write_svg_of(&mut svg, &s).unwrap();
        assert!(svg.contains("internal waste, slab (sampled): no samples</text>"), "{svg}");
    }

    /// The picture's width, from its `<svg>` element.
    fn svg_width(svg: &str) -> usize {
        svg.split(" width=\"").nth(1).unwrap().split('"').next().unwrap().parse().unwrap()
    }

    /// Every `<title>`'s text.
    fn titles(svg: &str) -> Vec<&str> {
        svg.split("<title>").skip(1).map(|t| &t[..t.find("</title>").unwrap()]).collect()
    }

    /// "1 pages", "1 chunks", "1 allocations": a count of one with a
    /// plural noun, in text or titles.
    fn singular_mistakes(text: &str) -> Vec<String> {
        let bytes = text.as_bytes();
        let mut found = Vec::new();
        for (i, _) in text.match_indices("1 ") {
            let after_number = i == 0 || !bytes[i - 1].is_ascii_digit() && bytes[i - 1] != b'.';
            let word: String = text[i + 2..].chars().take_while(|c| c.is_ascii_alphabetic()).collect();
            let plural = ["pages", "chunks", "allocations", "objects", "requests", "live", "blocks"].contains(&word.as_str());
            let live = word == "live" && text[i + 2..].starts_with("live objects");
            if after_number && plural && (word != "live" || live) {
                found.push(text[i.saturating_sub(20)..(i + 20).min(text.len())].to_string());
            }
        }
        found
    }

    #[test]
    fn counts_say_one_page_and_two_pages() {
        assert_eq!(Plural(1, "page").to_string(), "1 page");
        assert_eq!(Plural(0, "page").to_string(), "0 pages");
        assert_eq!(Plural(2, "chunk").to_string(), "2 chunks");
        assert_eq!(singular_mistakes("a: 1 pages; 11 pages; 21 page; 0.1 pages; 1 live objects").len(), 2);
        assert!(singular_mistakes("1 page, 1 live object, 10 chunks").is_empty());
    }

    #[test]
    fn text_width_counts_what_a_reader_sees() {
        assert_eq!(TextWidth::of(format_args!("<text x=\"4\">a &amp; b</text>")), 5 * CHAR_W);
        let mut w = TextWidth::default();
        w.write_str("<g><text>short</text>\n<text>longer one</text></g>").unwrap();
        w.write_str("<text>&lt;</text>").unwrap();
        assert_eq!(w.units(), 10 * CHAR_W);
    }

    /// Slab colours come in four families by object size, one hue each,
    /// lighter for smaller classes; every class is in the family its size
    /// says, and no two states share a fill.
    #[test]
    fn size_classes_are_coloured_by_family() {
        let fill = |s: u8| Fill(s).to_string();
        let hue = |s: u8| fill(s)[4..].split(',').next().unwrap().parse::<usize>().unwrap();
        let lightness = |s: u8| fill(s).rsplit(',').next().unwrap().trim_end_matches("%)").parse::<usize>().unwrap();
        let mut covered = 0;
        for (f, family) in FAMILIES.iter().enumerate() {
            let classes = classes_of(f);
            assert!(!classes.is_empty(), "{} has no class", family.name);
            covered += classes.len();
            let low = if f == 0 { 0 } else { FAMILIES[f - 1].max };
            for class in classes.clone() {
                let state = SLAB + class as u8;
                assert!(low < size_of_class(class) && size_of_class(class) <= family.max, "class {class}");
                assert_eq!(hue(state), family.hue, "class {class}");
                assert!(Describe { state, brief: true }.to_string().contains(&format!("{} tier", family.name)));
            }
            let ramp: Vec<usize> = classes.map(|c| lightness(SLAB + c as u8)).collect();
            assert!(ramp.windows(2).all(|w| w[0] > w[1]), "{}: lightness {ramp:?}", family.name);
        }
        assert_eq!(covered, NR_CLASSES);
        // Neighbouring families' hues are far apart on the wheel.
        for pair in FAMILIES.windows(2) {
            let d = pair[0].hue.abs_diff(pair[1].hue);
            assert!(d.min(360 - d) >= 20, "{} and {}", pair[0].name, pair[1].name);
        }
        let mut fills: Vec<String> = (0..STATES as u8).filter(|&s| is_state(s)).map(fill).collect();
        let n = fills.len();
        fills.sort();
        fills.dedup();
        assert_eq!(fills.len(), n, "two states share a fill");
    }

    /// The map parses as XML; every text line fits inside the picture,
    /// however long the figures; no count of one says "pages"; every run
    /// of cells and every row has a hover title saying what it is.
    #[test]
    fn the_map_is_well_formed_fits_its_width_and_titles_every_cell() {
        let small = crate::heap::malloc(100);
        let run = crate::heap::malloc(40_000);
        assert!(!small.is_null() && !run.is_null());
        let mut s = stats::snapshot();
        // Long figures widen the picture; counts of one read singular.
        s.large_tier = crate::views::frag::TierWaste { requested: 123_456_789_012_345, handed: 223_456_789_012_345, count: 1 };
        s.slab_samples = [crate::views::frag::SlabSample::default(); crate::slab::NR_CLASSES];
        s.slab_samples[0] = crate::views::frag::SlabSample { samples: 1, requested_sum: 9 };
        let mut svg = String::new();
        write_svg_of(&mut svg, &s).unwrap();
        // SAFETY: allocated above, freed once each.
        unsafe {
            crate::heap::free(small);
            crate::heap::free(run);
        }
        crate::views::addrspace::tests::assert_well_formed(&svg);

        let width = svg_width(&svg);
        assert!(width >= ROWS_WIDTH);
        let texts = crate::views::addrspace::tests::svg_texts(&svg);
        assert!(texts.len() > 10, "{svg}");
        for text in &texts {
            assert!(!text.centred);
        }
        let texts: Vec<(usize, String)> = texts.into_iter().map(|t| (t.x, t.text)).collect();
        for (x, text) in &texts {
            let right = x + text.chars().count() * CHAR_W;
            assert!(right <= width, "{text:?} ends at {right}, past the width {width}");
        }
        assert!(texts.iter().any(|(_, t)| t.ends_with("1 allocation")), "{texts:?}");
        assert!(texts.iter().any(|(_, t)| t.contains("(sampled, 1 request)")), "{texts:?}");
        for (_, text) in &texts {
            assert!(singular_mistakes(text).is_empty(), "{text:?}");
        }
        for title in titles(&svg) {
            assert!(singular_mistakes(title).is_empty(), "{title:?}");
        }
        // The legend's swatches are inside too.
        for line in svg.lines().filter(|l| l.starts_with("<g class=\"legend\"")) {
            let x: usize = line.split("<rect x=\"").nth(1).unwrap().split('"').next().unwrap().parse().unwrap();
            assert!(x + 12 <= width, "{line}");
        }

        // Every run of cells says its address, pages and what it is.
        let mut cells = 0;
        for line in svg.lines().filter(|l| l.starts_with("<rect x=") && l.contains("height=\"10\"")) {
            cells += 1;
            let class = line.split("class=\"").nth(1).unwrap().split('"').next().unwrap();
            let state = (0..STATES as u8).filter(|&s| is_state(s)).find(|&s| Class(s).to_string() == class).unwrap();
            let title = titles(line).pop().unwrap_or_else(|| panic!("no title: {line}"));
            assert!(title.starts_with("0x") && title.contains(" page"), "{title}");
            assert!(title.ends_with(&Describe { state, brief: true }.to_string()), "{title}");
            if (SLAB..VM_AREA).contains(&state) {
                let size = size_of_class((state - SLAB) as usize);
                assert!(title.contains(&format!("slab kmalloc-{size}: {size} B objects, ")), "{title}");
            }
        }
        assert!(cells > 0);
        // Pale cells say they were never touched, and the line under the
        // legend counts them all.
        let mut pale = 0;
        for line in svg.lines().filter(|l| l.starts_with("<rect x=") && l.contains("data-untouched=\"1\"")) {
            assert!(line.contains("fill-opacity=\"0.35\"") && titles(line)[0].contains(", handed out, never touched: "), "{line}");
            pale += line.split("width=\"").nth(1).unwrap().split('"').next().unwrap().parse::<usize>().unwrap();
        }
        let counted = texts.iter().find(|(_, t)| t.starts_with("pale cells: ")).unwrap_or_else(|| panic!("{texts:?}"));
        assert!(counted.1.ends_with(&format!(": {}", Plural(pale, "page"))), "{counted:?}, {pale} pale cells");
        let rows: Vec<&str> = svg.lines().filter(|l| l.starts_with("<g class=\"chunk\"")).collect();
        assert!(!rows.is_empty());
        for row in rows {
            let title = titles(row).pop().unwrap_or_else(|| panic!("no title: {row}"));
            assert!(title.starts_with("chunk 0x") && title.contains(" pages"), "{title}");
        }
        // Each legend item's title says the same as its name, and more.
        for line in svg.lines().filter(|l| l.starts_with("<g class=\"legend\"")) {
            let name = line.split("data-name=\"").nth(1).unwrap().split('"').next().unwrap();
            assert!(titles(line)[0].starts_with(name), "{line}");
        }
    }
}
