//! `boot-test stage2-iso` and `boot-test stage2-uki`: boot the media a
//! recipe built, through their own boot loaders, on SeaBIOS or OVMF (from
//! the pinned `ovmf` deb), and check that the guest got the kernel
//! arguments the recipe baked in.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use super::build::{build_targets, deb_source_file, BootTestArgs, Firmware};
use super::Settings;
use crate::archive::fat::{self, FatOptions};
use crate::recipe::{self, Media};
use crate::steps::iso::{EFI_BOOT_FILE, ESP_VOLUME_ID};
use crate::verify::boot::{self, BootSpec, Medium};

/// The recipe whose media the boot tests use.
const RECIPE: &str = "stage2";
/// Where the ovmf deb keeps the combined code + vars image.
const OVMF_FD: &str = "usr/share/ovmf/OVMF.fd";

pub fn boot_media(s: &Settings, a: &BootTestArgs) -> Result<ExitCode> {
    let recipes = recipe::load(&s.recipes_dir, &s.vars)?;
    let media = &recipes
        .targets
        .get(RECIPE)
        .with_context(|| format!("no recipe `{RECIPE}` in {}", s.recipes_dir.display()))?
        .media;
    let work = tempfile::tempdir().context("creating a temporary directory")?;
    let (medium, firmware, expected) = match a.what.as_str() {
        "stage2-iso" => iso_medium(s, a, media)?,
        "stage2-uki" => uki_medium(s, a, media, work.path())?,
        other => bail!("unknown boot test `{other}`"),
    };
    let firmware_path = match firmware {
        Firmware::Uefi => Some(deb_source_file(s, "ovmf", OVMF_FD)?),
        Firmware::Bios => None,
    };
    let spec = BootSpec::media(medium, firmware_path.as_deref(), a.timeout);
    let outcome = boot::boot(&spec)?;
    let guest = boot::guest_cmdline(&outcome.serial).unwrap_or_default();
    if !guest.ends_with(expected.as_str()) {
        bail!("the guest booted with `{guest}`, but the medium carries `{expected}`");
    }
    println!(
        "boot test passed in {:.1}s ({firmware}): saw `{}`; guest cmdline `{guest}`",
        outcome.elapsed.as_secs_f64(),
        outcome.marker
    );
    Ok(ExitCode::SUCCESS)
}

/// The stage2 ISO (or a host's) as a CD or, with `--usb`, a USB stick.
fn iso_medium(s: &Settings, a: &BootTestArgs, media: &Media) -> Result<(Medium, Firmware, String)> {
    let iso = media
        .iso
        .as_ref()
        .with_context(|| format!("the `{RECIPE}` recipe has no [iso]"))?;
    let (artifact, cmdline) = match &a.host {
        Some(name) => {
            let host = media
                .hosts
                .iter()
                .find(|h| &h.hostname == name)
                .with_context(|| unknown_host(media, name))?;
            let artifact = crate::plan::host_artifact(&iso.output, name);
            (artifact, host.cmdline.clone())
        }
        None => (iso.output.clone(), media.cmdline.clone()),
    };
    build_targets(s, std::slice::from_ref(&artifact))?;
    let path = s.output_dir.join(&artifact);
    let medium = if a.usb {
        Medium::Usb(path)
    } else {
        Medium::Cdrom(path)
    };
    Ok((medium, a.firmware.unwrap_or(Firmware::Bios), cmdline))
}

/// The UKI as `EFI/BOOT/BOOTX64.EFI` on a FAT drive Kiln writes: what a
/// machine's ESP holds. UEFI only.
fn uki_medium(
    s: &Settings,
    a: &BootTestArgs,
    media: &Media,
    work: &Path,
) -> Result<(Medium, Firmware, String)> {
    if a.firmware == Some(Firmware::Bios) {
        bail!("a UKI boots on UEFI only: drop `--firmware bios`");
    }
    let uki = media
        .uki
        .as_ref()
        .with_context(|| format!("the `{RECIPE}` recipe has no [uki]"))?;
    build_targets(s, std::slice::from_ref(&uki.output))?;
    let efi = std::fs::read(s.output_dir.join(&uki.output))
        .with_context(|| format!("reading {}", uki.output))?;
    let image = fat::write_image(
        &BTreeMap::from([(EFI_BOOT_FILE.to_string(), efi)]),
        &FatOptions {
            volume_label: "KILN_ESP".into(),
            volume_id: ESP_VOLUME_ID,
            epoch: 0,
        },
    )?;
    let path: PathBuf = work.join("esp.img");
    std::fs::write(&path, image).with_context(|| format!("writing {}", path.display()))?;
    Ok((Medium::Disk(path), Firmware::Uefi, media.cmdline.clone()))
}

fn unknown_host(media: &Media, name: &str) -> String {
    let names: Vec<&str> = media.hosts.iter().map(|h| h.hostname.as_str()).collect();
    let hint = recipe::diag::nearest(name, names.iter().copied())
        .map(|n| format!(" (did you mean `{n}`?)"))
        .unwrap_or_default();
    format!("no host `{name}` in the `{RECIPE}` recipe's inventory{hint}")
}
