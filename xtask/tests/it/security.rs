//! What a bucket, a checkout or a variable could make Kiln do: each case was
//! an attack or an accident that worked, and must now be refused, with
//! nothing written outside Kiln's directories.

use std::path::Path;

use crate::common::*;

/// A recipe whose initramfs copies a program out of an unpacked package:
/// the `programs` step checks that package's tree out on disk.
const PROBE: &str = r#"
description = "busybox, copied out of its package as a program"
epoch = 1700000000

[initramfs]
output = "probe/probe.cpio.gz"
compression = "gz"
busybox = "busybox"
packages = ["busybox"]
programs = ["bin/busybox"]
"#;

/// The record in the `file://` remote at `remote` of the step labelled `step`.
fn remote_record(remote: &Path, step: &str) -> (std::path::PathBuf, serde_json::Value) {
    for name in files(&remote.join("actions")) {
        let path = remote.join("actions").join(name);
        let record: serde_json::Value =
            serde_json::from_slice(&std::fs::read(&path).unwrap()).unwrap();
        if record["step"] == step {
            return (path, record);
        }
    }
    panic!("no record of `{step}` in {}", remote.display())
}

#[test]
fn a_remote_tree_that_climbs_out_is_refused_and_nothing_is_written_outside() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    std::fs::write(recipes.join("probe.toml"), PROBE).unwrap();
    let remote_dir = dir.path().join("remote");
    let remote = format!("file://{}", remote_dir.display());
    let build = |who: &str, extra: &[&str]| {
        let out = dir.path().join(who).join("output");
        let mut cmd = kiln(&recipes, &out, &dir.path().join(who).join("cache"));
        cmd.args(["--remote-cache", &remote])
            .args(extra)
            .args(["build", "probe"]);
        let result = run_ok(&mut cmd);
        let image = std::fs::read(out.join("probe/probe.cpio.gz")).unwrap();
        (String::from_utf8_lossy(&result.stderr).into_owned(), image)
    };
    let (_, good) = build("writer", &[]);

    // A writer of the bucket adds two files to the unpacked package: one by
    // an absolute path, one climbing out of the checkout. They reuse a blob
    // of the tree, so the tree's pack serves the new tree unchanged.
    let (record_path, mut record) = remote_record(&remote_dir, "unpack busybox");
    let old = record["outputs"]["tree"]["digest"]
        .as_str()
        .unwrap()
        .to_string();
    let trees = remote_dir.join("trees");
    let mut tree: serde_json::Value =
        serde_json::from_slice(&std::fs::read(trees.join(format!("{old}.json"))).unwrap()).unwrap();
    let entries = tree["entries"].as_array_mut().unwrap();
    let file = entries
        .iter()
        .find(|e| e["type"] == "file")
        .unwrap()
        .clone();
    let absolute = dir.path().join("pwned-abs");
    for path in [
        absolute.display().to_string(),
        "../../../../pwned-rel".into(),
    ] {
        let mut planted = file.clone();
        planted["path"] = path.into();
        entries.push(planted);
    }
    let bytes = serde_json::to_vec(&tree).unwrap();
    let new = kiln::store::Digest::of_bytes(&bytes).hex();
    std::fs::write(trees.join(format!("{new}.json")), &bytes).unwrap();
    let packs = remote_dir.join("packs");
    std::fs::copy(
        packs.join(format!("{old}.zst")),
        packs.join(format!("{new}.zst")),
    )
    .unwrap();
    record["outputs"]["tree"]["digest"] = new.clone().into();
    std::fs::write(&record_path, serde_json::to_vec(&record).unwrap()).unwrap();

    let (said, image) = build("reader", &["--remote-cache-readonly"]);
    assert!(
        said.contains(&format!(
            "trees/{new}.json from the remote cache {remote} is refused"
        )) && said.contains("absolute path")
            && said.contains("building it here"),
        "{said}"
    );
    assert_eq!(image, good, "the reader built the package itself");
    assert!(!absolute.exists(), "{} was written", absolute.display());
    let escaped: Vec<String> = files(dir.path())
        .into_iter()
        .filter(|f| f.contains("pwned"))
        .collect();
    assert!(escaped.is_empty(), "written: {escaped:?}");
    assert!(!Path::new("/pwned-rel").exists());
}

#[test]
fn a_source_checkout_linking_out_of_itself_is_refused_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let checkout = dir.path().join("ipxe");
    let outside = dir.path().join("elsewhere");
    std::fs::create_dir_all(checkout.join("src/config")).unwrap();
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(checkout.join("src/Makefile"), "all:\n").unwrap();
    std::os::unix::fs::symlink(&outside, checkout.join("src/config/local")).unwrap();
    let said = run_err(
        kiln(
            &recipes,
            &dir.path().join("output"),
            &dir.path().join("cache"),
        )
        .arg("--source")
        .arg(format!("ipxe={}", checkout.display()))
        .args(["build", "stage1"]),
    );
    assert!(
        said.contains(&format!(
            "src/config/local is a symbolic link to {}, outside the tree",
            outside.display()
        )),
        "{said}"
    );
    assert!(files(&outside).is_empty());
}

const INITRAMFS: &str = "stage2/stage2_initramfs.cpio.gz";

/// The `/etc/kiln-release` an initramfs carries.
fn release_file(image: &Path) -> String {
    let entries = archive_entries(image);
    let entry = entries
        .iter()
        .find(|e| e.name == "etc/kiln-release")
        .unwrap();
    String::from_utf8_lossy(&entry.data).into_owned()
}

/// An Ed25519 key pair as OpenSSL writes it: (private PEM, public PEM).
fn openssl_key_pair(dir: &Path, name: &str) -> (std::path::PathBuf, std::path::PathBuf) {
    let (private, public) = (
        dir.join(format!("{name}.pem")),
        dir.join(format!("{name}.pub")),
    );
    let genpkey = std::process::Command::new("openssl")
        .args(["genpkey", "-algorithm", "ed25519", "-out"])
        .arg(&private)
        .status()
        .unwrap();
    let pubout = std::process::Command::new("openssl")
        .args(["pkey", "-pubout", "-in"])
        .arg(&private)
        .arg("-out")
        .arg(&public)
        .status()
        .unwrap();
    assert!(genpkey.success() && pubout.success());
    (private, public)
}

/// Builds the stage2 initramfs with a store of its own under `dir/who`,
/// the `file://` remote `remote` and `extra` arguments; (stderr, image path).
fn initramfs(
    recipes: &Path,
    dir: &Path,
    who: &str,
    remote: &str,
    extra: &[&str],
) -> (std::process::Output, std::path::PathBuf) {
    let out = dir.join(who).join("output");
    let mut cmd = kiln(recipes, &out, &dir.join(who).join("cache"));
    cmd.args(["--remote-cache", remote])
        .args(extra)
        .args(["build", INITRAMFS]);
    (run_ok(&mut cmd), out.join(INITRAMFS))
}

#[test]
fn a_record_moved_under_another_key_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let remote_dir = dir.path().join("remote");
    let remote = format!("file://{}", remote_dir.display());
    initramfs(
        &recipes,
        dir.path(),
        "writer-rc1",
        &remote,
        &["--var", "release=rc1"],
    );
    let rc1 = remote_record(&remote_dir, "initramfs stage2/stage2_initramfs.cpio.gz").0;
    std::fs::rename(&rc1, dir.path().join("rc1.json")).unwrap();
    initramfs(
        &recipes,
        dir.path(),
        "writer-c2",
        &remote,
        &["--var", "release=c2"],
    );
    let c2 = remote_record(&remote_dir, "initramfs stage2/stage2_initramfs.cpio.gz").0;
    // The bucket's writer serves c2's record as rc1's.
    std::fs::copy(&c2, &rc1).unwrap();
    let (result, image) = initramfs(
        &recipes,
        dir.path(),
        "reader",
        &remote,
        &["--var", "release=rc1"],
    );
    let said = String::from_utf8_lossy(&result.stderr);
    let name = rc1.file_name().unwrap().to_string_lossy();
    assert!(
        said.contains(&format!("actions/{name} in the remote cache {remote} is refused: it is the record of another key")),
        "{said}"
    );
    assert_eq!(release_file(&image), "KILN_RELEASE=\"rc1\"\n");
}

#[test]
fn a_reader_that_trusts_a_key_uses_only_records_it_signed() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let remote_dir = dir.path().join("remote");
    let remote = format!("file://{}", remote_dir.display());
    let (private, public) = openssl_key_pair(dir.path(), "writer");
    let signing = ["--remote-cache-signing-key", private.to_str().unwrap()];
    let trusting = [
        "--remote-cache-trust",
        public.to_str().unwrap(),
        "--remote-cache-readonly",
    ];
    let (_, good) = initramfs(&recipes, dir.path(), "writer", &remote, &signing);

    // Signed by the trusted key: everything comes from the remote.
    let (result, image) = initramfs(&recipes, dir.path(), "reader", &remote, &trusting);
    assert_eq!(
        steps_run(&result),
        0,
        "{}",
        String::from_utf8_lossy(&result.stderr)
    );
    assert_eq!(
        std::fs::read(&image).unwrap(),
        std::fs::read(&good).unwrap()
    );

    // A builder without the key uploads records for another release: a
    // trusting reader uses none of them, says so once, builds them itself.
    let rc2 = ["--var", "release=rc2"];
    initramfs(&recipes, dir.path(), "unsigned", &remote, &rc2);
    let (result, image) = initramfs(
        &recipes,
        dir.path(),
        "reader2",
        &remote,
        &[&trusting[..], &rc2[..]].concat(),
    );
    let said = String::from_utf8_lossy(&result.stderr);
    assert_eq!(
        said.matches("the trusted key did not sign").count(),
        1,
        "{said}"
    );
    assert!(
        said.contains("it is not signed") && !said.contains("    remote initramfs"),
        "{said}"
    );
    assert_eq!(release_file(&image), "KILN_RELEASE=\"rc2\"\n");

    // A signed record edited afterwards to name other outputs.
    let (path, mut record) = remote_record(&remote_dir, "unpack busybox");
    let (_, c2) = remote_record(&remote_dir, "initramfs stage2/stage2_initramfs.cpio.gz");
    record["outputs"] = c2["outputs"].clone();
    std::fs::write(&path, serde_json::to_vec(&record).unwrap()).unwrap();
    let (result, _) = initramfs(&recipes, dir.path(), "reader3", &remote, &trusting);
    let said = String::from_utf8_lossy(&result.stderr);
    assert!(
        said.contains("its signature is not from the trusted key"),
        "{said}"
    );
}

#[test]
fn a_variable_cannot_become_code_where_it_lands() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let (out, cache) = (dir.path().join("output"), dir.path().join("cache"));
    let plan = |var: &str, target: &str| {
        run_err(kiln(&recipes, &out, &cache).args(["--var", var, "plan", target]))
    };
    // A line break in a URL would add a `shell` command to the iPXE scripts
    // (stage1's, the first loaded, is where the error points).
    let said = plan("stage2_url=http://x\nshell", "stage2");
    assert!(
        said.contains(
            r#"`stage2_url` is "http://x\nshell", and '\n' cannot go into an iPXE script"#
        ) && said.contains("ipxe/stage1.ipxe:28:28"),
        "{said}"
    );
    // A quote in a release name would put a command into /etc/kiln-release,
    // which /init sources.
    let said = plan(r#"release=x"; reboot -f; ""#, INITRAMFS);
    assert!(
        said.contains(r#"'"' cannot go into a shell-sourced template: inside double quotes"#)
            && said.contains("etc/kiln-release:1:"),
        "{said}"
    );
    // A value that is text to every parser builds.
    let ok = kiln(&recipes, &out, &cache)
        .args(["--var", "release=2026.12 rc1 (Kiln's)", "build", INITRAMFS])
        .output()
        .unwrap();
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    assert_eq!(
        release_file(&out.join(INITRAMFS)),
        "KILN_RELEASE=\"2026.12 rc1 (Kiln's)\"\n"
    );
}
