//! Fetching pinned sources into the store: Debian packages through the
//! machine's apt configuration, and URLs over HTTPS.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{bail, Context, Result};
use serde::Serialize;

use super::{Slot, Step, StepContext};
use crate::arch::Arch;
use crate::store::{Digest, Output};
use crate::tools;
use crate::tools::apt;

/// A pinned digest did not match what was fetched. Nothing is stored.
#[derive(Debug, thiserror::Error)]
#[error("checksum mismatch for source `{source_name}` ({what}): expected sha256 {expected}, got {actual}; nothing was stored. {hint}")]
pub struct ChecksumMismatch {
    pub source_name: String,
    pub what: String,
    pub expected: String,
    pub actual: String,
    /// What the operator can do about it.
    pub hint: String,
}

/// The usual way out of a mismatch: a new upstream file is re-pinned.
const REPIN_HINT: &str = "If the new file is trusted, run `cargo xtask sources update`.";

/// Output of `FetchDeb` and `FetchUrl`: the verified file.
pub const FILE: Slot = Slot("file");
/// Output of `FetchTree` and `UnpackPinnedTree`: the verified tree.
pub const TREE: Slot = Slot("tree");
/// Input of `UnpackPinnedTree`: the operator's local tarball.
pub const ARCHIVE: Slot = Slot("archive");

/// A pinned Debian package: `apt-get download PACKAGE=VERSION` through the
/// machine's apt configuration while apt offers that version, else the
/// recorded `pool` path under each `[mirrors]` base in turn (a snapshot
/// archive, a local mirror); whichever way, verified against the pinned
/// sha256 before anything is stored.
#[derive(Debug, Clone, Serialize)]
pub struct FetchDeb {
    /// The source's name is for messages only: renaming it must not refetch.
    #[serde(skip)]
    pub source: String,
    pub package: String,
    /// The package's architecture when not the machine's. Not in the key:
    /// the sha256 already says which file it is.
    #[serde(skip)]
    pub arch: Option<Arch>,
    pub version: String,
    pub sha256: String,
    /// Where the file is, not what it is: neither enters the key (the
    /// sha256 does), so a mirror added later reuses every cached step.
    #[serde(skip)]
    pub pool: Option<String>,
    #[serde(skip)]
    pub mirrors: Vec<String>,
}

impl Step for FetchDeb {
    fn kind(&self) -> &'static str {
        "fetch-deb"
    }
    fn version(&self) -> u32 {
        1
    }
    fn label(&self) -> String {
        format!("fetch {}={}", self.apt_name(), self.version)
    }
    fn identity(&self) -> String {
        format!("fetch source {}", self.source)
    }

    fn run(&self, ctx: &StepContext, scratch: &Path) -> Result<BTreeMap<String, Output>> {
        let what = format!("{}={}", self.apt_name(), self.version);
        let output = match self.apt_download(ctx, scratch) {
            Ok(deb) => store_verified(ctx, &deb, &self.source, &self.sha256, &what)?,
            Err(apt) => self.mirror_download(ctx, apt)?,
        };
        Ok(BTreeMap::from([(FILE.into(), output)]))
    }
}

impl FetchDeb {
    /// `package` or `package:arm64`, as apt takes it.
    fn apt_name(&self) -> String {
        apt::qualified(&self.package, self.arch)
    }

    fn apt_download(&self, ctx: &StepContext, scratch: &Path) -> Result<std::path::PathBuf> {
        let mut cmd = tools::command("apt-get")?;
        cmd.current_dir(scratch).arg("download").arg(format!(
            "{}={}",
            self.apt_name(),
            self.version
        ));
        // apt-get prints no progress into a log: show the bytes arrived so far.
        let log = ctx.log(&format!("fetch-{}", self.source));
        let label = format!("downloading {}={}", self.apt_name(), self.version);
        let arrived = || Some(tools::human_bytes(dir_bytes(scratch)));
        tools::with_progress(&label, arrived, || tools::run_logged(cmd, &log))?;
        single_deb(scratch)
    }

    /// The pool path under each mirror in turn, after apt failed with `apt`.
    fn mirror_download(&self, ctx: &StepContext, apt: anyhow::Error) -> Result<Output> {
        if let Some(why) = apt::architecture_missing(self.arch) {
            return Err(apt.context(format!("downloading source `{}`: {why}", self.source)));
        }
        let hint = match (&self.pool, self.mirrors.is_empty()) {
            (None, _) => "its `pool` path is not recorded: `cargo xtask sources update --keep-versions` records it while apt still offers the version, `cargo xtask sources update` re-pins",
            (Some(_), true) => "no `[mirrors] deb` base URL in sources.toml to fetch its `pool` path from (a Debian snapshot archive or a local mirror)",
            (Some(_), false) => "",
        };
        let download = || {
            format!(
                "downloading source `{}`: apt-get could not (`apt-cache policy {}` tells which versions apt offers)",
                self.source,
                self.apt_name()
            )
        };
        let Some(pool) = self.pool.as_deref().filter(|_| hint.is_empty()) else {
            return Err(apt.context(format!("{}; {hint}", download())));
        };
        let mut tried = vec![format!("apt-get: {apt:#}")];
        for base in &self.mirrors {
            let url = format!("{base}{pool}");
            let partial = ctx.store.partial_download(&self.sha256);
            let fetched = fetch_any(&url, &partial, &self.source)
                .and_then(|()| store_verified(ctx, &partial, &self.source, &self.sha256, &url));
            match fetched {
                Ok(output) => {
                    let _ = fs_err::remove_file(&partial);
                    tracing::warn!(
                        "{}={} came from {url}: apt no longer offers it",
                        self.apt_name(),
                        self.version
                    );
                    return Ok(output);
                }
                Err(e) => {
                    // Other bytes are never resumed; a cut transfer is.
                    if e.is::<ChecksumMismatch>() {
                        let _ = fs_err::remove_file(&partial);
                    }
                    tried.push(format!("{e:#}"));
                }
            }
        }
        bail!(
            "{}, and no mirror gave {pool}:\n    {}",
            download(),
            tried.join("\n    ")
        )
    }
}

/// `url` into `partial`: HTTP(S) with retries and resume, or a copy for a
/// `file://` mirror.
fn fetch_any(url: &str, partial: &Path, source: &str) -> Result<()> {
    if !url.starts_with("file:") {
        return download_with_retries(url, partial, source);
    }
    let path = url::Url::parse(url)
        .ok()
        .and_then(|u| u.to_file_path().ok())
        .with_context(|| format!("{url} is not a local path"))?;
    fs_err::copy(&path, partial)
        .map(drop)
        .with_context(|| format!("copying {} for source `{source}`", path.display()))
}

/// The bytes of the files directly in `dir`.
fn dir_bytes(dir: &Path) -> u64 {
    fs_err::read_dir(dir)
        .into_iter()
        .flatten()
        .flatten()
        .filter_map(|e| e.metadata().ok())
        .filter(|m| m.is_file())
        .map(|m| m.len())
        .sum()
}

fn single_deb(dir: &Path) -> Result<std::path::PathBuf> {
    let mut debs = Vec::new();
    for entry in fs_err::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "deb") {
            debs.push(path);
        }
    }
    match debs.len() {
        1 => Ok(debs.remove(0)),
        n => bail!(
            "apt-get download left {n} .deb files in {}, expected one",
            dir.display()
        ),
    }
}

/// Hashes `file`; stores it only when it matches the pin.
pub fn store_verified(
    ctx: &StepContext,
    file: &Path,
    source: &str,
    expected: &str,
    what: &str,
) -> Result<Output> {
    let (actual, size) = Digest::of_file(file)?;
    if actual.hex() != expected {
        return Err(ChecksumMismatch {
            source_name: source.to_string(),
            what: what.to_string(),
            expected: expected.to_string(),
            actual: actual.hex(),
            hint: REPIN_HINT.to_string(),
        }
        .into());
    }
    let (digest, _) = ctx.store.put_file(file)?;
    Ok(Output::File { digest, size })
}

/// Attempts per download before giving up (network errors and 5xx).
const ATTEMPTS: u32 = 4;

/// An HTTP(S) download, resumed from a partial file after an interruption
/// and verified against the pinned sha256 before anything is stored.
#[derive(Debug, Clone, Serialize)]
pub struct FetchUrl {
    /// For messages only.
    #[serde(skip)]
    pub source: String,
    /// Only the content matters: a mirror with the same bytes is the same input.
    #[serde(skip)]
    pub url: String,
    pub sha256: String,
}

impl Step for FetchUrl {
    fn kind(&self) -> &'static str {
        "fetch-url"
    }
    fn version(&self) -> u32 {
        1
    }
    fn label(&self) -> String {
        format!("fetch {}", self.url)
    }
    fn identity(&self) -> String {
        format!("fetch source {}", self.source)
    }

    fn run(&self, ctx: &StepContext, _scratch: &Path) -> Result<BTreeMap<String, Output>> {
        let partial = ctx.store.partial_download(&self.sha256);
        download_with_retries(&self.url, &partial, &self.source)?;
        let result = store_verified(ctx, &partial, &self.source, &self.sha256, &self.url);
        // A finished download is never resumed: on a mismatch the next try starts over.
        let _ = fs_err::remove_file(&partial);
        Ok(BTreeMap::from([(FILE.into(), result?)]))
    }
}

/// A tarball pinned by the digest of its unpacked tree (modes as git
/// records them, as for a checkout given with `--source`): downloaded,
/// unpacked with its top directory stripped, verified, stored as a tree.
#[derive(Debug, Clone, Serialize)]
pub struct FetchTree {
    /// For messages only.
    #[serde(skip)]
    pub source: String,
    /// Only the tree matters, wherever it is served from.
    #[serde(skip)]
    pub url: String,
    pub tree_sha256: String,
}

impl Step for FetchTree {
    fn kind(&self) -> &'static str {
        "fetch-tree"
    }
    fn version(&self) -> u32 {
        1
    }
    fn label(&self) -> String {
        format!("fetch {}", self.url)
    }
    fn identity(&self) -> String {
        format!("fetch source {}", self.source)
    }

    fn run(&self, ctx: &StepContext, scratch: &Path) -> Result<BTreeMap<String, Output>> {
        let partial = ctx.store.partial_download(&self.tree_sha256);
        download_with_retries(&self.url, &partial, &self.source)?;
        let what = format!("unpacked tree of {}", self.url);
        let hint = format!(
            "If the new tree is trusted, pin it: `cargo xtask sources digest` of the unpacked tarball prints its tree_sha256 for [{}] in sources.toml.",
            self.source
        );
        let digest = store_pinned_tree(
            ctx,
            &partial,
            scratch,
            &self.source,
            &self.tree_sha256,
            &what,
            hint,
        );
        let _ = fs_err::remove_file(&partial);
        Ok(BTreeMap::from([(
            TREE.into(),
            Output::Tree { digest: digest? },
        )]))
    }
}

/// A local tarball standing in for a source pinned by its tree's digest
/// (`--source ipxe=FILE.tar.xz` where the pinned URL cannot be reached).
/// It is accepted only when its unpacked tree is the pinned one, so it
/// gives the download's tree, hence the same keys and artifacts.
#[derive(Debug, Clone, Serialize)]
pub struct UnpackPinnedTree {
    /// For messages only (not in the key).
    #[serde(skip)]
    pub source: String,
    /// The tarball as the operator named it, for messages only: its bytes
    /// are the `archive` input.
    #[serde(skip)]
    pub file: String,
    pub tree_sha256: String,
}

impl Step for UnpackPinnedTree {
    fn kind(&self) -> &'static str {
        "unpack-pinned-tree"
    }
    fn version(&self) -> u32 {
        1
    }
    fn label(&self) -> String {
        format!("unpack {} (source `{}`)", self.file, self.source)
    }
    fn identity(&self) -> String {
        format!("fetch source {}", self.source)
    }

    fn run(&self, ctx: &StepContext, scratch: &Path) -> Result<BTreeMap<String, Output>> {
        let archive = ctx.file(ARCHIVE)?;
        let what = format!("unpacked tree of {}", self.file);
        let hint = format!(
            "This tarball is not the tree sources.toml pins for [{0}]: to build with it anyway, unpack it and give the directory (--source {0}=DIR); to pin it, `cargo xtask sources digest {1}` prints its tree_sha256.",
            self.source, self.file
        );
        let digest = store_pinned_tree(
            ctx,
            &archive,
            scratch,
            &self.source,
            &self.tree_sha256,
            &what,
            hint,
        )?;
        Ok(BTreeMap::from([(TREE.into(), Output::Tree { digest })]))
    }
}

/// Unpacks `archive` (its top directory stripped) and stores the tree with
/// modes as git records them; fails, naming `what`, unless its digest is
/// `tree_sha256`.
fn store_pinned_tree(
    ctx: &StepContext,
    archive: &Path,
    scratch: &Path,
    source: &str,
    tree_sha256: &str,
    what: &str,
    hint: String,
) -> Result<Digest> {
    let top = super::tarball::unpack_stripped(archive, scratch, source)
        .with_context(|| format!("unpacking source `{source}` ({what})"))?;
    let digest = ctx
        .store
        .put_tree_owned_with(&top, crate::store::Modes::GitLike)?;
    if digest.hex() != tree_sha256 {
        return Err(ChecksumMismatch {
            source_name: source.to_string(),
            what: what.to_string(),
            expected: tree_sha256.to_string(),
            actual: digest.hex(),
            hint,
        }
        .into());
    }
    Ok(digest)
}

fn download_with_retries(url: &str, partial: &Path, source: &str) -> Result<()> {
    let mut attempt = 1;
    loop {
        match download(url, partial) {
            Ok(()) => return Ok(()),
            Err(e) if e.retryable && attempt < ATTEMPTS => {
                tracing::warn!("{} (attempt {attempt} of {ATTEMPTS}; retrying)", e.error);
                std::thread::sleep(std::time::Duration::from_millis(500 << attempt));
                attempt += 1;
            }
            Err(e) => {
                return Err(e
                    .error
                    .context(format!("downloading source `{source}` from {url}")))
            }
        }
    }
}

struct DownloadError {
    error: anyhow::Error,
    retryable: bool,
}

impl DownloadError {
    fn retry(error: impl Into<anyhow::Error>) -> Self {
        DownloadError {
            error: error.into(),
            retryable: true,
        }
    }
    fn fatal(error: impl Into<anyhow::Error>) -> Self {
        DownloadError {
            error: error.into(),
            retryable: false,
        }
    }
}

/// Appends to `partial` from where it stops (HTTP Range), or starts over
/// when the server ignores the range.
fn download(url: &str, partial: &Path) -> Result<(), DownloadError> {
    use std::io::Write;
    let have = fs_err::metadata(partial).map(|m| m.len()).unwrap_or(0);
    let client = reqwest::blocking::Client::builder()
        .connect_timeout(std::time::Duration::from_secs(30))
        .timeout(None)
        .build()
        .map_err(DownloadError::fatal)?;
    let mut request = client.get(url);
    if have > 0 {
        request = request.header(reqwest::header::RANGE, format!("bytes={have}-"));
    }
    let mut response = request.send().map_err(DownloadError::retry)?;
    let status = response.status();
    if status.is_server_error() {
        return Err(DownloadError::retry(anyhow::anyhow!(
            "{url}: server answered {status}"
        )));
    }
    if status == reqwest::StatusCode::RANGE_NOT_SATISFIABLE {
        let _ = fs_err::remove_file(partial);
        return Err(DownloadError::retry(anyhow::anyhow!(
            "{url}: partial download is stale; starting over"
        )));
    }
    if !status.is_success() {
        return Err(DownloadError::fatal(anyhow::anyhow!(
            "{url}: server answered {status}"
        )));
    }
    let resumed = status == reqwest::StatusCode::PARTIAL_CONTENT;
    let mut file = fs_err::OpenOptions::new()
        .create(true)
        .write(true)
        .append(resumed)
        .truncate(!resumed)
        .open(partial)
        .map_err(|e| {
            DownloadError::fatal(
                anyhow::Error::new(e).context(format!("opening {}", partial.display())),
            )
        })?;
    let start = if resumed { have } else { 0 };
    let bar = progress_bar(response.content_length().map(|n| n + start), start, url);
    let mut buf = vec![0u8; 1 << 16];
    loop {
        let n = std::io::Read::read(&mut response, &mut buf).map_err(DownloadError::retry)?;
        if n == 0 {
            break;
        }
        file.write_all(&buf[..n]).map_err(|e| {
            DownloadError::fatal(anyhow::Error::new(e).context("writing the download"))
        })?;
        bar.inc(n as u64);
    }
    bar.finish_and_clear();
    Ok(())
}

/// Bytes-so-far progress on a terminal; nothing otherwise.
fn progress_bar(total: Option<u64>, done: u64, url: &str) -> indicatif::ProgressBar {
    use std::io::IsTerminal;
    if !std::io::stderr().is_terminal() {
        return indicatif::ProgressBar::hidden();
    }
    let bar = total.map_or_else(
        indicatif::ProgressBar::no_length,
        indicatif::ProgressBar::new,
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{msg} {bytes}/{total_bytes} {bar:30} {bytes_per_sec}",
        )
        .expect("valid template"),
    );
    bar.set_message(url.rsplit('/').next().unwrap_or(url).to_string());
    bar.set_position(done);
    bar
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::Store;
    use std::io::{BufRead, BufReader, Write};
    use std::net::TcpListener;
    use std::sync::{Arc, Mutex};

    /// A minimal HTTP/1.1 server on 127.0.0.1 that honours `Range` and, on
    /// its first response, sends only half the body and hangs up. Returns
    /// its URL and the Range headers it saw.
    fn flaky_server(body: Vec<u8>) -> (String, Arc<Mutex<Vec<Option<String>>>>) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/file.bin", listener.local_addr().unwrap());
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        std::thread::spawn(move || {
            for (i, stream) in listener.incoming().take(4).enumerate() {
                let mut stream = stream.unwrap();
                let mut range = None;
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap() == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        range = Some(v.trim().trim_end_matches('-').to_string());
                    }
                }
                log.lock().unwrap().push(range.clone());
                let from: usize = range.as_deref().map_or(0, |r| r.parse().unwrap());
                let status = if from > 0 {
                    "206 Partial Content"
                } else {
                    "200 OK"
                };
                let rest = &body[from..];
                let head = format!(
                    "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
                    rest.len()
                );
                stream.write_all(head.as_bytes()).unwrap();
                let send = if i == 0 {
                    &rest[..rest.len() / 2]
                } else {
                    rest
                };
                let _ = stream.write_all(send);
            }
        });
        (url, seen)
    }

    fn ctx(store: &Store) -> StepContext<'_> {
        StepContext::new(store, BTreeMap::new(), std::env::temp_dir(), "test".into())
    }

    #[test]
    fn interrupted_download_resumes_with_a_range_request() {
        let body: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let sha = Digest::of_bytes(&body).hex();
        let (url, seen) = flaky_server(body.clone());
        let cache = tempfile::tempdir().unwrap();
        let store = Store::open(cache.path()).unwrap();
        let step = FetchUrl {
            source: "blob".into(),
            url,
            sha256: sha,
        };
        let out = step.run(&ctx(&store), cache.path()).unwrap();
        let Output::File { digest, size } = out["file"] else {
            panic!("not a file")
        };
        assert_eq!(size, body.len() as u64);
        assert_eq!(store.read_blob(&digest).unwrap(), body);
        let seen = seen.lock().unwrap().clone();
        assert_eq!(
            seen,
            [None, Some("150000".to_string())],
            "second request should resume at the half"
        );
    }

    #[test]
    fn wrong_checksum_names_the_source_and_stores_nothing() {
        let body = vec![7u8; 10_000];
        let (url, _) = flaky_server(body.clone());
        let cache = tempfile::tempdir().unwrap();
        let store = Store::open(cache.path()).unwrap();
        let step = FetchUrl {
            source: "firmware".into(),
            url,
            sha256: "ab".repeat(32),
        };
        let err = step.run(&ctx(&store), cache.path()).unwrap_err();
        let mismatch = err
            .downcast_ref::<ChecksumMismatch>()
            .expect("a checksum mismatch");
        assert_eq!(mismatch.source_name, "firmware");
        assert_eq!(mismatch.actual, Digest::of_bytes(&body).hex());
        assert!(!store.has_blob(&Digest::of_bytes(&body)));
        assert!(!store.partial_download(&"ab".repeat(32)).exists());
    }
}
