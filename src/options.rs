//! Options from the environment, read once at start-up without allocating.
//!
//! | variable                   | meaning                                   |
//! |----------------------------|-------------------------------------------|
//! | `BUDDYSLAB_MMAP_THRESHOLD` | bytes; requests at or above get a large block (default 128 KiB and adaptive, at most 32 MiB; `k`/`m` suffixes); setting it stops the adaptation |
//! | `BUDDYSLAB_DECAY_MS`       | milliseconds free memory stays resident before going back to the OS (default 1000; 0 = at the next slow path) |
//! | `BUDDYSLAB_STATS`          | `1`: the text views on stderr at exit; `json`: one JSON object on stderr at exit |
//! | `BUDDYSLAB_HEAPMAP`        | a file path: an SVG heap map (one row per chunk, one cell per page) is written there at exit (see [`crate::views::heapmap`]) |
//! | `BUDDYSLAB_ADDRSPACE_SVG`  | a file path: the process address space drawn as SVG (segments, gaps, buddyslab's regions) is written there at exit (see [`crate::views::addrspace`]) |
//! | `BUDDYSLAB_STATS_FILE`     | a file path: the views `BUDDYSLAB_STATS` asks for (text if it is not set) go there instead of stderr |
//! | `BUDDYSLAB_STATS_SIGNAL`   | a signal (`USR1`, `USR2`, or a number): on it, the views, heap map and drawing are written again at the next slow path (see [`crate::views::report`]) |
//! | `BUDDYSLAB_STATS_INTERVAL_MS` | milliseconds: the views, heap map and drawing are written again when so long has passed, checked at slow paths |
//! | `BUDDYSLAB_LIVE`           | `1`: publish the views in a shared page for `buddyslab top` and `buddyslab views` (see [`crate::views::live`]) |
//! | `BUDDYSLAB_PROF`           | a file path (`%p`: the process id): sampled heap profiling; the live-heap profile is written there at exit, in the gperftools text format (see [`crate::profile`] and [`crate::views::prof`]), and a leak report goes to stderr |
//! | `BUDDYSLAB_PROF_RATE`      | bytes; mean allocated bytes between heap-profile samples (default 512 KiB; `k`/`m` suffixes) |
//! | `BUDDYSLAB_LARGE_CACHE`    | bytes; cap on released large mappings kept for reuse (default 64 MiB, also bounded by the trim threshold; 0 turns the cache off) |
//! | `BUDDYSLAB_LARGE_CACHE_MS` | milliseconds a released mapping stays cached (default 1000) |
//! | `MALLOC_MMAP_THRESHOLD_`, `MALLOC_TRIM_THRESHOLD_` | glibc's names, honoured as glibc does (bytes; setting either stops the adaptation) |
//! | `MALLOC_PERTURB_`          | glibc's: a byte `p` (1..=255); `malloc` fills a new block with `p ^ 0xff` and `free` fills a freed one (past its first 16 bytes) with `p`, as glibc does; 0 turns it off. Thread caches stand aside while it is on, so every call takes the locked path (a debugging aid, as in glibc) |
//! | `GLIBC_TUNABLES`           | glibc's `name=value:...` list: `glibc.malloc.mmap_threshold`, `trim_threshold`, `perturb` are honoured as the variables above; `mmap_max` and `top_pad` stop the thresholds' adaptation; the other `glibc.malloc.*` tunables (arenas, tcache, fastbins, mxfast, hugetlb, ...) have no meaning here and are reported once |
//! | `BUDDYSLAB_VERBOSE`        | `1`: print the effective options on stderr at start-up |
//! | `BUDDYSLAB_STATS_PPID`    | a process id: with `BUDDYSLAB_STATS`, `BUDDYSLAB_HEAPMAP` or `BUDDYSLAB_ADDRSPACE_SVG`, only a process whose parent it is writes the views (by hand: the `buddyslab` tool lets every process of the tree write its own) |
//! | `BUDDYSLAB_ANNOUNCE`       | `FD:INODE`, set by the `buddyslab` tool: libbuddyslab.so's constructor reports on that pipe whether its `malloc` is the one bound (read there, through [`variable`]) |
//!
//! In every output path (`BUDDYSLAB_STATS_FILE`, `BUDDYSLAB_HEAPMAP`,
//! `BUDDYSLAB_ADDRSPACE_SVG`), `%p` is the process id and `%%` a `%`.
//!
//! Every other `BUDDYSLAB_*` variable, and a malformed value, is reported on
//! stderr (one line) and otherwise ignored: a typo should not pass silently.
//! Reported once per process tree: a process whose parent had the same
//! entry in its environment (read from `/proc/<ppid>/environ`) and the
//! same `LD_PRELOAD` stays quiet, since the parent said it already. Word
//! values (`json`, `text`) are taken in any case.

use crate::os;
use core::ffi::CStr;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};

/// What to print at exit ([`STATS_AT_EXIT`]): nothing.
pub const STATS_OFF: u8 = 0;
/// Print the text views.
pub const STATS_TEXT: u8 = 1;
/// Print one JSON object.
pub const STATS_JSON: u8 = 2;
/// `BUDDYSLAB_STATS`: one of `STATS_*`.
pub static STATS_AT_EXIT: AtomicU8 = AtomicU8::new(STATS_OFF);
/// `BUDDYSLAB_STATS_PPID`: when non-zero, the views are printed only by a
/// process whose parent has this id.
pub static STATS_PPID: AtomicI32 = AtomicI32::new(0);
/// The perturb byte (`MALLOC_PERTURB_`, `mallopt(M_PERTURB)`,
/// `glibc.malloc.perturb`); 0 when off.
pub static PERTURB: AtomicU8 = AtomicU8::new(0);
/// `BUDDYSLAB_VERBOSE`: print the effective options at start-up.
static VERBOSE: AtomicBool = AtomicBool::new(false);

// The values each tier reads, owned here so that parsing them names no
// tier: the large tier's thresholds and cache bounds, the page
// allocator's decay period, the views' files.

/// Default mmap threshold (glibc's `DEFAULT_MMAP_THRESHOLD_MIN`).
pub const DEFAULT_MMAP_THRESHOLD: usize = 128 * 1024;
/// Largest threshold `mallopt` accepts and the adaptation reaches (glibc's
/// `DEFAULT_MMAP_THRESHOLD_MAX` on 64-bit).
pub const MAX_MMAP_THRESHOLD: usize = 32 * 1024 * 1024;
/// Default trim threshold (glibc's `DEFAULT_TRIM_THRESHOLD`).
pub const DEFAULT_TRIM_THRESHOLD: usize = 128 * 1024;
/// Default cap on cached bytes: the largest trim threshold the adaptation
/// reaches.
pub const DEFAULT_CACHE_MAX: usize = 2 * MAX_MMAP_THRESHOLD;
/// Default time an extent stays cached, in milliseconds.
pub const DEFAULT_CACHE_MS: u64 = 1000;

/// Requests of at least this many bytes get a large block.
pub static MMAP_THRESHOLD: AtomicUsize = AtomicUsize::new(DEFAULT_MMAP_THRESHOLD);
/// glibc's trim threshold: here, a bound on cached bytes.
pub static TRIM_THRESHOLD: AtomicUsize = AtomicUsize::new(DEFAULT_TRIM_THRESHOLD);
/// Whether frees still adapt the thresholds (false once either was set).
pub static DYNAMIC_THRESHOLD: AtomicBool = AtomicBool::new(true);
/// Cap on cached bytes (`BUDDYSLAB_LARGE_CACHE`; 0 turns the cache off).
pub static CACHE_MAX: AtomicUsize = AtomicUsize::new(DEFAULT_CACHE_MAX);
/// Nanoseconds an extent may stay cached (`BUDDYSLAB_LARGE_CACHE_MS`).
pub static CACHE_MAX_AGE_NS: AtomicU64 = AtomicU64::new(DEFAULT_CACHE_MS * 1_000_000);
/// Sets the mmap threshold explicitly (`mallopt(M_MMAP_THRESHOLD)`): false
/// and no change above [`MAX_MMAP_THRESHOLD`]; otherwise the adaptation
/// stops.
pub fn set_mmap_threshold(bytes: usize) -> bool {
    if bytes > MAX_MMAP_THRESHOLD {
        return false;
    }
    DYNAMIC_THRESHOLD.store(false, Ordering::Relaxed);
    MMAP_THRESHOLD.store(bytes, Ordering::Relaxed);
    true
}

/// Sets the trim threshold explicitly (`mallopt(M_TRIM_THRESHOLD)`); the
/// adaptation stops.
pub fn set_trim_threshold(bytes: usize) {
    DYNAMIC_THRESHOLD.store(false, Ordering::Relaxed);
    TRIM_THRESHOLD.store(bytes, Ordering::Relaxed);
}

/// Default [`DECAY_MS`]: how long free memory stays resident, in
/// milliseconds (`BUDDYSLAB_DECAY_MS`).
pub const DEFAULT_DECAY_MS: u32 = 1000;

/// Milliseconds a free block or an empty slab stays resident before decay
/// gives it back. 0 gives memory back at the next tick.
pub static DECAY_MS: AtomicU32 = AtomicU32::new(DEFAULT_DECAY_MS);

/// A file path given in the environment, or none: the value of an
/// environment entry, followed in memory by its NUL and never freed.
pub struct PathOption(AtomicPtr<libc::c_char>);

impl PathOption {
    /// No path.
    pub const fn new() -> Self {
        PathOption(AtomicPtr::new(core::ptr::null_mut()))
    }

    /// Records the path. `value` must be followed in memory by a NUL (an
    /// environment entry is) and live for the process.
    pub fn set(&self, value: &'static [u8]) {
        let p = if value.is_empty() { core::ptr::null_mut() } else { value.as_ptr() as *mut libc::c_char };
        self.0.store(p, Ordering::Relaxed);
    }

    /// The path as a C string, or null when none was given.
    pub fn get(&self) -> *mut libc::c_char {
        self.0.load(Ordering::Relaxed)
    }

    /// Whether a path was given.
    pub fn requested(&self) -> bool {
        !self.get().is_null()
    }
}

impl Default for PathOption {
    fn default() -> Self {
        Self::new()
    }
}

/// `BUDDYSLAB_HEAPMAP`: where the heap map goes at exit.
pub static HEAPMAP_PATH: PathOption = PathOption::new();
/// `BUDDYSLAB_ADDRSPACE_SVG`: where the address-space drawing goes at exit.
pub static ADDRSPACE_SVG_PATH: PathOption = PathOption::new();
/// `BUDDYSLAB_PROF`: where the heap profile goes (`%p`: the process id);
/// a path turns sampled heap profiling on.
pub static PROF_PATH: PathOption = PathOption::new();

/// Default [`PROF_RATE`]: mean bytes between heap-profile samples, as
/// tcmalloc and jemalloc use.
pub const DEFAULT_PROF_RATE: usize = 512 * 1024;
/// `BUDDYSLAB_PROF_RATE`: mean bytes between heap-profile samples.
pub static PROF_RATE: AtomicUsize = AtomicUsize::new(DEFAULT_PROF_RATE);

/// Sets [`PROF_RATE`] (at least 1: every allocation is then sampled);
/// false, and no change, for 0 or a rate too big to draw intervals of.
pub fn set_prof_rate(bytes: usize) -> bool {
    if bytes == 0 || bytes > isize::MAX as usize / 64 {
        return false;
    }
    PROF_RATE.store(bytes, Ordering::Relaxed);
    true
}

/// `BUDDYSLAB_STATS_FILE`: where the text or JSON views go instead of
/// stderr.
pub static STATS_FILE_PATH: PathOption = PathOption::new();
/// `BUDDYSLAB_STATS_SIGNAL`: the signal that asks for the views, 0 when
/// none.
pub static STATS_SIGNAL: AtomicI32 = AtomicI32::new(0);
/// `BUDDYSLAB_STATS_INTERVAL_MS` in nanoseconds, 0 when off.
pub static STATS_INTERVAL_NS: AtomicU64 = AtomicU64::new(0);
/// `BUDDYSLAB_LIVE=1`: publish the views in the live page.
pub static LIVE: AtomicBool = AtomicBool::new(false);

/// Parses a signal name (`USR1`, `SIGUSR2`, any case) or number (1..=64).
pub fn parse_signal(value: &[u8]) -> Option<i32> {
    let name = if value.len() > 3 && value[..3].eq_ignore_ascii_case(b"SIG") { &value[3..] } else { value };
    let known: [(&[u8], i32); 6] = [
        (b"USR1", libc::SIGUSR1),
        (b"USR2", libc::SIGUSR2),
        (b"HUP", libc::SIGHUP),
        (b"PROF", libc::SIGPROF),
        (b"WINCH", libc::SIGWINCH),
        (b"URG", libc::SIGURG),
    ];
    if let Some((_, n)) = known.iter().find(|(k, _)| name.eq_ignore_ascii_case(k)) {
        return Some(*n);
    }
    let n = parse_size(name).filter(|_| name.iter().all(u8::is_ascii_digit))?;
    (1..=64).contains(&n).then_some(n as i32)
}

/// The perturb byte, 0 when off.
#[inline]
pub fn perturb() -> u8 {
    PERTURB.load(Ordering::Relaxed)
}

/// Sets the perturb byte as glibc's `mallopt(M_PERTURB)` does (the low
/// byte of `value`; 0 turns it off).
pub fn set_perturb(value: usize) {
    PERTURB.store(value as u8, Ordering::Relaxed);
}

const PREFIX: &[u8] = b"BUDDYSLAB_";
const GLIBC_MMAP_THRESHOLD: &[u8] = b"MALLOC_MMAP_THRESHOLD_";
const GLIBC_TRIM_THRESHOLD: &[u8] = b"MALLOC_TRIM_THRESHOLD_";
const GLIBC_PERTURB: &[u8] = b"MALLOC_PERTURB_";
const GLIBC_TUNABLES: &[u8] = b"GLIBC_TUNABLES";

extern "C" {
    static environ: *const *const libc::c_char;
}

/// Parses a size: decimal digits with an optional `k`, `m` or `g` suffix
/// (powers of 1024). `None` for anything else or on overflow.
pub fn parse_size(text: &[u8]) -> Option<usize> {
    let (digits, shift) = match text.last()? {
        b'k' | b'K' => (&text[..text.len() - 1], 10),
        b'm' | b'M' => (&text[..text.len() - 1], 20),
        b'g' | b'G' => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    if digits.is_empty() {
        return None;
    }
    let mut v: usize = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add((d - b'0') as usize)?;
    }
    v.checked_mul(1usize << shift)
}

/// Scans the environment for `BUDDYSLAB_*` variables and applies them.
pub fn read_environment() {
    // SAFETY: `environ` is the C runtime's NULL-terminated array of
    // NUL-terminated strings; we only read it, at start-up.
    unsafe {
        let mut e = environ;
        if e.is_null() {
            return;
        }
        while !(*e).is_null() {
            apply(CStr::from_ptr(*e).to_bytes());
            e = e.add(1);
        }
    }
    if VERBOSE.load(Ordering::Relaxed) {
        print_effective();
    }
}

/// `BUDDYSLAB_VERBOSE=1`: one line per option, with the value in force.
fn print_effective() {
    let mut buf = crate::os::fmt::FixedBuf::<1024>::new();
    use core::fmt::Write as _;
    let on = |b: bool| if b { "on" } else { "off" };
    let stats = match STATS_AT_EXIT.load(Ordering::Relaxed) {
        STATS_TEXT => "text",
        STATS_JSON => "json",
        _ => "off",
    };
    let _ = writeln!(
        buf,
        "buddyslab: options: mmap_threshold={} ({}) trim_threshold={} decay_ms={} large_cache={} large_cache_ms={} perturb={} stats={} stats_file={} stats_signal={} stats_interval_ms={} live={} heapmap={} addrspace_svg={} prof={} prof_rate={}",
        MMAP_THRESHOLD.load(Ordering::Relaxed),
        if DYNAMIC_THRESHOLD.load(Ordering::Relaxed) { "adaptive" } else { "fixed" },
        TRIM_THRESHOLD.load(Ordering::Relaxed),
        DECAY_MS.load(Ordering::Relaxed),
        CACHE_MAX.load(Ordering::Relaxed),
        CACHE_MAX_AGE_NS.load(Ordering::Relaxed) / 1_000_000,
        perturb(),
        stats,
        on(STATS_FILE_PATH.requested()),
        STATS_SIGNAL.load(Ordering::Relaxed),
        STATS_INTERVAL_NS.load(Ordering::Relaxed) / 1_000_000,
        on(LIVE.load(Ordering::Relaxed)),
        on(HEAPMAP_PATH.requested()),
        on(ADDRSPACE_SVG_PATH.requested()),
        on(PROF_PATH.requested()),
        PROF_RATE.load(Ordering::Relaxed),
    );
    os::write_all(2, buf.as_bytes());
}

/// The value of environment variable `name` (without the `=`), if set.
pub fn variable(name: &[u8]) -> Option<&'static [u8]> {
    // SAFETY: as in `read_environment`. glibc never frees an environment
    // string that setenv/putenv replaced, so the slice stays readable.
    unsafe {
        let mut e = environ;
        if e.is_null() {
            return None;
        }
        while !(*e).is_null() {
            let entry = CStr::from_ptr(*e).to_bytes();
            if entry.len() > name.len() && entry.starts_with(name) && entry[name.len()] == b'=' {
                return Some(&entry[name.len() + 1..]);
            }
            e = e.add(1);
        }
    }
    None
}

fn apply(entry: &'static [u8]) {
    let Some(eq) = entry.iter().position(|&b| b == b'=') else { return };
    let (name, value) = (&entry[..eq], &entry[eq + 1..]);
    if name == GLIBC_MMAP_THRESHOLD || name == GLIBC_TRIM_THRESHOLD || name == GLIBC_PERTURB {
        return apply_glibc(name, value);
    }
    if name == GLIBC_TUNABLES {
        return apply_tunables(entry, value);
    }
    if !name.starts_with(PREFIX) {
        return;
    }
    match name {
        b"BUDDYSLAB_MMAP_THRESHOLD" => match parse_size(value) {
            Some(v) if set_mmap_threshold(v) => {}
            _ => report(entry, b"BUDDYSLAB_MMAP_THRESHOLD must be a size up to 32m (e.g. 131072, 256k); ignored"),
        },
        b"BUDDYSLAB_DECAY_MS" => match parse_size(value) {
            Some(v) if v <= u32::MAX as usize / 2 && value.iter().all(u8::is_ascii_digit) => {
                DECAY_MS.store(v as u32, Ordering::Relaxed);
            }
            _ => report(entry, b"BUDDYSLAB_DECAY_MS must be milliseconds (e.g. 1000, 0); ignored"),
        },
        b"BUDDYSLAB_STATS" => match value {
            b"1" => STATS_AT_EXIT.store(STATS_TEXT, Ordering::Relaxed),
            v if v.eq_ignore_ascii_case(b"text") => STATS_AT_EXIT.store(STATS_TEXT, Ordering::Relaxed),
            v if v.eq_ignore_ascii_case(b"json") => STATS_AT_EXIT.store(STATS_JSON, Ordering::Relaxed),
            b"0" | b"" => STATS_AT_EXIT.store(STATS_OFF, Ordering::Relaxed),
            _ => report(entry, b"BUDDYSLAB_STATS must be 1, text, json or 0; ignored"),
        },
        b"BUDDYSLAB_VERBOSE" => match value {
            b"1" => VERBOSE.store(true, Ordering::Relaxed),
            b"0" | b"" => VERBOSE.store(false, Ordering::Relaxed),
            _ => report(entry, b"BUDDYSLAB_VERBOSE must be 1 or 0; ignored"),
        },
        b"BUDDYSLAB_HEAPMAP" => HEAPMAP_PATH.set(value),
        b"BUDDYSLAB_ADDRSPACE_SVG" => ADDRSPACE_SVG_PATH.set(value),
        b"BUDDYSLAB_STATS_PPID" => match parse_size(value) {
            Some(pid) if pid <= i32::MAX as usize && value.iter().all(u8::is_ascii_digit) => {
                STATS_PPID.store(pid as i32, Ordering::Relaxed)
            }
            _ => report(entry, b"BUDDYSLAB_STATS_PPID must be a process id; ignored"),
        },
        b"BUDDYSLAB_LARGE_CACHE" => match parse_size(value) {
            Some(v) => CACHE_MAX.store(v, Ordering::Relaxed),
            None => report(entry, b"BUDDYSLAB_LARGE_CACHE must be a size (e.g. 64m, 0); ignored"),
        },
        b"BUDDYSLAB_LARGE_CACHE_MS" => match parse_size(value) {
            Some(ms) if value.iter().all(u8::is_ascii_digit) => {
                CACHE_MAX_AGE_NS.store((ms as u64).saturating_mul(1_000_000), Ordering::Relaxed)
            }
            _ => report(entry, b"BUDDYSLAB_LARGE_CACHE_MS must be milliseconds (e.g. 1000); ignored"),
        },
        b"BUDDYSLAB_STATS_FILE" => STATS_FILE_PATH.set(value),
        b"BUDDYSLAB_STATS_SIGNAL" => match parse_signal(value) {
            Some(signal) => STATS_SIGNAL.store(signal, Ordering::Relaxed),
            None => report(entry, b"BUDDYSLAB_STATS_SIGNAL must be a signal (USR1, USR2 or a number); ignored"),
        },
        b"BUDDYSLAB_STATS_INTERVAL_MS" => match parse_size(value) {
            Some(ms) if value.iter().all(u8::is_ascii_digit) => {
                STATS_INTERVAL_NS.store((ms as u64).saturating_mul(1_000_000), Ordering::Relaxed)
            }
            _ => report(entry, b"BUDDYSLAB_STATS_INTERVAL_MS must be milliseconds (e.g. 1000, 0 for off); ignored"),
        },
        b"BUDDYSLAB_LIVE" => match value {
            b"1" => LIVE.store(true, Ordering::Relaxed),
            b"0" | b"" => LIVE.store(false, Ordering::Relaxed),
            _ => report(entry, b"BUDDYSLAB_LIVE must be 1 or 0; ignored"),
        },
        b"BUDDYSLAB_PROF" => PROF_PATH.set(value),
        b"BUDDYSLAB_PROF_RATE" => match parse_size(value) {
            Some(v) if set_prof_rate(v) => {}
            _ => report(entry, b"BUDDYSLAB_PROF_RATE must be a size of at least 1 byte (e.g. 512k); ignored"),
        },
        b"BUDDYSLAB_ANNOUNCE" => {}
        _ => {
            if !parent_had(entry) {
                os::write_all(2, b"buddyslab: unknown variable ");
                os::write_all(2, name);
                os::write_all(2, b" ignored\n");
            }
        }
    }
}

/// Reports a malformed `entry` (one line: `buddyslab: <why>`), unless the
/// parent process had the same entry and so reported it already.
fn report(entry: &[u8], why: &[u8]) {
    if !parent_had(entry) {
        os::write_all(2, b"buddyslab: ");
        os::write_all(2, why);
        os::write_all(2, b"\n");
    }
}

/// Whether the parent process started with `entry` (`NAME=VALUE`) in its
/// environment and with the same `LD_PRELOAD` (or none) as ours: then it
/// ran this allocator with the same settings and has reported them; a
/// process tree reports each problem once. Reads `/proc/<ppid>/environ`
/// in pieces into a stack buffer: no allocation.
fn parent_had(entry: &[u8]) -> bool {
    let preload = variable(b"LD_PRELOAD");
    let mut path = [0u8; 40];
    let mut n = 0;
    for &b in b"/proc/" {
        path[n] = b;
        n += 1;
    }
    let ppid = os::getppid();
    let mut digits = [0u8; 12];
    let mut d = 0;
    let mut v = ppid as u32;
    loop {
        digits[d] = b'0' + (v % 10) as u8;
        d += 1;
        v /= 10;
        if v == 0 {
            break;
        }
    }
    while d > 0 {
        d -= 1;
        path[n] = digits[d];
        n += 1;
    }
    for &b in b"/environ\0" {
        path[n] = b;
        n += 1;
    }
    let mut found_entry = false;
    let mut found_preload = preload.is_none();
    let mut preload_matches = preload.is_none();
    os::for_each_nul_entry(&path, |e| {
        if e == entry {
            found_entry = true;
        }
        if let Some(rest) = e.strip_prefix(b"LD_PRELOAD=") {
            found_preload = true;
            preload_matches = Some(rest) == preload;
        }
    });
    found_entry && found_preload && preload_matches
}

/// glibc's own variables: a malformed value is ignored silently, as glibc
/// ignores it.
fn apply_glibc(name: &[u8], value: &[u8]) {
    let Some(v) = parse_size(value).filter(|_| value.iter().all(u8::is_ascii_digit)) else { return };
    if name == GLIBC_MMAP_THRESHOLD {
        set_mmap_threshold(v);
    } else if name == GLIBC_TRIM_THRESHOLD {
        set_trim_threshold(v);
    } else {
        set_perturb(v);
    }
}

/// `GLIBC_TUNABLES=name=value:name=value...`: the `glibc.malloc.*`
/// tunables that mean something here are applied; the others are reported
/// (once per process tree, see [`parent_had`]). Tunables of other glibc
/// subsystems are glibc's business and left alone.
fn apply_tunables(entry: &[u8], list: &[u8]) {
    for item in list.split(|&b| b == b':') {
        let Some(eq) = item.iter().position(|&b| b == b'=') else { continue };
        let (name, value) = (&item[..eq], &item[eq + 1..]);
        let Some(tunable) = name.strip_prefix(b"glibc.malloc.") else { continue };
        let number = parse_size(value).filter(|_| value.iter().all(u8::is_ascii_digit));
        match (tunable, number) {
            (b"mmap_threshold", Some(v)) => {
                set_mmap_threshold(v);
            }
            (b"trim_threshold", Some(v)) => set_trim_threshold(v),
            (b"perturb", Some(v)) => set_perturb(v),
            (b"mmap_max" | b"top_pad", Some(_)) => DYNAMIC_THRESHOLD.store(false, Ordering::Relaxed),
            (b"mmap_threshold" | b"trim_threshold" | b"perturb" | b"mmap_max" | b"top_pad", None) => {}
            _ => {
                if !parent_had(entry) {
                    os::write_all(2, b"buddyslab: GLIBC_TUNABLES: ");
                    os::write_all(2, name);
                    os::write_all(2, b" has no meaning in buddyslab; ignored\n");
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(parse_signal(b"USR2"), Some(libc::SIGUSR2));
        assert_eq!(parse_signal(b"sigusr1"), Some(libc::SIGUSR1));
        assert_eq!(parse_signal(b"12"), Some(12));
        assert_eq!(parse_signal(b"0"), None);
        assert_eq!(parse_signal(b"KILLME"), None);
        assert_eq!(parse_signal(b""), None);
    }

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size(b"131072"), Some(131072));
        assert_eq!(parse_size(b"256k"), Some(256 << 10));
        assert_eq!(parse_size(b"2M"), Some(2 << 20));
        assert_eq!(parse_size(b""), None);
        assert_eq!(parse_size(b"k"), None);
        assert_eq!(parse_size(b"12x"), None);
        assert_eq!(parse_size(b"-1"), None);
        assert_eq!(parse_size(b"99999999999999999999999"), None);
    }
}
