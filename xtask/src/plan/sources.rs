//! Sources in the plan: a pinned source becomes its fetch step (a `deb`
//! through apt or a mirror, a URL, a tarball pinned by its tree), a
//! `--source` override a value already in the store, and a `deb` or tarball
//! its unpacked tree. Each source is added once, whatever asks for it.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::{Builder, InputRef, Plan, PlanOptions};
use crate::recipe::{self, Recipes, SourceKind};
use crate::steps::deb::{self, UnpackDeb};
use crate::steps::fetch::{self, FetchDeb, FetchTree, FetchUrl, UnpackPinnedTree};
use crate::steps::tarball::{self, UnpackTarball};
use crate::store::{Modes, Output, Store};

/// The forms in which a source is planned, each once.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Form {
    /// As fetched or given: a file, or a tree (`source_input`).
    Fetched,
    /// A `deb`'s unpacked tree (`deb_tree`).
    DebTree,
    /// As a tree, a tarball unpacked (`source_tree`).
    Unpacked,
}

impl Builder<'_> {
    /// A source as a tree: a `deb` source's tarball member `deb_member`, a
    /// `url` or `path` tarball (unpacked once, cached), or a local tree
    /// (a checkout given with `--source`) as is.
    pub(super) fn source_tree(&mut self, name: &str, deb_member: Option<&str>) -> Result<InputRef> {
        if let Some(r) = self.sources.get(&(name.to_string(), Form::Unpacked)) {
            return Ok(r.clone());
        }
        let deb_source = matches!(
            self.recipes.sources.get(name).map(|s| &s.kind),
            Some(SourceKind::Deb { .. })
        );
        // An override of a `deb` source is the package when it is a `.deb`
        // or the unpacked package holding the member; anything else (a
        // kernel tarball or tree) is taken as what the member would be.
        let is_deb = deb_source
            && match self.opts.source_overrides.get(name) {
                None => true,
                Some(path) => {
                    is_deb_file(path) || deb_member.is_some_and(|m| holds_member(path, m))
                }
            };
        let (archive, member) = match (is_deb, deb_member) {
            (true, Some(member)) => (self.deb_tree(name)?, Some(member.to_string())),
            (true, None) => {
                bail!("source `{name}` is a `deb`; give a tarball (`url`, `path`) or a tree")
            }
            (false, _) => {
                let input = self.source_input(name)?;
                let is_tree = match &input {
                    InputRef::Value(Output::Tree { .. }) => true,
                    InputRef::Node { output, .. } => output == fetch::TREE.0,
                    InputRef::Value(Output::File { .. }) => false,
                };
                if is_tree {
                    self.sources
                        .insert((name.to_string(), Form::Unpacked), input.clone());
                    return Ok(input);
                }
                (input, None)
            }
        };
        let node = self.push(
            UnpackTarball {
                source: name.to_string(),
                member,
            },
            BTreeMap::from([(tarball::ARCHIVE.into(), archive)]),
        );
        let r = InputRef::Node {
            node,
            output: tarball::TREE.into(),
        };
        self.sources
            .insert((name.to_string(), Form::Unpacked), r.clone());
        Ok(r)
    }

    /// The unpacked tree of a `deb` source, or of its `--source` override:
    /// a `.deb` file is unpacked, a directory is taken as the unpacked tree.
    pub fn deb_tree(&mut self, name: &str) -> Result<InputRef> {
        if let Some(r) = self.sources.get(&(name.to_string(), Form::DebTree)) {
            return Ok(r.clone());
        }
        let package = self.source_input(name)?;
        if let InputRef::Value(Output::Tree { .. }) = package {
            self.sources
                .insert((name.to_string(), Form::DebTree), package.clone());
            return Ok(package);
        }
        let node = self.push(
            UnpackDeb {
                source: name.to_string(),
            },
            BTreeMap::from([(deb::DEB.into(), package)]),
        );
        let r = InputRef::Node {
            node,
            output: deb::TREE.into(),
        };
        self.sources
            .insert((name.to_string(), Form::DebTree), r.clone());
        Ok(r)
    }

    /// A local file or directory, hashed by content into the store. A tree
    /// is recorded with git-like modes: an operator's checkout must not
    /// change a key through its umask.
    pub(super) fn local_input(&self, path: &Path) -> Result<Output> {
        let meta =
            fs_err::metadata(path).with_context(|| format!("{} does not exist", path.display()))?;
        if meta.is_dir() {
            Ok(Output::Tree {
                digest: self.store.put_local_tree(path, Modes::GitLike)?,
            })
        } else {
            let (digest, size) = self.store.put_local_file(path)?;
            Ok(Output::File { digest, size })
        }
    }

    /// `local_input` as a plan input, the path named if hashing fails.
    pub(super) fn local_value(&self, path: &Path) -> Result<InputRef> {
        let value = self
            .local_input(path)
            .with_context(|| format!("hashing {}", path.display()))?;
        Ok(InputRef::Value(value))
    }

    /// The operator's local copy of source `name` (`--source NAME=PATH`).
    /// For a source pinned by its tree's digest, a tarball must unpack to
    /// the pinned tree (then it builds exactly what the download builds); a
    /// directory is used as given, with a warning when it is another tree.
    pub(super) fn override_input(
        &mut self,
        name: &str,
        kind: &SourceKind,
        path: &Path,
    ) -> Result<InputRef> {
        let value = self
            .local_input(path)
            .with_context(|| format!("reading --source {name}={}", path.display()))?;
        if let (Output::Tree { digest }, false) = (&value, matches!(kind, SourceKind::Deb { .. })) {
            // A source tree is recorded as it is; a link out of it would
            // make a build read (or write) what lies where it points.
            let tree = self.store.tree(digest)?;
            if let Some((link, target)) = tree.links_out().first() {
                bail!(
                    "--source {name}={}: {link} is a symbolic link to {target}, outside the tree; \
                     Kiln does not follow links out of a source tree (replace it with what it points to)",
                    path.display()
                );
            }
        }
        let SourceKind::UrlTree { tree_sha256, .. } = kind else {
            return Ok(InputRef::Value(value));
        };
        match &value {
            Output::File { .. } => {
                let step = UnpackPinnedTree {
                    source: name.to_string(),
                    file: display_path(path).display().to_string(),
                    tree_sha256: tree_sha256.clone(),
                };
                let node = self.push(step, BTreeMap::from([(fetch::ARCHIVE.into(), InputRef::Value(value))]));
                return Ok(InputRef::Node {
                    node,
                    output: fetch::TREE.into(),
                });
            }
            Output::Tree { digest } if digest.hex() != *tree_sha256 => eprintln!(
                "warning: --source {name}={} is not the tree sources.toml pins (its tree_sha256 is {}, the pin {tree_sha256}): artifacts built from it differ from a build of the pin",
                path.display(),
                digest.hex()
            ),
            Output::Tree { .. } => {}
        }
        Ok(InputRef::Value(value))
    }

    /// A source as a file or tree: fetched, or the operator's local copy.
    pub(super) fn source_input(&mut self, name: &str) -> Result<InputRef> {
        if let Some(r) = self.sources.get(&(name.to_string(), Form::Fetched)) {
            return Ok(r.clone());
        }
        let source = self
            .recipes
            .sources
            .get(name)
            .with_context(|| format!("unknown source `{name}`"))?;
        let r = if let Some(path) = self.opts.source_overrides.get(name) {
            self.override_input(name, &source.kind, path)?
        } else {
            match &source.kind {
                SourceKind::Deb {
                    package,
                    arch,
                    version,
                    sha256,
                    pool,
                } => {
                    let step = FetchDeb {
                        source: name.into(),
                        package: package.clone(),
                        arch: *arch,
                        version: version.clone(),
                        sha256: sha256.clone(),
                        pool: pool.clone(),
                        mirrors: self.recipes.deb_mirrors.clone(),
                    };
                    InputRef::Node {
                        node: self.push(step, BTreeMap::new()),
                        output: fetch::FILE.into(),
                    }
                }
                SourceKind::Path { path } => {
                    let value = self.local_input(path).with_context(|| {
                        format!("reading source `{name}` at {}", path.display())
                    })?;
                    InputRef::Value(value)
                }
                SourceKind::UrlTree { url, tree_sha256 } => {
                    let step = FetchTree {
                        source: name.into(),
                        url: url.clone(),
                        tree_sha256: tree_sha256.clone(),
                    };
                    InputRef::Node {
                        node: self.push(step, BTreeMap::new()),
                        output: fetch::TREE.into(),
                    }
                }
                SourceKind::Url { url, sha256 } => {
                    let step = FetchUrl {
                        source: name.into(),
                        url: url.clone(),
                        sha256: sha256.clone(),
                    };
                    InputRef::Node {
                        node: self.push(step, BTreeMap::new()),
                        output: fetch::FILE.into(),
                    }
                }
            }
        };
        self.sources
            .insert((name.to_string(), Form::Fetched), r.clone());
        Ok(r)
    }
}

/// Paths in messages: relative to the current directory when possible, and
/// without `dir/..` detours.
pub(super) fn display_path(p: &Path) -> PathBuf {
    use std::path::Component;
    let cwd = std::env::current_dir().unwrap_or_default();
    let p = p.strip_prefix(&cwd).unwrap_or(p);
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::ParentDir
                if matches!(out.components().next_back(), Some(Component::Normal(_))) =>
            {
                out.pop();
            }
            Component::CurDir => {}
            c => out.push(c),
        }
    }
    out
}

/// A plan whose last node unpacks the `deb` source `name` (for boot tests
/// and benchmarks that need, say, Debian's kernel).
pub fn plan_deb_tree(
    recipes: &Recipes,
    name: &str,
    store: &Store,
    opts: &PlanOptions,
) -> Result<Plan> {
    let mut b = Builder::new(recipes, store, opts);
    b.deb_tree(name)?;
    Ok(b.plan)
}

/// A plan that fetches the sources `names` (every source when empty) into
/// the store: `sources fetch`, e.g. before going offline.
pub fn plan_sources(
    recipes: &Recipes,
    names: &[String],
    store: &Store,
    opts: &PlanOptions,
) -> Result<Plan> {
    let mut b = Builder::new(recipes, store, opts);
    let all: Vec<String> = recipes.sources.keys().cloned().collect();
    for name in if names.is_empty() { &all } else { names } {
        if !recipes.sources.contains_key(name) {
            let known = recipes.sources.keys().map(String::as_str);
            let hint = recipe::diag::unknown_name_help(name, &known.collect::<Vec<_>>(), "sources");
            bail!("no source `{name}` in sources.toml: {hint}");
        }
        b.source_input(name)?;
    }
    Ok(b.plan)
}

/// Whether `path` is a `.deb` (an `ar` archive), by its first bytes.
fn is_deb_file(path: &Path) -> bool {
    let mut magic = [0u8; 8];
    fs_err::File::open(path)
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut magic))
        .is_ok_and(|()| &magic == b"!<arch>\n")
}

/// Whether the directory `dir` holds a file matching `pattern` (`*` within
/// the file name, as `UnpackTarball`'s member).
fn holds_member(dir: &Path, pattern: &str) -> bool {
    let (parent, name) = pattern.rsplit_once('/').unwrap_or(("", pattern));
    let (head, tail) = name.split_once('*').unwrap_or((name, ""));
    let Ok(entries) = fs_err::read_dir(dir.join(parent)) else {
        return false;
    };
    entries.filter_map(Result::ok).any(|e| {
        let n = e.file_name();
        let n = n.to_string_lossy();
        n.len() >= head.len() + tail.len() && n.starts_with(head) && n.ends_with(tail)
    })
}
