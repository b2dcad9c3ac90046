//! From recipes to a graph of steps. Each node is a step plus where its
//! inputs come from: another node's output, or a value already in the store
//! (a local `path` source or an overlay, hashed by content at plan time).
//!
//! Architecture invariant: planning runs no tools and fetches nothing; it
//! may hash local inputs into the store. Execution lives in `exec`.

pub mod exec;
pub mod explain;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::recipe::{self, Recipe, Recipes, SourceKind};
use crate::steps::deb::UnpackDeb;
use crate::steps::fetch::{FetchDeb, FetchUrl};
use crate::steps::initramfs::BuildInitramfs;
use crate::steps::modules::depmod::DepmodIndexes;
use crate::steps::modules::step::BuildModules;
use crate::steps::Step;
use crate::store::{Modes, Output, Store};

pub struct Node {
    pub step: Box<dyn Step>,
    pub inputs: BTreeMap<String, InputRef>,
}

#[derive(Debug, Clone)]
pub enum InputRef {
    /// Output `name` of node `node`.
    Node { node: usize, output: &'static str },
    /// Already in the store.
    Value(Output),
}

/// A final artifact: a node's output copied to `output/<name>`.
#[derive(Debug, Clone)]
pub struct ArtifactSpec {
    pub name: String,
    pub kind: &'static str,
    pub arch: &'static str,
    pub recipe: PathBuf,
    pub epoch: u64,
    pub node: usize,
    pub output: &'static str,
    /// A JSON output of the same node recorded as the artifact's `details`.
    pub details: Option<&'static str>,
}

#[derive(Default)]
pub struct Plan {
    pub nodes: Vec<Node>,
    pub artifacts: Vec<ArtifactSpec>,
}

/// Options that shape the plan but are not recipe content.
#[derive(Debug, Clone, Default)]
pub struct PlanOptions {
    /// `--source NAME=PATH`: a local file or tree replaces a pinned source.
    pub source_overrides: BTreeMap<String, PathBuf>,
    /// `SOURCE_DATE_EPOCH`, which overrides every recipe's epoch.
    pub epoch_override: Option<u64>,
    /// Threads a step may use (not part of any key).
    pub threads: usize,
}

/// Builds the plan for `targets` (recipe names).
pub fn plan(
    recipes: &Recipes,
    targets: &[String],
    store: &Store,
    opts: &PlanOptions,
) -> Result<Plan> {
    let mut b = Builder::new(recipes, store, opts);
    for target in targets {
        let recipe = recipes
            .targets
            .get(target)
            .with_context(|| unknown_target(recipes, target))?;
        b.add_recipe(recipe)?;
    }
    Ok(b.plan)
}

fn unknown_target(recipes: &Recipes, target: &str) -> String {
    let names: Vec<&str> = recipes.targets.keys().map(String::as_str).collect();
    let hint = recipe::diag::nearest(target, names.iter().copied())
        .map(|n| format!(" (did you mean `{n}`?)"))
        .unwrap_or_default();
    format!(
        "unknown target `{target}`{hint}: {} has recipes for {}",
        recipes.dir.display(),
        names.join(", ")
    )
}

struct Builder<'a> {
    recipes: &'a Recipes,
    store: &'a Store,
    opts: &'a PlanOptions,
    plan: Plan,
    /// Source name → its input (deduplicated across recipes).
    sources: BTreeMap<(String, &'static str), InputRef>,
}

impl<'a> Builder<'a> {
    fn new(recipes: &'a Recipes, store: &'a Store, opts: &'a PlanOptions) -> Builder<'a> {
        Builder {
            recipes,
            store,
            opts,
            plan: Plan::default(),
            sources: BTreeMap::new(),
        }
    }

    fn push(&mut self, step: impl Step + 'static, inputs: BTreeMap<String, InputRef>) -> usize {
        self.plan.nodes.push(Node {
            step: Box::new(step),
            inputs,
        });
        self.plan.nodes.len() - 1
    }

    fn epoch(&self, recipe: &Recipe) -> u64 {
        self.opts.epoch_override.unwrap_or(recipe.epoch)
    }

    fn add_recipe(&mut self, recipe: &Recipe) -> Result<()> {
        if let Some(ir) = &recipe.initramfs {
            self.add_initramfs(recipe, ir)?;
        }
        if let Some(m) = &recipe.modules {
            self.add_modules(recipe, m)?;
        }
        if self.plan.artifacts.is_empty() {
            bail!("{}: the recipe names no artifacts", recipe.file.display());
        }
        Ok(())
    }

    fn add_initramfs(&mut self, recipe: &Recipe, ir: &recipe::Initramfs) -> Result<()> {
        let mut inputs = BTreeMap::new();
        if let Some(bb) = &ir.busybox {
            inputs.insert("busybox".to_string(), self.deb_tree(bb)?);
        }
        for (i, dir) in ir.overlays.iter().enumerate() {
            let digest = self
                .store
                .put_tree_with(dir, Modes::GitLike)
                .with_context(|| format!("hashing overlay {}", dir.display()))?;
            inputs.insert(
                format!("overlay.{i}"),
                InputRef::Value(Output::Tree { digest }),
            );
        }
        let vars = check_templates(recipe, ir)?;
        let step = BuildInitramfs {
            name: ir.output.clone(),
            compression: compression_name(ir.compression).to_string(),
            level: ir.level.or(ir.compression.default_level()),
            epoch: self.epoch(recipe),
            uid: ir.uid,
            gid: ir.gid,
            overlays: ir.overlays.len(),
            busybox: ir.busybox.is_some(),
            templates: ir.templates.clone(),
            vars,
            devices: ir.devices.clone(),
            threads: self.opts.threads,
        };
        let node = self.push(step, inputs);
        self.plan.artifacts.push(ArtifactSpec {
            name: ir.output.clone(),
            kind: "initramfs",
            arch: "x86_64",
            recipe: recipe.file.clone(),
            epoch: self.epoch(recipe),
            node,
            output: "image",
            details: None,
        });
        Ok(())
    }

    fn add_modules(&mut self, recipe: &Recipe, m: &recipe::Modules) -> Result<()> {
        let kernel = self.deb_tree(&m.kernel)?;
        let depmod = DepmodIndexes {
            kernel_release: m.kernel_release.clone(),
        };
        let indexes = self.push(
            depmod,
            BTreeMap::from([("kernel".to_string(), kernel.clone())]),
        );
        let mut inputs = BTreeMap::from([
            ("kernel".to_string(), kernel),
            (
                "indexes".to_string(),
                InputRef::Node {
                    node: indexes,
                    output: "indexes",
                },
            ),
        ]);
        for (i, fw) in m.firmware.iter().enumerate() {
            inputs.insert(format!("firmware.{i}"), self.deb_tree(fw)?);
        }
        let compressions: Vec<&'static str> = m
            .compressions
            .iter()
            .map(|c| compression_name(*c))
            .collect();
        let step = BuildModules {
            name: format!("{} {}", recipe.name, m.kernel_release),
            kernel_release: m.kernel_release.clone(),
            wanted: m.wanted.clone(),
            modprobe_d: m.modprobe_d.clone(),
            firmware: m.firmware.len(),
            compressions: compressions.iter().map(|c| c.to_string()).collect(),
            epoch: self.epoch(recipe),
            origins: m.origins.clone(),
            threads: self.opts.threads,
        };
        let node = self.push(step, inputs);
        for ext in compressions {
            self.plan.artifacts.push(ArtifactSpec {
                name: format!("modules/{}/modules.cpio.{ext}", m.kernel_release),
                kind: "modules",
                arch: "x86_64",
                recipe: recipe.file.clone(),
                epoch: self.epoch(recipe),
                node,
                output: ext,
                details: Some("details"),
            });
        }
        Ok(())
    }

    /// The unpacked tree of a `deb` source (or of its `--source` override).
    pub fn deb_tree(&mut self, name: &str) -> Result<InputRef> {
        if let Some(r) = self.sources.get(&(name.to_string(), "tree")) {
            return Ok(r.clone());
        }
        let deb = self.source_input(name)?;
        let node = self.push(
            UnpackDeb {
                source: name.to_string(),
            },
            BTreeMap::from([("deb".to_string(), deb)]),
        );
        let r = InputRef::Node {
            node,
            output: "tree",
        };
        self.sources.insert((name.to_string(), "tree"), r.clone());
        Ok(r)
    }

    /// A local file or directory, hashed by content into the store. A tree
    /// is recorded with git-like modes: an operator's checkout must not
    /// change a key through its umask.
    fn local_input(&self, path: &Path) -> Result<Output> {
        let meta = std::fs::metadata(path)
            .with_context(|| format!("{} does not exist", path.display()))?;
        if meta.is_dir() {
            Ok(Output::Tree {
                digest: self.store.put_tree_with(path, Modes::GitLike)?,
            })
        } else {
            let (digest, size) = self.store.put_file(path)?;
            Ok(Output::File { digest, size })
        }
    }

    /// A source as a file or tree: fetched, or the operator's local copy.
    fn source_input(&mut self, name: &str) -> Result<InputRef> {
        if let Some(r) = self.sources.get(&(name.to_string(), "file")) {
            return Ok(r.clone());
        }
        let source = self
            .recipes
            .sources
            .get(name)
            .with_context(|| format!("unknown source `{name}`"))?;
        let r = if let Some(path) = self.opts.source_overrides.get(name) {
            let value = self
                .local_input(path)
                .with_context(|| format!("reading --source {name}={}", path.display()))?;
            InputRef::Value(value)
        } else {
            match &source.kind {
                SourceKind::Deb {
                    package,
                    version,
                    sha256,
                } => {
                    let step = FetchDeb {
                        source: name.into(),
                        package: package.clone(),
                        version: version.clone(),
                        sha256: sha256.clone(),
                    };
                    InputRef::Node {
                        node: self.push(step, BTreeMap::new()),
                        output: "file",
                    }
                }
                SourceKind::Path { path } => {
                    let value = self.local_input(path).with_context(|| {
                        format!("reading source `{name}` at {}", path.display())
                    })?;
                    InputRef::Value(value)
                }
                SourceKind::Url { url, sha256 } => {
                    let step = FetchUrl {
                        source: name.into(),
                        url: url.clone(),
                        sha256: sha256.clone(),
                    };
                    InputRef::Node {
                        node: self.push(step, BTreeMap::new()),
                        output: "file",
                    }
                }
            }
        };
        self.sources.insert((name.to_string(), "file"), r.clone());
        Ok(r)
    }
}

fn compression_name(c: crate::archive::Compression) -> &'static str {
    use crate::archive::Compression::*;
    match c {
        Gzip => "gz",
        Zstd => "zst",
        Xz => "xz",
        None => "none",
    }
}

/// Renders every template once at plan time so that an unknown or unset
/// variable is reported with the template's file, line and column before
/// anything runs. Returns the variables the step needs.
fn check_templates(recipe: &Recipe, ir: &recipe::Initramfs) -> Result<BTreeMap<String, String>> {
    for t in &ir.templates {
        let file = ir
            .overlays
            .iter()
            .rev()
            .map(|o| o.join(t))
            .find(|p| p.is_file())
            .with_context(|| {
                format!(
                    "{}: template `{t}` is not a file in any overlay of this recipe",
                    recipe.file.display()
                )
            })?;
        let text = std::fs::read_to_string(&file)
            .with_context(|| format!("reading template {}", file.display()))?;
        recipe::check_template(&display_path(&file), &text, &recipe.variables)?;
    }
    Ok(recipe
        .variables
        .iter()
        .filter_map(|(k, v)| v.clone().map(|v| (k.clone(), v)))
        .collect())
}

/// Paths in messages: relative to the current directory when possible, and
/// without `dir/..` detours.
fn display_path(p: &Path) -> PathBuf {
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
