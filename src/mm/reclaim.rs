//! Giving memory back: decay and trim.
//!
// A free block whose memory may be resident is *dirty*; one known to read
// as zero (fresh from the kernel, or released with `MADV_DONTNEED`) is
// *clean* (`Page::zero`). The two are kept on separate lists per order
// ([`FreeArea`]) and allocation takes a dirty block first, so memory that
// went back to the kernel is the last to be faulted in again. Every dirty
// block's head carries a decay stamp (`Page::span`): the coarse time its
// memory was last in use. Memory goes back to the kernel in two ways:
//
// - decay: slow paths (page handout and return) call [`decay_tick`]; a
//   few times per decay period it runs the registered shrinkers (slab
//   caches give back slabs empty for a whole period) and releases dirty
//   free blocks idle for at least the period. Nothing used more recently
//   goes back: a program that keeps reusing its free memory never sees it
//   released and faulted in again. (Releasing young blocks, as a release
//   before every growth of the zone once did, made a program churning
//   400 MiB of mixed sizes on two threads fault in 470,000 pages where
//   glibc faulted 133,000, with 148,000 `madvise` calls: issue 18.)
// - trim ([`release_free_memory`], from `malloc_trim`): every dirty free
//   block at once, whatever its age.
//
// Release takes the chosen blocks off the free lists under the zone lock
// (isolated: no allocation or merge sees them), a batch at a time, sorts
// them by address and gives back each run of adjacent blocks with one
// `madvise`, without the lock, then puts them back as clean. A wholly free
// chunk also gives back its page descriptors but the first page (which
// holds the head's), so an idle chunk costs 4 KiB of metadata instead of
// 40. A scan never runs while some thread holds a lock that allocation
// needs and that may be held across a call into the buddy (see
// [`defer_decay`]): the scan's system calls would stall every thread that
// waits for it.


use super::page::{self, Chunk, Page, CHUNK_DESC_SIZE, MAX_ORDER};
use super::pcp;
use super::zone::{clock_ms, ReleaseFilter, CLOCK_MS, ZONE};
use crate::os::{self, PAGE_SHIFT, PAGE_SIZE};
use core::ptr;
use core::sync::atomic::{AtomicU32, AtomicUsize, Ordering};

pub use crate::options::DECAY_MS;

/// Slow-path events between two clock reads.
const TICK_EVERY: u32 = 8;
static EVENTS: AtomicU32 = AtomicU32::new(0);
static LAST_SCAN_MS: AtomicU32 = AtomicU32::new(0);
/// Bytes given back to the kernel so far, by decay and trim.
pub static RELEASED_BYTES: AtomicUsize = AtomicUsize::new(0);
/// `madvise` calls made so far to give free memory back (decay and trim).
pub static RELEASE_CALLS: AtomicUsize = AtomicUsize::new(0);
/// Decay scans run so far.
pub static DECAY_SCANS: AtomicUsize = AtomicUsize::new(0);
/// Guards from [`defer_decay`] alive now, in all threads.
static DECAY_DEFERRED: AtomicUsize = AtomicUsize::new(0);

/// What a shrinker is asked to do: give back what it holds that has been
/// idle for at least `min_age_ms` at `now_ms`, or everything (`None`,
/// `malloc_trim`). It returns the pages (or page-equivalents) it gave back.
#[derive(Clone, Copy, Debug)]
pub struct ShrinkControl {
    /// The coarse clock now.
    pub now_ms: u32,
    /// Idle time that makes memory releasable; `None` for all of it.
    pub min_age_ms: Option<u32>,
}

/// A tier above the buddy allocator that caches memory (slab caches' empty
/// slabs, a cache of large mappings), as the kernel's `struct shrinker`.
/// Must not be called with any allocator lock held, and must take locks
/// only in the global order.
pub type Shrinker = fn(ShrinkControl) -> usize;

const MAX_SHRINKERS: usize = 4;
static SHRINKERS: [AtomicUsize; MAX_SHRINKERS] = [const { AtomicUsize::new(0) }; MAX_SHRINKERS];

/// Registers a shrinker that decay and [`shrink_all`] call. Registering
/// the same function twice is a no-op. False when all slots are taken.
pub fn register_shrinker(f: Shrinker) -> bool {
    let value = f as usize;
    for slot in SHRINKERS.iter() {
        match slot.compare_exchange(0, value, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => return true,
            Err(existing) if existing == value => return true,
            Err(_) => {}
        }
    }
    false
}

fn run_shrinkers(control: ShrinkControl) -> usize {
    let mut n = 0;
    for slot in SHRINKERS.iter() {
        let f = slot.load(Ordering::Acquire);
        if f != 0 {
            // SAFETY: only `Shrinker` function pointers are stored.
            let f: Shrinker = unsafe { core::mem::transmute::<usize, Shrinker>(f) };
            n += f(control);
        }
    }
    n
}

/// While one of these lives, no decay scan starts, in any thread. A tier
/// takes one with a lock that allocation needs when, holding it, it may
/// call into the buddy (the large tier's cache lock, held while the region
/// tree takes a node from a slab cache): a scan started there would run
/// its `madvise` calls with that lock held. A scan skipped runs at a later
/// tick.
#[must_use]
pub struct DecayDeferred(());

/// Defers decay scans until the returned guard is dropped.
#[inline]
pub fn defer_decay() -> DecayDeferred {
    DECAY_DEFERRED.fetch_add(1, Ordering::Acquire);
    DecayDeferred(())
}

impl Drop for DecayDeferred {
    #[inline]
    fn drop(&mut self) {
        DECAY_DEFERRED.fetch_sub(1, Ordering::Release);
    }
}

/// The decay hook: every tier calls it on its slow paths (never per
/// object). Cheap: one atomic add, a clock read every few calls, and a
/// scan at most four times per decay period, by one thread at a time,
/// whose cost is the blocks it releases (see [`Zone::isolate_idle`]).
/// Must be called with no allocator lock held, or under a
/// [`defer_decay`] guard.
#[link_section = ".text.hot.buddyslab"]
pub fn decay_tick() {
    if EVENTS.fetch_add(1, Ordering::Relaxed) % TICK_EVERY != 0 {
        return;
    }
    let now = os::monotonic_ms();
    CLOCK_MS.store(now, Ordering::Relaxed);
    let period = DECAY_MS.load(Ordering::Relaxed);
    let last = LAST_SCAN_MS.load(Ordering::Relaxed);
    if now.wrapping_sub(last) < period / 4 || DECAY_DEFERRED.load(Ordering::Acquire) != 0 {
        return;
    }
    if LAST_SCAN_MS.compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed).is_err() {
        return; // another thread scans
    }
    decay_now(now);
}

/// Runs one decay scan at `now_ms` (the shrinkers, then the buddy's dirty
/// free blocks idle for a decay period). Returns the pages given back.
/// Tests and tiers that know the time may call it directly.
pub fn decay_now(now_ms: u32) -> usize {
    DECAY_SCANS.fetch_add(1, Ordering::Relaxed);
    let period = DECAY_MS.load(Ordering::Relaxed);
    let shrunk = run_shrinkers(ShrinkControl { now_ms, min_age_ms: Some(period) });
    // Blocks on the per-CPU page lists are invisible to the zone; back on
    // its lists they keep the stamp of their free and go once idle.
    pcp::drain_all();
    shrunk + (release(ReleaseFilter::idle_for(Some(period), now_ms)) >> PAGE_SHIFT)
}

/// Before the zone grows by a chunk: every shrinker gives back what it
/// holds (the slab caches' kept empty slabs, up to 2 MiB a cache of
/// one-page slabs), and the per-CPU page lists go back to the zone, so
/// pages a size class no longer uses serve the request before the heap
/// maps more; nothing goes back to the kernel. Skipped while a caller holds a
/// lock a shrinker may need ([`defer_decay`]). Returns the pages the
/// shrinkers gave back.
pub fn shrink_before_growth() -> usize {
    if DECAY_DEFERRED.load(Ordering::Acquire) != 0 {
        return 0;
    }
    let shrunk = shrink_all();
    if shrunk != 0 {
        pcp::drain_all();
    }
    shrunk
}

/// Runs every shrinker for everything it holds (for `malloc_trim`, and
/// before the zone grows: [`shrink_before_growth`]).
pub fn shrink_all() -> usize {
    run_shrinkers(ShrinkControl { now_ms: clock_ms(), min_age_ms: None })
}

/// Gives every dirty free block back to the kernel (`malloc_trim`).
/// Returns the bytes released.
pub fn release_free_memory() -> usize {
    pcp::drain_all();
    release(ReleaseFilter::idle_for(None, clock_ms()))
}

/// Blocks isolated, released and put back at a time: the zone lock is
/// held for this many at most, and one system call releases them.
const RELEASE_BATCH: usize = 128;

/// Sorts isolated blocks by address, by insertion: at most
/// [`RELEASE_BATCH`] of them, before one system call. Not the standard
/// library's sort, whose generic code the compiler places in the cold
/// text, where every program that gives memory back would map one more
/// 64 KiB window of the library (see "Hot text" in
/// docs/ARCHITECTURE.md).
#[link_section = ".text.hot.buddyslab"]
fn sort_by_address(batch: &mut [*mut Page]) {
    insertion_sort_by_key(batch, |&p| page::page_address(p));
}

/// Sorts `v` by `key`, by insertion (inlined into its caller's section).
#[inline(always)]
fn insertion_sort_by_key<T, K: Ord>(v: &mut [T], key: impl Fn(&T) -> K) {
    for i in 1..v.len() {
        let mut j = i;
        while j > 0 && key(&v[j - 1]) > key(&v[j]) {
            v.swap(j - 1, j);
            j -= 1;
        }
    }
}

/// Isolates the blocks `filter` picks, a batch at a time, releases them
/// with `MADV_DONTNEED`, and frees them again as clean. Returns bytes
/// released.
#[link_section = ".text.hot.buddyslab"]
fn release(filter: ReleaseFilter) -> usize {
    let mut released = 0;
    loop {
        let mut batch = [ptr::null_mut::<Page>(); RELEASE_BATCH];
        // SAFETY: the global zone's descriptors are live.
        let n = unsafe { ZONE.lock().isolate_idle(&mut batch, filter) };
        if n == 0 {
            break;
        }
        let batch = &mut batch[..n];
        sort_by_address(batch);
        // SAFETY: the isolated blocks are on no zone list and no one else
        // uses them until they are put back below.
        released += unsafe { release_isolated(batch) };
        let mut zone = ZONE.lock();
        for &head in batch.iter() {
            // SAFETY: isolated from this zone above.
            unsafe { zone.put_back_released(head, (*head).zero) };
        }
        drop(zone);
        if n < RELEASE_BATCH {
            break;
        }
    }
    RELEASED_BYTES.fetch_add(released, Ordering::Relaxed);
    released
}

/// Calls `f(start, len, blocks)` for each run of dirty blocks of `batch`
/// (sorted by address) that lie next to each other in memory, `blocks`
/// being their indices in `batch`: the range one `madvise` gives back.
///
/// # Safety
/// Every block in `batch` was isolated by [`Zone::isolate_idle`].
pub(super) unsafe fn for_each_dirty_run(batch: &[*mut Page], mut f: impl FnMut(usize, usize, core::ops::Range<usize>)) {
    let mut i = 0;
    while i < batch.len() {
        // SAFETY: isolated blocks are ours; their descriptors are live.
        unsafe {
            if (*batch[i]).zero {
                i += 1; // a clean chunk, isolated for its descriptors only
                continue;
            }
            let start = page::page_address(batch[i]);
            let mut end = start + (PAGE_SIZE << (*batch[i]).order);
            let mut j = i + 1;
            while j < batch.len() && !(*batch[j]).zero && page::page_address(batch[j]) == end {
                end += PAGE_SIZE << (*batch[j]).order;
                j += 1;
            }
            f(start, end - start, i..j);
            i = j;
        }
    }
}

/// Gives the memory of isolated free blocks back to the kernel: one range
/// per run of dirty blocks adjacent in memory (`batch` is sorted by
/// address), and one per wholly free chunk whose descriptors are still
/// resident, all in as few system calls as the kernel allows (see
/// [`os::madvise_dontneed_ranges`]). Marks the blocks released `zero`.
/// Returns the bytes released.
///
/// # Safety
/// Every block in `batch` was isolated by [`Zone::isolate_idle`] and is
/// used by no one; `batch` holds at most [`RELEASE_BATCH`] blocks.
unsafe fn release_isolated(batch: &[*mut Page]) -> usize {
    const _: () = assert!(RELEASE_BATCH <= u8::MAX as usize);
    let mut ranges = [os::Range::default(); RELEASE_BATCH];
    // Per range: the blocks of `batch` it covers.
    let mut covers = [(0u8, 0u8); RELEASE_BATCH];
    let mut n = 0;
    // SAFETY: per the caller.
    unsafe {
        for_each_dirty_run(batch, |start, len, blocks| {
            ranges[n] = os::Range { start, len };
            covers[n] = (blocks.start as u8, blocks.end as u8);
            n += 1;
        });
    }
    let mut done = [false; RELEASE_BATCH];
    let mut released = 0;
    if n > 0 {
        ranges[..n].iter().for_each(|r| super::hooks::releasing(r.start, r.len));
        // SAFETY: each range is memory of isolated blocks nobody uses.
        let calls = unsafe { os::madvise_dontneed_ranges(&ranges[..n], &mut done) };
        RELEASE_CALLS.fetch_add(calls, Ordering::Relaxed);
    }
    for i in (0..n).filter(|&i| done[i]) {
        let os::Range { start, len } = ranges[i];
        released += len;
        // SAFETY: isolated blocks are ours.
        batch[covers[i].0 as usize..covers[i].1 as usize].iter().for_each(|&p| unsafe { (*p).zero = true });
        super::hooks::advised(start, len);
    }
    // Wholly free chunks, their memory released: their descriptors past
    // the first page are all PG_FREE tails, and reading back zero
    // (PG_NONE) serves them as well. They are written again when the
    // chunk is split.
    // Per range: the block of `batch` whose chunk it describes.
    n = 0;
    for (i, &head) in batch.iter().enumerate() {
        // SAFETY: isolated blocks are ours; their descriptors are live.
        unsafe {
            let chunk = Chunk::of_page(head);
            if (*head).order as usize == MAX_ORDER && (*head).zero && !(*chunk).descriptors_released {
                ranges[n] = os::Range { start: chunk as usize + PAGE_SIZE, len: CHUNK_DESC_SIZE - PAGE_SIZE };
                covers[n] = (i as u8, i as u8 + 1);
                n += 1;
            }
        }
    }
    if n > 0 {
        done = [false; RELEASE_BATCH];
        ranges[..n].iter().for_each(|r| super::hooks::releasing(r.start, r.len));
        // SAFETY: the descriptors of wholly free, isolated chunks, which
        // nobody reads until the chunk is put back and split.
        let calls = unsafe { os::madvise_dontneed_ranges(&ranges[..n], &mut done) };
        RELEASE_CALLS.fetch_add(calls, Ordering::Relaxed);
        for i in (0..n).filter(|&i| done[i]) {
            released += ranges[i].len;
            // SAFETY: as above.
            unsafe { (*Chunk::of_page(batch[covers[i].0 as usize])).descriptors_released = true };
            super::hooks::advised(ranges[i].start, ranges[i].len);
        }
    }
    released
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// The release path's insertion sort orders any batch by its key
        /// as the standard library's sort does (model: `sort_by_key`),
        /// keeping every element (each carries its index to tell equal
        /// keys apart).
        #[test]
        fn insertion_sort_sorts(keys in proptest::collection::vec(0usize..64, 0..=RELEASE_BATCH)) {
            let mut v: std::vec::Vec<(usize, usize)> = keys.iter().copied().zip(0..).collect();
            let mut model = v.clone();
            model.sort_by_key(|e| e.0);
            insertion_sort_by_key(&mut v, |e| e.0);
            let keys_of = |v: &[(usize, usize)]| v.iter().map(|e| e.0).collect::<std::vec::Vec<_>>();
            prop_assert_eq!(keys_of(&v), keys_of(&model));
            let mut indices: std::vec::Vec<usize> = v.iter().map(|e| e.1).collect();
            indices.sort_unstable();
            prop_assert_eq!(indices, (0..keys.len()).collect::<std::vec::Vec<_>>());
        }
    }
}
