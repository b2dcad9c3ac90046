//! Kernels in the diff: a bzImage's setup header and PE fields, its
//! compressed payload, and the initramfs built into it.

use super::*;

pub(super) fn is_bzimage(bytes: &[u8]) -> bool {
    bytes.len() > 0x250 && bytes[0x202..0x206] == *b"HdrS" && bytes[0x1fe..0x200] == [0x55, 0xaa]
}

/// The setup part (real-mode code and header) and the compressed kernel.
pub(super) fn bzimage_parts(bytes: &[u8]) -> Option<(&[u8], &[u8])> {
    let sects = match bytes[0x1f1] {
        0 => 4,
        n => usize::from(n),
    };
    let setup_len = (sects + 1) * 512;
    let u32_at = |o: usize| u32::from_le_bytes(bytes[o..o + 4].try_into().expect("4 bytes"));
    let offset = setup_len + usize::try_from(u32_at(0x248)).ok()?;
    let len = usize::try_from(u32_at(0x24c)).ok()?;
    Some((
        bytes.get(..setup_len)?,
        bytes.get(offset..offset.checked_add(len)?)?,
    ))
}

pub(super) fn bzimage(
    a: &[u8],
    b: &[u8],
    place: &mut Vec<String>,
    out: &mut Findings,
    depth: usize,
) -> bool {
    let (Some((sa, pa)), Some((sb, pb))) = (bzimage_parts(a), bzimage_parts(b)) else {
        return false;
    };
    if sa != sb {
        place.push("bzImage setup header".to_string());
        let before = out.list.len();
        setup_fields(a, b, place, out);
        if out.list.len() == before {
            bytes(sa, sb, place, out);
        }
        place.pop();
    }
    if pa == pb {
        return true;
    }
    place.push("bzImage compressed payload".to_string());
    match (decompress_one(pa), decompress_one(pb)) {
        (Some(va), Some(vb)) => match (embedded_initramfs(&va), embedded_initramfs(&vb)) {
            (Some((ia, ea)), Some((ib, eb))) if ia != ib => {
                place.push("embedded initramfs".to_string());
                let before = out.list.len();
                cpio_entries(&ea, &eb, place, out, depth + 1);
                if out.list.len() == before {
                    out.add(place, compressed_only(ia, ib));
                }
                place.pop();
            }
            _ => {
                place.push("vmlinux".to_string());
                bytes(&va, &vb, place, out);
                place.pop();
            }
        },
        _ => out.add(
            place,
            format!("{} (not a compression Kiln reads)", data_line(pa, pb)),
        ),
    }
    place.pop();
    true
}

/// The boot protocol's size fields (Documentation/arch/x86/boot.rst) and,
/// for an EFI-stub kernel, the PE header fields in front of them.
pub(super) fn setup_fields(a: &[u8], b: &[u8], place: &[String], out: &mut Findings) {
    const FIELDS: [(&str, usize, usize); 6] = [
        ("setup_sects", 0x1f1, 1),
        ("syssize", 0x1f4, 4),
        ("payload_offset", 0x248, 4),
        ("payload_length", 0x24c, 4),
        ("init_size", 0x260, 4),
        ("kernel_info_offset", 0x268, 4),
    ];
    if let (Ok(pa), Ok(pb)) = (pe::PeImage::parse(a), pe::PeImage::parse(b)) {
        let (ha, hb) = (&pa.headers, &pb.headers);
        let pairs = [
            ("SizeOfImage", ha.size_of_image, hb.size_of_image),
            (
                "SizeOfInitializedData",
                ha.size_of_initialized_data,
                hb.size_of_initialized_data,
            ),
            ("CheckSum", ha.checksum, hb.checksum),
        ];
        for (name, va, vb) in pairs {
            if va != vb {
                out.add(
                    place,
                    format!("EFI stub PE header field {name}: {va:#x} → {vb:#x}"),
                );
            }
        }
        for (sa, sb) in pa.sections.iter().zip(&pb.sections) {
            if sa != sb {
                out.add(
                    place,
                    format!("EFI stub PE section {} header: {sa:?} → {sb:?}", sa.name),
                );
            }
        }
    }
    for (name, at, len) in FIELDS {
        let value = |x: &[u8]| {
            let mut v = [0u8; 4];
            v[..len].copy_from_slice(&x[at..at + len]);
            u32::from_le_bytes(v)
        };
        let (va, vb) = (value(a), value(b));
        if va != vb {
            out.add(
                place,
                format!("field {name} (offset {at:#x}): {va:#x} → {vb:#x}"),
            );
        }
    }
}

/// Decodes one gzip, zstd or xz stream.
pub(super) fn decompress_one(bytes: &[u8]) -> Option<Vec<u8>> {
    let mut out = Vec::new();
    if bytes.starts_with(&[0x1f, 0x8b]) {
        flate2::read::GzDecoder::new(bytes)
            .read_to_end(&mut out)
            .ok()?;
    } else if bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        zstd::stream::read::Decoder::new(bytes)
            .ok()?
            .read_to_end(&mut out)
            .ok()?;
    } else if bytes.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        xz2::read::XzDecoder::new(bytes)
            .read_to_end(&mut out)
            .ok()?;
    } else {
        return None;
    }
    Some(out)
}

/// The initramfs built into a decompressed kernel: the first place that
/// holds a cpio archive, plain or compressed (the payload is stripped of
/// symbols, so `__initramfs_start` cannot be looked up).
pub(super) fn embedded_initramfs(vmlinux: &[u8]) -> Option<(&[u8], Vec<ReadEntry>)> {
    let magics: [&[u8]; 4] = [
        b"070701",
        &[0x1f, 0x8b, 0x08],
        &[0x28, 0xb5, 0x2f, 0xfd],
        &[0xfd, b'7', b'z', b'X', b'Z', 0],
    ];
    let mut at = 0;
    while at < vmlinux.len() {
        let rest = &vmlinux[at..];
        let next = magics.iter().filter_map(|m| find(rest, m)).min()?;
        let candidate = &rest[next..];
        let archive = if candidate.starts_with(b"0707") {
            newc::archive_len(candidate)
                .ok()
                .map(|len| candidate[..len].to_vec())
        } else {
            decompress_one(candidate)
        };
        if let Some(entries) = archive
            .and_then(|bytes| newc::read_archive(&bytes).ok())
            .filter(|e| !e.is_empty())
        {
            return Some((candidate, entries));
        }
        at += next + 1;
    }
    None
}
