//! `boot-test stage1-*`: the whole chain from an iPXE file Kiln built to
//! stage2, served by Kiln's own HTTP server.

use std::process::ExitCode;

use anyhow::{bail, Context, Result};

use super::{
    esp_with, no_such_host, uefi_firmware, BootTest, BootTestArgs, Firmware, COMBINED_ROM, EFIROM,
};
use crate::arch::Arch;
use crate::cli::build::build_targets;
use crate::cli::Settings;
use crate::verify::boot::{self, BootSpec, Medium, BOOT_SERVER};
use crate::verify::http;

/// `stage1-lkrn`, `stage1-efi`, `stage1-rom`: the whole chain. Kiln serves
/// a build of stage1 and stage2 (made with `stage2_url` pointing at the
/// test server, in a temporary output directory so `output/` keeps the
/// operator's URLs) over HTTP; the guest runs iPXE, which does DHCP,
/// chains `stage1to2.ipxe` and boots `stage2_vmlinuz`. `--var
/// ipv4_address=…` (and netmask, gateway, dns1) makes stage1 use static
/// settings instead of DHCP.
pub fn boot_stage1(s: &Settings, a: &BootTestArgs) -> Result<ExitCode> {
    let work = tempfile::tempdir().context("creating a temporary directory")?;
    let mut t = s.clone();
    t.output_dir = work.path().join("output");
    t.vars
        .insert("stage2_url".into(), format!("http://{BOOT_SERVER}/stage2"));
    // OVMF, or AAVMF for an arm64 guest.
    let uefi = || uefi_firmware(s, a.arch, a.secure_boot).map(Some);
    let (file, firmware) = match (a.what, a.firmware) {
        (BootTest::Stage1Efi, _) => ("ipxe.efi", uefi()?),
        (BootTest::Stage1Rom, _) => ("1af41000.rom", None),
        (BootTest::Stage1Combined, Some(Firmware::Uefi)) => (COMBINED_ROM, uefi()?),
        (BootTest::Stage1Combined, _) => (COMBINED_ROM, None),
        (BootTest::Stage1Efirom, _) => (EFIROM, uefi()?),
        _ => ("ipxe.lkrn", None),
    };
    let stage1 = match &a.host {
        Some(host) => stage1_host_file(&t, host, file)?,
        None => crate::plan::ipxe_artifact("stage1", a.arch, file),
    };
    // stage2's stage1to2.ipxe sends an arm64 guest on to the arm64 one.
    let mut targets = vec!["stage2/stage1to2.ipxe".to_string(), stage1.clone()];
    match a.arch {
        Arch::X86_64 => targets.push("stage2/stage2_vmlinuz".into()),
        Arch::Arm64 => targets.extend([
            "stage2/arm64/stage1to2.ipxe".into(),
            "stage2/arm64/stage2_vmlinuz".into(),
        ]),
    }
    build_targets(&t, &targets)?;
    if let Some(name) = &a.tamper {
        tamper(&t.output_dir, name, &targets)?;
    }
    let server = http::serve(&t.output_dir)?;
    let binary = t.output_dir.join(&stage1);
    let (medium, romfile) = match file {
        "ipxe.lkrn" => (
            Medium::Kernel {
                kernel: binary,
                initrd: None,
                append: String::new(),
            },
            None,
        ),
        "ipxe.efi" => (Medium::Disk(esp_with(&binary, a.arch, work.path())?), None),
        _ => (Medium::Network, Some(binary.as_path())),
    };
    let mut spec = BootSpec::media(medium, firmware, a.arch, a.timeout);
    let relay = std::env::current_exe().context("locating the xtask binary")?;
    spec.qemu_args = boot::chain_nic(server.port, &relay, romfile);
    let outcome = boot::boot(&spec);
    let served = server.log.lock().map(|l| l.join(", ")).unwrap_or_default();
    if let Some(name) = &a.tamper {
        return match outcome {
            Ok(o) => bail!(
                "the tampered {name} booted (`{}` after {:.1}s): nothing in the chain checks its signature; served [{served}]",
                o.marker,
                o.elapsed.as_secs_f64()
            ),
            Err(e) => match e.downcast_ref::<boot::FailureLine>() {
                Some(refused) => {
                    let line = refused.tail.lines().last().unwrap_or_default().trim();
                    println!(
                        "boot test passed: the guest refused the tampered {name} (`{line}`); served [{served}]"
                    );
                    Ok(ExitCode::SUCCESS)
                }
                None => Err(e.context(format!("HTTP requests served: [{served}]"))),
            },
        };
    }
    let outcome = outcome.with_context(|| format!("HTTP requests served: [{served}]"))?;
    let guest = boot::guest_cmdline(&outcome.serial).unwrap_or_default();
    let said: Vec<&str> = outcome
        .serial
        .iter()
        .filter_map(|l| l.find("Kiln stage1:").map(|i| l[i..].trim()))
        .collect();
    let chain = match a.arch {
        Arch::X86_64 => "stage1to2.ipxe -> stage2_vmlinuz",
        Arch::Arm64 => "stage1to2.ipxe -> arm64/stage1to2.ipxe -> arm64/stage2_vmlinuz",
    };
    println!(
        "boot test passed in {:.1}s: {stage1} -> network -> {chain}; saw `{}`; stage1 said `{}`; served [{served}]; guest cmdline `{guest}`",
        outcome.elapsed.as_secs_f64(),
        outcome.marker,
        said.join(" | ")
    );
    Ok(ExitCode::SUCCESS)
}

/// Where the stage1 recipe puts `host`'s `file` (its layout, or
/// `stage1/hosts/<host>/<file>`).
fn stage1_host_file(s: &Settings, host: &str, file: &str) -> Result<String> {
    let recipes = s.recipes()?;
    let ipxe = recipes.ipxe("stage1")?;
    let Some(h) = ipxe.hosts.iter().find(|h| h.hostname == host) else {
        let names = ipxe.hosts.iter().map(|h| h.hostname.as_str());
        bail!(no_such_host("stage1", host, names));
    };
    Ok(h.artifact_name("stage1", file))
}

/// Changes one byte in the middle of the built `name`, one of the `served` files.
fn tamper(output: &std::path::Path, name: &str, served: &[String]) -> Result<()> {
    if !served.iter().any(|t| t == name) {
        bail!(
            "--tamper {name}: not a file this test serves ({})",
            served.join(", ")
        );
    }
    let path = output.join(name);
    let mut bytes = fs_err::read(&path)?;
    let middle = bytes.len() / 2;
    let byte = bytes
        .get_mut(middle)
        .with_context(|| format!("--tamper {name}: the file is empty"))?;
    *byte ^= 0x01;
    fs_err::write(&path, bytes)?;
    Ok(())
}
