//! iPXE in the plan: one build step per (architecture, platform), all of
//! that platform's targets in one `make`, each target an artifact
//! `<recipe>/<arch>/<file>`.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};

use super::{ArtifactSpec, Builder, InputRef};
use crate::recipe::{self, ipxe::cross_prefix, IpxeTarget, Recipe};
use crate::steps::ipxe::BuildIpxe;

impl Builder<'_> {
    pub(super) fn add_ipxe(&mut self, recipe: &Recipe, ipxe: &recipe::Ipxe) -> Result<()> {
        let shared = self.ipxe_inputs(ipxe)?;
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
                    patches: ipxe.patches.len(),
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

    fn local_value(&self, path: &Path) -> Result<InputRef> {
        let value = self
            .local_input(path)
            .with_context(|| format!("hashing {}", path.display()))?;
        Ok(InputRef::Value(value))
    }
}

/// `stage1/x86_64/ipxe.lkrn`.
pub fn artifact_name(recipe: &str, arch: &str, file: &str) -> String {
    format!("{recipe}/{arch}/{file}")
}
