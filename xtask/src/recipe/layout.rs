//! `[[ipxe.layout]]`: where a host's stage1 file goes under `output/`,
//! from a template of the host's variables, so that a fleet keeps the
//! paths its consumers already download (ePoxy's
//! `stage1_mlxrom/<version>/<model>/<hostname>.mrom`). Without one, a
//! host's file is `<recipe>/hosts/<hostname>/<file>`.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::PathBuf;

use toml::Spanned;

use super::combined::CombinedRom;
use super::hosts::Host;
use super::ipxe::IpxeTarget;
use super::schema::RawLayout;
use super::Ctx;
use crate::arch::Arch;
use crate::template::{Syntax, Vars};

/// One `[[ipxe.layout]]`.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The file it places (`15b31003.mrom`).
    pub file: String,
    /// The path template.
    pub path: String,
    /// `{{model}}`: the recipe's name for the card (default: the file's
    /// stem, `15b31003`).
    pub model: String,
    /// The recipe and the span of `path`, for errors in a host's path.
    pub at: (PathBuf, String, Range<usize>),
}

/// A host's file in the default layout: `stage1/hosts/<hostname>/<file>`.
pub fn default_host_path(recipe: &str, hostname: &str, file: &str) -> String {
    format!("{recipe}/hosts/{hostname}/{file}")
}

/// Validates the entries against the recipe's files (targets of any
/// architecture and combined ROMs): one entry per file, a plain `model`.
pub(super) fn layouts(
    ctx: &mut Ctx,
    raw: &[Spanned<RawLayout>],
    targets: &BTreeMap<Arch, Vec<IpxeTarget>>,
    combined: &[CombinedRom],
) -> Vec<Layout> {
    let mut out: Vec<Layout> = Vec::new();
    for l in raw.iter().map(Spanned::get_ref) {
        let file = l.file.get_ref();
        let known = targets.values().flatten().any(|t| &t.file == file)
            || combined.iter().any(|c| &c.file == file);
        if !known {
            ctx.push(
                l.file.span(),
                format!("`{file}` is not a file [ipxe] builds (a target's file name or a combined ROM's)"),
            );
            continue;
        }
        if out.iter().any(|o| &o.file == file) {
            ctx.push(l.file.span(), format!("`{file}` has two layouts"));
            continue;
        }
        let stem = file.rsplit_once('.').map_or(file.as_str(), |(s, _)| s);
        let model = l.model.as_ref().map_or(stem, |m| m.get_ref()).to_string();
        let plain = |b: u8| b.is_ascii_alphanumeric() || b"._+-".contains(&b);
        if model.is_empty() || model.starts_with('.') || !model.bytes().all(plain) {
            let at = l.model.as_ref().map_or(l.file.span(), Spanned::span);
            ctx.push(
                at,
                "`model` is one path component: letters, digits and . _ + -",
            );
            continue;
        }
        out.push(Layout {
            file: file.clone(),
            path: l.path.get_ref().clone(),
            model,
            at: (ctx.doc.file.clone(), ctx.doc.text.clone(), l.path.span()),
        });
    }
    out
}

impl Layout {
    /// This layout's path for `host`: the template rendered with the
    /// recipe's variables, the host's, `rom_version`, `model` and `file`,
    /// and checked to be a relative path that is not one of Kiln's own.
    pub fn path_for(
        &self,
        host: &Host,
        vars: &Vars,
        rom_version: Option<String>,
    ) -> Result<String, String> {
        let mut vars = vars.clone();
        vars.insert("rom_version".into(), rom_version);
        vars.insert("model".into(), Some(self.model.clone()));
        vars.insert("file".into(), Some(self.file.clone()));
        let path = host
            .render(&self.path, &vars, Syntax::Text)
            .map_err(|e| format!("layout of {}: {}", self.file, e.message))?;
        let bad = path.starts_with('/')
            || path
                .split('/')
                .any(|c| c.is_empty() || c == "." || c == "..");
        if bad {
            let why = format!(
                "host `{}`: layout of {} gives `{path}`, not a relative path without `.`, `..` or empty parts",
                host.hostname, self.file
            );
            return Err(why);
        }
        if let Some(what) = crate::layout::reserved(&path) {
            let why = format!(
                "host `{}`: layout of {} gives `{path}`, which is {what}",
                host.hostname, self.file
            );
            return Err(why);
        }
        Ok(path)
    }
}
