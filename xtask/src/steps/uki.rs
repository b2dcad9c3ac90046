//! The UKI step: systemd's EFI stub plus `.osrel`, `.cmdline`, `.uname`,
//! `.initrd` and `.linux` sections, assembled natively (`archive::pe`), as
//! the UAPI Group's Unified Kernel Image specification lays them out.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::{Slot, Step, StepContext};
use crate::arch::Arch;
use crate::archive::pe;
use crate::store::Output;

/// Input: the unpacked systemd-boot-efi package.
pub const STUB: Slot = Slot("stub");
/// Input: the bzImage.
pub const KERNEL: Slot = Slot("kernel");
/// Input: the initramfs for `.initrd`, when `initrd` is set.
pub const INITRD: Slot = Slot("initrd");
/// Output: the UKI.
pub const EFI: Slot = Slot("efi");

#[derive(Debug, Clone, Serialize)]
pub struct AssembleUki {
    #[serde(skip)]
    pub name: String,
    /// Picks the stub (`Arch::uki_stub`); the stub and the kernel must be
    /// EFI applications of this architecture.
    pub arch: Arch,
    pub cmdline: String,
    /// The `.osrel` section: os-release lines.
    pub os_release: String,
    /// Input `initrd` is present and goes into `.initrd`.
    pub initrd: bool,
}

impl Step for AssembleUki {
    fn kind(&self) -> &'static str {
        "uki"
    }
    fn version(&self) -> u32 {
        // 2: per-architecture stubs.
        2
    }
    fn formats(&self) -> &'static [crate::archive::Format] {
        &[crate::archive::pe::FORMAT]
    }
    fn label(&self) -> String {
        format!("uki {}", self.name)
    }

    fn run(&self, ctx: &StepContext, scratch: &Path) -> Result<BTreeMap<String, Output>> {
        let stub_path = self.arch.uki_stub();
        let what = format!("the {} systemd-boot-efi package", self.arch);
        let stub = ctx.tree_file(STUB, stub_path, &what)?;
        let linux = fs_err::read(ctx.file(KERNEL)?).context("reading the kernel")?;
        check_machine(&stub, self.arch, stub_path)?;
        check_machine(&linux, self.arch, "the kernel")?;
        let uname = kernel_release(&linux)?;
        let initrd = match self.initrd {
            true => Some(fs_err::read(ctx.file(INITRD)?).context("reading the initrd")?),
            false => None,
        };
        // The specification's order, as ukify writes it: small metadata
        // first, the kernel last.
        let mut sections: Vec<(&str, &[u8])> = vec![
            (".osrel", self.os_release.as_bytes()),
            (".cmdline", self.cmdline.as_bytes()),
            (".uname", uname.as_bytes()),
        ];
        if let Some(initrd) = &initrd {
            sections.push((".initrd", initrd));
        }
        sections.push((".linux", &linux));
        // Debian 12's stub still carries a COFF symbol table after its
        // sections; ukify drops it too before appending.
        let stub = pe::strip_coff_symbols(&stub)
            .and_then(|s| pe::drop_overlay(&s))
            .with_context(|| format!("reading {stub_path}"))?;
        let image = pe::append_sections(&stub, &sections)
            .with_context(|| format!("adding sections to {stub_path}"))?;
        let out = scratch.join("uki.efi");
        fs_err::write(&out, image).with_context(|| format!("writing {}", out.display()))?;
        let (digest, size) = ctx.store.put_file(&out)?;
        Ok(BTreeMap::from([(
            EFI.into(),
            Output::File { digest, size },
        )]))
    }
}

/// An EFI application for `arch`, or an error naming `what` and both
/// architectures (an amd64 package's stub in an arm64 recipe, say).
fn check_machine(image: &[u8], arch: Arch, what: &str) -> Result<()> {
    let machine = pe::PeImage::parse(image)
        .with_context(|| format!("{what} is not a PE/COFF EFI application"))?
        .headers
        .machine;
    if machine != arch.pe_machine() {
        let is = Arch::describe_machine(machine, true);
        bail!("{what} is built for {is}, the recipe for {arch} (a `deb` source of another architecture takes `arch = \"{arch}\"` in sources.toml)");
    }
    Ok(())
}

/// The release a kernel image reports (`uname -r`). An x86 bzImage: the
/// boot protocol's `kernel_version` field (offset 0x20e) points, relative
/// to 0x200, at "6.1.176 (kiln@kiln) #1 …" (Documentation/x86/boot.rst).
/// An arm64 Image (magic `ARM\x64` at 0x38, Documentation/arm64/booting.rst)
/// is uncompressed: its `linux_banner`, "Linux version 6.1.176 (…", is in it.
pub fn kernel_release(bzimage: &[u8]) -> Result<String> {
    if bzimage.get(0x38..0x3c) == Some(b"ARM\x64") {
        return arm64_release(bzimage);
    }
    if bzimage.get(0x202..0x206) != Some(b"HdrS") {
        bail!("the kernel is not an x86 bzImage (no `HdrS` setup header) nor an arm64 Image");
    }
    let field = bzimage
        .get(0x20e..0x210)
        .map(|b| u16::from_le_bytes([b[0], b[1]]))
        .context("the bzImage's setup header is truncated")?;
    let start = 0x200 + usize::from(field);
    let text = bzimage
        .get(start..)
        .and_then(|rest| rest.split(|b| *b == 0).next())
        .filter(|_| field != 0)
        .context("the bzImage's kernel_version field points outside the file")?;
    let text = std::str::from_utf8(text).context("the bzImage's version string is not text")?;
    let release = text.split_whitespace().next().unwrap_or_default();
    if release.is_empty() {
        bail!("the bzImage's version string is empty");
    }
    Ok(release.to_string())
}

fn arm64_release(image: &[u8]) -> Result<String> {
    const BANNER: &[u8] = b"Linux version ";
    let release = image
        .windows(BANNER.len())
        .enumerate()
        .filter(|(_, w)| *w == BANNER)
        .map(|(i, _)| &image[i + BANNER.len()..])
        .find(|rest| rest.first().is_some_and(u8::is_ascii_digit))
        .map(|rest| {
            rest.split(|b| b.is_ascii_whitespace() || *b == 0)
                .next()
                .unwrap_or_default()
        })
        .context("the arm64 Image has no `Linux version` banner")?;
    Ok(String::from_utf8_lossy(release).into_owned())
}

/// os-release lines for `.osrel`: what systemd-boot shows in its menu.
pub fn os_release(recipe: &str, description: Option<&str>) -> String {
    let pretty = description.unwrap_or(recipe).replace('"', "'");
    format!("NAME=\"Kiln\"\nID=kiln\nIMAGE_ID=\"{recipe}\"\nPRETTY_NAME=\"{pretty}\"\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fake_bzimage(version: &str) -> Vec<u8> {
        let mut b = vec![0u8; 0x400];
        b[0x202..0x206].copy_from_slice(b"HdrS");
        b[0x20e..0x210].copy_from_slice(&0x100u16.to_le_bytes());
        b[0x300..0x300 + version.len()].copy_from_slice(version.as_bytes());
        b
    }

    #[test]
    fn kernel_release_is_read_from_the_setup_header() {
        let b = fake_bzimage("6.1.176 (kiln@kiln) #1 SMP");
        assert_eq!(kernel_release(&b).unwrap(), "6.1.176");
    }

    #[test]
    fn an_arm64_image_gives_its_banner_release() {
        let mut b = vec![0u8; 0x200];
        b[0x38..0x3c].copy_from_slice(b"ARM\x64");
        b.extend_from_slice(b"Linux version %s\0Linux version 6.1.176 (kiln@kiln) #1 SMP\0");
        assert_eq!(kernel_release(&b).unwrap(), "6.1.176");
        b.truncate(0x200);
        assert!(kernel_release(&b)
            .unwrap_err()
            .to_string()
            .contains("banner"));
    }

    #[test]
    fn a_file_without_setup_header_is_refused() {
        let err = kernel_release(&[0u8; 0x400]).unwrap_err().to_string();
        assert!(err.contains("not an x86 bzImage"), "{err}");
        let mut b = fake_bzimage("x");
        b[0x20e..0x210].copy_from_slice(&0xfff0u16.to_le_bytes());
        assert!(kernel_release(&b).is_err());
        let truncated = &fake_bzimage("x")[..0x208];
        assert!(kernel_release(truncated)
            .unwrap_err()
            .to_string()
            .contains("truncated"));
    }
}
