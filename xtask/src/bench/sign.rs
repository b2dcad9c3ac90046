//! `bench sign`: Authenticode signatures for a fleet's EFI files, Kiln's in-process signer
//! against `sbsign` (sbsigntool, what an operator would otherwise run per file), both two at a
//! time. Each host's file is the given EFI image with a section naming the host (so no two
//! are alike, as per-host iPXE files are not); both sign with the same fresh RSA-2048 key, and
//! the first and last file either writes must pass `sbverify`.

use std::path::Path;
use std::time::Instant;

use anyhow::{ensure, Context, Result};

use crate::archive::pe;
use crate::sign::{pkcs7, KeySpec, SigningKey};
use crate::tools;

/// Kiln's and sbsign's seconds for `hosts` files made from `efi`, as a markdown table.
pub fn sign(efi: &Path, hosts: usize, work: &Path) -> Result<String> {
    let image = fs_err::read(efi)?;
    let (key, cert) = (work.join("bench.key"), work.join("bench.pem"));
    let openssl = tools::command("openssl")?
        .args([
            "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "30",
        ])
        .args(["-subj", "/CN=kiln bench"])
        .arg("-keyout")
        .arg(&key)
        .arg("-out")
        .arg(&cert)
        .output()
        .context("running openssl req")?;
    ensure!(openssl.status.success(), "openssl req failed");
    let (unsigned, by_kiln, by_sbsign) = (work.join("in"), work.join("kiln"), work.join("sbsign"));
    for dir in [&unsigned, &by_kiln, &by_sbsign] {
        fs_err::create_dir_all(dir)?;
    }
    let names: Vec<String> = (0..hosts).map(|i| format!("host{i:04}.efi")).collect();
    for name in &names {
        let host = pe::append_sections(&image, &[(".host", name.as_bytes())])?;
        fs_err::write(unsigned.join(name), host)?;
    }
    let spec = KeySpec {
        key: key.clone(),
        cert: cert.clone(),
        passphrase: None,
    };

    let start = Instant::now();
    let signer = SigningKey::load(&spec)?;
    let halves: Vec<&[String]> = names.chunks(names.len().div_ceil(2).max(1)).collect();
    std::thread::scope(|s| -> Result<()> {
        let jobs: Vec<_> = halves
            .iter()
            .map(|part| {
                let (unsigned, by_kiln, signer) = (&unsigned, &by_kiln, &signer);
                s.spawn(move || -> Result<()> {
                    for name in part.iter() {
                        let signed = pkcs7::sign_pe(signer, &fs_err::read(unsigned.join(name))?)?;
                        fs_err::write(by_kiln.join(name), signed)?;
                    }
                    Ok(())
                })
            })
            .collect();
        for job in jobs {
            job.join().expect("a signing thread panicked")?;
        }
        Ok(())
    })?;
    let kiln = start.elapsed().as_secs_f64();

    let start = Instant::now();
    let script = format!(
        "cd '{}' && ls | xargs -P2 -I{{}} sbsign --key '{}' --cert '{}' --output '{}/{{}}' {{}} 2>/dev/null",
        unsigned.display(),
        key.display(),
        cert.display(),
        by_sbsign.display()
    );
    let status = tools::command("sh")?
        .arg("-c")
        .arg(&script)
        .status()
        .context("running sbsign (apt-get install sbsigntool)")?;
    ensure!(status.success(), "{script} failed: {status}");
    let sbsign = start.elapsed().as_secs_f64();

    for name in [&names[0], &names[hosts - 1]] {
        for dir in [&by_kiln, &by_sbsign] {
            verify(&cert, &dir.join(name))?;
        }
    }
    let bytes = image.len() as f64 / 1e6;
    Ok(format!(
        "{hosts} hosts, one {bytes:.2} MB EFI file each ({}), two at a time\n\n\
         | signer | seconds | files/s | time / Kiln |\n|---|---:|---:|---:|\n\
         | Kiln (in process) | {kiln:.2} | {:.0} | 1.00 |\n\
         | sbsign (a process per file) | {sbsign:.2} | {:.0} | {:.2} |\n",
        efi.display(),
        hosts as f64 / kiln,
        hosts as f64 / sbsign,
        sbsign / kiln
    ))
}

fn verify(cert: &Path, file: &Path) -> Result<()> {
    let out = tools::command("sbverify")?
        .arg("--cert")
        .arg(cert)
        .arg(file)
        .output()
        .context("running sbverify")?;
    ensure!(
        out.status.success(),
        "sbverify refuses {}: {}",
        file.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}
