//! What the faces (the C face is another crate) and the integration tests
//! reach below the public API, named here once and nowhere else. Hidden
//! from the documentation; no stability promise. Everything else below
//! `heap` and the views is private to the crate.

/// The system-call edge: the page size, the fatal message, and the
/// process id the C face's handshake writes.
pub mod os {
    pub use crate::os::{fatal, getpid, PAGE_SIZE};
}

/// What the faces count for the views: calls per C entry point, and the
/// blocks those entry points hand out.
pub mod counters {
    pub use crate::counters::Entry;
    pub use crate::slab::magazine::{count_call, count_entry_blocks};
}

/// The page allocator: the zone (its invariant checker) and the chunk map.
pub mod mm {
    pub use crate::mm::ZONE;

    /// Page descriptors and the chunk map.
    pub mod page {
        pub use crate::mm::page::chunk_of;
    }
}

/// The slab tier: size classes, nodes, and the free-list encoding the
/// attack tests forge.
pub mod slab {
    pub use crate::slab::{
        cache_stats, class_of, free_home, home_node, node_of, nodes, size_of_class, stashed_objects, MAX_NODES,
        NR_CLASSES,
    };

    /// The slab caches.
    pub mod cache {
        pub use crate::slab::cache::slab_of;
    }

    /// Free-list links and the free mark.
    pub mod link {
        pub use crate::slab::link::{is_marked_free, mark_of, set_next};

        /// The process's free mark (the double-free key), for tests that
        /// look for it in freed memory.
        pub fn free_mark() -> usize {
            crate::slab::link::FREE_MARK.load(core::sync::atomic::Ordering::Relaxed)
        }
    }

    /// Per-thread magazines.
    pub mod magazine {
        pub use crate::slab::magazine::cached_objects;
    }

    /// Per-CPU depots.
    pub mod percpu {
        pub use crate::slab::percpu::cached_objects;
    }
}

/// The ledger: the region tree (its invariant checker).
pub mod ledger {
    /// The region tree.
    pub mod vma {
        pub use crate::ledger::vma::TREE;
    }
}

/// The views' side of the C face's handshake with the tool: its pipe, and
/// the line that names the program.
pub mod views {
    /// The `buddyslab` tool's pipe.
    pub mod tool {
        pub use crate::views::tool::{announce_command, tool_pipe};
    }
}
