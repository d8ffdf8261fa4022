//! Object addresses (`gs://bucket/key`, `az://container/path`, ...): which
//! storage kind each URL scheme names, and Lithops' names for the kinds.

use quelea_core::config::{Config, StorageKind};

use crate::{Error, Result};

/// The URL schemes of a storage kind; the first is the one quelea writes.
/// Each kind's Lithops backend name is among them, so Lithops programs that
/// build `f"{storage.backend}://{bucket}/{key}"` work.
pub fn schemes(kind: StorageKind) -> &'static [&'static str] {
    match kind {
        StorageKind::Localdisk => &["localhost", "localdisk"],
        StorageKind::Memory => &["memory"],
        StorageKind::S3 => &["s3", "aws_s3", "s3a"],
        StorageKind::Gcs => &["gs", "gcs", "gcp_storage"],
        StorageKind::Azure => &["az", "azure", "azure_storage", "abfs", "abfss"],
        StorageKind::IbmCos => &["cos", "ibm_cos"],
        StorageKind::Minio => &["minio"],
    }
}

/// Lithops' name of the storage backend (`Storage.backend`).
pub fn lithops_name(kind: StorageKind) -> &'static str {
    match kind {
        StorageKind::Localdisk => "localhost",
        StorageKind::Memory => "memory",
        StorageKind::S3 => "aws_s3",
        StorageKind::Gcs => "gcp_storage",
        StorageKind::Azure => "azure_storage",
        StorageKind::IbmCos => "ibm_cos",
        StorageKind::Minio => "minio",
    }
}

/// Every storage scheme, for error messages (`s3://, gs://, ...`).
pub fn all_schemes() -> Vec<String> {
    StorageKind::ALL
        .iter()
        .flat_map(|k| schemes(*k))
        .map(|s| format!("{s}://"))
        .collect()
}

/// The storage kind a scheme names, before resolution against a config.
pub fn scheme_kind(scheme: &str) -> Option<StorageKind> {
    let scheme = scheme.to_ascii_lowercase();
    StorageKind::ALL
        .into_iter()
        .find(|k| schemes(*k).contains(&scheme.as_str()))
}

/// An object address in a storage: which storage, which bucket, which key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Address {
    pub kind: StorageKind,
    pub bucket: String,
    /// The key or prefix (may be empty: the whole bucket).
    pub key: String,
    /// The Azure account an `abfs://container@account.dfs...` URL names.
    pub account: Option<String>,
}

/// Parses `scheme://bucket/key` when `scheme` is a storage scheme; `None`
/// for anything else (local paths, `http://`, `file://`, bare `bucket/key`).
///
/// `s3://` names the configured storage when that is an S3 flavour
/// (`ibm_cos`, `minio`), as their users write it; otherwise AWS-style `s3`.
pub fn parse_address(input: &str, configured: StorageKind) -> Result<Option<Address>> {
    let Some((scheme, rest)) = input.split_once("://") else {
        return Ok(None);
    };
    let Some(mut kind) = scheme_kind(scheme) else {
        return Ok(None);
    };
    if kind == StorageKind::S3 && configured.is_s3() {
        kind = configured;
    }
    let (authority, key) = rest.split_once('/').unwrap_or((rest, ""));
    let (bucket, account) = match authority.split_once('@') {
        // abfs(s)://container@account.dfs.core.windows.net/path
        Some((container, host)) if kind == StorageKind::Azure => {
            let account = host.split('.').next().unwrap_or_default();
            if account.is_empty() {
                return Err(Error::InvalidAddress {
                    address: input.to_owned(),
                    reason: format!(
                        "no storage account after `@` (expected \
                         `{scheme}://container@account.dfs.core.windows.net/path`)"
                    ),
                });
            }
            (container, Some(account.to_owned()))
        }
        _ => (authority, None),
    };
    if bucket.is_empty() {
        return Err(Error::InvalidAddress {
            address: input.to_owned(),
            reason: "no bucket name".into(),
        });
    }
    Ok(Some(Address {
        kind,
        bucket: bucket.to_owned(),
        key: key.to_owned(),
        account,
    }))
}

/// Whether `config` holds settings for `kind`, so that an address of that
/// kind can be read although another storage is the configured one.
pub fn is_configured(config: &Config, kind: StorageKind) -> bool {
    if kind == config.storage {
        return true;
    }
    match kind {
        // A directory on this machine needs no settings.
        StorageKind::Localdisk => true,
        // Another process's memory cannot be reached.
        StorageKind::Memory => false,
        StorageKind::S3 => {
            let s3 = &config.s3;
            s3.endpoint.is_some() || s3.access_key_id.is_some() || s3.region.is_some()
        }
        StorageKind::Gcs => {
            let gcs = &config.gcs;
            gcs.endpoint.is_some()
                || gcs.service_account_path.is_some()
                || gcs.service_account_key.is_some()
                || gcs.application_credentials.is_some()
                || gcs.anonymous
        }
        StorageKind::Azure => {
            let azure = &config.azure;
            azure.account.is_some() || azure.connection_string.is_some() || azure.use_emulator
        }
        StorageKind::IbmCos => config.ibm_cos.region.is_some() || config.ibm_cos.endpoint.is_some(),
        StorageKind::Minio => config.minio.endpoint.is_some(),
    }
}

/// The config of `bucket` in storage `kind`, with `config`'s settings for
/// that kind; an error naming what to set when it has none.
pub fn config_for(config: &Config, kind: StorageKind, bucket: &str) -> Result<Config> {
    if !is_configured(config, kind) {
        let hint = match kind {
            StorageKind::Memory => "memory storage is only readable when it is the configured \
                                    storage, in the same process"
                .to_owned(),
            other => format!(
                "configure its `{}` section (or its environment variables) next to \
                 `storage: {}`",
                other.name(),
                config.storage.name()
            ),
        };
        return Err(Error::NotConfigured {
            kind: kind.name(),
            bucket: bucket.to_owned(),
            hint,
        });
    }
    let mut out = config.clone();
    out.storage = kind;
    out.bucket = bucket.to_owned();
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use quelea_core::config::ConfigBuilder;

    fn config(pairs: &[(&str, &str)]) -> Config {
        let mut builder = ConfigBuilder::new().no_file().env(Vec::new());
        for (k, v) in pairs {
            builder = builder.set(k, *v);
        }
        builder.build().unwrap()
    }

    #[test]
    fn each_kind_has_its_lithops_name_among_its_schemes() {
        for kind in StorageKind::ALL {
            assert!(schemes(kind).contains(&lithops_name(kind)), "{kind}");
            assert_eq!(scheme_kind(schemes(kind)[0]), Some(kind));
        }
    }

    #[test]
    fn addresses_parse_per_scheme() {
        let c = config(&[]);
        let a = parse_address("gs://b/k/x.csv", c.storage).unwrap().unwrap();
        assert_eq!(
            (a.kind, a.bucket.as_str(), a.key.as_str()),
            (StorageKind::Gcs, "b", "k/x.csv")
        );
        let a = parse_address("gcs://b", c.storage).unwrap().unwrap();
        assert_eq!((a.kind, a.key.as_str()), (StorageKind::Gcs, ""));
        let a = parse_address("azure_storage://c/p/", c.storage)
            .unwrap()
            .unwrap();
        assert_eq!((a.kind, a.bucket.as_str()), (StorageKind::Azure, "c"));
        let a = parse_address("abfss://c@acct.dfs.core.windows.net/p/q", c.storage)
            .unwrap()
            .unwrap();
        assert_eq!(
            (
                a.kind,
                a.bucket.as_str(),
                a.key.as_str(),
                a.account.as_deref()
            ),
            (StorageKind::Azure, "c", "p/q", Some("acct"))
        );
        let a = parse_address("localhost://b/k", c.storage)
            .unwrap()
            .unwrap();
        assert_eq!(a.kind, StorageKind::Localdisk);
        assert_eq!(parse_address("http://h/x", c.storage).unwrap(), None);
        assert_eq!(parse_address("b/k", c.storage).unwrap(), None);
        assert!(parse_address("gs:///k", c.storage).is_err());
    }

    #[test]
    fn s3_scheme_names_the_configured_s3_flavour() {
        let c = config(&[
            ("storage", "minio"),
            ("minio.endpoint", "http://127.0.0.1:9000"),
        ]);
        let a = parse_address("s3://b/k", c.storage).unwrap().unwrap();
        assert_eq!(a.kind, StorageKind::Minio);
        let a = parse_address("aws_s3://b/k", StorageKind::Localdisk)
            .unwrap()
            .unwrap();
        assert_eq!(a.kind, StorageKind::S3);
    }

    #[test]
    fn another_storage_needs_its_settings() {
        let c = config(&[]);
        let err = config_for(&c, StorageKind::Gcs, "b")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("gcs") && err.contains("`b`") && err.contains("section"),
            "{err}"
        );
        let c = config(&[("gcs.endpoint", "http://127.0.0.1:1")]);
        let other = config_for(&c, StorageKind::Gcs, "b").unwrap();
        assert_eq!(
            (other.storage, other.bucket.as_str()),
            (StorageKind::Gcs, "b")
        );
        assert!(config_for(&c, StorageKind::Localdisk, "b").is_ok());
        assert!(config_for(&c, StorageKind::Memory, "b").is_err());
    }
}
