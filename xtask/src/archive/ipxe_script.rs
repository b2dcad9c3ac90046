//! One compile, many scripts: how a per-host iPXE file is derived from a
//! build whose embedded script is a fixed-size placeholder.
//!
//! iPXE embeds the script with `.incbin` and records only its length and
//! basename, so two builds whose scripts have the same length and name differ
//! only in the script's bytes -- once the build id no longer checksums the
//! script (see `BuildIpxe::build_id_cmd`). Every script is therefore padded
//! to `[ipxe] script_size` with newlines (empty lines, which the script
//! parser skips), and the build embeds [`placeholder`] instead:
//!
//! - uncompressed EFI images (`.efi`, `.efidrv`): the placeholder is replaced
//!   in the file itself, and a PE checksum, if the image carries one, is
//!   recomputed;
//! - everything made from a `.zbin` (`.lkrn`, `.kpxe`, `.rom`, `.mrom`, …):
//!   the placeholder is replaced in the kept `.bin`, which iPXE's own
//!   `util/zbin` (built from the same tree) compresses again with the build's
//!   `.zinfo`; then the padding and ROM checksums `make` applies follow;
//! - EFI option ROMs (`.efirom`): the placeholder is replaced in the kept
//!   `.efidrv`, which iPXE's own `util/efirom` (built from the same tree)
//!   compresses into a ROM again, as make's `%.efirom` rule does.

/// The key-bearing version (`super::Format`) of the placeholder script and how
/// a host's script is padded into it: bump it when the bytes change.
pub const FORMAT: super::Format = super::Format {
    name: "ipxe-script",
    version: 1,
};
/// The script size when the recipe gives none.
pub const DEFAULT_SCRIPT_SIZE: usize = 2048;
/// iPXE's own limit is memory; past this a ROM gets noticeably larger.
pub const MAX_SCRIPT_SIZE: usize = 65536;
/// Room for [`placeholder`]'s first line.
pub const MIN_SCRIPT_SIZE: usize = 64;

/// How `make` turns a target's intermediate into the final file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Finish {
    /// A PE image linked directly: the script is patched in the file.
    Efi,
    /// `.zbin` output, then `padimg.pl` to `block` bytes with `fill`
    /// (when `pad` is set) and `fixrom.pl` (when `rom`).
    Zbin { pad: Option<(usize, u8)>, rom: bool },
    /// `util/efirom -c` over the target's `.efidrv`.
    EfiRom,
}

/// The finish for a target file by its format (see iPXE's
/// `arch/x86/Makefile.pcbios` PAD_*/FINALISE_* rules, `Makefile.efi`);
/// `None` for formats made by other tools (`.iso`, `.usb`), which are built
/// with a full `make` instead of patched.
pub fn finish_of(file: &str) -> Option<Finish> {
    let ext = file.rsplit_once('.').map(|(_, e)| e)?;
    let zbin = |pad, rom| Some(Finish::Zbin { pad, rom });
    match ext {
        "efi" | "efidrv" => Some(Finish::Efi),
        "efirom" => Some(Finish::EfiRom),
        "kpxe" | "kkpxe" | "kkkpxe" | "lkrn" | "pxe" | "raw" => zbin(None, false),
        "rom" | "mrom" => zbin(Some((512, 0xff)), true),
        "dsk" => zbin(Some((512, 0)), false),
        "hd" => zbin(Some((32768, 0)), false),
        _ => None,
    }
}

/// A finished legacy option ROM (`.rom`, `.mrom`): what `fixrom.pl`
/// finishes, and what carries a `rom_version`.
pub fn is_legacy_rom(file: &str) -> bool {
    matches!(finish_of(file), Some(Finish::Zbin { rom: true, .. }))
}

/// The placeholder build's embedded script: `size` bytes, valid iPXE
/// syntax, and nothing a real script would contain (so it is found once).
pub fn placeholder(size: usize) -> Vec<u8> {
    let head = format!("#!ipxe\n# kiln stage1 placeholder, {size} bytes\n#");
    let mut bytes = head.into_bytes();
    bytes.resize(size.saturating_sub(1), b'~');
    bytes.push(b'\n');
    bytes
}

/// `script` padded to `size` bytes with newlines; `Err(len)` when it does
/// not fit.
pub fn padded(script: &str, size: usize) -> Result<String, usize> {
    if script.len() > size {
        return Err(script.len());
    }
    let mut s = script.to_string();
    s.extend(std::iter::repeat_n('\n', size - script.len()));
    Ok(s)
}

/// The one offset where `needle` occurs in `haystack`; `Err(count)` when it
/// occurs zero or several times.
pub fn find_once(haystack: &[u8], needle: &[u8]) -> Result<usize, usize> {
    let mut found = Vec::new();
    let mut from = 0;
    while let Some(i) = find(&haystack[from..], needle) {
        found.push(from + i);
        from += i + 1;
        if found.len() > 1 {
            break;
        }
    }
    match found[..] {
        [one] => Ok(one),
        _ => Err(found.len()),
    }
}

/// The first offset where `needle` occurs in `haystack`.
pub fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    let (&first, _) = needle.split_first()?;
    let mut start = 0;
    while let Some(i) = haystack[start..].iter().position(|&b| b == first) {
        let at = start + i;
        if haystack.len() - at < needle.len() {
            return None;
        }
        if &haystack[at..at + needle.len()] == needle {
            return Some(at);
        }
        start = at + 1;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placeholder_has_the_size_and_is_a_script() {
        let p = placeholder(512);
        assert_eq!(p.len(), 512);
        assert!(p.starts_with(b"#!ipxe\n"));
        assert!(p.ends_with(b"~\n"));
    }

    #[test]
    fn scripts_are_padded_with_newlines_or_refused() {
        assert_eq!(
            padded("#!ipxe\nexit\n", 16).unwrap(),
            "#!ipxe\nexit\n\n\n\n\n"
        );
        assert_eq!(padded(&"x".repeat(17), 16), Err(17));
    }

    #[test]
    fn find_once_counts() {
        let p = placeholder(64);
        let mut hay = vec![0u8; 100];
        hay.extend(&p);
        hay.extend([1u8; 7]);
        assert_eq!(find_once(&hay, &p), Ok(100));
        assert_eq!(find_once(&hay[..150], &p), Err(0));
        hay.extend(&p);
        assert_eq!(find_once(&hay, &p), Err(2));
    }

    #[test]
    fn formats_finish_as_make_does() {
        assert_eq!(finish_of("ipxe.efi"), Some(Finish::Efi));
        assert_eq!(
            finish_of("15b31003.mrom"),
            Some(Finish::Zbin {
                pad: Some((512, 0xff)),
                rom: true
            })
        );
        assert_eq!(
            finish_of("undionly.kpxe"),
            Some(Finish::Zbin {
                pad: None,
                rom: false
            })
        );
        assert_eq!(finish_of("ipxe.iso"), None);
    }
}
