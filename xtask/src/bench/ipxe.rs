//! `bench ipxe`: stage1's x86_64 targets built by Kiln (this executable,
//! an empty cache) against upstream's `make` in one copy of the tree, as an
//! operator builds it by hand: a cold build, a build after an
//! embedded-script change, and a no-op.

use std::fmt::Write as _;
use std::path::Path;
use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Context, Result};

/// What the bench builds: `make` targets of the x86_64 set.
pub struct Setup<'a> {
    pub recipes: &'a Path,
    pub tree: &'a Path,
    pub targets: Vec<String>,
    pub jobs: usize,
}

pub fn run(setup: &Setup, work: &Path) -> Result<String> {
    let kiln = [
        (
            "cold build",
            kiln(setup, work, "http://bench-a.example/stage2")?,
        ),
        (
            "embedded-script change",
            kiln(setup, work, "http://bench-b.example/stage2")?,
        ),
        ("no-op", kiln(setup, work, "http://bench-b.example/stage2")?),
    ];
    let copy = work.join("make-tree");
    copy_tree(setup.tree, &copy)?;
    let script = work.join("stage1.ipxe");
    let make = [
        ("cold build", make(setup, &copy, &script, "a")?),
        ("embedded-script change", make(setup, &copy, &script, "b")?),
        ("no-op", make(setup, &copy, &script, "b")?),
    ];
    let mut s = String::from(
        "| build | Kiln s | Kiln steps | make s | Kiln / make |\n|---|---:|---|---:|---:|\n",
    );
    for ((what, (k, steps)), (_, (m, _))) in kiln.iter().zip(&make) {
        let _ = writeln!(s, "| {what} | {k:.1} | {steps} | {m:.1} | {:.2} |", k / m);
    }
    Ok(s)
}

/// `xtask ipxe --arch x86_64` with `stage2_url` set (it is in the script):
/// seconds and Kiln's "N run, M cached".
fn kiln(setup: &Setup, work: &Path, url: &str) -> Result<(f64, String)> {
    eprintln!("bench ipxe: Kiln with stage2_url={url}…");
    let exe = std::env::current_exe().context("finding the xtask executable")?;
    let mut cmd = Command::new(exe);
    cmd.arg("--recipes")
        .arg(setup.recipes)
        .arg("--cache")
        .arg(work.join("cache"))
        .arg("--output")
        .arg(work.join("output"))
        .arg("--source")
        .arg(format!("ipxe={}", setup.tree.display()))
        .args(["-j", &setup.jobs.to_string()])
        .args([
            "--var",
            &format!("stage2_url={url}"),
            "ipxe",
            "--arch",
            "x86_64",
        ]);
    timed(cmd)
}

/// Upstream's `make` of the same targets with an embedded script whose
/// text is `variant`.
fn make(setup: &Setup, tree: &Path, script: &Path, variant: &str) -> Result<(f64, String)> {
    eprintln!("bench ipxe: make, script {variant}…");
    let text = format!("#!ipxe\necho bench {variant}\ndhcp\nchain http://bench-{variant}.example/stage2/stage1to2.ipxe\n");
    if fs_err::read_to_string(script).ok().as_deref() != Some(text.as_str()) {
        fs_err::write(script, text)?;
    }
    let mut cmd = Command::new("make");
    cmd.arg("-C")
        .arg(tree.join("src"))
        .arg(format!("-j{}", setup.jobs.max(1)))
        .arg(format!("EMBED={}", script.display()))
        .args(&setup.targets);
    timed(cmd)
}

/// Seconds, and the "N run, M cached" part of Kiln's summary line (empty
/// for make).
pub(super) fn timed(mut cmd: Command) -> Result<(f64, String)> {
    let start = Instant::now();
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    let seconds = start.elapsed().as_secs_f64();
    ensure!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8_lossy(&out.stdout);
    let steps = stdout
        .lines()
        .find_map(|l| l.split_once(" steps, ").map(|(_, rest)| rest))
        .and_then(|rest| rest.split(';').next())
        .unwrap_or_default()
        .to_string();
    Ok((seconds, steps))
}

pub(super) fn copy_tree(from: &Path, to: &Path) -> Result<()> {
    for entry in walkdir::WalkDir::new(from)
        .into_iter()
        .filter_entry(|e| e.file_name() != ".git")
    {
        let entry = entry?;
        let dest = to.join(entry.path().strip_prefix(from)?);
        if entry.file_type().is_dir() {
            fs_err::create_dir_all(&dest)?;
        } else if entry.file_type().is_file() {
            fs_err::copy(entry.path(), &dest)?;
        }
    }
    Ok(())
}
