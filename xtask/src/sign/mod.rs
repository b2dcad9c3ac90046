//! Signing finished artifacts with the operator's key: Authenticode for EFI binaries (what UEFI
//! Secure Boot verifies).
//!
//! Keys come from where operators keep them, never from recipes: a PEM file (PKCS#8, encrypted
//! or not, or PKCS#1), with its passphrase from the environment or a file, or a PKCS#11 token
//! (an HSM) named by a `pkcs11:` URI, the passphrase being its PIN. The certificate says
//! who signs; its SHA-256 fingerprint is all of it that reaches a step key or the manifest.
//! Neither the key nor the passphrase is ever written, logged or put in a key: [`SigningKey`]'s
//! `Debug` shows the certificate only.
//!
//! The PKCS#7 is built here rather than by `sbsign`/`openssl cms`, for three reasons: the
//! signature is deterministic (RSA PKCS#1 v1.5, no signing time), so a signed artifact is
//! cached and reproducible like any other; the key and passphrase never appear on a command
//! line or in a temporary file; and signing a fleet's files is a function call per file, not a
//! process. `sbverify` and the firmware itself check the result in the tests.

mod key;
mod pkcs11;
pub mod pkcs7;

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use der::{Decode, DecodePem, Encode};
use sha2::Digest as _;
use x509_cert::Certificate;

pub use key::Passphrase;

/// Where the operator's key and certificate are, as given on the command line or in the
/// environment.
#[derive(Debug, Clone)]
pub struct KeySpec {
    pub key: PathBuf,
    pub cert: PathBuf,
    pub passphrase: Option<Passphrase>,
}

/// The operator's private key with the certificate (and chain) that vouches for it, checked
/// to belong together and to be valid now.
pub struct SigningKey {
    key: key::PrivateKey,
    /// The signer's certificate, then any intermediates from the same PEM file.
    chain: Vec<Certificate>,
    fingerprint: String,
    cert_path: PathBuf,
}

impl std::fmt::Debug for SigningKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SigningKey")
            .field("cert", &self.cert_path)
            .field("sha256", &self.fingerprint)
            .finish_non_exhaustive()
    }
}

impl SigningKey {
    /// Loads and checks the key and certificate: the certificate parses and is valid now (the
    /// clock is read for this check only; it reaches no artifact), the key decrypts and is the
    /// certificate's, and it is an RSA key (what UEFI firmware and iPXE verify).
    pub fn load(spec: &KeySpec) -> Result<SigningKey> {
        let chain = read_certificates(&spec.cert)?;
        let cert = &chain[0];
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs());
        check_validity(cert, &spec.cert, now)?;
        let key = key::PrivateKey::load(&spec.key, spec.passphrase.as_ref())?;
        let spki = cert.tbs_certificate().subject_public_key_info();
        if spki.algorithm.oid != const_oid::db::rfc5912::RSA_ENCRYPTION {
            bail!(
                "{}: the certificate's key is not RSA ({}); UEFI firmware and iPXE verify RSA signatures",
                spec.cert.display(),
                spki.algorithm.oid
            );
        }
        if key.public_key_der() != spki.subject_public_key.raw_bytes() {
            bail!(
                "the key {} does not belong to the certificate {} (their public keys differ)",
                spec.key.display(),
                spec.cert.display()
            );
        }
        let der = cert.to_der().context("encoding the certificate")?;
        Ok(SigningKey {
            key,
            chain,
            fingerprint: hex::encode(sha2::Sha256::digest(&der)),
            cert_path: spec.cert.clone(),
        })
    }

    /// The SHA-256 of the signer's certificate (DER), which names the key in step keys and the
    /// manifest.
    pub fn fingerprint(&self) -> &str {
        &self.fingerprint
    }

    /// Checks that the certificate may sign what iPXE's `imgverify` checks: iPXE refuses a
    /// signer without the digitalSignature key usage or the codeSigning extended key usage
    /// (`crypto/cms.c`), so a build that would publish such signatures fails before it starts.
    pub fn check_code_signing(&self) -> Result<()> {
        use const_oid::db::rfc5280::{ID_CE_EXT_KEY_USAGE, ID_CE_KEY_USAGE, ID_KP_CODE_SIGNING};
        use x509_cert::ext::pkix::{ExtendedKeyUsage, KeyUsage};
        let extension = |oid| {
            let extensions = self.cert().tbs_certificate().extensions();
            extensions
                .into_iter()
                .flatten()
                .find(|e| e.extn_id == oid)
                .map(|e| e.extn_value.as_bytes().to_vec())
        };
        let signs = extension(ID_CE_KEY_USAGE)
            .and_then(|der| KeyUsage::from_der(&der).ok())
            .is_some_and(|u| u.digital_signature());
        let code = extension(ID_CE_EXT_KEY_USAGE)
            .and_then(|der| ExtendedKeyUsage::from_der(&der).ok())
            .is_some_and(|u| u.0.contains(&ID_KP_CODE_SIGNING));
        let missing = match (signs, code) {
            (true, true) => return Ok(()),
            (false, true) => "the digitalSignature key usage",
            (true, false) => "the codeSigning extended key usage",
            (false, false) => {
                "the digitalSignature key usage and the codeSigning extended key usage"
            }
        };
        bail!(
            "{}: the certificate lacks {missing}, which iPXE's imgverify requires of a signer ([signing] imgverify); use a code-signing certificate (openssl: keyUsage = digitalSignature, extendedKeyUsage = codeSigning)",
            self.cert_path.display()
        )
    }

    /// The certificate iPXE is built to trust (`TRUST=`) when it verifies what this key signs:
    /// the last of the `--sign-cert` file (the root of the chain given, or the signer's own if
    /// the file holds one), as PEM.
    pub fn trust_anchor_pem(&self) -> Result<String> {
        use der::EncodePem;
        let root = self
            .chain
            .last()
            .expect("a chain holds the signer's certificate");
        root.to_pem(der::pem::LineEnding::LF)
            .context("encoding the trusted certificate")
    }

    /// The signer's certificate.
    fn cert(&self) -> &Certificate {
        &self.chain[0]
    }

    /// An RSA PKCS#1 v1.5 signature over a SHA-256 digest.
    fn sign_digest(&self, digest: &[u8; 32]) -> Result<Vec<u8>> {
        self.key.sign_sha256_digest(digest)
    }
}

/// The certificates of a PEM file (in order: the signer's, then its chain; text between the
/// blocks, as `openssl ca` writes, is ignored) or of a DER file (one).
fn read_certificates(path: &Path) -> Result<Vec<Certificate>> {
    const BEGIN: &[u8] = b"-----BEGIN CERTIFICATE-----";
    const END: &[u8] = b"-----END CERTIFICATE-----";
    let bytes = fs_err::read(path)?;
    let find = |hay: &[u8], needle: &[u8]| hay.windows(needle.len()).position(|w| w == needle);
    let mut chain = Vec::new();
    let mut rest = bytes.as_slice();
    while let Some(start) = find(rest, BEGIN) {
        let end = find(&rest[start..], END)
            .with_context(|| format!("{}: a certificate block has no END line", path.display()))?;
        let block = &rest[start..start + end + END.len()];
        let cert = Certificate::from_pem(block).with_context(|| {
            format!(
                "{}: certificate {} is not valid PEM",
                path.display(),
                chain.len() + 1
            )
        })?;
        chain.push(cert);
        rest = &rest[start + end + END.len()..];
    }
    if chain.is_empty() {
        if find(&bytes, b"-----BEGIN").is_some() {
            bail!(
                "{}: holds no PEM certificate (BEGIN CERTIFICATE)",
                path.display()
            );
        }
        let cert = Certificate::from_der(&bytes)
            .with_context(|| format!("{}: not a PEM or DER certificate", path.display()))?;
        chain.push(cert);
    }
    Ok(chain)
}

fn check_validity(cert: &Certificate, path: &Path, now: u64) -> Result<()> {
    let validity = cert.tbs_certificate().validity();
    let (from, until) = (
        validity.not_before.to_unix_duration().as_secs(),
        validity.not_after.to_unix_duration().as_secs(),
    );
    if now > until {
        bail!(
            "{}: the certificate expired on {} (not after)",
            path.display(),
            validity.not_after
        );
    }
    if now < from {
        bail!(
            "{}: the certificate is not valid before {} (not before)",
            path.display(),
            validity.not_before
        );
    }
    Ok(())
}
