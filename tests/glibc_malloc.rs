//! glibc's own malloc tests (`malloc/tst-*.c` from glibc's source package,
//! as Debian ships it) under `LD_PRELOAD=libbuddyslab.so`.
//!
//! Where the sources come from: `$BUDDYSLAB_GLIBC_SRC` (glibc's unpacked
//! source tree, or its `malloc/` folder), else the newest
//! `target/glibc-source/glibc-*/` that `.ci/run` unpacks with
//! `apt-get source glibc`. Without them the tests say on standard error
//! that they skipped and pass, except in CI (`CI=true`), where they fail.
//!
//! How they run: each test is copied into `target/tmp/glibc-malloc/build/`
//! and compiled with `cc -pthread` against the harness in `tests/glibc/`
//! (our own stand-in for glibc's `support/` library; its driver runs the
//! test in a child with a timeout that kills the test's whole process
//! group). A test passes when it exits 0 with the library preloaded; when
//! it does not, the same binary is run once more on glibc's malloc and the
//! failure says how that went, so that a buddyslab bug is told apart from
//! a harness or machine problem. A hang fails: the driver's timeout or this
//! file's guard kills it.
//!
//! The fork tests, which hang on an allocator that holds a lock across
//! `fork`, each have their own test that runs them many times and stops at
//! the first failure. The glibc tests left out, and why, are listed in
//! `tests/glibc/README.md`.
//!
//! Needs `target/release/libbuddyslab.so`: run
//! `cargo build --release && cargo test --release --test glibc_malloc`.

mod common;

use common::{clean_malloc_env, fresh_dir, library, run, scratch_dir, Outcome};
use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Mutex, MutexGuard, OnceLock, PoisonError};
use std::time::{Duration, Instant};

/// Names glibc's source tree (or its `malloc/` folder).
const SOURCES_VARIABLE: &str = "BUDDYSLAB_GLIBC_SRC";

/// A test that is still running after this long is killed and reported as
/// a hang. Far above the slowest normal run (about 8 s on a loaded
/// two-core machine); the driver's own timeout (the test's `TIMEOUT`,
/// 20 s by default) usually fires first.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// The same for one run of tst-malloc-fork-deadlock (3 s when it works)
/// and tst-mallocfork (a few milliseconds): a deadlock fails in half a
/// minute.
const FORK_RUN_GUARD: Duration = Duration::from_secs(30);

/// The same for one run of tst-mallocfork2 or tst-mallocfork3, which
/// took 6 to 18 s on glibc on a busy two-core machine (six processes, or
/// threads in tst-mallocfork3, meet at a barrier 20,000 times): a
/// deadlock fails in under a minute, not after the tests' own 100 s, and
/// a slow run is not called a hang.
const SIGNAL_FORK_RUN_GUARD: Duration = Duration::from_secs(45);

/// glibc tests that keep both cores busy for seconds. They and the fork
/// loops take turns (`cpu_turn`): run side by side, a busy test starves
/// tst-mallocfork2's six processes until its runs look like hangs.
const CPU_HEAVY: &[&str] = &[
    "tst-malloc-tcache-leak",
    "tst-malloc-thread-exit",
    "tst-malloc-thread-fail",
    "tst-malloc-too-large",
    "tst-malloc_info",
];

/// Held while a CPU-heavy test or a fork loop runs.
fn cpu_turn() -> MutexGuard<'static, ()> {
    static TURN: Mutex<()> = Mutex::new(());
    TURN.lock().unwrap_or_else(PoisonError::into_inner)
}

// ------------------------------------------------------------ the sources

/// glibc's `malloc/` folder, or `None` (after saying so once) when the
/// sources are absent outside CI.
fn malloc_sources() -> Option<&'static Path> {
    static SOURCES: OnceLock<Option<PathBuf>> = OnceLock::new();
    SOURCES.get_or_init(find_malloc_sources).as_deref()
}

fn find_malloc_sources() -> Option<PathBuf> {
    if let Some(dir) = std::env::var_os(SOURCES_VARIABLE) {
        let dir = PathBuf::from(dir);
        return Some(malloc_folder_in(&dir).unwrap_or_else(|| {
            panic!(
                "{SOURCES_VARIABLE}={} holds neither glibc's source tree nor its malloc/ folder",
                dir.display()
            )
        }));
    }
    let unpacked = Path::new(env!("CARGO_MANIFEST_DIR")).join("target/glibc-source");
    let newest = std::fs::read_dir(&unpacked)
        .into_iter()
        .flatten()
        .flatten()
        .filter(|entry| entry.file_name().to_string_lossy().starts_with("glibc-"))
        .filter_map(|entry| malloc_folder_in(&entry.path()))
        .max();
    if newest.is_some() {
        return newest;
    }
    let why = format!(
        "glibc's sources are not in {} and {SOURCES_VARIABLE} is not set: \
         .ci/run fetches them (apt-get source glibc, after adding a deb-src entry)",
        unpacked.display()
    );
    if std::env::var("CI").is_ok_and(|value| value == "true") {
        panic!("{why}; CI must run glibc's malloc tests, so this fails");
    }
    // Written past the test harness's output capture, so that it is seen
    // even though the tests pass.
    let _ = writeln!(
        std::io::stderr(),
        "\nglibc_malloc: SKIPPED every glibc test: {why}\n"
    );
    None
}

/// `dir` itself or `dir/malloc`, whichever holds glibc's malloc sources.
fn malloc_folder_in(dir: &Path) -> Option<PathBuf> {
    [dir.join("malloc"), dir.to_path_buf()]
        .into_iter()
        .find(|candidate| {
            candidate.join("malloc.c").is_file() && candidate.join("tst-malloc.c").is_file()
        })
}

// -------------------------------------------------------------- building

/// Our harness: `tests/glibc/`.
fn harness_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/glibc")
}

/// `target/tmp/glibc-malloc/build/`, holding the harness's object file
/// and, one level above the copied tests (`build/malloc/`), the old
/// `test-skeleton.c` that some tests include as `"../test-skeleton.c"`.
fn build_dir() -> &'static Path {
    static BUILD: OnceLock<PathBuf> = OnceLock::new();
    BUILD.get_or_init(|| {
        let build = scratch_dir("glibc-malloc").join("build");
        for dir in [build.join("malloc"), build.join("bin")] {
            std::fs::create_dir_all(&dir)
                .unwrap_or_else(|e| panic!("create {}: {e}", dir.display()));
        }
        let skeleton = harness_dir().join("test-skeleton.c");
        std::fs::copy(&skeleton, build.join("test-skeleton.c"))
            .unwrap_or_else(|e| panic!("copy {}: {e}", skeleton.display()));
        compile(
            &[harness_dir().join("support/support.c")],
            &["-c"],
            &build.join("support.o"),
        );
        build
    })
}

/// Runs the C compiler with the harness's include folders and `extra`
/// arguments; writes `output` under a temporary name first, so that a
/// half-written file is never used.
fn compile(sources: &[PathBuf], extra: &[&str], output: &Path) {
    let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
    let harness = harness_dir();
    let partial = output.with_extension(format!("partial-{}", std::process::id()));
    let result = Command::new(&cc)
        .args(["-O2", "-g", "-pthread", "-D_GNU_SOURCE"])
        .arg("-I")
        .arg(harness.join("include"))
        .arg("-I")
        .arg(&harness)
        .args(extra)
        .arg("-o")
        .arg(&partial)
        .args(sources)
        .env_remove("LD_PRELOAD")
        .output()
        .unwrap_or_else(|e| panic!("cannot run the C compiler {cc:?}: {e}; apt-get install gcc"));
    if !result.status.success() {
        panic!(
            "compiling {sources:?} failed ({}):\n{}",
            result.status,
            String::from_utf8_lossy(&result.stderr)
        );
    }
    std::fs::rename(&partial, output)
        .unwrap_or_else(|e| panic!("rename to {}: {e}", output.display()));
}

/// Copies glibc's `malloc/<test>.c` into the build folder and compiles it
/// against the harness.
fn build_glibc_test(malloc: &Path, test: &str) -> PathBuf {
    let build = build_dir();
    let copy = build.join("malloc").join(format!("{test}.c"));
    let original = malloc.join(format!("{test}.c"));
    std::fs::copy(&original, &copy).unwrap_or_else(|e| panic!("copy {}: {e}", original.display()));
    let exe = build.join("bin").join(test);
    compile(&[copy, build.join("support.o")], &[], &exe);
    exe
}

// --------------------------------------------------------------- running

/// Runs `exe` with `preload` (or on glibc's malloc), in a fresh temporary
/// folder, killing it after `guard`.
fn run_test(exe: &Path, name: &str, preload: Option<&Path>, guard: Duration) -> Outcome {
    let label = if preload.is_some() {
        "buddyslab"
    } else {
        "glibc"
    };
    let tmp = fresh_dir("glibc-malloc", &format!("{name}-{label}"));
    let mut cmd = Command::new(exe);
    clean_malloc_env(&mut cmd);
    cmd.current_dir(&tmp)
        .env("TMPDIR", &tmp)
        .env_remove("TIMEOUTFACTOR");
    if let Some(lib) = preload {
        cmd.env("LD_PRELOAD", lib);
    }
    run(cmd, guard)
}

/// How a run ended, in words, or `Ok` when it passed.
fn judge(name: &str, outcome: &Outcome, guard: Duration) -> Result<(), String> {
    if outcome.stderr.contains("cannot be preloaded") {
        panic!("the library was not preloaded:\n{}", outcome.report());
    }
    if outcome.status.is_none() {
        return Err(format!(
            "HANG: still running after {} s, killed",
            guard.as_secs()
        ));
    }
    if outcome.stderr.contains("error: timed out after") {
        return Err("HANG: the test's own timeout fired and killed it".to_string());
    }
    if outcome.status.and_then(|s| s.code()) == Some(77) {
        return Err("UNSUPPORTED: the test says it cannot run here".to_string());
    }
    if !outcome.success() {
        return Err(format!("FAIL: {}", outcome.describe_status()));
    }
    // mallocbug has no driver and exits 0 either way; it says PASS or FAIL.
    if name == "mallocbug" && !outcome.stdout.contains("PASS") {
        return Err("FAIL: it did not print PASS".to_string());
    }
    Ok(())
}

/// Checks once that `exe` really gets the library: ld.so lists it.
fn assert_preloaded(exe: &Path) {
    static CHECKED: OnceLock<()> = OnceLock::new();
    CHECKED.get_or_init(|| {
        let lib = library();
        let mut cmd = Command::new(exe);
        clean_malloc_env(&mut cmd);
        cmd.env("LD_PRELOAD", &lib)
            .env("LD_TRACE_LOADED_OBJECTS", "1");
        let outcome = run(cmd, HANG_GUARD);
        let name = lib
            .file_name()
            .expect("library file name")
            .to_string_lossy()
            .into_owned();
        assert!(
            outcome.success() && outcome.stdout.contains(&name),
            "ld.so does not load {name} into the glibc tests:\n{}",
            outcome.report()
        );
    });
}

/// Set to 1 to run every glibc test on glibc's own malloc instead (no
/// preload): a check of the harness and of this machine, and the time the
/// suite takes when every test passes.
const BASELINE_VARIABLE: &str = "BUDDYSLAB_GLIBC_BASELINE";

/// Builds glibc's `test` and runs it `runs` times under buddyslab, each
/// run killed after `guard`, stopping at the first failure. A failure
/// also says how the same binary did on glibc's malloc.
fn check_glibc_test(test: &str, runs: u32, guard: Duration) {
    let Some(malloc) = malloc_sources() else {
        return;
    };
    let exe = build_glibc_test(malloc, test);
    let baseline = std::env::var(BASELINE_VARIABLE).is_ok_and(|value| value == "1");
    let lib = (!baseline).then(library);
    let allocator = if baseline {
        "glibc's malloc (baseline)"
    } else {
        "buddyslab"
    };
    if lib.is_some() {
        assert_preloaded(&exe);
    }
    let _turn = (runs > 1 || CPU_HEAVY.contains(&test)).then(cpu_turn);
    let started = Instant::now();
    let mut slowest = Duration::ZERO;
    for run in 1..=runs {
        let run_started = Instant::now();
        let outcome = run_test(&exe, test, lib.as_deref(), guard);
        slowest = slowest.max(run_started.elapsed());
        if let Err(why) = judge(test, &outcome, guard) {
            let mut on_glibc = String::new();
            if lib.is_some() {
                let glibc = run_test(&exe, test, None, guard);
                on_glibc = match judge(test, &glibc, guard) {
                    Ok(()) => "\n(the same binary on glibc's malloc: passed)".to_string(),
                    Err(glibc_why) => format!(
                        "\n(the same binary on glibc's malloc: {glibc_why} too: \
                         the harness or this machine may be at fault)"
                    ),
                };
            }
            panic!(
                "glibc's {test} under {allocator}, run {run} of {runs}: {why}{on_glibc}\n{}",
                outcome.report()
            );
        }
    }
    let _ = writeln!(
        std::io::stderr(),
        "glibc_malloc: {test}: {runs} run(s) passed under {allocator} in {:.1} s (slowest {:.1} s)",
        started.elapsed().as_secs_f64(),
        slowest.as_secs_f64()
    );
}

// ------------------------------------------------------------- the tests

/// One `#[test]` per glibc test, run once: the rest of `malloc/tst-*.c`
/// that does not depend on glibc's internals (see tests/glibc/README.md),
/// and `mallocbug.c`.
macro_rules! glibc_tests {
    ($($function:ident => $file:literal,)*) => {$(
        #[test]
        fn $function() {
            check_glibc_test($file, 1, HANG_GUARD);
        }
    )*};
}

glibc_tests! {
    mallocbug => "mallocbug",
    tst_calloc => "tst-calloc",
    tst_free_errno => "tst-free-errno",
    tst_mallinfo2 => "tst-mallinfo2",
    tst_malloc => "tst-malloc",
    tst_malloc_check => "tst-malloc-check",
    tst_malloc_stats_cancellation => "tst-malloc-stats-cancellation",
    tst_malloc_tcache_leak => "tst-malloc-tcache-leak",
    tst_malloc_thread_exit => "tst-malloc-thread-exit",
    tst_malloc_thread_fail => "tst-malloc-thread-fail",
    tst_malloc_too_large => "tst-malloc-too-large",
    tst_malloc_info => "tst-malloc_info",
    tst_mallocalign1 => "tst-mallocalign1",
    tst_mallopt => "tst-mallopt",
    tst_memalign => "tst-memalign",
    tst_obstack => "tst-obstack",
    tst_posix_memalign => "tst-posix_memalign",
    tst_pvalloc => "tst-pvalloc",
    tst_pvalloc_fortify => "tst-pvalloc-fortify",
    tst_realloc => "tst-realloc",
    tst_reallocarray => "tst-reallocarray",
    tst_tcfree1 => "tst-tcfree1",
    tst_tcfree2 => "tst-tcfree2",
    tst_tcfree3 => "tst-tcfree3",
    tst_trim1 => "tst-trim1",
    tst_valloc => "tst-valloc",
}

// The fork tests. Their names sort first, so that the test harness starts
// the two long loops before the short tests.

/// Four threads fork while eight read lines with `getline` (which
/// reallocates) and one flushes every stream: a fork that waits for a lock
/// the allocator's prepare handler cannot get hangs (glibc bug 19431).
#[test]
fn fork_tst_malloc_fork_deadlock_20_runs() {
    check_glibc_test("tst-malloc-fork-deadlock", 20, FORK_RUN_GUARD);
}

/// A single-threaded process forks from a signal handler that interrupts
/// `malloc`, `free` or another `fork`: the fork must not wait for a lock
/// the interrupted code holds.
#[test]
fn fork_tst_mallocfork2_20_runs() {
    check_glibc_test("tst-mallocfork2", 20, SIGNAL_FORK_RUN_GUARD);
}

/// Fork from a signal handler, once (glibc bug 838).
#[test]
fn fork_tst_mallocfork_20_runs() {
    check_glibc_test("tst-mallocfork", 20, FORK_RUN_GUARD);
}

/// As tst-mallocfork2 in a multi-threaded process, but with `_Fork`,
/// which runs no atfork handlers, so the allocator's fork path is not
/// involved: what is tested is that `malloc` and `free` survive being
/// interrupted by a handler that forks. Fewer runs than the other fork
/// tests: each takes about 10 s and adds little after the first.
#[test]
fn fork_tst_mallocfork3_3_runs() {
    check_glibc_test("tst-mallocfork3", 3, SIGNAL_FORK_RUN_GUARD);
}

// ------------------------------------------------- the harness's own checks

/// Builds `tests/glibc/harness-check.c` for one case.
fn harness_check(case: &str) -> PathBuf {
    let exe = build_dir()
        .join("bin")
        .join(format!("harness-check-{case}"));
    compile(
        &[
            harness_dir().join("harness-check.c"),
            build_dir().join("support.o"),
        ],
        &[&format!("-DCHECK_{}", case.to_uppercase())],
        &exe,
    );
    exe
}

/// Runs a harness case on glibc's malloc (the harness is what is checked)
/// and judges it as a glibc test would be.
fn judge_harness_check(case: &str, guard: Duration) -> (Result<(), String>, Outcome) {
    let exe = harness_check(case);
    let outcome = run_test(&exe, &format!("harness-check-{case}"), None, guard);
    (judge(case, &outcome, guard), outcome)
}

#[test]
fn harness_passes_a_passing_test() {
    let (verdict, outcome) = judge_harness_check("pass", HANG_GUARD);
    assert_eq!(verdict, Ok(()), "{}", outcome.report());
}

#[test]
fn harness_fails_what_must_fail() {
    for case in [
        "exit_status",
        "verify",
        "compare_signs",
        "verify_in_child",
        "crash",
        "signal_expected_not_raised",
    ] {
        let (verdict, outcome) = judge_harness_check(case, HANG_GUARD);
        match verdict {
            Err(why) if why.starts_with("FAIL") => {}
            other => panic!(
                "harness case {case} must fail, got {other:?}:\n{}",
                outcome.report()
            ),
        }
    }
    let (verdict, outcome) = judge_harness_check("signal_expected_and_raised", HANG_GUARD);
    assert_eq!(verdict, Ok(()), "{}", outcome.report());
}

/// A hang fails, whether the driver's timeout or this file's guard stops
/// it, and nothing the test started survives.
#[test]
fn harness_reports_a_hang_and_leaves_nothing_running() {
    for (case, guard) in [
        ("hang_driver", HANG_GUARD),
        ("hang_guard", Duration::from_secs(2)),
    ] {
        let started = Instant::now();
        let (verdict, outcome) = judge_harness_check(case, guard);
        match verdict {
            Err(why) if why.starts_with("HANG") => {}
            other => panic!(
                "harness case {case} must hang, got {other:?}:\n{}",
                outcome.report()
            ),
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "{case} was not stopped at once"
        );
        let grandchild: u32 = outcome
            .stdout
            .lines()
            .find_map(|line| line.strip_prefix("grandchild ")?.trim().parse().ok())
            .unwrap_or_else(|| panic!("{case} printed no grandchild:\n{}", outcome.report()));
        // It was killed with the group; give the kernel a moment.
        let deadline = Instant::now() + Duration::from_secs(10);
        while is_running(grandchild) {
            assert!(
                Instant::now() < deadline,
                "{case}: the test's grandchild {grandchild} survived"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Whether process `pid` exists and is not a zombie (an orphan killed with
/// its group waits as a zombie until init reaps it).
fn is_running(pid: u32) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // "pid (command) state ...": the command may hold spaces or ')'.
    let state = stat
        .rsplit_once(')')
        .and_then(|(_, rest)| rest.trim_start().chars().next());
    !matches!(state, Some('Z' | 'X') | None)
}
