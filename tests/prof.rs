//! Sampled heap profiling (`BUDDYSLAB_PROF`): a C program under
//! `LD_PRELOAD` whose call sites keep 50 MB and 1 MB live, read back with
//! `buddyslab prof`; the profile's format; nothing written when profiling
//! is off; and a Rust program with buddyslab as its global allocator (this
//! test binary, run again as a child).
//!
//! Needs `target/release/libbuddyslab.so` and `target/release/buddyslab`:
//! run `cargo build --release && cargo test --release --workspace`.

mod common;

use buddyslab::BuddySlab;
use common::{clean_malloc_env, compile_c, fresh_dir, library, run, Outcome};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

#[global_allocator]
static GLOBAL: BuddySlab = BuddySlab;

/// Far above any normal run (seconds); only stops a hang.
const HANG_GUARD: Duration = Duration::from_secs(300);
/// Set for the child run of [`rust_child`].
const CHILD_VAR: &str = "BUDDYSLAB_TEST_PROF_CHILD";

/// The `buddyslab` tool built beside the library.
fn tool() -> PathBuf {
    let t = library().with_file_name("buddyslab");
    assert!(t.is_file(), "{} is missing: run cargo build --release", t.display());
    t
}

/// The files in `dir`.
fn files_in(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().path()).collect();
    v.sort();
    v
}

/// Runs the C program `prof.c` preloaded, with `block` bytes per
/// allocation and `env` added, in the fresh directory `name`.
fn run_c(name: &str, block: &str, env: &[(&str, String)]) -> (PathBuf, Outcome) {
    // Compiled once: the tests run on parallel threads of one process.
    static EXE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let exe = EXE.get_or_init(|| compile_c("prof", "prof"));
    let dir = fresh_dir("prof", name);
    let mut cmd = Command::new(exe);
    clean_malloc_env(&mut cmd);
    cmd.arg(block).current_dir(&dir).env("LD_PRELOAD", library());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let outcome = run(cmd, HANG_GUARD);
    assert!(outcome.success(), "{}", outcome.report());
    (dir, outcome)
}

/// `buddyslab prof FILE [args]`: its stdout.
fn prof_report(file: &Path, args: &[&str]) -> String {
    let mut cmd = Command::new(tool());
    clean_malloc_env(&mut cmd);
    cmd.arg("prof").arg(file).args(args);
    let outcome = run(cmd, HANG_GUARD);
    assert!(outcome.success(), "{}", outcome.report());
    outcome.stdout
}

/// The call-site rows of a report: (share in percent, call site text).
fn sites(report: &str) -> Vec<(f64, String)> {
    rows(report).into_iter().map(|(share, _, site)| (share, site)).collect()
}

/// The call-site rows of a report: (share in percent, samples, call site).
fn rows(report: &str) -> Vec<(f64, u64, String)> {
    report
        .lines()
        .filter_map(|l| {
            let (_, rest) = l.split_once('%')?;
            let share = l[..l.find('%')?].split_whitespace().last()?.parse().ok()?;
            let mut words = rest.split_whitespace();
            let samples = words.next()?.parse().ok()?;
            Some((share, samples, words.collect::<Vec<_>>().join(" ")))
        })
        .collect()
}

/// A stack line of a profile: live objects, live bytes, frames.
type StackLine = (u64, u64, Vec<u64>);

/// A profile's stack lines and mapped files, checked line by line against
/// the gperftools heap-profile text format.
fn check_format(text: &str) -> (Vec<StackLine>, Vec<String>) {
    let mut lines = text.lines();
    let header = lines.next().expect("a header");
    let rest = header.strip_prefix("heap profile: ").unwrap_or_else(|| panic!("header: {header}"));
    let (counts, kind) = rest.split_once(" @ ").unwrap_or_else(|| panic!("header: {header}"));
    assert!(kind.starts_with("heap_v2/"), "header: {header}");
    let rate: u64 = kind["heap_v2/".len()..].parse().expect("rate");
    assert!(rate > 0);
    let parse_counts = |c: &str| -> [u64; 4] {
        let c = c.replace(['[', ']', ':'], " ");
        let n: Vec<u64> = c.split_whitespace().map(|x| x.parse().unwrap_or_else(|_| panic!("count `{x}`"))).collect();
        assert_eq!(n.len(), 4, "counts `{c}`");
        [n[0], n[1], n[2], n[3]]
    };
    let totals = parse_counts(counts);
    let mut stacks = Vec::new();
    let mut maps = Vec::new();
    let mut in_maps = false;
    for line in lines {
        if line.is_empty() {
            continue;
        }
        if line == "MAPPED_LIBRARIES:" {
            in_maps = true;
            continue;
        }
        if in_maps {
            let fields: Vec<&str> = line.split_whitespace().collect();
            assert!(fields.len() >= 5 && fields[0].contains('-'), "maps line `{line}`");
            if fields.len() >= 6 {
                maps.push(fields[5..].join(" "));
            }
            continue;
        }
        let (c, addrs) = line.split_once(" @ ").unwrap_or_else(|| panic!("stack line `{line}`"));
        let c = parse_counts(c);
        assert!(c[0] <= c[2] && c[1] <= c[3], "live above total: `{line}`");
        let frames: Vec<u64> = addrs
            .split_whitespace()
            .map(|a| u64::from_str_radix(a.strip_prefix("0x").expect("0x"), 16).expect("hex"))
            .collect();
        assert!(!frames.is_empty(), "no frames: `{line}`");
        stacks.push((c[0], c[1], frames));
    }
    assert!(in_maps, "no MAPPED_LIBRARIES section");
    let live: u64 = stacks.iter().map(|s| s.0).sum();
    let bytes: u64 = stacks.iter().map(|s| s.1).sum();
    assert_eq!([live, bytes], [totals[0], totals[1]], "header totals");
    (stacks, maps)
}

#[test]
fn c_program_fifty_megabyte_site_leads_the_profile() {
    let (dir, outcome) = run_c("c-slab", "1000", &[("BUDDYSLAB_PROF", "heap.%p".into())]);
    let files = files_in(&dir);
    assert_eq!(files.len(), 1, "one profile: {files:?}");
    let name = files[0].file_name().unwrap().to_string_lossy().to_string();
    let pid: u32 = name.strip_prefix("heap.").and_then(|p| p.parse().ok()).unwrap_or_else(|| panic!("%p not replaced: {name}"));
    assert!(pid > 1);
    // The leak report at exit, on stderr.
    assert!(outcome.stderr.contains("sampled bytes live at exit"), "{}", outcome.stderr);
    let text = std::fs::read_to_string(&files[0]).unwrap();
    let (stacks, maps) = check_format(&text);
    assert!(stacks.iter().map(|s| s.0).sum::<u64>() >= 40, "about 100 samples expected for 51 MB:\n{text}");
    assert!(maps.iter().any(|m| m.ends_with("/prof")), "the program is among the mapped files");

    let report = prof_report(&files[0], &[]);
    let rows = sites(&report);
    assert!(!rows.is_empty(), "{report}");
    assert!(rows[0].1.contains("fifty_megabytes_site"), "first call site:\n{report}");
    assert!(rows[0].0 >= 90.0, "share of the first call site:\n{report}");
    assert!(!report.contains("churn_site"), "freed blocks are not live:\n{report}");

    let svg = dir.join("flame.svg");
    prof_report(&files[0], &["--svg", svg.to_str().unwrap()]);
    let drawing = std::fs::read_to_string(&svg).unwrap();
    assert!(drawing.starts_with("<svg") && drawing.trim_end().ends_with("</svg>"));
    assert!(drawing.contains("fifty_megabytes_site") && drawing.contains("main"));
}

/// A process killed with SIGKILL runs no exit handler: its profile is the
/// one the views' interval wrote while it ran.
#[test]
fn killed_program_leaves_the_profile_its_interval_wrote() {
    static EXE: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    let exe = EXE.get_or_init(|| compile_c("prof", "prof-linger"));
    let dir = fresh_dir("prof", "c-killed");
    let mut cmd = Command::new(exe);
    clean_malloc_env(&mut cmd);
    cmd.args(["1000", "linger"])
        .current_dir(&dir)
        .env("LD_PRELOAD", library())
        .env("BUDDYSLAB_PROF", "heap.%p")
        .env("BUDDYSLAB_STATS_FILE", "views.%p")
        .env("BUDDYSLAB_STATS_INTERVAL_MS", "50")
        .stdout(std::process::Stdio::null());
    let mut child = cmd.spawn().unwrap();
    let profile = dir.join(format!("heap.{}", child.id()));
    // Waits for an interval after the allocations: a profile with their
    // samples (about 100 for 51 MB).
    let start = std::time::Instant::now();
    let mut text = String::new();
    while start.elapsed() < HANG_GUARD {
        text = std::fs::read_to_string(&profile).unwrap_or_default();
        if text.lines().filter(|l| l.contains(" @ ")).count() > 1 && check_format(&text).0.iter().map(|s| s.0).sum::<u64>() >= 40 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    child.kill().unwrap();
    let status = child.wait().unwrap();
    assert!(!status.success(), "killed, not exited: {status:?}");
    assert!(check_format(&text).0.iter().map(|s| s.0).sum::<u64>() >= 40, "no profile with the allocations' samples within {HANG_GUARD:?}:\n{text}");
    let report = prof_report(&profile, &[]);
    let rows = sites(&report);
    assert!(!rows.is_empty() && rows[0].1.contains("fifty_megabytes_site"), "first call site:\n{report}");
    assert!(rows[0].0 >= 90.0, "share of the first call site:\n{report}");
}

#[test]
fn c_program_large_blocks_are_sampled_and_forgotten_on_free() {
    // 300000-byte blocks: mappings of their own (above the page tier).
    let (dir, _) = run_c("c-large", "300000", &[("BUDDYSLAB_PROF", "heap".into())]);
    let file = dir.join("heap");
    let report = prof_report(&file, &[]);
    let rows = sites(&report);
    assert!(rows[0].1.contains("fifty_megabytes_site") && rows[0].0 >= 90.0, "{report}");
    assert!(!report.contains("churn_site"), "freed blocks are not live:\n{report}");
}

#[test]
fn profiling_off_writes_nothing() {
    let (dir, outcome) = run_c("off", "1000", &[("BUDDYSLAB_PROF_RATE", "4k".into())]);
    assert_eq!(files_in(&dir), Vec::<PathBuf>::new());
    assert!(!outcome.stderr.contains("heap profile"), "{}", outcome.stderr);
    // And in this process, where nothing asked for it.
    assert!(!buddyslab::prof::write_profile());
}

#[test]
fn every_allocation_sampled_at_rate_one_byte() {
    let (dir, _) = run_c("rate-1", "1000", &[("BUDDYSLAB_PROF", "heap".into()), ("BUDDYSLAB_PROF_RATE", "1".into())]);
    let text = std::fs::read_to_string(dir.join("heap")).unwrap();
    let (stacks, _) = check_format(&text);
    let live: u64 = stacks.iter().map(|s| s.0).sum();
    // 51000 blocks kept, plus the pointer array and whatever the C
    // library keeps.
    assert!((51_000..52_000).contains(&live), "{live} live samples");
    // Every block, each under its own call site; the churn is all freed.
    let report = prof_report(&dir.join("heap"), &[]);
    let rows = rows(&report);
    let samples_of = |site: &str| rows.iter().filter(|r| r.2.starts_with(site)).map(|r| r.1).sum::<u64>();
    assert_eq!(samples_of("fifty_megabytes_site"), 50_000, "{report}");
    assert_eq!(samples_of("one_megabyte_site"), 1_000, "{report}");
    assert_eq!(samples_of("churn_site"), 0, "{report}");
}

// Two functions with the same body on purpose: they are the profile's
// two call sites, told apart by name in the report.
#[inline(never)]
fn keep_rust_blocks(n: usize) -> Vec<Vec<u8>> {
    let mut kept = Vec::new();
    for i in 0..n {
        kept.push(vec![i as u8; 1000]);
    }
    kept
}

#[inline(never)]
fn keep_a_few_rust_blocks(n: usize) -> Vec<Vec<u8>> {
    let mut kept = Vec::new();
    for i in 0..n {
        kept.push(vec![i as u8; 1000]);
    }
    kept
}

/// The child side of [`rust_program_with_buddyslab_global_allocator`];
/// does nothing in a normal run.
#[test]
fn rust_child() {
    if std::env::var_os(CHILD_VAR).is_none() {
        return;
    }
    let big = keep_rust_blocks(40_000);
    let small = keep_a_few_rust_blocks(800);
    assert!(buddyslab::prof::write_profile(), "profiling is on in the child");
    // Live at exit: the profile written then holds them.
    std::mem::forget((big, small));
}

#[test]
fn rust_program_with_buddyslab_global_allocator() {
    let dir = fresh_dir("prof", "rust");
    let mut cmd = Command::new(std::env::current_exe().unwrap());
    clean_malloc_env(&mut cmd);
    cmd.args(["rust_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_VAR, "1")
        .env("BUDDYSLAB_PROF", dir.join("heap.%p"));
    let outcome = run(cmd, HANG_GUARD);
    assert!(outcome.success(), "{}", outcome.report());
    let files = files_in(&dir);
    assert_eq!(files.len(), 1, "{files:?}");
    check_format(&std::fs::read_to_string(&files[0]).unwrap());
    let report = prof_report(&files[0], &[]);
    let rows = sites(&report);
    assert!(!rows.is_empty(), "{report}");
    assert!(rows[0].1.contains("keep_rust_blocks"), "{report}");
    assert!(rows[0].0 >= 80.0, "{report}");
}
