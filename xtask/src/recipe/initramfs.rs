//! `[initramfs]`: the image's compression, overlays, templates, busybox,
//! device nodes, and programs copied in from packages with their
//! libraries.

use std::path::PathBuf;

use toml::Spanned;

use super::schema::*;
use super::{image_path, output_path, recipe_dir, Ctx};
use crate::archive::entry::{Device, DeviceKind};
use crate::archive::Compression;
use crate::recipe::SourceKind;

#[derive(Debug, Clone)]
pub struct Initramfs {
    pub output: String,
    pub compression: Compression,
    pub level: Option<i32>,
    /// Overlay directories (resolved), merged in order.
    pub overlays: Vec<PathBuf>,
    pub templates: Vec<String>,
    pub busybox: Option<String>,
    pub devices: Vec<Device>,
    /// `deb` sources searched for `programs` and their libraries, in order.
    pub packages: Vec<String>,
    /// ELF programs (paths inside `packages`) copied in with their closure.
    pub programs: Vec<String>,
    /// Single files from sources (`[[initramfs.files]]`).
    pub files: Vec<ImageFile>,
    pub uid: u32,
    pub gid: u32,
}

/// One file of a source placed in the image (`[[initramfs.files]]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageFile {
    pub source: String,
    /// The source is a `deb` (its unpacked tree holds `member`).
    pub deb: bool,
    /// The path inside a tarball, tree or package; `None` for a file.
    pub member: Option<String>,
    pub path: String,
    pub mode: u32,
}

pub(super) fn initramfs(ctx: &mut Ctx, raw: RawInitramfs) -> Option<Initramfs> {
    let before = ctx.errors.len();
    let output = output_path(ctx, &raw.output).unwrap_or_default();
    let compression = raw
        .compression
        .get_ref()
        .parse::<Compression>()
        .unwrap_or_else(|_| {
            ctx.push(
                raw.compression.span(),
                "unknown compression: use one of gz, zst, xz, none",
            );
            Compression::None
        });
    if let Some(level) = &raw.level {
        let range = compression.levels();
        if !range.contains(level.get_ref()) {
            let msg = format!(
                "`level` {} is out of range for {compression}: use {} to {}",
                level.get_ref(),
                range.start(),
                range.end()
            );
            ctx.push(level.span(), msg);
        }
    }
    let base = ctx.doc.dir();
    let overlays = raw
        .overlays
        .iter()
        .filter_map(|o| recipe_dir(ctx, &base, o, "overlay directory"))
        .collect();
    let templates = raw
        .templates
        .iter()
        .filter_map(|t| image_path(ctx, t))
        .collect();
    let busybox = raw.busybox.as_ref().and_then(|b| ctx.deb_source(b));
    let devices = raw.devices.iter().filter_map(|d| device(ctx, d)).collect();
    let packages = raw
        .packages
        .iter()
        .filter_map(|p| ctx.deb_source(p))
        .collect();
    let programs = raw
        .programs
        .iter()
        .filter_map(|p| image_path(ctx, p))
        .collect();
    let files = raw
        .files
        .iter()
        .filter_map(|f| image_file(ctx, f))
        .collect();
    if let (Some(first), true) = (raw.programs.first(), raw.packages.is_empty()) {
        ctx.push(
            first.span(),
            "`programs` come from `packages`: list the deb sources that hold them and their libraries",
        );
    }
    (ctx.errors.len() == before).then(|| Initramfs {
        output,
        compression,
        level: raw.level.map(Spanned::into_inner),
        overlays,
        templates,
        busybox,
        devices,
        packages,
        programs,
        files,
        uid: raw.uid,
        gid: raw.gid,
    })
}

fn image_file(ctx: &mut Ctx, raw: &Spanned<RawImageFile>) -> Option<ImageFile> {
    let f = raw.get_ref();
    let source = ctx.source(&f.source).map(|s| s.kind.clone());
    let path = image_path(ctx, &f.path);
    let member = f.member.as_ref().map(|m| image_path(ctx, m));
    let mode = parse_mode(f.mode.get_ref());
    if mode.is_none() {
        ctx.push(
            f.mode.span(),
            "`mode` must be octal permission bits such as \"0755\"",
        );
    }
    // Any other source may be a single file or a tarball or tree: whether
    // `member` is needed is known once it is fetched (the step says so).
    let deb = matches!(source, Some(SourceKind::Deb { .. }));
    if deb && f.member.is_none() {
        ctx.push(
            f.source.span(),
            "a `deb` source is a package: give `member`, the file's path inside it",
        );
    }
    Some(ImageFile {
        source: f.source.get_ref().clone(),
        deb,
        member: member.flatten(),
        path: path?,
        mode: mode?,
    })
}

fn device(ctx: &mut Ctx, raw: &Spanned<RawDevice>) -> Option<Device> {
    let d = raw.get_ref();
    let path = image_path(ctx, &d.path)?;
    let kind = match d.kind.get_ref().as_str() {
        "char" => DeviceKind::Char,
        "block" => DeviceKind::Block,
        "fifo" => DeviceKind::Fifo,
        _ => {
            ctx.push(
                d.kind.span(),
                "device `type` must be one of char, block, fifo",
            );
            return None;
        }
    };
    let Some(mode) = parse_mode(d.mode.get_ref()) else {
        ctx.push(
            d.mode.span(),
            "`mode` must be octal permission bits such as \"0600\"",
        );
        return None;
    };
    Some(Device {
        path,
        kind,
        major: d.major,
        minor: d.minor,
        mode,
    })
}

pub(super) fn parse_mode(s: &str) -> Option<u32> {
    u32::from_str_radix(s, 8).ok().filter(|m| *m <= 0o7777)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_are_octal_and_bounded() {
        assert_eq!(parse_mode("0600"), Some(0o600));
        assert_eq!(parse_mode("4755"), Some(0o4755));
        assert_eq!(parse_mode("0999"), None);
        assert_eq!(parse_mode("77777"), None);
    }
}
