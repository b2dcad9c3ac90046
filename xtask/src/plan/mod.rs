//! From recipes to a graph of steps. Each node is a step plus where its
//! inputs come from: another node's output, or a value already in the store
//! (a local `path` source or an overlay, hashed by content at plan time).
//!
//! Architecture invariant: planning runs no tools and fetches nothing; it
//! may hash local inputs into the store. Execution lives in `exec`.

pub mod exec;
pub mod explain;
mod ipxe;
mod media;
mod roms;

pub use ipxe::{artifact_name as ipxe_artifact, host_artifact_name as ipxe_host_artifact};
pub use media::host_artifact;
pub use roms::host_roms_artifact;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::arch::Arch;
use crate::recipe::{self, Recipe, Recipes, SourceKind};
use crate::steps::deb::UnpackDeb;
use crate::steps::fetch::{FetchDeb, FetchTree, FetchUrl, UnpackPinnedTree};
use crate::steps::initramfs::BuildInitramfs;
use crate::steps::kernel::compile::CompileKernel;
use crate::steps::kernel::config::KernelConfig;
use crate::steps::kernel::link::LinkKernel;
use crate::steps::kernel::INITRAMFS_NAME;
use crate::steps::modules::depmod::DepmodIndexes;
use crate::steps::modules::step::BuildModules;
use crate::steps::tarball::UnpackTarball;
use crate::steps::Step;
use crate::store::{Modes, Output, Store};

pub struct Node {
    pub step: Box<dyn Step>,
    pub inputs: BTreeMap<String, InputRef>,
}

#[derive(Debug, Clone)]
pub enum InputRef {
    /// Output `name` of node `node`.
    Node { node: usize, output: String },
    /// Already in the store.
    Value(Output),
}

/// A final artifact: a node's output copied to `output/<name>`.
#[derive(Debug, Clone)]
pub struct ArtifactSpec {
    pub name: String,
    pub kind: &'static str,
    pub arch: Arch,
    pub recipe: PathBuf,
    pub epoch: u64,
    pub node: usize,
    /// The node's output name (a step may name outputs at run time, e.g.
    /// one per iPXE make target).
    pub output: String,
    /// A JSON output of the same node recorded as the artifact's `details`.
    pub details: Option<&'static str>,
    /// Facts known at plan time, merged into `details` (not part of any key),
    /// e.g. the commit an iPXE source tree came from.
    pub facts: Option<serde_json::Value>,
}

#[derive(Default)]
pub struct Plan {
    pub nodes: Vec<Node>,
    pub artifacts: Vec<ArtifactSpec>,
    /// Outputs that must be byte-identical to an artifact (e.g. a patched
    /// per-host iPXE file and the same file from a full `make`).
    pub checks: Vec<Check>,
}

/// Artifact `artifact` must have the bytes of output `output` of `node`.
#[derive(Debug, Clone)]
pub struct Check {
    pub artifact: String,
    pub node: usize,
    pub output: String,
    /// How the reference was made, for the report.
    pub how: String,
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
    /// Hosts whose patched iPXE files are also built with a full `make` and
    /// compared (`cargo xtask ipxe --check-make`).
    pub ipxe_check_make: Vec<String>,
}

/// Builds the plan for `targets` (recipe names).
pub fn plan(
    recipes: &Recipes,
    targets: &[String],
    store: &Store,
    opts: &PlanOptions,
) -> Result<Plan> {
    let mut b = Builder::new(recipes, store, opts);
    let mut wanted = Vec::new();
    for target in targets {
        // `stage2/stage2_initramfs.cpio.gz`: one artifact of a recipe.
        let recipe_name = match target.split_once('/') {
            Some(_) => {
                wanted.push(target.clone());
                artifact_recipe(recipes, target)?
            }
            None => target.as_str(),
        };
        let recipe = recipes
            .targets
            .get(recipe_name)
            .with_context(|| unknown_target(recipes, target))?;
        b.add_recipe_once(recipe)?;
    }
    let whole: Vec<&String> = targets.iter().filter(|t| !t.contains('/')).collect();
    let plan = b.plan;
    // Artifacts of recipes planned only as another's dependency (stage1's
    // ROMs inside stage3) are built as far as needed but not installed.
    let keep = |a: &ArtifactSpec| {
        wanted.contains(&a.name)
            || whole
                .iter()
                .any(|t| a.recipe.file_stem().is_some_and(|s| s == t.as_str()))
    };
    if let Some(missing) = wanted
        .iter()
        .find(|w| !plan.artifacts.iter().any(|a| &&a.name == w))
    {
        bail!("no recipe builds the artifact `{missing}`");
    }
    if plan.artifacts.iter().all(keep) {
        return Ok(plan);
    }
    Ok(prune(plan, keep))
}

/// The recipe named by an artifact path's first component (`stage2/…`).
fn artifact_recipe<'r>(recipes: &Recipes, artifact: &'r str) -> Result<&'r str> {
    let (first, _) = artifact.split_once('/').expect("artifact paths have a /");
    if recipes.targets.contains_key(first) {
        Ok(first)
    } else {
        bail!(
            "unknown artifact `{artifact}`: artifacts are named <recipe>/<file>, and there is no recipe `{first}`"
        )
    }
}

/// Keeps the artifacts `keep` selects and only the nodes they need.
fn prune(plan: Plan, keep: impl Fn(&ArtifactSpec) -> bool) -> Plan {
    let artifacts: Vec<ArtifactSpec> = plan.artifacts.into_iter().filter(|a| keep(a)).collect();
    let checks: Vec<Check> = plan
        .checks
        .into_iter()
        .filter(|c| artifacts.iter().any(|a| a.name == c.artifact))
        .collect();
    let mut needed = vec![false; plan.nodes.len()];
    let mut stack: Vec<usize> = artifacts.iter().map(|a| a.node).collect();
    stack.extend(checks.iter().map(|c| c.node));
    while let Some(n) = stack.pop() {
        if std::mem::replace(&mut needed[n], true) {
            continue;
        }
        for input in plan.nodes[n].inputs.values() {
            if let InputRef::Node { node, .. } = input {
                stack.push(*node);
            }
        }
    }
    let mut index = vec![usize::MAX; plan.nodes.len()];
    let mut nodes = Vec::new();
    for (i, mut node) in plan.nodes.into_iter().enumerate() {
        if !needed[i] {
            continue;
        }
        for input in node.inputs.values_mut() {
            if let InputRef::Node { node: n, .. } = input {
                *n = index[*n];
            }
        }
        index[i] = nodes.len();
        nodes.push(node);
    }
    let artifacts = artifacts
        .into_iter()
        .map(|mut a| {
            a.node = index[a.node];
            a
        })
        .collect();
    let checks = checks
        .into_iter()
        .map(|mut c| {
            c.node = index[c.node];
            c
        })
        .collect();
    Plan {
        nodes,
        artifacts,
        checks,
    }
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
    /// Recipes already expanded.
    added: std::collections::BTreeSet<String>,
}

impl<'a> Builder<'a> {
    fn new(recipes: &'a Recipes, store: &'a Store, opts: &'a PlanOptions) -> Builder<'a> {
        Builder {
            recipes,
            store,
            opts,
            plan: Plan::default(),
            sources: BTreeMap::new(),
            added: Default::default(),
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

    /// Expands `recipe` unless an earlier target or dependency did.
    fn add_recipe_once(&mut self, recipe: &Recipe) -> Result<()> {
        if self.added.insert(recipe.name.clone()) {
            self.add_recipe(recipe)?;
        }
        Ok(())
    }

    /// The plan input for the artifact named `name`, if it is planned.
    fn artifact_input(&self, name: &str) -> Option<InputRef> {
        self.plan
            .artifacts
            .iter()
            .find(|s| s.name == name)
            .map(|s| InputRef::Node {
                node: s.node,
                output: s.output.clone(),
            })
    }

    fn add_recipe(&mut self, recipe: &Recipe) -> Result<()> {
        let mut initramfs = None;
        if let Some(ir) = &recipe.initramfs {
            initramfs = Some((self.add_initramfs(recipe, ir)?, ir.compression));
        }
        if let Some(m) = &recipe.modules {
            self.add_modules(recipe, m)?;
        }
        if let Some(k) = &recipe.kernel {
            let embedded = initramfs.filter(|_| k.embed_initramfs);
            let kernel = self.add_kernel(recipe, k, embedded)?;
            self.add_media(recipe, kernel, initramfs.map(|(node, _)| node))?;
        }
        if let Some(i) = &recipe.ipxe {
            self.add_ipxe(recipe, i)?;
        }
        if self.plan.artifacts.is_empty() {
            bail!("{}: the recipe names no artifacts", recipe.file.display());
        }
        Ok(())
    }

    /// Config, compile and link steps; the link step embeds `initramfs`
    /// (a node whose output `image` is the archive) when given. Returns the
    /// link node (output `bzImage`).
    fn add_kernel(
        &mut self,
        recipe: &Recipe,
        k: &recipe::Kernel,
        initramfs: Option<(usize, crate::archive::Compression)>,
    ) -> Result<usize> {
        let source = self.kernel_source(&k.source)?;
        let mut inputs = BTreeMap::from([("source".to_string(), source.clone())]);
        let base = match &k.config {
            recipe::KernelConfigFrom::Base(b) => Some(b.clone()),
            recipe::KernelConfigFrom::File(f) => {
                inputs.insert("config".into(), self.local_value(f)?);
                None
            }
        };
        for (i, (_, path)) in k.fragments.iter().enumerate() {
            inputs.insert(format!("fragment.{i}"), self.local_value(path)?);
        }
        let mut required = Vec::new();
        if let Some((_, compression)) = initramfs {
            required.push("CONFIG_BLK_DEV_INITRD=y".to_string());
            required.push(format!("CONFIG_INITRAMFS_SOURCE=\"{INITRAMFS_NAME}\""));
            if let Some(rd) = decompressor_option(compression) {
                required.push(format!("{rd}=y"));
            }
        }
        let epoch = self.epoch(recipe);
        let config = self.push(
            KernelConfig {
                name: k.output.clone(),
                arch: k.arch,
                base,
                fragments: k
                    .fragments
                    .iter()
                    .map(|(_, p)| display_path(p).display().to_string())
                    .collect(),
                required,
                epoch,
                threads: self.opts.threads,
            },
            inputs,
        );
        let config = InputRef::Node {
            node: config,
            output: "config".into(),
        };
        let compile = self.push(
            CompileKernel {
                name: k.output.clone(),
                arch: k.arch,
                epoch,
                threads: self.opts.threads,
            },
            BTreeMap::from([
                ("source".to_string(), source.clone()),
                ("config".to_string(), config.clone()),
            ]),
        );
        let mut inputs = BTreeMap::from([
            ("source".to_string(), source),
            ("config".to_string(), config),
            (
                "objtree".to_string(),
                InputRef::Node {
                    node: compile,
                    output: "objtree".into(),
                },
            ),
        ]);
        if let Some((node, _)) = initramfs {
            inputs.insert(
                "initramfs".into(),
                InputRef::Node {
                    node,
                    output: "image".into(),
                },
            );
        }
        let link = self.push(
            LinkKernel {
                name: k.output.clone(),
                arch: k.arch,
                epoch,
                initramfs: initramfs.is_some(),
                threads: self.opts.threads,
            },
            inputs,
        );
        if !k.modules.is_empty() {
            self.add_kernel_modules(recipe, k, compile);
        }
        self.plan.artifacts.push(ArtifactSpec {
            name: k.output.clone(),
            kind: "kernel",
            arch: Arch::X86_64,
            recipe: recipe.file.clone(),
            epoch,
            node: link,
            output: "bzImage".into(),
            details: None,
            facts: None,
        });
        Ok(link)
    }

    /// `modules.cpio.gz` beside the kernel: the closure of `k.modules` among
    /// the `=m` modules the compile step installed. The release is only
    /// known after compiling, so the steps read it from the tree.
    fn add_kernel_modules(&mut self, recipe: &Recipe, k: &recipe::Kernel, compile: usize) {
        let kernel = InputRef::Node {
            node: compile,
            output: "modules".into(),
        };
        let inputs = self.module_inputs(kernel, "");
        let name = beside(&k.output, "modules.cpio.gz");
        let step = BuildModules {
            name: name.clone(),
            kernel_release: String::new(),
            wanted: k.modules.clone(),
            modprobe_d: Vec::new(),
            firmware: 0,
            compressions: vec!["gz".to_string()],
            epoch: self.epoch(recipe),
            origins: k.module_origins.clone(),
            threads: self.opts.threads,
        };
        let node = self.push(step, inputs);
        self.plan.artifacts.push(ArtifactSpec {
            name,
            kind: "modules",
            arch: Arch::X86_64,
            recipe: recipe.file.clone(),
            epoch: self.epoch(recipe),
            node,
            output: "gz".into(),
            details: Some("details"),
            facts: None,
        });
    }

    /// A kernel source as a tree: a linux-source deb's tarball, a `url`
    /// tarball, or a local tarball or tree, unpacked once and cached.
    fn kernel_source(&mut self, name: &str) -> Result<InputRef> {
        self.source_tree(name, Some("usr/src/linux-source-*.tar.xz"))
    }

    /// A source as a tree: a `deb` source's tarball member `deb_member`, a
    /// `url` or `path` tarball (unpacked once, cached), or a local tree
    /// (a checkout given with `--source`) as is.
    fn source_tree(&mut self, name: &str, deb_member: Option<&str>) -> Result<InputRef> {
        if let Some(r) = self.sources.get(&(name.to_string(), "unpacked")) {
            return Ok(r.clone());
        }
        let is_deb = matches!(
            self.recipes.sources.get(name).map(|s| &s.kind),
            Some(SourceKind::Deb { .. })
        ) && !self.opts.source_overrides.contains_key(name);
        let (archive, member) = match (is_deb, deb_member) {
            (true, Some(member)) => (self.deb_tree(name)?, Some(member.to_string())),
            (true, None) => {
                bail!("source `{name}` is a `deb`; give a tarball (`url`, `path`) or a tree")
            }
            (false, _) => {
                let input = self.source_input(name)?;
                let is_tree = match &input {
                    InputRef::Value(Output::Tree { .. }) => true,
                    InputRef::Node { output, .. } => output == "tree",
                    InputRef::Value(Output::File { .. }) => false,
                };
                if is_tree {
                    self.sources
                        .insert((name.to_string(), "unpacked"), input.clone());
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
            BTreeMap::from([("archive".to_string(), archive)]),
        );
        let r = InputRef::Node {
            node,
            output: "tree".into(),
        };
        self.sources
            .insert((name.to_string(), "unpacked"), r.clone());
        Ok(r)
    }

    fn add_initramfs(&mut self, recipe: &Recipe, ir: &recipe::Initramfs) -> Result<usize> {
        let mut inputs = BTreeMap::new();
        if let Some(bb) = &ir.busybox {
            inputs.insert("busybox".to_string(), self.deb_tree(bb)?);
        }
        // Merged in this order, later wins: programs from packages, ROMs,
        // then the recipe's own overlays.
        let mut trees = Vec::new();
        for (name, tree) in [
            ("programs", self.add_programs(ir)?),
            ("roms", self.add_rom_table(recipe)?),
        ] {
            if let Some(tree) = tree {
                inputs.insert(name.to_string(), tree);
                trees.push(name.to_string());
            }
        }
        for (i, dir) in ir.overlays.iter().enumerate() {
            let digest = self
                .store
                .put_local_tree(dir, Modes::GitLike)
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
            trees,
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
            arch: Arch::X86_64,
            recipe: recipe.file.clone(),
            epoch: self.epoch(recipe),
            node,
            output: "image".into(),
            details: None,
            facts: None,
        });
        self.add_host_roms(recipe, ir)?;
        Ok(node)
    }

    /// The inputs of a modules step over the module tree `kernel`: the tree
    /// and its full depmod indexes (a step of their own, cached per kernel).
    /// An empty `release` means the one release the tree holds.
    fn module_inputs(&mut self, kernel: InputRef, release: &str) -> BTreeMap<String, InputRef> {
        let depmod = DepmodIndexes {
            kernel_release: release.to_string(),
        };
        let indexes = self.push(
            depmod,
            BTreeMap::from([("kernel".to_string(), kernel.clone())]),
        );
        BTreeMap::from([
            ("kernel".to_string(), kernel),
            (
                "indexes".to_string(),
                InputRef::Node {
                    node: indexes,
                    output: "indexes".into(),
                },
            ),
        ])
    }

    fn add_modules(&mut self, recipe: &Recipe, m: &recipe::Modules) -> Result<()> {
        let kernel = self.deb_tree(&m.kernel)?;
        let mut inputs = self.module_inputs(kernel, &m.kernel_release);
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
                arch: Arch::X86_64,
                recipe: recipe.file.clone(),
                epoch: self.epoch(recipe),
                node,
                output: ext.into(),
                details: Some("details"),
                facts: None,
            });
        }
        Ok(())
    }

    /// The unpacked tree of a `deb` source, or of its `--source` override:
    /// a `.deb` file is unpacked, a directory is taken as the unpacked tree.
    pub fn deb_tree(&mut self, name: &str) -> Result<InputRef> {
        if let Some(r) = self.sources.get(&(name.to_string(), "tree")) {
            return Ok(r.clone());
        }
        let deb = self.source_input(name)?;
        if let InputRef::Value(Output::Tree { .. }) = deb {
            self.sources.insert((name.to_string(), "tree"), deb.clone());
            return Ok(deb);
        }
        let node = self.push(
            UnpackDeb {
                source: name.to_string(),
            },
            BTreeMap::from([("deb".to_string(), deb)]),
        );
        let r = InputRef::Node {
            node,
            output: "tree".into(),
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
                digest: self.store.put_local_tree(path, Modes::GitLike)?,
            })
        } else {
            let (digest, size) = self.store.put_local_file(path)?;
            Ok(Output::File { digest, size })
        }
    }

    /// `local_input` as a plan input, the path named if hashing fails.
    fn local_value(&self, path: &Path) -> Result<InputRef> {
        let value = self
            .local_input(path)
            .with_context(|| format!("hashing {}", path.display()))?;
        Ok(InputRef::Value(value))
    }

    /// The operator's local copy of source `name` (`--source NAME=PATH`).
    /// For a source pinned by its tree's digest, a tarball must unpack to
    /// the pinned tree (then it builds exactly what the download builds); a
    /// directory is used as given, with a warning when it is another tree.
    fn override_input(&mut self, name: &str, kind: &SourceKind, path: &Path) -> Result<InputRef> {
        let value = self
            .local_input(path)
            .with_context(|| format!("reading --source {name}={}", path.display()))?;
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
                let node = self.push(step, BTreeMap::from([("archive".to_string(), InputRef::Value(value))]));
                return Ok(InputRef::Node {
                    node,
                    output: "tree".into(),
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
            self.override_input(name, &source.kind, path)?
        } else {
            match &source.kind {
                SourceKind::Deb {
                    package,
                    version,
                    sha256,
                    pool,
                } => {
                    let step = FetchDeb {
                        source: name.into(),
                        package: package.clone(),
                        version: version.clone(),
                        sha256: sha256.clone(),
                        pool: pool.clone(),
                        mirrors: self.recipes.deb_mirrors.clone(),
                    };
                    InputRef::Node {
                        node: self.push(step, BTreeMap::new()),
                        output: "file".into(),
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
                        output: "tree".into(),
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
                        output: "file".into(),
                    }
                }
            }
        };
        self.sources.insert((name.to_string(), "file"), r.clone());
        Ok(r)
    }
}

/// `file` in the directory of the artifact `path`
/// (`stage2/stage2_vmlinuz`, `modules.cpio.gz` → `stage2/modules.cpio.gz`).
fn beside(path: &str, file: &str) -> String {
    match path.rsplit_once('/') {
        Some((dir, _)) => format!("{dir}/{file}"),
        None => file.to_string(),
    }
}

/// The kernel option that lets it unpack an initramfs compressed with `c`.
fn decompressor_option(c: crate::archive::Compression) -> Option<&'static str> {
    use crate::archive::Compression::*;
    match c {
        Gzip => Some("CONFIG_RD_GZIP"),
        Zstd => Some("CONFIG_RD_ZSTD"),
        Xz => Some("CONFIG_RD_XZ"),
        None => Option::None,
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
/// anything runs. Returns the variables the templates use: a variable no
/// template names must not change the image's key.
fn check_templates(recipe: &Recipe, ir: &recipe::Initramfs) -> Result<BTreeMap<String, String>> {
    let mut used = std::collections::BTreeSet::new();
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
        used.extend(recipe::template::referenced(&text));
    }
    Ok(recipe
        .variables
        .iter()
        .filter(|(k, _)| used.contains(*k))
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
