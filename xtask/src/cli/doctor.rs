//! `doctor`: which host tools are present, their versions, what needs them,
//! and the one `apt-get install` line for what is missing.

use std::process::ExitCode;

use anyhow::Result;

use super::Settings;
use crate::recipe::SourceKind;
use crate::tools::{self, apt};

pub fn doctor(s: &Settings) -> Result<ExitCode> {
    let mut missing = Vec::new();
    println!(
        "{:<8} {:<20} {:<45} needed for",
        "status", "tool", "version"
    );
    for t in tools::host_tools() {
        let (status, version) = match tools::find(&t.command) {
            Some(_) => (
                "found",
                tools::version(&t.command).unwrap_or_else(|e| format!("? ({e})")),
            ),
            None => {
                missing.push(t.package.clone());
                ("MISSING", String::new())
            }
        };
        println!(
            "{status:<8} {:<20} {:<45} {}",
            t.command,
            truncate(&version, 45),
            t.purpose
        );
    }
    println!();
    println!(
        "cache:   {} ({})",
        s.cache_dir.display(),
        crate::tools::human_bytes(dir_size(&s.cache_dir))
    );
    match &s.remote {
        None => {
            println!("remote:  none (--remote-cache URL or KILN_REMOTE_CACHE to share built steps)")
        }
        Some(r) => match r.probe() {
            Ok(()) => println!(
                "remote:  {} reachable{}",
                r.url,
                if r.readonly { " (read-only)" } else { "" }
            ),
            Err(e) => println!("remote:  {} NOT reachable: {e:#}", r.url),
        },
    }
    println!("recipes: {}", s.recipes_dir.display());
    println!("output:  {}", s.output_dir.display());
    if s.source_overrides.is_empty() {
        println!("sources: all pinned (give a local tree with --source NAME=PATH or KILN_SOURCE_<NAME>=PATH)");
    }
    for (name, path) in &s.source_overrides {
        println!("source override: {name} = {}", path.display());
    }
    if !s.source_overrides.contains_key("ipxe") {
        println!(
            "ipxe:    the pinned upstream archive is downloaded on first use; without internet, \
             give a checkout of ipxe/ipxe or its tarball: --source ipxe=PATH or \
             KILN_SOURCE_IPXE=PATH (stage1, fleet and stage3 tests skip without one, \
             and fail under KILN_TEST_REQUIRE=all)"
        );
    }
    deb_pins(s);
    missing.sort();
    missing.dedup();
    if missing.is_empty() {
        println!("\nall host tools are present");
        Ok(ExitCode::SUCCESS)
    } else {
        println!(
            "\nto install what is missing:\n  apt-get install -y {}",
            missing.join(" ")
        );
        Ok(ExitCode::FAILURE)
    }
}

/// Which pinned `deb` versions apt no longer offers, and whether each can
/// still be fetched from a `[mirrors]` base by its recorded pool path.
fn deb_pins(s: &Settings) {
    let recipes = match s.recipes() {
        Ok(r) => r,
        Err(e) => return println!("debs:    recipes do not load: {e:#}"),
    };
    let mut gone = Vec::new();
    let mut debs = 0;
    let foreign: std::collections::BTreeSet<_> = recipes
        .sources
        .values()
        .filter_map(|s| match &s.kind {
            SourceKind::Deb { arch, .. } => *arch,
            _ => None,
        })
        .collect();
    // dpkg is asked once per architecture, not once per source.
    let mut disabled = std::collections::BTreeSet::new();
    for arch in foreign {
        match apt::architecture_missing(Some(arch)) {
            Some(why) => {
                println!("arch:    {arch} deb sources cannot be fetched: {why}");
                disabled.insert(arch);
            }
            None => println!("arch:    apt handles {arch} packages"),
        }
    }
    for (name, source) in &recipes.sources {
        let SourceKind::Deb {
            package,
            arch,
            version,
            pool,
            ..
        } = &source.kind
        else {
            continue;
        };
        debs += 1;
        let package = &apt::qualified(package, *arch);
        if arch.is_some_and(|a| disabled.contains(&a)) {
            gone.push(format!(
                "{name} ({package}={version}): its architecture is not enabled"
            ));
            continue;
        }
        match apt::show(package, Some(version)) {
            Ok(Some(_)) => {}
            Ok(None) => {
                let fallback = match (pool, recipes.deb_mirrors.len()) {
                    (Some(_), 0) => "pool path recorded, but no [mirrors] deb base to fetch it from",
                    (Some(_), _) => "fetched by its pool path from [mirrors]",
                    (None, _) => "no pool path recorded: fetching it fails (`cargo xtask sources update` re-pins)",
                };
                gone.push(format!("{name} ({package}={version}): {fallback}"));
            }
            Err(e) => gone.push(format!("{name}: cannot ask apt: {e:#}")),
        }
    }
    if gone.is_empty() {
        println!("debs:    apt offers every pinned version ({debs} deb sources)");
    } else {
        println!(
            "debs:    apt no longer offers {} of {debs} pinned versions:",
            gone.len()
        );
        for g in gone {
            println!("           {g}");
        }
    }
}

fn truncate(s: &str, n: usize) -> String {
    if s.chars().count() <= n {
        s.to_string()
    } else {
        s.chars().take(n - 1).collect::<String>() + "…"
    }
}

pub fn dir_size(dir: &std::path::Path) -> u64 {
    walkdir::WalkDir::new(dir)
        .into_iter()
        .filter_map(Result::ok)
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}
