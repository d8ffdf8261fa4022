//! Errors of the core model.

/// Errors raised while building ids, parsing config or decoding the protocol.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("invalid {what} `{value}`: {reason}")]
    InvalidId {
        what: &'static str,
        value: String,
        reason: &'static str,
    },
    #[error("bad config in {origin}: {message}")]
    Config { origin: String, message: String },
    #[error("unsupported {what} protocol version {found} (this build speaks version {supported})")]
    UnsupportedVersion {
        what: &'static str,
        found: u32,
        supported: u32,
    },
    #[error("malformed {what}: {message}")]
    Malformed { what: &'static str, message: String },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
