//! Views while a program runs, and of every process: a program killed
//! after views written at an interval and on a signal, two processes
//! writing `%p` files side by side, and `views PID` / `top PID` of a
//! running process. The C program `busy` allocates until stopped.
//!
//! Needs the release build first, as `cli.rs` does.

#[path = "../../tests/common/mod.rs"]
mod common;

use common::{clean_malloc_env, compile_c, find_program, fresh_dir, library, run, Outcome};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::Duration;

/// Far above any normal run; only stops a hang.
const HANG_GUARD: Duration = Duration::from_secs(300);

fn busy() -> PathBuf {
    static BUSY: OnceLock<PathBuf> = OnceLock::new();
    BUSY.get_or_init(|| compile_c("busy", "busy")).clone()
}

/// `buddyslab ARGS`, with the environment cleaned of preloads and malloc
/// settings.
fn buddyslab(args: &[&str]) -> Command {
    library();
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_buddyslab"));
    clean_malloc_env(&mut cmd);
    cmd.args(args);
    cmd
}

fn text(path: &Path) -> &str {
    path.to_str().expect("test paths are UTF-8")
}

/// Starts `busy` on buddyslab under `run` with `env` and waits for its
/// first round; returns the tool and busy's pid.
fn start_busy(env: &[(&str, &str)], run_args: &[&str]) -> (Child, i32) {
    let busy = busy();
    let mut args = vec!["run", "--no-summary"];
    args.extend_from_slice(run_args);
    args.extend(["--", text(&busy)]);
    let mut cmd = buddyslab(&args);
    cmd.envs(env.iter().copied()).stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut child = cmd.spawn().expect("start the tool");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap()).read_line(&mut line).unwrap();
    let pid = line.strip_prefix("ready ").and_then(|p| p.trim().parse().ok());
    let Some(pid) = pid else {
        let _ = child.kill();
        panic!("busy did not start: {line:?}");
    };
    (child, pid)
}

fn kill(pid: i32, signal: i32) {
    // SAFETY: kill(2) takes no pointers.
    assert_eq!(unsafe { libc::kill(pid, signal) }, 0, "kill {pid}");
}

/// Polls (up to the hang guard) until `done` holds.
fn wait_until(what: &str, mut done: impl FnMut() -> bool) {
    let begin = std::time::Instant::now();
    while !done() {
        assert!(begin.elapsed() < HANG_GUARD, "waited too long for {what}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

fn files_in(dir: &Path) -> Vec<String> {
    let mut names: Vec<String> =
        std::fs::read_dir(dir).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
    names.sort();
    names
}

/// A program killed by SIGTERM (through `timeout`, as a user stops a
/// server) has no exit handlers run, but its views written at the interval
/// are there, and `run` says why the final ones are missing.
#[test]
fn a_killed_process_leaves_its_interval_views() {
    let timeout = find_program("timeout", "coreutils");
    let dir = fresh_dir("live", "killed");
    let views = dir.join("v.%p");
    let mut cmd = Command::new(timeout);
    clean_malloc_env(&mut cmd);
    cmd.args(["-s", "TERM", "2", env!("CARGO_BIN_EXE_buddyslab"), "run", "--stats", "--", text(&busy())])
        .env("BUDDYSLAB_STATS_FILE", &views)
        .env("BUDDYSLAB_STATS_INTERVAL_MS", "50");
    library();
    let outcome = run(cmd, HANG_GUARD);
    assert_eq!(outcome.status.and_then(|s| s.code()), Some(124), "timeout's status:\n{}", outcome.report());
    let names = files_in(&dir);
    assert_eq!(names.len(), 1, "one file, no leftovers: {names:?}");
    let pid = names[0].strip_prefix("v.").expect("v.PID");
    let written = std::fs::read_to_string(dir.join(&names[0])).unwrap();
    assert!(written.starts_with(&format!("== buddyslab 1 {pid} (busy) at interval\n== totals\nInUse:")), "{written:.300}");
    assert!(written.contains("== address_space"), "the views are whole");
    assert!(
        outcome.stderr.contains("killed by signal 15 (SIGTERM) before its exit handlers ran"),
        "{}",
        outcome.report()
    );
    assert!(outcome.stderr.contains(&format!("views {}", text(&dir.join(&names[0])))), "{}", outcome.report());
}

/// `BUDDYSLAB_STATS_SIGNAL=USR2`: the views come when asked, while the
/// program runs, once per signal; the handler itself writes nothing.
#[test]
fn the_opt_in_signal_writes_the_views() {
    let dir = fresh_dir("live", "signal");
    let views = dir.join("v.%p.json");
    let (mut tool, pid) = start_busy(
        &[("BUDDYSLAB_STATS_FILE", text(&views)), ("BUDDYSLAB_STATS", "json"), ("BUDDYSLAB_STATS_SIGNAL", "USR2")],
        &[],
    );
    let file = dir.join(format!("v.{pid}.json"));
    assert!(!file.exists(), "nothing before the signal");
    kill(pid, libc::SIGUSR2);
    wait_until("the views after SIGUSR2", || file.exists());
    let json: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
    assert_eq!(json["version"], 1);
    assert_eq!(json["pid"], pid);
    assert!(json["totals"]["mapped"].as_u64().unwrap() > 0, "{json}");
    kill(pid, libc::SIGKILL);
    let _ = tool.wait();
}

/// Two processes naming the same `%p` paths write a file each, whole,
/// with no temporary file left behind.
#[test]
fn two_processes_write_their_own_percent_p_files() {
    find_program("sh", "dash");
    let dir = fresh_dir("live", "two");
    let script = format!("{0} 3 >/dev/null & {0} 3 >/dev/null; wait", text(&busy()));
    let mut cmd = buddyslab(&["run", "--heapmap", text(&dir.join("m.%p.svg")), "--", "sh", "-c", &script]);
    cmd.env("BUDDYSLAB_STATS_FILE", dir.join("v.%p"));
    let outcome: Outcome = run(cmd, HANG_GUARD);
    assert!(outcome.success(), "{}", outcome.report());
    let names = files_in(&dir);
    let views: Vec<&String> = names.iter().filter(|n| n.starts_with("v.")).collect();
    let maps: Vec<&String> = names.iter().filter(|n| n.starts_with("m.")).collect();
    assert_eq!((views.len(), maps.len(), names.len()), (2, 2, 4), "{names:?}");
    for v in views {
        let pid = v.strip_prefix("v.").unwrap();
        let written = std::fs::read_to_string(dir.join(v)).unwrap();
        assert!(written.starts_with(&format!("== buddyslab 1 {pid} (busy) at exit\n")), "{written:.200}");
        assert!(names.contains(&format!("m.{pid}.svg")), "{names:?}");
        assert!(std::fs::read_to_string(dir.join(format!("m.{pid}.svg"))).unwrap().trim_end().ends_with("</svg>"));
        assert!(outcome.stderr.contains(&format!("m.{pid}.svg")), "the summary lists it:\n{}", outcome.report());
    }
}

/// `views PID` and `top PID` of a running program read its live page
/// without stopping it; the page goes when the program exits.
#[test]
fn views_and_top_of_a_running_process() {
    let (mut tool, pid) = start_busy(&[], &["--live"]);
    let page = PathBuf::from(format!("/dev/shm/buddyslab-{pid}"));
    assert!(page.exists());

    let outcome = run(buddyslab(&["views", &pid.to_string()]), HANG_GUARD);
    assert!(outcome.success(), "{}", outcome.report());
    assert!(outcome.stdout.starts_with(&format!("== buddyslab 1 {pid} (live)\n== totals\nInUse:")), "{}", outcome.report());
    assert!(outcome.stdout.contains("\n== slabinfo\nslabinfo - version: 2.1\n"), "{}", outcome.report());
    assert!(!outcome.stderr.contains("no slow path"), "a busy program answers at once:\n{}", outcome.report());

    let outcome = run(buddyslab(&["views", "--json", &pid.to_string()]), HANG_GUARD);
    assert!(outcome.success(), "{}", outcome.report());
    let json: serde_json::Value = serde_json::from_str(&outcome.stdout).unwrap();
    assert_eq!((json["version"].as_u64(), json["pid"].as_i64()), (Some(1), Some(pid as i64)));
    assert!(json["totals"]["in_use"].as_u64().unwrap() > 0);

    let outcome = run(buddyslab(&["top", "--once", "--interval", "0.2", &pid.to_string()]), HANG_GUARD);
    assert!(outcome.success(), "{}", outcome.report());
    for line in [" Active / Total Objects (% used)    : ", "Minor faults per s (predicted)", "Node 0, zone buddyslab", "  OBJS ACTIVE  USE OBJ SIZE  SLABS OBJ/SLAB CACHE SIZE NAME\n"] {
        assert!(outcome.stdout.contains(line), "no {line:?}:\n{}", outcome.stdout);
    }
    assert!(outcome.stdout.contains(" kmalloc-"), "{}", outcome.stdout);

    kill(pid, libc::SIGINT);
    let _ = tool.wait();
    // SIGINT kills busy (no exit handlers): the tool removes the stale page.
    assert!(!page.exists(), "the page outlived the run");
    let outcome = run(buddyslab(&["views", &pid.to_string()]), HANG_GUARD);
    assert_eq!(outcome.status.and_then(|s| s.code()), Some(125), "{}", outcome.report());
}

/// A page is removed by the process's own exit handlers.
#[test]
fn the_live_page_goes_at_exit() {
    let mut cmd = buddyslab(&["run", "--live", "--", text(&busy()), "2"]);
    cmd.stdout(Stdio::piped());
    let outcome = run(cmd, HANG_GUARD);
    assert!(outcome.success(), "{}", outcome.report());
    let pid: i32 = outcome.stdout.trim().strip_prefix("ready ").unwrap().parse().unwrap();
    assert!(!Path::new(&format!("/dev/shm/buddyslab-{pid}")).exists());
}
