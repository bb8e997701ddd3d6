//! `libbuddyslab.so` linked by GNU ld, rustc's default linker on Linux
//! before 1.90 (the README asks for 1.88 or newer), loads and serves a
//! program. glibc's `atexit` and `pthread_atfork` live in the static
//! `libc_nonshared.a`, which GNU ld searches only where `-lc` stands on
//! its command line, and rustc puts it before the crates' rlibs: a library
//! that called them was left with both undefined, and the loader refused
//! it (`undefined symbol: atexit`), where lld, which searches archives
//! whatever their place, linked it. The library now registers through
//! `__cxa_atexit` and `__register_atfork` (see `os::at_exit`).
//!
//! Builds the C library again with `-C linker-features=-lld` (rustc 1.90
//! and later; older ones use GNU ld already) into a target directory of
//! its own, offline, then runs `tests/c/bound.c` under it with the views
//! printed at exit, which registers an `atexit` handler.

mod common;

use common::{compile_c, run, scratch_dir};
use std::process::Command;
use std::time::Duration;

#[test]
fn the_library_linked_by_gnu_ld_loads_and_serves() {
    let target = scratch_dir("gnu-ld-target");
    let build = Command::new(env!("CARGO"))
        .args(["build", "--release", "--offline", "-p", "buddyslab-cdylib"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("CARGO_TARGET_DIR", &target)
        .env("RUSTFLAGS", "-C linker-features=-lld")
        .env_remove("CARGO_ENCODED_RUSTFLAGS")
        .output()
        .expect("cannot run cargo");
    let stderr = String::from_utf8_lossy(&build.stderr);
    if !build.status.success() && stderr.contains("linker-features") {
        eprintln!("this rustc has no -C linker-features (before 1.90, GNU ld is its default): skipped\n{stderr}");
        return;
    }
    assert!(build.status.success(), "the GNU ld build failed:\n{stderr}");
    let lib = target.join("release/libbuddyslab.so");
    let elf = std::fs::read(&lib).unwrap_or_else(|e| panic!("cannot read {}: {e}", lib.display()));
    // lld signs the objects it links in `.comment`; GNU ld does not.
    assert!(
        !elf.windows(b"Linker: LLD".len()).any(|w| w == b"Linker: LLD"),
        "{} was linked by lld, not GNU ld",
        lib.display()
    );
    let exe = compile_c("bound", "bound-gnu-ld");
    let mut cmd = Command::new(&exe);
    cmd.env("LD_PRELOAD", &lib).env("BUDDYSLAB_STATS", "1");
    let outcome = run(cmd, Duration::from_secs(120));
    assert!(outcome.success(), "bound under the GNU ld build:\n{}", outcome.report());
    assert!(
        outcome.stdout.lines().filter(|l| l.starts_with("bind malloc ")).all(|l| l.contains("libbuddyslab")),
        "malloc is not the library's:\n{}",
        outcome.stdout
    );
    // The views' exit handler ran: `atexit`'s replacement works.
    assert!(outcome.stderr.contains("== totals"), "no views at exit:\n{}", outcome.report());
}
