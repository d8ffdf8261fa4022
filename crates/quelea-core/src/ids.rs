//! Ids in the convention Lithops users know: executor `<session>-<n>`, jobs
//! `A000` (call_async), `M000` (map), `R000` (the reduce of a map), calls
//! `00000`, `00001`, ...

use std::fmt;
use std::str::FromStr;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::OnceLock;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// A six-hex-digit id shared by every executor of this process.
pub fn session_id() -> &'static str {
    static SESSION: OnceLock<String> = OnceLock::new();
    SESSION.get_or_init(|| {
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or_default();
        // Mix time and pid so two processes started in the same instant differ.
        let mixed = (nanos as u64) ^ ((std::process::id() as u64) << 20);
        let hashed = mixed.wrapping_mul(0x9E37_79B9_7F4A_7C15);
        format!("{:06x}", (hashed >> 40) & 0xff_ffff)
    })
}

/// `<session>-<n>`, unique per executor created by this process.
#[derive(Clone, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct ExecutorId(String);

impl ExecutorId {
    /// The next executor id of this process.
    pub fn next() -> Self {
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        ExecutorId(format!("{}-{n}", session_id()))
    }

    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl FromStr for ExecutorId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let ok = !s.is_empty()
            && s.len() <= 128
            && s.contains('-')
            && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-');
        if ok {
            Ok(ExecutorId(s.to_owned()))
        } else {
            Err(Error::InvalidId {
                what: "executor id",
                value: s.to_owned(),
                reason: "expected `<session>-<n>` of ASCII letters, digits and dashes",
            })
        }
    }
}

impl TryFrom<String> for ExecutorId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<ExecutorId> for String {
    fn from(id: ExecutorId) -> String {
        id.0
    }
}

impl fmt::Display for ExecutorId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What kind of job an id names; its letter leads the job id.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum JobKind {
    CallAsync,
    Map,
    Reduce,
}

impl JobKind {
    pub fn letter(self) -> char {
        match self {
            JobKind::CallAsync => 'A',
            JobKind::Map => 'M',
            JobKind::Reduce => 'R',
        }
    }
}

/// `A000`, `M001`, `R001`: a kind letter and the executor's job counter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub struct JobId {
    kind: JobKind,
    number: u32,
}

impl JobId {
    pub fn new(kind: JobKind, number: u32) -> Self {
        JobId { kind, number }
    }
    pub fn kind(self) -> JobKind {
        self.kind
    }
    pub fn number(self) -> u32 {
        self.number
    }
    /// The reduce job that belongs to this map job (`M003` → `R003`).
    pub fn reduce_of(self) -> JobId {
        JobId::new(JobKind::Reduce, self.number)
    }
}

impl fmt::Display for JobId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{:03}", self.kind.letter(), self.number)
    }
}

impl FromStr for JobId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        let bad = |reason| Error::InvalidId {
            what: "job id",
            value: s.to_owned(),
            reason,
        };
        let mut chars = s.chars();
        let kind = match chars.next() {
            Some('A') => JobKind::CallAsync,
            Some('M') => JobKind::Map,
            Some('R') => JobKind::Reduce,
            _ => return Err(bad("must start with A, M or R")),
        };
        let digits = chars.as_str();
        if digits.len() < 3 || !digits.chars().all(|c| c.is_ascii_digit()) {
            return Err(bad(
                "expected a letter and at least three digits, like `M000`",
            ));
        }
        let number = digits.parse().map_err(|_| bad("job number out of range"))?;
        Ok(JobId { kind, number })
    }
}

impl TryFrom<String> for JobId {
    type Error = Error;
    fn try_from(s: String) -> Result<Self> {
        s.parse()
    }
}

impl From<JobId> for String {
    fn from(id: JobId) -> String {
        id.to_string()
    }
}

/// The index of a call within its job, shown as five digits (`00042`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct CallId(pub u32);

impl CallId {
    pub fn index(self) -> usize {
        self.0 as usize
    }
}

impl fmt::Display for CallId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:05}", self.0)
    }
}

impl FromStr for CallId {
    type Err = Error;
    fn from_str(s: &str) -> Result<Self> {
        s.parse().map(CallId).map_err(|_| Error::InvalidId {
            what: "call id",
            value: s.to_owned(),
            reason: "expected a non-negative number like `00042`",
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_format_like_lithops() {
        assert_eq!(JobId::new(JobKind::Map, 0).to_string(), "M000");
        assert_eq!(JobId::new(JobKind::CallAsync, 12).to_string(), "A012");
        assert_eq!(JobId::new(JobKind::Map, 7).reduce_of().to_string(), "R007");
        assert_eq!(CallId(42).to_string(), "00042");
        let exec = ExecutorId::next();
        assert!(exec.as_str().starts_with(session_id()));
        assert_ne!(exec, ExecutorId::next());
    }

    #[test]
    fn ids_parse_and_reject() {
        assert_eq!(
            "M123".parse::<JobId>().unwrap(),
            JobId::new(JobKind::Map, 123)
        );
        assert_eq!("R1000".parse::<JobId>().unwrap().number(), 1000);
        let err = "X000".parse::<JobId>().unwrap_err().to_string();
        assert!(err.contains("X000") && err.contains("A, M or R"), "{err}");
        assert!("M0".parse::<JobId>().is_err());
        assert!("abc".parse::<ExecutorId>().is_err());
        assert!("ab/c-1".parse::<ExecutorId>().is_err());
        assert_eq!("00042".parse::<CallId>().unwrap(), CallId(42));
    }
}
