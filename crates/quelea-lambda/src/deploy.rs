//! `quelea runtime deploy --backend aws_lambda`: packages a bootstrap
//! binary as a Lambda deployment zip (one executable entry named
//! `bootstrap`, for the `provided.al2023` custom runtime) and creates the
//! function (`CreateFunction`) or, when it exists, updates its code
//! (`UpdateFunctionCode`), through the signed Lambda REST API.
//!
//! The function's environment gets the client's storage settings but no
//! credentials: in Lambda, S3 is read with the execution role (`--role` at
//! creation); another storage's credential is set in the function's
//! environment by its owner (see [`function_environment`]). On an existing function only the code is replaced; its
//! configuration (memory, timeout, environment, role) is left as it is.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use quelea::core::config::{Config, StorageKind};
use quelea::lambda_api::{ApiError, LambdaApi, API_PREFIX};
use quelea::storage::io_runtime;
use serde_json::{json, Map, Value};

/// Why a deployment failed.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum DeployError {
    #[error("cannot read the bootstrap `{path}`: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("`{0}` is not a Linux executable (ELF); build the bootstrap for Lambda, e.g. with `cargo lambda build --release`")]
    NotElf(PathBuf),
    #[error("cannot write the deployment zip: {0}")]
    Zip(String),
    #[error(
        "the deployment zip is {size} bytes, over Lambda's {limit}-byte limit for a direct upload"
    )]
    TooLarge { size: usize, limit: usize },
    #[error("`{key}` {message}")]
    Config { key: &'static str, message: String },
    #[error(transparent)]
    Client(#[from] quelea::Error),
    #[error(
        "function `{function}` does not exist; pass `--role <execution role ARN>` to create it"
    )]
    NoRole { function: String },
    #[error("{action} of `{function}` failed: {error}")]
    Aws {
        action: &'static str,
        function: String,
        error: ApiError,
    },
    #[error("{action} of `{function}` got no answer: {message}")]
    Unanswered {
        action: &'static str,
        function: String,
        message: String,
    },
}

/// What to deploy.
#[derive(Clone, Debug)]
pub struct DeploySpec {
    /// The bootstrap binary, built for Linux x86_64.
    pub bootstrap: PathBuf,
    /// The execution role (needed to create the function).
    pub role_arn: Option<String>,
    /// The function's timeout in seconds (Lambda allows 1-900).
    pub timeout_s: u32,
}

/// What the deployment did.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Deployed {
    Created,
    Updated,
}

/// Lambda's limit for a zip uploaded in the request itself.
pub const MAX_DIRECT_ZIP: usize = 50 * 1024 * 1024;
const REQUEST_TIMEOUT: Duration = Duration::from_secs(300);

/// The deployment zip: the bootstrap as the executable entry `bootstrap`.
pub fn package(bootstrap: &Path) -> Result<Vec<u8>, DeployError> {
    let binary = std::fs::read(bootstrap).map_err(|source| DeployError::Read {
        path: bootstrap.to_owned(),
        source,
    })?;
    if !binary.starts_with(b"\x7fELF") {
        return Err(DeployError::NotElf(bootstrap.to_owned()));
    }
    let zip_error = |e: &dyn std::fmt::Display| DeployError::Zip(e.to_string());
    let mut writer = zip::ZipWriter::new(std::io::Cursor::new(Vec::new()));
    let options = zip::write::SimpleFileOptions::default()
        .compression_method(zip::CompressionMethod::Deflated)
        .unix_permissions(0o755);
    writer
        .start_file("bootstrap", options)
        .map_err(|e| zip_error(&e))?;
    writer.write_all(&binary).map_err(|e| zip_error(&e))?;
    let zip = writer.finish().map_err(|e| zip_error(&e))?.into_inner();
    if zip.len() > MAX_DIRECT_ZIP {
        return Err(DeployError::TooLarge {
            size: zip.len(),
            limit: MAX_DIRECT_ZIP,
        });
    }
    Ok(zip)
}

/// The function's environment: where job objects are, never credentials.
///
/// Every storage a function can reach over the network will do. S3 is read
/// with the execution role; for the others (and S3-compatible stores with
/// their own HMAC keys) the function needs that storage's credential in its
/// environment (`QUELEA_GCS_SERVICE_ACCOUNT_KEY`, `QUELEA_AZURE_ACCESS_KEY`
/// or `AZURE_STORAGE_SAS_TOKEN`, `QUELEA_IBM_COS_*`/`QUELEA_MINIO_*` keys),
/// which its owner sets; a redeploy leaves it alone. Files of this machine
/// (`gcs.service_account_path`) are not there either.
pub fn function_environment(config: &Config) -> Result<Map<String, Value>, DeployError> {
    let mut env = Map::new();
    let mut set = |name: &str, value: Option<&str>| {
        if let Some(value) = value {
            env.insert(name.into(), value.into());
        }
    };
    let flag = |on: bool| on.then_some("true");
    match config.storage {
        StorageKind::Localdisk | StorageKind::Memory => {
            return Err(DeployError::Config {
                key: "storage",
                message: format!(
                    "is `{}`, which a Lambda function cannot read: use `s3`, `gcs`, `azure`, \
                     `ibm_cos` or `minio`",
                    config.storage.name()
                ),
            });
        }
        StorageKind::S3 => {
            let s3 = &config.s3;
            set("QUELEA_S3_ENDPOINT", s3.endpoint.as_deref());
            set("QUELEA_S3_REGION", s3.region.as_deref());
            set("QUELEA_S3_PATH_STYLE", flag(s3.path_style));
            set("QUELEA_S3_ALLOW_HTTP", flag(s3.allow_http));
        }
        StorageKind::IbmCos => {
            set("QUELEA_IBM_COS_REGION", config.ibm_cos.region.as_deref());
            set(
                "QUELEA_IBM_COS_ENDPOINT",
                config.ibm_cos.endpoint.as_deref(),
            );
        }
        StorageKind::Minio => {
            set("QUELEA_MINIO_ENDPOINT", config.minio.endpoint.as_deref());
        }
        StorageKind::Gcs => {
            set("QUELEA_GCS_ENDPOINT", config.gcs.endpoint.as_deref());
            set("QUELEA_GCS_ANONYMOUS", flag(config.gcs.anonymous));
        }
        StorageKind::Azure => {
            let azure = &config.azure;
            set("QUELEA_AZURE_ACCOUNT", azure.account.as_deref());
            set("QUELEA_AZURE_ENDPOINT", azure.endpoint.as_deref());
            set("QUELEA_AZURE_USE_EMULATOR", flag(azure.use_emulator));
        }
    }
    set("QUELEA_STORAGE", Some(config.storage.name()));
    set("QUELEA_BUCKET", Some(&config.bucket));
    Ok(env)
}

/// Packages `spec.bootstrap` and creates or updates the function of
/// `config.aws_lambda`.
pub fn deploy(config: &Config, spec: &DeploySpec) -> Result<Deployed, DeployError> {
    let lambda = &config.aws_lambda;
    let function = lambda
        .function_name
        .clone()
        .filter(|f| !f.is_empty())
        .ok_or(DeployError::Config {
            key: "aws_lambda.function_name",
            message: "must name the function to deploy (QUELEA_AWS_LAMBDA_FUNCTION_NAME)".into(),
        })?;
    if !(1..=900).contains(&spec.timeout_s) {
        return Err(DeployError::Config {
            key: "--timeout",
            message: format!("must be 1 to 900 seconds, got {}", spec.timeout_s),
        });
    }
    let environment = function_environment(config)?;
    let zip = base64::engine::general_purpose::STANDARD.encode(package(&spec.bootstrap)?);
    let api = LambdaApi::new(lambda, 1)?;
    let send = |method: reqwest::Method, path: String, body: Value, action: &'static str| {
        let function = function.clone();
        let api = &api;
        async move {
            api.send(
                method,
                &path,
                &[],
                serde_json::to_vec(&body).unwrap_or_default().into(),
                REQUEST_TIMEOUT,
            )
            .await
            .map(|_| ())
            .map_err(|e| match e {
                Ok(error) => DeployError::Aws {
                    action,
                    function,
                    error,
                },
                Err(message) => DeployError::Unanswered {
                    action,
                    function,
                    message,
                },
            })
        }
    };
    io_runtime().block_on(async {
        if let Some(role) = &spec.role_arn {
            let create = json!({
                "FunctionName": function,
                "Runtime": "provided.al2023",
                "Handler": "bootstrap",
                "Role": role,
                "Architectures": ["x86_64"],
                "MemorySize": lambda.memory_mb,
                "Timeout": spec.timeout_s,
                "Description": "quelea worker runtime",
                "Environment": { "Variables": environment },
                "Code": { "ZipFile": zip },
            });
            match send(
                reqwest::Method::POST,
                API_PREFIX.to_owned(),
                create,
                "CreateFunction",
            )
            .await
            {
                Ok(()) => return Ok(Deployed::Created),
                // It exists: replace its code below.
                Err(DeployError::Aws { error, .. })
                    if error.kind == "ResourceConflictException" => {}
                Err(e) => return Err(e),
            }
        }
        let update = json!({ "ZipFile": zip, "Architectures": ["x86_64"] });
        match send(
            reqwest::Method::PUT,
            LambdaApi::function_path(&function, "/code"),
            update,
            "UpdateFunctionCode",
        )
        .await
        {
            Ok(()) => Ok(Deployed::Updated),
            Err(DeployError::Aws { error, .. })
                if error.kind == "ResourceNotFoundException" && spec.role_arn.is_none() =>
            {
                Err(DeployError::NoRole {
                    function: function.clone(),
                })
            }
            Err(e) => Err(e),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use quelea::core::config::ConfigBuilder;

    fn environment(pairs: &[(&str, &str)]) -> Result<Map<String, Value>, DeployError> {
        let config = ConfigBuilder::new()
            .no_file()
            .env(
                pairs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
            )
            .build()
            .unwrap();
        function_environment(&config)
    }

    #[test]
    fn every_network_storage_is_deployed_without_its_credentials() {
        let env = environment(&[
            ("QUELEA_STORAGE", "gcs"),
            ("QUELEA_BUCKET", "jobs"),
            ("QUELEA_GCS_ENDPOINT", "http://127.0.0.1:4443"),
            ("QUELEA_GCS_ANONYMOUS", "true"),
            (
                "QUELEA_GCS_SERVICE_ACCOUNT_KEY",
                "{\"private_key\": \"gcs-secret\"}",
            ),
        ])
        .unwrap();
        assert_eq!(env["QUELEA_STORAGE"], "gcs");
        assert_eq!(env["QUELEA_BUCKET"], "jobs");
        assert_eq!(env["QUELEA_GCS_ENDPOINT"], "http://127.0.0.1:4443");
        assert_eq!(env["QUELEA_GCS_ANONYMOUS"], "true");
        assert!(!Value::Object(env).to_string().contains("gcs-secret"));

        let env = environment(&[
            ("QUELEA_STORAGE", "azure"),
            ("QUELEA_BUCKET", "jobs"),
            ("QUELEA_AZURE_ACCOUNT", "acct"),
            ("QUELEA_AZURE_ACCESS_KEY", "azure-secret"),
            ("AZURE_STORAGE_SAS_TOKEN", "sas-secret"),
        ])
        .unwrap();
        assert_eq!(env["QUELEA_STORAGE"], "azure");
        assert_eq!(env["QUELEA_AZURE_ACCOUNT"], "acct");
        let raw = Value::Object(env).to_string();
        assert!(
            !raw.contains("azure-secret") && !raw.contains("sas-secret"),
            "{raw}"
        );

        let env = environment(&[
            ("QUELEA_STORAGE", "ibm_cos"),
            ("QUELEA_IBM_COS_REGION", "eu-de"),
            ("QUELEA_IBM_COS_ACCESS_KEY_ID", "hmac-id"),
            ("QUELEA_IBM_COS_SECRET_ACCESS_KEY", "hmac-secret"),
        ])
        .unwrap();
        assert_eq!(env["QUELEA_STORAGE"], "ibm_cos");
        assert_eq!(env["QUELEA_IBM_COS_REGION"], "eu-de");
        let raw = Value::Object(env).to_string();
        assert!(!raw.contains("hmac-"), "{raw}");

        let env = environment(&[
            ("QUELEA_STORAGE", "minio"),
            ("QUELEA_MINIO_ENDPOINT", "http://127.0.0.1:9000"),
        ])
        .unwrap();
        assert_eq!(env["QUELEA_MINIO_ENDPOINT"], "http://127.0.0.1:9000");
    }

    #[test]
    fn storage_of_this_machine_is_refused_with_the_reason() {
        for kind in ["localdisk", "memory"] {
            let err = environment(&[("QUELEA_STORAGE", kind)])
                .unwrap_err()
                .to_string();
            assert!(
                err.contains(kind) && err.contains("cannot read") && err.contains("gcs"),
                "{err}"
            );
        }
    }
}
