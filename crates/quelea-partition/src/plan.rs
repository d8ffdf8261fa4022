//! Chunk planning: nominal byte ranges only; line alignment happens when a
//! chunk is read.

use std::ops::Range;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How to cut an object into chunks.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ChunkSpec {
    /// Chunks of this many bytes; the last one holds the rest.
    Size(u64),
    /// This many chunks of nearly equal size (sizes differ by at most one
    /// byte), or one per byte when the object has fewer bytes than that.
    Number(u32),
    /// The whole object as one chunk.
    Whole,
}

/// One chunk's nominal byte range `[start, end)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChunkPlan {
    /// 0-based index of this chunk within its object.
    pub part: u32,
    pub total_parts: u32,
    pub start: u64,
    pub end: u64,
    /// `end - start`.
    pub chunk_size: u64,
}

impl ChunkPlan {
    pub fn range(&self) -> Range<u64> {
        self.start..self.end
    }
}

/// The chunks of an object of `object_size` bytes.
///
/// A zero-byte object is one empty chunk, whatever the spec. A non-empty
/// object never gets an empty chunk.
pub fn plan_chunks(object_size: u64, spec: ChunkSpec) -> Result<Vec<ChunkPlan>> {
    let boundaries = match spec {
        ChunkSpec::Size(0) => {
            return Err(Error::InvalidChunking {
                argument: "chunk_size",
                value: 0,
            })
        }
        ChunkSpec::Number(0) => {
            return Err(Error::InvalidChunking {
                argument: "chunk_number",
                value: 0,
            })
        }
        _ if object_size == 0 => vec![0, 0],
        ChunkSpec::Whole => vec![0, object_size],
        ChunkSpec::Size(chunk_size) => {
            let parts = object_size.div_ceil(chunk_size);
            if parts > u64::from(u32::MAX) {
                return Err(Error::TooManyChunks {
                    object_size,
                    chunk_size,
                    max: u64::from(u32::MAX),
                });
            }
            (0..parts)
                .map(|i| i * chunk_size)
                .chain([object_size])
                .collect()
        }
        ChunkSpec::Number(number) => {
            let parts = u64::from(number).min(object_size);
            // Balanced cut: boundary i is floor(i * size / parts), computed
            // in u128 so huge objects cannot overflow.
            (0..=parts)
                .map(|i| (u128::from(i) * u128::from(object_size) / u128::from(parts)) as u64)
                .collect()
        }
    };
    let total_parts = (boundaries.len() - 1) as u32;
    Ok(boundaries
        .windows(2)
        .enumerate()
        .map(|(part, pair)| ChunkPlan {
            part: part as u32,
            total_parts,
            start: pair[0],
            end: pair[1],
            chunk_size: pair[1] - pair[0],
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ranges(size: u64, spec: ChunkSpec) -> Vec<(u64, u64)> {
        plan_chunks(size, spec)
            .unwrap()
            .iter()
            .map(|c| (c.start, c.end))
            .collect()
    }

    #[test]
    fn by_size_the_last_chunk_takes_the_rest() {
        assert_eq!(
            ranges(10, ChunkSpec::Size(4)),
            vec![(0, 4), (4, 8), (8, 10)]
        );
        assert_eq!(ranges(8, ChunkSpec::Size(4)), vec![(0, 4), (4, 8)]);
        assert_eq!(ranges(3, ChunkSpec::Size(100)), vec![(0, 3)]);
        assert_eq!(ranges(1, ChunkSpec::Size(1)), vec![(0, 1)]);
        let plan = plan_chunks(10, ChunkSpec::Size(4)).unwrap();
        assert!(plan.iter().all(|c| c.total_parts == 3));
        assert_eq!(
            plan.iter().map(|c| c.part).collect::<Vec<_>>(),
            vec![0, 1, 2]
        );
        assert_eq!(
            plan.iter().map(|c| c.chunk_size).collect::<Vec<_>>(),
            vec![4, 4, 2]
        );
    }

    #[test]
    fn by_number_is_balanced_and_never_empty() {
        assert_eq!(
            ranges(10, ChunkSpec::Number(3)),
            vec![(0, 3), (3, 6), (6, 10)]
        );
        assert_eq!(
            ranges(10, ChunkSpec::Number(4)),
            vec![(0, 2), (2, 5), (5, 7), (7, 10)]
        );
        assert_eq!(
            ranges(3, ChunkSpec::Number(10)),
            vec![(0, 1), (1, 2), (2, 3)]
        );
        assert_eq!(ranges(1, ChunkSpec::Number(1)), vec![(0, 1)]);
        let big = u64::MAX - 1;
        let plan = plan_chunks(big, ChunkSpec::Number(7)).unwrap();
        assert_eq!(plan.len(), 7);
        assert_eq!(plan.last().unwrap().end, big);
    }

    #[test]
    fn whole_is_one_chunk() {
        assert_eq!(ranges(12345, ChunkSpec::Whole), vec![(0, 12345)]);
    }

    #[test]
    fn a_zero_byte_object_is_one_empty_chunk() {
        for spec in [ChunkSpec::Size(5), ChunkSpec::Number(4), ChunkSpec::Whole] {
            let plan = plan_chunks(0, spec).unwrap();
            assert_eq!(
                plan,
                vec![ChunkPlan {
                    part: 0,
                    total_parts: 1,
                    start: 0,
                    end: 0,
                    chunk_size: 0
                }],
                "{spec:?}"
            );
        }
    }

    #[test]
    fn zero_arguments_are_errors_naming_the_argument() {
        let err = plan_chunks(10, ChunkSpec::Size(0)).unwrap_err().to_string();
        assert!(err.contains("chunk_size"), "{err}");
        let err = plan_chunks(10, ChunkSpec::Number(0))
            .unwrap_err()
            .to_string();
        assert!(err.contains("chunk_number"), "{err}");
        // Even for an empty object: the argument is wrong whatever the data.
        assert!(plan_chunks(0, ChunkSpec::Size(0)).is_err());
    }

    #[test]
    fn too_many_chunks_is_an_error() {
        let err = plan_chunks(u64::MAX, ChunkSpec::Size(1))
            .unwrap_err()
            .to_string();
        assert!(err.contains("chunk_size"), "{err}");
    }
}
