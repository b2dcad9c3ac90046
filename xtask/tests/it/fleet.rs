//! The stage1 fleet: one iPXE compile per platform, every host's files
//! patched from it. With an upstream tree (`KILN_SOURCE_IPXE=PATH`; skipped
//! with a printed reason without one): each patched file is byte-identical
//! to a full `make` of that host's script, and patched files boot in QEMU
//! with the host's identity. Inventory and size errors need no tree.

use std::path::{Path, PathBuf};

use crate::common::*;

/// Five hosts whose scripts differ in length and content; two ROM models
/// each, like ePoxy's machines, but the first carries all three models.
const FIVE: &str = "\
hostname,ipv4,gateway,dns,ipv6,roms
mlab1-lga0t.example.net,192.0.2.11/26,192.0.2.1,192.0.2.53 198.51.100.53,2001:db8::11/64,1af41000.rom 808610d3.rom 15b31003.mrom 1af41000.efirom efi-virtio.rom
mlab2-lga0t.example.net,192.0.2.12/26,192.0.2.1,192.0.2.53,,1af41000.rom 15b31003.mrom
mlab3-lga0t.example.net,192.0.2.13/26,192.0.2.1,192.0.2.53,,808610d3.rom 15b31003.mrom
mlab1-syd1.measurement-lab.example.org,203.0.113.130/25,203.0.113.129,203.0.113.2,,1af41000.rom 808610d3.rom
a.example.net,198.51.100.250/30,198.51.100.249,9.9.9.9,,1af41000.rom 15b31003.mrom
";

/// The host made in full for the comparison (each host costs an iPXE
/// compile per platform): the longest script (IPv6, two resolvers) with
/// the virtio, Intel and Mellanox ROMs: every format and ROM model.
const COMPARED: &str = "mlab1-lga0t.example.net";

/// ePoxy's layout for Mellanox ROMs, which its updater downloads by model
/// and hostname.
const EPOXY_LAYOUT: &str = r#"
[[ipxe.layout]]
file = "15b31003.mrom"
model = "ConnectX-3"
path = "stage1_mlxrom/{{rom_version}}/{{model}}/{{hostname}}.mrom"
"#;

fn with_layout(recipes: &Path, layout: &str) {
    let stage1 = recipes.join("stage1.toml");
    let mut text = std::fs::read_to_string(&stage1).unwrap();
    text.push_str(layout);
    std::fs::write(stage1, text).unwrap();
}

#[test]
fn patched_files_are_byte_identical_to_a_full_make() {
    let Some(_tree) = ipxe_tree() else { return };
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    with_layout(&recipes, EPOXY_LAYOUT);
    let hosts = dir.path().join("five.csv");
    std::fs::write(&hosts, FIVE).unwrap();
    let out = dir.path().join("output");
    let mut cmd = kiln(&recipes, &out, &shared_cache());
    cmd.args(["ipxe", "--arch", "x86_64", "--hosts"])
        .arg(&hosts)
        .arg("--check-make")
        .args(["--only", COMPARED]);
    let stdout = String::from_utf8_lossy(&run_ok(&mut cmd).stdout).into_owned();
    let identical = stdout
        .lines()
        .filter(|l| l.starts_with("identical"))
        .count();
    // ipxe.efi, snponly.efi, undionly.kpxe, ipxe.lkrn, three legacy ROMs,
    // the EFI ROM, and the combined ROM against util/catrom.pl.
    assert_eq!(identical, 9, "{stdout}");
    assert!(!stdout.contains("DIFFERENT"), "{stdout}");
    for ext in [
        "efi",
        "kpxe",
        "lkrn",
        ".rom",
        "mrom",
        "efirom",
        "efi-virtio.rom",
    ] {
        assert!(
            stdout
                .lines()
                .any(|l| l.starts_with("identical") && l.contains(ext)),
            "no {ext} compared: {stdout}"
        );
    }
    // Each file carries its own host's script and no other host's.
    let host = out.join("stage1/hosts").join(COMPARED);
    let lkrn = std::fs::read(host.join("ipxe.lkrn")).unwrap();
    let efi = std::fs::read(host.join("ipxe.efi")).unwrap();
    assert!(contains_bytes(&efi, b"set kiln_ip 192.0.2.11\n"));
    assert!(!contains_bytes(&efi, b"192.0.2.13"));
    assert!(
        !out.join("stage1/hosts/mlab3-lga0t.example.net").exists(),
        "--only builds only the hosts named"
    );
    assert!(
        !contains_bytes(&lkrn, b"set kiln_ip"),
        "the lkrn payload is compressed"
    );
    let rom = format!("stage1/hosts/{COMPARED}/808610d3.rom");
    assert_eq!(manifest_entry(&out, &rom)["kind"], "rom");
    // Mellanox's own tool reads the recipe's `rom_version` from the recipe's
    // and the host's .mrom (stamped after patching, and after the full make).
    // The layout put the host's .mrom where ePoxy's updater looks for it.
    assert!(!host.join("15b31003.mrom").exists());
    let mrom = format!("stage1_mlxrom/3.4.800/ConnectX-3/{COMPARED}.mrom");
    assert_eq!(manifest_entry(&out, &mrom)["kind"], "rom");
    assert!(stdout.contains(&format!("identical  {mrom}")), "{stdout}");
    if let Some(said) = qrom(&out.join(&mrom)) {
        assert_eq!(said, "Rom Info: type=PXE version=3.4.800");
    }
}

#[test]
fn a_layout_that_puts_two_hosts_files_on_one_path_is_refused_naming_both() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    with_layout(
        &recipes,
        &EPOXY_LAYOUT.replace("{{hostname}}.mrom", "latest.mrom"),
    );
    let out = dir.path().join("output");
    let err = run_err(kiln(&recipes, &out, &dir.path().join("cache")).args(["plan", "stage1"]));
    assert!(
        err.contains(
            "hosts `mlab1-lga0t.example.net` (15b31003.mrom) and `mlab2-lga0t.example.net` (15b31003.mrom) \
             would both write `stage1_mlxrom/3.4.800/ConnectX-3/latest.mrom`"
        ) && err.contains("stage1.toml:"),
        "{err}"
    );
    with_layout(
        &recipes,
        "[[ipxe.layout]]\nfile = \"808610d3.rom\"\npath = \"roms/{{site}}/{{hostname}}.rom\"\n",
    );
    let err = run_err(kiln(&recipes, &out, &dir.path().join("cache")).args(["plan", "stage1"]));
    assert!(
        err.contains("layout of 808610d3.rom: unknown variable `site`"),
        "{err}"
    );
}

#[test]
fn a_script_change_reruns_only_patching() {
    let Some(_tree) = ipxe_tree() else { return };
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let out = dir.path().join("output");
    run_ok(kiln(&recipes, &out, &shared_cache()).args(["ipxe"]));
    // New on every run: the shared cache must not have seen it.
    let changed = format!("retrying in 6 [{}]", unique());
    edit(
        &dir.path().join("ipxe/stage1.ipxe"),
        "retrying in 5",
        &changed,
    );
    let run = run_ok(kiln(&recipes, &out, &shared_cache()).args(["ipxe"]));
    let stderr = String::from_utf8_lossy(&run.stderr);
    assert!(!stderr.contains("running ipxe x86_64 bin"), "{stderr}");
    assert!(stderr.contains("iPXE files patched per host"), "{stderr}");
    let lkrn = std::fs::read(out.join("stage1/hosts/mlab1-lga0t.example.net/ipxe.efi")).unwrap();
    assert!(contains_bytes(&lkrn, changed.as_bytes()));
}

/// Hosts whose addresses are QEMU's user network (an x86_64 one and an
/// arm64 one), added to the copied inventory, so their static settings
/// work in the guest.
fn with_guest_host(dir: &Path) -> PathBuf {
    let recipes = copy_recipes(dir);
    let inventory = recipes.join("hosts.toml");
    let mut text = std::fs::read_to_string(&inventory).unwrap();
    text.push_str(
        "\n[[host]]\nhostname = \"qemu-guest.example.net\"\nipv4 = \"10.0.2.42/24\"\n\
         gateway = \"10.0.2.2\"\ndns = [\"10.0.2.3\"]\n\
         roms = [\"1af41000.rom\", \"efi-virtio.rom\"]\n\
         \n[[host]]\nhostname = \"qemu-arm-guest.example.net\"\nipv4 = \"10.0.2.43/24\"\n\
         gateway = \"10.0.2.2\"\ndns = [\"10.0.2.3\"]\narch = \"arm64\"\n",
    );
    std::fs::write(&inventory, text).unwrap();
    recipes
}

/// `boot-test <what>` (the test and its options) for guest host `host`.
fn boot_host(what: &str, host: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let recipes = with_guest_host(dir.path());
    let mut cmd = kiln(&recipes, &dir.path().join("output"), &shared_cache());
    let _one_at_a_time = one_guest_at_a_time();
    cmd.arg("boot-test")
        .args(what.split_whitespace())
        .args(["--host", host, "--timeout", "300"]);
    String::from_utf8_lossy(&run_ok(&mut cmd).stdout).into_owned()
}

#[test]
fn a_patched_lkrn_rom_and_combined_rom_chain_to_stage2_with_the_hosts_identity() {
    if ipxe_tree().is_none() || !qemu_available() {
        return;
    }
    for what in [
        "stage1-lkrn",
        "stage1-rom",
        "stage1-combined --firmware bios",
        "stage1-combined --firmware uefi",
    ] {
        let text = boot_host(what, "qemu-guest.example.net");
        // iPXE under UEFI passes the image's name as the kernel's first
        // argument: the combined ROM's EFI image ran under OVMF, its
        // legacy image under SeaBIOS.
        let efi_stub = text.contains("guest cmdline `stage2_vmlinuz ");
        assert_eq!(efi_stub, what.ends_with("uefi"), "{what}: {text}");
        assert!(
            text.contains("Kiln stage1: qemu-guest.example.net static address 10.0.2.42"),
            "{what}: {text}"
        );
        assert!(
            text.contains("epoxy.ip=10.0.2.42::10.0.2.2:255.255.255.0:qemu-guest.example.net:")
                && text.contains("epoxy.hostname=qemu-guest.example.net"),
            "{what}: {text}"
        );
    }
}

/// An arm64 host's patched ipxe.efi and EFI ROM under AAVMF: its static
/// address, then the arm64 stage2 with the host's identity on its cmdline.
#[test]
fn an_arm64_hosts_ipxe_boots_the_arm64_stage2_with_its_identity_under_aavmf() {
    if ipxe_tree().is_none() || !qemu_arm64_available() {
        return;
    }
    for (what, file) in [
        ("stage1-efi --arch arm64", "ipxe.efi"),
        ("stage1-efirom --arch arm64", "1af41000.efirom"),
    ] {
        let text = boot_host(what, "qemu-arm-guest.example.net");
        let host = "qemu-arm-guest.example.net";
        assert!(
            text.contains(&format!("stage1/hosts/{host}/{file} -> network"))
                && text.contains(&format!("Kiln stage1: {host} static address 10.0.2.43"))
                && text.contains("arm64/stage2_vmlinuz; saw `KILN-STAGE2-READY`"),
            "{what}: {text}"
        );
        assert!(
            text.contains(&format!(
                "epoxy.ip=10.0.2.43::10.0.2.2:255.255.255.0:{host}:"
            )) && text.contains(&format!("epoxy.hostname={host}")),
            "{what}: {text}"
        );
    }
}

#[test]
fn a_host_script_too_long_is_refused_naming_the_host_and_size() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    edit(
        &recipes.join("stage1.toml"),
        "script_size = 3072",
        "script_size = 2000",
    );
    let hosts = dir.path().join("long.json");
    let long_name = format!("{}.example.net", ["a"; 100].join("."));
    std::fs::write(
        &hosts,
        format!(
            r#"[{{"hostname": "{long_name}", "ipv4": "192.0.2.11/26", "gateway": "192.0.2.1", "dns": ["192.0.2.53"]}}]"#
        ),
    )
    .unwrap();
    let out = dir.path().join("output");
    let mut cmd = kiln(&recipes, &out, &shared_cache());
    let err = run_err(cmd.args(["ipxe", "--hosts"]).arg(&hosts));
    assert!(
        err.contains(&format!("host `{long_name}`"))
            && err.contains("long.json:1:")
            && err.contains("bytes; the embedded script holds 2000"),
        "{err}"
    );
    assert!(!out.exists(), "nothing may be written");
}

#[test]
fn a_host_asking_for_a_rom_the_recipe_does_not_build_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let inventory = recipes.join("hosts.toml");
    let text = std::fs::read_to_string(&inventory).unwrap().replacen(
        "roms = [\"15b31003.mrom\", \"808610d3.rom\"]",
        "roms = [\"10ec8139.rom\"]",
        1,
    );
    std::fs::write(&inventory, text).unwrap();
    let err = run_err(
        kiln(&recipes, &dir.path().join("output"), &shared_cache()).args(["plan", "stage1"]),
    );
    assert!(
        err.contains("host `mlab1-lga0t.example.net`")
            && err.contains("`roms` names 10ec8139.rom")
            && err.contains("1af41000.rom, 808610d3.rom, 15b31003.mrom"),
        "{err}"
    );
}

#[test]
fn an_unknown_host_for_only_is_refused_with_a_suggestion() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let err = run_err(
        kiln(&recipes, &dir.path().join("output"), &shared_cache()).args([
            "ipxe",
            "--only",
            "mlab1-lga0t.example.ne",
        ]),
    );
    assert!(
        err.contains("not an x86_64 host") && err.contains("mlab1-lga0t.example.net"),
        "{err}"
    );
}
