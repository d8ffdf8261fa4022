//! Streaming a chunk's bytes under the line rule (see the crate docs).

use std::io::{self, BufRead, Read};
use std::num::NonZeroUsize;
use std::ops::Range;

use bytes::Bytes;
use memchr::memmem;

use crate::error::{Error, Result};
use crate::source::RangeSource;

/// Bytes fetched per ranged read.
pub const DEFAULT_BLOCK_SIZE: NonZeroUsize = match NonZeroUsize::new(1 << 20) {
    Some(size) => size,
    None => unreachable!(),
};

pub const DEFAULT_NEWLINE: &[u8] = b"\n";

/// The first read past the chunk's end, where only the rest of one line is
/// wanted; each further read there doubles, up to the block size.
const LINE_PROBE: usize = 64 << 10;

/// Reads one chunk of an object: with a newline, the bytes `[L(s), L(e))` of
/// the nominal range `[s, e)` (see the crate docs); without one, exactly
/// `[s, e)`.
///
/// Bytes are fetched lazily, `block_size` at a time, so a chunk is never held
/// in memory whole unless the caller collects it. Past `e` the reader keeps
/// fetching blocks until the line that straddles `e` ends, however long it is.
pub struct ChunkReader<S> {
    source: S,
    nominal: Range<u64>,
    object_size: u64,
    newline: Option<Vec<u8>>,
    block_size: usize,
    started: bool,
    /// Nothing more will be fetched; `pending` may still hold bytes.
    finished: bool,
    /// Absolute offset of the next byte to fetch.
    pos: u64,
    /// The next read size past the nominal end.
    probe: usize,
    /// The (up to) `newline.len()` bytes just before `pos`, so a newline that
    /// straddles two blocks is still found.
    tail: Vec<u8>,
    /// Fetched bytes of the chunk not yet handed to the caller.
    pending: Bytes,
}

impl<S: RangeSource> ChunkReader<S> {
    /// A reader of the chunk with nominal byte range `nominal`. `newline` is
    /// the line separator (usually [`DEFAULT_NEWLINE`]); `None` reads exact
    /// byte ranges.
    pub fn new(source: S, nominal: Range<u64>, newline: Option<&[u8]>) -> Result<Self> {
        if newline.is_some_and(<[u8]>::is_empty) {
            return Err(Error::EmptyNewline);
        }
        let object_size = source.size()?;
        if nominal.start > nominal.end || nominal.end > object_size {
            return Err(Error::RangeOutOfBounds {
                object: source.describe(),
                start: nominal.start,
                end: nominal.end,
                size: object_size,
            });
        }
        Ok(ChunkReader {
            source,
            nominal,
            object_size,
            newline: newline.map(<[u8]>::to_vec),
            block_size: DEFAULT_BLOCK_SIZE.get(),
            started: false,
            finished: false,
            pos: 0,
            probe: LINE_PROBE,
            tail: Vec::new(),
            pending: Bytes::new(),
        })
    }

    /// Bytes per ranged read (default [`DEFAULT_BLOCK_SIZE`]).
    pub fn with_block_size(mut self, block_size: NonZeroUsize) -> Self {
        self.block_size = block_size.get();
        self
    }

    /// The rest of the chunk in one buffer.
    pub fn read_all(mut self) -> Result<Bytes> {
        let mut parts = Vec::new();
        loop {
            self.fill()?;
            if self.pending.is_empty() {
                break;
            }
            parts.push(std::mem::take(&mut self.pending));
        }
        Ok(match parts.len() {
            0 => Bytes::new(),
            1 => parts.pop().expect("one part"),
            _ => Bytes::from(parts.concat()),
        })
    }

    fn fetch(&self, from: u64, limit: u64) -> Result<Bytes> {
        let to = from.saturating_add(self.block_size as u64).min(limit);
        self.source.read_range(from..to)
    }

    /// Fetches until `pending` holds bytes or the chunk is done.
    fn fill(&mut self) -> Result<()> {
        while self.pending.is_empty() && !self.finished {
            if !self.started {
                self.started = true;
                self.start()?;
            } else {
                self.step()?;
            }
        }
        Ok(())
    }

    /// Moves to `L(s)`, discarding the bytes before it: they belong to the
    /// previous chunk.
    fn start(&mut self) -> Result<()> {
        let Range { start, end } = self.nominal.clone();
        let Some(newline) = self.newline.clone() else {
            self.pos = start;
            self.finished = start >= end;
            return Ok(());
        };
        if start == 0 {
            self.pos = 0;
            self.finished = end == 0;
            return Ok(());
        }
        let k = newline.len();
        let finder = memmem::Finder::new(&newline);
        // Search from k bytes before `start`: a newline ending at `start`
        // makes `start` itself a line start.
        let mut window_start = start - start.min(k as u64);
        let mut window: Vec<u8> = Vec::new();
        let mut fetch_from = window_start;
        while fetch_from < self.object_size {
            let block = self.fetch(fetch_from, self.object_size)?;
            let fetch_end = fetch_from + block.len() as u64;
            window.extend_from_slice(&block);
            if let Some(i) = finder.find(&window) {
                let line_start = window_start + (i + k) as u64;
                if line_start >= end {
                    // The line holding `start` runs past `end`: an empty
                    // chunk, whose bytes the previous chunk delivers.
                    self.finished = true;
                    return Ok(());
                }
                self.pos = line_start;
                self.tail = newline;
                // Bytes of this block from the line start on are the chunk's.
                let leftover = block.slice((line_start - fetch_from) as usize..);
                return self.accept(leftover);
            }
            // Keep k-1 bytes: a newline may start in them and end in the
            // next block.
            let keep = (k - 1).min(window.len());
            window.drain(..window.len() - keep);
            window_start = fetch_end - keep as u64;
            fetch_from = fetch_end;
        }
        // No line starts at or after `start`: the chunk is empty.
        self.finished = true;
        Ok(())
    }

    fn step(&mut self) -> Result<()> {
        if self.newline.is_none() {
            let data = self.fetch(self.pos, self.nominal.end)?;
            self.pos += data.len() as u64;
            self.finished = self.pos >= self.nominal.end;
            self.pending = data;
            return Ok(());
        }
        if self.pos >= self.object_size {
            self.finished = true;
            return Ok(());
        }
        let end = self.nominal.end;
        let data = if self.pos < end {
            // Blocks stop a little past `end`: the last line usually ends there.
            let limit = end.saturating_add(LINE_PROBE as u64);
            self.fetch(self.pos, limit.min(self.object_size))?
        } else {
            // Past `end` only the line that straddles it is left: small reads
            // first (a whole block here would be mostly wasted), then larger.
            let size = self.probe.min(self.block_size);
            self.probe = size.saturating_mul(2);
            let to = self.pos.saturating_add(size as u64);
            self.source.read_range(self.pos..to.min(self.object_size))?
        };
        self.accept(data)
    }

    /// Takes `data` (the bytes at `pos`) into `pending`, up to `L(e)`.
    fn accept(&mut self, data: Bytes) -> Result<()> {
        let newline = self.newline.as_deref().expect("line mode");
        let end = self.nominal.end;
        let data_end = self.pos + data.len() as u64;
        if data_end > end {
            if let Some(cut) = self.find_line_end(newline, &data) {
                debug_assert!(cut >= self.pos && cut <= data_end);
                self.pending = data.slice(..(cut - self.pos) as usize);
                self.pos = cut;
                self.finished = true;
                return Ok(());
            }
        }
        remember_tail(&mut self.tail, &data, newline.len());
        self.pos = data_end;
        self.finished = self.pos >= self.object_size;
        self.pending = data;
        Ok(())
    }

    /// `L(e)` if it lies within `tail` + `data`: the end of the first newline
    /// that ends at or after `e`.
    fn find_line_end(&self, newline: &[u8], data: &[u8]) -> Option<u64> {
        let k = newline.len();
        // A newline starting at or after `threshold` ends at or after `e`.
        let threshold = self.nominal.end.saturating_sub(k as u64);
        // Newlines that start in `tail` (before `pos`) and end in `data`.
        let mut boundary = self.tail.clone();
        boundary.extend_from_slice(&data[..(k - 1).min(data.len())]);
        let boundary_start = self.pos - self.tail.len() as u64;
        let from = (threshold.saturating_sub(boundary_start) as usize).min(boundary.len());
        if let Some(i) = memmem::find(&boundary[from..], newline) {
            return Some(boundary_start + (from + i + k) as u64);
        }
        let from = (threshold.saturating_sub(self.pos) as usize).min(data.len());
        memmem::find(&data[from..], newline).map(|i| self.pos + (from + i + k) as u64)
    }
}

fn remember_tail(tail: &mut Vec<u8>, data: &[u8], k: usize) {
    if data.len() >= k {
        tail.clear();
        tail.extend_from_slice(&data[data.len() - k..]);
    } else {
        tail.extend_from_slice(data);
        let excess = tail.len().saturating_sub(k);
        tail.drain(..excess);
    }
}

impl<S: RangeSource> Read for ChunkReader<S> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let available = self.fill_buf()?;
        let n = available.len().min(buf.len());
        buf[..n].copy_from_slice(&available[..n]);
        self.consume(n);
        Ok(n)
    }
}

impl<S: RangeSource> BufRead for ChunkReader<S> {
    fn fill_buf(&mut self) -> io::Result<&[u8]> {
        self.fill().map_err(io::Error::other)?;
        Ok(&self.pending)
    }

    fn consume(&mut self, amount: usize) {
        let _ = self.pending.split_to(amount.min(self.pending.len()));
    }
}

/// The object's first line, with its newline (empty for an empty object): the
/// header of a CSV file, for chunks other than the first.
pub fn header_line(source: &dyn RangeSource, newline: &[u8]) -> Result<Bytes> {
    let size = source.size()?;
    // The first line is exactly what the chunk [0, 1) delivers: [L(0), L(1)).
    ChunkReader::new(source, 0..size.min(1), Some(newline))?.read_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    /// Bytes in memory, counting the bytes read, to check laziness.
    struct Counted {
        data: Bytes,
        bytes_read: AtomicUsize,
    }

    impl Counted {
        fn new(data: &[u8]) -> Self {
            Counted {
                data: Bytes::copy_from_slice(data),
                bytes_read: AtomicUsize::new(0),
            }
        }
    }

    impl RangeSource for Counted {
        fn size(&self) -> Result<u64> {
            Ok(self.data.len() as u64)
        }
        fn read_range(&self, range: Range<u64>) -> Result<Bytes> {
            self.bytes_read
                .fetch_add((range.end - range.start) as usize, Ordering::Relaxed);
            Ok(self.data.slice(range.start as usize..range.end as usize))
        }
        fn describe(&self) -> String {
            "test bytes".into()
        }
    }

    fn chunk(text: &[u8], range: Range<u64>, newline: Option<&[u8]>, block: usize) -> Vec<u8> {
        ChunkReader::new(Counted::new(text), range, newline)
            .unwrap()
            .with_block_size(NonZeroUsize::new(block).unwrap())
            .read_all()
            .unwrap()
            .to_vec()
    }

    #[test]
    fn chunks_move_to_line_starts() {
        let text = b"aaa\nbbb\nccc\n";
        for block in [1, 2, 3, 5, 100] {
            let nl = Some(&b"\n"[..]);
            assert_eq!(chunk(text, 0..2, nl, block), b"aaa\n", "block {block}");
            assert_eq!(chunk(text, 2..6, nl, block), b"bbb\n", "block {block}");
            assert_eq!(chunk(text, 6..12, nl, block), b"ccc\n", "block {block}");
            // Starting right after a newline: that position is a line start.
            assert_eq!(chunk(text, 4..5, nl, block), b"bbb\n", "block {block}");
            assert_eq!(chunk(text, 3..4, nl, block), b"", "block {block}");
        }
    }

    #[test]
    fn a_line_longer_than_chunks_empties_the_chunks_inside_it() {
        let text = b"x\nyyyyyyyyyyyyyyyyyyyy\nz";
        let nl = Some(&b"\n"[..]);
        assert_eq!(chunk(text, 0..3, nl, 4), b"x\nyyyyyyyyyyyyyyyyyyyy\n");
        assert_eq!(chunk(text, 3..6, nl, 4), b"");
        assert_eq!(chunk(text, 6..20, nl, 4), b"");
        assert_eq!(chunk(text, 20..24, nl, 4), b"z");
    }

    #[test]
    fn lines_longer_than_any_look_ahead_stay_whole() {
        // Lithops reads 128 KiB past a chunk's end and breaks past that.
        let mut text = b"head\n".to_vec();
        text.extend(std::iter::repeat_n(b'x', 300 * 1024));
        text.extend_from_slice(b"\ntail\n");
        let size = text.len() as u64;
        let nl = Some(&b"\n"[..]);
        let block = 64 * 1024;
        let first = chunk(&text, 0..100 * 1024, nl, block);
        assert_eq!(first.len(), 5 + 300 * 1024 + 1);
        assert_eq!(chunk(&text, 100 * 1024..200 * 1024, nl, block), b"");
        assert_eq!(chunk(&text, 200 * 1024..size, nl, block), b"tail\n");
    }

    #[test]
    fn no_final_newline_keeps_the_last_byte() {
        let text = b"one\ntwo";
        let nl = Some(&b"\n"[..]);
        assert_eq!(chunk(text, 0..2, nl, 3), b"one\n");
        assert_eq!(chunk(text, 2..7, nl, 3), b"two");
    }

    #[test]
    fn crlf_separator_straddling_blocks() {
        let text = b"ab\r\ncd\r\nef";
        let nl = Some(&b"\r\n"[..]);
        for block in 1..=10 {
            assert_eq!(chunk(text, 0..3, nl, block), b"ab\r\n", "block {block}");
            assert_eq!(chunk(text, 3..4, nl, block), b"", "block {block}");
            assert_eq!(chunk(text, 4..7, nl, block), b"cd\r\n", "block {block}");
            assert_eq!(chunk(text, 7..10, nl, block), b"ef", "block {block}");
        }
    }

    #[test]
    fn exact_ranges_without_a_newline() {
        let text = b"aaa\nbbb\n";
        assert_eq!(chunk(text, 2..6, None, 1), b"a\nbb");
        assert_eq!(chunk(text, 0..0, None, 1), b"");
    }

    #[test]
    fn reads_lazily_in_blocks() {
        let text: Vec<u8> = b"0123456789\n".repeat(10_000);
        let source = Counted::new(&text);
        let mut reader = ChunkReader::new(&source, 0..text.len() as u64, Some(b"\n"))
            .unwrap()
            .with_block_size(NonZeroUsize::new(1000).unwrap());
        let mut first = [0u8; 10];
        reader.read_exact(&mut first).unwrap();
        assert_eq!(&first, b"0123456789");
        assert_eq!(source.bytes_read.load(Ordering::Relaxed), 1000);
        let mut rest = Vec::new();
        reader.read_to_end(&mut rest).unwrap();
        assert_eq!(rest.len() + 10, text.len());
        assert_eq!(source.bytes_read.load(Ordering::Relaxed), text.len());
    }

    #[test]
    fn small_reads_and_lines_match_read_to_end() {
        let text = b"alpha\nbeta\ngamma\ndelta\n";
        let read = |range: Range<u64>| {
            let mut reader = ChunkReader::new(Counted::new(text), range, Some(b"\n"))
                .unwrap()
                .with_block_size(NonZeroUsize::new(3).unwrap());
            let mut out = Vec::new();
            let mut piece = [0u8; 2];
            loop {
                let n = reader.read(&mut piece).unwrap();
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&piece[..n]);
            }
            out
        };
        assert_eq!(read(3..13), b"beta\ngamma\n");
        let lines: Vec<String> = ChunkReader::new(Counted::new(text), 3..13, Some(b"\n"))
            .unwrap()
            .with_block_size(NonZeroUsize::new(2).unwrap())
            .lines()
            .map(|l| l.unwrap())
            .collect();
        assert_eq!(lines, vec!["beta", "gamma"]);
    }

    #[test]
    fn header_line_is_the_first_line() {
        assert_eq!(
            &header_line(&Counted::new(b"a,b\n1,2\n"), b"\n").unwrap()[..],
            b"a,b\n"
        );
        assert_eq!(
            &header_line(&Counted::new(b"a,b"), b"\n").unwrap()[..],
            b"a,b"
        );
        assert_eq!(&header_line(&Counted::new(b""), b"\n").unwrap()[..], b"");
        assert!(matches!(
            header_line(&Counted::new(b"x"), b""),
            Err(Error::EmptyNewline)
        ));
    }

    #[test]
    fn bad_arguments_are_errors() {
        assert!(matches!(
            ChunkReader::new(Counted::new(b"abc"), 0..1, Some(b"")),
            Err(Error::EmptyNewline)
        ));
        let err = ChunkReader::new(Counted::new(b"abc"), 1..9, None)
            .err()
            .unwrap()
            .to_string();
        assert!(err.contains("1..9") && err.contains("test bytes"), "{err}");
    }
}
