//! What the views read: a snapshot of every counter ([`Snapshot`]), the
//! regions of the tree a batch at a time ([`for_each_region`]), the names
//! of the caches, and the writers they print through ([`FdWriter`],
//! [`ExitFile`]). The views above (`frag`, `heapmap`, `addrspace`, and
//! `stats`, which puts them together) read these; nothing here names them.

use crate::ledger::pagetable::{self, FaultCounts};
use crate::ledger::vma::{self, Region, VmaKind};
use crate::mm::{self, NR_ORDERS, ZONE};
use crate::os::fmt::FixedBuf;
use crate::os::{self, PAGE_SIZE};
use crate::slab::{self, CacheStats, NR_CACHES};
use crate::large;
use super::tool;
use core::fmt::{self, Write};
use core::sync::atomic::{AtomicUsize, Ordering};

/// The version of the views' layout: the JSON object's `version`, the
/// text views' first line. Raised when a field changes meaning or goes;
/// new fields may appear without it.
pub const VIEWS_VERSION: u32 = 1;

/// The highest in-use figure any snapshot has seen (see [`Totals`]).
static PEAK_IN_USE: AtomicUsize = AtomicUsize::new(0);

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
    /// Per cache (index as `slab::CACHES`).
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
    /// Per cache: free objects held in front of it (CPU depots and the
    /// calling thread's bins), counted in `caches[i].active_objs`.
    pub cached_objs: [usize; NR_CACHES],
    /// The page-table shadow's counters.
    pub faults: FaultCounts,
    /// The kernel's minor fault count for the process (`ru_minflt`).
    pub minflt: u64,
    /// Bytes given back to the kernel so far (decay, trim).
    pub released_bytes: usize,
    /// `madvise` calls that gave them back.
    pub release_calls: usize,
    /// Page-tier requests and pages handed out, exact, since the start.
    pub page_tier: crate::counters::TierWaste,
    /// Large-tier requests and mapping lengths, exact, since the start.
    pub large_tier: crate::counters::TierWaste,
    /// Slab request samples per size class (see [`crate::slab::sample_request`]).
    pub slab_samples: [crate::counters::SlabSample; slab::NR_CLASSES],
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

    /// Objects of cache `index` the program holds (`/proc/slabinfo`'s
    /// `active_objs`): handed out by the slabs, less those cached in front.
    pub fn active_objs(&self, index: usize) -> usize {
        self.caches[index].active_objs.saturating_sub(self.cached_objs[index])
    }
}

/// Takes a snapshot of every counter.
pub fn snapshot() -> Snapshot {
    // The calling thread's calls still in its bins join the counts.
    crate::slab::magazine::publish_current();
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
        cached_objs: [0; NR_CACHES],
        faults: pagetable::counts(),
        minflt: 0,
        released_bytes: mm::RELEASED_BYTES.load(Ordering::Relaxed),
        release_calls: mm::RELEASE_CALLS.load(Ordering::Relaxed),
        page_tier: crate::counters::PAGE_TIER.read(),
        large_tier: crate::counters::LARGE_TIER.read(),
        slab_samples: crate::slab::SLAB_SAMPLES.read(),
    };
    {
        let zone = ZONE.lock();
        for (order, slot) in s.buddy_free.iter_mut().enumerate() {
            *slot = zone.nr_free(order);
        }
        s.managed_pages = zone.managed_pages;
        s.free_pages = zone.free_pages;
    }
    s.brk_chunks = mm::BRK_CHUNKS.load(Ordering::Relaxed);
    s.mmap_chunks = mm::MMAP_CHUNKS.load(Ordering::Relaxed);
    for (i, c) in s.caches.iter_mut().enumerate() {
        *c = slab::cache_stats(i);
        if i < slab::NR_CLASSES {
            s.cached_objs[i] = slab::percpu::cached_objects(i) + slab::stashed_objects(i) + slab::magazine::cached_in_class(i);
        }
    }
    s.minflt = os::minor_faults();
    s.nr_large = large::NR_LARGE.load(Ordering::Relaxed);
    s.large_bytes = large::LARGE_BYTES.load(Ordering::Relaxed);
    s.nr_page_runs = mm::NR_PAGE_RUNS.load(Ordering::Relaxed);
    s.page_run_bytes = mm::PAGE_RUN_PAGES.load(Ordering::Relaxed) * PAGE_SIZE;
    s.meta_bytes = mm::META_BYTES.load(Ordering::Relaxed);
    PEAK_IN_USE.fetch_max(s.in_use_bytes(), Ordering::Relaxed);
    s
}

/// The figures the views open with.
#[derive(Clone, Copy, Debug)]
pub struct Totals {
    /// Bytes handed to the program and not freed ([`Snapshot::in_use_bytes`]).
    pub in_use: usize,
    /// The highest `in_use` seen by any snapshot so far (views, the live
    /// page, `mallinfo2`): a floor of the true peak, which would cost the
    /// fast path to follow.
    pub in_use_peak: usize,
    /// Address space held from the system: chunks and large mappings.
    pub mapped: usize,
    /// Of `mapped`, bytes resident (`mincore` over every region).
    pub resident: usize,
    /// The kernel's peak resident set size of the process (`ru_maxrss`).
    pub peak_rss: usize,
    /// Metadata mapped: chunk descriptors, chunk map leaves, page-table
    /// shadow tables.
    pub metadata: usize,
    /// Blocks handed out and given back, and calls per entry point
    /// ([`crate::counters::CALL_NAMES`] order).
    pub calls: [u64; 5],
}

impl Snapshot {
    /// The totals of this snapshot (`resident` is read now).
    pub fn totals(&self) -> Totals {
        let mut resident_pages = 0;
        let _ = for_each_region(|r| {
            resident_pages += os::resident_pages(r.start, r.end - r.start);
            Ok(())
        });
        let resident = resident_pages * PAGE_SIZE;
        Totals {
            in_use: self.in_use_bytes(),
            in_use_peak: PEAK_IN_USE.load(Ordering::Relaxed).max(self.in_use_bytes()),
            mapped: self.chunk_bytes() + self.large_bytes,
            resident,
            peak_rss: os::peak_rss_kib() * 1024,
            metadata: self.meta_bytes + self.faults.table_pages * PAGE_SIZE,
            calls: crate::counters::calls(),
        }
    }
}

/// A file a drawing is written to at exit, named by an environment
/// variable (`BUDDYSLAB_HEAPMAP`, `BUDDYSLAB_ADDRSPACE_SVG`).
pub struct ExitFile {
    /// The path, given in the options.
    path: &'static crate::options::PathOption,
    /// What is written, for the error message.
    what: &'static str,
}

impl ExitFile {
    /// The file `path` names; `what` names the drawing in messages.
    pub const fn new(what: &'static str, path: &'static crate::options::PathOption) -> Self {
        ExitFile { path, what }
    }

    /// Records the path. `value` must be followed in memory by a NUL (an
    /// environment entry is) and live for the process.
    pub fn set(&self, value: &'static [u8]) {
        self.path.set(value)
    }

    /// Whether a file is to be written at exit.
    pub fn requested(&self) -> bool {
        self.path.requested()
    }

    /// Creates the file, if one was asked for, and lets `draw` write it;
    /// reports a file that cannot be created on stderr. `%p` in the path
    /// is the process id; the file is written beside the path and renamed
    /// over it (see the views' `tool` file), and the `buddyslab` tool, when it
    /// watches, is told.
    pub fn write(&self, draw: impl FnOnce(&mut FdWriter) -> fmt::Result) {
        let p = self.path.get();
        if p.is_null() {
            return;
        }
        // SAFETY: `p` points at an environment string, NUL-terminated and
        // never freed (see `set`).
        let template = unsafe { core::ffi::CStr::from_ptr(p) };
        let pid = os::getpid();
        let mut expanded = [0u8; 4096];
        let mut temporary = [0u8; 4096];
        let Some(path) = tool::expand_path(template.to_bytes(), pid, &mut expanded) else {
            let mut w = FdWriter::new(2);
            let _ = writeln!(w, "buddyslab: the path for the {} is too long", self.what);
            w.flush();
            return;
        };
        let Some(partial) = tool::temporary_name(path, pid, &mut temporary) else { return };
        match os::create_file(partial) {
            Ok(fd) => {
                let mut w = FdWriter::new(fd);
                let _ = draw(&mut w);
                w.flush();
                os::close(fd);
                match os::rename(partial, path) {
                    Ok(()) => tool::tell_written(self.what, path.to_bytes()),
                    Err(_) => {
                        let _ = os::unlink(partial);
                    }
                }
            }
            Err(os::Errno(e)) => {
                let mut w = FdWriter::new(2);
                let _ = write!(w, "buddyslab: cannot write the {} to ", self.what);
                w.flush();
                os::write_all(2, path.to_bytes());
                let _ = writeln!(w, " (errno {e})");
                w.flush();
            }
        }
    }
}

/// A `fmt::Write` to a file descriptor through a 4 KiB stack buffer,
/// flushed with `write(2)` when full and by [`FdWriter::flush`].
pub struct FdWriter {
    fd: i32,
    buf: FixedBuf<4096>,
}

impl FdWriter {
    /// A writer to `fd`.
    pub const fn new(fd: i32) -> Self {
        FdWriter { fd, buf: FixedBuf::new() }
    }

    /// Writes out what is buffered.
    pub fn flush(&mut self) {
        self.buf.flush_to(self.fd);
    }
}

impl Write for FdWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        if self.buf.len + s.len() > self.buf.buf.len() {
            self.flush();
            if s.len() > self.buf.buf.len() {
                os::write_all(self.fd, s.as_bytes());
                return Ok(());
            }
        }
        self.buf.write_str(s)
    }
}

/// The name `/proc/slabinfo` shows for cache `index`: `kmalloc-<size>` for
/// the size classes, `vm_area_struct` for the region tree's nodes.
pub struct CacheName(pub usize);

impl fmt::Display for CacheName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let name = slab::cache_name(self.0);
        let mut text = FixedBuf::<24>::new();
        if self.0 < slab::NR_CLASSES {
            write!(text, "{}-{}", name, slab::size_of_class(self.0))?;
        } else {
            text.write_str(name)?;
        }
        f.pad(text.as_str())
    }
}

/// Calls `f` on every region of the VMA tree in address order, copying
/// them out a batch at a time so no lock is held while `f` runs.
pub fn for_each_region(mut f: impl FnMut(&Region) -> fmt::Result) -> fmt::Result {
    const BATCH: usize = 64;
    let empty = Region { start: 0, end: 0, kind: VmaKind::Meta, prot: 0, requested: 0 };
    let mut from = 0usize;
    loop {
        let mut batch = [empty; BATCH];
        let mut n = 0;
        vma::for_each_region(&mut |r| {
            if r.start >= from && n < BATCH {
                batch[n] = r;
                n += 1;
            }
        });
        for r in &batch[..n] {
            f(r)?;
        }
        if n < BATCH {
            return Ok(());
        }
        from = batch[n - 1].end;
    }
}
