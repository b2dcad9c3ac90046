//! `build`: plan the targets, run the plan, install the artifacts and the
//! manifest (`crate::output`), compare the checked ones with their
//! references, and summarize.

use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};
use clap::Args;

use super::plan::plan_lines;
use super::session::{executor, session, session_with, Overrides, Session};
use super::Settings;
use crate::exec::NodeResult;
use crate::output::manifest::Artifact;
use crate::store::Output;

#[derive(Debug, Args)]
pub struct BuildArgs {
    /// Recipe names (files in the recipes directory without `.toml`), e.g.
    /// `stage2`, or single artifacts as `<recipe>/<file>`, e.g.
    /// `stage2/stage2_initramfs.cpio.gz` (only the steps it needs run).
    #[arg(required = true)]
    pub targets: Vec<String>,
    /// Before building, say why each step that will run must run.
    #[arg(long)]
    pub explain: bool,
}

pub fn build(s: &Settings, a: &BuildArgs) -> Result<ExitCode> {
    if a.explain {
        let sess = session(s, &a.targets)?;
        for line in plan_lines(s, &sess)?.iter().filter(|l| l.status != "hit") {
            println!("{}: {}", line.step, line.why.as_deref().unwrap_or_default());
        }
    }
    build_targets(s, &a.targets)?;
    Ok(ExitCode::SUCCESS)
}

/// Builds `targets` and writes their artifacts and the manifest; returns
/// the manifest entries of what was built.
pub fn build_targets(s: &Settings, targets: &[String]) -> Result<Vec<Artifact>> {
    build_targets_with(s, targets, &Overrides::default())
}

pub(super) fn build_targets_with(
    s: &Settings,
    targets: &[String],
    o: &Overrides,
) -> Result<Vec<Artifact>> {
    let start = Instant::now();
    let sess = session_with(s, targets, o)?;
    let lock = crate::output::OutputLock::acquire(&s.output_dir)?;
    let results = executor(s, &sess.store, sess.executor_jobs).run(&sess.plan)?;
    let artifacts = crate::output::install(&lock, &sess.store, &sess.plan, &results)?;
    run_checks(&sess, &results, &artifacts)?;
    let ran = results.iter().filter(|r| !r.cached).count();
    // A fleet has thousands of files: the manifest lists them all.
    const LISTED: usize = 40;
    for a in artifacts.iter().take(LISTED) {
        println!("{}  {}", a.sha256.short(), a.path);
    }
    if artifacts.len() > LISTED {
        println!(
            "… and {} more (all in the manifest)",
            artifacts.len() - LISTED
        );
    }
    let what = match targets.len() {
        n if n > 4 => format!("{n} targets"),
        _ => targets.join(" "),
    };
    println!(
        "built {what} in {:.2}s: {} steps, {ran} run, {} cached; {} artifact(s); manifest {}",
        start.elapsed().as_secs_f64(),
        results.len(),
        results.len() - ran,
        artifacts.len(),
        s.output_dir.join(crate::layout::MANIFEST).display()
    );
    let mut slow: Vec<(Duration, String)> = results
        .iter()
        .zip(&sess.plan.nodes)
        .filter(|(r, _)| !r.cached && r.elapsed >= Duration::from_secs(1))
        .map(|(r, n)| (r.elapsed, n.step.label()))
        .collect();
    slow.sort_by_key(|s| std::cmp::Reverse(s.0));
    if !slow.is_empty() {
        let shown: Vec<String> = slow
            .iter()
            .take(5)
            .map(|(t, label)| format!("{label} {:.1}s", t.as_secs_f64()))
            .collect();
        println!("slowest steps: {}", shown.join(", "));
    }
    Ok(artifacts)
}

/// Compares each checked artifact with its reference output and prints one
/// line per pair; any difference fails the build (the artifacts stay, so
/// they can be inspected).
fn run_checks(sess: &Session, results: &[NodeResult], artifacts: &[Artifact]) -> Result<()> {
    let mut differ = Vec::new();
    for c in &sess.plan.checks {
        let Some(a) = artifacts.iter().find(|a| a.name == c.artifact) else {
            continue;
        };
        let reference = match results[c.node].outputs.get(&c.output) {
            Some(Output::File { digest, .. }) => *digest,
            _ => bail!(
                "the reference for {} produced no `{}`",
                c.artifact,
                c.output
            ),
        };
        let same = reference == a.sha256;
        println!(
            "{}  {}  {} ({})",
            if same { "identical" } else { "DIFFERENT" },
            c.artifact,
            reference.short(),
            c.how
        );
        if !same {
            differ.push(c.artifact.clone());
        }
    }
    if !differ.is_empty() {
        bail!(
            "{} of {} file(s) differ from their reference build: {}",
            differ.len(),
            sess.plan.checks.len(),
            differ.join(", ")
        );
    }
    Ok(())
}
