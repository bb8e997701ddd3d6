//! The heap profile written out: the live heap by call stack, in the
//! gperftools heap-profile text format `pprof` reads, and the leak report
//! at exit. The sampling and the table of live samples are
//! `crate::profile`'s (below the tiers, which call it); this view only
//! reads them, under their lock, and allocates nothing.
//!
//! [`write_profile`] may be called at any time (an on-demand or interval
//! trigger); `BUDDYSLAB_PROF=FILE` names the file, `%p` the process id.

use crate::options::PROF_PATH;
use crate::os;
use crate::profile::{on, rate, STATE};
use crate::views::snapshot::FdWriter;
use core::fmt::{self, Write as _};

/// Writes the profile: header, one line per stack, then the mappings.
fn write_text(fd: i32, out: &mut FdWriter) -> fmt::Result {
    {
        let st = STATE.lock();
        let nr = st.stack_count();
        let t = if nr == 0 { [0; 4] } else { st.totals() };
        writeln!(out, "heap profile: {}: {} [{}: {}] @ heap_v2/{}", t[0], t[1], t[2], t[3], rate())?;
        for i in 0..nr {
            let s = st.stack(i);
            if s.total_count == 0 {
                continue;
            }
            write!(out, "{}: {} [{}: {}] @", s.live_count, s.live_bytes, s.total_count, s.total_bytes)?;
            for &f in s.frames() {
                write!(out, " {f:#x}")?;
            }
            out.write_str("\n")?;
        }
    }
    out.write_str("\nMAPPED_LIBRARIES:\n")?;
    out.flush();
    copy_file(c"/proc/self/maps", fd);
    Ok(())
}

/// Appends the file at `path` to `out`, through a stack buffer.
fn copy_file(path: &core::ffi::CStr, out: i32) {
    let Ok(fd) = os::open_read(path) else { return };
    let mut buf = [0u8; 4096];
    while let Ok(n) = os::read(fd, &mut buf) {
        if n == 0 {
            break;
        }
        os::write_all(out, &buf[..n]);
    }
    os::close(fd);
}

/// The profile's path with `%p` replaced by the process id (and `%%` by
/// `%`, as in the views' paths), NUL-terminated in `buf`; `None` when no
/// profile is asked for or the path is too long.
fn expand_path(buf: &mut [u8; 4096]) -> Option<&core::ffi::CStr> {
    let p = PROF_PATH.get();
    if p.is_null() {
        return None;
    }
    // SAFETY: an environment string, NUL-terminated and never freed.
    let pattern = unsafe { core::ffi::CStr::from_ptr(p.cast()) }.to_bytes();
    super::tool::expand_path(pattern, os::getpid(), buf)
}

/// Writes the live-heap profile now to the file `BUDDYSLAB_PROF` names
/// (`%p` replaced by the process id), replacing what an earlier call
/// wrote. Returns false when profiling is off or the file cannot be
/// created (then a line on stderr says why).
///
/// For on-demand and interval triggers: it takes the profile's lock only
/// while it copies the stack table out, allocates nothing, and must not
/// be called with an allocator lock held (from a signal handler, only
/// when the signal cannot interrupt an allocation).
pub fn write_profile() -> bool {
    if !on() {
        return false;
    }
    let mut buf = [0u8; 4096];
    let Some(path) = expand_path(&mut buf) else { return false };
    // Written beside the path and renamed over it, as the views are: a
    // reader (or an interval's later write) never sees half a profile.
    let mut tmp_buf = [0u8; 4096];
    let Some(tmp) = super::tool::temporary_name(path, os::getpid(), &mut tmp_buf) else { return false };
    match os::create_file(tmp) {
        Ok(fd) => {
            let mut w = FdWriter::new(fd);
            let _ = write_text(fd, &mut w);
            w.flush();
            os::close(fd);
            os::rename(tmp, path).is_ok()
        }
        Err(os::Errno(e)) => {
            let mut w = FdWriter::new(2);
            let _ = write!(w, "buddyslab: cannot write the heap profile to ");
            w.flush();
            os::write_all(2, path.to_bytes());
            let _ = writeln!(w, " (errno {e})");
            w.flush();
            false
        }
    }
}

/// Stacks shown in the leak report.
const LEAK_REPORT_STACKS: usize = 10;
/// Frames shown per stack in the leak report.
const LEAK_REPORT_FRAMES: usize = 8;

/// The leak report: sampled live bytes by stack, largest first.
fn write_leak_report(out: &mut FdWriter, path: &[u8]) -> fmt::Result {
    let st = STATE.lock();
    let nr = st.stack_count();
    let t = if nr == 0 { [0; 4] } else { st.totals() };
    write!(out, "buddyslab: heap profile: {} sampled objects, {} sampled bytes live at exit (one sample per {} bytes allocated on average); profile in ", t[0], t[1], rate())?;
    out.flush();
    os::write_all(2, path);
    out.write_str("\n")?;
    if t[0] == 0 {
        return Ok(());
    }
    out.write_str("buddyslab: live at exit by stack, largest first (`buddyslab prof FILE` names the frames):\n")?;
    out.write_str("  sampled bytes  objects  stack (innermost first)\n")?;
    // The largest first, without sorting into memory of our own: each
    // round takes the largest below the last one shown (ties by index).
    let mut last: Option<(u64, usize)> = None;
    for _ in 0..LEAK_REPORT_STACKS {
        let mut best: Option<(u64, usize)> = None;
        for i in 0..nr {
            let key = (st.stack(i).live_bytes, usize::MAX - i);
            let below = last.is_none_or(|l| key < l);
            if key.0 > 0 && below && best.is_none_or(|b| key > b) {
                best = Some(key);
            }
        }
        let Some(b) = best else { break };
        let s = st.stack(usize::MAX - b.1);
        write!(out, "  {:>13}  {:>7} ", s.live_bytes, s.live_count)?;
        for &f in s.frames().iter().take(LEAK_REPORT_FRAMES) {
            write!(out, " {f:#x}")?;
        }
        if s.frames().len() > LEAK_REPORT_FRAMES {
            out.write_str(" ...")?;
        }
        out.write_str("\n")?;
        last = Some(b);
    }
    Ok(())
}

/// At exit: the profile, then the leak report on stderr. The heap's
/// set-up registers it with `atexit` when profiling is on.
pub extern "C" fn write_at_exit() {
    if !write_profile() {
        return;
    }
    let mut buf = [0u8; 4096];
    let Some(path) = expand_path(&mut buf) else { return };
    let mut w = FdWriter::new(2);
    let _ = write_leak_report(&mut w, path.to_bytes());
    w.flush();
}
