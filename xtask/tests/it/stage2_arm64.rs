//! The arm64 stage2 set end to end: the `stage2-arm64` recipe's
//! cross-compiled kernel, UKI and UEFI-only ISO, and `modules-arm64` for
//! Debian's arm64 kernel, each booted under `qemu-system-aarch64 -M virt`
//! (TCG): the kernel by QEMU's own loader, the media through AAVMF.
//!
//! The module's name sorts after `ci_repro`, whose first run fills the
//! shared cache with these artifacts while other tests start.

use std::path::{Path, PathBuf};

use crate::common::*;
use kiln::arch::Arch;
use kiln::archive::{fat, pe::PeImage};

const KERNEL: &str = "stage2/arm64/stage2_vmlinuz";
const INITRAMFS: &str = "stage2/arm64/stage2_initramfs.cpio.gz";
const UKI: &str = "stage2/arm64/stage2.efi";
const ISO: &str = "stage2/arm64/stage2.iso";
const CMDLINE: &str = "console=ttyAMA0,115200 panic=-1";

/// `boot-test --arch arm64` with `args` (and `vars`), one guest at a time;
/// returns its stdout.
fn boot(args: &[&str], vars: &[&str]) -> String {
    let _one_at_a_time = one_guest_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let mut cmd = kiln(&recipes, &dir.path().join("output"), &shared_cache());
    for var in vars {
        cmd.args(["--var", var]);
    }
    cmd.arg("boot-test").args(args);
    cmd.args(["--arch", "arm64", "--timeout", "400"]);
    String::from_utf8_lossy(&run_ok(&mut cmd).stdout).into_owned()
}

/// The stage2-arm64 recipe built into a fresh output directory.
fn built() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let out = dir.path().join("output");
    run_ok(kiln(&recipes, &out, &shared_cache()).args(["build", "stage2-arm64"]));
    (dir, out)
}

#[test]
fn the_arm64_kernel_boots_its_embedded_initramfs_on_the_virt_board() {
    if !qemu_arm64_available() {
        return;
    }
    let text = boot(&["stage2"], &[]);
    assert!(text.contains("boot test passed"), "{text}");
    assert!(text.contains("interfaces eth0"), "virtio-net: {text}");
}

#[test]
fn the_arm64_set_is_arm64_efi_applications_on_a_uefi_only_iso() {
    let (dir, out) = built();
    for name in [KERNEL, INITRAMFS, UKI, ISO] {
        assert_eq!(manifest_entry(&out, name)["arch"], "arm64", "{name}");
    }
    for name in [KERNEL, UKI] {
        let bytes = std::fs::read(out.join(name)).unwrap();
        let pe = PeImage::parse(&bytes).unwrap();
        assert_eq!(pe.headers.machine, Arch::Arm64.pe_machine(), "{name}");
    }
    let uki_bytes = std::fs::read(out.join(UKI)).unwrap();
    let uki = PeImage::parse(&uki_bytes).unwrap();
    assert_eq!(uki.section_data(".cmdline").unwrap(), CMDLINE.as_bytes());
    let release = kiln::steps::uki::kernel_release(&std::fs::read(out.join(KERNEL)).unwrap());
    assert_eq!(
        uki.section_data(".uname").unwrap(),
        release.unwrap().as_bytes()
    );
    // UEFI only: no isolinux, the ESP's boot file is BOOTAA64.EFI.
    let listing = iso_listing(&out.join(ISO), dir.path());
    assert!(
        !listing.iter().any(|p| p.contains("isolinux")),
        "{listing:?}"
    );
    let esp = iso_file(&out.join(ISO), "boot/efiboot.img", dir.path());
    let (_, files) = fat::read_image(&esp).unwrap();
    let names: Vec<&str> = files.iter().map(|f| f.path.as_str()).collect();
    assert_eq!(names, ["EFI/BOOT/BOOTAA64.EFI"]);
    assert_eq!(files[0].data, uki_bytes);
}

/// Every path on an ISO, through xorriso's own reader.
fn iso_listing(iso: &Path, work: &Path) -> Vec<String> {
    let out = std::process::Command::new("xorriso")
        .args(["-indev"])
        .arg(iso)
        .args(["-find", "/", "-exec", "lsdl"])
        .current_dir(work)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split('\'').nth(1).map(str::to_string))
        .collect()
}

/// A file out of an ISO, through xorriso.
fn iso_file(iso: &Path, path: &str, work: &Path) -> Vec<u8> {
    let dest = work.join(path.replace('/', "_"));
    let out = std::process::Command::new("xorriso")
        .args(["-osirrox", "on", "-indev"])
        .arg(iso)
        .args(["-extract", &format!("/{path}")])
        .arg(&dest)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    std::fs::read(&dest).unwrap()
}

#[test]
fn an_arm64_initramfs_change_relinks_without_recompiling() {
    if !qemu_arm64_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let out = dir.path().join("output");
    // New on every run: the shared cache must not have seen it.
    let release = format!("arm64-relinked-{}", unique());
    let var = format!("release={release}");
    let plan = run_ok(
        kiln(&recipes, &out, &shared_cache())
            .args(["--var", &var])
            .args(["plan", KERNEL]),
    );
    let plan = String::from_utf8_lossy(&plan.stdout);
    let misses: Vec<&str> = plan
        .lines()
        .filter(|l| l.starts_with("miss"))
        .map(|l| l[22..].trim())
        .collect();
    assert_eq!(
        misses,
        [
            "initramfs stage2/arm64/stage2_initramfs.cpio.gz",
            "kernel link stage2/arm64/stage2_vmlinuz"
        ],
        "{plan}"
    );
    let text = boot(&["stage2"], &[&var]);
    assert!(
        text.contains(&format!("banner `Kiln {release} initramfs`")),
        "the relinked kernel did not boot the new initramfs: {text}"
    );
}

#[test]
fn the_arm64_uki_boots_from_a_fat_drive_on_aavmf() {
    if qemu_arm64_available() {
        let text = boot(&["stage2-uki"], &[]);
        assert!(
            text.contains("boot test passed") && text.contains("(AAVMF)"),
            "{text}"
        );
        assert!(
            text.contains(&format!("guest cmdline `{CMDLINE}`")),
            "{text}"
        );
    }
}

#[test]
fn the_arm64_iso_boots_as_a_cd_on_aavmf() {
    if qemu_arm64_available() {
        let text = boot(&["stage2-iso"], &[]);
        assert!(
            text.contains("boot test passed") && text.contains("(AAVMF)"),
            "{text}"
        );
        assert!(
            text.contains(&format!("guest cmdline `{CMDLINE}`")),
            "{text}"
        );
    }
}

#[test]
fn arm64_modules_from_a_second_initrd_bring_up_virtio_net_in_debians_kernel() {
    if qemu_arm64_available() {
        let text = boot(&["modules"], &[]);
        assert!(
            text.contains("boot test passed") && text.contains("KILN-MODPROBE-NEW-INTERFACES"),
            "{text}"
        );
    }
}
