//! `buddyslab run`: the program on libbuddyslab.so, then a summary.

use crate::args::RunOptions;
use crate::child::{self, Announcements, Binding, Ended, Finished, Launch};
use crate::out::{say, sayln};
use crate::program;
use crate::{Failure, EXIT_CANNOT_RUN};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;

/// Runs the program and returns the exit status to leave with (a program
/// killed by a signal kills us with it before this returns).
pub fn run(options: RunOptions) -> Result<u8, Failure> {
    let path = program::resolve(&options.program.name)?;
    let image = program::check_program(&path)?;
    let (lib, hint) = library_path(options.lib.as_deref())?;
    program::check_library(&lib, image.as_ref(), &hint)?;

    let map_before = match &options.heapmap {
        Some(map) => Some(clear_heapmap(map)?),
        None => None,
    };

    child::forward_signals();
    let launch = Launch {
        path: &path,
        argv0: &options.program.name,
        args: &options.program.args,
        preload: Some(&lib),
        inherit_preload: true,
        env: &options.env,
        announce: true,
        timeout: None,
    };
    let finished = child::start(
        &launch,
        Stdio::inherit(),
        Stdio::inherit(),
        Stdio::inherit(),
    )
    .map_err(|e| cannot_start(&options.program.name.to_string_lossy(), &e))?;

    let shown = options.program.name.to_string_lossy();
    let announcements = finished
        .announcements
        .clone()
        .expect("announce was asked for");
    if let Some(warning) = binding_warning(&shown, &lib, &announcements) {
        sayln!("buddyslab: {warning}");
    }
    if options.summary {
        say!(
            "{}",
            summary(
                &shown,
                &lib,
                &finished,
                options.heapmap.as_deref().zip(map_before)
            )
        );
    }
    match finished.ended {
        Ended::Exited(code) => Ok(code as u8),
        Ended::Signaled { signal, .. } => {
            child::die_of(signal);
            Ok((128 + signal) as u8)
        }
    }
}

pub use crate::child::LIB_VARIABLE;

/// The library to preload, the first of: `--lib`, `BUDDYSLAB_LIB`,
/// `libbuddyslab.so` next to this executable (a cargo build), in `../lib/`
/// from it (an install under a prefix). Also the hint shown if it does not
/// exist.
pub fn library_path(given: Option<&Path>) -> Result<(PathBuf, String), Failure> {
    if let Some(lib) = given {
        return Ok((lib.to_path_buf(), String::new()));
    }
    if let Some(lib) = std::env::var_os(LIB_VARIABLE).filter(|v| !v.is_empty()) {
        return Ok((PathBuf::from(lib), format!(" (named by {LIB_VARIABLE})")));
    }
    let exe = std::env::current_exe().map_err(|e| {
        Failure::tool(format!(
            "cannot find my own executable: {e}; use --lib PATH or {LIB_VARIABLE}"
        ))
    })?;
    let dir = exe.parent().unwrap_or(Path::new("/"));
    let beside = dir.join("libbuddyslab.so");
    let installed = dir
        .parent()
        .map(|prefix| prefix.join("lib/libbuddyslab.so"));
    if let Some(found) = std::iter::once(&beside)
        .chain(installed.as_ref())
        .find(|candidate| candidate.is_file())
    {
        return Ok((found.clone(), String::new()));
    }
    let also = installed
        .as_ref()
        .map(|p| format!(" nor at {}", p.display()))
        .unwrap_or_default();
    Ok((
        beside,
        format!(
            "{also} (the places next to {}): build it with `cargo build --release`, install \
             both with scripts/install.sh, or name it with --lib PATH or {LIB_VARIABLE}",
            exe.display()
        ),
    ))
}

/// The failure for a program that `exec` refused.
pub fn cannot_start(program: &str, error: &std::io::Error) -> Failure {
    Failure {
        status: EXIT_CANNOT_RUN,
        message: format!("cannot run {program}: {error}"),
    }
}

/// What to say when the program did not run on buddyslab, in words a user
/// can act on; `None` when it did.
pub fn binding_warning(program: &str, lib: &Path, said: &Announcements) -> Option<String> {
    let mut warning = match &said.child {
        Binding::Bound => String::new(),
        Binding::Unbound { symbol, object } => format!(
            "WARNING: {program} did not run on buddyslab: its `{symbol}` comes from {object}, \
             which brings its own malloc and takes precedence over the preload; the figures \
             below are that malloc's."
        ),
        Binding::Silent => format!(
            "WARNING: {program} did not run on buddyslab: {} was never loaded into it (a \
             set-user-ID program, a program that clears LD_PRELOAD, or the loader refused the \
             library: see its message above); the figures below are its usual malloc's.",
            lib.display()
        ),
    };
    if said.descendants_unbound > 0 {
        if !warning.is_empty() {
            warning.push('\n');
        }
        warning.push_str(&format!(
            "WARNING: {} of the processes {program} started brought their own malloc and did \
             not use buddyslab.",
            said.descendants_unbound
        ));
    }
    (!warning.is_empty()).then_some(warning)
}

/// The lines printed after the run.
fn summary(
    program: &str,
    lib: &Path,
    finished: &Finished,
    heapmap: Option<(&Path, MapBefore)>,
) -> String {
    let said = finished
        .announcements
        .as_ref()
        .expect("announce was asked for");
    let malloc = match &said.child {
        Binding::Bound => format!("buddyslab, bound ({})", lib.display()),
        Binding::Unbound { object, .. } => format!("NOT buddyslab: the program's own ({object})"),
        Binding::Silent => "NOT buddyslab: the library was not loaded".to_string(),
    };
    let mut lines = vec![
        format!("buddyslab run: {program} (pid {})", finished.pid),
        format!("  malloc        {malloc}"),
    ];
    let others = said.descendants_bound + said.descendants_unbound;
    if others > 0 {
        lines.push(format!(
            "  processes     {others} more loaded buddyslab ({} bound)",
            said.descendants_bound
        ));
    }
    lines.push(format!("  ended         {}", finished.ended.describe()));
    lines.push(format!(
        "  time          {:.3} s wall, {:.3} s user, {:.3} s system",
        finished.wall.as_secs_f64(),
        finished.user.as_secs_f64(),
        finished.system.as_secs_f64()
    ));
    lines.push(format!("  peak RSS      {}", mib(finished.peak_rss_kib)));
    lines.push(format!(
        "  page faults   {} minor, {} major",
        thousands(finished.minor_faults),
        thousands(finished.major_faults)
    ));
    if let Some((map, before)) = heapmap {
        lines.push(if heapmap_written(map, &before) {
            format!("  heap map      {}", map.display())
        } else {
            format!(
                "  heap map      {} was not written by the library",
                map.display()
            )
        });
    }
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

/// What `--heapmap` named before the run, so that afterwards a map there
/// can be known to be this run's. A clock read before the run cannot tell:
/// file times come from a coarse clock (a jiffy, or worse on some file
/// systems), so a map written during the run may carry an earlier time.
pub enum MapBefore {
    /// Nothing is there now: a plain file that was there has been removed
    /// (the library would truncate and rewrite it anyway), so whatever is
    /// there after the run, this run wrote.
    Absent,
    /// Not a plain file (a symbolic link, a device): left alone, and its
    /// identity, size and times (to the nanosecond) compared after the run.
    Kept(Option<Stamp>),
}

/// A file's device, inode, size, and modification and change times.
#[derive(PartialEq, Eq)]
pub struct Stamp([i64; 7]);

impl Stamp {
    fn of(metadata: &std::fs::Metadata) -> Stamp {
        Stamp([
            metadata.dev() as i64,
            metadata.ino() as i64,
            metadata.size() as i64,
            metadata.mtime(),
            metadata.mtime_nsec(),
            metadata.ctime(),
            metadata.ctime_nsec(),
        ])
    }
}

/// Prepares `map` for the run (see [`MapBefore`]).
fn clear_heapmap(map: &Path) -> Result<MapBefore, Failure> {
    match std::fs::symlink_metadata(map) {
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(MapBefore::Absent),
        Err(e) => Err(Failure::tool(format!("--heapmap {}: {e}", map.display()))),
        Ok(m) if m.is_dir() => Err(Failure::usage(format!(
            "--heapmap {} is a directory; name a file, e.g. heap.svg",
            map.display()
        ))),
        Ok(m) if m.is_file() => match std::fs::remove_file(map) {
            Ok(()) => Ok(MapBefore::Absent),
            Err(e) => Err(Failure::tool(format!(
                "--heapmap {}: cannot replace the map there: {e}",
                map.display()
            ))),
        },
        Ok(_) => Ok(MapBefore::Kept(
            std::fs::metadata(map).ok().map(|m| Stamp::of(&m)),
        )),
    }
}

/// Whether the library wrote `map` during the run.
fn heapmap_written(map: &Path, before: &MapBefore) -> bool {
    let now = std::fs::metadata(map);
    match before {
        MapBefore::Absent => now.is_ok(),
        MapBefore::Kept(stamp) => now.is_ok_and(|m| stamp.as_ref() != Some(&Stamp::of(&m))),
    }
}

/// KiB as "12.3 MiB".
pub fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// 1234567 as "1,234,567".
pub fn thousands(n: u64) -> String {
    let digits = n.to_string();
    let mut out = String::new();
    for (i, c) in digits.chars().enumerate() {
        if i > 0 && (digits.len() - i) % 3 == 0 {
            out.push(',');
        }
        out.push(c);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numbers_read_well() {
        assert_eq!(thousands(0), "0");
        assert_eq!(thousands(999), "999");
        assert_eq!(thousands(1000), "1,000");
        assert_eq!(thousands(1234567), "1,234,567");
        assert_eq!(mib(1536), "1.5 MiB");
    }
}
