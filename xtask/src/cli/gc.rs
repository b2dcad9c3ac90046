//! `gc`: drop store entries that no kept action record references, and
//! stat caches of directories that are gone.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use super::Settings;
use crate::store::Store;
use crate::tools::human_bytes as human;

#[derive(Debug, Args)]
pub struct GcArgs {
    /// Also drop action records not used for this many days (default: keep all records).
    #[arg(long, value_name = "DAYS")]
    pub keep_days: Option<u64>,
}

pub fn gc(s: &Settings, a: &GcArgs) -> Result<ExitCode> {
    let store = Store::open(&s.cache_dir)?;
    let report = store.gc(a
        .keep_days
        .map(|d| std::time::Duration::from_secs(d * 86_400)))?;
    println!(
        "removed {} action records, {} trees, {} blobs, {} stat caches, {} scratch dirs: freed {}; the store now holds {}",
        report.actions, report.trees, report.blobs, report.stat, report.scratch, human(report.freed), human(report.kept)
    );
    Ok(ExitCode::SUCCESS)
}
