//! Push monitoring (`monitoring: nats` and `monitoring: rabbitmq`) with the
//! `http` backend, against real worker servers (`quelea worker serve`) and
//! real brokers: NATS with JetStream and RabbitMQ, started by
//! scripts/brokers.sh, whose URLs (with a user and password) come in
//! `QTEST_NATS_URL` and `QTEST_RABBITMQ_URL`. Job storage is a local
//! directory shared with the servers, or S3 with `QTEST_STORAGE=s3` (its
//! `QUELEA_S3_*` variables from the environment).
//!
//! The conformance set (`quelea_conformance`) runs once per broker, then the
//! tests of push itself. Built only with the `push-tests` feature; without
//! the two URLs every test fails (it never skips).

mod common;

use std::time::{Duration, Instant};

use common::{storage_builder, WorkerServer};
use libtest_mimic::{Arguments, Failed, Trial};
use quelea::core::keys::JobKeys;
use quelea::core::model::{JobSpec, PushChannel};
use quelea::{ConfigBuilder, Error, Executor, MapOptions};
use quelea_conformance::{check, Backend, WAIT};

const SECRET: &str = "test-secret-of-the-push-tests";
/// A broker URL nothing listens on, with a password that must never show.
const DEAD_PASSWORD: &str = "dead-broker-password-9c1";

#[derive(Clone, Copy, Debug)]
enum Broker {
    Nats,
    Rabbitmq,
}

impl Broker {
    fn name(self) -> &'static str {
        match self {
            Broker::Nats => "nats",
            Broker::Rabbitmq => "rabbitmq",
        }
    }

    fn url(self) -> String {
        let var = match self {
            Broker::Nats => "QTEST_NATS_URL",
            Broker::Rabbitmq => "QTEST_RABBITMQ_URL",
        };
        std::env::var(var).unwrap_or_else(|_| {
            panic!("{var} is not set: start the brokers with scripts/brokers.sh")
        })
    }

    /// The password inside the real URL.
    fn password(self) -> String {
        let url = self.url();
        let userinfo = url.split('@').next().unwrap_or_default();
        userinfo.rsplit(':').next().unwrap_or_default().to_owned()
    }

    fn dead_url(self) -> String {
        // Port 9 (discard) on loopback: refused at once.
        match self {
            Broker::Nats => format!("nats://quelea:{DEAD_PASSWORD}@127.0.0.1:9"),
            Broker::Rabbitmq => format!("amqp://quelea:{DEAD_PASSWORD}@127.0.0.1:9/%2f"),
        }
    }
}

/// A worker server that pushes statuses to these brokers.
fn push_server(dir: &std::path::Path, name: &str, nats: &str, rabbitmq: &str) -> WorkerServer {
    WorkerServer::start(
        dir,
        name,
        SECRET,
        "{}\n",
        &[("QUELEA_NATS_URL", nats), ("QUELEA_RABBITMQ_URL", rabbitmq)],
    )
}

struct Fixture {
    dir: tempfile::TempDir,
    /// Servers that push to the real brokers.
    urls: Vec<String>,
    /// A server whose broker URLs lead nowhere: it can only write storage.
    deaf: String,
}

impl Fixture {
    fn builder(&self, broker: Broker, urls: &[String]) -> ConfigBuilder {
        storage_builder(self.dir.path())
            .set("backend", "http")
            .set("http.urls", urls.to_vec())
            .set("http.secret", SECRET)
            .set("monitoring", broker.name())
            .set(&format!("{}.url", broker.name()), broker.url())
    }
}

/// With the storage fallback listing 10 minutes apart, storage is listed
/// once, when the job starts (before any call has run): only pushed
/// batches can finish the job in seconds.
fn results_arrive_through_push(fx: &Fixture, broker: Broker) -> Result<(), Failed> {
    let b = quelea_cli::builtins();
    let config = fx
        .builder(broker, &fx.urls)
        .set("push_fallback_interval", 600.0)
        .build()?;
    let exec = Executor::with_config(config)?;
    let started = Instant::now();
    // Each call sleeps 300 ms, so nothing is stored at the first listing.
    let futures = exec.map(
        &b.square,
        (0..20u64).map(|x| (x, 300)),
        MapOptions::default(),
    )?;
    let results = exec.get_result(&futures, Some(Duration::from_secs(60)))?;
    check(
        results == (0..20u64).map(|x| x * x).collect::<Vec<_>>(),
        format!("{results:?}"),
    )?;
    check(
        started.elapsed() < Duration::from_secs(30),
        format!("took {:?}", started.elapsed()),
    )?;

    // The control: the same on the server that cannot push. Its calls end
    // in well under a second, but with no push nothing tells the client.
    let config = fx
        .builder(broker, std::slice::from_ref(&fx.deaf))
        .set("push_fallback_interval", 600.0)
        .build()?;
    let exec = Executor::with_config(config)?;
    let futures = exec.map(
        &b.square,
        (0..4u64).map(|x| (x, 300)),
        MapOptions::default(),
    )?;
    let waited = exec.get_result(&futures, Some(Duration::from_secs(4)));
    check(
        matches!(waited, Err(Error::Timeout { .. })),
        format!("without push: {waited:?}"),
    )
}

/// A worker that cannot reach the broker still runs the calls; the client
/// learns of them from its storage listing.
fn a_worker_that_cannot_push_still_completes_calls(
    fx: &Fixture,
    broker: Broker,
) -> Result<(), Failed> {
    let b = quelea_cli::builtins();
    let config = fx
        .builder(broker, std::slice::from_ref(&fx.deaf))
        .set("push_fallback_interval", 0.5)
        .build()?;
    let exec = Executor::with_config(config)?;
    let futures = exec.map(&b.square, (0..10u64).map(|x| (x, 0)), MapOptions::default())?;
    let results = exec.get_result(&futures, Some(Duration::from_secs(60)))?;
    check(
        results == (0..10u64).map(|x| x * x).collect::<Vec<_>>(),
        format!("{results:?}"),
    )
}

/// A broker that is down at submit time is an error naming it, password
/// redacted, and the job runs nothing.
fn broker_down_is_a_clear_error(fx: &Fixture, broker: Broker) -> Result<(), Failed> {
    let b = quelea_cli::builtins();
    let config = fx
        .builder(broker, &fx.urls)
        .set(&format!("{}.url", broker.name()), broker.dead_url())
        .build()?;
    let exec = Executor::with_config(config)?;
    let started = Instant::now();
    let err = exec
        .map(&b.square, [(1u64, 0u64)], MapOptions::default())
        .err()
        .ok_or("submitting succeeded with the broker down")?;
    let text = err.to_string();
    check(
        matches!(err, Error::Monitor { .. }),
        format!("not a monitor error: {text}"),
    )?;
    check(
        text.contains(broker.name())
            && text.contains("127.0.0.1:9")
            && text.contains("<redacted>")
            && !text.contains(DEAD_PASSWORD),
        text.clone(),
    )?;
    check(
        started.elapsed() < Duration::from_secs(10),
        format!("took {:?}", started.elapsed()),
    )?;
    let leftovers = exec.storage().list_blocking(&format!(
        "{}jobs/",
        quelea::core::keys::executor_prefix(exec.id())
    ))?;
    check(leftovers.is_empty(), format!("objects left: {leftovers:?}"))
}

/// The job's objects and its handle name the channel, never a broker URL
/// or password.
fn no_secret_in_job_objects_or_handles(fx: &Fixture, broker: Broker) -> Result<(), Failed> {
    let b = quelea_cli::builtins();
    let config = fx
        .builder(broker, &fx.urls)
        .set("execution.data_cleaner", false)
        .build()?;
    let exec = Executor::with_config(config)?;
    let futures = exec.map(&b.square, (0..5u64).map(|x| (x, 0)), MapOptions::default())?;
    let handle = exec.job_handle(&futures.get(0).unwrap());
    exec.get_result(&futures, WAIT)?;
    let keys = JobKeys::new(exec.id(), futures.get(0).unwrap().job_id());
    let storage = exec.storage();
    let spec: JobSpec = serde_json::from_slice(&storage.get_blocking(&keys.spec())?)?;
    let channel_ok = match (&spec.push, broker) {
        (Some(PushChannel::Nats { subject }), Broker::Nats) => {
            subject == &format!("quelea.status.{}.{}", spec.executor_id, spec.job_id)
        }
        (
            Some(PushChannel::Rabbitmq {
                exchange,
                routing_key,
            }),
            Broker::Rabbitmq,
        ) => {
            exchange == "quelea.status"
                && routing_key == &format!("{}.{}", spec.executor_id, spec.job_id)
        }
        _ => false,
    };
    check(channel_ok, format!("the spec's channel: {:?}", spec.push))?;
    let password = broker.password();
    check(!password.is_empty(), "the test URL has a password")?;
    let mut texts = vec![handle.to_json()];
    for object in storage.list_blocking(keys.prefix())? {
        texts.push(String::from_utf8_lossy(&storage.get_blocking(&object.key)?).into_owned());
    }
    check(texts.len() > 2, format!("{} objects read", texts.len()))?;
    for text in &texts {
        check(
            !text.contains(&password) && !text.contains("nats://") && !text.contains("amqp://"),
            format!("a secret in `{text}`"),
        )?;
    }
    exec.clean()?;
    Ok(())
}

fn main() {
    quelea_conformance::serve_second_client_if_asked();
    let args = Arguments::from_args();
    let dir = tempfile::tempdir().unwrap();
    let servers: Vec<WorkerServer> = (0..2)
        .map(|i| {
            let (nats, rabbitmq) = (Broker::Nats.url(), Broker::Rabbitmq.url());
            push_server(dir.path(), &format!("push{i}"), &nats, &rabbitmq)
        })
        .collect();
    let deaf = push_server(
        dir.path(),
        "deaf",
        &Broker::Nats.dead_url(),
        &Broker::Rabbitmq.dead_url(),
    );
    let fx = std::sync::Arc::new(Fixture {
        urls: servers.iter().map(|s| s.url.clone()).collect(),
        deaf: deaf.url.clone(),
        dir,
    });
    type Test = fn(&Fixture, Broker) -> Result<(), Failed>;
    let tests: &[(&str, Test)] = &[
        ("results_arrive_through_push", results_arrive_through_push),
        (
            "a_worker_that_cannot_push_still_completes_calls",
            a_worker_that_cannot_push_still_completes_calls,
        ),
        ("broker_down_is_a_clear_error", broker_down_is_a_clear_error),
        (
            "no_secret_in_job_objects_or_handles",
            no_secret_in_job_objects_or_handles,
        ),
    ];
    let mut trials: Vec<Trial> = [Broker::Nats, Broker::Rabbitmq]
        .into_iter()
        .flat_map(|broker| tests.iter().map(move |&(name, test)| (broker, name, test)))
        .map(|(broker, name, test)| {
            let fx = fx.clone();
            Trial::test(format!("{}::{name}", broker.name()), move || {
                test(&fx, broker)
            })
        })
        .collect();
    // Everything every backend must do, again with statuses pushed.
    for (broker, name) in [
        (Broker::Nats, "http+nats"),
        (Broker::Rabbitmq, "http+rabbitmq"),
    ] {
        let fx = fx.clone();
        trials.extend(quelea_conformance::trials(&Backend {
            name,
            config: std::sync::Arc::new(move || fx.builder(broker, &fx.urls)),
            rust_runner: None,
        }));
    }
    let conclusion = libtest_mimic::run(&args, trials);
    for server in servers {
        server.stop();
    }
    deaf.stop();
    conclusion.exit();
}
