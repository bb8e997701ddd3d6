//! Soak test: many threads hammer buddyslab (the global allocator here) for
//! a given time with random sizes from 1 B to 8 MiB, random alignments,
//! realloc chains and cross-thread frees; every block's contents are
//! checked when it is freed or resized, and RSS is sampled once a second.
//! Ends with a report; exits 1 on any corruption, on a null return within
//! the live-bytes budget, or when RSS keeps growing while the live bytes
//! stay bounded.
//!
//! ```sh
//! cargo run --release --example soak -- 600          # 10 minutes, 4 threads
//! cargo run --release --example soak -- 60 8 1234    # seconds, threads, seed
//! ```
//!
//! Not part of `cargo test`: it runs for minutes.

use buddyslab::BuddySlab;
use std::alloc::{GlobalAlloc, Layout};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: BuddySlab = BuddySlab;

/// Live bytes each thread may hold (its own blocks plus its inbox); the
/// RSS bound is judged against the sum of these.
const THREAD_BUDGET: usize = 48 << 20;
/// Blocks a thread keeps at most.
const SLOTS: usize = 4096;
/// Largest request.
const MAX_SIZE: usize = 8 << 20;

#[path = "../tests/common/rng.rs"]
mod rng;
use rng::Rng;

/// A live block: where, its layout, and the seed its contents derive from.
struct Block {
    p: *mut u8,
    layout: Layout,
    seed: u64,
}

// SAFETY: a block is owned by exactly one thread at a time (sent whole
// through an inbox).
unsafe impl Send for Block {}

/// The byte expected at offset `i` of a block with `seed`.
#[inline]
fn byte_at(seed: u64, i: usize) -> u8 {
    (seed.wrapping_add(i as u64).wrapping_mul(0x9e37_79b9_7f4a_7c15) >> 56) as u8
}

/// Offsets that get written and checked: every byte of the first and last
/// 64, and one byte in every 4 KiB page between (so an 8 MiB block costs
/// about 2 K writes, and every page is touched).
fn for_each_checked(size: usize, mut f: impl FnMut(usize)) {
    let head = size.min(64);
    for i in 0..head {
        f(i);
    }
    let mut i = 4096 - 1;
    while i + 64 < size {
        if i >= head {
            f(i);
        }
        i += 4096;
    }
    for i in size.saturating_sub(64).max(head)..size {
        f(i);
    }
}

fn fill(b: &Block) {
    // SAFETY: offsets are below the block's size.
    for_each_checked(b.layout.size(), |i| unsafe { *b.p.add(i) = byte_at(b.seed, i) });
}

/// Checks the first `upto` bytes' worth of checked offsets; returns the
/// first bad offset.
fn verify(b: &Block, upto: usize) -> Option<usize> {
    let mut bad = None;
    let size = b.layout.size();
    for_each_checked(size, |i| {
        // SAFETY: offsets are below the block's size.
        if bad.is_none() && i < upto && unsafe { *b.p.add(i) } != byte_at(b.seed, i) {
            bad = Some(i);
        }
    });
    bad
}

#[derive(Default)]
struct Counters {
    allocs: AtomicU64,
    frees: AtomicU64,
    reallocs: AtomicU64,
    sent: AtomicU64,
    bytes: AtomicU64,
    corruptions: AtomicU64,
    nulls: AtomicU64,
}

struct Shared {
    inboxes: Vec<Mutex<Vec<Block>>>,
    stop: AtomicBool,
    counters: Counters,
    live_bytes: AtomicUsize,
}

fn random_size(rng: &mut Rng) -> usize {
    // Log-uniform over 1 B .. 8 MiB, with most requests small as in real
    // programs: pick a power-of-two range, then a size inside it.
    let bits = match rng.below(100) {
        0..=59 => rng.below(8),      // 1 .. 255 B
        60..=84 => 8 + rng.below(7), // 256 B .. 32 KiB
        85..=96 => 15 + rng.below(6), // 32 KiB .. 2 MiB
        _ => 21 + rng.below(3),      // 2 .. 8 MiB
    } as u32;
    let lo = 1usize << bits;
    (lo + rng.below(lo as u64) as usize).clamp(1, MAX_SIZE)
}

fn random_align(rng: &mut Rng) -> usize {
    match rng.below(100) {
        0..=79 => 8,
        80..=94 => 1 << (4 + rng.below(5)),  // 16 .. 256
        95..=98 => 1 << (9 + rng.below(8)),  // 512 .. 64 KiB
        _ => 1 << (17 + rng.below(5)),       // 128 KiB .. 2 MiB
    }
}

fn report_corruption(what: &str, b: &Block, at: usize) {
    eprintln!(
        "CORRUPTION in {what}: block {:p} size {} align {} differs at offset {at}",
        b.p,
        b.layout.size(),
        b.layout.align()
    );
}

fn release(shared: &Shared, b: Block, what: &str) {
    if let Some(at) = verify(&b, usize::MAX) {
        shared.counters.corruptions.fetch_add(1, Ordering::Relaxed);
        report_corruption(what, &b, at);
    }
    shared.live_bytes.fetch_sub(b.layout.size(), Ordering::Relaxed);
    // SAFETY: the block is live with this layout and given up here.
    unsafe { GLOBAL.dealloc(b.p, b.layout) };
    shared.counters.frees.fetch_add(1, Ordering::Relaxed);
}

fn worker(shared: Arc<Shared>, id: usize, seed: u64) {
    let mut rng = Rng(seed ^ (id as u64 + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15));
    let mut slots: Vec<Option<Block>> = (0..SLOTS).map(|_| None).collect();
    let mut mine = 0usize; // bytes in `slots`
    let c = &shared.counters;
    let n = shared.inboxes.len();
    while !shared.stop.load(Ordering::Relaxed) {
        // Blocks other threads sent: check and free.
        let received = std::mem::take(&mut *shared.inboxes[id].lock().unwrap());
        for b in received {
            release(&shared, b, "cross-thread free");
        }
        for _ in 0..256 {
            let i = rng.below(SLOTS as u64) as usize;
            match rng.below(10) {
                // Allocate into an empty slot (or free an occupied one).
                0..=4 => match slots[i].take() {
                    Some(b) => {
                        mine -= b.layout.size();
                        release(&shared, b, "free");
                    }
                    None => {
                        let size = random_size(&mut rng);
                        if mine + size > THREAD_BUDGET {
                            continue;
                        }
                        let layout = Layout::from_size_align(size, random_align(&mut rng)).unwrap();
                        // SAFETY: a valid, non-zero-size layout.
                        let p = unsafe { GLOBAL.alloc(layout) };
                        if p.is_null() {
                            c.nulls.fetch_add(1, Ordering::Relaxed);
                            eprintln!("NULL from alloc({size}, align {}) within the budget", layout.align());
                            continue;
                        }
                        if p as usize % layout.align() != 0 {
                            c.corruptions.fetch_add(1, Ordering::Relaxed);
                            eprintln!("MISALIGNED: {p:p} for align {}", layout.align());
                        }
                        let b = Block { p, layout, seed: rng.next() };
                        fill(&b);
                        shared.live_bytes.fetch_add(size, Ordering::Relaxed);
                        c.allocs.fetch_add(1, Ordering::Relaxed);
                        c.bytes.fetch_add(size as u64, Ordering::Relaxed);
                        mine += size;
                        slots[i] = Some(b);
                    }
                },
                // Realloc chains: grow or shrink a live block, keep its
                // contents, refill with a new seed.
                5..=7 => {
                    let Some(b) = slots[i].as_mut() else { continue };
                    let old = b.layout.size();
                    let new = match rng.below(3) {
                        0 => random_size(&mut rng),
                        1 => (old + 1 + rng.below(old as u64 / 2 + 16) as usize).min(MAX_SIZE),
                        _ => (old / 2).max(1),
                    };
                    if mine + new > THREAD_BUDGET + old {
                        continue;
                    }
                    // SAFETY: live block with this layout; new > 0.
                    let q = unsafe { GLOBAL.realloc(b.p, b.layout, new) };
                    if q.is_null() {
                        c.nulls.fetch_add(1, Ordering::Relaxed);
                        eprintln!("NULL from realloc({old} -> {new}) within the budget");
                        continue;
                    }
                    b.p = q;
                    if let Some(at) = verify(b, new.min(old)) {
                        c.corruptions.fetch_add(1, Ordering::Relaxed);
                        report_corruption("realloc", b, at);
                    }
                    if q as usize % b.layout.align() != 0 {
                        c.corruptions.fetch_add(1, Ordering::Relaxed);
                        eprintln!("MISALIGNED after realloc: {q:p} for align {}", b.layout.align());
                    }
                    b.layout = Layout::from_size_align(new, b.layout.align()).unwrap();
                    b.seed = rng.next();
                    fill(b);
                    mine = mine + new - old;
                    if new > old {
                        shared.live_bytes.fetch_add(new - old, Ordering::Relaxed);
                    } else {
                        shared.live_bytes.fetch_sub(old - new, Ordering::Relaxed);
                    }
                    c.reallocs.fetch_add(1, Ordering::Relaxed);
                }
                // Send a block to another thread, which frees it.
                _ => {
                    let Some(b) = slots[i].take() else { continue };
                    mine -= b.layout.size();
                    let to = (id + 1 + rng.below(n as u64 - 1) as usize) % n;
                    shared.inboxes[to].lock().unwrap().push(b);
                    c.sent.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
    }
    for b in slots.into_iter().flatten() {
        release(&shared, b, "final free");
    }
}

fn rss_bytes() -> usize {
    let statm = std::fs::read_to_string("/proc/self/statm").unwrap_or_default();
    let resident: usize = statm.split_whitespace().nth(1).and_then(|v| v.parse().ok()).unwrap_or(0);
    // SAFETY: sysconf takes no pointers.
    resident * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize
}

fn mib(bytes: usize) -> f64 {
    bytes as f64 / (1 << 20) as f64
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, default: u64| -> u64 {
        args.get(i).map(|a| a.parse().unwrap_or_else(|_| panic!("argument {a:?} is not a number"))).unwrap_or(default)
    };
    let seconds = arg(0, 60);
    let threads = arg(1, 4).max(2) as usize;
    let seed = arg(2, 0x5eed);
    println!("soak: {seconds} s, {threads} threads, seed {seed}, sizes 1 B .. 8 MiB, budget {} MiB live per thread",
        THREAD_BUDGET >> 20);

    let shared = Arc::new(Shared {
        inboxes: (0..threads).map(|_| Mutex::new(Vec::new())).collect(),
        stop: AtomicBool::new(false),
        counters: Counters::default(),
        live_bytes: AtomicUsize::new(0),
    });
    let start = Instant::now();
    let handles: Vec<_> = (0..threads)
        .map(|id| {
            let s = Arc::clone(&shared);
            std::thread::spawn(move || worker(s, id, seed))
        })
        .collect();

    // (second, RSS, live bytes), one a second.
    let mut samples: Vec<(u64, usize, usize)> = Vec::new();
    let end = start + Duration::from_secs(seconds);
    let mut next_print = 0;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_secs(1));
        let t = start.elapsed().as_secs();
        let rss = rss_bytes();
        let live = shared.live_bytes.load(Ordering::Relaxed);
        samples.push((t, rss, live));
        if t >= next_print {
            let c = &shared.counters;
            let h = buddyslab::stats::snapshot();
            println!(
                "  t={t:>5}s  RSS {:>8.1} MiB  live {:>7.1} MiB  chunks {:>7.1} MiB, free pages {:>7.1} MiB  large {:>6.1} MiB  allocs {:>11}  reallocs {:>10}  cross-thread {:>9}  corruptions {}",
                mib(rss),
                mib(live),
                mib(h.chunk_bytes()),
                mib(h.free_pages * buddyslab::internals::os::PAGE_SIZE),
                mib(h.large_bytes),
                c.allocs.load(Ordering::Relaxed),
                c.reallocs.load(Ordering::Relaxed),
                c.sent.load(Ordering::Relaxed),
                c.corruptions.load(Ordering::Relaxed)
            );
            next_print = t + (seconds / 20).max(1);
        }
    }
    shared.stop.store(true, Ordering::Relaxed);
    for h in handles {
        h.join().expect("worker panicked");
    }
    for inbox in &shared.inboxes {
        for b in std::mem::take(&mut *inbox.lock().unwrap()) {
            release(&shared, b, "final cross-thread free");
        }
    }
    let elapsed = start.elapsed().as_secs_f64();
    let h = buddyslab::stats::snapshot();
    let buddyinfo_at_end = h.buddy_free;
    let rss_before_trim = rss_bytes();
    buddyslab::heap::trim();
    let rss_after_trim = rss_bytes();
    let snapshot = buddyslab::stats::snapshot();
    println!("  buddyinfo after trim (free blocks per order 0..10): {:?}", snapshot.buddy_free);

    // Growth: compare the peaks of the second and the last quarter of the
    // run (the first quarter is warm-up). Live bytes are capped by the
    // budget, so a heap that keeps growing shows as a rising RSS peak.
    let quarter = |q: usize| -> usize {
        let n = samples.len();
        samples[n * q / 4..n * (q + 1) / 4].iter().map(|s| s.1).max().unwrap_or(0)
    };
    let (early_peak, late_peak) = if samples.len() >= 8 { (quarter(1), quarter(3)) } else { (0, 0) };
    let peak = samples.iter().map(|s| s.1).max().unwrap_or(0);
    let budget = THREAD_BUDGET * threads;
    let c = &shared.counters;
    let corruptions = c.corruptions.load(Ordering::Relaxed);
    let nulls = c.nulls.load(Ordering::Relaxed);
    let growth_bad = late_peak > early_peak + early_peak / 4 + (16 << 20);
    let peak_bad = peak > 3 * budget + (64 << 20);

    println!("soak report");
    println!("  ran            {elapsed:.0} s on {threads} threads (seed {seed})");
    println!("  allocations    {} ({:.1} GiB requested)", c.allocs.load(Ordering::Relaxed),
        c.bytes.load(Ordering::Relaxed) as f64 / (1u64 << 30) as f64);
    println!("  reallocs       {}", c.reallocs.load(Ordering::Relaxed));
    println!("  frees          {} ({} of them cross-thread)", c.frees.load(Ordering::Relaxed), c.sent.load(Ordering::Relaxed));
    println!("  corruptions    {corruptions}");
    println!("  null returns   {nulls}");
    println!("  RSS peak       {:.1} MiB (live-bytes budget {:.0} MiB)", mib(peak), mib(budget));
    println!("  RSS peak, 2nd quarter {:.1} MiB, last quarter {:.1} MiB", mib(early_peak), mib(late_peak));
    println!("  buddyinfo after the workers freed their blocks: {buddyinfo_at_end:?}");
    println!("  RSS at the end {:.1} MiB, after free-all and trim {:.1} MiB", mib(rss_before_trim), mib(rss_after_trim));
    println!("  heap after trim: {:.1} MiB in chunks, {} KiB in use, {} large blocks",
        mib(snapshot.chunk_bytes()), snapshot.in_use_bytes() >> 10, snapshot.nr_large);
    let mut failed = false;
    if corruptions > 0 {
        println!("FAILED: {corruptions} corrupted or misaligned blocks");
        failed = true;
    }
    if nulls > 0 {
        println!("FAILED: {nulls} null returns within the budget");
        failed = true;
    }
    if growth_bad {
        println!("FAILED: RSS kept growing (last-quarter peak more than 1.25 x the second quarter's + 16 MiB)");
        failed = true;
    }
    if peak_bad {
        println!("FAILED: RSS peak above 3 x the live-bytes budget + 64 MiB");
        failed = true;
    }
    if failed {
        std::process::exit(1);
    }
    println!("soak: passed");
}
