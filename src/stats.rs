//! Counters and what is printed from them, without allocating.
//!
//! Figures are read from the tiers' own counters under their locks, one
//! lock at a time (a snapshot is therefore not atomic across tiers, as
//! `/proc` files are not). Text goes through [`FixedBuf`], a stack buffer
//! implementing `fmt::Write`, and reaches a file descriptor with `write(2)`.

use crate::buddy::{self, NR_ORDERS, ZONE};
use crate::large;
use crate::os::{self, PAGE_SIZE};
use crate::slab::{self, CacheStats, NR_CACHES};
use core::fmt::{self, Write};
use core::sync::atomic::Ordering;

/// A fixed-size text buffer; writes past the end are cut off, never
/// allocated for.
pub struct FixedBuf<const N: usize> {
    buf: [u8; N],
    len: usize,
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
        os::write_all(fd, self.as_bytes());
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

/// A plain copy of the allocator's figures.
#[derive(Clone, Copy, Debug)]
pub struct Snapshot {
    /// Free blocks per buddy order (as `/proc/buddyinfo`).
    pub buddy_free: [usize; NR_ORDERS],
    /// Pages in all chunks.
    pub managed_pages: usize,
    /// Pages in free buddy blocks.
    pub free_pages: usize,
    /// Chunks from `brk` and from `mmap`.
    pub brk_chunks: usize,
    /// See `brk_chunks`.
    pub mmap_chunks: usize,
    /// Per cache (index as [`slab::CACHES`]).
    pub caches: [CacheStats; NR_CACHES],
    /// Live large blocks and their mapped bytes.
    pub nr_large: usize,
    /// See `nr_large`.
    pub large_bytes: usize,
    /// Live page-tier runs and their bytes.
    pub nr_page_runs: usize,
    /// See `nr_page_runs`.
    pub page_run_bytes: usize,
    /// Metadata bytes mapped (chunk descriptors, chunk map leaves).
    pub meta_bytes: usize,
}

impl Snapshot {
    /// Bytes handed to the program and not yet freed (slab objects at their
    /// class size, page runs, large blocks).
    pub fn in_use_bytes(&self) -> usize {
        let slab: usize = self.caches[..slab::NR_CLASSES].iter().map(|c| c.active_objs * c.objsize).sum();
        slab + self.page_run_bytes + self.large_bytes
    }

    /// Bytes of address space held in chunks.
    pub fn chunk_bytes(&self) -> usize {
        self.managed_pages * PAGE_SIZE
    }
}

/// Takes a snapshot of every counter.
pub fn snapshot() -> Snapshot {
    let mut s = Snapshot {
        buddy_free: [0; NR_ORDERS],
        managed_pages: 0,
        free_pages: 0,
        brk_chunks: 0,
        mmap_chunks: 0,
        caches: [CacheStats::default(); NR_CACHES],
        nr_large: 0,
        large_bytes: 0,
        nr_page_runs: 0,
        page_run_bytes: 0,
        meta_bytes: 0,
    };
    {
        let zone = ZONE.lock();
        for (order, slot) in s.buddy_free.iter_mut().enumerate() {
            *slot = zone.nr_free(order);
        }
        s.managed_pages = zone.managed_pages;
        s.free_pages = zone.free_pages;
    }
    {
        let g = buddy::GROW.lock();
        s.brk_chunks = g.brk_chunks;
        s.mmap_chunks = g.mmap_chunks;
    }
    for (i, c) in s.caches.iter_mut().enumerate() {
        *c = slab::cache_stats(i);
    }
    s.nr_large = large::NR_LARGE.load(Ordering::Relaxed);
    s.large_bytes = large::LARGE_BYTES.load(Ordering::Relaxed);
    s.nr_page_runs = buddy::NR_PAGE_RUNS.load(Ordering::Relaxed);
    s.page_run_bytes = buddy::PAGE_RUN_PAGES.load(Ordering::Relaxed) * PAGE_SIZE;
    s.meta_bytes = buddy::META_BYTES.load(Ordering::Relaxed);
    s
}

/// glibc's `struct mallinfo2`, field for field.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MallInfo2 {
    /// Non-mmapped space allocated (bytes in chunks).
    pub arena: usize,
    /// Number of free chunks (free buddy blocks).
    pub ordblks: usize,
    /// Number of free fastbin blocks (free slab objects in partial slabs).
    pub smblks: usize,
    /// Number of mmapped regions (large blocks).
    pub hblks: usize,
    /// Bytes in mmapped regions.
    pub hblkhd: usize,
    /// Unused (always 0, as in glibc).
    pub usmblks: usize,
    /// Bytes in free slab objects.
    pub fsmblks: usize,
    /// Bytes in use, not counting large blocks.
    pub uordblks: usize,
    /// Free bytes in chunks.
    pub fordblks: usize,
    /// Releasable top-most free space (wholly free chunks).
    pub keepcost: usize,
}

/// Fills a `mallinfo2` from a snapshot.
pub fn mallinfo2() -> MallInfo2 {
    let s = snapshot();
    let free_objects: usize = s.caches[..slab::NR_CLASSES].iter().map(|c| c.num_objs - c.active_objs).sum();
    let free_object_bytes: usize =
        s.caches[..slab::NR_CLASSES].iter().map(|c| (c.num_objs - c.active_objs) * c.objsize).sum();
    MallInfo2 {
        arena: s.chunk_bytes(),
        ordblks: s.buddy_free.iter().sum(),
        smblks: free_objects,
        hblks: s.nr_large,
        hblkhd: s.large_bytes,
        usmblks: 0,
        fsmblks: free_object_bytes,
        uordblks: s.in_use_bytes() - s.large_bytes,
        fordblks: s.free_pages * PAGE_SIZE + free_object_bytes,
        keepcost: s.buddy_free[NR_ORDERS - 1] * crate::page::CHUNK_SIZE,
    }
}

/// Writes glibc's `malloc_stats` summary, then a `buddyinfo`-style line.
pub fn write_malloc_stats(out: &mut dyn Write) -> fmt::Result {
    let s = snapshot();
    let system = s.chunk_bytes();
    let in_use = s.in_use_bytes() - s.large_bytes;
    writeln!(out, "Arena 0:")?;
    writeln!(out, "system bytes     = {:>10}", system)?;
    writeln!(out, "in use bytes     = {:>10}", in_use)?;
    writeln!(out, "Total (incl. mmap):")?;
    writeln!(out, "system bytes     = {:>10}", system + s.large_bytes)?;
    writeln!(out, "in use bytes     = {:>10}", in_use + s.large_bytes)?;
    writeln!(out, "max mmap regions = {:>10}", s.nr_large)?;
    writeln!(out, "max mmap bytes   = {:>10}", s.large_bytes)?;
    write!(out, "Node 0, zone buddyslab ")?;
    for n in s.buddy_free {
        write!(out, "{:>6} ", n)?;
    }
    writeln!(out)
}

/// Prints [`write_malloc_stats`] to stderr.
pub fn print_malloc_stats() {
    let mut buf = FixedBuf::<1024>::new();
    let _ = write_malloc_stats(&mut buf);
    buf.flush_to(2);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hex_and_fixed_buffer() {
        let mut b = [0u8; 32];
        assert_eq!(fmt_hex(&mut b, 0), b"0x0");
        assert_eq!(fmt_hex(&mut b, 0xdead_beef), b"0xdeadbeef");
        assert_eq!(fmt_hex(&mut b, usize::MAX), b"0xffffffffffffffff");
        let mut f = FixedBuf::<8>::new();
        assert!(write!(f, "{}", 1234).is_ok());
        assert!(write!(f, "{}", 567890).is_err());
        assert_eq!(f.as_str(), "12345678");
    }

    #[test]
    fn malloc_stats_text_has_glibc_lines() {
        let mut f = FixedBuf::<2048>::new();
        write_malloc_stats(&mut f).unwrap();
        let t = f.as_str();
        assert!(t.starts_with("Arena 0:\nsystem bytes     = "));
        assert!(t.contains("Total (incl. mmap):"));
        assert!(t.contains("Node 0, zone buddyslab"));
    }
}
