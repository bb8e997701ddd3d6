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
//! to [`MAX_ROWS`] rows; the rest are counted.

use crate::os;
use crate::vma::{Region, VmaKind};
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
    /// Hash of the whole name, to tell files with one base name apart.
    name_hash: u64,
}

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
        let mut text = crate::stats::FixedBuf::<24>::new();
        write!(text, "{} {}", value, UNITS[unit])?;
        f.pad(text.as_str())
    }
}

/// Writes the diagram: one row per group of mappings, highest address at
/// the top, gaps between rows shown, and under each row buddyslab's
/// regions inside it (up to four one by one, then a count and total per
/// kind).
pub fn write_address_space(out: &mut dyn Write) -> fmt::Result {
    let empty = Row { start: 0, end: 0, segment: Segment::Mmap, name: [0; NAME_MAX], name_len: 0, name_hash: 0 };
    let mut rows = [empty; MAX_ROWS];
    let mut nr_rows = 0;
    let mut dropped = 0usize;
    for_each_mapping(|m| {
        let h = hash(m.name);
        if nr_rows > 0 {
            let last = &mut rows[nr_rows - 1];
            if last.segment == m.segment && last.name_hash == h && last.end == m.start {
                last.end = m.end;
                return Ok(());
            }
        }
        if nr_rows == MAX_ROWS {
            dropped += 1;
            return Ok(());
        }
        let base = match m.name.iter().rposition(|&c| c == b'/') {
            Some(i) => &m.name[i + 1..],
            None => m.name,
        };
        let n = base.len().min(NAME_MAX);
        let row = &mut rows[nr_rows];
        *row = Row { start: m.start, end: m.end, segment: m.segment, name: [0; NAME_MAX], name_len: n, name_hash: h };
        row.name[..n].copy_from_slice(&base[..n]);
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
        let mut name = core::str::from_utf8(&row.name[..row.name_len]).unwrap_or("?");
        if name == row.segment.name() {
            name = "";
        }
        writeln!(out, "{:>16} | {:<8} {:<31} | {}", "", row.segment.name(), name, Size(row.end - row.start))?;
        write_regions_inside(out, row.start, row.end)?;
        writeln!(out, "{:>16x} +{:-<42}+", row.start, "")?;
    }
    if dropped > 0 {
        writeln!(out, "({} more mappings below the lowest row not drawn)", dropped)?;
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
    crate::stats::for_each_region(|r| {
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
        crate::stats::for_each_region(|r| {
            if inside(r) && n < SHOWN {
                shown[n] = (r.start, r.end, r.kind);
                n += 1;
            }
            Ok(())
        })?;
        for &(s, e, kind) in shown[..n].iter().rev() {
            let mut text = crate::stats::FixedBuf::<64>::new();
            write!(text, "> {} {:x}-{:x}", kind.name(), s, e)?;
            writeln!(out, "{:>16} | {:<40} | {}", "", text.as_str(), Size(e - s))?;
        }
    } else {
        for (i, kind) in KINDS.iter().enumerate() {
            if count[i] > 0 {
                let mut text = crate::stats::FixedBuf::<64>::new();
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
        crate::stats::for_each_region(|r| {
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

#[cfg(test)]
mod tests {
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
}
