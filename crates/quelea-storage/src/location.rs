//! Where a storage is, without its credentials.

use std::path::PathBuf;

use quelea_core::config::{Config, ConfigBuilder, StorageKind};
use serde::{Deserialize, Serialize};

/// The public IBM COS endpoint of a region, as Lithops builds it.
pub fn ibm_cos_endpoint(region: &str) -> String {
    format!("https://s3.{region}.cloud-object-storage.appdomain.cloud")
}

/// A storage's kind, bucket and address, without credentials: what a job
/// handle carries so another process can find the job's objects. That process
/// brings its own credentials (its config or environment).
///
/// For Azure, `bucket` is the container.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case", deny_unknown_fields)]
pub enum StorageLocation {
    Localdisk {
        bucket: String,
        root: PathBuf,
    },
    Memory {
        bucket: String,
    },
    S3 {
        bucket: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        region: Option<String>,
        #[serde(default)]
        path_style: bool,
        #[serde(default)]
        allow_http: bool,
    },
    Gcs {
        bucket: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<String>,
    },
    Azure {
        bucket: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        account: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<String>,
        #[serde(default)]
        use_emulator: bool,
    },
    IbmCos {
        bucket: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        region: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<String>,
    },
    Minio {
        bucket: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        endpoint: Option<String>,
    },
}

impl StorageLocation {
    pub fn from_config(config: &Config) -> Self {
        let bucket = config.bucket.clone();
        match config.storage {
            StorageKind::Localdisk => StorageLocation::Localdisk {
                bucket,
                root: config.localdisk_root(),
            },
            StorageKind::Memory => StorageLocation::Memory { bucket },
            StorageKind::S3 => StorageLocation::S3 {
                bucket,
                endpoint: config.s3.endpoint.clone(),
                region: config.s3.region.clone(),
                path_style: config.s3.path_style,
                allow_http: config.s3.allow_http,
            },
            StorageKind::Gcs => StorageLocation::Gcs {
                bucket,
                endpoint: config.gcs.endpoint.clone(),
            },
            StorageKind::Azure => StorageLocation::Azure {
                bucket,
                account: config.azure.account.clone(),
                endpoint: config.azure.endpoint.clone(),
                use_emulator: config.azure.use_emulator,
            },
            StorageKind::IbmCos => StorageLocation::IbmCos {
                bucket,
                region: config.ibm_cos.region.clone(),
                endpoint: config.ibm_cos.endpoint.clone(),
            },
            StorageKind::Minio => StorageLocation::Minio {
                bucket,
                endpoint: config.minio.endpoint.clone(),
            },
        }
    }

    pub fn kind(&self) -> StorageKind {
        match self {
            StorageLocation::Localdisk { .. } => StorageKind::Localdisk,
            StorageLocation::Memory { .. } => StorageKind::Memory,
            StorageLocation::S3 { .. } => StorageKind::S3,
            StorageLocation::Gcs { .. } => StorageKind::Gcs,
            StorageLocation::Azure { .. } => StorageKind::Azure,
            StorageLocation::IbmCos { .. } => StorageKind::IbmCos,
            StorageLocation::Minio { .. } => StorageKind::Minio,
        }
    }

    /// The bucket (Azure: the container).
    pub fn bucket(&self) -> &str {
        match self {
            StorageLocation::Localdisk { bucket, .. }
            | StorageLocation::Memory { bucket }
            | StorageLocation::S3 { bucket, .. }
            | StorageLocation::Gcs { bucket, .. }
            | StorageLocation::Azure { bucket, .. }
            | StorageLocation::IbmCos { bucket, .. }
            | StorageLocation::Minio { bucket, .. } => bucket,
        }
    }

    /// A config that points at this location; credentials come from `base`
    /// (the attaching process's own config).
    pub fn to_config(&self, base: ConfigBuilder) -> quelea_core::Result<Config> {
        let mut builder = base
            .set("storage", self.kind().name())
            .set("bucket", self.bucket());
        let set_opt = |builder: ConfigBuilder, path: &str, value: &Option<String>| match value {
            Some(value) => builder.set(path, value.clone()),
            None => builder,
        };
        match self {
            StorageLocation::Localdisk { root, .. } => {
                builder = builder.set("localdisk.root", root.to_string_lossy().into_owned());
            }
            StorageLocation::Memory { .. } => {}
            StorageLocation::S3 {
                endpoint,
                region,
                path_style,
                allow_http,
                ..
            } => {
                builder = set_opt(builder, "s3.endpoint", endpoint);
                builder = set_opt(builder, "s3.region", region);
                builder = builder
                    .set("s3.path_style", *path_style)
                    .set("s3.allow_http", *allow_http);
            }
            StorageLocation::Gcs { endpoint, .. } => {
                builder = set_opt(builder, "gcs.endpoint", endpoint);
            }
            StorageLocation::Azure {
                account,
                endpoint,
                use_emulator,
                ..
            } => {
                builder = set_opt(builder, "azure.account", account);
                builder = set_opt(builder, "azure.endpoint", endpoint);
                builder = builder.set("azure.use_emulator", *use_emulator);
            }
            StorageLocation::IbmCos {
                region, endpoint, ..
            } => {
                builder = set_opt(builder, "ibm_cos.region", region);
                builder = set_opt(builder, "ibm_cos.endpoint", endpoint);
            }
            StorageLocation::Minio { endpoint, .. } => {
                builder = set_opt(builder, "minio.endpoint", endpoint);
            }
        }
        builder.build()
    }

    pub fn describe(&self) -> String {
        let at = |endpoint: &Option<String>, default: &str| {
            endpoint.clone().unwrap_or_else(|| default.to_owned())
        };
        match self {
            StorageLocation::Localdisk { bucket, root } => {
                format!("local directory `{}`", root.join(bucket).display())
            }
            StorageLocation::Memory { bucket } => format!("in-memory bucket `{bucket}`"),
            StorageLocation::S3 {
                bucket, endpoint, ..
            } => format!("s3 bucket `{bucket}` at {}", at(endpoint, "AWS")),
            StorageLocation::Gcs { bucket, endpoint } => format!(
                "gcs bucket `{bucket}` at {}",
                at(endpoint, "storage.googleapis.com")
            ),
            StorageLocation::Azure {
                bucket,
                account,
                endpoint,
                use_emulator,
            } => {
                let account = account.as_deref().unwrap_or(if *use_emulator {
                    crate::azure::EMULATOR_ACCOUNT
                } else {
                    "?"
                });
                let endpoint = crate::azure::endpoint(account, endpoint.as_deref(), *use_emulator);
                format!("azure container `{bucket}` of account `{account}` at {endpoint}")
            }
            StorageLocation::IbmCos {
                bucket,
                region,
                endpoint,
            } => {
                let endpoint = endpoint
                    .clone()
                    .or_else(|| region.as_deref().map(ibm_cos_endpoint))
                    .unwrap_or_else(|| "(no region)".into());
                format!("ibm_cos bucket `{bucket}` at {endpoint}")
            }
            StorageLocation::Minio { bucket, endpoint } => {
                format!(
                    "minio bucket `{bucket}` at {}",
                    at(endpoint, "(no endpoint)")
                )
            }
        }
    }
}
