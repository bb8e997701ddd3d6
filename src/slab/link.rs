//! What a free object keeps in its first two words: the link to the next
//! object of the list it is on (a thread's bin, a depot batch, its slab's
//! free list), and the free mark.
//!
//! # The link
//!
//! A link is never stored in the clear. The classic heap attack writes a
//! chosen address into the first word of a freed object (through a
//! dangling pointer or an overflow from the neighbour) and waits for
//! `malloc` to return that address. Here the stored word is the next
//! object's address XORed with a random per-process key ([`key`]), and
//! every link the allocator follows is decoded and checked before it is
//! used:
//!
//! - Default build: the decoded address must be null or a plausible
//!   object: 16-byte aligned and below 2^47, the top of the user address
//!   space the kernel hands out without being asked for more (buddyslab
//!   never asks). A word written without the key decodes to a random
//!   value, which passes with a chance of 2^-21; anything else stops the
//!   process with "corrupted free list" before the address is used.
//!   Cost on the fast path: a load of the key (from the thread cache), an
//!   XOR each way, a test with a constant on `malloc`. glibc's safe-linking
//!   XORs with the slot's address shifted by 12, which is no secret; a
//!   link here cannot be forged without the key.
//! - `hardened`: the key is also mixed with the byte-swapped address of
//!   the word holding the link, as Linux's `CONFIG_SLAB_FREELIST_HARDENED`
//!   does, so a link copied to another object decodes to garbage there; and
//!   the decoded address must be a *free slot* of the expected class: in a
//!   slab of that class, at a slot boundary, among the slots the slab has
//!   handed out, and carrying the free mark.
//!
//! Every object handed out has both words cleared ([`clear`]), on every
//! path, and so has every object of a slab that goes back to the buddy
//! allocator (whose pages may next be handed out uninitialised, as a page
//! run), so neither the encoded link (from which two `malloc` calls would
//! reveal the key) nor the free mark ever reaches the program.
//!
//! # The free mark
//!
//! A freed object carries the process's secret [`FREE_MARK`], XORed with
//! the object's address ([`mark_of`]), in its second word (every class is
//! at least 16 bytes), as glibc's tcache carries its `key`: `free` of an
//! object that already holds its mark is a double free, wherever the first
//! free left the object. The mark is random per process and independent of
//! the link key, so reading one does not reveal the other; and since it
//! differs per object, a live object into which the program copied a
//! freed one's bytes does not look free.

use core::sync::atomic::{AtomicUsize, Ordering};

/// The free mark (see the module doc). Fixed until [`init_keys`] draws a
/// random one; never zero.
pub(crate) static FREE_MARK: AtomicUsize = AtomicUsize::new(0x9e37_79b9_7f4a_7c15);

/// The link key; 0 until drawn ([`key`]).
static KEY: AtomicUsize = AtomicUsize::new(0);

/// Bits a decoded link may not have: not 16-byte aligned, or above the
/// 47-bit user address space.
pub const IMPLAUSIBLE: usize = !((1usize << 47) - 1) | 15;

/// Draws the process's random free mark and link key (called once, early
/// in set-up, before any thread cache is active).
pub fn init_keys() {
    if let Some(r) = crate::os::random_u64() {
        FREE_MARK.store(r as usize | 1, Ordering::Relaxed);
    }
    key();
}

/// The link key: drawn on first use (before the first link is written),
/// never zero, fixed for the life of the process.
#[inline(always)]
pub fn key() -> usize {
    let k = KEY.load(Ordering::Relaxed);
    if k != 0 {
        return k;
    }
    draw_key()
}

#[cold]
#[inline(never)]
#[link_section = ".text.hot.buddyslab"]
fn draw_key() -> usize {
    let fresh = crate::os::random_u64().unwrap_or(0x6a09_e667_f3bc_c909 ^ crate::os::monotonic_ns()) as usize | 1;
    match KEY.compare_exchange(0, fresh, Ordering::Relaxed, Ordering::Relaxed) {
        Ok(_) => fresh,
        Err(won) => won,
    }
}

/// The word stored for a link from `slot` to `next` (and, XOR being its
/// own inverse, the link decoded from a stored word).
#[inline(always)]
fn code(slot: *mut u8, word: usize, key: usize) -> usize {
    #[cfg(feature = "hardened")]
    return word ^ key ^ (slot as usize).swap_bytes();
    #[cfg(not(feature = "hardened"))]
    {
        let _ = slot;
        word ^ key
    }
}

/// The object after `object` on its list of objects of cache `class`,
/// checked (see the module doc); stops the process when the link was
/// tampered with.
///
/// # Safety
/// `object` is a free object on a list, linked by [`set_next`].
#[inline(always)]
pub unsafe fn next(object: *mut u8, class: usize) -> *mut u8 {
    // SAFETY: per the caller.
    unsafe { next_keyed(object, class, key(), IMPLAUSIBLE, crate::mm::page::chunk_of) }
}

/// The link `object` holds, decoded under `key`; stops the process when
/// it has a bit of `implausible` ([`IMPLAUSIBLE`]) set. The part every
/// walk of a list shares, before its own check of the next slot.
///
/// # Safety
/// `object` is a free object on a list, linked by [`set_next`].
#[inline(always)]
unsafe fn decoded(object: *mut u8, key: usize, implausible: usize) -> usize {
    // SAFETY: per the caller, the first word holds a link.
    let next = code(object, unsafe { object.cast::<usize>().read() }, key);
    if next & implausible != 0 {
        corrupted(object, next);
    }
    next
}

/// Stops the process unless `next`, read from `object` and known to lie
/// in a slab of the class `info` describes, starts a slot and carries the
/// free mark (the slot start is tested before the mark is read).
#[cfg(feature = "hardened")]
#[inline(always)]
fn check_slot_start_and_mark(object: *mut u8, next: usize, info: &super::size_class::ClassInfo) {
    // SAFETY: `next` lies in a slab (per the caller) and starts a slot
    // when its mark is read.
    if !info.is_object_start(next) || !unsafe { is_marked_free(next as *mut u8) } {
        corrupted(object, next);
    }
}

/// [`next`] with the key and [`IMPLAUSIBLE`] already at hand (the thread
/// cache keeps copies beside each other, so the test reads the mask from
/// memory instead of building a 64-bit constant: one instruction less).
///
/// `chunk_of` answers as [`crate::mm::page::chunk_of`] does (the thread
/// cache's remembered chunk, on the magazine's pop); only the `hardened`
/// check of the next slot calls it.
///
/// # Safety
/// As [`next`]; `key` is [`key()`], `implausible` is [`IMPLAUSIBLE`].
#[inline(always)]
pub unsafe fn next_keyed(
    object: *mut u8,
    class: usize,
    key: usize,
    implausible: usize,
    chunk_of: impl FnOnce(usize) -> *mut crate::mm::page::Chunk,
) -> *mut u8 {
    // SAFETY: per the caller.
    let next = unsafe { decoded(object, key, implausible) };
    #[cfg(feature = "hardened")]
    check_free_slot(object, next, class, chunk_of);
    #[cfg(not(feature = "hardened"))]
    let _ = (class, chunk_of);
    next as *mut u8
}

/// [`next_keyed`] with no call on the way: `None` where the page's tag
/// does not vouch for the link (a cache of the allocator's own, a page
/// the heap profile diverts, or a bad link), which [`next_keyed`]
/// checks through the page descriptors. Only the `hardened` check ever
/// answers `None`. For a fast path that finishes its work after the pop
/// (the secure build's `malloc` arms the block): with no call in it, it
/// keeps nothing in the registers a call preserves, and saves and
/// restores none of them.
///
/// # Safety
/// As [`next_keyed`].
#[cfg(feature = "secure")]
#[inline(always)]
pub unsafe fn next_keyed_quick(
    object: *mut u8,
    class: usize,
    key: usize,
    implausible: usize,
    chunk_of: impl FnOnce(usize) -> *mut crate::mm::page::Chunk,
) -> Option<*mut u8> {
    // SAFETY: per the caller.
    let next = unsafe { decoded(object, key, implausible) };
    #[cfg(feature = "hardened")]
    if !vouched_free_slot(object, next, class, chunk_of) {
        return None;
    }
    #[cfg(not(feature = "hardened"))]
    let _ = (class, chunk_of);
    Some(next as *mut u8)
}

/// [`next`] for a walk that expects the next object in the slab it is in
/// (`free_bulk_by`, which cuts a list into runs of one slab): the slots
/// that slab has handed out are `[base, base + handed)`, and the caller
/// has checked that slab's kind and class. A link into that range needs
/// only the slot start and the free mark tested (the `hardened` checks
/// the range stands for: a chunk, the page's tag, the slab's `bump`);
/// one outside it, the whole check of [`next`]. On sh6bench the walk's
/// whole check was 54 instructions per object in the secure build
/// (callgrind, one thread), where the default build's took 18.
///
/// # Safety
/// As [`next`]; `[base, base + handed)` are handed-out slots of one slab
/// of cache `class`.
#[inline(always)]
pub unsafe fn next_in_run(object: *mut u8, class: usize, base: usize, handed: usize) -> *mut u8 {
    // SAFETY: per the caller.
    let next = unsafe { decoded(object, key(), IMPLAUSIBLE) };
    #[cfg(feature = "hardened")]
    if next.wrapping_sub(base) < handed {
        // The checks of `check_free_slot` the range does not stand for;
        // a cache of the allocator's own (no user class) has none.
        if class < super::size_class::NR_CLASSES {
            check_slot_start_and_mark(object, next, &super::size_class::CLASSES[class]);
        }
    } else {
        check_free_slot(object, next, class, crate::mm::page::chunk_of);
    }
    #[cfg(not(feature = "hardened"))]
    let _ = (class, base, handed);
    next as *mut u8
}

/// Checks that `object` ends its list (its link decodes to null): for a
/// list about to be spliced in front of another, whose last link is then
/// overwritten unread. A link written there by the program would
/// otherwise vanish unnoticed instead of stopping the process.
///
/// # Safety
/// As [`next`].
#[inline]
pub unsafe fn expect_end(object: *mut u8, class: usize) {
    // SAFETY: per the caller.
    let next = unsafe { next(object, class) };
    if !next.is_null() {
        corrupted(object, next as usize);
    }
}

/// Links `next` after `object`.
///
/// # Safety
/// `object` is a free object of at least one word, ours to write.
#[inline(always)]
pub unsafe fn set_next(object: *mut u8, next: *mut u8) {
    // SAFETY: per the caller.
    unsafe { set_next_keyed(object, next, key()) }
}

/// [`set_next`] with the key already at hand.
///
/// # Safety
/// As [`set_next`]; `key` is [`key()`].
#[inline(always)]
pub unsafe fn set_next_keyed(object: *mut u8, next: *mut u8, key: usize) {
    // SAFETY: per the caller.
    unsafe { object.cast::<usize>().write(code(object, next as usize, key)) }
}

/// The second word of an object: where a freed object keeps the mark.
#[inline(always)]
pub fn mark_slot(object: *mut u8) -> *mut usize {
    object.wrapping_add(core::mem::size_of::<usize>()).cast()
}

/// The free mark of `object` under the key `key` (`FREE_MARK`): the key
/// XORed with the object's address, so the bytes of one freed object
/// copied into another live one (glibc's `tst-tcfree3` does that) do not
/// make the live one look free.
#[inline(always)]
pub fn mark_of(object: *mut u8, key: usize) -> usize {
    key ^ object as usize
}

/// Marks `object` free under `key` (`FREE_MARK`, read once by a caller
/// that marks many objects or holds a copy of it).
///
/// # Safety
/// `object` is a slab object of at least 16 bytes, ours to write.
#[inline(always)]
pub unsafe fn set_marked_free_with(object: *mut u8, key: usize) {
    // SAFETY: per the caller.
    unsafe { mark_slot(object).write(mark_of(object, key)) }
}

/// Whether `object` carries its free mark under `key` (`FREE_MARK`, as a
/// caller that holds a copy of it has it).
///
/// # Safety
/// `object` is a slab object of at least 16 bytes.
#[inline(always)]
pub unsafe fn is_marked_free_with(object: *mut u8, key: usize) -> bool {
    // SAFETY: per the caller.
    unsafe { mark_slot(object).read() == mark_of(object, key) }
}

/// Whether `object` carries its free mark: it is free (or the program
/// copied the mark out of the same object after it was freed, which it
/// cannot learn otherwise).
///
/// # Safety
/// `object` is a slab object of at least 16 bytes.
#[inline]
pub unsafe fn is_marked_free(object: *mut u8) -> bool {
    // SAFETY: per the caller.
    unsafe { is_marked_free_with(object, FREE_MARK.load(Ordering::Relaxed)) }
}

/// Clears what a free object kept (link and mark): the object is being
/// handed out.
///
/// # Safety
/// `object` is an object of at least 16 bytes, ours to write.
#[inline(always)]
pub unsafe fn clear(object: *mut u8) {
    // SAFETY: per the caller.
    unsafe { object.cast::<[usize; 2]>().write([0, 0]) }
}

/// Checks that `next`, read from the free object `object` of cache
/// `class`, is null or a free slot of a slab of that class.
///
/// The common case reads what `free`'s fast path reads: the chunk, and
/// the page's tag beside the descriptors ([`page::Chunk::tags`]), whose
/// low byte is the class + 1 on every page of a user slab, whatever its
/// node. That one load stands for the descriptor's kind, the way back
/// from a tail page to the head, and the head's class. Then the slot
/// start (a multiply and a compare), the free mark, and, without
/// `secure`, the head's `bump` (the slab's first page: the address with
/// the class's slab offset masked off). In the `secure` build every slot of a slab is
/// on its free list from the start (`bump` is the slab's object count,
/// see `shuffle.rs`), so a slot start is among the slots handed out and
/// that test is left out. Anything else (a cache of the allocator's own
/// metadata, a page the heap profile diverts, which carries another tag,
/// or a bad link) takes [`check_free_slot_by_descriptor`], the same
/// checks through the page descriptors, which stops the process for a
/// bad link.
///
/// [`page::Chunk::tags`]: crate::mm::page::Chunk::tags
#[cfg(feature = "hardened")]
#[inline(always)]
fn check_free_slot(object: *mut u8, next: usize, class: usize, chunk_of: impl FnOnce(usize) -> *mut crate::mm::page::Chunk) {
    if !vouched_free_slot(object, next, class, chunk_of) {
        check_free_slot_by_descriptor(object, next, class);
    }
}

/// The part of [`check_free_slot`] that makes no call: true when `next`
/// passed, false when the page's tag does not vouch for it (the check
/// through the page descriptors is left to the caller); stops the
/// process for a link it finds bad.
#[cfg(feature = "hardened")]
#[inline(always)]
fn vouched_free_slot(
    object: *mut u8,
    next: usize,
    class: usize,
    chunk_of: impl FnOnce(usize) -> *mut crate::mm::page::Chunk,
) -> bool {
    use crate::mm::page;
    if next == 0 {
        return true;
    }
    let chunk = chunk_of(next);
    if chunk.is_null() {
        corrupted(object, next);
    }
    // SAFETY: a published chunk descriptor that holds `next`.
    let tag = unsafe { page::Chunk::tag(chunk, next) };
    if class >= super::size_class::NR_CLASSES || (tag & 0xff) as usize != class + 1 {
        return false;
    }
    let info = &super::size_class::CLASSES[class];
    check_slot_start_and_mark(object, next, info);
    #[cfg(not(feature = "secure"))]
    {
        // Slabs are naturally aligned buddy blocks inside one chunk: the
        // slab's first page, whose descriptor is the head, is the address
        // with the offset masked off, with no walk back from a tail page.
        let offset = next & info.slab_mask as usize;
        let index = ((next - offset) >> crate::os::PAGE_SHIFT) & (page::CHUNK_PAGES - 1);
        // SAFETY: descriptors of published chunks are live; a stale
        // `bump` is smaller, which errs towards stopping.
        let bump = unsafe { core::ptr::addr_of!((*page::Chunk::page(chunk, index)).bump).read_volatile() } as usize;
        if offset >= bump * info.size as usize {
            corrupted(object, next);
        }
    }
    true
}

/// [`check_free_slot`] through the page descriptors, for the links the
/// tag does not vouch for.
#[cfg(feature = "hardened")]
#[cold]
#[inline(never)]
fn check_free_slot_by_descriptor(object: *mut u8, next: usize, class: usize) {
    use crate::mm::page::{self, PG_SLAB, PG_TAIL};
    let desc = page::page_of(next);
    if desc.is_null() {
        corrupted(object, next);
    }
    // SAFETY: descriptors of published chunks are live; a slab's head
    // fields read here (kind, class, bump) change only under its cache's
    // lock, and a stale `bump` is smaller, which errs towards stopping.
    unsafe {
        let head = if (*desc).kind() == PG_TAIL { desc.sub((*desc).span as usize) } else { desc };
        if (*head).kind() != PG_SLAB || (*head).class as usize != class {
            corrupted(object, next);
        }
        if class < super::size_class::NR_CLASSES {
            let info = &super::size_class::CLASSES[class];
            let offset = next - page::page_address(head);
            let bump = core::ptr::addr_of!((*head).bump).read_volatile() as usize;
            if !info.is_object_start(next) || offset >= bump * info.size as usize {
                corrupted(object, next);
            }
            if !is_marked_free(next as *mut u8) {
                corrupted(object, next);
            }
        }
    }
}

#[cold]
#[inline(never)]
fn corrupted(object: *mut u8, next: usize) -> ! {
    let _ = next;
    let mut buf = [0u8; 32];
    crate::os::fatal(&[b"buddyslab: malloc(): corrupted free list: ", crate::os::fmt::fmt_hex(&mut buf, object as usize)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[repr(align(16))]
    struct Words([usize; 4]);

    #[test]
    fn links_round_trip_in_place_and_are_never_stored_in_the_clear() {
        let mut words = Words([0usize; 4]);
        let a = words.0.as_mut_ptr().cast::<u8>();
        let b = words.0.as_mut_ptr().wrapping_add(2).cast::<u8>();
        // SAFETY: both point into `words`, 16-byte aligned.
        unsafe {
            set_next(a, b);
            set_next(b, core::ptr::null_mut());
            assert_ne!(a.cast::<usize>().read(), b as usize, "a link is stored in the clear");
            assert_ne!(b.cast::<usize>().read(), 0, "a null link is stored in the clear");
            #[cfg(not(feature = "hardened"))]
            {
                // The hardened check wants real slab slots; plain decoding
                // is what the default build does.
                assert_eq!(next(a, 0), b);
                assert!(next(b, 0).is_null());
            }
            clear(a);
            assert_eq!(a.cast::<[usize; 2]>().read(), [0, 0]);
        }
        #[cfg(feature = "hardened")]
        // SAFETY: as above.
        unsafe {
            // A link copied to another slot no longer decodes to its target.
            set_next(a, b);
            b.cast::<usize>().write(a.cast::<usize>().read());
            assert_ne!(code(b, b.cast::<usize>().read(), key()), b as usize);
        }
    }

    #[test]
    fn a_word_written_without_the_key_is_implausible() {
        // What an attacker writes: a plain address (of a global, a stack,
        // or another heap object). The key's low bit is set, so any
        // 16-byte-aligned word decodes misaligned: caught every time.
        let k = key();
        let base = &FREE_MARK as *const _ as usize & !15;
        let passed = (0..4096usize).filter(|i| ((base + i * 16) ^ k) & IMPLAUSIBLE == 0).count();
        assert_eq!(passed, 0, "key {k:#x} lets plain addresses through");
        assert_ne!(k & IMPLAUSIBLE, 0, "a key that decodes null to a plausible address");
    }
}
