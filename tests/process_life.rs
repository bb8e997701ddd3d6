//! A process's life around the allocator, under `LD_PRELOAD`: `fork` while
//! other threads allocate, thousands of short-lived threads whose objects
//! outlive them, `dlopen`/`dlclose` of a library that allocates, handlers
//! that run after `main` returns, `setenv` after start, `posix_spawn` and
//! `exec`, and a signal handler that frees objects. Each case is a mode of
//! `tests/c/lifecycle.c`, which checks itself and prints "all checks
//! passed".
//!
//! Needs `target/release/libbuddyslab.so`: run
//! `cargo build --release && cargo test --release --workspace`.

mod common;

use common::{compile_c, library, run, scratch_dir, Outcome};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// Far above any normal run (seconds); only stops a hang.
const HANG_GUARD: Duration = Duration::from_secs(300);

fn lifecycle_program() -> &'static PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| compile_c("lifecycle", "lifecycle"))
}

/// Compiles `tests/c/dlib.c` into a shared library for the dlopen case.
fn dlib() -> PathBuf {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c/dlib.c");
    let out = scratch_dir("c-programs").join("libdlib.so");
    let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
    let result = Command::new(cc)
        .args(["-O1", "-g", "-shared", "-fPIC", "-Wall", "-Wextra", "-o"])
        .arg(&out)
        .arg(&src)
        .env_remove("LD_PRELOAD")
        .output()
        .expect("run the C compiler (apt-get install gcc)");
    assert!(
        result.status.success(),
        "compiling {} failed:\n{}",
        src.display(),
        String::from_utf8_lossy(&result.stderr)
    );
    out
}

/// Runs `lifecycle <args>` preloaded; expects exit 0 and "all checks passed".
fn lifecycle(args: &[&str]) -> Outcome {
    let lib = library();
    let mut cmd = Command::new(lifecycle_program());
    cmd.args(args).env("LD_PRELOAD", &lib);
    let outcome = run(cmd, HANG_GUARD);
    assert!(
        outcome.success() && outcome.stdout.contains("all checks passed"),
        "lifecycle {} failed under LD_PRELOAD={}:\n{}",
        args.join(" "),
        lib.display(),
        outcome.report()
    );
    assert!(
        !outcome.stderr.contains("buddyslab:"),
        "lifecycle {}: the allocator complained:\n{}",
        args.join(" "),
        outcome.report()
    );
    eprint!("{}", outcome.stdout);
    outcome
}

#[test]
fn fork_under_load() {
    lifecycle(&["fork-load", "200"]);
}

#[test]
fn ten_thousand_threads_churn() {
    lifecycle(&["churn", "10000"]);
}

#[test]
fn dlopen_dlclose_allocating_library() {
    let lib = dlib();
    lifecycle(&["dlopen", lib.to_str().expect("UTF-8 path"), "200"]);
}

#[test]
fn handlers_after_main() {
    let outcome = lifecycle(&["atexit"]);
    for who in ["atexit handler", "on_exit handler", "destructor", "thread-key destructor"] {
        assert!(
            outcome.stdout.contains(&format!("{who}: ok")),
            "the {who} did not report (it must malloc/free and print \"{who}: ok\"):\n{}",
            outcome.report()
        );
    }
}

#[test]
fn setenv_posix_spawn_and_exec() {
    // argv[0] is the absolute path: the program spawns and execs itself.
    lifecycle(&["env-spawn"]);
}

#[test]
fn signal_handler_frees_its_objects() {
    lifecycle(&["signal", "2000"]);
}
