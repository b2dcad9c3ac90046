//! The kernel compile step: a full `make` of the configured source with a
//! placeholder initramfs. Its output is the object tree (`kiln-build/`),
//! which the link step restores to relink with the real initramfs.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use super::{make, unbind, BUILD_DIR, INITRAMFS_NAME, KBUILD_TOOLS};
use crate::archive::newc;
use crate::steps::{Step, StepContext};
use crate::store::Output;
use crate::tools;

#[derive(Debug, Clone, Serialize)]
pub struct CompileKernel {
    /// The artifact this kernel is for (messages only).
    #[serde(skip)]
    pub name: String,
    pub arch: String,
    pub epoch: u64,
    #[serde(skip)]
    pub threads: usize,
}

impl Step for CompileKernel {
    fn kind(&self) -> &'static str {
        "kernel-compile"
    }
    fn version(&self) -> u32 {
        2
    }
    fn label(&self) -> String {
        format!("kernel compile {}", self.name)
    }
    fn params(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("params serialize")
    }
    fn tools(&self) -> &'static [&'static str] {
        KBUILD_TOOLS
    }

    fn run(&self, ctx: &StepContext, scratch: &Path) -> Result<BTreeMap<String, Output>> {
        // Canonical: kbuild records the real path, which unbind/rebind match.
        let src = scratch.canonicalize()?.join("src");
        ctx.store.checkout(&ctx.tree("source")?, &src)?;
        let obj = src.join(BUILD_DIR);
        std::fs::create_dir_all(&obj)?;
        std::fs::copy(ctx.file("config")?, obj.join(".config"))?;
        // An empty archive stands in for the initramfs: the compiled tree
        // must not depend on it (the link step puts the real one here).
        std::fs::write(obj.join(INITRAMFS_NAME), newc::archive_bytes(&[])?)?;
        let mut cmd = make(&src, &self.arch, self.epoch, self.threads)?;
        cmd.arg("all");
        tools::run_logged(cmd, &ctx.log("kernel-compile"))
            .with_context(|| format!("compiling the kernel for {}", self.name))?;
        unbind(&obj, &src)?;
        let digest = ctx.store.put_tree_owned(&obj)?;
        Ok(BTreeMap::from([(
            "objtree".to_string(),
            Output::Tree { digest },
        )]))
    }
}
