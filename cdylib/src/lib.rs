//! `libbuddyslab.so`: glibc's malloc API on top of `buddyslab::heap`, for
//! `LD_PRELOAD`; compiled again by the `secure` package as
//! `libbuddyslab_secure.so`, on top of `buddyslab::heap::secure`.
//!
//! Semantics are glibc's, because programs depend on them and a function
//! left out is served by glibc's own malloc, which then frees our memory
//! (or the reverse) and crashes: 16-byte alignment for every size,
//! `malloc(0)` unique and freeable, NULL with `errno = ENOMEM` for
//! impossible sizes and overflowing products, `EINVAL` for bad alignments
//! (leaving `posix_memalign`'s out-pointer alone), `free` keeping `errno`.
//!
//! The constructor tells the heap it is the process's `malloc`, so chunks
//! may come from `brk`. Calls that arrive before it (from the loader or
//! libc's own start-up) work too: every structure is statically
//! initialised and they simply get `mmap` chunks. It also answers the
//! `buddyslab` tool's question whether this library's `malloc` is the one
//! the process uses (see [`announce`]).

// No `std` where panics abort (the release profile): see the root crate.
// A panic (a broken invariant; the allocator returns errors, it does not
// panic) then prints its message and aborts. Unwinding builds (the dev
// profile) need std's unwinder and keep it.
#![cfg_attr(panic = "abort", no_std)]

// Without std nothing names libc, whose functions (pthread keys, abort,
// sched_getcpu) the allocator calls: record the dependency.
#[link(name = "c")]
extern "C" {}

#[cfg(not(feature = "secure"))]
use buddyslab::heap;
use buddyslab::internals::counters;
// libbuddyslab_secure.so: the same C face over the secure layer.
#[cfg(feature = "secure")]
use buddyslab::heap::secure as heap;
use buddyslab::stats::{self, MallInfo2};
use core::ffi::{c_int, c_void};
use core::ptr;

#[link_section = ".text.hot.buddyslab"]
extern "C" fn constructor() {
    heap::set_process_malloc();
    #[cfg(feature = "secure")]
    heap::install_fault_handler();
    announce::report();
}

#[used]
#[link_section = ".init_array"]
static CONSTRUCTOR: extern "C" fn() = constructor;

pub mod announce;
pub mod cxx;

#[inline]
fn set_errno(e: c_int) {
    // SAFETY: errno is the calling thread's; the location is always valid.
    unsafe { *libc::__errno_location() = e };
}

#[inline]
fn or_enomem(p: *mut u8) -> *mut c_void {
    if p.is_null() {
        set_errno(libc::ENOMEM);
    }
    p.cast()
}

/// `p`, a block `calloc` or the aligned family just handed out (or null),
/// counted as theirs: the views' `malloc` is every other block.
fn handed_out<T>(p: *mut T) -> *mut T {
    if !p.is_null() {
        counters::count_entry_blocks(1, 0);
    }
    p
}

/// `malloc(3)`: NULL with `ENOMEM` on failure. The heap calls back to set
/// `errno` from its slow path, so the fast path is the heap's, with
/// nothing after it.
#[no_mangle]
#[link_section = ".text.hot.buddyslab"]
pub extern "C" fn malloc(size: usize) -> *mut c_void {
    heap::malloc_or(size, enomem).cast()
}

#[cold]
fn enomem() {
    set_errno(libc::ENOMEM);
}

/// `free(3)`. Aborts with a message on a pointer that is not a live block.
///
/// # Safety
/// `p` is null or a live block, not used afterwards.
#[no_mangle]
#[link_section = ".text.hot.buddyslab"]
pub unsafe extern "C" fn free(p: *mut c_void) {
    // SAFETY: per the caller.
    unsafe { heap::free(p.cast()) }
}

/// `cfree(3)`: the old name of `free`.
///
/// # Safety
/// As [`free`].
#[no_mangle]
#[link_section = ".text.hot.buddyslab"]
pub unsafe extern "C" fn cfree(p: *mut c_void) {
    // SAFETY: per the caller.
    unsafe { heap::free(p.cast()) }
}

/// `free_sized` (C23): the size is a hint we do not need.
///
/// # Safety
/// As [`free`].
#[no_mangle]
#[link_section = ".text.hot.buddyslab"]
pub unsafe extern "C" fn free_sized(p: *mut c_void, _size: usize) {
    // SAFETY: per the caller.
    unsafe { heap::free(p.cast()) }
}

/// `free_aligned_sized` (C23).
///
/// # Safety
/// As [`free`].
#[no_mangle]
#[link_section = ".text.hot.buddyslab"]
pub unsafe extern "C" fn free_aligned_sized(p: *mut c_void, _align: usize, _size: usize) {
    // SAFETY: per the caller.
    unsafe { heap::free(p.cast()) }
}

/// `calloc(3)`: NULL with `ENOMEM` when `n * size` overflows.
#[no_mangle]
#[link_section = ".text.hot.buddyslab"]
pub extern "C" fn calloc(n: usize, size: usize) -> *mut c_void {
    counters::count_call(counters::Entry::Calloc);
    handed_out(or_enomem(heap::calloc(n, size)))
}

/// `realloc(3)`. `realloc(p, 0)` frees `p` and returns NULL, as glibc does.
/// On failure returns NULL with `ENOMEM` and leaves `p` intact.
///
/// # Safety
/// `p` is null or a live block.
#[no_mangle]
#[link_section = ".text.hot.buddyslab"]
pub unsafe extern "C" fn realloc(p: *mut c_void, size: usize) -> *mut c_void {
    counters::count_call(counters::Entry::Realloc);
    // SAFETY: per the caller.
    let q = unsafe { heap::realloc(p.cast(), size) };
    if q.is_null() && (p.is_null() || size != 0) {
        set_errno(libc::ENOMEM);
    }
    q.cast()
}

/// `reallocarray(3)`: `realloc(p, n * size)` with an overflow check.
///
/// # Safety
/// As [`realloc`].
#[no_mangle]
#[link_section = ".text.hot.buddyslab"]
pub unsafe extern "C" fn reallocarray(p: *mut c_void, n: usize, size: usize) -> *mut c_void {
    match n.checked_mul(size) {
        // SAFETY: per the caller.
        Some(total) => unsafe { realloc(p, total) },
        None => {
            set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
    }
}

/// `posix_memalign(3)`: `EINVAL` unless `align` is a power of two and a
/// multiple of `sizeof(void *)`; `*out` is written only on success.
///
/// # Safety
/// `out` is valid for a pointer write.
#[no_mangle]
#[link_section = ".text.hot.buddyslab"]
pub unsafe extern "C" fn posix_memalign(out: *mut *mut c_void, align: usize, size: usize) -> c_int {
    counters::count_call(counters::Entry::Aligned);
    if !align.is_power_of_two() || align % core::mem::size_of::<*mut c_void>() != 0 {
        return libc::EINVAL;
    }
    let p = handed_out(heap::aligned_alloc(align, size));
    if p.is_null() {
        set_errno(libc::ENOMEM);
        return libc::ENOMEM;
    }
    // SAFETY: per the caller.
    unsafe { *out = p.cast() };
    0
}

/// `aligned_alloc(3)`: `EINVAL` for an alignment that is not a power of two.
#[no_mangle]
#[link_section = ".text.hot.buddyslab"]
pub extern "C" fn aligned_alloc(align: usize, size: usize) -> *mut c_void {
    counters::count_call(counters::Entry::Aligned);
    if !align.is_power_of_two() {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    handed_out(or_enomem(heap::aligned_alloc(align, size)))
}

/// `memalign(3)`: glibc rounds an alignment that is not a power of two up
/// to the next one; an alignment over `SIZE_MAX / 2` is `EINVAL`.
#[no_mangle]
#[link_section = ".text.hot.buddyslab"]
pub extern "C" fn memalign(align: usize, size: usize) -> *mut c_void {
    counters::count_call(counters::Entry::Aligned);
    if align > usize::MAX / 2 + 1 {
        set_errno(libc::EINVAL);
        return ptr::null_mut();
    }
    let align = align.max(1).next_power_of_two();
    handed_out(or_enomem(heap::aligned_alloc(align, size)))
}

/// `valloc(3)`: page-aligned.
#[no_mangle]
pub extern "C" fn valloc(size: usize) -> *mut c_void {
    counters::count_call(counters::Entry::Aligned);
    handed_out(or_enomem(heap::aligned_alloc(buddyslab::internals::os::PAGE_SIZE, size)))
}

/// `pvalloc(3)`: page-aligned, size rounded up to whole pages.
#[no_mangle]
pub extern "C" fn pvalloc(size: usize) -> *mut c_void {
    counters::count_call(counters::Entry::Aligned);
    match heap::page_round(size) {
        Some(rounded) => handed_out(or_enomem(heap::aligned_alloc(buddyslab::internals::os::PAGE_SIZE, rounded))),
        None => {
            set_errno(libc::ENOMEM);
            ptr::null_mut()
        }
    }
}

/// `malloc_usable_size(3)`: 0 for NULL.
///
/// # Safety
/// `p` is null or a live block.
#[no_mangle]
#[link_section = ".text.hot.buddyslab"]
pub unsafe extern "C" fn malloc_usable_size(p: *mut c_void) -> usize {
    heap::usable_size(p.cast())
}

/// `malloc_trim(3)`: returns 1 when memory was given back to the system.
#[no_mangle]
pub extern "C" fn malloc_trim(_pad: usize) -> c_int {
    heap::trim() as c_int
}

/// `mallopt(3)`. `M_MMAP_THRESHOLD` (0 above 32 MiB),
/// `M_TRIM_THRESHOLD` and `M_PERTURB` are honoured; setting either threshold, `M_TOP_PAD` or
/// `M_MMAP_MAX` stops the thresholds' adaptation, as in glibc. The other
/// glibc parameters are accepted and have no effect here (buddyslab has no
/// arenas, fastbins or top pad); an unknown parameter returns 1, as
/// glibc's does.
#[no_mangle]
pub extern "C" fn mallopt(param: c_int, value: c_int) -> c_int {
    const M_TRIM_THRESHOLD: c_int = -1;
    const M_TOP_PAD: c_int = -2;
    const M_MMAP_THRESHOLD: c_int = -3;
    const M_MMAP_MAX: c_int = -4;
    const M_PERTURB: c_int = -6;
    heap::ensure_init();
    match param {
        // glibc takes both as unsigned: a negative int becomes huge.
        M_MMAP_THRESHOLD => heap::set_mmap_threshold(value as usize) as c_int,
        M_TRIM_THRESHOLD => {
            heap::set_trim_threshold(value as usize);
            1
        }
        M_PERTURB => {
            heap::set_perturb(value as usize);
            1
        }
        M_TOP_PAD | M_MMAP_MAX => {
            heap::fix_thresholds();
            1
        }
        _ => 1,
    }
}

/// `mallinfo2(3)`.
#[no_mangle]
pub extern "C" fn mallinfo2() -> MallInfo2 {
    stats::mallinfo2()
}

/// glibc's old `struct mallinfo`, with `int` fields.
#[repr(C)]
pub struct MallInfo {
    arena: c_int,
    ordblks: c_int,
    smblks: c_int,
    hblks: c_int,
    hblkhd: c_int,
    usmblks: c_int,
    fsmblks: c_int,
    uordblks: c_int,
    fordblks: c_int,
    keepcost: c_int,
}

/// `mallinfo(3)`: `mallinfo2` cut to `int`, as glibc does.
#[no_mangle]
pub extern "C" fn mallinfo() -> MallInfo {
    let m = stats::mallinfo2();
    let i = |v: usize| v as c_int;
    MallInfo {
        arena: i(m.arena),
        ordblks: i(m.ordblks),
        smblks: i(m.smblks),
        hblks: i(m.hblks),
        hblkhd: i(m.hblkhd),
        usmblks: i(m.usmblks),
        fsmblks: i(m.fsmblks),
        uordblks: i(m.uordblks),
        fordblks: i(m.fordblks),
        keepcost: i(m.keepcost),
    }
}

/// `malloc_info(3)`: glibc's XML description of the heap, written to
/// `stream`. `options` must be 0: otherwise it returns `EINVAL` (the value,
/// as glibc's does, not -1 with `errno`).
///
/// # Safety
/// `stream` is an open, writable `FILE *`.
#[no_mangle]
pub unsafe extern "C" fn malloc_info(options: c_int, stream: *mut libc::FILE) -> c_int {
    if options != 0 {
        return libc::EINVAL;
    }
    heap::ensure_init();
    // Formatted on the stack, then handed to stdio in one write: stdio may
    // allocate its buffer, which is fine (no allocator lock is held here).
    let mut buf = stats::FixedBuf::<16384>::new();
    if stats::write_malloc_info(&mut buf).is_err() {
        set_errno(libc::ENOMEM);
        return -1;
    }
    let bytes = buf.as_bytes();
    // SAFETY: per the caller, `stream` is a writable FILE; `bytes` is live.
    let written = unsafe { libc::fwrite(bytes.as_ptr().cast(), 1, bytes.len(), stream) };
    if written == bytes.len() {
        0
    } else {
        -1
    }
}

/// `malloc_stats(3)`: the summary on stderr.
#[no_mangle]
pub extern "C" fn malloc_stats() {
    stats::print_malloc_stats();
}

/// A panic inside the allocator: print where and why to stderr, without
/// allocating, and abort (the release profile's `panic = "abort"`).
#[cfg(panic = "abort")]
#[panic_handler]
fn panic(info: &core::panic::PanicInfo<'_>) -> ! {
    use core::fmt::Write;
    let mut buf = stats::FixedBuf::<512>::new();
    let _ = write!(buf, "buddyslab: panic: {info}");
    buddyslab::internals::os::fatal(&[buf.as_bytes()])
}

// The unwinding personality routine that the prebuilt `core` names in its
// unwind tables. Nothing unwinds here (panics abort, and C callers do not
// unwind through malloc), so it is never called: it traps. It is hidden,
// so it cannot stand in for the real one of a Rust program that preloads
// this library.
#[cfg(all(panic = "abort", target_arch = "x86_64"))]
core::arch::global_asm!(
    ".text",
    ".globl rust_eh_personality",
    ".hidden rust_eh_personality",
    ".type rust_eh_personality,@function",
    "rust_eh_personality:",
    "ud2",
    ".size rust_eh_personality, . - rust_eh_personality",
);

/// As above, for other architectures (exported there).
#[cfg(all(panic = "abort", not(target_arch = "x86_64")))]
#[no_mangle]
extern "C" fn rust_eh_personality() {
    buddyslab::internals::os::fatal(&[b"buddyslab: unwinding through the allocator"])
}
