//! Paths a recipe names: files and directories beside it, artifact paths
//! under the output directory (relative, not Kiln's own names, never two
//! artifacts' alike) and paths inside images.

use std::ops::Range;
use std::path::{Path, PathBuf};

use toml::Spanned;

use super::{diag, Ctx, Doc};

/// A file named relative to the recipe, which must exist.
pub(super) fn recipe_file(ctx: &mut Ctx, base: &Path, raw: &Spanned<String>) -> Option<PathBuf> {
    let path = base.join(raw.get_ref());
    if path.is_file() {
        Some(path)
    } else {
        ctx.push(raw.span(), format!("{} is not a file", path.display()));
        None
    }
}

/// `file:line:col` of a byte offset in a recipe.
pub(super) fn location(doc: &Doc, span: Range<usize>) -> String {
    let (line, col) = diag::line_col(&doc.text, span.start);
    format!("{}:{line}:{col}", doc.file.display())
}

/// An artifact's path under `output/`: relative, not a name Kiln keeps
/// for itself there, and not another artifact's (in any recipe).
pub(super) fn output_path(ctx: &mut Ctx, raw: &Spanned<String>) -> Option<String> {
    if raw.get_ref().starts_with('/') {
        ctx.push(
            raw.span(),
            "an artifact's path is relative to the output directory, not absolute",
        );
        return None;
    }
    let path = image_path(ctx, raw)?;
    if let Some(what) = crate::layout::reserved(&path) {
        ctx.push(
            raw.span(),
            format!("`{path}` is {what}: choose another path"),
        );
        return None;
    }
    let here = location(ctx.doc, raw.span());
    if let Some(there) = ctx.outputs.get(&path) {
        let msg = format!("`{path}` is already the output of the artifact at {there}: two artifacts cannot share a path");
        ctx.push(raw.span(), msg);
        return None;
    }
    ctx.outputs.insert(path.clone(), here);
    Some(path)
}

/// A relative path without `..`: used for paths inside images.
pub(super) fn image_path(ctx: &mut Ctx, raw: &Spanned<String>) -> Option<String> {
    let p = raw.get_ref().trim_start_matches('/');
    let bad = p.is_empty() || p.split('/').any(|c| c.is_empty() || c == "." || c == "..");
    if bad {
        ctx.push(
            raw.span(),
            "expected a relative path without `.`, `..` or empty parts",
        );
        return None;
    }
    Some(p.to_string())
}

/// A directory named relative to the recipe, which must exist; `what`
/// names it in the error ("overlay directory").
pub(super) fn recipe_dir(
    ctx: &mut Ctx,
    base: &Path,
    raw: &Spanned<String>,
    what: &str,
) -> Option<PathBuf> {
    let dir = base.join(raw.get_ref());
    if dir.is_dir() {
        Some(dir)
    } else {
        ctx.push(
            raw.span(),
            format!("{what} {} does not exist", dir.display()),
        );
        None
    }
}
