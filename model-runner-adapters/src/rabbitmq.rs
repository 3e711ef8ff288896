//! RabbitMQ run queue (in progress).
