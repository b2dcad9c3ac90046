//! `[ipxe]`: stage1 iPXE builds, validated into [`Ipxe`]. The embedded
//! script is rendered here so that a missing variable points into the
//! template before anything runs.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::schema::RawIpxe;
use super::{recipe_dir, recipe_file, render_file, Ctx, Vars};

/// Platforms (iPXE's `bin-<arch>-<platform>` build directories) each
/// architecture may build, and the cross compiler prefix it needs.
pub const ARCHES: &[(&str, &[&str], Option<&str>)] = &[
    (
        "x86_64",
        &["bin", "bin-x86_64-pcbios", "bin-x86_64-efi"],
        None,
    ),
    ("arm64", &["bin-arm64-efi"], Some("aarch64-linux-gnu-")),
];

/// Output formats iPXE's make knows; `.rom`/`.mrom` are NIC ROMs.
const FORMATS: &[&str] = &[
    "efi", "efirom", "efidrv", "kpxe", "kkpxe", "kkkpxe", "lkrn", "pxe", "rom", "mrom", "usb",
    "iso", "dsk", "hd", "raw",
];

#[derive(Debug, Clone)]
pub struct Ipxe {
    pub source: String,
    pub script_template: PathBuf,
    /// The embedded script, rendered.
    pub script: String,
    pub config: Option<PathBuf>,
    /// Patch files, in the order they apply.
    pub patches: Vec<PathBuf>,
    pub trust: Vec<PathBuf>,
    pub certs: Vec<PathBuf>,
    /// Architecture → targets.
    pub targets: BTreeMap<String, Vec<IpxeTarget>>,
}

/// One make target, e.g. `bin-x86_64-efi/ipxe.efi`.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct IpxeTarget {
    pub platform: String,
    pub file: String,
}

impl IpxeTarget {
    pub fn make_target(&self) -> String {
        format!("{}/{}", self.platform, self.file)
    }

    /// `rom` for NIC ROMs, `ipxe` for everything else (manifest kinds).
    pub fn kind(&self) -> &'static str {
        if self.file.ends_with(".rom") || self.file.ends_with(".mrom") {
            "rom"
        } else {
            "ipxe"
        }
    }
}

/// The cross-compiler prefix for `arch` (`None`: the host compiler).
pub fn cross_prefix(arch: &str) -> Option<&'static str> {
    ARCHES
        .iter()
        .find(|(a, _, _)| *a == arch)
        .and_then(|(_, _, c)| *c)
}

pub(super) fn ipxe(ctx: &mut Ctx, raw: RawIpxe, vars: &Vars) -> Option<Ipxe> {
    let before = ctx.errors.len();
    let base = ctx.doc.dir();
    ctx.source(&raw.source);
    let script_template = recipe_file(ctx, &base, &raw.script);
    let script = script_template
        .as_ref()
        .and_then(|t| render_file(ctx, t, raw.script.span(), vars));
    let config = raw
        .config
        .as_ref()
        .and_then(|c| recipe_dir(ctx, &base, c, "config directory"));
    let patches = raw
        .patches
        .as_ref()
        .and_then(|p| recipe_dir(ctx, &base, p, "patch directory"))
        .map(|dir| patch_files(ctx, &dir, raw.patches.as_ref().map(Spanned::span)))
        .unwrap_or_default();
    let trust = raw
        .trust
        .iter()
        .filter_map(|t| recipe_file(ctx, &base, t))
        .collect();
    let certs = raw
        .certs
        .iter()
        .filter_map(|c| recipe_file(ctx, &base, c))
        .collect();
    let mut targets = BTreeMap::new();
    for (arch, list) in &raw.targets {
        if let Some(t) = arch_targets(ctx, arch, list) {
            targets.insert(arch.clone(), t);
        }
    }
    (ctx.errors.len() == before).then(|| Ipxe {
        source: raw.source.into_inner(),
        script_template: script_template.unwrap_or_default(),
        script: script.unwrap_or_default(),
        config,
        patches,
        trust,
        certs,
        targets,
    })
}

/// Files of the patch directory in byte order of their names (`0001-…`).
fn patch_files(ctx: &mut Ctx, dir: &Path, span: Option<std::ops::Range<usize>>) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match std::fs::read_dir(dir) {
        Ok(entries) => entries
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.is_file())
            .collect(),
        Err(e) => {
            ctx.push(
                span.unwrap_or(0..0),
                format!("cannot list {}: {e}", dir.display()),
            );
            return Vec::new();
        }
    };
    files.sort();
    files
}

fn arch_targets(
    ctx: &mut Ctx,
    arch: &str,
    list: &Spanned<Vec<Spanned<String>>>,
) -> Option<Vec<IpxeTarget>> {
    let Some((_, platforms, _)) = ARCHES.iter().find(|(a, _, _)| *a == arch) else {
        let known: Vec<&str> = ARCHES.iter().map(|(a, _, _)| *a).collect();
        ctx.push(
            list.span(),
            format!(
                "unknown architecture `{arch}`: use one of {}",
                known.join(", ")
            ),
        );
        return None;
    };
    let mut targets: Vec<IpxeTarget> = Vec::new();
    for t in list.get_ref() {
        let parsed = parse_target(t.get_ref(), platforms);
        match parsed {
            Ok(target) if targets.iter().any(|x| x.file == target.file) => {
                ctx.push(
                    t.span(),
                    format!("two targets write `{}` for {arch}", target.file),
                );
            }
            Ok(target) => targets.push(target),
            Err(why) => ctx.push(t.span(), why),
        }
    }
    Some(targets)
}

fn parse_target(t: &str, platforms: &[&str]) -> Result<IpxeTarget, String> {
    let (platform, file) = t
        .split_once('/')
        .ok_or_else(|| format!("`{t}` is not `<platform>/<file>` (e.g. `bin/ipxe.lkrn`)"))?;
    if !platforms.contains(&platform) {
        return Err(format!(
            "`{platform}` is not a platform of this architecture: use one of {}",
            platforms.join(", ")
        ));
    }
    let ext = file.rsplit_once('.').map(|(_, e)| e).unwrap_or_default();
    let stem_ok = file
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
    if !FORMATS.contains(&ext) || !stem_ok || file.starts_with('.') {
        return Err(format!(
            "`{file}` is not an iPXE output: a name with one of the formats {}",
            FORMATS.join(", ")
        ));
    }
    Ok(IpxeTarget {
        platform: platform.to_string(),
        file: file.to_string(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn targets_are_platform_and_file() {
        let x86 = ARCHES[0].1;
        let t = parse_target("bin-x86_64-efi/snponly.efi", x86).unwrap();
        assert_eq!(
            (t.platform.as_str(), t.file.as_str()),
            ("bin-x86_64-efi", "snponly.efi")
        );
        assert_eq!(
            parse_target("bin/15b31003.mrom", x86).unwrap().kind(),
            "rom"
        );
        assert!(parse_target("bin-arm64-efi/ipxe.efi", x86)
            .unwrap_err()
            .contains("not a platform"));
        assert!(parse_target("bin/ipxe.exe", x86)
            .unwrap_err()
            .contains("not an iPXE output"));
        assert!(parse_target("ipxe.lkrn", x86).is_err());
    }
}
