//! The main example: a program whose every allocation goes through
//! buddyslab, printing what the allocator did with it.
//!
//! Run with `cargo run --release --example demo`.

use buddyslab::{stats, BuddySlab};
use std::collections::HashMap;
use std::fmt::Write as _;

#[global_allocator]
static GLOBAL: BuddySlab = BuddySlab;

fn show(title: &str) {
    let s = stats::snapshot();
    println!("== {title}");
    let mut line = String::from("buddyinfo (free blocks, order 0..10):");
    for n in s.buddy_free {
        let _ = write!(line, " {n:>4}");
    }
    println!("{line}");
    println!(
        "chunks: {} ({} from brk, {} from mmap), {} KiB free of {} KiB; in use {} KiB; large blocks {} ({} KiB); page runs {}",
        s.brk_chunks + s.mmap_chunks,
        s.brk_chunks,
        s.mmap_chunks,
        s.free_pages * 4,
        s.managed_pages * 4,
        s.in_use_bytes() / 1024,
        s.nr_large,
        s.large_bytes / 1024,
        s.nr_page_runs,
    );
    let busiest: Vec<String> = {
        let mut c: Vec<_> = s.caches[..buddyslab::internals::slab::NR_CLASSES].iter().filter(|c| c.num_objs > 0).collect();
        c.sort_by_key(|c| std::cmp::Reverse(c.active_objs * c.objsize));
        c.iter()
            .take(4)
            .map(|c| format!("{} B x {}/{} in {} slabs", c.objsize, c.active_objs, c.num_objs, c.num_slabs))
            .collect()
    };
    println!("busiest slab caches: {}", busiest.join("; "));
}

fn main() {
    show("start");
    // A word-frequency table: many small strings and a growing hash map.
    let text = "the quick brown fox jumps over the lazy dog and the dog sleeps ".repeat(20_000);
    let mut freq: HashMap<String, usize> = HashMap::new();
    for w in text.split_whitespace() {
        *freq.entry(w.to_string()).or_default() += 1;
    }
    let mut words: Vec<(String, usize)> = freq.into_iter().collect();
    words.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
    println!("top words: {:?}", &words[..3]);
    // 100k small boxed records, 200 page-sized buffers, a 64 MiB vector.
    let records: Vec<Box<[u64; 6]>> = (0..100_000u64).map(|i| Box::new([i; 6])).collect();
    let buffers: Vec<Vec<u8>> = (0..200).map(|i| vec![i as u8; 40 * 1024]).collect();
    let big = vec![1u32; 16 << 20];
    show("after allocating 100k records, 200 x 40 KiB buffers, a 64 MiB vector");
    let checksum: u64 = records.iter().map(|r| r[5]).sum::<u64>()
        + buffers.iter().map(|b| b[0] as u64).sum::<u64>()
        + big.iter().step_by(4096).map(|&x| x as u64).sum::<u64>();
    drop(records);
    drop(buffers);
    drop(big);
    show("after freeing them");
    // SAFETY: malloc_trim-like call through the Rust API.
    let released = buddyslab::heap::trim();
    show(&format!("after trim (released: {released})"));
    println!("checksum {checksum}");
}
