//! A module's `.modinfo`: the NUL-separated `key=value` strings the kernel's
//! `MODULE_*` macros place in the ELF section of that name. Modules ship as
//! `.ko`, `.ko.xz`, `.ko.zst` or `.ko.gz`; the ELF is read after
//! decompressing in memory.

use fs_err as fs;
use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};

/// The `key=value` entries of one module, in section order.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ModInfo {
    pub entries: Vec<(String, String)>,
}

impl ModInfo {
    /// Every value of `key`, in order (`firmware`, `softdep` and `alias` repeat).
    pub fn values<'a>(&'a self, key: &'a str) -> impl Iterator<Item = &'a str> + 'a {
        self.entries
            .iter()
            .filter(move |(k, _)| k == key)
            .map(|(_, v)| v.as_str())
    }

    /// Parses the raw section: `key=value` strings separated (and padded) by NULs.
    pub fn parse(section: &[u8]) -> ModInfo {
        let entries = section
            .split(|&b| b == 0)
            .filter(|s| !s.is_empty())
            .filter_map(|s| {
                let s = String::from_utf8_lossy(s);
                let (k, v) = s.split_once('=')?;
                Some((k.to_owned(), v.to_owned()))
            })
            .collect();
        ModInfo { entries }
    }
}

/// Reads `.modinfo` from a module file, compressed or not.
pub fn read_modinfo(path: &Path) -> Result<ModInfo> {
    let elf = read_module(path)?;
    let section = elf_section(&elf, ".modinfo")
        .with_context(|| format!("reading the ELF sections of {}", path.display()))?
        .with_context(|| format!("{} has no .modinfo section", path.display()))?;
    Ok(ModInfo::parse(section))
}

/// The module's ELF bytes, decompressed according to its file name.
pub fn read_module(path: &Path) -> Result<Vec<u8>> {
    let raw = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    let name = path.to_string_lossy();
    let mut out = Vec::new();
    let result = if name.ends_with(".ko") {
        return Ok(raw);
    } else if name.ends_with(".ko.xz") {
        xz2::read::XzDecoder::new(&raw[..]).read_to_end(&mut out)
    } else if name.ends_with(".ko.zst") {
        zstd::stream::read::Decoder::new(&raw[..]).and_then(|mut d| d.read_to_end(&mut out))
    } else if name.ends_with(".ko.gz") {
        flate2::read::GzDecoder::new(&raw[..]).read_to_end(&mut out)
    } else {
        bail!(
            "{}: not a kernel module (expected .ko, .ko.xz, .ko.zst or .ko.gz)",
            path.display()
        );
    };
    result.with_context(|| format!("decompressing {}", path.display()))?;
    Ok(out)
}

/// The contents of the section called `name`, or `None` if there is none.
/// Only 64-bit little-endian ELF is understood (every architecture Kiln
/// builds for); anything else is a clear error rather than a guess.
pub fn elf_section<'a>(elf: &'a [u8], name: &str) -> Result<Option<&'a [u8]>> {
    if elf.get(..4) != Some(b"\x7fELF") {
        bail!("not an ELF file");
    }
    if elf.get(4) != Some(&2) || elf.get(5) != Some(&1) {
        bail!("only 64-bit little-endian ELF is supported");
    }
    // ELF64 header: e_shoff at 0x28, e_shentsize/e_shnum/e_shstrndx at 0x3a..0x40.
    let shoff = u64_at(elf, 0x28)? as usize;
    let shentsize = u16_at(elf, 0x3a)? as usize;
    let shnum = u16_at(elf, 0x3c)? as usize;
    let shstrndx = u16_at(elf, 0x3e)? as usize;
    if shentsize < 64 {
        bail!("section header size {shentsize} is too small for ELF64");
    }
    let header = |i: usize| -> Result<SectionHeader> {
        let base = shoff + i * shentsize;
        Ok(SectionHeader {
            name: u32_at(elf, base)? as usize,
            offset: u64_at(elf, base + 24)? as usize,
            size: u64_at(elf, base + 32)? as usize,
        })
    };
    let strtab = header(shstrndx)?;
    let strings = slice(elf, strtab.offset, strtab.size)?;
    for i in 0..shnum {
        let sh = header(i)?;
        let rest = strings
            .get(sh.name..)
            .context("section name out of range")?;
        let end = rest.iter().position(|&b| b == 0).unwrap_or(rest.len());
        if &rest[..end] == name.as_bytes() {
            return Ok(Some(slice(elf, sh.offset, sh.size)?));
        }
    }
    Ok(None)
}

struct SectionHeader {
    name: usize,
    offset: usize,
    size: usize,
}

fn slice(b: &[u8], off: usize, len: usize) -> Result<&[u8]> {
    off.checked_add(len)
        .and_then(|end| b.get(off..end))
        .context("ELF offset out of range (truncated file?)")
}

fn u16_at(b: &[u8], off: usize) -> Result<u16> {
    Ok(u16::from_le_bytes(slice(b, off, 2)?.try_into()?))
}

fn u32_at(b: &[u8], off: usize) -> Result<u32> {
    Ok(u32::from_le_bytes(slice(b, off, 4)?.try_into()?))
}

fn u64_at(b: &[u8], off: usize) -> Result<u64> {
    Ok(u64::from_le_bytes(slice(b, off, 8)?.try_into()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal ELF64 LE with sections: null, .shstrtab, .modinfo.
    fn tiny_elf(modinfo: &[u8]) -> Vec<u8> {
        let shstr = b"\0.shstrtab\0.modinfo\0";
        let mut elf = vec![0u8; 64];
        elf[..6].copy_from_slice(b"\x7fELF\x02\x01");
        let shstr_off = elf.len();
        elf.extend_from_slice(shstr);
        let mi_off = elf.len();
        elf.extend_from_slice(modinfo);
        let shoff = elf.len();
        elf[0x28..0x30].copy_from_slice(&(shoff as u64).to_le_bytes());
        elf[0x3a..0x3c].copy_from_slice(&64u16.to_le_bytes());
        elf[0x3c..0x3e].copy_from_slice(&3u16.to_le_bytes());
        elf[0x3e..0x40].copy_from_slice(&1u16.to_le_bytes());
        for (name, off, size) in [
            (0u32, 0usize, 0usize),
            (1, shstr_off, shstr.len()),
            (11, mi_off, modinfo.len()),
        ] {
            let mut sh = [0u8; 64];
            sh[..4].copy_from_slice(&name.to_le_bytes());
            sh[24..32].copy_from_slice(&(off as u64).to_le_bytes());
            sh[32..40].copy_from_slice(&(size as u64).to_le_bytes());
            elf.extend_from_slice(&sh);
        }
        elf
    }

    #[test]
    fn modinfo_section_is_found_and_split_into_key_values() {
        let elf = tiny_elf(b"license=GPL\0\0firmware=a.bin\0firmware=b.bin\0softdep=pre: crc32c\0");
        let info = ModInfo::parse(elf_section(&elf, ".modinfo").unwrap().unwrap());
        assert_eq!(
            info.values("firmware").collect::<Vec<_>>(),
            ["a.bin", "b.bin"]
        );
        assert_eq!(info.values("softdep").collect::<Vec<_>>(), ["pre: crc32c"]);
    }

    #[test]
    fn thirty_two_bit_elf_is_rejected_with_a_clear_error() {
        let mut elf = tiny_elf(b"");
        elf[4] = 1;
        let err = elf_section(&elf, ".modinfo").unwrap_err().to_string();
        assert!(err.contains("64-bit little-endian"), "{err}");
    }

    #[test]
    fn truncated_elf_is_an_error_not_a_panic() {
        let elf = tiny_elf(b"x=y\0");
        assert!(elf_section(&elf[..100], ".modinfo").is_err());
    }
}
