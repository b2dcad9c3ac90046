//! `cargo xtask bench modules`: the modules step on Debian's whole module
//! tree and on a typical 20-driver subset, against `find lib/modules | cpio
//! -o -H newc | gzip -9` and `| pigz -9` on the same files.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::{shell, table, Row};
use crate::steps::modules::depmod::DepmodIndexes;
use crate::steps::modules::step::BuildModules;
use crate::steps::modules::Wanted;
use crate::steps::{Step, StepContext};
use crate::store::{Output, Store};

/// Drivers a bare-metal fleet image typically carries.
pub const SUBSET: [&str; 20] = [
    "virtio_pci",
    "virtio_net",
    "virtio_blk",
    "virtio_scsi",
    "e1000",
    "e1000e",
    "igb",
    "ixgbe",
    "i40e",
    "ice",
    "mlx4_en",
    "mlx5_core",
    "bnxt_en",
    "tg3",
    "r8169",
    "ahci",
    "nvme",
    "sd_mod",
    "ext4",
    "xfs",
];

pub struct Input<'a> {
    pub store: &'a Store,
    /// The unpacked kernel package (a tree in the store) and the same tree on disk.
    pub kernel: Output,
    pub package_root: &'a Path,
    pub kernel_release: &'a str,
    pub work: &'a Path,
    pub threads: usize,
}

pub fn run(input: &Input) -> Result<String> {
    let mut inputs = BTreeMap::from([("kernel".to_string(), input.kernel)]);
    let (indexes, depmod_secs) = timed(
        input,
        &inputs,
        &DepmodIndexes {
            kernel_release: input.kernel_release.into(),
        },
    )?;
    inputs.insert("indexes".into(), indexes["indexes"]);
    let mut rows = Vec::new();
    let whole = vec![Wanted::Glob("kernel/**".into())];
    kiln_row(
        input,
        &inputs,
        "kiln modules: whole tree (kernel/**)",
        whole,
        0,
        &mut rows,
    )?;
    let subset = SUBSET.iter().map(|n| Wanted::Name(n.to_string())).collect();
    kiln_row(
        input,
        &inputs,
        "kiln modules: 20 drivers + closure",
        subset,
        1,
        &mut rows,
    )?;
    // The pipelines pack exactly the files of Kiln's archives (extracted
    // again), depmod indexes included, so sizes compare like with like.
    let pipelines = [
        (0, "whole tree | cpio | gzip -9", "gzip -9 -n"),
        (0, "whole tree | cpio | pigz -9", "pigz -9 -n"),
        (1, "20 drivers | cpio | gzip -9", "gzip -9 -n"),
    ];
    for (i, (reference, name, compressor)) in pipelines.into_iter().enumerate() {
        let dir = input.work.join(format!("files-{reference}"));
        let out = input.work.join(format!("shell-{i}.cpio.gz"));
        rows.push(shell(&dir, "find lib", &out, name, compressor, reference)?);
    }
    Ok(format!(
        "{}\nThe full-tree depmod (cached once per kernel package, not in the rows above) took {depmod_secs:.1} s.\n",
        table(&rows)
    ))
}

fn timed(
    input: &Input,
    inputs: &BTreeMap<String, Output>,
    step: &dyn Step,
) -> Result<(BTreeMap<String, Output>, f64)> {
    let scratch = input.store.scratch("bench-modules")?;
    let ctx = StepContext::new(
        input.store,
        inputs.clone(),
        input.work.join("logs"),
        "bench".into(),
    );
    let start = Instant::now();
    let out = ctx
        .run_step(step, scratch.path())
        .with_context(|| format!("running {}", step.label()))?;
    Ok((out, start.elapsed().as_secs_f64()))
}

fn kiln_row(
    input: &Input,
    inputs: &BTreeMap<String, Output>,
    tool: &str,
    wanted: Vec<Wanted>,
    reference: usize,
    rows: &mut Vec<Row>,
) -> Result<()> {
    let origins = wanted.iter().map(|_| "bench".to_string()).collect();
    let step = BuildModules {
        name: "bench".into(),
        kernel_release: input.kernel_release.into(),
        wanted,
        modprobe_d: Vec::new(),
        firmware: 0,
        compressions: vec![crate::archive::Compression::Gzip],
        epoch: 1_700_000_000,
        origins,
        threads: input.threads,
    };
    let (out, seconds) = timed(input, inputs, &step)?;
    let Some(Output::File { digest, size }) = out.get("gz") else {
        bail!("the modules step wrote no gz archive")
    };
    rows.push(Row {
        tool: tool.into(),
        seconds,
        bytes: *size,
        reference,
    });
    extract(
        &input.store.read_blob(digest)?,
        &input.work.join(format!("files-{reference}")),
    )
}

/// Unpacks an archive so the pipelines see the same files. Kiln's own
/// reader, not GNU cpio: a large gzip archive holds several concatenated
/// newc archives (one per member), and `cpio -i` stops at the first trailer.
fn extract(archive: &[u8], dir: &Path) -> Result<()> {
    let plain = crate::archive::decompress_all(archive)?;
    for e in crate::archive::read_archive(&plain)? {
        let path = dir.join(&e.name);
        match (e.file_type(), e.link_target()) {
            (0o040000, _) => fs_err::create_dir_all(&path)?,
            (_, Some(target)) => fs_err::os::unix::fs::symlink(target, &path)?,
            (0o100000, _) => {
                fs_err::create_dir_all(path.parent().context("archive paths have parents")?)?;
                fs_err::write(&path, &e.data)?;
            }
            (other, _) => bail!("unexpected entry type {other:o} for {}", e.name),
        }
    }
    Ok(())
}
