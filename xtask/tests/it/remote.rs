//! The shared remote cache: two builders with separate local stores and one
//! remote (a `file://` directory, and S3 through moto's server on
//! 127.0.0.1), corruption on the remote, read-only use, and credentials
//! that must never be printed.

use std::path::Path;
use std::process::Output;

use crate::common::*;

const ARTIFACT: &str = "stage2/stage2_initramfs.cpio.gz";

fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Builds `ARTIFACT` with a local store of its own under `dir` and `remote`.
fn build(recipes: &Path, dir: &Path, remote: &str, extra: &[&str]) -> (Output, Vec<u8>) {
    let (result, image) = build_with_remote(recipes, dir, remote, extra, ARTIFACT);
    (result, std::fs::read(image).unwrap())
}

#[test]
fn a_second_builder_takes_everything_from_a_file_remote() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let remote = format!("file://{}", dir.path().join("remote").display());
    let (first, bytes_a) = build(&recipes, &dir.path().join("a"), &remote, &[]);
    assert!(steps_run(&first) > 0);
    let (second, bytes_b) = build(&recipes, &dir.path().join("b"), &remote, &[]);
    assert_eq!(steps_run(&second), 0, "{}", stderr(&second));
    assert!(stderr(&second).contains("    remote initramfs stage2/stage2_initramfs.cpio.gz"));
    assert_eq!(bytes_a, bytes_b);
}

#[test]
fn a_corrupt_remote_blob_is_reported_rebuilt_and_replaced() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let remote_dir = dir.path().join("remote");
    let remote = format!("file://{}", remote_dir.display());
    let (_, bytes_a) = build(&recipes, &dir.path().join("a"), &remote, &[]);
    // The image itself, corrupted on the server.
    let digest = kiln::store::Digest::of_bytes(&bytes_a).hex();
    let blob = remote_dir.join("blobs").join(&digest);
    let mut damaged = std::fs::read(&blob).unwrap();
    damaged[100] ^= 0xff;
    std::fs::write(&blob, &damaged).unwrap();
    let (second, bytes_b) = build(&recipes, &dir.path().join("b"), &remote, &[]);
    let err = stderr(&second);
    assert!(
        err.contains(&format!(
            "blobs/{digest} in the remote cache {remote} is corrupt"
        )) && err.contains("building it here"),
        "{err}"
    );
    assert_eq!(steps_run(&second), 1, "only the image is rebuilt:\n{err}");
    assert_eq!(bytes_a, bytes_b);
    assert_eq!(
        std::fs::read(&blob).unwrap(),
        bytes_a,
        "the good blob replaced the bad one"
    );
}

#[test]
fn a_corrupt_tree_pack_is_reported_and_rebuilt() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let remote_dir = dir.path().join("remote");
    let remote = format!("file://{}", remote_dir.display());
    let (_, bytes_a) = build(&recipes, &dir.path().join("a"), &remote, &[]);
    // Trees (unpacked debs, overlays) travel as one pack each.
    let packs = files(&remote_dir.join("packs"));
    assert!(!packs.is_empty());
    assert!(
        files(&remote_dir.join("blobs")).len() < 10,
        "tree files are not single objects"
    );
    let pack = remote_dir.join("packs").join(&packs[0]);
    let good = std::fs::read(&pack).unwrap();
    let mut damaged = good.clone();
    let middle = damaged.len() / 2;
    damaged[middle] ^= 0xff;
    std::fs::write(&pack, &damaged).unwrap();
    let (second, bytes_b) = build(&recipes, &dir.path().join("b"), &remote, &[]);
    let err = stderr(&second);
    assert!(
        err.contains(&format!(
            "packs/{} in the remote cache {remote} is corrupt",
            packs[0]
        )),
        "{err}"
    );
    assert!(steps_run(&second) >= 1, "{err}");
    assert_eq!(bytes_a, bytes_b);
    assert_eq!(
        std::fs::read(&pack).unwrap(),
        good,
        "the rebuilt pack replaced the bad one"
    );
}

#[test]
fn a_read_only_remote_is_never_written() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let remote_dir = dir.path().join("remote");
    std::fs::create_dir_all(&remote_dir).unwrap();
    let remote = format!("file://{}", remote_dir.display());
    let (first, _) = build(
        &recipes,
        &dir.path().join("a"),
        &remote,
        &["--remote-cache-readonly"],
    );
    assert!(steps_run(&first) > 0);
    assert_eq!(files(&remote_dir), Vec::<String>::new());
}

const SECRET: &str = "kiln-test-secret-4f9a";

#[test]
fn two_builders_share_an_s3_remote_and_no_credential_is_printed() {
    let Some(server) = servers::moto() else {
        return;
    };
    let endpoint = server.endpoint();
    servers::create_s3_bucket(&server, "kiln-cache");
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let remote = "s3://kiln-cache/ci";
    let with_env = |extra: &[&str], sub: &str| {
        let out_dir = dir.path().join(sub);
        let mut cmd = kiln(&recipes, &out_dir.join("output"), &out_dir.join("cache"));
        servers::s3_env(&mut cmd, &endpoint, "kiln-test-key", SECRET);
        cmd.args(["--remote-cache", remote])
            .args(extra)
            .args(["build", ARTIFACT]);
        let out = run_ok(&mut cmd);
        let bytes = std::fs::read(out_dir.join("output").join(ARTIFACT)).unwrap();
        (out, bytes, out_dir)
    };
    let (first, bytes_a, a) = with_env(&[], "a");
    assert!(steps_run(&first) > 0);
    let (second, bytes_b, b) = with_env(&[], "b");
    assert_eq!(steps_run(&second), 0, "{}", stderr(&second));
    assert_eq!(bytes_a, bytes_b);
    // The secret is in no message, log, artifact or manifest.
    for out in [&first, &second] {
        let text = stderr(out) + &String::from_utf8_lossy(&out.stdout);
        assert!(!text.contains(SECRET));
    }
    for tree in [&a, &b] {
        for f in files(&tree.join("output")) {
            let bytes = std::fs::read(tree.join("output").join(&f)).unwrap();
            assert!(!contains_bytes(&bytes, SECRET.as_bytes()), "{f}");
        }
    }
}

#[test]
fn an_unreachable_remote_is_reported_once_and_the_build_goes_on() {
    // Nothing listens on the discard port: every request is refused.
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let mut cmd = kiln(
        &recipes,
        &dir.path().join("output"),
        &dir.path().join("cache"),
    );
    servers::s3_env(&mut cmd, "http://127.0.0.1:9", "kiln-test-key", SECRET);
    cmd.args(["--remote-cache", "s3://kiln-cache/ci", "build", ARTIFACT]);
    let out = run_ok(&mut cmd);
    let err = stderr(&out);
    assert_eq!(
        err.matches("warning: the remote cache s3://kiln-cache/ci failed")
            .count(),
        1,
        "{err}"
    );
    assert!(
        err.contains("building without it for the rest of this run"),
        "{err}"
    );
    assert!(!err.contains(SECRET));
    assert!(dir.path().join("output").join(ARTIFACT).is_file());
}

#[test]
fn two_builders_share_a_gcs_remote() {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = servers::gcs_emulator(&dir.path().join("gcs"), "kiln-cache", None) else {
        return;
    };
    let recipes = copy_recipes(dir.path());
    let with_env = |sub: &str| {
        let out_dir = dir.path().join(sub);
        let mut cmd = kiln(&recipes, &out_dir.join("output"), &out_dir.join("cache"));
        cmd.env("STORAGE_EMULATOR_HOST", server.endpoint()).args([
            "--remote-cache",
            "gs://kiln-cache/ci",
            "build",
            ARTIFACT,
        ]);
        let out = run_ok(&mut cmd);
        (
            out,
            std::fs::read(out_dir.join("output").join(ARTIFACT)).unwrap(),
        )
    };
    let (first, bytes_a) = with_env("a");
    assert!(steps_run(&first) > 0);
    let (second, bytes_b) = with_env("b");
    assert_eq!(steps_run(&second), 0, "{}", stderr(&second));
    assert_eq!(bytes_a, bytes_b);
}

#[test]
fn doctor_reports_a_bucket_that_does_not_exist() {
    let Some(server) = servers::moto() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let doctor = |bucket: &str| {
        let mut cmd = kiln(
            &copy_recipes(dir.path()),
            &dir.path().join("o"),
            &dir.path().join("c"),
        );
        servers::s3_env(&mut cmd, &server.endpoint(), "kiln-test-key", SECRET);
        cmd.args(["--remote-cache", &format!("s3://{bucket}/ci"), "doctor"]);
        String::from_utf8(cmd.output().unwrap().stdout).unwrap()
    };
    servers::create_s3_bucket(&server, "kiln-cache");
    let present = doctor("kiln-cache");
    assert!(
        present.contains("remote:  s3://kiln-cache/ci reachable"),
        "{present}"
    );
    let missing = doctor("no-such-bucket");
    assert!(
        missing.contains("remote:  s3://no-such-bucket/ci NOT reachable"),
        "{missing}"
    );
}
