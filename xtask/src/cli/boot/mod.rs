//! `boot-test stage2-iso`, `stage2-uki`, `stage1-*` and `stage3`. The media tests boot the media a
//! recipe built, through their own boot loaders, on SeaBIOS or OVMF (from
//! the pinned `ovmf` deb), and check that the guest got the kernel
//! arguments the recipe baked in.

use std::path::{Path, PathBuf};
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::Args;

use super::build::build_targets;
use super::session::deb_tree_digest;
use super::Settings;
use crate::arch::Arch;
use crate::recipe::{self, Media};
use crate::steps::iso::esp_image;
use crate::store::TreeKind;
use crate::verify::boot::{self, BootSpec, Medium};

mod stage1;
mod stage3;

use stage1::boot_stage1;
use stage3::boot_stage3;

/// What the boot tests of one architecture boot: the default recipes, and
/// Debian's kernel and UEFI firmware from their pinned debs.
struct Defaults {
    /// The stage2 recipe (kernel, initramfs, UKI, ISO).
    stage2: &'static str,
    /// The modules recipe for Debian's kernel.
    modules: &'static str,
    /// The `deb` source holding Debian's kernel.
    debian_kernel: &'static str,
    /// The `deb` source holding the UEFI firmware.
    uefi: &'static str,
    /// Its code and variables in one image, for `-bios`.
    uefi_image: &'static str,
    /// Secure Boot: the firmware's code (x86_64: the SMM build that
    /// enforces it) and a variable store with Debian's snakeoil key
    /// (`PkKek-1-snakeoil.pem`, shipped beside it) enrolled as PK, KEK and db.
    secure_code: &'static str,
    secure_vars: &'static str,
}

/// The default recipes and sources the boot tests of `arch` use.
fn defaults(arch: Arch) -> Defaults {
    match arch {
        Arch::X86_64 => Defaults {
            stage2: "stage2",
            modules: "modules",
            debian_kernel: "linux-image",
            uefi: "ovmf",
            uefi_image: "usr/share/ovmf/OVMF.fd",
            secure_code: "usr/share/OVMF/OVMF_CODE_4M.secboot.fd",
            secure_vars: "usr/share/OVMF/OVMF_VARS_4M.snakeoil.fd",
        },
        Arch::Arm64 => Defaults {
            stage2: "stage2-arm64",
            modules: "modules-arm64",
            debian_kernel: "linux-image-arm64",
            uefi: "aavmf",
            uefi_image: "usr/share/qemu-efi-aarch64/QEMU_EFI.fd",
            secure_code: "usr/share/AAVMF/AAVMF_CODE.fd",
            secure_vars: "usr/share/AAVMF/AAVMF_VARS.snakeoil.fd",
        },
    }
}

/// The default stage1 recipe's virtio-net EFI driver ROM.
const EFIROM: &str = "1af41000.efirom";
/// The default stage1 recipe's combined virtio-net ROM (`[[ipxe.combined]]`).
const COMBINED_ROM: &str = "efi-virtio.rom";
#[derive(Debug, Args)]
pub struct BootTestArgs {
    /// What to boot: `stage2` (the stage2 kernel with its embedded
    /// initramfs, no -initrd, virtio-net and e1000 cards that must both come
    /// up), `stage2-initramfs` (Debian's kernel with the stage2 initramfs),
    /// `modules` (the same plus modules.cpio.gz as a second initrd;
    /// modprobe virtio_net must bring up a new interface), `stage2-iso`
    /// (the hybrid ISO through isolinux or its EFI image; see --firmware,
    /// --usb, --host) or `stage2-uki` (the UKI on a FAT drive, UEFI). Media
    /// tests check that the guest got the kernel arguments baked in.
    /// `stage1-lkrn`, `stage1-efi` (OVMF, from a FAT drive), `stage1-rom`
    /// (virtio-net option ROM), `stage1-combined` (the combined BIOS + EFI
    /// ROM `efi-virtio.rom` on the virtio-net card, under SeaBIOS or, with
    /// `--firmware uefi`, OVMF) and `stage1-efirom` (the EFI driver ROM
    /// `1af41000.efirom` on the card under OVMF) boot iPXE, which must DHCP,
    /// chain stage1to2.ipxe from Kiln's HTTP server and boot stage2 (needs
    /// an iPXE tree: `--source ipxe=PATH`). With `--arch arm64`,
    /// `stage1-efi` and `stage1-efirom` boot the arm64 iPXE under AAVMF on
    /// QEMU's `virt` board, and stage1to2.ipxe sends it on to the arm64
    /// stage2 (arm64/stage1to2.ipxe, arm64/stage2_vmlinuz). `stage3` boots the ROM updater with
    /// `kiln.dry_run=1` beside a virtio-net and an e1000e card (QEMU's own
    /// ROMs): every card must get a `KILN-ROM` line and mstflint must run
    /// (`--host` adds that host's ROM archive as a second initrd).
    #[arg(value_enum)]
    pub what: BootTest,
    /// Firmware for media tests and `stage1-combined`: `bios` (SeaBIOS; the
    /// default) or `uefi` (OVMF from the pinned `ovmf` deb; the UKI's only
    /// choice).
    #[arg(long, value_enum)]
    pub firmware: Option<Firmware>,
    /// The guest's architecture. `arm64` boots the `stage2-arm64` recipe's
    /// artifacts (`stage2`, `stage2-uki`, `stage2-iso` as a CD; Debian's
    /// arm64 kernel for `stage2-initramfs` and `modules`) or arm64 iPXE
    /// (`stage1-efi`, `stage1-efirom`) on QEMU's `virt` board, under AAVMF
    /// (from the pinned `aavmf` deb) except the direct kernel boots.
    #[arg(long, value_enum, default_value_t = Arch::DEFAULT)]
    pub arch: Arch,
    /// UEFI with Secure Boot enforcing (for `stage2-uki`, `stage2-iso` and
    /// `stage1-efi`): the firmware's Secure Boot build with Debian's snakeoil
    /// key enrolled, so the medium must be signed with it (`--sign-key
    /// PkKek-1-snakeoil.key --sign-cert PkKek-1-snakeoil.pem` from the ovmf
    /// package, passphrase `snakeoil`); an unsigned one fails ("Access
    /// Denied").
    #[arg(long)]
    pub secure_boot: bool,
    /// Attach the ISO as a USB stick instead of a CD.
    #[arg(long)]
    pub usb: bool,
    /// Boot this inventory host's ISO (`stage2/hosts/<HOST>/stage2.iso`),
    /// or with `stage1-*` its patched iPXE file (`stage1/hosts/<HOST>/…`).
    #[arg(long, value_name = "HOST")]
    pub host: Option<String>,
    /// Boot this initramfs instead of building the stage2 one.
    #[arg(long, value_name = "FILE")]
    pub initrd: Option<PathBuf>,
    /// For `stage1-*`: serve this artifact (e.g. `stage2/stage2_vmlinuz`)
    /// with one byte changed, and pass only if the guest refuses it (iPXE's
    /// "Could not verify", or the firmware's "Access Denied") instead of
    /// booting it: proof that the chain checks signatures (`[signing]
    /// imgverify` with a signing key, or Secure Boot).
    #[arg(long, value_name = "ARTIFACT")]
    pub tamper: Option<String>,
    /// Seconds to wait for the serial marker.
    #[arg(long, default_value_t = 180)]
    pub timeout: u64,
}

/// Every boot test, so that clap lists them all and refuses any other.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum BootTest {
    Stage2,
    Stage2Initramfs,
    Modules,
    Stage2Iso,
    Stage2Uki,
    Stage1Lkrn,
    Stage1Efi,
    Stage1Rom,
    Stage1Combined,
    Stage1Efirom,
    Stage3,
}

impl BootTest {
    fn is_media(self) -> bool {
        matches!(self, BootTest::Stage2Iso | BootTest::Stage2Uki)
    }

    /// The chain tests: iPXE, then stage2 over Kiln's HTTP server.
    fn is_stage1(self) -> bool {
        matches!(
            self,
            BootTest::Stage1Lkrn
                | BootTest::Stage1Efi
                | BootTest::Stage1Rom
                | BootTest::Stage1Combined
                | BootTest::Stage1Efirom
        )
    }

    fn takes_host(self) -> bool {
        self.is_media() || self.is_stage1() || self == BootTest::Stage3
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Firmware {
    Bios,
    Uefi,
}

impl std::fmt::Display for Firmware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Firmware::Bios => "SeaBIOS",
            Firmware::Uefi => "OVMF",
        })
    }
}

pub fn boot_test(s: &Settings, a: &BootTestArgs) -> Result<ExitCode> {
    if a.usb && !a.what.is_media() {
        bail!("`--usb` is for `stage2-iso` and `stage2-uki`");
    }
    if a.firmware.is_some() && !a.what.is_media() && a.what != BootTest::Stage1Combined {
        bail!("`--firmware` is for `stage2-iso`, `stage2-uki` and `stage1-combined`");
    }
    if a.secure_boot
        && (!a.what.is_media() && a.what != BootTest::Stage1Efi
            || a.firmware == Some(Firmware::Bios))
    {
        bail!("`--secure-boot` is UEFI's, for `stage2-iso`, `stage2-uki` and `stage1-efi`");
    }
    if a.tamper.is_some() && !a.what.is_stage1() {
        bail!("`--tamper` is for the `stage1-*` chain tests, which serve stage2 over HTTP");
    }
    let arm64_ready = [
        BootTest::Stage2,
        BootTest::Stage2Initramfs,
        BootTest::Modules,
        BootTest::Stage2Uki,
        BootTest::Stage2Iso,
        BootTest::Stage1Efi,
        BootTest::Stage1Efirom,
    ];
    if a.arch != Arch::X86_64 && !arm64_ready.contains(&a.what) {
        bail!(
            "`--arch {}` is for `stage2`, `stage2-initramfs`, `modules`, `stage2-uki`, `stage2-iso`, `stage1-efi` and `stage1-efirom`",
            a.arch
        );
    }
    if a.arch == Arch::Arm64 && (a.usb || a.host.is_some() && a.what.is_media()) {
        bail!(
            "arm64 media boot as a CD or an ESP of the `{}` recipe: drop `--usb` and `--host`",
            defaults(Arch::Arm64).stage2
        );
    }
    if a.host.is_some() && !a.what.takes_host() {
        bail!("`--host` is for `stage2-iso`, `stage2-uki`, `stage3` and the `stage1-*` boot tests");
    }
    match a.what {
        BootTest::Stage3 => boot_stage3(s, a),
        BootTest::Stage2Iso | BootTest::Stage2Uki => boot_media(s, a),
        BootTest::Stage1Lkrn
        | BootTest::Stage1Efi
        | BootTest::Stage1Rom
        | BootTest::Stage1Combined
        | BootTest::Stage1Efirom => boot_stage1(s, a),
        BootTest::Stage2 => {
            if a.initrd.is_some() {
                bail!(
                    "`--initrd` is for `stage2-initramfs`: the stage2 kernel embeds its initramfs"
                );
            }
            let recipe = defaults(a.arch).stage2;
            let kernel = stage2_artifact(s, a.arch, |r| r.kernel.as_ref().map(|k| &k.output))?;
            // The whole recipe, as `build` would: the kernel and what it embeds.
            build_targets(s, &[recipe.to_string()])?;
            let kernel = s.output_dir.join(kernel);
            let outcome = boot::boot(&boot::BootSpec::kernel(&kernel, a.arch, a.timeout))?;
            let nics = boot::interfaces(&outcome.serial);
            let cards = boot::stage2_nics(a.arch);
            let missing = (0..cards.len()).any(|i| !nics.contains(&format!("eth{i}").as_str()));
            if missing {
                bail!(
                    "the {recipe} kernel booted but did not bring up every network card \
                     ({}): it reported {nics:?}",
                    cards.join(", ")
                );
            }
            let banner = outcome
                .serial
                .iter()
                .find(|l| l.contains(" Kiln "))
                .map_or("", |l| l.trim());
            println!(
                "boot test passed in {:.1}s: saw `{}`; banner `{banner}`; interfaces {}",
                outcome.elapsed.as_secs_f64(),
                outcome.marker,
                nics.join(" ")
            );
            Ok(ExitCode::SUCCESS)
        }
        BootTest::Stage2Initramfs => {
            let initrd = match &a.initrd {
                Some(path) => path.clone(),
                None => {
                    let initramfs = stage2_initramfs(s, a.arch)?;
                    build_targets(s, std::slice::from_ref(&initramfs))?;
                    s.output_dir.join(initramfs)
                }
            };
            let kernel = debian_kernel(s, a.arch)?;
            let spec = boot::BootSpec::stage2(&kernel, &initrd, a.arch, a.timeout);
            passed(&boot::boot(&spec)?)
        }
        BootTest::Modules => {
            let initramfs = stage2_initramfs(s, a.arch)?;
            let modules_recipe = defaults(a.arch).modules.to_string();
            let built = build_targets(s, &[initramfs.clone(), modules_recipe])?;
            let kernel = debian_kernel(s, a.arch)?;
            let modules = built
                .iter()
                .find(|a| a.kind == "modules" && a.name.ends_with(".gz"))
                .context("the modules recipe wrote no .gz archive")?;
            let work = tempfile::tempdir().context("creating a temporary directory")?;
            let initrd = work.path().join("stage2+modules.cpio.gz");
            concatenate(
                &[
                    s.output_dir.join(initramfs),
                    s.output_dir.join(&modules.path),
                ],
                &initrd,
            )?;
            let wanted = ["virtio_pci", "virtio_net"];
            let spec = boot::BootSpec::modules(&kernel, &initrd, &wanted, a.arch, a.timeout);
            passed(&boot::boot(&spec)?)
        }
    }
}

/// Reports a boot test that saw its marker.
fn passed(outcome: &boot::BootOutcome) -> Result<ExitCode> {
    println!(
        "boot test passed in {:.1}s: saw `{}`",
        outcome.elapsed.as_secs_f64(),
        outcome.marker
    );
    Ok(ExitCode::SUCCESS)
}

/// Concatenates initrds, as a boot loader loading several does.
fn concatenate(parts: &[PathBuf], dest: &Path) -> Result<()> {
    let mut out =
        fs_err::File::create(dest).with_context(|| format!("creating {}", dest.display()))?;
    for p in parts {
        let mut f = fs_err::File::open(p).with_context(|| format!("opening {}", p.display()))?;
        std::io::copy(&mut f, &mut out).with_context(|| format!("appending {}", p.display()))?;
    }
    Ok(())
}

/// A file inside a `deb` source, fetched and unpacked as a build would.
pub fn deb_source_file(s: &Settings, source: &str, path: &str) -> Result<PathBuf> {
    let (store, digest) = deb_tree_digest(s, source)?;
    let tree = store.tree(&digest)?;
    match tree.get(path).map(|e| &e.kind) {
        Some(TreeKind::File { digest, .. }) => store.verified_blob(digest),
        _ => bail!("the `{source}` source has no file {path}"),
    }
}

/// `boot/vmlinuz-*` of Debian's kernel of `arch`, as a store path.
pub fn debian_kernel(s: &Settings, arch: Arch) -> Result<PathBuf> {
    let source = defaults(arch).debian_kernel;
    let (store, digest) = deb_tree_digest(s, source)?;
    let tree = store.tree(&digest)?;
    let entry = tree
        .entries
        .iter()
        .find(|e| e.path.starts_with("boot/vmlinuz-"))
        .with_context(|| format!("the {source} source has no boot/vmlinuz-*"))?;
    match &entry.kind {
        TreeKind::File { digest, .. } => store.verified_blob(digest),
        _ => bail!("{} in {source} is not a file", entry.path),
    }
}

/// The stage2 recipe's initramfs artifact for `arch`.
fn stage2_initramfs(s: &Settings, arch: Arch) -> Result<String> {
    stage2_artifact(s, arch, |r| r.initramfs.as_ref().map(|i| &i.output))
}

/// An artifact of the stage2 recipe of `arch` (its kernel, its
/// initramfs), as `pick` finds it in the recipe.
fn stage2_artifact(
    s: &Settings,
    arch: Arch,
    pick: impl Fn(&recipe::Recipe) -> Option<&String>,
) -> Result<String> {
    let name = defaults(arch).stage2;
    let recipes = s.recipes()?;
    let recipe = recipes
        .targets
        .get(name)
        .with_context(|| format!("no recipe `{name}` in {}", s.recipes_dir.display()))?;
    pick(recipe)
        .cloned()
        .with_context(|| format!("the `{name}` recipe does not build what this boot test boots"))
}

/// UEFI firmware for `arch`'s guests: OVMF or AAVMF, from their pinned
/// debs; with `secure_boot`, their Secure Boot builds as flash with the
/// snakeoil key enrolled.
fn uefi_firmware(s: &Settings, arch: Arch, secure_boot: bool) -> Result<boot::Firmware> {
    let d = defaults(arch);
    Ok(match secure_boot {
        true => boot::Firmware::Flash {
            code: deb_source_file(s, d.uefi, d.secure_code)?,
            vars: deb_source_file(s, d.uefi, d.secure_vars)?,
        },
        false => boot::Firmware::Image(deb_source_file(s, d.uefi, d.uefi_image)?),
    })
}

pub fn boot_media(s: &Settings, a: &BootTestArgs) -> Result<ExitCode> {
    let recipes = s.recipes()?;
    let name = defaults(a.arch).stage2;
    let media = &recipes
        .targets
        .get(name)
        .with_context(|| format!("no recipe `{name}` in {}", s.recipes_dir.display()))?
        .media;
    if a.arch == Arch::Arm64 && a.firmware == Some(Firmware::Bios) {
        bail!("arm64 machines boot UEFI only: drop `--firmware bios`");
    }
    let work = tempfile::tempdir().context("creating a temporary directory")?;
    let (medium, mut firmware, expected) = match a.what {
        BootTest::Stage2Uki => uki_medium(s, a, media, work.path())?,
        _ => iso_medium(s, a, media)?,
    };
    if a.arch == Arch::Arm64 || a.secure_boot {
        firmware = Firmware::Uefi;
    }
    let firmware_spec = match firmware {
        Firmware::Uefi => Some(uefi_firmware(s, a.arch, a.secure_boot)?),
        Firmware::Bios => None,
    };
    let spec = BootSpec::media(medium, firmware_spec, a.arch, a.timeout);
    let outcome = boot::boot(&spec)?;
    let guest = boot::guest_cmdline(&outcome.serial).unwrap_or_default();
    if !guest.ends_with(expected.as_str()) {
        bail!("the guest booted with `{guest}`, but the medium carries `{expected}`");
    }
    let mut firmware = match a.arch {
        Arch::X86_64 => firmware.to_string(),
        Arch::Arm64 => "AAVMF".to_string(),
    };
    if a.secure_boot {
        firmware.push_str(", Secure Boot");
    }
    println!(
        "boot test passed in {:.1}s ({firmware}): saw `{}`; guest cmdline `{guest}`",
        outcome.elapsed.as_secs_f64(),
        outcome.marker
    );
    Ok(ExitCode::SUCCESS)
}

/// The stage2 ISO (or a host's) as a CD or, with `--usb`, a USB stick.
fn iso_medium(s: &Settings, a: &BootTestArgs, media: &Media) -> Result<(Medium, Firmware, String)> {
    let iso = media
        .iso
        .as_ref()
        .with_context(|| format!("the `{}` recipe has no [iso]", defaults(a.arch).stage2))?;
    let (artifact, cmdline) = match &a.host {
        Some(name) => {
            let host = media
                .hosts
                .iter()
                .find(|h| &h.hostname == name)
                .with_context(|| unknown_host(media, name))?;
            let artifact = crate::plan::host_artifact(&iso.output, name);
            (artifact, host.cmdline.clone())
        }
        None => (iso.output.clone(), media.cmdline.clone()),
    };
    build_targets(s, std::slice::from_ref(&artifact))?;
    let path = s.output_dir.join(&artifact);
    let medium = if a.usb {
        Medium::Usb(path)
    } else {
        Medium::Cdrom(path)
    };
    Ok((medium, a.firmware.unwrap_or(Firmware::Bios), cmdline))
}

/// The UKI as `EFI/BOOT/BOOTX64.EFI` on a FAT drive Kiln writes: what a
/// machine's ESP holds. UEFI only.
fn uki_medium(
    s: &Settings,
    a: &BootTestArgs,
    media: &Media,
    work: &Path,
) -> Result<(Medium, Firmware, String)> {
    if a.firmware == Some(Firmware::Bios) {
        bail!("a UKI boots on UEFI only: drop `--firmware bios`");
    }
    let uki = media
        .uki
        .as_ref()
        .with_context(|| format!("the `{}` recipe has no [uki]", defaults(a.arch).stage2))?;
    build_targets(s, std::slice::from_ref(&uki.output))?;
    let path = esp_with(&s.output_dir.join(&uki.output), a.arch, work)?;
    Ok((Medium::Disk(path), Firmware::Uefi, media.cmdline.clone()))
}

fn unknown_host(media: &Media, name: &str) -> String {
    let names = media.hosts.iter().map(|h| h.hostname.as_str());
    no_such_host(defaults(Arch::X86_64).stage2, name, names)
}

/// "no host `x` in the `<recipe>` recipe's inventory", with the nearest name.
fn no_such_host<'a>(recipe: &str, name: &str, names: impl IntoIterator<Item = &'a str>) -> String {
    let hint = recipe::diag::did_you_mean(name, names);
    format!("no host `{name}` in the `{recipe}` recipe's inventory{hint}")
}

/// A FAT drive whose removable-media boot file is `efi`.
fn esp_with(efi: &Path, arch: Arch, work: &Path) -> Result<PathBuf> {
    let bytes = fs_err::read(efi).with_context(|| format!("reading {}", efi.display()))?;
    let image = esp_image(bytes, arch, 0)?;
    let path = work.join("esp.img");
    fs_err::write(&path, image).with_context(|| format!("writing {}", path.display()))?;
    Ok(path)
}
