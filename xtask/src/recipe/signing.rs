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

impl EfiKind {
    const NAMES: [(&'static str, EfiKind, &'static str); 3] = [
        ("uki", EfiKind::Uki, "[uki]"),
        ("kernel", EfiKind::Kernel, "[kernel]"),
        ("ipxe", EfiKind::Ipxe, "[ipxe]"),
    ];
}

impl std::fmt::Display for EfiKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (name, ..) = EfiKind::NAMES
            .iter()
            .find(|(_, k, _)| k == self)
            .expect("every kind is named");
        f.write_str(name)
    }
}

#[derive(Debug, Clone, Default)]
pub struct Signing {
    /// Kinds signed with Authenticode.
    pub uefi: BTreeSet<EfiKind>,
}

/// Which sections the recipe has, for "signs what it does not build" errors.
pub(super) struct Has {
    pub uki: bool,
    pub kernel: bool,
    pub ipxe: bool,
}

pub(super) fn signing(ctx: &mut Ctx, raw: Option<Spanned<RawSigning>>, has: Has) -> Signing {
    let mut out = Signing::default();
    let Some(raw) = raw else {
        return out;
    };
    for item in raw.into_inner().uefi {
        let name = item.get_ref().as_str();
        let Some(&(_, kind, section)) = EfiKind::NAMES.iter().find(|(n, ..)| *n == name) else {
            let names: Vec<&str> = EfiKind::NAMES.iter().map(|(n, ..)| *n).collect();
            let help = super::diag::unknown_name_help(name, &names, "kinds");
            ctx.push(
                item.span(),
                format!("`uefi`: unknown artifact kind `{name}`; {help}"),
            );
            continue;
        };
        let present = match kind {
            EfiKind::Uki => has.uki,
            EfiKind::Kernel => has.kernel,
            EfiKind::Ipxe => has.ipxe,
        };
        if !present {
            let message = format!("`uefi` signs `{name}`, but the recipe has no {section} section");
            ctx.push(item.span(), message);
        } else if !out.uefi.insert(kind) {
            ctx.push(item.span(), format!("`uefi` names `{name}` twice"));
        }
    }
    out
}
