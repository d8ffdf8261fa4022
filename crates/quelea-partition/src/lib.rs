//! quelea's data partitioner: what an input names, how an object is cut into
//! chunks, and how a chunk is read so that no line is split or repeated.
//!
//! - [`discover`] turns an input string (`s3://bucket/prefix/`, a glob, a local
//!   directory, an `https://` URL) into [`ObjectRef`]s with their sizes.
//! - [`plan_chunks`] cuts an object's size into nominal byte ranges
//!   ([`ChunkPlan`]) by size, by count, or not at all ([`ChunkSpec`]).
//! - [`ChunkReader`] streams one chunk from a [`RangeSource`], moving both ends
//!   of the nominal range forward to the next line start.
//!
//! # The line rule
//!
//! A position `p` is a *line start* when `p == 0` or the `newline.len()` bytes
//! before `p` are the newline. `L(x)` is the first line start at or after `x`,
//! or the object's size when there is none. A chunk with nominal range
//! `[s, e)` delivers the bytes `[L(s), L(e))`. So each line belongs to the chunk
//! holding its first byte, a line longer than a chunk leaves the chunks after
//! it empty, and the chunks of an object concatenate to the object exactly.
//! Without a newline (`None`) a chunk delivers exactly `[s, e)`.

mod discover;
mod error;
mod plan;
mod reader;
mod source;

pub use discover::{discover, ObjectKind, ObjectRef, StorageResolver};
pub use error::{Error, Result};
pub use plan::{plan_chunks, ChunkPlan, ChunkSpec};
pub use reader::{header_line, ChunkReader, DEFAULT_BLOCK_SIZE, DEFAULT_NEWLINE};
pub use source::{FileSource, HttpSource, RangeSource, StorageSource};
