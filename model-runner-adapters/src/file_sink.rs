//! `file://DIR`: a JSON-lines [`ResultSink`], one file per topic (`DIR/<topic>.jsonl`).
//!
//! Each line is one [`Record`] as JSON: `{"key":{"model","chain","block_number","position"},
//! "model_version","block_hash","run_id","payload"}`. `send` appends the whole batch and
//! `fsync`s before it returns, so a confirmed batch survives a crash. Sends to one topic at
//! the same moment share the write and the `fsync` (a group commit: the first to reach the
//! file writes every batch waiting, in the order they arrived, and tells each sender); a crash mid-batch can
//! leave a torn last line, which [`read_topic`] skips. The next sink to open that file ends the
//! torn fragment with a newline before it appends, so its first record starts a line of its own
//! instead of being glued onto the fragment; [`read_topic`] skips the fragment's line too. Delivery is at-least-once: a retried run appends its records again, and readers
//! deduplicate by key (the last line wins).
//!
//! [`ResultSink::ping`] creates and removes a hidden probe file (`DIR/.ping-<uuid>`, never a
//! topic file: topics cannot start with `.`), so it fails when the directory is gone, read-only
//! or otherwise refuses new files.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use model_runner_core::Record;
use model_runner_core::ports::{ResultSink, SinkError};
use tokio::io::{AsyncReadExt, AsyncSeekExt, AsyncWriteExt};
use tokio::sync::Mutex;

const ADAPTER: &str = "file";

/// The JSON-lines file sink.
#[derive(Debug)]
pub struct FileSink {
    dir: PathBuf,
    files: Mutex<HashMap<String, Arc<TopicFile>>>,
    /// Buffers of batches already written, encoded into again: a run's batch lands in memory
    /// already touched instead of pages the kernel must zero first.
    spare: std::sync::Mutex<Vec<String>>,
}

/// Spare buffers kept, and the largest kept (a bigger one is freed).
const SPARE_BUFFERS: usize = 4;
const SPARE_BUFFER_BYTES: usize = 16 << 20;

/// One topic's file and the batches waiting to be written to it.
#[derive(Debug)]
struct TopicFile {
    waiting: std::sync::Mutex<Waiting>,
    /// Held by the sender writing (and syncing) everything waiting; written from the blocking
    /// pool straight from the encoded batches (a `tokio::fs::File` would copy them first).
    file: Mutex<Arc<std::fs::File>>,
}

/// Encoded batches not yet written, in arrival order, and their senders.
#[derive(Debug, Default)]
struct Waiting {
    batches: Vec<String>,
    senders: Vec<tokio::sync::oneshot::Sender<Result<(), String>>>,
}

fn io(context: String, e: std::io::Error) -> SinkError {
    SinkError::Backend {
        adapter: ADAPTER,
        source: format!("{context}: {e}").into(),
    }
}

fn lock(waiting: &std::sync::Mutex<Waiting>) -> std::sync::MutexGuard<'_, Waiting> {
    waiting.lock().unwrap_or_else(|e| e.into_inner())
}

/// Checks a topic is a plain file name.
fn check_topic(topic: &str) -> Result<(), SinkError> {
    model_runner_core::ports::check_topic(topic, "file", 200)
}

impl FileSink {
    /// A sink writing under `dir` (created if missing).
    pub async fn open(dir: impl Into<PathBuf>) -> Result<Self, SinkError> {
        let dir = dir.into();
        tokio::fs::create_dir_all(&dir)
            .await
            .map_err(|e| io(format!("creating {}", dir.display()), e))?;
        Ok(Self {
            dir,
            files: Mutex::default(),
            spare: std::sync::Mutex::default(),
        })
    }

    /// From `file://DIR` (relative or absolute).
    pub async fn from_url(url: &str) -> Result<Self, SinkError> {
        let dir = url
            .strip_prefix("file://")
            .ok_or_else(|| SinkError::InvalidTopic {
                topic: model_runner_core::redact::redact_url(url),
                reason: "expected a file://DIR URL".into(),
            })?;
        Self::open(if dir.is_empty() { "." } else { dir }).await
    }

    /// The file of `topic`.
    pub fn path(&self, topic: &str) -> PathBuf {
        self.dir.join(format!("{topic}.jsonl"))
    }

    async fn file(&self, topic: &str) -> Result<Arc<TopicFile>, SinkError> {
        let mut files = self.files.lock().await;
        if let Some(f) = files.get(topic) {
            return Ok(f.clone());
        }
        let path = self.path(topic);
        let mut f = tokio::fs::OpenOptions::new()
            .create(true)
            .read(true)
            .append(true)
            .open(&path)
            .await
            .map_err(|e| io(format!("opening {}", path.display()), e))?;
        end_torn_line(&mut f).await.map_err(|e| {
            io(
                format!("ending the torn last line of {}", path.display()),
                e,
            )
        })?;
        let f = Arc::new(TopicFile {
            waiting: std::sync::Mutex::default(),
            file: Mutex::new(Arc::new(f.into_std().await)),
        });
        files.insert(topic.to_owned(), f.clone());
        Ok(f)
    }
}

/// Appends a newline when the file does not end with one: a writer crashed mid-line, and the
/// next record must not be glued onto its fragment.
async fn end_torn_line(f: &mut tokio::fs::File) -> std::io::Result<()> {
    if f.metadata().await?.len() == 0 {
        return Ok(());
    }
    f.seek(std::io::SeekFrom::End(-1)).await?;
    let mut last = [0u8; 1];
    f.read_exact(&mut last).await?;
    if last[0] != b'\n' {
        // Append mode: the write lands at the end whatever the read position.
        f.write_all(b"\n").await?;
        f.sync_data().await?;
    }
    Ok(())
}

#[async_trait]
impl ResultSink for FileSink {
    async fn send(&self, topic: &str, records: &[Record]) -> Result<(), SinkError> {
        check_topic(topic)?;
        if records.is_empty() {
            return Ok(());
        }
        let encode = |buf: &mut String, r: &Record| {
            r.write_json(buf);
            buf.push('\n');
        };
        // Sized from the first line, so a large batch is not copied through doublings.
        let mut buf = self
            .spare
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .pop()
            .unwrap_or_default();
        encode(&mut buf, &records[0]);
        buf.reserve((buf.len() + buf.len() / 8) * (records.len() - 1));
        for r in &records[1..] {
            encode(&mut buf, r);
        }
        let topic_file = self.file(topic).await?;
        let (sent, written) = tokio::sync::oneshot::channel();
        {
            let mut waiting = lock(&topic_file.waiting);
            waiting.batches.push(buf);
            waiting.senders.push(sent);
        }
        {
            // Whoever holds the file writes everything waiting: this batch, unless an earlier
            // holder took it along already.
            let f = topic_file.file.lock().await;
            let Waiting { batches, senders } = std::mem::take(&mut *lock(&topic_file.waiting));
            if !senders.is_empty() {
                let path = self.path(topic).display().to_string();
                let file = Arc::clone(&f);
                let written = tokio::task::spawn_blocking(move || {
                    use std::io::Write;
                    let write = || {
                        for batch in &batches {
                            (&*file)
                                .write_all(batch.as_bytes())
                                .map_err(|e| format!("writing {path}: {e}"))?;
                        }
                        file.sync_data().map_err(|e| format!("syncing {path}: {e}"))
                    };
                    (write(), batches)
                })
                .await;
                let result = match written {
                    Ok((result, batches)) => {
                        let mut spare = self.spare.lock().unwrap_or_else(|e| e.into_inner());
                        for mut b in batches {
                            if spare.len() < SPARE_BUFFERS && b.capacity() <= SPARE_BUFFER_BYTES {
                                b.clear();
                                spare.push(b);
                            }
                        }
                        result
                    }
                    Err(e) => Err(format!("the write stopped: {e}")),
                };
                for sender in senders {
                    let _ = sender.send(result.clone());
                }
            }
        }
        match written.await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(message)) => Err(SinkError::Backend {
                adapter: ADAPTER,
                source: message.into(),
            }),
            Err(_) => Err(SinkError::Backend {
                adapter: ADAPTER,
                source: "the batch's writer stopped before writing it".into(),
            }),
        }
    }

    async fn flush(&self) -> Result<(), SinkError> {
        let files: Vec<_> = self.files.lock().await.values().cloned().collect();
        for f in files {
            let file = f.file.lock().await;
            let file = Arc::clone(&file);
            tokio::task::spawn_blocking(move || file.sync_all())
                .await
                .map_err(std::io::Error::other)
                .and_then(|synced| synced)
                .map_err(|e| io("syncing a topic file".into(), e))?;
        }
        Ok(())
    }

    /// Creates and removes a hidden probe file in the directory; see the module docs.
    async fn ping(&self) -> Result<(), SinkError> {
        let probe = self
            .dir
            .join(format!(".ping-{}", uuid::Uuid::now_v7().simple()));
        let unavailable = |what: &str, e: std::io::Error| SinkError::Unavailable {
            adapter: ADAPTER,
            message: format!("ping: {what} {}: {e}", probe.display()),
        };
        tokio::fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .open(&probe)
            .await
            .map_err(|e| unavailable("creating", e))?;
        tokio::fs::remove_file(&probe)
            .await
            .map_err(|e| unavailable("removing", e))
    }
}

/// Reads back every complete record of a topic file, in order. A torn record is skipped: the
/// torn last line, and a line that ends before its JSON does (a torn record that a later writer
/// ended with a newline). Any other line that does not parse is an error.
pub fn read_topic(path: &Path) -> Result<Vec<Record>, SinkError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(Vec::new()),
        Err(e) => return Err(io(format!("reading {}", path.display()), e)),
    };
    let complete = match bytes.iter().rposition(|&b| b == b'\n') {
        Some(i) => &bytes[..i],
        None => return Ok(Vec::new()),
    };
    let mut records = Vec::new();
    for (i, line) in complete.split(|&b| b == b'\n').enumerate() {
        match serde_json::from_slice(line) {
            Ok(r) => records.push(r),
            Err(e) if e.is_eof() => {}
            Err(e) => {
                return Err(io(
                    format!("{} line {}", path.display(), i + 1),
                    std::io::Error::new(std::io::ErrorKind::InvalidData, e),
                ));
            }
        }
    }
    Ok(records)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn conformance_and_torn_lines() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(FileSink::open(dir.path()).await.unwrap());
        let reader = sink.clone();
        model_runner_core::conformance::sink::run_all(sink.clone(), move |topic: String| {
            let path = reader.path(&topic);
            async move { read_topic(&path).unwrap() }
        })
        .await;

        let recs = model_runner_core::conformance::sink::records("m", 3, 10);
        sink.send("t", &recs).await.unwrap();
        std::fs::OpenOptions::new()
            .append(true)
            .open(sink.path("t"))
            .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"key\":"))
            .unwrap();
        assert_eq!(read_topic(&sink.path("t")).unwrap(), recs);
    }

    /// Sends made at once share writes, and every batch still lands whole: all of its records,
    /// in its order, next to each other (no batch is split by another).
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn concurrent_sends_land_whole_and_contiguous() {
        let dir = tempfile::tempdir().unwrap();
        let sink = Arc::new(FileSink::open(dir.path()).await.unwrap());
        let batches: Vec<Vec<Record>> = (0..64)
            .map(|_| model_runner_core::conformance::sink::records("m", 25, 8))
            .collect();
        let mut tasks = Vec::new();
        for batch in batches.clone() {
            let sink = sink.clone();
            tasks.push(tokio::spawn(async move { sink.send("t", &batch).await }));
        }
        for t in tasks {
            t.await.unwrap().unwrap();
        }
        let read = read_topic(&sink.path("t")).unwrap();
        assert_eq!(read.len(), 64 * 25);
        for batch in &batches {
            // Each batch has a run id of its own.
            let at = read
                .iter()
                .position(|r| r.run_id == batch[0].run_id)
                .expect("every batch is written");
            assert_eq!(&read[at..at + batch.len()], batch.as_slice());
        }
    }

    #[tokio::test]
    async fn a_reopened_file_ends_a_torn_line_before_appending() {
        let dir = tempfile::tempdir().unwrap();
        let recs = model_runner_core::conformance::sink::records("m", 2, 1);
        let path = dir.path().join("t.jsonl");
        let mut text = serde_json::to_vec(&recs[0]).unwrap();
        text.push(b'\n');
        let second = serde_json::to_vec(&recs[1]).unwrap();
        text.extend_from_slice(&second[..second.len() / 2]);
        std::fs::write(&path, &text).unwrap();

        let sink = FileSink::open(dir.path()).await.unwrap();
        sink.send("t", &recs[1..]).await.unwrap();
        assert_eq!(read_topic(&path).unwrap(), recs);
        // Reopening a file that ends with a newline adds nothing.
        let before = std::fs::read(&path).unwrap();
        let sink = FileSink::open(dir.path()).await.unwrap();
        sink.send("t", &recs[..1]).await.unwrap();
        let after = std::fs::read(&path).unwrap();
        assert_eq!(&after[..before.len()], &before[..]);
        assert_eq!(after.len() - before.len(), text.len() - second.len() / 2);
    }

    #[test]
    fn a_line_that_is_not_a_torn_record_is_an_error() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("t.jsonl");
        std::fs::write(&path, b"{\"key\": nope}\n").unwrap();
        let err = read_topic(&path).unwrap_err();
        assert!(err.to_string().contains("line 1"), "{err}");
    }

    #[tokio::test]
    async fn ping_needs_a_writable_directory_and_leaves_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::open(dir.path().join("out")).await.unwrap();
        sink.ping().await.unwrap();
        assert_eq!(
            std::fs::read_dir(dir.path().join("out")).unwrap().count(),
            0
        );
        std::fs::remove_dir(dir.path().join("out")).unwrap();
        let err = sink.ping().await.unwrap_err();
        assert!(matches!(err, SinkError::Unavailable { .. }), "{err:?}");
    }

    #[tokio::test]
    async fn bad_topics_are_refused() {
        let dir = tempfile::tempdir().unwrap();
        let sink = FileSink::open(dir.path()).await.unwrap();
        let recs = model_runner_core::conformance::sink::records("m", 1, 1);
        for bad in ["", "../etc/passwd", ".hidden", "a/b", "sp ace"] {
            let err = sink.send(bad, &recs).await.unwrap_err();
            assert!(
                matches!(err, SinkError::InvalidTopic { .. }),
                "{bad}: {err}"
            );
        }
    }

    /// The hand encoder writes exactly serde's JSON, for every kind of payload value and for
    /// strings that need escapes (in the payload, its keys and the record's own fields).
    #[test]
    fn records_are_encoded_exactly_as_serde_encodes_them() {
        let mut recs = model_runner_core::conformance::sink::records("m", 30, 5);
        let payloads = [
            serde_json::json!({
                "token_address": "0x44afd15c77804afb472e0fa031ef58636f8a88ee",
                "value": "833655000000000000000000",
                "log_index": 0,
                "block_number": u64::MAX,
            }),
            serde_json::json!({
                "quote\"d": "back\\slash\nnew line\ttab\u{1}\u{1f}\u{7f}",
                "unicode": "h\u{e9}llo \u{2028} \u{1f600}",
                "numbers": [0, -1, i64::MIN, 1.5, -0.0, 1e300, 2.0],
                "nested": {"a": [true, false, null, {}, []], "": ""},
            }),
            serde_json::json!(null),
            serde_json::json!("a bare string"),
            serde_json::json!([1, "two", 3.25]),
        ];
        for (r, p) in recs.iter_mut().zip(payloads) {
            r.payload = p.into();
        }
        recs[5].key.model = "mo\"del\u{0}".into();
        recs[6].model_version = "1.0.0-\u{e9}\\".into();
        for r in &recs {
            let mut ours = String::new();
            r.write_json(&mut ours);
            assert_eq!(ours, serde_json::to_string(r).unwrap());
        }
    }
}
