//! `--explain`: why a step will run, by diffing the key components it had
//! in its last build with the new ones, field by field (cargo's
//! fingerprint approach). Tree inputs are diffed down to the changed files,
//! kernel config files (full configs and fragments) down to the options.

use std::collections::BTreeMap;

use crate::steps::KeyComponents;
use crate::store::{Digest, Store, Tree, TreeKind};

/// Changed files of a tree, or options of a kernel config, named in one
/// reason, at most.
const MAX_FILES: usize = 3;

/// Larger files are not read to explain a change (a full `.config` is
/// about 300 KB).
const MAX_CONFIG_BYTES: u64 = 1 << 20;

/// One line: `never built`, or the changed components joined by `; `.
pub fn explain(store: &Store, identity: &str, new: &KeyComponents) -> String {
    let Some(old) = store
        .last(identity)
        .and_then(|v| serde_json::from_value::<KeyComponents>(v).ok())
    else {
        return "never built".into();
    };
    if old == *new {
        return "built before with this key, but its outputs are no longer in the store".into();
    }
    let mut reasons = Vec::new();
    if (&old.kind, old.version) != (&new.kind, new.version) {
        reasons.push(format!(
            "step {} v{} → {} v{}",
            old.kind, old.version, new.kind, new.version
        ));
    }
    reasons.extend(params(&old.params, &new.params));
    reasons.extend(inputs(store, &old.inputs, &new.inputs));
    reasons.extend(changed_map("tool ", &old.tools, &new.tools));
    reasons.join("; ")
}

fn params(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten("", old, &mut a);
    flatten("", new, &mut b);
    changed_map("param ", &a, &b)
}

/// `{"vars": {"release": "x"}}` → `vars.release = "x"`.
fn flatten(prefix: &str, v: &serde_json::Value, out: &mut BTreeMap<String, String>) {
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
            out.insert(prefix.to_string(), other.to_string());
        }
    }
}

/// How one key of a map differs between two builds.
enum Change<'a, T> {
    Added(&'a T),
    Changed(&'a T, &'a T),
    Removed,
}

/// The keys that differ between `old` and `new`: changed and added in key
/// order, then removed. The one walk behind params, inputs, tools and trees.
fn diff<'a, T: PartialEq>(
    old: &'a BTreeMap<String, T>,
    new: &'a BTreeMap<String, T>,
) -> Vec<(&'a str, Change<'a, T>)> {
    let mut out: Vec<_> = new
        .iter()
        .filter_map(|(k, v)| match old.get(k) {
            None => Some((k.as_str(), Change::Added(v))),
            Some(o) if o != v => Some((k.as_str(), Change::Changed(o, v))),
            _ => None,
        })
        .collect();
    out.extend(
        old.keys()
            .filter(|k| !new.contains_key(*k))
            .map(|k| (k.as_str(), Change::Removed)),
    );
    out
}

/// `<prefix><key>=<value> added`, `<prefix><key> <old> → <new>`,
/// `<prefix><key> removed`: params, tools and kernel config options.
fn changed_map(
    prefix: &str,
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> Vec<String> {
    diff(old, new)
        .into_iter()
        .map(|(k, change)| match change {
            Change::Added(v) => format!("{prefix}{k}={v} added"),
            Change::Changed(o, v) => format!("{prefix}{k} {o} → {v}"),
            Change::Removed => format!("{prefix}{k} removed"),
        })
        .collect()
}

fn inputs(
    store: &Store,
    old: &BTreeMap<String, Digest>,
    new: &BTreeMap<String, Digest>,
) -> Vec<String> {
    diff(old, new)
        .into_iter()
        .map(|(name, change)| match change {
            Change::Added(_) => format!("input {name} added"),
            Change::Changed(o, d) => {
                format!("input {name} changed ({})", input_change(store, o, d))
            }
            Change::Removed => format!("input {name} removed"),
        })
        .collect()
}

/// For two trees, the files that differ; for two kernel configs, the
/// options; otherwise the digests.
fn input_change(store: &Store, old: &Digest, new: &Digest) -> String {
    let digests = format!("sha256 {}…→{}…", &old.hex()[..8], &new.hex()[..8]);
    let changes = match (store.tree(old), store.tree(new)) {
        (Ok(a), Ok(b)) => tree_changes(&a, &b),
        _ => match config_changes(store, old, new) {
            Some(options) if options.is_empty() => {
                return format!("{digests}, every option as before");
            }
            options => options.unwrap_or_default(),
        },
    };
    if changes.is_empty() {
        return digests;
    }
    let more = changes.len().saturating_sub(MAX_FILES);
    let mut text = changes
        .into_iter()
        .take(MAX_FILES)
        .collect::<Vec<_>>()
        .join(", ");
    if more > 0 {
        text.push_str(&format!(" and {more} more"));
    }
    text
}

/// The options that differ when both blobs are kernel configs still in the
/// store: `CONFIG_E1000=y added`, `CONFIG_E1000 y → m`, `CONFIG_E1000 removed`.
fn config_changes(store: &Store, old: &Digest, new: &Digest) -> Option<Vec<String>> {
    let a = kconfig(&store.small_blob(old, MAX_CONFIG_BYTES)?)?;
    let b = kconfig(&store.small_blob(new, MAX_CONFIG_BYTES)?)?;
    Some(changed_map("", &a, &b))
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

fn tree_changes(old: &Tree, new: &Tree) -> Vec<String> {
    let (a, b) = (old.by_path(), new.by_path());
    diff(&a, &b)
        .into_iter()
        .map(|(path, change)| match change {
            Change::Added(_) => format!("{path} added"),
            Change::Changed(TreeKind::File { digest: x, .. }, TreeKind::File { digest: y, .. }) => {
                format!("{path} sha256 {}…→{}…", &x.hex()[..8], &y.hex()[..8])
            }
            Change::Changed(..) => format!("{path} changed"),
            Change::Removed => format!("{path} removed"),
        })
        .collect()
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
        assert_eq!(
            explain(&store, "config", &components(&[("fragment.0", new)])),
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
        let why = |changed: Digest| explain(&store, "step", &components(&[("file", changed)]));
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
}
