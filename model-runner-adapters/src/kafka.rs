//! `kafka://host:port[,host:port...][?setting=value&...]`: a Kafka [`ResultSink`] (rdkafka).
//!
//! Each [`Record`] becomes one message on the topic it is sent to (`<env>-<chain>-sink`):
//!
//! - **key**: [`RecordKey`](model_runner_core::RecordKey) as `model:chain:block:position`. The
//!   default partitioner hashes the key, so a key always lands on the same partition and the
//!   copies of a record produced by a retried run line up behind each other.
//! - **headers**: `envelope_version`, `model`, `model_version`, `run_id`, `block_hash` (`0x`-hex),
//!   so a consumer can route or filter without parsing the payload.
//! - **value**: the JSON envelope, version [`ENVELOPE_VERSION`]:
//!
//! ```json
//! {"envelope_version": 1,
//!  "key": {"model": "erc20_transfers", "chain": "ethereum", "block_number": 19000000, "position": 3},
//!  "model_version": "2", "block_hash": "0x…", "run_id": "0192f0c4-…", "payload": {…}}
//! ```
//!
//! It is the serde JSON of [`Record`] plus `envelope_version`; a new field is added without a
//! version change, a renamed, removed or retyped one bumps it.
//!
//! # Delivery guarantee: at-least-once with a deterministic key
//!
//! The producer is idempotent (`enable.idempotence=true`, `acks=all`): librdkafka's own retries
//! of a produce request never duplicate or reorder messages within a partition. [`send`]
//! resolves only when every message of the batch is acknowledged by all in-sync replicas; if any
//! is not (broker down past `delivery.timeout.ms`, a refused message, ...), it returns
//! [`SinkError::Delivery`] and the run's attempt fails and is retried, which produces the whole
//! run again. So a record can reach the topic more than once, never zero times. Consumers
//! deduplicate by message key (the last copy wins; copies are identical because models are
//! deterministic); a warehouse does so with e.g. `QUALIFY ROW_NUMBER() OVER (PARTITION BY key
//! ORDER BY kafka_offset DESC) = 1`.
//!
//! # Throughput settings
//!
//! A batch is handed to librdkafka at once and then awaited, so the producer batches well without
//! waiting long: `linger.ms=5` (a batch of 1,000 is queued in well under that),
//! `batch.size=1048576` and `batch.num.messages=10000` (up to 1 MiB per partition request),
//! `compression.type=lz4` (cheap, and JSON compresses well) and `delivery.timeout.ms=60000` (a
//! broker outage longer than a minute fails the attempt instead of holding the run's lease).
//! Every setting can be overridden from the URL's query (`?linger.ms=50`), which also carries
//! credentials for managed clusters: `?security.protocol=SASL_SSL&sasl.mechanisms=PLAIN&
//! sasl.username=KEY&sasl.password=SECRET` (TLS needs the `kafka-tls` feature).
//! `enable.idempotence` and `acks` cannot be changed: the guarantee above depends on them.
//! Secrets (settings whose name says password, secret, token, key, auth, ...: see
//! [`model_runner_core::redact`]) never appear in logs, errors or `Debug` output.
//!
//! # Readiness
//!
//! [`ResultSink::ping`] fetches the cluster metadata (brokers and topics) from a broker, within
//! [`PING_TIMEOUT`]: an idle producer's `flush` succeeds with every broker down, a metadata
//! request does not. It fails with [`SinkError::Unavailable`] when no broker answers in time
//! or the metadata lists no broker; the error names the bootstrap brokers, never a secret.
//!
//! [`send`]: ResultSink::send

use std::collections::VecDeque;
use std::fmt;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use async_trait::async_trait;
use model_runner_core::Record;
use model_runner_core::ports::{ResultSink, SinkError};
use rdkafka::ClientConfig;
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord, Producer};

const ADAPTER: &str = "kafka";

/// Version of the JSON envelope written as each message's value (and `envelope_version` header).
pub const ENVELOPE_VERSION: u32 = 1;

/// Producer settings applied before the URL's own; see the module docs for why.
pub const DEFAULT_SETTINGS: &[(&str, &str)] = &[
    ("linger.ms", "5"),
    ("batch.size", "1048576"),
    ("batch.num.messages", "10000"),
    ("compression.type", "lz4"),
    ("delivery.timeout.ms", "60000"),
];

/// Settings the delivery guarantee depends on: always set, never overridable.
const FIXED_SETTINGS: &[(&str, &str)] = &[("enable.idempotence", "true"), ("acks", "all")];

/// How long [`ResultSink::flush`] waits for outstanding messages.
const FLUSH_TIMEOUT: Duration = Duration::from_secs(60);

/// How long [`ResultSink::ping`] waits for the cluster metadata.
pub const PING_TIMEOUT: Duration = Duration::from_millis(1500);

/// Serialises `record` as the versioned JSON envelope described in the module docs: the
/// envelope version, then the record's members as [`Record::write_json_fields`] writes them.
pub fn envelope(record: &Record) -> Vec<u8> {
    use std::fmt::Write;
    let mut json = String::with_capacity(record.payload.as_json().len() + 256);
    let _ = write!(json, "{{\"envelope_version\":{ENVELOPE_VERSION},");
    record.write_json_fields(&mut json);
    json.push('}');
    json.into_bytes()
}

/// Where and how to connect: brokers and librdkafka settings.
#[derive(Clone, PartialEq, Eq)]
pub struct KafkaConfig {
    /// `host:port` of each bootstrap broker.
    pub brokers: Vec<String>,
    /// librdkafka settings in the order given; later ones override earlier ones and
    /// [`DEFAULT_SETTINGS`].
    pub settings: Vec<(String, String)>,
}

impl fmt::Debug for KafkaConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let settings: Vec<_> = self
            .settings
            .iter()
            .map(|(k, v)| {
                (
                    k.as_str(),
                    if model_runner_core::redact::is_secret_key(k) {
                        "***"
                    } else {
                        v.as_str()
                    },
                )
            })
            .collect();
        f.debug_struct("KafkaConfig")
            .field("brokers", &self.brokers)
            .field("settings", &settings)
            .finish()
    }
}

impl KafkaConfig {
    /// Brokers with no extra settings.
    pub fn new(brokers: impl IntoIterator<Item = impl Into<String>>) -> Self {
        Self {
            brokers: brokers.into_iter().map(Into::into).collect(),
            settings: Vec::new(),
        }
    }

    /// Adds a librdkafka setting, builder style.
    pub fn set(mut self, key: impl Into<String>, value: impl Into<String>) -> Self {
        self.settings.push((key.into(), value.into()));
        self
    }

    /// Parses `kafka://host:port[,host:port...][/][?setting=value&...]` (query values are
    /// percent-decoded). Errors name the problem and never contain a secret.
    pub fn from_url(url: &str) -> Result<Self, SinkError> {
        let shown = redact_url(url);
        let invalid = |reason: String| SinkError::InvalidTopic {
            topic: shown.clone(),
            reason,
        };
        let rest = url
            .strip_prefix("kafka://")
            .ok_or_else(|| invalid("expected a kafka://host:port[,host:port] URL".into()))?;
        let (hosts, query) = rest.split_once('?').unwrap_or((rest, ""));
        let hosts = hosts.strip_suffix('/').unwrap_or(hosts);
        if hosts.contains('@') {
            return Err(invalid(
                "credentials go in the query (?sasl.username=...&sasl.password=...), not before the host"
                    .into(),
            ));
        }
        let mut brokers = Vec::new();
        for broker in hosts.split(',') {
            let (host, port) = broker.rsplit_once(':').ok_or_else(|| {
                invalid(format!("broker {broker:?} has no port: expected host:port"))
            })?;
            if host.is_empty() || host.contains('/') {
                return Err(invalid(format!(
                    "broker {broker:?} has no valid host: expected host:port"
                )));
            }
            if port.parse::<u16>().map_or(true, |p| p == 0) {
                return Err(invalid(format!(
                    "broker {broker:?} has an invalid port {port:?}: expected 1-65535"
                )));
            }
            brokers.push(broker.to_owned());
        }
        let mut config = Self::new(brokers);
        // librdkafka's settings are an open set: parsed by serde_urlencoded as pairs, checked
        // by `check` and by librdkafka itself.
        let pairs: Vec<(String, String)> =
            serde_urlencoded::from_str(query).map_err(|e| invalid(format!("bad query: {e}")))?;
        for (k, v) in pairs {
            // `setting=` is a setting to the empty string (librdkafka has some, e.g.
            // `ssl.endpoint.identification.algorithm=` to turn host name checks off); a bare
            // `setting` without `=` is a mistake.
            if v.is_empty() && !query.split('&').any(|part| part == format!("{k}=")) {
                return Err(invalid(format!(
                    "query part {:?} is not setting=value",
                    k.chars().take(64).collect::<String>()
                )));
            }
            config = config.set(k, v);
        }
        config.check().map_err(invalid)?;
        Ok(config)
    }

    fn check(&self) -> Result<(), String> {
        if self.brokers.is_empty() {
            return Err("no broker given".into());
        }
        for (k, v) in &self.settings {
            if k == "bootstrap.servers" || k == "metadata.broker.list" {
                return Err(format!(
                    "{k} is taken from the URL's host list, not its query"
                ));
            }
            if let Some((_, fixed)) = FIXED_SETTINGS.iter().find(|(f, _)| f == k)
                && v != fixed
            {
                return Err(format!(
                    "{k} is always {fixed}: the sink's delivery guarantee depends on it"
                ));
            }
        }
        Ok(())
    }

    /// The librdkafka configuration: brokers, defaults, the given settings, the fixed ones.
    fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.brokers.join(","));
        for (k, v) in DEFAULT_SETTINGS {
            c.set(*k, *v);
        }
        for (k, v) in &self.settings {
            c.set(k, v);
        }
        for (k, v) in FIXED_SETTINGS {
            c.set(*k, *v);
        }
        c
    }

    /// `message` with every secret setting value replaced by `***` (and any URL in it
    /// redacted), by the core redactor's [`UrlSecrets`](model_runner_core::redact::UrlSecrets).
    fn scrub(&self, message: &str) -> String {
        let mut secrets = model_runner_core::redact::UrlSecrets::default();
        for (k, v) in &self.settings {
            if model_runner_core::redact::is_secret_key(k) {
                secrets.add(v.as_str());
            }
        }
        secrets.scrub(message)
    }
}

use model_runner_core::redact::redact_url;

/// Checks a topic against Kafka's rules, before librdkafka sees it.
fn check_topic(topic: &str) -> Result<(), SinkError> {
    model_runner_core::ports::check_topic(topic, "Kafka", 249)
}

/// The Kafka result sink. See the module docs for the message format and guarantees.
pub struct KafkaSink {
    config: KafkaConfig,
    /// Replaced when librdkafka reports a fatal (idempotence) error, after which the old
    /// producer refuses everything; the next attempt then starts on a fresh producer id.
    producer: RwLock<Arc<FutureProducer>>,
}

impl fmt::Debug for KafkaSink {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("KafkaSink")
            .field("config", &self.config)
            .finish_non_exhaustive()
    }
}

/// What became of the messages of one batch.
#[derive(Default)]
struct Outcome {
    failed: usize,
    first_error: Option<String>,
}

impl Outcome {
    fn fail(&mut self, message: impl FnOnce() -> String) {
        self.failed += 1;
        if self.first_error.is_none() {
            self.first_error = Some(message());
        }
    }

    async fn settle(&mut self, delivery: DeliveryFuture) {
        match delivery.await {
            Ok(Ok(_)) => {}
            Ok(Err((e, _))) => self.fail(|| e.to_string()),
            Err(_) => self.fail(|| "the producer was dropped before delivery".into()),
        }
    }
}

impl KafkaSink {
    /// A sink producing with `config` (connection happens lazily, on the first send).
    pub fn new(config: KafkaConfig) -> Result<Self, SinkError> {
        config.check().map_err(|reason| SinkError::InvalidTopic {
            topic: format!("kafka://{}", config.brokers.join(",")),
            reason,
        })?;
        let producer = Self::create(&config)?;
        tracing::info!(?config, "kafka sink created");
        Ok(Self {
            config,
            producer: RwLock::new(Arc::new(producer)),
        })
    }

    /// From a `kafka://` URL; see [`KafkaConfig::from_url`].
    pub fn from_url(url: &str) -> Result<Self, SinkError> {
        Self::new(KafkaConfig::from_url(url)?)
    }

    /// The configuration, for inspection (its `Debug` hides secrets).
    pub fn config(&self) -> &KafkaConfig {
        &self.config
    }

    fn create(config: &KafkaConfig) -> Result<FutureProducer, SinkError> {
        config
            .client_config()
            .create()
            .map_err(|e| SinkError::Backend {
                adapter: ADAPTER,
                source: config.scrub(&format!("creating the producer: {e}")).into(),
            })
    }

    fn producer(&self) -> Arc<FutureProducer> {
        self.producer
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// After a failed batch: if `used` hit a fatal error, swap in a fresh producer.
    fn recover(&self, used: &Arc<FutureProducer>) {
        let Some((code, reason)) = used.client().fatal_error() else {
            return;
        };
        tracing::warn!(?code, reason = %self.config.scrub(&reason), "kafka producer fatal error; recreating it");
        match Self::create(&self.config) {
            Ok(fresh) => {
                let mut slot = self.producer.write().unwrap_or_else(|e| e.into_inner());
                if Arc::ptr_eq(&slot, used) {
                    *slot = Arc::new(fresh);
                }
            }
            Err(e) => tracing::warn!(error = %e, "recreating the kafka producer failed"),
        }
    }
}

fn headers(r: &Record) -> OwnedHeaders {
    let version = ENVELOPE_VERSION.to_string();
    let run_id = r.run_id.to_string();
    let block_hash = r.block_hash.to_string();
    OwnedHeaders::new_with_capacity(5)
        .insert(Header {
            key: "envelope_version",
            value: Some(version.as_str()),
        })
        .insert(Header {
            key: "model",
            value: Some(r.key.model.as_str()),
        })
        .insert(Header {
            key: "model_version",
            value: Some(r.model_version.as_str()),
        })
        .insert(Header {
            key: "run_id",
            value: Some(run_id.as_str()),
        })
        .insert(Header {
            key: "block_hash",
            value: Some(block_hash.as_str()),
        })
}

#[async_trait]
impl ResultSink for KafkaSink {
    async fn send(&self, topic: &str, records: &[Record]) -> Result<(), SinkError> {
        check_topic(topic)?;
        if records.is_empty() {
            return Ok(());
        }
        let producer = self.producer();
        let mut in_flight = VecDeque::with_capacity(records.len());
        let mut outcome = Outcome::default();
        for r in records {
            let key = r.key.to_string();
            let value = envelope(r);
            let mut message = FutureRecord::to(topic)
                .key(&key)
                .payload(&value)
                .headers(headers(r));
            loop {
                match producer.send_result(message) {
                    Ok(delivery) => {
                        in_flight.push_back(delivery);
                        break;
                    }
                    Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back)) => {
                        // The local queue is full: wait for the oldest message to free room.
                        message = back;
                        match in_flight.pop_front() {
                            Some(oldest) => outcome.settle(oldest).await,
                            None => tokio::time::sleep(Duration::from_millis(10)).await,
                        }
                    }
                    Err((e, _)) => {
                        outcome.fail(|| e.to_string());
                        break;
                    }
                }
            }
        }
        for delivery in in_flight {
            outcome.settle(delivery).await;
        }
        if outcome.failed == 0 {
            return Ok(());
        }
        self.recover(&producer);
        Err(SinkError::Delivery {
            failed: outcome.failed,
            total: records.len(),
            message: self.config.scrub(&outcome.first_error.unwrap_or_default()),
        })
    }

    async fn flush(&self) -> Result<(), SinkError> {
        let producer = self.producer();
        tokio::task::spawn_blocking(move || producer.flush(FLUSH_TIMEOUT))
            .await
            .map_err(|e| SinkError::Backend {
                adapter: ADAPTER,
                source: Box::new(e),
            })?
            .map_err(|e| SinkError::Unavailable {
                adapter: ADAPTER,
                message: format!("flush: {e}"),
            })
    }

    /// Fetches the cluster metadata within [`PING_TIMEOUT`]; see the module docs.
    async fn ping(&self) -> Result<(), SinkError> {
        let producer = self.producer();
        let metadata = tokio::task::spawn_blocking(move || {
            producer
                .client()
                .fetch_metadata(None, PING_TIMEOUT)
                .map(|m| m.brokers().len())
        })
        .await
        .map_err(|e| SinkError::Backend {
            adapter: ADAPTER,
            source: Box::new(e),
        })?;
        let unavailable = |why: String| SinkError::Unavailable {
            adapter: ADAPTER,
            message: self.config.scrub(&format!(
                "ping: no cluster metadata from {} within {PING_TIMEOUT:?}: {why}",
                self.config.brokers.join(",")
            )),
        };
        match metadata {
            Ok(0) => Err(unavailable("the metadata lists no broker".into())),
            Ok(_) => Ok(()),
            Err(e) => Err(unavailable(e.to_string())),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_and_errors_are_clear() {
        let c = KafkaConfig::from_url(
            "kafka://b1:9092,b2:9093/?security.protocol=SASL_SSL&sasl.password=p%26ss&linger.ms=50",
        )
        .unwrap();
        assert_eq!(c.brokers, ["b1:9092", "b2:9093"]);
        assert_eq!(
            c.settings,
            [
                ("security.protocol".to_owned(), "SASL_SSL".to_owned()),
                ("sasl.password".to_owned(), "p&ss".to_owned()),
                ("linger.ms".to_owned(), "50".to_owned()),
            ]
        );
        assert!(!format!("{c:?}").contains("p&ss"), "{c:?}");
        // An empty value is a value (librdkafka turns host name checks off with it).
        let c =
            KafkaConfig::from_url("kafka://h:1?ssl.endpoint.identification.algorithm=").unwrap();
        assert_eq!(
            c.settings,
            [(
                "ssl.endpoint.identification.algorithm".to_owned(),
                String::new()
            )]
        );

        for (url, needle) in [
            ("amqp://h:1", "expected a kafka://"),
            ("kafka://", "no port"),
            ("kafka://host", "no port"),
            ("kafka://host:99999", "invalid port"),
            ("kafka://:9092", "no valid host"),
            ("kafka://h:1,h2", "no port"),
            ("kafka://h:1?linger.ms", "not setting=value"),
            ("kafka://h:1?linger.ms=5&client.id", "not setting=value"),
            ("kafka://h:1?acks=1", "acks is always all"),
            ("kafka://h:1?enable.idempotence=false", "enable.idempotence"),
            ("kafka://h:1?bootstrap.servers=x:1", "host list"),
            ("kafka://u:hunter2@h:1", "credentials go in the query"),
        ] {
            let err = KafkaConfig::from_url(url).unwrap_err().to_string();
            assert!(err.contains(needle), "{url}: {err}");
            assert!(!err.contains("hunter2"), "{err}");
        }
    }

    #[test]
    fn secrets_are_redacted() {
        assert_eq!(
            redact_url("kafka://h:1?sasl.username=u&sasl.password=hunter2&ssl.key.pem=K"),
            "kafka://h:1?sasl.username=u&sasl.password=***&ssl.key.pem=***"
        );
        assert_eq!(redact_url("kafka://u:hunter2@h:1"), "kafka://u:***@h:1");
        let err = KafkaConfig::from_url("kafka://h:1?sasl.password=hunter2&acks=0")
            .unwrap_err()
            .to_string();
        assert!(!err.contains("hunter2"), "{err}");
        // librdkafka's own errors (a bad value, an unsupported setting) must not leak a secret.
        let err = KafkaSink::new(
            KafkaConfig::new(["h:1"])
                .set("sasl.password", "hunter2")
                .set("sasl.oauthbearer.client.secret", "hunter3")
                .set("linger.ms", "not-a-number"),
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("creating the producer"), "{err}");
        assert!(!err.contains("hunter"), "{err}");
    }

    /// With `kafka-tls`, the settings of a managed cluster (SASL over TLS) are accepted.
    #[cfg(feature = "kafka-tls")]
    #[test]
    fn sasl_ssl_settings_are_accepted() {
        let sink = KafkaSink::from_url(
            "kafka://broker.example:9093?security.protocol=SASL_SSL&sasl.mechanisms=PLAIN\
             &sasl.username=key&sasl.password=hunter2",
        )
        .unwrap();
        assert!(!format!("{sink:?}").contains("hunter2"));
    }

    #[tokio::test]
    async fn bad_topics_and_empty_batches() {
        let sink = KafkaSink::new(KafkaConfig::new(["127.0.0.1:1"])).unwrap();
        let recs = model_runner_core::conformance::sink::records("m", 1, 1);
        for bad in ["", "a/b", "sp ace", "..", &"x".repeat(250)] {
            let err = sink.send(bad, &recs).await.unwrap_err();
            assert!(matches!(err, SinkError::InvalidTopic { .. }), "{err}");
        }
        // Nothing to deliver: succeeds without reaching the (absent) broker.
        sink.send("t", &[]).await.unwrap();
        sink.flush().await.unwrap();
    }

    #[tokio::test]
    async fn ping_fails_without_a_broker_and_hides_secrets() {
        let sink =
            KafkaSink::new(KafkaConfig::new(["127.0.0.1:1"]).set("sasl.password", "hunter2"))
                .unwrap();
        // What `flush` cannot tell: an idle producer flushes fine with no broker at all.
        sink.flush().await.unwrap();
        let started = std::time::Instant::now();
        let err = sink.ping().await.unwrap_err();
        assert!(
            started.elapsed() < PING_TIMEOUT * 2,
            "{:?}",
            started.elapsed()
        );
        assert!(matches!(err, SinkError::Unavailable { .. }), "{err:?}");
        let shown = err.to_string();
        assert!(shown.contains("127.0.0.1:1"), "{shown}");
        assert!(!shown.contains("hunter2"), "{shown}");
    }

    /// The envelope written by hand is, byte for byte, what serde writes for the version and
    /// the record flattened beside it (the wire format consumers parse), payloads with escapes
    /// and non-object payloads included.
    #[test]
    fn envelope_bytes_are_serdes_flattened_record() {
        #[derive(serde::Serialize)]
        struct Envelope<'a> {
            envelope_version: u32,
            #[serde(flatten)]
            record: &'a Record,
        }
        let mut records = model_runner_core::conformance::sink::records("m\"q", 3, 4);
        records[1].payload = serde_json::json!({"s": "tab\t \u{1} é", "n": [1, null]}).into();
        records[2].payload = serde_json::json!("bare").into();
        for r in &records {
            let expected = serde_json::to_vec(&Envelope {
                envelope_version: ENVELOPE_VERSION,
                record: r,
            })
            .unwrap();
            assert_eq!(
                String::from_utf8(envelope(r)).unwrap(),
                String::from_utf8(expected).unwrap()
            );
        }
    }

    #[test]
    fn envelope_is_the_record_plus_a_version() {
        let r = &model_runner_core::conformance::sink::records("m", 1, 4)[0];
        let v: serde_json::Value = serde_json::from_slice(&envelope(r)).unwrap();
        assert_eq!(v["envelope_version"], ENVELOPE_VERSION);
        assert_eq!(v["key"]["model"], "m");
        let back: Record = serde_json::from_value(v).unwrap();
        assert_eq!(&back, r);
    }
}
