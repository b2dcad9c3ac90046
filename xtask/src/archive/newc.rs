//! The newc ("new ASCII", magic `070701`) cpio format: a streaming writer that reproduces the
//! kernel's `usr/gen_init_cpio.c` byte for byte, and a reader that accepts what `init/initramfs.c`
//! accepts (including several archives back to back).
//!
//! Line references are to Linux 6.1 (`linux-source-6.1` 6.1.192).

use fs_err::File;
use std::collections::HashMap;
use std::io::{self, Read, Write};

use anyhow::{bail, ensure, Context, Result};

use super::entry::{Data, Entry, Kind};

/// The key-bearing version (`super::Format`) of the newc writer (headers, inode
/// numbering, padding, trailer): bump it when the bytes change.
pub const FORMAT: super::Format = super::Format {
    name: "newc",
    version: 1,
};

/// gen_init_cpio.c:28 `static unsigned int ino = 721;`
pub const FIRST_INO: u32 = 721;
/// gen_init_cpio.c writes every header with device 3:1 (`major`/`minor`, not `rmajor`/`rminor`).
const DEV_MAJOR: u32 = 3;
const DEV_MINOR: u32 = 1;
const HEADER_LEN: usize = 110;
pub const TRAILER: &str = "TRAILER!!!";

/// The 13 numeric header fields, in on-disk order after the magic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
struct Header {
    ino: u32,
    mode: u32,
    uid: u32,
    gid: u32,
    nlink: u32,
    mtime: u32,
    filesize: u32,
    dev_major: u32,
    dev_minor: u32,
    rdev_major: u32,
    rdev_minor: u32,
    namesize: u32,
    check: u32,
}

impl Header {
    /// gen_init_cpio.c formats every field with `%08X` / `%08lX`: upper-case hex.
    fn encode(&self) -> String {
        let fields = [
            self.ino,
            self.mode,
            self.uid,
            self.gid,
            self.nlink,
            self.mtime,
            self.filesize,
            self.dev_major,
            self.dev_minor,
            self.rdev_major,
            self.rdev_minor,
            self.namesize,
            self.check,
        ];
        let mut s = String::with_capacity(HEADER_LEN);
        s.push_str("070701");
        for field in fields {
            s.push_str(&format!("{field:08X}"));
        }
        s
    }

    fn decode(raw: &[u8]) -> Result<Header> {
        let magic = &raw[..6];
        ensure!(
            magic == b"070701" || magic == b"070702",
            "no newc cpio magic (found {:?}); old-format (070707) archives are not supported",
            String::from_utf8_lossy(magic)
        );
        let mut f = [0u32; 13];
        for (i, field) in f.iter_mut().enumerate() {
            let text = &raw[6 + 8 * i..14 + 8 * i];
            let text = std::str::from_utf8(text).ok();
            *field = text
                .and_then(|t| u32::from_str_radix(t, 16).ok())
                .with_context(|| format!("header field {i} is not 8 hex digits"))?;
        }
        let [ino, mode, uid, gid, nlink, mtime, filesize, dev_major, dev_minor, rdev_major, rdev_minor, namesize, check] =
            f;
        Ok(Header {
            ino,
            mode,
            uid,
            gid,
            nlink,
            mtime,
            filesize,
            dev_major,
            dev_minor,
            rdev_major,
            rdev_minor,
            namesize,
            check,
        })
    }
}

fn align4(n: u64) -> u64 {
    (n + 3) & !3
}

/// Hard-link bookkeeping for one `write_entries` call: group id -> (members, index of last member).
fn link_plan(entries: &[Entry]) -> HashMap<u64, (u32, usize)> {
    let mut plan: HashMap<u64, (u32, usize)> = HashMap::new();
    for (i, entry) in entries.iter().enumerate() {
        if let Some(id) = entry.link {
            let slot = plan.entry(id).or_insert((0, i));
            slot.0 += 1;
            slot.1 = i;
        }
    }
    plan
}

/// The number of bytes `Writer` emits for `entry` (header, name, data and their padding).
/// `with_data` is false for hard links other than the last of their group.
pub fn encoded_len(entry: &Entry, with_data: bool) -> u64 {
    let name = align4(HEADER_LEN as u64 + entry.path.len() as u64 + 1);
    let data = match &entry.kind {
        Kind::File(data) if with_data => data.len(),
        Kind::Symlink(target) => target.len() as u64 + 1,
        _ => 0,
    };
    name + align4(data)
}

/// Streaming newc writer. It numbers inodes from `FIRST_INO` in archive order, writes hard links
/// as gen_init_cpio.c does (same ino, nlink = group size, data only on the last link) and ends with
/// `TRAILER!!!` padded to a 512-byte multiple (gen_init_cpio.c `cpio_trailer`).
pub struct Writer<W: Write> {
    out: W,
    offset: u64,
    next_ino: u32,
}

impl<W: Write> Writer<W> {
    pub fn new(out: W) -> Writer<W> {
        Writer::with_first_ino(out, FIRST_INO)
    }

    /// Continue inode numbering from an earlier archive (gzip segments use this so numbers stay
    /// unique across the whole image).
    pub fn with_first_ino(out: W, first_ino: u32) -> Writer<W> {
        Writer {
            out,
            offset: 0,
            next_ino: first_ino,
        }
    }

    /// The inode number the next new inode will get.
    pub fn next_ino(&self) -> u32 {
        self.next_ino
    }

    /// Write `entries` in order. Every hard-link group must be complete within `entries`:
    /// initramfs.c forgets links at each trailer (`free_hash` in do_name), and the data travels
    /// with the last link.
    pub fn write_entries(&mut self, entries: &[Entry]) -> Result<()> {
        let plan = link_plan(entries);
        let mut group_ino: HashMap<u64, u32> = HashMap::new();
        for (i, entry) in entries.iter().enumerate() {
            let (ino, nlink, with_data) = match entry.link {
                Some(id) => {
                    let (members, last) = plan[&id];
                    let fresh = self.next_ino;
                    let ino = *group_ino.entry(id).or_insert(fresh);
                    if ino == fresh {
                        self.next_ino += 1;
                    }
                    (ino, members, i == last)
                }
                None => {
                    self.next_ino += 1;
                    (self.next_ino - 1, 1, true)
                }
            };
            self.write_entry(entry, ino, nlink, with_data)
                .with_context(|| format!("writing archive entry {:?}", entry.path))?;
        }
        Ok(())
    }

    fn write_entry(&mut self, entry: &Entry, ino: u32, nlink: u32, with_data: bool) -> Result<()> {
        let (filesize, nlink, rdev) = match &entry.kind {
            Kind::File(data) if with_data => (data.len(), nlink, (0, 0)),
            Kind::File(_) => (0, nlink, (0, 0)),
            // gen_init_cpio.c cpio_mkslink: filesize = strlen(target)+1, the NUL is stored too.
            Kind::Symlink(target) => (target.len() as u64 + 1, 1, (0, 0)),
            // gen_init_cpio.c cpio_mkgeneric: dirs, pipes and sockets all get nlink 2.
            Kind::Dir | Kind::Fifo | Kind::Socket => (0, 2, (0, 0)),
            Kind::CharDev { major, minor } | Kind::BlockDev { major, minor } => {
                (0, 1, (*major, *minor))
            }
        };
        let header = Header {
            ino,
            mode: entry.kind.type_bits() | entry.mode,
            uid: entry.uid,
            gid: entry.gid,
            nlink,
            mtime: u32::try_from(entry.mtime).context("mtime does not fit newc's 32 bits")?,
            filesize: u32::try_from(filesize).context("file is larger than newc's 4 GiB")?,
            dev_major: DEV_MAJOR,
            dev_minor: DEV_MINOR,
            rdev_major: rdev.0,
            rdev_minor: rdev.1,
            namesize: entry.path.len() as u32 + 1,
            check: 0,
        };
        self.write_header_and_name(&header, &entry.path)?;
        match &entry.kind {
            Kind::File(data) if with_data => self.write_data(data)?,
            Kind::Symlink(target) => {
                self.put(target.as_bytes())?;
                self.put(&[0])?;
            }
            _ => {}
        }
        self.pad_to(4)
    }

    fn write_header_and_name(&mut self, header: &Header, name: &str) -> Result<()> {
        self.put(header.encode().as_bytes())?;
        self.put(name.as_bytes())?;
        self.put(&[0])?;
        self.pad_to(4)
    }

    fn write_data(&mut self, data: &Data) -> Result<()> {
        match data {
            Data::Bytes(bytes) => self.put(bytes),
            Data::File { path, size } => {
                let file =
                    File::open(path).with_context(|| format!("opening {}", path.display()))?;
                let mut limited = file.take(*size);
                let copied = io::copy(&mut limited, &mut self.out)
                    .with_context(|| format!("copying {} into the archive", path.display()))?;
                self.offset += copied;
                ensure!(
                    copied == *size,
                    "{} shrank from {size} to {copied} bytes after it was recorded",
                    path.display()
                );
                let mut probe = [0u8; 1];
                let extra = limited
                    .into_inner()
                    .read(&mut probe)
                    .with_context(|| format!("reading {}", path.display()))?;
                ensure!(
                    extra == 0,
                    "{} grew beyond its recorded {size} bytes",
                    path.display()
                );
                Ok(())
            }
        }
    }

    fn put(&mut self, bytes: &[u8]) -> Result<()> {
        self.out.write_all(bytes).context("writing cpio output")?;
        self.offset += bytes.len() as u64;
        Ok(())
    }

    fn pad_to(&mut self, multiple: u64) -> Result<()> {
        let pad = (multiple - self.offset % multiple) % multiple;
        self.put(&vec![0u8; pad as usize])
    }

    /// Write the trailer (gen_init_cpio.c `cpio_trailer`: ino 0, mode 0, nlink 1, mtime 0,
    /// device 0:0) and zero-pad the archive to a multiple of 512 bytes.
    pub fn finish(mut self) -> Result<W> {
        let trailer = Header {
            nlink: 1,
            namesize: TRAILER.len() as u32 + 1,
            ..Header::default()
        };
        self.write_header_and_name(&trailer, TRAILER)?;
        self.pad_to(512)?;
        self.out.flush().context("flushing cpio output")?;
        Ok(self.out)
    }
}

/// One member as stored: every header field, the name and the data bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReadEntry {
    pub ino: u32,
    /// Type and permission bits (`S_IFMT | 0o7777`).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    pub nlink: u32,
    pub mtime: u32,
    pub dev_major: u32,
    pub dev_minor: u32,
    pub rdev_major: u32,
    pub rdev_minor: u32,
    /// The `check` field: 0 for `070701`, a byte sum for `070702`.
    pub check: u32,
    pub name: String,
    pub data: Vec<u8>,
    /// Which of several concatenated archives (0-based) this entry came from.
    pub archive: usize,
}

impl ReadEntry {
    pub fn file_type(&self) -> u32 {
        self.mode & 0o170000
    }

    /// The symlink target, without the NUL gen_init_cpio.c stores after it.
    pub fn link_target(&self) -> Option<String> {
        if self.file_type() != 0o120000 {
            return None;
        }
        let end = self
            .data
            .iter()
            .position(|&b| b == 0)
            .unwrap_or(self.data.len());
        Some(String::from_utf8_lossy(&self.data[..end]).into_owned())
    }
}

/// Read every archive in `bytes`. Like initramfs.c `do_reset` (lines 326-333) and
/// `unpack_to_rootfs` (lines 521-535), zero bytes between archives are skipped and the next header
/// must start 4-byte aligned. Trailers are not returned.
pub fn read_archive(bytes: &[u8]) -> Result<Vec<ReadEntry>> {
    let mut entries = Vec::new();
    let mut pos = 0;
    let mut archive = 0;
    loop {
        while pos < bytes.len() && bytes[pos] == 0 {
            pos += 1;
        }
        if pos == bytes.len() {
            return Ok(entries);
        }
        ensure!(
            pos % 4 == 0,
            "archive {archive} starts at unaligned offset {pos} (broken padding)"
        );
        pos = read_one_archive(bytes, pos, archive, &mut entries)
            .with_context(|| format!("reading cpio archive {archive}"))?;
        archive += 1;
    }
}

/// The length of the first archive in `bytes`, up to and including its trailer record (not the
/// zero padding after it). Used to step over an uncompressed archive in front of compressed ones.
pub fn archive_len(bytes: &[u8]) -> Result<usize> {
    let mut ignored = Vec::new();
    read_one_archive(bytes, 0, 0, &mut ignored)
}

fn read_one_archive(
    bytes: &[u8],
    mut pos: usize,
    archive: usize,
    out: &mut Vec<ReadEntry>,
) -> Result<usize> {
    loop {
        let (entry, next) =
            read_record(bytes, pos, archive).with_context(|| format!("at byte offset {pos}"))?;
        pos = next;
        if entry.name == TRAILER {
            return Ok(pos);
        }
        out.push(entry);
    }
}

fn slice<'a>(bytes: &'a [u8], start: usize, len: usize, what: &str) -> Result<&'a [u8]> {
    let end = start.checked_add(len).filter(|&e| e <= bytes.len());
    match end {
        Some(end) => Ok(&bytes[start..end]),
        None => bail!("archive is truncated: {what} needs {len} bytes at offset {start}"),
    }
}

fn read_record(bytes: &[u8], pos: usize, archive: usize) -> Result<(ReadEntry, usize)> {
    let h = Header::decode(slice(bytes, pos, HEADER_LEN, "header")?)?;
    ensure!(h.namesize >= 1, "name size is 0");
    let raw_name = slice(bytes, pos + HEADER_LEN, h.namesize as usize, "name")?;
    let (last, name) = raw_name.split_last().context("empty name")?;
    ensure!(
        *last == 0,
        "name {:?} is not NUL-terminated",
        String::from_utf8_lossy(name)
    );
    let name = String::from_utf8(name.to_vec()).context("name is not UTF-8")?;
    let data_start = align4((pos + HEADER_LEN + h.namesize as usize) as u64) as usize;
    let data = slice(bytes, data_start, h.filesize as usize, "file data")
        .with_context(|| format!("entry {name:?}"))?
        .to_vec();
    let next = align4((data_start + data.len()) as u64) as usize;
    let entry = ReadEntry {
        ino: h.ino,
        mode: h.mode,
        uid: h.uid,
        gid: h.gid,
        nlink: h.nlink,
        mtime: h.mtime,
        dev_major: h.dev_major,
        dev_minor: h.dev_minor,
        rdev_major: h.rdev_major,
        rdev_minor: h.rdev_minor,
        check: h.check,
        name,
        data,
        archive,
    };
    Ok((entry, next))
}

/// A whole archive in memory: `entries` followed by the trailer.
pub fn archive_bytes(entries: &[Entry]) -> Result<Vec<u8>> {
    let mut writer = Writer::new(Vec::new());
    writer.write_entries(entries)?;
    writer.finish()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linked(path: &str, group: u64, bytes: &[u8]) -> Entry {
        let mut e = Entry::file(path, 0o644, 100, bytes.to_vec());
        e.link = Some(group);
        e
    }

    #[test]
    fn empty_archive_is_a_trailer_padded_to_512_bytes() {
        let bytes = archive_bytes(&[]).unwrap();
        assert_eq!(bytes.len(), 512);
        let expected = "07070100000000000000000000000000000000000000010000000000000000\
                        000000000000000000000000000000000000000B00000000TRAILER!!!\0\0\0\0";
        assert_eq!(&bytes[..expected.len()], expected.as_bytes());
        assert!(bytes[expected.len()..].iter().all(|&b| b == 0));
    }

    #[test]
    fn inodes_start_at_721_and_headers_use_device_3_1() {
        let entries = [
            Entry::dir("a", 5),
            Entry::file("a/f", 0o600, 5, b"hello".to_vec()),
        ];
        let read = read_archive(&archive_bytes(&entries).unwrap()).unwrap();
        assert_eq!(read.len(), 2);
        assert_eq!(
            (read[0].ino, read[0].nlink, read[0].mode),
            (721, 2, 0o040755)
        );
        assert_eq!(
            (read[1].ino, read[1].nlink, read[1].mode),
            (722, 1, 0o100600)
        );
        assert_eq!((read[1].dev_major, read[1].dev_minor), (3, 1));
        assert_eq!(read[1].data, b"hello");
        assert_eq!(read[1].mtime, 5);
    }

    #[test]
    fn hard_links_keep_data_on_last_entry() {
        let entries = [
            linked("a", 9, b"shared"),
            Entry::file("b", 0o644, 100, b"own".to_vec()),
            linked("c", 9, b"shared"),
        ];
        let read = read_archive(&archive_bytes(&entries).unwrap()).unwrap();
        assert_eq!(
            (read[0].ino, read[0].nlink, read[0].data.len()),
            (721, 2, 0)
        );
        assert_eq!((read[1].ino, read[1].nlink), (722, 1));
        assert_eq!(
            (read[2].ino, read[2].nlink, read[2].data.as_slice()),
            (721, 2, &b"shared"[..])
        );
    }

    #[test]
    fn symlinks_store_the_target_with_its_nul() {
        let entry = Entry {
            kind: Kind::Symlink("../t".into()),
            mode: 0o777,
            ..Entry::dir("l", 0)
        };
        let read = read_archive(&archive_bytes(&[entry]).unwrap()).unwrap();
        assert_eq!(read[0].data, b"../t\0");
        assert_eq!(read[0].link_target().as_deref(), Some("../t"));
        assert_eq!(read[0].mode, 0o120777);
    }

    #[test]
    fn devices_put_their_numbers_in_rdev() {
        let entry = Entry {
            kind: Kind::BlockDev {
                major: 8,
                minor: 17,
            },
            mode: 0o660,
            ..Entry::dir("sdb1", 0)
        };
        let read = read_archive(&archive_bytes(&[entry]).unwrap()).unwrap();
        assert_eq!(
            (read[0].rdev_major, read[0].rdev_minor, read[0].nlink),
            (8, 17, 1)
        );
        assert_eq!(read[0].mode, 0o060660);
    }

    #[test]
    fn reader_accepts_concatenated_archives_with_zero_padding() {
        let mut bytes = archive_bytes(&[Entry::dir("one", 0)]).unwrap();
        bytes.extend_from_slice(&[0; 12]);
        bytes.extend(archive_bytes(&[Entry::dir("two", 0)]).unwrap());
        let read = read_archive(&bytes).unwrap();
        let names: Vec<_> = read.iter().map(|e| (e.name.as_str(), e.archive)).collect();
        assert_eq!(names, [("one", 0), ("two", 1)]);
    }

    #[test]
    fn reader_reports_truncation_with_the_entry_name() {
        let bytes = archive_bytes(&[Entry::file("f", 0o644, 0, vec![7; 100])]).unwrap();
        let err = format!("{:#}", read_archive(&bytes[..150]).unwrap_err());
        assert!(err.contains("\"f\"") && err.contains("truncated"), "{err}");
    }

    #[test]
    fn files_that_change_size_after_recording_are_errors() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        fs_err::write(&path, b"12345").unwrap();
        for recorded in [4, 6] {
            let mut entry = Entry::file("f", 0o644, 0, vec![]);
            entry.kind = Kind::File(Data::File {
                path: path.clone(),
                size: recorded,
            });
            let err = format!("{:#}", archive_bytes(&[entry]).unwrap_err());
            assert!(
                err.contains("\"f\"") && (err.contains("grew") || err.contains("shrank")),
                "{err}"
            );
        }
    }

    #[test]
    fn encoded_len_matches_written_bytes() {
        let entries = [
            Entry::file("abc", 0o644, 0, vec![1; 7]),
            Entry {
                kind: Kind::Symlink("xy".into()),
                ..Entry::dir("l", 0)
            },
        ];
        let total: u64 = entries.iter().map(|e| encoded_len(e, true)).sum();
        let mut w = Writer::new(Vec::new());
        w.write_entries(&entries).unwrap();
        assert_eq!(w.offset, total);
    }
}
