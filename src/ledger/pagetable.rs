//! The software page-table shadow: what buddyslab knows about every 4 KiB
//! page it has mapped, and the minor page faults its memory will cost.
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
//! | [`PTE_TOUCHED`] | touched since it was mapped or since its last `MADV_DONTNEED` |
//! | 3..=5 ([`PTE_TIER_SHIFT`]) | owner tier ([`Tier`]) while handed out |
//!
//! Fault prediction: handing out a page whose `PTE_TOUCHED` is clear counts
//! one predicted minor fault for the receiving tier and sets the bit: the
//! allocator assumes the program touches what it asked for. `MADV_DONTNEED`
//! clears the bit (the next touch faults again); returning a page to the
//! buddy keeps it (it stays resident). Compare the sum with the kernel's
//! `ru_minflt` ([`crate::os::minor_faults`]); the difference is what the
//! process faults outside buddyslab (loader, libc, stack, its own data) plus
//! memory handed out and never touched.
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
//! prediction becomes an upper bound.
//!
//! Updates happen on slow paths only: a chunk or large block is mapped or
//! unmapped, pages go from the buddy to a tier or back, free memory is
//! released. Never per object. Entries and table pointers are atomics: a
//! missing table is installed with a compare-and-swap, and the loser gives
//! its page back; an entry, which has one writer at a time (the page's
//! owner), is updated with a plain load and store (see `replace`). The
//! only lock is [`TABLE_POOL`]'s, a leaf (last in the global lock order),
//! held for a few instructions.
//!
//! Where the prediction is blind: the CPU depots' pages (taken from the
//! buddy by `slab::percpu`, a few per CPU) are not recorded.

use crate::mm;
use crate::os::PAGE_SIZE;
use crate::mm::page;
use crate::os::sync::Mutex;
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// Entry bit: the page is mapped by buddyslab.
pub const PTE_PRESENT: u64 = 1;
/// Entry bit: the page is handed out to a tier.
pub const PTE_HANDED: u64 = 2;
/// Entry bit: the page has been touched since it was mapped or advised away.
pub const PTE_TOUCHED: u64 = 4;
/// Shift of the owner tier field (3 bits).
pub const PTE_TIER_SHIFT: u32 = 3;
const PTE_TIER_MASK: u64 = 7 << PTE_TIER_SHIFT;

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
pub fn map(start: usize, len: usize) {
    let mut tally = Tally::new();
    walk(start, len, true, |e| {
        if let Some(e) = e {
            tally.forget(replace(e, PTE_PRESENT));
        }
    });
    tally.apply();
}

/// Records `[start, start + len)` as unmapped.
pub fn unmap(start: usize, len: usize) {
    let mut tally = Tally::new();
    walk(start, len, false, |e| {
        if let Some(e) = e {
            tally.forget(replace(e, 0));
        }
    });
    tally.apply();
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
        let t = tier as usize;
        self.0[t] = self.0[t].wrapping_add(1);
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
/// soon as it is mapped: every page counts one predicted fault. Returns
/// the faults predicted.
pub fn map_and_hand_out(start: usize, len: usize, tier: Tier) -> usize {
    let mut tally = Tally::new();
    let bits = PTE_PRESENT | PTE_HANDED | PTE_TOUCHED | ((tier as u64) << PTE_TIER_SHIFT);
    walk(start, len, true, |e| {
        if let Some(e) = e {
            tally.forget(replace(e, bits));
            tally.add(tier);
        }
    });
    tally.apply();
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

fn hand_out_pages(start: usize, len: usize, tier: Tier, huge: bool) -> usize {
    let mut faults = 0;
    let mut tally = Tally::new();
    let bits = PTE_PRESENT | PTE_HANDED | PTE_TOUCHED | ((tier as u64) << PTE_TIER_SHIFT);
    let end = start + len;
    let mut addr = start;
    // One pte table (one 2 MiB extent) at a time.
    while addr < end {
        let stop = ((addr / PTE_TABLE_SPAN + 1) * PTE_TABLE_SPAN).min(end);
        let mut untouched = 0;
        walk(addr, stop - addr, false, |e| match e {
            Some(e) => {
                let old = replace(e, bits);
                tally.forget(old);
                tally.add(tier);
                if old & PTE_TOUCHED == 0 {
                    untouched += 1;
                }
            }
            // A page whose table could not be made: still a fault to predict.
            None => untouched += 1,
        });
        faults += if huge && stop - addr == PTE_TABLE_SPAN && untouched == ENTRIES { 1 } else { untouched };
        addr = stop;
    }
    tally.apply();
    PREDICTED[tier as usize].fetch_add(faults as u64, Ordering::Relaxed);
    faults
}

/// Records pages going back to the buddy allocator: no longer handed out,
/// still resident.
pub fn give_back(start: usize, len: usize) {
    let mut tally = Tally::new();
    walk(start, len, false, |e| {
        if let Some(e) = e {
            let old = e.load(Ordering::Relaxed);
            e.store(old & !(PTE_HANDED | PTE_TIER_MASK), Ordering::Relaxed);
            tally.forget(old);
        }
    });
    tally.apply();
}

/// Records `madvise(MADV_DONTNEED)` on `[start, start + len)`: the next
/// touch of each page faults again.
pub fn advised(start: usize, len: usize) {
    walk(start, len, false, |e| {
        if let Some(e) = e {
            e.store(e.load(Ordering::Relaxed) & !PTE_TOUCHED, Ordering::Relaxed);
        }
    });
}

/// Records a large block moved or resized by `mremap`: the pages the old
/// and new ranges share keep their state (the kernel moves page-table
/// entries, not pages); pages past the old length are handed out fresh,
/// in huge pages where they can be with `huge` (the block is advised for
/// them: see [`hand_out_huge`]). Returns the faults predicted for them.
pub fn remapped(old: usize, old_len: usize, new: usize, new_len: usize, tier: Tier, huge: bool) -> usize {
    let keep = old_len.min(new_len);
    if new == old {
        if new_len > old_len {
            map(old + old_len, new_len - old_len);
            return hand_out_pages(old + old_len, new_len - old_len, tier, huge);
        } else if old_len > new_len {
            unmap(old + new_len, old_len - new_len);
        }
        return 0;
    }
    map(new, new_len);
    let mut tally = Tally::new();
    let mut offset = 0;
    while offset < keep {
        let state = entry(old + offset);
        if state & PTE_PRESENT != 0 {
            walk(new + offset, PAGE_SIZE, false, |e| {
                if let Some(e) = e {
                    tally.forget(replace(e, state));
                    if state & PTE_HANDED != 0 {
                        tally.add(Tier::from_entry(state));
                    }
                }
            });
        }
        offset += PAGE_SIZE;
    }
    tally.apply();
    unmap(old, old_len);
    if new_len > keep {
        return hand_out_pages(new + keep, new_len - keep, tier, huge);
    }
    0
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
    /// Predicted minor faults, by [`Tier`] (index `Tier as usize`).
    pub predicted: [u64; NR_TIERS],
    /// Pages handed out now, by tier.
    pub handed_pages: [usize; NR_TIERS],
    /// Pages the shadow's own tables use.
    pub table_pages: usize,
}

impl FaultCounts {
    /// All predicted faults.
    pub fn total_predicted(&self) -> u64 {
        self.predicted.iter().sum()
    }
}

/// Reads the counters.
pub fn counts() -> FaultCounts {
    let mut c = FaultCounts { table_pages: TABLE_PAGES.load(Ordering::Relaxed), ..Default::default() };
    for t in 0..NR_TIERS {
        c.predicted[t] = PREDICTED[t].load(Ordering::Relaxed);
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
        assert_eq!(e & (PTE_HANDED | PTE_TOUCHED), PTE_HANDED | PTE_TOUCHED);
        assert_eq!(tier_of(e), Tier::Large);
        give_back(base, len);
        assert_eq!(entry(base), PTE_PRESENT | PTE_TOUCHED, "returned pages stay resident");
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
        assert_ne!(entry(b + 7 * PAGE_SIZE) & PTE_TOUCHED, 0);
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
        map_and_hand_out(a, MIB, Tier::Large);
        // 1 MiB grown to 5 MiB at a new (2 MiB aligned) address: the rest
        // of the first extent faults by pages (the kept megabyte has 4 KiB
        // pages), the second extent once, the last megabyte (half an
        // extent) by pages.
        assert_eq!(remapped(a, MIB, b, 5 * MIB, Tier::Large, true), 256 + 1 + 256);
        assert_eq!(entry(a), 0);
        assert_ne!(entry(b + 3 * MIB) & PTE_TOUCHED, 0);
        // Grown in place to 9 MiB: the other half of the third extent
        // faults by pages, the fourth extent once, the first half of the
        // fifth by pages.
        assert_eq!(remapped(b, 5 * MIB, b, 9 * MIB, Tier::Large, true), 256 + 1 + 256);
        // Without the advice, every page.
        assert_eq!(remapped(b, 9 * MIB, a, 13 * MIB, Tier::Large, false), 4 * MIB / PAGE_SIZE);
        unmap(a, 13 * MIB);
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
                        let want = model[s..s + l].iter().filter(|&&e| e & PTE_TOUCHED == 0).count();
                        prop_assert_eq!(hand_out(base + s * PAGE_SIZE, l * PAGE_SIZE, tier), want);
                        let bits = PTE_PRESENT | PTE_HANDED | PTE_TOUCHED | ((t as u64) << PTE_TIER_SHIFT);
                        model[s..s + l].iter_mut().for_each(|e| *e = bits);
                    }
                    Op::HandOutHuge(s, l, t) => {
                        // Per 2 MiB extent (the region is aligned): one
                        // fault when the range covers it all untouched.
                        let tier = Tier::ALL[t as usize];
                        let mut want = 0;
                        let mut i = s;
                        while i < s + l {
                            let stop = ((i / ENTRIES + 1) * ENTRIES).min(s + l);
                            let untouched = model[i..stop].iter().filter(|&&e| e & PTE_TOUCHED == 0).count();
                            want += if stop - i == ENTRIES && untouched == ENTRIES { 1 } else { untouched };
                            i = stop;
                        }
                        prop_assert_eq!(hand_out_huge(base + s * PAGE_SIZE, l * PAGE_SIZE, tier), want);
                        let bits = PTE_PRESENT | PTE_HANDED | PTE_TOUCHED | ((t as u64) << PTE_TIER_SHIFT);
                        model[s..s + l].iter_mut().for_each(|e| *e = bits);
                    }
                    Op::MapHandOut(s, l, t) => {
                        let tier = Tier::ALL[t as usize];
                        prop_assert_eq!(map_and_hand_out(base + s * PAGE_SIZE, l * PAGE_SIZE, tier), l);
                        let bits = PTE_PRESENT | PTE_HANDED | PTE_TOUCHED | ((t as u64) << PTE_TIER_SHIFT);
                        model[s..s + l].iter_mut().for_each(|e| *e = bits);
                    }
                    Op::GiveBack(s, l) => {
                        give_back(base + s * PAGE_SIZE, l * PAGE_SIZE);
                        model[s..s + l].iter_mut().for_each(|e| *e &= !(PTE_HANDED | PTE_TIER_MASK));
                    }
                    Op::Advise(s, l) => {
                        advised(base + s * PAGE_SIZE, l * PAGE_SIZE);
                        model[s..s + l].iter_mut().for_each(|e| *e &= !PTE_TOUCHED);
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
