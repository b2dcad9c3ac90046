//! `bench kernel`: what an initramfs-only change costs. Runs Kiln itself
//! (this executable) on the default recipes three times against one empty
//! cache: a full build from nothing, a build after an initramfs-only change
//! (a new `release` variable: only the initramfs and the kernel link step
//! run), and a no-op build. The full build's step times are broken out.
//! `--arch arm64` measures the cross-compiled arm64 stage2 kernel.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Context, Result};

use crate::arch::Arch;

/// The stage2 kernel of `arch` in the default recipes.
fn target(arch: Arch) -> &'static str {
    match arch {
        Arch::X86_64 => "stage2/stage2_vmlinuz",
        Arch::Arm64 => "stage2/arm64/stage2_vmlinuz",
    }
}

struct Run {
    what: String,
    seconds: f64,
    /// `(step label, seconds)` from the build's progress lines.
    steps: Vec<(String, f64)>,
}

pub fn run(recipes: &Path, work: &Path, jobs: usize, arch: Arch) -> Result<String> {
    let exe = std::env::current_exe().context("finding the xtask executable")?;
    let build = |what: &str, release: &str| -> Result<Run> {
        eprintln!("bench kernel: {what}…");
        let mut cmd = Command::new(&exe);
        cmd.arg("--recipes")
            .arg(recipes)
            .arg("--cache")
            .arg(work.join("cache"))
            .arg("--output")
            .arg(work.join("output"))
            .arg("-j")
            .arg(jobs.to_string())
            .args([
                "--var",
                &format!("release={release}"),
                "build",
                target(arch),
            ])
            .env_remove("SOURCE_DATE_EPOCH");
        let start = Instant::now();
        let out = cmd.output().context("running xtask build")?;
        let seconds = start.elapsed().as_secs_f64();
        let log = String::from_utf8_lossy(&out.stderr);
        ensure!(out.status.success(), "{what} failed:\n{log}");
        Ok(Run {
            what: what.to_string(),
            seconds,
            steps: step_times(&log),
        })
    };
    let full = build("full build from an empty cache", "bench-a")?;
    let relink = build("initramfs-only change (relink)", "bench-b")?;
    let noop = build("no-op rebuild", "bench-b")?;
    let mut s = String::from("| build | seconds | / full build |\n|---|---:|---:|\n");
    for r in [&full, &relink, &noop] {
        let _ = writeln!(
            s,
            "| {} | {:.1} | {:.3} |",
            r.what,
            r.seconds,
            r.seconds / full.seconds
        );
    }
    let _ = writeln!(
        s,
        "\nSteps of the full build:\n\n| step | seconds |\n|---|---:|"
    );
    for (step, secs) in &full.steps {
        let _ = writeln!(s, "| {step} | {secs:.1} |");
    }
    let _ = writeln!(
        s,
        "\nSteps of the relink build:\n\n| step | seconds |\n|---|---:|"
    );
    for (step, secs) in &relink.steps {
        let _ = writeln!(s, "| {step} | {secs:.1} |");
    }
    Ok(s)
}

/// `      done kernel compile stage2/stage2_vmlinuz in 185.5s` → (label, 185.5).
fn step_times(log: &str) -> Vec<(String, f64)> {
    log.lines()
        .filter_map(|l| l.trim().strip_prefix("done "))
        .filter_map(|l| {
            let (label, secs) = l.rsplit_once(" in ")?;
            Some((label.to_string(), secs.strip_suffix('s')?.parse().ok()?))
        })
        .collect()
}
