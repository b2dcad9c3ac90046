//! Fetching pinned sources into the store: Debian packages through the
//! machine's apt configuration, and URLs over HTTPS.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::{Step, StepContext};
use crate::store::{Digest, Output};
use crate::tools;

/// A pinned digest did not match what was fetched. Nothing is stored.
#[derive(Debug, thiserror::Error)]
#[error("checksum mismatch for source `{source_name}` ({what}): expected sha256 {expected}, got {actual}; nothing was stored. If the new file is trusted, run `cargo xtask sources update`.")]
pub struct ChecksumMismatch {
    pub source_name: String,
    pub what: String,
    pub expected: String,
    pub actual: String,
}

/// `apt-get download PACKAGE=VERSION`, verified against the pinned sha256.
#[derive(Debug, Clone, Serialize)]
pub struct FetchDeb {
    pub source: String,
    pub package: String,
    pub version: String,
    pub sha256: String,
}

impl Step for FetchDeb {
    fn kind(&self) -> &'static str {
        "fetch-deb"
    }
    fn version(&self) -> u32 {
        1
    }
    fn label(&self) -> String {
        format!("fetch {}={}", self.package, self.version)
    }
    fn params(&self) -> serde_json::Value {
        // The source's name is for messages only: renaming it must not refetch.
        serde_json::json!({ "package": self.package, "version": self.version, "sha256": self.sha256 })
    }

    fn run(&self, ctx: &StepContext, scratch: &Path) -> Result<BTreeMap<String, Output>> {
        let mut cmd = tools::command("apt-get")?;
        cmd.current_dir(scratch)
            .arg("download")
            .arg(format!("{}={}", self.package, self.version));
        tools::run_logged(cmd, &ctx.log(&format!("fetch-{}", self.source))).with_context(|| {
            format!(
                "downloading source `{}` (is `{}` version {} still offered by apt? `apt-cache policy {}` tells; `cargo xtask sources update` re-pins)",
                self.source, self.package, self.version, self.package
            )
        })?;
        let deb = single_deb(scratch)?;
        let output = store_verified(
            ctx,
            &deb,
            &self.source,
            &self.sha256,
            &format!("{}={}", self.package, self.version),
        )?;
        Ok(BTreeMap::from([("file".to_string(), output)]))
    }
}

fn single_deb(dir: &Path) -> Result<std::path::PathBuf> {
    let mut debs = Vec::new();
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "deb") {
            debs.push(path);
        }
    }
    match debs.len() {
        1 => Ok(debs.remove(0)),
        n => bail!(
            "apt-get download left {n} .deb files in {}, expected one",
            dir.display()
        ),
    }
}

/// Hashes `file`; stores it only when it matches the pin.
pub fn store_verified(
    ctx: &StepContext,
    file: &Path,
    source: &str,
    expected: &str,
    what: &str,
) -> Result<Output> {
    let (actual, size) = Digest::of_file(file)?;
    if actual.hex() != expected {
        return Err(ChecksumMismatch {
            source_name: source.to_string(),
            what: what.to_string(),
            expected: expected.to_string(),
            actual: actual.hex(),
        }
        .into());
    }
    let (digest, _) = ctx.store.put_file(file)?;
    Ok(Output::File { digest, size })
}
