//! Recipes: TOML files under `recipes/` parsed into a validated model.
//!
//! Architecture invariant: this is the only module that sees raw TOML. Every
//! error it returns names the file, line and column (see `diag`). After
//! `load`, the rest of Kiln handles typed values only.

// Located errors carry their source text; they are built only on the cold
// path of a broken recipe, so their size does not matter.
#![allow(clippy::result_large_err)]

pub mod combined;
pub mod diag;
pub mod hosts;
mod initramfs;
pub mod ipxe;
mod kernel;
pub mod layout;
pub mod media;
mod paths;
pub mod pins;
pub mod rom;
mod schema;
mod signing;
mod sources;

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::de::DeserializeOwned;
use toml::Spanned;

use crate::arch::Arch;
use crate::template;
pub use crate::template::Vars;
pub use diag::{RecipeErrors, SourceError};
pub use initramfs::{ImageFile, Initramfs};
pub use ipxe::{Ipxe, IpxeTarget};
pub use kernel::{Kernel, KernelConfigFrom, Modules, WantedModule, KERNEL_BASES};
pub use media::{HostMedia, Iso, Media, Script, Uki};
use paths::{image_path, location, output_path, recipe_dir, recipe_file};
pub use rom::{FlashMethod, Rom, RomFrom};
use schema::*;
pub use signing::{EfiKind, Signing, VerifyKind};
pub use sources::{Source, SourceKind, Sources};

/// Every recipe in a directory plus its pinned sources.
#[derive(Debug)]
pub struct Recipes {
    pub dir: PathBuf,
    /// Loaded for a build with the operator's signing key ([`load_for`]): the iPXE scripts'
    /// `{{imgverify}}` says so, and the plan must agree.
    pub signing_key: bool,
    pub sources: BTreeMap<String, Source>,
    /// `[mirrors] deb` of sources.toml (see `sources::Sources`).
    pub deb_mirrors: Vec<String>,
    pub targets: BTreeMap<String, Recipe>,
}

impl Recipes {
    /// The `[ipxe]` section of recipe `name`, or an error saying it has none.
    pub fn ipxe(&self, name: &str) -> anyhow::Result<&Ipxe> {
        self.targets
            .get(name)
            .and_then(|r| r.ipxe.as_ref())
            .ok_or_else(|| {
                anyhow::anyhow!(
                    "no `{name}` recipe with an [ipxe] section in {}",
                    self.dir.display()
                )
            })
    }
}

#[derive(Debug)]
pub struct Recipe {
    pub name: String,
    /// Path as given (relative to where Kiln was started), for messages.
    pub file: PathBuf,
    pub description: Option<String>,
    pub epoch: u64,
    /// What the initramfs, kernel, modules and media are built for.
    pub arch: Arch,
    pub variables: Vars,
    pub initramfs: Option<Initramfs>,
    pub modules: Option<Modules>,
    pub kernel: Option<Kernel>,
    /// ISO, UKI, per-host ISOs and the chain script (all boot `kernel`).
    pub media: Media,
    pub ipxe: Option<Ipxe>,
    /// NIC ROMs for the image's updater (`[[rom]]`).
    pub roms: Vec<Rom>,
    /// What is signed when a key is given (`[signing]`).
    pub signing: Signing,
}

/// Files in the recipes directory that are not build targets: the pinned
/// sources and the host inventory.
const NOT_TARGETS: &[&str] = &["sources", "hosts"];

/// Loads `sources.toml` and every `<target>.toml` in `dir`. `overrides` are
/// `--var NAME=VALUE` values (they must name declared variables).
pub fn load(dir: &Path, overrides: &BTreeMap<String, String>) -> Result<Recipes> {
    load_for(dir, overrides, false)
}

/// [`load`] for a build that has the operator's signing key (`signing`) or not: it decides the
/// iPXE scripts' built-in `{{imgverify}}` (`1` when the recipe's iPXE verifies what it chains,
/// which needs the key's CA built in; empty otherwise).
pub fn load_for(
    dir: &Path,
    overrides: &BTreeMap<String, String>,
    signing: bool,
) -> Result<Recipes> {
    let sources_file = dir.join("sources.toml");
    let Sources {
        sources,
        deb_mirrors,
    } = sources::load_sources(&sources_file)?;
    let mut targets = BTreeMap::new();
    let mut outputs = BTreeMap::new();
    for file in toml_files(dir)? {
        let name = file
            .file_stem()
            .and_then(|s| s.to_str())
            .unwrap_or_default()
            .to_string();
        if NOT_TARGETS.contains(&name.as_str()) {
            continue;
        }
        let recipe = load_recipe(&file, &name, &sources, overrides, signing, &mut outputs)?;
        targets.insert(name, recipe);
    }
    check_overrides(&targets, overrides)?;
    Ok(Recipes {
        dir: dir.to_path_buf(),
        signing_key: signing,
        sources,
        deb_mirrors,
        targets,
    })
}

/// A `--var` that no recipe declares is a typo, not a no-op.
fn check_overrides(
    targets: &BTreeMap<String, Recipe>,
    overrides: &BTreeMap<String, String>,
) -> Result<()> {
    let declared: Vec<&str> = targets
        .values()
        .flat_map(|r| r.variables.keys())
        .map(String::as_str)
        .collect();
    for name in overrides.keys() {
        if !declared.contains(&name.as_str()) {
            let hint = diag::did_you_mean(name, declared.iter().copied());
            anyhow::bail!("--var {name}: no recipe declares a variable `{name}`{hint}");
        }
    }
    Ok(())
}

fn toml_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let entries = fs_err::read_dir(dir)
        .with_context(|| format!("reading the recipes directory {}", dir.display()))?;
    let mut files = Vec::new();
    for entry in entries {
        let path = entry
            .with_context(|| format!("listing {}", dir.display()))?
            .path();
        if path.extension().is_some_and(|e| e == "toml") {
            files.push(path);
        }
    }
    files.sort();
    Ok(files)
}

/// A file's text plus the parse, with serde errors turned into located ones.
struct Doc {
    file: PathBuf,
    text: String,
}

impl Doc {
    fn read(file: &Path) -> Result<Doc> {
        let bytes = fs_err::read(file)
            .with_context(|| format!("reading recipe file {}", file.display()))?;
        let text = match String::from_utf8(bytes) {
            Ok(text) => text,
            Err(e) => {
                // Located like any other recipe error: the valid text up
                // to the first bad byte, which is where the caret points.
                let at = e.utf8_error().valid_up_to();
                let text = String::from_utf8_lossy(e.as_bytes()).into_owned();
                let message = format!(
                    "byte 0x{:02x} is not UTF-8 here: a recipe is UTF-8 text",
                    e.as_bytes()[at]
                );
                let lossy_at = String::from_utf8_lossy(&e.as_bytes()[..at]).len();
                let err = SourceError::new(file, &text, lossy_at..lossy_at + 1, message);
                return Err(RecipeErrors(vec![err]).into());
            }
        };
        Ok(Doc {
            file: file.to_path_buf(),
            text,
        })
    }

    fn parse<T: DeserializeOwned>(&self) -> Result<T, RecipeErrors> {
        toml::from_str(&self.text).map_err(|e| RecipeErrors(vec![self.de_error(&e)]))
    }

    fn error(&self, span: Range<usize>, message: impl Into<String>) -> SourceError {
        SourceError::new(&self.file, &self.text, span, message)
    }

    /// The directory relative paths in this file are resolved against.
    fn dir(&self) -> PathBuf {
        self.file.parent().unwrap_or(Path::new(".")).to_path_buf()
    }

    /// The key of a `key = value` line whose value starts at `offset`.
    fn key_at(&self, offset: usize) -> Option<String> {
        let line_start = self.text[..offset.min(self.text.len())]
            .rfind('\n')
            .map_or(0, |i| i + 1);
        let (key, _) = self.text[line_start..offset].split_once('=')?;
        let key = key.trim();
        (!key.is_empty()).then(|| key.to_string())
    }

    fn de_error(&self, e: &toml::de::Error) -> SourceError {
        let span = e.span().unwrap_or(0..0);
        let mut message =
            first_line(e.message().trim()).replace("expected i64", "expected an integer");
        if let Some(key) = self
            .key_at(span.start)
            .filter(|_| message.starts_with("invalid"))
        {
            message = format!("`{key}`: {message}");
        }
        let err = self.error(span, message.clone());
        match unknown_field_hint(&message) {
            Some(help) => err.label("unknown key").help(help),
            None => err,
        }
    }
}

fn first_line(s: &str) -> String {
    s.lines().next().unwrap_or(s).to_string()
}

/// serde says "unknown field `x`, expected one of `a`, `b`": suggest the
/// nearest valid key and list them all.
fn unknown_field_hint(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    let (unknown, expected) = rest.split_once('`')?;
    let valid: Vec<&str> = expected.split('`').skip(1).step_by(2).collect();
    Some(diag::unknown_name_help(unknown, &valid, "keys here"))
}

fn load_recipe(
    file: &Path,
    name: &str,
    sources: &BTreeMap<String, Source>,
    overrides: &BTreeMap<String, String>,
    signing_key: bool,
    outputs: &mut BTreeMap<String, String>,
) -> Result<Recipe> {
    let doc = Doc::read(file)?;
    let mut raw: RawRecipe = doc.parse()?;
    let mut errors = Vec::new();
    let epoch = match u64::try_from(*raw.epoch.get_ref()) {
        Ok(e) => e,
        Err(_) => {
            errors.push(doc.error(raw.epoch.span(), "`epoch` must be zero or positive"));
            0
        }
    };
    let arch = match &raw.arch {
        None => Arch::DEFAULT,
        Some(a) => Arch::parse(a.get_ref()).unwrap_or_else(|why| {
            errors.push(doc.error(a.span(), why));
            Arch::DEFAULT
        }),
    };
    let variables = variables(std::mem::take(&mut raw.variables), overrides);
    let mut ctx = Ctx {
        doc: &doc,
        sources,
        errors: &mut errors,
        outputs,
    };
    let initramfs = raw
        .initramfs
        .take()
        .and_then(|raw| initramfs::initramfs(&mut ctx, raw.into_inner()));
    let modules = raw
        .modules
        .take()
        .and_then(|raw| kernel::modules(&mut ctx, raw.into_inner()));
    let has_initramfs = initramfs.is_some();
    // A [kernel] with errors of its own still counts as there for the
    // sections that boot it: they must not add "add a [kernel] section".
    let kernel_given = raw.kernel.is_some();
    let kernel = raw
        .kernel
        .take()
        .and_then(|raw| kernel::kernel(&mut ctx, raw, arch, has_initramfs));
    let kernel_output = kernel
        .as_ref()
        .map(|k| k.output.as_str())
        .or(kernel_given.then_some(""));
    let media = media::media(&mut ctx, &mut raw, &variables, kernel_output, arch);
    let has = signing::Has {
        uki: media.uki.is_some(),
        kernel: kernel_given,
        ipxe: raw.ipxe.is_some(),
        initramfs: has_initramfs,
        modules: modules.is_some() || kernel.as_ref().is_some_and(|k| !k.modules.is_empty()),
        script: media.script.is_some(),
    };
    let signing = signing::signing(&mut ctx, raw.signing.take(), &has);
    // iPXE scripts also get `{{imgverify}}`: whether this iPXE checks what it chains.
    let mut ipxe_vars = variables.clone();
    let verifies = signing_key && signing.ipxe_verifies();
    ipxe_vars.insert(
        "imgverify".into(),
        Some(if verifies { "1" } else { "" }.into()),
    );
    let ipxe = raw
        .ipxe
        .take()
        .and_then(|i| ipxe::ipxe(&mut ctx, i.into_inner(), &ipxe_vars));
    let roms = rom::roms(&mut ctx, std::mem::take(&mut raw.rom), has_initramfs);
    if !errors.is_empty() {
        return Err(RecipeErrors(errors).into());
    }
    Ok(Recipe {
        name: name.to_string(),
        file: file.to_path_buf(),
        description: raw.description.take(),
        epoch,
        arch,
        variables,
        initramfs,
        modules,
        kernel,
        media,
        ipxe,
        roms,
        signing,
    })
}

fn variables(
    raw: BTreeMap<String, Spanned<RawVariable>>,
    overrides: &BTreeMap<String, String>,
) -> Vars {
    raw.into_iter()
        .map(|(name, v)| {
            let default = match v.into_inner() {
                RawVariable::Value(s) => Some(s),
                RawVariable::Declared(d) => d.default,
            };
            let value = overrides.get(&name).cloned().or(default);
            (name, value)
        })
        .collect()
}

/// Validation state shared by the section checks: errors are collected, not
/// returned one at a time.
struct Ctx<'a> {
    doc: &'a Doc,
    sources: &'a BTreeMap<String, Source>,
    errors: &'a mut Vec<SourceError>,
    /// Every artifact path declared so far, in all recipes, with where
    /// (`file:line:col`): two artifacts never share one.
    outputs: &'a mut BTreeMap<String, String>,
}

impl<'a> Ctx<'a> {
    fn push(&mut self, span: Range<usize>, message: impl Into<String>) {
        self.errors.push(self.doc.error(span, message));
    }

    /// A size in bytes (`max_size`, `pad_to`): positive, or reported.
    fn positive_bytes(&mut self, value: Option<&Spanned<i64>>, key: &str) -> Option<u64> {
        let value = value?;
        match u64::try_from(*value.get_ref()) {
            Ok(n) if n > 0 => Some(n),
            _ => {
                let message = format!("`{key}` is a positive number of bytes");
                self.push(value.span(), message);
                None
            }
        }
    }

    /// A source named in a recipe; an unknown name is reported with the
    /// nearest known one.
    fn source(&mut self, name: &Spanned<String>) -> Option<&'a Source> {
        let sources = self.sources;
        let found = sources.get(name.get_ref());
        if found.is_none() {
            let hint = diag::did_you_mean(name.get_ref(), sources.keys().map(String::as_str));
            let msg = format!(
                "unknown source `{}`: not in sources.toml{hint}",
                name.get_ref()
            );
            self.push(name.span(), msg);
        }
        found
    }

    fn deb_source(&mut self, name: &Spanned<String>) -> Option<String> {
        match self.source(name)? {
            Source {
                kind: SourceKind::Deb { .. },
                ..
            } => Some(name.get_ref().clone()),
            _ => {
                self.push(
                    name.span(),
                    format!("source `{}` is not a `deb` source", name.get_ref()),
                );
                None
            }
        }
    }
}

/// Reads the template `file` (named at `at` in the recipe) and renders it
/// with `vars`: a read error points at the recipe, a template error into
/// the template.
fn render_file(
    ctx: &mut Ctx,
    file: &Path,
    at: Range<usize>,
    vars: &Vars,
    syntax: template::Syntax,
    composed: &[&str],
) -> Option<String> {
    let text = match fs_err::read_to_string(file) {
        Ok(t) => t,
        Err(e) => {
            ctx.push(at, format!("cannot read {}: {e}", file.display()));
            return None;
        }
    };
    match template::render_with(&text, vars, syntax, composed) {
        Ok(rendered) => Some(rendered),
        Err(e) => {
            let err = SourceError::new(file, &text, e.span, e.message).label("in this template");
            ctx.errors.push(err);
            None
        }
    }
}

/// Checks every `{{variable}}` in an overlay template (a shell-sourced
/// file) against the recipe's variables and their values, with a located
/// error (the overlay file, line, column).
pub fn check_template(file: &Path, text: &str, vars: &Vars) -> Result<String> {
    template::render(text, vars, template::Syntax::Shell).map_err(|e| {
        let err = SourceError::new(file, text, e.span, e.message).label("in this template");
        RecipeErrors(vec![err]).into()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_field_hint_suggests_the_nearest_key() {
        let msg = "unknown field `overlay`, expected one of `output`, `overlays`, `templates`";
        let hint = unknown_field_hint(msg).unwrap();
        assert!(hint.starts_with("did you mean `overlays`?"), "{hint}");
    }

    #[test]
    fn var_that_no_recipe_declares_is_an_error() {
        let overrides = BTreeMap::from([("relase".to_string(), "x".to_string())]);
        let err = load(Path::new("../recipes"), &overrides)
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--var relase") && err.contains("did you mean `release`"),
            "{err}"
        );
    }

    #[test]
    fn repository_recipes_load() {
        let recipes = load(Path::new("../recipes"), &BTreeMap::new()).unwrap();
        assert!(recipes.targets.contains_key("stage2"));
        assert!(recipes.sources.contains_key("busybox"));
    }
}
