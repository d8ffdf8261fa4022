//! The `quelea` command, as a library: the `quelea` binary and the Python
//! package's console script both run [`run_cli`].

use std::ffi::OsString;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use quelea::{
    ConfigBuilder, Executor, FunctionRef, Functions, FuturesList, MapOptions, RunnerCommand,
    RunnerKind,
};

#[derive(Parser)]
#[command(
    name = "quelea",
    version,
    about = "Run ordinary functions a thousand at a time"
)]
struct Cli {
    /// Config file (default: $QUELEA_CONFIG_FILE, else ~/.quelea/config.yaml)
    #[arg(long, global = true, env = "QUELEA_CONFIG_FILE")]
    config: Option<std::path::PathBuf>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run a smoke job end to end: a map-reduce over the configured backend
    Hello {
        /// Number of map calls
        #[arg(long, default_value_t = 1000)]
        calls: u32,
        /// Milliseconds each call sleeps (to watch progress)
        #[arg(long, default_value_t = 0)]
        sleep_ms: u64,
    },
    /// Show configuration
    Config {
        #[command(subcommand)]
        action: ConfigAction,
    },
    /// Delete the objects of jobs left in storage
    Clean,
    /// Print the version
    Version,
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Print the resolved config (defaults < file < environment), secrets redacted
    Show,
}

/// The functions `quelea hello` runs; any process that runs the CLI must be
/// able to serve them as a Rust runner.
pub struct Builtins {
    pub functions: Functions,
    square: FunctionRef<(u64, u64), u64>,
    sum: FunctionRef<Vec<u64>, u64>,
}

pub fn builtins() -> Builtins {
    let mut functions = Functions::new();
    let square = functions.register("hello_square", |(x, sleep_ms): (u64, u64)| {
        if sleep_ms > 0 {
            std::thread::sleep(Duration::from_millis(sleep_ms));
        }
        x * x
    });
    let sum = functions.register("hello_sum", |xs: Vec<u64>| xs.iter().sum::<u64>());
    Builtins {
        functions,
        square,
        sum,
    }
}

fn config_builder(cli: &Cli) -> ConfigBuilder {
    match &cli.config {
        Some(path) => ConfigBuilder::new().file(path),
        None => ConfigBuilder::new(),
    }
}

/// Runs the command line and returns the process exit code. `rust_runner`
/// says how to start Rust runners that serve [`builtins`]; `None` means this
/// executable (which must then call
/// `quelea::serve_if_runner(&builtins().functions)` first thing).
pub fn run_cli(args: impl IntoIterator<Item = OsString>, rust_runner: Option<RunnerCommand>) -> u8 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            let _ = e.print();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let builtins = builtins();
    match run(&cli, &builtins, rust_runner) {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("error: {e:#}");
            let interrupted = e
                .downcast_ref::<quelea::Error>()
                .is_some_and(|e| matches!(e, quelea::Error::Interrupted));
            if interrupted {
                130
            } else {
                1
            }
        }
    }
}

fn run(cli: &Cli, builtins: &Builtins, rust_runner: Option<RunnerCommand>) -> Result<()> {
    match &cli.command {
        Command::Version => {
            println!("quelea {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Config {
            action: ConfigAction::Show,
        } => {
            let config = config_builder(cli).build()?;
            print!("{}", serde_yaml_ng::to_string(&config.redacted())?);
            Ok(())
        }
        Command::Clean => {
            let config = config_builder(cli).build()?;
            let storage = quelea::storage::Storage::from_config(&config)?;
            let deleted = storage.delete_prefix_blocking(&quelea::core::keys::jobs_root())?;
            println!(
                "deleted {deleted} object(s) from {}",
                storage.location().describe()
            );
            Ok(())
        }
        Command::Hello { calls, sleep_ms } => hello(cli, builtins, rust_runner, *calls, *sleep_ms),
    }
}

fn hello(
    cli: &Cli,
    builtins: &Builtins,
    rust_runner: Option<RunnerCommand>,
    calls: u32,
    sleep_ms: u64,
) -> Result<()> {
    anyhow::ensure!(calls > 0, "--calls must be at least 1");
    quelea::interrupt::install_ctrl_c_handler();
    let config = config_builder(cli)
        .set("execution.data_cleaner", false)
        .build()?;
    let started = Instant::now();
    let mut builder = Executor::builder().config(config);
    if let Some(runner) = rust_runner {
        builder = builder.runner(RunnerKind::Rust, runner);
    }
    let exec = builder.build().context("cannot create the executor")?;
    let inputs = (0..calls as u64).map(|x| (x, sleep_ms));
    let map = exec.map(&builtins.square, inputs, MapOptions::default())?;
    show_progress(&map)?;
    let squares = exec.get_result(&map, None)?;
    let map_done = started.elapsed();
    let total = exec
        .map_reduce(
            &builtins.square,
            (0..calls as u64).map(|x| (x, 0)),
            &builtins.sum,
            MapOptions::default(),
        )?
        .result(None)?;
    exec.flush_statuses()?;
    let expected: u64 = (0..calls as u64).map(|x| x * x).sum();
    anyhow::ensure!(
        total == expected,
        "the reduce returned {total}, expected {expected}"
    );

    let shown: Vec<String> = squares.iter().take(5).map(u64::to_string).collect();
    println!(
        "map: {calls} calls of x*x -> [{}{}]",
        shown.join(", "),
        if calls > 5 { ", ..." } else { "" }
    );
    println!("map_reduce: sum of squares = {total} (checked)");
    println!(
        "{calls} calls in {:.3} s, executor start included: {:.0} calls/s",
        map_done.as_secs_f64(),
        calls as f64 / map_done.as_secs_f64()
    );
    println!(
        "job objects: {} in {}",
        exec.storage_prefix(),
        exec.storage().location().describe()
    );
    println!("remove them with: quelea clean");
    Ok(())
}

/// A progress bar, shown only for jobs that take more than a moment.
fn show_progress<O>(futures: &FuturesList<O>) -> Result<()> {
    let started = Instant::now();
    let total = futures.len() as u64;
    let mut bar: Option<indicatif::ProgressBar> = None;
    loop {
        let done = futures.done_count() as u64;
        if done >= total {
            if let Some(bar) = bar {
                bar.set_position(done);
                bar.finish();
            }
            return Ok(());
        }
        if quelea::interrupt::is_interrupted() {
            return Ok(()); // get_result reports and cancels.
        }
        if bar.is_none() && started.elapsed() > Duration::from_millis(500) {
            let b = indicatif::ProgressBar::new(total);
            b.set_style(indicatif::ProgressStyle::with_template(
                "{bar:40} {pos}/{len} calls  {per_sec}  eta {eta}",
            )?);
            bar = Some(b);
        }
        if let Some(bar) = &bar {
            bar.set_position(done);
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}
