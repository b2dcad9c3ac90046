//! End to end: the stage2 recipe builds, caches, survives corruption and
//! kills, reproduces bit for bit, and boots.

use std::path::Path;
use std::process::Stdio;

use crate::common::*;

const INITRAMFS: &str = "stage2/stage2_initramfs.cpio.gz";

#[test]
fn second_build_is_all_cached_and_plan_says_so() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let (out, cache) = (dir.path().join("output"), dir.path().join("cache"));
    run_ok(kiln(&recipes, &out, &cache).args(["build", INITRAMFS]));
    let plan = run_ok(kiln(&recipes, &out, &cache).args(["plan", INITRAMFS]));
    let text = String::from_utf8_lossy(&plan.stdout);
    assert!(text.contains("3 steps: 3 cached, 0 to run"), "{text}");
    let second = run_ok(kiln(&recipes, &out, &cache).args(["build", INITRAMFS]));
    let text = String::from_utf8_lossy(&second.stdout);
    assert!(text.contains("0 run, 3 cached"), "{text}");
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let a = &manifest["artifacts"][0];
    assert_eq!(a["name"], INITRAMFS);
    assert_eq!(a["kind"], "initramfs");
    assert_eq!(manifest["source_date_epoch"], 1700000000);
    assert!(
        a["inputs"]["busybox"].is_string() && a["inputs"]["overlay.0"].is_string(),
        "{a}"
    );
}

/// Builds in a fresh directory with its own cache, under `umask` and `tz`.
fn build_in(dir: &Path, umask: &str, tz: &str) -> Vec<u8> {
    let root = dir.join("some/deeper/checkout");
    std::fs::create_dir_all(&root).unwrap();
    let recipes = copy_recipes(&root);
    let cmd = kiln(&recipes, &root.join("output"), &dir.join("cache"));
    run_ok(&mut under_umask(
        &cmd,
        umask,
        tz,
        &format!("build {INITRAMFS}"),
    ));
    std::fs::read(root.join("output").join(INITRAMFS)).unwrap()
}

#[test]
fn builds_in_different_dirs_umasks_and_timezones_are_identical() {
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let first = build_in(a.path(), "022", "UTC");
    let second = build_in(b.path(), "077", "Pacific/Kiritimati");
    assert!(first == second, "initramfs differs between the two builds");
}

#[test]
fn checksum_mismatch_names_the_source_and_stores_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let sources = std::fs::read_to_string(recipes.join("sources.toml")).unwrap();
    let good = "3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744";
    let bad = "0000000000000000000000000000000000000000000000000000000000000000";
    std::fs::write(recipes.join("sources.toml"), sources.replace(good, bad)).unwrap();
    let (out, cache) = (dir.path().join("output"), dir.path().join("cache"));
    let err = run_err(kiln(&recipes, &out, &cache).args(["build", INITRAMFS]));
    assert!(
        err.contains("checksum mismatch for source `busybox`"),
        "{err}"
    );
    assert!(
        err.contains(&format!("expected sha256 {bad}")) && err.contains(&format!("got {good}")),
        "{err}"
    );
    let blob = blob_file(&cache, good);
    assert!(!blob.exists(), "the mismatching download was stored");
    assert!(!out.join(INITRAMFS).exists());
}

#[test]
fn corrupt_store_blob_is_detected_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let (out, cache) = (dir.path().join("output"), dir.path().join("cache"));
    run_ok(kiln(&recipes, &out, &cache).args(["build", INITRAMFS]));
    let good = std::fs::read(out.join(INITRAMFS)).unwrap();
    let hex = kiln::store::Digest::of_bytes(&good).hex();
    let blob = blob_file(&cache, &hex);
    std::fs::remove_file(&blob).unwrap();
    std::fs::write(&blob, b"not an initramfs").unwrap();
    std::fs::remove_file(out.join(INITRAMFS)).unwrap();
    let second = run_ok(kiln(&recipes, &out, &cache).args(["build", INITRAMFS]));
    let log = String::from_utf8_lossy(&second.stderr);
    assert!(
        log.contains("corrupt store entry"),
        "corruption was not reported:\n{log}"
    );
    assert_eq!(std::fs::read(out.join(INITRAMFS)).unwrap(), good);
    assert_eq!(
        std::fs::read(&blob).unwrap(),
        good,
        "the store was not repaired"
    );
}

#[test]
fn a_tree_blob_lost_from_the_store_fails_once_then_is_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let (out, cache) = (dir.path().join("output"), dir.path().join("cache"));
    run_ok(kiln(&recipes, &out, &cache).args(["build", INITRAMFS]));
    // busybox, a file of the unpacked deb's tree, is lost from the store.
    let hex = lose_tree_blob(&cache, |path| path == "bin/busybox");
    // A lookup does not read tree blobs; the image step, run again for an
    // overlay change, does: it fails once, naming what it dropped...
    edit(
        &dir.path().join("overlays/stage2/init"),
        "#!/bin/sh",
        "#!/bin/sh\n# changed",
    );
    let err = run_err(kiln(&recipes, &out, &cache).args(["build", INITRAMFS]));
    assert!(
        err.contains(&format!("store blob {} is missing", &hex[..12]))
            && err.contains("tree record(s) naming it were removed"),
        "{err}"
    );
    // ...and the next build unpacks the deb again and succeeds.
    run_ok(kiln(&recipes, &out, &cache).args(["build", INITRAMFS]));
    assert!(blob_file(&cache, &hex).is_file());
}

#[test]
fn build_killed_mid_step_leaves_last_good_output_and_a_usable_store() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let (out, cache) = (dir.path().join("output"), dir.path().join("cache"));
    run_ok(kiln(&recipes, &out, &cache).args(["build", INITRAMFS]));
    let last_good = std::fs::read(out.join(INITRAMFS)).unwrap();
    // A large incompressible overlay file makes the initramfs step slow
    // enough (xz, level 9) to be killed while it writes.
    let mut big = vec![0u8; 96 << 20];
    std::io::Read::read_exact(&mut std::fs::File::open("/dev/urandom").unwrap(), &mut big).unwrap();
    std::fs::write(dir.path().join("overlays/stage2/big.bin"), &big).unwrap();
    let recipe = std::fs::read_to_string(recipes.join("stage2.toml")).unwrap();
    std::fs::write(
        recipes.join("stage2.toml"),
        recipe.replace("compression = \"gz\"", "compression = \"xz\"\nlevel = 9"),
    )
    .unwrap();
    let mut child = kiln(&recipes, &out, &cache)
        .args(["build", INITRAMFS])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let stderr = child.stderr.take().unwrap();
    let mut lines = std::io::BufRead::lines(std::io::BufReader::new(stderr));
    assert!(
        lines.any(|l| l.unwrap().contains("running initramfs")),
        "the initramfs step never started"
    );
    std::thread::sleep(std::time::Duration::from_millis(1500));
    child.kill().unwrap();
    child.wait().unwrap();
    assert_eq!(
        files(&out)
            .into_iter()
            // Kiln's own files (logs, the install lock) aside.
            .filter(|f| f == "manifest.json" || kiln::layout::reserved(f).is_none())
            .collect::<Vec<_>>(),
        ["manifest.json", INITRAMFS]
    );
    assert_eq!(
        std::fs::read(out.join(INITRAMFS)).unwrap(),
        last_good,
        "the last good output was touched"
    );
    std::fs::remove_file(dir.path().join("overlays/stage2/big.bin")).unwrap();
    std::fs::write(recipes.join("stage2.toml"), recipe).unwrap();
    let again = run_ok(kiln(&recipes, &out, &cache).args(["build", INITRAMFS]));
    assert!(String::from_utf8_lossy(&again.stdout).contains("0 run, 3 cached"));
    assert_eq!(std::fs::read(out.join(INITRAMFS)).unwrap(), last_good);
}

#[test]
fn stage2_initramfs_boots_debian_kernel_in_qemu() {
    if !qemu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let out = dir.path().join("output");
    let _one_at_a_time = one_guest_at_a_time();
    let result = run_ok(kiln(&recipes, &out, &shared_cache()).args([
        "boot-test",
        "stage2-initramfs",
        "--timeout",
        "240",
    ]));
    let text = String::from_utf8_lossy(&result.stdout);
    assert!(
        text.contains("boot test passed") && text.contains("KILN-STAGE2-READY"),
        "{text}"
    );
}

/// Re-encodes an archive's entries as Kiln records (stage2 has no hard links).
fn records(entries: &[kiln::archive::ReadEntry]) -> Vec<kiln::archive::Entry> {
    use kiln::archive::{Data, Entry, Kind};
    entries
        .iter()
        .map(|e| {
            let kind = match e.file_type() {
                0o100000 => Kind::File(Data::Bytes(e.data.clone())),
                0o040000 => Kind::Dir,
                0o120000 => Kind::Symlink(e.link_target().unwrap()),
                0o020000 => Kind::CharDev {
                    major: e.rdev_major,
                    minor: e.rdev_minor,
                },
                0o060000 => Kind::BlockDev {
                    major: e.rdev_major,
                    minor: e.rdev_minor,
                },
                0o010000 => Kind::Fifo,
                other => panic!("unexpected type {other:o} for {}", e.name),
            };
            Entry {
                path: e.name.clone(),
                mode: e.mode & 0o7777,
                uid: e.uid,
                gid: e.gid,
                mtime: e.mtime.into(),
                kind,
                link: None,
            }
        })
        .collect()
}

#[test]
fn multi_member_gzip_initramfs_is_read_by_zcat_and_boots() {
    if !qemu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let out = dir.path().join("output");
    run_ok(kiln(&recipes, &out, &shared_cache()).args(["build", INITRAMFS]));
    let entries = records(&archive_entries(&out.join(INITRAMFS)));
    // 16 KiB segments: busybox (2 MB) alone in one member, its ~400 applet
    // links and the overlay spread over several more.
    let opts = kiln::archive::CompressOptions {
        gzip_segment_bytes: 16 << 10,
        ..Default::default()
    };
    let mut multi = Vec::new();
    kiln::archive::write_archive(
        &entries,
        kiln::archive::Compression::Gzip,
        &opts,
        &mut multi,
    )
    .unwrap();
    let path = dir.path().join("multi.cpio.gz");
    std::fs::write(&path, &multi).unwrap();

    let zcat = std::process::Command::new("zcat")
        .arg(&path)
        .output()
        .unwrap();
    assert!(zcat.status.success());
    let read_back = kiln::archive::read_archive(&zcat.stdout).unwrap();
    let archives = read_back.iter().map(|e| e.archive).max().unwrap() + 1;
    assert!(
        archives >= 3,
        "expected several gzip members, got {archives}"
    );
    assert_eq!(read_back.len(), entries.len(), "zcat lost entries");

    let _one_at_a_time = one_guest_at_a_time();
    let boot = run_ok(
        kiln(&recipes, &out, &shared_cache())
            .args(["boot-test", "stage2-initramfs", "--initrd"])
            .arg(&path),
    );
    let text = String::from_utf8_lossy(&boot.stdout);
    assert!(text.contains("boot test passed"), "{text}");
}
