//! quelea's worker runtime as an AWS Lambda function: the bootstrap of a
//! custom runtime (`provided.al2023`), on the `lambda_runtime` crate.
//!
//! Each event is one quelea Invocation (the JSON the `aws_lambda` backend
//! sends). It runs on the same worker runtime as `quelea worker serve`
//! (`quelea_worker::runtime`; the bootstrap depends on the worker crates
//! only, not on the client): function and inputs from storage, calls on
//! warm runner processes, statuses to storage. Unlike the HTTP server, the
//! handler returns only once its calls have finished and their statuses are
//! written, because Lambda freezes the process when the handler returns.
//!
//! A bootstrap binary registers its Rust functions and hands over:
//!
//! ```no_run
//! let mut functions = quelea_worker::rust_runner::Functions::new();
//! functions.register("add7", |x: i64| x + 7);
//! quelea_lambda::serve(&functions).expect("the Lambda runtime runs");
//! ```
//!
//! The same binary is the Rust runner (the same-binary model), and with
//! `aws_lambda.python` (`QUELEA_AWS_LAMBDA_PYTHON`) set it also serves
//! Python functions through `python -m quelea.worker` runners. Storage
//! settings and credentials come from the function's own environment
//! (`QUELEA_STORAGE`, `QUELEA_BUCKET`, `QUELEA_S3_*`, or the execution role's
//! `AWS_*` variables), never from the event.

// Deploying uses the client's Lambda API client (feature `deploy`).
#[cfg(feature = "deploy")]
pub mod deploy;

// The bootstrap needs `lambda_runtime`; deploying (the `quelea` CLI) does not.
#[cfg(feature = "runtime")]
mod bootstrap;
#[cfg(feature = "runtime")]
pub use bootstrap::*;
