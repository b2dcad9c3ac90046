//! No-op builds and local inputs: an overlay file whose size, mtime and
//! inode are unchanged is not read again (the stat cache), and one that
//! changed is.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::path::Path;
use std::time::{Duration, SystemTime};

use crate::common::*;

const ARTIFACT: &str = "stage2/stage2_initramfs.cpio.gz";

/// Writes `tag` then `byte` repeated to `size` bytes into the file, in
/// place (same inode), then sets its mtime to `mtime`.
fn rewrite(path: &Path, tag: &[u8], byte: u8, size: usize, mtime: SystemTime) {
    let mut data = vec![byte; size];
    data[..tag.len()].copy_from_slice(tag);
    let mut f = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(false)
        .open(path)
        .unwrap();
    f.write_all(&data).unwrap();
    f.set_modified(mtime).unwrap();
}

fn build(recipes: &Path, dir: &Path) -> (usize, Vec<u8>) {
    let out = dir.join("output");
    let run = run_ok(kiln(recipes, &out, &shared_cache()).args(["build", ARTIFACT]));
    (steps_run(&run), std::fs::read(out.join(ARTIFACT)).unwrap())
}

#[test]
fn an_unchanged_overlay_file_is_not_read_again_and_a_touched_one_is() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let big = dir.path().join("overlays/stage2/etc/kiln-big.bin");
    let size = 8 << 20;
    let then = SystemTime::UNIX_EPOCH + Duration::from_secs(1_600_000_000);
    // Contents no earlier run had, so the shared cache cannot answer.
    let tag = format!("{:?}", SystemTime::now()).into_bytes();
    rewrite(&big, &tag, b'a', size, then);
    let (ran, first) = build(&recipes, dir.path());
    assert!(ran >= 1);
    assert_eq!(build(&recipes, dir.path()).0, 0, "nothing changed");
    // Other bytes, same size, inode and mtime: the stat cache trusts the
    // file without reading it (as git and cargo do), so nothing rebuilds.
    rewrite(&big, &tag, b'b', size, then);
    let (ran, same) = build(&recipes, dir.path());
    assert_eq!(ran, 0, "the file's contents were read");
    assert_eq!(same, first);
    // A new mtime: the file is hashed again and the image rebuilt with it.
    File::options()
        .write(true)
        .open(&big)
        .unwrap()
        .set_modified(SystemTime::now() - Duration::from_secs(60))
        .unwrap();
    let (ran, changed) = build(&recipes, dir.path());
    assert!(ran >= 1);
    assert_ne!(changed, first);
    // And with the stat cache off every file is hashed: the same image.
    let mut off = kiln(&recipes, &dir.path().join("off"), &shared_cache());
    off.env("KILN_STAT_CACHE", "off").args(["build", ARTIFACT]);
    run_ok(&mut off);
    assert_eq!(
        std::fs::read(dir.path().join("off").join(ARTIFACT)).unwrap(),
        changed
    );
}

#[test]
fn gc_removes_the_stat_caches_of_directories_that_are_gone() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let cache = dir.path().join("cache");
    let out = dir.path().join("output");
    run_ok(kiln(&recipes, &out, &cache).args(["build", ARTIFACT]));
    // One per local input (the overlay among them) and one for output/.
    let stat = || files(&cache.join("v1/stat")).len();
    let before = stat();
    assert!(before >= 2, "{before}");
    let gc = || {
        let run = run_ok(kiln(&recipes, &out, &cache).arg("gc"));
        String::from_utf8(run.stdout).unwrap()
    };
    assert!(gc().contains(", 0 stat caches,"));
    std::fs::remove_dir_all(dir.path().join("overlays/stage2")).unwrap();
    assert!(gc().contains(", 1 stat caches,"));
    assert_eq!(stat(), before - 1);
}

#[test]
fn gc_keep_days_drops_only_records_no_build_has_used_for_that_long() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let cache = dir.path().join("cache");
    let out = dir.path().join("output");
    let build = || {
        steps_run(&run_ok(
            kiln(&recipes, &out, &cache).args(["build", ARTIFACT]),
        ))
    };
    let built = build();
    assert!(built >= 2, "{built}");
    let gc = || {
        let run = run_ok(kiln(&recipes, &out, &cache).args(["gc", "--keep-days", "30"]));
        String::from_utf8(run.stdout).unwrap()
    };
    let age_records = |days: u64| {
        let then = SystemTime::now() - Duration::from_secs(days * 86_400);
        for name in files(&cache.join("v1/actions")) {
            let path = cache.join("v1/actions").join(name);
            File::options()
                .write(true)
                .open(&path)
                .unwrap()
                .set_modified(then)
                .unwrap();
        }
    };
    // Local inputs (the overlay tree) are stored by each plan, not kept.
    let first = gc();
    assert!(first.starts_with("removed 0 action records,"), "{first}");
    // Written 40 days ago but used by today's build: kept.
    age_records(40);
    assert_eq!(build(), 0);
    assert!(
        gc().starts_with("removed 0 action records,"),
        "a used record was dropped"
    );
    // Not used for 40 days: every record goes, and what only they reached.
    age_records(40);
    let report = gc();
    assert!(
        report.starts_with(&format!("removed {built} action records,")),
        "{report}"
    );
    assert!(!report.contains(" 0 blobs,"), "{report}");
    assert!(files(&cache.join("v1/actions")).is_empty());
    assert_eq!(build(), built, "the next build runs every step again");
}
