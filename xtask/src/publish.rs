//! `cargo xtask publish`: a built `output/` into object storage as one
//! release, `<prefix>/<version>/<artifact path>` plus `manifest.json`.
//!
//! Rules that make publishing atomic and idempotent for the boot servers
//! that read a release:
//! - Nothing is uploaded unless every artifact in `output/` still matches
//!   `output/manifest.json`, and (without `--overwrite`) no object of the
//!   version already holds different bytes.
//! - `manifest.json` is written last, after every object it names, so a
//!   reader that finds a version's manifest finds all of its objects.
//! - Only regular files beneath `output/`, reached without a symlink, are
//!   read: a manifest is data, and anyone who can write `output/` in a
//!   build job could otherwise make the publish job (which holds the
//!   credentials) upload any file it can read.
//! - An object already there with the same bytes is not sent again: a
//!   re-run after success uploads nothing, and a re-run after a killed or
//!   failed upload sends only what is missing. "The same bytes" is decided
//!   by the MD5 the server computed, else by reading the object; never by
//!   metadata a writer can set.
//! - `--overwrite` first removes the version's manifest (the version is
//!   unpublished while its objects are replaced), then writes it last.
//! - `--latest` then brings `<prefix>/latest/` to the same bytes, objects
//!   first and `latest/manifest.json` last. `latest/` is an alias that
//!   moves: its differing objects are replaced without `--overwrite`, and,
//!   as for an overwritten version, its manifest is removed before the
//!   first of them, so no reader pairs the old manifest with new bytes.
//!   Objects of an older release that the new manifest does not name are
//!   left in `latest/` (the manifest is what names a release).
//! - One publisher per version at a time: two jobs publishing the same
//!   version at once can interleave (object stores have no rename).

use std::path::Path;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};

use anyhow::{bail, Context, Result};
use futures::stream::{self, StreamExt, TryStreamExt};

use crate::output::manifest::{Manifest, SCHEMA};
use crate::store::beneath;
use crate::store::bucket::{self, Bucket, Held as Remote};
use crate::store::Digest;
use crate::tools::human_bytes;

const MANIFEST: &str = "manifest.json";
/// Differences listed before "… and N more".
const SHOWN: usize = 10;

#[derive(Debug, Clone)]
pub struct Options {
    /// `s3://bucket/prefix`, `gs://bucket/prefix` or `file:///dir`.
    pub to: String,
    pub version: String,
    pub latest: bool,
    pub dry_run: bool,
    pub overwrite: bool,
    /// Objects transferred at once.
    pub jobs: usize,
    pub quiet: bool,
}

/// One file to publish: its name under the version (and under
/// `output/`), and its digests.
#[derive(Debug, Clone)]
struct Object {
    name: String,
    sha256: Digest,
    md5: [u8; 16],
    size: u64,
}

/// The outcome for one destination (`<version>/` or `latest/`).
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Outcome {
    pub uploaded: usize,
    pub uploaded_bytes: u64,
    pub present: usize,
}

#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Report {
    pub version: Outcome,
    pub latest: Option<Outcome>,
}

/// Checks `version` can name a directory of objects.
pub fn check_version(version: &str) -> Result<()> {
    let ok = !version.is_empty()
        && version != "latest"
        && !version.starts_with('.')
        && version
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "._+-".contains(c));
    if !ok {
        bail!(
            "--version `{version}`: use letters, digits, `.`, `_`, `+` and `-` (e.g. 2026.11.24 or v1.2.0), not starting with `.`, and not `latest` (that is --latest's alias)"
        );
    }
    Ok(())
}

pub fn publish(output_dir: &Path, opts: &Options) -> Result<Report> {
    check_version(&opts.version)?;
    let bucket = Bucket::open(&opts.to, "publish target")?;
    let objects = local_objects(output_dir)?;
    let source = Source {
        dir: output_dir,
        objects: &objects,
    };
    let at = |prefix: &str| format!("{}/{prefix}", opts.to.trim_end_matches('/'));
    let version = Destination {
        bucket: &bucket,
        prefix: opts.version.clone(),
        shown: at(&opts.version),
        replace: opts.overwrite,
    };
    let mut report = Report {
        version: version.publish(&source, opts)?,
        latest: None,
    };
    if opts.latest {
        let latest = Destination {
            bucket: &bucket,
            prefix: "latest".into(),
            shown: at("latest"),
            replace: true,
        };
        report.latest = Some(latest.publish(&source, opts)?);
    }
    Ok(report)
}

/// What is published: the output directory and its objects.
struct Source<'a> {
    dir: &'a Path,
    objects: &'a [Object],
}

/// The bytes of `object` in `output_dir`, read again (beneath the
/// directory, no symlink followed) and checked against its digest.
fn read_object(output_dir: &Path, object: &Object) -> Result<Vec<u8>> {
    let bytes = beneath::read_file(output_dir, &object.name)?;
    if Digest::of_bytes(&bytes) != object.sha256 {
        bail!(
            "{} changed while publishing",
            output_dir.join(&object.name).display()
        );
    }
    Ok(bytes)
}

/// Every artifact of `output/manifest.json`, checked against the files,
/// then the manifest itself (last). A manifest is data anyone who can write
/// `output/` can forge, so only regular files beneath `output/`, reached
/// without a symlink, are read, and each must have the sha256 it names.
fn local_objects(output_dir: &Path) -> Result<Vec<Object>> {
    let manifest_path = output_dir.join(MANIFEST);
    let bytes = fs_err::read(&manifest_path).with_context(|| {
        format!(
            "reading {} (run `cargo xtask build` first: publish uploads what a build wrote)",
            manifest_path.display()
        )
    })?;
    let manifest: Manifest = serde_json::from_slice(&bytes)
        .with_context(|| format!("{} is not a Kiln manifest", manifest_path.display()))?;
    if manifest.schema != SCHEMA {
        bail!(
            "{} has schema {}, this Kiln writes {SCHEMA}: rebuild before publishing",
            manifest_path.display(),
            manifest.schema
        );
    }
    if manifest.artifacts.is_empty() {
        bail!("{} names no artifacts", manifest_path.display());
    }
    let mut objects = Vec::new();
    for a in &manifest.artifacts {
        let local = output_dir.join(&a.path);
        let normal = !a.path.is_empty()
            && !a.path.starts_with('/')
            && !a.path.split('/').any(|c| matches!(c, "" | "." | ".."));
        if !normal || crate::layout::reserved(&a.path).is_some() {
            bail!(
                "{} names `{}`, which is not an artifact path inside {}: not publishing",
                manifest_path.display(),
                a.path.escape_debug(),
                output_dir.display()
            );
        }
        let bytes = beneath::read_file(output_dir, &a.path)
            .with_context(|| format!("{} names {}", manifest_path.display(), a.path))?;
        let (digest, size) = (Digest::of_bytes(&bytes), bytes.len() as u64);
        if digest != a.sha256 {
            bail!(
                "{} is not the file {} names (sha256 {}, the manifest says {}): rebuild before publishing",
                local.display(),
                manifest_path.display(),
                digest.short(),
                a.sha256.short()
            );
        }
        objects.push(Object {
            name: a.path.clone(),
            sha256: digest,
            md5: bucket::md5(&bytes),
            size,
        });
    }
    objects.push(Object {
        name: MANIFEST.into(),
        sha256: Digest::of_bytes(&bytes),
        md5: bucket::md5(&bytes),
        size: bytes.len() as u64,
    });
    Ok(objects)
}

/// One directory of a release in the bucket.
struct Destination<'a> {
    bucket: &'a Bucket,
    /// `2026.11.24` or `latest`.
    prefix: String,
    /// The full URL, for messages.
    shown: String,
    /// Replace objects that hold other bytes (else refuse).
    replace: bool,
}

impl Destination<'_> {
    fn name(&self, object: &Object) -> String {
        format!("{}/{}", self.prefix, object.name)
    }

    fn publish(&self, source: &Source, opts: &Options) -> Result<Outcome> {
        let objects = source.objects;
        let states = self.compare(objects, opts.jobs)?;
        let different: Vec<(&Object, Digest)> = objects
            .iter()
            .zip(&states)
            .filter_map(|(o, s)| match s {
                Remote::Different(d) => Some((o, *d)),
                _ => None,
            })
            .collect();
        if !different.is_empty() && !self.replace {
            let mut lines: Vec<String> = different
                .iter()
                .take(SHOWN)
                .map(|(o, d)| {
                    format!(
                        "  {} (there: sha256 {}, here: {})",
                        o.name,
                        d.short(),
                        o.sha256.short()
                    )
                })
                .collect();
            if different.len() > SHOWN {
                lines.push(format!("  … and {} more", different.len() - SHOWN));
            }
            bail!(
                "{} already holds different bytes for {} object(s):\n{}\nnothing was uploaded; publish another --version, or pass --overwrite to replace them",
                self.shown,
                different.len(),
                lines.join("\n")
            );
        }
        // Replacing objects unpublishes the version (or latest/) first
        // (below), so its manifest is then written again even if unchanged.
        let unpublish = !different.is_empty();
        let to_send: Vec<&Object> = objects
            .iter()
            .zip(&states)
            .filter(|(o, s)| **s != Remote::Same || (unpublish && o.name == MANIFEST))
            .map(|(o, _)| o)
            .collect();
        let outcome = Outcome {
            uploaded: to_send.len(),
            uploaded_bytes: to_send.iter().map(|o| o.size).sum(),
            present: objects.len() - to_send.len(),
        };
        let say = |line: String| {
            if !opts.quiet {
                eprintln!("{line}");
            }
        };
        if to_send.is_empty() {
            say(format!(
                "{}: all {} objects already there with the same sha256: nothing uploaded",
                self.shown,
                objects.len()
            ));
            return Ok(outcome);
        }
        say(format!(
            "{}: {} of {} objects to upload ({}), {} already there{}",
            self.shown,
            to_send.len(),
            objects.len(),
            human_bytes(outcome.uploaded_bytes),
            outcome.present,
            if different.is_empty() {
                String::new()
            } else {
                format!(", {} to replace", different.len())
            }
        ));
        if opts.dry_run {
            for o in &to_send {
                say(format!(
                    "  would upload {} ({})",
                    o.name,
                    human_bytes(o.size)
                ));
            }
            return Ok(outcome);
        }
        let (manifest, rest): (Vec<&Object>, Vec<&Object>) =
            to_send.into_iter().partition(|o| o.name == MANIFEST);
        // A version (or latest/) being replaced stops being published until
        // its new manifest is written.
        if unpublish {
            let name = format!("{}/{MANIFEST}", self.prefix);
            self.bucket
                .block_on(self.bucket.delete(&name))
                .with_context(|| format!("removing {}/{MANIFEST}", self.shown))?;
        }
        self.upload(source.dir, &rest, opts)?;
        self.upload(source.dir, &manifest, opts)?;
        say(format!(
            "published {}: {} objects uploaded ({}), {} already there, {MANIFEST} written last",
            self.shown,
            outcome.uploaded,
            human_bytes(outcome.uploaded_bytes),
            outcome.present
        ));
        Ok(outcome)
    }

    /// Each object's state in the bucket, `jobs` at a time.
    fn compare(&self, objects: &[Object], jobs: usize) -> Result<Vec<Remote>> {
        self.bucket.block_on(
            stream::iter(objects.iter().map(|o| async move {
                let name = self.name(o);
                self.bucket
                    .holds(&name, o.size, &o.md5, &o.sha256)
                    .await
                    .with_context(|| format!("checking {}/{}", self.shown, o.name))
            }))
            .buffered(jobs.max(1))
            .try_collect(),
        )
    }

    /// Uploads `objects`, `jobs` at a time, with a progress bar (bytes and
    /// objects) on a terminal and a line per object otherwise.
    fn upload(&self, output_dir: &Path, objects: &[&Object], opts: &Options) -> Result<()> {
        use std::io::IsTerminal;
        if objects.is_empty() {
            return Ok(());
        }
        let total: u64 = objects.iter().map(|o| o.size).sum();
        let terminal = !opts.quiet && std::io::stderr().is_terminal();
        let bar = if terminal {
            let bar = indicatif::ProgressBar::new(total);
            let template = "uploading {wide_bar} {bytes}/{total_bytes} {msg} {elapsed}";
            if let Ok(style) = indicatif::ProgressStyle::with_template(template) {
                bar.set_style(style);
            }
            bar
        } else {
            indicatif::ProgressBar::hidden()
        };
        let done = AtomicUsize::new(0);
        let sent = AtomicU64::new(0);
        bar.set_message(format!("0/{} objects", objects.len()));
        let result = self.bucket.block_on(
            stream::iter(objects.iter().map(|o| {
                let (bar, done, sent) = (&bar, &done, &sent);
                async move {
                    let bytes = read_object(output_dir, o)?;
                    self.bucket
                        .put(&self.name(o), bytes, &o.sha256)
                        .await
                        .with_context(|| format!("uploading {}/{}", self.shown, o.name))?;
                    let n = done.fetch_add(1, Ordering::Relaxed) + 1;
                    sent.fetch_add(o.size, Ordering::Relaxed);
                    bar.inc(o.size);
                    bar.set_message(format!("{n}/{} objects", objects.len()));
                    if !terminal && !opts.quiet {
                        eprintln!(
                            "  uploaded {}/{} ({})",
                            self.prefix,
                            o.name,
                            human_bytes(o.size)
                        );
                    }
                    Ok(())
                }
            }))
            .buffer_unordered(opts.jobs.max(1))
            .try_collect::<Vec<()>>(),
        );
        bar.finish_and_clear();
        result.map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_that_cannot_name_a_release_directory_are_refused() {
        for ok in ["2026.11.24", "v1.2.0", "1.0+build.5", "rc_1"] {
            check_version(ok).unwrap();
        }
        for bad in ["", "latest", "a/b", "..", ".hidden", "a b", "x?y"] {
            let e = check_version(bad).unwrap_err().to_string();
            assert!(e.contains(&format!("`{bad}`")), "{e}");
        }
    }
}
