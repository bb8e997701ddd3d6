//! `buddyslab prof FILE`: reads a heap profile the library wrote
//! (`BUDDYSLAB_PROF`, the gperftools heap-profile text format), names its
//! frames with binutils' `addr2line` through the profile's
//! `MAPPED_LIBRARIES` section, and prints the call sites that hold the
//! most live bytes, largest first; `--svg FILE` draws the live heap as a
//! flame graph.
//!
//! A call site is the first frame of a stack outside the allocator (the
//! library's own frames, `malloc` and its siblings, Rust's `alloc::`
//! wrappers). Estimated bytes scale each stack's samples as gperftools
//! and pprof do for `heap_v2`: by `1 / (1 - exp(-average size / rate))`.

use crate::args::ProfArgs;
use crate::run::thousands;
use crate::Failure;
use std::collections::HashMap;
use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;

/// One stack line of a profile.
#[derive(Debug, Clone, PartialEq)]
pub struct StackLine {
    pub live_count: u64,
    pub live_bytes: u64,
    pub total_count: u64,
    pub total_bytes: u64,
    /// Return addresses, innermost first.
    pub frames: Vec<u64>,
}

/// A line of `/proc/self/maps`.
#[derive(Debug, Clone, PartialEq)]
pub struct Mapping {
    pub start: u64,
    pub end: u64,
    pub offset: u64,
    pub path: String,
}

/// A parsed profile.
#[derive(Debug, Clone, PartialEq)]
pub struct Profile {
    /// Mean bytes between samples (`heap_v2/RATE`); 0 when not sampled.
    pub rate: u64,
    pub stacks: Vec<StackLine>,
    pub maps: Vec<Mapping>,
}

impl StackLine {
    /// Live bytes the samples stand for (see the module doc).
    pub fn estimated_bytes(&self, rate: u64) -> f64 {
        if rate <= 1 || self.live_count == 0 {
            return self.live_bytes as f64;
        }
        let average = self.live_bytes as f64 / self.live_count as f64;
        self.live_bytes as f64 / (1.0 - (-average / rate as f64).exp())
    }
}

/// `N: B [N: B]` at the start of a line, and what follows it.
fn counts(text: &str) -> Option<([u64; 4], &str)> {
    let number = |s: &str| s.trim().parse::<u64>().ok();
    let (live, rest) = text.split_once('[')?;
    let (total, rest) = rest.split_once(']')?;
    let (lc, lb) = live.split_once(':')?;
    let (tc, tb) = total.split_once(':')?;
    Some(([number(lc)?, number(lb)?, number(tc)?, number(tb)?], rest))
}

/// Parses the text of a heap profile.
pub fn parse(text: &str) -> Result<Profile, String> {
    let mut lines = text.lines();
    let header = lines.next().unwrap_or("");
    let rest = header
        .strip_prefix("heap profile:")
        .ok_or("it does not start with `heap profile:`; not a heap profile")?;
    let (_, tail) = counts(rest).ok_or("its header has no `N: B [N: B]` counts")?;
    let kind = tail.trim().strip_prefix('@').map(str::trim).unwrap_or("");
    let rate = match kind.split_once('/') {
        Some((_, r)) => r.parse().map_err(|_| format!("bad sampling rate in `{kind}`"))?,
        None => 0,
    };
    let mut stacks = Vec::new();
    let mut maps = Vec::new();
    let mut in_maps = false;
    for (n, line) in lines.enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        if line.starts_with("MAPPED_LIBRARIES:") {
            in_maps = true;
            continue;
        }
        if in_maps {
            if let Some(m) = parse_mapping(line) {
                maps.push(m);
            }
            continue;
        }
        let bad = || format!("line {}: `{line}` is not `N: B [N: B] @ addresses`", n + 2);
        let (c, rest) = counts(line).ok_or_else(bad)?;
        let addrs = rest.trim().strip_prefix('@').ok_or_else(bad)?;
        let frames = addrs
            .split_whitespace()
            .map(|a| u64::from_str_radix(a.trim_start_matches("0x"), 16))
            .collect::<Result<Vec<_>, _>>()
            .map_err(|_| bad())?;
        stacks.push(StackLine { live_count: c[0], live_bytes: c[1], total_count: c[2], total_bytes: c[3], frames });
    }
    Ok(Profile { rate, stacks, maps })
}

fn parse_mapping(line: &str) -> Option<Mapping> {
    let mut f = line.split_whitespace();
    let (start, end) = f.next()?.split_once('-')?;
    let _perms = f.next()?;
    let offset = f.next()?;
    let _dev = f.next()?;
    let _inode = f.next()?;
    let path = f.collect::<Vec<_>>().join(" ");
    Some(Mapping {
        start: u64::from_str_radix(start, 16).ok()?,
        end: u64::from_str_radix(end, 16).ok()?,
        offset: u64::from_str_radix(offset, 16).ok()?,
        path,
    })
}

/// A named frame.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Frame {
    /// The function, demangled; `??` when unknown.
    pub function: String,
    /// `file:line`, or the object and offset when there is no line.
    pub place: String,
}

impl Frame {
    /// How the frame is shown: the function and where it is.
    pub fn label(&self) -> String {
        if self.function == "??" {
            self.place.clone()
        } else {
            format!("{} ({})", self.function, self.place)
        }
    }
}

/// The virtual address (as the ELF file numbers it) of file offset
/// `offset` in the object at `path`: through its PT_LOAD segments.
fn file_offset_to_vaddr(path: &Path, offset: u64) -> Option<u64> {
    let data = std::fs::read(path).ok()?;
    if data.len() < 64 || &data[..4] != b"\x7fELF" || data[4] != 2 || data[5] != 1 {
        return None;
    }
    let u16_at = |o: usize| u16::from_le_bytes(data[o..o + 2].try_into().unwrap()) as usize;
    let u64_at = |o: usize| u64::from_le_bytes(data[o..o + 8].try_into().unwrap());
    let phoff = u64_at(32) as usize;
    let (phentsize, phnum) = (u16_at(54), u16_at(56));
    for i in 0..phnum {
        let ph = phoff + i * phentsize;
        if ph + 56 > data.len() {
            break;
        }
        let p_type = u32::from_le_bytes(data[ph..ph + 4].try_into().unwrap());
        let (p_offset, p_vaddr, p_filesz) = (u64_at(ph + 8), u64_at(ph + 16), u64_at(ph + 32));
        if p_type == 1 && offset >= p_offset && offset < p_offset + p_filesz {
            return Some(p_vaddr + (offset - p_offset));
        }
    }
    None
}

/// Names every address of the profile: one `addr2line` run per object.
/// An address inside inlined code stands for several frames (the
/// innermost first), as `addr2line -i` lists them.
pub fn symbolise(profile: &Profile) -> HashMap<u64, Vec<Frame>> {
    let mut by_object: HashMap<&str, Vec<(u64, u64)>> = HashMap::new();
    let mut names = HashMap::new();
    for s in &profile.stacks {
        for &a in &s.frames {
            if names.contains_key(&a) {
                continue;
            }
            // A return address: the call is the byte before it.
            let pc = a.saturating_sub(1);
            let Some(m) = profile.maps.iter().find(|m| pc >= m.start && pc < m.end) else {
                names.insert(a, vec![Frame { function: "??".into(), place: format!("{a:#x}") }]);
                continue;
            };
            let offset = pc - m.start + m.offset;
            names.insert(a, vec![Frame { function: "??".into(), place: format!("{}+{offset:#x}", short(&m.path)) }]);
            if m.path.starts_with('/') {
                by_object.entry(&m.path).or_default().push((a, offset));
            }
        }
    }
    for (path, addrs) in by_object {
        let resolved: Vec<(u64, u64)> = addrs
            .iter()
            .filter_map(|&(a, off)| file_offset_to_vaddr(Path::new(path), off).map(|v| (a, v)))
            .collect();
        for chunk in resolved.chunks(500) {
            let out = Command::new("addr2line")
                .args(["-a", "-i", "-f", "-C", "-e", path])
                .args(chunk.iter().map(|(_, v)| format!("{v:#x}")))
                .output();
            let Ok(out) = out else { continue };
            let text = String::from_utf8_lossy(&out.stdout);
            // Each address: a line with the address, then pairs of lines
            // (function, file:line), innermost first.
            let mut groups: Vec<Vec<&str>> = Vec::new();
            for line in text.lines() {
                if line.starts_with("0x") && line[2..].chars().all(|c| c.is_ascii_hexdigit()) {
                    groups.push(Vec::new());
                } else if let Some(g) = groups.last_mut() {
                    g.push(line.trim());
                }
            }
            if groups.len() != chunk.len() {
                continue;
            }
            for (g, &(a, _)) in groups.iter().zip(chunk) {
                let fallback = names[&a][0].place.clone();
                let frames: Vec<Frame> = g
                    .chunks(2)
                    .filter(|pair| pair.len() == 2)
                    .map(|pair| {
                        let location = pair[1].split(" (discriminator").next().unwrap_or(pair[1]);
                        Frame {
                            function: pair[0].to_string(),
                            // The file name and line, not the build's directories.
                            place: if location.starts_with("??") { fallback.clone() } else { short(location).to_string() },
                        }
                    })
                    .collect();
                if !frames.is_empty() {
                    names.insert(a, frames);
                }
            }
        }
    }
    names
}

/// The last component of a path.
fn short(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

/// Whether a frame belongs to the allocator or its wrappers rather than
/// to the program that called it.
pub fn is_allocator_frame(f: &Frame) -> bool {
    const PREFIXES: [&str; 13] = [
        "buddyslab::",
        "__rustc::",
        "<buddyslab::",
        "__rust_",
        "__rdl_",
        "__rg_",
        "alloc::",
        "<alloc::",
        "std::alloc",
        "operator new",
        "core::ptr::",
        "<core::alloc::",
        "core::alloc::",
    ];
    const C_NAMES: [&str; 11] = [
        "malloc", "calloc", "realloc", "free", "aligned_alloc", "memalign", "posix_memalign", "valloc", "pvalloc",
        "reallocarray", "strdup",
    ];
    f.place.starts_with("libbuddyslab.so")
        || PREFIXES.iter().any(|p| f.function.starts_with(p))
        || f.function.contains(" as alloc::")
        || f.function.contains(" as core::alloc::")
        || C_NAMES.contains(&f.function.as_str())
}

/// A call site's share of the live heap.
#[derive(Debug, Clone)]
pub struct Site {
    pub frame: Frame,
    /// The frame that called it, if known.
    pub caller: Option<Frame>,
    pub samples: u64,
    pub sampled_bytes: u64,
    pub estimated_bytes: f64,
}

/// The frames of a stack the program owns: the allocator's innermost
/// frames dropped.
fn program_frames<'a>(s: &StackLine, names: &'a HashMap<u64, Vec<Frame>>) -> Vec<&'a Frame> {
    let frames: Vec<&Frame> = s.frames.iter().filter_map(|a| names.get(a)).flatten().collect();
    let skip = frames.iter().take_while(|f| is_allocator_frame(f)).count();
    if skip == frames.len() {
        frames
    } else {
        frames[skip..].to_vec()
    }
}

/// The call sites with live samples, largest estimated live bytes first.
pub fn sites(profile: &Profile, names: &HashMap<u64, Vec<Frame>>) -> Vec<Site> {
    let mut sites: Vec<Site> = Vec::new();
    let mut index: HashMap<Frame, usize> = HashMap::new();
    for s in profile.stacks.iter().filter(|s| s.live_count > 0) {
        let frames = program_frames(s, names);
        let frame = frames.first().map(|f| (*f).clone()).unwrap_or(Frame { function: "??".into(), place: "(no stack)".into() });
        let i = *index.entry(frame.clone()).or_insert_with(|| {
            sites.push(Site { frame, caller: frames.get(1).map(|f| (*f).clone()), samples: 0, sampled_bytes: 0, estimated_bytes: 0.0 });
            sites.len() - 1
        });
        sites[i].samples += s.live_count;
        sites[i].sampled_bytes += s.live_bytes;
        sites[i].estimated_bytes += s.estimated_bytes(profile.rate);
    }
    sites.sort_by(|a, b| b.estimated_bytes.total_cmp(&a.estimated_bytes).then(a.frame.label().cmp(&b.frame.label())));
    sites
}

/// The report `buddyslab prof` prints.
pub fn report(file: &Path, profile: &Profile, sites: &[Site], top: usize) -> String {
    let samples: u64 = sites.iter().map(|s| s.samples).sum();
    let sampled: u64 = sites.iter().map(|s| s.sampled_bytes).sum();
    let estimated: f64 = sites.iter().map(|s| s.estimated_bytes).sum();
    let mut out = String::new();
    let _ = writeln!(
        out,
        "heap profile {}: {} live samples, {} sampled bytes, about {} bytes live (one sample per {} bytes allocated on average)",
        file.display(),
        thousands(samples),
        thousands(sampled),
        thousands(estimated as u64),
        thousands(profile.rate)
    );
    if sites.is_empty() {
        let _ = writeln!(out, "no sampled allocation was live");
        return out;
    }
    let _ = writeln!(out, "\n{:>15}  {:>6}  {:>7}  call site", "live bytes", "share", "samples");
    for s in sites.iter().take(top) {
        let share = if estimated > 0.0 { 100.0 * s.estimated_bytes / estimated } else { 0.0 };
        let _ = writeln!(out, "{:>15}  {:>5.1}%  {:>7}  {}", thousands(s.estimated_bytes as u64), share, s.samples, s.frame.label());
        if let Some(c) = &s.caller {
            let _ = writeln!(out, "{:>34}called from {}", "", c.label());
        }
    }
    if sites.len() > top {
        let _ = writeln!(out, "... and {} more call sites (--top N shows more)", sites.len() - top);
    }
    out
}

/// A node of the flame graph: a frame, what it and its callees hold.
#[derive(Default)]
struct Node {
    bytes: f64,
    children: Vec<(String, Node)>,
}

impl Node {
    fn add(&mut self, path: &[String], bytes: f64) {
        self.bytes += bytes;
        if let Some((first, rest)) = path.split_first() {
            let i = match self.children.iter().position(|(n, _)| n == first) {
                Some(i) => i,
                None => {
                    self.children.push((first.clone(), Node::default()));
                    self.children.len() - 1
                }
            };
            self.children[i].1.add(rest, bytes);
        }
    }

    fn depth(&self) -> usize {
        1 + self.children.iter().map(|(_, c)| c.depth()).max().unwrap_or(0)
    }
}

const FLAME_WIDTH: f64 = 1200.0;
const FLAME_ROW: f64 = 18.0;
const FLAME_TOP: f64 = 40.0;
/// Width of a character at the frames' font size, rounded up.
const FLAME_CHAR_W: f64 = 6.6;

/// Escapes text for SVG.
fn escape(s: &str) -> String {
    s.replace('&', "&amp;").replace('<', "&lt;").replace('>', "&gt;").replace('"', "&quot;")
}

/// A warm colour picked by the name's hash, so a function keeps its colour.
fn flame_colour(name: &str) -> String {
    let h = name.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, c| (h ^ u64::from(c)).wrapping_mul(0x100_0000_01b3));
    let r = 205 + (h % 50) as u32;
    let g = 80 + ((h >> 8) % 130) as u32;
    let b = 40 + ((h >> 16) % 40) as u32;
    format!("rgb({r},{g},{b})")
}

/// The live heap as a flame graph: the program's outermost frame at the
/// bottom, each call site on top of its callers, widths proportional to
/// the estimated live bytes.
pub fn flame_svg(file: &Path, profile: &Profile, names: &HashMap<u64, Vec<Frame>>) -> String {
    let mut root = Node::default();
    for s in profile.stacks.iter().filter(|s| s.live_count > 0) {
        let mut path: Vec<String> = program_frames(s, names).iter().map(|f| f.function.clone()).collect();
        path.reverse();
        root.add(&path, s.estimated_bytes(profile.rate));
    }
    let rows = root.depth();
    let height = FLAME_TOP + rows as f64 * FLAME_ROW + 30.0;
    let mut svg = String::new();
    let _ = writeln!(
        svg,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{FLAME_WIDTH}" height="{height}" viewBox="0 0 {FLAME_WIDTH} {height}" font-family="sans-serif" font-size="11">"#
    );
    let _ = writeln!(
        svg,
        r#"<text x="10" y="22" font-size="15" font-weight="bold">buddyslab prof: live heap by call stack, about {} bytes ({})</text>"#,
        thousands(root.bytes as u64),
        escape(&file.display().to_string())
    );
    let bottom = height - 30.0;
    let scale = if root.bytes > 0.0 { (FLAME_WIDTH - 20.0) / root.bytes } else { 0.0 };
    draw_node(&mut svg, "all", &root, 10.0, bottom - FLAME_ROW, scale, root.bytes);
    let _ = writeln!(
        svg,
        r##"<text x="10" y="{}" font-size="10" fill="#555">width: estimated live bytes; bottom: outermost frame; hover a frame for its bytes</text>"##,
        height - 10.0
    );
    svg.push_str("</svg>\n");
    svg
}

fn draw_node(svg: &mut String, name: &str, node: &Node, x: f64, y: f64, scale: f64, total: f64) {
    let w = node.bytes * scale;
    if w < 0.5 {
        return;
    }
    let share = if total > 0.0 { 100.0 * node.bytes / total } else { 0.0 };
    let _ = write!(
        svg,
        r##"<g class="frame"><title>{} — {} bytes, {share:.1}%</title><rect x="{x:.1}" y="{y:.1}" width="{:.1}" height="{}" fill="{}" stroke="#fff" stroke-width="0.5"/>"##,
        escape(name),
        thousands(node.bytes as u64),
        w,
        FLAME_ROW - 1.0,
        flame_colour(name)
    );
    let fits = ((w - 6.0) / FLAME_CHAR_W).floor() as usize;
    let with_share = format!("{name} {share:.1}%");
    let name = if with_share.chars().count() <= fits { with_share.as_str() } else { name };
    if fits >= 3 {
        let mut label: String = name.chars().take(fits).collect();
        if label.chars().count() < name.chars().count() {
            label.pop();
            label.pop();
            label.push_str("..");
        }
        let _ = write!(svg, r#"<text x="{:.1}" y="{:.1}">{}</text>"#, x + 3.0, y + FLAME_ROW - 5.0, escape(&label));
    }
    svg.push_str("</g>\n");
    let mut cx = x;
    let mut children: Vec<&(String, Node)> = node.children.iter().collect();
    children.sort_by(|a, b| a.0.cmp(&b.0));
    for (child_name, child) in children {
        draw_node(svg, child_name, child, cx, y - FLAME_ROW, scale, total);
        cx += child.bytes * scale;
    }
}

/// `buddyslab prof FILE [--svg OUT] [--top N]`.
pub fn prof(args: ProfArgs) -> Result<u8, Failure> {
    let text = std::fs::read_to_string(&args.file)
        .map_err(|e| Failure::tool(format!("cannot read {}: {e}", args.file.display())))?;
    let profile = parse(&text).map_err(|e| Failure::tool(format!("{}: {e}", args.file.display())))?;
    let names = symbolise(&profile);
    let sites = sites(&profile, &names);
    crate::out::show!("{}", report(&args.file, &profile, &sites, args.top));
    if let Some(svg) = &args.svg {
        std::fs::write(svg, flame_svg(&args.file, &profile, &names))
            .map_err(|e| Failure::tool(format!("cannot write {}: {e}", svg.display())))?;
        crate::out::show!("flame graph written to {}\n", svg.display());
    }
    Ok(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAMPLE: &str = "heap profile: 3: 3000 [4: 4000] @ heap_v2/524288
2: 2000 [2: 2000] @ 0x1010 0x2020
1: 1000 [2: 2000] @ 0x1010 0x3030

MAPPED_LIBRARIES:
00001000-00004000 r-xp 00000000 fe:00 12 /bin/prog with space
";

    #[test]
    fn profile_parses() {
        let p = parse(SAMPLE).unwrap();
        assert_eq!(p.rate, 524288);
        assert_eq!(p.stacks.len(), 2);
        assert_eq!(p.stacks[0], StackLine { live_count: 2, live_bytes: 2000, total_count: 2, total_bytes: 2000, frames: vec![0x1010, 0x2020] });
        assert_eq!(p.maps, vec![Mapping { start: 0x1000, end: 0x4000, offset: 0, path: "/bin/prog with space".into() }]);
        assert!(parse("hello\n").is_err());
        assert!(parse("heap profile: 1: 1 [1: 1] @ heap_v2/512\n1: x [1: 1] @ 0x1\n").is_err());
    }

    #[test]
    fn scaling_follows_pprof() {
        let s = StackLine { live_count: 1, live_bytes: 524288, total_count: 1, total_bytes: 524288, frames: vec![] };
        let want = 524288.0 / (1.0 - (-1.0f64).exp());
        assert!((s.estimated_bytes(524288) - want).abs() < 1e-6);
        assert_eq!(s.estimated_bytes(0), 524288.0);
    }

    #[test]
    fn sites_skip_allocator_frames_and_sort_by_bytes() {
        let p = parse(SAMPLE).unwrap();
        let f = |function: &str| Frame { function: function.into(), place: "x.c:1".into() };
        let names: HashMap<u64, Vec<Frame>> = [(0x1010, vec![f("malloc")]), (0x2020, vec![f("big")]), (0x3030, vec![f("inlined"), f("small")])].into();
        let s = sites(&p, &names);
        assert_eq!(s.iter().map(|s| s.frame.function.as_str()).collect::<Vec<_>>(), ["big", "inlined"]);
        assert_eq!(s[1].caller.as_ref().map(|c| c.function.as_str()), Some("small"));
        assert_eq!(s[0].sampled_bytes, 2000);
        let svg = flame_svg(Path::new("p"), &p, &names);
        assert!(svg.starts_with("<svg") && svg.ends_with("</svg>\n"));
        assert!(svg.contains("<title>big"), "{svg}");
        assert!(svg.contains(">big 66.7%</text>"), "a frame wide enough shows its share: {svg}");
        assert!(!svg.contains("malloc"), "allocator frames stay out of the flame graph");
    }
}
