//! The views changing as a program allocates and frees, and a heap map.
//!
//! Run with `cargo run --release --example views [-- heapmap.svg]`: prints
//! `buddyinfo`, the `slabinfo` rows in use and the fault table four times
//! (at start, after allocating, after freeing most of it, after
//! `heap::trim`), and writes the SVG heap map of the freed-but-not-trimmed
//! heap, the moment fragmentation shows, to the file named (default
//! `heapmap.svg`).

use buddyslab::{heap, heapmap, stats, BuddySlab};

#[global_allocator]
static GLOBAL: BuddySlab = BuddySlab;

fn show(title: &str) {
    let s = stats::snapshot();
    let mut text = String::new();
    stats::write_buddyinfo(&mut text, &s).unwrap();
    // Only the caches that hold slabs, under the header lines.
    let mut slabinfo = String::new();
    stats::write_slabinfo(&mut slabinfo, &s).unwrap();
    for (i, line) in slabinfo.lines().enumerate() {
        let slabs = line.split_whitespace().nth(14).and_then(|n| n.parse::<u64>().ok());
        if i < 2 || slabs.is_some_and(|n| n > 0) {
            text.push_str(line);
            text.push('\n');
        }
    }
    stats::write_faults(&mut text, &s).unwrap();
    println!("==== {title}\n{text}");
}

fn main() {
    let path = std::env::args().nth(1).unwrap_or_else(|| "heapmap.svg".to_string());
    show("start");

    // Three size classes interleaved, then a few page-tier runs.
    let mut small: Vec<Box<[u8; 48]>> = Vec::new();
    let mut medium: Vec<Vec<u8>> = Vec::new();
    for i in 0..60_000 {
        small.push(Box::new([i as u8; 48]));
        if i % 4 == 0 {
            medium.push(vec![i as u8; 200 + (i % 3) * 1000]);
        }
    }
    let runs: Vec<Vec<u8>> = (0..16).map(|i| vec![i as u8; 40_000 + i * 4096]).collect();
    show("after allocating");

    // Free three objects in four, scattered: slabs stay partly used.
    let mut i = 0;
    small.retain(|_| {
        i += 1;
        i % 4 == 0
    });
    medium.retain(|v| v[0] % 4 == 0);
    drop(runs);
    show("after freeing three quarters");
    let mut svg = String::new();
    heapmap::write_svg(&mut svg).unwrap();
    std::fs::write(&path, svg).unwrap_or_else(|e| panic!("write {path}: {e}"));
    println!("heap map written to {path}\n");

    drop(small);
    drop(medium);
    heap::trim();
    show("after freeing everything and heap::trim()");
}
