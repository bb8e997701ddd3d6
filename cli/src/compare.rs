//! `buddyslab compare`: the program under glibc, buddyslab and the other
//! mallocs on the machine, interleaved, with a table of medians and their
//! spread (or one JSON document) and a check that the output does not
//! depend on the malloc.

use crate::args::CompareOptions;
use crate::child::{self, Binding, Ended, Finished, Launch};
use crate::out::{say, sayln, show, showln};
use crate::run::{binding_warning, cannot_start, library_path, mib, thousands};
use crate::chart::Row;
use crate::{chart, program, Failure};
use serde_json::{json, Value};
use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

/// Below this median wall time under the reference malloc, start-up and
/// noise outweigh what the malloc does, and the table says so.
const TOO_SHORT: Duration = Duration::from_millis(50);

/// The other mallocs looked for: name and the Debian package's library.
const PEERS: [(&str, &str); 3] = [
    ("jemalloc", "libjemalloc.so.2"),
    ("mimalloc", "libmimalloc.so.2"),
    ("tcmalloc", "libtcmalloc_minimal.so.4"),
];

/// One malloc in the comparison.
struct Malloc {
    name: String,
    /// `None`: glibc's own, no preload.
    lib: Option<PathBuf>,
    /// Said when the library file is missing.
    missing_hint: String,
    samples: Vec<Sample>,
    /// The run (from 1) that passed `--timeout`; the malloc gets no more.
    timed_out: Option<usize>,
}

/// One finished run's measurements. Its output is compared with the
/// reference as soon as the run ends and kept only when a report will show
/// it, so a program with a large output is not held in memory once per
/// run.
struct Sample {
    finished: Finished,
    /// Same stdout (unless `--allow-output-diff`) and exit as the
    /// [`Reference`]; true when there is no reference.
    matches: bool,
    /// For a malloc's first run that does not match: its stdout and the
    /// end of its stderr.
    kept: Option<(Vec<u8>, String)>,
}

/// The first run of the first malloc (glibc's), which every run is
/// compared with. Its stdout is empty under `--allow-output-diff`.
struct Reference {
    stdout: Vec<u8>,
    ended: Ended,
}

/// How a set of measurements spreads.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Spread {
    pub min: f64,
    pub median: f64,
    pub max: f64,
    /// Median absolute deviation from the median.
    pub mad: f64,
}

/// Writes `lib` back and drops it from the page cache, so that the runs
/// map it as a program maps an installed library, from pages read in on
/// demand: a library just built sits in the page cache as the linker
/// wrote it, in large folios on file systems that use them, and the kernel
/// maps such a folio whole on the first fault, so peak RSS would count all
/// of the library's text (see "Hot text" in docs/ARCHITECTURE.md). Done
/// for every malloc's library alike; a failure only leaves it as it was.
fn drop_from_page_cache(lib: &Path) {
    use std::os::fd::AsRawFd;
    let Ok(file) = File::open(lib) else { return };
    let _ = file.sync_all();
    // SAFETY: a descriptor of an open file; the call only advises.
    unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_DONTNEED) };
}

/// Runs the comparison; the exit status is 1 when the output or exit
/// status differed between mallocs, else 0.
pub fn compare(options: CompareOptions) -> Result<u8, Failure> {
    let path = program::resolve(&options.program.name)?;
    let image = program::check_program(&path)?;
    let mut mallocs = choose_mallocs(&options)?;
    for malloc in &mallocs {
        if let Some(lib) = &malloc.lib {
            program::check_library(lib, image.as_ref(), &malloc.missing_hint).map_err(|f| {
                Failure::tool(format!(
                    "{} ({}): {}",
                    malloc.name,
                    lib.display(),
                    f.message
                ))
            })?;
        }
    }
    for lib in mallocs.iter().filter_map(|m| m.lib.as_deref()) {
        drop_from_page_cache(lib);
    }
    if let Some(input) = &options.input {
        File::open(input)
            .map_err(|e| Failure::tool(format!("--input {}: {e}", input.display())))?;
    }

    let shown = command_line(&options);
    let scratch = Scratch::new()?;
    let total = options.runs * mallocs.len();
    let mut done = 0;
    let mut reference: Option<Reference> = None;
    for round in 0..options.runs {
        let count = mallocs.len();
        for k in 0..count {
            let index = (round + k) % count;
            let malloc = &mut mallocs[index];
            if malloc.timed_out.is_some() {
                continue;
            }
            done += 1;
            say!(
                "[{done:>w$}/{total}] round {}/{}: {:<10} ",
                round + 1,
                options.runs,
                malloc.name,
                w = total.to_string().len()
            );
            let (finished, stdout, stderr) = run_once(&options, &path, malloc, &scratch)?;
            if finished.timed_out {
                sayln!(
                    "killed after {:.3} s (--timeout); no more runs for {}",
                    finished.wall.as_secs_f64(),
                    malloc.name
                );
                malloc.timed_out = Some(malloc.samples.len() + 1);
                continue;
            }
            sayln!(
                "{:.3} s, {}",
                finished.wall.as_secs_f64(),
                finished.ended.describe()
            );
            // The first malloc runs first in round 1, so the reference is
            // its first run, or there is none because that run timed out.
            if index == 0 && reference.is_none() {
                reference = Some(Reference {
                    stdout: if options.allow_output_diff {
                        Vec::new()
                    } else {
                        stdout.clone()
                    },
                    ended: finished.ended,
                });
            }
            let matches = reference.as_ref().is_none_or(|r| {
                finished.ended == r.ended && (options.allow_output_diff || stdout == r.stdout)
            });
            let first_mismatch = !matches && malloc.samples.iter().all(|s| s.matches);
            let kept = first_mismatch.then(|| {
                let stdout = if options.allow_output_diff {
                    Vec::new()
                } else {
                    stdout
                };
                (stdout, stderr_tail(&stderr))
            });
            malloc.samples.push(Sample {
                finished,
                matches,
                kept,
            });
        }
    }

    let rows: Vec<Row> = mallocs.iter().map(medians).collect();
    let (verdict, differs) = output_check(&mallocs, reference.as_ref(), &options);
    let warnings = warnings(&rows);
    if options.json {
        let document = report_json(
            &shown, &options, &mallocs, &rows, &verdict, &warnings, differs,
        );
        showln!(
            "{}",
            serde_json::to_string_pretty(&document).expect("a JSON value prints")
        );
    } else {
        show!(
            "{}",
            table(&shown, options.runs, &rows, &verdict, &warnings)
        );
    }
    if let Some(chart_path) = &options.chart {
        let finished: Vec<Row> = rows.into_iter().filter(|r| r.runs > 0).collect();
        if finished.is_empty() {
            sayln!("no chart: no run finished");
        } else {
            let shown_mallocs: Vec<&Malloc> = mallocs
                .iter()
                .filter(|m| finished.iter().any(|r| r.name == m.name))
                .collect();
            let caption = caption(options.runs, &shown_mallocs);
            std::fs::write(chart_path, chart::svg(&shown, &finished, &caption))
                .map_err(|e| Failure::tool(format!("--chart {}: {e}", chart_path.display())))?;
            sayln!("chart written to {}", chart_path.display());
        }
    }
    Ok(u8::from(differs))
}

/// glibc, buddyslab, the peers found on the machine and `--with`, narrowed
/// and ordered by `--only`.
fn choose_mallocs(options: &CompareOptions) -> Result<Vec<Malloc>, Failure> {
    let (lib, hint) = library_path(options.lib.as_deref())?;
    let mut mallocs = vec![
        Malloc {
            name: "glibc".into(),
            lib: None,
            missing_hint: String::new(),
            samples: Vec::new(),
            timed_out: None,
        },
        Malloc {
            name: "buddyslab".into(),
            lib: Some(lib),
            missing_hint: hint,
            samples: Vec::new(),
            timed_out: None,
        },
    ];
    for (name, file) in PEERS {
        if let Some(lib) = find_peer(file) {
            mallocs.push(Malloc {
                name: name.into(),
                lib: Some(lib),
                missing_hint: String::new(),
                samples: Vec::new(),
                timed_out: None,
            });
        }
    }
    for (name, lib) in &options.with {
        let malloc = Malloc {
            name: name.clone(),
            lib: Some(lib.clone()),
            missing_hint: String::new(),
            samples: Vec::new(),
            timed_out: None,
        };
        match mallocs.iter_mut().find(|m| &m.name == name) {
            Some(existing) => *existing = malloc,
            None => mallocs.push(malloc),
        }
    }
    if let Some(only) = &options.only {
        let mut chosen = Vec::new();
        for name in only {
            let Some(at) = mallocs.iter().position(|m| &m.name == name) else {
                let known: Vec<_> = mallocs.iter().map(|m| m.name.as_str()).collect();
                return Err(Failure::usage(format!(
                    "--only {name}: no such malloc here (found: {}; add one with --with NAME=PATH)",
                    known.join(", ")
                )));
            };
            chosen.push(mallocs.remove(at));
        }
        mallocs = chosen;
    }
    if mallocs.is_empty() {
        return Err(Failure::usage("--only left nothing to compare"));
    }
    Ok(mallocs)
}

/// What a chart says of how it was measured: the machine, the runs per
/// malloc, and each malloc's version and library as far as they can be
/// found.
fn caption(runs: usize, mallocs: &[&Malloc]) -> chart::Caption {
    chart::Caption {
        machine: machine(),
        runs,
        libraries: mallocs
            .iter()
            .map(|m| (m.name.clone(), about_library(m)))
            .collect(),
    }
}

/// `x86_64, 16 CPUs, Linux 6.1.0-18-amd64`: `uname -m`, the CPUs this
/// process may run on (as its children inherit), `uname -sr`.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, |n| n.get());
    let cpus = format!("{cpus} CPU{}", if cpus == 1 { "" } else { "s" });
    // SAFETY: utsname is arrays of C chars, for which all zeroes is a
    // valid value.
    let mut names: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `names` is a valid, writable utsname that uname fills in.
    if unsafe { libc::uname(&mut names) } != 0 {
        return format!("{}, {cpus}", std::env::consts::ARCH);
    }
    let text = |field: &[libc::c_char]| {
        let bytes: Vec<u8> = field
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&bytes).into_owned()
    };
    format!(
        "{}, {cpus}, {} {}",
        text(&names.machine),
        text(&names.sysname),
        text(&names.release)
    )
}

/// A malloc's version and library: glibc's version (it is not preloaded);
/// for a preloaded library, the version of the Debian package holding it
/// where dpkg knows, then its path in brackets (relative to the current
/// folder when under it).
fn about_library(malloc: &Malloc) -> String {
    let Some(lib) = &malloc.lib else {
        return glibc_version().unwrap_or_default();
    };
    let shown = std::env::current_dir()
        .ok()
        .and_then(|dir| lib.strip_prefix(dir).ok().map(Path::to_path_buf))
        .unwrap_or_else(|| lib.clone());
    match package_version(lib) {
        Some(version) => format!("{version} ({})", shown.display()),
        None => format!("({})", shown.display()),
    }
}

/// The C library's version, as `gnu_get_libc_version` gives it ("2.36").
fn glibc_version() -> Option<String> {
    #[cfg(target_env = "gnu")]
    {
        // SAFETY: gnu_get_libc_version takes nothing and returns a static,
        // NUL-terminated string.
        let text = unsafe { std::ffi::CStr::from_ptr(libc::gnu_get_libc_version()) };
        Some(text.to_string_lossy().into_owned())
    }
    #[cfg(not(target_env = "gnu"))]
    None
}

/// The version of the Debian package that holds `lib`, where dpkg is
/// installed and knows the file (as named, or as its links resolve; with
/// a merged `/usr`, dpkg may list it under `/lib`).
fn package_version(lib: &Path) -> Option<String> {
    let mut names = vec![lib.to_path_buf()];
    names.extend(std::fs::canonicalize(lib).ok());
    let unmerged: Vec<PathBuf> = names
        .iter()
        .filter_map(|p| p.strip_prefix("/usr").ok().map(|p| Path::new("/").join(p)))
        .collect();
    names.extend(unmerged);
    for name in names {
        let owner = std::process::Command::new("dpkg-query")
            .arg("-S")
            .arg(&name)
            .stderr(Stdio::null())
            .output()
            .ok()?;
        if !owner.status.success() {
            continue;
        }
        // "zlib1g:amd64: /lib/x86_64-linux-gnu/libz.so.1"
        let text = String::from_utf8_lossy(&owner.stdout);
        let package = text
            .lines()
            .next()?
            .split(": ")
            .next()?
            .split(", ")
            .next()?;
        let version = std::process::Command::new("dpkg-query")
            .args(["-W", "-f", "${Version}", package])
            .stderr(Stdio::null())
            .output()
            .ok()?;
        let version = String::from_utf8_lossy(&version.stdout).trim().to_string();
        return (!version.is_empty()).then_some(version);
    }
    None
}

/// Where Debian puts a shared library, or `None`.
fn find_peer(file: &str) -> Option<PathBuf> {
    let multiarch = format!("/usr/lib/{}-linux-gnu", std::env::consts::ARCH);
    [
        multiarch.as_str(),
        "/usr/lib64",
        "/usr/lib",
        "/usr/local/lib",
    ]
    .iter()
    .map(|dir| Path::new(dir).join(file))
    .find(|p| p.is_file())
}

/// One run of the program under `malloc`: how it went, its stdout and its
/// stderr (through scratch files, so no pipe can fill up).
fn run_once(
    options: &CompareOptions,
    path: &Path,
    malloc: &Malloc,
    scratch: &Scratch,
) -> Result<(Finished, Vec<u8>, Vec<u8>), Failure> {
    let is_buddyslab = malloc.name == "buddyslab";
    let no_env = [];
    let launch = Launch {
        path,
        argv0: &options.program.name,
        args: &options.program.args,
        preload: malloc.lib.as_deref(),
        inherit_preload: false,
        env: if is_buddyslab { &options.env } else { &no_env },
        announce: is_buddyslab,
        timeout: options.timeout,
    };
    let stdin = match &options.input {
        Some(input) => Stdio::from(scratch.open_input(input)?),
        None => Stdio::null(),
    };
    let (out, err) = (scratch.create("stdout")?, scratch.create("stderr")?);
    let finished = child::start(&launch, stdin, Stdio::from(out), Stdio::from(err))
        .map_err(|e| cannot_start(&options.program.name.to_string_lossy(), &e))?;
    let (stdout, stderr) = (scratch.read("stdout")?, scratch.read("stderr")?);

    // The loader runs the program even when it refuses a preload, so a
    // refusal must be caught here or glibc would be measured under the
    // other name.
    let text = String::from_utf8_lossy(&stderr);
    if let Some(line) = text.lines().find(|l| l.contains("cannot be preloaded")) {
        return Err(Failure::tool(format!(
            "{}: the dynamic loader refused the library, so the program would run on glibc:\n  {line}",
            malloc.name
        )));
    }
    if let (Some(said), Some(lib)) = (&finished.announcements, &malloc.lib) {
        if said.child != Binding::Bound {
            let program = options.program.name.to_string_lossy();
            return Err(Failure::tool(format!(
                "{}\nNothing to compare: buddyslab cannot replace this program's malloc.",
                binding_warning(&program, lib, said).unwrap_or_default()
            )));
        }
    }
    Ok((finished, stdout, stderr))
}

/// The last lines of a run's stderr, for a report.
fn stderr_tail(stderr: &[u8]) -> String {
    let text = String::from_utf8_lossy(stderr);
    let lines: Vec<_> = text.lines().rev().take(5).collect();
    lines
        .iter()
        .rev()
        .map(|l| format!("  stderr| {l}\n"))
        .collect()
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    let n = values.len();
    if n == 0 {
        f64::NAN
    } else if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

/// The spread of `values` (all NaN when there are none).
fn spread(values: &[f64]) -> Spread {
    let middle = median(values.to_vec());
    Spread {
        min: values.iter().copied().reduce(f64::min).unwrap_or(f64::NAN),
        median: middle,
        max: values.iter().copied().reduce(f64::max).unwrap_or(f64::NAN),
        mad: median(values.iter().map(|v| (v - middle).abs()).collect()),
    }
}

/// The three figures of every finished run, as compared.
type Figure = (&'static str, fn(&Finished) -> f64);
const FIGURES: [Figure; 3] = [
    ("wall_s", |f| f.wall.as_secs_f64()),
    ("peak_rss_kib", |f| f.peak_rss_kib as f64),
    ("minor_faults", |f| f.minor_faults as f64),
];

fn figure(malloc: &Malloc, of: fn(&Finished) -> f64) -> Spread {
    let values: Vec<f64> = malloc.samples.iter().map(|s| of(&s.finished)).collect();
    spread(&values)
}

fn medians(malloc: &Malloc) -> Row {
    let [time, rss, faults] = FIGURES.map(|(_, of)| figure(malloc, of));
    Row {
        name: malloc.name.clone(),
        seconds: time.median,
        peak_rss_kib: rss.median,
        minor_faults: faults.median,
        seconds_min: time.min,
        seconds_max: time.max,
        runs: malloc.samples.len(),
    }
}

/// What the reader should know before trusting the figures.
fn warnings(rows: &[Row]) -> Vec<String> {
    let mut out = Vec::new();
    let reference = &rows[0];
    if reference.runs > 0 && reference.seconds < TOO_SHORT.as_secs_f64() {
        out.push(format!(
            "the program runs for {:.1} ms under {} (median), under {} ms: start-up and noise \
             outweigh the malloc, so the time ratios mean little; give it more work",
            reference.seconds * 1e3,
            reference.name,
            TOO_SHORT.as_millis()
        ));
    }
    out
}

/// The verdict on the outputs: every run against the reference. Returns
/// the lines to print and whether a malloc changed the outcome (or ran
/// past `--timeout`).
fn output_check(
    mallocs: &[Malloc],
    reference: Option<&Reference>,
    options: &CompareOptions,
) -> (String, bool) {
    let first = &mallocs[0];
    let mut verdict = String::new();
    let mut differs = false;
    for malloc in mallocs {
        if let Some(run) = malloc.timed_out {
            differs = true;
            let _ = writeln!(
                verdict,
                "TIMED OUT under {} (its run {run}): killed after --timeout {}",
                malloc.name,
                seconds(options.timeout.unwrap_or_default())
            );
        }
    }
    let Some(reference) = reference else {
        let _ = writeln!(
            verdict,
            "output: not compared, since {} has no finished run to compare with",
            first.name
        );
        return (verdict, differs);
    };
    if reference.ended != Ended::Exited(0) {
        let _ = writeln!(
            verdict,
            "note: the program ends with {} under {} too",
            reference.ended.describe(),
            first.name
        );
    }
    let what = if options.allow_output_diff {
        "exit status"
    } else {
        "output"
    };
    if !first.samples.iter().all(|s| s.matches) {
        let _ = writeln!(
            verdict,
            "{what}: varies from run to run under {} itself, so it is not compared",
            first.name
        );
        return (verdict, differs);
    }
    let mut mismatch = false;
    for malloc in &mallocs[1..] {
        let Some((k, sample)) = malloc.samples.iter().enumerate().find(|(_, s)| !s.matches) else {
            continue;
        };
        let Some((stdout, stderr)) = &sample.kept else {
            continue;
        };
        mismatch = true;
        let _ = writeln!(
            verdict,
            "{} DIFFERS under {} (its run {}):",
            what.to_uppercase(),
            malloc.name,
            k + 1
        );
        if sample.finished.ended != reference.ended {
            let _ = writeln!(
                verdict,
                "  {}: {}\n  {}: {}",
                first.name,
                reference.ended.describe(),
                malloc.name,
                sample.finished.ended.describe()
            );
            verdict.push_str(stderr);
        }
        if *stdout != reference.stdout {
            verdict.push_str(&first_difference(
                &first.name,
                &reference.stdout,
                &malloc.name,
                stdout,
            ));
        }
    }
    if !mismatch {
        let runs = mallocs.iter().map(|m| m.samples.len()).sum::<usize>();
        let _ = if options.allow_output_diff {
            writeln!(
                verdict,
                "exit status: the same under every malloc ({runs} runs); output not compared \
                 (--allow-output-diff)"
            )
        } else {
            writeln!(
                verdict,
                "output: identical under every malloc ({runs} runs)"
            )
        };
    }
    (verdict, differs || mismatch)
}

/// "2.5 s", "30 s".
fn seconds(d: Duration) -> String {
    format!("{} s", d.as_secs_f64())
}

/// The first line where two outputs differ, with both versions.
fn first_difference(a_name: &str, a: &[u8], b_name: &str, b: &[u8]) -> String {
    let a_text = String::from_utf8_lossy(a);
    let b_text = String::from_utf8_lossy(b);
    let mut a_lines = a_text.lines();
    let mut b_lines = b_text.lines();
    let mut number = 1;
    loop {
        match (a_lines.next(), b_lines.next()) {
            (Some(x), Some(y)) if x == y => number += 1,
            (None, None) => {
                return format!(
                    "  stdout differs only in line endings ({} vs {} bytes)\n",
                    a.len(),
                    b.len()
                )
            }
            (x, y) => {
                let show = |l: Option<&str>| match l {
                    Some(l) => format!("{l:?}"),
                    None => "(end of output)".to_string(),
                };
                return format!(
                    "  stdout line {number}:\n    {a_name}: {}\n    {b_name}: {}\n",
                    show(x),
                    show(y)
                );
            }
        }
    }
}

/// The report: a header, one row per malloc, the warnings, the verdict.
fn table(command: &str, runs: usize, rows: &[Row], verdict: &str, warnings: &[String]) -> String {
    let reference = &rows[0];
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(6).max(6);
    let ratio = |v: f64, base: f64| {
        if base > 0.0 && v.is_finite() {
            format!("{:.2}", v / base)
        } else {
            "-".to_string()
        }
    };
    let mut out = String::new();
    let _ = writeln!(out, "buddyslab compare: {command}");
    let _ = writeln!(
        out,
        "medians of {runs} run{} per malloc, with the fastest and slowest run; ratios to {}",
        if runs == 1 { "" } else { "s" },
        reference.name
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<width$}  {:>10} {:>17} {:>6}  {:>11} {:>6}  {:>12} {:>6}",
        "malloc", "time", "(min..max)", "ratio", "peak RSS", "ratio", "minor faults", "ratio"
    );
    for row in rows {
        if row.runs == 0 {
            let _ = writeln!(out, "{:<width$}  {:>10}", row.name, "timed out");
            continue;
        }
        let _ = writeln!(
            out,
            "{:<width$}  {:>10} {:>17} {:>6}  {:>11} {:>6}  {:>12} {:>6}",
            row.name,
            format!("{:.3} s", row.seconds),
            format!("({:.3}..{:.3})", row.seconds_min, row.seconds_max),
            ratio(row.seconds, reference.seconds),
            mib(row.peak_rss_kib.round() as u64),
            ratio(row.peak_rss_kib, reference.peak_rss_kib),
            thousands(row.minor_faults.round() as u64),
            ratio(row.minor_faults, reference.minor_faults),
        );
    }
    let _ = writeln!(out);
    for warning in warnings {
        let _ = writeln!(out, "warning: {warning}");
    }
    out.push_str(verdict);
    out
}

/// The whole comparison as one JSON document (`--json`): every run, and
/// per malloc the spread of each figure and its ratio to the first.
fn report_json(
    command: &str,
    options: &CompareOptions,
    mallocs: &[Malloc],
    rows: &[Row],
    verdict: &str,
    warnings: &[String],
    differs: bool,
) -> Value {
    let number = |v: f64| if v.is_finite() { json!(v) } else { Value::Null };
    let spread_json = |s: Spread| {
        json!({
            "min": number(s.min),
            "median": number(s.median),
            "max": number(s.max),
            "mad": number(s.mad),
        })
    };
    let reference: Vec<Spread> = FIGURES
        .iter()
        .map(|(_, of)| figure(&mallocs[0], *of))
        .collect();
    let entries: Vec<Value> = mallocs
        .iter()
        .map(|malloc| {
            let runs: Vec<Value> = malloc
                .samples
                .iter()
                .map(|s| {
                    let f = &s.finished;
                    let (exit_code, signal) = match f.ended {
                        Ended::Exited(code) => (json!(code), Value::Null),
                        Ended::Signaled { signal, .. } => (Value::Null, json!(signal)),
                    };
                    json!({
                        "wall_s": f.wall.as_secs_f64(),
                        "user_s": f.user.as_secs_f64(),
                        "system_s": f.system.as_secs_f64(),
                        "peak_rss_kib": f.peak_rss_kib,
                        "minor_faults": f.minor_faults,
                        "major_faults": f.major_faults,
                        "exit_code": exit_code,
                        "signal": signal,
                        "matches_reference": s.matches,
                    })
                })
                .collect();
            let mut entry = json!({
                "name": malloc.name,
                "library": malloc.lib.as_ref().map(|l| l.to_string_lossy().into_owned()),
                "runs": runs,
                "timed_out_run": malloc.timed_out,
            });
            for ((key, of), base) in FIGURES.iter().zip(&reference) {
                let s = figure(malloc, *of);
                entry[*key] = spread_json(s);
                entry["ratio"][*key] = if base.median > 0.0 {
                    number(s.median / base.median)
                } else {
                    Value::Null
                };
            }
            entry
        })
        .collect();
    json!({
        "command": command,
        "runs_per_malloc": options.runs,
        "timeout_s": options.timeout.map(|t| t.as_secs_f64()),
        "output_compared": !options.allow_output_diff,
        "reference": rows[0].name,
        "mallocs": entries,
        "warnings": warnings,
        "verdict": verdict.lines().collect::<Vec<_>>(),
        "differs": differs,
    })
}

/// The command as a reader would type it.
fn command_line(options: &CompareOptions) -> String {
    let mut words = vec![options.program.name.to_string_lossy().into_owned()];
    words.extend(options.program.args.iter().map(|a| {
        let a = a.to_string_lossy();
        if a.is_empty() || a.contains(|c: char| c.is_whitespace() || "'\"$`\\*?;&|<>()".contains(c))
        {
            format!("'{}'", a.replace('\'', "'\\''"))
        } else {
            a.into_owned()
        }
    }));
    words.join(" ")
}

/// A private directory for the runs' output (mode 0700, an unpredictable
/// name, from the tempfile crate), removed when dropped.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Result<Scratch, Failure> {
        let dir = tempfile::Builder::new()
            .prefix("buddyslab-compare-")
            .tempdir()
            .map_err(|e| {
                Failure::tool(format!(
                    "cannot create a scratch folder in {}: {e}",
                    std::env::temp_dir().display()
                ))
            })?;
        Ok(Scratch { dir })
    }

    fn create(&self, name: &str) -> Result<File, Failure> {
        let path = self.dir.path().join(name);
        File::create(&path)
            .map_err(|e| Failure::tool(format!("cannot create {}: {e}", path.display())))
    }

    fn read(&self, name: &str) -> Result<Vec<u8>, Failure> {
        let path = self.dir.path().join(name);
        std::fs::read(&path)
            .map_err(|e| Failure::tool(format!("cannot read {}: {e}", path.display())))
    }

    fn open_input(&self, input: &Path) -> Result<File, Failure> {
        File::open(input).map_err(|e| Failure::tool(format!("--input {}: {e}", input.display())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn medians_of_odd_and_even_counts() {
        assert_eq!(median(vec![3.0, 1.0, 2.0]), 2.0);
        assert_eq!(median(vec![4.0, 1.0, 3.0, 2.0]), 2.5);
        assert_eq!(median(vec![7.0]), 7.0);
        assert!(median(vec![]).is_nan());
    }

    #[test]
    fn spread_of_glibc_s_three_runs() {
        // The report's example: 0.142, 0.267 and 0.153 s.
        let s = spread(&[0.142, 0.267, 0.153]);
        assert_eq!((s.min, s.median, s.max), (0.142, 0.153, 0.267));
        assert!((s.mad - 0.011).abs() < 1e-9, "{s:?}");
        assert!(spread(&[]).median.is_nan());
    }

    fn row(name: &str, seconds: f64, runs: usize) -> Row {
        Row {
            name: name.into(),
            seconds,
            peak_rss_kib: 1024.0,
            minor_faults: 100.0,
            seconds_min: seconds,
            seconds_max: seconds,
            runs,
        }
    }

    #[test]
    fn a_program_too_short_to_time_is_warned_about() {
        let short = warnings(&[row("glibc", 0.012, 3), row("buddyslab", 0.2, 3)]);
        assert_eq!(short.len(), 1, "{short:?}");
        assert!(short[0].contains("12.0 ms under glibc") && short[0].contains("50 ms"));
        assert!(warnings(&[row("glibc", 0.05, 3), row("buddyslab", 0.01, 3)]).is_empty());
        assert!(warnings(&[row("glibc", f64::NAN, 0)]).is_empty());
    }

    #[test]
    fn the_table_shows_the_spread_and_timed_out_mallocs() {
        let mut rows = vec![row("glibc", 0.153, 3), row("buddyslab", 0.3, 3)];
        rows[0].seconds_min = 0.142;
        rows[0].seconds_max = 0.267;
        rows.push(row("slow", f64::NAN, 0));
        let text = table("prog", 3, &rows, "verdict\n", &["look out".into()]);
        assert!(text.contains("0.153 s    (0.142..0.267)   1.00"), "{text}");
        assert!(text.contains("1.96"), "{text}");
        assert!(
            text.lines()
                .any(|l| l.starts_with("slow") && l.ends_with("timed out")),
            "{text}"
        );
        assert!(text.ends_with("warning: look out\nverdict\n"), "{text}");
    }

    /// The caption's facts: the machine and CPUs, glibc's version, and a
    /// library's package version where dpkg knows the file.
    #[test]
    fn the_caption_names_machine_and_versions() {
        let machine = machine();
        assert!(machine.starts_with(std::env::consts::ARCH), "{machine}");
        assert!(machine.contains(" CPU"), "{machine}");
        let glibc = glibc_version().expect("a glibc build knows its version");
        assert!(glibc.starts_with("2."), "{glibc}");
        assert_eq!(
            package_version(Path::new("/nonexistent/libnothing.so")),
            None
        );
        // Where dpkg owns the C library, its package version is glibc's.
        let libc = Path::new("/usr/lib")
            .join(format!("{}-linux-gnu", std::env::consts::ARCH))
            .join("libc.so.6");
        let dpkg_knows = std::process::Command::new("dpkg-query")
            .args(["-S", "libc.so.6"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success());
        if libc.is_file() && dpkg_knows {
            let version = package_version(&libc).expect("dpkg knows libc.so.6");
            assert!(
                version.starts_with(&glibc),
                "{version} is not glibc {glibc}"
            );
        }
        let glibc_malloc = Malloc {
            name: "glibc".into(),
            lib: None,
            missing_hint: String::new(),
            samples: Vec::new(),
            timed_out: None,
        };
        let caption = caption(3, &[&glibc_malloc]);
        assert_eq!(caption.runs, 3);
        assert_eq!(caption.libraries, [("glibc".to_string(), glibc)]);
    }

    #[test]
    fn the_first_differing_line_is_shown() {
        let d = first_difference("glibc", b"a\nb\nc\n", "x", b"a\nB\nc\n");
        assert!(
            d.contains("line 2") && d.contains("\"b\"") && d.contains("\"B\""),
            "{d}"
        );
        let d = first_difference("glibc", b"a\n", "x", b"a\nextra\n");
        assert!(d.contains("line 2") && d.contains("(end of output)"), "{d}");
    }
}
