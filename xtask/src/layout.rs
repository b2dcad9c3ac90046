//! The names Kiln keeps for itself in an output directory. A leaf, so that
//! recipe loading can refuse an artifact named like one of them and
//! `output/` can write them.

/// The manifest naming every artifact's digest and inputs.
pub const MANIFEST: &str = "manifest.json";
/// Tool logs (`logs/<tool step>-<key>.log`).
pub const LOGS: &str = "logs";
/// Staging for an install: artifacts are copied here, then renamed into
/// place. Removed by the next install if a build was killed.
pub const STAGING: &str = ".kiln-staging";
/// Held while a build installs, so two builds never mix their artifacts.
pub const LOCK: &str = ".kiln-lock";

/// Why `path` (relative to the output directory) cannot be an artifact's.
pub fn reserved(path: &str) -> Option<&'static str> {
    let first = path.split('/').next().unwrap_or_default();
    if path == MANIFEST {
        Some("Kiln's manifest of the output directory")
    } else if first == LOGS {
        Some("where tool logs go")
    } else if first.starts_with(".kiln") {
        Some("where Kiln stages and locks an install")
    } else {
        None
    }
}
