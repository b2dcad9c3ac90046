//! `build`, `plan`, `boot-test` and `bench`.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Args, Subcommand};

use super::Settings;
use crate::plan::exec::{Executor, NodeResult, Status};
use crate::plan::{self, Plan, PlanOptions};
use crate::recipe::{self, ipxe::IpxeHost};
use crate::steps::manifest::{Artifact, Manifest};
use crate::store::{Digest, Output, Store, Tree, TreeKind};
use crate::verify;

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

#[derive(Debug, Args)]
pub struct PlanArgs {
    /// Recipe names or `<recipe>/<file>` artifacts, as for `build`.
    #[arg(required = true)]
    pub targets: Vec<String>,
    /// For every step that will run, say why: what changed since its last
    /// build (an input file, a parameter, a tool version), or "never built".
    #[arg(long)]
    pub explain: bool,
    /// Print the plan as JSON (one object per step, with `why`).
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct BootTestArgs {
    /// What to boot: `stage2` (the stage2 kernel with its embedded
    /// initramfs, no -initrd, virtio-net and e1000 cards that must both come
    /// up), `stage2-initramfs` (Debian's kernel with the stage2 initramfs),
    /// `modules` (the same plus modules.cpio.gz as a second initrd;
    /// modprobe virtio_net must bring up a new interface), `stage2-iso`
    /// (the hybrid ISO through isolinux or its EFI image; see --firmware,
    /// --usb, --host) or `stage2-uki` (the UKI on a FAT drive, UEFI). Media
    /// tests check that the guest got the kernel arguments baked in.
    /// `stage1-lkrn`, `stage1-efi` (OVMF, from a FAT drive) and `stage1-rom`
    /// (virtio-net option ROM) boot iPXE, which must DHCP, chain
    /// stage1to2.ipxe from Kiln's HTTP server and boot stage2 (needs an iPXE
    /// tree: `--source ipxe=PATH`). `stage3` boots the ROM updater with
    /// `kiln.dry_run=1` beside a virtio-net and an e1000e card (QEMU's own
    /// ROMs): every card must get a `KILN-ROM` line and mstflint must run
    /// (`--host` adds that host's ROM archive as a second initrd).
    pub what: String,
    /// Firmware for media tests: `bios` (SeaBIOS; the ISO's default) or
    /// `uefi` (OVMF from the pinned `ovmf` deb; the UKI's only choice).
    #[arg(long, value_enum)]
    pub firmware: Option<Firmware>,
    /// Attach the ISO as a USB stick instead of a CD.
    #[arg(long)]
    pub usb: bool,
    /// Boot this inventory host's ISO (`stage2/hosts/<HOST>/stage2.iso`),
    /// or with `stage1-*` its patched iPXE file (`stage1/hosts/<HOST>/…`).
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// Boot this initramfs instead of building the stage2 one.
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<PathBuf>,
    /// Seconds to wait for the serial marker.
    #[arg(long, default_value_t = 180)]
    pub timeout: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Firmware {
    Bios,
    Uefi,
}

impl std::fmt::Display for Firmware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Firmware::Bios => "SeaBIOS",
            Firmware::Uefi => "OVMF",
        })
    }
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// Pack the Debian kernel's module tree (or any directory) with Kiln vs
    /// cpio | gzip -9, pigz -9, zstd.
    Archive {
        /// Pack this directory instead of the pinned linux-image package.
        #[arg(long, value_name = "DIR")]
        tree: Option<std::path::PathBuf>,
    },
    /// The modules step on the whole module tree and a 20-driver subset vs cpio | gzip -9 / pigz -9.
    Modules,
    /// The stage2 kernel: full build from an empty cache vs relink after an
    /// initramfs-only change vs a no-op rebuild.
    Kernel,
    /// stage1's x86_64 iPXE targets, Kiln vs upstream's `make`: cold, after
    /// an embedded-script change, no-op. Needs `--source ipxe=PATH`.
    Ipxe,
    /// How long a build with nothing to do takes: no-op builds of TARGETS
    /// with the stat caches vs hashing every local input and artifact.
    Noop {
        #[arg(default_values_t = ["stage2".to_string(), "stage3".to_string(), "modules".to_string()])]
        targets: Vec<String>,
    },
    /// Publish the built output/ to URL twice (first run vs re-run), in a
    /// fresh prefix under URL.
    Publish {
        /// s3://bucket/prefix, gs://bucket/prefix or file:///dir.
        #[arg(long, value_name = "URL")]
        to: String,
    },
    /// Cold builds of TARGET (empty local store) without a remote cache,
    /// with an empty one, and with a full one, in a fresh prefix under URL.
    RemoteCache {
        /// s3://bucket/prefix, gs://bucket/prefix or file:///dir.
        #[arg(long, value_name = "URL")]
        remote: String,
        #[arg(default_value = "stage2")]
        target: String,
    },
    /// Per-host ROMs for a generated inventory: Kiln (one compile + patching)
    /// vs a full `make` per host and ROM model (sampled, scaled to the fleet)
    /// and vs re-linking one tree per host. Needs `--source ipxe=PATH`.
    Fleet {
        /// Hosts in the generated inventory.
        #[arg(long, default_value_t = 500)]
        hosts: usize,
        /// ROM targets every host gets.
        #[arg(long = "rom", default_values_t = ["bin/1af41000.rom".to_string(), "bin/15b31003.mrom".to_string()])]
        roms: Vec<String>,
        /// Full makes timed per ROM model (each takes minutes).
        #[arg(long, default_value_t = 1)]
        samples: usize,
    },
}

/// The loaded recipes, the store and the plan for some targets.
pub struct Session {
    pub store: Store,
    pub plan: Plan,
    pub executor_jobs: usize,
}

/// What `cargo xtask ipxe` changes in the loaded recipes and the plan.
#[derive(Debug, Default)]
pub struct Overrides {
    /// A recipe's `[ipxe]` hosts replaced by these (from `--hosts FILE`,
    /// narrowed by `--only` and `--target`).
    pub ipxe_hosts: Option<(String, Vec<IpxeHost>)>,
    /// `--check-make`: these hosts' files also built by a full `make`.
    pub check_make: Vec<String>,
}

/// Loads the recipes and plans `targets`: every recipe or target error, and
/// nothing run.
pub(super) fn check_targets(s: &Settings, targets: &[String]) -> Result<()> {
    session(s, targets).map(|_| ())
}

fn session(s: &Settings, targets: &[String]) -> Result<Session> {
    session_with(s, targets, &Overrides::default())
}

pub(super) fn session_with(s: &Settings, targets: &[String], o: &Overrides) -> Result<Session> {
    let mut recipes = recipe::load(&s.recipes_dir, &s.vars)?;
    if let Some((name, hosts)) = &o.ipxe_hosts {
        let ipxe = recipes.targets.get_mut(name).and_then(|r| r.ipxe.as_mut());
        ipxe.context("the recipe the hosts are for has no [ipxe]")?
            .hosts = hosts.clone();
    }
    let store = Store::open(&s.cache_dir)?;
    let opts = PlanOptions {
        source_overrides: s.source_overrides.clone(),
        epoch_override: source_date_epoch()?,
        threads: s.jobs,
        ipxe_check_make: o.check_make.clone(),
    };
    let plan = plan::plan(&recipes, targets, &store, &opts)?;
    Ok(Session {
        store,
        plan,
        executor_jobs: s.jobs,
    })
}

fn source_date_epoch() -> Result<Option<u64>> {
    match std::env::var("SOURCE_DATE_EPOCH") {
        Ok(v) if !v.is_empty() => v
            .trim()
            .parse()
            .map(Some)
            .with_context(|| format!("SOURCE_DATE_EPOCH=`{v}` is not a number of seconds")),
        _ => Ok(None),
    }
}

fn executor<'a>(s: &'a Settings, store: &'a Store, jobs: usize) -> Executor<'a> {
    Executor {
        store,
        jobs,
        log_dir: s.output_dir.join("logs"),
        quiet: s.quiet,
        remote: s.remote.as_deref(),
    }
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
    let results = executor(s, &sess.store, sess.executor_jobs).run(&sess.plan)?;
    let artifacts = install_artifacts(s, &sess, &results)?;
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
        s.output_dir.join("manifest.json").display()
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

/// Copies each artifact out of the store (temp file + rename) and rewrites
/// the manifest last, so it never names a file that is not in place.
fn install_artifacts(
    s: &Settings,
    sess: &Session,
    results: &[NodeResult],
) -> Result<Vec<Artifact>> {
    let mut artifacts = Vec::new();
    // A no-op build finds every artifact in place by its size, mtime and
    // inode instead of hashing it again.
    let mut in_place = sess.store.stat_cache(&s.output_dir);
    for spec in &sess.plan.artifacts {
        let r = &results[spec.node];
        let (digest, size) = match r.outputs.get(&spec.output) {
            Some(Output::File { digest, size }) => (*digest, *size),
            _ => bail!("step for {} produced no file `{}`", spec.name, spec.output),
        };
        let dest = s.output_dir.join(&spec.name);
        // Stat before hashing: an edit during the hash changes the stat,
        // so what is recorded never vouches for bytes that were not hashed.
        let before = dest.metadata().ok();
        let known = before.as_ref().and_then(|m| in_place.lookup(&spec.name, m));
        if known.map(|(d, _)| d) == Some(digest) || already_in_place(&dest, &digest) {
            let after = dest.metadata().ok();
            if let (Some(b), Some(a)) = (&before, &after) {
                if same_file_state(b, a) {
                    in_place.record(&spec.name, a, digest);
                }
            }
        } else {
            sess.store.copy_blob_to(&digest, &dest, 0o644)?;
            if let Ok(m) = dest.metadata() {
                in_place.record(&spec.name, &m, digest);
            }
        }
        artifacts.push(Artifact {
            name: spec.name.clone(),
            path: spec.name.clone(),
            kind: spec.kind.to_string(),
            arch: spec.arch.to_string(),
            sha256: digest,
            size,
            recipe: recipe_display(&spec.recipe),
            step_key: r.key,
            inputs: r.components.inputs.clone(),
            details: with_facts(details(&sess.store, r, spec.details)?, &spec.facts),
        });
        warn_missing_firmware(artifacts.last().expect("just pushed"));
    }
    let manifest_path = s.output_dir.join("manifest.json");
    let mut manifest = Manifest::read_or_empty(&manifest_path);
    manifest.source_date_epoch = sess
        .plan
        .artifacts
        .iter()
        .map(|a| a.epoch)
        .max()
        .unwrap_or(0);
    manifest.merge(artifacts.clone());
    manifest.write(&manifest_path)?;
    in_place.save();
    Ok(artifacts)
}

/// Said on every build, cached or not: the manifest keeps the full list.
fn warn_missing_firmware(a: &Artifact) {
    let Some(missing) = a
        .details
        .as_ref()
        .and_then(|d| d["firmware_missing"].as_array())
    else {
        return;
    };
    if missing.is_empty() {
        return;
    }
    let names: Vec<&str> = missing.iter().filter_map(|m| m.as_str()).collect();
    let shown = names.iter().take(8).copied().collect::<Vec<_>>().join(", ");
    let more = if names.len() > 8 {
        format!(" and {} more", names.len() - 8)
    } else {
        String::new()
    };
    eprintln!(
        "warning: {}: {} firmware file(s) not found in the firmware sources (all listed in the manifest): {shown}{more}",
        a.name,
        names.len()
    );
}

/// The JSON a step left beside an artifact for the manifest.
fn details(
    store: &Store,
    r: &NodeResult,
    output: Option<&str>,
) -> Result<Option<serde_json::Value>> {
    let Some(name) = output else { return Ok(None) };
    match r.outputs.get(name) {
        Some(Output::File { digest, .. }) => {
            Ok(Some(serde_json::from_slice(&store.read_blob(digest)?)?))
        }
        _ => bail!("step produced no `{name}` output"),
    }
}

/// `details` with plan-time `facts` added (facts win on a name clash).
fn with_facts(
    details: Option<serde_json::Value>,
    facts: &Option<serde_json::Value>,
) -> Option<serde_json::Value> {
    match (details, facts) {
        (Some(serde_json::Value::Object(mut d)), Some(serde_json::Value::Object(f))) => {
            d.extend(f.clone());
            Some(serde_json::Value::Object(d))
        }
        (d, None) => d,
        (_, f) => f.clone(),
    }
}

/// Size, mtime and inode unchanged between two stats.
fn same_file_state(a: &std::fs::Metadata, b: &std::fs::Metadata) -> bool {
    use std::os::unix::fs::MetadataExt;
    a.len() == b.len()
        && a.mtime() == b.mtime()
        && a.mtime_nsec() == b.mtime_nsec()
        && a.ino() == b.ino()
}

fn already_in_place(dest: &Path, digest: &Digest) -> bool {
    dest.is_file()
        && Digest::of_file(dest)
            .map(|(d, _)| d == *digest)
            .unwrap_or(false)
}

/// `recipes/stage2.toml`: the recipe's path relative to the workspace, never absolute.
fn recipe_display(p: &Path) -> String {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    format!("recipes/{name}")
}

/// One step of a plan as `plan` shows it.
#[derive(Debug, serde::Serialize)]
pub struct PlanLine {
    pub step: String,
    /// `hit`, `miss`, or `pending` (its key waits on steps that will run).
    pub status: &'static str,
    pub key: Option<String>,
    /// Why a step that is not a hit will run.
    pub why: Option<String>,
}

fn plan_lines(s: &Settings, sess: &Session) -> Result<Vec<PlanLine>> {
    let statuses = executor(s, &sess.store, sess.executor_jobs).status(&sess.plan)?;
    let lines = sess
        .plan
        .nodes
        .iter()
        .zip(&statuses)
        .enumerate()
        .map(|(i, (node, status))| {
            let (status, key, why) = match status {
                Status::Hit(k) => ("hit", Some(k.hex()), None),
                Status::Miss(k, components) => {
                    let why = crate::plan::explain::explain(
                        &sess.store,
                        &node.step.identity(),
                        components,
                    );
                    ("miss", Some(k.hex()), Some(why))
                }
                Status::Pending => ("pending", None, Some(waits_on(&sess.plan, &statuses, i))),
            };
            PlanLine {
                step: node.step.label(),
                status,
                key,
                why,
            }
        });
    Ok(lines.collect())
}

pub fn plan(s: &Settings, a: &PlanArgs) -> Result<ExitCode> {
    let sess = session(s, &a.targets)?;
    let lines = plan_lines(s, &sess)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&lines)?);
        return Ok(ExitCode::SUCCESS);
    }
    for line in &lines {
        let word = if line.status == "hit" { "hit " } else { "miss" };
        let key = line
            .key
            .as_deref()
            .map_or("(after inputs)".to_string(), |k| k[..12].to_string());
        println!("{word}  {key:<14}  {}", line.step);
        if let (true, Some(why)) = (a.explain, &line.why) {
            println!("      why: {why}");
        }
    }
    let hits = lines.iter().filter(|l| l.status == "hit").count();
    println!(
        "{} steps: {hits} cached, {} to run",
        lines.len(),
        lines.len() - hits
    );
    Ok(ExitCode::SUCCESS)
}

/// Why a step's key is not known yet: the steps it waits for.
fn waits_on(plan: &Plan, statuses: &[Status], i: usize) -> String {
    let upstream: Vec<String> = plan.nodes[i]
        .inputs
        .values()
        .filter_map(|r| match r {
            crate::plan::InputRef::Node { node, .. }
                if !matches!(statuses[*node], Status::Hit(_)) =>
            {
                Some(plan.nodes[*node].step.label())
            }
            _ => None,
        })
        .collect();
    format!(
        "its inputs come from steps that will run first: {}",
        upstream.join(", ")
    )
}

const STAGE2_INITRAMFS: &str = "stage2/stage2_initramfs.cpio.gz";

pub fn boot_test(s: &Settings, a: &BootTestArgs) -> Result<ExitCode> {
    let media = a.what == "stage2-iso" || a.what == "stage2-uki";
    if (a.firmware.is_some() || a.usb) && !media {
        bail!("`--firmware` and `--usb` are for `stage2-iso` and `stage2-uki`");
    }
    if a.host.is_some() && !media && !a.what.starts_with("stage1-") && a.what != "stage3" {
        bail!("`--host` is for `stage2-iso`, `stage2-uki`, `stage3` and the `stage1-*` boot tests");
    }
    match a.what.as_str() {
        "stage3" => super::boot::boot_stage3(s, a),
        "stage2-iso" | "stage2-uki" => super::boot::boot_media(s, a),
        "stage1-lkrn" | "stage1-efi" | "stage1-rom" => super::boot::boot_stage1(s, a),
        "stage2" => {
            if a.initrd.is_some() {
                bail!(
                    "`--initrd` is for `stage2-initramfs`: the stage2 kernel embeds its initramfs"
                );
            }
            build_targets(s, &["stage2".to_string()])?;
            let kernel = s.output_dir.join("stage2/stage2_vmlinuz");
            let outcome = verify::boot::boot(&verify::boot::BootSpec::kernel(&kernel, a.timeout))?;
            let nics = verify::boot::interfaces(&outcome.serial);
            if !(nics.contains(&"eth0") && nics.contains(&"eth1")) {
                bail!(
                    "the stage2 kernel booted but did not bring up both network cards \
                     (virtio-net, e1000): it reported {nics:?}"
                );
            }
            let banner = outcome
                .serial
                .iter()
                .find(|l| l.contains(" Kiln "))
                .map_or("", |l| l.trim());
            println!(
                "boot test passed in {:.1}s: saw `{}`; banner `{banner}`; interfaces {}",
                outcome.elapsed.as_secs_f64(),
                outcome.marker,
                nics.join(" ")
            );
            Ok(ExitCode::SUCCESS)
        }
        "stage2-initramfs" => {
            let initrd = match &a.initrd {
                Some(path) => path.clone(),
                None => {
                    build_targets(s, &[STAGE2_INITRAMFS.to_string()])?;
                    s.output_dir.join(STAGE2_INITRAMFS)
                }
            };
            let kernel = debian_kernel(s)?;
            let outcome =
                verify::boot::boot(&verify::boot::BootSpec::stage2(&kernel, &initrd, a.timeout))?;
            println!(
                "boot test passed in {:.1}s: saw `{}`",
                outcome.elapsed.as_secs_f64(),
                outcome.marker
            );
            Ok(ExitCode::SUCCESS)
        }
        "modules" => {
            let built = build_targets(s, &[STAGE2_INITRAMFS.to_string(), "modules".to_string()])?;
            let kernel = debian_kernel(s)?;
            let modules = built
                .iter()
                .find(|a| a.kind == "modules" && a.name.ends_with(".gz"))
                .context("the modules recipe wrote no .gz archive")?;
            let work = tempfile::tempdir().context("creating a temporary directory")?;
            let initrd = work.path().join("stage2+modules.cpio.gz");
            concatenate(
                &[
                    s.output_dir.join(STAGE2_INITRAMFS),
                    s.output_dir.join(&modules.path),
                ],
                &initrd,
            )?;
            let spec = verify::boot::BootSpec::modules(
                &kernel,
                &initrd,
                &["virtio_pci", "virtio_net"],
                a.timeout,
            );
            let outcome = verify::boot::boot(&spec)?;
            println!(
                "boot test passed in {:.1}s: saw `{}`",
                outcome.elapsed.as_secs_f64(),
                outcome.marker
            );
            Ok(ExitCode::SUCCESS)
        }
        other => {
            bail!("unknown boot test `{other}`: try `stage2`, `stage2-initramfs`, `modules`, `stage2-iso`, `stage2-uki`, `stage1-lkrn`, `stage1-efi` or `stage1-rom`")
        }
    }
}

/// Concatenates initrds, as a boot loader loading several does.
fn concatenate(parts: &[PathBuf], dest: &Path) -> Result<()> {
    let mut out =
        std::fs::File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
    for p in parts {
        let mut f = std::fs::File::open(p).with_context(|| format!("opening {}", p.display()))?;
        std::io::copy(&mut f, &mut out).with_context(|| format!("appending {}", p.display()))?;
    }
    Ok(())
}

/// `boot/vmlinuz-*` from the pinned `linux-image` source, as a store path.
/// A file inside a `deb` source, fetched and unpacked as a build would.
pub fn deb_source_file(s: &Settings, source: &str, path: &str) -> Result<PathBuf> {
    let (store, digest) = deb_tree_digest(s, source)?;
    let tree = store.tree(&digest)?;
    match tree.get(path).map(|e| &e.kind) {
        Some(TreeKind::File { digest, .. }) => store.verified_blob(digest),
        _ => bail!("the `{source}` source has no file {path}"),
    }
}

pub fn debian_kernel(s: &Settings) -> Result<PathBuf> {
    let (store, digest) = deb_tree_digest(s, "linux-image")?;
    let tree = store.tree(&digest)?;
    let entry = tree
        .entries
        .iter()
        .find(|e| e.path.starts_with("boot/vmlinuz-"))
        .context("the linux-image source has no boot/vmlinuz-*")?;
    match &entry.kind {
        TreeKind::File { digest, .. } => store.verified_blob(digest),
        _ => bail!("{} in linux-image is not a file", entry.path),
    }
}

/// The unpacked tree of a `deb` source, fetched and cached as a build
/// would: the store it lives in and the tree's digest.
fn deb_tree_digest(s: &Settings, source: &str) -> Result<(Store, Digest)> {
    let recipes = recipe::load(&s.recipes_dir, &s.vars)?;
    let store = Store::open(&s.cache_dir)?;
    let opts = PlanOptions {
        source_overrides: s.source_overrides.clone(),
        epoch_override: None,
        threads: s.jobs,
        ..PlanOptions::default()
    };
    let plan = plan::plan_deb_tree(&recipes, source, &store, &opts)?;
    let results = executor(s, &store, s.jobs).run(&plan)?;
    match results.last().and_then(|r| r.outputs.get("tree")) {
        Some(Output::Tree { digest }) => Ok((store, *digest)),
        _ => bail!("unpacking source `{source}` produced no tree"),
    }
}

/// `sources fetch`: the named sources (all when none) into the store.
pub(super) fn fetch_sources(s: &Settings, names: &[String]) -> Result<ExitCode> {
    let recipes = recipe::load(&s.recipes_dir, &s.vars)?;
    let store = Store::open(&s.cache_dir)?;
    let opts = PlanOptions {
        source_overrides: s.source_overrides.clone(),
        threads: s.jobs,
        ..PlanOptions::default()
    };
    let plan = plan::plan_sources(&recipes, names, &store, &opts)?;
    let results = executor(s, &store, s.jobs).run(&plan)?;
    for (node, result) in plan.nodes.iter().zip(&results) {
        let state = if result.cached { "cached " } else { "fetched" };
        println!("{state}  {}", node.step.label());
    }
    let fetched = results.iter().filter(|r| !r.cached).count();
    println!(
        "{} source step(s): {fetched} fetched, {} already in the store {}",
        results.len(),
        results.len() - fetched,
        s.cache_dir.display()
    );
    Ok(ExitCode::SUCCESS)
}

pub fn bench(s: &Settings, c: &BenchCommand) -> Result<ExitCode> {
    let table = match c {
        BenchCommand::Kernel => {
            // Its own empty cache: the full build must start from nothing.
            let work = bench_dir("kiln-bench-kernel-")?;
            crate::bench::kernel::run(&s.recipes_dir, work.path(), s.jobs)?
        }
        BenchCommand::Ipxe => bench_ipxe(s)?,
        BenchCommand::Noop { targets } => {
            let sources: Vec<(String, std::path::PathBuf)> = s
                .source_overrides
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            crate::bench::noop::run(&crate::bench::noop::Setup {
                recipes: &s.recipes_dir,
                cache: &s.cache_dir,
                output: &s.output_dir,
                sources: &sources,
                targets,
            })?
        }
        BenchCommand::Publish { to } => crate::bench::remote::publish(&s.output_dir, to)?,
        BenchCommand::RemoteCache { remote, target } => {
            let work = bench_dir("kiln-bench-remote-")?;
            crate::bench::remote::remote_cache(&s.recipes_dir, work.path(), remote, target, s.jobs)?
        }
        BenchCommand::Fleet {
            hosts,
            roms,
            samples,
        } => bench_fleet(s, *hosts, roms, *samples)?,
        BenchCommand::Archive { tree: Some(dir) } => {
            let work = tempfile::tempdir().context("creating the benchmark's work directory")?;
            crate::bench::archive::run(dir, work.path(), s.jobs)?
        }
        BenchCommand::Archive { tree: None } => {
            let (_store, _tree, _digest, root, work) = linux_image_tree(s)?;
            crate::bench::archive::run(&root, work.path(), s.jobs)?
        }
        BenchCommand::Modules => {
            let (store, tree, digest, root, work) = linux_image_tree(s)?;
            let release = crate::steps::modules::depmod::resolve_release("", &tree)
                .context("the linux-image source has no single lib/modules/<release>")?;
            let input = crate::bench::modules::Input {
                store: &store,
                kernel: Output::Tree { digest },
                package_root: &root,
                kernel_release: &release,
                work: work.path(),
                threads: s.jobs,
            };
            crate::bench::modules::run(&input)?
        }
    };
    println!("{table}");
    Ok(ExitCode::SUCCESS)
}

/// A scratch directory under the system's temporary directory, removed
/// when dropped.
fn bench_dir(prefix: &str) -> Result<tempfile::TempDir> {
    tempfile::Builder::new()
        .prefix(prefix)
        .tempdir_in(std::env::temp_dir())
        .context("creating a bench directory")
}

fn bench_ipxe(s: &Settings) -> Result<String> {
    let tree = s.source_overrides.get("ipxe").context(
        "bench ipxe times make on a checkout: give one with --source ipxe=PATH or KILN_SOURCE_IPXE",
    )?;
    let recipes = recipe::load(&s.recipes_dir, &s.vars)?;
    let targets = recipes
        .targets
        .get("stage1")
        .and_then(|r| r.ipxe.as_ref())
        .and_then(|i| i.targets.get("x86_64"))
        .context("no x86_64 targets in the stage1 recipe's [ipxe]")?
        .iter()
        .map(|t| t.make_target())
        .collect();
    let work = bench_dir("kiln-bench-ipxe-")?;
    let setup = crate::bench::ipxe::Setup {
        recipes: &s.recipes_dir,
        tree,
        targets,
        jobs: s.jobs,
    };
    crate::bench::ipxe::run(&setup, work.path())
}

fn bench_fleet(s: &Settings, hosts: usize, roms: &[String], samples: usize) -> Result<String> {
    let tree = s.source_overrides.get("ipxe").context(
        "bench fleet times make on a checkout: give one with --source ipxe=PATH or KILN_SOURCE_IPXE",
    )?;
    let work = bench_dir("kiln-bench-fleet-")?;
    let setup = crate::bench::fleet::Setup {
        recipes: &s.recipes_dir,
        tree,
        hosts,
        roms: roms.to_vec(),
        samples: samples.max(1),
        jobs: s.jobs,
    };
    crate::bench::fleet::run(&setup, work.path())
}

/// The pinned linux-image package unpacked into a scratch directory (the
/// archive and modules benchmarks work on it): store, tree and its digest,
/// the unpacked root, and the scratch directory that holds it.
type PackageTree = (Store, Tree, Digest, PathBuf, tempfile::TempDir);

fn linux_image_tree(s: &Settings) -> Result<PackageTree> {
    let (store, digest) = deb_tree_digest(s, "linux-image")?;
    let tree = store.tree(&digest)?;
    let work = store.scratch("bench")?;
    let root = work.path().join("tree");
    eprintln!(
        "materializing the linux-image tree ({} entries)…",
        tree.entries.len()
    );
    store.materialize(&tree, &root)?;
    Ok((store, tree, digest, root, work))
}
