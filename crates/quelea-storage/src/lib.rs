//! quelea's object storage, built on the `object_store` crate: a local
//! directory (the default), process memory (tests), S3-compatible stores (with
//! IBM COS and MinIO as named flavours), Google Cloud Storage and Azure Blob.
//!
//! This crate is the one place that knows what a storage is: its kinds
//! ([`StorageKind`]), their address schemes ([`address`]), their settings, and
//! where a storage is without its credentials ([`Location`]).
//!
//! [`Storage`] offers async methods and `*_blocking` twins for the synchronous
//! engine; the twins run on one shared I/O runtime owned by this crate.

use std::collections::HashMap;
use std::ops::Range;
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutPayload, WriteMultipart};
use quelea_core::config::Config;
pub use quelea_core::config::StorageKind;

pub mod address;
mod azure;
mod location;
pub mod settings;

pub use address::{lithops_name, parse_address, schemes, Address};
pub use location::{ibm_cos_endpoint, StorageLocation, StorageLocation as Location};

/// Storage errors, with the key and operation they concern.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("object `{key}` not found in {store}")]
    NotFound { key: String, store: String },
    #[error("storage {operation} of `{key}` in {store} failed: {cause}")]
    Backend {
        operation: &'static str,
        key: String,
        store: String,
        /// The store's error, with its root cause when it leaves that out.
        cause: String,
        /// The store's error itself. Not a `source`: `cause` says all of it
        /// already, and error reporters would print each level again.
        error: Box<dyn std::error::Error + Send + Sync>,
    },
    #[error("storage config: {0}")]
    Config(String),
    #[error("invalid object key `{key}`: {reason}")]
    InvalidKey { key: String, reason: String },
    #[error("invalid address `{address}`: {reason}")]
    InvalidAddress { address: String, reason: String },
    #[error("bucket `{bucket}` is in {kind} storage, which is not configured: {hint}")]
    NotConfigured {
        kind: &'static str,
        bucket: String,
        hint: String,
    },
    /// A blocking wait on storage was given up on Ctrl-C ([`interrupt`]).
    #[error("storage {operation} of `{key}` in {store} was interrupted (Ctrl-C)")]
    Interrupted {
        operation: &'static str,
        key: String,
        store: String,
    },
}

/// Ctrl-C for storage waits: while the flag is set, every `*_blocking`
/// method gives up within [`interrupt::POLL`] with [`Error::Interrupted`]
/// instead of waiting for a server that may not answer. The Python bindings
/// set it on Ctrl-C during a blocking call and clear it once that call has
/// given up. It is not the engine's Ctrl-C flag (`quelea::interrupt`): after
/// a Ctrl-C the engine still writes cancel markers, and a server still
/// drains, through storage.
pub mod interrupt {
    use std::sync::atomic::{AtomicBool, Ordering};
    use std::time::Duration;

    static INTERRUPTED: AtomicBool = AtomicBool::new(false);

    /// How often a blocking storage wait looks at the flag.
    pub const POLL: Duration = Duration::from_millis(50);

    pub fn set() {
        INTERRUPTED.store(true, Ordering::SeqCst);
    }

    pub fn clear() {
        INTERRUPTED.store(false, Ordering::SeqCst);
    }

    pub fn is_set() -> bool {
        INTERRUPTED.load(Ordering::SeqCst)
    }

    /// Resolves once the flag is set.
    pub(crate) async fn wait() {
        while !is_set() {
            tokio::time::sleep(POLL).await;
        }
    }
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

/// An object's key and size, as listed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ObjectInfo {
    pub key: String,
    pub size: u64,
}

/// The I/O runtime behind the blocking methods.
pub fn io_runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .thread_name("quelea-io")
            .enable_all()
            .build()
            .expect("the quelea I/O runtime starts")
    })
}

/// Installs ring as rustls' process-wide crypto provider, once; a no-op when
/// one is installed already. reqwest is built without a provider of its own
/// (`rustls-no-provider`, to leave aws-lc-rs out of the build), so every
/// process calls this before it builds an HTTP client: [`Storage::from_config`]
/// does, and so do the other crates' client constructors.
pub fn install_tls_provider() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        // Err: another provider was installed first, which serves as well.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// Objects larger than this are uploaded in parts by default.
pub const DEFAULT_MULTIPART_THRESHOLD: u64 = 64 * 1024 * 1024;

/// Part size of multipart uploads; S3 needs at least 5 MiB for all but the
/// last part.
pub const MULTIPART_PART_SIZE: usize = 8 * 1024 * 1024;

/// Parts in flight at once for one upload: enough to fill a link, few enough
/// not to flood a small server.
const MULTIPART_CONCURRENCY: usize = 4;

/// One bucket of an object store.
#[derive(Clone)]
pub struct Storage {
    store: Arc<dyn ObjectStore>,
    location: StorageLocation,
    multipart_threshold: u64,
    /// S3 without keys in the config: object_store then asks the EC2
    /// instance metadata service, whose failure names only its own URL.
    s3_without_keys: bool,
}

impl std::fmt::Debug for Storage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Storage")
            .field("location", &self.location)
            .finish()
    }
}

fn memory_buckets() -> &'static Mutex<HashMap<String, Arc<object_store::memory::InMemory>>> {
    static BUCKETS: OnceLock<Mutex<HashMap<String, Arc<object_store::memory::InMemory>>>> =
        OnceLock::new();
    BUCKETS.get_or_init(Default::default)
}

impl Storage {
    /// Bucket `bucket` of storage `kind`, with `config`'s settings for that
    /// kind; [`Error::NotConfigured`] when it has none.
    pub fn for_bucket(config: &Config, kind: StorageKind, bucket: &str) -> Result<Storage> {
        Storage::from_config(&address::config_for(config, kind, bucket)?)
    }

    /// The storage a config names.
    pub fn from_config(config: &Config) -> Result<Storage> {
        install_tls_provider();
        let location = StorageLocation::from_config(config);
        let store: Arc<dyn ObjectStore> = match config.storage {
            StorageKind::Localdisk => {
                let dir = config.localdisk_root().join(&config.bucket);
                std::fs::create_dir_all(&dir).map_err(|e| {
                    Error::Config(format!(
                        "cannot create storage directory `{}`: {e}",
                        dir.display()
                    ))
                })?;
                Arc::new(
                    object_store::local::LocalFileSystem::new_with_prefix(&dir).map_err(|e| {
                        Error::Config(format!("storage directory `{}`: {e}", dir.display()))
                    })?,
                )
            }
            StorageKind::Memory => {
                // One store per bucket name per process, so a second executor
                // (or an attach) in the same process sees the same objects.
                let mut buckets = memory_buckets().lock().expect("memory bucket registry");
                buckets.entry(config.bucket.clone()).or_default().clone()
            }
            StorageKind::S3 | StorageKind::IbmCos | StorageKind::Minio => {
                Arc::new(build_s3(config)?)
            }
            StorageKind::Gcs => Arc::new(build_gcs(config)?),
            StorageKind::Azure => Arc::new(build_azure(config)?),
        };
        let s3_without_keys = config.storage == StorageKind::S3
            && (config.s3.access_key_id.is_none() || config.s3.secret_access_key.is_none());
        Ok(Storage {
            store,
            location,
            multipart_threshold: DEFAULT_MULTIPART_THRESHOLD,
            s3_without_keys,
        })
    }

    /// Upload objects larger than `bytes` in parts of
    /// [`MULTIPART_PART_SIZE`] (default [`DEFAULT_MULTIPART_THRESHOLD`]).
    pub fn with_multipart_threshold(mut self, bytes: u64) -> Self {
        self.multipart_threshold = bytes;
        self
    }

    /// Where this storage is, without credentials: safe for job handles.
    pub fn location(&self) -> &StorageLocation {
        &self.location
    }

    fn describe(&self) -> String {
        self.location.describe()
    }

    fn path(&self, key: &str) -> Result<Path> {
        Path::parse(key).map_err(|e| Error::InvalidKey {
            key: key.to_owned(),
            reason: e.to_string(),
        })
    }

    fn map_err(&self, operation: &'static str, key: &str, e: object_store::Error) -> Error {
        match e {
            // S3 answers 404 for a key in a missing bucket too, and a write
            // that finds nothing is a missing bucket or container (Azure
            // answers `ContainerNotFound`), not a missing object.
            object_store::Error::NotFound { .. }
                if missing_bucket(&describe_cause(&e)).is_some()
                    || operation.contains("put")
                    || operation.contains("upload") =>
            {
                self.backend_error(operation, key, e)
            }
            object_store::Error::NotFound { .. } => Error::NotFound {
                key: key.to_owned(),
                store: self.describe(),
            },
            other => self.backend_error(operation, key, other),
        }
    }

    fn backend_error(&self, operation: &'static str, key: &str, e: object_store::Error) -> Error {
        let mut cause = describe_cause(&e);
        if self.s3_without_keys && cause.contains(INSTANCE_METADATA_ENDPOINT) {
            cause = format!(
                "no S3 credentials found: set `s3.access_key_id` and `s3.secret_access_key` \
                 in the config, or QUELEA_S3_ACCESS_KEY_ID and QUELEA_S3_SECRET_ACCESS_KEY, \
                 or AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (without them, the EC2 \
                 instance metadata service was asked for a role's, and it answered: {cause})"
            );
        } else if let Some(bucket) = missing_bucket(&cause) {
            cause = format!(
                "the bucket `{bucket}` does not exist (S3 NoSuchBucket): create it, or set `bucket`"
            );
        }
        // SAS signatures (`sig=` in request URLs, which object_store's
        // messages quote) are redacted, and then the original error is
        // dropped too, so no `Debug` print can show it.
        let redacted = redact_signatures(&cause);
        let error: Box<dyn std::error::Error + Send + Sync> =
            if redact_signatures(&describe_cause(&e)) == describe_cause(&e) {
                Box::new(e)
            } else {
                redacted.clone().into()
            };
        Error::Backend {
            operation,
            key: key.to_owned(),
            store: self.describe(),
            cause: redacted,
            error,
        }
    }

    /// Store an object, in parts when it is over the multipart threshold.
    pub async fn put(&self, key: &str, data: impl Into<Bytes>) -> Result<()> {
        let path = self.path(key)?;
        let data = data.into();
        if data.len() as u64 > self.multipart_threshold {
            return self.put_multipart(&path, key, data).await;
        }
        self.store
            .put(&path, PutPayload::from_bytes(data))
            .await
            .map(|_| ())
            .map_err(|e| self.map_err("put", key, e))
    }

    /// Creates a small object only if no object has that key: `Ok(true)` when
    /// this call created it, `Ok(false)` when it was there already. Atomic in
    /// every kind of storage (object_store's `PutMode::Create`: a no-clobber
    /// link on a local disk, `If-None-Match: *` on S3 and GCS, `If-None-Match`
    /// on Azure), so of many callers exactly one gets `true`.
    pub async fn put_if_absent(&self, key: &str, data: impl Into<Bytes>) -> Result<bool> {
        let path = self.path(key)?;
        let options = object_store::PutOptions {
            mode: object_store::PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&path, PutPayload::from_bytes(data.into()), options)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => Ok(false),
            Err(e) => Err(self.map_err("conditional put", key, e)),
        }
    }

    async fn put_multipart(&self, path: &Path, key: &str, mut data: Bytes) -> Result<()> {
        let operation = "multipart upload";
        let upload = self
            .store
            .put_multipart(path)
            .await
            .map_err(|e| self.map_err(operation, key, e))?;
        let mut writer = WriteMultipart::new_with_chunk_size(upload, MULTIPART_PART_SIZE);
        while !data.is_empty() {
            if let Err(e) = writer.wait_for_capacity(MULTIPART_CONCURRENCY).await {
                // Best effort: the upload failed already, and its error is the
                // one worth reporting.
                let _ = writer.abort().await;
                return Err(self.map_err(operation, key, e));
            }
            let part = data.split_to(data.len().min(MULTIPART_PART_SIZE));
            writer.put(part);
        }
        writer
            .finish()
            .await
            .map(|_| ())
            .map_err(|e| self.map_err(operation, key, e))
    }

    pub async fn get(&self, key: &str) -> Result<Bytes> {
        let path = self.path(key)?;
        let result = self
            .store
            .get(&path)
            .await
            .map_err(|e| self.map_err("get", key, e))?;
        result
            .bytes()
            .await
            .map_err(|e| self.map_err("get", key, e))
    }

    /// Bytes `[range.start, range.end)` of an object.
    pub async fn get_range(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        let path = self.path(key)?;
        if range.start == range.end {
            return Ok(Bytes::new());
        }
        self.store
            .get_range(&path, range)
            .await
            .map_err(|e| self.map_err("ranged get", key, e))
    }

    pub async fn head(&self, key: &str) -> Result<ObjectInfo> {
        let path = self.path(key)?;
        let meta = self
            .store
            .head(&path)
            .await
            .map_err(|e| self.map_err("head", key, e))?;
        Ok(ObjectInfo {
            key: meta.location.to_string(),
            size: meta.size,
        })
    }

    /// Every object under `prefix` (path segments: `a/b` lists `a/b/...`).
    pub async fn list(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        let trimmed = prefix.trim_end_matches('/');
        let path = if trimmed.is_empty() {
            None
        } else {
            Some(self.path(trimmed)?)
        };
        let stream = self.store.list(path.as_ref());
        let metas: Vec<_> = stream
            .map_ok(|m| ObjectInfo {
                key: m.location.to_string(),
                size: m.size,
            })
            .try_collect()
            .await
            .or_else(|e| match e {
                // A local directory that does not exist yet lists as empty.
                object_store::Error::NotFound { .. }
                    if self.location.kind() == StorageKind::Localdisk =>
                {
                    Ok(Vec::new())
                }
                // Elsewhere a missing prefix lists as empty without an error,
                // so "not found" means the bucket is missing: not an object's
                // absence, so not `Error::NotFound`.
                other @ object_store::Error::NotFound { .. } => {
                    Err(self.backend_error("list", prefix, other))
                }
                other => Err(self.map_err("list", prefix, other)),
            })?;
        let mut metas = metas;
        metas.sort_by(|a, b| a.key.cmp(&b.key));
        Ok(metas)
    }

    /// Delete one object; deleting a missing object is not an error.
    pub async fn delete(&self, key: &str) -> Result<()> {
        let path = self.path(key)?;
        match self.store.delete(&path).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.map_err("delete", key, e)),
        }
    }

    /// Delete every object under `prefix`; returns how many were deleted.
    pub async fn delete_prefix(&self, prefix: &str) -> Result<usize> {
        let objects = self.list(prefix).await?;
        let count = objects.len();
        let paths = futures::stream::iter(
            objects
                .into_iter()
                .map(|o| Path::parse(o.key).map_err(Into::into)),
        );
        let mut deleted = self.store.delete_stream(paths.boxed());
        while let Some(result) = deleted.next().await {
            match result {
                Ok(_) | Err(object_store::Error::NotFound { .. }) => {}
                Err(e) => return Err(self.map_err("delete", prefix, e)),
            }
        }
        Ok(count)
    }

    /// Runs `operation` to its end, or until Ctrl-C ([`interrupt`]).
    fn blocking<T>(
        &self,
        operation: &'static str,
        key: &str,
        future: impl std::future::Future<Output = Result<T>>,
    ) -> Result<T> {
        io_runtime().block_on(async {
            tokio::select! {
                biased;
                result = future => result,
                () = interrupt::wait() => Err(Error::Interrupted {
                    operation,
                    key: key.to_owned(),
                    store: self.describe(),
                }),
            }
        })
    }

    pub fn put_blocking(&self, key: &str, data: impl Into<Bytes>) -> Result<()> {
        self.blocking("put", key, self.put(key, data))
    }
    pub fn put_if_absent_blocking(&self, key: &str, data: impl Into<Bytes>) -> Result<bool> {
        self.blocking("conditional put", key, self.put_if_absent(key, data))
    }
    pub fn get_blocking(&self, key: &str) -> Result<Bytes> {
        self.blocking("get", key, self.get(key))
    }
    pub fn get_range_blocking(&self, key: &str, range: Range<u64>) -> Result<Bytes> {
        self.blocking("ranged get", key, self.get_range(key, range))
    }
    pub fn head_blocking(&self, key: &str) -> Result<ObjectInfo> {
        self.blocking("head", key, self.head(key))
    }
    pub fn list_blocking(&self, prefix: &str) -> Result<Vec<ObjectInfo>> {
        self.blocking("list", prefix, self.list(prefix))
    }
    pub fn delete_blocking(&self, key: &str) -> Result<()> {
        self.blocking("delete", key, self.delete(key))
    }
    pub fn delete_prefix_blocking(&self, prefix: &str) -> Result<usize> {
        self.blocking("delete", prefix, self.delete_prefix(prefix))
    }
}

/// Where object_store asks for an EC2 role's credentials when it has no keys.
const INSTANCE_METADATA_ENDPOINT: &str = "169.254.169.254";

/// The bucket an S3 error body says is missing (`<Code>NoSuchBucket</Code>`
/// ... `<BucketName>b</BucketName>`), if it says so.
fn missing_bucket(cause: &str) -> Option<String> {
    if !cause.contains("NoSuchBucket") {
        return None;
    }
    let name = cause
        .split_once("<BucketName>")
        .and_then(|(_, rest)| rest.split_once("</BucketName>"))
        .map(|(name, _)| name.to_owned());
    Some(name.unwrap_or_else(|| "?".to_owned()))
}

/// `...&sig=SECRET&...` → `...&sig=<redacted>&...`.
fn redact_signatures(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("sig=") {
        let at_boundary = i == 0 || matches!(rest.as_bytes()[i - 1], b'?' | b'&');
        out.push_str(&rest[..i + 4]);
        rest = &rest[i + 4..];
        if at_boundary {
            let end = rest
                .find(|c: char| c == '&' || c == '#' || c.is_whitespace())
                .unwrap_or(rest.len());
            out.push_str("<redacted>");
            rest = &rest[end..];
        }
    }
    out.push_str(rest);
    out
}

/// An error's message, and its root cause when the message leaves it out
/// (object_store says "error sending request" and keeps "connection
/// refused" for its innermost source).
fn describe_cause(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut root = error.source();
    while let Some(next) = root.and_then(|e| e.source()) {
        root = Some(next);
    }
    if let Some(root) = root.map(|e| e.to_string()) {
        if !text.contains(&root) {
            text.push_str(": ");
            text.push_str(&root);
        }
    }
    text
}

/// A validated number of seconds (`Config::build` checks each one).
fn seconds(s: f64) -> Duration {
    Duration::try_from_secs_f64(s).unwrap_or(Duration::from_secs(1))
}

/// Bounded waits (`storage_client`): a server that is down is an error in
/// seconds, and one that accepts connections but answers nothing (stopped,
/// frozen) is one after `read_timeout` without a byte, not a hang.
fn client_options(config: &Config, allow_http: bool) -> object_store::ClientOptions {
    let c = &config.storage_client;
    object_store::ClientOptions::new()
        .with_connect_timeout(seconds(c.connect_timeout))
        .with_read_timeout(seconds(c.read_timeout))
        .with_timeout(seconds(c.timeout))
        .with_allow_http(allow_http)
}

fn retry_config(config: &Config) -> object_store::RetryConfig {
    let c = &config.storage_client;
    object_store::RetryConfig {
        max_retries: c.max_retries as usize,
        retry_timeout: seconds(c.retry_timeout),
        ..object_store::RetryConfig::default()
    }
}

/// The settings of the S3 flavours, in `s3`'s terms.
struct S3Settings {
    endpoint: Option<String>,
    region: String,
    access_key_id: Option<String>,
    secret_access_key: Option<String>,
    session_token: Option<String>,
    path_style: bool,
    allow_http: bool,
}

fn s3_settings(config: &Config) -> Result<S3Settings> {
    let expose =
        |s: &Option<quelea_core::config::Secret>| s.as_ref().map(|s| s.expose().to_owned());
    let http = |endpoint: &Option<String>| {
        endpoint
            .as_deref()
            .is_some_and(|e| e.starts_with("http://"))
    };
    Ok(match config.storage {
        StorageKind::IbmCos => {
            let cos = &config.ibm_cos;
            let endpoint = match (&cos.endpoint, &cos.region) {
                (Some(endpoint), _) => endpoint.clone(),
                (None, Some(region)) => ibm_cos_endpoint(region),
                (None, None) => {
                    return Err(Error::Config(
                        "ibm_cos: set `ibm_cos.region` (for example `us-east`) or                          `ibm_cos.endpoint`"
                            .into(),
                    ))
                }
            };
            S3Settings {
                allow_http: endpoint.starts_with("http://"),
                endpoint: Some(endpoint),
                // COS ignores the signing region; Lithops signs with the COS
                // region name, which COS accepts too.
                region: cos.region.clone().unwrap_or_else(|| "us-east-1".into()),
                access_key_id: cos.access_key_id.clone(),
                secret_access_key: expose(&cos.secret_access_key),
                session_token: None,
                path_style: true,
            }
        }
        StorageKind::Minio => {
            let minio = &config.minio;
            let Some(endpoint) = minio.endpoint.clone() else {
                return Err(Error::Config(
                    "minio: set `minio.endpoint` (for example `http://127.0.0.1:9000`)".into(),
                ));
            };
            S3Settings {
                allow_http: http(&minio.endpoint),
                endpoint: Some(endpoint),
                region: minio.region.clone().unwrap_or_else(|| "us-east-1".into()),
                access_key_id: minio.access_key_id.clone(),
                secret_access_key: expose(&minio.secret_access_key),
                session_token: None,
                path_style: true,
            }
        }
        _ => {
            let s3 = &config.s3;
            S3Settings {
                endpoint: s3.endpoint.clone(),
                region: s3.region.clone().unwrap_or_else(|| "us-east-1".into()),
                access_key_id: s3.access_key_id.clone(),
                secret_access_key: expose(&s3.secret_access_key),
                session_token: expose(&s3.session_token),
                path_style: s3.path_style,
                allow_http: s3.allow_http,
            }
        }
    })
}

fn build_s3(config: &Config) -> Result<object_store::aws::AmazonS3> {
    use object_store::aws::AmazonS3Builder;

    let name = config.storage.name();
    let s3 = s3_settings(config)?;
    let mut builder = AmazonS3Builder::new()
        .with_bucket_name(&config.bucket)
        .with_region(s3.region)
        .with_allow_http(s3.allow_http)
        .with_virtual_hosted_style_request(!s3.path_style)
        .with_client_options(client_options(config, s3.allow_http))
        .with_retry(retry_config(config));
    if let Some(endpoint) = &s3.endpoint {
        builder = builder.with_endpoint(endpoint);
    }
    if let Some(key) = &s3.access_key_id {
        builder = builder.with_access_key_id(key);
    }
    if let Some(secret) = &s3.secret_access_key {
        builder = builder.with_secret_access_key(secret);
    }
    if let Some(token) = &s3.session_token {
        builder = builder.with_token(token);
    }
    builder
        .build()
        .map_err(|e| Error::Config(format!("{name}: {e}")))
}

/// `host:port` (as `STORAGE_EMULATOR_HOST` is often given) means `http://`.
fn with_scheme(endpoint: &str) -> String {
    if endpoint.contains("://") {
        endpoint.trim_end_matches('/').to_owned()
    } else {
        format!("http://{}", endpoint.trim_end_matches('/'))
    }
}

fn build_gcs(config: &Config) -> Result<object_store::gcp::GoogleCloudStorage> {
    use object_store::gcp::GoogleCloudStorageBuilder;

    let gcs = &config.gcs;
    let endpoint = gcs.endpoint.as_deref().map(with_scheme);
    let allow_http = endpoint
        .as_deref()
        .is_some_and(|e| e.starts_with("http://"));
    let mut builder = GoogleCloudStorageBuilder::new()
        .with_bucket_name(&config.bucket)
        .with_client_options(client_options(config, allow_http))
        .with_retry(retry_config(config));
    if let Some(endpoint) = &endpoint {
        builder = builder.with_base_url(endpoint);
    }
    let path_str = |p: &std::path::Path| p.to_string_lossy().into_owned();
    if gcs.anonymous {
        // object_store's way to send no OAuth token at all (it would ask
        // the metadata server otherwise, even for unsigned requests).
        let key = serde_json::json!({
            "gcs_base_url": endpoint.as_deref().unwrap_or("https://storage.googleapis.com"),
            "disable_oauth": true,
            "client_email": "",
            "private_key": "",
            "private_key_id": "",
        });
        builder = builder.with_service_account_key(key.to_string());
    } else if let Some(key) = &gcs.service_account_key {
        builder = builder.with_service_account_key(key.expose());
    } else if let Some(path) = &gcs.service_account_path {
        builder = builder.with_service_account_path(path_str(path));
    } else if let Some(path) = &gcs.application_credentials {
        builder = builder.with_application_credentials(path_str(path));
    }
    builder
        .build()
        .map_err(|e| Error::Config(format!("gcs: {}", describe_cause(&e))))
}

fn build_azure(config: &Config) -> Result<object_store::azure::MicrosoftAzure> {
    use object_store::azure::MicrosoftAzureBuilder;

    let resolved = azure::resolve(&config.azure)?;
    let allow_http = resolved.endpoint.starts_with("http://");
    let mut builder = MicrosoftAzureBuilder::new()
        .with_account(&resolved.account)
        .with_container_name(&config.bucket)
        .with_endpoint(resolved.endpoint)
        .with_allow_http(allow_http)
        .with_client_options(client_options(config, allow_http))
        .with_retry(retry_config(config));
    if let Some(key) = &resolved.access_key {
        builder = builder.with_access_key(key);
    } else if let Some(sas) = &resolved.sas_token {
        builder = builder.with_sas_authorization(azure::sas_pairs(sas)?);
    }
    builder
        .build()
        .map_err(|e| Error::Config(format!("azure: {}", describe_cause(&e))))
}

#[cfg(test)]
mod tests {
    use super::redact_signatures;

    #[test]
    fn sas_signatures_are_redacted_from_messages() {
        assert_eq!(
            redact_signatures("GET http://h/c?sv=1&sig=abc%2B&se=2 in 3ms"),
            "GET http://h/c?sv=1&sig=<redacted>&se=2 in 3ms"
        );
        assert_eq!(redact_signatures("?sig=x"), "?sig=<redacted>");
        assert_eq!(
            redact_signatures("no signature; design=1"),
            "no signature; design=1"
        );
    }
}
