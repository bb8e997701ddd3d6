//! glibc's malloc knobs under `LD_PRELOAD`: `MALLOC_PERTURB_`,
//! `mallopt(M_PERTURB)` and `GLIBC_TUNABLES`'s `glibc.malloc.perturb` fill
//! blocks as glibc fills them (checked against a glibc run of the same
//! program), `malloc_info` writes well-formed XML, unknown tunables and
//! variables are reported once per process tree, and `BUDDYSLAB_VERBOSE`
//! prints the options in force.
//!
//! Needs `target/release/libbuddyslab.so` (`cargo build --release`).

mod common;

use common::{clean_malloc_env, compile_c, library, run, Outcome};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

const HANG_GUARD: Duration = Duration::from_secs(60);

fn knobs() -> &'static PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| compile_c("knobs", "knobs"))
}

/// Runs `knobs args` with `env`, preloaded with buddyslab or not (glibc).
fn knobs_run(preload: bool, args: &[&str], env: &[(&str, &str)]) -> Outcome {
    let mut cmd = Command::new(knobs());
    clean_malloc_env(&mut cmd);
    cmd.args(args).envs(env.iter().copied());
    if preload {
        cmd.env("LD_PRELOAD", library());
    }
    run(cmd, HANG_GUARD)
}

#[test]
fn malloc_perturb_fills_fresh_blocks_as_glibc_does() {
    let env = [("MALLOC_PERTURB_", "165")];
    let glibc = knobs_run(false, &["fresh", "5a"], &env);
    let ours = knobs_run(true, &["fresh", "5a"], &env);
    assert!(glibc.success(), "glibc itself does not fill with 0x5a:\n{}", glibc.report());
    assert!(ours.success(), "{}", ours.report());
    assert_eq!(ours.stdout, glibc.stdout);
    assert_eq!(ours.stderr, "", "{}", ours.report());
}

#[test]
fn glibc_tunables_perturb_and_mallopt_perturb() {
    let env = [("GLIBC_TUNABLES", "glibc.malloc.perturb=165")];
    let glibc = knobs_run(false, &["fresh", "5a"], &env);
    let ours = knobs_run(true, &["fresh", "5a"], &env);
    assert!(glibc.success(), "{}", glibc.report());
    assert!(ours.success(), "{}", ours.report());
    let glibc = knobs_run(false, &["mallopt"], &[]);
    let ours = knobs_run(true, &["mallopt"], &[]);
    assert!(glibc.success(), "{}", glibc.report());
    assert!(ours.success(), "{}", ours.report());
}

#[test]
fn malloc_perturb_fills_freed_blocks() {
    let ours = knobs_run(true, &["freed", "a5"], &[("MALLOC_PERTURB_", "165")]);
    assert!(ours.success(), "{}", ours.report());
}

#[test]
fn without_perturb_fresh_blocks_are_not_filled() {
    // The check itself can fail: without the variable, fresh memory from
    // the kernel is zero, not 0x5a.
    let ours = knobs_run(true, &["fresh", "5a"], &[]);
    assert!(!ours.success(), "{}", ours.report());
}

/// Parses `xml` with Python's standard XML parser (python3 is one of the
/// test suite's packages); panics with the parser's complaint.
fn assert_well_formed_xml(xml: &str) {
    use std::io::Write as _;
    let mut child = Command::new("python3")
        .args(["-c", "import sys, xml.dom.minidom as m; d = m.parseString(sys.stdin.read()); print(d.documentElement.tagName)"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("python3 (apt-get install python3)");
    child.stdin.take().unwrap().write_all(xml.as_bytes()).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "not well-formed XML:\n{xml}\n{}", String::from_utf8_lossy(&out.stderr));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "malloc");
}

#[test]
fn malloc_info_writes_glibc_shaped_xml() {
    let ours = knobs_run(true, &["info"], &[]);
    assert!(ours.success(), "{}", ours.report());
    let xml = ours.stdout.split_once("mode info\n").expect("mode line").1;
    assert_well_formed_xml(xml);
    for needle in ["<total type=\"mmap\"", "<system type=\"current\"", "<aspace type=\"total\"", "<size from="] {
        assert!(xml.contains(needle), "no {needle} in:\n{xml}");
    }
    // glibc's own output parses the same way: the shapes agree.
    let glibc = knobs_run(false, &["info"], &[]);
    assert!(glibc.success(), "{}", glibc.report());
    assert_well_formed_xml(glibc.stdout.split_once("mode info\n").expect("mode line").1);
}

/// `sh -c 'prog; prog'` with the variable set: the shell and both
/// programs all run buddyslab; only the shell (whose parent, this test,
/// lacks the variable) may report it.
fn reports_in_a_tree(env: &[(&str, &str)], needle: &str) -> usize {
    let mut cmd = Command::new("sh");
    clean_malloc_env(&mut cmd);
    cmd.args(["-c", "/bin/true; /bin/true; /bin/true"]).envs(env.iter().copied()).env("LD_PRELOAD", library());
    let out = run(cmd, HANG_GUARD);
    assert!(out.success(), "{}", out.report());
    out.stderr.matches(needle).count()
}

#[test]
fn unknown_variables_and_tunables_are_reported_once_per_process_tree() {
    assert_eq!(reports_in_a_tree(&[("BUDDYSLAB_NO_SUCH_KNOB", "1")], "unknown variable BUDDYSLAB_NO_SUCH_KNOB"), 1);
    assert_eq!(
        reports_in_a_tree(&[("GLIBC_TUNABLES", "glibc.malloc.tcache_count=0")], "glibc.malloc.tcache_count has no meaning"),
        1
    );
    assert_eq!(reports_in_a_tree(&[("BUDDYSLAB_STATS", "bogus")], "BUDDYSLAB_STATS must be"), 1);
}

#[test]
fn verbose_prints_the_effective_options_and_values_ignore_case() {
    let out = knobs_run(
        true,
        &["fresh", "5a"],
        &[
            ("BUDDYSLAB_VERBOSE", "1"),
            ("BUDDYSLAB_PROF_RATE", "64k"),
            ("GLIBC_TUNABLES", "glibc.malloc.perturb=165:glibc.malloc.mmap_threshold=262144"),
        ],
    );
    assert!(out.success(), "{}", out.report());
    let line = out.stderr.lines().find(|l| l.starts_with("buddyslab: options:")).unwrap_or_else(|| panic!("{}", out.report()));
    assert!(line.contains("perturb=165"), "{line}");
    assert!(line.contains("mmap_threshold=262144 (fixed)"), "{line}");
    assert!(line.contains(" live=off ") && line.contains(" prof=off prof_rate=65536"), "{line}");
    let out = knobs_run(true, &["fresh", "0"], &[("BUDDYSLAB_STATS", "JSON")]);
    assert!(out.stderr.contains("\"version\"") || out.stderr.trim_start().starts_with('{'), "{}", out.report());
}
