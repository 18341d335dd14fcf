//! Publishing jobs: persistent, `mandatory`, with publisher confirms. A
//! job counts as published only when the broker confirmed it; a nack or an
//! unroutable return is an error the caller sees, never silence.

use exploder_common::job::{self, Job};
use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, ExchangeDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, ShortString};
use lapin::{BasicProperties, Channel, Connection};

use crate::topology::Topology;

#[derive(Debug, thiserror::Error)]
pub enum PublishError {
    #[error(
        "the exchange {exchange} does not exist (run `exploder topology apply` with the same \
         EXPLODER_PREFIX)"
    )]
    NoTopology { exchange: String },
    #[error("opening a publishing channel: {0}")]
    Channel(#[source] lapin::Error),
    #[error("the broker did not confirm job {id}: {reason}")]
    Nacked { id: String, reason: String },
    #[error(
        "job {id} could not be routed to {queue}: the queue does not exist \
         (run `exploder topology apply` with the same EXPLODER_PREFIX)"
    )]
    Unroutable { id: String, queue: String },
    #[error("publishing job {id}: {source}")]
    Broker {
        id: String,
        #[source]
        source: lapin::Error,
    },
}

/// A channel in confirm mode for one fleet's topology.
pub struct Publisher {
    channel: Channel,
    topology: Topology,
}

impl Publisher {
    /// Opens a confirm-mode channel, after checking (on a throwaway
    /// channel: a failed check closes it) that the work exchange exists.
    pub async fn open(conn: &Connection, topology: Topology) -> Result<Publisher, PublishError> {
        let exchange = topology.work_exchange();
        let probe = conn.create_channel().await.map_err(PublishError::Channel)?;
        let exists = probe
            .exchange_declare(
                ShortString::from(exchange.as_str()),
                lapin::ExchangeKind::Direct,
                ExchangeDeclareOptions {
                    passive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await;
        if exists.is_err() {
            return Err(PublishError::NoTopology { exchange });
        }
        let _ = probe.close(200, "probe done".into()).await;
        let channel = conn.create_channel().await.map_err(PublishError::Channel)?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(PublishError::Channel)?;
        Ok(Publisher { channel, topology })
    }

    /// Publishes one job and waits for the broker's confirm.
    pub async fn publish(&self, job: &Job) -> Result<(), PublishError> {
        let id = job.id().to_string();
        let broker = |source| PublishError::Broker {
            id: id.clone(),
            source,
        };
        let mut headers = FieldTable::default();
        headers.insert(
            job::SCHEMA_HEADER.into(),
            AMQPValue::ShortUInt(job::SCHEMA_VERSION),
        );
        let properties = BasicProperties::default()
            .with_delivery_mode(2)
            .with_content_type(ShortString::from(job::CONTENT_TYPE))
            .with_message_id(ShortString::from(id.as_str()))
            .with_headers(headers);
        let kind = job.kind();
        let confirm = self
            .channel
            .basic_publish(
                ShortString::from(self.topology.work_exchange().as_str()),
                ShortString::from(kind.as_str()),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &job::encode(job),
                properties,
            )
            .await
            .map_err(broker)?
            .await
            .map_err(broker)?;
        let acked = confirm.is_ack();
        if confirm.take_message().is_some() {
            return Err(PublishError::Unroutable {
                id,
                queue: self.topology.work_queue(kind),
            });
        }
        if !acked {
            return Err(PublishError::Nacked {
                id,
                reason: "nack (the broker could not store it)".into(),
            });
        }
        Ok(())
    }
}
