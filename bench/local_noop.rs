//! No-op Rust calls through the local backend: calls/s and client memory.
//!
//! `cargo run --release -p quelea-bench --bin local_noop -- [CALLS...]`
//! (default 10000 100000). Each size runs on a fresh, warmed-up executor;
//! the figure is the best of three runs, since this machine is shared.

use std::time::{Duration, Instant};

use quelea::{ConfigBuilder, Executor, Functions, MapOptions};

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map(|kb| kb * 1024)
        .unwrap_or(0)
}

fn main() -> anyhow::Result<()> {
    let mut functions = Functions::new();
    let noop = functions.register("noop", |x: u32| x);
    quelea::serve_if_runner(&functions);

    let sizes: Vec<usize> = std::env::args()
        .skip(1)
        .map(|a| a.parse())
        .collect::<Result<_, _>>()?;
    let sizes = if sizes.is_empty() {
        vec![10_000, 100_000]
    } else {
        sizes
    };
    let storage = tempfile_dir()?;
    println!("| calls | best calls/s (results in hand) | runs (s) | best calls/s incl. all statuses written to storage | client RSS growth per call |");
    println!("|---:|---:|---|---:|---:|");
    for &calls in &sizes {
        let mut times = Vec::new();
        let mut flushed_times = Vec::new();
        let mut per_call = 0.0;
        for _ in 0..3 {
            let config = ConfigBuilder::new()
                .no_file()
                .set("localdisk.root", storage.to_str().unwrap())
                .build()?;
            let exec = Executor::with_config(config)?;
            exec.warm_up()?;
            // One small job first so the runners are up and loaded.
            exec.get_result(&exec.map(&noop, 0..100u32, MapOptions::default())?, None)?;
            let rss_before = rss_bytes();
            let start = Instant::now();
            let futures = exec.map(&noop, 0..calls as u32, MapOptions::default())?;
            let results = exec.get_result(&futures, Some(Duration::from_secs(600)))?;
            let took = start.elapsed();
            anyhow::ensure!(results.len() == calls && results[calls - 1] == calls as u32 - 1);
            let rss_after = rss_bytes();
            exec.flush_statuses()?;
            flushed_times.push(start.elapsed().as_secs_f64());
            per_call = rss_after.saturating_sub(rss_before) as f64 / calls as f64;
            times.push(took.as_secs_f64());
            drop(futures);
        }
        let best = times.iter().cloned().fold(f64::INFINITY, f64::min);
        let best_flushed = flushed_times.iter().cloned().fold(f64::INFINITY, f64::min);
        let runs: Vec<String> = times.iter().map(|t| format!("{t:.3}")).collect();
        println!(
            "| {calls} | {:.0} | {} | {:.0} | {:.0} B |",
            calls as f64 / best,
            runs.join(", "),
            calls as f64 / best_flushed,
            per_call
        );
    }
    std::fs::remove_dir_all(&storage).ok();
    Ok(())
}

fn tempfile_dir() -> std::io::Result<std::path::PathBuf> {
    let dir = std::env::temp_dir().join(format!("quelea-bench-{}", std::process::id()));
    std::fs::create_dir_all(&dir)?;
    Ok(dir)
}
