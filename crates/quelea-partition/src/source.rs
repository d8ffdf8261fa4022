//! Ranged reads from the places an object can live.

use std::ops::Range;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, OnceLock};
use std::time::Duration;

use bytes::Bytes;
use quelea_storage::{io_runtime, Storage};

use crate::error::{Error, Result};

/// An object that can be read by byte range.
///
/// The contract: `size` is stable for the life of the source, and
/// `read_range` returns exactly the bytes `[range.start, range.end)` for any
/// range within `0..size()` (an empty range returns no bytes). Callers never
/// ask for bytes past `size()`; a source answers such a request with
/// [`Error::RangeOutOfBounds`].
pub trait RangeSource: Send + Sync {
    /// The object's size in bytes.
    fn size(&self) -> Result<u64>;
    /// Bytes `[range.start, range.end)` of the object.
    fn read_range(&self, range: Range<u64>) -> Result<Bytes>;
    /// What the source reads (a key, a path, a URL), for messages.
    fn describe(&self) -> String;
}

impl<T: RangeSource + ?Sized> RangeSource for &T {
    fn size(&self) -> Result<u64> {
        (**self).size()
    }
    fn read_range(&self, range: Range<u64>) -> Result<Bytes> {
        (**self).read_range(range)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

impl<T: RangeSource + ?Sized> RangeSource for Box<T> {
    fn size(&self) -> Result<u64> {
        (**self).size()
    }
    fn read_range(&self, range: Range<u64>) -> Result<Bytes> {
        (**self).read_range(range)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

impl<T: RangeSource + ?Sized> RangeSource for Arc<T> {
    fn size(&self) -> Result<u64> {
        (**self).size()
    }
    fn read_range(&self, range: Range<u64>) -> Result<Bytes> {
        (**self).read_range(range)
    }
    fn describe(&self) -> String {
        (**self).describe()
    }
}

fn check_range(object: &dyn Fn() -> String, range: &Range<u64>, size: u64) -> Result<()> {
    if range.start > range.end || range.end > size {
        return Err(Error::RangeOutOfBounds {
            object: object(),
            start: range.start,
            end: range.end,
            size,
        });
    }
    Ok(())
}

fn check_length(object: &dyn Fn() -> String, range: &Range<u64>, data: &Bytes) -> Result<()> {
    if data.len() as u64 != range.end - range.start {
        return Err(Error::ShortRead {
            object: object(),
            start: range.start,
            end: range.end,
            got: data.len() as u64,
        });
    }
    Ok(())
}

/// An object in a [`Storage`] bucket.
#[derive(Debug)]
pub struct StorageSource {
    storage: Storage,
    key: String,
    size: OnceLock<u64>,
}

impl StorageSource {
    /// The size is fetched with a HEAD on first use.
    pub fn new(storage: Storage, key: impl Into<String>) -> Self {
        StorageSource {
            storage,
            key: key.into(),
            size: OnceLock::new(),
        }
    }

    /// With the size already known (from a listing), saving the HEAD.
    pub fn with_size(storage: Storage, key: impl Into<String>, size: u64) -> Self {
        let source = Self::new(storage, key);
        source.size.set(size).expect("a fresh OnceLock is empty");
        source
    }

    pub fn key(&self) -> &str {
        &self.key
    }
}

impl RangeSource for StorageSource {
    fn size(&self) -> Result<u64> {
        if let Some(size) = self.size.get() {
            return Ok(*size);
        }
        let size = self.storage.head_blocking(&self.key)?.size;
        Ok(*self.size.get_or_init(|| size))
    }

    fn read_range(&self, range: Range<u64>) -> Result<Bytes> {
        let describe = || self.describe();
        check_range(&describe, &range, self.size()?)?;
        let data = self.storage.get_range_blocking(&self.key, range.clone())?;
        check_length(&describe, &range, &data)?;
        Ok(data)
    }

    fn describe(&self) -> String {
        format!(
            "object `{}` in {}",
            self.key,
            self.storage.location().describe()
        )
    }
}

/// A file on this machine, read with positioned reads (no shared cursor, so
/// one source can serve several readers).
#[derive(Debug)]
pub struct FileSource {
    path: PathBuf,
    file: std::fs::File,
    size: u64,
}

impl FileSource {
    pub fn open(path: impl AsRef<Path>) -> Result<Self> {
        let path = path.as_ref().to_path_buf();
        let io_error = |source| Error::Io {
            path: path.clone(),
            source,
        };
        let file = std::fs::File::open(&path).map_err(io_error)?;
        let size = file.metadata().map_err(io_error)?.len();
        Ok(FileSource { path, file, size })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

impl RangeSource for FileSource {
    fn size(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn read_range(&self, range: Range<u64>) -> Result<Bytes> {
        check_range(&|| self.describe(), &range, self.size)?;
        let mut buf = vec![0; (range.end - range.start) as usize];
        self.file
            .read_exact_at(&mut buf, range.start)
            .map_err(|source| Error::Io {
                path: self.path.clone(),
                source,
            })?;
        Ok(Bytes::from(buf))
    }

    fn describe(&self) -> String {
        format!("file `{}`", self.path.display())
    }
}

/// Bounded waits, as for storage: an unreachable server is an error in
/// seconds, not a hang.
fn http_client() -> &'static reqwest::Client {
    static CLIENT: OnceLock<reqwest::Client> = OnceLock::new();
    CLIENT.get_or_init(|| {
        quelea_storage::install_tls_provider();
        reqwest::Client::builder()
            .connect_timeout(Duration::from_secs(5))
            .timeout(Duration::from_secs(120))
            .build()
            .expect("the HTTP client builds")
    })
}

/// An object behind an `http(s)://` URL.
///
/// A server that advertises `Accept-Ranges: bytes` is read by range. Any other
/// server is read whole, once, and the body kept for later ranges.
#[derive(Debug)]
pub struct HttpSource {
    url: String,
    size: u64,
    accepts_ranges: bool,
    whole: OnceLock<Bytes>,
}

impl HttpSource {
    /// Asks the server (HEAD) for the size and whether it serves ranges. A
    /// server that gives no `Content-Length` is read whole here to learn it.
    pub fn probe(url: &str) -> Result<Self> {
        let http_error = |reason: String| Error::Http {
            operation: "HEAD",
            url: url.to_owned(),
            reason,
        };
        // The request is built inside the runtime: its timeout needs a timer.
        let response = io_runtime()
            .block_on(async { http_client().head(url).send().await })
            .map_err(|e| http_error(error_chain(&e)))?;
        if !response.status().is_success() {
            return Err(http_error(format!("status {}", response.status())));
        }
        let headers = response.headers();
        let accepts_ranges = headers
            .get(reqwest::header::ACCEPT_RANGES)
            .and_then(|v| v.to_str().ok())
            .is_some_and(|v| v.split(',').any(|unit| unit.trim() == "bytes"));
        let length = headers
            .get(reqwest::header::CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.trim().parse::<u64>().ok());
        match length {
            Some(size) => Ok(Self::with_size(url, size, accepts_ranges)),
            None => {
                let source = Self::with_size(url, 0, false);
                let body = source.fetch_whole()?;
                Ok(Self::with_size(url, body.len() as u64, false).with_body(body))
            }
        }
    }

    /// With the size and range support already known.
    pub fn with_size(url: impl Into<String>, size: u64, accepts_ranges: bool) -> Self {
        HttpSource {
            url: url.into(),
            size,
            accepts_ranges,
            whole: OnceLock::new(),
        }
    }

    fn with_body(self, body: Bytes) -> Self {
        self.whole.set(body).expect("a fresh OnceLock is empty");
        self
    }

    pub fn url(&self) -> &str {
        &self.url
    }

    /// Whether the server serves byte ranges, so the object can be split.
    pub fn accepts_ranges(&self) -> bool {
        self.accepts_ranges
    }

    fn fetch_whole(&self) -> Result<Bytes> {
        if let Some(body) = self.whole.get() {
            return Ok(body.clone());
        }
        let http_error = |reason: String| Error::Http {
            operation: "GET",
            url: self.url.clone(),
            reason,
        };
        let body = io_runtime()
            .block_on(async {
                let response = http_client().get(&self.url).send().await?;
                let status = response.status();
                if !status.is_success() {
                    return Ok(Err(format!("status {status}")));
                }
                response.bytes().await.map(Ok)
            })
            .map_err(|e| http_error(error_chain(&e)))?
            .map_err(http_error)?;
        Ok(self.whole.get_or_init(|| body).clone())
    }
}

impl RangeSource for HttpSource {
    fn size(&self) -> Result<u64> {
        Ok(self.size)
    }

    fn read_range(&self, range: Range<u64>) -> Result<Bytes> {
        let describe = || self.describe();
        check_range(&describe, &range, self.size)?;
        if range.is_empty() {
            return Ok(Bytes::new());
        }
        if !self.accepts_ranges || self.whole.get().is_some() {
            let body = self.fetch_whole()?;
            let slice = range.start as usize..(range.end as usize).min(body.len());
            let data = body.slice(slice);
            check_length(&describe, &range, &data)?;
            return Ok(data);
        }
        let http_error = |reason: String| Error::Http {
            operation: "ranged GET",
            url: self.url.clone(),
            reason,
        };
        let header = format!("bytes={}-{}", range.start, range.end - 1);
        let (status, body) = io_runtime()
            .block_on(async {
                let response = http_client()
                    .get(&self.url)
                    .header(reqwest::header::RANGE, header)
                    .send()
                    .await?;
                let status = response.status();
                response.bytes().await.map(|body| (status, body))
            })
            .map_err(|e| http_error(error_chain(&e)))?;
        let data = match status {
            reqwest::StatusCode::PARTIAL_CONTENT => body,
            // The server ignored the range and sent everything: keep it, so
            // the next ranges cost nothing.
            reqwest::StatusCode::OK => {
                let body = self.whole.get_or_init(|| body).clone();
                body.slice(range.start as usize..(range.end as usize).min(body.len()))
            }
            other => return Err(http_error(format!("status {other}"))),
        };
        check_length(&describe, &range, &data)?;
        Ok(data)
    }

    fn describe(&self) -> String {
        format!("URL `{}`", self.url)
    }
}

/// reqwest's top-level message is often just "error sending request"; the
/// cause (connection refused, timeout) is further down the chain.
fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}
