//! The combined ROM step: images a patch step made (a host's or the
//! recipe's), chained into one option ROM by `archive::optrom::combine`,
//! as iPXE's `util/catrom.pl` chains make's files; and, for `--check-make`,
//! [`CatRom`]: catrom.pl itself over a full make's images, the reference the
//! combined ROM must equal.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::archive::optrom;
use crate::steps::{Slot, Step, StepContext};
use crate::store::{Output, Verify};
use crate::tools;

/// Inputs `image.0` …: the images, in ROM order.
pub const IMAGE: Slot = Slot("image");
/// Output: the combined ROM.
pub const ROM: Slot = Slot("rom");

#[derive(Debug, Clone, Serialize)]
pub struct CombineRoms {
    /// Whose ROM: a host name, or the recipe's name.
    pub who: String,
    /// The output file name (`efi-virtio.rom`).
    pub file: String,
    /// The images' make targets, for messages (inputs `image.<i>`).
    pub images: Vec<String>,
    pub pad_to: Option<u64>,
    pub max_size: Option<u64>,
}

impl Step for CombineRoms {
    fn kind(&self) -> &'static str {
        "rom-combine"
    }
    fn version(&self) -> u32 {
        1
    }
    fn formats(&self) -> &'static [crate::archive::Format] {
        &[optrom::FORMAT]
    }
    fn label(&self) -> String {
        format!("combined ROM {} for {}", self.file, self.who)
    }
    fn batch(&self) -> Option<&'static str> {
        Some("combined ROMs per host")
    }

    fn run(&self, ctx: &StepContext, _scratch: &Path) -> Result<BTreeMap<String, Output>> {
        let mut images = Vec::new();
        for (i, target) in self.images.iter().enumerate() {
            let path = ctx.file(IMAGE.nth(i))?;
            images.push(fs_err::read(&path).with_context(|| format!("reading {target}"))?);
        }
        let slices: Vec<&[u8]> = images.iter().map(Vec::as_slice).collect();
        let size = |n: Option<u64>| n.map(|n| usize::try_from(n).unwrap_or(usize::MAX));
        let rom = optrom::combine(&slices, size(self.pad_to), size(self.max_size)).with_context(
            || {
                format!(
                    "chaining {} into {} for {}",
                    self.images.join(" + "),
                    self.file,
                    self.who
                )
            },
        )?;
        stored(ctx, &rom)
    }
}

/// `perl util/catrom.pl <images>` from the iPXE tree (input `source`), then
/// zeros to `pad_to` as `truncate -s` adds them: what an operator without
/// Kiln would run after `make`.
#[derive(Debug, Clone, Serialize)]
pub struct CatRom {
    pub who: String,
    pub file: String,
    /// The images' make targets (inputs `image.<i>`).
    pub images: Vec<String>,
    pub pad_to: Option<u64>,
}

impl Step for CatRom {
    fn kind(&self) -> &'static str {
        "catrom"
    }
    fn version(&self) -> u32 {
        1
    }
    fn label(&self) -> String {
        format!("util/catrom.pl {} for {}", self.file, self.who)
    }
    fn tools(&self) -> &'static [&'static str] {
        &["perl"]
    }

    fn run(&self, ctx: &StepContext, scratch: &Path) -> Result<BTreeMap<String, Output>> {
        let util = scratch.join("util");
        // catrom.pl finds Option/ROM.pm beside itself.
        let tree = ctx.tree(super::SOURCE)?;
        ctx.link_subtree(&tree, "src/util", &util, Verify::Now)?;
        let mut cmd = tools::command("perl")?;
        cmd.arg(util.join("catrom.pl"));
        for i in 0..self.images.len() {
            cmd.arg(ctx.file(IMAGE.nth(i))?);
        }
        let mut rom = tools::capture_bytes(cmd).context("running iPXE's util/catrom.pl")?;
        if let Some(pad_to) = self
            .pad_to
            .map(|p| usize::try_from(p).unwrap_or(usize::MAX))
        {
            if rom.len() > pad_to {
                bail!(
                    "catrom.pl wrote {} bytes, more than `pad_to` {pad_to}",
                    rom.len()
                );
            }
            rom.resize(pad_to, 0);
        }
        stored(ctx, &rom)
    }
}

/// `rom` in the store, as the step's output `rom`.
fn stored(ctx: &StepContext, rom: &[u8]) -> Result<BTreeMap<String, Output>> {
    let digest = ctx.store.put_bytes(rom)?;
    let size = rom.len() as u64;
    Ok(BTreeMap::from([(
        ROM.into(),
        Output::File { digest, size },
    )]))
}
