//! Growing the zone: a chunk of 4 MiB, aligned, from `brk` or `mmap`, its
//! page descriptors mapped beside it and published in the chunk map, and
//! the layers above told (through `hooks`) once no lock is held.

use super::page::{self, Chunk, ChunkSource, CHUNK_DESC_ALIGN, CHUNK_DESC_SIZE, CHUNK_SIZE};
use super::zone::{prepare_chunk, ZONE};
use crate::os::sync::Mutex;
use crate::os::{self, align_up, map_aligned};
use core::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

/// Chunks obtained from `brk`.
pub static BRK_CHUNKS: AtomicUsize = AtomicUsize::new(0);
/// Chunks obtained from `mmap`.
pub static MMAP_CHUNKS: AtomicUsize = AtomicUsize::new(0);
/// Times `brk` refused a chunk (another mapping in the way, `RLIMIT_DATA`).
pub static BRK_REFUSED: AtomicUsize = AtomicUsize::new(0);

/// Held while the program break moves, by one thread at a time; a thread
/// that finds it held maps its chunk with `mmap` rather than wait for the
/// other's system calls (see `grow`). Nothing else is done under it.
pub static GROW: Mutex<()> = Mutex::new(());

/// Whether chunks may come from `brk`. Set by the C face: only the
/// process's `malloc` may own the program break.
pub static USE_BRK: AtomicBool = AtomicBool::new(false);

/// Total bytes of metadata mapped (chunk descriptors, chunk map leaves).
pub static META_BYTES: AtomicUsize = AtomicUsize::new(0);

/// Adds one chunk to the zone for a block of `order`, unless one is free
/// by now. Returns false when no memory could be had.
///
/// No lock is held across a system call that another allocation would
/// wait for: the descriptors are mapped and written, the chunk mapped and
/// published in the chunk map, before the zone lock is taken to add it.
/// Threads that need to grow at once each add a chunk (address space,
/// faulted in only when used) rather than queue behind one another's
/// system calls, which on a machine with more threads than CPUs meant
/// waiting for a thread that was not running.
#[cold]
#[inline(never)]
#[link_section = ".text.hot.buddyslab"]
pub(super) fn grow(order: usize) -> bool {
    if ZONE.lock().can_alloc(order) {
        return true; // another thread grew the zone meanwhile
    }
    if super::reclaim::shrink_before_growth() != 0 && ZONE.lock().can_alloc(order) {
        return true; // kept empty slabs came back
    }
    let Some(desc) = DESCS_AHEAD.take(CHUNK_DESC_SIZE, CHUNK_DESC_ALIGN) else { return false };
    let Some((base, source)) = map_chunk() else {
        // SAFETY: mapped just now, unused.
        unsafe {
            let _ = os::munmap(desc, CHUNK_DESC_SIZE);
        }
        return false;
    };
    META_BYTES.fetch_add(CHUNK_DESC_SIZE, Ordering::Relaxed);
    let desc = desc as *mut Chunk;
    // SAFETY: `desc` is fresh zeroed memory of the right size and
    // alignment, ours alone until published; fresh memory from the kernel
    // reads as zero.
    unsafe {
        Chunk::init(desc, base, source);
        prepare_chunk(desc, true);
    }
    // SAFETY: initialised and unpublished.
    let leaf = match unsafe { page::register_chunk(desc) } {
        Ok(leaf) => leaf,
        Err(_) => {
            // SAFETY: nothing refers to either mapping yet.
            unsafe {
                unmap_chunk(base, source);
                let _ = os::munmap(desc as usize, CHUNK_DESC_SIZE);
            }
            return false;
        }
    };
    // SAFETY: the chunk is published, prepared, and its pages are unused.
    unsafe { ZONE.lock().add_chunk(desc) };
    // Tell the ledger with no lock held: recording may allocate a tree
    // node, which may need pages, which may grow the zone again.
    if let Some((_, len)) = leaf {
        META_BYTES.fetch_add(len, Ordering::Relaxed);
    }
    super::hooks::chunk_added(super::hooks::ChunkAdded {
        base,
        source,
        descriptors: (desc as usize, CHUNK_DESC_SIZE),
        leaf,
    });
    true
}

/// Gets 4 MiB of aligned address space: from `brk` if allowed, possible
/// and no other thread is moving the break right now, otherwise from
/// `mmap`.
fn map_chunk() -> Option<(usize, ChunkSource)> {
    if USE_BRK.load(Ordering::Relaxed) {
        if let Some(_moving) = GROW.try_lock() {
            let current = os::brk_current();
            let start = align_up(current, CHUNK_SIZE);
            if let Some(want) = start.checked_add(CHUNK_SIZE) {
                // SAFETY: growing the break only adds fresh pages.
                if unsafe { os::brk_set(want) } == want {
                    BRK_CHUNKS.fetch_add(1, Ordering::Relaxed);
                    return Some((start, ChunkSource::Brk));
                }
            }
            BRK_REFUSED.fetch_add(1, Ordering::Relaxed);
        }
    }
    let base = CHUNKS_AHEAD.take(CHUNK_SIZE, CHUNK_SIZE)?;
    MMAP_CHUNKS.fetch_add(1, Ordering::Relaxed);
    Some((base, ChunkSource::Mmap))
}

/// Most chunks (and chunk descriptors) mapped in one system call.
pub const MAX_AHEAD: usize = 16;

/// How many chunks (or chunk descriptors) to map at once: one while the
/// program has few chunks, then a quarter of those it has, up to
/// [`MAX_AHEAD`] (64 MiB of chunks). Each aligned mapping costs an `mmap`
/// and up to two `munmap`s of its slack, and each takes the kernel's
/// `mmap_lock` for writing, which every page fault of every thread then
/// waits for: at 16 threads on 2 CPUs the power-law workload grew by 760
/// chunks, one at a time with its descriptors, and `mm::chunk::grow` was
/// where its threads most often blocked. Chunks from `brk` count as well
/// as those from `mmap`: every chunk needs a descriptor, and counting
/// only the mapped chunks left a program that grows by `brk` mapping
/// each descriptor alone (806 slack `munmap`s of the power-law
/// workload's 6 400 mapping calls at 16 threads). Address space only:
/// pages mapped ahead are not touched until a chunk is used.
fn batch() -> usize {
    ((MMAP_CHUNKS.load(Ordering::Relaxed) + BRK_CHUNKS.load(Ordering::Relaxed)) / 4).clamp(1, MAX_AHEAD)
}

/// Address space mapped ahead, handed out one aligned slot at a time.
pub struct Ahead {
    range: Mutex<Ranges>,
}

/// Ranges an [`Ahead`] keeps: more than one because threads that find
/// them all empty at once each map a batch (see [`Ahead::take`]).
const RANGES: usize = 4;

/// What an [`Ahead`] holds: ranges of address space mapped ahead, each
/// `(start, end)`, empty when `start >= end`. Slots are handed out from
/// the first range that has one.
struct Ranges([(usize, usize); RANGES]);

impl Ranges {
    const EMPTY: Ranges = Ranges([(0, 0); RANGES]);

    /// The next slot of `align` bytes, from the first range that has one.
    fn take(&mut self, align: usize) -> Option<usize> {
        let range = self.0.iter_mut().find(|r| r.0 < r.1)?;
        let slot = range.0;
        range.0 += align;
        Some(slot)
    }

    /// Keeps `rest` in an empty range; false when none is empty.
    fn keep(&mut self, rest: (usize, usize)) -> bool {
        match self.0.iter_mut().find(|r| r.0 >= r.1) {
            Some(empty) => {
                *empty = rest;
                true
            }
            None => false,
        }
    }
}

/// Chunks mapped ahead (4 MiB slots).
pub static CHUNKS_AHEAD: Ahead = Ahead { range: Mutex::new(Ranges::EMPTY) };
/// Chunk descriptors mapped ahead (slots of [`CHUNK_DESC_ALIGN`]).
pub static DESCS_AHEAD: Ahead = Ahead { range: Mutex::new(Ranges::EMPTY) };

impl Ahead {
    /// `len` bytes (page-rounded) at an `align`-aligned address, fresh
    /// and zero: the next slot of `align` bytes mapped ahead, or a new
    /// mapping of [`batch`] slots whose first is returned and whose others
    /// are kept. Threads that found every range empty at once each map a
    /// batch, and each keeps its rest in an empty range while there is
    /// one ([`RANGES`]); only a thread that finds none gives its rest
    /// back (at 16 threads on 2 CPUs, with one range, 172 of the power-law
    /// workload's 203 batches were given back at once: an `mmap` of 68 MiB
    /// and an `munmap` of 60 MiB, each taking the kernel's `mmap_lock` for
    /// writing). A batch the system refuses is tried again as one slot.
    /// `None` when the system refuses that too. No system call is made
    /// under the lock.
    #[link_section = ".text.hot.buddyslab"]
    fn take(&self, len: usize, align: usize) -> Option<usize> {
        self.take_batched(len, align, batch())
    }

    /// [`Ahead::take`], mapping `n` slots when it maps.
    fn take_batched(&self, len: usize, align: usize, n: usize) -> Option<usize> {
        debug_assert!(len <= align && n >= 1);
        if let Some(slot) = self.range.lock().take(align) {
            return Some(slot);
        }
        if n == 1 {
            return map_aligned(len, align).ok();
        }
        let Ok(start) = map_aligned(n * align, align) else { return map_aligned(len, align).ok() };
        let rest = (start + align, start + n * align);
        let kept = self.range.lock().keep(rest);
        if !kept {
            // SAFETY: the rest of our fresh mapping, never handed out.
            unsafe {
                let _ = os::munmap(rest.0, rest.1 - rest.0);
            }
        }
        Some(start)
    }

    /// Bytes mapped ahead and not yet handed out.
    #[cfg(test)]
    pub fn bytes(&self) -> usize {
        self.range.lock().0.iter().map(|r| r.1.saturating_sub(r.0)).sum()
    }

    /// For the atfork handlers: takes the lock and leaves it held.
    pub fn lock_for_fork(&self) {
        self.range.lock_for_fork();
    }

    /// For the atfork handlers: releases what [`Ahead::lock_for_fork`] took.
    ///
    /// # Safety
    /// As [`Mutex::unlock_after_fork`].
    pub unsafe fn unlock_after_fork(&self, in_child: bool) {
        // SAFETY: per the caller.
        unsafe { self.range.unlock_after_fork(in_child) };
    }
}

/// # Safety
/// The chunk at `base` is unused and unpublished.
unsafe fn unmap_chunk(base: usize, source: ChunkSource) {
    match source {
        // A chunk at the top of the break could be given back with brk, but
        // this only runs on a failed grow; leave the break where it is.
        ChunkSource::Brk => {}
        // SAFETY: per the caller.
        ChunkSource::Mmap => unsafe {
            let _ = os::munmap(base, CHUNK_SIZE);
        },
    }
}


#[cfg(test)]
mod tests {
    use super::*;

    /// The ranges hand out every slot of every kept rest once, in steps of
    /// the alignment, and keep at most `RANGES` rests at a time.
    #[test]
    fn ranges_keep_rests_until_full_and_hand_each_slot_out_once() {
        let align = CHUNK_DESC_ALIGN;
        let mut ranges = Ranges::EMPTY;
        assert_eq!(ranges.take(align), None);
        let rests: Vec<(usize, usize)> = (1..=RANGES + 1).map(|i| (i << 30, (i << 30) + i * align)).collect();
        for (i, &rest) in rests.iter().enumerate() {
            assert_eq!(ranges.keep(rest), i < RANGES, "rest {i}");
        }
        let mut slots = Vec::new();
        while let Some(slot) = ranges.take(align) {
            slots.push(slot);
        }
        let expected: Vec<usize> = rests[..RANGES].iter().flat_map(|&(start, end)| (start..end).step_by(align)).collect();
        assert_eq!(slots, expected);
        // Emptied, every range takes a rest again.
        assert!(ranges.keep(rests[RANGES]));
        assert_eq!(ranges.take(align), Some(rests[RANGES].0));
    }

    /// Slots from several threads at once: aligned, each its own, zero
    /// and writable, whatever the batch; what is left ahead is counted.
    #[test]
    fn slots_mapped_ahead_are_aligned_fresh_and_distinct() {
        static AHEAD: Ahead = Ahead { range: Mutex::new(Ranges::EMPTY) };
        let align = CHUNK_DESC_ALIGN;
        let threads: Vec<_> = (0..4)
            .map(|t| {
                std::thread::spawn(move || {
                    (0..24)
                        .map(|i| {
                            // Batches of 1 to 5 slots.
                            let slot = AHEAD.take_batched(CHUNK_DESC_SIZE, align, 1 + (i + t as usize) % 5).expect("address space");
                            // SAFETY: a fresh slot of CHUNK_DESC_SIZE bytes, ours.
                            unsafe {
                                let words = slot as *mut u64;
                                assert_eq!(words.read(), 0);
                                assert_eq!(words.add(CHUNK_DESC_SIZE / 8 - 1).read(), 0);
                                words.write(t);
                            }
                            slot
                        })
                        .collect::<Vec<_>>()
                })
            })
            .collect();
        let mut slots: Vec<usize> = threads.into_iter().flat_map(|h| h.join().unwrap()).collect();
        assert!(slots.iter().all(|s| s % align == 0));
        slots.sort_unstable();
        assert!(slots.windows(2).all(|w| w[1] - w[0] >= align), "slots overlap");
        assert_eq!(AHEAD.bytes() % align, 0);
        // At most RANGES ranges of at most four slots each are left.
        assert!(AHEAD.bytes() <= RANGES * 4 * align);
    }
}
