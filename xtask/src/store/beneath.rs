//! Writing entries beneath a destination directory, never outside it.
//!
//! A tree manifest can come from another machine (the remote cache), and a
//! destination may already hold symlinks that a tree put there (`lib ->
//! /usr/lib` in a root file system, `src/config/local -> /etc` in an
//! operator's checkout). `Tree::check` refuses paths that climb out; this
//! is the second wall, for what a path check cannot see: every write goes
//! through a directory handle opened with `openat2(RESOLVE_BENEATH |
//! RESOLVE_NO_SYMLINKS)`, so a parent that is a symlink, or a path that
//! leaves the destination, is refused by the kernel instead of followed.
//! The last component is created by calls that never follow it
//! (`mkdirat`, `linkat`, `symlinkat`, `O_CREAT | O_EXCL | O_NOFOLLOW`).
//!
//! Written on `rustix` rather than `cap-std`: cap-std follows symlinks
//! that stay inside the directory, and Kiln wants none followed at all.

use std::cell::RefCell;
use std::fs::File;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use rustix::fs::{self as rfs, AtFlags, FileType, Mode, OFlags, ResolveFlags};
use rustix::io::Errno;

const RESOLVE: ResolveFlags = ResolveFlags::BENEATH
    .union(ResolveFlags::NO_SYMLINKS)
    .union(ResolveFlags::NO_MAGICLINKS);

/// A destination directory that entries are written beneath.
pub struct Beneath {
    root: OwnedFd,
    path: PathBuf,
    /// The parent directory opened last: tree entries come sorted, so
    /// siblings reuse it.
    last: RefCell<Option<(String, OwnedFd)>>,
}

impl Beneath {
    /// `dest`, created if missing. `dest` itself is Kiln's own path and
    /// trusted; only what lies beneath it is checked.
    pub fn open(dest: &Path) -> Result<Beneath> {
        fs_err::create_dir_all(dest)?;
        let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let root = rfs::open(dest, flags, Mode::empty())
            .map_err(std::io::Error::from)
            .with_context(|| format!("opening {}", dest.display()))?;
        Ok(Beneath {
            root,
            path: dest.to_path_buf(),
            last: RefCell::new(None),
        })
    }

    /// Creates the directory `rel` (its parent must exist); an existing
    /// directory is fine, anything else there is an error.
    pub fn dir(&self, rel: &str) -> Result<()> {
        self.within(rel, |dir, name| {
            match rfs::mkdirat(dir, name, Mode::from_raw_mode(0o755)) {
                Err(Errno::EXIST) if is_dir(dir, name)? => Ok(()),
                Err(Errno::EXIST) => Err(Errno::NOTDIR),
                other => other,
            }
        })
    }

    /// Creates `rel` and every missing directory above it.
    pub fn dir_all(&self, rel: &str) -> Result<()> {
        let mut end = 0;
        for (i, _) in rel.match_indices('/').chain([(rel.len(), "")]) {
            if i > end {
                self.dir(&rel[..i])?;
            }
            end = i + 1;
        }
        Ok(())
    }

    /// Removes the file or symlink `rel` if there is one (never what a
    /// symlink points to).
    pub fn remove(&self, rel: &str) -> Result<()> {
        self.within(rel, |dir, name| {
            match rfs::unlinkat(dir, name, AtFlags::empty()) {
                Err(Errno::NOENT) => Ok(()),
                other => other,
            }
        })
    }

    /// Hard-links `src` as `rel`; `false` when the file system cannot
    /// (another device, a link limit), for the caller to copy instead.
    pub fn hard_link(&self, rel: &str, src: &Path) -> Result<bool> {
        self.within(rel, |dir, name| {
            match rfs::linkat(rfs::CWD, src, dir, name, AtFlags::empty()) {
                Ok(()) => Ok(true),
                Err(Errno::XDEV | Errno::PERM | Errno::MLINK) => Ok(false),
                Err(e) => Err(e),
            }
        })
    }

    /// Creates the file `rel` (which must not exist) with exactly `mode`,
    /// and returns it open for writing.
    pub fn create(&self, rel: &str, mode: u32) -> Result<File> {
        let flags = OFlags::CREATE | OFlags::EXCL | OFlags::WRONLY | OFlags::NOFOLLOW;
        let fd = self.within(rel, |dir, name| {
            let fd = rfs::openat(
                dir,
                name,
                flags | OFlags::CLOEXEC,
                Mode::from_raw_mode(0o600),
            )?;
            // Exactly `mode`, whatever the umask.
            rfs::fchmod(&fd, Mode::from_raw_mode(mode))?;
            Ok(fd)
        })?;
        Ok(File::from(fd))
    }

    /// Copies `src` to the new file `rel` with `mode`; returns it open.
    pub fn copy(&self, rel: &str, src: &Path, mode: u32) -> Result<File> {
        let mut from = fs_err::File::open(src)?;
        let mut to = self.create(rel, mode)?;
        std::io::copy(&mut from, &mut to)
            .with_context(|| format!("copying {} to {}", src.display(), self.show(rel)))?;
        Ok(to)
    }

    /// Creates the symlink `rel` pointing at `target` (which is not
    /// followed here, whatever it names).
    pub fn symlink(&self, rel: &str, target: &str) -> Result<()> {
        self.within(rel, |dir, name| rfs::symlinkat(target, dir, name))
    }

    /// Sets the mode of the directory `rel` (`""` for the destination).
    pub fn set_dir_mode(&self, rel: &str, mode: u32) -> Result<()> {
        let path = if rel.is_empty() { "." } else { rel };
        let flags = OFlags::RDONLY | OFlags::DIRECTORY | OFlags::CLOEXEC;
        let fd = rfs::openat2(&self.root, path, flags, Mode::empty(), RESOLVE)
            .map_err(|e| self.error(rel, e))?;
        rfs::fchmod(&fd, Mode::from_raw_mode(mode)).map_err(|e| self.error(rel, e))
    }

    /// Runs `f` with the directory holding `rel`, opened beneath the
    /// destination without following a symlink, and `rel`'s last name.
    fn within<T>(
        &self,
        rel: &str,
        f: impl FnOnce(BorrowedFd<'_>, &str) -> rustix::io::Result<T>,
    ) -> Result<T> {
        let (parent, name) = rel.rsplit_once('/').unwrap_or(("", rel));
        if matches!(name, "" | "." | "..") {
            bail!("{}: not a name Kiln writes", self.show(rel));
        }
        if parent.is_empty() {
            return f(self.root.as_fd(), name).map_err(|e| self.error(rel, e));
        }
        let mut last = self.last.borrow_mut();
        if last.as_ref().is_none_or(|(p, _)| p != parent) {
            let flags = OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC;
            let fd = rfs::openat2(&self.root, parent, flags, Mode::empty(), RESOLVE)
                .map_err(|e| self.error(rel, e))?;
            *last = Some((parent.to_string(), fd));
        }
        let (_, dir) = last.as_ref().expect("set above");
        f(dir.as_fd(), name).map_err(|e| self.error(rel, e))
    }

    fn show(&self, rel: &str) -> String {
        self.path.join(rel).display().to_string()
    }

    fn error(&self, rel: &str, e: Errno) -> anyhow::Error {
        match e {
            Errno::LOOP => anyhow::anyhow!(
                "{}: a directory on the way is a symbolic link, and Kiln never writes through one",
                self.show(rel)
            ),
            Errno::XDEV => anyhow::anyhow!(
                "{}: leads outside {}, where Kiln does not write",
                self.show(rel),
                self.path.display()
            ),
            Errno::NOTDIR => anyhow::anyhow!(
                "{}: something on the way is not a directory (a file or a symbolic link)",
                self.show(rel)
            ),
            e => anyhow::Error::new(std::io::Error::from(e))
                .context(format!("writing {}", self.show(rel))),
        }
    }
}

/// The bytes of the regular file `rel` beneath `root`, reached without
/// following a symlink anywhere on the way: what `publish` uploads when a
/// manifest it did not write names a path.
pub fn read_file(root: &Path, rel: &str) -> Result<Vec<u8>> {
    let shown = || root.join(rel).display().to_string();
    let dir = rfs::open(
        root,
        OFlags::PATH | OFlags::DIRECTORY | OFlags::CLOEXEC,
        Mode::empty(),
    )
    .map_err(std::io::Error::from)
    .with_context(|| format!("opening {}", root.display()))?;
    let flags = OFlags::RDONLY | OFlags::NOFOLLOW | OFlags::CLOEXEC;
    let fd = rfs::openat2(&dir, rel, flags, Mode::empty(), RESOLVE).map_err(|e| match e {
        Errno::LOOP => anyhow::anyhow!("{}: a symbolic link is on the way", shown()),
        Errno::XDEV => anyhow::anyhow!("{}: leads outside {}", shown(), root.display()),
        e => anyhow::Error::new(std::io::Error::from(e)).context(format!("opening {}", shown())),
    })?;
    let stat = rfs::fstat(&fd).map_err(std::io::Error::from)?;
    if FileType::from_raw_mode(stat.st_mode) != FileType::RegularFile {
        bail!("{}: not a regular file", shown());
    }
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut File::from(fd), &mut bytes)
        .with_context(|| format!("reading {}", shown()))?;
    Ok(bytes)
}

fn is_dir(dir: BorrowedFd<'_>, name: &str) -> rustix::io::Result<bool> {
    let stat = rfs::statat(dir, name, AtFlags::SYMLINK_NOFOLLOW)?;
    Ok(FileType::from_raw_mode(stat.st_mode) == FileType::Directory)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn writes_land_beneath_and_never_through_a_symlink() {
        let tmp = tempfile::tempdir().unwrap();
        let (dest, outside) = (tmp.path().join("dest"), tmp.path().join("outside"));
        fs_err::create_dir_all(&outside).unwrap();
        let b = Beneath::open(&dest).unwrap();
        b.dir_all("a/b").unwrap();
        b.create("a/b/f", 0o640).unwrap().write_all(b"x").unwrap();
        b.symlink("a/out", outside.to_str().unwrap()).unwrap();
        b.symlink("a/up", "..").unwrap();
        let mode = |p: &Path| {
            std::os::unix::fs::PermissionsExt::mode(&p.metadata().unwrap().permissions())
        };
        assert_eq!(mode(&dest.join("a/b/f")) & 0o777, 0o640);

        let refused = [
            b.create("a/out/f", 0o644).map(drop),
            b.dir("a/out/d"),
            b.symlink("a/out/l", "x"),
            b.hard_link("a/out/h", &dest.join("a/b/f")).map(drop),
            b.create("a/up/f", 0o644).map(drop),
            b.create("../f", 0o644).map(drop),
            b.create("/tmp/f", 0o644).map(drop),
            b.set_dir_mode("a/out", 0o700),
        ];
        for (i, r) in refused.into_iter().enumerate() {
            let err = format!("{:#}", r.expect_err(&format!("write {i} was allowed")));
            assert!(
                err.contains("symbolic link") || err.contains("outside"),
                "{i}: {err}"
            );
        }
        assert_eq!(fs_err::read_dir(&outside).unwrap().count(), 0);
        // The last component is never followed either: an existing symlink
        // named like the new file is an error, and removing it removes the link.
        assert!(b.create("a/out", 0o644).is_err());
        b.remove("a/out").unwrap();
        assert!(outside.is_dir());
        b.set_dir_mode("a/b", 0o555).unwrap();
        assert_eq!(mode(&dest.join("a/b")) & 0o777, 0o555);
    }
}
