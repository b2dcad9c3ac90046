//! `output/manifest.json`: every artifact's digest, size, recipe, step key
//! and inputs. Deterministic: artifacts sorted by name, no clock.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::store::Digest;

pub const SCHEMA: u32 = 1;

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Manifest {
    pub schema: u32,
    pub kiln_version: String,
    pub source_date_epoch: u64,
    pub artifacts: Vec<Artifact>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Artifact {
    pub name: String,
    pub path: String,
    pub kind: String,
    pub arch: String,
    pub sha256: Digest,
    pub size: u64,
    pub recipe: String,
    pub step_key: Digest,
    pub inputs: BTreeMap<String, Digest>,
    /// Kind-specific facts, e.g. the modules and firmware in a module archive.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub details: Option<serde_json::Value>,
}

impl Manifest {
    /// Reads an existing manifest; a missing or unreadable one is empty (it
    /// is rewritten whole on every build).
    pub fn read_or_empty(path: &Path) -> Manifest {
        fs_err::read(path)
            .ok()
            .and_then(|b| serde_json::from_slice::<Manifest>(&b).ok())
            .filter(|m| m.schema == SCHEMA)
            .unwrap_or_else(|| Manifest::new(0))
    }

    pub fn new(epoch: u64) -> Manifest {
        Manifest {
            schema: SCHEMA,
            kiln_version: env!("CARGO_PKG_VERSION").into(),
            source_date_epoch: epoch,
            artifacts: Vec::new(),
        }
    }

    /// Adds or replaces artifacts by name, keeping the list sorted.
    pub fn merge(&mut self, artifacts: Vec<Artifact>) {
        let mut by_name: BTreeMap<String, Artifact> = self
            .artifacts
            .drain(..)
            .map(|a| (a.name.clone(), a))
            .collect();
        for a in artifacts {
            by_name.insert(a.name.clone(), a);
        }
        self.artifacts = by_name.into_values().collect();
        self.kiln_version = env!("CARGO_PKG_VERSION").into();
    }

    pub fn to_bytes(&self) -> Vec<u8> {
        let mut bytes = serde_json::to_vec_pretty(self).expect("manifest serializes");
        bytes.push(b'\n');
        bytes
    }

    /// Writes through a temporary file and a rename.
    pub fn write(&self, path: &Path) -> Result<()> {
        let dir = path.parent().unwrap_or(Path::new("."));
        self.write_via(path, dir)
    }

    /// Writes through a temporary file in `staging` (on the same file
    /// system) and a rename.
    pub fn write_via(&self, path: &Path, staging: &Path) -> Result<()> {
        let dir = staging;
        fs_err::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let tmp = tempfile::NamedTempFile::new_in(dir)
            .with_context(|| format!("creating a file in {}", dir.display()))?;
        fs_err::write(tmp.path(), self.to_bytes())
            .with_context(|| format!("writing {}", tmp.path().display()))?;
        // Readable like the artifacts it names (a temporary file is 0600).
        fs_err::set_permissions(
            tmp.path(),
            std::os::unix::fs::PermissionsExt::from_mode(0o644),
        )?;
        tmp.persist(path)
            .with_context(|| format!("renaming into place {}", path.display()))?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn artifact(name: &str) -> Artifact {
        Artifact {
            name: name.into(),
            path: name.into(),
            kind: "initramfs".into(),
            arch: "x86_64".into(),
            sha256: Digest::of_bytes(name.as_bytes()),
            size: 1,
            recipe: "recipes/x.toml".into(),
            step_key: Digest::of_bytes(b"k"),
            inputs: BTreeMap::new(),
            details: None,
        }
    }

    #[test]
    fn merge_replaces_by_name_and_keeps_order() {
        let mut m = Manifest::new(1);
        m.merge(vec![artifact("b"), artifact("a")]);
        let mut newer = artifact("a");
        newer.size = 2;
        m.merge(vec![newer]);
        let names: Vec<_> = m
            .artifacts
            .iter()
            .map(|a| (a.name.as_str(), a.size))
            .collect();
        assert_eq!(names, [("a", 2), ("b", 1)]);
    }
}
