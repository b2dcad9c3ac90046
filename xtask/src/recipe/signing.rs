//! `[signing]`: which of a recipe's artifacts are signed when the operator gives a key
//! (`--sign-key`/`--sign-cert`). A recipe says what is signed; the key says with what, and never
//! comes from a recipe.

use std::collections::BTreeSet;

use toml::Spanned;

use super::schema::RawSigning;
use super::Ctx;

/// An artifact kind a recipe may have signed for UEFI Secure Boot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum EfiKind {
    /// The UKI, the recipe's and every host's (the ISO's ESP then carries the signed one).
    Uki,
    /// The kernel (an EFI-stub bzImage or arm64 `Image`).
    Kernel,
    /// Every EFI file of the recipe's iPXE targets (`.efi`), the recipe's and every host's.
    Ipxe,
}

/// An artifact kind that takes part in iPXE's own code signing (`imgverify`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum VerifyKind {
    /// The recipe's kernel, initramfs, module archive, UKI or chain script: each gets a detached
    /// CMS signature `<file>.sig` beside it, which iPXE checks after downloading the file.
    Kernel,
    Initramfs,
    Modules,
    Uki,
    Script,
    /// The verifier: every iPXE file is built to trust only the operator's CA (`TRUST=`) and
    /// its script (`{{imgverify}}` set) to refuse what that CA did not sign.
    Ipxe,
}

impl VerifyKind {
    /// The manifest kind of the artifacts that get a `.sig` (none for the verifier).
    pub fn artifact_kind(self) -> Option<&'static str> {
        match self {
            VerifyKind::Kernel => Some("kernel"),
            VerifyKind::Initramfs => Some("initramfs"),
            VerifyKind::Modules => Some("modules"),
            VerifyKind::Uki => Some("uki"),
            VerifyKind::Script => Some("script"),
            VerifyKind::Ipxe => None,
        }
    }
}

/// Names, kinds and the section each needs, per list.
type Names<K> = [(&'static str, K, &'static str)];

const EFI_NAMES: &Names<EfiKind> = &[
    ("uki", EfiKind::Uki, "[uki]"),
    ("kernel", EfiKind::Kernel, "[kernel]"),
    ("ipxe", EfiKind::Ipxe, "[ipxe]"),
];

const VERIFY_NAMES: &Names<VerifyKind> = &[
    ("kernel", VerifyKind::Kernel, "[kernel]"),
    ("initramfs", VerifyKind::Initramfs, "[initramfs]"),
    (
        "modules",
        VerifyKind::Modules,
        "[modules] (or [kernel] modules)",
    ),
    ("uki", VerifyKind::Uki, "[uki]"),
    ("script", VerifyKind::Script, "[script]"),
    ("ipxe", VerifyKind::Ipxe, "[ipxe]"),
];

fn name_of<K: PartialEq>(names: &Names<K>, kind: &K) -> &'static str {
    names
        .iter()
        .find(|(_, k, _)| k == kind)
        .map(|(n, ..)| *n)
        .expect("every kind is named")
}

impl std::fmt::Display for EfiKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(name_of(EFI_NAMES, self))
    }
}

impl std::fmt::Display for VerifyKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(name_of(VERIFY_NAMES, self))
    }
}

#[derive(Debug, Clone, Default)]
pub struct Signing {
    /// Kinds signed with Authenticode.
    pub uefi: BTreeSet<EfiKind>,
    /// Kinds that take part in iPXE's `imgverify`.
    pub imgverify: BTreeSet<VerifyKind>,
}

impl Signing {
    /// Whether this recipe's iPXE verifies what it chains (with a key given).
    pub fn ipxe_verifies(&self) -> bool {
        self.imgverify.contains(&VerifyKind::Ipxe)
    }

    /// The manifest kinds of the artifacts that get a detached `.sig`.
    pub fn detached_kinds(&self) -> Vec<&'static str> {
        self.imgverify
            .iter()
            .filter_map(|k| k.artifact_kind())
            .collect()
    }
}

/// Which sections the recipe has, for "signs what it does not build" errors.
pub(super) struct Has {
    pub uki: bool,
    pub kernel: bool,
    pub ipxe: bool,
    pub initramfs: bool,
    pub modules: bool,
    pub script: bool,
}

pub(super) fn signing(ctx: &mut Ctx, raw: Option<Spanned<RawSigning>>, has: &Has) -> Signing {
    let Some(raw) = raw else {
        return Signing::default();
    };
    let raw = raw.into_inner();
    let efi_present = |k: &EfiKind| match k {
        EfiKind::Uki => has.uki,
        EfiKind::Kernel => has.kernel,
        EfiKind::Ipxe => has.ipxe,
    };
    let verify_present = |k: &VerifyKind| match k {
        VerifyKind::Kernel => has.kernel,
        VerifyKind::Initramfs => has.initramfs,
        VerifyKind::Modules => has.modules,
        VerifyKind::Uki => has.uki,
        VerifyKind::Script => has.script,
        VerifyKind::Ipxe => has.ipxe,
    };
    Signing {
        uefi: kinds(ctx, "uefi", raw.uefi, EFI_NAMES, efi_present),
        imgverify: kinds(
            ctx,
            "imgverify",
            raw.imgverify,
            VERIFY_NAMES,
            verify_present,
        ),
    }
}

/// The kinds a list names: each known, of a section the recipe has, and named once.
fn kinds<K: Copy + Ord>(
    ctx: &mut Ctx,
    field: &str,
    items: Vec<Spanned<String>>,
    names: &Names<K>,
    present: impl Fn(&K) -> bool,
) -> BTreeSet<K> {
    let mut out = BTreeSet::new();
    for item in items {
        let name = item.get_ref().as_str();
        let Some(&(_, kind, section)) = names.iter().find(|(n, ..)| *n == name) else {
            let known: Vec<&str> = names.iter().map(|(n, ..)| *n).collect();
            let help = super::diag::unknown_name_help(name, &known, "kinds");
            ctx.push(
                item.span(),
                format!("`{field}`: unknown artifact kind `{name}`; {help}"),
            );
            continue;
        };
        if !present(&kind) {
            let message =
                format!("`{field}` signs `{name}`, but the recipe has no {section} section");
            ctx.push(item.span(), message);
        } else if !out.insert(kind) {
            ctx.push(item.span(), format!("`{field}` names `{name}` twice"));
        }
    }
    out
}
