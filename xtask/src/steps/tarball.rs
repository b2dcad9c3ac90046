//! Unpacking a source tarball (`.tar.xz`, `.tar.zst`, `.tar.gz`, `.tar`)
//! natively into a tree: a kernel.org release, or the `linux-source-*.tar.xz`
//! that Debian's linux-source deb carries. A single top-level directory
//! (`linux-6.1.90/`) is stripped, so every kernel source looks the same to
//! the steps that read it.

use fs_err::File;
use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::{Slot, Step, StepContext};
use crate::store::{Output, Tree};

/// Input: the tarball, or a tree (an unpacked deb) holding it as `member`.
pub const ARCHIVE: Slot = Slot("archive");
/// Output: the tarball unpacked, its top directory stripped.
pub const TREE: Slot = Slot("tree");

#[derive(Debug, Clone, Serialize)]
pub struct UnpackTarball {
    /// For messages only (not in the key).
    #[serde(skip)]
    pub source: String,
    /// When the input is a tree (an unpacked deb), the tarball inside it:
    /// a path with at most one `*`, e.g. `usr/src/linux-source-*.tar.xz`.
    pub member: Option<String>,
}

impl Step for UnpackTarball {
    fn kind(&self) -> &'static str {
        "unpack-tarball"
    }
    fn version(&self) -> u32 {
        1
    }
    fn label(&self) -> String {
        format!("unpack {} tarball", self.source)
    }

    fn run(&self, ctx: &StepContext, scratch: &Path) -> Result<BTreeMap<String, Output>> {
        let (archive, name) = match (&self.member, ctx.input(ARCHIVE)?) {
            (Some(pattern), Output::Tree { .. }) => {
                let tree = ctx.tree(ARCHIVE)?;
                let path = find_member(&tree, pattern).with_context(|| {
                    format!("source `{}` holds no file matching {pattern}", self.source)
                })?;
                let digest = match tree.get(&path).map(|e| &e.kind) {
                    Some(crate::store::TreeKind::File { digest, .. }) => *digest,
                    _ => bail!("{path} in source `{}` is not a file", self.source),
                };
                (ctx.store.verified_blob(&digest)?, path)
            }
            _ => (ctx.file(ARCHIVE)?, self.source.clone()),
        };
        let top = unpack_stripped(&archive, scratch, &name)
            .with_context(|| format!("unpacking {name} of source `{}`", self.source))?;
        let digest = ctx.store.put_tree_owned(&top)?;
        Ok(BTreeMap::from([(TREE.into(), Output::Tree { digest })]))
    }
}

/// The one file whose path matches `pattern` (`*` matches within a name).
fn find_member(tree: &Tree, pattern: &str) -> Option<String> {
    let (head, tail) = pattern.split_once('*').unwrap_or((pattern, ""));
    let mut matches = tree.files().map(|(p, _, _)| p).filter(|p| {
        p.len() >= head.len() + tail.len()
            && p.starts_with(head)
            && p.ends_with(tail)
            && !p[head.len()..p.len() - tail.len()].contains('/')
    });
    let first = matches.next()?.to_string();
    // Several matches would make the choice depend on naming; refuse.
    matches.next().is_none().then_some(first)
}

/// Extracts a (compressed) tar file into `dest`, choosing the decompressor
/// by the file's magic bytes rather than its name.
pub fn unpack(archive: &Path, dest: &Path, what: &str) -> Result<()> {
    let mut file = BufReader::new(
        File::open(archive).with_context(|| format!("opening {}", archive.display()))?,
    );
    let mut magic = [0u8; 6];
    let n = file.get_mut().read(&mut magic)?;
    drop(file);
    let file = File::open(archive)?;
    let total = file.metadata()?.len();
    let counting = crate::tools::Counting::new(file);
    let read = counting.read.clone();
    let file = BufReader::new(counting);
    let reader: Box<dyn Read> = match &magic[..n] {
        [0xfd, b'7', b'z', b'X', b'Z', 0] => {
            Box::new(xz2::read::XzDecoder::new_multi_decoder(file))
        }
        [0x28, 0xb5, 0x2f, 0xfd, ..] => Box::new(zstd::stream::read::Decoder::new(file)?),
        [0x1f, 0x8b, ..] => Box::new(flate2::read::MultiGzDecoder::new(file)),
        _ => Box::new(file),
    };
    crate::tools::with_progress(
        &format!("unpacking {what}"),
        || {
            let done = read.load(std::sync::atomic::Ordering::Relaxed);
            Some(crate::tools::progress_of(done, total))
        },
        || super::deb::untar(reader, dest),
    )
}

/// Unpacks `archive` under `scratch` and returns the tree's root: the
/// archive's single top directory (`linux-6.1/`, `ipxe-<commit>/`) when it
/// has one.
pub fn unpack_stripped(archive: &Path, scratch: &Path, what: &str) -> Result<std::path::PathBuf> {
    let root = scratch.join("root");
    fs_err::create_dir(&root)?;
    unpack(archive, &root, what)?;
    Ok(single_top_dir(&root)?.unwrap_or(root))
}

/// `Some(dir)` when `root` holds exactly one entry and it is a directory.
fn single_top_dir(root: &Path) -> Result<Option<std::path::PathBuf>> {
    let mut entries = fs_err::read_dir(root)?;
    let Some(first) = entries.next().transpose()? else {
        bail!("the tarball is empty");
    };
    if entries.next().is_some() || !first.file_type()?.is_dir() {
        return Ok(None);
    }
    Ok(Some(first.path()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{Digest, TreeEntry, TreeKind};

    fn tree(paths: &[&str]) -> Tree {
        Tree {
            entries: paths
                .iter()
                .map(|p| TreeEntry {
                    path: p.to_string(),
                    kind: TreeKind::File {
                        digest: Digest::of_bytes(p.as_bytes()),
                        size: 0,
                        mode: 0o644,
                    },
                })
                .collect(),
        }
    }

    #[test]
    fn member_pattern_matches_one_file_within_a_directory() {
        let t = tree(&["usr/src/linux-source-6.1.tar.xz", "usr/share/doc/x"]);
        assert_eq!(
            find_member(&t, "usr/src/linux-source-*.tar.xz").as_deref(),
            Some("usr/src/linux-source-6.1.tar.xz")
        );
        assert_eq!(find_member(&t, "usr/*.tar.xz"), None, "no match across /");
        let two = tree(&["a/x-1.tar.xz", "a/x-2.tar.xz"]);
        assert_eq!(find_member(&two, "a/x-*.tar.xz"), None, "ambiguous");
    }
}
