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
//! checksum of the target's name and this step's inputs and parameters
//! except the script and the list of files, so a build with a placeholder
//! script and one with a host's script get the same id (`archive/ipxe_script.rs`).
//!
//! A placeholder build (`intermediates`) also keeps each compressed
//! target's `.bin` and `.zinfo` and the tree's `util/zbin`, and proves on
//! the spot that Kiln's finishing of the `.bin` gives make's own file.

pub mod combine;
pub mod patch;

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::{output_digest, Slot, Step, StepContext};
use crate::arch::Arch;
use crate::archive::ipxe_script;
use crate::archive::rom_version::{self, RomVersion};
use crate::store::beneath::Beneath;
use crate::store::{Digest, Output, TreeKind};
use crate::tools;

/// The embedded script's name inside the image (iPXE shows the basename).
pub const SCRIPT_NAME: &str = "stage1.ipxe";
/// Where Kiln's own files (script, certificates) go, beside `src/`.
const KILN_DIR: &str = "kiln";

/// Input: the iPXE source tree.
pub const SOURCE: Slot = Slot("source");
/// Input: a tree of `config/local/*.h`, when `config` is set.
pub const CONFIG: Slot = Slot("config");
/// Inputs `patch.0` …: the patches, in the order of `patches`.
pub const PATCH: Slot = Slot("patch");
/// Inputs `trust.0` …: certificates iPXE trusts.
pub const TRUST: Slot = Slot("trust");
/// Inputs `cert.0` …: certificates embedded in the image.
pub const CERT: Slot = Slot("cert");

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
    pub arch: Arch,
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
    /// Kiln's empty Mellanox version block is appended to `romprefix.S`
    /// (`archive/rom_version.rs`): every ROM of this build has room for a
    /// version, written after the build.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub version_block: bool,
    /// Written into each ROM this build makes; `None` in a placeholder
    /// build, whose ROMs are stamped when patched.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub rom_version: Option<RomVersion>,
    /// Also output what per-host patching needs: `<target>.bin`,
    /// `<target>.zinfo` of compressed targets and `zbin:<platform>`.
    pub intermediates: bool,
    /// Said in the label (`placeholder script`, `full make for <host>`).
    #[serde(skip)]
    pub note: String,
    #[serde(skip)]
    pub threads: usize,
}

impl Step for BuildIpxe {
    fn kind(&self) -> &'static str {
        "ipxe"
    }
    fn version(&self) -> u32 {
        // 3: the stored zbin no longer records the scratch path.
        3
    }
    fn formats(&self) -> &'static [crate::archive::Format] {
        match self.version_block {
            true => &[ipxe_script::FORMAT, rom_version::FORMAT],
            false => &[ipxe_script::FORMAT],
        }
    }
    fn label(&self) -> String {
        match self.note.as_str() {
            "" => format!("ipxe {} {}", self.arch, self.platform),
            note => format!("ipxe {} {} ({note})", self.arch, self.platform),
        }
    }
    fn tools(&self) -> &'static [&'static str] {
        match self.cross {
            Some(_) => ARM64_TOOLS,
            None => HOST_TOOLS,
        }
    }

    fn run(&self, ctx: &StepContext, scratch: &Path) -> Result<BTreeMap<String, Output>> {
        let root = scratch.canonicalize()?.join("ipxe");
        // Copied, not linked: make writes inside the tree.
        ctx.store.checkout_copy(&ctx.tree(SOURCE)?, &root)?;
        if !root.join("src/Makefile").is_file() {
            bail!("the iPXE source has no src/Makefile: give the top of an ipxe/ipxe checkout");
        }
        self.apply_patches(ctx, &root)?;
        self.write_config(ctx, &root)?;
        if self.version_block {
            add_version_block(&root)?;
        }
        let args = self.kiln_files(ctx, &root)?;
        let mut cmd = self.make(&root, &args)?;
        cmd.args(self.goals());
        let log = ctx.log(&format!("ipxe-{}-{}", self.arch, self.platform));
        tools::run_logged_with_progress(cmd, &log, &self.label())
            .with_context(|| format!("building iPXE {}", self.label()))?;
        let src = root.join("src");
        let mut outputs = BTreeMap::new();
        for goal in self.goals() {
            let path = src.join(&goal);
            let made = || format!("make did not produce {goal}");
            let (digest, size) = match self.rom_version {
                Some(version) if ipxe_script::is_legacy_rom(&goal) => {
                    let mut rom = fs_err::read(&path).with_context(made)?;
                    rom_version::stamp(&mut rom, version)
                        .with_context(|| format!("writing version {version} into {goal}"))?;
                    (ctx.store.put_bytes(&rom)?, rom.len() as u64)
                }
                _ => ctx.store.put_file(&path).with_context(made)?,
            };
            outputs.insert(goal, Output::File { digest, size });
        }
        if self.intermediates && self.compressed().next().is_some() {
            let zbin = self.zbin(&src)?;
            let (digest, size) = ctx.store.put_file(&zbin)?;
            outputs.insert(
                patch::zbin_input(&self.platform),
                Output::File { digest, size },
            );
            self.check_finishing(&src, &zbin, scratch)?;
        }
        if self.intermediates && self.efiroms().next().is_some() {
            let efirom = src.join("util/efirom");
            let (digest, size) = ctx
                .store
                .put_file(&efirom)
                .context("make built .efirom targets but no util/efirom")?;
            outputs.insert(
                patch::efirom_input(&self.platform),
                Output::File { digest, size },
            );
            self.check_efiroms(&src, &efirom, scratch)?;
        }
        Ok(outputs)
    }
}

/// Appends Kiln's empty version block to the tree's ROM prefix, beneath
/// the tree only (like `config/local`).
fn add_version_block(root: &Path) -> Result<()> {
    const PREFIX: &str = "src/arch/x86/prefix/romprefix.S";
    let mut text = crate::store::beneath::read_file(root, PREFIX)
        .with_context(|| format!("this iPXE tree has no {PREFIX} for the ROM version block"))?;
    text.extend_from_slice(rom_version::BLOCK_SOURCE.as_bytes());
    let tree = Beneath::open(root)?;
    tree.remove(PREFIX)?;
    let mut file = tree.create(PREFIX, 0o644)?;
    std::io::Write::write_all(&mut file, &text)
        .with_context(|| format!("writing {}", root.join(PREFIX).display()))
}

impl BuildIpxe {
    /// Make goals: the targets, and with `intermediates` each compressed
    /// target's `.bin` and `.zinfo` (naming them keeps make from deleting
    /// them as intermediate files).
    fn goals(&self) -> Vec<String> {
        let mut goals: Vec<String> = self
            .files
            .iter()
            .map(|f| format!("{}/{f}", self.platform))
            .collect();
        if self.intermediates {
            for f in self.compressed() {
                let target = format!("{}/{f}", self.platform);
                goals.push(patch::bin_input(&target));
                goals.push(patch::zinfo_input(&target));
            }
            for f in self.efiroms() {
                let efidrv = patch::efidrv_input(&format!("{}/{f}", self.platform));
                if !goals.contains(&efidrv) {
                    goals.push(efidrv);
                }
            }
        }
        goals
    }

    /// `.efirom` targets, made by `util/efirom` from a `.efidrv`.
    fn efiroms(&self) -> impl Iterator<Item = &String> {
        self.files
            .iter()
            .filter(|f| ipxe_script::finish_of(f) == Some(ipxe_script::Finish::EfiRom))
    }

    /// Like [`Self::check_finishing`]: `util/efirom` over each unmodified
    /// `.efidrv`, run as Kiln runs it per host, must give make's `.efirom`.
    fn check_efiroms(&self, src: &Path, efirom: &Path, scratch: &Path) -> Result<()> {
        for f in self.efiroms() {
            let target = format!("{}/{f}", self.platform);
            let read = |name: &str| {
                let path = src.join(name);
                fs_err::read(&path).with_context(|| format!("reading {}", path.display()))
            };
            let (drv, made) = (read(&patch::efidrv_input(&target))?, read(&target)?);
            let tool = patch::EfiRomTool {
                efirom,
                scratch,
                name: f,
            };
            let ours = tool
                .make(&drv, &made)
                .with_context(|| format!("packing {target}'s .efidrv again"))?;
            if ours != made {
                bail!(
                    "util/efirom as Kiln runs it does not reproduce make's {target} (sizes {} and {}): per-host files cannot be patched for this tree",
                    ours.len(),
                    made.len()
                );
            }
        }
        Ok(())
    }

    /// Targets made from a `.zbin`.
    fn compressed(&self) -> impl Iterator<Item = &String> {
        self.files.iter().filter(|f| {
            matches!(
                ipxe_script::finish_of(f),
                Some(ipxe_script::Finish::Zbin { .. })
            )
        })
    }

    /// The `zbin` this platform's make built: `util/zbin32` for 32-bit
    /// `bin/`, `util/zbin64` otherwise (iPXE's `arch/*/Makefile` `ZBIN`).
    fn zbin(&self, src: &Path) -> Result<std::path::PathBuf> {
        let name = match self.platform.as_str() {
            "bin" | "bin-i386-pcbios" => "util/zbin32",
            _ => "util/zbin64",
        };
        let path = src.join(name);
        if !path.is_file() {
            bail!("make built compressed targets but no {name}");
        }
        Ok(path)
    }

    /// Kiln's finishing (zbin, padding, ROM checksums) of each unmodified
    /// `.bin` must give make's own file, or patched files could not be
    /// trusted to be what make would have built.
    fn check_finishing(&self, src: &Path, zbin: &Path, scratch: &Path) -> Result<()> {
        for f in self.compressed() {
            let Some(ipxe_script::Finish::Zbin { pad, rom }) = ipxe_script::finish_of(f) else {
                continue;
            };
            let target = src.join(&self.platform).join(f);
            let read = |ext: &str| {
                let path = target.with_file_name(format!("{f}{ext}"));
                fs_err::read(&path).with_context(|| format!("reading {}", path.display()))
            };
            let (bin, zinfo, made) = (read(".bin")?, read(".zinfo")?, read("")?);
            let parts = patch::Compressed {
                zbin,
                scratch,
                name: f,
                bin: &bin,
                zinfo: &zinfo,
            };
            let ours = parts
                .finish(&bin, pad, rom)
                .with_context(|| format!("finishing {}/{f}", self.platform))?;
            if ours != made {
                let at = ours.iter().zip(&made).position(|(a, b)| a != b);
                bail!(
                    "Kiln's finishing of {}/{f}.bin differs from make's {f} (sizes {} and {}, first difference at {}): per-host files cannot be patched for this tree",
                    self.platform,
                    ours.len(),
                    made.len(),
                    at.map_or("the end".to_string(), |a| format!("{a:#x}"))
                );
            }
        }
        Ok(())
    }

    /// `patch -p1` each patch in order; the first that does not apply fails
    /// the step by name.
    fn apply_patches(&self, ctx: &StepContext, root: &Path) -> Result<()> {
        for (i, name) in self.patches.iter().enumerate() {
            let file = ctx.file(PATCH.nth(i))?;
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
        // Beneath the tree only: `src/config/local` may be a symlink in an
        // operator's checkout, and Kiln's headers must not land where it points.
        let tree = Beneath::open(root)?;
        let local = "src/config/local";
        tree.dir_all(local)?;
        for entry in &ctx.tree(CONFIG)?.entries {
            let rel = format!("{local}/{}", entry.path);
            match &entry.kind {
                TreeKind::Dir { .. } => tree.dir(&rel)?,
                TreeKind::File { digest, .. } => {
                    tree.remove(&rel)?;
                    let mut file = tree.create(&rel, 0o644)?;
                    std::io::Write::write_all(&mut file, &ctx.store.read_blob(digest)?)
                        .with_context(|| format!("writing {}", root.join(&rel).display()))?;
                }
                TreeKind::Symlink { .. } => {}
            }
        }
        Ok(())
    }

    /// Writes the script and certificates under `kiln/` and returns the
    /// make variables naming them, relative to `src/` so that no absolute
    /// path reaches the image.
    fn kiln_files(&self, ctx: &StepContext, root: &Path) -> Result<Vec<String>> {
        let dir = root.join(KILN_DIR);
        fs_err::create_dir_all(&dir)?;
        fs_err::write(dir.join(SCRIPT_NAME), &self.script)?;
        let mut args = vec![format!("EMBED=../{KILN_DIR}/{SCRIPT_NAME}")];
        for (var, input, n) in [("TRUST", TRUST, self.trust), ("CERT", CERT, self.certs)] {
            if n == 0 {
                continue;
            }
            let mut names = Vec::new();
            for i in 0..n {
                let name = format!("{input}-{i}.pem");
                fs_err::copy(ctx.file(input.nth(i))?, dir.join(&name))?;
                names.push(format!("../{KILN_DIR}/{name}"));
            }
            args.push(format!("{var}={}", names.join(",")));
        }
        args.push(format!("BUILD_ID_CMD={}", self.build_id_cmd(ctx)));
        Ok(args)
    }

    /// `cksum` of the link target's name and this step's identity without
    /// the script and the file list: fixed for a given tree and
    /// configuration, different per target, and the same for every script.
    fn build_id_cmd(&self, ctx: &StepContext) -> String {
        let inputs: BTreeMap<&String, Digest> = ctx
            .inputs
            .iter()
            .map(|(k, v)| (k, output_digest(v)))
            .collect();
        let mut params = super::Params::params(self);
        if let Some(p) = params.as_object_mut() {
            for varying in ["script", "files", "intermediates", "rom_version"] {
                p.remove(varying);
            }
        }
        let identity = serde_json::to_vec(&(params, inputs)).expect("serializes");
        let digest = Digest::of_bytes(&identity).to_string();
        format!("echo $@ {} | cksum | awk '{{print $$1}}'", &digest[..16])
    }

    fn make(&self, root: &Path, args: &[String]) -> Result<std::process::Command> {
        let mut cmd = tools::clean_command("make", root, self.epoch)?;
        // `zbin`, a stored output, is a host program built with `-g`.
        let scratch = root.parent().context("the iPXE tree has no parent")?;
        cmd.env(
            "PATH",
            tools::path_mapping_gcc(&scratch.join("kiln-cc"), root, None)?,
        )
        .arg("-C")
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
