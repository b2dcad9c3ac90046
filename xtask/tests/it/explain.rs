//! `plan --explain`: why each kind of change reruns a step, matched as the
//! typed reasons `plan --json` gives (`reason`, `change` tags), plus the
//! line an operator reads for one of them.

use crate::common::*;
use serde_json::{json, Value};

const INITRAMFS: &str = "stage2/stage2_initramfs.cpio.gz";

/// The reasons `plan --json` gives for the step whose label starts with
/// `label`, and its `why` line.
fn reasons(plan_json: &[u8], label: &str) -> (Vec<Value>, String) {
    let steps: Value = serde_json::from_slice(plan_json).unwrap();
    let step = steps
        .as_array()
        .unwrap()
        .iter()
        .find(|s| s["step"].as_str().unwrap().starts_with(label))
        .unwrap_or_else(|| panic!("no step `{label}` in {steps:#}"));
    let why = step["why"].as_str().unwrap_or_default().to_string();
    (step["reasons"].as_array().unwrap().clone(), why)
}

fn changed(old: impl Into<Value>, new: impl Into<Value>) -> Value {
    json!({ "change": "changed", "old": old.into(), "new": new.into() })
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
                .args(["plan", INITRAMFS, "--json"]),
        )
        .stdout
    };
    let (never, why) = reasons(&plan(&[]), "fetch busybox-static");
    assert_eq!(
        (never, why.as_str()),
        (vec![json!({ "reason": "never_built" })], "never built")
    );
    run_ok(kiln(&recipes, &out, &cache).args(["build", INITRAMFS]));

    let (param, _) = reasons(&plan(&["--var", "release=r2"]), "initramfs stage2/");
    let release =
        json!({ "reason": "param", "name": "vars.release", "change": changed("stage2", "r2") });
    assert_eq!(param, vec![release]);

    // An input whose tree changed in one file: the file is named, with
    // both digests.
    let init = dir.path().join("overlays/stage2/init");
    let before = std::fs::read(&init).unwrap();
    let mut after = before.clone();
    after.extend_from_slice(b"# changed\n");
    std::fs::write(&init, &after).unwrap();
    let (input, why) = reasons(&plan(&[]), "initramfs stage2/");
    assert_eq!(input.len(), 1, "{input:?}");
    assert_eq!(
        (
            &input[0]["reason"],
            &input[0]["name"],
            &input[0]["change"]["change"],
            &input[0]["more"]
        ),
        (
            &json!("input"),
            &json!("overlay.0"),
            &json!("changed"),
            &json!(0)
        )
    );
    let digest = |b: &[u8]| kiln::store::Digest::of_bytes(b).hex();
    let file = json!({ "what": "file", "path": "init", "change": changed(digest(&before), digest(&after)) });
    assert_eq!(input[0]["inside"], json!([file]));

    // What an operator reads, in `plan --explain` and `build --explain`.
    let expected = format!(
        "input overlay.0 changed (init sha256 {}…→{}…)",
        short(&before),
        short(&after)
    );
    assert_eq!(why, expected);
    let text = run_ok(kiln(&recipes, &out, &cache).args(["plan", INITRAMFS, "--explain"])).stdout;
    assert!(
        String::from_utf8_lossy(&text).contains(&format!("why: {expected}")),
        "plan --explain did not say `why: {expected}`"
    );
    let build = run_ok(kiln(&recipes, &out, &cache).args(["build", INITRAMFS, "--explain"])).stdout;
    let said = format!("initramfs stage2/stage2_initramfs.cpio.gz: {expected}");
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
    let plan = run_ok(kiln(&recipes, &out, &cache).args(["plan", INITRAMFS, "--json"])).stdout;
    let (params, _) = reasons(&plan, "fetch busybox-static");
    let param = |name: &str, old: &str, new: &str| json!({ "reason": "param", "name": name, "change": changed(old, new) });
    assert_eq!(
        params,
        vec![
            param("sha256", old, new),
            param("version", "1:1.35.0-4+deb12u1+b1", "1:1.36.1-9")
        ]
    );
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
            .args(["plan", "modules", "--json"]),
    )
    .stdout;
    let (tools, _) = reasons(&plan, "depmod 6.1.0-50-amd64");
    let tool = json!({ "reason": "tool", "name": "depmod", "change": changed(real_version, "kmod version 99") });
    assert_eq!(tools, vec![tool]);
}
