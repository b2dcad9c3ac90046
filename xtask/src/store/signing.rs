//! Who may write the shared remote cache, and what a reader checks.
//!
//! Digests make every object self-checking, but an action record (a step
//! key and the outputs it made) is only as good as whoever wrote it: a
//! writer of the bucket could point a key at any valid blob. So writers
//! sign records with an Ed25519 key (`KILN_REMOTE_CACHE_SIGNING_KEY`), and
//! a reader that names the matching public key (`KILN_REMOTE_CACHE_TRUST`)
//! takes nothing from a record that is unsigned or signed by another key.
//! The signature covers the record's bytes, key included, so a genuine
//! record moved under another key's name is refused too; the objects it
//! names are then checked by digest as always. The model is written down
//! in `docs/REMOTE_CACHE.md`.
//!
//! Keys are PEM files as OpenSSL writes them (`openssl genpkey -algorithm
//! ed25519`, `openssl pkey -pubout`). aws-lc-rs and rustls-pki-types do the
//! work: both are already in the build for TLS.

use std::path::Path;

use anyhow::{anyhow, bail, Context, Result};
use aws_lc_rs::signature::{Ed25519KeyPair, KeyPair, UnparsedPublicKey, ED25519};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{PrivatePkcs8KeyDer, SubjectPublicKeyInfoDer};

use super::{ActionRecord, Digest};

/// Signed messages start with this, so a signature made for something
/// else with the same key can never pass for a record's.
const CONTEXT: &[u8] = b"kiln remote-cache action record v1\n";

/// A writer's private key.
pub struct Signer {
    pair: Ed25519KeyPair,
}

/// The public key a reader accepts records from.
pub struct Trust {
    key: UnparsedPublicKey<Vec<u8>>,
}

impl Signer {
    /// Reads a PKCS#8 PEM private key (`openssl genpkey -algorithm ed25519`).
    pub fn load(path: &Path) -> Result<Signer> {
        let what = || format!("the signing key {}", path.display());
        let der = PrivatePkcs8KeyDer::from_pem_file(path)
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| format!("reading {}: expected a PEM \"PRIVATE KEY\"", what()))?;
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der.secret_pkcs8_der())
            .map_err(|e| anyhow!("{} is not an Ed25519 key: {e}", what()))?;
        Ok(Signer { pair })
    }

    /// A key from PKCS#8 DER bytes.
    pub fn from_pkcs8(der: &[u8]) -> Result<Signer> {
        let pair = Ed25519KeyPair::from_pkcs8_maybe_unchecked(der)
            .map_err(|e| anyhow!("not an Ed25519 PKCS#8 key: {e}"))?;
        Ok(Signer { pair })
    }

    /// The record as it travels: its JSON with the signature added.
    pub fn sign(&self, record: &ActionRecord) -> Result<Vec<u8>> {
        let bytes = serde_json::to_vec(record)?;
        let signature = self.pair.sign(&message(&bytes));
        let mut value = serde_json::to_value(record)?;
        value["signature"] = hex::encode(signature.as_ref()).into();
        Ok(serde_json::to_vec(&value)?)
    }

    /// The public half, as a reader's trust key would hold it.
    pub fn public_key(&self) -> Vec<u8> {
        self.pair.public_key().as_ref().to_vec()
    }
}

impl Trust {
    /// Reads a PEM public key (`openssl pkey -pubout`).
    pub fn load(path: &Path) -> Result<Trust> {
        let der = SubjectPublicKeyInfoDer::from_pem_file(path)
            .map_err(|e| anyhow!("{e}"))
            .with_context(|| {
                format!(
                    "reading the trusted key {}: expected a PEM \"PUBLIC KEY\"",
                    path.display()
                )
            })?;
        // An Ed25519 SubjectPublicKeyInfo is a fixed 12-byte header (the
        // algorithm's OID) and the 32-byte key.
        const HEADER: [u8; 12] = [
            0x30, 0x2a, 0x30, 0x05, 0x06, 0x03, 0x2b, 0x65, 0x70, 0x03, 0x21, 0x00,
        ];
        let Some(key) = der.as_ref().strip_prefix(&HEADER[..]) else {
            bail!(
                "the trusted key {} is not an Ed25519 public key",
                path.display()
            );
        };
        Ok(Trust::from_raw(key))
    }

    pub fn from_raw(key: &[u8]) -> Trust {
        Trust {
            key: UnparsedPublicKey::new(&ED25519, key.to_vec()),
        }
    }
}

/// Why a fetched record is not used.
#[derive(Debug, PartialEq, Eq)]
pub enum Refused {
    Unreadable(String),
    /// The record names another key than the one it was fetched under.
    OtherKey(Digest),
    Unsigned,
    BadSignature,
}

impl std::fmt::Display for Refused {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Refused::Unreadable(e) => write!(f, "it is unreadable ({e})"),
            Refused::OtherKey(k) => write!(f, "it is the record of another key ({})", k.hex()),
            Refused::Unsigned => write!(f, "it is not signed"),
            Refused::BadSignature => write!(f, "its signature is not from the trusted key"),
        }
    }
}

/// The record fetched as `key`, if it is that key's and (with `trust`)
/// signed by the trusted key.
pub fn open(bytes: &[u8], key: &Digest, trust: Option<&Trust>) -> Result<ActionRecord, Refused> {
    let mut value: serde_json::Value =
        serde_json::from_slice(bytes).map_err(|e| Refused::Unreadable(e.to_string()))?;
    let signature = value
        .as_object_mut()
        .and_then(|o| o.remove("signature"))
        .and_then(|s| s.as_str().map(str::to_string));
    let record: ActionRecord =
        serde_json::from_value(value).map_err(|e| Refused::Unreadable(e.to_string()))?;
    if record.key != *key {
        return Err(Refused::OtherKey(record.key));
    }
    if let Some(trust) = trust {
        let signature = signature.ok_or(Refused::Unsigned)?;
        let signature = hex::decode(signature).map_err(|_| Refused::BadSignature)?;
        let signed = serde_json::to_vec(&record).map_err(|e| Refused::Unreadable(e.to_string()))?;
        trust
            .key
            .verify(&message(&signed), &signature)
            .map_err(|_| Refused::BadSignature)?;
    }
    Ok(record)
}

fn message(record: &[u8]) -> Vec<u8> {
    [CONTEXT, record].concat()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::BTreeMap;

    fn record(key: &Digest, release: &str) -> ActionRecord {
        ActionRecord {
            key: *key,
            step: "initramfs".into(),
            components: serde_json::json!({ "vars": { "release": release } }),
            outputs: BTreeMap::new(),
        }
    }

    fn signer() -> Signer {
        let rng = aws_lc_rs::rand::SystemRandom::new();
        let doc = Ed25519KeyPair::generate_pkcs8(&rng).unwrap();
        Signer {
            pair: Ed25519KeyPair::from_pkcs8(doc.as_ref()).unwrap(),
        }
    }

    #[test]
    fn a_reader_takes_only_its_keys_records_signed_by_its_trusted_key() {
        let (writer, stranger) = (signer(), signer());
        let trust = Trust::from_raw(&writer.public_key());
        let (rc1, c2) = (Digest::of_bytes(b"rc1"), Digest::of_bytes(b"c2"));
        let signed = writer.sign(&record(&rc1, "rc1")).unwrap();
        assert_eq!(open(&signed, &rc1, Some(&trust)), Ok(record(&rc1, "rc1")));
        // The same genuine record under another key's name.
        assert_eq!(
            open(&signed, &c2, Some(&trust)),
            Err(Refused::OtherKey(rc1))
        );
        assert_eq!(open(&signed, &c2, None), Err(Refused::OtherKey(rc1)));
        let unsigned = serde_json::to_vec(&record(&rc1, "rc1")).unwrap();
        assert_eq!(open(&unsigned, &rc1, None), Ok(record(&rc1, "rc1")));
        assert_eq!(open(&unsigned, &rc1, Some(&trust)), Err(Refused::Unsigned));
        let forged = stranger.sign(&record(&rc1, "rc1")).unwrap();
        assert_eq!(
            open(&forged, &rc1, Some(&trust)),
            Err(Refused::BadSignature)
        );
        // A signed record whose outputs were changed afterwards.
        let mut edited: serde_json::Value = serde_json::from_slice(&signed).unwrap();
        edited["components"]["vars"]["release"] = "c2".into();
        let edited = serde_json::to_vec(&edited).unwrap();
        assert_eq!(
            open(&edited, &rc1, Some(&trust)),
            Err(Refused::BadSignature)
        );
    }
}
