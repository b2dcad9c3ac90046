//! Initramfs images and module archives in the plan: an image merges
//! busybox, programs from packages, ROMs and the recipe's overlays with
//! its templates rendered; a module archive is the closure of the wanted
//! modules in a kernel's tree.

use std::collections::BTreeMap;

use anyhow::{Context, Result};

use super::sources::display_path;
use super::{ArtifactSpec, Builder, InputRef};
use crate::recipe::{self, Recipe};
use crate::steps::initramfs::{
    BuildInitramfs, PlacedFile, BUSYBOX, FILE, IMAGE, OVERLAY, PROGRAMS, ROMS,
};
use crate::steps::modules::depmod::{DepmodIndexes, INDEXES, KERNEL};
use crate::steps::modules::step::{BuildModules, DETAILS, FIRMWARE};
use crate::steps::modules::Wanted;
use crate::store::{Modes, Output};

impl Builder<'_> {
    pub(super) fn add_initramfs(
        &mut self,
        recipe: &Recipe,
        ir: &recipe::Initramfs,
    ) -> Result<usize> {
        let mut inputs = BTreeMap::new();
        if let Some(bb) = &ir.busybox {
            inputs.insert(BUSYBOX.into(), self.deb_tree(bb)?);
        }
        // Merged in this order, later wins: programs from packages, ROMs,
        // then the recipe's own overlays.
        let mut trees = Vec::new();
        for (name, tree) in [
            (PROGRAMS, self.add_programs(ir)?),
            (ROMS, self.add_rom_table(recipe)?),
        ] {
            if let Some(tree) = tree {
                inputs.insert(name.into(), tree);
                trees.push(name.into());
            }
        }
        for (i, dir) in ir.overlays.iter().enumerate() {
            let digest = self
                .store
                .put_local_tree(dir, Modes::GitLike)
                .with_context(|| format!("hashing overlay {}", dir.display()))?;
            inputs.insert(OVERLAY.nth(i), InputRef::Value(Output::Tree { digest }));
        }
        // `[[initramfs.files]]`: a file as fetched, or a member of a package,
        // tarball or tree.
        for (i, f) in ir.files.iter().enumerate() {
            let input = match (&f.member, f.deb) {
                (None, _) => self.source_input(&f.source)?,
                (Some(_), true) => self.deb_tree(&f.source)?,
                (Some(_), false) => self.source_tree(&f.source, None)?,
            };
            inputs.insert(FILE.nth(i), input);
        }
        let vars = check_templates(recipe, ir)?;
        let step = BuildInitramfs {
            name: ir.output.clone(),
            compression: ir.compression,
            level: ir.level.or(ir.compression.default_level()),
            epoch: self.epoch(recipe),
            uid: ir.uid,
            gid: ir.gid,
            trees,
            overlays: ir.overlays.len(),
            busybox: ir.busybox.is_some(),
            arch: recipe.arch,
            files: ir
                .files
                .iter()
                .map(|f| PlacedFile {
                    source: f.source.clone(),
                    member: f.member.clone(),
                    path: f.path.clone(),
                    mode: f.mode,
                })
                .collect(),
            templates: ir.templates.clone(),
            vars,
            devices: ir.devices.clone(),
            threads: self.opts.threads,
        };
        let node = self.push(step, inputs);
        self.plan.artifacts.push(ArtifactSpec {
            name: ir.output.clone(),
            kind: "initramfs",
            arch: recipe.arch,
            recipe: recipe.file.clone(),
            epoch: self.epoch(recipe),
            node,
            output: IMAGE.into(),
            details: None,
            facts: None,
        });
        self.add_host_roms(recipe, ir)?;
        Ok(node)
    }

    /// The inputs of a modules step over the module tree `kernel`: the tree
    /// and its full depmod indexes (a step of their own, cached per kernel).
    /// An empty `release` means the one release the tree holds.
    pub(super) fn module_inputs(
        &mut self,
        kernel: InputRef,
        release: &str,
    ) -> BTreeMap<String, InputRef> {
        let depmod = DepmodIndexes {
            kernel_release: release.to_string(),
        };
        let indexes = self.push(depmod, BTreeMap::from([(KERNEL.into(), kernel.clone())]));
        BTreeMap::from([
            (KERNEL.into(), kernel),
            (
                INDEXES.into(),
                InputRef::Node {
                    node: indexes,
                    output: INDEXES.into(),
                },
            ),
        ])
    }

    pub(super) fn add_modules(&mut self, recipe: &Recipe, m: &recipe::Modules) -> Result<()> {
        let kernel = self.deb_tree(&m.kernel)?;
        let mut inputs = self.module_inputs(kernel, &m.kernel_release);
        for (i, fw) in m.firmware.iter().enumerate() {
            inputs.insert(FIRMWARE.nth(i), self.deb_tree(fw)?);
        }
        let step = BuildModules {
            name: format!("{} {}", recipe.name, m.kernel_release),
            kernel_release: m.kernel_release.clone(),
            wanted: wanted(&m.wanted),
            modprobe_d: m.modprobe_d.clone(),
            firmware: m.firmware.len(),
            compressions: m.compressions.clone(),
            epoch: self.epoch(recipe),
            origins: m.origins.clone(),
            threads: self.opts.threads,
        };
        let node = self.push(step, inputs);
        for ext in m.compressions.iter().map(|c| c.extension()) {
            self.plan.artifacts.push(ArtifactSpec {
                name: format!("modules/{}/modules.cpio.{ext}", m.kernel_release),
                kind: "modules",
                arch: recipe.arch,
                recipe: recipe.file.clone(),
                epoch: self.epoch(recipe),
                node,
                output: ext.into(),
                details: Some(DETAILS.0),
                facts: None,
            });
        }
        Ok(())
    }
}

/// Renders every template once at plan time so that an unknown or unset
/// variable is reported with the template's file, line and column before
/// anything runs. Returns the variables the templates use: a variable no
/// template names must not change the image's key.
fn check_templates(recipe: &Recipe, ir: &recipe::Initramfs) -> Result<BTreeMap<String, String>> {
    let mut used = std::collections::BTreeSet::new();
    for t in &ir.templates {
        // The last overlay holding the path provides it; a symlink there
        // (or on the way) is refused unread: a template's text is quoted
        // in errors, and must not be a host file it points to.
        let overlay = ir
            .overlays
            .iter()
            .rev()
            .find(|o| o.join(t).symlink_metadata().is_ok())
            .with_context(|| {
                format!(
                    "{}: template `{t}` is not a file in any overlay of this recipe",
                    recipe.file.display()
                )
            })?;
        let file = overlay.join(t);
        let bytes = crate::store::beneath::read_file(overlay, t)
            .with_context(|| format!("{}: template `{t}`", recipe.file.display()))?;
        let text = String::from_utf8(bytes)
            .map_err(|_| anyhow::anyhow!("template {} is not UTF-8 text", file.display()))?;
        recipe::check_template(&display_path(&file), &text, &recipe.variables)?;
        used.extend(crate::template::referenced(&text));
    }
    Ok(recipe
        .variables
        .iter()
        .filter(|(k, _)| used.contains(*k))
        .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
        .collect())
}

/// A recipe's `wanted` items as the modules step takes them.
pub(super) fn wanted(items: &[recipe::WantedModule]) -> Vec<Wanted> {
    use recipe::WantedModule as W;
    let one = |w: &W| match w {
        W::Name(n) => Wanted::Name(n.clone()),
        W::Alias(a) => Wanted::Alias(a.clone()),
        W::Glob(g) => Wanted::Glob(g.clone()),
    };
    items.iter().map(one).collect()
}
