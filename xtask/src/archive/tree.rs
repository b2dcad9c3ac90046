//! Turn a directory on disk into archive records. Everything that could leak the build host
//! (readdir order, timestamps, owners, inode numbers) is replaced by a deterministic value here.

use std::collections::HashMap;
use std::fs::Metadata;
use std::os::unix::fs::{FileTypeExt, MetadataExt};
use std::path::Path;

use anyhow::{bail, Context, Result};

use super::entry::{normalize, Data, Entry, Kind};

/// The key-bearing version (`super::Format`) of `from_tree` (what a directory
/// becomes: modes, owners, mtimes, hard links): bump it when the bytes change.
pub const FORMAT: super::Format = super::Format {
    name: "from_tree",
    version: 1,
};

/// How `from_tree` maps what is on disk to records.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TreeOptions {
    /// The mtime every entry gets (the recipe's epoch), whatever the disk says.
    pub mtime: u64,
    /// Owner written for every entry; `None` keeps the on-disk value.
    pub uid: Option<u32>,
    pub gid: Option<u32>,
    /// Keep permission bits (`0o7777`, incl. suid/sgid/sticky) as on disk. When false, files
    /// get 0755 if any execute bit is set and 0644 otherwise, directories 0755, symlinks 0777.
    pub keep_mode: bool,
}

impl Default for TreeOptions {
    fn default() -> TreeOptions {
        TreeOptions {
            mtime: 0,
            uid: Some(0),
            gid: Some(0),
            keep_mode: true,
        }
    }
}

/// Walk `root` and return normalized records for everything below it (not `root` itself).
/// Regular files with several links inside the tree become one hard-link group, found by
/// (st_dev, st_ino); the group id is assigned in sorted walk order so it is reproducible.
pub fn from_tree(root: &Path, opts: &TreeOptions) -> Result<Vec<Entry>> {
    let mut entries = Vec::new();
    let mut groups: HashMap<(u64, u64), u64> = HashMap::new();
    let walk = walkdir::WalkDir::new(root)
        .min_depth(1)
        .follow_links(false)
        .sort_by_file_name();
    for item in walk {
        let item = item.with_context(|| format!("walking {}", root.display()))?;
        let path = item.path();
        let meta = item
            .metadata()
            .with_context(|| format!("stat {}", path.display()))?;
        let rel = relative_name(root, path)?;
        let mut entry = record(path, rel, &meta, opts)?;
        if meta.is_file() && meta.nlink() > 1 {
            let next = groups.len() as u64;
            entry.link = Some(*groups.entry((meta.dev(), meta.ino())).or_insert(next));
        }
        entries.push(entry);
    }
    drop_single_member_groups(&mut entries);
    normalize(entries, opts.mtime).with_context(|| format!("archiving {}", root.display()))
}

fn relative_name(root: &Path, path: &Path) -> Result<String> {
    let rel = path
        .strip_prefix(root)
        .with_context(|| format!("{} is outside {}", path.display(), root.display()))?;
    match rel.to_str() {
        Some(s) => Ok(s.to_string()),
        None => bail!(
            "{} is not valid UTF-8; Kiln archives need UTF-8 names",
            path.display()
        ),
    }
}

fn record(path: &Path, rel: String, meta: &Metadata, opts: &TreeOptions) -> Result<Entry> {
    let kind = kind_of(path, meta)?;
    let mode = if opts.keep_mode {
        meta.mode() & 0o7777
    } else {
        canonical_mode(&kind, meta.mode())
    };
    Ok(Entry {
        path: rel,
        mode,
        uid: opts.uid.unwrap_or(meta.uid()),
        gid: opts.gid.unwrap_or(meta.gid()),
        mtime: opts.mtime,
        kind,
        link: None,
    })
}

fn kind_of(path: &Path, meta: &Metadata) -> Result<Kind> {
    let ft = meta.file_type();
    let rdev = meta.rdev();
    // SAFETY-free: libc::major/minor are pure bit manipulations on dev_t.
    let (major, minor) = (libc::major(rdev), libc::minor(rdev));
    let kind = if ft.is_file() {
        Kind::File(Data::File {
            path: path.to_path_buf(),
            size: meta.len(),
        })
    } else if ft.is_dir() {
        Kind::Dir
    } else if ft.is_symlink() {
        let target = fs_err::read_link(path)
            .with_context(|| format!("reading symlink {}", path.display()))?;
        match target.to_str() {
            Some(t) => Kind::Symlink(t.to_string()),
            None => bail!("symlink {} has a non-UTF-8 target", path.display()),
        }
    } else if ft.is_char_device() {
        Kind::CharDev { major, minor }
    } else if ft.is_block_device() {
        Kind::BlockDev { major, minor }
    } else if ft.is_fifo() {
        Kind::Fifo
    } else if ft.is_socket() {
        Kind::Socket
    } else {
        bail!("{} has an unknown file type", path.display())
    };
    Ok(kind)
}

fn canonical_mode(kind: &Kind, disk_mode: u32) -> u32 {
    match kind {
        Kind::Dir => 0o755,
        Kind::Symlink(_) => 0o777,
        _ if disk_mode & 0o111 != 0 => 0o755,
        _ => 0o644,
    }
}

/// A file whose other links are outside the tree is an ordinary file inside the archive.
fn drop_single_member_groups(entries: &mut [Entry]) {
    let mut count: HashMap<u64, usize> = HashMap::new();
    for id in entries.iter().filter_map(|e| e.link) {
        *count.entry(id).or_default() += 1;
    }
    for entry in entries.iter_mut() {
        if entry.link.is_some_and(|id| count[&id] < 2) {
            entry.link = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use fs_err as fs;
    use fs_err::os::unix::fs::symlink;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn from_tree_maps_kinds_modes_and_hard_links() {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        fs::create_dir(root.join("d")).unwrap();
        fs::write(root.join("d/x"), b"data").unwrap();
        fs::set_permissions(root.join("d/x"), std::fs::Permissions::from_mode(0o4755)).unwrap();
        fs::hard_link(root.join("d/x"), root.join("y")).unwrap();
        symlink("d/x", root.join("s")).unwrap();
        let opts = TreeOptions {
            mtime: 42,
            ..TreeOptions::default()
        };
        let entries = from_tree(root, &opts).unwrap();
        let names: Vec<_> = entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(names, ["d", "d/x", "s", "y"]);
        assert_eq!(entries[1].mode, 0o4755);
        assert!(entries[1].link.is_some() && entries[1].link == entries[3].link);
        assert_eq!(entries[2].kind, Kind::Symlink("d/x".into()));
        assert!(entries
            .iter()
            .all(|e| e.mtime == 42 && e.uid == 0 && e.gid == 0));
    }

    #[test]
    fn links_leaving_the_tree_are_plain_files() {
        let dir = tempfile::tempdir().unwrap();
        fs::create_dir(dir.path().join("t")).unwrap();
        fs::write(dir.path().join("t/f"), b"x").unwrap();
        fs::hard_link(dir.path().join("t/f"), dir.path().join("outside")).unwrap();
        let entries = from_tree(&dir.path().join("t"), &TreeOptions::default()).unwrap();
        assert_eq!(entries[0].link, None);
    }
}
