//! Inputs that name data: the client side of the data partitioner.
//!
//! [`partition`] expands input names (`s3://bucket/prefix/`, globs, local
//! paths, URLs) into [`ChunkObject`]s, one per call. A chunk object is small
//! and serializable: it travels to the runner as the call's input, and the
//! function reads its bytes with [`ChunkObject::data_stream`], which streams
//! the chunk (every line exactly once, in the chunk that holds its first byte).

use std::ops::Range;
use std::sync::OnceLock;

use bytes::Bytes;
use quelea_core::config::{Config, ConfigBuilder};
use quelea_partition::{ChunkReader, ChunkSpec, ObjectKind, RangeSource, StorageResolver};
use quelea_worker::runtime::RUNNER_CONFIG_ENV;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

pub use quelea_partition::{ChunkSpec as Chunking, ObjectKind as ObjectLocation};

/// How inputs that name data are cut into calls.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ObjOptions {
    pub chunking: ChunkSpec,
    /// Line separator; `None` cuts exact byte ranges.
    pub newline: Option<Vec<u8>>,
    /// Hand every chunk the object's first line (`header_line`), and leave it
    /// out of the first chunk's data, so each chunk holds rows only.
    pub header: bool,
}

impl Default for ObjOptions {
    fn default() -> Self {
        ObjOptions {
            chunking: ChunkSpec::Whole,
            newline: Some(b"\n".to_vec()),
            header: false,
        }
    }
}

/// One chunk of one object: what a function with an `obj` parameter gets.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ChunkObject {
    pub location: ObjectKind,
    /// Which input object this chunk belongs to (in input order).
    pub object_index: u32,
    /// 0-based chunk number within the object.
    pub part: u32,
    pub total_parts: u32,
    /// Nominal byte range `[start, end)`; the delivered bytes move both ends
    /// forward to line starts.
    pub start: u64,
    pub end: u64,
    pub object_size: u64,
    pub newline: Option<Vec<u8>>,
    pub header: bool,
}

impl ChunkObject {
    /// The bucket (storage), directory (local file) or host-less URL base.
    pub fn bucket(&self) -> String {
        match &self.location {
            ObjectKind::Storage { bucket, .. } => bucket.clone(),
            ObjectKind::Local { path } => path
                .parent()
                .map(|p| p.display().to_string())
                .unwrap_or_default(),
            ObjectKind::Http { url } => url
                .rsplit_once('/')
                .map(|(base, _)| base.to_owned())
                .unwrap_or_default(),
        }
    }

    /// The key (storage), file name (local file) or URL.
    pub fn key(&self) -> String {
        match &self.location {
            ObjectKind::Storage { key, .. } => key.clone(),
            ObjectKind::Local { path } => path
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .unwrap_or_default(),
            ObjectKind::Http { url } => url.clone(),
        }
    }

    /// Nominal size of the chunk in bytes.
    pub fn chunk_size(&self) -> u64 {
        self.end - self.start
    }

    /// The nominal range as Lithops gives it: inclusive `(first, last)`.
    pub fn data_byte_range(&self) -> (u64, u64) {
        (self.start, self.end.saturating_sub(1).max(self.start))
    }

    fn source(&self) -> Result<Box<dyn RangeSource>> {
        let object = quelea_partition::ObjectRef {
            kind: self.location.clone(),
            size: self.object_size,
            splittable: true,
        };
        object.open(runner_storages()?).map_err(partition_error)
    }

    /// The object's first line (with its newline), when `header` was asked for.
    pub fn header_line(&self) -> Result<Option<Bytes>> {
        if !self.header {
            return Ok(None);
        }
        let newline = self.newline.as_deref().unwrap_or(b"\n");
        let source = self.source()?;
        quelea_partition::header_line(&*source, newline)
            .map(Some)
            .map_err(partition_error)
    }

    /// A streaming reader of this chunk's lines.
    pub fn data_stream(&self) -> Result<ChunkReader<Box<dyn RangeSource>>> {
        let source = self.source()?;
        let mut range: Range<u64> = self.start..self.end;
        if self.header && self.part == 0 {
            let newline = self.newline.as_deref().unwrap_or(b"\n");
            let header =
                quelea_partition::header_line(&*source, newline).map_err(partition_error)?;
            range.start = range.start.max(header.len() as u64).min(self.object_size);
            range.end = range.end.max(range.start);
        }
        // Object stores charge per request (SeaweedFS here: ~19 MiB/s with
        // 1 MiB ranges, ~135 MiB/s with 64 MiB): read in blocks as large as
        // the chunk, between 1 and 16 MiB.
        let block = (range.end - range.start + (64 << 10)).clamp(1 << 20, 16 << 20) as usize;
        let block = std::num::NonZeroUsize::new(block).expect("clamped to at least 1 MiB");
        Ok(ChunkReader::new(source, range, self.newline.as_deref())
            .map_err(partition_error)?
            .with_block_size(block))
    }
}

fn partition_error(e: quelea_partition::Error) -> Error {
    Error::Partition(Box::new(e))
}

/// The storages runners read chunks from: the executor's config when it
/// started this runner, else this process's own config.
fn runner_storages() -> Result<&'static StorageResolver> {
    static RESOLVER: OnceLock<std::result::Result<StorageResolver, String>> = OnceLock::new();
    RESOLVER
        .get_or_init(|| {
            let config = runner_config().map_err(|e| e.to_string())?;
            StorageResolver::from_config(&config).map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| Error::InvalidArgument {
            name: "obj",
            message: format!("cannot open storage to read the chunk: {e}"),
        })
}

/// The config a runner works with (see [`RUNNER_CONFIG_ENV`]).
pub fn runner_config() -> Result<Config> {
    match std::env::var(RUNNER_CONFIG_ENV) {
        Ok(text) => {
            let value: serde_json::Value =
                serde_json::from_str(&text).map_err(|e| Error::InvalidArgument {
                    name: RUNNER_CONFIG_ENV,
                    message: e.to_string(),
                })?;
            Ok(ConfigBuilder::new().no_file().overrides(value).build()?)
        }
        Err(_) => Ok(Config::load()?),
    }
}

/// Expands input names into chunks, in input order. Also returns how many
/// chunks each input object has (for one reducer per object).
pub fn partition(
    config: &Config,
    inputs: &[String],
    options: &ObjOptions,
) -> Result<(Vec<ChunkObject>, Vec<u32>)> {
    if options.newline.as_ref().is_some_and(Vec::is_empty) {
        return Err(Error::InvalidArgument {
            name: "obj_newline",
            message: "must not be empty (use None for exact byte ranges)".into(),
        });
    }
    let resolver = StorageResolver::from_config(config).map_err(partition_error)?;
    let mut chunks = Vec::new();
    let mut parts_per_object = Vec::new();
    for input in inputs {
        for object in quelea_partition::discover(input, &resolver).map_err(partition_error)? {
            let object_index = parts_per_object.len() as u32;
            let plans = object.plan(options.chunking).map_err(partition_error)?;
            parts_per_object.push(plans.len() as u32);
            for plan in plans {
                chunks.push(ChunkObject {
                    location: object.kind.clone(),
                    object_index,
                    part: plan.part,
                    total_parts: plan.total_parts,
                    start: plan.start,
                    end: plan.end,
                    object_size: object.size,
                    newline: options.newline.clone(),
                    header: options.header,
                });
            }
        }
    }
    Ok((chunks, parts_per_object))
}
