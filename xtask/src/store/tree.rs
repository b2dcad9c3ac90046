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
