//! The software page-table shadow: what buddyslab knows about every 4 KiB
//! page it has mapped, the minor page faults its memory will cost (the
//! prediction) and the faults it did cost (what the kernel reports).
//!
//! A four-level radix table over the 47-bit user address space, with the
//! hardware's geometry and names: the `pgd` (a static root) points to
//! `pud` tables, which point to `pmd` tables, which point to `pte` tables;
//! each table is one 4 KiB page of 512 entries, and a `pte` table covers
//! 2 MiB. Table pages come from the buddy allocator (as the kernel takes
//! page tables from the page allocator) and are never given back. Address
//! bits: `pgd` 47..39, `pud` 38..30, `pmd` 29..21, `pte` 20..12.
//!
//! A `pte` entry holds:
//!
//! | bits | meaning |
//! |------|---------|
//! | [`PTE_PRESENT`] | buddyslab has this page mapped |
//! | [`PTE_HANDED`]  | handed out to a tier (not free in the buddy, not unused) |
//! | [`PTE_PREDICTED`] | handed out since it was mapped or since its last `MADV_DONTNEED`: its fault has been predicted |
//! | 3..=5 ([`PTE_TIER_SHIFT`]) | owner tier ([`Tier`]) while handed out |
//! | [`PTE_RESIDENT`] | the kernel reported it resident since it was mapped or advised away (it has faulted in) |
//! | [`PTE_GIVEN_BACK`] | given back with `MADV_DONTNEED` after it had been resident: its next fault is a refault |
//! | 8..=10 | the tier it was last handed out to (kept after it is given back, to whom its fault is owed) |
//! | [`PTE_HUGE`] | in a 2 MiB extent predicted to fault as one transparent huge page |
//!
//! Two figures per tier, and the reader should keep them apart:
//!
//! - **predicted** (an upper bound): handing out a page whose
//!   [`PTE_PREDICTED`] is clear counts one fault for the receiving tier and
//!   sets the bit, as if the program touched everything it asked for.
//!   `MADV_DONTNEED` clears the bit (the next touch faults again);
//!   returning a page to the buddy keeps it (it stays resident). Exact for
//!   a program that writes every byte it asks for; a program that fills a
//!   quarter of its buffers faults a quarter of that.
//! - **observed**: pages the kernel reports resident (`mincore`) that were
//!   handed out and not yet seen resident: each is one fault that really
//!   happened (a read of a never-written page maps the zero page: one
//!   fault as well; its first write later faults again, which is not
//!   counted). **refaults**: the observed pages that had been resident,
//!   were given back with `MADV_DONTNEED`, and faulted in again: the cost
//!   of giving back too early.
//!
//! How the observation works, and what it costs: `mincore` over the pages
//! handed out and not yet seen resident ("pending"), a run of present pages
//! per call, at most 512 pages (one `pte` table) per call:
//!
//! - when a view is taken ([`counts`]): every `pte` table is scanned;
//! - just before pages leave: a large block forgotten ([`unmap`], before
//!   `munmap` or the mapping cache), free memory about to be given back
//!   ([`releasing`], before `madvise`); otherwise a page touched and
//!   released between two views would never be seen;
//! - when a large block is handed out ([`map_and_hand_out`], and the
//!   growth in [`remapped`]): its pages may come resident from the large
//!   tier's mapping cache; those are marked resident without counting.
//!
//! All of it only once *watched* ([`watch`]): from start-up when the
//! views are asked for at exit (`BUDDYSLAB_STATS`, `BUDDYSLAB_HEAPMAP`),
//! otherwise from the first view taken; before that, nothing is observed
//! and no `mincore` is made, so a process that never reads the views pays
//! nothing but the bit updates it always paid. Never on the per-object
//! fast path. `/proc/self/pagemap` was the other candidate: it says the
//! same (bit 63, present) at 8 bytes per page instead of 1, through a file
//! to open and `pread`, which a sandbox or a `chroot` without `/proc`
//! refuses; `mincore` needs neither.
//!
//! Compare the observed sum with the kernel's `ru_minflt`
//! ([`crate::os::minor_faults`]): the difference is what the process
//! faults outside buddyslab (loader, libc, stack, its own data), plus the
//! blind spots below.
//!
//! Transparent huge pages: the prediction counts 4 KiB faults, except in
//! large blocks grown by `realloc` past 2 MiB, which buddyslab advises
//! with `MADV_HUGEPAGE` when the kernel heeds it (see `large::resize`):
//! there a 2 MiB aligned extent of the growth with no page touched counts
//! one fault ([`hand_out_huge`]), as the kernel maps it in one huge page.
//! That assumes the kernel has a huge page to give; when memory is too
//! fragmented the fault maps 4 KiB and the prediction falls short. With
//! THP in `madvise` mode (the default on the machines this project
//! targets) all other memory faults 4 KiB at a time. With THP `always`,
//! one fault can map any whole 2 MiB aligned extent (every chunk is two of
//! them), so the kernel's count falls by up to 512 times and the
//! prediction becomes an upper bound. The observation counts 4 KiB pages
//! as faults, except in an extent predicted as one huge page
//! ([`PTE_HUGE`]), whose pages found resident in one look count one
//! fault: right when the kernel had a huge page to give, short by up to
//! 511 when it had not (as the prediction is).
//!
//! Updates happen on slow paths only: a chunk or large block is mapped or
//! unmapped, pages go from the buddy to a tier or back, free memory is
//! released. Never per object. Entries and table pointers are atomics: a
//! missing table is installed with a compare-and-swap, and the loser gives
//! its page back; an entry, which has one writer at a time (the page's
//! owner), is updated with a plain load and store (see `replace`). The
//! observation of a view is a second writer: it sets [`PTE_RESIDENT`] with
//! a compare-and-swap and skips an entry that changed under it (seen at
//! the next view); an owner's store racing with it can drop the bit, and
//! the page is then counted once more at the next view. The only lock is
//! [`TABLE_POOL`]'s, a leaf (last in the global lock order), held for a
//! few instructions.
//!
//! Where the shadow is blind: the CPU depots' pages (taken from the buddy
//! by `slab::percpu`, a few per CPU) are not recorded; large-tier pages
//! moved by the mapping cache between two of its extents keep no state
//! (they are seen again when handed out); and before it is watched,
//! pages that faulted in and left are never observed.

use crate::mm;
use crate::os::PAGE_SIZE;
use crate::mm::page;
use crate::os::sync::Mutex;
use core::ptr;
use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// Entry bit: the page is mapped by buddyslab.
pub const PTE_PRESENT: u64 = 1;
/// Entry bit: the page is handed out to a tier.
pub const PTE_HANDED: u64 = 2;
/// Entry bit: handed out since it was mapped or advised away (its fault
/// is predicted).
pub const PTE_PREDICTED: u64 = 4;
/// Shift of the owner tier field (3 bits).
pub const PTE_TIER_SHIFT: u32 = 3;
const PTE_TIER_MASK: u64 = 7 << PTE_TIER_SHIFT;
/// Entry bit: the kernel reported the page resident since it was mapped or
/// advised away.
pub const PTE_RESIDENT: u64 = 1 << 6;
/// Entry bit: given back with `MADV_DONTNEED` after it had been resident.
pub const PTE_GIVEN_BACK: u64 = 1 << 7;
/// Shift of the field holding the tier the page was last handed out to.
const PTE_LAST_SHIFT: u32 = 8;
const PTE_LAST_MASK: u64 = 7 << PTE_LAST_SHIFT;
/// Entry bit: in a 2 MiB extent predicted to fault as one huge page.
pub const PTE_HUGE: u64 = 1 << 11;
/// What a page keeps across hand-outs and give-backs to the buddy.
const PTE_HISTORY: u64 = PTE_PREDICTED | PTE_RESIDENT | PTE_GIVEN_BACK;

/// The entry bits of a page handed out to `tier`.
const fn handed_bits(tier: Tier) -> u64 {
    PTE_PRESENT | PTE_HANDED | PTE_PREDICTED | ((tier as u64) << PTE_TIER_SHIFT) | ((tier as u64) << PTE_LAST_SHIFT)
}

/// Whether an entry is a page whose fault was predicted and not yet seen.
#[inline(always)]
fn pending(entry: u64) -> bool {
    entry & (PTE_PRESENT | PTE_PREDICTED | PTE_RESIDENT) == PTE_PRESENT | PTE_PREDICTED
}

const ENTRIES: usize = 512;
const LEVEL_BITS: u32 = 9;
const PTE_SHIFT: u32 = 12;
const PMD_SHIFT: u32 = PTE_SHIFT + LEVEL_BITS;
const PUD_SHIFT: u32 = PMD_SHIFT + LEVEL_BITS;
const PGD_SHIFT: u32 = PUD_SHIFT + LEVEL_BITS;
/// Bytes one `pte` table covers (2 MiB).
const PTE_TABLE_SPAN: usize = ENTRIES * PAGE_SIZE;

/// Who a handed-out page belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Tier {
    /// Not handed out.
    None = 0,
    /// A slab of a size-class cache.
    Slab = 1,
    /// A page-tier run (exact pages from the buddy).
    Pages = 2,
    /// A large block with its own mapping.
    Large = 3,
    /// Allocator metadata: chunk descriptors, chunk map leaves, VMA nodes.
    Meta = 4,
    /// A page of this table itself.
    PageTable = 5,
}

/// Number of [`Tier`] values.
pub const NR_TIERS: usize = 6;

impl Tier {
    /// Every tier, in field order.
    pub const ALL: [Tier; NR_TIERS] = [Tier::None, Tier::Slab, Tier::Pages, Tier::Large, Tier::Meta, Tier::PageTable];

    /// The name the views print.
    pub fn name(self) -> &'static str {
        match self {
            Tier::None => "none",
            Tier::Slab => "slab",
            Tier::Pages => "pages",
            Tier::Large => "large",
            Tier::Meta => "meta",
            Tier::PageTable => "pagetable",
        }
    }

    fn from_entry(entry: u64) -> Tier {
        Tier::ALL[(((entry & PTE_TIER_MASK) >> PTE_TIER_SHIFT) as usize).min(NR_TIERS - 1)]
    }
}

/// One table page: 512 entries. For `pgd`/`pud`/`pmd` an entry is the
/// address of the next table (0 when absent); for `pte` it is the bits.
#[repr(C, align(4096))]
struct Table {
    entries: [AtomicU64; ENTRIES],
}

const _: () = assert!(core::mem::size_of::<Table>() == PAGE_SIZE);

/// The root: 512 pointers to `pud` tables, in `.bss`.
static PGD: [AtomicPtr<Table>; ENTRIES] = [const { AtomicPtr::new(ptr::null_mut()) }; ENTRIES];

static PREDICTED: [AtomicU64; NR_TIERS] = [const { AtomicU64::new(0) }; NR_TIERS];
static OBSERVED: [AtomicU64; NR_TIERS] = [const { AtomicU64::new(0) }; NR_TIERS];
static REFAULTS: [AtomicU64; NR_TIERS] = [const { AtomicU64::new(0) }; NR_TIERS];
/// Whether residency is observed (see [`watch`]).
static WATCHED: AtomicBool = AtomicBool::new(false);
/// `mincore` calls made by the observation, and pages they covered.
static MINCORE_CALLS: AtomicU64 = AtomicU64::new(0);
static MINCORE_PAGES: AtomicU64 = AtomicU64::new(0);
static HANDED: [AtomicUsize; NR_TIERS] = [const { AtomicUsize::new(0) }; NR_TIERS];
static TABLE_PAGES: AtomicUsize = AtomicUsize::new(0);

/// Pages taken from the buddy at once for tables: 32 pages, enough for
/// 64 MiB of mappings.
const TABLE_BATCH_ORDER: usize = 5;

/// Table pages taken from the buddy and not used yet: `[next, end)`.
pub struct TablePool {
    next: usize,
    end: usize,
}

/// Spare table pages. A leaf lock: nothing else is taken while it is
/// held (the buddy is called with it released).
pub static TABLE_POOL: Mutex<TablePool> = Mutex::new(TablePool { next: 0, end: 0 });

/// A zeroed table page; null when memory is exhausted. Tables are never
/// freed, so they are taken from the buddy a batch at a time, from the
/// lowest free address: kept together, they do not keep chunks all over
/// the zone from becoming wholly free (and so from going back to the OS).
fn new_table() -> *mut Table {
    loop {
        {
            let mut pool = TABLE_POOL.lock();
            if pool.next < pool.end {
                let addr = pool.next;
                pool.next += PAGE_SIZE;
                drop(pool);
                // The batch may be recycled memory: clear the page.
                // SAFETY: a pool page nobody else has.
                unsafe { ptr::write_bytes(addr as *mut u8, 0, PAGE_SIZE) };
                TABLE_PAGES.fetch_add(1, Ordering::Relaxed);
                return addr as *mut Table;
            }
        }
        let Some((head, _)) = mm::alloc_pages_lowest(TABLE_BATCH_ORDER) else { return ptr::null_mut() };
        let start = page::page_address(head);
        let mut pool = TABLE_POOL.lock();
        if pool.next < pool.end {
            // Another thread refilled first: keep its batch, return ours.
            drop(pool);
            // SAFETY: the block is ours and unused.
            unsafe { mm::free_pages(head, TABLE_BATCH_ORDER) };
        } else {
            pool.next = start;
            pool.end = start + (PAGE_SIZE << TABLE_BATCH_ORDER);
        }
    }
}

/// The table a slot points to, installing a new one when `create` is set.
#[link_section = ".text.hot.buddyslab"]
fn next_level(slot: &AtomicPtr<Table>, create: bool) -> *mut Table {
    let t = slot.load(Ordering::Acquire);
    if !t.is_null() || !create {
        return t;
    }
    let fresh = new_table();
    if fresh.is_null() {
        return fresh;
    }
    match slot.compare_exchange(ptr::null_mut(), fresh, Ordering::AcqRel, Ordering::Acquire) {
        Ok(_) => {
            // Counted once it is installed: its own entry may only now exist.
            hand_out(fresh as usize, PAGE_SIZE, Tier::PageTable);
            fresh
        }
        Err(winner) => {
            // Never published: it goes back to the pool, cleared again
            // when it is taken.
            TABLE_PAGES.fetch_sub(1, Ordering::Relaxed);
            let mut pool = TABLE_POOL.lock();
            if pool.next == fresh as usize + PAGE_SIZE {
                pool.next = fresh as usize;
            }
            // Otherwise the page stays unused until the process ends: a
            // race between two threads installing the same table, rare.
            winner
        }
    }
}

/// Views a `pud`/`pmd` table's entries as table pointers.
///
/// # Safety
/// `t` is a live `pud` or `pmd` table.
unsafe fn as_dir<'a>(t: *mut Table) -> &'a [AtomicPtr<Table>; ENTRIES] {
    // SAFETY: AtomicU64 and AtomicPtr have the same size and alignment on
    // 64-bit targets; per the caller the table is live and never freed.
    unsafe { &*(t as *const [AtomicPtr<Table>; ENTRIES]) }
}

/// The `pte` table covering `addr`, or null (absent and not created, or no
/// memory for a table).
fn pte_table(addr: usize, create: bool) -> *mut Table {
    let pgd = (addr >> PGD_SHIFT) & (ENTRIES - 1);
    if addr >> (PGD_SHIFT + LEVEL_BITS) != 0 {
        return ptr::null_mut(); // outside the 47-bit user space
    }
    let pud = next_level(&PGD[pgd], create);
    if pud.is_null() {
        return pud;
    }
    // SAFETY: installed tables live forever.
    let pmd = next_level(unsafe { &as_dir(pud)[(addr >> PUD_SHIFT) & (ENTRIES - 1)] }, create);
    if pmd.is_null() {
        return pmd;
    }
    // SAFETY: as above.
    next_level(unsafe { &as_dir(pmd)[(addr >> PMD_SHIFT) & (ENTRIES - 1)] }, create)
}

/// The entries of the `n` pages from `addr` (page-aligned), which lie in
/// one `pte` table; `None` when the table is absent (and not `create`d).
fn table_entries(addr: usize, n: usize, create: bool) -> Option<&'static [AtomicU64]> {
    debug_assert!(addr % PAGE_SIZE == 0 && n <= ENTRIES);
    let t = pte_table(addr, create);
    if t.is_null() {
        return None;
    }
    let first = (addr >> PTE_SHIFT) & (ENTRIES - 1);
    debug_assert!(first + n <= ENTRIES, "the pages leave their table");
    // SAFETY: installed tables live forever.
    Some(unsafe { &(&(*t).entries)[first..first + n] })
}

/// Calls `f` with the entries of the pages of `[start, start + len)`
/// (page-aligned) one `pte` table at a time, or with `None` where the
/// table is absent (and not `create`d).
fn for_each_table(start: usize, len: usize, create: bool, mut f: impl FnMut(Option<&[AtomicU64]>)) {
    let end = start + len;
    let mut addr = start;
    while addr < end {
        let stop = ((addr / PTE_TABLE_SPAN + 1) * PTE_TABLE_SPAN).min(end);
        f(table_entries(addr, (stop - addr) / PAGE_SIZE, create));
        addr = stop;
    }
}

/// Sets every entry of `entries` to `new(old)`, counting in `tally` the
/// pages the old values had handed out. The pages of one block are handed
/// out to one tier: they are counted with the first page's, and a page is
/// looked at alone only where it differs. One pass with no call and no
/// tier looked up per page: a 64 KiB `malloc`+`free` pair cost 1 720.6
/// instructions with a call per page, 1 649.6 with this in `give_back`
/// and `hand_out_pages`; `malloc(131072)`+`free` pairs of big blocks
/// (`map_and_hand_out` and `unmap`) see the note there.
#[inline(always)]
fn rewrite(entries: &[AtomicU64], tally: &mut Tally, new: impl Fn(u64) -> u64) {
    let first = entries.first().map_or(0, |e| e.load(Ordering::Relaxed));
    let mut same = 0;
    for e in entries {
        let old = e.load(Ordering::Relaxed);
        e.store(new(old), Ordering::Relaxed);
        if (old ^ first) & (PTE_HANDED | PTE_TIER_MASK) == 0 {
            same += 1;
        } else {
            tally.forget(old);
        }
    }
    if first & PTE_HANDED != 0 {
        tally.forget_n(first, same);
    }
}

/// Calls `f` with the entry of every page of `[start, start + len)`
/// (page-aligned), or with `None` for pages whose `pte` table is absent.
fn walk(start: usize, len: usize, create: bool, mut f: impl FnMut(Option<&AtomicU64>)) {
    debug_assert!(start % PAGE_SIZE == 0);
    let end = start + len;
    let mut addr = start;
    while addr < end {
        let table_end = ((addr / PTE_TABLE_SPAN) + 1) * PTE_TABLE_SPAN;
        let stop = table_end.min(end);
        let t = pte_table(addr, create);
        let first = (addr >> PTE_SHIFT) & (ENTRIES - 1);
        let n = (stop - addr) / PAGE_SIZE;
        if t.is_null() {
            (0..n).for_each(|_| f(None));
        } else {
            // SAFETY: installed tables live forever.
            let entries = unsafe { &(&(*t).entries)[first..first + n] };
            entries.iter().for_each(|e| f(Some(e)));
        }
        addr = stop;
    }
}

/// Sets entry `e` to `new` and returns what it held. A plain load and
/// store, not an atomic swap: an entry has one writer at a time (whoever
/// owns the page: the block's owner, the buddy for a free page, and the
/// shadow forgets a large block before the kernel unmaps it, so no later
/// mapping at that address races with it). A locked instruction per page
/// cost 20-odd cycles each, 6,400 times for a 25 MiB block. Readers (the
/// views, the counters' checks) see the old value or the new one.
#[inline(always)]
fn replace(e: &AtomicU64, new: u64) -> u64 {
    let old = e.load(Ordering::Relaxed);
    e.store(new, Ordering::Relaxed);
    old
}

/// Records `[start, start + len)` as freshly mapped: present, untouched,
/// not handed out. Creates the tables the range needs, so later updates of
/// it never allocate.
#[link_section = ".text.hot.buddyslab"]
pub fn map(start: usize, len: usize) {
    let mut tally = Tally::new();
    for_each_table(start, len, true, |entries| {
        if let Some(entries) = entries {
            rewrite(entries, &mut tally, |_| PTE_PRESENT);
        }
    });
    tally.apply();
}

/// Records `[start, start + len)` as unmapped. Called before the kernel
/// unmaps it: when watched, what faulted in is observed first.
pub fn unmap(start: usize, len: usize) {
    if is_watched() {
        observe(start, len);
    }
    forget(start, len);
}

/// Changes to the handed-out page counts ([`HANDED`]) gathered over one
/// walk and applied at its end: one atomic add per tier that changed
/// instead of one or two per page, on counters every thread updates.
struct Tally([usize; NR_TIERS]);

impl Tally {
    fn new() -> Self {
        Tally([0; NR_TIERS])
    }

    /// A page whose entry was `old` is handed out no longer (if it was).
    fn forget(&mut self, old: u64) {
        if old & PTE_HANDED != 0 {
            let t = Tier::from_entry(old) as usize;
            self.0[t] = self.0[t].wrapping_sub(1);
        }
    }

    /// One more page handed out to `tier`.
    fn add(&mut self, tier: Tier) {
        self.add_n(tier, 1);
    }

    /// `n` more pages handed out to `tier`.
    fn add_n(&mut self, tier: Tier, n: usize) {
        let t = tier as usize;
        self.0[t] = self.0[t].wrapping_add(n);
    }

    /// `n` pages whose entries were `old` (handed out) are handed out no
    /// longer.
    fn forget_n(&mut self, old: u64, n: usize) {
        let t = Tier::from_entry(old) as usize;
        self.0[t] = self.0[t].wrapping_sub(n);
    }

    /// Adds the net changes (two's complement, so a fall wraps back).
    fn apply(self) {
        for (counter, &delta) in HANDED.iter().zip(&self.0) {
            if delta != 0 {
                counter.fetch_add(delta, Ordering::Relaxed);
            }
        }
    }
}

/// [`map`] then [`hand_out`] in one walk, for a large block handed out as
/// soon as it is mapped: every page counts one predicted fault. A block
/// `reused` from the large tier's mapping cache may hold resident pages:
/// when watched, those are marked resident and their predictions taken
/// back (one `mincore` per 2 MiB). Returns the faults predicted.
pub fn map_and_hand_out(start: usize, len: usize, tier: Tier, reused: bool) -> usize {
    let mut tally = Tally::new();
    let bits = handed_bits(tier);
    // callgrind, `malloc(131072)`+`free` pairs (big blocks from the
    // mapping cache): see `rewrite`.
    for_each_table(start, len, true, |entries| {
        if let Some(entries) = entries {
            rewrite(entries, &mut tally, |_| bits);
            tally.add_n(tier, entries.len());
        }
    });
    tally.apply();
    if reused && is_watched() {
        mark_resident(start, len, tier);
    }
    let faults = len / PAGE_SIZE;
    PREDICTED[tier as usize].fetch_add(faults as u64, Ordering::Relaxed);
    faults
}

/// Records pages handed out to `tier`; every page not touched since it was
/// mapped or advised away counts one predicted minor fault. Returns the
/// faults predicted by this call.
pub fn hand_out(start: usize, len: usize, tier: Tier) -> usize {
    hand_out_pages(start, len, tier, false)
}

/// [`hand_out`] for a range the kernel backs with transparent huge pages
/// (advised with `MADV_HUGEPAGE`, and the advice heeded): a 2 MiB aligned
/// extent wholly in the range with no page touched yet faults once, as
/// one huge page. Any other untouched page faults alone: the extent around
/// it already has 4 KiB pages, or is not wholly the block's.
#[cfg_attr(not(test), allow(dead_code))] // the unit tests use it
pub fn hand_out_huge(start: usize, len: usize, tier: Tier) -> usize {
    hand_out_pages(start, len, tier, true)
}

#[link_section = ".text.hot.buddyslab"]
fn hand_out_pages(start: usize, len: usize, tier: Tier, huge: bool) -> usize {
    let mut faults = 0;
    let mut tally = Tally::new();
    let bits = handed_bits(tier);
    let end = start + len;
    let mut addr = start;
    // One pte table (one 2 MiB extent) at a time.
    while addr < end {
        let stop = ((addr / PTE_TABLE_SPAN + 1) * PTE_TABLE_SPAN).min(end);
        let mut untouched = 0;
        let n = (stop - addr) / PAGE_SIZE;
        match table_entries(addr, n, false) {
            // One pass over the table's entries with no call, no tier
            // looked up and no branch per page but the rare one for a
            // page still handed out (a 64 KiB `malloc`+`free` pair: see
            // `give_back`).
            Some(entries) => {
                for e in entries {
                    let old = e.load(Ordering::Relaxed);
                    e.store(bits | (old & PTE_HISTORY), Ordering::Relaxed);
                    if old & PTE_HANDED != 0 {
                        tally.forget(old);
                    }
                    untouched += (old & PTE_PREDICTED == 0) as usize;
                }
                tally.add_n(tier, n);
            }
            // Pages whose table could not be made: still faults to predict.
            None => untouched += n,
        }
        if huge && stop - addr == PTE_TABLE_SPAN && untouched == ENTRIES {
            faults += 1;
            walk(addr, stop - addr, false, |e| {
                if let Some(e) = e {
                    e.store(e.load(Ordering::Relaxed) | PTE_HUGE, Ordering::Relaxed);
                }
            });
        } else {
            faults += untouched;
        }
        addr = stop;
    }
    tally.apply();
    PREDICTED[tier as usize].fetch_add(faults as u64, Ordering::Relaxed);
    faults
}

/// Records pages going back to the buddy allocator: no longer handed out,
/// still resident.
#[link_section = ".text.hot.buddyslab"]
pub fn give_back(start: usize, len: usize) {
    let mut tally = Tally::new();
    for_each_table(start, len, false, |entries| {
        if let Some(entries) = entries {
            rewrite(entries, &mut tally, |old| old & !(PTE_HANDED | PTE_TIER_MASK));
        }
    });
    tally.apply();
}

/// Records `madvise(MADV_DONTNEED)` on `[start, start + len)`: the next
/// touch of each page faults again (a refault, if it had been resident).
#[link_section = ".text.hot.buddyslab"]
pub fn advised(start: usize, len: usize) {
    walk(start, len, false, |e| {
        if let Some(e) = e {
            let old = e.load(Ordering::Relaxed);
            let given_back = if old & PTE_RESIDENT != 0 { PTE_GIVEN_BACK } else { 0 };
            e.store((old | given_back) & !(PTE_PREDICTED | PTE_RESIDENT | PTE_HUGE), Ordering::Relaxed);
        }
    });
}

/// Records a large block moved or resized by `mremap`: the pages the old
/// and new ranges share keep their state (the kernel moves page-table
/// entries, not pages); pages past the old length are handed out fresh,
/// in huge pages where they can be with `huge` (the block is advised for
/// them: see [`hand_out_huge`]). Returns the faults predicted for them.
///
/// For a block that moved, the old range may be another mapping's as soon
/// as `mremap` returns: a caller that drops its locks before it calls this
/// races with a thread that maps there (and records it here). The large
/// tier's unlocked move calls [`map`], [`move_kept`] (under the region
/// tree's lock) and [`hand_out_growth`] itself instead.
pub fn remapped(old: usize, old_len: usize, new: usize, new_len: usize, tier: Tier, huge: bool) -> usize {
    if new == old {
        if new_len > old_len {
            map(old + old_len, new_len - old_len);
            return hand_out_grown(old + old_len, new_len - old_len, tier, huge);
        } else if old_len > new_len {
            unmap(old + new_len, old_len - new_len);
        }
        return 0;
    }
    map(new, new_len);
    move_kept(old, old_len, new, new_len);
    hand_out_growth(new, old_len.min(new_len), new_len, tier, huge)
}

/// The records of the pages a large block keeps through a move by
/// `mremap` from `[old, old + old_len)` to `[new, new + new_len)`, whose
/// tables [`map`] made: the first `min(old_len, new_len)` bytes' entries
/// (state, residency, tier) go to the new range, and the old range's are
/// cleared. Allocates nothing and makes no system call, so it can run
/// under the region tree's lock while the tree still holds the block's
/// old range (see `vma::end_move`): a mapping another thread gets there
/// is recorded in the tree before its pages are here, so its entries are
/// never read nor cleared. Nothing is observed (`mincore`, see [`unmap`]):
/// the old range is no longer the block's in the kernel, and what was
/// pending there is pending at the new address.
#[link_section = ".text.hot.buddyslab"]
pub fn move_kept(old: usize, old_len: usize, new: usize, new_len: usize) {
    debug_assert!(new + new_len <= old || old + old_len <= new, "overlapping moves");
    let keep = old_len.min(new_len);
    let mut tally = Tally::new();
    let mut offset = 0;
    // A piece at a time that lies in one table on both sides: two table
    // lookups per piece, not per page (this runs under the tree's lock).
    while offset < keep {
        let (from, to) = (old + offset, new + offset);
        let room = |addr: usize| PTE_TABLE_SPAN - addr % PTE_TABLE_SPAN;
        let step = (keep - offset).min(room(from)).min(room(to));
        let pages = step / PAGE_SIZE;
        if let (Some(src), Some(dst)) = (table_entries(from, pages, false), table_entries(to, pages, false)) {
            for (s, d) in src.iter().zip(dst) {
                let state = s.load(Ordering::Relaxed);
                if state & PTE_PRESENT != 0 {
                    tally.forget(replace(d, state));
                    if state & PTE_HANDED != 0 {
                        tally.add(Tier::from_entry(state));
                    }
                }
            }
        }
        offset += step;
    }
    tally.apply();
    forget(old, old_len);
}

/// Clears the records of `[start, start + len)`, as [`unmap`] does, but
/// observes nothing: for a range the kernel has already let go (see
/// [`move_kept`]). Allocates nothing, makes no system call.
#[link_section = ".text.hot.buddyslab"]
pub fn forget(start: usize, len: usize) {
    let mut tally = Tally::new();
    for_each_table(start, len, false, |entries| {
        if let Some(entries) = entries {
            rewrite(entries, &mut tally, |_| 0);
        }
    });
    tally.apply();
}

/// Hands out the pages of a large block at `new` (`new_len` bytes) past
/// the first `kept` bytes, whose records [`move_kept`] moved there: the
/// growth of a move, or the whole block (`kept` 0) when the move could not
/// take its old records. Returns the faults predicted.
pub fn hand_out_growth(new: usize, kept: usize, new_len: usize, tier: Tier, huge: bool) -> usize {
    if new_len > kept {
        return hand_out_grown(new + kept, new_len - kept, tier, huge);
    }
    0
}

/// [`hand_out_pages`] for the growth of a large block, which may take
/// pages resident from the mapping cache.
fn hand_out_grown(start: usize, len: usize, tier: Tier, huge: bool) -> usize {
    let faults = hand_out_pages(start, len, tier, huge);
    if is_watched() {
        mark_resident(start, len, tier);
    }
    faults
}

/// Starts observing what becomes resident (see the module's text): from
/// start-up when the views will be read at exit, else at the first view.
pub fn watch() {
    WATCHED.store(true, Ordering::Relaxed);
}

#[inline(always)]
fn is_watched() -> bool {
    WATCHED.load(Ordering::Relaxed)
}

/// Called just before `madvise(MADV_DONTNEED)` gives `[start, start +
/// len)` back: when watched, what faulted in there is observed while it
/// still is resident.
#[link_section = ".text.hot.buddyslab"]
pub fn releasing(start: usize, len: usize) {
    if is_watched() {
        observe(start, len);
    }
}

/// What one observation found, added to the counters at its end.
struct Seen {
    observed: [u64; NR_TIERS],
    refaults: [u64; NR_TIERS],
}

impl Seen {
    fn new() -> Self {
        Seen { observed: [0; NR_TIERS], refaults: [0; NR_TIERS] }
    }

    fn apply(self) {
        for t in 0..NR_TIERS {
            if self.observed[t] != 0 {
                OBSERVED[t].fetch_add(self.observed[t], Ordering::Relaxed);
            }
            if self.refaults[t] != 0 {
                REFAULTS[t].fetch_add(self.refaults[t], Ordering::Relaxed);
            }
        }
    }
}

/// Observes the pages of `[start, start + len)` (page-aligned).
#[link_section = ".text.hot.buddyslab"]
fn observe(start: usize, len: usize) {
    let mut seen = Seen::new();
    observe_into(start, len, &mut seen);
    seen.apply();
}

/// [`observe`], gathering what it finds in `seen`.
fn observe_into(start: usize, len: usize, seen: &mut Seen) {
    let end = start + len;
    let mut addr = start;
    while addr < end {
        let stop = ((addr / PTE_TABLE_SPAN + 1) * PTE_TABLE_SPAN).min(end);
        let t = pte_table(addr, false);
        if !t.is_null() {
            let first = (addr >> PTE_SHIFT) & (ENTRIES - 1);
            // SAFETY: installed tables live forever.
            let entries = unsafe { &(&(*t).entries)[first..first + (stop - addr) / PAGE_SIZE] };
            observe_entries(entries, addr, seen);
        }
        addr = stop;
    }
}

/// Asks the kernel which pending pages (fault predicted, not yet seen
/// resident) among `entries` (at most one table's, the first at `addr`)
/// are resident now, and marks those [`PTE_RESIDENT`]: one `mincore` per
/// run of present pages from a pending one to the last pending one before
/// a page buddyslab does not map (where `mincore` would fail).
#[link_section = ".text.hot.buddyslab"]
fn observe_entries(entries: &[AtomicU64], addr: usize, seen: &mut Seen) {
    let mut vec = [0u8; ENTRIES];
    // Pages of a huge-page extent seen now, by tier: one fault for all.
    let mut huge = [(0u64, 0u64); NR_TIERS];
    let n = entries.len();
    let mut i = 0;
    while i < n {
        if !pending(entries[i].load(Ordering::Relaxed)) {
            i += 1;
            continue;
        }
        let (mut last, mut j) = (i, i + 1);
        while j < n {
            let e = entries[j].load(Ordering::Relaxed);
            if e & PTE_PRESENT == 0 {
                break;
            }
            if pending(e) {
                last = j;
            }
            j += 1;
        }
        let pages = last + 1 - i;
        MINCORE_CALLS.fetch_add(1, Ordering::Relaxed);
        MINCORE_PAGES.fetch_add(pages as u64, Ordering::Relaxed);
        if crate::os::mincore(addr + i * PAGE_SIZE, &mut vec[..pages]) {
            for (e, _) in entries[i..=last].iter().zip(&vec[..pages]).filter(|(_, &v)| v & 1 != 0) {
                let old = e.load(Ordering::Relaxed);
                if !pending(old) {
                    continue;
                }
                // A second writer beside the page's owner: an entry that
                // changed under us is left for the next observation.
                let new = (old | PTE_RESIDENT) & !PTE_GIVEN_BACK;
                if e.compare_exchange(old, new, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
                    let tier = ((old & PTE_LAST_MASK) >> PTE_LAST_SHIFT) as usize % NR_TIERS;
                    let refault = (old & PTE_GIVEN_BACK != 0) as u64;
                    if old & PTE_HUGE != 0 {
                        huge[tier].0 += 1;
                        huge[tier].1 += refault;
                    } else {
                        seen.observed[tier] += 1;
                        seen.refaults[tier] += refault;
                    }
                }
            }
        }
        i = j;
    }
    for (t, (pages, refaults)) in huge.into_iter().enumerate() {
        seen.observed[t] += pages.div_ceil(ENTRIES as u64);
        seen.refaults[t] += refaults.div_ceil(ENTRIES as u64);
    }
}

/// Marks the pages of `[start, start + len)`, just handed out to `tier`
/// (each predicted to fault), that the kernel has resident as
/// [`PTE_RESIDENT`] without counting them: pages a large block got
/// resident from the mapping cache, which cost no fault now. Their
/// predictions are taken back.
#[link_section = ".text.hot.buddyslab"]
fn mark_resident(start: usize, len: usize, tier: Tier) {
    let mut mispredicted = 0;
    let mut vec = [0u8; ENTRIES];
    let end = start + len;
    let mut addr = start;
    while addr < end {
        let stop = ((addr / PTE_TABLE_SPAN + 1) * PTE_TABLE_SPAN).min(end);
        let t = pte_table(addr, false);
        let pages = (stop - addr) / PAGE_SIZE;
        MINCORE_CALLS.fetch_add(1, Ordering::Relaxed);
        MINCORE_PAGES.fetch_add(pages as u64, Ordering::Relaxed);
        if !t.is_null() && crate::os::mincore(addr, &mut vec[..pages]) {
            let first = (addr >> PTE_SHIFT) & (ENTRIES - 1);
            // SAFETY: installed tables live forever.
            let entries = unsafe { &(&(*t).entries)[first..first + pages] };
            for (e, _) in entries.iter().zip(&vec[..pages]).filter(|(_, &v)| v & 1 != 0) {
                // The block is the caller's: one writer.
                let old = e.load(Ordering::Relaxed);
                e.store(old | PTE_RESIDENT, Ordering::Relaxed);
                // A huge-page extent was predicted once for all its pages.
                mispredicted += (old & (PTE_RESIDENT | PTE_HUGE) == 0) as u64;
            }
        }
        addr = stop;
    }
    if mispredicted != 0 {
        PREDICTED[tier as usize].fetch_sub(mispredicted, Ordering::Relaxed);
    }
}

/// Observes every page the shadow records (a walk of all its tables) and
/// returns the pages handed out and still not resident, by tier.
fn observe_all() -> [usize; NR_TIERS] {
    let mut seen = Seen::new();
    let mut untouched = [0; NR_TIERS];
    for (g, pgd) in PGD.iter().enumerate() {
        let pud = pgd.load(Ordering::Acquire);
        if pud.is_null() {
            continue;
        }
        // SAFETY: installed tables live forever.
        for (u, pud) in unsafe { as_dir(pud) }.iter().enumerate() {
            let pmd = pud.load(Ordering::Acquire);
            if pmd.is_null() {
                continue;
            }
            // SAFETY: as above.
            for (m, pmd) in unsafe { as_dir(pmd) }.iter().enumerate() {
                let pte = pmd.load(Ordering::Acquire);
                if pte.is_null() {
                    continue;
                }
                let addr = (g << PGD_SHIFT) | (u << PUD_SHIFT) | (m << PMD_SHIFT);
                // SAFETY: as above.
                let entries = unsafe { &(*pte).entries };
                observe_entries(entries, addr, &mut seen);
                for e in entries {
                    let e = e.load(Ordering::Relaxed);
                    if never_touched(e) {
                        untouched[Tier::from_entry(e) as usize] += 1;
                    }
                }
            }
        }
    }
    seen.apply();
    untouched
}

/// Whether an entry is a page handed out and not seen resident since it
/// was: handed out but never touched, as far as the last observation
/// knows.
pub fn never_touched(entry: u64) -> bool {
    entry & (PTE_HANDED | PTE_RESIDENT) == PTE_HANDED
}

/// The entry for the page holding `addr` (0 when nothing is recorded).
pub fn entry(addr: usize) -> u64 {
    let t = pte_table(addr & !(PAGE_SIZE - 1), false);
    if t.is_null() {
        return 0;
    }
    // SAFETY: installed tables live forever.
    unsafe { (*t).entries[(addr >> PTE_SHIFT) & (ENTRIES - 1)].load(Ordering::Relaxed) }
}

/// The owner tier recorded in an entry.
pub fn tier_of(entry: u64) -> Tier {
    Tier::from_entry(entry)
}

/// The shadow's counters.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FaultCounts {
    /// Predicted minor faults, by [`Tier`] (index `Tier as usize`): pages
    /// handed out when not handed out since mapped or given back, an upper
    /// bound on the faults they cost.
    pub predicted: [u64; NR_TIERS],
    /// Observed minor faults, by tier: pages handed out that the kernel
    /// then reported resident (once per page until it is given back).
    pub observed: [u64; NR_TIERS],
    /// The observed faults of pages that had been resident, were given
    /// back with `MADV_DONTNEED`, and faulted in again, by tier.
    pub refaults: [u64; NR_TIERS],
    /// Pages handed out now, by tier.
    pub handed_pages: [usize; NR_TIERS],
    /// Of those, pages not resident at this reading: handed out, never
    /// touched.
    pub untouched_pages: [usize; NR_TIERS],
    /// Pages the shadow's own tables use.
    pub table_pages: usize,
    /// `mincore` calls the observation made so far, and the pages they
    /// asked about.
    pub mincore_calls: u64,
    /// See `mincore_calls`.
    pub mincore_pages: u64,
}

impl FaultCounts {
    /// All predicted faults.
    pub fn total_predicted(&self) -> u64 {
        self.predicted.iter().sum()
    }

    /// All observed faults.
    pub fn total_observed(&self) -> u64 {
        self.observed.iter().sum()
    }

    /// All refaults.
    pub fn total_refaults(&self) -> u64 {
        self.refaults.iter().sum()
    }
}

/// Observes what became resident (starting the watch, see [`watch`]),
/// then reads the counters. Costs a walk of every table and a `mincore`
/// per run of pages not yet seen resident: what a view costs.
pub fn counts() -> FaultCounts {
    #[cfg(test)]
    let _alone = tests::OBSERVING.lock().unwrap_or_else(|e| e.into_inner());
    watch();
    let untouched_pages = observe_all();
    let mut c = FaultCounts {
        untouched_pages,
        table_pages: TABLE_PAGES.load(Ordering::Relaxed),
        mincore_calls: MINCORE_CALLS.load(Ordering::Relaxed),
        mincore_pages: MINCORE_PAGES.load(Ordering::Relaxed),
        ..Default::default()
    };
    for t in 0..NR_TIERS {
        c.predicted[t] = PREDICTED[t].load(Ordering::Relaxed);
        c.observed[t] = OBSERVED[t].load(Ordering::Relaxed);
        c.refaults[t] = REFAULTS[t].load(Ordering::Relaxed);
        c.handed_pages[t] = HANDED[t].load(Ordering::Relaxed);
    }
    c
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// An address range nothing maps: the shadow only records numbers, and
    /// each test uses its own, so tests in parallel do not meet.
    fn region(n: usize) -> usize {
        0x5a00_0000_0000 + n * (1 << 32)
    }

    /// Held by a view's observation ([`counts`]) and by the test that
    /// counts its own observations, which a view beside it would take.
    pub(super) static OBSERVING: std::sync::Mutex<()> = std::sync::Mutex::new(());

    #[test]
    fn levels_decode_like_the_hardware() {
        let a = 0x7f12_3456_7000usize;
        assert_eq!((a >> PGD_SHIFT) & 511, 0xfe);
        assert_eq!((a >> PUD_SHIFT) & 511, 0x48);
        assert_eq!((a >> PMD_SHIFT) & 511, 0x1a2);
        assert_eq!((a >> PTE_SHIFT) & 511, 0x167);
    }

    #[test]
    fn hand_out_predicts_once_until_advised() {
        let base = region(1);
        let len = 3 * PTE_TABLE_SPAN + 5 * PAGE_SIZE; // crosses pte tables
        map(base, len);
        assert_eq!(entry(base + 7 * PAGE_SIZE), PTE_PRESENT);
        assert_eq!(hand_out(base, len, Tier::Large), len / PAGE_SIZE);
        let e = entry(base + len - 1);
        assert_eq!(e & (PTE_HANDED | PTE_PREDICTED), PTE_HANDED | PTE_PREDICTED);
        assert_eq!(tier_of(e), Tier::Large);
        give_back(base, len);
        assert_eq!(entry(base) & !PTE_LAST_MASK, PTE_PRESENT | PTE_PREDICTED, "returned pages stay resident");
        assert_eq!((entry(base) & PTE_LAST_MASK) >> PTE_LAST_SHIFT, Tier::Large as u64, "and remember their last tier");
        assert_eq!(hand_out(base, len, Tier::Slab), 0, "resident pages do not fault again");
        give_back(base, len);
        advised(base + PAGE_SIZE, 2 * PAGE_SIZE);
        assert_eq!(hand_out(base, 4 * PAGE_SIZE, Tier::Pages), 2, "advised pages fault again");
        unmap(base, len);
        assert_eq!(entry(base), 0);
        assert_eq!(entry(base + len - PAGE_SIZE), 0);
    }

    #[test]
    fn remap_keeps_the_moved_state() {
        let (a, b) = (region(2), region(3));
        map(a, 8 * PAGE_SIZE);
        hand_out(a, 8 * PAGE_SIZE, Tier::Large);
        remapped(a, 8 * PAGE_SIZE, b, 12 * PAGE_SIZE, Tier::Large, false);
        assert_eq!(entry(a), 0);
        assert_ne!(entry(b + 7 * PAGE_SIZE) & PTE_PREDICTED, 0);
        assert_eq!(tier_of(entry(b + 11 * PAGE_SIZE)), Tier::Large);
        // In place: a shrink unmaps the tail.
        remapped(b, 12 * PAGE_SIZE, b, 4 * PAGE_SIZE, Tier::Large, false);
        assert_eq!(entry(b + 4 * PAGE_SIZE), 0);
        assert_ne!(entry(b + 3 * PAGE_SIZE), 0);
        unmap(b, 4 * PAGE_SIZE);
    }

    #[test]
    fn huge_growth_faults_once_per_whole_extent() {
        const MIB: usize = 1 << 20;
        let (a, b) = (region(4), region(5));
        map_and_hand_out(a, MIB, Tier::Large, false);
        // 1 MiB grown to 5 MiB at a new (2 MiB aligned) address: the rest
        // of the first extent faults by pages (the kept megabyte has 4 KiB
        // pages), the second extent once, the last megabyte (half an
        // extent) by pages.
        assert_eq!(remapped(a, MIB, b, 5 * MIB, Tier::Large, true), 256 + 1 + 256);
        assert_eq!(entry(a), 0);
        assert_ne!(entry(b + 3 * MIB) & PTE_PREDICTED, 0);
        // Grown in place to 9 MiB: the other half of the third extent
        // faults by pages, the fourth extent once, the first half of the
        // fifth by pages.
        assert_eq!(remapped(b, 5 * MIB, b, 9 * MIB, Tier::Large, true), 256 + 1 + 256);
        // Without the advice, every page.
        assert_eq!(remapped(b, 9 * MIB, a, 13 * MIB, Tier::Large, false), 4 * MIB / PAGE_SIZE);
        unmap(a, 13 * MIB);
    }

    /// Against real memory: what the program touched is observed once,
    /// what it did not stays never-touched, and a page given back with
    /// `MADV_DONTNEED` and touched again is a refault.
    #[test]
    fn observation_counts_what_the_kernel_made_resident() {
        let _alone = OBSERVING.lock().unwrap_or_else(|e| e.into_inner());
        let len = 16 * PAGE_SIZE;
        let p = crate::os::mmap_anonymous(len, false).unwrap();
        let touch = |pages: &[usize]| {
            // SAFETY: inside the mapping made above.
            pages.iter().for_each(|&i| unsafe { ptr::write_volatile((p + i * PAGE_SIZE) as *mut u8, 1) })
        };
        map(p, len);
        assert_eq!(hand_out(p, len, Tier::Pages), 16);
        touch(&[0, 3, 4, 15]);
        let mut seen = Seen::new();
        observe_into(p, len, &mut seen);
        assert_eq!(seen.observed[Tier::Pages as usize], 4);
        assert_eq!(seen.observed.iter().sum::<u64>(), 4);
        assert_eq!(seen.refaults.iter().sum::<u64>(), 0);
        let never: Vec<usize> = (0..16).filter(|&i| never_touched(entry(p + i * PAGE_SIZE))).collect();
        assert_eq!(never, [1, 2, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]);
        // Seen once: a second look finds nothing new.
        let mut again = Seen::new();
        observe_into(p, len, &mut again);
        assert_eq!(again.observed.iter().sum::<u64>(), 0);
        // Given back to the buddy, then to the kernel, then handed out and
        // touched again: page 0 had been resident (a refault), page 1 not.
        give_back(p, len);
        // SAFETY: the mapping is ours and holds nothing needed.
        unsafe { crate::os::madvise_dontneed(p, len).unwrap() };
        advised(p, len);
        assert_eq!(hand_out(p, len, Tier::Slab), 16, "advised pages are predicted again");
        touch(&[0, 1]);
        let mut after = Seen::new();
        observe_into(p, len, &mut after);
        assert_eq!((after.observed[Tier::Slab as usize], after.refaults[Tier::Slab as usize]), (2, 1));
        // Resident pages a block gets (as from the large tier's cache)
        // are marked without counting.
        touch(&[7]);
        mark_resident(p, len, Tier::Slab);
        let mut last = Seen::new();
        observe_into(p, len, &mut last);
        assert_eq!(last.observed.iter().sum::<u64>(), 0);
        assert!(!never_touched(entry(p + 7 * PAGE_SIZE)));
        unmap(p, len);
        // SAFETY: mapped above, no longer used.
        unsafe { crate::os::munmap(p, len).unwrap() };
    }

    /// An extent predicted as one huge page is observed as one fault,
    /// however its 512 pages became resident.
    #[test]
    fn a_huge_page_extent_is_observed_as_one_fault() {
        let _alone = OBSERVING.lock().unwrap_or_else(|e| e.into_inner());
        let raw = crate::os::mmap_anonymous(2 * PTE_TABLE_SPAN, false).unwrap();
        let p = (raw + PTE_TABLE_SPAN - 1) & !(PTE_TABLE_SPAN - 1);
        map(p, PTE_TABLE_SPAN);
        assert_eq!(hand_out_huge(p, PTE_TABLE_SPAN, Tier::Large), 1);
        // SAFETY: inside the mapping made above.
        (0..ENTRIES).for_each(|i| unsafe { ptr::write_volatile((p + i * PAGE_SIZE) as *mut u8, 1) });
        let mut seen = Seen::new();
        observe_into(p, PTE_TABLE_SPAN, &mut seen);
        assert_eq!(seen.observed[Tier::Large as usize], 1);
        unmap(p, PTE_TABLE_SPAN);
        // SAFETY: mapped above, no longer used.
        unsafe { crate::os::munmap(raw, 2 * PTE_TABLE_SPAN).unwrap() };
    }

    #[derive(Clone, Debug)]
    enum Op {
        Map(usize, usize),
        Unmap(usize, usize),
        HandOut(usize, usize, u8),
        HandOutHuge(usize, usize, u8),
        MapHandOut(usize, usize, u8),
        GiveBack(usize, usize),
        Advise(usize, usize),
    }

    fn range() -> impl Strategy<Value = (usize, usize)> {
        // Up to 1200 pages: some ranges cover a whole 2 MiB extent.
        (0usize..1000, 1usize..1200)
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            range().prop_map(|(s, l)| Op::Map(s, l)),
            range().prop_map(|(s, l)| Op::Unmap(s, l)),
            (range(), 1u8..5).prop_map(|((s, l), t)| Op::HandOut(s, l, t)),
            (range(), 1u8..5).prop_map(|((s, l), t)| Op::HandOutHuge(s, l, t)),
            (range(), 1u8..5).prop_map(|((s, l), t)| Op::MapHandOut(s, l, t)),
            range().prop_map(|(s, l)| Op::GiveBack(s, l)),
            range().prop_map(|(s, l)| Op::Advise(s, l)),
        ]
    }

    proptest! {
        /// The radix table against a flat array of entries: every entry
        /// and every fault prediction agrees.
        #[test]
        fn model_entries_and_predictions(ops in prop::collection::vec(op(), 1..60)) {
            let base = region(8);
            let pages = 2200;
            // Tables for the whole range, all entries clear.
            map(base, pages * PAGE_SIZE);
            unmap(base, pages * PAGE_SIZE);
            let mut model = vec![0u64; pages];
            for op in ops {
                match op {
                    Op::Map(s, l) => {
                        map(base + s * PAGE_SIZE, l * PAGE_SIZE);
                        model[s..s + l].iter_mut().for_each(|e| *e = PTE_PRESENT);
                    }
                    Op::Unmap(s, l) => {
                        unmap(base + s * PAGE_SIZE, l * PAGE_SIZE);
                        model[s..s + l].iter_mut().for_each(|e| *e = 0);
                    }
                    Op::HandOut(s, l, t) => {
                        let tier = Tier::ALL[t as usize];
                        let want = model[s..s + l].iter().filter(|&&e| e & PTE_PREDICTED == 0).count();
                        prop_assert_eq!(hand_out(base + s * PAGE_SIZE, l * PAGE_SIZE, tier), want);
                        model[s..s + l].iter_mut().for_each(|e| *e = handed_bits(tier) | (*e & PTE_HISTORY));
                    }
                    Op::HandOutHuge(s, l, t) => {
                        // Per 2 MiB extent (the region is aligned): one
                        // fault when the range covers it all untouched.
                        let tier = Tier::ALL[t as usize];
                        let mut want = 0;
                        let mut i = s;
                        while i < s + l {
                            let stop = ((i / ENTRIES + 1) * ENTRIES).min(s + l);
                            let untouched = model[i..stop].iter().filter(|&&e| e & PTE_PREDICTED == 0).count();
                            let one_huge_page = stop - i == ENTRIES && untouched == ENTRIES;
                            want += if one_huge_page { 1 } else { untouched };
                            let huge = if one_huge_page { PTE_HUGE } else { 0 };
                            model[i..stop].iter_mut().for_each(|e| *e = handed_bits(tier) | (*e & PTE_HISTORY) | huge);
                            i = stop;
                        }
                        prop_assert_eq!(hand_out_huge(base + s * PAGE_SIZE, l * PAGE_SIZE, tier), want);
                    }
                    Op::MapHandOut(s, l, t) => {
                        let tier = Tier::ALL[t as usize];
                        prop_assert_eq!(map_and_hand_out(base + s * PAGE_SIZE, l * PAGE_SIZE, tier, false), l);
                        model[s..s + l].iter_mut().for_each(|e| *e = handed_bits(tier));
                    }
                    Op::GiveBack(s, l) => {
                        give_back(base + s * PAGE_SIZE, l * PAGE_SIZE);
                        model[s..s + l].iter_mut().for_each(|e| *e &= !(PTE_HANDED | PTE_TIER_MASK));
                    }
                    Op::Advise(s, l) => {
                        advised(base + s * PAGE_SIZE, l * PAGE_SIZE);
                        model[s..s + l].iter_mut().for_each(|e| {
                            let given_back = if *e & PTE_RESIDENT != 0 { PTE_GIVEN_BACK } else { 0 };
                            *e = (*e | given_back) & !(PTE_PREDICTED | PTE_RESIDENT | PTE_HUGE);
                        });
                    }
                }
            }
            for (i, &want) in model.iter().enumerate() {
                prop_assert_eq!(entry(base + i * PAGE_SIZE), want, "page {}", i);
            }
            unmap(base, pages * PAGE_SIZE);
        }
    }
}
