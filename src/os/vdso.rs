//! The kernel's `clock_gettime`, found in the vDSO the kernel maps into
//! every process, called without going through libc's wrapper.
//!
//! libc's `clock_gettime` calls the same vDSO function, but the wrapper
//! lies in a page of libc's text that a program running on glibc's own
//! malloc often never executes: the first call faulted in one more 64 KiB
//! fault-around window of libc (cache-scratch: 932 KiB of libc's text
//! resident against 868 on glibc alone, 868 with this module), counted in
//! the program's peak RSS. The lookup reads the vDSO's dynamic symbol
//! table as the kernel's `parse_vdso.c` does (ELF64, `DT_HASH` for the
//! symbol count) and falls back to libc's wrapper when the process has no
//! vDSO or the vDSO has no such symbol.

use core::sync::atomic::{AtomicUsize, Ordering};

/// The vDSO's `__vdso_clock_gettime`: 0 not looked up yet, 1 not found
/// (use libc's), else its address.
static CLOCK_GETTIME: AtomicUsize = AtomicUsize::new(0);
const NOT_FOUND: usize = 1;

type ClockGettime = unsafe extern "C" fn(libc::clockid_t, *mut libc::timespec) -> libc::c_int;

/// `clock_gettime(clock, ts)` through the vDSO, else through libc.
///
/// # Safety
/// `ts` is valid for a write.
#[inline]
pub unsafe fn clock_gettime(clock: libc::clockid_t, ts: *mut libc::timespec) -> libc::c_int {
    let mut f = CLOCK_GETTIME.load(Ordering::Relaxed);
    if f == 0 {
        // SAFETY: reads the vDSO image the kernel mapped, within its tables.
        f = unsafe { lookup(CLOCK_GETTIME_NAME) }.unwrap_or(NOT_FOUND);
        CLOCK_GETTIME.store(f, Ordering::Relaxed);
    }
    if f == NOT_FOUND {
        // SAFETY: per the caller.
        return unsafe { libc::clock_gettime(clock, ts) };
    }
    // SAFETY: the vDSO's function of this name has this C signature, and
    // the vDSO stays mapped for the life of the process.
    unsafe { core::mem::transmute::<usize, ClockGettime>(f)(clock, ts) }
}

/// An ELF64 dynamic-section entry (`Elf64_Dyn`).
#[repr(C)]
struct Dyn {
    tag: i64,
    value: u64,
}

const DT_NULL: i64 = 0;
const DT_HASH: i64 = 4;
const DT_STRTAB: i64 = 5;
const DT_SYMTAB: i64 = 6;
const STT_FUNC: u8 = 2;

/// The vDSO's name of `clock_gettime` on this architecture.
#[cfg(target_arch = "x86_64")]
const CLOCK_GETTIME_NAME: &[u8] = b"__vdso_clock_gettime\0";
#[cfg(target_arch = "aarch64")]
const CLOCK_GETTIME_NAME: &[u8] = b"__kernel_clock_gettime\0";
#[cfg(not(any(target_arch = "x86_64", target_arch = "aarch64")))]
const CLOCK_GETTIME_NAME: &[u8] = b"\0";

/// The address of the vDSO's defined function `name` (NUL-terminated),
/// or `None`.
///
/// # Safety
/// The auxiliary vector's `AT_SYSINFO_EHDR`, when present, is the vDSO's
/// ELF header, mapped whole.
#[cold]
#[link_section = ".text.hot.buddyslab"]
unsafe fn lookup(name: &[u8]) -> Option<usize> {
    // SAFETY: getauxval only reads the auxiliary vector.
    let base = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) } as usize;
    if base == 0 || name.len() < 2 {
        return None;
    }
    // SAFETY: per the caller, every read below lies in the vDSO image: the
    // header, its program headers and the tables its dynamic section names.
    unsafe {
        let ehdr = &*(base as *const libc::Elf64_Ehdr);
        if ehdr.e_ident[..4] != *b"\x7fELF" || ehdr.e_ident[4] != 2 {
            return None;
        }
        let phdrs = core::slice::from_raw_parts(
            (base + ehdr.e_phoff as usize) as *const libc::Elf64_Phdr,
            ehdr.e_phnum as usize,
        );
        // The load bias: where the image's first PT_LOAD was mapped less
        // where it says it goes.
        let load = phdrs.iter().find(|p| p.p_type == libc::PT_LOAD)?;
        let bias = (base + load.p_offset as usize).wrapping_sub(load.p_vaddr as usize);
        let dynamic = phdrs.iter().find(|p| p.p_type == libc::PT_DYNAMIC)?;
        let mut entry = bias.wrapping_add(dynamic.p_vaddr as usize) as *const Dyn;
        let (mut symtab, mut strtab, mut hash) = (0usize, 0usize, 0usize);
        while (*entry).tag != DT_NULL {
            let at = bias.wrapping_add((*entry).value as usize);
            match (*entry).tag {
                DT_SYMTAB => symtab = at,
                DT_STRTAB => strtab = at,
                DT_HASH => hash = at,
                _ => {}
            }
            entry = entry.add(1);
        }
        if symtab == 0 || strtab == 0 || hash == 0 {
            return None;
        }
        // DT_HASH: nbucket, nchain, ...; nchain is the number of symbols.
        let count = *(hash as *const u32).add(1) as usize;
        let symbols = core::slice::from_raw_parts(symtab as *const libc::Elf64_Sym, count);
        symbols.iter().find_map(|sym| {
            let defined = sym.st_shndx != 0 && sym.st_info & 0xf == STT_FUNC;
            let sym_name = core::ffi::CStr::from_ptr((strtab + sym.st_name as usize) as *const libc::c_char);
            (defined && sym_name.to_bytes_with_nul() == name).then(|| bias.wrapping_add(sym.st_value as usize))
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The vDSO's clock and libc's agree (read between two of libc's, the
    /// vDSO's reading lies between them), the lookup finds the function
    /// when the process has a vDSO, and a name it does not have is not
    /// found.
    #[test]
    fn the_vdso_clock_reads_as_libcs() {
        let read = |via_vdso: bool| {
            let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
            // SAFETY: a valid out-parameter.
            let rc = unsafe {
                if via_vdso {
                    clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts)
                } else {
                    libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts)
                }
            };
            assert_eq!(rc, 0);
            ts.tv_sec as i128 * 1_000_000_000 + ts.tv_nsec as i128
        };
        let before = read(false);
        let ours = read(true);
        let after = read(false);
        assert!(before <= ours && ours <= after, "{before} <= {ours} <= {after}");
        // SAFETY: reads the vDSO image.
        let found = unsafe { lookup(CLOCK_GETTIME_NAME) };
        // SAFETY: as above.
        let missing = unsafe { lookup(b"__vdso_no_such_function\0") };
        assert_eq!(missing, None);
        // SAFETY: getauxval only reads the auxiliary vector.
        let has_vdso = unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) } != 0;
        if has_vdso && cfg!(any(target_arch = "x86_64", target_arch = "aarch64")) {
            assert!(found.is_some(), "no clock_gettime in the vDSO");
        }
    }
}
