//! Benchmark: Kiln's archive writer against the classic shell pipelines on the same tree.
//!
//! Developer tooling, not a build step: it spawns `sh`, `cpio`, `gzip`, `pigz` and `zstd`
//! directly because its whole point is to time those programs.

use fs_err::File;
use std::io::BufWriter;
use std::path::Path;
use std::time::Instant;

use anyhow::{Context, Result};

use super::{shell, size_of, table, Row};
use crate::archive::{
    from_tree, write_archive, CompressOptions, Compression, TreeOptions, DEFAULT_GZIP_LEVEL,
};

/// Pack `tree` with Kiln (gzip at several libdeflate levels, zstd 3 and 19) and with shell
/// pipelines, writing outputs under `work`; return a Markdown table.
pub fn run(tree: &Path, work: &Path, threads: usize) -> Result<String> {
    fs_err::create_dir_all(work).with_context(|| format!("creating {}", work.display()))?;
    let mut rows = Vec::new();
    let gzip_ref = rows.len();
    rows.push(kiln(
        tree,
        work,
        Compression::Gzip,
        DEFAULT_GZIP_LEVEL,
        threads,
        gzip_ref,
    )?);
    for level in [6, 8, 9, 12] {
        if level != DEFAULT_GZIP_LEVEL {
            rows.push(kiln(
                tree,
                work,
                Compression::Gzip,
                level,
                threads,
                gzip_ref,
            )?);
        }
    }
    let zstd3 = rows.len();
    rows.push(kiln(tree, work, Compression::Zstd, 3, threads, zstd3)?);
    let zstd19 = rows.len();
    rows.push(kiln(tree, work, Compression::Zstd, 19, threads, zstd19)?);
    let pipelines = [
        ("cpio | gzip -9", "gzip -9 -n", gzip_ref),
        ("cpio | pigz -9", "pigz -9 -n", gzip_ref),
        ("cpio | zstd -3 -T0", "zstd -q -3 -T0", zstd3),
        ("cpio | zstd -19 -T0", "zstd -q -19 -T0", zstd19),
    ];
    for (i, (name, compressor, reference)) in pipelines.into_iter().enumerate() {
        let out = work.join(format!("shell-{i}.cpio"));
        rows.push(shell(tree, "find .", &out, name, compressor, reference)?);
    }
    Ok(table(&rows))
}

fn kiln(
    tree: &Path,
    work: &Path,
    c: Compression,
    level: i32,
    threads: usize,
    reference: usize,
) -> Result<Row> {
    let path = work.join(format!("kiln-{c}-{level}.cpio"));
    let start = Instant::now();
    let opts = TreeOptions {
        mtime: 1_700_000_000,
        ..TreeOptions::default()
    };
    let entries = from_tree(tree, &opts)?;
    let file = File::create(&path).with_context(|| format!("creating {}", path.display()))?;
    let mut out = BufWriter::new(file);
    let copts = CompressOptions {
        level: Some(level),
        threads,
        ..CompressOptions::default()
    };
    write_archive(&entries, c, &copts, &mut out)?;
    out.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    let seconds = start.elapsed().as_secs_f64();
    let default = if c == Compression::Gzip && level == DEFAULT_GZIP_LEVEL {
        " (default)"
    } else {
        ""
    };
    Ok(Row {
        tool: format!("kiln {c} level {level}{default}"),
        seconds,
        bytes: size_of(&path)?,
        reference,
    })
}
