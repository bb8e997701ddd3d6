//! C++'s replaceable `operator new` and `operator delete`, every form a
//! C++17 program may call, so that a C++ program's allocations reach the
//! heap's fast paths directly. Without them libstdc++'s own operators run:
//! a wrapper around `malloc` (its handler loop) reached through the PLT,
//! and `delete` a jump to `free` through the PLT. On larson, a C++ test
//! of mimalloc-bench, those wrappers ran 22 instructions per allocation
//! and free under callgrind, beside the allocator's own 66.
//!
//! Semantics are the standard's: a throwing `new` that finds no memory
//! calls the new-handler until one is found and throws `std::bad_alloc`
//! when there is no handler. That part is libstdc++'s: on failure, the
//! operator jumps (a tail jump, so no frame of ours is on the stack when
//! the exception leaves) to the definition the program would have had
//! without this library, found with `dlsym(RTLD_NEXT)`. It calls
//! `malloc`, which is ours, in its loop. The `nothrow` forms call theirs
//! the same way, as a plain call: they catch what the handler throws.
//! An aligned `new` whose alignment is not a power of two (which the
//! standard makes undefined) goes to libstdc++'s as a failure does.
//!
//! Every `delete` is `free` (a size given is a hint we do not need). The
//! throwing forms are naked functions on x86-64, where the tail jump can
//! be written; elsewhere only the `delete` and `nothrow` forms are
//! exported, and libstdc++'s throwing `new` calls our `malloc` as before.

#![allow(non_snake_case)]

use super::heap;
use core::ffi::{c_char, c_void};
use core::sync::atomic::{AtomicPtr, Ordering};

/// The forms whose failure goes to the next definition.
#[derive(Clone, Copy)]
#[repr(usize)]
enum Form {
    New,
    NewArray,
    NewAligned,
    NewArrayAligned,
    NewNothrow,
    NewArrayNothrow,
    NewAlignedNothrow,
    NewArrayAlignedNothrow,
}

/// The mangled names of [`Form`]'s operators, as `dlsym` takes them.
const NAMES: [&[u8]; 8] = [
    b"_Znwm\0",
    b"_Znam\0",
    b"_ZnwmSt11align_val_t\0",
    b"_ZnamSt11align_val_t\0",
    b"_ZnwmRKSt9nothrow_t\0",
    b"_ZnamRKSt9nothrow_t\0",
    b"_ZnwmSt11align_val_tRKSt9nothrow_t\0",
    b"_ZnamSt11align_val_tRKSt9nothrow_t\0",
];

/// The next definitions, looked up on the first failure of each form.
static NEXT: [AtomicPtr<c_void>; 8] = [const { AtomicPtr::new(core::ptr::null_mut()) }; 8];

/// The definition of `form` that the program would have without this
/// library. Only failures come here, so the lookup (which may allocate)
/// is off every fast path. Aborts with a message when there is none: a
/// C++ program whose runtime defines no `operator new` cannot have
/// called ours.
extern "C" fn next(form: Form) -> *mut c_void {
    let slot = &NEXT[form as usize];
    let mut f = slot.load(Ordering::Acquire);
    if f.is_null() {
        // SAFETY: a NUL-terminated name; RTLD_NEXT searches the objects
        // loaded after this one.
        f = unsafe { libc::dlsym(libc::RTLD_NEXT, NAMES[form as usize].as_ptr().cast::<c_char>()) };
        if f.is_null() {
            buddyslab::internals::os::fatal(&[b"buddyslab: out of memory in operator new, and no other operator new to report it"]);
        }
        slot.store(f, Ordering::Release);
    }
    f
}

/// `new`'s attempt: a block, or null when there is no memory.
#[link_section = ".text.hot.buddyslab"]
extern "C" fn try_new(size: usize) -> *mut c_void {
    heap::malloc_or(size, super::enomem).cast()
}

/// An aligned `new`'s attempt: a block, or null when there is no memory
/// or `align` is not a power of two.
#[link_section = ".text.hot.buddyslab"]
extern "C" fn try_new_aligned(size: usize, align: usize) -> *mut c_void {
    if !align.is_power_of_two() {
        return core::ptr::null_mut();
    }
    heap::aligned_alloc(align, size).cast()
}

/// A throwing `new`: the attempt, then on failure a tail jump to
/// [`next`]'s definition with the arguments as they came in. `save` and
/// `restore` keep the arguments across each call and align the stack to
/// 16 bytes: the size alone with one push, size and alignment with two
/// and a gap.
macro_rules! throwing_new {
    ($name:ident($($arg:ident: $ty:ty),*), $form:expr, $attempt:path,
     save [$($save:literal),*], restore [$($restore:literal),*]) => {
        /// C++'s throwing `operator new` of this form (see the module).
        ///
        /// # Safety
        /// Called as C++ calls it.
        #[cfg(target_arch = "x86_64")]
        #[unsafe(naked)]
        #[no_mangle]
        #[link_section = ".text.hot.buddyslab"]
        pub unsafe extern "C" fn $name($($arg: $ty),*) -> *mut c_void {
            core::arch::naked_asm!(
                $($save,)*
                "call {attempt}",
                $($restore,)*
                "test rax, rax",
                "jz 2f",
                "ret",
                "2:",
                $($save,)*
                "mov edi, {form}",
                "call {next}",
                $($restore,)*
                "jmp rax",
                attempt = sym $attempt,
                next = sym next,
                form = const $form as usize,
            )
        }
    };
}

throwing_new!(_Znwm(size: usize), Form::New, try_new, save ["push rdi"], restore ["pop rdi"]);
throwing_new!(_Znam(size: usize), Form::NewArray, try_new, save ["push rdi"], restore ["pop rdi"]);
throwing_new!(
    _ZnwmSt11align_val_t(size: usize, align: usize),
    Form::NewAligned,
    try_new_aligned,
    save ["push rdi", "push rsi", "sub rsp, 8"],
    restore ["add rsp, 8", "pop rsi", "pop rdi"]
);
throwing_new!(
    _ZnamSt11align_val_t(size: usize, align: usize),
    Form::NewArrayAligned,
    try_new_aligned,
    save ["push rdi", "push rsi", "sub rsp, 8"],
    restore ["add rsp, 8", "pop rsi", "pop rdi"]
);

/// The C++ type of a `nothrow` `new(size, nothrow)`.
type NothrowNew = unsafe extern "C" fn(usize, *const c_void) -> *mut c_void;
/// The C++ type of a `nothrow` aligned `new(size, align, nothrow)`.
type NothrowNewAligned = unsafe extern "C" fn(usize, usize, *const c_void) -> *mut c_void;

/// A `nothrow` `new(size, nothrow)`: null when no memory is found, after
/// the handler loop of the next definition.
unsafe fn nothrow_new(size: usize, tag: *const c_void, form: Form) -> *mut c_void {
    let p = try_new(size);
    if !p.is_null() {
        return p;
    }
    // SAFETY: `next` is the C++ runtime's definition of this very form.
    unsafe { core::mem::transmute::<*mut c_void, NothrowNew>(next(form))(size, tag) }
}

/// A `nothrow` aligned `new`, as [`nothrow_new`].
unsafe fn nothrow_new_aligned(size: usize, align: usize, tag: *const c_void, form: Form) -> *mut c_void {
    let p = try_new_aligned(size, align);
    if !p.is_null() {
        return p;
    }
    // SAFETY: as in `nothrow_new`.
    unsafe { core::mem::transmute::<*mut c_void, NothrowNewAligned>(next(form))(size, align, tag) }
}

/// `operator new(size_t, const std::nothrow_t&)`.
///
/// # Safety
/// Called as C++ calls it.
#[no_mangle]
pub unsafe extern "C" fn _ZnwmRKSt9nothrow_t(size: usize, tag: *const c_void) -> *mut c_void {
    // SAFETY: per the caller.
    unsafe { nothrow_new(size, tag, Form::NewNothrow) }
}

/// `operator new[](size_t, const std::nothrow_t&)`.
///
/// # Safety
/// Called as C++ calls it.
#[no_mangle]
pub unsafe extern "C" fn _ZnamRKSt9nothrow_t(size: usize, tag: *const c_void) -> *mut c_void {
    // SAFETY: per the caller.
    unsafe { nothrow_new(size, tag, Form::NewArrayNothrow) }
}

/// `operator new(size_t, std::align_val_t, const std::nothrow_t&)`.
///
/// # Safety
/// Called as C++ calls it.
#[no_mangle]
pub unsafe extern "C" fn _ZnwmSt11align_val_tRKSt9nothrow_t(size: usize, align: usize, tag: *const c_void) -> *mut c_void {
    // SAFETY: per the caller.
    unsafe { nothrow_new_aligned(size, align, tag, Form::NewAlignedNothrow) }
}

/// `operator new[](size_t, std::align_val_t, const std::nothrow_t&)`.
///
/// # Safety
/// Called as C++ calls it.
#[no_mangle]
pub unsafe extern "C" fn _ZnamSt11align_val_tRKSt9nothrow_t(size: usize, align: usize, tag: *const c_void) -> *mut c_void {
    // SAFETY: per the caller.
    unsafe { nothrow_new_aligned(size, align, tag, Form::NewArrayAlignedNothrow) }
}

/// Every form of `operator delete` (plain, array; sized, aligned,
/// `nothrow`): `free`, whatever else it is given.
macro_rules! delete {
    ($($name:ident($($arg:ident: $ty:ty),*);)*) => {$(
        /// A form of C++'s `operator delete`: `free` (see the module).
        ///
        /// # Safety
        /// As `free`.
        #[no_mangle]
        #[link_section = ".text.hot.buddyslab"]
        pub unsafe extern "C" fn $name(p: *mut c_void, $(_: $ty),*) {
            // SAFETY: per the caller.
            unsafe { heap::free(p.cast()) }
        }
    )*};
}

delete! {
    _ZdlPv();
    _ZdaPv();
    _ZdlPvm(size: usize);
    _ZdaPvm(size: usize);
    _ZdlPvRKSt9nothrow_t(tag: *const c_void);
    _ZdaPvRKSt9nothrow_t(tag: *const c_void);
    _ZdlPvSt11align_val_t(align: usize);
    _ZdaPvSt11align_val_t(align: usize);
    _ZdlPvmSt11align_val_t(size: usize, align: usize);
    _ZdaPvmSt11align_val_t(size: usize, align: usize);
    _ZdlPvSt11align_val_tRKSt9nothrow_t(align: usize, tag: *const c_void);
    _ZdaPvSt11align_val_tRKSt9nothrow_t(align: usize, tag: *const c_void);
}
