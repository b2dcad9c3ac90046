//! Stage1 end to end: iPXE built from an upstream tree (given with
//! `KILN_SOURCE_IPXE=PATH`; skipped with a printed reason without one),
//! reproducible across directories, pinned by tree digest, and proven by
//! full chain boots: iPXE → DHCP → stage1to2.ipxe → stage2's kernel.
//! Recipe errors need no tree and always run.

use std::path::Path;

use crate::common::*;

/// `xtask` on a fresh copy of the recipes, output in `dir`, shared cache.
fn kiln_in(dir: &Path) -> std::process::Command {
    let recipes = copy_recipes(dir);
    kiln(&recipes, &dir.join("output"), &shared_cache())
}

fn machine(pe: &[u8]) -> u16 {
    kiln::archive::pe::PeImage::parse(pe)
        .unwrap()
        .headers
        .machine
}

#[test]
fn every_target_builds_and_each_efi_is_for_its_architecture() {
    let Some(_tree) = ipxe_tree() else { return };
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("output");
    run_ok(kiln_in(dir.path()).args(["build", "stage1"]));
    for file in [
        "ipxe.efi",
        "snponly.efi",
        "undionly.kpxe",
        "ipxe.lkrn",
        "1af41000.rom",
        "808610d3.rom",
        "15b31003.mrom",
    ] {
        assert!(
            out.join("stage1/x86_64").join(file).is_file(),
            "{file} missing"
        );
    }
    let x86 = std::fs::read(out.join("stage1/x86_64/ipxe.efi")).unwrap();
    assert_eq!(
        machine(&x86),
        0x8664,
        "x86_64 ipxe.efi is not an AMD64 image"
    );
    let arm = std::fs::read(out.join("stage1/arm64/ipxe.efi")).unwrap();
    assert_eq!(
        machine(&arm),
        0xaa64,
        "arm64 ipxe.efi is not an AArch64 image"
    );
    let rom = std::fs::read(out.join("stage1/x86_64/1af41000.rom")).unwrap();
    assert_eq!(&rom[..2], &[0x55, 0xaa], "not a PCI option ROM");
    let checksum = rom[..usize::from(rom[2]) * 512]
        .iter()
        .fold(0u8, |a, b| a.wrapping_add(*b));
    assert_eq!(checksum, 0, "the ROM's bytes do not sum to zero");
    // The recipe's `rom_version`, as Mellanox's tool and a PCI header read it.
    if let Some(said) = qrom(&out.join("stage1/x86_64/15b31003.mrom")) {
        assert_eq!(said, "Rom Info: type=PXE version=3.4.800");
    }
    let revision = kiln::archive::optrom::pci_identity(&rom).unwrap().revision;
    assert_eq!(
        kiln::archive::rom_version::RomVersion::from_revision(revision).to_string(),
        "3.4.800"
    );
    assert_eq!(
        manifest_entry(&out, "stage1/x86_64/1af41000.rom")["kind"],
        "rom"
    );
    assert_eq!(
        manifest_entry(&out, "stage1/arm64/ipxe.efi")["kind"],
        "ipxe"
    );
    assert_eq!(
        manifest_entry(&out, "stage1/arm64/ipxe.efi")["arch"],
        "arm64"
    );
}

/// `tree` as a gzipped tarball at `file` with one top directory, as
/// GitHub's archives are, leaving out the paths `exclude`s match.
fn tarball(tree: &Path, file: &Path, exclude: &[&str]) {
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    let status = std::process::Command::new("tar")
        .arg("-czf")
        .arg(file)
        .arg("--exclude=.git")
        .args(exclude.iter().map(|e| format!("--exclude={e}")))
        .args(["--transform=s,^\\.,ipxe-pinned,", "-C"])
        .arg(tree)
        .arg(".")
        .status()
        .unwrap();
    assert!(status.success());
}

/// Clean builds of stage1 in other directories and environments are the
/// repro test's (`the_default_targets_reproduce_under_every_variation`).
#[test]
fn a_tarball_pinned_by_tree_digest_builds_what_the_checkout_builds() {
    let Some(tree) = ipxe_tree() else { return };
    let dir = tempfile::tempdir().unwrap();
    let served = dir.path().join("serve/ipxe.tar.gz");
    tarball(&tree, &served, &[]);
    let server = kiln::verify::http::serve(&dir.path().join("serve")).unwrap();
    let digest = run_ok(
        kiln_in(&dir.path().join("a"))
            .args(["sources", "digest"])
            .arg(&tree),
    );
    let pin = String::from_utf8_lossy(&digest.stdout).trim().to_string();
    let recipes = dir.path().join("a/recipes");
    let sources = std::fs::read_to_string(recipes.join("sources.toml")).unwrap();
    let start = sources.find("[ipxe]").unwrap();
    let end = start + sources[start..].find("\n\n").unwrap();
    let pinned = format!(
        "{}[ipxe]\nurl = \"http://127.0.0.1:{}/ipxe.tar.gz\"\n{pin}{}",
        &sources[..start],
        server.port,
        &sources[end..]
    );
    std::fs::write(recipes.join("sources.toml"), pinned).unwrap();
    let out = dir.path().join("a/output");
    let kiln_a = |cache: &Path| {
        let mut cmd = kiln(&recipes, &out, cache);
        cmd.env_remove("KILN_SOURCE_IPXE");
        cmd
    };
    // From the URL, into an empty cache: the download must happen.
    let fetched = run_ok(kiln_a(&dir.path().join("cache")).args(["sources", "fetch", "ipxe"]));
    let said = String::from_utf8_lossy(&fetched.stdout);
    assert!(said.contains("fetched  fetch http"), "{said}");
    let log = server.log.lock().unwrap().join(", ");
    assert!(log.contains("GET /ipxe.tar.gz 200"), "{log}");
    // The same tarball given locally, and the checkout: one tree, one build.
    run_ok(
        kiln_a(&shared_cache())
            .arg("--source")
            .arg(format!("ipxe={}", served.display()))
            .args(["ipxe", "--target", "ipxe.lkrn"]),
    );
    let checkout = dir.path().join("b");
    run_ok(
        kiln_in(&checkout)
            .arg("--source")
            .arg(format!("ipxe={}", tree.display()))
            .args(["ipxe", "--target", "ipxe.lkrn"]),
    );
    let lkrn = "stage1/x86_64/ipxe.lkrn";
    assert_eq!(
        std::fs::read(out.join(lkrn)).unwrap(),
        std::fs::read(checkout.join("output").join(lkrn)).unwrap()
    );
    // A tarball of another tree is refused before anything is built.
    let other = dir.path().join("other.tar.gz");
    tarball(&tree, &other, &["README.md"]);
    let err = run_err(
        kiln_a(&shared_cache())
            .arg("--source")
            .arg(format!("ipxe={}", other.display()))
            .args(["ipxe", "--target", "ipxe.lkrn"]),
    );
    let pinned_hex = pin
        .trim_start_matches("tree_sha256 = \"")
        .trim_end_matches('"');
    assert!(
        err.contains("checksum mismatch for source `ipxe`")
            && err.contains(&format!("expected sha256 {pinned_hex}"))
            && err.contains("This tarball is not the tree sources.toml pins for [ipxe]"),
        "{err}"
    );
    // Another directory is built as given, with a warning.
    let elsewhere = dir.path().join("elsewhere");
    std::fs::create_dir_all(elsewhere.join("src")).unwrap();
    std::fs::write(elsewhere.join("src/Makefile"), "all:\n").unwrap();
    let plan = run_ok(
        kiln_a(&shared_cache())
            .arg("--source")
            .arg(format!("ipxe={}", elsewhere.display()))
            .args(["plan", "stage1"]),
    );
    let warned = String::from_utf8_lossy(&plan.stderr);
    assert!(
        warned.contains("is not the tree sources.toml pins"),
        "{warned}"
    );
}

/// `boot-test <what>` (the test and its options) with more global `args`;
/// returns its stdout.
fn chain_boot(what: &str, args: &[&str]) -> String {
    let _one_at_a_time = one_guest_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = kiln_in(dir.path());
    cmd.args(args)
        .arg("boot-test")
        .args(what.split_whitespace())
        .args(["--timeout", "300"]);
    String::from_utf8_lossy(&run_ok(&mut cmd).stdout).into_owned()
}

pub(crate) fn assert_chained(text: &str, file: &str) {
    assert!(
        text.contains("boot test passed")
            && text.contains(&format!(
                "{file} -> network -> stage1to2.ipxe -> stage2_vmlinuz"
            ))
            && text.contains("GET /stage2/stage1to2.ipxe 200, GET /stage2/stage2_vmlinuz 200"),
        "{text}"
    );
}

#[test]
fn ipxe_lkrn_chains_to_stage2_over_http() {
    if ipxe_tree().is_some() && qemu_available() {
        let text = chain_boot("stage1-lkrn", &[]);
        assert_chained(&text, "ipxe.lkrn");
        assert!(
            text.contains("epoxy.ip=10.0.2.15::10.0.2.2:255.255.255.0:"),
            "not QEMU's DHCP lease: {text}"
        );
    }
}

#[test]
fn a_static_address_from_the_recipe_replaces_dhcp() {
    if ipxe_tree().is_some() && qemu_available() {
        let vars = [
            "--var",
            "ipv4_address=10.0.2.42",
            "--var",
            "ipv4_netmask=255.255.255.0",
            "--var",
            "ipv4_gateway=10.0.2.2",
            "--var",
            "dns1=10.0.2.3",
        ];
        let text = chain_boot("stage1-lkrn", &vars);
        assert_chained(&text, "ipxe.lkrn");
        assert!(
            text.contains("epoxy.ip=10.0.2.42::10.0.2.2:255.255.255.0:"),
            "{text}"
        );
    }
}

// ipxe.efi from a FAT drive under OVMF chains to stage2 in
// `signing::a_signed_ipxe_efi_chains_to_the_signed_kernel_under_secure_boot`,
// signed and with Secure Boot enforcing.

#[test]
fn a_virtio_net_option_rom_chains_to_stage2() {
    if ipxe_tree().is_some() && qemu_available() {
        assert_chained(&chain_boot("stage1-rom", &[]), "1af41000.rom");
    }
}

#[test]
fn a_patch_that_no_longer_applies_fails_by_name() {
    let Some(_tree) = ipxe_tree() else { return };
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = kiln_in(dir.path());
    let recipes = dir.path().join("recipes");
    let patches = dir.path().join("ipxe/patches");
    std::fs::create_dir_all(&patches).unwrap();
    std::fs::write(
        patches.join("0001-stale.patch"),
        "--- a/src/Makefile\n+++ b/src/Makefile\n@@ -1,1 +1,1 @@\n-this line is not in the Makefile\n+neither is this\n",
    )
    .unwrap();
    let stage1 = recipes.join("stage1.toml");
    let text = std::fs::read_to_string(&stage1).unwrap();
    let text = text.replace(
        "config = \"../ipxe/config\"",
        "config = \"../ipxe/config\"\npatches = \"../ipxe/patches\"",
    );
    std::fs::write(&stage1, text).unwrap();
    let err = run_err(cmd.args(["ipxe", "--target", "ipxe.lkrn"]));
    assert!(
        err.contains("patch 1 (0001-stale.patch) no longer applies"),
        "{err}"
    );
    assert!(
        err.contains("FAILED") || err.contains("hunk"),
        "patch's output is not shown: {err}"
    );
}

#[test]
fn a_patch_applies_to_the_copy_and_never_to_the_checkout_or_the_cache() {
    let Some(tree) = ipxe_tree() else { return };
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let cache = dir.path().join("cache");
    // A patch made against this tree: a comment line before the Makefile's first line.
    let first: Vec<String> = std::fs::read_to_string(tree.join("src/Makefile"))
        .unwrap()
        .lines()
        .take(3)
        .map(str::to_string)
        .collect();
    let mut patch = String::from(
        "--- a/src/Makefile\n+++ b/src/Makefile\n@@ -1,3 +1,4 @@\n+# patched by a Kiln test\n",
    );
    for l in &first {
        patch.push_str(&format!(" {l}\n"));
    }
    std::fs::create_dir_all(dir.path().join("ipxe/patches")).unwrap();
    std::fs::write(dir.path().join("ipxe/patches/0001-comment.patch"), patch).unwrap();
    let stage1 = recipes.join("stage1.toml");
    let text = std::fs::read_to_string(&stage1).unwrap().replace(
        "config = \"../ipxe/config\"",
        "config = \"../ipxe/config\"\npatches = \"../ipxe/patches\"",
    );
    std::fs::write(&stage1, text).unwrap();
    let digest = |cmd: &mut std::process::Command| String::from_utf8(run_ok(cmd).stdout).unwrap();
    let before = digest(
        kiln(&recipes, &dir.path().join("out"), &cache)
            .args(["sources", "digest"])
            .arg(&tree),
    );
    let build = || {
        let mut cmd = kiln(&recipes, &dir.path().join("out"), &cache);
        cmd.args(["ipxe", "--target", "ipxe.lkrn"]);
        let out = String::from_utf8(run_ok(&mut cmd).stdout).unwrap();
        assert!(
            out.contains("ipxe x86_64 bin (placeholder script)"),
            "{out}"
        );
    };
    build();
    let after = digest(
        kiln(&recipes, &dir.path().join("out"), &cache)
            .args(["sources", "digest"])
            .arg(&tree),
    );
    assert_eq!(before, after, "the build changed the operator's checkout");
    // A second build from the cached tree (a second patch changes its key)
    // must find it pristine: `--forward` refuses a patch already applied.
    // The second patch stops the compile at its first object, so proving
    // both applied costs no second full compile.
    let header = "src/include/compiler.h";
    let first = std::fs::read_to_string(tree.join(header)).unwrap();
    let mut stop = format!(
        "--- a/{header}\n+++ b/{header}\n@@ -1,2 +1,3 @@\n+#error \"stopped by a Kiln test\"\n"
    );
    for l in first.lines().take(2) {
        stop.push_str(&format!(" {l}\n"));
    }
    std::fs::write(dir.path().join("ipxe/patches/0002-stop.patch"), stop).unwrap();
    let err = run_err(kiln(&recipes, &dir.path().join("out"), &cache).args([
        "ipxe",
        "--target",
        "ipxe.lkrn",
    ]));
    assert!(
        err.contains("stopped by a Kiln test") && !err.contains("no longer applies"),
        "{err}"
    );
}

#[test]
fn a_script_variable_nobody_declares_fails_pointing_into_the_script() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = kiln_in(dir.path());
    let script = dir.path().join("ipxe/stage1.ipxe");
    let text = std::fs::read_to_string(&script)
        .unwrap()
        .replace("{{stage2_url}}/stage1to2", "{{stage2_ur}}/stage1to2");
    std::fs::write(&script, text).unwrap();
    let err = run_err(cmd.args(["plan", "stage1"]));
    assert!(
        err.contains("stage1.ipxe:")
            && err.contains("unknown variable `stage2_ur`")
            && err.contains("did you mean `stage2_url`"),
        "{err}"
    );
}

#[test]
fn a_missing_trust_certificate_fails_naming_the_recipe_line() {
    let dir = tempfile::tempdir().unwrap();
    let mut cmd = kiln_in(dir.path());
    let stage1 = dir.path().join("recipes/stage1.toml");
    let text = std::fs::read_to_string(&stage1).unwrap().replace(
        "config = \"../ipxe/config\"",
        "config = \"../ipxe/config\"\ntrust = [\"../ipxe/certs/missing-ca.pem\"]",
    );
    std::fs::write(&stage1, text).unwrap();
    let err = run_err(cmd.args(["plan", "stage1"]));
    assert!(
        err.contains("stage1.toml:") && err.contains("missing-ca.pem is not a file"),
        "{err}"
    );
}

#[test]
fn an_unknown_architecture_or_target_is_refused_with_the_choices() {
    let dir = tempfile::tempdir().unwrap();
    let err = run_err(kiln_in(dir.path()).args(["ipxe", "--arch", "riscv64"]));
    assert!(
        err.contains("invalid value 'riscv64' for '--arch <ARCH>'")
            && err.contains("[possible values: arm64, x86_64]"),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let err = run_err(kiln_in(dir.path()).args(["ipxe", "--target", "ipxe.usb"]));
    assert!(
        err.contains("`ipxe.usb` is not a x86_64 target") && err.contains("bin/ipxe.lkrn"),
        "{err}"
    );
}

/// arm64 iPXE (from a FAT drive, and as the virtio card's EFI ROM) under
/// AAVMF: DHCP, stage2's stage1to2.ipxe, which sends it on to the arm64
/// one, and the arm64 stage2 kernel over HTTP.
#[test]
fn arm64_ipxe_chains_to_the_arm64_stage2_under_aavmf() {
    if ipxe_tree().is_none() || !qemu_arm64_available() {
        return;
    }
    for (what, file) in [
        ("stage1-efi --arch arm64", "stage1/arm64/ipxe.efi"),
        ("stage1-efirom --arch arm64", "stage1/arm64/1af41000.efirom"),
    ] {
        let text = chain_boot(what, &[]);
        let chain = "network -> stage1to2.ipxe -> arm64/stage1to2.ipxe -> arm64/stage2_vmlinuz;";
        assert!(
            text.contains(&format!("{file} -> {chain}"))
                && text.contains("saw `KILN-STAGE2-READY`")
                && text.contains("Kiln stage1: chaining http://10.0.2.100/stage2/stage1to2.ipxe"),
            "{what}: {text}"
        );
        for request in [
            "GET /stage2/stage1to2.ipxe 200",
            "GET /stage2/arm64/stage1to2.ipxe 200",
            "GET /stage2/arm64/stage2_vmlinuz 200",
        ] {
            assert!(text.contains(request), "{what}: no `{request}`: {text}");
        }
        assert!(
            text.contains("console=ttyAMA0,115200 panic=-1 epoxy.ip="),
            "{what}: {text}"
        );
    }
}

#[test]
fn a_combined_rom_larger_than_the_cards_flash_fails_naming_it() {
    let Some(_tree) = ipxe_tree() else { return };
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    edit(
        &recipes.join("stage1.toml"),
        "pad_to = 524288",
        "max_size = 131072",
    );
    let out = dir.path().join("output");
    let mut cmd = kiln(&recipes, &out, &shared_cache());
    let err = run_err(cmd.args(["ipxe", "--target", "efi-virtio.rom"]));
    assert!(
        err.contains(
            "chaining bin/1af41000.rom + bin-x86_64-efi/1af41000.efirom into efi-virtio.rom for"
        ) && err.contains("more than the card's `max_size` 131072"),
        "{err}"
    );
    assert!(!out.join("stage1/x86_64/efi-virtio.rom").exists());
}
