//! `buddyslab`: run a program with `libbuddyslab.so` as its malloc, or
//! compare it with glibc and the other mallocs on the machine.
//!
//! This is an ordinary program (it allocates with the system malloc and is
//! never preloaded itself). The modules:
//!
//! - `args`: the command line, parsed by clap into [`args::Command`];
//!   `help`: the help pages
//! - `program`: finding the program in `PATH`, and reading ELF headers to
//!   refuse what `LD_PRELOAD` cannot reach (static binaries, wrong
//!   libraries) before running anything
//! - `child`: starting one run with a malloc preloaded, waiting for it
//!   with `wait4` (wall time, peak RSS, faults), the binding handshake with
//!   the library, and forwarding signals
//! - `run` and `compare`: the two subcommands; `chart`: the SVG chart
//! - `live`: `views PID` and `top PID`, read from a running process's
//!   live page
//! - `prof`: reading a heap profile, its call sites and flame graph
//! - `out`: printing that survives a closed stdout or stderr

mod args;
mod chart;
mod child;
mod compare;
mod help;
mod live;
mod out;
mod program;
mod prof;
mod run;

use out::{sayln, show};

use std::fmt;
use std::process::ExitCode;

/// Exit status for the tool's own failures (bad option, missing or
/// unusable library, static program), as `env` and `nice` use it.
pub const EXIT_TOOL: u8 = 125;
/// Exit status when the program exists but cannot be run.
pub const EXIT_CANNOT_RUN: u8 = 126;
/// Exit status when the program is not found.
pub const EXIT_NOT_FOUND: u8 = 127;

/// A failure that ends the tool: the message (one or more lines, printed
/// after `buddyslab: `) and the exit status.
#[derive(Debug)]
pub struct Failure {
    /// The exit status to leave with.
    pub status: u8,
    /// What went wrong, for the user.
    pub message: String,
}

impl Failure {
    /// A failure of the tool itself ([`EXIT_TOOL`]).
    pub fn tool(message: impl Into<String>) -> Failure {
        Failure {
            status: EXIT_TOOL,
            message: message.into(),
        }
    }

    /// A command-line mistake: the message plus where to read the usage.
    pub fn usage(message: impl fmt::Display) -> Failure {
        Failure::tool(format!("{message}\nTry `buddyslab --help`."))
    }
}

fn main() -> ExitCode {
    let argv: Vec<_> = std::env::args_os().skip(1).collect();
    let outcome = args::parse(argv).and_then(|command| match command {
        args::Command::Print(text) => {
            // clap writes help and version to stdout, in colour on a
            // terminal; a failed write is dropped.
            let _ = text.print();
            Ok(0)
        }
        args::Command::Completions(shell) => {
            let mut script = Vec::new();
            clap_complete::generate(shell, &mut args::definition(), "buddyslab", &mut script);
            show!("{}", String::from_utf8_lossy(&script));
            Ok(0)
        }
        args::Command::Run(options) => run::run(options),
        args::Command::Compare(options) => compare::compare(options),
        args::Command::Views(options) => live::views(options),
        args::Command::Top(options) => live::top(options),
        args::Command::Prof(options) => prof::prof(options),
    });
    match outcome {
        Ok(status) => ExitCode::from(status),
        Err(failure) => {
            sayln!("buddyslab: {}", failure.message);
            ExitCode::from(failure.status)
        }
    }
}
