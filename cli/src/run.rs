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

    // `--stats` on stderr: each process of the tree writes its views into
    // a directory of this run, and the tool prints the program's (and the
    // largest heap's) after it, instead of every shell, `make` or shim
    // process of the tree flooding stderr. A BUDDYSLAB_STATS_FILE of the
    // user's own is left to do what it says.
    let mut env = options.env.clone();
    let views_dir = if env.iter().any(|(k, _)| *k == "BUDDYSLAB_STATS")
        && std::env::var_os("BUDDYSLAB_STATS_FILE").is_none()
    {
        // Private (mode 0700) with an unpredictable name, from the
        // tempfile crate; kept after the run when it holds views the tool
        // did not print (the summary names them).
        let dir = tempfile::Builder::new()
            .prefix("buddyslab-run.")
            .tempdir()
            .map_err(|e| {
                Failure::tool(format!(
                    "cannot create a folder for the views in {}: {e}",
                    std::env::temp_dir().display()
                ))
            })?
            .keep();
        env.push(("BUDDYSLAB_STATS_FILE", format!("{}/views.%p", dir.display())));
        Some(dir)
    } else {
        None
    };

    child::forward_signals();
    let launch = Launch {
        path: &path,
        argv0: &options.program.name,
        args: &options.program.args,
        preload: Some(&lib),
        inherit_preload: true,
        env: &env,
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
    let mut finished = finished;
    if let (Some(dir), Some(said)) = (&views_dir, finished.announcements.as_mut()) {
        show_views(dir, finished.pid, said);
    }
    let announcements = finished
        .announcements
        .clone()
        .expect("announce was asked for");
    if let Some(warning) = binding_warning(&shown, &lib, &announcements) {
        sayln!("buddyslab: {warning}");
    }
    for story in announcements.processes.iter().filter(|p| !p.exited) {
        crate::live::remove_stale_page(story.pid);
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

/// Prints on stderr the views of the process the tool started and, when
/// another process of the tree held a larger heap (`InUsePeak`), that
/// one's too; marks those as shown on stderr in `said`, and removes the
/// directory when every process's views were shown (else the summary
/// lists the files left there).
fn show_views(dir: &Path, child: i32, said: &mut Announcements) {
    let mut views: Vec<(i32, String)> = std::fs::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|entry| {
            let name = entry.file_name().into_string().ok()?;
            let pid = name.strip_prefix("views.")?.parse().ok()?;
            Some((pid, std::fs::read_to_string(entry.path()).ok()?))
        })
        .collect();
    views.sort_by_key(|(pid, _)| *pid);
    let largest = views.iter().max_by_key(|(_, text)| peak_in_use(text)).map(|(pid, _)| *pid);
    let mut shown = Vec::new();
    for (pid, text) in &views {
        if *pid == child || Some(*pid) == largest {
            say!("{text}");
            shown.push(*pid);
        }
    }
    for story in said.processes.iter_mut().filter(|s| shown.contains(&s.pid)) {
        for (_, path) in story.wrote.iter_mut().filter(|(what, _)| what == "views") {
            *path = "stderr".to_string();
        }
    }
    if shown.len() == views.len() {
        for (pid, _) in &views {
            let _ = std::fs::remove_file(dir.join(format!("views.{pid}")));
        }
        let _ = std::fs::remove_dir(dir);
    } else {
        for pid in &shown {
            let _ = std::fs::remove_file(dir.join(format!("views.{pid}")));
        }
    }
}

/// A view's peak bytes in use: `InUsePeak:` of the text views (kB), or
/// `"in_use_peak":` of the JSON (bytes, so the two are not compared).
fn peak_in_use(text: &str) -> u64 {
    let number = |rest: &str| rest.trim_start().split(|c: char| !c.is_ascii_digit()).next()?.parse().ok();
    text.lines()
        .find_map(|l| l.strip_prefix("InUsePeak:").and_then(number))
        .or_else(|| text.split_once("\"in_use_peak\":").and_then(|(_, rest)| number(rest)))
        .unwrap_or(0)
}

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
    let stories = process_stories(finished, said);
    let why_none = (!said.processes.is_empty()).then(|| {
        let silent: Vec<String> = said
            .processes
            .iter()
            .filter(|p| p.wrote.is_empty())
            .map(|p| format!("{} ({}): {}", p.pid, command_of(p), why_nothing(p, finished)))
            .collect();
        silent.join("; ")
    });
    lines.extend(stories);
    if let Some((map, before)) = heapmap {
        let path = map.to_string_lossy();
        lines.push(if path.contains("%p") {
            let written: Vec<&str> = said
                .processes
                .iter()
                .flat_map(|p| &p.wrote)
                .filter(|(what, _)| what == "heap map")
                .map(|(_, path)| path.as_str())
                .collect();
            if written.is_empty() {
                format!("  heap map      {path}: none written")
            } else {
                format!("  heap map      {}", written.join(", "))
            }
        } else if heapmap_written(map, &before) {
            format!("  heap map      {}", map.display())
        } else {
            match why_none.as_deref().filter(|w| !w.is_empty()) {
                Some(why) => format!("  heap map      {} was not written: {why}", map.display()),
                None => format!("  heap map      {} was not written by the library", map.display()),
            }
        });
    }
    let mut text = lines.join("\n");
    text.push('\n');
    text
}

/// One line per process that loaded the library: what it wrote, or why
/// it wrote nothing; none when no process was asked to write anything (no
/// exit hook ran and nothing was written).
fn process_stories(finished: &Finished, said: &Announcements) -> Vec<String> {
    let asked = said.processes.iter().any(|p| p.exited || !p.wrote.is_empty());
    if !asked {
        return Vec::new();
    }
    const SHOWN: usize = 20;
    let mut lines = vec![format!(
        "  views         by process ({} on buddyslab):",
        said.processes.len()
    )];
    for p in said.processes.iter().take(SHOWN) {
        let what = if p.wrote.is_empty() {
            format!("nothing: {}", why_nothing(p, finished))
        } else {
            let mut files: Vec<String> = Vec::new();
            for (what, path) in &p.wrote {
                let entry = format!("{what} {path}");
                if !files.contains(&entry) {
                    files.push(entry);
                }
            }
            let end = if p.exited {
                String::new()
            } else {
                format!(" (not at exit: {})", why_nothing(p, finished))
            };
            format!("{}{end}", files.join(", "))
        };
        lines.push(format!("    {:>7} {:<15} {what}", p.pid, command_of(p)));
    }
    if said.processes.len() > SHOWN {
        lines.push(format!("    ... and {} more", said.processes.len() - SHOWN));
    }
    lines
}

/// The command names a process ran on buddyslab, `a -> b` after an exec.
fn command_of(p: &crate::child::Story) -> String {
    if p.commands.is_empty() {
        "?".to_string()
    } else {
        p.commands.join(" -> ")
    }
}

/// Why a process's exit handlers did not write its views.
fn why_nothing(p: &crate::child::Story, finished: &Finished) -> String {
    if p.exited {
        return "its exit handlers ran, but no view was asked of it".to_string();
    }
    if p.pid == finished.pid {
        if let Ended::Signaled { .. } = finished.ended {
            return format!("{} before its exit handlers ran", finished.ended.describe());
        }
        return "it left without running its exit handlers (_exit, or exec of a program not on buddyslab)"
            .to_string();
    }
    "it left without running its exit handlers (killed by a signal, _exit, or exec of a program not on buddyslab)"
        .to_string()
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
