//! Queue names and declaration arguments.
//!
//! Every work queue `q` is declared durable with dead-lettering to the default exchange under
//! routing key `q.dead`, and `q.dead` is declared beside it without dead-lettering of its own.
//! The default exchange routes a key to the queue of the same name, so no exchange or binding
//! has to be declared, and `reject` (`basic.reject`, `requeue = false`) lands in `q.dead`.
//!
//! RabbitMQ refuses (PRECONDITION_FAILED) a second declaration of an existing queue with other
//! arguments, so the arguments are a pure function of the name and the [`QueueType`]: whoever
//! declares first (a publisher, a consumer or [`AmqpRunQueue::declare_topology`]) declares what
//! everyone else will declare.
//!
//! [`AmqpRunQueue::declare_topology`]: super::AmqpRunQueue::declare_topology

use lapin::Channel;
use lapin::options::QueueDeclareOptions;
use lapin::types::{AMQPValue, FieldTable, LongString};
use model_runner_core::ports::QueueError;
use model_runner_core::routing::dead_letter_queue_name;

use super::{QueueType, amqp_error};

/// The suffix [`dead_letter_queue_name`] appends.
const DEAD_SUFFIX: &str = ".dead";

/// AMQP short strings, which carry queue names, hold at most 255 bytes.
const MAX_NAME: usize = 255;

/// Checks that `queue` is a name this adapter can declare, with room for its `.dead` queue.
pub(super) fn check_name(queue: &str) -> Result<(), QueueError> {
    let invalid = |reason: &str| QueueError::InvalidQueue {
        name: queue.chars().take(64).collect(),
        reason: reason.to_owned(),
    };
    if queue.is_empty() {
        return Err(invalid("a queue name must not be empty"));
    }
    let limit = if is_dead_letter_queue(queue) {
        MAX_NAME
    } else {
        MAX_NAME - DEAD_SUFFIX.len()
    };
    if queue.len() > limit {
        return Err(invalid(
            "a RabbitMQ queue name has at most 255 bytes, including the `.dead` suffix of its dead-letter queue",
        ));
    }
    if queue.starts_with("amq.") {
        return Err(invalid(
            "names starting with `amq.` are reserved by RabbitMQ",
        ));
    }
    Ok(())
}

/// Whether `queue` is some queue's dead-letter queue, declared without dead-lettering.
pub(super) fn is_dead_letter_queue(queue: &str) -> bool {
    queue.ends_with(DEAD_SUFFIX)
}

/// The arguments of a work queue: dead-lettering to `<queue>.dead`, plus the queue type.
fn work_queue_arguments(queue: &str, queue_type: QueueType) -> FieldTable {
    let mut args = dead_letter_queue_arguments(queue_type);
    args.insert(
        "x-dead-letter-exchange".into(),
        AMQPValue::LongString(LongString::from("")),
    );
    args.insert(
        "x-dead-letter-routing-key".into(),
        AMQPValue::LongString(LongString::from(dead_letter_queue_name(queue))),
    );
    if let QueueType::Quorum {
        delivery_limit: Some(limit),
    } = queue_type
    {
        args.insert("x-delivery-limit".into(), AMQPValue::LongUInt(limit));
    }
    args
}

/// The arguments of a dead-letter queue: only the queue type.
fn dead_letter_queue_arguments(queue_type: QueueType) -> FieldTable {
    let mut args = FieldTable::default();
    if let QueueType::Quorum { .. } = queue_type {
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString(LongString::from("quorum")),
        );
    }
    args
}

/// Declares `queue` (durable) and, unless it is itself a dead-letter queue, its `.dead` queue.
pub(super) async fn declare(
    channel: &Channel,
    queue: &str,
    queue_type: QueueType,
) -> Result<(), QueueError> {
    let durable = QueueDeclareOptions::durable();
    if !is_dead_letter_queue(queue) {
        let dead = dead_letter_queue_name(queue);
        channel
            .queue_declare(
                dead.as_str().into(),
                durable,
                dead_letter_queue_arguments(queue_type),
            )
            .await
            .map_err(|e| amqp_error(&format!("declaring queue {dead}"), e))?;
    }
    let args = if is_dead_letter_queue(queue) {
        dead_letter_queue_arguments(queue_type)
    } else {
        work_queue_arguments(queue, queue_type)
    };
    channel
        .queue_declare(queue.into(), durable, args)
        .await
        .map_err(|e| amqp_error(&format!("declaring queue {queue}"), e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(check_name("ethereum_realtime_reads").is_ok());
        assert!(check_name("ethereum_realtime_reads.dead").is_ok());
        assert!(matches!(
            check_name(""),
            Err(QueueError::InvalidQueue { .. })
        ));
        assert!(check_name(&"q".repeat(250)).is_ok());
        assert!(check_name(&"q".repeat(251)).is_err());
        assert!(check_name(&format!("{}.dead", "q".repeat(250))).is_ok());
        assert!(check_name("amq.gen-1").is_err());
    }

    #[test]
    fn arguments_depend_only_on_name_and_type() {
        let classic = work_queue_arguments("backfill_1", QueueType::Classic);
        let keys: Vec<_> = classic.inner().keys().map(|k| k.as_str()).collect();
        assert_eq!(
            keys,
            ["x-dead-letter-exchange", "x-dead-letter-routing-key"]
        );
        assert_eq!(
            classic.inner()["x-dead-letter-routing-key"],
            AMQPValue::LongString("backfill_1.dead".into())
        );
        let quorum = work_queue_arguments(
            "backfill_1",
            QueueType::Quorum {
                delivery_limit: Some(5),
            },
        );
        assert_eq!(quorum.inner()["x-delivery-limit"], AMQPValue::LongUInt(5));
        assert_eq!(
            quorum.inner()["x-queue-type"],
            AMQPValue::LongString("quorum".into())
        );
        assert!(
            dead_letter_queue_arguments(QueueType::Classic)
                .inner()
                .is_empty()
        );
    }
}
