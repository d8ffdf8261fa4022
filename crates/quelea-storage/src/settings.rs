//! Each storage kind's settings, for the front ends that build configs from
//! forms and foreign configs (the Airflow connection form, Lithops config
//! dicts): what they may set, which are credentials, and how Lithops names
//! them. A test checks every entry against the config types.

use quelea_core::config::StorageKind;

/// One setting of a storage kind's config section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Setting {
    /// The key within the kind's section (`gcs.endpoint` → `endpoint`).
    pub key: &'static str,
    /// A credential: never shown, logged or stored in a job.
    pub secret: bool,
    /// A boolean rather than a string.
    pub flag: bool,
    pub help: &'static str,
}

const fn s(key: &'static str, help: &'static str) -> Setting {
    Setting {
        key,
        secret: false,
        flag: false,
        help,
    }
}
const fn secret(key: &'static str, help: &'static str) -> Setting {
    Setting {
        key,
        secret: true,
        flag: false,
        help,
    }
}
const fn flag(key: &'static str, help: &'static str) -> Setting {
    Setting {
        key,
        secret: false,
        flag: true,
        help,
    }
}

/// The config section of a kind (`None`: it has no settings of its own).
pub fn section(kind: StorageKind) -> Option<&'static str> {
    match kind {
        StorageKind::Memory => None,
        other => Some(other.name()),
    }
}

/// The settings of a kind's section.
pub fn settings(kind: StorageKind) -> &'static [Setting] {
    match kind {
        StorageKind::Localdisk => const { &[s("root", "Directory holding the buckets")] },
        StorageKind::Memory => &[],
        StorageKind::S3 => {
            const {
                &[
                    s("endpoint", "S3 endpoint URL (unset: AWS)"),
                    s("region", "Region (default us-east-1)"),
                    s("access_key_id", "Access key id"),
                    secret("secret_access_key", "Secret access key"),
                    secret("session_token", "Session token"),
                    flag("path_style", "Path-style addressing"),
                    flag("allow_http", "Allow http:// endpoints"),
                ]
            }
        }
        StorageKind::Gcs => {
            const {
                &[
                    s("endpoint", "JSON API base URL, for emulators"),
                    s("service_account_path", "Service-account JSON key file"),
                    secret("service_account_key", "Service-account JSON key"),
                    s(
                        "application_credentials",
                        "Application-credentials file (GOOGLE_APPLICATION_CREDENTIALS)",
                    ),
                    flag("anonymous", "Send no credentials"),
                ]
            }
        }
        StorageKind::Azure => {
            const {
                &[
                    s("account", "Storage account name"),
                    secret("access_key", "Account key"),
                    secret("sas_token", "SAS token"),
                    secret("connection_string", "Connection string"),
                    s(
                        "endpoint",
                        "Blob service URL (unset: https://<account>.blob.core.windows.net)",
                    ),
                    flag("use_emulator", "Azurite's development account"),
                ]
            }
        }
        StorageKind::IbmCos => {
            const {
                &[
                    s("region", "COS region (us-east, eu-de, ...)"),
                    s("endpoint", "Endpoint URL instead of the region's"),
                    s("access_key_id", "HMAC access key id"),
                    secret("secret_access_key", "HMAC secret access key"),
                ]
            }
        }
        StorageKind::Minio => {
            const {
                &[
                    s("endpoint", "MinIO URL (http://host:9000)"),
                    s("access_key_id", "Access key"),
                    secret("secret_access_key", "Secret key"),
                    s("region", "Region (default us-east-1)"),
                ]
            }
        }
    }
}

/// Which settings of a kind's section a connection's generic fields fill
/// (Airflow's host, login and password): `(host, login, password)`.
pub fn connection_fields(
    kind: StorageKind,
) -> (
    Option<&'static str>,
    Option<&'static str>,
    Option<&'static str>,
) {
    match kind {
        StorageKind::S3 | StorageKind::IbmCos | StorageKind::Minio => (
            Some("endpoint"),
            Some("access_key_id"),
            Some("secret_access_key"),
        ),
        StorageKind::Gcs => (Some("endpoint"), None, Some("service_account_key")),
        StorageKind::Azure => (Some("endpoint"), Some("account"), Some("access_key")),
        StorageKind::Localdisk | StorageKind::Memory => (None, None, None),
    }
}

/// How Lithops' config sections map onto quelea's: `(lithops section,
/// lithops key, quelea path)`. `storage_bucket` of every storage section is
/// the bucket.
pub const LITHOPS_KEYS: &[(&str, &str, &str)] = &[
    ("localhost", "storage_bucket", "bucket"),
    ("aws", "access_key_id", "s3.access_key_id"),
    ("aws", "secret_access_key", "s3.secret_access_key"),
    ("aws", "session_token", "s3.session_token"),
    ("aws", "region", "s3.region"),
    ("aws_s3", "storage_bucket", "bucket"),
    ("aws_s3", "region", "s3.region"),
    ("aws_s3", "endpoint", "s3.endpoint"),
    ("aws_s3", "access_key_id", "s3.access_key_id"),
    ("aws_s3", "secret_access_key", "s3.secret_access_key"),
    ("gcp", "credentials_path", "gcs.service_account_path"),
    ("gcp_storage", "storage_bucket", "bucket"),
    (
        "gcp_storage",
        "credentials_path",
        "gcs.service_account_path",
    ),
    ("azure_storage", "storage_account_name", "azure.account"),
    ("azure_storage", "storage_account_key", "azure.access_key"),
    ("azure_storage", "storage_bucket", "bucket"),
    ("ibm_cos", "region", "ibm_cos.region"),
    ("ibm_cos", "endpoint", "ibm_cos.endpoint"),
    ("ibm_cos", "access_key_id", "ibm_cos.access_key_id"),
    ("ibm_cos", "secret_access_key", "ibm_cos.secret_access_key"),
    ("ibm_cos", "storage_bucket", "bucket"),
    ("minio", "endpoint", "minio.endpoint"),
    ("minio", "access_key_id", "minio.access_key_id"),
    ("minio", "secret_access_key", "minio.secret_access_key"),
    ("minio", "storage_bucket", "bucket"),
];

/// Lithops settings with no quelea meaning that are accepted and ignored:
/// `(section, key)`, with the reason in a comment.
pub const LITHOPS_IGNORED: &[(&str, &str)] = &[
    // Lithops' region of the GCP project: GCS buckets are global to it.
    ("gcp", "region"),
    ("gcp_storage", "region"),
    // Lithops chooses the private endpoint inside IBM Cloud functions.
    ("ibm_cos", "private_endpoint"),
];

#[cfg(test)]
mod tests {
    use super::*;
    use quelea_core::config::ConfigBuilder;

    #[test]
    fn every_setting_is_a_config_key() {
        for kind in StorageKind::ALL {
            for setting in settings(kind) {
                let path = format!("{}.{}", section(kind).unwrap(), setting.key);
                let value: serde_json::Value = if setting.flag {
                    true.into()
                } else {
                    "x".into()
                };
                let result = ConfigBuilder::new()
                    .no_file()
                    .env(Vec::new())
                    .set(&path, value)
                    .build();
                assert!(result.is_ok(), "{path}: {:?}", result.err());
            }
        }
        for kind in StorageKind::ALL {
            let (host, login, password) = connection_fields(kind);
            for key in [host, login, password].into_iter().flatten() {
                let setting = settings(kind).iter().find(|s| s.key == key);
                assert!(setting.is_some(), "{kind}.{key}");
                assert_eq!(
                    setting.unwrap().secret,
                    Some(key) == password,
                    "{kind}.{key}"
                );
            }
        }
        for (section, key, path) in LITHOPS_KEYS {
            let value = if *path == "bucket" { "b" } else { "x" };
            let result = ConfigBuilder::new()
                .no_file()
                .env(Vec::new())
                .set(path, value)
                .build();
            assert!(
                result.is_ok(),
                "{section}.{key} → {path}: {:?}",
                result.err()
            );
        }
    }

    #[test]
    fn secrets_are_config_secrets() {
        // A secret setting must be redacted from the config's printed form.
        for kind in StorageKind::ALL {
            for setting in settings(kind).iter().filter(|s| s.secret) {
                let path = format!("{}.{}", section(kind).unwrap(), setting.key);
                let config = ConfigBuilder::new()
                    .no_file()
                    .env(Vec::new())
                    .set(&path, "hunter2-secret")
                    .build()
                    .unwrap();
                assert!(
                    !config.redacted().to_string().contains("hunter2-secret"),
                    "{path} printed"
                );
                assert!(
                    config.runner_json().contains("hunter2-secret"),
                    "{path} not passed to runners"
                );
            }
        }
    }
}
