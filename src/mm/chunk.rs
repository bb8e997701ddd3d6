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
pub(super) fn grow(order: usize) -> bool {
    if ZONE.lock().can_alloc(order) {
        return true; // another thread grew the zone meanwhile
    }
    let Ok(desc) = map_aligned(CHUNK_DESC_SIZE, CHUNK_DESC_ALIGN) else { return false };
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
    let base = map_aligned(CHUNK_SIZE, CHUNK_SIZE).ok()?;
    MMAP_CHUNKS.fetch_add(1, Ordering::Relaxed);
    Some((base, ChunkSource::Mmap))
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

