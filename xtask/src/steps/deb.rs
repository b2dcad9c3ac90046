//! Unpacking a Debian binary package natively: `ar` container, then the
//! `data.tar.{xz,zst,gz}` member into a tree. No dpkg: the same bytes give
//! the same tree on any host.

use fs_err::File;
use std::collections::BTreeMap;
use std::io::{BufReader, Read};
use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::{Slot, Step, StepContext};
use crate::store::Output;

/// Input: the `.deb` file.
pub const DEB: Slot = Slot("deb");
/// Output: the package's data member, unpacked.
pub const TREE: Slot = Slot("tree");

#[derive(Debug, Clone, Serialize)]
pub struct UnpackDeb {
    /// For messages only (not in the key).
    #[serde(skip)]
    pub source: String,
}

impl Step for UnpackDeb {
    fn kind(&self) -> &'static str {
        "unpack-deb"
    }
    fn version(&self) -> u32 {
        1
    }
    fn label(&self) -> String {
        format!("unpack {}", self.source)
    }

    fn run(&self, ctx: &StepContext, scratch: &Path) -> Result<BTreeMap<String, Output>> {
        let deb = ctx.file(DEB)?;
        let root = scratch.join("root");
        fs_err::create_dir(&root)?;
        unpack(&deb, &root, &self.source)
            .with_context(|| format!("unpacking source `{}` ({})", self.source, deb.display()))?;
        let digest = ctx.store.put_tree(&root)?;
        Ok(BTreeMap::from([(TREE.into(), Output::Tree { digest })]))
    }
}

/// Extracts the data member of `deb` into `dest`.
/// On a terminal a spinner shows how much of the package (`what`) is
/// unpacked.
pub fn unpack(deb: &Path, dest: &Path, what: &str) -> Result<()> {
    let file = File::open(deb).with_context(|| format!("opening {}", deb.display()))?;
    let total = file.metadata()?.len();
    let counting = crate::tools::Counting::new(file);
    let read = counting.read.clone();
    crate::tools::with_progress(
        &format!("unpacking {what}"),
        || Some(crate::tools::progress_of(read.load(Relaxed), total)),
        || {
            let mut archive = ar::Archive::new(BufReader::new(counting));
            while let Some(entry) = archive.next_entry() {
                let entry = entry.context("reading the ar container")?;
                let name = String::from_utf8_lossy(entry.header().identifier()).into_owned();
                if let Some(kind) = name.strip_prefix("data.tar") {
                    let reader = decompressor(kind, entry)?;
                    return untar(reader, dest);
                }
            }
            bail!("no data.tar member: not a Debian binary package")
        },
    )
}

fn decompressor<'a>(suffix: &str, r: impl Read + 'a) -> Result<Box<dyn Read + 'a>> {
    Ok(match suffix {
        ".xz" => Box::new(xz2::read::XzDecoder::new_multi_decoder(r)),
        ".zst" => Box::new(zstd::stream::read::Decoder::new(r)?),
        ".gz" => Box::new(flate2::read::MultiGzDecoder::new(r)),
        "" => Box::new(r),
        other => bail!("data.tar{other}: unsupported compression"),
    })
}

/// Extracts a tar stream into `dest`: modes kept; owners, mtimes and
/// xattrs not (they must not reach a tree).
pub fn untar(reader: impl Read, dest: &Path) -> Result<()> {
    let mut tar = tar::Archive::new(reader);
    tar.set_preserve_permissions(true);
    tar.set_preserve_ownerships(false);
    tar.set_preserve_mtime(false);
    tar.set_unpack_xattrs(false);
    tar.unpack(dest)
        .with_context(|| format!("extracting into {}", dest.display()))
}
