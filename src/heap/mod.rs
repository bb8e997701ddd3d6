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

mod check;
mod life;
// The secure build's layer over this dispatch (the faces pick it with one
// `use`); it uses this file, which never names it.
#[cfg(feature = "secure")]
pub mod secure;

use check::{bad_outside, bad_pointer, check_not_freed, owner_of, remember_freed_large, Owner};
pub use life::{ensure_init, set_process_malloc};

use crate::large::{self, MMAP_THRESHOLD};
use crate::ledger::pagetable;
use crate::mm::page::{self, CHUNK_SIZE, PG_SLAB, PG_TAIL};
use crate::mm::{self, align_up, order_for_pages, pages_for};
use crate::os::{self, PAGE_SHIFT, PAGE_SIZE};
use crate::slab::{self, class_of, magazine, size_of_class, NR_CLASSES, SLAB_MAX};
use core::ptr;
use core::sync::atomic::Ordering;

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
/// Touches no `errno`: the C face calls [`malloc_or`].
#[inline]
pub fn malloc(size: usize) -> *mut u8 {
    malloc_or(size, nothing)
}

/// [`malloc`], calling `out_of_memory` before it returns null: the C face
/// sets `errno` so, with no test of the answer on the fast path.
#[inline]
pub fn malloc_or(size: usize, out_of_memory: magazine::OutOfMemory) -> *mut u8 {
    if size <= slab::TABLE_MAX {
        return magazine::alloc_small(size, ensure_init, out_of_memory);
    }
    malloc_medium(size, out_of_memory)
}

/// The [`magazine::OutOfMemory`] of the callers that test the answer.
fn nothing() {}

/// [`malloc`] above the class table's range: a slab class found by
/// arithmetic, or a big block.
#[inline(never)]
#[link_section = ".text.hot.buddyslab"]
fn malloc_medium(size: usize, out_of_memory: magazine::OutOfMemory) -> *mut u8 {
    if size <= SLAB_MAX {
        return magazine::alloc(class_of(size), size, ensure_init, out_of_memory);
    }
    let p = alloc_big(size, MIN_ALIGN, 0);
    if p.is_null() {
        out_of_memory();
    }
    p
}

/// Allocates `size` bytes aligned to `align` (a power of two; any value up
/// to what the address space allows). Null when out of memory.
#[link_section = ".text.hot.buddyslab"]
pub fn aligned_alloc(align: usize, size: usize) -> *mut u8 {
    debug_assert!(align.is_power_of_two());
    if align <= MIN_ALIGN {
        return malloc(size);
    }
    if let Some(class) = slab::class_for_aligned(size, align) {
        return magazine::alloc(class, size, ensure_init, nothing);
    }
    alloc_big(size, align, 0)
}

/// Requests too big for a slab (or with an alignment no class gives); a
/// large block gets `room` bytes more to grow into where the system gives
/// them (see [`realloc_aligned`]).
#[cold]
#[inline(never)]
#[link_section = ".text.hot.buddyslab"]
fn alloc_big(size: usize, align: usize, room: usize) -> *mut u8 {
    let p = alloc_big_known_zero(size, align, room).0;
    if !p.is_null() {
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
#[link_section = ".text.hot.buddyslab"]
fn alloc_big_known_zero(size: usize, align: usize, room: usize) -> (*mut u8, bool) {
    // The page tier and the large tier grow without setting up: the
    // process's set-up (the ledger's hooks above all) comes first.
    ensure_init();
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
            (p, _) if p.is_null() => large_block(size, room, align),
            found => found,
        }
    } else {
        match large_block(size, room, align) {
            (p, _) if p.is_null() && fits_chunk => page_run(size, align),
            found => found,
        }
    };
    if crate::profile::on() && !block.0.is_null() {
        // SAFETY: this thread's budget; no reference to it is live.
        unsafe { crate::profile::sample_block(magazine::prof_budget(), block.0, size) };
    }
    block
}

/// Largest request served by a run of buddy pages, whatever the mmap
/// threshold says. Above it, requests below the threshold are large blocks
/// kept in the cache of released mappings when freed (see
/// `crate::large`), which is bounded in bytes and in time. Runs of up to
/// 4 MiB, as an adapted threshold would allow, fragment the zone under
/// mixed sizes: free pages pile up in pieces too small for the next big
/// run and the zone keeps adding chunks (a 10-minute soak reached 6.6 GiB
/// of chunks for 200 MiB live).
pub const PAGE_TIER_MAX: usize = 256 * 1024;

/// A run of buddy pages for `size` bytes aligned to `align` (both at most
/// a chunk): exact from the zone, or up to an eighth longer from the
/// thread's run lists; and whether it reads as zero.
#[link_section = ".text.hot.buddyslab"]
fn page_run(size: usize, align: usize) -> (*mut u8, bool) {
    let npages = pages_for(size.max(1));
    let align_order = order_for_pages(align.max(PAGE_SIZE) >> PAGE_SHIFT);
    // A run this thread freed, of about the same length (any run is
    // page-aligned).
    let cached = if align_order == 0 { mm::runs::take(npages) } else { ptr::null_mut() };
    let got = if cached.is_null() { mm::alloc_pages_exact(npages, align_order) } else { Some((cached, false)) };
    match got {
        Some((head, zero)) => {
            // SAFETY: the run is ours.
            let npages = unsafe { (*head).span } as usize;
            crate::counters::PAGE_TIER.add(size, npages << PAGE_SHIFT);
            crate::counters::count_blocks(1, 0);
            (page::page_address(head) as *mut u8, zero)
        }
        None => (ptr::null_mut(), false),
    }
}

/// A large block of its own mapping, with `room` bytes more to grow into,
/// recorded in the page-table shadow, and whether it reads as zero.
#[link_section = ".text.hot.buddyslab"]
fn large_block(size: usize, room: usize, align: usize) -> (*mut u8, bool) {
    let (p, zero) = large::alloc(size, room, align);
    if !p.is_null() {
        if let Ok(len) = large::usable_size(p) {
            crate::counters::LARGE_TIER.add(size, len);
            crate::counters::count_blocks(1, 0);
            pagetable::map_and_hand_out(p as usize, len, pagetable::Tier::Large, !zero);
        }
    }
    (p, zero)
}

/// Allocates `n * size` zeroed bytes; null on overflow or out of memory.
/// Memory known to be zero (fresh pages, fresh mappings) is not cleared
/// again.
#[link_section = ".text.hot.buddyslab"]
pub fn calloc(n: usize, size: usize) -> *mut u8 {
    match n.checked_mul(size) {
        Some(total) => zeroed_alloc(total, MIN_ALIGN),
        None => ptr::null_mut(),
    }
}

/// Allocates `size` zeroed bytes aligned to `align`.
#[link_section = ".text.hot.buddyslab"]
pub fn zeroed_alloc(size: usize, align: usize) -> *mut u8 {
    let small_class = if size <= SLAB_MAX && align <= MIN_ALIGN {
        Some(class_of(size))
    } else {
        slab::class_for_aligned(size, align)
    };
    let (p, zero) = match small_class {
        // Slab objects are recycled: always clear them.
        Some(class) => (magazine::alloc(class, size, ensure_init, nothing), false),
        None => alloc_big_known_zero(size, align, 0),
    };
    if !p.is_null() && !zero {
        // SAFETY: a fresh block of at least `size` bytes.
        unsafe { ptr::write_bytes(p, 0, size) };
    }
    p
}

/// Frees `p` (null is a no-op). Stops the process with a message for a
/// pointer that is not a live block of this allocator.
///
/// The fast path: `free_tagged`, when `p` lies in the chunk this
/// thread remembers. Another chunk, objects of other nodes, page runs,
/// large blocks and bad pointers take `free_other`, a jump.
///
/// `#[inline(always)]`: through a call the C face's `free` spent a jump
/// on reaching it.
///
/// # Safety
/// If `p` is a live block, nothing uses it afterwards.
#[inline(always)]
pub unsafe fn free(p: *mut u8) {
    let tc = magazine::current();
    // SAFETY: the thread cache is this thread's.
    if let Some(tag) = unsafe { magazine::remembered_tag(tc, p as usize) } {
        // SAFETY: the tag of the page holding `p`.
        if unsafe { free_tagged(tc, tag, p) } {
            return;
        }
    }
    free_other(p)
}

/// [`free`]'s fast path once the tag of the page holding `p` is known:
/// true when `p` was an object of this thread's node, now in its bin.
///
/// The page's class-and-node tag (kept beside the page descriptors, see
/// `page::Chunk::tags`), XORed with the thread's node, is "slab object of
/// class c on my node" exactly when it lands in `1..=NR_CLASSES`; the
/// offset inside the (naturally aligned) slab must be a whole number of
/// objects, or `p` points inside an object.
///
/// # Safety
/// `tc` is [`magazine::current`]; `tag` is the tag of the page holding
/// `p`; if `p` is a live block, nothing uses it afterwards.
#[inline(always)]
unsafe fn free_tagged(tc: *mut magazine::ThreadCache, tag: u16, p: *mut u8) -> bool {
    // SAFETY: per the caller.
    let local_class = unsafe { (tag as u32 ^ (*tc).node_tag()) as usize };
    // 1..=NR_CLASSES for an object of this node; 0 for any page but
    // a slab's, whose bin (`slots[0]`) never has room, so it fails the
    // room test before the class table is read.
    // SAFETY: the thread cache is this thread's; the index is in its
    // bins, checked first.
    if local_class <= NR_CLASSES && unsafe { magazine::has_room(tc, local_class) } {
        // SAFETY: 1 <= local_class <= NR_CLASSES: slot 0 has no room.
        if !unsafe { slab::is_slot_start(local_class, p as usize) } {
            free_inside_object(p);
        }
        // SAFETY: a slab object of this class on this thread's node,
        // given up by the caller, and its bin has room.
        unsafe { magazine::free_local(tc, p, local_class, ensure_init) };
        return true;
    }
    false
}

/// Stops `free(p)` of a pointer inside a slab object. `p` first, so the
/// fast path keeps it where it came in (callgrind: one copy fewer).
#[cold]
#[inline(never)]
fn free_inside_object(p: *mut u8) -> ! {
    bad_pointer(b"free()", b"invalid pointer (inside an object)", p)
}

/// [`free`] of anything but an object of the thread's own node whose bin
/// has room. Its own part is an object of another node in a chunk the
/// thread remembers, the common case of objects freed by a thread other
/// than the one that allocated them: to the thread's remote bin, calling
/// nothing on its way and so saving no register (callgrind, a thread
/// freeing another's 64-byte objects: 63 instructions here per such
/// free, against 100 when the one function held every case). The rest
/// is [`free_elsewhere`]'s.
#[cold]
#[inline(never)]
#[link_section = ".text.hot.buddyslab"]
fn free_other(p: *mut u8) {
    if p.is_null() {
        return;
    }
    let tc = magazine::current();
    // SAFETY: the thread cache is this thread's; the tag is the page's.
    if let Some(tag) = unsafe { magazine::remembered_tag(tc, p as usize) } {
        // SAFETY: as above.
        if unsafe { free_remote_tagged(tc, tag, p) } {
            return;
        }
    }
    free_elsewhere(p)
}

/// A slab object of another node (the tag's class byte names a class,
/// its node byte another node than the thread's) to the thread's remote
/// bin, from the tag alone: true when done, false when `p` is no such
/// object or the remote bin cannot take it now. The page descriptor,
/// which `owner_of` and `free_slow` read and the owner node's refills
/// write, stays on its CPU.
///
/// # Safety
/// `tc` is [`magazine::current`]; `tag` is the tag of the page holding
/// `p`; if `p` is a live block, nothing uses it afterwards.
#[inline(always)]
unsafe fn free_remote_tagged(tc: *mut magazine::ThreadCache, tag: u16, p: *mut u8) -> bool {
    let user_class = (tag & 0xff) as usize;
    // SAFETY: the thread cache is this thread's.
    if !(1..=NR_CLASSES).contains(&user_class) || (tag as u32 ^ unsafe { (*tc).node_tag() }) <= 0xff {
        return false;
    }
    // SAFETY: 1 <= user_class <= NR_CLASSES.
    if !unsafe { slab::is_slot_start(user_class, p as usize) } {
        free_inside_object(p);
    }
    // SAFETY: a slab object of that class on another node's page, at a
    // slot start, given up by the caller.
    if !unsafe { magazine::free_remote(tc, p, user_class) } {
        return false;
    }
    // SAFETY: the thread cache is this thread's.
    unsafe { magazine::publish_now_and_then(tc) };
    true
}

/// [`free_other`]'s rest: an object of a chunk the thread does not
/// remember (looked up, and remembered), an object of this node whose bin
/// is full, a remote object whose remote bin is full or whose thread's
/// cache is not active, a page run, a large block, or a bad pointer
/// (which [`check::owner_in`] stops at).
#[cold]
#[inline(never)]
#[link_section = ".text.hot.buddyslab"]
fn free_elsewhere(p: *mut u8) {
    // A chunk other than the remembered one: look it up (and remember
    // it), then the fast path's steps.
    let tc = magazine::current();
    // SAFETY: the thread cache is this thread's.
    let chunk = unsafe { (*tc).chunk_of(p as usize) };
    if !chunk.is_null() {
        // SAFETY: a published chunk holding `p`: its tag is the page's.
        let tag = unsafe { page::Chunk::tag(chunk, p as usize) };
        // SAFETY: as above.
        // SAFETY: as above.
        if unsafe { free_tagged(tc, tag, p) || free_remote_tagged(tc, tag, p) } {
            return;
        }
    }
    match check::owner_in(chunk, p, b"free()") {
        Owner::Slab(class) => {
            // SAFETY: a slab object of this class, given up by the caller,
            // at an object start (checked by `owner_in`).
            if crate::profile::on() && unsafe { free_in_diverted_page(p, class + 1) } {
                return;
            }
            // SAFETY: a slab object of this class, given up by the caller.
            unsafe { magazine::free_slow(p, class + 1, ensure_init) }
        }
        // SAFETY: a live run, given up by the caller.
        Owner::Pages(head) => unsafe {
            if crate::profile::on() {
                crate::profile::forget_block(p);
            }
            let perturb = crate::options::perturb();
            if perturb != 0 {
                // glibc's free_perturb (mapped blocks, as in glibc, are not).
                ptr::write_bytes(p, perturb, ((*head).span as usize) << PAGE_SHIFT);
            }
            crate::counters::count_blocks(0, 1);
            if !mm::runs::put(head) {
                mm::free_pages_exact(head)
            }
        },
        Owner::Outside => free_outside(p),
    }
}

/// `free` of the slab object `p` of class `user_class - 1` while
/// profiling is on: when its page is diverted (it holds a sampled object,
/// see `crate::profile::DIVERTED`), forgets `p`'s sample if it is one and
/// does what the fast path would have done, had the tag not turned `p`
/// away (the push onto the thread's bin); true when `p` is freed so.
///
/// # Safety
/// `p` is a live object of class `user_class - 1`, given up by the
/// caller, at an object start.
#[cold]
#[inline(never)]
unsafe fn free_in_diverted_page(p: *mut u8, user_class: usize) -> bool {
    let desc = page::page_of(p as usize);
    // SAFETY: `p` is a live slab object, so `desc` describes its page.
    if !unsafe { crate::profile::forget_object(p, desc) } {
        return false;
    }
    let tc = magazine::current();
    // SAFETY: `desc` is a slab page's descriptor; the thread cache is this
    // thread's; `local` is checked to be `user_class` (<= NR_CLASSES)
    // before it indexes the bins; `p` is a live object of that class and
    // node, given up by the caller (free_local still catches a double
    // free).
    unsafe {
        let local = ((*desc).class_and_node() ^ (*tc).node_tag()) as usize;
        if local == user_class && magazine::has_room(tc, local) {
            magazine::free_local(tc, p, local, ensure_init);
            return true;
        }
    }
    false
}

#[cold]
#[inline(never)]
#[link_section = ".text.hot.buddyslab"]
fn free_outside(p: *mut u8) {
    if crate::profile::on() {
        crate::profile::forget_block(p);
    }
    // The shadow forgets the block before the kernel does, so a mapping
    // another thread gets at the same address is not forgotten instead.
    if let Ok(len) = large::usable_size(p) {
        pagetable::unmap(p as usize, len);
    }
    // SAFETY: given up by the caller if it is a large block.
    if let Err(why) = unsafe { large::free(p) } {
        bad_outside(b"free()", why, p);
    }
    crate::counters::count_blocks(0, 1);
    remember_freed_large(p);
}

/// Usable bytes of the block at `p` (0 for null).
pub fn usable_size(p: *mut u8) -> usize {
    usable_size_for(p, b"malloc_usable_size()")
}

/// [`usable_size`], naming `what` (the call the program made) when `p` is
/// not a live block: the secure build checks every pointer it is given
/// this way before it reads the block.
pub fn usable_size_for(p: *mut u8, what: &'static [u8]) -> usize {
    if p.is_null() {
        return 0;
    }
    match owner_of(p, what) {
        Owner::Slab(class) => {
            check_not_freed(what, p);
            size_of_class(class)
        }
        // SAFETY: a live run's head.
        Owner::Pages(head) => (unsafe { (*head).span } as usize) << PAGE_SHIFT,
        Owner::Outside => match large::usable_size(p) {
            Ok(n) => n,
            Err(why) => bad_outside(what, why, p),
        },
    }
}

/// The slot size of `p` when it lies in a slab, checked as
/// [`usable_size_for`] checks a slab object (the process stops, naming
/// `what`, for a pointer inside an object, or `why_free` for a free one:
/// one that carries the free mark); `None`, with no
/// check, for anything else (a page run, its tail pages, a large block, a
/// foreign pointer), which the caller checks by its own means. One page
/// descriptor read answers both "is it a slab object" and "which class":
/// a layer above the heap that asks both before it reads the block pays
/// for one lookup.
#[inline]
pub fn slab_usable_for(p: *mut u8, what: &'static [u8], why_free: &'static [u8]) -> Option<usize> {
    let desc = page::page_of(p as usize);
    if desc.is_null() {
        return None;
    }
    // SAFETY: descriptors of published chunks are live; a tail's head is
    // `span` descriptors before it.
    let class = unsafe {
        let user_class = (*desc).user_class as usize;
        if user_class != 0 {
            user_class - 1
        } else {
            let head = if (*desc).kind() == PG_TAIL { desc.sub((*desc).span as usize) } else { desc };
            if (*head).kind() != PG_SLAB || (*head).class as usize >= NR_CLASSES {
                return None;
            }
            (*head).class as usize
        }
    };
    check::check_slot_start(what, p, class + 1);
    check::check_not_freed_as(what, why_free, p);
    Some(size_of_class(class))
}

/// C `realloc`: resizes `p` to `size` bytes, in place when its class or
/// pages allow, otherwise by moving. `realloc(NULL, n)` is `malloc(n)`;
/// `realloc(p, 0)` frees `p` and returns null (as glibc). On failure returns
/// null and `p` is untouched.
///
/// # Safety
/// `p` is null or a live block; after a non-null return it is not used.
#[link_section = ".text.hot.buddyslab"]
pub unsafe fn realloc(p: *mut u8, size: usize) -> *mut u8 {
    // SAFETY: per the caller.
    unsafe { realloc_by(p, size, malloc, |p| free(p), |p, size, align| realloc_aligned(p, size, align)) }
}

/// C `realloc`'s edge cases (null, size 0) around `malloc`, `free` and
/// `resize` (a [`realloc_aligned`]): the heap's and the secure layer's.
///
/// # Safety
/// As [`realloc`]; the three functions are one allocator's.
#[inline]
pub unsafe fn realloc_by(
    p: *mut u8,
    size: usize,
    malloc: impl FnOnce(usize) -> *mut u8,
    free: impl FnOnce(*mut u8),
    resize: impl FnOnce(*mut u8, usize, usize) -> *mut u8,
) -> *mut u8 {
    if p.is_null() {
        let q = malloc(size);
        if !q.is_null() {
            magazine::count_entry_blocks(1, 0);
        }
        return q;
    }
    if size == 0 {
        free(p);
        magazine::count_entry_blocks(0, 1);
        return ptr::null_mut();
    }
    resize(p, size, MIN_ALIGN)
}

/// Resizes `p` to `size` (> 0) bytes keeping alignment `align`.
///
/// # Safety
/// `p` is a live block aligned to `align`; after a non-null return it is
/// not used.
#[link_section = ".text.hot.buddyslab"]
pub unsafe fn realloc_aligned(p: *mut u8, size: usize, align: usize) -> *mut u8 {
    if size > MAX_REQUEST {
        return ptr::null_mut();
    }
    let old_usable = match owner_of(p, b"realloc()") {
        Owner::Slab(class) => {
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
                    unsafe { mm::shrink_pages_exact(head, need) };
                }
                return p;
            }
            // Still a run's size: grow into free pages right after it.
            let stays_run = size > SLAB_MAX && size < MMAP_THRESHOLD.load(Ordering::Relaxed).min(PAGE_TIER_MAX);
            // SAFETY: a live run of fewer than `need` pages.
            if stays_run && unsafe { mm::grow_pages_exact(head, need) } {
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
                // SAFETY: `p` is a live large block. The shadow's records
                // follow it (see `large::resize`).
                let q = unsafe { large::resize(p, size) };
                if !q.is_null() {
                    if q != p {
                        remember_freed_large(p);
                        if crate::profile::on() {
                            crate::profile::forget_block(p);
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
    // A block that grows to a large block's size and is copied gets room
    // for as much again. A buffer grown by `realloc` is usually grown
    // again: by half or double (vectors), or a little at a time (string
    // builders); with the room, the next growth stays in place
    // (`large::resize`) and every other copy is saved. The room is address
    // space until written: a fresh mapping's room faults in only when the
    // buffer grows into it, and a cached extent's pages were resident
    // already. A `realloc` to a smaller size gives the room back. Without
    // it, 16 threads growing 256 buffers each on two CPUs
    // (`benches/workloads/reallocchain.c`) copied 22 GB in the large tier
    // where glibc, growing into the free chunk its last move left behind,
    // copied 12 GB; the copy took half the run's time.
    let to_large = size >= MMAP_THRESHOLD.load(Ordering::Relaxed).min(PAGE_TIER_MAX) || size > CHUNK_SIZE;
    let new = if to_large && size > old_usable && align <= PAGE_SIZE {
        alloc_big(size, PAGE_SIZE, size)
    } else {
        aligned_alloc(align, size)
    };
    if new.is_null() {
        return new;
    }
    // SAFETY: both blocks are live and distinct; we copy what both hold.
    unsafe {
        ptr::copy_nonoverlapping(p, new, old_usable.min(size));
        free(p);
    }
    magazine::count_entry_blocks(1, 1);
    new
}

/// Gives memory back to the OS at once: the calling thread's bins and
/// run lists and every CPU depot go back to the slab caches, every shrinker gives back
/// what it holds (the caches' empty slabs), every dirty free block goes to
/// the kernel (`MADV_DONTNEED`), and cached large mappings are unmapped.
/// Returns true when any memory was released (`malloc_trim`'s 1).
pub fn trim() -> bool {
    ensure_init();
    magazine::flush_current();
    mm::runs::flush_current();
    slab::percpu::drain_all();
    let pages = mm::shrink_all();
    let released = mm::release_free_memory() + large::release_cached(true, os::monotonic_ns());
    pages > 0 || released > 0
}

// ---------------------------------------------------------------------------
// Options changed while the program runs (`mallopt`): the faces come here,
// never to the tiers' own settings.

/// Sets the mmap threshold (`mallopt(M_MMAP_THRESHOLD)`): false, and no
/// change, above the largest threshold; stops the thresholds' adaptation.
pub fn set_mmap_threshold(bytes: usize) -> bool {
    crate::options::set_mmap_threshold(bytes)
}

/// Sets the trim threshold (`mallopt(M_TRIM_THRESHOLD)`); stops the
/// thresholds' adaptation.
pub fn set_trim_threshold(bytes: usize) {
    crate::options::set_trim_threshold(bytes)
}

/// Sets the perturb byte (`mallopt(M_PERTURB)`: the low byte of `value`;
/// 0 turns it off).
pub fn set_perturb(value: usize) {
    crate::options::set_perturb(value)
}

/// Stops the thresholds' adaptation without changing them
/// (`mallopt(M_TOP_PAD)`, `mallopt(M_MMAP_MAX)`, as in glibc).
pub fn fix_thresholds() {
    crate::options::DYNAMIC_THRESHOLD.store(false, Ordering::Relaxed);
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
    #[cfg_attr(feature = "secure", ignore = "with `secure` a mapping the secure layer gave back waits PROT_NONE in the mapping cache: only that layer may take blocks from the heap")]
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
    #[cfg_attr(feature = "secure", ignore = "with `secure` a mapping the secure layer gave back waits PROT_NONE in the mapping cache: only that layer may take blocks from the heap")]
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
    #[cfg_attr(feature = "secure", ignore = "with `secure` a mapping the secure layer gave back waits PROT_NONE in the mapping cache: only that layer may take blocks from the heap")]
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
        #[cfg_attr(feature = "secure", ignore = "with `secure` a mapping the secure layer gave back waits PROT_NONE in the mapping cache: only that layer may take blocks from the heap")]
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

