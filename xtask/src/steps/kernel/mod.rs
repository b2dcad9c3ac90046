//! Building a Linux kernel from source in three cached steps:
//!
//! 1. `config`  — base (`tinyconfig`, …) or a full file, recipe fragments
//!    merged in order, `olddefconfig`, then a check that Kconfig kept every
//!    option the fragments asked for;
//! 2. `compile` — a full `make` with a placeholder initramfs; the output is
//!    the compiled object tree itself, keyed by source + config + toolchain;
//! 3. `link`    — the object tree restored into scratch with the real
//!    initramfs dropped in, and `make bzImage`, which only regenerates the
//!    `usr/` archive and relinks. An initramfs-only change costs this step.
//!
//! The object tree is `kiln-build/`, a direct subdirectory of the source
//! tree: kbuild then names sources `../…` (srctree = `..`), so no absolute
//! path reaches a command line, a `.cmd` file or the kernel image, and a
//! compiled tree restored under another scratch path is still up to date.

pub mod compile;
pub mod config;
pub mod link;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{Context, Result};

use crate::arch::Arch;
use crate::steps::{Slot, StepContext};
use crate::tools;

/// The object tree, relative to the source tree.
pub const BUILD_DIR: &str = "kiln-build";

/// The initramfs file name in the object tree, as `CONFIG_INITRAMFS_SOURCE`
/// names it. The `.cpio.` infix makes kbuild embed it as is, whatever its
/// compression (usr/Makefile), so one compiled tree serves any initramfs.
pub const INITRAMFS_NAME: &str = "kiln-initramfs.cpio.img";

/// Input of every kernel step: the kernel source tree.
pub const SOURCE: Slot = Slot("source");

/// Links the kernel source (input `source`) read-only into `scratch/src`
/// and returns that path, canonical: kbuild records real paths, which
/// `unbind`/`rebind` must match. The object tree goes in `src/kiln-build`.
pub fn checkout_source(ctx: &StepContext, scratch: &Path) -> Result<PathBuf> {
    let src = scratch.canonicalize()?.join("src");
    ctx.checkout(&ctx.tree(SOURCE)?, &src)?;
    Ok(src)
}

/// Stands for the absolute source path in kbuild's dependency records.
const SRCTREE_TOKEN: &str = "@KILN_SRCTREE@";

/// kbuild proper names sources relatively, but the tools it builds with
/// their own make (objtool) record absolute paths in their `.cmd`/`.d`
/// dependency files. A compiled tree restored elsewhere would find those
/// paths missing, rebuild objtool, and then every object objtool checked.
/// `unbind` replaces the scratch path with a token before the tree is
/// stored; `rebind` puts the new scratch path in after it is restored.
pub fn unbind(obj: &Path, src: &Path) -> Result<()> {
    rewrite_dep_files(obj, &src.to_string_lossy(), SRCTREE_TOKEN)
}

pub fn rebind(obj: &Path, src: &Path) -> Result<()> {
    rewrite_dep_files(obj, SRCTREE_TOKEN, &src.to_string_lossy())
}

fn rewrite_dep_files(obj: &Path, from: &str, to: &str) -> Result<()> {
    for entry in walkdir::WalkDir::new(obj) {
        let entry = entry?;
        let name = entry.file_name().to_string_lossy();
        let dep_file = name.starts_with('.') && (name.ends_with(".cmd") || name.ends_with(".d"));
        if !dep_file || !entry.file_type().is_file() {
            continue;
        }
        let bytes = fs_err::read(entry.path())?;
        let text = String::from_utf8_lossy(&bytes);
        if text.contains(from) {
            // Write a new file: restored files may be links into the store.
            let path = entry.path();
            fs_err::remove_file(path)?;
            fs_err::write(path, text.replace(from, to))
                .with_context(|| format!("rewriting {}", path.display()))?;
        }
    }
    Ok(())
}

/// Tools every kernel step runs for `arch`; their versions are in the
/// keys. gcc and the Kconfig parser generator are already in the config
/// (CC_VERSION_TEXT); the host's gcc also builds kbuild's own programs.
pub fn kbuild_tools(arch: Arch) -> &'static [&'static str] {
    match arch {
        Arch::X86_64 => &["make", "gcc", "ld", "flex", "bison", "bc"],
        Arch::Arm64 => &[
            "make",
            "gcc",
            "ld",
            "flex",
            "bison",
            "bc",
            "aarch64-linux-gnu-gcc",
            "aarch64-linux-gnu-ld",
        ],
    }
}

/// `make -C <src> O=kiln-build ARCH=<arch> -j<jobs> <targets>` with a clean
/// environment: only PATH survives from the caller, every build-identity
/// variable is fixed and time comes from `epoch`.
pub fn make(src: &Path, arch: Arch, epoch: u64, jobs: usize) -> Result<Command> {
    let mut cmd = tools::clean_command("make", src, epoch)?;
    // kbuild names sources relatively, but gcc still records the working
    // directory in objects built with `-g`: the real-mode setup code
    // (`REALMODE_CFLAGS` has `-g`) and objtool. They are stripped from the
    // bzImage, yet they are in the compiled tree, whose digest keys the link
    // step. Neither takes user flags (`KCFLAGS` stops at `REALMODE_CFLAGS`),
    // and a different `CC` would be recorded by Kconfig
    // (`include/config/auto.conf.cmd`): the link step, in another scratch
    // path, would re-run syncconfig and rebuild everything.
    let scratch = src.parent().context("the source tree has no parent")?;
    let cross = arch.cross_prefix();
    let path = tools::path_mapping_gcc(&scratch.join("kiln-cc"), src, cross)?;
    cmd.env("PATH", path)
        .env("KBUILD_BUILD_TIMESTAMP", kbuild_timestamp(epoch))
        .env("KBUILD_BUILD_USER", "kiln")
        .env("KBUILD_BUILD_HOST", "kiln")
        .env("KBUILD_BUILD_VERSION", "1")
        .arg("-C")
        .arg(src)
        .arg(format!("O={BUILD_DIR}"))
        .arg(format!("ARCH={}", arch.kernel_arch()))
        .arg(format!("-j{}", jobs.max(1)));
    if let Some(cross) = cross {
        cmd.arg(format!("CROSS_COMPILE={cross}"));
    }
    Ok(cmd)
}

/// `epoch` as `date -u` prints it ("Tue Nov 14 22:13:20 UTC 2023"): the
/// form the kernel shows in `uname -v` and parses back with `date -d`.
pub fn kbuild_timestamp(epoch: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = epoch / 86_400;
    let secs = epoch % 86_400;
    let (y, m, d) = crate::archive::time::civil_from_days(days);
    format!(
        "{} {} {d:2} {:02}:{:02}:{:02} UTC {y}",
        DAYS[(days % 7) as usize],
        MONTHS[m as usize - 1],
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn timestamp_is_what_date_prints() {
        assert_eq!(
            kbuild_timestamp(1_700_000_000),
            "Tue Nov 14 22:13:20 UTC 2023"
        );
        assert_eq!(kbuild_timestamp(0), "Thu Jan  1 00:00:00 UTC 1970");
        assert_eq!(
            kbuild_timestamp(951_782_400),
            "Tue Feb 29 00:00:00 UTC 2000"
        );
    }
}
