//! Per-thread magazines: the lock-free front of every size-class cache.
//!
//! Each thread has one [`ThreadCache`]: for every size class a *bin*, a
//! singly linked list of free objects (linked through their first word)
//! with a limit, and one word holding its room and its pops (see [`Bin`]):
//! the thread counts its calls there at no extra cost. `malloc` pops from
//! the bin, `free` pushes to the bin of the object's class; neither takes
//! a lock nor does an atomic read-modify-write. Behind each bin sits a *spare*, as in Bonwick's
//! magazine layer: a free that finds the bin full sets the whole bin aside
//! as the spare (the spare it replaces goes to the CPU's depot,
//! [`percpu::free_batch`]), and an allocation that finds the bin empty
//! takes the spare back, both in O(1), no list walked. Only with no spare
//! is an empty bin refilled, with half its limit's worth, from the CPU's depot
//! ([`percpu::alloc_batch`]), which in turn refills from the
//! [`KmemCache`](super::KmemCache) of the CPU's node: a whole list its
//! barn keeps, else objects off its slabs.
//! Limits start small and grow with use (see `START_OBJECTS`), so
//! memory sits in a thread's bins only for the classes it keeps cycling,
//! and all of a thread's bins together grow by at most
//! `GROWTH_BUDGET` (512 KiB); when refills keep finding it spent,
//! `rebalance` halves every grown bin, and the classes that run dry
//! most often take the room back.
//!
//! Remote frees: the thread remembers its node (the CPU it last refilled
//! on). An object whose slab belongs to another node — allocated on
//! another CPU, usually by another thread — does not join the bin: it
//! goes to a second, *remote* bin of its class, which is sent home in
//! batches: a whole bin to the depot of its home CPU, where that CPU's
//! threads take it back as it is, else through [`cache::free_bulk_by`]
//! (one lock per run of one cache). So a
//! thread does not hand out again, and write to, cache lines that a thread
//! on another CPU is using (the passive false sharing Hoard describes), and
//! memory freed far from where it was allocated returns to where it is
//! reused. The check costs the fast path nothing of its own: `free` reads
//! the page's class and node as one 16-bit tag and XORs it with the thread's
//! node, and only an object of this node lands in `1..=NR_CLASSES`.
//!
//! Double frees: a freed object carries its free mark in its second word
//! (the process's secret key XORed with the object's address, see
//! [`link::mark_of`]), and handing an object out clears it, as glibc's
//! tcache does with its `key`. `free` of an object whose second word
//! already holds its mark stops the process with "double free detected",
//! wherever the first free left the object (a bin, a CPU depot, its slab's
//! free list). The key is random per process (`getrandom`), and a slab
//! going back to the buddy allocator clears the marks and links of its
//! objects (memory handed out uninitialised never holds them), so a live
//! block holds its mark only if the program copied it out of the same
//! object after freeing it. Cost: an XOR, a load, a compare and a store in
//! `free`, a store in `malloc`.
//!
//! Thread-local storage: on x86-64 the thread cache is a `.tbss` symbol
//! reached with the initial-exec model (`symbol@GOTTPOFF` plus `%fs`), two
//! instructions and no `__tls_get_addr` call even in `libbuddyslab.so`
//! (stable Rust cannot ask for that model for a `thread_local!`). The
//! symbol is hidden, so a program that links buddyslab and also preloads
//! `libbuddyslab.so` gets two separate caches for its two heaps. The cost
//! of initial-exec is glibc's: a library using it cannot always be
//! `dlopen`ed late ("cannot allocate memory in static TLS block"); preload
//! it instead. Other architectures use `thread_local!`.
//!
//! Only what the fast paths read is in TLS (1.8 KiB: the bins' heads and
//! words, the keys, the remembered chunks, the size table); what only the
//! slow paths use (limits, spares, remote bins, the fold's and the heap
//! profile's counts) is in a page of its own, a [`Cold`] part, taken at
//! activation and given back at exit.
//!
//! Life cycle: the cache is zero when a thread starts (no room, so the
//! first `malloc`/`free` takes the slow path), is activated there (its
//! cold page taken, limits set, a pthread key registered so thread exit
//! calls `thread_exit`), and at thread exit is emptied into the shared
//! caches, gives its cold page back and is marked dead: any later
//! allocation in that thread's remaining destructors goes straight to
//! the shared caches.

use super::{cache, link, percpu, size_class::CLASSES, NR_CLASSES};
use core::ptr;
use core::sync::atomic::Ordering;

/// The room in a bin's word ([`ThreadCache::words`]).
const ROOM: u64 = 0xffff;
/// What a pop adds to a bin's word: one pop, one more room.
const POPPED: u64 = (1 << 16) | 1;
const _: () = assert!(MAX_OBJECTS as u64 <= ROOM);

/// A remote bin: objects of one class whose slabs belong to other nodes,
/// on their way home. Only slow paths touch it.
#[repr(C)]
pub struct RemoteBin {
    head: *mut u8,
    count: u32,
    limit: u32,
}

const UNINIT: u32 = 0;
const ACTIVE: u32 = 1;
const DEAD: u32 = 2;
const BUSY: u32 = 3;
/// Stood aside while `MALLOC_PERTURB_` is on: every call takes the
/// shared caches, where the perturb fill happens (the fast paths never
/// look at it).
const PAUSED: u32 = 4;

/// One thread's bins. A class's bin is a free list (`heads`) and a word
/// (`words`), at *slot* `c + 1` for class `c`, the index a page's
/// `user_class` gives; slot 0 is never used (its room stays 0).
#[repr(C)]
pub struct ThreadCache {
    /// Per slot, the head of the bin's list. First, and the words next:
    /// a bin's head and word are at the thread cache's address plus the
    /// slot times 8 (plus a constant for the word), one scaled index that
    /// x86 addressing takes as it is, with no shift and no bin address
    /// worked out on the fast paths (callgrind: 3 instructions fewer per
    /// pair than 32-byte slots of head, word and remote bin).
    heads: [*mut u8; NR_CLASSES + 1],
    /// Per slot, the bin's word. Bits 0..16: the bin's room, objects it
    /// may still take (its limit, kept in [`Cold::limits`] for the
    /// slow paths, less the objects it holds). Bits 16..64: objects popped
    /// since the last [`ThreadCache::fold`]. A pop adds [`POPPED`] (one
    /// more pop, one more room) and a push subtracts 1, one instruction
    /// each as a plain count took, and `free` tests the room alone. So the
    /// thread counts its allocations at no cost, and its frees follow from
    /// the pops and the bin's count (see `fold`).
    words: [u64; NR_CLASSES + 1],
    /// [`link::FREE_MARK`], copied on activation (0 before: such a cache
    /// has no room, so every free takes the slow path, which reads the
    /// mark itself).
    key: usize,
    /// [`link::key`], copied on activation, beside `key`: the fast paths
    /// encode and decode links with it without a load of their own.
    link_key: usize,
    /// [`link::IMPLAUSIBLE`], copied on activation.
    link_mask: usize,
    /// The chunks this thread last freed into, direct-mapped by chunk
    /// number ([`CHUNK_WAYS`] ways): per way, the address of the chunk's
    /// last byte, so that `free` skips the chunk map while objects keep
    /// coming from the chunks it remembers (see [`ThreadCache::chunk_of`]).
    /// Chunks are never unregistered, so an entry stays true. Zero at
    /// first, which no chunk's last byte is, so no null test is needed on
    /// a hit.
    chunk_ends: [usize; CHUNK_WAYS],
    /// Per way, the tags of the chunk as
    /// [`crate::mm::page::Chunk::tags_origin`] gives them: `free` reads a
    /// page's tag with one shift and one load.
    chunk_tags: [usize; CHUNK_WAYS],
    /// Per way, the chunk.
    chunks: [*mut crate::mm::page::Chunk; CHUNK_WAYS],
    /// The node this thread refills from (its CPU's, when last looked at),
    /// shifted to where a page's tag ([`crate::mm::page::Chunk::tags`]) has
    /// it: a page's tag XOR this is the page's `user_class` exactly when the
    /// page is a slab of this node, so `free` tells "local object of class
    /// c" from everything else with one compare.
    node_tag: u32,
    /// [`SMALL_SLOTS`], copied on activation (all 0 before: slot 0's bin,
    /// always empty), so that `malloc` finds its bin through the thread
    /// pointer it needs anyway, with no load of the table's address.
    small_slots: [u8; super::TABLE_MAX / 16 + 1],
    state: u32,
    /// Bytes until the heap profile's next sample (see
    /// [`crate::profile::charge`]); only touched while profiling is on.
    prof_left: isize,
    /// What this thread counted of its calls (its slab objects handed
    /// out and taken back, folded so far, and the other entry points'
    /// calls), and how much of it is in the process's counts
    /// ([`crate::counters::add_tally`]).
    tally: crate::counters::Tally,
    shown: crate::counters::Tally,
    /// What only the slow paths use, in a page of its own while the cache
    /// is active or paused (null before and after; see [`Cold`]).
    cold: *mut Cold,
}

/// The part of a thread cache that only the slow paths touch: a page from
/// the buddy allocator, taken at activation and given back at thread exit.
/// In thread-local storage it made the cache 5.4 KiB. glibc zeroes a new
/// thread's static TLS with a `memset` on the pages below the thread
/// descriptor, where the thread's stack then starts, and a cached stack
/// comes back untouched only as far down as its last thread went: so
/// every new thread faulted in one page more than under glibc (mleak100,
/// `perf record -e page-faults`: three faults per thread where glibc takes
/// two). Out of TLS (and with the first refill shallower, see
/// `cache::MAX_PIECES`), the TLS and the first call's stack fit in the
/// pages glibc touches anyway, and the page a thread takes is the page an
/// exited thread gave back, still resident.
#[repr(C)]
struct Cold {
    /// Per slot, its bin's limit: the objects it may hold (slot 0's stays
    /// 0). The fast paths read only the room this leaves
    /// ([`ThreadCache::words`]).
    limits: [u32; NR_CLASSES + 1],
    /// A xorshift state for the refill count's jitter (see `alloc_slow`).
    rng: u32,
    /// Refills that found the budget spent and their bin short of its
    /// full limit, since the last [`rebalance`].
    refused: u32,
    /// Bytes the bins' limits have grown by since they were last reset:
    /// growth stops at [`GROWTH_BUDGET`].
    grown: usize,
    /// Per class, what [`ThreadCache::fold`] needs to tell the pushes of
    /// `free`'s fast path from everything else: the bin's count when it
    /// was last folded, plus the objects slow paths have put in since,
    /// less those they took out ([`ThreadCache::set_count`]).
    settled: [i64; NR_CLASSES],
    /// Per class, bytes until the class's next sample: each class is
    /// sampled as a stream of its own (independent exponential countdowns
    /// over disjoint bytes sample them as one countdown over all would),
    /// so a class whose bin holds many objects does not hold back the
    /// others' samples. [`ThreadCache::prof_left`] is the budget of page
    /// runs and large blocks, and is negative while the thread captures a
    /// stack: then nothing is charged or sampled.
    prof_class: [isize; NR_CLASSES],
    /// Per class, a full bin set aside: Bonwick's "previous magazine".
    /// A free that finds its bin full moves the whole bin here (the
    /// spare it replaces goes to the CPU depot), and an allocation that
    /// finds its bin empty takes the spare back, so the thread keeps a
    /// bin's worth of hysteresis on both sides with no list walked and
    /// no lock taken half the time.
    spares: [Spare; NR_CLASSES],
    /// Bytes of objects all of `spares` hold: at most [`SPARE_BUDGET`].
    spare_bytes: usize,
    /// Per slot, the remote bin: objects of the class whose slabs belong
    /// to other nodes, on their way home.
    remotes: [RemoteBin; NR_CLASSES + 1],
}

// One page of `mm::alloc_thread_page`.
const _: () = assert!(core::mem::size_of::<Cold>() <= crate::os::PAGE_SIZE);

/// Blocks a thread hands out or gives back before it adds its counts to
/// the process's (one shared cache line, written so at most once per this
/// many).
const PUBLISH_EVERY: u64 = 1024;

/// Bytes a thread's spares may hold together. A full bin that would
/// take them past it goes to the CPU depot whole instead (still no walk):
/// without a bound, a thread that cycles many classes keeps a second
/// bin's worth of each. Peak RSS of glibc-thread (2 threads), three runs
/// each: 2.6 to 3.0 MiB before the spares; 3.2 to 4.4 MiB with unbounded
/// spares and refills to a full bin; 2.8 to 2.9 MiB with this bound and
/// refills to half a bin (below).
const SPARE_BUDGET: usize = 128 * 1024;

/// A full bin set aside (see [`Cold::spares`]): its list, linked as
/// the bin's was, and its length (0: none).
#[repr(C)]
struct Spare {
    head: *mut u8,
    count: u32,
}

impl ThreadCache {
    /// The cold part. Only the slow paths of an active or paused cache
    /// ask, and such a cache has one.
    #[inline(always)]
    fn cold(&mut self) -> &mut Cold {
        debug_assert!(!self.cold.is_null(), "a cache with no cold part");
        // SAFETY: an active or paused cache's page, this thread's alone.
        unsafe { &mut *self.cold }
    }

    /// [`ThreadCache::cold`], to read.
    #[inline(always)]
    fn cold_ref(&self) -> &Cold {
        debug_assert!(!self.cold.is_null(), "a cache with no cold part");
        // SAFETY: as in `cold`.
        unsafe { &*self.cold }
    }

    /// The limit of the bin of `class`.
    #[inline]
    fn limit(&self, class: usize) -> u32 {
        self.cold_ref().limits[class + 1]
    }

    /// Objects in the bin of `class`.
    #[inline]
    fn count(&self, class: usize) -> u32 {
        self.limit(class) - (self.words[class + 1] & ROOM) as u32
    }

    /// Says that a slow path left `n` objects in the bin of `class`, so
    /// that [`fold`] does not count the difference as frees. A list from a
    /// CPU depot is a whole bin of some thread's, which may be more than
    /// this bin's limit: the limit rises to `n` (at most [`bin_limit`]),
    /// and the rise counts against [`GROWTH_BUDGET`] as any growth does.
    ///
    /// [`fold`]: ThreadCache::fold
    fn set_count(&mut self, class: usize, n: u32) {
        let old = self.count(class);
        let cold = self.cold();
        cold.settled[class] += n as i64 - old as i64;
        let before = cold.limits[class + 1];
        let limit = before.max(n);
        cold.grown += (limit - before) as usize * CLASSES[class].size as usize;
        self.store_room(class, limit, n);
    }

    /// Sets the limit of the bin of `class`, which holds no more than
    /// `limit` objects.
    fn set_limit(&mut self, class: usize, limit: u32) {
        let n = self.count(class);
        debug_assert!(n <= limit, "a limit below the bin's count");
        self.store_room(class, limit.max(n), n);
    }

    /// Records `limit` as the limit of the bin of `class`, which holds `n`
    /// objects (`n <= limit`), and the room that leaves in its word; the
    /// pops counted there stay.
    fn store_room(&mut self, class: usize, limit: u32, n: u32) {
        self.cold().limits[class + 1] = limit;
        let word = &mut self.words[class + 1];
        *word = (*word & !ROOM) | (limit - n) as u64;
    }

    /// Counts what the fast paths did with the bin of `class` since it
    /// was last folded: the pops (allocations) are in its word, and the
    /// pushes (frees) are the count's growth that no slow path explains,
    /// plus the pops. Returns the pops.
    fn fold(&mut self, class: usize) -> u64 {
        let word = &mut self.words[class + 1];
        let pops = *word >> 16;
        *word &= ROOM;
        let count = self.count(class) as i64;
        let settled = &mut self.cold().settled[class];
        let pushes = count + pops as i64 - *settled;
        debug_assert!(pushes >= 0, "class {class}: {pushes} pushes");
        *settled = count;
        self.tally.allocs += pops;
        self.tally.frees += pushes.max(0) as u64;
        pops
    }

    /// [`fold`](ThreadCache::fold) of every class; nothing for a cache
    /// that is not active or paused (its bins are empty, nothing to fold).
    fn fold_all(&mut self) {
        if self.cold.is_null() {
            return;
        }
        for class in 0..NR_CLASSES {
            self.fold(class);
        }
    }

    /// Adds what this thread counted since it last did to the process's
    /// counts.
    fn publish(&mut self) {
        crate::counters::add_tally(&self.tally.since(&self.shown));
        self.shown = self.tally;
    }

    /// [`publish`](ThreadCache::publish) once [`PUBLISH_EVERY`] blocks
    /// have been handed out or given back since the last time (the calls
    /// counted beside them go with them). Two counts, not the whole
    /// tally: the test runs on every remote free, and the tally's seven
    /// sums took some twenty instructions there.
    #[inline]
    fn publish_now_and_then(&mut self) {
        let (now, shown) = (&self.tally, &self.shown);
        if (now.allocs + now.frees).wrapping_sub(shown.allocs + shown.frees) >= PUBLISH_EVERY {
            self.publish_cold();
        }
    }

    /// [`publish`](ThreadCache::publish), kept off the paths that test
    /// whether it is due.
    #[cold]
    #[inline(never)]
    fn publish_cold(&mut self) {
        self.publish();
    }

    /// Whether the cache is active and may be used as it is: what
    /// [`activate`] answers at once, with nothing to set up.
    #[inline(always)]
    fn is_active(&self) -> bool {
        self.state == ACTIVE && crate::options::perturb() == 0
    }

    /// Grows the bin of `class` as [`grow_budgeted`] does.
    fn grow_bin(&mut self, class: usize, how: Growth) -> bool {
        let mut limit = self.limit(class);
        let grew = grow_budgeted(&mut self.cold().grown, &mut limit, class, how);
        if grew {
            self.set_limit(class, limit);
        }
        grew
    }

    /// Takes the spare of `class` out of the cache: its list and length
    /// (null and 0 when there is none), its bytes off `spare_bytes`.
    fn take_spare(&mut self, class: usize) -> (*mut u8, u32) {
        let cold = self.cold();
        let spare = &mut cold.spares[class];
        let taken = (spare.head, spare.count);
        spare.head = ptr::null_mut();
        spare.count = 0;
        cold.spare_bytes -= taken.1 as usize * CLASSES[class].size as usize;
        taken
    }

    /// Gives the spare of `class`, if any, to the CPU depot, whole: its
    /// list is a former bin's, already ending in the null link, so nothing
    /// is walked and no object is touched.
    ///
    /// # Safety
    /// This is the calling thread's cache.
    #[link_section = ".text.hot.buddyslab"]
    unsafe fn drop_spare(&mut self, class: usize) {
        let (list, n) = self.take_spare(class);
        if n != 0 {
            // SAFETY: the spare's `n` objects are free objects of `class`,
            // linked through their first word and ending in the null link.
            unsafe { percpu::free_batch(class, list, n as usize) };
        }
    }

    /// The node this thread refills from.
    #[inline(always)]
    pub fn node(&self) -> u8 {
        (self.node_tag >> 8) as u8
    }

    /// See [`ThreadCache::node_tag`].
    #[inline(always)]
    pub fn node_tag(&self) -> u32 {
        self.node_tag
    }

    /// Gives every bin its starting limit (activation, and after a trim
    /// emptied them).
    fn reset_limits(&mut self) {
        let cold = self.cold();
        cold.grown = 0;
        cold.refused = 0;
        for class in 0..NR_CLASSES {
            self.set_limit(class, start_limit(class));
            self.cold().remotes[class + 1].limit = start_limit(class);
        }
    }

    fn set_node(&mut self, node: u8) {
        self.node_tag = (node as u32) << 8;
    }

    /// The chunk holding `addr`, or null when no chunk does: the one
    /// remembered when `addr` lies in a chunk this thread remembers (its
    /// way's), else the chunk map's answer (remembered in its way when it
    /// is a chunk). A hit costs seven instructions against the map's
    /// sixteen.
    #[inline(always)]
    pub fn chunk_of(&mut self, addr: usize) -> *mut crate::mm::page::Chunk {
        // SAFETY: a cache of this thread's (`current`, or a test's own).
        unsafe { chunk_of_raw(self, addr) }
    }
}

/// The way of [`ThreadCache::chunk_ends`] that the chunk holding `addr`
/// takes.
#[inline(always)]
fn chunk_way(addr: usize) -> usize {
    (addr >> crate::mm::page::CHUNK_SHIFT) & (CHUNK_WAYS - 1)
}

/// The fast-path tag of the page holding `addr` when `addr` lies in a
/// chunk this thread remembers (see [`ThreadCache::chunk_of`]): `free`'s
/// fast path, whose misses take its cold path as a jump.
///
/// # Safety
/// `tc` is a live cache only the calling thread uses ([`current`]).
#[inline(always)]
pub unsafe fn remembered_tag(tc: *mut ThreadCache, addr: usize) -> Option<u16> {
    let way = chunk_way(addr);
    // SAFETY: per the caller; two entries of the way read through the raw
    // pointer (`way` < CHUNK_WAYS), and the tags are the origin of the
    // chunk that holds `addr` on a hit (never before one: no chunk ends
    // at 0).
    unsafe {
        if addr | (crate::mm::page::CHUNK_SIZE - 1) == *(*tc).chunk_ends.get_unchecked(way) {
            return Some(crate::mm::page::tag_at(*(*tc).chunk_tags.get_unchecked(way), addr));
        }
    }
    None
}

/// [`ThreadCache::chunk_of`] through the raw pointer: it touches only the
/// entries of the way the address takes, and makes no reference to the
/// whole cache while [`pop`] holds one to a bin (the `hardened` check of
/// the next slot asks it).
///
/// # Safety
/// `tc` is a live cache only the calling thread uses ([`current`]).
#[inline(always)]
unsafe fn chunk_of_raw(tc: *mut ThreadCache, addr: usize) -> *mut crate::mm::page::Chunk {
    let end = addr | (crate::mm::page::CHUNK_SIZE - 1);
    let way = chunk_way(addr);
    // SAFETY: the calling thread's cache; place expressions on the raw
    // pointer read and write the way's entries alone (`way` < CHUNK_WAYS).
    unsafe {
        if end == *(*tc).chunk_ends.get_unchecked(way) {
            let chunk = *(*tc).chunks.get_unchecked(way);
            if chunk.is_null() {
                // As in `ThreadCache::chunk_of`: never null on a hit.
                core::hint::unreachable_unchecked()
            }
            return chunk;
        }
        let chunk = crate::mm::page::chunk_of(addr);
        if !chunk.is_null() {
            *(*tc).chunk_ends.get_unchecked_mut(way) = end;
            *(*tc).chunks.get_unchecked_mut(way) = chunk;
            *(*tc).chunk_tags.get_unchecked_mut(way) = crate::mm::page::Chunk::tags_origin(chunk);
        }
        chunk
    }
}

/// The second word of an object: where a freed object keeps the free
/// mark ([`link::FREE_MARK`]).
#[inline(always)]
fn key_slot(object: *mut u8) -> *mut usize {
    link::mark_slot(object)
}

/// Bytes a full bin may hold; the limit is this over the object size,
/// clamped to `2..=MAX_OBJECTS`.
const BIN_BYTES: usize = 32 * 1024;
/// Bins of the smallest classes stop here: 1024 objects is 16 KiB of
/// 16-byte objects. A program that builds and frees big structures of
/// small nodes (bintree: trees of up to half a million 16-byte nodes)
/// overflows any bin, and each overflow costs a flush and a refill;
/// at 64 objects bintree spent a quarter of its allocator instructions
/// there (2.06 G instructions in all, 1.79 G at 1024). A bin only grows
/// this far in a thread that keeps emptying it.
const MAX_OBJECTS: usize = 1024;
/// Bytes one thread's bins may grow by, all classes and both kinds of bin
/// together (the limits' growth past [`start_limit`], times the object
/// sizes). Without it a thread that cycles many classes (larson and
/// prodcons use 60-odd) lets every bin grow to 32 KiB, and 16 objects on
/// frees: up to 2 MiB a thread, half full on average. With it, the
/// classes that run dry first take the room, the rest refill at their
/// starting limits from the CPU depots, and [`rebalance`] shares the room
/// out again. Measured in one interleaved run (3 rounds): larson's peak
/// RSS 6.3 to 5.8 MiB, prodcons 3.2 to 3.0 MiB, times unchanged. Budgets
/// of 128 and 256 KiB were tried too: within the runs' noise of this one
/// on RSS, and 128 KiB was slower on larson.
const GROWTH_BUDGET: usize = 512 * 1024;
/// Most objects a bin grows to on frees alone ([`grow_on_free`]).
const FREE_GROWTH_MAX: u32 = 16;
/// Most objects a remote bin grows to, and (below) half of [`bin_limit`]:
/// a remote bin is only a batch on its way home, whose every send takes
/// the home node's cache lock, which that node's threads take to refill.
/// Measured with xmalloc-test (one thread allocates, one frees, on two
/// CPUs, so most frees are remote), interleaved rounds on a 2-CPU
/// machine shared with other work, millions of frees per second: before
/// the spares, at 16: 27.4, 32.0, 25.2, then 18.7, 24.4, 22.7, 22.9;
/// with the spares and 64: 34.7, 31.6, 32.5, then 20.0, 31.1, 27.1, 26.9.
const REMOTE_GROWTH_MAX: u32 = 64;

/// How a bin is growing: on a refill (an empty bin), on a free into a
/// full one, or on a free into a full remote bin.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Growth {
    Refill,
    Free,
    Remote,
}

/// Objects a bin of `class` holds at most.
pub fn bin_limit(class: usize) -> u32 {
    let n = BIN_BYTES / CLASSES[class].size as usize;
    n.clamp(2, MAX_OBJECTS) as u32
}

/// Objects a bin has room for when its thread starts: its limit begins
/// here and doubles, up to [`bin_limit`], each time the bin runs empty (a
/// refill a larger bin would have saved), as the kernel's per-CPU page
/// lists raise their high mark under load; overflowing grows it only a
/// little (see [`grow_on_free`]). So a
/// thread caches a full bin's worth only of the classes it keeps cycling:
/// with 72 classes at 32 KiB, fixed limits let every thread (and every CPU
/// depot behind it) sit on far more memory than a small program uses.
const START_OBJECTS: u32 = 4;

/// The limit a bin of `class` starts with.
pub fn start_limit(class: usize) -> u32 {
    bin_limit(class).min(START_OBJECTS)
}

/// Grows a full bin (of `class`) on a free, up to a quarter of
/// [`bin_limit`] and at most [`FREE_GROWTH_MAX`] objects: batching frees
/// saves locks, but a thread that only frees a class (a consumer, or the
/// thread that reaps others' results) never takes the objects back, so a
/// large bin would only sit on them.
/// A remote bin grows further ([`REMOTE_GROWTH_MAX`]).
fn grow_on_free(limit: &mut u32, class: usize, remote: bool) -> bool {
    let most = if remote {
        (bin_limit(class) / 2).clamp(START_OBJECTS, REMOTE_GROWTH_MAX)
    } else {
        (bin_limit(class) / 4).clamp(START_OBJECTS, FREE_GROWTH_MAX)
    };
    if *limit >= most {
        return false;
    }
    grow(limit, class)
}

/// Grows `limit`, one of a thread's bins', of `class`: as [`grow_on_free`]
/// does on a free, as [`grow`] does on a refill, while the thread's
/// bins have grown by less than [`GROWTH_BUDGET`] (`grown`, which this
/// adds to). False when the bin did not grow.
fn grow_budgeted(grown: &mut usize, limit: &mut u32, class: usize, how: Growth) -> bool {
    if *grown >= GROWTH_BUDGET {
        return false;
    }
    let before = *limit;
    let grew = match how {
        Growth::Refill => grow(limit, class),
        Growth::Free => grow_on_free(limit, class, false),
        Growth::Remote => grow_on_free(limit, class, true),
    };
    if grew {
        *grown += (*limit - before) as usize * CLASSES[class].size as usize;
    }
    grew
}

/// Refills turned down by the spent budget before [`rebalance`] runs.
const REBALANCE_AFTER: u32 = 256;

/// Halves the room of every bin of `tc` grown past its start (objects
/// that no longer fit go to the shared caches) and recounts the growth:
/// run when the budget is spent and refills keep finding bins that would
/// grow. The classes that run dry most often grow back first, so a thread
/// whose hot classes change (a program moving to its next phase) does not
/// keep the room its first classes took.
///
/// # Safety
/// `tc` is the calling thread's cache, active.
unsafe fn rebalance(tc: &mut ThreadCache) {
    tc.cold().refused = 0;
    let mut grown = 0;
    for (class, info) in CLASSES.iter().enumerate() {
        let start = start_limit(class);
        let limit = tc.limit(class);
        if limit > start {
            let half = (limit / 2).max(start);
            let excess = tc.count(class).saturating_sub(half) as usize;
            // SAFETY: this thread's cache; the bin holds more than `excess`.
            unsafe {
                tc.drop_spare(class);
                flush(tc, class, excess);
            }
            tc.set_limit(class, half);
        }
        grown += tc.limit(class).saturating_sub(start) as usize * info.size as usize;
        let remote = &mut tc.cold().remotes[class + 1];
        if remote.limit > start {
            remote.limit = (remote.limit / 2).max(start);
            let excess = remote.count.saturating_sub(remote.limit) as usize;
            // SAFETY: the remote bin holds `count` objects of `class`.
            unsafe { send_home(remote, class, excess) };
        }
        grown += remote.limit.saturating_sub(start) as usize * info.size as usize;
    }
    tc.cold().grown = grown;
}

/// Doubles `limit`, a bin's of `class`, up to [`bin_limit`]; false
/// when it is there already.
fn grow(limit: &mut u32, class: usize) -> bool {
    let max = bin_limit(class);
    if *limit >= max {
        return false;
    }
    *limit = (*limit * 2).min(max);
    true
}

/// Chunks a thread's `free` remembers (see [`ThreadCache::chunk_of`]),
/// one per chunk number modulo this: 64 MiB of chunks in a row. With one,
/// `free` of objects spread over a few chunks took the chunk map nearly
/// every time: larson (random frees over about 5 MiB of objects) went
/// through `free`'s cold path on 1.69 million of its 1.7 million frees
/// under callgrind, at some 40 instructions each on top of the fast
/// path's.
pub const CHUNK_WAYS: usize = 16;

// The thread cache: zero bytes are the UNINIT state with empty bins.
crate::os::zeroed_thread_local! {
    /// The calling thread's cache.
    pub fn current() -> *mut ThreadCache, "buddyslab_thread_cache_v1"
}

/// The calling thread's heap-profile budget (the thread cache's `prof_left`),
/// usable in every state of the cache (it is plain thread-local memory).
pub fn prof_budget() -> *mut isize {
    // SAFETY: only the field's address is computed.
    unsafe { &raw mut (*current()).prof_left }
}

// A page holding a sampled object gets the tag `crate::profile::DIVERTED`,
// which no thread's fast path may take for a class of its node.
const _: () = assert!((crate::profile::DIVERTED as usize & 0xff) > NR_CLASSES);

/// Pops an object off the bin at `slot` (class `slot - 1`), or null when
/// the bin is empty. The link is checked ([`link::next_keyed`]) and both
/// of the object's first words are cleared, so the program never sees
/// the encoded link.
///
/// # Safety
/// `tc` is the calling thread's cache; `slot <= NR_CLASSES`.
#[inline(always)]
unsafe fn pop(tc: *mut ThreadCache, slot: usize) -> *mut u8 {
    // SAFETY: per the caller; `next_keyed` always answers.
    unsafe {
        pop_with(tc, slot, |object, key, mask| {
            Some(link::next_keyed(object, slot.wrapping_sub(1), key, mask, |a| chunk_of_raw(tc, a)))
        })
    }
}

/// [`pop`] with the link read by `next` (from the object, the link key
/// and the mask of implausible bits): its `None` leaves the bin as it
/// was and answers null, as an empty bin does.
///
/// # Safety
/// As [`pop`]; `next` answers as [`link::next_keyed`] would, or `None`.
#[inline(always)]
unsafe fn pop_with(
    tc: *mut ThreadCache,
    slot: usize,
    next: impl FnOnce(*mut u8, usize, usize) -> Option<*mut u8>,
) -> *mut u8 {
    // SAFETY: per the caller, the slot is in the arrays.
    let head = unsafe { (*tc).heads.as_mut_ptr().add(slot) };
    // SAFETY: as above.
    let object = unsafe { *head };
    if object.is_null() {
        return object;
    }
    // SAFETY: objects on a bin are free objects of its class whose first
    // word links the bin (slot 0's is always empty, so its class, which
    // wraps, is never read); `link_key` is the link key or, in a cache
    // not yet active, 0 with every bin empty (never reached).
    unsafe {
        let Some(following) = next(object, (*tc).link_key, (*tc).link_mask) else {
            return ptr::null_mut();
        };
        *head = following;
        *(*tc).words.as_mut_ptr().add(slot) += POPPED;
        link::clear(object);
    }
    object
}

/// Pops an object of `class` off the calling thread's bin as [`alloc`]'s
/// fast path does, or answers null: when the bin is empty, and when its
/// head's link needs the check through the page descriptors (see
/// [`link::next_keyed_quick`]); the bin is then as it was, and the
/// caller's slow path takes [`alloc`]. No call on the way, so a caller
/// that does more with the object (the secure build's `malloc`) has no
/// register to save around one.
///
/// # Safety
/// `class < NR_CLASSES`.
#[cfg(feature = "secure")]
#[inline(always)]
pub unsafe fn pop_quick(class: usize) -> *mut u8 {
    if class >= NR_CLASSES {
        // SAFETY: per the caller. Said here, the link check's own test
        // of the class (for the caches of the allocator's own) goes.
        unsafe { core::hint::unreachable_unchecked() }
    }
    let tc = current();
    // SAFETY: the thread cache is this thread's alone; `class + 1` is a
    // valid bin index.
    unsafe {
        pop_with(tc, class + 1, |object, key, mask| {
            link::next_keyed_quick(object, class, key, mask, |a| chunk_of_raw(tc, a))
        })
    }
}

/// Allocates an object of `class` from the calling thread's bin, for a
/// request of `size` bytes (which only the refill path looks at).
#[inline(always)]
pub fn alloc(class: usize, size: usize, set_up: SetUp, out_of_memory: OutOfMemory) -> *mut u8 {
    // SAFETY: the thread cache is this thread's alone; `class + 1` is a
    // valid bin index.
    let object = unsafe {
        pop(current(), class + 1)
    };
    if !object.is_null() {
        return object;
    }
    alloc_slow(class, size, set_up, out_of_memory)
}

/// The slot (class + 1) of the bin serving a request of `16 * i` bytes
/// (rounded up), for requests up to [`super::TABLE_MAX`]: the class
/// table's answer as `malloc` indexes the bins with it.
static SMALL_SLOTS: [u8; super::TABLE_MAX / 16 + 1] = {
    let mut t = [0u8; super::TABLE_MAX / 16 + 1];
    let mut i = 0;
    while i < t.len() {
        t[i] = (super::size_class::slow_class_of(i * 16) + 1) as u8;
        i += 1;
    }
    t
};
const _: () = assert!(NR_CLASSES < 256);

/// [`alloc`] for a request of `size <= TABLE_MAX` bytes.
#[inline(always)]
pub fn alloc_small(size: usize, set_up: SetUp, out_of_memory: OutOfMemory) -> *mut u8 {
    debug_assert!(size <= super::TABLE_MAX);
    let tc = current();
    // SAFETY: (size + 15) >> 4 <= 64, the table's last index; the thread
    // cache is this thread's alone.
    let slot = unsafe { *(*tc).small_slots.get_unchecked((size + 15) >> 4) } as usize;
    // SAFETY: a slot's bin: the bin of `slot - 1`, or slot 0's (empty)
    // before activation.
    let object = unsafe { pop(tc, slot) };
    if !object.is_null() {
        return object;
    }
    alloc_small_slow(size, slot, set_up, out_of_memory)
}

/// [`alloc_small`] with its bin empty: the class from the bin's slot, or
/// from `size` while the cache's table is not yet copied. (`size` first:
/// it stays in the register it came in, with no copy on the fast path.)
#[cold]
#[inline(never)]
#[link_section = ".text.hot.buddyslab"]
fn alloc_small_slow(size: usize, slot: usize, set_up: SetUp, out_of_memory: OutOfMemory) -> *mut u8 {
    let class = match slot {
        0 => super::class_of(size),
        slot => slot - 1,
    };
    alloc_slow(class, size, set_up, out_of_memory)
}

/// Whether bin `user_class` (0..=NR_CLASSES; 0 is the unused one, which
/// never has room) of the thread cache `tc` has room for one more object.
///
/// # Safety
/// `tc` is [`current`]; `user_class <= NR_CLASSES`.
#[inline(always)]
pub unsafe fn has_room(tc: *mut ThreadCache, user_class: usize) -> bool {
    // SAFETY: per the caller.
    unsafe { *(*tc).words.as_ptr().add(user_class) as u16 != 0 }
}

/// Frees `object`, a slab object of class `user_class - 1` on the calling
/// thread's node, into the thread's bin, which has room ([`has_room`]).
///
/// # Safety
/// `tc` is [`current`]; `object` is a live object of that class and node,
/// given up.
#[inline(always)]
pub unsafe fn free_local(tc: *mut ThreadCache, object: *mut u8, user_class: usize, set_up: SetUp) {
    // SAFETY: as in `alloc`; the object is ours to read and link.
    unsafe {
        if !link::is_marked_free_with(object, (*tc).key) {
            return push_unmarked(tc, object, user_class);
        }
        free_slow(object, user_class, set_up)
    }
}

/// [`free_local`] of an object found not to carry the free mark: marks
/// it and pushes it.
///
/// # Safety
/// As [`free_local`]; the object's second word is not its free mark.
#[inline(always)]
unsafe fn push_unmarked(tc: *mut ThreadCache, object: *mut u8, user_class: usize) {
    // SAFETY: as in `alloc`; the object is ours to write.
    unsafe {
        link::set_marked_free_with(object, (*tc).key);
        push_marked(tc, object, user_class);
    }
}

/// Pushes `object`, which already carries its free mark, onto the calling
/// thread's bin of class `user_class - 1`, which has room ([`has_room`]):
/// the secure build's quarantine, whose pattern holds the mark and whose
/// check has just read it, links the object leaving it without writing
/// the mark again.
///
/// # Safety
/// As [`free_local`]; the object's second word is its free mark, and no
/// list holds it.
#[inline(always)]
pub unsafe fn push_marked(tc: *mut ThreadCache, object: *mut u8, user_class: usize) {
    // SAFETY: as in `alloc`; the object is ours to link.
    unsafe {
        let head = (*tc).heads.as_mut_ptr().add(user_class);
        let word = (*tc).words.as_mut_ptr().add(user_class);
        debug_assert!(*word & ROOM != 0, "free_local without room");
        debug_assert!(link::is_marked_free_with(object, (*tc).key), "push_marked of an unmarked object");
        link::set_next_keyed(object, *head, (*tc).link_key);
        *head = object;
        *word -= 1;
    }
}

/// The process's one-time set-up (options, keys, fork handlers, the
/// ledger's hooks), which the caller passes down: a thread cache is
/// activated only after it has run, and the magazine names nothing above
/// the slab tier. On the fast paths it is a constant that costs nothing;
/// only the slow paths call it.
pub type SetUp = fn();

/// What the caller does when a request fails, before null comes back to
/// it (the C face sets `errno`): called from the slow path only, so the
/// fast path has no test of its own.
pub type OutOfMemory = fn();

/// The pthread key whose destructor empties a thread's cache at exit.
static KEY: crate::os::ThreadExitKey = crate::os::ThreadExitKey::new();

/// Creates the thread-exit key. Called once from the heap's set-up.
pub fn init_thread_exit_key() {
    KEY.create(thread_exit);
}

/// Makes the calling thread's cache usable; false when it cannot be (set-up
/// still running, the thread is exiting, or re-entered from inside
/// activation), and the caller uses the shared caches directly.
///
/// The common case, an active cache and no perturbing, is two loads and
/// no call: every refill and every slow free asks (a producer's frees of
/// another CPU's objects all come this way).
#[inline(always)]
fn activate(tc: *mut ThreadCache, set_up: SetUp) -> bool {
    // SAFETY: the thread cache is this thread's alone.
    if unsafe { (*tc).is_active() } {
        return true;
    }
    activate_slow(tc, set_up)
}

/// [`activate`] for every case but the common one.
#[cold]
#[inline(never)]
#[link_section = ".text.hot.buddyslab"]
fn activate_slow(tc: *mut ThreadCache, set_up: SetUp) -> bool {
    // SAFETY: the thread cache is this thread's alone.
    let tc = unsafe { &mut *tc };
    if crate::options::perturb() != 0 {
        if tc.state == ACTIVE {
            // Empty the bins and leave the limits at 0: nothing is cached
            // while perturbing, so every call comes here.
            // SAFETY: this thread's cache.
            unsafe { drain(tc) };
            tc.state = PAUSED;
        }
        return false;
    }
    match tc.state {
        ACTIVE => return true,
        UNINIT => {}
        PAUSED => {
            tc.reset_limits();
            tc.state = ACTIVE;
            return true;
        }
        _ => return false,
    }
    set_up();
    tc.state = BUSY;
    let Some(cold) = crate::mm::alloc_thread_page() else {
        tc.state = UNINIT;
        return false;
    };
    // May allocate (keys past the first 32); that re-entry sees BUSY and
    // uses the shared caches.
    if !KEY.set((tc as *mut ThreadCache).cast()) {
        // SAFETY: taken just now, never used.
        unsafe { crate::mm::free_thread_page(cold) };
        tc.state = UNINIT;
        return false;
    }
    tc.cold = cold as *mut Cold;
    tc.reset_limits();
    tc.set_node(super::home_node() as u8);
    tc.small_slots = SMALL_SLOTS;
    tc.cold().rng = (link::FREE_MARK.load(Ordering::Relaxed) ^ (tc as *mut ThreadCache as usize)) as u32 | 1;
    tc.key = link::FREE_MARK.load(Ordering::Relaxed);
    tc.link_key = link::key();
    tc.link_mask = link::IMPLAUSIBLE;
    tc.state = ACTIVE;
    true
}

#[cold]
#[inline(never)]
#[link_section = ".text.hot.buddyslab"]
fn alloc_slow(class: usize, size: usize, set_up: SetUp, out_of_memory: OutOfMemory) -> *mut u8 {
    // Views on demand, at an interval, the live page: a hook the views
    // register (one relaxed load when none is in use); no lock is held here.
    crate::counters::on_slow_path();
    // One request per refill is the slab tier's internal-fragmentation
    // sample: the fast path counts nothing.
    super::sample_request(class, size);
    let tc = current();
    if !activate(tc, set_up) {
        let object = cache::alloc(&super::home_caches()[class]);
        if object.is_null() {
            out_of_memory();
        } else {
            crate::counters::count_blocks(1, 0);
            // SAFETY: an object of at least 16 bytes, ours.
            unsafe { link::clear(object) };
            let perturb = crate::options::perturb();
            if perturb != 0 {
                // glibc's alloc_perturb: the requested bytes.
                // SAFETY: `size` bytes of the object are ours.
                unsafe { ptr::write_bytes(object, perturb ^ 0xff, size) };
            }
            if crate::profile::on() {
                // SAFETY: this thread's budget; no reference to it is live.
                unsafe { crate::profile::sample_object(prof_budget(), object, size, CLASSES[class].size as usize) };
            }
        }
        return object;
    }
    // The allocations the fast path made from this bin since it was last
    // folded: counted, and charged to the heap profile's budget.
    // SAFETY: this thread's cache, active.
    let popped = unsafe { (*tc).fold(class) };
    // SAFETY: this thread's cache; the references end with the call.
    if crate::profile::on() && unsafe { (*tc).prof_left } >= 0 {
        let bytes = popped as usize * CLASSES[class].size as usize;
        // SAFETY: as above.
        crate::profile::charge_later(unsafe { &mut (*tc).cold().prof_class[class] }, bytes);
    }
    // The spare, if there is one, becomes the bin: no lock, no walk.
    // While profiling, a refill is what stops at the next sample, so the
    // spare goes to the depot instead and the refill below takes from there.
    // SAFETY: this thread's cache, active; the bin is empty (the fast
    // path found it so), and the spare's list is linked as the bin's was.
    unsafe {
        if (*tc).cold().spares[class].count != 0 {
            if !crate::profile::on() {
                let (list, n) = (*tc).take_spare(class);
                let head = &mut (*tc).heads[class + 1];
                debug_assert!(head.is_null());
                *head = link::next(list, class);
                (*tc).set_count(class, n - 1);
                link::clear(list);
                // The bin ran dry: it grows as on a refill, or a class
                // that keeps cycling between its bin and its spare would
                // stay at its starting limit.
                (*tc).grow_bin(class, Growth::Refill);
                (*tc).tally.allocs += 1;
                (*tc).publish_now_and_then();
                return list;
            }
            (*tc).drop_spare(class);
        }
    }
    // SAFETY: this thread's cache, active.
    unsafe {
        (*tc).set_node(super::home_node() as u8);
        let cold = (*tc).cold();
        if cold.grown >= GROWTH_BUDGET && (*tc).limit(class) < bin_limit(class) {
            cold.refused += 1;
            if cold.refused >= REBALANCE_AFTER {
                rebalance(&mut *tc);
            }
        }
        (*tc).grow_bin(class, Growth::Refill);
    }
    // Half a bin, give or take up to a quarter of that (at most 4): the
    // request that finds the bin empty is the one sampled, and a refill
    // count that varies keeps that choice from following a period of the
    // program's requests (every other request 33 B, the rest 48 B, and an
    // even count would sample only one of them).
    // SAFETY: this thread's cache.
    let half = (unsafe { (*tc).limit(class) } as usize / 2).max(1);
    let span = (half / 2).min(8);
    // SAFETY: this thread's cache.
    let roll = unsafe {
        let rng = &mut (*tc).cold().rng;
        let mut x = *rng;
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        *rng = x;
        x as usize
    };
    let mut want = half - span / 2 + roll % (span + 1);
    // While profiling, a refill also charges the heap profile's budget and
    // takes no more than it has room for (see `crate::profile`).
    // SAFETY: this thread's cache; the reference ends with the call.
    let sampled = crate::profile::on()
        && unsafe { (*tc).prof_left } >= 0
        && crate::profile::plan_refill(unsafe { &mut (*tc).cold().prof_class[class] }, CLASSES[class].size as usize, &mut want);
    if sampled {
        // The class's next countdown starts now; the thread is busy
        // until `record` has its stack.
        // SAFETY: this thread's cache; the references end with the calls.
        unsafe {
            crate::profile::capture_done(&mut (*tc).cold().prof_class[class]);
            crate::profile::begin_capture(&mut (*tc).prof_left);
        }
    }
    let (list, n) = percpu::alloc_batch(class, want);
    if n == 0 {
        if sampled {
            // Nothing to record; the budget must leave its busy state.
            // SAFETY: this thread's budget; no reference to it is live.
            unsafe { crate::profile::record(prof_budget(), ptr::null_mut(), size, crate::profile::Kind::Slab) };
        }
        out_of_memory();
        return ptr::null_mut();
    }
    // Hand out the first; the rest become the bin.
    // SAFETY: `list` heads `n` fresh objects linked through their first
    // word; this thread's cache, whose bin of `class` is empty.
    unsafe {
        (*tc).heads[class + 1] = link::next(list, class);
        link::clear(list);
        (*tc).set_count(class, n as u32 - 1);
        (*tc).tally.allocs += 1;
        (*tc).publish_now_and_then();
    }
    if sampled {
        // After the bin is whole again: the unwinder may allocate, from
        // this very bin.
        // SAFETY: this thread's budget; no reference to it is live.
        unsafe { crate::profile::record(prof_budget(), list, size, crate::profile::Kind::Slab) };
    }
    list
}

/// Frees a slab object that [`free_local`] could not take: a full bin, an
/// object of another node (it goes to a remote bin), a thread whose cache
/// is not active, or a double free.
///
/// # Safety
/// `object` is a live object of class `user_class - 1`, given up.
#[cold]
#[inline(never)]
#[link_section = ".text.hot.buddyslab"]
pub unsafe fn free_slow(object: *mut u8, user_class: usize, set_up: SetUp) {
    let class = user_class - 1;
    // SAFETY: a slab object of at least 16 bytes, given up by the caller.
    unsafe { set_free_mark(object, link::FREE_MARK.load(Ordering::Relaxed)) };
    // The views' trigger, as on the refill: a thread that frees more than
    // it allocates in a class reaches this path and no refill.
    crate::counters::on_slow_path();
    let tc = current();
    if !activate(tc, set_up) {
        crate::counters::count_blocks(0, 1);
        let perturb = crate::options::perturb();
        if perturb != 0 {
            // glibc's free_perturb, past the link and the free mark.
            // SAFETY: the object is ours, of its class's size (>= 16).
            unsafe { ptr::write_bytes(object.add(16), perturb, CLASSES[class].size as usize - 16) };
        }
        // SAFETY: a live object of this class, given up.
        unsafe {
            let slab = cache::slab_of(object);
            cache::free(super::cache_of_slab(slab), slab, object);
        }
        return;
    }
    // SAFETY: this thread's cache, active; the object is ours.
    unsafe {
        let tc = &mut *tc;
        tc.tally.frees += 1;
        tc.publish_now_and_then();
        tc.set_node(super::home_node() as u8);
        let slab = cache::slab_of(object);
        if (*slab).node != tc.node() {
            let cold = tc.cold();
            let remote = &mut cold.remotes[user_class];
            if remote.count >= remote.limit && !grow_budgeted(&mut cold.grown, &mut remote.limit, class, Growth::Remote) {
                send_home(remote, class, remote.count as usize);
            }
            remote.push(object);
            return;
        }
        let mut count = tc.count(class);
        if count >= tc.limit(class) && !tc.grow_bin(class, Growth::Free) {
            tc.drop_spare(class);
            let head = tc.heads[user_class];
            let bytes = count as usize * CLASSES[class].size as usize;
            let cold = tc.cold();
            if cold.spare_bytes + bytes <= SPARE_BUDGET {
                cold.spare_bytes += bytes;
                let spare = &mut cold.spares[class];
                spare.head = head;
                spare.count = count;
            } else {
                // A whole bin, its list ending in the null link.
                percpu::free_batch(class, head, count as usize);
            }
            tc.heads[user_class] = ptr::null_mut();
            count = 0;
        }
        let head = &mut tc.heads[user_class];
        link::set_next(object, *head);
        *head = object;
        tc.set_count(class, count + 1);
    }
}

/// Frees `object`, a slab object of class `user_class - 1` whose page's
/// tag names another node, into the thread's remote bin, when the cache
/// is active and that bin has room; false when not (then [`free_slow`]
/// does it, activating the cache, growing the bin or sending it home).
/// What `free_slow` does for such an object, less its reads of the page
/// descriptor (the tag already said class and node) and less the count's
/// publication, which the caller does last ([`publish_now_and_then`]),
/// so that `free`'s path for such objects calls nothing.
///
/// # Safety
/// `tc` is [`current`]; `object` is a live object of that class, at a
/// slot start, given up, on a page of another node than the thread's.
#[inline(always)]
pub unsafe fn free_remote(tc: *mut ThreadCache, object: *mut u8, user_class: usize) -> bool {
    // SAFETY: this thread's cache; the object is ours to link once the
    // cache is active.
    unsafe {
        let tc = &mut *tc;
        // `activate`'s common case; the others take `free_slow`.
        if !tc.is_active() {
            return false;
        }
        let (key, link_key) = (tc.key, tc.link_key);
        let remote = &mut tc.cold().remotes[user_class];
        if remote.count >= remote.limit {
            return false;
        }
        set_free_mark(object, key);
        remote.push_keyed(object, link_key);
        tc.tally.frees += 1;
    }
    true
}

/// [`ThreadCache::publish_now_and_then`] for the callers of
/// [`free_remote`].
///
/// # Safety
/// `tc` is [`current`].
#[inline(always)]
pub unsafe fn publish_now_and_then(tc: *mut ThreadCache) {
    // SAFETY: per the caller.
    unsafe { (*tc).publish_now_and_then() }
}

/// Puts the free mark (keyed by `key`, [`link::FREE_MARK`]) on `object`,
/// stopping the process when it is there already: a double free.
///
/// # Safety
/// `object` is a slab object of at least 16 bytes, given up by the caller.
#[inline]
unsafe fn set_free_mark(object: *mut u8, key: usize) {
    let mark = link::mark_of(object, key);
    // SAFETY: per the caller, the object's second word is ours.
    unsafe {
        if key_slot(object).read() == mark {
            double_free(object);
        }
        key_slot(object).write(mark);
    }
}

impl RemoteBin {
    /// Pushes `object`, free and marked, onto the bin (whose limit the
    /// caller has made room under).
    ///
    /// # Safety
    /// `object` is a free slab object of the bin's class, ours to link.
    unsafe fn push(&mut self, object: *mut u8) {
        // SAFETY: per the caller.
        unsafe { self.push_keyed(object, link::key()) }
    }

    /// [`push`](RemoteBin::push) with the link key at hand ([`link::key`],
    /// as an active thread cache holds it).
    ///
    /// # Safety
    /// As [`push`](RemoteBin::push); `key` is [`link::key`].
    #[inline(always)]
    unsafe fn push_keyed(&mut self, object: *mut u8, key: usize) {
        // SAFETY: per the caller.
        unsafe { link::set_next_keyed(object, self.head, key) };
        self.head = object;
        self.count += 1;
    }
}

#[cold]
#[inline(never)]
fn double_free(object: *mut u8) -> ! {
    let mut buf = [0u8; 32];
    crate::os::fatal(&[b"buddyslab: free(): double free detected: ", crate::os::fmt::fmt_hex(&mut buf, object as usize)])
}

/// Returns the first `n` objects of a remote bin home. A whole bin (the
/// usual case: it filled up, or its thread exits) goes as one list to
/// the depot of the CPU whose node its first object belongs to, where the
/// threads of that CPU take it back with no object touched
/// ([`percpu::free_batch_on`]); a part of one, or a whole one that finds
/// that depot full, to its slabs' caches, object by object.
///
/// A producer on one CPU and a consumer on another meet there, as two
/// threads of one CPU meet in its depot: otherwise every object the
/// consumer frees is walked back into its slab, one dependent load each,
/// and taken off it again by the producer's refill. A bin may hold objects
/// of several nodes; the few that are not of the first one's node are
/// handed out there, and go home on their next free.
///
/// # Safety
/// `bin` is one of this thread's remote bins, of `class`, and holds at
/// least `n` objects.
#[link_section = ".text.hot.buddyslab"]
unsafe fn send_home(bin: &mut RemoteBin, class: usize, n: usize) {
    if n == 0 {
        return;
    }
    let list = bin.head;
    // SAFETY: the first `n` objects are free objects linked through their
    // first word; `free_bulk_by` reads only `n` links.
    unsafe {
        let mut rest = list;
        if n == bin.count as usize {
            // The whole bin (the usual case): its list ends in null, and
            // `free_bulk_by` walks it anyway.
            rest = ptr::null_mut();
        } else {
            for _ in 0..n {
                rest = link::next(rest, class);
            }
        }
        bin.head = rest;
        bin.count -= n as u32;
        if rest.is_null() {
            // Node `k` is the node of CPU `k` (and of CPUs `k + MAX_NODES`...).
            percpu::free_batch_on((*cache::slab_of(list)).node as usize, class, list, n);
        } else {
            super::free_home(list, n);
        }
    }
}

/// Gives the first `n` objects of the bin of `class` of `tc` back to the
/// shared cache.
///
/// # Safety
/// `tc` is this thread's cache, and its bin of `class` holds at least `n`
/// objects.
#[link_section = ".text.hot.buddyslab"]
unsafe fn flush(tc: &mut ThreadCache, class: usize, n: usize) {
    if n == 0 {
        return;
    }
    let count = tc.count(class);
    tc.set_count(class, count - n as u32);
    let head = &mut tc.heads[class + 1];
    let list = *head;
    let mut last = list;
    // SAFETY: the bin's objects are free objects linked through their
    // first word; we cut the list after `n` of them and terminate the cut
    // part (it may go to a CPU depot and then to another thread's bin,
    // which pops until null).
    unsafe {
        for _ in 1..n {
            last = link::next(last, class);
        }
        *head = link::next(last, class);
        link::set_next(last, ptr::null_mut());
        percpu::free_batch(class, list, n);
    }
}

/// Empties the calling thread's cache into the shared caches and leaves
/// it dead: the pthread key destructor, run at thread exit.
#[link_section = ".text.hot.buddyslab"]
extern "C" fn thread_exit(arg: *mut libc::c_void) {
    let tc = arg.cast::<ThreadCache>();
    debug_assert_eq!(tc, current());
    // SAFETY: glibc passes back the value we stored: this thread's cache.
    unsafe {
        drain(&mut *tc);
        (*tc).publish();
        (*tc).state = DEAD;
        crate::mm::free_thread_page((*tc).cold as usize);
        (*tc).cold = ptr::null_mut();
    }
}

/// Empties every bin of `tc` and sets their limits to 0, its calls all
/// folded.
///
/// # Safety
/// `tc` is the calling thread's cache.
#[link_section = ".text.hot.buddyslab"]
unsafe fn drain(tc: &mut ThreadCache) {
    for class in 0..NR_CLASSES {
        tc.fold(class);
        let n = tc.count(class) as usize;
        // SAFETY: the bin holds `n` objects of `class`, the spare its own.
        unsafe {
            flush(tc, class, n);
            tc.drop_spare(class);
        }
        tc.set_limit(class, 0);
        let remote = &mut tc.cold().remotes[class + 1];
        remote.limit = 0;
        let n = remote.count as usize;
        // SAFETY: the remote bin holds `n` objects.
        unsafe { send_home(remote, class, n) };
    }
}

/// Empties the calling thread's bins into the shared caches (for
/// `malloc_trim`); the cache stays active.
pub fn flush_current() {
    let tc = current();
    // SAFETY: this thread's cache.
    unsafe {
        if (*tc).state != ACTIVE {
            return;
        }
        drain(&mut *tc);
        (*tc).reset_limits();
    }
}

/// Counts a call of `entry` (`calloc`, `realloc`, the aligned family) in
/// the calling thread's cache: a plain add, no shared line written.
pub fn count_call(entry: crate::counters::Entry) {
    // SAFETY: this thread's cache (plain thread-local memory in every
    // state; a dead cache's counts are lost, as are its thread's).
    unsafe { (*current()).tally.calls[entry as usize] += 1 };
}

/// Counts `allocated` blocks that `calloc`, the aligned family or
/// `realloc` handed out and `freed` blocks that `realloc` gave back, in
/// the calling thread's cache: the views tell `malloc`'s and `free`'s own
/// calls from theirs by these.
pub fn count_entry_blocks(allocated: u64, freed: u64) {
    // SAFETY: as in `count_call`.
    unsafe {
        let tally = &mut (*current()).tally;
        tally.entry_allocs += allocated;
        tally.entry_frees += freed;
    }
}

/// Counts what the calling thread's fast paths did, and adds all it has
/// counted to the process's counts ([`crate::counters::blocks`]): the
/// views call it before they read them. Another thread's calls reach
/// the counts on its slow paths, at least once every [`PUBLISH_EVERY`]
/// calls counted there and at its exit.
pub fn publish_current() {
    let tc = current();
    // SAFETY: this thread's cache (in any state: an inactive one has
    // nothing to fold, its bins empty and limits 0).
    unsafe {
        (*tc).fold_all();
        (*tc).publish();
    }
}

/// Objects cached in the calling thread's bins (for tests and stats).
pub fn cached_objects() -> usize {
    // SAFETY: this thread's cache.
    unsafe {
        let tc = &*current();
        if tc.cold.is_null() {
            return 0;
        }
        let cold = tc.cold_ref();
        let spares: usize = cold.spares.iter().map(|s| s.count as usize).sum();
        let bins: usize = (0..NR_CLASSES).map(|c| tc.count(c) as usize).sum();
        spares + bins + cold.remotes.iter().map(|r| r.count as usize).sum::<usize>()
    }
}

/// Objects of `class` cached in the calling thread's bin (for the views).
pub fn cached_in_class(class: usize) -> usize {
    let tc = current();
    // SAFETY: this thread's cache; `class + 1` is a valid bin index.
    unsafe {
        if (*tc).cold.is_null() {
            return 0;
        }
        ((*tc).count(class) + (*tc).cold_ref().spares[class].count) as usize
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slab::class_of;

    /// The calling thread's limit for `class`.
    fn limit_now(class: usize) -> u32 {
        // SAFETY: this thread's cache; `class + 1` is a valid bin index.
        unsafe { (*current()).limit(class) }
    }

    /// `rounds` times, allocates twice the full bin's worth of `size`
    /// bytes and frees it all: the bin runs dry on every round.
    fn cycle(size: usize, rounds: usize) {
        let class = class_of(size);
        for _ in 0..rounds {
            let batch: std::vec::Vec<*mut u8> = (0..2 * bin_limit(class)).map(|_| crate::heap::malloc(size)).collect();
            for q in batch {
                // SAFETY: live blocks from the heap, given up.
                unsafe { crate::heap::free(q) };
            }
        }
    }

    #[test]
    fn bins_of_all_classes_grow_within_the_thread_budget() {
        std::thread::spawn(|| {
            for size in (1..=64).map(|k| k * 16) {
                cycle(size, 12);
            }
            let grown: usize = (0..NR_CLASSES)
                .map(|c| (limit_now(c).saturating_sub(start_limit(c))) as usize * CLASSES[c].size as usize)
                .sum();
            // The last growth allowed may take it past the budget by one
            // doubling, at most half a full bin.
            assert!(grown <= GROWTH_BUDGET + BIN_BYTES / 2, "bins grew by {grown} bytes");
            // The budget was reached (a rebalance may have halved the
            // growth since).
            assert!(grown >= GROWTH_BUDGET / 2, "bins grew by {grown} bytes only");
            // A class that turns hot later still grows to its full limit:
            // refills turned down make the others give room back.
            let late = class_of(2048);
            cycle(2048, 2000);
            assert_eq!(limit_now(late), bin_limit(late));
            // The unused bin never gets room: `free` sends a page that is
            // not a slab's (tag 0) to its slow path by that alone.
            // SAFETY: this thread's cache.
            assert!(!unsafe { has_room(current(), 0) }, "slots[0] has room");
        })
        .join()
        .unwrap();
    }

    #[test]
    fn bin_limits_start_small_and_grow_with_refills_only() {
        std::thread::spawn(|| {
            let class = class_of(64);
            let p = alloc(class, 64, crate::heap::ensure_init, || {});
            assert!(!p.is_null());
            // Unless the CPU depot handed over a longer list (another
            // thread's whole bin), which the limit rises to hold.
            let given = cached_in_class(class) as u32;
            assert!(limit_now(class) <= (2 * start_limit(class)).max(given), "a first refill should not fill the bin");
            // A thread that only frees stays at a quarter of the full limit, at most FREE_GROWTH_MAX.
            let mut held: std::vec::Vec<*mut u8> = (0..200).map(|_| crate::heap::malloc(64)).collect();
            let free_class = class_of(1024);
            let others: std::vec::Vec<usize> = std::thread::spawn(|| {
                (0..200).map(|_| crate::heap::malloc(1024) as usize).collect()
            })
            .join()
            .unwrap();
            for &q in &others {
                // SAFETY: live blocks from the heap, given up.
                unsafe { crate::heap::free(q as *mut u8) };
            }
            assert!(limit_now(free_class) <= (bin_limit(free_class) / 4).clamp(START_OBJECTS, FREE_GROWTH_MAX));
            // Cycling a class that keeps running dry raises its limit to the full one.
            for q in held.drain(..) {
                // SAFETY: as above.
                unsafe { crate::heap::free(q) };
            }
            cycle(64, 20);
            assert_eq!(limit_now(class), bin_limit(class));
            // SAFETY: `p` is a live slab object, given up.
            unsafe { crate::heap::free(p) };
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_full_bin_is_set_aside_whole_and_drained_with_the_bins() {
        std::thread::spawn(|| {
            let class = class_of(64);
            cycle(64, 20);
            let limit = limit_now(class) as usize;
            assert_eq!(limit, bin_limit(class) as usize);
            let held: std::vec::Vec<*mut u8> = (0..3 * limit).map(|_| crate::heap::malloc(64)).collect();
            for &q in &held {
                // SAFETY: live blocks from the heap, given up.
                unsafe { crate::heap::free(q) };
            }
            // The bin holds at most `limit`: more cached means the spare
            // holds a full bin too.
            let cached = cached_in_class(class);
            assert!(cached > limit && cached <= 2 * limit, "{cached} cached, limit {limit}");
            // The last object freed heads the bin (an emptied one, if it
            // found the bin full) and comes back first.
            let again = crate::heap::malloc(64);
            assert_eq!(again, *held.last().unwrap());
            assert_eq!(cached_in_class(class) + 1, cached);
            // SAFETY: as above.
            unsafe { crate::heap::free(again) };
            // Draining the cache empties the spares too.
            flush_current();
            assert_eq!(cached_objects(), 0);
        })
        .join()
        .unwrap();
    }

    /// A whole remote bin sent home is one list in the depot of its
    /// objects' CPU, taken back from there as it is; a part of one goes to
    /// the slabs.
    #[test]
    fn a_whole_remote_bin_goes_to_its_home_cpus_depot() {
        let _serial = super::super::DRAIN_TEST_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        std::thread::spawn(|| {
            // Pinned, so the CPU the objects' slabs belong to stays the
            // CPU whose depot is read.
            // SAFETY: no preconditions.
            let cpu = unsafe { libc::sched_getcpu() } as usize;
            // SAFETY: a zeroed cpu_set_t is the empty set; valid pointers.
            let pinned = unsafe {
                let mut set: libc::cpu_set_t = core::mem::zeroed();
                libc::CPU_SET(cpu, &mut set);
                libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &set) == 0
            };
            if !pinned || cpu >= super::super::MAX_NODES {
                std::eprintln!("a_whole_remote_bin_goes_to_its_home_cpus_depot: cannot pin, skipped");
                return;
            }
            // A class the other tests hardly use.
            let class = class_of(2900);
            let cache = &super::super::home_caches()[class];
            // Free objects of this node, linked: at least `n` (a slab's
            // whole free list may come with them).
            let take = |n: usize| {
                let (list, got) = cache::alloc_bulk(cache, n);
                assert!(got >= n, "{got} objects");
                (list, got as u32)
            };
            // A refill on this CPU makes its depots (a thread of the node
            // has always refilled once by the time its objects come home).
            let (list, n) = percpu::alloc_batch(class, 1);
            // SAFETY: `n` free objects of the class, just taken.
            unsafe { percpu::free_batch(class, list, n) };
            // Room in the depot: the other tests may have filled it.
            percpu::drain_all();
            let (whole, n) = take(6);
            let before = percpu::cached_objects(class);
            let mut bin = RemoteBin { head: whole, count: n, limit: n };
            // SAFETY: `n` free objects of the class, linked, ours.
            unsafe { send_home(&mut bin, class, n as usize) };
            assert_eq!((bin.count, bin.head), (0, ptr::null_mut()));
            assert_eq!(percpu::cached_objects(class), before + n as usize, "the bin did not reach the depot");
            // This CPU's next refill takes a depot list: the newest, ours.
            assert_eq!(percpu::alloc_batch(class, 64), (whole, n as usize));
            // A part of a bin goes to the slabs, not the depot.
            let (part, m) = take(5);
            let mut bin = RemoteBin { head: part, count: m, limit: m };
            // SAFETY: as above.
            unsafe { send_home(&mut bin, class, 3) };
            assert_eq!(bin.count, m - 3);
            assert_eq!(percpu::cached_objects(class), before);
            // SAFETY: what is left of both lists, free objects of the class.
            unsafe {
                let rest = bin.head;
                send_home(&mut bin, class, m as usize - 3);
                assert_eq!(percpu::alloc_batch(class, 64), (rest, m as usize - 3));
                super::super::free_home(rest, m as usize - 3);
                super::super::free_home(whole, n as usize);
            }
        })
        .join()
        .unwrap();
    }

    /// The calling thread's slab calls counted so far, every bin folded.
    fn thread_calls() -> (u64, u64) {
        // SAFETY: this thread's cache.
        unsafe {
            let tc = &mut *current();
            tc.fold_all();
            (tc.tally.allocs, tc.tally.frees)
        }
    }

    proptest::proptest! {
        #![proptest_config(proptest::prelude::ProptestConfig::with_cases(64))]
        /// The calls a thread counts (pops in the bins' words, pushes
        /// told apart from the slow paths' moves) are exactly the
        /// `malloc`s and `free`s it made, for any mix of sizes, runs of
        /// allocations and frees long enough to fill and empty bins and
        /// spares, frees in any order and trims; and every bin's count
        /// stays within its limit. A count that a slow path forgot to
        /// settle would show as frees that never happened, or missing ones.
        #[test]
        fn a_thread_counts_its_calls_exactly(ops in proptest::collection::vec((0u8..4, 0usize..6, 1usize..300), 1..40)) {
            let result = std::thread::spawn(move || {
                let sizes = [16usize, 48, 64, 200, 1024, 3000];
                let before = thread_calls();
                let (mut allocs, mut frees) = (0u64, 0u64);
                let mut held: std::vec::Vec<*mut u8> = std::vec::Vec::new();
                for (op, size, n) in ops {
                    match op {
                        0 | 1 => {
                            for _ in 0..n {
                                let p = crate::heap::malloc(sizes[size]);
                                assert!(!p.is_null());
                                held.push(p);
                            }
                            allocs += n as u64;
                        }
                        2 => {
                            // Oldest first or newest first, by the size pick.
                            let k = n.min(held.len());
                            let gone: std::vec::Vec<*mut u8> = if size % 2 == 0 { held.drain(..k).collect() } else { held.split_off(held.len() - k) };
                            for q in gone {
                                // SAFETY: live blocks from the heap, given up.
                                unsafe { crate::heap::free(q) };
                            }
                            frees += k as u64;
                        }
                        _ => flush_current(),
                    }
                    // SAFETY: this thread's cache.
                    let tc = unsafe { &*current() };
                    // (Before its first call the cache has no bins to look at.)
                    for class in (0..NR_CLASSES).filter(|_| !tc.cold.is_null()) {
                        assert!(tc.count(class) <= tc.limit(class), "class {class}");
                    }
                }
                for q in held.drain(..) {
                    // SAFETY: as above.
                    unsafe { crate::heap::free(q) };
                    frees += 1;
                }
                let after = thread_calls();
                ((after.0 - before.0, after.1 - before.1), (allocs, frees))
            })
            .join()
            .unwrap();
            proptest::prop_assert_eq!(result.0, result.1);
        }

        /// The thread cache's remembered chunks answer as the chunk map
        /// does, for any order of lookups: addresses in several chunks,
        /// past a chunk's end, in the same way as a chunk but
        /// [`CHUNK_WAYS`] chunks away, null and its neighbours (number 0,
        /// which the zeroed cache starts with), the stack, and beyond 47
        /// bits.
        #[test]
        fn remembered_chunk_answers_as_the_chunk_map(picks in proptest::collection::vec(0usize..64, 1..200)) {
            // 16 KiB objects: a few hundred span several 4 MiB chunks.
            let blocks: std::vec::Vec<*mut u8> = (0..600).map(|_| crate::heap::malloc(16 * 1024)).collect();
            let local = 0u64;
            let mut addrs = std::vec![0usize, 8, 4095, 1 << 21, &local as *const u64 as usize, 1 << 47, usize::MAX];
            for (i, &b) in blocks.iter().enumerate().step_by(24) {
                addrs.push(b as usize + i % 7);
                addrs.push((b as usize | (crate::mm::page::CHUNK_SIZE - 1)) + 1);
                addrs.push(b as usize + CHUNK_WAYS * crate::mm::page::CHUNK_SIZE);
                addrs.push((b as usize).wrapping_sub(CHUNK_WAYS * crate::mm::page::CHUNK_SIZE));
            }
            let chunks: std::collections::BTreeSet<usize> = blocks.iter().map(|&b| crate::mm::page::chunk_of(b as usize) as usize).collect();
            proptest::prop_assert!(chunks.len() >= 2, "the blocks should span chunks");
            // SAFETY: all-zero is a valid (inactive) thread cache.
            let mut tc: std::boxed::Box<ThreadCache> = std::boxed::Box::new(unsafe { core::mem::zeroed() });
            for pick in picks {
                let a = addrs[pick % addrs.len()];
                proptest::prop_assert_eq!(tc.chunk_of(a), crate::mm::page::chunk_of(a), "address {:#x}", a);
            }
            for b in blocks {
                // SAFETY: live blocks from the heap, given up.
                unsafe { crate::heap::free(b) };
            }
        }
    }
}
