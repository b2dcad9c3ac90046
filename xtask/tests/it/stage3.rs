//! Stage3, the ROM-update image: its contents (flashing tools with their
//! library closure, ROMs checked against the recipe, the updater's table),
//! the updater's decisions on every branch, and a QEMU dry run.
//!
//! The updater tests run the script and busybox taken out of the built
//! image against a sysfs tree and `flashrom`/`mstflint` stand-ins that keep
//! each card's flash in a file: the decisions are the real script's, only
//! the hardware is simulated. The image itself boots in QEMU (TCG) too.
//!
//! Without an iPXE tree the image carries Debian's iPXE ROMs for QEMU
//! (`ipxe-qemu`) instead of stage1's; with `KILN_SOURCE_IPXE` the default
//! recipe (stage1's ROMs, per-host archives) is built and booted as well.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use crate::common::*;
use kiln::verify::boot::{self, BootSpec};

const KERNEL: &str = "stage3/stage3_update_vmlinuz";
const INITRAMFS: &str = "stage3/stage3_update_initramfs.cpio.gz";
const E1000E_ROM: &str = "usr/lib/ipxe/qemu/pxe-e1000e.rom";

/// `[[rom]]`s for machines without an iPXE tree: Debian's build of iPXE's
/// e1000e ROM (a real option ROM for 8086:10d3).
const QEMU_ROMS: &str = r#"
[[rom]]
source = "ipxe-qemu"
path = "usr/lib/ipxe/qemu/pxe-e1000e.rom"
device = "8086:10d3"
method = "flashrom"
programmer = "nicintel_spi"
"#;

/// The default stage3 recipe with its `[[rom]]`s replaced by `roms`.
fn recipe_with_roms(recipes: &Path, roms: &str) {
    let path = recipes.join("stage3.toml");
    let text = std::fs::read_to_string(&path).unwrap();
    let head = &text[..text.find("\n[[rom]]").expect("stage3.toml has [[rom]]s")];
    std::fs::write(&path, format!("{head}\n{roms}")).unwrap();
}

/// The stage3 image with `ipxe-qemu`'s ROMs, built once per test run.
fn image() -> &'static (tempfile::TempDir, PathBuf) {
    static IMAGE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    IMAGE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let recipes = copy_recipes(dir.path());
        recipe_with_roms(&recipes, QEMU_ROMS);
        let out = dir.path().join("output");
        run_ok(kiln(&recipes, &out, &shared_cache()).args(["build", "stage3"]));
        (dir, out)
    })
}

fn entry<'e>(entries: &'e [kiln::archive::ReadEntry], name: &str) -> &'e kiln::archive::ReadEntry {
    entries
        .iter()
        .find(|e| e.name == name)
        .unwrap_or_else(|| panic!("the image has no {name}"))
}

#[test]
fn the_image_carries_the_tools_with_their_libraries_and_a_checked_rom_table() {
    let (_dir, out) = image();
    let entries = archive_entries(&out.join(INITRAMFS));
    let names: Vec<&str> = entries.iter().map(|e| e.name.as_str()).collect();
    for needed in [
        "usr/bin/mstflint",
        "usr/sbin/flashrom",
        "lib64/ld-linux-x86-64.so.2",
        "lib/x86_64-linux-gnu/libc.so.6",
        "usr/lib/x86_64-linux-gnu/libstdc++.so.6",
        "usr/lib/x86_64-linux-gnu/libcrypto.so.3",
        "usr/lib/x86_64-linux-gnu/libpci.so.3",
        "usr/lib/x86_64-linux-gnu/libusb-1.0.so.0",
        "usr/sbin/kiln-rom-update",
        "etc/kiln/roms/pxe-e1000e.rom",
    ] {
        assert!(names.contains(&needed), "{needed} missing from {names:?}");
    }
    // Nothing of the packages beyond the programs and what they load.
    assert!(
        !names.iter().any(|n| n.starts_with("usr/share/")),
        "{names:?}"
    );
    let rom = std::fs::read(Path::new("/").join(E1000E_ROM)).ok();
    let table = String::from_utf8(entry(&entries, "etc/kiln/roms.conf").data.clone()).unwrap();
    let line = table.lines().find(|l| !l.starts_with('#')).unwrap();
    let fields: Vec<&str> = line.split(' ').collect();
    assert_eq!(fields[..3], ["8086", "10d3", "pxe-e1000e.rom"], "{line}");
    let carried = &entry(&entries, "etc/kiln/roms/pxe-e1000e.rom").data;
    assert_eq!(fields[3], carried.len().to_string());
    assert_eq!(fields[4], kiln::store::Digest::of_bytes(carried).hex());
    assert_eq!(
        fields[5..],
        ["0.0.1", "flashrom:nicintel_spi", "-"],
        "{line}"
    );
    if let Some(rom) = rom {
        // The host's qemu uses the same package version here.
        assert_eq!(&rom, carried);
    }
    let kinds: Vec<String> = [
        KERNEL,
        INITRAMFS,
        "stage3/stage3_update.iso",
        "stage3/stage3_update.efi",
    ]
    .iter()
    .map(|n| manifest_entry(out, n)["kind"].as_str().unwrap().to_string())
    .collect();
    assert_eq!(kinds, ["kernel", "initramfs", "iso", "uki"]);
}

#[test]
fn a_rom_assigned_to_another_device_fails_the_build_naming_the_recipe_line() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    recipe_with_roms(
        &recipes,
        &QEMU_ROMS.replace("pxe-e1000e.rom", "pxe-virtio.rom"),
    );
    let out = dir.path().join("output");
    let err = run_err(kiln(&recipes, &out, &shared_cache()).args(["build", "stage3"]));
    assert!(
        err.contains("pxe-virtio.rom (")
            && err.contains("stage3.toml:")
            && err.contains("the ROM's PCI header is for 1af4:1041")
            && err.contains("the recipe assigns it to 8086:10d3"),
        "{err}"
    );
    assert!(!out.join(INITRAMFS).exists());
}

#[test]
fn a_program_missing_from_the_packages_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    recipe_with_roms(&recipes, QEMU_ROMS);
    edit(&recipes.join("stage3.toml"), "\"libpci3\", ", "");
    let out = dir.path().join("output");
    let err = run_err(kiln(&recipes, &out, &shared_cache()).args(["build", "stage3"]));
    assert!(
        err.contains(
            "usr/sbin/flashrom needs libpci.so.3, which none of the given packages provides"
        ),
        "{err}"
    );
}

// ---- the updater, on simulated hardware ----

/// A directory with the image's busybox (every applet linked), its updater
/// and ROM table, a sysfs tree and flashing-tool stand-ins.
struct Rig {
    dir: tempfile::TempDir,
    rom: Vec<u8>,
    /// The installed mstflint, which the stand-in runs for `-i FILE qrom`.
    real_mstflint: Option<PathBuf>,
}

const FAKE_FLASHROM: &str = r#"#!RIG/bin/sh
# flashrom stand-in: the chip behind `-p <programmer>:pci=<bus:dev.fn>` is
# the file $FAKE_FLASH/<bus:dev.fn>.
while [ $# -gt 0 ]; do
    case "$1" in
        -p) chip="$FAKE_FLASH/${2#*pci=}"; shift ;;
        -r) op=r; file=$2; shift ;;
        -w) op=w; file=$2; shift ;;
    esac
    shift
done
case "$op" in
    r) cp "$chip" "$file" ;;
    w)
        echo "flashrom ${chip##*/}" >>"$FAKE_FLASH/writes"
        [ -e "$FAKE_FLASH/fail-write" ] && { echo "Erasing and writing flash chip... FAILED" >&2; exit 1; }
        cp "$file" "$chip"
        [ -e "$FAKE_FLASH/corrupt" ] && printf 'X' | dd of="$chip" bs=1 seek=600 conv=notrunc 2>/dev/null
        ;;
esac
exit 0
"#;

const FAKE_MSTFLINT: &str = r#"#!RIG/bin/sh
# mstflint stand-in with mstflint's syntax: `-d <address> rrom FILE`,
# `-d <address> -y brom FILE`, `-d <address> query`, `-i FILE qrom`. The
# card keeps its ROM in $FAKE_FLASH/<address> and the version its query
# reports in <address>.version; `qrom` runs $REAL_MSTFLINT if set.
while [ $# -gt 0 ]; do
    case "$1" in
        -d) dev=$2; shift ;;
        -i) image=$2; shift ;;
        -y) ;;
        rrom|brom) op=$1; file=${2:?"$1 needs a file"}; shift ;;
        query|qrom) op=$1 ;;
        *) echo "mstflint stand-in: unexpected $1" >&2; exit 2 ;;
    esac
    shift
done
chip="$FAKE_FLASH/${dev:-none}"
case "$op" in
    rrom) cp "$chip" "$file" ;;
    brom) echo "mstflint $dev" >>"$FAKE_FLASH/writes"; cp "$file" "$chip" ;;
    query) [ -e "$chip.version" ] && echo "Rom Info:         type=PXE version=$(cat "$chip.version") devid=4099 proto=ETH" ;;
    qrom)
        [ -n "${image:-}" ] || { echo "qrom works on an image (-i)" >&2; exit 2; }
        # Reading a file needs no card: the real mstflint, when the test gives it.
        [ -n "${REAL_MSTFLINT:-}" ] && exec "$REAL_MSTFLINT" -i "$image" qrom
        ;;
esac
exit 0
"#;

impl Rig {
    /// The rig of the image built with `ipxe-qemu`'s e1000e ROM.
    fn new() -> Rig {
        Rig::of(&image().1, "pxe-e1000e.rom")
    }

    /// The rig of the stage3 image in output `out`; `rom` (a file of its
    /// table) is the ROM tests flash and compare.
    fn of(out: &Path, rom: &str) -> Rig {
        let entries = archive_entries(&out.join(INITRAMFS));
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        for sub in ["bin", "sys/bus/pci/devices", "roms/roms", "flash", "work"] {
            std::fs::create_dir_all(root.join(sub)).unwrap();
        }
        let busybox = root.join("bin/busybox");
        write_exec(&busybox, &entry(&entries, "bin/busybox").data);
        let list = Command::new(&busybox).arg("--list").output().unwrap();
        for applet in String::from_utf8(list.stdout).unwrap().lines() {
            if applet != "busybox" {
                std::os::unix::fs::symlink("busybox", root.join("bin").join(applet)).unwrap();
            }
        }
        let rig_path = root.to_str().unwrap();
        write_exec(
            &root.join("bin/flashrom"),
            FAKE_FLASHROM.replace("RIG", rig_path).as_bytes(),
        );
        write_exec(
            &root.join("bin/mstflint"),
            FAKE_MSTFLINT.replace("RIG", rig_path).as_bytes(),
        );
        write_exec(
            &root.join("kiln-rom-update"),
            &entry(&entries, "usr/sbin/kiln-rom-update").data,
        );
        let table = String::from_utf8(entry(&entries, "etc/kiln/roms.conf").data.clone()).unwrap();
        std::fs::write(root.join("roms/roms.conf"), table).unwrap();
        for e in entries
            .iter()
            .filter(|e| e.name.starts_with("etc/kiln/roms/"))
        {
            let file = &e.name["etc/kiln/roms/".len()..];
            std::fs::write(root.join("roms/roms").join(file), &e.data).unwrap();
        }
        let rom = entry(&entries, &format!("etc/kiln/roms/{rom}"))
            .data
            .clone();
        Rig {
            dir,
            rom,
            real_mstflint: None,
        }
    }

    fn path(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// A PCI device; `window` is its expansion ROM window in bytes.
    fn card(&self, bdf: &str, class: &str, id: &str, window: Option<u64>) {
        let dev = self.path(&format!("sys/bus/pci/devices/{bdf}"));
        std::fs::create_dir_all(&dev).unwrap();
        let (vendor, device) = id.split_once(':').unwrap();
        std::fs::write(dev.join("class"), format!("{class}\n")).unwrap();
        std::fs::write(dev.join("vendor"), format!("0x{vendor}\n")).unwrap();
        std::fs::write(dev.join("device"), format!("0x{device}\n")).unwrap();
        let zero = "0x0000000000000000 0x0000000000000000 0x0000000000000000\n";
        let mut resource = zero.repeat(6);
        resource.push_str(&match window {
            Some(size) => format!(
                "0x00000000feb80000 0x{:016x} 0x0000000000046200\n",
                0xfeb80000 + size - 1
            ),
            None => zero.to_string(),
        });
        std::fs::write(dev.join("resource"), resource).unwrap();
    }

    /// What the card's flash holds now (`chip` is the flashing tool's name
    /// for it: `00:03.0` for flashrom, the full address for mstflint).
    fn flash(&self, chip: &str, bytes: &[u8]) {
        std::fs::write(self.path(&format!("flash/{chip}")), bytes).unwrap();
    }

    fn flashed(&self, chip: &str) -> Vec<u8> {
        std::fs::read(self.path(&format!("flash/{chip}"))).unwrap()
    }

    fn writes(&self) -> String {
        std::fs::read_to_string(self.path("flash/writes")).unwrap_or_default()
    }

    /// Adds a `roms.conf` line for `rom` (written as `file`).
    fn table_line(&self, id: &str, file: &str, rom: &[u8], version: &str, method: &str, max: &str) {
        std::fs::write(self.path(&format!("roms/roms/{file}")), rom).unwrap();
        let (vendor, device) = id.split_once(':').unwrap();
        let line = format!(
            "{vendor} {device} {file} {} {} {version} {method} {max}\n",
            rom.len(),
            kiln::store::Digest::of_bytes(rom).hex()
        );
        let mut table = std::fs::OpenOptions::new()
            .append(true)
            .open(self.path("roms/roms.conf"))
            .unwrap();
        table.write_all(line.as_bytes()).unwrap();
    }

    /// Runs the updater with kernel arguments `cmdline`: (exit code, its
    /// `KILN-ROM` lines).
    fn run(&self, cmdline: &str) -> (i32, Vec<String>) {
        std::fs::write(self.path("cmdline"), format!("{cmdline}\n")).unwrap();
        let out = Command::new(self.path("bin/sh"))
            .arg(self.path("kiln-rom-update"))
            .env_clear()
            .env("PATH", self.path("bin"))
            .env("KILN_SYSFS", self.path("sys"))
            .env("KILN_CMDLINE", self.path("cmdline"))
            .env("KILN_ROMS", self.path("roms"))
            .env("KILN_WORK", self.path("work"))
            .env("FAKE_FLASH", self.path("flash"))
            .envs(self.real_mstflint.iter().map(|p| ("REAL_MSTFLINT", p)))
            .output()
            .unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        let lines = stdout
            .lines()
            .filter(|l| l.starts_with("KILN-ROM "))
            .map(String::from)
            .collect();
        (out.status.code().unwrap_or(-1), lines)
    }
}

fn write_exec(path: &Path, bytes: &[u8]) {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, bytes).unwrap();
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755)).unwrap();
}

/// `rom` with its first image's PCI revision level, or ids, replaced.
fn with_pci(rom: &[u8], revision: Option<u16>, id: Option<(u16, u16)>) -> Vec<u8> {
    let mut rom = rom.to_vec();
    let pcir = u16::from_le_bytes([rom[0x18], rom[0x19]]) as usize;
    if let Some(r) = revision {
        rom[pcir + 0x12..pcir + 0x14].copy_from_slice(&r.to_le_bytes());
    }
    if let Some((v, d)) = id {
        rom[pcir + 4..pcir + 6].copy_from_slice(&v.to_le_bytes());
        rom[pcir + 6..pcir + 8].copy_from_slice(&d.to_le_bytes());
        rom[pcir + 8..pcir + 10].copy_from_slice(&0u16.to_le_bytes());
    }
    rom
}

/// `len` bytes of erased flash (0xff).
fn erased(len: usize) -> Vec<u8> {
    vec![0xff; len]
}

/// An HTTP server on 127.0.0.1 that takes up to `n` requests, answering 204:
/// (its port, a thread returning each request's head and body).
fn report_server(n: usize) -> (u16, std::thread::JoinHandle<Vec<(String, String)>>) {
    let server = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = server.local_addr().unwrap().port();
    let thread = std::thread::spawn(move || {
        let mut requests = Vec::new();
        // Gives up after two minutes, so a guest that never reports fails
        // the test's comparison instead of hanging it.
        server.set_nonblocking(true).unwrap();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(120);
        while requests.len() < n && std::time::Instant::now() < deadline {
            let mut conn = match server.accept() {
                Ok((conn, _)) => conn,
                Err(_) => {
                    std::thread::sleep(std::time::Duration::from_millis(50));
                    continue;
                }
            };
            conn.set_nonblocking(false).unwrap();
            let mut reader = BufReader::new(conn.try_clone().unwrap());
            let mut head = String::new();
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
                head.push_str(&line);
                if line == "\r\n" || line.is_empty() {
                    break;
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            conn.write_all(b"HTTP/1.0 204 No Content\r\n\r\n").unwrap();
            requests.push((head, String::from_utf8(body).unwrap()));
        }
        requests
    });
    (port, thread)
}

const E1000E: &str = "0000:00:03.0";
const NIC: &str = "0x020000";

fn one_line(lines: &[String]) -> &str {
    assert_eq!(lines.len(), 1, "{lines:?}");
    &lines[0]
}

#[test]
fn updater_flashes_a_known_card_verifies_it_and_reports_it() {
    let rig = Rig::new();
    rig.card(E1000E, NIC, "8086:10d3", Some(256 << 10));
    rig.card("0000:00:01.0", "0x030000", "1234:1111", None); // a display: not a NIC
                                                             // The card has an older ROM (revision 0) on a 128 KiB chip.
    let mut chip = with_pci(&rig.rom, Some(0), None);
    chip.resize(128 << 10, 0xff);
    rig.flash("00:03.0", &chip);
    let (port, reports) = report_server(1);
    let (status, lines) = rig.run(&format!(
        "console=ttyS0 kiln.report=http://127.0.0.1:{port}/stage3"
    ));
    let line = one_line(&lines);
    assert_eq!(status, 0, "{lines:?}");
    assert!(
        line.starts_with("KILN-ROM FLASHED 0000:00:03.0 8086:10d3 pxe-e1000e.rom (sha256 ")
            && line.ends_with(
                "version 0.0.0 -> 0.0.1 with flashrom:nicintel_spi; read back and verified"
            ),
        "{line}"
    );
    let flash = rig.flashed("00:03.0");
    assert_eq!(flash.len(), 128 << 10, "flashrom writes the whole chip");
    assert_eq!(&flash[..rig.rom.len()], rig.rom.as_slice());
    assert!(flash[rig.rom.len()..].iter().all(|&b| b == 0xff));
    let reports = reports.join().unwrap();
    let (head, body) = &reports[0];
    assert!(head.starts_with("POST /stage3 "), "{head}");
    assert!(body.ends_with(line), "{body}");
}

#[test]
fn updater_skips_unknown_cards_and_leaves_current_ones_alone() {
    let rig = Rig::new();
    rig.card("0000:00:02.0", NIC, "10ec:8139", Some(64 << 10));
    rig.card(E1000E, NIC, "8086:10d3", Some(256 << 10));
    let mut current = rig.rom.clone();
    current.extend(erased(4096));
    rig.flash("00:03.0", &current);
    let (status, lines) = rig.run("console=ttyS0");
    assert_eq!(status, 0);
    assert_eq!(
        lines,
        [
            "KILN-ROM SKIP 0000:00:02.0 10ec:8139 unknown card: this image has no ROM for it",
            "KILN-ROM CURRENT 0000:00:03.0 8086:10d3 already has pxe-e1000e.rom (version 0.0.1)",
        ]
    );
    assert_eq!(rig.writes(), "");
}

#[test]
fn updater_refuses_a_downgrade_unless_forced() {
    let rig = Rig::new();
    rig.card(E1000E, NIC, "8086:10d3", Some(256 << 10));
    let newer = with_pci(&rig.rom, Some(5), None);
    rig.flash("00:03.0", &newer);
    let (status, lines) = rig.run("console=ttyS0");
    assert_eq!(status, 0);
    assert_eq!(
        one_line(&lines),
        "KILN-ROM REFUSED 0000:00:03.0 8086:10d3 pxe-e1000e.rom 0.0.1 is older than the flashed 0.0.5 (downgrade); kiln.force=1 allows it"
    );
    assert_eq!(rig.writes(), "");
    assert_eq!(rig.flashed("00:03.0"), newer);

    let (status, lines) = rig.run("console=ttyS0 kiln.force=1");
    assert_eq!(status, 0);
    let line = one_line(&lines);
    assert!(
        line.starts_with("KILN-ROM FLASHED 0000:00:03.0 8086:10d3 pxe-e1000e.rom")
            && line.ends_with("version 0.0.5 -> 0.0.1 with flashrom:nicintel_spi (forced downgrade); read back and verified"),
        "{line}"
    );
    assert_eq!(rig.writes(), "flashrom 00:03.0\n");
}

#[test]
fn updater_dry_run_plans_and_writes_nothing() {
    let rig = Rig::new();
    rig.card(E1000E, NIC, "8086:10d3", Some(256 << 10));
    let older = erased(128 << 10);
    rig.flash("00:03.0", &older);
    let (status, lines) = rig.run("console=ttyS0 kiln.dry_run=1 kiln.force=1");
    assert_eq!(status, 0);
    let line = one_line(&lines);
    assert!(
        line.starts_with("KILN-ROM PLAN 0000:00:03.0 8086:10d3 would flash pxe-e1000e.rom (sha256 ")
            && line.ends_with("version unknown -> 0.0.1 with flashrom:nicintel_spi (forced) (kiln.dry_run=1: nothing written)"),
        "{line}"
    );
    assert_eq!(rig.writes(), "");
    assert_eq!(rig.flashed("00:03.0"), older);
    // Without force, an unreadable flashed version is refused outright.
    let (_, lines) = rig.run("console=ttyS0 kiln.dry_run=1");
    assert!(
        one_line(&lines)
            .starts_with("KILN-ROM REFUSED 0000:00:03.0 8086:10d3 cannot read the flashed version"),
        "{lines:?}"
    );
}

#[test]
fn updater_fails_on_a_read_back_mismatch() {
    let rig = Rig::new();
    rig.card(E1000E, NIC, "8086:10d3", Some(256 << 10));
    rig.flash("00:03.0", &with_pci(&rig.rom, Some(0), None));
    std::fs::write(rig.path("flash/corrupt"), "").unwrap();
    let (status, lines) = rig.run("console=ttyS0");
    assert_eq!(status, 1, "a failed card fails the run");
    assert_eq!(
        one_line(&lines),
        format!(
            "KILN-ROM FAILED 0000:00:03.0 8086:10d3 read-back of pxe-e1000e.rom does not match (backup: {}/0000:00:03.0.backup.rom)",
            rig.path("work").display()
        )
    );
    let backup = std::fs::read(rig.path("work/0000:00:03.0.backup.rom")).unwrap();
    assert_eq!(
        backup,
        with_pci(&rig.rom, Some(0), None),
        "the backup is what was flashed before"
    );
}

#[test]
fn updater_never_flashes_a_rom_for_another_device_or_one_too_large() {
    let rig = Rig::new();
    // The table says 1af4:1000, but the file's PCI header is the e1000e's.
    rig.table_line(
        "1af4:1000",
        "wrong.rom",
        &rig.rom,
        "1",
        "flashrom:nicintel_spi",
        "-",
    );
    rig.card("0000:00:02.0", NIC, "1af4:1000", Some(256 << 10));
    // Too large for the card's ROM window, then for a declared flash size.
    rig.card(E1000E, NIC, "8086:10d3", Some(64 << 10));
    rig.flash("00:03.0", &erased(64 << 10));
    let (status, lines) = rig.run("console=ttyS0 kiln.force=1");
    assert_eq!(status, 0);
    let size = rig.rom.len();
    assert_eq!(
        lines,
        [
            "KILN-ROM SKIP 0000:00:02.0 1af4:1000 wrong.rom is not for this device (its PCI header: 8086,10d3): not flashing".to_string(),
            format!("KILN-ROM SKIP 0000:00:03.0 8086:10d3 pxe-e1000e.rom is {size} bytes, the card's flash takes 65536: not flashing"),
        ]
    );
    // No ROM window and no max_size: the flash size is unknown.
    rig.card(E1000E, NIC, "8086:10d3", None);
    let (_, lines) = rig.run("console=ttyS0 kiln.force=1");
    assert_eq!(
        lines[1],
        "KILN-ROM SKIP 0000:00:03.0 8086:10d3 flash size unknown (no expansion ROM window, no max_size): not flashing"
    );
    // Not an option ROM at all.
    rig.table_line(
        "10ec:8139",
        "garbage.rom",
        b"not a rom",
        "1",
        "flashrom:nicintel_spi",
        "4096",
    );
    rig.card("0000:00:04.0", NIC, "10ec:8139", None);
    let (_, lines) = rig.run("console=ttyS0 kiln.force=1");
    assert_eq!(
        lines[2],
        "KILN-ROM SKIP 0000:00:04.0 10ec:8139 garbage.rom is not a PCI option ROM: not flashing"
    );
    assert_eq!(rig.writes(), "");
}

#[test]
fn updater_compares_mstflint_versions_numerically() {
    let rig = Rig::new();
    const MLX: &str = "0000:03:00.0";
    let rom = with_pci(&rig.rom, None, Some((0x15b3, 0x1003)));
    rig.table_line(
        "15b3:1003",
        "15b31003.mrom",
        &rom,
        "3.4.10",
        "mstflint",
        "1048576",
    );
    rig.card(MLX, NIC, "15b3:1003", None);
    rig.flash(MLX, &erased(1 << 20));
    let version = |v: &str| std::fs::write(rig.path(&format!("flash/{MLX}.version")), v).unwrap();
    // 3.4.10 is newer than 3.4.9, older than 3.10.
    version("3.10.0");
    let (_, lines) = rig.run("console=ttyS0");
    assert!(
        one_line(&lines).contains(
            "REFUSED 0000:03:00.0 15b3:1003 15b31003.mrom 3.4.10 is older than the flashed 3.10.0"
        ),
        "{lines:?}"
    );
    version("3.4.9");
    let (status, lines) = rig.run("console=ttyS0");
    assert_eq!(status, 0);
    let line = one_line(&lines);
    assert!(
        line.starts_with("KILN-ROM FLASHED 0000:03:00.0 15b3:1003 15b31003.mrom")
            && line.ends_with("version 3.4.9 -> 3.4.10 with mstflint; read back and verified"),
        "{line}"
    );
    assert_eq!(rig.flashed(MLX), rom);
    assert_eq!(rig.writes(), "mstflint 0000:03:00.0\n");
    // The same bytes again: nothing to do.
    let (_, lines) = rig.run("console=ttyS0");
    assert_eq!(
        one_line(&lines),
        "KILN-ROM CURRENT 0000:03:00.0 15b3:1003 already has 15b31003.mrom (version 3.4.10)"
    );
}

// ---- QEMU ----

/// Boots `kernel` (with `initrd` as a second initrd) in dry-run mode with a
/// virtio-net card and an e1000e whose ROM is `e1000e_rom`; returns the
/// serial lines.
/// `extra` kernel arguments are appended.
fn dry_run_boot(
    kernel: &Path,
    initrd: Option<&Path>,
    e1000e_rom: &Path,
    extra: &str,
) -> Vec<String> {
    let e1000e = format!("e1000e,romfile={}", e1000e_rom.display());
    let nics = boot::nics(&["virtio-net-pci", &e1000e]);
    let append = format!("console=ttyS0 panic=-1 kiln.dry_run=1 kiln.then=poweroff {extra}");
    let _one_at_a_time = one_guest_at_a_time();
    let outcome = boot::boot(&BootSpec::stage3(kernel, initrd, &append, nics)).unwrap();
    outcome.serial
}

#[test]
fn qemu_dry_run_plans_the_mapped_card_skips_the_unknown_one_and_runs_mstflint() {
    if !qemu_available() {
        return;
    }
    let (dir, out) = image();
    // The e1000e's flash holds a ROM that differs from the image's in one
    // byte of its padding: the updater must plan to replace it.
    let rig_rom = archive_entries(&out.join(INITRAMFS));
    let mut flashed = entry(&rig_rom, "etc/kiln/roms/pxe-e1000e.rom").data.clone();
    let last = flashed.len() - 2;
    flashed[last] ^= 0x01;
    let romfile = dir.path().join("flashed-e1000e.rom");
    std::fs::write(&romfile, &flashed).unwrap();
    // QEMU's user network reaches the host's 127.0.0.1 as 10.0.2.2.
    let (port, reports) = report_server(2);
    let report =
        format!("kiln.report=http://10.0.2.2:{port}/report epoxy.hostname=guest.example.net");
    let serial = dry_run_boot(&out.join(KERNEL), None, &romfile, &report);
    let text = serial.join("\n");
    assert!(
        text.contains("KILN-TOOL mstflint: mstflint, mstflint 4.21.0"),
        "mstflint did not run in the guest:\n{text}"
    );
    let lines = boot::rom_lines(&serial);
    assert_eq!(lines.len(), 2, "{text}");
    assert!(
        lines[0].starts_with("KILN-ROM SKIP 0000:00:02.0 1af4:1000 unknown card"),
        "{text}"
    );
    assert!(
        lines[1].starts_with(
            "KILN-ROM PLAN 0000:00:03.0 8086:10d3 would flash pxe-e1000e.rom (sha256 "
        ) && lines[1].ends_with(
            "version 0.0.1 -> 0.0.1 with flashrom:nicintel_spi (kiln.dry_run=1: nothing written)"
        ),
        "{text}"
    );
    assert!(text.contains("KILN-STAGE3-DONE status=0"), "{text}");
    let bodies: Vec<String> = reports
        .join()
        .unwrap()
        .into_iter()
        .map(|(_, b)| b)
        .collect();
    let posted: Vec<String> = lines
        .iter()
        .map(|l| format!("guest.example.net {l}"))
        .collect();
    assert_eq!(
        bodies, posted,
        "each card's line is POSTed as the guest printed it"
    );
}

/// The default recipes' stage3 (stage1's ROMs at `rom_version` 3.4.800,
/// per-host archives), built once per test run; `None` after reporting the
/// skip without an iPXE tree.
fn default_image() -> Option<&'static (tempfile::TempDir, PathBuf)> {
    let ipxe = ipxe_tree()?;
    static IMAGE: OnceLock<(tempfile::TempDir, PathBuf)> = OnceLock::new();
    Some(IMAGE.get_or_init(|| {
        let dir = tempfile::tempdir().unwrap();
        let recipes = copy_recipes(dir.path());
        let out = dir.path().join("output");
        run_ok(
            kiln(&recipes, &out, &shared_cache())
                .arg("--source")
                .arg(format!("ipxe={}", ipxe.display()))
                .args(["build", "stage3"]),
        );
        (dir, out)
    }))
}

/// `rom` as a build with `rom_version = version` would have made it.
fn at_version(rom: &[u8], version: &str) -> Vec<u8> {
    use kiln::archive::rom_version::{stamp, RomVersion};
    let mut rom = rom.to_vec();
    stamp(&mut rom, RomVersion::parse(version).unwrap()).unwrap();
    rom
}

const DRY_RUN: &str = "console=ttyS0 kiln.dry_run=1";

#[test]
fn updater_compares_the_versions_kiln_writes_into_its_roms() {
    let Some((_dir, out)) = default_image() else {
        return;
    };
    let entries = archive_entries(&out.join(INITRAMFS));
    let table = String::from_utf8(entry(&entries, "etc/kiln/roms.conf").data.clone()).unwrap();
    let versions: Vec<(&str, &str)> = table
        .lines()
        .filter(|l| !l.starts_with('#'))
        .map(|l| {
            let f: Vec<&str> = l.split(' ').collect();
            (f[2], f[5])
        })
        .collect();
    assert_eq!(
        versions,
        [("15b31003.mrom", "3.4.800"), ("808610d3.rom", "3.4.800")],
        "the table carries stage1's rom_version, read from each ROM:\n{table}"
    );

    // flashrom: the PCI revision level.
    let rig = Rig::of(out, "808610d3.rom");
    rig.card(E1000E, NIC, "8086:10d3", Some(256 << 10));
    rig.flash("00:03.0", &at_version(&rig.rom, "3.4.799"));
    let (_, lines) = rig.run(DRY_RUN);
    let line = one_line(&lines);
    assert!(
        line.starts_with("KILN-ROM PLAN 0000:00:03.0 8086:10d3 would flash 808610d3.rom")
            && line.ends_with(
                "version 3.4.799 -> 3.4.800 with flashrom:nicintel_spi (kiln.dry_run=1: nothing written)"
            ),
        "{line}"
    );
    rig.flash("00:03.0", &rig.rom);
    let (_, lines) = rig.run(DRY_RUN);
    assert_eq!(
        one_line(&lines),
        "KILN-ROM CURRENT 0000:00:03.0 8086:10d3 already has 808610d3.rom (version 3.4.800)"
    );
    rig.flash("00:03.0", &at_version(&rig.rom, "3.4.801"));
    let (_, lines) = rig.run(DRY_RUN);
    assert_eq!(
        one_line(&lines),
        "KILN-ROM REFUSED 0000:00:03.0 8086:10d3 808610d3.rom 3.4.800 is older than the flashed 3.4.801 (downgrade); kiln.force=1 allows it"
    );

    // mstflint: the version block, read by the real mstflint from the ROM
    // the stand-in reads off the card.
    if !prereq::program("mstflint", "apt-get install mstflint, or run ci/setup") {
        return;
    }
    const MLX: &str = "0000:03:00.0";
    let mut rig = Rig::of(out, "15b31003.mrom");
    rig.real_mstflint = Some(PathBuf::from("/usr/bin/mstflint"));
    rig.card(MLX, NIC, "15b3:1003", Some(1 << 20));
    let card = |rom: &[u8]| {
        let mut flash = rom.to_vec();
        flash.resize(1 << 20, 0xff);
        rig.flash(MLX, &flash);
        rig.run(DRY_RUN).1
    };
    let lines = card(&at_version(&rig.rom, "3.4.799"));
    let line = one_line(&lines);
    assert!(
        line.starts_with("KILN-ROM PLAN 0000:03:00.0 15b3:1003 would flash 15b31003.mrom")
            && line.ends_with(
                "version 3.4.799 -> 3.4.800 with mstflint (kiln.dry_run=1: nothing written)"
            ),
        "{line}"
    );
    assert_eq!(
        one_line(&card(&rig.rom)),
        "KILN-ROM CURRENT 0000:03:00.0 15b3:1003 already has 15b31003.mrom (version 3.4.800)"
    );
    assert_eq!(
        one_line(&card(&at_version(&rig.rom, "3.5.0"))),
        "KILN-ROM REFUSED 0000:03:00.0 15b3:1003 15b31003.mrom 3.4.800 is older than the flashed 3.5.0 (downgrade); kiln.force=1 allows it"
    );
    assert_eq!(rig.writes(), "");
}

#[test]
fn qemu_dry_run_of_the_default_recipe_uses_each_hosts_own_rom_and_its_version() {
    let Some((dir, out)) = default_image() else {
        return;
    };
    if !qemu_available() {
        return;
    }
    let host = "mlab1-lga0t.example.net";
    let host_roms = out.join(format!("stage3/hosts/{host}/stage3_roms.cpio.gz"));
    let host_table = archive_entries(&host_roms);
    let host_rom = &entry(&host_table, "etc/kiln/roms/808610d3.rom").data;
    let shared = archive_entries(&out.join(INITRAMFS));
    let shared_rom = &entry(&shared, "etc/kiln/roms/808610d3.rom").data;
    assert_ne!(host_rom, shared_rom, "the host's ROM embeds its own script");
    // stage1 is built as stage3's dependency, not installed.
    assert!(!out.join("stage1").exists());
    let as_host = format!("epoxy.hostname={host}");
    let sha = |rom: &[u8]| kiln::store::Digest::of_bytes(rom).hex()[..12].to_string();
    // The e1000e's ROM (what QEMU exposes as its flash): an older build of
    // the image's ROM, the host's own ROM, a newer build.
    let plan = format!(
        "KILN-ROM PLAN 0000:00:03.0 8086:10d3 would flash 808610d3.rom (sha256 {}) version 3.4.799 -> 3.4.800",
        sha(shared_rom)
    );
    let current =
        "KILN-ROM CURRENT 0000:00:03.0 8086:10d3 already has 808610d3.rom (version 3.4.800)";
    let refused = "KILN-ROM REFUSED 0000:00:03.0 8086:10d3 808610d3.rom 3.4.800 is older than the flashed 3.4.801";
    let boots = [
        (None, at_version(shared_rom, "3.4.799"), "", plan),
        (
            Some(host_roms.as_path()),
            host_rom.clone(),
            as_host.as_str(),
            current.to_string(),
        ),
        (
            None,
            at_version(shared_rom, "3.4.801"),
            "",
            refused.to_string(),
        ),
    ];
    for (i, (initrd, flashed, extra, want)) in boots.into_iter().enumerate() {
        let romfile = dir.path().join(format!("flashed-{i}.rom"));
        std::fs::write(&romfile, &flashed).unwrap();
        let serial = dry_run_boot(&out.join(KERNEL), initrd, &romfile, extra);
        let text = serial.join("\n");
        assert!(
            boot::rom_lines(&serial)
                .iter()
                .any(|l| l.starts_with(&want)),
            "want {want}:\n{text}"
        );
    }
}

#[test]
fn a_rom_artifact_no_recipe_builds_is_an_error_before_anything_runs() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = copy_recipes(dir.path());
    edit(
        &recipes.join("stage3.toml"),
        "stage1/x86_64/808610d3.rom",
        "stage1/x86_64/808610d4.rom",
    );
    let out = dir.path().join("output");
    let cache = dir.path().join("cache");
    let err = run_err(kiln(&recipes, &out, &cache).args(["plan", "stage3"]));
    assert!(
        err.contains("stage3.toml:")
            && err.contains(
                "[[rom]] artifact `stage1/x86_64/808610d4.rom`: recipe `stage1` does not build it"
            ),
        "{err}"
    );
}

#[test]
fn updater_dry_run_spellings_fail_safe() {
    let rig = Rig::new();
    rig.card(E1000E, NIC, "8086:10d3", Some(256 << 10));
    rig.flash("00:03.0", &with_pci(&rig.rom, Some(0), None));
    for cmdline in [
        "kiln.dry_run",
        "kiln.dry_run=true",
        "kiln.dry_run=yes",
        "kiln.dry_run=0 kiln.dry_run=1",
    ] {
        let (_, lines) = rig.run(&format!("console=ttyS0 {cmdline}"));
        assert!(
            one_line(&lines).starts_with("KILN-ROM PLAN "),
            "{cmdline}: {lines:?}"
        );
    }
    assert_eq!(rig.writes(), "");
    // kiln.force is only ever `=1`.
    rig.flash("00:03.0", &with_pci(&rig.rom, Some(5), None));
    for cmdline in ["kiln.force", "kiln.force=yes", "kiln.force=1 kiln.force=0"] {
        let (_, lines) = rig.run(&format!("console=ttyS0 {cmdline}"));
        assert!(
            one_line(&lines).starts_with("KILN-ROM REFUSED "),
            "{cmdline}: {lines:?}"
        );
    }
    // The last word wins: an explicit 0 after a 1 writes.
    let (_, lines) = rig.run("console=ttyS0 kiln.dry_run=1 kiln.dry_run=0 kiln.force=1");
    assert!(
        one_line(&lines).starts_with("KILN-ROM FLASHED "),
        "{lines:?}"
    );
}

#[test]
fn updater_skips_a_rom_that_disagrees_with_its_table_or_its_header() {
    let rig = Rig::new();
    rig.card(E1000E, NIC, "8086:10d3", Some(256 << 10));
    rig.flash("00:03.0", &with_pci(&rig.rom, Some(0), None));
    // A damaged file: the table's size and digest no longer match it.
    let mut damaged = rig.rom.clone();
    damaged.truncate(4096);
    std::fs::write(rig.path("roms/roms/pxe-e1000e.rom"), &damaged).unwrap();
    let (_, lines) = rig.run("console=ttyS0 kiln.force=1");
    assert_eq!(
        one_line(&lines),
        "KILN-ROM SKIP 0000:00:03.0 8086:10d3 pxe-e1000e.rom does not match its roms.conf entry (damaged image?): not flashing"
    );
    // A structure of revision 2 has no device list: bytes at offset 8 that
    // would name 10d5 as a list do not count.
    let mut old = with_pci(&rig.rom, None, Some((0x8086, 0x10d4)));
    let pcir = u16::from_le_bytes([old[0x18], old[0x19]]) as usize;
    let len = old.len();
    old[len - 8..len - 4].copy_from_slice(&[0xd5, 0x10, 0, 0]);
    let list = (len - 8 - pcir) as u16;
    old[pcir + 8..pcir + 10].copy_from_slice(&list.to_le_bytes());
    old[pcir + 0x0c] = 2;
    rig.table_line(
        "8086:10d5",
        "old.rom",
        &old,
        "1",
        "flashrom:nicintel_spi",
        "-",
    );
    rig.card("0000:00:04.0", NIC, "8086:10d5", Some(256 << 10));
    let (_, lines) = rig.run("console=ttyS0 kiln.force=1");
    assert_eq!(
        lines[1],
        "KILN-ROM SKIP 0000:00:04.0 8086:10d5 old.rom is not for this device (its PCI header: 8086,10d4): not flashing"
    );
    assert_eq!(rig.writes(), "");
}

#[test]
fn updater_stops_after_a_failed_write_and_keeps_the_backup() {
    let rig = Rig::new();
    let before = with_pci(&rig.rom, Some(0), None);
    for (bdf, chip) in [(E1000E, "00:03.0"), ("0000:00:04.0", "00:04.0")] {
        rig.card(bdf, NIC, "8086:10d3", Some(256 << 10));
        rig.flash(chip, &before);
    }
    std::fs::write(rig.path("flash/fail-write"), "").unwrap();
    let (status, lines) = rig.run("console=ttyS0");
    assert_eq!(status, 1);
    assert_eq!(
        lines,
        [
            "KILN-ROM FAILED 0000:00:03.0 8086:10d3 writing pxe-e1000e.rom failed: Erasing and writing flash chip... FAILED",
            "KILN-ROM SKIP 0000:00:04.0 8086:10d3 not attempted: an earlier card failed",
        ]
    );
    assert_eq!(
        rig.writes(),
        "flashrom 00:03.0\n",
        "the second card is never written"
    );
    assert_eq!(
        std::fs::read(rig.path("work/0000:00:03.0.backup.rom")).unwrap(),
        before
    );
    // Both cards of one model, no failure: both flashed.
    std::fs::remove_file(rig.path("flash/fail-write")).unwrap();
    let (status, lines) = rig.run("console=ttyS0");
    assert_eq!(status, 0);
    assert!(
        lines.iter().all(|l| l.starts_with("KILN-ROM FLASHED ")),
        "{lines:?}"
    );
    assert_eq!(lines.len(), 2);
}

#[test]
fn updater_refuses_another_hosts_roms() {
    let rig = Rig::new();
    rig.card(E1000E, NIC, "8086:10d3", Some(256 << 10));
    rig.flash("00:03.0", &with_pci(&rig.rom, Some(0), None));
    std::fs::write(rig.path("roms/host"), "a.example.net\n").unwrap();
    for cmdline in ["console=ttyS0", "epoxy.hostname=b.example.net"] {
        let (status, lines) = rig.run(cmdline);
        assert_eq!(status, 1);
        assert!(
            one_line(&lines).starts_with("KILN-ROM REFUSED - - these ROMs are built for a.example.net, this machine is epoxy.hostname="),
            "{lines:?}"
        );
    }
    assert_eq!(rig.writes(), "");
    let (status, lines) = rig.run("epoxy.hostname=a.example.net");
    assert_eq!(status, 0);
    assert!(
        one_line(&lines).starts_with("KILN-ROM FLASHED "),
        "{lines:?}"
    );
}
