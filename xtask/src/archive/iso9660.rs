//! ISO 9660 images as xorriso writes them (Rock Ridge, Joliet, El Torito), read back for the
//! reproducibility diff, which names the file or volume-descriptor field that differs.
//!
//! Read: the primary volume descriptor (ECMA-119 8.4), the El Torito boot catalog (El Torito
//! 1.0, 2.0-2.5), and the primary directory tree (ECMA-119 9.1) with its SUSP (IEEE P1281) and
//! Rock Ridge (IEEE P1282) NM, PX, TF, SL and CE entries. Not read: the Joliet tree (other names
//! for the same extents), and RRIP CL/RE relocation, which xorriso does only when asked
//! (`-compliance deep_paths_off`): a relocated directory then shows where ISO 9660 put it.
//!
//! Every number in the image is untrusted: reads are bounds-checked, a directory is entered once,
//! CE chains and the bytes read ([`BUDGET`]) are capped, so a corrupt image is an error naming
//! the byte offset, never a panic, a hang or an unbounded allocation.

use std::collections::HashSet;

use anyhow::{bail, ensure, Context, Result};

/// ECMA-119 6.1.2 and 8.1: volume descriptors are 2048-byte sectors from sector 16 on.
const SECTOR: usize = 2048;
const FIRST_DESCRIPTOR: usize = 16 * SECTOR;
/// ECMA-119 9.1.6 file flags.
const FLAG_DIRECTORY: u8 = 0x02;
const FLAG_MULTI_EXTENT: u8 = 0x80;
/// libisofs gives a record one continuation area; a longer CE chain is a loop.
const MAX_CONTINUATIONS: usize = 64;
/// Hard links share one extent, so the bytes read (and the paths made) may add up to more than
/// the image, but not this many times more: overlapping extents could otherwise multiply records,
/// path lengths and memory.
const BUDGET: u64 = 64;

/// Primary volume descriptor fields worth naming in a diff (all as read, strings trimmed of
/// padding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeDescriptor {
    pub system_id: String,
    pub volume_id: String,
    pub volume_set_id: String,
    pub publisher_id: String,
    pub preparer_id: String,
    pub application_id: String,
    /// In logical blocks.
    pub volume_space_size: u32,
    pub logical_block_size: u16,
    /// ECMA-119 8.4.26.1 dec-datetime: the 16 digits as stored (other bytes escaped), then the
    /// offset from GMT in 15-minute units with its sign, e.g. `2023111422132000+0`.
    pub creation: String,
    pub modification: String,
    pub expiration: String,
    pub effective: String,
}

/// One file or directory in the image, as a reader of the mounted ISO sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoEntry {
    /// `/`-separated, no leading slash: the Rock Ridge name (NM) when present, else the ISO 9660
    /// name without its `;1` version and without a trailing `.`.
    pub path: String,
    pub is_dir: bool,
    /// Rock Ridge PX `st_mode`, when present.
    pub mode: Option<u32>,
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// The Rock Ridge TF modify time when present (what a mounted image shows), else the
    /// directory record's recording date. 7-byte times read `2023-11-14 22:13:20 +0` (the offset
    /// in 15-minute units); 17-byte TF times are written like [`VolumeDescriptor::creation`].
    pub mtime: String,
    /// Rock Ridge SL target, when present.
    pub symlink: Option<String>,
    /// First logical block (of the first extent, for a multi-extent file).
    pub extent: u32,
    /// File bytes, all extents joined; empty for directories.
    pub data: Vec<u8>,
}

/// One El Torito boot image: the default entry, then each section entry in catalog order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootEntry {
    /// From the validation entry (default entry) or the section header (0 BIOS, 0xEF UEFI).
    pub platform: u8,
    pub bootable: bool,
    /// The boot media type byte as stored (low nibble: 0 = no emulation).
    pub media: u8,
    pub load_segment: u16,
    /// In 512-byte virtual sectors.
    pub sector_count: u16,
    /// In 2048-byte sectors.
    pub load_rba: u32,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IsoImage {
    pub primary: VolumeDescriptor,
    pub boot: Vec<BootEntry>,
    /// Sorted by path.
    pub entries: Vec<IsoEntry>,
}

/// Whether `bytes` looks like an ISO 9660 image ("CD001" at byte 32769).
pub fn is_iso(bytes: &[u8]) -> bool {
    bytes.get(FIRST_DESCRIPTOR + 1..FIRST_DESCRIPTOR + 6) == Some(b"CD001")
}

/// Reads the primary volume descriptor, the El Torito boot catalog (when a boot record volume
/// descriptor exists) and every file and directory by walking the primary directory tree from
/// the root record. Errors name the byte offset and what was wrong.
pub fn read_image(bytes: &[u8]) -> Result<IsoImage> {
    let at = FIRST_DESCRIPTOR + 1;
    ensure!(
        is_iso(bytes),
        "not an ISO 9660 image: no CD001 at byte {at:#x}"
    );
    let (pvd_at, pvd, catalog) = descriptors(bytes)?;
    let primary = volume_descriptor(pvd);
    let block = primary.logical_block_size;
    ensure!(
        matches!(block, 512 | 1024 | 2048),
        "logical block size at byte {:#x} is {block}, not 512, 1024 or 2048",
        pvd_at + 128
    );
    let boot = match catalog {
        Some(sector) => boot_catalog(bytes, sector)?,
        None => Vec::new(),
    };
    let root = record(pvd, 156, pvd_at as u64 + 156).context("the root directory record")?;
    let mut walker = Walker::new(bytes, usize::from(block), &root)?;
    walker.walk()?;
    let mut entries = walker.entries;
    entries.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(IsoImage {
        primary,
        boot,
        entries,
    })
}

/// `len` bytes at `at`, or an error naming `what` and where it would have been.
fn slice<'a>(img: &'a [u8], at: u64, len: u64, what: &str) -> Result<&'a [u8]> {
    let range = at.checked_add(len).and_then(|end| {
        let (start, end) = (usize::try_from(at).ok()?, usize::try_from(end).ok()?);
        img.get(start..end)
    });
    range.with_context(|| {
        let size = img.len();
        format!("{what} at byte {at:#x} ({len} bytes) runs past the end of the {size}-byte image")
    })
}

fn le16(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(at..at + 2)?.try_into().ok()?))
}

/// The little-endian half of a both-endian field (ECMA-119 7.2.3, 7.3.3), as Linux reads it.
fn le32(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

/// Walks the descriptor set (ECMA-119 8.1, from sector 16 to the type-255 terminator): the first
/// primary descriptor (offset and bytes), and the boot catalog's sector if a boot record has one.
fn descriptors(img: &[u8]) -> Result<(usize, &[u8], Option<u32>)> {
    let (mut primary, mut catalog) = (None, None);
    // Each step moves one sector on, and `slice` fails at the end: this loop ends.
    for at in (FIRST_DESCRIPTOR..).step_by(SECTOR) {
        let what = "volume descriptor (no terminator?)";
        let vd = slice(img, at as u64, SECTOR as u64, what)?;
        ensure!(
            vd[1..6] == *b"CD001",
            "volume descriptor at byte {at:#x} lacks the CD001 identifier"
        );
        match vd[0] {
            255 => break,
            1 if primary.is_none() => primary = Some((at, vd)),
            // El Torito 2.0: the boot system id, then the catalog's sector at byte 71.
            0 if vd[7..30] == *b"EL TORITO SPECIFICATION" => catalog = le32(vd, 71),
            _ => {}
        }
    }
    let (at, vd) = primary.context("the volume descriptor set has no primary descriptor")?;
    Ok((at, vd, catalog))
}

/// Reads a 2048-byte primary volume descriptor (ECMA-119 8.4).
fn volume_descriptor(vd: &[u8]) -> VolumeDescriptor {
    let text = |from: usize, to: usize| {
        let raw = String::from_utf8_lossy(vd.get(from..to).unwrap_or_default());
        raw.trim_end_matches([' ', '\0']).to_string()
    };
    let date = |at: usize| dec_datetime(vd.get(at..at + 17).unwrap_or_default());
    VolumeDescriptor {
        system_id: text(8, 40),
        volume_id: text(40, 72),
        volume_set_id: text(190, 318),
        publisher_id: text(318, 446),
        preparer_id: text(446, 574),
        application_id: text(574, 702),
        volume_space_size: le32(vd, 80).unwrap_or_default(),
        logical_block_size: le16(vd, 128).unwrap_or_default(),
        creation: date(813),
        modification: date(830),
        expiration: date(847),
        effective: date(864),
    }
}

/// ECMA-119 8.4.26.1: 16 ASCII digits and a signed offset in 15-minute units.
fn dec_datetime(b: &[u8]) -> String {
    let (digits, offset) = b.split_at(b.len().min(16));
    let offset = offset.first().map_or(0, |&o| o as i8);
    format!("{}{offset:+}", digits.escape_ascii())
}

/// ECMA-119 9.1.5: years since 1900, month, day, hour, minute, second, offset (15 minutes).
fn record_date(b: &[u8]) -> String {
    match *b {
        [y, mo, d, h, mi, s, off] => format!(
            "{}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02} {:+}",
            1900 + u16::from(y),
            off as i8
        ),
        _ => dec_datetime(b),
    }
}

/// The boot catalog (El Torito 2.1-2.5): a validation entry, the default entry, then section
/// headers (0x90, or 0x91 for the last), each followed by its entries and their 0x44 extensions.
fn boot_catalog(img: &[u8], sector: u32) -> Result<Vec<BootEntry>> {
    let start = u64::from(sector) * SECTOR as u64;
    let entry = |i: usize| slice(img, start + 32 * i as u64, 32, "El Torito catalog entry");
    let validation = entry(0)?;
    let words = (0..32).step_by(2).filter_map(|i| le16(validation, i));
    let sum = words.fold(0u16, u16::wrapping_add);
    ensure!(
        validation[0] == 1 && validation[30..] == [0x55, 0xAA] && sum == 0,
        "El Torito validation entry at byte {start:#x}: header {}, key {:02x?}, word sum {sum:#x} \
         (want 1, [55, aa], 0)",
        validation[0],
        &validation[30..]
    );
    let mut boot = vec![boot_entry(entry(1)?, validation[1])];
    // Each step reads a later entry, and `entry` fails at the end of the image: this ends.
    let mut i = 2;
    while let header @ [0x90 | 0x91, platform, ..] = entry(i)? {
        i += 1;
        for _ in 0..le16(header, 2).unwrap_or_default() {
            boot.push(boot_entry(entry(i)?, *platform));
            i += 1;
            while entry(i)?[0] == 0x44 {
                i += 1;
            }
        }
        if header[0] == 0x91 {
            break;
        }
    }
    Ok(boot)
}

fn boot_entry(e: &[u8], platform: u8) -> BootEntry {
    BootEntry {
        platform,
        bootable: e[0] == 0x88,
        media: e[1],
        load_segment: le16(e, 2).unwrap_or_default(),
        sector_count: le16(e, 6).unwrap_or_default(),
        load_rba: le32(e, 8).unwrap_or_default(),
    }
}

/// One directory record (ECMA-119 9.1), borrowed from its directory.
struct Record<'a> {
    at: u64,
    extent: u32,
    size: u32,
    flags: u8,
    date: &'a [u8],
    name: &'a [u8],
    system_use: &'a [u8],
    system_use_at: u64,
}

/// The record at `pos` in `dir`; `at` is its offset in the image, for messages.
fn record(dir: &[u8], pos: usize, at: u64) -> Result<Record<'_>> {
    let len = dir.get(pos).map_or(0, |&l| usize::from(l));
    let rec = dir.get(pos..pos + len).filter(|_| len >= 34);
    let rec = rec.with_context(|| {
        format!("directory record at byte {at:#x}: length {len} is under 34 or past its directory")
    })?;
    let name_len = usize::from(rec[32]);
    let name = rec.get(33..33 + name_len).with_context(|| {
        format!("directory record at byte {at:#x}: a {name_len}-byte name overruns its {len} bytes")
    })?;
    // 9.1.12: a padding byte follows a name of even length.
    let su_start = 33 + name_len + (1 - name_len % 2);
    Ok(Record {
        at,
        extent: le32(rec, 2).unwrap_or_default(),
        size: le32(rec, 10).unwrap_or_default(),
        flags: rec[25],
        date: &rec[18..25],
        name,
        system_use: rec.get(su_start..).unwrap_or_default(),
        system_use_at: at + su_start as u64,
    })
}

/// What the SUSP entries of one record say.
#[derive(Default)]
struct RockRidge {
    name: Option<Vec<u8>>,
    mode: Option<u32>,
    uid: Option<u32>,
    gid: Option<u32>,
    modified: Option<String>,
    symlink: Option<String>,
    /// The last SL component continues into the next (no `/` between them).
    symlink_glued: bool,
}

/// Applies one SUSP entry (`e` is its data after the 4-byte header); None if it is too short.
fn apply(rr: &mut RockRidge, signature: &[u8], e: &[u8]) -> Option<()> {
    match signature {
        // RRIP 4.1.4: flags, then part of the name; CONTINUE parts are concatenated.
        b"NM" => rr.name.get_or_insert_with(Vec::new).extend(e.get(1..)?),
        // RRIP 4.1.1: both-endian mode, links, uid, gid (and inode in 1.12).
        b"PX" => {
            let (mode, uid, gid) = (le32(e, 0)?, le32(e, 16)?, le32(e, 24)?);
            (rr.mode, rr.uid, rr.gid) = (Some(mode), Some(uid), Some(gid));
        }
        // RRIP 4.1.6: flags, then a stamp per flag bit in bit order; only CREATION precedes MODIFY.
        b"TF" if e.first()? & 0x02 != 0 => {
            let size = if e[0] & 0x80 != 0 { 17 } else { 7 };
            let at = 1 + usize::from(e[0] & 0x01) * size;
            rr.modified = Some(record_date(e.get(at..at + size)?));
        }
        b"SL" => symlink_components(rr, e.get(1..)?)?,
        _ => {}
    }
    Some(())
}

/// RRIP 4.1.3.1: components of flags, length and content; CURRENT, PARENT and ROOT have none.
fn symlink_components(rr: &mut RockRidge, mut c: &[u8]) -> Option<()> {
    let target = rr.symlink.get_or_insert_with(String::new);
    while let [flags, len, rest @ ..] = c {
        let text = rest.get(..usize::from(*len))?;
        if !rr.symlink_glued && !target.is_empty() && target != "/" {
            target.push('/');
        }
        match flags & 0x0E {
            0x02 => target.push('.'),
            0x04 => target.push_str(".."),
            0x08 => target.push('/'),
            _ => target.push_str(&String::from_utf8_lossy(text)),
        }
        rr.symlink_glued = flags & 0x01 != 0;
        c = &rest[text.len()..];
    }
    Some(())
}

/// Applies the entries of one SUSP area; returns the CE continuation (block, offset, length).
fn susp_area(rr: &mut RockRidge, area: &[u8], at: u64) -> Result<Option<(u64, u64, u64)>> {
    let mut next = None;
    let mut pos = 0;
    // SUSP 5.1: each entry is signature, length, version, data; fewer than 4 bytes is padding.
    while let Some(&[s0, s1, len, _]) = area.get(pos..pos + 4) {
        let (signature, len, entry_at) = ([s0, s1], usize::from(len), at + pos as u64);
        if signature == [0, 0] || &signature == b"ST" {
            break;
        }
        let sig = signature.escape_ascii();
        let entry = area.get(pos..pos + len).filter(|_| len >= 4);
        let entry = entry.with_context(|| {
            format!("SUSP {sig} entry at byte {entry_at:#x}: length {len} does not fit its area")
        })?;
        let too_short = || format!("SUSP {sig} entry at byte {entry_at:#x} is too short");
        if &signature == b"CE" {
            // SUSP 5.1 CE: block, offset and length of the continuation area, each both-endian.
            let field = |i| le32(entry, i).map(u64::from);
            let ce = (|| Some((field(4)?, field(12)?, field(20)?)))();
            next = Some(ce.with_context(too_short)?);
        } else {
            apply(rr, &signature, &entry[4..]).with_context(too_short)?;
        }
        pos += len;
    }
    Ok(next)
}

/// The ISO 9660 name a reader without Rock Ridge shows: no `;1` version, no trailing dot.
fn iso_name(name: &[u8]) -> String {
    let name = name.split(|&b| b == b';').next().unwrap_or_default();
    let name = name.strip_suffix(b".").unwrap_or(name);
    String::from_utf8_lossy(name).into_owned()
}

struct Walker<'a> {
    img: &'a [u8],
    block: usize,
    /// SUSP LEN_SKP, when the root's `.` record has an SP entry (SUSP 5.3); else no SUSP.
    susp_skip: Option<usize>,
    /// Directories to read: path, extent, size.
    stack: Vec<(String, u32, u32)>,
    visited: HashSet<u32>,
    /// Bytes left to read as directories or file data, or to spend on paths.
    budget: u64,
    entries: Vec<IsoEntry>,
}

impl<'a> Walker<'a> {
    fn new(img: &'a [u8], block: usize, root: &Record) -> Result<Self> {
        let at = u64::from(root.extent) * block as u64;
        let head = slice(img, at, block as u64, "the root directory's first record")?;
        let susp_skip = match record(head, 0, at)?.system_use {
            [b'S', b'P', 7, 1, 0xBE, 0xEF, skip, ..] => Some(usize::from(*skip)),
            _ => None,
        };
        Ok(Walker {
            img,
            block,
            susp_skip,
            stack: vec![(String::new(), root.extent, root.size)],
            visited: HashSet::new(),
            budget: img.len() as u64 * BUDGET,
            entries: Vec::new(),
        })
    }

    fn walk(&mut self) -> Result<()> {
        while let Some((path, extent, size)) = self.stack.pop() {
            ensure!(
                self.visited.insert(extent),
                "directory /{path} at block {extent} was already read: the tree loops"
            );
            self.spend(u64::from(size), &path)?;
            let at = u64::from(extent) * self.block as u64;
            let dir = slice(self.img, at, u64::from(size), &format!("directory /{path}"))?;
            self.read_directory(&path, dir, at)?;
        }
        Ok(())
    }

    fn read_directory(&mut self, parent: &str, dir: &'a [u8], at: u64) -> Result<()> {
        let mut records = Vec::new();
        let mut pos = 0;
        while let Some(&len) = dir.get(pos) {
            if len == 0 {
                // 6.8.1.1: records do not cross sectors; zeros fill the rest of one.
                pos = (pos / self.block + 1) * self.block;
                continue;
            }
            records.push(record(dir, pos, at + pos as u64)?);
            pos += usize::from(len);
        }
        // Not `.` and `..`. ECMA-119 6.5.1: a file of several extents has a record for each, in
        // a row, all but the last flagged.
        records.retain(|r| r.name != [0] && r.name != [1]);
        for extents in records.chunk_by(|a, _| a.flags & FLAG_MULTI_EXTENT != 0) {
            let entry = self.entry(parent, extents)?;
            self.entries.push(entry);
        }
        Ok(())
    }

    /// The entry for the records of one file (one per extent); a directory is also queued.
    fn entry(&mut self, parent: &str, extents: &[Record<'a>]) -> Result<IsoEntry> {
        let (rec, more) = extents.split_first().context("a file without records")?;
        ensure!(
            more.last().unwrap_or(rec).flags & FLAG_MULTI_EXTENT == 0
                && more.iter().all(|r| r.name == rec.name),
            "record at byte {:#x}: its extents' records do not follow it to a last one",
            rec.at
        );
        let rr = self.rock_ridge(rec.system_use, rec.system_use_at)?;
        let name = match &rr.name {
            Some(name) => String::from_utf8_lossy(name).into_owned(),
            None => iso_name(rec.name),
        };
        ensure!(
            !matches!(name.as_str(), "" | "." | "..") && !name.contains('/'),
            "record at byte {:#x}: {name:?} is not a file name",
            rec.at
        );
        let path = match parent {
            "" => name,
            _ => format!("{parent}/{name}"),
        };
        self.spend(path.len() as u64, &path)?;
        let is_dir = rec.flags & FLAG_DIRECTORY != 0;
        let mut data = Vec::new();
        if is_dir {
            self.stack.push((path.clone(), rec.extent, rec.size));
        } else {
            for extent in extents {
                data.extend_from_slice(self.data(extent, &path)?);
            }
        }
        Ok(IsoEntry {
            path,
            is_dir,
            mode: rr.mode,
            uid: rr.uid,
            gid: rr.gid,
            mtime: rr.modified.unwrap_or_else(|| record_date(rec.date)),
            symlink: rr.symlink,
            extent: rec.extent,
            data,
        })
    }

    fn data(&mut self, rec: &Record, path: &str) -> Result<&'a [u8]> {
        if rec.size == 0 {
            return Ok(&[]); // libisofs may give an empty file any block address
        }
        let size = u64::from(rec.size);
        self.spend(size, path)?;
        let at = u64::from(rec.extent) * self.block as u64;
        slice(self.img, at, size, &format!("data of {path}"))
    }

    fn spend(&mut self, size: u64, path: &str) -> Result<()> {
        let Some(left) = self.budget.checked_sub(size) else {
            bail!("/{path}: directories, files and paths add up to over {BUDGET} times the image");
        };
        self.budget = left;
        Ok(())
    }

    /// Parses the SUSP entries of a System Use field (`at` is its offset), following CE.
    fn rock_ridge(&self, system_use: &[u8], at: u64) -> Result<RockRidge> {
        let mut rr = RockRidge::default();
        let Some(skip) = self.susp_skip else {
            return Ok(rr);
        };
        // SUSP 5.3: LEN_SKP bytes open each System Use field, but not continuation areas.
        let mut area = system_use.get(skip..).unwrap_or_default();
        let mut area_at = at + skip as u64;
        for _ in 0..MAX_CONTINUATIONS {
            let Some((block, offset, len)) = susp_area(&mut rr, area, area_at)? else {
                return Ok(rr);
            };
            area_at = block * self.block as u64 + offset;
            area = slice(self.img, area_at, len, "SUSP continuation area")?;
        }
        let most = MAX_CONTINUATIONS;
        bail!("SUSP entries at byte {at:#x}: more than {most} continuation areas (a CE loop?)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fs_err as fs;
    use fs_err::os::unix::fs::symlink;
    use std::os::unix::fs::MetadataExt;
    use std::path::Path;
    use std::time::{Duration, SystemTime};

    const EPOCH: u64 = 1_700_000_000;
    const LONG_NAME: &str = "ReadMe_With_A_Long_Mixed_Case_Name.txt";

    fn pattern(len: usize, seed: usize) -> Vec<u8> {
        (0..len).map(|i| (i * 7 + seed) as u8).collect()
    }

    /// libisofs refuses components over 255 bytes, so no SL component continues into another.
    fn long_target() -> String {
        format!("{}end", "dir/".repeat(100))
    }

    fn set_mtime(path: &Path) {
        let file = fs::File::options().write(true).open(path).unwrap();
        let when = SystemTime::UNIX_EPOCH + Duration::from_secs(EPOCH);
        file.set_modified(when).unwrap();
    }

    /// A tree under `dir/src`: a nested directory, a long mixed-case name, three symlinks (one
    /// of 100 components, which needs several SL entries in a CE area) and a multi-block file.
    fn tree(dir: &Path) -> std::path::PathBuf {
        let src = dir.join("src");
        fs::create_dir_all(src.join("docs/nested/deeper")).unwrap();
        fs::write(src.join("hello.txt"), b"hello\n").unwrap();
        fs::write(src.join("big.bin"), pattern(5000, 1)).unwrap();
        fs::write(src.join("docs/nested").join(LONG_NAME), b"read me\n").unwrap();
        symlink(format!("docs/nested/{LONG_NAME}"), src.join("link")).unwrap();
        symlink("/usr/../bin/./sh", src.join("abs")).unwrap();
        symlink(long_target(), src.join("long")).unwrap();
        for file in ["hello.txt", "big.bin"] {
            set_mtime(&src.join(file));
        }
        src
    }

    /// `xorriso <args> -o <dir>/<out> <dir>/src`; None when xorriso is
    /// missing (a skip, or a failure under `KILN_TEST_REQUIRE=all`).
    fn xorriso(dir: &Path, out: &str, args: &[&str]) -> Option<Vec<u8>> {
        if !crate::testing::program("xorriso", "apt-get install xorriso, or run ci/setup") {
            return None;
        }
        let iso = dir.join(out);
        let mut cmd = crate::tools::command("xorriso").unwrap();
        cmd.args(args)
            .arg("-o")
            .arg(&iso)
            .arg(dir.join("src"))
            .env("SOURCE_DATE_EPOCH", EPOCH.to_string());
        crate::tools::capture(cmd).unwrap_or_else(|e| panic!("{e:#}"));
        Some(fs::read(iso).unwrap())
    }

    const MKISOFS: &[&str] = &["-as", "mkisofs", "-R", "-J", "-V", "KILNTEST"];

    fn entry<'a>(image: &'a IsoImage, path: &str) -> &'a IsoEntry {
        let found = image.entries.iter().find(|e| e.path == path);
        found.unwrap_or_else(|| panic!("{path} missing from {:?}", paths(image)))
    }

    fn paths(image: &IsoImage) -> Vec<&str> {
        image.entries.iter().map(|e| e.path.as_str()).collect()
    }

    #[test]
    fn rock_ridge_names_contents_links_and_modes_come_back_exactly() {
        let dir = tempfile::tempdir().unwrap();
        let src = tree(dir.path());
        let Some(iso) = xorriso(dir.path(), "out.iso", MKISOFS) else {
            return;
        };
        assert!(is_iso(&iso));
        let image = read_image(&iso).unwrap();
        let expected = [
            "abs",
            "big.bin",
            "docs",
            "docs/nested",
            &format!("docs/nested/{LONG_NAME}"),
            "docs/nested/deeper",
            "hello.txt",
            "link",
            "long",
        ];
        assert_eq!(paths(&image), expected);
        assert_eq!(entry(&image, "big.bin").data, pattern(5000, 1));
        assert_eq!(entry(&image, "hello.txt").data, b"hello\n");
        let readme = entry(&image, &format!("docs/nested/{LONG_NAME}"));
        assert_eq!(readme.data, b"read me\n");
        let link = entry(&image, "link");
        let target = format!("docs/nested/{LONG_NAME}");
        assert_eq!(link.symlink.as_deref(), Some(target.as_str()));
        assert_eq!(link.mode.map(|m| m & 0o170000), Some(0o120000));
        assert!(link.data.is_empty());
        assert_eq!(
            entry(&image, "abs").symlink.as_deref(),
            Some("/usr/../bin/./sh")
        );
        assert_eq!(entry(&image, "long").symlink, Some(long_target()));
        let hello = entry(&image, "hello.txt");
        assert_eq!(hello.mtime, "2023-11-14 22:13:20 +0");
        assert_eq!(hello.mode.map(|m| m & 0o170000), Some(0o100000));
        let owner = fs::metadata(src.join("hello.txt")).unwrap();
        assert_eq!(
            (hello.uid, hello.gid),
            (Some(owner.uid()), Some(owner.gid()))
        );
        let nested = entry(&image, "docs/nested");
        assert!(nested.is_dir && nested.data.is_empty() && nested.symlink.is_none());
        assert_eq!(nested.mode.map(|m| m & 0o170000), Some(0o040000));
    }

    #[test]
    fn primary_volume_descriptor_fields_are_read_and_trimmed() {
        let dir = tempfile::tempdir().unwrap();
        tree(dir.path());
        let Some(iso) = xorriso(dir.path(), "out.iso", MKISOFS) else {
            return;
        };
        let pvd = read_image(&iso).unwrap().primary;
        assert_eq!(pvd.volume_id, "KILNTEST");
        assert_eq!(pvd.logical_block_size, 2048);
        assert_eq!(pvd.volume_space_size as usize * 2048, iso.len());
        assert_eq!(pvd.creation, "2023111422132000+0");
        assert_eq!(pvd.modification, "2023111422132000+0");
        assert_eq!(pvd.expiration, "0000000000000000+0");
        assert!(!pvd.application_id.ends_with(' '), "{pvd:?}");
    }

    #[test]
    fn images_differing_in_one_file_differ_only_in_that_entry() {
        let dir = tempfile::tempdir().unwrap();
        let src = tree(dir.path());
        let Some(a) = xorriso(dir.path(), "a.iso", MKISOFS) else {
            return;
        };
        fs::write(src.join("big.bin"), pattern(5000, 2)).unwrap();
        set_mtime(&src.join("big.bin"));
        let b = xorriso(dir.path(), "b.iso", MKISOFS).unwrap();
        assert_ne!(a, b);
        let (a, b) = (read_image(&a).unwrap(), read_image(&b).unwrap());
        assert_eq!(a.primary, b.primary);
        assert_eq!(a.boot, b.boot);
        assert_eq!(paths(&a), paths(&b));
        let differ: Vec<_> = a
            .entries
            .iter()
            .zip(&b.entries)
            .filter(|(x, y)| x != y)
            .collect();
        assert_eq!(differ.len(), 1, "{differ:?}");
        let (x, y) = differ[0];
        assert_eq!(x.path, "big.bin");
        assert_eq!(
            IsoEntry {
                data: y.data.clone(),
                ..x.clone()
            },
            *y
        );
    }

    #[test]
    fn boot_catalog_lists_bios_and_uefi_images() {
        let dir = tempfile::tempdir().unwrap();
        let src = tree(dir.path());
        fs::create_dir(src.join("boot")).unwrap();
        fs::write(src.join("boot/boot.img"), pattern(2048, 3)).unwrap();
        fs::write(src.join("boot/efi.img"), vec![0; 64 * 1024]).unwrap();
        let args = [
            MKISOFS,
            &[
                "-b",
                "boot/boot.img",
                "-no-emul-boot",
                "-boot-load-size",
                "4",
            ],
            &["-c", "boot/boot.cat", "-eltorito-alt-boot"],
            &["-e", "boot/efi.img", "-no-emul-boot"],
        ];
        let Some(iso) = xorriso(dir.path(), "out.iso", &args.concat()) else {
            return;
        };
        let image = read_image(&iso).unwrap();
        let at = |path| entry(&image, path).extent;
        let boot = |platform, sector_count, load_rba| BootEntry {
            platform,
            bootable: true,
            media: 0,
            load_segment: 0,
            sector_count,
            load_rba,
        };
        let expected = [
            boot(0, 4, at("boot/boot.img")),
            boot(0xEF, 128, at("boot/efi.img")),
        ];
        assert_eq!(image.boot, expected);
        assert_eq!(entry(&image, "boot/boot.img").data, pattern(2048, 3));
        assert_eq!(entry(&image, "boot/boot.cat").data.len(), 2048);
    }

    #[test]
    fn without_rock_ridge_names_lose_their_version_and_trailing_dot() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir_all(dir.path().join("src/sub")).unwrap();
        fs::write(dir.path().join("src/sub/hello.txt"), b"hi").unwrap();
        fs::write(dir.path().join("src/README"), b"x").unwrap();
        let args = ["-as", "mkisofs", "--norock", "-V", "KILNTEST"];
        let Some(iso) = xorriso(dir.path(), "out.iso", &args) else {
            return;
        };
        let image = read_image(&iso).unwrap();
        assert_eq!(paths(&image), ["README", "SUB", "SUB/HELLO.TXT"]);
        let hello = entry(&image, "SUB/HELLO.TXT");
        assert_eq!((hello.data.as_slice(), hello.mode), (&b"hi"[..], None));
    }

    /// The offset of the directory record named `name` in the root directory.
    fn root_record(iso: &[u8], name: &[u8]) -> usize {
        let root = le32(iso, FIRST_DESCRIPTOR + 158).unwrap() as usize * 2048;
        let dir = &iso[root..root + 2048];
        let at = dir.windows(name.len()).position(|w| w == name).unwrap();
        root + at - 33
    }

    fn error(iso: &[u8]) -> String {
        match read_image(iso) {
            Ok(image) => panic!("read without error: {:?}", paths(&image)),
            Err(e) => format!("{e:#}"),
        }
    }

    #[test]
    fn corrupt_images_are_errors_that_name_the_problem() {
        assert!(!is_iso(b"") && !is_iso(&[0; 40_000]));
        assert!(
            error(&[0; 40_000]).contains("CD001"),
            "{}",
            error(&[0; 40_000])
        );
        let dir = tempfile::tempdir().unwrap();
        tree(dir.path());
        let Some(iso) = xorriso(dir.path(), "out.iso", MKISOFS) else {
            return;
        };
        let mut far = iso.clone();
        far[FIRST_DESCRIPTOR + 158..FIRST_DESCRIPTOR + 162].copy_from_slice(&[0, 0, 0, 1]);
        assert!(error(&far).contains("root directory"), "{}", error(&far));

        let mut looped = iso.clone();
        let docs = root_record(&iso, b"DOCS");
        looped.copy_within(FIRST_DESCRIPTOR + 158..FIRST_DESCRIPTOR + 162, docs + 2);
        assert!(
            error(&looped).contains("the tree loops"),
            "{}",
            error(&looped)
        );

        // A CE entry (SUSP 5.1) that continues at itself, in place of the PX of DOCS.
        let mut ce_loop = iso.clone();
        let px = docs + 33 + 5;
        assert_eq!(&iso[px..px + 2], b"PX");
        let mut ce = b"CE\x1c\x01".to_vec();
        for field in [px as u32 / 2048, px as u32 % 2048, 28] {
            ce.extend(field.to_le_bytes().iter().chain(&field.to_be_bytes()));
        }
        ce.extend(b"ST\x04\x01");
        ce_loop[px..px + 32].copy_from_slice(&ce);
        assert!(error(&ce_loop).contains("CE loop"), "{}", error(&ce_loop));

        let big = entry(&read_image(&iso).unwrap(), "big.bin").extent as usize * 2048;
        let cut = error(&iso[..big + 100]);
        assert!(cut.contains("data of big.bin at byte 0x"), "{cut}");
        for cut in (0..iso.len()).step_by(509) {
            let _ = read_image(&iso[..cut]);
        }
    }

    #[test]
    fn random_damage_to_the_metadata_never_panics() {
        let dir = tempfile::tempdir().unwrap();
        tree(dir.path());
        let Some(iso) = xorriso(dir.path(), "out.iso", MKISOFS) else {
            return;
        };
        let metadata = FIRST_DESCRIPTOR..iso.len().min(64 * 2048);
        let mut state = 0x2545_f491_4f6c_dd1d_u64;
        let mut next = || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        for _ in 0..2000 {
            let mut damaged = iso.clone();
            for _ in 0..1 + next() % 8 {
                let at = metadata.start + (next() as usize) % metadata.len();
                damaged[at] = next() as u8;
            }
            let _ = read_image(&damaged);
        }
    }
}
