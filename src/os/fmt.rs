//! Text without allocating: a fixed buffer that implements `fmt::Write`,
//! and the hexadecimal form of an address for the messages the allocator
//! prints before it stops the process. At the bottom, so that every layer
//! may format a message without naming the views.

use core::fmt::{self, Write};

/// A fixed-size text buffer; writes past the end are cut off, never
/// allocated for.
pub struct FixedBuf<const N: usize> {
    pub(crate) buf: [u8; N],
    pub(crate) len: usize,
}

impl<const N: usize> FixedBuf<N> {
    /// An empty buffer.
    pub const fn new() -> Self {
        FixedBuf { buf: [0; N], len: 0 }
    }

    /// The text written so far.
    pub fn as_bytes(&self) -> &[u8] {
        &self.buf[..self.len]
    }

    /// The text written so far.
    pub fn as_str(&self) -> &str {
        // Only whole `&str`s are copied in, but a cut may split a character.
        match core::str::from_utf8(self.as_bytes()) {
            Ok(s) => s,
            Err(e) => {
                // SAFETY: valid up to `valid_up_to` by from_utf8's report.
                unsafe { core::str::from_utf8_unchecked(&self.buf[..e.valid_up_to()]) }
            }
        }
    }

    /// Writes the text to `fd` and empties the buffer.
    pub fn flush_to(&mut self, fd: i32) {
        super::write_all(fd, self.as_bytes());
        self.len = 0;
    }
}

impl<const N: usize> Default for FixedBuf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Write for FixedBuf<N> {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(N - self.len);
        self.buf[self.len..self.len + n].copy_from_slice(&s.as_bytes()[..n]);
        self.len += n;
        if n < s.len() {
            Err(fmt::Error)
        } else {
            Ok(())
        }
    }
}

/// Formats `value` as `0x…` into `buf`; returns the text.
pub fn fmt_hex(buf: &mut [u8; 32], value: usize) -> &[u8] {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut i = buf.len();
    let mut v = value;
    loop {
        i -= 1;
        buf[i] = DIGITS[v & 15];
        v >>= 4;
        if v == 0 {
            break;
        }
    }
    i -= 1;
    buf[i] = b'x';
    i -= 1;
    buf[i] = b'0';
    &buf[i..]
}
