//! A minimal client of the AWS Lambda REST API: the endpoint (the region's,
//! or an override such as the cargo-lambda emulator), SigV4-signed requests
//! with the client's credentials (`quelea_core::sigv4`), and AWS's error
//! answers. The `aws_lambda` backend invokes through it; `quelea runtime
//! deploy` creates and updates functions through it.

use std::time::Duration;

use bytes::Bytes;

use quelea_core::config::AwsLambdaConfig;
use quelea_core::model::now_ts;
use quelea_core::sigv4::{self, Credentials};

use crate::error::{Error, Result};

/// The API version prefix of every Lambda function path.
pub const API_PREFIX: &str = "/2015-03-31/functions";

/// Signs and sends Lambda API requests on one keep-alive client.
pub struct LambdaApi {
    base: String,
    host: String,
    region: String,
    credentials: Credentials,
    client: reqwest::Client,
}

impl std::fmt::Debug for LambdaApi {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LambdaApi")
            .field("base", &self.base)
            .field("region", &self.region)
            .finish_non_exhaustive()
    }
}

/// An answer AWS gave instead of success.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ApiError {
    pub status: u16,
    /// `TooManyRequestsException`, `ResourceConflictException`, ...
    pub kind: String,
    pub message: String,
    /// The function itself failed (a handler error), not the API.
    pub function_error: bool,
}

impl std::fmt::Display for ApiError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{} {}: {}", self.status, self.kind, self.message)
    }
}

impl LambdaApi {
    /// The API of `config`'s region (or endpoint override), with its
    /// credentials; an error names the missing or bad key.
    pub fn new(config: &AwsLambdaConfig, max_idle: usize) -> Result<LambdaApi> {
        let region = config
            .region
            .clone()
            .ok_or_else(|| Error::InvalidArgument {
                name: "aws_lambda.region",
                message: "the Lambda API needs a region (AWS_REGION)".into(),
            })?;
        let (base, host) = endpoint(config.endpoint.as_deref(), &region)?;
        let credentials = match (&config.access_key_id, &config.secret_access_key) {
            (Some(id), Some(secret)) => Credentials {
                access_key_id: id.clone(),
                secret_access_key: secret.expose().to_owned(),
                session_token: config.session_token.as_ref().map(|t| t.expose().to_owned()),
            },
            _ => {
                return Err(Error::InvalidArgument {
                    name: "aws_lambda.access_key_id",
                    message: "AWS credentials are needed to sign Lambda requests \
                              (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
                        .into(),
                })
            }
        };
        quelea_storage::install_tls_provider();
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(max_idle)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| Error::Invoke {
                backend: "aws_lambda",
                message: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(LambdaApi {
            base,
            host,
            region,
            credentials,
            client,
        })
    }

    /// `{API_PREFIX}/{function}{suffix}`, the function name encoded.
    pub fn function_path(function: &str, suffix: &str) -> String {
        format!("{API_PREFIX}/{}{suffix}", sigv4::encode(function))
    }

    /// The full URL of `path`, for messages.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    /// Sends one signed request with a JSON body. `Ok(body)` on success;
    /// `Err(Ok(api_error))` when AWS answered otherwise, `Err(Err(text))`
    /// when no answer came (connection, timeout).
    pub async fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        headers: &[(&str, &str)],
        body: Bytes,
        timeout: Duration,
    ) -> std::result::Result<Bytes, std::result::Result<ApiError, String>> {
        let signed = sigv4::sign(
            &self.credentials,
            &self.region,
            "lambda",
            now_ts() as u64,
            &sigv4::Request {
                method: method.as_str(),
                host: &self.host,
                path,
                query: &[],
                headers,
                body: &body,
            },
        );
        let url = self.url(path);
        let mut request = self
            .client
            .request(method, &url)
            .timeout(timeout)
            .header(reqwest::header::HOST, &self.host)
            .header(reqwest::header::CONTENT_TYPE, "application/json");
        for (name, value) in headers.iter().copied() {
            request = request.header(name, value);
        }
        for (name, value) in signed.headers {
            request = request.header(name, value);
        }
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|e| Err(format!("`{url}`: {e}")))?;
        let status = response.status();
        let function_error = response.headers().contains_key("x-amz-function-error");
        let response_headers = response.headers().clone();
        let text = response
            .bytes()
            .await
            .map_err(|e| Err(format!("`{url}`: {e}")))?;
        if status.is_success() && !function_error {
            return Ok(text);
        }
        let text = String::from_utf8_lossy(&text);
        let (kind, message) = aws_error(&response_headers, &text);
        // The emulator answers a handler error with 500 and an `errorType`.
        let function_error = function_error
            || serde_json::from_str::<serde_json::Value>(&text)
                .is_ok_and(|v| v.get("errorType").is_some());
        Err(Ok(ApiError {
            status: status.as_u16(),
            kind,
            message,
            function_error,
        }))
    }
}

/// An endpoint split for signing: (`scheme://host[:port]`, the Host header
/// as the HTTP client sends it, without a default port).
pub fn endpoint(endpoint: Option<&str>, region: &str) -> Result<(String, String)> {
    let base = match endpoint {
        Some(endpoint) => endpoint.trim_end_matches('/').to_owned(),
        None => format!("https://lambda.{region}.amazonaws.com"),
    };
    let bad = |message: String| Error::InvalidArgument {
        name: "aws_lambda.endpoint",
        message,
    };
    let (scheme, rest) = base
        .split_once("://")
        .ok_or_else(|| bad(format!("`{base}` is not a URL")))?;
    if rest.contains('/') || rest.is_empty() {
        return Err(bad(format!(
            "`{base}` has a path or no host; give only scheme, host and port"
        )));
    }
    let host = match (scheme, rest.rsplit_once(':')) {
        ("https", Some((h, "443"))) | ("http", Some((h, "80"))) => h.to_owned(),
        _ => rest.to_owned(),
    };
    Ok((format!("{scheme}://{host}"), host))
}

/// What AWS said when it refused: the error type (`x-amzn-ErrorType`, or
/// the body's `__type`/`Type`/`errorType`) and message.
pub fn aws_error(headers: &reqwest::header::HeaderMap, body: &str) -> (String, String) {
    let json: serde_json::Value = serde_json::from_str(body).unwrap_or_default();
    let field = |names: &[&str]| {
        names
            .iter()
            .find_map(|n| json.get(*n).and_then(|v| v.as_str()))
            .map(str::to_owned)
    };
    let kind = headers
        .get("x-amzn-errortype")
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty())
        .map(str::to_owned)
        .or_else(|| field(&["__type", "Type", "errorType"]))
        .unwrap_or_default();
    // `TooManyRequestsException:http://internal.amazon.com/...`
    let kind = kind.split(':').next().unwrap_or_default();
    let kind = kind.rsplit('#').next().unwrap_or_default().to_owned();
    let message =
        field(&["message", "Message", "errorMessage"]).unwrap_or_else(|| body.trim().to_owned());
    (kind, message)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_default_to_the_region_and_drop_default_ports() {
        assert_eq!(
            endpoint(None, "eu-west-1").unwrap(),
            (
                "https://lambda.eu-west-1.amazonaws.com".into(),
                "lambda.eu-west-1.amazonaws.com".into()
            )
        );
        assert_eq!(
            endpoint(Some("http://127.0.0.1:9000/"), "x").unwrap(),
            ("http://127.0.0.1:9000".into(), "127.0.0.1:9000".into())
        );
        assert_eq!(
            endpoint(Some("https://example.com:443"), "x").unwrap().1,
            "example.com"
        );
        let err = endpoint(Some("http://h:1/x"), "x").unwrap_err().to_string();
        assert!(err.contains("aws_lambda.endpoint"), "{err}");
    }

    #[test]
    fn aws_errors_are_read_from_header_or_body() {
        let mut headers = reqwest::header::HeaderMap::new();
        headers.insert(
            "x-amzn-errortype",
            "TooManyRequestsException:http://internal.amazon.com/coral/"
                .parse()
                .unwrap(),
        );
        assert_eq!(
            aws_error(&headers, r#"{"message":"Rate exceeded"}"#),
            ("TooManyRequestsException".into(), "Rate exceeded".into())
        );
        let none = reqwest::header::HeaderMap::new();
        assert_eq!(
            aws_error(
                &none,
                r#"{"Type":"User","message":"Function not found: x"}"#
            ),
            ("User".into(), "Function not found: x".into())
        );
        assert_eq!(
            aws_error(&none, r#"{"errorType":"Bad","errorMessage":"boom"}"#),
            ("Bad".into(), "boom".into())
        );
        assert_eq!(aws_error(&none, "plain"), (String::new(), "plain".into()));
    }
}
