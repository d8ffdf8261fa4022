//! Push monitoring, client side (`monitoring: nats` or `rabbitmq`): the
//! channel a job's workers push its status batches to, and the subscription
//! the monitor reads them from.
//!
//! A job is subscribed to before any of its Invocations is sent, so no
//! batch is pushed before someone listens: NATS through an ordered,
//! ephemeral JetStream consumer of the job's subject (delivering from the
//! stream's start), RabbitMQ through an exclusive queue of the client's own,
//! bound to the job's routing key. A broker that cannot be reached at
//! submit time is an error naming it (URL redacted): the user asked for
//! push. Once subscribed, the broker is only a shortcut: the monitor keeps
//! listing storage, slowly, so a lost message or a broker that dies later
//! never loses a call.

use std::sync::mpsc as std_mpsc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::oneshot;

use quelea_core::config::{redact_url, Config, MonitoringKind, Secret};
use quelea_core::ids::{ExecutorId, JobId};
use quelea_core::model::PushChannel;
use quelea_storage::io_runtime;
use quelea_worker::push::{
    nats_connect, rabbitmq_declare_exchange, rabbitmq_open, STATUS_KEY_HEADER,
};

use crate::error::{Error, Result};

/// Connecting and subscribing must be done within this.
const SUBSCRIBE_TIMEOUT: Duration = Duration::from_secs(5);
/// Closing a RabbitMQ subscription is given this long.
const CLOSE_TIMEOUT: Duration = Duration::from_secs(2);
/// A consumer that errs waits this long before reading again.
const ERROR_PAUSE: Duration = Duration::from_millis(200);

/// The channel a job's statuses are pushed to under `config`, if any.
pub(crate) fn channel_for(
    config: &Config,
    executor_id: &ExecutorId,
    job_id: JobId,
) -> Option<PushChannel> {
    match config.monitoring {
        MonitoringKind::Storage => None,
        MonitoringKind::Nats => Some(PushChannel::Nats {
            subject: format!("{}.{executor_id}.{job_id}", config.nats.subject_prefix),
        }),
        MonitoringKind::Rabbitmq => Some(PushChannel::Rabbitmq {
            exchange: config.rabbitmq.exchange.clone(),
            routing_key: format!("{executor_id}.{job_id}"),
        }),
    }
}

/// One pushed status batch: the `StatusBatch` message bytes as stored, and
/// their storage key when the worker sent it.
pub(crate) struct Pushed {
    pub key: Option<String>,
    pub body: Vec<u8>,
}

/// A live subscription to one job's channel; dropping it unsubscribes and
/// closes the connection.
pub(crate) struct Subscription {
    batches: std_mpsc::Receiver<Pushed>,
    _stop: oneshot::Sender<()>,
}

impl Subscription {
    /// Connects and subscribes; returns once the broker would deliver.
    pub fn open(config: &Config, channel: &PushChannel) -> Result<Subscription> {
        let (tx, batches) = std_mpsc::channel();
        let (stop, stopped) = oneshot::channel();
        let (broker, url) = match channel {
            PushChannel::Nats { .. } => ("nats", config.nats.url.as_ref()),
            PushChannel::Rabbitmq { .. } => ("rabbitmq", config.rabbitmq.url.as_ref()),
        };
        let url = url.ok_or_else(|| Error::Monitor {
            broker,
            url: "(unset)".into(),
            message: format!("`{broker}.url` is not set"),
        })?;
        let failed = |message: String| Error::Monitor {
            broker,
            url: redact_url(url.expose()),
            message,
        };
        // The timer is made inside the runtime, which it needs.
        let subscribed = io_runtime().block_on(async {
            tokio::time::timeout(
                SUBSCRIBE_TIMEOUT,
                subscribe(config, url, channel, tx, stopped),
            )
            .await
        });
        match subscribed {
            Ok(Ok(())) => Ok(Subscription {
                batches,
                _stop: stop,
            }),
            Ok(Err(message)) => Err(failed(message)),
            Err(_) => Err(failed(format!(
                "no answer within {} s",
                SUBSCRIBE_TIMEOUT.as_secs()
            ))),
        }
    }

    /// Every batch pushed so far, waiting up to `wait` for the first.
    pub fn next_batches(&self, wait: Duration) -> Vec<Pushed> {
        let deadline = Instant::now() + wait;
        let mut batches = Vec::new();
        match self
            .batches
            .recv_timeout(deadline.saturating_duration_since(Instant::now()))
        {
            Ok(first) => batches.push(first),
            Err(std_mpsc::RecvTimeoutError::Timeout) => return batches,
            // The consumer task ended (broker gone): storage carries on.
            Err(std_mpsc::RecvTimeoutError::Disconnected) => {
                std::thread::sleep(deadline.saturating_duration_since(Instant::now()));
                return batches;
            }
        }
        batches.extend(self.batches.try_iter());
        batches
    }
}

/// Subscribes, then leaves a task forwarding batches until `stopped`.
async fn subscribe(
    config: &Config,
    url: &Secret,
    channel: &PushChannel,
    tx: std_mpsc::Sender<Pushed>,
    stopped: oneshot::Receiver<()>,
) -> std::result::Result<(), String> {
    match channel {
        PushChannel::Nats { subject } => {
            let messages = nats_subscribe(config, url, subject).await?;
            io_runtime().spawn(nats_forward(messages, tx, stopped));
        }
        PushChannel::Rabbitmq {
            exchange,
            routing_key,
        } => {
            let consumer = rabbitmq_subscribe(url, exchange, routing_key).await?;
            io_runtime().spawn(rabbitmq_forward(consumer, tx, stopped));
        }
    }
    Ok(())
}

async fn nats_subscribe(
    config: &Config,
    url: &Secret,
    subject: &str,
) -> std::result::Result<async_nats::jetstream::consumer::pull::Ordered, String> {
    use async_nats::jetstream::{self, consumer, stream};
    let client = nats_connect(url.expose(), SUBSCRIBE_TIMEOUT).await?;
    let jetstream = jetstream::new(client);
    let nats = &config.nats;
    let stream = jetstream
        .get_or_create_stream(stream::Config {
            name: nats.stream.clone(),
            subjects: vec![format!("{}.>", nats.subject_prefix)],
            max_age: Duration::from_secs_f64(nats.max_age),
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cannot create the stream `{}`: {e}", nats.stream))?;
    let consumer = stream
        .create_consumer(consumer::pull::OrderedConfig {
            filter_subject: subject.to_owned(),
            deliver_policy: consumer::DeliverPolicy::All,
            ..Default::default()
        })
        .await
        .map_err(|e| format!("cannot consume `{subject}`: {e}"))?;
    consumer.messages().await.map_err(|e| e.to_string())
}

async fn nats_forward(
    mut messages: async_nats::jetstream::consumer::pull::Ordered,
    tx: std_mpsc::Sender<Pushed>,
    mut stopped: oneshot::Receiver<()>,
) {
    loop {
        let message = tokio::select! {
            _ = &mut stopped => return,
            message = messages.next() => message,
        };
        match message {
            Some(Ok(message)) => {
                let key = message
                    .headers
                    .as_ref()
                    .and_then(|h| h.get(STATUS_KEY_HEADER))
                    .map(|v| v.to_string());
                let pushed = Pushed {
                    key,
                    body: message.payload.to_vec(),
                };
                if tx.send(pushed).is_err() {
                    return;
                }
            }
            // The ordered consumer recreates itself after errors; storage
            // covers whatever it misses meanwhile.
            Some(Err(_)) => tokio::time::sleep(ERROR_PAUSE).await,
            None => return,
        }
    }
}

struct RabbitConsumer {
    connection: amqprs::connection::Connection,
    channel: amqprs::channel::Channel,
    deliveries: tokio::sync::mpsc::UnboundedReceiver<amqprs::channel::ConsumerMessage>,
}

async fn rabbitmq_subscribe(
    url: &Secret,
    exchange: &str,
    routing_key: &str,
) -> std::result::Result<RabbitConsumer, String> {
    use amqprs::channel::{BasicConsumeArguments, QueueBindArguments, QueueDeclareArguments};
    let (connection, channel) = rabbitmq_open(url.expose()).await?;
    rabbitmq_declare_exchange(&channel, exchange).await?;
    let (queue, _, _) = channel
        .queue_declare(
            QueueDeclareArguments::exclusive_server_named()
                .auto_delete(true)
                .finish(),
        )
        .await
        .map_err(|e| e.to_string())?
        .ok_or("the broker named no queue")?;
    channel
        .queue_bind(QueueBindArguments::new(&queue, exchange, routing_key))
        .await
        .map_err(|e| e.to_string())?;
    let (_, deliveries) = channel
        .basic_consume_rx(
            BasicConsumeArguments::new(&queue, "")
                .manual_ack(false)
                .finish(),
        )
        .await
        .map_err(|e| e.to_string())?;
    Ok(RabbitConsumer {
        connection,
        channel,
        deliveries,
    })
}

async fn rabbitmq_forward(
    mut consumer: RabbitConsumer,
    tx: std_mpsc::Sender<Pushed>,
    mut stopped: oneshot::Receiver<()>,
) {
    loop {
        let delivery = tokio::select! {
            _ = &mut stopped => break,
            delivery = consumer.deliveries.recv() => delivery,
        };
        let Some(delivery) = delivery else { break };
        let pushed = Pushed {
            key: delivery
                .basic_properties
                .as_ref()
                .and_then(|p| p.message_id().cloned()),
            body: delivery.content.unwrap_or_default(),
        };
        if tx.send(pushed).is_err() {
            break;
        }
    }
    // Closing deletes the exclusive queue at once; a dead broker gets no
    // more than CLOSE_TIMEOUT (dropping the connection ends it anyway).
    let close = async {
        let _ = consumer.channel.close().await;
        let _ = consumer.connection.close().await;
    };
    let _ = tokio::time::timeout(CLOSE_TIMEOUT, close).await;
}
