//! `archive::zinfo` and `archive::optrom` checked against iPXE's own make: every `.zbin` that
//! `util/zbin` writes passes `check_packed` against its `.bin` and `.zinfo`, and a `.zbin`
//! padded and checksummed by Kiln is byte for byte the `.rom`/`.mrom` that `padimg.pl` and
//! `fixrom.pl` finish. Needs an iPXE tree (`KILN_SOURCE_IPXE=PATH`) and builds it once, which
//! takes a couple of minutes; skipped with a printed reason without one.

use std::path::{Path, PathBuf};

use kiln::archive::optrom::{fix_checksums, pad};
use kiln::archive::zinfo::{check_packed, parse, CheckError};

/// Every image zbin packs, and the two kinds of option ROM make finishes from one.
const IMAGES: [&str; 3] = ["ipxe.lkrn", "1af41000.rom", "15b31003.mrom"];
const ROMS: [&str; 2] = ["1af41000.rom", "15b31003.mrom"];
const EPOCH: u64 = 1_700_000_000;

/// Builds the images in a copy of `tree` under `dir`, naming zbin's inputs and output as goals
/// so that make keeps them; returns the `bin/` directory.
fn build(tree: &Path, dir: &Path) -> PathBuf {
    let root = dir.join("ipxe");
    crate::common::copy_tree(tree, &root);
    let goals = IMAGES
        .iter()
        .flat_map(|image| ["", ".bin", ".zinfo", ".zbin"].map(|ext| format!("bin/{image}{ext}")));
    let mut make = kiln::tools::clean_command("make", dir, EPOCH).unwrap();
    make.arg("-C")
        .arg(root.join("src"))
        .arg("-j2")
        .arg(format!("SOURCE_DATE_EPOCH={EPOCH}"))
        .args(goals);
    let out = make.output().expect("starting make");
    assert!(
        out.status.success(),
        "{make:?} failed ({}):\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    root.join("src/bin")
}

fn read(bin: &Path, file: &str) -> Vec<u8> {
    std::fs::read(bin.join(file)).unwrap_or_else(|e| panic!("reading {file}: {e}"))
}

fn check(bin: &Path, image: &str, output: &[u8]) -> Result<(), CheckError> {
    let records = parse(&read(bin, &format!("{image}.zinfo"))).unwrap();
    check_packed(&records, &read(bin, &format!("{image}.bin")), output)
}

fn assert_same(got: &[u8], want: &[u8], what: &str) {
    let first = got.iter().zip(want).position(|(a, b)| a != b);
    assert!(
        got == want,
        "{what}: {} bytes, make's {} bytes, first difference at {first:x?}",
        got.len(),
        want.len()
    );
}

/// Where fixrom.pl writes, found without `archive::optrom`: the image checksum and the $PnP,
/// UNDI and iPXE header checksums of each PC-AT image in the chain.
fn checksum_bytes(rom: &[u8]) -> Vec<usize> {
    let u16_at = |at: usize| usize::from(u16::from_le_bytes([rom[at], rom[at + 1]]));
    let mut found = Vec::new();
    let mut start = 0;
    loop {
        let pci = start + u16_at(start + 0x18);
        assert_eq!(&rom[pci..pci + 4], b"PCIR", "image at {start:#x}");
        if rom[pci + 0x14] == 0 {
            found.push(start + 0x06);
            for (pointer, signature, checksum) in
                [(0x1a, b"$PnP", 9), (0x16, b"UNDI", 5), (0x10, b"iPXE", 5)]
            {
                let header = start + u16_at(start + pointer);
                assert_eq!(&rom[header..header + 4], signature, "image at {start:#x}");
                found.push(header + checksum);
            }
        }
        if rom[pci + 0x15] & 0x80 != 0 {
            return found;
        }
        start += u16_at(pci + 0x10) * 512;
    }
}

#[test]
fn zbin_outputs_check_and_roms_finish_to_makes_bytes() {
    let Some(tree) = crate::common::ipxe_tree() else {
        return;
    };
    let dir = tempfile::tempdir().unwrap();
    let bin = build(&tree, dir.path());

    for image in IMAGES {
        let zbin = read(&bin, &format!("{image}.zbin"));
        check(&bin, image, &zbin).unwrap_or_else(|e| panic!("{image}.zbin: {e}"));
    }
    // make ships a .lkrn exactly as zbin wrote it.
    check(&bin, "ipxe.lkrn", &read(&bin, "ipxe.lkrn")).unwrap();

    let mut zbin = read(&bin, "1af41000.rom.zbin");
    let middle = zbin.len() / 2;
    zbin[middle] ^= 0x01;
    let err = check(&bin, "1af41000.rom", &zbin).unwrap_err();
    assert!(matches!(err, CheckError::Crc { .. }), "{err}");

    for rom in ROMS {
        let want = read(&bin, rom);
        let mut finished = read(&bin, &format!("{rom}.zbin"));
        pad(&mut finished, 512, 0xff);
        fix_checksums(&mut finished).unwrap();
        assert_same(&finished, &want, &format!("{rom}.zbin padded and fixed"));

        let positions = checksum_bytes(&want);
        assert_eq!(positions.len(), 4, "{rom}: one PC-AT image, three headers");
        let mut garbled = want.clone();
        for at in positions {
            garbled[at] ^= 0xa5;
        }
        fix_checksums(&mut garbled).unwrap();
        assert_same(
            &garbled,
            &want,
            &format!("{rom} with garbled checksums, fixed"),
        );
    }
}
