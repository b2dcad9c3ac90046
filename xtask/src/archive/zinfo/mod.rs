//! iPXE's `.zinfo` records, and a check that a file is what `util/zbin.c` makes of a `.bin`.
//!
//! iPXE links every image with a `.zinfo` section: 16-byte records (a four-letter type, then
//! little-endian fields) that `zbin` replays over the raw `.bin` to lay out the compressed
//! `.zbin`: COPY a range, PACK a range (in-place BCJ filter, raw LZMA1, a length word before and
//! a CRC32 after), PAYL to mark where the payload starts, ADDx/ADHx/ADPx/APPx to add a length to
//! a header field, BASE and ZREL for RISC-V relocations. [`parse`] reads the records;
//! [`check_packed`] replays them against a finished file without compressing anything: it
//! rebuilds every byte zbin writes, taking only the LZMA streams from the file after proving
//! that each one's CRC holds and that it unpacks (and un-filters, as `unlzma.S` does at boot) to
//! exactly its `.bin` range.
//!
//! Add records rewrite header bytes that an earlier COPY wrote, so comparing COPYs one at a time
//! would fail on exactly those bytes. The replay instead applies each add record the way zbin
//! does (the field's old value is a signed addend, the length is rounded up to the divisor) to
//! the rebuilt bytes, and compares the whole file at the end: the fixed-up fields are checked,
//! not skipped. ZREL is refused: how zbin lays it out depends on whether `zbin32` or `zbin64`
//! ran, which the records do not say, and only RISC-V images carry it.

mod check;
mod lzma;

pub use check::{check_packed, CheckError, Origin};

/// Every `.zinfo` record is 16 bytes (zbin.c `union zinfo_record`).
pub const RECORD_LEN: usize = 16;

/// lc=2 lp=0 pb=0 (zbin.c `LZMA_LC`/`LP`/`PB`, which `unlzma.S` hard-codes) as one LZMA
/// properties byte: (pb * 5 + lp) * 9 + lc.
const LZMA_PROPERTIES: u8 = 2;

/// The dictionary of zbin's preset, `LZMA_PRESET_DEFAULT | LZMA_PRESET_EXTREME` (level 6):
/// 8 MiB. A decoder needs a dictionary at least as large as the encoder's reach.
const LZMA_DICT_SIZE: u32 = 1 << 23;

/// zbin.c `alloc_output_file`: the output buffer starts as all 0xff, so alignment gaps are 0xff.
const GAP: u8 = 0xff;

/// One `.zinfo` record, as `util/zbin.c` reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Record {
    /// `COPY`: `len` bytes of the `.bin` from `offset`, after aligning the output to `align`.
    Copy { offset: u32, len: u32, align: u32 },
    /// `PACK`: the same range BCJ-filtered and LZMA-compressed, framed by a length word and a
    /// CRC32.
    Pack { offset: u32, len: u32, align: u32 },
    /// `PAYL`: align the output; the header ends and the payload starts here.
    Payload { align: u32 },
    /// One of the twelve `AD?x`/`APPx` records: add a length to a header field.
    Add(Add),
    /// `BASE`: the link address that ZREL's relocation offsets are relative to.
    Base { base: u64 },
    /// `ZREL`: apply and compress the ELF relocations at `offset..offset+len` of the `.bin`.
    Zrel { offset: u32, len: u32, machine: u32 },
}

/// An add record (zbin.c `process_zinfo_add`): the field of `width` bytes at `offset` gets the
/// chosen length divided by `divisor` (rounded up) added to its signed value.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Add {
    pub kind: AddKind,
    pub width: Width,
    pub offset: u32,
    pub divisor: u32,
}

/// Which length an add record adds, and where its offset counts from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AddKind {
    /// `ADDx`: everything written so far; the offset counts from the start of the output.
    Output,
    /// `ADHx`: the header, i.e. the output before PAYL.
    Header,
    /// `ADPx`: the payload, i.e. the output since PAYL.
    Payload,
    /// `APPx`: the payload, with the offset counting from the start of the payload.
    PayloadFromPayload,
}

/// The size of an add record's field: the type's last letter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Width {
    /// `B`: one byte.
    Byte,
    /// `W`: two bytes.
    Word,
    /// `L`: four bytes.
    Long,
}

/// zbin.c `zinfo_processors`: the add record types.
const ADD_TYPES: [(&str, AddKind, Width); 12] = [
    ("ADDB", AddKind::Output, Width::Byte),
    ("ADDW", AddKind::Output, Width::Word),
    ("ADDL", AddKind::Output, Width::Long),
    ("ADHB", AddKind::Header, Width::Byte),
    ("ADHW", AddKind::Header, Width::Word),
    ("ADHL", AddKind::Header, Width::Long),
    ("ADPB", AddKind::Payload, Width::Byte),
    ("ADPW", AddKind::Payload, Width::Word),
    ("ADPL", AddKind::Payload, Width::Long),
    ("APPB", AddKind::PayloadFromPayload, Width::Byte),
    ("APPW", AddKind::PayloadFromPayload, Width::Word),
    ("APPL", AddKind::PayloadFromPayload, Width::Long),
];

impl Width {
    pub fn bytes(self) -> usize {
        match self {
            Width::Byte => 1,
            Width::Word => 2,
            Width::Long => 4,
        }
    }

    /// The field as zbin reads it: a signed integer of this width.
    fn read(self, field: &[u8]) -> i64 {
        let mut raw = [0; 8];
        raw[..field.len()].copy_from_slice(field);
        let unused = 64 - 8 * field.len() as u32;
        (i64::from_le_bytes(raw) << unused) >> unused
    }

    /// The largest value the field holds (zbin.c's `mask`).
    fn max(self) -> i64 {
        (1 << (8 * self.bytes())) - 1
    }
}

impl Add {
    /// The record's four-letter type, e.g. `ADHW`.
    pub fn tag(&self) -> &'static str {
        ADD_TYPES
            .iter()
            .find(|(_, kind, width)| (*kind, *width) == (self.kind, self.width))
            .map(|(tag, ..)| *tag)
            .expect("ADD_TYPES lists every kind and width")
    }
}

impl Record {
    /// The record's four-letter type, e.g. `COPY`.
    pub fn tag(&self) -> &'static str {
        match self {
            Record::Copy { .. } => "COPY",
            Record::Pack { .. } => "PACK",
            Record::Payload { .. } => "PAYL",
            Record::Add(add) => add.tag(),
            Record::Base { .. } => "BASE",
            Record::Zrel { .. } => "ZREL",
        }
    }

    /// zbin.c's `align()` rounds with a mask, which is only right for a power of two, and an add
    /// record divides by its divisor: anything else would make zbin write garbage or crash.
    fn validate(&self, index: usize) -> Result<(), ZinfoError> {
        let (field, value) = match *self {
            Record::Copy { align, .. } | Record::Pack { align, .. } | Record::Payload { align } => {
                ("alignment", align)
            }
            Record::Add(add) => ("divisor", add.divisor),
            Record::Base { .. } | Record::Zrel { .. } => return Ok(()),
        };
        if value.is_power_of_two() {
            Ok(())
        } else {
            Err(ZinfoError::NotPowerOfTwo {
                index,
                tag: self.tag(),
                field,
                value,
            })
        }
    }
}

/// Why a `.zinfo` section could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ZinfoError {
    #[error(".zinfo is {0} bytes, which is not a whole number of 16-byte records")]
    Length(usize),
    #[error("record {index}: unknown type \"{tag}\"")]
    UnknownType { index: usize, tag: String },
    #[error("record {index}: {tag} {field} is {value:#x}, which is not a power of two")]
    NotPowerOfTwo {
        index: usize,
        tag: &'static str,
        field: &'static str,
        value: u32,
    },
}

/// Reads a `.zinfo` section (`objcopy -O binary -j .zinfo`, as iPXE's make does).
pub fn parse(zinfo: &[u8]) -> Result<Vec<Record>, ZinfoError> {
    if !zinfo.len().is_multiple_of(RECORD_LEN) {
        return Err(ZinfoError::Length(zinfo.len()));
    }
    zinfo
        .chunks_exact(RECORD_LEN)
        .enumerate()
        .map(|(index, raw)| parse_record(index, raw))
        .collect()
}

fn parse_record(index: usize, raw: &[u8]) -> Result<Record, ZinfoError> {
    let word = |n: usize| u32::from_le_bytes(raw[4 * n..4 * n + 4].try_into().expect("4 bytes"));
    let record = match &raw[..4] {
        b"COPY" => Record::Copy {
            offset: word(1),
            len: word(2),
            align: word(3),
        },
        b"PACK" => Record::Pack {
            offset: word(1),
            len: word(2),
            align: word(3),
        },
        b"PAYL" => Record::Payload { align: word(3) },
        b"BASE" => Record::Base {
            base: u64::from_le_bytes(raw[8..16].try_into().expect("8 bytes")),
        },
        b"ZREL" => Record::Zrel {
            offset: word(1),
            len: word(2),
            machine: word(3),
        },
        tag => {
            let (_, kind, width) = ADD_TYPES
                .iter()
                .find(|(name, ..)| name.as_bytes() == tag)
                .ok_or_else(|| ZinfoError::UnknownType {
                    index,
                    tag: tag.escape_ascii().to_string(),
                })?;
            Record::Add(Add {
                kind: *kind,
                width: *width,
                offset: word(1),
                divisor: word(2),
            })
        }
    };
    record.validate(index)?;
    Ok(record)
}

#[cfg(test)]
mod tests {
    use std::io::Read;

    use xz2::stream::Stream;

    use super::lzma::*;
    use super::*;
    use xz2::stream::LzmaOptions;

    /// `xz2`'s preset flag `LZMA_PRESET_EXTREME` (lzma/container.h), which it does not export.
    const PRESET_EXTREME: u32 = 1 << 31;

    fn raw(tag: &[u8; 4], words: [u32; 3]) -> Vec<u8> {
        let mut r = tag.to_vec();
        for w in words {
            r.extend_from_slice(&w.to_le_bytes());
        }
        r
    }

    /// zbin's LZMA1 encoder: preset 6 extreme with lc=2 lp=0 pb=0, end marker, no header.
    fn lzma1(data: &[u8]) -> Vec<u8> {
        let mut options = LzmaOptions::new_preset(6 | PRESET_EXTREME).unwrap();
        options
            .literal_context_bits(2)
            .literal_position_bits(0)
            .position_bits(0);
        let stream = Stream::new_lzma_encoder(&options).unwrap();
        let mut packed = Vec::new();
        xz2::read::XzEncoder::new_stream(data, stream)
            .read_to_end(&mut packed)
            .unwrap();
        assert_eq!(packed[0], LZMA_PROPERTIES);
        assert_eq!(packed[1..5], LZMA_DICT_SIZE.to_le_bytes());
        packed.split_off(13)
    }

    /// What zbin.c writes for COPY, PACK and PAYL records (add records are applied by hand in
    /// the tests that use them, so that the checker's own code is not the oracle).
    fn zbin(bin: &[u8], records: &[Record]) -> Vec<u8> {
        let mut input = bin.to_vec();
        let mut out = Vec::new();
        for record in records {
            match *record {
                Record::Copy { offset, len, align } => {
                    out.resize(out.len().next_multiple_of(align as usize), 0xff);
                    out.extend_from_slice(&input[offset as usize..][..len as usize]);
                }
                Record::Pack { offset, len, align } => {
                    out.resize(out.len().next_multiple_of(align as usize), 0xff);
                    let range = offset as usize..(offset + len) as usize;
                    bcj_filter(&mut input[range.clone()]);
                    let packed = lzma1(&input[range]);
                    out.extend_from_slice(&(packed.len() as u32 + 4).to_le_bytes());
                    out.extend_from_slice(&packed);
                    out.extend_from_slice(&zbin_crc32(&packed).to_le_bytes());
                }
                Record::Payload { align } => {
                    out.resize(out.len().next_multiple_of(align as usize), 0xff);
                }
                _ => panic!("the test zbin does not do {}", record.tag()),
            }
        }
        out
    }

    /// A 0x40-byte header, then a body of x86-ish bytes with calls and jumps whose targets lie
    /// inside the body, past its end, before its start, and in the range the filter folds.
    fn synthetic_bin() -> Vec<u8> {
        let mut bin: Vec<u8> = (0..0x40u32).map(|i| (i * 7) as u8).collect();
        let body_len = 0x1000;
        let mut body: Vec<u8> = (0..body_len).map(|i| (i % 61) as u8).collect();
        let limit = body_len - 5;
        let jumps: [(usize, u8, i32); 6] = [
            (0x010, 0xe8, 0x100),
            (0x200, 0xe9, -0x180),
            (0x400, 0xe8, 0x7fff_0000),
            (0x600, 0xe9, -0x700),
            (0x800, 0xe8, limit - 0x10),
            (0xff0, 0xe8, 0),
        ];
        for (at, opcode, target) in jumps {
            body[at] = opcode;
            body[at + 1..at + 5].copy_from_slice(&target.to_le_bytes());
        }
        bin.extend_from_slice(&body);
        bin
    }

    fn synthetic_records() -> Vec<Record> {
        vec![
            Record::Copy {
                offset: 0,
                len: 0x3a,
                align: 1,
            },
            Record::Pack {
                offset: 0x40,
                len: 0x1000,
                align: 16,
            },
            Record::Payload { align: 512 },
        ]
    }

    /// Where the synthetic PACK's length word lands: after the 0x3a-byte COPY, aligned to 16.
    const PACK_AT: usize = 0x40;

    #[test]
    fn a_zbin_output_passes() {
        let (bin, records) = (synthetic_bin(), synthetic_records());
        let out = zbin(&bin, &records);
        assert_eq!(out.len(), 512, "PAYL aligns the end");
        check_packed(&records, &bin, &out).unwrap();
    }

    #[test]
    fn padding_after_the_output_is_ignored() {
        let (bin, records) = (synthetic_bin(), synthetic_records());
        let mut out = zbin(&bin, &records);
        out.resize(4096, 0xff);
        check_packed(&records, &bin, &out).unwrap();
    }

    #[test]
    fn a_changed_packed_byte_fails_the_crc() {
        let (bin, records) = (synthetic_bin(), synthetic_records());
        let mut out = zbin(&bin, &records);
        out[PACK_AT + 20] ^= 0x01;
        let err = check_packed(&records, &bin, &out).unwrap_err();
        assert!(matches!(err, CheckError::Crc { index: 1, .. }), "{err}");
    }

    #[test]
    fn a_bad_crc_is_named() {
        let (bin, records) = (synthetic_bin(), synthetic_records());
        let mut out = zbin(&bin, &records);
        let word = u32::from_le_bytes(out[PACK_AT..PACK_AT + 4].try_into().unwrap()) as usize;
        out[PACK_AT + word] ^= 0x80;
        let err = check_packed(&records, &bin, &out).unwrap_err();
        assert!(matches!(err, CheckError::Crc { index: 1, .. }), "{err}");
        assert!(err
            .to_string()
            .starts_with("record 1: the PACK CRC32 at output"));
    }

    #[test]
    fn a_body_that_differs_from_the_bin_names_the_bin_offset() {
        let (bin, records) = (synthetic_bin(), synthetic_records());
        let out = zbin(&bin, &records);
        let mut other = bin.clone();
        other[0x40 + 0x123] ^= 0x01;
        let err = check_packed(&records, &other, &out).unwrap_err();
        assert!(
            matches!(
                err,
                CheckError::PackDiffers {
                    index: 1,
                    bin_offset: 0x163,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_changed_copied_byte_names_its_record_and_offset() {
        let (bin, records) = (synthetic_bin(), synthetic_records());
        let mut out = zbin(&bin, &records);
        out[0x21] ^= 0xff;
        let err = check_packed(&records, &bin, &out).unwrap_err();
        assert_eq!(
            err.to_string(),
            format!(
                "output byte 0x21 is {:#04x}, but record 0 (COPY) puts {:#04x} there",
                bin[0x21] ^ 0xff,
                bin[0x21]
            )
        );
    }

    #[test]
    fn alignment_gaps_are_0xff() {
        let (bin, records) = (synthetic_bin(), synthetic_records());
        let mut out = zbin(&bin, &records);
        out[0x3c] = 0;
        let err = check_packed(&records, &bin, &out).unwrap_err();
        assert!(
            err.to_string()
                .ends_with("the alignment gap before record 1 puts 0xff there"),
            "{err}"
        );
    }

    #[test]
    fn a_truncated_output_is_named() {
        let (bin, records) = (synthetic_bin(), synthetic_records());
        let out = zbin(&bin, &records);
        let err = check_packed(&records, &bin, &out[..out.len() - 1]).unwrap_err();
        assert!(
            matches!(
                err,
                CheckError::Truncated {
                    origin: Origin::Gap(2),
                    ..
                }
            ),
            "{err}"
        );
        let err = check_packed(&records, &bin, &out[..0x60]).unwrap_err();
        assert!(
            matches!(
                err,
                CheckError::Truncated {
                    origin: Origin::Record(1, "PACK"),
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_range_past_the_bin_is_an_error() {
        let (bin, records) = (synthetic_bin(), synthetic_records());
        let out = zbin(&bin, &records);
        let err = check_packed(&records, &bin[..0x1000], &out).unwrap_err();
        assert!(
            matches!(err, CheckError::InputOverrun { index: 1, .. }),
            "{err}"
        );
    }

    fn add(kind: AddKind, width: Width, offset: u32, divisor: u32) -> Record {
        Record::Add(Add {
            kind,
            width,
            offset,
            divisor,
        })
    }

    /// The synthetic records with `extra` after them, checked against the zbin output of the
    /// synthetic records alone.
    fn check_with(extra: Record) -> Result<(), CheckError> {
        let (bin, mut records) = (synthetic_bin(), synthetic_records());
        let out = zbin(&bin, &records);
        records.push(extra);
        check_packed(&records, &bin, &out)
    }

    #[test]
    fn add_records_are_applied_to_the_fields_they_name() {
        let (bin, mut records) = (synthetic_bin(), synthetic_records());
        let mut out = zbin(&bin, &records);
        // Output 512 bytes, header (before PAYL) 512, payload 0: ADDW of 512/16 onto the
        // little-endian word 0x150e at 0x02, then ADHB of 512/512 onto its low byte.
        records.push(add(AddKind::Output, Width::Word, 2, 16));
        records.push(add(AddKind::Header, Width::Byte, 2, 512));
        assert_eq!(out[2..4], [0x0e, 0x15]);
        out[2..4].copy_from_slice(&(0x150e_u16 + 32 + 1).to_le_bytes());
        check_packed(&records, &bin, &out).unwrap();

        out[2] -= 1;
        let err = check_packed(&records, &bin, &out).unwrap_err();
        assert!(
            err.to_string().ends_with("record 4 (ADHB) puts 0x2f there"),
            "{err}"
        );
    }

    #[test]
    fn an_add_that_overflows_its_field_is_an_error() {
        // The gap byte 0xff reads as -1; -1 + 512 does not fit a byte.
        let err = check_with(add(AddKind::Output, Width::Byte, 0x3f, 1)).unwrap_err();
        assert!(
            matches!(err, CheckError::AddOverflow { index: 3, .. }),
            "{err}"
        );
    }

    #[test]
    fn an_add_past_the_output_so_far_is_an_error() {
        let err = check_with(add(AddKind::PayloadFromPayload, Width::Long, 0, 512)).unwrap_err();
        assert!(
            matches!(err, CheckError::AddOutside { index: 3, .. }),
            "{err}"
        );
    }

    #[test]
    fn a_copy_after_a_pack_of_the_same_range_sees_filtered_bytes() {
        let bin = synthetic_bin();
        let records = [
            Record::Pack {
                offset: 0x40,
                len: 0x1000,
                align: 1,
            },
            Record::Copy {
                offset: 0x40,
                len: 0x1000,
                align: 1,
            },
        ];
        let out = zbin(&bin, &records);
        check_packed(&records, &bin, &out).unwrap();
        let mut filtered = bin[0x40..].to_vec();
        bcj_filter(&mut filtered);
        assert_ne!(filtered, bin[0x40..]);
        assert!(out.ends_with(&filtered));
    }

    #[test]
    fn zrel_is_refused() {
        let zrel = Record::Zrel {
            offset: 0,
            len: 0,
            machine: 243,
        };
        let err = check_with(zrel).unwrap_err();
        assert!(matches!(err, CheckError::Zrel { index: 3 }), "{err}");
    }

    #[test]
    fn the_bcj_filter_converts_in_range_targets_and_folds_the_rest() {
        let mut data = vec![0u8; 0x40];
        let limit: i32 = 0x40 - 5;
        // In range: 0x10 + 0x08 -> 0x18. Out of range: unchanged. In [limit-offset, limit),
        // where an absolute target could also come from a converted one: limit-0x10 -> -0x10.
        data[0x10] = 0xe8;
        data[0x11..0x15].copy_from_slice(&0x08_i32.to_le_bytes());
        data[0x20] = 0xe9;
        data[0x21..0x25].copy_from_slice(&0x1000_i32.to_le_bytes());
        data[0x30] = 0xe8;
        data[0x31..0x35].copy_from_slice(&(limit - 0x10).to_le_bytes());
        let original = data.clone();
        bcj_filter(&mut data);
        assert_eq!(data[0x11..0x15], 0x18_i32.to_le_bytes());
        assert_eq!(data[0x21..0x25], 0x1000_i32.to_le_bytes());
        assert_eq!(data[0x31..0x35], (-0x10_i32).to_le_bytes());
        bcj_unfilter(&mut data);
        assert_eq!(data, original);
    }

    #[test]
    fn the_bcj_unfilter_inverts_the_filter_on_every_opcode_density() {
        for len in [0, 4, 5, 6, 64, 4096] {
            for seed in 1..20u32 {
                let mut x = seed.wrapping_mul(0x9e37_79b9) | 1;
                let original: Vec<u8> = (0..len)
                    .map(|_| {
                        x ^= x << 13;
                        x ^= x >> 17;
                        x ^= x << 5;
                        // Frequent E8/E9 bytes, small targets, around the boundaries.
                        match x % 4 {
                            0 => 0xe8 | (x >> 8) as u8 & 1,
                            1 => 0xff,
                            _ => (x >> 16) as u8 % 8,
                        }
                    })
                    .collect();
                let mut data = original.clone();
                bcj_filter(&mut data);
                bcj_unfilter(&mut data);
                assert_eq!(data, original, "len {len} seed {seed}");
            }
        }
    }

    #[test]
    fn the_crc_is_crc32_without_the_final_inversion() {
        assert_eq!(zbin_crc32(b"123456789"), !0xcbf4_3926);
        let mut framed = b"some packed bytes".to_vec();
        framed.extend_from_slice(&zbin_crc32(&framed).to_le_bytes());
        assert_eq!(
            zbin_crc32(&framed),
            0,
            "unlzma.S expects zero over stream + CRC"
        );
    }

    #[test]
    fn records_parse_as_zbin_reads_them() {
        let mut zinfo = raw(b"COPY", [0, 0x9a5, 16]);
        zinfo.extend(raw(b"PACK", [0x9b0, 0xf8, 16]));
        zinfo.extend(raw(b"PAYL", [0, 0, 512]));
        zinfo.extend(raw(b"APPW", [0x2c, 512, 0]));
        zinfo.extend(raw(b"BASE", [0, 0x1000, 0x8000_0000]));
        zinfo.extend(raw(b"ZREL", [0x100, 0x30, 243]));
        let records = parse(&zinfo).unwrap();
        assert_eq!(
            records,
            [
                Record::Copy {
                    offset: 0,
                    len: 0x9a5,
                    align: 16
                },
                Record::Pack {
                    offset: 0x9b0,
                    len: 0xf8,
                    align: 16
                },
                Record::Payload { align: 512 },
                Record::Add(Add {
                    kind: AddKind::PayloadFromPayload,
                    width: Width::Word,
                    offset: 0x2c,
                    divisor: 512
                }),
                Record::Base {
                    base: 0x8000_0000_0000_1000
                },
                Record::Zrel {
                    offset: 0x100,
                    len: 0x30,
                    machine: 243
                },
            ]
        );
        let tags: Vec<_> = records.iter().map(Record::tag).collect();
        assert_eq!(tags, ["COPY", "PACK", "PAYL", "APPW", "BASE", "ZREL"]);
    }

    #[test]
    fn every_add_type_parses_back_to_its_tag() {
        for (tag, kind, width) in ADD_TYPES {
            let records = parse(&raw(tag.as_bytes().try_into().unwrap(), [4, 16, 0])).unwrap();
            assert_eq!(records[0].tag(), tag);
            assert!(matches!(records[0], Record::Add(a) if a.kind == kind && a.width == width));
        }
    }

    #[test]
    fn a_length_that_is_not_whole_records_is_an_error() {
        let err = parse(&[0; 20]).unwrap_err();
        assert_eq!(
            err.to_string(),
            ".zinfo is 20 bytes, which is not a whole number of 16-byte records"
        );
    }

    #[test]
    fn an_unknown_type_is_named_with_its_index() {
        let mut zinfo = raw(b"COPY", [0, 1, 1]).repeat(3);
        zinfo.extend(raw(b"QQQQ", [0, 0, 0]));
        let err = parse(&zinfo).unwrap_err();
        assert_eq!(err.to_string(), "record 3: unknown type \"QQQQ\"");
        let err = parse(&raw(b"CO\0Y", [0, 0, 1])).unwrap_err();
        assert_eq!(err.to_string(), "record 0: unknown type \"CO\\x00Y\"");
    }

    #[test]
    fn zero_and_non_power_of_two_alignments_are_errors() {
        let err = parse(&raw(b"PAYL", [0, 0, 0])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "record 0: PAYL alignment is 0x0, which is not a power of two"
        );
        let mut zinfo = raw(b"COPY", [0, 1, 1]);
        zinfo.extend(raw(b"PACK", [0, 1, 24]));
        let err = parse(&zinfo).unwrap_err();
        assert_eq!(
            err.to_string(),
            "record 1: PACK alignment is 0x18, which is not a power of two"
        );
        let err = parse(&raw(b"ADHW", [0x32, 0, 0])).unwrap_err();
        assert_eq!(
            err.to_string(),
            "record 0: ADHW divisor is 0x0, which is not a power of two"
        );
    }

    #[test]
    fn hand_made_records_are_validated_before_the_replay() {
        let records = [Record::Copy {
            offset: 0,
            len: 1,
            align: 0,
        }];
        let err = check_packed(&records, &[0], &[0]).unwrap_err();
        assert!(matches!(err, CheckError::Zinfo(_)), "{err}");
    }
}
