//! iPXE in the plan: one build step per (architecture, platform), all of
//! that platform's targets in one `make`, each target an artifact
//! `<recipe>/<arch>/<file>`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::Result;

use super::{ArtifactSpec, Builder, InputRef};
use crate::recipe::{self, ipxe::cross_prefix, IpxeTarget, Recipe, SourceKind};
use crate::steps::ipxe::BuildIpxe;

impl Builder<'_> {
    pub(super) fn add_ipxe(&mut self, recipe: &Recipe, ipxe: &recipe::Ipxe) -> Result<()> {
        let shared = self.ipxe_inputs(ipxe)?;
        let commit = self.source_commit(&ipxe.source);
        for (arch, targets) in &ipxe.targets {
            let mut platforms: BTreeMap<&str, Vec<&IpxeTarget>> = BTreeMap::new();
            for t in targets {
                platforms.entry(t.platform.as_str()).or_default().push(t);
            }
            for (platform, targets) in platforms {
                let step = BuildIpxe {
                    arch: arch.clone(),
                    platform: platform.to_string(),
                    files: targets.iter().map(|t| t.file.clone()).collect(),
                    cross: cross_prefix(arch).map(str::to_string),
                    script: ipxe.script.clone(),
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
                    threads: self.opts.threads,
                };
                let node = self.push(step, shared.clone());
                for t in targets {
                    self.plan.artifacts.push(ArtifactSpec {
                        name: artifact_name(&recipe.name, arch, &t.file),
                        kind: t.kind(),
                        arch: if arch == "arm64" { "arm64" } else { "x86_64" },
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
            }
        }
        Ok(())
    }

    /// The source tree, config directory, patches and certificates: the
    /// same inputs for every platform.
    fn ipxe_inputs(&mut self, ipxe: &recipe::Ipxe) -> Result<BTreeMap<String, InputRef>> {
        let mut inputs =
            BTreeMap::from([("source".to_string(), self.source_tree(&ipxe.source, None)?)]);
        if let Some(dir) = &ipxe.config {
            inputs.insert("config".into(), self.local_value(dir)?);
        }
        let files = [
            ("patch", &ipxe.patches),
            ("trust", &ipxe.trust),
            ("cert", &ipxe.certs),
        ];
        for (prefix, list) in files {
            for (i, path) in list.iter().enumerate() {
                inputs.insert(format!("{prefix}.{i}"), self.local_value(path)?);
            }
        }
        Ok(inputs)
    }

    /// The upstream commit a source tree is: a checkout's `.git/HEAD`, or
    /// the 40-hex-digit commit in a pinned archive URL. `None` if unknown.
    fn source_commit(&self, name: &str) -> Option<String> {
        if let Some(path) = self.opts.source_overrides.get(name) {
            return git_head(path);
        }
        let url = match &self.recipes.sources.get(name)?.kind {
            SourceKind::Url { url, .. } | SourceKind::UrlTree { url, .. } => url,
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
    let head = std::fs::read_to_string(git.join("HEAD")).ok()?;
    let head = head.trim();
    let Some(reference) = head.strip_prefix("ref: ") else {
        return Some(head.to_string());
    };
    if let Ok(commit) = std::fs::read_to_string(git.join(reference)) {
        return Some(commit.trim().to_string());
    }
    let packed = std::fs::read_to_string(git.join("packed-refs")).ok()?;
    packed
        .lines()
        .filter_map(|l| l.split_once(' '))
        .find(|(_, name)| *name == reference)
        .map(|(commit, _)| commit.to_string())
}

/// `stage1/x86_64/ipxe.lkrn`.
pub fn artifact_name(recipe: &str, arch: &str, file: &str) -> String {
    format!("{recipe}/{arch}/{file}")
}
