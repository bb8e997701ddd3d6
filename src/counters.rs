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

/// Calls per entry point, counted only while some view is asked for
/// ([`COUNT_CALLS`]). `malloc` and `free` are not counted: their fast path
/// (72 instructions per pair) would pay for it on every call.
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
