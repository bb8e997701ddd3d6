//! Bad frees stop the process: each case runs in a child process, which
//! must die by `SIGABRT` after exactly one line on stderr that names the
//! call, the error and the address.
//!
//! The C cases run `tests/c/badfree.c` under `LD_PRELOAD=libbuddyslab.so`
//! (one mode per case). The Rust cases re-run this test binary, whose
//! global allocator is buddyslab, with `BAD_FREE_CHILD_CASE=<case>`:
//! the `rust_child` entry below then makes that one bad call through
//! `GlobalAlloc`.
//!
//! Needs `target/release/libbuddyslab.so`: run
//! `cargo build --release && cargo test --release --workspace`.

mod common;

use buddyslab::BuddySlab;
use common::{compile_c, library, run, Outcome};
use std::alloc::{GlobalAlloc, Layout};
use std::io::Write as _;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

#[global_allocator]
static GLOBAL: BuddySlab = BuddySlab;

/// Far above any normal run (seconds); only stops a hang.
const HANG_GUARD: Duration = Duration::from_secs(120);

/// The variable that turns this test binary into a bad-free child (not a
/// `BUDDYSLAB_*` name: those are the allocator's options, and it reports
/// unknown ones).
const CHILD_VAR: &str = "BAD_FREE_CHILD_CASE";

/// Compiled once for all the C cases.
fn badfree_program() -> &'static PathBuf {
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    EXE.get_or_init(|| compile_c("badfree", "badfree"))
}

/// No core files from the expected aborts.
fn no_core_dump(cmd: &mut Command) {
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            let zero = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            libc::setrlimit(libc::RLIMIT_CORE, &zero);
            Ok(())
        });
    }
}

/// Checks that `outcome` is an abort with one message line
/// `buddyslab: <call>: <reason...>: <addr>` where `addr` is what the child
/// announced on stdout as `addr=0x...`.
fn expect_abort(outcome: &Outcome, call: &str, reason: &str) {
    let report = outcome.report();
    let signal = outcome.status.and_then(|s| s.signal());
    assert_eq!(
        signal,
        Some(libc::SIGABRT),
        "expected SIGABRT ({}) after a message naming {reason:?}:\n{report}",
        outcome.describe_status()
    );
    let addr = outcome
        .stdout
        .lines()
        .find_map(|l| l.split_once("addr=").map(|(_, a)| a.trim()))
        .unwrap_or_else(|| panic!("the child did not announce its address:\n{report}"));
    let ours: Vec<&str> = outcome
        .stderr
        .lines()
        .filter(|l| l.starts_with("buddyslab:"))
        .collect();
    assert_eq!(ours.len(), 1, "expected exactly one buddyslab line on stderr:\n{report}");
    let line = ours[0];
    assert!(
        line.starts_with(&format!("buddyslab: {call}: ")),
        "the message does not name {call}: {line:?}\n{report}"
    );
    assert!(
        reason.split('|').any(|r| line.contains(r)),
        "the message does not say {reason:?} ('|' separates alternatives): {line:?}\n{report}"
    );
    assert!(
        line.ends_with(&format!(": {addr}")),
        "the message does not end with the address {addr}: {line:?}\n{report}"
    );
}

/// Runs `badfree <mode>` preloaded and checks the abort and its message.
fn c_case(mode: &str, reason: &str) {
    let lib = library();
    let mut cmd = Command::new(badfree_program());
    cmd.arg(mode).env("LD_PRELOAD", &lib);
    no_core_dump(&mut cmd);
    let outcome = run(cmd, HANG_GUARD);
    let call = match mode.split('-').next() {
        Some("free") => "free()",
        Some("realloc") => "realloc()",
        Some("usable") => "malloc_usable_size()",
        _ => panic!("mode {mode} names no call"),
    };
    expect_abort(&outcome, call, reason);
}

const NOT_OURS: &str = "invalid pointer (not allocated by buddyslab)";
const INSIDE_OBJECT: &str = "invalid pointer (inside an object)";
const INSIDE_BLOCK: &str = "invalid pointer (inside a block)";
/// A freed large block is either kept in the mapping cache (its region
/// says so) or unmapped (the heap remembers recent starts).
const LARGE_DOUBLE: &str = "double free or invalid pointer (memory is free)|double free (large block already unmapped)";
/// A freed slab object carries the free mark.
const SMALL_FREED: &str = "double free detected";
const LARGE_FREED: &str = "double free or invalid pointer (memory is free)|invalid pointer (large block already freed)";

// ----------------------------------------------------------------- free

#[test]
fn c_free_small_double() {
    c_case("free-small-double", "double free");
}

#[test]
fn c_free_small_double_with_frees_between() {
    c_case("free-small-double-between", "double free");
}

#[test]
fn c_free_pages_double() {
    c_case("free-pages-double", "double free");
}

#[test]
fn c_free_large_double() {
    // Kept in the mapping cache or unmapped, depending on the threshold.
    c_case("free-large-double", LARGE_DOUBLE);
}

#[test]
fn c_free_stack() {
    c_case("free-stack", NOT_OURS);
}

#[test]
fn c_free_interior_small() {
    c_case("free-interior-small", INSIDE_OBJECT);
}

#[test]
fn c_free_interior_pages() {
    c_case("free-interior-pages", INSIDE_BLOCK);
}

#[test]
fn c_free_interior_large() {
    c_case("free-interior-large", INSIDE_BLOCK);
}

#[test]
fn c_free_mmapped() {
    c_case("free-mmapped", NOT_OURS);
    c_case("free-mmapped-interior", NOT_OURS);
}

#[test]
fn c_free_wild() {
    c_case("free-wild", NOT_OURS);
}

/// An object of another node goes to the thread's remote bin from its
/// page's tag alone (`magazine::free_remote`): the free mark and the slot
/// start are checked on that road too.
#[test]
fn c_free_remote_double() {
    c_case("free-remote-double", "double free");
}

#[test]
fn c_free_remote_interior() {
    c_case("free-remote-interior", INSIDE_OBJECT);
}

// -------------------------------------------------------------- realloc

#[test]
fn c_realloc_bad_pointers() {
    c_case("realloc-stack", NOT_OURS);
    c_case("realloc-interior-small", INSIDE_OBJECT);
    c_case("realloc-interior-pages", INSIDE_BLOCK);
    c_case("realloc-interior-large", INSIDE_BLOCK);
    c_case("realloc-mmapped", NOT_OURS);
    c_case("realloc-mmapped-interior", NOT_OURS);
    c_case("realloc-large-freed", LARGE_FREED);
    // Still on a free list: realloc must not hand it back alive.
    c_case("realloc-small-freed", SMALL_FREED);
}

// --------------------------------------------------- malloc_usable_size

#[test]
fn c_usable_size_bad_pointers() {
    c_case("usable-stack", NOT_OURS);
    c_case("usable-interior-small", INSIDE_OBJECT);
    c_case("usable-interior-pages", INSIDE_BLOCK);
    c_case("usable-interior-large", INSIDE_BLOCK);
    c_case("usable-mmapped", NOT_OURS);
    c_case("usable-mmapped-interior", NOT_OURS);
    c_case("usable-large-freed", LARGE_FREED);
    c_case("usable-small-freed", SMALL_FREED);
}

// ------------------------------------------------------ via GlobalAlloc

/// Runs this binary's `rust_child` test with `case` and checks the abort.
fn rust_case(case: &str, call: &str, reason: &str) {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args(["rust_child", "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD_VAR, case);
    no_core_dump(&mut cmd);
    let outcome = run(cmd, HANG_GUARD);
    expect_abort(&outcome, call, reason);
}

fn announce(p: *mut u8) -> *mut u8 {
    println!("addr={p:p}");
    std::io::stdout().flush().expect("flush stdout");
    std::hint::black_box(p)
}

/// The child side of the GlobalAlloc cases; does nothing in a normal run.
#[test]
fn rust_child() {
    let Ok(case) = std::env::var(CHILD_VAR) else { return };
    let small = Layout::from_size_align(64, 8).unwrap();
    let mid = Layout::from_size_align(200, 8).unwrap();
    let large = Layout::from_size_align(1 << 20, 16).unwrap();
    // SAFETY: deliberately not: each case makes exactly one bad call, which
    // must stop the process before it does any harm.
    unsafe {
        match case.as_str() {
            "small-double" => {
                let p = announce(GLOBAL.alloc(small));
                GLOBAL.dealloc(p, small);
                GLOBAL.dealloc(std::hint::black_box(p), small);
            }
            "large-double" => {
                let p = announce(GLOBAL.alloc(large));
                GLOBAL.dealloc(p, large);
                GLOBAL.dealloc(std::hint::black_box(p), large);
            }
            "stack" => {
                let mut local = [0u8; 64];
                GLOBAL.dealloc(announce(local.as_mut_ptr()), small);
            }
            "interior-small" => {
                let p = GLOBAL.alloc(mid);
                GLOBAL.dealloc(announce(p.add(64)), small);
            }
            "interior-large" => {
                let p = GLOBAL.alloc(large);
                GLOBAL.dealloc(announce(p.add(64)), large);
            }
            "realloc-interior-small" => {
                let p = GLOBAL.alloc(mid);
                let q = GLOBAL.realloc(announce(p.add(64)), small, 32);
                std::hint::black_box(q);
            }
            "free-neighbour" => {
                // Two 16-byte requests whose blocks are adjacent, and a
                // free of the second one less 16 (a pointer adjusted for a
                // header, as glibc's chunks have).
                let tiny = Layout::from_size_align(16, 8).unwrap();
                let mut prev = GLOBAL.alloc(tiny);
                loop {
                    let p = GLOBAL.alloc(tiny);
                    if p as usize == prev as usize + buddyslab::internals::slab::size_of_class(buddyslab::internals::slab::class_of(16)) {
                        GLOBAL.dealloc(announce(p.sub(16)), tiny);
                        break;
                    }
                    prev = p;
                }
            }
            "home-never-handed-out" => {
                // A live 16-byte object, linked to the first slot of its
                // slab that was never handed out, sent home as one batch
                // (as a flush sends a bin's objects): the batch free stops
                // at the second one. Objects come from the slab being
                // carved, so its bump is soon below the slab's 256 slots.
                // (16-byte slots by default, 32 under `hardened`.)
                let tiny = Layout::from_size_align(16, 8).unwrap();
                let slot = buddyslab::internals::slab::size_of_class(buddyslab::internals::slab::class_of(16));
                loop {
                    let p = GLOBAL.alloc(tiny);
                    let slab = buddyslab::internals::slab::cache::slab_of(p);
                    let bump = (*slab).bump as usize;
                    if bump < 4096 / slot {
                        let q = ((p as usize & !4095) + bump * slot) as *mut u8;
                        // The default build names the slot when the batch
                        // reaches it; `hardened` refuses the link to it and
                        // names the object holding the link.
                        if cfg!(feature = "hardened") {
                            announce(p);
                        } else {
                            announce(q);
                        }
                        buddyslab::internals::slab::link::set_next(p, q);
                        buddyslab::internals::slab::free_home(p, 2);
                        break;
                    }
                }
            }
            other => panic!("unknown {CHILD_VAR} case {other}"),
        }
    }
    println!("not caught: {case} returned");
    std::process::exit(3);
}

#[test]
fn rust_dealloc_small_double() {
    rust_case("small-double", "free()", "double free");
}

#[test]
fn rust_dealloc_large_double() {
    rust_case("large-double", "free()", LARGE_DOUBLE);
}

#[test]
fn rust_dealloc_stack() {
    rust_case("stack", "free()", NOT_OURS);
}

#[test]
fn rust_dealloc_interior() {
    rust_case("interior-small", "free()", INSIDE_OBJECT);
    rust_case("interior-large", "free()", INSIDE_BLOCK);
}

#[test]
fn rust_realloc_interior() {
    rust_case("realloc-interior-small", "realloc()", INSIDE_OBJECT);
}

/// A slot never handed out, reaching its slab in a batch (a bin's flush):
/// the batch free checks every object, not just the first of each slab.
#[test]
fn batch_free_of_a_slot_never_handed_out() {
    // `hardened` checks every link's target before following it, and a
    // slot never handed out is no free slot: the link itself is refused.
    #[cfg(feature = "hardened")]
    rust_case("home-never-handed-out", "malloc()", "corrupted free list");
    #[cfg(not(feature = "hardened"))]
    rust_case("home-never-handed-out", "free()", "invalid pointer (slot never handed out)");
}

/// `free(p - 16)` with `p`'s neighbour live 16 bytes below. The default
/// build has 16-byte slots, where that address is the neighbour's own
/// start and its free cannot be told from a legitimate one (no header per
/// object); `hardened` has no 16-byte slots, so the address is inside an
/// object.
#[cfg(feature = "hardened")]
#[test]
fn hardened_free_of_a_live_neighbour_at_minus_16() {
    rust_case("free-neighbour", "free()", INSIDE_OBJECT);
}
