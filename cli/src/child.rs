//! One run of the program: started with a malloc preloaded, waited for
//! with `wait4(2)` (whose `rusage` gives peak RSS and page faults of the
//! child and of the descendants it waited for), timed on the wall clock.
//!
//! When the preload is buddyslab, the run also asks the library whether it
//! is bound: a pipe is passed down as `BUDDYSLAB_ANNOUNCE=FD:INODE`, and
//! the library's constructor writes one line per process that loaded it
//! (see `announce` in `cdylib/src/lib.rs`). The pipe is non-blocking on the
//! writers' side, so processes never wait for us; it is read once the child
//! is gone. No line from the child's pid means the loader never ran the
//! library in it.

use std::ffi::{OsStr, OsString};
use std::fs::File;
use std::io::{self, Read};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::os::unix::process::CommandExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// The variable that names the library when `--lib` is not given; a
/// child started with the library bound does not inherit it.
pub const LIB_VARIABLE: &str = "BUDDYSLAB_LIB";

/// What to start.
pub struct Launch<'a> {
    /// The program's path (already resolved) and `argv[0]` as typed.
    pub path: &'a Path,
    pub argv0: &'a OsStr,
    pub args: &'a [OsString],
    /// The library to preload; `None` runs the system malloc.
    pub preload: Option<&'a Path>,
    /// Keep the caller's own `LD_PRELOAD` entries (after ours) and
    /// `BUDDYSLAB_*` variables. Off for comparisons, where every malloc must
    /// run in the same environment but for its own preload.
    pub inherit_preload: bool,
    /// Variables to set (the `BUDDYSLAB_*` options).
    pub env: &'a [(&'static str, String)],
    /// Ask the preloaded library whether it is bound (buddyslab only).
    pub announce: bool,
    /// Kill the program (SIGKILL; not what it started) if it is still
    /// running after this long.
    pub timeout: Option<Duration>,
}

/// How the child ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    Exited(i32),
    Signaled { signal: i32, core_dumped: bool },
}

impl Ended {
    /// "exit status 0", "killed by signal 11 (SIGSEGV)".
    pub fn describe(&self) -> String {
        match *self {
            Ended::Exited(code) => format!("exit status {code}"),
            Ended::Signaled {
                signal,
                core_dumped,
            } => format!(
                "killed by signal {signal} ({}){}",
                signal_name(signal),
                if core_dumped { ", core dumped" } else { "" }
            ),
        }
    }
}

/// What the library said about the child process itself.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Binding {
    /// `malloc`, `free`, `calloc`, `realloc` all resolve into the library.
    Bound,
    /// `symbol` resolves into `object` instead (the program's own malloc).
    Unbound { symbol: String, object: String },
    /// No word from the child: the library was never loaded in it.
    Silent,
}

/// The handshake's answer: the child, and the processes it started.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Announcements {
    pub child: Binding,
    /// Other processes (descendants) that loaded the library: bound, not.
    pub descendants_bound: usize,
    pub descendants_unbound: usize,
}

/// A finished run.
pub struct Finished {
    pub ended: Ended,
    pub wall: Duration,
    pub user: Duration,
    pub system: Duration,
    /// Peak resident set size, KiB (`ru_maxrss`).
    pub peak_rss_kib: u64,
    pub minor_faults: u64,
    pub major_faults: u64,
    /// `Some` when [`Launch::announce`] was set.
    pub announcements: Option<Announcements>,
    pub pid: i32,
    /// Killed for running past [`Launch::timeout`].
    pub timed_out: bool,
}

/// The child being waited for, for the signal handler (0: none yet).
static CHILD: AtomicI32 = AtomicI32::new(0);
/// A signal that arrived before the child existed, to pass on at once.
static PENDING: AtomicI32 = AtomicI32::new(0);

/// The signals `run` passes on to the program.
const FORWARDED: [i32; 8] = [
    libc::SIGHUP,
    libc::SIGINT,
    libc::SIGQUIT,
    libc::SIGTERM,
    libc::SIGUSR1,
    libc::SIGUSR2,
    libc::SIGALRM,
    libc::SIGWINCH,
];

extern "C" fn forward(signal: libc::c_int, info: *mut libc::siginfo_t, _: *mut libc::c_void) {
    // A signal from the terminal (Ctrl-C, Ctrl-\, hang-up) comes from the
    // kernel to the whole foreground process group, the child included:
    // passing it on would deliver it twice.
    // SAFETY: the kernel hands an SA_SIGINFO handler a valid siginfo_t.
    if !info.is_null() && unsafe { (*info).si_code } == libc::SI_KERNEL {
        return;
    }
    match CHILD.load(Ordering::SeqCst) {
        0 => PENDING.store(signal, Ordering::SeqCst),
        pid => {
            // SAFETY: kill(2) is async-signal-safe and takes no pointers.
            unsafe { libc::kill(pid, signal) };
        }
    }
}

/// From now on, the signals in [`FORWARDED`] go to the child of the next
/// [`start`] instead of ending this process. A handler (not `SIG_IGN`) is
/// used so that the child, whose handlers `execve` resets, gets default
/// dispositions.
pub fn forward_signals() {
    for signal in FORWARDED {
        // SAFETY: a zeroed sigaction is valid (empty mask, no flags); the
        // handler is async-signal-safe (atomics and kill only).
        unsafe {
            let mut action: libc::sigaction = std::mem::zeroed();
            action.sa_sigaction = forward as *const () as usize;
            action.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
            libc::sigemptyset(&mut action.sa_mask);
            libc::sigaction(signal, &action, std::ptr::null_mut());
        }
    }
}

/// Dies of `signal` as the child did: default disposition, no core file
/// from us (the child already left one if it was going to), unblocked,
/// raised. Returns only if the signal does not end a process.
pub fn die_of(signal: i32) {
    // SAFETY: setrlimit, signal, sigprocmask and raise take valid arguments
    // here; nothing else runs in this process any more.
    unsafe {
        let no_core = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &no_core);
        libc::signal(signal, libc::SIG_DFL);
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, signal);
        libc::sigprocmask(libc::SIG_UNBLOCK, &set, std::ptr::null_mut());
        libc::raise(signal);
    }
}

/// Starts the program as `launch` says and waits for it. `stdin`,
/// `stdout`, `stderr` are the child's streams.
pub fn start(launch: &Launch, stdin: Stdio, stdout: Stdio, stderr: Stdio) -> io::Result<Finished> {
    let mut command = Command::new(launch.path);
    command
        .arg0(launch.argv0)
        .args(launch.args)
        .stdin(stdin)
        .stdout(stdout)
        .stderr(stderr);

    // The tool's own variable is no concern of the library, which would
    // report it as unknown.
    command.env_remove(LIB_VARIABLE);
    let inherited = if launch.inherit_preload {
        std::env::var_os("LD_PRELOAD").filter(|p| !p.is_empty())
    } else {
        for (key, _) in std::env::vars_os() {
            if key.to_string_lossy().starts_with("BUDDYSLAB_") {
                command.env_remove(&key);
            }
        }
        None
    };
    match (launch.preload, inherited) {
        (Some(lib), Some(rest)) => {
            let mut value = lib.as_os_str().to_os_string();
            value.push(":");
            value.push(rest);
            command.env("LD_PRELOAD", value);
        }
        (Some(lib), None) => {
            command.env("LD_PRELOAD", lib);
        }
        (None, _) => {
            command.env_remove("LD_PRELOAD");
        }
    }
    for (name, value) in launch.env {
        command.env(name, value);
        if *name == "BUDDYSLAB_STATS" || *name == "BUDDYSLAB_HEAPMAP" {
            // The views are for the program asked about, not for every
            // process it starts: only a process whose parent is this tool
            // (the child, through any exec chain) prints them.
            command.env("BUDDYSLAB_STATS_PPID", std::process::id().to_string());
        }
    }

    let pipe = if launch.announce {
        Some(announce_pipe()?)
    } else {
        None
    };
    if let Some((_, write_end, inode)) = &pipe {
        let fd = write_end.as_raw_fd();
        command.env("BUDDYSLAB_ANNOUNCE", format!("{fd}:{inode}"));
        // SAFETY: the closure runs in the child between fork and exec and
        // only calls fcntl, which is async-signal-safe.
        unsafe {
            command.pre_exec(move || {
                // The child keeps the write end across exec.
                if libc::fcntl(fd, libc::F_SETFD, 0) == -1 {
                    return Err(io::Error::last_os_error());
                }
                Ok(())
            });
        }
    }

    let begin = Instant::now();
    let child = command.spawn()?;
    let pid = child.id() as i32;
    CHILD.store(pid, Ordering::SeqCst);
    let early = PENDING.swap(0, Ordering::SeqCst);
    if early != 0 {
        // SAFETY: kill(2) takes no pointers; pid is our unreaped child.
        unsafe { libc::kill(pid, early) };
    }
    // Our copy of the write end goes, so only the child's processes hold it.
    let pipe = pipe.map(|(read_end, write_end, _)| {
        drop(write_end);
        read_end
    });
    // `child` is reaped by wait4 below, not by std.
    drop(child);

    let watchdog = launch.timeout.map(|limit| watch(pid, limit));
    wait_exited(pid)?;
    let wall = begin.elapsed();
    let timed_out = match watchdog {
        Some((cancel, watcher)) => {
            drop(cancel);
            watcher.join().unwrap_or(false)
        }
        None => false,
    };
    // Reaped only now, when no watchdog can send it a signal any more.
    let (status, usage) = wait4(pid)?;
    CHILD.store(0, Ordering::SeqCst);

    let ended = if libc::WIFSIGNALED(status) {
        Ended::Signaled {
            signal: libc::WTERMSIG(status),
            core_dumped: libc::WCOREDUMP(status),
        }
    } else {
        Ended::Exited(libc::WEXITSTATUS(status))
    };
    let announcements = match pipe {
        Some(read_end) => Some(parse_announcements(&drain(read_end)?, pid)),
        None => None,
    };
    let time = |t: libc::timeval| Duration::new(t.tv_sec as u64, (t.tv_usec as u32) * 1000);
    Ok(Finished {
        ended,
        wall,
        user: time(usage.ru_utime),
        system: time(usage.ru_stime),
        peak_rss_kib: usage.ru_maxrss as u64,
        minor_faults: usage.ru_minflt as u64,
        major_faults: usage.ru_majflt as u64,
        announcements,
        pid,
        timed_out,
    })
}

/// A thread that kills `pid` with SIGKILL when `limit` has passed, unless
/// the sender it returns is dropped first; joined, it says whether it
/// killed. The caller must not reap `pid` before joining it, so that the
/// pid cannot have passed to another process when the signal goes.
fn watch(pid: i32, limit: Duration) -> (mpsc::Sender<()>, std::thread::JoinHandle<bool>) {
    let (cancel, cancelled) = mpsc::channel::<()>();
    let watcher = std::thread::spawn(move || {
        if cancelled.recv_timeout(limit) == Err(mpsc::RecvTimeoutError::Timeout) {
            // SAFETY: kill(2) takes no pointers; `pid` is our unreaped
            // child (see above), so it names no other process.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            return true;
        }
        false
    });
    (cancel, watcher)
}

/// Waits until `pid` has ended, leaving it unreaped (`WNOWAIT`).
fn wait_exited(pid: i32) -> io::Result<()> {
    loop {
        // SAFETY: siginfo_t is plain data; zero is a valid value.
        let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
        // SAFETY: `info` is live and writable; waitid only fills it.
        let r = unsafe {
            libc::waitid(
                libc::P_PID,
                pid as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOWAIT,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// A pipe for the handshake: (read end, write end, the pipe's inode). Both
/// ends are close-on-exec here (the child clears it on its end) and
/// non-blocking.
fn announce_pipe() -> io::Result<(File, OwnedFd, u64)> {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into the array.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } == -1 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both descriptors are fresh and owned by nobody else.
    let (read_end, write_end) =
        unsafe { (File::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    let inode = read_end.metadata()?.ino();
    Ok((read_end, write_end, inode))
}

/// Everything in the pipe now (it is non-blocking: a descendant still
/// holding the write end does not make us wait).
fn drain(mut read_end: File) -> io::Result<Vec<u8>> {
    let mut bytes = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        match read_end.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => bytes.extend_from_slice(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
    }
    Ok(bytes)
}

/// Sorts the handshake lines into the child's own (the last one, since a
/// process that `exec`s loads the library again) and its descendants'.
pub fn parse_announcements(bytes: &[u8], child: i32) -> Announcements {
    let mut result = Announcements {
        child: Binding::Silent,
        descendants_bound: 0,
        descendants_unbound: 0,
    };
    for line in String::from_utf8_lossy(bytes).lines() {
        let mut words = line.splitn(5, ' ');
        if words.next() != Some("buddyslab-announce") {
            continue;
        }
        let Some(pid) = words.next().and_then(|p| p.parse::<i32>().ok()) else {
            continue;
        };
        let binding = match words.next() {
            Some("bound") => Binding::Bound,
            Some("unbound") => Binding::Unbound {
                symbol: words.next().unwrap_or("?").to_string(),
                object: words.next().unwrap_or("?").to_string(),
            },
            _ => continue,
        };
        if pid == child {
            result.child = binding;
        } else if binding == Binding::Bound {
            result.descendants_bound += 1;
        } else {
            result.descendants_unbound += 1;
        }
    }
    result
}

/// `wait4(pid)`: the raw status and the resource usage.
fn wait4(pid: i32) -> io::Result<(i32, libc::rusage)> {
    let mut status = 0;
    // SAFETY: rusage is plain integers; zero is a valid value.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    loop {
        // SAFETY: both out-pointers are live and writable.
        let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
        if r == pid {
            return Ok((status, usage));
        }
        let error = io::Error::last_os_error();
        if error.kind() != io::ErrorKind::Interrupted {
            return Err(error);
        }
    }
}

/// The usual name of a signal.
pub fn signal_name(signal: i32) -> &'static str {
    match signal {
        libc::SIGHUP => "SIGHUP",
        libc::SIGINT => "SIGINT",
        libc::SIGQUIT => "SIGQUIT",
        libc::SIGILL => "SIGILL",
        libc::SIGTRAP => "SIGTRAP",
        libc::SIGABRT => "SIGABRT",
        libc::SIGBUS => "SIGBUS",
        libc::SIGFPE => "SIGFPE",
        libc::SIGKILL => "SIGKILL",
        libc::SIGUSR1 => "SIGUSR1",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGUSR2 => "SIGUSR2",
        libc::SIGPIPE => "SIGPIPE",
        libc::SIGALRM => "SIGALRM",
        libc::SIGTERM => "SIGTERM",
        libc::SIGXCPU => "SIGXCPU",
        libc::SIGXFSZ => "SIGXFSZ",
        _ => "?",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_child_s_last_line_counts() {
        let lines = b"buddyslab-announce 10 bound\n\
            buddyslab-announce 11 bound\n\
            buddyslab-announce 10 unbound malloc /opt/my prog\n\
            buddyslab-announce 12 unbound free ./x\n\
            garbage\n";
        let a = parse_announcements(lines, 10);
        assert_eq!(
            a.child,
            Binding::Unbound {
                symbol: "malloc".into(),
                object: "/opt/my prog".into()
            }
        );
        assert_eq!((a.descendants_bound, a.descendants_unbound), (1, 1));
        assert_eq!(parse_announcements(lines, 99).child, Binding::Silent);
        assert_eq!(parse_announcements(b"", 10).child, Binding::Silent);
    }
}
