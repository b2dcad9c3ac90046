//! Why two manifests differ when every artifact is identical: a step's key
//! changed because one of its inputs did. The manifests name each
//! artifact's inputs by digest; when both runs' stores are at hand, a
//! differing input is opened there (a tree file by file, a blob as bytes)
//! and explained like an artifact, so the report names the file inside a
//! kernel object tree that made the key move.

use std::collections::BTreeMap;

use super::diff::{self, Finding};
use crate::output::manifest::{Artifact, Manifest};
use crate::store::{Digest, Store, TreeKind};

/// Files of an input tree listed before the rest are counted.
const MAX_FILES: usize = 12;
/// Blobs larger than this are named, not read.
const MAX_BLOB: u64 = 256 << 20;

/// The two runs' stores, when repro built both runs (not for `--compare`).
pub type Stores<'a> = Option<(&'a Store, &'a Store)>;

/// Why manifest `a` and `b` differ, artifact by artifact; `None` when either
/// is not a manifest (the caller falls back to the bytes).
pub fn explain(a: &[u8], b: &[u8], stores: Stores) -> Option<Vec<Finding>> {
    let a: Manifest = serde_json::from_slice(a).ok()?;
    let b: Manifest = serde_json::from_slice(b).ok()?;
    let mut out = Vec::new();
    let top = |what: String| Finding {
        place: Vec::new(),
        what,
    };
    if a.kiln_version != b.kiln_version {
        out.push(top(format!(
            "kiln_version: {} → {}",
            a.kiln_version, b.kiln_version
        )));
    }
    if a.source_date_epoch != b.source_date_epoch {
        out.push(top(format!(
            "source_date_epoch: {} → {}",
            a.source_date_epoch, b.source_date_epoch
        )));
    }
    let by_name = |m: &Manifest| -> BTreeMap<String, Artifact> {
        m.artifacts
            .iter()
            .map(|x| (x.name.clone(), x.clone()))
            .collect()
    };
    let (ma, mb) = (by_name(&a), by_name(&b));
    // Many artifacts share an input (one zbin packs every ROM): each pair of
    // digests is opened once and referred to after that.
    let mut seen = Seen::new();
    for name in ma.keys().chain(mb.keys().filter(|n| !ma.contains_key(*n))) {
        let place = vec![format!("artifact {name}")];
        match (ma.get(name), mb.get(name)) {
            (Some(x), Some(y)) => artifact(x, y, &place, stores, &mut seen, &mut out),
            (x, _) => out.push(Finding {
                place,
                what: format!("only in run {}", if x.is_some() { 1 } else { 2 }),
            }),
        }
    }
    if out.is_empty() {
        // Same facts, different bytes: say where, as for any file.
        return None;
    }
    Some(out)
}

/// Input digest pairs already explained, with the artifact they were under.
type Seen = BTreeMap<(Digest, Digest), String>;

fn artifact(
    x: &Artifact,
    y: &Artifact,
    place: &[String],
    stores: Stores,
    seen: &mut Seen,
    out: &mut Vec<Finding>,
) {
    let mut add = |what: String| {
        out.push(Finding {
            place: place.to_vec(),
            what,
        })
    };
    let fields = [
        ("path", x.path.clone(), y.path.clone()),
        ("kind", x.kind.clone(), y.kind.clone()),
        ("arch", x.arch.clone(), y.arch.clone()),
        ("recipe", x.recipe.clone(), y.recipe.clone()),
        ("sha256", x.sha256.short(), y.sha256.short()),
        ("size", x.size.to_string(), y.size.to_string()),
        ("details", json(&x.details), json(&y.details)),
    ];
    for (field, a, b) in fields {
        if a != b {
            add(format!("{field}: {a} → {b}"));
        }
    }
    if x.step_key == y.step_key {
        return;
    }
    let names: Vec<&String> = x
        .inputs
        .keys()
        .chain(y.inputs.keys().filter(|k| !x.inputs.contains_key(*k)))
        .collect();
    let moved: Vec<(&String, Option<&Digest>, Option<&Digest>)> = names
        .into_iter()
        .map(|k| (k, x.inputs.get(k), y.inputs.get(k)))
        .filter(|(_, a, b)| a != b)
        .collect();
    if moved.is_empty() {
        add(format!(
            "step_key: {} → {} with equal inputs: the step's parameters or tool versions differ",
            x.step_key.short(),
            y.step_key.short()
        ));
        return;
    }
    let list: Vec<&str> = moved.iter().map(|(k, _, _)| k.as_str()).collect();
    add(format!(
        "step_key: {} → {} because input {} differs",
        x.step_key.short(),
        y.step_key.short(),
        list.join(", ")
    ));
    for (name, a, b) in moved {
        let mut place = place.to_vec();
        place.push(format!("input {name}"));
        match (a, b) {
            (Some(a), Some(b)) => match seen.get(&(*a, *b)) {
                Some(first) => out.push(Finding {
                    place,
                    what: format!("the same difference as under artifact {first}"),
                }),
                None => {
                    seen.insert((*a, *b), x.name.clone());
                    input(a, b, &place, stores, out);
                }
            },
            (a, _) => out.push(Finding {
                place,
                what: format!("only in run {}", if a.is_some() { 1 } else { 2 }),
            }),
        }
    }
}

fn json(v: &Option<serde_json::Value>) -> String {
    v.as_ref().map_or("(none)".into(), |v| v.to_string())
}

/// One input present in both runs with different digests.
fn input(a: &Digest, b: &Digest, place: &[String], stores: Stores, out: &mut Vec<Finding>) {
    let mut add = |place: &[String], what: String| {
        out.push(Finding {
            place: place.to_vec(),
            what,
        })
    };
    let Some((sa, sb)) = stores else {
        add(
            place,
            format!(
                "{} → {} (opened only when repro builds both runs itself)",
                a.short(),
                b.short()
            ),
        );
        return;
    };
    if sa.has_tree(a) && sb.has_tree(b) {
        match (sa.tree(a), sb.tree(b)) {
            (Ok(ta), Ok(tb)) => tree(&ta, &tb, place, (sa, sb), out),
            (Err(e), _) | (_, Err(e)) => add(place, format!("tree unreadable: {e:#}")),
        }
    } else if sa.has_blob(a) && sb.has_blob(b) {
        blob(a, b, place, (sa, sb), out);
    } else {
        add(
            place,
            format!("{} → {} (not in both runs' stores)", a.short(), b.short()),
        );
    }
}

fn blob(
    a: &Digest,
    b: &Digest,
    place: &[String],
    (sa, sb): (&Store, &Store),
    out: &mut Vec<Finding>,
) {
    match (sa.read_blob(a), sb.read_blob(b)) {
        (Ok(x), Ok(y)) => {
            for mut f in diff::explain(&x, &y) {
                let mut at = place.to_vec();
                at.append(&mut f.place);
                out.push(Finding {
                    place: at,
                    what: f.what,
                });
            }
        }
        (Err(e), _) | (_, Err(e)) => out.push(Finding {
            place: place.to_vec(),
            what: format!("unreadable: {e:#}"),
        }),
    }
}

/// Entry by entry: only-in-one, type and mode, then each differing file's
/// contents (the first `MAX_FILES`, the rest counted).
fn tree(
    a: &crate::store::Tree,
    b: &crate::store::Tree,
    place: &[String],
    stores: (&Store, &Store),
    out: &mut Vec<Finding>,
) {
    let (ia, ib) = (a.by_path(), b.by_path());
    let mut shown = 0;
    let mut more = 0;
    let paths: Vec<&String> = ia
        .keys()
        .chain(ib.keys().filter(|p| !ia.contains_key(*p)))
        .collect();
    for path in paths {
        let (x, y) = (ia.get(path), ib.get(path));
        if x == y {
            continue;
        }
        if shown == MAX_FILES {
            more += 1;
            continue;
        }
        shown += 1;
        let mut at = place.to_vec();
        at.push(format!("file {path}"));
        let what = match (x, y) {
            (None, _) => "only in run 2".to_string(),
            (_, None) => "only in run 1".to_string(),
            (
                Some(TreeKind::File {
                    digest: da,
                    size: za,
                    mode: ma,
                }),
                Some(TreeKind::File {
                    digest: db,
                    size: zb,
                    mode: mb,
                }),
            ) => {
                if ma != mb {
                    out.push(Finding {
                        place: at.clone(),
                        what: format!("mode: {ma:o} → {mb:o}"),
                    });
                }
                if da == db {
                    continue;
                }
                if *za > MAX_BLOB || *zb > MAX_BLOB {
                    format!("{} → {} ({za} → {zb} bytes)", da.short(), db.short())
                } else {
                    blob(da, db, &at, stores, out);
                    continue;
                }
            }
            (Some(x), Some(y)) => format!("{} → {}", describe(x), describe(y)),
        };
        out.push(Finding { place: at, what });
    }
    if more > 0 {
        out.push(Finding {
            place: place.to_vec(),
            what: format!("… and {more} more entries differ"),
        });
    }
}

fn describe(k: &TreeKind) -> String {
    match k {
        TreeKind::File { size, mode, .. } => format!("file ({size} bytes, mode {mode:o})"),
        TreeKind::Dir { mode } => format!("directory (mode {mode:o})"),
        TreeKind::Symlink { target } => format!("symlink to {target}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A store holding a two-file tree whose `include/generated/compile.h`
    /// says `by`, and a manifest naming that tree as a kernel's input.
    fn run(dir: &std::path::Path, by: &str) -> (Store, Vec<u8>) {
        let tree = dir.join("objtree");
        fs_err::create_dir_all(tree.join("include/generated")).unwrap();
        fs_err::write(tree.join("Makefile"), "all:\n").unwrap();
        fs_err::write(
            tree.join("include/generated/compile.h"),
            format!("#define UTS_MACHINE \"x86_64\"\n#define LINUX_COMPILE_BY \"{by}\"\n"),
        )
        .unwrap();
        let store = Store::open(&dir.join("cache")).unwrap();
        let objtree = store.put_tree(&tree).unwrap();
        let config = Digest::of_bytes(b"CONFIG_X=y\n");
        let kernel = |name: &str| Artifact {
            name: name.into(),
            path: name.into(),
            kind: "kernel".into(),
            arch: "x86_64".into(),
            sha256: Digest::of_bytes(b"same kernel"),
            size: 11,
            recipe: "recipes/stage2.toml".into(),
            step_key: Digest::of_bytes(format!("{name}{}", objtree.hex()).as_bytes()),
            inputs: BTreeMap::from([
                ("config".to_string(), config),
                ("objtree".to_string(), objtree),
            ]),
            details: None,
        };
        let mut manifest = Manifest::new(1);
        manifest.merge(vec![
            kernel("stage2/stage2_vmlinuz"),
            kernel("stage3/vmlinuz"),
        ]);
        (store, serde_json::to_vec_pretty(&manifest).unwrap())
    }

    #[test]
    fn a_moved_step_key_is_followed_into_the_differing_tree_file() {
        let dir = tempfile::tempdir().unwrap();
        let (sa, a) = run(&dir.path().join("1"), "root");
        let (sb, b) = run(&dir.path().join("2"), "nobody");
        let found: Vec<String> = explain(&a, &b, Some((&sa, &sb)))
            .unwrap()
            .iter()
            .map(|f| f.to_string())
            .collect();
        assert!(
            found[0].starts_with("artifact stage2/stage2_vmlinuz: step_key: ")
                && found[0].ends_with("because input objtree differs"),
            "{found:#?}"
        );
        assert!(
            found.iter().any(|l| l.starts_with(
                "artifact stage2/stage2_vmlinuz › input objtree › file include/generated/compile.h: data sha256"
            ) && l.ends_with(
                "first at line 2: \"#define LINUX_COMPILE_BY \\\"root\\\"\" → \"#define LINUX_COMPILE_BY \\\"nobody\\\"\""
            )),
            "{found:#?}"
        );
        assert!(!found.iter().any(|l| l.contains("Makefile")), "{found:#?}");
        // A second artifact with the same input refers to the first.
        assert_eq!(
            found.last().unwrap(),
            "artifact stage3/vmlinuz › input objtree: the same difference as under artifact stage2/stage2_vmlinuz"
        );
        assert_eq!(found.len(), 4, "{found:#?}");
        // Without the stores the input is named, with how to see inside.
        let found = explain(&a, &b, None).unwrap();
        assert!(
            found[1]
                .to_string()
                .ends_with("(opened only when repro builds both runs itself)"),
            "{found:#?}"
        );
        // Equal manifests explain nothing; other JSON is not a manifest.
        assert!(explain(&a, &a, Some((&sa, &sb))).is_none());
        assert!(explain(b"{}", b"[]", None).is_none());
    }
}
