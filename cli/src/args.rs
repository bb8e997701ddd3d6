//! The command line, parsed by hand: the tool has a dozen options, all
//! long, so a parser crate would add more than it saves.
//!
//! Options come before the program: `--name VALUE` or `--name=VALUE`, then
//! an optional `--`, then PROGRAM and its arguments, which are passed on
//! untouched (an argument of the program that starts with `-` needs the
//! `--` only if it comes first).

use crate::Failure;
use std::ffi::OsString;
use std::path::PathBuf;

/// What the command line asks for.
#[derive(Debug)]
pub enum Command {
    Help,
    Version,
    Run(RunOptions),
    Compare(CompareOptions),
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
    /// `BUDDYSLAB_*` variables for the library, in option order.
    pub env: Vec<(&'static str, String)>,
    /// `--heapmap`: checked for after the run.
    pub heapmap: Option<PathBuf>,
    pub summary: bool,
    pub program: Program,
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
    pub program: Program,
}

/// Parses the arguments after the executable's name.
pub fn parse(argv: Vec<OsString>) -> Result<Command, Failure> {
    let mut argv = argv.into_iter();
    let Some(first) = argv.next() else {
        return Err(Failure::usage("missing command: `run` or `compare`"));
    };
    match first.to_str() {
        Some("run") => Ok(parse_run(argv)?.map_or(Command::Help, Command::Run)),
        Some("compare") => Ok(parse_compare(argv)?.map_or(Command::Help, Command::Compare)),
        Some("-h" | "--help" | "help") => Ok(Command::Help),
        Some("--version" | "-V") => Ok(Command::Version),
        _ => Err(Failure::usage(format!(
            "unknown command `{}`: the commands are `run` and `compare`",
            first.to_string_lossy()
        ))),
    }
}

/// One option as written: `--name`, with its value if it has one.
struct Parsed {
    name: String,
    value: Option<String>,
}

/// Walks the arguments of one subcommand, one option at a time, until the
/// program.
struct Walker<I: Iterator<Item = OsString>> {
    argv: I,
    subcommand: &'static str,
}

enum Step {
    Option(Parsed),
    Help,
    Program(Program),
}

impl<I: Iterator<Item = OsString>> Walker<I> {
    /// The next step. `takes_value` says, for each option name the
    /// subcommand knows, whether it needs a value (`None` for a name it does
    /// not know). Only `--stats` has an optional `=VALUE`.
    fn next(&mut self, takes_value: impl Fn(&str) -> Option<bool>) -> Result<Step, Failure> {
        let Some(arg) = self.argv.next() else {
            return Err(Failure::usage(format!(
                "`buddyslab {}` needs a program to run: buddyslab {} [OPTIONS] -- PROGRAM [ARGS...]",
                self.subcommand, self.subcommand
            )));
        };
        let text = arg.to_string_lossy().into_owned();
        if text == "--" {
            let Some(name) = self.argv.next() else {
                return Err(Failure::usage(format!(
                    "nothing after `--`: `buddyslab {}` needs a program to run",
                    self.subcommand
                )));
            };
            return Ok(Step::Program(Program {
                name,
                args: self.argv.by_ref().collect(),
            }));
        }
        if text == "-h" || text == "--help" {
            return Ok(Step::Help);
        }
        if !text.starts_with('-') || text == "-" {
            return Ok(Step::Program(Program {
                name: arg,
                args: self.argv.by_ref().collect(),
            }));
        }
        let (name, inline) = match text.split_once('=') {
            Some((n, v)) => (n.to_string(), Some(v.to_string())),
            None => (text.clone(), None),
        };
        match takes_value(&name) {
            None => Err(Failure::usage(format!(
                "unknown option `{name}` for `buddyslab {}`",
                self.subcommand
            ))),
            Some(false) => {
                if name != "--stats" && inline.is_some() {
                    return Err(Failure::usage(format!("option `{name}` takes no value")));
                }
                Ok(Step::Option(Parsed {
                    name,
                    value: inline,
                }))
            }
            Some(true) => {
                let value = match inline {
                    Some(v) => v,
                    None => match self.argv.next() {
                        Some(v) => v.to_string_lossy().into_owned(),
                        None => {
                            return Err(Failure::usage(format!("option `{name}` needs a value")))
                        }
                    },
                };
                if value.is_empty() {
                    return Err(Failure::usage(format!(
                        "option `{name}` needs a non-empty value"
                    )));
                }
                Ok(Step::Option(Parsed {
                    name,
                    value: Some(value),
                }))
            }
        }
    }
}

/// `--mmap-threshold` and `--decay-ms`, shared by both subcommands: the
/// variable to set, after checking the value here so that a typo is a
/// usage error rather than a line from the library in the program's
/// stderr.
fn library_option(option: &Parsed) -> Result<Option<(&'static str, String)>, Failure> {
    let value = option.value.clone().unwrap_or_default();
    match option.name.as_str() {
        "--mmap-threshold" => match parse_size(&value) {
            Some(bytes) if bytes <= 32 << 20 => Ok(Some(("BUDDYSLAB_MMAP_THRESHOLD", value))),
            _ => Err(Failure::usage(format!(
                "--mmap-threshold wants a size up to 32m (e.g. 131072, 256k, 1m), not `{value}`"
            ))),
        },
        "--decay-ms" => match value.parse::<u64>() {
            Ok(_) => Ok(Some(("BUDDYSLAB_DECAY_MS", value))),
            Err(_) => Err(Failure::usage(format!(
                "--decay-ms wants a whole number of milliseconds, not `{value}`"
            ))),
        },
        _ => Ok(None),
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

/// `None` for `--help`.
fn parse_run(argv: impl Iterator<Item = OsString>) -> Result<Option<RunOptions>, Failure> {
    let mut walker = Walker {
        argv,
        subcommand: "run",
    };
    let mut lib = None;
    let mut env = Vec::new();
    let mut heapmap = None;
    let mut summary = true;
    let takes_value = |name: &str| match name {
        "--lib" | "--heapmap" | "--mmap-threshold" | "--decay-ms" => Some(true),
        "--stats" | "--no-summary" => Some(false),
        _ => None,
    };
    loop {
        let option = match walker.next(takes_value)? {
            Step::Program(program) => {
                return Ok(Some(RunOptions {
                    lib,
                    env,
                    heapmap,
                    summary,
                    program,
                }));
            }
            Step::Help => return Ok(None),
            Step::Option(option) => option,
        };
        if let Some(variable) = library_option(&option)? {
            env.push(variable);
            continue;
        }
        let value = option.value.unwrap_or_default();
        match option.name.as_str() {
            "--lib" => lib = Some(PathBuf::from(value)),
            "--heapmap" => {
                let path = absolute(PathBuf::from(value))?;
                env.push(("BUDDYSLAB_HEAPMAP", path.to_string_lossy().into_owned()));
                heapmap = Some(path);
            }
            "--stats" => {
                let setting = match value.as_str() {
                    "" => "1",
                    "json" => "json",
                    "text" => "1",
                    other => {
                        return Err(Failure::usage(format!(
                            "--stats takes no value or `=json`, not `={other}`"
                        )))
                    }
                };
                env.push(("BUDDYSLAB_STATS", setting.to_string()));
            }
            "--no-summary" => summary = false,
            _ => unreachable!("takes_value lists only the options handled here"),
        }
    }
}

/// `None` for `--help`.
fn parse_compare(argv: impl Iterator<Item = OsString>) -> Result<Option<CompareOptions>, Failure> {
    let mut walker = Walker {
        argv,
        subcommand: "compare",
    };
    let mut lib = None;
    let mut env = Vec::new();
    let mut runs = 5;
    let mut with = Vec::new();
    let mut only = None;
    let mut input = None;
    let mut chart = None;
    let takes_value = |name: &str| match name {
        "--lib" | "--mmap-threshold" | "--decay-ms" | "--runs" | "--with" | "--only"
        | "--input" | "--chart" => Some(true),
        _ => None,
    };
    loop {
        let option = match walker.next(takes_value)? {
            Step::Program(program) => {
                return Ok(Some(CompareOptions {
                    lib,
                    env,
                    runs,
                    with,
                    only,
                    input,
                    chart,
                    program,
                }));
            }
            Step::Help => return Ok(None),
            Step::Option(option) => option,
        };
        if let Some(variable) = library_option(&option)? {
            env.push(variable);
            continue;
        }
        let value = option.value.unwrap_or_default();
        match option.name.as_str() {
            "--lib" => lib = Some(PathBuf::from(value)),
            "--runs" => {
                runs = match value.parse::<usize>() {
                    Ok(n) if (1..=1000).contains(&n) => n,
                    _ => {
                        return Err(Failure::usage(format!(
                            "--runs wants a number from 1 to 1000, not `{value}`"
                        )))
                    }
                }
            }
            "--with" => {
                let Some((name, path)) = value.split_once('=') else {
                    return Err(Failure::usage(format!(
                        "--with wants NAME=PATH (e.g. --with mine=./libmine.so), not `{value}`"
                    )));
                };
                if name.is_empty() || path.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic())
                {
                    return Err(Failure::usage(format!(
                        "--with wants NAME=PATH with a one-word NAME, not `{value}`"
                    )));
                }
                if name == "glibc" {
                    return Err(Failure::usage(
                        "--with glibc=...: glibc is the malloc without a preload",
                    ));
                }
                with.push((name.to_string(), PathBuf::from(path)));
            }
            "--only" => {
                only = Some(
                    value
                        .split(',')
                        .map(str::trim)
                        .filter(|n| !n.is_empty())
                        .map(String::from)
                        .collect(),
                )
            }
            "--input" => input = Some(PathBuf::from(value)),
            "--chart" => chart = Some(PathBuf::from(value)),
            _ => unreachable!("takes_value lists only the options handled here"),
        }
    }
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

    #[test]
    fn run_options_become_variables() {
        let Ok(Command::Run(o)) = parse(args(&[
            "run",
            "--stats=json",
            "--mmap-threshold",
            "256k",
            "--decay-ms=50",
            "--",
            "ls",
            "-l",
        ])) else {
            panic!("not a run")
        };
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
        let Ok(Command::Run(o)) = parse(args(&["run", "--stats", "sort", "--stats"])) else {
            panic!("not a run")
        };
        assert_eq!(o.env, vec![("BUDDYSLAB_STATS", "1".to_string())]);
        assert_eq!(o.program.name, "sort");
        assert_eq!(o.program.args, args(&["--stats"]));
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
            &["compare", "--with", "nopath", "ls"],
            &["compare", "--stats", "ls"],
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
    fn compare_options() {
        let Ok(Command::Compare(o)) = parse(args(&[
            "compare",
            "--runs=3",
            "--with",
            "mine=/x/libmine.so",
            "--only",
            "glibc, mine",
            "--chart",
            "c.svg",
            "--",
            "true",
        ])) else {
            panic!("not a compare")
        };
        assert_eq!(o.runs, 3);
        assert_eq!(
            o.with,
            vec![("mine".to_string(), PathBuf::from("/x/libmine.so"))]
        );
        assert_eq!(o.only, Some(vec!["glibc".to_string(), "mine".to_string()]));
        assert_eq!(o.chart, Some(PathBuf::from("c.svg")));
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
