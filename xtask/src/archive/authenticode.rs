//! Authenticode's view of a PE image: which bytes the image digest covers, and the attribute
//! certificate table a signature lives in. The cryptography (the PKCS#7 around the digest) is
//! `crate::sign`'s; this module owns the bytes of the image only.
//!
//! The digest follows Microsoft's "Windows Authenticode Portable Executable Signature Format"
//! as edk2 computes it (`DxeImageVerificationLib`'s `HashPeImage`), because UEFI firmware is the
//! verifier that counts: the headers up to SizeOfHeaders without the CheckSum field and the
//! certificate table's directory entry, then each section's raw data in file order, then what
//! follows the last section up to the certificate table. edk2 finds that tail by adding up the
//! sizes, so an image whose section data has a gap or overlap would be digested differently by
//! edk2 and by sbsigntool: such an image is refused rather than signed.
//!
//! A signed image is the prepared image (padded with zeros to a multiple of 8 bytes, where the
//! table must start) followed by one `WIN_CERTIFICATE` (revision 2.0, PKCS_SIGNED_DATA) holding
//! the DER signature, itself padded to 8 bytes; the directory entry points at it. [`strip`]
//! undoes exactly that, so a signed artifact can be compared with an unsigned rebuild.

use std::ops::Range;

use sha2::{Digest as _, Sha256};

use super::pe::{refresh_checksum, PeError, PeImage};

/// The key-bearing version (`super::Format`) of the bytes a signature adds to an image (the
/// padding, the certificate table, the refreshed checksum) and of `crate::sign::pkcs7`'s
/// encoding: bump it when either changes.
pub const FORMAT: super::Format = super::Format {
    name: "authenticode",
    version: 1,
};

/// WIN_CERTIFICATE: dwLength (u32), wRevision (u16), wCertificateType (u16), then the data.
const WIN_CERTIFICATE_HEADER: usize = 8;
const WIN_CERT_REVISION_2_0: u16 = 0x0200;
const WIN_CERT_TYPE_PKCS_SIGNED_DATA: u16 = 0x0002;

#[derive(Debug, thiserror::Error)]
pub enum AuthenticodeError {
    #[error(transparent)]
    Pe(#[from] PeError),
    #[error("the image has no certificate table entry in its optional header, so it cannot carry a signature")]
    NoSecurityDirectory,
    #[error("the image is already signed (its certificate table holds {0} bytes)")]
    AlreadySigned(u32),
    #[error(
        "the section data is not contiguous ({0}: {1:#x}..{2:#x}): edk2 and sbsigntool would \
         digest different bytes, so the image is not signed"
    )]
    NotContiguous(&'static str, usize, usize),
    #[error("the certificate table ({0:#x}, {1} bytes) is not the end of the {2}-byte image")]
    TableNotAtEnd(u32, u32, usize),
    #[error("the certificate table holds a malformed WIN_CERTIFICATE at {0:#x}")]
    BadCertificate(usize),
}

/// The image as it is signed: padded with zeros to a multiple of 8 bytes, checksum refreshed.
/// Refuses a signed image, one without a certificate table entry, and one whose section data
/// is not contiguous (see the module comment).
pub fn prepare(image: &[u8]) -> Result<Vec<u8>, AuthenticodeError> {
    let pe = PeImage::parse(image)?;
    let entry = pe
        .security_entry()
        .ok_or(AuthenticodeError::NoSecurityDirectory)?;
    let size = read_u32(image, entry + 4);
    if size != 0 {
        return Err(AuthenticodeError::AlreadySigned(size));
    }
    ranges(&pe, image.len())?;
    let mut out = image.to_vec();
    out.resize(image.len().next_multiple_of(8), 0);
    refresh_checksum(&mut out)?;
    Ok(out)
}

/// The SHA-256 Authenticode digest of a prepared or signed image.
pub fn digest(image: &[u8]) -> Result<[u8; 32], AuthenticodeError> {
    let pe = PeImage::parse(image)?;
    let table = table(&pe, image)?.map_or(0, |t| t.len());
    let mut hasher = Sha256::new();
    for range in ranges(&pe, image.len() - table)? {
        hasher.update(&image[range]);
    }
    Ok(hasher.finalize().into())
}

/// `prepared` with `signed_data` (a DER `ContentInfo`) as its one attribute certificate.
pub fn attach(prepared: &[u8], signed_data: &[u8]) -> Result<Vec<u8>, AuthenticodeError> {
    let pe = PeImage::parse(prepared)?;
    let entry = pe
        .security_entry()
        .ok_or(AuthenticodeError::NoSecurityDirectory)?;
    if !prepared.len().is_multiple_of(8) || read_u32(prepared, entry + 4) != 0 {
        return Err(AuthenticodeError::AlreadySigned(read_u32(
            prepared,
            entry + 4,
        )));
    }
    let length = WIN_CERTIFICATE_HEADER + signed_data.len();
    let padded = length.next_multiple_of(8);
    let too_large = || PeError::TooLarge("certificate table".into());
    let (at, size) = (
        u32::try_from(prepared.len()).map_err(|_| too_large())?,
        u32::try_from(padded).map_err(|_| too_large())?,
    );
    let mut out = prepared.to_vec();
    out.extend_from_slice(&(length as u32).to_le_bytes());
    out.extend_from_slice(&WIN_CERT_REVISION_2_0.to_le_bytes());
    out.extend_from_slice(&WIN_CERT_TYPE_PKCS_SIGNED_DATA.to_le_bytes());
    out.extend_from_slice(signed_data);
    out.resize(prepared.len() + padded, 0);
    out[entry..entry + 4].copy_from_slice(&at.to_le_bytes());
    out[entry + 4..entry + 8].copy_from_slice(&size.to_le_bytes());
    refresh_checksum(&mut out)?;
    Ok(out)
}

/// A signed image without its certificate table: the prepared image it was signed as (so
/// `strip(attach(prepare(x)))` is `prepare(x)`). `None` if the image carries no signature.
pub fn strip(image: &[u8]) -> Result<Option<Vec<u8>>, AuthenticodeError> {
    let pe = PeImage::parse(image)?;
    let Some(table) = table(&pe, image)? else {
        return Ok(None);
    };
    let entry = pe.security_entry().expect("a table has an entry");
    let mut out = image[..table.start].to_vec();
    out[entry..entry + 8].fill(0);
    refresh_checksum(&mut out)?;
    Ok(Some(out))
}

/// The DER signatures (`bCertificate` of each PKCS_SIGNED_DATA certificate) a signed image
/// carries, in order; empty for an unsigned image.
pub fn signatures(image: &[u8]) -> Result<Vec<&[u8]>, AuthenticodeError> {
    let pe = PeImage::parse(image)?;
    let Some(table) = table(&pe, image)? else {
        return Ok(Vec::new());
    };
    let mut found = Vec::new();
    let mut at = table.start;
    while at < table.end {
        let bad = AuthenticodeError::BadCertificate(at);
        let length = image.get(at..at + 4).map(|_| read_u32(image, at) as usize);
        let end = length
            .and_then(|l| at.checked_add(l))
            .filter(|&e| e <= table.end);
        let (Some(length), Some(end)) = (length, end) else {
            return Err(bad);
        };
        if length < WIN_CERTIFICATE_HEADER {
            return Err(bad);
        }
        let kind = u16::from_le_bytes([image[at + 6], image[at + 7]]);
        if kind == WIN_CERT_TYPE_PKCS_SIGNED_DATA {
            found.push(&image[at + WIN_CERTIFICATE_HEADER..end]);
        }
        at += length.next_multiple_of(8);
    }
    Ok(found)
}

/// The certificate table's file range, checked to be the end of the image; `None` if empty.
fn table(pe: &PeImage, image: &[u8]) -> Result<Option<Range<usize>>, AuthenticodeError> {
    let Some(entry) = pe.security_entry() else {
        return Ok(None);
    };
    let (at, size) = (read_u32(image, entry), read_u32(image, entry + 4));
    if size == 0 {
        return Ok(None);
    }
    let (start, end) = (at as usize, at as usize + size as usize);
    if end != image.len() || start < pe.headers.size_of_headers as usize {
        return Err(AuthenticodeError::TableNotAtEnd(at, size, image.len()));
    }
    Ok(Some(start..end))
}

/// The byte ranges the digest covers, for an image whose unsigned part is `len` bytes long.
fn ranges(pe: &PeImage, len: usize) -> Result<Vec<Range<usize>>, AuthenticodeError> {
    let entry = pe
        .security_entry()
        .ok_or(AuthenticodeError::NoSecurityDirectory)?;
    let checksum = pe.checksum_offset();
    let headers = pe.headers.size_of_headers as usize;
    let mut ranges = vec![0..checksum, checksum + 4..entry, entry + 8..headers];
    let mut sections: Vec<Range<usize>> = pe
        .sections
        .iter()
        .filter(|s| s.raw_size > 0)
        .map(|s| s.raw_offset as usize..s.raw_offset as usize + s.raw_size as usize)
        .collect();
    sections.sort_by_key(|r| r.start);
    let mut end = headers;
    for s in sections {
        if s.start != end {
            let what = if s.start > end { "gap" } else { "overlap" };
            return Err(AuthenticodeError::NotContiguous(
                what,
                end.min(s.start),
                end.max(s.start),
            ));
        }
        end = s.end;
        ranges.push(s);
    }
    if len < end {
        return Err(AuthenticodeError::NotContiguous("overlap", len, end));
    }
    ranges.push(end..len);
    ranges.retain(|r| !r.is_empty());
    Ok(ranges)
}

fn read_u32(b: &[u8], at: usize) -> u32 {
    u32::from_le_bytes(b[at..at + 4].try_into().expect("4 bytes"))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A minimal PE32+ image: headers up to 0x200, one 0x200-byte section, `len` bytes long.
    fn image(len: usize) -> Vec<u8> {
        let mut b = vec![0u8; len];
        b[0..2].copy_from_slice(b"MZ");
        b[0x3c..0x40].copy_from_slice(&0x40u32.to_le_bytes());
        b[0x40..0x44].copy_from_slice(b"PE\0\0");
        let (coff, opt) = (0x44, 0x44 + 20);
        b[coff..coff + 2].copy_from_slice(&0x8664u16.to_le_bytes());
        b[coff + 2..coff + 4].copy_from_slice(&1u16.to_le_bytes());
        b[coff + 16..coff + 18].copy_from_slice(&240u16.to_le_bytes());
        b[opt..opt + 2].copy_from_slice(&0x20bu16.to_le_bytes());
        for (off, v) in [
            (32, 0x1000u32),
            (36, 0x200),
            (56, 0x2000),
            (60, 0x200),
            (108, 16),
        ] {
            b[opt + off..opt + off + 4].copy_from_slice(&v.to_le_bytes());
        }
        let sec = opt + 240;
        b[sec..sec + 5].copy_from_slice(b".text");
        for (off, v) in [(8, 0x200u32), (12, 0x1000), (16, 0x200), (20, 0x200)] {
            b[sec + off..sec + off + 4].copy_from_slice(&v.to_le_bytes());
        }
        b[0x200..0x400].fill(0xcc);
        b
    }

    #[test]
    fn attach_then_strip_gives_the_prepared_image_and_the_digest_ignores_the_signature() {
        let plain = image(0x403);
        let prepared = prepare(&plain).unwrap();
        assert_eq!(prepared.len(), 0x408);
        let signed = attach(&prepared, b"\x30\x03\x02\x01\x01").unwrap();
        assert_eq!(signed.len(), 0x408 + 16);
        assert_eq!(
            signatures(&signed).unwrap(),
            vec![&b"\x30\x03\x02\x01\x01"[..]]
        );
        assert_eq!(digest(&signed).unwrap(), digest(&prepared).unwrap());
        assert_eq!(strip(&signed).unwrap(), Some(prepared.clone()));
        assert_eq!(strip(&prepared).unwrap(), None);
        assert!(matches!(
            prepare(&signed),
            Err(AuthenticodeError::AlreadySigned(16))
        ));
    }

    #[test]
    fn the_digest_covers_every_byte_but_the_checksum_and_the_table_entry() {
        let prepared = prepare(&image(0x400)).unwrap();
        let base = digest(&prepared).unwrap();
        let (checksum, entry) = (0x58 + 64, 0x58 + 112 + 8 * 4);
        for at in [2, 0x100, 0x1ff, 0x200, 0x3ff, checksum - 12, entry + 8] {
            let mut changed = prepared.clone();
            changed[at] ^= 1;
            assert_ne!(digest(&changed).unwrap(), base, "byte {at:#x}");
        }
        for at in [checksum, checksum + 3, entry, entry + 3] {
            let mut changed = prepared.clone();
            changed[at] ^= 1;
            assert_eq!(digest(&changed).unwrap(), base, "byte {at:#x}");
        }
    }

    #[test]
    fn section_data_with_a_gap_is_not_signed() {
        let mut gap = image(0x600);
        let sec = 0x58 + 240;
        gap[sec + 20..sec + 24].copy_from_slice(&0x400u32.to_le_bytes());
        let err = prepare(&gap).unwrap_err();
        assert!(
            matches!(err, AuthenticodeError::NotContiguous("gap", 0x200, 0x400)),
            "{err}"
        );
    }
}
