//! The programs step: ELF programs picked out of unpacked `deb` trees with
//! every shared library and the dynamic loader they need (`elf::closure`),
//! recorded as one tree an initramfs merges in. No data is copied: the
//! tree names the packages' blobs.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::{Slot, Step, StepContext};
use crate::elf;
use crate::store::{Output, Tree, TreeKind};

/// Inputs `package.0` …: the unpacked packages, in the order of `packages`.
pub const PACKAGE: Slot = Slot("package");
/// Output: the programs and their libraries, as a tree of the packages' blobs.
pub const TREE: Slot = Slot("tree");

#[derive(Debug, Clone, Serialize)]
pub struct CopyPrograms {
    /// For messages only.
    #[serde(skip)]
    pub name: String,
    /// Source names of inputs `package.0` … (for messages; order matters).
    pub packages: Vec<String>,
    /// Paths inside the packages, e.g. `usr/bin/mstflint`.
    pub programs: Vec<String>,
}

impl Step for CopyPrograms {
    fn kind(&self) -> &'static str {
        "programs"
    }
    fn version(&self) -> u32 {
        1
    }
    fn label(&self) -> String {
        format!("programs {} ({})", self.name, self.programs.join(", "))
    }
    fn identity(&self) -> String {
        format!("programs {}", self.name)
    }

    fn run(&self, ctx: &StepContext, scratch: &Path) -> Result<BTreeMap<String, Output>> {
        let mut trees = Vec::new();
        let mut roots = Vec::new();
        for (i, name) in self.packages.iter().enumerate() {
            let tree = ctx.tree(PACKAGE.nth(i))?;
            // Named after the source, so that errors name the package.
            let root = scratch.join(name);
            ctx.checkout(&tree, &root)
                .with_context(|| format!("checking out package `{name}`"))?;
            trees.push(tree);
            roots.push(root);
        }
        let mut binaries = Vec::new();
        for program in &self.programs {
            match trees.iter().position(|t| t.get(program).is_some()) {
                Some(i) => binaries.push((i, program.as_str())),
                None => bail!(
                    "program {program} is in none of the packages ({})",
                    self.packages.join(", ")
                ),
            }
        }
        let roots: Vec<&Path> = roots.iter().map(|r| r.as_path()).collect();
        let resolved = elf::closure(&roots, &binaries).map_err(|e| {
            let text = e.to_string().replace(&format!("{}/", scratch.display()), "");
            match e {
                elf::ClosureError::MissingLibrary { soname, .. } => anyhow::anyhow!(
                    "{text}; add the deb that ships {soname} to sources.toml and to the recipe's [initramfs] packages"
                ),
                _ => anyhow::anyhow!("{text}"),
            }
        })?;
        let mut picked: BTreeMap<String, TreeKind> = BTreeMap::new();
        for &(i, program) in &binaries {
            picked.insert(
                program.to_string(),
                entry(&trees[i], program, &self.packages[i])?,
            );
        }
        for r in &resolved {
            let kind = match &r.symlink_target {
                Some(target) => TreeKind::Symlink {
                    target: target.clone(),
                },
                None => entry(&trees[r.tree], &r.path, &self.packages[r.tree])?,
            };
            picked.insert(r.path.clone(), kind);
        }
        let digest = ctx.store.put_tree_manifest(&Tree::with_parents(picked))?;
        Ok(BTreeMap::from([(TREE.into(), Output::Tree { digest })]))
    }
}

/// The file (or symlink) at `path` in a package tree.
fn entry(tree: &Tree, path: &str, package: &str) -> Result<TreeKind> {
    match tree.get(path).map(|e| &e.kind) {
        Some(k @ (TreeKind::File { .. } | TreeKind::Symlink { .. })) => Ok(k.clone()),
        _ => bail!("{path} is not a file in package `{package}`"),
    }
}
