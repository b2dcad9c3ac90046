//! `[[ipxe.combined]]`: option ROMs that chain several of `[ipxe]`'s own
//! images into one file (QEMU's `efi-virtio.rom`: the legacy BIOS image,
//! then the EFI driver), validated into [`CombinedRom`]. The chaining itself
//! is `archive::optrom::combine`.

use std::collections::BTreeMap;

use toml::Spanned;

use super::ipxe::IpxeTarget;
use super::schema::RawCombined;
use super::Ctx;
use crate::arch::Arch;

/// One combined ROM of a recipe (and of every host that gets it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CombinedRom {
    /// The output file name (`efi-virtio.rom`), beside the architecture's
    /// other files.
    pub file: String,
    /// The architecture whose targets the images are.
    pub arch: Arch,
    /// The images, in ROM order.
    pub images: Vec<IpxeTarget>,
    pub pad_to: Option<u64>,
    pub max_size: Option<u64>,
}

/// Validates every `[[ipxe.combined]]` against the recipe's targets: a
/// plain `.rom` file name used by no target or other combined ROM, at least
/// two ROM images of one architecture's targets with a legacy image only
/// first, a power-of-two `pad_to` and a `max_size` it does not exceed.
pub(super) fn combined(
    ctx: &mut Ctx,
    raw: &[Spanned<RawCombined>],
    targets: &BTreeMap<Arch, Vec<IpxeTarget>>,
) -> Vec<CombinedRom> {
    let mut out: Vec<CombinedRom> = Vec::new();
    for c in raw {
        let before = ctx.errors.len();
        let c = c.get_ref();
        let file = c.file.get_ref();
        let plain = |b: u8| b.is_ascii_alphanumeric() || b"._-".contains(&b);
        if !file.ends_with(".rom") || file.starts_with('.') || !file.bytes().all(plain) {
            ctx.push(
                c.file.span(),
                "a combined ROM's `file` is a name of letters, digits, `.`, `_` and `-` ending `.rom` (e.g. \"efi-virtio.rom\")",
            );
        }
        let mut images: Vec<(Arch, IpxeTarget)> = Vec::new();
        for image in c.images.get_ref() {
            let found = targets.iter().find_map(|(arch, ts)| {
                ts.iter()
                    .find(|t| t.make_target() == *image.get_ref())
                    .map(|t| (*arch, t.clone()))
            });
            match found {
                Some((_, t)) if t.kind() != "rom" => ctx.push(
                    image.span(),
                    format!(
                        "`{image}` is not an option ROM (.rom, .mrom or .efirom)",
                        image = image.get_ref()
                    ),
                ),
                Some(found) => images.push(found),
                None => ctx.push(
                    image.span(),
                    format!(
                        "`{}` is not one of [ipxe.targets]: add it there, so that it is built",
                        image.get_ref()
                    ),
                ),
            }
        }
        if c.images.get_ref().len() < 2 {
            ctx.push(c.images.span(), "a combined ROM chains at least two images");
        }
        let arch = images.first().map(|(a, _)| *a);
        if images.iter().any(|(a, _)| Some(*a) != arch) {
            ctx.push(
                c.images.span(),
                "a combined ROM's images are targets of one architecture",
            );
        }
        if images.iter().skip(1).any(|(_, t)| t.is_legacy_rom()) {
            ctx.push(
                c.images.span(),
                "only the first image may be a legacy BIOS ROM (.rom, .mrom): firmware runs the first PC-AT image it finds",
            );
        }
        let pad_to = ctx.positive_bytes(c.pad_to.as_ref(), "pad_to");
        let max_size = ctx.positive_bytes(c.max_size.as_ref(), "max_size");
        if let (Some(p), Some(span)) = (pad_to, c.pad_to.as_ref().map(Spanned::span)) {
            if !p.is_power_of_two() {
                ctx.push(
                    span.clone(),
                    format!("`pad_to` {p} is not a power of two (e.g. 262144)"),
                );
            }
            if max_size.is_some_and(|m| p > m) {
                ctx.push(span, format!("`pad_to` {p} is more than `max_size`"));
            }
        }
        let Some(arch) = arch else { continue };
        let taken = targets[&arch].iter().any(|t| t.file == *file)
            || out.iter().any(|o| o.arch == arch && o.file == *file);
        if taken {
            ctx.push(
                c.file.span(),
                format!("`{file}` is already a file of {arch}: give the combined ROM its own name"),
            );
        }
        if ctx.errors.len() == before {
            out.push(CombinedRom {
                file: file.clone(),
                arch,
                images: images.into_iter().map(|(_, t)| t).collect(),
                pad_to,
                max_size,
            });
        }
    }
    out
}
