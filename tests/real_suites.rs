//! Bigger real programs under `LD_PRELOAD=libbuddyslab.so`:
//!
//! - a redis server on 127.0.0.1, loaded with a deterministic data set
//!   through `redis-cli --pipe`, driven by `redis-benchmark` with a bounded
//!   request count, then `DEBUG RELOAD` (save and load back); its
//!   `DEBUG DIGEST` and key count before and after the reload must equal
//!   those of the same run on plain glibc, and the server must shut down
//!   cleanly;
//! - python3.11 running part of its own test suite (Debian's
//!   `libpython3.11-testsuite`).
//!
//! A missing program fails the test with the Debian package to install
//! (`.ci/run` installs them). Needs `target/release/libbuddyslab.so`: run
//! `cargo build --release && cargo test --release --workspace`.

mod common;

use common::{clean_malloc_env, find_program, fresh_dir, library, remove_scratch, run, scratch_dir, Outcome};
use std::fmt::Write as _;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Far above any normal run (seconds); only stops a hang.
const HANG_GUARD: Duration = Duration::from_secs(600);

// ------------------------------------------------------------------ redis

/// Requests per `redis-benchmark` test (bounded, so the run is too).
const BENCH_REQUESTS: &str = "20000";

/// A deterministic data set in the redis protocol: strings of many sizes,
/// lists, hashes, sets and sorted sets, some of it deleted again, so the
/// server's allocations cover small objects, page runs and large blocks.
fn data_set() -> Vec<u8> {
    fn command(out: &mut String, args: &[&str]) {
        let _ = write!(out, "*{}\r\n", args.len());
        for a in args {
            let _ = write!(out, "${}\r\n{}\r\n", a.len(), a);
        }
    }
    let mut rng = 0x5eed_1234_u64;
    let mut next = move || {
        rng ^= rng >> 12;
        rng ^= rng << 25;
        rng ^= rng >> 27;
        rng.wrapping_mul(0x2545_f491_4f6c_dd1d)
    };
    let mut out = String::new();
    for i in 0..20_000u64 {
        let r = next();
        let len = match r % 100 {
            0 => 200_000 + (r >> 40) as usize % 300_000,
            1..=10 => 1000 + (r >> 40) as usize % 20_000,
            _ => 1 + (r >> 40) as usize % 300,
        };
        let value: String = (0..len).map(|j| (b'a' + ((i as usize + j) % 26) as u8) as char).collect();
        command(&mut out, &["SET", &format!("str:{i}"), &value]);
        match i % 7 {
            0 => command(&mut out, &["RPUSH", &format!("list:{}", i % 300), &value[..value.len().min(40)]]),
            1 => command(&mut out, &["HSET", &format!("hash:{}", i % 200), &format!("f{i}"), &value[..value.len().min(60)]]),
            2 => command(&mut out, &["SADD", &format!("set:{}", i % 100), &format!("m{}", r % 5000)]),
            3 => command(&mut out, &["ZADD", &format!("zset:{}", i % 50), &format!("{}", r % 100_000), &format!("z{i}")]),
            4 if i > 100 => command(&mut out, &["DEL", &format!("str:{}", i - 100)]),
            5 => command(&mut out, &["APPEND", &format!("str:{}", i / 2), &value[..value.len().min(500)]]),
            _ => {}
        }
    }
    out.into_bytes()
}

fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

fn redis_cli(port: u16, args: &[&str]) -> Outcome {
    let mut cmd = Command::new("redis-cli");
    cmd.args(["-h", "127.0.0.1", "-p", &port.to_string()]).args(args);
    clean_malloc_env(&mut cmd);
    run(cmd, HANG_GUARD)
}

/// What a run leaves to compare.
#[derive(Debug, PartialEq, Eq)]
struct RedisResult {
    digest: String,
    keys: String,
    digest_after_reload: String,
    keys_after_reload: String,
}

/// The directory (under `target/tmp/real-suites`) of the redis run
/// under `label`.
fn redis_dir_name(label: &str) -> String {
    format!("redis-{label}")
}

/// Starts redis-server (preloaded or not) in `dir`, loads the data set,
/// runs the benchmark, reloads, and shuts it down. Returns the figures and
/// the benchmark's summary.
fn redis_run(label: &str, preload: Option<&Path>) -> (RedisResult, String) {
    let dir = fresh_dir("real-suites", &redis_dir_name(label));
    let data = dir.join("data.resp");
    std::fs::write(&data, data_set()).expect("write the data set");
    let port = free_port();
    let mut server = Command::new("redis-server");
    server
        .args(["--bind", "127.0.0.1", "--port", &port.to_string(), "--save", "", "--appendonly", "no"])
        .args(["--enable-debug-command", "yes", "--daemonize", "no", "--dir"])
        .arg(&dir)
        .args(["--logfile", "server.log"])
        .current_dir(&dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    clean_malloc_env(&mut server);
    if let Some(lib) = preload {
        server.env("LD_PRELOAD", lib);
    }
    let mut child = server.spawn().expect("start redis-server");
    let result = drive(&dir, port, &data, &mut child);
    // Whatever happened, the server must not outlive the test.
    let _ = child.kill();
    let _ = child.wait();
    result.unwrap_or_else(|e| {
        let log = std::fs::read_to_string(dir.join("server.log")).unwrap_or_default();
        panic!("redis ({label}): {e}\n--- server.log (tail) ---\n{}", common::tail(&log, 3000))
    })
}

fn drive(dir: &Path, port: u16, data: &Path, server: &mut Child) -> Result<(RedisResult, String), String> {
    let started = Instant::now();
    loop {
        if redis_cli(port, &["PING"]).stdout.trim() == "PONG" {
            break;
        }
        if let Ok(Some(status)) = server.try_wait() {
            return Err(format!("redis-server exited at start-up: {status}"));
        }
        if started.elapsed() > Duration::from_secs(60) {
            return Err("redis-server did not answer PING within 60 s".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let ok = |o: Outcome| if o.success() { Ok(o) } else { Err(o.report()) };
    let mut load = Command::new("sh");
    load.arg("-c")
        .arg(format!("redis-cli -h 127.0.0.1 -p {port} --pipe < '{}'", data.display()))
        .current_dir(dir);
    clean_malloc_env(&mut load);
    let loaded = ok(run(load, HANG_GUARD))?;
    if !loaded.stdout.contains("errors: 0") {
        return Err(format!("loading the data set reported errors:\n{}", loaded.report()));
    }
    let mut bench = Command::new("redis-benchmark");
    bench
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-n", BENCH_REQUESTS, "-c", "20", "-q"])
        .args(["-t", "set,get,incr,lpush,rpush,lpop,rpop,sadd,hset,spop,zadd,lrange_100,mset"]);
    clean_malloc_env(&mut bench);
    let bench = ok(run(bench, HANG_GUARD))?;
    let digest = ok(redis_cli(port, &["DEBUG", "DIGEST"]))?.stdout.trim().to_string();
    let keys = ok(redis_cli(port, &["DBSIZE"]))?.stdout.trim().to_string();
    let reload = ok(redis_cli(port, &["DEBUG", "RELOAD"]))?;
    if reload.stdout.trim() != "OK" {
        return Err(format!("DEBUG RELOAD failed:\n{}", reload.report()));
    }
    let digest_after_reload = ok(redis_cli(port, &["DEBUG", "DIGEST"]))?.stdout.trim().to_string();
    let keys_after_reload = ok(redis_cli(port, &["DBSIZE"]))?.stdout.trim().to_string();
    let _ = redis_cli(port, &["SHUTDOWN", "NOSAVE"]);
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = server.try_wait().map_err(|e| e.to_string())? {
            break s;
        }
        if Instant::now() > deadline {
            return Err("redis-server did not exit within 60 s of SHUTDOWN".into());
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut stderr = String::new();
    if let Some(mut e) = server.stderr.take() {
        use std::io::Read as _;
        let _ = e.read_to_string(&mut stderr);
    }
    if !status.success() || stderr.contains("buddyslab:") {
        return Err(format!("redis-server ended with {status}; stderr:\n{stderr}"));
    }
    // `-q` redraws a progress line with carriage returns; keep the finals.
    let summary = bench
        .stdout
        .lines()
        .filter_map(|l| l.rsplit('\r').next())
        .map(str::trim)
        .filter(|l| l.contains("requests per second"))
        .collect::<Vec<_>>()
        .join("\n");
    Ok((RedisResult { digest, keys, digest_after_reload, keys_after_reload }, summary))
}

#[test]
fn redis_benchmark_digest_matches_glibc() {
    let lib = library();
    find_program("redis-server", "redis-server");
    find_program("redis-benchmark", "redis-server");
    find_program("redis-cli", "redis-server");
    let (plain, _) = redis_run("glibc", None);
    let (preloaded, summary) = redis_run("buddyslab", Some(&lib));
    assert!(
        plain.digest.len() == 40 && plain.digest != "0".repeat(40),
        "the glibc run has no data set: {plain:?}"
    );
    assert_eq!(plain.digest, plain.digest_after_reload, "glibc run: DEBUG RELOAD changed the data");
    assert_eq!(
        plain, preloaded,
        "redis under LD_PRELOAD={} ends with a different data set than on glibc",
        lib.display()
    );
    eprintln!("redis under libbuddyslab.so: digest {} with {} keys, as on glibc\n{summary}", preloaded.digest, preloaded.keys);
    for label in ["glibc", "buddyslab"] {
        remove_scratch(&scratch_dir("real-suites").join(redis_dir_name(label)));
    }
}

// ----------------------------------------------------------------- python

/// The part of CPython's own test suite that leans on the allocator
/// hardest: containers, threads, JSON.
const PYTHON_TESTS: &[&str] = &["test_dict", "test_list", "test_set", "test_threading", "test_json"];

fn python_suite(preload: Option<&Path>) -> Outcome {
    let dir = fresh_dir("real-suites", if preload.is_some() { "python-buddyslab" } else { "python-glibc" });
    let mut cmd = Command::new("/usr/bin/python3.11");
    // -w: a test that fails is run once more on its own (verbose). Some of
    // test_threading's cases are timing-sensitive and fail under load on
    // plain glibc too; a real allocator fault fails both times.
    cmd.args(["-m", "test", "-j2", "-w"]).args(PYTHON_TESTS).current_dir(&dir);
    clean_malloc_env(&mut cmd);
    cmd.env("HOME", &dir).env("LC_ALL", "C");
    if let Some(lib) = preload {
        cmd.env("LD_PRELOAD", lib);
    }
    // Python installs its SIGINT handler only when SIGINT is not ignored,
    // and a test run started in the background of a shell inherits it
    // ignored: test_threading's interrupt_main cases then fail on any
    // malloc. Give the suite the default disposition.
    // SAFETY: signal(2) is async-signal-safe; the closure touches nothing else.
    unsafe {
        std::os::unix::process::CommandExt::pre_exec(&mut cmd, || {
            libc::signal(libc::SIGINT, libc::SIG_DFL);
            Ok(())
        });
    }
    run(cmd, HANG_GUARD)
}

#[test]
fn python_test_suite_part() {
    let lib = library();
    let python = Path::new("/usr/bin/python3.11");
    assert!(python.is_file(), "/usr/bin/python3.11 is missing: apt-get install python3.11 (.ci/run does this)");
    assert!(
        Path::new("/usr/lib/python3.11/test/test_dict.py").is_file(),
        "CPython's test suite is missing: apt-get install libpython3.11-testsuite (.ci/run does this)"
    );
    let outcome = python_suite(Some(&lib));
    // "Tests result: SUCCESS", or "FAILURE then SUCCESS" when a re-run passed.
    let passed = outcome.success()
        && outcome.stdout.lines().any(|l| l.starts_with("Tests result:") && l.trim_end().ends_with("SUCCESS"));
    if !passed {
        let plain = python_suite(None);
        panic!(
            "python3.11 -m test {} failed under LD_PRELOAD={} ({}):\n{}",
            PYTHON_TESTS.join(" "),
            lib.display(),
            if plain.success() { "it passes on plain glibc" } else { "it fails on plain glibc too" },
            outcome.report()
        );
    }
    eprintln!("python3.11 -m test {}: all OK under libbuddyslab.so", PYTHON_TESTS.join(" "));
    remove_scratch(&scratch_dir("real-suites").join("python-buddyslab"));
}
