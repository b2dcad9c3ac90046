//! The stage2 kernel: built from the pinned Debian kernel source with the
//! stage2 initramfs compiled in, booted in QEMU without -initrd, relinked
//! (not rebuilt) when only the initramfs changes, and reproducible.
//!
//! A full kernel build takes minutes: these tests share one cache so that
//! it happens once per run, except the reproducibility test, which must
//! build from nothing.

use std::path::Path;

use crate::common::*;

const KERNEL: &str = "stage2/stage2_vmlinuz";

fn stdout(out: &std::process::Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

#[test]
fn stage2_kernel_boots_in_qemu_without_an_initrd() {
    if !qemu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let out = dir.path().join("output");
    let _one_at_a_time = one_guest_at_a_time();
    let boot = run_ok(kiln(&recipes, &out, &shared_cache()).args([
        "boot-test",
        "stage2",
        "--timeout",
        "240",
    ]));
    let text = stdout(&boot);
    assert!(text.contains("boot test passed"), "{text}");
    assert!(text.contains("interfaces eth0 eth1"), "both NICs: {text}");
    let entry = manifest_entry(&out, KERNEL);
    assert_eq!(entry["kind"], "kernel");
    for input in ["source", "config", "initramfs"] {
        assert!(entry["inputs"][input].is_string(), "{input}: {entry}");
    }
    // The embedded initramfs is the one the recipe builds.
    let initramfs = std::fs::read(out.join("stage2/stage2_initramfs.cpio.gz")).unwrap();
    assert_eq!(
        entry["inputs"]["initramfs"],
        kiln::store::Digest::of_bytes(&initramfs).hex()
    );
}

#[test]
fn an_initramfs_change_relinks_without_recompiling() {
    if !qemu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let out = dir.path().join("output");
    run_ok(kiln(&recipes, &out, &shared_cache()).args(["build", KERNEL]));
    let before = std::fs::read(out.join(KERNEL)).unwrap();
    // New on every run: the shared cache must not have seen it.
    let release = &format!("relinked-{}", unique());
    let plan = run_ok(
        kiln(&recipes, &out, &shared_cache())
            .args(["--var", &format!("release={release}")])
            .args(["plan", KERNEL]),
    );
    assert_eq!(
        plan_misses(&plan),
        [
            "initramfs stage2/stage2_initramfs.cpio.gz",
            "kernel link stage2/stage2_vmlinuz"
        ],
        "{}",
        stdout(&plan)
    );
    let _one_at_a_time = one_guest_at_a_time();
    let boot = stdout(&run_ok(
        kiln(&recipes, &out, &shared_cache())
            .args(["--var", &format!("release={release}")])
            .args(["boot-test", "stage2", "--timeout", "240"]),
    ));
    assert!(
        boot.contains(&format!("banner `Kiln {release} initramfs`")),
        "the relinked kernel did not boot the new initramfs: {boot}"
    );
    assert_ne!(std::fs::read(out.join(KERNEL)).unwrap(), before);
}

#[test]
fn a_fragment_option_kconfig_drops_fails_the_build_naming_it() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let fragment = recipes.join("configs/stage2-x86_64.config");
    let mut text = std::fs::read_to_string(&fragment).unwrap();
    let line = text.lines().count() + 1;
    // ext4 depends on the block layer, which tinyconfig leaves out.
    text.push_str("CONFIG_EXT4_FS=y\n");
    std::fs::write(&fragment, text).unwrap();
    let out = dir.path().join("output");
    let err = run_err(kiln(&recipes, &out, &shared_cache()).args(["build", KERNEL]));
    let expected = format!(
        "stage2-x86_64.config:{line}): now is not set; depends on BLOCK (BLOCK is not set)"
    );
    assert!(err.contains("CONFIG_EXT4_FS=y ("), "{err}");
    assert!(err.contains(&expected), "expected `{expected}` in:\n{err}");
    assert!(!out.join(KERNEL).exists());
}

/// Nothing of a finished build is left in the store's scratch area.
fn assert_clean_scratch(cache: &Path) {
    let left: Vec<_> = std::fs::read_dir(cache.join("v1/tmp"))
        .unwrap()
        .filter_map(Result::ok)
        .map(|e| e.file_name())
        .collect();
    assert!(left.is_empty(), "scratch left behind: {left:?}");
}

/// A kernel tarball from a `url` source (as from kernel.org) unpacks to the
/// same tree as the deb's, so config, compile and link are all cache hits
/// and the kernel is the same file.
#[test]
fn a_url_tarball_source_gives_the_same_tree_and_kernel() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let out = dir.path().join("output");
    run_ok(kiln(&recipes, &out, &shared_cache()).args(["build", KERNEL]));
    let from_deb = std::fs::read(out.join(KERNEL)).unwrap();

    let sources: toml::Table =
        toml::from_str(&std::fs::read_to_string(recipes.join("sources.toml")).unwrap()).unwrap();
    let deb_sha = sources["linux-source"]["sha256"].as_str().unwrap();
    let deb = shared_cache()
        .join("v1/blobs")
        .join(&deb_sha[..2])
        .join(deb_sha);
    let unpacked = dir.path().join("deb");
    kiln::steps::deb::unpack(&deb, &unpacked, "linux-image").unwrap();
    let tarball = std::fs::read(unpacked.join("usr/src/linux-source-6.1.tar.xz")).unwrap();
    let sha = kiln::store::Digest::of_bytes(&tarball).hex();
    let url = serve(tarball, "linux-6.1.tar.xz");

    let mut text = std::fs::read_to_string(recipes.join("sources.toml")).unwrap();
    text.push_str(&format!(
        "\n[kernel-org]\nurl = \"{url}\"\nsha256 = \"{sha}\"\n"
    ));
    std::fs::write(recipes.join("sources.toml"), text).unwrap();
    let stage2 = std::fs::read_to_string(recipes.join("stage2.toml")).unwrap();
    let stage2 = stage2.replace("source = \"linux-source\"", "source = \"kernel-org\"");
    std::fs::write(recipes.join("stage2.toml"), stage2).unwrap();

    let source_from_deb = manifest_entry(&out, KERNEL)["inputs"]["source"].clone();
    let plan = stdout(&run_ok(
        kiln(&recipes, &out, &shared_cache()).args(["plan", KERNEL]),
    ));
    assert!(plan.contains("unpack kernel-org tarball"), "{plan}");
    let build = run_ok(kiln(&recipes, &out, &shared_cache()).args(["build", KERNEL]));
    let log = String::from_utf8_lossy(&build.stderr);
    assert_eq!(
        manifest_entry(&out, KERNEL)["inputs"]["source"],
        source_from_deb,
        "the url tarball unpacked to another tree"
    );
    assert!(
        !log.contains("running kernel compile"),
        "recompiled:\n{log}"
    );
    assert_eq!(std::fs::read(out.join(KERNEL)).unwrap(), from_deb);
}

/// Options set to `m` become a `modules.cpio.gz` beside the kernel (the
/// modules step's closure over what the kernel built): the default stage2
/// builds e1000e and mlx4_en (which needs mlx4_core) that way. The kernel
/// loads the archive as a second initrd and modprobe brings an e1000e card up.
#[test]
fn kernel_built_modules_load_from_a_second_initrd() {
    if !qemu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("output");
    let recipes = workspace().join("recipes");
    run_ok(kiln(&recipes, &out, &shared_cache()).args(["build", "stage2/modules.cpio.gz"]));

    let entry = manifest_entry(&out, "stage2/modules.cpio.gz");
    assert_eq!(entry["kind"], "modules");
    let modules: Vec<&str> = entry["details"]["modules"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m.as_str().unwrap())
        .collect();
    assert_eq!(
        modules,
        [
            "kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko",
            "kernel/drivers/net/ethernet/mellanox/mlx4/mlx4_core.ko",
            "kernel/drivers/net/ethernet/mellanox/mlx4/mlx4_en.ko",
        ]
    );
    run_ok(kiln(&recipes, &out, &shared_cache()).args(["build", KERNEL]));
    let mut spec = kiln::verify::boot::BootSpec::modules(
        &out.join(KERNEL),
        &out.join("stage2/modules.cpio.gz"),
        &["e1000e"],
        kiln::arch::Arch::X86_64,
        240,
    );
    spec.qemu_args = kiln::verify::boot::nics(&["e1000e"]);
    let outcome = {
        let _guest = one_guest_at_a_time();
        kiln::verify::boot::boot(&spec).unwrap()
    };
    assert!(outcome.marker.contains("eth0"), "{}", outcome.marker);
}

/// A full config file instead of base + fragments: the config the default
/// recipe produced, given back as `config`, yields the same config and so
/// the same (cached) kernel.
#[test]
fn a_full_config_file_reproduces_the_fragment_built_config() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let out = dir.path().join("output");
    run_ok(kiln(&recipes, &out, &shared_cache()).args(["build", KERNEL]));
    let first = manifest_entry(&out, KERNEL);
    let config = first["inputs"]["config"].as_str().unwrap();
    let blob = shared_cache()
        .join("v1/blobs")
        .join(&config[..2])
        .join(config);
    std::fs::copy(blob, recipes.join("configs/full.config")).unwrap();
    let stage2 = std::fs::read_to_string(recipes.join("stage2.toml")).unwrap();
    let stage2 = stage2
        .replace(
            "base = \"tinyconfig\"\n",
            "config = \"configs/full.config\"\n",
        )
        .replace("fragments = [\"configs/stage2-x86_64.config\"]\n", "");
    std::fs::write(recipes.join("stage2.toml"), stage2).unwrap();
    let build = run_ok(kiln(&recipes, &out, &shared_cache()).args(["build", KERNEL]));
    let log = String::from_utf8_lossy(&build.stderr);
    assert!(
        !log.contains("running kernel compile"),
        "recompiled:\n{log}"
    );
    let second = manifest_entry(&out, KERNEL);
    assert_eq!(second["inputs"]["config"], first["inputs"]["config"]);
    assert_eq!(second["sha256"], first["sha256"]);
}

/// Every process whose command line mentions `needle`.
fn processes_mentioning(needle: &str) -> Vec<String> {
    let mut found = Vec::new();
    for entry in std::fs::read_dir("/proc").unwrap().filter_map(Result::ok) {
        let Ok(cmdline) = std::fs::read(entry.path().join("cmdline")) else {
            continue;
        };
        let cmdline = String::from_utf8_lossy(&cmdline).replace('\0', " ");
        if cmdline.contains(needle) {
            found.push(cmdline);
        }
    }
    found
}

/// Ctrl-C while `make` runs stops make and everything it started, removes
/// the scratch directory, and leaves output/ as the last good build.
#[test]
fn ctrl_c_during_make_stops_the_tools_and_keeps_the_last_good_output() {
    use std::io::{BufRead, BufReader};
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let (out, cache) = (dir.path().join("output"), dir.path().join("cache"));
    let initramfs = "stage2/stage2_initramfs.cpio.gz";
    run_ok(kiln(&recipes, &out, &cache).args(["build", initramfs]));
    let good = std::fs::read(out.join(initramfs)).unwrap();
    let manifest = std::fs::read(out.join("manifest.json")).unwrap();

    let mut child = kiln(&recipes, &out, &cache)
        .args(["build", "stage2"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut seen = String::new();
    loop {
        let mut line = String::new();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "build ended first:\n{seen}"
        );
        seen.push_str(&line);
        if line.contains("running kernel config") {
            break;
        }
    }
    // The step links the source tree into scratch, then runs make, which
    // builds the Kconfig tools for several seconds: wait for make.
    let tmp = cache.join("v1/tmp");
    let needle = tmp.to_string_lossy().into_owned();
    let start = std::time::Instant::now();
    while processes_mentioning(&needle).is_empty() {
        assert!(
            start.elapsed().as_secs() < 60,
            "no tool ran in {needle}:\n{seen}"
        );
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    // SAFETY: signalling our own child.
    unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
    let status = child.wait().unwrap();
    let mut rest = String::new();
    std::io::Read::read_to_string(&mut stderr, &mut rest).unwrap();
    assert_eq!(status.code(), Some(130), "{seen}{rest}");
    assert!(
        rest.contains("output/ and the cache keep the last good build"),
        "{rest}"
    );
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(
        processes_mentioning(&needle),
        Vec::<String>::new(),
        "tools survived"
    );
    assert_eq!(std::fs::read(out.join(initramfs)).unwrap(), good);
    assert_eq!(std::fs::read(out.join("manifest.json")).unwrap(), manifest);
    assert!(!out.join(KERNEL).exists());
    assert_clean_scratch(&cache);
}
