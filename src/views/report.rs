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
//! takes a slow path ([`on_slow_path`]: a thread cache's refill, or a free
//! its bin cannot take), which is also where the interval is checked
//! against the coarse clock. A program that sleeps, or whose every call is
//! served from its thread caches, writes nothing until it next reaches a
//! slow path, and changes no figure in the meantime either.
//!
//! [`on_slow_path`] is the one hook into the allocator. The tiers never
//! name the views: they call `counters::on_slow_path`, a relaxed load of a
//! function pointer that [`start`] sets to [`on_slow_path`] only when one
//! of the triggers above or the live page ([`super::live`]) is in use.
//! Other writers (a heap profile) join the same triggers with
//! [`register_writer`] instead of adding a hook.
//!
//! Each file is written to `PATH.tmp.PID` and renamed over `PATH`, so two
//! processes naming the same path never mix their bytes (the last rename
//! wins) and a reader never sees half a file. When the `buddyslab` tool is
//! watching (`BUDDYSLAB_ANNOUNCE`, see the C face's `announce`), each file
//! written and the exit itself are reported on its pipe (the views' `tool` file):
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

use super::snapshot::{ExitFile, FdWriter};
use super::tool::{command_name, tell_tool, tell_written};
use crate::options::{STATS_INTERVAL_NS as INTERVAL_NS, STATS_SIGNAL as SIGNAL};
use crate::os;
use crate::os::fmt::FixedBuf;
use core::fmt::Write;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, Ordering};

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

/// Set by the signal handler, cleared by the thread that writes the views.
static SIGNALLED: AtomicBool = AtomicBool::new(false);
/// When the interval next falls due ([`os::monotonic_ns`]).
static NEXT_DUE_NS: AtomicU64 = AtomicU64::new(0);
/// One thread at a time writes (and a writer that allocates cannot
/// re-enter through its own slow path).
static BUSY: AtomicBool = AtomicBool::new(false);
/// The exit hook ran (it runs once, however often it was registered).
static EXITED: AtomicBool = AtomicBool::new(false);
/// `BUDDYSLAB_STATS_FILE`: where the text or JSON views go.
pub static STATS_FILE: ExitFile = ExitFile::new("views", &crate::options::STATS_FILE_PATH);
/// A writer registered with [`register_writer`] (a `fn(Reason)`), or null.
static EXTRA_WRITER: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());

/// Adds `writer` to the triggers: it runs after the views, at exit, on the
/// signal and at the interval, on the thread that writes them and with no
/// allocator lock held. One writer; a second call replaces the first. It
/// also arms nothing by itself: the triggers are the user's variables.
pub fn register_writer(writer: fn(Reason)) {
    EXTRA_WRITER.store(writer as *mut (), Ordering::Release);
}

/// Starts what the options asked for: the signal handler, the interval,
/// the live page, and the exit hook when anything is to be written at
/// exit. Called once by the heap's set-up, after the environment is read.
#[link_section = ".text.hot.buddyslab"]
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
    if super::live::start() {
        armed = true;
    }
    let at_exit = armed
        || STATS_AT_EXIT.load(Ordering::Relaxed) != STATS_OFF
        || super::heapmap::requested()
        || super::addrspace::svg_requested();
    if armed {
        // A plain function that only resets flags and drops a mapping;
        // registering may allocate, which is fine at start-up.
        let _ = os::at_fork(None, None, Some(after_fork_child));
    }
    if at_exit {
        // The views will be read: observe residency from now.
        crate::ledger::pagetable::watch();
        // Registering may allocate, which is fine: no allocator lock is
        // held at start-up.
        let _ = os::at_exit(print_at_exit);
    }
    if armed {
        // The tiers' slow paths call in from now on (one relaxed load of
        // the hook while none is registered).
        crate::counters::set_slow_path_hook(on_slow_path);
    }
}

/// The exit hook: prints the views `BUDDYSLAB_STATS` asked for (to stderr
/// or `BUDDYSLAB_STATS_FILE`) and writes the heap map `BUDDYSLAB_HEAPMAP`
/// and the address-space drawing `BUDDYSLAB_ADDRSPACE_SVG` asked for (see
/// [`at_exit`]). Registered with `atexit` by [`start`] when any of them,
/// a trigger or the live page is in use; runs once.
pub extern "C" fn print_at_exit() {
    at_exit();
}

/// In a child after `fork`: the parent's writer, if one was running in
/// another thread, does not exist here; its busy flag must not stay set.
extern "C" fn after_fork_child() {
    BUSY.store(false, Ordering::Relaxed);
    super::live::after_fork_child();
}

extern "C" fn on_signal(_: i32) {
    // Async-signal-safe: one store. The views are written at the next
    // slow path, by whichever thread takes it (the hook was registered
    // with the handler).
    SIGNALLED.store(true, Ordering::Relaxed);
}

/// The hook on the allocator's slow paths, registered with
/// `counters::set_slow_path_hook` by [`start`] when a trigger or the live
/// page is in use (until then the tiers pay one relaxed load). The caller
/// holds no allocator lock.
pub fn on_slow_path() {
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
    super::live::on_slow_path();
    BUSY.store(false, Ordering::Release);
}

/// Whether this process is the one to write (`BUDDYSLAB_STATS_PPID`, when
/// set, names the only parent whose children write).
fn chosen() -> bool {
    let parent = crate::options::STATS_PPID.load(Ordering::Relaxed);
    parent == 0 || os::getppid() == parent
}

/// The exit hook's work (see [`print_at_exit`]): the views
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
    super::live::remove();
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
                super::stats::write_views(w)
            }
            STATS_JSON => super::stats::write_json(w),
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
        super::heapmap::write_requested();
        super::addrspace::write_svg_requested();
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
        super::snapshot::VIEWS_VERSION,
        os::getpid(),
        core::str::from_utf8(name).unwrap_or("?"),
        reason.name()
    )
}
