//! Boot tests: start QEMU with a kernel and initramfs, read the serial
//! console, pass when the init's marker appears. TCG by default: on these
//! hosts `/dev/kvm` exists but guests hang under it; `KILN_QEMU_ACCEL=kvm`
//! switches.

use std::collections::VecDeque;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::arch::Arch;
use crate::tools;

/// The line stage2's /init prints once it is up (overlays/stage2/init).
pub const STAGE2_MARKER: &str = "KILN-STAGE2-READY";

/// Serial lines shown when a boot fails.
const TAIL: usize = 40;

/// What QEMU boots from.
#[derive(Debug, Clone)]
pub enum Medium {
    /// QEMU's direct Linux boot: `-kernel`, `-initrd`, `-append`.
    Kernel {
        kernel: PathBuf,
        initrd: Option<PathBuf>,
        append: String,
    },
    /// A disc image in the CD-ROM drive.
    Cdrom(PathBuf),
    /// A disk image as a USB stick (xHCI, usb-storage).
    Usb(PathBuf),
    /// A disk image as the first hard disk.
    Disk(PathBuf),
    /// No disk: the firmware boots from a NIC's option ROM (`qemu_args`
    /// give the NIC, with `romfile=` and `bootindex=0`).
    Network,
}

/// UEFI firmware for a guest.
#[derive(Debug, Clone)]
pub enum Firmware {
    /// One image given as `-bios` (OVMF.fd, QEMU_EFI.fd): no Secure Boot.
    Image(PathBuf),
    /// The firmware's code and a variable store as flash; the guest writes a scratch copy of
    /// `vars`. With keys enrolled in `vars` (Debian's `*.snakeoil.fd`) Secure Boot is enforcing.
    /// On x86_64 the code is the SMM build, so the machine is q35 with SMM and secure flash.
    Flash { code: PathBuf, vars: PathBuf },
}

/// Lines that mean an image was refused, by the firmware (Secure Boot) or by iPXE (`imgverify`
/// of a signature that does not match): the boot fails at once, with a [`FailureLine`] error.
pub const REFUSED: [&str; 3] = ["Access Denied", "Security Violation", "Could not verify"];

/// A boot that ended because the guest printed one of its spec's failure lines.
#[derive(Debug)]
pub struct FailureLine {
    /// The failure the line carried.
    pub failure: String,
    /// The last lines of the serial console, that one last.
    pub tail: String,
}

impl std::fmt::Display for FailureLine {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "the guest reported `{}`; last lines:\n{}",
            self.failure, self.tail
        )
    }
}

impl std::error::Error for FailureLine {}

pub struct BootSpec {
    /// The guest's architecture (which QEMU runs it).
    pub arch: Arch,
    pub medium: Medium,
    /// UEFI firmware; SeaBIOS when `None`.
    pub firmware: Option<Firmware>,
    pub marker: String,
    /// Lines that fail the boot at once (the guest said it went wrong).
    pub failures: Vec<String>,
    /// More QEMU arguments (devices, netdevs).
    pub qemu_args: Vec<String>,
    pub timeout: Duration,
    pub memory_mb: u32,
}

impl BootSpec {
    /// A kernel plus the stage2 initramfs, powering off after the marker.
    pub fn stage2(kernel: &Path, initrd: &Path, arch: Arch, timeout_secs: u64) -> BootSpec {
        BootSpec {
            medium: Medium::Kernel {
                kernel: kernel.to_path_buf(),
                initrd: Some(initrd.to_path_buf()),
                append: test_append(arch),
            },
            arch,
            firmware: None,
            marker: STAGE2_MARKER.into(),
            failures: Vec::new(),
            qemu_args: Vec::new(),
            timeout: Duration::from_secs(timeout_secs),
            memory_mb: 512,
        }
    }

    /// A kernel with its initramfs compiled in (no -initrd), with the
    /// cards whose drivers it must have built in ([`stage2_nics`]).
    pub fn kernel(kernel: &Path, arch: Arch, timeout_secs: u64) -> BootSpec {
        BootSpec {
            medium: Medium::Kernel {
                kernel: kernel.to_path_buf(),
                initrd: None,
                append: test_append(arch),
            },
            qemu_args: nics(stage2_nics(arch)),
            ..BootSpec::stage2(kernel, Path::new(""), arch, timeout_secs)
        }
    }

    /// Boot media built by Kiln (an ISO, an ESP image) on an `arch` guest:
    /// the medium's own boot loader and kernel arguments, SeaBIOS or the
    /// UEFI `firmware`, with the stage2 kernel's cards.
    pub fn media(
        medium: Medium,
        firmware: Option<Firmware>,
        arch: Arch,
        timeout_secs: u64,
    ) -> BootSpec {
        BootSpec {
            medium,
            arch,
            firmware,
            marker: STAGE2_MARKER.into(),
            failures: REFUSED.map(String::from).to_vec(),
            qemu_args: nics(stage2_nics(arch)),
            timeout: Duration::from_secs(timeout_secs),
            memory_mb: 512,
        }
    }

    /// Stage2 with a module archive appended as a second initrd (`initrd`
    /// is the concatenation): the guest loads `modules` with modprobe and
    /// must report a network interface it did not have before.
    pub fn modules(
        kernel: &Path,
        initrd: &Path,
        modules: &[&str],
        arch: Arch,
        timeout_secs: u64,
    ) -> BootSpec {
        let mut spec = BootSpec::stage2(kernel, initrd, arch, timeout_secs);
        spec.medium = Medium::Kernel {
            kernel: kernel.to_path_buf(),
            initrd: Some(initrd.to_path_buf()),
            append: format!(
                "console={} panic=-1 kiln.modprobe={} kiln.test=poweroff",
                arch.serial_console(),
                modules.join(",")
            ),
        };
        spec.marker = "KILN-MODPROBE-NEW-INTERFACES".into();
        spec.failures = vec![
            "KILN-MODPROBE-NO-NEW-INTERFACE".into(),
            "KILN-MODPROBE-FAILED".into(),
        ];
        spec.qemu_args = nics(&["virtio-net-pci"]);
        spec
    }
}

impl BootSpec {
    /// A ROM-update kernel (initramfs compiled in; `initrd` a second one,
    /// such as a host's ROM archive) with `append`, watched until the
    /// updater's last line.
    pub fn stage3(
        kernel: &Path,
        initrd: Option<&Path>,
        append: &str,
        qemu_args: Vec<String>,
    ) -> BootSpec {
        BootSpec {
            medium: Medium::Kernel {
                kernel: kernel.to_path_buf(),
                initrd: initrd.map(Path::to_path_buf),
                append: append.to_string(),
            },
            marker: STAGE3_MARKER.into(),
            qemu_args,
            ..BootSpec::stage2(kernel, Path::new(""), Arch::X86_64, 240)
        }
    }
}

/// What stage3's /init prints when the updater is done.
pub const STAGE3_MARKER: &str = "KILN-STAGE3-DONE";

/// Kernel arguments of direct-boot tests: serial console, power off after
/// the marker.
fn test_append(arch: Arch) -> String {
    format!(
        "console={} panic=-1 kiln.test=poweroff",
        arch.serial_console()
    )
}

/// The cards whose drivers the default stage2 kernel of `arch` has built
/// in, each of which must come up: virtio-net and e1000 on x86_64,
/// virtio-net on arm64 (QEMU's `virt` board and arm64 clouds).
pub fn stage2_nics(arch: Arch) -> &'static [&'static str] {
    match arch {
        Arch::X86_64 => &["virtio-net-pci", "e1000"],
        Arch::Arm64 => &["virtio-net-pci"],
    }
}

/// QEMU arguments for one card per `devices` entry (a `-device` model with
/// any properties, e.g. `e1000e,romfile=x.rom`), each on its own user
/// network; the guest sees them at PCI slots 2, 3, … in this order.
pub fn nics(devices: &[&str]) -> Vec<String> {
    devices
        .iter()
        .enumerate()
        .flat_map(|(i, d)| {
            [
                "-netdev".to_string(),
                format!("user,id=n{i}"),
                "-device".to_string(),
                format!("{d},netdev=n{i}"),
            ]
        })
        .collect()
}

/// Where chain-boot tests' guests find the boot server: QEMU's user
/// network forwards this address's port 80 to the test's HTTP server
/// (`guestfwd`), so URLs baked into stage1 never name a changing port.
pub const BOOT_SERVER: &str = "10.0.2.100";

/// A virtio-net card on a user network whose `BOOT_SERVER:80` is the host's
/// 127.0.0.1:`port`, through `relay` (a program QEMU runs per connection;
/// Kiln's own `relay` command); `romfile` makes it boot from that ROM.
pub fn chain_nic(port: u16, relay: &Path, romfile: Option<&Path>) -> Vec<String> {
    let mut device = "virtio-net-pci,netdev=n0".to_string();
    if let Some(rom) = romfile {
        device.push_str(&format!(",romfile={},bootindex=0", rom.display()));
    }
    vec![
        "-netdev".into(),
        format!(
            "user,id=n0,guestfwd=tcp:{BOOT_SERVER}:80-cmd:{} relay 127.0.0.1:{port}",
            relay.display()
        ),
        "-device".into(),
        device,
    ]
}

/// The kernel command line the guest's /init printed (` cmdline: …`).
pub fn guest_cmdline(serial: &[String]) -> Option<&str> {
    serial
        .iter()
        .find_map(|l| l.split_once(" cmdline: "))
        .map(|(_, rest)| rest.trim())
}

/// QEMU arguments that attach `medium`; images are opened read-only or as
/// snapshots, so a boot never writes to an artifact. arm64's `virt` board
/// has no IDE: its CD is a SCSI CD on virtio-scsi, its disk virtio-blk.
fn medium_args(medium: &Medium, arch: Arch) -> Vec<String> {
    let (cd_controller, cd_device, disk_device) = match arch {
        Arch::X86_64 => (None, "ide-cd", "ide-hd"),
        Arch::Arm64 => (Some("virtio-scsi-pci"), "scsi-cd", "virtio-blk-pci"),
    };
    let drive =
        |p: &Path, extra: &str| format!("if=none,id=boot,format=raw,file={},{extra}", p.display());
    let args: Vec<String> = match medium {
        Medium::Kernel {
            kernel,
            initrd,
            append,
        } => {
            let mut a = vec!["-kernel".into(), kernel.display().to_string()];
            if let Some(i) = initrd {
                a.extend(["-initrd".into(), i.display().to_string()]);
            }
            a.extend(["-append".into(), append.clone()]);
            a
        }
        Medium::Cdrom(p) => {
            let controller = cd_controller.map(|c| ["-device".to_string(), c.to_string()]);
            let mut a: Vec<String> = controller.into_iter().flatten().collect();
            a.extend([
                "-drive".into(),
                drive(p, "media=cdrom,readonly=on"),
                "-device".into(),
                format!("{cd_device},drive=boot,bootindex=0"),
            ]);
            a
        }
        Medium::Usb(p) => vec![
            "-device".into(),
            "qemu-xhci".into(),
            "-drive".into(),
            drive(p, "snapshot=on"),
            "-device".into(),
            "usb-storage,drive=boot,bootindex=0".into(),
        ],
        Medium::Disk(p) => vec![
            "-drive".into(),
            drive(p, "snapshot=on"),
            "-device".into(),
            format!("{disk_device},drive=boot,bootindex=0"),
        ],
        Medium::Network => Vec::new(),
    };
    args
}

/// The interfaces stage2's /init listed (`KILN-NET-INTERFACES: lo eth0 …`).
pub fn interfaces(serial: &[String]) -> Vec<&str> {
    serial
        .iter()
        .find_map(|l| l.split_once("KILN-NET-INTERFACES:"))
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default()
}

/// The ROM updater's result lines (`KILN-ROM <RESULT> …`), one per card,
/// cut from wherever they start on the serial line.
pub fn rom_lines(serial: &[String]) -> Vec<&str> {
    serial
        .iter()
        .filter_map(|l| l.find("KILN-ROM ").map(|i| &l[i..]))
        .collect()
}

pub struct BootOutcome {
    /// The whole serial line that carried the marker.
    pub marker: String,
    pub elapsed: Duration,
    pub serial: Vec<String>,
}

pub fn boot(spec: &BootSpec) -> Result<BootOutcome> {
    let accel = std::env::var("KILN_QEMU_ACCEL").unwrap_or_else(|_| "tcg".into());
    let (qemu, machine) = spec.arch.qemu();
    let mut cmd = tools::command(qemu)?;
    cmd.args(machine);
    cmd.args([
        "-accel",
        &accel,
        "-m",
        &spec.memory_mb.to_string(),
        "-nographic",
        "-no-reboot",
        "-nodefaults",
    ]);
    cmd.args(["-serial", "stdio"]);
    // The scratch copy of a flash variable store lives as long as the guest.
    let _vars = firmware_args(&mut cmd, spec)?;
    cmd.args(medium_args(&spec.medium, spec.arch));
    cmd.args(&spec.qemu_args);
    let (mut child, _tracked) = tools::spawn_reading_stdout(cmd)?;
    let stdout = child.stdout.take().context("qemu's stdout")?;
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let result = watch(&rx, spec);
    let _ = child.kill();
    let _ = child.wait();
    result
}

/// Adds the firmware's arguments; returns the guest's copy of a variable store, if any.
fn firmware_args(
    cmd: &mut std::process::Command,
    spec: &BootSpec,
) -> Result<Option<tempfile::NamedTempFile>> {
    match &spec.firmware {
        None => Ok(None),
        Some(Firmware::Image(image)) => {
            cmd.arg("-bios").arg(image);
            Ok(None)
        }
        Some(Firmware::Flash { code, vars }) => {
            let copy = tempfile::NamedTempFile::new().context("a copy of the UEFI variables")?;
            fs_err::copy(vars, copy.path())?;
            if spec.arch == Arch::X86_64 {
                cmd.args(["-machine", "q35,smm=on"]);
                cmd.args(["-global", "driver=cfi.pflash01,property=secure,value=on"]);
            }
            for (unit, file, extra) in [(0, code.as_path(), ",readonly=on"), (1, copy.path(), "")] {
                let drive = format!(
                    "if=pflash,format=raw,unit={unit}{extra},file={}",
                    file.display()
                );
                cmd.arg("-drive").arg(drive);
            }
            Ok(Some(copy))
        }
    }
}

fn watch(rx: &mpsc::Receiver<String>, spec: &BootSpec) -> Result<BootOutcome> {
    let start = Instant::now();
    let mut serial = Vec::new();
    let mut tail = VecDeque::new();
    loop {
        let left = spec.timeout.saturating_sub(start.elapsed());
        match rx.recv_timeout(left) {
            Ok(line) => {
                let line = line.trim_end_matches('\r').to_string();
                tail.push_back(line.clone());
                if tail.len() > TAIL {
                    tail.pop_front();
                }
                serial.push(line.clone());
                if line.contains(&spec.marker) {
                    return Ok(BootOutcome {
                        marker: line.trim().to_string(),
                        elapsed: start.elapsed(),
                        serial,
                    });
                }
                if let Some(f) = spec.failures.iter().find(|f| line.contains(f.as_str())) {
                    let tail = Vec::from(tail).join("\n");
                    return Err(FailureLine {
                        failure: f.clone(),
                        tail,
                    }
                    .into());
                }
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {
                bail!(
                    "no `{}` on the serial console within {}s; last {} lines:\n{}",
                    spec.marker,
                    spec.timeout.as_secs(),
                    tail.len(),
                    Vec::from(tail).join("\n")
                )
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                bail!(
                    "QEMU exited before `{}` appeared; last {} lines:\n{}",
                    spec.marker,
                    tail.len(),
                    Vec::from(tail).join("\n")
                )
            }
        }
    }
}
