//! The word-count benchmark job with a Rust map function: what the engine
//! and partitioner carry when the user's code is not the bottleneck.
//! `bench/wordcount.py` runs it as the `quelea-rust-*` systems:
//!
//! `wordcount_rust <local ROOT | s3> NAME CHUNK_BYTES WORKERS`
//!
//! Prints `{"words": N, "seconds": S}`, executor creation included.

use std::io::Read;
use std::time::Instant;

use quelea::objects::{ChunkObject, ObjOptions};
use quelea::partition::ChunkSpec;
use quelea::{ConfigBuilder, Executor, Functions, MapOptions};

/// 1 if `b` is whitespace to Python's `bytes.split()` (space, \t \n \v \f \r).
#[inline(always)]
fn space(b: u8) -> u8 {
    u8::from((b == b' ') | (b.wrapping_sub(9) < 5))
}

/// Word starts in `piece` after its first byte: a non-space after a space.
/// Counted in 32 byte-wide lanes that cannot overflow within 255 rounds, so
/// the compiler turns it into SIMD (about 5 GB/s a core here).
fn word_starts(piece: &[u8]) -> u64 {
    let (before, after) = (&piece[..piece.len() - 1], &piece[1..]);
    let starts = |x: u8, y: u8| space(x) & (space(y) ^ 1);
    let mut total = 0u64;
    let (mut xs, mut ys) = (before.chunks_exact(32), after.chunks_exact(32));
    loop {
        let mut lanes = [0u8; 32];
        let mut rounds = 0;
        for (x, y) in xs.by_ref().zip(ys.by_ref()).take(255) {
            let (x, y): (&[u8; 32], &[u8; 32]) = (x.try_into().unwrap(), y.try_into().unwrap());
            for i in 0..32 {
                lanes[i] += starts(x[i], y[i]);
            }
            rounds += 1;
        }
        total += lanes.iter().map(|&v| u64::from(v)).sum::<u64>();
        if rounds < 255 {
            break;
        }
    }
    let rest = xs.remainder().iter().zip(ys.remainder());
    total + rest.map(|(&x, &y)| u64::from(starts(x, y))).sum::<u64>()
}

/// Words in a chunk, read in 1 MiB pieces (a word may span two pieces).
fn count_words(obj: ChunkObject) -> u64 {
    let mut stream = obj.data_stream().expect("the chunk opens");
    let mut buf = vec![0u8; 1 << 20];
    let (mut words, mut after_space) = (0u64, true);
    loop {
        let n = stream.read(&mut buf).expect("the chunk reads");
        if n == 0 {
            return words;
        }
        let piece = &buf[..n];
        words += word_starts(piece) + u64::from(after_space && space(piece[0]) == 0);
        after_space = space(piece[n - 1]) == 1;
    }
}

fn main() -> anyhow::Result<()> {
    let mut functions = Functions::new();
    let count = functions.register("count_words", count_words);
    let total = functions.register("total", |counts: Vec<u64>| counts.iter().sum::<u64>());
    quelea::serve_if_runner(&functions);

    let args: Vec<String> = std::env::args().skip(1).collect();
    let usage = "usage: wordcount_rust <local ROOT | s3> NAME CHUNK_BYTES WORKERS";
    let (mut builder, rest) = match args.first().map(String::as_str) {
        Some("local") if args.len() == 5 => (
            ConfigBuilder::new()
                .no_file()
                .set("localdisk.root", args[1].as_str())
                .set("bucket", "bench"),
            &args[2..],
        ),
        Some("s3") if args.len() == 4 => (
            ConfigBuilder::new()
                .no_file()
                .set("storage", "s3")
                .set("bucket", "quelea-test"),
            &args[1..],
        ),
        _ => anyhow::bail!("{usage}"),
    };
    let chunk: u64 = rest[1].parse()?;
    let workers: u32 = rest[2].parse()?;
    builder = builder.set("local.workers", workers);

    let started = Instant::now();
    let executor = Executor::with_config(builder.build()?)?;
    let obj = ObjOptions {
        chunking: ChunkSpec::Size(chunk),
        ..ObjOptions::default()
    };
    let futures = executor.map_reduce_objects(
        &count,
        [rest[0].as_str()],
        &total,
        &obj,
        false,
        MapOptions::default(),
    )?;
    let words = executor.get_result(&futures, None)?[0];
    println!(
        "{{\"words\": {words}, \"seconds\": {}}}",
        started.elapsed().as_secs_f64()
    );
    Ok(())
}
