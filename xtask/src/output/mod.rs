//! Everything written under `output/`: artifacts copied out of the store
//! (temp file + rename), then `manifest.json` (`manifest.rs`), last, so it
//! never names a file that is not in place.

pub mod manifest;

use std::path::Path;

use anyhow::{bail, Result};

use crate::exec::NodeResult;
use crate::plan::Plan;
use crate::store::{Digest, Output, Store};
use manifest::{Artifact, Manifest};

/// Copies each artifact out of the store (temp file + rename) and rewrites
/// the manifest last, so it never names a file that is not in place.
pub fn install(
    output_dir: &Path,
    store: &Store,
    plan: &Plan,
    results: &[NodeResult],
) -> Result<Vec<Artifact>> {
    let mut artifacts = Vec::new();
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
            store.copy_blob_to(&digest, &dest, 0o644)?;
            if let Ok(m) = dest.metadata() {
                in_place.record(&spec.name, &m, digest);
            }
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
    let manifest_path = output_dir.join("manifest.json");
    let mut manifest = Manifest::read_or_empty(&manifest_path);
    manifest.source_date_epoch = plan.artifacts.iter().map(|a| a.epoch).max().unwrap_or(0);
    manifest.merge(artifacts.clone());
    manifest.write(&manifest_path)?;
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
