//! The kernel compile step: a full `make` of the configured source with a
//! placeholder initramfs. Its outputs are the object tree (`kiln-build/`),
//! which the link step restores to relink with the real initramfs, and the
//! `=m` modules as `make modules_install` lays them out (`lib/modules/<release>/`,
//! empty when the config builds none) for the modules step.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use super::config::CONFIG;
use super::{checkout_source, kbuild_tools, make, unbind, BUILD_DIR, INITRAMFS_NAME};
use crate::arch::Arch;
use crate::archive::newc;
use crate::steps::{Slot, Step, StepContext};
use crate::store::Output;
use crate::tools;

/// Output: the compiled object tree (`kiln-build/`).
pub const OBJTREE: Slot = Slot("objtree");
/// Output: the `=m` modules as `make modules_install` lays them out.
pub const MODULES: Slot = Slot("modules");

#[derive(Debug, Clone, Serialize)]
pub struct CompileKernel {
    /// The artifact this kernel is for (messages only).
    #[serde(skip)]
    pub name: String,
    pub arch: Arch,
    pub epoch: u64,
    #[serde(skip)]
    pub threads: usize,
}

impl Step for CompileKernel {
    fn kind(&self) -> &'static str {
        "kernel-compile"
    }
    fn version(&self) -> u32 {
        // 4: objects built with -g no longer record the scratch path.
        4
    }
    fn formats(&self) -> &'static [crate::archive::Format] {
        &[crate::archive::newc::FORMAT]
    }
    fn label(&self) -> String {
        format!("kernel compile {}", self.name)
    }
    fn tools(&self) -> &'static [&'static str] {
        kbuild_tools(self.arch)
    }

    fn run(&self, ctx: &StepContext, scratch: &Path) -> Result<BTreeMap<String, Output>> {
        let src = checkout_source(ctx, scratch)?;
        let obj = src.join(BUILD_DIR);
        fs_err::create_dir_all(&obj)?;
        fs_err::copy(ctx.file(CONFIG)?, obj.join(".config"))?;
        // An empty archive stands in for the initramfs: the compiled tree
        // must not depend on it (the link step puts the real one here).
        fs_err::write(obj.join(INITRAMFS_NAME), newc::archive_bytes(&[])?)?;
        let mut cmd = make(&src, self.arch, self.epoch, self.threads)?;
        cmd.arg("all");
        tools::run_logged_with_progress(cmd, &ctx.log("kernel-compile"), &self.label())
            .with_context(|| format!("compiling the kernel for {}", self.name))?;
        let modroot = scratch.join("modules");
        fs_err::create_dir(&modroot)?;
        if has_modules(&obj.join(".config"))? {
            let mut cmd = make(&src, self.arch, self.epoch, self.threads)?;
            cmd.arg(format!("INSTALL_MOD_PATH={}", modroot.display()))
                .arg("DEPMOD=true")
                .arg("modules_install");
            tools::run_logged(cmd, &ctx.log("kernel-modules-install"))
                .with_context(|| format!("installing the kernel modules for {}", self.name))?;
            // `build` and `source` point at this scratch directory.
            for entry in fs_err::read_dir(modroot.join("lib/modules"))? {
                let release = entry?.path();
                for link in ["build", "source"] {
                    fs_err::remove_file(release.join(link)).ok();
                }
            }
        }
        unbind(&obj, &src)?;
        let objtree = ctx.store.put_tree_owned(&obj)?;
        let modules = ctx.store.put_tree_owned(&modroot)?;
        Ok(BTreeMap::from([
            (OBJTREE.into(), Output::Tree { digest: objtree }),
            (MODULES.into(), Output::Tree { digest: modules }),
        ]))
    }
}

/// Whether the config builds any loadable module.
fn has_modules(config: &Path) -> Result<bool> {
    let text =
        fs_err::read_to_string(config).with_context(|| format!("reading {}", config.display()))?;
    let module = super::config::Value::Set("m".into());
    Ok(super::config::parse(&text).values().any(|v| *v == module))
}
