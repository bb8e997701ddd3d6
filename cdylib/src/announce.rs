//! The binding handshake with the `buddyslab` tool.
//!
//! The tool sets `BUDDYSLAB_ANNOUNCE=FD:INODE`, where `FD` is the write end
//! of a pipe it made and `INODE` that pipe's inode. The constructor then
//! writes one line to `FD`:
//!
//! ```text
//! buddyslab-announce <pid> bound
//! buddyslab-announce <pid> unbound <symbol> <object that defines it>
//! ```
//!
//! "bound" means that `malloc`, `calloc` and `realloc`, looked up the way
//! the dynamic loader binds every other object's calls (`dlsym` in the
//! global scope: the executable first, then the preloaded libraries) and
//! called, return memory from this allocator's chunks, and that no object
//! other than this library defines `free` ahead of it. Calling them, not
//! comparing addresses, is what makes the answer right for a non-PIE
//! executable: there the lookup returns the executable's own PLT stub
//! (its canonical address for the function), which still jumps here. A
//! program that defines its own `malloc` fails the test, and the line
//! names the object. `free` cannot be tried the same way (handing a block
//! to a foreign `free` is the very crash this warns about), so it is
//! judged by its definition: a symbol named `free` at that address. A
//! process that never loaded the library (static, set-uid, or refused by
//! the loader) writes nothing.
//!
//! The inode check makes sure `FD` is still the tool's pipe: a descendant
//! inherits the variable, but its `FD` may since name some other file,
//! which must never receive this line. The tool sets the pipe non-blocking,
//! so a full pipe drops lines instead of stalling a process.

// The face's heap (the secure layer in libbuddyslab_secure.so): the
// blocks tried below are freed where they came from.
use super::heap;
use buddyslab::stats::FixedBuf;
use buddyslab::internals::views::tool;
use buddyslab::internals::{mm::page, os};
use core::ffi::{c_void, CStr};
use core::fmt::Write;
use core::ptr;

/// Writes the line described above, if the tool asked for it.
#[link_section = ".text.hot.buddyslab"]
pub fn report() {
    // The variable parsed and the pipe's inode checked (see above).
    let Some(fd) = tool::tool_pipe() else {
        return;
    };
    // Room for a PATH_MAX path: the line is never cut.
    let mut line = FixedBuf::<4200>::new();
    let pid = os::getpid();
    let _ = match first_foreign_symbol() {
        None => writeln!(line, "buddyslab-announce {pid} bound"),
        Some((symbol, object)) => writeln!(
            line,
            "buddyslab-announce {pid} unbound {} {}",
            symbol.to_str().unwrap_or("?"),
            core::str::from_utf8(object).unwrap_or("?")
        ),
    };
    line.flush_to(fd);
    tool::announce_command();
}

/// The first of `malloc`, `calloc`, `realloc`, `free` that the process
/// does not get from this library, with the path of the object that
/// serves it (`-` if none does).
fn first_foreign_symbol() -> Option<(&'static CStr, &'static [u8])> {
    for symbol in [c"malloc", c"calloc", c"realloc"] {
        let function = global(symbol);
        if function.is_null() {
            return Some((symbol, b"-"));
        }
        // SAFETY: the global scope's definition of a C library function
        // has the C library's signature; these calls only allocate.
        let block = unsafe {
            match symbol.to_bytes() {
                b"malloc" => core::mem::transmute::<
                    *mut c_void,
                    unsafe extern "C" fn(usize) -> *mut c_void,
                >(function)(16),
                b"calloc" => core::mem::transmute::<
                    *mut c_void,
                    unsafe extern "C" fn(usize, usize) -> *mut c_void,
                >(function)(1, 16),
                _ => core::mem::transmute::<
                    *mut c_void,
                    unsafe extern "C" fn(*mut c_void, usize) -> *mut c_void,
                >(function)(ptr::null_mut(), 16),
            }
        };
        // A 16-byte block of ours is always a slab object in a chunk.
        if block.is_null() || page::chunk_of(block as usize).is_null() {
            // A foreign block is left alone: its own free may not be
            // the one a call to `free` reaches.
            return Some((symbol, object_name(function)));
        }
        // SAFETY: a live block of this allocator, just allocated.
        unsafe { heap::free(block.cast()) };
    }
    let free = global(c"free");
    if free.is_null() {
        return Some((c"free", b"-"));
    }
    let ours = object_base(report as *const c_void);
    if object_base(free) != ours && defines(free, c"free") {
        return Some((c"free", object_name(free)));
    }
    None
}

/// `symbol` as the global scope resolves it (null if nothing defines it).
fn global(symbol: &CStr) -> *mut c_void {
    // SAFETY: dlsym with RTLD_DEFAULT and a NUL-terminated name has no
    // other precondition; it may call malloc, which is re-entrant here.
    unsafe { libc::dlsym(libc::RTLD_DEFAULT, symbol.as_ptr()) }
}

/// Is `address` the definition of a symbol named `symbol`? Not if it is
/// a non-PIE executable's PLT stub: that is listed under the name too,
/// as an undefined symbol (`SHN_UNDEF`) with the stub's address.
fn defines(address: *const c_void, symbol: &CStr) -> bool {
    #[cfg(target_pointer_width = "64")]
    type Sym = libc::Elf64_Sym;
    #[cfg(target_pointer_width = "32")]
    type Sym = libc::Elf32_Sym;
    const RTLD_DL_SYMENT: libc::c_int = 1;
    const SHN_UNDEF: u16 = 0;
    // SAFETY: Dl_info is pointers only; all zeros is a valid value.
    let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
    let mut entry: *const Sym = ptr::null();
    // SAFETY: dladdr1 only reads the loader's tables and fills `info`
    // and, with RTLD_DL_SYMENT, `entry` with a pointer to the matching
    // symbol table entry; that and a non-null dli_sname stay valid while
    // the object is loaded.
    unsafe {
        libc::dladdr1(
            address,
            &mut info,
            (&mut entry as *mut *const Sym).cast(),
            RTLD_DL_SYMENT,
        ) != 0
            && ptr::eq(info.dli_saddr, address)
            && !info.dli_sname.is_null()
            && CStr::from_ptr(info.dli_sname) == symbol
            && !entry.is_null()
            && (*entry).st_shndx != SHN_UNDEF
    }
}

/// Load address of the object containing `address`.
fn object_base(address: *const c_void) -> Option<usize> {
    // SAFETY: Dl_info is pointers only; all zeros is a valid value.
    let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
    // SAFETY: dladdr only reads the loader's tables and fills `info`,
    // a live, writable Dl_info.
    (unsafe { libc::dladdr(address, &mut info) } != 0).then_some(info.dli_fbase as usize)
}

/// Path of the object containing `address`, as the loader knows it.
fn object_name(address: *const c_void) -> &'static [u8] {
    // SAFETY: Dl_info is pointers only; all zeros is a valid value.
    let mut info: libc::Dl_info = unsafe { core::mem::zeroed() };
    // SAFETY: `info` is a live, writable Dl_info; a non-null dli_fname is
    // a NUL-terminated string owned by the loader for as long as the
    // object stays loaded (a symbol the global scope resolves to is in
    // an object that is never unloaded before this returns).
    unsafe {
        if libc::dladdr(address, &mut info) == 0 || info.dli_fname.is_null() {
            return b"?";
        }
        CStr::from_ptr(info.dli_fname).to_bytes()
    }
}
