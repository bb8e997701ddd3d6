//! When and where the views are written: at exit, on demand (a signal the
//! user opts into), at an interval, and to which files (`%p` in a path is
//! the process id, so every process of a tree writes its own).
//!
//! | variable                        | effect                                                   |
//! |---------------------------------|----------------------------------------------------------|
//! | `BUDDYSLAB_STATS_FILE`          | the text or JSON views go to this file instead of stderr |
//! | `BUDDYSLAB_STATS_SIGNAL`        | `USR1`, `USR2` (or a number): that signal asks for the views |
//! | `BUDDYSLAB_STATS_INTERVAL_MS`   | the views are written again every so many milliseconds   |
//!
//! Nothing is written from a signal handler nor from the fast path. The
//! handler only sets a flag; the views are written by the thread that next
//! takes a slow path ([`on_slow_path`]: a thread cache's refill, a block
//! above the slab sizes), which is also where the interval is checked
//! against the coarse clock. A program that sleeps, or whose every call is
//! served from its thread caches, writes nothing until it next reaches a
//! slow path, and changes no figure in the meantime either.
//!
//! [`on_slow_path`] is the one hook into the allocator: a relaxed load of
//! [`ARMED`], false unless one of the triggers above or the live page
//! ([`crate::live`]) is in use. Other writers (a heap profile) join the
//! same triggers with [`register_writer`] instead of adding a hook.
//!
//! Each file is written to `PATH.tmp.PID` and renamed over `PATH`, so two
//! processes naming the same path never mix their bytes (the last rename
//! wins) and a reader never sees half a file. When the `buddyslab` tool is
//! watching (`BUDDYSLAB_ANNOUNCE`, see the C face's `announce`), each file
//! written and the exit itself are reported on its pipe:
//!
//! ```text
//! buddyslab-command <pid> <command name>
//! buddyslab-wrote <pid> <what> <path>
//! buddyslab-exit <pid>
//! ```
//!
//! (the first when the library is loaded, from the C face's constructor;
//! `<what>` is one word, `views`, `heap-map`, ...; views printed on stderr
//! have the path `stderr`)
//!
//! so the tool can list every file of every process and say which ones
//! ended without their exit handlers running (killed, `_exit`, `exec`).

use crate::os;
use crate::stats::{FdWriter, FixedBuf};
use core::ffi::CStr;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicI32, AtomicPtr, AtomicU64, Ordering};

/// Why views are being written, passed to registered writers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// The process is exiting (`atexit`).
    Exit,
    /// The opt-in signal arrived (`BUDDYSLAB_STATS_SIGNAL`).
    Signal,
    /// The interval passed (`BUDDYSLAB_STATS_INTERVAL_MS`).
    Interval,
}

impl Reason {
    /// The word used in headers: `exit`, `signal`, `interval`.
    pub fn name(self) -> &'static str {
        match self {
            Reason::Exit => "exit",
            Reason::Signal => "signal",
            Reason::Interval => "interval",
        }
    }
}

/// True when [`on_slow_path`] has something to check: a trigger or the
/// live page is in use. Set at start-up, and by the signal handler.
pub static ARMED: AtomicBool = AtomicBool::new(false);
/// Set by the signal handler, cleared by the thread that writes the views.
static SIGNALLED: AtomicBool = AtomicBool::new(false);
/// `BUDDYSLAB_STATS_SIGNAL`: the signal number, 0 when none.
pub static SIGNAL: AtomicI32 = AtomicI32::new(0);
/// `BUDDYSLAB_STATS_INTERVAL_MS` in nanoseconds, 0 when off.
pub static INTERVAL_NS: AtomicU64 = AtomicU64::new(0);
/// When the interval next falls due ([`os::monotonic_ns`]).
static NEXT_DUE_NS: AtomicU64 = AtomicU64::new(0);
/// One thread at a time writes (and a writer that allocates cannot
/// re-enter through its own slow path).
static BUSY: AtomicBool = AtomicBool::new(false);
/// The exit hook ran (it may be registered twice: by the heap's set-up and
/// by [`start`]).
static EXITED: AtomicBool = AtomicBool::new(false);
/// `BUDDYSLAB_STATS_FILE`: where the text or JSON views go.
pub static STATS_FILE: crate::stats::ExitFile = crate::stats::ExitFile::new("views");
/// A writer registered with [`register_writer`] (a `fn(Reason)`), or null.
static EXTRA_WRITER: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());

/// Adds `writer` to the triggers: it runs after the views, at exit, on the
/// signal and at the interval, on the thread that writes them and with no
/// allocator lock held. One writer; a second call replaces the first. It
/// also arms nothing by itself: the triggers are the user's variables.
pub fn register_writer(writer: fn(Reason)) {
    EXTRA_WRITER.store(writer as *mut (), Ordering::Release);
}

/// Records the path of `BUDDYSLAB_STATS_FILE` (see
/// [`crate::stats::ExitFile::set`]).
pub fn set_stats_file(value: &'static [u8]) {
    STATS_FILE.set(value)
}

/// Parses a signal name (`USR1`, `SIGUSR2`, any case) or number (1..=64).
pub fn parse_signal(value: &[u8]) -> Option<i32> {
    let name = if value.len() > 3 && value[..3].eq_ignore_ascii_case(b"SIG") { &value[3..] } else { value };
    let known: [(&[u8], i32); 6] = [
        (b"USR1", libc::SIGUSR1),
        (b"USR2", libc::SIGUSR2),
        (b"HUP", libc::SIGHUP),
        (b"PROF", libc::SIGPROF),
        (b"WINCH", libc::SIGWINCH),
        (b"URG", libc::SIGURG),
    ];
    if let Some((_, n)) = known.iter().find(|(k, _)| name.eq_ignore_ascii_case(k)) {
        return Some(*n);
    }
    let n = crate::options::parse_size(name).filter(|_| name.iter().all(u8::is_ascii_digit))?;
    (1..=64).contains(&n).then_some(n as i32)
}

/// Starts what the options asked for: the signal handler, the interval,
/// the live page, and the exit hook when anything is to be written at
/// exit. Called once, at the end of reading the environment.
pub fn start() {
    use crate::options::{STATS_AT_EXIT, STATS_OFF, STATS_TEXT};
    if STATS_FILE.requested() && STATS_AT_EXIT.load(Ordering::Relaxed) == STATS_OFF {
        STATS_AT_EXIT.store(STATS_TEXT, Ordering::Relaxed);
    }
    let mut armed = false;
    let signal = SIGNAL.load(Ordering::Relaxed);
    if signal != 0 {
        if os::install_signal_handler(signal, on_signal) {
            armed = true;
        } else {
            os::write_all(2, b"buddyslab: BUDDYSLAB_STATS_SIGNAL: cannot handle that signal; ignored\n");
        }
    }
    let interval = INTERVAL_NS.load(Ordering::Relaxed);
    if interval != 0 {
        NEXT_DUE_NS.store(os::monotonic_ns() + interval, Ordering::Relaxed);
        armed = true;
    }
    if crate::live::start() {
        armed = true;
    }
    let at_exit = armed
        || STATS_AT_EXIT.load(Ordering::Relaxed) != STATS_OFF
        || crate::heapmap::requested()
        || crate::addrspace::svg_requested();
    if armed {
        // SAFETY: a plain function that only resets flags and drops a
        // mapping; registering may allocate, which is fine at start-up.
        unsafe { libc::pthread_atfork(None, None, Some(after_fork_child)) };
    }
    crate::stats::COUNT_CALLS.store(at_exit, Ordering::Relaxed);
    if at_exit {
        // SAFETY: a plain function with no preconditions; atexit may
        // allocate, which is fine: no allocator lock is held at start-up.
        unsafe { libc::atexit(crate::stats::print_at_exit) };
    }
    ARMED.store(armed, Ordering::Release);
}

/// In a child after `fork`: the parent's writer, if one was running in
/// another thread, does not exist here; its busy flag must not stay set.
extern "C" fn after_fork_child() {
    BUSY.store(false, Ordering::Relaxed);
    crate::live::after_fork_child();
}

extern "C" fn on_signal(_: i32) {
    // Async-signal-safe: two stores. The views are written at the next
    // slow path, by whichever thread takes it.
    SIGNALLED.store(true, Ordering::Relaxed);
    ARMED.store(true, Ordering::Relaxed);
}

/// The hook on the allocator's slow paths: one relaxed load when nothing
/// is in use. The caller holds no allocator lock.
#[inline(always)]
pub fn on_slow_path() {
    if ARMED.load(Ordering::Relaxed) {
        on_slow_path_armed();
    }
}

#[cold]
#[inline(never)]
fn on_slow_path_armed() {
    if BUSY.swap(true, Ordering::Acquire) {
        return;
    }
    let reason = if SIGNALLED.swap(false, Ordering::Relaxed) {
        Some(Reason::Signal)
    } else {
        let interval = INTERVAL_NS.load(Ordering::Relaxed);
        let now = if interval != 0 { os::monotonic_ns() } else { 0 };
        if interval != 0 && now >= NEXT_DUE_NS.load(Ordering::Relaxed) {
            NEXT_DUE_NS.store(now + interval, Ordering::Relaxed);
            Some(Reason::Interval)
        } else {
            None
        }
    };
    if let Some(reason) = reason {
        write_views(reason);
    }
    crate::live::on_slow_path();
    BUSY.store(false, Ordering::Release);
}

/// Whether this process is the one to write (`BUDDYSLAB_STATS_PPID`, when
/// set, names the only parent whose children write).
fn chosen() -> bool {
    let parent = crate::options::STATS_PPID.load(Ordering::Relaxed);
    parent == 0 || os::getppid() == parent
}

/// The exit hook's work (see [`crate::stats::print_at_exit`]): the views
/// once more, the live page removed, and the tool told that this process
/// ran its exit handlers.
pub fn at_exit() {
    if EXITED.swap(true, Ordering::AcqRel) {
        return;
    }
    // A thread still writing (on the signal or interval) finishes first;
    // its views are then written again, whole, below.
    while BUSY.swap(true, Ordering::Acquire) {
        core::hint::spin_loop();
    }
    write_views(Reason::Exit);
    crate::live::remove();
    let mut line = FixedBuf::<64>::new();
    let _ = writeln!(line, "buddyslab-exit {}", os::getpid());
    tell_tool(line.as_bytes());
    BUSY.store(false, Ordering::Release);
}

/// Writes every view asked for: the text or JSON views (to
/// `BUDDYSLAB_STATS_FILE` or stderr), the heap map, the address-space
/// drawing, then the registered writer.
pub fn write_views(reason: Reason) {
    if chosen() {
        use crate::options::{STATS_AT_EXIT, STATS_JSON, STATS_TEXT};
        let format = STATS_AT_EXIT.load(Ordering::Relaxed);
        let views = |w: &mut FdWriter| match format {
            STATS_TEXT => {
                write_header(w, reason)?;
                crate::stats::write_views(w)
            }
            STATS_JSON => crate::stats::write_json(w),
            _ => Ok(()),
        };
        if STATS_FILE.requested() {
            STATS_FILE.write(views);
        } else if format == STATS_TEXT || format == STATS_JSON {
            let mut w = FdWriter::new(2);
            let _ = views(&mut w);
            w.flush();
            tell_written("views", b"stderr");
        }
        crate::heapmap::write_requested();
        crate::addrspace::write_svg_requested();
    }
    let writer = EXTRA_WRITER.load(Ordering::Acquire);
    if !writer.is_null() {
        // SAFETY: only `register_writer` stores here, always a `fn(Reason)`.
        let writer: fn(Reason) = unsafe { core::mem::transmute::<*mut (), fn(Reason)>(writer) };
        writer(reason);
    }
}

/// The first line of the text views: which process, and why now.
fn write_header(w: &mut dyn Write, reason: Reason) -> core::fmt::Result {
    let mut comm = [0u8; 32];
    let name = command_name(&mut comm);
    writeln!(
        w,
        "== buddyslab {} {} ({}) at {}",
        crate::stats::VIEWS_VERSION,
        os::getpid(),
        core::str::from_utf8(name).unwrap_or("?"),
        reason.name()
    )
}

/// The process's command name (`/proc/self/comm`, without its newline).
pub fn command_name(buf: &mut [u8; 32]) -> &[u8] {
    let Ok(fd) = os::open_read(c"/proc/self/comm") else { return b"?" };
    let n = os::read(fd, buf).unwrap_or(0);
    os::close(fd);
    let text = &buf[..n];
    text.strip_suffix(b"\n").unwrap_or(text)
}

/// The pipe of the `buddyslab` tool (`BUDDYSLAB_ANNOUNCE=FD:INODE`), if
/// this process has it still open: the variable is inherited, but the
/// descriptor may since name another file, which must not get our lines.
pub fn tool_pipe() -> Option<i32> {
    let value = crate::options::variable(b"BUDDYSLAB_ANNOUNCE")?;
    let colon = value.iter().position(|&b| b == b':')?;
    let fd = decimal(&value[..colon]).filter(|&fd| fd <= i32::MAX as u64)? as i32;
    let inode = decimal(&value[colon + 1..])?;
    (os::pipe_inode(fd) == Some(inode)).then_some(fd)
}

fn decimal(digits: &[u8]) -> Option<u64> {
    if digits.is_empty() {
        return None;
    }
    digits.iter().try_fold(0u64, |v, &d| {
        d.is_ascii_digit().then_some(())?;
        v.checked_mul(10)?.checked_add(u64::from(d - b'0'))
    })
}

/// The process that last told the tool its command name: a child made by
/// `fork` has not (only a program's start does), and does before its
/// first other line.
static TOLD_COMMAND: AtomicI32 = AtomicI32::new(0);

/// Writes one line to the tool's pipe, if it is watching.
pub fn tell_tool(line: &[u8]) {
    if let Some(fd) = tool_pipe() {
        if TOLD_COMMAND.load(Ordering::Relaxed) != os::getpid() {
            announce_command();
        }
        os::write_all(fd, line);
    }
}

/// Tells the tool which program this process runs (when it is watching).
pub fn announce_command() {
    let Some(fd) = tool_pipe() else { return };
    let mut comm = [0u8; 32];
    let name = command_name(&mut comm);
    let mut line = FixedBuf::<80>::new();
    let pid = os::getpid();
    let _ = writeln!(line, "buddyslab-command {pid} {}", core::str::from_utf8(name).unwrap_or("?"));
    os::write_all(fd, line.as_bytes());
    TOLD_COMMAND.store(pid, Ordering::Relaxed);
}

/// Tells the tool that `what` was written to `path`.
pub fn tell_written(what: &str, path: &[u8]) {
    let mut line = FixedBuf::<4200>::new();
    let _ = write!(line, "buddyslab-wrote {} {} ", os::getpid(), Dashed(what));
    let _ = line.write_str(core::str::from_utf8(path).unwrap_or("?"));
    let _ = line.write_str("\n");
    tell_tool(line.as_bytes());
}

/// `what` with `-` for spaces (one word on the tool's line).
struct Dashed<'a>(&'a str);

impl core::fmt::Display for Dashed<'_> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        for part in self.0.split(' ').enumerate() {
            if part.0 > 0 {
                f.write_char('-')?;
            }
            f.write_str(part.1)?;
        }
        Ok(())
    }
}

/// Expands `template` into `out` (NUL-terminated): `%p` becomes the
/// process id, `%%` a `%`; any other `%` stays. `None` when it does not fit.
pub fn expand_path<'a>(template: &[u8], pid: i32, out: &'a mut [u8; 4096]) -> Option<&'a CStr> {
    let mut n = 0;
    let mut push = |b: u8, n: &mut usize| -> Option<()> {
        // One byte is kept for the NUL.
        if *n + 1 >= out.len() {
            return None;
        }
        out[*n] = b;
        *n += 1;
        Some(())
    };
    let mut i = 0;
    while i < template.len() {
        match (template[i], template.get(i + 1)) {
            (b'%', Some(b'p')) => {
                let mut digits = FixedBuf::<12>::new();
                let _ = write!(digits, "{pid}");
                for &d in digits.as_bytes() {
                    push(d, &mut n)?;
                }
                i += 2;
            }
            (b'%', Some(b'%')) => {
                push(b'%', &mut n)?;
                i += 2;
            }
            (b, _) => {
                push(b, &mut n)?;
                i += 1;
            }
        }
    }
    out[n] = 0;
    CStr::from_bytes_until_nul(&out[..=n]).ok()
}

/// The name a file is first written under, beside `path`:
/// `PATH.tmp.PID`, NUL-terminated in `out`.
pub fn temporary_name<'a>(path: &CStr, pid: i32, out: &'a mut [u8; 4096]) -> Option<&'a CStr> {
    let mut text = FixedBuf::<4096>::new();
    text.write_str(core::str::from_utf8(path.to_bytes()).ok()?).ok()?;
    write!(text, ".tmp.{pid}\0").ok()?;
    let bytes = text.as_bytes();
    out[..bytes.len()].copy_from_slice(bytes);
    CStr::from_bytes_until_nul(&out[..bytes.len()]).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percent_p_is_the_pid() {
        let mut out = [0u8; 4096];
        assert_eq!(expand_path(b"views.%p.txt", 4242, &mut out).unwrap().to_bytes(), b"views.4242.txt");
        assert_eq!(expand_path(b"a%%p%q%", 7, &mut out).unwrap().to_bytes(), b"a%p%q%");
        assert_eq!(expand_path(b"%p%p", 12, &mut out).unwrap().to_bytes(), b"1212");
        let long = [b'x'; 4096];
        assert!(expand_path(&long, 1, &mut out).is_none());
        let mut tmp = [0u8; 4096];
        assert_eq!(temporary_name(c"m.svg", 9, &mut tmp).unwrap().to_bytes(), b"m.svg.tmp.9");
    }

    #[test]
    fn signals_by_name_or_number() {
        assert_eq!(parse_signal(b"USR2"), Some(libc::SIGUSR2));
        assert_eq!(parse_signal(b"sigusr1"), Some(libc::SIGUSR1));
        assert_eq!(parse_signal(b"12"), Some(12));
        assert_eq!(parse_signal(b"0"), None);
        assert_eq!(parse_signal(b"KILLME"), None);
        assert_eq!(parse_signal(b""), None);
    }

    #[test]
    fn tool_lines_are_one_word_each() {
        let mut b = FixedBuf::<64>::new();
        write!(b, "{}", Dashed("heap map")).unwrap();
        assert_eq!(b.as_str(), "heap-map");
    }
}
