//! A shared cache in object storage (`s3://bucket/prefix`, `gs://bucket/prefix`,
//! `file:///dir`), behind the local store: a local miss asks the remote
//! (read-through), a step built here is offered to it (write-back).
//!
//! Layout under the prefix: `blobs/<sha256>` (a step's file outputs),
//! `trees/<sha256>.json` (tree manifests), `packs/<tree sha256>.zst` (the
//! tree's distinct blobs in ascending digest order, concatenated and
//! zstd-compressed: a kernel source or build tree is tens of thousands of
//! files, and one object per file made a cache hit slower than the build
//! it saves), `actions/<key>.json`. Everything read is checked
//! against its digest before the local store takes it; a corrupt or
//! truncated remote object is reported and treated as a miss (the step is
//! rebuilt and, unless read-only, its objects uploaded again over the bad
//! ones). Writing goes blobs, then packs, then tree manifests, then the
//! action record last, so a reader never finds a record whose objects are
//! missing. A cache written before packs existed has none: its tree steps
//! are reported as broken, rebuilt and their packs uploaded.
//!
//! Records are signed by writers and checked by readers that name a trusted
//! key (`signing.rs`); a record is always refused under another key's name.
//!
//! The objects live in a `Bucket` (`bucket.rs`: backends, credentials,
//! and the rule that no message names a credential); this module offers
//! blocking calls, as the rest of Kiln is synchronous.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Mutex;

use anyhow::{Context, Result};
use futures::stream::{self, StreamExt, TryStreamExt};

use super::bucket::Bucket;
use super::signing::{self, Signer, Trust};
use super::{ActionRecord, Digest, Output, Store, Tree};

/// Objects transferred at once.
const PARALLEL: usize = 16;

pub struct Remote {
    /// As given, for messages (`s3://bucket/prefix`).
    pub url: String,
    /// Pull only: never write (untrusted CI jobs such as pull requests).
    pub readonly: bool,
    bucket: Bucket,
    /// Objects found corrupt during this run: uploaded again even though
    /// they exist.
    corrupt: Mutex<BTreeSet<String>>,
    /// Set at the first failure to reach the cache: the rest of the run
    /// builds without it instead of waiting on every step.
    down: std::sync::atomic::AtomicBool,
    auth: Auth,
    /// Set once an untrusted record was refused (said once per run).
    refused: std::sync::atomic::AtomicBool,
}

/// Who this builder is to the cache: the key it signs its uploads with,
/// and the key it accepts records from (without one, any record of the
/// right key is used).
#[derive(Default)]
pub struct Auth {
    pub signer: Option<Signer>,
    pub trust: Option<Trust>,
}

impl std::fmt::Debug for Remote {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Remote")
            .field("url", &self.url)
            .field("readonly", &self.readonly)
            .finish()
    }
}

/// What a pull found.
pub enum Pulled {
    /// The record and every object it names are now in the local store.
    Hit(ActionRecord),
    Miss,
    /// The remote has the record but an object is missing or corrupt.
    Broken(String),
}

impl Remote {
    pub fn open(url: &str, readonly: bool, auth: Auth) -> Result<Remote> {
        Ok(Remote {
            url: url.to_string(),
            readonly,
            bucket: Bucket::open(url, "remote cache")?,
            corrupt: Mutex::new(BTreeSet::new()),
            down: std::sync::atomic::AtomicBool::new(false),
            auth,
            refused: std::sync::atomic::AtomicBool::new(false),
        })
    }

    /// The object's bytes, `None` if it does not exist.
    fn get(&self, name: &str) -> Result<Option<Vec<u8>>> {
        self.bucket
            .block_on(self.bucket.get(name))
            .with_context(|| format!("reading {name} from the remote cache {}", self.url))
    }

    /// Fetched bytes of `name` that must hash to `digest`: a mismatch is
    /// remembered (to be overwritten) and reported, as is a missing object.
    fn checked(
        &self,
        name: &str,
        digest: &Digest,
        bytes: Option<Vec<u8>>,
    ) -> Result<Vec<u8>, String> {
        match bytes {
            Some(bytes) if &Digest::of_bytes(&bytes) == digest => Ok(bytes),
            Some(bytes) => Err(self.found_corrupt(name, &bytes)),
            None => Err(self.missing(name)),
        }
    }

    /// False once the cache failed to answer in this run.
    pub fn up(&self) -> bool {
        !self.down.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Stops using the cache for the rest of the run, saying why once.
    pub fn give_up(&self, why: &anyhow::Error) {
        if !self.down.swap(true, std::sync::atomic::Ordering::Relaxed) {
            eprintln!(
                "warning: the remote cache {} failed ({why:#}); building without it for the rest of this run",
                self.url
            );
        }
    }

    /// Whether the cache answers (for `doctor`; an empty cache answers too).
    pub fn probe(&self) -> Result<()> {
        self.bucket.probe()
    }

    fn missing(&self, name: &str) -> String {
        format!("{name} is missing from the remote cache {}", self.url)
    }

    /// Remembers `name` as corrupt (the next upload replaces it) and says so.
    fn found_corrupt(&self, name: &str, bytes: &[u8]) -> String {
        self.corrupt.lock().unwrap().insert(name.to_string());
        format!(
            "{name} in the remote cache {} is corrupt ({} bytes, sha256 {}): not used",
            self.url,
            bytes.len(),
            Digest::of_bytes(bytes).hex()
        )
    }

    /// Read-through: the action `key` and every object it names, verified
    /// and stored locally. The local record is written last.
    pub fn pull(&self, key: &Digest, local: &Store) -> Result<Pulled> {
        let name = format!("actions/{}.json", key.hex());
        let Some(bytes) = self.get(&name)? else {
            return Ok(Pulled::Miss);
        };
        // Nothing the record names is fetched before it is trusted.
        let record = match signing::open(&bytes, key, self.auth.trust.as_ref()) {
            Ok(record) => record,
            Err(why @ (signing::Refused::Unsigned | signing::Refused::BadSignature)) => {
                if !self
                    .refused
                    .swap(true, std::sync::atomic::Ordering::Relaxed)
                {
                    eprintln!(
                        "warning: the remote cache {} holds records the trusted key did not sign \
                         (first: {name}: {why}); nothing is used from them, and those steps are built here",
                        self.url
                    );
                }
                return Ok(Pulled::Miss);
            }
            Err(why) => {
                return Ok(Pulled::Broken(format!(
                    "{name} in the remote cache {} is refused: {why}",
                    self.url
                )))
            }
        };
        // Blobs first, then the trees that name them, then the record.
        let mut blobs = BTreeSet::new();
        let mut new_trees = Vec::new();
        for output in record.outputs.values() {
            match output {
                Output::File { digest, .. } => {
                    blobs.insert(*digest);
                }
                Output::Tree { digest } if local.has_tree(digest) => {
                    if let Err(e) = self.pull_pack(digest, &local.tree(digest)?, local)? {
                        return Ok(Pulled::Broken(e));
                    }
                }
                Output::Tree { digest } => {
                    let name = format!("trees/{}.json", digest.hex());
                    let fetched = self.get(&name).map_err(|e| format!("{e:#}"));
                    let bytes = match fetched.and_then(|b| self.checked(&name, digest, b)) {
                        Ok(b) => b,
                        Err(e) => return Ok(Pulled::Broken(e)),
                    };
                    let tree: Tree = serde_json::from_slice(&bytes)
                        .with_context(|| format!("parsing {name} from {}", self.url))?;
                    // Its paths decide where a checkout writes: never outside.
                    if let Err(why) = tree.check() {
                        return Ok(Pulled::Broken(format!(
                            "{name} from the remote cache {} is refused: {why}",
                            self.url
                        )));
                    }
                    if let Err(e) = self.pull_pack(digest, &tree, local)? {
                        return Ok(Pulled::Broken(e));
                    }
                    new_trees.push(tree);
                }
            }
        }
        if let Err(e) = self.pull_blobs(&blobs, local)? {
            return Ok(Pulled::Broken(e));
        }
        for tree in &new_trees {
            local.put_tree_manifest(tree)?;
        }
        local.put_action(key, &record)?;
        Ok(Pulled::Hit(record))
    }

    /// The blobs of `tree` the local store lacks, from the tree's pack,
    /// each checked by digest. Outer error: local; inner: the pack is
    /// missing, short or corrupt.
    fn pull_pack(&self, digest: &Digest, tree: &Tree, local: &Store) -> Result<Result<(), String>> {
        let sizes = pack_members(tree);
        if sizes.keys().all(|d| local.has_blob(d)) {
            return Ok(Ok(()));
        }
        let name = format!("packs/{}.zst", digest.hex());
        let Some(packed) = self.get(&name)? else {
            return Ok(Err(self.missing(&name)));
        };
        let mut reader = match zstd::stream::read::Decoder::new(&packed[..]) {
            Ok(r) => r,
            Err(_) => return Ok(Err(self.found_corrupt(&name, &packed))),
        };
        for (d, size) in &sizes {
            let mut bytes = vec![0u8; *size as usize];
            let read = std::io::Read::read_exact(&mut reader, &mut bytes);
            if read.is_err() || Digest::of_bytes(&bytes) != *d {
                return Ok(Err(self.found_corrupt(&name, &packed)));
            }
            if !local.has_blob(d) {
                local.put_bytes(&bytes)?;
            }
        }
        Ok(Ok(()))
    }

    /// Fetches the blobs the local store lacks, in parallel, each checked.
    /// The outer error is a local failure; the inner one a remote object
    /// missing or corrupt.
    fn pull_blobs(&self, blobs: &BTreeSet<Digest>, local: &Store) -> Result<Result<(), String>> {
        let wanted: Vec<Digest> = blobs
            .iter()
            .filter(|d| !local.has_blob(d))
            .copied()
            .collect();
        let names: Vec<String> = wanted
            .iter()
            .map(|d| format!("blobs/{}", d.hex()))
            .collect();
        let results: Vec<Result<Option<Vec<u8>>>> = self.bucket.block_on(
            stream::iter(names.iter().map(|name| self.bucket.get(name)))
                .buffered(PARALLEL)
                .collect(),
        );
        for ((digest, name), result) in wanted.iter().zip(&names).zip(results) {
            let fetched = result
                .with_context(|| format!("reading {name} from the remote cache {}", self.url))?;
            match self.checked(name, digest, fetched) {
                Ok(bytes) => {
                    local.put_bytes(&bytes)?;
                }
                Err(e) => return Ok(Err(e)),
            }
        }
        Ok(Ok(()))
    }

    /// Write-back: the record's blobs and trees, then the record. Objects
    /// already there are not sent again, unless found corrupt in this run.
    pub fn push(&self, key: &Digest, record: &ActionRecord, local: &Store) -> Result<()> {
        // A builder that trusts a key but cannot sign with it writes
        // nothing: its records would only replace signed ones with records
        // no trusting reader uses.
        if self.readonly || (self.auth.trust.is_some() && self.auth.signer.is_none()) {
            return Ok(());
        }
        let mut blobs: BTreeMap<String, Digest> = BTreeMap::new();
        let mut trees: Vec<(String, Digest, Vec<u8>)> = Vec::new();
        let mut packs: Vec<(String, Tree)> = Vec::new();
        for output in record.outputs.values() {
            match output {
                Output::File { digest, .. } => {
                    blobs.insert(format!("blobs/{}", digest.hex()), *digest);
                }
                Output::Tree { digest } => {
                    let tree = local.tree(digest)?;
                    trees.push((
                        format!("trees/{}.json", digest.hex()),
                        *digest,
                        tree.to_bytes(),
                    ));
                    packs.push((format!("packs/{}.zst", digest.hex()), tree));
                }
            }
        }
        let corrupt = self.corrupt.lock().unwrap().clone();
        let bucket = &self.bucket;
        self.bucket
            .block_on(async {
                stream::iter(blobs.into_iter().map(|(name, digest)| {
                    let overwrite = corrupt.contains(&name);
                    async move {
                        upload(bucket, &name, Some(&digest), overwrite, || {
                            local.read_blob(&digest)
                        })
                        .await
                        .with_context(|| format!("uploading {name}"))
                    }
                }))
                .buffer_unordered(PARALLEL)
                .try_collect::<Vec<()>>()
                .await?;
                for (name, tree) in packs {
                    let overwrite = corrupt.contains(&name);
                    upload(bucket, &name, None, overwrite, || pack(&tree, local))
                        .await
                        .with_context(|| format!("uploading {name}"))?;
                }
                for (name, digest, bytes) in trees {
                    let overwrite = corrupt.contains(&name);
                    upload(bucket, &name, Some(&digest), overwrite, || Ok(bytes))
                        .await
                        .with_context(|| format!("uploading {name}"))?;
                }
                let name = format!("actions/{}.json", key.hex());
                let bytes = match &self.auth.signer {
                    Some(signer) => signer.sign(record)?,
                    None => serde_json::to_vec(record)?,
                };
                let digest = Digest::of_bytes(&bytes);
                upload(bucket, &name, Some(&digest), true, || Ok(bytes))
                    .await
                    .with_context(|| format!("uploading {name}"))
            })
            .with_context(|| format!("writing to the remote cache {}", self.url))
    }
}

/// Writes `bytes()` as `name` unless an object is already there (the cache
/// is content-addressed) or `overwrite` says to replace it. `digest` is
/// the bytes' sha256 when known (else taken from them: a pack).
async fn upload(
    bucket: &Bucket,
    name: &str,
    digest: Option<&Digest>,
    overwrite: bool,
    bytes: impl FnOnce() -> Result<Vec<u8>>,
) -> Result<()> {
    if !overwrite && bucket.stat(name).await?.is_some() {
        return Ok(());
    }
    let bytes = bytes()?;
    let digest = digest.copied().unwrap_or_else(|| Digest::of_bytes(&bytes));
    bucket.put(name, bytes, &digest).await
}

/// A tree's distinct blobs and their sizes, in the order a pack holds them.
fn pack_members(tree: &Tree) -> BTreeMap<Digest, u64> {
    tree.files().map(|(_, d, size)| (*d, size)).collect()
}

/// A tree's pack: its distinct blobs in ascending digest order,
/// concatenated, zstd-compressed (level 3, on every core). Only the
/// blobs' digests and sizes in the tree manifest say where each begins.
fn pack(tree: &Tree, local: &Store) -> Result<Vec<u8>> {
    let mut encoder = zstd::stream::Encoder::new(Vec::new(), 3).context("creating zstd encoder")?;
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get() as u32);
    encoder.multithread(threads).context("zstd threads")?;
    for d in pack_members(tree).keys() {
        std::io::Write::write_all(&mut encoder, &local.read_blob(d)?)?;
    }
    encoder.finish().context("finishing a pack")
}
