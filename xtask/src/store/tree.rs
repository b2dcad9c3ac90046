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

    pub fn files(&self) -> impl Iterator<Item = (&str, &Digest, u64)> {
        self.entries.iter().filter_map(|e| match &e.kind {
            TreeKind::File { digest, size, .. } => Some((e.path.as_str(), digest, *size)),
            _ => None,
        })
    }
}
