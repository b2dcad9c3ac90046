//! Helpers for end-to-end tests: run the real `xtask` binary on a copy of
//! the repository's recipes and overlays.
#![allow(dead_code)]

pub mod servers;

pub use kiln::testing as prereq;

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

pub fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// A cache shared by tests that do not need isolation (debs are fetched once).
pub fn shared_cache() -> PathBuf {
    Path::new(env!("CARGO_TARGET_TMPDIR")).join("kiln-test-cache")
}

/// The pinned `deb` source `source` of the project's recipes, fetched and
/// unpacked by Kiln through the shared cache: the store and the tree.
pub fn deb_source_tree(source: &str) -> anyhow::Result<(kiln::store::Store, kiln::store::Digest)> {
    let recipes = kiln::recipe::load(&workspace().join("recipes"), &Default::default())?;
    let store = kiln::store::Store::open(&shared_cache())?;
    let opts = kiln::plan::PlanOptions {
        threads: 2,
        ..Default::default()
    };
    let plan = kiln::plan::plan_deb_tree(&recipes, source, &store, &opts)?;
    let exec = kiln::exec::Executor {
        store: &store,
        jobs: 2,
        log_dir: std::env::temp_dir(),
        quiet: true,
        remote: None,
    };
    let results = exec.run(&plan)?;
    let last = results.last().expect("the plan has a step");
    let Some(kiln::store::Output::Tree { digest }) = last.outputs.get("tree") else {
        anyhow::bail!("the deb step has no `tree` output");
    };
    let digest = *digest;
    Ok((store, digest))
}

/// The `deb` source `source` unpacked into `dest` ([`deb_source_tree`]).
pub fn unpack_deb_source(source: &str, dest: &Path) -> anyhow::Result<()> {
    let (store, digest) = deb_source_tree(source)?;
    store.materialize(&store.tree(&digest)?, dest)
}

/// QEMU under TCG is CPU-bound: guests run one at a time, whichever module
/// boots them, so that each gets a core and its timeout means something.
pub fn one_guest_at_a_time() -> std::sync::MutexGuard<'static, ()> {
    static QEMU: std::sync::Mutex<()> = std::sync::Mutex::new(());
    QEMU.lock().unwrap_or_else(|e| e.into_inner())
}

/// Whether QEMU is installed (a skip or, in CI, a failure when not).
pub fn qemu_available() -> bool {
    prereq::program(
        "qemu-system-x86_64",
        "apt-get install qemu-system-x86, or run ci/setup",
    )
}

/// Whether QEMU for arm64 guests is installed (a skip or, in CI, a failure
/// when not).
pub fn qemu_arm64_available() -> bool {
    prereq::program(
        "qemu-system-aarch64",
        "apt-get install qemu-system-arm, or run ci/setup",
    )
}

/// What `mstflint -i <rom> qrom` prints; `None` after reporting the skip
/// (a failure in CI) when mstflint is not installed.
pub fn qrom(rom: &Path) -> Option<String> {
    if !prereq::program("mstflint", "apt-get install mstflint, or run ci/setup") {
        return None;
    }
    let mut cmd = Command::new("mstflint");
    let out = run_ok(cmd.arg("-i").arg(rom).arg("qrom"));
    Some(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

/// The iPXE source the tests build: `KILN_SOURCE_IPXE`, a checkout of the
/// pinned commit or its tarball (`.ci/run` gives the one beside the
/// checkout, `../shared/sources/ipxe-<commit>.tar.xz`). A tarball is
/// unpacked once per test run; Kiln itself is handed the tarball, through
/// the inherited variable. `None` after reporting the skip.
pub fn ipxe_tree() -> Option<PathBuf> {
    let given = std::env::var_os("KILN_SOURCE_IPXE").map(PathBuf::from);
    let how = "set KILN_SOURCE_IPXE to a checkout of ipxe/ipxe at the commit recipes/sources.toml pins, or to that commit's tarball";
    if !prereq::have("iPXE source", given.is_some(), how) {
        return None;
    }
    let given = given.unwrap();
    if given.join("src/Makefile").is_file() {
        return Some(given);
    }
    assert!(
        given.is_file(),
        "KILN_SOURCE_IPXE={} is neither an iPXE checkout (no src/Makefile) nor a tarball",
        given.display()
    );
    static UNPACKED: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    Some(UNPACKED.get_or_init(|| unpack_once(&given)).clone())
}

/// Unpacks the tarball `file` under the test target's temporary directory
/// (top directory stripped), where later runs find it by the file's digest.
fn unpack_once(file: &Path) -> PathBuf {
    let (digest, _) = kiln::store::Digest::of_file(file).unwrap();
    let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ipxe-source");
    let dest = root.join(&digest.hex()[..16]);
    if !dest.join("src/Makefile").is_file() {
        std::fs::create_dir_all(&root).unwrap();
        let scratch = tempfile::tempdir_in(&root).unwrap();
        let top = kiln::steps::tarball::unpack_stripped(file, scratch.path(), "the iPXE tarball")
            .unwrap_or_else(|e| panic!("unpacking {}: {e:#}", file.display()));
        let _ = std::fs::remove_dir_all(&dest);
        std::fs::rename(top, &dest).unwrap();
    }
    dest
}

/// Copies `recipes/`, `overlays/` and `ipxe/` under `dir`, as a fresh
/// checkout would.
pub fn copy_recipes(dir: &Path) -> PathBuf {
    for sub in ["recipes", "overlays", "ipxe"] {
        copy_tree(&workspace().join(sub), &dir.join(sub));
    }
    dir.join("recipes")
}

/// Rewrites the file at `path` with `from` replaced by `to` everywhere; a
/// `from` the file does not contain fails the test (the edit would be lost).
pub fn edit(path: &Path, from: &str, to: &str) {
    let text = std::fs::read_to_string(path).unwrap();
    assert!(text.contains(from), "{} has no `{from}`", path.display());
    std::fs::write(path, text.replace(from, to)).unwrap();
}

/// A string no earlier run has used: the suite's cache outlives a run, so
/// a test that must see a step run again changes its input with this.
pub fn unique() -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!("{}-{nanos}", std::process::id())
}

/// Whether `needle` occurs in `hay`.
pub fn contains_bytes(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}

pub fn copy_tree(src: &Path, dst: &Path) {
    for entry in walkdir::WalkDir::new(src).sort_by_file_name() {
        let entry = entry.unwrap();
        let target = dst.join(entry.path().strip_prefix(src).unwrap());
        if entry.file_type().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

/// `xtask` with explicit recipes, output and cache directories.
pub fn kiln(recipes: &Path, output: &Path, cache: &Path) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_xtask"));
    cmd.arg("--recipes")
        .arg(recipes)
        .arg("--output")
        .arg(output)
        .arg("--cache")
        .arg(cache);
    cmd.env_remove("SOURCE_DATE_EPOCH");
    cmd
}

/// `cmd` followed by `subcommand` (e.g. `build stage2`), run through `sh`
/// under `umask` with `TZ=tz`: the environment a second reproducibility
/// build varies.
pub fn under_umask(cmd: &Command, umask: &str, tz: &str, subcommand: &str) -> Command {
    let mut sh = Command::new("sh");
    sh.arg("-c")
        .arg(format!("umask {umask}; exec \"$0\" \"$@\" {subcommand}"))
        .arg(cmd.get_program())
        .args(cmd.get_args())
        .env("TZ", tz);
    sh
}

/// Puts an executable shell `script` named `name` in `dir/bin` and returns
/// a PATH that finds it first.
pub fn fake_tool(dir: &Path, name: &str, script: &str) -> String {
    let bin = dir.join("bin");
    std::fs::create_dir_all(&bin).unwrap();
    let fake = bin.join(name);
    std::fs::write(&fake, format!("#!/bin/sh\n{script}")).unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    format!(
        "{}:{}",
        bin.display(),
        std::env::var("PATH").unwrap_or_default()
    )
}

pub fn run_ok(cmd: &mut Command) -> Output {
    let out = cmd.output().expect("starting xtask");
    assert!(
        out.status.success(),
        "{cmd:?} failed ({}):\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

pub fn run_err(cmd: &mut Command) -> String {
    let out = cmd.output().expect("starting xtask");
    assert!(!out.status.success(), "{cmd:?} unexpectedly succeeded");
    String::from_utf8_lossy(&out.stderr).into_owned()
}

/// Builds `target` (an artifact, `<recipe>/<file>`) with a store and an
/// output of its own under `dir` (`cache/`, `output/`), the remote cache
/// `remote` and `extra` arguments; the result and the artifact's path.
pub fn build_with_remote(
    recipes: &Path,
    dir: &Path,
    remote: &str,
    extra: &[&str],
    target: &str,
) -> (Output, PathBuf) {
    let out = dir.join("output");
    let mut cmd = kiln(recipes, &out, &dir.join("cache"));
    cmd.args(["--remote-cache", remote])
        .args(extra)
        .args(["build", target]);
    (run_ok(&mut cmd), out.join(target))
}

/// Files under `dir` (relative paths), sorted.
pub fn files(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter(|e| e.file_type().is_file())
        .map(|e| {
            e.path()
                .strip_prefix(dir)
                .unwrap()
                .to_string_lossy()
                .into_owned()
        })
        .collect();
    v.sort();
    v
}

/// The manifest entry of artifact `name` under output directory `out`.
pub fn manifest_entry(out: &Path, name: &str) -> serde_json::Value {
    let manifest: serde_json::Value =
        serde_json::from_slice(&std::fs::read(out.join("manifest.json")).unwrap()).unwrap();
    let entry = manifest["artifacts"]
        .as_array()
        .unwrap()
        .iter()
        .find(|a| a["name"] == name);
    entry
        .unwrap_or_else(|| panic!("{name} is not in the manifest"))
        .clone()
}

/// Every entry of a (possibly compressed) newc image.
pub fn archive_entries(path: &Path) -> Vec<kiln::archive::ReadEntry> {
    let bytes = std::fs::read(path).unwrap();
    kiln::archive::read_archive(&kiln::archive::decompress_all(&bytes).unwrap()).unwrap()
}

/// R from the build summary "built …: N steps, R run, C cached; …".
pub fn steps_run(out: &Output) -> usize {
    let text =
        String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.starts_with("built "))
        .unwrap_or_else(|| panic!("no build summary in:\n{text}"));
    let run = line.split(", ").find(|p| p.ends_with(" run")).unwrap();
    run.trim_end_matches(" run").parse().unwrap()
}

/// The file of blob `hex` in the store under `cache`.
pub fn blob_file(cache: &Path, hex: &str) -> PathBuf {
    cache.join("v1/blobs").join(&hex[..2]).join(hex)
}

/// Deletes from the store under `cache` the blob of the first tree entry
/// whose path `matches`, as a lost or damaged disk would; its hex digest.
pub fn lose_tree_blob(cache: &Path, matches: impl Fn(&str) -> bool) -> String {
    let hex = std::fs::read_dir(cache.join("v1/trees"))
        .unwrap()
        .find_map(|e| {
            let text = std::fs::read_to_string(e.unwrap().path()).unwrap();
            let tree: serde_json::Value = serde_json::from_str(&text).unwrap();
            let entries = tree["entries"].as_array().unwrap().clone();
            entries
                .into_iter()
                .find(|e| e["path"].as_str().is_some_and(&matches))
                .map(|e| e["digest"].as_str().unwrap().to_string())
        })
        .expect("a tree with a matching entry");
    std::fs::remove_file(blob_file(cache, &hex)).unwrap();
    hex
}

/// Serves `body` over HTTP/1.1 on 127.0.0.1 (every request gets the whole
/// file) and returns its URL.
pub fn serve(body: Vec<u8>, name: &str) -> String {
    use std::io::{BufRead, BufReader, Write};
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}/{name}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        for stream in listener.incoming() {
            let mut stream = stream.unwrap();
            let mut reader = BufReader::new(stream.try_clone().unwrap());
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap_or(0) > 0 && line != "\r\n" {
                line.clear();
            }
            let head = format!(
                "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                body.len()
            );
            let _ = stream.write_all(head.as_bytes());
            let _ = stream.write_all(&body);
        }
    });
    url
}

/// A file out of an ISO, through xorriso's own reader (into `work`).
pub fn iso_file(iso: &Path, path: &str, work: &Path) -> Vec<u8> {
    let dest = work.join(path.replace('/', "_"));
    run_ok(
        Command::new("xorriso")
            .args(["-osirrox", "on", "-indev"])
            .arg(iso)
            .args(["-extract", &format!("/{path}")])
            .arg(&dest),
    );
    std::fs::read(&dest).unwrap()
}

/// The labels of the steps `plan` says will run (`miss` lines).
pub fn plan_misses(plan: &Output) -> Vec<String> {
    String::from_utf8_lossy(&plan.stdout)
        .lines()
        .filter(|l| l.starts_with("miss"))
        .map(|l| l[22..].trim().to_string())
        .collect()
}

/// `boot-test` with `args` (then `--timeout 400`) and `--var` `vars`, from
/// a copy of the default recipes with the shared cache, one guest at a
/// time; returns its stdout.
pub fn boot_test(args: &[&str], vars: &[&str]) -> String {
    let out = boot_test_output(args, vars, |_| {});
    assert!(
        out.status.success(),
        "boot-test {args:?} failed: {}",
        stderr(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `boot-test args` as [`boot_test`] runs it, with `setup` adding global
/// flags or environment (a signing key); its output, whether it passed or not.
pub fn boot_test_output(args: &[&str], vars: &[&str], setup: impl FnOnce(&mut Command)) -> Output {
    let _one_at_a_time = one_guest_at_a_time();
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let mut cmd = kiln(&recipes, &dir.path().join("output"), &shared_cache());
    for var in vars {
        cmd.args(["--var", var]);
    }
    setup(&mut cmd);
    cmd.arg("boot-test").args(args).args(["--timeout", "400"]);
    cmd.output().expect("starting xtask")
}

pub fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}
