//! The secure build's slot order: a fresh slab's slots are linked into its
//! free list in a random order (a Fisher-Yates shuffle), so the program
//! cannot tell which slot its next block gets, nor which block sits next
//! to which. The default build hands fresh slots out in address order
//! (its bump), which costs nothing and touches no page before it is used;
//! this touches every slot's first two words when the slab is made.

use super::link;
use crate::os;
use core::sync::atomic::{AtomicU64, Ordering};

/// Slabs with more slots than this are shuffled by a random affine
/// permutation (`a * i + b mod n`) instead, for want of a longer buffer on
/// the stack.
const SHUFFLE_MAX: usize = 1024;

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
/// list in random order, each marked free, and returns its head and its
/// last slot (which the slab keeps, so that a refill that joins the list
/// behind another links it without walking it).
///
/// The order is drawn first (on the stack); the slots are then written in
/// address order, each with the slot that follows it in the drawn order,
/// so the writes run through the fresh slab front to back (which the
/// hardware prefetches) instead of jumping about it: on xmalloc-test, whose
/// slabs come and go all the time, the writes in list order and a
/// division per slot made this function a tenth of the secure build's
/// time. No division per slot: the shuffle draws an index below `i`
/// by a multiply and a shift (Lemire's method, without the rejection
/// step: its bias is below `1024 / 2^32` per draw), and the affine order's
/// successor of slot `s` is `s + a` less `objects` where it wraps.
///
/// The drawn order is a random cycle through all slots, cut before a
/// random slot, the head: each of the `objects!` orders comes from
/// exactly one cycle and one head, so every order is as likely as with
/// a shuffle of the slots. The cycle is the successor table the links
/// are written from, built by inserting slot `i` after one of the slots
/// `0..i` drawn alike (each of the `i` places gives another cycle, so
/// each of the `(objects - 1)!` cycles is drawn alike): one load and two
/// stores per slot, where Sattolo's shuffle of an identity table took
/// a pass to fill the table and two loads and two stores per slot, and
/// the loads waited on the stores of earlier swaps. The link key and the
/// free mark are read once, not per slot. On sh8bench (two threads),
/// whose slabs come and go, the secure build took 8.35 to 8.63 s where
/// it took 8.79 to 9.49 s with Sattolo's shuffle (three interleaved runs
/// each; xmalloc-test moved within its spread).
///
/// # Safety
/// `[base, base + objects * size)` is a fresh slab nobody else uses;
/// `objects >= 1`, `size >= 16`.
pub unsafe fn link_fresh_slots(base: usize, objects: usize, size: usize) -> (*mut u8, *mut u8) {
    let seed = next_random() ^ (base as u64).rotate_left(29);
    let slot = |i: usize| (base + i * size) as *mut u8;
    let key = link::key();
    let mark = link::FREE_MARK.load(Ordering::Relaxed);
    // SAFETY: every slot lies in the caller's fresh slab.
    let link = |i: usize, next: Option<usize>| unsafe {
        link::set_next_keyed(slot(i), next.map_or(core::ptr::null_mut(), slot), key);
        link::set_marked_free_with(slot(i), mark);
    };
    if objects <= SHUFFLE_MAX {
        // `after[s]`: the slot after slot `s` on the cycle. Only the
        // first `objects` entries are written and read: zeroing the whole
        // table cost 133 instructions per slab, two for each of the 64
        // slots of a 4 KiB slab of 64 bytes (callgrind).
        let mut table = core::mem::MaybeUninit::<[u16; SHUFFLE_MAX]>::uninit();
        let after = table.as_mut_ptr().cast::<u16>();
        // SAFETY: the first `objects <= SHUFFLE_MAX` entries of the table:
        // entry 0 is written first, entry `i` in step `i`, which reads
        // only entry `j < i`; the links are written from all of them.
        unsafe {
            // Slot `i` joins the cycle of slots `0..i` after a slot drawn
            // from them: each of the `i` places gives a different cycle,
            // so every cycle of all slots is drawn alike.
            after.write(0);
            let mut r = seed | 1;
            for i in 1..objects {
                r ^= r << 13;
                r ^= r >> 7;
                r ^= r << 17;
                let j = (((r >> 32) * i as u64) >> 32) as usize;
                after.add(i).write(after.add(j).read());
                after.add(j).write(i as u16);
            }
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            let head = (((r >> 32) * objects as u64) >> 32) as usize;
            // Slot by slot, front to back, each slot's address one step
            // on from the last.
            let mut at = base;
            let mut last = base;
            for &next in core::slice::from_raw_parts(after, objects) {
                let next = next as usize;
                let to = if next != head { base + next * size } else { 0 };
                if to == 0 {
                    last = at;
                }
                link::set_next_keyed(at as *mut u8, to as *mut u8, key);
                link::set_marked_free_with(at as *mut u8, mark);
                at += size;
            }
            return (slot(head), last as *mut u8);
        }
    }
    // The affine order `a * k + b mod objects`: slot `s` is followed by
    // `s + a mod objects`, and the last, `b - a mod objects`, by nothing.
    // `a` is drawn from 2 up: a step of 1 (one slab in 2048 or so before)
    // was the address order itself. The search stops at `objects - 1` at
    // the latest, which is coprime with `objects`.
    let mut a = 2 + seed as usize % (objects - 3);
    while gcd(a, objects) != 1 {
        a += 1;
    }
    let b = (seed >> 32) as usize % objects;
    let last = (b + objects - a) % objects;
    for s in 0..objects {
        let next = if s + a >= objects { s + a - objects } else { s + a };
        link(s, (s != last).then_some(next));
    }
    (slot(b), slot(last))
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every slot is on the list exactly once, the list ends after the
    /// last, the tail returned is that last slot, and the order is not the
    /// slots' address order, for slabs of both kinds of order (shuffled
    /// and affine).
    #[test]
    fn every_slot_once_in_random_order() {
        let slabs = [(1usize, 16usize), (2, 16), (3, 48), (100, 80), (SHUFFLE_MAX, 16), (SHUFFLE_MAX + 1, 16), (4096, 16), (4095, 32)];
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

    /// Every order of a slab's slots is drawn alike: the 24 orders of 4
    /// slots, drawn 24 000 times, each come up 1 000 times give or take
    /// 300 (ten standard deviations). A biased draw (a shuffle that
    /// picks from all slots at every step, or a cycle never cut at some
    /// slot) misses some orders or doubles others.
    #[test]
    fn every_order_is_drawn_alike() {
        const DRAWS: usize = 24_000;
        let mut slab = [0u128; 4];
        let base = slab.as_mut_ptr() as usize;
        let mut counts = [0usize; 256];
        for _ in 0..DRAWS {
            // SAFETY: a buffer of 4 slots of 16 bytes, ours.
            let (mut p, _) = unsafe { link_fresh_slots(base, 4, 16) };
            let mut order = 0;
            while !p.is_null() {
                order = order * 4 + (p as usize - base) / 16;
                // SAFETY: a slot of the buffer, linked above; decoded as
                // in the test above.
                let word = unsafe { p.cast::<usize>().read() };
                let mixed = if cfg!(feature = "hardened") { (p as usize).swap_bytes() } else { 0 };
                p = (word ^ link::key() ^ mixed) as *mut u8;
            }
            counts[order] += 1;
        }
        let drawn: Vec<usize> = counts.iter().copied().filter(|&c| c != 0).collect();
        assert_eq!(drawn.len(), 24, "orders drawn: {drawn:?}");
        assert!(drawn.iter().all(|&c| (700..=1300).contains(&c)), "counts per order: {drawn:?}");
    }
}
