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

use super::{ArtifactSpec, Builder, Check, InputRef};
use crate::arch::Arch;
use crate::archive::ipxe_script::{self, Finish};
use crate::recipe::{self, IpxeTarget, Recipe, SourceKind};
use crate::steps::ipxe::patch::{bin_input, zbin_input, zinfo_input, PatchIpxe};
use crate::steps::ipxe::{BuildIpxe, CERT, CONFIG, PATCH, SOURCE, TRUST};

/// Make target → the placeholder build node that made it.
type Bases = BTreeMap<String, usize>;

impl Builder<'_> {
    pub(super) fn add_ipxe(&mut self, recipe: &Recipe, ipxe: &recipe::Ipxe) -> Result<()> {
        let shared = self.ipxe_inputs(ipxe)?;
        let commit = self.source_commit(&ipxe.source);
        let mut artifacts = Vec::new();
        for (&arch, targets) in &ipxe.targets {
            let made = self.add_ipxe_arch(recipe, ipxe, arch, targets, &shared);
            artifacts.extend(
                made.into_iter()
                    .map(|(name, t, node)| (name, t, node, arch)),
            );
        }
        for (name, t, node, arch) in artifacts {
            self.plan.artifacts.push(ArtifactSpec {
                name,
                kind: t.kind(),
                arch,
                recipe: recipe.file.clone(),
                epoch: self.epoch(recipe),
                node,
                output: t.make_target(),
                details: None,
                facts: Some(serde_json::json!({
                    "make_target": t.make_target(),
                    "source": ipxe.source,
                    "source_commit": commit,
                })),
            });
        }
        Ok(())
    }

    /// One architecture's nodes; returns its artifacts (name, target, node).
    fn add_ipxe_arch<'t>(
        &mut self,
        recipe: &Recipe,
        ipxe: &'t recipe::Ipxe,
        arch: Arch,
        targets: &'t [IpxeTarget],
        shared: &BTreeMap<String, InputRef>,
    ) -> Vec<(String, &'t IpxeTarget, usize)> {
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
        for (_, ts) in by_platform(&patchable) {
            let node = self.add_patch(ipxe, arch, &recipe.name, &script, &ts, &bases);
            for t in ts {
                artifacts.push((artifact_name(&recipe.name, arch, &t.file), t, node));
            }
        }
        for (platform, ts) in by_platform(&direct) {
            let step = self.ipxe_build(recipe, ipxe, arch, platform, &ts, &ipxe.script);
            let node = self.push(step, shared.clone());
            for t in ts {
                artifacts.push((artifact_name(&recipe.name, arch, &t.file), t, node));
            }
        }
        for host in ipxe.hosts.iter().filter(|h| h.arch == arch) {
            let ts: Vec<&IpxeTarget> = host.targets.iter().collect();
            for (_, ts) in by_platform(&ts) {
                let node = self.add_patch(ipxe, arch, &host.hostname, &host.script, &ts, &bases);
                for t in ts {
                    let name = host_artifact_name(&recipe.name, &host.hostname, &t.file);
                    artifacts.push((name, t, node));
                }
            }
            if self.opts.ipxe_check_make.contains(&host.hostname) {
                self.add_reference(recipe, ipxe, host, shared);
            }
        }
        artifacts
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
            trust: ipxe.trust.len(),
            certs: ipxe.certs.len(),
            config: ipxe.config.is_some(),
            epoch: self.epoch(recipe),
            // Decided by the recipe's targets, not this build's: a host's
            // reference make without ROMs must still give the same build id.
            version_block: ipxe.rom_version.is_some()
                && ipxe.targets[&arch]
                    .iter()
                    .any(|t| t.platform == platform && t.kind() == "rom"),
            rom_version: ipxe.rom_version,
            intermediates: false,
            note: String::new(),
            threads: self.opts.threads,
        }
    }

    /// One patch step for `who`'s `targets` of one platform, fed by that
    /// platform's placeholder build (so asking for one platform's files
    /// compiles only that platform).
    fn add_patch(
        &mut self,
        ipxe: &recipe::Ipxe,
        arch: Arch,
        who: &str,
        script: &str,
        targets: &[&IpxeTarget],
        bases: &Bases,
    ) -> usize {
        let mut inputs = BTreeMap::new();
        for t in targets {
            let target = t.make_target();
            let node = bases[&target];
            let mut from = |name: String, output: String| {
                inputs.insert(name, InputRef::Node { node, output });
            };
            from(target.clone(), target.clone());
            if let Some(Finish::Zbin { .. }) = ipxe_script::finish_of(&t.file) {
                from(bin_input(&target), bin_input(&target));
                from(zinfo_input(&target), zinfo_input(&target));
                from(zbin_input(&t.platform), zbin_input(&t.platform));
            }
        }
        let step = PatchIpxe {
            arch,
            platform: targets[0].platform.clone(),
            who: who.to_string(),
            script: script.to_string(),
            size: ipxe.script_size,
            targets: targets.iter().map(|t| t.make_target()).collect(),
            rom_version: ipxe.rom_version,
        };
        self.push(step, inputs)
    }

    /// A full `make` of `host`'s files with its script, per platform, each
    /// file a [`Check`] on the host's patched artifact.
    fn add_reference(
        &mut self,
        recipe: &Recipe,
        ipxe: &recipe::Ipxe,
        host: &recipe::ipxe::IpxeHost,
        shared: &BTreeMap<String, InputRef>,
    ) {
        let ts: Vec<&IpxeTarget> = host.targets.iter().collect();
        for (platform, ts) in by_platform(&ts) {
            let step = self.ipxe_build(recipe, ipxe, host.arch, platform, &ts, &host.script);
            let step = BuildIpxe {
                note: format!("full make for {}", host.hostname),
                ..step
            };
            let node = self.push(step, shared.clone());
            for t in ts {
                self.plan.checks.push(Check {
                    artifact: host_artifact_name(&recipe.name, &host.hostname, &t.file),
                    node,
                    output: t.make_target(),
                    how: format!(
                        "make {} EMBED=<{}'s script>",
                        t.make_target(),
                        host.hostname
                    ),
                });
            }
        }
    }

    /// The source tree, config directory, patches and certificates: the
    /// same inputs for every platform.
    fn ipxe_inputs(&mut self, ipxe: &recipe::Ipxe) -> Result<BTreeMap<String, InputRef>> {
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
        Ok(inputs)
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

/// `stage1/hosts/<hostname>/ipxe.lkrn`.
pub fn host_artifact_name(recipe: &str, hostname: &str, file: &str) -> String {
    format!("{recipe}/hosts/{hostname}/{file}")
}

/// Targets grouped by platform directory, in order.
fn by_platform<'t>(targets: &[&'t IpxeTarget]) -> BTreeMap<&'t str, Vec<&'t IpxeTarget>> {
    let mut platforms: BTreeMap<&str, Vec<&IpxeTarget>> = BTreeMap::new();
    for t in targets {
        platforms.entry(t.platform.as_str()).or_default().push(t);
    }
    platforms
}
