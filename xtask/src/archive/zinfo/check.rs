//! The replay behind [`check_packed`]: zbin's output rebuilt record by record from the
//! `.bin`, the LZMA streams taken from the file under test once proven, and the whole compared.

use std::ops::Range;

use super::lzma::{bcj_filter, bcj_unfilter, unpack, zbin_crc32};
use super::*;

/// What put a byte into the rebuilt output: a record, or the alignment gap before one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Origin {
    Record(usize, &'static str),
    Gap(usize),
}

impl std::fmt::Display for Origin {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Origin::Record(index, tag) => write!(f, "record {index} ({tag})"),
            Origin::Gap(index) => write!(f, "the alignment gap before record {index}"),
        }
    }
}

/// Why a file is not what zbin makes of a `.bin` and its `.zinfo`.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    #[error(transparent)]
    Zinfo(#[from] ZinfoError),
    #[error(
        "record {index}: {tag} reads .bin bytes {start:#x}..{end:#x}, \
         but the .bin is {len:#x} bytes"
    )]
    InputOverrun {
        index: usize,
        tag: &'static str,
        start: u64,
        end: u64,
        len: usize,
    },
    #[error("{origin} writes output up to {end:#x}, but the output ends at {len:#x}")]
    Truncated {
        origin: Origin,
        end: usize,
        len: usize,
    },
    #[error(
        "record {index}: the PACK length word at output {at:#x} is {word}, \
         less than the 4-byte CRC it counts"
    )]
    LengthWord { index: usize, at: usize, word: u32 },
    #[error(
        "record {index}: the PACK CRC32 at output {at:#x} is {stored:#010x}, \
         but the packed bytes give {computed:#010x}"
    )]
    Crc {
        index: usize,
        at: usize,
        stored: u32,
        computed: u32,
    },
    #[error("record {index}: the PACK stream at output {at:#x} {reason}")]
    Unpack {
        index: usize,
        at: usize,
        reason: String,
    },
    #[error(
        "record {index}: PACK unpacks to {got:#04x} at .bin offset {bin_offset:#x}, \
         where the .bin has {want:#04x}"
    )]
    PackDiffers {
        index: usize,
        bin_offset: usize,
        got: u8,
        want: u8,
    },
    #[error("output byte {at:#x} is {got:#04x}, but {origin} puts {want:#04x} there")]
    Differs {
        at: usize,
        got: u8,
        want: u8,
        origin: Origin,
    },
    #[error(
        "record {index}: the {tag} field at output {at:#x} is not inside \
         the {len:#x} bytes written so far"
    )]
    AddOutside {
        index: usize,
        tag: &'static str,
        at: usize,
        len: usize,
    },
    #[error(
        "record {index}: {tag} at output {at:#x}: {addend} + {size} does not fit \
         a {width}-byte field"
    )]
    AddOverflow {
        index: usize,
        tag: &'static str,
        at: usize,
        addend: i64,
        size: usize,
        width: usize,
    },
    #[error(
        "record {index}: ZREL cannot be checked: its layout depends on whether zbin32 or \
         zbin64 wrote it, which the records do not say (only RISC-V images have it)"
    )]
    Zrel { index: usize },
}

/// Checks that `output` is what zbin writes for `input` (the `.bin`) and `records` (its
/// `.zinfo`), without compressing: see the module documentation for how. Bytes after the end
/// of zbin's output (padding added later) are not looked at; fix-ups made after zbin, such as
/// an option ROM's checksums, are differences.
pub fn check_packed(records: &[Record], input: &[u8], output: &[u8]) -> Result<(), CheckError> {
    for (index, record) in records.iter().enumerate() {
        record.validate(index)?;
    }
    let mut replay = Replay {
        work: input.to_vec(),
        output,
        expected: Vec::new(),
        origins: Vec::new(),
        header_len: 0,
    };
    for (index, record) in records.iter().enumerate() {
        replay.record(index, record)?;
    }
    replay.compare()
}

/// zbin's state while replaying the records.
struct Replay<'a> {
    /// zbin's input buffer: the `.bin`, with every range packed so far BCJ-filtered in place.
    work: Vec<u8>,
    /// The file under test.
    output: &'a [u8],
    /// The bytes zbin writes, rebuilt.
    expected: Vec<u8>,
    /// Who wrote which bytes of `expected`; a later entry overrides an earlier one.
    origins: Vec<(Range<usize>, Origin)>,
    /// zbin.c `hdr_len`: the output length at PAYL.
    header_len: usize,
}

impl Replay<'_> {
    fn record(&mut self, index: usize, record: &Record) -> Result<(), CheckError> {
        match *record {
            Record::Copy { offset, len, align } => {
                let range = self.input_range(index, record.tag(), offset, len)?;
                self.align(index, align);
                let start = self.expected.len();
                self.expected.extend_from_slice(&self.work[range]);
                self.wrote(start, Origin::Record(index, "COPY"));
            }
            Record::Pack { offset, len, align } => {
                let range = self.input_range(index, record.tag(), offset, len)?;
                self.align(index, align);
                self.pack(index, range)?;
            }
            Record::Payload { align } => {
                self.align(index, align);
                self.header_len = self.expected.len();
            }
            Record::Add(add) => self.add(index, &add)?,
            // Only ZREL reads the base.
            Record::Base { .. } => {}
            Record::Zrel { .. } => return Err(CheckError::Zrel { index }),
        }
        Ok(())
    }

    /// zbin.c "Input buffer overrun": the record's range must lie inside the `.bin`.
    fn input_range(
        &self,
        index: usize,
        tag: &'static str,
        offset: u32,
        len: u32,
    ) -> Result<Range<usize>, CheckError> {
        let start = offset as usize;
        let end = start.checked_add(len as usize);
        end.filter(|&end| end <= self.work.len())
            .map(|end| start..end)
            .ok_or(CheckError::InputOverrun {
                index,
                tag,
                start: u64::from(offset),
                end: u64::from(offset) + u64::from(len),
                len: self.work.len(),
            })
    }

    fn align(&mut self, index: usize, align: u32) {
        let start = self.expected.len();
        let end = start.next_multiple_of(align as usize);
        self.expected.resize(end, GAP);
        self.wrote(start, Origin::Gap(index));
    }

    /// Records that `origin` wrote `start..` up to the current end.
    fn wrote(&mut self, start: usize, origin: Origin) {
        let end = self.expected.len();
        if start < end {
            self.origins.push((start..end, origin));
        }
    }

    /// zbin.c `process_zinfo_pack`: a length word (stream length + 4), the raw LZMA1 stream,
    /// the CRC32 of the stream. The stream is taken from the output once it is proven.
    fn pack(&mut self, index: usize, range: Range<usize>) -> Result<(), CheckError> {
        let at = self.expected.len();
        let frame = Frame::read(self.output, index, at)?;
        let stream = &self.output[frame.stream.clone()];
        let computed = zbin_crc32(stream);
        if computed != frame.crc {
            return Err(CheckError::Crc {
                index,
                at: frame.stream.end,
                stored: frame.crc,
                computed,
            });
        }
        let mut unpacked = unpack(stream, range.len()).map_err(|reason| CheckError::Unpack {
            index,
            at,
            reason,
        })?;
        bcj_unfilter(&mut unpacked);
        let original = &self.work[range.clone()];
        if let Some(i) = first_difference(&unpacked, original) {
            return Err(CheckError::PackDiffers {
                index,
                bin_offset: range.start + i,
                got: unpacked[i],
                want: original[i],
            });
        }
        // zbin.c filters its input buffer in place before compressing it.
        bcj_filter(&mut self.work[range]);
        self.expected.extend_from_slice(&self.output[at..frame.end]);
        self.wrote(at, Origin::Record(index, "PACK"));
        Ok(())
    }

    /// zbin.c `process_zinfo_add` and its twelve callers.
    fn add(&mut self, index: usize, add: &Add) -> Result<(), CheckError> {
        let len = self.expected.len();
        let payload = len - self.header_len;
        let (measured, base) = match add.kind {
            AddKind::Output => (len, 0),
            AddKind::Header => (self.header_len, 0),
            AddKind::Payload => (payload, 0),
            AddKind::PayloadFromPayload => (payload, self.header_len),
        };
        let at = base.saturating_add(add.offset as usize);
        let field = at
            .checked_add(add.width.bytes())
            .filter(|&end| end <= len)
            .map(|end| at..end)
            .ok_or(CheckError::AddOutside {
                index,
                tag: add.tag(),
                at,
                len,
            })?;
        let divisor = add.divisor as usize;
        let size = measured.div_ceil(divisor);
        let addend = add.width.read(&self.expected[field.clone()]);
        let value = i64::try_from(size)
            .ok()
            .and_then(|size| addend.checked_add(size))
            .filter(|value| (0..=add.width.max()).contains(value))
            .ok_or(CheckError::AddOverflow {
                index,
                tag: add.tag(),
                at,
                addend,
                size,
                width: add.width.bytes(),
            })?;
        self.expected[field.clone()].copy_from_slice(&value.to_le_bytes()[..field.len()]);
        self.origins.push((field, Origin::Record(index, add.tag())));
        Ok(())
    }

    /// The whole rebuilt output against the file: the first difference, or a short file.
    fn compare(&self) -> Result<(), CheckError> {
        if let Some(at) = first_difference(&self.expected, self.output) {
            return Err(CheckError::Differs {
                at,
                got: self.output[at],
                want: self.expected[at],
                origin: self.origin(at),
            });
        }
        if self.output.len() < self.expected.len() {
            return Err(CheckError::Truncated {
                origin: self.origin(self.output.len()),
                end: self.expected.len(),
                len: self.output.len(),
            });
        }
        Ok(())
    }

    fn origin(&self, at: usize) -> Origin {
        self.origins
            .iter()
            .rev()
            .find(|(range, _)| range.contains(&at))
            .map(|(_, origin)| *origin)
            .expect("every rebuilt byte has an origin")
    }
}

/// Where a PACK record's bytes are in the output.
struct Frame {
    stream: Range<usize>,
    crc: u32,
    /// End of the CRC: where the next record starts.
    end: usize,
}

impl Frame {
    fn read(output: &[u8], index: usize, at: usize) -> Result<Frame, CheckError> {
        let u32_at = |offset: usize| {
            output
                .get(offset..offset + 4)
                .map(|b| u32::from_le_bytes(b.try_into().expect("4 bytes")))
                .ok_or(CheckError::Truncated {
                    origin: Origin::Record(index, "PACK"),
                    end: offset + 4,
                    len: output.len(),
                })
        };
        let word = u32_at(at)?;
        let stream_len = word
            .checked_sub(4)
            .ok_or(CheckError::LengthWord { index, at, word })?;
        let stream = at + 4..at + 4 + stream_len as usize;
        let crc = u32_at(stream.end)?;
        let end = stream.end + 4;
        Ok(Frame { stream, crc, end })
    }
}

pub(super) fn first_difference(a: &[u8], b: &[u8]) -> Option<usize> {
    a.iter().zip(b).position(|(x, y)| x != y)
}
