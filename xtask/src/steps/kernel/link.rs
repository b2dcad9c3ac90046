//! The kernel link step: restores the compiled object tree into scratch,
//! drops the real initramfs in and runs `make bzImage` (arm64: `Image`). kbuild then finds
//! every object up to date and only regenerates the `usr/` archive, relinks
//! vmlinux and recompresses the image: seconds instead of a full build.

use fs_err::File;
use std::collections::BTreeMap;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use serde::Serialize;

use super::compile::OBJTREE;
use super::{checkout_source, kbuild_tools, make, rebind, BUILD_DIR, INITRAMFS_NAME};
use crate::arch::Arch;
use crate::steps::{set_mtimes, Slot, Step, StepContext};
use crate::store::Output;
use crate::tools;

/// Input: the initramfs archive to embed, when `initramfs` is set.
pub const INITRAMFS: Slot = Slot("initramfs");
/// Output: the kernel image (named after x86's, for every architecture).
pub const BZIMAGE: Slot = Slot("bzImage");

#[derive(Debug, Clone, Serialize)]
pub struct LinkKernel {
    /// The artifact (messages only).
    #[serde(skip)]
    pub name: String,
    pub arch: Arch,
    pub epoch: u64,
    /// Whether input `initramfs` is embedded (else the placeholder stays).
    pub initramfs: bool,
    #[serde(skip)]
    pub threads: usize,
}

impl Step for LinkKernel {
    fn kind(&self) -> &'static str {
        "kernel-link"
    }
    fn version(&self) -> u32 {
        2
    }
    fn label(&self) -> String {
        format!("kernel link {}", self.name)
    }
    fn tools(&self) -> &'static [&'static str] {
        kbuild_tools(self.arch)
    }

    fn run(&self, ctx: &StepContext, scratch: &Path) -> Result<BTreeMap<String, Output>> {
        let src = checkout_source(ctx, scratch)?;
        let obj = src.join(BUILD_DIR);
        ctx.store.materialize(&ctx.tree(OBJTREE)?, &obj)?;
        rebind(&obj, &src)?;
        // make compares mtimes: give every restored file one time, after the
        // sources (linked from older blobs) and before the new initramfs,
        // so that exactly what depends on the initramfs is out of date.
        let now = SystemTime::now();
        set_mtimes(&obj, now - Duration::from_secs(60))?;
        if self.initramfs {
            let dest = obj.join(INITRAMFS_NAME);
            fs_err::remove_file(&dest).ok();
            fs_err::copy(ctx.file(INITRAMFS)?, &dest)?;
            // The copy keeps the blob's read-only mode; setting times needs
            // only ownership, not a writable handle (root would not notice).
            File::open(&dest)?.set_modified(now)?;
        }
        let mut cmd = make(&src, self.arch, self.epoch, self.threads)?;
        let (target, image) = self.arch.kernel_image();
        cmd.arg(target);
        tools::run_logged_with_progress(cmd, &ctx.log("kernel-link"), &self.label())
            .with_context(|| format!("relinking the kernel for {}", self.name))?;
        let image = obj.join(image);
        let (digest, size) = ctx
            .store
            .put_file(&image)
            .with_context(|| format!("make did not produce {}", image.display()))?;
        Ok(BTreeMap::from([(
            BZIMAGE.into(),
            Output::File { digest, size },
        )]))
    }
}
