//! The C face under `LD_PRELOAD`: the C programs in `tests/c/` (and one
//! C++ program) are compiled with `cc -O1 -g -pthread` (`c++` for C++)
//! and run with `LD_PRELOAD=libbuddyslab.so`.
//! Each program checks itself and exits non-zero, naming the failed check
//! on stderr, when something is wrong.
//!
//! Needs `target/release/libbuddyslab.so`: run
//! `cargo build --release && cargo test --release --workspace`.

mod common;

use common::{clean_malloc_env, compile_c, library, run, Outcome};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

/// Far above any normal run (seconds); only stops a hang.
const HANG_GUARD: Duration = Duration::from_secs(300);

fn run_program(exe: &Path, args: &[&str], preload: Option<&Path>) -> Outcome {
    let mut cmd = Command::new(exe);
    cmd.args(args);
    if let Some(lib) = preload {
        cmd.env("LD_PRELOAD", lib);
    } else {
        clean_malloc_env(&mut cmd);
    }
    run(cmd, HANG_GUARD)
}

/// Compiles `tests/c/<source>.c`, runs it preloaded, and expects exit 0 and
/// "all checks passed" on stdout. On failure, runs it again on plain glibc
/// so the message says whether the program or the allocator is at fault.
fn check_c_program(source: &str, output: &str, args: &[&str]) {
    let lib = library();
    let exe = compile_c(source, output);
    let outcome = run_program(&exe, args, Some(&lib));
    if outcome.success() && outcome.stdout.contains("all checks passed") {
        eprint!("{}", outcome.stdout);
        return;
    }
    let plain = run_program(&exe, args, None);
    let verdict = if plain.success() {
        "the same program passes on plain glibc, so the fault is in libbuddyslab.so"
    } else {
        "it fails on plain glibc too, so the test program itself is broken"
    };
    panic!(
        "{source} failed under LD_PRELOAD={}: {verdict}\n\n{}\n\nplain glibc run: {}",
        lib.display(),
        outcome.report(),
        plain.describe_status()
    );
}

/// C++'s `operator new` and `delete`, every form, bound to the library
/// and keeping the standard's failure semantics (handler loop,
/// `std::bad_alloc`), under the default and the secure library.
#[test]
fn cxx_operators() {
    check_c_program("cxx", "cxx", &[]);
    let exe = compile_c("cxx", "cxx-secure");
    let outcome = run_program(&exe, &[], Some(&common::secure_library()));
    assert!(outcome.success() && outcome.stdout.contains("all checks passed"), "{}", outcome.report());
}

#[test]
fn api_edges() {
    check_c_program("api_edges", "api_edges", &[]);
}

#[test]
fn contents() {
    check_c_program("contents", "contents", &[]);
}

#[test]
fn threads_2() {
    check_c_program("threads", "threads-2", &["2"]);
}

#[test]
fn threads_8() {
    check_c_program("threads", "threads-8", &["8"]);
}

/// Every malloc-family symbol resolves to libbuddyslab.so in a preloaded
/// process (one left to glibc means blocks cross between two allocators),
/// and blocks that libc allocates internally can be freed by the program.
#[test]
fn library_is_bound() {
    let lib = library();
    let exe = compile_c("bound", "bound");
    let outcome = run_program(&exe, &[], Some(&lib));
    assert!(
        outcome.success(),
        "bound failed under LD_PRELOAD:\n{}",
        outcome.report()
    );
    let mut unbound = Vec::new();
    let mut seen = 0;
    for line in outcome.stdout.lines() {
        let Some((symbol, object)) = line.strip_prefix("bind ").and_then(|l| l.split_once(' '))
        else {
            continue;
        };
        seen += 1;
        if !object.contains("libbuddyslab") {
            unbound.push(format!("  {symbol} -> {object}"));
        }
    }
    assert_eq!(
        seen, 16,
        "bound printed an unexpected listing:\n{}",
        outcome.stdout
    );
    assert!(
        unbound.is_empty(),
        "under LD_PRELOAD={} these symbols do not come from libbuddyslab.so \
         (\"-\" means nothing defines them):\n{}",
        lib.display(),
        unbound.join("\n")
    );
    assert!(
        outcome.stdout.contains("libc-allocated blocks freed: ok"),
        "bound did not finish freeing libc-allocated blocks:\n{}",
        outcome.report()
    );
}

/// Big blocks: the threshold adapts as glibc's and stops after `mallopt`,
/// released blocks come back resident, `realloc` keeps contents while
/// growing and shrinking, `malloc_trim(0)` gives the cached memory back.
#[test]
fn large_blocks() {
    check_c_program("large", "large", &[]);
}

fn run_large(args: &[&str], env: &[(&str, &str)]) -> Outcome {
    let exe = compile_c("large", &format!("large-{}", args.join("-")));
    let mut cmd = Command::new(&exe);
    cmd.args(args);
    clean_malloc_env(&mut cmd);
    cmd.env("LD_PRELOAD", library());
    for (k, v) in env {
        cmd.env(k, v);
    }
    run(cmd, HANG_GUARD)
}

/// A threshold set from the environment (glibc's name or ours) does not
/// adapt.
#[test]
fn threshold_from_environment_is_fixed() {
    for var in ["MALLOC_MMAP_THRESHOLD_", "BUDDYSLAB_MMAP_THRESHOLD"] {
        let outcome = run_large(&["fixed"], &[(var, "262144")]);
        assert!(
            outcome.success() && outcome.stdout.contains("all checks passed"),
            "with {var}=262144:\n{}",
            outcome.report()
        );
    }
}

/// Freeing a big block twice stops the process with a message naming a
/// double free, whether the first free kept the block cached (20 MiB) or
/// unmapped it (40 MiB, above the largest threshold; the heap remembers
/// recently unmapped starts).
#[test]
fn double_free_of_a_large_block_aborts() {
    use std::os::unix::process::ExitStatusExt;
    for (mib, why) in [("20", "double free"), ("40", "double free (large block already unmapped)")] {
        let outcome = run_large(&["double-free", mib], &[]);
        let signal = outcome.status.and_then(|s| s.signal());
        assert_eq!(signal, Some(libc::SIGABRT), "double free of {mib} MiB:\n{}", outcome.report());
        assert!(
            outcome.stderr.contains("buddyslab: free(): ") && outcome.stderr.contains(why),
            "double free of {mib} MiB: stderr should say {why:?}:\n{}",
            outcome.report()
        );
    }
}
