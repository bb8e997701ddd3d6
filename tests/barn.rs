//! Bursts of small blocks big enough for the slab caches' barns (see
//! `src/slab/barn.rs`), through the global allocator, in a test binary of
//! their own: no other test drains the barns underneath the counts.

use buddyslab::internals::slab::{class_of, stashed_objects};
use buddyslab::BuddySlab;
use std::alloc::{GlobalAlloc, Layout};

#[global_allocator]
static GLOBAL: BuddySlab = BuddySlab;

/// Bytes per block: one size class, 48-byte objects.
const SIZE: usize = 48;
/// Blocks per burst: 7 MiB of one class, past the 1 MiB a cache must
/// have out before its barn keeps lists.
const BLOCKS: usize = 150_000;

/// As sh8bench does: allocate a burst, free it all in allocation order,
/// allocate the next. The frees overflow the bin, its spare and the CPU's
/// depot, so lists wait in the barn and the next burst's refills take
/// them back whole. Every block of every burst must be aligned, apart
/// from every other live block, and keep what was written into it; the
/// barn must have held lists at some point, and `malloc_trim` must leave
/// none there.
#[test]
fn bursts_pass_through_the_barn_with_every_block_intact() {
    let layout = Layout::from_size_align(SIZE, 16).unwrap();
    let class = class_of(SIZE);
    let mut most_in_barn = 0;
    let mut blocks: Vec<*mut u8> = Vec::with_capacity(BLOCKS);
    for round in 0..4u64 {
        for i in 0..BLOCKS {
            // SAFETY: a valid layout; the block is written within its size.
            unsafe {
                let p = GLOBAL.alloc(layout);
                assert!(!p.is_null() && p as usize % 16 == 0, "round {round}: block {i} at {p:p}");
                let word = round << 32 | i as u64;
                p.cast::<u64>().write(word);
                p.add(SIZE - 8).cast::<u64>().write(!word);
                blocks.push(p);
            }
        }
        let mut sorted = blocks.clone();
        sorted.sort_unstable();
        assert!(
            sorted.windows(2).all(|w| w[1] as usize - w[0] as usize >= SIZE),
            "round {round}: two live blocks overlap"
        );
        drop(sorted);
        for (i, &p) in blocks.iter().enumerate() {
            let word = round << 32 | i as u64;
            // SAFETY: a live block of this layout, freed once.
            unsafe {
                assert_eq!(p.cast::<u64>().read(), word, "round {round}: block {i} lost its first word");
                assert_eq!(p.add(SIZE - 8).cast::<u64>().read(), !word, "round {round}: block {i} lost its last word");
                GLOBAL.dealloc(p, layout);
            }
        }
        blocks.clear();
        most_in_barn = most_in_barn.max(stashed_objects(class));
    }
    assert!(most_in_barn > 0, "no burst left a list in a barn");
    buddyslab::heap::trim();
    assert_eq!(stashed_objects(class), 0, "malloc_trim left lists in a barn");
}
