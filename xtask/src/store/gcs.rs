//! Cloud Storage through its JSON API (`storage/v1`): get, stat (size and
//! the `sha256` metadata Kiln records), multipart upload with metadata.
//! Why not `object_store`'s GCS client: see `bucket.rs`. The bearer token
//! comes from `object_store`'s Google credential chain (service account
//! file or key, application default credentials, the metadata server);
//! with `STORAGE_EMULATOR_HOST` set, requests go to that emulator unsigned,
//! as Google's client libraries do.
//!
//! Transient failures (connection errors, 429, 5xx) are retried a few times
//! with a short backoff; anything else is an error naming the object and
//! the server's message, never a credential.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use base64::Engine as _;
use object_store::gcp::{GcpCredential, GoogleCloudStorageBuilder};
use object_store::CredentialProvider;

use super::bucket::{Stat, SHA256_METADATA};
use super::Digest;

const API: &str = "https://storage.googleapis.com";
const ATTEMPTS: u32 = 4;

pub struct Gcs {
    base: String,
    bucket: String,
    http: reqwest::Client,
    /// `None` against an emulator.
    credentials: Option<Arc<dyn CredentialProvider<Credential = GcpCredential>>>,
}

impl Gcs {
    pub fn new(url: &str, bucket: &str) -> Result<Gcs> {
        let emulator = std::env::var("STORAGE_EMULATOR_HOST")
            .ok()
            .filter(|h| !h.is_empty());
        let (base, credentials) = match emulator {
            Some(host) if host.contains("://") => (host.trim_end_matches('/').to_string(), None),
            Some(host) => (format!("http://{host}"), None),
            None => {
                let store = GoogleCloudStorageBuilder::from_env()
                    .with_url(url)
                    .build()
                    .context("reading Google credentials")?;
                (API.to_string(), Some(store.credentials().clone()))
            }
        };
        let http = reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(10))
            // A stalled transfer fails (and is retried) instead of hanging.
            .read_timeout(Duration::from_secs(120))
            .build()
            .context("starting an HTTP client")?;
        Ok(Gcs {
            base,
            bucket: bucket.to_string(),
            http,
            credentials,
        })
    }

    fn object_url(&self, name: &str) -> String {
        format!(
            "{}/storage/v1/b/{}/o/{}",
            self.base,
            encode(&self.bucket),
            encode(name)
        )
    }

    /// Sends the request built by `make` (again on a transient failure),
    /// signed when there are credentials. `None` for 404.
    async fn send(
        &self,
        name: &str,
        make: impl Fn() -> reqwest::RequestBuilder,
    ) -> Result<Option<reqwest::Response>> {
        let mut attempt = 0;
        loop {
            attempt += 1;
            let mut request = make();
            if let Some(c) = &self.credentials {
                let token = c
                    .get_credential()
                    .await
                    .context("getting a Google access token")?;
                request = request.bearer_auth(&token.bearer);
            }
            let transient = match request.send().await {
                Ok(r) if r.status() == reqwest::StatusCode::NOT_FOUND => return Ok(None),
                Ok(r) if r.status().is_success() => return Ok(Some(r)),
                Ok(r)
                    if r.status().is_server_error() || matches!(r.status().as_u16(), 408 | 429) =>
                {
                    format!("HTTP {}", r.status())
                }
                Ok(r) => {
                    let status = r.status();
                    let body = r.text().await.unwrap_or_default();
                    let message = serde_json::from_str::<serde_json::Value>(&body)
                        .ok()
                        .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                        .unwrap_or(body);
                    let hint = match status.as_u16() {
                        401 | 403 => " (the server refused the credentials: check GOOGLE_APPLICATION_CREDENTIALS or the service account's roles)",
                        _ => "",
                    };
                    bail!("{name}: HTTP {status}{hint}: {}", message.trim());
                }
                Err(e) => format!("{e}"),
            };
            if attempt >= ATTEMPTS {
                bail!("{name}: {transient} ({attempt} attempts)");
            }
            tokio::time::sleep(Duration::from_millis(250 << attempt)).await;
        }
    }

    pub async fn get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        let url = format!("{}?alt=media", self.object_url(name));
        match self.send(name, || self.http.get(&url)).await? {
            Some(r) => Ok(Some(
                r.bytes()
                    .await
                    .with_context(|| format!("reading {name}"))?
                    .to_vec(),
            )),
            None => Ok(None),
        }
    }

    pub async fn stat(&self, name: &str) -> Result<Option<Stat>> {
        let url = self.object_url(name);
        let Some(r) = self.send(name, || self.http.get(&url)).await? else {
            return Ok(None);
        };
        let body = r
            .bytes()
            .await
            .with_context(|| format!("reading {name}'s metadata"))?;
        let v: serde_json::Value = serde_json::from_slice(&body)
            .with_context(|| format!("{name}: the server's object metadata is not JSON"))?;
        let size = v["size"]
            .as_str()
            .and_then(|s| s.parse().ok())
            .or_else(|| v["size"].as_u64())
            .with_context(|| format!("{name}: the server's object metadata has no size"))?;
        let md5 = v["md5Hash"]
            .as_str()
            .and_then(|s| base64::engine::general_purpose::STANDARD.decode(s).ok())
            .and_then(|b| <[u8; 16]>::try_from(b).ok());
        Ok(Some(Stat { size, md5 }))
    }

    /// Whether the bucket exists and these credentials may read it.
    pub async fn probe(&self) -> Result<()> {
        let url = format!("{}/storage/v1/b/{}", self.base, encode(&self.bucket));
        let what = format!("bucket {}", self.bucket);
        match self.send(&what, || self.http.get(&url)).await? {
            Some(_) => Ok(()),
            None => bail!("the bucket `{}` does not exist", self.bucket),
        }
    }

    /// Removes the object (absent already is fine).
    pub async fn delete(&self, name: &str) -> Result<()> {
        let url = self.object_url(name);
        self.send(name, || self.http.delete(&url)).await?;
        Ok(())
    }

    /// A multipart upload: the object's metadata (name, sha256) and its
    /// bytes in one request, so the object never exists without them.
    pub async fn put(&self, name: &str, bytes: Vec<u8>, sha256: &Digest) -> Result<()> {
        let url = format!(
            "{}/upload/storage/v1/b/{}/o?uploadType=multipart",
            self.base,
            encode(&self.bucket)
        );
        // A boundary that cannot occur in the data: the data's own digest.
        let boundary = format!("kiln-{}", sha256.hex());
        // The server checks the bytes against `md5Hash`.
        let md5 = base64::engine::general_purpose::STANDARD.encode(super::bucket::md5(&bytes));
        let meta = serde_json::json!({
            "name": name,
            "contentType": "application/octet-stream",
            "md5Hash": md5,
            "metadata": { SHA256_METADATA: sha256.hex() },
        });
        let mut body = Vec::with_capacity(bytes.len() + 512);
        body.extend_from_slice(
            format!(
                "--{boundary}\r\nContent-Type: application/json; charset=UTF-8\r\n\r\n{meta}\r\n--{boundary}\r\nContent-Type: application/octet-stream\r\n\r\n"
            )
            .as_bytes(),
        );
        body.extend_from_slice(&bytes);
        body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
        let body = bytes::Bytes::from(body);
        let content_type = format!("multipart/related; boundary={boundary}");
        self.send(name, || {
            self.http
                .post(&url)
                .header(reqwest::header::CONTENT_TYPE, &content_type)
                .body(body.clone())
        })
        .await?
        .with_context(|| format!("{name}: the bucket `{}` does not exist", self.bucket))?;
        Ok(())
    }
}

/// Percent-encodes a path segment (object names keep no `/` unencoded).
fn encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}
