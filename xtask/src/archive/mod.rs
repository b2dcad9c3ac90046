//! Deterministic archive writers and readers: newc cpio and its compression.
//!
//! Shape (after u-root's `pkg/cpio`): records are plain data ([`Entry`]); producers make them
//! ([`from_tree`], or a step building them by hand); small transforms fix them up ([`normalize`]:
//! sort by path bytes, add parent directories, reject bad paths); the [`Writer`] turns them into
//! bytes and knows nothing about filesystems. Invariant: the bytes are a function of the records
//! alone -- never of the clock, the host, readdir order, umask or the number of threads.
//!
//! ```text
//! from_tree(root, &TreeOptions)   -> Vec<Entry>      (sorted, parents added, hard links grouped)
//! normalize(entries, parent_mtime) -> Vec<Entry>
//! write_archive(&entries, Compression, &CompressOptions, &mut out)   the one call a step makes
//! Writer::new(out).write_entries(&entries)?.finish()                 plain newc, streaming
//! decompress_all(image) -> newc bytes;  read_archive(newc) -> Vec<ReadEntry>
//! zinfo::check_packed(&zinfo::parse(zinfo)?, bin, zbin)   iPXE's zbin output, proven
//! optrom::pad(&mut rom, 512, 0xff); optrom::fix_checksums(&mut rom)?   a ROM finished as make does
//! ```
//!
//! The newc bytes match the kernel's `usr/gen_init_cpio.c` (Linux 6.1) exactly: inodes from 721,
//! device 3:1 in every header, nlink 2 for directories/fifos/sockets, symlink targets stored with
//! their NUL, hard links sharing one inode with the data on the last link, `TRAILER!!!` padded to
//! 512 bytes. gzip images are several members, each one complete archive (see `gzip.rs` for the
//! initramfs.c lines that require it); zstd, xz and none are one archive.

pub mod authenticode;
pub mod compress;
pub mod entry;
pub mod fat;
pub mod gzip;
pub mod ipxe_script;
pub mod iso9660;
pub mod newc;
pub mod optrom;
pub mod pe;
pub mod rom_version;
pub mod time;
pub mod tree;
pub mod zinfo;

pub use compress::{
    decompress_all, write_archive, CompressOptions, Compression, DEFAULT_GZIP_LEVEL,
    DEFAULT_XZ_PRESET, DEFAULT_ZSTD_LEVEL,
};
pub use entry::{normalize, Data, Entry, Kind};
pub use newc::{archive_bytes, read_archive, ReadEntry, Writer};
pub use tree::{from_tree, TreeOptions};

/// One of Kiln's own writers, versioned: the steps that call it name it in
/// `Step::formats`, so its version is part of their keys. Bump a writer's
/// `FORMAT` version in the same change that alters the bytes it writes;
/// every entry made by the old code is then rebuilt instead of reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Format {
    pub name: &'static str,
    pub version: u32,
}

/// What the initramfs and module archive steps write through: records from
/// a tree, normalized, as newc, compressed.
pub const CPIO_IMAGE: &[Format] = &[tree::FORMAT, entry::FORMAT, newc::FORMAT, compress::FORMAT];
