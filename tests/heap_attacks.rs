//! The classic free-list attack must never work: a chosen address written
//! into the first word of a freed object is never returned by `malloc`;
//! the process stops with "corrupted free list" first. One case per place
//! a freed object can sit (a thread's bin, its slab after `malloc_trim`, a
//! CPU depot after its thread exited), one that first tries to learn the
//! link key from a fresh object, and a check that no object is handed out
//! with its link or free mark still in it.
//!
//! Each case runs `tests/c/heapattack.c` under `LD_PRELOAD` many times:
//! the link key is random per process, so one lucky process would be a
//! hole. Runs against whichever build of `libbuddyslab.so` sits beside the
//! test binary (the default one, and the `hardened` one in `.ci/run`).

mod common;

use common::{compile_c, library, run, Outcome};
use std::os::unix::process::ExitStatusExt;
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// Far above any normal run; only stops a hang.
const HANG_GUARD: Duration = Duration::from_secs(60);
/// Processes per case (each draws its own key).
const RUNS: usize = 30;

fn program() -> &'static PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| compile_c("heapattack", "heapattack"))
}

fn attack(mode: &str) -> Outcome {
    let mut cmd = Command::new(program());
    common::clean_malloc_env(&mut cmd);
    cmd.arg(mode).env("LD_PRELOAD", library());
    run(cmd, HANG_GUARD)
}

/// No run may return the target. Every run must stop by `SIGABRT` after
/// one line `buddyslab: malloc(): corrupted free list: <addr>` naming the
/// poisoned object, except where the program saw its poisoned object
/// handed out again with the poison never followed (the object ended a
/// list whose length was known, and splicing the list wrote a fresh link
/// over the poison): allowed in a few runs of `slab`, where a slab's free
/// list is taken whole; `discarded_allowed` says whether it may happen.
fn must_be_caught(mode: &str, discarded_allowed: bool) {
    let mut caught = 0;
    for i in 0..RUNS {
        let outcome = attack(mode);
        let report = outcome.report();
        assert!(!outcome.stdout.contains("exploited"), "run {i}: the attack worked:\n{report}");
        if discarded_allowed && outcome.stdout.contains("discarded:") && outcome.status.and_then(|s| s.code()) == Some(5) {
            continue;
        }
        assert_eq!(
            outcome.status.and_then(|s| s.signal()),
            Some(libc::SIGABRT),
            "run {i}: expected SIGABRT ({}):\n{report}",
            outcome.describe_status()
        );
        let addr = outcome
            .stdout
            .lines()
            .find_map(|l| l.strip_prefix("addr="))
            .unwrap_or_else(|| panic!("run {i}: the child did not announce its address:\n{report}"));
        let ours: Vec<&str> = outcome.stderr.lines().filter(|l| l.starts_with("buddyslab:")).collect();
        assert_eq!(
            ours,
            [format!("buddyslab: malloc(): corrupted free list: {addr}")],
            "run {i}: expected exactly the corrupted-list line:\n{report}"
        );
        caught += 1;
    }
    assert!(caught * 2 > RUNS, "{mode}: only {caught} of {RUNS} runs followed the poisoned link");
}

#[test]
fn poisoned_object_in_a_thread_bin_is_caught() {
    must_be_caught("bin", false);
}

#[test]
fn poisoned_object_back_in_its_slab_is_caught() {
    must_be_caught("slab", true);
}

#[test]
fn poisoned_object_of_an_exited_thread_is_caught() {
    must_be_caught("thread-exit", false);
}

#[test]
fn a_fresh_object_reveals_no_key() {
    let outcome = attack("learn-key");
    assert!(
        outcome.stdout.contains("leaked=0\n") || outcome.stdout.contains("leaked=0x0\n"),
        "a fresh object's first word still holds its link:\n{}",
        outcome.report()
    );
    must_be_caught("learn-key", false);
}

#[test]
fn objects_are_handed_out_with_link_and_mark_cleared() {
    let outcome = attack("fresh-words");
    assert!(outcome.success(), "{}", outcome.report());
}
