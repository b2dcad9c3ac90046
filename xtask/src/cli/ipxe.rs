//! `cargo xtask ipxe --arch …`: the stage1 recipe's iPXE targets for one
//! architecture, built as artifacts `stage1/<arch>/<file>`.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::build::build_targets;
use super::Settings;
use crate::recipe;

#[derive(Debug, Args)]
pub struct IpxeArgs {
    /// `x86_64` or `arm64` (arm64 cross-compiles with aarch64-linux-gnu-gcc).
    #[arg(long, default_value = "x86_64")]
    pub arch: String,
    /// Only these targets, as the recipe names them (`bin/ipxe.lkrn`) or by
    /// file (`ipxe.lkrn`); repeatable. Default: all of the architecture's.
    #[arg(long = "target", value_name = "TARGET")]
    pub targets: Vec<String>,
    /// The recipe with the `[ipxe]` section.
    #[arg(long, default_value = "stage1")]
    pub recipe: String,
}

pub fn ipxe(s: &Settings, a: &IpxeArgs) -> Result<ExitCode> {
    let recipes = recipe::load(&s.recipes_dir, &s.vars)?;
    let r = recipes
        .targets
        .get(&a.recipe)
        .with_context(|| format!("no recipe `{}` in {}", a.recipe, s.recipes_dir.display()))?;
    let ipxe = r
        .ipxe
        .as_ref()
        .with_context(|| format!("{} has no [ipxe] section", r.file.display()))?;
    let Some(targets) = ipxe.targets.get(&a.arch) else {
        let arches: Vec<&str> = ipxe.targets.keys().map(String::as_str).collect();
        bail!(
            "{} builds no `{}` targets; it has {}",
            r.file.display(),
            a.arch,
            arches.join(", ")
        );
    };
    let mut wanted = Vec::new();
    for t in targets {
        let asked = a.targets.is_empty()
            || a.targets
                .iter()
                .any(|x| *x == t.make_target() || *x == t.file);
        if asked {
            wanted.push(crate::plan::ipxe_artifact(&r.name, &a.arch, &t.file));
        }
    }
    if let Some(unknown) = a.targets.iter().find(|x| {
        !targets
            .iter()
            .any(|t| **x == t.make_target() || **x == t.file)
    }) {
        let names: Vec<String> = targets.iter().map(|t| t.make_target()).collect();
        bail!(
            "`{unknown}` is not a {} target of {}: it has {}",
            a.arch,
            r.file.display(),
            names.join(", ")
        );
    }
    build_targets(s, &wanted)?;
    Ok(ExitCode::SUCCESS)
}
