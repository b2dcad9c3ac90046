//! Option ROMs, finished as iPXE's make finishes them: padding (`util/padimg.pl`) and checksums
//! (`util/fixrom.pl` over `util/Option/ROM.pm`).
//!
//! make turns `bin/X.rom.zbin` into `bin/X.rom` by copying it, padding it to 512 bytes with 0xff
//! (`PAD_rom` in `arch/x86/Makefile.pcbios`) and fixing its checksums (`FINALISE_rom`); `.mrom`
//! is finished the same way. [`pad`] and [`fix_checksums`] are those two steps, so a ROM that
//! Kiln patches can be finished to the bytes make would have written.
//!
//! fixrom.pl walks the chain of images (each ends where its PCI header's image length says,
//! unless that header marks it the last) and, in each PC-AT image (no PCI header, or PCI code
//! type 0), makes the $PnP, UNDI and iPXE headers and then the whole image sum to zero. The
//! conditions under which ROM.pm sees a header (signature, fixed part and stated length inside
//! the image, fields past a header's stated length read as zero) are mirrored here, with one
//! deliberate difference: where ROM.pm quietly treats a header as absent because its pointer
//! or its length leaves the image, this module refuses the ROM. Only a corrupt ROM has such a
//! header, and finishing it would ship a stale checksum; ROM.pm itself dies on the other
//! corruptions (a header too short for its checksum, an image chain that runs off the end).

use std::ops::Range;

/// The key-bearing version (`super::Format`) of ROM padding and checksums: bump
/// it when the bytes change.
pub const FORMAT: super::Format = super::Format {
    name: "optrom",
    version: 1,
};

const SIGNATURE: [u8; 2] = [0x55, 0xaa];
/// ROM.pm reads the ROM header fields up to the $PnP pointer at 0x1a.
const HEADER_LEN: usize = 0x1c;
/// The ROM header's length byte counts 512-byte blocks, as does the PCI image length.
const BLOCK: usize = 512;
const LENGTH: usize = 0x02;
const CHECKSUM: usize = 0x06;
const PCI_POINTER: usize = 0x18;
/// ROM.pm `Option::ROM::PCI`: the part it reads before trusting the structure length.
const PCI_FIXED_LEN: usize = 0x0c;
const PCI_LAST_IMAGE: u8 = 0x80;

/// A header found through a pointer in the ROM header, with a checksum of its own.
struct SubHeader {
    /// Also its signature.
    name: &'static str,
    /// Where the ROM header holds its offset.
    pointer: usize,
    /// What ROM.pm requires inside the image before it reads the structure length.
    fixed_len: usize,
    length_at: usize,
    /// The structure length counts units of this many bytes.
    length_unit: usize,
    checksum_at: usize,
}

/// ROM.pm `Option::ROM::PnP`, `::UNDI` and `::iPXE`, in fixrom.pl's order; all three come before
/// the image checksum, which covers their checksum bytes.
const SUB_HEADERS: [SubHeader; 3] = [
    SubHeader {
        name: "$PnP",
        pointer: 0x1a,
        fixed_len: 0x06,
        length_at: 0x05,
        length_unit: 16,
        checksum_at: 0x09,
    },
    SubHeader {
        name: "UNDI",
        pointer: 0x16,
        fixed_len: 0x16,
        length_at: 0x04,
        length_unit: 1,
        checksum_at: 0x05,
    },
    SubHeader {
        name: "iPXE",
        pointer: 0x10,
        fixed_len: 0x06,
        length_at: 0x04,
        length_unit: 1,
        checksum_at: 0x05,
    },
];

/// Why a ROM's checksums could not be fixed: the image (counted from 0) and where it starts.
#[derive(Debug, thiserror::Error)]
#[error("option ROM image {image} (at {at:#x}): {problem}")]
pub struct RomError {
    pub image: usize,
    pub at: usize,
    pub problem: Problem,
}

/// What is wrong with one image of a ROM.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Problem {
    #[error("{len} bytes is too short for an option ROM header ({HEADER_LEN:#x} bytes)")]
    TooShort { len: usize },
    #[error("no 55 aa option ROM signature (found {found:02x?})")]
    NoSignature { found: [u8; 2] },
    #[error("the {header} header pointer {pointer:#x} leaves the {len:#x}-byte image")]
    PointerOutside {
        header: &'static str,
        pointer: usize,
        len: usize,
    },
    #[error(
        "the {header} header at {pointer:#x} says it is {length:#x} bytes long, \
         past the end of the {len:#x}-byte image"
    )]
    HeaderPastEnd {
        header: &'static str,
        pointer: usize,
        length: usize,
        len: usize,
    },
    #[error(
        "the {header} header at {pointer:#x} says it is {length} bytes long, \
         too short to hold its checksum"
    )]
    NoChecksumField {
        header: &'static str,
        pointer: usize,
        length: usize,
    },
    #[error(
        "its PCI header does not mark it as the last image, but its image length \
         ({length:#x} bytes) leaves no next image in the {rest:#x} bytes from its start"
    )]
    NoNextImage { length: usize, rest: usize },
    #[error("no PCI data structure (\"PCIR\"): not a PCI option ROM")]
    NoPciHeader,
}

/// padimg.pl: appends `byte` until the length is a multiple of `block`; nothing when it
/// already is one.
///
/// # Panics
/// If `block` is 0 (padimg.pl dies on it too).
pub fn pad(image: &mut Vec<u8>, block: usize, byte: u8) {
    image.resize(image.len().next_multiple_of(block), byte);
}

/// fixrom.pl: in every PC-AT image of the chain, fixes the $PnP, UNDI and iPXE header checksums,
/// then the image checksum at 0x06 over the length byte's 512-byte blocks (or up to the end of
/// the image, if that comes first). Other images (EFI, for one) are left as they are. On an
/// error `rom` is unchanged.
pub fn fix_checksums(rom: &mut [u8]) -> Result<(), RomError> {
    let mut fixed = rom.to_vec();
    for (image, range) in images(rom)?.into_iter().enumerate() {
        let at = range.start;
        fix_image(&mut fixed[range]).map_err(|problem| RomError { image, at, problem })?;
    }
    rom.copy_from_slice(&fixed);
    Ok(())
}

/// ROM.pm `set`: an image whose PCI header (looked for in all the bytes from the image's start)
/// does not mark it the last ends after its image length; the last image takes the rest.
fn images(rom: &[u8]) -> Result<Vec<Range<usize>>, RomError> {
    let mut images = Vec::new();
    let mut start = 0;
    while start < rom.len() || images.is_empty() {
        let rest = &rom[start..];
        let fail = |problem| RomError {
            image: images.len(),
            at: start,
            problem,
        };
        check_rom_header(rest).map_err(fail)?;
        let end = match pci_header(rest).map_err(fail)? {
            Some(pci) if pci.last_image & PCI_LAST_IMAGE == 0 => {
                let length = usize::from(pci.image_length) * BLOCK;
                if length == 0 || length >= rest.len() {
                    let rest = rest.len();
                    return Err(fail(Problem::NoNextImage { length, rest }));
                }
                start + length
            }
            _ => rom.len(),
        };
        images.push(start..end);
        start = end;
    }
    Ok(images)
}

/// Why ROMs could not be chained into one.
#[derive(Debug, thiserror::Error)]
pub enum CombineError {
    #[error("ROM {rom} of the chain: {error}")]
    Rom { rom: usize, error: RomError },
    #[error(
        "ROM {rom} of the chain: its last image (at {at:#x}) has no PCI data structure to mark \
         another image after it"
    )]
    NoPciHeader { rom: usize, at: usize },
    #[error(
        "ROM {rom} of the chain: its last image's PCI image length is {stated:#x} bytes, but \
         {actual:#x} bytes of the file follow its start; the next image would not be found"
    )]
    LengthMismatch {
        rom: usize,
        stated: usize,
        actual: usize,
    },
    #[error("`pad_to` {0} is not a power of two")]
    PadNotPowerOfTwo(usize),
    #[error("the combined ROM is {len} bytes, more than `pad_to` {pad_to}")]
    LongerThanPad { len: usize, pad_to: usize },
    #[error("the combined ROM is {len} bytes, more than the card's `max_size` {max}")]
    TooLarge { len: usize, max: usize },
}

/// catrom.pl: `roms` chained into one option ROM. In every ROM but the last, the last image's
/// PCI header loses its "last image" indicator and, if it is a PC-AT image, its checksum is
/// fixed again; images are otherwise copied as they are. Where catrom.pl would write a chain that
/// does not hold together (an image length that is not where the next ROM starts), this refuses.
/// Then the result is padded with zeros to `pad_to` (a power of two), as distributions pad QEMU's
/// ROMs to a fixed size, and must not exceed `max_size`.
pub fn combine(
    roms: &[&[u8]],
    pad_to: Option<usize>,
    max_size: Option<usize>,
) -> Result<Vec<u8>, CombineError> {
    let mut out = Vec::new();
    for (rom, bytes) in roms.iter().enumerate() {
        let chain = images(bytes).map_err(|error| CombineError::Rom { rom, error })?;
        let mut bytes = bytes.to_vec();
        if rom + 1 < roms.len() {
            let last = chain.last().expect("images() finds at least one").clone();
            let image = &mut bytes[last.clone()];
            let fail = |problem| CombineError::Rom {
                rom,
                error: RomError {
                    image: chain.len() - 1,
                    at: last.start,
                    problem,
                },
            };
            let Some(pci) = pci_header(image).map_err(fail)? else {
                return Err(CombineError::NoPciHeader {
                    rom,
                    at: last.start,
                });
            };
            let stated = usize::from(pci.image_length) * BLOCK;
            if stated != image.len() {
                let actual = image.len();
                return Err(CombineError::LengthMismatch {
                    rom,
                    stated,
                    actual,
                });
            }
            if pci.bytes.len() <= 0x15 {
                return Err(fail(Problem::NoChecksumField {
                    header: "PCIR",
                    pointer: pci.bytes.start,
                    length: pci.bytes.len(),
                }));
            }
            image[pci.bytes.start + 0x15] &= !PCI_LAST_IMAGE;
            if is_pc_at(image).map_err(fail)? {
                fix_image_checksum(image);
            }
        }
        out.extend_from_slice(&bytes);
    }
    if let Some(pad_to) = pad_to {
        if !pad_to.is_power_of_two() {
            return Err(CombineError::PadNotPowerOfTwo(pad_to));
        }
        if out.len() > pad_to {
            let len = out.len();
            return Err(CombineError::LongerThanPad { len, pad_to });
        }
        out.resize(pad_to, 0);
    }
    if let Some(max) = max_size.filter(|&max| out.len() > max) {
        let len = out.len();
        return Err(CombineError::TooLarge { len, max });
    }
    Ok(out)
}

fn check_rom_header(image: &[u8]) -> Result<(), Problem> {
    if image.len() < HEADER_LEN {
        return Err(Problem::TooShort { len: image.len() });
    }
    if image[..2] != SIGNATURE {
        let found = [image[0], image[1]];
        return Err(Problem::NoSignature { found });
    }
    Ok(())
}

fn fix_image(image: &mut [u8]) -> Result<(), Problem> {
    for header in &SUB_HEADERS {
        fix_sub_header(image, header)?;
    }
    if is_pc_at(image)? {
        fix_image_checksum(image);
    }
    Ok(())
}

/// ROM.pm `fix_checksum`: the bytes the length byte covers (up to the end of the image) sum to 0.
fn fix_image_checksum(image: &mut [u8]) {
    let length = (usize::from(image[LENGTH]) * BLOCK).min(image.len());
    let sum = byte_sum(&image[..length]);
    image[CHECKSUM] = image[CHECKSUM].wrapping_sub(sum);
}

/// ROM.pm reads the sub-header pointers only in a PC-AT image (`check_pcat_rom`).
fn fix_sub_header(image: &mut [u8], header: &SubHeader) -> Result<(), Problem> {
    if !is_pc_at(image)? {
        return Ok(());
    }
    let Some(pointer) = find(image, header.pointer, header.name, header.fixed_len)? else {
        return Ok(());
    };
    let length = usize::from(image[pointer + header.length_at]) * header.length_unit;
    let bytes = checked_header(image, header.name, pointer, length)?;
    if header.checksum_at >= length {
        return Err(Problem::NoChecksumField {
            header: header.name,
            pointer,
            length,
        });
    }
    let sum = byte_sum(bytes);
    let checksum = &mut image[pointer + header.checksum_at];
    *checksum = checksum.wrapping_sub(sum);
    Ok(())
}

/// ROM.pm `check_pcat_rom`: no PCI header, or one whose code type is 0 (x86 BIOS).
fn is_pc_at(image: &[u8]) -> Result<bool, Problem> {
    Ok(pci_header(image)?.is_none_or(|pci| pci.code_type == 0))
}

/// The PCI data structure fields ROM.pm reads; a field past the structure's stated length
/// reads as 0, as ROM.pm's `EXISTS` makes it undef.
struct Pci {
    /// Where the structure is in the image, by its stated length.
    bytes: Range<usize>,
    image_length: u16,
    code_type: u8,
    last_image: u8,
}

fn pci_header(image: &[u8]) -> Result<Option<Pci>, Problem> {
    let Some(pointer) = find(image, PCI_POINTER, "PCIR", PCI_FIXED_LEN)? else {
        return Ok(None);
    };
    let length = usize::from(u16_at(image, pointer + 0x0a));
    let header = checked_header(image, "PCIR", pointer, length)?;
    let byte = |at: usize| header.get(at).copied().unwrap_or(0);
    let image_length = header.get(0x10..0x12).map_or(0, |_| u16_at(header, 0x10));
    Ok(Some(Pci {
        bytes: pointer..pointer + length,
        image_length,
        code_type: byte(0x14),
        last_image: byte(0x15),
    }))
}

/// The header the ROM header points to at `pointer_at`: None if the pointer is 0 or the
/// signature there is not `name`; an error if its first `fixed_len` bytes leave the image.
fn find(
    image: &[u8],
    pointer_at: usize,
    name: &'static str,
    fixed_len: usize,
) -> Result<Option<usize>, Problem> {
    let pointer = usize::from(u16_at(image, pointer_at));
    if pointer == 0 {
        return Ok(None);
    }
    if pointer + fixed_len > image.len() {
        return Err(Problem::PointerOutside {
            header: name,
            pointer,
            len: image.len(),
        });
    }
    Ok((&image[pointer..pointer + 4] == name.as_bytes()).then_some(pointer))
}

/// A header's bytes by its stated length, which must stay inside the image.
fn checked_header<'a>(
    image: &'a [u8],
    name: &'static str,
    pointer: usize,
    length: usize,
) -> Result<&'a [u8], Problem> {
    image
        .get(pointer..pointer + length)
        .ok_or(Problem::HeaderPastEnd {
            header: name,
            pointer,
            length,
            len: image.len(),
        })
}

/// Little-endian u16 at `at`; callers have checked that it is inside `bytes`.
fn u16_at(bytes: &[u8], at: usize) -> u16 {
    u16::from_le_bytes([bytes[at], bytes[at + 1]])
}

/// Perl's `unpack("%8C*")`: the sum of the bytes, modulo 256.
fn byte_sum(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0, |sum, b| sum.wrapping_add(*b))
}

/// Where each image of the chain has its PCI data structure, by the structure's stated length
/// (absolute offsets; images without one are skipped).
pub fn pci_headers(rom: &[u8]) -> Result<Vec<Range<usize>>, RomError> {
    let mut found = Vec::new();
    for (image, range) in images(rom)?.into_iter().enumerate() {
        let at = range.start;
        let fail = |problem| RomError { image, at, problem };
        if let Some(pci) = pci_header(&rom[range]).map_err(fail)? {
            found.push(at + pci.bytes.start..at + pci.bytes.end);
        }
    }
    Ok(found)
}

/// Who an option ROM is for, from its first image's PCI data structure (PCI Firmware
/// Specification 3.0, "PCI Data Structure Format").
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PciIdentity {
    pub vendor: u16,
    /// The structure's device id and, from revision 3 on, its device list: every device the
    /// image supports.
    pub devices: Vec<u16>,
    /// "Revision level of the code in the image".
    pub revision: u16,
}

impl PciIdentity {
    pub fn supports(&self, vendor: u16, device: u16) -> bool {
        self.vendor == vendor && self.devices.contains(&device)
    }
}

/// Reads `PciIdentity` from a ROM's first image, through the same header checks as
/// [`fix_checksums`]; a ROM without a PCI data structure is refused.
pub fn pci_identity(rom: &[u8]) -> Result<PciIdentity, Problem> {
    if rom.len() < HEADER_LEN {
        return Err(Problem::TooShort { len: rom.len() });
    }
    if rom[..2] != SIGNATURE {
        return Err(Problem::NoSignature {
            found: [rom[0], rom[1]],
        });
    }
    let Some(pointer) = find(rom, PCI_POINTER, "PCIR", PCI_FIXED_LEN)? else {
        return Err(Problem::NoPciHeader);
    };
    let length = usize::from(u16_at(rom, pointer + 0x0a));
    let header = checked_header(rom, "PCIR", pointer, length)?;
    // As ROM.pm reads it: fields past the stated length are zero.
    let word = |at: usize| header.get(at..at + 2).map_or(0, |_| u16_at(header, at));
    let mut devices = vec![word(0x06)];
    let list = usize::from(word(0x08));
    // Offset 8 is the device list pointer from structure revision 3 on
    // (offset 0x0c); before, those bytes are reserved.
    if header.get(0x0c).is_some_and(|&r| r >= 3) && list != 0 {
        // The list is relative to the structure and ends with a zero id.
        let mut at = pointer + list;
        loop {
            if at + 2 > rom.len() {
                return Err(Problem::PointerOutside {
                    header: "PCI device list",
                    pointer: pointer + list,
                    len: rom.len(),
                });
            }
            match u16_at(rom, at) {
                0 => break,
                id if !devices.contains(&id) => devices.push(id),
                _ => {}
            }
            at += 2;
        }
    }
    Ok(PciIdentity {
        vendor: word(0x04),
        devices,
        revision: word(0x12),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const IPXE_AT: usize = 0x40;
    const UNDI_AT: usize = 0x60;
    const PNP_AT: usize = 0x80;
    const PCI_AT: usize = 0xb0;

    fn put16(rom: &mut [u8], at: usize, value: u16) {
        rom[at..at + 2].copy_from_slice(&value.to_le_bytes());
    }

    /// A PC-AT image of `blocks` 512-byte blocks with all three sub-headers and a PCI header,
    /// laid out as romprefix.S does, every checksum wrong.
    fn image(blocks: u8, last: bool) -> Vec<u8> {
        let mut rom: Vec<u8> = (0..usize::from(blocks) * BLOCK)
            .map(|i| (i * 13 % 251) as u8)
            .collect();
        rom[..3].copy_from_slice(&[0x55, 0xaa, blocks]);
        put16(&mut rom, 0x10, IPXE_AT as u16);
        put16(&mut rom, 0x16, UNDI_AT as u16);
        put16(&mut rom, 0x18, PCI_AT as u16);
        put16(&mut rom, 0x1a, PNP_AT as u16);
        rom[IPXE_AT..IPXE_AT + 5].copy_from_slice(b"iPXE\x10");
        rom[UNDI_AT..UNDI_AT + 5].copy_from_slice(b"UNDI\x16");
        rom[PNP_AT..PNP_AT + 6].copy_from_slice(b"$PnP\x01\x02");
        rom[PCI_AT..PCI_AT + 4].copy_from_slice(b"PCIR");
        put16(&mut rom, PCI_AT + 0x0a, 0x18);
        put16(&mut rom, PCI_AT + 0x10, u16::from(blocks));
        rom[PCI_AT + 0x14] = 0;
        rom[PCI_AT + 0x15] = if last { PCI_LAST_IMAGE } else { 0 };
        rom
    }

    fn assert_fixed(image: &[u8]) {
        assert_eq!(byte_sum(&image[IPXE_AT..IPXE_AT + 0x10]), 0, "iPXE header");
        assert_eq!(byte_sum(&image[UNDI_AT..UNDI_AT + 0x16]), 0, "UNDI header");
        assert_eq!(byte_sum(&image[PNP_AT..PNP_AT + 0x20]), 0, "$PnP header");
        let len = usize::from(image[LENGTH]) * BLOCK;
        assert_eq!(byte_sum(&image[..len.min(image.len())]), 0, "image");
    }

    fn changed(a: &[u8], b: &[u8]) -> Vec<usize> {
        (0..a.len()).filter(|&i| a[i] != b[i]).collect()
    }

    /// Fixing `rom` fails, leaves it as it was, and says which image and why.
    fn problem(mut rom: Vec<u8>) -> (usize, Problem) {
        let before = rom.clone();
        let err = fix_checksums(&mut rom).unwrap_err();
        assert_eq!(rom, before, "a failed fix leaves the ROM as it was");
        (err.image, err.problem)
    }

    /// A one-block image with `edit` applied.
    fn edited(edit: impl FnOnce(&mut Vec<u8>)) -> Vec<u8> {
        let mut rom = image(1, true);
        edit(&mut rom);
        rom
    }

    #[test]
    fn padding_reaches_the_next_block_with_the_given_byte() {
        let mut image = vec![1; 0x1234];
        pad(&mut image, 512, 0xff);
        assert_eq!(image.len(), 0x1400);
        assert!(image[0x1234..].iter().all(|&b| b == 0xff));
        assert_eq!(image[0x1233], 1);
    }

    #[test]
    fn padding_leaves_a_whole_number_of_blocks_alone() {
        for len in [0, 512, 1024] {
            let mut image = vec![1; len];
            pad(&mut image, 512, 0xff);
            assert_eq!(image, vec![1; len]);
        }
    }

    #[test]
    fn every_checksum_of_a_pc_at_image_sums_to_zero() {
        let mut rom = image(2, true);
        let before = rom.clone();
        fix_checksums(&mut rom).unwrap();
        assert_fixed(&rom);
        assert_eq!(
            changed(&before, &rom),
            [CHECKSUM, IPXE_AT + 5, UNDI_AT + 5, PNP_AT + 9]
        );
    }

    #[test]
    fn fixing_twice_changes_nothing() {
        let mut rom = image(2, true);
        fix_checksums(&mut rom).unwrap();
        let once = rom.clone();
        fix_checksums(&mut rom).unwrap();
        assert_eq!(rom, once);
    }

    #[test]
    fn the_image_checksum_covers_the_length_byte_not_the_file() {
        let mut rom = image(2, true);
        rom[LENGTH] = 1;
        pad(&mut rom, 2048, 0x5a);
        fix_checksums(&mut rom).unwrap();
        assert_eq!(byte_sum(&rom[..512]), 0);
        assert_ne!(byte_sum(&rom), 0);
    }

    #[test]
    fn a_length_byte_past_the_data_sums_what_there_is() {
        let mut rom = image(2, true);
        rom[LENGTH] = 0x40;
        fix_checksums(&mut rom).unwrap();
        assert_eq!(byte_sum(&rom), 0);
    }

    #[test]
    fn a_missing_or_foreign_sub_header_is_skipped() {
        let mut rom = image(2, true);
        put16(&mut rom, 0x10, 0);
        rom[UNDI_AT] = b'X';
        let before = rom.clone();
        fix_checksums(&mut rom).unwrap();
        assert_eq!(changed(&before, &rom), [CHECKSUM, PNP_AT + 9]);
    }

    #[test]
    fn an_image_without_a_pci_header_is_pc_at() {
        let mut rom = image(2, true);
        put16(&mut rom, 0x18, 0);
        fix_checksums(&mut rom).unwrap();
        assert_fixed(&rom);
    }

    #[test]
    fn pci_fields_past_the_structure_length_read_as_zero() {
        // Code type 0 (PC-AT) and last-image 0 (a next image follows), whatever the bytes say.
        let mut rom = image(2, true);
        put16(&mut rom, PCI_AT + 0x0a, 0x14);
        rom[PCI_AT + 0x14] = 3;
        rom.extend(image(1, true));
        fix_checksums(&mut rom).unwrap();
        assert_fixed(&rom[..1024]);
        assert_fixed(&rom[1024..]);
    }

    #[test]
    fn an_efi_image_is_left_alone_even_with_junk_where_pointers_would_be() {
        let mut rom = image(2, true);
        rom[PCI_AT + 0x14] = 3;
        put16(&mut rom, 0x10, 0xfff0);
        let before = rom.clone();
        fix_checksums(&mut rom).unwrap();
        assert_eq!(rom, before);
    }

    #[test]
    fn each_image_of_a_chain_is_fixed_on_its_own() {
        let mut efi = image(1, true);
        efi[PCI_AT + 0x14] = 3;
        let mut rom = [image(2, false), image(3, false), efi.clone()].concat();
        fix_checksums(&mut rom).unwrap();
        assert_fixed(&rom[..1024]);
        assert_fixed(&rom[1024..2560]);
        assert_eq!(rom[2560..], efi);
    }

    #[test]
    fn the_last_image_takes_the_rest_of_the_file() {
        let mut rom = [image(2, false), image(1, true)].concat();
        rom[1024 + LENGTH] = 2;
        rom.extend_from_slice(&[7; 512]);
        fix_checksums(&mut rom).unwrap();
        assert_eq!(byte_sum(&rom[1024..]), 0);
    }

    #[test]
    fn a_rom_without_a_header_or_signature_is_an_error() {
        let short = edited(|rom| rom.truncate(3));
        assert_eq!(problem(short), (0, Problem::TooShort { len: 3 }));
        let unsigned = edited(|rom| rom[1] = 0xab);
        let found = [0x55, 0xab];
        assert_eq!(problem(unsigned), (0, Problem::NoSignature { found }));
    }

    #[test]
    fn a_header_pointer_that_leaves_the_image_is_an_error() {
        let ipxe = edited(|rom| put16(rom, 0x10, 0x1fe));
        let (header, pointer, len) = ("iPXE", 0x1fe, 512);
        let want = Problem::PointerOutside {
            header,
            pointer,
            len,
        };
        assert_eq!(problem(ipxe), (0, want));
        let pci = edited(|rom| put16(rom, 0x18, 0x1f8));
        let (header, pointer) = ("PCIR", 0x1f8);
        let want = Problem::PointerOutside {
            header,
            pointer,
            len,
        };
        assert_eq!(problem(pci), (0, want));
    }

    #[test]
    fn a_header_longer_than_the_image_or_too_short_for_its_checksum_is_an_error() {
        let long = edited(|rom| rom[PNP_AT + 5] = 0x20);
        let (header, pointer, length, len) = ("$PnP", PNP_AT, 0x200, 512);
        let want = Problem::HeaderPastEnd {
            header,
            pointer,
            length,
            len,
        };
        assert_eq!(problem(long), (0, want));
        let short = edited(|rom| rom[UNDI_AT + 4] = 5);
        let (header, pointer, length) = ("UNDI", UNDI_AT, 5);
        let want = Problem::NoChecksumField {
            header,
            pointer,
            length,
        };
        assert_eq!(problem(short), (0, want));
    }

    #[test]
    fn a_chain_that_runs_off_the_end_is_an_error() {
        let (length, rest) = (512, 512);
        let alone = image(1, false);
        assert_eq!(problem(alone), (0, Problem::NoNextImage { length, rest }));
        let mut empty = image(1, false);
        put16(&mut empty, PCI_AT + 0x10, 0);
        empty.extend(image(1, true));
        let (length, rest) = (0, 1024);
        assert_eq!(problem(empty), (0, Problem::NoNextImage { length, rest }));
        let zeros = [image(1, false), vec![0; 512]].concat();
        let found = [0, 0];
        assert_eq!(problem(zeros), (1, Problem::NoSignature { found }));
    }

    #[test]
    fn errors_name_the_image_and_where_it_starts() {
        let mut rom = [image(2, false), vec![0; 0x10]].concat();
        let err = fix_checksums(&mut rom).unwrap_err();
        assert_eq!(
            err.to_string(),
            "option ROM image 1 (at 0x400): 16 bytes is too short for an option ROM header \
             (0x1c bytes)"
        );
    }

    #[test]
    fn pci_identity_reads_the_device_list_and_revision() {
        let mut rom = vec![0u8; 512];
        rom[..2].copy_from_slice(&SIGNATURE);
        put16(&mut rom, 0x18, 0x40);
        rom[0x40..0x44].copy_from_slice(b"PCIR");
        put16(&mut rom, 0x44, 0x1af4);
        put16(&mut rom, 0x46, 0x1041);
        put16(&mut rom, 0x48, 0x20); // device list at 0x60
        put16(&mut rom, 0x4a, 0x1c);
        rom[0x4c] = 3;
        put16(&mut rom, 0x52, 7);
        for (i, id) in [0x1000u16, 0x1041, 0].iter().enumerate() {
            put16(&mut rom, 0x60 + 2 * i, *id);
        }
        let id = pci_identity(&rom).unwrap();
        assert_eq!(id.devices, [0x1041, 0x1000]);
        assert_eq!(id.revision, 7);
        assert!(id.supports(0x1af4, 0x1000) && !id.supports(0x8086, 0x1000));
        // Before revision 3 the list pointer is not a list.
        rom[0x4c] = 2;
        assert_eq!(pci_identity(&rom).unwrap().devices, [0x1041]);
        rom[0x4c] = 3;
        put16(&mut rom, 0x48, 0x1f0); // a list that runs off the end
        assert!(matches!(
            pci_identity(&rom),
            Err(Problem::PointerOutside { .. })
        ));
        rom[0x40] = b'X';
        assert_eq!(pci_identity(&rom), Err(Problem::NoPciHeader));
        assert_eq!(pci_identity(b"MZ"), Err(Problem::TooShort { len: 2 }));
    }

    /// An EFI image as util/efirom lays it out: its PCI header at 0x1c, code type 3.
    fn efi_image(blocks: u8) -> Vec<u8> {
        let mut rom = vec![0x5a; usize::from(blocks) * BLOCK];
        rom[..3].copy_from_slice(&[0x55, 0xaa, blocks]);
        rom[0x04..0x08].copy_from_slice(&0x0ef1u32.to_le_bytes());
        put16(&mut rom, 0x18, 0x1c);
        rom[0x1c..0x20].copy_from_slice(b"PCIR");
        put16(&mut rom, 0x1c + 0x0a, 0x18);
        put16(&mut rom, 0x1c + 0x10, u16::from(blocks));
        rom[0x1c + 0x14] = 3;
        rom[0x1c + 0x15] = PCI_LAST_IMAGE;
        rom
    }

    #[test]
    fn combining_chains_a_legacy_and_an_efi_image_as_catrom_does() {
        let mut legacy = image(2, true);
        fix_checksums(&mut legacy).unwrap();
        let efi = efi_image(3);
        let rom = combine(&[&legacy, &efi], None, None).unwrap();
        assert_eq!(rom.len(), legacy.len() + efi.len());
        assert_eq!(images(&rom).unwrap(), [0..1024, 1024..2560]);
        // Only the legacy image's indicator and checksum changed; the EFI image is untouched.
        assert_eq!(changed(&rom[..1024], &legacy), [CHECKSUM, PCI_AT + 0x15]);
        assert_eq!(rom[PCI_AT + 0x15], 0);
        assert_fixed(&rom[..1024]);
        assert_eq!(&rom[1024..], efi.as_slice());
        // Padded to a power of two with zeros, as distributions pad QEMU's ROMs.
        let padded = combine(&[&legacy, &efi], Some(4096), Some(4096)).unwrap();
        assert_eq!((padded.len(), &padded[..rom.len()]), (4096, rom.as_slice()));
        assert!(padded[rom.len()..].iter().all(|&b| b == 0));
    }

    #[test]
    fn combining_refuses_what_would_not_hold_together_or_fit() {
        let legacy = image(2, true);
        let efi = efi_image(3);
        let err = |r: Result<Vec<u8>, CombineError>| r.unwrap_err().to_string();
        // A legacy ROM whose image length stops short of its end.
        let mut short = legacy.clone();
        put16(&mut short, PCI_AT + 0x10, 1);
        assert!(
            err(combine(&[&short, &efi], None, None)).contains("PCI image length is 0x200 bytes"),
            "{}",
            err(combine(&[&short, &efi], None, None))
        );
        assert!(err(combine(&[&legacy, &efi], Some(3000), None)).contains("not a power of two"));
        assert!(
            err(combine(&[&legacy, &efi], Some(2048), None)).contains("more than `pad_to` 2048")
        );
        assert_eq!(
            err(combine(&[&legacy, &efi], None, Some(2048))),
            "the combined ROM is 2560 bytes, more than the card's `max_size` 2048"
        );
        assert!(
            err(combine(&[b"MZ".as_slice(), &efi], None, None)).starts_with("ROM 0 of the chain")
        );
    }
}
