//! Layered, typed configuration.
//!
//! Layers, lowest first: built-in defaults < the config file
//! (`QUELEA_CONFIG_FILE`, else `~/.quelea/config.yaml` when it exists) <
//! `QUELEA_*` environment variables < explicit arguments. Each layer is checked
//! on its own before merging, so an unknown key or a bad value is reported with
//! the layer it came from and the key's path.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::error::{Error, Result};

/// Where calls run.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// A pool of warm runner processes on this machine.
    #[default]
    Local,
    /// Signed `POST /invoke` to one or more `quelea worker serve` servers.
    Http,
    /// Asynchronous invocations of an AWS Lambda function (the runtime as
    /// its bootstrap), through the Lambda Invoke API.
    AwsLambda,
}

/// Where job objects live.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StorageKind {
    /// A directory on this machine.
    #[default]
    Localdisk,
    /// Process memory; for tests. Other processes cannot attach to its jobs.
    Memory,
    /// An S3-compatible object store.
    S3,
    /// Google Cloud Storage (or an emulator such as fake-gcs-server).
    Gcs,
    /// Azure Blob Storage (or the Azurite emulator).
    Azure,
    /// IBM Cloud Object Storage: S3 with HMAC keys, its endpoint from `region`.
    IbmCos,
    /// MinIO: S3 at an endpoint of its own, path-style addressing.
    Minio,
}

impl StorageKind {
    /// Every kind, in the order errors list them.
    pub const ALL: [StorageKind; 7] = [
        StorageKind::Localdisk,
        StorageKind::Memory,
        StorageKind::S3,
        StorageKind::Gcs,
        StorageKind::Azure,
        StorageKind::IbmCos,
        StorageKind::Minio,
    ];

    /// The name configs use (`storage: NAME`).
    pub fn name(self) -> &'static str {
        match self {
            StorageKind::Localdisk => "localdisk",
            StorageKind::Memory => "memory",
            StorageKind::S3 => "s3",
            StorageKind::Gcs => "gcs",
            StorageKind::Azure => "azure",
            StorageKind::IbmCos => "ibm_cos",
            StorageKind::Minio => "minio",
        }
    }

    /// Whether it speaks the S3 API (`s3` and its named flavours).
    pub fn is_s3(self) -> bool {
        matches!(
            self,
            StorageKind::S3 | StorageKind::IbmCos | StorageKind::Minio
        )
    }
}

impl fmt::Display for StorageKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// How a client learns of its remote calls' statuses.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MonitoringKind {
    /// Listing the job's status prefix in storage.
    #[default]
    Storage,
    /// Status batches pushed through a NATS JetStream stream, with a slow
    /// storage listing behind them.
    Nats,
    /// Status batches pushed through a RabbitMQ exchange, with a slow storage
    /// listing behind them.
    Rabbitmq,
}

/// A credential: deserialized like a string, never printed or serialized.
#[derive(Clone, PartialEq, Eq, Deserialize)]
#[serde(transparent)]
pub struct Secret(String);

impl Secret {
    pub fn new(value: impl Into<String>) -> Self {
        Secret(value.into())
    }
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

impl Serialize for Secret {
    fn serialize<S: serde::Serializer>(&self, s: S) -> std::result::Result<S::Ok, S::Error> {
        s.serialize_str("<redacted>")
    }
}

/// The longest duration a config key takes, in seconds (a year).
pub const MAX_SECONDS: f64 = 365.0 * 24.0 * 3600.0;

/// The most retries of one storage request `storage_client.max_retries` takes.
pub const MAX_STORAGE_RETRIES: u32 = 100;

/// Maps smaller than this run one element per runner call when no
/// `chunksize` is given: dispatching them one by one costs too little.
pub const AUTO_CHUNK_MIN: u32 = 512;
/// Runner calls per worker that an automatic `chunksize` aims for.
pub const AUTO_CHUNKS_PER_WORKER: u32 = 4;

/// `multiprocessing.Pool.map`'s rule for a map of `total` elements on
/// `workers` runners: about four batches per runner, and none below
/// [`AUTO_CHUNK_MIN`] elements.
pub fn auto_chunksize(total: u32, workers: u32) -> u32 {
    if total < AUTO_CHUNK_MIN {
        return 1;
    }
    total
        .div_ceil(workers.max(1) * AUTO_CHUNKS_PER_WORKER)
        .max(1)
}

/// How calls execute, whatever the backend.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ExecutionConfig {
    /// Per-call time limit in seconds.
    pub timeout: f64,
    /// Per-runner resident memory limit in MiB; unset is unlimited.
    pub memory_limit_mb: Option<u64>,
    /// Map elements per runner call (a batch). Unset: automatic, as
    /// `multiprocessing.Pool.map` chunks (see [`auto_chunksize`]).
    pub chunksize: Option<u32>,
    /// Delete a job's objects once its results are read.
    pub data_cleaner: bool,
    /// Inputs up to this size travel inside the Invocation.
    pub inline_input_bytes: u64,
    /// Results up to this size are stored inside the status.
    pub inline_result_bytes: u64,
    /// How many times a failed call is run again (0 to [`MAX_RETRIES`]):
    /// after a timeout, running out of memory, a crashed runner or a lost
    /// call, and after a user error with `retry_user_errors`.
    pub retries: u32,
    /// Also run a call again when the function itself failed (raised,
    /// panicked or returned an error).
    pub retry_user_errors: bool,
}

/// The most `execution.retries` (and a job's `retries`) may be.
pub const MAX_RETRIES: u32 = 100;

impl Default for ExecutionConfig {
    fn default() -> Self {
        ExecutionConfig {
            timeout: 600.0,
            memory_limit_mb: None,
            chunksize: None,
            data_cleaner: true,
            inline_input_bytes: 8 * 1024,
            inline_result_bytes: 64 * 1024,
            retries: 0,
            retry_user_errors: false,
        }
    }
}

/// How long a storage request may take, for every kind of object storage
/// (object_store's client and retry options). The defaults suit an
/// interactive client: a server that accepts connections but answers nothing
/// (stopped, overloaded) is an error naming the storage in about
/// `read_timeout` + `retry_timeout` seconds, not minutes.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageClientConfig {
    /// Seconds to open a connection.
    pub connect_timeout: f64,
    /// Seconds without a byte from the server (its answer, or the next
    /// bytes of it) before a request fails: a stalled server is caught this
    /// fast while a large transfer that keeps moving is not cut off.
    pub read_timeout: f64,
    /// Seconds for one whole request, however it progresses.
    pub timeout: f64,
    /// Seconds after the first attempt after which a failed request is no
    /// longer retried.
    pub retry_timeout: f64,
    /// Retries of one request at most (0: none).
    pub max_retries: u32,
}

impl Default for StorageClientConfig {
    fn default() -> Self {
        StorageClientConfig {
            connect_timeout: 5.0,
            read_timeout: 10.0,
            timeout: 120.0,
            retry_timeout: 15.0,
            max_retries: 3,
        }
    }
}

/// The local backend.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalConfig {
    /// Runner processes in the pool; unset is one per CPU.
    pub workers: Option<u32>,
    /// How the Python client starts its runners.
    pub start_method: StartMethod,
}

/// How the Python client starts its local runners.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StartMethod {
    /// Fork them from the client while it is safe to (one thread, a small
    /// heap); fresh interpreters otherwise and for every later runner.
    #[default]
    Fork,
    /// Always fresh interpreters (`python -m quelea.worker`).
    Spawn,
}

/// The `http` backend (client side) and `quelea worker serve` (server side).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// Worker server base URLs (`http://host:port`); Invocations are spread
    /// over them round-robin.
    pub urls: Vec<String>,
    /// The shared secret Invocations are signed with (HMAC-SHA256). Both the
    /// client and the server need it; the server refuses to start without it.
    pub secret: Option<Secret>,
    /// Invocations in flight at once from one client.
    pub max_workers: u32,
    /// How long the client keeps retrying one Invocation (throttled, server
    /// unreachable) before failing its calls, in seconds.
    pub invoke_deadline: f64,
    /// Server: a signed request is accepted this many seconds either side of
    /// the server's clock, and its signature is remembered as long.
    pub replay_window: f64,
    /// Server: the largest request body accepted, in bytes.
    pub max_body_bytes: u64,
    /// Server: calls queued or running at once before the server answers 503.
    pub max_queued_calls: u64,
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            urls: Vec::new(),
            secret: None,
            max_workers: 64,
            invoke_deadline: 60.0,
            replay_window: 300.0,
            max_body_bytes: 8 * 1024 * 1024,
            max_queued_calls: 100_000,
        }
    }
}

/// The `aws_lambda` backend (client side), and what the Lambda bootstrap
/// reads of it (`python`).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AwsLambdaConfig {
    /// The function to invoke (name or ARN).
    pub function_name: Option<String>,
    /// Region of the function, for SigV4 and the default endpoint.
    pub region: Option<String>,
    /// Invoke API endpoint override (`http://127.0.0.1:9000` for the
    /// cargo-lambda emulator); unset is `https://lambda.<region>.amazonaws.com`.
    pub endpoint: Option<String>,
    /// The function's configured memory, for the cost estimate.
    pub memory_mb: u32,
    /// Invocations in flight at once from one client.
    pub max_workers: u32,
    /// How long the client keeps retrying one Invocation (throttled) before
    /// failing its calls, in seconds.
    pub invoke_deadline: f64,
    /// Credentials of the invoking client (normally `AWS_ACCESS_KEY_ID`,
    /// `AWS_SECRET_ACCESS_KEY`, `AWS_SESSION_TOKEN`); they sign requests and
    /// never travel in an Invocation.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    pub session_token: Option<Secret>,
    /// Bootstrap side: the Python interpreter (with the `quelea` package)
    /// that runs Python functions; unset serves only Rust functions.
    pub python: Option<PathBuf>,
}

impl Default for AwsLambdaConfig {
    fn default() -> Self {
        AwsLambdaConfig {
            function_name: None,
            region: None,
            endpoint: None,
            memory_mb: 1024,
            max_workers: 64,
            invoke_deadline: 60.0,
            access_key_id: None,
            secret_access_key: None,
            session_token: None,
            python: None,
        }
    }
}

/// Push monitoring through NATS JetStream (`monitoring: nats`). Clients and
/// workers both need the URL; it never travels in a job or an Invocation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct NatsConfig {
    /// `nats://[user:password@]host:port`; a secret, as it may hold credentials.
    pub url: Option<Secret>,
    /// The JetStream stream that captures `<subject_prefix>.>`; clients
    /// create it when it is missing.
    pub stream: String,
    /// Each job's statuses go to `<subject_prefix>.<executor_id>.<job_id>`.
    pub subject_prefix: String,
    /// How long the stream keeps a status batch, in seconds.
    pub max_age: f64,
}

impl Default for NatsConfig {
    fn default() -> Self {
        NatsConfig {
            url: None,
            stream: "QUELEA_STATUS".into(),
            subject_prefix: "quelea.status".into(),
            max_age: 3600.0,
        }
    }
}

/// Push monitoring through RabbitMQ (`monitoring: rabbitmq`). Clients and
/// workers both need the URL; it never travels in a job or an Invocation.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RabbitmqConfig {
    /// `amqp://user:password@host:5672/%2f`; a secret, as it holds credentials.
    pub url: Option<Secret>,
    /// The direct exchange status batches are published to, with routing key
    /// `<executor_id>.<job_id>`; each followed job binds its own exclusive,
    /// auto-deleted queue to it.
    pub exchange: String,
}

impl Default for RabbitmqConfig {
    fn default() -> Self {
        RabbitmqConfig {
            url: None,
            exchange: "quelea.status".into(),
        }
    }
}

/// Local-directory storage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LocalDiskConfig {
    /// The directory that holds the buckets; unset is `~/.quelea/storage`.
    pub root: Option<PathBuf>,
}

/// S3-compatible storage.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct S3Config {
    pub endpoint: Option<String>,
    pub region: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    pub session_token: Option<Secret>,
    /// Path-style addressing (`http://host/bucket/key`), as most S3 servers
    /// other than AWS want.
    pub path_style: bool,
    /// Allow plain `http://` endpoints.
    pub allow_http: bool,
}

/// The origin of an error found in the settings of every layer together.
const COMBINED: &str = "the combined settings (file, environment, arguments)";
/// Google Cloud Storage. Credentials, first found: `service_account_key`,
/// `service_account_path`, `application_credentials`
/// (`GOOGLE_APPLICATION_CREDENTIALS`), then gcloud's application default
/// credentials and the metadata server; `anonymous` sends none (emulators,
/// public buckets).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct GcsConfig {
    /// Base URL of the JSON API, for emulators (`http://127.0.0.1:4443`).
    pub endpoint: Option<String>,
    /// A service-account JSON key file.
    pub service_account_path: Option<PathBuf>,
    /// A service-account JSON key itself.
    pub service_account_key: Option<Secret>,
    /// An application-credentials file (service account or authorized user).
    pub application_credentials: Option<PathBuf>,
    /// Send no credentials.
    pub anonymous: bool,
}

/// Azure Blob Storage: a storage account, authorized by its key, a SAS token,
/// or a connection string holding either (then the Azure CLI / managed
/// identity chain when none is given).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AzureConfig {
    /// The storage account name.
    pub account: Option<String>,
    /// The account's shared key.
    pub access_key: Option<Secret>,
    /// A SAS token (`sv=...&sig=...`).
    pub sas_token: Option<Secret>,
    /// A connection string (`AccountName=..;AccountKey=..;BlobEndpoint=..`,
    /// or `UseDevelopmentStorage=true`).
    pub connection_string: Option<Secret>,
    /// The blob service URL, for emulators and sovereign clouds; unset is
    /// `https://<account>.blob.core.windows.net`.
    pub endpoint: Option<String>,
    /// Azurite's well-known development account (its key is public), at
    /// `endpoint` (default `http://127.0.0.1:10000`).
    pub use_emulator: bool,
}

/// IBM Cloud Object Storage with HMAC keys, as Lithops' `ibm_cos` section.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct IbmCosConfig {
    /// A COS region (`us-east`, `eu-de`, ...): the endpoint is
    /// `https://s3.<region>.cloud-object-storage.appdomain.cloud`.
    pub region: Option<String>,
    /// An explicit endpoint instead (private or direct endpoints).
    pub endpoint: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
}

/// MinIO, as Lithops' `minio` section.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct MinioConfig {
    /// The server, `http://host:9000`.
    pub endpoint: Option<String>,
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<Secret>,
    /// Unset is `us-east-1`, MinIO's default.
    pub region: Option<String>,
}

/// The whole resolved configuration.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub backend: BackendKind,
    pub storage: StorageKind,
    /// How remote calls are followed; push monitoring applies to the remote
    /// backends (`http`, `aws_lambda`): the local one hears its calls directly.
    pub monitoring: MonitoringKind,
    /// With push monitoring, storage is still listed this often (seconds),
    /// so a lost message or a dead broker never loses a call.
    pub push_fallback_interval: f64,
    /// The bucket (a subdirectory for `localdisk`) holding job objects.
    pub bucket: String,
    pub execution: ExecutionConfig,
    pub storage_client: StorageClientConfig,
    pub local: LocalConfig,
    pub http: HttpConfig,
    pub aws_lambda: AwsLambdaConfig,
    pub localdisk: LocalDiskConfig,
    pub s3: S3Config,
    pub gcs: GcsConfig,
    pub azure: AzureConfig,
    pub ibm_cos: IbmCosConfig,
    pub minio: MinioConfig,
    pub nats: NatsConfig,
    pub rabbitmq: RabbitmqConfig,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            backend: BackendKind::Local,
            storage: StorageKind::Localdisk,
            monitoring: MonitoringKind::Storage,
            push_fallback_interval: 2.0,
            bucket: "quelea".into(),
            execution: ExecutionConfig::default(),
            storage_client: StorageClientConfig::default(),
            local: LocalConfig::default(),
            http: HttpConfig::default(),
            aws_lambda: AwsLambdaConfig::default(),
            localdisk: LocalDiskConfig::default(),
            s3: S3Config::default(),
            gcs: GcsConfig::default(),
            azure: AzureConfig::default(),
            ibm_cos: IbmCosConfig::default(),
            minio: MinioConfig::default(),
            nats: NatsConfig::default(),
            rabbitmq: RabbitmqConfig::default(),
        }
    }
}

/// The names of every environment variable quelea reads.
pub struct EnvVars;

impl EnvVars {
    pub const CONFIG_FILE: &'static str = "QUELEA_CONFIG_FILE";
    /// Set by the local pool on the processes it starts as runners.
    pub const RUNNER: &'static str = "QUELEA_RUNNER";
    /// `quelea dashboard`'s token (not a config setting).
    pub const DASHBOARD_TOKEN: &'static str = "QUELEA_DASHBOARD_TOKEN";
    /// Where a dashboard runs, for clients to print their jobs' pages.
    pub const DASHBOARD_URL: &'static str = "QUELEA_DASHBOARD_URL";
    pub const BACKEND: &'static str = "QUELEA_BACKEND";
    pub const STORAGE: &'static str = "QUELEA_STORAGE";
    pub const BUCKET: &'static str = "QUELEA_BUCKET";
    pub const TIMEOUT: &'static str = "QUELEA_TIMEOUT";
    pub const MEMORY_LIMIT_MB: &'static str = "QUELEA_MEMORY_LIMIT_MB";
    pub const CHUNKSIZE: &'static str = "QUELEA_CHUNKSIZE";
    pub const RETRIES: &'static str = "QUELEA_RETRIES";
    pub const DATA_CLEANER: &'static str = "QUELEA_DATA_CLEANER";
    pub const WORKERS: &'static str = "QUELEA_WORKERS";
    pub const START_METHOD: &'static str = "QUELEA_START_METHOD";
    pub const STORAGE_DIR: &'static str = "QUELEA_STORAGE_DIR";
    pub const S3_ENDPOINT: &'static str = "QUELEA_S3_ENDPOINT";
    pub const S3_REGION: &'static str = "QUELEA_S3_REGION";
    pub const S3_ACCESS_KEY_ID: &'static str = "QUELEA_S3_ACCESS_KEY_ID";
    pub const S3_SECRET_ACCESS_KEY: &'static str = "QUELEA_S3_SECRET_ACCESS_KEY";
    pub const S3_PATH_STYLE: &'static str = "QUELEA_S3_PATH_STYLE";
    pub const S3_ALLOW_HTTP: &'static str = "QUELEA_S3_ALLOW_HTTP";
    pub const GCS_ENDPOINT: &'static str = "QUELEA_GCS_ENDPOINT";
    pub const GCS_SERVICE_ACCOUNT_PATH: &'static str = "QUELEA_GCS_SERVICE_ACCOUNT_PATH";
    pub const GCS_SERVICE_ACCOUNT_KEY: &'static str = "QUELEA_GCS_SERVICE_ACCOUNT_KEY";
    pub const GCS_ANONYMOUS: &'static str = "QUELEA_GCS_ANONYMOUS";
    pub const AZURE_ACCOUNT: &'static str = "QUELEA_AZURE_ACCOUNT";
    pub const AZURE_ACCESS_KEY: &'static str = "QUELEA_AZURE_ACCESS_KEY";
    pub const AZURE_SAS_TOKEN: &'static str = "QUELEA_AZURE_SAS_TOKEN";
    pub const AZURE_CONNECTION_STRING: &'static str = "QUELEA_AZURE_CONNECTION_STRING";
    pub const AZURE_ENDPOINT: &'static str = "QUELEA_AZURE_ENDPOINT";
    pub const AZURE_USE_EMULATOR: &'static str = "QUELEA_AZURE_USE_EMULATOR";
    pub const IBM_COS_REGION: &'static str = "QUELEA_IBM_COS_REGION";
    pub const IBM_COS_ENDPOINT: &'static str = "QUELEA_IBM_COS_ENDPOINT";
    pub const IBM_COS_ACCESS_KEY_ID: &'static str = "QUELEA_IBM_COS_ACCESS_KEY_ID";
    pub const IBM_COS_SECRET_ACCESS_KEY: &'static str = "QUELEA_IBM_COS_SECRET_ACCESS_KEY";
    pub const MINIO_ENDPOINT: &'static str = "QUELEA_MINIO_ENDPOINT";
    pub const MINIO_ACCESS_KEY_ID: &'static str = "QUELEA_MINIO_ACCESS_KEY_ID";
    pub const MINIO_SECRET_ACCESS_KEY: &'static str = "QUELEA_MINIO_SECRET_ACCESS_KEY";
    /// Comma-separated worker server URLs.
    pub const HTTP_URLS: &'static str = "QUELEA_HTTP_URLS";
    pub const HTTP_SECRET: &'static str = "QUELEA_HTTP_SECRET";
    pub const HTTP_MAX_WORKERS: &'static str = "QUELEA_HTTP_MAX_WORKERS";
    pub const AWS_LAMBDA_FUNCTION_NAME: &'static str = "QUELEA_AWS_LAMBDA_FUNCTION_NAME";
    pub const AWS_LAMBDA_REGION: &'static str = "QUELEA_AWS_LAMBDA_REGION";
    pub const AWS_LAMBDA_ENDPOINT: &'static str = "QUELEA_AWS_LAMBDA_ENDPOINT";
    pub const AWS_LAMBDA_MEMORY_MB: &'static str = "QUELEA_AWS_LAMBDA_MEMORY_MB";
    pub const AWS_LAMBDA_MAX_WORKERS: &'static str = "QUELEA_AWS_LAMBDA_MAX_WORKERS";
    pub const AWS_LAMBDA_INVOKE_DEADLINE: &'static str = "QUELEA_AWS_LAMBDA_INVOKE_DEADLINE";
    pub const AWS_LAMBDA_PYTHON: &'static str = "QUELEA_AWS_LAMBDA_PYTHON";
    pub const MONITORING: &'static str = "QUELEA_MONITORING";
    pub const PUSH_FALLBACK_INTERVAL: &'static str = "QUELEA_PUSH_FALLBACK_INTERVAL";
    pub const STORAGE_CLIENT_CONNECT_TIMEOUT: &'static str =
        "QUELEA_STORAGE_CLIENT_CONNECT_TIMEOUT";
    pub const STORAGE_CLIENT_READ_TIMEOUT: &'static str = "QUELEA_STORAGE_CLIENT_READ_TIMEOUT";
    pub const STORAGE_CLIENT_TIMEOUT: &'static str = "QUELEA_STORAGE_CLIENT_TIMEOUT";
    pub const STORAGE_CLIENT_RETRY_TIMEOUT: &'static str = "QUELEA_STORAGE_CLIENT_RETRY_TIMEOUT";
    pub const STORAGE_CLIENT_MAX_RETRIES: &'static str = "QUELEA_STORAGE_CLIENT_MAX_RETRIES";
    pub const NATS_URL: &'static str = "QUELEA_NATS_URL";
    pub const RABBITMQ_URL: &'static str = "QUELEA_RABBITMQ_URL";
}

#[derive(Clone, Copy)]
enum Kind {
    Str,
    Int,
    Num,
    Bool,
    /// Comma-separated strings.
    List,
}

/// Each config variable: its config path and the kind of value it takes.
const ENV_KEYS: &[(&str, &str, Kind)] = &[
    (EnvVars::BACKEND, "backend", Kind::Str),
    (EnvVars::STORAGE, "storage", Kind::Str),
    (EnvVars::BUCKET, "bucket", Kind::Str),
    (EnvVars::TIMEOUT, "execution.timeout", Kind::Num),
    (
        EnvVars::MEMORY_LIMIT_MB,
        "execution.memory_limit_mb",
        Kind::Int,
    ),
    (EnvVars::CHUNKSIZE, "execution.chunksize", Kind::Int),
    (EnvVars::RETRIES, "execution.retries", Kind::Int),
    (EnvVars::DATA_CLEANER, "execution.data_cleaner", Kind::Bool),
    (EnvVars::WORKERS, "local.workers", Kind::Int),
    (EnvVars::START_METHOD, "local.start_method", Kind::Str),
    (EnvVars::STORAGE_DIR, "localdisk.root", Kind::Str),
    (EnvVars::S3_ENDPOINT, "s3.endpoint", Kind::Str),
    (EnvVars::S3_REGION, "s3.region", Kind::Str),
    (EnvVars::S3_ACCESS_KEY_ID, "s3.access_key_id", Kind::Str),
    (
        EnvVars::S3_SECRET_ACCESS_KEY,
        "s3.secret_access_key",
        Kind::Str,
    ),
    (EnvVars::S3_PATH_STYLE, "s3.path_style", Kind::Bool),
    (EnvVars::S3_ALLOW_HTTP, "s3.allow_http", Kind::Bool),
    (EnvVars::GCS_ENDPOINT, "gcs.endpoint", Kind::Str),
    (
        EnvVars::GCS_SERVICE_ACCOUNT_PATH,
        "gcs.service_account_path",
        Kind::Str,
    ),
    (
        EnvVars::GCS_SERVICE_ACCOUNT_KEY,
        "gcs.service_account_key",
        Kind::Str,
    ),
    (EnvVars::GCS_ANONYMOUS, "gcs.anonymous", Kind::Bool),
    (EnvVars::AZURE_ACCOUNT, "azure.account", Kind::Str),
    (EnvVars::AZURE_ACCESS_KEY, "azure.access_key", Kind::Str),
    (EnvVars::AZURE_SAS_TOKEN, "azure.sas_token", Kind::Str),
    (
        EnvVars::AZURE_CONNECTION_STRING,
        "azure.connection_string",
        Kind::Str,
    ),
    (EnvVars::AZURE_ENDPOINT, "azure.endpoint", Kind::Str),
    (
        EnvVars::AZURE_USE_EMULATOR,
        "azure.use_emulator",
        Kind::Bool,
    ),
    (EnvVars::IBM_COS_REGION, "ibm_cos.region", Kind::Str),
    (EnvVars::IBM_COS_ENDPOINT, "ibm_cos.endpoint", Kind::Str),
    (
        EnvVars::IBM_COS_ACCESS_KEY_ID,
        "ibm_cos.access_key_id",
        Kind::Str,
    ),
    (
        EnvVars::IBM_COS_SECRET_ACCESS_KEY,
        "ibm_cos.secret_access_key",
        Kind::Str,
    ),
    (EnvVars::MINIO_ENDPOINT, "minio.endpoint", Kind::Str),
    (
        EnvVars::MINIO_ACCESS_KEY_ID,
        "minio.access_key_id",
        Kind::Str,
    ),
    (
        EnvVars::MINIO_SECRET_ACCESS_KEY,
        "minio.secret_access_key",
        Kind::Str,
    ),
    (EnvVars::HTTP_URLS, "http.urls", Kind::List),
    (EnvVars::HTTP_SECRET, "http.secret", Kind::Str),
    (EnvVars::HTTP_MAX_WORKERS, "http.max_workers", Kind::Int),
    (
        EnvVars::AWS_LAMBDA_FUNCTION_NAME,
        "aws_lambda.function_name",
        Kind::Str,
    ),
    (EnvVars::AWS_LAMBDA_REGION, "aws_lambda.region", Kind::Str),
    (
        EnvVars::AWS_LAMBDA_ENDPOINT,
        "aws_lambda.endpoint",
        Kind::Str,
    ),
    (
        EnvVars::AWS_LAMBDA_MEMORY_MB,
        "aws_lambda.memory_mb",
        Kind::Int,
    ),
    (
        EnvVars::AWS_LAMBDA_MAX_WORKERS,
        "aws_lambda.max_workers",
        Kind::Int,
    ),
    (
        EnvVars::AWS_LAMBDA_INVOKE_DEADLINE,
        "aws_lambda.invoke_deadline",
        Kind::Num,
    ),
    (EnvVars::AWS_LAMBDA_PYTHON, "aws_lambda.python", Kind::Str),
    (EnvVars::MONITORING, "monitoring", Kind::Str),
    (
        EnvVars::PUSH_FALLBACK_INTERVAL,
        "push_fallback_interval",
        Kind::Num,
    ),
    (EnvVars::NATS_URL, "nats.url", Kind::Str),
    (EnvVars::RABBITMQ_URL, "rabbitmq.url", Kind::Str),
    (
        EnvVars::STORAGE_CLIENT_CONNECT_TIMEOUT,
        "storage_client.connect_timeout",
        Kind::Num,
    ),
    (
        EnvVars::STORAGE_CLIENT_READ_TIMEOUT,
        "storage_client.read_timeout",
        Kind::Num,
    ),
    (
        EnvVars::STORAGE_CLIENT_TIMEOUT,
        "storage_client.timeout",
        Kind::Num,
    ),
    (
        EnvVars::STORAGE_CLIENT_RETRY_TIMEOUT,
        "storage_client.retry_timeout",
        Kind::Num,
    ),
    (
        EnvVars::STORAGE_CLIENT_MAX_RETRIES,
        "storage_client.max_retries",
        Kind::Int,
    ),
];

/// The standard AWS, Google and Azure variables, applied below the `QUELEA_*` ones, lowest
/// precedence first (the service-specific endpoint wins over the generic one).
const STANDARD_ENV_KEYS: &[(&str, &str)] = &[
    ("AWS_ACCESS_KEY_ID", "s3.access_key_id"),
    ("AWS_SECRET_ACCESS_KEY", "s3.secret_access_key"),
    ("AWS_SESSION_TOKEN", "s3.session_token"),
    ("AWS_DEFAULT_REGION", "s3.region"),
    ("AWS_REGION", "s3.region"),
    ("AWS_ENDPOINT_URL", "s3.endpoint"),
    ("AWS_ENDPOINT_URL_S3", "s3.endpoint"),
    ("AWS_ACCESS_KEY_ID", "aws_lambda.access_key_id"),
    ("AWS_SECRET_ACCESS_KEY", "aws_lambda.secret_access_key"),
    ("AWS_SESSION_TOKEN", "aws_lambda.session_token"),
    ("AWS_DEFAULT_REGION", "aws_lambda.region"),
    ("AWS_REGION", "aws_lambda.region"),
    ("AWS_ENDPOINT_URL", "aws_lambda.endpoint"),
    ("AWS_ENDPOINT_URL_LAMBDA", "aws_lambda.endpoint"),
    // Google's and Azure's own variables (as their SDKs and CLIs read them).
    (
        "GOOGLE_APPLICATION_CREDENTIALS",
        "gcs.application_credentials",
    ),
    ("STORAGE_EMULATOR_HOST", "gcs.endpoint"),
    ("AZURE_STORAGE_ACCOUNT", "azure.account"),
    ("AZURE_STORAGE_ACCOUNT_NAME", "azure.account"),
    ("AZURE_STORAGE_KEY", "azure.access_key"),
    ("AZURE_STORAGE_ACCOUNT_KEY", "azure.access_key"),
    ("AZURE_STORAGE_SAS_TOKEN", "azure.sas_token"),
    ("AZURE_STORAGE_CONNECTION_STRING", "azure.connection_string"),
];

/// Variables with the `QUELEA_` prefix that are not config keys.
const NON_CONFIG_ENV: &[&str] = &[
    EnvVars::CONFIG_FILE,
    EnvVars::RUNNER,
    "QUELEA_LOG",
    // Read by `quelea dashboard` and by the clients that print its URL.
    EnvVars::DASHBOARD_TOKEN,
    EnvVars::DASHBOARD_URL,
];

/// Builds a [`Config`] from its layers. Serializable, so that a second
/// process can build the same config (the conformance tests' second clients).
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct ConfigBuilder {
    file: Option<PathBuf>,
    skip_file: bool,
    env: Option<BTreeMap<String, String>>,
    overrides: Vec<Value>,
}

impl ConfigBuilder {
    pub fn new() -> Self {
        Self::default()
    }

    /// Read this config file instead of the default location.
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(path.into());
        self
    }

    /// Read no config file at all.
    pub fn no_file(mut self) -> Self {
        self.skip_file = true;
        self
    }

    /// Use these variables instead of the process environment.
    pub fn env(mut self, vars: impl IntoIterator<Item = (String, String)>) -> Self {
        self.env = Some(vars.into_iter().collect());
        self
    }

    /// Explicit settings, highest precedence: a JSON object shaped like the
    /// config file (`{"local": {"workers": 2}}`).
    pub fn overrides(mut self, value: Value) -> Self {
        self.overrides.push(value);
        self
    }

    /// One explicit setting by dotted path (`"execution.timeout"`).
    pub fn set(self, path: &str, value: impl Into<Value>) -> Self {
        let value = nest(path, value.into());
        self.overrides(value)
    }

    pub fn build(self) -> Result<Config> {
        let env: BTreeMap<String, String> = match self.env {
            Some(env) => env,
            None => std::env::vars().collect(),
        };
        let mut merged = Value::Object(Map::new());

        if !self.skip_file {
            let explicit = self
                .file
                .clone()
                .or_else(|| env.get(EnvVars::CONFIG_FILE).map(PathBuf::from));
            let path = match explicit {
                Some(path) => Some(path),
                None => default_config_file().filter(|p| p.exists()),
            };
            if let Some(path) = path {
                let layer = read_file_layer(&path)?;
                merge(&mut merged, layer);
            }
        }

        let env_layer = env_layer(&env)?;
        check_layer(&env_layer, "the environment")?;
        merge(&mut merged, env_layer);

        for layer in self.overrides {
            if !layer.is_object() {
                return Err(Error::Config {
                    origin: "the arguments".into(),
                    message: format!("expected a mapping of settings, got `{layer}`"),
                });
            }
            check_layer(&layer, "the arguments")?;
            merge(&mut merged, layer);
        }

        let config = parse_layer(merged, COMBINED)?;
        config.validate()?;
        Ok(config)
    }
}

impl Config {
    /// Defaults < file < environment, no explicit arguments.
    pub fn load() -> Result<Config> {
        ConfigBuilder::new().build()
    }

    /// The directory of `localdisk` storage, resolved.
    pub fn localdisk_root(&self) -> PathBuf {
        self.localdisk.root.clone().unwrap_or_else(|| {
            home_dir()
                .unwrap_or_else(std::env::temp_dir)
                .join(".quelea")
                .join("storage")
        })
    }

    /// Runner processes for the local backend, resolved.
    pub fn local_workers(&self) -> u32 {
        self.local.workers.unwrap_or_else(|| {
            std::thread::available_parallelism()
                .map(|n| n.get() as u32)
                .unwrap_or(1)
        })
    }

    /// The config as YAML-ready JSON, with defaults resolved and secrets
    /// redacted.
    pub fn redacted(&self) -> Value {
        let mut resolved = self.clone();
        resolved.local.workers = Some(self.local_workers());
        if self.storage == StorageKind::Localdisk {
            resolved.localdisk.root = Some(self.localdisk_root());
        }
        serde_json::to_value(&resolved).expect("config always serializes")
    }

    /// The whole config as JSON, credentials included: only for the
    /// executor's own runner processes on this machine (their environment),
    /// never for payloads, handles or logs.
    pub fn runner_json(&self) -> String {
        let mut value = serde_json::to_value(self).expect("config always serializes");
        let s3 = &mut value["s3"];
        if let Some(secret) = &self.s3.secret_access_key {
            s3["secret_access_key"] = Value::String(secret.expose().to_owned());
        }
        if let Some(token) = &self.s3.session_token {
            s3["session_token"] = Value::String(token.expose().to_owned());
        }
        let mut expose = |section: &str, key: &str, secret: &Option<Secret>| {
            if let Some(secret) = secret {
                value[section][key] = Value::String(secret.expose().to_owned());
            }
        };
        expose("gcs", "service_account_key", &self.gcs.service_account_key);
        expose("azure", "access_key", &self.azure.access_key);
        expose("azure", "sas_token", &self.azure.sas_token);
        expose("azure", "connection_string", &self.azure.connection_string);
        expose(
            "ibm_cos",
            "secret_access_key",
            &self.ibm_cos.secret_access_key,
        );
        expose("minio", "secret_access_key", &self.minio.secret_access_key);
        if let Some(secret) = &self.http.secret {
            value["http"]["secret"] = Value::String(secret.expose().to_owned());
        }
        let lambda = &mut value["aws_lambda"];
        if let Some(secret) = &self.aws_lambda.secret_access_key {
            lambda["secret_access_key"] = Value::String(secret.expose().to_owned());
        }
        if let Some(token) = &self.aws_lambda.session_token {
            lambda["session_token"] = Value::String(token.expose().to_owned());
        }
        if let Some(url) = &self.nats.url {
            value["nats"]["url"] = Value::String(url.expose().to_owned());
        }
        if let Some(url) = &self.rabbitmq.url {
            value["rabbitmq"]["url"] = Value::String(url.expose().to_owned());
        }
        value.to_string()
    }

    fn validate(&self) -> Result<()> {
        let bad = |key: &str, message: String| Error::Config {
            origin: COMBINED.into(),
            message: format!("`{key}` {message}"),
        };
        // Every duration a number of seconds that a `Duration` holds and a
        // person means: positive and at most a year.
        for (key, seconds) in [
            ("execution.timeout", self.execution.timeout),
            ("http.replay_window", self.http.replay_window),
            ("http.invoke_deadline", self.http.invoke_deadline),
            (
                "aws_lambda.invoke_deadline",
                self.aws_lambda.invoke_deadline,
            ),
            ("push_fallback_interval", self.push_fallback_interval),
            ("nats.max_age", self.nats.max_age),
            (
                "storage_client.connect_timeout",
                self.storage_client.connect_timeout,
            ),
            (
                "storage_client.read_timeout",
                self.storage_client.read_timeout,
            ),
            ("storage_client.timeout", self.storage_client.timeout),
            (
                "storage_client.retry_timeout",
                self.storage_client.retry_timeout,
            ),
        ] {
            if !(seconds.is_finite() && seconds > 0.0 && seconds <= MAX_SECONDS) {
                return Err(bad(
                    key,
                    format!(
                        "must be a positive number of seconds up to {MAX_SECONDS} (a year), got {seconds}"
                    ),
                ));
            }
        }
        if let Some(mb) = self.execution.memory_limit_mb {
            if mb > u64::MAX >> 20 {
                return Err(bad(
                    "execution.memory_limit_mb",
                    format!("must be at most {} MiB, got {mb}", u64::MAX >> 20),
                ));
            }
        }
        if self.storage_client.max_retries > MAX_STORAGE_RETRIES {
            return Err(bad(
                "storage_client.max_retries",
                format!(
                    "must be at most {MAX_STORAGE_RETRIES}, got {}",
                    self.storage_client.max_retries
                ),
            ));
        }
        if self.execution.chunksize == Some(0) {
            return Err(bad("execution.chunksize", "must be at least 1".into()));
        }
        if self.execution.retries > MAX_RETRIES {
            return Err(bad(
                "execution.retries",
                format!(
                    "must be between 0 and {MAX_RETRIES}, got {}",
                    self.execution.retries
                ),
            ));
        }
        if self.execution.memory_limit_mb == Some(0) {
            return Err(bad(
                "execution.memory_limit_mb",
                "must be at least 1 (leave it unset for no limit)".into(),
            ));
        }
        if self.local.workers == Some(0) {
            return Err(bad("local.workers", "must be at least 1".into()));
        }
        self.validate_http()?;
        self.validate_aws_lambda()?;
        self.validate_monitoring()?;
        let bucket_ok = !self.bucket.is_empty()
            && self.bucket.len() <= 63
            && self
                .bucket
                .chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.');
        if !bucket_ok {
            return Err(bad(
                "bucket",
                format!(
                    "`{}` is not a valid bucket name (1-63 lowercase letters, digits, `-` or `.`)",
                    self.bucket
                ),
            ));
        }
        Ok(())
    }
}

impl Config {
    fn validate_http(&self) -> Result<()> {
        let bad = |key: &str, message: String| Error::Config {
            origin: COMBINED.into(),
            message: format!("`{key}` {message}"),
        };
        let http = &self.http;
        if http.max_workers == 0 {
            return Err(bad("http.max_workers", "must be at least 1".into()));
        }
        for (key, value) in [
            ("http.invoke_deadline", http.invoke_deadline),
            ("http.replay_window", http.replay_window),
        ] {
            if !(value.is_finite() && value > 0.0) {
                return Err(bad(
                    key,
                    format!("must be a positive number of seconds, got {value}"),
                ));
            }
        }
        if http.max_body_bytes == 0 {
            return Err(bad("http.max_body_bytes", "must be at least 1".into()));
        }
        for url in &http.urls {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                return Err(bad(
                    "http.urls",
                    format!("`{url}` is not an http:// or https:// URL"),
                ));
            }
        }
        if self.backend == BackendKind::Http {
            if http.urls.is_empty() {
                return Err(bad(
                    "http.urls",
                    format!(
                        "must list at least one worker server URL for `backend: http` \
                         (or set `{}`)",
                        EnvVars::HTTP_URLS
                    ),
                ));
            }
            if http.secret.as_ref().is_none_or(|s| s.expose().is_empty()) {
                return Err(bad(
                    "http.secret",
                    format!(
                        "must be set for `backend: http`: Invocations are signed with it \
                         (or set `{}`)",
                        EnvVars::HTTP_SECRET
                    ),
                ));
            }
            if self.storage == StorageKind::Memory {
                return Err(bad(
                    "storage",
                    "is `memory`, which worker servers cannot read: use `localdisk` \
                     (servers on this machine) or `s3` with `backend: http`"
                        .into(),
                ));
            }
        }
        Ok(())
    }
}

impl Config {
    fn validate_aws_lambda(&self) -> Result<()> {
        let bad = |key: &str, message: String| Error::Config {
            origin: COMBINED.into(),
            message: format!("`{key}` {message}"),
        };
        let lambda = &self.aws_lambda;
        if lambda.max_workers == 0 {
            return Err(bad("aws_lambda.max_workers", "must be at least 1".into()));
        }
        if lambda.memory_mb < 128 || lambda.memory_mb > 10_240 {
            return Err(bad(
                "aws_lambda.memory_mb",
                format!(
                    "must be between 128 and 10240 (Lambda's range), got {}",
                    lambda.memory_mb
                ),
            ));
        }
        let deadline = lambda.invoke_deadline;
        if !(deadline.is_finite() && deadline > 0.0) {
            return Err(bad(
                "aws_lambda.invoke_deadline",
                format!("must be a positive number of seconds, got {deadline}"),
            ));
        }
        if let Some(endpoint) = &lambda.endpoint {
            if !(endpoint.starts_with("http://") || endpoint.starts_with("https://")) {
                return Err(bad(
                    "aws_lambda.endpoint",
                    format!("`{endpoint}` is not an http:// or https:// URL"),
                ));
            }
        }
        if let Some(region) = &lambda.region {
            let ok = !region.is_empty()
                && region
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
            if !ok {
                return Err(bad(
                    "aws_lambda.region",
                    format!("`{region}` is not a region name (like `us-east-1`)"),
                ));
            }
        }
        if self.backend != BackendKind::AwsLambda {
            return Ok(());
        }
        // Everything missing at once, so that one try tells what to set.
        let mut missing = Vec::new();
        if lambda.function_name.as_deref().is_none_or(str::is_empty) {
            missing.push(format!(
                "`aws_lambda.function_name` (or `{}`)",
                EnvVars::AWS_LAMBDA_FUNCTION_NAME
            ));
        }
        if lambda.region.is_none() {
            missing.push(format!(
                "`aws_lambda.region` (or `{}` or `AWS_REGION`)",
                EnvVars::AWS_LAMBDA_REGION
            ));
        }
        if lambda.access_key_id.as_deref().is_none_or(str::is_empty)
            || lambda
                .secret_access_key
                .as_ref()
                .is_none_or(|s| s.expose().is_empty())
        {
            missing.push(
                "`aws_lambda.access_key_id` and `aws_lambda.secret_access_key`, which sign \
                 the Invoke requests (or `AWS_ACCESS_KEY_ID` and `AWS_SECRET_ACCESS_KEY`)"
                    .to_owned(),
            );
        }
        // Any storage the function reaches over the network will do; a
        // directory of this machine or this process's memory cannot be read
        // from a Lambda function.
        let unreachable = match self.storage {
            StorageKind::Localdisk => Some("a directory of this machine"),
            StorageKind::Memory => Some("this process's memory"),
            _ => None,
        };
        if let Some(place) = unreachable {
            missing.push(format!(
                "`storage: s3` or another storage a Lambda function can reach \
                 (`gcs`, `azure`, `ibm_cos`, `minio`); it is `{}`, {place}, which the \
                 function cannot read",
                self.storage.name()
            ));
        }
        if !missing.is_empty() {
            return Err(Error::Config {
                origin: COMBINED.into(),
                message: format!(
                    "`backend: aws_lambda` needs {} more setting(s): {}",
                    missing.len(),
                    missing.join("; ")
                ),
            });
        }
        Ok(())
    }
}

impl Config {
    fn validate_monitoring(&self) -> Result<()> {
        let bad = |key: &str, message: String| Error::Config {
            origin: COMBINED.into(),
            message: format!("`{key}` {message}"),
        };
        let interval = self.push_fallback_interval;
        if !(interval.is_finite() && interval > 0.0) {
            return Err(bad(
                "push_fallback_interval",
                format!("must be a positive number of seconds, got {interval}"),
            ));
        }
        let nats = &self.nats;
        if !(nats.max_age.is_finite() && nats.max_age > 0.0) {
            return Err(bad(
                "nats.max_age",
                format!("must be a positive number of seconds, got {}", nats.max_age),
            ));
        }
        let token_ok = |t: &str| {
            !t.is_empty()
                && t.chars()
                    .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_'))
        };
        if !nats.subject_prefix.split('.').all(token_ok) {
            return Err(bad(
                "nats.subject_prefix",
                format!(
                    "`{}` is not a NATS subject of dot-separated tokens (letters, digits, `-`, `_`)",
                    nats.subject_prefix
                ),
            ));
        }
        if !token_ok(&nats.stream) {
            return Err(bad(
                "nats.stream",
                format!(
                    "`{}` is not a stream name (letters, digits, `-`, `_`)",
                    nats.stream
                ),
            ));
        }
        if !self.rabbitmq.exchange.split('.').all(token_ok) {
            return Err(bad(
                "rabbitmq.exchange",
                format!(
                    "`{}` is not an exchange name (dot-separated letters, digits, `-`, `_`)",
                    self.rabbitmq.exchange
                ),
            ));
        }
        // URLs are checked wherever they are set (workers read them without
        // choosing push monitoring themselves); required only when chosen.
        let urls = [
            (
                "nats.url",
                &nats.url,
                &["nats://", "tls://"][..],
                EnvVars::NATS_URL,
            ),
            (
                "rabbitmq.url",
                &self.rabbitmq.url,
                &["amqp://", "amqps://"][..],
                EnvVars::RABBITMQ_URL,
            ),
        ];
        for (key, url, schemes, var) in urls {
            let chosen = match key {
                "nats.url" => self.monitoring == MonitoringKind::Nats,
                _ => self.monitoring == MonitoringKind::Rabbitmq,
            };
            match url {
                Some(url) if !schemes.iter().any(|s| url.expose().starts_with(s)) => {
                    return Err(bad(
                        key,
                        format!(
                            "`{}` is not a {} URL",
                            redact_url(url.expose()),
                            schemes.join(" or ")
                        ),
                    ));
                }
                None if chosen => {
                    return Err(bad(
                        key,
                        format!(
                            "must be set for `monitoring: {}` (or set `{var}`)",
                            key.split('.').next().unwrap_or_default()
                        ),
                    ));
                }
                _ => {}
            }
        }
        Ok(())
    }
}

/// `url` with its password (or a bare token) replaced, for error messages.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let Some(at) = rest[..authority_end].rfind('@') else {
        return url.to_owned();
    };
    let user = match rest[..at].split_once(':') {
        Some((user, _)) => format!("{user}:<redacted>"),
        None => "<redacted>".to_owned(),
    };
    format!("{scheme}://{user}{}", &rest[at..])
}

fn home_dir() -> Option<PathBuf> {
    std::env::var_os("HOME")
        .filter(|h| !h.is_empty())
        .map(PathBuf::from)
}

fn default_config_file() -> Option<PathBuf> {
    home_dir().map(|h| h.join(".quelea").join("config.yaml"))
}

fn read_file_layer(path: &Path) -> Result<Value> {
    let origin = format!("file `{}`", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| Error::Config {
        origin: origin.clone(),
        message: format!("cannot read it: {e}"),
    })?;
    let value: Value = if text.trim().is_empty() {
        Value::Object(Map::new())
    } else {
        serde_yaml_ng::from_str(&text).map_err(|e| Error::Config {
            origin: origin.clone(),
            message: format!("not valid YAML: {e}"),
        })?
    };
    let value = match value {
        Value::Null => Value::Object(Map::new()),
        Value::Object(_) => value,
        other => {
            return Err(Error::Config {
                origin,
                message: format!("expected a mapping of settings at the top, got `{other}`"),
            })
        }
    };
    check_layer(&value, &origin)?;
    Ok(value)
}

fn env_layer(env: &BTreeMap<String, String>) -> Result<Value> {
    let mut layer = Value::Object(Map::new());
    // Later entries win: AWS_REGION over AWS_DEFAULT_REGION, and so on.
    for (var, path) in STANDARD_ENV_KEYS {
        if let Some(value) = env.get(*var).filter(|v| !v.is_empty()) {
            merge(&mut layer, nest(path, Value::String(value.clone())));
        }
    }
    for (name, raw) in env {
        if !name.starts_with("QUELEA_") || NON_CONFIG_ENV.contains(&name.as_str()) {
            continue;
        }
        if name.starts_with(EnvVars::RUNNER) {
            continue;
        }
        let Some((_, path, kind)) = ENV_KEYS.iter().find(|(var, _, _)| var == name) else {
            let known: Vec<&str> = ENV_KEYS.iter().map(|(v, _, _)| *v).collect();
            return Err(Error::Config {
                origin: "the environment".into(),
                message: format!("unknown variable `{name}`; known: {}", known.join(", ")),
            });
        };
        let bad = |what: &str| Error::Config {
            origin: "the environment".into(),
            message: format!("`{name}={raw}` is not {what}"),
        };
        let value = match kind {
            Kind::Str => Value::String(raw.clone()),
            Kind::Int => Value::from(
                raw.trim()
                    .parse::<u64>()
                    .map_err(|_| bad("a non-negative integer"))?,
            ),
            Kind::Num => Value::from(raw.trim().parse::<f64>().map_err(|_| bad("a number"))?),
            Kind::List => Value::Array(
                raw.split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(|s| Value::String(s.to_owned()))
                    .collect(),
            ),
            Kind::Bool => Value::Bool(match raw.trim().to_ascii_lowercase().as_str() {
                "1" | "true" | "yes" | "on" => true,
                "0" | "false" | "no" | "off" => false,
                _ => return Err(bad("a boolean (true/false)")),
            }),
        };
        merge(&mut layer, nest(path, value));
    }
    Ok(layer)
}

fn nest(path: &str, value: Value) -> Value {
    path.rsplit('.').fold(value, |inner, key| {
        let mut map = Map::new();
        map.insert(key.to_owned(), inner);
        Value::Object(map)
    })
}

fn merge(base: &mut Value, layer: Value) {
    match (base, layer) {
        (Value::Object(base), Value::Object(layer)) => {
            for (key, value) in layer {
                match base.get_mut(&key) {
                    Some(existing) if existing.is_object() && value.is_object() => {
                        merge(existing, value)
                    }
                    _ => {
                        base.insert(key, value);
                    }
                }
            }
        }
        (base, layer) => *base = layer,
    }
}

fn check_layer(layer: &Value, origin: &str) -> Result<()> {
    parse_layer(layer.clone(), origin).map(|_| ())
}

fn parse_layer(layer: Value, origin: &str) -> Result<Config> {
    serde_path_to_error::deserialize(layer).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner().to_string();
        let message = if path == "." || path.is_empty() {
            inner
        } else {
            format!("at `{path}`: {inner}")
        };
        Error::Config {
            origin: origin.to_owned(),
            message,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The error of a config with this one explicit setting.
    fn setting_err(path: &str, value: impl Into<Value>) -> String {
        ConfigBuilder::new()
            .no_file()
            .env(env(&[]))
            .set(path, value)
            .build()
            .unwrap_err()
            .to_string()
    }

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn no_config_at_all_is_local_backend_and_local_storage() {
        let config = ConfigBuilder::new()
            .no_file()
            .env(env(&[]))
            .build()
            .unwrap();
        assert_eq!(config.backend, BackendKind::Local);
        assert_eq!(config.storage, StorageKind::Localdisk);
        assert!(config.local_workers() >= 1);
    }

    #[test]
    fn layers_apply_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("config.yaml");
        std::fs::write(
            &file,
            "execution:\n  timeout: 30\n  chunksize: 4\nlocal:\n  workers: 3\n",
        )
        .unwrap();
        let config = ConfigBuilder::new()
            .file(&file)
            .env(env(&[
                ("QUELEA_TIMEOUT", "20"),
                ("QUELEA_RUNNER_SLOT", "1"),
                ("PATH", "/bin"),
            ]))
            .set("execution.timeout", 10.0)
            .build()
            .unwrap();
        assert_eq!(config.execution.timeout, 10.0);
        assert_eq!(config.execution.chunksize, Some(4));
        assert_eq!(config.local.workers, Some(3));

        let from_env = ConfigBuilder::new()
            .env(env(&[
                ("QUELEA_CONFIG_FILE", file.to_str().unwrap()),
                ("QUELEA_TIMEOUT", "20"),
            ]))
            .build()
            .unwrap();
        assert_eq!(from_env.execution.timeout, 20.0);
        assert_eq!(from_env.local.workers, Some(3));
    }

    #[test]
    fn unknown_keys_and_bad_values_name_the_key() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.yaml");
        std::fs::write(&file, "execution:\n  timeoutt: 30\n").unwrap();
        let err = ConfigBuilder::new()
            .file(&file)
            .env(env(&[]))
            .build()
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("timeoutt") && err.contains("c.yaml") && err.contains("execution"),
            "{err}"
        );

        std::fs::write(&file, "backend: lambda\n").unwrap();
        let err = ConfigBuilder::new()
            .file(&file)
            .env(env(&[]))
            .build()
            .unwrap_err()
            .to_string();
        assert!(err.contains("backend") && err.contains("lambda"), "{err}");

        std::fs::write(&file, "local:\n  workers: many\n").unwrap();
        let err = ConfigBuilder::new()
            .file(&file)
            .env(env(&[]))
            .build()
            .unwrap_err()
            .to_string();
        assert!(err.contains("local.workers"), "{err}");

        let err = ConfigBuilder::new()
            .no_file()
            .env(env(&[("QUELEA_WORKERS", "two")]))
            .build()
            .unwrap_err()
            .to_string();
        assert!(err.contains("QUELEA_WORKERS=two"), "{err}");

        let err = ConfigBuilder::new()
            .no_file()
            .env(env(&[("QUELEA_WORKRES", "2")]))
            .build()
            .unwrap_err()
            .to_string();
        assert!(err.contains("QUELEA_WORKRES"), "{err}");

        let err = setting_err("execution.timeout", -1.0);
        assert!(err.contains("execution.timeout"), "{err}");

        let err = setting_err("execution.retries", 101);
        assert!(
            err.contains("execution.retries") && err.contains("between 0 and 100"),
            "{err}"
        );
        let err = setting_err("execution.retries", -1);
        assert!(err.contains("execution.retries"), "{err}");

        let err = setting_err("bucket", "Bad_Bucket");
        assert!(err.contains("Bad_Bucket"), "{err}");

        let err = ConfigBuilder::new()
            .env(env(&[("QUELEA_CONFIG_FILE", "/nonexistent/quelea.yaml")]))
            .build()
            .unwrap_err()
            .to_string();
        assert!(err.contains("/nonexistent/quelea.yaml"), "{err}");
    }

    #[test]
    fn aws_variables_fill_the_s3_section_below_quelea_ones() {
        let config = ConfigBuilder::new()
            .no_file()
            .env(env(&[
                ("AWS_ACCESS_KEY_ID", "AKIA"),
                ("AWS_SECRET_ACCESS_KEY", "shh"),
                ("AWS_DEFAULT_REGION", "eu-west-1"),
                ("AWS_REGION", "eu-south-2"),
                ("QUELEA_S3_ACCESS_KEY_ID", "override"),
            ]))
            .build()
            .unwrap();
        assert_eq!(config.s3.access_key_id.as_deref(), Some("override"));
        assert_eq!(
            config.s3.secret_access_key.as_ref().unwrap().expose(),
            "shh"
        );
        assert_eq!(config.s3.region.as_deref(), Some("eu-south-2"));
        let runner: serde_json::Value = serde_json::from_str(&config.runner_json()).unwrap();
        assert_eq!(runner["s3"]["secret_access_key"], "shh");
        let rebuilt = ConfigBuilder::new()
            .no_file()
            .env(env(&[]))
            .overrides(runner)
            .build()
            .unwrap();
        assert_eq!(rebuilt, config);
    }

    #[test]
    fn http_backend_needs_urls_a_secret_and_shared_storage() {
        let config = ConfigBuilder::new()
            .no_file()
            .env(env(&[
                ("QUELEA_BACKEND", "http"),
                ("QUELEA_HTTP_URLS", "http://127.0.0.1:1, http://127.0.0.1:2"),
                ("QUELEA_HTTP_SECRET", "s3cret"),
            ]))
            .build()
            .unwrap();
        assert_eq!(config.backend, BackendKind::Http);
        assert_eq!(
            config.http.urls,
            vec!["http://127.0.0.1:1", "http://127.0.0.1:2"]
        );
        assert!(!config.redacted().to_string().contains("s3cret"));
        let runner: serde_json::Value = serde_json::from_str(&config.runner_json()).unwrap();
        assert_eq!(runner["http"]["secret"], "s3cret");

        let build = |pairs: &[(&str, &str)]| {
            ConfigBuilder::new()
                .no_file()
                .env(env(pairs))
                .build()
                .unwrap_err()
                .to_string()
        };
        let err = build(&[("QUELEA_BACKEND", "http"), ("QUELEA_HTTP_SECRET", "x")]);
        assert!(err.contains("http.urls"), "{err}");
        let err = build(&[
            ("QUELEA_BACKEND", "http"),
            ("QUELEA_HTTP_URLS", "http://127.0.0.1:1"),
        ]);
        assert!(err.contains("http.secret"), "{err}");
        let err = build(&[
            ("QUELEA_BACKEND", "http"),
            ("QUELEA_HTTP_URLS", "http://127.0.0.1:1"),
            ("QUELEA_HTTP_SECRET", "x"),
            ("QUELEA_STORAGE", "memory"),
        ]);
        assert!(err.contains("memory"), "{err}");
        let err = build(&[("QUELEA_HTTP_URLS", "127.0.0.1:1")]);
        assert!(err.contains("127.0.0.1:1"), "{err}");
        let err = setting_err("http.max_worker", 3);
        assert!(err.contains("max_worker"), "{err}");
    }

    #[test]
    fn aws_lambda_backend_needs_a_function_region_credentials_and_s3() {
        let base = [
            ("QUELEA_BACKEND", "aws_lambda"),
            ("QUELEA_STORAGE", "s3"),
            ("QUELEA_AWS_LAMBDA_FUNCTION_NAME", "quelea-runtime"),
            ("QUELEA_AWS_LAMBDA_ENDPOINT", "http://127.0.0.1:9000"),
            ("QUELEA_AWS_LAMBDA_MEMORY_MB", "2048"),
            ("QUELEA_AWS_LAMBDA_MAX_WORKERS", "8"),
            ("QUELEA_AWS_LAMBDA_INVOKE_DEADLINE", "5.5"),
            ("AWS_REGION", "eu-west-1"),
            ("AWS_ACCESS_KEY_ID", "AKIDEXAMPLE"),
            ("AWS_SECRET_ACCESS_KEY", "lambda-secret-key"),
            ("AWS_SESSION_TOKEN", "lambda-session-token"),
        ];
        let config = ConfigBuilder::new()
            .no_file()
            .env(env(&base))
            .build()
            .unwrap();
        assert_eq!(config.backend, BackendKind::AwsLambda);
        let lambda = &config.aws_lambda;
        assert_eq!(lambda.function_name.as_deref(), Some("quelea-runtime"));
        assert_eq!(lambda.region.as_deref(), Some("eu-west-1"));
        assert_eq!(lambda.endpoint.as_deref(), Some("http://127.0.0.1:9000"));
        assert_eq!(
            (lambda.memory_mb, lambda.max_workers, lambda.invoke_deadline),
            (2048, 8, 5.5)
        );
        assert_eq!(lambda.access_key_id.as_deref(), Some("AKIDEXAMPLE"));
        assert_eq!(
            lambda.secret_access_key.as_ref().unwrap().expose(),
            "lambda-secret-key"
        );
        for shown in [config.redacted().to_string(), format!("{config:?}")] {
            assert!(
                !shown.contains("lambda-secret-key") && !shown.contains("lambda-session-token"),
                "{shown}"
            );
        }
        // The runner's copy rebuilds the same config.
        let runner: serde_json::Value = serde_json::from_str(&config.runner_json()).unwrap();
        let rebuilt = ConfigBuilder::new()
            .no_file()
            .env(env(&[]))
            .overrides(runner)
            .build()
            .unwrap();
        assert_eq!(rebuilt, config);

        let build_without = |drop: &[&str], extra: &[(&str, &str)]| {
            let mut pairs: Vec<(&str, &str)> = base
                .iter()
                .copied()
                .filter(|(k, _)| !drop.contains(k))
                .collect();
            pairs.extend_from_slice(extra);
            ConfigBuilder::new()
                .no_file()
                .env(env(&pairs))
                .build()
                .unwrap_err()
                .to_string()
        };
        let err = build_without(&["QUELEA_AWS_LAMBDA_FUNCTION_NAME"], &[]);
        assert!(err.contains("aws_lambda.function_name"), "{err}");
        // Everything missing is reported at once, in words a user reads.
        let err = build_without(
            &[
                "QUELEA_AWS_LAMBDA_FUNCTION_NAME",
                "AWS_REGION",
                "AWS_SECRET_ACCESS_KEY",
                "QUELEA_STORAGE",
            ],
            &[],
        );
        for needed in [
            "needs 4 more setting(s)",
            "aws_lambda.function_name",
            "aws_lambda.region",
            "aws_lambda.secret_access_key",
            "`storage: s3`",
            "localdisk",
        ] {
            assert!(err.contains(needed), "{needed} in {err}");
        }
        assert!(!err.contains("config resolved config"), "{err}");
        assert!(
            err.starts_with("bad config in the combined settings"),
            "{err}"
        );
        let err = build_without(&["AWS_REGION"], &[]);
        assert!(err.contains("aws_lambda.region"), "{err}");
        let err = build_without(&["AWS_SECRET_ACCESS_KEY"], &[]);
        assert!(err.contains("aws_lambda.secret_access_key"), "{err}");
        let err = build_without(&["QUELEA_STORAGE"], &[]);
        assert!(
            err.contains("storage") && err.contains("localdisk"),
            "{err}"
        );
        let err = build_without(&["QUELEA_STORAGE"], &[("QUELEA_STORAGE", "memory")]);
        assert!(err.contains("memory"), "{err}");
        // Every storage the function reaches over the network is accepted.
        for (kind, extra) in [
            ("gcs", ("QUELEA_GCS_ENDPOINT", "http://127.0.0.1:4443")),
            ("azure", ("QUELEA_AZURE_ACCOUNT", "quelea")),
            ("ibm_cos", ("QUELEA_IBM_COS_REGION", "eu-de")),
            ("minio", ("QUELEA_MINIO_ENDPOINT", "http://127.0.0.1:9000")),
        ] {
            let mut pairs: Vec<(&str, &str)> = base
                .iter()
                .copied()
                .filter(|(k, _)| *k != "QUELEA_STORAGE")
                .collect();
            pairs.extend([("QUELEA_STORAGE", kind), extra]);
            let config = ConfigBuilder::new()
                .no_file()
                .env(env(&pairs))
                .build()
                .unwrap_or_else(|e| panic!("storage {kind}: {e}"));
            assert_eq!(config.storage.name(), kind);
        }
        let err = build_without(
            &["QUELEA_AWS_LAMBDA_ENDPOINT"],
            &[("QUELEA_AWS_LAMBDA_ENDPOINT", "127.0.0.1:9000")],
        );
        assert!(
            err.contains("aws_lambda.endpoint") && err.contains("127.0.0.1:9000"),
            "{err}"
        );
        let err = build_without(
            &["QUELEA_AWS_LAMBDA_MEMORY_MB"],
            &[("QUELEA_AWS_LAMBDA_MEMORY_MB", "64")],
        );
        assert!(err.contains("aws_lambda.memory_mb"), "{err}");
        let err = build_without(
            &["QUELEA_AWS_LAMBDA_MAX_WORKERS"],
            &[("QUELEA_AWS_LAMBDA_MAX_WORKERS", "0")],
        );
        assert!(err.contains("aws_lambda.max_workers"), "{err}");
        let err = build_without(&[], &[("QUELEA_AWS_LAMBDA_INVOKE_DEADLINE", "soon")]);
        assert!(
            err.contains("QUELEA_AWS_LAMBDA_INVOKE_DEADLINE=soon"),
            "{err}"
        );
        let err = build_without(&["AWS_REGION"], &[("AWS_REGION", "EU West")]);
        assert!(err.contains("aws_lambda.region"), "{err}");
        let err = setting_err("aws_lambda.function", "f");
        assert!(
            err.contains("aws_lambda") && err.contains("function"),
            "{err}"
        );
    }

    #[test]
    fn push_monitoring_needs_its_broker_url_and_never_prints_it() {
        let config = ConfigBuilder::new()
            .no_file()
            .env(env(&[
                ("QUELEA_MONITORING", "nats"),
                ("QUELEA_NATS_URL", "nats://quelea:natspass@127.0.0.1:4222"),
                (
                    "QUELEA_RABBITMQ_URL",
                    "amqp://guest:rabbitpass@127.0.0.1:5672/%2f",
                ),
                ("QUELEA_PUSH_FALLBACK_INTERVAL", "0.5"),
            ]))
            .build()
            .unwrap();
        assert_eq!(config.monitoring, MonitoringKind::Nats);
        assert_eq!(config.push_fallback_interval, 0.5);
        assert_eq!(
            config.nats.url.as_ref().unwrap().expose(),
            "nats://quelea:natspass@127.0.0.1:4222"
        );
        assert_eq!(config.nats.subject_prefix, "quelea.status");
        assert_eq!(config.rabbitmq.exchange, "quelea.status");
        for shown in [config.redacted().to_string(), format!("{config:?}")] {
            assert!(
                !shown.contains("natspass") && !shown.contains("rabbitpass"),
                "{shown}"
            );
        }
        // Runners (and worker servers started from a runner config) get them.
        let runner: serde_json::Value = serde_json::from_str(&config.runner_json()).unwrap();
        assert_eq!(
            runner["rabbitmq"]["url"],
            "amqp://guest:rabbitpass@127.0.0.1:5672/%2f"
        );
        let rebuilt = ConfigBuilder::new()
            .no_file()
            .env(env(&[]))
            .overrides(runner)
            .build()
            .unwrap();
        assert_eq!(rebuilt, config);

        let build = |pairs: &[(&str, &str)]| {
            ConfigBuilder::new()
                .no_file()
                .env(env(pairs))
                .build()
                .unwrap_err()
                .to_string()
        };
        let err = build(&[("QUELEA_MONITORING", "nats")]);
        assert!(
            err.contains("nats.url") && err.contains("QUELEA_NATS_URL"),
            "{err}"
        );
        let err = build(&[("QUELEA_MONITORING", "rabbitmq")]);
        assert!(err.contains("rabbitmq.url"), "{err}");
        let err = build(&[("QUELEA_MONITORING", "kafka")]);
        assert!(err.contains("monitoring") && err.contains("kafka"), "{err}");
        let err = build(&[("QUELEA_RABBITMQ_URL", "http://guest:rabbitpass@127.0.0.1")]);
        assert!(err.contains("rabbitmq.url"), "{err}");
        assert!(!err.contains("rabbitpass"), "{err}");
        let err = build(&[("QUELEA_PUSH_FALLBACK_INTERVAL", "0")]);
        assert!(err.contains("push_fallback_interval"), "{err}");
        let err = setting_err("nats.subject_prefix", "quelea.>");
        assert!(err.contains("nats.subject_prefix"), "{err}");
        let err = setting_err("rabbitmq.queue", "q");
        assert!(err.contains("rabbitmq") && err.contains("queue"), "{err}");
    }

    #[test]
    fn urls_are_redacted_for_messages() {
        assert_eq!(
            redact_url("amqp://guest:pw@127.0.0.1:5672/%2f"),
            "amqp://guest:<redacted>@127.0.0.1:5672/%2f"
        );
        assert_eq!(
            redact_url("nats://token@127.0.0.1:4222"),
            "nats://<redacted>@127.0.0.1:4222"
        );
        assert_eq!(redact_url("nats://127.0.0.1:4222"), "nats://127.0.0.1:4222");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn secrets_never_print() {
        let config = ConfigBuilder::new()
            .no_file()
            .env(env(&[("QUELEA_S3_SECRET_ACCESS_KEY", "hunter2")]))
            .build()
            .unwrap();
        assert_eq!(
            config.s3.secret_access_key.as_ref().unwrap().expose(),
            "hunter2"
        );
        assert!(!config.redacted().to_string().contains("hunter2"));
        assert!(!format!("{config:?}").contains("hunter2"));
    }

    #[test]
    fn every_duration_and_size_is_checked_and_named() {
        for (key, value) in [
            ("execution.timeout", serde_json::json!(1e30)),
            ("execution.timeout", serde_json::json!(-1.0)),
            ("http.replay_window", serde_json::json!(1e30)),
            ("http.invoke_deadline", serde_json::json!(0.0)),
            ("aws_lambda.invoke_deadline", serde_json::json!(1e300)),
            ("push_fallback_interval", serde_json::json!(1e30)),
            ("execution.memory_limit_mb", serde_json::json!(1u64 << 50)),
            ("storage_client.read_timeout", serde_json::json!(0.0)),
            ("storage_client.timeout", serde_json::json!(1e30)),
            ("storage_client.connect_timeout", serde_json::json!(-5)),
            ("storage_client.retry_timeout", serde_json::json!(f64::NAN)),
            ("storage_client.max_retries", serde_json::json!(1000)),
        ] {
            let err = ConfigBuilder::new()
                .no_file()
                .env(env(&[]))
                .set(key, value.clone())
                .build()
                .unwrap_err()
                .to_string();
            assert!(err.contains(key), "{key} = {value}: {err}");
        }
    }
}
