//! The `buddyslab` command driven as a user would: `run` and `compare` on
//! a C program, python3 and sort, and the ways they must fail (missing
//! program, static binary, a program with its own malloc, bad option,
//! missing or unloadable library).
//!
//! The tool preloads `libbuddyslab.so` from its own directory, so the
//! release build comes first: `cargo build --release && cargo test
//! --release --workspace`.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::{
    clean_malloc_env, compile_c, find_program, fresh_dir, library, run, scratch_dir, Outcome,
};
use std::io::{BufRead, BufReader};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::{mpsc, OnceLock};
use std::time::Duration;

/// Far above any normal run; only stops a hang.
const HANG_GUARD: Duration = Duration::from_secs(300);

/// The tool, with the environment cleaned of preloads and malloc settings.
fn tool(args: &[&str]) -> Command {
    library(); // a clear message if the release build is missing
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_buddyslab"));
    clean_malloc_env(&mut cmd);
    cmd.args(args);
    cmd
}

fn run_tool(args: &[&str]) -> Outcome {
    run(tool(args), HANG_GUARD)
}

fn exit_code(outcome: &Outcome) -> Option<i32> {
    outcome.status.and_then(|s| s.code())
}

fn path_str(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// Runs `program args` on plain glibc and returns its stdout.
fn plain_stdout(program: &Path, args: &[&str]) -> String {
    let mut plain = Command::new(program);
    clean_malloc_env(&mut plain);
    plain.args(args);
    let plain = run(plain, HANG_GUARD);
    assert!(plain.success(), "fails on plain glibc:\n{}", plain.report());
    plain.stdout
}

/// The C program `churn` (compiled once: the tests run in parallel), and
/// its output on plain glibc.
fn churn() -> (PathBuf, String) {
    static CHURN: OnceLock<(PathBuf, String)> = OnceLock::new();
    CHURN
        .get_or_init(|| {
            let exe = compile_c("churn", "churn");
            let stdout = plain_stdout(&exe, &[]);
            (exe, stdout)
        })
        .clone()
}

/// The summary says buddyslab was bound in the child.
fn assert_bound(outcome: &Outcome) {
    assert!(
        outcome.stderr.contains("malloc        buddyslab, bound"),
        "the summary does not report buddyslab bound:\n{}",
        outcome.report()
    );
    assert!(
        !outcome.stderr.contains("WARNING"),
        "unexpected warning:\n{}",
        outcome.report()
    );
}

#[test]
fn run_a_c_program() {
    let (exe, expected) = churn();
    let outcome = run_tool(&["run", "--", path_str(&exe)]);
    assert!(outcome.success(), "{}", outcome.report());
    assert_eq!(
        outcome.stdout, expected,
        "churn printed something else under buddyslab"
    );
    assert_bound(&outcome);
    for line in [
        "ended         exit status 0",
        "time ",
        "peak RSS ",
        "page faults ",
    ] {
        assert!(
            outcome.stderr.contains(line),
            "summary lacks `{line}`:\n{}",
            outcome.report()
        );
    }

    // The program's exit status is the tool's.
    let outcome = run_tool(&["run", "--no-summary", path_str(&exe), "7"]);
    assert_eq!(exit_code(&outcome), Some(7), "{}", outcome.report());
    assert_eq!(outcome.stdout, expected);
    assert!(
        !outcome.stderr.contains("peak RSS"),
        "--no-summary printed a summary:\n{}",
        outcome.report()
    );
}

#[test]
fn run_python3() {
    let python = find_program("python3", "python3");
    let script = "import json, zlib\n\
                  d = {str(i): [i] * (i % 7) for i in range(30000)}\n\
                  text = json.dumps(sorted(d.items()))\n\
                  print(len(text), zlib.crc32(text.encode()))";
    let expected = plain_stdout(&python, &["-c", script]);
    let outcome = run_tool(&["run", "--", "python3", "-c", script]);
    assert!(outcome.success(), "{}", outcome.report());
    assert_eq!(
        outcome.stdout, expected,
        "python3 printed something else under buddyslab"
    );
    assert_bound(&outcome);
}

#[test]
fn run_sort() {
    find_program("sort", "coreutils");
    let dir = fresh_dir("cli", "sort");
    let input = dir.join("words.txt");
    let mut words: Vec<String> = (0..20000u64)
        .map(|i| format!("{:x}", i.wrapping_mul(2654435761) % 1000003))
        .collect();
    std::fs::write(&input, words.join("\n") + "\n").unwrap();
    words.sort();
    let mut cmd = tool(&["run", "--", "sort", path_str(&input)]);
    cmd.env("LC_ALL", "C");
    let outcome = run(cmd, HANG_GUARD);
    assert!(outcome.success(), "{}", outcome.report());
    assert_eq!(
        outcome.stdout,
        words.join("\n") + "\n",
        "sort's output under buddyslab is wrong"
    );
    assert_bound(&outcome);
}

#[test]
fn run_passes_options_as_variables() {
    find_program("printenv", "coreutils");
    let dir = fresh_dir("cli", "variables");
    let map = dir.join("heap.svg");
    let outcome = run_tool(&[
        "run",
        "--stats=json",
        "--mmap-threshold",
        "256k",
        "--decay-ms=50",
        "--heapmap",
        path_str(&map),
        "--",
        "printenv",
        "BUDDYSLAB_STATS",
        "BUDDYSLAB_MMAP_THRESHOLD",
        "BUDDYSLAB_DECAY_MS",
        "BUDDYSLAB_HEAPMAP",
        "LD_PRELOAD",
    ]);
    assert!(outcome.success(), "{}", outcome.report());
    let lines: Vec<&str> = outcome.stdout.lines().collect();
    assert_eq!(
        lines[..4],
        ["json", "256k", "50", path_str(&map)],
        "{}",
        outcome.report()
    );
    assert_eq!(lines[4], path_str(&library()));
    assert!(outcome.stderr.contains("heap map"), "{}", outcome.report());

    let outcome = run_tool(&["run", "--stats", "--", "printenv", "BUDDYSLAB_STATS"]);
    assert_eq!(outcome.stdout, "1\n", "{}", outcome.report());
}

/// `--stats` follows the whole tree: a shell that runs two commands
/// leaves three sets of views, each headed by its process; the shell's
/// (the program the tool started) is printed on stderr, and the summary
/// lists each process with where its views are.
#[test]
fn run_stats_come_from_every_process() {
    let outcome = run_tool(&["run", "--stats", "--", "bash", "-c", "/bin/true; /bin/true; exit 0"]);
    assert!(outcome.success(), "{}", outcome.report());
    let child = outcome
        .stderr
        .lines()
        .find_map(|l| l.strip_prefix("buddyslab run: bash (pid ")?.strip_suffix(')'))
        .unwrap_or_else(|| panic!("no pid in the summary:\n{}", outcome.report()))
        .to_string();
    let heads: Vec<&str> = outcome.stderr.lines().filter(|l| l.starts_with("== buddyslab 1 ")).collect();
    assert!(!heads.is_empty() && heads.len() <= 2, "the program's views, and the largest heap's: {heads:?}");
    assert!(heads.iter().any(|h| h.split(' ').nth(3) == Some(child.as_str())), "the program's own views: {heads:?}");
    assert_eq!(outcome.stderr.matches("== totals").count(), heads.len(), "{}", outcome.report());
    let rows: Vec<&str> = outcome
        .stderr
        .lines()
        .filter(|l| l.contains(" views ") && l.split_whitespace().next().is_some_and(|w| w.parse::<u32>().is_ok()))
        .collect();
    assert_eq!(rows.len(), 3, "three processes in the summary:\n{}", outcome.report());
    for row in rows {
        let (_, place) = row.split_once(" views ").unwrap();
        if place != "stderr" {
            let text = std::fs::read_to_string(place).unwrap_or_else(|e| panic!("{place}: {e}\n{}", outcome.report()));
            assert!(text.starts_with("== buddyslab 1 "), "{place}: {text}");
            std::fs::remove_file(place).unwrap();
            // The run's directory, empty once its files are read.
            let _ = std::fs::remove_dir(std::path::Path::new(place).parent().unwrap());
        }
    }
}

/// A shell wrapper around the program (the common case: make, test
/// runners): the program's views and heap map are written, and the
/// summary says why the wrapper itself (dash leaves by `_exit`) wrote none.
#[test]
fn run_follows_a_wrapped_process() {
    find_program("sh", "dash");
    let (churn, _) = churn();
    let dir = fresh_dir("cli", "wrapped");
    let map = dir.join("w.%p.svg");
    let script = format!("{} >/dev/null; true", path_str(&churn));
    let outcome = run_tool(&["run", "--stats", "--heapmap", path_str(&map), "--", "sh", "-c", &script]);
    assert!(outcome.success(), "{}", outcome.report());
    assert!(outcome.stderr.contains("(churn) at exit\n== totals\nInUse:"), "{}", outcome.report());
    let maps: Vec<_> = std::fs::read_dir(&dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    assert_eq!(maps.len(), 1, "one map, the program's: {maps:?}");
    let written = dir.join(&maps[0]);
    assert!(std::fs::read_to_string(&written).unwrap().starts_with("<svg"), "{maps:?}");
    assert!(outcome.stderr.contains(&format!("heap map {}", written.display())), "{}", outcome.report());
    assert!(
        outcome.stderr.lines().any(|l| l.contains(" sh ") && l.contains("nothing: it left without running its exit handlers")),
        "{}",
        outcome.report()
    );
}

#[test]
fn run_forwards_death_by_signal() {
    find_program("sh", "dash");
    let outcome = run_tool(&["run", "--", "sh", "-c", "kill -TERM $$"]);
    let status = outcome.status.expect("hang guard");
    assert_eq!(status.signal(), Some(libc::SIGTERM), "{}", outcome.report());
    assert!(
        outcome.stderr.contains("killed by signal 15 (SIGTERM)"),
        "{}",
        outcome.report()
    );
}

#[test]
fn run_passes_signals_on() {
    find_program("sh", "dash");
    // The program says "ready" once its trap is set; the test then sends
    // SIGTERM to the tool only, and the program must get it.
    let script = "trap 'echo got TERM; exit 7' TERM; echo ready; while :; do sleep 0.05; done";
    let mut cmd = tool(&["run", "--", "sh", "-c", script]);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start buddyslab");
    let stdout = child.stdout.take().unwrap();
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let first = rx.recv_timeout(HANG_GUARD);
    if first.as_deref() != Ok("ready") {
        let _ = child.kill();
        panic!("the program did not start under buddyslab run: {first:?}");
    }
    // SAFETY: kill(2) takes no pointers; the pid is our live child.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let got = rx.recv_timeout(HANG_GUARD);
    let deadline = std::time::Instant::now() + HANG_GUARD;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("buddyslab run did not end after the program got SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    assert_eq!(
        got.as_deref(),
        Ok("got TERM"),
        "the program did not get the SIGTERM sent to the tool"
    );
    assert_eq!(
        status.code(),
        Some(7),
        "the tool did not leave with the program's status: {status}"
    );
}

#[test]
fn run_reports_a_program_with_its_own_malloc() {
    let exe = compile_c("own_malloc", "own_malloc");
    let outcome = run_tool(&["run", "--", path_str(&exe)]);
    assert!(outcome.success(), "{}", outcome.report());
    assert_eq!(outcome.stdout, "own malloc in use\n");
    assert!(
        outcome.stderr.contains("WARNING")
            && outcome.stderr.contains("did not run on buddyslab")
            && outcome.stderr.contains("own_malloc"),
        "the tool did not say that the program's own malloc was used:\n{}",
        outcome.report()
    );
    assert!(
        outcome.stderr.contains("NOT buddyslab"),
        "{}",
        outcome.report()
    );

    let outcome = run_tool(&[
        "compare",
        "--runs",
        "1",
        "--only",
        "glibc,buddyslab",
        "--",
        path_str(&exe),
    ]);
    assert_eq!(exit_code(&outcome), Some(125), "{}", outcome.report());
    assert!(
        outcome
            .stderr
            .contains("cannot replace this program's malloc"),
        "{}",
        outcome.report()
    );
}

/// Compiles `tests/c/<source>.c` with extra flags (for linking options
/// `compile_c` does not take) into `target/tmp/c-programs/<output>`.
fn compile_with(source: &str, output: &str, flags: &[&str]) -> PathBuf {
    let cc = std::env::var_os("CC").unwrap_or_else(|| "cc".into());
    let src = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/c")
        .join(format!("{source}.c"));
    let exe = scratch_dir("c-programs").join(output);
    let mut cmd = Command::new(&cc);
    cmd.args(["-O1"])
        .args(flags)
        .arg("-o")
        .arg(&exe)
        .arg(&src)
        .env_remove("LD_PRELOAD");
    let outcome = run(cmd, HANG_GUARD);
    assert!(
        outcome.success(),
        "cannot build {output} (glibc's static libraries come with libc6-dev, \
         which build-essential installs):\n{}",
        outcome.report()
    );
    exe
}

/// A non-PIE executable that takes the addresses of `malloc` and `free`
/// gets canonical PLT entries for them: the global scope then names the
/// executable for both, although its calls still reach the preload. That
/// is bound, not a program with its own malloc (Debian's python3 is such
/// an executable).
#[test]
fn run_a_non_pie_program_that_takes_malloc_and_free_addresses() {
    let exe = compile_with(
        "malloc_origin",
        "malloc_origin-no-pie",
        &["-no-pie", "-fno-pie"],
    );
    let outcome = run_tool(&["run", "--", path_str(&exe)]);
    assert!(outcome.success(), "{}", outcome.report());
    // The program itself sees its malloc in the executable: the case holds.
    assert_eq!(outcome.stdout, "malloc from malloc_origin-no-pie\n");
    assert_bound(&outcome);
}

#[test]
fn a_static_program_is_refused() {
    let exe = compile_with("churn", "churn-static", &["-static"]);
    for command in ["run", "compare"] {
        let outcome = run_tool(&[command, "--", path_str(&exe)]);
        assert_eq!(exit_code(&outcome), Some(125), "{}", outcome.report());
        assert!(
            outcome.stderr.contains("statically linked"),
            "{}",
            outcome.report()
        );
        assert!(
            outcome.stdout.is_empty(),
            "the static program ran:\n{}",
            outcome.report()
        );
    }
}

#[test]
fn a_missing_program_is_reported() {
    for command in ["run", "compare"] {
        let outcome = run_tool(&[command, "--", "no-such-program-buddyslab-test"]);
        assert_eq!(exit_code(&outcome), Some(127), "{}", outcome.report());
        assert!(
            outcome.stderr.contains("command not found"),
            "{}",
            outcome.report()
        );

        let outcome = run_tool(&[command, "./no/such/file"]);
        assert_eq!(exit_code(&outcome), Some(127), "{}", outcome.report());
    }
    // There, but not executable.
    let dir = fresh_dir("cli", "not-executable");
    let file = dir.join("prog");
    std::fs::write(&file, "#!/bin/sh\necho hi\n").unwrap();
    let outcome = run_tool(&["run", path_str(&file)]);
    assert_eq!(exit_code(&outcome), Some(126), "{}", outcome.report());
}

#[test]
fn bad_options_are_reported() {
    for args in [
        &["run", "--bogus", "--", "true"][..],
        &["run", "--mmap-threshold", "lots", "--", "true"],
        &["run", "--stats=xml", "--", "true"],
        &["compare", "--runs", "zero", "--", "true"],
        &["compare", "--only", "glibc,nosuchmalloc", "--", "true"],
        &["run"],
        &["explode"],
    ] {
        let outcome = run_tool(args);
        assert_eq!(
            exit_code(&outcome),
            Some(125),
            "{args:?}:\n{}",
            outcome.report()
        );
        assert!(
            outcome.stderr.contains("--help"),
            "{args:?} does not point to --help:\n{}",
            outcome.report()
        );
        assert!(
            outcome.stdout.is_empty(),
            "{args:?} ran something:\n{}",
            outcome.report()
        );
    }
}

#[test]
fn a_missing_or_unloadable_library_is_reported() {
    let dir = fresh_dir("cli", "libraries");
    let missing = dir.join("libmissing.so");
    let text = dir.join("libtext.so");
    std::fs::write(&text, "not a library\n").unwrap();
    for lib in [&missing, &text] {
        let outcome = run_tool(&["run", "--lib", path_str(lib), "--", "true"]);
        assert_eq!(exit_code(&outcome), Some(125), "{}", outcome.report());
        assert!(
            outcome.stderr.contains(path_str(lib)),
            "{}",
            outcome.report()
        );
        let outcome = run_tool(&[
            "compare",
            "--with",
            &format!("x={}", path_str(lib)),
            "--",
            "true",
        ]);
        assert_eq!(exit_code(&outcome), Some(125), "{}", outcome.report());
    }

    // A real ELF object that the loader refuses to preload: an executable
    // (position-independent, so it passes as ET_DYN) is not a library.
    let (exe, expected) = churn();
    let outcome = run_tool(&["run", "--lib", path_str(&exe), "--", path_str(&exe)]);
    assert!(outcome.success(), "{}", outcome.report());
    assert_eq!(outcome.stdout, expected);
    assert!(
        outcome.stderr.contains("cannot be preloaded")
            && outcome.stderr.contains("was never loaded"),
        "the refused preload is not reported:\n{}",
        outcome.report()
    );
    let outcome = run_tool(&[
        "compare",
        "--runs",
        "1",
        "--only",
        "glibc,buddyslab",
        "--lib",
        path_str(&exe),
        "--",
        path_str(&exe),
    ]);
    assert_eq!(exit_code(&outcome), Some(125), "{}", outcome.report());
    assert!(
        outcome.stderr.contains("refused the library"),
        "{}",
        outcome.report()
    );
}

#[test]
fn compare_a_small_program() {
    let (exe, _) = churn();
    let dir = fresh_dir("cli", "compare");
    let chart = dir.join("chart.svg");
    // buddyslab a second time under another name exercises --with.
    let with = format!("again={}", path_str(&library()));
    let outcome = run_tool(&[
        "compare",
        "--runs",
        "2",
        "--only",
        "glibc,buddyslab,again",
        "--with",
        &with,
        "--chart",
        path_str(&chart),
        "--",
        path_str(&exe),
    ]);
    assert!(outcome.success(), "{}", outcome.report());
    let rows: Vec<&str> = outcome
        .stdout
        .lines()
        .filter(|l| l.contains(" s "))
        .collect();
    assert_eq!(
        rows.len(),
        3,
        "expected a row per malloc:\n{}",
        outcome.stdout
    );
    for (row, name) in rows.iter().zip(["glibc", "buddyslab", "again"]) {
        assert!(row.starts_with(name), "row `{row}` is not {name}'s");
        assert!(row.contains("MiB"), "row `{row}` has no peak RSS");
    }
    assert!(
        rows[0].contains(" 1.00 "),
        "glibc's ratios are not 1:\n{}",
        outcome.stdout
    );
    assert!(
        outcome
            .stdout
            .contains("output: identical under every malloc (6 runs)"),
        "{}",
        outcome.stdout
    );
    for k in 1..=6 {
        assert!(
            outcome.stderr.contains(&format!("[{k}/6]")),
            "no progress for run {k}:\n{}",
            outcome.stderr
        );
    }
    let svg = std::fs::read_to_string(&chart).expect("--chart wrote no file");
    assert!(
        svg.starts_with("<svg") && svg.trim_end().ends_with("</svg>"),
        "{svg}"
    );
    for name in [
        "glibc",
        "buddyslab",
        "again",
        "wall time",
        "peak RSS",
        "minor faults",
    ] {
        assert!(svg.contains(name), "the chart lacks `{name}`");
    }
}

#[test]
fn compare_sort_with_input() {
    find_program("sort", "coreutils");
    let dir = fresh_dir("cli", "compare-sort");
    let input = dir.join("numbers.txt");
    let numbers: Vec<String> = (0..5000u64)
        .map(|i| (i * 7919 % 5003).to_string())
        .collect();
    std::fs::write(&input, numbers.join("\n")).unwrap();
    let outcome = run_tool(&[
        "compare",
        "--runs",
        "1",
        "--only",
        "buddyslab,glibc",
        "--input",
        path_str(&input),
        "--",
        "sort",
        "-n",
    ]);
    assert!(outcome.success(), "{}", outcome.report());
    assert!(
        outcome.stdout.contains("ratios to buddyslab"),
        "--only did not set the order:\n{}",
        outcome.stdout
    );
    assert!(
        outcome.stdout.contains("output: identical"),
        "{}",
        outcome.stdout
    );
}

#[test]
fn compare_reports_output_that_depends_on_the_malloc() {
    let exe = compile_c("malloc_origin", "malloc_origin");
    let outcome = run_tool(&[
        "compare",
        "--runs",
        "1",
        "--only",
        "glibc,buddyslab",
        "--",
        path_str(&exe),
    ]);
    assert_eq!(exit_code(&outcome), Some(1), "{}", outcome.report());
    assert!(
        outcome.stdout.contains("OUTPUT DIFFERS under buddyslab")
            && outcome.stdout.contains("libbuddyslab.so")
            && outcome.stdout.contains("buddyslab: exit status 3"),
        "the difference is not reported:\n{}",
        outcome.report()
    );
}

#[test]
fn compare_leaves_output_that_varies_on_glibc_alone() {
    find_program("sh", "dash");
    let outcome = run_tool(&[
        "compare",
        "--runs",
        "2",
        "--only",
        "glibc,buddyslab",
        "--",
        "sh",
        "-c",
        "echo $$",
    ]);
    assert!(outcome.success(), "{}", outcome.report());
    assert!(
        outcome
            .stdout
            .contains("varies from run to run under glibc itself"),
        "{}",
        outcome.report()
    );
}

#[test]
fn help_reads_like_a_manual() {
    for args in [&["--help"][..], &["run", "--help"], &["compare", "-h"]] {
        let outcome = run_tool(args);
        assert!(outcome.success(), "{}", outcome.report());
        for section in [
            "NAME",
            "SYNOPSIS",
            "DESCRIPTION",
            "OPTIONS",
            "EXIT STATUS",
            "EXAMPLES",
        ] {
            assert!(
                outcome.stdout.lines().any(|l| l == section),
                "{args:?}: no {section} section:\n{}",
                outcome.stdout
            );
        }
    }
}

/// Runs the tool with stdout and stderr on a pipe whose reader is already
/// gone (as `buddyslab ... 2>&1 | true` when `true` has finished), and
/// returns how it ended.
fn run_into_closed_pipe(args: &[&str]) -> std::process::ExitStatus {
    use std::os::fd::{FromRawFd, OwnedFd};
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two fresh descriptors into the array.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both descriptors are fresh and owned by nobody else.
    let (read_end, write_end) =
        unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(read_end);
    let mut cmd = tool(args);
    cmd.stdin(Stdio::null())
        .stdout(Stdio::from(write_end.try_clone().unwrap()))
        .stderr(Stdio::from(write_end));
    let mut child = cmd.spawn().expect("start buddyslab");
    drop(cmd);
    let deadline = std::time::Instant::now() + HANG_GUARD;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            return status;
        }
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            panic!("{args:?} did not end");
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A closed stdout or stderr does not stop the tool: the summary, the
/// progress lines and the table are dropped, and the program's exit status
/// still passes through (it used to abort with 134).
#[test]
fn a_closed_pipe_does_not_change_the_exit_status() {
    find_program("sh", "dash");
    find_program("true", "coreutils");
    for (args, expected) in [
        (&["run", "--", "true"][..], 0),
        (&["run", "--", "sh", "-c", "exit 3"], 3),
        (
            &[
                "compare",
                "--runs",
                "1",
                "--only",
                "glibc,buddyslab",
                "--",
                "true",
            ],
            0,
        ),
        (&["--help"], 0),
        (&["run", "--bogus", "--", "true"], 125),
    ] {
        let status = run_into_closed_pipe(args);
        assert_eq!(status.code(), Some(expected), "{args:?}: {status}");
    }
}

/// The pipelines of the report, through a real shell: `| true` and
/// `| head -3`. With `--stats` the program itself may die of SIGPIPE when
/// `head` has gone before the library's last line, and then the tool dies
/// of it too, as the program run alone would; it never aborts.
#[test]
fn pipelines_into_true_and_head() {
    find_program("bash", "bash");
    find_program("head", "coreutils");
    let exe = env!("CARGO_BIN_EXE_buddyslab");
    let mut cmd = Command::new("bash");
    clean_malloc_env(&mut cmd);
    cmd.args([
        "-c",
        "\"$0\" run -- true 2>&1 | true; exit ${PIPESTATUS[0]}",
        exe,
    ]);
    let outcome = run(cmd, HANG_GUARD);
    assert_eq!(exit_code(&outcome), Some(0), "{}", outcome.report());

    for _ in 0..5 {
        let mut cmd = Command::new("bash");
        clean_malloc_env(&mut cmd);
        cmd.args([
            "-c",
            "\"$0\" run --stats -- true 2>&1 | head -3 >/dev/null; exit ${PIPESTATUS[0]}",
            exe,
        ]);
        let outcome = run(cmd, HANG_GUARD);
        let code = exit_code(&outcome);
        assert!(
            code == Some(0) || code == Some(128 + libc::SIGPIPE),
            "{}",
            outcome.report()
        );
    }
}

/// `--heapmap --stats` used to write a map named `--stats` and drop
/// `--stats`; `--heapmap --` one named `--`. Now both are usage errors,
/// and nothing runs or is written.
#[test]
fn an_option_value_never_swallows_the_next_option() {
    let dir = fresh_dir("cli", "swallow");
    for args in [
        &["run", "--heapmap", "--stats", "--", "true"][..],
        &["run", "--heapmap", "--", "true"],
        &["run", "--lib", "--", "true"],
        &["compare", "--chart", "--runs", "1", "--", "true"],
    ] {
        let mut cmd = tool(args);
        cmd.current_dir(&dir);
        let outcome = run(cmd, HANG_GUARD);
        assert_eq!(exit_code(&outcome), Some(125), "{}", outcome.report());
        assert!(
            outcome.stderr.contains("a value is required") && outcome.stderr.contains("--help"),
            "{}",
            outcome.report()
        );
        let left: Vec<_> = std::fs::read_dir(&dir).unwrap().collect();
        assert!(left.is_empty(), "{args:?} wrote {left:?}");
    }
}

/// Every `BUDDYSLAB_*` variable the library reads (a byte-string literal
/// that is exactly the name, in `src/` and `cdylib/src/`) is explained in
/// `buddyslab --help` and `buddyslab run --help`.
#[test]
fn help_lists_every_variable_the_library_reads() {
    fn scan(dir: &Path, names: &mut std::collections::BTreeSet<String>) {
        for entry in std::fs::read_dir(dir).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                scan(&path, names);
            } else if path.extension().is_some_and(|e| e == "rs") {
                let text = std::fs::read_to_string(&path).unwrap();
                for (at, _) in text.match_indices("b\"BUDDYSLAB_") {
                    let rest = &text[at + 2..];
                    let end = rest
                        .find(|c: char| !(c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_'))
                        .unwrap_or(rest.len());
                    if rest[end..].starts_with('"') && end > "BUDDYSLAB_".len() {
                        names.insert(rest[..end].to_string());
                    }
                }
            }
        }
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let mut names = std::collections::BTreeSet::new();
    scan(&root.join("src"), &mut names);
    scan(&root.join("cdylib/src"), &mut names);
    for known in [
        "BUDDYSLAB_MMAP_THRESHOLD",
        "BUDDYSLAB_LARGE_CACHE",
        "BUDDYSLAB_ANNOUNCE",
    ] {
        assert!(names.contains(known), "the scan missed {known}: {names:?}");
    }
    for args in [&["--help"][..], &["run", "--help"]] {
        let outcome = run_tool(args);
        assert!(outcome.success(), "{}", outcome.report());
        for name in &names {
            assert!(
                outcome.stdout.contains(&format!("    {name}=")),
                "{args:?} does not explain {name}:\n{}",
                outcome.stdout
            );
        }
    }
}

/// `completions SHELL` prints a script that knows the commands and the
/// options; bash's parses.
#[test]
fn completions_for_bash_zsh_and_fish() {
    for shell in ["bash", "zsh", "fish"] {
        let outcome = run_tool(&["completions", shell]);
        assert!(outcome.success(), "{}", outcome.report());
        for word in ["compare", "heapmap", "allow-output-diff"] {
            assert!(
                outcome.stdout.contains(word),
                "the {shell} script lacks `{word}`:\n{}",
                outcome.stdout
            );
        }
    }
    find_program("bash", "bash");
    let dir = fresh_dir("cli", "completions");
    let script = dir.join("buddyslab.bash");
    std::fs::write(&script, run_tool(&["completions", "bash"]).stdout).unwrap();
    let mut cmd = Command::new("bash");
    cmd.arg("-n").arg(&script);
    let outcome = run(cmd, HANG_GUARD);
    assert!(outcome.success(), "{}", outcome.report());
}

/// A copy of the tool at `dir/bin/buddyslab`, as an install puts it.
fn tool_copy(dir: &Path) -> PathBuf {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let exe = bin.join("buddyslab");
    std::fs::copy(env!("CARGO_BIN_EXE_buddyslab"), &exe).unwrap();
    exe
}

/// `exe run [extra] -- printenv LD_PRELOAD`, with `BUDDYSLAB_LIB` set
/// only when given: the program prints the library the tool preloaded.
fn preloaded_by(exe: &Path, lib_variable: Option<&Path>, extra: &[&str]) -> Outcome {
    let mut cmd = Command::new(exe);
    clean_malloc_env(&mut cmd);
    if let Some(lib) = lib_variable {
        cmd.env("BUDDYSLAB_LIB", lib);
    }
    cmd.arg("run")
        .args(extra)
        .args(["--no-summary", "--", "printenv", "LD_PRELOAD"]);
    run(cmd, HANG_GUARD)
}

fn same_file(a: &str, b: &Path) -> bool {
    std::fs::canonicalize(a.trim()).ok() == std::fs::canonicalize(b).ok()
}

/// The tool preloads the first of: --lib, BUDDYSLAB_LIB, libbuddyslab.so
/// next to its executable, in ../lib/ from it; and it says where it looked
/// when there is none. BUDDYSLAB_LIB is not passed on to the program (the
/// library would call it unknown).
#[test]
fn the_library_is_looked_for_in_order() {
    find_program("printenv", "coreutils");
    let dir = fresh_dir("cli", "lookup");
    let exe = tool_copy(&dir);
    let (installed, beside, named, given) = (
        dir.join("lib/libbuddyslab.so"),
        dir.join("bin/libbuddyslab.so"),
        dir.join("named/libbuddyslab.so"),
        dir.join("given/libbuddyslab.so"),
    );
    for lib in [&installed, &beside, &named, &given] {
        std::fs::create_dir_all(lib.parent().unwrap()).unwrap();
    }

    // None anywhere.
    let outcome = preloaded_by(&exe, None, &[]);
    assert_eq!(exit_code(&outcome), Some(125), "{}", outcome.report());
    assert!(
        outcome.stderr.contains(path_str(&beside))
            && outcome.stderr.contains("lib/libbuddyslab.so")
            && outcome.stderr.contains("scripts/install.sh")
            && outcome.stderr.contains("BUDDYSLAB_LIB"),
        "{}",
        outcome.report()
    );

    let expect = |outcome: Outcome, lib: &Path| {
        assert!(outcome.success(), "{}", outcome.report());
        assert!(
            same_file(&outcome.stdout, lib),
            "preloaded {} instead of {}",
            outcome.stdout.trim(),
            lib.display()
        );
    };
    std::fs::copy(library(), &installed).unwrap();
    expect(preloaded_by(&exe, None, &[]), &installed);
    std::fs::copy(library(), &beside).unwrap();
    expect(preloaded_by(&exe, None, &[]), &beside);
    std::fs::copy(library(), &named).unwrap();
    expect(preloaded_by(&exe, Some(&named), &[]), &named);
    std::fs::copy(library(), &given).unwrap();
    expect(
        preloaded_by(&exe, Some(&named), &["--lib", path_str(&given)]),
        &given,
    );

    // A BUDDYSLAB_LIB that names nothing is an error, not a fall-through.
    let outcome = preloaded_by(&exe, Some(&dir.join("nothing.so")), &[]);
    assert_eq!(exit_code(&outcome), Some(125), "{}", outcome.report());
    assert!(
        outcome.stderr.contains("named by BUDDYSLAB_LIB"),
        "{}",
        outcome.report()
    );

    let mut cmd = Command::new(&exe);
    clean_malloc_env(&mut cmd);
    cmd.env("BUDDYSLAB_LIB", &named).args([
        "run",
        "--no-summary",
        "--",
        "printenv",
        "BUDDYSLAB_LIB",
    ]);
    let outcome = run(cmd, HANG_GUARD);
    assert_eq!(exit_code(&outcome), Some(1), "{}", outcome.report());
    assert!(
        outcome.stdout.is_empty() && outcome.stderr.is_empty(),
        "{}",
        outcome.report()
    );
}

/// `scripts/install.sh --no-build` with a PREFIX gives a tool that finds
/// its library, and the completion scripts.
#[test]
fn the_install_script_gives_a_working_tool() {
    find_program("sh", "dash");
    find_program("install", "coreutils");
    let prefix = fresh_dir("cli", "install");
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let target = library().parent().unwrap().parent().unwrap().to_path_buf();
    let mut cmd = Command::new("sh");
    clean_malloc_env(&mut cmd);
    cmd.arg(root.join("scripts/install.sh"))
        .arg("--no-build")
        .env("PREFIX", &prefix)
        .env("CARGO_TARGET_DIR", &target)
        .env_remove("DESTDIR");
    let outcome = run(cmd, HANG_GUARD);
    assert!(outcome.success(), "{}", outcome.report());
    for file in [
        "bin/buddyslab",
        "lib/libbuddyslab.so",
        "share/bash-completion/completions/buddyslab",
        "share/zsh/site-functions/_buddyslab",
        "share/fish/vendor_completions.d/buddyslab.fish",
    ] {
        assert!(prefix.join(file).is_file(), "{file} was not installed");
    }

    let mut cmd = Command::new(prefix.join("bin/buddyslab"));
    clean_malloc_env(&mut cmd);
    cmd.args(["run", "--", "true"]);
    let outcome = run(cmd, HANG_GUARD);
    assert!(outcome.success(), "{}", outcome.report());
    assert_bound(&outcome);
    assert!(
        outcome
            .stderr
            .contains(path_str(&prefix.join("lib/libbuddyslab.so"))),
        "{}",
        outcome.report()
    );
}

/// The summary's heap-map line tells this run's map from an older one:
/// the same run ten times over says each time that the map was written
/// (comparing the file's time with a clock read before the run said "was
/// not written" 8 times in 10), and a map left from before by a program
/// that leaves past the exit handlers is not taken for this run's.
#[test]
fn the_heap_map_check_tells_this_run_s_map() {
    find_program("true", "coreutils");
    let dir = fresh_dir("cli", "heapmap-check");
    let map = dir.join("y.svg");
    for k in 0..10 {
        let mut cmd = tool(&["run", "--heapmap", "y.svg", "--", "true"]);
        cmd.current_dir(&dir);
        let outcome = run(cmd, HANG_GUARD);
        assert!(outcome.success(), "{}", outcome.report());
        assert!(
            outcome
                .stderr
                .contains(&format!("heap map      {}\n", path_str(&map))),
            "run {k}:\n{}",
            outcome.report()
        );
        let svg = std::fs::read_to_string(&map).expect("no map");
        assert!(svg.starts_with("<svg"), "run {k}: {svg:.80}");
    }

    // dash leaves by `_exit`, past the exit handlers, and starts nothing.
    let sh = find_program("sh", "dash");
    std::fs::write(&map, "an old map\n").unwrap();
    let mut cmd = tool(&["run", "--heapmap", "y.svg", "--"]);
    cmd.arg(&sh).args(["-c", ":"]).current_dir(&dir);
    let outcome = run(cmd, HANG_GUARD);
    assert!(outcome.success(), "{}", outcome.report());
    assert!(
        outcome.stderr.contains("was not written: ")
            && outcome.stderr.contains("(sh): it left without running its exit handlers"),
        "{}",
        outcome.report()
    );
    assert!(!map.exists(), "the old map is still there");

    let outcome = run_tool(&["run", "--heapmap", path_str(&dir), "--", "true"]);
    assert_eq!(exit_code(&outcome), Some(125), "{}", outcome.report());
}

/// `compare --json`: one document with every run and each malloc's min,
/// median, max and MAD; the short-program warning is there exactly when
/// glibc's median is under 50 ms. The scratch folder goes in TMPDIR and is
/// gone afterwards.
#[test]
fn compare_json_has_every_run_and_the_spread() {
    find_program("true", "coreutils");
    let tmp = fresh_dir("cli", "compare-json-tmp");
    let mut cmd = tool(&[
        "compare",
        "--runs",
        "3",
        "--only",
        "glibc,buddyslab",
        "--json",
        "--",
        "true",
    ]);
    cmd.env("TMPDIR", &tmp);
    let outcome = run(cmd, HANG_GUARD);
    assert!(outcome.success(), "{}", outcome.report());
    let doc: serde_json::Value = serde_json::from_str(&outcome.stdout)
        .unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", outcome.report()));
    assert_eq!(doc["reference"], "glibc");
    assert_eq!(doc["differs"], false);
    let mallocs = doc["mallocs"].as_array().expect("mallocs");
    assert_eq!(mallocs.len(), 2);
    for (malloc, name) in mallocs.iter().zip(["glibc", "buddyslab"]) {
        assert_eq!(malloc["name"], name);
        assert_eq!(malloc["runs"].as_array().map(Vec::len), Some(3), "{malloc}");
        for figure in ["wall_s", "peak_rss_kib", "minor_faults"] {
            let s = &malloc[figure];
            let [min, median, max, mad] =
                ["min", "median", "max", "mad"].map(|k| s[k].as_f64().expect("a number"));
            assert!(
                min <= median && median <= max && mad >= 0.0,
                "{figure}: {s}"
            );
            assert!(malloc["ratio"][figure].is_number(), "{malloc}");
        }
    }
    assert_eq!(mallocs[0]["ratio"]["wall_s"], 1.0);
    let short = mallocs[0]["wall_s"]["median"].as_f64().unwrap() < 0.05;
    let warned = doc["warnings"]
        .as_array()
        .unwrap()
        .iter()
        .any(|w| w.as_str().unwrap_or("").contains("under 50 ms"));
    assert_eq!(short, warned, "{}", outcome.stdout);
    let left: Vec<_> = std::fs::read_dir(&tmp).unwrap().collect();
    assert!(left.is_empty(), "the scratch folder is left: {left:?}");

    // The table shows the spread beside each median.
    let outcome = run_tool(&[
        "compare",
        "--runs",
        "2",
        "--only",
        "glibc,buddyslab",
        "--",
        "true",
    ]);
    assert!(outcome.success(), "{}", outcome.report());
    let rows: Vec<&str> = outcome
        .stdout
        .lines()
        .filter(|l| l.contains(" s "))
        .collect();
    assert_eq!(rows.len(), 2, "{}", outcome.stdout);
    for row in rows {
        assert!(
            row.contains("..") && row.contains('('),
            "no spread in `{row}`"
        );
    }
}

/// `--timeout`: a run past it is killed, its malloc gets no more runs, and
/// the comparison says so and exits with 1; a generous one changes nothing.
#[test]
fn compare_timeout_kills_a_run_that_hangs() {
    find_program("sleep", "coreutils");
    let outcome = run_tool(&[
        "compare",
        "--runs",
        "2",
        "--only",
        "glibc,buddyslab",
        "--timeout",
        "0.5",
        "--",
        "sleep",
        "600",
    ]);
    assert_eq!(exit_code(&outcome), Some(1), "{}", outcome.report());
    for line in [
        "TIMED OUT under glibc (its run 1)",
        "TIMED OUT under buddyslab (its run 1)",
    ] {
        assert!(outcome.stdout.contains(line), "{}", outcome.report());
    }
    assert_eq!(
        outcome.stderr.matches("--timeout").count(),
        2,
        "a malloc ran again after timing out:\n{}",
        outcome.report()
    );

    let outcome = run_tool(&[
        "compare",
        "--runs",
        "1",
        "--only",
        "glibc,buddyslab",
        "--timeout",
        "300",
        "--",
        "true",
    ]);
    assert!(outcome.success(), "{}", outcome.report());
    assert!(
        !outcome.stdout.contains("TIMED OUT"),
        "{}",
        outcome.report()
    );
}

/// `--allow-output-diff`: a program that prints something else under each
/// malloc (here its LD_PRELOAD) fails the comparison without it and passes
/// with it, the exit status still compared.
#[test]
fn compare_allow_output_diff() {
    find_program("sh", "dash");
    let base = ["compare", "--runs", "1", "--only", "glibc,buddyslab"];
    let program = ["--", "sh", "-c", "echo \"$LD_PRELOAD\""];
    let outcome = run_tool(&[&base[..], &program[..]].concat());
    assert_eq!(exit_code(&outcome), Some(1), "{}", outcome.report());
    assert!(
        outcome.stdout.contains("OUTPUT DIFFERS under buddyslab"),
        "{}",
        outcome.report()
    );

    let outcome = run_tool(&[&base[..], &["--allow-output-diff"], &program[..]].concat());
    assert!(outcome.success(), "{}", outcome.report());
    assert!(
        outcome
            .stdout
            .contains("exit status: the same under every malloc")
            && outcome.stdout.contains("output not compared"),
        "{}",
        outcome.report()
    );

    let program = ["--", "sh", "-c", "test -z \"$LD_PRELOAD\""];
    let outcome = run_tool(&[&base[..], &["--allow-output-diff"], &program[..]].concat());
    assert_eq!(exit_code(&outcome), Some(1), "{}", outcome.report());
    assert!(
        outcome
            .stdout
            .contains("EXIT STATUS DIFFERS under buddyslab"),
        "{}",
        outcome.report()
    );
}
