//! `plan --explain`: the reason printed for each kind of change, exactly.

use crate::common::*;

const INITRAMFS: &str = "stage2/stage2_initramfs.cpio.gz";

/// The `why:` line printed under the step whose label starts with `label`.
fn why(output: &[u8], label: &str) -> String {
    let text = String::from_utf8_lossy(output);
    let mut lines = text.lines();
    while let Some(line) = lines.next() {
        if line.get(22..).is_some_and(|l| l.starts_with(label)) {
            return lines.next().unwrap_or_default().trim().to_string();
        }
    }
    panic!("no step `{label}` in:\n{text}")
}

fn short(bytes: &[u8]) -> String {
    kiln::store::Digest::of_bytes(bytes).hex()[..8].to_string()
}

#[test]
fn explain_names_the_changed_overlay_file_and_recipe_param() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let (out, cache) = (dir.path().join("output"), dir.path().join("cache"));
    let plan = |extra: &[&str]| {
        run_ok(
            kiln(&recipes, &out, &cache)
                .args(extra)
                .args(["plan", INITRAMFS, "--explain"]),
        )
        .stdout
    };
    assert_eq!(why(&plan(&[]), "fetch busybox-static"), "why: never built");
    run_ok(kiln(&recipes, &out, &cache).args(["build", INITRAMFS]));

    let line = why(&plan(&["--var", "release=r2"]), "initramfs stage2/");
    assert_eq!(line, "why: param vars.release \"stage2\" → \"r2\"");

    let init = dir.path().join("overlays/stage2/init");
    let before = std::fs::read(&init).unwrap();
    let mut after = before.clone();
    after.extend_from_slice(b"# changed\n");
    std::fs::write(&init, &after).unwrap();
    let expected = format!(
        "why: input overlay.0 changed (init sha256 {}…→{}…)",
        short(&before),
        short(&after)
    );
    assert_eq!(why(&plan(&[]), "initramfs stage2/"), expected);
    let json = run_ok(kiln(&recipes, &out, &cache).args(["plan", INITRAMFS, "--json"])).stdout;
    let steps: serde_json::Value = serde_json::from_slice(&json).unwrap();
    let step = steps
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["status"] == "miss")
        .unwrap();
    assert_eq!(format!("why: {}", step["why"].as_str().unwrap()), expected);
    // The same reason as data: an input whose tree changed in one file.
    let reasons = step["reasons"].as_array().unwrap();
    assert_eq!(reasons.len(), 1, "{reasons:?}");
    assert_eq!(reasons[0]["reason"], "input");
    assert_eq!(reasons[0]["name"], "overlay.0");
    assert_eq!(reasons[0]["change"]["change"], "changed");
    let file = &reasons[0]["inside"][0];
    assert_eq!(
        (&file["what"], &file["path"]),
        (&"file".into(), &"init".into())
    );
    let digest = kiln::store::Digest::of_bytes(&after).hex();
    assert_eq!(file["change"]["new"], digest.as_str());
    let build = run_ok(kiln(&recipes, &out, &cache).args(["build", INITRAMFS, "--explain"])).stdout;
    let reason = expected.trim_start_matches("why: ");
    let said = format!("initramfs stage2/stage2_initramfs.cpio.gz: {reason}");
    assert!(
        String::from_utf8_lossy(&build).contains(&said),
        "build --explain did not say `{said}`"
    );
}

#[test]
fn explain_names_a_repinned_source() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let (out, cache) = (dir.path().join("output"), dir.path().join("cache"));
    run_ok(kiln(&recipes, &out, &cache).args(["build", INITRAMFS]));
    let sources = std::fs::read_to_string(recipes.join("sources.toml")).unwrap();
    let old = "3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744";
    let new = "1111111111111111111111111111111111111111111111111111111111111111";
    let repinned = sources
        .replace("1:1.35.0-4+deb12u1+b1", "1:1.36.1-9")
        .replace(old, new);
    std::fs::write(recipes.join("sources.toml"), repinned).unwrap();
    let plan = run_ok(kiln(&recipes, &out, &cache).args(["plan", INITRAMFS, "--explain"])).stdout;
    let expected = format!("why: param sha256 \"{old}\" → \"{new}\"; param version \"1:1.35.0-4+deb12u1+b1\" → \"1:1.36.1-9\"");
    assert_eq!(why(&plan, "fetch busybox-static"), expected);
}

#[test]
fn explain_names_a_changed_tool_version() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let out = dir.path().join("output");
    run_ok(kiln(&recipes, &out, &shared_cache()).args(["build", "modules"]));
    let real = kiln::tools::find("depmod").expect("depmod is installed");
    let real_version = kiln::tools::version("depmod").unwrap();
    let script = format!(
        "[ \"$1\" = --version ] && {{ echo 'kmod version 99'; exit 0; }}\nexec {} \"$@\"\n",
        real.display()
    );
    let path = fake_tool(dir.path(), "depmod", &script);
    let plan = run_ok(
        kiln(&recipes, &out, &shared_cache())
            .env("PATH", &path)
            .args(["plan", "modules", "--explain"]),
    )
    .stdout;
    assert_eq!(
        why(&plan, "depmod 6.1.0-50-amd64"),
        format!("why: tool depmod {real_version} → kmod version 99")
    );
}
