//! What the tiers count for the views: bytes asked for against bytes
//! handed out, per tier, and the slab tier's sampled request sizes. The
//! tiers add to these on their slow paths; the views read them. Below
//! every tier, so that counting names no view.

use core::sync::atomic::{AtomicUsize, Ordering};

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
