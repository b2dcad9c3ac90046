//! Trees in the store: a directory recorded as a manifest of its entries'
//! blobs (`tree.rs` is the manifest's type), and checked out again by
//! copying or hard-linking.

use fs_err as fs;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::{anyhow, bail, Context, Result};

use super::beneath::Beneath;
use super::*;

impl Store {
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
    pub(super) fn put_file_stat(
        &self,
        stat: &mut StatCache,
        rel: &str,
        path: &Path,
        meta: &std::fs::Metadata,
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

    pub(super) fn record_tree(&self, dir: &Path, modes: Modes, consume: bool) -> Result<Digest> {
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
    pub(super) fn walk_tree(
        &self,
        dir: &Path,
        modes: Modes,
        mut store: impl FnMut(&str, &Path, &std::fs::Metadata) -> Result<(Digest, u64)>,
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
        tree.check()
            .map_err(|why| anyhow!("tree {} is refused: {why}", tree.digest().hex()))?;
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

    pub(super) fn write_manifest(&self, tree: &Tree) -> Result<Digest> {
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
        let tree: Tree = serde_json::from_slice(&bytes)
            .with_context(|| format!("parsing tree manifest {}", path.display()))?;
        tree.check()
            .map_err(|why| anyhow!("tree manifest {} is refused: {why}", path.display()))?;
        Ok(tree)
    }

    /// Writes a tree out as real files under `dest` (which must not exist).
    pub fn materialize(&self, tree: &Tree, dest: &Path) -> Result<()> {
        let out = Beneath::open(dest)?;
        let mut dirs = Vec::new();
        for e in &tree.entries {
            match &e.kind {
                TreeKind::Dir { mode } => {
                    out.dir(&e.path)?;
                    dirs.push((e.path.as_str(), *mode));
                }
                TreeKind::File { digest, mode, .. } => {
                    out.copy(&e.path, &self.verified_blob(digest)?, *mode)?;
                }
                TreeKind::Symlink { target } => out.symlink(&e.path, target)?,
            }
        }
        // Directory modes last: a read-only directory would refuse its children.
        for (path, mode) in dirs.into_iter().rev() {
            out.set_dir_mode(path, mode)?;
        }
        Ok(())
    }

    /// Writes the entries of `tree` under `prefix` (`""` for all) to `dest`
    /// with `prefix` stripped, hard-linking blobs instead of copying them.
    /// For steps that only read these files: the links share the blob's
    /// inode, whose mode stays read-only, so callers take modes from the
    /// tree. With `Verify::Later` blobs are linked unread (fast for large
    /// trees); the caller must then verify every blob whose bytes it passes
    /// on (`verified_blob`). `dest` may already hold files (another
    /// subtree's); nothing is written through a symlink there.
    pub fn link_subtree(
        &self,
        tree: &Tree,
        prefix: &str,
        dest: &Path,
        verify: Verify,
    ) -> Result<Shared> {
        self.place(tree, prefix, dest, verify, |_| false)
    }

    /// A read-only working copy of `tree` at `dest` (a new directory) for a
    /// tool that reads a large tree (a kernel source): files are hard links
    /// to their blobs, except executables, which are copied so that their
    /// mode bits apply. Blobs are linked unread: the tree's files were
    /// digest-checked when it was recorded and the copy is never stored.
    /// The links are returned for `verify_shared` after the tool ran.
    pub fn checkout(&self, tree: &Tree, dest: &Path) -> Result<Shared> {
        self.checkout_with(tree, dest, |mode| mode & 0o111 != 0)
    }

    /// `checkout` with every file copied, for a tool that writes inside
    /// the tree it builds (iPXE's make builds in `src/bin*`).
    pub fn checkout_copy(&self, tree: &Tree, dest: &Path) -> Result<()> {
        let shared = self.checkout_with(tree, dest, |_| true)?;
        debug_assert!(shared.links.is_empty());
        Ok(())
    }

    fn checkout_with(
        &self,
        tree: &Tree,
        dest: &Path,
        copy: impl Fn(u32) -> bool,
    ) -> Result<Shared> {
        self.place(tree, "", dest, Verify::Later, copy)
    }

    /// Writes the entries of `tree` under `prefix` to `dest` with `prefix`
    /// stripped: files whose mode `copy` selects (or that cannot be linked)
    /// are copied with their blob's mtime, the others hard-linked and
    /// returned as `Shared`. What `link_subtree` and the checkouts share.
    fn place(
        &self,
        tree: &Tree,
        prefix: &str,
        dest: &Path,
        verify: Verify,
        copy: impl Fn(u32) -> bool,
    ) -> Result<Shared> {
        let mut shared = Shared::default();
        let prefix = match prefix.trim_end_matches('/') {
            "" => String::new(),
            p => format!("{p}/"),
        };
        let out = Beneath::open(dest)?;
        for e in tree.entries.iter().filter(|e| e.path.starts_with(&prefix)) {
            let rel = &e.path[prefix.len()..];
            match &e.kind {
                TreeKind::Dir { .. } => out.dir(rel)?,
                TreeKind::Symlink { target } => out.symlink(rel, target)?,
                TreeKind::File { digest, mode, .. } => {
                    let blob = match verify {
                        Verify::Now => self.verified_blob(digest)?,
                        Verify::Later => self.present_blob(digest)?,
                    };
                    // Never write through an existing name: it may be a link to a blob.
                    out.remove(rel)?;
                    let before = fs::metadata(&blob)?;
                    let modified = before.modified()?;
                    if !copy(*mode) && out.hard_link(rel, &blob)? {
                        shared.links.push(SharedLink {
                            path: dest.join(rel),
                            digest: *digest,
                            len: before.len(),
                            modified,
                        });
                        continue;
                    }
                    // A copy keeps the blob's mtime like the links do: tools
                    // that compare mtimes (make) see one consistent tree.
                    out.copy(rel, &blob, *mode)?
                        .set_modified(modified)
                        .with_context(|| format!("setting the time of {}", e.path))?;
                }
            }
        }
        Ok(shared)
    }

    /// Checks that no tool wrote through the links `shared` made. Root
    /// ignores a blob's 0444, so a tool that rewrites a checked-out file in
    /// place (a compiler writing over a stale object of a dirty checkout)
    /// changes the store's copy. A blob whose size or mtime moved is hashed
    /// again; one whose bytes changed is removed, with the trees naming it,
    /// and the error names the file the tool wrote.
    pub fn verify_shared(&self, shared: &Shared) -> Result<()> {
        let mut seen = std::collections::HashSet::new();
        let mut written = Vec::new();
        for link in &shared.links {
            if !seen.insert(link.digest) {
                continue;
            }
            let moved = fs::metadata(self.blob_path(&link.digest))
                .map(|m| m.len() != link.len || m.modified().ok() != Some(link.modified))
                .unwrap_or(true);
            if moved && self.verified_blob(&link.digest).is_err() {
                written.push(link.path.display().to_string());
            }
        }
        match written.as_slice() {
            [] => Ok(()),
            [one, ..] => bail!(
                "a tool wrote into {} file(s) hard-linked from the store (first: {one}); those store \
                 entries were removed and are made again by the next build. A step's tools must \
                 not modify its checked-out inputs",
                written.len()
            ),
        }
    }
}

/// The store blobs a checkout hard-linked into a scratch directory, as they
/// were then; `Store::verify_shared` checks them once the tools have run.
#[must_use = "check it once the step's tools have run (StepContext does)"]
#[derive(Debug, Default)]
pub struct Shared {
    links: Vec<SharedLink>,
}

#[derive(Debug)]
struct SharedLink {
    /// Where the link is (what a tool would have written).
    path: PathBuf,
    digest: Digest,
    len: u64,
    modified: std::time::SystemTime,
}

impl Shared {
    pub fn append(&mut self, other: Shared) {
        self.links.extend(other.links);
    }
}

pub(super) fn relative_path(base: &Path, path: &Path) -> Result<String> {
    let rel = path
        .strip_prefix(base)
        .with_context(|| format!("{} is not under {}", path.display(), base.display()))?;
    let s = rel
        .to_str()
        .with_context(|| format!("{} is not valid UTF-8", rel.display()))?;
    Ok(s.to_string())
}
