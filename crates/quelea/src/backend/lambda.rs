//! The `aws_lambda` backend's invoker: each Invocation is the payload of an
//! asynchronous call of the Lambda Invoke API
//! (`POST /2015-03-31/functions/{name}/invocations`,
//! `X-Amz-Invocation-Type: Event`), SigV4-signed with the client's own
//! credentials, which never enter the payload: the function reads storage
//! with its execution role. Throttling (429, `TooManyRequestsException`,
//! `ServiceException`, other 5xx) and transport errors are retried with
//! jittered backoff until `aws_lambda.invoke_deadline`; any other answer
//! fails the Invocation's calls with AWS's error text. Completion is
//! followed through storage, and an event Lambda accepted but lost is
//! caught by the monitor's deadline.
//!
//! The cargo-lambda emulator answers an `Event` invocation only once the
//! handler returned (real Lambda: `202` at once) and a handler error as
//! `500` with an `errorType` body; a request may therefore last as long as
//! its calls, up to the job's deadline, and a function error is a refusal.

use std::time::Duration;

use bytes::Bytes;

use quelea_core::config::AwsLambdaConfig;
use quelea_core::model::now_ts;
use quelea_core::sigv4::{self, Credentials};

use super::remote::{invoke_and_follow, Failure};
use super::Submission;
use crate::error::{Error, Result};

/// Requests last at least this long, even when a job's deadline is near.
const MIN_REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

pub(crate) struct LambdaBackend {
    url: String,
    host: String,
    path: String,
    region: String,
    credentials: Credentials,
    client: reqwest::Client,
    max_workers: usize,
    invoke_deadline: Duration,
}

/// An AWS endpoint split for signing: (`https://host[:port]`, host header).
pub(crate) fn endpoint(config: &AwsLambdaConfig) -> Result<(String, String)> {
    let region = config.region.as_deref().unwrap_or("us-east-1");
    let base = match &config.endpoint {
        Some(endpoint) => endpoint.trim_end_matches('/').to_owned(),
        None => format!("https://lambda.{region}.amazonaws.com"),
    };
    let (scheme, rest) = base
        .split_once("://")
        .ok_or_else(|| Error::InvalidArgument {
            name: "aws_lambda.endpoint",
            message: format!("`{base}` is not a URL"),
        })?;
    if rest.contains('/') {
        return Err(Error::InvalidArgument {
            name: "aws_lambda.endpoint",
            message: format!("`{base}` has a path; give only scheme, host and port"),
        });
    }
    // The Host header as the HTTP client sends it: no default port.
    let host = match (scheme, rest.rsplit_once(':')) {
        ("https", Some((h, "443"))) | ("http", Some((h, "80"))) => h.to_owned(),
        _ => rest.to_owned(),
    };
    Ok((format!("{scheme}://{host}"), host))
}

/// The client's credentials, from the `aws_lambda` section.
pub(crate) fn credentials(config: &AwsLambdaConfig) -> Result<Credentials> {
    match (&config.access_key_id, &config.secret_access_key) {
        (Some(id), Some(secret)) => Ok(Credentials {
            access_key_id: id.clone(),
            secret_access_key: secret.expose().to_owned(),
            session_token: config.session_token.as_ref().map(|t| t.expose().to_owned()),
        }),
        _ => Err(Error::InvalidArgument {
            name: "aws_lambda.access_key_id",
            message: "AWS credentials are needed to sign Lambda requests \
                      (AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY)"
                .into(),
        }),
    }
}

/// What AWS said when it refused: the error type (`x-amzn-ErrorType` or
/// the body's `__type`/`Type`/`errorType`) and message.
pub(crate) fn aws_error(headers: &reqwest::header::HeaderMap, body: &str) -> (String, String) {
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
        .map(str::to_owned)
        .or_else(|| field(&["__type", "Type", "errorType"]))
        .unwrap_or_default();
    // `TooManyRequestsException:http://internal.amazon.com/...`
    let kind = kind.split(':').next().unwrap_or_default().to_owned();
    let kind = kind.rsplit('#').next().unwrap_or_default().to_owned();
    let message =
        field(&["message", "Message", "errorMessage"]).unwrap_or_else(|| body.trim().to_owned());
    (kind, message)
}

impl LambdaBackend {
    pub fn new(config: &AwsLambdaConfig) -> Result<LambdaBackend> {
        let function = config
            .function_name
            .clone()
            .ok_or_else(|| Error::InvalidArgument {
                name: "aws_lambda.function_name",
                message: "the aws_lambda backend needs the function's name".into(),
            })?;
        let (base, host) = endpoint(config)?;
        let path = format!(
            "/2015-03-31/functions/{}/invocations",
            sigv4::encode(&function)
        );
        let client = reqwest::Client::builder()
            .pool_max_idle_per_host(config.max_workers as usize)
            .tcp_nodelay(true)
            .build()
            .map_err(|e| Error::Invoke {
                backend: "aws_lambda",
                message: format!("cannot build the HTTP client: {e}"),
            })?;
        Ok(LambdaBackend {
            url: format!("{base}{path}"),
            host,
            path,
            region: config.region.clone().unwrap_or_else(|| "us-east-1".into()),
            credentials: credentials(config)?,
            client,
            max_workers: config.max_workers.max(1) as usize,
            invoke_deadline: Duration::from_secs_f64(config.invoke_deadline),
        })
    }

    pub fn submit(&self, submission: Submission<'_>) -> Result<()> {
        let timeout = Duration::from_secs_f64((submission.deadline_ts - now_ts()).max(0.0))
            .max(MIN_REQUEST_TIMEOUT);
        invoke_and_follow(
            "aws_lambda",
            submission,
            self.max_workers,
            self.invoke_deadline,
            |body| self.invoke(body, timeout),
        )
    }

    async fn invoke(&self, body: Bytes, timeout: Duration) -> std::result::Result<(), Failure> {
        let signed = sigv4::sign(
            &self.credentials,
            &self.region,
            "lambda",
            now_ts() as u64,
            &sigv4::Request {
                method: "POST",
                host: &self.host,
                path: &self.path,
                query: &[],
                headers: &[("x-amz-invocation-type", "Event")],
                body: &body,
            },
        );
        let mut request = self
            .client
            .post(&self.url)
            .timeout(timeout)
            .header(reqwest::header::HOST, &self.host)
            .header(reqwest::header::CONTENT_TYPE, "application/json")
            .header("x-amz-invocation-type", "Event");
        for (name, value) in signed.headers {
            request = request.header(name, value);
        }
        let url = &self.url;
        let response = request
            .body(body)
            .send()
            .await
            .map_err(|e| Failure::Retry(format!("`{url}`: {e}")))?;
        let status = response.status();
        let function_error = response.headers().contains_key("x-amz-function-error");
        if status.is_success() && !function_error {
            return Ok(());
        }
        let headers = response.headers().clone();
        let text = response.text().await.unwrap_or_default();
        let (kind, message) = aws_error(&headers, &text);
        let described = format!("`{url}` answered {status} {kind}: {message}");
        // A handler error (the emulator's 500 with `errorType`, or
        // `X-Amz-Function-Error`) is the function's answer, not a throttle.
        let handler_error = function_error
            || serde_json::from_str::<serde_json::Value>(&text)
                .is_ok_and(|v| v.get("errorType").is_some());
        let throttled = status.as_u16() == 429
            || matches!(
                kind.as_str(),
                "TooManyRequestsException" | "ServiceException" | "EC2ThrottledException"
            )
            || (status.is_server_error() && !handler_error);
        if throttled {
            Err(Failure::Retry(described))
        } else {
            Err(Failure::Refused(described))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(endpoint: Option<&str>) -> AwsLambdaConfig {
        AwsLambdaConfig {
            region: Some("eu-west-1".into()),
            endpoint: endpoint.map(str::to_owned),
            ..AwsLambdaConfig::default()
        }
    }

    #[test]
    fn endpoints_default_to_the_region_and_drop_default_ports() {
        assert_eq!(
            endpoint(&config(None)).unwrap(),
            (
                "https://lambda.eu-west-1.amazonaws.com".into(),
                "lambda.eu-west-1.amazonaws.com".into()
            )
        );
        assert_eq!(
            endpoint(&config(Some("http://127.0.0.1:9000/"))).unwrap(),
            ("http://127.0.0.1:9000".into(), "127.0.0.1:9000".into())
        );
        assert_eq!(
            endpoint(&config(Some("https://example.com:443")))
                .unwrap()
                .1,
            "example.com"
        );
        let err = endpoint(&config(Some("http://h:1/x")))
            .unwrap_err()
            .to_string();
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
