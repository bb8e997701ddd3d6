//! What the tiers count for the views: bytes asked for against bytes
//! handed out, per tier, the slab tier's sampled request sizes, and the
//! calls per C entry point. The tiers add to these on their slow paths;
//! the views read them. Below every tier, so that counting names no view;
//! the views' hook on the slow paths ([`on_slow_path`]) is registered
//! here from above.

use core::sync::atomic::{AtomicPtr, AtomicU64, AtomicUsize, Ordering};

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

/// What a thread counts of its calls and adds here in batches (see
/// `slab::magazine`, whose bins count `malloc`'s and `free`'s fast paths
/// at no cost): blocks handed out and given back by every entry point and
/// tier (`malloc`, `calloc`, `realloc`'s moves, the aligned ones, the Rust
/// face's), the calls of the other C entry points ([`Entry`]), and the
/// blocks those entries handed out and `realloc` gave back, so that
/// `malloc`'s and `free`'s own calls are the difference. Page runs and
/// large blocks add their blocks here as they go.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Tally {
    /// Blocks handed out.
    pub allocs: u64,
    /// Blocks given back.
    pub frees: u64,
    /// Calls per [`Entry`].
    pub calls: [u64; 3],
    /// Of `allocs`, the blocks `calloc`, the aligned family and `realloc`
    /// handed out.
    pub entry_allocs: u64,
    /// Of `frees`, the blocks `realloc` gave back.
    pub entry_frees: u64,
}

impl Tally {
    /// What `self` counted beyond `earlier`.
    pub fn since(&self, earlier: &Tally) -> Tally {
        Tally {
            allocs: self.allocs - earlier.allocs,
            frees: self.frees - earlier.frees,
            calls: core::array::from_fn(|i| self.calls[i] - earlier.calls[i]),
            entry_allocs: self.entry_allocs - earlier.entry_allocs,
            entry_frees: self.entry_frees - earlier.entry_frees,
        }
    }

    /// Calls counted in all.
    pub fn total(&self) -> u64 {
        self.allocs + self.frees + self.calls.iter().sum::<u64>()
    }
}

/// The process's [`Tally`], field for field.
static TALLY: [AtomicU64; 7] = [const { AtomicU64::new(0) }; 7];

/// Adds a thread's counts (or a tier's) to the process's.
pub fn add_tally(t: &Tally) {
    let fields = [t.allocs, t.frees, t.calls[0], t.calls[1], t.calls[2], t.entry_allocs, t.entry_frees];
    for (sum, n) in TALLY.iter().zip(fields) {
        if n != 0 {
            sum.fetch_add(n, Ordering::Relaxed);
        }
    }
}

/// Adds `allocated` blocks handed out and `freed` given back (page runs
/// and large blocks, and calls that found no thread cache).
#[inline]
pub fn count_blocks(allocated: u64, freed: u64) {
    add_tally(&Tally { allocs: allocated, frees: freed, ..Tally::default() });
}

/// The process's [`Tally`] so far.
pub fn tally() -> Tally {
    let f: [u64; 7] = core::array::from_fn(|i| TALLY[i].load(Ordering::Relaxed));
    Tally { allocs: f[0], frees: f[1], calls: [f[2], f[3], f[4]], entry_allocs: f[5], entry_frees: f[6] }
}

/// The C entry points whose calls the views count (index into `Tally::calls`).
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

/// The views' calls, in the order `calls` returns them.
pub const CALL_NAMES: [&str; 5] = ["malloc", "free", "calloc", "realloc", "aligned"];

/// The counts of [`CALL_NAMES`] now: `malloc` is every block handed out
/// but by the other entry points, `free` every block given back but by
/// `realloc`.
pub fn calls() -> [u64; 5] {
    let t = tally();
    [
        t.allocs.saturating_sub(t.entry_allocs),
        t.frees.saturating_sub(t.entry_frees),
        t.calls[Entry::Calloc as usize],
        t.calls[Entry::Realloc as usize],
        t.calls[Entry::Aligned as usize],
    ]
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
