//! End to end: the modules recipe builds an archive of exactly the
//! closure, recorded in the manifest; bad items name their recipe line; and
//! the archive, appended to the stage2 initramfs, lets the guest modprobe a
//! network driver.

use crate::common::*;
use kiln::archive::Compression;

const ARCHIVE: &str = "modules/6.1.0-50-amd64/modules.cpio.gz";

#[test]
fn modules_archive_holds_the_closure_and_fresh_depmod_indexes() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let out = dir.path().join("output");
    run_ok(kiln(&recipes, &out, &shared_cache()).args(["build", "modules"]));
    let entries = archive_entries(&out.join(ARCHIVE));
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    let base = "lib/modules/6.1.0-50-amd64";
    let expected = [
        "kernel/drivers/net/virtio_net.ko",
        "kernel/drivers/net/net_failover.ko",
        "kernel/fs/ext4/ext4.ko",
        "kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko",
        "modules.dep",
        "modules.dep.bin",
        "modules.alias",
        "modules.builtin",
    ];
    for file in expected {
        let path = format!("{base}/{file}");
        assert!(
            names.contains(&path.as_str()),
            "{file} missing from {names:?}"
        );
    }
    let dep = entries
        .iter()
        .find(|e| e.name == format!("{base}/modules.dep"))
        .unwrap();
    let modules_in_dep = String::from_utf8_lossy(&dep.data).lines().count();
    let ko_files = names.iter().filter(|n| n.ends_with(".ko")).count();
    assert_eq!(
        modules_in_dep, ko_files,
        "modules.dep must list exactly the shipped modules"
    );
    assert!(
        ko_files < 60,
        "the closure of a few drivers should be small, got {ko_files}"
    );

    let entry = manifest_entry(&out, ARCHIVE);
    assert_eq!(entry["kind"], "modules");
    assert_eq!(
        entry["details"]["modules"].as_array().unwrap().len(),
        ko_files
    );
    assert!(entry["details"]["builtin"]
        .as_array()
        .unwrap()
        .iter()
        .any(|b| b.as_str().unwrap().contains("af_packet")));
    assert!(out
        .join("modules/6.1.0-50-amd64/modules.cpio.zst")
        .is_file());
}

/// Builds the modules recipe with `virtio_blk` (line 15) replaced by `item`.
fn build_with_item(item: &str) -> (tempfile::TempDir, Result<(), String>) {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let recipe = std::fs::read_to_string(recipes.join("modules.toml")).unwrap();
    let recipe = recipe.replace("\"virtio_blk\"", &format!("\"{item}\""));
    std::fs::write(recipes.join("modules.toml"), recipe).unwrap();
    let out = kiln(&recipes, &dir.path().join("output"), &shared_cache())
        .args(["build", "modules"])
        .output()
        .unwrap();
    let result = if out.status.success() {
        Ok(())
    } else {
        Err(String::from_utf8_lossy(&out.stderr).into_owned())
    };
    (dir, result)
}

#[test]
fn unknown_module_alias_or_glob_names_its_recipe_line() {
    for item in [
        "virtio_blck",
        "pci:v0000FFFFd0000FFFFsv*sd*bc*sc*i*",
        "kernel/drivers/no_such_dir/**",
    ] {
        let (dir, result) = build_with_item(item);
        let err = result.expect_err(item);
        assert!(
            err.contains(&format!("modules.toml:15:5: wanted module `{item}`")),
            "{err}"
        );
        assert!(!dir.path().join("output").join(ARCHIVE).exists());
    }
}

#[test]
fn firmware_named_by_modules_is_included_or_listed_as_missing() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let recipe = std::fs::read_to_string(recipes.join("modules.toml")).unwrap();
    let recipe = recipe
        .replace("\"virtio_blk\"", "\"carl9170\", \"e100\"")
        .replace(
            "compressions = ",
            "firmware = [\"firmware-free\"]\ncompressions = ",
        );
    std::fs::write(recipes.join("modules.toml"), recipe).unwrap();
    let out = dir.path().join("output");
    let run = run_ok(kiln(&recipes, &out, &shared_cache()).args(["build", "modules"]));
    let warnings = String::from_utf8_lossy(&run.stderr);
    assert!(
        warnings.contains("not found in the firmware sources") && warnings.contains("e100/"),
        "{warnings}"
    );
    let entries = archive_entries(&out.join(ARCHIVE));
    assert!(entries
        .iter()
        .any(|e| e.name == "lib/firmware/carl9170-1.fw" && !e.data.is_empty()));
    let entry = manifest_entry(&out, ARCHIVE);
    let missing: Vec<&str> = entry["details"]["firmware_missing"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_str().unwrap())
        .collect();
    assert!(
        missing.iter().any(|m| m.starts_with("e100/")),
        "{missing:?}"
    );
    assert!(entry["details"]["firmware"]
        .as_array()
        .unwrap()
        .iter()
        .any(|f| f == "carl9170-1.fw"));
}

#[test]
fn modprobe_in_the_guest_brings_up_a_new_interface() {
    if !qemu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let _one_at_a_time = one_guest_at_a_time();
    let out = run_ok(
        kiln(&recipes, &dir.path().join("output"), &shared_cache()).args([
            "boot-test",
            "modules",
            "--timeout",
            "240",
        ]),
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("KILN-MODPROBE-NEW-INTERFACES: eth0"),
        "{text}"
    );
}

#[test]
fn two_runs_of_the_modules_step_in_different_scratch_dirs_are_identical() {
    use kiln::steps::modules::depmod::DepmodIndexes;
    use kiln::steps::modules::step::BuildModules;
    use kiln::steps::{Step, StepContext};
    use kiln::store::Output;
    use std::collections::BTreeMap;

    let (store, digest) = deb_source_tree("linux-image").unwrap();
    let kernel = Output::Tree { digest };
    let run = |step: &dyn Step, inputs: &BTreeMap<String, Output>| {
        let scratch = tempfile::tempdir().unwrap();
        let ctx = StepContext::new(&store, inputs.clone(), std::env::temp_dir(), "test".into());
        ctx.run_step(step, scratch.path()).unwrap()
    };
    let mut inputs = BTreeMap::from([("kernel".to_string(), kernel)]);
    let indexes = run(
        &DepmodIndexes {
            kernel_release: "6.1.0-50-amd64".into(),
        },
        &inputs,
    );
    inputs.insert("indexes".into(), indexes["indexes"]);
    use kiln::steps::modules::Wanted;
    let wanted = vec![
        Wanted::Name("virtio_net".into()),
        Wanted::Name("e1000e".into()),
        Wanted::Name("fs-ext4".into()),
        Wanted::Glob("kernel/drivers/net/ethernet/intel/**".into()),
    ];
    let step = BuildModules {
        name: "repro".into(),
        kernel_release: "6.1.0-50-amd64".into(),
        origins: wanted.iter().map(|_| "test".to_string()).collect(),
        wanted,
        modprobe_d: Vec::new(),
        firmware: 0,
        compressions: vec![Compression::Gzip, Compression::Zstd],
        epoch: 1_700_000_000,
        threads: 2,
    };
    let (first, second) = (run(&step, &inputs), run(&step, &inputs));
    assert_eq!(first, second, "the modules step is not deterministic");
}

#[test]
fn a_module_lost_from_the_store_fails_once_then_the_kernel_tree_is_unpacked_again() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let (out, cache) = (dir.path().join("output"), dir.path().join("cache"));
    run_ok(kiln(&recipes, &out, &cache).args(["build", ARCHIVE]));
    // A module file of the unpacked linux-image tree is lost from the store.
    let hex = lose_tree_blob(&cache, |path| path.ends_with("/virtio_net.ko"));
    // The modules step runs again (another module list) and links the
    // tree unread: the lost file fails that build, naming what it dropped…
    edit(&recipes.join("modules.toml"), "    \"e1000\",\n", "");
    let err = run_err(kiln(&recipes, &out, &cache).args(["build", ARCHIVE]));
    assert!(
        err.contains(&format!("store blob {} is missing", &hex[..12]))
            && err.contains("tree record(s) naming it were removed"),
        "{err}"
    );
    // …and the next build unpacks the deb again.
    run_ok(kiln(&recipes, &out, &cache).args(["build", ARCHIVE]));
    assert!(blob_file(&cache, &hex).is_file());
}

#[test]
fn a_failing_tool_shows_its_exit_status_last_40_lines_and_full_log() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let out = dir.path().join("output");
    // A depmod that reports another version (so its step cannot be a
    // cache hit), prints 50 numbered lines and fails.
    let script = "[ \"$1\" = --version ] && { echo 'kmod version 0-failing'; exit 0; }\n\
                  i=1; while [ $i -le 50 ]; do echo \"depmod line $i\" >&2; i=$((i+1)); done\nexit 3\n";
    let path = fake_tool(dir.path(), "depmod", script);
    let err = run_err(
        kiln(&recipes, &out, &shared_cache())
            .env("PATH", &path)
            .args(["build", ARCHIVE]),
    );
    assert!(
        err.contains("depmod") && err.contains("exit status: 3"),
        "{err}"
    );
    assert!(err.contains("last 40 lines"), "{err}");
    let shown: Vec<&str> = err
        .lines()
        .filter(|l| l.starts_with("depmod line "))
        .collect();
    let expected: Vec<String> = (11..=50).map(|i| format!("depmod line {i}")).collect();
    assert_eq!(shown, expected);
    // The full log is named after the step and its key, and holds all 50.
    let log = err
        .lines()
        .find_map(|l| l.trim().strip_prefix("full log: "))
        .unwrap_or_else(|| panic!("no log path in:\n{err}"));
    let name = std::path::Path::new(log)
        .file_name()
        .unwrap()
        .to_str()
        .unwrap();
    assert!(log.starts_with(out.join("logs").to_str().unwrap()), "{log}");
    let key = name.trim_end_matches(".log").rsplit('-').next().unwrap();
    assert!(
        key.len() == 12 && key.bytes().all(|b| b.is_ascii_hexdigit()),
        "{name}"
    );
    assert!(
        err.contains(&format!("[{key}]")),
        "the log is not named after the printed key: {err}"
    );
    assert_eq!(std::fs::read_to_string(log).unwrap().lines().count(), 50);
}
