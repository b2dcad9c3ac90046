//! `--explain`: why a step will run, by diffing the key components it had
//! in its last build with the new ones, field by field (cargo's
//! fingerprint approach). Tree inputs are diffed down to the changed files,
//! kernel config files (full configs and fragments) down to the options.
//! Reasons are data ([`Reason`]): `plan --json` emits them as they are, and
//! their `Display` is the `why:` line.

use std::collections::BTreeMap;
use std::fmt;

use serde::Serialize;

use crate::steps::KeyComponents;
use crate::store::{Digest, Store, Tree, TreeKind};

/// Changed files of a tree, or options of a kernel config, named in one
/// reason, at most.
const MAX_FILES: usize = 3;

/// Larger files are not read to explain a change (a full `.config` is
/// about 300 KB).
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// Why a step runs, or waits: one per changed key component, or one alone.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "reason", rename_all = "snake_case")]
pub enum Reason {
    /// No build of this step's identity is recorded.
    NeverBuilt,
    /// Built before with this very key; the store no longer has its outputs.
    OutputsMissing,
    /// Another step kind, or a new version of the step's code.
    StepVersion {
        old_kind: String,
        old_version: u32,
        new_kind: String,
        new_version: u32,
    },
    /// A parameter, by its path in the parameters (`vars.release`), with
    /// its values as they are in the key (strings, numbers, lists).
    Param {
        name: String,
        change: Change<serde_json::Value>,
    },
    /// An input file or tree; `inside` says what moved in it when it can
    /// be opened (files of a tree, options of a kernel config), `more`
    /// counts what is left unnamed.
    Input {
        name: String,
        change: Change<Digest>,
        inside: Vec<Inside>,
        more: usize,
    },
    /// A tool's `--version`.
    Tool {
        name: String,
        change: Change<String>,
    },
    /// One of Kiln's archive writers (`archive::Format`).
    Format { name: String, change: Change<u32> },
    /// The key is not known yet: these steps, which will run first, make
    /// its inputs (`plan` only).
    AfterInputs { steps: Vec<String> },
}

/// How one component moved between two builds.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum Change<T> {
    Added { new: T },
    Changed { old: T, new: T },
    Removed { old: T },
}

/// What moved inside a changed input.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(tag = "what", rename_all = "snake_case")]
pub enum Inside {
    /// A path of a tree input; the digests are those of regular files.
    File {
        path: String,
        change: Change<Option<Digest>>,
    },
    /// An option of a kernel config (`n` for "is not set").
    ConfigOption {
        option: String,
        change: Change<String>,
    },
    /// Both are kernel configs with the same options (comments, order or
    /// repeated lines moved).
    SameOptions,
}

/// Why the step with `identity` will run, given its new key components.
pub fn explain(store: &Store, identity: &str, new: &KeyComponents) -> Vec<Reason> {
    let Some(old) = store
        .last(identity)
        .and_then(|v| serde_json::from_value::<KeyComponents>(v).ok())
    else {
        return vec![Reason::NeverBuilt];
    };
    if old == *new {
        return vec![Reason::OutputsMissing];
    }
    let mut reasons = Vec::new();
    if (&old.kind, old.version) != (&new.kind, new.version) {
        reasons.push(Reason::StepVersion {
            old_kind: old.kind.clone(),
            old_version: old.version,
            new_kind: new.kind.clone(),
            new_version: new.version,
        });
    }
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten("", &old.params, &mut a);
    flatten("", &new.params, &mut b);
    reasons.extend(diff(&a, &b).map(|(name, change)| Reason::Param { name, change }));
    reasons.extend(diff(&old.inputs, &new.inputs).map(|(name, change)| input(store, name, change)));
    reasons
        .extend(diff(&old.tools, &new.tools).map(|(name, change)| Reason::Tool { name, change }));
    reasons.extend(
        diff(&old.formats, &new.formats).map(|(name, change)| Reason::Format { name, change }),
    );
    reasons
}

/// The reasons as one `why:` line.
pub fn line(reasons: &[Reason]) -> String {
    let texts: Vec<String> = reasons.iter().map(Reason::to_string).collect();
    texts.join("; ")
}

/// `{"vars": {"release": "x"}}` → `vars.release = "x"`.
fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, serde_json::Value>) {
    match v {
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                let key = if prefix.is_empty() {
                    k.clone()
                } else {
                    format!("{prefix}.{k}")
                };
                flatten(&key, v, out);
            }
        }
        other => {
            out.insert(prefix.to_string(), other.clone());
        }
    }
}

/// The keys that differ between `old` and `new`: changed and added in key
/// order, then removed. The one walk behind params, inputs, tools, formats,
/// trees and config options.
fn diff<'a, T: PartialEq + Clone>(
    old: &'a BTreeMap<String, T>,
    new: &'a BTreeMap<String, T>,
) -> impl Iterator<Item = (String, Change<T>)> + 'a {
    let changed = new.iter().filter_map(|(k, v)| match old.get(k) {
        None => Some((k.clone(), Change::Added { new: v.clone() })),
        Some(o) if o != v => Some((
            k.clone(),
            Change::Changed {
                old: o.clone(),
                new: v.clone(),
            },
        )),
        _ => None,
    });
    let removed = old
        .iter()
        .filter(|(k, _)| !new.contains_key(*k))
        .map(|(k, v)| (k.clone(), Change::Removed { old: v.clone() }));
    changed.chain(removed)
}

/// An input reason; for a changed input, what moved inside it: for two
/// trees the files, for two kernel configs the options.
fn input(store: &Store, name: String, change: Change<Digest>) -> Reason {
    let mut inside = match &change {
        Change::Changed { old, new } => match (store.tree(old), store.tree(new)) {
            (Ok(a), Ok(b)) => tree_changes(&a, &b),
            _ => match config_changes(store, old, new) {
                Some(options) if options.is_empty() => vec![Inside::SameOptions],
                options => options.unwrap_or_default(),
            },
        },
        _ => Vec::new(),
    };
    let more = inside.len().saturating_sub(MAX_FILES);
    inside.truncate(MAX_FILES);
    Reason::Input {
        name,
        change,
        inside,
        more,
    }
}

/// The options that differ when both blobs are kernel configs still in the
/// store.
fn config_changes(store: &Store, old: &Digest, new: &Digest) -> Option<Vec<Inside>> {
    let a = kconfig(&store.small_blob(old, MAX_CONFIG_BYTES)?)?;
    let b = kconfig(&store.small_blob(new, MAX_CONFIG_BYTES)?)?;
    Some(
        diff(&a, &b)
            .map(|(option, change)| Inside::ConfigOption { option, change })
            .collect(),
    )
}

/// A kernel config's options (`# CONFIG_X is not set` as `n`; a later line
/// for an option wins, as when fragments merge), or `None` when the text
/// is not a config: a line that is neither an assignment nor a comment, or
/// no option at all.
fn kconfig(bytes: &[u8]) -> Option<BTreeMap<String, String>> {
    let text = std::str::from_utf8(bytes).ok()?;
    let mut options = BTreeMap::new();
    for line in text.lines().map(str::trim) {
        if let Some(option) = line
            .strip_prefix("# ")
            .and_then(|l| l.strip_suffix(" is not set"))
            .filter(|o| o.starts_with("CONFIG_"))
        {
            options.insert(option.to_string(), "n".to_string());
        } else if let Some((option, value)) = line.split_once('=') {
            if !option.starts_with("CONFIG_") || option.contains(char::is_whitespace) {
                return None;
            }
            options.insert(option.to_string(), value.to_string());
        } else if !(line.is_empty() || line.starts_with('#')) {
            return None;
        }
    }
    (!options.is_empty()).then_some(options)
}

fn tree_changes(old: &Tree, new: &Tree) -> Vec<Inside> {
    let file = |k: &TreeKind| match k {
        TreeKind::File { digest, .. } => Some(*digest),
        _ => None,
    };
    let (a, b) = (old.by_path(), new.by_path());
    let (a, b): (BTreeMap<_, _>, BTreeMap<_, _>) = (
        a.into_iter().map(|(p, k)| (p, (file(&k), k))).collect(),
        b.into_iter().map(|(p, k)| (p, (file(&k), k))).collect(),
    );
    diff(&a, &b)
        .map(|(path, change)| Inside::File {
            path,
            change: match change {
                Change::Added { new } => Change::Added { new: new.0 },
                Change::Changed { old, new } => Change::Changed {
                    old: old.0,
                    new: new.0,
                },
                Change::Removed { old } => Change::Removed { old: old.0 },
            },
        })
        .collect()
}

fn short(d: &Digest) -> String {
    d.hex()[..8].to_string()
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NeverBuilt => write!(f, "never built"),
            Reason::OutputsMissing => write!(
                f,
                "built before with this key, but its outputs are no longer in the store"
            ),
            Reason::StepVersion {
                old_kind,
                old_version,
                new_kind,
                new_version,
            } => write!(
                f,
                "step {old_kind} v{old_version} → {new_kind} v{new_version}"
            ),
            Reason::Param { name, change } => write_change(f, &format!("param {name}"), change),
            Reason::Tool { name, change } => write_change(f, &format!("tool {name}"), change),
            Reason::Format { name, change } => write_change(f, &format!("format {name}"), change),
            Reason::Input {
                name,
                change,
                inside,
                more,
            } => match change {
                Change::Added { .. } => write!(f, "input {name} added"),
                Change::Removed { .. } => write!(f, "input {name} removed"),
                Change::Changed { old, new } => {
                    let digests = format!("sha256 {}…→{}…", short(old), short(new));
                    write!(f, "input {name} changed (")?;
                    match inside.as_slice() {
                        [] => write!(f, "{digests}")?,
                        [Inside::SameOptions] => write!(f, "{digests}, every option as before")?,
                        _ => {
                            let named: Vec<String> = inside.iter().map(Inside::to_string).collect();
                            write!(f, "{}", named.join(", "))?;
                            if *more > 0 {
                                write!(f, " and {more} more")?;
                            }
                        }
                    }
                    write!(f, ")")
                }
            },
            Reason::AfterInputs { steps } => write!(
                f,
                "its inputs come from steps that will run first: {}",
                steps.join(", ")
            ),
        }
    }
}

impl fmt::Display for Inside {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Inside::File { path, change } => match change {
                Change::Added { .. } => write!(f, "{path} added"),
                Change::Removed { .. } => write!(f, "{path} removed"),
                Change::Changed {
                    old: Some(x),
                    new: Some(y),
                } => write!(f, "{path} sha256 {}…→{}…", short(x), short(y)),
                Change::Changed { .. } => write!(f, "{path} changed"),
            },
            Inside::ConfigOption { option, change } => write_change(f, option, change),
            Inside::SameOptions => write!(f, "every option as before"),
        }
    }
}

/// `<what>=<new> added`, `<what> <old> → <new>`, `<what> removed`.
fn write_change<T: fmt::Display>(
    f: &mut fmt::Formatter<'_>,
    what: &str,
    change: &Change<T>,
) -> fmt::Result {
    match change {
        Change::Added { new } => write!(f, "{what}={new} added"),
        Change::Changed { old, new } => write!(f, "{what} {old} → {new}"),
        Change::Removed { .. } => write!(f, "{what} removed"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn components(inputs: &[(&str, Digest)]) -> KeyComponents {
        KeyComponents {
            kind: "kernel-config".into(),
            version: 1,
            params: serde_json::json!({}),
            inputs: inputs.iter().map(|(n, d)| (n.to_string(), *d)).collect(),
            tools: BTreeMap::new(),
            formats: BTreeMap::new(),
        }
    }

    #[test]
    fn a_changed_config_fragment_is_explained_by_its_options() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let old = store
            .put_bytes(b"# net\nCONFIG_E1000E=y\nCONFIG_VIRTIO_NET=y\n# CONFIG_IPV6 is not set\n")
            .unwrap();
        let new = store
            .put_bytes(b"# net\nCONFIG_E1000=y\nCONFIG_E1000E=m\nCONFIG_IPV6=y\n")
            .unwrap();
        let before = components(&[("fragment.0", old)]);
        store
            .put_last("config", &serde_json::to_value(&before).unwrap())
            .unwrap();
        let reasons = explain(&store, "config", &components(&[("fragment.0", new)]));
        let Reason::Input {
            name, inside, more, ..
        } = &reasons[0]
        else {
            panic!("{reasons:?}")
        };
        assert_eq!((name.as_str(), *more), ("fragment.0", 1));
        assert_eq!(
            inside[1],
            Inside::ConfigOption {
                option: "CONFIG_E1000E".into(),
                change: Change::Changed {
                    old: "y".into(),
                    new: "m".into()
                }
            }
        );
        assert_eq!(
            line(&reasons),
            "input fragment.0 changed (CONFIG_E1000=y added, CONFIG_E1000E y → m, \
             CONFIG_IPV6 n → y and 1 more)"
        );
    }

    #[test]
    fn a_file_that_is_not_a_config_or_keeps_its_options_is_explained_by_digests() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let old = store.put_bytes(b"CONFIG_A=y\n").unwrap();
        let new = store.put_bytes(b"CONFIG_A=y\nexit 0\n").unwrap();
        // Only a comment and a repeated line: a config, no option changed.
        let same = store
            .put_bytes(b"# other\nCONFIG_A=y\nCONFIG_A=y\n")
            .unwrap();
        let last = serde_json::to_value(components(&[("file", old)])).unwrap();
        store.put_last("step", &last).unwrap();
        let why =
            |changed: Digest| line(&explain(&store, "step", &components(&[("file", changed)])));
        let digests =
            |changed: Digest| format!("sha256 {}…→{}…", &old.hex()[..8], &changed.hex()[..8]);
        assert_eq!(why(new), format!("input file changed ({})", digests(new)));
        assert_eq!(
            why(same),
            format!(
                "input file changed ({}, every option as before)",
                digests(same)
            )
        );
    }

    #[test]
    fn each_component_that_moved_is_one_reason_of_its_kind() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(dir.path()).unwrap();
        let mut old = components(&[]);
        assert_eq!(explain(&store, "s", &old), [Reason::NeverBuilt]);
        old.params = serde_json::json!({"vars": {"release": "a"}, "gone": 1});
        old.tools.insert("make".into(), "4.3".into());
        store
            .put_last("s", &serde_json::to_value(&old).unwrap())
            .unwrap();
        assert_eq!(explain(&store, "s", &old), [Reason::OutputsMissing]);
        let mut new = old.clone();
        new.version = 2;
        new.params = serde_json::json!({"vars": {"release": "b"}});
        new.tools.insert("make".into(), "4.4".into());
        new.formats.insert("newc".into(), 1);
        let reasons = explain(&store, "s", &new);
        assert!(matches!(
            reasons[0],
            Reason::StepVersion { new_version: 2, .. }
        ));
        assert_eq!(
            reasons[1..],
            [
                Reason::Param {
                    name: "vars.release".into(),
                    change: Change::Changed {
                        old: "a".into(),
                        new: "b".into()
                    }
                },
                Reason::Param {
                    name: "gone".into(),
                    change: Change::Removed { old: 1.into() }
                },
                Reason::Tool {
                    name: "make".into(),
                    change: Change::Changed {
                        old: "4.3".into(),
                        new: "4.4".into()
                    }
                },
                Reason::Format {
                    name: "newc".into(),
                    change: Change::Added { new: 1 }
                },
            ]
        );
        assert_eq!(
            line(&reasons),
            "step kernel-config v1 → kernel-config v2; param vars.release \"a\" → \"b\"; \
             param gone removed; tool make 4.3 → 4.4; format newc=1 added"
        );
        // As data: tagged by kind, so a consumer matches on `reason`.
        let json = serde_json::to_value(&reasons[4]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"reason": "format", "name": "newc",
                               "change": {"change": "added", "new": 1}})
        );
    }
}
