//! The modules step: from a kernel package's module tree to
//! `modules.cpio.{gz,zst}` holding exactly the closure kmod would load,
//! with the subset's depmod indexes regenerated and firmware included.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::depmod::{link_release, resolve_release, run_depmod, INDEXES, KERNEL};
use super::{parse_modprobe_d, resolve, Closure, ModprobeConfig, ModuleIndex, Wanted};
use crate::archive::{self, CompressOptions, Compression, TreeOptions};
use crate::steps::{Slot, Step, StepContext};
use crate::store::{Output, Tree, TreeKind, Verify};

/// Index files copied from the full tree so that depmod on the subset
/// knows the builtins and the load order.
const KEPT_INDEXES: &[&str] = &[
    "modules.builtin",
    "modules.builtin.modinfo",
    "modules.order",
];

/// Inputs `firmware.0` …: trees holding `lib/firmware`, searched in order.
pub const FIRMWARE: Slot = Slot("firmware");
/// Output: the [`Details`] as JSON (each archive is output `gz`, `zst`, …).
pub const DETAILS: Slot = Slot("details");

#[derive(Debug, Clone, Serialize)]
pub struct BuildModules {
    #[serde(skip)]
    pub name: String,
    pub kernel_release: String,
    pub wanted: Vec<Wanted>,
    /// (file name, contents) of each modprobe.d snippet.
    pub modprobe_d: Vec<(String, String)>,
    /// Inputs `firmware.0` … `firmware.{n-1}` are trees holding lib/firmware.
    pub firmware: usize,
    pub compressions: Vec<Compression>,
    pub epoch: u64,
    /// `file:line:col` of each wanted item, for errors only.
    #[serde(skip)]
    pub origins: Vec<String>,
    #[serde(skip)]
    pub threads: usize,
}

/// What went into the archive, recorded in the manifest.
#[derive(Debug, Serialize)]
pub struct Details {
    pub kernel_release: String,
    pub modules: Vec<String>,
    pub builtin: Vec<String>,
    pub firmware: Vec<String>,
    pub firmware_missing: Vec<String>,
}

impl Step for BuildModules {
    fn kind(&self) -> &'static str {
        "modules"
    }
    fn version(&self) -> u32 {
        // 2: full-tree indexes come from the depmod-indexes step.
        2
    }
    fn formats(&self) -> &'static [crate::archive::Format] {
        crate::archive::CPIO_IMAGE
    }
    fn label(&self) -> String {
        format!("modules {}", self.name)
    }
    fn tools(&self) -> &'static [&'static str] {
        &["depmod"]
    }

    fn run(&self, ctx: &StepContext, scratch: &Path) -> Result<BTreeMap<String, Output>> {
        let tree = ctx.tree(KERNEL)?;
        let kver = &resolve_release(&self.kernel_release, &tree)?;
        let full = scratch.join("full");
        // Only the modules that end up in the archive are read for their
        // bytes; copy_subset verifies exactly those.
        link_release(ctx, &tree, kver, &full, Verify::Later)?;
        let dir = full.join("lib/modules").join(kver);
        ctx.link_subtree(&ctx.tree(INDEXES)?, "", &dir, Verify::Now)?;
        let index = ModuleIndex::load(&full, kver)?;
        let conf = self.config()?;
        let closure = self.closure(&index, &conf)?;
        if !closure.unresolved.is_empty() {
            let names: Vec<&str> = closure.unresolved.iter().map(String::as_str).collect();
            tracing::warn!("modules {}: softdep/weakdep names that match no module (skipped, as kmod does): {}", self.name, names.join(", "));
        }
        let subset = scratch.join("subset");
        copy_subset(ctx, &tree, &full, &subset, kver, &closure)?;
        run_depmod(ctx, &subset, kver, "depmod-subset")?;
        let missing = self.add_firmware(ctx, &subset, &closure)?;
        let mut outputs = self.write_archives(ctx, &subset, scratch)?;
        let details = Details {
            kernel_release: kver.clone(),
            modules: closure.modules.iter().cloned().collect(),
            builtin: closure.builtin.iter().cloned().collect(),
            firmware: closure
                .firmware
                .iter()
                .filter(|f| !missing.contains(f))
                .cloned()
                .collect(),
            firmware_missing: missing,
        };
        let bytes = serde_json::to_vec_pretty(&details)?;
        let digest = ctx.store.put_bytes(&bytes)?;
        outputs.insert(
            DETAILS.into(),
            Output::File {
                digest,
                size: bytes.len() as u64,
            },
        );
        Ok(outputs)
    }
}

impl BuildModules {
    fn config(&self) -> Result<ModprobeConfig> {
        let mut conf = ModprobeConfig::default();
        for (file, text) in &self.modprobe_d {
            conf.extend(parse_modprobe_d(text, file)?);
        }
        Ok(conf)
    }

    /// Resolves each item alone first, so an item that matches nothing is
    /// reported with its recipe line; then the whole set.
    fn closure(&self, index: &ModuleIndex, conf: &ModprobeConfig) -> Result<Closure> {
        for (i, w) in self.wanted.iter().enumerate() {
            if let Err(e) = resolve(index, std::slice::from_ref(w), conf) {
                let origin = self
                    .origins
                    .get(i)
                    .map(String::as_str)
                    .unwrap_or("the recipe");
                return Err(e.context(format!(
                    "{origin}: wanted module `{}`",
                    self.wanted[i].text()
                )));
            }
        }
        resolve(index, &self.wanted, conf)
    }

    fn add_firmware(
        &self,
        ctx: &StepContext,
        subset: &Path,
        closure: &Closure,
    ) -> Result<Vec<String>> {
        let trees: Vec<Tree> = (0..self.firmware)
            .map(|i| ctx.tree(FIRMWARE.nth(i)))
            .collect::<Result<_>>()?;
        let mut missing = Vec::new();
        for name in &closure.firmware {
            let found = trees.iter().find_map(|t| {
                ["", ".xz", ".zst"].iter().find_map(|ext| {
                    let path = format!("lib/firmware/{name}{ext}");
                    match t.get(&path).map(|e| &e.kind) {
                        Some(TreeKind::File { digest, .. }) => Some((path, *digest)),
                        _ => None,
                    }
                })
            });
            match found {
                Some((path, digest)) => {
                    let dest = subset.join(&path);
                    fs_err::create_dir_all(dest.parent().expect("firmware paths have parents"))?;
                    fs_err::copy(ctx.store.verified_blob(&digest)?, &dest)
                        .with_context(|| format!("copying firmware {path}"))?;
                }
                None => missing.push(name.clone()),
            }
        }
        Ok(missing)
    }

    fn write_archives(
        &self,
        ctx: &StepContext,
        subset: &Path,
        scratch: &Path,
    ) -> Result<BTreeMap<String, Output>> {
        let opts = TreeOptions {
            mtime: self.epoch,
            uid: Some(0),
            gid: Some(0),
            keep_mode: false,
        };
        let entries = archive::normalize(archive::from_tree(subset, &opts)?, self.epoch)?;
        let mut outputs = BTreeMap::new();
        for &compression in &self.compressions {
            let name = compression.extension();
            let path = scratch.join(format!("modules.cpio.{name}"));
            let mut file = std::io::BufWriter::new(fs_err::File::create(&path)?);
            let copts = CompressOptions {
                level: compression.default_level(),
                threads: self.threads.max(1),
                ..Default::default()
            };
            archive::write_archive(&entries, compression, &copts, &mut file)?;
            std::io::Write::flush(&mut file)?;
            drop(file);
            let (digest, size) = ctx.store.put_file(&path)?;
            outputs.insert(name.to_string(), Output::File { digest, size });
        }
        Ok(outputs)
    }
}

/// The chosen modules (verified against the kernel tree) plus the kept
/// indexes, under `dest/lib/modules/<kver>`.
fn copy_subset(
    ctx: &StepContext,
    tree: &Tree,
    full: &Path,
    dest: &Path,
    kver: &str,
    closure: &Closure,
) -> Result<()> {
    let from = full.join("lib/modules").join(kver);
    let to = dest.join("lib/modules").join(kver);
    for rel in &closure.modules {
        let path = format!("lib/modules/{kver}/{rel}");
        let src = match tree.get(&path).map(|e| &e.kind) {
            Some(TreeKind::File { digest, .. }) => ctx.store.verified_blob(digest)?,
            _ => bail!("module {path} is in the closure but not a file of the kernel package"),
        };
        copy_file(&src, &to.join(rel))?;
    }
    for rel in KEPT_INDEXES.iter().filter(|rel| from.join(rel).exists()) {
        copy_file(&from.join(rel), &to.join(rel))?;
    }
    Ok(())
}

fn copy_file(src: &Path, dst: &Path) -> Result<()> {
    fs_err::create_dir_all(dst.parent().expect("module paths have parents"))?;
    fs_err::copy(src, dst).with_context(|| format!("copying {}", src.display()))?;
    Ok(())
}
