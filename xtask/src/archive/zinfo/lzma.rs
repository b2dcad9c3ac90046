//! The pieces of zbin's packing a check needs: its CRC, its raw LZMA1 stream, its BCJ filter.

use std::io::Read;

use xz2::stream::Stream;

use super::{LZMA_DICT_SIZE, LZMA_PROPERTIES};

/// zbin.c `crc32_le(CRCSEED, …)`: the reflected CRC-32 (polynomial 0xedb88320) seeded with all
/// ones, but never inverted at the end as zlib's is. Run over the stream and the stored CRC it
/// gives zero, which is the test `unlzma.S` (`verify_crc32`) makes at boot.
pub(super) fn zbin_crc32(data: &[u8]) -> u32 {
    let mut crc = flate2::Crc::new();
    crc.update(data);
    !crc.sum()
}

/// Unpacks zbin's raw LZMA1 stream, expecting `want` bytes. xz2 0.1 has no raw decoder, but the
/// `.lzma` ("LZMA_Alone") format is the same raw stream behind a 13-byte header: properties,
/// dictionary size, and an uncompressed size of all ones (unknown), so that the stream must end
/// with its end-of-payload marker, as liblzma's LZMA1 encoder always writes for zbin.
pub(super) fn unpack(stream: &[u8], want: usize) -> Result<Vec<u8>, String> {
    let mut header = [0xff; 13];
    header[0] = LZMA_PROPERTIES;
    header[1..5].copy_from_slice(&LZMA_DICT_SIZE.to_le_bytes());
    let decoder = Stream::new_lzma_decoder(u64::MAX).map_err(|e| e.to_string())?;
    let mut reader = xz2::bufread::XzDecoder::new_stream((&header[..]).chain(stream), decoder);
    let mut out = Vec::with_capacity(want);
    (&mut reader)
        .take(want as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("does not unpack as raw LZMA1 (lc=2 lp=0 pb=0): {e}"))?;
    if out.len() != want {
        let more = if out.len() > want { "more than " } else { "" };
        return Err(format!(
            "unpacks to {more}{} bytes, but the record says {want}",
            out.len().min(want)
        ));
    }
    let unused = (header.len() + stream.len()) as u64 - reader.total_in();
    if unused != 0 {
        return Err(format!(
            "has {unused} bytes after its end-of-payload marker"
        ));
    }
    Ok(out)
}

/// zbin.c `bcj_filter`: every E8 (call) or E9 (jmp) opcode starts a 5-byte instruction whose
/// rel32 target, if it lands inside the data, becomes absolute. The targets that would then
/// collide with an unconverted value, [limit-offset, limit), move to the unused [-offset, 0).
pub(super) fn bcj_filter(data: &mut [u8]) {
    bcj(data, |target, offset, limit| {
        if (-offset..limit - offset).contains(&target) {
            target + offset
        } else if (limit - offset..limit).contains(&target) {
            target - limit
        } else {
            target
        }
    });
}

/// The exact inverse of [`bcj_filter`], as `unlzma.S` (`bcj_filter`) applies it at boot.
pub(super) fn bcj_unfilter(data: &mut [u8]) {
    bcj(data, |target, offset, limit| {
        if (0..limit).contains(&target) {
            target - offset
        } else if (-offset..0).contains(&target) {
            target + limit
        } else {
            target
        }
    });
}

/// Walks the instructions both directions share: the filter changes only rel32 fields, which
/// the walk steps over, so it finds the same opcodes in filtered and unfiltered data. Sums are
/// taken in i64 as zbin.c's (ssize_t) are, and stored back truncated to the field's 32 bits.
fn bcj(data: &mut [u8], convert: impl Fn(i64, i64, i64) -> i64) {
    let Some(limit) = data.len().checked_sub(5) else {
        return;
    };
    let mut offset = 0;
    while offset <= limit {
        if data[offset] & 0xfe != 0xe8 {
            offset += 1;
            continue;
        }
        let field = offset + 1..offset + 5;
        let target = i32::from_le_bytes(data[field.clone()].try_into().expect("4 bytes"));
        let converted = convert(i64::from(target), offset as i64, limit as i64) as i32;
        data[field].copy_from_slice(&converted.to_le_bytes());
        offset += 5;
    }
}
