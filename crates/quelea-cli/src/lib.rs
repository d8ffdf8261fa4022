//! The `quelea` command, as a library: the `quelea` binary and the Python
//! package's console script both run [`run_cli`].

pub mod dashboard;
mod inspect;

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
    /// List the jobs in storage, with their calls' progress
    Jobs {
        /// Only this executor's jobs (an id like `1a2b3c-0`)
        #[arg(long)]
        executor: Option<String>,
    },
    /// Show a job's calls: state, timing, and each failure with its traceback
    Logs {
        /// The job, as `quelea jobs` prints it (`1a2b3c-0-M000`)
        job: String,
        /// Only this call (`00007`, or `7`)
        call: Option<String>,
    },
    /// A live web page of the jobs in storage and their calls
    Dashboard {
        /// Address to listen on; any but loopback needs --token
        #[arg(long, default_value = dashboard::DEFAULT_BIND)]
        bind: std::net::SocketAddr,
        /// Every request must carry this token (at least 16 characters)
        #[arg(long, env = "QUELEA_DASHBOARD_TOKEN", hide_env_values = true)]
        token: Option<String>,
    },
    /// Objects in the configured storage
    Storage {
        /// Another bucket of the same storage
        #[arg(long)]
        bucket: Option<String>,
        #[command(subcommand)]
        action: StorageAction,
    },
    /// The worker runtime as a service
    Worker {
        #[command(subcommand)]
        action: WorkerAction,
    },
    /// The worker runtime on a remote backend
    Runtime {
        #[command(subcommand)]
        action: RuntimeAction,
    },
    /// Print the version
    Version,
}

#[derive(Subcommand)]
enum StorageAction {
    /// List objects (with their sizes) under a prefix
    Ls {
        #[arg(default_value = "")]
        prefix: String,
    },
    /// Upload a file (`-`: standard input) as an object
    Put {
        key: String,
        file: std::path::PathBuf,
    },
    /// Download an object to a file (default, or `-`: standard output)
    Get {
        key: String,
        file: Option<std::path::PathBuf>,
    },
    /// Delete an object, or with --prefix every object under a prefix
    Rm {
        key: String,
        #[arg(long)]
        prefix: bool,
    },
}

#[derive(Subcommand)]
enum WorkerAction {
    /// Serve signed Invocations over HTTP (`POST /invoke`, `GET /health`):
    /// the front door of the `http` backend
    Serve(ServeArgs),
}

#[derive(Subcommand)]
enum RuntimeAction {
    /// Package a bootstrap binary and create or update the function
    /// (`aws_lambda.function_name`, in `aws_lambda.region`)
    Deploy(DeployArgs),
}

#[derive(Clone, Copy, clap::ValueEnum)]
enum DeployBackend {
    #[value(name = "aws_lambda")]
    AwsLambda,
}

#[derive(clap::Args)]
struct DeployArgs {
    /// The backend to deploy to
    #[arg(long)]
    backend: DeployBackend,
    /// The bootstrap binary: your program calling `quelea_lambda::serve`,
    /// built for Linux x86_64 (e.g. `cargo lambda build --release`)
    #[arg(long)]
    bootstrap: std::path::PathBuf,
    /// Execution role ARN; needed to create the function (not to update it)
    #[arg(long)]
    role: Option<String>,
    /// Function timeout in seconds, at creation
    #[arg(long, default_value_t = 900)]
    timeout: u32,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to listen on (`0.0.0.0` in a container)
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Port to listen on; 0 picks a free one
    #[arg(long, env = "PORT", default_value_t = 8080)]
    port: u16,
    /// Runner processes per runner kind (default: `local.workers`, one per CPU)
    #[arg(long)]
    workers: Option<u32>,
    /// Python interpreter with the `quelea` package, to serve Python functions
    #[arg(long)]
    python: Option<std::path::PathBuf>,
    /// On SIGTERM or Ctrl-C, seconds to let accepted calls finish
    #[arg(long, default_value_t = 30.0)]
    drain_seconds: f64,
}

#[derive(Subcommand)]
enum ConfigAction {
    /// Print the resolved config (defaults < file < environment), secrets redacted
    Show,
}

/// The functions `quelea hello` runs, and a few more that let tests and
/// benchmarks exercise a worker server; any process that runs the CLI must
/// be able to serve them as a Rust runner.
pub struct Builtins {
    pub functions: Functions,
    /// `(x, sleep_ms)` → `x * x`, after sleeping.
    pub square: FunctionRef<(u64, u64), u64>,
    pub sum: FunctionRef<Vec<u64>, u64>,
    /// Sleeps this many milliseconds and returns them.
    pub sleep_ms: FunctionRef<u64, u64>,
    /// Fails with a user error whose message names the input.
    pub fail: FunctionRef<String, String>,
    /// Ends the runner process with this exit code (0 returns normally).
    pub exit_with: FunctionRef<i32, i32>,
    /// The number of lines in a chunk of data (the partitioner's `obj`).
    pub count_lines: FunctionRef<quelea::objects::ChunkObject, u64>,
}

/// The error of the builtin `fail`.
#[derive(Debug)]
pub struct BuiltinFailure(String);

impl std::fmt::Display for BuiltinFailure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "refused input `{}`", self.0)
    }
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
    let sleep_ms = functions.register("sleep_ms", |ms: u64| {
        std::thread::sleep(Duration::from_millis(ms));
        ms
    });
    let fail = functions.register_fallible("fail", |input: String| {
        Err::<String, _>(BuiltinFailure(input))
    });
    let exit_with = functions.register("exit_with", |code: i32| {
        if code != 0 {
            std::process::exit(code);
        }
        code
    });
    let count_lines =
        functions.register_fallible("count_lines", |obj: quelea::objects::ChunkObject| {
            let reader = obj.data_stream().map_err(|e| e.to_string())?;
            Ok::<_, String>(std::io::BufRead::lines(reader).count() as u64)
        });
    Builtins {
        functions,
        square,
        sum,
        sleep_ms,
        fail,
        exit_with,
        count_lines,
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
        Command::Jobs { executor } => inspect::jobs(&storage(cli, None)?, executor.as_deref()),
        Command::Logs { job, call } => inspect::logs(&storage(cli, None)?, job, call.as_deref()),
        Command::Dashboard { bind, token } => dashboard(cli, *bind, token.clone()),
        Command::Storage { bucket, action } => {
            let storage = storage(cli, bucket.as_deref())?;
            match action {
                StorageAction::Ls { prefix } => inspect::ls(&storage, prefix),
                StorageAction::Put { key, file } => inspect::put(&storage, key, file),
                StorageAction::Get { key, file } => inspect::get(&storage, key, file.as_deref()),
                StorageAction::Rm { key, prefix } => inspect::rm(&storage, key, *prefix),
            }
        }
        Command::Hello { calls, sleep_ms } => hello(cli, builtins, rust_runner, *calls, *sleep_ms),
        Command::Worker {
            action: WorkerAction::Serve(args),
        } => serve(cli, args, rust_runner),
        Command::Runtime {
            action: RuntimeAction::Deploy(args),
        } => deploy(cli, args),
    }
}

/// The configured storage, or another bucket of it.
fn storage(cli: &Cli, bucket: Option<&str>) -> Result<quelea::storage::Storage> {
    let mut builder = config_builder(cli);
    if let Some(bucket) = bucket {
        builder = builder.set("bucket", bucket);
    }
    Ok(quelea::storage::Storage::from_config(&builder.build()?)?)
}

fn dashboard(cli: &Cli, bind: std::net::SocketAddr, token: Option<String>) -> Result<()> {
    use std::io::Write;
    let storage = storage(cli, None)?;
    let location = storage.location().describe();
    let server = dashboard::Dashboard::bind(bind, token, storage)?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "quelea dashboard on {} (jobs in {location}; Ctrl-C stops it)",
        server.url()?
    )?;
    out.flush()?;
    drop(out);
    quelea::interrupt::install_ctrl_c_handler();
    server.run(quelea::interrupt::is_interrupted)
}

fn deploy(cli: &Cli, args: &DeployArgs) -> Result<()> {
    use quelea_lambda::deploy::{DeploySpec, Deployed};
    let DeployBackend::AwsLambda = args.backend;
    let config = config_builder(cli).build()?;
    let deployed = quelea_lambda::deploy::deploy(
        &config,
        &DeploySpec {
            bootstrap: args.bootstrap.clone(),
            role_arn: args.role.clone(),
            timeout_s: args.timeout,
        },
    )?;
    let function = config.aws_lambda.function_name.unwrap_or_default();
    println!(
        "{} Lambda function `{function}` from {}",
        match deployed {
            Deployed::Created => "created",
            Deployed::Updated => "updated the code of",
        },
        args.bootstrap.display()
    );
    Ok(())
}

fn serve(cli: &Cli, args: &ServeArgs, rust_runner: Option<RunnerCommand>) -> Result<()> {
    use quelea::worker::http_server::{Server, ServerConfig};
    use quelea::worker::push::BrokerUrls;
    use std::io::Write;

    let config = config_builder(cli).build()?;
    let secret = config
        .http
        .secret
        .as_ref()
        .map(|s| s.expose().as_bytes().to_vec())
        .unwrap_or_default();
    let storage = quelea::storage::Storage::from_config(&config)?;
    let rust = match rust_runner {
        Some(command) => command,
        None => RunnerCommand::current_exe()
            .context("cannot find this executable to start Rust runners")?,
    };
    let commands = quelea::objects::runtime_runners(&config, rust, args.python.as_deref());
    let workers = args.workers.unwrap_or_else(|| config.local_workers());
    anyhow::ensure!(workers > 0, "--workers must be at least 1");
    let server = Server::bind_with_brokers(
        ServerConfig {
            addr: std::net::SocketAddr::new(args.host, args.port),
            secret,
            replay_window: Duration::from_secs_f64(config.http.replay_window),
            max_body_bytes: config.http.max_body_bytes,
            max_queued_calls: config.http.max_queued_calls,
            workers,
            inline_result_bytes: config.execution.inline_result_bytes,
            commands,
        },
        storage.clone(),
        BrokerUrls::from_config(&config),
    )?;
    let addr = server.local_addr()?;
    let mut out = std::io::stdout().lock();
    writeln!(
        out,
        "quelea worker listening on http://{addr} ({workers} runners per kind, storage {})",
        storage.location().describe()
    )?;
    out.flush()?;
    drop(out);
    anyhow::ensure!(
        args.drain_seconds.is_finite() && args.drain_seconds >= 0.0,
        "--drain-seconds must be a non-negative number"
    );
    // SIGTERM (a platform scaling down) and Ctrl-C stop it gracefully.
    quelea::interrupt::install_ctrl_c_handler();
    let stop = server.stop_handle();
    std::thread::Builder::new()
        .name("quelea-serve-signal".into())
        .spawn(move || {
            while !quelea::interrupt::is_interrupted() {
                std::thread::sleep(Duration::from_millis(100));
            }
            stop.stop();
        })?;
    let unfinished = server.run(Duration::from_secs_f64(args.drain_seconds))?;
    if unfinished > 0 {
        eprintln!("quelea worker: stopped with {unfinished} accepted call(s) unfinished");
    }
    Ok(())
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
    if let Some(url) = dashboard::job_url(&format!("{}-M000", exec.id())) {
        println!("dashboard: {url}");
    }
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
