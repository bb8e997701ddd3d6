//! The live page: a preloaded process publishes its views where another
//! process can read them without stopping it (`buddyslab top PID`,
//! `buddyslab views PID`).
//!
//! With `BUDDYSLAB_LIVE=1` each process maps a file of [`PAGE_BYTES`]
//! shared, `/dev/shm/buddyslab-<pid>` (a hole: only the pages written use
//! memory), and removes it at exit. A reader asks for a fresh copy by
//! adding one to `request`; the process answers at its next slow path
//! ([`super::report::on_slow_path`]) by writing the text views and the JSON
//! views into the page and setting `served` to the request it answered.
//! No figure is gathered while nobody asks: a process that is never read
//! pays one relaxed load per slow path and the comparison of two words.
//!
//! Layout, version [`LIVE_VERSION`] (little-endian, offsets in bytes):
//!
//! | offset | size | field                                                           |
//! |--------|------|-----------------------------------------------------------------|
//! | 0      | 8    | magic `BSLIVE\0\0`                                              |
//! | 8      | 4    | version                                                         |
//! | 12     | 4    | header size (64)                                                |
//! | 16     | 8    | `seq`: odd while the process writes (a seqlock)                 |
//! | 24     | 8    | `request`: readers add 1 to ask for a fresh copy                |
//! | 32     | 8    | `served`: the `request` value the copy answers                  |
//! | 40     | 4    | pid                                                             |
//! | 44     | 4    | flags: bit 0 the text was cut short, bit 1 the JSON was         |
//! | 48     | 4    | text length                                                     |
//! | 52     | 4    | JSON length                                                     |
//! | 56     | 8    | when the copy was written: `CLOCK_REALTIME`, milliseconds       |
//! | 64     | ..   | the text views (at most [`JSON_AT`] − 64 bytes)                 |
//! | [`JSON_AT`] | .. | the JSON views (at most [`PAGE_BYTES`] − [`JSON_AT`] bytes)  |
//!
//! A consistent copy: read `seq` (even), copy, read `seq` again; equal
//! means no write ran in between. A file whose process is gone (killed:
//! no exit handler removed it) is recognised because no live process maps
//! it; the reader checks `/proc/<pid>/maps`.
//!
//! After `fork` the child shares its parent's page: it maps its own at
//! its next slow path (the fork handler only drops the parent's mapping).

use crate::os;
use crate::os::fmt::FixedBuf;
use core::fmt::{self, Write};
use core::sync::atomic::{fence, AtomicI32, AtomicU64, AtomicUsize, Ordering};

/// The layout's version (the header's `version`).
pub const LIVE_VERSION: u32 = 1;
/// Size of the file and mapping.
pub const PAGE_BYTES: usize = 1 << 20;
/// Offset of the JSON views.
pub const JSON_AT: usize = 512 << 10;
/// The header's size; the text starts here.
pub const HEADER_BYTES: usize = 64;
/// The file's name before the pid.
pub const PATH_PREFIX: &str = "/dev/shm/buddyslab-";

/// The header, as laid out in the page.
#[repr(C)]
struct Header {
    magic: [u8; 8],
    version: u32,
    header_bytes: u32,
    seq: AtomicU64,
    request: AtomicU64,
    served: AtomicU64,
    pid: u32,
    flags: u32,
    text_len: u32,
    json_len: u32,
    written_ms: u64,
}

const _: () = assert!(core::mem::size_of::<Header>() == HEADER_BYTES);

/// The mapping's address, 0 when none.
static PAGE: AtomicUsize = AtomicUsize::new(0);
/// The process that created [`PAGE`].
static OWNER: AtomicI32 = AtomicI32::new(0);

/// `/dev/shm/buddyslab-<pid>`, NUL-terminated.
fn path_of(pid: i32) -> FixedBuf<48> {
    let mut path = FixedBuf::<48>::new();
    let _ = write!(path, "{PATH_PREFIX}{pid}\0");
    path
}

/// Maps the page if `BUDDYSLAB_LIVE` asked for it; true when it did.
pub fn start() -> bool {
    if !crate::options::LIVE.load(Ordering::Relaxed) {
        return false;
    }
    create();
    true
}

fn create() {
    let pid = os::getpid();
    let path = path_of(pid);
    let Ok(path) = core::ffi::CStr::from_bytes_until_nul(path.as_bytes()) else { return };
    let Ok(page) = os::map_shared_file(path, PAGE_BYTES) else {
        os::write_all(2, b"buddyslab: BUDDYSLAB_LIVE: cannot create the live page in /dev/shm; no live views\n");
        return;
    };
    let header = page as *mut Header;
    // SAFETY: a fresh mapping of PAGE_BYTES, zero, ours alone until the
    // magic is written (readers check it).
    unsafe {
        (*header).version = LIVE_VERSION;
        (*header).header_bytes = HEADER_BYTES as u32;
        (*header).pid = pid as u32;
        // Unanswered: the first slow path publishes a copy.
        (*header).request.store(1, Ordering::Relaxed);
        fence(Ordering::Release);
        (*header).magic = *b"BSLIVE\0\0";
    }
    OWNER.store(pid, Ordering::Relaxed);
    PAGE.store(page, Ordering::Release);
}

/// In a child after `fork`: drops the parent's page (the child maps its
/// own at its next slow path).
pub fn after_fork_child() {
    let page = PAGE.swap(0, Ordering::Relaxed);
    if page != 0 {
        // SAFETY: our mapping of the parent's page, which this process
        // must not write; nothing else holds its address.
        let _ = unsafe { os::munmap(page, PAGE_BYTES) };
    }
}

/// Answers a reader's request, if one is pending (and maps this process's
/// own page after a `fork`). Called by [`super::report::on_slow_path`].
pub fn on_slow_path() {
    if !crate::options::LIVE.load(Ordering::Relaxed) {
        return;
    }
    let mut page = PAGE.load(Ordering::Acquire);
    if page == 0 {
        create();
        page = PAGE.load(Ordering::Acquire);
        if page == 0 {
            return;
        }
    }
    let header = page as *const Header;
    // SAFETY: the page stays mapped while `PAGE` holds it; only the exit
    // hook and the fork handler drop it, and neither runs concurrently with
    // a writer (the exit hook waits for it; a fork child has one thread).
    let (request, served) = unsafe { ((*header).request.load(Ordering::Acquire), (*header).served.load(Ordering::Relaxed)) };
    if request != served {
        publish(page, request);
    }
}

/// A `fmt::Write` into a byte range of the page; text past the end is
/// dropped and remembered.
struct PageWriter {
    at: *mut u8,
    capacity: usize,
    len: usize,
    cut: bool,
}

impl Write for PageWriter {
    fn write_str(&mut self, s: &str) -> fmt::Result {
        let n = s.len().min(self.capacity - self.len);
        // SAFETY: `at..at + capacity` lies inside the page, which is ours
        // to write while `seq` is odd.
        unsafe { core::ptr::copy_nonoverlapping(s.as_ptr(), self.at.add(self.len), n) };
        self.len += n;
        if n < s.len() {
            self.cut = true;
            return Err(fmt::Error);
        }
        Ok(())
    }
}

fn publish(page: usize, request: u64) {
    let header = page as *mut Header;
    let snapshot = super::snapshot::snapshot();
    // SAFETY: our page (see `on_slow_path`); one writer at a time (the
    // caller holds the report's busy flag).
    unsafe {
        let seq = (*header).seq.load(Ordering::Relaxed);
        (*header).seq.store(seq | 1, Ordering::Relaxed);
        fence(Ordering::Release);
        let mut text = PageWriter { at: (page as *mut u8).add(HEADER_BYTES), capacity: JSON_AT - HEADER_BYTES, len: 0, cut: false };
        let _ = writeln!(text, "== buddyslab {} {} (live)", super::snapshot::VIEWS_VERSION, os::getpid());
        let _ = super::stats::write_views_of(&mut text, &snapshot);
        let mut json = PageWriter { at: (page as *mut u8).add(JSON_AT), capacity: PAGE_BYTES - JSON_AT, len: 0, cut: false };
        let _ = super::stats::write_json_of(&mut json, &snapshot);
        (*header).text_len = text.len as u32;
        (*header).json_len = json.len as u32;
        (*header).flags = text.cut as u32 | (json.cut as u32) << 1;
        (*header).written_ms = os::realtime_ms();
        fence(Ordering::Release);
        (*header).seq.store((seq | 1) + 1, Ordering::Release);
        (*header).served.store(request, Ordering::Release);
    }
}

/// Removes this process's page (at exit). A page inherited from the
/// parent is only dropped, never removed.
pub fn remove() {
    let page = PAGE.swap(0, Ordering::AcqRel);
    if page == 0 {
        return;
    }
    let pid = os::getpid();
    if OWNER.load(Ordering::Relaxed) == pid {
        let path = path_of(pid);
        if let Ok(path) = core::ffi::CStr::from_bytes_until_nul(path.as_bytes()) {
            let _ = os::unlink(path);
        }
    }
    // SAFETY: the page is no longer published in `PAGE`; the exit hook
    // holds the report's busy flag, so no writer is using it.
    let _ = unsafe { os::munmap(page, PAGE_BYTES) };
}
