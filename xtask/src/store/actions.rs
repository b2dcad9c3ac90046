//! Action records (a step key and the outputs it made), the key components
//! a step identity last had (for `--explain`), and per-key build locks.

use fs_err::{self as fs, File};
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use super::*;

impl Store {
    pub(super) fn action_path(&self, key: &Digest) -> PathBuf {
        self.root
            .join("actions")
            .join(format!("{}.json", key.hex()))
    }

    /// The record for `key` if present and every output it names is intact.
    /// A record with a missing or corrupt output is removed: a miss.
    pub fn action(&self, key: &Digest) -> Result<Option<ActionRecord>> {
        let path = self.action_path(key);
        let bytes = match fs::read(&path) {
            Ok(b) => b,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e).with_context(|| format!("reading {}", path.display())),
        };
        let record: ActionRecord = match serde_json::from_slice(&bytes) {
            Ok(r) => r,
            Err(e) => {
                tracing::warn!("dropping unreadable action record {}: {e}", path.display());
                let _ = fs::remove_file(&path);
                return Ok(None);
            }
        };
        if record.key != *key {
            tracing::warn!(
                "dropping action record {}: it is the record of another key ({})",
                path.display(),
                record.key.hex()
            );
            let _ = fs::remove_file(&path);
            return Ok(None);
        }
        if let Err(e) = self.check_outputs(&record) {
            tracing::warn!("{e:#}");
            let _ = fs::remove_file(&path);
            return Ok(None);
        }
        mark_used(&path);
        Ok(Some(record))
    }

    /// Whether a record's outputs are still in the store, cheaply: a file
    /// output's blob exists with its size, a tree's manifest exists (the
    /// store writes a manifest only after every blob it names, and `gc`
    /// removes no blob a kept manifest names). Contents are verified when
    /// read (`verified_blob`), which also drops the manifests of a blob
    /// found missing or corrupt. Hashing every output here made a no-op
    /// build hash every cached kernel and ISO.
    pub(super) fn check_outputs(&self, record: &ActionRecord) -> Result<()> {
        for output in record.outputs.values() {
            match output {
                Output::File { digest, size } => {
                    let path = self.blob_path(digest);
                    match fs::metadata(&path) {
                        Ok(m) if m.len() == *size => {}
                        Ok(m) => {
                            let _ = fs::remove_file(&path);
                            self.forget_trees_naming(digest);
                            bail!(
                                "corrupt store entry {}: expected {size} bytes, found {}; it has been removed and will be rebuilt",
                                path.display(),
                                m.len()
                            );
                        }
                        Err(_) => bail!(
                            "store blob {} is missing from {}",
                            digest.short(),
                            self.root.display()
                        ),
                    }
                }
                Output::Tree { digest } if self.has_tree(digest) => {}
                Output::Tree { digest } => bail!(
                    "store tree {} is missing from {}",
                    digest.short(),
                    self.root.display()
                ),
            }
        }
        Ok(())
    }

    /// Remembers the key components `identity` (a step's stable name) had
    /// in its latest build, so the next plan can say what changed.
    pub fn put_last(&self, identity: &str, components: &serde_json::Value) -> Result<()> {
        let path = self.last_path(identity);
        if fs::read(&path)
            .ok()
            .and_then(|b| serde_json::from_slice::<serde_json::Value>(&b).ok())
            .as_ref()
            == Some(components)
        {
            return Ok(());
        }
        let staged = self.stage_bytes(&serde_json::to_vec(components)?)?;
        self.publish(&staged, &path)
    }

    pub fn last(&self, identity: &str) -> Option<serde_json::Value> {
        serde_json::from_slice(&fs::read(self.last_path(identity)).ok()?).ok()
    }

    pub(super) fn last_path(&self, identity: &str) -> PathBuf {
        self.root.join("last").join(format!(
            "{}.json",
            Digest::of_bytes(identity.as_bytes()).hex()
        ))
    }

    pub fn put_action(&self, key: &Digest, record: &ActionRecord) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(record)?;
        let staged = self.stage_bytes(&bytes)?;
        self.publish(&staged, &self.action_path(key))
    }

    /// Holds an exclusive lock on `key` while one process builds it; a second
    /// process waits and then finds the record.
    pub fn lock_key(&self, key: &Digest) -> Result<KeyLock> {
        let path = self.root.join("locks").join(key.hex());
        let file =
            File::create(&path).with_context(|| format!("creating lock {}", path.display()))?;
        file.lock()
            .with_context(|| format!("locking {}", path.display()))?;
        Ok(KeyLock { _file: file })
    }
}

/// Released when dropped (the lock is the open file).
pub struct KeyLock {
    _file: File,
}
