//! The library's hot text: the functions nearly every program runs lie in
//! one `.text.hot` section of `libbuddyslab.so`, apart from the views and
//! the error paths (see "Hot text" in docs/ARCHITECTURE.md). The kernel
//! maps a library's text in 64 KiB windows around each page a program
//! executes (fault-around), so code that every program runs, spread over
//! the whole text, made every window of it resident.
//!
//! Reads the section and symbol tables of the built library (ELF64, little
//! endian) and checks that the C entry points and the slow paths behind
//! them are inside `.text.hot`, that the section comes before the rest of
//! the text (the start of the executable segment is mapped in every
//! program), and that it is the smaller part of the text: a dropped linker
//! script (`cdylib/build.rs`) or a dropped section attribute fails here.
//!
//! Needs `target/release/libbuddyslab.so`: run
//! `cargo build --release && cargo test --release --workspace`.

mod common;

use std::ops::Range;

fn u16_at(b: &[u8], at: usize) -> usize {
    u16::from_le_bytes(b[at..at + 2].try_into().unwrap()) as usize
}

fn u32_at(b: &[u8], at: usize) -> usize {
    u32::from_le_bytes(b[at..at + 4].try_into().unwrap()) as usize
}

fn u64_at(b: &[u8], at: usize) -> usize {
    u64::from_le_bytes(b[at..at + 8].try_into().unwrap()) as usize
}

fn c_str(b: &[u8], at: usize) -> &str {
    let end = b[at..].iter().position(|&c| c == 0).expect("an unterminated string") + at;
    std::str::from_utf8(&b[at..end]).expect("a name that is not UTF-8")
}

/// One section header: its name, file offset, address, size, link and
/// entry size.
struct Section {
    name: String,
    offset: usize,
    addr: usize,
    size: usize,
    link: usize,
    entsize: usize,
}

fn sections(elf: &[u8]) -> Vec<Section> {
    assert_eq!(&elf[..4], b"\x7fELF", "not an ELF file");
    assert_eq!(elf[4], 2, "not a 64-bit ELF file");
    assert_eq!(elf[5], 1, "not a little-endian ELF file");
    let (shoff, shentsize, shnum, shstrndx) = (u64_at(elf, 0x28), u16_at(elf, 0x3a), u16_at(elf, 0x3c), u16_at(elf, 0x3e));
    let header = |i: usize| shoff + i * shentsize;
    let names = u64_at(elf, header(shstrndx) + 0x18);
    (0..shnum)
        .map(|i| {
            let h = header(i);
            Section {
                name: c_str(elf, names + u32_at(elf, h)).to_string(),
                addr: u64_at(elf, h + 0x10),
                offset: u64_at(elf, h + 0x18),
                size: u64_at(elf, h + 0x20),
                link: u32_at(elf, h + 0x28),
                entsize: u64_at(elf, h + 0x38),
            }
        })
        .collect()
}

/// Every defined function of the symbol table `table` (`.symtab` or
/// `.dynsym`): its name and address.
fn functions(elf: &[u8], all: &[Section], table: &str) -> Vec<(String, usize)> {
    symbols(elf, all, table, 2) // STT_FUNC
}

/// Every defined symbol of type `kind` (`STT_*`) of the symbol table
/// `table`: its name and address.
fn symbols(elf: &[u8], all: &[Section], table: &str, kind: u8) -> Vec<(String, usize)> {
    let Some(symtab) = all.iter().find(|s| s.name == table) else { return Vec::new() };
    let strtab = &all[symtab.link];
    (0..symtab.size / symtab.entsize)
        .map(|i| symtab.offset + i * symtab.entsize)
        .filter(|&at| elf[at + 4] & 0xf == kind && u16_at(elf, at + 6) != 0) // defined
        .map(|at| (c_str(elf, strtab.offset + u32_at(elf, at)).to_string(), u64_at(elf, at + 8)))
        .collect()
}

fn range(s: &Section) -> Range<usize> {
    s.addr..s.addr + s.size
}

#[test]
fn entry_points_and_slow_paths_lie_in_the_hot_text() {
    let lib = common::library();
    let elf = std::fs::read(&lib).unwrap_or_else(|e| panic!("{}: {e}", lib.display()));
    let all = sections(&elf);
    let hot = all.iter().find(|s| s.name == ".text.hot").unwrap_or_else(|| {
        panic!("{} has no .text.hot section: the linker script of cdylib/build.rs is missing", lib.display())
    });
    let text = all.iter().find(|s| s.name == ".text").expect("no .text section");
    assert!(hot.addr < text.addr, ".text.hot at {:#x} comes after .text at {:#x}", hot.addr, text.addr);
    // The C faces, by their exported names.
    let exported = functions(&elf, &all, ".dynsym");
    for name in ["malloc", "free", "calloc", "realloc", "posix_memalign", "aligned_alloc", "malloc_usable_size", "_Znwm", "_ZdlPv", "_ZdlPvm"] {
        let (_, addr) = exported.iter().find(|(n, _)| n == name).unwrap_or_else(|| panic!("{name} is not exported"));
        assert!(range(hot).contains(addr), "{name} at {addr:#x} is outside .text.hot {:#x?}", range(hot));
    }
    // The slow paths and start-up, by a part of their mangled names (the
    // release profile does not strip the symbol table).
    let internal = functions(&elf, &all, ".symtab");
    assert!(!internal.is_empty(), "{} has no symbol table", lib.display());
    // Beside them, functions for which programs were found to map a
    // window of the cold text: a closure's shim, a recursive helper, the
    // large tier's moves, the release path (which sorted with the
    // standard library's generic sort).
    for part in [
        "8magazine10alloc_slow",
        "8magazine9free_slow",
        "4life9init_slow",
        "10page_alloc11alloc_pages",
        "5chunk4grow",
        "6ledger10handed_out",
        "8overlaps5visit",
        "9pagetable9move_kept",
        "9pagetable6forget",
        "7reclaim7release",
    ] {
        let found: Vec<_> = internal.iter().filter(|(n, _)| n.contains(part)).collect();
        assert!(!found.is_empty(), "no function named like {part}");
        for (name, addr) in found {
            assert!(range(hot).contains(addr), "{name} at {addr:#x} is outside .text.hot {:#x?}", range(hot));
        }
    }
    // And what no program runs unless asked for stays out: the views.
    let views: Vec<_> = internal.iter().filter(|(n, _)| n.contains("5views7heapmap")).collect();
    assert!(!views.is_empty(), "no heap-map function found");
    assert!(views.iter().all(|(_, addr)| !range(hot).contains(addr)), "a heap-map function lies in .text.hot");
    // The hot text is the smaller part; if it grows past the rest, the
    // selection has stopped meaning anything.
    assert!(hot.size < text.size, ".text.hot is {} bytes, .text {}", hot.size, text.size);
}

/// The large zero tables that a program touches a page or two of, if any
/// (the chunk map's root, the heap profile's filter, the request
/// samples), lie in `.bss.cold` after `.bss`, so the small statics every
/// program writes share a few pages instead of lying between them.
#[test]
fn large_zero_tables_lie_after_the_small_statics() {
    let lib = common::library();
    let elf = std::fs::read(&lib).unwrap_or_else(|e| panic!("cannot read {}: {e}", lib.display()));
    let all = sections(&elf);
    let find = |name: &str| all.iter().find(|s| s.name == name).unwrap_or_else(|| panic!("no {name} section"));
    let (bss, cold) = (find(".bss"), find(".bss.cold"));
    assert!(cold.addr >= bss.addr + bss.size, ".bss.cold at {:#x} is not after .bss {:#x?}", cold.addr, range(bss));
    let objects = symbols(&elf, &all, ".symtab", 1); // STT_OBJECT
    for part in ["9CHUNK_MAP", "6FILTER", "12SLAB_SAMPLES"] {
        let found: Vec<_> = objects.iter().filter(|(n, _)| n.contains(part)).collect();
        assert!(!found.is_empty(), "no static named like {part}");
        for (name, addr) in found {
            assert!(range(cold).contains(addr), "{name} at {addr:#x} is outside .bss.cold {:#x?}", range(cold));
        }
    }
    // What is left in .bss is a few pages.
    assert!(bss.size <= 32 << 10, ".bss is {} bytes", bss.size);
}
