//! Signing with the operator's key (`--sign-key`, `--sign-cert`): Authenticode on the EFI
//! files a recipe's `[signing]` names, checked by `sbverify` and by OVMF with Secure Boot
//! enforcing (Debian's snakeoil key is enrolled in its `OVMF_VARS_4M.snakeoil.fd`); bad keys
//! refused before anything is built.

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::OnceLock;

use kiln::archive::{authenticode, fat};

use crate::common::*;

/// Debian's snakeoil key pair and Secure Boot firmware, from the pinned `ovmf` deb.
struct Snakeoil {
    key: PathBuf,
    cert: PathBuf,
    code: PathBuf,
    vars: PathBuf,
}

/// The key's passphrase, as Debian documents it.
const PASSPHRASE: &str = "snakeoil";

fn snakeoil() -> &'static Snakeoil {
    static UNPACKED: OnceLock<Snakeoil> = OnceLock::new();
    UNPACKED.get_or_init(|| {
        let root = Path::new(env!("CARGO_TARGET_TMPDIR")).join("ovmf-unpacked");
        let marker = root.with_extension("ok");
        if !marker.exists() {
            let _ = std::fs::remove_dir_all(&root);
            unpack_deb_source("ovmf", &root).expect("unpacking the ovmf deb through Kiln");
            std::fs::write(&marker, "").unwrap();
        }
        Snakeoil {
            key: root.join("usr/share/ovmf/PkKek-1-snakeoil.key"),
            cert: root.join("usr/share/ovmf/PkKek-1-snakeoil.pem"),
            code: root.join("usr/share/OVMF/OVMF_CODE_4M.secboot.fd"),
            vars: root.join("usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd"),
        }
    })
}

/// The snakeoil key given to `cmd` as an operator would: paths as flags, the
/// passphrase in the environment.
fn sign_with_snakeoil(cmd: &mut Command) {
    let keys = snakeoil();
    cmd.arg("--sign-key")
        .arg(&keys.key)
        .arg("--sign-cert")
        .arg(&keys.cert);
    cmd.env("KILN_SIGN_PASSPHRASE", PASSPHRASE);
}

fn sbverify(cert: &Path, file: &Path) {
    let out = Command::new("sbverify")
        .arg("--cert")
        .arg(cert)
        .arg(file)
        .output()
        .expect("running sbverify (apt-get install sbsigntool)");
    assert!(
        out.status.success(),
        "sbverify refuses {}: {}{}",
        file.display(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The UKI on an ISO's ESP.
fn esp_uki(iso: &Path, work: &Path) -> Vec<u8> {
    let esp = iso_file(iso, "boot/efiboot.img", work);
    let (_, files) = fat::read_image(&esp).unwrap();
    let uki = files.into_iter().find(|f| f.path == "EFI/BOOT/BOOTX64.EFI");
    uki.expect("the ESP has EFI/BOOT/BOOTX64.EFI").data
}

fn certificate_sha256(cert: &Path) -> String {
    let der = Command::new("openssl")
        .args(["x509", "-outform", "DER", "-in"])
        .arg(cert)
        .output()
        .unwrap();
    assert!(der.status.success());
    kiln::store::Digest::of_bytes(&der.stdout).hex()
}

#[test]
fn signed_efi_files_pass_sbverify_and_strip_to_the_unsigned_build() {
    if !prereq::program("sbverify", "apt-get install sbsigntool, or run ci/setup") {
        return;
    }
    let keys = snakeoil();
    let dir = tempfile::tempdir().unwrap();
    let (signed, unsigned) = (dir.path().join("signed"), dir.path().join("unsigned"));
    let recipes = workspace().join("recipes");
    let mut build = kiln(&recipes, &signed, &shared_cache());
    sign_with_snakeoil(&mut build);
    let out = run_ok(build.args(["build", "stage2"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!stderr.contains("no signing key"), "{stderr}");
    let host_iso = signed.join("stage2/hosts/mlab1-lga0t.example.net/stage2.iso");
    let work = dir.path().join("work");
    std::fs::create_dir(&work).unwrap();
    let host_uki = work.join("host.efi");
    std::fs::write(&host_uki, esp_uki(&host_iso, &work)).unwrap();
    let iso_uki = work.join("iso.efi");
    std::fs::write(&iso_uki, esp_uki(&signed.join("stage2/stage2.iso"), &work)).unwrap();
    for file in [
        signed.join("stage2/stage2.efi"),
        signed.join("stage2/stage2_vmlinuz"),
        iso_uki.clone(),
        host_uki,
    ] {
        sbverify(&keys.cert, &file);
    }
    // The ISO's ESP carries the signed UKI itself.
    assert_eq!(
        std::fs::read(&iso_uki).unwrap(),
        std::fs::read(signed.join("stage2/stage2.efi")).unwrap()
    );
    // The manifest names the certificate, not the key.
    let fingerprint = certificate_sha256(&keys.cert);
    for name in ["stage2/stage2.efi", "stage2/stage2_vmlinuz"] {
        let entry = manifest_entry(&signed, name);
        let signature = &entry["details"]["signature"];
        assert_eq!(signature["format"], "authenticode", "{entry}");
        assert_eq!(
            signature["certificate_sha256"],
            fingerprint.as_str(),
            "{entry}"
        );
    }
    let host = manifest_entry(&signed, "stage2/hosts/mlab1-lga0t.example.net/stage2.iso");
    assert_eq!(
        host["details"]["esp"]["signature"]["certificate_sha256"],
        fingerprint.as_str()
    );
    // Nothing of the key or its passphrase is written anywhere under output/.
    for file in files(&signed) {
        let bytes = std::fs::read(signed.join(&file)).unwrap();
        assert!(
            !contains_bytes(&bytes, PASSPHRASE.as_bytes()),
            "{file} holds the passphrase"
        );
    }
    // Without a key the same build is unsigned, says so, and differs only by the signature.
    let out = run_ok(kiln(&recipes, &unsigned, &shared_cache()).args(["build", "stage2"]));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("no signing key given"), "{stderr}");
    for name in ["stage2/stage2.efi", "stage2/stage2_vmlinuz"] {
        let plain = std::fs::read(unsigned.join(name)).unwrap();
        assert!(
            authenticode::signatures(&plain).unwrap().is_empty(),
            "{name}"
        );
        let with = std::fs::read(signed.join(name)).unwrap();
        assert_eq!(authenticode::signatures(&with).unwrap().len(), 1, "{name}");
        let stripped = authenticode::strip(&with).unwrap().expect("signed");
        assert_eq!(stripped, authenticode::prepare(&plain).unwrap(), "{name}");
    }
    assert!(manifest_entry(&unsigned, "stage2/stage2.efi")["details"]["signature"].is_null());

    // `repro --compare` of the signed release with the unsigned rebuild: the
    // same but for the signatures, down to the UKI on each ISO's ESP.
    let out = kiln(&recipes, &dir.path().join("unused"), &shared_cache())
        .args(["repro", "--compare"])
        .args([&signed, &unsigned])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    for name in [
        "stage2/stage2.efi",
        "stage2/stage2_vmlinuz",
        "stage2/stage2.iso",
    ] {
        let row = text
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_default();
        assert!(row.ends_with("identical but for signatures"), "{text}");
    }
    assert!(
        text.contains("FAT file EFI/BOOT/BOOTX64.EFI: identical but for the Authenticode signatures (run 1: 1, run 2: 0"),
        "{text}"
    );
    assert!(
        text.contains("once their Authenticode signatures are stripped"),
        "{text}"
    );
}

#[test]
fn secure_boot_runs_the_signed_uki_and_iso_and_refuses_unsigned_and_tampered_ones() {
    if !qemu_available() {
        return;
    }
    let keys = snakeoil();
    for what in ["stage2-uki", "stage2-iso"] {
        let out = boot_test_output(&[what, "--secure-boot"], &[], sign_with_snakeoil);
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{what}: {}", stderr(&out));
        assert!(stdout.contains("(OVMF, Secure Boot)"), "{stdout}");
    }

    // The same UKI unsigned: the firmware refuses it.
    let out = boot_test_output(&["stage2-uki", "--secure-boot"], &[], |_| {});
    assert!(
        !out.status.success() && stderr(&out).contains("Access Denied"),
        "{}",
        stderr(&out)
    );

    // A signed UKI with one byte of its command line changed: refused too.
    let dir = tempfile::tempdir().unwrap();
    let recipes = workspace().join("recipes");
    let output = dir.path().join("output");
    let mut build = kiln(&recipes, &output, &shared_cache());
    sign_with_snakeoil(&mut build);
    run_ok(build.args(["build", "stage2/stage2.efi"]));
    let mut uki = std::fs::read(output.join("stage2/stage2.efi")).unwrap();
    let at = uki
        .windows(8)
        .position(|w| w == b"panic=-1")
        .expect("the cmdline");
    uki[at + 7] = b'2';
    let esp = kiln::steps::iso::esp_image(uki, kiln::arch::Arch::X86_64, 0).unwrap();
    let disk = dir.path().join("tampered.img");
    std::fs::write(&disk, esp).unwrap();
    let firmware = kiln::verify::boot::Firmware::Flash {
        code: keys.code.clone(),
        vars: keys.vars.clone(),
    };
    let medium = kiln::verify::boot::Medium::Disk(disk);
    let spec =
        kiln::verify::boot::BootSpec::media(medium, Some(firmware), kiln::arch::Arch::X86_64, 240);
    let refused = {
        let _guest = one_guest_at_a_time();
        kiln::verify::boot::boot(&spec).map(|o| o.marker)
    };
    let why = format!("{:#}", refused.expect_err("a tampered UKI must not boot"));
    assert!(why.contains("Access Denied"), "{why}");
}

#[test]
fn bad_keys_are_refused_before_anything_is_built() {
    let keys = snakeoil();
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let openssl = |args: &[&str]| {
        run_ok(Command::new("openssl").current_dir(d).args(args));
    };
    // Another key with its own certificate; and a certificate that expired.
    openssl(&[
        "genpkey",
        "-algorithm",
        "RSA",
        "-pkeyopt",
        "rsa_keygen_bits:2048",
        "-out",
        "other.key",
    ]);
    openssl(&[
        "req",
        "-x509",
        "-new",
        "-key",
        "other.key",
        "-subj",
        "/CN=other",
        "-days",
        "30",
        "-out",
        "other.pem",
    ]);
    std::fs::write(
        d.join("ca.cnf"),
        "[ca]\ndefault_ca=d\n[d]\ndatabase=index.txt\nnew_certs_dir=.\nserial=serial\n\
         default_md=sha256\npolicy=p\n[p]\ncommonName=supplied\n",
    )
    .unwrap();
    std::fs::write(d.join("index.txt"), "").unwrap();
    std::fs::write(d.join("serial"), "01\n").unwrap();
    openssl(&[
        "req",
        "-new",
        "-key",
        "other.key",
        "-subj",
        "/CN=expired",
        "-out",
        "expired.csr",
    ]);
    openssl(&[
        "ca",
        "-batch",
        "-config",
        "ca.cnf",
        "-selfsign",
        "-keyfile",
        "other.key",
        "-in",
        "expired.csr",
        "-startdate",
        "20200101000000Z",
        "-enddate",
        "20200201000000Z",
        "-out",
        "expired.pem",
    ]);
    openssl(&[
        "genrsa",
        "-traditional",
        "-aes128",
        "-passout",
        "pass:legacy",
        "-out",
        "legacy.key",
        "2048",
    ]);
    let recipes = workspace().join("recipes");
    let cases: [(&Path, &Path, Option<&str>, &str); 6] = [
        (
            &keys.key,
            &d.join("other.pem"),
            Some(PASSPHRASE),
            "does not belong to the certificate",
        ),
        (
            &d.join("other.key"),
            &d.join("expired.pem"),
            None,
            "expired on 2020-02-01",
        ),
        (
            &keys.key,
            &keys.cert,
            Some("not-the-passphrase"),
            "wrong passphrase",
        ),
        (&keys.key, &keys.cert, None, "KILN_SIGN_PASSPHRASE"),
        (&keys.cert, &keys.cert, None, "not a private key"),
        (
            &d.join("legacy.key"),
            &keys.cert,
            Some("legacy"),
            "openssl pkcs8 -topk8",
        ),
    ];
    for (key, cert, passphrase, expected) in cases {
        let output = d.join("output");
        let mut cmd = kiln(&recipes, &output, &d.join("cache"));
        cmd.arg("--sign-key").arg(key).arg("--sign-cert").arg(cert);
        cmd.env_remove("KILN_SIGN_PASSPHRASE");
        if let Some(p) = passphrase {
            cmd.env("KILN_SIGN_PASSPHRASE", p);
        }
        let err = run_err(cmd.args(["build", "stage2"]));
        assert!(err.contains(expected), "{expected}: {err}");
        assert!(!err.contains("not-the-passphrase"), "{err}");
        assert!(
            !output.exists() && !d.join("cache").exists(),
            "{expected}: something was written"
        );
    }
    // A key without its certificate is a usage error, as is --require-signing without a key.
    let err = run_err(
        kiln(&recipes, &d.join("output"), &d.join("cache"))
            .arg("--sign-key")
            .arg(&keys.key)
            .args(["plan", "stage2"]),
    );
    assert!(err.contains("--sign-cert"), "{err}");
    let err = run_err(kiln(&recipes, &d.join("output"), &shared_cache()).args([
        "--require-signing",
        "plan",
        "stage2",
    ]));
    assert!(
        err.contains("--require-signing") && err.contains("stage2.toml"),
        "{err}"
    );
}

#[test]
fn a_signed_ipxe_efi_chains_to_the_signed_kernel_under_secure_boot() {
    let Some(tree) = ipxe_tree() else {
        return;
    };
    if !qemu_available()
        || !prereq::program("sbverify", "apt-get install sbsigntool, or run ci/setup")
    {
        return;
    }
    let keys = snakeoil();
    let source = format!("ipxe={}", tree.display());
    // Every EFI image of stage1, the recipe's and each host's, is signed.
    let dir = tempfile::tempdir().unwrap();
    let output = dir.path().join("output");
    let mut build = kiln(&workspace().join("recipes"), &output, &shared_cache());
    sign_with_snakeoil(&mut build);
    run_ok(build.args(["--source", &source, "build", "stage1", "stage3"]));
    // stage3's kernel and UKI, which carry stage1's ROMs, are signed as stage2's are.
    for file in ["stage3/stage3_update_vmlinuz", "stage3/stage3_update.efi"] {
        sbverify(&keys.cert, &output.join(file));
    }
    let efi: Vec<String> = files(&output)
        .into_iter()
        .filter(|f| f.starts_with("stage1/") && f.ends_with(".efi"))
        .collect();
    // x86_64 and arm64 ipxe.efi and snponly.efi, and each of two hosts' pair.
    assert_eq!(efi.len(), 2 + 2 + 2 * 2, "{efi:?}");
    for file in &efi {
        sbverify(&keys.cert, &output.join(file));
        assert!(
            manifest_entry(&output, file)["details"]["signature"]["certificate_sha256"].is_string(),
            "{file}"
        );
    }
    // OVMF with Secure Boot runs the signed ipxe.efi, which chains to
    // stage1to2.ipxe and the signed stage2 kernel (firmware checks both).
    let out = boot_test_output(&["stage1-efi", "--secure-boot"], &[], |cmd| {
        sign_with_snakeoil(cmd);
        cmd.args(["--source", &source]);
    });
    assert!(out.status.success(), "{}", stderr(&out));
    crate::stage1::assert_chained(&String::from_utf8_lossy(&out.stdout), "ipxe.efi");
}

#[test]
fn an_arm64_uki_boots_under_aavmf_with_secure_boot_only_when_signed() {
    if !qemu_arm64_available() {
        return;
    }
    let args = ["stage2-uki", "--arch", "arm64", "--secure-boot"];
    let out = boot_test_output(&args, &[], sign_with_snakeoil);
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{}", stderr(&out));
    assert!(stdout.contains("(AAVMF, Secure Boot)"), "{stdout}");
    let out = boot_test_output(&args, &[], |_| {});
    assert!(
        !out.status.success() && stderr(&out).contains("Access Denied"),
        "{}",
        stderr(&out)
    );
}

#[test]
fn an_arm64_ipxe_efi_chains_under_aavmf_with_secure_boot_only_when_signed() {
    let Some(tree) = ipxe_tree() else {
        return;
    };
    if !qemu_arm64_available() {
        return;
    }
    let source = format!("ipxe={}", tree.display());
    let args = ["stage1-efi", "--arch", "arm64", "--secure-boot"];
    let out = boot_test_output(&args, &[], |cmd| {
        sign_with_snakeoil(cmd);
        cmd.args(["--source", &source]);
    });
    assert!(out.status.success(), "{}", stderr(&out));
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        stdout.contains("arm64/stage1to2.ipxe -> arm64/stage2_vmlinuz")
            && stdout.contains("KILN-STAGE2-READY"),
        "{stdout}"
    );
    let out = boot_test_output(&args, &[], |cmd| {
        cmd.args(["--source", &source]);
    });
    assert!(
        !out.status.success() && stderr(&out).contains("Access Denied"),
        "{}",
        stderr(&out)
    );
}

/// An operator's PKI for iPXE's code signing, made with openssl: a CA, and a key with a
/// certificate the CA issued for code signing. Returns (key, certificate + CA chain, CA).
fn code_signing_pki(d: &Path) -> (PathBuf, PathBuf, PathBuf) {
    let openssl = |args: &[&str]| {
        run_ok(Command::new("openssl").current_dir(d).args(args));
    };
    openssl(&[
        "req",
        "-x509",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "ca.key",
        "-out",
        "ca.pem",
        "-days",
        "30",
        "-subj",
        "/CN=Kiln test CA",
        "-addext",
        "basicConstraints=critical,CA:TRUE",
        "-addext",
        "keyUsage=critical,keyCertSign",
    ]);
    openssl(&[
        "req",
        "-newkey",
        "rsa:2048",
        "-nodes",
        "-keyout",
        "sign.key",
        "-out",
        "sign.csr",
        "-subj",
        "/CN=Kiln test code signing",
    ]);
    std::fs::write(
        d.join("sign.cnf"),
        "[ext]\nbasicConstraints = CA:FALSE\nkeyUsage = critical, digitalSignature\n\
         extendedKeyUsage = codeSigning\n",
    )
    .unwrap();
    openssl(&[
        "x509",
        "-req",
        "-in",
        "sign.csr",
        "-CA",
        "ca.pem",
        "-CAkey",
        "ca.key",
        "-set_serial",
        "2",
        "-days",
        "30",
        "-extfile",
        "sign.cnf",
        "-extensions",
        "ext",
        "-out",
        "sign.pem",
    ]);
    let chain = [
        std::fs::read(d.join("sign.pem")).unwrap(),
        std::fs::read(d.join("ca.pem")).unwrap(),
    ]
    .concat();
    std::fs::write(d.join("chain.pem"), chain).unwrap();
    (d.join("sign.key"), d.join("chain.pem"), d.join("ca.pem"))
}

/// A copy of the default recipes under `dir` whose stage1 verifies what it chains and whose
/// stage2 publishes signatures of its kernel and chain script.
fn imgverify_recipes(dir: &Path) -> PathBuf {
    let recipes = copy_recipes(dir);
    edit(
        &recipes.join("stage1.toml"),
        "[signing]\nuefi = [\"ipxe\"]",
        "[signing]\nuefi = [\"ipxe\"]\nimgverify = [\"ipxe\"]",
    );
    edit(
        &recipes.join("stage2.toml"),
        "[signing]\nuefi = [\"uki\", \"kernel\"]",
        "[signing]\nuefi = [\"uki\", \"kernel\"]\nimgverify = [\"kernel\", \"script\"]",
    );
    recipes
}

#[test]
fn a_certificate_without_code_signing_cannot_sign_for_imgverify() {
    let dir = tempfile::tempdir().unwrap();
    let recipes = imgverify_recipes(dir.path());
    let output = dir.path().join("output");
    let mut cmd = kiln(&recipes, &output, &dir.path().join("cache"));
    sign_with_snakeoil(&mut cmd);
    let err = run_err(cmd.args(["build", "stage2"]));
    assert!(
        err.contains("stage2.toml: [signing] imgverify")
            && err.contains("PkKek-1-snakeoil.pem")
            && err.contains("codeSigning extended key usage"),
        "{err}"
    );
    assert!(!output.exists(), "something was written to the output");
}

#[test]
fn ipxe_imgverify_boots_signed_stage2_and_refuses_tampered_files() {
    let Some(tree) = ipxe_tree() else {
        return;
    };
    if !qemu_available() {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = d.join("pki");
    std::fs::create_dir(&pki).unwrap();
    let (key, chain, ca) = code_signing_pki(&pki);
    let recipes = imgverify_recipes(d);
    let source = format!("ipxe={}", tree.display());
    let kiln_signed = |output: &Path| {
        let mut cmd = kiln(&recipes, output, &shared_cache());
        cmd.arg("--sign-key")
            .arg(&key)
            .arg("--sign-cert")
            .arg(&chain);
        cmd.args(["--source", &source]);
        cmd
    };
    // The detached signatures are CMS that openssl verifies against the CA, and the manifest
    // names them and the certificate.
    let output = d.join("output");
    let signed = ["stage2/stage2_vmlinuz", "stage2/stage1to2.ipxe"];
    run_ok(kiln_signed(&output).arg("build").args(signed));
    for file in signed {
        let sig = format!("{file}.sig");
        let out = Command::new("openssl")
            .args([
                "cms", "-verify", "-binary", "-inform", "DER", "-purpose", "any",
            ])
            .arg("-in")
            .arg(output.join(&sig))
            .arg("-content")
            .arg(output.join(file))
            .arg("-CAfile")
            .arg(&ca)
            .args(["-out", "/dev/null"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "openssl cms refuses {sig}: {}",
            stderr(&out)
        );
        let details = &manifest_entry(&output, &sig)["details"]["signature"];
        assert_eq!(details["format"], "cms", "{sig}");
        assert_eq!(details["of"], file, "{sig}");
        assert_eq!(
            details["certificate_sha256"],
            certificate_sha256(&key_cert(&pki))
        );
    }
    // stage1 trusts the CA and runs only what it signed: the chain boots with both
    // signatures checked, and a changed kernel or chain script is refused by iPXE.
    let _one_at_a_time = one_guest_at_a_time();
    let boot = |extra: &[&str]| {
        let out = kiln_signed(&d.join("boot-output"))
            .args(["boot-test", "stage1-lkrn", "--timeout", "400"])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "boot-test {extra:?}: {}",
            stderr(&out)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let passed = boot(&[]);
    assert!(
        passed.contains("image signatures required")
            && passed.contains("GET /stage2/stage1to2.ipxe.sig 200")
            && passed.contains("GET /stage2/stage2_vmlinuz.sig 200")
            && passed.contains("KILN-STAGE2-READY"),
        "{passed}"
    );
    for file in signed {
        let refused = boot(&["--tamper", file]);
        assert!(
            refused.contains(&format!("refused the tampered {file}"))
                && refused.contains("Could not verify"),
            "{refused}"
        );
    }
}

/// The signer's own certificate of [`code_signing_pki`] (the first of its chain).
fn key_cert(pki: &Path) -> PathBuf {
    pki.join("sign.pem")
}

/// SoftHSM's PKCS#11 module, as Debian's softhsm2 package installs it.
const SOFTHSM_MODULE: &str = "/usr/lib/softhsm/libsofthsm2.so";

#[test]
fn a_key_in_a_pkcs11_token_signs_what_its_pem_copy_signs() {
    if !prereq::program("softhsm2-util", "apt-get install softhsm2, or run ci/setup")
        || !prereq::program("sbverify", "apt-get install sbsigntool, or run ci/setup")
    {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let pki = d.join("pki");
    std::fs::create_dir(&pki).unwrap();
    let (key, chain, ca) = code_signing_pki(&pki);
    // A SoftHSM token of its own (SOFTHSM2_CONF points at its directory) holding the key.
    let tokens = d.join("tokens");
    std::fs::create_dir(&tokens).unwrap();
    let conf = d.join("softhsm2.conf");
    std::fs::write(
        &conf,
        format!(
            "directories.tokendir = {}\nobjectstore.backend = file\n",
            tokens.display()
        ),
    )
    .unwrap();
    let softhsm = |args: &[&str]| {
        run_ok(
            Command::new("softhsm2-util")
                .env("SOFTHSM2_CONF", &conf)
                .args(args),
        );
    };
    softhsm(&[
        "--init-token",
        "--free",
        "--label",
        "kiln",
        "--pin",
        "1234",
        "--so-pin",
        "5678",
    ]);
    run_ok(Command::new("openssl").current_dir(&pki).args([
        "pkcs8", "-topk8", "-nocrypt", "-in", "sign.key", "-out", "sign.p8",
    ]));
    let p8 = pki.join("sign.p8");
    let p8 = p8.to_str().unwrap();
    softhsm(&[
        "--import", p8, "--token", "kiln", "--label", "sign", "--id", "01", "--pin", "1234",
    ]);
    let recipes = imgverify_recipes(d);
    let uri =
        |token: &str| format!("pkcs11:token={token};object=sign?module-path={SOFTHSM_MODULE}");
    let with_token = |output: &Path, cache: &Path, token: &str, pin: &str| {
        let mut cmd = kiln(&recipes, output, cache);
        cmd.env("SOFTHSM2_CONF", &conf)
            .env("KILN_SIGN_PASSPHRASE", pin)
            .arg("--sign-key")
            .arg(uri(token))
            .arg("--sign-cert")
            .arg(&chain);
        cmd
    };
    // The token signs the UKI (sbverify accepts it against the CA) and the chain script's
    // detached signature; the certificate is new to the cache, so the token does sign.
    let output = d.join("output");
    run_ok(with_token(&output, &shared_cache(), "kiln", "1234").args([
        "build",
        "stage2/stage2.efi",
        "stage2/stage1to2.ipxe",
    ]));
    sbverify(&ca, &output.join("stage2/stage2.efi"));
    // RSA PKCS#1 v1.5 is deterministic: the PEM copy of the key signs the same bytes.
    let pem_output = d.join("pem-output");
    let mut pem = kiln(&recipes, &pem_output, &d.join("pem-cache"));
    pem.arg("--sign-key")
        .arg(&key)
        .arg("--sign-cert")
        .arg(&chain);
    run_ok(pem.args(["build", "stage2/stage1to2.ipxe"]));
    let sig = "stage2/stage1to2.ipxe.sig";
    assert_eq!(
        std::fs::read(output.join(sig)).unwrap(),
        std::fs::read(pem_output.join(sig)).unwrap(),
        "the token's and the PEM key's signatures differ"
    );
    // An unreachable token or a wrong PIN stops the build before anything is written.
    let cases = [
        (
            "elsewhere",
            "1234",
            "the token `elsewhere` is not reachable",
        ),
        ("kiln", "0000", "the token refused the PIN"),
    ];
    for (token, pin, expected) in cases {
        let output = d.join("refused");
        let err = run_err(
            with_token(&output, &d.join("refused-cache"), token, pin)
                .args(["build", "stage2/stage1to2.ipxe"]),
        );
        assert!(
            err.contains(expected) && err.contains(SOFTHSM_MODULE),
            "{err}"
        );
        if pin != "1234" {
            assert!(!err.contains(pin), "the PIN is in the message: {err}");
        }
        assert!(!output.exists(), "{expected}: something was written");
    }
}
