//! `[kernel]` and `[modules]`: a kernel built from source (its config
//! base or file, fragments, the modules it keeps) and a module archive
//! (the wanted modules, modprobe.d files, firmware, compressions).

use std::path::PathBuf;

use toml::Spanned;

use super::schema::*;
use super::{location, output_path, recipe_file, Ctx};
use crate::arch::Arch;
use crate::archive::Compression;

/// A kernel built from source (`[kernel]`).
#[derive(Debug, Clone)]
pub struct Kernel {
    pub output: String,
    pub source: String,
    pub arch: Arch,
    pub config: KernelConfigFrom,
    /// (name as written in the recipe, resolved path)
    pub fragments: Vec<(String, PathBuf)>,
    pub embed_initramfs: bool,
    /// Wanted modules from the kernel's own `=m` modules (empty: none).
    pub modules: Vec<WantedModule>,
    /// Recipe file and line of each `modules` item, for errors.
    pub module_origins: Vec<String>,
}

#[derive(Debug, Clone)]
pub enum KernelConfigFrom {
    /// A `make` config target such as `tinyconfig`.
    Base(String),
    /// A full config file.
    File(PathBuf),
}

/// Config targets a recipe may start from.
pub const KERNEL_BASES: &[&str] = &["tinyconfig", "defconfig", "allnoconfig"];

#[derive(Debug, Clone)]
pub struct Modules {
    pub kernel: String,
    pub kernel_release: String,
    pub wanted: Vec<WantedModule>,
    /// (file as shown in messages, contents)
    pub modprobe_d: Vec<(String, String)>,
    pub firmware: Vec<String>,
    pub compressions: Vec<Compression>,
    /// Recipe file and the line of each `wanted` item, for errors.
    pub origins: Vec<String>,
}

/// A `wanted` entry, classified as modprobe would read it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WantedModule {
    Name(String),
    Alias(String),
    Glob(String),
}

impl WantedModule {
    pub fn parse(s: &str) -> WantedModule {
        if s.contains('/') {
            WantedModule::Glob(s.to_string())
        } else if s.contains(':') {
            WantedModule::Alias(s.to_string())
        } else {
            WantedModule::Name(s.to_string())
        }
    }
}

pub(super) fn modules(ctx: &mut Ctx, raw: RawModules) -> Option<Modules> {
    let before = ctx.errors.len();
    let kernel = ctx.deb_source(&raw.kernel);
    let release = raw.kernel_release.get_ref().clone();
    if release.is_empty() || release.contains('/') {
        ctx.push(
            raw.kernel_release.span(),
            "`kernel_release` must be a directory name under lib/modules/",
        );
    }
    if raw.wanted.is_empty() {
        ctx.push(raw.kernel.span(), "`wanted` lists no modules");
    }
    let origins = raw
        .wanted
        .iter()
        .map(|w| location(ctx.doc, w.span()))
        .collect();
    let wanted = raw
        .wanted
        .iter()
        .map(|w| WantedModule::parse(w.get_ref()))
        .collect();
    let base = ctx.doc.dir();
    let mut modprobe_d = Vec::new();
    for f in &raw.modprobe_d {
        let path = base.join(f.get_ref());
        match fs_err::read_to_string(&path) {
            Ok(text) => modprobe_d.push((f.get_ref().clone(), text)),
            Err(e) => ctx.push(f.span(), format!("cannot read {}: {e}", path.display())),
        }
    }
    let firmware = raw
        .firmware
        .iter()
        .filter_map(|f| ctx.deb_source(f))
        .collect();
    let mut compressions = Vec::new();
    for c in &raw.compressions {
        match c.get_ref().parse::<Compression>() {
            Ok(c @ (Compression::Gzip | Compression::Zstd)) => compressions.push(c),
            _ => ctx.push(c.span(), "module archives are written as \"gz\" or \"zst\""),
        }
    }
    (ctx.errors.len() == before).then(|| Modules {
        kernel: kernel.unwrap_or_default(),
        kernel_release: release,
        wanted,
        modprobe_d,
        firmware,
        compressions,
        origins,
    })
}

pub(super) fn kernel(
    ctx: &mut Ctx,
    raw: Spanned<RawKernel>,
    recipe_arch: Arch,
    has_initramfs: bool,
) -> Option<Kernel> {
    let span = raw.span();
    let raw = raw.into_inner();
    let before = ctx.errors.len();
    let output = output_path(ctx, &raw.output).unwrap_or_default();
    ctx.source(&raw.source);
    // The recipe's arch; `[kernel] arch` may only say it again.
    if let Some(a) = &raw.arch {
        match Arch::parse(a.get_ref()) {
            Ok(arch) if arch == recipe_arch => {}
            Ok(_) => ctx.push(
                a.span(),
                format!("the recipe builds for `{recipe_arch}` (its top-level `arch`): a kernel of another architecture goes in a recipe of its own"),
            ),
            Err(why) => ctx.push(a.span(), why),
        }
    }
    let base = ctx.doc.dir();
    let config = match (&raw.base, &raw.config) {
        (Some(b), None) if KERNEL_BASES.contains(&b.get_ref().as_str()) => {
            Some(KernelConfigFrom::Base(b.get_ref().clone()))
        }
        (Some(b), None) => {
            let msg = format!("unknown `base`: use one of {}", KERNEL_BASES.join(", "));
            ctx.push(b.span(), msg);
            None
        }
        (None, Some(c)) => recipe_file(ctx, &base, c).map(KernelConfigFrom::File),
        (Some(_), Some(c)) => {
            ctx.push(c.span(), "give either `base` or `config`, not both");
            None
        }
        (None, None) => {
            ctx.push(
                span.clone(),
                "[kernel] needs `base` (e.g. \"tinyconfig\") or `config`",
            );
            None
        }
    };
    let fragments = raw
        .fragments
        .iter()
        .filter_map(|f| Some((f.get_ref().clone(), recipe_file(ctx, &base, f)?)))
        .collect();
    let embed = match &raw.embed_initramfs {
        Some(e) if *e.get_ref() && !has_initramfs => {
            ctx.push(
                e.span(),
                "`embed_initramfs` needs an [initramfs] in this recipe",
            );
            false
        }
        Some(e) => *e.get_ref(),
        None => has_initramfs,
    };
    let module_origins = raw
        .modules
        .iter()
        .map(|w| location(ctx.doc, w.span()))
        .collect();
    let modules = raw
        .modules
        .iter()
        .map(|w| WantedModule::parse(w.get_ref()))
        .collect();
    (ctx.errors.len() == before).then(|| Kernel {
        output,
        source: raw.source.into_inner(),
        arch: recipe_arch,
        config: config.expect("checked above"),
        fragments,
        embed_initramfs: embed,
        modules,
        module_origins,
    })
}
