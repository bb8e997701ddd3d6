//! The faults view against the kernel: the C program `tests/c/faults.c`
//! allocates 32 MiB from one tier (large blocks, page runs, slab objects)
//! and writes all, a quarter or none of each block's pages, under
//! `LD_PRELOAD=libbuddyslab.so` with `BUDDYSLAB_STATS=json`. The
//! allocator's own faults are the run's `ru_minflt` less a baseline run
//! that allocates nothing; the view's observed faults (less the
//! baseline's) must be within 10 % of them, whatever the program touched,
//! while the prediction stays an upper bound. A refault test gives pages
//! back with `malloc_trim(0)` and touches them again.
//!
//! Needs `target/release/libbuddyslab.so`: run
//! `cargo build --release && cargo test --release --workspace`.

mod common;

use common::{clean_malloc_env, compile_c, fresh_dir, library, run, Outcome};
use serde_json::Value;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// Far above any normal run (seconds); only stops a hang.
const HANG_GUARD: Duration = Duration::from_secs(300);

/// Pages each run allocates (32 MiB).
const PAGES: i64 = 8192;

fn program() -> &'static std::path::Path {
    static EXE: OnceLock<std::path::PathBuf> = OnceLock::new();
    EXE.get_or_init(|| compile_c("faults", "faults"))
}

/// What one run printed and what its faults view said.
struct Run {
    outcome: Outcome,
    /// Pages the program wrote, and the pages of one of its blocks.
    written: i64,
    block_pages: i64,
    faults: Value,
}

impl Run {
    fn get(&self, key: &str) -> i64 {
        int(&self.faults[key])
    }

    fn tier(&self, figure: &str, tier: &str) -> i64 {
        int(&self.faults[figure][tier])
    }
}

fn int(v: &Value) -> i64 {
    v.as_i64().unwrap_or_else(|| panic!("not an integer: {v}"))
}

/// Runs `faults ARGS` preloaded, with the views at exit as JSON (and
/// `env`); panics with the whole report unless it exits 0.
fn run_faults(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = Command::new(program());
    clean_malloc_env(&mut cmd);
    cmd.args(args).env("LD_PRELOAD", library()).env("BUDDYSLAB_STATS", "json");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let outcome = run(cmd, HANG_GUARD);
    assert!(outcome.success(), "{}", outcome.report());
    let value = |key: &str| -> i64 {
        let line = outcome.stdout.lines().find_map(|l| l.strip_prefix(key)?.strip_prefix(' ').map(str::to_owned));
        line.and_then(|v| v.trim().parse().ok()).unwrap_or_else(|| panic!("no `{key}` line:\n{}", outcome.report()))
    };
    let (written, block_pages) = (value("pages"), value("block_pages"));
    let line = outcome.stderr.lines().rev().find(|l| l.starts_with('{'));
    let line = line.unwrap_or_else(|| panic!("no JSON object on stderr:\n{}", outcome.report()));
    let json: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("stats JSON does not parse ({e}):\n{line}"));
    let faults = json["faults"].clone();
    Run { outcome, written, block_pages, faults }
}

/// The run that allocates nothing: the program's own faults and the
/// allocator's start-up.
fn baseline() -> &'static Run {
    static BASE: OnceLock<Run> = OnceLock::new();
    BASE.get_or_init(|| run_faults(&["none", "none"], &[]))
}

/// Runs `tier` with each way of touching and holds the view against the
/// kernel.
fn check_tier(tier: &str) {
    let base = baseline();
    for touch in ["all", "quarter", "none"] {
        let r = run_faults(&[tier, touch], &[]);
        let kernel = r.get("minflt") - base.get("minflt");
        let observed = r.get("observed") - base.get("observed");
        let predicted = r.get("predicted") - base.get("predicted");
        let tier_observed = r.tier("observed_by_tier", tier);
        eprintln!(
            "{tier} {touch}: written {}, kernel {kernel}, observed {observed} ({tier} {tier_observed}), predicted {predicted}",
            r.written
        );
        // The allocator's faults, as the kernel counted them: within 10 %
        // (and a few pages: the program's own faults vary by a handful
        // from run to run).
        let allowed = (kernel.abs() / 10).max(32);
        assert!(
            (observed - kernel).abs() <= allowed,
            "{tier} {touch}: observed {observed} faults, the kernel {kernel} (allowed {allowed})\n{}",
            r.outcome.report()
        );
        // The tier's own figure is the pages written; a slab object's
        // first page is written by the allocator itself when the object
        // comes off its free list, which the kernel counts as well.
        let extra = if tier == "slab" { PAGES / r.block_pages } else { 0 };
        assert!(
            tier_observed >= r.written && tier_observed <= r.written.max(extra) + r.written.max(extra) / 10 + 32,
            "{tier} {touch}: {tier_observed} faults observed in the tier for {} pages written",
            r.written
        );
        // The prediction counts every page handed out: an upper bound.
        assert!(predicted >= PAGES && predicted >= observed, "{tier} {touch}: predicted {predicted}, observed {observed}");
        // Handed out now = observed resident + never touched.
        let (handed, untouched) = (r.tier("handed_pages", tier), r.tier("untouched_pages", tier));
        assert!(handed >= PAGES, "{tier} {touch}: {handed} pages handed out");
        assert!(
            (handed - untouched - tier_observed).abs() <= 32,
            "{tier} {touch}: {handed} handed out, {untouched} untouched, {tier_observed} observed"
        );
        assert_eq!(r.get("outside"), r.get("minflt") - r.get("observed"), "outside = minflt - observed");
    }
}

#[test]
fn large_blocks_faults_match_the_kernel() {
    check_tier("large");
}

#[test]
fn page_runs_faults_match_the_kernel() {
    check_tier("pages");
}

#[test]
fn slabs_faults_match_the_kernel() {
    check_tier("slab");
}

/// 32 MiB of page runs written, freed, given back with `malloc_trim(0)`,
/// then allocated and written again: the kernel counts both rounds, so
/// must the view, and the second round's faults on given-back pages are
/// refaults.
#[test]
fn refaults_after_give_back_are_counted() {
    let base = baseline();
    let r = run_faults(&["refault"], &[]);
    let kernel = r.get("minflt") - base.get("minflt");
    let observed = r.get("observed") - base.get("observed");
    let refaults = r.tier("refaults_by_tier", "pages");
    eprintln!("refault: written {}, kernel {kernel}, observed {observed}, refaults {refaults}", r.written);
    assert!(r.get("released_bytes") >= PAGES * 4096, "malloc_trim gave back {} bytes", r.get("released_bytes"));
    assert!(kernel >= r.written, "the kernel counted {kernel} faults for {} pages written", r.written);
    assert!((observed - kernel).abs() <= kernel / 10, "observed {observed}, the kernel {kernel}\n{}", r.outcome.report());
    // Only the second round can refault, and it lands mostly where the
    // first round was (some pages of it elsewhere: fresh, not refaults).
    assert!((PAGES / 2..=PAGES).contains(&refaults), "{refaults} refaults for {PAGES} pages given back and written again");
    assert!(r.get("refaults") >= refaults);
}

/// Threads that come and go, as mleak's: each new thread's first `calloc`
/// and `free` fault in no more pages than glibc's malloc does in the same
/// program, under the default build and the secure one. The thread
/// cache's static TLS (and the secure build's quarantine) and the depth
/// of that first call all land on the pages below glibc's thread
/// descriptor, which a cached stack gets back untouched only down to
/// where the last thread went: a cache of 5.4 KiB in TLS, a refill 1.4
/// KiB deep, or a quarantine of 608 bytes in TLS, took 1.5 times glibc's
/// faults here.
#[test]
fn new_threads_fault_no_more_pages_than_under_glibc() {
    let faults = |preload: Option<std::path::PathBuf>| -> i64 {
        let mut cmd = Command::new(program());
        clean_malloc_env(&mut cmd);
        cmd.arg("threads");
        if let Some(lib) = preload {
            cmd.env("LD_PRELOAD", lib);
        }
        let outcome = run(cmd, HANG_GUARD);
        assert!(outcome.success(), "{}", outcome.report());
        let line = outcome.stdout.lines().find_map(|l| l.strip_prefix("thread_faults ").map(str::to_owned));
        line.and_then(|v| v.trim().parse().ok()).unwrap_or_else(|| panic!("no `thread_faults` line:\n{}", outcome.report()))
    };
    let glibc = faults(None);
    assert!(glibc > 0, "glibc's run counted no faults");
    for lib in [library(), common::secure_library()] {
        let ours = faults(Some(lib.clone()));
        eprintln!("2500 threads: glibc {glibc} faults, {} {ours}", lib.display());
        assert!(ours * 10 <= glibc * 11, "{}: {ours} faults against glibc's {glibc} for 2500 threads", lib.display());
    }
}

/// The text view names each figure and says what it means; the figures
/// of a quarter-touched run land in the right columns.
#[test]
fn the_text_view_says_what_each_number_means() {
    let mut cmd = Command::new(program());
    clean_malloc_env(&mut cmd);
    cmd.args(["large", "quarter"]).env("LD_PRELOAD", library()).env("BUDDYSLAB_STATS", "1");
    let out = run(cmd, HANG_GUARD);
    assert!(out.success(), "{}", out.report());
    let err = &out.stderr;
    let header = err.lines().find(|l| l.starts_with("# tier")).unwrap_or_else(|| panic!("no header:\n{err}"));
    let columns: Vec<&str> = header.split_whitespace().skip(2).collect();
    assert_eq!(columns, ["predicted", "observed", "refaults", "handed_pages", "untouched"]);
    for meaning in ["# predicted:", "# observed:", "# refaults:", "# untouched:"] {
        assert!(err.lines().any(|l| l.starts_with(meaning)), "no {meaning} line:\n{err}");
    }
    let row: Vec<i64> = err
        .lines()
        .find(|l| l.starts_with("large "))
        .unwrap_or_else(|| panic!("no large row:\n{err}"))
        .split_whitespace()
        .skip(1)
        .map(|f| f.parse().unwrap())
        .collect();
    let (predicted, observed, refaults, handed, untouched) = (row[0], row[1], row[2], row[3], row[4]);
    assert_eq!((predicted, observed, refaults, handed, untouched), (PAGES, PAGES / 4, 0, PAGES, PAGES * 3 / 4), "{err}");
    let figure = |name: &str| -> i64 {
        let line = err.lines().find(|l| l.starts_with(name)).unwrap_or_else(|| panic!("no {name} line:\n{err}"));
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    };
    let total_observed: i64 = err.lines().find(|l| l.starts_with("total ")).unwrap().split_whitespace().nth(2).unwrap().parse().unwrap();
    assert_eq!(figure("outside "), figure("ru_minflt ") - total_observed);
}

/// The heap map draws the page runs' never-written three quarters pale
/// and counts them under the legend.
#[test]
fn the_heap_map_draws_never_touched_pages_pale() {
    let dir = fresh_dir("faults", "heapmap");
    let svg_path = dir.join("map.svg");
    let r = run_faults(&["pages", "quarter"], &[("BUDDYSLAB_HEAPMAP", svg_path.to_str().unwrap())]);
    let svg = std::fs::read_to_string(&svg_path).unwrap_or_else(|e| panic!("no heap map ({e}):\n{}", r.outcome.report()));
    let line = svg.lines().find(|l| l.contains("data-figure=\"untouched\"")).unwrap_or_else(|| panic!("no untouched line"));
    let text = line.split('>').nth(1).unwrap().split('<').next().unwrap();
    let pale: i64 = text.rsplit(": ").next().unwrap().trim_end_matches(" pages").parse().unwrap();
    let drawn: i64 = svg
        .lines()
        .filter(|l| l.contains("data-untouched=\"1\""))
        .map(|l| l.split("width=\"").nth(1).unwrap().split('"').next().unwrap().parse::<i64>().unwrap())
        .sum();
    let never = r.tier("untouched_pages", "pages");
    eprintln!("heap map: {pale} pale pages counted, {drawn} drawn; the view's untouched page-run pages {never}");
    assert_eq!(pale, drawn);
    assert!((never - PAGES * 3 / 4).abs() <= 32, "{never} page-run pages never touched");
    assert!(pale >= never, "{pale} pale pages, {never} page-run pages never touched");
}
