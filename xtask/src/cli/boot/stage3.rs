//! `boot-test stage3`: the ROM updater in dry-run mode beside real cards.

use std::path::Path;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use super::BootTestArgs;
use crate::cli::build::build_targets;
use crate::cli::Settings;
use crate::steps::roms;
use crate::verify::boot::{self, BootSpec};

/// The cards (vendor, device) a host's ROM archive has a ROM for: its
/// `etc/kiln/roms.conf`, which replaces the image's own table.
fn host_rom_table(archive: &Path) -> Result<Vec<(u16, u16)>> {
    let bytes = fs_err::read(archive).with_context(|| format!("reading {}", archive.display()))?;
    let entries =
        crate::archive::newc::read_archive(&crate::archive::compress::decompress_all(&bytes)?)
            .with_context(|| format!("reading {}", archive.display()))?;
    let table = entries
        .iter()
        .find(|e| e.name == roms::TABLE)
        .with_context(|| format!("{} has no {}", archive.display(), roms::TABLE))?;
    Ok(roms::table_cards(&String::from_utf8_lossy(&table.data)))
}

/// `stage3`: the ROM updater in dry-run mode on two cards, a virtio-net
/// and an e1000e, carrying QEMU's own ROMs. Passes when the updater ran to
/// the end without a failure, said something about each card (a plan, or
/// "current", for the e1000e exactly when the ROM table in use, the
/// recipe's or the host's, has a ROM for it), and the flashing tools ran in
/// the guest; prints what it would have done.
pub fn boot_stage3(s: &Settings, a: &BootTestArgs) -> Result<ExitCode> {
    if a.initrd.is_some() {
        bail!("`--initrd` is not for `stage3`: `--host` adds a host's ROM archive");
    }
    let recipes = s.recipes()?;
    let stage3 = recipes
        .targets
        .get("stage3")
        .with_context(|| format!("no recipe `stage3` in {}", s.recipes_dir.display()))?;
    let (Some(kernel), Some(initramfs)) = (&stage3.kernel, &stage3.initramfs) else {
        bail!("the `stage3` recipe needs a [kernel] and an [initramfs]");
    };
    let mut targets = vec![kernel.output.clone()];
    let host_roms = a
        .host
        .as_ref()
        .map(|h| crate::plan::host_roms_artifact(&initramfs.output, h));
    targets.extend(host_roms.clone());
    build_targets(s, &targets)?;
    let nics = boot::nics(&["virtio-net-pci", "e1000e"]);
    let mut append = "console=ttyS0 panic=-1 kiln.dry_run=1 kiln.then=poweroff".to_string();
    if let Some(host) = &a.host {
        // A host's ROMs are refused on a machine with another name.
        append.push_str(&format!(" epoxy.hostname={host}"));
    }
    let initrd = host_roms.map(|r| s.output_dir.join(r));
    let mut spec = BootSpec::stage3(
        &s.output_dir.join(&kernel.output),
        initrd.as_deref(),
        &append,
        nics,
    );
    spec.timeout = std::time::Duration::from_secs(a.timeout);
    let outcome = boot::boot(&spec)?;
    let lines = boot::rom_lines(&outcome.serial);
    for l in &lines {
        println!("{l}");
    }
    let said = |what: &str| outcome.serial.iter().any(|l| l.contains(what));
    if lines.len() != 2 {
        bail!("the updater reported {} cards, QEMU has 2", lines.len());
    }
    let e1000e = lines
        .iter()
        .find(|l| l.contains(" 8086:10d3 "))
        .context("the updater said nothing about the e1000e (8086:10d3)")?;
    let table = match &initrd {
        Some(archive) => host_rom_table(archive)?,
        None => stage3.roms.iter().map(|r| (r.vendor, r.device)).collect(),
    };
    if table.contains(&(0x8086, 0x10d3)) {
        if !(e1000e.starts_with("KILN-ROM PLAN ") || e1000e.starts_with("KILN-ROM CURRENT ")) {
            bail!("the ROM table has a ROM for the e1000e (8086:10d3), but the updater said `{e1000e}`");
        }
    } else if !e1000e.starts_with("KILN-ROM SKIP ") {
        bail!(
            "the ROM table has no ROM for the e1000e (8086:10d3), but the updater said `{e1000e}`"
        );
    }
    if !said("KILN-TOOL mstflint: mstflint") || !said("KILN-TOOL flashrom: flashrom") {
        bail!("mstflint or flashrom did not run in the guest (a missing library?)");
    }
    if !said("KILN-STAGE3-DONE status=0") {
        bail!("the updater failed: {}", outcome.marker);
    }
    println!(
        "boot test passed in {:.1}s: dry run of the ROM updater on 2 cards",
        outcome.elapsed.as_secs_f64()
    );
    Ok(ExitCode::SUCCESS)
}
