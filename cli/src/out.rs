//! The tool's own output, which never breaks a pipe.
//!
//! Rust ignores `SIGPIPE`, so a write to a pipe whose reader has gone
//! (`buddyslab run -- prog 2>&1 | head`) fails with `EPIPE`, and `print!`
//! and `eprint!` panic on that failure, which the release profile turns
//! into an abort. The tool's exit status is the program's, so a summary
//! nobody reads must not change it: these macros write and drop the error.
//! (The program itself starts with `SIGPIPE` at its default, as `std`
//! resets it in every child.)

use std::fmt;
use std::io::{self, Write};

/// Writes to stderr; a failure is dropped.
pub fn stderr(text: fmt::Arguments) {
    let _ = io::stderr().lock().write_fmt(text);
}

/// Writes to stdout and flushes; a failure is dropped.
pub fn stdout(text: fmt::Arguments) {
    let mut out = io::stdout().lock();
    let _ = out.write_fmt(text);
    let _ = out.flush();
}

/// `eprint!` that never panics (see the module's comment).
macro_rules! say {
    ($($arg:tt)*) => { $crate::out::stderr(format_args!($($arg)*)) };
}

/// `eprintln!` that never panics.
macro_rules! sayln {
    ($($arg:tt)*) => { $crate::out::stderr(format_args!("{}\n", format_args!($($arg)*))) };
}

/// `print!` that never panics.
macro_rules! show {
    ($($arg:tt)*) => { $crate::out::stdout(format_args!($($arg)*)) };
}

/// `println!` that never panics.
macro_rules! showln {
    ($($arg:tt)*) => { $crate::out::stdout(format_args!("{}\n", format_args!($($arg)*))) };
}

pub(crate) use {say, sayln, show, showln};
