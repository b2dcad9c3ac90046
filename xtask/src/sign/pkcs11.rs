//! Keys in a PKCS#11 token (an HSM, a smart card, SoftHSM): `--sign-key` as an RFC 7512 URI,
//! `pkcs11:token=<label>;object=<key label>` (or `id=%01`), with the module to load in the
//! URI's `module-path` query attribute or `KILN_PKCS11_MODULE`. The PIN is the key's
//! passphrase (`KILN_SIGN_PASSPHRASE`, `--sign-passphrase-file`), never part of the URI: a URI
//! is shown in messages and may sit in the environment (`KILN_SIGN_KEY`).
//! The key never leaves the token: Kiln hands it a DigestInfo and gets the RSA PKCS#1 v1.5
//! signature back (`CKM_RSA_PKCS`), which is deterministic, so a token signs exactly the bytes a
//! PEM copy of the same key would.
//!
//! `cryptoki` is the binding: the well-kept one, and it loads the module at run time, so Kiln
//! builds without any PKCS#11 library installed.

use std::collections::BTreeMap;
use std::sync::Mutex;

use anyhow::{anyhow, bail, Context, Result};
use cryptoki::context::{CInitializeArgs, CInitializeFlags, Pkcs11};
use cryptoki::error::{Error as CkError, RvError};
use cryptoki::mechanism::Mechanism;
use cryptoki::object::{Attribute, AttributeType, ObjectClass, ObjectHandle};
use cryptoki::session::{Session, UserType};
use cryptoki::types::AuthPin;
use der::Encode;

use super::Passphrase;

/// The prefix of a key given as a PKCS#11 URI.
pub const SCHEME: &str = "pkcs11:";

/// The DER DigestInfo prefix for SHA-256 (RFC 8017, 9.2 note 1): with the 32-byte digest after
/// it, what `CKM_RSA_PKCS` signs for RSASSA-PKCS1-v1_5 with SHA-256.
const SHA256_DIGEST_INFO: [u8; 19] = [
    0x30, 0x31, 0x30, 0x0d, 0x06, 0x09, 0x60, 0x86, 0x48, 0x01, 0x65, 0x03, 0x04, 0x02, 0x01, 0x05,
    0x00, 0x04, 0x20,
];

/// What the URI names.
#[derive(Debug, PartialEq)]
struct Uri {
    /// Path attributes (`token`, `object`, `id`, …), percent-decoded.
    path: BTreeMap<String, Vec<u8>>,
    /// Query attributes (`module-path`, `pin-value`, `pin-source`), percent-decoded.
    query: BTreeMap<String, Vec<u8>>,
}

impl Uri {
    fn parse(uri: &str) -> Result<Uri> {
        let rest = uri
            .strip_prefix(SCHEME)
            .with_context(|| format!("not a PKCS#11 URI (they start with {SCHEME})"))?;
        let (path, query) = rest.split_once('?').unwrap_or((rest, ""));
        let attributes = |text: &str, separator: char| -> Result<BTreeMap<String, Vec<u8>>> {
            let mut out = BTreeMap::new();
            for pair in text.split(separator).filter(|p| !p.is_empty()) {
                let (name, value) = pair
                    .split_once('=')
                    .with_context(|| format!("`{pair}` is not name=value"))?;
                let value = percent_decode(value)
                    .with_context(|| format!("`{name}`: a % is not followed by two hex digits"))?;
                out.insert(name.to_string(), value);
            }
            Ok(out)
        };
        Ok(Uri {
            path: attributes(path, ';')?,
            query: attributes(query, '&')?,
        })
    }

    fn text(&self, map: &BTreeMap<String, Vec<u8>>, name: &str) -> Result<Option<String>> {
        map.get(name)
            .map(|v| String::from_utf8(v.clone()).with_context(|| format!("`{name}` is not UTF-8")))
            .transpose()
    }
}

/// The bytes `text` encodes; `None` for a `%` without two hex digits after it. (No error names
/// the value: it could be a secret.)
fn percent_decode(text: &str) -> Option<Vec<u8>> {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = text
                .get(i + 1..i + 3)
                .and_then(|h| u8::from_str_radix(h, 16).ok())?;
            out.push(hex);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    Some(out)
}

/// A private key in a token, logged in and found.
pub(super) struct TokenKey {
    session: Mutex<Session>,
    key: ObjectHandle,
    /// `RSAPublicKey` DER from the key's modulus and exponent.
    public: Vec<u8>,
}

impl TokenKey {
    /// Opens the token and finds the key; every failure names what was asked for. `shown` is
    /// the URI without any `pin-value`, for messages.
    pub(super) fn open(uri: &str, passphrase: Option<&Passphrase>) -> Result<TokenKey> {
        Self::open_inner(uri, passphrase).with_context(|| format!("--sign-key {uri}"))
    }

    fn open_inner(uri: &str, passphrase: Option<&Passphrase>) -> Result<TokenKey> {
        let uri = Uri::parse(uri)?;
        let in_uri = ["pin-value", "pin-source"];
        if let Some(name) = in_uri.into_iter().find(|n| uri.query.contains_key(*n)) {
            bail!("`{name}`: the PIN is not given in the URI (it would show in messages and the environment); give it in KILN_SIGN_PASSPHRASE or a file named by --sign-passphrase-file");
        }
        let module = match uri.text(&uri.query, "module-path")? {
            Some(m) => m,
            None => std::env::var("KILN_PKCS11_MODULE").map_err(|_| {
                anyhow!("no PKCS#11 module: add ?module-path=/path/to/module.so to the URI or set KILN_PKCS11_MODULE (SoftHSM's is /usr/lib/softhsm/libsofthsm2.so)")
            })?,
        };
        let pkcs11 =
            Pkcs11::new(&module).with_context(|| format!("loading the PKCS#11 module {module}"))?;
        match pkcs11.initialize(CInitializeArgs::new(CInitializeFlags::OS_LOCKING_OK)) {
            Ok(()) | Err(CkError::Pkcs11(RvError::CryptokiAlreadyInitialized, _)) => {}
            Err(e) => return Err(e).context(format!("initializing {module}")),
        }
        let slot = find_token(&pkcs11, &uri, &module)?;
        let session = pkcs11
            .open_ro_session(slot)
            .context("opening a session on the token")?;
        let Some(pin) = passphrase.map(|p| p.0.clone()) else {
            bail!("the token needs its user PIN: give it in KILN_SIGN_PASSPHRASE or a file named by --sign-passphrase-file");
        };
        match session.login(UserType::User, Some(&AuthPin::new(pin.into()))) {
            Ok(()) | Err(CkError::Pkcs11(RvError::UserAlreadyLoggedIn, _)) => {}
            Err(CkError::Pkcs11(RvError::PinIncorrect, _)) => {
                bail!("the token refused the PIN (wrong PIN?)")
            }
            Err(CkError::Pkcs11(RvError::PinLocked, _)) => bail!("the token's user PIN is locked"),
            Err(e) => return Err(e).context("logging in to the token"),
        }
        let mut template = vec![Attribute::Class(ObjectClass::PRIVATE_KEY)];
        if let Some(label) = uri.path.get("object") {
            template.push(Attribute::Label(label.clone()));
        }
        if let Some(id) = uri.path.get("id") {
            template.push(Attribute::Id(id.clone()));
        }
        if template.len() == 1 {
            bail!("the URI names no key: add object=<label> or id=<%xx bytes>");
        }
        let keys = session
            .find_objects(&template)
            .context("searching the token")?;
        let key = match keys.as_slice() {
            [key] => *key,
            [] => {
                let named: Vec<String> = ["object", "id"]
                    .iter()
                    .filter_map(|a| uri.path.get(*a).map(|v| format!("{a}={}", shown(v))))
                    .collect();
                bail!("the token has no private key with {}", named.join(" and "))
            }
            more => bail!(
                "{} private keys match the URI; name one with both object= and id=",
                more.len()
            ),
        };
        let attributes = session
            .get_attributes(
                key,
                &[AttributeType::Modulus, AttributeType::PublicExponent],
            )
            .context("reading the key's public part")?;
        let (mut modulus, mut exponent) = (None, None);
        for a in attributes {
            match a {
                Attribute::Modulus(m) => modulus = Some(m),
                Attribute::PublicExponent(e) => exponent = Some(e),
                _ => {}
            }
        }
        let (Some(modulus), Some(exponent)) = (modulus, exponent) else {
            bail!("the key has no RSA modulus and exponent: UEFI firmware and iPXE verify RSA signatures");
        };
        Ok(TokenKey {
            session: Mutex::new(session),
            key,
            public: rsa_public_key(&modulus, &exponent)?,
        })
    }

    pub(super) fn public_key_der(&self) -> Vec<u8> {
        self.public.clone()
    }

    pub(super) fn sign_sha256_digest(&self, digest: &[u8; 32]) -> Result<Vec<u8>> {
        let data = [&SHA256_DIGEST_INFO[..], digest].concat();
        let session = self
            .session
            .lock()
            .map_err(|_| anyhow!("the token session failed"))?;
        session
            .sign(&Mechanism::RsaPkcs, self.key, &data)
            .context("the token could not sign")
    }
}

/// The slot whose token the URI names (`token=` label, optionally `serial=`, `manufacturer=`,
/// `model=`); the only token when the URI names none.
fn find_token(pkcs11: &Pkcs11, uri: &Uri, module: &str) -> Result<cryptoki::slot::Slot> {
    let slots = pkcs11
        .get_slots_with_token()
        .with_context(|| format!("listing the tokens of {module}"))?;
    let mut found = Vec::new();
    let mut labels = Vec::new();
    for slot in slots {
        let info = pkcs11.get_token_info(slot)?;
        if !info.token_initialized() {
            continue;
        }
        labels.push(format!("`{}`", info.label()));
        let fields = [
            ("token", info.label()),
            ("serial", info.serial_number()),
            ("manufacturer", info.manufacturer_id()),
            ("model", info.model()),
        ];
        let matches = fields.iter().all(|(name, value)| {
            uri.path
                .get(*name)
                .is_none_or(|want| want.as_slice() == value.trim_end().as_bytes())
        });
        if matches {
            found.push(slot);
        }
    }
    match found.as_slice() {
        [slot] => Ok(*slot),
        [] => {
            let token = uri.text(&uri.path, "token")?.unwrap_or_default();
            let have = match labels.is_empty() {
                true => "it has no initialized token".to_string(),
                false => format!("its tokens: {}", labels.join(", ")),
            };
            bail!("the token `{token}` is not reachable through {module} ({have})")
        }
        _ => bail!(
            "several tokens match the URI ({}): name one with token=",
            labels.join(", ")
        ),
    }
}

/// An attribute's value for a message: text if it is, else `%xx` bytes as in a URI.
fn shown(value: &[u8]) -> String {
    match std::str::from_utf8(value) {
        Ok(text) if !text.contains('%') => text.to_string(),
        _ => value.iter().map(|b| format!("%{b:02x}")).collect(),
    }
}

/// PKCS#1 `RSAPublicKey` (a certificate's subjectPublicKey for RSA) from big-endian integers.
fn rsa_public_key(modulus: &[u8], exponent: &[u8]) -> Result<Vec<u8>> {
    #[derive(der::Sequence)]
    struct RsaPublicKey<'a> {
        modulus: der::asn1::UintRef<'a>,
        exponent: der::asn1::UintRef<'a>,
    }
    let key = RsaPublicKey {
        modulus: der::asn1::UintRef::new(modulus)?,
        exponent: der::asn1::UintRef::new(exponent)?,
    };
    Ok(key.to_der()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uris_are_parsed_and_percent_decoded() {
        let uri = Uri::parse(
            "pkcs11:token=Kiln%20HSM;object=sign;id=%01%a2?module-path=/usr/lib/x.so&pin-value=12",
        )
        .unwrap();
        assert_eq!(uri.path["token"], b"Kiln HSM");
        assert_eq!(uri.path["id"], [0x01, 0xa2]);
        assert_eq!(uri.query["module-path"], b"/usr/lib/x.so");
        assert_eq!(uri.query["pin-value"], b"12");
        let err = format!(
            "{:#}",
            Uri::parse("pkcs11:token=a?pin-value=se%2cret%").unwrap_err()
        );
        assert!(
            err.contains("`pin-value`") && !err.contains("se%2cret"),
            "{err}"
        );
        let err = TokenKey::open("pkcs11:token=a?pin-value=1234", None)
            .err()
            .unwrap();
        let err = format!("{err:#}");
        assert!(err.contains("the PIN is not given in the URI"), "{err}");
        assert!(Uri::parse("pkcs11:token=a%2").is_err());
        assert!(Uri::parse("pkcs11:token").is_err());
        assert!(Uri::parse("/etc/key.pem").is_err());
    }
}
