//! Fuzzing the readers that take bytes from outside Kiln: archives and
//! packages from a mirror, images and ROMs to verify, tree manifests and
//! action records from a shared cache. `cargo xtask bench fuzz` runs each
//! for a while; the test suite runs a fixed number of cases per reader from
//! a fixed seed, and replays every input that ever crashed one
//! (`xtask/tests/data/fuzz/<reader>/`).
//!
//! A mutation fuzzer of its own, on the stable toolchain: cargo-fuzz and
//! libFuzzer need nightly and sanitizer builds, and the structure-aware
//! crates that run on stable (proptest, bolero's random engine) generate
//! values rather than mutate real files, which finds little in formats with
//! magic numbers and checksums. Here every reader starts from real inputs
//! (Kiln's own writers, QEMU's option ROMs, systemd's EFI stub, a host ELF)
//! and each case applies a few byte-level mutations to one of them. A crash
//! is a panic in the reader; an error return is the reader doing its job.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::archive::entry::{Entry, Kind};
use crate::archive::{fat, iso9660, newc, optrom, pe, zinfo};
use crate::store::signing::{self, Signer, Trust};
use crate::store::{ActionRecord, Digest, Tree, TreeEntry, TreeKind};

/// What one case of a reader runs: the input, and scratch space.
type Runner = fn(&[u8], &Path);

/// One reader under test: its name and what one case runs.
pub struct Target {
    pub name: &'static str,
    /// Real inputs the cases mutate.
    pub seeds: Vec<Vec<u8>>,
    run: Runner,
}

impl Target {
    /// Runs the reader on `input`; scratch space (for the unpackers) under
    /// `work`. Panics are what the caller counts.
    pub fn run(&self, input: &[u8], work: &Path) {
        (self.run)(input, work)
    }
}

/// Every reader, with the seeds this machine has (a reader without any,
/// e.g. no `xorriso` to make an ISO, is left out and named in the result).
pub fn targets(work: &Path) -> (Vec<Target>, Vec<&'static str>) {
    let all: Vec<(&'static str, Vec<Vec<u8>>, Runner)> = vec![
        ("newc", vec![cpio_seed()], |b, _| {
            let _ = newc::read_archive(b);
            let _ = newc::archive_len(b);
        }),
        ("compressed", compressed_seeds(), |b, _| {
            let _ = crate::archive::decompress_all(b);
        }),
        ("deb", vec![deb_seed()], |b, work| {
            unpack_with(b, work, crate::steps::deb::unpack)
        }),
        ("tar", tar_seeds(), |b, work| {
            unpack_with(b, work, crate::steps::tarball::unpack)
        }),
        (
            "pe",
            host_files(&["/usr/lib/systemd/boot/efi/linuxx64.efi.stub"]),
            |b, _| {
                if let Ok(image) = pe::PeImage::parse(b) {
                    let _ = image.section_data(".linux");
                    let _ = image.checksum_ok();
                    let _ = pe::strip_coff_symbols(b);
                    let _ = pe::append_sections(b, &[(".x", b"x")]);
                }
            },
        ),
        ("iso9660", iso_seed(work).into_iter().collect(), |b, _| {
            let _ = iso9660::read_image(b);
        }),
        ("fat", vec![fat_seed()], |b, _| {
            let _ = fat::read_image(b);
        }),
        ("zinfo", vec![zinfo_seed()], |b, _| {
            let _ = zinfo::parse(b);
        }),
        ("optrom", rom_seeds(), |b, _| {
            let _ = optrom::pci_identity(b);
            let mut copy = b.to_vec();
            let _ = optrom::fix_checksums(&mut copy);
        }),
        ("tree-manifest", vec![tree_seed()], |b, _| {
            if let Ok(tree) = serde_json::from_slice::<Tree>(b) {
                let _ = tree.check();
                let _ = tree.links_out();
            }
        }),
        ("action-record", vec![record_seed().0.clone()], |b, _| {
            let (_, key, trust) = record_seed();
            let _ = signing::open(b, key, Some(trust));
            let _ = signing::open(b, key, None);
        }),
        (
            "elf",
            host_files(&["/usr/bin/true", "/bin/true"])
                .into_iter()
                .take(1)
                .collect(),
            |b, _| {
                let _ = crate::elf::read_info(b);
            },
        ),
    ];
    let mut missing = Vec::new();
    let targets = all
        .into_iter()
        .filter_map(|(name, seeds, run)| {
            if seeds.is_empty() {
                missing.push(name);
                None
            } else {
                Some(Target { name, seeds, run })
            }
        })
        .collect();
    (targets, missing)
}

/// What a run of one target found.
#[derive(Debug, Default)]
pub struct Found {
    pub executions: u64,
    /// Inputs that made the reader panic, with the panic's message.
    pub crashes: Vec<(Vec<u8>, String)>,
}

/// Runs `target` on mutated seeds until `cases` have run or `time` is up,
/// from the random `seed` (the same seed, the same cases).
pub fn fuzz(target: &Target, seed: u64, cases: u64, time: Duration, work: &Path) -> Found {
    let mut rng = fastrand::Rng::with_seed(seed);
    let start = Instant::now();
    let mut found = Found::default();
    let quiet = QuietPanics::new();
    while found.executions < cases && start.elapsed() < time {
        let input = mutate(&mut rng, &target.seeds);
        found.executions += 1;
        if let Err(message) = run_one(target, &input, work) {
            found.crashes.push((input, message));
        }
    }
    drop(quiet);
    found
}

/// Runs one input, a panic as its message.
pub fn run_one(target: &Target, input: &[u8], work: &Path) -> Result<(), String> {
    catch_unwind(AssertUnwindSafe(|| target.run(input, work))).map_err(|panic| {
        panic
            .downcast_ref::<String>()
            .cloned()
            .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
            .unwrap_or_else(|| "a panic".into())
    })
}

/// Writes each crash of `target` as `<dir>/<target>/<sha256 prefix>`.
pub fn save_crashes(dir: &Path, target: &str, found: &Found) -> Result<Vec<PathBuf>> {
    let mut paths = Vec::new();
    for (input, _) in &found.crashes {
        let path = dir.join(target).join(&Digest::of_bytes(input).hex()[..16]);
        fs_err::create_dir_all(path.parent().expect("has a parent"))?;
        fs_err::write(&path, input)?;
        paths.push(path);
    }
    Ok(paths)
}

/// `cargo xtask bench fuzz`: every target for `seconds`, a table of what
/// ran and what crashed, crashes saved under `crash_dir`.
pub fn run(seconds: u64, seed: u64, crash_dir: &Path) -> Result<String> {
    let work = tempfile::tempdir().context("creating the fuzzing work directory")?;
    let (targets, missing) = targets(work.path());
    let mut table =
        "| reader | seeds | executions | per second | crashes |\n|---|---|---|---|---|\n"
            .to_string();
    for target in &targets {
        let start = Instant::now();
        let found = fuzz(
            target,
            seed,
            u64::MAX,
            Duration::from_secs(seconds),
            work.path(),
        );
        let rate = found.executions as f64 / start.elapsed().as_secs_f64();
        let saved = save_crashes(crash_dir, target.name, &found)?;
        for (path, (_, message)) in saved.iter().zip(&found.crashes) {
            eprintln!(
                "crash in {}: {message} (input: {})",
                target.name,
                path.display()
            );
        }
        table.push_str(&format!(
            "| {} | {} | {} | {rate:.0} | {} |\n",
            target.name,
            target.seeds.len(),
            found.executions,
            found.crashes.len()
        ));
    }
    for name in missing {
        table.push_str(&format!(
            "| {name} | 0 (no seed on this machine) | 0 | - | - |\n"
        ));
    }
    Ok(table)
}

/// One to four byte-level changes to a random seed.
fn mutate(rng: &mut fastrand::Rng, seeds: &[Vec<u8>]) -> Vec<u8> {
    let mut b = seeds[rng.usize(..seeds.len())].clone();
    for _ in 0..rng.usize(1..=4) {
        let len = b.len();
        match rng.u8(..9) {
            _ if len == 0 => b.push(rng.u8(..)),
            0 => b[rng.usize(..len)] ^= 1 << rng.u8(..8),
            1 => {
                b[rng.usize(..len)] = [0, 0xff, 0x7f, 0x80, b'0', b'f', b'/', b'.'][rng.usize(..8)]
            }
            2 => {
                // A 32-bit field set to an edge value, either byte order.
                let at = rng.usize(..len);
                let edge = [
                    0u32,
                    1,
                    0xffff_ffff,
                    0x7fff_ffff,
                    0x8000_0000,
                    len as u32,
                    len as u32 + 1,
                ];
                let v = edge[rng.usize(..edge.len())];
                let bytes = if rng.bool() {
                    v.to_le_bytes()
                } else {
                    v.to_be_bytes()
                };
                for (i, x) in bytes.iter().enumerate().take(len - at) {
                    b[at + i] = *x;
                }
            }
            3 => b.truncate(rng.usize(..len)),
            4 => {
                let at = rng.usize(..len);
                let n = rng.usize(1..=(len - at).min(64));
                b.drain(at..at + n);
            }
            5 => {
                let (at, from) = (rng.usize(..=len), rng.usize(..len));
                let n = rng.usize(1..=(len - from).min(64));
                let chunk = b[from..from + n].to_vec();
                b.splice(at..at, chunk);
            }
            6 => {
                // An ASCII hex digit (newc's headers) replaced.
                let at = rng.usize(..len);
                b[at] = b"0123456789abcdefF"[rng.usize(..17)];
            }
            7 => {
                let other = &seeds[rng.usize(..seeds.len())];
                if !other.is_empty() {
                    let from = rng.usize(..other.len());
                    let at = rng.usize(..len);
                    let n = (other.len() - from).min(len - at).min(256);
                    b[at..at + n].copy_from_slice(&other[from..from + n]);
                }
            }
            _ => {
                let at = rng.usize(..=len);
                let n = rng.usize(1..=16);
                let junk: Vec<u8> = (0..n).map(|_| rng.u8(..)).collect();
                b.splice(at..at, junk);
            }
        }
    }
    b
}

/// Silences the panic report of this thread while a run catches panics on
/// purpose (other threads, such as concurrent tests, report as before);
/// the previous hook is restored when dropped.
struct QuietPanics {
    previous: std::sync::Arc<Hook>,
}

type Hook = Box<dyn Fn(&std::panic::PanicHookInfo<'_>) + Sync + Send>;

impl QuietPanics {
    fn new() -> QuietPanics {
        let previous: std::sync::Arc<Hook> = std::sync::Arc::new(std::panic::take_hook());
        let fuzzing = std::thread::current().id();
        let report = previous.clone();
        std::panic::set_hook(Box::new(move |info| {
            if std::thread::current().id() != fuzzing {
                report(info);
            }
        }));
        QuietPanics { previous }
    }
}

impl Drop for QuietPanics {
    fn drop(&mut self) {
        let previous = self.previous.clone();
        std::panic::set_hook(Box::new(move |info| previous(info)));
    }
}

/// Writes `input` as a file and unpacks it into a fresh directory.
fn unpack_with(input: &[u8], work: &Path, unpack: fn(&Path, &Path, &str) -> Result<()>) {
    let Ok(dir) = tempfile::tempdir_in(work) else {
        return;
    };
    let file = dir.path().join("input");
    let dest = dir.path().join("dest");
    if std::fs::write(&file, input).is_ok() && std::fs::create_dir(&dest).is_ok() {
        let _ = unpack(&file, &dest, "fuzz input");
    }
}

fn host_files(paths: &[&str]) -> Vec<Vec<u8>> {
    paths.iter().filter_map(|p| std::fs::read(p).ok()).collect()
}

fn cpio_seed() -> Vec<u8> {
    let entries = vec![
        Entry::dir("bin", 1),
        Entry::file("bin/init", 0o755, 1, b"#!/bin/sh\necho hi\n".to_vec()),
        Entry {
            kind: Kind::Symlink("init".into()),
            ..Entry::file("bin/sh", 0o777, 1, Vec::new())
        },
        Entry {
            kind: Kind::CharDev { major: 5, minor: 1 },
            ..Entry::file("console", 0o600, 1, Vec::new())
        },
    ];
    newc::archive_bytes(&entries).expect("a seed archive")
}

fn compressed_seeds() -> Vec<Vec<u8>> {
    use std::io::Write;
    let cpio = cpio_seed();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&cpio).expect("in memory");
    let zst = zstd::encode_all(&cpio[..], 3).expect("in memory");
    let mut xz = xz2::write::XzEncoder::new(Vec::new(), 6);
    xz.write_all(&cpio).expect("in memory");
    vec![
        gz.finish().expect("in memory"),
        zst,
        xz.finish().expect("in memory"),
    ]
}

/// A tar of a directory, a file, a symlink and a hard link.
fn tar_bytes() -> Vec<u8> {
    let mut tar = tar::Builder::new(Vec::new());
    let header = |path: &str, kind: tar::EntryType, size: u64, link: Option<&str>| {
        let mut h = tar::Header::new_gnu();
        h.set_entry_type(kind);
        h.set_size(size);
        h.set_mode(0o755);
        if let Some(l) = link {
            h.set_link_name(l).expect("short");
        }
        h.set_path(path).expect("short");
        h.set_cksum();
        h
    };
    let body = b"hello\n";
    tar.append(&header("top/", tar::EntryType::Directory, 0, None), &[][..])
        .expect("in memory");
    tar.append(
        &header("top/a", tar::EntryType::Regular, 6, None),
        &body[..],
    )
    .expect("in memory");
    tar.append(
        &header("top/l", tar::EntryType::Symlink, 0, Some("a")),
        &[][..],
    )
    .expect("in memory");
    tar.append(
        &header("top/h", tar::EntryType::Link, 0, Some("top/a")),
        &[][..],
    )
    .expect("in memory");
    tar.into_inner().expect("in memory")
}

fn tar_seeds() -> Vec<Vec<u8>> {
    use std::io::Write;
    let tar = tar_bytes();
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
    gz.write_all(&tar).expect("in memory");
    vec![tar, gz.finish().expect("in memory")]
}

/// A Debian binary package: `debian-binary`, `control.tar`, `data.tar`.
fn deb_seed() -> Vec<u8> {
    let mut ar = ar::Builder::new(Vec::new());
    for (name, data) in [
        ("debian-binary", b"2.0\n".to_vec()),
        ("control.tar", tar_bytes()),
        ("data.tar", tar_bytes()),
    ] {
        let header = ar::Header::new(name.as_bytes().to_vec(), data.len() as u64);
        ar.append(&header, &data[..]).expect("in memory");
    }
    ar.into_inner().expect("in memory")
}

fn fat_seed() -> Vec<u8> {
    let files = std::collections::BTreeMap::from([
        ("EFI/BOOT/BOOTX64.EFI".to_string(), vec![0x4d; 3000]),
        (
            "loader/entries/kiln.conf".to_string(),
            b"title Kiln\n".to_vec(),
        ),
    ]);
    let opts = fat::FatOptions {
        volume_label: "KILN".into(),
        volume_id: 0x1234_5678,
        epoch: 1_700_000_000,
    };
    fat::write_image(&files, &opts).expect("a seed image")
}

/// A small ISO 9660 image made by xorriso (Rock Ridge, Joliet), if installed.
fn iso_seed(work: &Path) -> Option<Vec<u8>> {
    let tree = work.join("iso-tree");
    std::fs::create_dir_all(tree.join("boot")).ok()?;
    std::fs::write(tree.join("boot/vmlinuz"), vec![7u8; 5000]).ok()?;
    std::os::unix::fs::symlink("boot/vmlinuz", tree.join("kernel")).ok()?;
    let iso = work.join("seed.iso");
    let status = crate::tools::command("xorriso")
        .ok()?
        .args(["-as", "mkisofs", "-quiet", "-R", "-J", "-o"])
        .arg(&iso)
        .arg(&tree)
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?;
    status.success().then(|| std::fs::read(&iso).ok()).flatten()
}

/// Records of every kind zbin knows, valid.
fn zinfo_seed() -> Vec<u8> {
    let mut b = Vec::new();
    let mut record = |tag: &[u8; 4], words: [u32; 3]| {
        b.extend_from_slice(tag);
        for w in words {
            b.extend_from_slice(&w.to_le_bytes());
        }
    };
    record(b"COPY", [0, 0x200, 16]);
    record(b"PACK", [0x200, 0x1000, 16]);
    record(b"PAYL", [0, 0, 16]);
    record(b"ADDB", [2, 512, 0]);
    record(b"ADHW", [4, 16, 0]);
    record(b"ZREL", [0, 0x100, 0x3e]);
    b
}

/// QEMU's option ROMs (legacy and EFI), as Debian installs them.
fn rom_seeds() -> Vec<Vec<u8>> {
    let mut seeds = Vec::new();
    for dir in ["/usr/lib/ipxe/qemu", "/usr/share/qemu"] {
        let Ok(entries) = std::fs::read_dir(dir) else {
            continue;
        };
        let mut paths: Vec<PathBuf> = entries
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "rom"))
            .collect();
        paths.sort();
        seeds.extend(paths.iter().take(4).filter_map(|p| std::fs::read(p).ok()));
    }
    seeds
}

fn tree_seed() -> Vec<u8> {
    let file = |n: u8| TreeKind::File {
        digest: Digest::of_bytes(&[n]),
        size: 1,
        mode: 0o644,
    };
    let tree = Tree {
        entries: vec![
            TreeEntry {
                path: "etc".into(),
                kind: TreeKind::Dir { mode: 0o755 },
            },
            TreeEntry {
                path: "etc/a".into(),
                kind: file(1),
            },
            TreeEntry {
                path: "lib64".into(),
                kind: TreeKind::Symlink {
                    target: "usr/lib64".into(),
                },
            },
        ],
    };
    tree.to_bytes()
}

/// A signed record, its key, and the trust that accepts it (made once).
fn record_seed() -> &'static (Vec<u8>, Digest, Trust) {
    static SEED: std::sync::OnceLock<(Vec<u8>, Digest, Trust)> = std::sync::OnceLock::new();
    SEED.get_or_init(make_record_seed)
}

fn make_record_seed() -> (Vec<u8>, Digest, Trust) {
    // A fixed key: the same seed bytes every run.
    const KEY: [u8; 48] = [
        0x30, 0x2e, 0x02, 0x01, 0x00, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x04, 0x22, 0x04,
        0x20, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19, 20, 21, 22, 23,
        24, 25, 26, 27, 28, 29, 30, 31, 32,
    ];
    let signer = Signer::from_pkcs8(&KEY).expect("a valid PKCS#8 Ed25519 key");
    let key = Digest::of_bytes(b"fuzz");
    let record = ActionRecord {
        key,
        step: "initramfs stage2/stage2_initramfs.cpio.gz".into(),
        components: serde_json::json!({ "vars": { "release": "rc1" } }),
        outputs: std::collections::BTreeMap::from([(
            "image".into(),
            crate::store::Output::File {
                digest: Digest::of_bytes(b"image"),
                size: 5,
            },
        )]),
    };
    let trust = Trust::from_raw(&signer.public_key());
    (signer.sign(&record).expect("signs"), key, trust)
}
