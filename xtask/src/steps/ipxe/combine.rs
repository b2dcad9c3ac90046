//! The combined ROM step: images a patch step made (a host's or the
//! recipe's), chained into one option ROM by `archive::optrom::combine`,
//! as iPXE's `util/catrom.pl` chains make's files.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, Result};
use serde::Serialize;

use crate::archive::optrom;
use crate::steps::{Slot, Step, StepContext};
use crate::store::Output;

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
        let digest = ctx.store.put_bytes(&rom)?;
        let size = rom.len() as u64;
        Ok(BTreeMap::from([(
            ROM.into(),
            Output::File { digest, size },
        )]))
    }
}
