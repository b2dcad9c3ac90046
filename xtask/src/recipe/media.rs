//! Boot media sections of a recipe: `cmdline`, `[uki]`, `[iso]`,
//! `[hosts]` and `[script]`, validated into [`Media`]. Per-host kernel
//! arguments and the script are rendered here, so that a missing host field
//! or an unknown variable is reported at load time with its location.

use std::path::PathBuf;

use toml::Spanned;

use super::hosts::{self, Host};
use super::schema::{RawHosts, RawIso, RawRecipe, RawScript, RawUki};
use super::{output_path, recipe_file, render_file, Ctx, RecipeErrors, Vars};
use crate::arch::Arch;
use crate::template::Syntax;

/// The kernel's `COMMAND_LINE_SIZE` on x86 is 2048 bytes with the NUL, and
/// isolinux prepends `BOOT_IMAGE=/boot/vmlinuz `.
pub const MAX_CMDLINE: usize = 2047 - "BOOT_IMAGE=/boot/vmlinuz ".len();

/// Default ISO 9660 volume id.
const DEFAULT_VOLUME_ID: &str = "KILN";

#[derive(Debug, Clone, Default)]
pub struct Media {
    /// Kernel arguments for every medium (may be empty).
    pub cmdline: String,
    pub uki: Option<Uki>,
    pub iso: Option<Iso>,
    /// One ISO per host (needs `iso`).
    pub hosts: Vec<HostMedia>,
    pub script: Option<Script>,
}

#[derive(Debug, Clone)]
pub struct Uki {
    pub output: String,
    /// A `deb` source with the systemd EFI stub.
    pub stub: String,
}

#[derive(Debug, Clone)]
pub struct Iso {
    pub output: String,
    /// The BIOS path: `deb` sources with isolinux and syslinux's
    /// ldlinux.c32 (x86_64); `None` for a UEFI-only ISO (arm64).
    pub bios: Option<Bios>,
    pub volume_id: String,
}

#[derive(Debug, Clone)]
pub struct Bios {
    pub isolinux: String,
    pub syslinux: String,
}

#[derive(Debug, Clone)]
pub struct HostMedia {
    pub hostname: String,
    /// The recipe's cmdline followed by the host's rendered arguments.
    pub cmdline: String,
}

#[derive(Debug, Clone)]
pub struct Script {
    pub output: String,
    pub template: PathBuf,
    /// The rendered text.
    pub text: String,
}

/// The media sections of `raw`. `kernel_output` is the recipe's kernel
/// artifact (media boot it); `None` when the recipe builds no kernel.
pub(super) fn media(
    ctx: &mut Ctx,
    raw: &mut RawRecipe,
    vars: &Vars,
    kernel_output: Option<&str>,
    arch: Arch,
) -> Media {
    let cmdline = raw
        .cmdline
        .as_ref()
        .map(|c| checked_cmdline(ctx, c.span(), c.get_ref().trim().to_string(), None))
        .unwrap_or_default();
    let mut media = Media {
        cmdline,
        ..Media::default()
    };
    let needs_kernel = [
        raw.uki.as_ref().map(|u| ("[uki]", u.span())),
        raw.iso.as_ref().map(|i| ("[iso]", i.span())),
        raw.script.as_ref().map(|s| ("[script]", s.span())),
    ];
    if kernel_output.is_none() {
        for (section, span) in needs_kernel.into_iter().flatten() {
            ctx.push(
                span,
                format!("{section} boots this recipe's kernel: add a [kernel] section"),
            );
        }
        return media;
    }
    media.uki = raw.uki.take().and_then(|u| uki(ctx, u.into_inner()));
    if let Some(iso_raw) = raw.iso.take() {
        if media.uki.is_none() {
            ctx.push(
                iso_raw.span(),
                "[iso] boots UEFI machines through the UKI: add a [uki] section",
            );
        }
        media.iso = iso(ctx, iso_raw, arch);
    }
    if let Some(h) = raw.hosts.take() {
        if media.iso.is_none() {
            ctx.push(
                h.span(),
                "[hosts] makes one ISO per host: add an [iso] section",
            );
        }
        media.hosts = host_media(ctx, h.into_inner(), &media.cmdline, vars, arch);
    }
    if let Some(s) = raw.script.take() {
        let kernel = kernel_output.unwrap_or_default();
        media.script = script(ctx, s.into_inner(), vars, &media.cmdline, kernel);
    }
    media
}

fn uki(ctx: &mut Ctx, raw: RawUki) -> Option<Uki> {
    let output = output_path(ctx, &raw.output)?;
    let stub = ctx.deb_source(&raw.stub)?;
    Some(Uki { output, stub })
}

fn iso(ctx: &mut Ctx, raw: Spanned<RawIso>, arch: Arch) -> Option<Iso> {
    let span = raw.span();
    let raw = raw.into_inner();
    let output = output_path(ctx, &raw.output);
    let bios = match (arch, &raw.isolinux, &raw.syslinux) {
        (Arch::X86_64, Some(isolinux), Some(syslinux)) => {
            let isolinux = ctx.deb_source(isolinux);
            let syslinux = ctx.deb_source(syslinux);
            Some(Some(Bios {
                isolinux: isolinux?,
                syslinux: syslinux?,
            }))
        }
        (Arch::X86_64, _, _) => {
            ctx.push(
                span,
                "an x86_64 ISO boots BIOS machines through isolinux: give `isolinux` and `syslinux` (deb sources)",
            );
            None
        }
        (Arch::Arm64, None, None) => Some(None),
        (Arch::Arm64, given, other) => {
            let key = given.as_ref().or(other.as_ref()).expect("one is given");
            ctx.push(
                key.span(),
                "arm64 ISOs boot UEFI only: isolinux and syslinux are BIOS boot loaders, leave them out",
            );
            None
        }
    };
    let volume_id = match &raw.volume_id {
        Some(v) if valid_volume_id(v.get_ref()) => v.get_ref().clone(),
        Some(v) => {
            ctx.push(v.span(), "`volume_id` must be 1 to 32 of A-Z, 0-9 and `_`");
            return None;
        }
        None => DEFAULT_VOLUME_ID.to_string(),
    };
    Some(Iso {
        output: output?,
        bios: bios?,
        volume_id,
    })
}

/// ISO 9660 d-characters, which every firmware and OS shows the same way.
fn valid_volume_id(v: &str) -> bool {
    (1..=32).contains(&v.len())
        && v.bytes()
            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_')
}

/// A cmdline must be one line of printable text that fits the kernel's
/// buffer; `host` names the host whose arguments made it too long.
fn checked_cmdline(
    ctx: &mut Ctx,
    span: std::ops::Range<usize>,
    cmdline: String,
    host: Option<&str>,
) -> String {
    let whose = host.map(|h| format!("host `{h}`: ")).unwrap_or_default();
    if cmdline.bytes().any(|b| b.is_ascii_control()) {
        ctx.push(
            span,
            format!("{whose}the cmdline must be one line of printable text"),
        );
    } else if cmdline.len() > MAX_CMDLINE {
        ctx.push(
            span,
            format!(
                "{whose}the cmdline is {} bytes; the kernel takes at most {MAX_CMDLINE} from a boot medium",
                cmdline.len()
            ),
        );
    }
    cmdline
}

/// One medium per inventory host of the recipe's architecture (an arm64
/// host gets the arm64 recipe's, not an x86_64 ISO it cannot boot).
fn host_media(ctx: &mut Ctx, raw: RawHosts, base: &str, vars: &Vars, arch: Arch) -> Vec<HostMedia> {
    let base_dir = ctx.doc.dir();
    let Some(file) = recipe_file(ctx, &base_dir, &raw.inventory) else {
        return Vec::new();
    };
    let hosts = match hosts::load(&file) {
        Ok(h) => h,
        Err(e) => {
            match e.downcast::<RecipeErrors>() {
                Ok(located) => ctx.errors.extend(located.0),
                Err(e) => ctx.push(raw.inventory.span(), format!("{e:#}")),
            }
            return Vec::new();
        }
    };
    hosts
        .iter()
        .filter(|h| h.arch == arch)
        .filter_map(|h| {
            let args = render_for_host(ctx, &raw.cmdline, h, vars)?;
            let full = [base, args.trim()].join(" ").trim().to_string();
            let cmdline = checked_cmdline(ctx, raw.cmdline.span(), full, Some(&h.hostname));
            Some(HostMedia {
                hostname: h.hostname.clone(),
                cmdline,
            })
        })
        .collect()
}

/// `[hosts] cmdline` for one host: recipe variables plus the host's fields.
/// A host field the host does not have names the host; anything else is
/// an unknown variable, located in the recipe.
fn render_for_host(
    ctx: &mut Ctx,
    text: &Spanned<String>,
    host: &Host,
    vars: &Vars,
) -> Option<String> {
    match host.render(text.get_ref(), vars, Syntax::Cmdline) {
        Ok(s) => Some(s),
        Err(e) => {
            let start = text.span().start + 1 + e.span.start;
            let span = start..text.span().start + 1 + e.span.end;
            ctx.push(span, e.message);
            None
        }
    }
}

/// The script rendered with the recipe's variables plus `cmdline` and
/// `kernel` (the kernel artifact's file name).
fn script(
    ctx: &mut Ctx,
    raw: RawScript,
    vars: &Vars,
    cmdline: &str,
    kernel: &str,
) -> Option<Script> {
    let output = output_path(ctx, &raw.output);
    let base_dir = ctx.doc.dir();
    let template = recipe_file(ctx, &base_dir, &raw.template)?;
    let mut all = vars.clone();
    all.insert("cmdline".into(), Some(cmdline.to_string()));
    let file_name = kernel.rsplit('/').next().unwrap_or(kernel);
    all.insert("kernel".into(), Some(file_name.to_string()));
    // `cmdline` is the whole command line (its host values were checked
    // when it was rendered) and `kernel` a file name Kiln chose.
    let composed = ["cmdline", "kernel"];
    let text = render_file(
        ctx,
        &template,
        raw.template.span(),
        &all,
        Syntax::Ipxe,
        &composed,
    )?;
    Some(Script {
        output: output?,
        template,
        text,
    })
}
