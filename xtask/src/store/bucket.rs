//! One object-storage bucket (`s3://bucket/prefix`, `gs://bucket/prefix`,
//! `file:///dir`) with the few operations Kiln needs: read an object, stat
//! it (size and the MD5 the server computed), write it (S3 verifies a
//! SHA-256 checksum on upload, GCS an MD5), and probe that the bucket
//! answers. The remote cache (`remote.rs`) and `publish` both sit on this.
//!
//! Nothing a writer of the bucket sets is trusted to say what an object
//! holds: user metadata (`x-amz-meta-sha256`) is written for people to
//! read, never read back; an object is known by the digest the server
//! computed from its bytes, or by its bytes.
//!
//! `s3://` and `file://` go through the `object_store` crate. `gs://` speaks
//! Cloud Storage's JSON API here (`gcs.rs`), with `object_store`'s Google
//! credential chain for the token: `object_store`'s own GCS client speaks
//! the XML API, which the GCS emulator the tests run (`gcp-storage-emulator`)
//! does not implement (no HEAD, no object listing, no metadata on XML
//! uploads), and one code path that is tested beats two of which one is not.
//!
//! Credentials come from the standard environment and files only (`AWS_*`,
//! `GOOGLE_APPLICATION_CREDENTIALS`, `GOOGLE_SERVICE_ACCOUNT*`, the instance
//! metadata server); `STORAGE_EMULATOR_HOST` points `gs://` at an emulator,
//! as Google's own client libraries do. No message names a credential:
//! errors name the bucket by its URL, which holds no secret.
//!
//! The backends are async; a bucket owns a small tokio runtime and its
//! callers `block_on` it, as the rest of Kiln is synchronous.

use std::sync::Arc;

use anyhow::{bail, Context, Result};
use object_store::path::Path as ObjectPath;
use object_store::{
    Attribute, Attributes, GetOptions, ObjectStore, ObjectStoreExt, PutOptions, PutPayload,
};

use super::gcs::Gcs;
use super::Digest;

/// The object-metadata key under which Kiln records an object's sha256
/// (`x-amz-meta-sha256`, GCS `metadata.sha256`), for people to read: any
/// writer can set it, so Kiln never decides anything by it.
pub const SHA256_METADATA: &str = "sha256";

/// What `stat` knows about an existing object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub size: u64,
    /// The MD5 the server computed from the object's bytes: S3's ETag of a
    /// single-part upload without KMS, GCS's `md5Hash`. `None` where the
    /// server has none (a local directory, a multipart or KMS object).
    pub md5: Option<[u8; 16]>,
}

enum Backend {
    /// `object_store`; `metadata` says whether it keeps user metadata
    /// (S3 does, a local directory does not).
    Store {
        store: Arc<dyn ObjectStore>,
        metadata: bool,
    },
    Gcs(Gcs),
}

pub struct Bucket {
    /// As given, for messages (`s3://bucket/prefix`).
    pub url: String,
    backend: Backend,
    /// The URL's path, decoded, without leading or trailing `/`.
    prefix: String,
    runtime: tokio::runtime::Runtime,
}

impl std::fmt::Debug for Bucket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Bucket").field("url", &self.url).finish()
    }
}

impl Bucket {
    /// Opens `url`; `what` names the role in errors ("remote cache",
    /// "publish target").
    pub fn open(url: &str, what: &str) -> Result<Bucket> {
        let parsed = url::Url::parse(url)
            .with_context(|| format!("{what} `{url}` is not a URL (s3://, gs://, file://)"))?;
        // Messages name a bucket by its URL: it must hold no secret.
        if !parsed.username().is_empty() || parsed.password().is_some() {
            let mut shown = parsed.clone();
            let _ = shown.set_username("");
            let _ = shown.set_password(None);
            bail!(
                "{what} `{shown}`: the URL carries credentials (user:secret@); give them through the environment instead (AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, GOOGLE_APPLICATION_CREDENTIALS)"
            );
        }
        let prefix = percent_encoding::percent_decode_str(parsed.path())
            .decode_utf8()
            .with_context(|| format!("{what} `{url}`: the path is not UTF-8"))?
            .trim_matches('/')
            .to_string();
        let backend = match parsed.scheme() {
            "s3" => Backend::Store {
                store: Arc::new(
                    with_timeouts(object_store::aws::AmazonS3Builder::from_env())
                        // The server checks each upload's SHA-256.
                        .with_checksum_algorithm(object_store::aws::Checksum::SHA256)
                        .with_url(url)
                        .build()
                        .with_context(|| format!("{what} {url}"))?,
                ),
                metadata: true,
            },
            "gs" => {
                let bucket = parsed
                    .host_str()
                    .filter(|b| !b.is_empty())
                    .with_context(|| format!("{what} `{url}` names no bucket"))?;
                Backend::Gcs(Gcs::new(url, bucket).with_context(|| format!("{what} {url}"))?)
            }
            "file" => {
                let dir = parsed
                    .to_file_path()
                    .map_err(|_| anyhow::anyhow!("{what} `{url}`: not a local path"))?;
                fs_err::create_dir_all(&dir)
                    .with_context(|| format!("creating {what} directory {}", dir.display()))?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .with_context(|| format!("{what} {url}"))?;
                return Bucket::with(
                    url,
                    Backend::Store {
                        store: Arc::new(store),
                        metadata: false,
                    },
                    String::new(),
                );
            }
            other => {
                bail!("{what} `{url}`: unsupported scheme `{other}` (use s3://, gs:// or file://)")
            }
        };
        Bucket::with(url, backend, prefix)
    }

    fn with(url: &str, backend: Backend, prefix: String) -> Result<Bucket> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .context("starting the object storage I/O runtime")?;
        Ok(Bucket {
            url: url.to_string(),
            backend,
            prefix,
            runtime,
        })
    }

    /// Runs async bucket work to completion.
    pub fn block_on<F: std::future::Future>(&self, f: F) -> F::Output {
        self.runtime.block_on(f)
    }

    /// The object name of `name` (`a/b`) under the URL's prefix.
    fn key(&self, name: &str) -> String {
        if self.prefix.is_empty() {
            name.to_string()
        } else {
            format!("{}/{name}", self.prefix)
        }
    }

    /// `key` as an `object_store` path.
    fn path(&self, name: &str) -> ObjectPath {
        ObjectPath::from(self.key(name))
    }

    /// The object's bytes, `None` if it does not exist.
    pub async fn get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let path = self.path(name);
        match &self.backend {
            Backend::Store { store, .. } => match store.get(&path).await {
                Ok(r) => Ok(Some(r.bytes().await.map_err(store_error)?.to_vec())),
                Err(object_store::Error::NotFound { .. }) => Ok(None),
                Err(e) => Err(store_error(e)),
            },
            Backend::Gcs(g) => g.get(&self.key(name)).await,
        }
    }

    /// Size and recorded sha256 of the object, `None` if it does not exist.
    pub async fn stat(&self, name: &str) -> Result<Option<Stat>> {
        let path = self.path(name);
        match &self.backend {
            Backend::Store { store, metadata } => {
                let options = GetOptions {
                    head: true,
                    ..GetOptions::default()
                };
                match store.get_opts(&path, options).await {
                    Ok(r) => {
                        // A local directory's ETag is its inode and mtime.
                        let md5 = match metadata {
                            true => r.meta.e_tag.as_deref().and_then(etag_md5),
                            false => None,
                        };
                        Ok(Some(Stat {
                            size: r.meta.size,
                            md5,
                        }))
                    }
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(store_error(e)),
                }
            }
            Backend::Gcs(g) => g.stat(&self.key(name)).await,
        }
    }

    /// Writes the object whole (readers see the old object or the new one,
    /// never a part), recording `sha256` where the backend keeps metadata.
    pub async fn put(&self, name: &str, bytes: Vec<u8>, sha256: &Digest) -> Result<()> {
        let path = self.path(name);
        match &self.backend {
            Backend::Store { store, metadata } => {
                let mut attributes = Attributes::new();
                if *metadata {
                    attributes.insert(
                        Attribute::Metadata(SHA256_METADATA.into()),
                        sha256.hex().into(),
                    );
                }
                let options = PutOptions {
                    attributes,
                    ..PutOptions::default()
                };
                store
                    .put_opts(&path, PutPayload::from(bytes), options)
                    .await
                    .map_err(store_error)?;
                Ok(())
            }
            Backend::Gcs(g) => g.put(&self.key(name), bytes, sha256).await,
        }
    }

    /// Removes the object; an object already absent is not an error.
    pub async fn delete(&self, name: &str) -> Result<()> {
        let path = self.path(name);
        match &self.backend {
            Backend::Store { store, .. } => match store.delete(&path).await {
                Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
                Err(e) => Err(store_error(e)),
            },
            Backend::Gcs(g) => g.delete(&self.key(name)).await,
        }
    }

    /// Whether the bucket answers with these credentials: a read of an
    /// object that need not exist (absent is an answer too).
    pub fn probe(&self) -> Result<()> {
        let answer = match &self.backend {
            // A listing fails for a bucket that does not exist, where a
            // missing object's 404 would not tell the two apart.
            Backend::Store { store, .. } => {
                let prefix = ObjectPath::from(self.prefix.as_str());
                self.block_on(store.list_with_delimiter(Some(&prefix)))
                    .map(|_| ())
                    .map_err(store_error)
            }
            Backend::Gcs(g) => self.block_on(g.probe()),
        };
        answer.with_context(|| format!("reaching {}", self.url))
    }

    /// Whether the object holds exactly the bytes whose size, MD5 and
    /// sha256 are given: `Held::Same` when the server's own MD5 says so,
    /// else the object is read and hashed.
    pub async fn holds(
        &self,
        name: &str,
        size: u64,
        md5: &[u8; 16],
        sha256: &Digest,
    ) -> Result<Held> {
        let Some(stat) = self.stat(name).await? else {
            return Ok(Held::Missing);
        };
        if stat.size == size && stat.md5.as_ref() == Some(md5) {
            return Ok(Held::Same);
        }
        Ok(match self.get(name).await?.map(|b| Digest::of_bytes(&b)) {
            None => Held::Missing,
            Some(d) if d == *sha256 => Held::Same,
            Some(d) => Held::Different(d),
        })
    }
}

/// What a bucket holds at a name, compared with the bytes Kiln has.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Held {
    Missing,
    Same,
    /// Other bytes, with their sha256.
    Different(Digest),
}

/// The MD5 an S3 ETag is (`"<32 hex>"`); not a multipart (`-N`) or KMS one.
fn etag_md5(etag: &str) -> Option<[u8; 16]> {
    let hex = etag.trim_matches('"');
    let mut md5 = [0u8; 16];
    hex::decode_to_slice(hex, &mut md5).ok()?;
    Some(md5)
}

/// The MD5 of `bytes`, as servers compute it.
pub fn md5(bytes: &[u8]) -> [u8; 16] {
    use md5::Digest as _;
    md5::Md5::digest(bytes).into()
}

/// An `object_store` error as one line (its sources repeat its own text),
/// with what to check when the server refused the credentials. The
/// server's response body is cut off, keeping only its S3 `<Code>`: a
/// `SignatureDoesNotMatch` body echoes the canonical request, which can
/// carry a session token.
fn store_error(e: object_store::Error) -> anyhow::Error {
    let hint = match e {
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
            " (the server refused the credentials: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, and the key's permissions on the bucket)"
        }
        _ => "",
    };
    anyhow::anyhow!("{}{hint}", without_body(&e.to_string()))
}

/// `… status code: 403 Forbidden: <Error><Code>X</Code>…` → `… status code:
/// 403 Forbidden (X)`.
fn without_body(text: &str) -> String {
    const STATUS: &str = "status code: ";
    let Some(at) = text.find(STATUS) else {
        return text.trim_end_matches([' ', ':']).to_string();
    };
    let rest = &text[at + STATUS.len()..];
    let (status, body) = rest.split_once(':').unwrap_or((rest, ""));
    let code = body
        .split_once("<Code>")
        .and_then(|(_, c)| c.split_once("</Code>"))
        .map(|(c, _)| format!(" ({c})"))
        .unwrap_or_default();
    format!("{}{}{code}", &text[..at + STATUS.len()], status.trim())
}

/// Timeouts for `object_store`'s HTTP client: its default of 30 s for a
/// whole request is too short for a large ISO or pack on an ordinary link;
/// a stalled transfer still fails after 2 minutes without data. (Set as
/// config keys: `with_client_options` would drop the options the builder
/// read from the environment, such as `AWS_ALLOW_HTTP`.)
fn with_timeouts(b: object_store::aws::AmazonS3Builder) -> object_store::aws::AmazonS3Builder {
    use object_store::aws::AmazonS3ConfigKey::Client;
    use object_store::ClientConfigKey::{ConnectTimeout, ReadTimeout, Timeout};
    b.with_config(Client(ConnectTimeout), "10s")
        .with_config(Client(ReadTimeout), "120s")
        .with_config(Client(Timeout), "1800s")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_response_body_never_reaches_a_message() {
        let text = "Error performing HEAD http://h/b/k in 5ms - Server returned non-2xx status code: 403 Forbidden: <Error><Code>SignatureDoesNotMatch</Code><CanonicalRequest>x-amz-security-token:SECRET</CanonicalRequest></Error>";
        let short = without_body(text);
        assert!(
            short.ends_with("status code: 403 Forbidden (SignatureDoesNotMatch)"),
            "{short}"
        );
        assert!(!short.contains("SECRET"));
        assert_eq!(
            without_body("Object at location x not found: "),
            "Object at location x not found"
        );
    }
}
