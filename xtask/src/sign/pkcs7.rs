//! The PKCS#7 / CMS `SignedData` Kiln writes: for Authenticode (RFC 5652 with Microsoft's
//! `SpcIndirectDataContent`, as sbsigntool and osslsigncode write it), and detached signatures
//! for iPXE's `imgverify`. Both carry the signer's certificate and chain, SHA-256 and RSA
//! PKCS#1 v1.5, and no signing time, so the same key and input always give the same bytes.

use anyhow::{Context, Result};
use cms::cert::{CertificateChoices, IssuerAndSerialNumber};
use cms::content_info::{CmsVersion, ContentInfo};
use cms::signed_data::{
    CertificateSet, EncapsulatedContentInfo, SignedAttributes, SignedData, SignerIdentifier,
    SignerInfo, SignerInfos,
};
use const_oid::db::{rfc5911, rfc5912};
use const_oid::ObjectIdentifier;
use der::asn1::{Any, Null, OctetString, SetOfVec};
use der::{Decode, Encode, Sequence};
use sha2::{Digest as _, Sha256};
use spki::AlgorithmIdentifierOwned;
use x509_cert::attr::Attribute;

use super::SigningKey;
use crate::archive::authenticode;

/// SPC_INDIRECT_DATA_OBJID: the content type of an Authenticode signature.
const SPC_INDIRECT_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.2.1.4");
/// SPC_PE_IMAGE_DATAOBJ: what the indirect data describes.
const SPC_PE_IMAGE_DATA: ObjectIdentifier = ObjectIdentifier::new_unwrap("1.3.6.1.4.1.311.2.1.15");
/// `SpcPeImageData` as every signing tool writes it: no flags, and a file link holding the
/// BMPString "<<<Obsolete>>>" (verifiers ignore it; its bytes are fixed).
const SPC_PE_IMAGE_DATA_VALUE: [u8; 39] = [
    0x30, 0x25, 0x03, 0x01, 0x00, 0xa0, 0x20, 0xa2, 0x1e, 0x80, 0x1c, 0x00, b'<', 0x00, b'<', 0x00,
    b'<', 0x00, b'O', 0x00, b'b', 0x00, b's', 0x00, b'o', 0x00, b'l', 0x00, b'e', 0x00, b't', 0x00,
    b'e', 0x00, b'>', 0x00, b'>', 0x00, b'>',
];

#[derive(Sequence)]
struct SpcIndirectDataContent {
    data: SpcAttributeTypeAndOptionalValue,
    message_digest: DigestInfo,
}

#[derive(Sequence)]
struct SpcAttributeTypeAndOptionalValue {
    value_type: ObjectIdentifier,
    value: Any,
}

#[derive(Sequence)]
struct DigestInfo {
    digest_algorithm: AlgorithmIdentifierOwned,
    digest: OctetString,
}

fn sha256_algorithm() -> AlgorithmIdentifierOwned {
    AlgorithmIdentifierOwned {
        oid: rfc5912::ID_SHA_256,
        parameters: Some(Any::from(Null)),
    }
}

/// Signs a PE image: returns the image with its Authenticode signature appended. The image
/// is first padded as Authenticode requires (`authenticode::prepare`).
pub fn sign_pe(key: &SigningKey, image: &[u8]) -> Result<Vec<u8>> {
    let prepared = authenticode::prepare(image)?;
    let digest = authenticode::digest(&prepared)?;
    let indirect = SpcIndirectDataContent {
        data: SpcAttributeTypeAndOptionalValue {
            value_type: SPC_PE_IMAGE_DATA,
            value: Any::from_der(&SPC_PE_IMAGE_DATA_VALUE).expect("a fixed, valid encoding"),
        },
        message_digest: DigestInfo {
            digest_algorithm: sha256_algorithm(),
            digest: OctetString::new(digest.to_vec())?,
        },
    };
    let indirect = Any::encode_from(&indirect)?;
    // Authenticode's messageDigest covers the SpcIndirectDataContent's contents without its
    // own SEQUENCE tag and length (what PKCS#7 hashes for a non-data content type).
    let content_digest: [u8; 32] = Sha256::digest(indirect.value()).into();
    let attrs = SetOfVec::try_from(vec![
        attribute(
            rfc5911::ID_CONTENT_TYPE,
            Any::encode_from(&SPC_INDIRECT_DATA)?,
        )?,
        attribute(
            rfc5911::ID_MESSAGE_DIGEST,
            Any::encode_from(&OctetString::new(content_digest.to_vec())?)?,
        )?,
    ])?;
    let signed: SignedAttributes = attrs;
    let to_sign: [u8; 32] = Sha256::digest(signed.to_der()?).into();
    let signature = key.sign_digest(&to_sign)?;
    let content = EncapsulatedContentInfo {
        econtent_type: SPC_INDIRECT_DATA,
        econtent: Some(indirect),
    };
    let der = signed_data(key, content, Some(signed), signature)?;
    Ok(authenticode::attach(&prepared, &der)?)
}

/// A detached CMS signature of `data` as iPXE's `imgverify` reads it (what `openssl cms -sign
/// -binary -noattr -outform DER` writes): no encapsulated content and no signed attributes,
/// since iPXE verifies the signature over the data's digest itself (`crypto/cms.c` skips any
/// signed attributes, so a signature over them would not verify).
pub fn sign_detached(key: &SigningKey, data: &[u8]) -> Result<Vec<u8>> {
    let digest: [u8; 32] = Sha256::digest(data).into();
    let signature = key.sign_digest(&digest)?;
    let content = EncapsulatedContentInfo {
        econtent_type: rfc5911::ID_DATA,
        econtent: None,
    };
    signed_data(key, content, None, signature)
}

fn attribute(oid: ObjectIdentifier, value: Any) -> Result<Attribute> {
    Ok(Attribute {
        oid,
        values: SetOfVec::try_from(vec![value])?,
    })
}

/// The DER `ContentInfo` holding one signer's `SignedData`.
fn signed_data(
    key: &SigningKey,
    content: EncapsulatedContentInfo,
    signed_attrs: Option<SignedAttributes>,
    signature: Vec<u8>,
) -> Result<Vec<u8>> {
    let tbs = key.cert().tbs_certificate();
    let signer = SignerInfo {
        version: CmsVersion::V1,
        sid: SignerIdentifier::IssuerAndSerialNumber(IssuerAndSerialNumber {
            issuer: tbs.issuer().clone(),
            serial_number: tbs.serial_number().clone(),
        }),
        digest_alg: sha256_algorithm(),
        signed_attrs,
        signature_algorithm: AlgorithmIdentifierOwned {
            oid: rfc5912::RSA_ENCRYPTION,
            parameters: Some(Any::from(Null)),
        },
        signature: OctetString::new(signature)?,
        unsigned_attrs: None,
    };
    let certificates = key
        .chain
        .iter()
        .map(|c| CertificateChoices::Certificate(c.clone()));
    let data = SignedData {
        version: CmsVersion::V1,
        digest_algorithms: SetOfVec::try_from(vec![sha256_algorithm()])?,
        encap_content_info: content,
        certificates: Some(CertificateSet(SetOfVec::try_from(
            certificates.collect::<Vec<_>>(),
        )?)),
        crls: None,
        signer_infos: SignerInfos(SetOfVec::try_from(vec![signer])?),
    };
    let info = ContentInfo {
        content_type: rfc5911::ID_SIGNED_DATA,
        content: Any::encode_from(&data)?,
    };
    info.to_der().context("encoding the signature")
}
