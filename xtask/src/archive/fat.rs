//! FAT images for the EFI System Partition: written in memory from a list of files (the El Torito
//! EFI boot image of a hybrid ISO, or a raw drive for OVMF), and read back for tests and for the
//! reproducibility diff, which names the file or boot-sector field that differs.
//!
//! The bytes are a function of the inputs alone:
//! - Serial: mkfs.fat takes the volume id from the clock; here the caller fixes it
//!   ([`FatOptions::volume_id`]), so it belongs to the recipe, not to the moment of the build.
//! - Time: fatfs stamps every entry it creates through a `TimeProvider`. One that always answers
//!   [`FatOptions::epoch`] makes each created/modified/accessed field say when the inputs were
//!   made (SOURCE_DATE_EPOCH), never when the image was built.
//! - Geometry: the size comes from the contents, rounded up to [`SIZE_UNIT`]; sector size, FAT
//!   count, root entries and drive number are pinned, not left to fatfs's defaults. Clusters
//!   start at 2 KiB and double while FAT16 would overflow, as mkfs.fat does for a disk; fatfs
//!   then picks FAT12 or FAT16 by cluster count. FAT32 (4 KiB clusters) only from 512 MiB.
//! - Order: files are created in path order, parents first, so cluster allocation depends only on
//!   the set of paths. The buffer starts zeroed, so free space and cluster tails are zeros.
//!
//! fatfs 0.3.6 writes a long-name entry before `.` and before `..` in every directory
//! (rafalh/rust-fatfs#117), and on FAT32 points `..` of the root's children at the root cluster
//! instead of 0; fsck.fat calls both corruption, so `fix_dot_entries` rewrites them afterwards.
//! Constants it writes that come from no input: OEM name `MSWIN4.1`, its "not a bootable disk"
//! boot code, 32 sectors/track and 64 heads, zero timestamps on the volume-label entry, and a
//! long name for every entry, even 8.3 ones.

use std::collections::BTreeMap;
use std::io::{Cursor, Read, Write};
use std::sync::{Mutex, PoisonError};

use anyhow::{anyhow, bail, ensure, Context, Result};
use fatfs::{Date, DateTime, FatType, FileSystem, FormatVolumeOptions, FsOptions, Time};

/// The key-bearing version (`super::Format`) of the FAT image writer: bump it
/// when the bytes change.
pub const FORMAT: super::Format = super::Format {
    name: "fat",
    version: 1,
};

/// Image sizes are whole multiples of this, so small content changes rarely move the layout.
pub const SIZE_UNIT: u64 = 64 * 1024;
const SECTOR: u64 = 512;
const ROOT_ENTRIES: u16 = 512;
/// Slack for fatfs rounding the FAT up past our estimate.
const MARGIN_CLUSTERS: u64 = 16;
const FAT16_MAX_CLUSTERS: u64 = 65_524;
const FAT32_FROM_BYTES: u64 = 512 << 20;
/// An ESP holds a few hundred MiB at most; more is a recipe mistake, not an image to build.
const MAX_IMAGE_BYTES: u64 = 4 << 30;

/// How the volume is labelled and stamped.
pub struct FatOptions {
    /// Up to 11 ASCII characters; upper-cased and space-padded here.
    pub volume_label: String,
    /// The serial: fixed by the caller, never random.
    pub volume_id: u32,
    /// Seconds since 1970 (UTC): every timestamp in the image.
    pub epoch: u64,
}

/// One file as read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatFile {
    pub path: String,
    pub data: Vec<u8>,
    /// Year, month, day, hour, minute, second.
    pub modified: (u16, u16, u16, u16, u16, u16),
}

/// Boot-sector fields worth naming in a diff.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FatHeader {
    pub fat_type: String,
    pub volume_id: u32,
    pub volume_label: String,
    pub bytes_per_sector: u16,
    pub sectors_per_cluster: u8,
    pub total_sectors: u32,
}

/// Writes a FAT image holding `files` (`/`-separated paths; parents are created).
pub fn write_image(files: &BTreeMap<String, Vec<u8>>, opts: &FatOptions) -> Result<Vec<u8>> {
    let dirs = directory_entries(files)?;
    let sizes: Vec<u64> = files.values().map(|d| d.len() as u64).collect();
    let (cluster, bytes) = geometry(&sizes, &dirs)?;
    let label = label_bytes(&opts.volume_label)?;
    let mut image = format(cluster, bytes, label, opts.volume_id)
        .with_context(|| format!("formatting a {bytes}-byte FAT image"))?;
    populate(&mut image, files, opts.epoch)?;
    fix_dot_entries(&mut image).context("moving . and .. to the front of each directory")?;
    // fatfs treats a name equal to another entry's generated 8.3 alias as that entry and writes
    // over it; reading back catches every such merge (and any slip in the fix above).
    let (_, back) = read_image(&image).context("reading back the FAT image just written")?;
    let mut back = back.iter().map(|f| (&f.path, &f.data));
    for (path, data) in files {
        let clash = "does it clash with another name's 8.3 alias?";
        ensure!(
            back.next() == Some((path, data)),
            "{path} did not read back as written: {clash}"
        );
    }
    ensure!(
        back.next().is_none(),
        "the FAT image holds more files than were written"
    );
    Ok(image)
}

/// Checks every path and counts the 32-byte entries each directory ("" is the root) will hold.
fn directory_entries(files: &BTreeMap<String, Vec<u8>>) -> Result<BTreeMap<String, u64>> {
    // Keyed by upper-cased path: FAT names are case-insensitive, so `a` and `A` are one entry.
    let mut seen: BTreeMap<String, (&str, bool)> = BTreeMap::new();
    let mut dirs = BTreeMap::from([(String::new(), 1)]); // the volume label lives in the root
    for (path, data) in files {
        ensure!(data.len() < 1 << 32, "{path}: FAT files are below 4 GiB");
        let mut end = 0;
        for name in path.split('/') {
            check_name(name).with_context(|| format!("FAT image path {path:?}"))?;
            let parent = &path[..end.max(1) - 1];
            end += name.len() + 1;
            let (full, is_dir) = (&path[..end - 1], end <= path.len());
            match seen.insert(full.to_uppercase(), (full, is_dir)) {
                Some(old) if old == (full, true) && is_dir => continue,
                Some((other, _)) if other == full => bail!("{full} is both a file and a directory"),
                Some((other, _)) => bail!("{full} and {other} are one name on FAT (no case)"),
                None => {}
            }
            let entries = name.encode_utf16().count().div_ceil(13) as u64 + 1;
            *dirs.entry(parent.to_string()).or_insert(0) += entries;
            if is_dir {
                dirs.insert(full.to_string(), 4); // ".", "..", and fatfs's long names for them
            }
        }
    }
    Ok(dirs)
}

fn check_name(name: &str) -> Result<()> {
    const PUNCT: &str = "$%'-_@~`!(){}. +,;=[]^#&";
    ensure!(!name.is_empty(), "empty path component");
    ensure!(name != "." && name != "..", "{name:?} is not a file name");
    ensure!(name.len() <= 255, "{name:?} is longer than 255 bytes");
    ensure!(
        !name.ends_with(['.', ' ']),
        "{name:?} ends in a dot or space, which FAT drops"
    );
    let bmp = '\u{80}'..='\u{FFFF}';
    let ok = |c: char| c.is_ascii_alphanumeric() || PUNCT.contains(c) || bmp.contains(&c);
    match name.chars().find(|&c| !ok(c)) {
        Some(c) => bail!("{name:?}: FAT names cannot hold {c:?}"),
        None => Ok(()),
    }
}

/// Picks the cluster size and image size, in bytes, for these file sizes and directories.
fn geometry(sizes: &[u64], dirs: &BTreeMap<String, u64>) -> Result<(u64, u64)> {
    let root = dirs.get("").copied().unwrap_or(1);
    for cluster in [2048, 4096, 8192, 16384] {
        let bytes = image_bytes(sizes, dirs, cluster, false);
        if bytes >= FAT32_FROM_BYTES {
            break;
        }
        if bytes / cluster <= FAT16_MAX_CLUSTERS {
            let most = u64::from(ROOT_ENTRIES);
            ensure!(
                root <= most,
                "the root needs {root} entries; FAT12/16 hold {most}"
            );
            return Ok((cluster, bytes));
        }
    }
    let bytes = image_bytes(sizes, dirs, 4096, true);
    ensure!(
        bytes <= MAX_IMAGE_BYTES,
        "a {bytes}-byte FAT image is over the 4 GiB limit"
    );
    Ok((4096, bytes))
}

/// An upper bound on the image size: data and directory clusters, FATs sized with 16-bit (or
/// 32-bit) entries even where fatfs will choose FAT12, and the fixed regions.
fn image_bytes(sizes: &[u64], dirs: &BTreeMap<String, u64>, cluster: u64, fat32: bool) -> u64 {
    let files: u64 = sizes.iter().map(|s| s.div_ceil(cluster)).sum();
    let in_clusters = dirs.iter().filter(|(path, _)| fat32 || !path.is_empty());
    let dir_clusters: u64 = in_clusters.map(|(_, n)| (n * 32).div_ceil(cluster)).sum();
    let clusters = files + dir_clusters + MARGIN_CLUSTERS;
    let (reserved, root, entry_bytes) = if fat32 { (32, 0, 4) } else { (1, 32, 2) };
    let fat_sectors = ((clusters + 2) * entry_bytes).div_ceil(SECTOR);
    let sectors = reserved + 2 * fat_sectors + root + clusters * (cluster / SECTOR);
    (sectors * SECTOR).div_ceil(SIZE_UNIT) * SIZE_UNIT
}

/// Upper-cases and pads the label; an empty one leaves fatfs's `NO NAME`, as mkfs.fat does.
fn label_bytes(label: &str) -> Result<Option<[u8; 11]>> {
    const BAD: &[u8] = b"\"*+,./:;<=>?[\\]|";
    let ok = |b: u8| (b.is_ascii_graphic() && !BAD.contains(&b)) || b == b' ';
    let fits = label.len() <= 11 && label.bytes().all(ok);
    ensure!(
        fits,
        "volume label {label:?}: FAT takes up to 11 ASCII letters, digits or -_!#$%&'()@^`{{}}~"
    );
    if label.is_empty() {
        return Ok(None);
    }
    let mut out = [b' '; 11];
    out.iter_mut()
        .zip(label.bytes())
        .for_each(|(o, b)| *o = b.to_ascii_uppercase());
    Ok(Some(out))
}

/// fatfs refuses a size whose cluster count fits neither FAT12 nor FAT16 (a band about two
/// clusters wide at 4085); no multiple of `SIZE_UNIT` below 512 MiB falls in it at the cluster
/// sizes `geometry` picks (checked by sweeping them all), so there is no retry here.
fn format(cluster: u64, size: u64, label: Option<[u8; 11]>, id: u32) -> Result<Vec<u8>> {
    let mut disk = Cursor::new(vec![0u8; usize::try_from(size)?]);
    let mut options = FormatVolumeOptions::new()
        .bytes_per_sector(SECTOR as u16)
        .bytes_per_cluster(cluster as u32)
        .fats(2)
        .max_root_dir_entries(ROOT_ENTRIES)
        .media(0xF8)
        .drive_num(0x80) // fatfs would say floppy (0) for FAT12; this is a disk, media 0xF8
        .volume_id(id);
    if let Some(label) = label {
        options = options.volume_label(label);
    }
    fatfs::format_volume(&mut disk, options)?;
    Ok(disk.into_inner())
}

fn populate(image: &mut Vec<u8>, files: &BTreeMap<String, Vec<u8>>, epoch: u64) -> Result<()> {
    let options = FsOptions::new().time_provider(fixed_time(epoch));
    let fs = FileSystem::new(Cursor::new(image), options).context("mounting the new image")?;
    {
        let root = fs.root_dir();
        for (path, data) in files {
            for (i, _) in path.match_indices('/') {
                let dir = &path[..i]; // create_dir returns the directory if it exists
                root.create_dir(dir)
                    .with_context(|| format!("creating {dir} on FAT"))?;
            }
            let mut file = root
                .create_file(path)
                .with_context(|| format!("creating {path}"))?;
            let written = file.write_all(data).and_then(|()| file.flush());
            written.with_context(|| format!("writing {path} into the FAT image"))?;
        }
    }
    // On FAT32 this fills in FSInfo's free-cluster count, which fatfs leaves "unknown".
    fs.stats().context("counting free clusters")?;
    // Explicitly, not on Drop: unmount clears the dirty flag fatfs set and reports errors.
    fs.unmount().context("unmounting the FAT image")
}

#[derive(Debug)]
struct FixedTime(DateTime);

impl fatfs::TimeProvider for FixedTime {
    fn get_current_date(&self) -> Date {
        self.0.date
    }
    fn get_current_date_time(&self) -> DateTime {
        self.0
    }
}

/// fatfs 0.3 takes only a `&'static dyn TimeProvider` and the epoch is known at run time, so a
/// provider has to be leaked. Interning them per epoch bounds the leak to one small value per
/// distinct epoch in the process (one, in a build), however many images are written.
fn fixed_time(epoch: u64) -> &'static FixedTime {
    static PROVIDERS: Mutex<BTreeMap<u64, &'static FixedTime>> = Mutex::new(BTreeMap::new());
    let mut providers = PROVIDERS.lock().unwrap_or_else(PoisonError::into_inner);
    let new = || &*Box::leak(Box::new(FixedTime(dos_datetime(epoch))));
    providers.entry(epoch).or_insert_with(new)
}

/// The DOS date/time for a Unix epoch (UTC), clamped to 1980-01-01 ..= 2107-12-31 23:59:58.
/// Seconds round down to even: the modified field has two-second resolution, and the created
/// field's extra precision is left unused so all three fields agree.
fn dos_datetime(epoch: u64) -> DateTime {
    const FAT_START: u64 = 315_532_800; // 1980-01-01T00:00:00Z
    let epoch = epoch.max(FAT_START);
    let (year, month, day) = super::time::civil_from_days(epoch / 86_400);
    let (month, day) = (month as u16, day as u16);
    let s = epoch % 86_400;
    let ((year, month, day), (hour, min, sec)) = match u16::try_from(year) {
        Ok(year) if year <= 2107 => ((year, month, day), (s / 3600, s / 60 % 60, s % 60 / 2 * 2)),
        _ => ((2107, 12, 31), (23, 59, 58)),
    };
    let (hour, min, sec) = (hour as u16, min as u16, sec as u16);
    DateTime {
        date: Date { year, month, day },
        time: Time {
            hour,
            min,
            sec,
            millis: 0,
        },
    }
}

/// Where a FAT's parts lie, from the boot sector; just enough to walk directories by hand.
struct Layout {
    cluster: usize,
    fat: usize,
    root: usize,
    data: usize,
    clusters: usize,
    fat_bits: u8,
    root_cluster: usize,
}

fn le(image: &[u8], at: usize, len: usize) -> Result<usize> {
    let bytes = image
        .get(at..at + len)
        .context("FAT structure past the end of the image")?;
    Ok(bytes.iter().rev().fold(0, |n, &b| n << 8 | usize::from(b)))
}

impl Layout {
    fn read(image: &[u8]) -> Result<Self> {
        let (sector, per_cluster) = (le(image, 11, 2)?, le(image, 13, 1)?);
        let (reserved, fats, root_entries) =
            (le(image, 14, 2)?, le(image, 16, 1)?, le(image, 17, 2)?);
        // A 16-bit field of 0 means the 32-bit one holds the value.
        let wide = |narrow, wide| match le(image, narrow, 2)? {
            0 => le(image, wide, 4),
            n => Ok(n),
        };
        let (total, per_fat) = (wide(19, 32)?, wide(22, 36)?);
        let root = (reserved + fats * per_fat) * sector;
        let data = root + (root_entries * 32).div_ceil(sector.max(1)) * sector;
        let clusters = (total * sector).saturating_sub(data) / (sector * per_cluster).max(1);
        let fat_bits = [(4085, 12), (65_525, 16)]
            .iter()
            .find(|l| clusters < l.0)
            .map_or(32, |l| l.1);
        let (cluster, fat, root_cluster) =
            (sector * per_cluster, reserved * sector, le(image, 44, 4)?);
        Ok(Layout {
            cluster,
            fat,
            root,
            data,
            clusters,
            fat_bits,
            root_cluster,
        })
    }

    /// Byte ranges of a cluster chain, stopping at its end or at anything that is not a cluster.
    fn chain(&self, image: &[u8], mut at: usize) -> Result<Vec<(usize, usize)>> {
        let mut ranges = Vec::new();
        while (2..self.clusters + 2).contains(&at) {
            ensure!(ranges.len() < self.clusters, "cluster chain loops");
            ranges.push((self.data + (at - 2) * self.cluster, self.cluster));
            at = match self.fat_bits {
                12 => le(image, self.fat + at + at / 2, 2)? >> (at % 2 * 4) & 0xFFF,
                16 => le(image, self.fat + at * 2, 2)?,
                _ => le(image, self.fat + at * 4, 4)? & 0x0FFF_FFFF,
            };
        }
        Ok(ranges)
    }
}

fn cluster_of(entry: &[u8]) -> Result<usize> {
    Ok(le(entry, 26, 2)? | le(entry, 20, 2)? << 16)
}

/// Rewrites every directory fatfs began with [long name, `.`, long name, `..`] to begin with
/// [`.`, `..`], shifting the rest up two slots: the layout mkfs-made tools and fsck.fat expect.
fn fix_dot_entries(image: &mut [u8]) -> Result<()> {
    let layout = Layout::read(image)?;
    let mut dirs = vec![match layout.fat_bits {
        32 => layout.chain(image, layout.root_cluster)?,
        _ => vec![(layout.root, layout.data - layout.root)],
    }];
    while let Some(ranges) = dirs.pop() {
        let mut slots = Vec::new();
        for &(at, len) in &ranges {
            let bytes = image
                .get(at..at + len)
                .context("directory past the end of the image")?;
            slots.extend(bytes.chunks(32).map(<[u8]>::to_vec));
        }
        for slot in slots.iter().take_while(|s| s[0] != 0) {
            if slot[11] & 0x18 == 0x10 && slot[0] != 0xE5 && slot[0] != b'.' {
                dirs.push(layout.chain(image, cluster_of(slot)?)?);
            }
        }
        let names: Vec<&[u8]> = slots.iter().take(4).map(|s| &s[..12]).collect();
        if names.len() == 4 && names[1] == b".          \x10" && names[3] == b"..         \x10" {
            ensure!(
                names[0][11] == 0x0F && names[2][11] == 0x0F,
                "unexpected entries before . or .."
            );
            slots.drain(2..3);
            slots.drain(0..1);
            slots.extend([vec![0; 32], vec![0; 32]]);
            // fatfs also points a FAT32 root child's `..` at the root's cluster; it must be 0.
            if layout.fat_bits == 32 && cluster_of(&slots[1])? == layout.root_cluster {
                [20, 21, 26, 27].iter().for_each(|&i| slots[1][i] = 0);
            }
            let mut slots = slots.iter();
            for &(at, len) in &ranges {
                for chunk in image[at..at + len].chunks_mut(32) {
                    chunk.copy_from_slice(slots.next().context("directory changed size")?);
                }
            }
        }
    }
    Ok(())
}

/// Reads every regular file (recursively, sorted by path) and the boot-sector header.
pub fn read_image(image: &[u8]) -> Result<(FatHeader, Vec<FatFile>)> {
    let boot = image
        .get(..512)
        .context("FAT image is shorter than its boot sector")?;
    let u16_at = |o: usize| u16::from_le_bytes([boot[o], boot[o + 1]]);
    let total_sectors = match u16_at(19) {
        0 => u32::from_le_bytes([boot[32], boot[33], boot[34], boot[35]]),
        n => u32::from(n),
    };
    let needed = u64::from(total_sectors) * u64::from(u16_at(11));
    let len = image.len();
    ensure!(
        len as u64 >= needed,
        "FAT image has {len} of its {needed} bytes"
    );
    // fatfs 0.3 trusts what it reads (an entry naming cluster 1 makes it compute 1 - 2, which
    // panics with overflow checks on); a diff tool fed any image must get an error, not a crash.
    let mounted = std::panic::catch_unwind(|| read_files(image));
    let panicked = |_| anyhow!("fatfs panicked on a malformed FAT image");
    let (fat_type, volume_id, volume_label, files) = mounted.map_err(panicked)??;
    let (bytes_per_sector, sectors_per_cluster) = (u16_at(11), boot[13]);
    let header = FatHeader {
        fat_type,
        volume_id,
        volume_label,
        bytes_per_sector,
        sectors_per_cluster,
        total_sectors,
    };
    Ok((header, files))
}

fn read_files(image: &[u8]) -> Result<(String, u32, String, Vec<FatFile>)> {
    let fs = FileSystem::new(Cursor::new(image.to_vec()), FsOptions::new())
        .context("mounting the FAT image")?;
    let fat_type = match fs.fat_type() {
        FatType::Fat12 => "FAT12",
        FatType::Fat16 => "FAT16",
        FatType::Fat32 => "FAT32",
    };
    let mut files = Vec::new();
    // A looping cluster chain, or a directory entry naming an ancestor, would be walked forever;
    // no honest image has more entries than it has 32-byte slots.
    let mut budget = image.len() / 32;
    let mut dirs = vec![(String::new(), fs.root_dir())];
    while let Some((prefix, dir)) = dirs.pop() {
        for entry in dir.iter() {
            let entry = entry.with_context(|| format!("reading directory /{prefix}"))?;
            budget = budget
                .checked_sub(1)
                .context("more entries than the image holds: a loop")?;
            let name = entry.file_name();
            let path = if prefix.is_empty() {
                name.clone()
            } else {
                format!("{prefix}/{name}")
            };
            if !entry.is_dir() {
                files.push(read_file(&entry, path, image.len() as u64)?);
            } else if name != "." && name != ".." {
                dirs.push((path, entry.to_dir()));
            }
        }
    }
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok((fat_type.into(), fs.volume_id(), fs.volume_label(), files))
}

fn read_file(
    entry: &fatfs::DirEntry<'_, Cursor<Vec<u8>>>,
    path: String,
    limit: u64,
) -> Result<FatFile> {
    let len = entry.len();
    ensure!(
        len <= limit,
        "{path} claims {len} bytes, more than the whole image"
    );
    let mut data = Vec::with_capacity(len as usize);
    let read = entry.to_file().read_to_end(&mut data);
    read.with_context(|| format!("reading {path} from the FAT image"))?;
    ensure!(
        data.len() as u64 == len,
        "{path}: cluster chain ends before its size"
    );
    let (d, t) = (entry.modified().date, entry.modified().time);
    let modified = (d.year, d.month, d.day, t.hour, t.min, t.sec);
    Ok(FatFile {
        path,
        data,
        modified,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> FatOptions {
        FatOptions {
            volume_label: "Kiln-ESP".into(),
            volume_id: 0x1234_ABCD,
            epoch: 1_700_000_000,
        }
    }

    fn esp() -> BTreeMap<String, Vec<u8>> {
        let efi = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
        BTreeMap::from([
            ("EFI/BOOT/BOOTX64.EFI".into(), efi),
            ("EFI/BOOT/grub.cfg".into(), b"set timeout=0\n".to_vec()),
            ("loader/entries/kiln with a long name.conf".into(), vec![]),
            (
                "startup.nsh".into(),
                b"\\EFI\\BOOT\\BOOTX64.EFI\r\n".to_vec(),
            ),
        ])
    }

    fn image_with(change: impl FnOnce(&mut FatOptions)) -> Vec<u8> {
        let mut opts = opts();
        change(&mut opts);
        write_image(&esp(), &opts).unwrap()
    }

    fn civil(epoch: u64) -> (u16, u16, u16, u16, u16, u16) {
        let DateTime { date: d, time: t } = dos_datetime(epoch);
        (d.year, d.month, d.day, t.hour, t.min, t.sec)
    }

    fn refusal(paths: &[&str]) -> String {
        let files = paths
            .iter()
            .map(|p| (p.to_string(), b"x".to_vec()))
            .collect();
        format!(
            "{:#}",
            write_image(&files, &opts()).expect_err("should be refused")
        )
    }

    #[test]
    fn epoch_1700000000_is_2023_11_14_at_22_13_20() {
        assert_eq!(civil(1_700_000_000), (2023, 11, 14, 22, 13, 20));
    }

    #[test]
    fn epochs_before_1980_clamp_to_1980_01_01_midnight() {
        assert_eq!(civil(0), (1980, 1, 1, 0, 0, 0));
        assert_eq!(civil(315_532_799), (1980, 1, 1, 0, 0, 0));
    }

    #[test]
    fn epochs_after_2107_clamp_to_its_last_even_second() {
        for epoch in [4_354_819_199, 4_354_819_200, u64::MAX] {
            assert_eq!(civil(epoch), (2107, 12, 31, 23, 59, 58), "{epoch}");
        }
    }

    #[test]
    fn leap_days_convert_and_odd_seconds_round_down() {
        assert_eq!(civil(1_709_210_097), (2024, 2, 29, 12, 34, 56));
        assert_eq!(civil(951_782_400), (2000, 2, 29, 0, 0, 0));
    }

    #[test]
    fn same_files_in_any_insertion_order_give_identical_bytes() {
        let first = write_image(&esp(), &opts()).unwrap();
        let reversed: BTreeMap<_, _> = esp().into_iter().rev().collect();
        assert_eq!(first, write_image(&reversed, &opts()).unwrap());
        assert_eq!(first, write_image(&esp(), &opts()).unwrap());
        assert_ne!(
            first,
            image_with(|o| o.epoch += 2),
            "the epoch must reach the image"
        );
    }

    #[test]
    fn files_read_back_in_path_order_with_contents_epoch_and_header() {
        let image = write_image(&esp(), &opts()).unwrap();
        let (header, files) = read_image(&image).unwrap();
        let paths: Vec<_> = files.iter().map(|f| &f.path).collect();
        assert_eq!(paths, esp().keys().collect::<Vec<_>>());
        for file in &files {
            assert_eq!(file.data, esp()[&file.path], "{}", file.path);
            assert_eq!(file.modified, (2023, 11, 14, 22, 13, 20), "{}", file.path);
        }
        let (fat_type, volume_label) = ("FAT12".into(), "KILN-ESP".into());
        let (volume_id, total_sectors) = (0x1234_ABCD, image.len() as u32 / 512);
        let (bytes_per_sector, sectors_per_cluster) = (512, 4);
        let want = FatHeader {
            fat_type,
            volume_id,
            volume_label,
            bytes_per_sector,
            sectors_per_cluster,
            total_sectors,
        };
        assert_eq!(header, want);
    }

    #[test]
    fn every_entry_including_directories_and_dots_carries_the_epoch() {
        let image = image_with(|o| o.epoch = 1_000_000_001);
        assert_eq!(civil(1_000_000_000), (2001, 9, 9, 1, 46, 40));
        let want = dos_datetime(1_000_000_000);
        let fs = FileSystem::new(Cursor::new(image), FsOptions::new()).unwrap();
        let (mut dirs, mut seen) = (vec![fs.root_dir()], 0);
        while let Some(dir) = dirs.pop() {
            for entry in dir.iter().map(Result::unwrap) {
                let name = entry.file_name();
                assert_eq!((entry.created(), entry.modified()), (want, want), "{name}");
                assert_eq!(entry.accessed(), want.date, "{name}");
                if entry.is_dir() && name != "." && name != ".." {
                    dirs.push(entry.to_dir());
                }
                seen += 1;
            }
        }
        assert_eq!(
            seen,
            4 + 4 + 2 * 4,
            "files, directories, and their . and .."
        );
    }

    #[test]
    fn boot_sector_bytes_hold_the_serial_label_and_fat_type() {
        let image = write_image(&esp(), &opts()).unwrap();
        let drive_clean_signature_id = [0x80, 0, 0x29, 0xCD, 0xAB, 0x34, 0x12];
        assert_eq!(image[0x24..0x2B], drive_clean_signature_id);
        assert_eq!(&image[0x2B..0x3E], b"KILN-ESP   FAT12   ");
        assert_eq!(image[510..512], [0x55, 0xAA]);
        let root = Layout::read(&image).unwrap().root;
        assert_eq!(
            &image[root..root + 12],
            b"KILN-ESP   \x08",
            "label entry in the root"
        );
    }

    #[test]
    fn directories_begin_with_dot_and_dotdot_without_long_names() {
        let image = write_image(&esp(), &opts()).unwrap();
        let layout = Layout::read(&image).unwrap();
        let slots: Vec<&[u8]> = image[layout.data..].chunks(32).collect();
        let dots: Vec<usize> = (0..slots.len())
            .filter(|&i| slots[i][..12] == *b".          \x10")
            .collect();
        assert_eq!(dots.len(), 4, "one . per directory");
        for i in dots {
            assert_eq!(i % (layout.cluster / 32), 0, ". opens its cluster");
            assert_eq!(&slots[i + 1][..12], b"..         \x10");
        }
    }

    #[test]
    fn fat32_images_point_root_children_dotdot_at_cluster_0_and_count_free_space() {
        // 512-byte clusters make FAT32 possible at 40 MiB; write_image only picks it from 512.
        let mut image = format(512, 40 << 20, None, 7).unwrap();
        populate(&mut image, &esp(), 0).unwrap();
        fix_dot_entries(&mut image).unwrap();
        assert_eq!(read_image(&image).unwrap().0.fat_type, "FAT32");
        let layout = Layout::read(&image).unwrap();
        let efi = image[layout.data..]
            .chunks(512)
            .find(|c| c[..11] == *b".          ")
            .unwrap();
        assert_eq!(
            (&efi[32..43], cluster_of(&efi[32..64]).unwrap()),
            (&b"..         "[..], 0)
        );
        assert_ne!(
            le(&image, 512 + 488, 4).unwrap(),
            0xFFFF_FFFF,
            "FSInfo free count"
        );
        check_with_fsck(&image);
    }

    #[test]
    fn free_space_after_the_last_file_is_zero() {
        let files = BTreeMap::from([("a.bin".to_string(), vec![0xAA; 3000])]);
        let image = write_image(&files, &opts()).unwrap();
        let start = image
            .windows(3000)
            .position(|w| w.iter().all(|&b| b == 0xAA))
            .unwrap();
        assert!(image[start + 3000..].iter().all(|&b| b == 0));
    }

    #[test]
    fn image_size_is_whole_units_and_grows_from_fat12_into_fat16() {
        let small = write_image(&esp(), &opts()).unwrap();
        assert_eq!(small.len() as u64 % SIZE_UNIT, 0);
        assert!(
            small.len() <= 256 << 10,
            "{} bytes for 100 KB of files",
            small.len()
        );
        let mut big = esp();
        big.insert("EFI/Linux/kiln.efi".into(), vec![7; 12 << 20]);
        let image = write_image(&big, &opts()).unwrap();
        let (header, files) = read_image(&image).unwrap();
        assert_eq!(
            (header.fat_type.as_str(), header.sectors_per_cluster),
            ("FAT16", 4)
        );
        assert_eq!(files.len(), 5);
        assert!(
            image.len() < (12 << 20) + (1 << 20),
            "{} bytes",
            image.len()
        );
    }

    #[test]
    fn clusters_double_before_fat16_overflows_and_fat32_waits_for_512_mib() {
        let root = BTreeMap::from([(String::new(), 2)]);
        assert_eq!(geometry(&[100 << 20], &root).unwrap().0, 2048);
        assert_eq!(geometry(&[400 << 20], &root).unwrap().0, 8192);
        let (cluster, bytes) = geometry(&[600 << 20], &root).unwrap();
        assert_eq!(cluster, 4096);
        assert!(bytes / cluster > FAT16_MAX_CLUSTERS);
        assert!(geometry(&[5 << 30], &root).is_err());
    }

    #[test]
    fn bad_paths_are_errors_that_name_the_path() {
        let bad = [
            "",
            "/EFI",
            "EFI/",
            "EFI//BOOT",
            "./x",
            "EFI/../x",
            "a:b",
            "x.",
            "a*b",
            "\u{1F600}",
        ];
        for path in bad {
            let err = refusal(&[path]);
            assert!(err.contains(&format!("{path:?}")), "{path:?}: {err}");
        }
    }

    #[test]
    fn one_name_in_two_cases_or_as_file_and_directory_is_an_error() {
        assert!(refusal(&["EFI/BOOT/x", "efi/y"]).contains("efi and EFI are one name"));
        assert!(refusal(&["a", "A"]).contains("a and A are one name"));
        assert!(refusal(&["EFI", "EFI/BOOT/x"]).contains("EFI is both a file and a directory"));
    }

    #[test]
    fn a_name_equal_to_another_names_8_3_alias_is_an_error() {
        let err = refusal(&["longfilename.txt", "longfi~1.txt"]);
        assert!(
            err.contains("longfi~1.txt did not read back as written"),
            "{err}"
        );
    }

    #[test]
    fn volume_labels_fat_cannot_hold_are_errors_and_none_reads_as_no_name() {
        for label in ["TWELVE CHARS", "a.b", "caf\u{e9}"] {
            let opts = FatOptions {
                volume_label: label.into(),
                ..opts()
            };
            assert!(write_image(&esp(), &opts).is_err(), "{label}");
        }
        let (header, _) = read_image(&image_with(|o| o.volume_label.clear())).unwrap();
        assert_eq!(header.volume_label, "NO NAME");
    }

    #[test]
    fn malformed_images_are_errors_not_panics_or_hangs() {
        let good = write_image(&esp(), &opts()).unwrap();
        let mut no_fat = good.clone();
        no_fat[22..24].fill(0); // sectors per FAT
        let mut cluster_one = good.clone();
        let at = good.windows(11).position(|w| w == b"STARTUP NSH").unwrap();
        cluster_one[at + 26..at + 28].copy_from_slice(&[1, 0]); // fatfs computes 1 - 2 on this
                                                                // A directory over several clusters, then every FAT12 entry pointed at cluster 2: the
                                                                // chain loops, and only the entry budget ends the walk.
        let many = (0..100).map(|i| (format!("d/f{i:02}"), vec![1])).collect();
        let mut looping = write_image(&many, &opts()).unwrap();
        let root = Layout::read(&looping).unwrap().root;
        for (i, b) in looping[512 + 3..root].iter_mut().enumerate() {
            *b = [0x02, 0x20, 0x00][i % 3];
        }
        let short = [
            vec![],
            vec![0; 512],
            vec![0; 1 << 20],
            good[..8192].to_vec(),
        ];
        for image in short.into_iter().chain([no_fat, cluster_one, looping]) {
            assert!(read_image(&image).is_err(), "{} bytes", image.len());
        }
    }

    fn check_with_fsck(image: &[u8]) {
        let file = tempfile::NamedTempFile::new().unwrap();
        fs_err::write(file.path(), image).unwrap();
        if crate::testing::program("fsck.fat", "apt-get install dosfstools, or run ci/setup") {
            let mut fsck = crate::tools::command("fsck.fat").unwrap();
            fsck.arg("-n").arg(file.path());
            crate::tools::capture(fsck).unwrap_or_else(|e| panic!("{e:#}"));
        }
    }

    #[test]
    fn fsck_fat_and_mtools_accept_the_image_when_installed() {
        let image = write_image(&esp(), &opts()).unwrap();
        check_with_fsck(&image);
        let file = tempfile::NamedTempFile::new().unwrap();
        fs_err::write(file.path(), &image).unwrap();
        if crate::testing::program("mtype", "apt-get install mtools, or run ci/setup") {
            let mut mtype = crate::tools::command("mtype").unwrap();
            mtype.arg("-i").arg(file.path()).arg("::/EFI/BOOT/grub.cfg");
            let text = crate::tools::capture(mtype).unwrap_or_else(|e| panic!("{e:#}"));
            assert_eq!(text, "set timeout=0\n");
        }
    }
}
