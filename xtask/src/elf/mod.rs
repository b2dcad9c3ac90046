//! ELF files as the dynamic linker sees them, and the shared-library closure an image needs so
//! that a dynamically linked binary runs in it.
//!
//! `read_info` reads what the loader reads (System V gABI, "Dynamic Linking"): the program
//! headers, `PT_INTERP`, and from `PT_DYNAMIC` the `DT_NEEDED`, `DT_RUNPATH` and `DT_RPATH`
//! strings, whose table `DT_STRTAB` is found through the `PT_LOAD` segment that maps it. Section
//! headers are never consulted: a stripped or sectionless file loads, so it must read here too.
//! Every offset is bounds-checked (by `object`), because package contents are untrusted input.
//!
//! `closure` (in `closure.rs`) replays glibc's search for each binary inside unpacked package
//! trees; `tree.rs` looks paths up inside one tree as if it were the root filesystem.
//!
//! Architecture invariant: nothing here spawns a process or writes a file; the trees are only
//! read.

mod closure;
mod tree;

pub use closure::{closure, ClosureError, Resolved};
pub use tree::TreeError;

use object::elf::{FileHeader32, FileHeader64, DT_NEEDED, DT_NULL, DT_RPATH, DT_RUNPATH};
use object::elf::{DT_STRSZ, DT_STRTAB, PT_LOAD};
use object::read::elf::{Dyn, FileHeader, ProgramHeader};
use object::{Endianness, FileKind};

/// What the dynamic linker needs to run one ELF file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElfInfo {
    /// ELFCLASS64 rather than ELFCLASS32.
    pub class64: bool,
    /// `e_machine` (`object::elf::EM_X86_64` is 62).
    pub machine: u16,
    /// `PT_INTERP`: the loader's absolute path; `None` for a static binary or a library.
    pub interpreter: Option<String>,
    /// `DT_NEEDED` sonames, in the file's order (the loader's breadth-first order).
    pub needed: Vec<String>,
    /// The `DT_RUNPATH` entries, or the `DT_RPATH` ones when there is no `DT_RUNPATH` (ld.so
    /// ignores `DT_RPATH` then); unexpanded, so `$ORIGIN` is still there.
    pub runpath: Vec<String>,
}

/// Why bytes could not be read as an ELF file.
#[derive(Debug, thiserror::Error)]
pub enum ElfError {
    #[error("not an ELF file: it does not start with \\x7fELF")]
    NotElf,
    #[error("truncated or malformed ELF file: {0}")]
    Malformed(String),
}

/// Reads the loader's view of an ELF file. Anything that is not a well-formed ELF file, including
/// one cut short, is an error.
pub fn read_info(bytes: &[u8]) -> Result<ElfInfo, ElfError> {
    match FileKind::parse(bytes) {
        Ok(FileKind::Elf32) => read::<FileHeader32<Endianness>>(bytes),
        Ok(FileKind::Elf64) => read::<FileHeader64<Endianness>>(bytes),
        _ if bytes.starts_with(&object::elf::ELFMAG) => {
            Err(malformed("the ELF class is neither 32 nor 64 bits"))
        }
        _ => Err(ElfError::NotElf),
    }
}

fn read<Elf: FileHeader<Endian = Endianness>>(data: &[u8]) -> Result<ElfInfo, ElfError> {
    let header = Elf::parse(data).map_err(malformed)?;
    let endian = header.endian().map_err(malformed)?;
    let segments = header.program_headers(endian, data).map_err(malformed)?;
    let mut interpreter = None;
    let mut dynamic: &[Elf::Dyn] = &[];
    for segment in segments {
        if let Some(path) = segment.interpreter(endian, data).map_err(malformed)? {
            interpreter = Some(text(path, "PT_INTERP")?);
        }
        if let Some(entries) = segment.dynamic(endian, data).map_err(malformed)? {
            dynamic = entries;
        }
    }
    let entries: Vec<(i64, u64)> = dynamic
        .iter()
        .map(|d| (d.d_tag(endian).0, d.d_val(endian).into()))
        .take_while(|&(tag, _)| tag != DT_NULL.0)
        .collect();
    let strings = dynamic_strings(endian, data, segments, &entries)?;
    let values = |tag: i64| -> Result<Vec<String>, ElfError> {
        let offsets = entries.iter().filter(|&&(t, _)| t == tag);
        offsets.map(|&(_, at)| string_at(strings, at)).collect()
    };
    let runpath = match values(DT_RUNPATH.0)? {
        runpath if runpath.is_empty() => values(DT_RPATH.0)?,
        runpath => runpath,
    };
    Ok(ElfInfo {
        class64: header.is_class_64(),
        machine: header.e_machine(endian).0,
        interpreter,
        needed: values(DT_NEEDED.0)?,
        runpath: runpath
            .iter()
            .flat_map(|list| list.split(':'))
            .filter(|dir| !dir.is_empty())
            .map(str::to_string)
            .collect(),
    })
}

/// The dynamic string table: `DT_STRTAB` is a virtual address, mapped to file bytes through the
/// `PT_LOAD` segment containing it, as the loader has it mapped.
fn dynamic_strings<'data, P: ProgramHeader<Endian = Endianness>>(
    endian: Endianness,
    data: &'data [u8],
    segments: &[P],
    entries: &[(i64, u64)],
) -> Result<&'data [u8], ElfError> {
    let value = |tag: i64| entries.iter().find(|&&(t, _)| t == tag).map(|&(_, v)| v);
    let (Some(address), Some(size)) = (value(DT_STRTAB.0), value(DT_STRSZ.0)) else {
        return match entries.iter().any(|&(t, _)| is_string_tag(t)) {
            true => Err(malformed(
                "DT_NEEDED or DT_RUNPATH without DT_STRTAB and DT_STRSZ",
            )),
            false => Ok(&[]),
        };
    };
    for segment in segments.iter().filter(|s| s.p_type(endian) == PT_LOAD) {
        let range = segment.data_range(endian, data, address, size);
        if let Some(bytes) = range.map_err(|()| malformed("a PT_LOAD segment is cut short"))? {
            return Ok(bytes);
        }
    }
    Err(malformed(format!(
        "DT_STRTAB {address:#x} (+{size:#x}) is not inside any PT_LOAD segment"
    )))
}

fn is_string_tag(tag: i64) -> bool {
    [DT_NEEDED.0, DT_RPATH.0, DT_RUNPATH.0].contains(&tag)
}

fn string_at(table: &[u8], offset: u64) -> Result<String, ElfError> {
    let tail = usize::try_from(offset)
        .ok()
        .and_then(|at| table.get(at..))
        .ok_or_else(|| malformed(format!("string offset {offset:#x} is past DT_STRSZ")))?;
    let end = tail
        .iter()
        .position(|&b| b == 0)
        .ok_or_else(|| malformed("a dynamic string runs past DT_STRSZ"))?;
    text(&tail[..end], "a dynamic string")
}

fn text(bytes: &[u8], what: &str) -> Result<String, ElfError> {
    String::from_utf8(bytes.to_vec()).map_err(|_| malformed(format!("{what} is not UTF-8")))
}

fn malformed(why: impl std::fmt::Display) -> ElfError {
    ElfError::Malformed(why.to_string())
}

#[cfg(test)]
pub(super) mod tests {
    use object::elf::{DynamicTag, PT_DYNAMIC, PT_INTERP};

    use super::*;

    fn host_ls() -> Vec<u8> {
        fs_err::read("/usr/bin/ls").expect("/usr/bin/ls on the test host")
    }

    #[test]
    #[cfg(target_arch = "x86_64")]
    fn ls_needs_libc_and_the_x86_64_loader() {
        let info = read_info(&host_ls()).unwrap();
        assert!(info.class64);
        assert_eq!(info.machine, object::elf::EM_X86_64.0);
        assert_eq!(
            info.interpreter.as_deref(),
            Some("/lib64/ld-linux-x86-64.so.2")
        );
        assert!(info.needed.iter().any(|n| n == "libc.so.6"), "{info:?}");
        assert!(info.runpath.is_empty(), "{info:?}");
    }

    #[test]
    fn static_binaries_need_nothing() {
        // ldconfig is static-pie in glibc's Debian packaging (it has a PT_DYNAMIC, no DT_NEEDED);
        // busybox-static is classic static.
        let candidates = ["/usr/sbin/ldconfig", "/sbin/ldconfig", "/bin/busybox"];
        let mut read_any = false;
        for path in candidates {
            let Ok(bytes) = fs_err::read(path) else {
                continue;
            };
            let info = read_info(&bytes).unwrap();
            if info.interpreter.is_some() {
                println!("{path} is dynamically linked here; not a static case");
                continue;
            }
            assert!(info.needed.is_empty(), "{path}: {info:?}");
            read_any = true;
        }
        let how = "a Debian host: glibc's ldconfig is static";
        crate::testing::have("a static binary", read_any, how);
    }

    #[test]
    fn garbage_is_not_elf() {
        assert!(matches!(read_info(b""), Err(ElfError::NotElf)));
        assert!(matches!(read_info(b"#!/bin/sh\n"), Err(ElfError::NotElf)));
        assert!(matches!(
            read_info(b"\x7fELF\x03garbage"),
            Err(ElfError::Malformed(_))
        ));
        let mut ident_only = b"\x7fELF\x02\x01\x01".to_vec();
        ident_only.resize(40, 0xff);
        assert!(matches!(
            read_info(&ident_only),
            Err(ElfError::Malformed(_))
        ));
    }

    #[test]
    fn a_cut_short_file_fails_or_reads_the_same() {
        let bytes = host_ls();
        let whole = read_info(&bytes).unwrap();
        for len in (0..bytes.len()).step_by(97) {
            if let Ok(info) = read_info(&bytes[..len]) {
                assert_eq!(info, whole, "cut at {len}");
            }
        }
        assert!(read_info(&bytes[..63]).is_err());
    }

    #[test]
    fn runpath_wins_over_rpath_and_is_split_at_colons() {
        let both = tiny_elf(
            None,
            &[(DT_RPATH, "/old"), (DT_RUNPATH, "$ORIGIN/../lib:/opt/x")],
        );
        let info = read_info(&both).unwrap();
        assert_eq!(info.runpath, ["$ORIGIN/../lib", "/opt/x"]);
        let rpath = read_info(&tiny_elf(None, &[(DT_RPATH, "/old::/older")])).unwrap();
        assert_eq!(rpath.runpath, ["/old", "/older"]);
    }

    #[test]
    fn a_hand_built_file_reads_back() {
        let bytes = tiny_elf(
            Some("/lib/ld.so"),
            &[(DT_NEEDED, "liba.so.1"), (DT_NEEDED, "b")],
        );
        let want = ElfInfo {
            class64: true,
            machine: object::elf::EM_X86_64.0,
            interpreter: Some("/lib/ld.so".to_string()),
            needed: vec!["liba.so.1".to_string(), "b".to_string()],
            runpath: Vec::new(),
        };
        assert_eq!(read_info(&bytes).unwrap(), want);
    }

    #[test]
    fn corrupt_program_headers_are_errors() {
        let mut bytes = host_ls();
        // e_phoff (ELF64 header offset 32) pointed past the end of the file.
        bytes[32..40].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(matches!(read_info(&bytes), Err(ElfError::Malformed(_))));
    }

    /// A minimal x86_64 ELF file: one `PT_LOAD` mapping all of it, `PT_INTERP` when asked, and a
    /// `PT_DYNAMIC` with the given string-valued entries plus `DT_STRTAB`, `DT_STRSZ`, `DT_NULL`.
    pub(super) fn tiny_elf(interpreter: Option<&str>, dynamic: &[(DynamicTag, &str)]) -> Vec<u8> {
        let mut strings = vec![0u8];
        let mut entries = Vec::new();
        for (tag, value) in dynamic {
            entries.push((tag.0, strings.len() as u64));
            strings.extend(value.bytes().chain([0]));
        }
        let interp: Vec<u8> = interpreter.map_or(Vec::new(), |i| i.bytes().chain([0]).collect());
        let phnum = if interpreter.is_some() { 3 } else { 2 };
        let strtab = 64 + 56 * phnum as u64;
        let interp_at = strtab + strings.len() as u64;
        let dynamic_at = (interp_at + interp.len() as u64).next_multiple_of(8);
        entries.extend([
            (DT_STRTAB.0, strtab),
            (DT_STRSZ.0, strings.len() as u64),
            (DT_NULL.0, 0),
        ]);
        let end = dynamic_at + 16 * entries.len() as u64;

        let mut out = b"\x7fELF\x02\x01\x01".to_vec();
        out.resize(16, 0);
        for half in [3u16, object::elf::EM_X86_64.0] {
            out.extend(half.to_le_bytes()); // e_type ET_DYN, e_machine
        }
        out.extend(1u32.to_le_bytes()); // e_version
        for word in [0u64, 64, 0] {
            out.extend(word.to_le_bytes()); // e_entry, e_phoff, e_shoff
        }
        out.extend(0u32.to_le_bytes()); // e_flags
        for half in [64u16, 56, phnum, 64, 0, 0] {
            out.extend(half.to_le_bytes()); // ehsize, phentsize, phnum, shentsize, shnum, shstrndx
        }
        let mut segment = |p_type: u32, offset: u64, size: u64| {
            out.extend(p_type.to_le_bytes());
            out.extend(4u32.to_le_bytes()); // PF_R
            for word in [offset, offset, offset, size, size, 8] {
                out.extend(word.to_le_bytes()); // offset, vaddr, paddr, filesz, memsz, align
            }
        };
        segment(PT_LOAD.0, 0, end);
        segment(PT_DYNAMIC.0, dynamic_at, end - dynamic_at);
        if interpreter.is_some() {
            segment(PT_INTERP.0, interp_at, interp.len() as u64);
        }
        out.extend(strings);
        out.extend(interp);
        out.resize(dynamic_at as usize, 0);
        for (tag, value) in entries {
            out.extend(tag.to_le_bytes());
            out.extend(value.to_le_bytes());
        }
        out
    }
}
