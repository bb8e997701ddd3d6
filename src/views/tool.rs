//! The `buddyslab` tool's pipe and the names of the files the views
//! write: the lowest file of the views, read by the writers
//! ([`super::snapshot::ExitFile`]) and the triggers ([`super::report`]).
//!
//! When the tool is watching (`BUDDYSLAB_ANNOUNCE=FD:INODE`, see the C
//! face's `announce`), each file written and the exit itself are reported
//! on its pipe:
//!
//! ```text
//! buddyslab-command <pid> <command name>
//! buddyslab-wrote <pid> <what> <path>
//! buddyslab-exit <pid>
//! ```
//!
//! In every output path `%p` is the process id ([`expand_path`]); a file
//! is first written beside its path ([`temporary_name`]) and renamed over
//! it.

use crate::os;
use crate::os::fmt::FixedBuf;
use core::ffi::CStr;
use core::fmt::Write;
use core::sync::atomic::{AtomicI32, Ordering};

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
#[link_section = ".text.hot.buddyslab"]
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
    fn tool_lines_are_one_word_each() {
        let mut b = FixedBuf::<64>::new();
        write!(b, "{}", Dashed("heap map")).unwrap();
        assert_eq!(b.as_str(), "heap-map");
    }
}
