//! Hostile operation sequences against the heap (`buddyslab::heap`, the C
//! API's core), checked against a model of the live blocks: every block is
//! non-null, aligned as asked, at least as big as asked (usable size), does
//! not overlap any other live block, reads as zero after `calloc`, and keeps
//! its contents across `realloc` and until it is freed.
//!
//! Three ways in:
//! - `corpus_seeds`: the regression seeds in `tests/fuzz_corpus/heap_seeds.txt`,
//!   each driving a fixed-length pseudo-random sequence (runs in `cargo test`);
//! - `model_sequences`: proptest sequences, which shrink a failure to a
//!   short one and persist it in `tests/heap_fuzz.proptest-regressions`
//!   (runs in `cargo test`; `HEAP_FUZZ_CASES=n` for more cases);
//! - `fuzz_for_a_while` (ignored): fresh seeds for `HEAP_FUZZ_SECONDS`
//!   (default 60), printing any failing seed to add to the corpus:
//!   `HEAP_FUZZ_SECONDS=3600 cargo test --release --test heap_fuzz -- --ignored --nocapture`.
//!
//! This binary's global allocator is buddyslab too, so the model's own
//! collections churn the same heap.

use buddyslab::heap;
use buddyslab::BuddySlab;
use proptest::prelude::*;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

#[global_allocator]
static GLOBAL: BuddySlab = BuddySlab;

/// Requests at most this big (the soak's range too).
const MAX_SIZE: usize = 8 << 20;
/// Live bytes the model lets a sequence hold; over it, frees win.
const BUDGET: usize = 96 << 20;

/// One operation; indices pick a live block modulo the live count.
#[derive(Clone, Debug)]
enum Op {
    Malloc(usize),
    Calloc(usize, usize),
    Aligned(u32, usize),
    Realloc(usize, usize),
    ReallocAligned(usize, usize),
    Free(usize),
    UsableSize(usize),
}

/// Sizes where tiers and classes change, and their neighbours.
const EDGES: &[usize] = &[
    0, 1, 8, 15, 16, 17, 24, 127, 128, 129, 255, 256, 257, 1023, 1024, 1025, 4095, 4096, 4097, 8191, 8192,
    32767, 32768, 32769, 65536, 131071, 131072, 131073, 1 << 20, (4 << 20) - 1, 4 << 20, (4 << 20) + 1, 8 << 20,
];

#[path = "common/rng.rs"]
mod rng;
use rng::Rng;

/// What the fuzz target draws, on top of the shared generator.
trait Draw {
    fn size(&mut self) -> usize;
    fn op(&mut self) -> Op;
}

impl Draw for Rng {
    fn size(&mut self) -> usize {
        match self.below(10) {
            0..=2 => EDGES[self.below(EDGES.len() as u64) as usize],
            3..=7 => {
                let bits = 1 + self.below(12);
                self.below(1 << bits) as usize
            }
            _ => (self.below(MAX_SIZE as u64 + 1) >> self.below(8)) as usize,
        }
    }
    fn op(&mut self) -> Op {
        let i = self.next() as usize;
        match self.below(20) {
            0..=6 => Op::Malloc(self.size()),
            7 => Op::Calloc(1 + self.below(64) as usize, self.size() / 32),
            8..=9 => Op::Aligned(self.below(23) as u32, self.size()),
            10..=12 => Op::Realloc(i, self.size()),
            13 => Op::ReallocAligned(i, self.size().max(1)),
            14 => Op::UsableSize(i),
            _ => Op::Free(i),
        }
    }
}

/// A live block in the model.
struct Block {
    size: usize,
    align: usize,
    seed: u8,
}

/// Offsets written and checked: the first and last 32 bytes and one byte
/// every 3 x 4093 bytes between (a different offset in each page it touches;
/// every third page, to keep page faults of 8 MiB blocks affordable).
fn checked_offsets(size: usize) -> impl Iterator<Item = usize> {
    let head = 0..size.min(32);
    let middle = (32..size.saturating_sub(32)).step_by(4093 * 3);
    let tail = size.saturating_sub(32).max(size.min(32))..size;
    head.chain(middle).chain(tail)
}

fn byte(seed: u8, i: usize) -> u8 {
    seed.wrapping_add((i as u8).wrapping_mul(31)) ^ (i >> 8) as u8
}

/// The model: live blocks by address.
#[derive(Default)]
struct Model {
    live: BTreeMap<usize, Block>,
    bytes: usize,
    next_seed: u8,
}

impl Model {
    fn nth(&self, i: usize) -> Option<usize> {
        if self.live.is_empty() {
            return None;
        }
        self.live.keys().nth(i % self.live.len()).copied()
    }

    /// Checks a fresh block and records it, filling its contents.
    fn add(&mut self, p: *mut u8, size: usize, align: usize, zeroed: bool) -> Result<(), String> {
        if p.is_null() {
            return Err(format!("null for {size} bytes aligned {align}"));
        }
        let a = p as usize;
        if a % align != 0 {
            return Err(format!("{p:p} for {size} bytes is not aligned to {align}"));
        }
        let usable = heap::usable_size(p);
        if usable < size {
            return Err(format!("usable size {usable} < {size} at {p:p}"));
        }
        let end = a + size.max(1);
        if let Some((&prev, b)) = self.live.range(..=a).next_back() {
            if prev + b.size.max(1) > a {
                return Err(format!("{p:p} (+{size}) overlaps the live block {prev:#x} (+{})", b.size));
            }
        }
        if let Some((&next, b)) = self.live.range(a..).next() {
            if next < end {
                return Err(format!("{p:p} (+{size}) overlaps the live block {next:#x} (+{})", b.size));
            }
        }
        if zeroed {
            for i in checked_offsets(size) {
                // SAFETY: inside the fresh block.
                let v = unsafe { *p.add(i) };
                if v != 0 {
                    return Err(format!("calloc block {p:p} has {v:#x} at offset {i}"));
                }
            }
        }
        self.next_seed = self.next_seed.wrapping_add(97);
        let b = Block { size, align, seed: self.next_seed };
        for i in checked_offsets(size) {
            // SAFETY: inside the block.
            unsafe { *p.add(i) = byte(b.seed, i) };
        }
        self.bytes += size;
        self.live.insert(a, b);
        Ok(())
    }

    /// Checks the first `upto` bytes of the block at `a` against the model.
    fn verify(&self, a: usize, upto: usize) -> Result<(), String> {
        let b = &self.live[&a];
        for i in checked_offsets(b.size).filter(|&i| i < upto) {
            // SAFETY: inside the live block.
            let v = unsafe { *(a as *const u8).add(i) };
            if v != byte(b.seed, i) {
                return Err(format!(
                    "block {a:#x} (+{}) changed at offset {i}: {v:#x}, expected {:#x}",
                    b.size,
                    byte(b.seed, i)
                ));
            }
        }
        Ok(())
    }

    fn remove(&mut self, a: usize) -> Block {
        let b = self.live.remove(&a).expect("live block");
        self.bytes -= b.size;
        b
    }

    fn apply(&mut self, op: &Op) -> Result<(), String> {
        let over = self.bytes > BUDGET;
        match *op {
            Op::Malloc(s) if !over => self.add(heap::malloc(s), s, 16, false),
            Op::Calloc(n, s) if !over => self.add(heap::calloc(n, s), n * s, 16, true),
            Op::Aligned(log, s) if !over => self.add(heap::aligned_alloc(1 << log, s), s, (1usize << log).max(16), false),
            Op::Realloc(i, s) | Op::ReallocAligned(i, s) if !over || s == 0 => {
                let Some(a) = self.nth(i) else { return Ok(()) };
                self.verify(a, usize::MAX)?;
                let old = self.remove(a);
                let aligned = matches!(op, Op::ReallocAligned(..));
                // SAFETY: a live block of this heap.
                let q = unsafe {
                    if aligned {
                        heap::realloc_aligned(a as *mut u8, s, old.align)
                    } else {
                        heap::realloc(a as *mut u8, s)
                    }
                };
                if s == 0 && !aligned {
                    return if q.is_null() { Ok(()) } else { Err(format!("realloc(p, 0) returned {q:p}")) };
                }
                let align = if aligned { old.align } else { 16 };
                // Check the kept prefix before `add` refills the block.
                let keep = old.size.min(s);
                for i in checked_offsets(old.size).filter(|&i| i < keep) {
                    if q.is_null() {
                        break;
                    }
                    // SAFETY: inside the new block's first `keep` bytes.
                    let v = unsafe { *q.add(i) };
                    if v != byte(old.seed, i) {
                        return Err(format!("realloc {a:#x} -> {q:p} ({} -> {s}) lost byte {i}", old.size));
                    }
                }
                self.add(q, s, align, false)
            }
            Op::UsableSize(i) => {
                let Some(a) = self.nth(i) else { return Ok(()) };
                let size = self.live[&a].size;
                let usable = heap::usable_size(a as *mut u8);
                if usable < size {
                    return Err(format!("usable size of {a:#x} is {usable} < {size}"));
                }
                Ok(())
            }
            Op::Free(i) | Op::Realloc(i, _) | Op::ReallocAligned(i, _) | Op::Malloc(i) | Op::Calloc(i, _) | Op::Aligned(_, i) => {
                let Some(a) = self.nth(i) else { return Ok(()) };
                self.verify(a, usize::MAX)?;
                self.remove(a);
                // SAFETY: a live block of this heap, dropped from the model.
                unsafe { heap::free(a as *mut u8) };
                Ok(())
            }
        }
    }

    /// Frees everything, checking contents.
    fn drain(&mut self) -> Result<(), String> {
        while let Some((&a, _)) = self.live.iter().next() {
            self.verify(a, usize::MAX)?;
            self.remove(a);
            // SAFETY: a live block of this heap.
            unsafe { heap::free(a as *mut u8) };
        }
        Ok(())
    }
}

/// Runs `nops` operations from `seed`; the error names the step.
fn run_seed(seed: u64, nops: usize) -> Result<(), String> {
    let mut rng = Rng(seed | 1);
    let mut model = Model::default();
    for step in 0..nops {
        let op = rng.op();
        model.apply(&op).map_err(|e| format!("seed {seed:#x}, step {step}, {op:?}: {e}"))?;
    }
    model.drain().map_err(|e| format!("seed {seed:#x}, final free: {e}"))
}

fn corpus() -> Vec<u64> {
    let text = include_str!("fuzz_corpus/heap_seeds.txt");
    text.lines()
        .map(|l| l.split('#').next().unwrap_or("").trim())
        .filter(|l| !l.is_empty())
        .map(|l| u64::from_str_radix(l.trim_start_matches("0x"), 16).unwrap_or_else(|_| panic!("bad seed line {l:?}")))
        .collect()
}

#[test]
fn corpus_seeds() {
    let seeds = corpus();
    assert!(!seeds.is_empty(), "the seed corpus is empty");
    for seed in seeds {
        if let Err(e) = run_seed(seed, 2000) {
            panic!("{e}");
        }
    }
}

fn op_strategy() -> impl Strategy<Value = Op> {
    let size = prop_oneof![
        3 => prop::sample::select(EDGES),
        5 => 0usize..4096,
        2 => 0usize..=MAX_SIZE,
    ];
    prop_oneof![
        6 => size.clone().prop_map(Op::Malloc),
        1 => (1usize..64, 0usize..8192).prop_map(|(n, s)| Op::Calloc(n, s)),
        2 => (0u32..23, size.clone()).prop_map(|(a, s)| Op::Aligned(a, s)),
        3 => (any::<usize>(), size.clone()).prop_map(|(i, s)| Op::Realloc(i, s)),
        1 => (any::<usize>(), size.prop_map(|s| s.max(1))).prop_map(|(i, s)| Op::ReallocAligned(i, s)),
        1 => any::<usize>().prop_map(Op::UsableSize),
        5 => any::<usize>().prop_map(Op::Free),
    ]
}

fn cases() -> u32 {
    std::env::var("HEAP_FUZZ_CASES").ok().and_then(|v| v.parse().ok()).unwrap_or(32)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), ..ProptestConfig::default() })]

    #[test]
    fn model_sequences(ops in prop::collection::vec(op_strategy(), 1..400)) {
        let mut model = Model::default();
        for (step, op) in ops.iter().enumerate() {
            if let Err(e) = model.apply(op) {
                prop_assert!(false, "step {}, {:?}: {}", step, op, e);
            }
        }
        if let Err(e) = model.drain() {
            prop_assert!(false, "final free: {}", e);
        }
    }
}

/// Fresh seeds for `HEAP_FUZZ_SECONDS`; prints a summary, and the seed of
/// any failure (add it to `tests/fuzz_corpus/heap_seeds.txt`).
#[test]
#[ignore = "runs for HEAP_FUZZ_SECONDS (default 60); see the module comment"]
fn fuzz_for_a_while() {
    let seconds: u64 = std::env::var("HEAP_FUZZ_SECONDS").ok().and_then(|v| v.parse().ok()).unwrap_or(60);
    let start = Instant::now();
    let mut seed = start.elapsed().as_nanos() as u64
        ^ std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1);
    let (mut sequences, mut ops) = (0u64, 0u64);
    while start.elapsed() < Duration::from_secs(seconds) {
        seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
        if let Err(e) = run_seed(seed, 4000) {
            panic!("FAILED after {sequences} sequences: {e}\nadd `{seed:#x}` to tests/fuzz_corpus/heap_seeds.txt");
        }
        sequences += 1;
        ops += 4000;
    }
    println!("heap fuzz: {sequences} sequences, {ops} operations in {} s, no failure", start.elapsed().as_secs());
}
