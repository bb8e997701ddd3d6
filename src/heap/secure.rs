//! The secure build (`secure` feature; `libbuddyslab_secure.so`): the same
//! heap behind a layer that stops the memory errors hardened allocators
//! stop, each with one line naming the error and the address.
//!
//! It wraps [`crate::heap`] with the same functions, so the C face and the
//! Rust face pick it with one `use` and the default build carries none of
//! it. `secure` implies `hardened` (address-mixed free-list links checked
//! against free slots, see `slab/link.rs`) and adds:
//!
//! - **Small blocks** (slab objects): every request gets at least 8 bytes
//!   more. The slot's last word holds the requested size `n` and a keyed
//!   tag of size and address; the up to 8 bytes after the block (before
//!   that word) are a keyed canary ([`CANARY_BYTES`]). `free` checks both:
//!   a write that runs on past the end, 1 byte or more, changes the canary
//!   or the size word. `malloc_usable_size` is `n`, so a program that asks
//!   is not told it may write the slack.
//! - **Quarantine**: a freed small object is filled with a keyed pattern
//!   over its first [`PATTERN_BYTES`] (the whole slot for requests of up
//!   to 56 bytes, the first 64 bytes of larger ones; its second word the
//!   heap's free mark, so a second `free` of it is a double free, which
//!   the heap's own check of the mark finds) and waits in
//!   a ring of the freeing thread ([`SMALL_RING`] objects of up to
//!   [`WIDE_FROM`] bytes, [`WIDE_RING`] larger ones: 256 KiB at most
//!   each) until as many more have come after it, before it goes
//!   back to the heap; when it leaves, the pattern is checked, so a write
//!   after free there is caught before the object is reused. The ring is
//!   thread-local (no lock, no CPU number on `free`) and emptied by a
//!   pthread key's destructor when the thread exits; after a `fork` the
//!   child keeps the forking thread's ring, and the objects in other
//!   threads' rings stay allocated in the child (at most 512 KiB per
//!   such thread, never reused, so never a dangling hand-out).
//!   The small path reads what the heap's own fast paths read: `malloc`
//!   the class table and the thread's bin, `free` the page's tag through
//!   the thread cache's remembered chunk, kept with the object so that
//!   it goes back onto the thread's bin without a second lookup.
//! - **Big blocks** (page runs and large mappings): the block starts with
//!   a 16-byte header (size and tag), the data follows, the slack up to
//!   the next page is a canary, and every page after it is `PROT_NONE` (a
//!   guard page, plus for large mappings a random number of further
//!   guard pages, so blocks do not sit at predictable distances). A freed
//!   big block waits in a ring of its own ([`BIG_RING`] blocks). A large
//!   mapping becomes `PROT_NONE` on `free`: reads and writes after free
//!   fault; it stays so after it leaves the ring (unmapped, or in the
//!   mapping cache until reused). A page run (below the mmap threshold,
//!   at most the page tier's 256 KiB) stays open: its first and last
//!   page of data get the quarantine's pattern (`run_fill`), checked
//!   when it leaves the ring and again when it is reused or given back,
//!   so a write after free there is caught; a read after free, or a
//!   write into its middle pages, is not (`PROT_NONE` on every such
//!   `free` cost a TLB shootdown on the program's other CPUs, see
//!   `big_free`); its guard is opened before the buddy allocator
//!   takes it back. So with `secure` on, this layer is the heap's only
//!   caller: a block the heap handed straight to anyone else could be
//!   such a mapping (the heap's unit tests that write its blocks are
//!   left out of the `secure` build for this).
//! - **Zero-size blocks**: `malloc(0)` returns a distinct address inside a
//!   reserved `PROT_NONE` region, so any read or write faults; a live-bit
//!   per address catches a double free.
//! - `realloc` of a small block moves unless the new size fits the same
//!   slot; of a big block it stays in place where the heap's would
//!   (see `big_resize`), the guard moving with the end of the data.
//! - **Spares**: a big block leaving the quarantine is kept as it is,
//!   with its guard pages, for the next big request of about its size
//!   (`Spares`): a mapping reused so costs one `mprotect` in and one
//!   out instead of three, a page run none when its data ends on the
//!   same page as before.
//!
//! Faults on protected pages are named by a `SIGSEGV` handler installed by
//! the C library's constructor ([`install_fault_handler`]), which prints
//! one line and aborts; a program that installs its own handler keeps it.
//!
//! The big blocks' ring and the spares are locked with `try_lock` only:
//! when one is busy (or held by a thread that did not survive a `fork`)
//! the block is checked and freed at once (a request takes a fresh one).

use crate::heap;
use crate::large;
use crate::mm;
use crate::mm::page;
use crate::os::fmt::fmt_hex;
use crate::os::sync::Mutex;
use crate::os::{self, PAGE_SIZE};
use crate::slab::{self, magazine, NR_CLASSES, SLAB_MAX};
use core::ptr;
use core::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

pub use crate::heap::{
    ensure_init, fix_thresholds, page_round, set_mmap_threshold, set_perturb, set_process_malloc, set_trim_threshold,
    trim, MIN_ALIGN,
};

/// Objects of up to [`WIDE_FROM`] bytes a thread's small quarantine
/// holds (so at most 256 KiB).
pub const SMALL_RING: usize = 64;
/// Objects of more than [`WIDE_FROM`] bytes (up to the slab tier's 32
/// KiB) a thread's small quarantine holds in a ring of their own (so at
/// most 256 KiB).
pub const WIDE_RING: usize = 8;
/// Slot size above which a small object waits in the wide ring.
pub const WIDE_FROM: usize = 4096;
/// Big blocks the big quarantine holds.
pub const BIG_RING: usize = 16;
/// Bytes the big quarantine holds at most (`PROT_NONE` pages stay resident).
const BIG_RING_BYTES: usize = 8 * 1024 * 1024;
/// Freed big blocks kept, still inaccessible, for reuse after the
/// quarantine ([`SPARES`]).
const SPARE_BLOCKS: usize = 64;
/// Bytes of freed big blocks kept for reuse at most.
const SPARE_BYTES: usize = 8 * 1024 * 1024;
/// Bytes of the zero-size region (one address per 16 bytes).
const ZERO_REGION: usize = 1 << 20;
/// Addresses in the zero-size region.
const ZERO_SLOTS: usize = ZERO_REGION / 16;
/// Header before the data of a big block: size word and tag.
const BIG_HEADER: usize = 16;
/// Big blocks of at least this many bytes get random extra guard pages.
const RANDOM_PAD_FROM: usize = 128 * 1024;
/// At most this many extra guard pages (address space only, never touched).
const RANDOM_PAD_PAGES: usize = 16;

// ---------------------------------------------------------------------------
// Keys and messages.

/// The layer's keys, drawn together on first use ([`key`]), in one
/// static so a function that reads several reaches them through one
/// address.
#[repr(C)]
struct Keys {
    /// The secret every tag and canary is derived from; 0 until drawn,
    /// and written last (after the fill word).
    block: AtomicUsize,
    /// The word a quarantined object is filled with (but for a small
    /// object's free mark, see [`fill_freed`]).
    fill: AtomicUsize,
    /// The random value the three are derived from; 0 until drawn.
    seed: AtomicUsize,
}

static KEYS: Keys =
    Keys { block: AtomicUsize::new(0), fill: AtomicUsize::new(0), seed: AtomicUsize::new(0) };

/// The block key, drawn on first use.
#[inline]
fn key() -> usize {
    let k = KEYS.block.load(Ordering::Acquire);
    if k != 0 {
        return k;
    }
    draw_key()
}

/// The block key where a block of this layer was found: it was armed
/// with the key, so the key is drawn (a thread that was handed the block
/// sees it, through whatever handed the block over). Where no block was
/// ever armed it reads 0, and no size word checks out with it.
#[inline(always)]
fn key_drawn() -> usize {
    KEYS.block.load(Ordering::Acquire)
}

/// Draws the seed once (the first thread to publish one wins) and
/// derives the two keys from it. Racing threads derive the same keys from
/// the one seed, so their stores agree; the block key goes last, so a
/// thread that reads it non-zero reads the fill word written.
#[cold]
fn draw_key() -> usize {
    let fresh = os::random_u64().unwrap_or(0x243f_6a88_85a3_08d3 ^ os::monotonic_ns()) as usize | 1;
    let seed = match KEYS.seed.compare_exchange(0, fresh, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => fresh,
        Err(won) => won,
    };
    KEYS.fill.store(mix(seed ^ 0xa5a5_a5a5_a5a5_a5a5), Ordering::Relaxed);
    let k = mix(seed) | 1;
    KEYS.block.store(k, Ordering::Release);
    k
}

/// The quarantine's fill word. Only read for an object this layer has
/// armed, so drawn (see [`key_drawn`]).
#[inline(always)]
fn fill_word() -> usize {
    KEYS.fill.load(Ordering::Relaxed)
}

/// The keys as one `free` reads them: once, at its start, and handed
/// down to the checks, the fill and the release of the object leaving
/// the quarantine. Each of those read them itself before (the compiler
/// merges no atomic loads): the mark and fill words three times per
/// `free`, six loads more than needed.
#[derive(Clone, Copy)]
struct Drawn {
    /// [`key_drawn`].
    block: usize,
    /// The heap's free-mark key (`slab::link::FREE_MARK`).
    mark: usize,
    /// [`fill_word`].
    fill: usize,
}

/// The keys for a block this layer has armed (see [`key_drawn`]): the
/// block key first, with acquire, so the fill word read after it is the
/// drawn one. The free-mark key is drawn with the heap, before any block.
#[inline(always)]
fn drawn() -> Drawn {
    let block = key_drawn();
    let fill = fill_word();
    Drawn { block, mark: slab::link::FREE_MARK.load(Ordering::Relaxed), fill }
}

/// A 64-bit mixer (the finaliser of SplitMix64): every input bit moves
/// about half the output bits. For the keys and the random guard pages.
#[inline]
fn mix(x: usize) -> usize {
    let mut z = (x as u64).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    (z ^ (z >> 31)) as usize
}

/// The block's secret: every tag and canary of the block at `p` derives
/// from it, so one is computed per call. One multiply and a fold (five
/// instructions, where the full mixer took eleven; it runs on every
/// `malloc` and `free`): blocks get different secrets, and a program that
/// does not know the key cannot write a canary or size word that passes.
/// It is not a one-way function (nor was the mixer, which is invertible):
/// a program that can read a block's canary can work the key out, as it
/// can read a quarantined object's pattern; these checks stop accidental
/// and blind corruption, as the canaries of the peers do.
#[inline(always)]
fn secret(p: usize) -> usize {
    secret_with(p, key())
}

/// [`secret`] with the block key at hand.
#[inline(always)]
fn secret_with(p: usize, key: usize) -> usize {
    let z = ((p ^ key) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15);
    (z ^ (z >> 29)) as usize
}

/// The word that records size `n` of the block with secret `h`: `n` in
/// the low 32 bits, a tag of `h` and `n` in the high 32, so changing any
/// byte of it is caught (but for a 2^-32 chance).
#[inline]
fn size_word(h: usize, n: usize) -> usize {
    (n & 0xffff_ffff) | ((h ^ n.wrapping_mul(0x9e37_79b9_7f4a_7c15)) & !0xffff_ffff)
}

/// The size recorded in `word` for the block with secret `h`, or `None`
/// when the word was not written by [`size_word`] for it. (The small
/// path makes the same test inline, with the size's bound, one branch
/// each.)
#[cfg(test)]
fn size_of_word(h: usize, word: usize) -> Option<usize> {
    let n = word & 0xffff_ffff;
    (size_word(h, n) == word).then_some(n)
}

/// The tag of the big block with secret `h` and size `n`, kept beside the
/// size in its header.
#[inline]
fn big_tag(h: usize, n: usize) -> usize {
    mix(h ^ n)
}

/// The canary word of the block with secret `h`, no byte of it zero: a
/// small block's canary is this word, unaligned, after the block's end;
/// byte `a` of a big block's canary is byte `a % 8` of it.
#[inline]
fn canary_word(h: usize) -> usize {
    h.rotate_left(17) | 0x0101_0101_0101_0101
}

#[cold]
#[inline(never)]
fn stop(what: &[u8], why: &[u8], p: usize) -> ! {
    let mut buf = [0u8; 32];
    os::fatal(&[b"buddyslab: ", what, b": ", why, b": ", fmt_hex(&mut buf, p)])
}

/// Byte `a % 8` of `word`: the pattern's byte at address `a`.
#[inline(always)]
fn pattern_byte(word: usize, a: usize) -> u8 {
    (word >> ((a % 8) * 8)) as u8
}

/// Fills `[start, end)` with the keyed byte pattern of `word`.
///
/// The whole words go through one plain loop over a slice, which the
/// compiler turns into 16-byte (or wider) stores: the quarantine fills
/// every freed small object, so this loop is on the `free` path.
///
/// # Safety
/// The range is writable and the caller's.
#[inline]
unsafe fn fill(start: usize, end: usize, word: usize) {
    let (head, words, tail) = split_words(start, end);
    // SAFETY: every address written lies in the caller's range; the word
    // slice is 8-byte aligned and inside it.
    unsafe {
        for a in start..head {
            *(a as *mut u8) = pattern_byte(word, a);
        }
        core::slice::from_raw_parts_mut(head as *mut usize, words).iter_mut().for_each(|w| *w = word);
        for a in tail..end {
            *(a as *mut u8) = pattern_byte(word, a);
        }
    }
}

/// `[start, end)` as a byte head up to the first 8-byte boundary, the
/// whole words after it (from the returned first address, how many) and
/// a byte tail from the returned last address.
#[inline(always)]
fn split_words(start: usize, end: usize) -> (usize, usize, usize) {
    let head = round_up(start, 8).min(end);
    let words = (end - head) / 8;
    (head, words, head + words * 8)
}

/// Whether `[start, end)` holds the pattern of `word`: the whole words are
/// compared with no branch per word (the differences OR-ed together, a
/// loop the compiler vectorises), the bytes at the ends one by one.
///
/// # Safety
/// The range is readable.
#[inline]
unsafe fn holds_pattern(start: usize, end: usize, word: usize) -> bool {
    let (head, words, tail) = split_words(start, end);
    // SAFETY: every address read lies in the caller's range; the word
    // slice is 8-byte aligned and inside it.
    unsafe {
        let mut diff = 0u8;
        for a in start..head {
            diff |= *(a as *const u8) ^ pattern_byte(word, a);
        }
        for a in tail..end {
            diff |= *(a as *const u8) ^ pattern_byte(word, a);
        }
        let words = core::slice::from_raw_parts(head as *const usize, words);
        diff == 0 && words.iter().fold(0, |acc, &w| acc | (w ^ word)) == 0
    }
}

#[inline]
fn round_up(x: usize, to: usize) -> usize {
    (x + to - 1) & !(to - 1)
}

// ---------------------------------------------------------------------------
// Zero-size blocks.

/// Start of the zero-size region; 0 until reserved.
static ZERO_BASE: AtomicUsize = AtomicUsize::new(0);
/// Next address to try in the zero-size region.
static ZERO_NEXT: AtomicUsize = AtomicUsize::new(0);
/// One bit per address of the zero-size region: live.
static ZERO_LIVE: [AtomicU64; ZERO_SLOTS / 64] = [const { AtomicU64::new(0) }; ZERO_SLOTS / 64];

fn zero_base() -> usize {
    let base = ZERO_BASE.load(Ordering::Acquire);
    if base != 0 {
        return base;
    }
    let Ok(fresh) = os::mmap_anonymous(ZERO_REGION, true) else {
        return 0;
    };
    // SAFETY: a mapping just made, not yet shared.
    if unsafe { os::mprotect(fresh, ZERO_REGION, false) }.is_err() {
        // SAFETY: ours, unused.
        let _ = unsafe { os::munmap(fresh, ZERO_REGION) };
        return 0;
    }
    match ZERO_BASE.compare_exchange(0, fresh, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => fresh,
        Err(won) => {
            // SAFETY: ours, never handed out.
            let _ = unsafe { os::munmap(fresh, ZERO_REGION) };
            won
        }
    }
}

/// The slot of `p` in the zero-size region, if it is in it.
#[inline]
fn zero_slot(p: usize) -> Option<usize> {
    let base = ZERO_BASE.load(Ordering::Relaxed);
    (base != 0 && p.wrapping_sub(base) < ZERO_REGION).then(|| (p - base) / 16)
}

/// A fresh zero-size block, or null when the region is full (then a real
/// block is used).
fn zero_alloc() -> *mut u8 {
    let base = zero_base();
    if base == 0 {
        return ptr::null_mut();
    }
    for _ in 0..64 {
        let slot = ZERO_NEXT.fetch_add(1, Ordering::Relaxed) % ZERO_SLOTS;
        let bit = 1u64 << (slot % 64);
        if ZERO_LIVE[slot / 64].fetch_or(bit, Ordering::Relaxed) & bit == 0 {
            return (base + slot * 16) as *mut u8;
        }
    }
    ptr::null_mut()
}

/// Checks that the zero-size block `slot` (at `p`) is live, and frees it
/// when `release`.
fn zero_check(what: &[u8], p: usize, slot: usize, release: bool) {
    let bit = 1u64 << (slot % 64);
    let live = if release {
        ZERO_LIVE[slot / 64].fetch_and(!bit, Ordering::Relaxed)
    } else {
        ZERO_LIVE[slot / 64].load(Ordering::Relaxed)
    };
    if live & bit == 0 || p % 16 != 0 {
        stop(what, b"double free or invalid pointer (zero-size block not live)", p);
    }
}

// ---------------------------------------------------------------------------
// Small blocks.

/// Bytes of canary a small block gets at most: the 8 after its end, as
/// one unaligned word. A write that runs on past the end of the block
/// changes the canary's first byte whatever its length; what lies further
/// in the slot's slack (which a program that skips ahead may write
/// without harming any other block) is not checked, so the canary costs
/// the same for every class.
pub const CANARY_BYTES: usize = 8;

/// The bytes of the unaligned word at `p + n` that are canary, for a
/// block at `p` of `n` bytes in a slot of `usable` bytes: all 8 where the
/// slack before the size word holds them, else those below it (none when
/// the block ends at the size word, whose own check catches a write
/// there). Byte `i` of the canary is byte `i` of the canary word, so it
/// is written with one store and compared with one load, with no branch:
/// the up to two aligned words it took before, each with its mask, cost
/// 19 more instructions a pair (callgrind, `malloc(64)` and `free`: 297
/// then, 278 now).
#[inline(always)]
fn canary_mask(n: usize, usable: usize) -> usize {
    const _: () = assert!(CANARY_BYTES == 8);
    let slack = usable - 8 - n;
    if slack >= 8 {
        !0
    } else {
        !(!0usize << (slack * 8))
    }
}

/// Makes the slot at `p` (`usable` bytes) a block of `n` bytes: the
/// canary word at `p + n` (unaligned), then the size word, which may
/// overwrite the canary's last bytes. No byte below `p + n` is written,
/// so the same arming serves a fresh block and one `realloc` resizes in
/// place.
///
/// # Safety
/// `p` is a live slot of `usable >= n + 8` bytes, 16-byte aligned.
#[inline(always)]
unsafe fn small_arm(p: usize, n: usize, usable: usize) {
    // SAFETY: per the caller.
    unsafe { small_arm_with(p, n, usable, key()) }
}

/// [`small_arm`] with the block key (drawn) at hand.
///
/// # Safety
/// As [`small_arm`].
#[inline(always)]
unsafe fn small_arm_with(p: usize, n: usize, usable: usize, key: usize) {
    let h = secret_with(p, key);
    let end = p + usable - 8;
    // SAFETY: `p + n <= end`, so the canary word ends at the slot's end
    // at the latest; the size word is the slot's last.
    unsafe {
        ((p + n) as *mut usize).write_unaligned(canary_word(h));
        *(end as *mut usize) = size_word(h, n);
    }
}

/// Checks the size word and the canary of the live small block at `p` (a
/// slot of `usable` bytes, 16-byte aligned) and returns its size. Stops
/// the process when either was written.
///
/// # Safety
/// `p` is a live slot of `usable >= 16` bytes, armed by this layer (so
/// the key is drawn).
#[inline(always)]
unsafe fn small_check_tail(what: &[u8], p: usize, usable: usize, block_key: usize) -> usize {
    let h = secret_with(p, block_key);
    let end = p + usable - 8;
    // SAFETY: the slot's words, per the caller; the canary word lies in
    // the slot once `n + 8 <= usable` is checked.
    unsafe {
        let word = *(end as *const usize);
        let n = word & 0xffff_ffff;
        if size_word(h, n) != word || n + 8 > usable {
            stop(what, b"heap overflow (size word after the object overwritten)", p);
        }
        let canary = ((p + n) as *const usize).read_unaligned();
        if (canary ^ canary_word(h)) & canary_mask(n, usable) != 0 {
            stop(what, b"heap overflow (canary after the object overwritten)", p);
        }
        n
    }
}

/// Checks the small block at `p` (a slot of `usable` bytes, 16-byte
/// aligned, that does not carry the free mark: the heap's check) and
/// returns its size. Stops the process when it was written past its end.
#[inline(always)]
fn small_check(what: &[u8], p: usize, usable: usize, k: Drawn) -> usize {
    // SAFETY: a live slot of `usable` >= 16 bytes (checked by the heap).
    unsafe { small_check_tail(what, p, usable, k.block) }
}

/// A quarantine: a FIFO of entries `T`, each with its size in bytes,
/// holding at most `N` entries and a byte budget.
struct Ring<T: Copy, const N: usize> {
    slots: [(T, usize); N],
    head: usize,
    len: usize,
    bytes: usize,
}

impl<T: Copy, const N: usize> Ring<T, N> {
    const fn new(empty: T) -> Self {
        Ring { slots: [(empty, 0); N], head: 0, len: 0, bytes: 0 }
    }

    /// Adds `entry` of `bytes`, first taking out the oldest entries (into
    /// `out`, at least 2 long) until it fits `N` entries and `budget` bytes
    /// or `out` has one place left; an entry that still does not fit goes
    /// to `out` itself. Returns how many `out` holds.
    fn push(&mut self, entry: T, bytes: usize, budget: usize, out: &mut [(T, usize)]) -> usize {
        let mut count = 0;
        while self.len > 0 && (self.len == N || self.bytes + bytes > budget) && count < out.len() - 1 {
            out[count] = self.slots[self.head];
            self.bytes -= out[count].1;
            self.head = (self.head + 1) % N;
            self.len -= 1;
            count += 1;
        }
        if self.len < N && self.bytes + bytes <= budget {
            self.slots[(self.head + self.len) % N] = (entry, bytes);
            self.len += 1;
            self.bytes += bytes;
        } else {
            out[count] = (entry, bytes);
            count += 1;
        }
        count
    }

    /// The entries held, oldest first.
    fn entries(&self) -> impl Iterator<Item = (T, usize)> + '_ {
        (0..self.len).map(move |i| self.slots[(self.head + i) % N])
    }
}

/// A thread's ring of `N` quarantined objects, one word each ([`entry`];
/// 0: a free place), oldest at `head`. Full, as it is but while the
/// thread's first `N` frees fill it, a `free` swaps its object for the
/// oldest and moves `head` on: one load, two stores and a mask, where a
/// ring that counted its entries and their bytes, and kept the sizes
/// beside them, took some 27 instructions on every `free`. The bytes it
/// holds are bounded by its place count and the slots' sizes (the small
/// ring takes slots of up to [`WIDE_FROM`] bytes).
struct Fifo<const N: usize> {
    slots: [usize; N],
    head: usize,
}

impl<const N: usize> Fifo<N> {
    /// Puts `e` in place of the oldest entry, which it returns (0 while
    /// the ring fills).
    #[inline(always)]
    fn swap(&mut self, e: usize) -> usize {
        const { assert!(N.is_power_of_two()) };
        let i = self.head;
        // SAFETY: `head < N`, kept so below.
        let old = core::mem::replace(unsafe { self.slots.get_unchecked_mut(i) }, e);
        self.head = (i + 1) % N;
        old
    }

    /// Takes back the entry the last [`Fifo::swap`] put in (when it
    /// returned 0, leaving the place free again) and returns it.
    fn unswap(&mut self) -> usize {
        self.head = (self.head + N - 1) % N;
        core::mem::take(&mut self.slots[self.head])
    }

    /// Takes out the entries, oldest first, leaving the ring empty.
    fn drain(&mut self, mut each: impl FnMut(usize)) {
        for _ in 0..N {
            let e = core::mem::take(&mut self.slots[self.head]);
            self.head = (self.head + 1) % N;
            if e != 0 {
                each(e);
            }
        }
    }
}

/// The calling thread's small quarantine: rings of objects only this
/// thread touches, so a `free` takes no lock and asks no CPU number:
/// `small` for slots of up to [`WIDE_FROM`] bytes, `wide` for larger
/// ones. Each entry keeps the object's address, how many bytes of it the
/// pattern covers and the page tag `free` read (`page::Chunk::tags`:
/// class and node), or 0 when it was not read there: an object with a
/// tag goes back to the thread's bin of its class the way the heap's own
/// `free` puts it there, without looking its page up again. `state` is
/// [`FRESH`] until the first `free` that quarantines registers the
/// thread-exit key ([`ARMED`]), and [`DEAD`] while the key's destructor
/// empties the rings (or when no key could be registered); then the
/// quarantine goes ([`retire`]), and the thread's frees after that (in
/// later destructors of the exiting thread) check and release at once.
/// The state is asked only when a ring is not full.
///
/// It lives in a page of its own, from the page allocator, taken at the
/// thread's first quarantining `free` and given back at its exit: in
/// thread-local storage its 608 bytes put a new thread's first call one
/// page below what glibc's own thread start touches, and each thread of
/// a program that keeps making short ones faulted that page in (2 500
/// threads of one `calloc` each: 4 509 faults against glibc's 3 008).
struct Local {
    small: Fifo<SMALL_RING>,
    wide: Fifo<WIDE_RING>,
    state: usize,
}

/// The ring's word for the object at `p` (16-byte aligned) whose pattern
/// covers `len` bytes (16, 32, 48 or 64), with page tag `tag`: the tag
/// in the 16 bits above a user address (below 2^47), `len / 16` in the
/// address's four low bits, which are 0. Never 0.
#[inline(always)]
fn entry(p: usize, len: usize, tag: u16) -> usize {
    p | (len / 16) | (tag as usize) << 48
}

/// The object, pattern length and page tag of a ring's word ([`entry`]).
#[inline(always)]
fn entry_parts(e: usize) -> (usize, usize, u16) {
    (e & ((1 << 48) - 16), (e & 15) * 16, (e >> 48) as u16)
}

const FRESH: usize = 0;
const ARMED: usize = 1;
const DEAD: usize = 2;

// The calling thread's quarantine: null before its first quarantining
// `free`, [`GONE`] once it was emptied and given back; initial-exec and
// hidden, as the thread cache.
crate::os::zeroed_thread_local! {
    /// Where the calling thread's quarantine is.
    fn local_slot() -> *mut *mut Local, "buddyslab_secure_quarantine_v3"
}

/// [`local_slot`] once the thread's quarantine is gone: its thread is
/// exiting, or no key could make sure it would be emptied.
const GONE: usize = 1;

/// The calling thread's quarantine, or null (not taken yet) or [`GONE`]
/// (see [`local_slot`]).
#[inline(always)]
fn local() -> *mut Local {
    // SAFETY: this thread's slot.
    unsafe { *local_slot() }
}

/// Whether `q`, from [`local`], is a quarantine.
#[inline(always)]
fn is_local(q: *mut Local) -> bool {
    q as usize > GONE
}

/// A quarantine for a thread that has none yet ([`local`] was null):
/// `None` when no page could be had.
#[cold]
#[inline(never)]
fn take_local() -> Option<*mut Local> {
    const { assert!(core::mem::size_of::<Local>() <= PAGE_SIZE) };
    // Zero bytes are the empty rings in state FRESH.
    let q = mm::alloc_thread_page()? as *mut Local;
    // SAFETY: this thread's slot.
    unsafe { *local_slot() = q };
    Some(q)
}

/// Gives the calling thread's quarantine `q` (emptied) back; later frees
/// of the thread release at once.
///
/// # Safety
/// `q` is this thread's quarantine, empty, and nothing uses it any more.
unsafe fn retire(q: *mut Local) {
    // SAFETY: per the caller, a page of `take_local`.
    unsafe {
        *local_slot() = GONE as *mut Local;
        mm::free_thread_page(q as usize);
    }
}

/// The pthread key whose destructor empties a thread's quarantine at
/// exit; `usize::MAX` until created (or when it could not be).
static EXIT_KEY: AtomicUsize = AtomicUsize::new(usize::MAX);

/// Registers the thread-exit destructor for the calling thread's
/// quarantine `q`; false when no key could be made (then the thread's
/// frees do not wait: a ring nobody empties would leak at thread exit).
#[cold]
#[inline(never)]
fn arm(q: *mut Local) -> bool {
    let mut key = EXIT_KEY.load(Ordering::Acquire);
    if key == usize::MAX {
        let mut fresh: libc::pthread_key_t = 0;
        // SAFETY: a valid out-pointer and a plain destructor.
        if unsafe { libc::pthread_key_create(&mut fresh, Some(thread_exit)) } != 0 {
            return false;
        }
        key = match EXIT_KEY.compare_exchange(usize::MAX, fresh as usize, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => fresh as usize,
            Err(won) => {
                // SAFETY: our key, never used.
                unsafe { libc::pthread_key_delete(fresh) };
                won
            }
        };
    }
    // SAFETY: this thread's quarantine; `setspecific` may allocate (for
    // high keys), which re-enters `free` only with the state already set.
    unsafe {
        (*q).state = ARMED;
        if libc::pthread_setspecific(key as libc::pthread_key_t, q.cast()) != 0 {
            (*q).state = DEAD;
            return false;
        }
    }
    true
}

/// Empties the exiting thread's quarantine (the key's destructor).
extern "C" fn thread_exit(arg: *mut libc::c_void) {
    let q = arg.cast::<Local>();
    // SAFETY: glibc passes back the value stored: this thread's quarantine.
    unsafe {
        (*q).state = DEAD;
        let (tc, k) = (magazine::current(), drawn());
        let release = |e| {
            let (p, len, tag) = entry_parts(e);
            small_release(tc, k, p, tag, len);
        };
        (*q).small.drain(release);
        (*q).wide.drain(release);
        retire(q);
    }
}

/// Bytes of a quarantined object the pattern covers, from its start: a
/// slot of up to 64 bytes (requests of up to 56 bytes) is filled and
/// checked whole, a larger one its first 64 bytes, where a dangling
/// pointer's fields (links, counts, vtable pointers) mostly lie, and
/// whose first line `free` has read anyway (the free mark). Each further
/// line is a read-for-ownership of a cold line on `free`: the whole slot
/// cost a quarter of all the instructions of a workload of objects of 8
/// to 1024 bytes (larson, callgrind), and the first 256 bytes still made larson's
/// time 2.9 x the default build's where the first 64 make it 2.5 x, and
/// its sized variant's 3.0 x where they make it 2.1 x (three interleaved
/// runs each; the other programs moved within their spread).
pub const PATTERN_BYTES: usize = 64;

/// Fills the first `len` bytes of the slot at `p` (16-byte aligned; `len`
/// is its size, a multiple of 16, or [`PATTERN_BYTES`] when it is larger)
/// with the quarantine's pattern:
/// the fill word, the heap's free mark (where a free object on a list
/// keeps it, so one test of it, the heap's, finds a second `free` of the
/// object wherever it is, and the object leaves the quarantine onto a
/// bin with its mark in place), then the fill word again. A mark of its
/// own in the first word cost the quarantine a test on every `free` and
/// a store when the object left.
///
/// # Safety
/// The slot is live and the caller's to write.
#[inline(always)]
unsafe fn fill_freed(p: usize, len: usize, k: Drawn) {
    // SAFETY: per the caller; `len` is a multiple of 16 up to
    // `PATTERN_BYTES`.
    unsafe { vector::fill(p, len, slab::link::mark_of(p as *mut u8, k.mark), k.fill) }
}

/// Whether the quarantined slot at `p` still holds the pattern
/// [`fill_freed`] wrote over its first `len` bytes (`usable.min(
/// PATTERN_BYTES)` for its slot size): every word of it compared, with no
/// branch per word.
///
/// # Safety
/// The slot is live and readable.
#[inline(always)]
unsafe fn holds_freed(p: usize, len: usize, k: Drawn) -> bool {
    // SAFETY: per the caller; `len` is a multiple of 16 up to
    // `PATTERN_BYTES`.
    unsafe { vector::holds(p, len, slab::link::mark_of(p as *mut u8, k.mark), k.fill) }
}

/// The quarantine's fill and check, 16 bytes at a time, with no branch
/// per piece: word-by-word loops took about 60 instructions for the fill
/// and check of a 64-byte request's slot (callgrind), and their
/// remainder loops a third of the pattern's cost on objects of 8 to 1024
/// bytes.
mod vector {
    #[cfg(target_arch = "x86_64")]
    use core::arch::x86_64::{
        __m128i, _mm_and_si128, _mm_cmpeq_epi8, _mm_load_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi64x,
        _mm_set_epi64x, _mm_setzero_si128, _mm_store_si128, _mm_xor_si128,
    };

    /// Calls `step` with the address of every 16-byte piece of `[start,
    /// end)` (16-byte aligned, 0 to 48 bytes long, a multiple of 16: the
    /// pattern past its first 16 bytes), some of them twice: the pattern
    /// past the first 16 bytes is the same word throughout, so a piece
    /// stored or checked twice changes nothing. No loop: three pieces for
    /// a whole `PATTERN_BYTES` (every slot of 64 bytes or more), else two
    /// from the ends.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    fn pieces(start: usize, end: usize, mut step: impl FnMut(usize)) {
        const _: () = assert!(super::PATTERN_BYTES == 64);
        let len = end - start;
        if len == 48 {
            step(start);
            step(start + 16);
            step(start + 32);
        } else if len != 0 {
            step(start);
            step(end - 16);
        }
    }

    /// Writes `word` into every word of `[p, p + len)` but the second,
    /// which gets `second`.
    ///
    /// # Safety
    /// `[p, p + len)` is writable, `p` 16-byte aligned, `len` a non-zero
    /// multiple of 16, at most `super::PATTERN_BYTES`.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub unsafe fn fill(p: usize, len: usize, second: usize, word: usize) {
        // SAFETY: SSE2 is part of x86-64; every store is an aligned 16
        // bytes inside the caller's range.
        unsafe {
            let v = _mm_set1_epi64x(word as i64);
            _mm_store_si128(p as *mut __m128i, _mm_set_epi64x(second as i64, word as i64));
            pieces(p + 16, p + len, |a| _mm_store_si128(a as *mut __m128i, v));
        }
    }

    /// Whether the second word at `p` holds `second` and every other word
    /// up to `p + len` holds `word`. Past the first 16 bytes, every word
    /// is `word` exactly when the AND and the OR of them all are: two
    /// instructions per 16 bytes, each with its load folded in.
    ///
    /// # Safety
    /// As [`fill`], readable.
    #[cfg(target_arch = "x86_64")]
    #[inline(always)]
    pub unsafe fn holds(p: usize, len: usize, second: usize, word: usize) -> bool {
        // SAFETY: SSE2 is part of x86-64; every load is an aligned 16
        // bytes inside the caller's range.
        unsafe {
            let v = _mm_set1_epi64x(word as i64);
            let load = |a: usize| _mm_load_si128(a as *const __m128i);
            let head = _mm_xor_si128(load(p), _mm_set_epi64x(second as i64, word as i64));
            let (mut and, mut or) = (v, v);
            pieces(p + 16, p + len, |a| {
                and = _mm_and_si128(and, load(a));
                or = _mm_or_si128(or, load(a));
            });
            let diff = _mm_or_si128(head, _mm_or_si128(_mm_xor_si128(and, v), _mm_xor_si128(or, v)));
            _mm_movemask_epi8(_mm_cmpeq_epi8(diff, _mm_setzero_si128())) == 0xffff
        }
    }

    /// [`fill`] a word at a time, elsewhere.
    ///
    /// # Safety
    /// As [`fill`].
    #[cfg(not(target_arch = "x86_64"))]
    #[inline(always)]
    pub unsafe fn fill(p: usize, len: usize, second: usize, word: usize) {
        // SAFETY: per the caller.
        unsafe {
            core::slice::from_raw_parts_mut(p as *mut usize, len / 8).iter_mut().for_each(|w| *w = word);
            *((p + 8) as *mut usize) = second;
        }
    }

    /// [`holds`] a word at a time, elsewhere.
    ///
    /// # Safety
    /// As [`holds`].
    #[cfg(not(target_arch = "x86_64"))]
    #[inline(always)]
    pub unsafe fn holds(p: usize, len: usize, second: usize, word: usize) -> bool {
        // SAFETY: per the caller.
        let words = unsafe { core::slice::from_raw_parts(p as *const usize, len / 8) };
        words.iter().enumerate().fold(0, |acc, (i, &w)| acc | (w ^ if i == 1 { second } else { word })) == 0
    }
}

/// Gives the quarantined object at `p` (its page tag `tag`, its pattern
/// over `len` bytes, see [`Local`]) back to the heap after checking its
/// pattern; `tc` is the calling thread's cache ([`magazine::current`])
/// and `k` the keys, both as the `free` that evicts the object read them.
#[inline(always)]
fn small_release(tc: *mut magazine::ThreadCache, k: Drawn, p: usize, tag: u16, len: usize) {
    // SAFETY: a quarantined slot, still live in the heap, with its
    // pattern over `len` bytes.
    unsafe {
        if !holds_freed(p, len, k) {
            stop(b"free()", b"write after free (quarantined object modified)", p);
        }
        // The heap's own fast `free`, with the page's tag already read:
        // an object of the thread's node whose bin has room goes onto
        // the bin. Anything else (another node now, a full bin, no tag,
        // a cache not active) goes through the heap's `free`. The tag is
        // still the page's: the object is live in the heap, so its slab
        // stays a slab of that class and node (a page the heap profile
        // diverts since was not diverted when the object was freed, so
        // the object is no sample; see `heap::free_elsewhere`).
        // The pattern just checked holds the free mark, so the push
        // neither reads nor writes it; the heap's `free` would take the
        // mark for a double free, so it goes first there.
        let local = (tag as u32 ^ (*tc).node_tag()) as usize;
        if local <= NR_CLASSES && magazine::has_room(tc, local) {
            magazine::push_marked(tc, p as *mut u8, local);
        } else {
            slab::link::mark_slot(p as *mut u8).write(k.fill);
            heap::free(p as *mut u8);
        }
    }
}

/// Quarantines the checked small object at `p` (slot of `usable` bytes,
/// page tag `tag`, see [`Local`]): fills it and swaps it for the oldest
/// object of its ring, which goes back to the heap ([`small_release`]);
/// `tc` and `k` as for that.
#[inline(always)]
fn small_quarantine(tc: *mut magazine::ThreadCache, k: Drawn, p: usize, usable: usize, tag: u16) {
    let len = usable.min(PATTERN_BYTES);
    // SAFETY: a live slot of `usable` bytes the program gave up.
    unsafe { fill_freed(p, len, k) };
    if usable > WIDE_FROM {
        return quarantine_wide(p, len, tag);
    }
    let q = local();
    if !is_local(q) {
        return quarantine_first(p, len, tag, false);
    }
    // SAFETY: this thread's quarantine and its small ring.
    unsafe { quarantine_in(q, &raw mut (*q).small, tc, k, p, len, tag) }
}

/// [`small_quarantine`] of the filled object at `p` (pattern over `len`
/// bytes, page tag `tag`; for the wide ring when `wide`) by a thread with
/// no quarantine ([`local`]): it takes one, or releases the object at
/// once when its quarantine is gone or no page could be had. Out of line
/// and called last, so that `free`'s common path makes no call and saves
/// no registers.
#[cold]
#[inline(never)]
fn quarantine_first(p: usize, len: usize, tag: u16, wide: bool) {
    let (tc, k) = (magazine::current(), drawn());
    let taken = if local().is_null() { take_local() } else { None };
    let Some(q) = taken else { return small_release(tc, k, p, tag, len) };
    // SAFETY: this thread's quarantine and the object's ring.
    unsafe {
        if wide {
            quarantine_in(q, &raw mut (*q).wide, tc, k, p, len, tag)
        } else {
            quarantine_in(q, &raw mut (*q).small, tc, k, p, len, tag)
        }
    }
}

/// [`small_quarantine`] of a slot of more than [`WIDE_FROM`] bytes
/// (filled, its pattern over `len` bytes): the same with the wide ring.
#[cold]
#[inline(never)]
fn quarantine_wide(p: usize, len: usize, tag: u16) {
    let q = local();
    if !is_local(q) {
        return quarantine_first(p, len, tag, true);
    }
    // SAFETY: this thread's quarantine and its wide ring.
    unsafe { quarantine_in(q, &raw mut (*q).wide, magazine::current(), drawn(), p, len, tag) }
}

/// Puts the filled object at `p` (pattern over `len` bytes, page tag
/// `tag`) in `ring` of the quarantine `q` in place of the oldest, which
/// goes back to the heap ([`small_release`], with `tc` and `k`); a place
/// still free goes to [`quarantine_filling`].
///
/// # Safety
/// `q` is this thread's quarantine and `ring` one of its rings; nothing
/// below re-enters them (`small_release` does not touch them).
#[inline(always)]
unsafe fn quarantine_in<const N: usize>(
    q: *mut Local,
    ring: *mut Fifo<N>,
    tc: *mut magazine::ThreadCache,
    k: Drawn,
    p: usize,
    len: usize,
    tag: u16,
) {
    // SAFETY: per the caller.
    let old = unsafe { (*ring).swap(entry(p, len, tag)) };
    if old == 0 {
        // SAFETY: as above; the entry just put in.
        return unsafe { quarantine_filling(q, ring) };
    }
    let (o, l, t) = entry_parts(old);
    small_release(tc, k, o, t, l)
}

/// `ring` of `q` was not full when its last swap put an object in: the
/// object stays while the quarantine is armed (the ring fills), the
/// quarantine is armed first (first `free` of the thread that
/// quarantines), or the object comes out again and goes back at once,
/// when it cannot be armed or the thread is exiting.
///
/// # Safety
/// `q` is this thread's quarantine and `ring` one of its rings, whose
/// last swap returned 0.
#[cold]
#[inline(never)]
unsafe fn quarantine_filling<const N: usize>(q: *mut Local, ring: *mut Fifo<N>) {
    // SAFETY: per the caller.
    unsafe {
        if (*q).state == ARMED || ((*q).state == FRESH && arm(q)) {
            return;
        }
        let (p, len, tag) = entry_parts((*ring).unswap());
        // No key: nothing would empty the quarantine at thread exit, so
        // it goes (it holds nothing, the ring filled only now).
        retire(q);
        small_release(magazine::current(), drawn(), p, tag, len);
    }
}

// ---------------------------------------------------------------------------
// Big blocks.

/// The live big block whose data starts at `p`: `(base, len)` of the heap
/// block, or `None` when `p` is not one.
fn big_block_of(p: usize) -> Option<(usize, usize)> {
    if p % 16 != 0 {
        return None;
    }
    let start_of = |base: usize| -> Option<usize> {
        let d = page::page_of(base);
        if !d.is_null() {
            // SAFETY: descriptors of published chunks are live.
            return unsafe {
                ((*d).kind() == page::PG_PAGES && page::page_address(d) == base)
                    .then(|| ((*d).span as usize) << os::PAGE_SHIFT)
            };
        }
        large::usable_size(base as *mut u8).ok()
    };
    let lead = p % PAGE_SIZE;
    if lead != 0 {
        return start_of(p - lead).map(|len| (p - lead, len));
    }
    // Data on a page boundary: the lead is a power of two of a page or
    // more (an alignment request); try each the address allows.
    let mut lead = PAGE_SIZE;
    while lead != 0 && p % lead == 0 && lead <= p {
        if let Some(len) = start_of(p - lead) {
            return Some((p - lead, len));
        }
        lead <<= 1;
    }
    None
}

/// The big quarantine, of blocks (`base`, data address; `len` bytes), and
/// the same mirrored where the double-free test and the fault handler read
/// them without the lock (data 0: a free place).
static BIG: Mutex<Ring<(usize, usize), BIG_RING>> = Mutex::new(Ring::new((0, 0)));
static BIG_BASE: [AtomicUsize; BIG_RING] = [const { AtomicUsize::new(0) }; BIG_RING];
static BIG_LEN: [AtomicUsize; BIG_RING] = [const { AtomicUsize::new(0) }; BIG_RING];
static BIG_DATA: [AtomicUsize; BIG_RING] = [const { AtomicUsize::new(0) }; BIG_RING];

fn in_big_quarantine(p: usize) -> bool {
    BIG_DATA.iter().any(|d| d.load(Ordering::Relaxed) == p)
}

/// Whether the heap block at `base` is a page run (not a large mapping).
#[inline]
fn is_run(base: usize) -> bool {
    !page::page_of(base).is_null()
}

/// The two spans of a freed page run's data (at `p`, `n` bytes) that
/// carry the pattern: its first page and its last, both touched when the
/// block was armed (the header's page and the canary's), so filling them
/// faults nothing in. Empty spans are `(x, x)`.
#[inline]
fn run_pattern_spans(p: usize, n: usize) -> [(usize, usize); 2] {
    let end = p + n;
    let first_end = ((p & !(PAGE_SIZE - 1)) + PAGE_SIZE).min(end);
    let last_start = (round_up(end, PAGE_SIZE) - PAGE_SIZE).max(first_end);
    [(p, first_end), (last_start, end)]
}

/// Fills the freed page run with data at `p` (`n` bytes) with the
/// quarantine's pattern over [`run_pattern_spans`].
///
/// # Safety
/// The block is live, open, and the caller's to write.
unsafe fn run_fill(p: usize, n: usize) {
    let word = fill_word();
    for (start, end) in run_pattern_spans(p, n) {
        // SAFETY: per the caller; the spans lie in the data.
        unsafe { fill(start, end, word) };
    }
}

/// Checks the freed page run `[base, base + len)` with data at `p`
/// (filled by [`run_fill`], open): its header and its pattern. Stops the
/// process when either was written after the free, naming the call
/// `what` that found it; returns the end of its open pages (the data's,
/// where its guard starts).
fn run_check(what: &[u8], base: usize, len: usize, p: usize) -> usize {
    let word = fill_word();
    // SAFETY: the header's page of a freed run of ours, open.
    let (n, tag) = unsafe { (*(base as *const usize), *((base + 8) as *const usize)) };
    // The header says which pages are read: it must be intact first.
    if tag != big_tag(secret(p), n) || n > base + len - p {
        stop(what, b"write after free (quarantined block's header modified)", p);
    }
    // SAFETY: the spans lie in the freed data, open.
    if !run_pattern_spans(p, n).iter().all(|&(start, end)| unsafe { holds_pattern(start, end, word) }) {
        stop(what, b"write after free (quarantined block modified)", p);
    }
    round_up(p + n, PAGE_SIZE)
}

/// Gives the freed big block `[base, base + len)` back to the heap; a
/// page run's pages from `open_end` on (its guard) are opened first.
fn big_release(base: usize, len: usize, open_end: usize) {
    if is_run(base) && open_end < base + len {
        // A page run: the buddy allocator may hand its pages to anything.
        // SAFETY: ours, freed.
        if unsafe { os::mprotect(open_end, base + len - open_end, true) }.is_err() {
            stop(b"free()", b"cannot reopen a quarantined block", base);
        }
    }
    // SAFETY: a live block the program gave up; a large mapping may stay
    // inaccessible (`big_alloc` opens what it hands out).
    unsafe { heap::free(base as *mut u8) };
}

/// Big blocks out of the quarantine, kept for reuse as they are: a large
/// mapping with all its pages `PROT_NONE`, a page run with its data open
/// (holding the pattern, [`run_fill`]) and its guard pages in place.
/// `big_alloc` takes one that fits and moves its guard to the new end of
/// the data: for a mapping one `mprotect` opening its data, for a page
/// run none when the data ends on the same page as before, else one
/// (opening pages, which needs no TLB shootdown, or protecting them),
/// where a block from the heap costs a guard page's `mprotect` on the way
/// in and, for a page run, opening the guard on its way back to the buddy
/// allocator (a mapping from the mapping cache: opening its data and
/// protecting its guard). To the heap they are live blocks; to the
/// program freed ones: [`big_check`] stops a free of one and the fault
/// handler names an access to a mapping's. Oldest first, mirrored in
/// [`SPARE_BASE`] and [`SPARE_LEN`] for readers without the lock (base 0:
/// a free place). Each is `(base, len, data)`: `data` the address of the
/// freed data of a page run, 0 for a mapping.
struct Spares {
    blocks: [(usize, usize, usize); SPARE_BLOCKS],
    count: usize,
    bytes: usize,
}

static SPARES: Mutex<Spares> = Mutex::new(Spares { blocks: [(0, 0, 0); SPARE_BLOCKS], count: 0, bytes: 0 });
static SPARE_BASE: [AtomicUsize; SPARE_BLOCKS] = [const { AtomicUsize::new(0) }; SPARE_BLOCKS];
static SPARE_LEN: [AtomicUsize; SPARE_BLOCKS] = [const { AtomicUsize::new(0) }; SPARE_BLOCKS];
/// How many blocks [`SPARES`] holds, read without the lock.
static SPARE_COUNT: AtomicUsize = AtomicUsize::new(0);

impl Spares {
    /// Publishes the blocks to the lock-free readers.
    fn mirror(&self) {
        for (i, (base, len)) in SPARE_BASE.iter().zip(&SPARE_LEN).enumerate() {
            let (b, l, _) = if i < self.count { self.blocks[i] } else { (0, 0, 0) };
            len.store(l, Ordering::Relaxed);
            base.store(b, Ordering::Relaxed);
        }
        SPARE_COUNT.store(self.count, Ordering::Relaxed);
    }

    fn remove(&mut self, i: usize) -> (usize, usize, usize) {
        let block = self.blocks[i];
        self.blocks.copy_within(i + 1..self.count, i);
        self.count -= 1;
        self.bytes -= block.1;
        block
    }
}

fn is_spare(base: usize) -> bool {
    SPARE_BASE.iter().any(|b| b.load(Ordering::Relaxed) == base)
}

/// The open end of the spare `(base, len, data)`: `base` for a mapping
/// (all inaccessible), the end of a page run's data after checking its
/// pattern ([`run_check`], which names the call `what` if it stops).
fn spare_open_end(what: &[u8], base: usize, len: usize, data: usize) -> usize {
    if data == 0 {
        base
    } else {
        run_check(what, base, len, data)
    }
}

/// Keeps the big block `[base, base + len)` that leaves the quarantine
/// (data at `p`) for reuse, giving the oldest spares back to the heap to
/// make room. A page run's pattern is checked here, on leaving the
/// quarantine, and again when it is reused or given back.
fn big_retire(base: usize, len: usize, p: usize) {
    let data = if is_run(base) {
        run_check(b"free()", base, len, p);
        p
    } else {
        0
    };
    let Some(mut spares) = SPARES.try_lock() else {
        return big_release(base, len, spare_open_end(b"free()", base, len, data));
    };
    if len > SPARE_BYTES {
        drop(spares);
        return big_release(base, len, spare_open_end(b"free()", base, len, data));
    }
    let mut out = [(0usize, 0usize, 0usize); SPARE_BLOCKS];
    let mut count = 0;
    while spares.count == SPARE_BLOCKS || spares.bytes + len > SPARE_BYTES {
        out[count] = spares.remove(0);
        count += 1;
    }
    let at = spares.count;
    spares.blocks[at] = (base, len, data);
    spares.count += 1;
    spares.bytes += len;
    spares.mirror();
    drop(spares);
    for &(b, l, d) in &out[..count] {
        big_release(b, l, spare_open_end(b"free()", b, l, d));
    }
}

/// A spare block of `total` to `total * 2` bytes, taken out: its base,
/// length and the end of its open pages ([`spare_open_end`], the pattern
/// of a page run checked).
fn spare_take(total: usize) -> Option<(usize, usize, usize)> {
    if SPARE_COUNT.load(Ordering::Relaxed) == 0 {
        return None;
    }
    let mut spares = SPARES.try_lock()?;
    let most = total * 2;
    let mut best: Option<usize> = None;
    for i in 0..spares.count {
        let len = spares.blocks[i].1;
        if len >= total && len <= most && best.is_none_or(|b| len < spares.blocks[b].1) {
            best = Some(i);
        }
    }
    let (base, len, data) = spares.remove(best?);
    spares.mirror();
    drop(spares);
    Some((base, len, spare_open_end(b"malloc()", base, len, data)))
}

/// Checks the big block with data at `p` and returns `(base, len, n)`.
fn big_check(what: &[u8], p: usize) -> (usize, usize, usize) {
    if in_big_quarantine(p) {
        stop(what, b"double free or use after free (block in quarantine)", p);
    }
    let Some((base, len)) = big_block_of(p) else {
        stop(what, b"invalid pointer (not a live block of buddyslab)", p);
    };
    if is_spare(base) {
        stop(what, b"double free or use after free (block freed)", p);
    }
    // SAFETY: the first page of a live block, open (it is not quarantined).
    let (word, tag) = unsafe { (*(base as *const usize), *((base + 8) as *const usize)) };
    let n = word;
    let h = secret(p);
    if tag != big_tag(h, n) || n > base + len - p {
        stop(what, b"invalid pointer or heap underflow (block header overwritten)", p);
    }
    let data_end = round_up(p + n, PAGE_SIZE);
    // SAFETY: the slack before the guard page, open.
    if !unsafe { holds_pattern(p + n, data_end, canary_word(h)) } {
        stop(what, b"heap overflow (canary after the block overwritten)", p);
    }
    (base, len, n)
}

/// The heap block's length for a big block of `data` bytes up to its
/// guard page: the guard and, from [`RANDOM_PAD_FROM`], random pages more.
/// More than the slab tier serves, so the block is a page run or a large
/// mapping whatever the alignment.
fn big_total(data: usize) -> usize {
    let total = (data + PAGE_SIZE).max(SLAB_MAX + PAGE_SIZE);
    if total < RANDOM_PAD_FROM {
        return total;
    }
    total + (mix(os::monotonic_ns() as usize ^ key()) % RANDOM_PAD_PAGES) * PAGE_SIZE
}

/// Writes the header and canary of the big block with data at `p`, of
/// `n` bytes, whose heap block starts at `base`.
///
/// # Safety
/// `[base, round_up(p + n, PAGE_SIZE))` is ours and open.
unsafe fn big_arm(base: usize, p: usize, n: usize) {
    let h = secret(p);
    // SAFETY: per the caller.
    unsafe {
        *(base as *mut usize) = n;
        *((base + 8) as *mut usize) = big_tag(h, n);
        fill(p + n, round_up(p + n, PAGE_SIZE), canary_word(h));
    }
}

/// A big block of `n` bytes aligned to `align`.
fn big_alloc(n: usize, align: usize) -> *mut u8 {
    let lead = align.max(BIG_HEADER);
    let Some(data) = lead.checked_add(n).map(|x| round_up(x, PAGE_SIZE)) else {
        return ptr::null_mut();
    };
    let total = big_total(data);
    if align <= PAGE_SIZE {
        if let Some((base, _, open_end)) = spare_take(total) {
            // The data is `[base, base + data)`, the guard every page after
            // it: pages open up to `open_end` and protected after it now.
            let data_end = base + data;
            // SAFETY: a spare block of ours of at least `total > data`
            // bytes; the pages changed are its own.
            unsafe {
                let moved = if open_end < data_end {
                    os::mprotect(open_end, data_end - open_end, true)
                } else if open_end > data_end {
                    os::mprotect(data_end, open_end - data_end, false)
                } else {
                    Ok(())
                };
                if moved.is_err() {
                    stop(b"malloc()", b"cannot open a reused block", base);
                }
                big_arm(base, base + lead, n);
            }
            return (base + lead) as *mut u8;
        }
    }
    let base = heap::aligned_alloc(align.max(PAGE_SIZE), total) as usize;
    if base == 0 {
        return ptr::null_mut();
    }
    let len = heap::usable_size(base as *mut u8);
    let p = base + lead;
    // A page run is open when handed out ([`big_release`] opens one before
    // the buddy allocator takes it back), so only its guard is protected:
    // one system call, not two. A large mapping is open throughout when
    // fresh (only its guard to protect) and inaccessible throughout when
    // cut from one cached extent (every mapping this layer frees is made
    // `PROT_NONE` before the cache gets it: only its data to open); when
    // `large` cannot say which, both.
    let (open_data, protect_guard) = if is_run(base) {
        (false, true)
    } else {
        match large::handed_out_fresh(base) {
            Some(true) => (false, true),
            Some(false) => (true, false),
            None => (true, true),
        }
    };
    // SAFETY: the block is ours.
    unsafe {
        if (open_data && os::mprotect(base, data, true).is_err())
            || (protect_guard && os::mprotect(base + data, len - data, false).is_err())
        {
            stop(b"malloc()", b"cannot protect a guard page", base);
        }
        big_arm(base, p, n);
    }
    p as *mut u8
}

/// Quarantines the checked big block `[base, base + len)` with data at
/// `p` of `n` bytes. A large mapping is made `PROT_NONE`: a read or a
/// write after free faults. A page run keeps its pages open and gets the
/// quarantine's pattern on its first and last page of data
/// ([`run_fill`]), checked when it leaves: making it `PROT_NONE` needs a
/// TLB shootdown on every CPU that runs the program, and takes the
/// `mmap` lock for writing, at every such `free` (a third of powerlaw's
/// samples on two threads were in the kernel for it).
fn big_free(base: usize, len: usize, p: usize, n: usize) {
    if is_run(base) {
        // SAFETY: a live, open block the program gave up.
        unsafe { run_fill(p, n) };
    } else {
        // SAFETY: a live block the program gave up.
        if unsafe { os::mprotect(base, len, false) }.is_err() {
            stop(b"free()", b"cannot protect a freed block", p);
        }
    }
    let Some(mut ring) = BIG.try_lock() else {
        return big_release(base, len, round_up(p + n, PAGE_SIZE));
    };
    let mut evicted = [((0usize, 0usize), 0usize); BIG_RING];
    let count = ring.push((base, p), len, BIG_RING_BYTES, &mut evicted);
    let mut held = 0;
    for ((b, data), l) in ring.entries() {
        BIG_BASE[held].store(b, Ordering::Relaxed);
        BIG_LEN[held].store(l, Ordering::Relaxed);
        BIG_DATA[held].store(data, Ordering::Relaxed);
        held += 1;
    }
    for data in &BIG_DATA[held..] {
        data.store(0, Ordering::Relaxed);
    }
    drop(ring);
    for &((b, data), l) in &evicted[..count] {
        big_retire(b, l, data);
    }
}

/// Resizes the live, checked big block with data at `p` (`n` bytes; heap
/// block `[base, base + len)`) to `size` bytes without copying, as the
/// heap's `realloc` does: within its pages, by growing a page run into
/// free pages behind it, or by `mremap` of a large mapping. Returns the
/// data's new address, or `None` (nothing changed) when the block must
/// move by copy: also when it shrinks to a slab object's size or to less
/// than half of its pages.
///
/// The guard moves with the end of the data: the pages between the old
/// and the new end are opened or protected (one `mprotect`), a page run's
/// growth gets a new guard page (two), a mapping's growth is opened
/// whole, remapped and its new guard protected (three), where moving cost
/// a new block's guard, a copy, the old block's protection and, for a
/// page run, its reopening after the quarantine. A mapping moved by
/// `mremap` leaves its old address unmapped at once, not quarantined.
fn big_resize(p: usize, n: usize, base: usize, len: usize, size: usize) -> Option<usize> {
    let lead = p - base;
    let data = round_up(p + n, PAGE_SIZE) - base;
    let new_data = round_up(lead.checked_add(size)?, PAGE_SIZE);
    let stop_protect = || -> ! { stop(b"realloc()", b"cannot protect a guard page", p) };
    // A block that would now be a slab object, or that would keep more
    // than half of its pages unused (inaccessible, but resident if they
    // were written), moves, as the heap's `realloc` moves such a run.
    if size + 8 <= SLAB_MAX || (new_data + PAGE_SIZE) * 2 < len {
        return None;
    }
    // `[base, base + len)` is the live block the program resizes: the
    // pages changed below are its own.
    if new_data + PAGE_SIZE <= len {
        // The new end and its guard fit the block as it is.
        let changed = if new_data > data {
            // SAFETY: pages of the block, inside it.
            unsafe { os::mprotect(base + data, new_data - data, true) }
        } else if new_data < data {
            // SAFETY: pages of the block, inside it.
            unsafe { os::mprotect(base + new_data, data - new_data, false) }
        } else {
            Ok(())
        };
        if changed.is_err() {
            stop_protect();
        }
        // SAFETY: the block's header and data pages, open.
        unsafe { big_arm(base, p, size) };
        return Some(p);
    }
    let total = big_total(new_data);
    let head = page::page_of(base);
    if !head.is_null() {
        let threshold = large::MMAP_THRESHOLD.load(Ordering::Relaxed).min(heap::PAGE_TIER_MAX);
        // SAFETY: the head of a live run of `len` bytes, fewer than `total`.
        if total >= threshold || !unsafe { mm::grow_pages_exact(head, total >> os::PAGE_SHIFT) } {
            return None;
        }
        // The growth comes open from the buddy allocator: open the old
        // guard, protect the new one.
        // SAFETY: the run's pages, `total` bytes of them now.
        unsafe {
            if os::mprotect(base + data, len - data, true).is_err()
                || os::mprotect(base + new_data, total - new_data, false).is_err()
            {
                stop_protect();
            }
            big_arm(base, p, size);
        }
        return Some(p);
    }
    if lead > PAGE_SIZE || total < large::MMAP_THRESHOLD.load(Ordering::Relaxed).min(heap::PAGE_TIER_MAX) {
        return None;
    }
    // `large::resize` declines a growth the mapping cache could serve
    // (the caller copies into cached memory, cheaper than faulting the
    // growth in): move at once then, rather than open the guard pages
    // for it and protect them again (two `mprotect`s for nothing, most of
    // the tries on reallocchain). Read without the cache's lock, so a
    // guess either way: a wrong one costs those two calls, or a copy.
    if total <= large::MMAP_THRESHOLD.load(Ordering::Relaxed) && large::CACHED_BYTES.load(Ordering::Relaxed) >= total {
        return None;
    }
    // One kernel mapping for `mremap`: the guard pages open first.
    // SAFETY: the mapping's own pages.
    if unsafe { os::mprotect(base + data, len - data, true) }.is_err() {
        stop_protect();
    }
    // SAFETY: a live large block; the shadow's records follow it.
    let q = unsafe { large::resize(base as *mut u8, total) };
    let q = q as usize;
    let Some(new_len) = (q != 0).then(|| large::usable_size(q as *mut u8).ok()).flatten() else {
        // SAFETY: the mapping's own pages, unchanged by `resize`.
        if unsafe { os::mprotect(base + data, len - data, false) }.is_err() {
            stop_protect();
        }
        return None;
    };
    if q != base {
        super::check::remember_freed_large(base as *mut u8);
        if crate::profile::on() {
            crate::profile::forget_block(base as *mut u8);
        }
    }
    // The growth may be a cached extent, inaccessible since it left the
    // quarantine: open the data, protect the new guard.
    // SAFETY: the mapping's pages, `new_len` bytes of them at `q` now.
    unsafe {
        if (new_data > len && os::mprotect(q + len, new_data - len, true).is_err())
            || os::mprotect(q + new_data, new_len - new_data, false).is_err()
        {
            stop_protect();
        }
        big_arm(q, q + lead, size);
    }
    Some(q + lead)
}

// ---------------------------------------------------------------------------
// The API (the same as `heap`'s).

/// Allocates `size` bytes (see the module doc). Null when out of memory
/// or `size` is impossible; touches no `errno` (the C face calls
/// [`malloc_or`]).
#[inline]
pub fn malloc(size: usize) -> *mut u8 {
    malloc_or(size, heap::nothing)
}


/// [`malloc`], calling `out_of_memory` before it returns null, as
/// [`heap::malloc_or`]: the C face sets `errno` so.
///
/// The fast path: a request of 1 to `TABLE_MAX - 8` bytes takes its class
/// (of `size + 8` bytes) from the table and an object from the thread's
/// bin directly, as the heap's `malloc` would, and arms it.
///
/// No call on that path but the slow paths', each the function's last
/// step: an empty bin, a link the page's tag does not vouch for
/// (`magazine::pop_quick`) and a key not drawn yet go to
/// `malloc_small_slow`, which does it all again. With the refill called
/// in the middle, and the block armed after it, the fast path kept the
/// request in registers a call preserves, and saved and restored five of
/// them on every `malloc`.
#[inline]
pub fn malloc_or(size: usize, out_of_memory: magazine::OutOfMemory) -> *mut u8 {
    if size.wrapping_sub(1) < slab::TABLE_MAX - 8 {
        let class = slab::class_of(size + 8);
        // SAFETY: the table's classes are < NR_CLASSES.
        let p = unsafe { magazine::pop_quick(class) };
        let key = key_drawn();
        if p.is_null() || key == 0 {
            return malloc_small_slow(size, class, p, out_of_memory);
        }
        // SAFETY: the table's classes are < NR_CLASSES; a fresh slot of
        // the class's size >= size + 8 bytes.
        unsafe { small_arm_with(p as usize, size, slab::CLASSES.get_unchecked(class).size as usize, key) };
        return p;
    }
    malloc_other(size, out_of_memory)
}

/// [`malloc_or`] of `size` bytes (class `class`) past its fast path: `p`
/// is the object it popped (when the key was not drawn yet), or null.
#[cold]
#[inline(never)]
fn malloc_small_slow(size: usize, class: usize, p: *mut u8, out_of_memory: magazine::OutOfMemory) -> *mut u8 {
    let p = if p.is_null() { magazine::alloc(class, size + 8, ensure_init, out_of_memory) } else { p };
    if !p.is_null() {
        // SAFETY: as in `malloc_or`.
        unsafe { small_arm(p as usize, size, slab::CLASSES.get_unchecked(class).size as usize) };
    }
    p
}

/// [`malloc_or`] of 0 bytes or more than the class table covers.
#[inline(never)]
fn malloc_other(size: usize, out_of_memory: magazine::OutOfMemory) -> *mut u8 {
    let p = aligned_alloc(MIN_ALIGN, size);
    if p.is_null() {
        out_of_memory();
    }
    p
}

/// Allocates `size` bytes aligned to `align` (a power of two).
pub fn aligned_alloc(align: usize, size: usize) -> *mut u8 {
    if size == 0 && align <= MIN_ALIGN {
        let z = zero_alloc();
        if !z.is_null() {
            return z;
        }
    }
    if size > isize::MAX as usize / 2 {
        return ptr::null_mut();
    }
    let class = if align <= MIN_ALIGN {
        (size + 8 <= SLAB_MAX).then(|| slab::class_of(size + 8))
    } else {
        slab::class_for_aligned(size + 8, align)
    };
    let Some(class) = class else {
        return big_alloc(size, align.max(MIN_ALIGN));
    };
    let p = magazine::alloc(class, size + 8, ensure_init, heap::nothing);
    if !p.is_null() {
        let usable = slab::size_of_class(class);
        debug_assert_eq!(usable, heap::usable_size(p));
        // SAFETY: a fresh slot of `usable` >= size + 8 bytes.
        unsafe { small_arm(p as usize, size, usable) };
    }
    p
}

/// Allocates `n * size` zeroed bytes; null on overflow.
pub fn calloc(n: usize, size: usize) -> *mut u8 {
    match n.checked_mul(size) {
        Some(total) => zeroed_alloc(total, MIN_ALIGN),
        None => ptr::null_mut(),
    }
}

/// Allocates `size` zeroed bytes aligned to `align`.
pub fn zeroed_alloc(size: usize, align: usize) -> *mut u8 {
    let p = aligned_alloc(align, size);
    if !p.is_null() && size != 0 {
        // SAFETY: a fresh block of `size` bytes.
        unsafe { ptr::write_bytes(p, 0, size) };
    }
    p
}

/// The checked size of the live block at `p` (not null), and whether it is
/// small (with its slot size) or big (with its heap block).
enum Block {
    Zero(usize),
    Small { n: usize, usable: usize },
    Big { n: usize, base: usize, len: usize },
}

/// What the process prints when a small object handed to `free` carries
/// the free mark (it is on a list or in the quarantine).
const FREED_FREE: &[u8] = b"double free detected (the block is free or quarantined)";
/// The same for the calls that read the block (`realloc`,
/// `malloc_usable_size`).
const FREED_READ: &[u8] = b"use after free (the block is free or quarantined)";

/// The live block at `p` (not null), checked, for the call `what`; a
/// small object that carries the free mark stops the process with
/// `why_free` ([`FREED_FREE`] or [`FREED_READ`]).
fn block_of(what: &'static [u8], why_free: &'static [u8], p: *mut u8) -> Block {
    let a = p as usize;
    if let Some(slot) = zero_slot(a) {
        return Block::Zero(slot);
    }
    if let Some(usable) = heap::slab_usable_for(p, what, why_free) {
        let n = small_check(what, a, usable, drawn());
        return Block::Small { n, usable };
    }
    let (base, len, n) = big_check(what, a);
    Block::Big { n, base, len }
}

/// Frees `p` into the quarantine (null is a no-op); stops the process for
/// a pointer that is not a live block, or a block written past its end.
///
/// The fast path: the page's tag (`page::Chunk::tags`, through the thread
/// cache's remembered chunk, as the heap's own `free` reads it) says "an
/// object of a user slab of class c" for any node, so one read gives the
/// slot size and the tag the quarantine hands back with the object. The
/// checks are the heap's (slot start, not free) and this layer's (not
/// quarantined, size word, canary). The tag is read as the heap's `free`
/// reads it (`magazine::remembered_tag`, the remembered way's tag array
/// at hand); a chunk this thread does not remember takes
/// `free_unremembered`, which looks it up and goes on the same way.
/// Everything else (null, zero-size blocks, big blocks, pages the heap
/// profile diverts, bad pointers) takes `free_other`.
///
/// # Safety
/// If `p` is a live block, nothing uses it afterwards.
#[inline]
pub unsafe fn free(p: *mut u8) {
    let tc = magazine::current();
    // SAFETY: the thread cache is this thread's.
    match unsafe { magazine::remembered_tag(tc, p as usize) } {
        // SAFETY: the tag of the page holding `p`.
        Some(tag) => unsafe { free_tagged(tc, p, tag) },
        None => free_unremembered(tc, p),
    }
}

/// [`free`] of a block in a chunk the thread cache does not remember: the
/// chunk map's answer (now remembered), then the same path.
#[cold]
#[inline(never)]
fn free_unremembered(tc: *mut magazine::ThreadCache, p: *mut u8) {
    let a = p as usize;
    // SAFETY: the thread cache is this thread's.
    let chunk = unsafe { (*tc).chunk_of(a) };
    if chunk.is_null() {
        return free_other(p);
    }
    // SAFETY: a published chunk that holds `a`; its tag is that of the
    // page holding `p`.
    unsafe { free_tagged(tc, p, page::Chunk::tag(chunk, a)) }
}

/// [`free`] once the tag of the page holding `p` is read.
///
/// # Safety
/// `tc` is [`magazine::current`]; `tag` is the tag of the page holding
/// `p`; if `p` is a live block, nothing uses it afterwards.
#[inline(always)]
unsafe fn free_tagged(tc: *mut magazine::ThreadCache, p: *mut u8, tag: u16) {
    let a = p as usize;
    let user_class = (tag & 0xff) as usize;
    if user_class.wrapping_sub(1) < NR_CLASSES {
        // SAFETY: 1 <= user_class <= NR_CLASSES.
        let info = unsafe { slab::CLASSES.get_unchecked(user_class - 1) };
        if !info.is_object_start(a) {
            stop(b"free()", b"invalid pointer (inside an object)", a);
        }
        let k = drawn();
        // SAFETY: the start of a slot of a user slab, >= 16 bytes: its
        // free mark is there on a list and in the quarantine alike.
        if unsafe { slab::link::is_marked_free_with(p, k.mark) } {
            stop(b"free()", FREED_FREE, a);
        }
        let usable = info.size as usize;
        small_check(b"free()", a, usable, k);
        return small_quarantine(tc, k, a, usable, tag);
    }
    free_other(p)
}

/// [`free`] of anything but an object of a user slab's page with its
/// plain tag.
#[cold]
#[inline(never)]
fn free_other(p: *mut u8) {
    if p.is_null() {
        return;
    }
    match block_of(b"free()", FREED_FREE, p) {
        Block::Zero(slot) => zero_check(b"free()", p as usize, slot, true),
        Block::Small { usable, .. } => small_quarantine(magazine::current(), drawn(), p as usize, usable, 0),
        Block::Big { n, base, len } => big_free(base, len, p as usize, n),
    }
}

/// The size the block at `p` was asked for (0 for null).
pub fn usable_size(p: *mut u8) -> usize {
    if p.is_null() {
        return 0;
    }
    match block_of(b"malloc_usable_size()", FREED_READ, p) {
        Block::Zero(slot) => {
            zero_check(b"malloc_usable_size()", p as usize, slot, false);
            0
        }
        Block::Small { n, .. } | Block::Big { n, .. } => n,
    }
}

/// C `realloc` (see [`heap::realloc`]).
///
/// # Safety
/// `p` is null or a live block; after a non-null return it is not used.
pub unsafe fn realloc(p: *mut u8, size: usize) -> *mut u8 {
    // SAFETY: per the caller; the closures' blocks are the caller's `p`.
    unsafe {
        heap::realloc_by(p, size, malloc, |p| free(p), |p, size, align| realloc_aligned(p, size, align))
    }
}

/// Resizes `p` to `size` (> 0) bytes keeping alignment `align`: in place
/// when the slot or the pages still fit, otherwise by moving.
///
/// # Safety
/// `p` is a live block aligned to `align`; after a non-null return it is
/// not used.
pub unsafe fn realloc_aligned(p: *mut u8, size: usize, align: usize) -> *mut u8 {
    let a = p as usize;
    let block = block_of(b"realloc()", FREED_READ, p);
    let old = match block {
        Block::Zero(slot) => {
            zero_check(b"realloc()", a, slot, false);
            0
        }
        Block::Small { n, usable, .. } => {
            if size + 8 <= usable && size * 2 + 8 > usable {
                // SAFETY: the live slot, `usable >= size + 8`.
                unsafe { small_arm(a, size, usable) };
                return p;
            }
            n
        }
        Block::Big { n, base, len } => {
            if let Some(q) = big_resize(a, n, base, len, size) {
                return q as *mut u8;
            }
            n
        }
    };
    let q = aligned_alloc(align, size);
    if q.is_null() {
        return q;
    }
    // SAFETY: both live, distinct, each at least the copied length.
    unsafe { ptr::copy_nonoverlapping(p, q, old.min(size)) };
    match block {
        // Checked above and unchanged since (`big_resize` changed
        // nothing): `free` would check it all again, the two scans of
        // the quarantine and the spares, the lookup and the canary up to
        // the page's end (up to 4 KiB read) included.
        Block::Big { n, base, len } => big_free(base, len, a, n),
        // SAFETY: a live block, not used afterwards. (A small block's
        // checks on `free` are the fast path's few reads.)
        _ => unsafe { free(p) },
    }
    q
}

// ---------------------------------------------------------------------------
// Faults on protected pages.

/// Installs the `SIGSEGV` handler that names faults on the secure build's
/// protected pages (zero-size blocks, quarantined big blocks, guard pages)
/// before the process dies; called once by the C library's constructor,
/// and only when the program has no handler yet.
pub fn install_fault_handler() {
    // SAFETY: querying and setting a signal disposition; the handler only
    // reads atomics and calls async-signal-safe write(2)/abort(3).
    unsafe {
        let mut old: libc::sigaction = core::mem::zeroed();
        if libc::sigaction(libc::SIGSEGV, ptr::null(), &mut old) != 0 || old.sa_sigaction != libc::SIG_DFL {
            return;
        }
        let mut action: libc::sigaction = core::mem::zeroed();
        action.sa_sigaction = on_fault as *const () as usize;
        action.sa_flags = libc::SA_SIGINFO | libc::SA_RESETHAND | libc::SA_ONSTACK;
        libc::sigemptyset(&mut action.sa_mask);
        libc::sigaction(libc::SIGSEGV, &action, ptr::null_mut());
    }
}

extern "C" fn on_fault(_signal: libc::c_int, info: *mut libc::siginfo_t, _context: *mut libc::c_void) {
    // SAFETY: the kernel passes a valid siginfo for SA_SIGINFO handlers.
    let (addr, code) = unsafe { ((*info).si_addr() as usize, (*info).si_code) };
    let why: &[u8] = if zero_slot(addr).is_some() {
        b"zero-size block read or written"
    } else if (0..BIG_RING).any(|i| {
        let base = BIG_BASE[i].load(Ordering::Relaxed);
        BIG_DATA[i].load(Ordering::Relaxed) != 0 && addr.wrapping_sub(base) < BIG_LEN[i].load(Ordering::Relaxed)
    }) {
        b"use after free (block in quarantine)"
    } else if (0..SPARE_BLOCKS).any(|i| {
        let base = SPARE_BASE[i].load(Ordering::Relaxed);
        base != 0 && addr.wrapping_sub(base) < SPARE_LEN[i].load(Ordering::Relaxed)
    }) {
        b"use after free (block freed)"
    } else if code == SEGV_ACCERR {
        b"access to a protected page (guard page past a block, or a freed block)"
    } else {
        // Not ours to name: SA_RESETHAND restored the default action, and
        // returning faults again.
        return;
    };
    stop(b"SIGSEGV", why, addr);
}

/// `si_code` of a fault on a mapped page the access is not allowed to
/// (Linux's `SEGV_ACCERR`; the libc crate does not name it).
const SEGV_ACCERR: libc::c_int = 2;

#[cfg(test)]
mod tests {
    use super::*;

    /// Every size and alignment round-trips: the block is aligned, its
    /// usable size is the size asked for, its bytes are its own, and its
    /// free passes the checks.
    #[test]
    fn blocks_keep_their_size_alignment_and_contents() {
        let sizes = [0usize, 1, 7, 8, 15, 16, 24, 56, 64, 100, 1000, 4088, 4096, 32 * 1024 - 8, 32 * 1024, 64 * 1024 + 3, 300 * 1024];
        for &align in &[16usize, 32, 64, 4096, 16384] {
            let mut live = [(ptr::null_mut::<u8>(), 0usize); 17];
            for (slot, &size) in live.iter_mut().zip(&sizes) {
                let p = aligned_alloc(align, size);
                assert!(!p.is_null());
                assert_eq!(p as usize % align.min(if size == 0 { 16 } else { align }), 0, "size {size} align {align}");
                assert_eq!(usable_size(p), size, "size {size} align {align}");
                // SAFETY: a live block of `size` bytes.
                unsafe { ptr::write_bytes(p, size as u8, size) };
                *slot = (p, size);
            }
            for &(p, size) in &live {
                // SAFETY: a live block of `size` bytes, written above.
                assert!((0..size).all(|i| unsafe { *p.add(i) } == size as u8));
                // SAFETY: live, given up.
                unsafe { free(p) };
            }
        }
    }

    /// `realloc` keeps the contents, in place or moved, and the new block
    /// has the new size.
    #[test]
    fn realloc_keeps_contents() {
        let mut p = malloc(10);
        // SAFETY: 10 live bytes.
        unsafe { ptr::copy_nonoverlapping(b"0123456789".as_ptr(), p, 10) };
        for &size in &[12usize, 40, 5000, 70 * 1024, 200 * 1024, 30, 10] {
            // SAFETY: `p` is live; the old one is not used again.
            p = unsafe { realloc(p, size) };
            assert_eq!(usable_size(p), size);
            // SAFETY: at least 10 live bytes.
            assert_eq!(unsafe { core::slice::from_raw_parts(p, 10) }, b"0123456789");
        }
        // SAFETY: live, given up.
        unsafe { free(p) };
    }

    /// The quarantine's fill covers every word of every length it is
    /// given (16 to [`PATTERN_BYTES`]), and its check sees a change to any
    /// one of them, in any byte.
    #[test]
    fn big_realloc_grows_and_shrinks_in_place_with_its_guard() {
        // Page runs grown within their pages and into free pages behind
        // them, mappings grown by mremap, and shrinks: every byte up to
        // the size kept, the canary right, and the whole block writable.
        let mut p = malloc(40 * 1024);
        let mut n = 40 * 1024;
        // SAFETY: `n` live bytes.
        unsafe { ptr::write_bytes(p, 0x5a, n) };
        for &size in &[41 * 1024, 60 * 1024, 100 * 1024, 180 * 1024, 600 * 1024, 3 << 20, 2 << 20, 100 * 1024, 50 * 1024] {
            // SAFETY: `p` is live; the old one is not used again.
            p = unsafe { realloc(p, size) };
            assert_eq!(usable_size(p), size);
            let kept = n.min(size);
            // SAFETY: `size` live bytes.
            let bytes = unsafe { core::slice::from_raw_parts_mut(p, size) };
            assert!(bytes[..kept].iter().all(|&b| b == 0x5a), "size {size}");
            bytes.fill(0x5a);
            n = size;
        }
        // SAFETY: live, given up (the canary checked).
        unsafe { free(p) };
    }

    #[test]
    fn big_blocks_come_back_from_the_spares_writable_with_their_guard() {
        // Far more frees than the quarantine holds, so blocks go through
        // the spares and come back from them for requests of about their
        // size: each handed out whole and writable, its canary intact.
        let mut held = [ptr::null_mut::<u8>(); 8];
        for round in 0..200usize {
            let size = 33 * 1024 + (round * 7919) % (400 * 1024);
            let slot = round % held.len();
            if !held[slot].is_null() {
                // SAFETY: live, given up.
                unsafe { free(held[slot]) };
            }
            let p = malloc(size);
            assert_eq!(usable_size(p), size);
            // SAFETY: `size` live bytes.
            unsafe { ptr::write_bytes(p, round as u8, size) };
            held[slot] = p;
        }
        for p in held {
            // SAFETY: live, given up.
            unsafe { free(p) };
        }
    }

    /// A freed page run's pattern covers its first and last page of
    /// data, never a byte outside the data, and the two spans do not
    /// overlap.
    #[test]
    fn run_pattern_spans_cover_the_first_and_last_page() {
        let base = 0x10_0000;
        for (lead, n) in [(16, 40 * 1024), (16, 4080), (16, 4081), (16, 8192 - 16), (4096, 64 * 1024), (16, 33 * 1024 + 5)] {
            let p = base + lead;
            let [(a, b), (c, d)] = run_pattern_spans(p, n);
            assert_eq!(a, p);
            assert_eq!(b, (p - p % PAGE_SIZE + PAGE_SIZE).min(p + n), "lead {lead} n {n}");
            assert_eq!(d, p + n);
            assert!(b <= c && c <= d, "lead {lead} n {n}");
            assert_eq!(c.max(b), (round_up(p + n, PAGE_SIZE) - PAGE_SIZE).max(b), "lead {lead} n {n}");
        }
    }

    /// Freed page runs, plain and over-aligned (data a whole alignment
    /// after the header), go through the quarantine and the spares and
    /// come back: the pattern on their first and last page is checked
    /// on the way (a wrong check would stop the process) and a reused
    /// block is whole and writable.
    #[test]
    fn freed_page_runs_pass_their_pattern_check_and_come_back() {
        for &align in &[16usize, 16384] {
            let mut held = [ptr::null_mut::<u8>(); 4];
            for round in 0..3 * BIG_RING {
                let size = 33 * 1024 + (round * 4099) % (150 * 1024);
                let slot = round % held.len();
                if !held[slot].is_null() {
                    // SAFETY: live, given up.
                    unsafe { free(held[slot]) };
                }
                let p = aligned_alloc(align, size);
                assert_eq!(p as usize % align, 0);
                assert_eq!(usable_size(p), size);
                // SAFETY: `size` live bytes.
                unsafe { ptr::write_bytes(p, round as u8, size) };
                held[slot] = p;
            }
            for p in held {
                // SAFETY: live, given up.
                unsafe { free(p) };
            }
        }
    }

    #[test]
    fn pattern_covers_every_word() {
        #[repr(align(16))]
        struct Slot([usize; PATTERN_BYTES / 8 + 2]);
        let (second, word) = (0x1234_5678_9abc_def1usize, 0xa5a5_5a5a_0f0f_f0f0usize);
        for len in (16..=PATTERN_BYTES).step_by(16) {
            let mut slot = Slot([usize::MAX; PATTERN_BYTES / 8 + 2]);
            let p = slot.0.as_mut_ptr() as usize;
            // SAFETY: `len` bytes of the slot, 16-byte aligned.
            unsafe { vector::fill(p, len, second, word) };
            assert_eq!((slot.0[0], slot.0[1]), (word, second), "len {len}");
            assert!(slot.0[2..len / 8].iter().all(|&w| w == word), "len {len}");
            assert!(slot.0[len / 8..].iter().all(|&w| w == usize::MAX), "len {len}: wrote past the end");
            // SAFETY: as above.
            assert!(unsafe { vector::holds(p, len, second, word) }, "len {len}");
            for i in 0..len / 8 {
                for byte in [0, 7] {
                    slot.0[i] ^= 1 << (byte * 8);
                    // SAFETY: as above.
                    assert!(!unsafe { vector::holds(p, len, second, word) }, "len {len} word {i} byte {byte}");
                    slot.0[i] ^= 1 << (byte * 8);
                }
            }
        }
    }

    /// Arming a slot writes nothing below the block's end, and the canary
    /// the check compares is exactly the bytes between the block's end
    /// and the size word, at most [`CANARY_BYTES`] of them, none zero.
    #[test]
    fn canary_covers_the_bytes_after_every_block() {
        #[repr(align(16))]
        struct Slot([u8; 128]);
        for usable in [16, 32, 48, 64, 80, 128] {
            for n in 1..=usable - 8 {
                let mut slot = Slot([0xee; 128]);
                let p = slot.0.as_mut_ptr() as usize;
                // SAFETY: a slot of `usable >= n + 8` bytes, 16-byte aligned.
                unsafe { small_arm(p, n, usable) };
                assert!(slot.0[..n].iter().all(|&b| b == 0xee), "usable {usable} n {n}: block written");
                assert!(slot.0[usable..].iter().all(|&b| b == 0xee), "usable {usable} n {n}: past the slot");
                let end = usable - 8;
                let word = usize::from_ne_bytes(slot.0[end..usable].try_into().unwrap());
                assert_eq!(size_of_word(secret(p), word), Some(n), "usable {usable} n {n}");
                let (mask, canary) = (canary_mask(n, usable), canary_word(secret(p)));
                for i in 0..CANARY_BYTES {
                    let covered = n + i < end;
                    assert_eq!((mask >> (8 * i)) & 0xff == 0xff, covered, "usable {usable} n {n} byte {i}");
                    assert!((mask >> (8 * i)) & 0xff == 0 || covered, "usable {usable} n {n} byte {i}");
                    if covered {
                        assert_eq!(slot.0[n + i], canary.to_ne_bytes()[i], "usable {usable} n {n} byte {i}");
                        assert_ne!(slot.0[n + i], 0);
                    }
                }
            }
        }
    }

    /// The tags, canaries and marks tell blocks apart: a size word is not
    /// valid at another address, nor with any bit flipped.
    #[test]
    fn tags_depend_on_the_address() {
        let (a, b) = (secret(0x1000), secret(0x1010));
        assert_eq!(size_of_word(a, size_word(a, 64)), Some(64));
        assert_eq!(size_of_word(b, size_word(a, 64)), None);
        for bit in 0..64 {
            assert_eq!(size_of_word(a, size_word(a, 64) ^ (1 << bit)), None, "bit {bit}");
        }
        assert_ne!(canary_word(a), canary_word(b));
    }
}
