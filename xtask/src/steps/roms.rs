//! The ROM table step: the NIC option ROMs a ROM-update image carries,
//! checked against the cards the recipe assigns them to, and the table the
//! image's updater reads (`etc/kiln/roms.conf`), as one tree an initramfs
//! merges in.
//!
//! `roms.conf`, one ROM per line, fields separated by one space:
//! `vendor device file size sha256 version method max_size`: ids as 4
//! lowercase hex digits, `version` dotted numbers, `method` `mstflint` or
//! `flashrom:<programmer>`, `max_size` bytes or `-` (the card's expansion
//! ROM window decides). A host's table also has `etc/kiln/host`, its
//! hostname.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Result};
use serde::Serialize;

use super::{Slot, Step, StepContext};
use crate::archive::optrom;
use crate::archive::rom_version::{self, RomVersion};
use crate::store::{Digest, Output, Tree, TreeKind};

/// Where the image keeps the ROMs and their table.
pub const ROM_DIR: &str = "etc/kiln/roms";
pub const TABLE: &str = "etc/kiln/roms.conf";
pub const HOST: &str = "etc/kiln/host";

/// Inputs `rom.0` …: each ROM, a file or the package tree holding it.
pub const ROM: Slot = Slot("rom");
/// Output: the ROMs and their table.
pub const TREE: Slot = Slot("tree");

#[derive(Debug, Clone, Serialize)]
pub struct RomTable {
    #[serde(skip)]
    pub name: String,
    /// One per input `rom.<i>`.
    pub roms: Vec<RomSpec>,
    /// A host's own ROMs (its identity is in them): written to `HOST`, and
    /// the updater refuses them on a machine with another `epoxy.hostname`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub host: Option<String>,
}

#[derive(Debug, Clone, Serialize)]
pub struct RomSpec {
    pub file: String,
    pub vendor: u16,
    pub device: u16,
    /// `mstflint` or `flashrom:<programmer>`.
    pub method: String,
    pub version: Option<String>,
    pub max_size: Option<u64>,
    /// When the input is a tree (a `deb`), the ROM's path in it.
    pub path_in_tree: Option<String>,
    /// Recipe location, for errors only.
    #[serde(skip)]
    pub origin: String,
}

impl Step for RomTable {
    fn kind(&self) -> &'static str {
        "rom-table"
    }
    fn version(&self) -> u32 {
        // 2: etc/kiln/host in a host's table. 3: versions from the ROM.
        3
    }
    fn formats(&self) -> &'static [crate::archive::Format] {
        &[optrom::FORMAT, rom_version::FORMAT]
    }
    fn label(&self) -> String {
        format!("ROM table {}", self.name)
    }

    fn run(&self, ctx: &StepContext, _scratch: &Path) -> Result<BTreeMap<String, Output>> {
        let mut entries = BTreeMap::new();
        let mut table = String::from(
            "# vendor device file size sha256 version method max_size (written by Kiln)\n",
        );
        for (i, spec) in self.roms.iter().enumerate() {
            let input = ROM.nth(i);
            let bytes = match &spec.path_in_tree {
                Some(path) => ctx.tree_file(&input, path, "the package holding this ROM")?,
                None => fs_err::read(ctx.file(&input)?)?,
            };
            let line = spec.check(&bytes)?;
            table.push_str(&line);
            table.push('\n');
            entries.insert(format!("{ROM_DIR}/{}", spec.file), file(ctx, &bytes)?);
        }
        entries.insert(TABLE.to_string(), file(ctx, table.as_bytes())?);
        if let Some(host) = &self.host {
            entries.insert(HOST.to_string(), file(ctx, format!("{host}\n").as_bytes())?);
        }
        let tree = ctx.store.put_tree_manifest(&Tree::with_parents(entries))?;
        Ok(BTreeMap::from([(
            TREE.into(),
            Output::Tree { digest: tree },
        )]))
    }
}

impl RomSpec {
    /// The ROM must be a PCI option ROM for the card the recipe names and
    /// fit the flash it is declared for; returns its `roms.conf` line.
    pub fn check(&self, rom: &[u8]) -> Result<String> {
        let (vendor, device) = (self.vendor, self.device);
        let at = format!("{} ({})", self.file, self.origin);
        let id = match optrom::pci_identity(rom) {
            Ok(id) => id,
            Err(e) => bail!("{at}: not a usable PCI option ROM: {e}"),
        };
        if !id.supports(vendor, device) {
            let theirs: Vec<String> = id
                .devices
                .iter()
                .map(|d| format!("{:04x}:{d:04x}", id.vendor))
                .collect();
            bail!(
                "{at}: the ROM's PCI header is for {}, but the recipe assigns it to {vendor:04x}:{device:04x}",
                theirs.join(", ")
            );
        }
        if let Some(max) = self.max_size {
            if rom.len() as u64 > max {
                bail!("{at}: the ROM is {} bytes, more than its card's flash takes (`max_size` {max})", rom.len());
            }
        }
        let version = self.version(rom, id.revision)?;
        let max = self.max_size.map_or("-".to_string(), |m| m.to_string());
        Ok(format!(
            "{vendor:04x} {device:04x} {} {} {} {version} {} {max}",
            self.file,
            rom.len(),
            Digest::of_bytes(rom).hex(),
            self.method
        ))
    }
}

impl RomSpec {
    /// The version the updater compares: what the flashing tool will read
    /// back from the ROM once flashed -- mstflint the first PXE version
    /// block, flashrom's path the PCI revision level
    /// (`archive/rom_version.rs`) -- or the recipe's `version` where the ROM
    /// says nothing. A recipe's `version` that contradicts the ROM's block
    /// is refused: the updater would never see the card as current.
    fn version(&self, rom: &[u8], revision: u16) -> Result<String> {
        let at = format!("{} ({})", self.file, self.origin);
        if self.method != "mstflint" {
            return Ok(self
                .version
                .clone()
                .unwrap_or_else(|| RomVersion::from_revision(revision).to_string()));
        }
        let carried = rom_version::mellanox_versions(rom)
            .into_iter()
            .flatten()
            .next();
        match (carried, &self.version) {
            (Some(v), None) => Ok(v.to_string()),
            (Some(v), Some(given)) if v.to_string() != *given => bail!(
                "{at}: the ROM's Mellanox version block says {v}, but the recipe says `version = \"{given}\"`; \
                 mstflint will read {v} from the card: drop `version`, or build the ROM with rom_version = \"{given}\""
            ),
            (_, Some(given)) => Ok(given.clone()),
            (None, None) => bail!(
                "{at}: mstflint reads a ROM's version from its Mellanox version block, and this ROM has none: \
                 build it with `rom_version` in its recipe's [ipxe] section, or give the `version` it carries"
            ),
        }
    }
}

/// The cards (vendor, device) a `roms.conf` has a ROM for.
pub fn table_cards(table: &str) -> Vec<(u16, u16)> {
    let id = |s: Option<&str>| s.and_then(|s| u16::from_str_radix(s, 16).ok());
    table
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let mut fields = l.split(' ');
            Some((id(fields.next())?, id(fields.next())?))
        })
        .collect()
}

/// `bytes` stored, as a regular file of the tree.
fn file(ctx: &StepContext, bytes: &[u8]) -> Result<TreeKind> {
    Ok(TreeKind::File {
        digest: ctx.store.put_bytes(bytes)?,
        size: bytes.len() as u64,
        mode: 0o644,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn table_cards_reads_the_lines_check_writes() {
        // A one-image option ROM whose PCI data structure names 8086:10d3.
        let mut rom = vec![0u8; 512];
        rom[..2].copy_from_slice(&[0x55, 0xaa]);
        rom[0x18] = 0x40;
        rom[0x40..0x44].copy_from_slice(b"PCIR");
        rom[0x44..0x48].copy_from_slice(&[0x86, 0x80, 0xd3, 0x10]);
        rom[0x4a] = 0x18;
        let spec = RomSpec {
            file: "808610d3.rom".into(),
            vendor: 0x8086,
            device: 0x10d3,
            method: "flashrom:nicintel_spi".into(),
            version: None,
            max_size: None,
            path_in_tree: None,
            origin: "stage3.toml:1:1".into(),
        };
        let table = format!("# vendor device …\n{}\n", spec.check(&rom).unwrap());
        assert_eq!(table_cards(&table), [(0x8086, 0x10d3)]);
    }
}
