//! Pointer checks: who owns a pointer, and the messages that stop the
//! process for one that is not a live block of this allocator (inside a
//! block, already free, not ours), before anything is touched.

use crate::large;
use crate::mm::page::{self, Page, PG_PAGES, PG_SLAB, PG_TAIL};
use crate::os;
use crate::slab::{self, NR_CLASSES};
use core::sync::atomic::{AtomicUsize, Ordering};


/// Who owns a pointer.
pub(super) enum Owner {
    /// An object of a size-class slab: its class.
    Slab(usize),
    /// A page-tier run: its head descriptor.
    Pages(*mut Page),
    /// Not in any chunk: a large block, or not ours.
    Outside,
}

/// Finds the owner of `p`, or stops the process when `p` points into a
/// chunk but at nothing that was handed out: the one place that answers
/// "whose is this pointer?" (the free fast path's tag test is the same
/// answer, read from the tag beside the descriptors).
#[inline]
pub(super) fn owner_of(p: *mut u8, what: &'static [u8]) -> Owner {
    owner_in(page::chunk_of(p as usize), p, what)
}

/// [`owner_of`] for a caller that has looked up the chunk holding `p`
/// already (`chunk`, null when no chunk holds it): `free`'s cold path,
/// whose lookup through the thread's remembered chunks then serves once.
#[inline]
#[link_section = ".text.hot.buddyslab"]
pub(super) fn owner_in(chunk: *mut page::Chunk, p: *mut u8, what: &'static [u8]) -> Owner {
    if chunk.is_null() {
        return Owner::Outside;
    }
    // SAFETY: a published chunk descriptor is live; the index is < 1024.
    let desc = unsafe { page::Chunk::page(chunk, (p as usize >> os::PAGE_SHIFT) & (page::CHUNK_PAGES - 1)) };
    // SAFETY: descriptors of published chunks are live.
    let user_class = unsafe { (*desc).user_class as usize };
    if user_class != 0 {
        // Every page of a size-class slab records its class + 1.
        check_slot_start(what, p, user_class);
        return Owner::Slab(user_class - 1);
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
                Owner::Slab(class)
            }
            PG_PAGES if page::page_address(head) == p as usize => Owner::Pages(head),
            PG_PAGES => bad_pointer(what, b"invalid pointer (inside a block)", p),
            // A run on a thread's run list (`mm::runs`) is free memory.
            page::PG_FREE | page::PG_CACHED => bad_pointer(what, b"double free or invalid pointer (memory is free)", p),
            _ => bad_pointer(what, b"invalid pointer (not allocated by buddyslab)", p),
        }
    }
}

/// Stops the process unless `p` starts a slot of a slab of class
/// `user_class - 1`: a pointer inside an object, or in a slab's unused
/// tail, is not a block.
#[inline(always)]
pub(super) fn check_slot_start(what: &'static [u8], p: *mut u8, user_class: usize) {
    // SAFETY: 1 <= user_class <= NR_CLASSES by the callers.
    if !unsafe { slab::is_slot_start(user_class, p as usize) } {
        bad_pointer(what, b"invalid pointer (inside an object)", p);
    }
}

/// Stops the process when the slab object `p` is free (it carries the
/// free mark): `realloc` or `malloc_usable_size` of a freed object would
/// otherwise hand back, or size, an object that is on a free list and will
/// be handed out again.
#[inline]
pub(super) fn check_not_freed(what: &'static [u8], p: *mut u8) {
    check_not_freed_as(what, b"double free detected (the block is free)", p)
}

/// [`check_not_freed`] printing `why` for a free object.
#[inline]
pub(super) fn check_not_freed_as(what: &'static [u8], why: &'static [u8], p: *mut u8) {
    // SAFETY: `p` starts a slot of a slab (checked by `owner_of`, or the
    // caller), at least 16 bytes.
    if unsafe { slab::link::is_marked_free(p) } {
        bad_pointer(what, why, p);
    }
}

#[cold]
#[inline(never)]
pub(super) fn bad_pointer(what: &[u8], why: &[u8], p: *mut u8) -> ! {
    let mut buf = [0u8; 32];
    os::fatal(&[b"buddyslab: ", what, b": ", why, b": ", os::fmt::fmt_hex(&mut buf, p as usize)])
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

pub(super) fn remember_freed_large(p: *mut u8) {
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
pub(super) fn bad_outside(what: &'static [u8], why: large::NotLarge, p: *mut u8) -> ! {
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
