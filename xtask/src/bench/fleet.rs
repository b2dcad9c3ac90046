//! `bench fleet`: per-host NIC ROMs for a generated inventory (default 500
//! hosts × 2 ROM models: the combined BIOS + EFI virtio ROM and the
//! Mellanox `.mrom`), Kiln (one compile per platform, then patching)
//! against the way fleets build them without Kiln: one full `make` per host
//! and ROM model in a fresh copy of the tree, followed for a combined ROM by
//! iPXE's `util/catrom.pl` and padding (timed for a sample, scaled to the
//! fleet), and the best case for make, one tree re-linked per host (also
//! sampled).

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{ensure, Context, Result};

use super::ipxe::copy_tree;

pub struct Setup<'a> {
    pub recipes: &'a Path,
    pub tree: &'a Path,
    pub hosts: usize,
    /// The ROMs every host gets.
    pub roms: Vec<FleetRom>,
    /// Full makes timed per ROM model.
    pub samples: usize,
    pub jobs: usize,
}

/// One ROM model of the fleet.
pub struct FleetRom {
    /// As `xtask ipxe --target` takes it (`bin/15b31003.mrom`, or a combined
    /// ROM's file, `efi-virtio.rom`).
    pub name: String,
    /// What `make` builds for it: the target, or a combined ROM's images.
    pub make: Vec<String>,
    /// A combined ROM: chained by `util/catrom.pl`, padded to this size.
    pub combined: Option<Option<u64>>,
}

impl FleetRom {
    fn file(&self) -> &str {
        self.name.rsplit('/').next().unwrap_or(&self.name)
    }
}

pub fn run(setup: &Setup, work: &Path) -> Result<String> {
    let inventory = work.join("fleet.csv");
    fs_err::write(&inventory, inventory_csv(setup))?;
    let cache = work.join("cache");
    let cold = kiln(setup, work, &inventory, &cache, &[])?;
    let again = kiln(setup, work, &inventory, &cache, &[])?;
    let script_change = kiln(
        setup,
        work,
        &inventory,
        &cache,
        &["--var", "stage2_url=http://bench-b.example/stage2"],
    )?;
    let files = setup.hosts * setup.roms.len();

    let mut full = Vec::new();
    for (i, rom) in setup.roms.iter().enumerate() {
        for n in 0..setup.samples {
            let copy = work.join(format!("make-full-{i}-{n}"));
            copy_tree(setup.tree, &copy)?;
            let script = host_script(work, n)?;
            full.push(make(setup, &copy, &script, std::slice::from_ref(rom))?);
            fs_err::remove_dir_all(&copy)?;
        }
    }
    let full_each = full.iter().sum::<f64>() / full.len() as f64;
    let full_fleet = full_each * files as f64;

    let relink_tree = work.join("make-relink");
    copy_tree(setup.tree, &relink_tree)?;
    make(setup, &relink_tree, &host_script(work, 0)?, &setup.roms)?;
    let mut relink = Vec::new();
    for n in 1..=setup.samples.max(2) {
        relink.push(make(
            setup,
            &relink_tree,
            &host_script(work, n)?,
            &setup.roms,
        )?);
    }
    let relink_each = relink.iter().sum::<f64>() / relink.len() as f64;
    let relink_fleet = relink_each * setup.hosts as f64;

    let names: Vec<&str> = setup.roms.iter().map(|r| r.name.as_str()).collect();
    let mut s = format!(
        "{} hosts × {} ROM models ({}) = {files} ROMs, {} jobs.\n\n",
        setup.hosts,
        setup.roms.len(),
        names.join(", "),
        setup.jobs
    );
    s.push_str("| way | seconds | per ROM s | ÷ full make per host |\n|---|---:|---:|---:|\n");
    let mut row = |what: &str, secs: f64| {
        let _ = writeln!(
            s,
            "| {what} | {secs:.1} | {:.3} | {:.4} |",
            secs / files as f64,
            secs / full_fleet
        );
    };
    row(
        &format!("Kiln, empty cache: one compile + patching ({})", cold.1),
        cold.0,
    );
    row(
        &format!("Kiln, embedded-script change ({})", script_change.1),
        script_change.0,
    );
    row(&format!("Kiln, no-op ({})", again.1), again.0);
    row(
        &format!(
            "full make per host and ROM model ({} sampled, {full_each:.1} s each, × {files})",
            full.len()
        ),
        full_fleet,
    );
    row(
        &format!(
            "one tree re-linked per host ({} sampled, {relink_each:.1} s each, × {})",
            relink.len(),
            setup.hosts
        ),
        relink_fleet,
    );
    Ok(s)
}

/// `hosts` machines, each in its own /24 of 10.0.0.0/8, every one with the
/// same ROM models.
fn inventory_csv(setup: &Setup) -> String {
    let roms: Vec<&str> = setup.roms.iter().map(FleetRom::file).collect();
    let mut csv = String::from("hostname,ipv4,gateway,dns,roms\n");
    for i in 0..setup.hosts {
        let (a, b) = (i / 200, i % 200);
        let _ = writeln!(
            csv,
            "host{i:04}.site{a:03}.bench.example.net,10.{a}.{b}.10/24,10.{a}.{b}.1,10.0.0.53,{}",
            roms.join(" ")
        );
    }
    csv
}

/// `xtask ipxe --hosts` for the ROM targets: seconds and "N run, M cached".
fn kiln(
    setup: &Setup,
    work: &Path,
    inventory: &Path,
    cache: &Path,
    extra: &[&str],
) -> Result<(f64, String)> {
    eprintln!("bench fleet: Kiln {}…", extra.join(" "));
    let exe = std::env::current_exe().context("finding the xtask executable")?;
    let mut cmd = Command::new(exe);
    cmd.arg("--recipes")
        .arg(setup.recipes)
        .arg("--cache")
        .arg(cache)
        .arg("--output")
        .arg(work.join("output"))
        .arg("--source")
        .arg(format!("ipxe={}", setup.tree.display()))
        .args(["-j", &setup.jobs.to_string()])
        .args(extra)
        .args(["ipxe", "--arch", "x86_64", "--hosts"])
        .arg(inventory);
    for rom in &setup.roms {
        cmd.args(["--target", &rom.name]);
    }
    super::ipxe::timed(cmd)
}

/// A stand-in host script of realistic size (the stage1 template's).
fn host_script(work: &Path, n: usize) -> Result<PathBuf> {
    let path = work.join(format!("host-{n}.ipxe"));
    let text = format!(
        "#!ipxe\nset net0/ip 10.0.{n}.10\nset net0/netmask 255.255.255.0\nset net0/gateway 10.0.{n}.1\nset dns 10.0.0.53\nset hostname mlab{n}.bench.example.net\nifopen net0\nchain http://boot.example.net/stage2/stage1to2.ipxe\n"
    );
    fs_err::write(&path, text)?;
    Ok(path)
}

/// A full `make` of `roms` with `script` embedded, then catrom.pl and the
/// padding for each combined ROM: seconds.
fn make(setup: &Setup, tree: &Path, script: &Path, roms: &[FleetRom]) -> Result<f64> {
    let targets: Vec<&String> = roms.iter().flat_map(|r| &r.make).collect();
    let shown: Vec<&str> = targets.iter().map(|t| t.as_str()).collect();
    eprintln!(
        "bench fleet: make {} in {}…",
        shown.join(" "),
        tree.display()
    );
    let src = tree.join("src");
    let mut cmd = Command::new("make");
    cmd.arg("-C")
        .arg(&src)
        .arg(format!("-j{}", setup.jobs.max(1)))
        .arg(format!("EMBED={}", script.display()))
        .args(&targets);
    let start = Instant::now();
    run_ok(cmd)?;
    for rom in roms {
        let Some(pad_to) = rom.combined else { continue };
        let mut catrom = crate::tools::command("perl")?;
        catrom.arg(src.join("util/catrom.pl"));
        catrom.args(rom.make.iter().map(|t| src.join(t)));
        let mut bytes = run_ok(catrom)?;
        if let Some(size) = pad_to {
            bytes.resize(usize::try_from(size)?.max(bytes.len()), 0);
        }
        fs_err::write(src.join(rom.file()), bytes)?;
    }
    Ok(start.elapsed().as_secs_f64())
}

/// Runs `cmd`; its stdout, or an error with its stderr.
fn run_ok(mut cmd: Command) -> Result<Vec<u8>> {
    let out = cmd.output().with_context(|| format!("running {cmd:?}"))?;
    ensure!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(out.stdout)
}
