//! Step kinds. A step is a function of its key: typed parameters (the step
//! value itself), input digests, and tool versions. It runs in a private
//! scratch directory and returns outputs that the engine stores by content.
//!
//! Architecture invariant: a step reads nothing but its inputs (through
//! `StepContext`) and its scratch directory: no recipe, no environment, no
//! clock, no `output/`. Anything it needs is a field, hence part of the key.

pub mod deb;
pub mod fetch;
pub mod initramfs;
pub mod ipxe;
pub mod iso;
pub mod kernel;
pub mod key;
pub mod modules;
pub mod programs;
pub mod roms;
pub mod script;
pub mod sign;
pub mod tarball;
pub mod uki;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use anyhow::{bail, Context, Result};
use serde::Serialize;

pub use key::KeyComponents;

use crate::store::{Digest, Output, Shared, Store, Tree, Verify};

/// The step's parameters as they enter its key: what its `Serialize`
/// writes, so a new field is in the key unless it is `#[serde(skip)]`
/// (listed with why in [`key::NOT_IN_KEYS`]).
pub trait Params {
    fn params(&self) -> serde_json::Value;
}

impl<T: Serialize> Params for T {
    fn params(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("step parameters serialize")
    }
}

pub trait Step: Params + Send + Sync {
    /// Stable name of the step kind, part of the key.
    fn kind(&self) -> &'static str;
    /// Bumped whenever the step's code changes what it produces (the format
    /// writers it calls included): an old cache entry must never stand in
    /// for new bytes.
    fn version(&self) -> u32;
    /// What an operator sees in plans and progress lines.
    fn label(&self) -> String;
    /// A name that stays the same across builds of "the same" step (a
    /// source's fetch, an artifact's build) while its key changes; used to
    /// find the previous build for `--explain`.
    fn identity(&self) -> String {
        self.label()
    }
    /// External programs whose versions enter the key.
    fn tools(&self) -> &'static [&'static str] {
        &[]
    }
    /// Kiln's own archive writers the step calls: their format versions
    /// enter the key.
    fn formats(&self) -> &'static [crate::archive::Format] {
        &[]
    }
    /// Steps that run by the hundred (one per host) name their batch:
    /// progress shows one counter per batch instead of a line per step.
    fn batch(&self) -> Option<&'static str> {
        None
    }
    fn run(&self, ctx: &StepContext, scratch: &Path) -> Result<BTreeMap<String, Output>>;
}

/// The name of one of a step's inputs or outputs, declared once as a
/// constant beside the step that reads or writes it and used by the plan
/// that wires it: a misspelt name fails to compile instead of failing the
/// build with "step input `x` was not provided".
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Slot(pub &'static str);

impl Slot {
    /// `<name>.<i>`: one of a numbered list of inputs (`overlay.0`, …).
    pub fn nth(self, i: usize) -> String {
        format!("{}.{i}", self.0)
    }
}

impl std::fmt::Display for Slot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.0)
    }
}

impl AsRef<str> for Slot {
    fn as_ref(&self) -> &str {
        self.0
    }
}

impl From<Slot> for String {
    fn from(slot: Slot) -> String {
        slot.0.to_string()
    }
}

/// A step's view of the world: its named inputs, the store to read them
/// from, and where tool logs go (not part of the key).
pub struct StepContext<'a> {
    pub store: &'a Store,
    pub inputs: BTreeMap<String, Output>,
    pub log_dir: PathBuf,
    /// Tells apart the logs of one step built with different keys: the
    /// key's short form, as the `running … [key]` line prints it.
    pub log_tag: String,
    /// Store blobs this step's checkouts hard-linked into its scratch.
    shared: Mutex<Shared>,
}

impl<'a> StepContext<'a> {
    pub fn new(
        store: &'a Store,
        inputs: BTreeMap<String, Output>,
        log_dir: PathBuf,
        log_tag: String,
    ) -> StepContext<'a> {
        StepContext {
            store,
            inputs,
            log_dir,
            log_tag,
            shared: Mutex::default(),
        }
    }

    /// Runs `step` in `scratch`, then checks that no tool wrote into a
    /// store blob through a checkout (`Store::verify_shared`).
    pub fn run_step(&self, step: &dyn Step, scratch: &Path) -> Result<BTreeMap<String, Output>> {
        let result = step.run(self, scratch);
        let shared = std::mem::take(&mut *self.shared.lock().expect("not poisoned"));
        match (result, self.store.verify_shared(&shared)) {
            (Ok(outputs), Ok(())) => Ok(outputs),
            (Err(e), Ok(())) | (Ok(_), Err(e)) => Err(e),
            (Err(e), Err(written)) => Err(e.context(format!("{written:#}"))),
        }
    }

    /// `tree` read-only at `dest` (`Store::checkout`), its hard links
    /// checked after the step.
    pub fn checkout(&self, tree: &Tree, dest: &Path) -> Result<()> {
        let shared = self.store.checkout(tree, dest)?;
        self.shared.lock().expect("not poisoned").append(shared);
        Ok(())
    }

    /// `Store::link_subtree`, its hard links checked after the step.
    pub fn link_subtree(
        &self,
        tree: &Tree,
        prefix: &str,
        dest: &Path,
        verify: Verify,
    ) -> Result<()> {
        let shared = self.store.link_subtree(tree, prefix, dest, verify)?;
        self.shared.lock().expect("not poisoned").append(shared);
        Ok(())
    }

    pub fn input(&self, name: impl AsRef<str>) -> Result<&Output> {
        let name = name.as_ref();
        self.inputs
            .get(name)
            .with_context(|| format!("step input `{name}` was not provided"))
    }

    pub fn file(&self, name: impl AsRef<str>) -> Result<PathBuf> {
        let name = name.as_ref();
        match self.input(name)? {
            Output::File { digest, .. } => self.store.verified_blob(digest),
            Output::Tree { .. } => bail!("step input `{name}` is a tree, expected a file"),
        }
    }

    pub fn tree(&self, name: impl AsRef<str>) -> Result<Tree> {
        let name = name.as_ref();
        match self.input(name)? {
            Output::Tree { digest } => self.store.tree(digest),
            Output::File { .. } => bail!("step input `{name}` is a file, expected a tree"),
        }
    }

    /// The bytes of `path` inside the tree input `input`; `what` says what
    /// the tree should have been when the file is missing.
    pub fn tree_file(&self, input: impl AsRef<str>, path: &str, what: &str) -> Result<Vec<u8>> {
        let input = input.as_ref();
        let tree = self.tree(input)?;
        match tree.get(path).map(|e| &e.kind) {
            Some(crate::store::TreeKind::File { digest, .. }) => self.store.read_blob(digest),
            _ => bail!("the `{input}` input has no {path}: is it {what}?"),
        }
    }

    /// `<log_dir>/<name>-<key prefix>.log`, where a tool's full output goes.
    pub fn log(&self, name: &str) -> PathBuf {
        self.log_dir.join(format!("{name}-{}.log", self.log_tag))
    }
}

/// Sets the mtime of everything under `dir` (symlinks excluded) to `time`:
/// tools that record mtimes (xorriso, make's up-to-date checks) then see
/// one fixed value.
pub fn set_mtimes(dir: &Path, time: std::time::SystemTime) -> Result<()> {
    for entry in walkdir::WalkDir::new(dir) {
        let entry = entry?;
        if entry.file_type().is_symlink() {
            continue;
        }
        fs_err::File::open(entry.path())
            .and_then(|f| f.set_modified(time))
            .with_context(|| format!("setting the mtime of {}", entry.path().display()))?;
    }
    Ok(())
}

/// The digest an input contributes to a key.
pub fn output_digest(o: &Output) -> Digest {
    match o {
        Output::File { digest, .. } | Output::Tree { digest } => *digest,
    }
}

#[cfg(test)]
mod tests {
    use super::Slot;

    #[test]
    fn a_numbered_slot_is_its_name_dot_index() {
        assert_eq!(Slot("overlay").nth(2), "overlay.2");
        assert_eq!(String::from(Slot("tree")), "tree");
    }
}
