//! A path looked up inside an unpacked package tree as the kernel would if the tree were the root
//! filesystem: each component is checked with `lstat`, a symlink's target is followed inside the
//! tree (an absolute target starts again at the tree's root), and every symlink passed is
//! recorded, because an image needs those links for the path to work in it.
//!
//! Nothing is ever opened through a symlink on the host, so a link cannot reach outside the tree;
//! a `..` that would climb above the tree's root is an error rather than the root itself, since
//! a package that needs it is broken.

use fs_err as fs;
use std::io;
use std::path::{Path, PathBuf};

/// Linux's MAXSYMLINKS (include/linux/namei.h): more links than this on one lookup is ELOOP.
const MAX_LINKS: usize = 40;

/// A symlink passed on the way to a file: its path in the tree and its target as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    pub path: String,
    pub target: String,
}

/// Where a path leads inside a tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The symlinks followed, in the order they were met.
    pub links: Vec<Link>,
    /// The regular file reached, with no symlink left in its path.
    pub file: String,
}

/// A tree whose links cannot be followed.
#[derive(Debug, thiserror::Error)]
pub enum TreeError {
    #[error("the symlink {link} -> {target} in {} leads outside the tree", tree.display())]
    LinkEscapes {
        tree: PathBuf,
        link: String,
        target: String,
    },
    #[error("{path} climbs above the root of {} with `..`", tree.display())]
    PathEscapes { tree: PathBuf, path: String },
    #[error(
        "looking up {path} in {} follows more than {MAX_LINKS} symlinks; they loop",
        tree.display()
    )]
    Loop { tree: PathBuf, path: String },
    #[error("the symlink {link} in {} has a target that is not UTF-8", tree.display())]
    NonUtf8Link { tree: PathBuf, link: String },
    /// fs_err's message names the path and the operation.
    #[error(transparent)]
    Io(#[from] io::Error),
}

/// The regular file `path` leads to inside `tree`, or `None` when it leads nowhere (a missing
/// component, a dangling link, a directory or a device at the end).
pub fn find_file(tree: &Path, path: &str) -> Result<Option<Found>, TreeError> {
    let mut walk = Walk {
        tree,
        path,
        pending: components(path).rev().map(str::to_string).collect(),
        done: Vec::new(),
        links: Vec::new(),
        at_file: false,
    };
    while let Some(part) = walk.pending.pop() {
        let went = match part.as_str() {
            ".." => walk.up()?,
            _ => walk.down(part)?,
        };
        if !went {
            return Ok(None);
        }
    }
    Ok(walk.at_file.then(|| Found {
        links: walk.links,
        file: walk.done.join("/"),
    }))
}

fn components(path: &str) -> impl DoubleEndedIterator<Item = &str> {
    path.split('/').filter(|c| !c.is_empty() && *c != ".")
}

struct Walk<'a> {
    tree: &'a Path,
    path: &'a str,
    /// Components still to walk, the next one last.
    pending: Vec<String>,
    /// Components walked, none of them a symlink.
    done: Vec<String>,
    links: Vec<Link>,
    /// Whether `done` names a regular file.
    at_file: bool,
}

impl Walk<'_> {
    fn up(&mut self) -> Result<bool, TreeError> {
        if self.at_file {
            return Ok(false); // `file/..` is ENOTDIR
        }
        if self.done.pop().is_some() {
            self.at_file = false;
            return Ok(true);
        }
        Err(match self.links.last() {
            Some(link) => TreeError::LinkEscapes {
                tree: self.tree.to_path_buf(),
                link: link.path.clone(),
                target: link.target.clone(),
            },
            None => TreeError::PathEscapes {
                tree: self.tree.to_path_buf(),
                path: self.path.to_string(),
            },
        })
    }

    /// Steps into `part`; `false` when there is nothing to step into.
    fn down(&mut self, part: String) -> Result<bool, TreeError> {
        let rel = self.done.iter().chain([&part]).cloned().collect::<Vec<_>>();
        let rel = rel.join("/");
        let full = self.tree.join(&rel);
        let meta = match fs::symlink_metadata(&full) {
            Ok(meta) => meta,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
            Err(e) if e.kind() == io::ErrorKind::NotADirectory => return Ok(false),
            Err(source) => return Err(source.into()),
        };
        if meta.file_type().is_symlink() {
            return self.follow(rel, &full).map(|()| true);
        }
        if !meta.is_dir() && !meta.is_file() {
            return Ok(false);
        }
        self.at_file = meta.is_file();
        self.done.push(part);
        Ok(true)
    }

    fn follow(&mut self, rel: String, full: &Path) -> Result<(), TreeError> {
        if self.links.len() == MAX_LINKS {
            return Err(TreeError::Loop {
                tree: self.tree.to_path_buf(),
                path: self.path.to_string(),
            });
        }
        let target = fs::read_link(full)?;
        let Some(target) = target.to_str().map(str::to_string) else {
            return Err(TreeError::NonUtf8Link {
                tree: self.tree.to_path_buf(),
                link: rel,
            });
        };
        if target.starts_with('/') {
            self.done.clear();
        }
        self.at_file = false;
        let rest = components(&target).rev().map(str::to_string);
        self.pending.extend(rest);
        self.links.push(Link { path: rel, target });
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use fs_err::os::unix::fs::symlink;

    use super::*;

    fn tree() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        let lib = dir.path().join("usr/lib/x86_64-linux-gnu");
        fs::create_dir_all(&lib).unwrap();
        fs::write(lib.join("libfoo.so.1.2.3"), b"foo").unwrap();
        symlink("libfoo.so.1.2.3", lib.join("libfoo.so.1")).unwrap();
        symlink("usr/lib", dir.path().join("lib")).unwrap();
        dir
    }

    fn link(path: &str, target: &str) -> Link {
        Link {
            path: path.to_string(),
            target: target.to_string(),
        }
    }

    #[test]
    fn every_link_on_the_way_is_recorded() {
        let dir = tree();
        let found = find_file(dir.path(), "lib/x86_64-linux-gnu/libfoo.so.1").unwrap();
        let want = Found {
            links: vec![
                link("lib", "usr/lib"),
                link("usr/lib/x86_64-linux-gnu/libfoo.so.1", "libfoo.so.1.2.3"),
            ],
            file: "usr/lib/x86_64-linux-gnu/libfoo.so.1.2.3".to_string(),
        };
        assert_eq!(found, Some(want));
    }

    #[test]
    fn absolute_targets_start_at_the_trees_root() {
        let dir = tree();
        symlink(
            "/lib/x86_64-linux-gnu/libfoo.so.1",
            dir.path().join("libfoo"),
        )
        .unwrap();
        let found = find_file(dir.path(), "libfoo").unwrap().unwrap();
        assert_eq!(found.file, "usr/lib/x86_64-linux-gnu/libfoo.so.1.2.3");
        assert_eq!(found.links.len(), 3);
    }

    #[test]
    fn dot_dot_is_taken_after_the_link_it_follows() {
        let dir = tree();
        let found = find_file(
            dir.path(),
            "lib/x86_64-linux-gnu/../x86_64-linux-gnu/libfoo.so.1",
        );
        let found = found.unwrap().unwrap();
        assert_eq!(found.file, "usr/lib/x86_64-linux-gnu/libfoo.so.1.2.3");
    }

    #[test]
    fn missing_dangling_and_non_files_lead_nowhere() {
        let dir = tree();
        symlink("nowhere", dir.path().join("dangling")).unwrap();
        for path in [
            "libbar.so",
            "dangling",
            "usr/lib",
            "lib/x86_64-linux-gnu/libfoo.so.1/x",
            "usr/lib/x86_64-linux-gnu/libfoo.so.1.2.3/../libfoo.so.1",
        ] {
            assert_eq!(find_file(dir.path(), path).unwrap(), None, "{path}");
        }
    }

    #[test]
    fn a_link_out_of_the_tree_is_an_error() {
        let dir = tree();
        symlink("../../../../etc/passwd", dir.path().join("usr/lib/evil")).unwrap();
        let err = find_file(dir.path(), "usr/lib/evil").unwrap_err();
        assert!(matches!(err, TreeError::LinkEscapes { .. }), "{err}");
        assert!(
            err.to_string()
                .contains("usr/lib/evil -> ../../../../etc/passwd"),
            "{err}"
        );
    }

    #[test]
    fn a_path_above_the_root_is_an_error() {
        let dir = tree();
        let err = find_file(dir.path(), "../etc/passwd").unwrap_err();
        assert!(matches!(err, TreeError::PathEscapes { .. }), "{err}");
    }

    #[test]
    fn looping_links_are_an_error() {
        let dir = tree();
        symlink("b", dir.path().join("a")).unwrap();
        symlink("a", dir.path().join("b")).unwrap();
        let err = find_file(dir.path(), "a").unwrap_err();
        assert!(matches!(err, TreeError::Loop { .. }), "{err}");
    }
}
