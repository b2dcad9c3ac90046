//! The TOML shape of recipe files, exactly as written. `deny_unknown_fields`
//! everywhere; spans kept on the values that later validation may reject.
//! Nothing outside `recipe` sees these types: `model` turns them into the
//! validated form.

use std::collections::BTreeMap;

use serde::Deserialize;
use toml::Spanned;

/// `recipes/sources.toml`: one table per pinned source, and `[mirrors]`.
#[derive(Debug)]
pub struct SourcesFile {
    pub mirrors: Option<Spanned<RawMirrors>>,
    pub sources: BTreeMap<String, Spanned<RawSource>>,
}

/// Every table is a source but `[mirrors]`. Written out because serde's
/// `flatten` buffers values and so loses the spans `Spanned` keeps.
impl<'de> Deserialize<'de> for SourcesFile {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct Tables;
        impl<'de> serde::de::Visitor<'de> for Tables {
            type Value = SourcesFile;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a table per source, and [mirrors]")
            }
            fn visit_map<A: serde::de::MapAccess<'de>>(
                self,
                mut map: A,
            ) -> Result<SourcesFile, A::Error> {
                let mut file = SourcesFile {
                    mirrors: None,
                    sources: BTreeMap::new(),
                };
                while let Some(name) = map.next_key::<String>()? {
                    if name == "mirrors" {
                        file.mirrors = Some(map.next_value()?);
                    } else {
                        let source = map.next_value()?;
                        file.sources.insert(name, source);
                    }
                }
                Ok(file)
            }
        }
        d.deserialize_map(Tables)
    }
}

/// `[mirrors]`: where to fetch what apt no longer offers.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawMirrors {
    /// Base URLs of Debian archives (http, https or file) under which a
    /// `deb` source's `pool` path is found.
    #[serde(default)]
    pub deb: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSource {
    /// Download URL (needs `sha256`).
    pub url: Option<Spanned<String>>,
    /// A local file or tree, relative to sources.toml; hashed by content.
    pub path: Option<Spanned<String>>,
    /// Debian binary package name, fetched with `apt-get download`.
    pub deb: Option<Spanned<String>>,
    /// With `deb`: the architecture of the package (`x86_64`, `arm64`);
    /// without it, the build machine's own (apt's default).
    pub arch: Option<Spanned<String>>,
    /// Debian package version (with `deb`).
    pub version: Option<Spanned<String>>,
    /// Expected sha256 of the downloaded file (with `url` and `deb`).
    pub sha256: Option<Spanned<String>>,
    /// With `deb`: the package's path in a Debian archive
    /// (`pool/main/b/busybox/…_amd64.deb`), for fetching that exact version
    /// from a `[mirrors]` base once apt no longer offers it.
    pub pool: Option<Spanned<String>>,
    /// With `url` instead of `sha256`: the digest of the unpacked tree
    /// (`cargo xtask sources digest DIR`), for archives a server may
    /// regenerate with other bytes (GitHub's commit archives).
    pub tree_sha256: Option<Spanned<String>>,
}

/// `recipes/<target>.toml`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRecipe {
    pub description: Option<String>,
    /// Seconds since 1970 used for every timestamp; `SOURCE_DATE_EPOCH` overrides.
    pub epoch: Spanned<i64>,
    /// The architecture of the recipe's initramfs, kernel, modules and boot
    /// media: `x86_64` (when absent) or `arm64`. iPXE targets name theirs.
    pub arch: Option<Spanned<String>>,
    #[serde(default)]
    pub variables: BTreeMap<String, Spanned<RawVariable>>,
    pub initramfs: Option<Spanned<RawInitramfs>>,
    pub modules: Option<Spanned<RawModules>>,
    pub kernel: Option<Spanned<RawKernel>>,
    /// Kernel arguments baked into every boot medium of this recipe (the
    /// ISO's isolinux entry, the UKI's `.cmdline`, `stage1to2.ipxe`).
    pub cmdline: Option<Spanned<String>>,
    pub uki: Option<Spanned<RawUki>>,
    pub iso: Option<Spanned<RawIso>>,
    pub hosts: Option<Spanned<RawHosts>>,
    pub script: Option<Spanned<RawScript>>,
    pub ipxe: Option<Spanned<RawIpxe>>,
    /// NIC ROMs the image's updater may flash (stage3), one per card model.
    #[serde(default)]
    pub rom: Vec<Spanned<RawRom>>,
    /// Which artifacts are signed when a signing key is given.
    pub signing: Option<Spanned<RawSigning>>,
}

/// `[signing]`: what is signed (the key says with what, and comes from the command line or
/// the environment, never from a recipe).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawSigning {
    /// Artifact kinds signed with Authenticode for UEFI Secure Boot: "uki", "kernel", "ipxe".
    #[serde(default)]
    pub uefi: Vec<Spanned<String>>,
    /// Artifact kinds that take part in iPXE's code signing: "kernel", "initramfs", "modules",
    /// "uki", "script" get a detached `<file>.sig`; "ipxe" builds iPXE to trust and check them.
    #[serde(default)]
    pub imgverify: Vec<Spanned<String>>,
}

/// `[[rom]]`: a NIC option ROM carried by a ROM-update image, and how to
/// flash it.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRom {
    /// An artifact of another recipe, e.g. "stage1/x86_64/808610d3.rom".
    pub artifact: Option<Spanned<String>>,
    /// Or a file inside a `deb` source (with `path`).
    pub source: Option<Spanned<String>>,
    /// The file's path inside `source`.
    pub path: Option<Spanned<String>>,
    /// The cards it is for: "vendor:device" in hex, e.g. "8086:10d3".
    pub device: Spanned<String>,
    /// "mstflint" (Mellanox) or "flashrom".
    pub method: Spanned<String>,
    /// flashrom's programmer for the card (with `method = "flashrom"`),
    /// e.g. "nicintel_spi"; `:pci=<address>` is added per card.
    pub programmer: Option<Spanned<String>>,
    /// The ROM's version as the flashing tool reports it (dotted numbers);
    /// default: what the ROM carries (its Mellanox version block with
    /// mstflint, its PCI revision level with flashrom).
    pub version: Option<Spanned<String>>,
    /// The largest image the card's flash takes, in bytes; default: the
    /// size of the card's expansion ROM window.
    pub max_size: Option<Spanned<i64>>,
}

/// `[ipxe]`: iPXE binaries and NIC ROMs built from upstream source with an
/// embedded script.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIpxe {
    /// A source holding the iPXE tree (with `src/Makefile`).
    pub source: Spanned<String>,
    /// The embedded script's template, relative to the recipe.
    pub script: Spanned<String>,
    /// A directory of `config/local/*.h` overrides, relative to the recipe.
    pub config: Option<Spanned<String>>,
    /// A directory of patches applied in file-name order (`patch -p1`).
    pub patches: Option<Spanned<String>>,
    /// CA certificates (PEM) iPXE trusts (`TRUST=`), relative to the recipe.
    #[serde(default)]
    pub trust: Vec<Spanned<String>>,
    /// Certificates embedded for chain building (`CERT=`).
    #[serde(default)]
    pub certs: Vec<Spanned<String>>,
    /// Bytes reserved for the embedded script; every script (the recipe's
    /// and each host's) is padded to it, so one compile serves them all.
    pub script_size: Option<Spanned<i64>>,
    /// A host inventory (relative to the recipe): each host gets its own
    /// files, `stage1/hosts/<hostname>/<file>`, with its identity in the script.
    pub hosts: Option<Spanned<String>>,
    /// The version NIC ROMs carry (`"3.4.800"`): Mellanox's version block,
    /// which `mstflint qrom` reads, and every ROM's PCI revision level.
    pub rom_version: Option<Spanned<String>>,
    /// Option ROMs chaining several of the targets' images into one.
    #[serde(default)]
    pub combined: Vec<Spanned<RawCombined>>,
    /// Where hosts' files go, per file, instead of `<recipe>/hosts/<hostname>/`.
    #[serde(default)]
    pub layout: Vec<Spanned<RawLayout>>,
    /// Per architecture (`x86_64`, `arm64`), the make targets to build, e.g.
    /// `bin/ipxe.lkrn`, `bin-x86_64-efi/ipxe.efi`, `bin/1af41000.rom`.
    pub targets: BTreeMap<String, Spanned<Vec<Spanned<String>>>>,
}

/// `[[ipxe.combined]]`: one option ROM holding several images (a legacy
/// BIOS image, then EFI drivers), chained as iPXE's `util/catrom.pl` does.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawCombined {
    /// The output file, `<recipe>/<arch>/<file>` (e.g. "efi-virtio.rom").
    pub file: Spanned<String>,
    /// Make targets of `[ipxe.targets]`, in ROM order (legacy image first).
    pub images: Spanned<Vec<Spanned<String>>>,
    /// Pad the ROM with zeros to this many bytes (a power of two).
    pub pad_to: Option<Spanned<i64>>,
    /// Refuse a ROM larger than this (the card's flash), in bytes.
    pub max_size: Option<Spanned<i64>>,
}

/// `[[ipxe.layout]]`: where each host's copy of one file goes.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawLayout {
    /// The file (`15b31003.mrom`, `efi-virtio.rom`).
    pub file: Spanned<String>,
    /// A template of the path under the output directory, e.g.
    /// "stage1_mlxrom/{{rom_version}}/{{model}}/{{hostname}}.mrom".
    pub path: Spanned<String>,
    /// `{{model}}` in `path` (default: the file's stem).
    pub model: Option<Spanned<String>>,
}

/// `[uki]`: the kernel, initramfs and cmdline in one EFI application.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawUki {
    /// Path of the `.efi` under the output directory.
    pub output: Spanned<String>,
    /// A `deb` source holding systemd's EFI stub for the recipe's `arch`
    /// (`usr/lib/systemd/boot/efi/linuxx64.efi.stub`, `linuxaa64.efi.stub`).
    pub stub: Spanned<String>,
}

/// `[iso]`: a hybrid ISO (CD and USB disk; BIOS via isolinux, UEFI via
/// the UKI in an El Torito EFI image).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawIso {
    pub output: Spanned<String>,
    /// A `deb` source holding `usr/lib/ISOLINUX/{isolinux.bin,isohdpfx.bin}`
    /// (x86_64: the BIOS path; arm64 ISOs boot UEFI only and take none).
    pub isolinux: Option<Spanned<String>>,
    /// A `deb` source holding `usr/lib/syslinux/modules/bios/ldlinux.c32`
    /// (with `isolinux`).
    pub syslinux: Option<Spanned<String>>,
    /// ISO 9660 volume id: up to 32 of A-Z, 0-9 and `_`.
    pub volume_id: Option<Spanned<String>>,
}

/// `[hosts]`: one ISO per host of an inventory, with per-host kernel
/// arguments appended to `cmdline`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHosts {
    /// The inventory file, relative to the recipe.
    pub inventory: Spanned<String>,
    /// Appended to `cmdline` for each host; `{{hostname}}`, `{{ipv4_address}}`…
    pub cmdline: Spanned<String>,
}

/// `[script]`: a text file rendered from a template (stage1to2.ipxe).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawScript {
    pub output: Spanned<String>,
    /// The template, relative to the recipe.
    pub template: Spanned<String>,
}

/// An inventory file (`recipes/hosts.toml`): `[[host]]` tables.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInventory {
    #[serde(default)]
    pub host: Vec<Spanned<RawHost>>,
}

/// One host as written. CSV and JSON inventories fill the same struct
/// (`hosts::Slot`), so every format goes through one validator.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawHost {
    pub hostname: Option<Spanned<String>>,
    /// `address/prefix`, e.g. "192.0.2.10/26".
    pub ipv4: Option<Spanned<String>>,
    pub gateway: Option<Spanned<String>>,
    pub dns: Option<Vec<Spanned<String>>>,
    /// `address/prefix`, e.g. "2001:db8::10/64".
    pub ipv6: Option<Spanned<String>>,
    pub ipv6_gateway: Option<Spanned<String>>,
    /// NIC ROM file names, e.g. "808610d3.rom"; absent is not the same as `[]`.
    pub roms: Option<Vec<Spanned<String>>>,
    /// `x86_64` (when absent) or `arm64`.
    pub arch: Option<Spanned<String>>,
    /// The MAC addresses of the machine's NICs, e.g. ["52:54:00:12:34:56"]: how a boot
    /// server knows which host asks.
    pub mac: Option<Vec<Spanned<String>>>,
    /// The host's own template variables, e.g. { project = "mlab-oti" } (CSV: a column
    /// `vars.project`).
    pub vars: Option<BTreeMap<String, Spanned<String>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawKernel {
    /// Path of the bzImage under the output directory.
    pub output: Spanned<String>,
    /// A source holding the kernel tree: a linux-source-* `deb`, a `url`
    /// tarball, or a `path` (tarball or unpacked tree).
    pub source: Spanned<String>,
    /// The recipe's `arch` (the default), said again.
    pub arch: Option<Spanned<String>>,
    /// `tinyconfig`, `defconfig` or `allnoconfig` (or give `config`).
    pub base: Option<Spanned<String>>,
    /// A full config file, relative to the recipe (instead of `base`).
    pub config: Option<Spanned<String>>,
    /// Config fragments, relative to the recipe, merged in order.
    #[serde(default)]
    pub fragments: Vec<Spanned<String>>,
    /// Compile the recipe's initramfs into the kernel (default: when the
    /// recipe has one).
    pub embed_initramfs: Option<Spanned<bool>>,
    /// Modules (names, aliases, globs as in `[modules] wanted`) to pack
    /// from the ones this kernel builds (`=m`) into `modules.cpio.gz`
    /// beside the kernel.
    #[serde(default)]
    pub modules: Vec<Spanned<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawModules {
    /// A `deb` source holding `lib/modules/<kernel_release>/` (linux-image-*).
    pub kernel: Spanned<String>,
    /// The directory under lib/modules/, e.g. "6.1.0-50-amd64".
    pub kernel_release: Spanned<String>,
    /// Module names, modaliases (contain `:`) or path globs (contain `/`).
    pub wanted: Vec<Spanned<String>>,
    /// modprobe.d files (relative to the recipe) consulted for softdep,
    /// alias and blacklist lines.
    #[serde(default)]
    pub modprobe_d: Vec<Spanned<String>>,
    /// `deb` sources holding lib/firmware/ (firmware-* packages).
    #[serde(default)]
    pub firmware: Vec<Spanned<String>>,
    /// Archives to write: "gz" and/or "zst".
    #[serde(default = "default_module_compressions")]
    pub compressions: Vec<Spanned<String>>,
}

fn default_module_compressions() -> Vec<Spanned<String>> {
    vec![Spanned::new(0..0, "gz".to_string())]
}

#[derive(Debug, Deserialize)]
#[serde(untagged)]
pub enum RawVariable {
    Value(String),
    Declared(RawVariableDecl),
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawVariableDecl {
    /// For people reading the recipe; Kiln does not use it.
    #[allow(dead_code)]
    pub description: Option<String>,
    pub default: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawInitramfs {
    /// Path under the output directory.
    pub output: Spanned<String>,
    #[serde(default = "default_compression")]
    pub compression: Spanned<String>,
    /// Compression level; each compressor's default when absent.
    pub level: Option<Spanned<i32>>,
    /// Directories (relative to the recipe file) merged in order; later wins.
    #[serde(default)]
    pub overlays: Vec<Spanned<String>>,
    /// Overlay files (paths inside the image) rendered with `{{variables}}`.
    #[serde(default)]
    pub templates: Vec<Spanned<String>>,
    /// A `deb` source providing `bin/busybox`; its applets are linked.
    pub busybox: Option<Spanned<String>>,
    #[serde(default)]
    pub devices: Vec<Spanned<RawDevice>>,
    /// `deb` sources holding `programs` and the libraries they load.
    #[serde(default)]
    pub packages: Vec<Spanned<String>>,
    /// ELF programs (paths inside `packages`, e.g. "usr/bin/mstflint")
    /// copied in with their shared-library closure and dynamic loader.
    #[serde(default)]
    pub programs: Vec<Spanned<String>>,
    /// Single files from sources (a static binary from a release), each
    /// at a path and mode.
    #[serde(default)]
    pub files: Vec<Spanned<RawImageFile>>,
    #[serde(default)]
    pub uid: u32,
    #[serde(default)]
    pub gid: u32,
}

fn default_compression() -> Spanned<String> {
    Spanned::new(0..0, "gz".to_string())
}

/// `[[initramfs.files]]`: one file of a source, placed in the image.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawImageFile {
    /// A source: a `url` file (pinned by `sha256`), a `url` or `path`
    /// tarball or tree, or a `deb` (with `member`).
    pub source: Spanned<String>,
    /// The file's path inside a tarball, tree or package (a single-file
    /// source has none).
    pub member: Option<Spanned<String>>,
    /// Where it goes in the image, e.g. "usr/bin/agent".
    pub path: Spanned<String>,
    /// Octal permission bits, e.g. "0755".
    pub mode: Spanned<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawDevice {
    pub path: Spanned<String>,
    #[serde(rename = "type")]
    pub kind: Spanned<String>,
    #[serde(default)]
    pub major: u32,
    #[serde(default)]
    pub minor: u32,
    /// Octal permission bits as a string, e.g. "0600".
    pub mode: Spanned<String>,
}
