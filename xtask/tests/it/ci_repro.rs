//! CI's reproducibility check: every default target, built by run 1 with
//! the suite's shared cache (`repro --run1-cache`, so the other tests reuse
//! what it builds and it reuses theirs), is built again from an empty cache
//! by run 2 under every variation, and must come out byte for byte the
//! same. In CI the shared cache starts empty, so both sides are builds of
//! this commit. Run 2 is serial (`-j1`), the longest test of the suite:
//! libtest starts tests in name order, and this module's name puts it among
//! the first, so that run overlaps the rest of the suite instead of
//! trailing it.

use crate::common::*;
use crate::repro::{row, stdout};

/// One `repro` of `targets` against the suite's shared cache: its table.
fn repro(targets: &[&str], source: &[String]) -> String {
    let dir = tempfile::tempdir().unwrap();
    let recipes = workspace().join("recipes");
    let out = kiln(
        &recipes,
        &dir.path().join("output"),
        &dir.path().join("unused-cache"),
    )
    .args(source)
    .arg("repro")
    .arg("--run1-cache")
    .arg(shared_cache())
    .args(targets)
    .output()
    .unwrap();
    let text = stdout(&out);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // Both sides of each variation are printed.
    for variation in ["directory", "TZ", "umask", "jobs", "file creation order"] {
        assert!(
            text.lines()
                .any(|l| l.trim_start().starts_with(variation) && l.contains("  |  ")),
            "variation {variation} not applied:\n{text}"
        );
    }
    text
}

/// stage1 and stage3 (which carries stage1's ROMs) join when an iPXE tree
/// is given (KILN_SOURCE_IPXE). The x86_64 set and the arm64 set are two
/// `repro`s side by side: each run 2 builds at -j1 (the job-count
/// variation), so two of them keep both cores busy where one would leave
/// one idle whenever the rest of the suite waits.
#[test]
fn the_default_targets_reproduce_under_every_variation() {
    let mut x86 = vec!["stage2", "modules"];
    let mut expected = vec![
        "stage2/stage2_vmlinuz",
        "stage2/stage2.iso",
        "stage2/stage2.efi",
        "stage2/modules.cpio.gz",
        "modules/6.1.0-50-amd64/modules.cpio.gz",
        "manifest.json",
    ];
    let mut source = Vec::new();
    // Without an iPXE tree stage1 and stage3 are left out (ipxe_tree says why).
    if let Some(tree) = ipxe_tree() {
        x86.extend(["stage1", "stage3"]);
        source = vec!["--source".to_string(), format!("ipxe={}", tree.display())];
        expected.extend([
            "stage1/x86_64/ipxe.lkrn",
            "stage1/x86_64/15b31003.mrom",
            "stage1/arm64/ipxe.efi",
            "stage1/hosts/mlab1-lga0t.example.net/ipxe.efi",
            "stage1/hosts/mlab2-lga0t.example.net/1af41000.rom",
            "stage3/stage3_update.iso",
        ]);
    }
    let arm64 = ["stage2-arm64", "modules-arm64"];
    let arm64_expected = [
        "stage2/arm64/stage2_vmlinuz",
        "stage2/arm64/stage2.efi",
        "stage2/arm64/stage2.iso",
        "modules/6.1.0-50-arm64/modules.cpio.gz",
        "manifest.json",
    ];
    let (text, arm64_text) = std::thread::scope(|s| {
        let arm64 = s.spawn(|| repro(&arm64, &[]));
        (
            repro(&x86, &source),
            arm64.join().expect("the arm64 repro panicked"),
        )
    });
    for (text, expected) in [(&text, &expected[..]), (&arm64_text, &arm64_expected[..])] {
        for artifact in expected {
            assert!(row(text, artifact).ends_with("identical"), "{text}");
        }
    }
    // 8 x86_64 targets and the combined ROM, 3 arm64 targets; each of the
    // two inventory hosts gets the 4 non-ROM x86_64 targets and the ROMs
    // its `roms` names (2, and 4 with the EFI and combined ROMs).
    let stage1 = text.lines().filter(|l| l.starts_with("stage1/")).count();
    assert!(
        ipxe_tree().is_none() || stage1 == 9 + 3 + (4 + 2) + (4 + 4),
        "{stage1} stage1 rows:\n{text}"
    );
    println!("{text}\n{arm64_text}");
}
