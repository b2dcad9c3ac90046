//! The architecture as a test: which module may use which (the diagram of
//! docs/ARCHITECTURE.md, in code), who may start processes, and how long a
//! file may grow. Each rule reads the sources as text, outside `#[cfg(test)]`
//! code (tests may reach anywhere).
//!
//! Known breaches are listed with why they exist; each list only shrinks: a
//! breach that is gone fails the test until it is struck off, so a fix cannot
//! be undone unnoticed.

use std::collections::{BTreeMap, BTreeSet};
use std::path::PathBuf;

use crate::common::workspace;

/// For each top-level module of the crate, the modules it may use. One way
/// down: cli → plan → steps → archive / elf / store / tools, with recipe
/// feeding plan, exec running a plan's steps (and asking tools their
/// versions for keys), and the tools around a build (output, bench, repro,
/// publish, verify) called from cli. `testing` serves test code only.
const ALLOWED: &[(&str, &[&str])] = &[
    (
        "cli",
        &[
            "archive", "bench", "elf", "exec", "output", "plan", "publish", "recipe", "repro",
            "serve", "sign", "steps", "store", "tools", "verify",
        ],
    ),
    (
        "bench",
        &[
            "archive", "elf", "output", "plan", "recipe", "sign", "steps", "store", "tools",
        ],
    ),
    ("repro", &["archive", "output", "steps", "store", "tools"]),
    ("publish", &["output", "store", "tools"]),
    ("serve", &["recipe", "tools"]),
    ("output", &["exec", "plan", "store"]),
    ("exec", &["plan", "steps", "store", "tools"]),
    ("verify", &["archive", "store", "tools"]),
    ("plan", &["archive", "recipe", "sign", "steps", "store"]),
    ("recipe", &["archive"]),
    ("steps", &["archive", "elf", "sign", "store", "tools"]),
    ("sign", &["archive"]),
    ("archive", &[]),
    ("elf", &[]),
    ("store", &[]),
    ("tools", &[]),
    ("testing", &["tools"]),
    ("arch", &[]),
    ("layout", &[]),
    ("template", &[]),
];

/// Leaves every module may use, with no dependencies of their own: `arch`
/// (the architectures and what differs between them), `layout` (the names
/// Kiln keeps in an output directory) and `template` (`{{variable}}`
/// rendering, for recipes and the initramfs step alike).
const SHARED: &[&str] = &["arch", "layout", "template"];

/// Uses that break the diagram today: (file, module it uses, why). None
/// now; a breach that cannot be mended at once is listed here with why.
const KNOWN_EDGES: &[(&str, &str, &str)] = &[];

/// Lines a file may have before its tests: past this it holds more than one
/// concept.
const MAX_LINES: usize = 600;

/// Files over `MAX_LINES` today, with the most lines each may keep.
const KNOWN_LONG: &[(&str, usize)] = &[];

/// Where a process may be started: `tools`, and `bench`, which times the
/// commands an operator would type (clippy.toml enforces the same).
const SPAWNERS: &[&str] = &["tools", "bench"];

fn src() -> PathBuf {
    workspace().join("xtask/src")
}

/// Every source file under `xtask/src` (relative path) with its text up to
/// its first `#[cfg(test)]`-like attribute.
fn sources() -> BTreeMap<String, String> {
    let root = src();
    let mut files = BTreeMap::new();
    for entry in walkdir::WalkDir::new(&root).sort_by_file_name() {
        let entry = entry.unwrap();
        if entry.path().extension().is_none_or(|e| e != "rs") {
            continue;
        }
        let text = std::fs::read_to_string(entry.path()).unwrap();
        let rel = entry.path().strip_prefix(&root).unwrap();
        files.insert(rel.to_string_lossy().into_owned(), non_test(&text));
    }
    files
}

fn non_test(text: &str) -> String {
    text.lines()
        .take_while(|l| !(l.starts_with("#[cfg(") && l.contains("test")))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// The top-level module a file belongs to (`steps/ipxe/patch.rs` → steps).
fn module_of(file: &str) -> &str {
    let first = file.split('/').next().unwrap();
    first.strip_suffix(".rs").unwrap_or(first)
}

/// The top-level modules `text` names as `crate::<module>`, outside comments.
fn uses(text: &str) -> BTreeSet<String> {
    let mut found = BTreeSet::new();
    for line in text.lines() {
        let code = line.split("//").next().unwrap();
        for (at, _) in code.match_indices("crate::") {
            let rest = &code[at + "crate::".len()..];
            let name: String = rest
                .chars()
                .take_while(|c| c.is_ascii_alphanumeric() || *c == '_')
                .collect();
            if !name.is_empty() {
                found.insert(name);
            }
        }
        if let Some(group) = code.split("crate::{").nth(1) {
            found.extend(group_heads(group));
        }
    }
    found
}

/// The first name of each item of a `use crate::{…}` group (`group` is the
/// text after its `{`): `plan::Plan, tools}` gives plan and tools.
fn group_heads(group: &str) -> Vec<String> {
    let (mut depth, mut heads, mut item) = (1, Vec::new(), String::new());
    let mut at_start = true;
    for c in group.chars() {
        match c {
            '{' => depth += 1,
            '}' => depth -= 1,
            ',' if depth == 1 => at_start = true,
            c if depth == 1 && at_start && (c.is_ascii_alphanumeric() || c == '_') => item.push(c),
            _ if !item.is_empty() => {
                heads.push(std::mem::take(&mut item));
                at_start = false;
            }
            _ => {}
        }
        if depth == 0 {
            break;
        }
    }
    heads.extend(Some(item).filter(|i| !i.is_empty()));
    heads
}

/// Uses of one top-level module by another that the diagram does not allow:
/// (file, module used).
fn breaches(files: &BTreeMap<String, String>) -> BTreeSet<(String, String)> {
    let allowed: BTreeMap<&str, &[&str]> = ALLOWED.iter().copied().collect();
    let mut out = BTreeSet::new();
    for (file, text) in files {
        let from = module_of(file);
        if from == "lib" || from == "main" {
            continue;
        }
        let may = allowed.get(from).unwrap_or_else(|| {
            panic!("module `{from}` ({file}) is not in tidy.rs's ALLOWED table")
        });
        for used in uses(text) {
            let fine =
                used == from || may.contains(&used.as_str()) || SHARED.contains(&used.as_str());
            if !fine {
                out.insert((file.clone(), used));
            }
        }
    }
    out
}

#[test]
fn modules_use_only_the_layers_below_them() {
    let found = breaches(&sources());
    let known: BTreeSet<(String, String)> = KNOWN_EDGES
        .iter()
        .map(|(f, m, _)| (f.to_string(), m.to_string()))
        .collect();
    let new: Vec<_> = found.difference(&known).collect();
    assert!(
        new.is_empty(),
        "these files use a module the architecture does not allow (docs/ARCHITECTURE.md; \
         tidy.rs's ALLOWED is the diagram): {new:?}"
    );
    let gone: Vec<_> = known.difference(&found).collect();
    assert!(
        gone.is_empty(),
        "these known breaches are fixed: strike them off KNOWN_EDGES in tidy.rs: {gone:?}"
    );
}

/// Lines of `file` that start a process, unless its module may.
fn spawns(file: &str, text: &str) -> Vec<String> {
    if SPAWNERS.contains(&module_of(file)) {
        return Vec::new();
    }
    let code = |line: &str| line.split("//").next().unwrap().contains("Command::new(");
    text.lines()
        .enumerate()
        .filter(|(_, line)| code(line))
        .map(|(n, line)| format!("{file}:{}: {}", n + 1, line.trim()))
        .collect()
}

#[test]
fn only_tools_starts_processes() {
    let found: Vec<String> = sources()
        .iter()
        .flat_map(|(file, text)| spawns(file, text))
        .collect();
    assert!(
        found.is_empty(),
        "start processes through crate::tools (process group, Ctrl-C, log, clean \
         environment):\n{}",
        found.join("\n")
    );
}

#[test]
fn files_stay_small_enough_to_hold_one_concept() {
    let known: BTreeMap<&str, usize> = KNOWN_LONG.iter().copied().collect();
    let mut problems = Vec::new();
    for (file, text) in sources() {
        let lines = text.lines().count();
        match known.get(file.as_str()) {
            Some(&most) if lines > most => problems.push(format!(
                "{file} grew to {lines} lines (at most {most}, and it should shrink under {MAX_LINES}): split it along its concepts"
            )),
            Some(_) if lines <= MAX_LINES => problems.push(format!(
                "{file} is down to {lines} lines: strike it off KNOWN_LONG in tidy.rs"
            )),
            None if lines > MAX_LINES => problems.push(format!(
                "{file} has {lines} lines before its tests (at most {MAX_LINES}): split it along its concepts"
            )),
            _ => {}
        }
    }
    assert!(problems.is_empty(), "{}", problems.join("\n"));
}

#[test]
fn the_rules_catch_what_they_are_for() {
    let planted = |file: &str, text: &str| {
        let files = BTreeMap::from([(file.to_string(), non_test(text))]);
        breaches(&files)
    };
    assert_eq!(
        planted("steps/cpio.rs", "use crate::recipe::Recipe;\n"),
        BTreeSet::from([("steps/cpio.rs".into(), "recipe".into())])
    );
    assert_eq!(
        planted("store/mod.rs", "use crate::{plan::Plan, tools};\n"),
        BTreeSet::from([
            ("store/mod.rs".into(), "plan".into()),
            ("store/mod.rs".into(), "tools".into())
        ])
    );
    assert!(planted("cli/build.rs", "use crate::plan;\n").is_empty());
    assert_eq!(
        group_heads("steps::{a, b::{c, d}}, store::Digest, tools};"),
        ["steps", "store", "tools"]
    );
    assert!(
        planted(
            "steps/cpio.rs",
            "// see crate::recipe\n#[cfg(test)]\nuse crate::plan;\n"
        )
        .is_empty(),
        "comments and test code are not uses"
    );
    let spawn = "    let out = std::process::Command::new(\"zbin\").output();\n";
    assert_eq!(spawns("steps/ipxe/patch.rs", spawn).len(), 1);
    assert!(spawns("tools.rs", spawn).is_empty());
    assert!(spawns(
        "steps/ipxe/patch.rs",
        "// Command::new(\"x\") is not here\n"
    )
    .is_empty());
}
