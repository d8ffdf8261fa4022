//! Azure Blob settings: connection strings and the emulator's account.

use quelea_core::config::AzureConfig;

use crate::{Error, Result};

/// Azurite's development account, documented by Microsoft.
pub const EMULATOR_ACCOUNT: &str = "devstoreaccount1";
/// Azurite's development account key: public, documented by Microsoft.
const EMULATOR_KEY: &str =
    "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw==";
/// Where Azurite's blob service listens unless told otherwise.
const EMULATOR_ENDPOINT: &str = "http://127.0.0.1:10000";

/// The blob service URL of `account`: `endpoint` as given, or for the
/// emulator `<endpoint>/<account>` (Azurite puts the account in the path), or
/// Azure's public one.
pub fn endpoint(account: &str, endpoint: Option<&str>, use_emulator: bool) -> String {
    if use_emulator {
        let base = endpoint.unwrap_or(EMULATOR_ENDPOINT).trim_end_matches('/');
        if base.ends_with(&format!("/{account}")) {
            base.to_owned()
        } else {
            format!("{base}/{account}")
        }
    } else {
        endpoint.map_or_else(
            || format!("https://{account}.blob.core.windows.net"),
            |e| e.trim_end_matches('/').to_owned(),
        )
    }
}

/// Resolved account, endpoint and credential.
pub(crate) struct Resolved {
    pub account: String,
    pub endpoint: String,
    pub access_key: Option<String>,
    pub sas_token: Option<String>,
}

/// Resolves the section: a connection string's parts fill what the explicit
/// keys leave unset; the emulator brings its account and key.
pub(crate) fn resolve(config: &AzureConfig) -> Result<Resolved> {
    let mut account = config.account.clone();
    let mut access_key = config.access_key.as_ref().map(|s| s.expose().to_owned());
    let mut sas_token = config.sas_token.as_ref().map(|s| s.expose().to_owned());
    let mut blob_endpoint = config.endpoint.clone();
    let mut use_emulator = config.use_emulator;
    if let Some(cs) = &config.connection_string {
        for part in cs
            .expose()
            .split(';')
            .map(str::trim)
            .filter(|p| !p.is_empty())
        {
            let Some((name, value)) = part.split_once('=') else {
                return Err(Error::Config(
                    "azure.connection_string: a part is not `Name=value` \
                     (expected `AccountName=..;AccountKey=..`)"
                        .into(),
                ));
            };
            match name.to_ascii_lowercase().as_str() {
                "accountname" => {
                    account.get_or_insert_with(|| value.to_owned());
                }
                "accountkey" => {
                    access_key.get_or_insert_with(|| value.to_owned());
                }
                "sharedaccesssignature" => {
                    sas_token.get_or_insert_with(|| value.to_owned());
                }
                "blobendpoint" => {
                    blob_endpoint.get_or_insert_with(|| value.to_owned());
                }
                "usedevelopmentstorage" => {
                    use_emulator |= value.eq_ignore_ascii_case("true");
                }
                // Other services' endpoints and protocol settings do not
                // concern blobs.
                "defaultendpointsprotocol"
                | "endpointsuffix"
                | "queueendpoint"
                | "tableendpoint"
                | "fileendpoint" => {}
                other => {
                    return Err(Error::Config(format!(
                        "azure.connection_string: unknown part `{other}` (known: AccountName, \
                         AccountKey, SharedAccessSignature, BlobEndpoint, \
                         UseDevelopmentStorage, DefaultEndpointsProtocol, EndpointSuffix)"
                    )))
                }
            }
        }
    }
    if use_emulator {
        let account = account.unwrap_or_else(|| EMULATOR_ACCOUNT.to_owned());
        if access_key.is_none() && sas_token.is_none() && account == EMULATOR_ACCOUNT {
            access_key = Some(EMULATOR_KEY.to_owned());
        }
        return Ok(Resolved {
            endpoint: endpoint(&account, blob_endpoint.as_deref(), true),
            account,
            access_key,
            sas_token,
        });
    }
    let account = account.ok_or_else(|| {
        Error::Config(
            "azure: no storage account: set `azure.account` (`AZURE_STORAGE_ACCOUNT`), a \
             connection string, or `azure.use_emulator` for Azurite"
                .into(),
        )
    })?;
    Ok(Resolved {
        endpoint: endpoint(&account, blob_endpoint.as_deref(), false),
        account,
        access_key,
        sas_token,
    })
}

/// `sv=..&sig=..` as query pairs.
pub(crate) fn sas_pairs(token: &str) -> Result<Vec<(String, String)>> {
    token
        .trim_start_matches('?')
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|pair| {
            let (k, v) = pair.split_once('=').ok_or_else(|| {
                Error::Config("azure.sas_token: expected `name=value&...` query pairs".into())
            })?;
            let decode = |s: &str| {
                percent_encoding::percent_decode_str(s)
                    .decode_utf8_lossy()
                    .into_owned()
            };
            Ok((decode(k), decode(v)))
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use quelea_core::config::Secret;

    #[test]
    fn connection_strings_fill_unset_keys() {
        let config = AzureConfig {
            connection_string: Some(Secret::new(
                "DefaultEndpointsProtocol=http;AccountName=acct;AccountKey=a2V5;\
                 BlobEndpoint=http://127.0.0.1:10000/acct;",
            )),
            ..AzureConfig::default()
        };
        let r = resolve(&config).unwrap();
        assert_eq!(r.account, "acct");
        assert_eq!(r.endpoint, "http://127.0.0.1:10000/acct");
        assert_eq!(r.access_key.as_deref(), Some("a2V5"));
        let dev = AzureConfig {
            connection_string: Some(Secret::new("UseDevelopmentStorage=true")),
            ..AzureConfig::default()
        };
        let r = resolve(&dev).unwrap();
        assert_eq!(r.account, EMULATOR_ACCOUNT);
        assert_eq!(r.endpoint, "http://127.0.0.1:10000/devstoreaccount1");
        let bad = AzureConfig {
            connection_string: Some(Secret::new("AccountName=a;Bogus=1")),
            ..AzureConfig::default()
        };
        let err = resolve(&bad).err().unwrap().to_string();
        assert!(err.contains("`bogus`"), "{err}");
    }

    #[test]
    fn sas_tokens_are_query_pairs() {
        let pairs = sas_pairs("?sv=2020&sig=a%2Bb").unwrap();
        assert_eq!(pairs[1], ("sig".into(), "a+b".into()));
    }
}
