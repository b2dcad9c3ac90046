//! What kmod consults, loaded from `lib/modules/<kver>/` (depmod's text
//! indexes plus each module's `.modinfo`), and name lookup in kmod's order.

use fs_err as fs;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use anyhow::{bail, Context, Result};

use super::config::{parse_modprobe_d, Alias, ModprobeConfig, Softdep, Weakdep};
use super::modinfo::{read_modinfo, ModInfo};

/// Everything kmod would consult, loaded from an unpacked root that
/// contains `lib/modules/<kver>/` with depmod's output in it.
pub struct ModuleIndex {
    /// `<root>/lib/modules/<kver>`.
    pub dir: PathBuf,
    /// Normalized module name → path relative to `dir` and its dependencies
    /// (paths, as modules.dep lists them).
    pub modules: BTreeMap<String, Module>,
    /// `modules.alias`: (normalized pattern, module name), in file order.
    pub aliases: Vec<Alias>,
    /// `modules.softdep`, as kmod reads it (a config file named so).
    pub softdeps: Vec<Softdep>,
    /// `modules.weakdep` when depmod (kmod ≥ 33) wrote one.
    pub weakdeps: Vec<Weakdep>,
    /// Names from `modules.builtin`.
    pub builtin: BTreeSet<String>,
    /// `alias=` entries of `modules.builtin.modinfo`: (pattern, builtin name).
    pub builtin_aliases: Vec<Alias>,
    modinfo: Mutex<BTreeMap<String, Arc<ModInfo>>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Module {
    pub path: String,
    pub deps: Vec<String>,
}

/// What a name resolves to.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Found {
    Module(String),
    Builtin(String),
}

/// A lookup's result, and whether it went through an alias (kmod applies
/// the blacklist only then).
pub struct Lookup {
    pub found: Vec<Found>,
    pub via_alias: bool,
}

impl ModuleIndex {
    pub fn load(root: &Path, kver: &str) -> Result<ModuleIndex> {
        let dir = root.join("lib/modules").join(kver);
        let dep_path = dir.join("modules.dep");
        if !dep_path.is_file() {
            bail!(
                "{} is missing: the module tree has no depmod indexes; run `depmod -b <root> {kver}` \
                 first (Debian packages leave this to their postinst)",
                dep_path.display()
            );
        }
        let modules = parse_modules_dep(&read(&dep_path)?, &dep_path)?;
        let aliases = parse_modules_alias(&read_optional(&dir.join("modules.alias"))?);
        let softdep_path = dir.join("modules.softdep");
        let weakdep_path = dir.join("modules.weakdep");
        let softdeps = parse_depmod_conf(&softdep_path)?.softdeps;
        let weakdeps = parse_depmod_conf(&weakdep_path)?.weakdeps;
        let builtin = read_optional(&dir.join("modules.builtin"))?
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(path_to_name)
            .collect();
        let builtin_aliases = parse_builtin_modinfo(&dir.join("modules.builtin.modinfo"))?;
        Ok(ModuleIndex {
            dir,
            modules,
            aliases,
            softdeps,
            weakdeps,
            builtin,
            builtin_aliases,
            modinfo: Mutex::new(BTreeMap::new()),
        })
    }

    /// The `.modinfo` of a module (read once, then cached).
    pub fn modinfo(&self, name: &str) -> Result<Arc<ModInfo>> {
        let module = self
            .modules
            .get(name)
            .with_context(|| format!("`{name}` is not a module in modules.dep"))?;
        if let Some(info) = self.cache().get(name) {
            return Ok(info.clone());
        }
        let info = Arc::new(read_modinfo(&self.dir.join(&module.path))?);
        self.cache().insert(name.to_owned(), info.clone());
        Ok(info)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, BTreeMap<String, Arc<ModInfo>>> {
        // A poisoned cache only means another thread panicked mid-insert of
        // a complete value; the map is still consistent.
        self.modinfo.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// kmod's `kmod_module_new_from_lookup`: the first source that knows the
    /// name wins, in this order: config aliases, modules.dep, modules.alias,
    /// modules.builtin, builtin aliases. (modules.symbols and install
    /// commands are not consulted: Kiln rejects install lines and nothing
    /// asks for `symbol:` names.)
    pub fn lookup(&self, name: &str, conf: &ModprobeConfig) -> Lookup {
        let name = normalize(name);
        let from_config: Vec<Found> = conf
            .aliases
            .iter()
            .filter(|a| fnmatch(&a.pattern, &name))
            .filter_map(|a| self.by_name(&a.module))
            .collect();
        if !from_config.is_empty() {
            return Lookup {
                found: from_config,
                via_alias: true,
            };
        }
        if !name.contains(':') && self.modules.contains_key(&name) {
            return Lookup {
                found: vec![Found::Module(name)],
                via_alias: false,
            };
        }
        let from_file: Vec<Found> = self
            .aliases
            .iter()
            .filter(|a| fnmatch(&a.pattern, &name))
            .filter_map(|a| self.by_name(&a.module))
            .collect();
        if !from_file.is_empty() {
            return Lookup {
                found: from_file,
                via_alias: true,
            };
        }
        if self.builtin.contains(&name) {
            return Lookup {
                found: vec![Found::Builtin(name)],
                via_alias: false,
            };
        }
        let builtin: Vec<Found> = self
            .builtin_aliases
            .iter()
            .filter(|a| fnmatch(&a.pattern, &name))
            .map(|a| Found::Builtin(a.module.clone()))
            .collect();
        Lookup {
            found: builtin,
            via_alias: true,
        }
    }

    /// A module name as such (no alias expansion), as kmod treats an alias's
    /// target.
    fn by_name(&self, name: &str) -> Option<Found> {
        if self.modules.contains_key(name) {
            Some(Found::Module(name.to_owned()))
        } else if self.builtin.contains(name) {
            Some(Found::Builtin(name.to_owned()))
        } else {
            None
        }
    }

    /// Modules whose path matches `pattern` (see [`glob_match`]); the
    /// compression suffix may be left out of the pattern.
    pub fn glob(&self, pattern: &str) -> Vec<String> {
        self.modules
            .iter()
            .filter(|(_, m)| {
                glob_match(pattern, &m.path) || glob_match(pattern, strip_compression(&m.path))
            })
            .map(|(name, _)| name.clone())
            .collect()
    }
}

fn read(path: &Path) -> Result<String> {
    fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

fn read_optional(path: &Path) -> Result<String> {
    if path.exists() {
        read(path)
    } else {
        Ok(String::new())
    }
}

fn parse_depmod_conf(path: &Path) -> Result<ModprobeConfig> {
    parse_modprobe_d(&read_optional(path)?, &path.to_string_lossy())
}

/// `path: dep dep ...` per line (depmod writes the transitive list).
fn parse_modules_dep(text: &str, origin: &Path) -> Result<BTreeMap<String, Module>> {
    let mut modules = BTreeMap::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() || line.starts_with('#') {
            continue;
        }
        let Some((path, deps)) = line.split_once(':') else {
            bail!("{}:{}: expected `module: deps...`", origin.display(), i + 1);
        };
        let module = Module {
            path: path.trim().to_owned(),
            deps: deps.split_whitespace().map(str::to_owned).collect(),
        };
        modules.insert(path_to_name(path), module);
    }
    Ok(modules)
}

/// `alias <pattern> <module>` per line; patterns normalized as kmod's
/// `modules.alias.bin` stores them.
fn parse_modules_alias(text: &str) -> Vec<Alias> {
    text.lines()
        .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
            ["alias", pattern, module] => Some(Alias {
                pattern: normalize(pattern),
                module: normalize(module),
            }),
            _ => None,
        })
        .collect()
}

/// `modules.builtin.modinfo`: NUL-separated `module.key=value`; depmod
/// turns its `alias=` entries into `modules.builtin.alias.bin`.
fn parse_builtin_modinfo(path: &Path) -> Result<Vec<Alias>> {
    if !path.exists() {
        return Ok(Vec::new());
    }
    let bytes = fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    Ok(ModInfo::parse(&bytes)
        .entries
        .into_iter()
        .filter_map(|(k, v)| {
            let module = k.strip_suffix(".alias")?;
            Some(Alias {
                pattern: normalize(&v),
                module: normalize(module),
            })
        })
        .collect())
}

/// kmod's `path_to_modname`: base name up to the first `.`, `-` → `_`.
pub fn path_to_name(path: &str) -> String {
    let base = path.trim().rsplit('/').next().unwrap_or(path);
    normalize(base.split('.').next().unwrap_or(base))
}

/// kmod's `alias_normalize`: `-` becomes `_` except inside `[...]`.
pub fn normalize(name: &str) -> String {
    let mut out = String::with_capacity(name.len());
    let mut in_class = false;
    for c in name.chars() {
        match c {
            '[' => in_class = true,
            ']' => in_class = false,
            '-' if !in_class => {
                out.push('_');
                continue;
            }
            _ => {}
        }
        out.push(c);
    }
    out
}

pub fn strip_compression(path: &str) -> &str {
    [".xz", ".zst", ".gz"]
        .iter()
        .find_map(|ext| path.strip_suffix(ext))
        .unwrap_or(path)
}

/// `fnmatch(pattern, s, 0)` as kmod calls it for aliases and softdep names:
/// `*`, `?`, `[...]` (with `!`/`^` and ranges), `\` escapes; `/` and a
/// leading `.` are ordinary characters.
pub fn fnmatch(pattern: &str, s: &str) -> bool {
    let p: Vec<char> = pattern.chars().collect();
    let s: Vec<char> = s.chars().collect();
    fnmatch_at(&p, &s)
}

fn fnmatch_at(p: &[char], s: &[char]) -> bool {
    // Iterative with backtracking to the last `*`: linear in practice.
    let (mut pi, mut si) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while si < s.len() {
        if pi < p.len() && p[pi] == '*' {
            star = Some((pi, si));
            pi += 1;
            continue;
        }
        if let Some(next) = single(p, pi, s[si]) {
            pi = next;
            si += 1;
            continue;
        }
        match star {
            Some((sp, ss)) => {
                pi = sp + 1;
                si = ss + 1;
                star = Some((sp, ss + 1));
            }
            None => return false,
        }
    }
    p[pi..].iter().all(|&c| c == '*')
}

/// If the pattern element at `pi` matches `c`, the index after it.
fn single(p: &[char], pi: usize, c: char) -> Option<usize> {
    match p.get(pi)? {
        '?' => Some(pi + 1),
        '[' => class(p, pi, c).unwrap_or((p[pi] == c).then_some(pi + 1)),
        '\\' if pi + 1 < p.len() => (p[pi + 1] == c).then_some(pi + 2),
        &x => (x == c).then_some(pi + 1),
    }
}

/// A bracket expression at `pi`: `None` if it is unterminated (then `[` is
/// literal, as in glibc), else whether it matched and where it ends.
fn class(p: &[char], pi: usize, c: char) -> Option<Option<usize>> {
    let mut i = pi + 1;
    let negate = matches!(p.get(i), Some('!' | '^'));
    if negate {
        i += 1;
    }
    let mut matched = false;
    let mut first = true;
    while i < p.len() && (first || p[i] != ']') {
        first = false;
        if i + 2 < p.len() && p[i + 1] == '-' && p[i + 2] != ']' {
            matched |= p[i] <= c && c <= p[i + 2];
            i += 3;
        } else {
            matched |= p[i] == c;
            i += 1;
        }
    }
    if i >= p.len() {
        return None;
    }
    Some((matched != negate).then_some(i + 1))
}

/// A path glob over module paths relative to `lib/modules/<kver>`: `*` and
/// `?` stay within one `/`-separated component, `**` as a whole component
/// matches any number of components (zero included).
pub fn glob_match(pattern: &str, path: &str) -> bool {
    let p: Vec<&str> = pattern.split('/').filter(|c| !c.is_empty()).collect();
    let s: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    glob_components(&p, &s)
}

fn glob_components(p: &[&str], s: &[&str]) -> bool {
    match p.split_first() {
        None => s.is_empty(),
        Some((&"**", rest)) => (0..=s.len()).any(|skip| glob_components(rest, &s[skip..])),
        Some((first, rest)) => {
            !s.is_empty() && fnmatch(first, s[0]) && glob_components(rest, &s[1..])
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnmatch_handles_stars_classes_and_escapes() {
        assert!(fnmatch(
            "pci:v00008086d000010D3sv*sd*bc*sc*i*",
            "pci:v00008086d000010D3sv00008086sd00000000bc02sc00i00"
        ));
        assert!(!fnmatch(
            "pci:v00008086d000010D3sv*",
            "pci:v00008086d000010D4sv0"
        ));
        assert!(fnmatch(
            "usb:v*p*d*dc*dsc*dp*ic08isc06ip50in*",
            "usb:v1p2d3dc0dsc0dp0ic08isc06ip50in00"
        ));
        assert!(fnmatch("a[0-9]b", "a7b") && !fnmatch("a[!0-9]b", "a7b"));
        assert!(fnmatch("a?c", "abc") && !fnmatch("a?c", "ac"));
        assert!(fnmatch("a\\*", "a*") && !fnmatch("a\\*", "ab"));
        assert!(
            fnmatch("*", "x/y"),
            "fnmatch without FNM_PATHNAME lets * cross /"
        );
        assert!(fnmatch("a[", "a["), "an unterminated class is literal");
    }

    #[test]
    fn names_normalize_dashes_outside_brackets_only() {
        assert_eq!(normalize("fs-ext4"), "fs_ext4");
        assert_eq!(normalize("of:N*Cfsl,a-b[x-z]"), "of:N*Cfsl,a_b[x-z]");
        assert_eq!(
            path_to_name("kernel/drivers/net/virtio-net.ko.xz"),
            "virtio_net"
        );
    }

    #[test]
    fn glob_star_stays_within_a_component_and_double_star_crosses() {
        let p = "kernel/drivers/net/ethernet/intel/e1000e/e1000e.ko";
        assert!(glob_match("kernel/drivers/net/ethernet/intel/**", p));
        assert!(!glob_match("kernel/drivers/net/ethernet/intel/*", p));
        assert!(glob_match("kernel/drivers/net/ethernet/intel/*/*.ko", p));
        assert!(glob_match("**/e1000e.ko", p));
        assert!(glob_match("kernel/**/intel/**/e1000e.ko", p));
        assert!(!glob_match("kernel/drivers/*.ko", p));
    }

    #[test]
    fn compression_suffix_is_stripped_for_globs() {
        assert_eq!(strip_compression("a/b.ko.zst"), "a/b.ko");
        assert_eq!(strip_compression("a/b.ko"), "a/b.ko");
    }
}
