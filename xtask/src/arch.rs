//! The architectures Kiln builds for, as a type: a recipe names one as
//! text once, `recipe` parses it, and from then on a misspelt architecture
//! is a compile error instead of a step that matches nothing. What differs
//! per architecture (iPXE's platforms, the cross compiler, the kernel's
//! `ARCH=`) is a method here, so adding one is adding a variant and letting
//! the compiler list every `match` to extend.
//!
//! A leaf: it uses no other module of the crate.

use serde::{Deserialize, Serialize};

/// One architecture. Keys and manifests carry it by its name (`x86_64`,
/// `arm64`), exactly as they carried the string before it was a type.
///
/// Declared in name order, so that maps keyed by `Arch` iterate as they did
/// when keyed by the name.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    PartialOrd,
    Ord,
    Hash,
    Serialize,
    Deserialize,
    clap::ValueEnum,
)]
pub enum Arch {
    #[serde(rename = "arm64")]
    #[value(name = "arm64")]
    Arm64,
    #[serde(rename = "x86_64")]
    #[value(name = "x86_64")]
    X86_64,
}

impl Arch {
    /// Every architecture, the default first (the order messages list them).
    pub const ALL: [Arch; 2] = [Arch::X86_64, Arch::Arm64];

    /// The architecture of a recipe or host that names none.
    pub const DEFAULT: Arch = Arch::X86_64;

    /// The name recipes, keys, paths and manifests use.
    pub fn name(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The architecture called `name`, if it is one.
    pub fn from_name(name: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.name() == name)
    }

    /// `x86_64, arm64`: the names, for messages that list the choices.
    pub fn names() -> String {
        Arch::ALL.map(Arch::name).join(", ")
    }

    /// iPXE's build directories (`bin-<arch>-<platform>`) for this
    /// architecture; `bin` is iPXE's legacy BIOS directory.
    pub fn ipxe_platforms(self) -> &'static [&'static str] {
        match self {
            Arch::X86_64 => &["bin", "bin-x86_64-pcbios", "bin-x86_64-efi"],
            Arch::Arm64 => &["bin-arm64-efi"],
        }
    }

    /// The QEMU that runs this architecture's guests, and the machine
    /// arguments it needs (arm64: the `virt` board with every CPU feature).
    pub fn qemu(self) -> (&'static str, &'static [&'static str]) {
        match self {
            Arch::X86_64 => ("qemu-system-x86_64", &[]),
            Arch::Arm64 => ("qemu-system-aarch64", &["-M", "virt", "-cpu", "max"]),
        }
    }

    /// The cross compiler prefix on an x86_64 build host (`None`: the
    /// host's own compiler).
    pub fn cross_prefix(self) -> Option<&'static str> {
        match self {
            Arch::X86_64 => None,
            Arch::Arm64 => Some("aarch64-linux-gnu-"),
        }
    }

    /// The kernel's `ARCH=` for this architecture.
    pub fn kernel_arch(self) -> &'static str {
        match self {
            Arch::X86_64 => "x86_64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The architecture whose iPXE platform is `platform`.
    pub fn of_ipxe_platform(platform: &str) -> Option<Arch> {
        Arch::ALL
            .into_iter()
            .find(|a| a.ipxe_platforms().contains(&platform))
    }
}

impl std::fmt::Display for Arch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_see_the_same_names_as_before_arch_was_a_type() {
        for arch in Arch::ALL {
            assert_eq!(
                serde_json::to_value(arch).unwrap(),
                serde_json::Value::String(arch.name().to_string())
            );
            assert_eq!(Arch::from_name(arch.name()), Some(arch));
            assert_eq!(arch.to_string(), arch.name());
        }
        assert_eq!(Arch::from_name("aarch64"), None);
    }

    #[test]
    fn maps_keyed_by_arch_iterate_in_name_order() {
        let mut by_type = Arch::ALL.to_vec();
        by_type.sort();
        let mut by_name = Arch::ALL.map(Arch::name).to_vec();
        by_name.sort();
        assert_eq!(
            by_type.iter().map(|a| a.name()).collect::<Vec<_>>(),
            by_name
        );
    }

    #[test]
    fn every_platform_belongs_to_one_architecture() {
        for arch in Arch::ALL {
            for platform in arch.ipxe_platforms() {
                assert_eq!(Arch::of_ipxe_platform(platform), Some(arch));
            }
        }
        assert_eq!(Arch::of_ipxe_platform("bin-i386-efi"), None);
    }
}
