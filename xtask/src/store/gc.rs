//! `gc`: action records unused for a while, then every tree and blob no
//! remaining record reaches, stat caches of directories that are gone, and
//! scratch left by killed builds.

use fs_err as fs;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::*;

/// What `gc` removed and kept.
#[derive(Debug, Default)]
pub struct GcReport {
    pub actions: usize,
    pub trees: usize,
    pub blobs: usize,
    pub scratch: usize,
    /// Stat caches of local directories that no longer exist.
    pub stat: usize,
    pub freed: u64,
    pub kept: u64,
}

impl Store {
    /// Removes action records not used for `max_age` (when given), then every
    /// tree and blob that no remaining record reaches, stat caches of
    /// directories that are gone, and leftover scratch directories of
    /// killed builds. Holds the store-wide lock exclusively.
    pub fn gc(&self, max_age: Option<std::time::Duration>) -> Result<GcReport> {
        // flock converts this handle's shared lock: waits for other builds.
        self.lock.lock().context("locking the store for gc")?;
        let mut report = GcReport::default();
        let mut live_trees = std::collections::BTreeSet::new();
        let mut live_blobs = std::collections::BTreeSet::new();
        for path in list_files(&self.root.join("actions"))? {
            let old = max_age.is_some_and(|age| {
                fs::metadata(&path)
                    .and_then(|m| m.modified())
                    .ok()
                    .and_then(|t| t.elapsed().ok())
                    .is_some_and(|e| e > age)
            });
            let record = fs::read(&path)
                .ok()
                .and_then(|b| serde_json::from_slice::<ActionRecord>(&b).ok());
            match record {
                Some(r) if !old => {
                    for o in r.outputs.values() {
                        match o {
                            Output::File { digest, .. } => {
                                live_blobs.insert(*digest);
                            }
                            Output::Tree { digest } => {
                                live_trees.insert(*digest);
                                if let Ok(t) = self.tree(digest) {
                                    live_blobs.extend(t.files().map(|(_, d, _)| *d));
                                }
                            }
                        }
                    }
                }
                _ => report.actions += remove(&path, &mut report.freed),
            }
        }
        for path in list_files(&self.root.join("trees"))? {
            let live = digest_of_name(&path).is_some_and(|d| live_trees.contains(&d));
            if !live {
                report.trees += remove(&path, &mut report.freed);
            }
        }
        for dir in list_files(&self.root.join("blobs"))? {
            for path in list_files(&dir)? {
                let live = digest_of_name(&path).is_some_and(|d| live_blobs.contains(&d));
                if live {
                    report.kept += fs::metadata(&path).map(|m| m.len()).unwrap_or(0);
                } else {
                    report.blobs += remove(&path, &mut report.freed);
                }
            }
        }
        if let Ok(paths) = list_files(&self.root.join("stat")) {
            for path in paths.iter().filter(|p| statcache::is_stale(p)) {
                report.stat += remove(path, &mut report.freed);
            }
        }
        for path in list_files(&self.root.join("tmp"))? {
            let _ = if path.is_dir() {
                fs::remove_dir_all(&path)
            } else {
                fs::remove_file(&path)
            };
            report.scratch += 1;
        }
        Ok(report)
    }
}

/// A record's mtime is when it was last used: `gc --keep-days` drops the
/// ones no build has looked up for that long. Touched at most hourly so a
/// no-op build writes nothing; a read-only store simply stays as it is.
pub(super) fn mark_used(path: &Path) {
    const HOUR: std::time::Duration = std::time::Duration::from_secs(3600);
    let stale = fs::metadata(path)
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age > HOUR);
    if stale {
        // A read-only handle: records are 0444, and times need ownership.
        let _ = File::open(path).and_then(|f| f.set_modified(std::time::SystemTime::now()));
    }
}

pub(super) fn list_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for e in fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        out.push(e?.path());
    }
    out.sort();
    Ok(out)
}

pub(super) fn digest_of_name(path: &Path) -> Option<Digest> {
    path.file_name()?
        .to_str()?
        .trim_end_matches(".json")
        .parse()
        .ok()
}

pub(super) fn remove(path: &Path, freed: &mut u64) -> usize {
    let size = fs::metadata(path).map(|m| m.len()).unwrap_or(0);
    match fs::remove_file(path) {
        Ok(()) => {
            *freed += size;
            1
        }
        Err(_) => 0,
    }
}
