//! The operating-system edge: every system call buddyslab makes is here.
//!
//! Nothing in this module knows about allocation policy, and nothing here
//! allocates. The calls go straight to the kernel (`syscall` instruction on
//! x86-64, `libc::syscall` elsewhere), so they work before libc has finished
//! setting itself up and they never touch `errno`: `free` must preserve the
//! caller's `errno`, and a failed `brk` or `mmap` inside `malloc` is reported
//! to the caller by the C face, which sets `ENOMEM` itself.
//!
//! Preconditions are written on each function, mimalloc-style: addresses
//! page-aligned, lengths non-zero and page-aligned unless said otherwise.

pub mod fmt;
pub mod sync;
mod vdso;

use core::sync::atomic::{AtomicBool, Ordering};

/// Size of a base page. x86-64 and aarch64 Linux both run 4 KiB pages in
/// the configurations this project targets; `check_page_size` verifies it.
pub const PAGE_SIZE: usize = 4096;
/// log2 of [`PAGE_SIZE`].
pub const PAGE_SHIFT: u32 = 12;

#[cfg(target_arch = "x86_64")]
mod raw {
    /// # Safety
    /// The caller upholds the contract of system call `nr` for these arguments.
    #[inline]
    pub unsafe fn syscall6(nr: usize, a: [usize; 6]) -> isize {
        let ret: isize;
        // SAFETY: the `syscall` instruction clobbers rcx and r11 and returns in
        // rax; the kernel reads the six argument registers. Memory effects are
        // the system call's own, which the caller vouches for.
        unsafe {
            core::arch::asm!(
                "syscall",
                inlateout("rax") nr as isize => ret,
                in("rdi") a[0], in("rsi") a[1], in("rdx") a[2],
                in("r10") a[3], in("r8") a[4], in("r9") a[5],
                lateout("rcx") _, lateout("r11") _,
                options(nostack)
            );
        }
        ret
    }
}

#[cfg(not(target_arch = "x86_64"))]
mod raw {
    /// # Safety
    /// The caller upholds the contract of system call `nr` for these arguments.
    #[inline]
    pub unsafe fn syscall6(nr: usize, a: [usize; 6]) -> isize {
        // SAFETY: errno is saved and restored around libc's wrapper so the
        // caller's errno survives, as with the raw instruction on x86-64.
        unsafe {
            let e = libc::__errno_location();
            let saved = *e;
            let r = libc::syscall(nr as libc::c_long, a[0], a[1], a[2], a[3], a[4], a[5]);
            let r = if r == -1 { -(*e as isize) } else { r as isize };
            *e = saved;
            r
        }
    }
}

/// A system call's error: the kernel's positive errno value.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Errno(pub i32);

fn check(ret: isize) -> Result<usize, Errno> {
    if (-4095..0).contains(&ret) {
        Err(Errno(-ret as i32))
    } else {
        Ok(ret as usize)
    }
}

/// The current program break (`brk(0)`).
pub fn brk_current() -> usize {
    // SAFETY: brk(0) only reports the break.
    unsafe { raw::syscall6(libc::SYS_brk as usize, [0; 6]) as usize }
}

/// Moves the program break to `addr`. Returns the new break; it equals `addr`
/// on success. The kernel refuses (and returns the old break) when the range
/// would run into another mapping or past `RLIMIT_DATA`.
///
/// # Safety
/// Shrinking the break unmaps `[addr, old)`: nothing may use those pages.
pub unsafe fn brk_set(addr: usize) -> usize {
    // SAFETY: the caller guarantees no live use of memory given up by a shrink.
    unsafe { raw::syscall6(libc::SYS_brk as usize, [addr, 0, 0, 0, 0, 0]) as usize }
}

/// Maps `len` bytes of fresh, zeroed, private anonymous read-write memory.
/// `len` must be non-zero and page-aligned. With `noreserve`, no swap is
/// reserved (for sparse tables that are mostly never touched).
pub fn mmap_anonymous(len: usize, noreserve: bool) -> Result<usize, Errno> {
    debug_assert!(len != 0 && len % PAGE_SIZE == 0);
    let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS;
    if noreserve {
        flags |= libc::MAP_NORESERVE;
    }
    let prot = libc::PROT_READ | libc::PROT_WRITE;
    // SAFETY: a new anonymous mapping at an address of the kernel's choice
    // cannot alias anything that exists.
    let r = unsafe {
        raw::syscall6(
            libc::SYS_mmap as usize,
            [0, len, prot as usize, flags as usize, usize::MAX, 0],
        )
    };
    check(r)
}

/// Unmaps `[addr, addr + len)`. Both page-aligned, `len` non-zero.
///
/// # Safety
/// Nothing may use the range afterwards.
pub unsafe fn munmap(addr: usize, len: usize) -> Result<(), Errno> {
    debug_assert!(addr % PAGE_SIZE == 0 && len % PAGE_SIZE == 0 && len != 0);
    // SAFETY: the caller owns the range and gives it up.
    check(unsafe { raw::syscall6(libc::SYS_munmap as usize, [addr, len, 0, 0, 0, 0]) }).map(|_| ())
}

/// `madvise(addr, len, MADV_DONTNEED)`: drops the pages; they read back as
/// zero and fault again on the next touch. Page-aligned, `len` non-zero.
///
/// # Safety
/// The range is mapped by buddyslab and its contents are no longer needed.
pub unsafe fn madvise_dontneed(addr: usize, len: usize) -> Result<(), Errno> {
    debug_assert!(addr % PAGE_SIZE == 0 && len % PAGE_SIZE == 0 && len != 0);
    // SAFETY: the caller owns the range and no longer needs its contents.
    check(unsafe {
        raw::syscall6(
            libc::SYS_madvise as usize,
            [addr, len, libc::MADV_DONTNEED as usize, 0, 0, 0],
        )
    })
    .map(|_| ())
}

/// `mprotect(addr, len, PROT_READ | PROT_WRITE)` when `access`, else
/// `PROT_NONE`: the secure build's guard pages and quarantined blocks.
/// Page-aligned, `len` non-zero.
///
/// # Safety
/// The range is mapped by buddyslab; while it is inaccessible nothing of
/// the allocator's may touch it.
#[cfg(feature = "secure")]
pub unsafe fn mprotect(addr: usize, len: usize, access: bool) -> Result<(), Errno> {
    debug_assert!(addr % PAGE_SIZE == 0 && len % PAGE_SIZE == 0 && len != 0);
    let prot = if access { libc::PROT_READ | libc::PROT_WRITE } else { libc::PROT_NONE };
    // SAFETY: the caller owns the range; changing its protection aliases
    // nothing.
    check(unsafe { raw::syscall6(libc::SYS_mprotect as usize, [addr, len, prot as usize, 0, 0, 0]) }).map(|_| ())
}

/// One address range for [`madvise_dontneed_ranges`], laid out as the
/// kernel's `struct iovec`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
#[repr(C)]
pub struct Range {
    /// First byte (page-aligned).
    pub start: usize,
    /// Bytes (page-aligned, non-zero).
    pub len: usize,
}

/// `PIDFD_SELF_THREAD` (Linux 6.14): a pidfd that names the calling thread,
/// and so the process's address space, with no file descriptor to open.
const PIDFD_SELF_THREAD: isize = -10000;
/// The kernel's `UIO_MAXIOV`: most ranges one `process_madvise` takes.
pub const MAX_RANGES: usize = 1024;
/// `process_madvise(MADV_DONTNEED)` on the process itself failed once (a
/// kernel before 6.14, or a seccomp filter): only `madvise` from then on.
static RANGES_REFUSED: AtomicBool = AtomicBool::new(false);

/// Drops the pages of every range, as [`madvise_dontneed`] on each would,
/// with one system call where the kernel allows it: `process_madvise` on
/// the calling process takes `MADV_DONTNEED` since Linux 6.13 (and since
/// 6.16 flushes the TLB once for all the ranges rather than once per
/// range, one interrupt per other CPU running this process saved each
/// time). Ranges it does not take fall back to one `madvise` each. Sets
/// `done[i]` for each range whose pages were dropped; returns the system
/// calls made. At most [`MAX_RANGES`] ranges.
///
/// # Safety
/// Every range is mapped by buddyslab and its contents are no longer needed.
#[link_section = ".text.hot.buddyslab"]
pub unsafe fn madvise_dontneed_ranges(ranges: &[Range], done: &mut [bool]) -> usize {
    debug_assert!(ranges.len() <= MAX_RANGES && done.len() >= ranges.len());
    let mut first = 0;
    let mut calls = 0;
    if ranges.len() > 1 && !RANGES_REFUSED.load(Ordering::Relaxed) {
        calls += 1;
        // SAFETY: `ranges` is an array of iovecs the kernel reads; the
        // memory it names is the caller's to drop.
        let r = unsafe {
            raw::syscall6(
                libc::SYS_process_madvise as usize,
                [PIDFD_SELF_THREAD as usize, ranges.as_ptr() as usize, ranges.len(), libc::MADV_DONTNEED as usize, 0, 0],
            )
        };
        match check(r) {
            // The kernel works through the ranges in order and returns the
            // bytes it advised: those ranges are done.
            Ok(mut bytes) => {
                while first < ranges.len() && ranges[first].len <= bytes {
                    bytes -= ranges[first].len;
                    done[first] = true;
                    first += 1;
                }
            }
            Err(Errno(libc::ENOMEM | libc::EAGAIN)) => {}
            Err(_) => RANGES_REFUSED.store(true, Ordering::Relaxed),
        }
    }
    for (range, done) in ranges.iter().zip(done.iter_mut()).skip(first) {
        calls += 1;
        // SAFETY: per the caller.
        *done = unsafe { madvise_dontneed(range.start, range.len) }.is_ok();
    }
    calls
}

/// `madvise(addr, len, MADV_HUGEPAGE)`: asks the kernel to back the 2 MiB
/// aligned extents of the range with transparent huge pages, so that one
/// fault maps 2 MiB. Advice on part of a mapping splits it in two, so
/// callers advise whole mappings. Page-aligned, `len` non-zero.
pub fn madvise_hugepage(addr: usize, len: usize) -> Result<(), Errno> {
    debug_assert!(addr % PAGE_SIZE == 0 && len % PAGE_SIZE == 0 && len != 0);
    // SAFETY: advice about pages the caller has mapped; contents stay.
    check(unsafe { raw::syscall6(libc::SYS_madvise as usize, [addr, len, libc::MADV_HUGEPAGE as usize, 0, 0, 0]) })
        .map(|_| ())
}

/// The system's transparent huge page mode, read once: 1 when
/// `MADV_HUGEPAGE` advice is heeded (`always` or `madvise`), 2 when it is
/// not (`never`, or a kernel without THP), 0 before the first read.
static THP_MODE: core::sync::atomic::AtomicU8 = core::sync::atomic::AtomicU8::new(0);

/// Whether `MADV_HUGEPAGE` advice given now would be heeded: the system's
/// mode (`/sys/kernel/mm/transparent_hugepage/enabled`, read on the first
/// call) is `always` or `madvise`, and the process has not turned THP off
/// with `prctl(PR_SET_THP_DISABLE)` (asked on every call: the program may
/// change it). Never allocates.
pub fn huge_advice_heeded() -> bool {
    use core::sync::atomic::Ordering;
    let mut mode = THP_MODE.load(Ordering::Relaxed);
    if mode == 0 {
        mode = if thp_mode_heeds_advice() { 1 } else { 2 };
        THP_MODE.store(mode, Ordering::Relaxed);
    }
    if mode != 1 {
        return false;
    }
    // SAFETY: PR_GET_THP_DISABLE takes no pointers; it returns 0 or 1.
    let disabled = unsafe { raw::syscall6(libc::SYS_prctl as usize, [libc::PR_GET_THP_DISABLE as usize, 0, 0, 0, 0, 0]) };
    disabled == 0
}

/// Reads the THP mode file: the selected word is in brackets, as in
/// `always [madvise] never`.
fn thp_mode_heeds_advice() -> bool {
    let Ok(fd) = open_read(c"/sys/kernel/mm/transparent_hugepage/enabled") else { return false };
    let mut buf = [0u8; 64];
    let n = read(fd, &mut buf).unwrap_or(0);
    close(fd);
    let text = &buf[..n];
    [&b"[always]"[..], b"[madvise]"].iter().any(|word| text.windows(word.len()).any(|w| w == *word))
}

/// Eight random bytes from the kernel (`getrandom(2)`, non-blocking); `None`
/// when it has none to give.
pub fn random_u64() -> Option<u64> {
    let mut value = 0u64;
    // SAFETY: the kernel writes at most 8 bytes into `value`.
    let n = unsafe {
        raw::syscall6(
            libc::SYS_getrandom as usize,
            [&mut value as *mut u64 as usize, 8, libc::GRND_NONBLOCK as usize, 0, 0, 0],
        )
    };
    (n == 8).then_some(value)
}

/// `mremap(addr, old_len, new_len, MREMAP_MAYMOVE)`: grows or shrinks a
/// private anonymous mapping, moving it (without copying pages) when it
/// cannot grow in place. Returns the new address.
///
/// # Safety
/// `[addr, addr + old_len)` is exactly one mapping owned by the caller; on
/// success the old range must no longer be used unless the result equals it.
pub unsafe fn mremap_maymove(addr: usize, old_len: usize, new_len: usize) -> Result<usize, Errno> {
    debug_assert!(addr % PAGE_SIZE == 0 && old_len % PAGE_SIZE == 0 && new_len % PAGE_SIZE == 0);
    // SAFETY: the caller owns the mapping; the kernel moves it atomically.
    check(unsafe {
        raw::syscall6(
            libc::SYS_mremap as usize,
            [addr, old_len, new_len, libc::MREMAP_MAYMOVE as usize, 0, 0],
        )
    })
}

/// Milliseconds on the coarse monotonic clock ([`monotonic_ns`]: a vDSO
/// read, no system call), truncated to 32 bits (wraps every 49 days;
/// compare with `wrapping_sub`). Read on slow paths, a few times per
/// thousand page-level operations (see `buddy::decay_tick`).
pub fn monotonic_ms() -> u32 {
    (monotonic_ns() / 1_000_000) as u32
}

/// The calling process's minor page faults so far (`getrusage(RUSAGE_SELF)`
/// `ru_minflt`), or 0 if the kernel refuses.
pub fn minor_faults() -> u64 {
    self_usage().map_or(0, |ru| ru.ru_minflt as u64)
}

/// The process's peak resident set size in KiB (`ru_maxrss`); 0 if unknown.
pub fn peak_rss_kib() -> usize {
    self_usage().map_or(0, |ru| ru.ru_maxrss as usize)
}

/// `getrusage(RUSAGE_SELF)`.
fn self_usage() -> Option<libc::rusage> {
    // SAFETY: an all-zero rusage is a valid value to be overwritten.
    let mut ru: libc::rusage = unsafe { core::mem::zeroed() };
    // SAFETY: `ru` is a live, writable rusage.
    let r = unsafe {
        raw::syscall6(
            libc::SYS_getrusage as usize,
            [libc::RUSAGE_SELF as usize, &mut ru as *mut libc::rusage as usize, 0, 0, 0, 0],
        )
    };
    (r == 0).then_some(ru)
}

/// `mincore`: how many of the pages in `[addr, addr + len)` are resident.
/// `addr` page-aligned, `len` non-zero; the range must be mapped (an
/// unmapped range reports 0). Asks the kernel 512 pages at a time with a
/// stack vector, so it never allocates.
pub fn resident_pages(addr: usize, len: usize) -> usize {
    debug_assert!(addr % PAGE_SIZE == 0 && len != 0);
    let mut vec = [0u8; 512];
    let mut resident = 0;
    let mut at = addr;
    let end = addr + len;
    while at < end {
        let n = ((end - at).div_ceil(PAGE_SIZE)).min(vec.len());
        // SAFETY: `vec` has room for `n` entries; mincore only writes them.
        let r = unsafe {
            raw::syscall6(libc::SYS_mincore as usize, [at, n * PAGE_SIZE, vec.as_mut_ptr() as usize, 0, 0, 0])
        };
        if r == 0 {
            resident += vec[..n].iter().filter(|&&b| b & 1 != 0).count();
        }
        at += n * PAGE_SIZE;
    }
    resident
}

/// `mincore(addr, vec.len() pages, vec)`: bit 0 of `vec[i]` says whether
/// page `i` of `[addr, ...)` is resident. `addr` page-aligned, `vec`
/// non-empty. False when the kernel refuses (a page of the range is not
/// mapped: `ENOMEM`); `vec` is then not to be read.
pub fn mincore(addr: usize, vec: &mut [u8]) -> bool {
    debug_assert!(addr % PAGE_SIZE == 0 && !vec.is_empty());
    // SAFETY: `vec` has room for one entry per page of the range; mincore
    // only writes them.
    unsafe { raw::syscall6(libc::SYS_mincore as usize, [addr, vec.len() * PAGE_SIZE, vec.as_mut_ptr() as usize, 0, 0, 0]) == 0 }
}

/// `mremap(addr, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, to)`: moves the
/// pages of `[addr, addr + len)` (page table entries, not bytes) to `to`,
/// replacing whatever was mapped at `[to, to + len)`. Fails with `EFAULT`
/// when the source is not one kernel mapping (kernels before 6.17). All
/// page-aligned, `len` non-zero, the ranges disjoint.
///
/// # Safety
/// Both ranges are the caller's: the source is no longer used at its old
/// address, and nothing at the destination is needed.
pub unsafe fn mremap_fixed(addr: usize, len: usize, to: usize) -> Result<usize, Errno> {
    debug_assert!(addr % PAGE_SIZE == 0 && len % PAGE_SIZE == 0 && to % PAGE_SIZE == 0 && len != 0);
    debug_assert!(addr + len <= to || to + len <= addr);
    let flags = (libc::MREMAP_MAYMOVE | libc::MREMAP_FIXED) as usize;
    // SAFETY: the caller owns both ranges; the kernel moves the pages
    // atomically and unmaps the old destination.
    check(unsafe { raw::syscall6(libc::SYS_mremap as usize, [addr, len, len, flags, to, 0]) })
}

/// Nanoseconds on the coarse monotonic clock (a vDSO read, no system call;
/// resolution about one scheduler tick). For ages measured in milliseconds
/// or more, such as how long a released mapping has been cached.
pub fn monotonic_ns() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid out-parameter; the clock id is valid on every
    // Linux since 2.6.32, so the call cannot fail or touch `errno`. Through
    // the vDSO itself, not libc's wrapper (see `vdso`).
    unsafe { vdso::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// `futex(FUTEX_WAIT_PRIVATE)`: sleeps while `*word == expected`.
pub fn futex_wait(word: &core::sync::atomic::AtomicU32, expected: u32) {
    // SAFETY: the futex word is a live, aligned u32; a spurious or failed wait
    // only returns early, and callers re-check in a loop.
    unsafe {
        raw::syscall6(
            libc::SYS_futex as usize,
            [
                word.as_ptr() as usize,
                (libc::FUTEX_WAIT | libc::FUTEX_PRIVATE_FLAG) as usize,
                expected as usize,
                0,
                0,
                0,
            ],
        );
    }
}

/// `futex(FUTEX_WAKE_PRIVATE)`: wakes one waiter on `word`.
pub fn futex_wake_one(word: &core::sync::atomic::AtomicU32) {
    // SAFETY: waking on a live, aligned u32 has no memory effect.
    unsafe {
        raw::syscall6(
            libc::SYS_futex as usize,
            [
                word.as_ptr() as usize,
                (libc::FUTEX_WAKE | libc::FUTEX_PRIVATE_FLAG) as usize,
                1,
                0,
                0,
                0,
            ],
        );
    }
}

/// Writes all of `buf` to file descriptor `fd`, retrying short writes and
/// `EINTR`. Errors are dropped: this is for diagnostics.
pub fn write_all(fd: i32, mut buf: &[u8]) {
    while !buf.is_empty() {
        // SAFETY: `buf` is a live slice; write(2) only reads it.
        let r = unsafe {
            raw::syscall6(
                libc::SYS_write as usize,
                [fd as usize, buf.as_ptr() as usize, buf.len(), 0, 0, 0],
            )
        };
        match check(r) {
            Ok(0) => return,
            Ok(n) => buf = &buf[n.min(buf.len())..],
            Err(Errno(libc::EINTR)) => continue,
            Err(_) => return,
        }
    }
}

/// Opens the file at `path` (NUL-terminated) read-only (`openat(2)` from
/// the working directory, close-on-exec). Returns the descriptor.
pub fn open_read(path: &core::ffi::CStr) -> Result<i32, Errno> {
    // SAFETY: `path` is a live NUL-terminated string the kernel only reads.
    let r = unsafe {
        raw::syscall6(
            libc::SYS_openat as usize,
            [libc::AT_FDCWD as usize, path.as_ptr() as usize, (libc::O_RDONLY | libc::O_CLOEXEC) as usize, 0, 0, 0],
        )
    };
    check(r).map(|fd| fd as i32)
}

/// Opens `path` for writing, creating it (mode 0644 before the umask) or
/// truncating it: `openat(AT_FDCWD, path, O_WRONLY|O_CREAT|O_TRUNC|O_CLOEXEC)`.
/// Returns the file descriptor.
pub fn create_file(path: &core::ffi::CStr) -> Result<i32, Errno> {
    let flags = libc::O_WRONLY | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC;
    // SAFETY: `path` is a live NUL-terminated string that openat(2) only
    // reads; opening a file touches no memory of ours.
    let r = unsafe {
        raw::syscall6(
            libc::SYS_openat as usize,
            [libc::AT_FDCWD as usize, path.as_ptr() as usize, flags as usize, 0o644, 0, 0],
        )
    };
    check(r).map(|fd| fd as i32)
}

/// Reads up to `buf.len()` bytes from `fd`, retrying `EINTR`. 0 at end of
/// file.
pub fn read(fd: i32, buf: &mut [u8]) -> Result<usize, Errno> {
    loop {
        // SAFETY: `buf` is live and writable for its length.
        let r = unsafe { raw::syscall6(libc::SYS_read as usize, [fd as usize, buf.as_mut_ptr() as usize, buf.len(), 0, 0, 0]) };
        match check(r) {
            Err(Errno(libc::EINTR)) => continue,
            other => return other,
        }
    }
}

/// Calls `f` with each NUL-terminated entry of the file at `path`
/// (NUL-terminated itself; `/proc/<pid>/environ` is such a file), read in
/// pieces into a stack buffer. An entry longer than 4 KiB is skipped. A
/// file that cannot be opened has no entries.
pub fn for_each_nul_entry(path: &[u8], mut f: impl FnMut(&[u8])) {
    let Ok(path) = core::ffi::CStr::from_bytes_until_nul(path) else { return };
    let Ok(fd) = open_read(path) else { return };
    let mut buf = [0u8; 4096];
    let mut filled = 0;
    // An entry that did not fit: skip up to its terminating NUL.
    let mut skipping = false;
    loop {
        let n = match read(fd, &mut buf[filled..]) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        filled += n;
        let mut start = 0;
        while let Some(end) = buf[start..filled].iter().position(|&b| b == 0) {
            if !skipping {
                f(&buf[start..start + end]);
            }
            skipping = false;
            start += end + 1;
        }
        if start == 0 && filled == buf.len() {
            skipping = true;
            filled = 0;
        } else {
            buf.copy_within(start..filled, 0);
            filled -= start;
        }
    }
    close(fd);
}

/// Closes `fd`; errors are dropped (nothing useful can follow them).
pub fn close(fd: i32) {
    // SAFETY: close(2) on a descriptor the caller owns.
    unsafe { raw::syscall6(libc::SYS_close as usize, [fd as usize, 0, 0, 0, 0, 0]) };
}

/// The calling process's id.
pub fn getpid() -> i32 {
    // SAFETY: getpid(2) takes no arguments and cannot fail.
    unsafe { raw::syscall6(libc::SYS_getpid as usize, [0; 6]) as i32 }
}

/// The parent's process id (`getppid(2)`).
pub fn getppid() -> i32 {
    // SAFETY: getppid(2) takes no arguments and cannot fail.
    unsafe { raw::syscall6(libc::SYS_getppid as usize, [0; 6]) as i32 }
}

/// The inode number of the pipe open on `fd`, or `None` when `fd` is not
/// open or is not a pipe (a FIFO).
pub fn pipe_inode(fd: i32) -> Option<u64> {
    let mut st = core::mem::MaybeUninit::<libc::stat>::zeroed();
    // SAFETY: fstat(2) writes one `struct stat` into the buffer, which is
    // live and large enough; a bad descriptor only makes it fail.
    let r = unsafe {
        raw::syscall6(
            libc::SYS_fstat as usize,
            [fd as usize, st.as_mut_ptr() as usize, 0, 0, 0, 0],
        )
    };
    check(r).ok()?;
    // SAFETY: zero-initialised, and filled in by the successful fstat.
    let st = unsafe { st.assume_init() };
    (st.st_mode & libc::S_IFMT == libc::S_IFIFO).then_some(st.st_ino)
}

/// Prints `msg` to stderr and aborts the process. Used when continuing would
/// corrupt memory (a double free, a pointer that is not ours, broken
/// metadata); never allocates.
#[cold]
#[inline(never)]
pub fn fatal(parts: &[&[u8]]) -> ! {
    for p in parts {
        write_all(2, p);
    }
    write_all(2, b"\n");
    // SAFETY: abort(3) has no preconditions.
    unsafe { libc::abort() }
}

static PAGE_SIZE_CHECKED: AtomicBool = AtomicBool::new(false);

/// Verifies once that the kernel's page size is [`PAGE_SIZE`]; buddyslab's
/// page arithmetic is fixed at compile time.
pub fn check_page_size() {
    if PAGE_SIZE_CHECKED.load(Ordering::Relaxed) {
        return;
    }
    // SAFETY: getauxval has no preconditions and does not allocate.
    let ps = unsafe { libc::getauxval(libc::AT_PAGESZ) } as usize;
    if ps != 0 && ps != PAGE_SIZE {
        fatal(&[b"buddyslab: kernel page size is not 4096 bytes; unsupported"]);
    }
    PAGE_SIZE_CHECKED.store(true, Ordering::Relaxed);
}

// ---------------------------------------------------------------------------
// The CPU a thread runs on.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
extern "C" {
    static __rseq_offset: isize;
    static __rseq_size: libc::c_uint;
}

#[cfg(target_env = "gnu")]
unsafe extern "C" {
    /// This object's handle (the C start files' `crtbeginS.o` or
    /// `crtbegin.o` define it in every object linked by `cc`): what
    /// glibc's own `atexit` and `pthread_atfork` pass for the caller.
    static __dso_handle: u8;
    fn __cxa_atexit(f: unsafe extern "C" fn(*mut libc::c_void), arg: *mut libc::c_void, dso: *const u8) -> libc::c_int;
    fn __register_atfork(
        prepare: Option<unsafe extern "C" fn()>,
        parent: Option<unsafe extern "C" fn()>,
        child: Option<unsafe extern "C" fn()>,
        dso: *const u8,
    ) -> libc::c_int;
}

/// Calls the function `arg` is (see [`at_exit`]).
#[cfg(target_env = "gnu")]
unsafe extern "C" fn call_at_exit(arg: *mut libc::c_void) {
    // SAFETY: `at_exit` registered a function pointer as the argument.
    let f: extern "C" fn() = unsafe { core::mem::transmute::<*mut libc::c_void, extern "C" fn()>(arg) };
    f();
}

/// `atexit(f)`: `f` runs at `exit` (false when it could not be
/// registered). Registered with `__cxa_atexit`, as glibc's `atexit` does,
/// because glibc's `atexit` and `pthread_atfork` are not in `libc.so.6`
/// but in the static `libc_nonshared.a`, which GNU ld searches only where
/// `-lc` stands on its command line: rustc puts it before the crates'
/// rlibs when it links `libbuddyslab.so`, so a library linked by GNU ld
/// (rustc's default linker before 1.90) was left with both undefined and
/// the loader refused it. lld searches archives whatever their place.
/// May allocate; no allocator lock may be held.
pub fn at_exit(f: extern "C" fn()) -> bool {
    #[cfg(target_env = "gnu")]
    // SAFETY: `__dso_handle` is this object's; `call_at_exit` gets `f`
    // back as its argument.
    return unsafe { __cxa_atexit(call_at_exit, f as *mut libc::c_void, &raw const __dso_handle) == 0 };
    #[cfg(not(target_env = "gnu"))]
    // SAFETY: a plain registration.
    return unsafe { libc::atexit(f) == 0 };
}

/// `pthread_atfork(prepare, parent, child)` (false when the handlers could
/// not be registered), through `__register_atfork` for the reason
/// [`at_exit`] gives. May allocate; no allocator lock may be held.
pub fn at_fork(
    prepare: Option<unsafe extern "C" fn()>,
    parent: Option<unsafe extern "C" fn()>,
    child: Option<unsafe extern "C" fn()>,
) -> bool {
    #[cfg(target_env = "gnu")]
    // SAFETY: `__dso_handle` is this object's; the handlers are the
    // caller's.
    return unsafe { __register_atfork(prepare, parent, child, &raw const __dso_handle) == 0 };
    #[cfg(not(target_env = "gnu"))]
    // SAFETY: a plain registration.
    return unsafe { libc::pthread_atfork(prepare, parent, child) == 0 };
}

/// The CPU the calling thread runs on (a hint: it may move at once).
#[inline]
pub fn current_cpu() -> usize {
    #[cfg(all(target_os = "linux", target_env = "gnu", target_arch = "x86_64"))]
    {
        // SAFETY: glibc defines both symbols (2.35+); when __rseq_size is
        // non-zero, thread pointer + __rseq_offset is this thread's
        // registered `struct rseq`, whose `cpu_id` (offset 4) the kernel
        // keeps current. A negative value means "not registered".
        unsafe {
            if __rseq_size != 0 {
                let tp: usize;
                core::arch::asm!("mov {}, qword ptr fs:[0]", out(reg) tp, options(nostack, readonly, preserves_flags));
                let cpu_id = ((tp as isize + __rseq_offset + 4) as *const i32).read_volatile();
                if cpu_id >= 0 {
                    return cpu_id as usize;
                }
            }
        }
    }
    // SAFETY: sched_getcpu has no preconditions.
    let cpu = unsafe { libc::sched_getcpu() };
    if cpu < 0 {
        0
    } else {
        cpu as usize
    }
}

/// Milliseconds since the epoch (`CLOCK_REALTIME`, a vDSO read).
pub fn realtime_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a live, writable timespec.
    unsafe { vdso::clock_gettime(libc::CLOCK_REALTIME, &mut ts) };
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Renames `from` to `to` (`renameat(2)` in the working directory),
/// replacing `to` atomically: a reader sees the old file or the new one,
/// never a half-written one.
pub fn rename(from: &core::ffi::CStr, to: &core::ffi::CStr) -> Result<(), Errno> {
    // SAFETY: two live NUL-terminated strings the kernel only reads.
    let r = unsafe {
        raw::syscall6(
            libc::SYS_renameat as usize,
            [libc::AT_FDCWD as usize, from.as_ptr() as usize, libc::AT_FDCWD as usize, to.as_ptr() as usize, 0, 0],
        )
    };
    check(r).map(|_| ())
}

/// Removes the file at `path` (`unlinkat(2)`).
pub fn unlink(path: &core::ffi::CStr) -> Result<(), Errno> {
    // SAFETY: a live NUL-terminated string the kernel only reads.
    let r = unsafe { raw::syscall6(libc::SYS_unlinkat as usize, [libc::AT_FDCWD as usize, path.as_ptr() as usize, 0, 0, 0, 0]) };
    check(r).map(|_| ())
}

/// Creates (or truncates) the file at `path` with mode 0600, sizes it to
/// `len` bytes (a hole: no page is used until written) and maps it shared,
/// read-write. Returns the mapping's address; the descriptor is closed.
/// `len` is non-zero and page-aligned.
pub fn map_shared_file(path: &core::ffi::CStr, len: usize) -> Result<usize, Errno> {
    debug_assert!(len != 0 && len % PAGE_SIZE == 0);
    let flags = libc::O_RDWR | libc::O_CREAT | libc::O_TRUNC | libc::O_CLOEXEC;
    // SAFETY: `path` is a live NUL-terminated string the kernel only reads.
    let fd = check(unsafe {
        raw::syscall6(libc::SYS_openat as usize, [libc::AT_FDCWD as usize, path.as_ptr() as usize, flags as usize, 0o600, 0, 0])
    })?;
    // SAFETY: ftruncate(2) on the descriptor just opened; no memory is touched.
    let sized = check(unsafe { raw::syscall6(libc::SYS_ftruncate as usize, [fd, len, 0, 0, 0, 0]) });
    let prot = (libc::PROT_READ | libc::PROT_WRITE) as usize;
    // SAFETY: a new shared mapping at an address of the kernel's choice
    // cannot alias anything of ours.
    let mapped = sized.and_then(|_| check(unsafe { raw::syscall6(libc::SYS_mmap as usize, [0, len, prot, libc::MAP_SHARED as usize, fd, 0]) }));
    close(fd as i32);
    mapped
}

/// Installs `handler` for `signal` with `SA_RESTART` (interrupted system
/// calls of the program resume), through the C library so its restorer is
/// used. False when the signal number is refused.
pub fn install_signal_handler(signal: i32, handler: extern "C" fn(i32)) -> bool {
    // SAFETY: sigaction is plain data; all zeros (no flags, empty mask) is valid.
    let mut action: libc::sigaction = unsafe { core::mem::zeroed() };
    action.sa_sigaction = handler as usize;
    action.sa_flags = libc::SA_RESTART;
    // SAFETY: a valid action, no old action asked for; the handler is a
    // plain function that the caller keeps async-signal-safe. errno is
    // saved and restored around the wrapper: only the faces set it.
    unsafe {
        let e = libc::__errno_location();
        let saved = *e;
        let ok = libc::sigaction(signal, &action, core::ptr::null_mut()) == 0;
        *e = saved;
        ok
    }
}

/// Maps `len` bytes aligned to `align` (a power of two ≥ a page) by mapping
/// `len + align` and trimming both ends.
pub fn map_aligned(len: usize, align: usize) -> Result<usize, Errno> {
    debug_assert!(align.is_power_of_two() && align >= PAGE_SIZE && len % PAGE_SIZE == 0);
    if align == PAGE_SIZE {
        return mmap_anonymous(len, false);
    }
    let span = len.checked_add(align - PAGE_SIZE).ok_or(Errno(libc::ENOMEM))?;
    let raw = mmap_anonymous(span, false)?;
    let start = align_up(raw, align);
    // SAFETY: the head and tail slack are parts of our fresh mapping that
    // nobody has seen.
    unsafe {
        if start > raw {
            let _ = munmap(raw, start - raw);
        }
        let end = start + len;
        if raw + span > end {
            let _ = munmap(end, raw + span - end);
        }
    }
    Ok(start)
}

/// Rounds `x` up to a multiple of `align` (a power of two). Wraps to 0 on
/// overflow; callers that take sizes from users check first.
#[inline]
pub const fn align_up(x: usize, align: usize) -> usize {
    x.wrapping_add(align - 1) & !(align - 1)
}

/// Pages needed for `bytes`.
#[inline]
pub const fn pages_for(bytes: usize) -> usize {
    (bytes + PAGE_SIZE - 1) >> PAGE_SHIFT
}

/// A pthread key whose destructor runs at each thread's exit with the
/// value the thread gave it: how a thread's caches (the magazines' bins,
/// the run lists) go back to the shared ones when the thread ends.
pub struct ThreadExitKey {
    key: core::sync::atomic::AtomicU32,
    ready: AtomicBool,
}

impl ThreadExitKey {
    /// Not made yet: [`ThreadExitKey::set`] refuses until
    /// [`ThreadExitKey::create`] has run.
    pub const fn new() -> Self {
        ThreadExitKey { key: core::sync::atomic::AtomicU32::new(0), ready: AtomicBool::new(false) }
    }

    /// Makes the key, with `destructor` called at a thread's exit with its
    /// value. Called once, from the heap's set-up; a key glibc refuses
    /// leaves `set` refusing.
    pub fn create(&self, destructor: unsafe extern "C" fn(*mut libc::c_void)) {
        let mut key: libc::pthread_key_t = 0;
        // SAFETY: `key` is a valid out-pointer; the destructor takes the
        // values the threads give with `set`.
        if unsafe { libc::pthread_key_create(&mut key, Some(destructor)) } == 0 {
            self.key.store(key, Ordering::Relaxed);
            self.ready.store(true, Ordering::Release);
        }
    }

    /// Gives `value` to the calling thread, for the destructor at its
    /// exit; false when the key is not made yet or glibc refuses. May
    /// allocate (glibc's keys past the first 32): a caller that allocates
    /// through the cache it registers must guard against that re-entry.
    pub fn set(&self, value: *mut libc::c_void) -> bool {
        if !self.ready.load(Ordering::Acquire) {
            return false;
        }
        // SAFETY: a key we made; glibc only keeps the value and hands it
        // back to the destructor.
        unsafe { libc::pthread_setspecific(self.key.load(Ordering::Relaxed), value) == 0 }
    }
}

impl Default for ThreadExitKey {
    fn default() -> Self {
        Self::new()
    }
}

/// A zero-initialised per-thread object of type `$ty` and an accessor
/// `$vis fn $name() -> *mut $ty` for it. On x86-64 the object is a
/// hidden symbol `$sym` in `.tbss` reached by initial-exec TLS: two
/// instructions (the GOT slot holds its offset from the thread pointer,
/// `%fs:0` the thread pointer), no `__tls_get_addr`, and nothing that
/// allocates; elsewhere, `std::thread_local!`. The all-zero bytes must be
/// a valid `$ty`.
macro_rules! zeroed_thread_local {
    ($(#[$doc:meta])* $vis:vis fn $name:ident() -> *mut $ty:ty, $sym:literal) => {
        #[cfg(target_arch = "x86_64")]
        core::arch::global_asm!(
            ".section .tbss,\"awT\",@nobits",
            ".p2align 6",
            concat!(".globl ", $sym),
            concat!(".hidden ", $sym),
            concat!(".type ", $sym, ",@object"),
            concat!(".size ", $sym, ", {size}"),
            concat!($sym, ":"),
            ".zero {size}",
            ".text",
            size = const core::mem::size_of::<$ty>(),
        );

        $(#[$doc])*
        #[cfg(target_arch = "x86_64")]
        #[inline(always)]
        $vis fn $name() -> *mut $ty {
            let p: *mut $ty;
            // SAFETY: initial-exec TLS access to the symbol defined above
            // (x86-64 TLS ABI). Reads only; no flags touched.
            unsafe {
                core::arch::asm!(
                    concat!("movq ", $sym, "@GOTTPOFF(%rip), {p}"),
                    "addq %fs:0, {p}",
                    p = out(reg) p,
                    options(att_syntax, nostack, pure, readonly, preserves_flags),
                );
            }
            p
        }

        $(#[$doc])*
        #[cfg(not(target_arch = "x86_64"))]
        #[inline(always)]
        $vis fn $name() -> *mut $ty {
            std::thread_local! {
                static OBJECT: core::cell::UnsafeCell<$ty> = const {
                    // SAFETY: the caller of the macro promises all-zero is valid.
                    core::cell::UnsafeCell::new(unsafe { core::mem::zeroed() })
                };
            }
            OBJECT.with(|c| c.get())
        }
    };
}
pub(crate) use zeroed_thread_local;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mmap_is_zeroed_and_unmappable() {
        let len = 4 * PAGE_SIZE;
        let a = mmap_anonymous(len, false).unwrap();
        assert_eq!(a % PAGE_SIZE, 0);
        // SAFETY: freshly mapped, len bytes, read-write.
        let s = unsafe { core::slice::from_raw_parts_mut(a as *mut u8, len) };
        assert!(s.iter().all(|&b| b == 0));
        s[0] = 1;
        s[len - 1] = 2;
        // SAFETY: our mapping, contents no longer needed.
        unsafe { madvise_dontneed(a, len).unwrap() };
        assert_eq!(s[0], 0, "MADV_DONTNEED on private anonymous memory reads back zero");
        // SAFETY: our mapping, grown with MREMAP_MAYMOVE; old range unused after.
        let b = unsafe { mremap_maymove(a, len, 8 * len).unwrap() };
        // SAFETY: the mapping is now at b with 8 * len bytes.
        unsafe { munmap(b, 8 * len).unwrap() };
    }

    #[test]
    fn many_ranges_are_dropped_and_the_rest_kept() {
        let len = 16 * PAGE_SIZE;
        let a = mmap_anonymous(len, false).unwrap();
        for i in 0..16 {
            // SAFETY: inside our fresh mapping.
            unsafe { ((a + i * PAGE_SIZE) as *mut u8).write_volatile(i as u8 + 1) };
        }
        let page = |i: usize| Range { start: a + i * PAGE_SIZE, len: PAGE_SIZE };
        let ranges = [page(1), Range { start: a + 4 * PAGE_SIZE, len: 3 * PAGE_SIZE }, page(9), page(15)];
        let mut done = [false; 4];
        // SAFETY: our mapping; the ranges' contents are no longer needed.
        let calls = unsafe { madvise_dontneed_ranges(&ranges, &mut done) };
        assert_eq!(done, [true; 4]);
        assert!((1..=4).contains(&calls));
        // (Before reading them: a read maps the zero page, which counts.)
        assert_eq!(resident_pages(a, len), 10);
        for i in 0..16 {
            // SAFETY: inside our mapping.
            let b = unsafe { ((a + i * PAGE_SIZE) as *const u8).read_volatile() };
            let dropped = matches!(i, 1 | 4..=6 | 9 | 15);
            assert_eq!(b, if dropped { 0 } else { i as u8 + 1 }, "page {i}");
        }
        // SAFETY: our mapping, unused afterwards.
        unsafe { munmap(a, len).unwrap() };
    }

    #[test]
    fn errors_come_back_as_errno_without_touching_errno() {
        // SAFETY: errno is thread-local; setting it is harmless.
        unsafe { *libc::__errno_location() = 4321 };
        // An impossible length fails with ENOMEM.
        let r = mmap_anonymous(usize::MAX & !(PAGE_SIZE - 1), false);
        assert_eq!(r, Err(Errno(libc::ENOMEM)));
        // SAFETY: reading errno.
        assert_eq!(unsafe { *libc::__errno_location() }, 4321);
    }

    #[test]
    fn clock_runs_and_faults_count_and_mincore_sees_touched_pages() {
        let a = monotonic_ms();
        let before = minor_faults();
        let len = 64 * PAGE_SIZE;
        let p = mmap_anonymous(len, false).unwrap();
        assert_eq!(resident_pages(p, len), 0);
        for i in 0..16 {
            // SAFETY: inside our fresh mapping.
            unsafe { ((p + i * PAGE_SIZE) as *mut u8).write_volatile(1) };
        }
        assert_eq!(resident_pages(p, len), 16);
        assert!(minor_faults() >= before + 16, "touching 16 fresh pages faults at least 16 times");
        // SAFETY: our mapping, unused afterwards.
        unsafe { munmap(p, len).unwrap() };
        assert!(monotonic_ms().wrapping_sub(a) < 60_000);
    }

    #[test]
    fn brk_reports_the_break() {
        assert!(brk_current() > 0);
    }
}
