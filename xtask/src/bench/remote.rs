//! `bench publish` and `bench remote-cache`: what object storage costs and
//! saves. Both run Kiln itself (this executable) as an operator would, in
//! a fresh prefix under the given URL (`bench-<id>`) so nothing from an
//! earlier run is found.
//!
//! - publish: the built `output/` published twice as the same version: the
//!   first run uploads every object, the re-run finds them all and sends
//!   nothing.
//! - remote-cache: three builds of a target, each from an empty local
//!   store: without a remote cache, with an empty one (building and
//!   uploading everything), and with the now-full one (every step fetched).

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Context, Result};

/// A prefix no earlier run used.
fn fresh(url: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default();
    format!(
        "{}/bench-{}-{nanos}",
        url.trim_end_matches('/'),
        std::process::id()
    )
}

/// Runs this executable with `args`, returning seconds.
fn timed(what: &str, args: &[&str]) -> Result<f64> {
    eprintln!("bench: {what}…");
    let mut cmd = super::xtask()?;
    cmd.args(args);
    super::time_run(what, cmd)
}

pub fn publish(output: &Path, to: &str) -> Result<String> {
    let manifest: crate::output::manifest::Manifest = serde_json::from_slice(
        &fs_err::read(output.join("manifest.json"))
            .with_context(|| format!("bench publish needs a built {}", output.display()))?,
    )?;
    let bytes: u64 = manifest.artifacts.iter().map(|a| a.size).sum();
    let to = fresh(to);
    let out = output.to_str().context("output path is not UTF-8")?;
    let args = ["--output", out, "publish", "--to", &to, "--version", "v1"];
    let first = timed("publish, first run", &args)?;
    let again = timed("publish, re-run", &args)?;
    let mut rows = vec![
        ("Kiln publish, first run (uploads everything)", first),
        ("Kiln publish, re-run (every object already there)", again),
    ];
    // What an operator would otherwise run: `aws s3 sync` (size + mtime).
    if to.starts_with("s3://") && crate::tools::find("aws").is_some() {
        let dest = format!("{to}/aws-sync/v1");
        let sync = |what: &str| -> Result<f64> {
            eprintln!("bench: {what}…");
            let mut cmd = Command::new("aws");
            if let Ok(endpoint) = std::env::var("AWS_ENDPOINT") {
                cmd.args(["--endpoint-url", &endpoint]);
            }
            cmd.args([
                "s3",
                "sync",
                "--only-show-errors",
                "--exclude",
                "logs/*",
                out,
                &dest,
            ]);
            let start = Instant::now();
            let status = cmd.status().context("running aws s3 sync")?;
            ensure!(status.success(), "aws s3 sync failed: {status}");
            Ok(start.elapsed().as_secs_f64())
        };
        rows.push(("aws s3 sync, first run", sync("aws s3 sync, first run")?));
        rows.push(("aws s3 sync, re-run", sync("aws s3 sync, re-run")?));
    }
    let mut s = format!(
        "{} artifacts + manifest.json, {:.1} MB, to {to}\n\n| publish | seconds | / Kiln first run |\n|---|---:|---:|\n",
        manifest.artifacts.len(),
        bytes as f64 / 1e6
    );
    for (what, secs) in rows {
        let _ = writeln!(s, "| {what} | {secs:.2} | {:.3} |", secs / first);
    }
    Ok(s)
}

pub fn remote_cache(
    recipes: &Path,
    work: &Path,
    remote: &str,
    target: &str,
    jobs: usize,
) -> Result<String> {
    let remote = fresh(remote);
    let recipes = recipes.to_str().context("recipes path is not UTF-8")?;
    let jobs = jobs.to_string();
    let build = |what: &str, name: &str, remote: &str| -> Result<f64> {
        let dir = work.join(name);
        let cache = dir.join("cache");
        let output = dir.join("output");
        let args = [
            "--recipes",
            recipes,
            "--cache",
            cache.to_str().unwrap_or_default(),
            "--output",
            output.to_str().unwrap_or_default(),
            "-j",
            &jobs,
            "--remote-cache",
            remote,
            "build",
            target,
        ];
        let secs = timed(what, &args)?;
        // The next build starts from an empty local store too.
        fs_err::remove_dir_all(&dir).ok();
        Ok(secs)
    };
    let without = build("cold build, no remote cache", "a", "")?;
    let filling = build("cold build, empty remote cache (uploads)", "b", &remote)?;
    let hit = build("cold build, full remote cache", "c", &remote)?;
    let mut s = format!(
        "`{target}`, each build from an empty local store, remote {remote}\n\n| build | seconds | / no remote cache |\n|---|---:|---:|\n"
    );
    for (what, secs) in [
        ("no remote cache", without),
        ("empty remote cache (build + upload)", filling),
        ("full remote cache (every step fetched)", hit),
    ] {
        let _ = writeln!(s, "| {what} | {secs:.1} | {:.3} |", secs / without);
    }
    Ok(s)
}
