//! The process address space as the classic diagram draws it: text, data,
//! BSS, `[heap]`, the mmap area, shared libraries, the stack and the vdso,
//! highest address at the top, with buddyslab's own regions (from its VMA
//! tree) marked inside the mappings that hold them.
//!
//! The picture comes from `/proc/self/maps`, read with raw `open`/`read`
//! into a fixed buffer ([`for_each_mapping`]); nothing here allocates.
//! Lines are classified by name and permissions ([`Segment`]): the program
//! is the file named by the first file-backed line (the kernel lists the
//! executable first, at the lowest address of the usual layout); its
//! executable and read-only lines are text, its writable lines data, and
//! the anonymous writable line right after its data is the BSS (the kernel
//! maps it there). Other file-backed lines are shared libraries (or mapped
//! files), other anonymous lines the mmap area.
//!
//! Consecutive lines of one segment and one file are drawn as one row, up
//! to [`MAX_ROWS`] rows, the highest; the mappings below them are counted.
//!
//! The drawn form ([`write_address_space_svg`], or
//! `BUDDYSLAB_ADDRSPACE_SVG=path.svg` at exit): one band per line of the
//! maps file, highest address at the top, its height growing with the
//! logarithm of its size; bands of one segment and file share a box
//! coloured by segment; gaps are cut to a fixed-height break labelled with
//! their size; buddyslab's regions are marked (red) inside the bands that
//! hold them, with their kind, count and size. It is written through
//! fixed stack arrays (up to [`SVG_MAX_LINES`] lines), without allocating.

use crate::views::heapmap::{Plural, TextWidth, CHAR_W};
use crate::os;
use crate::ledger::vma::{Region, VmaKind};
use core::fmt::{self, Write};

/// What a line of `/proc/self/maps` is, in the diagram's words.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Segment {
    /// The program's code and read-only data.
    Text,
    /// The program's initialised writable data.
    Data,
    /// The program's zero-initialised data (anonymous, after `Data`).
    Bss,
    /// `[heap]`: the `brk` area.
    Heap,
    /// Anonymous mappings (the mmap area).
    Mmap,
    /// Shared libraries and other mapped files.
    Library,
    /// `[stack]`.
    Stack,
    /// `[vdso]`, `[vvar]`, `[vsyscall]`: kernel pages mapped for user space.
    Vdso,
}

impl Segment {
    /// The label drawn in the diagram.
    pub fn name(self) -> &'static str {
        match self {
            Segment::Text => "text",
            Segment::Data => "data",
            Segment::Bss => "bss",
            Segment::Heap => "[heap]",
            Segment::Mmap => "mmap",
            Segment::Library => "library",
            Segment::Stack => "[stack]",
            Segment::Vdso => "vdso",
        }
    }
}

/// One line of `/proc/self/maps`.
#[derive(Clone, Copy, Debug)]
pub struct Mapping<'a> {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
    /// `rwxp` as printed.
    pub perms: [u8; 4],
    /// The path or `[name]`; empty for anonymous memory. Cut at
    /// [`LINE_MAX`] bytes of line.
    pub name: &'a [u8],
    /// The classification.
    pub segment: Segment,
}

/// Longest line kept whole; longer names are cut.
pub const LINE_MAX: usize = 512;

fn parse_hex(s: &[u8]) -> Option<usize> {
    if s.is_empty() {
        return None;
    }
    let mut v = 0usize;
    for &c in s {
        let d = match c {
            b'0'..=b'9' => c - b'0',
            b'a'..=b'f' => c - b'a' + 10,
            _ => return None,
        };
        v = v.checked_mul(16)?.checked_add(d as usize)?;
    }
    Some(v)
}

/// Splits one line into start, end, perms and name (the sixth field, with
/// its leading spaces dropped).
fn parse_line(line: &[u8]) -> Option<(usize, usize, [u8; 4], &[u8])> {
    let mut fields = line.splitn(6, |&c| c == b' ');
    let range = fields.next()?;
    let dash = range.iter().position(|&c| c == b'-')?;
    let start = parse_hex(&range[..dash])?;
    let end = parse_hex(&range[dash + 1..])?;
    let perms: [u8; 4] = fields.next()?.try_into().ok()?;
    let _offset = fields.next()?;
    let _dev = fields.next()?;
    let _inode = fields.next()?;
    let rest = fields.next().unwrap_or(&[]);
    let skip = rest.iter().take_while(|&&c| c == b' ').count();
    Some((start, end, perms, &rest[skip..]))
}

/// Classifies lines in file order; keeps what the BSS rule needs.
struct Classifier {
    program: [u8; LINE_MAX],
    program_len: usize,
    last: Option<Segment>,
}

impl Classifier {
    const fn new() -> Self {
        Classifier { program: [0; LINE_MAX], program_len: 0, last: None }
    }

    fn classify(&mut self, perms: [u8; 4], name: &[u8]) -> Segment {
        let segment = match name {
            b"[heap]" => Segment::Heap,
            b"[vdso]" | b"[vvar]" | b"[vsyscall]" | b"[vvar_vclock]" => Segment::Vdso,
            _ if name.starts_with(b"[stack") => Segment::Stack,
            [] if self.last == Some(Segment::Data) && perms[1] == b'w' => Segment::Bss,
            [] => Segment::Mmap,
            _ if name[0] == b'[' => Segment::Mmap,
            _ => {
                if self.program_len == 0 {
                    let n = name.len().min(LINE_MAX);
                    self.program[..n].copy_from_slice(&name[..n]);
                    self.program_len = n;
                }
                if name == &self.program[..self.program_len] {
                    if perms[1] == b'w' {
                        Segment::Data
                    } else {
                        Segment::Text
                    }
                } else {
                    Segment::Library
                }
            }
        };
        self.last = Some(segment);
        segment
    }
}

/// Calls `f` on every line of `/proc/self/maps` in file order (lowest
/// address first). Reads through a fixed buffer; does not allocate. Fails
/// when the file cannot be opened or read.
pub fn for_each_mapping(mut f: impl FnMut(&Mapping<'_>) -> fmt::Result) -> fmt::Result {
    let fd = os::open_read(c"/proc/self/maps").map_err(|_| fmt::Error)?;
    let mut buf = [0u8; 4096];
    let mut line = [0u8; LINE_MAX];
    let mut line_len = 0usize;
    let mut classifier = Classifier::new();
    let mut result = Ok(());
    'read: loop {
        let n = match os::read(fd, &mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(_) => {
                result = Err(fmt::Error);
                break;
            }
        };
        for &c in &buf[..n] {
            if c != b'\n' {
                if line_len < LINE_MAX {
                    line[line_len] = c;
                    line_len += 1;
                }
                continue;
            }
            if let Some((start, end, perms, name)) = parse_line(&line[..line_len]) {
                let segment = classifier.classify(perms, name);
                if let Err(e) = f(&Mapping { start, end, perms, name, segment }) {
                    result = Err(e);
                    break 'read;
                }
            }
            line_len = 0;
        }
    }
    os::close(fd);
    result
}

/// Rows the diagram keeps (consecutive lines of one segment and file make
/// one row).
pub const MAX_ROWS: usize = 128;
/// Bytes of a row's name kept (the file's last path component).
const NAME_MAX: usize = 40;

#[derive(Clone, Copy)]
struct Row {
    start: usize,
    end: usize,
    segment: Segment,
    name: [u8; NAME_MAX],
    name_len: usize,
    /// Whether the name was longer than [`NAME_MAX`] and cut.
    name_cut: bool,
    /// Hash of the whole name, to tell files with one base name apart.
    name_hash: u64,
}

impl Row {
    /// A row of one mapping, named by the last component of its path.
    fn of(m: &Mapping<'_>) -> Row {
        let base = match m.name.iter().rposition(|&c| c == b'/') {
            Some(i) => &m.name[i + 1..],
            None => m.name,
        };
        let n = base.len().min(NAME_MAX);
        let mut row = Row {
            start: m.start,
            end: m.end,
            segment: m.segment,
            name: [0; NAME_MAX],
            name_len: n,
            name_cut: n < base.len(),
            name_hash: hash(m.name),
        };
        row.name[..n].copy_from_slice(&base[..n]);
        row
    }

    /// Whether mapping `m` continues this row (same segment and file, no gap).
    fn continued_by(&self, m: &Mapping<'_>) -> bool {
        self.segment == m.segment && self.name_hash == hash(m.name) && self.end == m.start
    }

    /// The file's name, or empty when it is the segment's own (`[stack]`).
    fn label(&self) -> &[u8] {
        let name = &self.name[..self.name_len];
        if name == self.segment.name().as_bytes() {
            &[]
        } else {
            name
        }
    }
}

const EMPTY_ROW: Row =
    Row { start: 0, end: 0, segment: Segment::Mmap, name: [0; NAME_MAX], name_len: 0, name_cut: false, name_hash: 0 };

fn hash(name: &[u8]) -> u64 {
    name.iter().fold(0xcbf2_9ce4_8422_2325u64, |h, &c| (h ^ c as u64).wrapping_mul(0x100_0000_01b3))
}

/// `1536 KiB`, `12 MiB`, `3 GiB`: the size in the biggest unit it fills.
struct Size(usize);

impl fmt::Display for Size {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        const UNITS: [&str; 6] = ["KiB", "MiB", "GiB", "TiB", "PiB", "EiB"];
        let mut value = self.0 / 1024;
        let mut unit = 0;
        while value >= 10 * 1024 && unit + 1 < UNITS.len() {
            value >>= 10;
            unit += 1;
        }
        let mut text = crate::os::fmt::FixedBuf::<24>::new();
        write!(text, "{} {}", value, UNITS[unit])?;
        f.pad(text.as_str())
    }
}

/// Writes the diagram: one row per group of mappings, highest address at
/// the top, gaps between rows shown, and under each row buddyslab's
/// regions inside it (up to four one by one, then a count and total per
/// kind).
pub fn write_address_space(out: &mut dyn Write) -> fmt::Result {
    // The maps come lowest first; the diagram keeps the highest rows (the
    // stack, the libraries, buddyslab's mappings) and counts the mappings
    // of the rows it let go below them.
    let mut rows = [EMPTY_ROW; MAX_ROWS];
    let mut mappings = [0usize; MAX_ROWS];
    let mut nr_rows = 0;
    let mut dropped = 0usize;
    for_each_mapping(|m| {
        if nr_rows > 0 && rows[nr_rows - 1].continued_by(m) {
            rows[nr_rows - 1].end = m.end;
            mappings[nr_rows - 1] += 1;
            return Ok(());
        }
        if nr_rows == MAX_ROWS {
            dropped += mappings[0];
            rows.copy_within(1.., 0);
            mappings.copy_within(1.., 0);
            nr_rows -= 1;
        }
        rows[nr_rows] = Row::of(m);
        mappings[nr_rows] = 1;
        nr_rows += 1;
        Ok(())
    })?;
    writeln!(out, "address space - /proc/self/maps, highest address at the top; '>' marks buddyslab's regions")?;
    let mut below_top: Option<usize> = None;
    for row in rows[..nr_rows].iter().rev() {
        if let Some(upper) = below_top {
            if upper > row.end {
                writeln!(out, "{:>16} | {:^40} |", "", "")?;
                writeln!(out, "{:>16} | {:^40} | gap {}", "", "...", Size(upper - row.end))?;
            }
        }
        if below_top != Some(row.end) {
            writeln!(out, "{:>16x} +{:-<42}+", row.end, "")?;
        }
        below_top = Some(row.start);
        let name = core::str::from_utf8(row.label()).unwrap_or("?");
        writeln!(out, "{:>16} | {:<8} {:<31} | {}", "", row.segment.name(), name, Size(row.end - row.start))?;
        write_regions_inside(out, row.start, row.end)?;
        writeln!(out, "{:>16x} +{:-<42}+", row.start, "")?;
    }
    if dropped > 0 {
        writeln!(out, "({} below the lowest row not drawn)", Plural(dropped, "more mapping"))?;
    }
    Ok(())
}

const KINDS: [VmaKind; 5] = [VmaKind::Heap, VmaKind::Chunk, VmaKind::Large, VmaKind::LargeCached, VmaKind::Meta];

/// Writes buddyslab's regions inside `[start, end)`.
fn write_regions_inside(out: &mut dyn Write, start: usize, end: usize) -> fmt::Result {
    const SHOWN: usize = 4;
    let inside = |r: &Region| r.start < end && r.end > start;
    let mut count = [0usize; KINDS.len()];
    let mut bytes = [0usize; KINDS.len()];
    let mut total = 0;
    crate::views::snapshot::for_each_region(|r| {
        if inside(r) {
            count[r.kind as usize] += 1;
            bytes[r.kind as usize] += r.end.min(end) - r.start.max(start);
            total += 1;
        }
        Ok(())
    })?;
    if total == 0 {
        return Ok(());
    }
    if total <= SHOWN {
        // Highest first, as the diagram runs.
        let mut shown = [(0usize, 0usize, VmaKind::Meta); SHOWN];
        let mut n = 0;
        crate::views::snapshot::for_each_region(|r| {
            if inside(r) && n < SHOWN {
                shown[n] = (r.start, r.end, r.kind);
                n += 1;
            }
            Ok(())
        })?;
        for &(s, e, kind) in shown[..n].iter().rev() {
            let mut text = crate::os::fmt::FixedBuf::<64>::new();
            write!(text, "> {} {:x}-{:x}", kind.name(), s, e)?;
            writeln!(out, "{:>16} | {:<40} | {}", "", text.as_str(), Size(e - s))?;
        }
    } else {
        for (i, kind) in KINDS.iter().enumerate() {
            if count[i] > 0 {
                let mut text = crate::os::fmt::FixedBuf::<64>::new();
                write!(text, "> {} x{}", kind.name(), count[i])?;
                writeln!(out, "{:>16} | {:<40} | {}", "", text.as_str(), Size(bytes[i]))?;
            }
        }
    }
    Ok(())
}

/// Writes the mappings as a JSON array, highest address last (file
/// order): `start`, `end` (hex strings), `perms`, `segment`, `name`, and
/// `buddyslab_kb` (bytes of buddyslab regions inside, in KiB).
pub fn write_address_space_json(out: &mut dyn Write) -> fmt::Result {
    write!(out, "[")?;
    let mut first = true;
    for_each_mapping(|m| {
        let mut ours = 0usize;
        crate::views::snapshot::for_each_region(|r| {
            if r.start < m.end && r.end > m.start {
                ours += r.end.min(m.end) - r.start.max(m.start);
            }
            Ok(())
        })?;
        write!(
            out,
            "{}{{\"start\":\"{:#x}\",\"end\":\"{:#x}\",\"perms\":\"{}\",\"segment\":\"{}\",\"name\":\"",
            if first { "" } else { "," },
            m.start,
            m.end,
            core::str::from_utf8(&m.perms).unwrap_or("????"),
            m.segment.name()
        )?;
        first = false;
        write_json_str(out, m.name)?;
        write!(out, "\",\"buddyslab_kb\":{}}}", ours / 1024)
    })?;
    write!(out, "]")
}

/// Writes `bytes` escaped for a JSON string (non-ASCII and control bytes
/// as `\u00XX`, so any path gives valid JSON).
fn write_json_str(out: &mut dyn Write, bytes: &[u8]) -> fmt::Result {
    for &c in bytes {
        match c {
            b'"' => out.write_str("\\\"")?,
            b'\\' => out.write_str("\\\\")?,
            0x20..=0x7e => out.write_char(c as char)?,
            _ => write!(out, "\\u{:04x}", c)?,
        }
    }
    Ok(())
}

// ---- The drawn form ----

/// Lines of `/proc/self/maps` the SVG keeps (lowest first); the rest, at
/// the highest addresses, are counted in a note.
pub const SVG_MAX_LINES: usize = 1024;
/// Boxes (runs of lines of one segment and file) the SVG keeps.
const SVG_MAX_GROUPS: usize = 256;

/// The widest text of the address column (a band's range, permissions and
/// size: [`Size`] stays under five digits and a unit) and of a mark's
/// label (the longest kind, the most regions a band counts, a size), in
/// characters of [`CHAR_W`] units.
const ADDRESS_CHARS: usize = "0xffffffffffffffff-0xffffffffffffffff rwxp 10239 KiB".len();
const NOTE_CHARS: usize = "[buddyslab:large-cached] x65535 10239 KiB".len();
/// Where the box starts (right of the widest address text), its width,
/// and where the marks' labels start; the total width, which holds the
/// widest label.
const SVG_BOX_X: usize = 4 + ADDRESS_CHARS * CHAR_W + 12;
const SVG_BOX_W: usize = 300;
const SVG_NOTE_X: usize = SVG_BOX_X + SVG_BOX_W + 12;
const SVG_WIDTH: usize = SVG_NOTE_X + NOTE_CHARS * CHAR_W + 8;
/// Top margin (two title lines), height of a gap's break, of a legend line.
const SVG_TOP: usize = 44;
const SVG_GAP: usize = 24;
const SVG_LEGEND_LINE: usize = 16;
/// Width of the marks of buddyslab's regions, at the box's right edge.
const SVG_MARK_W: usize = 70;

/// One line of the maps file as the drawing keeps it.
#[derive(Clone, Copy)]
struct Band {
    start: usize,
    end: usize,
    perms: [u8; 4],
    group: u16,
    /// buddyslab's regions inside, per kind ([`KINDS`] order): count and KiB.
    count: [u16; KINDS.len()],
    kib: [u32; KINDS.len()],
    /// Top and height in the drawing.
    y: u32,
    h: u16,
}

const EMPTY_BAND: Band =
    Band { start: 0, end: 0, perms: [0; 4], group: 0, count: [0; KINDS.len()], kib: [0; KINDS.len()], y: 0, h: 0 };

impl Band {
    fn kinds_present(&self) -> usize {
        self.count.iter().filter(|&&n| n > 0).count()
    }

    /// A band's height: grows with log2 of its pages, and holds a label
    /// line per kind of buddyslab region inside.
    fn height(&self) -> usize {
        let pages = ((self.end - self.start) >> os::PAGE_SHIFT).max(1);
        (16 + 2 * (pages.ilog2() as usize).min(12)).max(12 * self.kinds_present() + 4)
    }

    /// The drawing's y of address `addr` inside the band (higher is up).
    fn y_of(&self, addr: usize) -> usize {
        let len = (self.end - self.start) as u128;
        let from_top = (self.end - addr.clamp(self.start, self.end)) as u128;
        self.y as usize + (from_top * self.h as u128 / len) as usize
    }
}

/// The fill of a segment's box.
fn segment_fill(segment: Segment) -> &'static str {
    match segment {
        Segment::Text => "#f2c879",
        Segment::Data => "#f6dc9c",
        Segment::Bss => "#faedc8",
        Segment::Heap => "#a6d8a0",
        Segment::Mmap => "#bcd5ee",
        Segment::Library => "#d9c8ec",
        Segment::Stack => "#f0aaa6",
        Segment::Vdso => "#d0d0d0",
    }
}

const SEGMENTS: [Segment; 8] = [
    Segment::Stack,
    Segment::Vdso,
    Segment::Library,
    Segment::Mmap,
    Segment::Heap,
    Segment::Bss,
    Segment::Data,
    Segment::Text,
];

/// Bytes as XML text: markup characters escaped, anything not printable
/// ASCII as `?` (so any path gives a well-formed document).
struct XmlText<'a>(&'a [u8]);

impl fmt::Display for XmlText<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for &c in self.0 {
            match c {
                b'&' => f.write_str("&amp;")?,
                b'<' => f.write_str("&lt;")?,
                b'>' => f.write_str("&gt;")?,
                b'"' => f.write_str("&quot;")?,
                0x20..=0x7e => f.write_char(c as char)?,
                _ => f.write_char('?')?,
            }
        }
        Ok(())
    }
}

/// Writes a box's label, `segment name (size)`, in at most `chars`
/// characters: a name too long is cut and ends with an ellipsis; with no
/// room for any of it, the name is left out.
fn write_box_label(out: &mut dyn Write, group: &Row, chars: usize) -> fmt::Result {
    let segment = group.segment.name();
    let size = Size(group.end - group.start);
    let name = group.label();
    // "segment " and " (size)" around the name.
    let around = segment.len() + 1 + TextWidth::of(format_args!(" ({size})")) / CHAR_W;
    if name.is_empty() || around + 2 > chars {
        return write!(out, "{segment} ({size})");
    }
    if around + name.len() <= chars && !group.name_cut {
        return write!(out, "{segment} {} ({size})", XmlText(name));
    }
    let kept = &name[..(chars - around - 1).min(name.len())];
    write!(out, "{segment} {}\u{2026} ({size})", XmlText(kept))
}

/// Writes the address space as an SVG document: one `<g class="map">`
/// band per line of `/proc/self/maps` (`data-start`, `data-end`,
/// `data-perms`; its range, permissions and size as text), highest address
/// first, inside one `<g class="segment">` box per run of lines of one
/// segment and file; `<g class="gap">` breaks labelled with the size of the
/// hole; buddyslab's regions as `<rect class="ours">` marks with `<text
/// class="ours">` labels (kind, count, size); a legend. The columns are
/// as wide as the widest text they can hold, a box's label is cut to fit
/// the box, and each box has a hover title with the file's name and
/// range. Nothing is allocated: the lines are kept in stack arrays.
pub fn write_address_space_svg(out: &mut dyn Write) -> fmt::Result {
    let mut bands = [EMPTY_BAND; SVG_MAX_LINES];
    let mut groups = [EMPTY_ROW; SVG_MAX_GROUPS];
    let (mut nr_bands, mut nr_groups, mut dropped) = (0usize, 0usize, 0usize);
    for_each_mapping(|m| {
        if nr_bands == SVG_MAX_LINES || dropped > 0 {
            dropped += 1;
            return Ok(());
        }
        if nr_groups > 0 && groups[nr_groups - 1].continued_by(m) {
            groups[nr_groups - 1].end = m.end;
        } else if nr_groups == SVG_MAX_GROUPS {
            dropped += 1;
            return Ok(());
        } else {
            groups[nr_groups] = Row::of(m);
            nr_groups += 1;
        }
        bands[nr_bands] = Band { start: m.start, end: m.end, perms: m.perms, group: (nr_groups - 1) as u16, ..EMPTY_BAND };
        nr_bands += 1;
        Ok(())
    })?;
    let bands = &mut bands[..nr_bands];
    let groups = &groups[..nr_groups];

    // buddyslab's regions, per band and kind.
    crate::views::snapshot::for_each_region(|r| {
        let first = bands.partition_point(|b| b.end <= r.start);
        for b in bands[first..].iter_mut().take_while(|b| b.start < r.end) {
            let k = r.kind as usize;
            b.count[k] = b.count[k].saturating_add(1);
            let bytes = r.end.min(b.end) - r.start.max(b.start);
            b.kib[k] = b.kib[k].saturating_add((bytes / 1024) as u32);
        }
        Ok(())
    })?;

    // Layout, top down.
    let mut y = SVG_TOP;
    for i in (0..bands.len()).rev() {
        if i + 1 < bands.len() && bands[i + 1].start > bands[i].end {
            y += SVG_GAP;
        }
        bands[i].y = y as u32;
        bands[i].h = bands[i].height() as u16;
        y += bands[i].h as usize;
    }
    let legend_top = y + 16 + if dropped > 0 { SVG_LEGEND_LINE } else { 0 };
    let height = legend_top + 2 * SVG_LEGEND_LINE + 8;

    writeln!(
        out,
        "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{SVG_WIDTH}\" height=\"{height}\" viewBox=\"0 0 {SVG_WIDTH} {height}\" font-family=\"monospace\" font-size=\"11\">"
    )?;
    writeln!(out, "<style>.sep{{stroke:#555;stroke-width:0.5}} .box{{stroke:#333;stroke-width:1}} .ours{{fill:#d62828;fill-opacity:0.55;stroke:#8b0000}} text.ours{{fill:#8b0000;stroke:none;fill-opacity:1}} .cut{{fill:none;stroke:#666}}</style>")?;
    writeln!(out, "<rect width=\"{SVG_WIDTH}\" height=\"{height}\" fill=\"white\"/>")?;
    writeln!(out, "<text x=\"4\" y=\"16\" font-size=\"13\">process address space (/proc/self/maps), highest address at the top</text>")?;
    writeln!(
        out,
        "<text x=\"4\" y=\"32\">one band per mapping, height growing with log2 of its size; gaps cut short and labelled; red: buddyslab's regions</text>"
    )?;

    for i in (0..bands.len()).rev() {
        let b = bands[i];
        let top = b.y as usize;
        // A gap above this band.
        if i + 1 < bands.len() && bands[i + 1].start > b.end {
            let gap_top = top - SVG_GAP;
            write!(out, "<g class=\"gap\" data-bytes=\"{}\">", bands[i + 1].start - b.end)?;
            for edge in [gap_top + 5, top - 5] {
                write!(out, "<polyline class=\"cut\" points=\"")?;
                for step in 0..=SVG_BOX_W / 10 {
                    write!(out, "{},{} ", SVG_BOX_X + step * 10, edge + if step % 2 == 1 { 3 } else { 0 })?;
                }
                write!(out, "\"/>")?;
            }
            writeln!(
                out,
                "<text x=\"{}\" y=\"{}\" text-anchor=\"middle\">gap {}</text></g>",
                SVG_BOX_X + SVG_BOX_W / 2,
                gap_top + SVG_GAP / 2 + 5,
                Size(bands[i + 1].start - b.end)
            )?;
        }
        // The box of this band's group, opened at its highest band.
        let group = &groups[b.group as usize];
        if b.end == group.end {
            let members = || bands[..=i].iter().rev().take_while(|x| x.group == b.group);
            let bottom = members().last().map_or(top, |x| x.y as usize + x.h as usize);
            // The label is centred in the room the marks leave, and a name
            // too long for it is cut with an ellipsis (whole in the title).
            let room = if members().any(|x| x.kinds_present() > 0) { SVG_BOX_W - SVG_MARK_W } else { SVG_BOX_W };
            write!(
                out,
                "<g class=\"segment\" data-segment=\"{}\"><title>{}{}{}{}: {:#x}-{:#x}, {}</title><rect class=\"box\" x=\"{SVG_BOX_X}\" y=\"{top}\" width=\"{SVG_BOX_W}\" height=\"{}\" fill=\"{}\"/><text x=\"{}\" y=\"{}\" text-anchor=\"middle\">",
                group.segment.name(),
                group.segment.name(),
                if group.label().is_empty() { "" } else { " " },
                XmlText(group.label()),
                if group.name_cut { "\u{2026}" } else { "" },
                group.start,
                group.end,
                Size(group.end - group.start),
                bottom - top,
                segment_fill(group.segment),
                SVG_BOX_X + room / 2,
                (top + bottom) / 2 + 4,
            )?;
            write_box_label(out, group, (room - 8) / CHAR_W)?;
            writeln!(out, "</text></g>")?;
        }
        write!(
            out,
            "<g class=\"map\" data-start=\"{:#x}\" data-end=\"{:#x}\" data-perms=\"{}\">",
            b.start,
            b.end,
            XmlText(&b.perms)
        )?;
        if b.end != group.end {
            write!(out, "<line class=\"sep\" x1=\"{SVG_BOX_X}\" y1=\"{top}\" x2=\"{}\" y2=\"{top}\"/>", SVG_BOX_X + SVG_BOX_W)?;
        }
        write!(
            out,
            "<text x=\"4\" y=\"{}\">{:#x}-{:#x} {} {}</text>",
            top + b.h as usize / 2 + 4,
            b.start,
            b.end,
            XmlText(&b.perms),
            Size(b.end - b.start)
        )?;
        let mut label_y = top + 12;
        for (k, kind) in KINDS.iter().enumerate() {
            if b.count[k] > 0 {
                write!(
                    out,
                    "<text class=\"ours\" x=\"{SVG_NOTE_X}\" y=\"{label_y}\">{} x{} {}</text>",
                    kind.name(),
                    b.count[k],
                    Size(b.kib[k] as usize * 1024)
                )?;
                label_y += 12;
            }
        }
        writeln!(out, "</g>")?;
    }

    // The marks, on top of the boxes: neighbouring regions of one kind
    // in one band are one rectangle.
    let mut pending: Option<(usize, VmaKind, usize, usize)> = None;
    let mark = |out: &mut dyn Write, (i, kind, lo, hi): (usize, VmaKind, usize, usize)| -> fmt::Result {
        let b: &Band = &bands[i];
        let (top, bottom) = (b.y_of(hi), b.y_of(lo));
        writeln!(
            out,
            "<rect class=\"ours\" data-kind=\"{}\" x=\"{}\" y=\"{top}\" width=\"{SVG_MARK_W}\" height=\"{}\"/>",
            kind.name(),
            SVG_BOX_X + SVG_BOX_W - SVG_MARK_W,
            (bottom - top).max(2)
        )
    };
    crate::views::snapshot::for_each_region(|r| {
        let first = bands.partition_point(|b| b.end <= r.start);
        for (i, b) in bands.iter().enumerate().skip(first).take_while(|(_, b)| b.start < r.end) {
            let (lo, hi) = (r.start.max(b.start), r.end.min(b.end));
            match pending {
                Some((pi, pk, plo, phi)) if pi == i && pk == r.kind && phi == lo => pending = Some((pi, pk, plo, hi)),
                _ => {
                    if let Some(p) = pending {
                        mark(out, p)?;
                    }
                    pending = Some((i, r.kind, lo, hi));
                }
            }
        }
        Ok(())
    })?;
    if let Some(p) = pending {
        mark(out, p)?;
    }

    if dropped > 0 {
        writeln!(out, "<text x=\"4\" y=\"{}\">{} above the top band not drawn</text>", legend_top - SVG_LEGEND_LINE, Plural(dropped, "more mapping"))?;
    }
    for (i, segment) in SEGMENTS.iter().enumerate() {
        let x = 4 + i * 100;
        writeln!(
            out,
            "<g class=\"legend\"><rect x=\"{x}\" y=\"{legend_top}\" width=\"12\" height=\"12\" fill=\"{}\" class=\"box\"/><text x=\"{}\" y=\"{}\">{}</text></g>",
            segment_fill(*segment),
            x + 16,
            legend_top + 10,
            segment.name()
        )?;
    }
    let y = legend_top + SVG_LEGEND_LINE;
    writeln!(
        out,
        "<g class=\"legend\"><rect class=\"ours\" x=\"4\" y=\"{y}\" width=\"12\" height=\"12\"/><text x=\"20\" y=\"{}\">buddyslab's regions (its VMA tree): kind x count, size</text></g>",
        y + 10
    )?;
    writeln!(out, "</svg>")
}

/// `BUDDYSLAB_ADDRSPACE_SVG`: where the drawing goes at exit.
pub static SVG_FILE: crate::views::snapshot::ExitFile = crate::views::snapshot::ExitFile::new("address-space drawing", &crate::options::ADDRSPACE_SVG_PATH);

/// Records the path `BUDDYSLAB_ADDRSPACE_SVG` names (see
/// [`crate::views::snapshot::ExitFile::set`]).
pub fn set_svg_path(value: &'static [u8]) {
    SVG_FILE.set(value)
}

/// Whether the drawing is to be written at exit.
pub fn svg_requested() -> bool {
    SVG_FILE.requested()
}

/// Writes the drawing to the file `BUDDYSLAB_ADDRSPACE_SVG` names, if any.
/// Called by the exit hook; reports a file that cannot be opened on stderr.
pub fn write_svg_requested() {
    SVG_FILE.write(|w| write_address_space_svg(w))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// Our reader sees the same lines as std, in the same order. The maps
    /// can change between the two reads (another test thread maps
    /// memory), so a mismatch is retried a few times before failing.
    #[test]
    fn mappings_match_proc_self_maps_read_with_std() {
        let mut last_error = String::new();
        for _ in 0..5 {
            let mut ours: Vec<(usize, usize, String, String)> = Vec::with_capacity(8192);
            let mut std_text = String::with_capacity(4 << 20);
            for_each_mapping(|m| {
                if ours.len() < ours.capacity() {
                    ours.push((m.start, m.end, String::new(), String::new()));
                    let last = ours.last_mut().unwrap();
                    last.2.push_str(core::str::from_utf8(&m.perms).unwrap());
                    last.3.push_str(core::str::from_utf8(m.name).unwrap());
                }
                Ok(())
            })
            .unwrap();
            use std::io::Read;
            std::fs::File::open("/proc/self/maps").unwrap().read_to_string(&mut std_text).unwrap();
            let theirs: Vec<(usize, usize, String, String)> = std_text
                .lines()
                .map(|l| {
                    let f: Vec<&str> = l.split_whitespace().collect();
                    let (s, e) = f[0].split_once('-').unwrap();
                    let name = if f.len() > 5 { l[l.find(f[5]).unwrap()..].to_string() } else { String::new() };
                    (usize::from_str_radix(s, 16).unwrap(), usize::from_str_radix(e, 16).unwrap(), f[1].to_string(), name)
                })
                .collect();
            if ours == theirs {
                return;
            }
            last_error = format!("ours:\n{ours:x?}\nstd:\n{theirs:x?}");
        }
        panic!("{last_error}");
    }

    #[test]
    fn classification_of_a_typical_layout() {
        let mut c = Classifier::new();
        let lines: [(&[u8; 4], &[u8], Segment); 12] = [
            (b"r--p", b"/usr/bin/prog", Segment::Text),
            (b"r-xp", b"/usr/bin/prog", Segment::Text),
            (b"rw-p", b"/usr/bin/prog", Segment::Data),
            (b"rw-p", b"", Segment::Bss),
            (b"rw-p", b"[heap]", Segment::Heap),
            (b"rw-p", b"", Segment::Mmap),
            (b"r-xp", b"/usr/lib/x86_64-linux-gnu/libc.so.6", Segment::Library),
            (b"rw-p", b"/usr/lib/x86_64-linux-gnu/libc.so.6", Segment::Library),
            (b"rw-p", b"", Segment::Mmap),
            (b"rw-p", b"[stack]", Segment::Stack),
            (b"r--p", b"[vvar]", Segment::Vdso),
            (b"r-xp", b"[vdso]", Segment::Vdso),
        ];
        for (perms, name, want) in lines {
            assert_eq!(c.classify(*perms, name), want, "{}", String::from_utf8_lossy(name));
        }
        assert_eq!(parse_line(b"7f00-7f10 rw-p 00000000 00:00 0 "), Some((0x7f00, 0x7f10, *b"rw-p", &b""[..])));
        assert_eq!(
            parse_line(b"55-56 r-xp 00001000 08:01 123     /usr/bin/a b"),
            Some((0x55, 0x56, *b"r-xp", &b"/usr/bin/a b"[..]))
        );
    }

    /// With more mappings than rows, the diagram keeps the highest rows
    /// (the stack among them) and counts the mappings below them: it
    /// used to keep the lowest and lose the stack.
    #[test]
    fn too_many_mappings_keep_the_highest_rows() {
        // 3 * MAX_ROWS mappings of one page, a page apart.
        let n = 3 * MAX_ROWS;
        let base = crate::os::mmap_anonymous(2 * n * crate::os::PAGE_SIZE, false).expect("mmap");
        for i in 0..n {
            // SAFETY: a page of the mapping above, nobody's.
            unsafe { libc::munmap((base + (2 * i + 1) * crate::os::PAGE_SIZE) as *mut libc::c_void, crate::os::PAGE_SIZE) };
        }
        let mut text = String::new();
        write_address_space(&mut text).unwrap();
        for i in 0..n {
            // SAFETY: the pages left above.
            unsafe { libc::munmap((base + 2 * i * crate::os::PAGE_SIZE) as *mut libc::c_void, crate::os::PAGE_SIZE) };
        }
        assert!(text.contains("[stack]"), "{text}");
        assert!(text.contains("below the lowest row not drawn"), "{text}");
    }

    /// The diagram runs from the highest address down, and marks the
    /// chunk holding a live block with its kind.
    #[test]
    fn diagram_runs_downwards_and_marks_our_regions() {
        let p = crate::heap::malloc(100);
        let mut text = String::new();
        write_address_space(&mut text).unwrap();
        let tops: Vec<usize> = text
            .lines()
            .filter(|l| l.trim_end().ends_with('+') && !l.trim_start().starts_with('+'))
            .skip(1)
            .map(|l| usize::from_str_radix(l.split_whitespace().next().unwrap(), 16).unwrap())
            .collect();
        assert!(tops.len() >= 4, "{text}");
        assert!(tops.windows(2).all(|w| w[0] >= w[1]), "not descending:\n{text}");
        assert!(text.contains("[stack]"), "{text}");
        assert!(text.contains("> [buddyslab:"), "{text}");
        let mut json = String::new();
        write_address_space_json(&mut json).unwrap();
        let v: serde_json::Value = serde_json::from_str(&json).unwrap();
        let rows = v.as_array().unwrap();
        assert!(rows.iter().any(|r| r["segment"] == "[stack]"));
        assert!(rows.iter().any(|r| r["buddyslab_kb"].as_u64().unwrap() > 0));
        // SAFETY: allocated above.
        unsafe { crate::heap::free(p) };
    }

    /// Panics unless `svg` is well-formed XML, by [`check_xml`] and, where
    /// python3 is installed, by its parser (a second opinion). The views'
    /// pictures share it.
    pub(crate) fn assert_well_formed(svg: &str) {
        check_xml(svg).unwrap_or_else(|e| panic!("{e}\n{svg}"));
        if let Ok(mut child) = std::process::Command::new("python3")
            .args(["-c", "import sys, xml.dom.minidom as m; m.parseString(sys.stdin.buffer.read())"])
            .stdin(std::process::Stdio::piped())
            .spawn()
        {
            use std::io::Write as _;
            child.stdin.take().unwrap().write_all(svg.as_bytes()).unwrap();
            assert!(child.wait().unwrap().success(), "python3's XML parser rejects the SVG");
        }
    }

    /// A `<text>` of a picture: where it is anchored and what a reader sees.
    pub(crate) struct SvgText {
        pub(crate) x: usize,
        /// `text-anchor="middle"`: `x` is its centre.
        pub(crate) centred: bool,
        /// Entities replaced.
        pub(crate) text: String,
    }

    impl SvgText {
        /// Where it starts and ends, at [`CHAR_W`] units per character.
        pub(crate) fn span(&self) -> (usize, usize) {
            let w = self.text.chars().count() * CHAR_W;
            let left = if self.centred { self.x - w / 2 } else { self.x };
            (left, left + w)
        }
    }

    /// Every `<text>` of `svg`, in document order.
    pub(crate) fn svg_texts(svg: &str) -> Vec<SvgText> {
        let mut out = Vec::new();
        let mut rest = svg;
        while let Some(open) = rest.find("<text ") {
            let tag_end = open + rest[open..].find('>').unwrap();
            let tag = &rest[open..tag_end];
            let x = tag.split(" x=\"").nth(1).unwrap().split('"').next().unwrap();
            let close = tag_end + rest[tag_end..].find("</text>").unwrap();
            let text = rest[tag_end + 1..close]
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&");
            let centred = tag.contains("text-anchor=\"middle\"");
            out.push(SvgText { x: x.parse::<f64>().unwrap() as usize, centred, text });
            rest = &rest[close..];
        }
        out
    }

    /// A minimal XML well-formedness check: tags nest and close, attribute
    /// values are quoted, `&` only starts an entity, one root element.
    fn check_xml(doc: &str) -> Result<(), String> {
        let mut stack: Vec<&str> = Vec::new();
        let mut roots = 0;
        let mut rest = doc;
        let check_text = |t: &str| -> Result<(), String> {
            for (i, _) in t.match_indices('&') {
                let entity = &t[i..t[i..].find(';').map_or(t.len(), |e| i + e + 1)];
                if !["&amp;", "&lt;", "&gt;", "&quot;", "&apos;"].contains(&entity) {
                    return Err(format!("bad entity {entity:?}"));
                }
            }
            Ok(())
        };
        while let Some(open) = rest.find('<') {
            check_text(&rest[..open])?;
            if !rest[..open].trim().is_empty() && stack.is_empty() {
                return Err("text outside the root".into());
            }
            let close = rest[open..].find('>').ok_or("unclosed tag")? + open;
            let tag = &rest[open + 1..close];
            rest = &rest[close + 1..];
            if let Some(name) = tag.strip_prefix('/') {
                if stack.pop() != Some(name.trim()) {
                    return Err(format!("</{name}> closes nothing open"));
                }
                continue;
            }
            let empty = tag.ends_with('/');
            let body = tag.trim_end_matches('/');
            let name_end = body.find(char::is_whitespace).unwrap_or(body.len());
            let (name, mut attrs) = (&body[..name_end], body[name_end..].trim());
            if name.is_empty() || !name.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == ':') {
                return Err(format!("bad tag name in <{tag}>"));
            }
            while !attrs.is_empty() {
                let (key, value) = attrs.split_once("=\"").ok_or(format!("unquoted attribute in <{tag}>"))?;
                if key.trim().is_empty() || key.contains(char::is_whitespace) {
                    return Err(format!("bad attribute name {key:?}"));
                }
                let end = value.find('"').ok_or("unterminated attribute")?;
                if value[..end].contains('<') {
                    return Err(format!("'<' in an attribute of <{tag}>"));
                }
                check_text(&value[..end])?;
                attrs = value[end + 1..].trim_start();
            }
            if stack.is_empty() {
                roots += 1;
            }
            if !empty {
                stack.push(name);
            }
        }
        if !stack.is_empty() || roots != 1 || !rest.trim().is_empty() {
            return Err(format!("{} open at the end, {roots} roots", stack.len()));
        }
        Ok(())
    }

    #[test]
    fn the_xml_check_can_fail() {
        assert!(check_xml("<a><b x=\"1\"/>t &amp; u</a>").is_ok());
        for bad in ["<a><b></a></b>", "<a x=1></a>", "<a>&</a>", "<a></a><b/>", "<a>", "<a x=\"<\"/>"] {
            assert!(check_xml(bad).is_err(), "{bad}");
        }
        assert_eq!(XmlText(b"a<b>&\"c\xff").to_string(), "a&lt;b&gt;&amp;&quot;c?");
    }

    /// A box's label is cut to its room with an ellipsis, never past it,
    /// and stays XML text.
    #[test]
    fn long_names_are_cut_to_fit_the_box() {
        let row = |name: &[u8], segment| {
            let mut r = Row { start: 0x1000, end: 0x1000 + 212 * 1024, segment, ..EMPTY_ROW };
            r.name_len = name.len().min(NAME_MAX);
            r.name[..r.name_len].copy_from_slice(&name[..r.name_len]);
            r
        };
        let label = |r: &Row, chars| {
            let mut text = String::new();
            write_box_label(&mut text, r, chars).unwrap();
            text
        };
        let long = row(b"libLLVM-15-and-a-long-tail.so.1", Segment::Library);
        assert_eq!(label(&long, 60), "library libLLVM-15-and-a-long-tail.so.1 (212 KiB)");
        let cut = label(&long, 30);
        assert_eq!(cut, "library libLLVM-15-\u{2026} (212 KiB)");
        assert_eq!(cut.chars().count(), 30);
        assert_eq!(label(&long, 18), "library (212 KiB)");
        assert_eq!(label(&row(b"[stack]", Segment::Stack), 30), "[stack] (212 KiB)");
        // A name already cut at NAME_MAX says so even where it would fit.
        let mut kept = row(b"libshort.so", Segment::Library);
        kept.name_cut = true;
        assert_eq!(label(&kept, 60), "library libshort.so\u{2026} (212 KiB)");
        let odd = label(&row(b"a<b>&c-and-a-long-tail.so", Segment::Library), 25);
        assert!(odd.starts_with("library a&lt;b&gt;&amp;c") && odd.ends_with("\u{2026} (212 KiB)"), "{odd}");
        assert_eq!(TextWidth::of(format_args!("{odd}")), 25 * CHAR_W);
    }

    /// Every text stays in its column: the addresses left of the boxes, a
    /// box's label inside its box, the marks' labels and the rest inside
    /// the picture; the columns hold their widest possible text.
    #[test]
    fn svg_text_stays_in_its_column() {
        for kind in KINDS {
            assert!(TextWidth::of(format_args!("{} x{} {}", kind.name(), u16::MAX, Size(10239 << 10))) <= NOTE_CHARS * CHAR_W);
        }
        let widest = TextWidth::of(format_args!("{:#x}-{:#x} rwxp {}", usize::MAX, usize::MAX, Size(10239 << 10)));
        assert!(widest <= ADDRESS_CHARS * CHAR_W);
        assert!(Size(usize::MAX).to_string().len() <= "10239 KiB".len());

        let p = crate::heap::malloc(300_000);
        assert!(!p.is_null());
        let mut svg = String::with_capacity(4 << 20);
        write_address_space_svg(&mut svg).unwrap();
        // SAFETY: allocated above, freed once.
        unsafe { crate::heap::free(p) };
        assert_well_formed(&svg);
        assert!(svg.starts_with(&format!("<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{SVG_WIDTH}\"")));
        let mut notes = 0;
        for line in svg.lines() {
            for t in svg_texts(line) {
                let (left, right) = t.span();
                assert!(right <= SVG_WIDTH, "{:?} ends at {right}, past {SVG_WIDTH}", t.text);
                if line.starts_with("<g class=\"segment\"") {
                    assert!(t.centred && left >= SVG_BOX_X && right <= SVG_BOX_X + SVG_BOX_W, "{:?} leaves its box", t.text);
                } else if line.starts_with("<g class=\"map\"") && t.x < SVG_BOX_X {
                    assert!(right + 8 <= SVG_BOX_X, "{:?} runs into the boxes", t.text);
                } else if t.x >= SVG_NOTE_X {
                    notes += 1;
                }
            }
            if line.starts_with("<g class=\"segment\"") {
                assert!(line.contains("<title>"), "{line}");
            }
        }
        assert!(notes > 0, "{svg}");
    }

    /// Every line of /proc/self/maps is a band, highest first, with its
    /// start address as text; buddyslab's regions are marked inside the
    /// bands that hold them; the document is well-formed XML.
    #[test]
    fn svg_draws_every_mapping_and_marks_our_regions() {
        let p = crate::heap::malloc(100);
        let q = crate::heap::malloc(300_000);
        assert!(!p.is_null() && !q.is_null());
        let mut ours = Vec::with_capacity(256);
        crate::views::snapshot::for_each_region(|r| {
            // Only the regions holding our two blocks: other tests' may come and go.
            if [p as usize, q as usize].iter().any(|&a| r.start <= a && a < r.end) {
                ours.push(*r);
            }
            Ok(())
        })
        .unwrap();
        assert_eq!(ours.len(), 2);
        assert!(ours.iter().any(|r| r.kind == VmaKind::Large));
        // Other test threads map and unmap memory: an attempt counts when
        // the maps read with std before and after the drawing agree; the
        // drawing must match them in one of 100 attempts.
        let read_std = || {
            use std::io::Read;
            let mut text = String::with_capacity(4 << 20);
            std::fs::File::open("/proc/self/maps").unwrap().read_to_string(&mut text).unwrap();
            text
        };
        let mut svg = String::with_capacity(4 << 20);
        let mut passed = false;
        let mut last_error = String::from("/proc/self/maps never held still for one drawing");
        for _ in 0..100 {
            svg.clear();
            let before = read_std();
            write_address_space_svg(&mut svg).unwrap();
            let after = read_std();
            if before != after {
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
            let theirs: Vec<usize> =
                after.lines().rev().map(|l| usize::from_str_radix(l.split('-').next().unwrap(), 16).unwrap()).collect();
            let bands: Vec<&str> = svg.lines().filter(|l| l.starts_with("<g class=\"map\"")).collect();
            let starts: Vec<usize> = bands
                .iter()
                .map(|l| {
                    let v = l.split("data-start=\"0x").nth(1).unwrap().split('"').next().unwrap();
                    usize::from_str_radix(v, 16).unwrap()
                })
                .collect();
            if starts != theirs {
                // A mapping can also come and go between the two reads
                // (a block freed and mapped again at the same address).
                last_error = format!("bands {starts:x?}\nagainst /proc/self/maps, highest first: {theirs:x?}");
                std::thread::sleep(std::time::Duration::from_millis(10));
                continue;
            }
            for (band, start) in bands.iter().zip(&starts) {
                assert!(band.contains(&format!("\">{start:#x}-")), "start not shown as text: {band}");
            }
            passed = true;
            break;
        }
        assert!(passed, "{last_error}");
        // Every region of ours is named in the band holding its start.
        for r in &ours {
            let band = svg
                .lines()
                .filter(|l| l.starts_with("<g class=\"map\""))
                .find(|l| {
                    let field = |key: &str| {
                        usize::from_str_radix(l.split(key).nth(1).unwrap().split('"').next().unwrap(), 16).unwrap()
                    };
                    field("data-start=\"0x") <= r.start && r.start < field("data-end=\"0x")
                })
                .unwrap_or_else(|| panic!("no band holds {:#x}", r.start));
            assert!(band.contains(&format!("<text class=\"ours\" x=\"{SVG_NOTE_X}\"")), "{band}");
            assert!(band.contains(&format!(">{} x", r.kind.name())), "{} not named in {band}", r.kind.name());
        }
        assert!(svg.contains("<rect class=\"ours\" data-kind=\"[buddyslab:large]\""), "{svg}");
        assert!(svg.contains("<g class=\"segment\" data-segment=\"[stack]\""));
        assert!(svg.contains("<g class=\"gap\" data-bytes=\""));
        assert_well_formed(&svg);
        // SAFETY: allocated above, freed once each.
        unsafe {
            crate::heap::free(p);
            crate::heap::free(q);
        }
    }
}
