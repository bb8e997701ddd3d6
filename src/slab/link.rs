//! The link a free object keeps in its first word: the next object of the
//! list it is on (a thread's bin, a depot batch, its slab's free list).
//!
//! Plain by default. With the `hardened` feature the link is stored
//! encoded, as Linux's `CONFIG_SLAB_FREELIST_HARDENED` does: XORed with a
//! random per-process key and with the address of the word holding it, so
//! a heap overflow or a use-after-free write into a free object cannot
//! plant a pointer the allocator will follow, and a copied link is wrong in
//! its new place. Popping from a bin then also checks that the decoded next
//! object lies in a slab of the same class, and stops the process with
//! "corrupted free list" when it does not.

/// The object after `object` on its list.
///
/// # Safety
/// `object` is a free object on a list, linked by [`set_next`].
#[inline(always)]
pub unsafe fn next(object: *mut u8) -> *mut u8 {
    // SAFETY: per the caller, the first word holds a link.
    let raw = unsafe { object.cast::<usize>().read() };
    decode(object, raw) as *mut u8
}

/// Links `next` after `object`.
///
/// # Safety
/// `object` is a free object of at least one word, ours to write.
#[inline(always)]
pub unsafe fn set_next(object: *mut u8, next: *mut u8) {
    // SAFETY: per the caller.
    unsafe { object.cast::<usize>().write(decode(object, next as usize)) }
}

#[cfg(not(feature = "hardened"))]
#[inline(always)]
fn decode(_slot: *mut u8, raw: usize) -> usize {
    raw
}

#[cfg(feature = "hardened")]
#[inline(always)]
fn decode(slot: *mut u8, raw: usize) -> usize {
    // XOR is its own inverse: the same function encodes.
    raw ^ hardened::key() ^ (slot as usize).swap_bytes()
}

#[cfg(feature = "hardened")]
mod hardened {
    use core::sync::atomic::{AtomicUsize, Ordering};

    static KEY: AtomicUsize = AtomicUsize::new(0);

    /// The link key: drawn on first use (before the first link is
    /// written), never zero, fixed for the life of the process.
    #[inline(always)]
    pub fn key() -> usize {
        let k = KEY.load(Ordering::Relaxed);
        if k != 0 {
            return k;
        }
        draw()
    }

    #[cold]
    #[inline(never)]
    fn draw() -> usize {
        let fresh = crate::os::random_u64().unwrap_or(0x6a09_e667_f3bc_c909) as usize | 1;
        match KEY.compare_exchange(0, fresh, Ordering::Relaxed, Ordering::Relaxed) {
            Ok(_) => fresh,
            Err(won) => won,
        }
    }
}

/// Checks, in `hardened` builds, that `next` (just read from a bin of
/// `class`) is null or an object of a slab of that class.
#[inline(always)]
pub fn check_popped(next: *mut u8, class: usize) {
    #[cfg(feature = "hardened")]
    {
        if !next.is_null() {
            let desc = crate::page::page_of(next as usize);
            // SAFETY: descriptors of published chunks are live.
            if desc.is_null() || unsafe { (*desc).user_class } as usize != class + 1 {
                corrupted(next);
            }
        }
    }
    #[cfg(not(feature = "hardened"))]
    let _ = (next, class);
}

#[cfg(feature = "hardened")]
#[cold]
#[inline(never)]
fn corrupted(next: *mut u8) -> ! {
    let mut buf = [0u8; 32];
    crate::os::fatal(&[b"buddyslab: malloc(): corrupted free list: ", crate::stats::fmt_hex(&mut buf, next as usize)])
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn links_round_trip_in_place() {
        let mut words = [0usize; 4];
        let a = words.as_mut_ptr().cast::<u8>();
        let b = words.as_mut_ptr().wrapping_add(2).cast::<u8>();
        // SAFETY: both point into `words`.
        unsafe {
            set_next(a, b);
            set_next(b, core::ptr::null_mut());
            assert_eq!(next(a), b);
            assert!(next(b).is_null());
        }
        #[cfg(feature = "hardened")]
        // SAFETY: as above.
        unsafe {
            assert_ne!(a.cast::<usize>().read(), b as usize, "a hardened link is stored in the clear");
            // A link copied to another slot no longer decodes to its target.
            b.cast::<usize>().write(a.cast::<usize>().read());
            assert_ne!(next(b), b);
        }
    }
}
