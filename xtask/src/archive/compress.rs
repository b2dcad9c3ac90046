//! Compressed initramfs images: the one call a build step makes (`write_archive`) and the
//! auto-detecting inverse used by tests and the structural diff (`decompress_all`).

use std::fmt;
use std::io::{BufWriter, Read, Write};
use std::str::FromStr;

use anyhow::{bail, ensure, Context, Result};

use super::entry::Entry;
use super::gzip;
use super::newc::{archive_len, Writer};

/// The key-bearing version (`super::Format`) of the compressed images: gzip
/// members (`gzip.rs`), zstd and xz settings: bump it when the bytes change.
pub const FORMAT: super::Format = super::Format {
    name: "compress",
    version: 1,
};

/// Chosen from the module-tree benchmark (Debian linux-image-6.1.0-50-amd64, 2 cores): libdeflate
/// level 6 gave 111.3 MB in 4.2 s against `cpio | gzip -9` 111.7 MB in 120 s (29x) and
/// `pigz -9` 111.9 MB in 58 s (14x). Level 8 is 1.002x smaller but 2.8x slower; level 9+ miss
/// the "10x faster than gzip -9" target.
pub const DEFAULT_GZIP_LEVEL: i32 = 6;
pub const DEFAULT_ZSTD_LEVEL: i32 = 3;
pub const DEFAULT_XZ_PRESET: u32 = 6;

/// Serialized by its file extension (`gz`, `zst`, `xz`, `none`), the names
/// step keys have always recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
pub enum Compression {
    #[serde(rename = "gz")]
    Gzip,
    #[serde(rename = "zst")]
    Zstd,
    #[serde(rename = "xz")]
    Xz,
    #[serde(rename = "none")]
    None,
}

impl FromStr for Compression {
    type Err = anyhow::Error;

    fn from_str(s: &str) -> Result<Compression> {
        match s {
            "gz" | "gzip" => Ok(Compression::Gzip),
            "zst" | "zstd" => Ok(Compression::Zstd),
            "xz" => Ok(Compression::Xz),
            "none" => Ok(Compression::None),
            _ => {
                bail!("unknown compression {s:?}; expected one of gzip (gz), zstd (zst), xz, none")
            }
        }
    }
}

impl fmt::Display for Compression {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Compression::Gzip => "gzip",
            Compression::Zstd => "zstd",
            Compression::Xz => "xz",
            Compression::None => "none",
        })
    }
}

impl Compression {
    /// The file extension: `modules.cpio.gz`; also how it serializes.
    pub fn extension(self) -> &'static str {
        match self {
            Compression::Gzip => "gz",
            Compression::Zstd => "zst",
            Compression::Xz => "xz",
            Compression::None => "none",
        }
    }

    /// Levels the compressor accepts (libdeflate 1-12, zstd 1-22, xz 0-9).
    pub fn levels(self) -> std::ops::RangeInclusive<i32> {
        match self {
            Compression::Gzip => 1..=12,
            Compression::Zstd => 1..=22,
            Compression::Xz => 0..=9,
            Compression::None => 0..=0,
        }
    }

    /// The level used when none is given. Steps record the effective level
    /// in their keys, so changing a default here rebuilds what it affects.
    pub fn default_level(self) -> Option<i32> {
        match self {
            Compression::Gzip => Some(DEFAULT_GZIP_LEVEL),
            Compression::Zstd => Some(DEFAULT_ZSTD_LEVEL),
            Compression::Xz => Some(DEFAULT_XZ_PRESET as i32),
            Compression::None => None,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CompressOptions {
    /// libdeflate 1-12 for gzip, zstd's levels, xz presets 0-9; `None` means the defaults above.
    pub level: Option<i32>,
    /// Worker threads for gzip and zstd; 0 means all available cores. Never changes the bytes.
    pub threads: usize,
    /// Uncompressed bytes per gzip member (see gzip.rs); only tests should change it.
    pub gzip_segment_bytes: u64,
}

impl Default for CompressOptions {
    fn default() -> CompressOptions {
        CompressOptions {
            level: None,
            threads: 0,
            gzip_segment_bytes: gzip::DEFAULT_SEGMENT_BYTES,
        }
    }
}

impl CompressOptions {
    fn thread_count(&self) -> usize {
        match self.threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// Write `entries` (already normalized) as a compressed initramfs image. gzip yields one member
/// per ~64 MiB segment, each a complete archive; the others yield one archive in one stream.
pub fn write_archive(
    entries: &[Entry],
    compression: Compression,
    opts: &CompressOptions,
    out: &mut dyn Write,
) -> Result<()> {
    match compression {
        Compression::Gzip => {
            let level = opts.level.unwrap_or(DEFAULT_GZIP_LEVEL);
            ensure!(
                (1..=12).contains(&level),
                "gzip (libdeflate) level {level} is not in 1-12"
            );
            gzip::write_gzip(
                entries,
                level,
                opts.thread_count(),
                opts.gzip_segment_bytes,
                out,
            )
        }
        Compression::Zstd => write_zstd(entries, opts, out),
        Compression::Xz => write_xz(entries, opts, out),
        Compression::None => {
            write_newc(entries, BufWriter::with_capacity(1 << 20, out))?;
            Ok(())
        }
    }
}

fn write_newc<W: Write>(entries: &[Entry], out: W) -> Result<W> {
    let mut writer = Writer::new(out);
    writer.write_entries(entries)?;
    writer.finish()
}

/// One frame. With nbWorkers ≥ 1 zstd cuts jobs by its own job size, not by the worker count, so
/// the frame is the same for 1, 2 or 64 workers (it differs from nbWorkers = 0, which we never use).
fn write_zstd(entries: &[Entry], opts: &CompressOptions, out: &mut dyn Write) -> Result<()> {
    let level = opts.level.unwrap_or(DEFAULT_ZSTD_LEVEL);
    let range = zstd::compression_level_range();
    ensure!(
        range.contains(&level),
        "zstd level {level} is not in {range:?}"
    );
    let mut encoder = zstd::stream::Encoder::new(out, level).context("creating zstd encoder")?;
    encoder
        .multithread(opts.thread_count() as u32)
        .context("enabling zstd worker threads (zstdmt)")?;
    // The zstd CLI writes a checksum by default; lib/zstd in the kernel verifies it.
    encoder
        .include_checksum(true)
        .context("zstd checksum flag")?;
    let buffered = write_newc(entries, BufWriter::with_capacity(1 << 20, encoder))?;
    let encoder = buffered.into_inner().map_err(|e| e.into_error())?;
    encoder.finish().context("finishing zstd frame")?;
    Ok(())
}

/// One xz stream with a CRC32 check: lib/xz in the kernel is built without XZ_USE_CRC64
/// (lib/decompress_unxz.c), so `xz`'s default CRC64 would be rejected at boot.
fn write_xz(entries: &[Entry], opts: &CompressOptions, out: &mut dyn Write) -> Result<()> {
    let preset = opts.level.unwrap_or(DEFAULT_XZ_PRESET as i32);
    ensure!(
        (0..=9).contains(&preset),
        "xz preset {preset} is not in 0-9"
    );
    let stream = xz2::stream::Stream::new_easy_encoder(preset as u32, xz2::stream::Check::Crc32)
        .context("creating xz encoder")?;
    let encoder = xz2::write::XzEncoder::new_stream(out, stream);
    let buffered = write_newc(entries, BufWriter::with_capacity(1 << 20, encoder))?;
    let encoder = buffered.into_inner().map_err(|e| e.into_error())?;
    encoder.finish().context("finishing xz stream")?;
    Ok(())
}

/// Decompress an initramfs image the way `unpack_to_rootfs` walks it: any sequence of
/// uncompressed newc archives, gzip members, zstd frames and xz streams, with zero padding
/// between them. Returns the concatenated cpio bytes.
pub fn decompress_all(bytes: &[u8]) -> Result<Vec<u8>> {
    let mut out = Vec::new();
    let mut pos = 0;
    while pos < bytes.len() {
        let rest = &bytes[pos..];
        let used = if rest[0] == 0 {
            1
        } else {
            decompress_one(rest, &mut out).with_context(|| format!("at byte offset {pos}"))?
        };
        pos += used;
    }
    Ok(out)
}

/// Decode one stream at the start of `rest` into `out`; returns how many input bytes it used.
fn decompress_one(rest: &[u8], out: &mut Vec<u8>) -> Result<usize> {
    if rest.starts_with(b"0707") {
        // Keep the zero padding after the trailer so a plain image decodes to itself.
        let end = archive_len(rest)?;
        let len = end + rest[end..].iter().take_while(|&&b| b == 0).count();
        out.extend_from_slice(&rest[..len]);
        Ok(len)
    } else if rest.starts_with(&[0x1f, 0x8b]) {
        let mut decoder = flate2::bufread::GzDecoder::new(rest);
        decoder.read_to_end(out).context("decoding gzip member")?;
        Ok(rest.len() - decoder.into_inner().len())
    } else if rest.starts_with(&[0x28, 0xb5, 0x2f, 0xfd]) {
        let len = zstd::zstd_safe::find_frame_compressed_size(rest).map_err(|code| {
            anyhow::anyhow!("bad zstd frame: {}", zstd::zstd_safe::get_error_name(code))
        })?;
        let mut decoder = zstd::stream::read::Decoder::with_buffer(&rest[..len])?.single_frame();
        decoder.read_to_end(out).context("decoding zstd frame")?;
        Ok(len)
    } else if rest.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0]) {
        let mut decoder = xz2::bufread::XzDecoder::new(rest);
        decoder.read_to_end(out).context("decoding xz stream")?;
        Ok(rest.len() - decoder.into_inner().len())
    } else {
        bail!(
            "unknown data (starts {:02x?}): not newc, gzip, zstd or xz",
            &rest[..rest.len().min(6)]
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::newc::{archive_bytes, read_archive};

    fn sample() -> Vec<Entry> {
        (0..50)
            .map(|i| {
                Entry::file(
                    &format!("f{i:02}"),
                    0o644,
                    1,
                    format!("{i}").repeat(999).into_bytes(),
                )
            })
            .collect()
    }

    fn pack(c: Compression, opts: &CompressOptions) -> Vec<u8> {
        let mut out = Vec::new();
        write_archive(&sample(), c, opts, &mut out).unwrap();
        out
    }

    #[test]
    fn compression_names_parse_and_print() {
        for (name, c) in [
            ("gz", Compression::Gzip),
            ("zst", Compression::Zstd),
            ("xz", Compression::Xz),
        ] {
            assert_eq!(name.parse::<Compression>().unwrap(), c);
            assert_eq!(c.to_string().parse::<Compression>().unwrap(), c);
            // Step keys hold the extension: it must never change.
            assert_eq!(c.extension(), name);
            assert_eq!(serde_json::to_value(c).unwrap(), name);
        }
        assert_eq!(serde_json::to_value(Compression::None).unwrap(), "none");
        assert!("lz4".parse::<Compression>().is_err());
    }

    #[test]
    fn every_compression_round_trips_to_the_plain_archive() {
        let plain = archive_bytes(&sample()).unwrap();
        for c in [
            Compression::Gzip,
            Compression::Zstd,
            Compression::Xz,
            Compression::None,
        ] {
            let packed = pack(c, &CompressOptions::default());
            assert!(
                decompress_all(&packed).unwrap() == plain,
                "{c} does not round-trip"
            );
        }
    }

    #[test]
    fn zstd_frames_are_identical_for_one_two_and_four_workers() {
        let frames: Vec<_> = [1, 2, 4]
            .iter()
            .map(|&threads| {
                pack(
                    Compression::Zstd,
                    &CompressOptions {
                        threads,
                        ..Default::default()
                    },
                )
            })
            .collect();
        assert_eq!(frames[0], frames[1]);
        assert_eq!(frames[0], frames[2]);
    }

    #[test]
    fn gzip_header_has_no_mtime_and_no_name() {
        let packed = pack(Compression::Gzip, &CompressOptions::default());
        assert_eq!(&packed[..8], &[0x1f, 0x8b, 8, 0, 0, 0, 0, 0]);
    }

    #[test]
    fn xz_streams_use_a_crc32_check() {
        let packed = pack(Compression::Xz, &CompressOptions::default());
        // Stream header: magic (6 bytes), then stream flags 0x00 0x01 (check ID 1 = CRC32).
        assert_eq!(&packed[6..8], &[0, 1]);
    }

    #[test]
    fn decompress_all_reads_a_plain_archive_followed_by_compressed_ones() {
        let first = archive_bytes(&[Entry::dir("kernel", 0)]).unwrap();
        let mut image = first.clone();
        image.extend(pack(Compression::Zstd, &CompressOptions::default()));
        image.extend([0; 8]);
        image.extend(pack(Compression::Xz, &CompressOptions::default()));
        let read = read_archive(&decompress_all(&image).unwrap()).unwrap();
        assert_eq!(read.len(), 1 + 50 + 50);
        assert_eq!(read.last().unwrap().archive, 2);
    }
}
