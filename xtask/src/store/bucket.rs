//! One object-storage bucket (`s3://bucket/prefix`, `gs://bucket/prefix`,
//! `file:///dir`) with the few operations Kiln needs: read an object, stat
//! it (size and, when the backend keeps object metadata, the sha256 Kiln
//! wrote with it), write it, and probe that the bucket answers. The remote
//! cache (`remote.rs`) and `publish` both sit on this.
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
/// (`x-amz-meta-sha256`, GCS `metadata.sha256`).
pub const SHA256_METADATA: &str = "sha256";

/// What `stat` knows about an existing object.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stat {
    pub size: u64,
    /// The sha256 recorded when Kiln wrote the object, if the backend keeps
    /// metadata and the object was written by Kiln.
    pub sha256: Option<Digest>,
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
    prefix: ObjectPath,
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
        let prefix = ObjectPath::from(parsed.path());
        let backend = match parsed.scheme() {
            "s3" => Backend::Store {
                store: Arc::new(
                    object_store::aws::AmazonS3Builder::from_env()
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
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {what} directory {}", dir.display()))?;
                let store = object_store::local::LocalFileSystem::new_with_prefix(&dir)
                    .with_context(|| format!("{what} {url}"))?;
                return Bucket::with(
                    url,
                    Backend::Store {
                        store: Arc::new(store),
                        metadata: false,
                    },
                    ObjectPath::default(),
                );
            }
            other => {
                bail!("{what} `{url}`: unsupported scheme `{other}` (use s3://, gs:// or file://)")
            }
        };
        Bucket::with(url, backend, prefix)
    }

    fn with(url: &str, backend: Backend, prefix: ObjectPath) -> Result<Bucket> {
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

    /// The object path of `name` (`a/b`) under the URL's prefix.
    fn path(&self, name: &str) -> ObjectPath {
        name.split('/')
            .fold(self.prefix.clone(), |p, part| p.join(part))
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
            Backend::Gcs(g) => g.get(path.as_ref()).await,
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
                        let sha256 = if *metadata {
                            r.attributes
                                .get(&Attribute::Metadata(SHA256_METADATA.into()))
                                .and_then(|v| v.parse::<Digest>().ok())
                        } else {
                            None
                        };
                        Ok(Some(Stat {
                            size: r.meta.size,
                            sha256,
                        }))
                    }
                    Err(object_store::Error::NotFound { .. }) => Ok(None),
                    Err(e) => Err(store_error(e)),
                }
            }
            Backend::Gcs(g) => g.stat(path.as_ref()).await,
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
            Backend::Gcs(g) => g.put(path.as_ref(), bytes, sha256).await,
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
            Backend::Gcs(g) => g.delete(path.as_ref()).await,
        }
    }

    /// Whether the bucket answers with these credentials: a read of an
    /// object that need not exist (absent is an answer too).
    pub fn probe(&self) -> Result<()> {
        self.block_on(self.stat(".kiln-probe"))
            .map(|_| ())
            .with_context(|| format!("reaching {}", self.url))
    }

    /// The digest of an existing object: the recorded one, else (a backend
    /// without metadata, an object another tool wrote) its bytes hashed.
    /// `None` if it does not exist.
    pub async fn digest(&self, name: &str) -> Result<Option<(Digest, u64)>> {
        let Some(stat) = self.stat(name).await? else {
            return Ok(None);
        };
        if let Some(d) = stat.sha256 {
            return Ok(Some((d, stat.size)));
        }
        Ok(self
            .get(name)
            .await?
            .map(|b| (Digest::of_bytes(&b), b.len() as u64)))
    }
}

/// An `object_store` error as one line (its sources repeat its own text),
/// with what to check when the server refused the credentials.
fn store_error(e: object_store::Error) -> anyhow::Error {
    let hint = match e {
        object_store::Error::PermissionDenied { .. } | object_store::Error::Unauthenticated { .. } => {
            " (the server refused the credentials: check AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE, and the key's permissions on the bucket)"
        }
        _ => "",
    };
    anyhow::anyhow!("{}{hint}", e.to_string().trim_end_matches([' ', ':']))
}
