//! Options from the environment, read once at start-up without allocating.
//!
//! | variable                   | meaning                                   |
//! |----------------------------|-------------------------------------------|
//! | `BUDDYSLAB_MMAP_THRESHOLD` | bytes; requests at or above get their own mapping (default 128 KiB, at most 32 MiB; `k`/`m` suffixes) |
//! | `BUDDYSLAB_ANNOUNCE`       | `FD:INODE`, set by the `buddyslab` tool: libbuddyslab.so's constructor reports on that pipe whether its `malloc` is the one bound (read there, through [`variable`]) |
//!
//! Every other `BUDDYSLAB_*` variable, and a malformed value, is reported on
//! stderr (one line) and otherwise ignored: a typo should not pass silently.

use crate::large::{MAX_MMAP_THRESHOLD, MMAP_THRESHOLD};
use crate::os;
use core::ffi::CStr;
use core::sync::atomic::Ordering;

const PREFIX: &[u8] = b"BUDDYSLAB_";

extern "C" {
    static environ: *const *const libc::c_char;
}

/// Parses a size: decimal digits with an optional `k`, `m` or `g` suffix
/// (powers of 1024). `None` for anything else or on overflow.
pub fn parse_size(text: &[u8]) -> Option<usize> {
    let (digits, shift) = match text.last()? {
        b'k' | b'K' => (&text[..text.len() - 1], 10),
        b'm' | b'M' => (&text[..text.len() - 1], 20),
        b'g' | b'G' => (&text[..text.len() - 1], 30),
        _ => (text, 0),
    };
    if digits.is_empty() {
        return None;
    }
    let mut v: usize = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add((d - b'0') as usize)?;
    }
    v.checked_mul(1usize << shift)
}

/// Sets the mmap threshold as `mallopt(M_MMAP_THRESHOLD)` does; false (and
/// no change) above [`MAX_MMAP_THRESHOLD`].
pub fn set_mmap_threshold(bytes: usize) -> bool {
    if bytes > MAX_MMAP_THRESHOLD {
        return false;
    }
    MMAP_THRESHOLD.store(bytes, Ordering::Relaxed);
    crate::heap::THRESHOLD_SET.store(true, Ordering::Relaxed);
    true
}

/// Scans the environment for `BUDDYSLAB_*` variables and applies them.
pub fn read_environment() {
    // SAFETY: `environ` is the C runtime's NULL-terminated array of
    // NUL-terminated strings; we only read it, at start-up.
    unsafe {
        let mut e = environ;
        if e.is_null() {
            return;
        }
        while !(*e).is_null() {
            apply(CStr::from_ptr(*e).to_bytes());
            e = e.add(1);
        }
    }
}

/// The value of environment variable `name` (without the `=`), if set.
pub fn variable(name: &[u8]) -> Option<&'static [u8]> {
    // SAFETY: as in `read_environment`. glibc never frees an environment
    // string that setenv/putenv replaced, so the slice stays readable.
    unsafe {
        let mut e = environ;
        if e.is_null() {
            return None;
        }
        while !(*e).is_null() {
            let entry = CStr::from_ptr(*e).to_bytes();
            if entry.len() > name.len() && entry.starts_with(name) && entry[name.len()] == b'=' {
                return Some(&entry[name.len() + 1..]);
            }
            e = e.add(1);
        }
    }
    None
}

fn apply(entry: &[u8]) {
    if !entry.starts_with(PREFIX) {
        return;
    }
    let Some(eq) = entry.iter().position(|&b| b == b'=') else { return };
    let (name, value) = (&entry[..eq], &entry[eq + 1..]);
    match name {
        b"BUDDYSLAB_MMAP_THRESHOLD" => match parse_size(value) {
            Some(v) if set_mmap_threshold(v) => {}
            _ => os::write_all(
                2,
                b"buddyslab: BUDDYSLAB_MMAP_THRESHOLD must be a size up to 32m (e.g. 131072, 256k); ignored\n",
            ),
        },
        b"BUDDYSLAB_ANNOUNCE" => {}
        _ => {
            os::write_all(2, b"buddyslab: unknown variable ");
            os::write_all(2, name);
            os::write_all(2, b" ignored\n");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sizes_parse() {
        assert_eq!(parse_size(b"131072"), Some(131072));
        assert_eq!(parse_size(b"256k"), Some(256 << 10));
        assert_eq!(parse_size(b"2M"), Some(2 << 20));
        assert_eq!(parse_size(b""), None);
        assert_eq!(parse_size(b"k"), None);
        assert_eq!(parse_size(b"12x"), None);
        assert_eq!(parse_size(b"-1"), None);
        assert_eq!(parse_size(b"99999999999999999999999"), None);
    }
}
