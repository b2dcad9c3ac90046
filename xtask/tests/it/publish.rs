//! `cargo xtask publish`: a built output uploaded as a release to S3
//! (moto), GCS (gcp-storage-emulator) and a directory; idempotent re-runs,
//! refused and forced overwrites, dry runs, `--latest`, a server that dies
//! mid-publish, and wrong credentials.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use crate::common::servers::{self, Server};
use crate::common::*;
use kiln::store::Digest;

const ARTIFACT: &str = "stage2/stage2_initramfs.cpio.gz";
const SECRET: &str = "kiln-publish-secret-7c1e";
const TOKEN: &str = "kiln-session-token-19ad";

/// Builds `ARTIFACT` into `<dir>/output` (shared cache) and returns that.
fn built(dir: &Path) -> PathBuf {
    let recipes = copy_recipes(dir);
    let out = dir.join("output");
    run_ok(kiln(&recipes, &out, &shared_cache()).args(["build", ARTIFACT]));
    out
}

fn publish(output: &Path, to: &str, version: &str, extra: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.arg("--output")
        .arg(output)
        .args(["publish", "--to", to, "--version", version])
        .args(extra);
    cmd
}

fn text(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout)
}

fn s3_env(cmd: &mut Command, server: &Server, key: &str, secret: &str) {
    servers::s3_env(cmd, &server.endpoint(), key, secret);
}

/// Runs `body` in Python with `s3`, a boto3 client of moto's server (moto
/// keeps objects private: an unsigned request is refused), and `args` as
/// `sys.argv[2:]`; its stdout.
fn boto3(server: &Server, body: &str, args: &[&str]) -> String {
    let script = format!(
        r#"import boto3, hashlib, sys
s3 = boto3.client("s3", endpoint_url=sys.argv[1], region_name="us-east-1",
                  aws_access_key_id="k", aws_secret_access_key="s")
{body}"#
    );
    let endpoint = server.endpoint();
    servers::python(&script, &[&[endpoint.as_str()], args].concat())
}

/// The sha256 of an object in moto's bucket.
fn s3_object(server: &Server, bucket: &str, key: &str) -> Option<Digest> {
    let script = r#"
try:
    body = s3.get_object(Bucket=sys.argv[2], Key=sys.argv[3])["Body"].read()
except s3.exceptions.NoSuchKey:
    sys.exit(0)
print(hashlib.sha256(body).hexdigest())
"#;
    let hex = boto3(server, script, &[bucket, key]);
    (!hex.trim().is_empty()).then(|| hex.trim().parse().unwrap())
}

fn digest_of(path: &Path) -> Digest {
    Digest::of_bytes(&std::fs::read(path).unwrap())
}

fn gcs_digest(server: &Server, name: &str) -> Option<Digest> {
    servers::gcs_object(server, "kiln-releases", name).map(|b| Digest::of_bytes(&b))
}

#[test]
fn a_release_round_trips_through_s3_and_a_rerun_uploads_nothing() {
    let Some(server) = servers::moto() else {
        return;
    };
    servers::create_s3_bucket(&server, "kiln-releases");
    let dir = tempfile::tempdir().unwrap();
    let out = built(dir.path());
    let to = "s3://kiln-releases/epoxy";
    let mut first = publish(&out, to, "2026.11.24", &["--latest"]);
    s3_env(&mut first, &server, "kiln-test-key", SECRET);
    let first = run_ok(&mut first);
    assert!(
        text(&first).contains("published 2026.11.24: 2 uploaded"),
        "{}",
        text(&first)
    );
    for prefix in ["2026.11.24", "latest"] {
        for name in [ARTIFACT, "manifest.json"] {
            let there = s3_object(&server, "kiln-releases", &format!("epoxy/{prefix}/{name}"));
            assert_eq!(there, Some(digest_of(&out.join(name))), "{prefix}/{name}");
        }
    }
    let mut again = publish(&out, to, "2026.11.24", &[]);
    s3_env(&mut again, &server, "kiln-test-key", SECRET);
    let again = run_ok(&mut again);
    assert!(
        text(&again).contains("all 2 objects already there with the same sha256: nothing uploaded"),
        "{}",
        text(&again)
    );
    assert!(
        text(&again).contains("published 2026.11.24: nothing to upload, 2 already there"),
        "{}",
        text(&again)
    );
    for out in [&first, &again] {
        assert!(!text(out).contains(SECRET));
    }
}

#[test]
fn a_release_round_trips_through_the_gcs_emulator() {
    let dir = tempfile::tempdir().unwrap();
    let Some(server) = servers::gcs_emulator(&dir.path().join("gcs"), "kiln-releases", None) else {
        return;
    };
    let out = built(dir.path());
    let run = |extra: &[&str]| {
        let mut cmd = publish(&out, "gs://kiln-releases/epoxy", "v1", extra);
        cmd.env("STORAGE_EMULATOR_HOST", server.endpoint());
        run_ok(&mut cmd)
    };
    run(&["--latest"]);
    for prefix in ["v1", "latest"] {
        for name in [ARTIFACT, "manifest.json"] {
            let there = gcs_digest(&server, &format!("epoxy/{prefix}/{name}"));
            assert_eq!(there, Some(digest_of(&out.join(name))), "{prefix}/{name}");
        }
    }
    let again = run(&[]);
    assert!(
        text(&again).contains("nothing uploaded"),
        "{}",
        text(&again)
    );
}

#[test]
fn different_bytes_are_refused_before_anything_is_uploaded_unless_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let out = built(dir.path());
    let bucket = dir.path().join("bucket");
    let to = format!("file://{}", bucket.display());
    run_ok(&mut publish(&out, &to, "v1", &[]));
    // Someone changed an object of the release.
    let artifact = bucket.join("v1").join(ARTIFACT);
    std::fs::write(&artifact, b"not the initramfs").unwrap();
    let manifest_before = std::fs::read(bucket.join("v1/manifest.json")).unwrap();
    let err = run_err(&mut publish(&out, &to, "v1", &[]));
    assert!(
        err.contains("already holds different bytes for 1 object(s)"),
        "{err}"
    );
    assert!(
        err.contains(&format!("  {ARTIFACT} (there: sha256 ")),
        "{err}"
    );
    assert!(err.contains("nothing was uploaded"), "{err}");
    assert!(err.contains("--overwrite"), "{err}");
    assert_eq!(std::fs::read(&artifact).unwrap(), b"not the initramfs");
    assert_eq!(
        std::fs::read(bucket.join("v1/manifest.json")).unwrap(),
        manifest_before
    );
    let forced = run_ok(&mut publish(&out, &to, "v1", &["--overwrite"]));
    assert!(text(&forced).contains("1 to replace"), "{}", text(&forced));
    assert_eq!(digest_of(&artifact), digest_of(&out.join(ARTIFACT)));
    assert_eq!(
        std::fs::read(bucket.join("v1/manifest.json")).unwrap(),
        manifest_before
    );
}

#[test]
fn a_dry_run_says_what_it_would_upload_and_uploads_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let out = built(dir.path());
    let bucket = dir.path().join("bucket");
    let to = format!("file://{}", bucket.display());
    let dry = run_ok(&mut publish(&out, &to, "v1", &["--dry-run", "--latest"]));
    let t = text(&dry);
    assert!(t.contains(&format!("would upload {ARTIFACT}")), "{t}");
    assert!(t.contains("would upload manifest.json"), "{t}");
    assert!(t.contains("dry run, v1: 2 to upload ("), "{t}");
    assert!(t.contains("; latest: 2 to upload ("), "{t}");
    assert_eq!(files(&bucket), Vec::<String>::new());
}

#[test]
fn an_output_that_no_longer_matches_its_manifest_is_not_published() {
    let dir = tempfile::tempdir().unwrap();
    let out = built(dir.path());
    std::fs::write(out.join(ARTIFACT), b"edited by hand").unwrap();
    let bucket = dir.path().join("bucket");
    let err = run_err(&mut publish(
        &out,
        &format!("file://{}", bucket.display()),
        "v1",
        &[],
    ));
    assert!(
        err.contains("is not the file") && err.contains("rebuild before publishing"),
        "{err}"
    );
    assert_eq!(files(&bucket), Vec::<String>::new());
    let bad = run_err(&mut publish(&out, "file:///tmp/x", "latest", &[]));
    assert!(bad.contains("--version `latest`"), "{bad}");
}

#[test]
fn a_server_stopped_mid_publish_leaves_no_manifest_and_a_rerun_completes() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("gcs");
    let Some(server) = servers::gcs_emulator(&data, "kiln-releases", None) else {
        return;
    };
    let port = server.port;
    let out = built(dir.path());
    // The server dies as the manifest's upload starts: the artifact is in.
    let server = std::sync::Arc::new(std::sync::Mutex::new(server));
    let relay = {
        let server = server.clone();
        servers::fault_relay(port, "epoxy/v1/manifest.json\"", move || {
            server.lock().unwrap().stop()
        })
    };
    let mut cmd = publish(&out, "gs://kiln-releases/epoxy", "v1", &["-j", "1"]);
    cmd.env("STORAGE_EMULATOR_HOST", format!("127.0.0.1:{relay}"));
    let err = run_err(&mut cmd);
    assert!(
        err.contains("uploading gs://kiln-releases/epoxy/v1/manifest.json"),
        "{err}"
    );
    // Restarted on the same data: the artifact is there, the manifest not.
    let restarted = servers::gcs_emulator(&data, "kiln-releases", Some(port)).unwrap();
    let artifact = gcs_digest(&restarted, &format!("epoxy/v1/{ARTIFACT}"));
    assert_eq!(artifact, Some(digest_of(&out.join(ARTIFACT))));
    assert_eq!(gcs_digest(&restarted, "epoxy/v1/manifest.json"), None);
    let mut rerun = publish(&out, "gs://kiln-releases/epoxy", "v1", &[]);
    rerun.env("STORAGE_EMULATOR_HOST", restarted.endpoint());
    let rerun = run_ok(&mut rerun);
    assert!(
        text(&rerun).contains("1 of 2 objects to upload"),
        "{}",
        text(&rerun)
    );
    let manifest = gcs_digest(&restarted, "epoxy/v1/manifest.json");
    assert_eq!(manifest, Some(digest_of(&out.join("manifest.json"))));
}

#[test]
fn wrong_credentials_are_a_clear_error_and_nothing_is_published() {
    let Some((server, key, secret)) = servers::moto_with_auth("kiln-releases") else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let out = built(dir.path());
    let to = "s3://kiln-releases/epoxy";
    let mut wrong = publish(&out, to, "v1", &[]);
    s3_env(&mut wrong, &server, &key, SECRET);
    let err = run_err(&mut wrong);
    assert!(err.contains("the server refused the credentials"), "{err}");
    assert!(err.contains("s3://kiln-releases/epoxy/v1/"), "{err}");
    assert!(!err.contains(SECRET) && !err.contains(&secret), "{err}");
    // A session token the server does not know: refused, and not echoed.
    let mut token = publish(&out, to, "v1", &[]);
    s3_env(&mut token, &server, &key, &secret);
    token.env("AWS_SESSION_TOKEN", TOKEN);
    let err = run_err(&mut token);
    assert!(
        err.contains("s3://kiln-releases/epoxy/v1/") && err.contains("status code: 4"),
        "{err}"
    );
    assert!(!err.contains(TOKEN) && !err.contains(&secret), "{err}");
    // Nothing was written: the right key finds an empty version and uploads all.
    let mut right = publish(&out, to, "v1", &[]);
    s3_env(&mut right, &server, &key, &secret);
    let right = run_ok(&mut right);
    assert!(
        text(&right).contains("2 of 2 objects to upload"),
        "{}",
        text(&right)
    );
    assert!(!text(&right).contains(&secret));
}

/// Adds to `out`'s manifest an artifact entry for `path` with `sha256`.
fn forge_manifest_entry(out: &Path, path: &str, sha256: &Digest) {
    let file = out.join("manifest.json");
    let mut manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(&file).unwrap()).unwrap();
    let artifacts = manifest["artifacts"].as_array_mut().unwrap();
    let mut forged = artifacts[0].clone();
    forged["name"] = path.into();
    forged["path"] = path.into();
    forged["sha256"] = sha256.hex().into();
    artifacts.push(forged);
    std::fs::write(&file, serde_json::to_vec(&manifest).unwrap()).unwrap();
}

#[test]
fn a_forged_manifest_cannot_make_publish_upload_a_file_outside_the_output() {
    let dir = tempfile::tempdir().unwrap();
    let out = built(dir.path());
    let good = std::fs::read(out.join("manifest.json")).unwrap();
    let target = dir.path().join("bucket");
    let to = format!("file://{}", target.display());
    let secret = dir.path().join("secret");
    std::fs::write(&secret, "not for the bucket\n").unwrap();
    let digest = digest_of(&secret);
    let relative =
        format!("../{}", "../".repeat(8)) + secret.strip_prefix("/").unwrap().to_str().unwrap();
    std::os::unix::fs::symlink(&secret, out.join("stage2/linked")).unwrap();
    for (path, said) in [
        (secret.display().to_string(), "not an artifact path"),
        (relative, "not an artifact path"),
        ("stage2/linked".to_string(), "a symbolic link is on the way"),
    ] {
        std::fs::write(out.join("manifest.json"), &good).unwrap();
        forge_manifest_entry(&out, &path, &digest);
        let err = run_err(&mut publish(&out, &to, "1", &[]));
        assert!(err.contains(said), "{path}: {err}");
        assert!(
            files(&target).is_empty(),
            "{path}: uploaded {:?}",
            files(&target)
        );
    }
}

#[test]
fn an_object_replaced_with_the_original_metadata_is_found_different() {
    let Some(server) = servers::moto() else {
        return;
    };
    servers::create_s3_bucket(&server, "kiln-releases");
    let dir = tempfile::tempdir().unwrap();
    let out = built(dir.path());
    let to = "s3://kiln-releases/epoxy";
    let mut first = publish(&out, to, "1", &[]);
    s3_env(&mut first, &server, "kiln-test-key", SECRET);
    run_ok(&mut first);
    // Someone with write access swaps the image, keeping the sha256
    // metadata Kiln wrote: only the bytes (or the server's MD5) tell.
    let original = digest_of(&out.join(ARTIFACT));
    let script = r#"
s3.put_object(Bucket="kiln-releases", Key=sys.argv[2], Body=b"tampered",
              Metadata={"sha256": sys.argv[3]})
"#;
    let key = format!("epoxy/1/{ARTIFACT}");
    boto3(&server, script, &[&key, &original.hex()]);
    let mut again = publish(&out, to, "1", &[]);
    s3_env(&mut again, &server, "kiln-test-key", SECRET);
    let err = run_err(&mut again);
    let tampered = Digest::of_bytes(b"tampered");
    assert!(
        err.contains("already holds different bytes for 1 object(s)")
            && err.contains(&format!("there: sha256 {}", tampered.short())),
        "{err}"
    );
}

#[test]
fn a_url_carrying_credentials_is_refused_without_echoing_them() {
    let dir = tempfile::tempdir().unwrap();
    let out = built(dir.path());
    let err = run_err(&mut publish(
        &out,
        &format!("s3://AKIAEXAMPLE:{SECRET}@kiln-releases/x"),
        "1",
        &[],
    ));
    assert!(err.contains("the URL carries credentials"), "{err}");
    assert!(
        !err.contains(SECRET) && !err.contains("AKIAEXAMPLE"),
        "{err}"
    );
}
