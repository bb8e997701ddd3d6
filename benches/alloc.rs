//! Criterion benches: `buddyslab::BuddySlab` against `std::alloc::System`
//! (glibc's malloc), both called through the `GlobalAlloc` trait. Neither is
//! this binary's global allocator, so the benches' own bookkeeping (criterion,
//! channels, `Vec`s) stays out of the allocator under test.
//!
//! - `malloc_free_pair/{allocator}/{size}`: one alloc and its dealloc, 16..512 B
//! - `batch_1000x64B/{allocator}`: 1000 allocs, then 1000 deallocs
//! - `realloc_growth_16B_to_64KiB/{allocator}`: one block doubled by realloc
//! - `cross_thread_free_1000x64B/{allocator}`: this thread allocates batches, a
//!   second thread frees them (two batches in flight, so both run at once)
//!
//! ```text
//! cargo bench --bench alloc                        # the whole suite, a couple of minutes
//! cargo bench --bench alloc -- malloc_free_pair    # a filter
//! ```

use std::alloc::{handle_alloc_error, GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::ptr::null_mut;
use std::sync::mpsc::{sync_channel, Receiver, SyncSender};
use std::thread;
use std::time::Duration;

use buddyslab::BuddySlab;
use criterion::measurement::WallTime;
use criterion::{BenchmarkGroup, BenchmarkId, Criterion, Throughput};

static BUDDYSLAB: BuddySlab = BuddySlab;
static SYSTEM: System = System;

const PAIR_SIZES: [usize; 4] = [16, 64, 256, 512];
const BATCH: usize = 1000;
const BATCH_SIZE: usize = 64;
const GROWTH_FROM: usize = 16;
const GROWTH_TO: usize = 64 * 1024;
/// Alignment of every request: a `Box<u64>`'s, so the plain (unaligned) path is measured.
const ALIGN: usize = 8;

fn layout(size: usize) -> Layout {
    Layout::from_size_align(size, ALIGN).expect("valid layout")
}

/// Runs `bench` once per allocator, in the same group, so the report puts them side by side.
fn each_allocator(
    group: &mut BenchmarkGroup<'_, WallTime>,
    bench: fn(&mut BenchmarkGroup<'_, WallTime>, &'static str, &'static (dyn GlobalAlloc + Sync)),
) {
    bench(group, "buddyslab", &BUDDYSLAB);
    bench(group, "system", &SYSTEM);
}

fn checked_alloc(allocator: &dyn GlobalAlloc, layout: Layout) -> *mut u8 {
    // SAFETY: every layout built here has a non-zero size.
    let p = unsafe { allocator.alloc(layout) };
    if p.is_null() {
        handle_alloc_error(layout);
    }
    p
}

fn malloc_free_pair(c: &mut Criterion) {
    let mut group = c.benchmark_group("malloc_free_pair");
    group.throughput(Throughput::Elements(1));
    for size in PAIR_SIZES {
        for (name, allocator) in [
            ("buddyslab", &BUDDYSLAB as &(dyn GlobalAlloc + Sync)),
            ("system", &SYSTEM),
        ] {
            let l = layout(size);
            group.bench_with_input(BenchmarkId::new(name, size), &l, |b, &l| {
                b.iter(|| {
                    let p = checked_alloc(allocator, l);
                    // SAFETY: `p` came from this allocator with layout `l` and is freed once.
                    unsafe { allocator.dealloc(black_box(p), l) };
                })
            });
        }
    }
    group.finish();
}

fn batch(c: &mut Criterion) {
    let mut group = c.benchmark_group(format!("batch_{BATCH}x{BATCH_SIZE}B"));
    group.throughput(Throughput::Elements(BATCH as u64));
    each_allocator(&mut group, |group, name, allocator| {
        let l = layout(BATCH_SIZE);
        let mut pointers = vec![null_mut::<u8>(); BATCH];
        group.bench_function(name, |b| {
            b.iter(|| {
                for p in pointers.iter_mut() {
                    *p = checked_alloc(allocator, l);
                }
                for &p in black_box(&pointers).iter() {
                    // SAFETY: each pointer came from this allocator with layout `l`,
                    // and each is freed once.
                    unsafe { allocator.dealloc(p, l) };
                }
            })
        });
    });
    group.finish();
}

fn realloc_growth(c: &mut Criterion) {
    let mut group = c.benchmark_group("realloc_growth_16B_to_64KiB");
    group.throughput(Throughput::Elements(
        (GROWTH_TO / GROWTH_FROM).trailing_zeros() as u64, // reallocs per iteration
    ));
    each_allocator(&mut group, |group, name, allocator| {
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut size = GROWTH_FROM;
                let mut p = checked_alloc(allocator, layout(size));
                // SAFETY: `p` holds `size` bytes.
                unsafe { p.write(1) };
                while size < GROWTH_TO {
                    let new_size = size * 2;
                    // SAFETY: `p` came from this allocator with `layout(size)`;
                    // `new_size` is non-zero and fits `isize` when rounded to ALIGN.
                    p = unsafe { allocator.realloc(p, layout(size), new_size) };
                    if p.is_null() {
                        handle_alloc_error(layout(new_size));
                    }
                    // SAFETY: `p` now holds `new_size` bytes, and the first byte
                    // was kept by realloc.
                    unsafe {
                        debug_assert_eq!(p.read(), 1);
                        p.add(new_size - 1).write(1);
                    }
                    size = new_size;
                }
                // SAFETY: `p` came from this allocator with `layout(size)`, freed once.
                unsafe { allocator.dealloc(black_box(p), layout(size)) };
            })
        });
    });
    group.finish();
}

/// Batch of pointers that crosses threads (raw pointers are not `Send`).
struct Batch(Vec<usize>);

fn cross_thread_free(c: &mut Criterion) {
    let mut group = c.benchmark_group(format!("cross_thread_free_{BATCH}x{BATCH_SIZE}B"));
    group.throughput(Throughput::Elements(BATCH as u64));
    each_allocator(&mut group, |group, name, allocator| {
        let l = layout(BATCH_SIZE);
        let (full_tx, full_rx): (SyncSender<Batch>, Receiver<Batch>) = sync_channel(2);
        let (empty_tx, empty_rx): (SyncSender<Batch>, Receiver<Batch>) = sync_channel(2);
        // Two batches in flight: this thread fills one while the other is being freed.
        for _ in 0..2 {
            empty_tx.send(Batch(Vec::with_capacity(BATCH))).expect("freeing thread alive");
        }
        let freer = thread::spawn(move || {
            for mut batch in full_rx {
                for &p in &batch.0 {
                    // SAFETY: each pointer came from `allocator` with layout `l`,
                    // was sent here once and is freed once.
                    unsafe { allocator.dealloc(p as *mut u8, l) };
                }
                batch.0.clear();
                if empty_tx.send(batch).is_err() {
                    break;
                }
            }
        });
        group.bench_function(name, |b| {
            b.iter(|| {
                let mut batch = empty_rx.recv().expect("freeing thread alive");
                for _ in 0..BATCH {
                    batch.0.push(checked_alloc(allocator, l) as usize);
                }
                full_tx.send(batch).expect("freeing thread alive");
            })
        });
        drop(full_tx); // the freeing thread frees what is in flight, then ends
        freer.join().expect("freeing thread panicked");
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_millis(1500))
        .sample_size(50)
}

// What `criterion_group!` + `criterion_main!` expand to, written out because
// the macro's generated `pub fn` cannot carry the doc the workspace lints ask for.
fn main() {
    let mut criterion = config().configure_from_args();
    malloc_free_pair(&mut criterion);
    batch(&mut criterion);
    realloc_growth(&mut criterion);
    cross_thread_free(&mut criterion);
    criterion.final_summary();
}
