//! The per-host iPXE step: one host's (or the recipe's own) files derived
//! from the placeholder build by replacing the embedded script (see
//! `archive/ipxe_script.rs`), each checked before it is stored: the script is read back
//! out of the finished file, and everything else must be the placeholder
//! build's bytes.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::arch::Arch;
use crate::archive::ipxe_script::{self, Finish};
use crate::archive::rom_version::{self, RomVersion};
use crate::archive::{optrom, pe, zinfo};
use crate::steps::{Slot, Step, StepContext};
use crate::store::Output;
use crate::tools;

#[derive(Debug, Clone, Serialize)]
pub struct PatchIpxe {
    pub arch: Arch,
    /// The platform directory all `targets` are in (`bin`, `bin-x86_64-efi`).
    pub platform: String,
    /// Whose files these are: a host name, or the recipe's name.
    pub who: String,
    /// The script, already padded to `size` bytes.
    pub script: String,
    pub size: usize,
    /// Make targets (`bin/ipxe.lkrn`); each is an output, and the inputs
    /// are the placeholder build's `<target>` (and `<target>.bin`,
    /// `<target>.zinfo`, `zbin:<platform>` for compressed formats).
    pub targets: Vec<String>,
    /// Written into each ROM after patching (`archive/rom_version.rs`).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rom_version: Option<RomVersion>,
}

/// The prefix of `zbin:<platform>`, the `zbin` a placeholder build compiled.
pub const ZBIN: Slot = Slot("zbin");

/// The input naming the `zbin` a platform's build compiled.
pub fn zbin_input(platform: &str) -> String {
    format!("{ZBIN}:{platform}")
}

/// The prefix of `efirom:<platform>`, the `util/efirom` a placeholder build compiled.
pub const EFIROM: Slot = Slot("efirom");

/// The input naming the `util/efirom` a platform's build compiled.
pub fn efirom_input(platform: &str) -> String {
    format!("{EFIROM}:{platform}")
}

/// The `.efidrv` an `.efirom` target is made from (make's `%.efirom:
/// %.efidrv` rule): a placeholder build's goal and output, and an input here.
pub fn efidrv_input(target: &str) -> String {
    let stem = target.strip_suffix(".efirom").unwrap_or(target);
    format!("{stem}.efidrv")
}

/// Make's uncompressed `<target>.bin` of a compressed target: a placeholder
/// build's goal and output, and an input here.
pub fn bin_input(target: &str) -> String {
    format!("{target}.bin")
}

/// The `<target>.zinfo` telling zbin how to pack `<target>.bin`: a
/// placeholder build's goal and output, and an input here.
pub fn zinfo_input(target: &str) -> String {
    format!("{target}.zinfo")
}

impl Step for PatchIpxe {
    fn kind(&self) -> &'static str {
        "ipxe-patch"
    }
    fn version(&self) -> u32 {
        1
    }
    fn formats(&self) -> &'static [crate::archive::Format] {
        &[
            crate::archive::ipxe_script::FORMAT,
            crate::archive::optrom::FORMAT,
            crate::archive::pe::FORMAT,
            crate::archive::rom_version::FORMAT,
        ]
    }
    fn label(&self) -> String {
        format!(
            "ipxe {} {} files for {}",
            self.arch, self.platform, self.who
        )
    }
    fn tools(&self) -> &'static [&'static str] {
        &[]
    }
    fn batch(&self) -> Option<&'static str> {
        Some("iPXE files patched per host")
    }

    fn run(&self, ctx: &StepContext, scratch: &Path) -> Result<BTreeMap<String, Output>> {
        if self.script.len() != self.size {
            bail!(
                "the script for {} is {} bytes, not the placeholder's {}",
                self.who,
                self.script.len(),
                self.size
            );
        }
        let placeholder = ipxe_script::placeholder(self.size);
        // Installed on first use: EFI platforms have no zbin, BIOS ones no efirom.
        let mut zbin: Option<PathBuf> = None;
        let mut efirom: Option<PathBuf> = None;
        let mut outputs = BTreeMap::new();
        for target in &self.targets {
            let file = target.rsplit('/').next().unwrap_or(target);
            let finish = ipxe_script::finish_of(file)
                .with_context(|| format!("{target} cannot be patched per host"))?;
            let bytes = match finish {
                Finish::Efi => {
                    let image = read_input(ctx, target)?;
                    patch_efi(&image, &placeholder, self.script.as_bytes())
                        .with_context(|| format!("patching {target} for {}", self.who))?
                }
                Finish::EfiRom => {
                    let efirom = match &efirom {
                        Some(path) => path,
                        None => efirom.insert(install_tool(
                            ctx,
                            scratch,
                            &efirom_input(&self.platform),
                        )?),
                    };
                    let made = read_input(ctx, target)?;
                    let drv = read_input(ctx, &efidrv_input(target))?;
                    let drv = patch_efi(&drv, &placeholder, self.script.as_bytes())
                        .with_context(|| format!("patching {target}'s .efidrv for {}", self.who))?;
                    let tool = EfiRomTool {
                        efirom,
                        scratch,
                        name: file,
                    };
                    tool.make(&drv, &made)
                        .with_context(|| format!("packing {target} for {}", self.who))?
                }
                Finish::Zbin { pad, rom } => {
                    let zbin = match &zbin {
                        Some(path) => path,
                        None => {
                            zbin.insert(install_tool(ctx, scratch, &zbin_input(&self.platform))?)
                        }
                    };
                    let bin = read_input(ctx, &bin_input(target))?;
                    let info = read_input(ctx, &zinfo_input(target))?;
                    let parts = Compressed {
                        zbin,
                        scratch,
                        name: file,
                        bin: &bin,
                        zinfo: &info,
                    };
                    let mut image = parts
                        .patch(&placeholder, self.script.as_bytes(), pad, rom)
                        .with_context(|| format!("patching {target} for {}", self.who))?;
                    if let (Some(version), true) = (self.rom_version, rom) {
                        rom_version::stamp(&mut image, version).with_context(|| {
                            format!("writing version {version} into {target} for {}", self.who)
                        })?;
                    }
                    image
                }
            };
            let digest = ctx.store.put_bytes(&bytes)?;
            let size = bytes.len() as u64;
            outputs.insert(target.clone(), Output::File { digest, size });
        }
        Ok(outputs)
    }
}

fn read_input(ctx: &StepContext, name: &str) -> Result<Vec<u8>> {
    let path = ctx.file(name)?;
    fs_err::read(&path).with_context(|| format!("reading {name} ({})", path.display()))
}

/// A tool the placeholder build compiled (input `zbin:<platform>`,
/// `efirom:<platform>`), executable, in `scratch`.
fn install_tool(ctx: &StepContext, scratch: &Path, input: &str) -> Result<PathBuf> {
    let dest = scratch.join(input.replace([':', '/'], "-"));
    fs_err::copy(ctx.file(input)?, &dest)?;
    use std::os::unix::fs::PermissionsExt;
    fs_err::set_permissions(&dest, std::fs::Permissions::from_mode(0o755))?;
    Ok(dest)
}

/// Replaces the one placeholder in a PE image and refreshes its checksum;
/// checks the result differs from `image` only there and in the checksum.
pub fn patch_efi(image: &[u8], placeholder: &[u8], script: &[u8]) -> Result<Vec<u8>> {
    let at = locate(image, placeholder)?;
    let mut out = image.to_vec();
    out[at..at + script.len()].copy_from_slice(script);
    let checksum_at = pe::refresh_checksum(&mut out)?;
    if out[at..at + script.len()] != *script {
        bail!("the script read back at {at:#x} is not the one written");
    }
    let stray = (0..out.len()).find(|&i| {
        out[i] != image[i]
            && !(at..at + script.len()).contains(&i)
            && !(checksum_at..checksum_at + 4).contains(&i)
    });
    if let Some(i) = stray {
        bail!("patching changed byte {i:#x}, outside the script");
    }
    Ok(out)
}

fn locate(image: &[u8], placeholder: &[u8]) -> Result<usize> {
    ipxe_script::find_once(image, placeholder).map_err(|n| match n {
        0 => anyhow::anyhow!(
            "the {}-byte placeholder script is not in it: this is not a Kiln placeholder build \
             (or its script size differs)",
            placeholder.len()
        ),
        n => anyhow::anyhow!("the placeholder script occurs {n} times in it; it must occur once"),
    })
}

/// The tree's `util/efirom`, run as make's `%.efirom` rule runs it.
pub struct EfiRomTool<'a> {
    pub efirom: &'a Path,
    pub scratch: &'a Path,
    /// The target's file name (`1af41000.efirom`), for the scratch files.
    pub name: &'a str,
}

impl EfiRomTool<'_> {
    /// `efirom -v <vendor> -d <device> -c` over `drv`, with the ids make
    /// gave: those of `made`, the placeholder build's `.efirom`. The result
    /// must carry the same ids and EFI header (machine, subsystem).
    pub fn make(&self, drv: &[u8], made: &[u8]) -> Result<Vec<u8>> {
        let ids = optrom::pci_identity(made).context("the placeholder build's .efirom")?;
        let input = self.scratch.join(format!("{}.efidrv", self.name));
        let output = self.scratch.join(self.name);
        fs_err::write(&input, drv)?;
        let mut efirom = tools::command_at(self.efirom);
        // efirom reads only its options and two files: no variable may reach it.
        efirom
            .env_clear()
            .arg("-v")
            .arg(format!("{:x}", ids.vendor))
            .arg("-d")
            .arg(format!("{:x}", ids.devices[0]))
            .arg("-c")
            .arg(&input)
            .arg(&output);
        tools::capture_bytes(efirom).context("packing with iPXE's util/efirom")?;
        let rom = fs_err::read(&output)?;
        let _ = fs_err::remove_file(&input);
        let _ = fs_err::remove_file(&output);
        let theirs = optrom::pci_identity(&rom).context("util/efirom's output")?;
        if (theirs.vendor, &theirs.devices[..1]) != (ids.vendor, &ids.devices[..1]) {
            bail!(
                "util/efirom wrote a ROM for {:04x}:{:04x}, not {:04x}:{:04x}",
                theirs.vendor,
                theirs.devices[0],
                ids.vendor,
                ids.devices[0]
            );
        }
        // EfiSubsystem and EfiMachineType: the same kind of driver for the same CPU.
        if rom.get(0x08..0x0c) != made.get(0x08..0x0c) {
            bail!("util/efirom's ROM has another EFI subsystem or machine type than make's");
        }
        Ok(rom)
    }
}

/// A compressed target's intermediates and the `zbin` that packs them.
pub struct Compressed<'a> {
    pub zbin: &'a Path,
    pub scratch: &'a Path,
    /// The target's file name (`ipxe.lkrn`), for the scratch files.
    pub name: &'a str,
    pub bin: &'a [u8],
    pub zinfo: &'a [u8],
}

impl Compressed<'_> {
    /// The final file for `script` in place of `placeholder`, checked by
    /// unpacking it again.
    pub fn patch(
        &self,
        placeholder: &[u8],
        script: &[u8],
        pad: Option<(usize, u8)>,
        rom: bool,
    ) -> Result<Vec<u8>> {
        let at = locate(self.bin, placeholder).context("in the .bin")?;
        let mut bin = self.bin.to_vec();
        bin[at..at + script.len()].copy_from_slice(script);
        self.finish(&bin, pad, rom)
    }

    /// What make's `[ZBIN]` and `[FINISH]` rules make of `bin`: `zbin`, the
    /// padding, the ROM checksums; then the packed data is unpacked again
    /// and compared with `bin`.
    pub fn finish(&self, bin: &[u8], pad: Option<(usize, u8)>, rom: bool) -> Result<Vec<u8>> {
        let records = zinfo::parse(self.zinfo).context("the .zinfo is corrupt")?;
        let bin_path = self.scratch.join(format!("{}.bin", self.name));
        let zinfo_path = self.scratch.join(format!("{}.zinfo", self.name));
        fs_err::write(&bin_path, bin)?;
        fs_err::write(&zinfo_path, self.zinfo)?;
        let mut zbin = tools::command_at(self.zbin);
        // zbin reads only its two arguments: no variable may reach it.
        zbin.env_clear().arg(&bin_path).arg(&zinfo_path);
        let mut image = tools::capture_bytes(zbin).context("packing with iPXE's zbin")?;
        zinfo::check_packed(&records, bin, &image)
            .context("the packed file does not unpack to the patched .bin")?;
        if let Some((block, fill)) = pad {
            optrom::pad(&mut image, block, fill);
        }
        if rom {
            optrom::fix_checksums(&mut image).context("fixing the ROM checksums")?;
        }
        let _ = fs_err::remove_file(bin_path);
        let _ = fs_err::remove_file(zinfo_path);
        Ok(image)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SIZE: usize = 128;

    fn error(r: Result<Vec<u8>>) -> String {
        format!("{:#}", r.unwrap_err())
    }

    #[test]
    fn a_file_without_the_placeholder_is_not_a_fleet_build() {
        let placeholder = ipxe_script::placeholder(SIZE);
        let script = ipxe_script::padded("#!ipxe\nexit\n", SIZE).unwrap();
        let err = error(patch_efi(&[0u8; 4096], &placeholder, script.as_bytes()));
        assert!(err.contains("not a Kiln placeholder build"), "{err}");
        let mut twice = placeholder.clone();
        twice.extend(&placeholder);
        let err = error(patch_efi(&twice, &placeholder, script.as_bytes()));
        assert!(err.contains("occurs 2 times"), "{err}");
    }

    #[test]
    fn a_corrupt_zinfo_fails_before_zbin_runs() {
        let placeholder = ipxe_script::placeholder(SIZE);
        let mut bin = vec![0x90u8; 512];
        bin.extend(&placeholder);
        let scratch = tempfile::tempdir().unwrap();
        let parts = Compressed {
            zbin: Path::new("/nonexistent/zbin"),
            scratch: scratch.path(),
            name: "ipxe.lkrn",
            bin: &bin,
            zinfo: b"COPY\0\0\0\0\x10\0\0\0\x01\0\0\0tail",
        };
        let script = ipxe_script::padded("#!ipxe\nexit\n", SIZE).unwrap();
        let err = error(parts.patch(&placeholder, script.as_bytes(), None, false));
        assert!(err.contains("the .zinfo is corrupt"), "{err}");
        assert_eq!(fs_err::read_dir(scratch.path()).unwrap().count(), 0);
        let parts = Compressed {
            bin: &bin[..600],
            ..parts
        };
        let err = error(parts.patch(&placeholder, script.as_bytes(), None, false));
        assert!(
            err.contains("in the .bin") && err.contains("not a Kiln placeholder"),
            "{err}"
        );
    }
}
