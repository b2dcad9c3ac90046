//! `--explain`: why a step will run, by diffing the key components it had
//! in its last build with the new ones, field by field (cargo's
//! fingerprint approach). Tree inputs are diffed down to the changed files.

use std::collections::BTreeMap;

use crate::steps::KeyComponents;
use crate::store::{Digest, Store, Tree, TreeKind};

/// Changed files of a tree named in one reason, at most.
const MAX_FILES: usize = 3;

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
    reasons.extend(changed_map("tool", &old.tools, &new.tools));
    reasons.join("; ")
}

fn params(old: &serde_json::Value, new: &serde_json::Value) -> Vec<String> {
    let (mut a, mut b) = (BTreeMap::new(), BTreeMap::new());
    flatten("", old, &mut a);
    flatten("", new, &mut b);
    changed_map("param", &a, &b)
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

fn changed_map(
    what: &str,
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> Vec<String> {
    diff(old, new)
        .into_iter()
        .map(|(k, change)| match change {
            Change::Added(v) => format!("{what} {k}={v} added"),
            Change::Changed(o, v) => format!("{what} {k} {o} → {v}"),
            Change::Removed => format!("{what} {k} removed"),
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

/// For two trees, the files that differ; otherwise the digests.
fn input_change(store: &Store, old: &Digest, new: &Digest) -> String {
    let digests = format!("sha256 {}…→{}…", &old.hex()[..8], &new.hex()[..8]);
    let (Ok(a), Ok(b)) = (store.tree(old), store.tree(new)) else {
        return digests;
    };
    let files = tree_changes(&a, &b);
    if files.is_empty() {
        return digests;
    }
    let more = files.len().saturating_sub(MAX_FILES);
    let mut text = files
        .into_iter()
        .take(MAX_FILES)
        .collect::<Vec<_>>()
        .join(", ");
    if more > 0 {
        text.push_str(&format!(" and {more} more"));
    }
    text
}

fn tree_changes(old: &Tree, new: &Tree) -> Vec<String> {
    let map = |t: &Tree| {
        t.entries
            .iter()
            .map(|e| (e.path.clone(), e.kind.clone()))
            .collect::<BTreeMap<_, _>>()
    };
    let (a, b) = (map(old), map(new));
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
