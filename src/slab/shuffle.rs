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
/// list in random order, each marked free, and returns its head.
///
/// # Safety
/// `[base, base + objects * size)` is a fresh slab nobody else uses;
/// `objects >= 1`, `size >= 16`.
pub unsafe fn link_fresh_slots(base: usize, objects: usize, size: usize) -> *mut u8 {
    let seed = next_random() ^ (base as u64).rotate_left(29);
    let slot = |i: usize| (base + i * size) as *mut u8;
    let mut order = [0u16; SHUFFLE_MAX];
    let random_order = objects <= SHUFFLE_MAX;
    let (a, b) = if random_order {
        for (i, o) in order[..objects].iter_mut().enumerate() {
            *o = i as u16;
        }
        let mut r = seed;
        for i in (1..objects).rev() {
            r ^= r << 13;
            r ^= r >> 7;
            r ^= r << 17;
            order.swap(i, (r % (i as u64 + 1)) as usize);
        }
        (1, 0)
    } else {
        let mut a = (seed as usize % objects) | 1;
        while gcd(a, objects) != 1 {
            a += 2;
        }
        (a, (seed >> 32) as usize % objects)
    };
    let index = |k: usize| if random_order { order[k] as usize } else { (a * k + b) % objects };
    // SAFETY: every slot lies in the caller's fresh slab.
    unsafe {
        for k in 0..objects {
            let next = if k + 1 < objects { slot(index(k + 1)) } else { core::ptr::null_mut() };
            link::set_next(slot(index(k)), next);
            link::set_marked_free(slot(index(k)));
        }
    }
    slot(index(0))
}

fn gcd(mut a: usize, mut b: usize) -> usize {
    while b != 0 {
        (a, b) = (b, a % b);
    }
    a
}
