//! [`MemorySink`]: records kept in memory per topic.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::model::Record;
use crate::ports::{ResultSink, SinkError};

/// A [`ResultSink`] that keeps every record in memory, readable with [`MemorySink::records`].
#[derive(Debug, Default)]
pub struct MemorySink {
    topics: Mutex<BTreeMap<String, Vec<Record>>>,
}

impl MemorySink {
    /// An empty sink.
    pub fn new() -> Self {
        Self::default()
    }

    /// Everything sent to `topic`, in order.
    pub fn records(&self, topic: &str) -> Vec<Record> {
        self.topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(topic)
            .cloned()
            .unwrap_or_default()
    }

    /// Topic names that received records.
    pub fn topics(&self) -> Vec<String> {
        self.topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .keys()
            .cloned()
            .collect()
    }
}

#[async_trait]
impl ResultSink for MemorySink {
    async fn send(&self, topic: &str, records: &[Record]) -> Result<(), SinkError> {
        if topic.is_empty() {
            return Err(SinkError::InvalidTopic {
                topic: topic.to_owned(),
                reason: "empty".into(),
            });
        }
        if records.is_empty() {
            return Ok(());
        }
        self.topics
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(topic.to_owned())
            .or_default()
            .extend_from_slice(records);
        Ok(())
    }

    async fn flush(&self) -> Result<(), SinkError> {
        Ok(())
    }
}

#[cfg(all(test, feature = "conformance"))]
mod tests {
    use std::sync::Arc;

    #[tokio::test]
    async fn conformance() {
        let sink = Arc::new(super::MemorySink::new());
        let reader = sink.clone();
        crate::conformance::sink::run_all(sink, move |topic: String| {
            let reader = reader.clone();
            async move { reader.records(&topic) }
        })
        .await;
    }
}
