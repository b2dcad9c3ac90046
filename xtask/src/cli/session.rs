//! What the commands that build share: the recipes loaded and planned into
//! a `Session`, the executor that runs a plan, and a `deb` source fetched
//! and unpacked as a build would (boot tests and benchmarks read files of
//! Debian's packages).

use anyhow::{bail, Context, Result};

use super::Settings;
use crate::exec::Executor;
use crate::plan::{self, Plan, PlanOptions};
use crate::recipe::ipxe::IpxeHost;
use crate::store::{Digest, Output, Store};

/// The loaded recipes, the store and the plan for some targets.
pub struct Session {
    pub store: Store,
    pub plan: Plan,
    pub executor_jobs: usize,
}

/// What `cargo xtask ipxe` changes in the loaded recipes and the plan.
#[derive(Debug, Default)]
pub struct Overrides {
    /// A recipe's `[ipxe]` hosts replaced by these (from `--hosts FILE`,
    /// narrowed by `--only` and `--target`).
    pub ipxe_hosts: Option<(String, Vec<IpxeHost>)>,
    /// `--check-make`: these hosts' files also built by a full `make`.
    pub check_make: Vec<String>,
}

/// Loads the recipes and plans `targets`: every recipe or target error, and
/// nothing run.
pub(super) fn check_targets(s: &Settings, targets: &[String]) -> Result<()> {
    session(s, targets).map(|_| ())
}

pub(super) fn session(s: &Settings, targets: &[String]) -> Result<Session> {
    session_with(s, targets, &Overrides::default())
}

pub(super) fn session_with(s: &Settings, targets: &[String], o: &Overrides) -> Result<Session> {
    let mut recipes = s.recipes()?;
    if let Some((name, hosts)) = &o.ipxe_hosts {
        let ipxe = recipes.targets.get_mut(name).and_then(|r| r.ipxe.as_mut());
        ipxe.context("the recipe the hosts are for has no [ipxe]")?
            .hosts = hosts.clone();
    }
    let store = Store::open(&s.cache_dir)?;
    let opts = PlanOptions {
        source_overrides: s.source_overrides.clone(),
        epoch_override: source_date_epoch()?,
        threads: s.jobs,
        ipxe_check_make: o.check_make.clone(),
        signing: s.signing.clone(),
    };
    let plan = plan::plan(&recipes, targets, &store, &opts)?;
    check_signing(s, &plan)?;
    Ok(Session {
        store,
        plan,
        executor_jobs: s.jobs,
    })
}

/// What recipes ask to sign without a key: an error with `--require-signing`, else a warning
/// naming each recipe and kind (the files are built unsigned).
fn check_signing(s: &Settings, plan: &Plan) -> Result<()> {
    if plan.unsigned.is_empty() {
        return Ok(());
    }
    let mut by_recipe: std::collections::BTreeMap<_, Vec<String>> = Default::default();
    for (recipe, kind) in &plan.unsigned {
        by_recipe.entry(recipe).or_default().push(kind.to_string());
    }
    let wanted: Vec<String> = by_recipe
        .iter()
        .map(|(recipe, kinds)| format!("{} ({})", recipe.display(), kinds.join(", ")))
        .collect();
    let wanted = wanted.join("; ");
    if s.require_signing {
        bail!("--require-signing: no signing key is given (--sign-key and --sign-cert, or KILN_SIGN_KEY and KILN_SIGN_CERT), and [signing] asks to sign: {wanted}");
    }
    eprintln!("warning: no signing key given (--sign-key, --sign-cert): building unsigned what [signing] asks to sign: {wanted}");
    Ok(())
}

fn source_date_epoch() -> Result<Option<u64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => v
            .trim()
            .parse()
            .map(Some)
            .with_context(|| format!("SOURCE_DATE_EPOCH=`{v}` is not a number of seconds")),
        _ => Ok(None),
    }
}

pub(super) fn executor<'a>(s: &'a Settings, store: &'a Store, jobs: usize) -> Executor<'a> {
    Executor {
        store,
        jobs,
        log_dir: s.output_dir.join(crate::layout::LOGS),
        quiet: s.quiet,
        remote: s.remote.as_deref(),
    }
}

/// The unpacked tree of a `deb` source, fetched and cached as a build
/// would: the store it lives in and the tree's digest.
pub(super) fn deb_tree_digest(s: &Settings, source: &str) -> Result<(Store, Digest)> {
    let recipes = s.recipes()?;
    let store = Store::open(&s.cache_dir)?;
    let opts = PlanOptions {
        source_overrides: s.source_overrides.clone(),
        epoch_override: None,
        threads: s.jobs,
        ..PlanOptions::default()
    };
    let plan = plan::plan_deb_tree(&recipes, source, &store, &opts)?;
    let results = executor(s, &store, s.jobs).run(&plan)?;
    match results.last().and_then(|r| r.outputs.get("tree")) {
        Some(Output::Tree { digest }) => Ok((store, *digest)),
        _ => bail!("unpacking source `{source}` produced no tree"),
    }
}
