//! The signing steps: an EFI binary Kiln built, signed with the operator's key (Authenticode,
//! what UEFI Secure Boot verifies), and a detached CMS signature of any artifact (what iPXE's
//! `imgverify` checks). They run after the unsigned artifact is built and cached, over its bytes
//! only, so a signed release equals an unsigned rebuild but for its signatures
//! (`archive::authenticode::strip`; `.sig` files are beside, not inside).
//!
//! The key is not in the step key: the certificate's SHA-256 is. Signatures are deterministic
//! (`sign::pkcs7`), so the same unsigned bytes and certificate give the same signed bytes, and
//! caching the result is caching what the key would make again.

use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

use anyhow::{Context, Result};
use serde::Serialize;

use super::{Slot, Step, StepContext};
use crate::sign::SigningKey;
use crate::store::Output;

/// Input: the unsigned EFI binary (a UKI, an EFI-stub kernel, an iPXE `.efi`).
pub const UNSIGNED: Slot = Slot("unsigned");
/// Output: the same binary with its Authenticode signature.
pub const SIGNED: Slot = Slot("signed");
/// Output of `SignDetached`: the DER CMS signature.
pub const SIGNATURE: Slot = Slot("signature");
/// What a detached signature's file name adds to the signed file's.
pub const SIG_SUFFIX: &str = ".sig";

#[derive(Clone, Serialize)]
pub struct SignEfi {
    #[serde(skip)]
    pub name: String,
    /// SHA-256 of the signer's certificate: which key signs, without the key.
    pub certificate: String,
    #[serde(skip)]
    pub key: Arc<SigningKey>,
}

impl Step for SignEfi {
    fn kind(&self) -> &'static str {
        "sign-efi"
    }
    fn version(&self) -> u32 {
        1
    }
    fn label(&self) -> String {
        format!("sign {}", self.name)
    }
    fn formats(&self) -> &'static [crate::archive::Format] {
        &[crate::archive::authenticode::FORMAT]
    }
    fn batch(&self) -> Option<&'static str> {
        Some("sign")
    }

    fn run(&self, ctx: &StepContext, _scratch: &Path) -> Result<BTreeMap<String, Output>> {
        let unsigned = fs_err::read(ctx.file(UNSIGNED)?)?;
        let signed = crate::sign::pkcs7::sign_pe(&self.key, &unsigned)
            .with_context(|| format!("signing {}", self.name))?;
        let digest = ctx.store.put_bytes(&signed)?;
        let size = signed.len() as u64;
        Ok(BTreeMap::from([(
            SIGNED.into(),
            Output::File { digest, size },
        )]))
    }
}

/// A detached CMS signature (`<file>.sig`) of input `unsigned`, for iPXE's `imgverify`.
#[derive(Clone, Serialize)]
pub struct SignDetached {
    #[serde(skip)]
    pub name: String,
    /// SHA-256 of the signer's certificate.
    pub certificate: String,
    #[serde(skip)]
    pub key: Arc<SigningKey>,
}

impl Step for SignDetached {
    fn kind(&self) -> &'static str {
        "sign-cms"
    }
    fn version(&self) -> u32 {
        1
    }
    fn label(&self) -> String {
        format!("sign {}{SIG_SUFFIX}", self.name)
    }
    fn batch(&self) -> Option<&'static str> {
        Some("sign")
    }

    fn run(&self, ctx: &StepContext, _scratch: &Path) -> Result<BTreeMap<String, Output>> {
        let data = fs_err::read(ctx.file(UNSIGNED)?)?;
        let signature = crate::sign::pkcs7::sign_detached(&self.key, &data)
            .with_context(|| format!("signing {}", self.name))?;
        let digest = ctx.store.put_bytes(&signature)?;
        let size = signature.len() as u64;
        Ok(BTreeMap::from([(
            SIGNATURE.into(),
            Output::File { digest, size },
        )]))
    }
}
