//! Sampled heap profiling: which call stacks hold the live heap. This is
//! the sampling and the record of live samples, which the slab tier and
//! the heap call on their slow paths; `views::prof` writes it out. It
//! sits between the page allocator (whose page tags it sets) and the
//! slab tier (whose refills it charges), and names nothing above it.
//! The budget it charges is the slab tier's (a field of the thread
//! cache), passed in by the callers.
//!
//! Off unless `BUDDYSLAB_PROF=FILE` is set (`%p` in FILE becomes the
//! process id). Then allocations are sampled by bytes: each thread counts
//! down a byte budget drawn from an exponential distribution whose mean is
//! the sampling rate (`BUDDYSLAB_PROF_RATE`, default 512 KiB, as tcmalloc
//! and jemalloc use), and the allocation that crosses zero is sampled, so
//! an allocation of `s` bytes is sampled with probability about
//! `1 - exp(-s / rate)` wherever it is made. A sample records the call
//! stack, and the object stays in the profile until it is freed.
//!
//! **Where the count is kept.** The fast paths add nothing for the
//! profile: a bin's word already counts its pops (`slab::magazine`,
//! which counts every allocation so for the views' totals). When a
//! thread's bin runs dry, its refill charges the bytes of the pops since
//! the last one ([`charge_later`]), every object the thread allocated
//! from that bin, whether it came from the shared caches or from the
//! thread's own frees, and then the object it hands out ([`charge`]).
//! Each size class of a thread counts down a budget of its own (and page
//! runs and large blocks one more): independent exponential countdowns
//! over disjoint streams of bytes sample them as one countdown over all
//! of them would, and a class whose bin holds many objects cannot pass
//! its crossing on to whichever class refills next.
//! While profiling is on, a refill takes no more objects than the budget
//! has room for ([`plan_refill`]) and the bin's spare is not used, so
//! when the bin's pops have spent the budget, the refill after them is
//! the allocation that crosses it and is the one sampled. Page runs and
//! large blocks, slow paths already, charge their size when they are
//! handed out. The bias this leaves: objects a thread frees into a bin
//! and takes again lengthen the bin's run, so the crossing is noticed up
//! to that many allocations late, at the refill; and a thread that only
//! ever cycles objects through a bin it never empties is never charged
//! for them, nor sampled. The first matters little to a live-heap profile
//! (the bytes are charged all the same, and memory that stays live
//! drains the bins); the second is memory that does not stay live.
//! Within one size class the object sampled is whichever request finds
//! the bin empty, so a call site's share of samples follows its share of
//! that class's requests at those moments.
//!
//! **Recording a stack without the heap.** glibc's `backtrace` unwinds
//! with libgcc's DWARF unwinder (loaded on its first use, which
//! allocates), so it works for code built without frame pointers. While a
//! thread captures a stack its budget is marked busy (negative, see
//! [`charge`]): the allocations the unwinder makes are served and never
//! sampled, so the capture cannot recurse.
//!
//! **The tables** are mapped from the OS, never taken from the heap they
//! describe: a hash of sampled objects (address, size, stack; linear
//! probing, grown by doubling into a new mapping) and a table of distinct
//! stacks with their live and total counts. One lock guards both; it is a
//! leaf (nothing else is locked while holding it; innermost in the lock
//! order, taken last by the fork handlers) and only sampled allocations
//! and the frees described next take it.
//!
//! **Knowing that a freed object was sampled** costs the frees of other
//! objects nothing: the page of a sampled slab object gets a fast-path tag
//! no thread matches ([`DIVERTED`]), so every free of an object in that
//! page leaves the fast path for [`forget_object`], which asks a lock-free
//! filter (live samples per hash of their addresses) and, only when that
//! says maybe, the table; then the heap pushes the object onto the
//! thread's bin as the fast path would have. The tag is restored when the page's last
//! sampled object is freed (the table counts samples per page). Sampled
//! objects are the long-lived ones, so their pages stay diverted for long
//! and the short-lived objects around them pay this detour (about 25
//! instructions besides the chunk-map lookup) while profiling is on. Page
//! runs and large blocks are freed on slow paths anyway; they ask the
//! table only while sampled blocks of theirs are live.
//!
//! **Output.** `views::prof::write_profile` writes the live heap in the
//! gperftools heap-profile text format that `pprof` reads: a `heap profile:` header
//! naming the sampling rate (`heap_v2/RATE`), one line per stack
//! (`live objects: live bytes [total objects: total bytes] @ addresses`,
//! innermost first), then `MAPPED_LIBRARIES:` and the process's
//! `/proc/self/maps`. The counts are the samples themselves, unscaled;
//! the `heap_v2` header tells `pprof` (and `buddyslab prof`) to scale each
//! line by `1 / (1 - exp(-average size / rate))`, as gperftools does. At
//! exit the profile is written and a leak report (sampled live bytes by
//! stack, largest first) goes to stderr. The stacks start with the
//! allocator's own frames; `buddyslab prof` symbolises them and names the
//! first frame outside the allocator as the call site.

use crate::mm::page::{self, Page};
use crate::options::{PROF_PATH, PROF_RATE};
use crate::os::{self, sync::Mutex};
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Frames kept per stack (the innermost ones).
pub const MAX_DEPTH: usize = 62;
/// A slab page's fast-path tag while it holds a sampled object: XORed with
/// any thread's node tag it gives a class above every real one, so `free`
/// of any object in the page leaves the fast path.
/// (The slab tier asserts that no class reaches it.)
pub const DIVERTED: u16 = 0xffff;

/// Whether profiling is on (set once at start-up).
static ON: AtomicBool = AtomicBool::new(false);
/// State of the generator of sampling intervals.
static SEED: AtomicU64 = AtomicU64::new(0);
/// Sampled page runs and large blocks live: their frees ask the table
/// only while this is non-zero.
static LIVE_BLOCKS: AtomicUsize = AtomicUsize::new(0);

/// Whether allocations are being sampled: one relaxed load, for the hooks
/// on the slow paths.
#[inline(always)]
pub fn on() -> bool {
    ON.load(Ordering::Relaxed)
}

/// The sampling rate in force (`BUDDYSLAB_PROF_RATE`, mean bytes between
/// samples).
pub fn rate() -> usize {
    PROF_RATE.load(Ordering::Relaxed)
}

/// Whether a profile was asked for (`BUDDYSLAB_PROF`).
pub fn requested() -> bool {
    PROF_PATH.requested()
}

/// Turns profiling on if it was asked for, and says whether it did:
/// called once by the heap's set-up, after the options are read, which
/// then registers the writer at exit and takes [`STATE`] in its fork
/// handlers.
pub fn init() -> bool {
    if !requested() {
        return false;
    }
    SEED.store(os::random_u64().unwrap_or(0x9e37_79b9_7f4a_7c15) | 1, Ordering::Relaxed);
    ON.store(true, Ordering::Relaxed);
    true
}

// ---------------------------------------------------------------- budget

/// A uniform 64-bit number (splitmix64 over a shared counter: samples are
/// rare, so the shared line costs nothing that matters).
fn random() -> u64 {
    let mut z = SEED.fetch_add(0x9e37_79b9_7f4a_7c15, Ordering::Relaxed).wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Natural logarithm of `x > 0` to about 1e-7, without `std`: the
/// exponent times ln 2 plus `ln m` for the mantissa `m` in [1, 2) from the
/// series `2 atanh t`, `t = (m - 1) / (m + 1) < 1/3`.
pub fn ln(x: f64) -> f64 {
    let bits = x.to_bits();
    let exponent = ((bits >> 52) & 0x7ff) as i64 - 1023;
    let m = f64::from_bits((bits & ((1 << 52) - 1)) | (1023 << 52));
    let t = (m - 1.0) / (m + 1.0);
    let t2 = t * t;
    let series = 2.0 * t * (1.0 + t2 * (1.0 / 3.0 + t2 * (1.0 / 5.0 + t2 * (1.0 / 7.0 + t2 * (1.0 / 9.0 + t2 / 11.0)))));
    exponent as f64 * core::f64::consts::LN_2 + series
}

/// Bytes to the next sample: exponentially distributed with mean
/// [`rate`], at least 1 and at most 32 times the mean.
fn next_interval() -> isize {
    let rate = rate();
    // u in (0, 1]: 53 random bits, plus one so that 0 never comes up.
    let u = ((random() >> 11) + 1) as f64 / (1u64 << 53) as f64;
    let bytes = -ln(u) * rate as f64;
    (bytes as isize).clamp(1, 32 * rate as isize)
}

/// Charges `bytes` to a thread's budget `left` and says whether this
/// allocation is the one to sample. `left`: 0 when not yet drawn; negative
/// while the thread captures a stack (then nothing is charged or sampled,
/// and `-left` is the budget that follows, see [`capture_done`]).
#[inline]
pub fn charge(left: &mut isize, bytes: usize) -> bool {
    let mut budget = *left;
    if budget < 0 {
        return false;
    }
    if budget == 0 {
        budget = next_interval();
    }
    if bytes as isize >= budget {
        *left = -next_interval();
        return true;
    }
    *left = budget - bytes as isize;
    false
}

/// Marks the budget `left` busy, as [`charge`] does when it samples, for
/// a sample charged to another budget: [`record`] ends it.
#[inline]
pub fn begin_capture(left: &mut isize) {
    if *left == 0 {
        *left = next_interval();
    }
    if *left > 0 {
        *left = -*left;
    }
}

/// Ends a capture begun by [`charge`]: the budget that was waiting.
#[inline]
pub fn capture_done(left: &mut isize) {
    if *left < 0 {
        *left = -*left;
    }
}

/// Charges `bytes` that were allocated earlier, on a fast path that
/// counted them but could not stop (a bin's pops, see
/// `slab::magazine`): they take the budget down to 1 at most, so that
/// the next allocation charged is the one sampled. Nothing while the
/// thread captures a stack.
#[inline]
pub fn charge_later(left: &mut isize, bytes: usize) {
    let mut budget = *left;
    if budget < 0 || bytes == 0 {
        return;
    }
    if budget == 0 {
        budget = next_interval();
    }
    *left = budget.saturating_sub(bytes as isize).max(1);
}

/// A magazine refill of objects of `object_size` bytes, `want` of them:
/// charges the first (handed out now) and says whether it is to be
/// sampled; lowers `want` so that the objects kept in the bin stay within
/// the budget. They are charged when they are popped ([`charge_later`],
/// at the bin's next refill), and the refill after the bin runs dry is
/// then the allocation that crosses the budget.
#[inline]
pub fn plan_refill(left: &mut isize, object_size: usize, want: &mut usize) -> bool {
    let sampled = charge(left, object_size);
    let budget = left.unsigned_abs();
    // At least one byte stays once the kept objects are popped, so the
    // allocation after them is the one that crosses.
    let room = budget.saturating_sub(1) / object_size.max(1);
    let extra = want.saturating_sub(1).min(room);
    *want = extra + 1;
    sampled
}

// ---------------------------------------------------------------- hooks

extern "C" {
    /// glibc's `backtrace(3)`: return addresses, innermost first.
    fn backtrace(buffer: *mut *mut libc::c_void, size: libc::c_int) -> libc::c_int;
}

/// What kind of block a sample is: a slab object (its page is diverted)
/// or a page run or large block.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// A slab object.
    Slab,
    /// A page run or a large block.
    Block,
}

/// Records a sample: `p`, of `size` requested bytes, allocated just now by
/// the calling thread, whose budget `left` is busy (see [`charge`]) and is
/// given back here (also when `p` is null: the allocation failed).
///
/// The budget is reached through a raw pointer, never a reference held
/// across the capture: allocations made while the stack is captured
/// charge the same budget.
///
/// # Safety
/// `left` is the calling thread's budget (the slab tier's
/// `magazine::prof_budget`), and no reference to it is live.
#[cold]
#[inline(never)]
pub unsafe fn record(left: *mut isize, p: *mut u8, size: usize, kind: Kind) {
    if p.is_null() {
        // SAFETY: the calling thread's budget; no reference to it is live.
        capture_done(unsafe { &mut *left });
        return;
    }
    let mut frames = [ptr::null_mut::<libc::c_void>(); MAX_DEPTH + 1];
    // SAFETY: the buffer holds MAX_DEPTH + 1 entries. Allocations the
    // unwinder makes see the busy budget and are not sampled.
    let n = unsafe { backtrace(frames.as_mut_ptr(), frames.len() as libc::c_int) }.max(0) as usize;
    // SAFETY: the calling thread's budget; no reference to it is live.
    capture_done(unsafe { &mut *left });
    // Frame 0 is this function.
    let mut stack = [0usize; MAX_DEPTH];
    let depth = n.saturating_sub(1).min(MAX_DEPTH);
    for i in 0..depth {
        stack[i] = frames[i + 1] as usize;
    }
    let mut st = STATE.lock();
    if !st.ready() {
        return;
    }
    let id = st.intern(&stack[..depth]);
    st.add(p as usize, size, id, kind);
}

/// The slab tier's hook when the thread cache cannot be used: one object
/// of `object_size` bytes for a request of `size`.
///
/// # Safety
/// As for [`record`]: `left` is the calling thread's budget, no reference
/// to it live.
#[cold]
#[inline(never)]
pub unsafe fn sample_object(left: *mut isize, p: *mut u8, size: usize, object_size: usize) {
    // SAFETY: the calling thread's budget; the reference ends here.
    if charge(unsafe { &mut *left }, object_size) {
        // SAFETY: per the caller.
        unsafe { record(left, p, size, Kind::Slab) };
    }
}

/// The hook of page runs and large blocks: `p`, `size` bytes, just
/// handed out.
///
/// # Safety
/// As for [`record`].
#[cold]
#[inline(never)]
pub unsafe fn sample_block(left: *mut isize, p: *mut u8, size: usize) {
    // SAFETY: the calling thread's budget; the reference ends here.
    if charge(unsafe { &mut *left }, size) {
        // SAFETY: per the caller.
        unsafe { record(left, p, size, Kind::Block) };
    }
}

/// `free` of the slab object `p`, whose page is `desc`, while profiling
/// is on: says whether the page is diverted (its tag turned `p` away from
/// the fast path, see [`DIVERTED`]), and then forgets the sample if `p`
/// is one. The heap then does what the fast path would have done.
///
/// # Safety
/// `p` is a live slab object in the page `desc` describes, given up by
/// the caller; `p` passed the object-start check.
#[cold]
#[inline(never)]
pub unsafe fn forget_object(p: *mut u8, desc: *mut Page) -> bool {
    // SAFETY: `desc` describes a page of a live slab.
    if unsafe { page::tag(desc) } != DIVERTED {
        return false;
    }
    if FILTER[filter_slot(p as usize)].load(Ordering::Relaxed) != 0 {
        STATE.lock().remove(p as usize);
    }
    true
}

/// `free` (or a move by `realloc`) of the page run or large block `p`
/// while profiling is on: forgets the sample if `p` is one.
#[cold]
#[inline(never)]
pub fn forget_block(p: *mut u8) {
    if LIVE_BLOCKS.load(Ordering::Relaxed) == 0 {
        return;
    }
    STATE.lock().remove(p as usize);
}

// ---------------------------------------------------------------- tables

/// Slots of [`FILTER`].
const FILTER_SLOTS: usize = 1 << 16;

/// Live samples per slot of a hash of their addresses: a free in a
/// diverted page whose slot is 0 was not sampled and skips the lock and
/// the table. Written under the lock; read without it, which is enough:
/// a sample is counted before its block is handed out, so a free of it
/// sees the count.
#[link_section = ".bss.cold.buddyslab"]
static FILTER: [core::sync::atomic::AtomicU16; FILTER_SLOTS] = [const { core::sync::atomic::AtomicU16::new(0) }; FILTER_SLOTS];

fn filter_slot(p: usize) -> usize {
    ((p >> 4) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) as usize >> (usize::BITS - FILTER_SLOTS.trailing_zeros())
}

/// An entry of the sample table. The key is an object's address for a
/// sample, or a page's address plus one for the count of samples in a
/// slab page (addresses are 16-byte aligned, so the two never meet); 0 is
/// an empty slot.
#[repr(C)]
#[derive(Clone, Copy)]
struct Entry {
    key: usize,
    /// A sample: its requested bytes. A page: samples in it.
    value: usize,
    /// A sample: its stack's index in the stack table.
    stack: u32,
    kind: u32,
}

/// A distinct call stack and what its samples add up to.
#[repr(C)]
pub struct Stack {
    hash: u64,
    depth: usize,
    /// Samples of this stack still live.
    pub live_count: u64,
    /// Their requested bytes.
    pub live_bytes: u64,
    /// Samples of this stack ever taken.
    pub total_count: u64,
    /// Their requested bytes.
    pub total_bytes: u64,
    frames: [usize; MAX_DEPTH],
}

impl Stack {
    /// The return addresses, innermost first.
    pub fn frames(&self) -> &[usize] {
        &self.frames[..self.depth]
    }
}

/// Entries in the first sample table (96 KiB); doubled when half full.
const FIRST_CAPACITY: usize = 4096;
/// Distinct stacks kept; samples of further stacks go to stack 0, which
/// has no frames.
const MAX_STACKS: usize = 1 << 14;
/// Slots of the stack index (twice [`MAX_STACKS`]).
const STACK_SLOTS: usize = 2 * MAX_STACKS;

/// The sample table and the stack table, behind [`STATE`].
pub struct State {
    entries: *mut Entry,
    /// A power of two; 0 before the first sample.
    capacity: usize,
    len: usize,
    stacks: *mut Stack,
    nr_stacks: usize,
    /// Stack index + 1 per slot; 0 empty.
    index: *mut u32,
}

// SAFETY: the pointers lead to mappings owned by the state, reached only
// under the lock.
unsafe impl Send for State {}

/// The tables' one lock: a leaf, innermost in the lock order (the heap's
/// fork handlers take it last). The writers in `views::prof` read the
/// stacks under it.
pub static STATE: Mutex<State> = Mutex::new(State {
    entries: ptr::null_mut(),
    capacity: 0,
    len: 0,
    stacks: ptr::null_mut(),
    nr_stacks: 0,
    index: ptr::null_mut(),
});

fn round_to_pages(bytes: usize) -> usize {
    (bytes + os::PAGE_SIZE - 1) & !(os::PAGE_SIZE - 1)
}

fn hash_key(key: usize, capacity: usize) -> usize {
    ((key >> 4) as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) as usize >> (usize::BITS - capacity.trailing_zeros())
}

impl State {
    /// Maps the tables on first use; false when the OS refused.
    fn ready(&mut self) -> bool {
        if self.capacity != 0 {
            return true;
        }
        let Ok(entries) = os::mmap_anonymous(round_to_pages(FIRST_CAPACITY * core::mem::size_of::<Entry>()), false) else {
            return false;
        };
        let Ok(stacks) = os::mmap_anonymous(round_to_pages(MAX_STACKS * core::mem::size_of::<Stack>()), true) else {
            return false;
        };
        let Ok(index) = os::mmap_anonymous(round_to_pages(STACK_SLOTS * 4), true) else {
            return false;
        };
        self.entries = entries as *mut Entry;
        self.capacity = FIRST_CAPACITY;
        self.stacks = stacks as *mut Stack;
        // Stack 0: the one that takes samples once the table is full.
        self.nr_stacks = 1;
        self.index = index as *mut u32;
        true
    }

    /// Stacks in the table (0 before the first sample); [`State::stack`]
    /// takes an index below it.
    pub fn stack_count(&self) -> usize {
        if self.capacity == 0 {
            0
        } else {
            self.nr_stacks
        }
    }

    /// Stack `i` (below [`State::stack_count`]).
    pub fn stack(&self, i: usize) -> &Stack {
        assert!(i < self.nr_stacks);
        // SAFETY: `i` is below the stacks in use, inside the mapping.
        unsafe { &*self.stacks.add(i) }
    }

    fn stack_mut(&mut self, i: usize) -> &mut Stack {
        debug_assert!(i < self.nr_stacks);
        // SAFETY: as in `stack`; `&mut self` (under the lock) makes the
        // reference exclusive.
        unsafe { &mut *self.stacks.add(i) }
    }

    fn entry(&self, i: usize) -> &Entry {
        debug_assert!(i < self.capacity);
        // SAFETY: `i` is below the capacity of the mapped table.
        unsafe { &*self.entries.add(i) }
    }

    fn entry_mut(&mut self, i: usize) -> &mut Entry {
        debug_assert!(i < self.capacity);
        // SAFETY: as in `entry`; `&mut self` makes the reference exclusive.
        unsafe { &mut *self.entries.add(i) }
    }

    /// The index of `frames` in the stack table, added if new.
    fn intern(&mut self, frames: &[usize]) -> u32 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        for &f in frames {
            h = (h ^ f as u64).wrapping_mul(0x0100_0000_01b3);
        }
        let mut slot = (h as usize) & (STACK_SLOTS - 1);
        loop {
            // SAFETY: slot < STACK_SLOTS, inside the index mapping.
            let at = unsafe { &mut *self.index.add(slot) };
            if *at == 0 {
                if self.nr_stacks == MAX_STACKS {
                    return 0;
                }
                let i = self.nr_stacks;
                self.nr_stacks += 1;
                let s = self.stack_mut(i);
                s.hash = h;
                s.depth = frames.len();
                s.frames[..frames.len()].copy_from_slice(frames);
                *at = i as u32 + 1;
                return i as u32;
            }
            let s = self.stack(*at as usize - 1);
            if s.hash == h && s.frames[..s.depth] == *frames {
                return *at - 1;
            }
            slot = (slot + 1) & (STACK_SLOTS - 1);
        }
    }

    /// The slot holding `key`, or the empty slot where it would go.
    fn find(&self, key: usize) -> (usize, bool) {
        let mut i = hash_key(key, self.capacity);
        loop {
            let e = self.entry(i);
            if e.key == key {
                return (i, true);
            }
            if e.key == 0 {
                return (i, false);
            }
            i = (i + 1) & (self.capacity - 1);
        }
    }

    /// Doubles the sample table when half full; false when it cannot grow
    /// and is three quarters full.
    fn make_room(&mut self) -> bool {
        if self.len * 2 < self.capacity {
            return true;
        }
        let bytes = self.capacity * 2 * core::mem::size_of::<Entry>();
        let Ok(new) = os::mmap_anonymous(round_to_pages(bytes), false) else {
            return self.len * 4 < self.capacity * 3;
        };
        let (old, old_capacity) = (self.entries, self.capacity);
        self.entries = new as *mut Entry;
        self.capacity *= 2;
        for i in 0..old_capacity {
            // SAFETY: below the old table's capacity.
            let e = unsafe { *old.add(i) };
            if e.key != 0 {
                let (slot, _) = self.find(e.key);
                *self.entry_mut(slot) = e;
            }
        }
        // SAFETY: the old table is ours and nothing points into it now.
        let _ = unsafe { os::munmap(old as usize, round_to_pages(old_capacity * core::mem::size_of::<Entry>())) };
        true
    }

    /// Adds a sample. An entry left at the same address (a block whose
    /// free was not seen) is replaced.
    fn add(&mut self, p: usize, size: usize, stack: u32, kind: Kind) {
        self.remove(p);
        if !self.make_room() {
            return;
        }
        let (slot, _) = self.find(p);
        *self.entry_mut(slot) = Entry { key: p, value: size, stack, kind: kind as u32 };
        self.len += 1;
        // Saturates rather than wraps: a slot stuck above 0 only costs
        // lookups.
        let f = &FILTER[filter_slot(p)];
        f.store(f.load(Ordering::Relaxed).saturating_add(1), Ordering::Relaxed);
        let s = self.stack_mut(stack as usize);
        s.live_count += 1;
        s.live_bytes += size as u64;
        s.total_count += 1;
        s.total_bytes += size as u64;
        match kind {
            Kind::Block => {
                LIVE_BLOCKS.fetch_add(1, Ordering::Relaxed);
            }
            Kind::Slab => {
                let page_key = (p & !(os::PAGE_SIZE - 1)) + 1;
                let (slot, found) = self.find(page_key);
                if found {
                    self.entry_mut(slot).value += 1;
                } else if self.make_room() {
                    let (slot, _) = self.find(page_key);
                    *self.entry_mut(slot) = Entry { key: page_key, value: 1, stack: 0, kind: 0 };
                    self.len += 1;
                    let desc = page::page_of(p);
                    // SAFETY: `p` is a live slab object, so its page has a
                    // descriptor in a live chunk; the tag array is the
                    // chunk's, and only this lock writes DIVERTED there.
                    unsafe { page::set_tags(desc, 1, DIVERTED) };
                }
            }
        }
    }

    /// Deletes the entry at `slot`, moving later entries of its probe run
    /// back so that no lookup stops early at the hole.
    fn delete(&mut self, slot: usize) {
        let mask = self.capacity - 1;
        let mut hole = slot;
        let mut j = slot;
        loop {
            j = (j + 1) & mask;
            let e = *self.entry(j);
            if e.key == 0 {
                break;
            }
            let home = hash_key(e.key, self.capacity);
            // The entry may move to the hole when the hole lies on its
            // probe path, from `home` up to `j`.
            if j.wrapping_sub(home) & mask >= j.wrapping_sub(hole) & mask {
                *self.entry_mut(hole) = e;
                hole = j;
            }
        }
        self.entry_mut(hole).key = 0;
        self.len -= 1;
    }

    /// Forgets the sample at `p`, if there is one.
    fn remove(&mut self, p: usize) {
        if self.capacity == 0 {
            return;
        }
        let (slot, found) = self.find(p);
        if !found {
            return;
        }
        let e = *self.entry(slot);
        self.delete(slot);
        let f = &FILTER[filter_slot(p)];
        let n = f.load(Ordering::Relaxed);
        if n != u16::MAX {
            f.store(n - 1, Ordering::Relaxed);
        }
        let s = self.stack_mut(e.stack as usize);
        s.live_count -= 1;
        s.live_bytes -= e.value as u64;
        if e.kind == Kind::Block as u32 {
            LIVE_BLOCKS.fetch_sub(1, Ordering::Relaxed);
            return;
        }
        let page_key = (p & !(os::PAGE_SIZE - 1)) + 1;
        let (slot, found) = self.find(page_key);
        if !found {
            return;
        }
        self.entry_mut(slot).value -= 1;
        if self.entry(slot).value == 0 {
            self.delete(slot);
            let desc = page::page_of(p);
            // SAFETY: `p` is still a live slab object (its free has not
            // reached the bins), so the page is a slab page whose
            // descriptor holds its class and node.
            unsafe { page::set_tags(desc, 1, (*desc).class_and_node() as u16) };
        }
    }

    /// Sums over the stacks: live count and bytes, total count and bytes.
    pub fn totals(&self) -> [u64; 4] {
        let mut t = [0u64; 4];
        for i in 0..self.nr_stacks {
            let s = self.stack(i);
            t[0] += s.live_count;
            t[1] += s.live_bytes;
            t[2] += s.total_count;
            t[3] += s.total_bytes;
        }
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn logarithm_is_close() {
        for x in [1e-12, 0.001, 0.3, 0.5, 0.999, 1.0, 2.0, 10.0, 12345.678] {
            let want = f64::ln(x);
            assert!((ln(x) - want).abs() < 1e-6 * want.abs().max(1.0), "ln({x}) = {} not {want}", ln(x));
        }
    }

    #[test]
    fn intervals_average_the_rate() {
        let n = 20_000;
        let sum: f64 = (0..n).map(|_| next_interval() as f64).sum();
        let mean = sum / n as f64;
        let rate = rate() as f64;
        // The mean of 20000 exponential draws is within 3% of the rate
        // with overwhelming probability (its standard error is 0.7%).
        assert!((mean - rate).abs() < 0.03 * rate, "mean interval {mean}, rate {rate}");
    }

    #[test]
    fn budget_samples_one_in_rate_bytes_and_refills_stop_at_the_crossing() {
        // A bin's life as the slab tier drives it: each refill first
        // charges the objects popped since the last one (those it kept,
        // and as many again as the thread freed into the bin and took
        // back), then plans its own.
        let mut left = 0isize;
        let mut sampled = 0usize;
        let mut charged = 0usize;
        let size = 64;
        let mut kept = 0usize;
        let mut x = 0x9e37_79b9u32;
        while charged < 2000 * rate() {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            let popped = kept + (x % 8) as usize;
            charge_later(&mut left, popped * size);
            assert!(left > 0, "charging later never samples and leaves room for one");
            charged += popped * size;
            let mut want = 32;
            if plan_refill(&mut left, size, &mut want) {
                sampled += 1;
                assert!(left < 0, "busy while capturing");
                // Allocations while capturing are not charged.
                charge_later(&mut left, 1 << 20);
                capture_done(&mut left);
            }
            assert!(left > 0 && (1..=32).contains(&want));
            // The refill's kept objects fit the budget: popping them all
            // does not pass the crossing.
            assert!(((want - 1) * size) < left as usize);
            charged += size;
            kept = want - 1;
        }
        let expected = charged / rate();
        assert!(sampled.abs_diff(expected) < expected / 10, "{sampled} samples for {expected} expected");
    }

    #[test]
    fn busy_budget_samples_nothing() {
        let mut left = -100isize;
        assert!(!charge(&mut left, 1 << 30));
        assert_eq!(left, -100);
        capture_done(&mut left);
        assert_eq!(left, 100);
    }
}
