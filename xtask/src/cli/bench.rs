//! `bench`: which benchmark, and the inputs it needs (the pinned
//! linux-image tree, an iPXE checkout); the timing is `crate::bench`'s.

use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Subcommand;

use super::session::deb_tree_digest;
use super::Settings;
use crate::recipe;
use crate::store::{Digest, Output, Store, Tree};

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
    Kernel {
        /// `arm64`: the stage2-arm64 recipe's cross-compiled kernel.
        #[arg(long, value_enum, default_value_t = crate::arch::Arch::DEFAULT)]
        arch: crate::arch::Arch,
    },
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
    /// Fuzz the readers of outside bytes (archives, packages, images, ROMs,
    /// tree manifests, action records) for SECONDS each; crashes are saved
    /// under output/fuzz/<reader>/ (keep them in xtask/tests/data/fuzz/).
    Fuzz {
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// The random seed (the same seed, the same cases).
        #[arg(long, default_value_t = 1)]
        seed: u64,
    },
    /// Per-host ROMs for a generated inventory: Kiln (one compile + patching)
    /// vs a full `make` per host and ROM model, with util/catrom.pl for a
    /// combined ROM (sampled, scaled to the fleet), and vs re-linking one
    /// tree per host. Needs `--source ipxe=PATH`.
    Fleet {
        /// Hosts in the generated inventory.
        #[arg(long, default_value_t = 500)]
        hosts: usize,
        /// ROMs every host gets: stage1's targets (`bin/808610d3.rom`) or
        /// combined ROMs (`efi-virtio.rom`).
        #[arg(long = "rom", default_values_t = ["efi-virtio.rom".to_string(), "bin/15b31003.mrom".to_string()])]
        roms: Vec<String>,
        /// Full makes timed per ROM model (each takes minutes).
        #[arg(long, default_value_t = 1)]
        samples: usize,
    },
    /// Authenticode signatures for a fleet's EFI files: Kiln's signer vs
    /// `sbsign` per file, two at a time; the first and last file each writes
    /// must pass sbverify.
    Sign {
        /// Hosts in the fleet (one file each).
        #[arg(long, default_value_t = 500)]
        hosts: usize,
        /// The EFI file each host gets a copy of (with a section naming it).
        #[arg(
            long,
            value_name = "FILE",
            default_value = "output/stage1/x86_64/ipxe.efi"
        )]
        efi: std::path::PathBuf,
    },
}

pub fn bench(s: &Settings, c: &BenchCommand) -> Result<ExitCode> {
    let table = match c {
        BenchCommand::Kernel { arch } => {
            // Its own empty cache: the full build must start from nothing.
            let work = bench_dir("kiln-bench-kernel-")?;
            crate::bench::kernel::run(&s.recipes_dir, work.path(), s.jobs, *arch)?
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
        BenchCommand::Fuzz { seconds, seed } => {
            crate::bench::fuzz::run(*seconds, *seed, &s.output_dir.join("fuzz"))?
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
        BenchCommand::Sign { hosts, efi } => {
            let work = bench_dir("kiln-bench-sign-")?;
            crate::bench::sign::sign(efi, (*hosts).max(1), work.path())?
        }
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
    let recipes = s.recipes()?;
    let targets = recipes
        .ipxe("stage1")?
        .targets
        .get(&crate::arch::Arch::X86_64)
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
    let recipes = s.recipes()?;
    let ipxe = recipes.ipxe("stage1")?;
    let roms = roms
        .iter()
        .map(|name| fleet_rom(ipxe, name))
        .collect::<Result<Vec<_>>>()?;
    let work = bench_dir("kiln-bench-fleet-")?;
    let setup = crate::bench::fleet::Setup {
        recipes: &s.recipes_dir,
        tree,
        hosts,
        roms,
        samples: samples.max(1),
        jobs: s.jobs,
    };
    crate::bench::fleet::run(&setup, work.path())
}

/// A `--rom` of `bench fleet`: one of stage1's x86_64 targets, or one of its
/// combined ROMs (made by make as its images, then chained).
fn fleet_rom(ipxe: &recipe::Ipxe, name: &str) -> Result<crate::bench::fleet::FleetRom> {
    let x86 = crate::arch::Arch::X86_64;
    if let Some(c) = ipxe
        .combined
        .iter()
        .find(|c| c.file == name && c.arch == x86)
    {
        return Ok(crate::bench::fleet::FleetRom {
            name: name.to_string(),
            make: c.images.iter().map(|t| t.make_target()).collect(),
            combined: Some(c.pad_to),
        });
    }
    let targets = ipxe
        .targets
        .get(&x86)
        .map(Vec::as_slice)
        .unwrap_or_default();
    let Some(t) = targets
        .iter()
        .find(|t| t.matches(name) && t.kind() == "rom")
    else {
        bail!("`{name}` is neither an x86_64 ROM target of stage1 nor one of its combined ROMs");
    };
    Ok(crate::bench::fleet::FleetRom {
        name: t.make_target(),
        make: vec![t.make_target()],
        combined: None,
    })
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
