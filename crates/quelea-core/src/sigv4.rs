//! AWS Signature Version 4 for requests to AWS APIs (the Lambda Invoke and
//! function-management APIs). A small module on the workspace's hmac/sha2
//! instead of `aws-sigv4`, whose credential and smithy crates would add
//! about seventy dependencies for these few lines; it is checked against
//! AWS's published test-suite vectors below.
//!
//! Only what quelea sends is covered: a path of plain segments, an optional
//! query, headers signed as given (plus `host`, `x-amz-date` and
//! `x-amz-security-token`), and a payload hashed in full.

use hmac::{Hmac, Mac};
use sha2::{Digest, Sha256};

type HmacSha256 = Hmac<Sha256>;

/// Credentials that sign a request; never logged (no `Debug` on the secret).
#[derive(Clone)]
pub struct Credentials {
    pub access_key_id: String,
    pub secret_access_key: String,
    pub session_token: Option<String>,
}

impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Credentials")
            .field("access_key_id", &self.access_key_id)
            .finish_non_exhaustive()
    }
}

/// What is signed.
pub struct Request<'a> {
    pub method: &'a str,
    /// The `Host` header value (with the port when not the default one).
    pub host: &'a str,
    /// The path as sent, each segment already URI-encoded (see [`encode`]).
    pub path: &'a str,
    /// `name=value` pairs, already URI-encoded, in any order.
    pub query: &'a [(&'a str, &'a str)],
    /// Extra headers to sign and send (e.g. `x-amz-invocation-type`).
    pub headers: &'a [(&'a str, &'a str)],
    pub body: &'a [u8],
}

/// The headers to add to the request: `authorization`, `x-amz-date`, and
/// `x-amz-security-token` with temporary credentials.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Signed {
    pub headers: Vec<(&'static str, String)>,
}

/// Signs `request` for `service` in `region` at Unix time `now`.
pub fn sign(
    credentials: &Credentials,
    region: &str,
    service: &str,
    now: u64,
    request: &Request<'_>,
) -> Signed {
    let amz_date = amz_date(now);
    let date = &amz_date[..8];
    let mut headers: Vec<(String, String)> = vec![
        ("host".into(), request.host.trim().to_owned()),
        ("x-amz-date".into(), amz_date.clone()),
    ];
    if let Some(token) = &credentials.session_token {
        headers.push(("x-amz-security-token".into(), token.clone()));
    }
    for (name, value) in request.headers {
        headers.push((name.to_ascii_lowercase(), collapse(value)));
    }
    headers.sort();
    let signed_headers = headers
        .iter()
        .map(|(n, _)| n.as_str())
        .collect::<Vec<_>>()
        .join(";");
    let canonical_headers: String = headers.iter().map(|(n, v)| format!("{n}:{v}\n")).collect();
    let mut query: Vec<&(&str, &str)> = request.query.iter().collect();
    query.sort();
    let canonical_query = query
        .iter()
        .map(|(n, v)| format!("{n}={v}"))
        .collect::<Vec<_>>()
        .join("&");
    // Every service but S3 signs the path encoded once more.
    let canonical_path = if service == "s3" {
        request.path.to_owned()
    } else {
        request
            .path
            .split('/')
            .map(encode)
            .collect::<Vec<_>>()
            .join("/")
    };
    let canonical_request = format!(
        "{}\n{}\n{canonical_query}\n{canonical_headers}\n{signed_headers}\n{}",
        request.method,
        if canonical_path.is_empty() {
            "/"
        } else {
            &canonical_path
        },
        hex(&Sha256::digest(request.body)),
    );
    let scope = format!("{date}/{region}/{service}/aws4_request");
    let string_to_sign = format!(
        "AWS4-HMAC-SHA256\n{amz_date}\n{scope}\n{}",
        hex(&Sha256::digest(canonical_request.as_bytes()))
    );
    let key = signing_key(&credentials.secret_access_key, date, region, service);
    let signature = hex(&hmac(&key, string_to_sign.as_bytes()));
    let mut out = vec![
        (
            "authorization",
            format!(
                "AWS4-HMAC-SHA256 Credential={}/{scope}, SignedHeaders={signed_headers}, \
                 Signature={signature}",
                credentials.access_key_id
            ),
        ),
        ("x-amz-date", amz_date),
    ];
    if let Some(token) = &credentials.session_token {
        out.push(("x-amz-security-token", token.clone()));
    }
    Signed { headers: out }
}

/// URI-encodes one path segment or query value the way SigV4 wants:
/// everything but `A-Z a-z 0-9 - _ . ~` as `%XX`.
pub fn encode(segment: &str) -> String {
    let mut out = String::with_capacity(segment.len());
    for b in segment.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn signing_key(secret: &str, date: &str, region: &str, service: &str) -> Vec<u8> {
    let k_date = hmac(format!("AWS4{secret}").as_bytes(), date.as_bytes());
    let k_region = hmac(&k_date, region.as_bytes());
    let k_service = hmac(&k_region, service.as_bytes());
    hmac(&k_service, b"aws4_request")
}

fn hmac(key: &[u8], data: &[u8]) -> Vec<u8> {
    let mut mac = HmacSha256::new_from_slice(key).expect("HMAC takes any key length");
    mac.update(data);
    mac.finalize().into_bytes().to_vec()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Header values are signed trimmed, with inner runs of spaces collapsed.
fn collapse(value: &str) -> String {
    value.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// `YYYYMMDDTHHMMSSZ` for Unix time `now` (UTC).
pub fn amz_date(now: u64) -> String {
    let days = (now / 86_400) as i64;
    let secs = now % 86_400;
    // Howard Hinnant's civil-from-days.
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}{month:02}{day:02}T{:02}{:02}{:02}Z",
        secs / 3600,
        secs % 3600 / 60,
        secs % 60
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    /// 2015-08-30T12:36:00Z, the time of AWS's test suite.
    const SUITE_TIME: u64 = 1_440_938_160;

    fn suite_credentials() -> Credentials {
        Credentials {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY".into(),
            session_token: None,
        }
    }

    fn suite_sign(method: &str, query: &[(&str, &str)]) -> String {
        let signed = sign(
            &suite_credentials(),
            "us-east-1",
            "service",
            SUITE_TIME,
            &Request {
                method,
                host: "example.amazonaws.com",
                path: "/",
                query,
                headers: &[],
                body: b"",
            },
        );
        signed.headers[0].1.clone()
    }

    #[test]
    fn dates_format_as_aws_wants() {
        assert_eq!(amz_date(SUITE_TIME), "20150830T123600Z");
        assert_eq!(amz_date(0), "19700101T000000Z");
        assert_eq!(amz_date(951_782_400), "20000229T000000Z");
        assert_eq!(amz_date(4_102_444_799), "20991231T235959Z");
    }

    #[test]
    fn the_signing_key_matches_the_published_derivation() {
        // AWS's "derive a signing key" example (IAM, 2015-08-30).
        let key = signing_key(
            "wJalrXUtnFEMI/K7MDENG+bPxRfiCYEXAMPLEKEY",
            "20150830",
            "us-east-1",
            "iam",
        );
        assert_eq!(
            hex(&key),
            "c4afb1cc5771d871763a393e44b703571b55cc28424d1a5e86da6ed3c154a4b9"
        );
    }

    #[test]
    fn aws_test_suite_vectors() {
        let prefix = "AWS4-HMAC-SHA256 Credential=AKIDEXAMPLE/20150830/us-east-1/service/\
                      aws4_request, SignedHeaders=host;x-amz-date, Signature=";
        // get-vanilla
        assert_eq!(
            suite_sign("GET", &[]),
            format!("{prefix}5fa00fa31553b73ebf1942676e86291e8372ff2a2260956d9b8aae1d763fbf31")
        );
        // get-vanilla-query-order-key-case: the query is sorted before signing.
        assert_eq!(
            suite_sign("GET", &[("Param2", "value2"), ("Param1", "value1")]),
            format!("{prefix}b97d918cfa904a5beff61c982a1b6f458b799221646efd99d3219ec94cdf2500")
        );
        // post-vanilla
        assert_eq!(
            suite_sign("POST", &[]),
            format!("{prefix}5da7c1a2acd57cee7505fc6676e4e544621c30862966e37dddb68e92efbe5d6b")
        );
    }

    #[test]
    fn session_tokens_and_extra_headers_are_signed() {
        let mut credentials = suite_credentials();
        credentials.session_token = Some("token".into());
        let signed = sign(
            &credentials,
            "eu-west-1",
            "lambda",
            SUITE_TIME,
            &Request {
                method: "POST",
                host: "lambda.eu-west-1.amazonaws.com",
                path: "/2015-03-31/functions/arn%3Aaws%3Alambda%3Ax/invocations",
                query: &[],
                headers: &[("X-Amz-Invocation-Type", " Event ")],
                body: b"{}",
            },
        );
        let auth = &signed.headers[0].1;
        assert!(
            auth.contains("/eu-west-1/lambda/aws4_request")
                && auth.contains(
                    "SignedHeaders=host;x-amz-date;x-amz-invocation-type;x-amz-security-token"
                ),
            "{auth}"
        );
        assert!(signed
            .headers
            .contains(&("x-amz-security-token", "token".into())));
        assert!(!format!("{credentials:?}").contains("EXAMPLEKEY"));
    }

    #[test]
    fn segments_encode_reserved_bytes() {
        assert_eq!(encode("a-b_c.d~e"), "a-b_c.d~e");
        assert_eq!(encode("arn:aws"), "arn%3Aaws");
        assert_eq!(encode("a b/ü"), "a%20b%2F%C3%BC");
    }
}
