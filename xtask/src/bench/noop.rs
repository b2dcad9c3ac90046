//! `bench noop`: how long Kiln takes to decide that nothing needs building.
//! Runs Kiln itself (this executable) on the given targets: one build to
//! make sure everything is built, then no-op builds with the stat caches
//! (local inputs and `output/` trusted by size, mtime and inode) and with
//! `KILN_STAT_CACHE=off` (every local input and installed artifact hashed
//! from scratch, as before the stat caches).

use std::fmt::Write as _;
use std::path::Path;

use anyhow::Result;

const RUNS: usize = 7;

pub struct Setup<'a> {
    pub recipes: &'a Path,
    pub cache: &'a Path,
    pub output: &'a Path,
    pub sources: &'a [(String, std::path::PathBuf)],
    pub targets: &'a [String],
}

fn build(s: &Setup, stat_cache: bool) -> Result<f64> {
    let mut cmd = super::xtask()?;
    cmd.arg("--recipes")
        .arg(s.recipes)
        .arg("--cache")
        .arg(s.cache)
        .arg("--output")
        .arg(s.output)
        .arg("-q");
    for (name, path) in s.sources {
        cmd.arg("--source")
            .arg(format!("{name}={}", path.display()));
    }
    cmd.arg("build").args(s.targets);
    if !stat_cache {
        cmd.env("KILN_STAT_CACHE", "off");
    }
    super::time_run("xtask build", cmd)
}

/// Minimum and median of `RUNS` timings.
fn timed(what: &str, f: impl Fn() -> Result<f64>) -> Result<(f64, f64)> {
    eprintln!("bench noop: {what}…");
    let mut t = (0..RUNS).map(|_| f()).collect::<Result<Vec<f64>>>()?;
    t.sort_by(f64::total_cmp);
    Ok((t[0], t[RUNS / 2]))
}

pub fn run(s: &Setup) -> Result<String> {
    eprintln!(
        "bench noop: building {} (once, if needed)…",
        s.targets.join(" ")
    );
    build(s, true)?;
    let with = timed("no-op builds with the stat caches", || build(s, true))?;
    let without = timed("no-op builds hashing from scratch", || build(s, false))?;
    let mut out = format!(
        "`build {}`, everything cached, {RUNS} runs each (whole process)\n\n| no-op build | min s | median s | median / from scratch |\n|---|---:|---:|---:|\n",
        s.targets.join(" ")
    );
    for (what, (min, median)) in [
        (
            "stat caches (local inputs and output/ trusted by size, mtime, inode)",
            with,
        ),
        (
            "KILN_STAT_CACHE=off (every local input and artifact hashed)",
            without,
        ),
    ] {
        let _ = writeln!(
            out,
            "| {what} | {min:.3} | {median:.3} | {:.3} |",
            median / without.1
        );
    }
    Ok(out)
}
