//! `doctor`: which host tools are present, their versions, what needs them,
//! and the one `apt-get install` line for what is missing.

use std::process::ExitCode;

use anyhow::Result;

use super::Settings;
use crate::tools;

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
             give a checkout of ipxe/ipxe: --source ipxe=PATH or KILN_SOURCE_IPXE=PATH \
             (stage1 tests skip without one)"
        );
    }
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
