//! The content-addressed store under the cache directory.
//!
//! Architecture invariant: this is the only module that writes the cache.
//! Every write goes to `tmp/` first and is renamed into place, so a killed
//! process never leaves a partial entry; every read of a blob verifies its
//! digest, and a corrupt entry is reported, removed and treated as a miss.
//! Looking a step up is cheap (a file output's blob exists with its size, a
//! tree's manifest exists): a blob found missing or corrupt when read also
//! drops the tree manifests naming it, so the next build remakes them.
//!
//! Layout (`v1/` so a future format can live beside it):
//! ```text
//! blobs/<2 hex>/<64 hex>    file contents, named by sha256
//! trees/<64 hex>.json       tree manifests (see `tree`)
//! actions/<64 hex>.json     step key -> outputs, plus the key's components
//! last/<64 hex>.json        the key components a step identity last had
//! locks/                    per-key build locks; `store.lock` for gc
//! stat/<64 hex>.json        stat caches of local inputs and output/ (`statcache`)
//! tmp/                      staging for atomic writes and step scratch dirs
//! ```
//! Locks use `std::fs::File::lock` (flock), stable since Rust 1.89, so the
//! fs4 crate is not needed.

mod actions;
pub mod beneath;
mod blobs;
pub mod bucket;
mod digest;
mod gc;
mod gcs;
pub mod remote;
pub mod signing;
mod statcache;
mod tree;
mod trees;

use fs_err::{self as fs, File};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use blobs::check_digest;
pub use digest::Digest;
use gc::{list_files, mark_used};
pub use statcache::StatCache;
pub use tree::{Tree, TreeEntry, TreeKind};
pub use trees::Shared;

/// What a step produced: named outputs, each a file or a tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRecord {
    /// The step key this record answers: a record read under another
    /// key's name is refused (see `signing`).
    pub key: Digest,
    /// Human name of the step, e.g. `initramfs stage2/stage2_initramfs.cpio.gz`.
    pub step: String,
    /// The key's components, kept so a later build can say what changed.
    pub components: serde_json::Value,
    pub outputs: BTreeMap<String, Output>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum Output {
    File { digest: Digest, size: u64 },
    Tree { digest: Digest },
}

/// When `link_subtree` checks blob digests.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verify {
    Now,
    /// The caller verifies the blobs it actually uses.
    Later,
}

/// How file modes found on disk are recorded in a tree.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Modes {
    /// Exactly as on disk (unpacked packages, step outputs).
    AsOnDisk,
    /// As git records them: 0755 for directories and executables, 0644
    /// otherwise. For trees checked out from the repository (overlays) or
    /// given by the operator (`--source ipxe=PATH`), so that the checkout's
    /// umask cannot change a key or an artifact. `.git` is not content:
    /// it is skipped, so `git status` never changes a key.
    GitLike,
}

impl Modes {
    fn apply(self, mode: u32, is_dir: bool) -> u32 {
        match self {
            Modes::AsOnDisk => mode,
            Modes::GitLike if is_dir || mode & 0o111 != 0 => 0o755,
            Modes::GitLike => 0o644,
        }
    }
}

/// A blob or manifest whose bytes no longer match its name.
#[derive(Debug, thiserror::Error)]
#[error("corrupt store entry {path}: expected sha256 {expected}, found {actual}; it has been removed and will be rebuilt")]
pub struct Corrupt {
    pub path: PathBuf,
    pub expected: Digest,
    pub actual: Digest,
}

pub struct Store {
    root: PathBuf,
    /// Shared lock on `store.lock` for this handle's lifetime; `gc` converts
    /// it to exclusive, so it never removes what a running build uses.
    lock: File,
    /// On a read-only file system (a cache shared over NFS, mounted
    /// read-only): lookups work, and a step that must run fails, saying so.
    read_only: bool,
}

impl Store {
    pub fn open(cache_dir: &Path) -> Result<Store> {
        let root = cache_dir.join("v1");
        let lock_path = root.join("store.lock");
        let mut read_only = false;
        for sub in ["blobs", "trees", "actions", "last", "locks", "stat", "tmp"] {
            let dir = root.join(sub);
            match fs::create_dir_all(&dir) {
                Ok(()) => {}
                Err(e) if e.kind() == std::io::ErrorKind::ReadOnlyFilesystem && dir.is_dir() => {
                    read_only = true;
                }
                Err(e) => {
                    return Err(e)
                        .with_context(|| format!("creating cache directory {}", dir.display()))
                }
            }
        }
        let lock = match File::create(&lock_path) {
            Err(e) if e.kind() == std::io::ErrorKind::ReadOnlyFilesystem => {
                read_only = true;
                File::open(&lock_path)
            }
            other => other,
        }
        .with_context(|| format!("opening {}", lock_path.display()))?;
        lock.lock_shared()
            .with_context(|| format!("locking {}", lock_path.display()))?;
        if read_only {
            tracing::info!(
                "the cache {} is read-only: using what it holds",
                root.display()
            );
        }
        Ok(Store {
            root,
            lock,
            read_only,
        })
    }

    /// Whether the cache is on a read-only file system.
    pub fn read_only(&self) -> bool {
        self.read_only
    }

    pub fn root(&self) -> &Path {
        &self.root
    }

    /// A fresh private directory for a step to work in (removed on drop).
    pub fn scratch(&self, label: &str) -> Result<tempfile::TempDir> {
        tempfile::Builder::new()
            .prefix(&format!("{label}-"))
            .tempdir_in(self.root.join("tmp"))
            .context("creating a scratch directory in the cache")
    }

    /// Where an unfinished download of the file with this sha256 is kept, so
    /// that an interrupted fetch resumes. Never read as a blob: the fetch
    /// verifies it and stores it with `put_file`.
    pub fn partial_download(&self, sha256: &str) -> PathBuf {
        self.root.join("tmp").join(format!("partial-{sha256}"))
    }

    /// The stat cache of a local directory (e.g. `output/`): see `statcache`.
    pub fn stat_cache(&self, root: &Path) -> StatCache {
        StatCache::load(&self.root, root)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    #[test]
    fn corrupt_blob_is_reported_removed_and_not_used() {
        let cache = tempfile::tempdir().unwrap();
        let store = Store::open(cache.path()).unwrap();
        let d = store.put_bytes(b"hello").unwrap();
        let path = store.blob_path(&d);
        fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&path, b"jello").unwrap();
        let err = store.read_blob(&d).unwrap_err();
        assert!(err.downcast_ref::<Corrupt>().is_some(), "{err:#}");
        assert!(!path.exists());
    }

    #[test]
    fn action_with_missing_output_is_a_miss() {
        let cache = tempfile::tempdir().unwrap();
        let store = Store::open(cache.path()).unwrap();
        let d = store.put_bytes(b"out").unwrap();
        let key = Digest::of_bytes(b"key");
        let mut outputs = BTreeMap::new();
        outputs.insert("out".to_string(), Output::File { digest: d, size: 3 });
        let record = ActionRecord {
            key,
            step: "t".into(),
            components: serde_json::Value::Null,
            outputs,
        };
        store.put_action(&key, &record).unwrap();
        assert_eq!(store.action(&key).unwrap(), Some(record));
        fs::remove_file(store.blob_path(&d)).unwrap();
        assert_eq!(store.action(&key).unwrap(), None);
        assert!(!store.action_path(&key).exists());
    }

    #[test]
    fn trees_round_trip_with_modes_and_symlinks() {
        let cache = tempfile::tempdir().unwrap();
        let store = Store::open(cache.path()).unwrap();
        let src = tempfile::tempdir().unwrap();
        fs::create_dir(src.path().join("bin")).unwrap();
        fs::write(src.path().join("bin/tool"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(
            src.path().join("bin/tool"),
            std::fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        fs_err::os::unix::fs::symlink("tool", src.path().join("bin/alias")).unwrap();
        let d = store.put_tree(src.path()).unwrap();
        let out = tempfile::tempdir().unwrap();
        store
            .materialize(&store.tree(&d).unwrap(), &out.path().join("t"))
            .unwrap();
        let meta = fs::metadata(out.path().join("t/bin/tool")).unwrap();
        assert_eq!(meta.permissions().mode() & 0o777, 0o755);
        assert_eq!(
            fs::read_link(out.path().join("t/bin/alias")).unwrap(),
            Path::new("tool")
        );
        assert_eq!(store.put_tree(&out.path().join("t")).unwrap(), d);
    }

    #[test]
    fn a_write_through_a_checked_out_link_is_caught_and_the_blob_dropped() {
        let cache = tempfile::tempdir().unwrap();
        let store = Store::open(cache.path()).unwrap();
        let src = tempfile::tempdir().unwrap();
        fs::write(src.path().join("a.c"), b"int main;\n").unwrap();
        fs::write(src.path().join("a.o"), b"stale object").unwrap();
        let d = store.put_tree(src.path()).unwrap();
        let tree = store.tree(&d).unwrap();
        let work = tempfile::tempdir().unwrap();
        let shared = store.checkout(&tree, &work.path().join("w")).unwrap();
        store.verify_shared(&shared).unwrap();
        // A compiler writing over the stale object opens it for writing, in
        // place; root ignores the blob's 0444 (others are given write here).
        let object = work.path().join("w/a.o");
        fs::set_permissions(&object, std::fs::Permissions::from_mode(0o644)).unwrap();
        fs::write(&object, b"fresh object").unwrap();
        let err = format!("{:#}", store.verify_shared(&shared).unwrap_err());
        assert!(
            err.contains("wrote into 1 file(s)") && err.contains(&object.display().to_string()),
            "{err}"
        );
        let (_, digest, _) = tree.files().find(|(p, _, _)| *p == "a.o").unwrap();
        assert!(!store.has_blob(digest), "the changed blob is gone");
        assert!(!store.has_tree(&d), "and so is the tree naming it");
        // A copied checkout shares nothing.
        let copy = work.path().join("c");
        store.put_tree(src.path()).unwrap();
        store
            .checkout_copy(&store.tree(&d).unwrap(), &copy)
            .unwrap();
        fs::write(copy.join("a.c"), b"changed").unwrap();
        assert_eq!(
            store.read_blob(&Digest::of_bytes(b"int main;\n")).unwrap(),
            b"int main;\n"
        );
    }

    #[test]
    fn a_tampered_tree_manifest_is_refused_when_read() {
        let cache = tempfile::tempdir().unwrap();
        let store = Store::open(cache.path()).unwrap();
        let blob = store.put_bytes(b"x").unwrap();
        let evil = format!(
            r#"{{"entries":[{{"path":"../../escaped","type":"file","digest":"{}","size":1,"mode":420}}]}}"#,
            blob.hex()
        );
        let d = Digest::of_bytes(evil.as_bytes());
        fs::write(
            cache.path().join(format!("v1/trees/{}.json", d.hex())),
            &evil,
        )
        .unwrap();
        let err = format!("{:#}", store.tree(&d).unwrap_err());
        assert!(err.contains("is refused") && err.contains("`..`"), "{err}");
    }
}
