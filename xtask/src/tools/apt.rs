//! What the machine's apt offers of a package: `apt-cache show`, parsed.
//! Used to pin `deb` sources (`sources update`) and to tell which pins apt
//! no longer offers (`doctor`).

use anyhow::{Context, Result};

use crate::arch::Arch;

/// `package`, or `package:arm64` for another architecture's: the name
/// apt-get and apt-cache take.
pub fn qualified(package: &str, arch: Option<Arch>) -> String {
    match arch {
        Some(a) => format!("{package}:{}", a.debian()),
        None => package.to_string(),
    }
}

/// The architectures dpkg and apt handle on this machine: the native one
/// and every `dpkg --add-architecture`.
pub fn enabled_architectures() -> Result<Vec<Arch>> {
    let mut names = Vec::new();
    for flag in ["--print-architecture", "--print-foreign-architectures"] {
        let out = super::command("dpkg")?
            .arg(flag)
            .output()
            .with_context(|| format!("running dpkg {flag}"))?;
        names.extend(
            String::from_utf8_lossy(&out.stdout)
                .split_whitespace()
                .map(str::to_string),
        );
    }
    Ok(names.iter().filter_map(|n| Arch::from_debian(n)).collect())
}

/// Why apt cannot fetch `arch`'s packages here, if it cannot.
pub fn architecture_missing(arch: Option<Arch>) -> Option<String> {
    let arch = arch?;
    let enabled = enabled_architectures().ok()?;
    (!enabled.contains(&arch)).then(|| {
        format!(
            "apt on this machine does not handle {arch} packages: run `dpkg --add-architecture {0} && apt-get update` (ci/setup does)",
            arch.debian()
        )
    })
}

/// One version of a package as an apt archive lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AptPackage {
    pub version: String,
    pub sha256: String,
    /// The `.deb`'s path under the archive's base URL (`pool/main/…`).
    pub filename: String,
}

/// apt's record of `package` at `version`, or at apt's candidate version
/// when `version` is `None`; `Ok(None)` when apt does not offer it.
pub fn show(package: &str, version: Option<&str>) -> Result<Option<AptPackage>> {
    let mut cmd = super::command("apt-cache")?;
    match version {
        Some(v) => cmd.arg("show").arg(format!("{package}={v}")),
        None => cmd.args(["show", "--no-all-versions", package]),
    };
    let out = cmd
        .output()
        .with_context(|| format!("asking apt about `{package}`"))?;
    let stderr = String::from_utf8_lossy(&out.stderr);
    // apt-cache says "No packages found" for an unknown package, and prints
    // nothing at all for a version its lists do not have.
    if !out.status.success() && !stderr.contains("No packages found") {
        anyhow::bail!(
            "`apt-cache show {package}` failed ({}): {}",
            out.status,
            stderr.trim()
        );
    }
    Ok(parse_first(&String::from_utf8_lossy(&out.stdout)))
}

/// The first record of `apt-cache show` output (records are separated by
/// blank lines; the same version may be listed by several archives).
fn parse_first(text: &str) -> Option<AptPackage> {
    let record = text.split("\n\n").find(|r| !r.trim().is_empty())?;
    let field = |name: &str| {
        record
            .lines()
            .find_map(|l| l.strip_prefix(name)?.strip_prefix(':'))
            .map(|v| v.trim().to_string())
    };
    Some(AptPackage {
        version: field("Version")?,
        sha256: field("SHA256")?,
        filename: field("Filename")?,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_first_record_gives_version_digest_and_pool_path() {
        let text = "Package: busybox-static\nVersion: 1:1.35.0-4+deb12u1+b1\nFilename: pool/main/b/busybox/busybox-static_1.35.0-4+deb12u1+b1_amd64.deb\nSHA256Sum: no\nSHA256: 3d3f\n\nPackage: busybox-static\nVersion: 1:1.30\nFilename: other\nSHA256: 0000\n";
        assert_eq!(
            parse_first(text),
            Some(AptPackage {
                version: "1:1.35.0-4+deb12u1+b1".into(),
                sha256: "3d3f".into(),
                filename: "pool/main/b/busybox/busybox-static_1.35.0-4+deb12u1+b1_amd64.deb".into(),
            })
        );
        assert_eq!(parse_first(""), None, "a version apt does not list");
    }
}
