//! `buddyslab`: run a program with `libbuddyslab.so` as its malloc, or
//! compare it with glibc and the other mallocs on the machine.
//!
//! This is an ordinary program (it allocates with the system malloc and is
//! never preloaded itself). The modules:
//!
//! - `args`: the command line, parsed by hand into [`args::Command`]
//! - `program`: finding the program in `PATH`, and reading ELF headers to
//!   refuse what `LD_PRELOAD` cannot reach (static binaries, wrong
//!   libraries) before running anything
//! - `child`: starting one run with a malloc preloaded, waiting for it
//!   with `wait4` (wall time, peak RSS, faults), the binding handshake with
//!   the library, and forwarding signals
//! - `run` and `compare`: the two subcommands; `chart`: the SVG chart
//! - `out`: printing that survives a closed stdout or stderr

mod args;
mod chart;
mod child;
mod compare;
mod out;
mod program;
mod run;

use out::{sayln, show, showln};

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
        args::Command::Help => {
            show!("{MANUAL}");
            Ok(0)
        }
        args::Command::Version => {
            showln!("buddyslab {}", env!("CARGO_PKG_VERSION"));
            Ok(0)
        }
        args::Command::Run(options) => run::run(options),
        args::Command::Compare(options) => compare::compare(options),
    });
    match outcome {
        Ok(status) => ExitCode::from(status),
        Err(failure) => {
            sayln!("buddyslab: {}", failure.message);
            ExitCode::from(failure.status)
        }
    }
}

/// `buddyslab --help`, laid out like a manual page.
pub const MANUAL: &str = "\
NAME
    buddyslab - run a program on the buddyslab malloc, or compare mallocs

SYNOPSIS
    buddyslab run [OPTIONS] [--] PROGRAM [ARGS...]
    buddyslab compare [OPTIONS] [--] PROGRAM [ARGS...]
    buddyslab --help | --version

DESCRIPTION
    buddyslab run starts PROGRAM with libbuddyslab.so preloaded
    (LD_PRELOAD), so that every malloc, free, calloc, realloc and the rest
    of glibc's malloc API in the program and in the libraries it uses go to
    buddyslab. The options become BUDDYSLAB_* environment variables, read by
    the library. Before starting, the program is checked: a statically
    linked program cannot have its malloc replaced and is refused. When the
    program has started, the library reports whether its malloc is the one
    the process really uses; if the program brings its own malloc (or the
    loader refused the library), run says so. The program's standard
    streams are its own. At the end a short summary goes to stderr: whether
    buddyslab was bound, the exit status, wall time, user and system time,
    peak resident set size and page faults (from wait4(2)). Signals sent to
    buddyslab (kill, timeout) are passed on to the program; the program's
    exit status is buddyslab's, and a program killed by a signal makes
    buddyslab die of the same signal.

    buddyslab compare runs PROGRAM under several mallocs: glibc's own (no
    preload), buddyslab, and each of jemalloc, mimalloc and tcmalloc whose
    Debian library is installed (libjemalloc.so.2, libmimalloc.so.2,
    libtcmalloc_minimal.so.4), plus any given with --with. The runs are
    interleaved: round 1 runs the program once under every malloc, then
    round 2, and so on, the order rotating each round, so that noise on the
    machine falls on all of them alike. It prints a table of the median
    wall time, peak RSS and minor faults, each with its ratio to glibc (or
    to the first malloc when glibc is left out). The program's standard
    output and exit status must be the same under every malloc, since a
    malloc that changes what a program prints is broken; a difference is
    reported with the first line that differs. (If the output already
    varies between runs on glibc alone, it is not compared.) A library
    the loader refuses, or a buddyslab that is not bound in the program,
    stops the comparison, since it would measure glibc under another
    name. Progress goes to stderr, the table to stdout. Standard input is
    empty unless --input is given.

OPTIONS
  Common
    --lib PATH
        The buddyslab library to preload. Default: libbuddyslab.so in the
        directory of the buddyslab executable (target/release/ after
        `cargo build --release`).
    --mmap-threshold SIZE
        Requests of at least SIZE bytes get their own mmap (suffixes k, m;
        at most 32m). Sets BUDDYSLAB_MMAP_THRESHOLD.
    --decay-ms MS
        How long freed memory stays before it goes back to the kernel.
        Sets BUDDYSLAB_DECAY_MS.
    -h, --help
        This page.
    --version
        The version.

  run only
    --stats, --stats=json
        Have the library print its statistics (the heap views) on the
        program's stderr at exit, as text or as JSON. Sets
        BUDDYSLAB_STATS=1 or BUDDYSLAB_STATS=json.
    --heapmap FILE.svg
        Have the library draw a map of the heap into FILE.svg at exit;
        the summary says whether it did. Sets BUDDYSLAB_HEAPMAP (to the
        absolute path).
    --no-summary
        Do not print the summary at the end (the binding warning still
        appears).

  compare only
    --runs N
        Runs per malloc (default 5); the medians are over these.
    --with NAME=PATH
        Also compare the malloc in the shared library PATH, called NAME.
        May be repeated. A NAME already known (jemalloc, ...) replaces the
        library found on the machine.
    --only NAME,NAME...
        Compare only these mallocs (names from the table: glibc,
        buddyslab, jemalloc, mimalloc, tcmalloc, or a --with NAME).
    --input FILE
        Standard input of every run comes from FILE.
    --chart FILE.svg
        Also write the table as an SVG bar chart (ratios to glibc).

EXIT STATUS
    run: the program's exit status; if the program was killed by a
    signal, buddyslab kills itself with the same signal (a shell then
    shows 128 + the signal number).
    compare: 0 when every run exited as it did on glibc and printed the
    same output; 1 when a run's output or exit status differed.
    Both: 125 for buddyslab's own errors (bad option, library missing or
    not a shared library, statically linked program), 126 when PROGRAM
    cannot be executed, 127 when it is not found.

EXAMPLES
    buddyslab run --stats -- python3 -c 'print(sum(range(10**6)))'
        Run Python on buddyslab and print the allocator's statistics.

    buddyslab run --heapmap heap.svg -- sort big.txt > sorted.txt
        Sort a file, then look at heap.svg in a browser.

    buddyslab compare --runs 3 --chart sort.svg -- sort -n numbers.txt
        Time sort under every malloc on the machine, three runs each.

    buddyslab compare --only glibc,buddyslab --with mine=./libmine.so -- ./a.out
        Compare glibc, buddyslab and your own malloc on a program.
";
