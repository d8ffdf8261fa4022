//! Where a storage is, without its credentials.

use std::path::PathBuf;

use quelea_core::config::{Config, ConfigBuilder, StorageKind};
use serde::{Deserialize, Serialize};

/// A storage's kind, bucket and address, without credentials: what a job
/// handle carries so another process can find the job's objects. That process
/// brings its own credentials (its config or environment).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StorageLocation {
    pub kind: StorageKind,
    pub bucket: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub root: Option<PathBuf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    #[serde(default)]
    pub path_style: bool,
    #[serde(default)]
    pub allow_http: bool,
}

impl StorageLocation {
    pub fn from_config(config: &Config) -> Self {
        let s3 = config.storage == StorageKind::S3;
        StorageLocation {
            kind: config.storage,
            bucket: config.bucket.clone(),
            root: (config.storage == StorageKind::Localdisk).then(|| config.localdisk_root()),
            endpoint: if s3 { config.s3.endpoint.clone() } else { None },
            region: if s3 { config.s3.region.clone() } else { None },
            path_style: s3 && config.s3.path_style,
            allow_http: s3 && config.s3.allow_http,
        }
    }

    /// A config that points at this location; credentials come from `base`
    /// (the attaching process's own config).
    pub fn to_config(&self, base: ConfigBuilder) -> quelea_core::Result<Config> {
        let mut builder = base
            .set(
                "storage",
                serde_json::to_value(self.kind).expect("kind serializes"),
            )
            .set("bucket", self.bucket.clone());
        if let Some(root) = &self.root {
            builder = builder.set("localdisk.root", root.to_string_lossy().into_owned());
        }
        if self.kind == StorageKind::S3 {
            if let Some(endpoint) = &self.endpoint {
                builder = builder.set("s3.endpoint", endpoint.clone());
            }
            if let Some(region) = &self.region {
                builder = builder.set("s3.region", region.clone());
            }
            builder = builder
                .set("s3.path_style", self.path_style)
                .set("s3.allow_http", self.allow_http);
        }
        builder.build()
    }

    pub fn describe(&self) -> String {
        match self.kind {
            StorageKind::Localdisk => format!(
                "local directory `{}`",
                self.root
                    .as_ref()
                    .map(|r| r.join(&self.bucket).display().to_string())
                    .unwrap_or_default()
            ),
            StorageKind::Memory => format!("in-memory bucket `{}`", self.bucket),
            StorageKind::S3 => format!(
                "s3 bucket `{}` at {}",
                self.bucket,
                self.endpoint.as_deref().unwrap_or("AWS")
            ),
        }
    }
}
