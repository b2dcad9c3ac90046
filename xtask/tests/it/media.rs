//! Stage2 media end to end: the UKI read back section by section, the
//! hybrid ISO's contents, per-host variants, determinism of the media
//! steps, bad input, and QEMU boots of each medium on SeaBIOS and OVMF.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use crate::common::*;
use kiln::archive::{fat, pe::PeImage};
use kiln::steps::{Step, StepContext};
use kiln::store::{Digest, Output, Store};

const UKI: &str = "stage2/stage2.efi";
const ISO: &str = "stage2/stage2.iso";
const KERNEL: &str = "stage2/stage2_vmlinuz";
const INITRAMFS: &str = "stage2/stage2_initramfs.cpio.gz";
const CMDLINE: &str = "console=tty0 console=ttyS0,115200 panic=-1";
const HOST: &str = "mlab2-lga0t.example.net";
const HOST_ARGS: &str = "epoxy.ip=192.0.2.12::192.0.2.1:255.255.255.192:mlab2-lga0t.example.net:eth0::192.0.2.53: epoxy.hostname=mlab2-lga0t.example.net";

/// Builds the stage2 media into a fresh output directory (shared cache).
fn built() -> (tempfile::TempDir, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let out = dir.path().join("output");
    run_ok(kiln(&recipes, &out, &shared_cache()).args(["build", "stage2"]));
    (dir, out)
}

fn read(out: &Path, name: &str) -> Vec<u8> {
    std::fs::read(out.join(name)).unwrap_or_else(|e| panic!("{name}: {e}"))
}

#[test]
fn uki_sections_hold_the_kernel_initramfs_and_cmdline() {
    let (_dir, out) = built();
    let efi = read(&out, UKI);
    let image = PeImage::parse(&efi).unwrap();
    let section = |n: &str| image.section_data(n).unwrap_or_else(|| panic!("no {n}"));
    let kernel = read(&out, KERNEL);
    assert_eq!(section(".linux"), kernel.as_slice());
    assert_eq!(section(".initrd"), read(&out, INITRAMFS).as_slice());
    assert_eq!(section(".cmdline"), CMDLINE.as_bytes());
    let release = kiln::steps::uki::kernel_release(&kernel).unwrap();
    assert_eq!(section(".uname"), release.as_bytes());
    let osrel = String::from_utf8(section(".osrel").to_vec()).unwrap();
    assert!(
        osrel.contains("ID=kiln\n") && osrel.contains("IMAGE_ID=\"stage2\""),
        "{osrel}"
    );
    assert!(image.checksum_ok(), "the PE checksum was not updated");
    let names: Vec<&str> = image.sections.iter().map(|s| s.name.as_str()).collect();
    assert!(names.starts_with(&[".text"]), "{names:?}");
    assert!(
        names.ends_with(&[".osrel", ".cmdline", ".uname", ".initrd", ".linux"]),
        "{names:?}"
    );
    let entry = manifest_entry(&out, UKI);
    assert_eq!(entry["kind"], "uki");
    assert!(
        entry["inputs"]["stub"].is_string() && entry["inputs"]["kernel"].is_string(),
        "{entry}"
    );
    assert_eq!(manifest_entry(&out, ISO)["kind"], "iso");
    assert_eq!(
        manifest_entry(&out, "stage2/stage1to2.ipxe")["kind"],
        "script"
    );
}

#[test]
fn iso_holds_the_kernel_and_an_esp_with_the_uki_and_hosts_get_their_own() {
    let (dir, out) = built();
    let iso = out.join(ISO);
    assert_eq!(
        iso_file(&iso, "boot/vmlinuz", dir.path()),
        read(&out, KERNEL)
    );
    let cfg = String::from_utf8(iso_file(&iso, "isolinux/isolinux.cfg", dir.path())).unwrap();
    assert!(cfg.contains(&format!("APPEND {CMDLINE}\n")), "{cfg}");
    let esp = iso_file(&iso, "boot/efiboot.img", dir.path());
    let (header, files) = fat::read_image(&esp).unwrap();
    assert_eq!(header.volume_id, kiln::steps::iso::ESP_VOLUME_ID);
    assert_eq!(files.len(), 1);
    assert_eq!(files[0].path, "EFI/BOOT/BOOTX64.EFI");
    assert_eq!(files[0].data, read(&out, UKI));
    assert_eq!(
        files[0].modified,
        (2023, 11, 14, 22, 13, 20),
        "not the recipe's epoch"
    );

    let host_iso = out.join(format!("stage2/hosts/{HOST}/stage2.iso"));
    let esp = iso_file(&host_iso, "boot/efiboot.img", dir.path());
    let (_, files) = fat::read_image(&esp).unwrap();
    let uki = PeImage::parse(&files[0].data).unwrap();
    let cmdline = String::from_utf8(uki.section_data(".cmdline").unwrap().to_vec()).unwrap();
    assert_eq!(cmdline, format!("{CMDLINE} {HOST_ARGS}"));
    let cfg = String::from_utf8(iso_file(&host_iso, "isolinux/isolinux.cfg", dir.path())).unwrap();
    assert!(cfg.contains(HOST_ARGS), "{cfg}");
    let script = String::from_utf8(read(&out, "stage2/stage1to2.ipxe")).unwrap();
    assert!(
        script.contains(&format!(
            "kernel http://boot.example.net/stage2/stage2_vmlinuz {CMDLINE} epoxy.ip=${{ip}}"
        )),
        "{script}"
    );
}

/// A step's inputs, as the manifest recorded them, from the shared store.
fn inputs_of(store: &Store, out: &Path, artifact: &str) -> BTreeMap<String, Output> {
    let entry = manifest_entry(out, artifact);
    let mut inputs = BTreeMap::new();
    for (name, digest) in entry["inputs"].as_object().unwrap() {
        let digest: Digest = digest.as_str().unwrap().parse().unwrap();
        let output = if store.has_tree(&digest) {
            Output::Tree { digest }
        } else {
            let size = std::fs::metadata(store.verified_blob(&digest).unwrap())
                .unwrap()
                .len();
            Output::File { digest, size }
        };
        inputs.insert(name.clone(), output);
    }
    inputs
}

/// Runs `step` for real (no cache lookup) in a scratch directory under
/// `scratch` and returns its output digest.
fn run_step(
    step: &dyn Step,
    store: &Store,
    inputs: &BTreeMap<String, Output>,
    scratch: &Path,
    output: &str,
) -> Digest {
    std::fs::create_dir_all(scratch).unwrap();
    let ctx = StepContext::new(store, inputs.clone(), scratch.to_path_buf(), "test".into());
    match &ctx.run_step(step, scratch).unwrap()[output] {
        Output::File { digest, .. } => *digest,
        Output::Tree { .. } => panic!("{output} is a tree"),
    }
}

#[test]
fn uki_and_iso_steps_rerun_in_other_directories_give_identical_bytes() {
    let (dir, out) = built();
    let store = Store::open(&shared_cache()).unwrap();
    let uki_step = kiln::steps::uki::AssembleUki {
        name: UKI.into(),
        arch: kiln::arch::Arch::X86_64,
        cmdline: CMDLINE.into(),
        os_release: kiln::steps::uki::os_release("stage2", None),
        initrd: true,
    };
    let inputs = inputs_of(&store, &out, UKI);
    let a = run_step(&uki_step, &store, &inputs, &dir.path().join("a"), "efi");
    let b = run_step(
        &uki_step,
        &store,
        &inputs,
        &dir.path().join("b/much/deeper"),
        "efi",
    );
    assert_eq!(a, b, "two UKI assemblies differ");

    let iso_step = kiln::steps::iso::BuildIso {
        name: ISO.into(),
        arch: kiln::arch::Arch::X86_64,
        cmdline: CMDLINE.into(),
        volume_id: "KILN_STAGE2".into(),
        epoch: 1700000000,
    };
    let inputs = inputs_of(&store, &out, ISO);
    let a = run_step(&iso_step, &store, &inputs, &dir.path().join("c"), "iso");
    std::thread::sleep(std::time::Duration::from_millis(1100));
    let b = run_step(
        &iso_step,
        &store,
        &inputs,
        &dir.path().join("d/deeper/still"),
        "iso",
    );
    assert_eq!(a, b, "two ISO builds differ");
    let built: Digest = manifest_entry(&out, ISO)["sha256"]
        .as_str()
        .unwrap()
        .parse()
        .unwrap();
    assert_eq!(a, built, "the rerun differs from the build's ISO");
}

#[test]
fn a_host_with_an_invalid_address_fails_naming_host_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    edit(
        &recipes.join("hosts.toml"),
        "192.0.2.12/26",
        "192.0.2.312/26",
    );
    let out = dir.path().join("output");
    let err = run_err(kiln(&recipes, &out, &shared_cache()).args(["build", "stage2"]));
    assert!(
        err.contains("hosts.toml:")
            && err.contains(&format!(
                "host `{HOST}`: `ipv4` `192.0.2.312` is not an IPv4 address"
            )),
        "{err}"
    );
    assert!(!out.exists(), "a failed load wrote output");
}

#[test]
fn a_cmdline_that_does_not_fit_fails_naming_the_recipe_line() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let stage2 = recipes.join("stage2.toml");
    let long = format!("cmdline = \"{CMDLINE} {}\"", "x".repeat(2100));
    edit(&stage2, &format!("cmdline = \"{CMDLINE}\""), &long);
    let err = run_err(
        kiln(&recipes, &dir.path().join("output"), &shared_cache()).args(["plan", "stage2"]),
    );
    let bytes = format!("the cmdline is {} bytes", CMDLINE.len() + 1 + 2100);
    assert!(
        err.contains("stage2.toml:") && err.contains(&bytes),
        "{err}"
    );
}

#[test]
fn a_stub_source_without_the_stub_fails_and_keeps_the_last_good_iso() {
    let (dir, out) = built();
    let good = read(&out, ISO);
    let fake = dir.path().join("not-a-stub");
    std::fs::create_dir_all(fake.join("usr/share/doc")).unwrap();
    std::fs::write(fake.join("usr/share/doc/README"), "nothing here").unwrap();
    let recipes = dir.path().join("recipes");
    let mut cmd = kiln(&recipes, &out, &shared_cache());
    cmd.arg("--source")
        .arg(format!("systemd-boot-efi={}", fake.display()))
        .args(["build", "stage2"]);
    let err = run_err(&mut cmd);
    assert!(
        err.contains("has no usr/lib/systemd/boot/efi/linuxx64.efi.stub")
            && err.contains("systemd-boot-efi package"),
        "{err}"
    );
    assert_eq!(
        read(&out, ISO),
        good,
        "the failed build touched the last good ISO"
    );
    let leftovers: Vec<String> = files(&out)
        .into_iter()
        .filter(|f| f.contains(".tmp"))
        .collect();
    assert!(
        leftovers.is_empty(),
        "partial files in output/: {leftovers:?}"
    );
}

/// `boot-test` with `args`; returns its stdout.
fn boot(args: &[&str]) -> String {
    boot_test(args, &[])
}

/// Asserts that a boot test passed on `firmware` and, when given, that the
/// guest's /proc/cmdline ended with `cmdline`.
fn assert_booted(text: &str, firmware: &str, cmdline: Option<&str>) {
    assert!(
        text.contains("boot test passed") && text.contains(&format!("({firmware})")),
        "{text}"
    );
    if let Some(c) = cmdline {
        assert!(
            text.contains(&format!("{c}`")),
            "guest cmdline is not `…{c}`: {text}"
        );
    }
}

#[test]
fn iso_boots_as_a_cd_on_seabios() {
    if qemu_available() {
        let expected = format!("guest cmdline `BOOT_IMAGE=/boot/vmlinuz {CMDLINE}");
        assert_booted(&boot(&["stage2-iso"]), "SeaBIOS", Some(&expected));
    }
}

// The ISO as a CD and the UKI from a FAT drive on OVMF boot in
// `signing::secure_boot_runs_the_signed_uki_and_iso_…`, signed and with
// Secure Boot enforcing: one boot each proves both.

#[test]
fn iso_boots_as_a_usb_disk_on_ovmf() {
    if qemu_available() {
        let text = boot(&["stage2-iso", "--firmware", "uefi", "--usb"]);
        assert_booted(&text, "OVMF", Some(&format!("guest cmdline `{CMDLINE}")));
    }
}

#[test]
fn a_host_iso_gives_the_guest_its_templated_epoxy_ip() {
    if qemu_available() {
        let text = boot(&["stage2-iso", "--host", HOST]);
        assert_booted(&text, "SeaBIOS", Some(&format!("{CMDLINE} {HOST_ARGS}")));
    }
}

#[test]
fn a_hosts_own_vars_reach_its_kernel_arguments() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let stage2 = recipes.join("stage2.toml");
    edit(
        &stage2,
        "epoxy.hostname={{hostname}}\"",
        "epoxy.hostname={{hostname}} epoxy.project={{project}} epoxy.mac={{mac}}\"",
    );
    // The recipe's default, for hosts without their own.
    edit(
        &stage2,
        "release = \"stage2\"",
        "release = \"stage2\"\nproject = \"none\"",
    );
    let inventory = recipes.join("hosts.toml");
    edit(
        &inventory,
        "roms = [\"15b31003.mrom\", \"808610d3.rom\"]",
        "roms = [\"15b31003.mrom\", \"808610d3.rom\"]\nmac = [\"52:54:00:0B:00:11\"]\nvars = { project = \"mlab-oti\" }",
    );
    edit(
        &inventory,
        "\"efi-virtio.rom\"]",
        "\"efi-virtio.rom\"]\nmac = [\"52:54:00:0b:00:12\"]",
    );
    let loaded = kiln::recipe::load(&recipes, &Default::default()).unwrap();
    let hosts = &loaded.targets["stage2"].media.hosts;
    let cmdline = |i: usize| hosts[i].cmdline.as_str();
    assert!(
        cmdline(0).ends_with("epoxy.project=mlab-oti epoxy.mac=52:54:00:0b:00:11"),
        "{}",
        cmdline(0)
    );
    assert!(
        cmdline(1).ends_with("epoxy.project=none epoxy.mac=52:54:00:0b:00:12"),
        "{}",
        cmdline(1)
    );
    // A MAC the other host already has is refused, naming both.
    edit(&inventory, "52:54:00:0b:00:12", "52:54:00:0b:00:11");
    let err = run_err(
        kiln(&recipes, &dir.path().join("output"), &shared_cache()).args(["plan", "stage2"]),
    );
    assert!(
        err.contains("hosts.toml:")
            && err.contains(&format!("host `{HOST}`: `mac` 52:54:00:0b:00:11 is already used by host `mlab1-lga0t.example.net`")),
        "{err}"
    );
}
