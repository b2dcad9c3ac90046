//! `recipes/sources.toml`: every pinned input, and the mirrors that keep
//! `deb` pins fetchable after apt has moved on.

use std::collections::BTreeMap;
use std::ops::Range;
use std::path::{Path, PathBuf};

use anyhow::Result;
use toml::Spanned;

use crate::arch::Arch;

use super::schema::{RawMirrors, RawSource, SourcesFile};
use super::{diag::RecipeErrors, Doc, SourceError};

/// The pinned sources and where else `deb` sources may be fetched.
#[derive(Debug, Clone, Default)]
pub struct Sources {
    pub sources: BTreeMap<String, Source>,
    /// `[mirrors] deb`: archive base URLs, each ending in `/`, tried in
    /// order with a `deb` source's `pool` path when apt cannot download it.
    pub deb_mirrors: Vec<String>,
}

#[derive(Debug, Clone)]
pub struct Source {
    pub name: String,
    pub kind: SourceKind,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SourceKind {
    Url {
        url: String,
        sha256: String,
    },
    /// A tarball pinned by the digest of its unpacked tree.
    UrlTree {
        url: String,
        tree_sha256: String,
    },
    Path {
        path: PathBuf,
    },
    Deb {
        package: String,
        /// The package's architecture when not the build machine's.
        arch: Option<Arch>,
        version: String,
        sha256: String,
        /// The `.deb`'s path under an archive's base URL, as apt's
        /// `Filename:` field gives it (`pool/main/…`), when recorded.
        pool: Option<String>,
    },
}

pub(super) fn load_sources(file: &Path) -> Result<Sources> {
    let doc = Doc::read(file)?;
    let raw: SourcesFile = doc.parse()?;
    let base = file.parent().unwrap_or(Path::new("."));
    let mut sources = BTreeMap::new();
    let mut errors = Vec::new();
    for (name, raw) in raw.sources {
        match source_kind(&doc, base, raw) {
            Ok(kind) => {
                sources.insert(name.clone(), Source { name, kind });
            }
            Err(e) => errors.push(e),
        }
    }
    let deb_mirrors = match raw.mirrors {
        Some(mirrors) => mirror_urls(&doc, mirrors.into_inner(), &mut errors),
        None => Vec::new(),
    };
    if errors.is_empty() {
        Ok(Sources {
            sources,
            deb_mirrors,
        })
    } else {
        Err(RecipeErrors(errors).into())
    }
}

/// Each base URL checked (http, https or file) and given a trailing `/`,
/// so that joining a pool path never drops the base's last directory.
fn mirror_urls(doc: &Doc, raw: RawMirrors, errors: &mut Vec<SourceError>) -> Vec<String> {
    let mut urls = Vec::new();
    for base in raw.deb {
        match url::Url::parse(base.get_ref()) {
            Ok(u) if matches!(u.scheme(), "http" | "https" | "file") => {
                let text = u.as_str();
                urls.push(if text.ends_with('/') {
                    text.to_string()
                } else {
                    format!("{text}/")
                });
            }
            Ok(u) => errors.push(doc.error(
                base.span(),
                format!(
                    "a mirror is an http, https or file URL, not `{}:`",
                    u.scheme()
                ),
            )),
            Err(e) => errors.push(doc.error(base.span(), format!("not a URL: {e}"))),
        }
    }
    urls
}

fn source_kind(doc: &Doc, base: &Path, raw: Spanned<RawSource>) -> Result<SourceKind, SourceError> {
    let span = raw.span();
    let raw = raw.into_inner();
    let given = [raw.url.is_some(), raw.path.is_some(), raw.deb.is_some()];
    if given.iter().filter(|g| **g).count() != 1 {
        return Err(doc.error(span, "a source needs exactly one of `url`, `path` or `deb`"));
    }
    if let (Some(pool), None) = (&raw.pool, &raw.deb) {
        return Err(doc.error(pool.span(), "`pool` is the archive path of a `deb` source"));
    }
    if let (Some(arch), None) = (&raw.arch, &raw.deb) {
        return Err(doc.error(arch.span(), "`arch` is the architecture of a `deb` source"));
    }
    if let Some(path) = raw.path {
        return Ok(SourceKind::Path {
            path: base.join(path.into_inner()),
        });
    }
    if let (Some(url), Some(tree)) = (&raw.url, &raw.tree_sha256) {
        if raw.sha256.is_some() {
            return Err(doc.error(
                span,
                "give `sha256` (of the file) or `tree_sha256`, not both",
            ));
        }
        check_sha256(doc, tree)?;
        return Ok(SourceKind::UrlTree {
            url: url.get_ref().clone(),
            tree_sha256: tree.get_ref().to_ascii_lowercase(),
        });
    }
    if let Some(tree) = &raw.tree_sha256 {
        return Err(doc.error(tree.span(), "`tree_sha256` pins a `url` tarball"));
    }
    let sha256 = required(doc, span.clone(), raw.sha256, "sha256")?;
    check_sha256(doc, &sha256)?;
    let sha256 = sha256.into_inner().to_ascii_lowercase();
    if let Some(url) = raw.url {
        return Ok(SourceKind::Url {
            url: url.into_inner(),
            sha256,
        });
    }
    let package = raw.deb.map(Spanned::into_inner).unwrap_or_default();
    let version = required(doc, span, raw.version, "version")?.into_inner();
    let pool = raw.pool.map(|p| check_pool(doc, p)).transpose()?;
    let arch = raw.arch.map(|a| deb_arch(doc, a)).transpose()?;
    Ok(SourceKind::Deb {
        package,
        arch,
        version,
        sha256,
        pool,
    })
}

/// A `deb` source's `arch`, by Kiln's name (the one recipes and hosts
/// use); Debian's name is pointed to its Kiln name.
fn deb_arch(doc: &Doc, arch: Spanned<String>) -> Result<Arch, SourceError> {
    Arch::parse(arch.get_ref()).map_err(|why| doc.error(arch.span(), why))
}

/// A pool path is joined to mirror URLs: relative, plain components only.
fn check_pool(doc: &Doc, pool: Spanned<String>) -> Result<String, SourceError> {
    let path = pool.get_ref();
    let plain = !path.is_empty()
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != ".." && !c.contains(['\\', '?', '#']));
    if plain && path.ends_with(".deb") {
        Ok(pool.into_inner())
    } else {
        Err(doc.error(
            pool.span(),
            "`pool` is a relative path to a .deb under an archive's base URL, such as pool/main/b/busybox/busybox-static_1.35.0-4_amd64.deb",
        ))
    }
}

fn required<T>(
    doc: &Doc,
    span: Range<usize>,
    value: Option<Spanned<T>>,
    key: &str,
) -> Result<Spanned<T>, SourceError> {
    value.ok_or_else(|| doc.error(span, format!("missing key `{key}`")))
}

fn check_sha256(doc: &Doc, value: &Spanned<String>) -> Result<(), SourceError> {
    let v = value.get_ref();
    if v.len() == 64 && v.bytes().all(|b| b.is_ascii_hexdigit()) {
        Ok(())
    } else {
        Err(doc.error(value.span(), "a sha256 must be 64 hexadecimal digits"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn load(text: &str) -> Result<Sources> {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sources.toml");
        fs_err::write(&file, text).unwrap();
        load_sources(&file)
    }

    const PIN: &str = "version = \"1\"\nsha256 = \"3d3fdbe91d4660c873e14b092c213fe81c1da6362daa236eb25d0171eb108744\"\n";

    #[test]
    fn a_deb_names_its_architecture_by_kiln_name() {
        let s = load(&format!(
            "[bb]\ndeb = \"busybox-static\"\narch = \"arm64\"\n{PIN}"
        ))
        .unwrap();
        assert!(matches!(
            s.sources["bb"].kind,
            SourceKind::Deb {
                arch: Some(Arch::Arm64),
                ..
            }
        ));
        let err = load(&format!(
            "[bb]\ndeb = \"busybox-static\"\narch = \"amd64\"\n{PIN}"
        ))
        .unwrap_err();
        let text = format!("{err:#}");
        assert!(text.contains("Debian's amd64 is Kiln's `x86_64`"), "{text}");
        let err = load("[t]\npath = \"x\"\narch = \"arm64\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("`arch` is the architecture of a `deb`"));
    }
}
