//! `buddyslab compare`: the program under glibc, buddyslab and the other
//! mallocs on the machine, interleaved, with a table of medians and a check
//! that the output does not depend on the malloc.

use crate::args::CompareOptions;
use crate::child::{self, Binding, Ended, Finished, Launch};
use crate::out::{say, sayln, show};
use crate::run::{binding_warning, cannot_start, library_path, mib, thousands};
use crate::{chart, program, Failure};
use std::fmt::Write as _;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::process::Stdio;

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
}

/// One run's measurements. Its output is compared with the reference
/// as soon as the run ends and kept only when a report will show it, so a
/// program with a large output is not held in memory once per run.
struct Sample {
    finished: Finished,
    /// Same stdout and exit as the [`Reference`].
    matches: bool,
    /// For a malloc's first run that does not match: its stdout and the
    /// end of its stderr.
    kept: Option<(Vec<u8>, String)>,
}

/// The first run of the first malloc (glibc's), which every run is
/// compared with.
struct Reference {
    stdout: Vec<u8>,
    ended: Ended,
}

/// The medians of one malloc.
pub struct Row {
    pub name: String,
    pub seconds: f64,
    pub peak_rss_kib: f64,
    pub minor_faults: f64,
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
            let malloc = &mut mallocs[(round + k) % count];
            done += 1;
            say!(
                "[{done:>w$}/{total}] round {}/{}: {:<10} ",
                round + 1,
                options.runs,
                malloc.name,
                w = total.to_string().len()
            );
            let (finished, stdout, stderr) = run_once(&options, &path, malloc, &scratch)?;
            sayln!(
                "{:.3} s, {}",
                finished.wall.as_secs_f64(),
                finished.ended.describe()
            );
            let reference = reference.get_or_insert_with(|| Reference {
                stdout: stdout.clone(),
                ended: finished.ended,
            });
            let matches = stdout == reference.stdout && finished.ended == reference.ended;
            let first_mismatch = !matches && malloc.samples.iter().all(|s| s.matches);
            let kept = first_mismatch.then(|| (stdout, stderr_tail(&stderr)));
            malloc.samples.push(Sample {
                finished,
                matches,
                kept,
            });
        }
    }

    let rows: Vec<Row> = mallocs.iter().map(medians).collect();
    let reference = reference.expect("at least one run");
    let (verdict, differs) = output_check(&mallocs, &reference);
    show!("{}", table(&shown, options.runs, &rows, &verdict));
    if let Some(chart_path) = &options.chart {
        std::fs::write(chart_path, chart::svg(&shown, &rows))
            .map_err(|e| Failure::tool(format!("--chart {}: {e}", chart_path.display())))?;
        sayln!("chart written to {}", chart_path.display());
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
        },
        Malloc {
            name: "buddyslab".into(),
            lib: Some(lib),
            missing_hint: hint,
            samples: Vec::new(),
        },
    ];
    for (name, file) in PEERS {
        if let Some(lib) = find_peer(file) {
            mallocs.push(Malloc {
                name: name.into(),
                lib: Some(lib),
                missing_hint: String::new(),
                samples: Vec::new(),
            });
        }
    }
    for (name, lib) in &options.with {
        let malloc = Malloc {
            name: name.clone(),
            lib: Some(lib.clone()),
            missing_hint: String::new(),
            samples: Vec::new(),
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
    if n % 2 == 1 {
        values[n / 2]
    } else {
        (values[n / 2 - 1] + values[n / 2]) / 2.0
    }
}

fn medians(malloc: &Malloc) -> Row {
    let of =
        |f: fn(&Finished) -> f64| median(malloc.samples.iter().map(|s| f(&s.finished)).collect());
    Row {
        name: malloc.name.clone(),
        seconds: of(|f| f.wall.as_secs_f64()),
        peak_rss_kib: of(|f| f.peak_rss_kib as f64),
        minor_faults: of(|f| f.minor_faults as f64),
    }
}

/// The verdict on the outputs: every run against the reference. Returns
/// the lines to print and whether a malloc changed the outcome.
fn output_check(mallocs: &[Malloc], reference: &Reference) -> (String, bool) {
    let first = &mallocs[0];
    let mut verdict = String::new();
    if reference.ended != Ended::Exited(0) {
        let _ = writeln!(
            verdict,
            "note: the program ends with {} under {} too",
            reference.ended.describe(),
            first.name
        );
    }
    if !first.samples.iter().all(|s| s.matches) {
        let _ = writeln!(
            verdict,
            "output: varies from run to run under {} itself, so it is not compared",
            first.name
        );
        return (verdict, false);
    }
    let mut differs = false;
    for malloc in &mallocs[1..] {
        let Some((k, sample)) = malloc.samples.iter().enumerate().find(|(_, s)| !s.matches) else {
            continue;
        };
        let Some((stdout, stderr)) = &sample.kept else {
            continue;
        };
        differs = true;
        let _ = writeln!(
            verdict,
            "OUTPUT DIFFERS under {} (its run {}):",
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
    if !differs {
        let _ = writeln!(
            verdict,
            "output: identical under every malloc ({} runs)",
            mallocs.iter().map(|m| m.samples.len()).sum::<usize>()
        );
    }
    (verdict, differs)
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

/// The report: a header, one row per malloc, the verdict.
fn table(command: &str, runs: usize, rows: &[Row], verdict: &str) -> String {
    let reference = &rows[0];
    let width = rows.iter().map(|r| r.name.len()).max().unwrap_or(6).max(6);
    let ratio = |v: f64, base: f64| {
        if base > 0.0 {
            format!("{:.2}", v / base)
        } else {
            "-".to_string()
        }
    };
    let mut out = String::new();
    let _ = writeln!(out, "buddyslab compare: {command}");
    let _ = writeln!(
        out,
        "medians of {runs} run{} per malloc; ratios to {}",
        if runs == 1 { "" } else { "s" },
        reference.name
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "{:<width$}  {:>10} {:>6}  {:>11} {:>6}  {:>12} {:>6}",
        "malloc", "time", "ratio", "peak RSS", "ratio", "minor faults", "ratio"
    );
    for row in rows {
        let _ = writeln!(
            out,
            "{:<width$}  {:>10} {:>6}  {:>11} {:>6}  {:>12} {:>6}",
            row.name,
            format!("{:.3} s", row.seconds),
            ratio(row.seconds, reference.seconds),
            mib(row.peak_rss_kib.round() as u64),
            ratio(row.peak_rss_kib, reference.peak_rss_kib),
            thousands(row.minor_faults.round() as u64),
            ratio(row.minor_faults, reference.minor_faults),
        );
    }
    let _ = writeln!(out);
    out.push_str(verdict);
    out
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

/// A private directory for the runs' output, removed when dropped.
struct Scratch {
    dir: PathBuf,
}

impl Scratch {
    fn new() -> Result<Scratch, Failure> {
        let dir = std::env::temp_dir().join(format!("buddyslab-compare-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir(&dir)
            .map_err(|e| Failure::tool(format!("cannot create {}: {e}", dir.display())))?;
        Ok(Scratch { dir })
    }

    fn create(&self, name: &str) -> Result<File, Failure> {
        let path = self.dir.join(name);
        File::create(&path)
            .map_err(|e| Failure::tool(format!("cannot create {}: {e}", path.display())))
    }

    fn read(&self, name: &str) -> Result<Vec<u8>, Failure> {
        let path = self.dir.join(name);
        std::fs::read(&path)
            .map_err(|e| Failure::tool(format!("cannot read {}: {e}", path.display())))
    }

    fn open_input(&self, input: &Path) -> Result<File, Failure> {
        File::open(input).map_err(|e| Failure::tool(format!("--input {}: {e}", input.display())))
    }
}

impl Drop for Scratch {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.dir);
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
