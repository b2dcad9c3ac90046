//! Tree manifests: a directory recorded as sorted entries whose file data
//! lives in blobs. The manifest's own digest names the tree.

use serde::{Deserialize, Serialize};

use super::Digest;

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Tree {
    /// Sorted by path (bytewise); parents before children.
    pub entries: Vec<TreeEntry>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TreeEntry {
    /// Relative, `/`-separated, no leading `/`.
    pub path: String,
    #[serde(flatten)]
    pub kind: TreeKind,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "lowercase")]
pub enum TreeKind {
    File {
        digest: Digest,
        size: u64,
        mode: u32,
    },
    Dir {
        mode: u32,
    },
    Symlink {
        target: String,
    },
}

impl Tree {
    /// Canonical bytes (the digest is taken over these).
    pub fn to_bytes(&self) -> Vec<u8> {
        serde_json::to_vec(self).expect("tree manifests always serialize")
    }

    pub fn digest(&self) -> Digest {
        Digest::of_bytes(&self.to_bytes())
    }

    pub fn get(&self, path: &str) -> Option<&TreeEntry> {
        self.entries
            .binary_search_by(|e| e.path.as_bytes().cmp(path.as_bytes()))
            .ok()
            .map(|i| &self.entries[i])
    }

    /// A tree of `entries` (path → kind) with every missing parent
    /// directory added (mode 0755), sorted as trees are.
    pub fn with_parents(entries: std::collections::BTreeMap<String, TreeKind>) -> Tree {
        let mut all = std::collections::BTreeMap::new();
        for (path, kind) in entries {
            let mut parent = path.as_str();
            while let Some((dir, _)) = parent.rsplit_once('/') {
                all.entry(dir.to_string())
                    .or_insert(TreeKind::Dir { mode: 0o755 });
                parent = dir;
            }
            all.insert(path, kind);
        }
        let mut entries: Vec<TreeEntry> = all
            .into_iter()
            .map(|(path, kind)| TreeEntry { path, kind })
            .collect();
        entries.sort_by(|a, b| a.path.as_bytes().cmp(b.path.as_bytes()));
        Tree { entries }
    }

    /// Each entry's kind by path: what two trees are compared by.
    pub fn by_path(&self) -> std::collections::BTreeMap<String, TreeKind> {
        self.entries
            .iter()
            .map(|e| (e.path.clone(), e.kind.clone()))
            .collect()
    }

    /// Refuses a tree that could write outside where it is checked out. A
    /// manifest may come from another machine (the remote cache) or a
    /// tampered store, so every reader checks: each path is relative and
    /// normal (no empty, `.` or `..` component, no NUL), paths are sorted
    /// and unique, and each entry's parent is a directory entry of the same
    /// tree (so nothing lies beneath a symlink or a file).
    pub fn check(&self) -> Result<(), String> {
        let mut dirs = std::collections::HashSet::new();
        let mut previous: Option<&str> = None;
        for e in &self.entries {
            let path = e.path.as_str();
            let bad = |why: &str| Err(format!("entry `{}` {why}", path.escape_debug()));
            if path.contains('\0') {
                return bad("holds a NUL byte");
            }
            if path.starts_with('/') {
                return bad("is an absolute path");
            }
            if path.split('/').any(|c| matches!(c, "" | "." | "..")) {
                return bad("is not a normal relative path (empty, `.` or `..` component)");
            }
            if previous.is_some_and(|p| p.as_bytes() >= path.as_bytes()) {
                return bad("is out of order or repeated");
            }
            if let Some((parent, _)) = path.rsplit_once('/') {
                if !dirs.contains(parent) {
                    return bad("lies beneath something that is not a directory of the tree");
                }
            }
            if matches!(e.kind, TreeKind::Dir { .. }) {
                dirs.insert(path);
            }
            previous = Some(path);
        }
        Ok(())
    }

    /// The symlinks whose target leaves the tree (absolute, or climbing
    /// above its top), as (path, target). A root file system has them
    /// (`/usr/lib` links); a source tree should not: what it points to is
    /// not part of what Kiln recorded.
    pub fn links_out(&self) -> Vec<(&str, &str)> {
        let leaves = |path: &str, target: &str| {
            if target.starts_with('/') {
                return true;
            }
            let mut depth = path.matches('/').count() as i64;
            for part in target.split('/') {
                match part {
                    "" | "." => {}
                    ".." => depth -= 1,
                    _ => depth += 1,
                }
                if depth < 0 {
                    return true;
                }
            }
            false
        };
        self.entries
            .iter()
            .filter_map(|e| match &e.kind {
                TreeKind::Symlink { target } if leaves(&e.path, target) => {
                    Some((e.path.as_str(), target.as_str()))
                }
                _ => None,
            })
            .collect()
    }

    pub fn files(&self) -> impl Iterator<Item = (&str, &Digest, u64)> {
        self.entries.iter().filter_map(|e| match &e.kind {
            TreeKind::File { digest, size, .. } => Some((e.path.as_str(), digest, *size)),
            _ => None,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    #[test]
    fn links_out_are_absolute_or_climb_above_the_top() {
        let link = |p: &str, t: &str| TreeEntry {
            path: p.into(),
            kind: TreeKind::Symlink { target: t.into() },
        };
        let tree = Tree {
            entries: vec![
                link("a", "/etc"),
                link("b", "../x"),
                link("c", "d/../e"),
                link("d/e", "../f"),
                link("d/g", "../../h"),
                link("d/i", "./j/../../k"),
            ],
        };
        let out: Vec<&str> = tree.links_out().into_iter().map(|(p, _)| p).collect();
        assert_eq!(out, ["a", "b", "d/g"]);
    }

    #[test]
    fn check_refuses_every_way_out_of_the_destination() {
        let dir = |p: &str| TreeEntry {
            path: p.into(),
            kind: TreeKind::Dir { mode: 0o755 },
        };
        let file = |p: &str| TreeEntry {
            path: p.into(),
            kind: TreeKind::File {
                digest: Digest::of_bytes(b"x"),
                size: 1,
                mode: 0o644,
            },
        };
        let link = |p: &str| TreeEntry {
            path: p.into(),
            kind: TreeKind::Symlink {
                target: "/etc".into(),
            },
        };
        let check = |entries: Vec<TreeEntry>| Tree { entries }.check();
        assert_eq!(check(vec![dir("a"), file("a/b"), link("c")]), Ok(()));
        for (entries, why) in [
            (vec![file("/tmp/x")], "absolute"),
            (vec![file("../../x")], "`..`"),
            (vec![dir("a"), file("a/../../x")], "`..`"),
            (vec![file("a//b")], "empty"),
            (vec![file("./a")], "`.`"),
            (vec![file("a/")], "empty"),
            (vec![file("")], "empty"),
            (vec![file("a\0b")], "NUL"),
            (vec![file("b"), file("a")], "out of order"),
            (vec![file("a"), file("a")], "repeated"),
            (vec![link("etc"), file("etc/passwd")], "beneath"),
            (vec![file("a"), file("a/b")], "beneath"),
            (vec![file("x/y")], "beneath"),
        ] {
            let err = check(entries.clone()).unwrap_err();
            assert!(err.contains(why), "{entries:?}: {err}");
        }
    }

    #[test]
    fn with_parents_puts_each_parent_first_and_once() {
        let file = |n: u8| TreeKind::File {
            digest: Digest::of_bytes(&[n]),
            size: 1,
            mode: 0o644,
        };
        let tree = Tree::with_parents(BTreeMap::from([
            ("usr/lib/x/libc.so.6".to_string(), file(1)),
            ("usr/bin/tool".to_string(), file(2)),
            (
                "lib64".to_string(),
                TreeKind::Symlink {
                    target: "usr/lib64".into(),
                },
            ),
        ]));
        let paths: Vec<&str> = tree.entries.iter().map(|e| e.path.as_str()).collect();
        assert_eq!(
            paths,
            [
                "lib64",
                "usr",
                "usr/bin",
                "usr/bin/tool",
                "usr/lib",
                "usr/lib/x",
                "usr/lib/x/libc.so.6"
            ]
        );
    }
}
