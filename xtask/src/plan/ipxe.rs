//! iPXE in the plan. Per architecture, one placeholder build per platform
//! (`bin`, `bin-x86_64-efi`, …) compiles iPXE once with a fixed-size
//! placeholder script; the recipe's own files (`<recipe>/<arch>/<file>`) and
//! every inventory host's (`<recipe>/hosts/<hostname>/<file>`) are patched
//! from it (`archive/ipxe_script.rs`). Formats that cannot be patched are built
//! by a full `make` with the recipe's script. `--check-make` adds a full
//! `make` per host as a reference each patched file must equal.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;

use super::sign::Built;
use super::{ArtifactSpec, Builder, Check, InputRef};
use crate::arch::Arch;
use crate::archive::ipxe_script::{self, Finish};
use crate::recipe::combined::CombinedRom;
use crate::recipe::{self, EfiKind, IpxeTarget, Recipe, SourceKind};
use crate::steps::ipxe::combine::{self, CatRom, CombineRoms};
use crate::steps::ipxe::patch::{
    bin_input, efidrv_input, efirom_input, zbin_input, zinfo_input, PatchIpxe,
};
use crate::steps::ipxe::{BuildIpxe, CERT, CONFIG, PATCH, SOURCE, TRUST};

/// Make target → the placeholder build node that made it.
type Bases = BTreeMap<String, usize>;

/// Whose files a patch step makes, from which placeholder builds.
#[derive(Clone, Copy)]
struct Patching<'a> {
    ipxe: &'a recipe::Ipxe,
    arch: Arch,
    /// A host name, or the recipe's.
    who: &'a str,
    /// The script, padded to `script_size`.
    script: &'a str,
    bases: &'a Bases,
}

/// An artifact the iPXE nodes make.
struct Made {
    name: String,
    kind: &'static str,
    arch: Arch,
    node: usize,
    /// The node's output holding it.
    output: String,
    /// What it is made of, for the manifest: a make target, or the images a
    /// combined ROM chains.
    made_of: serde_json::Value,
}

impl Made {
    fn target(name: String, arch: Arch, t: &IpxeTarget, node: usize) -> Made {
        Made {
            name,
            kind: t.kind(),
            arch,
            node,
            output: t.make_target(),
            made_of: serde_json::json!({ "make_target": t.make_target() }),
        }
    }
}

impl Builder<'_> {
    pub(super) fn add_ipxe(&mut self, recipe: &Recipe, ipxe: &recipe::Ipxe) -> Result<()> {
        self.check_trust_agrees(recipe)?;
        let shared = self.ipxe_inputs(recipe, ipxe)?;
        let commit = self.source_commit(&ipxe.source);
        let mut artifacts = Vec::new();
        for (&arch, targets) in &ipxe.targets {
            artifacts.extend(self.add_ipxe_arch(recipe, ipxe, arch, targets, &shared));
        }
        for made in artifacts {
            let mut facts = made.made_of;
            facts["source"] = ipxe.source.clone().into();
            facts["source_commit"] = commit.clone().into();
            let file = self.ipxe_file(recipe, &made.name, made.node, made.output);
            if let Some(serde_json::Value::Object(signed)) = file.facts {
                facts
                    .as_object_mut()
                    .expect("made_of is an object")
                    .extend(signed);
            }
            self.plan.artifacts.push(ArtifactSpec {
                name: made.name,
                kind: made.kind,
                arch: made.arch,
                recipe: recipe.file.clone(),
                epoch: self.epoch(recipe),
                node: file.node,
                output: file.output,
                details: None,
                facts: Some(facts),
            });
        }
        Ok(())
    }

    /// One architecture's nodes and artifacts.
    fn add_ipxe_arch(
        &mut self,
        recipe: &Recipe,
        ipxe: &recipe::Ipxe,
        arch: Arch,
        targets: &[IpxeTarget],
        shared: &BTreeMap<String, InputRef>,
    ) -> Vec<Made> {
        let (patchable, direct): (Vec<&IpxeTarget>, Vec<&IpxeTarget>) = targets
            .iter()
            .partition(|t| ipxe_script::finish_of(&t.file).is_some());
        let placeholder = String::from_utf8(ipxe_script::placeholder(ipxe.script_size))
            .expect("the placeholder is ASCII");
        let mut bases = Bases::new();
        for (platform, ts) in by_platform(&patchable) {
            let step = BuildIpxe {
                intermediates: true,
                rom_version: None,
                note: "placeholder script".into(),
                ..self.ipxe_build(recipe, ipxe, arch, platform, &ts, &placeholder)
            };
            let node = self.push(step, shared.clone());
            bases.extend(ts.iter().map(|t| (t.make_target(), node)));
        }
        let mut artifacts = Vec::new();
        let script = ipxe_script::padded(&ipxe.script, ipxe.script_size)
            .expect("the script's size is checked on load");
        let combined: Vec<&CombinedRom> = ipxe.combined.iter().filter(|c| c.arch == arch).collect();
        let ours = Patching {
            ipxe,
            arch,
            who: &recipe.name,
            script: &script,
            bases: &bases,
        };
        let patched = self.add_patches(&ours, &patchable);
        for t in &patchable {
            let name = artifact_name(&recipe.name, arch, &t.file);
            artifacts.push(Made::target(name, arch, t, patched[&t.make_target()]));
        }
        for c in combined {
            let name = artifact_name(&recipe.name, arch, &c.file);
            artifacts.push(self.add_combined(&recipe.name, c, &patched, name));
        }
        for (platform, ts) in by_platform(&direct) {
            let step = self.ipxe_build(recipe, ipxe, arch, platform, &ts, &ipxe.script);
            let node = self.push(step, shared.clone());
            for t in ts {
                let name = artifact_name(&recipe.name, arch, &t.file);
                artifacts.push(Made::target(name, arch, t, node));
            }
        }
        for host in ipxe.hosts.iter().filter(|h| h.arch == arch) {
            let all = host.patch_targets();
            let ts: Vec<&IpxeTarget> = all.iter().collect();
            let theirs = Patching {
                who: &host.hostname,
                script: &host.script,
                ..ours
            };
            let patched = self.add_patches(&theirs, &ts);
            for t in &host.targets {
                let name = host.artifact_name(&recipe.name, &t.file);
                artifacts.push(Made::target(name, arch, t, patched[&t.make_target()]));
            }
            for c in &host.combined {
                let name = host.artifact_name(&recipe.name, &c.file);
                artifacts.push(self.add_combined(&host.hostname, c, &patched, name));
            }
            if self.opts.ipxe_check_make.contains(&host.hostname) {
                self.add_reference(recipe, ipxe, host, shared);
            }
        }
        artifacts
    }

    /// Output `output` of `node`, the iPXE file `name`: an EFI image (an
    /// application or a driver) is signed when `[signing] uefi` names
    /// `ipxe` and a key is given.
    fn ipxe_file(&mut self, recipe: &Recipe, name: &str, node: usize, output: String) -> Built {
        if name.ends_with(".efi") || name.ends_with(".efidrv") {
            self.efi(recipe, EfiKind::Ipxe, name, node, output)
        } else {
            Built::plain(node, output)
        }
    }

    /// A combined ROM of `who`'s patched images.
    fn add_combined(
        &mut self,
        who: &str,
        c: &CombinedRom,
        patched: &BTreeMap<String, usize>,
        name: String,
    ) -> Made {
        let (images, inputs) = image_inputs(c, patched);
        let step = CombineRoms {
            who: who.to_string(),
            file: c.file.clone(),
            images: images.clone(),
            pad_to: c.pad_to,
            max_size: c.max_size,
        };
        Made {
            name,
            kind: "rom",
            arch: c.arch,
            node: self.push(step, inputs),
            output: combine::ROM.into(),
            made_of: serde_json::json!({ "images": images, "pad_to": c.pad_to }),
        }
    }

    fn ipxe_build(
        &self,
        recipe: &Recipe,
        ipxe: &recipe::Ipxe,
        arch: Arch,
        platform: &str,
        targets: &[&IpxeTarget],
        script: &str,
    ) -> BuildIpxe {
        BuildIpxe {
            arch,
            platform: platform.to_string(),
            files: targets.iter().map(|t| t.file.clone()).collect(),
            cross: arch.cross_prefix().map(str::to_string),
            script: script.to_string(),
            patches: ipxe
                .patches
                .iter()
                .map(|p| {
                    p.file_name()
                        .unwrap_or_default()
                        .to_string_lossy()
                        .into_owned()
                })
                .collect(),
            trust: ipxe.trust.len() + usize::from(self.operator_trust(recipe).is_some()),
            certs: ipxe.certs.len(),
            config: ipxe.config.is_some(),
            epoch: self.epoch(recipe),
            // Decided by the recipe's targets, not this build's: a host's
            // reference make without ROMs must still give the same build id.
            version_block: ipxe.rom_version.is_some()
                && ipxe.targets[&arch]
                    .iter()
                    .any(|t| t.platform == platform && t.is_legacy_rom()),
            rom_version: ipxe.rom_version,
            intermediates: false,
            note: String::new(),
            threads: self.opts.threads,
        }
    }

    /// `who`'s patch steps, one per platform of `targets`, each fed by that
    /// platform's placeholder build (so asking for one platform's files
    /// compiles only that platform); returns which node made each target.
    fn add_patches(&mut self, p: &Patching, targets: &[&IpxeTarget]) -> BTreeMap<String, usize> {
        let mut made = BTreeMap::new();
        for (_, ts) in by_platform(targets) {
            let node = self.add_patch(p, &ts);
            made.extend(ts.iter().map(|t| (t.make_target(), node)));
        }
        made
    }

    fn add_patch(&mut self, p: &Patching, targets: &[&IpxeTarget]) -> usize {
        let bases = p.bases;
        let mut inputs = BTreeMap::new();
        for t in targets {
            let target = t.make_target();
            let node = bases[&target];
            let mut from = |name: String, output: String| {
                inputs.insert(name, InputRef::Node { node, output });
            };
            from(target.clone(), target.clone());
            match ipxe_script::finish_of(&t.file) {
                Some(Finish::Zbin { .. }) => {
                    from(bin_input(&target), bin_input(&target));
                    from(zinfo_input(&target), zinfo_input(&target));
                    from(zbin_input(&t.platform), zbin_input(&t.platform));
                }
                Some(Finish::EfiRom) => {
                    from(efidrv_input(&target), efidrv_input(&target));
                    from(efirom_input(&t.platform), efirom_input(&t.platform));
                }
                Some(Finish::Efi) | None => {}
            }
        }
        let step = PatchIpxe {
            arch: p.arch,
            platform: targets[0].platform.clone(),
            who: p.who.to_string(),
            script: p.script.to_string(),
            size: p.ipxe.script_size,
            targets: targets.iter().map(|t| t.make_target()).collect(),
            rom_version: p.ipxe.rom_version,
        };
        self.push(step, inputs)
    }

    /// A full `make` of `host`'s files with its script, per platform, each
    /// file a [`Check`] on the host's patched artifact; each combined ROM's
    /// reference is iPXE's `util/catrom.pl` over those made images.
    fn add_reference(
        &mut self,
        recipe: &Recipe,
        ipxe: &recipe::Ipxe,
        host: &recipe::ipxe::IpxeHost,
        shared: &BTreeMap<String, InputRef>,
    ) {
        let all = host.patch_targets();
        let ts: Vec<&IpxeTarget> = all.iter().collect();
        let mut made = BTreeMap::new();
        for (platform, ts) in by_platform(&ts) {
            let step = self.ipxe_build(recipe, ipxe, host.arch, platform, &ts, &host.script);
            let step = BuildIpxe {
                note: format!("full make for {}", host.hostname),
                ..step
            };
            let node = self.push(step, shared.clone());
            made.extend(ts.iter().map(|t| (t.make_target(), node)));
        }
        for t in &host.targets {
            // A signed file's reference is signed too: signatures are
            // deterministic, so the two agree exactly when the unsigned do.
            let artifact = host.artifact_name(&recipe.name, &t.file);
            let (node, output) = (made[&t.make_target()], t.make_target());
            let reference = self.ipxe_file(recipe, &artifact, node, output);
            self.plan.checks.push(Check {
                artifact,
                node: reference.node,
                output: reference.output,
                how: format!(
                    "make {} EMBED=<{}'s script>",
                    t.make_target(),
                    host.hostname
                ),
            });
        }
        for c in &host.combined {
            let (images, mut inputs) = image_inputs(c, &made);
            inputs.insert(SOURCE.into(), shared[SOURCE.0].clone());
            let step = CatRom {
                who: host.hostname.clone(),
                file: c.file.clone(),
                images: images.clone(),
                pad_to: c.pad_to,
            };
            let node = self.push(step, inputs);
            self.plan.checks.push(Check {
                artifact: host.artifact_name(&recipe.name, &c.file),
                node,
                output: combine::ROM.into(),
                how: format!("make + util/catrom.pl {}", images.join(" ")),
            });
        }
    }

    /// The source tree, config directory, patches and certificates: the
    /// same inputs for every platform.
    fn ipxe_inputs(
        &mut self,
        recipe: &Recipe,
        ipxe: &recipe::Ipxe,
    ) -> Result<BTreeMap<String, InputRef>> {
        let mut inputs = BTreeMap::from([(SOURCE.into(), self.source_tree(&ipxe.source, None)?)]);
        if let Some(dir) = &ipxe.config {
            inputs.insert(CONFIG.into(), self.local_value(dir)?);
        }
        let files = [
            (PATCH, &ipxe.patches),
            (TRUST, &ipxe.trust),
            (CERT, &ipxe.certs),
        ];
        for (slot, list) in files {
            for (i, path) in list.iter().enumerate() {
                inputs.insert(slot.nth(i), self.local_value(path)?);
            }
        }
        if let Some(key) = self.operator_trust(recipe) {
            let pem = key.trust_anchor_pem()?;
            let digest = self.store.put_bytes(pem.as_bytes())?;
            let size = pem.len() as u64;
            let value = InputRef::Value(crate::store::Output::File { digest, size });
            inputs.insert(TRUST.nth(ipxe.trust.len()), value);
        }
        Ok(inputs)
    }

    /// The operator's key when `recipe`'s iPXE verifies what it chains (`[signing] imgverify =
    /// ["ipxe"]`): its CA is then one more `TRUST=` certificate, after the recipe's own.
    fn operator_trust(&self, recipe: &Recipe) -> Option<&crate::sign::SigningKey> {
        let key = self.opts.signing.as_deref()?;
        recipe.signing.ipxe_verifies().then_some(key)
    }

    /// A verifying iPXE's script and binary must agree: the recipes were loaded for a build
    /// with a key exactly when the plan has one.
    fn check_trust_agrees(&self, recipe: &Recipe) -> Result<()> {
        let keyed = self.opts.signing.is_some();
        if recipe.signing.ipxe_verifies() && keyed != self.recipes.signing_key {
            anyhow::bail!(
                "{}: the recipes were loaded {} a signing key but are planned {} one (load them with recipe::load_for)",
                recipe.file.display(),
                if self.recipes.signing_key { "for" } else { "without" },
                if keyed { "with" } else { "without" }
            );
        }
        Ok(())
    }

    /// The upstream commit a source tree is: a checkout's `.git/HEAD`, or
    /// the 40-hex-digit commit in a pinned archive URL (also for a local
    /// tarball given instead, which must unpack to the pinned tree). `None`
    /// if unknown.
    fn source_commit(&self, name: &str) -> Option<String> {
        let kind = &self.recipes.sources.get(name)?.kind;
        let url = match (self.opts.source_overrides.get(name), kind) {
            (Some(path), _) if path.is_dir() => return git_head(path),
            (_, SourceKind::UrlTree { url, .. }) => url,
            (None, SourceKind::Url { url, .. }) => url,
            _ => return None,
        };
        url.split(|c: char| !c.is_ascii_hexdigit())
            .find(|part| part.len() == 40)
            .map(str::to_string)
    }
}

/// The commit `HEAD` names in a git checkout (a detached head, a branch
/// in `refs/heads/`, or one in `packed-refs`), read without git.
fn git_head(checkout: &Path) -> Option<String> {
    let git = checkout.join(".git");
    let head = fs_err::read_to_string(git.join("HEAD")).ok()?;
    let head = head.trim();
    let Some(reference) = head.strip_prefix("ref: ") else {
        return Some(head.to_string());
    };
    if let Ok(commit) = fs_err::read_to_string(git.join(reference)) {
        return Some(commit.trim().to_string());
    }
    let packed = fs_err::read_to_string(git.join("packed-refs")).ok()?;
    packed
        .lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(_, name)| *name == reference)
        .map(|(commit, _)| commit.to_string())
}

/// `stage1/x86_64/ipxe.lkrn`.
pub fn artifact_name(recipe: &str, arch: Arch, file: &str) -> String {
    format!("{recipe}/{arch}/{file}")
}

/// A combined ROM's images as make targets, and as the inputs `image.<i>`
/// of a step chaining them, from the nodes in `made` that made each.
fn image_inputs(
    c: &CombinedRom,
    made: &BTreeMap<String, usize>,
) -> (Vec<String>, BTreeMap<String, InputRef>) {
    let images: Vec<String> = c.images.iter().map(IpxeTarget::make_target).collect();
    let inputs = images
        .iter()
        .enumerate()
        .map(|(i, target)| {
            let (node, output) = (made[target], target.clone());
            (combine::IMAGE.nth(i), InputRef::Node { node, output })
        })
        .collect();
    (images, inputs)
}

/// Targets grouped by platform directory, in order.
fn by_platform<'t>(targets: &[&'t IpxeTarget]) -> BTreeMap<&'t str, Vec<&'t IpxeTarget>> {
    let mut platforms: BTreeMap<&str, Vec<&IpxeTarget>> = BTreeMap::new();
    for t in targets {
        platforms.entry(t.platform.as_str()).or_default().push(t);
    }
    platforms
}
