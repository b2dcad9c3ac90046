//! Boot media in the plan: the UKI and ISO over the recipe's kernel, one
//! UKI + ISO pair per inventory host (only these small steps run per host;
//! the kernel is shared), and the chain script.

use std::collections::BTreeMap;

use anyhow::Result;

use super::sign::Built;
use super::{ArtifactSpec, Builder, InputRef};
use crate::recipe::{self, EfiKind, Recipe};
use crate::steps;
use crate::steps::initramfs::IMAGE;
use crate::steps::iso::BuildIso;
use crate::steps::kernel::link::BZIMAGE;
use crate::steps::script::WriteScript;
use crate::steps::uki::{os_release, AssembleUki};

impl Builder<'_> {
    /// `kernel` is the link node (output `bzImage`); `initramfs` the node
    /// whose `image` goes into the UKI's `.initrd`.
    pub(super) fn add_media(
        &mut self,
        recipe: &Recipe,
        kernel: usize,
        initramfs: Option<usize>,
    ) -> Result<()> {
        let m = &recipe.media;
        if let Some(uki) = &m.uki {
            let node = self.add_uki(recipe, uki, &m.cmdline, kernel, initramfs, &uki.output)?;
            let efi = self.efi(recipe, EfiKind::Uki, &uki.output, node, steps::uki::EFI);
            let file = efi.input();
            self.artifact(recipe, &uki.output, "uki", efi);
            if let Some(iso) = &m.iso {
                let iso_node = self.add_iso(recipe, iso, &m.cmdline, kernel, file, &iso.output)?;
                let iso_file = Built::plain(iso_node, steps::iso::ISO);
                self.artifact(recipe, &iso.output, "iso", iso_file);
                for host in &m.hosts {
                    self.add_host(recipe, uki, iso, host, kernel, initramfs)?;
                }
            }
        }
        if let Some(script) = &m.script {
            let node = self.push(
                WriteScript {
                    name: script.output.clone(),
                    text: script.text.clone(),
                },
                BTreeMap::new(),
            );
            let file = Built::plain(node, steps::script::FILE);
            self.artifact(recipe, &script.output, "script", file);
        }
        Ok(())
    }

    /// `output/<iso dir>/hosts/<hostname>/<iso file>` with the host's cmdline.
    fn add_host(
        &mut self,
        recipe: &Recipe,
        uki: &recipe::Uki,
        iso: &recipe::Iso,
        host: &recipe::HostMedia,
        kernel: usize,
        initramfs: Option<usize>,
    ) -> Result<()> {
        let name = host_artifact(&iso.output, &host.hostname);
        let label = format!("{} ({})", uki.output, host.hostname);
        let uki_node = self.add_uki(recipe, uki, &host.cmdline, kernel, initramfs, &label)?;
        let signed = self.efi(recipe, EfiKind::Uki, &label, uki_node, steps::uki::EFI);
        let iso_node = self.add_iso(recipe, iso, &host.cmdline, kernel, signed.input(), &name)?;
        let mut file = Built::plain(iso_node, steps::iso::ISO);
        file.facts = signed.facts.map(|f| serde_json::json!({ "esp": f }));
        self.artifact(recipe, &name, "iso", file);
        Ok(())
    }

    fn add_uki(
        &mut self,
        recipe: &Recipe,
        uki: &recipe::Uki,
        cmdline: &str,
        kernel: usize,
        initramfs: Option<usize>,
        name: &str,
    ) -> Result<usize> {
        let mut inputs = BTreeMap::from([
            (steps::uki::STUB.into(), self.deb_tree(&uki.stub)?),
            (
                steps::uki::KERNEL.into(),
                InputRef::Node {
                    node: kernel,
                    output: BZIMAGE.into(),
                },
            ),
        ]);
        if let Some(node) = initramfs {
            let image = InputRef::Node {
                node,
                output: IMAGE.into(),
            };
            inputs.insert(steps::uki::INITRD.into(), image);
        }
        let step = AssembleUki {
            name: name.to_string(),
            arch: recipe.arch,
            cmdline: cmdline.to_string(),
            os_release: os_release(&recipe.name, recipe.description.as_deref()),
            initrd: initramfs.is_some(),
        };
        Ok(self.push(step, inputs))
    }

    fn add_iso(
        &mut self,
        recipe: &Recipe,
        iso: &recipe::Iso,
        cmdline: &str,
        kernel: usize,
        uki: InputRef,
        name: &str,
    ) -> Result<usize> {
        let mut inputs = BTreeMap::from([(steps::iso::UKI.into(), uki)]);
        if let Some(bios) = &iso.bios {
            inputs.insert(steps::iso::ISOLINUX.into(), self.deb_tree(&bios.isolinux)?);
            inputs.insert(steps::iso::SYSLINUX.into(), self.deb_tree(&bios.syslinux)?);
            let kernel = InputRef::Node {
                node: kernel,
                output: BZIMAGE.into(),
            };
            inputs.insert(steps::iso::KERNEL.into(), kernel);
        }
        let step = BuildIso {
            name: name.to_string(),
            arch: recipe.arch,
            cmdline: cmdline.to_string(),
            volume_id: iso.volume_id.clone(),
            epoch: self.epoch(recipe),
        };
        Ok(self.push(step, inputs))
    }

    fn artifact(&mut self, recipe: &Recipe, name: &str, kind: &'static str, file: Built) {
        self.plan.artifacts.push(ArtifactSpec {
            name: name.to_string(),
            kind,
            arch: recipe.arch,
            recipe: recipe.file.clone(),
            epoch: self.epoch(recipe),
            node: file.node,
            output: file.output,
            details: None,
            facts: file.facts,
        });
    }
}

/// `stage2/stage2.iso` → `stage2/hosts/<hostname>/stage2.iso`.
pub fn host_artifact(output: &str, hostname: &str) -> String {
    match output.rsplit_once('/') {
        Some((dir, file)) => format!("{dir}/hosts/{hostname}/{file}"),
        None => format!("hosts/{hostname}/{output}"),
    }
}
