//! What the tiers count for the views: bytes asked for against bytes
//! handed out, per tier, the slab tier's sampled request sizes, and the
//! calls per C entry point. The tiers add to these on their slow paths;
//! the views read them. Below every tier, so that counting names no view;
//! the views' hook on the slow paths ([`on_slow_path`]) is registered
//! here from above.

use core::sync::atomic::{AtomicBool, AtomicPtr, AtomicU64, AtomicUsize, Ordering};

/// Bytes asked for and handed out by one tier, counted on its slow path.
pub struct TierCounter {
    requested: AtomicUsize,
    handed: AtomicUsize,
    count: AtomicUsize,
}

/// A plain copy of a [`TierCounter`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TierWaste {
    /// Bytes asked for, summed over every allocation since the start.
    pub requested: usize,
    /// Bytes handed out for them.
    pub handed: usize,
    /// Allocations counted.
    pub count: usize,
}

impl TierWaste {
    /// Bytes handed out beyond the requests.
    pub fn waste(&self) -> usize {
        self.handed.saturating_sub(self.requested)
    }
}

impl TierCounter {
    /// Zero counts.
    pub const fn new() -> Self {
        TierCounter { requested: AtomicUsize::new(0), handed: AtomicUsize::new(0), count: AtomicUsize::new(0) }
    }

    /// Counts one allocation of `handed` bytes for a request of `requested`.
    pub fn add(&self, requested: usize, handed: usize) {
        self.requested.fetch_add(requested, Ordering::Relaxed);
        self.handed.fetch_add(handed, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    /// The counts now.
    pub fn read(&self) -> TierWaste {
        TierWaste {
            requested: self.requested.load(Ordering::Relaxed),
            handed: self.handed.load(Ordering::Relaxed),
            count: self.count.load(Ordering::Relaxed),
        }
    }
}

impl Default for TierCounter {
    fn default() -> Self {
        Self::new()
    }
}

/// Page-tier runs: requests and whole pages.
pub static PAGE_TIER: TierCounter = TierCounter::new();
/// Large blocks: requests and mapping lengths.
pub static LARGE_TIER: TierCounter = TierCounter::new();

/// Per size class (`N` of them): sampled requests and the sum of their sizes.
pub struct SlabSampler<const N: usize> {
    samples: [AtomicUsize; N],
    requested_sum: [AtomicUsize; N],
}

/// A plain copy of one class's samples.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SlabSample {
    /// Requests sampled.
    pub samples: usize,
    /// Their sizes, summed.
    pub requested_sum: usize,
}

impl<const N: usize> SlabSampler<N> {
    /// No samples.
    pub const fn new() -> Self {
        SlabSampler {
            samples: [const { AtomicUsize::new(0) }; N],
            requested_sum: [const { AtomicUsize::new(0) }; N],
        }
    }

    /// Records one request of `size` bytes served by class `class`
    /// (ignored when `class` is not a size class).
    pub fn record(&self, class: usize, size: usize) {
        if class < N {
            self.samples[class].fetch_add(1, Ordering::Relaxed);
            self.requested_sum[class].fetch_add(size, Ordering::Relaxed);
        }
    }

    /// The samples now, per class.
    pub fn read(&self) -> [SlabSample; N] {
        core::array::from_fn(|c| SlabSample {
            samples: self.samples[c].load(Ordering::Relaxed),
            requested_sum: self.requested_sum[c].load(Ordering::Relaxed),
        })
    }
}

impl<const N: usize> Default for SlabSampler<N> {
    fn default() -> Self {
        Self::new()
    }
}

/// Blocks handed out and blocks given back, by every entry point and
/// tier: `malloc`, `calloc`, `realloc`'s moves and the aligned ones, and
/// the Rust face's. The slab tier's threads count theirs in their bins
/// at no cost to the fast paths and add them here in batches (on slow
/// paths, at least once every 1024 calls counted there, at thread exit,
/// and when the views read them); page runs and large blocks add theirs
/// as they go.
static BLOCKS: [AtomicU64; 2] = [const { AtomicU64::new(0) }; 2];

/// Adds `allocated` blocks handed out and `freed` given back.
#[inline]
pub fn count_blocks(allocated: u64, freed: u64) {
    if allocated != 0 {
        BLOCKS[0].fetch_add(allocated, Ordering::Relaxed);
    }
    if freed != 0 {
        BLOCKS[1].fetch_add(freed, Ordering::Relaxed);
    }
}

/// Blocks handed out and given back so far ([`count_blocks`]).
pub fn blocks() -> [u64; 2] {
    [BLOCKS[0].load(Ordering::Relaxed), BLOCKS[1].load(Ordering::Relaxed)]
}

/// The C entry points counted in the views' totals (index into `CALLS`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Entry {
    /// `calloc`.
    Calloc,
    /// `realloc`, `reallocarray`.
    Realloc,
    /// `posix_memalign`, `aligned_alloc`, `memalign`, `valloc`, `pvalloc`.
    Aligned,
}

/// The entries' names, in [`Entry`] order.
pub const ENTRY_NAMES: [&str; 3] = ["calloc", "realloc", "aligned"];

/// The views' calls, in [`calls`] order: blocks handed out and given
/// back ([`blocks`]), then [`ENTRY_NAMES`].
pub const CALL_NAMES: [&str; 5] = ["allocs", "frees", "calloc", "realloc", "aligned"];

/// The counts of [`CALL_NAMES`] now.
pub fn calls() -> [u64; 5] {
    let [allocs, frees] = blocks();
    let entry = |e: Entry| CALLS[e as usize].load(Ordering::Relaxed);
    [allocs, frees, entry(Entry::Calloc), entry(Entry::Realloc), entry(Entry::Aligned)]
}

/// Calls per entry point, counted only while some view is asked for
/// ([`COUNT_CALLS`]). `malloc` and `free` are counted as blocks
/// ([`blocks`]), which their fast paths pay nothing for.
pub static CALLS: [AtomicU64; 3] = [const { AtomicU64::new(0) }; 3];
/// Whether [`count_call`] counts: set at start-up when a view is asked for.
pub static COUNT_CALLS: AtomicBool = AtomicBool::new(false);

/// Counts a call of `entry` (one relaxed load when no view is asked for).
#[inline]
pub fn count_call(entry: Entry) {
    if COUNT_CALLS.load(Ordering::Relaxed) {
        CALLS[entry as usize].fetch_add(1, Ordering::Relaxed);
    }
}

/// The views' hook on the tiers' slow paths (a thread cache's refill): a
/// `fn()` registered from above (the views' triggers and live page, see
/// `views::report`), or null. The tiers never name the views: they call
/// [`on_slow_path`], which costs one relaxed load while nothing is
/// registered.
static SLOW_PATH_HOOK: AtomicPtr<()> = AtomicPtr::new(core::ptr::null_mut());

/// Registers `hook` to run on the tiers' slow paths, with no allocator
/// lock held (the last registration wins).
pub fn set_slow_path_hook(hook: fn()) {
    SLOW_PATH_HOOK.store(hook as *mut (), Ordering::Release);
}

/// Called by the tiers on their slow paths, with no lock held: runs the
/// registered hook, if any (one relaxed load when none is).
#[inline(always)]
pub fn on_slow_path() {
    let hook = SLOW_PATH_HOOK.load(Ordering::Relaxed);
    if !hook.is_null() {
        run_slow_path_hook(hook);
    }
}

#[cold]
#[inline(never)]
fn run_slow_path_hook(hook: *mut ()) {
    // SAFETY: only `set_slow_path_hook` stores here, always a `fn()`; the
    // function is code, which needs no publication.
    let hook: fn() = unsafe { core::mem::transmute::<*mut (), fn()>(hook) };
    hook();
}
