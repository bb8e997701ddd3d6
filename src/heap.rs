//! The one dispatch: a request's size and alignment pick a tier, a
//! pointer's address finds its owner.
//!
//! | request                                     | tier                         |
//! |---------------------------------------------|------------------------------|
//! | ≤ 32 KiB (alignment ≤ 4 KiB, a fitting class)| slab cache of its class      |
//! | below the mmap threshold, ≤ 256 KiB          | page tier: exact buddy run   |
//! | otherwise                                    | large: own or cached mapping |
//!
//! The mmap threshold applies above 32 KiB; smaller requests always use
//! slabs (a threshold set lower only moves page-tier requests to mmap).
//!
//! Ownership on `free`: the chunk map gives the page descriptor in O(1);
//! a slab object leads to its cache, a page run to the buddy allocator.
//! An address in no chunk is looked up in the region tree (large blocks).
//! Anything else — a pointer into free memory, inside an object, or not
//! ours at all — stops the process with a message before anything is
//! touched.
//!
//! Everything here returns null on failure; the C face turns that into
//! `errno = ENOMEM`, the Rust face into `handle_alloc_error` (by Rust).

use crate::buddy::{self, align_up, order_for_pages, pages_for};
use crate::large::{self, MMAP_THRESHOLD};
use crate::os::{self, PAGE_SHIFT, PAGE_SIZE};
use crate::page::{self, Page, CHUNK_SIZE, PG_PAGES, PG_SLAB, PG_TAIL};
use crate::pagetable;
use crate::slab::{self, cache, class_of, magazine, size_of_class, CLASSES, NR_CLASSES, SLAB_MAX};
use crate::stats;
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};

/// Alignment every block gets without asking (glibc's on x86-64).
pub const MIN_ALIGN: usize = 16;

/// Largest request ever granted (`PTRDIFF_MAX`, less room to round up).
const MAX_REQUEST: usize = isize::MAX as usize - CHUNK_SIZE;

/// Allocates `size` bytes, 16-byte aligned. Null when out of memory or
/// `size` is impossible. `malloc(0)` returns a unique, freeable pointer.
///
/// `#[inline]`, so the C and Rust faces get the fast path without a call:
/// the thread-cache access is an initial-exec TLS reference to a hidden
/// symbol, which the linker resolves in any crate linked into the same
/// binary or shared object (not across shared objects, which is the point
/// of hiding it).
///
/// Sets `errno` to `ENOMEM` when it returns null, so the C face returns
/// the answer as it is.
#[inline]
pub fn malloc(size: usize) -> *mut u8 {
    if size <= slab::TABLE_MAX {
        return magazine::alloc_small(size);
    }
    malloc_medium(size)
}

/// [`malloc`] above the class table's range: a slab class found by
/// arithmetic, or a big block.
#[inline(never)]
fn malloc_medium(size: usize) -> *mut u8 {
    if size <= SLAB_MAX {
        return magazine::alloc(class_of(size), size);
    }
    alloc_big(size, MIN_ALIGN)
}

/// Allocates `size` bytes aligned to `align` (a power of two; any value up
/// to what the address space allows). Null when out of memory.
pub fn aligned_alloc(align: usize, size: usize) -> *mut u8 {
    debug_assert!(align.is_power_of_two());
    if align <= MIN_ALIGN {
        return malloc(size);
    }
    if let Some(class) = slab::class_for_aligned(size, align) {
        return magazine::alloc(class, size);
    }
    alloc_big(size, align)
}

/// Requests too big for a slab (or with an alignment no class gives).
#[cold]
#[inline(never)]
fn alloc_big(size: usize, align: usize) -> *mut u8 {
    let p = alloc_big_known_zero(size, align).0;
    if p.is_null() {
        os::set_errno(libc::ENOMEM);
    } else {
        let perturb = crate::options::perturb();
        if perturb != 0 {
            // glibc's alloc_perturb (calloc does not come here).
            // SAFETY: `size` bytes are ours.
            unsafe { ptr::write_bytes(p, perturb ^ 0xff, size) };
        }
    }
    p
}

/// [`alloc_big`], also saying whether the memory is known to read as zero
/// (fresh pages from the OS, or a fresh mapping).
fn alloc_big_known_zero(size: usize, align: usize) -> (*mut u8, bool) {
    if size > MAX_REQUEST || align > MAX_REQUEST / 2 {
        return (ptr::null_mut(), false);
    }
    let fits_chunk = size <= CHUNK_SIZE && align <= CHUNK_SIZE;
    // An alignment that needs a bigger buddy block than the size does
    // would leave the rest of that block as fragments around a pinned run:
    // slabs settle in them and the aligned block never coalesces again, so
    // the zone grows by a chunk for every few such requests (measured with
    // examples/soak.rs). A mapping of its own trims its slack exactly.
    let over_aligned = align > PAGE_SIZE && align > pages_for(size.max(1)).next_power_of_two() << PAGE_SHIFT;
    // When the system refuses the tier's own source (no room for another
    // 4 MiB chunk, or for a new mapping, under RLIMIT_AS or the map count
    // limit), the other tier may still have room: free chunks keep their
    // address space, and a small mapping may fit where a chunk does not.
    let block = if size < MMAP_THRESHOLD.load(Ordering::Relaxed).min(PAGE_TIER_MAX) && fits_chunk && !over_aligned {
        match page_run(size, align) {
            (p, _) if p.is_null() => large_block(size, align),
            found => found,
        }
    } else {
        match large_block(size, align) {
            (p, _) if p.is_null() && fits_chunk => page_run(size, align),
            found => found,
        }
    };
    if crate::prof::on() && !block.0.is_null() {
        crate::prof::sample_block(block.0, size);
    }
    block
}

/// Largest request served by a run of buddy pages, whatever the mmap
/// threshold says. Above it, requests below the threshold are large blocks
/// kept in the cache of released mappings when freed (see
/// [`crate::large`]), which is bounded in bytes and in time. Runs of up to
/// 4 MiB, as an adapted threshold would allow, fragment the zone under
/// mixed sizes: free pages pile up in pieces too small for the next big
/// run and the zone keeps adding chunks (a 10-minute soak reached 6.6 GiB
/// of chunks for 200 MiB live).
pub const PAGE_TIER_MAX: usize = 256 * 1024;

/// An exact run of buddy pages for `size` bytes aligned to `align` (both
/// at most a chunk), and whether it reads as zero.
fn page_run(size: usize, align: usize) -> (*mut u8, bool) {
    let npages = pages_for(size.max(1));
    let align_order = order_for_pages(align.max(PAGE_SIZE) >> PAGE_SHIFT);
    match buddy::alloc_pages_exact(npages, align_order) {
        Some((head, zero)) => {
            crate::frag::PAGE_TIER.add(size, npages << PAGE_SHIFT);
            (page::page_address(head) as *mut u8, zero)
        }
        None => (ptr::null_mut(), false),
    }
}

/// A large block of its own mapping, recorded in the page-table shadow,
/// and whether it reads as zero.
fn large_block(size: usize, align: usize) -> (*mut u8, bool) {
    let (p, zero) = large::alloc(size, align);
    if !p.is_null() {
        if let Ok(len) = large::usable_size(p) {
            crate::frag::LARGE_TIER.add(size, len);
            pagetable::map_and_hand_out(p as usize, len, pagetable::Tier::Large);
        }
    }
    (p, zero)
}

/// Allocates `n * size` zeroed bytes; null on overflow or out of memory.
/// Memory known to be zero (fresh pages, fresh mappings) is not cleared
/// again.
pub fn calloc(n: usize, size: usize) -> *mut u8 {
    match n.checked_mul(size) {
        Some(total) => zeroed_alloc(total, MIN_ALIGN),
        None => ptr::null_mut(),
    }
}

/// Allocates `size` zeroed bytes aligned to `align`.
pub fn zeroed_alloc(size: usize, align: usize) -> *mut u8 {
    let small_class = if size <= SLAB_MAX && align <= MIN_ALIGN {
        Some(class_of(size))
    } else {
        slab::class_for_aligned(size, align)
    };
    let (p, zero) = match small_class {
        // Slab objects are recycled: always clear them.
        Some(class) => (magazine::alloc(class, size), false),
        None => alloc_big_known_zero(size, align),
    };
    if !p.is_null() && !zero {
        // SAFETY: a fresh block of at least `size` bytes.
        unsafe { ptr::write_bytes(p, 0, size) };
    }
    p
}

/// Who owns a pointer.
enum Owner {
    /// A slab object: its slab's head descriptor and cache index.
    Slab(*mut Page, usize),
    /// A page-tier run: its head descriptor.
    Pages(*mut Page),
    /// Not in any chunk: a large block, or not ours.
    Outside,
}

/// Finds the owner of `p`, or stops the process when `p` points into a
/// chunk but at nothing that was handed out.
#[inline]
fn owner_of(p: *mut u8, what: &'static [u8]) -> Owner {
    let desc = page::page_of(p as usize);
    if desc.is_null() {
        return Owner::Outside;
    }
    // SAFETY: descriptors of published chunks are live.
    unsafe {
        let mut head = desc;
        let mut kind = (*desc).kind();
        if kind == PG_TAIL {
            head = desc.sub((*desc).span as usize);
            kind = (*head).kind();
            if kind == PG_PAGES {
                bad_pointer(what, b"invalid pointer (inside a block)", p);
            }
        }
        match kind {
            PG_SLAB if ((*head).class as usize) < NR_CLASSES => {
                let class = (*head).class as usize;
                check_slot_start(what, p, class + 1);
                Owner::Slab(head, class)
            }
            PG_PAGES if page::page_address(head) == p as usize => Owner::Pages(head),
            PG_PAGES => bad_pointer(what, b"invalid pointer (inside a block)", p),
            page::PG_FREE => bad_pointer(what, b"double free or invalid pointer (memory is free)", p),
            _ => bad_pointer(what, b"invalid pointer (not allocated by buddyslab)", p),
        }
    }
}

/// Stops the process unless `p` starts a slot of a slab of class
/// `user_class - 1`: a pointer inside an object, or in a slab's unused
/// tail, is not a block.
#[inline(always)]
fn check_slot_start(what: &'static [u8], p: *mut u8, user_class: usize) {
    // SAFETY: 1 <= user_class <= NR_CLASSES by the callers.
    let info = unsafe { CLASSES.get_unchecked(user_class - 1) };
    if !info.is_object_start(p as usize) {
        bad_pointer(what, b"invalid pointer (inside an object)", p);
    }
}

/// Stops the process when the slab object `p` is free (it carries the
/// free mark): `realloc` or `malloc_usable_size` of a freed object would
/// otherwise hand back, or size, an object that is on a free list and will
/// be handed out again.
#[inline]
fn check_not_freed(what: &'static [u8], p: *mut u8) {
    // SAFETY: `p` starts a slot of a slab (checked by `owner_of`), at
    // least 16 bytes.
    if unsafe { slab::link::is_marked_free(p) } {
        bad_pointer(what, b"double free detected (the block is free)", p);
    }
}

#[cold]
#[inline(never)]
fn bad_pointer(what: &[u8], why: &[u8], p: *mut u8) -> ! {
    let mut buf = [0u8; 32];
    os::fatal(&[b"buddyslab: ", what, b": ", why, b": ", stats::fmt_hex(&mut buf, p as usize)])
}

/// Frees `p` (null is a no-op). Stops the process with a message for a
/// pointer that is not a live block of this allocator.
///
/// The fast path: the page's class-and-node tag (kept beside the page
/// descriptors, see [`page::Chunk::tags`]), XORed with the thread's node,
/// is "slab object of class c on my node" exactly when it
/// lands in `1..=NR_CLASSES`; the offset inside the (naturally aligned)
/// slab must be a whole number of objects, or `p` points inside an object.
/// Objects of other nodes, page runs, large blocks and bad pointers take
/// `free_other`.
///
/// `#[inline]`, as [`malloc`].
///
/// # Safety
/// If `p` is a live block, nothing uses it afterwards.
#[inline]
pub unsafe fn free(p: *mut u8) {
    let tc = magazine::current();
    // SAFETY: the thread cache is this thread's.
    let chunk = unsafe { (*tc).chunk_of(p as usize) };
    if !chunk.is_null() {
        // SAFETY: a published chunk; the thread cache is this thread's.
        let local_class = unsafe { (page::Chunk::tag(chunk, p as usize) as u32 ^ (*tc).node_tag()) as usize };
        // 1..=NR_CLASSES for an object of this node; 0 for any page but
        // a slab's, whose bin (`slots[0]`) never has room, so it fails the
        // room test before the class table is read.
        // SAFETY: the thread cache is this thread's; the index is in its
        // bins, checked first.
        if local_class <= NR_CLASSES && unsafe { magazine::has_room(tc, local_class) } {
            // [`check_slot_start`] written out: through the helper the
            // compiler adds a zero-extension here (callgrind: one more
            // instruction per pair).
            // SAFETY: 1 <= local_class <= NR_CLASSES: slot 0 has no room.
            // (Written as add-then-sub so the scaled index is shared with
            // the bin's.)
            let info = unsafe { &*CLASSES.as_ptr().add(local_class).sub(1) };
            if !info.is_object_start(p as usize) {
                bad_pointer(b"free()", b"invalid pointer (inside an object)", p);
            }
            // SAFETY: a slab object of this class on this thread's node,
            // given up by the caller, and its bin has room.
            unsafe { magazine::free_local(tc, p, local_class) };
            return;
        }
    }
    free_other(p)
}

/// [`free`] of anything but an object of the thread's own node: an object
/// of another node (to the magazine's remote bins), a page run, a large
/// block, null, or a bad pointer.
#[cold]
#[inline(never)]
fn free_other(p: *mut u8) {
    let desc = page::page_of(p as usize);
    if !desc.is_null() {
        // SAFETY: descriptors of published chunks are live.
        let user_class = unsafe { (*desc).user_class as usize };
        if user_class != 0 {
            check_slot_start(b"free()", p, user_class);
            // SAFETY: a slab object of this class in that page, given up by
            // the caller, at an object start (checked above).
            if crate::prof::on() && unsafe { crate::prof::free_object(p, desc, user_class) } {
                return;
            }
            // SAFETY: a slab object of this class, given up by the caller.
            unsafe { magazine::free_slow(p, user_class) };
            return;
        }
    }
    free_slow(p)
}

#[cold]
#[inline(never)]
fn free_slow(p: *mut u8) {
    if p.is_null() {
        return;
    }
    if crate::prof::on() {
        crate::prof::free_block(p);
    }
    match owner_of(p, b"free()") {
        // SAFETY: `head` heads a slab of cache `class`.
        Owner::Slab(head, _) => unsafe { cache::free(slab::cache_of_slab(head), head, p) },
        // SAFETY: a live run, given up by the caller.
        Owner::Pages(head) => unsafe {
            let perturb = crate::options::perturb();
            if perturb != 0 {
                // glibc's free_perturb (mapped blocks, as in glibc, are not).
                ptr::write_bytes(p, perturb, ((*head).span as usize) << PAGE_SHIFT);
            }
            buddy::free_pages_exact(head)
        },
        Owner::Outside => free_outside(p),
    }
}

#[cold]
#[inline(never)]
fn free_outside(p: *mut u8) {
    // The shadow forgets the block before the kernel does, so a mapping
    // another thread gets at the same address is not forgotten instead.
    if let Ok(len) = large::usable_size(p) {
        pagetable::unmap(p as usize, len);
    }
    // SAFETY: given up by the caller if it is a large block.
    if let Err(why) = unsafe { large::free(p) } {
        bad_outside(b"free()", why, p);
    }
    remember_freed_large(p);
}

/// How many recently freed large blocks are remembered (see
/// [`FREED_LARGE`]).
const FREED_LARGE_SLOTS: usize = 64;

/// Starts of the last large blocks unmapped. Their regions are gone, so
/// nothing else remembers them; a second `free` of one finds no region and
/// would otherwise be reported as a foreign pointer. A slot is only read
/// when a pointer has already turned out to be bad, so a stale or racing
/// entry can at worst change the wording of the message, never let a bad
/// pointer through. (A block kept in the mapping cache is still in the
/// region tree, and [`large`] names its second free itself.)
static FREED_LARGE: [AtomicUsize; FREED_LARGE_SLOTS] = [const { AtomicUsize::new(0) }; FREED_LARGE_SLOTS];
/// Next slot of [`FREED_LARGE`] to overwrite.
static FREED_LARGE_NEXT: AtomicUsize = AtomicUsize::new(0);

fn remember_freed_large(p: *mut u8) {
    let slot = FREED_LARGE_NEXT.fetch_add(1, Ordering::Relaxed) % FREED_LARGE_SLOTS;
    FREED_LARGE[slot].store(p as usize, Ordering::Relaxed);
}

/// Stops the process for `p`, a pointer in no chunk that is not the start
/// of a live large block, for the reason [`large`] gave, made precise when
/// `p` is a large block freed (and unmapped) a short while ago. `p` is
/// never dereferenced: it may point at the program's own mappings, a
/// stack, or nothing at all.
#[cold]
#[inline(never)]
fn bad_outside(what: &'static [u8], why: large::NotLarge, p: *mut u8) -> ! {
    // Only a pointer in no region at all (large's "not allocated" reason)
    // may be a block unmapped since; a cached one is named by `large`.
    let recently_freed = why == b"invalid pointer (not allocated by buddyslab)"
        && FREED_LARGE.iter().any(|a| a.load(Ordering::Relaxed) == p as usize);
    let why: &[u8] = match (recently_freed, what) {
        (true, b"free()") => b"double free (large block already unmapped)",
        (true, _) => b"invalid pointer (large block already freed)",
        (false, _) => why,
    };
    bad_pointer(what, why, p)
}

/// Usable bytes of the block at `p` (0 for null).
pub fn usable_size(p: *mut u8) -> usize {
    if p.is_null() {
        return 0;
    }
    match owner_of(p, b"malloc_usable_size()") {
        Owner::Slab(_, class) => {
            check_not_freed(b"malloc_usable_size()", p);
            size_of_class(class)
        }
        // SAFETY: a live run's head.
        Owner::Pages(head) => (unsafe { (*head).span } as usize) << PAGE_SHIFT,
        Owner::Outside => match large::usable_size(p) {
            Ok(n) => n,
            Err(why) => bad_outside(b"malloc_usable_size()", why, p),
        },
    }
}

/// C `realloc`: resizes `p` to `size` bytes, in place when its class or
/// pages allow, otherwise by moving. `realloc(NULL, n)` is `malloc(n)`;
/// `realloc(p, 0)` frees `p` and returns null (as glibc). On failure returns
/// null and `p` is untouched.
///
/// # Safety
/// `p` is null or a live block; after a non-null return it is not used.
pub unsafe fn realloc(p: *mut u8, size: usize) -> *mut u8 {
    if p.is_null() {
        return malloc(size);
    }
    if size == 0 {
        // SAFETY: per the caller.
        unsafe { free(p) };
        return ptr::null_mut();
    }
    // SAFETY: per the caller.
    unsafe { realloc_aligned(p, size, MIN_ALIGN) }
}

/// Resizes `p` to `size` (> 0) bytes keeping alignment `align`.
///
/// # Safety
/// `p` is a live block aligned to `align`; after a non-null return it is
/// not used.
pub unsafe fn realloc_aligned(p: *mut u8, size: usize, align: usize) -> *mut u8 {
    if size > MAX_REQUEST {
        return ptr::null_mut();
    }
    let old_usable = match owner_of(p, b"realloc()") {
        Owner::Slab(_, class) => {
            check_not_freed(b"realloc()", p);
            let usable = size_of_class(class);
            // Stay when the new size fits and would not fit a class half
            // the size or less (no point moving to save a little).
            if size <= usable && (class == 0 || size * 2 > usable) {
                return p;
            }
            usable
        }
        Owner::Pages(head) => {
            // SAFETY: a live run's head.
            let npages = unsafe { (*head).span } as usize;
            let need = pages_for(size);
            if size > SLAB_MAX && need <= npages {
                if need < npages {
                    // SAFETY: the pages past `need` hold nothing the caller keeps.
                    unsafe { buddy::shrink_pages_exact(head, need) };
                }
                return p;
            }
            // Still a run's size: grow into free pages right after it.
            let stays_run = size > SLAB_MAX && size < MMAP_THRESHOLD.load(Ordering::Relaxed).min(PAGE_TIER_MAX);
            // SAFETY: a live run of fewer than `need` pages.
            if stays_run && unsafe { buddy::grow_pages_exact(head, need) } {
                return p;
            }
            npages << PAGE_SHIFT
        }
        Owner::Outside => {
            let usable = match large::usable_size(p) {
                Ok(n) => n,
                Err(why) => bad_outside(b"realloc()", why, p),
            };
            // A block stays large while the new size is one the slabs and
            // page runs would not take.
            let stays_large = size >= MMAP_THRESHOLD.load(Ordering::Relaxed).min(PAGE_TIER_MAX) || size > CHUNK_SIZE;
            // mremap keeps page alignment only; bigger alignments move by copy.
            if stays_large && align <= PAGE_SIZE {
                // SAFETY: `p` is a live large block.
                let (q, huge) = unsafe { large::resize(p, size) };
                if !q.is_null() {
                    if let Ok(new_len) = large::usable_size(q) {
                        pagetable::remapped(p as usize, usable, q as usize, new_len, pagetable::Tier::Large, huge);
                    }
                    if q != p {
                        remember_freed_large(p);
                        if crate::prof::on() {
                            crate::prof::free_block(p);
                        }
                    }
                    return q;
                }
            }
            if stays_large && size <= usable {
                return p;
            }
            usable
        }
    };
    let new = aligned_alloc(align, size);
    if new.is_null() {
        return new;
    }
    // SAFETY: both blocks are live and distinct; we copy what both hold.
    unsafe {
        ptr::copy_nonoverlapping(p, new, old_usable.min(size));
        free(p);
    }
    new
}

/// Gives memory back to the OS at once: the calling thread's bins and
/// every CPU depot go back to the slab caches, every shrinker gives back
/// what it holds (the caches' empty slabs), every dirty free block goes to
/// the kernel (`MADV_DONTNEED`), and cached large mappings are unmapped.
/// Returns true when any memory was released (`malloc_trim`'s 1).
pub fn trim() -> bool {
    ensure_init();
    magazine::flush_current();
    slab::percpu::drain_all();
    let pages = buddy::shrink_all();
    let released = buddy::release_free_memory() + large::release_cached(true, os::monotonic_ns());
    pages > 0 || released > 0
}

// ---------------------------------------------------------------------------
// Start-up, options, fork.

const INIT_NONE: u8 = 0;
const INIT_RUNNING: u8 = 1;
const INIT_DONE: u8 = 2;
static INIT: AtomicU8 = AtomicU8::new(INIT_NONE);
/// Runs the one-time set-up (options, fork handlers) if it has not run.
/// Safe to call re-entrantly: `pthread_atfork` may call `malloc`, which
/// then proceeds with defaults while set-up finishes. Every allocator
/// structure is statically initialised, so nothing depends on this having
/// run except options and fork safety.
#[inline]
pub fn ensure_init() {
    if INIT.load(Ordering::Acquire) != INIT_DONE {
        init_slow();
    }
}

#[cold]
#[inline(never)]
fn init_slow() {
    if INIT.compare_exchange(INIT_NONE, INIT_RUNNING, Ordering::AcqRel, Ordering::Acquire).is_err() {
        return;
    }
    os::check_page_size();
    slab::link::init_keys();
    crate::options::read_environment();
    buddy::register_shrinker(cache::shrink_idle);
    if crate::options::STATS_AT_EXIT.load(Ordering::Relaxed) != crate::options::STATS_OFF
        || crate::heapmap::requested()
        || crate::addrspace::svg_requested()
    {
        // SAFETY: a plain function with no preconditions; atexit may
        // allocate, which is fine: no allocator lock is held here.
        unsafe { libc::atexit(stats::print_at_exit) };
    }
    crate::prof::init();
    magazine::init_thread_exit_key();
    // SAFETY: the handlers are plain functions that only take and release
    // the allocator's locks; registering may allocate, which is fine: no
    // allocator lock is held here.
    unsafe {
        libc::pthread_atfork(Some(fork_prepare), Some(fork_parent), Some(fork_child));
    }
    INIT.store(INIT_DONE, Ordering::Release);
}

/// Declares that this copy of buddyslab is the process's `malloc` (the C
/// face calls this first thing): chunks may then come from `brk`.
pub fn set_process_malloc() {
    buddy::USE_BRK.store(true, Ordering::Relaxed);
    ensure_init();
}

// fork: why the locks are taken where they are.
//
// The child of a multi-threaded process gets a copy of memory in which
// other threads may have been half-way through changing the allocator's
// structures; the prepare handler therefore takes every allocator lock,
// so the copy is consistent, and the handlers after `fork` release them.
// Where it takes them decides whether `fork` can deadlock:
//
// - glibc's `fork` runs the atfork prepare handlers first and only then
//   takes stdio's list lock (`_IO_list_lock`, held across the system call
//   so the child's `FILE` list is consistent). A prepare handler that
//   takes allocator locks therefore holds them while it waits for the
//   stdio lock, and the holder of the stdio lock may be waiting (through
//   a `FILE` lock) for a thread that is inside `malloc` waiting for an
//   allocator lock: a cycle (glibc bug 19431; glibc's own test
//   `tst-malloc-fork-deadlock`). glibc's malloc avoids it by taking its
//   locks inside `fork`, after the stdio lock. An interposed malloc
//   cannot run there, so buddyslab's prepare handler takes the stdio
//   list lock itself, first, and its own locks after it: glibc's order.
//   The list lock is recursive, so `fork`'s own `_IO_list_lock` then
//   only counts up; in the parent `fork` counts it down once and our
//   parent handler once more; in the child `fork` resets it
//   (`_IO_list_resetlock`) before the child handlers run, so ours leaves
//   it alone. Nothing in buddyslab takes a stdio lock while it holds an
//   allocator lock, so the stdio lock is always first.
// - The other known answer, mimalloc's (no lock held across `fork`, the
//   child repairs what it finds), needs every shared structure to be
//   repairable from any half-done change; buddyslab's zone, slab lists
//   and region tree are not, so the locks stay.
// - A single-threaded process (glibc's `__libc_single_threaded`, the
//   flag `fork` itself tests) takes no lock at all, as glibc does: no
//   other thread can hold one, and when `fork` runs in a signal handler
//   that interrupted `malloc` in this very thread (glibc's
//   `tst-mallocfork2`), taking the lock the interrupted code holds would
//   wait forever. The child then continues, as the parent does, with the
//   interrupted call when the handler returns.
//
// Our handlers are registered when the allocator starts, before the
// program's own (registration allocates), and prepare handlers run in
// the reverse order of registration: ours runs last, after any handler
// of the program's that allocates.

extern "C" {
    /// glibc's stdio list lock (recursive), exported since 2.2.5.
    fn _IO_list_lock();
    /// Releases one level of [`_IO_list_lock`].
    fn _IO_list_unlock();
    /// Non-zero while the process has never had a second thread (glibc
    /// 2.32 and later); `fork` decides on it whether to take locks.
    static __libc_single_threaded: u8;
}

/// Whether the running `fork`'s prepare handler took the locks. Forks of a
/// multi-threaded process are serialised by glibc from the prepare handlers
/// to the parent and child handlers, so one flag serves.
static FORK_LOCKED: AtomicBool = AtomicBool::new(false);

/// Takes the stdio list lock, then every allocator lock in the lock order
/// (see [`crate::buddy`]); nothing in a single-threaded process.
extern "C" fn fork_prepare() {
    // SAFETY: a byte glibc keeps for exactly this question.
    if unsafe { ptr::read_volatile(&raw const __libc_single_threaded) } != 0 {
        return;
    }
    // SAFETY: a recursive lock; released by fork_parent, reset by glibc in
    // the child.
    unsafe { _IO_list_lock() };
    large::CACHE.lock_for_fork();
    slab::percpu::lock_all_for_fork();
    slab::NODES_GROW.lock_for_fork();
    buddy::GROW.lock_for_fork();
    slab::lock_all_for_fork();
    crate::pcp::lock_all_for_fork();
    buddy::ZONE.lock_for_fork();
    crate::vma::TREE.lock_for_fork();
    pagetable::TABLE_POOL.lock_for_fork();
    FORK_LOCKED.store(true, Ordering::Relaxed);
}

fn fork_release(in_child: bool) {
    // SAFETY: fork_prepare took each of these in this thread (the child's
    // only thread is the one that forked) and left no guards.
    unsafe {
        pagetable::TABLE_POOL.unlock_after_fork(in_child);
        crate::vma::TREE.unlock_after_fork(in_child);
        buddy::ZONE.unlock_after_fork(in_child);
        crate::pcp::unlock_all_after_fork(in_child);
        slab::unlock_all_after_fork(in_child);
        buddy::GROW.unlock_after_fork(in_child);
        slab::NODES_GROW.unlock_after_fork(in_child);
        slab::percpu::unlock_all_after_fork(in_child);
        large::CACHE.unlock_after_fork(in_child);
    }
}

extern "C" fn fork_parent() {
    if FORK_LOCKED.swap(false, Ordering::Relaxed) {
        fork_release(false);
        // SAFETY: the level fork_prepare took; fork released its own.
        unsafe { _IO_list_unlock() };
    }
}

extern "C" fn fork_child() {
    if FORK_LOCKED.swap(false, Ordering::Relaxed) {
        fork_release(true);
    }
}

/// Rounds `size` up to whole pages (`pvalloc`); `None` on overflow.
pub fn page_round(size: usize) -> Option<usize> {
    let r = align_up(size, PAGE_SIZE);
    (r >= size).then_some(r.max(PAGE_SIZE))
}

/// Is this pointer's block a slab object? For tests.
pub fn is_slab_object(p: *mut u8) -> bool {
    let d = page::page_of(p as usize);
    // SAFETY: descriptors of published chunks are live.
    !d.is_null() && unsafe { matches!((*d).kind(), PG_SLAB | PG_TAIL) }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn tiers_by_size() {
        let small = malloc(100);
        let pages = malloc(40 * 1024);
        // Above the largest mmap threshold: large whatever it has adapted to.
        let big = malloc(40 << 20);
        assert!(is_slab_object(small));
        assert_eq!(usable_size(small), 112);
        assert_eq!(usable_size(pages), 40 * 1024);
        assert!(!page::page_of(pages as usize).is_null());
        assert!(page::page_of(big as usize).is_null(), "large blocks live outside chunks");
        assert_eq!(usable_size(big), 40 << 20);
        // SAFETY: live blocks from above.
        unsafe {
            free(small);
            free(pages);
            free(big);
        }
    }

    #[test]
    fn impossible_sizes_give_null() {
        assert!(malloc(usize::MAX).is_null());
        assert!(malloc(isize::MAX as usize + 1).is_null());
        assert!(calloc(usize::MAX / 2 + 1, 4).is_null());
        assert!(aligned_alloc(1 << 62, 16).is_null());
    }

    #[test]
    fn alignments_up_to_8_mib() {
        let mut align = 16;
        while align <= 8 << 20 {
            for size in [1, align / 2 + 1, align, align + 1, 3 * align] {
                let p = aligned_alloc(align, size);
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0, "align {align} size {size}");
                assert!(usable_size(p) >= size);
                // SAFETY: `size` bytes are ours.
                unsafe {
                    ptr::write_bytes(p, 0xa5, size);
                    free(p);
                }
            }
            align *= 2;
        }
    }

    #[test]
    fn realloc_keeps_contents_across_tiers() {
        let sizes = [16usize, 100, 5000, 40 * 1024, 200 * 1024, 5 << 20, 300, 8];
        // SAFETY: each step uses only the live block from the step before.
        unsafe {
            let mut p = malloc(8);
            let mut have = 8usize;
            for (i, &b) in b"buddyslb".iter().enumerate() {
                *p.add(i) = b;
            }
            for &size in &sizes {
                p = realloc(p, size);
                assert!(!p.is_null());
                let keep = have.min(size).min(8);
                assert_eq!(core::slice::from_raw_parts(p, keep), &b"buddyslb"[..keep]);
                have = size;
            }
            free(p);
        }
    }

    #[test]
    fn calloc_zeroes_reused_memory() {
        for size in [24usize, 3000, 60 * 1024, 300 * 1024] {
            let p = malloc(size);
            // SAFETY: `size` bytes are ours.
            unsafe {
                ptr::write_bytes(p, 0xff, size);
                free(p);
            }
            let q = calloc(1, size);
            // SAFETY: `size` zeroed bytes are ours.
            unsafe {
                assert!(core::slice::from_raw_parts(q, size).iter().all(|&b| b == 0), "size {size}");
                free(q);
            }
        }
    }

    #[derive(Clone, Debug)]
    enum Op {
        Malloc(usize),
        Aligned(u32, usize),
        Calloc(usize),
        Realloc(usize, usize),
        Free(usize),
    }

    fn size() -> impl Strategy<Value = usize> {
        prop_oneof![6 => 0usize..600, 3 => 0usize..40_000, 1 => 0usize..600_000]
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => size().prop_map(Op::Malloc),
            1 => (4u32..16, size()).prop_map(|(a, s)| Op::Aligned(a, s)),
            1 => size().prop_map(Op::Calloc),
            2 => (any::<usize>(), size()).prop_map(|(i, s)| Op::Realloc(i, s)),
            3 => any::<usize>().prop_map(Op::Free),
        ]
    }

    struct Block {
        p: *mut u8,
        size: usize,
        align: usize,
        seed: u8,
    }

    fn fill(b: &Block) {
        for i in (0..b.size).step_by(61).chain(b.size.checked_sub(1)) {
            // SAFETY: inside the block.
            unsafe { *b.p.add(i) = b.seed.wrapping_add(i as u8) };
        }
    }

    fn verify(b: &Block, upto: usize) -> bool {
        (0..b.size.min(upto)).step_by(61).all(|i| {
            // SAFETY: inside the block.
            unsafe { *b.p.add(i) == b.seed.wrapping_add(i as u8) }
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(64))]
        /// The heap against a model of live blocks: alignment, usable size,
        /// no overlap, contents kept across realloc, zeroed calloc.
        #[test]
        fn model_heap(ops in prop::collection::vec(op(), 1..200)) {
            let mut live: Vec<Block> = Vec::new();
            let mut seed = 0u8;
            for op in ops {
                seed = seed.wrapping_add(37);
                match op {
                    Op::Malloc(s) | Op::Calloc(s) | Op::Aligned(_, s) => {
                        let (p, align) = match op {
                            Op::Malloc(_) => (malloc(s), MIN_ALIGN),
                            Op::Calloc(_) => (calloc(1, s), MIN_ALIGN),
                            Op::Aligned(a, _) => (aligned_alloc(1 << a, s), 1 << a),
                            _ => unreachable!(),
                        };
                        prop_assert!(!p.is_null());
                        prop_assert_eq!(p as usize % align, 0);
                        prop_assert!(usable_size(p) >= s);
                        if matches!(op, Op::Calloc(_)) {
                            // SAFETY: s zeroed bytes.
                            let bytes = unsafe { core::slice::from_raw_parts(p, s) };
                            prop_assert!(bytes.iter().all(|&b| b == 0));
                        }
                        let b = Block { p, size: s, align, seed };
                        fill(&b);
                        live.push(b);
                    }
                    Op::Realloc(i, s) => {
                        if live.is_empty() { continue; }
                        let i = i % live.len();
                        let s = s.max(1);
                        let b = &mut live[i];
                        // SAFETY: live block.
                        let q = unsafe { realloc_aligned(b.p, s, b.align) };
                        prop_assert!(!q.is_null());
                        prop_assert_eq!(q as usize % b.align, 0);
                        b.p = q;
                        prop_assert!(verify(b, s));
                        b.size = s;
                        b.seed = seed;
                        fill(b);
                    }
                    Op::Free(i) => {
                        if live.is_empty() { continue; }
                        let b = live.swap_remove(i % live.len());
                        prop_assert!(verify(&b, usize::MAX));
                        // SAFETY: live block.
                        unsafe { free(b.p) };
                    }
                }
                let mut spans: Vec<(usize, usize)> = live.iter().map(|b| (b.p as usize, b.p as usize + b.size.max(1))).collect();
                spans.sort();
                prop_assert!(spans.windows(2).all(|w| w[0].1 <= w[1].0), "blocks overlap");
            }
            for b in live {
                prop_assert!(verify(&b, usize::MAX));
                // SAFETY: live block.
                unsafe { free(b.p) };
            }
        }
    }
}
