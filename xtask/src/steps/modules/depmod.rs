//! The depmod step: a kernel package's module tree in, depmod's index
//! files out. Debian ships no modules.dep (its postinst runs depmod), and
//! indexing 4,000 modules takes seconds, so it is a step of its own: cached
//! per kernel package, shared by every module archive built from it.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Result};
use serde::Serialize;

use crate::steps::{Slot, Step, StepContext};
use crate::store::{Output, Tree, Verify};
use crate::tools;

/// Input of the depmod and modules steps: a tree holding `lib/modules/<release>/`.
pub const KERNEL: Slot = Slot("kernel");
/// Output: depmod's `modules.*` index files for the whole tree.
pub const INDEXES: Slot = Slot("indexes");

#[derive(Debug, Clone, Serialize)]
pub struct DepmodIndexes {
    /// Empty for a kernel Kiln builds: the one release in the tree.
    pub kernel_release: String,
}

impl Step for DepmodIndexes {
    fn kind(&self) -> &'static str {
        "depmod-indexes"
    }
    fn version(&self) -> u32 {
        1
    }
    fn label(&self) -> String {
        match self.kernel_release.as_str() {
            "" => "depmod built kernel".to_string(),
            release => format!("depmod {release}"),
        }
    }
    fn tools(&self) -> &'static [&'static str] {
        &["depmod"]
    }

    fn run(&self, ctx: &StepContext, scratch: &Path) -> Result<BTreeMap<String, Output>> {
        let tree = ctx.tree(KERNEL)?;
        let kver = &resolve_release(&self.kernel_release, &tree)?;
        let root = scratch.join("root");
        // depmod reads every module, so every blob is verified here.
        link_release(ctx, &tree, kver, &root, Verify::Now)?;
        run_depmod(ctx, &root, kver, "depmod-full")?;
        let dir = root.join("lib/modules").join(kver);
        let indexes = scratch.join("indexes");
        fs_err::create_dir(&indexes)?;
        for entry in fs_err::read_dir(&dir)? {
            let path = entry?.path();
            let name = path
                .file_name()
                .and_then(|n| n.to_str())
                .unwrap_or_default()
                .to_string();
            if name.starts_with("modules.") && path.is_file() {
                fs_err::copy(&path, indexes.join(&name))?;
            }
        }
        let digest = ctx.store.put_tree(&indexes)?;
        Ok(BTreeMap::from([(INDEXES.into(), Output::Tree { digest })]))
    }
}

/// The directories under lib/modules/ of a kernel tree.
fn releases(tree: &Tree) -> Vec<&str> {
    tree.entries
        .iter()
        .filter_map(|e| e.path.strip_prefix("lib/modules/"))
        .filter(|p| !p.contains('/'))
        .collect()
}

/// The release a step works on: `kernel_release` as the recipe gives it,
/// or, when empty (a kernel Kiln built, whose release is only known once
/// it is compiled), the one directory under lib/modules/.
pub fn resolve_release(kernel_release: &str, tree: &Tree) -> Result<String> {
    if !kernel_release.is_empty() {
        return Ok(kernel_release.to_string());
    }
    let releases = releases(tree);
    match releases[..] {
        [one] => Ok(one.to_string()),
        [] => bail!(
            "the kernel built no modules: set the options you want as modules to `m` in a config fragment"
        ),
        _ => bail!("several releases under lib/modules/: {}", releases.join(", ")),
    }
}

/// lib/modules/<kver> of the kernel package, hard-linked into `root`.
pub fn link_release(
    ctx: &StepContext,
    tree: &Tree,
    kver: &str,
    root: &Path,
    verify: Verify,
) -> Result<()> {
    let prefix = format!("lib/modules/{kver}");
    if tree.get(&prefix).is_none() {
        bail!(
            "the kernel package has no {prefix}/; it has: {}",
            releases(tree).join(", ")
        );
    }
    ctx.link_subtree(tree, &prefix, &root.join(&prefix), verify)
}

pub fn run_depmod(ctx: &StepContext, root: &Path, kver: &str, log: &str) -> Result<()> {
    let mut cmd = tools::command("depmod")?;
    cmd.arg("-b").arg(root).arg(kver);
    tools::run_logged(cmd, &ctx.log(log))
}
