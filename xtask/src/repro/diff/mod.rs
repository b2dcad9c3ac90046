//! The structural diff: why two versions of an artifact differ, down to the
//! smallest unit Kiln knows. Formats are recognised by their bytes, not by
//! file names, and a differing file inside a container is examined in turn:
//! an ISO's kernel leads to its compressed payload, then to the embedded
//! initramfs, then to the one member and field that changed.
//!
//! Each finding is a path of places (`ISO file boot/vmlinuz`, `bzImage
//! payload`, `cpio member etc/kiln-release`) and what differs there.

use std::collections::BTreeMap;
use std::io::Read;

use crate::archive::{authenticode, fat, iso9660, newc, pe, ReadEntry};
use crate::store::Digest;

mod kernel;

use kernel::{bzimage, is_bzimage};

/// Containers are opened this deep at most (an ISO holding a FAT image
/// holding a UKI holding an initramfs is four).
const MAX_DEPTH: usize = 6;
/// Findings listed per container before the rest are counted.
const MAX_FINDINGS: usize = 20;

/// One difference: where (outermost first) and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Finding {
    pub place: Vec<String>,
    pub what: String,
}

impl std::fmt::Display for Finding {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.place.is_empty() {
            write!(f, "{}", self.what)
        } else {
            write!(f, "{}: {}", self.place.join(" › "), self.what)
        }
    }
}

/// Why `a` and `b` differ (empty when they are equal).
pub fn explain(a: &[u8], b: &[u8]) -> Vec<Finding> {
    let mut out = Findings::default();
    compare(a, b, &mut Vec::new(), &mut out, 0);
    out.list
}

#[derive(Default)]
struct Findings {
    list: Vec<Finding>,
}

impl Findings {
    fn add(&mut self, place: &[String], what: String) {
        self.list.push(Finding {
            place: place.to_vec(),
            what,
        });
    }
}

fn compare(a: &[u8], b: &[u8], place: &mut Vec<String>, out: &mut Findings, depth: usize) {
    if a == b {
        return;
    }
    if a.starts_with(b"MZ") && b.starts_with(b"MZ") {
        if let Some(what) = signatures_only(a, b) {
            out.add(place, what);
            return;
        }
    }
    if depth < MAX_DEPTH {
        let before = out.list.len();
        let examined = if iso9660::is_iso(a) && iso9660::is_iso(b) {
            iso(a, b, place, out, depth)
        } else if is_bzimage(a) && is_bzimage(b) {
            bzimage(a, b, place, out, depth)
        } else if a.starts_with(b"MZ") && b.starts_with(b"MZ") {
            portable_executable(a, b, place, out, depth)
        } else if is_fat(a) && is_fat(b) {
            fat_image(a, b, place, out, depth)
        } else if is_cpio_image(a) && is_cpio_image(b) {
            cpio(a, b, place, out, depth)
        } else {
            false
        };
        // A container whose parts are all equal still differs somewhere:
        // fall through to the bytes when nothing more precise was found.
        if examined && out.list.len() > before {
            return;
        }
    }
    bytes(a, b, place, out);
}

/// Whether two PE images differ only by their Authenticode signatures (a
/// signed release against an unsigned rebuild, or two signers): each
/// without its certificate table, as it was signed, is the same bytes.
fn signatures_only(a: &[u8], b: &[u8]) -> Option<String> {
    let unsigned = |x: &[u8]| match authenticode::strip(x) {
        Ok(Some(stripped)) => Some((stripped, authenticode::signatures(x).ok()?.len())),
        Ok(None) => Some((authenticode::prepare(x).ok()?, 0)),
        Err(_) => None,
    };
    let ((ua, na), (ub, nb)) = (unsigned(a)?, unsigned(b)?);
    (ua == ub).then(|| {
        format!(
            "{SIGNATURES_ONLY} (run 1: {na}, run 2: {nb}; signed data sha256 {}… in both)",
            sha(&ua)
        )
    })
}

/// The finding of two PE images that differ only by their signatures.
const SIGNATURES_ONLY: &str = "identical but for the Authenticode signatures";

/// Whether two files differ only by Authenticode signatures, themselves or
/// in every file inside them that differs (an ISO's ESP's UKI): a signed
/// release compared with an unsigned rebuild.
pub fn differ_only_by_signatures(a: &[u8], b: &[u8]) -> bool {
    let findings = explain(a, b);
    // A signed file inside a container also differs in size there: every
    // finding must be about a file that differs only by its signatures.
    let signed: Vec<&Vec<String>> = findings
        .iter()
        .filter(|f| f.what.starts_with(SIGNATURES_ONLY))
        .map(|f| &f.place)
        .collect();
    !findings.is_empty() && findings.iter().all(|f| signed.contains(&&f.place))
}

fn sha(bytes: &[u8]) -> String {
    Digest::of_bytes(bytes).hex()[..12].to_string()
}

/// `data sha256 …→… (n → m bytes)`, the line for two different contents.
fn data_line(a: &[u8], b: &[u8]) -> String {
    let sizes = if a.len() == b.len() {
        format!("{} bytes", a.len())
    } else {
        format!("{} → {} bytes", a.len(), b.len())
    };
    format!("data sha256 {}… → {}… ({sizes})", sha(a), sha(b))
}

/// Compares parts keyed by name: only-in-one, then each field, then the
/// contents of parts present in both (examined recursively).
struct Parts<'a> {
    kind: &'static str,
    a: BTreeMap<String, Part<'a>>,
    b: BTreeMap<String, Part<'a>>,
}

/// Named values of one header or part, compared pairwise.
type Fields = Vec<(&'static str, String)>;

struct Part<'a> {
    fields: Fields,
    data: &'a [u8],
}

/// One finding per field whose value differs: `<what> <field>: a → b`.
fn fields_differ(place: &[String], out: &mut Findings, what: &str, a: Fields, b: Fields) {
    for ((name, va), (_, vb)) in a.into_iter().zip(b) {
        if va != vb {
            out.add(place, format!("{what} {name}: {va} → {vb}"));
        }
    }
}

impl<'a> Parts<'a> {
    fn new(kind: &'static str) -> Self {
        Parts {
            kind,
            a: BTreeMap::new(),
            b: BTreeMap::new(),
        }
    }

    /// Adds run 1's `a` and run 2's `b` items, each described as its name
    /// and part.
    fn fill<T>(&mut self, a: &'a [T], b: &'a [T], describe: impl Fn(&'a T) -> (String, Part<'a>)) {
        self.a.extend(a.iter().map(&describe));
        self.b.extend(b.iter().map(&describe));
    }

    fn report(self, place: &mut Vec<String>, out: &mut Findings, depth: usize) {
        let start = out.list.len();
        let mut hidden = 0usize;
        let full = |out: &Findings| out.list.len() - start >= MAX_FINDINGS;
        let mut note = |out: &mut Findings, place: &[String], what: String| {
            if full(out) {
                hidden += 1;
            } else {
                out.add(place, what);
            }
        };
        for name in self.a.keys().filter(|n| !self.b.contains_key(*n)) {
            note(out, place, format!("{} {name} only in run 1", self.kind));
        }
        for name in self.b.keys().filter(|n| !self.a.contains_key(*n)) {
            note(out, place, format!("{} {name} only in run 2", self.kind));
        }
        for (name, pa) in &self.a {
            let Some(pb) = self.b.get(name) else { continue };
            let here = format!("{} {name}", self.kind);
            for ((field, va), (_, vb)) in pa.fields.iter().zip(&pb.fields) {
                if va != vb {
                    place.push(here.clone());
                    note(out, place, format!("{field} {va} → {vb}"));
                    place.pop();
                }
            }
            if pa.data != pb.data {
                if full(out) {
                    note(out, place, String::new());
                    continue;
                }
                place.push(here);
                compare(pa.data, pb.data, place, out, depth + 1);
                place.pop();
            }
        }
        if hidden > 0 {
            out.add(place, format!("… and {hidden} more differences"));
        }
    }
}

// ---- cpio (any compression) ----

fn is_cpio_image(bytes: &[u8]) -> bool {
    bytes.starts_with(b"0707")
        || bytes.starts_with(&[0x1f, 0x8b])
        || bytes.starts_with(&[0x28, 0xb5, 0x2f, 0xfd])
        || bytes.starts_with(&[0xfd, b'7', b'z', b'X', b'Z', 0])
}

fn cpio(a: &[u8], b: &[u8], place: &mut Vec<String>, out: &mut Findings, depth: usize) -> bool {
    let (Ok(ra), Ok(rb)) = (
        crate::archive::decompress_all(a),
        crate::archive::decompress_all(b),
    ) else {
        return false;
    };
    let (Ok(ea), Ok(eb)) = (newc::read_archive(&ra), newc::read_archive(&rb)) else {
        // Compressed, but not an initramfs: compare what it holds.
        if ra == rb {
            out.add(place, compressed_only(a, b));
        } else {
            place.push("decompressed".to_string());
            compare(&ra, &rb, place, out, depth + 1);
            place.pop();
        }
        return true;
    };
    if ra == rb {
        out.add(place, compressed_only(a, b));
        return true;
    }
    cpio_entries(&ea, &eb, place, out, depth);
    if out.list.is_empty() || ea.len() == eb.len() {
        // Same members and fields: then their order differs.
        let names = |e: &[ReadEntry]| e.iter().map(|m| m.name.clone()).collect::<Vec<_>>();
        let (na, nb) = (names(&ea), names(&eb));
        if na != nb {
            if let Some(i) = na.iter().zip(&nb).position(|(x, y)| x != y) {
                out.add(
                    place,
                    format!("member order: position {i} is {} → {}", na[i], nb[i]),
                );
            }
        }
    }
    true
}

fn compressed_only(a: &[u8], b: &[u8]) -> String {
    format!(
        "the archive's contents are identical; only the compressed stream differs ({}): another compressor, level or version",
        data_line(a, b)
    )
}

fn cpio_entries(
    ea: &[ReadEntry],
    eb: &[ReadEntry],
    place: &mut Vec<String>,
    out: &mut Findings,
    depth: usize,
) {
    let part = |e: &ReadEntry| {
        let mut fields = vec![
            ("mode", format!("{:o}", e.mode)),
            ("uid", e.uid.to_string()),
            ("gid", e.gid.to_string()),
            ("mtime", e.mtime.to_string()),
            ("size", e.data.len().to_string()),
            ("nlink", e.nlink.to_string()),
            ("ino", e.ino.to_string()),
            ("rdev", format!("{}:{}", e.rdev_major, e.rdev_minor)),
            ("dev", format!("{}:{}", e.dev_major, e.dev_minor)),
            ("archive", e.archive.to_string()),
        ];
        if let Some(target) = e.link_target() {
            fields.push(("link target", target));
        }
        fields
    };
    let mut parts = Parts::new("cpio member");
    parts.fill(ea, eb, |e| {
        // A symlink's target is a field, not data to examine.
        let data: &[u8] = if e.link_target().is_some() {
            &[]
        } else {
            &e.data
        };
        let fields = part(e);
        (e.name.clone(), Part { fields, data })
    });
    parts.report(place, out, depth);
}

// ---- ISO 9660 ----

fn iso(a: &[u8], b: &[u8], place: &mut Vec<String>, out: &mut Findings, depth: usize) -> bool {
    let (Ok(ia), Ok(ib)) = (iso9660::read_image(a), iso9660::read_image(b)) else {
        return false;
    };
    let (pa, pb) = (&ia.primary, &ib.primary);
    let fields = |v: &iso9660::VolumeDescriptor| {
        vec![
            ("system id", v.system_id.clone()),
            ("volume id", v.volume_id.clone()),
            ("volume set id", v.volume_set_id.clone()),
            ("publisher id", v.publisher_id.clone()),
            ("preparer id", v.preparer_id.clone()),
            ("application id", v.application_id.clone()),
            ("volume space size", v.volume_space_size.to_string()),
            ("logical block size", v.logical_block_size.to_string()),
            ("creation date", v.creation.clone()),
            ("modification date", v.modification.clone()),
            ("expiration date", v.expiration.clone()),
            ("effective date", v.effective.clone()),
        ]
    };
    fields_differ(
        place,
        out,
        "volume descriptor field",
        fields(pa),
        fields(pb),
    );
    if ia.boot != ib.boot {
        out.add(
            place,
            format!("El Torito boot catalog: {:?} → {:?}", ia.boot, ib.boot),
        );
    }
    let mut parts = Parts::new("ISO file");
    parts.fill(&ia.entries, &ib.entries, |e| {
        let fields = vec![
            ("mode", e.mode.map(|m| format!("{m:o}")).unwrap_or_default()),
            ("uid", e.uid.map(|u| u.to_string()).unwrap_or_default()),
            ("gid", e.gid.map(|g| g.to_string()).unwrap_or_default()),
            ("mtime", e.mtime.clone()),
            ("symlink", e.symlink.clone().unwrap_or_default()),
            ("size", e.data.len().to_string()),
            ("extent", e.extent.to_string()),
        ];
        let data = &e.data[..];
        (e.path.clone(), Part { fields, data })
    });
    parts.report(place, out, depth);
    true
}

// ---- PE/COFF (UKIs, EFI binaries) ----

fn portable_executable<'a>(
    a: &'a [u8],
    b: &'a [u8],
    place: &mut Vec<String>,
    out: &mut Findings,
    depth: usize,
) -> bool {
    let (Ok(pa), Ok(pb)) = (pe::PeImage::parse(a), pe::PeImage::parse(b)) else {
        return false;
    };
    let header = |h: &pe::Headers| {
        vec![
            ("machine", format!("{:#x}", h.machine)),
            ("NumberOfSections", h.number_of_sections.to_string()),
            ("TimeDateStamp", h.timestamp.to_string()),
            ("SectionAlignment", h.section_alignment.to_string()),
            ("FileAlignment", h.file_alignment.to_string()),
            ("SizeOfImage", h.size_of_image.to_string()),
            ("SizeOfHeaders", h.size_of_headers.to_string()),
            (
                "SizeOfInitializedData",
                h.size_of_initialized_data.to_string(),
            ),
            ("CheckSum", format!("{:#x}", h.checksum)),
            ("Subsystem", h.subsystem.to_string()),
        ]
    };
    fields_differ(
        place,
        out,
        "PE header field",
        header(&pa.headers),
        header(&pb.headers),
    );
    let mut parts = Parts::new("PE section");
    let section = |image: &pe::PeImage<'a>, s: &pe::Section| {
        let fields = vec![
            ("VirtualAddress", format!("{:#x}", s.virtual_address)),
            ("VirtualSize", s.virtual_size.to_string()),
            ("PointerToRawData", format!("{:#x}", s.raw_offset)),
            ("SizeOfRawData", s.raw_size.to_string()),
            ("Characteristics", format!("{:#x}", s.characteristics)),
        ];
        let data = image.section_data(&s.name).unwrap_or_default();
        (s.name.clone(), Part { fields, data })
    };
    parts.a.extend(pa.sections.iter().map(|s| section(&pa, s)));
    parts.b.extend(pb.sections.iter().map(|s| section(&pb, s)));
    parts.report(place, out, depth);
    true
}

// ---- FAT (EFI system partitions) ----

fn is_fat(bytes: &[u8]) -> bool {
    bytes.len() >= 512
        && bytes[510..512] == [0x55, 0xaa]
        && (bytes[54..59] == *b"FAT12" || bytes[54..59] == *b"FAT16" || bytes[82..87] == *b"FAT32")
}

fn fat_image(
    a: &[u8],
    b: &[u8],
    place: &mut Vec<String>,
    out: &mut Findings,
    depth: usize,
) -> bool {
    let (Ok((ha, fa)), Ok((hb, fb))) = (fat::read_image(a), fat::read_image(b)) else {
        return false;
    };
    let header = |h: &fat::FatHeader| {
        vec![
            ("type", h.fat_type.clone()),
            ("volume id", format!("{:#010x}", h.volume_id)),
            ("volume label", h.volume_label.clone()),
            ("bytes per sector", h.bytes_per_sector.to_string()),
            ("sectors per cluster", h.sectors_per_cluster.to_string()),
            ("total sectors", h.total_sectors.to_string()),
        ]
    };
    fields_differ(
        place,
        out,
        "FAT boot sector field",
        header(&ha),
        header(&hb),
    );
    let mut parts = Parts::new("FAT file");
    parts.fill(&fa, &fb, |f| {
        let (y, mo, d, h, mi, s) = f.modified;
        let fields = vec![
            (
                "modified",
                format!("{y:04}-{mo:02}-{d:02} {h:02}:{mi:02}:{s:02}"),
            ),
            ("size", f.data.len().to_string()),
        ];
        let data = &f.data[..];
        (f.path.clone(), Part { fields, data })
    });
    parts.report(place, out, depth);
    true
}

// ---- bzImage: setup header, compressed payload, embedded initramfs ----

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

// ---- bytes ----

/// `bytes` as text when it is UTF-8 without control characters but line ends and tabs.
fn as_text(bytes: &[u8]) -> Option<&str> {
    let text = std::str::from_utf8(bytes).ok()?;
    let binary = text
        .chars()
        .any(|c| c.is_control() && !"\n\r\t".contains(c));
    (!binary).then_some(text)
}

/// The first differing offset with 16 bytes of each side around it, or the
/// first differing line of text.
fn bytes(a: &[u8], b: &[u8], place: &[String], out: &mut Findings) {
    if let (Some(ta), Some(tb)) = (as_text(a), as_text(b)) {
        let (la, lb): (Vec<_>, Vec<_>) = (ta.lines().collect(), tb.lines().collect());
        if let Some(i) = (0..la.len().max(lb.len())).find(|&i| la.get(i) != lb.get(i)) {
            let show = |l: Option<&&str>| l.map_or("(none)".to_string(), |l| format!("{l:?}"));
            out.add(
                place,
                format!(
                    "{}; first at line {}: {} → {}",
                    data_line(a, b),
                    i + 1,
                    show(la.get(i)),
                    show(lb.get(i))
                ),
            );
            return;
        }
    }
    let at = a
        .iter()
        .zip(b)
        .position(|(x, y)| x != y)
        .unwrap_or(a.len().min(b.len()));
    let window = |s: &[u8]| {
        let start = at.saturating_sub(8);
        let end = (at + 8).min(s.len());
        s.get(start..end)
            .unwrap_or_default()
            .iter()
            .map(|x| format!("{x:02x}"))
            .collect::<Vec<_>>()
            .join(" ")
    };
    out.add(
        place,
        format!(
            "{}; first at offset {at:#x}: [{}] → [{}] (from {:#x})",
            data_line(a, b),
            window(a),
            window(b),
            at.saturating_sub(8)
        ),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::archive::{write_archive, CompressOptions, Compression, Entry};

    fn initramfs(release: &[u8], compression: Compression) -> Vec<u8> {
        let entries = vec![
            Entry::dir("etc", 1),
            Entry::file("etc/kiln-release", 0o644, 1, release.to_vec()),
            Entry::file("init", 0o755, 1, b"#!/bin/sh\n".to_vec()),
        ];
        let mut out = Vec::new();
        write_archive(&entries, compression, &CompressOptions::default(), &mut out).unwrap();
        out
    }

    #[test]
    fn a_cpio_member_is_named_with_its_field() {
        for c in [
            Compression::Gzip,
            Compression::Zstd,
            Compression::Xz,
            Compression::None,
        ] {
            let found = explain(&initramfs(b"one\n", c), &initramfs(b"two!\n", c));
            let text: Vec<String> = found.iter().map(|f| f.to_string()).collect();
            assert!(
                text.iter()
                    .any(|l| l.starts_with("cpio member etc/kiln-release: size 4 → 5")),
                "{c:?}: {text:#?}"
            );
            assert!(
                text.iter()
                    .any(|l| l.starts_with("cpio member etc/kiln-release: data sha256")),
                "{text:#?}"
            );
            assert!(!text.iter().any(|l| l.contains("init:")), "{text:#?}");
        }
    }

    #[test]
    fn bytes_name_the_first_offset_and_text_the_first_line() {
        let found = explain(&[0, 1, 2, 3, 4], &[0, 1, 9, 3, 4]);
        assert!(
            found[0]
                .what
                .contains("first at offset 0x2: [00 01 02 03 04]"),
            "{found:?}"
        );
        let found = explain(b"a\nb\nc\n", b"a\nB\nc\n");
        assert!(
            found[0].what.ends_with("first at line 2: \"b\" → \"B\""),
            "{found:?}"
        );
        assert!(explain(b"same", b"same").is_empty());
    }

    #[test]
    fn a_recompressed_but_equal_archive_says_so() {
        let a = initramfs(b"x", Compression::Gzip);
        let mut b = Vec::new();
        let entries = vec![
            Entry::dir("etc", 1),
            Entry::file("etc/kiln-release", 0o644, 1, b"x".to_vec()),
            Entry::file("init", 0o755, 1, b"#!/bin/sh\n".to_vec()),
        ];
        let opts = CompressOptions {
            level: Some(1),
            ..CompressOptions::default()
        };
        write_archive(&entries, Compression::Gzip, &opts, &mut b).unwrap();
        assert_ne!(a, b);
        let found = explain(&a, &b);
        assert_eq!(found.len(), 1, "{found:?}");
        assert!(found[0].what.contains("only the compressed stream differs"));
    }
}
