//! `sources update`: re-pin `deb` sources to apt's current candidates.

use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::Subcommand;

use super::Settings;
use crate::tools;

#[derive(Debug, Subcommand)]
pub enum SourcesCommand {
    /// Rewrite each `deb` source's version and sha256 from apt's candidate
    /// (`apt-get update` first for fresh lists); shows what changed.
    Update {
        /// Only these sources (default: all `deb` sources).
        names: Vec<String>,
        /// Show the changes without writing sources.toml.
        #[arg(long)]
        dry_run: bool,
    },
    /// Print the `tree_sha256` pin of an unpacked source tree (a checkout:
    /// modes as git records them, `.git` left out), to pin a `url` tarball
    /// whose bytes the server may regenerate.
    Digest {
        /// The tree's top directory.
        dir: std::path::PathBuf,
    },
}

pub fn run(s: &Settings, c: &SourcesCommand) -> Result<ExitCode> {
    let (names, dry_run) = match c {
        SourcesCommand::Update { names, dry_run } => (names, dry_run),
        SourcesCommand::Digest { dir } => return print_digest(s, dir),
    };
    let file = s.recipes_dir.join("sources.toml");
    let text =
        std::fs::read_to_string(&file).with_context(|| format!("reading {}", file.display()))?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("parsing {}", file.display()))?;
    let mut changes = 0;
    for (name, item) in doc.as_table_mut().iter_mut() {
        let Some(table) = item.as_table_like_mut() else {
            continue;
        };
        let Some(package) = table
            .get("deb")
            .and_then(|v| v.as_str())
            .map(str::to_string)
        else {
            continue;
        };
        if !names.is_empty() && !names.iter().any(|n| n.as_str() == name.get()) {
            continue;
        }
        let (version, sha256) = candidate(&package)?;
        let old_version = table
            .get("version")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string();
        let old_sha = table
            .get("sha256")
            .and_then(|v| v.as_str())
            .unwrap_or("")
            .to_string();
        if old_version == version && old_sha == sha256 {
            println!("{name}: {package} {version} (unchanged)");
            continue;
        }
        println!("{name}: {package} {old_version} -> {version}\n    sha256 {old_sha} -> {sha256}");
        table.insert("version", toml_edit::value(version));
        table.insert("sha256", toml_edit::value(sha256));
        changes += 1;
    }
    if changes > 0 && !dry_run {
        let tmp = tempfile::NamedTempFile::new_in(&s.recipes_dir)?;
        std::fs::write(tmp.path(), doc.to_string())?;
        tmp.persist(&file)
            .with_context(|| format!("writing {}", file.display()))?;
        println!("{changes} source(s) re-pinned in {}", file.display());
    } else if changes > 0 {
        println!("--dry-run: {} left unchanged", file.display());
    } else {
        println!("every source is already pinned to apt's candidate");
    }
    Ok(ExitCode::SUCCESS)
}

/// apt's candidate version of `package` and that version's sha256.
fn candidate(package: &str) -> Result<(String, String)> {
    let mut cmd = tools::command("apt-cache")?;
    cmd.args(["show", "--no-all-versions", package]);
    let out = tools::capture(cmd)
        .with_context(|| format!("asking apt about `{package}` (run `apt-get update` first?)"))?;
    let field = |name: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
            .with_context(|| format!("`apt-cache show {package}` printed no {name} line"))
    };
    Ok((field("Version:")?, field("SHA256:")?))
}

fn print_digest(s: &Settings, dir: &std::path::Path) -> Result<ExitCode> {
    if !dir.is_dir() {
        anyhow::bail!("{} is not a directory", dir.display());
    }
    let store = crate::store::Store::open(&s.cache_dir)?;
    let digest = store.put_tree_with(dir, crate::store::Modes::GitLike)?;
    println!("tree_sha256 = \"{}\"", digest.hex());
    Ok(ExitCode::SUCCESS)
}
