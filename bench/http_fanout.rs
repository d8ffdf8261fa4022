//! Fan-out through the `http` backend: 1,000 no-op calls (one Invocation
//! each) against 2 local worker servers that this binary starts itself.
//!
//! `cargo run --release -p quelea-bench --bin http_fanout -- [CALLS]`
//! (default 1000). Reports the time until every Invocation was accepted
//! (`map` returns then), and until every result was in hand, best of 3
//! warm runs; and checks that every call has exactly one final status in
//! storage (none lost, none duplicated).
//!
//! The same binary is the worker server (`--serve`) and, started by the
//! server's pool, the runner of `noop` (the same-binary model).

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use quelea::core::keys::JobKeys;
use quelea::core::model::RunnerKind;
use quelea::core::protocol::Message;
use quelea::worker::http_server::{Server, ServerConfig};
use quelea::{CallState, ConfigBuilder, Executor, Functions, MapOptions, RunnerCommand};

const SECRET: &str = "http-fanout-bench-secret";
const SERVERS: usize = 2;

fn serve(storage_dir: &str) -> anyhow::Result<()> {
    let config = ConfigBuilder::new()
        .no_file()
        .set("localdisk.root", storage_dir)
        .build()?;
    let storage = quelea::storage::Storage::from_config(&config)?;
    let mut runner = RunnerCommand::current_exe()?;
    runner.env.push((
        quelea::worker::runtime::RUNNER_CONFIG_ENV.into(),
        config.runner_json().into(),
    ));
    let server = Server::bind(
        ServerConfig {
            addr: "127.0.0.1:0".parse()?,
            secret: SECRET.as_bytes().to_vec(),
            replay_window: Duration::from_secs(300),
            max_body_bytes: 8 << 20,
            max_queued_calls: 1_000_000,
            workers: 1,
            inline_result_bytes: config.execution.inline_result_bytes,
            commands: HashMap::from([(RunnerKind::Rust, runner)]),
        },
        storage,
    )?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "http://{}", server.local_addr()?)?;
    out.flush()?;
    drop(out);
    server.run(Duration::ZERO)?;
    Ok(())
}

struct Servers(Vec<Child>);

impl Drop for Servers {
    fn drop(&mut self) {
        for child in &mut self.0 {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn main() -> anyhow::Result<()> {
    let mut functions = Functions::new();
    let noop = functions.register("noop", |x: u32| x);
    quelea::serve_if_runner(&functions);

    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--serve") {
        return serve(&args[1]);
    }
    let calls: u32 = args.first().map(|a| a.parse()).transpose()?.unwrap_or(1000);
    let storage = std::env::temp_dir().join(format!("quelea-http-bench-{}", std::process::id()));
    std::fs::create_dir_all(&storage)?;
    let storage_str = storage.to_str().unwrap().to_owned();

    let mut servers = Servers(Vec::new());
    let mut urls = Vec::new();
    for _ in 0..SERVERS {
        let mut child = Command::new(std::env::current_exe()?)
            .args(["--serve", &storage_str])
            .stdout(Stdio::piped())
            .spawn()?;
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line)?;
        servers.0.push(child);
        anyhow::ensure!(line.starts_with("http://"), "a server said `{line}`");
        urls.push(line.trim().to_owned());
    }

    let config = ConfigBuilder::new()
        .no_file()
        .set("localdisk.root", storage_str.as_str())
        .set("backend", "http")
        .set("http.urls", urls.clone())
        .set("http.secret", SECRET)
        .set("execution.data_cleaner", false)
        .build()?;
    let exec = Executor::with_config(config)?;
    // Warm-up: runners started and the function loaded on both servers.
    exec.get_result(
        &exec.map(&noop, 0..20u32, MapOptions::default())?,
        Some(Duration::from_secs(60)),
    )?;

    println!("| run | calls | all Invocations sent (s) | end to end (s) | final statuses | lost | duplicated |");
    println!("|---:|---:|---:|---:|---:|---:|---:|");
    let mut best = (f64::INFINITY, f64::INFINITY);
    for run in 1..=3 {
        let start = Instant::now();
        let futures = exec.map(&noop, 0..calls, MapOptions::default())?;
        let sent = start.elapsed().as_secs_f64();
        let results = exec.get_result(&futures, Some(Duration::from_secs(300)))?;
        let end_to_end = start.elapsed().as_secs_f64();
        anyhow::ensure!(results == (0..calls).collect::<Vec<_>>(), "wrong results");

        // Every call once in storage: the servers' own record of what ran.
        let keys = JobKeys::new(exec.id(), futures.get(0).unwrap().job_id());
        let mut finals: HashMap<u32, u32> = HashMap::new();
        for object in exec.storage().list_blocking(&keys.status_prefix())? {
            let body = exec.storage().get_blocking(&object.key)?;
            if let Message::StatusBatch(batch) = Message::decode(&body)? {
                for status in batch.statuses {
                    if status.state == CallState::Success || status.state == CallState::Error {
                        *finals.entry(status.call_id.0).or_default() += 1;
                    }
                }
            }
        }
        let lost = (0..calls).filter(|c| !finals.contains_key(c)).count();
        let duplicated = finals.values().filter(|&&n| n > 1).count();
        println!(
            "| {run} | {calls} | {sent:.3} | {end_to_end:.3} | {} | {lost} | {duplicated} |",
            finals.values().sum::<u32>()
        );
        anyhow::ensure!(lost == 0 && duplicated == 0, "calls lost or duplicated");
        best = (best.0.min(sent), best.1.min(end_to_end));
    }
    println!(
        "\nbest of 3: all {calls} Invocations sent in {:.3} s, end to end {:.3} s ({SERVERS} servers, 1 runner each)",
        best.0, best.1
    );
    drop(exec);
    drop(servers);
    std::fs::remove_dir_all(&storage).ok();
    Ok(())
}
