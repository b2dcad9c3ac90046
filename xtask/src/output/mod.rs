//! Everything written under `output/`: artifacts copied out of the store,
//! and `manifest.json` (`manifest.rs`), so that at every instant each file
//! the manifest names has the manifest's sha256, whatever fails or is
//! killed:
//!
//! 1. one build at a time: `OutputLock` (`.kiln-lock`) is held for the
//!    whole build, and a second build waits, saying for what;
//! 2. every artifact that changes is first copied into `.kiln-staging/`
//!    (a full disk fails here, with `output/` untouched);
//! 3. the manifest is rewritten without the entries of those artifacts;
//! 4. the staged files are renamed into place;
//! 5. the full manifest is written, and the staging directory removed.
//!
//! A kill between 3 and 5 leaves a manifest naming only files it vouches
//! for; the next build removes what is left in `.kiln-staging/` and
//! installs again.

pub mod manifest;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::exec::NodeResult;
use crate::layout::{LOCK, MANIFEST, STAGING};
use crate::plan::Plan;
use crate::store::{Digest, Output, Store};
use manifest::{Artifact, Manifest};

/// The exclusive right to write an output directory, held for a build.
pub struct OutputLock {
    _file: std::fs::File,
    dir: PathBuf,
}

impl OutputLock {
    /// Locks `output_dir` (created if missing); when another build holds
    /// it, says so and waits for it.
    pub fn acquire(output_dir: &Path) -> Result<OutputLock> {
        fs_err::create_dir_all(output_dir)?;
        let path = output_dir.join(LOCK);
        let file = fs_err::OpenOptions::new()
            .create(true)
            .truncate(false)
            .read(true)
            .write(true)
            .open(&path)?
            .into_file();
        match file.try_lock() {
            Ok(()) => {}
            Err(std::fs::TryLockError::WouldBlock) => {
                let holder = fs_err::read_to_string(&path).unwrap_or_default();
                eprintln!(
                    "waiting for another build into {} to finish (it holds {}{})",
                    output_dir.display(),
                    path.display(),
                    match holder.trim() {
                        "" => String::new(),
                        pid => format!(", pid {pid}"),
                    }
                );
                file.lock()
                    .with_context(|| format!("locking {}", path.display()))?;
            }
            Err(std::fs::TryLockError::Error(e)) => {
                return Err(e).with_context(|| format!("locking {}", path.display()))
            }
        }
        file.set_len(0)?;
        std::io::Write::write_all(&mut &file, format!("{}\n", std::process::id()).as_bytes())?;
        Ok(OutputLock {
            _file: file,
            dir: output_dir.to_path_buf(),
        })
    }
}

/// Installs each artifact (staged, then renamed into place) and the
/// manifest, in the order the module comment gives.
pub fn install(
    lock: &OutputLock,
    store: &Store,
    plan: &Plan,
    results: &[NodeResult],
) -> Result<Vec<Artifact>> {
    let output_dir = lock.dir.as_path();
    let staging = output_dir.join(STAGING);
    // What a killed build left.
    if staging.exists() {
        fs_err::remove_dir_all(&staging)?;
    }
    fs_err::create_dir_all(&staging)?;
    let result = install_staged(output_dir, &staging, store, plan, results);
    let _ = fs_err::remove_dir_all(&staging);
    result
}

fn install_staged(
    output_dir: &Path,
    staging: &Path,
    store: &Store,
    plan: &Plan,
    results: &[NodeResult],
) -> Result<Vec<Artifact>> {
    let mut artifacts = Vec::new();
    // (staged copy, artifact name, digest)
    let mut staged: Vec<(PathBuf, &str, Digest)> = Vec::new();
    // A no-op build finds every artifact in place by its size, mtime and
    // inode instead of hashing it again.
    let mut in_place = store.stat_cache(output_dir);
    for spec in &plan.artifacts {
        let r = &results[spec.node];
        let (digest, size) = match r.outputs.get(&spec.output) {
            Some(Output::File { digest, size }) => (*digest, *size),
            _ => bail!("step for {} produced no file `{}`", spec.name, spec.output),
        };
        let dest = output_dir.join(&spec.name);
        // Stat before hashing: an edit during the hash changes the stat,
        // so what is recorded never vouches for bytes that were not hashed.
        let before = dest.metadata().ok();
        let known = before.as_ref().and_then(|m| in_place.lookup(&spec.name, m));
        if known.map(|(d, _)| d) == Some(digest) || already_in_place(&dest, &digest) {
            let after = dest.metadata().ok();
            if let (Some(b), Some(a)) = (&before, &after) {
                if same_file_state(b, a) {
                    in_place.record(&spec.name, a, digest);
                }
            }
        } else {
            let copy = staging.join(staged.len().to_string());
            store
                .copy_blob_to(&digest, &copy, 0o644)
                .with_context(|| format!("staging {} in {}", spec.name, staging.display()))?;
            staged.push((copy, &spec.name, digest));
        }
        artifacts.push(Artifact {
            name: spec.name.clone(),
            path: spec.name.clone(),
            kind: spec.kind.to_string(),
            arch: spec.arch.to_string(),
            sha256: digest,
            size,
            recipe: recipe_display(&spec.recipe),
            step_key: r.key,
            inputs: r.components.inputs.clone(),
            details: with_facts(details(store, r, spec.details)?, &spec.facts),
        });
        warn_missing_firmware(artifacts.last().expect("just pushed"));
    }
    let manifest_path = output_dir.join(MANIFEST);
    let mut manifest = Manifest::read_or_empty(&manifest_path);
    if !staged.is_empty() {
        // While files are replaced, the manifest names none of them.
        let replaced: std::collections::BTreeSet<&str> =
            staged.iter().map(|(_, name, _)| *name).collect();
        manifest
            .artifacts
            .retain(|a| !replaced.contains(a.name.as_str()));
        manifest.write_via(&manifest_path, staging)?;
        for (copy, name, digest) in &staged {
            let dest = output_dir.join(name);
            if let Some(dir) = dest.parent() {
                fs_err::create_dir_all(dir)?;
            }
            fs_err::rename(copy, &dest)?;
            if let Ok(m) = dest.metadata() {
                in_place.record(name, &m, *digest);
            }
        }
    }
    manifest.source_date_epoch = plan.artifacts.iter().map(|a| a.epoch).max().unwrap_or(0);
    manifest.merge(artifacts.clone());
    manifest.write_via(&manifest_path, staging)?;
    in_place.save();
    Ok(artifacts)
}

/// Said on every build, cached or not: the manifest keeps the full list.
fn warn_missing_firmware(a: &Artifact) {
    let Some(missing) = a
        .details
        .as_ref()
        .and_then(|d| d["firmware_missing"].as_array())
    else {
        return;
    };
    if missing.is_empty() {
        return;
    }
    let names: Vec<&str> = missing.iter().filter_map(|m| m.as_str()).collect();
    let shown = names.iter().take(8).copied().collect::<Vec<_>>().join(", ");
    let more = if names.len() > 8 {
        format!(" and {} more", names.len() - 8)
    } else {
        String::new()
    };
    eprintln!(
        "warning: {}: {} firmware file(s) not found in the firmware sources (all listed in the manifest): {shown}{more}",
        a.name,
        names.len()
    );
}

/// The JSON a step left beside an artifact for the manifest.
fn details(
    store: &Store,
    r: &NodeResult,
    output: Option<&str>,
) -> Result<Option<serde_json::Value>> {
    let Some(name) = output else { return Ok(None) };
    match r.outputs.get(name) {
        Some(Output::File { digest, .. }) => {
            Ok(Some(serde_json::from_slice(&store.read_blob(digest)?)?))
        }
        _ => bail!("step produced no `{name}` output"),
    }
}

/// `details` with plan-time `facts` added (facts win on a name clash).
fn with_facts(
    details: Option<serde_json::Value>,
    facts: &Option<serde_json::Value>,
) -> Option<serde_json::Value> {
    match (details, facts) {
        (Some(serde_json::Value::Object(mut d)), Some(serde_json::Value::Object(f))) => {
            d.extend(f.clone());
            Some(serde_json::Value::Object(d))
        }
        (d, None) => d,
        (_, f) => f.clone(),
    }
}

/// Size, mtime and inode unchanged between two stats.
fn same_file_state(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.len() == b.len()
        && a.mtime() == b.mtime()
        && a.mtime_nsec() == b.mtime_nsec()
        && a.ino() == b.ino()
}

fn already_in_place(dest: &Path, digest: &Digest) -> bool {
    dest.is_file()
        && Digest::of_file(dest)
            .map(|(d, _)| d == *digest)
            .unwrap_or(false)
}

/// `recipes/stage2.toml`: the recipe's path relative to the workspace, never absolute.
fn recipe_display(p: &Path) -> String {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("recipes/{name}")
}
