//! Request signing for the HTTP front door: the one place the signature
//! format is defined, used by the client's invoker and by the server.
//!
//! A request carries three headers:
//!
//! ```text
//! X-Quelea-Timestamp: <Unix seconds>
//! X-Quelea-Nonce:     <unique per request>
//! X-Quelea-Signature: v1=<hex HMAC-SHA256(secret, "<timestamp>.<nonce>." + body)>
//! ```
//!
//! The server accepts a timestamp within its replay window of its own clock
//! and remembers each accepted signature for as long, so a captured request
//! cannot be sent again. The nonce makes a retry of the same body a new
//! request.

use std::sync::atomic::{AtomicU64, Ordering};

use hmac::{Hmac, Mac};
use sha2::Sha256;

pub const TIMESTAMP_HEADER: &str = "x-quelea-timestamp";
pub const NONCE_HEADER: &str = "x-quelea-nonce";
pub const SIGNATURE_HEADER: &str = "x-quelea-signature";
const SCHEME: &str = "v1=";

type HmacSha256 = Hmac<Sha256>;

/// The three headers of a signed request.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SignedHeaders {
    pub timestamp: String,
    pub nonce: String,
    pub signature: String,
}

/// Why a request's signature was refused (the server answers 401 for all).
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthError {
    #[error("the request is not signed: header `{0}` is missing")]
    Missing(&'static str),
    #[error("header `{0}` is malformed")]
    Malformed(&'static str),
    #[error(
        "the request's timestamp is {skew_s} s away from the server's clock (window: {window_s} s)"
    )]
    Expired { skew_s: i64, window_s: u64 },
    #[error("the signature does not match")]
    BadSignature,
    #[error("the request was already received (replay)")]
    Replayed,
}

fn mac(secret: &[u8], timestamp: &str, nonce: &str, body: &[u8]) -> HmacSha256 {
    let mut mac = HmacSha256::new_from_slice(secret).expect("HMAC takes keys of any length");
    mac.update(timestamp.as_bytes());
    mac.update(b".");
    mac.update(nonce.as_bytes());
    mac.update(b".");
    mac.update(body);
    mac
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// The one accepted encoding of a MAC: exactly 64 lowercase hex digits.
/// Anything else (upper case, a sign, another length) is malformed, so one
/// MAC has one spelling and a replay cannot pass as a new request.
fn unhex(text: &str) -> Option<[u8; 32]> {
    let digits = text.as_bytes();
    if digits.len() != 64 {
        return None;
    }
    let value = |d: u8| match d {
        b'0'..=b'9' => Some(d - b'0'),
        b'a'..=b'f' => Some(d - b'a' + 10),
        _ => None,
    };
    let mut out = [0u8; 32];
    for (i, pair) in digits.chunks_exact(2).enumerate() {
        out[i] = value(pair[0])? << 4 | value(pair[1])?;
    }
    Some(out)
}

/// A nonce unique to this process and request.
fn next_nonce() -> String {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    format!(
        "{}-{}-{}",
        crate::ids::session_id(),
        std::process::id(),
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

/// Signs `body` at Unix time `now_s`.
pub fn sign(secret: &[u8], now_s: u64, body: &[u8]) -> SignedHeaders {
    let timestamp = now_s.to_string();
    let nonce = next_nonce();
    let signature = format!(
        "{SCHEME}{}",
        hex(&mac(secret, &timestamp, &nonce, body)
            .finalize()
            .into_bytes())
    );
    SignedHeaders {
        timestamp,
        nonce,
        signature,
    }
}

/// Checks a request's signature and timestamp (not replays: the caller
/// keeps the cache of seen MACs, keyed on the MAC this returns). The
/// comparison is constant-time.
pub fn verify(
    secret: &[u8],
    headers: &SignedHeaders,
    body: &[u8],
    now_s: u64,
    window_s: u64,
) -> Result<[u8; 32], AuthError> {
    let timestamp: u64 = headers
        .timestamp
        .parse()
        .map_err(|_| AuthError::Malformed(TIMESTAMP_HEADER))?;
    if headers.nonce.is_empty() || headers.nonce.len() > 128 {
        return Err(AuthError::Malformed(NONCE_HEADER));
    }
    let given = headers
        .signature
        .strip_prefix(SCHEME)
        .and_then(unhex)
        .ok_or(AuthError::Malformed(SIGNATURE_HEADER))?;
    // Check the signature before the clock, so an attacker learns nothing
    // about the window from unsigned probes.
    mac(secret, &headers.timestamp, &headers.nonce, body)
        .verify_slice(&given)
        .map_err(|_| AuthError::BadSignature)?;
    let skew = (now_s as i128 - timestamp as i128).clamp(i64::MIN as i128, i64::MAX as i128) as i64;
    if skew.unsigned_abs() > window_s {
        return Err(AuthError::Expired {
            skew_s: skew,
            window_s,
        });
    }
    Ok(given)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_signature_has_exactly_one_accepted_spelling() {
        let body = b"{}";
        let headers = sign(b"secret", 1_000, body);
        assert!(verify(b"secret", &headers, body, 1_000, 300).is_ok());
        let hexed = headers.signature.strip_prefix("v1=").unwrap();
        let respelled = [
            format!("v1={}", hexed.to_uppercase()),
            format!("v1=+{}", &hexed[..63]),
            format!("v1={}0", hexed),
            format!("v1={}", &hexed[..62]),
            format!("V1={hexed}"),
            format!("v1= {hexed}"),
        ];
        for signature in respelled {
            let altered = SignedHeaders {
                signature: signature.clone(),
                ..headers.clone()
            };
            assert_eq!(
                verify(b"secret", &altered, body, 1_000, 300),
                Err(AuthError::Malformed(SIGNATURE_HEADER)),
                "{signature}"
            );
        }
        // A timestamp far from the clock is refused, not overflowed.
        let far = sign(b"secret", u64::MAX, body);
        assert!(matches!(
            verify(b"secret", &far, body, 0, 300),
            Err(AuthError::Expired { .. })
        ));
    }

    #[test]
    fn signs_and_verifies() {
        let body = br#"{"version":1}"#;
        let headers = sign(b"secret", 1_000, body);
        assert!(headers.signature.starts_with("v1="));
        let mac = verify(b"secret", &headers, body, 1_010, 300).unwrap();
        assert_eq!(format!("v1={}", hex(&mac)), headers.signature);
        assert_eq!(
            verify(b"other", &headers, body, 1_010, 300),
            Err(AuthError::BadSignature)
        );
        assert_eq!(
            verify(b"secret", &headers, b"{}", 1_010, 300),
            Err(AuthError::BadSignature)
        );
        assert!(matches!(
            verify(b"secret", &headers, body, 2_000, 300),
            Err(AuthError::Expired { skew_s: 1000, .. })
        ));
        let mut tampered = headers.clone();
        tampered.timestamp = "1001".into();
        assert_eq!(
            verify(b"secret", &tampered, body, 1_010, 300),
            Err(AuthError::BadSignature)
        );
        tampered.signature = "v1=zz".into();
        assert_eq!(
            verify(b"secret", &tampered, body, 1_010, 300),
            Err(AuthError::Malformed(SIGNATURE_HEADER))
        );
    }

    #[test]
    fn every_request_gets_a_new_nonce() {
        let a = sign(b"k", 5, b"same");
        let b = sign(b"k", 5, b"same");
        assert_ne!(a.nonce, b.nonce);
        assert_ne!(a.signature, b.signature);
    }
}
