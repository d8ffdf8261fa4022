//! The `quelea` command, as a library: the `quelea` binary and the Python
//! package's console script both run [`run_cli`].

#![warn(clippy::print_stdout, clippy::print_stderr)]

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

/// Writes a line of a command's output to standard output. A closed pipe
/// (`quelea logs JOB | head -1`) is an `Err` that [`run_cli`] turns into a
/// quiet exit, as Unix tools do, instead of a panic.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout(), $($arg)*)?;
    }};
}

/// Writes a message line to standard error; a closed standard error is ignored.
macro_rules! errln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stderr(), $($arg)*);
    }};
}
pub(crate) use {errln, outln};

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
    /// Check the configured backend and storage: storage, a map, a
    /// map_reduce, a failing call and the partitioner; prints what works
    Test {
        /// Seconds each check may take
        #[arg(long, default_value_t = 120.0)]
        timeout: f64,
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
    /// Returns even inputs; fails with a user error on odd ones.
    pub fail_odd: FunctionRef<u64, u64>,
    /// Holds this many MiB (touched) for a moment, and returns them.
    pub hold_mb: FunctionRef<u64, u64>,
    /// `(prefix, fail_first, how)`: counts the marker objects under
    /// `prefix` in the runner's storage (the attempts before this one),
    /// leaves one more, and while fewer than `fail_first` were there fails
    /// (`how` = `error`: a user error; `kill`: SIGKILLs its own runner);
    /// else returns the count. For retry tests on every backend.
    pub flaky: FunctionRef<(String, u32, String), u32>,
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
    let fail_odd = functions.register_fallible("fail_odd", |x: u64| {
        if x % 2 == 1 {
            Err(BuiltinFailure(x.to_string()))
        } else {
            Ok(x)
        }
    });
    let hold_mb = functions.register("hold_mb", |mb: u64| {
        let held = vec![1u8; (mb as usize) << 20];
        std::thread::sleep(Duration::from_millis(300));
        std::hint::black_box(&held);
        mb
    });
    let flaky = functions.register_fallible(
        "flaky",
        |(prefix, fail_first, how): (String, u32, String)| {
            let failure = |e: &dyn std::fmt::Display| BuiltinFailure(e.to_string());
            let config = quelea::objects::runner_config().map_err(|e| failure(&e))?;
            let storage =
                quelea::storage::Storage::from_config(&config).map_err(|e| failure(&e))?;
            let seen = storage
                .list_blocking(&prefix)
                .map_err(|e| failure(&e))?
                .len() as u32;
            let marker = format!("{prefix}{seen:04}-{}", std::process::id());
            storage
                .put_blocking(&marker, Vec::new())
                .map_err(|e| failure(&e))?;
            if seen >= fail_first {
                return Ok(seen);
            }
            if how == "kill" {
                let pid = std::process::id().to_string();
                let _ = std::process::Command::new("kill")
                    .args(["-KILL", &pid])
                    .status();
                // No `kill` program: die by a signal all the same.
                std::process::abort();
            }
            Err(BuiltinFailure(format!("attempt {seen}")))
        },
    );
    Builtins {
        flaky,
        functions,
        square,
        sum,
        sleep_ms,
        fail,
        exit_with,
        count_lines,
        fail_odd,
        hold_mb,
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
    let outcome = run(&cli, &builtins, rust_runner)
        .and_then(|()| Ok(std::io::Write::flush(&mut std::io::stdout())?));
    match outcome {
        Ok(()) => 0,
        // The reader of our output has gone (`quelea logs JOB | head -1`):
        // stop quietly, as Unix tools do.
        Err(e) if is_broken_pipe(&e) => 0,
        Err(e) => {
            errln!("error: {e:#}");
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

/// Whether an error comes from writing to a closed pipe.
fn is_broken_pipe(e: &anyhow::Error) -> bool {
    e.chain().any(|cause| {
        cause
            .downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

fn run(cli: &Cli, builtins: &Builtins, rust_runner: Option<RunnerCommand>) -> Result<()> {
    match &cli.command {
        Command::Version => {
            outln!("quelea {}", env!("CARGO_PKG_VERSION"));
            Ok(())
        }
        Command::Config {
            action: ConfigAction::Show,
        } => {
            let config = config_builder(cli).build()?;
            let yaml = serde_yaml_ng::to_string(&config.redacted())?;
            std::io::Write::write_all(&mut std::io::stdout(), yaml.as_bytes())?;
            Ok(())
        }
        Command::Clean => {
            let config = config_builder(cli).build()?;
            let storage = quelea::storage::Storage::from_config(&config)?;
            let deleted = storage.delete_prefix_blocking(&quelea::core::keys::jobs_root())?;
            outln!(
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
        Command::Test { timeout } => self_test(cli, builtins, rust_runner, *timeout),
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
    outln!(
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
    let commands = quelea::worker::runtime::runtime_runners(&config, rust, args.python.as_deref());
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
        errln!("quelea worker: stopped with {unfinished} accepted call(s) unfinished");
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
        outln!("dashboard: {url}");
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
    outln!(
        "map: {calls} calls of x*x -> [{}{}]",
        shown.join(", "),
        if calls > 5 { ", ..." } else { "" }
    );
    outln!("map_reduce: sum of squares = {total} (checked)");
    outln!(
        "{calls} calls in {:.3} s, executor start included: {}",
        map_done.as_secs_f64(),
        rate(calls as f64 / map_done.as_secs_f64())
    );
    outln!(
        "job objects: {} in {}",
        exec.storage_prefix(),
        exec.storage().location().describe()
    );
    outln!("remove them with: quelea clean");
    Ok(())
}

/// `quelea test`: a short self-check of the configured backend and storage,
/// one line per check; fails if any check failed.
fn self_test(
    cli: &Cli,
    builtins: &Builtins,
    rust_runner: Option<RunnerCommand>,
    timeout: f64,
) -> Result<()> {
    anyhow::ensure!(
        timeout.is_finite() && timeout > 0.0,
        "--timeout must be a positive number of seconds, not `{timeout}`"
    );
    let deadline = Some(Duration::from_secs_f64(timeout));
    quelea::interrupt::install_ctrl_c_handler();
    let config = config_builder(cli).build()?;
    outln!(
        "quelea test: backend {}, storage {}",
        serde_json::to_value(config.backend)?
            .as_str()
            .unwrap_or("?"),
        quelea::storage::Storage::from_config(&config)?
            .location()
            .describe()
    );
    let mut builder = Executor::builder().config(config.clone());
    if let Some(runner) = rust_runner {
        builder = builder.runner(RunnerKind::Rust, runner);
    }
    let exec = builder.build().context("cannot create the executor")?;
    let storage = exec.storage().clone();
    // Under the executor's prefix, so that `quelea clean` removes leftovers.
    let scratch = format!("{}selftest/", exec.storage_prefix());
    let lines = "one line\n".repeat(100);

    type Check<'a> = (&'static str, Box<dyn Fn() -> Result<String> + 'a>);
    let checks: Vec<Check> = vec![
        (
            "storage",
            Box::new(|| {
                let key = format!("{scratch}probe");
                storage.put_blocking(&key, b"probe".to_vec())?;
                let back = storage.get_blocking(&key)?;
                storage.delete_blocking(&key)?;
                anyhow::ensure!(
                    back[..] == b"probe"[..],
                    "read back {} bytes, not 5",
                    back.len()
                );
                Ok("put, get and delete an object".to_owned())
            }),
        ),
        (
            "map",
            Box::new(|| {
                let map = exec.map(
                    &builtins.square,
                    (0..10).map(|x| (x, 0)),
                    MapOptions::default(),
                )?;
                let got = exec.get_result(&map, deadline)?;
                let want: Vec<u64> = (0..10).map(|x| x * x).collect();
                anyhow::ensure!(got == want, "got {got:?}, expected {want:?}");
                Ok("10 calls of x*x came back in order".to_owned())
            }),
        ),
        (
            "map_reduce",
            Box::new(|| {
                let total = exec
                    .map_reduce(
                        &builtins.square,
                        (0..100).map(|x| (x, 0)),
                        &builtins.sum,
                        MapOptions::default(),
                    )?
                    .result(deadline)?;
                anyhow::ensure!(
                    total == 328_350,
                    "the reduce returned {total}, expected 328350"
                );
                Ok("100 map calls reduced to their sum".to_owned())
            }),
        ),
        (
            "failing call",
            Box::new(|| {
                let future = exec.call_async(
                    &builtins.fail,
                    "on purpose".to_owned(),
                    MapOptions::default(),
                )?;
                match future.result(deadline) {
                    Ok(value) => anyhow::bail!("a failing call returned `{value}`"),
                    Err(quelea::Error::CallFailed { error, .. })
                        if error.message.contains("refused input `on purpose`") =>
                    {
                        Ok("its error came back with the remote message".to_owned())
                    }
                    Err(e) => Err(e.into()),
                }
            }),
        ),
        (
            "partitioner",
            Box::new(|| {
                let key = format!("{scratch}lines.txt");
                storage.put_blocking(&key, lines.clone().into_bytes())?;
                let counted = exec
                    .map_objects(
                        &builtins.count_lines,
                        [format!("{}/{key}", config.bucket)],
                        &quelea::objects::ObjOptions {
                            chunking: quelea::objects::Chunking::Size(128),
                            ..Default::default()
                        },
                        MapOptions::default(),
                    )
                    .and_then(|chunks| {
                        let parts = chunks.len();
                        Ok((parts, exec.get_result(&chunks, deadline)?))
                    });
                storage.delete_blocking(&key)?;
                let (parts, counts) = counted?;
                let total: u64 = counts.iter().sum();
                anyhow::ensure!(total == 100, "the chunks held {total} lines, expected 100");
                Ok(format!(
                    "a 100-line object cut into {parts} chunks, every line counted once"
                ))
            }),
        ),
    ];
    let mut failed = Vec::new();
    for (name, check) in &checks {
        let started = Instant::now();
        match check() {
            Ok(what) => outln!(
                "ok    {name:<13} {what} ({:.3} s)",
                started.elapsed().as_secs_f64()
            ),
            Err(e) => {
                if is_broken_pipe(&e) {
                    return Err(e);
                }
                outln!("FAIL  {name:<13} {e:#}");
                failed.push(*name);
            }
        }
        if quelea::interrupt::is_interrupted() {
            return Err(quelea::Error::Interrupted.into());
        }
    }
    // Best effort: the checks' job objects, whatever data_cleaner says.
    let _ = storage.delete_prefix_blocking(&exec.storage_prefix());
    anyhow::ensure!(
        failed.is_empty(),
        "{} of {} checks failed: {}",
        failed.len(),
        checks.len(),
        failed.join(", ")
    );
    outln!("all {} checks passed", checks.len());
    Ok(())
}

/// A progress bar, shown only for jobs that take more than a moment.
fn show_progress<O>(futures: &FuturesList<O>) -> Result<()> {
    let started = Instant::now();
    let total = futures.len() as u64;
    // Counting from the start, drawn after a moment: the rate then covers
    // the whole job, not a first jump.
    let bar = indicatif::ProgressBar::with_draw_target(
        Some(total),
        indicatif::ProgressDrawTarget::hidden(),
    );
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} calls  {rate}  eta {eta}")?
            .with_key(
                "rate",
                |state: &indicatif::ProgressState, w: &mut dyn std::fmt::Write| {
                    let elapsed = state.elapsed().as_secs_f64();
                    let _ = w.write_str(&rate(state.pos() as f64 / elapsed));
                },
            ),
    );
    let mut shown = false;
    loop {
        let done = futures.done_count() as u64;
        if done >= total {
            // Cleared, so that what follows starts on a line of its own.
            bar.finish_and_clear();
            return Ok(());
        }
        if quelea::interrupt::is_interrupted() {
            bar.finish_and_clear();
            return Ok(()); // get_result reports and cancels.
        }
        if !shown && started.elapsed() > Duration::from_millis(500) {
            bar.set_draw_target(indicatif::ProgressDrawTarget::stderr());
            shown = true;
        }
        bar.set_position(done);
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// A rate of calls as people read it: `399562 calls/s`, `12.5 calls/s`.
fn rate(per_sec: f64) -> String {
    if !per_sec.is_finite() || per_sec <= 0.0 {
        "- calls/s".to_owned()
    } else if per_sec >= 100.0 {
        format!("{per_sec:.0} calls/s")
    } else {
        format!("{per_sec:.1} calls/s")
    }
}

#[cfg(test)]
mod tests {
    use super::rate;

    #[test]
    fn rates_read_at_a_glance() {
        assert_eq!(rate(399_561.185_2), "399561 calls/s");
        assert_eq!(rate(12.48), "12.5 calls/s");
        assert_eq!(rate(0.0), "- calls/s");
        assert_eq!(rate(f64::INFINITY), "- calls/s");
    }
}
