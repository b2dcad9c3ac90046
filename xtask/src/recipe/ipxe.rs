//! `[ipxe]`: stage1 iPXE builds, validated into [`Ipxe`]. The embedded
//! script is rendered here -- the recipe's and each inventory host's -- so
//! that a missing variable, a missing host field or a script too long for
//! `script_size` is reported before anything runs.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::combined::CombinedRom;
use super::hosts::{self, Host};
use super::layout::{default_host_path, Layout};
use super::schema::RawIpxe;
use super::{recipe_dir, recipe_file, render_file, Ctx, RecipeErrors, SourceError, Vars};
use crate::arch::Arch;
use crate::archive::ipxe_script::{self, DEFAULT_SCRIPT_SIZE, MAX_SCRIPT_SIZE, MIN_SCRIPT_SIZE};
use crate::archive::rom_version::RomVersion;
use crate::template::Syntax;

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
    pub targets: BTreeMap<Arch, Vec<IpxeTarget>>,
    /// Every script is padded to this many bytes.
    pub script_size: usize,
    /// The recipe's variables, for rendering the script per host.
    pub vars: Vars,
    /// The recipe file, for messages.
    pub recipe: PathBuf,
    /// The inventory file `hosts` names, if any.
    pub inventory: Option<PathBuf>,
    /// The hosts of the inventory named by `hosts`, with their scripts.
    pub hosts: Vec<IpxeHost>,
    /// Written into every ROM (`archive/rom_version.rs`).
    pub rom_version: Option<RomVersion>,
    /// `[[ipxe.combined]]`: ROMs chaining several targets' images.
    pub combined: Vec<CombinedRom>,
    /// `[[ipxe.layout]]`: where hosts' files go.
    pub layouts: Vec<Layout>,
}

/// One inventory host's stage1 files.
#[derive(Debug, Clone)]
pub struct IpxeHost {
    pub hostname: String,
    pub arch: Arch,
    /// The inventory's MACs of the machine (iPXE's `${mac}` form): how `serve` knows it.
    pub macs: Vec<String>,
    /// Its IPv4 address (for a DHCP server's fixed lease).
    pub ipv4_address: String,
    /// The host's script, padded to `script_size`.
    pub script: String,
    /// The architecture's targets this host gets: every patchable one but
    /// the ROMs its `roms` leaves out.
    pub targets: Vec<IpxeTarget>,
    /// The combined ROMs it gets (by the same rule).
    pub combined: Vec<CombinedRom>,
    /// File → its path under `output/`, for the files a layout places.
    pub paths: BTreeMap<String, String>,
}

impl IpxeHost {
    /// The names of the files this host gets: its targets' and its
    /// combined ROMs'.
    pub fn files(&self) -> impl Iterator<Item = &String> {
        let targets = self.targets.iter().map(|t| &t.file);
        targets.chain(self.combined.iter().map(|c| &c.file))
    }

    /// Where this host's `file` goes under `output/` (its artifact name).
    pub fn artifact_name(&self, recipe: &str, file: &str) -> String {
        match self.paths.get(file) {
            Some(path) => path.clone(),
            None => default_host_path(recipe, &self.hostname, file),
        }
    }

    /// What is patched for this host: its targets and the images its
    /// combined ROMs chain (which need not be files of its own).
    pub fn patch_targets(&self) -> Vec<IpxeTarget> {
        let mut all = self.targets.clone();
        for image in self.combined.iter().flat_map(|c| &c.images) {
            if !all.contains(image) {
                all.push(image.clone());
            }
        }
        all
    }
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

    /// `name` is this target's make target (`bin/ipxe.lkrn`) or its file.
    pub fn matches(&self, name: &str) -> bool {
        name == self.file || name == self.make_target()
    }

    /// `rom` for NIC ROMs (`.rom`, `.mrom`, `.efirom`), `ipxe` for
    /// everything else (manifest kinds).
    pub fn kind(&self) -> &'static str {
        match self.file.rsplit_once('.').map(|(_, ext)| ext) {
            Some("rom" | "mrom" | "efirom") => "rom",
            _ => "ipxe",
        }
    }

    /// A legacy BIOS ROM (`.rom`, `.mrom`): what carries a `rom_version`.
    pub fn is_legacy_rom(&self) -> bool {
        ipxe_script::is_legacy_rom(&self.file)
    }
}

pub(super) fn ipxe(ctx: &mut Ctx, raw: RawIpxe, vars: &Vars) -> Option<Ipxe> {
    let before = ctx.errors.len();
    let base = ctx.doc.dir();
    ctx.source(&raw.source);
    let script_template = recipe_file(ctx, &base, &raw.script);
    let script = script_template
        .as_ref()
        .and_then(|t| render_file(ctx, t, raw.script.span(), vars, Syntax::Ipxe, &[]));
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
        if let Some((arch, t)) = arch_targets(ctx, arch, list) {
            targets.insert(arch, t);
        }
    }
    let script_size = match &raw.script_size {
        None => DEFAULT_SCRIPT_SIZE,
        Some(n) => match usize::try_from(*n.get_ref()) {
            Ok(size) if (MIN_SCRIPT_SIZE..=MAX_SCRIPT_SIZE).contains(&size) => size,
            _ => {
                ctx.push(
                    n.span(),
                    format!("`script_size` must be {MIN_SCRIPT_SIZE} to {MAX_SCRIPT_SIZE} bytes"),
                );
                DEFAULT_SCRIPT_SIZE
            }
        },
    };
    if let Some(text) = &script {
        if text.len() > script_size {
            let at = raw
                .script_size
                .as_ref()
                .map_or(raw.script.span(), Spanned::span);
            ctx.push(
                at,
                format!(
                    "the rendered script is {} bytes; `script_size` is {script_size}: raise it",
                    text.len()
                ),
            );
        }
    }
    let rom_version = raw.rom_version.as_ref().and_then(|v| {
        RomVersion::parse(v.get_ref())
            .map_err(|why| ctx.push(v.span(), format!("`rom_version`: {why}")))
            .ok()
    });
    let builds_roms = targets.values().flatten().any(IpxeTarget::is_legacy_rom);
    if let (Some(v), Some(_), false) = (&raw.rom_version, rom_version, builds_roms) {
        ctx.push(
            v.span(),
            "`rom_version` is for NIC ROMs, and no target is a .rom or .mrom",
        );
    }
    let combined = super::combined::combined(ctx, &raw.combined, &targets);
    let layouts = super::layout::layouts(ctx, &raw.layout, &targets, &combined);
    let inventory = raw.hosts.as_ref().and_then(|h| recipe_file(ctx, &base, h));
    if ctx.errors.len() != before {
        return None;
    }
    let mut ipxe = Ipxe {
        source: raw.source.into_inner(),
        script_template: script_template.unwrap_or_default(),
        script: script.unwrap_or_default(),
        config,
        patches,
        trust,
        certs,
        targets,
        script_size,
        vars: vars.clone(),
        recipe: ctx.doc.file.clone(),
        inventory: inventory.clone(),
        hosts: Vec::new(),
        rom_version,
        combined,
        layouts,
    };
    if let (Some(file), Some(at)) = (inventory, raw.hosts.as_ref()) {
        match hosts::load(&file) {
            Ok(list) => match ipxe.host_files(&list) {
                Ok(h) => ipxe.hosts = h,
                Err(errors) => ctx.errors.extend(errors.into_located(at.span(), ctx)),
            },
            Err(e) => match e.downcast::<RecipeErrors>() {
                Ok(located) => ctx.errors.extend(located.0),
                Err(e) => ctx.push(at.span(), format!("{e:#}")),
            },
        }
    }
    (ctx.errors.len() == before).then_some(ipxe)
}

/// Why hosts' files cannot be made: each problem names the host, with a
/// location in the script template when the template is at fault.
#[derive(Debug, Default)]
pub struct HostErrors(pub Vec<(String, Option<InTemplate>)>);

/// Where in a template (its file, text and the byte range): the script,
/// or a layout's `path` in the recipe.
#[derive(Debug)]
pub struct InTemplate(PathBuf, String, Range<usize>);

impl HostErrors {
    fn into_located(self, at: Range<usize>, ctx: &Ctx) -> Vec<SourceError> {
        self.0
            .into_iter()
            .map(|(message, place)| match place {
                Some(InTemplate(file, text, span)) => {
                    SourceError::new(&file, &text, span, message).label("in this template")
                }
                None => ctx.doc.error(at.clone(), message),
            })
            .collect()
    }
}

impl std::fmt::Display for HostErrors {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        for (i, (message, place)) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            match place {
                Some(InTemplate(file, text, span)) => {
                    let (line, col) = super::diag::line_col(text, span.start);
                    write!(f, "{message} ({}:{line}:{col})", file.display())?;
                }
                None => write!(f, "{message}")?,
            }
        }
        Ok(())
    }
}

impl std::error::Error for HostErrors {}

impl Ipxe {
    /// Each host's script (recipe variables, then the host's fields), padded
    /// to `script_size`, and the targets it gets. Every host is checked;
    /// all problems are returned together.
    pub fn host_files(&self, hosts: &[Host]) -> Result<Vec<IpxeHost>, HostErrors> {
        let text = fs_err::read_to_string(&self.script_template).unwrap_or_default();
        let mut errors = HostErrors::default();
        let mut out = Vec::new();
        let version = self.rom_version.map(|v| v.to_string());
        for h in hosts {
            let who = format!("host `{}` ({})", h.hostname, h.origin);
            let Some(targets) = self.targets.get(&h.arch) else {
                let built: Vec<&str> = self.targets.keys().map(|a| a.name()).collect();
                errors.0.push((
                    format!(
                        "{who}: `arch` is {}, but {} builds only {}",
                        h.arch,
                        self.recipe.display(),
                        built.join(", ")
                    ),
                    None,
                ));
                continue;
            };
            let combined: Vec<&CombinedRom> =
                self.combined.iter().filter(|c| c.arch == h.arch).collect();
            let roms: Vec<&str> = targets
                .iter()
                .filter(|t| t.kind() == "rom")
                .map(|t| t.file.as_str())
                .chain(combined.iter().map(|c| c.file.as_str()))
                .collect();
            if let Some(wanted) = &h.roms {
                for r in wanted.iter().filter(|r| !roms.contains(&r.as_str())) {
                    let built = &roms;
                    errors.0.push((
                        format!(
                            "{who}: `roms` names {r}, which {} does not build for {}; it builds {}",
                            self.recipe.display(),
                            h.arch,
                            if built.is_empty() {
                                "no ROMs".to_string()
                            } else {
                                built.join(", ")
                            }
                        ),
                        None,
                    ));
                }
            }
            let script = match h.render(&text, &self.vars, Syntax::Ipxe) {
                Ok(s) => s,
                Err(e) => {
                    let place = InTemplate(self.script_template.clone(), text.clone(), e.span);
                    errors.0.push((e.message, Some(place)));
                    continue;
                }
            };
            let script = match ipxe_script::padded(&script, self.script_size) {
                Ok(s) => s,
                Err(len) => {
                    errors.0.push((
                        format!(
                            "{who}: its stage1 script is {len} bytes; the embedded script holds {} (`script_size` in {})",
                            self.script_size,
                            self.recipe.display()
                        ),
                        None,
                    ));
                    continue;
                }
            };
            let targets: Vec<IpxeTarget> = targets
                .iter()
                .filter(|t| ipxe_script::finish_of(&t.file).is_some())
                .filter(|t| {
                    t.kind() != "rom" || h.roms.as_ref().is_none_or(|r| r.contains(&t.file))
                })
                .cloned()
                .collect();
            let combined: Vec<CombinedRom> = combined
                .into_iter()
                .filter(|c| h.roms.as_ref().is_none_or(|r| r.contains(&c.file)))
                .cloned()
                .collect();
            let mut host = IpxeHost {
                hostname: h.hostname.clone(),
                arch: h.arch,
                macs: h.macs.clone(),
                ipv4_address: h.vars["ipv4_address"].clone(),
                script,
                targets,
                combined,
                paths: BTreeMap::new(),
            };
            let placed: Vec<&Layout> = (self.layouts.iter())
                .filter(|l| host.files().any(|f| *f == l.file))
                .collect();
            for layout in placed {
                match layout.path_for(h, &self.vars, version.clone()) {
                    Ok(path) => {
                        host.paths.insert(layout.file.clone(), path);
                    }
                    Err(why) => {
                        let (file, text, span) = layout.at.clone();
                        errors.0.push((why, Some(InTemplate(file, text, span))));
                    }
                }
            }
            out.push(host);
        }
        self.check_paths(&out, &mut errors);
        match errors.0.is_empty() {
            true => Ok(out),
            false => Err(errors),
        }
    }
}

impl Ipxe {
    /// No two hosts' files may share a path (a layout that leaves out
    /// `{{hostname}}`, or lands on another host's default path).
    fn check_paths(&self, hosts: &[IpxeHost], errors: &mut HostErrors) {
        let recipe = self
            .recipe
            .file_stem()
            .unwrap_or_default()
            .to_string_lossy();
        let mut seen: BTreeMap<String, (&str, &str)> = BTreeMap::new();
        for h in hosts {
            for file in h.files() {
                let path = h.artifact_name(&recipe, file);
                match seen.get(&path) {
                    Some((other, other_file)) => {
                        let layout = self.layouts.iter().find(|l| &l.file == file);
                        let place = layout.map(|l| {
                            let (f, t, s) = l.at.clone();
                            InTemplate(f, t, s)
                        });
                        errors.0.push((
                            format!(
                                "hosts `{other}` ({other_file}) and `{}` ({file}) would both write `{path}`: put a host variable such as {{{{hostname}}}} in the layout",
                                h.hostname
                            ),
                            place,
                        ));
                    }
                    None => {
                        seen.insert(path, (&h.hostname, file));
                    }
                }
            }
        }
    }
}

/// Files of the patch directory in byte order of their names (`0001-…`).
fn patch_files(ctx: &mut Ctx, dir: &Path, span: Option<std::ops::Range<usize>>) -> Vec<PathBuf> {
    let mut files: Vec<PathBuf> = match fs_err::read_dir(dir) {
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

/// One `[ipxe.targets]` entry: its architecture and parsed targets.
fn arch_targets(
    ctx: &mut Ctx,
    name: &str,
    list: &Spanned<Vec<Spanned<String>>>,
) -> Option<(Arch, Vec<IpxeTarget>)> {
    let Some(arch) = Arch::from_name(name) else {
        ctx.push(
            list.span(),
            format!(
                "unknown architecture `{name}`: use one of {}",
                Arch::names()
            ),
        );
        return None;
    };
    let platforms = arch.ipxe_platforms();
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
    Some((arch, targets))
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
        let x86 = Arch::X86_64.ipxe_platforms();
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
