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

use crate::tools;

/// The line stage2's /init prints once it is up (overlays/stage2/init).
pub const STAGE2_MARKER: &str = "KILN-STAGE2-READY";

/// Serial lines shown when a boot fails.
const TAIL: usize = 40;

pub struct BootSpec {
    pub kernel: PathBuf,
    pub initrd: Option<PathBuf>,
    pub append: String,
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
    pub fn stage2(kernel: &Path, initrd: &Path, timeout_secs: u64) -> BootSpec {
        BootSpec {
            kernel: kernel.to_path_buf(),
            initrd: Some(initrd.to_path_buf()),
            append: "console=ttyS0 panic=-1 kiln.test=poweroff".into(),
            marker: STAGE2_MARKER.into(),
            failures: Vec::new(),
            qemu_args: Vec::new(),
            timeout: Duration::from_secs(timeout_secs),
            memory_mb: 512,
        }
    }

    /// A kernel with its initramfs compiled in (no -initrd), with a
    /// virtio-net and an e1000 card whose drivers it must have built in.
    pub fn kernel(kernel: &Path, timeout_secs: u64) -> BootSpec {
        BootSpec {
            initrd: None,
            qemu_args: [
                "-netdev",
                "user,id=n0",
                "-device",
                "virtio-net-pci,netdev=n0",
                "-netdev",
                "user,id=n1",
                "-device",
                "e1000,netdev=n1",
            ]
            .map(String::from)
            .to_vec(),
            ..BootSpec::stage2(kernel, Path::new(""), timeout_secs)
        }
    }

    /// Stage2 with a module archive appended as a second initrd (`initrd`
    /// is the concatenation): the guest loads `modules` with modprobe and
    /// must report a network interface it did not have before.
    pub fn modules(kernel: &Path, initrd: &Path, modules: &[&str], timeout_secs: u64) -> BootSpec {
        let mut spec = BootSpec::stage2(kernel, initrd, timeout_secs);
        spec.append = format!(
            "console=ttyS0 panic=-1 kiln.modprobe={} kiln.test=poweroff",
            modules.join(",")
        );
        spec.marker = "KILN-MODPROBE-NEW-INTERFACES".into();
        spec.failures = vec![
            "KILN-MODPROBE-NO-NEW-INTERFACE".into(),
            "KILN-MODPROBE-FAILED".into(),
        ];
        spec.qemu_args = [
            "-netdev",
            "user,id=n0",
            "-device",
            "virtio-net-pci,netdev=n0",
        ]
        .map(String::from)
        .to_vec();
        spec
    }
}

/// The interfaces stage2's /init listed (`KILN-NET-INTERFACES: lo eth0 …`).
pub fn interfaces(serial: &[String]) -> Vec<&str> {
    serial
        .iter()
        .find_map(|l| l.split_once("KILN-NET-INTERFACES:"))
        .map(|(_, rest)| rest.split_whitespace().collect())
        .unwrap_or_default()
}

pub struct BootOutcome {
    /// The whole serial line that carried the marker.
    pub marker: String,
    pub elapsed: Duration,
    pub serial: Vec<String>,
}

pub fn boot(spec: &BootSpec) -> Result<BootOutcome> {
    let accel = std::env::var("KILN_QEMU_ACCEL").unwrap_or_else(|_| "tcg".into());
    let mut cmd = tools::command("qemu-system-x86_64")?;
    cmd.args([
        "-accel",
        &accel,
        "-m",
        &spec.memory_mb.to_string(),
        "-nographic",
        "-no-reboot",
        "-nodefaults",
    ]);
    cmd.args(["-serial", "stdio", "-kernel"]).arg(&spec.kernel);
    if let Some(initrd) = &spec.initrd {
        cmd.arg("-initrd").arg(initrd);
    }
    cmd.args(["-append", &spec.append]);
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
                    bail!(
                        "the guest reported `{f}`; last {} lines:\n{}",
                        tail.len(),
                        Vec::from(tail).join("\n")
                    );
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
