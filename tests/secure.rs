//! What the secure build (`libbuddyslab_secure.so`) stops, and what the
//! default build (`libbuddyslab.so`) does with the same errors: each case
//! of `tests/c/secure.c` runs as a child under each library, and the
//! outcome must be the one the table below (and the README's, which is
//! copied from it) says. A caught error is `SIGABRT` after exactly one line
//! `buddyslab: <call>: <reason>: <address>`, naming the address the child
//! announced.
//!
//! Needs both libraries: run `cargo build --release` first.

mod common;

use common::{compile_c, library, run, secure_library, Outcome};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

/// Far above any normal run (seconds); only stops a hang.
const HANG_GUARD: Duration = Duration::from_secs(120);

/// What a library does with one error.
#[derive(Clone, Copy, Debug)]
enum Expect {
    /// `SIGABRT` after one line naming the call, a reason (one of the
    /// `|`-separated alternatives) and the address.
    Caught(&'static str, &'static str),
    /// The program runs to its end (exit 3, "not caught").
    Silent,
    /// Not caught: silent, or killed by `SIGSEGV` without a message,
    /// depending on what the kernel mapped next to the block.
    NotCaught,
}

use Expect::{Caught, NotCaught, Silent};

/// Every case of `secure.c`: the default build's outcome, the secure
/// build's.
const CASES: &[(&str, Expect, Expect)] = &[
    ("double-free-small", Caught("free()", "double free"), Caught("free()", "double free")),
    ("double-free-pages", Caught("free()", "double free"), Caught("free()", "double free")),
    ("double-free-large", Caught("free()", "double free"), Caught("free()", "double free")),
    ("free-neighbour", Silent, Caught("free()", "invalid pointer")),
    ("realloc-freed", Caught("realloc()", "double free"), Caught("realloc()", "use after free")),
    (
        "usable-freed",
        Caught("malloc_usable_size()", "double free"),
        Caught("malloc_usable_size()", "use after free"),
    ),
    ("realloc-foreign", Caught("realloc()", "invalid pointer"), Caught("realloc()", "invalid pointer")),
    (
        "usable-foreign",
        Caught("malloc_usable_size()", "invalid pointer"),
        Caught("malloc_usable_size()", "invalid pointer"),
    ),
    ("uaf-write-small", Silent, Caught("free()", "write after free")),
    ("uaf-write-small-threads", Silent, Caught("free()", "write after free")),
    ("uaf-link-small", Caught("malloc()", "corrupted free list"), Caught("free()", "write after free")),
    ("uaf-write-large", NotCaught, Caught("SIGSEGV", "use after free")),
    ("uaf-read-large", NotCaught, Caught("SIGSEGV", "use after free")),
    ("uaf-write-pages", Silent, Caught("free()", "write after free")),
    ("uaf-read-pages", Silent, Silent),
    ("overflow-1", Silent, Caught("free()", "heap overflow")),
    ("overflow-8", Silent, Caught("free()", "heap overflow")),
    ("overflow-1-tight", Silent, Caught("free()", "heap overflow")),
    ("overflow-large", Silent, Caught("free()", "heap overflow")),
    ("overflow-large-guard", NotCaught, Caught("SIGSEGV", "protected page")),
    ("overflow-reused-guard", NotCaught, Caught("SIGSEGV", "protected page")),
    ("overflow-pages-guard", Silent, Caught("SIGSEGV", "protected page")),
    ("overflow-grown-guard", NotCaught, Caught("SIGSEGV", "protected page")),
    ("zero-write", Silent, Caught("SIGSEGV", "zero-size")),
    ("zero-read", Silent, Caught("SIGSEGV", "zero-size")),
];

fn program() -> &'static PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| compile_c("secure", "secure"))
}

fn run_case(case: &str, lib: &Path) -> Outcome {
    let mut cmd = Command::new(program());
    cmd.arg(case).env("LD_PRELOAD", lib);
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            let zero = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            libc::setrlimit(libc::RLIMIT_CORE, &zero);
            Ok(())
        });
    }
    run(cmd, HANG_GUARD)
}

fn check(case: &str, lib: &Path, expect: Expect) {
    let outcome = run_case(case, lib);
    let report = format!("case {case} under {}:\n{}", lib.display(), outcome.report());
    let signal = outcome.status.and_then(|s| s.signal());
    let code = outcome.status.and_then(|s| s.code());
    let ours: Vec<&str> = outcome.stderr.lines().filter(|l| l.starts_with("buddyslab:")).collect();
    match expect {
        Caught(call, reason) => {
            assert_eq!(signal, Some(libc::SIGABRT), "expected SIGABRT naming {reason:?}: {report}");
            let addr = outcome
                .stdout
                .lines()
                .find_map(|l| l.strip_prefix("addr="))
                .unwrap_or_else(|| panic!("the child announced no address: {report}"));
            assert_eq!(ours.len(), 1, "expected one buddyslab line: {report}");
            let line = ours[0];
            assert!(line.starts_with(&format!("buddyslab: {call}: ")), "does not name {call}: {report}");
            assert!(reason.split('|').any(|r| line.contains(r)), "does not say {reason:?}: {report}");
            assert!(line.ends_with(&format!(": {addr}")), "does not name {addr}: {report}");
        }
        Silent => {
            assert_eq!(code, Some(3), "expected the error to go through silently: {report}");
            assert!(ours.is_empty(), "expected no message: {report}");
        }
        NotCaught => {
            assert!(
                code == Some(3) || signal == Some(libc::SIGSEGV),
                "expected silence or SIGSEGV: {report}"
            );
            assert!(ours.is_empty(), "expected no message: {report}");
        }
    }
}

#[test]
fn secure_build_stops_every_error() {
    let lib = secure_library();
    for &(case, _, secure) in CASES {
        check(case, &lib, secure);
    }
}

#[test]
fn default_build_does_what_the_readme_says() {
    let lib = library();
    for &(case, default, _) in CASES {
        check(case, &lib, default);
    }
}

/// The README's table lists every case with the outcomes above.
#[test]
fn readme_table_matches() {
    let readme = std::fs::read_to_string(Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md")).expect("README.md");
    let word = |e: Expect| match e {
        Caught(..) => "caught",
        Silent => "silent",
        NotCaught => "not caught",
    };
    for &(case, default, secure) in CASES {
        let row = readme
            .lines()
            .find(|l| l.starts_with(&format!("| `{case}`")))
            .unwrap_or_else(|| panic!("README.md has no row for `{case}`"));
        let cells: Vec<&str> = row.split('|').map(str::trim).collect();
        // | case | what | glibc | default | secure | ...
        assert!(
            cells.len() > 5 && cells[4].starts_with(word(default)) && cells[5].starts_with(word(secure)),
            "README row for {case} should say {} (default) and {} (secure): {row}",
            word(default),
            word(secure)
        );
    }
}

/// Fresh slots of a slab come out in no fixed order in the secure build:
/// 32 blocks of one size, allocated back to back, are not all at one
/// stride from each other.
#[test]
fn secure_slot_order_is_not_sequential() {
    let lib = secure_library();
    let outcome = run_layout(&lib);
    let addresses: Vec<usize> = outcome
        .stdout
        .split_whitespace()
        .filter_map(|w| usize::from_str_radix(w.trim_start_matches("0x"), 16).ok())
        .collect();
    assert_eq!(addresses.len(), 32, "{}", outcome.report());
    let strides: Vec<isize> = addresses.windows(2).map(|w| w[1] as isize - w[0] as isize).collect();
    assert!(
        strides.windows(2).any(|w| w[0] != w[1]),
        "32 blocks at one stride {}: {}",
        strides[0],
        outcome.report()
    );
}

fn run_layout(lib: &Path) -> Outcome {
    let mut cmd = Command::new(program());
    cmd.arg("layout").env("LD_PRELOAD", lib);
    let outcome = run(cmd, HANG_GUARD);
    assert!(outcome.success(), "{}", outcome.report());
    outcome
}

/// One `cargo build --release` gives both libraries, and only the secure
/// one carries the secure layer (its messages are in its read-only data).
#[test]
fn only_the_secure_library_has_the_secure_layer() {
    let marker: &[u8] = b"write after free (quarantined object modified)";
    let holds = |lib: &Path| {
        let bytes = std::fs::read(lib).unwrap_or_else(|e| panic!("read {}: {e}", lib.display()));
        bytes.windows(marker.len()).any(|w| w == marker)
    };
    assert!(holds(&secure_library()), "the secure library lacks the secure layer");
    assert!(!holds(&library()), "the default library carries the secure layer");
}
