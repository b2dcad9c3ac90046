//! `[[rom]]`: the NIC option ROMs a ROM-update image (stage3) carries, the
//! cards each is for, and how the image's updater flashes it.

use std::ops::Range;

use toml::Spanned;

use super::schema::RawRom;
use super::{image_path, location, Ctx, Source, SourceKind};

/// One ROM of the update image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rom {
    pub from: RomFrom,
    /// The file's name in the image (`etc/kiln/roms/<file>`).
    pub file: String,
    pub vendor: u16,
    pub device: u16,
    pub method: FlashMethod,
    /// The version the updater compares with the flashed one; `None`: what
    /// the ROM itself says, read when the image is built (its Mellanox
    /// version block for `mstflint`, its PCI revision level otherwise).
    pub version: Option<String>,
    pub max_size: Option<u64>,
    /// Recipe file, line and column of the `[[rom]]`, for errors.
    pub origin: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RomFrom {
    /// An artifact of another recipe (`stage1/x86_64/808610d3.rom`).
    Artifact(String),
    /// A file in an unpacked `deb` source.
    Deb { source: String, path: String },
}

#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FlashMethod {
    /// Mellanox cards: `mstflint -d <pci address> … brom`.
    Mstflint,
    /// `flashrom -p <programmer>:pci=<pci address>`.
    Flashrom { programmer: String },
}

impl FlashMethod {
    /// The word the updater's table uses (`roms.conf`).
    pub fn table_word(&self) -> String {
        match self {
            FlashMethod::Mstflint => "mstflint".into(),
            FlashMethod::Flashrom { programmer } => format!("flashrom:{programmer}"),
        }
    }
}

/// Validates every `[[rom]]`: where the file comes from, a unique
/// `vendor:device`, a known method, a version made of dotted numbers.
pub(super) fn roms(ctx: &mut Ctx, raw: Vec<Spanned<RawRom>>, has_initramfs: bool) -> Vec<Rom> {
    if let (Some(first), false) = (raw.first(), has_initramfs) {
        ctx.push(
            first.span(),
            "[[rom]] files go into the recipe's initramfs: add an [initramfs] section",
        );
    }
    let mut out: Vec<Rom> = Vec::new();
    for r in raw {
        let span = r.span();
        let before = ctx.errors.len();
        let r = r.into_inner();
        let from = rom_from(ctx, &r, span.clone());
        let (vendor, device) = pci_id(ctx, &r.device).unwrap_or_default();
        let method = method(ctx, &r, span.clone());
        let version = r.version.as_ref().and_then(|v| {
            let ok = !v.get_ref().is_empty()
                && v.get_ref().split('.').all(|p| {
                    !p.is_empty() && p.len() <= 9 && p.bytes().all(|b| b.is_ascii_digit())
                });
            if !ok {
                ctx.push(
                    v.span(),
                    "a ROM `version` is dotted numbers, e.g. \"3.4.752\"",
                );
            }
            ok.then(|| v.get_ref().clone())
        });
        let max_size = ctx.positive_bytes(r.max_size.as_ref(), "max_size");
        if ctx.errors.len() != before {
            continue;
        }
        let (Some(from), Some(method)) = (from, method) else {
            continue;
        };
        let (RomFrom::Artifact(path) | RomFrom::Deb { path, .. }) = &from;
        let file = path.rsplit('/').next().unwrap_or(path).to_string();
        // The updater's table is split on spaces and its words are used in
        // paths: a plain file name only.
        let plain = |b: u8| b.is_ascii_alphanumeric() || b"._+-".contains(&b);
        if file.starts_with('.') || !file.bytes().all(plain) {
            ctx.push(
                span.clone(),
                format!("ROM file name `{file}`: use letters, digits and . _ + - only"),
            );
            continue;
        }
        if let Some(other) = out
            .iter()
            .find(|o| (o.vendor, o.device) == (vendor, device))
        {
            ctx.push(
                r.device.span(),
                format!(
                    "{vendor:04x}:{device:04x} already has a ROM ({}, at {}): one ROM per card model",
                    other.file, other.origin
                ),
            );
            continue;
        }
        if let Some(other) = out.iter().find(|o| o.file == file) {
            ctx.push(
                span.clone(),
                format!("two ROMs named {file} (the other at {})", other.origin),
            );
            continue;
        }
        out.push(Rom {
            from,
            file,
            vendor,
            device,
            method,
            version,
            max_size,
            origin: location(ctx.doc, span),
        });
    }
    out
}

fn rom_from(ctx: &mut Ctx, r: &RawRom, span: Range<usize>) -> Option<RomFrom> {
    match (&r.artifact, &r.source, &r.path) {
        (Some(a), None, None) => {
            let path = image_path(ctx, a)?;
            if !path.contains('/') {
                ctx.push(
                    a.span(),
                    "an artifact is named <recipe>/<file>, e.g. \"stage1/x86_64/808610d3.rom\"",
                );
                return None;
            }
            Some(RomFrom::Artifact(path))
        }
        (None, Some(source), Some(path)) => {
            let kind = ctx.source(source).map(|s: &Source| &s.kind);
            if !matches!(kind, Some(SourceKind::Deb { .. })) {
                if kind.is_some() {
                    ctx.push(
                        source.span(),
                        format!("source `{}` is not a `deb` source", source.get_ref()),
                    );
                }
                return None;
            }
            let path = image_path(ctx, path)?;
            Some(RomFrom::Deb {
                source: source.get_ref().clone(),
                path,
            })
        }
        _ => {
            ctx.push(
                span,
                "a [[rom]] names its file either as `artifact` (another recipe's output) or as `source` + `path` (a file in a deb)",
            );
            None
        }
    }
}

/// "8086:10d3" → (0x8086, 0x10d3).
fn pci_id(ctx: &mut Ctx, raw: &Spanned<String>) -> Option<(u16, u16)> {
    let parsed = raw.get_ref().split_once(':').and_then(|(v, d)| {
        let hex = |s: &str| {
            (s.len() == 4)
                .then(|| u16::from_str_radix(s, 16).ok())
                .flatten()
        };
        Some((hex(v)?, hex(d)?))
    });
    if parsed.is_none() {
        ctx.push(
            raw.span(),
            "`device` is \"vendor:device\" as lspci -n shows it, 4 hex digits each, e.g. \"8086:10d3\"",
        );
    }
    parsed
}

fn method(ctx: &mut Ctx, r: &RawRom, span: Range<usize>) -> Option<FlashMethod> {
    match (r.method.get_ref().as_str(), &r.programmer) {
        ("mstflint", None) => Some(FlashMethod::Mstflint),
        ("mstflint", Some(p)) => {
            ctx.push(p.span(), "`programmer` is for method \"flashrom\"");
            None
        }
        ("flashrom", Some(p)) => {
            let ok = !p.get_ref().is_empty()
                && p.get_ref()
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b == b'_');
            if !ok {
                ctx.push(
                    p.span(),
                    "a flashrom programmer is a name such as \"nicintel_spi\"",
                );
            }
            ok.then(|| FlashMethod::Flashrom {
                programmer: p.get_ref().clone(),
            })
        }
        ("flashrom", None) => {
            ctx.push(
                span,
                "method \"flashrom\" needs the card's `programmer` (e.g. \"nicintel_spi\")",
            );
            None
        }
        (other, _) => {
            ctx.push(
                r.method.span(),
                format!("unknown flashing method `{other}`: use \"mstflint\" or \"flashrom\""),
            );
            None
        }
    }
}
