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

pub mod bucket;
mod digest;
mod gcs;
pub mod remote;
mod statcache;
mod tree;

use std::collections::BTreeMap;
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};

pub use digest::Digest;
pub use statcache::StatCache;
pub use tree::{Tree, TreeEntry, TreeKind};

/// What a step produced: named outputs, each a file or a tree.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ActionRecord {
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
}

impl Store {
    pub fn open(cache_dir: &Path) -> Result<Store> {
        let root = cache_dir.join("v1");
        for sub in ["blobs", "trees", "actions", "last", "locks", "stat", "tmp"] {
            let dir = root.join(sub);
            fs::create_dir_all(&dir)
                .with_context(|| format!("creating cache directory {}", dir.display()))?;
        }
        let lock_path = root.join("store.lock");
        let lock = File::create(&lock_path)
            .with_context(|| format!("creating {}", lock_path.display()))?;
        lock.lock_shared()
            .with_context(|| format!("locking {}", lock_path.display()))?;
        Ok(Store { root, lock })
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

    fn blob_path(&self, d: &Digest) -> PathBuf {
        let hex = d.hex();
        self.root.join("blobs").join(&hex[..2]).join(hex)
    }

    pub fn has_blob(&self, d: &Digest) -> bool {
        self.blob_path(d).is_file()
    }

    /// Copies `path` into the store (the caller's file is left in place).
    pub fn put_file(&self, path: &Path) -> Result<(Digest, u64)> {
        let (digest, size) = Digest::of_file(path)?;
        let dest = self.blob_path(&digest);
        if !dest.is_file() {
            let staged = self.stage_copy(path)?;
            self.publish(&staged, &dest)?;
        }
        Ok((digest, size))
    }

    /// Moves `path` into the store (same filesystem: a rename).
    fn move_file(&self, path: &Path) -> Result<(Digest, u64)> {
        let (digest, size) = Digest::of_file(path)?;
        let dest = self.blob_path(&digest);
        if !dest.is_file() {
            let dir = dest.parent().expect("store paths have parents");
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            fs::set_permissions(path, fs::Permissions::from_mode(0o444))?;
            // A file with several names moves once; later names find the blob.
            if fs::rename(path, &dest).is_err() {
                return self.put_file(path);
            }
        }
        Ok((digest, size))
    }

    pub fn put_bytes(&self, bytes: &[u8]) -> Result<Digest> {
        let digest = Digest::of_bytes(bytes);
        let dest = self.blob_path(&digest);
        if !dest.is_file() {
            let staged = self.stage_bytes(bytes)?;
            self.publish(&staged, &dest)?;
        }
        Ok(digest)
    }

    /// The path of a blob after checking its digest. Callers only read it.
    /// A missing or corrupt blob also drops the tree manifests that name
    /// it, so the steps that made them run again next time (a lookup only
    /// checks that a tree's manifest exists: see `check_outputs`).
    pub fn verified_blob(&self, d: &Digest) -> Result<PathBuf> {
        let path = self.blob_path(d);
        if !path.is_file() {
            let dropped = self.forget_trees_naming(d);
            bail!(
                "store blob {} is missing from {}{}",
                d.short(),
                self.root.display(),
                if dropped > 0 {
                    format!("; the {dropped} tree record(s) naming it were removed, so the next build makes it again")
                } else {
                    String::new()
                }
            );
        }
        let (actual, _) = Digest::of_file(&path)?;
        if actual != *d {
            self.forget_trees_naming(d);
        }
        check_digest(&path, d, actual)?;
        Ok(path)
    }

    /// The path of a blob that must exist (read unverified by its caller):
    /// a missing one fails like `verified_blob`, dropping the trees naming it.
    fn present_blob(&self, d: &Digest) -> Result<PathBuf> {
        let path = self.blob_path(d);
        if path.is_file() {
            Ok(path)
        } else {
            self.verified_blob(d)
        }
    }

    /// Removes every tree manifest that names blob `d`; how many. Only on
    /// the error path: it reads every manifest.
    fn forget_trees_naming(&self, d: &Digest) -> usize {
        let hex = d.hex();
        let Ok(paths) = list_files(&self.root.join("trees")) else {
            return 0;
        };
        paths
            .iter()
            .filter(|p| {
                fs::read(p).is_ok_and(|b| b.windows(hex.len()).any(|w| w == hex.as_bytes()))
            })
            .filter(|p| fs::remove_file(p).is_ok())
            .count()
    }

    /// A blob's bytes if it is present, at most `max` bytes long and
    /// intact; `None` otherwise, with no repair (for reports that only
    /// say more when they can, like `--explain`).
    pub fn small_blob(&self, d: &Digest, max: u64) -> Option<Vec<u8>> {
        let path = self.blob_path(d);
        if fs::metadata(&path).ok()?.len() > max {
            return None;
        }
        let bytes = fs::read(&path).ok()?;
        (Digest::of_bytes(&bytes) == *d).then_some(bytes)
    }

    pub fn read_blob(&self, d: &Digest) -> Result<Vec<u8>> {
        let path = self.verified_blob(d)?;
        fs::read(&path).with_context(|| format!("reading {}", path.display()))
    }

    /// Copies a verified blob to `dest` through a temporary file and a rename.
    pub fn copy_blob_to(&self, d: &Digest, dest: &Path, mode: u32) -> Result<()> {
        let src = self.verified_blob(d)?;
        let dir = dest.parent().unwrap_or(Path::new("."));
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("creating a file in {}", dir.display()))?;
        fs::copy(&src, tmp.path()).with_context(|| format!("copying into {}", dir.display()))?;
        fs::set_permissions(tmp.path(), fs::Permissions::from_mode(mode))?;
        tmp.persist(dest)
            .with_context(|| format!("renaming into place {}", dest.display()))?;
        Ok(())
    }

    /// Records a directory as a tree: its files become blobs.
    pub fn put_tree(&self, dir: &Path) -> Result<Digest> {
        self.put_tree_with(dir, Modes::AsOnDisk)
    }

    /// Records a directory as a tree with the given mode policy.
    pub fn put_tree_with(&self, dir: &Path, modes: Modes) -> Result<Digest> {
        self.record_tree(dir, modes, false)
    }

    /// Records a local input (an overlay, a `--source` tree) as a tree,
    /// re-hashing only the files whose size, mtime or inode changed since
    /// the last time (`statcache`).
    pub fn put_local_tree(&self, dir: &Path, modes: Modes) -> Result<Digest> {
        let mut stat = StatCache::load(&self.root, dir);
        let digest = self.walk_tree(dir, modes, |rel, path, meta| {
            self.put_file_stat(&mut stat, rel, path, meta)
        })?;
        stat.save();
        Ok(digest)
    }

    /// `put_file` for a local input file, with the stat cache.
    pub fn put_local_file(&self, path: &Path) -> Result<(Digest, u64)> {
        let mut stat = StatCache::load(&self.root, path);
        let meta = path
            .metadata()
            .with_context(|| format!("stat {}", path.display()))?;
        let found = self.put_file_stat(&mut stat, "", path, &meta)?;
        stat.save();
        Ok(found)
    }

    /// `put_file`, unless `stat` still vouches for the file (`rel` in it,
    /// `meta` taken before any read) and its blob is in the store.
    fn put_file_stat(
        &self,
        stat: &mut StatCache,
        rel: &str,
        path: &Path,
        meta: &fs::Metadata,
    ) -> Result<(Digest, u64)> {
        let found = match stat.lookup(rel, meta) {
            Some(hit) if self.has_blob(&hit.0) => hit,
            _ => self.put_file(path)?,
        };
        stat.record(rel, meta, found.0);
        Ok(found)
    }

    /// Records a step's scratch directory as a tree, moving its files into
    /// the store instead of copying them (the directory is consumed). For
    /// large outputs such as an unpacked kernel source or a compiled tree.
    pub fn put_tree_owned(&self, dir: &Path) -> Result<Digest> {
        self.record_tree(dir, Modes::AsOnDisk, true)
    }

    /// `put_tree_owned` with modes recorded as `modes` says.
    pub fn put_tree_owned_with(&self, dir: &Path, modes: Modes) -> Result<Digest> {
        self.record_tree(dir, modes, true)
    }

    fn record_tree(&self, dir: &Path, modes: Modes, consume: bool) -> Result<Digest> {
        self.walk_tree(dir, modes, |_, path, _| {
            if consume {
                self.move_file(path)
            } else {
                self.put_file(path)
            }
        })
    }

    /// Records the tree at `dir`, storing each regular file with `store`
    /// (given its relative path, path and metadata).
    fn walk_tree(
        &self,
        dir: &Path,
        modes: Modes,
        mut store: impl FnMut(&str, &Path, &fs::Metadata) -> Result<(Digest, u64)>,
    ) -> Result<Digest> {
        let mut entries = Vec::new();
        let skip_vcs = modes == Modes::GitLike;
        for entry in walkdir::WalkDir::new(dir)
            .min_depth(1)
            .sort_by(|a, b| a.file_name().cmp(b.file_name()))
            .into_iter()
            .filter_entry(|e| !(skip_vcs && e.file_name() == ".git"))
        {
            let entry = entry.with_context(|| format!("walking {}", dir.display()))?;
            let rel = relative_path(dir, entry.path())?;
            let meta = entry
                .path()
                .symlink_metadata()
                .with_context(|| format!("stat {}", entry.path().display()))?;
            let mode = modes.apply(meta.permissions().mode() & 0o7777, meta.is_dir());
            let kind = if meta.file_type().is_symlink() {
                let target = fs::read_link(entry.path())?;
                TreeKind::Symlink {
                    target: target.to_string_lossy().into_owned(),
                }
            } else if meta.is_dir() {
                TreeKind::Dir { mode }
            } else if meta.is_file() {
                let (digest, size) = store(&rel, entry.path(), &meta)?;
                TreeKind::File { digest, size, mode }
            } else {
                bail!(
                    "{} is neither a file, directory nor symlink; trees cannot hold it",
                    entry.path().display()
                );
            };
            entries.push(TreeEntry { path: rel, kind });
        }
        entries.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
        self.write_manifest(&Tree { entries })
    }

    /// Records a tree assembled from blobs already in the store (a step
    /// that picks files out of other trees copies no data). Entries must be
    /// sorted, parents first; every file's blob must exist.
    pub fn put_tree_manifest(&self, tree: &Tree) -> Result<Digest> {
        for (path, digest, _) in tree.files() {
            if !self.has_blob(digest) {
                bail!(
                    "tree entry {path}: blob {} is not in the store",
                    digest.hex()
                );
            }
        }
        self.write_manifest(tree)
    }

    fn write_manifest(&self, tree: &Tree) -> Result<Digest> {
        let digest = tree.digest();
        let dest = self
            .root
            .join("trees")
            .join(format!("{}.json", digest.hex()));
        if !dest.is_file() {
            let staged = self.stage_bytes(&tree.to_bytes())?;
            self.publish(&staged, &dest)?;
        }
        Ok(digest)
    }

    pub fn has_tree(&self, d: &Digest) -> bool {
        self.root
            .join("trees")
            .join(format!("{}.json", d.hex()))
            .is_file()
    }

    /// Reads a tree manifest, verifying its digest (not yet its blobs).
    pub fn tree(&self, d: &Digest) -> Result<Tree> {
        let path = self.root.join("trees").join(format!("{}.json", d.hex()));
        let bytes =
            fs::read(&path).with_context(|| format!("reading tree manifest {}", path.display()))?;
        let actual = Digest::of_bytes(&bytes);
        check_digest(&path, d, actual)?;
        serde_json::from_slice(&bytes)
            .with_context(|| format!("parsing tree manifest {}", path.display()))
    }

    /// Writes a tree out as real files under `dest` (which must not exist).
    pub fn materialize(&self, tree: &Tree, dest: &Path) -> Result<()> {
        fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
        let mut dirs = Vec::new();
        for e in &tree.entries {
            let path = dest.join(&e.path);
            match &e.kind {
                TreeKind::Dir { mode } => {
                    fs::create_dir_all(&path)
                        .with_context(|| format!("creating {}", path.display()))?;
                    dirs.push((path, *mode));
                }
                TreeKind::File { digest, mode, .. } => {
                    let src = self.verified_blob(digest)?;
                    fs::copy(&src, &path)
                        .with_context(|| format!("copying to {}", path.display()))?;
                    fs::set_permissions(&path, fs::Permissions::from_mode(*mode))?;
                }
                TreeKind::Symlink { target } => {
                    std::os::unix::fs::symlink(target, &path)
                        .with_context(|| format!("creating symlink {}", path.display()))?;
                }
            }
        }
        // Directory modes last: a read-only directory would refuse its children.
        for (path, mode) in dirs.into_iter().rev() {
            fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
        }
        Ok(())
    }

    /// Writes the entries of `tree` under `prefix` (`""` for all) to `dest`
    /// with `prefix` stripped, hard-linking blobs instead of copying them.
    /// For steps that only read these files: the links share the blob's
    /// inode, whose mode stays read-only, so callers take modes from the
    /// tree. With `Verify::Later` blobs are linked unread (fast for large
    /// trees); the caller must then verify every blob whose bytes it passes
    /// on (`verified_blob`).
    pub fn link_subtree(
        &self,
        tree: &Tree,
        prefix: &str,
        dest: &Path,
        verify: Verify,
    ) -> Result<()> {
        let prefix = match prefix.trim_end_matches('/') {
            "" => String::new(),
            p => format!("{p}/"),
        };
        fs::create_dir_all(dest).with_context(|| format!("creating {}", dest.display()))?;
        for e in tree.entries.iter().filter(|e| e.path.starts_with(&prefix)) {
            let path = dest.join(&e.path[prefix.len()..]);
            match &e.kind {
                TreeKind::Dir { .. } => fs::create_dir_all(&path)
                    .with_context(|| format!("creating {}", path.display()))?,
                TreeKind::File { digest, .. } => {
                    let src = match verify {
                        Verify::Now => self.verified_blob(digest)?,
                        Verify::Later => self.present_blob(digest)?,
                    };
                    // Never write through an existing name: it may be a link to a blob.
                    let _ = fs::remove_file(&path);
                    if fs::hard_link(&src, &path).is_err() {
                        fs::copy(&src, &path)
                            .with_context(|| format!("copying to {}", path.display()))?;
                    }
                }
                TreeKind::Symlink { target } => std::os::unix::fs::symlink(target, &path)
                    .with_context(|| format!("creating symlink {}", path.display()))?,
            }
        }
        Ok(())
    }

    /// A read-only working copy of `tree` at `dest` for a tool that reads a
    /// large tree (a kernel source): files are hard links to their blobs,
    /// except executables, which are copied (with the blob's mtime) so that
    /// their mode bits apply.
    /// Blobs are linked unread (`Verify::Later`): the tree's files were
    /// digest-checked when it was recorded and the copy is never stored.
    pub fn checkout(&self, tree: &Tree, dest: &Path) -> Result<()> {
        self.link_subtree(tree, "", dest, Verify::Later)?;
        for e in &tree.entries {
            if let TreeKind::File { digest, mode, .. } = &e.kind {
                if mode & 0o111 != 0 {
                    let path = dest.join(&e.path);
                    let blob = self.blob_path(digest);
                    fs::remove_file(&path)?;
                    fs::copy(&blob, &path)
                        .with_context(|| format!("copying to {}", path.display()))?;
                    fs::set_permissions(&path, fs::Permissions::from_mode(*mode))?;
                    // The copy keeps the blob's mtime like the links do: tools
                    // that compare mtimes (make) see one consistent source tree.
                    let mtime = fs::metadata(&blob)?.modified()?;
                    // Times need ownership, not a writable handle: a mode
                    // without owner write (0555) must not fail for non-root.
                    File::open(&path)?.set_modified(mtime)?;
                }
            }
        }
        Ok(())
    }

    fn action_path(&self, key: &Digest) -> PathBuf {
        self.root
            .join("actions")
            .join(format!("{}.json", key.hex()))
    }

    /// The record for `key` if present and every output it names is intact.
    /// A record with a missing or corrupt output is removed: a miss.
    pub fn action(&self, key: &Digest) -> Result<Option<ActionRecord>> {
        let path = self.action_path(key);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let record: ActionRecord = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("dropping unreadable action record {}: {e}", path.display());
                let _ = fs::remove_file(&path);
                return Ok(None);
            }
        };
        if let Err(e) = self.check_outputs(&record) {
            tracing::warn!("{e:#}");
            let _ = fs::remove_file(&path);
            return Ok(None);
        }
        mark_used(&path);
        Ok(Some(record))
    }

    /// Whether a record's outputs are still in the store, cheaply: a file
    /// output's blob exists with its size, a tree's manifest exists (the
    /// store writes a manifest only after every blob it names, and `gc`
    /// removes no blob a kept manifest names). Contents are verified when
    /// read (`verified_blob`), which also drops the manifests of a blob
    /// found missing or corrupt. Hashing every output here made a no-op
    /// build hash every cached kernel and ISO.
    fn check_outputs(&self, record: &ActionRecord) -> Result<()> {
        for output in record.outputs.values() {
            match output {
                Output::File { digest, size } => {
                    let path = self.blob_path(digest);
                    match fs::metadata(&path) {
                        Ok(m) if m.len() == *size => {}
                        Ok(m) => {
                            let _ = fs::remove_file(&path);
                            self.forget_trees_naming(digest);
                            bail!(
                                "corrupt store entry {}: expected {size} bytes, found {}; it has been removed and will be rebuilt",
                                path.display(),
                                m.len()
                            );
                        }
                        Err(_) => bail!(
                            "store blob {} is missing from {}",
                            digest.short(),
                            self.root.display()
                        ),
                    }
                }
                Output::Tree { digest } if self.has_tree(digest) => {}
                Output::Tree { digest } => bail!(
                    "store tree {} is missing from {}",
                    digest.short(),
                    self.root.display()
                ),
            }
        }
        Ok(())
    }

    /// The stat cache of a local directory (e.g. `output/`): see `statcache`.
    pub fn stat_cache(&self, root: &Path) -> StatCache {
        StatCache::load(&self.root, root)
    }

    /// Remembers the key components `identity` (a step's stable name) had
    /// in its latest build, so the next plan can say what changed.
    pub fn put_last(&self, identity: &str, components: &serde_json::Value) -> Result<()> {
        let path = self.last_path(identity);
        if fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .as_ref()
            == Some(components)
        {
            return Ok(());
        }
        let staged = self.stage_bytes(&serde_json::to_vec(components)?)?;
        self.publish(&staged, &path)
    }

    pub fn last(&self, identity: &str) -> Option<serde_json::Value> {
        serde_json::from_slice(&fs::read(self.last_path(identity)).ok()?).ok()
    }

    fn last_path(&self, identity: &str) -> PathBuf {
        self.root.join("last").join(format!(
            "{}.json",
            Digest::of_bytes(identity.as_bytes()).hex()
        ))
    }

    pub fn put_action(&self, key: &Digest, record: &ActionRecord) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(record)?;
        let staged = self.stage_bytes(&bytes)?;
        self.publish(&staged, &self.action_path(key))
    }

    /// Holds an exclusive lock on `key` while one process builds it; a second
    /// process waits and then finds the record.
    pub fn lock_key(&self, key: &Digest) -> Result<KeyLock> {
        let path = self.root.join("locks").join(key.hex());
        let file =
            File::create(&path).with_context(|| format!("creating lock {}", path.display()))?;
        file.lock()
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(KeyLock { _file: file })
    }

    fn stage_bytes(&self, bytes: &[u8]) -> Result<tempfile::NamedTempFile> {
        let mut tmp = tempfile::NamedTempFile::new_in(self.root.join("tmp"))
            .context("creating a temporary file in the cache")?;
        tmp.write_all(bytes)
            .context("writing a temporary file in the cache")?;
        tmp.as_file().sync_all().ok();
        Ok(tmp)
    }

    fn stage_copy(&self, src: &Path) -> Result<tempfile::NamedTempFile> {
        let tmp = tempfile::NamedTempFile::new_in(self.root.join("tmp"))
            .context("creating a temporary file in the cache")?;
        fs::copy(src, tmp.path())
            .with_context(|| format!("copying {} into the cache", src.display()))?;
        Ok(tmp)
    }

    fn publish(&self, staged: &tempfile::NamedTempFile, dest: &Path) -> Result<()> {
        let dir = dest.parent().expect("store paths have parents");
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(staged.path(), fs::Permissions::from_mode(0o444))?;
        fs::rename(staged.path(), dest).with_context(|| format!("renaming into {}", dest.display()))
    }
}

/// What `gc` removed and kept.
#[derive(Debug, Default)]
pub struct GcReport {
    pub actions: usize,
    pub trees: usize,
    pub blobs: usize,
    pub scratch: usize,
    /// Stat caches of local directories that no longer exist.
    pub stat: usize,
    pub freed: u64,
    pub kept: u64,
}

impl Store {
    /// Removes action records not used for `max_age` (when given), then every
    /// tree and blob that no remaining record reaches, stat caches of
    /// directories that are gone, and leftover scratch directories of
    /// killed builds. Holds the store-wide lock exclusively.
    pub fn gc(&self, max_age: Option<std::time::Duration>) -> Result<GcReport> {
        // flock converts this handle's shared lock: waits for other builds.
        self.lock.lock().context("locking the store for gc")?;
        let mut report = GcReport::default();
        let mut live_trees = std::collections::BTreeSet::new();
        let mut live_blobs = std::collections::BTreeSet::new();
        for path in list_files(&self.root.join("actions"))? {
            let old = max_age.is_some_and(|age| {
                fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|e| e > age)
            });
            let record = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<ActionRecord>(&b).ok());
            match record {
                Some(r) if !old => {
                    for o in r.outputs.values() {
                        match o {
                            Output::File { digest, .. } => {
                                live_blobs.insert(*digest);
                            }
                            Output::Tree { digest } => {
                                live_trees.insert(*digest);
                                if let Ok(t) = self.tree(digest) {
                                    live_blobs.extend(t.files().map(|(_, d, _)| *d));
                                }
                            }
                        }
                    }
                }
                _ => report.actions += remove(&path, &mut report.freed),
            }
        }
        for path in list_files(&self.root.join("trees"))? {
            let live = digest_of_name(&path).is_some_and(|d| live_trees.contains(&d));
            if !live {
                report.trees += remove(&path, &mut report.freed);
            }
        }
        for dir in list_files(&self.root.join("blobs"))? {
            for path in list_files(&dir)? {
                let live = digest_of_name(&path).is_some_and(|d| live_blobs.contains(&d));
                if live {
                    report.kept += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                } else {
                    report.blobs += remove(&path, &mut report.freed);
                }
            }
        }
        if let Ok(paths) = list_files(&self.root.join("stat")) {
            for path in paths.iter().filter(|p| statcache::is_stale(p)) {
                report.stat += remove(path, &mut report.freed);
            }
        }
        for path in list_files(&self.root.join("tmp"))? {
            let _ = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            report.scratch += 1;
        }
        Ok(report)
    }
}

/// A record's mtime is when it was last used: `gc --keep-days` drops the
/// ones no build has looked up for that long. Touched at most hourly so a
/// no-op build writes nothing; a read-only store simply stays as it is.
fn mark_used(path: &Path) {
    const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);
    let stale = fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > HOUR);
    if stale {
        // A read-only handle: records are 0444, and times need ownership.
        let _ = File::open(path).and_then(|f| f.set_modified(std::time::SystemTime::now()));
    }
}

/// A store entry whose bytes do not match its name is removed and reported.
fn check_digest(path: &Path, expected: &Digest, actual: Digest) -> Result<()> {
    if actual == *expected {
        return Ok(());
    }
    let _ = fs::remove_file(path);
    Err(Corrupt {
        path: path.to_path_buf(),
        expected: *expected,
        actual,
    }
    .into())
}

fn list_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        out.push(e?.path());
    }
    out.sort();
    Ok(out)
}

fn digest_of_name(path: &Path) -> Option<Digest> {
    path.file_name()?
        .to_str()?
        .trim_end_matches(".json")
        .parse()
        .ok()
}

fn remove(path: &Path, freed: &mut u64) -> usize {
    let size = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    match fs::remove_file(path) {
        Ok(()) => {
            *freed += size;
            1
        }
        Err(_) => 0,
    }
}

/// Released when dropped (the lock is the open file).
pub struct KeyLock {
    _file: File,
}

fn relative_path(base: &Path, path: &Path) -> Result<String> {
    let rel = path
        .strip_prefix(base)
        .with_context(|| format!("{} is not under {}", path.display(), base.display()))?;
    let s = rel
        .to_str()
        .with_context(|| format!("{} is not valid UTF-8", rel.display()))?;
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn corrupt_blob_is_reported_removed_and_not_used() {
        let cache = tempfile::tempdir().unwrap();
        let store = Store::open(cache.path()).unwrap();
        let d = store.put_bytes(b"hello").unwrap();
        let path = store.blob_path(&d);
        fs::set_permissions(&path, fs::Permissions::from_mode(0o644)).unwrap();
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
            fs::Permissions::from_mode(0o755),
        )
        .unwrap();
        std::os::unix::fs::symlink("tool", src.path().join("bin/alias")).unwrap();
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
}
