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

    /// Debian's name of this architecture (`dpkg --print-architecture`,
    /// the `:arch` qualifier apt takes, the suffix of a `.deb`'s name).
    pub fn debian(self) -> &'static str {
        match self {
            Arch::X86_64 => "amd64",
            Arch::Arm64 => "arm64",
        }
    }

    /// The architecture Debian calls `name`.
    pub fn from_debian(name: &str) -> Option<Arch> {
        Arch::ALL.into_iter().find(|a| a.debian() == name)
    }

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

    /// The architecture called `name`, or the message a recipe error gives:
    /// the choices, and Kiln's name where `name` is Debian's (`amd64`).
    pub fn parse(name: &str) -> Result<Arch, String> {
        Arch::from_name(name).ok_or_else(|| {
            let hint = match Arch::from_debian(name) {
                Some(a) => format!(" (Debian's {name} is Kiln's `{a}`)"),
                None => String::new(),
            };
            format!("unknown `arch`: use one of {}{hint}", Arch::names())
        })
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

    /// The kernel's name for the first serial port of this architecture's
    /// servers and QEMU boards (`console=` takes it): the 16550 UART on
    /// x86, the PL011 on arm64.
    pub fn serial_console(self) -> &'static str {
        match self {
            Arch::X86_64 => "ttyS0",
            Arch::Arm64 => "ttyAMA0",
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

    /// The kernel's boot image: its make target and where kbuild writes it
    /// in the object tree. Both are EFI applications (the EFI stub): x86's
    /// compressed bzImage, arm64's uncompressed Image (arm64 firmware and
    /// iPXE start only an uncompressed PE).
    pub fn kernel_image(self) -> (&'static str, &'static str) {
        match self {
            Arch::X86_64 => ("bzImage", "arch/x86/boot/bzImage"),
            Arch::Arm64 => ("Image", "arch/arm64/boot/Image"),
        }
    }

    /// The build machine's architecture (what Kiln itself was compiled for).
    pub const HOST: Option<Arch> = if cfg!(target_arch = "x86_64") {
        Some(Arch::X86_64)
    } else if cfg!(target_arch = "aarch64") {
        Some(Arch::Arm64)
    } else {
        None
    };

    /// The ELF `e_machine` of this architecture's programs.
    pub fn elf_machine(self) -> u16 {
        match self {
            Arch::X86_64 => 62,
            Arch::Arm64 => 183,
        }
    }

    /// The user-mode emulator (Debian's qemu-user-static) that runs this
    /// architecture's static programs on a build machine of another: empty
    /// when the build machine runs them itself, else one program (a list,
    /// as steps name their tools).
    pub fn emulators(self) -> &'static [&'static str] {
        if Arch::HOST == Some(self) {
            return &[];
        }
        match self {
            Arch::X86_64 => &["qemu-x86_64-static"],
            Arch::Arm64 => &["qemu-aarch64-static"],
        }
    }

    /// Whether this is the architecture recipes get when they name none.
    pub fn is_default(&self) -> bool {
        *self == Arch::DEFAULT
    }

    /// "arm64", or for a machine type no variant has its number: what a
    /// program of ELF `e_machine` (or, with `pe`, PE machine) `machine` is
    /// built for, for messages.
    pub fn describe_machine(machine: u16, pe: bool) -> String {
        let of = |a: &Arch| match pe {
            true => a.pe_machine(),
            false => a.elf_machine(),
        };
        match Arch::ALL.iter().find(|a| of(a) == machine) {
            Some(a) => a.to_string(),
            None if pe => format!("PE machine {machine:#x}"),
            None => format!("ELF machine {machine}"),
        }
    }

    /// The PE/COFF machine type of this architecture's EFI applications.
    pub fn pe_machine(self) -> u16 {
        match self {
            Arch::X86_64 => 0x8664,
            Arch::Arm64 => 0xaa64,
        }
    }

    /// The UEFI removable-media boot path (UEFI 2.10, 3.5.1.1) firmware of
    /// this architecture looks for on a CD or disk.
    pub fn efi_boot_file(self) -> &'static str {
        match self {
            Arch::X86_64 => "EFI/BOOT/BOOTX64.EFI",
            Arch::Arm64 => "EFI/BOOT/BOOTAA64.EFI",
        }
    }

    /// Where Debian's systemd-boot-efi (of this architecture) puts the
    /// UKI stub.
    pub fn uki_stub(self) -> &'static str {
        match self {
            Arch::X86_64 => "usr/lib/systemd/boot/efi/linuxx64.efi.stub",
            Arch::Arm64 => "usr/lib/systemd/boot/efi/linuxaa64.efi.stub",
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
        assert_eq!(Arch::from_debian("amd64"), Some(Arch::X86_64));
        assert_eq!(Arch::from_debian(Arch::Arm64.debian()), Some(Arch::Arm64));
        assert_eq!(Arch::parse("arm64"), Ok(Arch::Arm64));
        let why = Arch::parse("amd64").unwrap_err();
        assert!(
            why.contains("use one of x86_64, arm64") && why.contains("Kiln's `x86_64`"),
            "{why}"
        );
        assert!(!Arch::parse("mips").unwrap_err().contains("Debian"));
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
    fn machines_are_described_by_name_or_number() {
        assert_eq!(Arch::describe_machine(183, false), "arm64");
        assert_eq!(Arch::describe_machine(0x8664, true), "x86_64");
        assert_eq!(Arch::describe_machine(40, false), "ELF machine 40");
        assert_eq!(Arch::describe_machine(0x1c0, true), "PE machine 0x1c0");
    }

    #[test]
    fn efi_names_follow_the_uefi_specification() {
        assert_eq!(Arch::X86_64.efi_boot_file(), "EFI/BOOT/BOOTX64.EFI");
        assert_eq!(Arch::Arm64.efi_boot_file(), "EFI/BOOT/BOOTAA64.EFI");
        assert_eq!(Arch::Arm64.pe_machine(), 0xaa64);
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
