//! Blobs: file contents named by their sha256, written through `tmp/` and
//! renamed into place, verified on every read.

use fs_err as fs;
use std::io::Write;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::*;

impl Store {
    pub(super) fn blob_path(&self, d: &Digest) -> PathBuf {
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
    pub(super) fn move_file(&self, path: &Path) -> Result<(Digest, u64)> {
        let (digest, size) = Digest::of_file(path)?;
        let dest = self.blob_path(&digest);
        if !dest.is_file() {
            let dir = dest.parent().expect("store paths have parents");
            fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
            fs::set_permissions(path, std::fs::Permissions::from_mode(0o444))?;
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
    pub(super) fn present_blob(&self, d: &Digest) -> Result<PathBuf> {
        let path = self.blob_path(d);
        if path.is_file() {
            Ok(path)
        } else {
            self.verified_blob(d)
        }
    }

    /// Removes every tree manifest that names blob `d`; how many. Only on
    /// the error path: it reads every manifest.
    pub(super) fn forget_trees_naming(&self, d: &Digest) -> usize {
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
        fs::set_permissions(tmp.path(), std::fs::Permissions::from_mode(mode))?;
        tmp.persist(dest)
            .with_context(|| format!("renaming into place {}", dest.display()))?;
        Ok(())
    }

    pub(super) fn stage_bytes(&self, bytes: &[u8]) -> Result<tempfile::NamedTempFile> {
        let mut tmp = tempfile::NamedTempFile::new_in(self.root.join("tmp"))
            .context("creating a temporary file in the cache")?;
        tmp.write_all(bytes)
            .context("writing a temporary file in the cache")?;
        tmp.as_file().sync_all().ok();
        Ok(tmp)
    }

    pub(super) fn stage_copy(&self, src: &Path) -> Result<tempfile::NamedTempFile> {
        let tmp = tempfile::NamedTempFile::new_in(self.root.join("tmp"))
            .context("creating a temporary file in the cache")?;
        fs::copy(src, tmp.path())
            .with_context(|| format!("copying {} into the cache", src.display()))?;
        Ok(tmp)
    }

    pub(super) fn publish(&self, staged: &tempfile::NamedTempFile, dest: &Path) -> Result<()> {
        let dir = dest.parent().expect("store paths have parents");
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(staged.path(), std::fs::Permissions::from_mode(0o444))?;
        fs::rename(staged.path(), dest).with_context(|| format!("renaming into {}", dest.display()))
    }
}

/// A store entry whose bytes do not match its name is removed and reported.
pub(super) fn check_digest(path: &Path, expected: &Digest, actual: Digest) -> Result<()> {
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
