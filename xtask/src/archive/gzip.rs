//! Parallel, deterministic gzip of a newc archive, split into independently compressed members.
//!
//! Why members must hold whole archives: init/initramfs.c `unpack_to_rootfs` calls the
//! decompressor once per gzip member (lib/decompress_inflate.c stops at the member's end) and then
//! checks, at line 553-554,
//!     `if (state != Reset) error("junk at the end of compressed archive");`
//! so the cpio parser must be between archives -- after a `TRAILER!!!` and its padding -- when a
//! member ends. Several complete archives in a row are fine: `flush_buffer` (lines 484-496) goes
//! from Reset back to Start when it sees the next `0` of a header magic, and `unpack_to_rootfs`
//! (lines 521-535) skips zero bytes between members. So each member here is one complete archive.
//!
//! Hard-link groups are never split: `do_name` calls `free_hash()` at every trailer (line 377), so
//! a later archive cannot link to a name from an earlier one.

use std::collections::{HashMap, HashSet, VecDeque};
use std::io::Write;
use std::ops::Range;

use anyhow::{anyhow, Context, Result};
use libdeflater::{CompressionLvl, Compressor};

use super::entry::Entry;
use super::newc::{encoded_len, Writer, FIRST_INO};

/// Uncompressed newc bytes per gzip member, about.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

/// One gzip member: a run of entries and the inode number its archive starts at (numbers keep
/// counting across segments so they stay unique in the whole image).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Segment {
    pub entries: Range<usize>,
    pub first_ino: u32,
    /// Uncompressed size of the segment's archive without the trailer.
    pub bytes: u64,
}

/// Index of the last member of each hard-link group.
fn last_links(entries: &[Entry]) -> HashMap<u64, usize> {
    let mut last = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        if let Some(id) = e.link {
            last.insert(id, i);
        }
    }
    last
}

/// Cut `entries` at entry boundaries into segments of at least `limit` bytes (the last may be
/// smaller), never inside a hard-link group. The plan depends only on the entries, so the
/// output is the same for any thread count.
pub fn plan_segments(entries: &[Entry], limit: u64) -> Vec<Segment> {
    let last = last_links(entries);
    let mut segments = Vec::new();
    let mut start = 0;
    let mut bytes = 0;
    let mut inodes = 0u32;
    let mut first_ino = FIRST_INO;
    let mut seen = HashSet::new();
    let mut open_until = 0; // highest last-link index of any group seen in this segment
    for (i, e) in entries.iter().enumerate() {
        let with_data = e.link.is_none_or(|id| last[&id] == i);
        bytes += encoded_len(e, with_data);
        if let Some(id) = e.link {
            open_until = open_until.max(last[&id]);
        }
        if e.link.is_none_or(|id| seen.insert(id)) {
            inodes += 1;
        }
        if bytes >= limit && open_until <= i {
            segments.push(Segment {
                entries: start..i + 1,
                first_ino,
                bytes,
            });
            first_ino += inodes;
            (start, bytes, inodes) = (i + 1, 0, 0);
        }
    }
    if start < entries.len() || segments.is_empty() {
        segments.push(Segment {
            entries: start..entries.len(),
            first_ino,
            bytes,
        });
    }
    segments
}

/// The uncompressed archive for one segment.
pub fn segment_archive(entries: &[Entry], segment: &Segment) -> Result<Vec<u8>> {
    let capacity = segment.bytes as usize + 1024;
    let mut writer = Writer::with_first_ino(Vec::with_capacity(capacity), segment.first_ino);
    writer.write_entries(&entries[segment.entries.clone()])?;
    writer.finish()
}

fn compress_segment(entries: &[Entry], segment: &Segment, level: i32) -> Result<Vec<u8>> {
    let archive = segment_archive(entries, segment)?;
    let lvl =
        CompressionLvl::new(level).map_err(|_| anyhow!("invalid libdeflate level {level}"))?;
    // libdeflate's gzip wrapper writes a fixed 10-byte header: mtime 0, no name, XFL from the
    // level, OS 255 ("unknown"); GNU gzip -n would write OS 3. Nothing host-dependent.
    let mut compressor = Compressor::new(lvl);
    let mut member = vec![0u8; compressor.gzip_compress_bound(archive.len())];
    let len = compressor
        .gzip_compress(&archive, &mut member)
        .map_err(|e| anyhow!("libdeflate gzip failed: {e:?}"))?;
    member.truncate(len);
    Ok(member)
}

/// Compress segments on up to `threads` worker threads and write the members in order. At most
/// `threads` segments are being built/compressed while one finished member is written.
pub fn write_gzip(
    entries: &[Entry],
    level: i32,
    threads: usize,
    segment_bytes: u64,
    out: &mut dyn Write,
) -> Result<()> {
    let segments = plan_segments(entries, segment_bytes.max(1));
    let threads = threads.max(1);
    std::thread::scope(|scope| {
        let mut pending = VecDeque::new();
        let mut next = segments.iter().enumerate();
        loop {
            while pending.len() < threads {
                let Some((index, segment)) = next.next() else {
                    break;
                };
                let job = scope.spawn(move || compress_segment(entries, segment, level));
                pending.push_back((index, job));
            }
            let Some((index, job)) = pending.pop_front() else {
                return Ok(());
            };
            let member = job
                .join()
                .map_err(|_| anyhow!("gzip worker for segment {index} panicked"))?
                .with_context(|| format!("compressing gzip segment {index}"))?;
            out.write_all(&member)
                .with_context(|| format!("writing gzip member {index}"))?;
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::newc::read_archive;

    fn files(n: usize, size: usize) -> Vec<Entry> {
        (0..n)
            .map(|i| Entry::file(&format!("f{i:03}"), 0o644, 0, vec![i as u8; size]))
            .collect()
    }

    #[test]
    fn segments_cut_at_the_limit_and_continue_inode_numbers() {
        let entries = files(10, 1000);
        let segments = plan_segments(&entries, 3000);
        let ranges: Vec<_> = segments.iter().map(|s| s.entries.clone()).collect();
        assert_eq!(ranges, [0..3, 3..6, 6..9, 9..10]);
        assert_eq!(segments[1].first_ino, FIRST_INO + 3);
    }

    #[test]
    fn segments_never_split_a_hard_link_group() {
        let mut entries = files(6, 1000);
        entries[1].link = Some(1);
        entries[4].link = Some(1);
        entries[4].kind = entries[1].kind.clone();
        let segments = plan_segments(&entries, 1500);
        let holding = |i: usize| segments.iter().position(|s| s.entries.contains(&i));
        assert_eq!(holding(1), holding(4), "{segments:?}");
        // The linked pair is one inode: the segment after it starts 4 numbers later, not 5.
        let after = segments.iter().find(|s| s.entries.start == 5).unwrap();
        assert_eq!(after.first_ino, FIRST_INO + 4);
    }

    #[test]
    fn small_trees_are_one_member_with_one_archive() {
        let entries = files(3, 10);
        assert_eq!(plan_segments(&entries, DEFAULT_SEGMENT_BYTES).len(), 1);
        assert_eq!(plan_segments(&[], DEFAULT_SEGMENT_BYTES).len(), 1);
    }

    #[test]
    fn gzip_members_are_identical_for_any_thread_count() {
        let entries = files(40, 5000);
        let mut outputs = Vec::new();
        for threads in [1, 2, 4] {
            let mut out = Vec::new();
            write_gzip(&entries, 6, threads, 20_000, &mut out).unwrap();
            outputs.push(out);
        }
        assert_eq!(outputs[0], outputs[1]);
        assert_eq!(outputs[0], outputs[2]);
        let plain = crate::archive::compress::decompress_all(&outputs[0]).unwrap();
        let read = read_archive(&plain).unwrap();
        assert_eq!(read.len(), 40);
        assert!(read.last().unwrap().archive >= 3);
    }
}
