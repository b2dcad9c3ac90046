//! A stat cache for local inputs (overlays, `--source` trees and files) and
//! installed artifacts, as cargo's fingerprints and git's index keep one:
//! per file, the size, modification time and inode it had when it was last
//! hashed, and the digest. A file whose three still match is not read again, so a no-op
//! build does not hash an iPXE checkout or an overlay.
//!
//! The blind spot is cargo's: a file rewritten in place with the same size
//! and its old mtime restored is not noticed (`touch` it; git would also
//! compare the ctime). The "racy" case is handled as git does: an entry is
//! only trusted if the file was last modified at least `RACY_NS` before the
//! run that recorded it began, since a write within the clock's granularity
//! of the hash would keep the mtime.
//!
//! One JSON file per root under `stat/` in the store, named by the sha256
//! of the root's absolute path; written through a temp file in the store's
//! `tmp/` and a rename.
//! `KILN_STAT_CACHE=off` ignores it (every file hashed: `bench noop`).

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use super::Digest;

/// How much older than the recording run's start a file must be to be
/// trusted.
const RACY_NS: i128 = 2_000_000_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
struct Entry {
    size: u64,
    mtime_ns: i128,
    ino: u64,
    digest: Digest,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Saved {
    /// The root this cache describes (for `gc`: a cache whose root is gone
    /// is removed).
    #[serde(default)]
    root: Option<PathBuf>,
    /// Wall-clock nanoseconds when the run that saved it began, before it
    /// looked at any file (local metadata, never part of a key or an
    /// artifact).
    saved_ns: i128,
    files: BTreeMap<String, Entry>,
}

pub struct StatCache {
    file: Option<PathBuf>,
    root: PathBuf,
    tmp: PathBuf,
    /// When this run began, before any file was looked at.
    started_ns: i128,
    old: Saved,
    new: BTreeMap<String, Entry>,
}

/// Whether the stat cache file at `path` describes a root that no longer
/// exists (or cannot be read): `gc` removes it.
pub fn is_stale(path: &Path) -> bool {
    let saved: Option<Saved> = fs_err::read(path)
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok());
    !saved.and_then(|s| s.root).is_some_and(|r| r.exists())
}

fn mtime_ns(meta: &std::fs::Metadata) -> i128 {
    i128::from(meta.mtime()) * 1_000_000_000 + i128::from(meta.mtime_nsec())
}

fn now_ns() -> i128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as i128)
        .unwrap_or_default()
}

impl StatCache {
    /// The cache for the local input at `root`, kept in the store at
    /// `store_root` (`stat/`, staged in `tmp/`).
    pub fn load(store_root: &Path, root: &Path) -> StatCache {
        let started_ns = now_ns();
        let tmp = store_root.join("tmp");
        if std::env::var("KILN_STAT_CACHE").is_ok_and(|v| v == "off") {
            return StatCache {
                file: None,
                root: root.to_path_buf(),
                tmp,
                started_ns,
                old: Saved::default(),
                new: BTreeMap::new(),
            };
        }
        let abs = std::path::absolute(root).unwrap_or_else(|_| root.to_path_buf());
        let name = Digest::of_bytes(abs.as_os_str().as_encoded_bytes()).hex();
        let file = store_root.join("stat").join(format!("{name}.json"));
        let old = fs_err::read(&file)
            .ok()
            .and_then(|b| serde_json::from_slice(&b).ok())
            .unwrap_or_default();
        StatCache {
            file: Some(file),
            root: abs,
            tmp,
            started_ns,
            old,
            new: BTreeMap::new(),
        }
    }

    fn trusted(e: &Entry, saved_ns: i128) -> bool {
        e.mtime_ns < saved_ns - RACY_NS
    }

    /// The digest recorded for `rel` if the file still has the size, mtime
    /// and inode it had then, and was not modified just before the save.
    pub fn lookup(&self, rel: &str, meta: &std::fs::Metadata) -> Option<(Digest, u64)> {
        let e = self.old.files.get(rel)?;
        let fresh = e.size == meta.len()
            && e.mtime_ns == mtime_ns(meta)
            && e.ino == meta.ino()
            && StatCache::trusted(e, self.old.saved_ns);
        fresh.then_some((e.digest, e.size))
    }

    /// Records what `rel` hashed to (kept by `save`, with the entries of
    /// earlier runs this one did not look at).
    pub fn record(&mut self, rel: &str, meta: &std::fs::Metadata, digest: Digest) {
        self.new.insert(
            rel.to_string(),
            Entry {
                size: meta.len(),
                mtime_ns: mtime_ns(meta),
                ino: meta.ino(),
                digest,
            },
        );
    }

    /// Writes the recorded entries (temp file + rename), with the earlier
    /// entries this run did not look at that were already trusted (a racy
    /// one is dropped: this run's start time must not vouch for it). A
    /// failure only costs re-hashing next time, so it is not an error.
    pub fn save(self) {
        let Some(file) = self.file else { return };
        let old_saved = self.old.saved_ns;
        // Entries too fresh to trust at the last save become trusted by a
        // later run that hashed them again.
        let racy = self.new.values().any(|e| !StatCache::trusted(e, old_saved));
        let mut files: BTreeMap<String, Entry> = self
            .old
            .files
            .iter()
            .filter(|(_, e)| StatCache::trusted(e, old_saved))
            .map(|(k, e)| (k.clone(), *e))
            .collect();
        files.extend(self.new);
        if files == self.old.files && !racy {
            return;
        }
        let saved = Saved {
            root: Some(self.root),
            saved_ns: self.started_ns,
            files,
        };
        let Some(dir) = file.parent() else { return };
        let _ = fs_err::create_dir_all(dir);
        if let Ok(tmp) = tempfile::NamedTempFile::new_in(&self.tmp) {
            if serde_json::to_writer(tmp.as_file(), &saved).is_ok() {
                let _ = tmp.persist(&file);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_file_modified_just_before_the_save_is_hashed_again() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("f");
        fs_err::write(&file, b"x").unwrap();
        let meta = file.metadata().unwrap();
        let digest = Digest::of_bytes(b"x");
        let entry = |saved_ns| StatCache {
            file: None,
            root: PathBuf::new(),
            tmp: PathBuf::new(),
            started_ns: 0,
            old: Saved {
                root: None,
                saved_ns,
                files: BTreeMap::from([(
                    "f".to_string(),
                    Entry {
                        size: 1,
                        mtime_ns: mtime_ns(&meta),
                        ino: meta.ino(),
                        digest,
                    },
                )]),
            },
            new: BTreeMap::new(),
        };
        // Saved in the same second as the write: racy, not trusted.
        assert_eq!(entry(mtime_ns(&meta) + 1).lookup("f", &meta), None);
        // Saved well after: trusted.
        let later = mtime_ns(&meta) + 10 * RACY_NS;
        assert_eq!(entry(later).lookup("f", &meta), Some((digest, 1)));
        // Another size or inode: not trusted.
        fs_err::write(&file, b"xy").unwrap();
        assert_eq!(entry(later).lookup("f", &file.metadata().unwrap()), None);
    }
}
