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

fn changed_map(
    what: &str,
    old: &BTreeMap<String, String>,
    new: &BTreeMap<String, String>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (k, v) in new {
        match old.get(k) {
            None => out.push(format!("{what} {k}={v} added")),
            Some(o) if o != v => out.push(format!("{what} {k} {o} → {v}")),
            _ => {}
        }
    }
    out.extend(
        old.keys()
            .filter(|k| !new.contains_key(*k))
            .map(|k| format!("{what} {k} removed")),
    );
    out
}

fn inputs(
    store: &Store,
    old: &BTreeMap<String, Digest>,
    new: &BTreeMap<String, Digest>,
) -> Vec<String> {
    let mut out = Vec::new();
    for (name, d) in new {
        match old.get(name) {
            None => out.push(format!("input {name} added")),
            Some(o) if o != d => out.push(format!(
                "input {name} changed ({})",
                input_change(store, o, d)
            )),
            _ => {}
        }
    }
    out.extend(
        old.keys()
            .filter(|k| !new.contains_key(*k))
            .map(|k| format!("input {k} removed")),
    );
    out
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
    let mut out = Vec::new();
    for (path, kind) in &b {
        match (a.get(path), kind) {
            (None, _) => out.push(format!("{path} added")),
            (Some(TreeKind::File { digest: x, .. }), TreeKind::File { digest: y, .. })
                if x != y =>
            {
                out.push(format!(
                    "{path} sha256 {}…→{}…",
                    &x.hex()[..8],
                    &y.hex()[..8]
                ))
            }
            (Some(k), _) if k != kind => out.push(format!("{path} changed")),
            _ => {}
        }
    }
    out.extend(
        a.keys()
            .filter(|p| !b.contains_key(*p))
            .map(|p| format!("{p} removed")),
    );
    out
}
