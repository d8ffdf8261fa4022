use std::path::PathBuf;

/// Partitioning errors, each naming the input, argument, path or URL at fault.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// A chunking argument that cannot produce chunks (`chunk_size` or
    /// `chunk_number` of 0).
    #[error("`{argument}` must be at least 1, got {value}")]
    InvalidChunking { argument: &'static str, value: u64 },
    /// More chunks than a plan can number.
    #[error(
        "`chunk_size` {chunk_size} cuts an object of {object_size} bytes into more than {max} chunks"
    )]
    TooManyChunks {
        object_size: u64,
        chunk_size: u64,
        max: u64,
    },
    #[error("the newline separator must not be empty (use no separator for exact byte ranges)")]
    EmptyNewline,
    /// An input string that names nothing that can be read.
    #[error("invalid input `{input}`: {reason}")]
    InvalidInput { input: String, reason: String },
    /// A bucket other than the configured one, with no way to reach it.
    #[error("bucket `{bucket}` is not the configured bucket `{configured}`, and no storage was given for other buckets")]
    UnknownBucket { bucket: String, configured: String },
    /// An address in a storage other than the configured one, with no
    /// settings to reach it.
    #[error("bucket `{bucket}` is in {kind} storage, but only the configured {configured} storage can be read here")]
    OtherStorage {
        kind: quelea_storage::StorageKind,
        bucket: String,
        configured: quelea_storage::StorageKind,
    },
    /// An input that matched no object.
    #[error("no objects found for `{input}`: searched {searched}")]
    NothingFound { input: String, searched: String },
    /// A byte range that does not lie within the object.
    #[error("byte range {start}..{end} is outside `{object}` ({size} bytes)")]
    RangeOutOfBounds {
        object: String,
        start: u64,
        end: u64,
        size: u64,
    },
    /// A read that returned fewer or more bytes than asked: the object
    /// changed while it was being read.
    #[error("reading {start}..{end} of `{object}` returned {got} bytes; did the object change?")]
    ShortRead {
        object: String,
        start: u64,
        end: u64,
        got: u64,
    },
    #[error(transparent)]
    Storage(#[from] quelea_storage::Error),
    #[error("local file `{path}`: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("http {operation} of `{url}` failed: {reason}")]
    Http {
        operation: &'static str,
        url: String,
        reason: String,
    },
}

pub type Result<T, E = Error> = std::result::Result<T, E>;
