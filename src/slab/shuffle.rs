//! The secure build's slot order: a fresh slab's slots are linked into its
//! free list in a random order, so the program cannot tell which slot its
//! next block gets, nor which block sits next to which. The default build
//! hands fresh slots out in address order (its bump), which costs nothing
//! and touches no page before it is used; this touches every slot's first
//! two words when the slab is made.
//!
//! The order is random within windows of [`WINDOW`] slots, the windows in
//! address order: all the orders of a window's slots are drawn alike, and
//! the next window's slots follow once a window's are handed out. A slab
//! shuffled whole handed its slots out all over it, so a program that
//! frees its blocks in the order it allocated them (most do, and
//! mimalloc-bench's sh8bench and xmalloc-test free nothing else) came
//! back to the slab's lines in no order, a cold line per object; with
//! the windows its frees move up the slab as the default build's do. On
//! sh8benchN the secure build took 6.41 to 7.07 s shuffled whole, 5.90 to
//! 6.25 s with windows of 16 slots; on xmalloc-testN (64-byte blocks,
//! 51 slots a slab) its relative time was 2.54 to 2.62 against 2.26 to
//! 2.29 (three interleaved runs each; slots in address order: 5.36 to
//! 5.57 s and 2.05 to 2.14). Windows of 8 slots were no faster on
//! sh8benchN and 4% faster on xmalloc-testN, of 32 as slow as the whole
//! slab.
//!
//! What the program can tell: the slot of its next block is one of those
//! left in the current window (16 at a window's start, 4 bits where the
//! whole slab gave up to 8), and a block's neighbours in the slab, but
//! for a window's first and last slot, are at most 15 places from it in
//! the order the slab hands its slots out. mimalloc's secure mode
//! interleaves up to 16 ascending runs of slots at random (so the slot
//! after a block is that block's run's next, handed out after it); scudo
//! shuffles the blocks it carves in batches.

use super::link;
use crate::os;
use core::sync::atomic::{AtomicU64, Ordering};

/// Slots per window of the random order (see the module doc).
pub const WINDOW: usize = 16;

/// The generator's state (xorshift64*), seeded once from the kernel.
static STATE: AtomicU64 = AtomicU64::new(0);

fn next_random() -> u64 {
    let mut x = STATE.load(Ordering::Relaxed);
    if x == 0 {
        x = os::random_u64().unwrap_or(0x2545_f491_4f6c_dd1d ^ os::monotonic_ns()) | 1;
    }
    x ^= x >> 12;
    x ^= x << 25;
    x ^= x >> 27;
    // Racing threads may draw the same value; the slab address is mixed
    // in by the caller, so their orders still differ.
    STATE.store(x, Ordering::Relaxed);
    x.wrapping_mul(0x2545_f491_4f6c_dd1d)
}

/// Links the `objects` slots of `size` bytes from `base` into one free
/// list in random order, window by window (see the module doc), each
/// marked free, and returns its head and its last slot (which the slab
/// keeps, so that a refill that joins the list behind another links it
/// without walking it).
///
/// A window's order is a Fisher-Yates shuffle of its offsets (indices
/// below `i` drawn by a multiply and a shift, Lemire's method without the
/// rejection step: its bias is below `WINDOW / 2^32` per draw), turned
/// into a table of successors; the window's slots are then written in
/// address order, each with the slot that follows it, the last with the
/// next window's first, so the writes run through the fresh slab front
/// to back (which the hardware prefetches). The link key and the free
/// mark are read once, not per slot.
///
/// # Safety
/// `[base, base + objects * size)` is a fresh slab nobody else uses;
/// `objects >= 1`, `size >= 16`.
pub unsafe fn link_fresh_slots(base: usize, objects: usize, size: usize) -> (*mut u8, *mut u8) {
    let mut r = (next_random() ^ (base as u64).rotate_left(29)) | 1;
    let key = link::key();
    let mark = link::FREE_MARK.load(Ordering::Relaxed);
    let mut draw = |below: usize| {
        r ^= r << 13;
        r ^= r >> 7;
        r ^= r << 17;
        (((r >> 32) * below as u64) >> 32) as usize
    };
    // `order[k]`: the offset in the window of its `k`th slot handed out;
    // `after[o]`: the offset of the slot handed out after offset `o`.
    let mut order = [0u8; WINDOW];
    let mut after = [0u8; WINDOW];
    let mut head = 0;
    let mut last = 0;
    let mut start = 0;
    while start < objects {
        let len = WINDOW.min(objects - start);
        for (k, o) in order[..len].iter_mut().enumerate() {
            *o = k as u8;
        }
        for k in (1..len).rev() {
            order.swap(k, draw(k + 1));
        }
        for k in 1..len {
            after[order[k - 1] as usize] = order[k];
        }
        let first = base + (start + order[0] as usize) * size;
        if start == 0 {
            head = first;
        } else {
            // SAFETY: the previous window's last slot, in the slab.
            unsafe { link::set_next_keyed(last as *mut u8, first as *mut u8, key) };
        }
        let end = order[len - 1] as usize;
        last = base + (start + end) * size;
        for (o, &next) in after[..len].iter().enumerate() {
            let at = (base + (start + o) * size) as *mut u8;
            // SAFETY: every slot lies in the caller's fresh slab; the
            // window's last slot is linked when the next window's first
            // is known (or ends the list, below).
            unsafe {
                if o != end {
                    link::set_next_keyed(at, (base + (start + next as usize) * size) as *mut u8, key);
                }
                link::set_marked_free_with(at, mark);
            }
        }
        start += len;
    }
    // SAFETY: the last window's last slot, in the slab.
    unsafe { link::set_next_keyed(last as *mut u8, core::ptr::null_mut(), key) };
    (head as *mut u8, last as *mut u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every slot is on the list exactly once, the list ends after the
    /// last, the tail returned is that last slot, the windows come in
    /// address order (the `k`th slot handed out lies in window `k /
    /// WINDOW`), and the order is not the slots' address order, for slabs
    /// of one window or part of one, of whole windows, and of whole
    /// windows and a part.
    #[test]
    fn every_slot_once_in_random_order() {
        let slabs = [(1usize, 16usize), (2, 16), (3, 48), (WINDOW, 16), (WINDOW + 1, 64), (100, 80), (256, 16), (4095, 32)];
        for (objects, size) in slabs {
            let mut slab = vec![0u128; objects * size / 16];
            let base = slab.as_mut_ptr() as usize;
            // SAFETY: a buffer of `objects` slots of `size` bytes, ours.
            let (mut p, tail) = unsafe { link_fresh_slots(base, objects, size) };
            let mut seen = vec![false; objects];
            let mut in_order = 0;
            let mut previous = None;
            while !p.is_null() {
                let i = (p as usize - base) / size;
                if previous.is_some_and(|j: usize| base + j * size == tail as usize) {
                    panic!("{objects}: the list goes on past its tail");
                }
                assert_eq!(p as usize, base + i * size, "{objects}: not a slot start");
                assert!(!seen[i], "{objects}: slot {i} twice");
                let handed = seen.iter().filter(|&&s| s).count();
                assert_eq!(i / WINDOW, handed / WINDOW, "{objects}: slot {i} handed out {handed}th");
                seen[i] = true;
                // SAFETY: a slot of the buffer, linked and marked above.
                assert!(unsafe { link::is_marked_free(p) });
                if previous.is_some_and(|j: usize| i == j + 1) {
                    in_order += 1;
                }
                previous = Some(i);
                // The link decoded as `link::next` does (without its check
                // that the next slot is a slab's: this buffer is none).
                // SAFETY: as above.
                let word = unsafe { p.cast::<usize>().read() };
                let mixed = if cfg!(feature = "hardened") { (p as usize).swap_bytes() } else { 0 };
                p = (word ^ link::key() ^ mixed) as *mut u8;
            }
            assert!(seen.iter().all(|&s| s), "{objects}: a slot left out");
            assert_eq!(previous.map(|j| base + j * size), Some(tail as usize), "{objects}: the tail is not the last slot");
            // A random order of `n` slots is the address order once in
            // `n!` (for 3, one run in six failed here), so only slabs of
            // 8 slots or more are held to it.
            assert!(objects < 8 || in_order < objects - 1, "{objects}: address order");
        }
    }

    /// Every order of a window's slots is drawn alike, in a whole window
    /// and in a window cut short by the slab's end: in a slab of
    /// `WINDOW + 4` slots, the 24 orders of its last 4 slots (the second
    /// window) and of its first 4 (which share the first window with 12
    /// others, so their order among themselves is alike too), drawn
    /// 24 000 times, each come up 1 000 times give or take 300 (ten
    /// standard deviations). A biased draw (a shuffle that picks from all
    /// slots at every step, or one that leaves a window's first slot in
    /// place) misses some orders or doubles others.
    #[test]
    fn every_order_is_drawn_alike() {
        const DRAWS: usize = 24_000;
        const SLOTS: usize = WINDOW + 4;
        let mut slab = [0u128; SLOTS];
        let base = slab.as_mut_ptr() as usize;
        let (mut first, mut second) = ([0usize; 256], [0usize; 256]);
        for _ in 0..DRAWS {
            // SAFETY: a buffer of `SLOTS` slots of 16 bytes, ours.
            let (mut p, _) = unsafe { link_fresh_slots(base, SLOTS, 16) };
            let (mut a, mut b) = (0, 0);
            while !p.is_null() {
                let i = (p as usize - base) / 16;
                if i < 4 {
                    a = a * 4 + i;
                } else if i >= WINDOW {
                    b = b * 4 + i - WINDOW;
                }
                // SAFETY: a slot of the buffer, linked above; decoded as
                // in the test above.
                let word = unsafe { p.cast::<usize>().read() };
                let mixed = if cfg!(feature = "hardened") { (p as usize).swap_bytes() } else { 0 };
                p = (word ^ link::key() ^ mixed) as *mut u8;
            }
            first[a] += 1;
            second[b] += 1;
        }
        for (window, counts) in [("first", first), ("second", second)] {
            let drawn: Vec<usize> = counts.iter().copied().filter(|&c| c != 0).collect();
            assert_eq!(drawn.len(), 24, "{window} window, orders drawn: {drawn:?}");
            assert!(drawn.iter().all(|&c| (700..=1300).contains(&c)), "{window} window, counts per order: {drawn:?}");
        }
    }
}
