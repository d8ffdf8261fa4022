//! quelea: run ordinary functions a thousand at a time and bring the results
//! back in order.
//!
//! ```no_run
//! let mut functions = quelea::Functions::new();
//! let add7 = functions.register("add7", |x: i64| x + 7);
//! // Started by the pool as a runner, the binary serves calls and exits here.
//! quelea::serve_if_runner(&functions);
//!
//! let executor = quelea::Executor::new()?;
//! let futures = executor.map(&add7, [1, 2, 3, 4], quelea::MapOptions::default())?;
//! assert_eq!(executor.get_result(&futures, None)?, vec![8, 9, 10, 11]);
//! # Ok::<(), quelea::Error>(())
//! ```

mod backend;
mod detached;
mod error;
mod executor;
mod future;
mod handle;
pub mod interrupt;
mod job;
pub mod lambda_api;
mod monitor;
pub mod objects;
mod push;
mod retry;
pub mod summary;

pub use detached::{host_lease_with, job_leases_with, serve_host, HostLease, LEASE_INTERVAL};
pub use error::{Error, Result};
pub use executor::{
    cancel, get_result, groups_of, wait, wait_until, Batches, DoneAndPending, Executor,
    ExecutorBuilder, InputFeed, MapOptions, Parts, Raw, RawFunction, FIRST_PART_BYTES,
    MAX_PART_BYTES, MAX_PART_CALLS,
};
pub use future::{FuturesList, ResponseFuture, ReturnWhen};
pub use handle::JobHandle;
pub use job::{CallsSummary, Piece};
pub use monitor::{attach, attach_with, clean_job_with};
pub use quelea_core::config::{BackendKind, Config, ConfigBuilder, StartMethod};
pub use quelea_core::ids::{CallId, ExecutorId, JobId, JobKind};
pub use quelea_core::model::{CallError, CallState, CallStats, FailureReason, Output, RunnerKind};
pub use quelea_worker::pool::{ForkedRunner, RunnerCommand};
pub use quelea_worker::rust_runner::{is_runner, FunctionRef, Functions};

/// Call first thing in `main`: started by the pool as a runner, this
/// process serves `functions` and exits; started as the host of detached
/// jobs (see [`MapOptions::detach`]), it serves them and exits; otherwise
/// it returns and the program goes on as a driver.
pub fn serve_if_runner(functions: &Functions) {
    if std::env::var(quelea_core::config::EnvVars::RUNNER).as_deref() == Ok(detached::HOST_MODE) {
        std::process::exit(detached::serve_host());
    }
    quelea_worker::rust_runner::serve_if_runner(functions);
}
pub use summary::{JobSummary, LambdaCost};

/// The layers below, for tools that need them (the CLI, benchmarks).
pub mod core {
    pub use quelea_core::*;
}
pub mod storage {
    pub use quelea_storage::*;
}
pub mod partition {
    pub use quelea_partition::*;
}
pub mod worker {
    pub use quelea_worker::*;
}
