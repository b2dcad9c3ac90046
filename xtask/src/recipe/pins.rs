//! Rewriting the `deb` pins of `sources.toml` in place (`sources update`),
//! with its comments and layout kept: the other half of `recipe` seeing
//! TOML, so that no other module edits it.

use std::path::Path;

use anyhow::{Context, Result};

use crate::arch::Arch;

/// A `deb` source's pin as sources.toml records it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DebPin {
    pub version: String,
    pub sha256: String,
    pub pool: Option<String>,
}

/// One source whose pin `update_deb_pins` changed (or would change).
#[derive(Debug, Clone)]
pub struct PinChange {
    pub name: String,
    pub package: String,
    pub old: DebPin,
    pub new: DebPin,
}

/// For every `deb` source of `file` (or only those in `names`), asks
/// `new_pin(name, package, arch, current)` for its pin (`arch`: the
/// source's `arch`, `None` for the build machine's) and writes the changed
/// ones back atomically, unless `dry_run`. `new_pin` returning `None`
/// leaves that source alone.
pub fn update_deb_pins(
    file: &Path,
    names: &[String],
    dry_run: bool,
    mut new_pin: impl FnMut(&str, &str, Option<Arch>, &DebPin) -> Result<Option<DebPin>>,
) -> Result<Vec<PinChange>> {
    let text =
        fs_err::read_to_string(file).with_context(|| format!("reading {}", file.display()))?;
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .with_context(|| format!("parsing {}", file.display()))?;
    let mut changes = Vec::new();
    for (name, item) in doc.as_table_mut().iter_mut() {
        let Some(table) = item.as_table_like_mut() else {
            continue;
        };
        let text_of = |key: &str| table.get(key).and_then(|v| v.as_str()).map(str::to_string);
        let Some(package) = text_of("deb") else {
            continue;
        };
        let arch = text_of("arch").and_then(|a| Arch::from_name(&a));
        if !names.is_empty() && !names.iter().any(|n| n.as_str() == name.get()) {
            continue;
        }
        let old = DebPin {
            version: text_of("version").unwrap_or_default(),
            sha256: text_of("sha256").unwrap_or_default(),
            pool: text_of("pool"),
        };
        let Some(new) = new_pin(name.get(), &package, arch, &old)? else {
            continue;
        };
        if new == old {
            continue;
        }
        table.insert("version", toml_edit::value(new.version.clone()));
        table.insert("sha256", toml_edit::value(new.sha256.clone()));
        match &new.pool {
            Some(pool) => table.insert("pool", toml_edit::value(pool.clone())),
            None => table.remove("pool"),
        };
        changes.push(PinChange {
            name: name.get().to_string(),
            package,
            old,
            new,
        });
    }
    if !changes.is_empty() && !dry_run {
        write_atomically(file, &doc.to_string())?;
    }
    Ok(changes)
}

fn write_atomically(file: &Path, text: &str) -> Result<()> {
    let dir = file.parent().unwrap_or(Path::new("."));
    let tmp = tempfile::NamedTempFile::new_in(dir)
        .with_context(|| format!("creating a temporary file in {}", dir.display()))?;
    fs_err::write(tmp.path(), text).with_context(|| format!("writing {}", tmp.path().display()))?;
    tmp.persist(file)
        .with_context(|| format!("writing {}", file.display()))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pins_change_in_place_keeping_comments_and_other_sources() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("sources.toml");
        let text = "# busybox\n[busybox]\ndeb = \"busybox-static\"\nversion = \"1\"\nsha256 = \"aa\"\n\n[ipxe]\nurl = \"https://x\"\n";
        fs_err::write(&file, text).unwrap();
        let changes = update_deb_pins(&file, &[], false, |name, package, _arch, old| {
            assert_eq!(
                (name, package, old.version.as_str()),
                ("busybox", "busybox-static", "1")
            );
            Ok(Some(DebPin {
                version: "1".into(),
                sha256: "aa".into(),
                pool: Some("pool/main/b/busybox/b_1.deb".into()),
            }))
        })
        .unwrap();
        assert_eq!(changes.len(), 1);
        let written = fs_err::read_to_string(&file).unwrap();
        assert!(written.starts_with("# busybox\n[busybox]\n"), "{written}");
        assert!(
            written.contains("pool = \"pool/main/b/busybox/b_1.deb\""),
            "{written}"
        );
        assert!(written.contains("[ipxe]\nurl = \"https://x\""), "{written}");
    }
}
