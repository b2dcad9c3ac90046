//! The ISO step: a hybrid ISO 9660 image that boots as a CD and as a USB
//! disk, on BIOS (isolinux → the kernel) and UEFI (an El Torito EFI image,
//! a FAT file system Kiln writes itself, holding the UKI as
//! `EFI/BOOT/BOOTX64.EFI`). arm64 ISOs are UEFI only (`BOOTAA64.EFI`, no
//! isolinux). `xorriso` lays out the ISO.
//!
//! Determinism: the staging tree has fixed modes and every mtime at the
//! epoch, and xorriso runs with `SOURCE_DATE_EPOCH`, which (xorriso(1),
//! ENVIRONMENT) fixes the volume dates and UUID, derives the GPT disk GUID
//! from them and sets every file date to its mtime. `-r` records uid/gid 0
//! and normalized permissions, so neither the user nor the umask shows.

use std::collections::BTreeMap;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use anyhow::{Context, Result};
use serde::Serialize;

use super::{set_mtimes, Slot, Step, StepContext};
use crate::arch::Arch;
use crate::archive::fat::{self, FatOptions};
use crate::store::Output;
use crate::tools;

const ISOLINUX_BIN: &str = "usr/lib/ISOLINUX/isolinux.bin";
const ISOHDPFX_BIN: &str = "usr/lib/ISOLINUX/isohdpfx.bin";
const LDLINUX_C32: &str = "usr/lib/syslinux/modules/bios/ldlinux.c32";

/// Where the kernel sits on the ISO; isolinux passes it as `BOOT_IMAGE=`
/// (see `recipe::media::MAX_CMDLINE`).
pub const KERNEL_PATH: &str = "boot/vmlinuz";
/// The El Torito EFI image on the ISO.
pub const EFI_IMAGE_PATH: &str = "boot/efiboot.img";
/// The ESP's serial number: fixed, where mkfs.fat would pick one from the
/// clock ("KILN" in ASCII).
pub const ESP_VOLUME_ID: u32 = 0x4b49_4c4e;

/// Input: the unpacked isolinux package (x86_64).
pub const ISOLINUX: Slot = Slot("isolinux");
/// Input: the unpacked syslinux-common package (x86_64).
pub const SYSLINUX: Slot = Slot("syslinux");
/// Input: the bzImage isolinux boots (x86_64).
pub const KERNEL: Slot = Slot("kernel");
/// Input: the UKI UEFI boots.
pub const UKI: Slot = Slot("uki");
/// Output: the hybrid ISO image.
pub const ISO: Slot = Slot("iso");

#[derive(Debug, Clone, Serialize)]
pub struct BuildIso {
    #[serde(skip)]
    pub name: String,
    /// x86_64: BIOS and UEFI; arm64: UEFI only.
    pub arch: Arch,
    pub cmdline: String,
    pub volume_id: String,
    pub epoch: u64,
}

impl Step for BuildIso {
    fn kind(&self) -> &'static str {
        "iso"
    }
    fn version(&self) -> u32 {
        // 2: UEFI-only ISOs for arm64.
        2
    }
    fn formats(&self) -> &'static [crate::archive::Format] {
        &[crate::archive::fat::FORMAT]
    }
    fn label(&self) -> String {
        format!("iso {}", self.name)
    }
    fn tools(&self) -> &'static [&'static str] {
        &["xorriso"]
    }

    fn run(&self, ctx: &StepContext, scratch: &Path) -> Result<BTreeMap<String, Output>> {
        let root = scratch.join("iso-root");
        self.stage(ctx, &root)?;
        if self.bios() {
            let mbr = scratch.join("isohdpfx.bin");
            let mbr_bytes = ctx.tree_file(ISOLINUX, ISOHDPFX_BIN, "the isolinux package")?;
            write(&mbr, &mbr_bytes, 0o644)?;
        }
        let out = scratch.join("image.iso");
        let mut cmd = tools::clean_command("xorriso", scratch, self.epoch)?;
        cmd.current_dir(scratch).args(self.xorriso_args());
        // Per-host ISOs build in parallel: one log each.
        let log = ctx.log(&format!("iso-{}", self.name.replace('/', "_")));
        tools::run_logged(cmd, &log)?;
        let (digest, size) = ctx
            .store
            .put_file(&out)
            .context("xorriso did not write the ISO")?;
        Ok(BTreeMap::from([(
            ISO.into(),
            Output::File { digest, size },
        )]))
    }
}

impl BuildIso {
    /// Whether the ISO has the BIOS path (isolinux).
    fn bios(&self) -> bool {
        self.arch == Arch::X86_64
    }

    /// `xorriso -as mkisofs` as Debian's live images call it: isolinux as
    /// the BIOS El Torito entry and MBR, the FAT image as the EFI entry and
    /// as a GPT partition so firmware finds it on a USB disk too. Without
    /// the BIOS path the EFI entry is the only one (Debian's arm64 images
    /// put the FAT image in a partition of their own as well).
    fn xorriso_args(&self) -> Vec<String> {
        let staged_esp = format!("iso-root/{EFI_IMAGE_PATH}");
        let mut args = vec!["-as", "mkisofs", "-o", "image.iso", "-r", "-J"];
        args.extend(["-V", &self.volume_id]);
        if self.bios() {
            args.extend(["-isohybrid-mbr", "isohdpfx.bin"]);
            args.extend(["-b", "isolinux/isolinux.bin", "-c", "isolinux/boot.cat"]);
            args.extend(["-no-emul-boot", "-boot-load-size", "4", "-boot-info-table"]);
            args.extend(["-eltorito-alt-boot", "-e", EFI_IMAGE_PATH, "-no-emul-boot"]);
            args.push("-isohybrid-gpt-basdat");
        } else {
            args.extend(["-c", "boot/boot.cat", "-e", EFI_IMAGE_PATH, "-no-emul-boot"]);
            let esp = ["-append_partition", "2", "0xef"];
            args.extend(esp);
            args.push(&staged_esp);
        }
        args.push("iso-root");
        args.into_iter().map(String::from).collect()
    }

    /// The ISO's file tree: isolinux and its config, the kernel, the EFI
    /// image; fixed modes, every mtime at the epoch.
    fn stage(&self, ctx: &StepContext, root: &Path) -> Result<()> {
        let uki = fs_err::read(ctx.file(UKI)?).context("reading the UKI")?;
        let esp = esp_image(uki, self.arch, self.epoch).context("writing the EFI boot image")?;
        write(&root.join(EFI_IMAGE_PATH), &esp, 0o644)?;
        if self.bios() {
            let isolinux = ctx.tree_file(ISOLINUX, ISOLINUX_BIN, "the isolinux package")?;
            let ldlinux = ctx.tree_file(SYSLINUX, LDLINUX_C32, "the syslinux-common package")?;
            let kernel = fs_err::read(ctx.file(KERNEL)?).context("reading the kernel")?;
            write(&root.join("isolinux/isolinux.bin"), &isolinux, 0o644)?;
            write(&root.join("isolinux/ldlinux.c32"), &ldlinux, 0o644)?;
            write(
                &root.join("isolinux/isolinux.cfg"),
                isolinux_cfg(&self.cmdline).as_bytes(),
                0o644,
            )?;
            write(&root.join(KERNEL_PATH), &kernel, 0o644)?;
        }
        set_mtimes(
            root,
            SystemTime::UNIX_EPOCH + Duration::from_secs(self.epoch),
        )
    }
}

/// A FAT file system whose removable-media boot file (`EFI/BOOT/BOOTX64.EFI`,
/// `BOOTAA64.EFI`) is `efi`: an ISO's El Torito EFI image, or a drive for a
/// boot test.
pub fn esp_image(efi: Vec<u8>, arch: Arch, epoch: u64) -> Result<Vec<u8>> {
    fat::write_image(
        &BTreeMap::from([(arch.efi_boot_file().to_string(), efi)]),
        &FatOptions {
            volume_label: "KILN_EFI".into(),
            volume_id: ESP_VOLUME_ID,
            epoch,
        },
    )
}

/// Boots the kernel at once, on the first serial port and the screen.
/// `SERIAL` must be the first directive (syslinux.cfg(5)).
fn isolinux_cfg(cmdline: &str) -> String {
    format!(
        "SERIAL 0 115200\nDEFAULT stage2\nPROMPT 0\nTIMEOUT 0\nLABEL stage2\n  KERNEL /{KERNEL_PATH}\n  APPEND {cmdline}\n"
    )
}

fn write(path: &Path, bytes: &[u8], mode: u32) -> Result<()> {
    if let Some(dir) = path.parent() {
        fs_err::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        fs_err::set_permissions(dir, std::fs::Permissions::from_mode(0o755))?;
    }
    fs_err::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    fs_err::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("setting the mode of {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn isolinux_config_starts_with_the_serial_directive() {
        let cfg = isolinux_cfg("console=ttyS0 epoxy.ip=x");
        assert!(cfg.starts_with("SERIAL 0 115200\n"));
        assert!(cfg.contains("  KERNEL /boot/vmlinuz\n  APPEND console=ttyS0 epoxy.ip=x\n"));
    }
}
