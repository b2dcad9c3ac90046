//! The initramfs step: busybox and its applet links, overlay trees merged in
//! order (later wins), rendered templates and device nodes, written as one
//! deterministic newc archive.

use std::collections::BTreeMap;
use std::io::{BufWriter, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::{Slot, Step, StepContext};
use crate::arch::Arch;
use crate::archive::entry::Device;
use crate::archive::{self, CompressOptions, Compression, Data, Entry, Kind};
use crate::store::{Output, Tree, TreeKind};
use crate::template;
use crate::tools;

/// Where Debian's busybox-static puts the binary.
const BUSYBOX_BIN: &str = "bin/busybox";

/// Input: the unpacked busybox-static package, when `busybox` is set.
pub const BUSYBOX: Slot = Slot("busybox");
/// Input: the programs step's tree, when named in `trees`.
pub const PROGRAMS: Slot = Slot("programs");
/// Input: the ROM table step's tree, when named in `trees`.
pub const ROMS: Slot = Slot("roms");
/// Inputs `overlay.0` …: the recipe's overlay trees, in order.
pub const OVERLAY: Slot = Slot("overlay");
/// Inputs `file.0` …: the sources of `files`, in order (a file, or a tree
/// holding the file's `member`).
pub const FILE: Slot = Slot("file");
/// One file placed in the image from input `file.<i>`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PlacedFile {
    /// The source's name, for messages (its digest is the input).
    #[serde(skip)]
    pub source: String,
    /// The path inside a tarball, tree or package; `None` for a file.
    pub member: Option<String>,
    pub path: String,
    pub mode: u32,
}

/// Output: the compressed newc archive.
pub const IMAGE: Slot = Slot("image");

#[derive(Debug, Clone, Serialize)]
pub struct BuildInitramfs {
    #[serde(skip)]
    pub name: String,
    pub compression: Compression,
    pub level: Option<i32>,
    pub epoch: u64,
    pub uid: u32,
    pub gid: u32,
    /// Tree inputs merged first, in order, by input name (`programs`,
    /// `roms`: trees other steps made). Absent from the key when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub trees: Vec<String>,
    /// Inputs `overlay.0` … `overlay.{n-1}` are trees, merged in order
    /// after `trees`.
    pub overlays: usize,
    pub busybox: bool,
    /// The architecture busybox must be built for (its applets are listed
    /// by running it, under user-mode QEMU when it is not the build
    /// machine's). Absent from the key for x86_64.
    #[serde(skip_serializing_if = "Arch::is_default")]
    pub arch: Arch,
    /// Single files placed last (`[[initramfs.files]]`). Absent from the
    /// key when empty.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub files: Vec<PlacedFile>,
    pub templates: Vec<String>,
    pub vars: BTreeMap<String, String>,
    pub devices: Vec<Device>,
    #[serde(skip)]
    pub threads: usize,
}

impl Step for BuildInitramfs {
    fn kind(&self) -> &'static str {
        "initramfs"
    }
    fn version(&self) -> u32 {
        // 2: effective compression level in the key; gzip default 9 -> 6.
        2
    }
    fn formats(&self) -> &'static [crate::archive::Format] {
        crate::archive::CPIO_IMAGE
    }
    fn label(&self) -> String {
        format!("initramfs {}", self.name)
    }
    fn tools(&self) -> &'static [&'static str] {
        match self.busybox {
            true => self.arch.emulators(),
            false => &[],
        }
    }

    fn run(&self, ctx: &StepContext, scratch: &Path) -> Result<BTreeMap<String, Output>> {
        let mut image = Image {
            entries: BTreeMap::new(),
            uid: self.uid,
            gid: self.gid,
            epoch: self.epoch,
        };
        if self.busybox {
            self.add_busybox(ctx, scratch, &mut image)?;
        }
        for name in &self.trees {
            image.add_tree(ctx, &ctx.tree(name)?)?;
        }
        for i in 0..self.overlays {
            image.add_tree(ctx, &ctx.tree(OVERLAY.nth(i))?)?;
        }
        for (i, f) in self.files.iter().enumerate() {
            self.add_file(ctx, i, f, &mut image)?;
        }
        self.render_templates(&mut image)?;
        for d in &self.devices {
            image.insert(&d.path, d.mode, d.kind());
        }
        let entries = archive::normalize(image.entries.into_values().collect(), self.epoch)?;
        let out = scratch.join("initramfs");
        self.write(&entries, &out)?;
        let (digest, size) = ctx.store.put_file(&out)?;
        Ok(BTreeMap::from([(
            IMAGE.into(),
            Output::File { digest, size },
        )]))
    }
}

impl BuildInitramfs {
    fn add_busybox(&self, ctx: &StepContext, scratch: &Path, image: &mut Image) -> Result<()> {
        let tree = ctx.tree(BUSYBOX)?;
        let (digest, size, mode) = match tree.get(BUSYBOX_BIN).map(|e| &e.kind) {
            Some(TreeKind::File { digest, size, mode }) => (*digest, *size, *mode),
            _ => anyhow::bail!(
                "the busybox source has no {BUSYBOX_BIN}: is it the busybox-static package?"
            ),
        };
        let blob = ctx.store.verified_blob(&digest)?;
        image.insert(
            BUSYBOX_BIN,
            mode,
            Kind::File(Data::File {
                path: blob.clone(),
                size,
            }),
        );
        for applet in applets(&blob, self.arch, scratch)? {
            if applet != BUSYBOX_BIN {
                image.insert(&applet, 0o777, Kind::Symlink(format!("/{BUSYBOX_BIN}")));
            }
        }
        Ok(())
    }

    /// One `[[initramfs.files]]` entry: its bytes from input `file.<i>`.
    /// An ELF program must be a static one of the recipe's architecture:
    /// nothing else would run from this entry alone.
    fn add_file(
        &self,
        ctx: &StepContext,
        i: usize,
        f: &PlacedFile,
        image: &mut Image,
    ) -> Result<()> {
        let what = format!("[[initramfs.files]] {} (source `{}`)", f.path, f.source);
        let (path, size) = match (ctx.input(FILE.nth(i))?, &f.member) {
            (Output::File { digest, size }, None) => (ctx.store.verified_blob(digest)?, *size),
            (Output::File { .. }, Some(m)) => {
                bail!("{what}: the source is a single file, not a tarball or tree holding `{m}`: drop `member`")
            }
            (Output::Tree { .. }, None) => {
                bail!("{what}: the source is a tarball or tree: give `member`, the file's path inside it")
            }
            (Output::Tree { .. }, Some(member)) => {
                let tree = ctx.tree(FILE.nth(i))?;
                match tree.get(member).map(|e| &e.kind) {
                    Some(TreeKind::File { digest, size, .. }) => {
                        (ctx.store.verified_blob(digest)?, *size)
                    }
                    Some(_) => bail!("{what}: `{member}` is not a regular file in the source"),
                    None => {
                        // Tarballs are unpacked with their top directory
                        // stripped, as kernel sources are.
                        let stripped = member.split_once('/').map(|(_, rest)| rest);
                        let hint = match stripped.filter(|s| tree.get(s).is_some()) {
                            Some(s) => format!(" (a tarball's top directory is stripped: `{s}`)"),
                            None => String::new(),
                        };
                        bail!("{what}: the source has no `{member}`{hint}")
                    }
                }
            }
        };
        let bytes = fs_err::read(&path)?;
        if bytes.starts_with(b"\x7fELF") {
            let info = crate::elf::read_info(&bytes).with_context(|| what.clone())?;
            if info.machine != self.arch.elf_machine() {
                let is = Arch::describe_machine(info.machine, false);
                bail!("{what} is built for {is}, the recipe for {}", self.arch);
            }
            if let Some(interp) = info.interpreter {
                bail!("{what} is dynamically linked (it needs {interp}): give a static build, or list it in `programs` with the packages of its libraries");
            }
        }
        image.insert(&f.path, f.mode, Kind::File(Data::File { path, size }));
        Ok(())
    }

    fn render_templates(&self, image: &mut Image) -> Result<()> {
        let vars: template::Vars = self
            .vars
            .iter()
            .map(|(k, v)| (k.clone(), Some(v.clone())))
            .collect();
        for path in &self.templates {
            let entry = image
                .entries
                .get_mut(path.as_str())
                .with_context(|| format!("template {path} is not a file in any overlay"))?;
            let text = match &entry.kind {
                Kind::File(Data::File { path: p, .. }) => fs_err::read_to_string(p)
                    .with_context(|| format!("template {path} is not UTF-8 text"))?,
                Kind::File(Data::Bytes(b)) => String::from_utf8(b.clone())?,
                _ => anyhow::bail!("template {path} is not a regular file"),
            };
            let rendered = template::render(&text, &vars, template::Syntax::Shell)
                .map_err(|e| anyhow::anyhow!("template {path}: {}", e.message))?;
            entry.kind = Kind::File(Data::Bytes(rendered.into_bytes()));
        }
        Ok(())
    }

    fn write(&self, entries: &[Entry], out: &Path) -> Result<()> {
        let compression = self.compression;
        let file =
            fs_err::File::create(out).with_context(|| format!("creating {}", out.display()))?;
        let mut w = BufWriter::new(file);
        let opts = CompressOptions {
            level: self.level,
            threads: self.threads.max(1),
            ..Default::default()
        };
        archive::write_archive(entries, compression, &opts, &mut w)?;
        w.flush().context("writing the initramfs")?;
        Ok(())
    }
}

/// The image being assembled: path → entry, later insertions win.
struct Image {
    entries: BTreeMap<String, Entry>,
    uid: u32,
    gid: u32,
    epoch: u64,
}

impl Image {
    fn insert(&mut self, path: &str, mode: u32, kind: Kind) {
        let entry = Entry {
            path: path.to_string(),
            mode,
            uid: self.uid,
            gid: self.gid,
            mtime: self.epoch,
            kind,
            link: None,
        };
        self.entries.insert(path.to_string(), entry);
    }

    fn add_tree(&mut self, ctx: &StepContext, tree: &Tree) -> Result<()> {
        for e in &tree.entries {
            let (mode, kind) = match &e.kind {
                TreeKind::Dir { mode } => (*mode, Kind::Dir),
                TreeKind::Symlink { target } => (0o777, Kind::Symlink(target.clone())),
                TreeKind::File { digest, size, mode } => {
                    let path = ctx.store.verified_blob(digest)?;
                    (*mode, Kind::File(Data::File { path, size: *size }))
                }
            };
            self.insert(&e.path, mode, kind);
        }
        Ok(())
    }
}

/// Applet paths from `busybox --list-full` (e.g. `sbin/ifconfig`). The
/// binary is an input, so its answer is a function of the key. Another
/// architecture's busybox (static, as busybox-static is) runs under
/// user-mode QEMU; one built for an architecture other than `arch` is
/// refused, naming both.
fn applets(blob: &Path, arch: Arch, scratch: &Path) -> Result<Vec<String>> {
    let bytes = fs_err::read(blob)?;
    let info = crate::elf::read_info(&bytes).context("reading busybox")?;
    if info.machine != arch.elf_machine() {
        let is = Arch::describe_machine(info.machine, false);
        bail!(
            "the busybox source is built for {is}, the recipe for {arch}: give a {arch} busybox-static (`arch = \"{arch}\"` in sources.toml)"
        );
    }
    let exe = scratch.join("busybox");
    fs_err::copy(blob, &exe).context("copying busybox to scratch")?;
    fs_err::set_permissions(&exe, std::fs::Permissions::from_mode(0o755))?;
    let mut cmd = match arch.emulators().first() {
        Some(qemu) => {
            let mut cmd = tools::command(qemu)?;
            cmd.arg(&exe);
            cmd
        }
        None => tools::command_at(&exe),
    };
    cmd.arg("--list-full");
    let list = tools::capture(cmd).context("asking busybox for its applets")?;
    let mut applets: Vec<String> = list
        .lines()
        .map(|l| l.trim().trim_start_matches('/').to_string())
        .filter(|l| !l.is_empty())
        .collect();
    applets.sort();
    Ok(applets)
}
