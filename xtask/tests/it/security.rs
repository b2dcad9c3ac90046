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

[variables]
release = "probe"

[initramfs]
output = "probe/probe.cpio.gz"
compression = "gz"
busybox = "busybox"
overlays = ["../overlays/stage2"]
templates = ["etc/kiln-release"]
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
        let store = dir.path().join(who);
        let (result, image) =
            build_with_remote(&recipes, &store, &remote, extra, "probe/probe.cpio.gz");
        let said = String::from_utf8_lossy(&result.stderr).into_owned();
        (said, std::fs::read(image).unwrap())
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
/// the `file://` remote `remote` and `extra` arguments; (result, image path).
fn initramfs(
    recipes: &Path,
    dir: &Path,
    who: &str,
    remote: &str,
    extra: &[&str],
) -> (std::process::Output, std::path::PathBuf) {
    build_with_remote(recipes, &dir.join(who), remote, extra, INITRAMFS)
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

    // Trusting without the signing key, and not read-only: it builds and
    // uploads nothing (it would only put unsigned records over signed ones).
    let before = files(&remote_dir);
    let trust_only = [
        "--remote-cache-trust",
        public.to_str().unwrap(),
        "--var",
        "release=rc3",
    ];
    let (result, _) = initramfs(&recipes, dir.path(), "builder", &remote, &trust_only);
    assert!(steps_run(&result) > 0);
    assert_eq!(
        files(&remote_dir),
        before,
        "a builder without the signing key uploaded"
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
    let template = std::fs::read_to_string(recipes.join("../ipxe/stage1.ipxe")).unwrap();
    let (line, text) = (template.lines().enumerate())
        .find(|(_, l)| l.contains("{{stage2_url}}"))
        .unwrap();
    let at = format!(
        "ipxe/stage1.ipxe:{}:{}",
        line + 1,
        text.find("{{").unwrap() + 1
    );
    assert!(
        said.contains(
            r#"`stage2_url` is "http://x\nshell", and '\n' cannot go into an iPXE script"#
        ) && said.contains(&at),
        "{at}: {said}"
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
    run_ok(kiln(&recipes, &out, &cache).args([
        "--var",
        "release=2026.12 rc1 (Kiln's)",
        "build",
        INITRAMFS,
    ]));
    assert_eq!(
        release_file(&out.join(INITRAMFS)),
        "KILN_RELEASE=\"2026.12 rc1 (Kiln's)\"\n"
    );
}

/// `outer` (a program and its arguments) running Kiln as `kiln` would:
/// its program, arguments and environment.
fn wrapped(outer: &[&str], kiln: &std::process::Command) -> std::process::Command {
    let mut cmd = std::process::Command::new(outer[0]);
    cmd.args(&outer[1..])
        .arg(kiln.get_program())
        .args(kiln.get_args())
        .envs(kiln.get_envs().filter_map(|(k, v)| v.map(|v| (k, v))));
    cmd
}

/// `script` run by `sh` in a mount namespace of its own (what it mounts
/// is gone when it ends), `"$@"` being Kiln as `kiln` runs it.
fn in_mount_namespace(script: &str, kiln: &std::process::Command) -> std::process::ExitStatus {
    let unshare = [
        "unshare",
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        script,
        "sh",
    ];
    wrapped(&unshare, kiln).status().unwrap()
}

/// Two cheap artifacts that both change with `--var release=…`.
const TWO: [&str; 2] = ["probe", INITRAMFS];

/// Whether every file `output/manifest.json` names has the manifest's
/// sha256; the names it lists.
fn manifest_vouches(out: &Path) -> Vec<String> {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let mut names = Vec::new();
    for a in manifest["artifacts"].as_array().unwrap() {
        let path = out.join(a["path"].as_str().unwrap());
        let (digest, _) = kiln::store::Digest::of_file(&path).unwrap();
        assert_eq!(
            digest.hex(),
            a["sha256"].as_str().unwrap(),
            "{}",
            path.display()
        );
        names.push(a["name"].as_str().unwrap().to_string());
    }
    names
}

/// A recipes directory with `probe.toml`, and a command building into
/// `dir/output` with the shared store.
fn two_artifact_setup(dir: &Path) -> (std::path::PathBuf, std::path::PathBuf) {
    let recipes = copy_recipes(dir);
    std::fs::write(recipes.join("probe.toml"), PROBE).unwrap();
    (recipes, dir.join("output"))
}

fn build_release(recipes: &Path, out: &Path, release: &str) -> std::process::Command {
    build_release_with(recipes, out, &shared_cache(), release)
}

fn build_release_with(
    recipes: &Path,
    out: &Path,
    cache: &Path,
    release: &str,
) -> std::process::Command {
    let mut cmd = kiln(recipes, out, cache);
    cmd.args(["--var", &format!("release={release}"), "build"])
        .args(TWO);
    cmd
}

#[test]
fn a_build_killed_between_two_renames_leaves_a_manifest_that_vouches_for_every_file() {
    if !kiln::testing::program("strace", "apt-get install strace") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (recipes, out) = two_artifact_setup(dir.path());
    // A store of its own: which renames a build makes depends on what the
    // store recorded last, which other tests' builds would change.
    let cache = dir.path().join("cache");
    let build_release =
        |r: &Path, o: &Path, release: &str| build_release_with(r, o, &cache, release);
    for release in ["a", "b", "a"] {
        run_ok(&mut build_release(&recipes, &out, release));
    }
    // Which rename puts the second artifact in place, counted in an a → b
    // build, then the same a → b build killed (SIGKILL) at exactly that
    // rename: the first artifact is new, the second old.
    let strace = |extra: &[&str], release: &str| {
        let outer = [&["strace", "-f", "-qq", "-e", "trace=rename"], extra].concat();
        wrapped(&outer, &build_release(&recipes, &out, release))
            .output()
            .unwrap()
    };
    let trace = dir.path().join("trace");
    let counted = strace(&["-o", &trace.display().to_string()], "b");
    assert!(counted.status.success());
    let renames = std::fs::read_to_string(&trace).unwrap();
    let second = out.join(INITRAMFS).display().to_string();
    let n = 1 + renames
        .lines()
        .position(|l| l.contains(&format!("\"{second}\")")))
        .unwrap_or_else(|| panic!("no rename into {second}:\n{renames}"));
    run_ok(&mut build_release(&recipes, &out, "a"));
    let inject = format!("inject=rename:signal=KILL:when={n}");
    let killed = strace(&["-o", "/dev/null", "-e", &inject], "b");
    assert!(!killed.status.success(), "the build was not killed");
    assert_eq!(
        release_file(&out.join("probe/probe.cpio.gz")),
        "KILN_RELEASE=\"b\"\n"
    );
    assert_eq!(release_file(&out.join(INITRAMFS)), "KILN_RELEASE=\"a\"\n");
    // Mixed files, but the manifest names none it does not vouch for.
    manifest_vouches(&out);
    assert!(out.join(".kiln-staging").exists());
    // The next build finishes the job and leaves nothing behind.
    run_ok(&mut build_release(&recipes, &out, "b"));
    assert_eq!(manifest_vouches(&out), ["probe/probe.cpio.gz", INITRAMFS]);
    assert!(!out.join(".kiln-staging").exists());
}

#[test]
fn a_full_disk_fails_the_install_and_keeps_the_last_good_output() {
    if !kiln::testing::program("unshare", "apt-get install util-linux") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let (recipes, out) = two_artifact_setup(dir.path());
    // The artifacts' size, from a build elsewhere.
    let sizing = dir.path().join("sizing");
    run_ok(&mut build_release(&recipes, &sizing, "b"));
    let size: u64 = ["probe/probe.cpio.gz", INITRAMFS]
        .iter()
        .map(|a| std::fs::metadata(sizing.join(a)).unwrap().len())
        .sum();
    // In a mount namespace of its own, `output/` is a tmpfs with room for
    // one build's artifacts and half another's: the second build cannot
    // stage all it replaces. The result is copied out before the tmpfs goes.
    std::fs::create_dir_all(&out).unwrap();
    let snapshot = dir.path().join("snapshot");
    let script = format!(
        "mount -t tmpfs -o size={}k tmpfs {out} || exit 90\n\
         \"$@\" --var release=a build {targets} > {dir}/a.log 2>&1 || exit 91\n\
         \"$@\" --var release=b build {targets} > {dir}/b.log 2>&1; echo $? > {dir}/b.rc\n\
         cp -a {out} {snapshot}",
        (size + size / 2) / 1024 + 64,
        out = out.display(),
        dir = dir.path().display(),
        snapshot = snapshot.display(),
        targets = TWO.join(" "),
    );
    let status = in_mount_namespace(&script, &kiln(&recipes, &out, &shared_cache()));
    let log = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap_or_default();
    assert!(status.success(), "{status}\n{}", log("a.log"));
    assert_ne!(
        log("b.rc").trim(),
        "0",
        "the second build fit:\n{}",
        log("b.log")
    );
    assert!(
        log("b.log").contains("No space left on device"),
        "{}",
        log("b.log")
    );
    // The last good build, whole: every file as the manifest says, none staged.
    assert_eq!(
        manifest_vouches(&snapshot),
        ["probe/probe.cpio.gz", INITRAMFS]
    );
    assert_eq!(
        release_file(&snapshot.join(INITRAMFS)),
        "KILN_RELEASE=\"a\"\n"
    );
    let left: Vec<String> = files(&snapshot)
        .into_iter()
        .filter(|f| f.contains(".tmp") || f.starts_with(".kiln-staging"))
        .collect();
    assert!(left.is_empty(), "left behind: {left:?}");
}

#[test]
fn two_builds_into_one_output_wait_for_each_other() {
    let dir = tempfile::tempdir().unwrap();
    let (recipes, out) = two_artifact_setup(dir.path());
    let build = |target: &str, release: &str| {
        let mut cmd = kiln(&recipes, &out, &shared_cache());
        cmd.args(["--var", &format!("release={release}"), "build", target]);
        cmd.stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .unwrap()
    };
    // The lock as another build holds it: a build waits, and says so.
    std::fs::create_dir_all(&out).unwrap();
    let held = std::fs::File::create(out.join(".kiln-lock")).unwrap();
    held.lock().unwrap();
    let mut waiting = build("probe", "held");
    let mut stderr = std::io::BufReader::new(waiting.stderr.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut first).unwrap();
    assert!(
        first.starts_with("waiting for another build into"),
        "{first}"
    );
    assert!(waiting.try_wait().unwrap().is_none(), "it did not wait");
    drop(held);
    assert!(waiting.wait().unwrap().success());
    // Builds of two targets at once, four times: both targets' entries
    // every time, each vouching for its file.
    for round in 0..4 {
        let release = format!("r{}", round % 2);
        let (one, two) = (build("probe", &release), build(INITRAMFS, &release));
        for child in [one, two] {
            let done = child.wait_with_output().unwrap();
            assert!(
                done.status.success(),
                "{}",
                String::from_utf8_lossy(&done.stderr)
            );
        }
        assert_eq!(manifest_vouches(&out), ["probe/probe.cpio.gz", INITRAMFS]);
    }
}

#[test]
fn outputs_that_collide_or_take_kilns_names_are_recipe_errors() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let (out, cache) = (dir.path().join("output"), dir.path().join("cache"));
    let plan = |probe_output: &str| {
        let recipe = PROBE.replace("probe/probe.cpio.gz", probe_output);
        std::fs::write(recipes.join("probe.toml"), recipe).unwrap();
        run_err(kiln(&recipes, &out, &cache).args(["plan", "probe"]))
    };
    let said = plan("stage2/stage2.iso");
    assert!(
        said.contains("`stage2/stage2.iso` is already the output of the artifact at")
            && said.contains("stage2.toml:")
            && said.contains("probe.toml:"),
        "{said}"
    );
    for (path, why) in [
        ("manifest.json", "Kiln's manifest"),
        ("logs/x.gz", "where tool logs go"),
        (".kiln-staging/x", "stages and locks"),
        ("/etc/x.gz", "not absolute"),
    ] {
        let said = plan(path);
        assert!(
            said.contains(why) && said.contains("probe.toml:"),
            "{path}: {said}"
        );
    }
}

#[test]
fn a_tool_dies_with_kiln_even_when_kiln_is_killed() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let pid_file = dir.path().join("tool.pid");
    // An apt-get that never finishes its download.
    let script = format!(
        "[ \"$1\" = --version ] && {{ echo 'apt 2.6.1 (amd64)'; exit 0; }}\necho $$ > {}\nexec sleep 120\n",
        pid_file.display()
    );
    let path = fake_tool(dir.path(), "apt-get", &script);
    let mut build = kiln(
        &recipes,
        &dir.path().join("output"),
        &dir.path().join("cache"),
    )
    .env("PATH", &path)
    .args(["build", INITRAMFS])
    .stdout(std::process::Stdio::null())
    .stderr(std::process::Stdio::null())
    .spawn()
    .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let pid = loop {
        if let Some(pid) = std::fs::read_to_string(&pid_file)
            .ok()
            .filter(|p| p.ends_with('\n'))
        {
            break pid.trim().to_string();
        }
        assert!(
            std::time::Instant::now() < deadline,
            "the tool never started"
        );
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    build.kill().unwrap(); // SIGKILL: no handler of Kiln's runs
    build.wait().unwrap();
    let proc = Path::new("/proc").join(&pid);
    let gone = |p: &Path| {
        // Gone, or a zombie its new parent has yet to reap.
        std::fs::read_to_string(p.join("stat"))
            .map(|s| {
                s.rsplit(')')
                    .next()
                    .unwrap_or("")
                    .trim_start()
                    .starts_with('Z')
            })
            .unwrap_or(true)
    };
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    while !gone(&proc) {
        if std::time::Instant::now() > deadline {
            let _ = std::process::Command::new("kill")
                .args(["-9", &pid])
                .status();
            panic!("the tool (pid {pid}) outlived Kiln");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

#[test]
fn an_overlay_template_linking_to_a_host_file_is_refused_unread() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let host_file = dir.path().join("host-secret");
    std::fs::write(&host_file, "root:{{secret-hash}}:19000::::::\n").unwrap();
    let release = dir.path().join("overlays/stage2/etc/kiln-release");
    std::fs::remove_file(&release).unwrap();
    std::os::unix::fs::symlink(&host_file, &release).unwrap();
    let said = run_err(
        kiln(
            &recipes,
            &dir.path().join("output"),
            &dir.path().join("cache"),
        )
        .args(["plan", INITRAMFS]),
    );
    assert!(
        said.contains("template `etc/kiln-release`") && said.contains("symbolic link"),
        "{said}"
    );
    assert!(
        !said.contains("secret-hash") && !said.contains("19000"),
        "{said}"
    );
}

#[test]
fn a_recipe_that_is_not_utf8_is_located() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let stage2 = recipes.join("stage2.toml");
    let mut bytes = std::fs::read(&stage2).unwrap();
    let line = bytes.iter().filter(|b| **b == b'\n').count() + 1;
    bytes.extend_from_slice(b"description2 = \"caf\xe9\"\n");
    std::fs::write(&stage2, bytes).unwrap();
    let said = run_err(
        kiln(&recipes, &dir.path().join("o"), &dir.path().join("c")).args(["plan", "stage2"]),
    );
    assert!(
        said.contains(&format!(
            "stage2.toml:{line}:20: byte 0xe9 is not UTF-8 here"
        )),
        "{said}"
    );
}

#[test]
fn plan_into_a_closed_pipe_ends_quietly_and_warnings_carry_no_colour() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let cache = dir.path().join("cache");
    // A garbage action record for the first step makes Kiln warn.
    let plan =
        run_ok(kiln(&recipes, &dir.path().join("o"), &cache).args(["plan", INITRAMFS, "--json"]));
    let steps: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
    let key = steps[0]["key"].as_str().unwrap();
    std::fs::write(cache.join(format!("v1/actions/{key}.json")), "garbage").unwrap();
    // `plan | true`: the reader is gone before Kiln prints.
    let mut child = kiln(&recipes, &dir.path().join("o"), &cache)
        .args(["plan", INITRAMFS])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let done = child.wait_with_output().unwrap();
    let said = String::from_utf8_lossy(&done.stderr);
    assert_eq!(done.status.code(), Some(141), "{said}");
    assert!(!said.contains("panicked"), "{said}");
    assert!(said.contains("dropping unreadable action record"), "{said}");
    assert!(
        !said.contains('\x1b'),
        "colour codes on a stderr that is no terminal: {said:?}"
    );
}

#[test]
fn a_linux_source_override_is_taken_as_the_package_it_replaces() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let steps = |source: &Path| -> Vec<String> {
        let plan = run_ok(
            kiln(&recipes, &dir.path().join("o"), &dir.path().join("c"))
                .arg("--source")
                .arg(format!("linux-source={}", source.display()))
                .args(["plan", "stage2", "--json"]),
        );
        let steps: serde_json::Value = serde_json::from_slice(&plan.stdout).unwrap();
        let labels = steps.as_array().unwrap().iter();
        labels
            .map(|s| s["step"].as_str().unwrap().to_string())
            .filter(|l| l.starts_with("unpack linux-source"))
            .collect()
    };
    // A `.deb` is unpacked as a package, then its kernel tarball.
    let deb = dir.path().join("linux-source-6.1_6.1.999-1_all.deb");
    std::fs::write(
        &deb,
        b"!<arch>\ndebian-binary   0           0     0     100644  4         `\n2.0\n",
    )
    .unwrap();
    assert_eq!(
        steps(&deb),
        ["unpack linux-source", "unpack linux-source tarball"]
    );
    // A directory holding the package's files: its kernel tarball is unpacked.
    let unpacked = dir.path().join("unpacked");
    std::fs::create_dir_all(unpacked.join("usr/src")).unwrap();
    std::fs::write(
        unpacked.join("usr/src/linux-source-6.1.tar.xz"),
        b"not read at plan",
    )
    .unwrap();
    assert_eq!(steps(&unpacked), ["unpack linux-source tarball"]);
    // A kernel tree itself is used as it is.
    let tree = dir.path().join("linux");
    std::fs::create_dir_all(tree.join("kernel")).unwrap();
    std::fs::write(tree.join("Makefile"), b"VERSION = 6\n").unwrap();
    assert_eq!(steps(&tree), Vec::<String>::new());
}

#[test]
fn a_read_only_cache_serves_a_no_op_build_and_refuses_to_build() {
    if !kiln::testing::program("unshare", "apt-get install util-linux") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let (out, cache) = (dir.path().join("output"), dir.path().join("cache"));
    let build = kiln(&recipes, &out, &cache);
    run_ok(kiln(&recipes, &out, &cache).args(["build", INITRAMFS]));
    // The cache as an NFS export mounted read-only: a read-only bind mount
    // in a mount namespace of the test's own.
    let script = format!(
        "mount --bind {c} {c} && mount -o remount,bind,ro {c} || exit 90\n\
         \"$@\" build {t} > {d}/noop.log 2>&1; echo $? > {d}/noop.rc\n\
         \"$@\" --var release=other build {t} > {d}/new.log 2>&1; echo $? > {d}/new.rc\n",
        c = cache.display(),
        d = dir.path().display(),
        t = INITRAMFS,
    );
    let status = in_mount_namespace(&script, &build);
    assert!(status.success());
    let read = |name: &str| std::fs::read_to_string(dir.path().join(name)).unwrap();
    assert_eq!(read("noop.rc").trim(), "0", "{}", read("noop.log"));
    assert!(
        read("noop.log").contains("0 run, 3 cached"),
        "{}",
        read("noop.log")
    );
    assert_ne!(read("new.rc").trim(), "0");
    assert!(
        read("new.log").contains("is on a read-only file system: only what it holds can be used"),
        "{}",
        read("new.log")
    );
}
