//! From recipes to a graph of steps. Each node is a step plus where its
//! inputs come from: another node's output, or a value already in the store
//! (a local `path` source or an overlay, hashed by content at plan time).
//!
//! Architecture invariant: planning runs no tools and fetches nothing; it
//! may hash local inputs into the store. Execution lives in `exec`.

pub mod explain;
mod initramfs;
mod ipxe;
mod kernel;
mod media;
mod roms;
mod sign;
mod sources;

pub use ipxe::artifact_name as ipxe_artifact;
pub use media::host_artifact;
pub use roms::host_roms_artifact;
pub use sources::{plan_deb_tree, plan_sources};

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{bail, Context, Result};

use crate::arch::Arch;
use crate::recipe::{self, Recipe, Recipes};
use crate::steps::Step;
use crate::store::{Output, Store};

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
    /// What a recipe's `[signing]` asks to sign but stays unsigned because no
    /// key was given: (recipe file, kind).
    pub unsigned: Vec<(PathBuf, String)>,
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
    /// The operator's signing key, for what recipes' `[signing]` names.
    pub signing: Option<std::sync::Arc<crate::sign::SigningKey>>,
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
                match artifact_recipe(recipes, target) {
                    Some(name) => name,
                    None => continue,
                }
            }
            None => target.as_str(),
        };
        let recipe = recipes
            .targets
            .get(recipe_name)
            .with_context(|| unknown_target(recipes, target))?;
        b.add_recipe_once(recipe)?;
    }
    // An artifact outside the recipe its path names (stage2/arm64/… is the
    // stage2-arm64 recipe's): every recipe is planned, the one that builds
    // it kept.
    if wanted
        .iter()
        .any(|w| !b.plan.artifacts.iter().any(|a| &a.name == w))
    {
        for recipe in recipes.targets.values() {
            b.add_recipe_once(recipe)?;
        }
    }
    let whole: Vec<&String> = targets.iter().filter(|t| !t.contains('/')).collect();
    let plan = b.plan;
    // Recipe loading refuses two declared outputs with one path; this also
    // catches a declared path that meets a derived one (a host's files).
    let mut seen = BTreeMap::new();
    for a in &plan.artifacts {
        if let Some(other) = seen.insert(a.name.as_str(), a.recipe.as_path()) {
            bail!(
                "two artifacts would be written to the same output path `{}`: one of {} and one of {}",
                a.name,
                other.display(),
                a.recipe.display()
            );
        }
    }
    // Artifacts of recipes planned only as another's dependency (stage1's
    // ROMs inside stage3) are built as far as needed but not installed.
    // A file's detached signature (`<file>.sig`) comes with the file.
    let keep = |a: &ArtifactSpec| {
        wanted.contains(&a.name)
            || a.name
                .strip_suffix(crate::steps::sign::SIG_SUFFIX)
                .is_some_and(|signed| wanted.iter().any(|w| w == signed))
            || whole
                .iter()
                .any(|t| a.recipe.file_stem().is_some_and(|s| s == t.as_str()))
    };
    if let Some(missing) = wanted
        .iter()
        .find(|w| !plan.artifacts.iter().any(|a| &&a.name == w))
    {
        let names = plan.artifacts.iter().map(|a| a.name.as_str());
        let hint = crate::recipe::diag::did_you_mean(missing, names);
        bail!("no recipe builds the artifact `{missing}`: artifacts are named by their output path{hint}");
    }
    if plan.artifacts.iter().all(keep) {
        return Ok(plan);
    }
    Ok(prune(plan, keep))
}

/// The recipe named by an artifact path's first component (`stage2/…`),
/// or the one whose `[[ipxe.layout]]` puts a host's file at that path;
/// `None` when neither is known (the caller then asks every recipe).
fn artifact_recipe<'a>(recipes: &'a Recipes, artifact: &'a str) -> Option<&'a str> {
    let (first, _) = artifact.split_once('/').expect("artifact paths have a /");
    if recipes.targets.contains_key(first) {
        return Some(first);
    }
    let laid_out = recipes.targets.iter().find(|(_, r)| {
        r.ipxe.as_ref().is_some_and(|i| {
            i.hosts
                .iter()
                .any(|h| h.paths.values().any(|p| p == artifact))
        })
    });
    laid_out.map(|(name, _)| name.as_str())
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
    let artifacts: Vec<ArtifactSpec> = artifacts
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
    let unsigned = plan
        .unsigned
        .into_iter()
        .filter(|(recipe, _)| artifacts.iter().any(|a| &a.recipe == recipe))
        .collect();
    Plan {
        nodes,
        artifacts,
        checks,
        unsigned,
    }
}

fn unknown_target(recipes: &Recipes, target: &str) -> String {
    let names: Vec<&str> = recipes.targets.keys().map(String::as_str).collect();
    let hint = recipe::diag::did_you_mean(target, names.iter().copied());
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
    /// Source name and form → its input (deduplicated across recipes).
    sources: BTreeMap<(String, sources::Form), InputRef>,
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
        self.check_signing_key(recipe)?;
        let first = self.plan.artifacts.len();
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
        self.add_detached_signatures(recipe, first);
        if self.plan.artifacts.is_empty() {
            bail!("{}: the recipe names no artifacts", recipe.file.display());
        }
        Ok(())
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
