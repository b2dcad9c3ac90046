//! Archive records as plain data, and the `normalize` transform.
//!
//! A record knows nothing about where it came from: `from_tree` (tree.rs) is one producer, a
//! recipe step building records by hand is another. The writer (newc.rs) only consumes them.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use anyhow::{bail, Result};

/// The key-bearing version (`super::Format`) of `normalize` (order, implied
/// parent directories, their modes and mtimes): bump it when the bytes change.
pub const FORMAT: super::Format = super::Format {
    name: "normalize",
    version: 1,
};

/// A device node (or fifo) an image is asked to hold, as a recipe's
/// `[[initramfs.devices]]` gives it: a parameter of the initramfs step.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Device {
    pub path: String,
    pub kind: DeviceKind,
    pub major: u32,
    pub minor: u32,
    pub mode: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum DeviceKind {
    Char,
    Block,
    Fifo,
}

impl Device {
    /// The record kind of this node.
    pub fn kind(&self) -> Kind {
        match self.kind {
            DeviceKind::Char => Kind::CharDev {
                major: self.major,
                minor: self.minor,
            },
            DeviceKind::Block => Kind::BlockDev {
                major: self.major,
                minor: self.minor,
            },
            DeviceKind::Fifo => Kind::Fifo,
        }
    }
}

/// Where a regular file's bytes come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Data {
    /// Bytes held in memory (generated files: init scripts, config).
    Bytes(Vec<u8>),
    /// A file on disk, read lazily at write time. `size` is what the record promises; the writer
    /// fails if the file no longer has exactly that many bytes.
    File { path: PathBuf, size: u64 },
}

impl Data {
    pub fn len(&self) -> u64 {
        match self {
            Data::Bytes(bytes) => bytes.len() as u64,
            Data::File { size, .. } => *size,
        }
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// What an entry is. Only the permission bits live in `Entry::mode`; the type lives here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Kind {
    File(Data),
    Dir,
    Symlink(String),
    CharDev { major: u32, minor: u32 },
    BlockDev { major: u32, minor: u32 },
    Fifo,
    Socket,
}

impl Kind {
    /// The `S_IFMT` bits for this kind (stat.h).
    pub fn type_bits(&self) -> u32 {
        match self {
            Kind::File(_) => 0o100000,
            Kind::Dir => 0o040000,
            Kind::Symlink(_) => 0o120000,
            Kind::CharDev { .. } => 0o020000,
            Kind::BlockDev { .. } => 0o060000,
            Kind::Fifo => 0o010000,
            Kind::Socket => 0o140000,
        }
    }
}

/// One archive member.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Relative path: no leading `/`, no trailing `/`, no empty, `.` or `..` components.
    pub path: String,
    /// Permission bits only (`0o7777`: rwx, suid, sgid, sticky).
    pub mode: u32,
    pub uid: u32,
    pub gid: u32,
    /// Seconds since the epoch; newc stores 32 bits.
    pub mtime: u64,
    pub kind: Kind,
    /// Hard-link group: regular-file entries with equal `Some(id)` are one inode.
    pub link: Option<u64>,
}

impl Entry {
    /// A directory record with the defaults `normalize` uses for implied parents.
    pub fn dir(path: &str, mtime: u64) -> Entry {
        Entry {
            path: path.to_string(),
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime,
            kind: Kind::Dir,
            link: None,
        }
    }

    /// A regular file held in memory, root-owned.
    pub fn file(path: &str, mode: u32, mtime: u64, bytes: Vec<u8>) -> Entry {
        Entry {
            path: path.to_string(),
            mode,
            uid: 0,
            gid: 0,
            mtime,
            kind: Kind::File(Data::Bytes(bytes)),
            link: None,
        }
    }
}

/// Sort entries by path bytes, add missing parent directories (mode 0755, root-owned, mtime
/// `parent_mtime`) and reject anything the kernel or cpio would mishandle.
///
/// Byte order puts every directory before its children, because a path sorts before any
/// extension of itself; initramfs.c creates entries in archive order and needs that.
pub fn normalize(entries: Vec<Entry>, parent_mtime: u64) -> Result<Vec<Entry>> {
    let mut by_path: BTreeMap<String, Entry> = BTreeMap::new();
    for entry in entries {
        validate(&entry)?;
        if by_path.contains_key(&entry.path) {
            bail!("archive entry {:?} appears twice", entry.path);
        }
        by_path.insert(entry.path.clone(), entry);
    }
    let parents = missing_parents(&by_path)?;
    for parent in parents {
        by_path.insert(parent.clone(), Entry::dir(&parent, parent_mtime));
    }
    let sorted: Vec<Entry> = by_path.into_values().collect();
    check_link_groups(&sorted)?;
    Ok(sorted)
}

/// Every ancestor of every entry that is not itself an entry; an ancestor that exists but is not
/// a directory is an error.
fn missing_parents(by_path: &BTreeMap<String, Entry>) -> Result<BTreeSet<String>> {
    let mut missing = BTreeSet::new();
    for path in by_path.keys() {
        let mut end = path.len();
        while let Some(slash) = path[..end].rfind('/') {
            let parent = &path[..slash];
            match by_path.get(parent) {
                Some(e) if e.kind != Kind::Dir => {
                    bail!("archive entry {path:?} is inside {parent:?}, which is not a directory")
                }
                Some(_) => break,
                None => {
                    missing.insert(parent.to_string());
                }
            }
            end = slash;
        }
    }
    Ok(missing)
}

/// init/initramfs.c: do_header silently skips names longer than PATH_MAX (4096 with the NUL) and
/// symlink targets longer than PATH_MAX, so those are errors here rather than missing files at boot.
const PATH_MAX: usize = 4096;

fn validate(entry: &Entry) -> Result<()> {
    let path = &entry.path;
    if path.is_empty() {
        bail!("archive entry has an empty path");
    }
    if path.starts_with('/') || path.ends_with('/') {
        bail!("archive entry {path:?} must be relative, without a leading or trailing '/'");
    }
    if path
        .split('/')
        .any(|c| c.is_empty() || c == "." || c == "..")
    {
        bail!("archive entry {path:?} has an empty, '.' or '..' component");
    }
    if path.contains('\0') || path.len() + 1 > PATH_MAX {
        bail!("archive entry {path:?} contains NUL or is longer than PATH_MAX (4095 bytes)");
    }
    if entry.mode & !0o7777 != 0 {
        bail!(
            "archive entry {path:?} has mode {:o}; only permission bits (0o7777) belong in mode",
            entry.mode
        );
    }
    if entry.mtime > u64::from(u32::MAX) {
        bail!(
            "archive entry {path:?} has mtime {} beyond 2106, which newc cannot store",
            entry.mtime
        );
    }
    validate_kind(entry)
}

fn validate_kind(entry: &Entry) -> Result<()> {
    let path = &entry.path;
    match &entry.kind {
        Kind::File(data) if data.len() > u64::from(u32::MAX) => {
            bail!("archive entry {path:?} is larger than 4 GiB, which newc cannot store")
        }
        Kind::Symlink(target) if target.is_empty() || target.len() + 1 > PATH_MAX => {
            bail!("archive entry {path:?} has an empty symlink target or one longer than PATH_MAX")
        }
        Kind::Symlink(target) if target.contains('\0') => {
            bail!("archive entry {path:?} has a symlink target containing NUL")
        }
        Kind::File(_) => Ok(()),
        _ if entry.link.is_some() => {
            bail!("archive entry {path:?}: only regular files can be hard-linked")
        }
        _ => Ok(()),
    }
}

/// All members of a hard-link group must agree on what the shared inode is.
fn check_link_groups(sorted: &[Entry]) -> Result<()> {
    let mut first: BTreeMap<u64, &Entry> = BTreeMap::new();
    for entry in sorted {
        let Some(id) = entry.link else { continue };
        let Some(leader) = first.get(&id) else {
            first.insert(id, entry);
            continue;
        };
        let same = leader.mode == entry.mode
            && leader.uid == entry.uid
            && leader.gid == entry.gid
            && same_contents(&leader.kind, &entry.kind);
        if !same {
            bail!(
                "hard links {:?} and {:?} (group {id}) differ in mode, owner or contents",
                leader.path,
                entry.path
            );
        }
    }
    Ok(())
}

/// Links read from disk name different paths for the same inode, so only sizes are compared
/// for on-disk data; in-memory bytes must match exactly.
fn same_contents(a: &Kind, b: &Kind) -> bool {
    match (a, b) {
        (Kind::File(Data::Bytes(x)), Kind::File(Data::Bytes(y))) => x == y,
        (Kind::File(x), Kind::File(y)) => x.len() == y.len(),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn names(entries: &[Entry]) -> Vec<&str> {
        entries.iter().map(|e| e.path.as_str()).collect()
    }

    #[test]
    fn normalize_sorts_by_bytes_and_adds_parents_first() {
        let entries = vec![
            Entry::file("b/c/d", 0o644, 5, vec![]),
            Entry::file("a-b", 0o644, 5, vec![]),
            Entry::file("a/x", 0o644, 5, vec![]),
        ];
        let out = normalize(entries, 7).unwrap();
        assert_eq!(names(&out), ["a", "a-b", "a/x", "b", "b/c", "b/c/d"]);
        assert_eq!(out[0], Entry::dir("a", 7));
    }

    #[test]
    fn normalize_keeps_explicit_parent_dirs() {
        let mut dir = Entry::dir("etc", 1);
        dir.mode = 0o700;
        let out = normalize(vec![Entry::file("etc/x", 0o600, 1, vec![]), dir.clone()], 9).unwrap();
        assert_eq!(out[0], dir);
    }

    #[test]
    fn normalize_rejects_duplicates_and_bad_paths_naming_them() {
        let dup = vec![Entry::dir("x", 0), Entry::dir("x", 0)];
        let err = normalize(dup, 0).unwrap_err().to_string();
        assert!(err.contains("\"x\"") && err.contains("twice"), "{err}");
        for bad in ["/abs", "a/../b", "a//b", "trail/", "", "./a"] {
            let err = normalize(vec![Entry::dir(bad, 0)], 0)
                .unwrap_err()
                .to_string();
            assert!(err.contains(&format!("{bad:?}")) || bad.is_empty(), "{err}");
        }
    }

    #[test]
    fn normalize_rejects_children_of_non_directories() {
        let entries = vec![
            Entry::file("a", 0o644, 0, vec![]),
            Entry::file("a/b", 0o644, 0, vec![]),
        ];
        let err = normalize(entries, 0).unwrap_err().to_string();
        assert!(err.contains("not a directory"), "{err}");
    }

    #[test]
    fn normalize_rejects_type_bits_in_mode_and_mismatched_links() {
        let err = normalize(vec![Entry::file("f", 0o100644, 0, vec![])], 0).unwrap_err();
        assert!(err.to_string().contains("permission bits"));
        let mut a = Entry::file("a", 0o644, 0, b"1".to_vec());
        let mut b = Entry::file("b", 0o644, 0, b"2".to_vec());
        a.link = Some(1);
        b.link = Some(1);
        let err = normalize(vec![a, b], 0).unwrap_err();
        assert!(err.to_string().contains("group 1"));
    }
}
