//! `cargo xtask ipxe --arch …`: the stage1 recipe's iPXE files for one
//! architecture -- its own (`stage1/<arch>/<file>`) and each inventory
//! host's (`stage1/hosts/<hostname>/<file>`), all patched from one compile.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::build::build_targets_with;
use super::session::Overrides;
use super::Settings;
use crate::arch::Arch;
use crate::recipe::combined::CombinedRom;
use crate::recipe::{self, ipxe::IpxeHost, IpxeTarget};

#[derive(Debug, Args)]
pub struct IpxeArgs {
    /// `x86_64` or `arm64` (arm64 cross-compiles with aarch64-linux-gnu-gcc).
    #[arg(long, value_enum, default_value_t = Arch::DEFAULT)]
    pub arch: Arch,
    /// Only these targets, as the recipe names them (`bin/ipxe.lkrn`) or by
    /// file (`ipxe.lkrn`, or a combined ROM's `efi-virtio.rom`); repeatable.
    /// Default: all of the architecture's.
    #[arg(long = "target", value_name = "TARGET")]
    pub targets: Vec<String>,
    /// The recipe with the `[ipxe]` section.
    #[arg(long, default_value = "stage1")]
    pub recipe: String,
    /// A host inventory (`.toml` with `[[host]]` tables, `.csv` with a
    /// header row, or `.json`), instead of the recipe's `[ipxe] hosts`.
    /// Builds only the hosts' files.
    #[arg(long, value_name = "FILE")]
    pub hosts: Option<PathBuf>,
    /// Only these hosts of the inventory; repeatable.
    #[arg(long = "only", value_name = "HOST")]
    pub only: Vec<String>,
    /// Also build each selected host's files with a full `make` of its own
    /// script (and combined ROMs with iPXE's util/catrom.pl over those) and
    /// require the patched files to be byte-identical (slow: one iPXE
    /// compile per host and platform).
    #[arg(long)]
    pub check_make: bool,
}

pub fn ipxe(s: &Settings, a: &IpxeArgs) -> Result<ExitCode> {
    let recipes = s.recipes()?;
    let r = recipes
        .targets
        .get(&a.recipe)
        .with_context(|| format!("no recipe `{}` in {}", a.recipe, s.recipes_dir.display()))?;
    let ipxe = r
        .ipxe
        .as_ref()
        .with_context(|| format!("{} has no [ipxe] section", r.file.display()))?;
    let Some(targets) = ipxe.targets.get(&a.arch) else {
        let arches: Vec<&str> = ipxe.targets.keys().map(|a| a.name()).collect();
        bail!(
            "{} builds no `{}` targets; it has {}",
            r.file.display(),
            a.arch,
            arches.join(", ")
        );
    };
    let combined: Vec<&CombinedRom> = ipxe.combined.iter().filter(|c| c.arch == a.arch).collect();
    check_targets(a, targets, &combined, &r.file)?;
    let asked = |t: &IpxeTarget| a.targets.is_empty() || a.targets.iter().any(|x| t.matches(x));
    let asked_combined = |c: &CombinedRom| a.targets.is_empty() || a.targets.contains(&c.file);
    let hosts = match &a.hosts {
        Some(file) => ipxe.host_files(&recipe::hosts::load(file)?)?,
        None => ipxe.hosts.clone(),
    };
    let hosts: Vec<_> = hosts.into_iter().filter(|h| h.arch == a.arch).collect();
    for name in &a.only {
        if !hosts.iter().any(|h| &h.hostname == name) {
            let names = hosts.iter().map(|h| h.hostname.as_str());
            let hint = recipe::diag::did_you_mean(name, names);
            bail!("`{name}` is not an {} host of the inventory{hint}", a.arch);
        }
    }
    let chosen: Vec<IpxeHost> = hosts
        .into_iter()
        .filter(|h| a.only.is_empty() || a.only.contains(&h.hostname))
        .map(|h| IpxeHost {
            targets: h.targets.iter().filter(|t| asked(t)).cloned().collect(),
            combined: h
                .combined
                .iter()
                .filter(|c| asked_combined(c))
                .cloned()
                .collect(),
            ..h
        })
        .collect();
    let mut wanted = Vec::new();
    if a.hosts.is_none() && a.only.is_empty() {
        let files = targets.iter().filter(|t| asked(t)).map(|t| &t.file);
        let combined = combined
            .iter()
            .filter(|c| asked_combined(c))
            .map(|c| &c.file);
        for file in files.chain(combined) {
            wanted.push(crate::plan::ipxe_artifact(&r.name, a.arch, file));
        }
    }
    for h in &chosen {
        for file in h.files() {
            wanted.push(h.artifact_name(&r.name, file));
        }
    }
    if a.check_make && chosen.is_empty() {
        bail!("--check-make compares hosts' files: give an inventory (--hosts) or use a recipe with `[ipxe] hosts`");
    }
    if wanted.is_empty() {
        bail!("nothing to build: no host of the inventory gets the asked targets");
    }
    if !chosen.is_empty() {
        eprintln!(
            "stage1 files for {} host(s), patched from one {} compile",
            chosen.len(),
            a.arch
        );
    }
    let overrides = Overrides {
        check_make: match a.check_make {
            true => chosen.iter().map(|h| h.hostname.clone()).collect(),
            false => Vec::new(),
        },
        ipxe_hosts: Some((r.name.clone(), chosen)),
    };
    build_targets_with(s, &wanted, &overrides)?;
    Ok(ExitCode::SUCCESS)
}

/// Every `--target` names one of the architecture's targets or combined ROMs.
fn check_targets(
    a: &IpxeArgs,
    targets: &[IpxeTarget],
    combined: &[&CombinedRom],
    recipe: &std::path::Path,
) -> Result<()> {
    if let Some(unknown) = a
        .targets
        .iter()
        .find(|x| !targets.iter().any(|t| t.matches(x)) && !combined.iter().any(|c| &c.file == *x))
    {
        let names: Vec<String> = targets
            .iter()
            .map(|t| t.make_target())
            .chain(combined.iter().map(|c| c.file.clone()))
            .collect();
        bail!(
            "`{unknown}` is not a {} target of {}: it has {}",
            a.arch,
            recipe.display(),
            names.join(", ")
        );
    }
    Ok(())
}
