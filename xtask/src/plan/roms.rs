//! ROM-update images in the plan: the programs tree (ELF programs from
//! debs with their library closure), the recipe's ROM table, and one
//! second-initrd ROM archive per host when the ROMs come from a recipe with
//! a host inventory (stage1's fleet).

use std::collections::BTreeMap;

use anyhow::{bail, Context, Result};

use super::{ArtifactSpec, Builder, InputRef};
use crate::arch::Arch;
use crate::recipe::{self, Recipe, Rom, RomFrom};
use crate::steps::initramfs::{BuildInitramfs, IMAGE, ROMS};
use crate::steps::programs::{self, CopyPrograms, PACKAGE};
use crate::steps::roms::{self, RomSpec, RomTable, ROM};
use crate::steps::Slot;

/// The per-host ROM archive's file name (`<dir>/hosts/<hostname>/…`).
const HOST_ROMS: &str = "stage3_roms.cpio.gz";

/// A host's ROM archive beside the update image `initramfs_output`:
/// `stage3/hosts/<hostname>/stage3_roms.cpio.gz`.
pub fn host_roms_artifact(initramfs_output: &str, hostname: &str) -> String {
    super::media::host_artifact(&super::beside(initramfs_output, HOST_ROMS), hostname)
}

impl Builder<'_> {
    /// The tree of `[initramfs] programs` and their closure, if any.
    pub(super) fn add_programs(&mut self, ir: &recipe::Initramfs) -> Result<Option<InputRef>> {
        if ir.programs.is_empty() {
            return Ok(None);
        }
        let mut inputs = BTreeMap::new();
        for (i, p) in ir.packages.iter().enumerate() {
            inputs.insert(PACKAGE.nth(i), self.deb_tree(p)?);
        }
        let node = self.push(
            CopyPrograms {
                name: ir.output.clone(),
                packages: ir.packages.clone(),
                programs: ir.programs.clone(),
            },
            inputs,
        );
        Ok(Some(output(node, programs::TREE)))
    }

    /// The recipe's ROM table (ROMs + `roms.conf`) as a tree, if it has
    /// `[[rom]]`s; then a ROM archive per host of the ROMs' inventory.
    pub(super) fn add_rom_table(&mut self, recipe: &Recipe) -> Result<Option<InputRef>> {
        if recipe.roms.is_empty() {
            return Ok(None);
        }
        let mut inputs = BTreeMap::new();
        for (i, rom) in recipe.roms.iter().enumerate() {
            inputs.insert(ROM.nth(i), self.rom_input(rom)?);
        }
        let specs = recipe.roms.iter().map(spec).collect();
        let name = recipe
            .initramfs
            .as_ref()
            .map_or(recipe.name.clone(), |ir| ir.output.clone());
        let node = self.push(
            RomTable {
                name,
                roms: specs,
                host: None,
            },
            inputs,
        );
        Ok(Some(output(node, roms::TREE)))
    }

    /// `<initramfs dir>/hosts/<hostname>/stage3_roms.cpio.gz` for every
    /// host that has at least one of the recipe's ROMs as its own (patched)
    /// file: the host's ROMs and table, loaded as a second initrd over the
    /// shared image, whose table it replaces.
    pub(super) fn add_host_roms(&mut self, recipe: &Recipe, ir: &recipe::Initramfs) -> Result<()> {
        let hostnames = self.rom_hosts(recipe);
        for hostname in hostnames {
            let mut inputs = BTreeMap::new();
            let mut specs = Vec::new();
            for rom in &recipe.roms {
                if let Some(input) = self.host_rom(rom, &hostname) {
                    inputs.insert(ROM.nth(specs.len()), input);
                    specs.push(spec(rom));
                }
            }
            if specs.is_empty() {
                continue;
            }
            let name = host_roms_artifact(&ir.output, &hostname);
            let table = self.push(
                RomTable {
                    name: name.clone(),
                    roms: specs,
                    host: Some(hostname.clone()),
                },
                inputs,
            );
            let epoch = self.epoch(recipe);
            let archive = self.push(
                BuildInitramfs {
                    name: name.clone(),
                    compression: crate::archive::Compression::Gzip,
                    level: crate::archive::Compression::Gzip.default_level(),
                    epoch,
                    uid: 0,
                    gid: 0,
                    trees: vec![ROMS.into()],
                    overlays: 0,
                    busybox: false,
                    arch: recipe.arch,
                    files: Vec::new(),
                    templates: Vec::new(),
                    vars: BTreeMap::new(),
                    devices: Vec::new(),
                    threads: self.opts.threads,
                },
                BTreeMap::from([(ROMS.into(), output(table, roms::TREE))]),
            );
            self.plan.artifacts.push(ArtifactSpec {
                name,
                kind: "initramfs",
                arch: Arch::X86_64,
                recipe: recipe.file.clone(),
                epoch,
                node: archive,
                output: IMAGE.into(),
                details: None,
                facts: None,
            });
        }
        Ok(())
    }

    /// Hosts of the inventories behind the recipe's ROM artifacts, sorted.
    fn rom_hosts(&self, recipe: &Recipe) -> Vec<String> {
        let mut hosts = std::collections::BTreeSet::new();
        for rom in &recipe.roms {
            if let RomFrom::Artifact(a) = &rom.from {
                let Some((from, _)) = a.split_once('/') else {
                    continue;
                };
                if let Some(ipxe) = self.recipes.targets.get(from).and_then(|r| r.ipxe.as_ref()) {
                    hosts.extend(ipxe.hosts.iter().map(|h| h.hostname.clone()));
                }
            }
        }
        hosts.into_iter().collect()
    }

    /// The host's own copy of an artifact ROM (`stage1/hosts/<h>/<file>`,
    /// or where its recipe's layout puts it), if that recipe builds one for
    /// that host.
    fn host_rom(&self, rom: &Rom, hostname: &str) -> Option<InputRef> {
        let RomFrom::Artifact(a) = &rom.from else {
            return None;
        };
        let from = a.split('/').next().unwrap_or_default();
        let ipxe = self.recipes.targets.get(from)?.ipxe.as_ref()?;
        let host = ipxe.hosts.iter().find(|h| h.hostname == hostname)?;
        self.artifact_input(&host.artifact_name(from, &rom.file))
    }

    /// A ROM's file as a plan input: another recipe's artifact (that recipe
    /// is planned as a dependency) or the unpacked tree of a `deb` source.
    fn rom_input(&mut self, rom: &Rom) -> Result<InputRef> {
        match &rom.from {
            RomFrom::Deb { source, .. } => self.deb_tree(source),
            RomFrom::Artifact(a) => {
                let from = a.split('/').next().unwrap_or_default();
                let Some(dependency) = self.recipes.targets.get(from) else {
                    bail!(
                        "{}: [[rom]] artifact `{a}`: there is no recipe `{from}`",
                        rom.origin
                    );
                };
                self.add_recipe_once(dependency)?;
                self.artifact_input(a).with_context(|| {
                    format!(
                        "{}: [[rom]] artifact `{a}`: recipe `{from}` does not build it",
                        rom.origin
                    )
                })
            }
        }
    }
}

fn spec(rom: &Rom) -> RomSpec {
    RomSpec {
        file: rom.file.clone(),
        vendor: rom.vendor,
        device: rom.device,
        method: rom.method.table_word(),
        version: rom.version.clone(),
        max_size: rom.max_size,
        path_in_tree: match &rom.from {
            RomFrom::Deb { path, .. } => Some(path.clone()),
            RomFrom::Artifact(_) => None,
        },
        origin: rom.origin.clone(),
    }
}

/// Output `slot` of `node`.
fn output(node: usize, slot: Slot) -> InputRef {
    InputRef::Node {
        node,
        output: slot.into(),
    }
}
