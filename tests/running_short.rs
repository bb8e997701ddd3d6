//! Running short of memory: under `RLIMIT_AS` close to the working set
//! `malloc` returns NULL with `ENOMEM` and the heap stays usable; a program
//! break that cannot grow sends the allocator to `mmap`, silently; from
//! Rust, running out reaches `handle_alloc_error` through Rust's own path
//! only. Each case runs in a child process.
//!
//! Needs `target/release/libbuddyslab.so`: run
//! `cargo build --release && cargo test --release --workspace`.

mod common;

use buddyslab::BuddySlab;
use common::{compile_c, library, run, Outcome};
use std::alloc::{GlobalAlloc, Layout};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::Command;
use std::sync::OnceLock;
use std::time::Duration;

#[global_allocator]
static GLOBAL: BuddySlab = BuddySlab;

/// Far above any normal run (seconds); only stops a hang.
const HANG_GUARD: Duration = Duration::from_secs(300);

/// Turns this test binary into the out-of-memory child (not a
/// `BUDDYSLAB_*` name: the allocator reports unknown ones of those).
const CHILD_VAR: &str = "RUNNING_SHORT_CHILD";

fn short(mode: &str) -> Outcome {
    let lib = library();
    static EXE: OnceLock<PathBuf> = OnceLock::new();
    let exe = EXE.get_or_init(|| compile_c("short", "short"));
    let mut cmd = Command::new(exe);
    cmd.arg(mode).env("LD_PRELOAD", &lib);
    let outcome = run(cmd, HANG_GUARD);
    assert!(
        outcome.success() && outcome.stdout.contains("all checks passed"),
        "short {mode} failed under LD_PRELOAD={}:\n{}",
        lib.display(),
        outcome.report()
    );
    assert!(
        !outcome.stderr.contains("buddyslab:"),
        "short {mode}: the allocator printed something (it must cope silently):\n{}",
        outcome.report()
    );
    eprint!("{}", outcome.stdout);
    outcome
}

#[test]
fn rlimit_as_gives_enomem_and_recovers() {
    short("rlimit");
}

#[test]
fn blocked_brk_falls_back_to_mmap() {
    short("brk-blocked");
}

fn vm_size_bytes() -> u64 {
    let statm = std::fs::read_to_string("/proc/self/statm").expect("read /proc/self/statm");
    let pages: u64 = statm.split_whitespace().next().and_then(|v| v.parse().ok()).expect("statm format");
    // SAFETY: sysconf takes no pointers.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as u64;
    pages * page
}

/// The child: limits its address space, sees null from the allocator
/// (`try_reserve` fails, `GlobalAlloc::alloc` returns null), then asks for
/// a block that cannot be had through `vec!`, which must end in Rust's
/// `handle_alloc_error` ("memory allocation of N bytes failed", abort).
#[test]
fn oom_child() {
    if std::env::var_os(CHILD_VAR).is_none() {
        return;
    }
    let limit = vm_size_bytes() + (64 << 20);
    let rl = libc::rlimit { rlim_cur: limit, rlim_max: libc::RLIM_INFINITY };
    // SAFETY: a plain system call on a valid struct.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_AS, &rl) }, 0, "setrlimit");

    let mut v: Vec<u8> = Vec::new();
    assert!(v.try_reserve(256 << 20).is_err(), "try_reserve(256 MiB) under a 64 MiB limit succeeded");
    let layout = Layout::from_size_align(256 << 20, 16).unwrap();
    // SAFETY: a valid layout; a non-null block would be freed at once.
    unsafe {
        let p = GLOBAL.alloc(layout);
        assert!(p.is_null(), "GlobalAlloc::alloc(256 MiB) under a 64 MiB limit succeeded");
    }
    // Fill the limit with small blocks through the Rust face: null, no abort.
    let small = Layout::from_size_align(4000, 8).unwrap();
    let mut held = Vec::with_capacity(1 << 16);
    loop {
        // SAFETY: a valid layout.
        let p = unsafe { GLOBAL.alloc(small) };
        if p.is_null() || held.len() == held.capacity() {
            break;
        }
        held.push(p);
    }
    assert!(held.len() < held.capacity(), "64 K blocks of 4000 bytes fitted under a 64 MiB limit");
    for p in held.drain(..) {
        // SAFETY: each came from GLOBAL.alloc(small).
        unsafe { GLOBAL.dealloc(p, small) };
    }
    println!("null seen through try_reserve and GlobalAlloc; now vec! of 256 MiB");
    let big = vec![1u8; 256 << 20];
    println!("not caught: a 256 MiB vec exists ({} bytes)", big.len());
    std::process::exit(3);
}

#[test]
fn rust_out_of_memory_reaches_handle_alloc_error() {
    let exe = std::env::current_exe().expect("current_exe");
    let mut cmd = Command::new(exe);
    cmd.args(["oom_child", "--exact", "--nocapture", "--test-threads=1"]).env(CHILD_VAR, "1");
    // SAFETY: setrlimit is async-signal-safe and touches only the child.
    unsafe {
        cmd.pre_exec(|| {
            let zero = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            libc::setrlimit(libc::RLIMIT_CORE, &zero);
            Ok(())
        });
    }
    let outcome = run(cmd, HANG_GUARD);
    let report = outcome.report();
    assert!(
        outcome.stdout.contains("null seen through try_reserve and GlobalAlloc"),
        "the child did not get null from the allocator:\n{report}"
    );
    assert_eq!(
        outcome.status.and_then(|s| s.signal()),
        Some(libc::SIGABRT),
        "expected Rust's allocation-failure abort:\n{report}"
    );
    assert!(
        outcome.stderr.contains(&format!("memory allocation of {} bytes failed", 256 << 20)),
        "Rust's handle_alloc_error message is missing:\n{report}"
    );
    assert!(!outcome.stderr.contains("buddyslab:"), "the allocator itself complained:\n{report}");
}
