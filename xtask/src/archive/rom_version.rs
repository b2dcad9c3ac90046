//! A NIC ROM's version, where flashing tools read it: Mellanox's version
//! block and the PCI revision level.
//!
//! - **Mellanox** (`mstflint -i <rom> qrom`, mstflint's `GetExpRomVersion`):
//!   the tool scans the whole file, byte by byte, for the ASCII magic
//!   `mlxsign:` and reads three little-endian dwords after it: the product
//!   (`0x10` = PXE) in the high half of the first and the major version in
//!   its low byte; the minor version in bits 16..24 of the second and the
//!   subminor in its low half; the PCI device id in the high half of the
//!   third, with the protocol byte `0xff` ("not printed") in its low byte.
//!   mstflint prints `Rom Info: type=PXE version=<major>.<minor>.<sub>`. So a
//!   version is three numbers: major and minor up to 255, subminor up to
//!   65535 ([`RomVersion::parse`] refuses anything else).
//!   Upstream iPXE has no such block. Kiln appends an empty one (the magic
//!   and zeros, [`BLOCK_SOURCE`]) to the scratch tree's `romprefix.S`, as
//!   M-Lab's ePoxy patch does, so it lands in the uncompressed ROM prefix;
//!   [`stamp`] fills it in after the build. The version is therefore not part
//!   of the compile: one build serves every version and every host.
//! - **PCI revision level** (offset 0x12 of each image's PCI data
//!   structure; iPXE writes 1): 16 bits, which hold the same version packed
//!   as major (3 bits), minor (3 bits) and subminor (10 bits), so that a
//!   later version is a larger number and the updater on a flashrom card
//!   compares the same dotted versions ([`RomVersion::from_revision`]).
//!   A version that does not fit is refused when the recipe is loaded.

use std::fmt;

use super::optrom;

/// The key-bearing version (`super::Format`) of the version block and the
/// revision packing: bump it when the bytes change.
pub const FORMAT: super::Format = super::Format {
    name: "rom-version",
    version: 1,
};

/// The magic mstflint looks for.
pub const MAGIC: &[u8; 8] = b"mlxsign:";
/// mstflint's product id for a legacy (PXE) ROM.
const PRODUCT_PXE: u32 = 0x10;
/// The protocol byte mstflint does not print.
const PROTOCOL_UNSET: u32 = 0xff;
/// The three dwords after the magic.
const FIELDS_LEN: usize = 12;
/// Offset of the revision level in a PCI data structure.
const PCI_REVISION: usize = 0x12;

/// What Kiln appends to iPXE's `src/arch/x86/prefix/romprefix.S`: an empty
/// version block in the uncompressed prefix (`.prefix` is the section in
/// force at the end of that file; it is named again so the block stays there
/// whatever upstream does).
pub const BLOCK_SOURCE: &str = "
/* Kiln: the Mellanox version block (mstflint finds \"mlxsign:\"), filled in
 * after the build with the recipe's rom_version and the ROM's device id. */
\t.section \".prefix\", \"ax\", @progbits
\t.balign\t16
kiln_mlx_version:
\t.ascii\t\"mlxsign:\"
\t.long\t0, 0, 0
";

/// `major.minor.subminor`, each within Mellanox's fields and the PCI
/// revision level's packing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct RomVersion {
    pub major: u8,
    pub minor: u8,
    pub sub: u16,
}

/// Bits of the PCI revision level per field (major, minor, subminor).
const REVISION_BITS: (u32, u32, u32) = (3, 3, 10);

impl RomVersion {
    /// `"3.4.800"`; the error says which field does not fit where.
    pub fn parse(text: &str) -> Result<RomVersion, String> {
        let parts: Vec<&str> = text.split('.').collect();
        let [major, minor, sub] = parts[..] else {
            return Err(format!(
                "`{text}` is not a ROM version: three dotted numbers, e.g. \"3.4.800\""
            ));
        };
        let field = |name: &str, value: &str, max: u32| -> Result<u32, String> {
            let n: u32 = value
                .parse()
                .ok()
                .filter(|_| value.bytes().all(|b| b.is_ascii_digit()))
                .ok_or_else(|| {
                    format!("the {name} version `{value}` of `{text}` is not a number")
                })?;
            if n > max {
                return Err(format!(
                    "the {name} version {n} of `{text}` does not fit: the PCI revision level \
                     holds {name} versions up to {max}"
                ));
            }
            Ok(n)
        };
        let (mb, nb, sb) = REVISION_BITS;
        Ok(RomVersion {
            major: field("major", major, (1 << mb) - 1)? as u8,
            minor: field("minor", minor, (1 << nb) - 1)? as u8,
            sub: field("subminor", sub, (1 << sb) - 1)? as u16,
        })
    }

    /// The PCI revision level this version is written as.
    pub fn revision(self) -> u16 {
        let (_, nb, sb) = REVISION_BITS;
        (u16::from(self.major) << (nb + sb)) | (u16::from(self.minor) << sb) | self.sub
    }

    /// The version a PCI revision level holds, by the same packing (iPXE's
    /// own 1 reads as 0.0.1).
    pub fn from_revision(revision: u16) -> RomVersion {
        let (_, nb, sb) = REVISION_BITS;
        RomVersion {
            major: (revision >> (nb + sb)) as u8,
            minor: ((revision >> sb) & ((1 << nb) - 1)) as u8,
            sub: revision & ((1 << sb) - 1),
        }
    }
}

impl fmt::Display for RomVersion {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}.{}", self.major, self.minor, self.sub)
    }
}

/// Why a ROM could not be stamped.
#[derive(Debug, thiserror::Error)]
pub enum StampError {
    #[error(
        "it has no Mellanox version block (\"mlxsign:\"): it was not built with `rom_version` \
         (Kiln adds the block to romprefix.S only then)"
    )]
    NoBlock,
    #[error("\"mlxsign:\" occurs {0} times in it; Kiln's block must be the only one")]
    SeveralBlocks(usize),
    #[error("the PCI data structure at {at:#x} is {length} bytes, too short for a revision level")]
    ShortPci { at: usize, length: usize },
    #[error(transparent)]
    Header(#[from] optrom::Problem),
    #[error(transparent)]
    Chain(#[from] optrom::RomError),
}

/// Writes `version` into a finished ROM: its version block (with the
/// device id of its first image's PCI header) and the revision level of
/// every image's PCI header, then fixes the checksums as make does. On an
/// error `rom` is unchanged.
pub fn stamp(rom: &mut [u8], version: RomVersion) -> Result<(), StampError> {
    let mut out = rom.to_vec();
    let at = match super::ipxe_script::find_once(&out, MAGIC) {
        Ok(at) if at + MAGIC.len() + FIELDS_LEN <= out.len() => at + MAGIC.len(),
        Ok(_) | Err(0) => return Err(StampError::NoBlock),
        Err(n) => return Err(StampError::SeveralBlocks(n)),
    };
    let device = optrom::pci_identity(&out)?.devices[0];
    let dwords = [
        (PRODUCT_PXE << 16) | u32::from(version.major),
        (u32::from(version.minor) << 16) | u32::from(version.sub),
        (u32::from(device) << 16) | PROTOCOL_UNSET,
    ];
    for (i, d) in dwords.iter().enumerate() {
        out[at + 4 * i..at + 4 * i + 4].copy_from_slice(&d.to_le_bytes());
    }
    for pci in optrom::pci_headers(&out)? {
        if pci.len() < PCI_REVISION + 2 {
            let (at, length) = (pci.start, pci.len());
            return Err(StampError::ShortPci { at, length });
        }
        let field = pci.start + PCI_REVISION;
        out[field..field + 2].copy_from_slice(&version.revision().to_le_bytes());
    }
    optrom::fix_checksums(&mut out)?;
    rom.copy_from_slice(&out);
    Ok(())
}

/// The versions a ROM's Mellanox blocks hold (mstflint reads up to five),
/// as mstflint reads them: `None` for a block whose product is not PXE.
pub fn mellanox_versions(rom: &[u8]) -> Vec<Option<RomVersion>> {
    let mut found = Vec::new();
    let mut from = 0;
    while found.len() < 5 {
        let Some(i) = super::ipxe_script::find(&rom[from..], MAGIC) else {
            break;
        };
        let at = from + i + MAGIC.len();
        let Some(fields) = rom.get(at..at + 8) else {
            break;
        };
        let dword = |o: usize| u32::from_le_bytes(fields[o..o + 4].try_into().expect("4 bytes"));
        let (first, second) = (dword(0), dword(4));
        found.push((first >> 16 == PRODUCT_PXE).then_some(RomVersion {
            major: (first & 0xff) as u8,
            minor: ((second >> 16) & 0xff) as u8,
            sub: (second & 0xffff) as u16,
        }));
        // mstflint resumes 12 bytes past the magic's start.
        from = from + i + 12;
    }
    found
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_parse_pack_and_read_back() {
        let v = RomVersion::parse("3.4.800").unwrap();
        assert_eq!((v.major, v.minor, v.sub), (3, 4, 800));
        assert_eq!(v.to_string(), "3.4.800");
        assert_eq!(v.revision(), (3 << 13) | (4 << 10) | 800);
        assert_eq!(RomVersion::from_revision(v.revision()), v);
        assert_eq!(RomVersion::from_revision(1).to_string(), "0.0.1");
        // Packing keeps the order of versions.
        let order = ["0.0.1", "1.0.0", "3.4.799", "3.4.800", "3.5.0", "7.7.1023"];
        let revisions: Vec<u16> = order
            .iter()
            .map(|t| RomVersion::parse(t).unwrap().revision())
            .collect();
        assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{revisions:?}");
    }

    #[test]
    fn versions_that_do_not_fit_say_which_field() {
        for (text, says) in [
            ("3.4", "three dotted numbers"),
            ("3.4.800.1", "three dotted numbers"),
            ("3.x.800", "minor version `x`"),
            ("3.4.+8", "subminor version `+8`"),
            ("8.0.0", "major version 8 of `8.0.0` does not fit"),
            ("3.8.0", "minor version 8"),
            ("3.4.1024", "subminor version 1024"),
            ("3.4.99999999999", "subminor version `99999999999`"),
        ] {
            let err = RomVersion::parse(text).unwrap_err();
            assert!(err.contains(says), "{text}: {err}");
        }
    }

    /// A one-image ROM with a PCI header for 15b3:1003 and an empty block.
    fn rom_with_block() -> Vec<u8> {
        let mut rom = vec![0u8; 1024];
        rom[..3].copy_from_slice(&[0x55, 0xaa, 2]);
        rom[0x18..0x1a].copy_from_slice(&0x40u16.to_le_bytes());
        rom[0x40..0x44].copy_from_slice(b"PCIR");
        rom[0x44..0x46].copy_from_slice(&0x15b3u16.to_le_bytes());
        rom[0x46..0x48].copy_from_slice(&0x1003u16.to_le_bytes());
        rom[0x4a..0x4c].copy_from_slice(&0x18u16.to_le_bytes());
        rom[0x50..0x52].copy_from_slice(&2u16.to_le_bytes());
        rom[0x52..0x54].copy_from_slice(&1u16.to_le_bytes());
        rom[0x55] = 0x80;
        rom[0x100..0x108].copy_from_slice(MAGIC);
        rom
    }

    #[test]
    fn stamping_writes_what_mstflint_reads() {
        let mut rom = rom_with_block();
        let v = RomVersion::parse("3.4.800").unwrap();
        stamp(&mut rom, v).unwrap();
        // The bytes ePoxy's romprefix.S patch assembles for 3.4.800 on a ConnectX-3.
        assert_eq!(
            rom[0x100..0x114],
            [
                0x6d, 0x6c, 0x78, 0x73, 0x69, 0x67, 0x6e, 0x3a, 0x03, 0x00, 0x10, 0x00, 0x20, 0x03,
                0x04, 0x00, 0xff, 0x00, 0x03, 0x10
            ]
        );
        assert_eq!(mellanox_versions(&rom), vec![Some(v)]);
        assert_eq!(optrom::pci_identity(&rom).unwrap().revision, v.revision());
        assert_eq!(rom.iter().fold(0u8, |s, b| s.wrapping_add(*b)), 0);
        // Stamping again with another version changes only the fields.
        let before = rom.clone();
        stamp(&mut rom, RomVersion::parse("3.4.801").unwrap()).unwrap();
        let changed: Vec<usize> = (0..rom.len()).filter(|&i| rom[i] != before[i]).collect();
        assert_eq!(
            changed,
            vec![0x06, 0x52, 0x10c],
            "checksum, revision, subminor"
        );
    }

    #[test]
    fn a_rom_without_one_block_is_refused_unchanged() {
        let v = RomVersion::parse("1.0.0").unwrap();
        let mut none = rom_with_block();
        none[0x100..0x108].fill(0);
        let before = none.clone();
        assert!(matches!(stamp(&mut none, v), Err(StampError::NoBlock)));
        assert_eq!(none, before);
        let mut two = rom_with_block();
        two[0x200..0x208].copy_from_slice(MAGIC);
        let before = two.clone();
        assert!(matches!(
            stamp(&mut two, v),
            Err(StampError::SeveralBlocks(2))
        ));
        assert_eq!(two, before);
    }
}
