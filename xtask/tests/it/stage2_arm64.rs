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

/// `boot-test --arch arm64` with `args` (and `vars`); returns its stdout.
fn boot(args: &[&str], vars: &[&str]) -> String {
    boot_test(&[args, &["--arch", "arm64"]].concat(), vars)
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
    let out = run_ok(
        std::process::Command::new("xorriso")
            .args(["-indev"])
            .arg(iso)
            .args(["-find", "/", "-exec", "lsdl"])
            .current_dir(work),
    );
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split('\'').nth(1).map(str::to_string))
        .collect()
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
    assert_eq!(
        plan_misses(&plan),
        [
            "initramfs stage2/arm64/stage2_initramfs.cpio.gz",
            "kernel link stage2/arm64/stage2_vmlinuz"
        ],
        "{}",
        String::from_utf8_lossy(&plan.stdout)
    );
    let text = boot(&["stage2"], &[&var]);
    assert!(
        text.contains(&format!("banner `Kiln {release} initramfs`")),
        "the relinked kernel did not boot the new initramfs: {text}"
    );
}

/// The UKI from a FAT drive, and the ISO as a CD.
#[test]
fn the_arm64_uki_and_iso_boot_on_aavmf() {
    if !qemu_arm64_available() {
        return;
    }
    for what in ["stage2-uki", "stage2-iso"] {
        let text = boot(&[what], &[]);
        assert!(
            text.contains("boot test passed") && text.contains("(AAVMF)"),
            "{what}: {text}"
        );
        assert!(
            text.contains(&format!("guest cmdline `{CMDLINE}`")),
            "{what}: {text}"
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

/// A freestanding static program for `gcc`'s target (no libc: a `write`
/// and an `exit` system call) that prints `text`.
fn static_program(dir: &Path, gcc: &str, arm64: bool, text: &str) -> Vec<u8> {
    let (nr, call) = match arm64 {
        true => ("x8", "svc 0"),
        false => ("rax", "syscall"),
    };
    let (a0, a1, a2) = match arm64 {
        true => ("x0", "x1", "x2"),
        false => ("rdi", "rsi", "rdx"),
    };
    let (nr_write, nr_exit) = if arm64 { (64, 93) } else { (1, 60) };
    let src = format!(
        r#"static const char msg[] = "{text}\n";
static long sys(long nr, long a, long b, long c) {{
    register long n asm("{nr}") = nr;
    register long x asm("{a0}") = a;
    register long y asm("{a1}") = b;
    register long z asm("{a2}") = c;
    asm volatile("{call}" : "+r"(x) : "r"(n), "r"(y), "r"(z) : "memory"{clobber});
    return x;
}}
void _start(void) {{
    sys({nr_write}, 1, (long)msg, sizeof msg - 1);
    sys({nr_exit}, 0, 0, 0);
    for (;;) {{}}
}}
"#,
        clobber = if arm64 { "" } else { ", \"rcx\", \"r11\"" },
    );
    let c = dir.join("agent.c");
    std::fs::write(&c, src).unwrap();
    let bin = dir.join(format!("agent-{gcc}"));
    run_ok(
        std::process::Command::new(gcc)
            .args(["-static", "-nostdlib", "-ffreestanding", "-O2", "-o"])
            .arg(&bin)
            .arg(&c),
    );
    std::fs::read(bin).unwrap()
}

/// `bytes` as `name` in a gzip'd tarball, as a release would ship it.
fn release_tarball(name: &str, bytes: &[u8]) -> Vec<u8> {
    let gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    let mut tar = tar::Builder::new(gz);
    let mut header = tar::Header::new_gnu();
    header.set_size(bytes.len() as u64);
    header.set_mode(0o755);
    header.set_cksum();
    tar.append_data(&mut header, name, bytes).unwrap();
    tar.into_inner().unwrap().finish().unwrap()
}

/// An installer-style initrd: a static arm64 binary from a `url` file and
/// the same from a release tarball's member, each at its path and mode;
/// the placed program runs (under user-mode QEMU). Another architecture's
/// binary is refused naming both.
#[test]
fn static_binaries_from_url_sources_land_at_their_path_and_mode() {
    if !prereq::program(
        "aarch64-linux-gnu-gcc",
        "apt-get install gcc-aarch64-linux-gnu, or run ci/setup",
    ) || !prereq::program(
        "qemu-aarch64-static",
        "apt-get install qemu-user-static, or run ci/setup",
    ) {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let agent = static_program(dir.path(), "aarch64-linux-gnu-gcc", true, "KILN-AGENT-RAN");
    let tarball = release_tarball("agent-1.0/bin/agent", &agent);
    let sha = |b: &[u8]| kiln::store::Digest::of_bytes(b).hex();
    let sources = format!(
        "\n[agent]\nurl = \"{}\"\nsha256 = \"{}\"\n\n[agent-release]\nurl = \"{}\"\nsha256 = \"{}\"\n",
        serve(agent.clone(), "agent"),
        sha(&agent),
        serve(tarball.clone(), "agent-1.0.tar.gz"),
        sha(&tarball)
    );
    let append = |file: &str, text: &str| {
        let path = recipes.join(file);
        let old = std::fs::read_to_string(&path).unwrap();
        std::fs::write(&path, old + text).unwrap();
    };
    append("sources.toml", &sources);
    append(
        "stage2-arm64.toml",
        "\n[[initramfs.files]]\nsource = \"agent\"\npath = \"usr/bin/kiln-agent\"\nmode = \"0755\"\n\n[[initramfs.files]]\nsource = \"agent-release\"\nmember = \"bin/agent\"\npath = \"opt/agent/agent\"\nmode = \"0700\"\n",
    );
    let out = dir.path().join("output");
    run_ok(kiln(&recipes, &out, &shared_cache()).args(["build", INITRAMFS]));
    let entries = archive_entries(&out.join(INITRAMFS));
    for (path, mode) in [("usr/bin/kiln-agent", 0o755), ("opt/agent/agent", 0o700)] {
        let e = entries
            .iter()
            .find(|e| e.name == path)
            .unwrap_or_else(|| panic!("{path} is not in the initramfs"));
        assert_eq!(e.mode, 0o100000 | mode, "{path}");
        assert_eq!(e.data, agent, "{path}");
    }
    // The placed bytes run: qemu-user, like the kernel, wants the x bit.
    let placed = dir.path().join("placed-agent");
    std::fs::write(&placed, &agent).unwrap();
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&placed, std::fs::Permissions::from_mode(0o755)).unwrap();
    let ran = std::process::Command::new("qemu-aarch64-static")
        .arg(&placed)
        .output()
        .unwrap();
    assert_eq!(String::from_utf8_lossy(&ran.stdout), "KILN-AGENT-RAN\n");

    // An x86_64 build where the recipe is arm64's: refused, naming both.
    let x86 = static_program(dir.path(), "gcc", false, "x86");
    let x86_source = format!(
        "\n[agent-x86]\nurl = \"{}\"\nsha256 = \"{}\"\n",
        serve(x86.clone(), "agent-x86"),
        sha(&x86)
    );
    append("sources.toml", &x86_source);
    append(
        "stage2-arm64.toml",
        "\n[[initramfs.files]]\nsource = \"agent-x86\"\npath = \"usr/bin/wrong\"\nmode = \"0755\"\n",
    );
    let err = run_err(kiln(&recipes, &out, &shared_cache()).args(["build", INITRAMFS]));
    assert!(
        err.contains(
            "usr/bin/wrong (source `agent-x86`) is built for x86_64, the recipe for arm64"
        ),
        "{err}"
    );
    assert_eq!(
        archive_entries(&out.join(INITRAMFS)).len(),
        entries.len(),
        "the last good initramfs is kept"
    );
}
