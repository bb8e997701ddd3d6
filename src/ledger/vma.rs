//! The region tree: every range of address space buddyslab maps, as the
//! kernel's `vm_area_struct`s.
//!
//! Ranges are half-open, `[vm_start, vm_end)`, everywhere in this module and
//! its callers (the kernel's VMAs use an exclusive `vm_end` too; its generic
//! interval tree uses an inclusive `last`, which we do not).
//!
//! The tree is an AVL tree keyed by `vm_start`, augmented with
//! `subtree_max_end` (the largest `vm_end` in the subtree), so overlap
//! queries prune whole subtrees as the kernel's augmented interval tree
//! does. Regions never overlap; `find` is a plain descent.
//!
//! Nodes are [`VmArea`]s from the allocator's own slab cache
//! (`CACHES[VM_AREA_CACHE]`, the `vm_area_cachep` analogue). The tree itself
//! never allocates: callers allocate a node first, then take `TREE`'s lock
//! to link it; unlinked nodes are freed after the lock is dropped. `TREE` is
//! last in the lock order (see [`crate::mm`]).
//!
//! Adjacent `[heap]` extents merge as `vma_merge` does, so the program break
//! shows as one region however many chunks it grew by.

use crate::slab::{self, cache, VM_AREA_CACHE};
use crate::os::sync::Mutex;
use core::ptr;

/// What a region is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum VmaKind {
    /// Buddy chunks carved from the program break.
    Heap,
    /// A buddy chunk with its own mapping.
    Chunk,
    /// A live large block (see [`crate::large`]): a mapping of its own or
    /// a piece of a cached one.
    Large,
    /// A released large block kept mapped and resident for reuse (the
    /// mapping cache of [`crate::large`]). A `free` that lands here is a
    /// double free.
    LargeCached,
    /// The allocator's metadata: chunk descriptors, chunk map leaves.
    Meta,
}

impl VmaKind {
    /// The name shown in the `maps` view.
    pub fn name(self) -> &'static str {
        match self {
            VmaKind::Heap => "[heap]",
            VmaKind::Chunk => "[buddyslab:chunk]",
            VmaKind::Large => "[buddyslab:large]",
            VmaKind::LargeCached => "[buddyslab:large-cached]",
            VmaKind::Meta => "[buddyslab:meta]",
        }
    }
}

/// Protection bit: readable.
pub const PROT_READ: u8 = 1;
/// Protection bit: writable.
pub const PROT_WRITE: u8 = 2;

/// One region (the `vm_area_struct` analogue).
#[repr(C)]
pub struct VmArea {
    /// First byte.
    pub vm_start: usize,
    /// One past the last byte.
    pub vm_end: usize,
    /// Largest `vm_end` in this node's subtree.
    subtree_max_end: usize,
    left: *mut VmArea,
    right: *mut VmArea,
    /// For `Large`: the size the caller asked for (for `realloc` and stats).
    pub requested: usize,
    height: u8,
    /// What the region is.
    pub kind: VmaKind,
    /// `PROT_*` bits.
    pub prot: u8,
    /// Whether a system call made with no lock held is moving the region
    /// (see [`begin_move`]): [`MOVING`], [`STALE`] or 0.
    moving: u8,
}

/// [`VmArea::moving`]: the region's mapping is being moved; once the
/// kernel hands out any of its range to anyone, the record is stale.
const MOVING: u8 = 1;
/// [`VmArea::moving`]: a stale `MOVING` node that a new record
/// overlapped, out of the tree; its mover still owns it.
const STALE: u8 = 2;

const _: () = assert!(core::mem::size_of::<VmArea>() <= slab::VM_AREA_SIZE);

/// A copy of a region's public fields.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Region {
    /// First byte.
    pub start: usize,
    /// One past the last byte.
    pub end: usize,
    /// What it is.
    pub kind: VmaKind,
    /// `PROT_*` bits.
    pub prot: u8,
    /// For `Large`: the size asked for.
    pub requested: usize,
}

impl VmArea {
    /// Initialises a node in place.
    ///
    /// # Safety
    /// `node` is writable memory for a `VmArea`, not in any tree.
    pub unsafe fn init(node: *mut VmArea, start: usize, end: usize, kind: VmaKind, requested: usize) {
        // SAFETY: per the caller.
        unsafe {
            node.write(VmArea {
                vm_start: start,
                vm_end: end,
                subtree_max_end: end,
                left: ptr::null_mut(),
                right: ptr::null_mut(),
                requested,
                height: 1,
                kind,
                prot: PROT_READ | PROT_WRITE,
                moving: 0,
            })
        }
    }

    fn region(&self) -> Region {
        Region { start: self.vm_start, end: self.vm_end, kind: self.kind, prot: self.prot, requested: self.requested }
    }
}

/// The tree.
pub struct VmaTree {
    root: *mut VmArea,
    /// Regions in the tree.
    pub count: usize,
}

// SAFETY: the tree only holds pointers to nodes it owns; TREE's lock
// serialises access.
unsafe impl Send for VmaTree {}

fn height(n: *mut VmArea) -> u8 {
    if n.is_null() {
        0
    } else {
        // SAFETY: non-null nodes in the tree are live.
        unsafe { (*n).height }
    }
}

fn max_end(n: *mut VmArea) -> usize {
    if n.is_null() {
        0
    } else {
        // SAFETY: non-null nodes in the tree are live.
        unsafe { (*n).subtree_max_end }
    }
}

/// Recomputes height and `subtree_max_end` of `n` from its children.
///
/// # Safety
/// `n` is live with live children.
unsafe fn update_node(n: *mut VmArea) {
    // SAFETY: per the caller.
    unsafe {
        let (l, r) = ((*n).left, (*n).right);
        (*n).height = 1 + height(l).max(height(r));
        (*n).subtree_max_end = (*n).vm_end.max(max_end(l)).max(max_end(r));
    }
}

/// # Safety
/// `n` and its left child are live.
unsafe fn rotate_right(n: *mut VmArea) -> *mut VmArea {
    // SAFETY: per the caller.
    unsafe {
        let l = (*n).left;
        (*n).left = (*l).right;
        (*l).right = n;
        update_node(n);
        update_node(l);
        l
    }
}

/// # Safety
/// `n` and its right child are live.
unsafe fn rotate_left(n: *mut VmArea) -> *mut VmArea {
    // SAFETY: per the caller.
    unsafe {
        let r = (*n).right;
        (*n).right = (*r).left;
        (*r).left = n;
        update_node(n);
        update_node(r);
        r
    }
}

/// Restores the AVL balance at `n` after one insertion or removal below it.
///
/// # Safety
/// `n` is live and its subtrees are balanced AVL trees.
#[link_section = ".text.hot.buddyslab"]
unsafe fn rebalance(n: *mut VmArea) -> *mut VmArea {
    // SAFETY: per the caller; rotations only touch live nodes.
    unsafe {
        update_node(n);
        let balance = height((*n).left) as i32 - height((*n).right) as i32;
        if balance > 1 {
            let l = (*n).left;
            if height((*l).left) < height((*l).right) {
                (*n).left = rotate_left(l);
            }
            return rotate_right(n);
        }
        if balance < -1 {
            let r = (*n).right;
            if height((*r).right) < height((*r).left) {
                (*n).right = rotate_right(r);
            }
            return rotate_left(n);
        }
        n
    }
}

/// # Safety
/// `root` is a valid subtree; `node` is live and not in it.
#[link_section = ".text.hot.buddyslab"]
unsafe fn insert_at(root: *mut VmArea, node: *mut VmArea) -> *mut VmArea {
    if root.is_null() {
        return node;
    }
    // SAFETY: per the caller.
    unsafe {
        if (*node).vm_start < (*root).vm_start {
            (*root).left = insert_at((*root).left, node);
        } else {
            (*root).right = insert_at((*root).right, node);
        }
        rebalance(root)
    }
}

/// Unlinks the leftmost node of `root`; returns (new subtree, that node).
///
/// # Safety
/// `root` is a valid non-empty subtree.
#[link_section = ".text.hot.buddyslab"]
unsafe fn remove_min(root: *mut VmArea) -> (*mut VmArea, *mut VmArea) {
    // SAFETY: per the caller.
    unsafe {
        if (*root).left.is_null() {
            return ((*root).right, root);
        }
        let (l, min) = remove_min((*root).left);
        (*root).left = l;
        (rebalance(root), min)
    }
}

/// Unlinks the node starting at `start`; returns (new subtree, the node or
/// null).
///
/// # Safety
/// `root` is a valid subtree.
#[link_section = ".text.hot.buddyslab"]
unsafe fn remove_at(root: *mut VmArea, start: usize) -> (*mut VmArea, *mut VmArea) {
    if root.is_null() {
        return (root, ptr::null_mut());
    }
    // SAFETY: per the caller.
    unsafe {
        let removed;
        if start < (*root).vm_start {
            let (l, r) = remove_at((*root).left, start);
            (*root).left = l;
            removed = r;
        } else if start > (*root).vm_start {
            let (l, r) = remove_at((*root).right, start);
            (*root).right = l;
            removed = r;
        } else {
            let (l, r) = ((*root).left, (*root).right);
            (*root).left = ptr::null_mut();
            (*root).right = ptr::null_mut();
            if r.is_null() {
                return (l, root);
            }
            let (r, min) = remove_min(r);
            (*min).left = l;
            (*min).right = r;
            return (rebalance(min), root);
        }
        (rebalance(root), removed)
    }
}

impl VmaTree {
    /// An empty tree.
    pub const fn new() -> Self {
        VmaTree { root: ptr::null_mut(), count: 0 }
    }

    /// The region containing `addr`.
    pub fn find(&self, addr: usize) -> *mut VmArea {
        let mut n = self.root;
        // SAFETY: nodes in the tree are live.
        unsafe {
            while !n.is_null() {
                if addr < (*n).vm_start {
                    n = (*n).left;
                } else if addr >= (*n).vm_end {
                    n = (*n).right;
                } else {
                    return n;
                }
            }
        }
        ptr::null_mut()
    }

    /// Calls `f` on every region overlapping `[start, end)`, in address
    /// order.
    pub fn overlaps(&self, start: usize, end: usize, f: &mut dyn FnMut(&VmArea)) {
        // Recursive, so never inlined into the hot `insert`: every
        // program runs it (see "Hot text" in docs/ARCHITECTURE.md).
        #[link_section = ".text.hot.buddyslab"]
        fn visit(n: *mut VmArea, start: usize, end: usize, f: &mut dyn FnMut(&VmArea)) {
            if n.is_null() || max_end(n) <= start {
                return;
            }
            // SAFETY: nodes in the tree are live.
            let node = unsafe { &*n };
            visit(node.left, start, end, f);
            if node.vm_start < end {
                if start < node.vm_end {
                    f(node);
                }
                visit(node.right, start, end, f);
            }
        }
        visit(self.root, start, end, f)
    }

    /// Whether any region overlaps `[start, end)`.
    pub fn any_overlap(&self, start: usize, end: usize) -> bool {
        let mut hit = false;
        self.overlaps(start, end, &mut |_| hit = true);
        hit
    }

    /// Links `node`. Returns false (and leaves the tree alone) if it would
    /// overlap an existing region or is empty.
    ///
    /// # Safety
    /// `node` is initialised and in no tree.
    pub unsafe fn insert(&mut self, node: *mut VmArea) -> bool {
        // SAFETY: per the caller.
        let (start, end) = unsafe { ((*node).vm_start, (*node).vm_end) };
        if start >= end || self.any_overlap(start, end) {
            return false;
        }
        // SAFETY: the tree is valid and `node` is not in it.
        self.root = unsafe { insert_at(self.root, node) };
        self.count += 1;
        true
    }

    /// Unlinks every region overlapping `[start, end)` that is being
    /// moved ([`begin_move`]) and marks it stale: the range was just
    /// handed out by the kernel (or is part of a mapping of ours), so the
    /// move that gave it up has happened. The nodes stay their movers'.
    fn evict_stale(&mut self, start: usize, end: usize) {
        loop {
            let mut hit = None;
            self.overlaps(start, end, &mut |n| {
                if n.moving == MOVING && hit.is_none() {
                    hit = Some(n.vm_start);
                }
            });
            let Some(at) = hit else { return };
            let n = self.remove(at);
            // SAFETY: unlinked just now; its mover owns it and reads the
            // mark under the lock.
            unsafe { (*n).moving = STALE };
        }
    }

    /// Links `node`, unlinked, as `[start, end)` of `kind` (`requested`
    /// bytes asked for), taking out first the stale records of moves that
    /// range overlaps. Returns the region.
    ///
    /// # Safety
    /// `node` is a node of ours in no tree; `[start, end)` overlaps no
    /// recorded region but stale ones.
    #[inline(always)]
    unsafe fn relink(&mut self, node: *mut VmArea, start: usize, end: usize, kind: VmaKind, requested: usize) -> Region {
        self.evict_stale(start, end);
        // SAFETY: per the caller.
        unsafe {
            VmArea::init(node, start, end, kind, requested);
            let linked = self.insert(node);
            debug_assert!(linked, "a re-linked range overlaps a recorded region");
            (*node).region()
        }
    }

    /// Unlinks the region starting exactly at `start`; null if none.
    pub fn remove(&mut self, start: usize) -> *mut VmArea {
        // SAFETY: the tree is valid.
        let (root, node) = unsafe { remove_at(self.root, start) };
        self.root = root;
        if !node.is_null() {
            self.count -= 1;
        }
        node
    }

    /// Calls `f` on every region in address order.
    pub fn for_each(&self, f: &mut dyn FnMut(&VmArea)) {
        fn visit(n: *mut VmArea, f: &mut dyn FnMut(&VmArea)) {
            if n.is_null() {
                return;
            }
            // SAFETY: nodes in the tree are live.
            let node = unsafe { &*n };
            visit(node.left, f);
            f(node);
            visit(node.right, f);
        }
        visit(self.root, f)
    }

    /// Checks ordering, AVL balance, augmentation and the count; panics on
    /// a breach.
    pub fn check(&self) {
        fn visit(n: *mut VmArea, lo: usize, hi: usize) -> (u8, usize, usize) {
            if n.is_null() {
                return (0, 0, 0);
            }
            // SAFETY: nodes in the tree are live.
            let node = unsafe { &*n };
            assert!(node.vm_start < node.vm_end, "empty region");
            assert!(node.vm_start >= lo && node.vm_end <= hi, "regions overlap or out of order");
            let (hl, ml, cl) = visit(node.left, lo, node.vm_start);
            let (hr, mr, cr) = visit(node.right, node.vm_end, hi);
            assert!((hl as i32 - hr as i32).abs() <= 1, "AVL balance broken");
            assert_eq!(node.height, 1 + hl.max(hr), "height stale");
            let m = node.vm_end.max(ml).max(mr);
            assert_eq!(node.subtree_max_end, m, "subtree_max_end stale");
            (node.height, m, cl + cr + 1)
        }
        let (_, _, count) = visit(self.root, 0, usize::MAX);
        assert_eq!(count, self.count, "region count drifted");
    }
}

impl Default for VmaTree {
    fn default() -> Self {
        Self::new()
    }
}

// ---------------------------------------------------------------------------
// The global tree.

/// Every region buddyslab maps.
pub static TREE: Mutex<VmaTree> = Mutex::new(VmaTree::new());

fn alloc_node() -> *mut VmArea {
    cache::alloc(&slab::CACHES[VM_AREA_CACHE]).cast()
}

fn free_node(node: *mut VmArea) {
    let page = crate::mm::page::page_of(node as usize);
    // SAFETY: nodes come from the VM_AREA cache, whose slabs are single pages.
    unsafe { cache::free(&slab::CACHES[VM_AREA_CACHE], page, node.cast()) }
}

/// Records a new region. Heap extents merge with a `[heap]` neighbour.
/// Returns false when no node could be allocated or the range overlaps a
/// known region (an allocator bug; the region then stays unrecorded).
pub fn record(start: usize, end: usize, kind: VmaKind) -> bool {
    record_sized(start, end, kind, 0)
}

/// [`record`] with the requested size of a large block.
#[link_section = ".text.hot.buddyslab"]
pub fn record_sized(start: usize, end: usize, kind: VmaKind, requested: usize) -> bool {
    let node = alloc_node();
    if node.is_null() {
        return false;
    }
    let mut unused = [ptr::null_mut::<VmArea>(); 2];
    let inserted;
    {
        let mut tree = TREE.lock();
        let (mut start, mut end) = (start, end);
        if kind == VmaKind::Heap {
            // vma_merge: absorb a [heap] neighbour on either side.
            let before = if start > 0 { tree.find(start - 1) } else { ptr::null_mut() };
            // SAFETY: nodes in the tree are live.
            if !before.is_null() && unsafe { (*before).kind == VmaKind::Heap && (*before).vm_end == start } {
                // SAFETY: as above.
                start = unsafe { (*before).vm_start };
                unused[0] = tree.remove(start);
            }
            let after = tree.find(end);
            // SAFETY: nodes in the tree are live.
            if !after.is_null() && unsafe { (*after).kind == VmaKind::Heap && (*after).vm_start == end } {
                // The neighbour starts where we end: remove it by that key.
                unused[1] = tree.remove(end);
                // SAFETY: unlinked just now, still live (freed below).
                end = unsafe { (*unused[1]).vm_end };
            }
        }
        tree.evict_stale(start, end);
        // SAFETY: `node` is fresh from the node cache.
        unsafe {
            VmArea::init(node, start, end, kind, requested);
            inserted = tree.insert(node);
        }
    }
    if !inserted {
        free_node(node);
    }
    for n in unused {
        if !n.is_null() {
            free_node(n);
        }
    }
    inserted
}

/// The region containing `addr`, if any.
pub fn lookup(addr: usize) -> Option<Region> {
    let tree = TREE.lock();
    let n = tree.find(addr);
    // SAFETY: nodes in the tree are live while we hold the lock.
    (!n.is_null()).then(|| unsafe { (*n).region() })
}

/// Removes the region that starts exactly at `start` if it has kind `kind`;
/// returns it. `Err` carries the region that contains `start` instead (or
/// `None`), for error messages.
#[link_section = ".text.hot.buddyslab"]
pub fn remove_exact(start: usize, kind: VmaKind) -> Result<Region, Option<Region>> {
    let node;
    {
        let mut tree = TREE.lock();
        let n = tree.find(start);
        // SAFETY: nodes in the tree are live while we hold the lock.
        let found = (!n.is_null()).then(|| unsafe { (*n).region() });
        match found {
            Some(r) if r.start == start && r.kind == kind => node = tree.remove(start),
            other => return Err(other),
        }
    }
    // SAFETY: unlinked just now; we own it.
    let region = unsafe { (*node).region() };
    free_node(node);
    Ok(region)
}

/// Moves, resizes or re-kinds the region starting exactly at `start` with
/// `kind`: `remap` gets the region and returns its new `[start, end)`,
/// requested size and kind, or `None` to leave it as it was. `remap` runs
/// under the tree lock, so a system call that moves the memory (`mremap`)
/// and the record of it change together: no other thread can map into a
/// range the tree still shows as ours, or see a range that is ours missing
/// from the tree. The new range may only cover the old one and address
/// space no region holds (but stale ones, see [`begin_move`]). `remap`
/// must not allocate. Returns the new
/// region, or `None` if there was no such region or `remap` declined.
pub fn remap(
    start: usize,
    kind: VmaKind,
    remap: impl FnOnce(Region) -> Option<(usize, usize, usize, VmaKind)>,
) -> Option<Region> {
    let mut tree = TREE.lock();
    let n = tree.find(start);
    // SAFETY: nodes in the tree are live while we hold the lock.
    if n.is_null() || unsafe { (*n).vm_start != start || (*n).kind != kind } {
        return None;
    }
    // SAFETY: as above.
    let (new_start, new_end, requested, new_kind) = remap(unsafe { (*n).region() })?;
    // SAFETY: as above; the range, which orders and augments the tree,
    // stays as it is.
    unsafe {
        if (new_start, new_end) == ((*n).vm_start, (*n).vm_end) {
            // Only the kind or the requested size changes (a cached extent
            // handed out whole, a block cached as it is, a growth into the
            // room): in place, with no unlink and relink.
            (*n).kind = new_kind;
            (*n).requested = requested;
            return (*n).region().into();
        }
    }
    let node = tree.remove(start);
    // SAFETY: unlinked node we own. The new range is the old one or came
    // from the kernel or was unrecorded, so it overlaps no other region of
    // ours but stale ones.
    unsafe { tree.relink(node, new_start, new_end, new_kind, requested) }.into()
}

/// A region whose mapping is being moved by a system call made with no
/// lock held, from [`begin_move`] to [`end_move`].
pub struct Move {
    node: *mut VmArea,
}

/// Starts moving the region starting exactly at `start` with `kind`, for
/// a caller that owns it and will `mremap` it with no lock held (so that
/// no thread waits for the lock while the kernel waits for the page
/// faults in flight); returns it, or `None` if there is no such region.
///
/// Until [`end_move`], the record stays in the tree and `lookup` finds it.
/// Once `mremap` has moved the mapping, its old range may be mapped by
/// another thread, whose record of it then finds the old record
/// overlapping: a record overlapping a range the kernel has just handed
/// out can only be a stale one, so it is taken out of the tree then
/// instead of refusing the new one.
pub fn begin_move(start: usize, kind: VmaKind) -> Option<(Region, Move)> {
    let tree = TREE.lock();
    let n = tree.find(start);
    // SAFETY: nodes in the tree are live while we hold the lock.
    unsafe {
        if n.is_null() || (*n).vm_start != start || (*n).kind != kind || (*n).moving != 0 {
            return None;
        }
        (*n).moving = MOVING;
        Some(((*n).region(), Move { node: n }))
    }
}

/// What [`end_move`] tells the mover of the range its mapping left.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LeftRange {
    /// All of it is still the mover's to read and clear: nothing was
    /// recorded over it since `mremap` let it go.
    Whole,
    /// `[start, end)`, a piece of it that nothing is recorded over, while
    /// other mappings were recorded over the rest (whose records, and
    /// pages in the shadow, are theirs now).
    Unrecorded(usize, usize),
}

/// Ends a move begun by [`begin_move`]: the record takes the new
/// `[start, end)`, requested size and kind (`to`, after the mapping
/// moved), or stays as it was (`None`, the mapping did not move). Returns
/// the region.
///
/// `left` runs under the tree's lock once the record has moved, with what
/// of the old range is still the mover's ([`LeftRange`]): once with
/// `Whole`, or once per piece nothing was recorded over since the move.
/// It must not allocate nor take a lock that comes before this one in the
/// order: the shadow's records of the block move there
/// (`pagetable::move_kept`) before any other mapping at the old range can
/// be recorded, and so before its pages are; after one was, only the
/// pieces left over are cleared.
pub fn end_move(m: Move, to: Option<(usize, usize, usize, VmaKind)>, mut left: impl FnMut(LeftRange)) -> Region {
    let mut tree = TREE.lock();
    let node = m.node;
    // SAFETY: the mover owns the node: in the tree (MOVING) or taken out
    // of it by a thread that found it stale (STALE), never freed.
    unsafe {
        let Some((start, end, requested, kind)) = to else {
            debug_assert_eq!((*node).moving, MOVING, "a mapping that did not move was handed out");
            (*node).moving = 0;
            return (*node).region();
        };
        let (old_start, old_end) = ((*node).vm_start, (*node).vm_end);
        let whole = (*node).moving == MOVING;
        if whole {
            let unlinked = tree.remove((*node).vm_start);
            debug_assert_eq!(unlinked, node);
        }
        if !whole {
            // The gaps between the records over the old range, in order
            // (the stale records `relink` takes out overlap the new range,
            // which no live region over the old one can).
            let mut cursor = old_start;
            tree.overlaps(old_start, old_end, &mut |n| {
                if n.vm_start > cursor {
                    left(LeftRange::Unrecorded(cursor, n.vm_start));
                }
                cursor = cursor.max(n.vm_end);
            });
            if cursor < old_end {
                left(LeftRange::Unrecorded(cursor, old_end));
            }
        }
        let region = tree.relink(node, start, end, kind, requested);
        if whole {
            left(LeftRange::Whole);
        }
        region
    }
}

/// Calls `f` on a copy of every region, in address order, under the lock.
/// `f` must not allocate.
pub fn for_each_region(f: &mut dyn FnMut(Region)) {
    TREE.lock().for_each(&mut |n| f(n.region()));
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn boxed(start: usize, end: usize) -> *mut VmArea {
        let node = Box::into_raw(Box::new(core::mem::MaybeUninit::<VmArea>::uninit())).cast::<VmArea>();
        // SAFETY: fresh box memory.
        unsafe { VmArea::init(node, start, end, VmaKind::Large, 0) };
        node
    }

    #[derive(Clone, Debug)]
    enum Op {
        Insert(usize, usize),
        Remove(usize),
        Find(usize),
        Overlap(usize, usize),
    }

    fn op() -> impl Strategy<Value = Op> {
        prop_oneof![
            4 => (0usize..2000, 1usize..40).prop_map(|(s, l)| Op::Insert(s, l)),
            2 => any::<usize>().prop_map(Op::Remove),
            2 => (0usize..2100).prop_map(Op::Find),
            2 => (0usize..2100, 1usize..200).prop_map(|(s, l)| Op::Overlap(s, l)),
        ]
    }

    proptest! {
        /// Every query on the tree equals a brute-force scan of a list of
        /// the same regions, and the tree stays balanced and augmented.
        #[test]
        fn model_queries_equal_brute_force(ops in prop::collection::vec(op(), 1..300)) {
            let mut tree = VmaTree::new();
            let mut model: Vec<(usize, usize)> = Vec::new();
            for op in ops {
                match op {
                    Op::Insert(s, l) => {
                        let overlaps = model.iter().any(|&(a, b)| s < b && a < s + l);
                        let node = boxed(s, s + l);
                        // SAFETY: fresh node.
                        let ok = unsafe { tree.insert(node) };
                        prop_assert_eq!(ok, !overlaps);
                        if ok {
                            model.push((s, s + l));
                        } else {
                            // SAFETY: not linked; from Box::into_raw.
                            drop(unsafe { Box::from_raw(node) });
                        }
                    }
                    Op::Remove(pick) => {
                        if model.is_empty() { continue; }
                        let (s, e) = model.swap_remove(pick % model.len());
                        let n = tree.remove(s);
                        prop_assert!(!n.is_null());
                        // SAFETY: unlinked node from Box::into_raw.
                        let n = unsafe { Box::from_raw(n) };
                        prop_assert_eq!((n.vm_start, n.vm_end), (s, e));
                        prop_assert!(tree.remove(s).is_null());
                    }
                    Op::Find(a) => {
                        let want = model.iter().find(|&&(s, e)| s <= a && a < e).copied();
                        let n = tree.find(a);
                        // SAFETY: nodes in the tree are live.
                        let got = (!n.is_null()).then(|| unsafe { ((*n).vm_start, (*n).vm_end) });
                        prop_assert_eq!(got, want);
                    }
                    Op::Overlap(s, l) => {
                        let mut want: Vec<_> = model.iter().filter(|&&(a, b)| s < b && a < s + l).copied().collect();
                        want.sort();
                        let mut got = Vec::new();
                        tree.overlaps(s, s + l, &mut |n| got.push((n.vm_start, n.vm_end)));
                        prop_assert_eq!(got, want);
                    }
                }
                tree.check();
                prop_assert_eq!(tree.count, model.len());
            }
            let mut all = Vec::new();
            tree.for_each(&mut |n| all.push((n.vm_start, n.vm_end)));
            model.sort();
            prop_assert_eq!(&all, &model);
            for (s, _) in model {
                // SAFETY: unlinked node from Box::into_raw.
                drop(unsafe { Box::from_raw(tree.remove(s)) });
            }
        }
    }

    #[test]
    fn a_record_over_a_moved_range_replaces_the_stale_one() {
        // Address ranges nobody maps (the tree only records numbers).
        let (a, b, c) = (0x6100_0000_0000usize, 0x6100_1000_0000usize, 0x6100_2000_0000usize);
        let mb = 1 << 20;
        assert!(record_sized(a, a + 2 * mb, VmaKind::Large, 5));
        let (r, m) = begin_move(a, VmaKind::Large).unwrap();
        assert_eq!((r.start, r.end, r.requested), (a, a + 2 * mb, 5));
        assert!(begin_move(a, VmaKind::Large).is_none(), "one mover at a time");
        assert_eq!(lookup(a + 1).map(|r| r.start), Some(a), "still found while it moves");
        // The kernel moved it and handed part of the old range out: the new
        // record replaces the stale one.
        assert!(record(a + mb, a + 3 * mb, VmaKind::Chunk));
        assert_eq!(lookup(a).map(|r| r.start), None);
        let mut told = Vec::new();
        let moved = end_move(m, Some((b, b + 4 * mb, 7, VmaKind::Large)), |l| told.push(l));
        // What is left of the old range is its first MiB, recorded over by
        // nothing.
        assert_eq!(told, [LeftRange::Unrecorded(a, a + mb)]);
        assert_eq!((moved.start, moved.end, moved.requested), (b, b + 4 * mb, 7));
        assert_eq!(lookup(b + 3 * mb), Some(moved));
        // A move that did not happen leaves the record as it was, and a
        // region recorded beside it is not disturbed.
        assert!(record(c, c + mb, VmaKind::Chunk));
        let (_, m) = begin_move(b, VmaKind::Large).unwrap();
        assert_eq!(end_move(m, None, |_| panic!("nothing moved")), moved);
        // A move whose new range takes in its old one (grown in place).
        let (_, m) = begin_move(b, VmaKind::Large).unwrap();
        let mut told = Vec::new();
        let grown = end_move(m, Some((b, b + 5 * mb, 9, VmaKind::Large)), |l| told.push(l));
        assert_eq!(told, [LeftRange::Whole], "nobody recorded over the old range");
        assert_eq!(lookup(b + 4 * mb), Some(grown));
        for (start, kind) in [(a + mb, VmaKind::Chunk), (b, VmaKind::Large), (c, VmaKind::Chunk)] {
            assert!(remove_exact(start, kind).is_ok());
        }
        TREE.lock().check();
    }

    /// `remap` re-kinds a region in place when its range stays, and moves
    /// it through the tree when the range changes; the tree stays valid
    /// and every lookup sees the new record either way.
    #[test]
    fn remap_in_place_and_to_a_new_range() {
        let a = 0x6400_0000_0000usize;
        let mb = 1 << 20;
        for k in 0..5 {
            assert!(record_sized(a + 2 * k * mb, a + (2 * k + 1) * mb, VmaKind::LargeCached, 0));
        }
        let target = a + 4 * mb;
        // Same range: kind and requested size change.
        let r = remap(target, VmaKind::LargeCached, |r| Some((r.start, r.end, 12345, VmaKind::Large))).unwrap();
        assert_eq!((r.start, r.end, r.kind, r.requested), (target, target + mb, VmaKind::Large, 12345));
        assert_eq!(lookup(target + mb - 1), Some(r));
        assert!(remap(target, VmaKind::LargeCached, |r| Some((r.start, r.end, 0, VmaKind::Large))).is_none(), "the kind is checked");
        TREE.lock().check();
        // A longer range, into the free space after it.
        let grown = remap(target, VmaKind::Large, |r| Some((r.start, r.end + mb / 2, 7, VmaKind::Large))).unwrap();
        assert_eq!(lookup(target + mb + mb / 4), Some(grown));
        TREE.lock().check();
        // Declined: unchanged.
        assert!(remap(target, VmaKind::Large, |_| None).is_none());
        assert_eq!(lookup(target), Some(grown));
        assert!(remove_exact(target, VmaKind::Large).is_ok());
        for k in [0, 1, 3, 4] {
            assert!(remove_exact(a + 2 * k * mb, VmaKind::LargeCached).is_ok());
        }
        TREE.lock().check();
    }

    /// A move whose old range was recorded over in two places hears of the
    /// pieces nothing holds, in address order.
    #[test]
    fn a_move_tells_the_pieces_left_of_its_old_range() {
        let (a, b) = (0x6200_0000_0000usize, 0x6200_1000_0000usize);
        let mb = 1 << 20;
        assert!(record_sized(a, a + 4 * mb, VmaKind::Large, 4 * mb));
        let (_, m) = begin_move(a, VmaKind::Large).unwrap();
        assert!(record(a + mb, a + 2 * mb, VmaKind::Chunk));
        assert!(record(a + 3 * mb, a + 5 * mb, VmaKind::Chunk));
        let mut told = Vec::new();
        end_move(m, Some((b, b + 6 * mb, 6 * mb, VmaKind::Large)), |l| told.push(l));
        assert_eq!(told, [LeftRange::Unrecorded(a, a + mb), LeftRange::Unrecorded(a + 2 * mb, a + 3 * mb)]);
        for (start, kind) in [(a + mb, VmaKind::Chunk), (a + 3 * mb, VmaKind::Chunk), (b, VmaKind::Large)] {
            assert!(remove_exact(start, kind).is_ok());
        }
        TREE.lock().check();
    }

    #[test]
    fn heap_extents_merge_in_the_global_tree() {
        // An address range nobody maps (the tree only records numbers).
        let base = 0x6000_0000_0000usize;
        let mb = 1 << 20;
        assert!(record(base, base + mb, VmaKind::Heap));
        assert!(record(base + 2 * mb, base + 3 * mb, VmaKind::Heap));
        assert!(record(base + mb, base + 2 * mb, VmaKind::Heap));
        let r = lookup(base + mb + 5).unwrap();
        assert_eq!((r.start, r.end, r.kind), (base, base + 3 * mb, VmaKind::Heap));
        assert!(!record(base + mb, base + mb + 4096, VmaKind::Large), "overlap refused");
        assert!(remove_exact(base + 5, VmaKind::Heap).is_err());
        assert_eq!(remove_exact(base, VmaKind::Heap).unwrap().end, base + 3 * mb);
        assert!(lookup(base).is_none());
        TREE.lock().check();
    }
}
