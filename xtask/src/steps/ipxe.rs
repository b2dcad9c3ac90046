//! The iPXE step: one platform's targets (`bin/…`, `bin-x86_64-efi/…`,
//! `bin-arm64-efi/…`) built by upstream's `make` in a private copy of the
//! pinned tree, with the embedded script, `config/local/*.h`, trusted and
//! embedded certificates and patches. One step per platform: building a
//! second platform in a shared tree touches common headers and rebuilds the
//! first.
//!
//! Reproducibility: `SOURCE_DATE_EPOCH` fixes the build timestamp, and
//! `BUILD_ID_CMD` is replaced: upstream checksums the linked objects, which
//! carry the build directory's absolute path (`__FILE__` in assertions), so
//! `.rom`/`.efi` would differ between directories. Kiln's build id is the
//! checksum of the target's name and this step's parameters and inputs.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::{output_digest, Step, StepContext};
use crate::store::{Digest, Output, TreeKind};
use crate::tools;

/// The embedded script's name inside the image (iPXE shows the basename).
pub const SCRIPT_NAME: &str = "stage1.ipxe";
/// Where Kiln's own files (script, certificates) go, beside `src/`.
const KILN_DIR: &str = "kiln";

const HOST_TOOLS: &[&str] = &["make", "gcc", "ld", "perl", "patch", "openssl"];
const ARM64_TOOLS: &[&str] = &[
    "make",
    "aarch64-linux-gnu-gcc",
    "aarch64-linux-gnu-ld",
    "gcc",
    "perl",
    "patch",
    "openssl",
];

#[derive(Debug, Clone, Serialize)]
pub struct BuildIpxe {
    pub arch: String,
    /// `bin`, `bin-x86_64-efi`, …
    pub platform: String,
    /// Files to build in the platform directory (`ipxe.lkrn`, …).
    pub files: Vec<String>,
    /// `CROSS=` prefix (e.g. `aarch64-linux-gnu-`).
    pub cross: Option<String>,
    /// The rendered embedded script.
    pub script: String,
    /// Patch file names (inputs `patch.0` … in this order).
    pub patches: Vec<String>,
    /// Inputs `trust.0` …, `cert.0` ….
    pub trust: usize,
    pub certs: usize,
    /// Input `config` (a tree of `*.h`) is present.
    pub config: bool,
    pub epoch: u64,
    #[serde(skip)]
    pub threads: usize,
}

impl Step for BuildIpxe {
    fn kind(&self) -> &'static str {
        "ipxe"
    }
    fn version(&self) -> u32 {
        1
    }
    fn label(&self) -> String {
        format!("ipxe {} {}", self.arch, self.platform)
    }
    fn params(&self) -> serde_json::Value {
        serde_json::to_value(self).expect("params serialize")
    }
    fn tools(&self) -> &'static [&'static str] {
        match self.cross {
            Some(_) => ARM64_TOOLS,
            None => HOST_TOOLS,
        }
    }

    fn run(&self, ctx: &StepContext, scratch: &Path) -> Result<BTreeMap<String, Output>> {
        let root = scratch.canonicalize()?.join("ipxe");
        ctx.store.checkout(&ctx.tree("source")?, &root)?;
        if !root.join("src/Makefile").is_file() {
            bail!("the iPXE source has no src/Makefile: give the top of an ipxe/ipxe checkout");
        }
        self.apply_patches(ctx, &root)?;
        self.write_config(ctx, &root)?;
        let args = self.kiln_files(ctx, &root)?;
        let mut cmd = self.make(&root, &args)?;
        cmd.args(self.files.iter().map(|f| format!("{}/{f}", self.platform)));
        let log = ctx.log(&format!("ipxe-{}-{}", self.arch, self.platform));
        tools::run_logged_with_progress(cmd, &log, &self.label())
            .with_context(|| format!("building iPXE {}", self.label()))?;
        let mut outputs = BTreeMap::new();
        for f in &self.files {
            let target = format!("{}/{f}", self.platform);
            let (digest, size) = ctx
                .store
                .put_file(&root.join("src").join(&target))
                .with_context(|| format!("make did not produce {target}"))?;
            outputs.insert(target, Output::File { digest, size });
        }
        Ok(outputs)
    }
}

impl BuildIpxe {
    /// `patch -p1` each patch in order; the first that does not apply fails
    /// the step by name.
    fn apply_patches(&self, ctx: &StepContext, root: &Path) -> Result<()> {
        for (i, name) in self.patches.iter().enumerate() {
            let file = ctx.file(&format!("patch.{i}"))?;
            let mut cmd = tools::command("patch")?;
            cmd.args([
                "-p1",
                "--batch",
                "--forward",
                "--no-backup-if-mismatch",
                "-d",
            ])
            .arg(root)
            .arg("-i")
            .arg(&file);
            let log = ctx.log(&format!("ipxe-patch-{i}"));
            tools::run_logged(cmd, &log)
                .with_context(|| format!("patch {} ({name}) no longer applies", i + 1))?;
        }
        Ok(())
    }

    /// `config/local/*.h` from the recipe's config directory.
    fn write_config(&self, ctx: &StepContext, root: &Path) -> Result<()> {
        if !self.config {
            return Ok(());
        }
        let local = root.join("src/config/local");
        std::fs::create_dir_all(&local)?;
        for entry in &ctx.tree("config")?.entries {
            if let TreeKind::File { digest, .. } = &entry.kind {
                let dest = local.join(&entry.path);
                if let Some(parent) = dest.parent() {
                    std::fs::create_dir_all(parent)?;
                }
                let _ = std::fs::remove_file(&dest);
                std::fs::write(&dest, ctx.store.read_blob(digest)?)
                    .with_context(|| format!("writing {}", dest.display()))?;
            }
        }
        Ok(())
    }

    /// Writes the script and certificates under `kiln/` and returns the
    /// make variables naming them, relative to `src/` so that no absolute
    /// path reaches the image.
    fn kiln_files(&self, ctx: &StepContext, root: &Path) -> Result<Vec<String>> {
        let dir = root.join(KILN_DIR);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join(SCRIPT_NAME), &self.script)?;
        let mut args = vec![format!("EMBED=../{KILN_DIR}/{SCRIPT_NAME}")];
        for (var, input, n) in [("TRUST", "trust", self.trust), ("CERT", "cert", self.certs)] {
            if n == 0 {
                continue;
            }
            let mut names = Vec::new();
            for i in 0..n {
                let name = format!("{input}-{i}.pem");
                std::fs::copy(ctx.file(&format!("{input}.{i}"))?, dir.join(&name))?;
                names.push(format!("../{KILN_DIR}/{name}"));
            }
            args.push(format!("{var}={}", names.join(",")));
        }
        args.push(format!("BUILD_ID_CMD={}", self.build_id_cmd(ctx)));
        Ok(args)
    }

    /// `cksum` of the link target's name and this step's identity: fixed for
    /// a given key, different per target.
    fn build_id_cmd(&self, ctx: &StepContext) -> String {
        let inputs: BTreeMap<&String, Digest> = ctx
            .inputs
            .iter()
            .map(|(k, v)| (k, output_digest(v)))
            .collect();
        let identity = serde_json::to_vec(&(self.params(), inputs)).expect("serializes");
        let digest = Digest::of_bytes(&identity).to_string();
        format!("echo $@ {} | cksum | awk '{{print $$1}}'", &digest[..16])
    }

    fn make(&self, root: &Path, args: &[String]) -> Result<std::process::Command> {
        let mut cmd = tools::clean_command("make", root, self.epoch)?;
        cmd.arg("-C")
            .arg(root.join("src"))
            .arg(format!("-j{}", self.threads.max(1)))
            .arg(format!("SOURCE_DATE_EPOCH={}", self.epoch))
            .args(args);
        if let Some(cross) = &self.cross {
            cmd.arg(format!("CROSS={cross}"));
        }
        Ok(cmd)
    }
}
