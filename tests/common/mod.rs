//! Helpers shared by the LD_PRELOAD integration tests: where the library
//! is, compiling the C programs in `tests/c/`, and running a child process
//! with its output captured and a hang guard (a generous wall-clock limit
//! after which the child's whole process group is killed; never a timed
//! assertion).

#![allow(dead_code)] // each test crate uses a different subset

use std::io::Read;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// `target/<profile>/libbuddyslab.so`, found from this test binary's path
/// (`target/<profile>/deps/<test>-<hash>`). Panics with what to run when it
/// is not there.
pub fn library() -> PathBuf {
    let exe = std::env::current_exe().expect("current_exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("test binary lives in target/<profile>/deps/");
    let lib = profile_dir.join("libbuddyslab.so");
    if !lib.is_file() {
        panic!(
            "{} does not exist: these tests preload the C library, so build it first:\n\
             \n    cargo build --release && cargo test --release --workspace\n",
            lib.display()
        );
    }
    lib
}

/// `target/<profile>/libbuddyslab_secure.so`, the secure build (built by
/// the same `cargo build --release`); panics with the command to run when
/// it is missing.
pub fn secure_library() -> PathBuf {
    let lib = library().with_file_name("libbuddyslab_secure.so");
    if !lib.is_file() {
        panic!(
            "{} does not exist: build it first:\n\n    cargo build --release && cargo test --release --workspace\n",
            lib.display()
        );
    }
    lib
}

/// Where compiled test programs and scratch directories go
/// (`target/tmp/<what>`), created if missing.
pub fn scratch_dir(what: &str) -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR")).join(what);
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// A fresh, empty directory `target/tmp/<what>/<name>`.
pub fn fresh_dir(what: &str, name: &str) -> PathBuf {
    let dir = scratch_dir(what).join(name);
    if dir.exists() {
        std::fs::remove_dir_all(&dir).unwrap_or_else(|e| panic!("remove {}: {e}", dir.display()));
    }
    std::fs::create_dir_all(&dir).unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
    dir
}

/// Removes a scratch directory once the test that used it has passed: the
/// real programs' and suites' directories hold hundreds of megabytes, and
/// CI's disk is not large. A failed test leaves its directory to read.
pub fn remove_scratch(dir: &Path) {
    if let Err(e) = std::fs::remove_dir_all(dir) {
        if e.kind() != std::io::ErrorKind::NotFound {
            panic!("remove {}: {e}", dir.display());
        }
    }
}

/// Looks `program` up in `PATH`; panics naming the Debian package that
/// provides it when it is missing.
pub fn find_program(program: &str, package: &str) -> PathBuf {
    let path = std::env::var_os("PATH").unwrap_or_default();
    for dir in std::env::split_paths(&path) {
        let candidate = dir.join(program);
        if candidate.is_file() {
            return candidate;
        }
    }
    panic!(
        "`{program}` is not installed (not found in PATH); install it with \
         `apt-get install {package}` (.ci/run does this)"
    );
}

/// Compiles `tests/c/<source>.c` with `cc -O1 -g -pthread` (or
/// `tests/c/<source>.cpp` with `c++`) into
/// `target/tmp/c-programs/<output>` and returns the executable's path.
/// It compiles on every call (no up-to-date check), so a change to the
/// shared `tests/c/common.h`, which the programs include as
/// `#include "common.h"`, is always picked up.
pub fn compile_c(source: &str, output: &str) -> PathBuf {
    let folder = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/c");
    // `<source>.c`, or else `<source>.cpp` with the C++ compiler.
    let (cc, src) = if folder.join(format!("{source}.cpp")).exists() {
        (std::env::var_os("CXX").unwrap_or_else(|| "c++".into()), folder.join(format!("{source}.cpp")))
    } else {
        (std::env::var_os("CC").unwrap_or_else(|| "cc".into()), folder.join(format!("{source}.c")))
    };
    let dir = scratch_dir("c-programs");
    let exe = dir.join(output);
    // Write under a temporary name and rename, so a half-written binary is
    // never run.
    let partial = dir.join(format!("{output}.partial-{}", std::process::id()));
    let result = Command::new(&cc)
        .args(["-O1", "-g", "-pthread", "-Wall", "-Wextra", "-o"])
        .arg(&partial)
        .arg(&src)
        .arg("-ldl")
        .env_remove("LD_PRELOAD")
        .output()
        .unwrap_or_else(|e| {
            panic!(
                "cannot run the compiler `{}`: {e}; install it with \
                 `apt-get install gcc g++` (or build-essential)",
                Path::new(&cc).display()
            )
        });
    if !result.status.success() {
        panic!(
            "compiling {} failed ({}):\n{}",
            src.display(),
            result.status,
            String::from_utf8_lossy(&result.stderr)
        );
    }
    if !result.stderr.is_empty() {
        eprintln!(
            "warnings compiling {}:\n{}",
            src.display(),
            String::from_utf8_lossy(&result.stderr)
        );
    }
    std::fs::rename(&partial, &exe).expect("rename compiled program");
    exe
}

/// What a finished child left behind.
pub struct Outcome {
    /// The command, as a reader would type it.
    pub what: String,
    /// `None` when the hang guard killed it.
    pub status: Option<ExitStatus>,
    pub stdout: String,
    pub stderr: String,
}

impl Outcome {
    /// Exited normally with status 0.
    pub fn success(&self) -> bool {
        self.status.is_some_and(|s| s.success())
    }

    /// "exit status 1", "killed by signal 11 (SIGSEGV)", "hung: killed after 300 s".
    pub fn describe_status(&self) -> String {
        match self.status {
            None => "did not finish: killed by the test's hang guard".to_string(),
            Some(s) => match (s.code(), s.signal()) {
                (Some(code), _) => format!("exit status {code}"),
                (None, Some(sig)) => format!(
                    "killed by signal {sig} ({}){}",
                    signal_name(sig),
                    if s.core_dumped() { ", core dumped" } else { "" }
                ),
                _ => format!("{s}"),
            },
        }
    }

    /// A multi-line report: the command, how it ended, and the tails of its
    /// output.
    pub fn report(&self) -> String {
        format!(
            "`{}`: {}\n--- stdout (last 3000 bytes) ---\n{}\n--- stderr (last 3000 bytes) ---\n{}",
            self.what,
            self.describe_status(),
            tail(&self.stdout, 3000),
            tail(&self.stderr, 3000)
        )
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        4 => "SIGILL",
        6 => "SIGABRT",
        7 => "SIGBUS",
        8 => "SIGFPE",
        9 => "SIGKILL",
        11 => "SIGSEGV",
        14 => "SIGALRM",
        15 => "SIGTERM",
        _ => "?",
    }
}

/// The last `n` bytes of `s` (on a character boundary).
pub fn tail(s: &str, n: usize) -> &str {
    if s.len() <= n {
        return s;
    }
    let mut start = s.len() - n;
    while !s.is_char_boundary(start) {
        start += 1;
    }
    &s[start..]
}

/// Runs `cmd` to completion with stdin empty and stdout/stderr captured.
/// If it is still running after `limit`, its whole process group is
/// killed and the outcome says so (a hang guard, not a speed check: set the
/// limit far above the normal run time).
pub fn run(mut cmd: Command, limit: Duration) -> Outcome {
    let what = format!("{cmd:?}");
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .process_group(0);
    let mut child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {what}: {e}"));
    let (tx, rx) = mpsc::channel();
    let mut out = child.stdout.take().expect("piped stdout");
    let mut err = child.stderr.take().expect("piped stderr");
    let tx2 = tx.clone();
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = out.read_to_end(&mut buf);
        let _ = tx.send((1, buf));
    });
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = err.read_to_end(&mut buf);
        let _ = tx2.send((2, buf));
    });

    let deadline = Instant::now() + limit;
    let mut status = None;
    loop {
        match child.try_wait() {
            Ok(Some(s)) => {
                status = Some(s);
                break;
            }
            Ok(None) if Instant::now() < deadline => std::thread::sleep(Duration::from_millis(20)),
            Ok(None) => break,
            Err(e) => panic!("waiting for {what}: {e}"),
        }
    }
    if status.is_none() {
        kill_group(child.id());
        let _ = child.wait();
    }

    // A grandchild may still hold the pipes open; wait for them only a little
    // past the deadline.
    let mut stdout = Vec::new();
    let mut stderr = Vec::new();
    for _ in 0..2 {
        let left = deadline.saturating_duration_since(Instant::now()) + Duration::from_secs(10);
        match rx.recv_timeout(left) {
            Ok((1, buf)) => stdout = buf,
            Ok((_, buf)) => stderr = buf,
            Err(_) => {
                kill_group(child.id());
                break;
            }
        }
    }
    Outcome {
        what,
        status,
        stdout: String::from_utf8_lossy(&stdout).into_owned(),
        stderr: String::from_utf8_lossy(&stderr).into_owned(),
    }
}

/// SIGKILL to the process group led by `pid` (the child was started with
/// `process_group(0)`, so that group is the child and what it started).
fn kill_group(pid: u32) {
    let Ok(pgid) = libc::pid_t::try_from(pid) else {
        return;
    };
    // SAFETY: kill(2) takes no pointers; a negative pid names a process
    // group, here the one our child leads, so nothing outside it is hit.
    unsafe {
        libc::kill(-pgid, libc::SIGKILL);
    }
}

/// Removes from `cmd`'s environment everything that changes which malloc
/// runs or how it behaves, so that a plain run is plain glibc and a
/// preloaded run differs from it only by `LD_PRELOAD`.
pub fn clean_malloc_env(cmd: &mut Command) {
    cmd.env_remove("LD_PRELOAD").env_remove("GLIBC_TUNABLES");
    for (key, _) in std::env::vars_os() {
        let key_str = key.to_string_lossy();
        if key_str.starts_with("BUDDYSLAB_") || key_str.starts_with("MALLOC_") {
            cmd.env_remove(&key);
        }
    }
}
