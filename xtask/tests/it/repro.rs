//! `cargo xtask repro`: two builds with empty caches under varied
//! environments give identical bytes, and a planted difference is named
//! down to the member, file or section that holds it.

use std::path::Path;
use std::process::Output;

use crate::common::*;

const INITRAMFS: &str = "stage2/stage2_initramfs.cpio.gz";

pub fn stdout(out: &Output) -> String {
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `repro` with the test's recipes; `cache` is never used by the runs (each
/// has its own) but must not be the developer's.
fn repro(recipes: &Path, dir: &Path, args: &[&str]) -> Output {
    kiln(recipes, &dir.join("output"), &dir.join("unused-cache"))
        .arg("repro")
        .args(args)
        .output()
        .expect("starting xtask")
}

/// The table line of `artifact`.
pub fn row<'a>(text: &'a str, artifact: &str) -> &'a str {
    text.lines()
        .find(|l| l.split_whitespace().next() == Some(artifact))
        .unwrap_or_else(|| panic!("no row for {artifact} in:\n{text}"))
}

#[test]
fn the_initramfs_and_modules_reproduce_under_every_variation() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    // modules: depmod writes its indexes under run 2's umask 077, and their
    // modes once reached the tree digest, hence the keys in the manifest.
    let out = repro(&recipes, dir.path(), &[INITRAMFS, "modules"]);
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for variation in [
        "directory",
        "TZ",
        "LANG, LC_ALL",
        "umask",
        "jobs",
        "file creation order",
    ] {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with(variation) && l.contains('|')),
            "variation {variation} not applied:\n{text}"
        );
    }
    if kiln::repro::is_root() {
        assert!(
            text.contains("|  nobody"),
            "root should run run 2 as nobody:\n{text}"
        );
    }
    assert!(row(&text, INITRAMFS).ends_with("identical"), "{text}");
    assert!(row(&text, "manifest.json").ends_with("identical"), "{text}");
    assert!(row(&text, "modules/6.1.0-50-amd64/modules.cpio.gz").ends_with("identical"));
    assert!(
        text.contains("reproducible: all 4 artifacts identical"),
        "{text}"
    );
    // Scratch is cleaned: nothing of the runs is left in $TMPDIR's work dirs.
    assert!(!text.contains("kept both runs"));
}

#[test]
fn a_varied_value_is_named_as_its_cpio_member_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let work = dir.path().join("work");
    let out = repro(
        &recipes,
        dir.path(),
        &[
            INITRAMFS,
            "--vary",
            "release=r1,r22",
            "--keep",
            "--work",
            work.to_str().unwrap(),
            "--diffoscope",
        ],
    );
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(row(&text, INITRAMFS).ends_with("DIFFERS"), "{text}");
    assert!(row(&text, "manifest.json").ends_with("DIFFERS"), "{text}");
    // KILN_RELEASE="r1"\n → KILN_RELEASE="r22"\n: one member, its size and data.
    let member = "cpio member etc/kiln-release";
    assert!(
        text.contains(&format!("  {member}: size 18 → 19")),
        "{text}"
    );
    assert!(
        text.contains(&format!("  {member}: data sha256 ")),
        "{text}"
    );
    assert_eq!(
        text.matches("cpio member").count(),
        2,
        "only that member: {text}"
    );
    assert!(
        text.contains("NOT reproducible: 2 of 2 artifacts differ"),
        "{text}"
    );
    // diffoscope is used when installed, never needed.
    let report = dir
        .path()
        .join("output/logs/diffoscope/stage2_stage2_initramfs.cpio.gz.txt");
    if kiln::tools::find("diffoscope").is_some() {
        assert!(
            text.contains(&format!("  diffoscope: {}", report.display())),
            "{text}"
        );
        assert!(std::fs::read_to_string(&report)
            .unwrap()
            .contains("kiln-release"));
    } else {
        assert!(text.contains("diffoscope is not installed"), "{text}");
    }
    // --keep: both runs' outputs are there to inspect.
    assert!(
        text.contains(&format!("kept both runs in {}", work.display())),
        "{text}"
    );
    let kept = std::fs::read(work.join("run1/output").join(INITRAMFS)).unwrap();
    assert!(contains_bytes(
        &kiln::archive::decompress_all(&kept).unwrap(),
        b"KILN_RELEASE=\"r1\""
    ));
}

#[test]
fn repro_needs_targets_and_a_new_work_dir() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let out = repro(&recipes, dir.path(), &[]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("name the targets to build twice"));
    let out = repro(
        &recipes,
        dir.path(),
        &[INITRAMFS, "--work", dir.path().to_str().unwrap()],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("already exists"));
    let out = repro(
        &recipes,
        dir.path(),
        &[INITRAMFS, "--vary", "release=same,same"],
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("two different values"));
}

/// Two stage2 builds whose initramfs differs in one member (the release
/// variable): `--compare` follows the difference into every medium.
#[test]
fn compare_follows_a_difference_into_the_kernel_uki_and_iso() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let (one, two) = (dir.path().join("one"), dir.path().join("two"));
    for (out, release) in [(&one, "r1"), (&two, "r22")] {
        let mut cmd = kiln(&recipes, out, &shared_cache());
        run_ok(cmd.args(["--var", &format!("release={release}"), "build", "stage2"]));
    }
    let out = kiln(&recipes, &dir.path().join("o"), &shared_cache())
        .args(["repro", "--compare"])
        .arg(&one)
        .arg(&two)
        .output()
        .unwrap();
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    let member = "cpio member etc/kiln-release: size 18 → 19";
    let payload = "bzImage compressed payload › embedded initramfs";
    let expect = [
        format!("  {member}"),
        format!("  {payload} › {member}"),
        format!("  PE section .initrd › {member}"),
        format!("  PE section .linux › {payload} › {member}"),
        format!("  ISO file boot/vmlinuz › {payload} › {member}"),
    ];
    for line in &expect {
        assert!(
            text.lines().any(|l| l.starts_with(line.as_str())),
            "no line starting `{line}` in:\n{text}"
        );
    }
    // The UKI reaches the ISO inside its EFI system partition image.
    assert!(
        text.lines().any(|l| l.contains("› FAT file ")
            && l.contains("› PE section .initrd › cpio member etc/kiln-release")),
        "the ISO's ESP was not followed:\n{text}"
    );
    // Artifacts the release does not reach are identical.
    assert!(
        row(&text, "stage2/stage1to2.ipxe").ends_with("identical"),
        "{text}"
    );
}

/// `--against DIR`: one varied build from an empty cache, compared with an
/// output built earlier; other bytes there are a difference.
#[test]
fn against_compares_one_varied_build_with_an_output_built_earlier() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let built = dir.path().join("built");
    run_ok(kiln(&recipes, &built, &shared_cache()).args(["build", INITRAMFS, "modules"]));
    let against = |work: &str| {
        repro(
            &recipes,
            dir.path(),
            &[
                "--against",
                built.to_str().unwrap(),
                "--work",
                dir.path().join(work).to_str().unwrap(),
                INITRAMFS,
            ],
        )
    };
    let out = against("w1");
    let text = stdout(&out);
    assert!(out.status.success(), "{text}");
    assert!(row(&text, INITRAMFS).ends_with("identical"), "{text}");
    // DIR's manifest is compared by run 2's artifacts' entries only.
    assert!(row(&text, "manifest.json").ends_with("identical"), "{text}");
    assert!(
        text.contains("not among run 2's artifacts: not compared"),
        "{text}"
    );
    assert!(
        text.contains("umask                      (as built)  |  077"),
        "{text}"
    );
    let mut other = std::fs::read(built.join(INITRAMFS)).unwrap();
    other.push(0);
    std::fs::write(built.join(INITRAMFS), other).unwrap();
    let out = against("w2");
    let text = stdout(&out);
    assert_eq!(out.status.code(), Some(1), "{text}");
    assert!(row(&text, INITRAMFS).ends_with("DIFFERS"), "{text}");
    let err = repro(
        &recipes,
        dir.path(),
        &["--against", "/nonexistent", INITRAMFS],
    );
    assert!(
        String::from_utf8_lossy(&err.stderr)
            .contains("--against /nonexistent: no manifest.json there"),
        "{}",
        String::from_utf8_lossy(&err.stderr)
    );
}
