//! Link arguments for `libbuddyslab.so`: the hot text first, the cold
//! tables last.
//!
//! The functions nearly every program runs (the C entry points, start-up,
//! the refill and flush paths) carry `.text.hot.*` section names (see
//! "Hot text" in docs/ARCHITECTURE.md). A linker script of one `INSERT`
//! command, which lld (Rust's default linker here) and GNU ld both take
//! beside their built-in layout, puts them in one output section at the
//! start of the executable segment, with the PLT and the C start files'
//! code that the loader runs there too. The kernel maps a library's text in
//! 64 KiB windows around each page a program executes, and the first window
//! of the segment is always mapped (the loader calls `_init`): so a small
//! program maps the hot text and little else of it.
//!
//! A second `INSERT` puts the large zero tables (the chunk map's root, the
//! heap profile's filter, the request samples: `.bss.cold.*` section
//! names) in their own section after `.bss`, so that the small statics
//! every program writes share a few pages rather than lying on both sides
//! of 200 KiB of tables a program touches a page or two of.

use std::path::PathBuf;

const SCRIPT: &str = "\
SECTIONS {
  .plt : { *(.plt) }
  .text.hot : { *crtbeginS.o(.text .text.*) *libc_nonshared.a:*(.text .text.*) *(.text.hot .text.hot.*) }
} INSERT BEFORE .text;
SECTIONS {
  .bss.cold (NOLOAD) : { *(.bss.cold .bss.cold.*) }
} INSERT AFTER .bss;
";

fn main() {
    let out = PathBuf::from(std::env::var_os("OUT_DIR").expect("cargo sets OUT_DIR"));
    let script = out.join("hot-text.ld");
    std::fs::write(&script, SCRIPT).expect("cannot write the linker script");
    // The C compiler driver passes `-T FILE` on to the linker (no `-Wl,`,
    // which would split a path with a comma in it).
    println!("cargo:rustc-link-arg-cdylib=-T");
    println!("cargo:rustc-link-arg-cdylib={}", script.display());
    println!("cargo:rerun-if-changed=build.rs");
}
