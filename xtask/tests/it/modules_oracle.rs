//! The module closure against kmod's own answer: `modprobe --show-depends`
//! over Debian's real kernel packages (linux-image and linux-image-arm64 in
//! recipes/sources.toml), plus softdep, alias, builtin, compression and
//! error cases.
//!
//! Debian ships the modules without depmod's indexes (its postinst runs
//! depmod), so the tests run `depmod -b` on the unpacked tree; in Kiln
//! itself the modules step does that through `tools`.
//!
//! The oracle is Debian 12's kmod 30, which knows nothing of weak
//! dependencies; this kernel (6.1) declares none, so including them cannot
//! make Kiln and modprobe disagree here.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;
use std::time::Instant;

use kiln::steps::modules::{
    parse_modprobe_d, read_modinfo, resolve, Closure, ModprobeConfig, ModuleIndex, Wanted,
};

struct Tree {
    root: PathBuf,
    kver: String,
}

fn target_tmp() -> PathBuf {
    PathBuf::from(env!("CARGO_TARGET_TMPDIR"))
}

/// The unpacked linux-image with depmod's indexes (amd64).
fn tree() -> &'static Tree {
    static TREE: OnceLock<Tree> = OnceLock::new();
    unpacked(&TREE, "linux-image")
}

/// The unpacked deb `source` with depmod's indexes, made once and reused by
/// later runs (a marker file is written only after everything succeeded).
fn unpacked(cell: &'static OnceLock<Tree>, source: &str) -> &'static Tree {
    cell.get_or_init(|| {
        let base = target_tmp().join("modules-oracle");
        let (root, marker) = (base.join(source), base.join(format!("{source}.ok")));
        if let Ok(kver) = std::fs::read_to_string(&marker) {
            return Tree { root, kver };
        }
        if root.exists() {
            make_writable(&root);
            std::fs::remove_dir_all(&root).unwrap();
        }
        crate::common::unpack_deb_source(source, &root)
            .expect("unpacking the kernel package through Kiln");
        let kver = single_kver(&root);
        depmod(&root, &kver);
        std::fs::write(&marker, &kver).unwrap();
        Tree { root, kver }
    })
}

fn make_writable(dir: &Path) {
    use std::os::unix::fs::PermissionsExt;
    for e in walkdir::WalkDir::new(dir).into_iter().flatten() {
        if e.file_type().is_dir() {
            let _ = std::fs::set_permissions(e.path(), std::fs::Permissions::from_mode(0o755));
        }
    }
}

fn single_kver(root: &Path) -> String {
    let mut kvers: Vec<String> = std::fs::read_dir(root.join("lib/modules"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(kvers.len(), 1, "expected one kernel version: {kvers:?}");
    kvers.remove(0)
}

fn depmod(root: &Path, kver: &str) {
    let out = Command::new("/usr/sbin/depmod")
        .arg("-b")
        .arg(root)
        .arg(kver)
        .output()
        .expect("running depmod (package kmod)");
    assert!(
        out.status.success(),
        "depmod failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// What modprobe would load: (module paths relative to lib/modules/<kver>,
/// builtin names). `conf_dir` replaces the host's /etc/modprobe.d.
fn modprobe(
    root: &Path,
    kver: &str,
    conf_dir: &Path,
    name: &str,
) -> (BTreeSet<String>, BTreeSet<String>) {
    let out = Command::new("/usr/sbin/modprobe")
        .arg("-d")
        .arg(root)
        .args(["-S", kver, "-C"])
        .arg(conf_dir)
        .args(["--show-depends", name])
        .output()
        .expect("running modprobe (package kmod)");
    assert!(
        out.status.success(),
        "modprobe --show-depends {name} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let prefix = format!("{}/lib/modules/{kver}/", root.display());
    let (mut modules, mut builtin) = (BTreeSet::new(), BTreeSet::new());
    for line in String::from_utf8_lossy(&out.stdout).lines() {
        if let Some(rest) = line.strip_prefix("insmod ") {
            let path = rest.split_whitespace().next().unwrap_or("");
            let rel = path
                .strip_prefix(&prefix)
                .unwrap_or_else(|| panic!("{line}"));
            modules.insert(rel.to_owned());
        } else if let Some(rest) = line.strip_prefix("builtin ") {
            builtin.insert(rest.trim().to_owned());
        }
    }
    (modules, builtin)
}

fn empty_conf_dir() -> PathBuf {
    let dir = target_tmp().join("modules-oracle/empty-modprobe.d");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn name(n: &str) -> Wanted {
    Wanted::Name(n.to_owned())
}

fn closure_of(index: &ModuleIndex, wanted: &[Wanted], conf: &ModprobeConfig) -> Closure {
    resolve(index, wanted, conf).unwrap_or_else(|e| panic!("{wanted:?}: {e:#}"))
}

fn load(tree: &Tree) -> ModuleIndex {
    ModuleIndex::load(&tree.root, &tree.kver).unwrap()
}

#[test]
fn every_module_closure_equals_modprobe_show_depends() {
    oracle_agrees_on_every_module(tree());
}

/// The same on Debian's arm64 kernel: kmod reads another architecture's
/// modules as it reads the host's, and so must Kiln.
#[test]
fn every_arm64_module_closure_equals_modprobe_show_depends() {
    static TREE: OnceLock<Tree> = OnceLock::new();
    let t = unpacked(&TREE, "linux-image-arm64");
    assert!(t.kver.ends_with("-arm64"), "{}", t.kver);
    oracle_agrees_on_every_module(t);
}

fn oracle_agrees_on_every_module(t: &'static Tree) {
    let index = load(t);
    let conf = ModprobeConfig::default();
    let names: Vec<&String> = index.modules.keys().collect();
    let start = Instant::now();
    let conf_dir = empty_conf_dir();
    let disagreements: Vec<String> = std::thread::scope(|s| {
        let halves: Vec<_> = names
            .chunks(names.len().div_ceil(2))
            .map(|chunk| {
                let (index, conf, conf_dir) = (&index, &conf, &conf_dir);
                s.spawn(move || {
                    let mut bad = Vec::new();
                    for &n in chunk {
                        let ours = closure_of(index, &[name(n)], conf);
                        let theirs = modprobe(&t.root, &t.kver, conf_dir, n);
                        if (&ours.modules, &ours.builtin) != (&theirs.0, &theirs.1) {
                            bad.push(format!(
                                "{n}: kiln {:?} + builtin {:?}, modprobe {:?} + builtin {:?}",
                                ours.modules, ours.builtin, theirs.0, theirs.1
                            ));
                        }
                    }
                    bad
                })
            })
            .collect();
        halves.into_iter().flat_map(|h| h.join().unwrap()).collect()
    });
    eprintln!(
        "oracle: {} modules compared, {} agreed, in {:.1?}",
        names.len(),
        names.len() - disagreements.len(),
        start.elapsed()
    );
    assert!(
        names.len() > 3000,
        "only {} modules in modules.dep",
        names.len()
    );
    assert!(
        disagreements.is_empty(),
        "{} disagreements, first ones:\n{}",
        disagreements.len(),
        disagreements[..disagreements.len().min(10)].join("\n")
    );
}

/// A modprobe.d directory holding one file (removed when dropped).
fn conf_dir_with(file: &str, text: &str) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join(file), text).unwrap();
    dir
}

#[test]
fn softdep_post_in_recipe_config_adds_the_post_module_as_modprobe_does() {
    let t = tree();
    let index = load(t);
    let text = "softdep virtio_net post: e1000e\n";
    let conf = parse_modprobe_d(text, "recipe/modprobe.d/kiln.conf").unwrap();
    let ours = closure_of(&index, &[name("virtio-net")], &conf);
    assert!(
        ours.modules
            .contains("kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko"),
        "{:?}",
        ours.modules
    );
    assert!(ours.modules.contains("kernel/drivers/net/virtio_net.ko"));
    let theirs = modprobe(
        &t.root,
        &t.kver,
        conf_dir_with("kiln.conf", text).path(),
        "virtio_net",
    );
    assert_eq!(ours.modules, theirs.0);
}

#[test]
fn first_matching_softdep_wins_so_an_earlier_recipe_file_replaces_the_modules_own() {
    let t = tree();
    let index = load(t);
    let realtek = "kernel/drivers/net/phy/realtek.ko";
    let e1000e = "kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko";
    // r8169's own softdep (modules.softdep) is `pre: realtek`; a file
    // sorting before "modules.softdep" is read first and wins.
    let text = "softdep r8169 post: e1000e\n";
    let conf = parse_modprobe_d(text, "aa.conf").unwrap();
    let ours = closure_of(&index, &[name("r8169")], &conf);
    assert!(!ours.modules.contains(realtek) && ours.modules.contains(e1000e));
    let theirs = modprobe(
        &t.root,
        &t.kver,
        conf_dir_with("aa.conf", text).path(),
        "r8169",
    );
    assert_eq!(ours.modules, theirs.0);
    // ... and one sorting after it does not.
    let conf = parse_modprobe_d(text, "zz.conf").unwrap();
    let ours = closure_of(&index, &[name("r8169")], &conf);
    assert!(ours.modules.contains(realtek) && !ours.modules.contains(e1000e));
    let theirs = modprobe(
        &t.root,
        &t.kver,
        conf_dir_with("zz.conf", text).path(),
        "r8169",
    );
    assert_eq!(ours.modules, theirs.0);
}

#[test]
fn only_the_first_of_a_modules_several_softdep_lines_counts_as_in_kmod() {
    let t = tree();
    let index = load(t);
    // btrfs declares four softdeps (blake2b-256, sha256, xxhash64,
    // crypto-crc32c); depmod writes four lines and kmod uses the first.
    let ours = closure_of(&index, &[name("btrfs")], &Default::default());
    assert!(ours.modules.contains("kernel/crypto/blake2b_generic.ko"));
    assert!(!ours.modules.contains("kernel/crypto/xxhash_generic.ko"));
    assert_eq!(
        ours.modules,
        modprobe(&t.root, &t.kver, &empty_conf_dir(), "btrfs").0
    );
}

#[test]
fn modules_softdep_is_what_modinfo_softdep_entries_say() {
    let t = tree();
    let index = load(t);
    let info = index.modinfo("ext4").unwrap();
    assert_eq!(
        info.values("softdep").collect::<Vec<_>>(),
        ["pre: crypto-crc32c"]
    );
    let rule = index.softdeps.iter().find(|d| d.pattern == "ext4").unwrap();
    assert_eq!(rule.pre, ["crypto-crc32c"]);
}

#[test]
fn alias_matching_several_modules_takes_all_of_them_as_modprobe_does() {
    let t = tree();
    let index = load(t);
    let conf = ModprobeConfig::default();
    for alias in ["crypto-crc32c", "crypto-twofish"] {
        let ours = closure_of(&index, &[Wanted::Alias(alias.into())], &conf);
        let direct: BTreeSet<&str> = index
            .aliases
            .iter()
            .filter(|a| a.pattern == alias.replace('-', "_"))
            .map(|a| a.module.as_str())
            .collect();
        assert!(direct.len() >= 2, "{alias}: {direct:?}");
        for m in &direct {
            let path = &index.modules[*m].path;
            assert!(ours.modules.contains(path), "{alias}: {path} missing");
        }
        let theirs = modprobe(&t.root, &t.kver, &empty_conf_dir(), alias);
        assert_eq!(ours.modules, theirs.0, "{alias}");
    }
}

#[test]
fn concrete_pci_modalias_matches_wildcard_patterns() {
    let t = tree();
    let index = load(t);
    // Intel 82574L: e1000e's `pci:v00008086d000010D3sv*sd*bc*sc*i*`.
    let modalias = "pci:v00008086d000010D3sv00008086sd0000A01Fbc02sc00i00";
    let ours = closure_of(
        &index,
        &[Wanted::Alias(modalias.into())],
        &Default::default(),
    );
    let theirs = modprobe(&t.root, &t.kver, &empty_conf_dir(), modalias);
    assert!(
        ours.modules.iter().any(|m| m.ends_with("/e1000e.ko")),
        "{:?}",
        ours.modules
    );
    assert_eq!(ours.modules, theirs.0);
}

#[test]
fn name_that_is_no_module_is_tried_as_an_alias() {
    let t = tree();
    let index = load(t);
    let ours = closure_of(&index, &[name("fs-ext4")], &Default::default());
    assert!(ours.modules.contains("kernel/fs/ext4/ext4.ko"));
    assert_eq!(
        ours.modules,
        modprobe(&t.root, &t.kver, &empty_conf_dir(), "fs-ext4").0
    );
}

#[test]
fn builtin_module_goes_into_builtin_not_modules() {
    let t = tree();
    let index = load(t);
    let ours = closure_of(
        &index,
        &[name("sha256_generic"), name("unix")],
        &Default::default(),
    );
    assert!(ours.modules.is_empty(), "{:?}", ours.modules);
    assert_eq!(
        ours.builtin,
        BTreeSet::from(["sha256_generic".to_owned(), "unix".to_owned()])
    );
    let theirs = modprobe(&t.root, &t.kver, &empty_conf_dir(), "sha256_generic");
    assert_eq!(theirs.1, BTreeSet::from(["sha256_generic".to_owned()]));
}

#[test]
fn blacklist_stops_alias_matches_but_not_a_module_wanted_by_name() {
    let t = tree();
    let index = load(t);
    let conf = parse_modprobe_d("blacklist crc32c-intel\n", "bl.conf").unwrap();
    let ours = closure_of(&index, &[Wanted::Alias("crypto-crc32c".into())], &conf);
    assert_eq!(
        ours.modules,
        BTreeSet::from(["kernel/crypto/crc32c_generic.ko".to_owned()])
    );
    let theirs = modprobe(
        &t.root,
        &t.kver,
        conf_dir_with("bl.conf", "blacklist crc32c-intel\n").path(),
        "crypto-crc32c",
    );
    assert_eq!(ours.modules, theirs.0);
    let ours = closure_of(&index, &[name("crc32c_intel")], &conf);
    assert!(ours
        .modules
        .contains("kernel/arch/x86/crypto/crc32c-intel.ko"));
}

#[test]
fn glob_takes_every_module_under_a_directory_with_their_closures() {
    let t = tree();
    let index = load(t);
    let glob = "kernel/drivers/net/ethernet/intel/**";
    let ours = closure_of(&index, &[Wanted::Glob(glob.into())], &Default::default());
    let under: Vec<&String> = index
        .modules
        .values()
        .map(|m| &m.path)
        .filter(|p| p.starts_with("kernel/drivers/net/ethernet/intel/"))
        .collect();
    assert!(under.len() > 10, "{under:?}");
    assert!(under.iter().all(|p| ours.modules.contains(*p)));
    assert!(
        ours.modules.len() > under.len(),
        "dependencies outside the glob come too"
    );
}

#[test]
fn weakdep_in_recipe_config_is_included_although_modprobe_would_not_load_it() {
    let t = tree();
    let index = load(t);
    let conf = parse_modprobe_d("weakdep r8169 e1000e\n", "weak.conf").unwrap();
    let ours = closure_of(&index, &[name("r8169")], &conf);
    assert!(ours
        .modules
        .contains("kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko"));
}

#[test]
fn firmware_names_come_from_every_chosen_module() {
    let t = tree();
    let index = load(t);
    let ours = closure_of(&index, &[name("e100")], &Default::default());
    assert!(
        ours.firmware.contains("e100/d101m_ucode.bin"),
        "{:?}",
        ours.firmware
    );
}

#[test]
fn unknown_name_alias_and_glob_are_errors_naming_the_item() {
    let t = tree();
    let index = load(t);
    let conf = ModprobeConfig::default();
    for (item, expect) in [
        (name("no-such-module"), "module `no-such-module`"),
        (
            Wanted::Alias("pci:v0000FFFFd0000FFFFsv0sd0bc00sc00i00".into()),
            "alias `pci:v0000FFFFd0000FFFFsv0sd0bc00sc00i00`",
        ),
        (
            Wanted::Glob("kernel/nothing/**".into()),
            "glob `kernel/nothing/**`",
        ),
    ] {
        let err = resolve(&index, &[name("ext4"), item], &conf)
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("{expect} matches nothing")), "{err}");
    }
}

#[test]
fn install_line_in_modprobe_d_is_an_error_naming_origin_and_line() {
    let text = "softdep ext4 pre: crc32c\ninstall ext4 /bin/true\n";
    let err = parse_modprobe_d(text, "recipes/modprobe.d/fs.conf").unwrap_err();
    assert!(
        err.to_string()
            .starts_with("recipes/modprobe.d/fs.conf:2: `install`"),
        "{err}"
    );
}

#[test]
fn tree_without_depmod_indexes_is_a_clear_error() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("lib/modules/6.1.0-x")).unwrap();
    let err = ModuleIndex::load(dir.path(), "6.1.0-x")
        .err()
        .unwrap()
        .to_string();
    assert!(
        err.contains("modules.dep is missing") && err.contains("depmod"),
        "{err}"
    );
}

/// A small tree holding ext4's and virtio_net's closures, each module
/// recompressed differently, with depmod run over it.
fn recompressed_tree(t: &Tree, index: &ModuleIndex) -> (tempfile::TempDir, ModuleIndex, Closure) {
    let original = closure_of(
        index,
        &[name("ext4"), name("virtio_net")],
        &Default::default(),
    );
    let dir = tempfile::tempdir().unwrap();
    let kdir = dir.path().join("lib/modules").join(&t.kver);
    for f in [
        "modules.builtin",
        "modules.builtin.modinfo",
        "modules.order",
    ] {
        std::fs::create_dir_all(&kdir).unwrap();
        std::fs::copy(index.dir.join(f), kdir.join(f)).unwrap();
    }
    let mut dep = String::new();
    let renamed = |i: usize, p: &str| match i % 4 {
        0 => format!("{p}.zst"),
        1 => format!("{p}.gz"),
        2 => format!("{p}.xz"),
        _ => p.to_owned(),
    };
    let paths: Vec<&String> = original.modules.iter().collect();
    let new_path = |p: &str| renamed(paths.iter().position(|q| *q == p).unwrap(), p);
    for (i, p) in paths.iter().enumerate() {
        let bytes = std::fs::read(index.dir.join(p)).unwrap();
        let dest = kdir.join(renamed(i, p));
        std::fs::create_dir_all(dest.parent().unwrap()).unwrap();
        std::fs::write(&dest, compress(i % 4, &bytes)).unwrap();
        let m = &index.modules[&kiln::steps::modules::index::path_to_name(p)];
        let deps: Vec<String> = m.deps.iter().map(|d| new_path(d)).collect();
        dep.push_str(&format!("{}: {}\n", new_path(p), deps.join(" ")));
    }
    // modules.dep by hand: Debian 12's depmod (kmod 30, no zlib) cannot
    // read .ko.gz; Kiln reads only the text indexes.
    std::fs::write(kdir.join("modules.dep"), dep).unwrap();
    for f in ["modules.softdep", "modules.alias"] {
        std::fs::copy(index.dir.join(f), kdir.join(f)).unwrap();
    }
    let small = ModuleIndex::load(dir.path(), &t.kver).unwrap();
    (dir, small, original)
}

fn compress(kind: usize, bytes: &[u8]) -> Vec<u8> {
    use std::io::Write;
    match kind {
        0 => zstd::encode_all(bytes, 3).unwrap(),
        1 => {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
            e.write_all(bytes).unwrap();
            e.finish().unwrap()
        }
        2 => {
            let mut e = xz2::write::XzEncoder::new(Vec::new(), 1);
            e.write_all(bytes).unwrap();
            e.finish().unwrap()
        }
        _ => bytes.to_vec(),
    }
}

#[test]
fn compressed_modules_keep_their_modinfo_and_closure_as_shipped() {
    let t = tree();
    let index = load(t);
    let (_dir, small, original) = recompressed_tree(t, &index);
    let ours = closure_of(
        &small,
        &[name("ext4"), name("virtio_net")],
        &Default::default(),
    );
    let suffixes: BTreeSet<&str> = ours
        .modules
        .iter()
        .map(|p| p.rsplit_once(".ko").unwrap().1)
        .collect();
    assert_eq!(suffixes, BTreeSet::from(["", ".gz", ".xz", ".zst"]));
    let stripped: BTreeSet<String> = ours
        .modules
        .iter()
        .map(|p| p.rsplit_once(".ko").unwrap().0.to_owned() + ".ko")
        .collect();
    assert_eq!(stripped, original.modules);
    assert_eq!(ours.firmware, original.firmware);
    for p in &ours.modules {
        let plain = p.rsplit_once(".ko").unwrap().0.to_owned() + ".ko";
        assert_eq!(
            read_modinfo(&small.dir.join(p)).unwrap(),
            read_modinfo(&index.dir.join(&plain)).unwrap(),
            "{p}"
        );
    }
}

#[test]
fn compressed_tree_indexed_by_depmod_agrees_with_modprobe() {
    let t = tree();
    let index = load(t);
    let (dir, _, _) = recompressed_tree(t, &index);
    // Debian 12's kmod has no zlib: depmod cannot read .ko.gz, so keep the
    // .zst, .xz and plain ones only, and let depmod index them.
    for e in walkdir::WalkDir::new(dir.path()).into_iter().flatten() {
        if e.path().to_string_lossy().ends_with(".ko.gz") {
            std::fs::remove_file(e.path()).unwrap();
        }
    }
    depmod(dir.path(), &t.kver);
    let small = ModuleIndex::load(dir.path(), &t.kver).unwrap();
    assert!(small.modules.values().any(|m| m.path.ends_with(".ko.zst")));
    for n in small.modules.keys() {
        let ours = closure_of(&small, &[name(n)], &Default::default());
        let theirs = modprobe(dir.path(), &t.kver, &empty_conf_dir(), n);
        assert_eq!(ours.modules, theirs.0, "{n}");
    }
}
