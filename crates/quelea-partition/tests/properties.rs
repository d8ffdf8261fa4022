//! Property tests of the line rule: random texts, separators, chunkings,
//! block sizes and read sizes, checked against a direct reading of the rule.

use std::io::Read;
use std::num::NonZeroUsize;
use std::ops::Range;

use bytes::Bytes;
use proptest::prelude::*;
use quelea_partition::{plan_chunks, ChunkReader, ChunkSpec, RangeSource, Result};

struct InMemory(Bytes);

impl RangeSource for InMemory {
    fn size(&self) -> Result<u64> {
        Ok(self.0.len() as u64)
    }
    fn read_range(&self, range: Range<u64>) -> Result<Bytes> {
        Ok(self.0.slice(range.start as usize..range.end as usize))
    }
    fn describe(&self) -> String {
        "in-memory text".into()
    }
}

fn is_line_start(text: &[u8], newline: &[u8], p: usize) -> bool {
    p == 0 || (p >= newline.len() && &text[p - newline.len()..p] == newline)
}

/// `L(x)` straight from its definition.
fn next_line_start(text: &[u8], newline: &[u8], x: usize) -> usize {
    (x..=text.len())
        .find(|&p| is_line_start(text, newline, p))
        .unwrap_or(text.len())
}

/// Reads a chunk with `read` calls of the given sizes, in turn.
fn read_in_pieces(
    text: &Bytes,
    range: Range<u64>,
    newline: Option<&[u8]>,
    block: usize,
    pieces: &[usize],
) -> Vec<u8> {
    let mut reader = ChunkReader::new(InMemory(text.clone()), range, newline)
        .unwrap()
        .with_block_size(NonZeroUsize::new(block).unwrap());
    let mut out = Vec::new();
    let mut buf = vec![0u8; pieces.iter().copied().max().unwrap_or(1)];
    for &piece in pieces.iter().cycle() {
        let n = reader.read(&mut buf[..piece]).unwrap();
        if n == 0 {
            break;
        }
        out.extend_from_slice(&buf[..n]);
    }
    out
}

fn newline_strategy() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        3 => Just(b"\n".to_vec()),
        2 => Just(b"\r\n".to_vec()),
        // Overlapping occurrences ("aaa" holds two) and a three-byte one.
        1 => Just(b"aa".to_vec()),
        1 => Just(b"ab\n".to_vec()),
    ]
}

fn text_strategy() -> impl Strategy<Value = Vec<u8>> {
    let soup = prop::collection::vec(prop::sample::select(b"ab\r\n".to_vec()), 0..160);
    let newlines_only = prop::collection::vec(Just(b'\n'), 0..12);
    // Lines much longer than the chunks and blocks, CRLF or LF, with or
    // without a final newline.
    let long_lines = (
        prop::collection::vec((0usize..400, any::<bool>()), 0..4),
        any::<bool>(),
    )
        .prop_map(|(lines, final_newline)| {
            let mut text = Vec::new();
            let count = lines.len();
            for (i, (len, crlf)) in lines.into_iter().enumerate() {
                text.extend(std::iter::repeat_n(b'x', len));
                if i + 1 < count || final_newline {
                    text.extend_from_slice(if crlf { b"\r\n" } else { b"\n" });
                }
            }
            text
        });
    prop_oneof![3 => soup, 1 => newlines_only, 2 => long_lines]
}

fn spec_strategy() -> impl Strategy<Value = ChunkSpec> {
    prop_oneof![
        (1u64..40).prop_map(ChunkSpec::Size),
        (1u32..20).prop_map(ChunkSpec::Number),
        Just(ChunkSpec::Whole),
    ]
}

fn block_strategy() -> impl Strategy<Value = usize> {
    prop_oneof![3 => 1usize..8, 1 => 8usize..300, 1 => Just(1 << 20)]
}

fn pieces_strategy() -> impl Strategy<Value = Vec<usize>> {
    prop::collection::vec(1usize..9, 1..4)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn chunks_follow_the_line_rule(
        text in text_strategy(),
        newline in newline_strategy(),
        spec in spec_strategy(),
        block in block_strategy(),
        pieces in pieces_strategy(),
    ) {
        let bytes = Bytes::from(text.clone());
        let plan = plan_chunks(text.len() as u64, spec).unwrap();
        let chunks: Vec<Vec<u8>> = plan
            .iter()
            .map(|c| read_in_pieces(&bytes, c.range(), Some(&newline), block, &pieces))
            .collect();

        // (a) the chunks put back together are the text.
        prop_assert_eq!(chunks.concat(), text.clone());

        let mut offset = 0;
        for (chunk, plan) in chunks.iter().zip(&plan) {
            // Each chunk is exactly [L(s), L(e)).
            let from = next_line_start(&text, &newline, plan.start as usize);
            let to = next_line_start(&text, &newline, plan.end as usize);
            prop_assert_eq!(offset, from, "chunk {:?}", plan);
            prop_assert_eq!(chunk.len(), to - from, "chunk {:?}", plan);
            // (b) a non-empty chunk starts at a line start.
            if !chunk.is_empty() {
                prop_assert!(is_line_start(&text, &newline, offset), "chunk {:?}", plan);
            }
            offset += chunk.len();
        }

        // (c) every line is whole in the chunk that holds its first byte.
        let starts: Vec<usize> = (0..text.len())
            .filter(|&p| is_line_start(&text, &newline, p))
            .collect();
        let mut delivered = Vec::new();
        let mut offset = 0;
        for chunk in &chunks {
            delivered.push(offset..offset + chunk.len());
            offset += chunk.len();
        }
        for (i, &line_start) in starts.iter().enumerate() {
            let line_end = starts.get(i + 1).copied().unwrap_or(text.len());
            let holder = plan
                .iter()
                .position(|c| (c.start as usize..c.end as usize).contains(&line_start))
                .unwrap();
            let range = &delivered[holder];
            prop_assert!(
                range.start <= line_start && line_end <= range.end,
                "line {}..{} not within chunk {} delivering {:?}",
                line_start, line_end, holder, range
            );
        }
    }

    #[test]
    fn without_a_newline_chunks_are_exact_ranges(
        text in text_strategy(),
        spec in spec_strategy(),
        block in block_strategy(),
        pieces in pieces_strategy(),
    ) {
        let bytes = Bytes::from(text.clone());
        let plan = plan_chunks(text.len() as u64, spec).unwrap();
        for chunk in &plan {
            // (d) exactly [s, e).
            let got = read_in_pieces(&bytes, chunk.range(), None, block, &pieces);
            prop_assert_eq!(&got[..], &text[chunk.start as usize..chunk.end as usize]);
        }
    }

    #[test]
    fn small_reads_match_one_read_to_end(
        text in text_strategy(),
        newline in newline_strategy(),
        start in 0usize..200,
        len in 0usize..200,
        block in block_strategy(),
        pieces in pieces_strategy(),
    ) {
        let bytes = Bytes::from(text.clone());
        let start = start.min(text.len()) as u64;
        let end = (start + len as u64).min(text.len() as u64);
        let mut whole = Vec::new();
        ChunkReader::new(InMemory(bytes.clone()), start..end, Some(&newline))
            .unwrap()
            .read_to_end(&mut whole)
            .unwrap();
        let pieced = read_in_pieces(&bytes, start..end, Some(&newline), block, &pieces);
        prop_assert_eq!(pieced, whole);
    }

    #[test]
    fn plans_cover_the_object_without_empty_chunks(
        size in 0u64..5000,
        spec in spec_strategy(),
    ) {
        let plan = plan_chunks(size, spec).unwrap();
        prop_assert_eq!(plan[0].start, 0);
        prop_assert_eq!(plan.last().unwrap().end, size);
        for (i, chunk) in plan.iter().enumerate() {
            prop_assert_eq!(chunk.part as usize, i);
            prop_assert_eq!(chunk.total_parts as usize, plan.len());
            prop_assert_eq!(chunk.chunk_size, chunk.end - chunk.start);
            if size > 0 {
                prop_assert!(chunk.chunk_size > 0);
            }
            if i > 0 {
                prop_assert_eq!(chunk.start, plan[i - 1].end);
            }
        }
        match spec {
            ChunkSpec::Number(n) => {
                prop_assert_eq!(plan.len() as u64, u64::from(n).min(size).max(1));
            }
            ChunkSpec::Size(s) if size > 0 => {
                prop_assert_eq!(plan.len() as u64, size.div_ceil(s));
            }
            _ => {}
        }
    }
}
