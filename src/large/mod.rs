//! The large tier: blocks with a mapping of their own, and a cache of
//! released mappings so that big blocks are reused resident, as glibc's
//! heap reuses them, instead of paying `mmap`, page faults and `munmap`
//! every time.
//!
//! # What comes here
//!
//! [`crate::heap`] sends here every request that neither a slab nor an
//! exact buddy run serves: at or above the mmap threshold, larger than the
//! buddy's largest block (order 10, 4 MiB), or aligned beyond 4 MiB.
//!
//! # The mmap threshold adapts, as glibc's does
//!
//! It starts at 128 KiB (the trim threshold too). Freeing a block whose
//! mapping is longer than the threshold and at most 32 MiB
//! ([`MAX_MMAP_THRESHOLD`], glibc's cap on 64-bit) raises the threshold to
//! that length and the trim threshold to twice it: a program that frees
//! 1 MiB or 20 MiB blocks then gets them back from this cache, resident.
//! (The heap sends only requests up to 256 KiB to buddy page runs,
//! whatever the threshold: see `heap::PAGE_TIER_MAX`.) Setting either threshold explicitly
//! (`mallopt(M_MMAP_THRESHOLD / M_TRIM_THRESHOLD)`,
//! `BUDDYSLAB_MMAP_THRESHOLD`, glibc's `MALLOC_MMAP_THRESHOLD_` /
//! `MALLOC_TRIM_THRESHOLD_`) turns the adaptation off for good.
//!
//! # The cache of released mappings
//!
//! A freed block whose mapping is no longer than the mmap threshold is not
//! unmapped. Its range stays mapped (and its pages resident) as a cached
//! *extent*, recorded in the region tree as `[buddyslab:large-cached]`, so
//! a second `free` of it is caught as a double free and the `maps` view
//! shows it. Extents are address ranges, not whole mappings:
//!
//! - **allocation** takes the smallest extent that holds the request. It
//!   hands out the whole extent when at most 1/8 would be left over, and
//!   otherwise splits it: the head becomes the block, the tail stays
//!   cached. When no extent is big enough, the largest one grows with
//!   `mremap` (its pages move without copying and stay resident; only the
//!   growth faults), if it holds at least [`MOVE_MIN`]: each move shoots
//!   down TLB entries on the other CPUs. Otherwise, or with nothing
//!   cached, a fresh mapping.
//! - **free** merges the block with cached extents that touch it (the
//!   pieces of one earlier split come back together).
//! - **bounds**: the cached total stays at most `BUDDYSLAB_LARGE_CACHE`
//!   (64 MiB), and at most the trim threshold too once the adaptation is
//!   off (the program set a threshold); only blocks no longer than the mmap
//!   threshold are kept, so nothing is cached until it has adapted. An
//!   extent is unmapped once it has been cached for
//!   `BUDDYSLAB_LARGE_CACHE_MS` (1000 ms), checked on every large
//!   allocation and free ([`release_cached`]). The oldest extents go
//!   first. `malloc_trim(0)` unmaps them all.
//! - `realloc` grows a block into a cached extent right after it (no
//!   system call). Otherwise, a block the cache would keep is copied into
//!   cached memory while the cache holds enough: a copied page costs a
//!   fraction of the page fault a fresh one costs, and the old block goes
//!   back to the cache resident. A bigger block, or one the cache cannot
//!   serve, grows with `mremap` (no copy; the growth faults, in huge
//!   pages from 2 MiB on: see [`resize`]). Shrinking
//!   gives the tail to the cache (a tail of at most 1/8 of a cacheable
//!   block just stays with it).
//!
//! An extent or block can span two kernel mappings that happen to be
//! neighbours; `mremap` refuses such a range (`EFAULT`), and every caller
//! of it falls back (a fresh mapping, or a copy). `munmap` does not mind.
//!
//! # Locking
//!
//! [`CACHE`] is the outermost lock of the allocator (see [`crate::mm`]):
//! it is held while the region tree changes (which may allocate tree nodes
//! from the slab caches) and while the cache's `mremap`s run, so every
//! change to a `LargeCached` record happens under it. A live block's
//! record is changed only by the block's owner: `realloc` updates it for
//! a growth into the room or a short shrink without the cache's lock, and
//! moves a block it grows with `mremap` with no lock held at all (see
//! `move_block`; the secure build moves it under both locks). `munmap` of
//! evicted extents waits until the lock is dropped. Whoever takes it first takes a
//! [`mm::defer_decay`] guard (dropped after the lock): a tree node
//! taken from a slab cache under the lock may call into the buddy, and a
//! decay scan started there would run its `madvise` calls with the lock
//! held.

use crate::mm;
use crate::os::{align_up, map_aligned};
use crate::os::{self, PAGE_SIZE};
use crate::os::sync::Mutex;
use core::mem::MaybeUninit;
use crate::ledger::pagetable;
use crate::ledger::vma::{self, VmaKind};
use core::ptr;
use core::sync::atomic::{AtomicUsize, Ordering};

// The thresholds and the cache's bounds are options (set from the
// environment and by mallopt); this tier reads them.
pub use crate::options::{CACHE_MAX, CACHE_MAX_AGE_NS, DYNAMIC_THRESHOLD, MAX_MMAP_THRESHOLD, MMAP_THRESHOLD, TRIM_THRESHOLD};

/// Live large blocks.
pub static NR_LARGE: AtomicUsize = AtomicUsize::new(0);
/// Bytes mapped for live large blocks.
pub static LARGE_BYTES: AtomicUsize = AtomicUsize::new(0);
/// Bytes in cached extents (a copy of [`MappingCache::bytes`] readable
/// without the lock).
pub static CACHED_BYTES: AtomicUsize = AtomicUsize::new(0);

/// The released mappings, outermost lock of the allocator.
pub static CACHE: Mutex<MappingCache> = Mutex::new(MappingCache::new());

/// The secure build: how [`alloc`] made the block it handed out last, for
/// the secure layer to read once with [`handed_out_fresh`]: its start
/// for a fresh mapping, its start `| 1` for one cut whole from a single
/// cached extent (not one the cache built by growing and moving pages).
/// That layer makes every mapping it frees `PROT_NONE` before the cache
/// gets it, so a block of the second kind is inaccessible throughout and
/// a fresh one open throughout: knowing which saves it an `mprotect` per
/// block (opening a fresh block's data, protecting a cached block's
/// guard, both already so).
#[cfg(feature = "secure")]
static HANDED_OUT: AtomicUsize = AtomicUsize::new(0);

/// The secure build: whether the block at `start`, just handed out by
/// [`alloc`] to the caller, is a fresh mapping (`Some(true)`: every page
/// open), cut from one cached extent (`Some(false)`: every page as the
/// cache got it), or unknown (`None`: another thread's allocation came
/// in between). Reads the record once: a second call says `None`.
#[cfg(feature = "secure")]
pub fn handed_out_fresh(start: usize) -> Option<bool> {
    if HANDED_OUT.compare_exchange(start, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
        return Some(true);
    }
    if HANDED_OUT.compare_exchange(start | 1, 0, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
        return Some(false);
    }
    None
}

/// glibc's rule: the new mmap threshold after a block with a mapping of
/// `freed_len` bytes is freed, or `None` when it stays.
pub fn adapted_threshold(threshold: usize, freed_len: usize) -> Option<usize> {
    (freed_len > threshold && freed_len <= MAX_MMAP_THRESHOLD).then_some(freed_len)
}

fn adapt_on_free(len: usize) {
    if !DYNAMIC_THRESHOLD.load(Ordering::Relaxed) {
        return;
    }
    if let Some(t) = adapted_threshold(MMAP_THRESHOLD.load(Ordering::Relaxed), len) {
        MMAP_THRESHOLD.store(t, Ordering::Relaxed);
        TRIM_THRESHOLD.store(2 * t, Ordering::Relaxed);
    }
}

/// The cache's bound in bytes as the options stand now:
/// `BUDDYSLAB_LARGE_CACHE`, and also the trim threshold when the program
/// set one (or any other setting that stops the adaptation). While the
/// threshold adapts, the trim threshold is only twice the largest block
/// freed, far too little to keep a working set of medium blocks resident
/// (glibc keeps freed chunks in its heap without such a bound); the cache
/// is bounded by its own cap and by age instead.
fn max_cached_bytes() -> usize {
    let cap = CACHE_MAX.load(Ordering::Relaxed);
    if DYNAMIC_THRESHOLD.load(Ordering::Relaxed) {
        cap
    } else {
        cap.min(TRIM_THRESHOLD.load(Ordering::Relaxed))
    }
}

// ---------------------------------------------------------------------------
// The cache.

/// Most extents cached at once; more evict the oldest. Every split
/// leaves a tail extent, so a program with a few dozen live blocks of
/// mixed sizes fills 32 slots and evicts extents the next request would
/// have taken (the issue-18 workload on two threads: 152 fresh mappings,
/// 90 MiB faulted in, with 32; 127 and 68 MiB with 128). Each cache
/// operation scans the slots under the cache lock: a few hundred
/// nanoseconds at 128, beside a system call or a page fault saved.
pub const CACHE_SLOTS: usize = 128;

/// Fewest resident bytes worth an `mremap` when the cache gathers pages
/// for a block no extent holds alone. Moving pages makes the kernel shoot
/// down the old range's TLB entries on every CPU running this process: an
/// interrupt each, and in a virtual machine an exit on both sides, which
/// costs as much as tens of page faults and more when the other CPU is
/// descheduled. A megabyte (256 faults saved) pays for it; smaller extents
/// stay cached for requests they fit, and the block maps afresh. (The
/// `mixed` benchmark on two threads: 1,100 moves of mostly small extents
/// made it slower than glibc.)
pub const MOVE_MIN: usize = 1 << 20;

/// One cached range: mapped, resident, recorded as `LargeCached`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    /// First byte (page-aligned).
    pub start: usize,
    /// Bytes (whole pages).
    pub len: usize,
    /// [`os::monotonic_ns`] when it was last freed into the cache.
    pub freed_at: u64,
}

impl Extent {
    const EMPTY: Extent = Extent { start: 0, len: 0, freed_at: 0 };

    fn end(&self) -> usize {
        self.start + self.len
    }
}

/// Ranges given up under [`CACHE`]'s lock, unmapped once it is dropped.
/// Their records are already out of the region tree. The slots past `n`
/// are never read: an `Unmaps` is made on every big block's `malloc` and
/// `free`, and zeroing its 2 KiB cost about 2 100 instructions each time
/// (callgrind, `malloc(262144)`+`free` pairs), a quarter of the pair.
pub struct Unmaps {
    ranges: [MaybeUninit<(usize, usize)>; CACHE_SLOTS + 2],
    n: usize,
}

impl Unmaps {
    /// None yet.
    pub const fn new() -> Self {
        // SAFETY: an array of `MaybeUninit` needs no initialisation.
        Unmaps { ranges: unsafe { MaybeUninit::<[MaybeUninit<(usize, usize)>; CACHE_SLOTS + 2]>::uninit().assume_init() }, n: 0 }
    }

    /// Queues `[start, start + len)`, or unmaps it now if the queue is full.
    fn push(&mut self, start: usize, len: usize) {
        if self.n == self.ranges.len() {
            // SAFETY: the range was ours, its record is gone, nobody uses it.
            unsafe { unmap(start, len) };
            return;
        }
        self.ranges[self.n] = MaybeUninit::new((start, len));
        self.n += 1;
    }

    /// Unmaps every queued range and empties the queue; returns the bytes
    /// released. By reference: moving the queue (2 KiB) into the call
    /// cost a copy on every big block's `malloc` and `free`.
    pub fn run(&mut self) -> usize {
        let mut bytes = 0;
        let n = core::mem::replace(&mut self.n, 0);
        for slot in &self.ranges[..n] {
            // SAFETY: `ranges[..n]` were written by `push`.
            let (start, len) = unsafe { slot.assume_init() };
            // SAFETY: queued ranges were ours, their records are gone and
            // nobody uses them.
            unsafe { unmap(start, len) };
            bytes += len;
        }
        bytes
    }
}

impl Default for Unmaps {
    fn default() -> Self {
        Self::new()
    }
}

/// # Safety
/// Nothing uses `[start, start + len)` afterwards.
unsafe fn unmap(start: usize, len: usize) {
    // SAFETY: per the caller.
    unsafe {
        let _ = os::munmap(start, len);
    }
}

/// Released large mappings kept for reuse.
///
/// Invariants (checked by [`MappingCache::check`]): `extents[..nr]` do not
/// overlap, each is recorded in the region tree as exactly one
/// `LargeCached` region with its range, and `bytes` is their total.
pub struct MappingCache {
    extents: [Extent; CACHE_SLOTS],
    nr: usize,
    bytes: usize,
}

impl MappingCache {
    /// An empty cache.
    pub const fn new() -> Self {
        MappingCache { extents: [Extent::EMPTY; CACHE_SLOTS], nr: 0, bytes: 0 }
    }

    /// Bytes cached.
    #[cfg_attr(not(test), allow(dead_code))] // the unit tests use it
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// The cached extents.
    pub fn extents(&self) -> &[Extent] {
        &self.extents[..self.nr]
    }

    fn remove_at(&mut self, i: usize) -> Extent {
        let e = self.extents[i];
        self.nr -= 1;
        self.extents[i] = self.extents[self.nr];
        self.bytes -= e.len;
        e
    }

    fn push(&mut self, e: Extent) {
        debug_assert!(self.nr < CACHE_SLOTS);
        self.extents[self.nr] = e;
        self.nr += 1;
        self.bytes += e.len;
    }

    /// Drops extent `i`: record out of the tree, range queued for unmap.
    #[link_section = ".text.hot.buddyslab"]
    fn evict_at(&mut self, i: usize, unmaps: &mut Unmaps) {
        let e = self.remove_at(i);
        let removed = vma::remove_exact(e.start, VmaKind::LargeCached);
        debug_assert!(removed.is_ok_and(|r| r.end == e.end()), "cached extent without its record");
        unmaps.push(e.start, e.len);
    }

    fn oldest(&self) -> Option<usize> {
        (0..self.nr).min_by_key(|&i| self.extents[i].freed_at)
    }

    /// Evicts every extent (`all`), or those cached for `max_age_ns` or
    /// longer at `now`.
    pub fn release(&mut self, all: bool, now: u64, max_age_ns: u64, unmaps: &mut Unmaps) {
        let mut i = 0;
        while i < self.nr {
            if all || now.saturating_sub(self.extents[i].freed_at) >= max_age_ns {
                self.evict_at(i, unmaps);
            } else {
                i += 1;
            }
        }
    }

    /// Unmaps the oldest cached memory until at most `max_bytes` are
    /// cached: whole extents, and the tail of the last one when only part
    /// of it is over (a big extent is not dropped for a small excess).
    fn shrink_to(&mut self, max_bytes: usize, unmaps: &mut Unmaps) {
        while self.bytes > max_bytes {
            let Some(i) = self.oldest() else { break };
            let e = self.extents[i];
            let excess = align_up(self.bytes - max_bytes, PAGE_SIZE);
            if excess >= e.len {
                self.evict_at(i, unmaps);
                continue;
            }
            let keep = e.len - excess;
            let r = vma::remap(e.start, VmaKind::LargeCached, |_| Some((e.start, e.start + keep, 0, VmaKind::LargeCached)));
            debug_assert!(r.is_some(), "cached extent without its record");
            self.extents[i].len = keep;
            self.bytes -= excess;
            unmaps.push(e.start + keep, excess);
        }
    }

    /// Takes `len` bytes (whole pages) for a block that asked for
    /// `requested` from the one extent that fits them best (the smallest
    /// that holds them): its head, or all of it when the rest would be at
    /// most an eighth of `len`. Returns the block's start and mapped
    /// length (at least `len`), recorded as `Large`; `None` when no extent
    /// holds `len` bytes alone.
    #[link_section = ".text.hot.buddyslab"]
    pub fn take_whole(&mut self, len: usize, requested: usize, unmaps: &mut Unmaps) -> Option<(usize, usize)> {
        let mut best: Option<usize> = None;
        for (i, e) in self.extents().iter().enumerate() {
            if e.len >= len && best.is_none_or(|b| e.len < self.extents[b].len) {
                best = Some(i);
            }
        }
        if let Some(i) = best {
            let e = self.extents[i];
            #[cfg(feature = "secure")]
            HANDED_OUT.store(e.start | 1, Ordering::Release);
            if e.len - len <= len / 8 {
                self.remove_at(i);
                let r = vma::remap(e.start, VmaKind::LargeCached, |_| Some((e.start, e.end(), requested, VmaKind::Large)));
                debug_assert!(r.is_some(), "cached extent without its record");
                return Some((e.start, e.len));
            }
            // Split: the head becomes the block, the tail stays cached.
            let tail = Extent { start: e.start + len, len: e.len - len, freed_at: e.freed_at };
            let r = vma::remap(e.start, VmaKind::LargeCached, |_| Some((e.start, tail.start, requested, VmaKind::Large)));
            debug_assert!(r.is_some(), "cached extent without its record");
            self.remove_at(i);
            if vma::record_sized(tail.start, tail.end(), VmaKind::LargeCached, 0) {
                self.push(tail);
            } else {
                // No tree node for the tail: give it back rather than lose it.
                unmaps.push(tail.start, tail.len);
            }
            return Some((e.start, len));
        }
        None
    }

    /// Takes `len` bytes (whole pages) for a block that asked for
    /// `requested`; returns its start and mapped length (at least `len`),
    /// recorded as `Large`. `None` when nothing is cached or the one
    /// candidate could not grow.
    pub fn take(&mut self, len: usize, requested: usize, unmaps: &mut Unmaps) -> Option<(usize, usize)> {
        if let Some(got) = self.take_whole(len, requested, unmaps) {
            return Some(got);
        }
        // Nothing holds it alone: grow the largest extent (its resident
        // pages stay; in place or moved, never copied) or, if it cannot
        // grow, map afresh; then move the pages of other extents into the
        // growth, so that only what the whole cache cannot cover faults.
        // Moving pages costs the other CPUs a TLB shootdown each time;
        // only an extent holding enough pages is worth it (see MOVE_MIN).
        // A block built so may hold pages of several protections.
        #[cfg(feature = "secure")]
        HANDED_OUT.store(0, Ordering::Release);
        let i = (0..self.nr).max_by_key(|&i| self.extents[i].len).filter(|&i| self.extents[i].len >= MOVE_MIN)?;
        let e = self.extents[i];
        let grown = vma::remap(e.start, VmaKind::LargeCached, |r| {
            // SAFETY: the extent is a range of ours nobody uses, recorded
            // as one region; the tree lock is held, so its record moves
            // with it. A range spanning two kernel mappings fails (EFAULT)
            // and is left as it was.
            let new = unsafe { os::mremap_maymove(r.start, r.end - r.start, len) }.ok()?;
            Some((new, new + len, requested, VmaKind::Large))
        });
        let (block, filled) = match grown {
            Some(r) => {
                self.remove_at(i);
                (r.start, e.len)
            }
            None => {
                let block = os::mmap_anonymous(len, false).ok()?;
                if !vma::record_sized(block, block + len, VmaKind::Large, requested) {
                    unmaps.push(block, len);
                    return None;
                }
                (block, 0)
            }
        };
        self.fill(block, filled, len, unmaps);
        Some((block, len))
    }

    /// Moves pages of cached extents (largest first, each one's tail) into
    /// `[block + filled, block + len)`, a part of a block being handed out
    /// that holds no pages yet, while the part left is at least
    /// [`MOVE_MIN`], from extents of at least that much; what is left
    /// faults in. An extent the kernel will not move (it spans two
    /// mappings) stays cached.
    fn fill(&mut self, block: usize, mut filled: usize, len: usize, unmaps: &mut Unmaps) {
        let mut refused = [0usize; CACHE_SLOTS];
        let mut nr_refused = 0;
        while len - filled >= MOVE_MIN {
            let candidates = (0..self.nr)
                .filter(|&i| self.extents[i].len >= MOVE_MIN && !refused[..nr_refused].contains(&self.extents[i].start));
            let Some(i) = candidates.max_by_key(|&i| self.extents[i].len) else { break };
            let e = self.extents[i];
            let part = e.len.min(len - filled);
            let from = e.end() - part;
            // The record shrinks before the pages leave and is restored if
            // they do not: the tree never shows a range that is not mapped.
            let whole = part == e.len;
            if whole {
                let removed = vma::remove_exact(e.start, VmaKind::LargeCached);
                debug_assert!(removed.is_ok(), "cached extent without its record");
            } else {
                let r = vma::remap(e.start, VmaKind::LargeCached, |_| Some((e.start, from, 0, VmaKind::LargeCached)));
                debug_assert!(r.is_some(), "cached extent without its record");
            }
            // SAFETY: `[from, from + part)` is cached memory nobody uses,
            // now out of the tree; the destination is inside the block we
            // are building, which has no pages there and is not handed out.
            let moved = unsafe { os::mremap_fixed(from, part, block + filled) }.is_ok();
            if moved {
                if whole {
                    self.remove_at(i);
                } else {
                    self.extents[i].len -= part;
                    self.bytes -= part;
                }
                filled += part;
                continue;
            }
            refused[nr_refused] = e.start;
            nr_refused += 1;
            let restored = if whole {
                vma::record_sized(e.start, e.end(), VmaKind::LargeCached, 0)
            } else {
                vma::remap(e.start, VmaKind::LargeCached, |_| Some((e.start, e.end(), 0, VmaKind::LargeCached))).is_some()
            };
            if !restored {
                // No tree node to record it again: give it back.
                let e = self.remove_at(i);
                if !whole {
                    let _ = vma::remove_exact(e.start, VmaKind::LargeCached);
                }
                unmaps.push(e.start, e.len);
            }
        }
    }

    /// Caches the freed block `[start, start + len)`, recorded as `Large`,
    /// merging it with cached extents it touches, then evicts the oldest
    /// extents beyond `max_bytes`.
    #[link_section = ".text.hot.buddyslab"]
    pub fn put(&mut self, start: usize, len: usize, now: u64, max_bytes: usize, unmaps: &mut Unmaps) {
        let (mut lo, mut hi) = (start, start + len);
        let below = self.extents().iter().position(|e| e.end() == start);
        let above = self.extents().iter().position(|e| e.start == hi);
        // Higher index first: remove_at moves the last entry into the hole.
        let (first, second) = if below > above { (below, above) } else { (above, below) };
        for i in [first, second].into_iter().flatten() {
            let e = self.remove_at(i);
            let removed = vma::remove_exact(e.start, VmaKind::LargeCached);
            debug_assert!(removed.is_ok(), "cached extent without its record");
            lo = lo.min(e.start);
            hi = hi.max(e.end());
        }
        let r = vma::remap(start, VmaKind::Large, |_| Some((lo, hi, 0, VmaKind::LargeCached)));
        debug_assert!(r.is_some(), "freed block without its record");
        if self.nr == CACHE_SLOTS {
            if let Some(i) = self.oldest() {
                self.evict_at(i, unmaps);
            }
        }
        self.push(Extent { start: lo, len: hi - lo, freed_at: now });
        self.shrink_to(max_bytes, unmaps);
    }

    /// The extent starting at `addr`, if any.
    fn starting_at(&self, addr: usize) -> Option<usize> {
        self.extents().iter().position(|e| e.start == addr)
    }

    /// Checks the invariants; panics on a breach. For tests.
    #[cfg_attr(not(test), allow(dead_code))] // the unit tests use it
    pub fn check(&self) {
        let mut total = 0;
        for (i, e) in self.extents().iter().enumerate() {
            assert!(e.len > 0 && e.start % PAGE_SIZE == 0 && e.len % PAGE_SIZE == 0, "bad extent {e:?}");
            for f in &self.extents()[i + 1..] {
                assert!(e.end() <= f.start || f.end() <= e.start, "extents overlap: {e:?} {f:?}");
            }
            let r = vma::lookup(e.start).expect("cached extent without a record");
            assert_eq!((r.start, r.end, r.kind), (e.start, e.end(), VmaKind::LargeCached), "record differs");
            total += e.len;
        }
        assert_eq!(total, self.bytes, "cached byte count drifted");
    }
}

impl Default for MappingCache {
    fn default() -> Self {
        Self::new()
    }
}

/// Unmaps cached extents: all of them (`all`, for `malloc_trim(0)`), or
/// those cached for `BUDDYSLAB_LARGE_CACHE_MS` or longer at `now`
/// ([`os::monotonic_ns`]), for the memory-return decay. Returns the bytes
/// released. Call it with no allocator lock held.
pub fn release_cached(all: bool, now: u64) -> usize {
    if CACHED_BYTES.load(Ordering::Relaxed) == 0 {
        return 0;
    }
    let mut unmaps = Unmaps::new();
    {
        let _deferred = mm::defer_decay();
        let mut cache = CACHE.lock();
        cache.release(all, now, CACHE_MAX_AGE_NS.load(Ordering::Relaxed), &mut unmaps);
        CACHED_BYTES.store(cache.bytes, Ordering::Relaxed);
    }
    unmaps.run()
}

// ---------------------------------------------------------------------------
// Blocks.

/// Largest request this tier accepts.
const MAX_SIZE: usize = isize::MAX as usize - 2 * PAGE_SIZE;

/// A block of at least `size` bytes, aligned to `align` (a power of two):
/// from the cache when one fits, otherwise a fresh mapping; with `room`
/// bytes more to grow into where one cached extent or the system gives
/// them, without where not. Also says whether the memory is known to
/// read as zero (fresh mappings only). Null when the system refuses or
/// the size is impossible.
pub fn alloc(size: usize, room: usize, align: usize) -> (*mut u8, bool) {
    if size > MAX_SIZE {
        return (ptr::null_mut(), false);
    }
    let len = align_up(size.max(1), PAGE_SIZE);
    let room = align_up(room.min(MAX_SIZE.saturating_sub(len)), PAGE_SIZE);
    // Extents are only page-aligned; bigger alignments map afresh.
    if align <= PAGE_SIZE && CACHED_BYTES.load(Ordering::Relaxed) != 0 {
        let now = os::monotonic_ns();
        let mut unmaps = Unmaps::new();
        let got = {
            let _deferred = mm::defer_decay();
        let mut cache = CACHE.lock();
            cache.release(false, now, CACHE_MAX_AGE_NS.load(Ordering::Relaxed), &mut unmaps);
            // Room only where one extent holds it: gathering pages for
            // it would cost moves (`fill`), and a growth that finds no
            // room moves the block anyway.
            let roomy = (room != 0).then(|| cache.take_whole(len + room, size, &mut unmaps)).flatten();
            let got = roomy.or_else(|| cache.take(len, size, &mut unmaps));
            CACHED_BYTES.store(cache.bytes, Ordering::Relaxed);
            got
        };
        unmaps.run();
        if let Some((start, got_len)) = got {
            NR_LARGE.fetch_add(1, Ordering::Relaxed);
            LARGE_BYTES.fetch_add(got_len, Ordering::Relaxed);
            return (start as *mut u8, false);
        }
    }
    // The room is a wish: a system that refuses the mapping with it (an
    // address-space limit) may still give the block alone.
    let mapped = match map_aligned(len + room, align.max(PAGE_SIZE)) {
        Ok(start) => Some((start, len + room)),
        Err(_) if room != 0 => map_aligned(len, align.max(PAGE_SIZE)).ok().map(|start| (start, len)),
        Err(_) => None,
    };
    let Some((start, len)) = mapped else { return (ptr::null_mut(), false) };
    if !vma::record_sized(start, start + len, VmaKind::Large, size) {
        // Without a record, free could not find it: give it back.
        // SAFETY: mapped just now, never handed out.
        unsafe { unmap(start, len) };
        return (ptr::null_mut(), false);
    }
    NR_LARGE.fetch_add(1, Ordering::Relaxed);
    LARGE_BYTES.fetch_add(len, Ordering::Relaxed);
    #[cfg(feature = "secure")]
    HANDED_OUT.store(start, Ordering::Release);
    (start as *mut u8, true)
}

/// Why a pointer is not a live large block, as the message says it.
pub type NotLarge = &'static [u8];

fn classify(p: usize, region: Option<vma::Region>) -> Result<vma::Region, NotLarge> {
    match region {
        Some(r) if r.kind == VmaKind::Large && r.start == p => Ok(r),
        Some(r) if r.kind == VmaKind::Large => Err(b"invalid pointer (inside a block)"),
        Some(r) if r.kind == VmaKind::LargeCached => Err(b"double free or invalid pointer (memory is free)"),
        _ => Err(b"invalid pointer (not allocated by buddyslab)"),
    }
}

/// Frees the large block at `p`: cached when its mapping is no longer than
/// the mmap threshold (after the threshold has adapted to it) and fits the
/// cache's bounds, unmapped otherwise. `Err` says why `p` is not a live
/// large block (the caller stops the process with it), e.g. a block freed
/// twice.
///
/// # Safety
/// If `p` is a large block, nothing uses it afterwards.
pub unsafe fn free(p: *mut u8) -> Result<(), NotLarge> {
    let now = os::monotonic_ns();
    let mut unmaps = Unmaps::new();
    {
        let _deferred = mm::defer_decay();
        let mut cache = CACHE.lock();
        let r = classify(p as usize, vma::lookup(p as usize))?;
        let len = r.end - r.start;
        NR_LARGE.fetch_sub(1, Ordering::Relaxed);
        LARGE_BYTES.fetch_sub(len, Ordering::Relaxed);
        adapt_on_free(len);
        let max_bytes = max_cached_bytes();
        cache.release(false, now, CACHE_MAX_AGE_NS.load(Ordering::Relaxed), &mut unmaps);
        if len <= MMAP_THRESHOLD.load(Ordering::Relaxed) && len <= max_bytes {
            cache.put(r.start, len, now, max_bytes, &mut unmaps);
        } else {
            let removed = vma::remove_exact(r.start, VmaKind::Large);
            debug_assert!(removed.is_ok());
            unmaps.push(r.start, len);
        }
        CACHED_BYTES.store(cache.bytes, Ordering::Relaxed);
    }
    unmaps.run();
    Ok(())
}

/// Usable bytes of the large block at `p`; `Err` says why `p` is not one.
pub fn usable_size(p: *mut u8) -> Result<usize, NotLarge> {
    classify(p as usize, vma::lookup(p as usize)).map(|r| r.end - r.start)
}

/// Smallest block that `realloc` growth advises for transparent huge
/// pages: one huge page.
pub const HUGE_GROW_MIN: usize = 2 << 20;

/// Resizes the live large block at `p` to hold `new_size` bytes without
/// copying: a shrink gives the tail pages to the cache (see `shrink`); a
/// growth takes the head of a cached extent right after the block, or else
/// `mremap`s it (moving it if need be) when the block is too big for the
/// cache or the cache holds less than the new length. Null when none of
/// that applies (the block is then unchanged, and the caller copies into
/// a block the cache gives).
///
/// A block grown by `mremap` to [`HUGE_GROW_MIN`] or more is advised for
/// transparent huge pages, whole (advice on part of a mapping would split
/// it), when the kernel would heed the advice
/// ([`os::huge_advice_heeded`]). A buffer that a program grows with
/// `realloc` is one it fills, and its growth then costs one page fault per
/// 2 MiB instead of 512. Blocks from `malloc` are not advised: a big table
/// touched here and there would become resident 2 MiB at a time (its
/// growth is then predicted at 2 MiB per fault, see
/// [`pagetable::remapped`]).
///
/// The shadow's records of the block follow it here, each where its old
/// range is still the block's: a block moved with no lock held takes
/// them under the tree's lock (see `move_block`), a shrink's leaving tail
/// drops them before it is cached or unmapped (see `shrink`), and every
/// other change is recorded at the end ([`pagetable::remapped`]).
///
/// # Safety
/// `p` is a live large block; after a non-null return that differs from
/// `p`, the old address must not be used.
pub unsafe fn resize(p: *mut u8, new_size: usize) -> *mut u8 {
    if new_size > MAX_SIZE {
        return ptr::null_mut();
    }
    let new_len = align_up(new_size.max(1), PAGE_SIZE);
    let mut unmaps = Unmaps::new();
    let mut huge = false;
    let mut moving = None;
    // The first bytes of the block whose records in the shadow were
    // changed here (see below); `None`: none, all is recorded at the end.
    let mut records_kept = None;
    // Outside the secure build, the block's record is read and, where
    // nothing else changes, updated without the cache's lock: only the
    // block's owner changes a live block's record, and a growth into the
    // room or a shrink that leaves the tail with the block touches nothing
    // cached.
    #[cfg(not(feature = "secure"))]
    let known = {
        let Ok(r) = classify(p as usize, vma::lookup(p as usize)) else { return ptr::null_mut() };
        let old_len = r.end - r.start;
        let tail_stays = old_len <= MMAP_THRESHOLD.load(Ordering::Relaxed) && old_len - new_len.min(old_len) <= old_len / 8;
        if new_len <= old_len && (new_size >= r.requested || tail_stays) {
            // The range stays: nothing for the shadow.
            let r = vma::remap(r.start, VmaKind::Large, |r| Some((r.start, r.end, new_size, VmaKind::Large)));
            return r.map_or(ptr::null_mut(), |r| r.start as *mut u8);
        }
        Some(r)
    };
    #[cfg(feature = "secure")]
    let known = None;
    let (result, (old, old_len)) = {
        let _deferred = mm::defer_decay();
        let mut cache = CACHE.lock();
        let r = match known {
            Some(r) => r,
            None => match classify(p as usize, vma::lookup(p as usize)) {
                Ok(r) => r,
                Err(_) => return ptr::null_mut(),
            },
        };
        let old_len = r.end - r.start;
        let resized = if new_len <= old_len && new_size >= r.requested {
            // A growth into the block's room (see `alloc`): in place.
            vma::remap(r.start, VmaKind::Large, |r| Some((r.start, r.end, new_size, VmaKind::Large)))
        } else if new_len <= old_len {
            let bounds = (MMAP_THRESHOLD.load(Ordering::Relaxed), max_cached_bytes());
            let shrunk = shrink(&mut cache, r, new_len, new_size, bounds, &mut unmaps);
            // A tail that left took its records along: nothing to
            // record at the end.
            records_kept = shrunk.map(|s| s.end - s.start);
            shrunk
        } else if let Some(i) = cache.starting_at(r.end).filter(|&i| cache.extents[i].len >= new_len - old_len) {
            grow_into(&mut cache, i, r, new_len, new_size, &mut unmaps)
        } else if new_len > MMAP_THRESHOLD.load(Ordering::Relaxed) || cache.bytes < new_len {
            // A block the cache would not keep, or more than it holds:
            // mremap moves the pages without copying (only the growth
            // faults). Otherwise the caller copies into cached memory,
            // which is cheaper than faulting the growth in: a copied page
            // costs a fraction of a fresh one, and the old block goes back
            // to the cache resident.
            if cfg!(feature = "secure") {
                // Its guard pages and protections rely on the block and its
                // record changing together under the locks.
                move_block_locked(r, new_len, new_size, &mut huge)
            } else {
                // Moved below, with the locks dropped (see `move_block`).
                moving = Some(r);
                None
            }
        } else {
            None
        };
        if let Some(r) = resized {
            LARGE_BYTES.fetch_add(r.end - r.start, Ordering::Relaxed);
            LARGE_BYTES.fetch_sub(old_len, Ordering::Relaxed);
        }
        CACHED_BYTES.store(cache.bytes, Ordering::Relaxed);
        (resized, (r.start, old_len))
    };
    unmaps.run();
    let result = match moving {
        Some(r) => {
            let moved = move_block(r, new_len, new_size, &mut huge);
            moved.map(|(m, kept)| {
                LARGE_BYTES.fetch_add(m.end - m.start, Ordering::Relaxed);
                LARGE_BYTES.fetch_sub(r.end - r.start, Ordering::Relaxed);
                records_kept = Some(kept);
                m
            })
        }
        None => result,
    };
    let Some(block) = result else { return ptr::null_mut() };
    let len = block.end - block.start;
    match records_kept {
        Some(kept) => pagetable::hand_out_growth(block.start, kept, len, pagetable::Tier::Large, huge),
        None => pagetable::remapped(old, old_len, block.start, len, pagetable::Tier::Large, huge),
    };
    block.start as *mut u8
}

/// Advises a block `mremap` just grew to `[new, new + new_len)` for huge
/// pages, whole, when it is [`HUGE_GROW_MIN`] or more and the kernel
/// heeds the advice (see [`resize`]); whether it was advised.
fn advise_grown(new: usize, new_len: usize) -> bool {
    new_len >= HUGE_GROW_MIN && os::huge_advice_heeded() && os::madvise_hugepage(new, new_len).is_ok()
}

/// Moves live block `block` to a mapping of `new_len` bytes (more than
/// its length) with `mremap(MREMAP_MAYMOVE)`, its record with it, under
/// [`CACHE`]'s lock and the tree's: the one system call runs with both
/// held. Sets `huge` when the grown block was advised for huge pages.
fn move_block_locked(block: vma::Region, new_len: usize, new_size: usize, huge: &mut bool) -> Option<vma::Region> {
    let old_len = block.end - block.start;
    vma::remap(block.start, VmaKind::Large, |r| {
        // SAFETY: a live block of ours, recorded as one region; the tree
        // lock is held, so its record moves with it. A block spanning two
        // kernel mappings fails (EFAULT), unchanged.
        let new = unsafe { os::mremap_maymove(r.start, old_len, new_len) }.ok()?;
        *huge = advise_grown(new, new_len);
        Some((new, new + new_len, new_size, VmaKind::Large))
    })
}

/// [`move_block_locked`] with no allocator lock held, called with none:
/// the record is marked as moving under the tree's lock
/// ([`vma::begin_move`]), `mremap` runs with no lock, and the record
/// takes the new range under the tree's lock again ([`vma::end_move`]).
/// If the kernel hands the old range to another thread in between, that
/// thread's record replaces the stale one instead of failing. Under 16
/// threads on 2 CPUs, every `free`, `malloc` and chunk growth queued
/// behind an `mremap` that waited, with both locks held, for the page
/// faults in flight. `None` (the block unchanged) when the block spans
/// two kernel mappings or the system refuses.
///
/// The shadow's records of the block move here too, for the same reason:
/// the old range may be another thread's mapping, recorded and handed out,
/// as soon as `mremap` returns, so they move under the tree's lock before
/// that can be recorded ([`vma::end_move`], [`pagetable::move_kept`]), or
/// not at all when it already was. Returns with the region how many of the
/// block's first bytes kept their records (the old length, or 0): the
/// caller hands out the rest ([`pagetable::hand_out_growth`]).
fn move_block(block: vma::Region, new_len: usize, new_size: usize, huge: &mut bool) -> Option<(vma::Region, usize)> {
    let old_len = block.end - block.start;
    let (_, m) = vma::begin_move(block.start, VmaKind::Large)?;
    // SAFETY: a live block of ours, recorded as one region that only its
    // owner (the caller) changes. A block spanning two kernel mappings
    // fails (EFAULT), unchanged.
    let Ok(new) = (unsafe { os::mremap_maymove(block.start, old_len, new_len) }) else {
        vma::end_move(m, None, |_| {});
        return None;
    };
    *huge = advise_grown(new, new_len);
    Some(finish_move(m, block.start, old_len, new, new_len, new_size))
}

/// The records' side of [`move_block`] once `mremap` moved the block from
/// `old` (`old_len` bytes) to `new` (`new_len`, of which `new_size`
/// requested): the region's record and the shadow's. Returns the region
/// and how many of its first bytes kept their records in the shadow.
fn finish_move(m: vma::Move, old: usize, old_len: usize, new: usize, new_len: usize, new_size: usize) -> (vma::Region, usize) {
    let mut kept = old_len;
    if new == old {
        // Grown in place: the records stay; only the growth is new.
        pagetable::map(old + old_len, new_len - old_len);
    } else {
        // The new range's tables, made here: no allocation under the lock.
        pagetable::map(new, new_len);
    }
    let r = vma::end_move(m, Some((new, new + new_len, new_size, VmaKind::Large)), |left| match left {
        vma::LeftRange::Whole if new != old => pagetable::move_kept(old, old_len, new, new_len),
        vma::LeftRange::Whole => {}
        // Another mapping was recorded over part of the old range, its
        // pages with it or about to be: what it did not take is cleared,
        // and the block's records start afresh.
        vma::LeftRange::Unrecorded(start, end) => {
            pagetable::forget(start, end - start);
            kept = 0;
        }
    });
    (r, kept)
}

/// Shrinks block `block` to `new_len` (at most its length) bytes in
/// place. In a block the cache would keep, a tail of at most 1/8 of it
/// stays with it (as when a cached extent is handed out whole); otherwise
/// the tail is cached as a released mapping when it fits the cache's
/// bounds, resident for the next request (unmapping it would cost a page
/// fault per page when the memory is wanted again), and unmapped when it
/// does not. A tail that leaves leaves the shadow first
/// ([`pagetable::forget`]).
/// `threshold` and `max_bytes` are the mmap threshold and the cache's
/// bound as they stand.
fn shrink(
    cache: &mut MappingCache,
    block: vma::Region,
    new_len: usize,
    new_size: usize,
    (threshold, max_bytes): (usize, usize),
    unmaps: &mut Unmaps,
) -> Option<vma::Region> {
    let old_len = block.end - block.start;
    let tail = old_len - new_len;
    if old_len <= threshold && tail <= old_len / 8 {
        return vma::remap(block.start, VmaKind::Large, |r| Some((r.start, r.end, new_size, VmaKind::Large)));
    }
    let shrunk = vma::remap(block.start, VmaKind::Large, |r| Some((r.start, r.start + new_len, new_size, VmaKind::Large)));
    if tail == 0 {
        return shrunk;
    }
    let tail_start = block.start + new_len;
    // The shadow forgets the tail while it is still the block's: once
    // cached or unmapped, another thread may have it, records and all.
    pagetable::forget(tail_start, tail);
    if tail <= threshold && tail <= max_bytes && vma::record_sized(tail_start, block.end, VmaKind::Large, 0) {
        cache.put(tail_start, tail, os::monotonic_ns(), max_bytes, unmaps);
    } else {
        unmaps.push(tail_start, tail);
    }
    shrunk
}

/// Grows block `block` to `new_len` bytes over the head of cached extent
/// `i`, which starts at the block's end and is long enough.
fn grow_into(
    cache: &mut MappingCache,
    i: usize,
    block: vma::Region,
    new_len: usize,
    new_size: usize,
    unmaps: &mut Unmaps,
) -> Option<vma::Region> {
    let e = cache.remove_at(i);
    let removed = vma::remove_exact(e.start, VmaKind::LargeCached);
    debug_assert!(removed.is_ok(), "cached extent without its record");
    let end = block.start + new_len;
    let grown = vma::remap(block.start, VmaKind::Large, |r| Some((r.start, end, new_size, VmaKind::Large)));
    if e.end() > end {
        let rest = Extent { start: end, len: e.end() - end, freed_at: e.freed_at };
        if vma::record_sized(rest.start, rest.end(), VmaKind::LargeCached, 0) {
            cache.push(rest);
        } else {
            unmaps.push(rest.start, rest.len);
        }
    }
    grown
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MIB: usize = 1 << 20;

    #[test]
    fn threshold_follows_glibc_rule() {
        assert_eq!(adapted_threshold(crate::options::DEFAULT_MMAP_THRESHOLD, MIB), Some(MIB));
        assert_eq!(adapted_threshold(MIB, MIB), None, "only a longer mapping raises it");
        assert_eq!(adapted_threshold(MIB, 512 * 1024), None, "never lowered");
        assert_eq!(adapted_threshold(MIB, MAX_MMAP_THRESHOLD), Some(MAX_MMAP_THRESHOLD));
        assert_eq!(adapted_threshold(MIB, MAX_MMAP_THRESHOLD + PAGE_SIZE), None, "capped");
    }

    /// A block moved with no lock held takes its records in the shadow
    /// with it, unless another mapping was recorded over its old range
    /// after `mremap` let it go: that mapping's records are left alone and
    /// only the rest of the old range is cleared.
    #[test]
    fn a_moved_block_takes_its_shadow_records_and_no_others() {
        use crate::ledger::pagetable::{self, Tier, PTE_HANDED, PTE_PRESENT};
        // Address ranges nobody maps: the tree and the shadow only record
        // numbers.
        let (a, b, c) = (0x6300_0000_0000usize, 0x6300_1000_0000usize, 0x6300_2000_0000usize);
        let handed = |addr: usize| pagetable::entry(addr) & (PTE_PRESENT | PTE_HANDED) == PTE_PRESENT | PTE_HANDED;
        assert!(vma::record_sized(a, a + 2 * MIB, VmaKind::Large, 2 * MIB));
        pagetable::map_and_hand_out(a, 2 * MIB, Tier::Large, false);
        // Nothing in the way: the records go along; the growth is the
        // caller's to hand out.
        let (_, m) = vma::begin_move(a, VmaKind::Large).unwrap();
        let (r, kept) = finish_move(m, a, 2 * MIB, b, 3 * MIB, 3 * MIB);
        assert_eq!((r.start, r.end, kept), (b, b + 3 * MIB, 2 * MIB));
        assert!(handed(b) && handed(b + 2 * MIB - PAGE_SIZE));
        assert!(!handed(b + 2 * MIB));
        assert_eq!((pagetable::entry(a), pagetable::entry(a + 2 * MIB - PAGE_SIZE)), (0, 0));
        // Another thread maps the middle MiB of the old range once the
        // kernel let it go, records it and hands its pages out, before
        // the mover takes the tree's lock again.
        let (_, m) = vma::begin_move(b, VmaKind::Large).unwrap();
        assert!(vma::record(b + MIB, b + 2 * MIB, VmaKind::Chunk));
        pagetable::map(b + MIB, MIB);
        pagetable::hand_out(b + MIB, MIB, Tier::Meta);
        let theirs = pagetable::entry(b + MIB);
        let (r, kept) = finish_move(m, b, 3 * MIB, c, 4 * MIB, 4 * MIB);
        assert_eq!((r.start, kept), (c, 0), "no record could be taken along");
        for page in [b + MIB, b + 2 * MIB - PAGE_SIZE] {
            assert_eq!(pagetable::entry(page), theirs, "the other mapping's records at {page:#x}");
        }
        for page in [b, b + MIB - PAGE_SIZE, b + 2 * MIB, b + 3 * MIB - PAGE_SIZE] {
            assert_eq!(pagetable::entry(page), 0, "what is left of the old range at {page:#x}");
        }
        assert_eq!(pagetable::entry(c) & (PTE_PRESENT | PTE_HANDED), PTE_PRESENT, "mapped, the caller hands it out");
        pagetable::hand_out_growth(c, kept, 4 * MIB, Tier::Large, false);
        assert!(handed(c) && handed(c + 4 * MIB - PAGE_SIZE));
        // Leave the tree and the shadow as they were.
        pagetable::forget(b + MIB, MIB);
        pagetable::forget(c, 4 * MIB);
        assert!(vma::remove_exact(b + MIB, VmaKind::Chunk).is_ok());
        assert!(vma::remove_exact(c, VmaKind::Large).is_ok());
    }

    /// A shrink whose tail leaves the block (cached or unmapped) clears
    /// the tail's records in the shadow itself, before another thread can
    /// have the tail, and leaves the block's.
    #[test]
    fn a_shrink_forgets_the_tail_before_it_leaves() {
        use crate::ledger::pagetable::{self, Tier, PTE_HANDED};
        let (p, _) = alloc(4 * MIB, 0, 2 * PAGE_SIZE);
        assert!(!p.is_null());
        let a = p as usize;
        let len = usable_size(p).unwrap();
        pagetable::map_and_hand_out(a, len, Tier::Large, false);
        // SAFETY: a live large block.
        let q = unsafe { resize(p, MIB) };
        assert_eq!(q, p, "shrunk in place");
        assert_ne!(pagetable::entry(a + MIB - PAGE_SIZE) & PTE_HANDED, 0, "the block keeps its pages");
        assert_eq!(pagetable::entry(a + MIB), 0, "the tail's records are gone");
        pagetable::unmap(a, MIB);
        // SAFETY: a live block, not used again.
        assert!(unsafe { free(p) }.is_ok());
    }

    /// A fresh mapping recorded as a live block, as [`alloc`] makes one.
    fn fresh(len: usize) -> usize {
        let start = os::mmap_anonymous(len, false).expect("mmap");
        assert!(vma::record_sized(start, start + len, VmaKind::Large, len));
        start
    }

    fn stamp(start: usize, len: usize, tag: u64) {
        // SAFETY: both words lie in the block, which is ours and mapped.
        unsafe {
            (start as *mut u64).write(tag);
            ((start + len - 8) as *mut u64).write(!tag);
        }
    }

    fn stamped(start: usize, len: usize, tag: u64) -> bool {
        // SAFETY: as in `stamp`.
        unsafe { (start as *const u64).read() == tag && ((start + len - 8) as *const u64).read() == !tag }
    }

    #[test]
    fn cached_mapping_is_reused_split_merged_and_released() {
        let mut cache = MappingCache::new();
        let mut unmaps = Unmaps::new();
        let a = fresh(8 * MIB);
        stamp(a, 8 * MIB, 1);
        cache.put(a, 8 * MIB, 0, 64 * MIB, &mut unmaps);
        assert_eq!(vma::lookup(a).unwrap().kind, VmaKind::LargeCached);
        assert_eq!(classify(a, vma::lookup(a)), Err(&b"double free or invalid pointer (memory is free)"[..]));
        cache.check();

        // Reused whole: same memory, contents still there (not a new mapping).
        assert_eq!(cache.take(8 * MIB - PAGE_SIZE, 1, &mut unmaps), Some((a, 8 * MIB)));
        assert!(stamped(a, 8 * MIB, 1));
        assert_eq!(vma::lookup(a).unwrap().kind, VmaKind::Large);
        cache.put(a, 8 * MIB, 0, 64 * MIB, &mut unmaps);

        // Split: a small request takes the head, the tail stays cached.
        assert_eq!(cache.take(3 * MIB, 1, &mut unmaps), Some((a, 3 * MIB)));
        assert_eq!(cache.extents(), &[Extent { start: a + 3 * MIB, len: 5 * MIB, freed_at: 0 }]);
        cache.check();
        // Freed, the head merges with its tail again.
        cache.put(a, 3 * MIB, 5, 64 * MIB, &mut unmaps);
        assert_eq!(cache.extents(), &[Extent { start: a, len: 8 * MIB, freed_at: 5 }]);
        cache.check();

        // Too small for a request: it grows (mremap) instead of a new mapping.
        let (b, len) = cache.take(12 * MIB, 1, &mut unmaps).unwrap();
        assert_eq!(len, 12 * MIB);
        assert!(stamped(b, 8 * MIB, 1), "grown in place or moved, contents kept");
        assert_eq!(cache.bytes(), 0);
        cache.put(b, 12 * MIB, 10, 64 * MIB, &mut unmaps);

        // Aged out, then emptied.
        let c = fresh(4 * MIB);
        cache.put(c, 4 * MIB, 1000, 64 * MIB, &mut unmaps);
        cache.release(false, 1000 + 500, 1000, &mut unmaps);
        assert_eq!(cache.extents().len(), 1, "the older extent went first");
        cache.release(true, 0, u64::MAX, &mut unmaps);
        assert_eq!(cache.bytes(), 0);
        assert!(vma::lookup(b).is_none() && vma::lookup(c).is_none());
        assert_eq!(unmaps.run(), 16 * MIB);
    }

    #[test]
    fn a_growth_into_the_room_stays_and_a_shrink_gives_the_room_back() {
        // An alignment above a page maps afresh, so the room is certain
        // whatever other tests left in the cache.
        let (size, room) = (3 * MIB + 100, 3 * MIB);
        let (p, zero) = alloc(size, room, 2 * PAGE_SIZE);
        assert!(!p.is_null() && zero);
        let cap = usable_size(p).unwrap();
        assert!(cap >= size + room, "{cap} bytes for {size} and {room} of room");
        stamp(p as usize, size, 3);
        for grown in [size + room / 2, cap] {
            // SAFETY: `p` is a live large block.
            let q = unsafe { resize(p, grown) };
            assert_eq!(q, p, "a growth to {grown} fits the room: in place");
            assert_eq!(usable_size(p), Ok(cap), "the room is kept for the next growth");
            assert_eq!(vma::lookup(p as usize).unwrap().requested, grown);
        }
        assert!(stamped(p as usize, size, 3));
        // SAFETY: as above.
        let q = unsafe { resize(p, MIB) };
        assert_eq!(q, p);
        assert_eq!(usable_size(p), Ok(MIB), "a shrink cuts the room off");
        // SAFETY: a live block, not used again.
        assert!(unsafe { free(p) }.is_ok());
    }

    /// Whether the tree still holds the record `[start, end)` with
    /// `requested` (another test may map and record the range meanwhile,
    /// but not with this odd requested size).
    fn recorded(start: usize, end: usize, requested: usize) -> bool {
        vma::lookup(start).is_some_and(|r| (r.start, r.end, r.requested) == (start, end, requested))
    }

    #[test]
    fn a_moved_block_keeps_its_pages_and_its_record_and_frees_the_old_range() {
        // Past the largest threshold, so the cache never serves the growth;
        // each mover once: without the locks and under them (the secure
        // build's).
        let (len, new_len) = (3 * MIB + 5 * PAGE_SIZE, MAX_MMAP_THRESHOLD + 3 * PAGE_SIZE);
        type Mover = fn(vma::Region, usize, usize, &mut bool) -> Option<vma::Region>;
        fn unlocked(block: vma::Region, new_len: usize, new_size: usize, huge: &mut bool) -> Option<vma::Region> {
            move_block(block, new_len, new_size, huge).map(|(r, _)| r)
        }
        for (k, mover) in [unlocked as Mover, move_block_locked].into_iter().enumerate() {
            let requested = len - 1 - k;
            let (p, _) = alloc(requested, 0, 2 * PAGE_SIZE);
            assert!(!p.is_null());
            let a = p as usize;
            stamp_pages(a, len, 40 + k as u8);
            let block = vma::lookup(a).unwrap();
            assert_eq!((block.end - block.start, block.requested), (len, requested));
            let mut huge = false;
            let r = mover(block, new_len, new_len - 7, &mut huge).expect("moved");
            LARGE_BYTES.fetch_add(new_len - len, Ordering::Relaxed); // as `resize` does
            assert_eq!((r.end - r.start, r.kind, r.requested), (new_len, VmaKind::Large, new_len - 7));
            assert_eq!(vma::lookup(r.start), Some(r), "the record moved with the pages");
            assert_eq!(usable_size(r.start as *mut u8), Ok(new_len));
            for k2 in 0..len / PAGE_SIZE {
                assert_eq!(page_byte(r.start + k2 * PAGE_SIZE), (40 + k as u8).wrapping_add(k2 as u8), "page {k2}");
            }
            assert_eq!(page_byte(r.start + len), 0, "the growth reads as zero");
            if r.start != a {
                assert!(!recorded(a, a + len, requested), "the old range's record is gone");
            }
            // SAFETY: a live block, not used again.
            assert!(unsafe { free(r.start as *mut u8) }.is_ok());
        }
    }

    #[test]
    fn concurrent_moves_and_fresh_blocks_never_fail_or_overlap() {
        // Half the threads grow blocks by moving them (their old ranges
        // return to the kernel), the other half map fresh blocks, which may
        // land on those ranges: a record left behind would refuse them.
        use std::sync::Mutex as StdMutex;
        static LIVE: StdMutex<Vec<(usize, usize)>> = StdMutex::new(Vec::new());
        fn hold(p: *mut u8, len: usize) {
            assert!(!p.is_null(), "spurious NULL");
            let mut live = LIVE.lock().unwrap();
            let a = p as usize;
            assert!(live.iter().all(|&(s, l)| a + len <= s || s + l <= a), "blocks overlap");
            live.push((a, len));
        }
        fn drop_hold(p: *mut u8) {
            LIVE.lock().unwrap().retain(|&(s, _)| s != p as usize);
        }
        let threads: Vec<_> = (0..8)
            .map(|t| {
                std::thread::spawn(move || {
                    for i in 0..60 {
                        let size = MIB + (t * 61 + i) % 17 * PAGE_SIZE;
                        let (p, _) = alloc(size, 0, 2 * PAGE_SIZE);
                        hold(p, size);
                        stamp(p as usize, size, (t * 1000 + i) as u64);
                        let p = if t % 2 == 0 {
                            let grown = MAX_MMAP_THRESHOLD + PAGE_SIZE;
                            drop_hold(p);
                            // SAFETY: a live block of this thread's.
                            let q = unsafe { resize(p, grown) };
                            hold(q, grown);
                            q
                        } else {
                            p
                        };
                        assert!(stamped(p as usize, size, (t * 1000 + i) as u64), "contents lost");
                        drop_hold(p);
                        // SAFETY: a live block, not used again.
                        assert!(unsafe { free(p) }.is_ok());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        vma::TREE.lock().check();
    }

    #[test]
    fn shrinking_caches_the_tail_keeps_a_short_one_and_unmaps_a_big_one() {
        let a = fresh(4 * MIB);
        stamp_pages(a, 4 * MIB, 7);
        let mut cache = MappingCache::new();
        let mut unmaps = Unmaps::new();
        let bounds = (8 * MIB, 64 * MIB);
        let block = vma::lookup(a).unwrap();

        // To a quarter: the tail goes to the cache, resident, and the block
        // keeps its first MiB and its record.
        let r = shrink(&mut cache, block, MIB, MIB, bounds, &mut unmaps).unwrap();
        assert_eq!((r.start, r.end, r.kind), (a, a + MIB, VmaKind::Large));
        assert_eq!(cache.extents(), &[Extent { start: a + MIB, len: 3 * MIB, freed_at: cache.extents()[0].freed_at }]);
        assert_eq!(page_byte(a + MIB + PAGE_SIZE), 7u8.wrapping_add(257u32 as u8), "cached pages keep their contents (page 257)");
        assert_eq!(classify(a + MIB, vma::lookup(a + MIB)), Err(&b"double free or invalid pointer (memory is free)"[..]));
        cache.check();

        // By one page of 256: the page stays with the block.
        let r = shrink(&mut cache, r, MIB - PAGE_SIZE, MIB - PAGE_SIZE, bounds, &mut unmaps).unwrap();
        assert_eq!((r.start, r.end, r.requested), (a, a + MIB, MIB - PAGE_SIZE));
        assert_eq!(cache.bytes(), 3 * MIB);

        // A tail above the threshold is unmapped, not cached.
        let r = shrink(&mut cache, r, PAGE_SIZE, PAGE_SIZE, (PAGE_SIZE, 64 * MIB), &mut unmaps).unwrap();
        assert_eq!((r.start, r.end), (a, a + PAGE_SIZE));
        assert_eq!(cache.bytes(), 3 * MIB);
        assert!(vma::lookup(a + PAGE_SIZE).is_none());
        assert!((0..PAGE_SIZE).step_by(512).all(|k| page_byte(a + k) == if k == 0 { 7 } else { 0 }));
        assert_eq!(unmaps.run(), MIB - PAGE_SIZE);

        let mut unmaps = Unmaps::new();
        cache.put(a, PAGE_SIZE, 0, 64 * MIB, &mut unmaps);
        cache.check();
        cache.release(true, 0, u64::MAX, &mut unmaps);
        assert_eq!(unmaps.run(), 4 * MIB - (MIB - PAGE_SIZE));
    }

    /// Writes `tag + page index` into every page of `[start, start + len)`.
    fn stamp_pages(start: usize, len: usize, tag: u8) {
        for k in 0..len / PAGE_SIZE {
            // SAFETY: inside a mapping of ours.
            unsafe { *((start + k * PAGE_SIZE) as *mut u8) = tag.wrapping_add(k as u8) };
        }
    }

    fn page_byte(addr: usize) -> u8 {
        // SAFETY: callers pass addresses inside mappings of ours.
        unsafe { *(addr as *const u8) }
    }

    #[test]
    fn pages_of_several_extents_gather_into_one_block() {
        // Two extents with a hole between them (not ours), so they cannot merge.
        let base = os::mmap_anonymous(9 * MIB, false).unwrap();
        // SAFETY: the middle of our fresh mapping, never used.
        unsafe { unmap(base + 4 * MIB, MIB) };
        let (a, b) = (base, base + 5 * MIB);
        for (start, len, tag) in [(a, 4 * MIB, 10u8), (b, 4 * MIB, 100u8)] {
            assert!(vma::record_sized(start, start + len, VmaKind::Large, len));
            stamp_pages(start, len, tag);
        }
        let mut cache = MappingCache::new();
        let mut unmaps = Unmaps::new();
        cache.put(a, 4 * MIB, 0, 64 * MIB, &mut unmaps);
        cache.put(b, 4 * MIB, 1, 64 * MIB, &mut unmaps);
        assert_eq!(cache.extents().len(), 2);

        // 7 MiB: one extent grows to hold it, the other's tail fills the growth.
        let (block, len) = cache.take(7 * MIB, 7 * MIB, &mut unmaps).unwrap();
        assert_eq!(len, 7 * MIB);
        cache.check();
        assert_eq!(cache.bytes(), MIB, "one MiB of the second extent stays cached");
        let left = cache.extents()[0];
        let (first_tag, second) = if left.start == a { (100u8, a) } else { (10u8, b) };
        assert_eq!(left, Extent { start: second, len: MIB, freed_at: left.freed_at });
        // The block's first 4 MiB are the grown extent's pages, the rest are
        // the other extent's last 3 MiB: moved, not fresh (fresh pages read 0).
        for k in 0..7 * MIB / PAGE_SIZE {
            let want = if k < 1024 { first_tag.wrapping_add(k as u8) } else { (110 - first_tag).wrapping_add((k - 1024 + 256) as u8) };
            assert_eq!(page_byte(block + k * PAGE_SIZE), want, "page {k}");
        }
        assert_eq!(vma::lookup(block).map(|r| (r.start, r.end, r.kind)), Some((block, block + 7 * MIB, VmaKind::Large)));
        cache.put(block, 7 * MIB, 2, 64 * MIB, &mut unmaps);
        cache.release(true, 0, u64::MAX, &mut unmaps);
        assert_eq!(unmaps.run(), 8 * MIB);
    }

    #[test]
    fn extents_under_a_megabyte_are_not_moved() {
        // Two 512 KiB extents with a hole between them: a 768 KiB request
        // fits neither, and moving them would cost a TLB shootdown each for
        // 128 faults saved, so the cache declines and both stay cached.
        let base = os::mmap_anonymous(2 * MIB, false).unwrap();
        // SAFETY: the middle of our fresh mapping, never used.
        unsafe { unmap(base + MIB / 2, MIB / 2) };
        let (a, b) = (base, base + MIB);
        let mut cache = MappingCache::new();
        let mut unmaps = Unmaps::new();
        for (i, start) in [a, b].into_iter().enumerate() {
            assert!(vma::record_sized(start, start + MIB / 2, VmaKind::Large, MIB / 2));
            stamp_pages(start, MIB / 2, 7);
            cache.put(start, MIB / 2, i as u64, 64 * MIB, &mut unmaps);
        }
        const { assert!(MIB / 2 < MOVE_MIN) };
        assert_eq!(cache.take(3 * MIB / 4, 3 * MIB / 4, &mut unmaps), None);
        cache.check();
        assert_eq!(cache.bytes(), MIB, "both extents stay cached");
        // They still serve requests they fit, with their pages.
        let (block, len) = cache.take(MIB / 2, MIB / 2, &mut unmaps).unwrap();
        assert_eq!(len, MIB / 2);
        assert_eq!(page_byte(block + PAGE_SIZE), 8);
        cache.put(block, len, 2, 64 * MIB, &mut unmaps);
        cache.release(true, 0, u64::MAX, &mut unmaps);
        assert_eq!(unmaps.run(), MIB);
    }

    #[derive(Clone, Debug)]
    enum Op {
        Alloc(usize),
        Free(usize),
        Tick(u64),
        Release,
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            5 => (1usize..=3072).prop_map(|pages| Op::Alloc(pages * PAGE_SIZE)),
            4 => any::<usize>().prop_map(Op::Free),
            1 => (0u64..400).prop_map(Op::Tick),
            1 => Just(Op::Release),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(48))]
        /// The cache against a model of live blocks: a block never overlaps
        /// another live block or a cached extent (no memory handed out
        /// twice), keeps its contents, and is recorded as `Large`; the
        /// cache keeps its invariants and bounds; release empties it.
        #[test]
        fn model_cache(ops in prop::collection::vec(op(), 1..120), max_mib in 4usize..40) {
            let max_bytes = max_mib * MIB;
            let max_age = 1000;
            let mut cache = MappingCache::new();
            let mut live: Vec<(usize, usize, u64)> = Vec::new();
            let mut now = 0u64;
            let mut tag = 0u64;
            for op in ops {
                let mut unmaps = Unmaps::new();
                match op {
                    Op::Alloc(len) => {
                        tag += 1;
                        cache.release(false, now, max_age, &mut unmaps);
                        let (start, got) = cache.take(len, len, &mut unmaps).unwrap_or_else(|| (fresh(len), len));
                        prop_assert!(got >= len && got - len <= len / 8 || got == len);
                        let r = vma::lookup(start).unwrap();
                        prop_assert_eq!((r.start, r.end, r.kind), (start, start + got, VmaKind::Large));
                        for &(s, l, _) in &live {
                            prop_assert!(start + got <= s || s + l <= start, "handed out twice");
                        }
                        stamp(start, got, tag);
                        live.push((start, got, tag));
                    }
                    Op::Free(i) => {
                        if live.is_empty() { continue; }
                        let (start, len, t) = live.swap_remove(i % live.len());
                        prop_assert!(stamped(start, len, t), "contents lost");
                        cache.release(false, now, max_age, &mut unmaps);
                        if len <= max_bytes {
                            cache.put(start, len, now, max_bytes, &mut unmaps);
                        } else {
                            prop_assert!(vma::remove_exact(start, VmaKind::Large).is_ok());
                            unmaps.push(start, len);
                        }
                    }
                    Op::Tick(ms) => now += ms,
                    Op::Release => cache.release(true, now, max_age, &mut unmaps),
                }
                unmaps.run();
                cache.check();
                prop_assert!(cache.bytes() <= max_bytes);
                prop_assert!(cache.extents().iter().all(|e| now - e.freed_at < max_age || matches!(op, Op::Tick(_))));
                for e in cache.extents() {
                    for &(s, l, _) in &live {
                        prop_assert!(e.end() <= s || s + l <= e.start, "live block inside a cached extent");
                    }
                }
            }
            let mut unmaps = Unmaps::new();
            for (start, len, t) in live {
                prop_assert!(stamped(start, len, t));
                cache.put(start, len, now, usize::MAX, &mut unmaps);
            }
            cache.release(true, now, max_age, &mut unmaps);
            unmaps.run();
            prop_assert_eq!(cache.bytes(), 0);
            prop_assert!(cache.extents().is_empty());
        }
    }
}
