//! The command line, parsed by clap from the definitions below.
//!
//! Options come before the program: `--name VALUE` or `--name=VALUE`, then
//! an optional `--`, then PROGRAM and its arguments, which are passed on
//! untouched (an argument of the program that starts with `-` needs the
//! `--` only if it comes first). An option that takes a value never takes
//! the next option or `--` as its value. Each value is checked here, so a
//! typo is a usage error rather than a line from the library in the
//! program's stderr. Given twice, an option's last value counts.

use crate::{help, Failure, EXIT_TOOL};
use clap::error::ErrorKind;
use clap::{Args, CommandFactory, Parser, Subcommand, ValueHint};
use clap_complete::Shell;
use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    /// `--help`, `--version`, `help`: clap's text, printed as it is.
    Print(clap::Error),
    Run(RunOptions),
    Compare(CompareOptions),
    Views(ViewsOptions),
    Top(TopOptions),
    /// `completions SHELL`: the script for that shell.
    Completions(Shell),
    /// `prof FILE`: a heap profile, read and summarised.
    Prof(ProfArgs),
}

/// `buddyslab prof`'s options.
#[derive(Args, Debug)]
pub struct ProfArgs {
    /// The profile (a file BUDDYSLAB_PROF named).
    #[arg(value_name = "FILE", value_hint = ValueHint::FilePath)]
    pub file: PathBuf,
    /// Also draw the live heap as a flame graph (SVG) into this file.
    #[arg(long, value_name = "OUT.svg", value_hint = ValueHint::FilePath)]
    pub svg: Option<PathBuf>,
    /// How many call sites to list (default 10).
    #[arg(long, value_name = "N", default_value_t = 10)]
    pub top: usize,
}

/// The program to start: its name as typed and its arguments.
#[derive(Debug)]
pub struct Program {
    pub name: OsString,
    pub args: Vec<OsString>,
}

/// `buddyslab run`.
#[derive(Debug)]
pub struct RunOptions {
    pub lib: Option<PathBuf>,
    /// `BUDDYSLAB_*` variables for the library, in the order of the manual.
    pub env: Vec<(&'static str, String)>,
    /// `--heapmap`: checked for after the run.
    pub heapmap: Option<PathBuf>,
    pub summary: bool,
    pub program: Program,
}

/// `buddyslab views`.
#[derive(Debug)]
pub struct ViewsOptions {
    pub pid: i32,
    pub json: bool,
    /// How long to wait for the process to publish a fresh copy.
    pub wait: Duration,
}

/// `buddyslab top`.
#[derive(Debug)]
pub struct TopOptions {
    pub pid: i32,
    pub interval: Duration,
    /// One screen on stdout, no clearing (for scripts and tests).
    pub once: bool,
    /// Stop after this many screens.
    pub count: Option<u64>,
}

/// `buddyslab compare`.
#[derive(Debug)]
pub struct CompareOptions {
    pub lib: Option<PathBuf>,
    /// `BUDDYSLAB_*` variables for the buddyslab runs.
    pub env: Vec<(&'static str, String)>,
    pub runs: usize,
    /// `--with NAME=PATH`, in order.
    pub with: Vec<(String, PathBuf)>,
    pub only: Option<Vec<String>>,
    pub input: Option<PathBuf>,
    pub chart: Option<PathBuf>,
    /// `--json`: a JSON document on stdout instead of the table.
    pub json: bool,
    /// `--timeout`: a run still going after this long is killed.
    pub timeout: Option<Duration>,
    /// `--allow-output-diff`: stdout is not compared between mallocs.
    pub allow_output_diff: bool,
    pub program: Program,
}

/// `buddyslab`: the commands.
#[derive(Parser, Debug)]
#[command(
    name = "buddyslab",
    version,
    about = "Run a program on the buddyslab malloc, or compare mallocs",
    subcommand_required = true,
    arg_required_else_help = false,
    args_override_self = true,
    max_term_width = 80,
    help_template = help::MAIN
)]
pub struct Cli {
    #[command(subcommand)]
    command: Sub,
}

#[derive(Subcommand, Debug)]
enum Sub {
    /// Run a program with libbuddyslab.so as its malloc, then summarise the run.
    #[command(
        help_template = help::RUN,
        next_line_help = true,
        override_usage = "buddyslab run [OPTIONS] [--] PROGRAM [ARGS...]"
    )]
    Run(RunArgs),
    /// Run a program under glibc, buddyslab and the other mallocs on the machine, and compare.
    #[command(
        help_template = help::COMPARE,
        next_line_help = true,
        override_usage = "buddyslab compare [OPTIONS] [--] PROGRAM [ARGS...]"
    )]
    Compare(CompareArgs),
    /// Print the views of a running process started with BUDDYSLAB_LIVE=1 (run --live).
    #[command(help_template = help::VIEWS, next_line_help = true)]
    Views(ViewsArgs),
    /// Watch a running process's slab caches, buddy lists and totals, like slabtop.
    #[command(help_template = help::TOP, next_line_help = true)]
    Top(TopArgs),
    /// Print the call sites that hold the most live bytes in a heap profile (BUDDYSLAB_PROF), or draw it as a flame graph.
    #[command(help_template = help::PROF, next_line_help = true)]
    Prof(ProfArgs),
    /// Print the completion script for a shell (bash, zsh, fish, elvish, powershell).
    #[command(help_template = help::COMPLETIONS)]
    Completions {
        /// The shell to complete for.
        shell: Shell,
    },
}

/// The options both commands take: which library, and its settings.
#[derive(Args, Debug)]
struct LibraryArgs {
    /// The buddyslab library to preload. Default: BUDDYSLAB_LIB, else
    /// libbuddyslab.so next to the buddyslab executable, else in ../lib/
    /// from it (see THE LIBRARY in `buddyslab --help`).
    #[arg(long, value_name = "PATH", value_hint = ValueHint::FilePath)]
    lib: Option<PathBuf>,
    /// Requests of at least SIZE bytes get their own mmap (suffixes k, m;
    /// at most 32m). Sets BUDDYSLAB_MMAP_THRESHOLD.
    #[arg(long, value_name = "SIZE", value_parser = mmap_threshold)]
    mmap_threshold: Option<String>,
    /// How long freed memory stays before it goes back to the kernel, in
    /// milliseconds. Sets BUDDYSLAB_DECAY_MS.
    #[arg(long, value_name = "MS", value_parser = decay_ms)]
    decay_ms: Option<String>,
}

/// PROGRAM and its arguments: everything from the first word that is not
/// an option (or from after `--`) belongs to the program.
#[derive(Args, Debug)]
struct ProgramArgs {
    /// The program to run and its arguments, passed on untouched.
    #[arg(
        value_name = "PROGRAM",
        required = true,
        num_args = 1..,
        trailing_var_arg = true,
        value_hint = ValueHint::CommandWithArguments
    )]
    program: Vec<OsString>,
}

#[derive(Args, Debug)]
struct RunArgs {
    #[command(flatten)]
    library: LibraryArgs,
    /// Print the heap views at exit, as text (--stats) or JSON
    /// (--stats=json), on stderr after the program: its own, and the
    /// largest heap's of the processes it started; the others' are kept
    /// in a directory the summary names. Sets BUDDYSLAB_STATS (and, unless
    /// it is set, BUDDYSLAB_STATS_FILE to that directory).
    #[arg(
        long,
        value_name = "FORMAT",
        num_args = 0..=1,
        require_equals = true,
        default_missing_value = "text",
        value_parser = ["text", "json"]
    )]
    stats: Option<String>,
    /// Have the library draw a map of the heap into FILE.svg at exit; the
    /// summary says whether it did (a file already there is removed before
    /// the run, so a map there afterwards is this run's). Sets
    /// BUDDYSLAB_HEAPMAP (to the absolute path).
    #[arg(long, value_name = "FILE.svg", value_hint = ValueHint::FilePath)]
    heapmap: Option<PathBuf>,
    /// Publish the views while the program runs, for `buddyslab top PID`
    /// and `buddyslab views PID`. Sets BUDDYSLAB_LIVE=1.
    #[arg(long)]
    live: bool,
    /// Do not print the summary at the end (the binding warning still
    /// appears).
    #[arg(long)]
    no_summary: bool,
    #[command(flatten)]
    program: ProgramArgs,
}

#[derive(Args, Debug)]
struct ViewsArgs {
    /// The process (started with BUDDYSLAB_LIVE=1).
    #[arg(value_name = "PID", value_parser = clap::value_parser!(i32).range(1..))]
    pid: i32,
    /// One JSON object (as BUDDYSLAB_STATS=json prints) instead of the text.
    #[arg(long)]
    json: bool,
    /// How long to wait for the process to reach a slow path and publish a
    /// fresh copy (default 2); after that its last copy is shown.
    #[arg(long, value_name = "SECONDS", default_value = "2", value_parser = timeout)]
    wait: Duration,
}

#[derive(Args, Debug)]
struct TopArgs {
    /// The process (started with BUDDYSLAB_LIVE=1).
    #[arg(value_name = "PID", value_parser = clap::value_parser!(i32).range(1..))]
    pid: i32,
    /// Seconds between screens (default 1); rates are over this interval.
    #[arg(long, value_name = "SECONDS", default_value = "1", value_parser = timeout)]
    interval: Duration,
    /// Print one screen (two samples an interval apart) and exit.
    #[arg(long)]
    once: bool,
    /// Stop after N screens.
    #[arg(long, value_name = "N")]
    count: Option<u64>,
}

#[derive(Args, Debug)]
struct CompareArgs {
    #[command(flatten)]
    library: LibraryArgs,
    /// Runs per malloc (default 5, at most 1000); the medians and spreads
    /// are over these.
    #[arg(long, value_name = "N", default_value = "5", value_parser = runs)]
    runs: usize,
    /// Also compare the malloc in the shared library PATH, called NAME. May
    /// be repeated. A NAME already known (jemalloc, ...) replaces the
    /// library found on the machine.
    #[arg(long, value_name = "NAME=PATH", value_parser = with, action = clap::ArgAction::Append)]
    with: Vec<(String, PathBuf)>,
    /// Compare only these mallocs, in this order (names from the table:
    /// glibc, buddyslab, jemalloc, mimalloc, tcmalloc, or a --with NAME).
    #[arg(long, value_name = "NAME,NAME...")]
    only: Option<String>,
    /// Standard input of every run comes from FILE (default: empty).
    #[arg(long, value_name = "FILE", value_hint = ValueHint::FilePath)]
    input: Option<PathBuf>,
    /// Also write the table as an SVG bar chart (ratios to the first
    /// malloc).
    #[arg(long, value_name = "FILE.svg", value_hint = ValueHint::FilePath)]
    chart: Option<PathBuf>,
    /// Print the results as one JSON document on stdout instead of the
    /// table: every run's figures, each malloc's min, median, max and
    /// median absolute deviation, the ratios and the output check.
    #[arg(long)]
    json: bool,
    /// Kill a run still going after SECONDS (a decimal number) with SIGKILL
    /// (the program, not the processes it started); that malloc gets no
    /// more runs, and the comparison exits with 1.
    #[arg(long, value_name = "SECONDS", value_parser = timeout)]
    timeout: Option<Duration>,
    /// The program's output may differ between mallocs (it prints
    /// addresses, timings, ...): standard output is not compared, only the
    /// exit status.
    #[arg(long)]
    allow_output_diff: bool,
    #[command(flatten)]
    program: ProgramArgs,
}

/// Parses the arguments after the executable's name.
pub fn parse(argv: Vec<OsString>) -> Result<Command, Failure> {
    let argv = std::iter::once(OsString::from("buddyslab")).chain(argv);
    let cli = match Cli::try_parse_from(argv) {
        Ok(cli) => cli,
        Err(e) if matches!(e.kind(), ErrorKind::DisplayHelp | ErrorKind::DisplayVersion) => {
            return Ok(Command::Print(e))
        }
        Err(e) => return Err(usage_failure(&e)),
    };
    Ok(match cli.command {
        Sub::Run(run) => Command::Run(run.into_options()?),
        Sub::Compare(compare) => Command::Compare(compare.into_options()),
        Sub::Views(v) => Command::Views(ViewsOptions { pid: v.pid, json: v.json, wait: v.wait }),
        Sub::Top(t) => Command::Top(TopOptions { pid: t.pid, interval: t.interval, once: t.once, count: t.count }),
        Sub::Completions { shell } => Command::Completions(shell),
        Sub::Prof(prof) => Command::Prof(prof),
    })
}

/// The definition of the whole command line, for the completion scripts.
pub fn definition() -> clap::Command {
    Cli::command()
}

/// clap's message for a usage error, without its `error: ` (the tool puts
/// `buddyslab: ` in front); it ends by pointing to `--help`.
fn usage_failure(error: &clap::Error) -> Failure {
    let text = error.render().to_string();
    let text = text.strip_prefix("error: ").unwrap_or(&text).trim_end();
    Failure {
        status: EXIT_TOOL,
        message: text.to_string(),
    }
}

impl LibraryArgs {
    /// The variables the library options set.
    fn variables(&self) -> Vec<(&'static str, String)> {
        let mut env = Vec::new();
        if let Some(size) = &self.mmap_threshold {
            env.push(("BUDDYSLAB_MMAP_THRESHOLD", size.clone()));
        }
        if let Some(ms) = &self.decay_ms {
            env.push(("BUDDYSLAB_DECAY_MS", ms.clone()));
        }
        env
    }
}

impl ProgramArgs {
    fn into_program(self) -> Program {
        let mut words = self.program.into_iter();
        let name = words.next().expect("clap requires PROGRAM");
        Program {
            name,
            args: words.collect(),
        }
    }
}

impl RunArgs {
    fn into_options(self) -> Result<RunOptions, Failure> {
        let mut env = Vec::new();
        if let Some(format) = &self.stats {
            let setting = if format == "json" { "json" } else { "1" };
            env.push(("BUDDYSLAB_STATS", setting.to_string()));
        }
        env.extend(self.library.variables());
        if self.live {
            env.push(("BUDDYSLAB_LIVE", "1".to_string()));
        }
        let heapmap = match self.heapmap {
            Some(path) => {
                let path = absolute(path)?;
                env.push(("BUDDYSLAB_HEAPMAP", path.to_string_lossy().into_owned()));
                Some(path)
            }
            None => None,
        };
        Ok(RunOptions {
            lib: self.library.lib,
            env,
            heapmap,
            summary: !self.no_summary,
            program: self.program.into_program(),
        })
    }
}

impl CompareArgs {
    fn into_options(self) -> CompareOptions {
        let only = self.only.map(|list| {
            list.split(',')
                .map(str::trim)
                .filter(|n| !n.is_empty())
                .map(String::from)
                .collect()
        });
        CompareOptions {
            env: self.library.variables(),
            lib: self.library.lib,
            runs: self.runs,
            with: self.with,
            only,
            input: self.input,
            chart: self.chart,
            json: self.json,
            timeout: self.timeout,
            allow_output_diff: self.allow_output_diff,
            program: self.program.into_program(),
        }
    }
}

/// `--mmap-threshold`: a size up to 32 MiB, kept as written (the library
/// reads the suffixes itself).
fn mmap_threshold(value: &str) -> Result<String, String> {
    match parse_size(value) {
        Some(bytes) if bytes <= 32 << 20 => Ok(value.to_string()),
        _ => Err("a size up to 32m is wanted (e.g. 131072, 256k, 1m)".into()),
    }
}

/// `--decay-ms`: whole milliseconds.
fn decay_ms(value: &str) -> Result<String, String> {
    match value.parse::<u64>() {
        Ok(_) => Ok(value.to_string()),
        Err(_) => Err("a whole number of milliseconds is wanted (e.g. 1000, 0)".into()),
    }
}

/// `--runs`: 1 to 1000.
fn runs(value: &str) -> Result<usize, String> {
    match value.parse::<usize>() {
        Ok(n) if (1..=1000).contains(&n) => Ok(n),
        _ => Err("a number from 1 to 1000 is wanted".into()),
    }
}

/// `--with NAME=PATH`, NAME one word and not glibc.
fn with(value: &str) -> Result<(String, PathBuf), String> {
    let Some((name, path)) = value.split_once('=') else {
        return Err("NAME=PATH is wanted (e.g. --with mine=./libmine.so)".into());
    };
    if name.is_empty() || path.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
        return Err("NAME=PATH with a one-word NAME is wanted".into());
    }
    if name == "glibc" {
        return Err("glibc is the malloc without a preload; pick another NAME".into());
    }
    Ok((name.to_string(), PathBuf::from(path)))
}

/// `--timeout`: seconds, a positive decimal number.
fn timeout(value: &str) -> Result<Duration, String> {
    match value.parse::<f64>() {
        Ok(s) if s > 0.0 && s.is_finite() && s <= 1e9 => Ok(Duration::from_secs_f64(s)),
        _ => Err("a positive number of seconds is wanted (e.g. 30, 2.5)".into()),
    }
}

/// Digits with an optional `k`, `m` or `g` suffix (powers of 1024), as the
/// library reads its sizes.
fn parse_size(text: &str) -> Option<u64> {
    let (digits, shift) = match text.as_bytes().last()? {
        b'k' | b'K' => (&text[..text.len() - 1], 10),
        b'm' | b'M' => (&text[..text.len() - 1], 20),
        b'g' | b'G' => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    if digits.is_empty() || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse::<u64>().ok()?.checked_mul(1 << shift)
}

/// `path` made absolute against the current directory, so that the program
/// may change directory without losing it.
fn absolute(path: PathBuf) -> Result<PathBuf, Failure> {
    std::path::absolute(&path)
        .map_err(|e| Failure::tool(format!("cannot make {} absolute: {e}", path.display())))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(list: &[&str]) -> Vec<OsString> {
        list.iter().map(OsString::from).collect()
    }

    fn parse_run(list: &[&str]) -> RunOptions {
        match parse(args(list)) {
            Ok(Command::Run(o)) => o,
            Ok(other) => panic!("{list:?}: not a run: {other:?}"),
            Err(f) => panic!("{list:?}: {}", f.message),
        }
    }

    #[test]
    fn definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_options_become_variables() {
        let o = parse_run(&[
            "run",
            "--stats=json",
            "--mmap-threshold",
            "256k",
            "--decay-ms=50",
            "--",
            "ls",
            "-l",
        ]);
        assert_eq!(
            o.env,
            vec![
                ("BUDDYSLAB_STATS", "json".to_string()),
                ("BUDDYSLAB_MMAP_THRESHOLD", "256k".to_string()),
                ("BUDDYSLAB_DECAY_MS", "50".to_string()),
            ]
        );
        assert_eq!(o.program.name, "ls");
        assert_eq!(o.program.args, args(&["-l"]));
    }

    #[test]
    fn program_may_come_without_dashes_and_keeps_its_options() {
        let o = parse_run(&["run", "--stats", "sort", "--stats"]);
        assert_eq!(o.env, vec![("BUDDYSLAB_STATS", "1".to_string())]);
        assert_eq!(o.program.name, "sort");
        assert_eq!(o.program.args, args(&["--stats"]));

        // `--stats` takes its format only after `=`: a word after it is
        // the program.
        let o = parse_run(&["run", "--stats", "json", "-x"]);
        assert_eq!(o.env, vec![("BUDDYSLAB_STATS", "1".to_string())]);
        assert_eq!(o.program.name, "json");
        assert_eq!(o.program.args, args(&["-x"]));

        // After `--`, even a word like an option is the program's.
        let o = parse_run(&["run", "--", "--weird", "--", "x"]);
        assert_eq!(o.program.name, "--weird");
        assert_eq!(o.program.args, args(&["--", "x"]));
    }

    /// The bug of the hand-written parser: `--heapmap --stats` wrote a
    /// file named `--stats` and dropped `--stats`; `--heapmap --` one named
    /// `--`.
    #[test]
    fn an_option_value_never_swallows_an_option_or_the_dashes() {
        for bad in [
            &["run", "--heapmap", "--stats", "--", "true"][..],
            &["run", "--heapmap", "--", "true"],
            &["run", "--lib", "--no-summary", "true"],
            &["compare", "--chart", "--runs", "3", "true"],
            &["compare", "--input", "--", "true"],
        ] {
            let failure = parse(args(bad)).expect_err(&format!("{bad:?} parsed"));
            assert_eq!(failure.status, EXIT_TOOL, "{bad:?}");
            assert!(
                failure.message.contains("value is required"),
                "{bad:?}: {}",
                failure.message
            );
        }
        // `=` is how a value that starts with `-` is given.
        let o = parse_run(&["run", "--heapmap=--odd.svg", "--", "true"]);
        assert!(o.heapmap.unwrap().ends_with("--odd.svg"));
    }

    #[test]
    fn the_last_of_a_repeated_option_counts() {
        let o = parse_run(&["run", "--decay-ms", "5", "--decay-ms=7", "true"]);
        assert_eq!(o.env, vec![("BUDDYSLAB_DECAY_MS", "7".to_string())]);
    }

    #[test]
    fn mistakes_are_usage_errors() {
        for bad in [
            &["run", "--bogus", "--", "ls"][..],
            &["run", "--mmap-threshold", "lots", "ls"],
            &["run", "--mmap-threshold", "64m", "ls"],
            &["run", "--stats=xml", "ls"],
            &["run", "--no-summary=1", "ls"],
            &["run", "--lib"],
            &["run", "--"],
            &["run"],
            &["compare", "--runs", "0", "ls"],
            &["compare", "--runs", "1001", "ls"],
            &["compare", "--with", "nopath", "ls"],
            &["compare", "--with", "glibc=/x.so", "ls"],
            &["compare", "--stats", "ls"],
            &["compare", "--timeout", "0", "ls"],
            &["compare", "--timeout", "soon", "ls"],
            &["completions", "tcsh"],
            &["frobnicate"],
            &[],
        ] {
            let failure = parse(args(bad)).expect_err(&format!("{bad:?} parsed"));
            assert_eq!(failure.status, crate::EXIT_TOOL, "{bad:?}");
            assert!(
                failure.message.contains("--help"),
                "{bad:?}: {}",
                failure.message
            );
        }
    }

    #[test]
    fn help_and_version_are_printed_not_failed() {
        for list in [
            &["--help"][..],
            &["-h"],
            &["help"],
            &["help", "run"],
            &["run", "--help"],
            &["compare", "-h"],
            &["completions", "--help"],
            &["--version"],
            &["-V"],
        ] {
            assert!(
                matches!(parse(args(list)), Ok(Command::Print(_))),
                "{list:?}"
            );
        }
    }

    #[test]
    fn compare_options() {
        let Ok(Command::Compare(o)) = parse(args(&[
            "compare",
            "--runs=3",
            "--with",
            "mine=/x/libmine.so",
            "--with=other=/y.so",
            "--only",
            "glibc, mine",
            "--chart",
            "c.svg",
            "--json",
            "--timeout",
            "2.5",
            "--allow-output-diff",
            "--",
            "true",
        ])) else {
            panic!("not a compare")
        };
        assert_eq!(o.runs, 3);
        assert_eq!(
            o.with,
            vec![
                ("mine".to_string(), PathBuf::from("/x/libmine.so")),
                ("other".to_string(), PathBuf::from("/y.so"))
            ]
        );
        assert_eq!(o.only, Some(vec!["glibc".to_string(), "mine".to_string()]));
        assert_eq!(o.chart, Some(PathBuf::from("c.svg")));
        assert!(o.json && o.allow_output_diff);
        assert_eq!(o.timeout, Some(Duration::from_millis(2500)));

        let Ok(Command::Compare(o)) = parse(args(&["compare", "true"])) else {
            panic!("not a compare")
        };
        assert_eq!(o.runs, 5);
        assert!(!o.json && !o.allow_output_diff && o.timeout.is_none());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("131072"), Some(131072));
        assert_eq!(parse_size("256k"), Some(256 << 10));
        assert_eq!(parse_size("1M"), Some(1 << 20));
        assert_eq!(parse_size("k"), None);
        assert_eq!(parse_size("-1"), None);
        assert_eq!(parse_size("1.5m"), None);
    }
}
