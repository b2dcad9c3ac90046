//! PE32+ images: reading one back, and appending sections to the systemd EFI stub to make a
//! Unified Kernel Image without objcopy.
//!
//! This module owns the byte layout only: which offsets hold which header fields, where new
//! section headers and data go, and the optional-header checksum. Field offsets follow Microsoft's
//! "PE Format" specification (PE/COFF: MS-DOS stub, COFF file header, optional header
//! image-only fields, section table); the section names and the idea of appending them to the
//! stub come from the UAPI Group "Unified Kernel Image (UKI)" specification, and the layout of
//! each appended section follows systemd's `ukify` (`pe_add_sections`): virtual addresses aligned
//! to SectionAlignment after the last section, raw data after the last raw data, read-only
//! initialized data. Where ukify differs, this module chooses the safer or reproducible option:
//! the memory end also counts SizeOfRawData, the CheckSum is recomputed rather than zeroed, and
//! the stub's COFF symbol table is only cut off when asked ([`strip_coff_symbols`]).
//!
//! Every read is bounds-checked because the stub is untrusted input; output bytes are a function
//! of the input bytes alone (TimeDateStamp is left as the stub has it).

use object::pe::{
    IMAGE_DIRECTORY_ENTRY_SECURITY, IMAGE_DOS_SIGNATURE, IMAGE_FILE_LOCAL_SYMS_STRIPPED,
    IMAGE_NT_OPTIONAL_HDR64_MAGIC, IMAGE_NT_SIGNATURE, IMAGE_SCN_CNT_INITIALIZED_DATA,
    IMAGE_SCN_MEM_READ,
};

/// The key-bearing version (`super::Format`) of PE section appending and the
/// checksum (UKIs, patched EFI files): bump it when the bytes change.
pub const FORMAT: super::Format = super::Format {
    name: "pe",
    version: 1,
};

const E_LFANEW: usize = 0x3c;
const COFF_LEN: usize = 20;
const SECTION_HEADER_LEN: usize = 40;
const SYMBOL_LEN: u64 = 18;
// Optional-header field offsets (PE32+).
const OPT_SIZE_OF_INIT_DATA: usize = 8;
const OPT_SECTION_ALIGNMENT: usize = 32;
const OPT_FILE_ALIGNMENT: usize = 36;
const OPT_SIZE_OF_IMAGE: usize = 56;
const OPT_SIZE_OF_HEADERS: usize = 60;
const OPT_CHECKSUM: usize = 64;
const OPT_SUBSYSTEM: usize = 68;
const OPT_NUMBER_OF_RVA: usize = 108;
const OPT_DATA_DIRS: usize = 112;

/// One section of a PE image as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Section {
    pub name: String,
    pub virtual_address: u32,
    pub virtual_size: u32,
    pub raw_offset: u32,
    pub raw_size: u32,
    pub characteristics: u32,
}

/// Header fields a reader (and a diff) cares about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Headers {
    pub machine: u16,
    pub number_of_sections: u16,
    pub timestamp: u32,
    pub section_alignment: u32,
    pub file_alignment: u32,
    pub size_of_image: u32,
    pub size_of_headers: u32,
    pub size_of_initialized_data: u32,
    pub checksum: u32,
    pub subsystem: u16,
}

/// Where things are in the file, kept so writers need not re-derive them.
#[derive(Debug, Clone, Copy)]
struct Layout {
    coff: usize,
    opt: usize,
    table_end: usize,
    symbols: u32,
    symbol_count: u32,
    /// File offset of the certificate table's data directory entry, if the header has one.
    security_entry: Option<usize>,
    security_size: u32,
}

/// A validated PE32+ image borrowed from its bytes.
pub struct PeImage<'a> {
    pub bytes: &'a [u8],
    pub headers: Headers,
    pub sections: Vec<Section>,
    layout: Layout,
}

/// Why an image could not be read or extended; each message names the check and its values.
#[derive(Debug, thiserror::Error)]
pub enum PeError {
    #[error("not a PE32+ image: {0}")]
    NotPe32Plus(String),
    #[error("the image is truncated: {0} at offset {1:#x} runs past the end of the {2}-byte file")]
    Truncated(&'static str, usize, usize),
    #[error("{0} is {1:#x}, which is not a power of two")]
    BadAlignment(&'static str, u32),
    #[error("section `{0}` has raw data up to {1:#x}, past the end of the {2}-byte file")]
    SectionOutsideFile(String, u64, usize),
    #[error("sections `{1}` (ending at {2:#x}) and `{3}` (starting at {4:#x}) overlap {0}")]
    Overlap(&'static str, String, u64, String, u64),
    #[error("SizeOfImage is {0:#x} but the sections need {1:#x}")]
    SizeOfImageTooSmall(u32, u64),
    #[error("the stub has room for {0} more section headers, {1} are needed")]
    NoHeaderRoom(usize, usize),
    #[error("the header slack at {0:#x} where new section headers would go is not zero")]
    HeaderSlackInUse(usize),
    #[error("section name `{0}` is longer than 8 bytes")]
    NameTooLong(String),
    #[error("section name `{0}` is empty or contains a NUL byte")]
    BadName(String),
    #[error("the stub already has a `{0}` section")]
    AlreadyPresent(String),
    #[error("section `{0}` is given more than once")]
    DuplicateNew(String),
    #[error("section `{0}` is empty")]
    EmptySection(String),
    #[error(
        "the image has {0} bytes after its last section's data (which ends at {1:#x}); \
         appending would overwrite or drop them"
    )]
    TrailingData(u64, u64),
    #[error(
        "the image carries a COFF symbol table ({0} symbols at {1:#x}); \
         strip it first with strip_coff_symbols, as ukify does"
    )]
    SymbolTable(u32, u32),
    #[error(
        "the COFF symbol and string tables ({0:#x}..{1:#x}) are not exactly the bytes after \
         the last section's data ({2:#x}..{3:#x}); refusing to cut them off"
    )]
    SymbolTableNotAtEnd(u64, u64, u64, usize),
    #[error(
        "the image is signed (certificate table present): \
         appending sections would invalidate the signature"
    )]
    Signed,
    #[error("section `{0}` does not fit: the image would pass 4 GiB")]
    TooLarge(String),
}

fn array_at<const N: usize>(b: &[u8], off: usize, what: &'static str) -> Result<[u8; N], PeError> {
    let got = off.checked_add(N).and_then(|end| b.get(off..end));
    got.and_then(|s| s.try_into().ok())
        .ok_or(PeError::Truncated(what, off, b.len()))
}

fn u16_at(b: &[u8], off: usize, what: &'static str) -> Result<u16, PeError> {
    array_at(b, off, what).map(u16::from_le_bytes)
}

fn u32_at(b: &[u8], off: usize, what: &'static str) -> Result<u32, PeError> {
    array_at(b, off, what).map(u32::from_le_bytes)
}

fn put(b: &mut [u8], off: usize, value: &[u8]) -> Result<(), PeError> {
    let truncated = PeError::Truncated("header write", off, b.len());
    let dst = off
        .checked_add(value.len())
        .and_then(|end| b.get_mut(off..end));
    dst.map(|dst| dst.copy_from_slice(value)).ok_or(truncated)
}

fn put32(b: &mut [u8], off: usize, value: u32) -> Result<(), PeError> {
    put(b, off, &value.to_le_bytes())
}

fn align_up(value: u64, alignment: u32) -> u64 {
    // Alignments are checked to be powers of two on parse; values stay far below 2^63.
    let mask = u64::from(alignment) - 1;
    (value + mask) & !mask
}

fn not_pe(why: impl Into<String>) -> PeError {
    PeError::NotPe32Plus(why.into())
}

impl<'a> PeImage<'a> {
    /// Parses and validates a PE32+ image: DOS/PE signatures, PE32+ magic, every section inside
    /// the file, no two sections overlapping in memory or on disk, SizeOfImage covering every
    /// section (aligned to SectionAlignment).
    pub fn parse(bytes: &'a [u8]) -> Result<PeImage<'a>, PeError> {
        let (headers, layout) = read_headers(bytes)?;
        let sections = read_sections(bytes, &layout, headers.number_of_sections)?;
        check_sections(bytes.len(), &headers, &sections)?;
        Ok(PeImage {
            bytes,
            headers,
            sections,
            layout,
        })
    }

    /// A section's contents: the first `virtual_size` bytes of its raw data (the rest is file
    /// padding). None if no section has that name.
    pub fn section_data(&self, name: &str) -> Option<&'a [u8]> {
        let s = self.sections.iter().find(|s| s.name == name)?;
        let start = usize::try_from(s.raw_offset).ok()?;
        let len = usize::try_from(s.virtual_size.min(s.raw_size)).ok()?;
        self.bytes.get(start..start.checked_add(len)?)
    }

    /// True if the stored CheckSum equals the recomputed one.
    pub fn checksum_ok(&self) -> bool {
        checksum(self.bytes, self.checksum_offset()) == self.headers.checksum
    }

    /// File offset of the optional header's CheckSum field.
    pub fn checksum_offset(&self) -> usize {
        self.layout.opt + OPT_CHECKSUM
    }

    /// File offset of the certificate table's data directory entry (file offset and size of
    /// the table, 4 bytes each), if the optional header has that many directories.
    pub fn security_entry(&self) -> Option<usize> {
        self.layout.security_entry
    }

    /// End of the section data on disk: where appended raw data starts.
    fn raw_end(&self) -> u64 {
        let ends = self.sections.iter().filter(|s| s.raw_size > 0);
        let ends = ends.map(|s| u64::from(s.raw_offset) + u64::from(s.raw_size));
        ends.fold(u64::from(self.headers.size_of_headers), u64::max)
    }

    /// End of the sections in memory, counting raw padding too (as the stub's own SizeOfImage
    /// does), so nothing a loader might copy from an old section's raw data lands in a new one.
    fn memory_end(&self) -> u64 {
        let end = |s: &Section| s.virtual_address as u64 + s.virtual_size.max(s.raw_size) as u64;
        let ends = self.sections.iter().map(end);
        ends.fold(u64::from(self.headers.size_of_headers), u64::max)
    }
}

fn read_headers(b: &[u8]) -> Result<(Headers, Layout), PeError> {
    if u16_at(b, 0, "DOS header")? != IMAGE_DOS_SIGNATURE {
        return Err(not_pe("no `MZ` signature at offset 0"));
    }
    let pe = u32_at(b, E_LFANEW, "DOS header")? as usize;
    if u32_at(b, pe, "PE signature")? != IMAGE_NT_SIGNATURE {
        return Err(not_pe(format!("no PE signature at e_lfanew {pe:#x}")));
    }
    // The signature read succeeded, so these offsets are inside the file and cannot overflow.
    let (coff, opt) = (pe + 4, pe + 4 + COFF_LEN);
    let opt_size = usize::from(u16_at(b, coff + 16, "COFF header")?);
    let magic = u16_at(b, opt, "optional header")?;
    if magic != IMAGE_NT_OPTIONAL_HDR64_MAGIC {
        return Err(not_pe(format!(
            "optional header magic is {magic:#x}, PE32+ is 0x20b"
        )));
    }
    if opt_size < OPT_DATA_DIRS {
        return Err(not_pe(format!("SizeOfOptionalHeader is only {opt_size}")));
    }
    let field = |off: usize| u32_at(b, opt + off, "optional header");
    let coff_field = |off: usize| u32_at(b, coff + off, "COFF header");
    let dirs = (field(OPT_NUMBER_OF_RVA)? as usize).min((opt_size - OPT_DATA_DIRS) / 8);
    let security_entry = (dirs > IMAGE_DIRECTORY_ENTRY_SECURITY)
        .then_some(opt + OPT_DATA_DIRS + 8 * IMAGE_DIRECTORY_ENTRY_SECURITY);
    let security_size = match security_entry {
        Some(entry) => u32_at(b, entry + 4, "optional header")?,
        None => 0,
    };
    let headers = Headers {
        machine: u16_at(b, coff, "COFF header")?,
        number_of_sections: u16_at(b, coff + 2, "COFF header")?,
        timestamp: coff_field(4)?,
        section_alignment: field(OPT_SECTION_ALIGNMENT)?,
        file_alignment: field(OPT_FILE_ALIGNMENT)?,
        size_of_image: field(OPT_SIZE_OF_IMAGE)?,
        size_of_headers: field(OPT_SIZE_OF_HEADERS)?,
        size_of_initialized_data: field(OPT_SIZE_OF_INIT_DATA)?,
        checksum: field(OPT_CHECKSUM)?,
        subsystem: u16_at(b, opt + OPT_SUBSYSTEM, "optional header")?,
    };
    let alignments = [
        ("SectionAlignment", headers.section_alignment),
        ("FileAlignment", headers.file_alignment),
    ];
    if let Some((name, value)) = alignments.into_iter().find(|(_, v)| !v.is_power_of_two()) {
        return Err(PeError::BadAlignment(name, value));
    }
    let table_end = opt + opt_size + SECTION_HEADER_LEN * usize::from(headers.number_of_sections);
    let (symbols, symbol_count) = (coff_field(8)?, coff_field(12)?);
    let layout = Layout {
        coff,
        opt,
        table_end,
        symbols,
        symbol_count,
        security_entry,
        security_size,
    };
    Ok((headers, layout))
}

fn read_sections(b: &[u8], layout: &Layout, count: u16) -> Result<Vec<Section>, PeError> {
    let table = layout.table_end - SECTION_HEADER_LEN * usize::from(count);
    let read = |i: usize| {
        let at = table + SECTION_HEADER_LEN * i;
        let raw: [u8; 8] = array_at(b, at, "section table")?;
        let name = raw.split(|&c| c == 0).next().unwrap_or_default();
        let word = |off: usize| u32_at(b, at + off, "section table");
        Ok(Section {
            name: String::from_utf8_lossy(name).into_owned(),
            virtual_size: word(8)?,
            virtual_address: word(12)?,
            raw_size: word(16)?,
            raw_offset: word(20)?,
            characteristics: word(36)?,
        })
    };
    (0..usize::from(count)).map(read).collect()
}

fn check_sections(file_len: usize, h: &Headers, sections: &[Section]) -> Result<(), PeError> {
    let span = |start: u32, len: u32| (u64::from(start), u64::from(start) + u64::from(len));
    for s in sections.iter().filter(|s| s.raw_size > 0) {
        let end = span(s.raw_offset, s.raw_size).1;
        if end > file_len as u64 {
            return Err(PeError::SectionOutsideFile(s.name.clone(), end, file_len));
        }
    }
    // A loader maps VirtualSize bytes (raw size only when VirtualSize is 0), so that is the
    // extent that must not collide; raw padding past it may overlap the next section's VA, as
    // in systemd 252's stub (.sbat's 0x200 raw bytes run into .sdmagic 0x100 later).
    let in_memory = |s: &Section| match s.virtual_size {
        0 => span(s.virtual_address, s.raw_size),
        v => span(s.virtual_address, v),
    };
    check_disjoint("in memory", sections, in_memory)?;
    check_disjoint("on disk", sections, |s| span(s.raw_offset, s.raw_size))?;
    // The sections must fit in SizeOfImage, as edk2's loader checks. The PE
    // specification also wants it a multiple of SectionAlignment, but
    // systemd 252's arm64 stub (linuxaa64.efi.stub) ends at 0x10e00 with
    // 0x1000 alignment and firmware loads it: the unrounded end is enough.
    let needed = sections.iter().map(|s| in_memory(s).1).max().unwrap_or(0);
    if u64::from(h.size_of_image) < needed {
        return Err(PeError::SizeOfImageTooSmall(h.size_of_image, needed));
    }
    Ok(())
}

fn check_disjoint(
    space: &'static str,
    sections: &[Section],
    extent: impl Fn(&Section) -> (u64, u64),
) -> Result<(), PeError> {
    let mut spans: Vec<_> = sections.iter().map(|s| (extent(s), s)).collect();
    spans.retain(|((start, end), _)| start < end);
    spans.sort_by_key(|(span, _)| *span);
    for pair in spans.windows(2) {
        if let [((_, a_end), a), ((b_start, _), b)] = pair {
            if b_start < a_end {
                let (a, b) = (a.name.clone(), b.name.clone());
                return Err(PeError::Overlap(space, a, *a_end, b, *b_start));
            }
        }
    }
    Ok(())
}

/// The PE optional-header checksum (the algorithm of imagehlp's CheckSumMappedFile: 16-bit
/// one's-complement-style sum of the file as little-endian u16 words with the CheckSum field
/// itself treated as zero, folded, plus the file length).
pub fn checksum(bytes: &[u8], checksum_offset: usize) -> u32 {
    let field = checksum_offset..checksum_offset.saturating_add(4);
    let mut sum: u32 = 0;
    for (i, pair) in bytes.chunks(2).enumerate() {
        let byte = |k: usize| match field.contains(&(2 * i + k)) {
            true => 0,
            false => pair.get(k).copied().unwrap_or(0),
        };
        sum += u32::from(u16::from_le_bytes([byte(0), byte(1)]));
        sum = (sum & 0xffff) + (sum >> 16);
    }
    // The length is added modulo 2^32, as the 32-bit field forces; images are far smaller.
    let folded = (sum & 0xffff) + (sum >> 16);
    (folded & 0xffff).wrapping_add(bytes.len() as u32)
}

/// Recomputes the CheckSum of an image whose bytes changed in place; an image that carries no
/// checksum (zero, as iPXE's `elf2efi` leaves it) keeps none. Returns the field's offset.
pub fn refresh_checksum(image: &mut [u8]) -> Result<usize, PeError> {
    let (stored, opt) = {
        let pe = PeImage::parse(image)?;
        (pe.headers.checksum, pe.layout.opt)
    };
    if stored != 0 {
        write_checksum(image, opt)?;
    }
    Ok(opt + OPT_CHECKSUM)
}

fn write_checksum(out: &mut [u8], opt: usize) -> Result<(), PeError> {
    put32(out, opt + OPT_CHECKSUM, checksum(out, opt + OPT_CHECKSUM))
}

/// Drops the COFF symbol and string tables that old systemd stubs (Debian 12's among them) still
/// carry after their last section, as ukify does before appending; the PE spec says an image
/// should have none. Returns the image unchanged if it has none; refuses if anything else
/// follows the section data.
pub fn strip_coff_symbols(image: &[u8]) -> Result<Vec<u8>, PeError> {
    let pe = PeImage::parse(image)?;
    let (coff, symbols) = (pe.layout.coff, pe.layout.symbols);
    if symbols == 0 {
        return Ok(image.to_vec());
    }
    let (start, len) = (u64::from(symbols), image.len() as u64);
    let strings = start + SYMBOL_LEN * u64::from(pe.layout.symbol_count);
    // The string table's first u32 is its size including itself; absent means empty.
    let string_len = match usize::try_from(strings) {
        Ok(at) if strings < len => u32_at(image, at, "COFF string table")?,
        _ => 0,
    };
    let (end, raw_end) = (strings + u64::from(string_len), pe.raw_end());
    if start != raw_end || end != len {
        return Err(PeError::SymbolTableNotAtEnd(
            start,
            end,
            raw_end,
            image.len(),
        ));
    }
    let mut out = image.get(..symbols as usize).unwrap_or_default().to_vec();
    put(&mut out, coff + 8, &[0; 8])?;
    let flags = u16_at(&out, coff + 18, "COFF header")? | IMAGE_FILE_LOCAL_SYMS_STRIPPED.0;
    put(&mut out, coff + 18, &flags.to_le_bytes())?;
    write_checksum(&mut out, pe.layout.opt)?;
    Ok(out)
}

/// Drops the overlay (bytes after the last section's raw data that no section maps) of an
/// unsigned image without a symbol table, as ukify does when it appends: no loader reads them.
/// systemd 252's arm64 stub, a flat binary with a hand-written PE header (gnu-efi's
/// aarch64 crt0), ends with 5 KiB of its ELF symbol table there. A signature (the security
/// directory points into the overlay) is kept and refused by `append_sections`.
pub fn drop_overlay(image: &[u8]) -> Result<Vec<u8>, PeError> {
    let pe = PeImage::parse(image)?;
    let end = usize::try_from(pe.raw_end()).unwrap_or(usize::MAX);
    if pe.layout.security_size != 0 || pe.layout.symbols != 0 || end >= image.len() {
        return Ok(image.to_vec());
    }
    let mut out = image[..end].to_vec();
    write_checksum(&mut out, pe.layout.opt)?;
    Ok(out)
}

fn check_names(pe: &PeImage, sections: &[(&str, &[u8])]) -> Result<(), PeError> {
    for (i, (name, data)) in sections.iter().enumerate() {
        let named = |variant: fn(String) -> PeError| Err(variant(name.to_string()));
        if name.len() > 8 {
            return named(PeError::NameTooLong);
        } else if name.is_empty() || name.contains('\0') {
            return named(PeError::BadName);
        } else if pe.sections.iter().any(|s| s.name == *name) {
            return named(PeError::AlreadyPresent);
        } else if sections[..i].iter().any(|(other, _)| other == name) {
            return named(PeError::DuplicateNew);
        } else if data.is_empty() {
            return named(PeError::EmptySection);
        }
    }
    Ok(())
}

/// Refuses images where appending would lose or corrupt something: a signature, symbols, an
/// overlay, or bytes living in the header slack the new headers would take.
fn check_appendable(pe: &PeImage, count: usize) -> Result<(), PeError> {
    let (table_end, symbols) = (pe.layout.table_end, pe.layout.symbols);
    let (end, len) = (pe.raw_end(), pe.bytes.len() as u64);
    if pe.layout.security_size != 0 {
        return Err(PeError::Signed);
    } else if symbols != 0 {
        return Err(PeError::SymbolTable(pe.layout.symbol_count, symbols));
    } else if len > end {
        return Err(PeError::TrailingData(len - end, end));
    }
    // New headers must not reach into the first section's data (sections are never moved).
    let first_raw = pe
        .sections
        .iter()
        .filter(|s| s.raw_size > 0)
        .map(|s| s.raw_offset);
    let limit = first_raw.fold(pe.headers.size_of_headers, u32::min) as usize;
    let limit = limit.min(pe.bytes.len());
    let free = limit.saturating_sub(table_end) / SECTION_HEADER_LEN;
    if free < count {
        return Err(PeError::NoHeaderRoom(free, count));
    }
    let slack = pe
        .bytes
        .get(table_end..table_end + SECTION_HEADER_LEN * count)
        .unwrap_or_default();
    if pe.headers.machine == MACHINE_ARM64 && is_arm64_padding(slack) {
        return Ok(());
    }
    match slack.iter().position(|&b| b != 0) {
        Some(at) => Err(PeError::HeaderSlackInUse(table_end + at)),
        None => Ok(()),
    }
}

/// PE machine type of arm64 images.
const MACHINE_ARM64: u16 = 0xaa64;

/// Whether `bytes` are whole AArch64 `nop`s (0xd503201f), as the assembler pads the header of
/// systemd 252's arm64 stub up to its first section (gnu-efi's crt0 aligns `.text` there):
/// padding, not data, which new section headers may take.
fn is_arm64_padding(bytes: &[u8]) -> bool {
    const NOP: [u8; 4] = 0xd503_201f_u32.to_le_bytes();
    bytes.len().is_multiple_of(4) && bytes.chunks(4).all(|w| w == NOP)
}

fn section_header(name: &str, len: u64, va: u64, ptr: u64, raw: u64) -> Result<[u8; 40], PeError> {
    let mut h = [0u8; 40];
    let name_field = h
        .get_mut(..name.len())
        .ok_or(PeError::NameTooLong(name.into()))?;
    name_field.copy_from_slice(name.as_bytes());
    let flags = u64::from(IMAGE_SCN_CNT_INITIALIZED_DATA.0 | IMAGE_SCN_MEM_READ.0);
    for (off, value) in [(8, len), (12, va), (16, raw), (20, ptr), (36, flags)] {
        let value = u32::try_from(value).map_err(|_| PeError::TooLarge(name.into()))?;
        put32(&mut h, off, value)?;
    }
    Ok(h)
}

/// Appends `sections` (name ≤ 8 bytes, contents) after the image's last section, in the given
/// order, and returns the new image bytes.
pub fn append_sections(image: &[u8], sections: &[(&str, &[u8])]) -> Result<Vec<u8>, PeError> {
    let pe = PeImage::parse(image)?;
    check_names(&pe, sections)?;
    check_appendable(&pe, sections.len())?;
    let (h, opt, table_end) = (&pe.headers, pe.layout.opt, pe.layout.table_end);
    let (mut memory_end, mut raw_end, mut added) = (pe.memory_end(), pe.raw_end(), 0u64);
    let mut out = image.to_vec();
    for (i, (name, data)) in sections.iter().enumerate() {
        let len = data.len() as u64;
        let va = align_up(memory_end, h.section_alignment);
        let ptr = align_up(raw_end, h.file_alignment);
        let raw = align_up(len, h.file_alignment);
        let header = section_header(name, len, va, ptr, raw)?;
        put(&mut out, table_end + SECTION_HEADER_LEN * i, &header)?;
        // Offsets stay within u32 (the PE fields' width), so the casts to usize are lossless.
        let end = u32::try_from(ptr + raw).map_err(|_| PeError::TooLarge(name.to_string()))?;
        out.resize(ptr as usize, 0);
        out.extend_from_slice(data);
        out.resize(end as usize, 0);
        (memory_end, raw_end, added) = (va + raw, ptr + raw, added + raw);
    }
    let fit = |v: u64| u32::try_from(v).map_err(|_| PeError::TooLarge("SizeOfImage".into()));
    let count = usize::from(h.number_of_sections) + sections.len();
    let count = u16::try_from(count).map_err(|_| PeError::NoHeaderRoom(0, count))?;
    put(&mut out, pe.layout.coff + 2, &count.to_le_bytes())?;
    let size_of_image = fit(align_up(memory_end, h.section_alignment))?;
    put32(&mut out, opt + OPT_SIZE_OF_IMAGE, size_of_image)?;
    let initialized = fit(u64::from(h.size_of_initialized_data) + added)?;
    put32(&mut out, opt + OPT_SIZE_OF_INIT_DATA, initialized)?;
    write_checksum(&mut out, opt)?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// systemd's EFI stub as Debian 12 ships it (the version sources.toml pins).
    const STUB: &str = "/usr/lib/systemd/boot/efi/linuxx64.efi.stub";
    const OPT: usize = 0x58;
    const TABLE: usize = OPT + 240;
    const ONE: &[(&str, &[u8])] = &[(".a", b"x")];

    fn pattern(len: usize, seed: usize) -> Vec<u8> {
        (0..len).map(|i| ((i * seed + seed) % 251) as u8).collect()
    }

    fn patched(image: &[u8], off: usize, value: u32) -> Vec<u8> {
        let mut b = image.to_vec();
        put32(&mut b, off, value).unwrap();
        b
    }

    /// A two-section PE32+ laid out the way a linker would, with a correct checksum.
    fn synthetic(section_alignment: u32, file_alignment: u32, size_of_headers: u32) -> Vec<u8> {
        let mut b = vec![0u8; size_of_headers as usize];
        // (offset, value, width): MZ, e_lfanew, PE\0\0, the COFF header, then PE32+ fields.
        let fields = [
            (0, 0x5a4d, 2),
            (0x3c, 0x40, 4),
            (0x40, 0x4550, 4),
            (0x44, 0x8664, 2),
            (0x46, 2, 2),
            (0x48, 0x1234_5678, 4),
            (0x54, 240, 2),
            (0x56, 0x206, 2),
            (OPT, 0x20b, 2),
            (OPT + OPT_SECTION_ALIGNMENT, section_alignment, 4),
            (OPT + OPT_FILE_ALIGNMENT, file_alignment, 4),
            (OPT + OPT_SIZE_OF_HEADERS, size_of_headers, 4),
            (OPT + OPT_SUBSYSTEM, 10, 2),
            (OPT + OPT_NUMBER_OF_RVA, 16, 4),
        ];
        for (off, value, width) in fields {
            put(&mut b, off, &u32::to_le_bytes(value)[..width]).unwrap();
        }
        let mut va = align_up(u64::from(size_of_headers), section_alignment);
        let contents = [(".text", pattern(0x300, 3)), (".data", pattern(0x10, 7))];
        for (i, (name, data)) in contents.iter().enumerate() {
            let (ptr, len) = (b.len() as u64, data.len() as u64);
            let raw = align_up(len, file_alignment);
            let header = section_header(name, len, va, ptr, raw).unwrap();
            put(&mut b, TABLE + 40 * i, &header).unwrap();
            b.extend_from_slice(data);
            b.resize((ptr + raw) as usize, 0);
            va = align_up(va + raw, section_alignment);
        }
        put32(&mut b, OPT + OPT_SIZE_OF_IMAGE, va as u32).unwrap();
        write_checksum(&mut b, OPT).unwrap();
        b
    }

    fn appended_sections_round_trip(section_alignment: u32, file_alignment: u32) {
        let old = synthetic(section_alignment, file_alignment, 0x400);
        let (osrel, linux) = (pattern(0x51, 5), pattern(0x1234, 11));
        let new: [(&str, &[u8]); 3] = [
            (".osrel", &osrel),
            (".cmdline", b"quiet"),
            (".linux", &linux),
        ];
        let out = append_sections(&old, &new).unwrap();
        let (before, after) = (PeImage::parse(&old).unwrap(), PeImage::parse(&out).unwrap());
        assert_eq!(after.headers.number_of_sections, 5);
        assert!(after.checksum_ok());
        assert_eq!(after.sections[..2], before.sections[..]);
        for s in &before.sections {
            let range = s.raw_offset as usize..(s.raw_offset + s.raw_size) as usize;
            assert!(
                out[range.clone()] == old[range],
                "bytes of `{}` changed",
                s.name
            );
        }
        let mut memory_end = before.memory_end();
        for (s, (name, data)) in after.sections[2..].iter().zip(new) {
            assert_eq!(after.section_data(name), Some(data));
            let va = u64::from(s.virtual_address);
            assert_eq!(va, align_up(memory_end, section_alignment), "{name}");
            assert_eq!(s.raw_offset % file_alignment, 0, "{name}");
            assert_eq!(s.characteristics, 0x4000_0040);
            memory_end = va + u64::from(s.raw_size);
        }
        let image_end = align_up(memory_end, section_alignment);
        assert_eq!(u64::from(after.headers.size_of_image), image_end);
        let added: u32 = after.sections[2..].iter().map(|s| s.raw_size).sum();
        let initialized = before.headers.size_of_initialized_data + added;
        assert_eq!(after.headers.size_of_initialized_data, initialized);
        assert_eq!(after.headers.timestamp, 0x1234_5678);
        assert!(
            append_sections(&old, &new).unwrap() == out,
            "output must be deterministic"
        );
    }

    #[test]
    fn appended_sections_round_trip_with_page_section_alignment() {
        appended_sections_round_trip(0x1000, 0x200);
    }

    #[test]
    fn appended_sections_round_trip_when_section_and_file_alignment_match() {
        appended_sections_round_trip(0x200, 0x200);
    }

    fn append_err(image: &[u8], sections: &[(&str, &[u8])]) -> PeError {
        append_sections(image, sections).unwrap_err()
    }

    #[test]
    fn too_little_header_room_is_refused_with_the_counts() {
        // 0x200 - 0x198 (end of a two-entry table) leaves room for two 40-byte headers.
        let three: &[(&str, &[u8])] = &[("a", b"1"), ("b", b"2"), ("c", b"3")];
        let err = append_err(&synthetic(0x1000, 0x200, 0x200), three).to_string();
        assert_eq!(
            err,
            "the stub has room for 2 more section headers, 3 are needed"
        );
    }

    #[test]
    fn bad_names_and_empty_contents_are_refused() {
        let pe = synthetic(0x1000, 0x200, 0x400);
        let cases: [(&str, &[u8], &str); 4] = [
            (".text", b"x", "the stub already has a `.text` section"),
            (".a", b"y", "section `.a` is given more than once"),
            (
                ".toolongname",
                b"x",
                "section name `.toolongname` is longer than 8 bytes",
            ),
            (".x", b"", "section `.x` is empty"),
        ];
        for (name, data, want) in cases {
            assert_eq!(
                append_err(&pe, &[(".a", b"x"), (name, data)]).to_string(),
                want
            );
        }
    }

    #[test]
    fn trailing_data_symbols_signatures_and_used_header_slack_are_refused() {
        let good = synthetic(0x1000, 0x200, 0x400);
        let overlay = [good.as_slice(), b"overlay"].concat();
        assert!(matches!(
            append_err(&overlay, ONE),
            PeError::TrailingData(7, 0xa00)
        ));
        let symbols = patched(&good, 0x4c, 0x600);
        assert!(matches!(
            append_err(&symbols, ONE),
            PeError::SymbolTable(0, 0x600)
        ));
        let signed = patched(&good, OPT + OPT_DATA_DIRS + 36, 8);
        assert!(matches!(append_err(&signed, ONE), PeError::Signed));
        let slack = patched(&good, TABLE + 80 + 44, 0x100);
        let err = append_err(&slack, &[(".a", b"x"), (".b", b"y")]);
        assert!(matches!(err, PeError::HeaderSlackInUse(0x1c5)), "{err}");
    }

    #[test]
    fn arm64_nop_padding_in_the_header_slack_may_be_overwritten() {
        let good = synthetic(0x1000, 0x200, 0x400);
        let nops: Vec<u8> =
            std::iter::repeat_n(0xd503_201f_u32.to_le_bytes(), SECTION_HEADER_LEN / 4)
                .flatten()
                .collect();
        let mut padded = good.clone();
        padded[TABLE + 80..TABLE + 80 + nops.len()].copy_from_slice(&nops);
        let err = append_err(&padded, ONE);
        assert!(matches!(err, PeError::HeaderSlackInUse(_)), "x86_64: {err}");
        let mut arm64 = padded;
        arm64[OPT - 20..OPT - 18].copy_from_slice(&MACHINE_ARM64.to_le_bytes());
        assert!(append_sections(&arm64, ONE).is_ok());
    }

    #[test]
    fn an_unsigned_overlay_is_dropped_and_a_signed_one_kept() {
        let good = synthetic(0x1000, 0x200, 0x400);
        let overlay = [good.as_slice(), b"overlay"].concat();
        let dropped = drop_overlay(&overlay).unwrap();
        assert_eq!(dropped.len(), good.len());
        assert!(PeImage::parse(&dropped).unwrap().checksum_ok());
        assert!(append_sections(&dropped, ONE).is_ok());
        assert_eq!(drop_overlay(&good).unwrap(), good);
        let signed = [
            patched(&good, OPT + OPT_DATA_DIRS + 36, 8).as_slice(),
            b"sig",
        ]
        .concat();
        assert_eq!(drop_overlay(&signed).unwrap(), signed);
    }

    #[test]
    fn truncated_or_garbage_input_is_an_error_not_a_panic() {
        let good = synthetic(0x1000, 0x200, 0x400);
        for len in 0..good.len() {
            assert!(
                PeImage::parse(&good[..len]).is_err(),
                "accepted {len} bytes"
            );
            assert!(append_sections(&good[..len], ONE).is_err());
        }
        assert!(PeImage::parse(&pattern(4096, 13)).is_err());
        let far_lfanew = patched(&good, 0x3c, u32::MAX);
        assert!(matches!(
            PeImage::parse(&far_lfanew),
            Err(PeError::Truncated(..))
        ));
        let pe32 = patched(&good, OPT, 0x0100_010b);
        let err = PeImage::parse(&pe32).err().unwrap().to_string();
        assert_eq!(
            err,
            "not a PE32+ image: optional header magic is 0x10b, PE32+ is 0x20b"
        );
    }

    #[test]
    fn overlapping_or_uncovered_sections_are_rejected() {
        let good = synthetic(0x1000, 0x200, 0x400);
        let parse_err = |off, value| PeImage::parse(&patched(&good, off, value)).err().unwrap();
        let same_va = parse_err(TABLE + 40 + 12, 0x1000);
        assert!(
            matches!(same_va, PeError::Overlap("in memory", ..)),
            "{same_va}"
        );
        let same_raw = parse_err(TABLE + 40 + 20, 0x400);
        assert!(
            matches!(same_raw, PeError::Overlap("on disk", ..)),
            "{same_raw}"
        );
        let small = parse_err(OPT + OPT_SIZE_OF_IMAGE, 0x1000);
        assert!(
            matches!(small, PeError::SizeOfImageTooSmall(0x1000, 0x2010)),
            "{small}"
        );
    }

    fn real_stub() -> Option<Vec<u8>> {
        let how = "apt-get install systemd-boot-efi, or run ci/setup";
        crate::testing::have(
            "systemd's EFI stub",
            std::path::Path::new(STUB).is_file(),
            how,
        )
        .then(|| fs_err::read(STUB).unwrap())
    }

    #[test]
    fn checksum_matches_the_real_stub() {
        let Some(stub) = real_stub() else { return };
        let pe = PeImage::parse(&stub).unwrap();
        assert_eq!(checksum(&stub, pe.layout.opt + OPT_CHECKSUM), 0x0001_aa6c);
        assert!(pe.checksum_ok());
    }

    #[test]
    fn the_real_stub_becomes_a_uki_after_its_symbols_are_stripped() {
        let Some(stub) = real_stub() else { return };
        assert!(matches!(
            append_err(&stub, ONE),
            PeError::SymbolTable(362, 0x11400)
        ));
        let stripped = strip_coff_symbols(&stub).unwrap();
        assert!(PeImage::parse(&stripped).unwrap().checksum_ok());
        let (osrel, initrd, linux) = (pattern(300, 3), pattern(0x2345, 5), pattern(0x8001, 7));
        let sections: [(&str, &[u8]); 5] = [
            (".osrel", &osrel),
            (".cmdline", b"console=ttyS0 quiet"),
            (".uname", b"6.1.0-18-amd64"),
            (".initrd", &initrd),
            (".linux", &linux),
        ];
        let uki = append_sections(&stripped, &sections).unwrap();
        let pe = PeImage::parse(&uki).unwrap();
        assert!(pe.checksum_ok());
        assert_eq!(pe.sections.len(), 13);
        for (name, data) in sections {
            assert_eq!(pe.section_data(name), Some(data), "{name}");
        }
        let file = tempfile::NamedTempFile::new().unwrap();
        fs_err::write(file.path(), &uki).unwrap();
        if crate::testing::program("objdump", "apt-get install binutils, or run ci/setup") {
            let mut objdump = crate::tools::command("objdump").unwrap();
            objdump.arg("-h").arg(file.path());
            let headers = crate::tools::capture(objdump).unwrap();
            assert!(headers.contains(".linux"), "{headers}");
        }
    }
}
