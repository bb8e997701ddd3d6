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

/// Per size class (`N` of them): sampled requests and the sum of their
/// sizes, in `SAMPLE_STRIPES` stripes. The threads of one CPU add to its
/// stripe, so the refills of threads on different CPUs do not pass the
/// counters' lines back and forth: one shared set made the `lock add` of
/// the sum 1.8 % of larson's samples at 2 threads (`perf record`), the
/// line taken from the other CPU on every refill.
pub struct SlabSampler<const N: usize> {
    stripes: [SampleStripe<N>; SAMPLE_STRIPES],
}

/// Stripes of a [`SlabSampler`]; CPUs beyond share by modulo.
pub const SAMPLE_STRIPES: usize = 16;

/// One CPU's counters: per class, samples and the sum of their sizes side
/// by side (one line per refill), a stripe starting on its own line.
#[repr(align(64))]
struct SampleStripe<const N: usize> {
    classes: [[AtomicUsize; 2]; N],
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
            stripes: [const { SampleStripe { classes: [const { [AtomicUsize::new(0), AtomicUsize::new(0)] }; N] } }; SAMPLE_STRIPES],
        }
    }

    /// Records one request of `size` bytes served by class `class`
    /// (ignored when `class` is not a size class), in the calling CPU's
    /// stripe.
    pub fn record(&self, class: usize, size: usize) {
        if class < N {
            let counters = &self.stripes[crate::os::current_cpu() % SAMPLE_STRIPES].classes[class];
            counters[0].fetch_add(1, Ordering::Relaxed);
            counters[1].fetch_add(size, Ordering::Relaxed);
        }
    }

    /// The samples now, per class, every stripe summed.
    pub fn read(&self) -> [SlabSample; N] {
        core::array::from_fn(|c| {
            self.stripes.iter().fold(SlabSample::default(), |sum, stripe| SlabSample {
                samples: sum.samples + stripe.classes[c][0].load(Ordering::Relaxed),
                requested_sum: sum.requested_sum + stripe.classes[c][1].load(Ordering::Relaxed),
            })
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Samples recorded on every CPU there is, concurrently, all count:
    /// the stripes are summed, none lost or counted twice.
    #[test]
    fn samples_of_every_cpu_are_summed() {
        let sampler = SlabSampler::<4>::new();
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get()).min(2 * SAMPLE_STRIPES);
        let pinned = std::thread::scope(|s| {
            let threads: std::vec::Vec<_> = (0..cpus)
                .map(|cpu| {
                    let sampler = &sampler;
                    s.spawn(move || {
                        // SAFETY: a zeroed cpu_set_t is the empty set;
                        // valid pointers. A refusal leaves the thread where
                        // it is.
                        let pinned = unsafe {
                            let mut set: libc::cpu_set_t = core::mem::zeroed();
                            libc::CPU_SET(cpu, &mut set);
                            libc::sched_setaffinity(0, core::mem::size_of::<libc::cpu_set_t>(), &set) == 0
                                && libc::sched_getcpu() == cpu as i32
                        };
                        for i in 0..1000 {
                            sampler.record(i % 4, 10 + cpu);
                        }
                        pinned
                    })
                })
                .collect();
            threads.into_iter().all(|t| t.join().unwrap())
        });
        let read = sampler.read();
        for (class, sample) in read.iter().enumerate() {
            assert_eq!(sample.samples, 250 * cpus, "class {class}");
            assert_eq!(sample.requested_sum, (0..cpus).map(|cpu| 250 * (10 + cpu)).sum::<usize>(), "class {class}");
        }
        // Threads pinned to different CPUs wrote different stripes.
        let used = sampler.stripes.iter().filter(|s| s.classes[0][0].load(Ordering::Relaxed) != 0).count();
        if pinned {
            assert_eq!(used, cpus.min(SAMPLE_STRIPES), "stripes written by {cpus} CPUs");
        }
    }
}
