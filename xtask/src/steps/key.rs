//! What a step's key is made of, in one place. The key is the sha256 of
//! [`KeyComponents`] as canonical JSON (struct fields in order, maps
//! sorted); the store keeps the components of each identity's last build so
//! `--explain` can say which one moved (`plan/explain.rs`).
//!
//! | in the key | from | why |
//! |---|---|---|
//! | `kind`, `version` | [`Step::kind`], [`Step::version`] | another step, or this step's code changed what it makes |
//! | `params` | the step value's `Serialize` | everything the step is told, e.g. a cmdline, an epoch, targets |
//! | `inputs` | each named input's digest | files and trees it reads, by content, never by path |
//! | `tools` | `<tool> --version` of [`Step::tools`] | another compiler makes other bytes |
//! | `formats` | [`Step::formats`] | the archive writers it calls (`archive::Format`), so changing one cannot reuse stale entries; absent when empty |
//!
//! Deliberately not in the key, each a `#[serde(skip)]` field listed in
//! [`NOT_IN_KEYS`] with its reason (a test keeps that list and the code in
//! step): names and notes used only in messages, where a file came from
//! (its bytes are an input), and how many threads make the same bytes.
//! Neither is the path of the project, the scratch directory, the output
//! directory, the clock, the user or the host: a step reads nothing but its
//! inputs (`steps/mod.rs`).

use std::collections::BTreeMap;

use anyhow::Result;
use serde::{Deserialize, Serialize};

use super::{output_digest, Step};
use crate::store::{Digest, Output};

/// Everything that identifies a step's work.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KeyComponents {
    pub kind: String,
    pub version: u32,
    pub params: serde_json::Value,
    pub inputs: BTreeMap<String, Digest>,
    pub tools: BTreeMap<String, String>,
    /// Archive writer name → format version. Omitted when empty, so steps
    /// that write no archive kept their keys when this field came.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub formats: BTreeMap<String, u32>,
}

impl KeyComponents {
    /// The components of `step` given its resolved inputs (tool versions
    /// from `tools::version`, asked once per tool).
    pub fn of(step: &dyn Step, inputs: &BTreeMap<String, Output>) -> Result<KeyComponents> {
        let mut tools = BTreeMap::new();
        for t in step.tools() {
            tools.insert(t.to_string(), crate::tools::version(t)?);
        }
        Ok(KeyComponents {
            kind: step.kind().to_string(),
            version: step.version(),
            params: step.params(),
            inputs: inputs
                .iter()
                .map(|(k, o)| (k.clone(), output_digest(o)))
                .collect(),
            tools,
            formats: step
                .formats()
                .iter()
                .map(|f| (f.name.to_string(), f.version))
                .collect(),
        })
    }

    pub fn key(&self) -> Digest {
        Digest::of_bytes(&serde_json::to_vec(self).expect("key components always serialize"))
    }
}

/// Every `#[serde(skip)]` field of a step, as (file under `steps/`, field,
/// why it stays out of the key).
pub const NOT_IN_KEYS: &[(&str, &str, &str)] = &[
    ("deb.rs", "source", "the source's name, for messages"),
    ("fetch.rs", "source", "the source's name, for messages: renaming it must not refetch"),
    ("fetch.rs", "pool", "where a .deb is, not what it is: the sha256 is in the key"),
    ("fetch.rs", "mirrors", "where a .deb is, not what it is: a mirror added later reuses every step"),
    ("fetch.rs", "arch", "which apt name fetches the .deb (package:arm64), not what it is: the sha256 is in the key"),
    ("fetch.rs", "url", "only the content matters: another server with the same bytes is the same input"),
    ("fetch.rs", "file", "the tarball as the operator named it: its bytes are the `archive` input"),
    ("initramfs.rs", "name", "the artifact, for messages"),
    ("initramfs.rs", "threads", "compression threads: the members are the same bytes for any count"),
    ("initramfs.rs", "source", "a placed file's source name, for messages: its digest is the `file.<i>` input"),
    ("ipxe/mod.rs", "note", "said in the label only"),
    ("ipxe/mod.rs", "threads", "make -j: iPXE's output does not depend on it (repro varies it)"),
    ("iso.rs", "name", "the artifact, for messages"),
    ("kernel/compile.rs", "name", "the artifact, for messages"),
    ("kernel/compile.rs", "threads", "make -j: kbuild's output does not depend on it (repro varies it)"),
    ("kernel/config.rs", "name", "the artifact, for messages"),
    ("kernel/config.rs", "fragments", "the fragments' paths: their bytes are inputs `fragment.N`, so a checkout elsewhere hits the same entry"),
    ("kernel/config.rs", "threads", "make -j"),
    ("kernel/link.rs", "name", "the artifact, for messages"),
    ("kernel/link.rs", "threads", "make -j"),
    ("modules/step.rs", "name", "the artifact, for messages"),
    ("modules/step.rs", "origins", "where each wanted item is written in the recipe, for errors"),
    ("modules/step.rs", "threads", "compression threads: same bytes for any count"),
    ("programs.rs", "name", "the artifact, for messages"),
    ("roms.rs", "name", "the artifact, for messages"),
    ("roms.rs", "origin", "the recipe line, for errors"),
    ("sign.rs", "name", "the artifact, for messages"),
    ("sign.rs", "form", "Authenticode or a detached signature, which the step's kind (`sign-efi`, `sign-cms`) already says"),
    ("sign.rs", "key", "the operator's private key, which never enters a key: the certificate's sha256 (`certificate`) names it, and signatures are deterministic"),
    ("script.rs", "name", "the artifact, for messages"),
    ("tarball.rs", "source", "the source's name, for messages"),
    ("uki.rs", "name", "the artifact, for messages"),
];

#[cfg(test)]
mod tests {
    use super::*;

    /// Each `#[serde(skip)]` in `steps/` and the field after it, by file.
    fn skipped_fields() -> Vec<(String, String)> {
        let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("src/steps");
        let mut found = Vec::new();
        for entry in walkdir::WalkDir::new(&root).sort_by_file_name() {
            let entry = entry.unwrap();
            if entry.path().extension().is_none_or(|e| e != "rs") {
                continue;
            }
            let rel = entry.path().strip_prefix(&root).unwrap();
            let text = fs_err::read_to_string(entry.path()).unwrap();
            let mut lines = text.lines();
            while let Some(line) = lines.next() {
                if line.trim() != "#[serde(skip)]" {
                    continue;
                }
                let field = lines
                    .by_ref()
                    .map(str::trim)
                    .find(|l| !l.starts_with("#[") && !l.starts_with("//"))
                    .unwrap();
                let name = field
                    .trim_start_matches("pub ")
                    .split(':')
                    .next()
                    .unwrap()
                    .to_string();
                found.push((rel.to_string_lossy().into_owned(), name));
            }
        }
        found
    }

    #[test]
    fn every_field_left_out_of_keys_is_listed_with_why() {
        let found = skipped_fields();
        for (file, field) in &found {
            assert!(
                NOT_IN_KEYS.iter().any(|(f, n, _)| f == file && n == field),
                "steps/{file}: `{field}` is #[serde(skip)]: add it to NOT_IN_KEYS with why it stays out of the key"
            );
        }
        for (file, field, _) in NOT_IN_KEYS {
            assert!(
                found.iter().any(|(f, n)| f == file && n == field),
                "NOT_IN_KEYS lists steps/{file} `{field}`, which is not #[serde(skip)] there"
            );
        }
    }

    #[test]
    fn an_empty_formats_map_leaves_the_serialized_components_as_before() {
        let c = KeyComponents {
            kind: "k".into(),
            version: 1,
            params: serde_json::json!({}),
            inputs: BTreeMap::new(),
            tools: BTreeMap::new(),
            formats: BTreeMap::new(),
        };
        assert_eq!(
            serde_json::to_string(&c).unwrap(),
            r#"{"kind":"k","version":1,"params":{},"inputs":{},"tools":{}}"#
        );
        let old: KeyComponents =
            serde_json::from_str(r#"{"kind":"k","version":1,"params":{},"inputs":{},"tools":{}}"#)
                .unwrap();
        assert_eq!(old, c);
    }
}
