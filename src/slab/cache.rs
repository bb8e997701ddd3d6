//! `kmem_cache`: the objects of one size, carved from slabs.
//!
//! A slab is one buddy block (see [`ClassInfo::order`]) whose head page
//! descriptor carries the slab's state: `inuse`, the free list of returned
//! objects, and `bump`, the number of objects ever handed out. Objects past
//! `bump` have never been touched, so a new slab costs no page faults until
//! its objects are used. The cache keeps three lists, as the kernel's SLAB
//! did:
//!
//! - `slabs_full`: `inuse == objects`;
//! - `slabs_partial`: `0 < inuse < objects` — allocation takes from here;
//! - `slabs_empty`: `inuse == 0`, up to [`EMPTY_RESERVE_BYTES`] of them
//!   kept in a cache of one-page slabs, one in any other; the rest go
//!   back to the buddy allocator at once, and the reserve too once it
//!   has sat unused for a decay period, or when the buddy allocator
//!   would otherwise grow ([`super::shrink_idle`], a buddy shrinker). A
//!   slab going back has its objects' link and free-mark words cleared
//!   first (`release_slab`).
//!
//! Beside the lists, a cache keeps a *barn* ([`super::barn`]): whole free
//! lists that bins left behind when their CPU's depot was full, handed
//! back whole to the next refills before any slab is looked at.
//!
//! A slab head also knows the last object of its free list (in `span`,
//! see `free_tail`), so a refill joins several slabs' lists end to head
//! without walking them.
//!
//! Invariants (checked by [`KmemCache::check`]): every slab of the cache is
//! on exactly the list its `inuse` says; `inuse == bump - nr_free`;
//! `nr_free` is the length of the slab's free list, whose last object is
//! the one the head records, when it records one; `active_objs` is the sum
//! of `inuse`.
//!
//! Locking: the cache's own mutex covers the lists and every slab head on
//! them. The buddy allocator is called only with that lock released.

use super::barn::Barn;
use super::link;
use super::size_class::ClassInfo;
use crate::mm;
use crate::os;
use crate::mm::page::{self, Page, PageList, PG_SLAB};
use crate::mm::hooks::{self, PageUse};
use crate::os::sync::{Mutex, MutexGuard};
use core::ptr;

/// Bytes of empty one-page slabs a cache keeps for reuse before it gives
/// more back to the buddy allocator; a cache of larger slabs keeps one.
///
/// Caches of one-page slabs (objects of up to 1 KiB or so) keep 2 MiB,
/// 512 slabs: a program that frees a burst of small objects and then
/// allocates the next burst otherwise sends each slab back to the buddy
/// allocator and takes it again, clearing its objects' words on the way
/// out, with the page-table shadow's records of both moves, where a kept
/// slab is taken back as it is. sh8benchN (two threads) made 2.78
/// million slabs in 3.8 s with one kept, and makes 0.95 million in 3.1
/// to 3.3 s with 512 (its bursts of 16-byte objects are about 1 700
/// slabs: with 32 MiB it made 51 000 in 2.9 s, for 5 to 9 % more peak
/// RSS; two runs each). Caches of larger slabs keep one: with 2 MiB for
/// every cache, rptestN's peak RSS went from 11.8 to 23.2 MiB in one run
/// (its sizes spread over many classes of few objects per slab) and
/// mstressN's from 16.1 to 19.3 MiB. Kept slabs still go back after a
/// decay period unused, at `malloc_trim`, and before the buddy allocator
/// maps a new chunk (`mm::reclaim::shrink_before_growth`), so another
/// size class or a page run gets their pages before the heap grows.
///
/// The secure build keeps as many, and shuffles a kept slab's slots
/// again each time it is taken back into use (`KmemCache::shuffle_slots`):
/// xmalloc-testN's `rtime` went from 3.5 to 3.8 s with one kept to 3.1
/// to 3.3 s (four interleaved runs each). Kept as they were, without
/// the second shuffle, all of a cache's empty slabs made sh8benchN take
/// 12 to 13.5 s where one took 10 s: their slots came back in the order
/// the program freed them, cold, where a fresh slab's had just been
/// written. The default build links a kept slab's slots again too, front
/// to back (`KmemCache::relink_slots`): sh8benchN took 2.84 to 3.24 s
/// with that and 3.50 to 4.13 s without (five interleaved runs each).
pub const EMPTY_RESERVE_BYTES: usize = 2 << 20;

/// Empty slabs a cache of one-page slabs keeps.
const ONE_PAGE_RESERVE: usize = EMPTY_RESERVE_BYTES >> os::PAGE_SHIFT;
const _: () = assert!(ONE_PAGE_RESERVE >= 1);

/// One slab cache.
pub struct KmemCache {
    /// Index stored in each slab's head descriptor, to find the cache from
    /// an object.
    pub index: u8,
    /// Node ([`super::home_caches`]) the cache belongs to, stored in each
    /// slab's head descriptor with the index.
    pub node: u8,
    /// Object size and slab geometry.
    pub info: ClassInfo,
    slabs_full: PageList,
    slabs_partial: PageList,
    pub(super) slabs_empty: PageList,
    /// Objects handed out and not returned.
    pub active_objs: usize,
    /// Slabs the cache holds.
    pub nr_slabs: usize,
    /// Objects handed out, ever.
    pub allocs: u64,
    /// Objects returned, ever.
    pub frees: u64,
    /// Coarse time (`buddy::clock_ms`) `slabs_empty` last became non-empty.
    pub(super) empty_since: u32,
    /// Whole lists of free objects kept for the node's refills (see
    /// [`super::barn`]): their objects count in `active_objs`, as those
    /// in bins and depots do.
    pub(super) barn: Barn,
}

/// Objects taken from one slab by [`KmemCache::take_locked`], in two
/// words: a refill keeps up to [`MAX_PIECES`] of them on its stack (see
/// there). Either a free list already linked through first words (`head`
/// its first object, `word` its last, or its length shifted left with bit
/// 0 set when the last is not known: walk to it), or never-used objects,
/// not yet linked (`head` the first one's address with bit 0 set, `word`
/// how many). Objects are at least 16-byte aligned, so bit 0 is free.
#[derive(Clone, Copy)]
struct Taken {
    head: usize,
    word: usize,
}

impl Taken {
    /// A free list of `n` objects from `head` to `tail` (null: not known).
    fn list(head: *mut u8, tail: *mut u8, n: usize) -> Taken {
        let word = if tail.is_null() { n << 1 | 1 } else { tail as usize };
        Taken { head: head as usize, word }
    }

    /// `n` never-used objects from `first` on.
    fn run(first: usize, n: usize) -> Taken {
        Taken { head: first | 1, word: n }
    }

    /// Whether these are never-used objects ([`Taken::run`]).
    fn is_run(&self) -> bool {
        self.head & 1 != 0
    }
}

/// Bytes of never-used objects one refill of a bin takes at most (at
/// least one object): linking them writes each one's first word, so for
/// a class of page-sized objects every object taken is a page the
/// process touches, and a bin's first refill (3 to 5 objects) touched
/// 3 to 5 pages for a program that wanted one 4 KiB block. Objects freed
/// before (a slab's free list) come whole: their pages are touched
/// already.
const FRESH_BYTES: usize = os::PAGE_SIZE;

/// Never-used objects of `size` bytes one refill takes at most.
#[inline]
fn fresh_objects(size: usize) -> usize {
    (FRESH_BYTES / size).max(1)
}

/// Figures of one cache, as `/proc/slabinfo` shows them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CacheStats {
    /// Object size.
    pub objsize: usize,
    /// Objects in use.
    pub active_objs: usize,
    /// Objects in all slabs.
    pub num_objs: usize,
    /// Objects per slab.
    pub objperslab: usize,
    /// Pages per slab.
    pub pagesperslab: usize,
    /// Slabs with at least one object in use.
    pub active_slabs: usize,
    /// All slabs.
    pub num_slabs: usize,
    /// Slabs with some but not all objects in use (`slabs_partial`).
    pub partial_slabs: usize,
}

impl KmemCache {
    /// The same cache, on `node`.
    pub const fn on_node(mut self, node: u8) -> Self {
        self.node = node;
        self
    }

    /// An empty cache for objects of `info.size`.
    pub const fn new(index: u8, info: ClassInfo) -> Self {
        KmemCache {
            index,
            node: 0,
            info,
            slabs_full: PageList::new(),
            slabs_partial: PageList::new(),
            slabs_empty: PageList::new(),
            active_objs: 0,
            nr_slabs: 0,
            allocs: 0,
            frees: 0,
            empty_since: 0,
            barn: Barn::new(),
        }
    }

    /// The slab allocation takes from: the first partial slab, else a
    /// reserved empty one (moved to `slabs_partial`); null when the cache
    /// needs a new slab.
    #[inline]
    fn slab_to_take_from(&mut self) -> *mut Page {
        let mut slab = self.slabs_partial.first();
        if slab.is_null() {
            // SAFETY: slabs on our lists are live.
            slab = unsafe { self.slabs_empty.pop_front() };
            if !slab.is_null() {
                // SAFETY: just unlinked; none of its slots is handed out.
                unsafe {
                    #[cfg(feature = "secure")]
                    self.shuffle_slots(slab);
                    #[cfg(not(feature = "secure"))]
                    self.relink_slots(slab);
                    self.slabs_partial.push_front(slab);
                }
            }
        }
        slab
    }

    /// Books `n` objects just taken from `slab` (whose `inuse` already
    /// counts them): a slab that became full moves to `slabs_full`.
    ///
    /// # Safety
    /// `slab` is on `slabs_partial`.
    #[inline]
    unsafe fn took(&mut self, slab: *mut Page, n: usize) {
        // SAFETY: per the caller, a live slab of ours on slabs_partial.
        unsafe {
            if (*slab).inuse == self.info.objects {
                self.slabs_partial.remove(slab);
                self.slabs_full.push_front(slab);
            }
        }
        self.active_objs += n;
        self.allocs += n as u64;
    }

    /// Takes an object from a partial or reserved empty slab; `None` when
    /// the cache needs a new slab.
    #[inline]
    #[link_section = ".text.hot.buddyslab"]
    fn alloc_locked(&mut self) -> Option<*mut u8> {
        let slab = self.slab_to_take_from();
        if slab.is_null() {
            return None;
        }
        // SAFETY: `slab` heads a live slab of this cache on slabs_partial,
        // covered by our lock.
        unsafe {
            let s = &mut *slab;
            let object = if !s.freelist.is_null() {
                let object = s.freelist;
                s.freelist = link::next(object, self.index as usize);
                s.nr_free -= 1;
                object
            } else {
                debug_assert!(s.bump < self.info.objects);
                let object = (page::page_address(slab) + s.bump as usize * self.info.size as usize) as *mut u8;
                s.bump += 1;
                object
            };
            s.inuse += 1;
            self.took(slab, 1);
            Some(object)
        }
    }

    /// Takes many objects from one slab in O(1), for a thread's bin: the
    /// slab's whole free list (spliced, not walked: bins are linked through
    /// the same first word), or else a run of up to `max` and
    /// `max_fresh` never-used objects (possibly none), which the caller
    /// links after dropping the lock. `None` when the cache needs a new
    /// slab.
    #[link_section = ".text.hot.buddyslab"]
    fn take_locked(&mut self, max: usize, max_fresh: usize) -> Option<(Taken, usize)> {
        let slab = self.slab_to_take_from();
        if slab.is_null() {
            return None;
        }
        // SAFETY: `slab` heads a live slab of this cache on slabs_partial,
        // covered by our lock.
        unsafe {
            let s = &mut *slab;
            let (taken, n) = if !s.freelist.is_null() {
                let n = s.nr_free as usize;
                let t = Taken::list(s.freelist, free_tail(slab), n);
                s.freelist = ptr::null_mut();
                s.nr_free = 0;
                (t, n)
            } else {
                let n = max.min(max_fresh).min((self.info.objects - s.bump) as usize);
                let first = page::page_address(slab) + s.bump as usize * self.info.size as usize;
                s.bump += n as u16;
                (Taken::run(first, n), n)
            };
            s.inuse += n as u16;
            self.took(slab, n);
            Some((taken, n))
        }
    }

    /// Makes `head` (a fresh block of `info.order` pages) a slab of this
    /// cache and puts it on `slabs_partial` (where the next allocation
    /// takes from it).
    ///
    /// # Safety
    /// `head` was just allocated from the buddy with this cache's order.
    #[link_section = ".text.hot.buddyslab"]
    unsafe fn add_slab(&mut self, head: *mut Page) {
        // SAFETY: the block is ours; we are its only user.
        unsafe {
            let user_class = if (self.index as usize) < super::size_class::NR_CLASSES { self.index + 1 } else { 0 };
            mm::mark_run(head, 1 << self.info.order, PG_SLAB, user_class);
            // Every page says its node, for the free fast path.
            for i in 0..1usize << self.info.order {
                (*head.add(i)).node = self.node;
            }
            let tag = if user_class != 0 { (*head).class_and_node() as u16 } else { 0 };
            page::set_tags(head, 1 << self.info.order, tag);
            let to = if user_class != 0 { PageUse::Slab } else { PageUse::Meta };
            hooks::handed_out(page::page_address(head), os::PAGE_SIZE << self.info.order, to);
            let s = &mut *head;
            s.class = self.index;
            s.order = self.info.order;
            s.inuse = 0;
            s.bump = 0;
            s.nr_free = 0;
            s.freelist = ptr::null_mut();
            s.span = 0;
            #[cfg(feature = "secure")]
            self.shuffle_slots(head);
            self.slabs_partial.push_front(head);
        }
        self.nr_slabs += 1;
    }

    /// The secure build hands a slab's slots out in random order: all of
    /// them on the free list at once, as if all were freed, its last slot
    /// known (a refill that joins the list behind another piece walked
    /// it, a dependent load and a link check per slot: sh8bench, whose
    /// slabs come and go, took 9.6 to 10.3 s with the walk and 9.2 to 9.6
    /// s without, three runs each). A fresh slab is shuffled when it is
    /// made, a kept empty one each time it is taken back into use: its
    /// free list is otherwise the order the program freed its slots in,
    /// which the program chose, and cold, a dependent miss per object
    /// handed out, where the relinking writes the slab front to back.
    ///
    /// # Safety
    /// `head` heads a slab of this cache none of whose slots is handed
    /// out, on no list.
    #[cfg(feature = "secure")]
    unsafe fn shuffle_slots(&self, head: *mut Page) {
        let objects = self.info.objects as usize;
        // SAFETY: per the caller, every slot is ours to relink.
        unsafe {
            let (list, tail) =
                super::shuffle::link_fresh_slots(page::page_address(head), objects, self.info.size as usize);
            let s = &mut *head;
            s.freelist = list;
            set_free_tail(head, tail);
            s.bump = objects as u16;
            s.nr_free = objects as u16;
        }
    }

    /// Links a kept empty slab's slots into its free list again, front
    /// to back, when it is taken back into use (the default build; the
    /// secure build shuffles them, `shuffle_slots`). Its free list
    /// is otherwise the order the program freed its slots in, cold: each
    /// object a bin hands out then waits on the load of its link, a miss
    /// to memory where the program's frees were scattered. Relinked, the
    /// writes run through the slab in address order, which the hardware
    /// prefetches, and the bin's pops read lines just written, as a fresh
    /// slab's do. Every slot below `bump` is free (the slab is empty), so
    /// each keeps its free mark and the slab its counts.
    ///
    /// # Safety
    /// `head` heads a slab of this cache none of whose slots is handed
    /// out, on no list.
    #[cfg(not(feature = "secure"))]
    unsafe fn relink_slots(&self, head: *mut Page) {
        // SAFETY: per the caller, every slot below `bump` is ours to relink.
        unsafe {
            let s = &mut *head;
            let n = s.bump as usize;
            debug_assert_eq!(n, s.nr_free as usize);
            if n == 0 {
                return;
            }
            let (base, size) = (page::page_address(head), self.info.size as usize);
            let mark = link::FREE_MARK.load(core::sync::atomic::Ordering::Relaxed);
            s.freelist = link_slots(base, n, size, mark, ptr::null_mut());
            set_free_tail(head, (base + (n - 1) * size) as *mut u8);
        }
    }

    /// Returns `object` to `slab`. Returns a slab to give back to the
    /// buddy allocator, or null. Aborts on an object that is not a live
    /// object of this slab.
    ///
    /// # Safety
    /// `slab` heads a slab of this cache; `object` starts a slot of it.
    #[inline]
    unsafe fn free_locked(&mut self, slab: *mut Page, object: *mut u8) -> *mut Page {
        self.check_handed_out(slab, object);
        // SAFETY: per the caller; a run of one object.
        unsafe { self.free_run_locked(slab, object, object, 1) }
    }

    /// Aborts unless `object`, which starts a slot of `slab`, lies below
    /// the slab's bump: a slot never handed out cannot be freed. Slabs are
    /// naturally aligned, so the mask gives the offset. Every caller has
    /// checked that `object` starts a slot (`free`'s fast path, `owner_of`,
    /// or the cache's own metadata objects).
    #[inline(always)]
    fn check_handed_out(&self, slab: *mut Page, object: *mut u8) {
        let offset = object as usize & self.info.slab_mask as usize;
        if offset >= self.handed_out_bytes(slab) {
            invalid_free(b"free(): invalid pointer (slot never handed out): ", object);
        }
    }

    /// Bytes from the start of `slab` that its handed-out slots cover.
    #[inline(always)]
    fn handed_out_bytes(&self, slab: *mut Page) -> usize {
        // SAFETY: the slab is ours, under our lock.
        (unsafe { (*slab).bump }) as usize * self.info.size as usize
    }

    /// Returns a run of `n` objects of `slab`, already linked from `first`
    /// to `last` through their first words, in one splice: the slab's
    /// counts and lists change once per run, not once per object. Returns
    /// a slab to give back to the buddy allocator, or null.
    ///
    /// # Safety
    /// `slab` heads a slab of this cache; the run's objects are distinct
    /// handed-out objects of it ([`Self::check_handed_out`]), given up.
    #[inline(always)]
    unsafe fn free_run_locked(&mut self, slab: *mut Page, first: *mut u8, last: *mut u8, n: usize) -> *mut Page {
        // SAFETY: the slab is ours, under our lock.
        let s = unsafe { &mut *slab };
        if (s.inuse as usize) < n {
            invalid_free(b"free(): double free detected: ", first);
        }
        let was_full = s.inuse == self.info.objects;
        // SAFETY: the objects lie inside the slab and are ours to link.
        unsafe { link::set_next(last, s.freelist) };
        if s.freelist.is_null() {
            // SAFETY: `last` lies in the slab and now ends its free list.
            unsafe { set_free_tail(slab, last) };
        }
        s.freelist = first;
        s.nr_free += n as u16;
        s.inuse -= n as u16;
        self.active_objs -= n;
        self.frees += n as u64;
        // SAFETY: list moves of a slab that is on the list its old state says.
        unsafe {
            if was_full {
                self.slabs_full.remove(slab);
                self.slabs_partial.push_front(slab);
            }
            if s.inuse == 0 {
                self.slabs_partial.remove(slab);
                if self.slabs_empty.len() < self.empty_reserve() {
                    if self.slabs_empty.is_empty() {
                        self.empty_since = mm::clock_ms();
                    }
                    self.slabs_empty.push_front(slab);
                } else {
                    self.nr_slabs -= 1;
                    return slab;
                }
            }
        }
        ptr::null_mut()
    }

    /// Empty slabs the cache keeps ([`EMPTY_RESERVE_BYTES`] of one-page
    /// slabs, else one).
    #[inline]
    fn empty_reserve(&self) -> usize {
        if self.info.order != 0 {
            return 1;
        }
        ONE_PAGE_RESERVE
    }

    /// Unlinks up to `out.len()` reserved empty slabs into `out`, so the
    /// caller can free them after dropping the lock. Returns how many.
    fn take_empty(&mut self, out: &mut [*mut Page; 8]) -> usize {
        let mut n = 0;
        while n < out.len() {
            // SAFETY: slabs on our lists are live.
            let slab = unsafe { self.slabs_empty.pop_front() };
            if slab.is_null() {
                break;
            }
            self.nr_slabs -= 1;
            out[n] = slab;
            n += 1;
        }
        n
    }

    /// The cache's figures.
    pub fn stats(&self) -> CacheStats {
        let objects = self.info.objects as usize;
        CacheStats {
            objsize: self.info.size as usize,
            active_objs: self.active_objs,
            num_objs: self.nr_slabs * objects,
            objperslab: objects,
            pagesperslab: 1 << self.info.order,
            active_slabs: self.slabs_full.len() + self.slabs_partial.len(),
            num_slabs: self.nr_slabs,
            partial_slabs: self.slabs_partial.len(),
        }
    }

    /// Checks the invariants in the module comment; panics on a breach.
    pub fn check(&self) {
        let objects = self.info.objects;
        let mut active = 0usize;
        let mut slabs = 0usize;
        let lists: [(&PageList, &str); 3] =
            [(&self.slabs_full, "full"), (&self.slabs_partial, "partial"), (&self.slabs_empty, "empty")];
        for (list, name) in lists {
            // SAFETY: slabs on our lists are live.
            unsafe {
                list.for_each(|p| {
                    let s = &*p;
                    assert_eq!(s.kind(), PG_SLAB, "{name} list holds a non-slab page");
                    assert_eq!(s.class, self.index, "slab of another cache on {name}");
                    match name {
                        "full" => assert_eq!(s.inuse, objects, "slab on full list not full"),
                        "partial" => assert!(s.inuse > 0 && s.inuse < objects, "slab on partial list with inuse {}", s.inuse),
                        _ => assert_eq!(s.inuse, 0, "slab on empty list in use"),
                    }
                    let mut n = 0u16;
                    let mut f = s.freelist;
                    let mut last = ptr::null_mut();
                    while !f.is_null() {
                        n += 1;
                        last = f;
                        f = link::next(f, self.index as usize);
                    }
                    assert_eq!(n, s.nr_free, "free list length");
                    if !last.is_null() {
                        let tail = free_tail(p);
                        assert!(tail.is_null() || tail == last, "free list tail {tail:p} is not its last object {last:p}");
                    }
                    assert_eq!(s.inuse, s.bump - s.nr_free, "inuse != bump - nr_free");
                    let user_class = if (self.index as usize) < super::size_class::NR_CLASSES { self.index as u16 + 1 } else { 0 };
                    let tag = if user_class != 0 { user_class | (s.node as u16) << 8 } else { 0 };
                    for i in 0..1usize << self.info.order {
                        assert_eq!(page::tag(p.add(i)), tag, "page {i} of a {name} slab: fast-path tag");
                        assert_eq!((*p.add(i)).class_and_node() as u16 & 0xff, user_class, "page {i} of a {name} slab: user_class");
                    }
                    active += s.inuse as usize;
                });
            }
            slabs += list.len();
        }
        assert_eq!(active, self.active_objs, "active object count drifted");
        assert_eq!(slabs, self.nr_slabs, "slab count drifted");
    }
}

/// Allocates one object from `cache`; null when memory is exhausted.
pub fn alloc(cache: &Mutex<KmemCache>) -> *mut u8 {
    let mut c = cache.lock();
    if let Some(object) = c.alloc_locked() {
        return object;
    }
    let order = c.info.order as usize;
    drop(c);
    alloc_refill(cache, order)
}

#[cold]
#[inline(never)]
#[link_section = ".text.hot.buddyslab"]
fn alloc_refill(cache: &Mutex<KmemCache>, order: usize) -> *mut u8 {
    let Some((head, _zero)) = mm::alloc_pages(order) else { return ptr::null_mut() };
    let mut c = cache.lock();
    // SAFETY: a fresh block of this cache's order.
    unsafe { c.add_slab(head) };
    // Cannot fail: the slab just added has free objects.
    c.alloc_locked().unwrap_or(ptr::null_mut())
}

/// Takes objects from `cache` for a thread's bin, linked through their
/// first word into a null-terminated list: slab by slab, each slab's
/// whole free list (however long; bins allow it) or never-used objects,
/// until at least `max` (≥ 1) are taken, new slabs included, under one
/// lock acquisition per new slab. So a class of few objects per slab
/// (one 4 KiB object per page) still refills a bin in one call. Returns
/// the list head and its length; `(null, 0)` when memory is exhausted
/// before anything was taken.
///
/// Under the lock only slab descriptors are touched: the pieces taken are
/// ours once off their slabs, so the never-used objects are linked, and
/// the pieces joined, after it is dropped. Linking writes a line per
/// object, most of them cold; done under the lock, those stores made the
/// lock's release wait for them and the other threads of the node wait
/// for the release (sh8bench: a quarter of the refill's samples on the
/// unlock).
#[cfg_attr(not(test), allow(dead_code))] // the unit tests use it; bins refill by `alloc_for_bin`
pub fn alloc_bulk(cache: &Mutex<KmemCache>, max: usize) -> (*mut u8, usize) {
    bulk_off_slabs(cache, cache.lock(), max, usize::MAX)
}

/// A bin's refill past its CPU's depot: the newest list the barn of
/// `cache` keeps, whole, else [`alloc_bulk`]'s objects off its slabs,
/// under one lock acquisition for both, with no more never-used objects
/// than [`fresh_objects`] allows.
pub fn alloc_for_bin(cache: &Mutex<KmemCache>, max: usize) -> (*mut u8, usize) {
    let mut c = cache.lock();
    if let Some(list) = c.barn.take(mm::clock_ms()) {
        return list;
    }
    let max_fresh = fresh_objects(c.info.size as usize);
    bulk_off_slabs(cache, c, max, max_fresh)
}

/// [`alloc_bulk`] with `c`, the guard of `cache`'s lock, already held,
/// and at most `max_fresh` (at least one) of the objects never used
/// before.
fn bulk_off_slabs<'a>(
    cache: &'a Mutex<KmemCache>,
    mut c: MutexGuard<'a, KmemCache>,
    max: usize,
    max_fresh: usize,
) -> (*mut u8, usize) {
    debug_assert!(max_fresh >= 1);
    let mut pieces = [Taken::run(0, 0); MAX_PIECES];
    let mut n_pieces = 0;
    let mut got = 0;
    let size = c.info.size as usize;
    let class = c.index as usize;
    let mut fresh_left = max_fresh;
    while got < max && n_pieces < MAX_PIECES {
        let (taken, n) = match c.take_locked(max - got, fresh_left) {
            Some(t) => t,
            None if fresh_left == 0 => break, // no slab made for nothing
            None => {
                let order = c.info.order as usize;
                drop(c);
                let fresh = mm::alloc_pages(order);
                c = cache.lock();
                let Some((slab, _)) = fresh else { break };
                // SAFETY: a fresh block of this cache's order.
                unsafe { c.add_slab(slab) };
                match c.take_locked(max - got, fresh_left) {
                    Some(t) => t,
                    None => break,
                }
            }
        };
        if n == 0 {
            break; // only never-used objects left, and no room for them
        }
        if taken.is_run() {
            fresh_left -= n;
        }
        got += n;
        pieces[n_pieces] = taken;
        n_pieces += 1;
    }
    drop(c);
    // SAFETY: every piece was taken off its slab: its objects are ours.
    let head = unsafe { join_pieces(&pieces[..n_pieces], class, size) };
    (head, got)
}

/// Keeps `list`, `count` free objects of `cache`'s class linked through
/// their first word (a whole bin that found its CPU's depot full), in the
/// cache's barn ([`super::barn`]), giving the barn its page first if it
/// has none; false when the barn has no room or no page can be had: the
/// caller then sends the objects home ([`super::free_home`]).
///
/// # Safety
/// Every object on the list is a free object of `cache`'s class (of any
/// node), given up.
#[link_section = ".text.hot.buddyslab"]
pub unsafe fn stash(cache: &Mutex<KmemCache>, list: *mut u8, count: usize) -> bool {
    let mut c = cache.lock();
    if c.barn.objects() + count > barn_room(c.info.size as usize, c.active_objs) {
        return false; // no page taken for a list the barn cannot keep
    }
    let mut extra = ptr::null_mut();
    if !c.barn.has_page() {
        // The buddy allocator is called with the cache lock released.
        drop(c);
        let Some((head, _)) = mm::alloc_pages(0) else { return false };
        c = cache.lock();
        if c.barn.has_page() {
            extra = head; // another thread gave the barn one meanwhile
        } else {
            // SAFETY: a free page of order 0, the barn's from now on.
            unsafe { c.barn.set_page(head) };
        }
    }
    let max = barn_room(c.info.size as usize, c.active_objs);
    // SAFETY: per the caller.
    let kept = unsafe { c.barn.put(list, count, max, mm::clock_ms()) };
    drop(c);
    if !extra.is_null() {
        // SAFETY: the page taken above, never used.
        unsafe { mm::free_pages(extra, 0) };
    }
    kept
}

/// Objects a barn may hold in a cache of objects of `size` bytes with
/// `active` objects out of its slabs (the barn's own included): none
/// while those are less than [`BARN_MIN_BYTES`](super::barn::BARN_MIN_BYTES),
/// else at most [`BARN_BYTES`](super::barn::BARN_BYTES) and no more
/// than are out elsewhere, in use or in bins and depots. So a class the
/// program holds hundreds of thousands of can park a burst of them
/// (sh8bench's 16-byte objects), and one it holds a few hundred of parks
/// nothing (see `BARN_MIN_BYTES`).
fn barn_room(size: usize, active: usize) -> usize {
    if active * size < super::barn::BARN_MIN_BYTES {
        return 0;
    }
    (super::barn::BARN_BYTES / size).min(active / 2)
}

/// Objects the barn of `cache` keeps.
pub fn stashed(cache: &Mutex<KmemCache>) -> usize {
    cache.lock().barn.objects()
}

/// The barn of `cache`, taken out whole (its lists and its page), when
/// it has sat unused for `idle`'s age at its time (`(now_ms, age_ms)`),
/// or whatever its age (`None`); `None` when it has no page or is not
/// idle. The caller sends the lists home and gives the page back
/// (`slab::drain_barn`).
pub fn take_barn(cache: &Mutex<KmemCache>, idle: Option<(u32, u32)>) -> Option<Barn> {
    let mut c = cache.lock();
    if !c.barn.has_page() || idle.is_some_and(|(now, age)| !c.barn.idle(now, age)) {
        return None;
    }
    Some(c.barn.detach())
}

/// Pieces [`alloc_bulk`] takes under one lock hold at most: a bin's
/// refill needs one or two (a partial slab's free list, fresh objects of
/// a new slab); 1-object slabs need one per object, and larson's refills
/// of fragmented slabs up to 30. The array is most of the refill's stack
/// frame, and a thread's first `malloc` refills: at 32 bytes a piece
/// that `malloc` went 1.4 KiB deep, past the page below glibc's thread
/// descriptor that the static TLS and the stack's top share, which every
/// mleak thread then faulted in.
const MAX_PIECES: usize = 32;

/// Links `pieces` (objects of cache `class` of `size` bytes) into one
/// null-terminated list, each piece in front of the ones before it, so the
/// first (usually a slab's free list) keeps its null end and is not
/// walked. Never-used objects get their link and the free mark, as every
/// free object has them (the hardened link check wants the mark of every
/// link's target).
///
/// # Safety
/// Every piece was taken off its slab by [`KmemCache::take_locked`] and
/// nothing else holds its objects.
unsafe fn join_pieces(pieces: &[Taken], class: usize, size: usize) -> *mut u8 {
    let mark = link::FREE_MARK.load(core::sync::atomic::Ordering::Relaxed);
    let mut head: *mut u8 = ptr::null_mut();
    for &piece in pieces {
        if piece.head & 1 == 0 {
            let list = piece.head as *mut u8;
            if !head.is_null() {
                // SAFETY: the slab's free list, linked through first
                // words, ending at its last object (given, or `n` objects
                // on); ours now.
                unsafe {
                    let last = if piece.word & 1 == 0 {
                        piece.word as *mut u8
                    } else {
                        let mut last = list;
                        for _ in 1..piece.word >> 1 {
                            last = link::next(last, class);
                        }
                        last
                    };
                    link::expect_end(last, class);
                    link::set_next(last, head);
                }
            }
            head = list;
        } else {
            let (first, n) = (piece.head & !1, piece.word);
            // SAFETY: never-used objects of a slab we took them from.
            head = unsafe { link_slots(first, n, size, mark, head) };
        }
    }
    head
}

/// Links the `n` slots of `size` bytes from `first` into a list in
/// address order, each marked free under `mark` (`FREE_MARK`), the last
/// linked to `then`; returns the first (`then` when `n` is 0). The link
/// key is read once. For never-used objects a refill takes
/// ([`join_pieces`]) and for a kept empty slab taken back
/// (`KmemCache::relink_slots`): both write the slots front to back.
///
/// # Safety
/// The slots lie in one slab and are ours to write; none is handed out.
unsafe fn link_slots(first: usize, n: usize, size: usize, mark: usize, then: *mut u8) -> *mut u8 {
    if n == 0 {
        return then;
    }
    let key = link::key();
    for i in 0..n {
        let object = (first + i * size) as *mut u8;
        let next = if i + 1 < n { object.wrapping_add(size) } else { then };
        // SAFETY: per the caller.
        unsafe {
            link::set_next_keyed(object, next, key);
            link::set_marked_free_with(object, mark);
        }
    }
    first as *mut u8
}

/// The last object of the free list of `slab` (non-empty), or null when
/// the slab does not know it (a secure build's fresh slab). A slab head
/// keeps it in `span` (unused by slab heads: only tail pages, page runs
/// and free blocks give it a meaning) as its offset in the slab plus one,
/// 0 for not known: so a refill that joins several slabs' lists links
/// them end to head without walking them. Each step of such a walk is a
/// load of a cold object that the next step waits for: xmalloc-test,
/// whose objects come back from the other CPU, spent 18 % of its samples
/// in the refill and 56 % of those on that walk.
///
/// # Safety
/// `slab` heads a slab whose free list is not empty, under its cache's
/// lock.
#[inline(always)]
unsafe fn free_tail(slab: *mut Page) -> *mut u8 {
    // SAFETY: per the caller.
    let offset = unsafe { (*slab).span } as usize;
    if offset == 0 {
        return ptr::null_mut();
    }
    (page::page_address(slab) + offset - 1) as *mut u8
}

/// Records `object` as the last object of the free list of `slab` (see
/// [`free_tail`]).
///
/// # Safety
/// As [`free_tail`]; `object` lies in the slab and ends its free list.
#[inline(always)]
unsafe fn set_free_tail(slab: *mut Page, object: *mut u8) {
    let offset = object as usize - page::page_address(slab);
    // SAFETY: per the caller; a slab is at most 4 MiB.
    unsafe { (*slab).span = offset as u32 + 1 };
}

/// The head page of the slab holding `object`.
///
/// # Safety
/// `object` lies in a live slab.
#[inline]
pub unsafe fn slab_of(object: *mut u8) -> *mut Page {
    let p = page::page_of(object as usize);
    // SAFETY: per the caller, `p` describes a page of a live slab.
    unsafe {
        if (*p).kind() == page::PG_TAIL {
            p.sub((*p).span as usize)
        } else {
            p
        }
    }
}

/// Returns a list of `count` objects (linked through their first word, as
/// [`alloc_bulk`] makes them) to `cache` under one lock acquisition.
///
/// # Safety
/// Every object on the list is a live object of `cache`, given up.
#[cfg_attr(not(test), allow(dead_code))] // the unit tests use it
pub unsafe fn free_bulk(cache: &Mutex<KmemCache>, list: *mut u8, count: usize) {
    // SAFETY: per the caller; every slab of the list belongs to `cache`.
    unsafe { free_bulk_by(list, count, |_| cache) }
}

/// [`free_bulk`] for objects whose slabs may belong to different caches:
/// `cache_of` names each slab's cache. Runs of objects of one cache are
/// returned under one lock acquisition.
///
/// # Safety
/// As [`free_bulk`]; `cache_of(slab)` is the cache owning `slab`.
pub unsafe fn free_bulk_by<'a>(mut list: *mut u8, count: usize, cache_of: impl Fn(*mut Page) -> &'a Mutex<KmemCache>) {
    let mut release = [ptr::null_mut::<Page>(); 16];
    let mut n_release = 0;
    // Slab order and object size of the cache the slabs in `release` belong to.
    let (mut order, mut size) = (0, 0);
    let mut locked: Option<(&Mutex<KmemCache>, MutexGuard<'_, KmemCache>)> = None;
    let mut remaining = count;
    // The list is cut into runs of objects of one slab (objects freed
    // together were mostly carved from one slab together), and each run is
    // spliced into its slab's free list at once, as SLUB's detached free
    // lists are: the chunk map and the node table are read once per run,
    // and per object only its link and its offset are.
    while remaining > 0 {
        let first = list;
        // SAFETY: per the caller, `first` is a live object of a cache; the
        // first word of each object links the list.
        unsafe {
            let slab = slab_of(first);
            let cache = cache_of(slab);
            let c = match &mut locked {
                Some((held, guard)) if ptr::eq(*held, cache) => guard,
                _ => {
                    locked = None;
                    if n_release > 0 {
                        for &s in &release[..n_release] {
                            release_slab(s, order, size);
                        }
                        n_release = 0;
                    }
                    let guard = cache.lock();
                    order = guard.info.order as usize;
                    size = guard.info.size as usize;
                    &mut locked.insert((cache, guard)).1
                }
            };
            c.check_handed_out(slab, first);
            // The slab's handed-out slots are `base..base + handed`: one
            // compare tells "same slab, handed out" (the run goes on) from
            // anything else, which starts the next run and is checked there.
            let base = first as usize & !(c.info.slab_mask as usize);
            let handed = c.handed_out_bytes(slab);
            let mut last = first;
            let mut n = 1;
            let class = c.index as usize;
            list = if remaining > 1 { link::next_in_run(first, class, base, handed) } else { ptr::null_mut() };
            remaining -= 1;
            while remaining > 0 && (list as usize).wrapping_sub(base) < handed {
                last = list;
                list = if remaining > 1 { link::next_in_run(list, class, base, handed) } else { ptr::null_mut() };
                n += 1;
                remaining -= 1;
            }
            let empty = c.free_run_locked(slab, first, last, n);
            if !empty.is_null() {
                release[n_release] = empty;
                n_release += 1;
                if n_release == release.len() {
                    locked = None;
                    for &s in &release {
                        release_slab(s, order, size);
                    }
                    n_release = 0;
                }
            }
        }
    }
    drop(locked);
    for &s in &release[..n_release] {
        // SAFETY: unlinked empty slabs of the cache `order` and `size`
        // describe, no live object.
        unsafe { release_slab(s, order, size) };
    }
}

/// Gives `slab`, an empty slab of `order` pages with objects of `size`
/// bytes, taken off its cache's lists, back to the buddy allocator, first
/// clearing the two words each of its objects kept while free (the encoded
/// link and the free mark, see [`link`]). The pages may next be handed
/// out as they are (a page run), and what the program did not write there
/// is the program's to read and copy: a free mark left there follows its
/// data into a live block (`realloc` copies a block's whole usable size),
/// whose `free` then stops the process as a double free, and a link gives
/// away the link key. Cost: two word stores per object handed out since
/// the slab was made, on a path that already takes the buddy's locks.
///
/// # Safety
/// `slab` heads a slab of `order` pages with objects of `size` bytes, off
/// every list, and none of its objects is live.
unsafe fn release_slab(slab: *mut Page, order: usize, size: usize) {
    // SAFETY: per the caller the slab and all its objects are ours; the
    // objects below `bump` lie inside it, and every object that was ever
    // free (the only ones holding anything) is among them.
    unsafe {
        let base = page::page_address(slab);
        for i in 0..(*slab).bump as usize {
            link::clear((base + i * size) as *mut u8);
        }
        mm::free_pages(slab, order);
    }
}

/// Returns `object`, which lies in the slab headed by `slab`, to `cache`.
/// Aborts with a message on a pointer that is not a live object.
///
/// # Safety
/// `slab` heads a slab of `cache`.
#[link_section = ".text.hot.buddyslab"]
pub unsafe fn free(cache: &Mutex<KmemCache>, slab: *mut Page, object: *mut u8) {
    let mut c = cache.lock();
    // SAFETY: per the caller.
    let release = unsafe { c.free_locked(slab, object) };
    let (order, size) = (c.info.order as usize, c.info.size as usize);
    drop(c);
    if !release.is_null() {
        // SAFETY: the slab is off every list and has no live object.
        unsafe { release_slab(release, order, size) };
    }
}

/// Gives every reserved empty slab of `cache` back to the buddy allocator.
/// Returns the pages released.
pub fn shrink(cache: &Mutex<KmemCache>) -> usize {
    let mut released = 0;
    loop {
        let mut batch = [ptr::null_mut(); 8];
        let mut c = cache.lock();
        let n = c.take_empty(&mut batch);
        let (order, size) = (c.info.order as usize, c.info.size as usize);
        drop(c);
        for &slab in &batch[..n] {
            // SAFETY: unlinked empty slabs of this cache, no live objects.
            unsafe { release_slab(slab, order, size) };
        }
        released += n << order;
        if n < batch.len() {
            return released;
        }
    }
}

#[cold]
#[inline(never)]
fn invalid_free(msg: &[u8], object: *mut u8) -> ! {
    let mut buf = [0u8; 32];
    os::fatal(&[b"buddyslab: ", msg, crate::os::fmt::fmt_hex(&mut buf, object as usize)])
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::slab::size_class::{geometry, CLASSES};
    use proptest::prelude::*;

    #[test]
    fn objects_are_distinct_aligned_and_reused() {
        let cache = Mutex::new(KmemCache::new(200, geometry(48)));
        let mut objs: Vec<*mut u8> = (0..1000).map(|_| alloc(&cache)).collect();
        objs.sort();
        assert!(objs.windows(2).all(|w| w[1] as usize - w[0] as usize >= 48));
        assert!(objs.iter().all(|&p| p as usize % 16 == 0));
        cache.lock().check();
        let slab = page::page_of(objs[0] as usize);
        for &p in &objs {
            let head = page::page_of(p as usize);
            // SAFETY: every object is from `cache`.
            unsafe { free(&cache, head, p) };
        }
        cache.lock().check();
        assert_eq!(cache.lock().active_objs, 0);
        {
            // Every slab left is an empty one kept: all of them (they are
            // fewer than the reserve).
            let c = cache.lock();
            assert_eq!(c.slabs_empty.len(), c.nr_slabs);
            let used = 1000usize.div_ceil(c.info.objects as usize);
            assert_eq!(c.nr_slabs, used.min(c.empty_reserve()));
            assert!(c.nr_slabs > 1, "a cache of one-page slabs keeps more than one");
        }
        let _ = slab;
        shrink(&cache);
        assert_eq!(cache.lock().nr_slabs, 0);
    }

    /// A slab going back to the buddy allocator leaves neither free marks
    /// nor links in its pages: they may next be handed out uninitialised
    /// (a page run), and a mark copied from there into a live block makes
    /// its `free` look like a double free. For classes with slabs of
    /// orders 0 to 3, a full slab's objects (every one marked, as bins get them) come back,
    /// the empty slab goes back, and the block the buddy then hands out on
    /// this CPU (that slab's, from this CPU's page list, unless the thread
    /// moved or a drain came between) holds no mark.
    #[test]
    fn a_slab_given_back_leaves_no_free_mark_behind() {
        // Set-up draws the process's mark.
        crate::heap::ensure_init();
        let mark = link::FREE_MARK.load(core::sync::atomic::Ordering::Relaxed);
        for size in [16, 48, 700, 3000, 16 * 1024, 32 * 1024] {
            let info = CLASSES[crate::slab::class_of(size)];
            for _ in 0..4 {
                let cache = Mutex::new(KmemCache::new(203, info));
                let (list, n) = alloc_bulk(&cache, info.objects as usize);
                assert_eq!(n, info.objects as usize, "one fresh slab's worth");
                let slab = head_of(list);
                // SAFETY: each object is a free object of its slab, listed
                // once and marked, as bins hand them back.
                unsafe {
                    let mut p = list;
                    while !p.is_null() {
                        assert_eq!(link::mark_slot(p).read(), link::mark_of(p, mark), "a bin's object is marked");
                        p = link::next(p, 203);
                    }
                    free_bulk(&cache, list, n);
                }
                assert_eq!(shrink(&cache), 1 << info.order);
                let (block, _) = mm::alloc_pages(info.order as usize).expect("memory");
                let words = (os::PAGE_SIZE << info.order) / 8;
                let base = page::page_address(block);
                // SAFETY: the block is ours until freed below.
                let held = unsafe { core::slice::from_raw_parts(base as *const usize, words) };
                // A mark is an object's: the word after an object start
                // holding that object's mark.
                let marked = held.iter().enumerate().skip(1).position(|(i, &w)| w == link::mark_of((base + (i - 1) * 8) as *mut u8, mark));
                if let Some(at) = marked {
                    panic!("{size}-byte objects: the block holds a free mark at byte {} (its slab's: {})", (at + 1) * 8, block == slab);
                }
                // SAFETY: allocated above with this order, unused.
                unsafe { mm::free_pages(block, info.order as usize) };
            }
        }
    }

    /// A bin's refill takes at most a page of never-used objects, and one
    /// object of a class of page-sized objects, so a program that asks for
    /// one 4 KiB block touches one page, not a bin's worth; objects freed
    /// before come back whole, as many as the refill asks for. (The secure
    /// build puts a slab's every slot on its free list when it makes it.)
    #[cfg(not(feature = "secure"))]
    #[test]
    fn a_bin_refill_takes_at_most_a_page_of_never_used_objects() {
        crate::heap::ensure_init();
        for (size, fresh) in [(64, 64), (1024, 4), (3000, 1), (4096, 1), (16 * 1024, 1)] {
            let info = CLASSES[crate::slab::class_of(size)];
            assert_eq!(fresh_objects(info.size as usize), fresh, "{size}-byte objects");
            let cache = Mutex::new(KmemCache::new(205, info));
            let (list, n) = alloc_for_bin(&cache, 8);
            assert_eq!(n, fresh.min(8), "{size}-byte objects: a refill of never-used objects");
            assert_eq!(cache.lock().nr_slabs, 1, "{size}-byte objects: one slab");
            cache.lock().check();
            // SAFETY: `n` free objects of `cache`, just taken.
            unsafe { free_bulk(&cache, list, n) };
            cache.lock().check();
            assert_eq!(shrink(&cache), 1 << info.order);
        }
        // Freed objects are not capped: twelve taken from three one-page
        // slabs, given back, come back in one refill.
        let info = CLASSES[crate::slab::class_of(1024)];
        assert_eq!((info.order, info.objects), (0, 4), "four 1 KiB objects to a page");
        let cache = Mutex::new(KmemCache::new(205, info));
        let (list, n) = alloc_bulk(&cache, 12);
        assert_eq!(n, 12);
        // SAFETY: `n` free objects of `cache`, just taken.
        unsafe { free_bulk(&cache, list, n) };
        let (list, n) = alloc_for_bin(&cache, 12);
        assert_eq!(n, 12, "the slabs' free lists, whole");
        assert_eq!(cache.lock().nr_slabs, 3, "no slab made for them");
        // SAFETY: as above.
        unsafe { free_bulk(&cache, list, n) };
        assert_eq!(shrink(&cache), 3);
    }

    /// The secure build shuffles a kept empty slab again when it is taken
    /// back: its slots come out in neither the order they were freed in
    /// nor its reverse, nor the order of the slab's first use, every slot
    /// once, and the cache's lists stay consistent (free list length,
    /// tail, marks).
    #[cfg(feature = "secure")]
    #[test]
    fn a_kept_slab_is_shuffled_again_when_taken_back() {
        let (cache, first, slab) = one_full_slab(204);
        let objects = first.len();
        let mut freed = first.clone();
        freed.sort();
        for &p in &freed {
            // SAFETY: live objects of `cache`, each freed once.
            unsafe { free(&cache, slab, p) };
        }
        {
            let c = cache.lock();
            c.check();
            assert_eq!((c.slabs_empty.len(), c.nr_slabs), (1, 1), "the empty slab is kept");
        }
        let again: Vec<*mut u8> = (0..objects).map(|_| alloc(&cache)).collect();
        cache.lock().check();
        let mut sorted = again.clone();
        sorted.sort();
        assert_eq!(sorted, freed, "the kept slab hands out each of its slots once");
        let reversed: Vec<*mut u8> = freed.iter().rev().copied().collect();
        assert!(again != freed && again != reversed, "slots come back in the order they were freed");
        assert!(again != first, "slots come back in the order of the slab's first use");
        for &p in &again {
            // SAFETY: live objects of `cache`, each freed once.
            unsafe { free(&cache, slab, p) };
        }
        shrink(&cache);
        assert_eq!(cache.lock().nr_slabs, 0);
    }

    /// The default build relinks a kept empty slab front to back when it
    /// is taken back: freed in a scattered order, its slots come out in
    /// address order, every slot once, whether one at a time or as a
    /// bin's refill, and the cache's lists stay consistent (free list
    /// length, tail, marks).
    #[cfg(not(feature = "secure"))]
    #[test]
    fn a_kept_slab_hands_out_its_slots_front_to_back() {
        let (cache, mut sorted, slab) = one_full_slab(205);
        sorted.sort();
        let objects = sorted.len();
        for round in 0..2 {
            // Freed in a scattered order: every 7th slot, from slot 3 on
            // (7 and the slot count share no factor).
            assert_ne!(objects % 7, 0);
            for k in 0..objects {
                // SAFETY: live objects of `cache`, each freed once.
                unsafe { free(&cache, slab, sorted[(3 + 7 * k) % objects]) };
            }
            {
                let c = cache.lock();
                c.check();
                assert_eq!((c.slabs_empty.len(), c.nr_slabs), (1, 1), "the empty slab is kept");
            }
            let again: Vec<*mut u8> = if round == 0 {
                (0..objects).map(|_| alloc(&cache)).collect()
            } else {
                let (list, n) = alloc_bulk(&cache, objects);
                assert_eq!(n, objects);
                let mut got = Vec::new();
                let mut p = list;
                while !p.is_null() {
                    got.push(p);
                    // SAFETY: a list the cache handed out, linked through first words.
                    p = unsafe { link::next(p, 205) };
                }
                got
            };
            cache.lock().check();
            assert_eq!(again, sorted, "round {round}: the kept slab hands its slots out front to back");
        }
        for &p in &sorted {
            // SAFETY: live objects of `cache`, each freed once.
            unsafe { free(&cache, slab, p) };
        }
        shrink(&cache);
        assert_eq!(cache.lock().nr_slabs, 0);
    }

    /// A cache (index `index`) of 48-byte objects in one-page slabs of
    /// many slots, every slot of its one slab handed out: the cache, the
    /// slots in the order they were handed out, and the slab. For the
    /// tests of a kept slab taken back.
    fn one_full_slab(index: u8) -> (Mutex<KmemCache>, Vec<*mut u8>, *mut Page) {
        crate::heap::ensure_init();
        let info = CLASSES[crate::slab::class_of(48)];
        let objects = info.objects as usize;
        assert!(objects >= 32 && info.order == 0, "a one-page slab of many slots");
        let cache = Mutex::new(KmemCache::new(index, info));
        let slots: Vec<*mut u8> = (0..objects).map(|_| alloc(&cache)).collect();
        let slab = head_of(slots[0]);
        assert!(slots.iter().all(|&p| head_of(p) == slab), "one slab's slots");
        (cache, slots, slab)
    }

    fn head_of(object: *mut u8) -> *mut Page {
        // SAFETY: tests only pass live objects.
        unsafe { slab_of(object) }
    }

    proptest! {
        /// Random alloc/free against a model (the set of live objects with a
        /// stamp written into each): stamps survive, objects never overlap,
        /// and list membership always matches the object counts.
        #[test]
        fn model_lists_match_counts(class in 0usize..CLASSES.len(), ops in prop::collection::vec(any::<(bool, usize)>(), 1..600)) {
            let info = CLASSES[class];
            let cache = Mutex::new(KmemCache::new(201, info));
            let mut live: Vec<(*mut u8, u64)> = Vec::new();
            let mut stamp = 1u64;
            for (is_alloc, pick) in ops {
                if is_alloc || live.is_empty() {
                    let p = alloc(&cache);
                    prop_assert!(!p.is_null());
                    // SAFETY: a fresh object of at least 16 bytes.
                    unsafe { p.cast::<u64>().write(stamp); p.add(info.size as usize - 8).cast::<u64>().write(!stamp) };
                    live.push((p, stamp));
                    stamp += 1;
                } else {
                    let (p, s) = live.swap_remove(pick % live.len());
                    // SAFETY: live object written above.
                    unsafe {
                        prop_assert_eq!(p.cast::<u64>().read(), s);
                        prop_assert_eq!(p.add(info.size as usize - 8).cast::<u64>().read(), !s);
                        free(&cache, head_of(p), p);
                    }
                }
                let c = cache.lock();
                c.check();
                prop_assert_eq!(c.active_objs, live.len());
            }
            let mut sorted: Vec<usize> = live.iter().map(|l| l.0 as usize).collect();
            sorted.sort();
            prop_assert!(sorted.windows(2).all(|w| w[1] - w[0] >= info.size as usize));
            for (p, _) in live {
                // SAFETY: live objects of `cache`.
                unsafe { free(&cache, head_of(p), p) };
            }
            shrink(&cache);
            prop_assert_eq!(cache.lock().nr_slabs, 0);
        }

        /// Batches as the thread caches move them: `alloc_bulk` lists are
        /// null-terminated, exactly as long as reported and hold distinct
        /// objects; `free_bulk` of any split of them keeps the lists and
        /// counts consistent, and everything comes back.
        #[test]
        fn model_bulk_lists(class in 0usize..CLASSES.len(), ops in prop::collection::vec(any::<(bool, u8, u64)>(), 1..80)) {
            let info = CLASSES[class];
            let cache = Mutex::new(KmemCache::new(202, info));
            let mut live: Vec<*mut u8> = Vec::new();
            for (is_alloc, amount, shuffle) in ops {
                if is_alloc || live.is_empty() {
                    let (mut list, n) = alloc_bulk(&cache, amount as usize % 40 + 1);
                    prop_assert!(n >= 1);
                    for _ in 0..n {
                        prop_assert!(!list.is_null(), "list shorter than reported");
                        live.push(list);
                        // SAFETY: objects on the list are ours; first word links.
                        list = unsafe { link::next(list, 202) };
                    }
                    prop_assert!(list.is_null(), "list longer than reported");
                } else {
                    let n = (amount as usize % live.len()) + 1;
                    let mut batch: Vec<*mut u8> = live.drain(live.len() - n..).collect();
                    // Shuffled, so runs from one slab alternate with others
                    // (`free_bulk_by` remembers the last object's slab).
                    let mut x = shuffle | 1;
                    for i in (1..batch.len()).rev() {
                        x ^= x << 13;
                        x ^= x >> 7;
                        x ^= x << 17;
                        batch.swap(i, (x % (i as u64 + 1)) as usize);
                    }
                    let mut list: *mut u8 = ptr::null_mut();
                    for p in batch {
                        // SAFETY: a live object of this cache, ours to link.
                        unsafe { link::set_next(p, list) };
                        list = p;
                    }
                    // SAFETY: `n` live objects of `cache`.
                    unsafe { free_bulk(&cache, list, n) };
                }
                let mut sorted = live.clone();
                sorted.sort();
                sorted.dedup();
                prop_assert_eq!(sorted.len(), live.len(), "an object was handed out twice");
                let c = cache.lock();
                c.check();
                prop_assert_eq!(c.active_objs, live.len());
            }
            for p in live {
                // SAFETY: live objects of `cache`.
                unsafe { free(&cache, slab_of(p), p) };
            }
            shrink(&cache);
            prop_assert_eq!(cache.lock().nr_slabs, 0);
        }
    }
}
