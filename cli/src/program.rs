//! The checks made before anything runs: where the program is, whether
//! `LD_PRELOAD` can reach its malloc at all, and whether a library can be
//! preloaded into it.
//!
//! `LD_PRELOAD` is read by the dynamic loader, so it does nothing for a
//! program without one: an ELF file with no `PT_INTERP` program header
//! (static, or static-pie) runs with the malloc linked into it. A script
//! (`#!`) is judged by its interpreter. A library is preloadable when it is
//! an ELF shared object (`ET_DYN`) of the program's class and machine; the
//! loader refuses anything else with one line on stderr and runs the
//! program anyway, which is what these checks spare the user.

use crate::{Failure, EXIT_CANNOT_RUN, EXIT_NOT_FOUND};
use std::ffi::OsStr;
use std::fs::File;
use std::io::{self, Read, Seek, SeekFrom};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

const ET_DYN: u16 = 3;
const PT_INTERP: u32 = 3;

/// What an ELF header says about a file.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Elf {
    /// 64-bit (ELFCLASS64) rather than 32-bit.
    pub wide: bool,
    /// `e_machine`.
    pub machine: u16,
    /// `e_type`.
    pub kind: u16,
    /// Has a `PT_INTERP` header: the dynamic loader starts it.
    pub interpreted: bool,
}

impl Elf {
    /// "64-bit x86-64", "32-bit i386", ...
    fn describe(&self) -> String {
        let machine = match self.machine {
            3 => "i386".to_string(),
            62 => "x86-64".to_string(),
            183 => "aarch64".to_string(),
            40 => "arm".to_string(),
            243 => "riscv".to_string(),
            other => format!("machine {other}"),
        };
        format!("{}-bit {machine}", if self.wide { 64 } else { 32 })
    }
}

/// Reads the ELF header and program headers of `path`; `None` when it is
/// not an ELF file.
pub fn read_elf(path: &Path) -> io::Result<Option<Elf>> {
    let mut file = File::open(path)?;
    let mut header = [0u8; 64];
    let n = read_up_to(&mut file, &mut header)?;
    if n < 52 || &header[..4] != b"\x7fELF" {
        return Ok(None);
    }
    let wide = match header[4] {
        1 => false,
        2 => true,
        _ => return Ok(None),
    };
    let big_endian = header[5] == 2;
    let u16_at = |b: &[u8], at: usize| {
        let v = [b[at], b[at + 1]];
        if big_endian {
            u16::from_be_bytes(v)
        } else {
            u16::from_le_bytes(v)
        }
    };
    let u32_at = |b: &[u8], at: usize| {
        let v = [b[at], b[at + 1], b[at + 2], b[at + 3]];
        if big_endian {
            u32::from_be_bytes(v)
        } else {
            u32::from_le_bytes(v)
        }
    };
    let u64_at = |b: &[u8], at: usize| {
        let mut v = [0u8; 8];
        v.copy_from_slice(&b[at..at + 8]);
        if big_endian {
            u64::from_be_bytes(v)
        } else {
            u64::from_le_bytes(v)
        }
    };
    if wide && n < 64 {
        return Ok(None);
    }
    let kind = u16_at(&header, 16);
    let machine = u16_at(&header, 18);
    let (phoff, phentsize, phnum) = if wide {
        (
            u64_at(&header, 0x20),
            u16_at(&header, 0x36),
            u16_at(&header, 0x38),
        )
    } else {
        (
            u64::from(u32_at(&header, 0x1c)),
            u16_at(&header, 0x2a),
            u16_at(&header, 0x2c),
        )
    };
    let mut interpreted = false;
    if phentsize >= 4 && phnum > 0 {
        let mut table = vec![0u8; usize::from(phentsize) * usize::from(phnum)];
        file.seek(SeekFrom::Start(phoff))?;
        let got = read_up_to(&mut file, &mut table)?;
        interpreted = table[..got]
            .chunks_exact(usize::from(phentsize))
            .any(|entry| u32_at(entry, 0) == PT_INTERP);
    }
    Ok(Some(Elf {
        wide,
        machine,
        kind,
        interpreted,
    }))
}

fn read_up_to(file: &mut File, buf: &mut [u8]) -> io::Result<usize> {
    let mut got = 0;
    while got < buf.len() {
        match file.read(&mut buf[got..])? {
            0 => break,
            n => got += n,
        }
    }
    Ok(got)
}

/// Finds `name` as `execvp` would: a name with a `/` is a path, anything
/// else is looked up in `PATH`. Fails with 127 when there is nothing there
/// and 126 when what is there cannot be executed.
pub fn resolve(name: &OsStr) -> Result<PathBuf, Failure> {
    let shown = name.to_string_lossy();
    if name.is_empty() {
        return Err(Failure {
            status: EXIT_NOT_FOUND,
            message: "empty program name".into(),
        });
    }
    if name.as_bytes().contains(&b'/') {
        let path = PathBuf::from(name);
        return match std::fs::metadata(&path) {
            Err(e) => Err(Failure {
                status: EXIT_NOT_FOUND,
                message: format!("{shown}: {e}"),
            }),
            Ok(m) if m.is_dir() => Err(Failure {
                status: EXIT_CANNOT_RUN,
                message: format!("{shown}: is a directory"),
            }),
            Ok(m) if m.permissions().mode() & 0o111 == 0 => Err(Failure {
                status: EXIT_CANNOT_RUN,
                message: format!("{shown}: not executable (permission denied)"),
            }),
            Ok(_) => Ok(path),
        };
    }
    let search = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    let mut not_executable = None;
    for dir in std::env::split_paths(&search) {
        let candidate = dir.join(name);
        let Ok(m) = std::fs::metadata(&candidate) else {
            continue;
        };
        if m.is_file() && m.permissions().mode() & 0o111 != 0 {
            return Ok(candidate);
        }
        not_executable.get_or_insert(candidate);
    }
    match not_executable {
        Some(path) => Err(Failure {
            status: EXIT_CANNOT_RUN,
            message: format!("{shown}: {} is not executable", path.display()),
        }),
        None => Err(Failure {
            status: EXIT_NOT_FOUND,
            message: format!("{shown}: command not found (searched PATH)"),
        }),
    }
}

/// The ELF image the kernel will really start for `path`: the file itself,
/// or for a `#!` script its interpreter (followed up to 4 levels, as the
/// kernel does). Refuses a statically linked image, whose malloc no preload
/// can replace. `None` when the file is neither ELF nor a script (the
/// kernel will decide).
pub fn check_program(path: &Path) -> Result<Option<(PathBuf, Elf)>, Failure> {
    let mut image = path.to_path_buf();
    for _ in 0..5 {
        let read_failure = |e: io::Error| Failure {
            status: EXIT_CANNOT_RUN,
            message: format!("{}: cannot read it: {e}", image.display()),
        };
        if let Some(elf) = read_elf(&image).map_err(read_failure)? {
            if !elf.interpreted {
                let via = if image == path {
                    String::new()
                } else {
                    format!(" (the interpreter of {})", path.display())
                };
                return Err(Failure::tool(format!(
                    "{}{via} is statically linked: it has no dynamic loader, so LD_PRELOAD \
                     cannot replace its malloc and it would run on the malloc built into it. \
                     buddyslab works with dynamically linked programs.",
                    image.display()
                )));
            }
            return Ok(Some((image, elf)));
        }
        match interpreter(&image).map_err(read_failure)? {
            Some(next) => image = next,
            None => return Ok(None),
        }
    }
    Err(Failure {
        status: EXIT_CANNOT_RUN,
        message: format!("{}: too many levels of #! interpreters", path.display()),
    })
}

/// The interpreter named on a `#!` line, if the file starts with one.
fn interpreter(path: &Path) -> io::Result<Option<PathBuf>> {
    let mut head = [0u8; 256];
    let n = read_up_to(&mut File::open(path)?, &mut head)?;
    let Some(line) = head[..n].strip_prefix(b"#!") else {
        return Ok(None);
    };
    let line = line.split(|&b| b == b'\n').next().unwrap_or_default();
    let word = line
        .split(|b| b.is_ascii_whitespace())
        .find(|w| !w.is_empty());
    Ok(word.map(|w| PathBuf::from(OsStr::from_bytes(w))))
}

/// Checks that the loader will accept `lib` as a preload for a program
/// whose image is `program` (when known). `missing_hint` is added when the
/// file does not exist.
pub fn check_library(
    lib: &Path,
    program: Option<&(PathBuf, Elf)>,
    missing_hint: &str,
) -> Result<(), Failure> {
    let elf = match read_elf(lib) {
        Err(e) if e.kind() == io::ErrorKind::NotFound => {
            return Err(Failure::tool(format!(
                "{}: no such file{missing_hint}",
                lib.display()
            )))
        }
        Err(e) => {
            return Err(Failure::tool(format!(
                "{}: cannot read it: {e}",
                lib.display()
            )))
        }
        Ok(None) => {
            return Err(Failure::tool(format!(
                "{} is not an ELF file, so it cannot be preloaded",
                lib.display()
            )))
        }
        Ok(Some(elf)) => elf,
    };
    if elf.kind != ET_DYN {
        return Err(Failure::tool(format!(
            "{} is not a shared library (ELF type {}), so it cannot be preloaded",
            lib.display(),
            elf.kind
        )));
    }
    if let Some((image, program)) = program {
        if (program.wide, program.machine) != (elf.wide, elf.machine) {
            return Err(Failure::tool(format!(
                "{} is {} but {} is {}: the loader cannot preload it there",
                lib.display(),
                elf.describe(),
                image.display(),
                program.describe()
            )));
        }
    }
    Ok(())
}
