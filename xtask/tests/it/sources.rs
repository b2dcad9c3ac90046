//! Pinned sources outliving where they came from: a `deb` version apt no
//! longer offers is fetched by its recorded pool path from `[mirrors]`
//! (checked against the pin), and `doctor` says which pins apt has dropped.

use std::path::{Path, PathBuf};

use crate::common::*;

const SOURCE: &str = "busybox";

/// busybox's pin in the repository's sources.toml: (version, sha256, pool).
fn busybox_pin() -> (String, String, String) {
    let text = std::fs::read_to_string(workspace().join("recipes/sources.toml")).unwrap();
    let table: toml::Table = toml::from_str(&text).unwrap();
    let pin = &table[SOURCE];
    let field = |k: &str| {
        pin.get(k)
            .and_then(|v| v.as_str())
            .unwrap_or_else(|| {
                panic!("[{SOURCE}] has no `{k}`: run `cargo xtask sources update --keep-versions`")
            })
            .to_string()
    };
    (field("version"), field("sha256"), field("pool"))
}

/// An apt configuration under `dir` that knows no package at all: what apt
/// looks like once the mirror has moved past every pinned version.
fn empty_apt(dir: &Path) -> PathBuf {
    for sub in ["lists/partial", "parts", "cache/archives/partial"] {
        std::fs::create_dir_all(dir.join(sub)).unwrap();
    }
    let conf = dir.join("apt.conf");
    let d = dir.display();
    std::fs::write(
        &conf,
        format!(
            "Dir::State::Lists \"{d}/lists\";\nDir::Etc::SourceList \"/dev/null\";\nDir::Etc::SourceParts \"{d}/parts\";\nDir::Cache \"{d}/cache\";\n"
        ),
    )
    .unwrap();
    conf
}

/// The recipes copied under `dir` with `[mirrors] deb = bases`.
fn recipes_with_mirrors(dir: &Path, bases: &[String]) -> PathBuf {
    let recipes = copy_recipes(dir);
    let list: Vec<String> = bases.iter().map(|b| format!("\"{b}\"")).collect();
    edit(
        &recipes.join("sources.toml"),
        "[mirrors]\ndeb = []\n",
        &format!("[mirrors]\ndeb = [{}]\n", list.join(", ")),
    );
    recipes
}

/// The pinned busybox .deb, fetched through the machine's apt into the
/// shared cache.
fn pinned_deb() -> Vec<u8> {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    run_ok(
        kiln(&recipes, &dir.path().join("output"), &shared_cache())
            .args(["sources", "fetch", SOURCE]),
    );
    let (_, sha256, _) = busybox_pin();
    std::fs::read(blob_file(&shared_cache(), &sha256)).unwrap()
}

#[test]
fn a_version_apt_no_longer_offers_comes_from_a_mirror_by_its_pool_path() {
    let (version, sha256, pool) = busybox_pin();
    let deb = pinned_deb();
    let dir = tempfile::tempdir().unwrap();
    let serve = dir.path().join("serve");
    for (archive, bytes) in [
        ("good", deb.clone()),
        ("corrupt", b"not the pinned .deb".to_vec()),
    ] {
        let file = serve.join(archive).join(&pool);
        std::fs::create_dir_all(file.parent().unwrap()).unwrap();
        std::fs::write(file, bytes).unwrap();
    }
    let server = kiln::verify::http::serve(&serve).unwrap();
    let base = |archive: &str| format!("http://127.0.0.1:{}/{archive}", server.port);
    let recipes = recipes_with_mirrors(
        &dir.path().join("a"),
        &[base("missing"), base("corrupt"), base("good")],
    );
    let apt = empty_apt(&dir.path().join("apt"));
    let cache = dir.path().join("cache");
    let mut fetch = kiln(&recipes, &dir.path().join("output"), &cache);
    fetch
        .env("APT_CONFIG", &apt)
        .args(["sources", "fetch", SOURCE]);
    let out = run_ok(&mut fetch);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains(&format!(
            "busybox-static={version} came from {}/{pool}: apt no longer offers it",
            base("good")
        )),
        "{stderr}"
    );
    assert_eq!(std::fs::read(blob_file(&cache, &sha256)).unwrap(), deb);
    let served = server.log.lock().unwrap().join(", ");
    for (archive, status) in [("missing", 404), ("corrupt", 200), ("good", 200)] {
        assert!(
            served.contains(&format!("GET /{archive}/{pool} {status}")),
            "{served}"
        );
    }

    let mut doctor = kiln(&recipes, &dir.path().join("output"), &cache);
    doctor.env("APT_CONFIG", &apt).arg("doctor");
    let report = String::from_utf8_lossy(&doctor.output().unwrap().stdout).into_owned();
    assert!(
        report.contains(&format!(
            "{SOURCE} (busybox-static={version}): fetched by its pool path from [mirrors]"
        )),
        "{report}"
    );
}

#[test]
fn a_mirror_with_other_bytes_stores_nothing_and_says_so() {
    let (_, sha256, pool) = busybox_pin();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("serve").join(&pool);
    std::fs::create_dir_all(file.parent().unwrap()).unwrap();
    std::fs::write(&file, b"a tampered package").unwrap();
    let server = kiln::verify::http::serve(&dir.path().join("serve")).unwrap();
    let recipes = recipes_with_mirrors(
        &dir.path().join("a"),
        &[format!("http://127.0.0.1:{}/", server.port)],
    );
    let cache = dir.path().join("cache");
    let mut fetch = kiln(&recipes, &dir.path().join("output"), &cache);
    fetch
        .env("APT_CONFIG", empty_apt(&dir.path().join("apt")))
        .args(["sources", "fetch", SOURCE]);
    let err = run_err(&mut fetch);
    assert!(
        err.contains("no mirror gave") && err.contains(&format!("expected sha256 {sha256}")),
        "{err}"
    );
    assert!(!blob_file(&cache, &sha256).exists());
}

#[test]
fn without_a_pool_path_the_error_says_how_to_record_one() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    let (_, _, pool) = busybox_pin();
    edit(
        &recipes.join("sources.toml"),
        &format!("pool = \"{pool}\"\n"),
        "",
    );
    let mut fetch = kiln(
        &recipes,
        &dir.path().join("output"),
        &dir.path().join("cache"),
    );
    fetch
        .env("APT_CONFIG", empty_apt(&dir.path().join("apt")))
        .args(["sources", "fetch", SOURCE]);
    let err = run_err(&mut fetch);
    assert!(
        err.contains("its `pool` path is not recorded")
            && err.contains("sources update --keep-versions"),
        "{err}"
    );
}

#[test]
fn a_bad_mirror_or_pool_path_is_a_located_recipe_error() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = recipes_with_mirrors(dir.path(), &["ftp://example.invalid/debian".to_string()]);
    let (_, _, pool) = busybox_pin();
    edit(
        &recipes.join("sources.toml"),
        &format!("pool = \"{pool}\""),
        "pool = \"../../etc/passwd.deb\"",
    );
    let err = run_err(
        kiln(
            &recipes,
            &dir.path().join("output"),
            &dir.path().join("cache"),
        )
        .args(["plan", "stage2"]),
    );
    assert!(
        err.contains("a mirror is an http, https or file URL, not `ftp:`"),
        "{err}"
    );
    assert!(err.contains("`pool` is a relative path to a .deb"), "{err}");
    assert!(err.contains("sources.toml:"), "no file:line in {err}");
}
