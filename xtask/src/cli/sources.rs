//! `sources update`: re-pin `deb` sources to apt's current candidates (or
//! record how to fetch the pinned versions); `sources fetch`: bring pinned
//! sources into the store; `sources digest`: the pin of a tree.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;

use super::session::executor;
use super::Settings;
use crate::plan::{self, PlanOptions};
use crate::recipe::pins::{self, DebPin};
use crate::store::Store;
use crate::tools::apt;

#[derive(Debug, Subcommand)]
pub enum SourcesCommand {
    /// Rewrite each `deb` source's version, sha256 and pool path (where the
    /// .deb lives in a Debian archive, for `[mirrors]`) from apt's candidate
    /// (`apt-get update` first for fresh lists); shows what changed.
    Update {
        /// Only these sources (default: all `deb` sources).
        names: Vec<String>,
        /// Keep every pinned version: only record the pool path of each
        /// version apt still offers (its sha256 must match the pin).
        #[arg(long)]
        keep_versions: bool,
        /// Show the changes without writing sources.toml.
        #[arg(long)]
        dry_run: bool,
    },
    /// Fetch pinned sources into the store (default: every source), e.g.
    /// before going offline: through apt, from `[mirrors]` when apt no
    /// longer offers a pinned version, or from the pinned URL.
    Fetch {
        /// Only these sources.
        names: Vec<String>,
    },
    /// Print the `tree_sha256` pin of a source tree (a checkout: modes as
    /// git records them, `.git` left out; or a tarball, unpacked with its top
    /// directory stripped), to pin a `url` tarball whose bytes the server
    /// may regenerate.
    Digest {
        /// The tree's top directory, or a .tar(.gz|.xz|.zst) file.
        path: std::path::PathBuf,
    },
}

pub fn run(s: &Settings, c: &SourcesCommand) -> Result<ExitCode> {
    match c {
        SourcesCommand::Update {
            names,
            keep_versions,
            dry_run,
        } => update(s, names, *keep_versions, *dry_run),
        SourcesCommand::Fetch { names } => fetch(s, names),
        SourcesCommand::Digest { path } => print_digest(s, path),
    }
}

fn update(s: &Settings, names: &[String], keep_versions: bool, dry_run: bool) -> Result<ExitCode> {
    let file = s.recipes_dir.join("sources.toml");
    let mut gone = Vec::new();
    let changes = pins::update_deb_pins(&file, names, dry_run, |name, package, arch, old| {
        let version = keep_versions.then_some(old.version.as_str());
        if let Some(why) = apt::architecture_missing(arch) {
            anyhow::bail!("source `{name}`: {why}");
        }
        // Another architecture's package is asked of apt as `package:arm64`.
        let package = &apt::qualified(package, arch);
        let Some(offered) = apt::show(package, version)? else {
            gone.push(format!("{name} ({package}={})", old.version));
            return Ok(None);
        };
        if keep_versions && offered.sha256 != old.sha256 {
            anyhow::bail!(
                "source `{name}`: apt's {package}={} has sha256 {}, the pin says {}",
                old.version,
                offered.sha256,
                old.sha256
            );
        }
        Ok(Some(DebPin {
            version: offered.version,
            sha256: offered.sha256,
            pool: Some(offered.filename),
        }))
    })
    .with_context(|| format!("updating {}", file.display()))?;
    for c in &changes {
        if c.old.version != c.new.version || c.old.sha256 != c.new.sha256 {
            println!(
                "{}: {} {} -> {}\n    sha256 {} -> {}",
                c.name, c.package, c.old.version, c.new.version, c.old.sha256, c.new.sha256
            );
        }
        if c.old.pool != c.new.pool {
            println!(
                "{}: pool {}",
                c.name,
                c.new.pool.as_deref().unwrap_or("(none)")
            );
        }
    }
    for g in &gone {
        let what = if keep_versions {
            "apt no longer offers this version; left as it is"
        } else {
            "apt offers no version; left as it is"
        };
        println!("{g}: {what}");
    }
    match (changes.len(), dry_run) {
        (0, _) => println!("nothing to change in {}", file.display()),
        (n, false) => println!("{n} source(s) changed in {}", file.display()),
        (_, true) => println!("--dry-run: {} left unchanged", file.display()),
    }
    Ok(ExitCode::SUCCESS)
}

/// `sources fetch`: the named sources (all when none) into the store.
fn fetch(s: &Settings, names: &[String]) -> Result<ExitCode> {
    let recipes = s.recipes()?;
    let store = Store::open(&s.cache_dir)?;
    let opts = PlanOptions {
        source_overrides: s.source_overrides.clone(),
        threads: s.jobs,
        ..PlanOptions::default()
    };
    let plan = plan::plan_sources(&recipes, names, &store, &opts)?;
    let results = executor(s, &store, s.jobs).run(&plan)?;
    for (node, result) in plan.nodes.iter().zip(&results) {
        let state = if result.cached { "cached " } else { "fetched" };
        println!("{state}  {}", node.step.label());
    }
    let fetched = results.iter().filter(|r| !r.cached).count();
    println!(
        "{} source step(s): {fetched} fetched, {} already in the store {}",
        results.len(),
        results.len() - fetched,
        s.cache_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

fn print_digest(s: &Settings, path: &std::path::Path) -> Result<ExitCode> {
    let store = crate::store::Store::open(&s.cache_dir)?;
    let meta =
        fs_err::metadata(path).with_context(|| format!("{} does not exist", path.display()))?;
    let digest = if meta.is_dir() {
        store.put_tree_with(path, crate::store::Modes::GitLike)?
    } else {
        let scratch = store.scratch("digest")?;
        let what = path.display().to_string();
        let top = crate::steps::tarball::unpack_stripped(path, scratch.path(), &what)
            .with_context(|| format!("unpacking {what}"))?;
        store.put_tree_owned_with(&top, crate::store::Modes::GitLike)?
    };
    println!("tree_sha256 = \"{}\"", digest.hex());
    Ok(ExitCode::SUCCESS)
}
