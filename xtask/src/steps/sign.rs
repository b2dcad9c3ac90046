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

/// Input: the unsigned file (for Authenticode an EFI binary: a UKI, an EFI-stub kernel, an
/// iPXE `.efi`).
pub const UNSIGNED: Slot = Slot("unsigned");
/// Output: the same binary with its Authenticode signature.
pub const SIGNED: Slot = Slot("signed");
/// Output of a detached signature: the DER CMS.
pub const SIGNATURE: Slot = Slot("signature");
/// What a detached signature's file name adds to the signed file's.
pub const SIG_SUFFIX: &str = ".sig";

/// What a [`Sign`] step makes.
#[derive(Clone, Copy, Debug)]
pub enum Form {
    /// The EFI binary with its Authenticode signature (output `signed`).
    Authenticode,
    /// A detached CMS signature of any file (output `signature`).
    Detached,
}

impl Form {
    /// The output the step writes.
    pub fn output(self) -> Slot {
        match self {
            Form::Authenticode => SIGNED,
            Form::Detached => SIGNATURE,
        }
    }
}

/// Signs input `unsigned` with the operator's key, in `form`.
#[derive(Clone, Serialize)]
pub struct Sign {
    #[serde(skip)]
    pub name: String,
    /// SHA-256 of the signer's certificate: which key signs, without the key.
    pub certificate: String,
    /// Told apart by `kind()`, which the step key holds.
    #[serde(skip)]
    pub form: Form,
    #[serde(skip)]
    pub key: Arc<SigningKey>,
}

impl Step for Sign {
    fn kind(&self) -> &'static str {
        match self.form {
            Form::Authenticode => "sign-efi",
            Form::Detached => "sign-cms",
        }
    }
    fn version(&self) -> u32 {
        1
    }
    fn label(&self) -> String {
        match self.form {
            Form::Authenticode => format!("sign {}", self.name),
            Form::Detached => format!("sign {}{SIG_SUFFIX}", self.name),
        }
    }
    fn formats(&self) -> &'static [crate::archive::Format] {
        match self.form {
            Form::Authenticode => &[crate::archive::authenticode::FORMAT],
            Form::Detached => &[],
        }
    }
    fn batch(&self) -> Option<&'static str> {
        Some("sign")
    }

    fn run(&self, ctx: &StepContext, _scratch: &Path) -> Result<BTreeMap<String, Output>> {
        let unsigned = fs_err::read(ctx.file(UNSIGNED)?)?;
        let made = match self.form {
            Form::Authenticode => crate::sign::pkcs7::sign_pe(&self.key, &unsigned),
            Form::Detached => crate::sign::pkcs7::sign_detached(&self.key, &unsigned),
        };
        let made = made.with_context(|| format!("signing {}", self.name))?;
        let digest = ctx.store.put_bytes(&made)?;
        let size = made.len() as u64;
        Ok(BTreeMap::from([(
            self.form.output().into(),
            Output::File { digest, size },
        )]))
    }
}
