//! [`MemorySink`]: records kept in memory per topic.

use std::collections::BTreeMap;
use std::sync::Mutex;

use async_trait::async_trait;

use crate::model::{ModelVersion, Record, RecordSchema};
use crate::ports::{ResultSink, SinkError};

/// A [`ResultSink`] that keeps every record in memory, readable with [`MemorySink::records`].
/// Declared record schemas are kept too ([`MemorySink::declared_schema`]); records are stored
/// as JSON values, so they are not checked against them.
#[derive(Debug, Default)]
pub struct MemorySink {
    topics: Mutex<BTreeMap<String, Vec<Record>>>,
    schemas: Mutex<BTreeMap<(String, String), RecordSchema>>,
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

    /// The schema last declared for `model` at `version`.
    pub fn declared_schema(&self, model: &str, version: &str) -> Option<RecordSchema> {
        self.schemas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .get(&(model.to_owned(), version.to_owned()))
            .cloned()
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

    async fn declare_schema(
        &self,
        model: ModelVersion<'_>,
        schema: &RecordSchema,
    ) -> Result<(), SinkError> {
        self.schemas
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(
                (model.name.to_owned(), model.version.to_owned()),
                schema.clone(),
            );
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
