//! The operator's private key, loaded from a PEM file: PKCS#8 (`BEGIN PRIVATE KEY`), encrypted
//! PKCS#8 (`BEGIN ENCRYPTED PRIVATE KEY`, as `openssl genpkey -aes256` and Debian's snakeoil key
//! write it) or PKCS#1 (`BEGIN RSA PRIVATE KEY`, unencrypted), signing with aws-lc; or a key in
//! a PKCS#11 token (`pkcs11:` URI, `pkcs11.rs`), which signs itself.

use std::path::Path;

use anyhow::{bail, Context, Result};
use aws_lc_rs::rsa::KeyPair;
use aws_lc_rs::signature::{KeyPair as _, RSA_PKCS1_SHA256};

/// A key's passphrase: never printed (`Debug` hides it), never put in a key or a log.
#[derive(Clone)]
pub struct Passphrase(pub String);

impl std::fmt::Debug for Passphrase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Passphrase(…)")
    }
}

pub(super) enum PrivateKey {
    Rsa(KeyPair),
    /// A key that stays in a PKCS#11 token.
    Token(super::pkcs11::TokenKey),
}

impl PrivateKey {
    pub(super) fn load(path: &Path, passphrase: Option<&Passphrase>) -> Result<PrivateKey> {
        if let Some(uri) = path
            .to_str()
            .filter(|p| p.starts_with(super::pkcs11::SCHEME))
        {
            return Ok(PrivateKey::Token(super::pkcs11::TokenKey::open(
                uri, passphrase,
            )?));
        }
        let text = fs_err::read(path)?;
        if contains(&text, b"Proc-Type: 4,ENCRYPTED") {
            bail!(
                "{}: a key encrypted the legacy OpenSSL way (Proc-Type: 4,ENCRYPTED); convert it \
                 with `openssl pkcs8 -topk8 -in KEY -out NEW`, which keeps it encrypted",
                path.display()
            );
        }
        let (label, der) = der::pem::decode_vec(&text)
            .map_err(|e| anyhow::anyhow!("{}: not a PEM private key ({e})", path.display()))?;
        let rejected = |e: aws_lc_rs::error::KeyRejected| {
            anyhow::anyhow!(
                "{}: not an RSA private key Kiln can use ({e})",
                path.display()
            )
        };
        let pair = match label {
            "PRIVATE KEY" => KeyPair::from_pkcs8(&der).map_err(rejected)?,
            "RSA PRIVATE KEY" => KeyPair::from_der(&der).map_err(rejected)?,
            "ENCRYPTED PRIVATE KEY" => {
                let Some(passphrase) = passphrase else {
                    bail!(
                        "{}: the key is encrypted: give its passphrase in KILN_SIGN_PASSPHRASE \
                         or a file named by --sign-passphrase-file",
                        path.display()
                    );
                };
                let info = pkcs8::EncryptedPrivateKeyInfoRef::try_from(der.as_slice())
                    .with_context(|| format!("{}: not an encrypted PKCS#8 key", path.display()))?;
                let plain = info.decrypt(passphrase.0.as_bytes()).map_err(|_| {
                    anyhow::anyhow!(
                        "{}: the passphrase does not decrypt the key (wrong passphrase?)",
                        path.display()
                    )
                })?;
                KeyPair::from_pkcs8(plain.as_bytes()).map_err(rejected)?
            }
            other => bail!(
                "{}: a PEM `{other}` block, not a private key (PRIVATE KEY, ENCRYPTED PRIVATE KEY \
                 or RSA PRIVATE KEY)",
                path.display()
            ),
        };
        Ok(PrivateKey::Rsa(pair))
    }

    /// The public key as DER `RSAPublicKey`, as a certificate's subjectPublicKey holds it.
    pub(super) fn public_key_der(&self) -> Vec<u8> {
        match self {
            PrivateKey::Rsa(pair) => pair.public_key().as_ref().to_vec(),
            PrivateKey::Token(key) => key.public_key_der(),
        }
    }

    /// RSASSA-PKCS1-v1_5 with SHA-256 over an already computed digest: deterministic.
    pub(super) fn sign_sha256_digest(&self, digest: &[u8; 32]) -> Result<Vec<u8>> {
        match self {
            PrivateKey::Rsa(pair) => {
                let mut signature = vec![0; pair.public_modulus_len()];
                let digest =
                    aws_lc_rs::digest::Digest::import_less_safe(digest, &aws_lc_rs::digest::SHA256)
                        .map_err(|_| anyhow::anyhow!("a SHA-256 digest is 32 bytes"))?;
                pair.sign_digest(&RSA_PKCS1_SHA256, &digest, &mut signature)
                    .map_err(|_| anyhow::anyhow!("RSA signing failed"))?;
                Ok(signature)
            }
            PrivateKey::Token(key) => key.sign_sha256_digest(digest),
        }
    }
}

fn contains(hay: &[u8], needle: &[u8]) -> bool {
    hay.windows(needle.len()).any(|w| w == needle)
}
