//! What the page allocator tells the layers above it, without naming them.
//!
//! The ledger (region tree and page-table shadow) wants to hear of every
//! chunk added to the zone and of every page run handed out, given back
//! or released to the kernel. The page allocator and the slab caches call
//! the functions here; the ledger registers its own behind them when the
//! process sets up (as the kernel's notifier chains and shrinkers are
//! registered), before the first chunk is mapped. Until then, and for a
//! process that never registers, the calls do nothing.
//!
//! Every call is on a slow path (chunk growth, a slab or page run handed
//! out or given back, a release): never on the per-object fast path. The
//! cost is one load and one indirect call.

use super::page::ChunkSource;
use core::sync::atomic::{AtomicPtr, Ordering};

/// Who a run of pages is handed out to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageUse {
    /// A slab of a size-class cache.
    Slab,
    /// A page-tier run (exact pages from the buddy).
    Pages,
    /// Allocator metadata (a slab of an internal cache).
    Meta,
}

/// A chunk just added to the zone, with the metadata mapped for it.
#[derive(Clone, Copy, Debug)]
pub struct ChunkAdded {
    /// Its first byte (`CHUNK_SIZE` bytes, all mapped, none handed out).
    pub base: usize,
    /// Where its address space came from.
    pub source: ChunkSource,
    /// Its page descriptors: address and length, all written.
    pub descriptors: (usize, usize),
    /// A chunk-map leaf mapped for it, if one was: address and length.
    pub leaf: Option<(usize, usize)>,
}

/// The functions an upper layer registers.
pub struct PageHooks {
    /// A chunk was added (called with no lock held).
    pub chunk_added: fn(ChunkAdded),
    /// `len` bytes at `start` were handed out to `to`.
    pub handed_out: fn(start: usize, len: usize, to: PageUse),
    /// `len` bytes at `start` came back to the page allocator.
    pub given_back: fn(start: usize, len: usize),
    /// `len` bytes at `start` were released to the kernel (`MADV_DONTNEED`).
    pub advised: fn(start: usize, len: usize),
}

static HOOKS: AtomicPtr<PageHooks> = AtomicPtr::new(core::ptr::null_mut());

/// Registers `hooks` (the last registration wins).
pub fn register(hooks: &'static PageHooks) {
    HOOKS.store(hooks as *const PageHooks as *mut PageHooks, Ordering::Release);
}

#[inline]
fn hooks() -> Option<&'static PageHooks> {
    // SAFETY: null or a `&'static PageHooks` stored by `register`.
    unsafe { HOOKS.load(Ordering::Acquire).as_ref() }
}

/// Tells the registered hooks that a chunk was added.
pub fn chunk_added(chunk: ChunkAdded) {
    if let Some(h) = hooks() {
        (h.chunk_added)(chunk)
    }
}

/// Tells the registered hooks that `len` bytes at `start` went to `to`.
pub fn handed_out(start: usize, len: usize, to: PageUse) {
    if let Some(h) = hooks() {
        (h.handed_out)(start, len, to)
    }
}

/// Tells the registered hooks that `len` bytes at `start` came back.
pub fn given_back(start: usize, len: usize) {
    if let Some(h) = hooks() {
        (h.given_back)(start, len)
    }
}

/// Tells the registered hooks that `len` bytes at `start` went back to the
/// kernel.
pub fn advised(start: usize, len: usize) {
    if let Some(h) = hooks() {
        (h.advised)(start, len)
    }
}
