//! The closure: what `modprobe` would load for each wanted item, computed
//! as kmod's `kmod_module_get_probe_list` does, plus weak dependencies and
//! the firmware every chosen module names.

use std::collections::BTreeSet;

use anyhow::{bail, Result};

use super::config::{base_name, ModprobeConfig, Softdep, Weakdep};
use super::index::{fnmatch, Found, ModuleIndex};

/// What a recipe asks for. A parameter of the modules step: it keys the
/// step as `{"name": …}`, `{"alias": …}` or `{"glob": …}`.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Wanted {
    /// A module name (`-` and `_` are equivalent); if no module has that
    /// name it is tried as an alias, as modprobe does (`fs-ext4`).
    Name(String),
    /// A concrete modalias (`pci:v00008086d000010D3sv...`), matched against
    /// every alias pattern; all matching modules are taken.
    Alias(String),
    /// A path pattern relative to `lib/modules/<kver>`: `*` within a
    /// component, `**` across; the compression suffix may be omitted.
    Glob(String),
}

impl Wanted {
    /// The item as the recipe wrote it.
    pub fn text(&self) -> &str {
        match self {
            Wanted::Name(s) | Wanted::Alias(s) | Wanted::Glob(s) => s,
        }
    }
}

impl std::fmt::Display for Wanted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Wanted::Name(n) => write!(f, "module `{n}`"),
            Wanted::Alias(a) => write!(f, "alias `{a}`"),
            Wanted::Glob(g) => write!(f, "glob `{g}`"),
        }
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Closure {
    /// Paths relative to `lib/modules/<kver>`, as in modules.dep and as
    /// shipped (`kernel/drivers/net/virtio_net.ko.xz`).
    pub modules: BTreeSet<String>,
    /// Names from `.modinfo` `firmware=` of every chosen module.
    pub firmware: BTreeSet<String>,
    /// Wanted or depended-on names that are built into the kernel.
    pub builtin: BTreeSet<String>,
    /// Soft or weak dependencies that name nothing in this tree; kmod skips
    /// them too ("continuing anyway"), the caller may want to say so.
    pub unresolved: BTreeSet<String>,
}

/// Resolves `wanted` against `index` with the recipe's modprobe.d `conf`.
///
/// Blacklist: as modprobe (which always applies it to aliases): a
/// blacklisted module is not taken when it is reached through an alias or
/// a glob, but a module wanted by its own name is taken, and dependencies
/// and softdeps are never filtered. An item that matches nothing, or only
/// blacklisted modules, is an error naming the item.
pub fn resolve(index: &ModuleIndex, wanted: &[Wanted], conf: &ModprobeConfig) -> Result<Closure> {
    let mut walk = Walk::new(index, conf);
    for item in wanted {
        for found in roots(index, item, conf)? {
            walk.take(&found)?;
        }
    }
    let mut closure = walk.closure;
    for name in &walk.visited {
        let info = index.modinfo(name)?;
        closure
            .firmware
            .extend(info.values("firmware").map(str::to_owned));
    }
    Ok(closure)
}

/// The modules and builtins a wanted item names directly.
fn roots(index: &ModuleIndex, item: &Wanted, conf: &ModprobeConfig) -> Result<Vec<Found>> {
    let (found, via_alias) = match item {
        Wanted::Name(s) | Wanted::Alias(s) => {
            let l = index.lookup(s, conf);
            (l.found, l.via_alias)
        }
        Wanted::Glob(g) => (index.glob(g).into_iter().map(Found::Module).collect(), true),
    };
    if found.is_empty() {
        bail!(
            "{item} matches nothing in {} (not a module in modules.dep, an alias in modules.alias \
             or the recipe's modprobe.d, nor a builtin)",
            index.dir.display()
        );
    }
    if !via_alias {
        return Ok(found);
    }
    let (blocked, kept): (Vec<Found>, Vec<Found>) = found
        .into_iter()
        .partition(|f| matches!(f, Found::Module(n) if conf.blacklist.contains(n)));
    if kept.is_empty() {
        let names: Vec<String> = blocked.iter().map(found_name).collect();
        bail!(
            "{item} matches only blacklisted modules ({}); want one by name to include it anyway",
            names.join(", ")
        );
    }
    Ok(kept)
}

fn found_name(f: &Found) -> String {
    match f {
        Found::Module(n) | Found::Builtin(n) => n.clone(),
    }
}

struct Walk<'a> {
    index: &'a ModuleIndex,
    conf: &'a ModprobeConfig,
    /// kmod reads modprobe.d files and depmod's modules.softdep as one list
    /// sorted by file base name; the first rule matching a module wins.
    softdeps: Vec<&'a Softdep>,
    weakdeps: Vec<&'a Weakdep>,
    visited: BTreeSet<String>,
    closure: Closure,
}

impl<'a> Walk<'a> {
    fn new(index: &'a ModuleIndex, conf: &'a ModprobeConfig) -> Walk<'a> {
        let mut softdeps: Vec<&Softdep> = conf.softdeps.iter().chain(&index.softdeps).collect();
        softdeps.sort_by_key(|d| base_name(&d.origin));
        let mut weakdeps: Vec<&Weakdep> = conf.weakdeps.iter().chain(&index.weakdeps).collect();
        weakdeps.sort_by_key(|d| base_name(&d.origin));
        Walk {
            index,
            conf,
            softdeps,
            weakdeps,
            visited: BTreeSet::new(),
            closure: Closure::default(),
        }
    }

    fn take(&mut self, found: &Found) -> Result<()> {
        match found {
            Found::Module(name) => self.visit(name),
            Found::Builtin(name) => {
                self.closure.builtin.insert(name.clone());
                Ok(())
            }
        }
    }

    /// kmod's `__kmod_module_get_probe_list`: the module, its modules.dep
    /// list, and the softdeps of each of those, recursively.
    fn visit(&mut self, name: &str) -> Result<()> {
        if !self.visited.insert(name.to_owned()) {
            return Ok(());
        }
        let index = self.index;
        let Some(module) = index.modules.get(name) else {
            bail!("`{name}` is not a module in modules.dep");
        };
        self.closure.modules.insert(module.path.clone());
        for dep in &module.deps {
            let dep_name = super::index::path_to_name(dep);
            self.visit(&dep_name)?;
        }
        for dep in self.related(name)? {
            self.follow(&dep)?;
        }
        Ok(())
    }

    /// Names `name` pulls in besides modules.dep: its first matching
    /// softdep rule (pre and post) and its weak dependencies.
    fn related(&self, name: &str) -> Result<Vec<String>> {
        let mut out = Vec::new();
        if let Some(rule) = self.softdeps.iter().find(|d| fnmatch(&d.pattern, name)) {
            out.extend(rule.pre.iter().chain(&rule.post).cloned());
        }
        if let Some(rule) = self.weakdeps.iter().find(|d| fnmatch(&d.pattern, name)) {
            out.extend(rule.modules.iter().cloned());
        }
        // Kernels ≥ 6.11 declare weak dependencies with MODULE_WEAKDEP; read
        // them from .modinfo so an older depmod (no modules.weakdep) still
        // gets them.
        let info = self.index.modinfo(name)?;
        out.extend(info.values("weakdep").map(str::to_owned));
        Ok(out)
    }

    /// A softdep or weakdep name, looked up like any name (aliases too);
    /// the blacklist does not apply, as in kmod.
    fn follow(&mut self, dep: &str) -> Result<()> {
        let found = self.index.lookup(dep, self.conf).found;
        if found.is_empty() {
            self.closure.unresolved.insert(dep.to_owned());
        }
        for f in &found {
            self.take(f)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wanted_items_key_the_step_as_the_recipe_classified_them() {
        let json = serde_json::to_string(&[
            Wanted::Name("virtio_net".into()),
            Wanted::Alias("pci:v1".into()),
            Wanted::Glob("kernel/**".into()),
        ])
        .unwrap();
        assert_eq!(
            json,
            r#"[{"name":"virtio_net"},{"alias":"pci:v1"},{"glob":"kernel/**"}]"#
        );
    }
}
