//! `cargo xtask publish`: uploads the built `output/` as one release.

use std::process::ExitCode;

use anyhow::Result;
use clap::Args;

use super::Settings;
use crate::publish::{self, Options};
use crate::tools::human_bytes;

#[derive(Debug, Args)]
#[command(after_help = "\
Layout: <URL>/<VERSION>/stage1/…, stage2/…, stage3/…, manifest.json.
manifest.json is written last, so a reader that finds it finds every object it names.
An object already there with the same sha256 is not uploaded again: a re-run after a
killed or failed upload sends only what is missing, and a re-run after success sends nothing.
An existing version holding different bytes is refused, and nothing is uploaded, unless
--overwrite. Credentials come from the standard AWS (AWS_ACCESS_KEY_ID, AWS_PROFILE, …) and
Google (GOOGLE_APPLICATION_CREDENTIALS, …) environment; STORAGE_EMULATOR_HOST points gs://
at a GCS emulator.")]
pub struct PublishArgs {
    /// Where to publish: s3://bucket/prefix, gs://bucket/prefix or file:///dir.
    #[arg(long, value_name = "URL")]
    to: String,
    /// The release name: the directory under the prefix (e.g. 2026.11.24 or v1.2.0).
    #[arg(long, value_name = "V")]
    version: String,
    /// Then bring <URL>/latest/ to the same bytes (its manifest.json is removed
    /// while objects change, and written last).
    #[arg(long)]
    latest: bool,
    /// Compare with the bucket and say what would be uploaded; upload nothing.
    #[arg(long)]
    dry_run: bool,
    /// Replace objects of an existing version that hold different bytes (the
    /// version's manifest.json is removed first and written again last).
    #[arg(long)]
    overwrite: bool,
}

pub fn publish(ctx: &Settings, a: &PublishArgs) -> Result<ExitCode> {
    let opts = Options {
        to: a.to.clone(),
        version: a.version.clone(),
        latest: a.latest,
        dry_run: a.dry_run,
        overwrite: a.overwrite,
        jobs: ctx.jobs.clamp(4, 16),
        quiet: ctx.quiet,
    };
    let report = publish::publish(&ctx.output_dir, &opts)?;
    let summary = |o: &crate::publish::Outcome| match (a.dry_run, o.uploaded) {
        (_, 0) => format!("nothing to upload, {} already there", o.present),
        (true, n) => format!(
            "{n} to upload ({}), {} already there",
            human_bytes(o.uploaded_bytes),
            o.present
        ),
        (false, n) => format!(
            "{n} uploaded ({}), {} already there",
            human_bytes(o.uploaded_bytes),
            o.present
        ),
    };
    let mut line = format!(
        "{} {}: {}",
        if a.dry_run { "dry run," } else { "published" },
        a.version,
        summary(&report.version)
    );
    if let Some(l) = &report.latest {
        line.push_str(&format!("; latest: {}", summary(l)));
    }
    println!("{line}");
    Ok(ExitCode::SUCCESS)
}
