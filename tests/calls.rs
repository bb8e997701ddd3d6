//! The totals' calls per entry point against a program that knows its
//! own: `tests/c/calls.c` makes rounds of `malloc`, `free`, `calloc`,
//! `realloc` and the aligned family on four threads, over every tier,
//! under `LD_PRELOAD=libbuddyslab.so` with `BUDDYSLAB_STATS=json`. The
//! counts at exit less those of a run with no rounds (the C library's own
//! calls, the threads' start) must be exactly the program's. `malloc` and
//! `free` are counted by the thread caches' bins at no cost to their fast
//! paths (see `slab::magazine`), so this is what catches a bin move that a
//! slow path forgot to settle, a thread whose counts never reach the
//! totals, or a `realloc` whose blocks are taken for `malloc`'s.
//!
//! Needs `target/release/libbuddyslab.so`: run
//! `cargo build --release && cargo test --release --workspace`.

mod common;

use common::{clean_malloc_env, compile_c, library, run};
use serde_json::Value;
use std::process::Command;
use std::time::Duration;

/// Far above any normal run (seconds); only stops a hang.
const HANG_GUARD: Duration = Duration::from_secs(300);

const NAMES: [&str; 5] = ["malloc", "free", "calloc", "realloc", "aligned"];

/// Runs `calls THREADS ROUNDS`: the calls it says it made, and the
/// totals' calls at exit.
fn counts(exe: &std::path::Path, rounds: u32) -> ([i64; 5], [i64; 5]) {
    let mut cmd = Command::new(exe);
    clean_malloc_env(&mut cmd);
    cmd.args(["3", &rounds.to_string()]).env("LD_PRELOAD", library()).env("BUDDYSLAB_STATS", "json");
    let outcome = run(cmd, HANG_GUARD);
    assert!(outcome.success(), "{}", outcome.report());
    let said: Vec<i64> = outcome.stdout.split_whitespace().skip(1).step_by(2).map(|n| n.parse().unwrap()).collect();
    assert_eq!(said.len(), 5, "{}", outcome.report());
    let line = outcome.stderr.lines().rev().find(|l| l.starts_with('{'));
    let line = line.unwrap_or_else(|| panic!("no JSON object on stderr:\n{}", outcome.report()));
    let json: Value = serde_json::from_str(line).unwrap_or_else(|e| panic!("stats JSON does not parse ({e}):\n{line}"));
    let calls = &json["totals"]["calls"];
    let seen = NAMES.map(|n| calls[n].as_i64().unwrap_or_else(|| panic!("no `{n}` in {calls}")));
    (said.try_into().unwrap(), seen)
}

#[test]
fn calls_per_entry_point_are_exactly_the_programs() {
    let exe = compile_c("calls", "calls");
    let (none, base) = counts(&exe, 0);
    assert_eq!(none, [0; 5]);
    let (said, seen) = counts(&exe, 300);
    let delta: Vec<i64> = seen.iter().zip(base).map(|(s, b)| s - b).collect();
    assert_eq!(delta, said.to_vec(), "calls counted less the baseline's ({base:?}), in {NAMES:?} order");
}
