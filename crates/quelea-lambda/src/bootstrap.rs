//! The Lambda bootstrap: serving Invocation events (feature `runtime`).

use std::sync::Arc;
use std::time::Duration;

use lambda_runtime::{service_fn, LambdaEvent};
use quelea_core::config::Config;
use quelea_core::protocol::Message;
use quelea_storage::{io_runtime, Storage};
use quelea_worker::pool::RunnerCommand;
use quelea_worker::runtime::{runtime_runners, RefusalKind, Runtime, RuntimeConfig};
use quelea_worker::rust_runner::{serve_if_runner, Functions};
use serde_json::{json, Value};

/// Why the bootstrap could not start.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    #[error("bad quelea config in the function's environment: {0}")]
    Config(#[from] quelea_core::Error),
    #[error("cannot open the job storage: {0}")]
    Storage(#[from] quelea_storage::Error),
    #[error("cannot find this executable to start Rust runners: {0}")]
    Exe(#[source] std::io::Error),
    #[error("the Lambda runtime stopped: {0}")]
    Lambda(String),
}

/// Calls are given until this long before the Lambda deadline to finish;
/// then what has finished is written and the handler returns.
const FLUSH_MARGIN: Duration = Duration::from_secs(2);
/// Lambda's longest run, the wait when an event names no deadline.
const MAX_DURATION: Duration = Duration::from_secs(900);

/// Runs the bootstrap: serves `functions` as a runner when started as one,
/// else polls the Lambda Runtime API for events until the process ends.
pub fn serve(functions: &Functions) -> Result<(), Error> {
    serve_if_runner(functions);
    let config = Config::load()?;
    let runtime = Arc::new(runtime(&config)?);
    io_runtime()
        .block_on(lambda_runtime::run(service_fn(
            |event: LambdaEvent<Value>| {
                let runtime = runtime.clone();
                async move { handle(runtime, event).await }
            },
        )))
        .map_err(|e| Error::Lambda(e.to_string()))
}

/// The worker runtime as the function's environment configures it.
pub fn runtime(config: &Config) -> Result<Runtime, Error> {
    let storage = Storage::from_config(config)?;
    let rust = RunnerCommand::current_exe().map_err(Error::Exe)?;
    let commands = runtime_runners(config, rust, config.aws_lambda.python.as_deref());
    Ok(Runtime::new(
        RuntimeConfig {
            workers: config.local_workers(),
            inline_result_bytes: config.execution.inline_result_bytes,
            // One event at a time per instance: nothing to queue behind.
            max_queued_calls: u64::MAX,
            commands,
            // Set by Lambda (and the emulator) to the function's memory.
            instance_memory_mb: std::env::var("AWS_LAMBDA_FUNCTION_MEMORY_SIZE")
                .ok()
                .and_then(|v| v.trim().parse().ok()),
            brokers: quelea_worker::push::BrokerUrls::from_config(config),
        },
        storage,
    ))
}

/// One event. An Invocation that cannot run gets a failed status per call
/// (so the client learns why at once; retrying it could not help) and a
/// normal return; only an undecodable event or a storage failure (worth
/// Lambda's own retry) is a handler error.
async fn handle(
    runtime: Arc<Runtime>,
    event: LambdaEvent<Value>,
) -> Result<Value, lambda_runtime::Error> {
    let body = serde_json::to_vec(&event.payload)?;
    let invocation = match Message::decode(&body) {
        Ok(Message::Invocation(invocation)) => invocation,
        Ok(_) => return Err("expected a quelea `invocation` message".into()),
        Err(e) => return Err(e.to_string().into()),
    };
    let answer = match runtime.accept(invocation.clone()).await {
        Ok(accepted) => {
            let calls = accepted.calls;
            // Lambda's deadline is in Unix milliseconds (0: not given).
            let now_ms = (quelea_core::model::now_ts() * 1000.0) as u64;
            let left = match event.context.deadline {
                0 => MAX_DURATION,
                deadline => Duration::from_millis(deadline.saturating_sub(now_ms))
                    .saturating_sub(FLUSH_MARGIN),
            };
            let finished = tokio::time::timeout(left, accepted.finished())
                .await
                .is_ok();
            json!({ "calls": calls, "finished": finished })
        }
        Err(refusal) if refusal.kind == RefusalKind::Storage => {
            return Err(refusal.message.into());
        }
        // Lambda delivers an event more than once now and then: the first
        // delivery claimed it, and its calls' statuses are its own.
        Err(refusal) if refusal.kind == RefusalKind::Duplicate => {
            return Ok(json!({ "calls": 0, "duplicate": refusal.message }));
        }
        Err(refusal) => {
            runtime.fail_calls(&invocation, "InvocationRefused", &refusal.message);
            json!({ "calls": invocation.calls.len(), "refused": refusal.message })
        }
    };
    let flusher = runtime.clone();
    let errors = tokio::task::spawn_blocking(move || flusher.flush()).await?;
    if let Some(first) = errors.first() {
        // The client would wait for statuses that never land: let Lambda retry.
        return Err(format!("cannot write call statuses: {first}").into());
    }
    Ok(answer)
}
