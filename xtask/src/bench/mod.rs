//! Benchmarks against the tools an operator would otherwise use.
//!
//! Developer tooling, not build steps: they spawn `sh`, `cpio`, `gzip`,
//! `pigz` and `zstd` directly, because their whole point is to time those
//! programs. Results are ratios; docs/BENCHMARKS.md records them.

// Timing a command as an operator types it is the point (clippy.toml).
#![allow(clippy::disallowed_methods)]

pub mod archive;
pub mod fleet;
pub mod fuzz;
pub mod ipxe;
pub mod kernel;
pub mod modules;
pub mod noop;
pub mod remote;
pub mod sign;

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Context, Result};

/// One measured way of packing the tree.
pub struct Row {
    pub tool: String,
    pub seconds: f64,
    pub bytes: u64,
    /// Index of the Kiln row this one is compared with.
    pub reference: usize,
}

/// Times `<lister> | LC_ALL=C sort | cpio -o -H newc | <compressor>` run in `dir`.
pub fn shell(
    dir: &Path,
    lister: &str,
    out: &Path,
    name: &str,
    compressor: &str,
    reference: usize,
) -> Result<Row> {
    let script = format!(
        "set -e; {lister} | LC_ALL=C sort | cpio -o -H newc --quiet | {compressor} > '{}'; sync '{}'",
        out.display(),
        out.display()
    );
    let start = Instant::now();
    let status = Command::new("sh")
        .arg("-c")
        .arg(&script)
        .current_dir(dir)
        .status()
        .with_context(|| format!("running {script}"))?;
    let seconds = start.elapsed().as_secs_f64();
    ensure!(status.success(), "{script} failed: {status}");
    Ok(Row {
        tool: name.to_string(),
        seconds,
        bytes: size_of(out)?,
        reference,
    })
}

/// This executable, to time Kiln itself as an operator runs it.
pub fn xtask() -> Result<Command> {
    let exe = std::env::current_exe().context("finding the xtask executable")?;
    Ok(Command::new(exe))
}

/// Runs `cmd` to completion, returning the seconds it took; fails with its
/// stderr.
pub fn time_run(what: &str, mut cmd: Command) -> Result<f64> {
    let start = Instant::now();
    let out = cmd.output().with_context(|| format!("running {what}"))?;
    let seconds = start.elapsed().as_secs_f64();
    ensure!(
        out.status.success(),
        "{what} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(seconds)
}

pub fn size_of(path: &Path) -> Result<u64> {
    Ok(fs_err::metadata(path)
        .with_context(|| format!("stat {}", path.display()))?
        .len())
}

pub fn table(rows: &[Row]) -> String {
    let mut s = String::from(
        "| tool | seconds | MB | time / Kiln | size / Kiln | compared with |\n|---|---:|---:|---:|---:|---|\n",
    );
    for row in rows {
        let base = &rows[row.reference];
        let _ = writeln!(
            s,
            "| {} | {:.1} | {:.1} | {:.2} | {:.4} | {} |",
            row.tool.replace('|', "\\|"),
            row.seconds,
            row.bytes as f64 / 1e6,
            row.seconds / base.seconds,
            row.bytes as f64 / base.bytes as f64,
            base.tool.replace('|', "\\|")
        );
    }
    s
}
