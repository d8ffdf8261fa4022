//! Job summaries: per job, its calls, outcomes and timing, and for jobs of
//! the `aws_lambda` backend the compute they were billed for (GB-seconds)
//! and an estimated price.
//!
//! The estimate is the sum over calls of run time × the memory of the
//! instance that ran it (from the call's stats, as the bootstrap read it
//! from Lambda; else `aws_lambda.memory_mb`), at the published x86 price,
//! plus the request charge for each Invocation (one per `chunksize` calls).
//! It leaves out what quelea cannot see from the client: billing rounds each
//! Invocation up to the millisecond and also counts its start-up and status
//! writes, the free tier, ARM pricing and regional differences.

use std::collections::BTreeMap;

use quelea_core::config::{BackendKind, Config};
use serde::Serialize;

use crate::future::FuturesList;

/// x86 Lambda compute price, USD per GB-second (us-east-1, first tier).
pub const LAMBDA_USD_PER_GB_SECOND: f64 = 0.000_016_666_7;
/// Lambda request price, USD per invocation ($0.20 per million).
pub const LAMBDA_USD_PER_REQUEST: f64 = 0.20 / 1_000_000.0;

/// One job's summary.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct JobSummary {
    /// `<executor_id>-<job_id>`.
    pub job_key: String,
    pub function: String,
    pub calls: usize,
    pub success: usize,
    pub error: usize,
    /// First call start to last call end, in seconds, once any ran.
    pub wall_time_s: Option<f64>,
    /// The sum of the calls' run times, in seconds.
    pub total_exec_time_s: f64,
    /// For `aws_lambda` jobs.
    pub cost: Option<LambdaCost>,
}

/// What a Lambda job cost, estimated.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LambdaCost {
    /// The memory the calls ran with (the largest, if they differ).
    pub memory_mb: u32,
    pub invocations: u64,
    /// Σ call run time (s) × its memory (MB) / 1024.
    pub gb_seconds: f64,
    /// GB-seconds and requests at the x86 list price, in USD.
    pub estimated_usd: f64,
}

impl LambdaCost {
    /// The cost of `invocations` Invocations whose calls ran
    /// `(seconds, memory_mb)` each.
    pub fn estimate(invocations: u64, calls: impl IntoIterator<Item = (f64, u32)>) -> LambdaCost {
        let mut memory_mb = 0;
        let mut gb_seconds = 0.0;
        for (seconds, memory) in calls {
            gb_seconds += seconds.max(0.0) * f64::from(memory) / 1024.0;
            memory_mb = memory_mb.max(memory);
        }
        LambdaCost {
            memory_mb,
            invocations,
            gb_seconds,
            estimated_usd: gb_seconds * LAMBDA_USD_PER_GB_SECOND
                + invocations as f64 * LAMBDA_USD_PER_REQUEST,
        }
    }
}

/// Summaries of the jobs `futures` belong to, in job order; `config` is the
/// executor's (it says whether, and at what memory, calls ran on Lambda).
/// The Lambda cost estimate of these futures' (first) job; `None` on other
/// backends, without reading any call: only Lambda's calls have a price.
pub fn lambda_cost<O>(config: &Config, futures: &FuturesList<O>) -> Option<LambdaCost> {
    if config.backend != BackendKind::AwsLambda {
        return None;
    }
    job_summary(config, futures).into_iter().next()?.cost
}

pub fn job_summary<O>(config: &Config, futures: &FuturesList<O>) -> Vec<JobSummary> {
    let mut jobs: BTreeMap<String, Vec<_>> = BTreeMap::new();
    for future in futures.iter() {
        jobs.entry(future.job.job_key()).or_default().push(future);
    }
    jobs.into_iter()
        .map(|(job_key, futures)| {
            let spec = &futures[0].job.spec;
            let stats: Vec<_> = futures.iter().map(|f| f.stats()).collect();
            let runs: Vec<(f64, Option<u32>)> = stats
                .iter()
                .filter_map(|s| Some((s.end_ts? - s.start_ts?, s.memory_mb)))
                .collect();
            let start = stats.iter().filter_map(|s| s.start_ts).reduce(f64::min);
            let end = stats.iter().filter_map(|s| s.end_ts).reduce(f64::max);
            let cost = (config.backend == BackendKind::AwsLambda).then(|| {
                // Invocations group `chunksize` consecutive calls of the job.
                let chunk = u64::from(spec.chunksize.max(1));
                LambdaCost::estimate(
                    u64::from(spec.total_calls).div_ceil(chunk),
                    runs.iter()
                        .map(|&(d, m)| (d, m.unwrap_or(config.aws_lambda.memory_mb))),
                )
            });
            JobSummary {
                job_key,
                function: spec.function.name.clone(),
                calls: futures.len(),
                success: futures.iter().filter(|f| f.success()).count(),
                error: futures.iter().filter(|f| f.error()).count(),
                wall_time_s: start.zip(end).map(|(s, e)| e - s),
                total_exec_time_s: runs.iter().map(|(d, _)| d).sum(),
                cost,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lambda_cost_is_gb_seconds_at_list_price_plus_requests() {
        // 1,000 calls of 2 s at 2048 MB, one Invocation each.
        let cost = LambdaCost::estimate(1000, std::iter::repeat_n((2.0, 2048), 1000));
        assert!((cost.gb_seconds - 4000.0).abs() < 1e-9);
        let expected = 4000.0 * 0.000_016_666_7 + 1000.0 * 0.000_000_2;
        assert!((cost.estimated_usd - expected).abs() < 1e-12, "{cost:?}");
        assert!((cost.estimated_usd - 0.066_866_8).abs() < 1e-9);
        // Negative spans (clock skew between hosts) count as nothing.
        let cost = LambdaCost::estimate(1, [(0.5, 1024), (-0.1, 1024)]);
        assert!((cost.gb_seconds - 0.5).abs() < 1e-12);
        // Each call at its own memory; the largest is reported.
        let cost = LambdaCost::estimate(2, [(1.0, 512), (1.0, 2048)]);
        assert!((cost.gb_seconds - 2.5).abs() < 1e-12 && cost.memory_mb == 2048);
    }
}
