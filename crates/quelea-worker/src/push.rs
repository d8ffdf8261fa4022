//! Pushing status batches to a message broker, for clients that follow
//! their jobs with push monitoring (`monitoring: nats` or `rabbitmq`).
//!
//! Storage stays the truth: a batch is pushed only once it is stored, with
//! the same `StatusBatch` bytes and its storage key, and pushing never
//! blocks or fails a call. Batches go to one background task on the I/O
//! runtime through a bounded queue (when it is full the push is dropped;
//! the client's fallback listing still finds the batch). The task connects
//! to a broker on first use, with the URL from this worker's own config
//! (an Invocation names only the channel); a broker that cannot be reached
//! is reported once and tried again no more often than [`RECONNECT_PAUSE`].

use std::collections::HashSet;
use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::mpsc;

use quelea_core::config::{redact_url, Config, Secret};
use quelea_core::model::PushChannel;
use quelea_storage::io_runtime;

/// The header (NATS) or message id (RabbitMQ) carrying the batch's storage
/// key, so a client that applied a pushed batch skips reading it again.
pub const STATUS_KEY_HEADER: &str = "Quelea-Status-Key";

/// Pushes waiting for the broker; more are dropped (storage has them).
const QUEUE: usize = 4096;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(3);
/// After a failure, a broker is left alone this long.
const RECONNECT_PAUSE: Duration = Duration::from_secs(10);

/// The broker URLs a worker pushes to, from its own config.
#[derive(Clone, Debug, Default)]
pub struct BrokerUrls {
    pub nats: Option<Secret>,
    pub rabbitmq: Option<Secret>,
}

impl BrokerUrls {
    pub fn from_config(config: &Config) -> BrokerUrls {
        BrokerUrls {
            nats: config.nats.url.clone(),
            rabbitmq: config.rabbitmq.url.clone(),
        }
    }
}

enum Command {
    Publish {
        channel: PushChannel,
        key: String,
        body: Bytes,
    },
    /// Answered once every push queued before it has been tried.
    Drain(std_mpsc::SyncSender<()>),
}

/// Hands status batches to the brokers in the background.
pub struct Publisher {
    tx: mpsc::Sender<Command>,
}

impl Publisher {
    pub fn new(urls: BrokerUrls) -> Publisher {
        let (tx, rx) = mpsc::channel(QUEUE);
        io_runtime().spawn(publisher_main(urls, rx));
        Publisher { tx }
    }

    /// Queues one stored batch for pushing; never waits.
    pub fn publish(&self, channel: &PushChannel, key: String, body: Bytes) {
        let _ = self.tx.try_send(Command::Publish {
            channel: channel.clone(),
            key,
            body,
        });
    }

    /// Waits (up to `timeout`) until every batch queued so far has been
    /// pushed or given up on: a Lambda instance is frozen once its handler
    /// returns.
    pub fn drain(&self, timeout: Duration) {
        let (reply, done) = std_mpsc::sync_channel(1);
        let deadline = Instant::now() + timeout;
        let mut command = Command::Drain(reply);
        loop {
            match self.tx.try_send(command) {
                Ok(()) => break,
                Err(mpsc::error::TrySendError::Full(back)) if Instant::now() < deadline => {
                    command = back;
                    std::thread::sleep(Duration::from_millis(5));
                }
                Err(_) => return,
            }
        }
        let _ = done.recv_timeout(deadline.saturating_duration_since(Instant::now()));
    }
}

async fn publisher_main(urls: BrokerUrls, mut rx: mpsc::Receiver<Command>) {
    let mut nats = Link::new("nats", urls.nats);
    let mut rabbitmq = Link::new("rabbitmq", urls.rabbitmq);
    while let Some(command) = rx.recv().await {
        match command {
            Command::Publish { channel, key, body } => match &channel {
                PushChannel::Nats { subject } => {
                    nats.push(async |c: &mut NatsPublisher| c.publish(subject, &key, body).await)
                        .await
                }
                PushChannel::Rabbitmq {
                    exchange,
                    routing_key,
                } => {
                    rabbitmq
                        .push(async |c: &mut RabbitPublisher| {
                            c.publish(exchange, routing_key, &key, body).await
                        })
                        .await
                }
            },
            Command::Drain(reply) => {
                let _ = reply.send(());
            }
        }
    }
}

/// A connection to one broker, made on first use, dropped on failure.
trait Connect: Sized {
    async fn connect(url: &str) -> Result<Self, String>;
}

struct Link<C> {
    broker: &'static str,
    url: Option<Secret>,
    connection: Option<C>,
    paused_until: Option<Instant>,
    /// A failure was reported and nothing has succeeded since: stay quiet.
    reported: bool,
}

impl<C: Connect> Link<C> {
    fn new(broker: &'static str, url: Option<Secret>) -> Self {
        Link {
            broker,
            url,
            connection: None,
            paused_until: None,
            reported: false,
        }
    }

    async fn push<F>(&mut self, publish: F)
    where
        F: AsyncFnOnce(&mut C) -> Result<(), String>,
    {
        let Some(url) = self.url.clone() else {
            self.report(format!(
                "a job asks for {} push monitoring but this worker has no `{}.url`",
                self.broker, self.broker
            ));
            return;
        };
        if self.paused_until.is_some_and(|t| Instant::now() < t) {
            return;
        }
        if self.connection.is_none() {
            match tokio::time::timeout(CONNECT_TIMEOUT, C::connect(url.expose())).await {
                Ok(Ok(connection)) => self.connection = Some(connection),
                Ok(Err(e)) => return self.fail(&url, e),
                Err(_) => return self.fail(&url, "connection timed out".into()),
            }
        }
        let connection = self.connection.as_mut().expect("connected above");
        match tokio::time::timeout(PUBLISH_TIMEOUT, publish(connection)).await {
            Ok(Ok(())) => self.reported = false,
            Ok(Err(e)) => self.fail(&url, e),
            Err(_) => self.fail(&url, "publishing timed out".into()),
        }
    }

    fn fail(&mut self, url: &Secret, error: String) {
        self.connection = None;
        self.paused_until = Some(Instant::now() + RECONNECT_PAUSE);
        self.report(format!(
            "cannot push statuses to {} at {}: {error}",
            self.broker,
            redact_url(url.expose())
        ));
    }

    fn report(&mut self, message: String) {
        if !self.reported {
            self.reported = true;
            eprintln!("quelea: {message}; statuses go to storage only");
        }
    }
}

struct NatsPublisher {
    jetstream: async_nats::jetstream::Context,
}

impl Connect for NatsPublisher {
    async fn connect(url: &str) -> Result<Self, String> {
        let client = nats_connect(url, CONNECT_TIMEOUT).await?;
        Ok(NatsPublisher {
            jetstream: async_nats::jetstream::new(client),
        })
    }
}

impl NatsPublisher {
    async fn publish(&mut self, subject: &str, key: &str, body: Bytes) -> Result<(), String> {
        let mut headers = async_nats::HeaderMap::new();
        headers.insert(STATUS_KEY_HEADER, key);
        // The ack says the stream holds it (a subject no stream captures is
        // an error here, not a silent loss).
        self.jetstream
            .publish_with_headers(subject.to_owned(), headers, body)
            .await
            .map_err(|e| e.to_string())?
            .await
            .map_err(|e| e.to_string())?;
        Ok(())
    }
}

struct RabbitPublisher {
    connection: amqprs::connection::Connection,
    channel: amqprs::channel::Channel,
    declared: HashSet<String>,
}

impl Connect for RabbitPublisher {
    async fn connect(url: &str) -> Result<Self, String> {
        let (connection, channel) = rabbitmq_open(url).await?;
        Ok(RabbitPublisher {
            connection,
            channel,
            declared: HashSet::new(),
        })
    }
}

impl RabbitPublisher {
    async fn publish(
        &mut self,
        exchange: &str,
        routing_key: &str,
        key: &str,
        body: Bytes,
    ) -> Result<(), String> {
        use amqprs::channel::BasicPublishArguments;
        if !self.connection.is_open() || !self.channel.is_open() {
            return Err("the connection was closed".into());
        }
        if !self.declared.contains(exchange) {
            rabbitmq_declare_exchange(&self.channel, exchange).await?;
            self.declared.insert(exchange.to_owned());
        }
        self.channel
            .basic_publish(
                amqprs::BasicProperties::default()
                    .with_message_id(key)
                    .finish(),
                body.to_vec(),
                BasicPublishArguments::new(exchange, routing_key),
            )
            .await
            .map_err(|e| e.to_string())
    }
}

/// Connects to NATS, with the user and password (or token) of the URL:
/// async-nats does not take them from the URL itself.
pub async fn nats_connect(url: &str, timeout: Duration) -> Result<async_nats::Client, String> {
    let addr: async_nats::ServerAddr = url.parse().map_err(|e: std::io::Error| e.to_string())?;
    let mut options = async_nats::ConnectOptions::new().connection_timeout(timeout);
    match (addr.username(), addr.password()) {
        (Some(user), Some(password)) => {
            options = options.user_and_password(percent_decode(user), percent_decode(password))
        }
        (Some(token), None) => options = options.token(percent_decode(token)),
        _ => {}
    }
    options.connect(addr).await.map_err(|e| e.to_string())
}

/// Opens a RabbitMQ connection and one channel (shared with the client's
/// subscriber, which declares the same exchange).
pub async fn rabbitmq_open(
    url: &str,
) -> Result<(amqprs::connection::Connection, amqprs::channel::Channel), String> {
    use amqprs::connection::{Connection, OpenConnectionArguments};
    let mut args = OpenConnectionArguments::try_from(url).map_err(|e| e.to_string())?;
    // amqprs takes the vhost verbatim; the AMQP URI spec percent-encodes it
    // (`%2f` is the default vhost `/`).
    args.virtual_host(&amqp_vhost(url));
    let connection = Connection::open(&args).await.map_err(|e| e.to_string())?;
    let channel = connection
        .open_channel(None)
        .await
        .map_err(|e| e.to_string())?;
    Ok((connection, channel))
}

/// The vhost of an AMQP URI, percent-decoded; `/` when it names none.
fn amqp_vhost(url: &str) -> String {
    let after_scheme = url.split_once("://").map_or(url, |(_, rest)| rest);
    let path = after_scheme
        .split_once('/')
        .map_or("", |(_, path)| path)
        .split(['?', '#'])
        .next()
        .unwrap_or_default();
    if path.is_empty() {
        return "/".to_owned();
    }
    percent_decode(path)
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut decoded = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = bytes
            .get(i + 1..i + 3)
            .and_then(|h| std::str::from_utf8(h).ok())
            .and_then(|h| u8::from_str_radix(h, 16).ok());
        match (bytes[i], hex) {
            (b'%', Some(byte)) => {
                decoded.push(byte);
                i += 3;
            }
            (byte, _) => {
                decoded.push(byte);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&decoded).into_owned()
}

/// Declares the status exchange: direct and durable, the same arguments on
/// every side (RabbitMQ refuses a second declaration that differs).
pub async fn rabbitmq_declare_exchange(
    channel: &amqprs::channel::Channel,
    exchange: &str,
) -> Result<(), String> {
    use amqprs::channel::ExchangeDeclareArguments;
    channel
        .exchange_declare(
            ExchangeDeclareArguments::new(exchange, "direct")
                .durable(true)
                .finish(),
        )
        .await
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn amqp_vhosts_are_percent_decoded() {
        assert_eq!(amqp_vhost("amqp://u:p@127.0.0.1:5672/%2f"), "/");
        assert_eq!(amqp_vhost("amqp://u:p@127.0.0.1:5672/%2Fjobs"), "/jobs");
        assert_eq!(
            amqp_vhost("amqp://u:p@127.0.0.1:5672/batch?heartbeat=5"),
            "batch"
        );
        assert_eq!(amqp_vhost("amqp://u:p@127.0.0.1:5672"), "/");
        assert_eq!(amqp_vhost("amqp://u:p@127.0.0.1:5672/"), "/");
        assert_eq!(percent_decode("p%40ss%3Aword"), "p@ss:word");
        assert_eq!(percent_decode("100%"), "100%");
    }
}
