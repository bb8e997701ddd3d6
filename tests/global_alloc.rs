//! buddyslab as this test binary's `#[global_allocator]`: std workloads on
//! many threads, over-aligned layouts, and a stress test that hands objects
//! between threads and checks their contents.

use buddyslab::BuddySlab;
use std::alloc::{GlobalAlloc, Layout};
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::mpsc;
use std::sync::{Arc, Barrier, Mutex};
use std::thread;

#[global_allocator]
static GLOBAL: BuddySlab = BuddySlab;

/// Held by tests that read the shared caches' counters and by the test
/// that allocates sizes of every class, so the counts are not moved
/// underneath the reader.
static COUNTERS: Mutex<()> = Mutex::new(());

#[path = "common/rng.rs"]
mod rng;
use rng::Rng;

#[test]
fn allocations_really_come_from_buddyslab() {
    let v: Vec<u8> = vec![7; 1000];
    let b = Box::new([0u64; 64]);
    let big = vec![1u8; 3 << 20];
    // usable_size stops the process for a pointer buddyslab did not hand
    // out, so reaching the asserts proves ownership (the secure build's
    // blocks are its layer's, with its own usable size).
    #[cfg(not(feature = "secure"))]
    use buddyslab::heap::usable_size;
    #[cfg(feature = "secure")]
    use buddyslab::heap::secure::usable_size;
    assert!(usable_size(v.as_ptr() as *mut u8) >= 1000);
    assert!(usable_size(&*b as *const _ as *mut u8) >= 512);
    assert!(usable_size(big.as_ptr() as *mut u8) >= 3 << 20);
    let s = buddyslab::stats::snapshot();
    assert!(s.managed_pages > 0);
    assert!(s.nr_large >= 1);
}

#[test]
fn collections_and_strings_on_many_threads() {
    let handles: Vec<_> = (0..8u64)
        .map(|t| {
            thread::spawn(move || {
                let mut rng = Rng(0x9e37_79b9_7f4a_7c15 ^ t);
                let mut map: HashMap<String, Vec<u64>> = HashMap::new();
                let mut tree: BTreeMap<u64, String> = BTreeMap::new();
                let mut dq: VecDeque<Box<[u8]>> = VecDeque::new();
                for i in 0..20_000u64 {
                    let key = format!("t{t}-k{}", rng.below(5000));
                    map.entry(key.clone()).or_default().push(i);
                    tree.insert(rng.below(100_000), key.repeat(1 + (i % 7) as usize));
                    dq.push_back(vec![(i % 251) as u8; (rng.below(3000) + 1) as usize].into_boxed_slice());
                    if dq.len() > 300 {
                        let b = dq.pop_front().unwrap();
                        assert!(b.iter().all(|&x| x == b[0]));
                    }
                    if i % 1000 == 0 {
                        map.retain(|_, v| v.len() % 3 != 0);
                    }
                }
                let total: usize = map.values().map(|v| v.len()).sum();
                let chars: usize = tree.values().map(|s| s.len()).sum();
                (total, chars)
            })
        })
        .collect();
    for h in handles {
        let (total, chars) = h.join().unwrap();
        assert!(total > 0 && chars > 0);
    }
}

#[test]
fn channels_move_buffers_between_threads() {
    let (tx, rx) = mpsc::channel::<Vec<u32>>();
    let producers: Vec<_> = (0..4u32)
        .map(|p| {
            let tx = tx.clone();
            thread::spawn(move || {
                for i in 0..5_000u32 {
                    let n = (i * 7 + p) % 700 + 1;
                    tx.send((0..n).map(|x| x ^ (p << 24) ^ i).collect()).unwrap();
                }
            })
        })
        .collect();
    drop(tx);
    let consumer = thread::spawn(move || {
        let mut count = 0;
        for v in rx {
            let (p, i) = (v[0] >> 24, v[0] & 0xff_ffff);
            for (x, &got) in v.iter().enumerate() {
                assert_eq!(got, x as u32 ^ (p << 24) ^ i, "buffer contents changed in flight");
            }
            count += 1;
        }
        count
    });
    for p in producers {
        p.join().unwrap();
    }
    assert_eq!(consumer.join().unwrap(), 20_000);
}

#[test]
fn large_vectors_grow_and_shrink() {
    let mut v: Vec<u64> = Vec::new();
    for i in 0..(8u64 << 20) / 8 * 4 {
        v.push(i);
    }
    assert!(v.iter().enumerate().step_by(4099).all(|(i, &x)| x == i as u64));
    v.truncate(1000);
    v.shrink_to_fit();
    assert_eq!(v.len(), 1000);
    assert_eq!(v[999], 999);
    let zeroed = vec![0u8; 64 << 20];
    assert!(zeroed.iter().step_by(4096).all(|&b| b == 0));
}

#[test]
fn over_aligned_layouts() {
    #[repr(align(4096))]
    struct Page([u8; 4096]);
    #[repr(align(64))]
    struct Line(#[allow(dead_code)] [u8; 24]);
    let pages: Vec<Box<Page>> = (0..50).map(|_| Box::new(Page([3; 4096]))).collect();
    assert!(pages.iter().all(|p| (&**p as *const Page as usize) % 4096 == 0 && p.0[4095] == 3));
    let lines: Vec<Box<Line>> = (0..5000).map(|_| Box::new(Line([1; 24]))).collect();
    assert!(lines.iter().all(|l| (&**l as *const Line as usize) % 64 == 0));
    for shift in 4..=23 {
        let align = 1usize << shift;
        for size in [1, align - 1, align, align * 2 + 8] {
            let layout = Layout::from_size_align(size, align).unwrap();
            // SAFETY: non-zero size layout; freed with the same layout.
            unsafe {
                let p = GLOBAL.alloc(layout);
                assert!(!p.is_null());
                assert_eq!(p as usize % align, 0);
                p.write_bytes(0x5a, size);
                let q = GLOBAL.realloc(p, layout, size * 3);
                assert!(!q.is_null());
                assert_eq!(q as usize % align, 0, "realloc lost alignment {align}");
                assert!(std::slice::from_raw_parts(q, size).iter().all(|&b| b == 0x5a));
                GLOBAL.dealloc(q, Layout::from_size_align(size * 3, align).unwrap());
                let z = GLOBAL.alloc_zeroed(layout);
                assert_eq!(z as usize % align, 0);
                assert!(std::slice::from_raw_parts(z, size).iter().all(|&b| b == 0));
                GLOBAL.dealloc(z, layout);
            }
        }
    }
}

/// Threads allocate objects of random size, stamp them with owner and
/// sequence, and pass them to random other threads through mailboxes;
/// receivers check every byte before freeing. Any overlap, lost write or
/// double hand-out shows as a wrong byte.
#[test]
fn stress_cross_thread_handoff_with_content_checks() {
    const THREADS: usize = 6;
    const ROUNDS: usize = 30_000;
    let _serial = COUNTERS.lock().unwrap_or_else(|e| e.into_inner());
    struct Obj {
        ptr: *mut u8,
        len: usize,
        tag: u8,
    }
    // SAFETY: the object is owned by whoever holds it; it is moved, not shared.
    unsafe impl Send for Obj {}
    let boxes: Arc<Vec<Mutex<Vec<Obj>>>> = Arc::new((0..THREADS).map(|_| Mutex::new(Vec::new())).collect());
    let barrier = Arc::new(Barrier::new(THREADS));
    let handles: Vec<_> = (0..THREADS)
        .map(|t| {
            let boxes = boxes.clone();
            let barrier = barrier.clone();
            thread::spawn(move || {
                let mut rng = Rng(0xdead_beef ^ ((t as u64 + 1) * 0x1234_5678));
                barrier.wait();
                let check_and_free = |o: Obj| {
                    // SAFETY: `o` was allocated with `len` bytes and filled with `tag`.
                    unsafe {
                        let s = std::slice::from_raw_parts(o.ptr, o.len);
                        assert!(s.iter().all(|&b| b == o.tag), "object contents corrupted");
                        GLOBAL.dealloc(o.ptr, Layout::from_size_align(o.len, 8).unwrap());
                    }
                };
                for i in 0..ROUNDS {
                    let len = match rng.below(100) {
                        0..=79 => rng.below(256) + 1,
                        80..=97 => rng.below(16 << 10) + 1,
                        _ => rng.below(400 << 10) + 1,
                    } as usize;
                    let tag = (t * 31 + i) as u8;
                    // SAFETY: non-zero size.
                    let ptr = unsafe { GLOBAL.alloc(Layout::from_size_align(len, 8).unwrap()) };
                    assert!(!ptr.is_null());
                    assert_eq!(ptr as usize % 16, 0);
                    // SAFETY: `len` fresh bytes.
                    unsafe { ptr.write_bytes(tag, len) };
                    let to = rng.below(THREADS as u64) as usize;
                    boxes[to].lock().unwrap().push(Obj { ptr, len, tag });
                    if i % 8 == 0 {
                        let mine = std::mem::take(&mut *boxes[t].lock().unwrap());
                        mine.into_iter().for_each(check_and_free);
                    }
                }
                barrier.wait();
                let mine = std::mem::take(&mut *boxes[t].lock().unwrap());
                mine.into_iter().for_each(check_and_free);
            })
        })
        .collect();
    for h in handles {
        h.join().unwrap();
    }
    for node in buddyslab::internals::slab::nodes() {
        node.iter().for_each(|cache| cache.lock().check());
    }
    buddyslab::internals::mm::ZONE.lock().check();
    buddyslab::internals::ledger::vma::TREE.lock().check();
}

/// Memory handed out uninitialised never carries the free mark. A slab
/// that went back to the buddy allocator held the free mark in the second
/// word of each of its objects; a page run that reused its pages handed
/// those bytes to the program, and `realloc` copies a block's whole usable
/// size, so shrinking a page run of which the program wrote only a header
/// into a slab object put the mark into the second word of a live object,
/// whose `free` then stopped the process with "double free detected".
/// Threads churn small objects of many classes (slabs fill, empty and go
/// back to the buddy) and one trims in a loop (bins flush, CPU depots
/// drain, empty slabs go back); the checker churns a class itself, then
/// takes page runs, scans them for the mark before writing anything,
/// writes a header and shrinks them with `realloc`.
#[test]
fn uninitialised_memory_never_carries_the_free_mark() {
    use std::sync::atomic::{AtomicBool, Ordering};
    const CHURNERS: usize = 3;
    const ROUNDS: usize = 300;
    const CHECKS_PER_ROUND: usize = 8;
    let _serial = COUNTERS.lock().unwrap_or_else(|e| e.into_inner());
    /// Fills a few slabs of one random class with tagged objects, checks
    /// and frees them all.
    fn churn(rng: &mut Rng, round: usize) {
        let size = (rng.below(2048) + 1) as usize;
        let layout = Layout::from_size_align(size, 8).unwrap();
        let held: Vec<*mut u8> = (0..(128 << 10) / size + 1)
            .map(|_| {
                // SAFETY: a non-zero size.
                let p = unsafe { GLOBAL.alloc(layout) };
                assert!(!p.is_null());
                // SAFETY: `size` fresh bytes.
                unsafe { p.write_bytes(round as u8, size) };
                p
            })
            .collect();
        for p in held {
            // SAFETY: allocated above with this layout and filled.
            unsafe {
                let s = std::slice::from_raw_parts(p, size);
                assert!(s.iter().all(|&b| b == round as u8), "object contents corrupted");
                GLOBAL.dealloc(p, layout);
            }
        }
    }
    let stop = Arc::new(AtomicBool::new(false));
    let mut helpers: Vec<_> = (0..CHURNERS)
        .map(|t| {
            let stop = stop.clone();
            thread::spawn(move || {
                let mut rng = Rng(0x5eed ^ ((t as u64 + 1) * 0x9e37_79b9));
                let mut round = 0;
                while !stop.load(Ordering::Relaxed) {
                    churn(&mut rng, round);
                    round += 1;
                }
            })
        })
        .collect();
    let trim_stop = stop.clone();
    helpers.push(thread::spawn(move || {
        while !trim_stop.load(Ordering::Relaxed) {
            buddyslab::heap::trim();
            thread::yield_now();
        }
    }));
    // The checker runs on a thread of its own, which returns what it
    // cached before the lock is released: objects left in this thread's
    // bins would move the counters other tests read.
    let failure = thread::spawn(|| {
        let mark = buddyslab::internals::slab::link::free_mark();
        let mut rng = Rng(0xfeed_f00d);
        for round in 0..ROUNDS {
            churn(&mut rng, round);
            for check in 0..CHECKS_PER_ROUND {
                // A page run: above the largest slab class, below the mmap
                // threshold.
                let len = (33 << 10) + rng.below(64 << 10) as usize;
                let layout = Layout::from_size_align(len, 8).unwrap();
                // SAFETY: a non-zero size.
                let p = unsafe { GLOBAL.alloc(layout) };
                assert!(!p.is_null());
                // SAFETY: `len` bytes, read before anything is written.
                let words = unsafe { std::slice::from_raw_parts(p.cast::<usize>(), len / 8) };
                // A mark is an object's: the word after an object start
                // holding that object's mark.
                let base = p as usize;
                let marked = words
                    .iter()
                    .enumerate()
                    .skip(1)
                    .position(|(i, &w)| w == buddyslab::internals::slab::link::mark_of((base + (i - 1) * 8) as *mut u8, mark));
                if let Some(at) = marked {
                    // Not freed: a block shrunk from it might stop the process.
                    return Some(format!("round {round}: a fresh {len}-byte block holds a free mark at byte {}", (at + 1) * 8));
                }
                // SAFETY: a header in the block's first word; the block is
                // then shrunk to a slab object, which keeps the header.
                let q = unsafe {
                    p.cast::<u64>().write(check as u64);
                    GLOBAL.realloc(p, layout, 100)
                };
                assert!(!q.is_null());
                // SAFETY: `q` is a live slab object of at least 16 bytes.
                unsafe {
                    assert_eq!(q.cast::<u64>().read(), check as u64);
                    if buddyslab::internals::slab::link::is_marked_free(q) {
                        // Not freed: its free would stop the process.
                        return Some(format!("round {round}: realloc made a live block that carries the free mark"));
                    }
                    GLOBAL.dealloc(q, Layout::from_size_align(100, 8).unwrap());
                }
            }
        }
        None
    })
    .join()
    .unwrap();
    stop.store(true, Ordering::Relaxed);
    for h in helpers {
        h.join().unwrap();
    }
    if let Some(why) = failure {
        panic!("{why}");
    }
}

/// A thread's magazine holds freed objects; when the thread exits they
/// must go back to the shared cache, not be lost with the thread.
#[test]
#[cfg_attr(feature = "secure", ignore = "the secure build's quarantine keeps freed objects out of the bins")]
fn thread_exit_returns_cached_objects() {
    use buddyslab::internals::slab::{cache_stats, class_of, percpu, stashed_objects};
    let _serial = COUNTERS.lock().unwrap_or_else(|e| e.into_inner());
    // A class no other test in this binary uses.
    let class = class_of(20_000);
    // Objects out of the shared cache, less those parked in CPU depots
    // and node barns (which any thread can take again).
    let active = || cache_stats(class).active_objs - percpu::cached_objects(class) - stashed_objects(class);
    let before = active();
    thread::spawn(|| {
        let layout = Layout::from_size_align(20_000, 16).unwrap();
        // SAFETY: allocated and freed with the same layout.
        let ptrs: Vec<*mut u8> = (0..9).map(|_| unsafe { GLOBAL.alloc(layout) }).collect();
        for p in ptrs {
            // SAFETY: as above.
            unsafe { GLOBAL.dealloc(p, layout) };
        }
        assert!(buddyslab::internals::slab::magazine::cached_objects() > 0, "frees should stay in this thread's bins");
    })
    .join()
    .unwrap();
    assert_eq!(active(), before, "objects cached by the exited thread were not returned");
}

/// Pins the calling thread to `cpu`; false when the machine refuses
/// (fewer CPUs, or a cpuset without it).
fn pin_to_cpu(cpu: usize) -> bool {
    // SAFETY: a zeroed cpu_set_t is the empty set; the calls get valid
    // pointers and the set's size.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) == 0
            && libc::sched_getcpu() == cpu as i32
    }
}

/// An object freed on another CPU goes home to its own node's slabs; the
/// freeing thread does not hand it out again (that would spread one cache
/// line over two CPUs), and its own allocations come from its own node.
#[test]
fn remote_frees_go_home() {
    use buddyslab::internals::slab::{home_node, node_of, MAX_NODES};
    let _serial = COUNTERS.lock().unwrap_or_else(|e| e.into_inner());
    let cpus = thread::available_parallelism().map_or(1, |n| n.get());
    if !(2..=MAX_NODES).contains(&cpus) {
        eprintln!("remote_frees_go_home: needs 2..={MAX_NODES} CPUs, skipped");
        return;
    }
    let layout = Layout::from_size_align(48, 16).unwrap();
    let Some(home) = thread::spawn(move || {
        if !pin_to_cpu(0) {
            return None;
        }
        // SAFETY: freed below with the same layout.
        Some((0..500).map(|_| unsafe { GLOBAL.alloc(layout) } as usize).collect::<Vec<_>>())
    })
    .join()
    .unwrap() else {
        eprintln!("remote_frees_go_home: cannot pin to CPU 0, skipped");
        return;
    };
    // Objects of another node than CPU 1's (bins and depots may mix nodes,
    // so not necessarily all of them).
    let foreign: std::collections::HashSet<usize> =
        home.iter().copied().filter(|&p| node_of(p as *const u8) != Some(1)).collect();
    assert!(!foreign.is_empty(), "a thread on CPU 0 got no object of node 0");
    let reused = thread::spawn(move || {
        if !pin_to_cpu(1) {
            return None;
        }
        assert_eq!(home_node(), 1);
        // A thread learns its node when a bin refills (it may have started
        // on another CPU): this thread's first 48-byte allocation does.
        // SAFETY: freed at once with the same layout.
        unsafe { GLOBAL.dealloc(GLOBAL.alloc(layout), layout) };
        for &p in &home {
            // SAFETY: allocated above with this layout, not used since.
            unsafe { GLOBAL.dealloc(p as *mut u8, layout) };
        }
        // SAFETY: freed right after with the same layout.
        let mine: Vec<usize> = (0..500).map(|_| unsafe { GLOBAL.alloc(layout) } as usize).collect();
        // An address can come back legitimately as an object of a new
        // node-1 slab, when its node-0 slab emptied and its pages moved.
        let reused = mine.iter().filter(|&&p| foreign.contains(&p) && node_of(p as *const u8) != Some(1)).count();
        for &p in &mine {
            // SAFETY: as above.
            unsafe { GLOBAL.dealloc(p as *mut u8, layout) };
        }
        Some(reused)
    })
    .join()
    .unwrap();
    match reused {
        Some(n) => assert_eq!(n, 0, "a thread on CPU 1 handed out objects of another node it had freed"),
        None => eprintln!("remote_frees_go_home: cannot pin to CPU 1, skipped"),
    }
}

/// The slab tier's internal-fragmentation sample (one request per bin
/// refill, with a jittered refill count) follows the requests: requests
/// alternating between 2050 and 2300 bytes, all served by the 2304-byte
/// class, sample to a mean near 2175, not to one of the two sizes, which an
/// even refill count would pick every time.
#[test]
#[cfg_attr(feature = "secure", ignore = "the secure build asks the slab tier for 8 bytes more")]
fn slab_waste_samples_follow_the_requests() {
    let _guard = COUNTERS.lock().unwrap();
    let class = buddyslab::internals::slab::class_of(4090);
    assert_eq!(buddyslab::internals::slab::class_of(3900), class);
    assert_eq!(buddyslab::internals::slab::size_of_class(class), 4096);
    let before = buddyslab::stats::snapshot().slab_samples[class];
    let rounds = 200;
    let per_round = 256;
    let mut held = Vec::with_capacity(per_round);
    for _ in 0..rounds {
        for i in 0..per_round {
            let layout = Layout::from_size_align(if i % 2 == 0 { 3900 } else { 4090 }, 8).unwrap();
            // SAFETY: a non-zero size.
            let p = unsafe { GLOBAL.alloc(layout) };
            assert!(!p.is_null());
            held.push((p, layout));
        }
        for (p, layout) in held.drain(..) {
            // SAFETY: allocated above with this layout.
            unsafe { GLOBAL.dealloc(p, layout) };
        }
    }
    let after = buddyslab::stats::snapshot().slab_samples[class];
    let samples = after.samples - before.samples;
    let mean = (after.requested_sum - before.requested_sum) / samples.max(1);
    // 51200 requests and bins of 8 objects: thousands of refills.
    assert!(samples >= 500, "only {samples} samples");
    assert!((3950..=4040).contains(&mean), "sampled mean {mean} over {samples} samples, want about 3995");
}
