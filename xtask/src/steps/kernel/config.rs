//! The kernel config step: a base config (`make tinyconfig`, …) or a full
//! config file, recipe fragments merged in order (a later line for the same
//! option replaces an earlier one, as the kernel's merge_config.sh does),
//! `make olddefconfig`, then a check that every option the fragments asked
//! for survived. Kconfig silently drops an option whose dependencies are
//! unmet; Kiln names each one, with the unmet dependency when it can tell.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::{checkout_source, make, BUILD_DIR};
use crate::arch::Arch;
use crate::steps::{Slot, Step, StepContext};
use crate::store::Output;
use crate::tools;

/// The `.config`: a full config file in (when there is no `base`), the resolved one out.
pub const CONFIG: Slot = Slot("config");
/// Inputs `fragment.0` …: the recipe's config fragments, in order.
pub const FRAGMENT: Slot = Slot("fragment");

#[derive(Debug, Clone, Serialize)]
pub struct KernelConfig {
    /// The artifact this config is for (messages only).
    #[serde(skip)]
    pub name: String,
    pub arch: Arch,
    /// `tinyconfig`, `defconfig` or `allnoconfig`; `None` when the input
    /// `config` is a full config file.
    pub base: Option<String>,
    /// Fragment paths as messages show them (relative to where Kiln runs,
    /// so not part of the key: a checkout elsewhere must hit the same
    /// cache); the files are inputs `fragment.0`, `fragment.1`, …
    #[serde(skip)]
    pub fragments: Vec<String>,
    /// Options Kiln itself needs (the embedded initramfs), merged last.
    pub required: Vec<String>,
    pub epoch: u64,
    #[serde(skip)]
    pub threads: usize,
}

impl Step for KernelConfig {
    fn kind(&self) -> &'static str {
        "kernel-config"
    }
    fn version(&self) -> u32 {
        1
    }
    fn label(&self) -> String {
        format!("kernel config {}", self.name)
    }
    fn tools(&self) -> &'static [&'static str] {
        match self.arch {
            Arch::X86_64 => &["make", "gcc", "flex", "bison"],
            Arch::Arm64 => &["make", "gcc", "flex", "bison", "aarch64-linux-gnu-gcc"],
        }
    }

    fn run(&self, ctx: &StepContext, scratch: &Path) -> Result<BTreeMap<String, Output>> {
        let src = checkout_source(ctx, scratch)?;
        let obj = src.join(BUILD_DIR);
        fs_err::create_dir_all(&obj)?;
        let dot_config = obj.join(".config");
        let log = ctx.log("kernel-config");
        match &self.base {
            Some(base) => {
                let mut cmd = make(&src, self.arch, self.epoch, self.threads)?;
                cmd.arg(base);
                tools::run_logged(cmd, &log)?;
            }
            None => {
                fs_err::copy(ctx.file(CONFIG)?, &dot_config)?;
            }
        }
        let mut fragments = Vec::new();
        for (i, name) in self.fragments.iter().enumerate() {
            let text = fs_err::read_to_string(ctx.file(FRAGMENT.nth(i))?)
                .with_context(|| format!("reading fragment {name}"))?;
            fragments.push((name.clone(), text));
        }
        fragments.push((
            "(kiln: embedded initramfs)".into(),
            self.required.join("\n"),
        ));
        let base_text = fs_err::read_to_string(&dot_config)
            .with_context(|| format!("reading {}", dot_config.display()))?;
        let (merged, requested) = merge(&base_text, &fragments);
        fs_err::write(&dot_config, merged)?;
        let mut cmd = make(&src, self.arch, self.epoch, self.threads)?;
        cmd.arg("olddefconfig");
        tools::run_logged(cmd, &ctx.log("kernel-olddefconfig"))?;
        let final_text = fs_err::read_to_string(&dot_config)?;
        let final_values = parse(&final_text);
        check(&requested, &final_values, &src)
            .with_context(|| format!("kernel config for {}", self.name))?;
        check_signing(&final_values)?;
        let (digest, size) = ctx.store.put_file(&dot_config)?;
        Ok(BTreeMap::from([(
            CONFIG.into(),
            Output::File { digest, size },
        )]))
    }
}

/// An option's value in a config file; `Unset` is `# CONFIG_X is not set`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    Set(String),
    Unset,
}

impl Value {
    fn show(&self) -> &str {
        match self {
            Value::Set(v) => v,
            Value::Unset => "is not set",
        }
    }
    fn enabled(&self) -> bool {
        matches!(self, Value::Set(v) if v == "y" || v == "m")
    }
}

/// One config line as (symbol without `CONFIG_`, value).
fn parse_line(line: &str) -> Option<(&str, Value)> {
    let line = line.trim();
    if let Some(rest) = line.strip_prefix("# CONFIG_") {
        let sym = rest.strip_suffix(" is not set")?;
        return Some((sym, Value::Unset));
    }
    let (sym, value) = line.strip_prefix("CONFIG_")?.split_once('=')?;
    Some((sym, Value::Set(value.to_string())))
}

pub fn parse(text: &str) -> BTreeMap<String, Value> {
    text.lines()
        .filter_map(parse_line)
        .map(|(s, v)| (s.to_string(), v))
        .collect()
}

/// Where a fragment asked for a value: `file:line`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub value: Value,
    pub origin: String,
}

/// Merges fragments into `base`: a fragment line replaces every earlier
/// line for the same symbol. Returns the merged text and what was asked.
fn merge(base: &str, fragments: &[(String, String)]) -> (String, BTreeMap<String, Request>) {
    let mut lines: Vec<String> = base.lines().map(str::to_string).collect();
    let mut requested = BTreeMap::new();
    for (name, text) in fragments {
        for (n, line) in text.lines().enumerate() {
            let Some((sym, value)) = parse_line(line) else {
                continue;
            };
            lines.retain(|l| parse_line(l).is_none_or(|(s, _)| s != sym));
            lines.push(line.trim().to_string());
            requested.insert(
                sym.to_string(),
                Request {
                    value,
                    origin: format!("{name}:{}", n + 1),
                },
            );
        }
    }
    let mut out = lines.join("\n");
    out.push('\n');
    (out, requested)
}

/// Fails naming every requested option whose final value differs.
fn check(
    requested: &BTreeMap<String, Request>,
    final_values: &BTreeMap<String, Value>,
    src: &Path,
) -> Result<()> {
    let mut dropped = Vec::new();
    for (sym, req) in requested {
        let now = final_values.get(sym).cloned().unwrap_or(Value::Unset);
        let same = match (&req.value, &now) {
            (Value::Unset, Value::Unset) => true,
            (Value::Unset, Value::Set(v)) | (Value::Set(v), Value::Unset) => v == "n",
            (Value::Set(a), Value::Set(b)) => a == b,
        };
        if !same {
            dropped.push((sym, req, now));
        }
    }
    if dropped.is_empty() {
        return Ok(());
    }
    let kconfig = KconfigIndex::read(src);
    let mut msg = format!(
        "Kconfig did not keep {} option(s) the fragments ask for:",
        dropped.len()
    );
    for (sym, req, now) in dropped {
        let want = match &req.value {
            Value::Set(v) => format!("CONFIG_{sym}={v}"),
            Value::Unset => format!("# CONFIG_{sym} is not set"),
        };
        let _ = write!(msg, "\n  {want} ({}): now {}", req.origin, now.show());
        let _ = write!(msg, "{}", kconfig.why(sym, final_values));
    }
    bail!(msg)
}

/// A signing key generated at build time differs on every build; only an
/// explicit key keeps the kernel reproducible.
fn check_signing(values: &BTreeMap<String, Value>) -> Result<()> {
    let signing = values.get("MODULE_SIG").is_some_and(Value::enabled);
    let default_key = values
        .get("MODULE_SIG_KEY")
        .is_none_or(|v| *v == Value::Set("\"certs/signing_key.pem\"".into()));
    if signing && default_key {
        bail!(
            "CONFIG_MODULE_SIG=y with the default CONFIG_MODULE_SIG_KEY would sign modules with a \
             key generated during the build, so no two builds would match: add \
             `# CONFIG_MODULE_SIG is not set` to a fragment"
        );
    }
    Ok(())
}

/// Just enough of the Kconfig language to explain a dropped option: each
/// symbol's `depends on` lines and whether it has a prompt.
struct KconfigIndex {
    symbols: BTreeMap<String, Vec<Definition>>,
}

#[derive(Debug, Default)]
struct Definition {
    depends: Vec<String>,
    prompt: bool,
}

impl KconfigIndex {
    /// Follows `source` lines from the top-level `Kconfig`, as Kconfig does,
    /// so that each symbol also carries the `if` and `menu … depends on`
    /// conditions around it.
    fn read(src: &Path) -> KconfigIndex {
        let mut index = KconfigIndex {
            symbols: BTreeMap::new(),
        };
        index.walk(src, "Kconfig", &mut Vec::new(), 0);
        index
    }

    fn walk(&mut self, src: &Path, rel: &str, conds: &mut Vec<String>, depth: usize) {
        let Ok(text) = fs_err::read_to_string(src.join(rel)) else {
            return;
        };
        if depth > 64 {
            return;
        }
        let mut current: Option<(String, Definition)> = None;
        // Conditions pushed by this file (`if`, `menu`, `choice`), popped at
        // their end; a block header's `depends on` fills its placeholder.
        let mut header = false;
        // Inside a `help` text: the indentation of its first line. The text
        // ends at the first non-blank line indented less (Kconfig's rule).
        let mut help: Option<Option<usize>> = None;
        for line in text.lines() {
            let t = line.trim();
            if let Some(indent) = help {
                if t.is_empty() {
                    continue;
                }
                let width = indentation(line);
                match indent {
                    None => {
                        help = Some(Some(width));
                        continue;
                    }
                    Some(i) if width >= i => continue,
                    Some(_) => help = None,
                }
            }
            if t == "help" || t == "---help---" {
                help = Some(None);
                continue;
            }
            let word = t.split_whitespace().next().unwrap_or("");
            let rest = t[word.len()..].trim();
            let starts_block = [
                "config",
                "menuconfig",
                "choice",
                "endchoice",
                "menu",
                "endmenu",
                "if",
                "endif",
                "source",
                "osource",
                "comment",
                "mainmenu",
            ]
            .contains(&word);
            if starts_block {
                if let Some((sym, def)) = current.take() {
                    self.symbols.entry(sym).or_default().push(def);
                }
                header = false;
            }
            match word {
                "config" | "menuconfig" => {
                    let def = Definition {
                        depends: conds.iter().filter(|c| !c.is_empty()).cloned().collect(),
                        prompt: false,
                    };
                    current = Some((rest.to_string(), def));
                }
                "if" => conds.push(rest.to_string()),
                "menu" | "choice" => {
                    conds.push(String::new());
                    header = true;
                }
                "endif" | "endmenu" | "endchoice" => {
                    conds.pop();
                }
                "source" | "osource" => {
                    let path = rest.trim_matches('"').replace("$(SRCARCH)", "x86");
                    self.walk(src, &path, conds, depth + 1);
                }
                _ => {
                    let dep = t.strip_prefix("depends on").map(|d| d.trim().to_string());
                    if let Some((_, def)) = current.as_mut() {
                        if let Some(dep) = dep {
                            def.depends.push(dep);
                        } else if word == "prompt"
                            || (["bool", "tristate", "string", "int", "hex"].contains(&word)
                                && rest.starts_with('"'))
                        {
                            def.prompt = true;
                        }
                    } else if let (true, Some(dep), Some(top)) = (header, dep, conds.last_mut()) {
                        *top = dep;
                    }
                }
            }
        }
        if let Some((sym, def)) = current.take() {
            self.symbols.entry(sym).or_default().push(def);
        }
    }

    fn why(&self, sym: &str, values: &BTreeMap<String, Value>) -> String {
        let Some(defs) = self.symbols.get(sym) else {
            let nearest = self
                .symbols
                .keys()
                .map(|k| (strsim::levenshtein(k, sym), k))
                .filter(|(d, _)| *d <= 2)
                .min();
            return match nearest {
                Some((_, k)) => {
                    format!("; no such option in this kernel (did you mean CONFIG_{k}?)")
                }
                None => "; no such option in this kernel".to_string(),
            };
        };
        let mut out = String::new();
        for def in defs {
            for dep in &def.depends {
                let unmet: Vec<String> = symbols_in(dep)
                    .filter(|s| !values.get(*s).is_some_and(Value::enabled))
                    .map(|s| format!("{s} is not set"))
                    .collect();
                if !unmet.is_empty() {
                    let _ = write!(out, "; depends on {dep} ({})", unmet.join(", "));
                }
            }
        }
        if out.is_empty() && defs.iter().all(|d| !d.prompt) {
            out.push_str("; it has no prompt: only other options `select` it");
        }
        out
    }
}

/// Leading whitespace width, tabs to the next multiple of 8.
fn indentation(line: &str) -> usize {
    let mut width = 0;
    for c in line.chars() {
        match c {
            ' ' => width += 1,
            '\t' => width = (width / 8 + 1) * 8,
            _ => break,
        }
    }
    width
}

/// Symbol names in a Kconfig expression (not `y`/`m`/`n` or strings).
fn symbols_in(expr: &str) -> impl Iterator<Item = &str> {
    expr.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
        .filter(|w| !w.is_empty() && !["y", "m", "n"].contains(w))
        .filter(|w| w.chars().next().is_some_and(|c| c.is_ascii_uppercase()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fragments_replace_earlier_lines_and_record_their_origin() {
        let base = "CONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x\"\n";
        let frags = vec![
            ("one.config".into(), "CONFIG_B=y\n# comment\n".into()),
            (
                "two.config".into(),
                "# CONFIG_A is not set\nCONFIG_B=m\n".into(),
            ),
        ];
        let (merged, req) = merge(base, &frags);
        assert_eq!(
            merged,
            "CONFIG_C=\"x\"\n# CONFIG_A is not set\nCONFIG_B=m\n"
        );
        assert_eq!(req["B"].origin, "two.config:2");
        assert_eq!(req["A"].value, Value::Unset);
    }

    #[test]
    fn a_dropped_option_is_named_with_its_unmet_dependency() {
        let dir = tempfile::tempdir().unwrap();
        fs_err::write(
            dir.path().join("Kconfig"),
            "config NET\n\tbool \"Networking\"\n\thelp\n\t  Say Y\n\n\t  if unsure.\n\t  depends on nothing\n\nconfig E1000\n\ttristate \"e1000\"\n\
             \tdepends on PCI && NET\n\nconfig HIDDEN\n\tbool\n\
             if BLOCK\nsource \"fs/Kconfig\"\nendif\n",
        )
        .unwrap();
        fs_err::create_dir(dir.path().join("fs")).unwrap();
        fs_err::write(
            dir.path().join("fs/Kconfig"),
            "menu \"File systems\"\n\tdepends on NET\nconfig EXT4_FS\n\ttristate \"ext4\"\nendmenu\n",
        )
        .unwrap();
        let want = |sym: &str, line: u32| {
            let request = Request {
                value: Value::Set("y".into()),
                origin: format!("f:{line}"),
            };
            (sym.to_string(), request)
        };
        let requested = BTreeMap::from([
            want("NET", 1),
            want("E1000", 3),
            want("HIDDEN", 4),
            want("NOPE", 5),
            want("EXT4_FS", 6),
            want("NETT", 7),
        ]);
        let values = parse("CONFIG_NET=y\n# CONFIG_PCI is not set\n");
        let err = format!("{:#}", check(&requested, &values, dir.path()).unwrap_err());
        assert!(err.contains("5 option(s)"), "{err}");
        assert!(
            err.contains(
                "CONFIG_EXT4_FS=y (f:6): now is not set; depends on BLOCK (BLOCK is not set)"
            ),
            "an enclosing `if` in the sourcing file counts: {err}"
        );
        assert!(
            err.contains(
                "CONFIG_E1000=y (f:3): now is not set; depends on PCI && NET (PCI is not set)"
            ),
            "{err}"
        );
        assert!(
            err.contains("CONFIG_HIDDEN=y (f:4): now is not set; it has no prompt"),
            "{err}"
        );
        assert!(
            err.ends_with("CONFIG_NOPE=y (f:5): now is not set; no such option in this kernel"),
            "{err}"
        );
        assert!(
            err.contains("CONFIG_NETT=y (f:7): now is not set; no such option in this kernel (did you mean CONFIG_NET?)\n"),
            "{err}"
        );
        assert!(!err.contains("CONFIG_NET="), "{err}");
    }

    #[test]
    fn generated_signing_keys_are_refused() {
        let v = parse("CONFIG_MODULE_SIG=y\nCONFIG_MODULE_SIG_KEY=\"certs/signing_key.pem\"\n");
        assert!(check_signing(&v).is_err());
        let v = parse("CONFIG_MODULE_SIG=y\nCONFIG_MODULE_SIG_KEY=\"/keys/k.pem\"\n");
        assert!(check_signing(&v).is_ok());
        assert!(check_signing(&parse("# CONFIG_MODULE_SIG is not set\n")).is_ok());
    }
}
