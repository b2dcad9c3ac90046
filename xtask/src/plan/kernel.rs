//! The kernel in the plan: config (the recipe's base plus fragments),
//! compile, then link with the initramfs compiled in, so that an
//! initramfs change only relinks; and `modules.cpio.gz` beside it.

use std::collections::BTreeMap;

use anyhow::Result;

use super::sources::display_path;
use super::{beside, ArtifactSpec, Builder, InputRef};
use crate::archive::Compression;
use crate::recipe::{self, EfiKind, Recipe};
use crate::steps::initramfs::IMAGE;
use crate::steps::kernel::compile::{CompileKernel, MODULES, OBJTREE};
use crate::steps::kernel::config::{KernelConfig, CONFIG, FRAGMENT};
use crate::steps::kernel::link::{LinkKernel, BZIMAGE, INITRAMFS};
use crate::steps::kernel::{INITRAMFS_NAME, SOURCE};
use crate::steps::modules::step::{BuildModules, DETAILS};

impl Builder<'_> {
    /// Config, compile and link steps; the link step embeds `initramfs`
    /// (a node whose output `image` is the archive) when given. Returns the
    /// link node (output `bzImage`).
    pub(super) fn add_kernel(
        &mut self,
        recipe: &Recipe,
        k: &recipe::Kernel,
        initramfs: Option<(usize, crate::archive::Compression)>,
    ) -> Result<usize> {
        let source = self.kernel_source(&k.source)?;
        let mut inputs = BTreeMap::from([(SOURCE.into(), source.clone())]);
        let base = match &k.config {
            recipe::KernelConfigFrom::Base(b) => Some(b.clone()),
            recipe::KernelConfigFrom::File(f) => {
                inputs.insert(CONFIG.into(), self.local_value(f)?);
                None
            }
        };
        for (i, (_, path)) in k.fragments.iter().enumerate() {
            inputs.insert(FRAGMENT.nth(i), self.local_value(path)?);
        }
        let mut required = Vec::new();
        if let Some((_, compression)) = initramfs {
            required.push("CONFIG_BLK_DEV_INITRD=y".to_string());
            required.push(format!("CONFIG_INITRAMFS_SOURCE=\"{INITRAMFS_NAME}\""));
            if let Some(rd) = decompressor_option(compression) {
                required.push(format!("{rd}=y"));
            }
        }
        let epoch = self.epoch(recipe);
        let config = self.push(
            KernelConfig {
                name: k.output.clone(),
                arch: k.arch,
                base,
                fragments: k
                    .fragments
                    .iter()
                    .map(|(_, p)| display_path(p).display().to_string())
                    .collect(),
                required,
                epoch,
                threads: self.opts.threads,
            },
            inputs,
        );
        let config = InputRef::Node {
            node: config,
            output: CONFIG.into(),
        };
        let compile = self.push(
            CompileKernel {
                name: k.output.clone(),
                arch: k.arch,
                epoch,
                threads: self.opts.threads,
            },
            BTreeMap::from([
                (SOURCE.into(), source.clone()),
                (CONFIG.into(), config.clone()),
            ]),
        );
        let mut inputs = BTreeMap::from([
            (SOURCE.into(), source),
            (CONFIG.into(), config),
            (
                OBJTREE.into(),
                InputRef::Node {
                    node: compile,
                    output: OBJTREE.into(),
                },
            ),
        ]);
        if let Some((node, _)) = initramfs {
            inputs.insert(
                INITRAMFS.into(),
                InputRef::Node {
                    node,
                    output: IMAGE.into(),
                },
            );
        }
        let link = self.push(
            LinkKernel {
                name: k.output.clone(),
                arch: k.arch,
                epoch,
                initramfs: initramfs.is_some(),
                threads: self.opts.threads,
            },
            inputs,
        );
        if !k.modules.is_empty() {
            self.add_kernel_modules(recipe, k, compile);
        }
        let kernel = self.efi(recipe, EfiKind::Kernel, &k.output, link, BZIMAGE);
        self.plan.artifacts.push(ArtifactSpec {
            name: k.output.clone(),
            kind: "kernel",
            arch: k.arch,
            recipe: recipe.file.clone(),
            epoch,
            node: kernel.node,
            output: kernel.output,
            details: None,
            facts: kernel.facts,
        });
        Ok(link)
    }

    /// `modules.cpio.gz` beside the kernel: the closure of `k.modules` among
    /// the `=m` modules the compile step installed. The release is only
    /// known after compiling, so the steps read it from the tree.
    pub(super) fn add_kernel_modules(
        &mut self,
        recipe: &Recipe,
        k: &recipe::Kernel,
        compile: usize,
    ) {
        let kernel = InputRef::Node {
            node: compile,
            output: MODULES.into(),
        };
        let inputs = self.module_inputs(kernel, "");
        let name = beside(&k.output, "modules.cpio.gz");
        let gz = Compression::Gzip;
        let step = BuildModules {
            name: name.clone(),
            kernel_release: String::new(),
            wanted: super::initramfs::wanted(&k.modules),
            modprobe_d: Vec::new(),
            firmware: 0,
            compressions: vec![gz],
            epoch: self.epoch(recipe),
            origins: k.module_origins.clone(),
            threads: self.opts.threads,
        };
        let node = self.push(step, inputs);
        self.plan.artifacts.push(ArtifactSpec {
            name,
            kind: "modules",
            arch: k.arch,
            recipe: recipe.file.clone(),
            epoch: self.epoch(recipe),
            node,
            output: gz.extension().into(),
            details: Some(DETAILS.0),
            facts: None,
        });
    }

    /// A kernel source as a tree: a linux-source deb's tarball, a `url`
    /// tarball, or a local tarball or tree, unpacked once and cached.
    pub(super) fn kernel_source(&mut self, name: &str) -> Result<InputRef> {
        self.source_tree(name, Some("usr/src/linux-source-*.tar.xz"))
    }
}

/// The kernel option that lets it unpack an initramfs compressed with `c`.
fn decompressor_option(c: crate::archive::Compression) -> Option<&'static str> {
    use crate::archive::Compression::*;
    match c {
        Gzip => Some("CONFIG_RD_GZIP"),
        Zstd => Some("CONFIG_RD_ZSTD"),
        Xz => Some("CONFIG_RD_XZ"),
        None => Option::None,
    }
}
