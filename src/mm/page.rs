//! Page descriptors (`struct page`), chunk descriptors (a `mem_map` section
//! per 4 MiB chunk) and the chunk map that finds them from any address.
//!
//! Glossary (used the same way in every module):
//! - *page*: 4 KiB of address space, `PAGE_SIZE`.
//! - *chunk*: a 4 MiB-aligned run of 1024 pages the buddy allocator manages;
//!   one order-10 block when wholly free. Comes from `brk` or `mmap`.
//! - *page descriptor* ([`Page`]): the allocator's record of one page, kept
//!   in the chunk descriptor, never inside user memory, so an overflow in
//!   user data cannot reach it.
//! - *head* / *tail*: the first page of a multi-page block and the others;
//!   a tail records its distance to the head, like a kernel compound page.
//!
//! Finding a descriptor from an address is two loads from the chunk map
//! (`CHUNK_MAP[addr >> 34][(addr >> 22) & 4095]`) and an index: O(1), no
//! lock, no header in front of user data.
//!
//! Who may write what: the buddy zone lock covers descriptors of free blocks
//! (`kind == PG_FREE`), `order`, `zero` and free-list links; a slab cache's
//! lock covers the slab fields of the slabs it owns. `kind` is atomic so an
//! unlocked reader (`free` dispatching on a pointer) sees a whole value.

use crate::os::{self, PAGE_SHIFT, PAGE_SIZE};
use core::ptr;
use core::sync::atomic::{AtomicPtr, AtomicU8, Ordering};

/// Largest buddy order: blocks of `1 << MAX_ORDER` pages (4 MiB).
pub const MAX_ORDER: usize = 10;
/// Pages per chunk.
pub const CHUNK_PAGES: usize = 1 << MAX_ORDER;
/// log2 of [`CHUNK_SIZE`].
pub const CHUNK_SHIFT: u32 = PAGE_SHIFT + MAX_ORDER as u32;
/// Bytes per chunk (4 MiB); chunks are aligned to it.
pub const CHUNK_SIZE: usize = 1 << CHUNK_SHIFT;

/// Page is not managed (never used for a descriptor that is live).
pub const PG_NONE: u8 = 0;
/// Page belongs to a free buddy block (the head carries `order`).
pub const PG_FREE: u8 = 1;
/// Head page of a slab: slab fields are valid.
pub const PG_SLAB: u8 = 2;
/// Head page of a run handed out whole by the page tier (`npages` valid).
pub const PG_PAGES: u8 = 3;
/// Tail page of a slab or page run: `head_offset` leads to the head.
pub const PG_TAIL: u8 = 4;
/// Head page of a page-tier run kept on a thread's run list (see
/// `crate::mm::runs`): handed out to the page tier, no block's. Its
/// tails stay `PG_TAIL` and `span` its length.
pub const PG_CACHED: u8 = 5;

/// [`Chunk::group`] of a chunk that is one free block.
pub const GROUP_FREE: u8 = 0;
/// [`Chunk::group`] of a chunk split for slabs and the allocator's own
/// metadata: blocks of a power-of-two size, naturally aligned.
pub const GROUP_SLABS: u8 = 1;
/// [`Chunk::group`] of a chunk split for exact page runs (the page tier):
/// any number of pages, page-aligned.
pub const GROUP_RUNS: u8 = 2;
/// Number of chunk groups.
pub const NR_GROUPS: usize = 3;

/// The `struct page` analogue: one per 4 KiB page of a chunk.
#[repr(C)]
pub struct Page {
    /// `PG_*` state.
    pub kind: AtomicU8,
    /// Buddy order of the block this page heads (free blocks and slabs).
    pub order: u8,
    /// Slab: the cache index ([`crate::slab`]) that owns the slab.
    pub class: u8,
    /// Free block: its pages are known to read as zero (fresh from the OS,
    /// or released with `MADV_DONTNEED`).
    pub zero: bool,
    /// Tail: pages back to the head. Page-tier head: pages in the run.
    /// Free block head: its decay stamp, the coarse time in milliseconds
    /// it became free (see `buddy::decay_tick`). Slab head: the offset in
    /// the slab of its free list's last object plus one, 0 when not known
    /// (see `slab::cache::free_tail`).
    pub span: u32,
    /// Slab: objects handed out and not yet returned.
    pub inuse: u16,
    /// Slab: objects `[0, bump)` have been handed out at least once; the
    /// rest have never been touched (lazy free-list build, so a new slab
    /// does not fault in all its pages).
    pub bump: u16,
    /// Slab: objects on `freelist`.
    pub nr_free: u16,
    /// Every page of a user slab: its size class + 1; 0 for any other
    /// page. Lets `free`'s slow paths find an object's class from the page
    /// it lies in with one load, without going to the slab's head (the
    /// fast path reads the same from [`Chunk::tags`]).
    pub user_class: u8,
    /// Slab: the node ([`crate::slab`]) whose cache owns it.
    pub node: u8,
    /// Slab: singly linked list of freed objects, linked through their
    /// first word.
    pub freelist: *mut u8,
    /// List links: buddy `free_area[order]` or a cache's slab list.
    pub next: *mut Page,
    /// See `next`.
    pub prev: *mut Page,
}

impl Page {
    /// `user_class | node << 8`, read at once (adjacent fields, see the
    /// assertion below): a slab page's tag in [`Chunk::tags`].
    #[inline(always)]
    pub fn class_and_node(&self) -> u32 {
        // SAFETY: `user_class` and `node` are adjacent bytes at an even
        // offset of a `repr(C)` struct; reading them as one u16 reads
        // exactly those two fields.
        u16::from_le(unsafe { ptr::addr_of!(self.user_class).cast::<u16>().read() }) as u32
    }

    /// The page's state.
    #[inline]
    pub fn kind(&self) -> u8 {
        self.kind.load(Ordering::Relaxed)
    }

    /// Sets the page's state.
    #[inline]
    pub fn set_kind(&self, k: u8) {
        self.kind.store(k, Ordering::Relaxed)
    }
}

const _: () = assert!(
    core::mem::offset_of!(Page, user_class) % 2 == 0
        && core::mem::offset_of!(Page, node) == core::mem::offset_of!(Page, user_class) + 1
);

/// Where a chunk's address space came from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ChunkSource {
    /// Part of the program break (`[heap]`).
    Brk,
    /// Its own anonymous mapping.
    Mmap,
}

/// Descriptor of one chunk: where it is and a descriptor per page.
#[repr(C)]
pub struct Chunk {
    /// First byte of the chunk (4 MiB-aligned).
    pub base: usize,
    /// `brk` or `mmap`.
    pub source: ChunkSource,
    /// The page descriptors past the first page have been given back to
    /// the kernel (the chunk is one free block; see `buddy`'s release).
    /// Cleared when the chunk is split again.
    pub descriptors_released: bool,
    /// What the chunk's blocks serve while it is split: [`GROUP_SLABS`]
    /// or [`GROUP_RUNS`]; [`GROUP_FREE`] while it is one free block. The
    /// buddy keeps free blocks of the two groups apart (see
    /// `buddy::FreeArea`). Written under the zone lock.
    pub group: u8,
    /// Per page, what `free`'s fast path reads: `user_class | node << 8`
    /// for a page of a user slab, 0 for any other page. A copy of those
    /// two fields of the page's descriptor ([`Page::class_and_node`]),
    /// kept apart from the descriptors because they change on every slab
    /// refill and flush (`inuse`, `freelist`), and a free on one CPU
    /// reading the tag from the cache line another CPU is writing to waits
    /// for the line to come over. Written only when a page becomes, or
    /// stops being, a slab page ([`set_tags`]). 2 KiB, in the descriptor's
    /// first page, which is never released.
    pub tags: [u16; CHUNK_PAGES],
    /// One descriptor per page, indexed by `(addr - base) >> PAGE_SHIFT`.
    pub pages: [Page; CHUNK_PAGES],
}

const _: () = assert!(core::mem::offset_of!(Chunk, pages) <= PAGE_SIZE);

/// Chunk descriptors are allocated at this alignment so a page descriptor
/// pointer leads back to its chunk by masking.
pub const CHUNK_DESC_ALIGN: usize = 64 * 1024;
/// Bytes reserved for one chunk descriptor.
pub const CHUNK_DESC_SIZE: usize = (core::mem::size_of::<Chunk>() + PAGE_SIZE - 1) & !(PAGE_SIZE - 1);
const _: () = assert!(core::mem::size_of::<Chunk>() <= CHUNK_DESC_ALIGN);
const _: () = assert!(core::mem::size_of::<Page>() == 40);

impl Chunk {
    /// Initialises a chunk descriptor in place at `desc` (zeroed memory of
    /// [`CHUNK_DESC_SIZE`] bytes at [`CHUNK_DESC_ALIGN`]). All-zero page
    /// descriptors are valid: `PG_NONE`, no class, empty links.
    ///
    /// # Safety
    /// `desc` is writable, aligned and not yet shared with anyone.
    pub unsafe fn init(desc: *mut Chunk, base: usize, source: ChunkSource) {
        // SAFETY: the caller hands over exclusive, writable, zeroed memory;
        // zero page descriptors are valid, so only the header needs writing.
        unsafe {
            ptr::addr_of_mut!((*desc).base).write(base);
            ptr::addr_of_mut!((*desc).source).write(source);
            ptr::addr_of_mut!((*desc).descriptors_released).write(false);
            ptr::addr_of_mut!((*desc).group).write(GROUP_FREE);
            debug_assert!((*desc).pages[0].kind() == PG_NONE);
        }
    }

    /// The chunk a page descriptor belongs to.
    #[inline]
    pub fn of_page(page: *const Page) -> *mut Chunk {
        (page as usize & !(CHUNK_DESC_ALIGN - 1)) as *mut Chunk
    }

    /// Index of `page` inside its chunk.
    #[inline]
    pub fn index_of(page: *const Page) -> usize {
        let chunk = Self::of_page(page);
        // SAFETY: only the address of the field is computed.
        let first = unsafe { ptr::addr_of!((*chunk).pages) } as usize;
        (page as usize - first) / core::mem::size_of::<Page>()
    }

    /// The fast-path tag ([`Chunk::tags`]) of the page of `chunk` that
    /// holds `addr`.
    ///
    /// # Safety
    /// `chunk` is a live chunk descriptor and holds `addr`.
    #[inline(always)]
    pub unsafe fn tag(chunk: *mut Chunk, addr: usize) -> u16 {
        // SAFETY: per the caller; the index is < CHUNK_PAGES.
        unsafe { *Self::tag_slot(chunk, (addr >> PAGE_SHIFT) & (CHUNK_PAGES - 1)) }
    }

    /// The tags of `chunk` as an origin for [`tag_at`]: the address of
    /// its tag array less twice the page number of its first page, so
    /// that the tag of the page holding `addr` is at this plus
    /// `(addr >> PAGE_SHIFT) * 2` (chunks are aligned to their size).
    ///
    /// # Safety
    /// `chunk` is a live chunk descriptor.
    #[inline]
    pub unsafe fn tags_origin(chunk: *mut Chunk) -> usize {
        // SAFETY: per the caller; only the field's address is computed.
        let tags = unsafe { ptr::addr_of!((*chunk).tags) } as usize;
        // SAFETY: as above.
        let base = unsafe { (*chunk).base };
        tags.wrapping_sub((base >> PAGE_SHIFT) * core::mem::size_of::<u16>())
    }

    /// Where the tag of page `index` of `chunk` is kept.
    ///
    /// # Safety
    /// `chunk` is a live chunk descriptor and `index < CHUNK_PAGES`.
    #[inline(always)]
    unsafe fn tag_slot(chunk: *mut Chunk, index: usize) -> *mut u16 {
        debug_assert!(index < CHUNK_PAGES);
        // SAFETY: in bounds by the caller's promise; only the address is
        // computed.
        unsafe { ptr::addr_of_mut!((*chunk).tags).cast::<u16>().add(index) }
    }

    /// Descriptor of page `index` of `chunk`.
    ///
    /// # Safety
    /// `chunk` is a live chunk descriptor and `index < CHUNK_PAGES`.
    #[inline]
    pub unsafe fn page(chunk: *mut Chunk, index: usize) -> *mut Page {
        debug_assert!(index < CHUNK_PAGES);
        // SAFETY: in bounds by the caller's promise.
        unsafe { ptr::addr_of_mut!((*chunk).pages).cast::<Page>().add(index) }
    }
}

/// The fast-path tag of the page holding `addr`, from the
/// [`Chunk::tags_origin`] of the chunk that holds it.
///
/// # Safety
/// `origin` is the origin of a live chunk that holds `addr`.
#[inline(always)]
pub unsafe fn tag_at(origin: usize, addr: usize) -> u16 {
    // SAFETY: per the caller, inside that chunk's tag array.
    unsafe { *(origin.wrapping_add((addr >> PAGE_SHIFT) * core::mem::size_of::<u16>()) as *const u16) }
}

/// Sets the fast-path tag ([`Chunk::tags`]) of `npages` pages from
/// `first`, which lie in one chunk, to `tag`.
///
/// # Safety
/// The pages lie in one live chunk and belong to the caller.
pub unsafe fn set_tags(first: *mut Page, npages: usize, tag: u16) {
    let chunk = Chunk::of_page(first);
    let index = Chunk::index_of(first);
    debug_assert!(index + npages <= CHUNK_PAGES);
    // SAFETY: in the chunk's tag array by the caller's promise.
    unsafe {
        let tags = Chunk::tag_slot(chunk, index);
        for i in 0..npages {
            tags.add(i).write(tag);
        }
    }
}

/// The fast-path tag ([`Chunk::tags`]) of the page `page` describes.
///
/// # Safety
/// `page` is a descriptor in a live chunk descriptor.
pub unsafe fn tag(page: *const Page) -> u16 {
    // SAFETY: per the caller; the index is < CHUNK_PAGES.
    unsafe { *Chunk::tag_slot(Chunk::of_page(page), Chunk::index_of(page)) }
}

/// Address of the memory a page descriptor describes.
#[inline]
pub fn page_address(page: *const Page) -> usize {
    let chunk = Chunk::of_page(page);
    // SAFETY: page descriptors only exist inside live chunk descriptors.
    let base = unsafe { (*chunk).base };
    base + (Chunk::index_of(page) << PAGE_SHIFT)
}

// ---------------------------------------------------------------------------
// The chunk map: address -> chunk descriptor.

const ADDRESS_BITS: u32 = 47;
const LEAF_BITS: u32 = 12;
const ROOT_BITS: u32 = ADDRESS_BITS - CHUNK_SHIFT - LEAF_BITS;
const ROOT_ENTRIES: usize = 1 << ROOT_BITS;
const LEAF_ENTRIES: usize = 1 << LEAF_BITS;
const LEAF_BYTES: usize = LEAF_ENTRIES * core::mem::size_of::<usize>();

type Leaf = [AtomicPtr<Chunk>; LEAF_ENTRIES];

/// Root of the chunk map: 8192 pointers to leaves of 4096 chunk pointers,
/// covering the 47-bit user address space. 64 KiB of zero `.bss` that is
/// only touched where chunks exist.
#[link_section = ".bss.cold.buddyslab"]
static CHUNK_MAP: [AtomicPtr<Leaf>; ROOT_ENTRIES] = [const { AtomicPtr::new(ptr::null_mut()) }; ROOT_ENTRIES];

/// The chunk descriptor for the chunk containing `addr`, or null when
/// `addr` is not inside any chunk of this allocator.
#[inline]
pub fn chunk_of(addr: usize) -> *mut Chunk {
    let root = addr >> (CHUNK_SHIFT + LEAF_BITS);
    if root >= ROOT_ENTRIES {
        return ptr::null_mut();
    }
    let leaf = CHUNK_MAP[root].load(Ordering::Acquire);
    if leaf.is_null() {
        return ptr::null_mut();
    }
    // SAFETY: leaves are never freed once published.
    unsafe { (*leaf)[(addr >> CHUNK_SHIFT) & (LEAF_ENTRIES - 1)].load(Ordering::Acquire) }
}

/// The page descriptor for `addr`, or null when no chunk holds it.
#[inline]
pub fn page_of(addr: usize) -> *mut Page {
    let chunk = chunk_of(addr);
    if chunk.is_null() {
        return ptr::null_mut();
    }
    // SAFETY: a published chunk descriptor is live; the index is < 1024.
    unsafe { Chunk::page(chunk, (addr >> PAGE_SHIFT) & (CHUNK_PAGES - 1)) }
}

/// Publishes `chunk` in the chunk map. Returns the address and length of a
/// newly mapped leaf, if one was needed (the caller records it as
/// metadata), or an error when no memory was left for the leaf. Takes no
/// lock: each chunk has a slot of its own, and of two threads that map a
/// missing leaf at once, the one whose leaf is installed second unmaps it.
///
/// # Safety
/// `chunk` is a live, initialised descriptor for a chunk not yet published.
pub unsafe fn register_chunk(chunk: *mut Chunk) -> Result<Option<(usize, usize)>, os::Errno> {
    // SAFETY: live descriptor by the caller's promise.
    let base = unsafe { (*chunk).base };
    let root = base >> (CHUNK_SHIFT + LEAF_BITS);
    let mut new_leaf = None;
    let mut leaf = CHUNK_MAP[root].load(Ordering::Acquire);
    if leaf.is_null() {
        let mem = os::mmap_anonymous(LEAF_BYTES, false)?;
        match CHUNK_MAP[root].compare_exchange(ptr::null_mut(), mem as *mut Leaf, Ordering::AcqRel, Ordering::Acquire) {
            Ok(_) => {
                leaf = mem as *mut Leaf;
                new_leaf = Some((mem, LEAF_BYTES));
            }
            Err(installed) => {
                // SAFETY: our fresh mapping, never published.
                unsafe {
                    let _ = os::munmap(mem, LEAF_BYTES);
                }
                leaf = installed;
            }
        }
    }
    // SAFETY: leaves live forever; the slot is this chunk's alone.
    unsafe { (*leaf)[(base >> CHUNK_SHIFT) & (LEAF_ENTRIES - 1)].store(chunk, Ordering::Release) };
    Ok(new_leaf)
}

// ---------------------------------------------------------------------------
// PageList: the one intrusive list of page descriptors, shared by the buddy
// free areas and the slab lists.

/// A doubly linked list of page descriptors through `Page::next/prev`,
/// with a count and its last entry, so an owner that pushes at the front can walk
/// from the oldest entry (the buddy's decay does). Not synchronised: the
/// owner's lock protects it.
pub struct PageList {
    head: *mut Page,
    last: *mut Page,
    len: usize,
}

// SAFETY: the list only holds pointers to descriptors; the lock around the
// list owner serialises all access.
unsafe impl Send for PageList {}

impl PageList {
    /// An empty list.
    pub const fn new() -> Self {
        PageList { head: ptr::null_mut(), last: ptr::null_mut(), len: 0 }
    }

    /// Number of entries.
    #[inline]
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether the list is empty.
    #[inline]
    pub fn is_empty(&self) -> bool {
        self.head.is_null()
    }

    /// First entry, or null.
    #[inline]
    pub fn first(&self) -> *mut Page {
        self.head
    }

    /// Last entry, or null: the one pushed at the front longest ago.
    #[inline]
    pub fn last(&self) -> *mut Page {
        self.last
    }

    /// Pushes `page` at the front.
    ///
    /// # Safety
    /// `page` is live and on no list.
    #[inline]
    pub unsafe fn push_front(&mut self, page: *mut Page) {
        // SAFETY: `page` and the current head are live descriptors we own.
        unsafe {
            (*page).prev = ptr::null_mut();
            (*page).next = self.head;
            if self.head.is_null() {
                self.last = page;
            } else {
                (*self.head).prev = page;
            }
        }
        self.head = page;
        self.len += 1;
    }

    /// Unlinks `page`.
    ///
    /// # Safety
    /// `page` is on this list.
    #[inline]
    pub unsafe fn remove(&mut self, page: *mut Page) {
        // SAFETY: `page` and its neighbours are on this list, which we own.
        unsafe {
            let (prev, next) = ((*page).prev, (*page).next);
            if prev.is_null() {
                debug_assert!(self.head == page);
                self.head = next;
            } else {
                (*prev).next = next;
            }
            if next.is_null() {
                debug_assert!(self.last == page);
                self.last = prev;
            } else {
                (*next).prev = prev;
            }
            (*page).next = ptr::null_mut();
            (*page).prev = ptr::null_mut();
        }
        self.len -= 1;
    }

    /// Removes and returns the first entry, or null.
    ///
    /// # Safety
    /// The list's entries are live.
    #[inline]
    pub unsafe fn pop_front(&mut self) -> *mut Page {
        let page = self.head;
        if !page.is_null() {
            // SAFETY: `page` is the head of this list.
            unsafe { self.remove(page) };
        }
        page
    }

    /// Calls `f` on each entry, front to back.
    ///
    /// # Safety
    /// The list's entries are live; `f` does not unlink them.
    pub unsafe fn for_each(&self, mut f: impl FnMut(*mut Page)) {
        let mut p = self.head;
        while !p.is_null() {
            f(p);
            // SAFETY: entries are live while on the list.
            p = unsafe { (*p).next };
        }
    }
}

impl Default for PageList {
    fn default() -> Self {
        Self::new()
    }
}
