//! Where the job reads and writes: an `Arc<dyn ObjectStore>` plus a key
//! prefix, opened from a URL.
//!
//! Supported URLs: `file:///abs/dir` (or a plain path), `s3://bucket/prefix`
//! (credentials, region and `AWS_ENDPOINT`/`AWS_ALLOW_HTTP` come from the
//! standard `AWS_*` environment variables), and `memory://` (in-process only).
//! Store URLs take no query parameters: one is an error naming it.
//! S3 requests are retried by object_store with exponential backoff a bounded
//! number of times ([`s3_retry`]); every failure after that is an [`Error`]
//! naming the object. Object paths in messages use [`redact_url`], so
//! passwords and query-string secrets never reach logs.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::TryStreamExt;
use object_store::path::Path;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, PutPayload};

use crate::error::{Error, Result};

/// An object store and the prefix under which this index lives.
#[derive(Debug, Clone)]
pub struct StoreRoot {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    display: String,
}

/// The bounded retry policy used for S3: 6 retries, 100 ms doubling to 5 s,
/// and never more than 2 minutes per request.
pub fn s3_retry() -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: Duration::from_millis(100),
            max_backoff: Duration::from_secs(5),
            base: 2.0,
        },
        max_retries: 6,
        retry_timeout: Duration::from_secs(120),
    }
}

pub use model_runner_core::redact::redact_url;

/// The query a store URL may carry: none, so a misspelt setting is an error naming it rather
/// than silently ignored.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct StoreParams {}

impl StoreRoot {
    /// Wraps an existing store (e.g. `InMemory` shared between jobs in one
    /// process) under `prefix`; `display` names it in messages.
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str, display: &str) -> Self {
        StoreRoot {
            store,
            prefix: Path::from(prefix.trim_matches('/')),
            display: display.trim_end_matches('/').to_string(),
        }
    }

    /// Opens a store from a URL (see the module docs for the schemes).
    pub fn open(raw: &str) -> Result<Self> {
        let display = redact_url(raw);
        if raw.is_empty() {
            return Err(Error::invalid("store URL is empty"));
        }
        let url = match url::Url::parse(raw) {
            Ok(u) if u.scheme().len() > 1 => u,
            // A plain path (or a Windows drive letter) is a local directory.
            _ => {
                let abs = std::path::absolute(raw)
                    .map_err(|e| Error::invalid(format!("bad local path `{display}`: {e}")))?;
                url::Url::from_directory_path(&abs)
                    .map_err(|_| Error::invalid(format!("bad local path `{display}`")))?
            }
        };
        if let Some(query) = url.query() {
            serde_urlencoded::from_str::<StoreParams>(query).map_err(|e| {
                Error::invalid(format!(
                    "store URL `{display}`: {e}: store URLs take no parameters (S3 is configured by AWS_* variables)"
                ))
            })?;
        }
        match url.scheme() {
            "file" => {
                let dir = url
                    .to_file_path()
                    .map_err(|_| Error::invalid(format!("bad file URL `{display}`")))?;
                std::fs::create_dir_all(&dir).map_err(|e| {
                    Error::invalid(format!("cannot create directory `{}`: {e}", dir.display()))
                })?;
                let fs =
                    object_store::local::LocalFileSystem::new_with_prefix(&dir).map_err(|e| {
                        Error::invalid(format!("cannot open directory `{}`: {e}", dir.display()))
                    })?;
                Ok(StoreRoot::new(Arc::new(fs), "", &display))
            }
            "s3" | "s3a" => {
                let bucket = url
                    .host_str()
                    .filter(|b| !b.is_empty())
                    .ok_or_else(|| Error::invalid(format!("S3 URL `{display}` has no bucket")))?;
                let s3 = object_store::aws::AmazonS3Builder::from_env()
                    .with_bucket_name(bucket)
                    .with_retry(s3_retry())
                    .build()
                    .map_err(|e| {
                        Error::invalid(format!("cannot configure S3 for `{display}`: {e}"))
                    })?;
                Ok(StoreRoot::new(Arc::new(s3), url.path(), &display))
            }
            "memory" => Ok(StoreRoot::new(
                Arc::new(object_store::memory::InMemory::new()),
                url.path(),
                &display,
            )),
            other => Err(Error::invalid(format!(
                "unsupported store scheme `{other}` in `{display}`: use file://, s3:// or memory://"
            ))),
        }
    }

    /// The same store, one directory deeper.
    pub fn child(&self, rel: &str) -> StoreRoot {
        StoreRoot {
            store: self.store.clone(),
            prefix: self.path(rel),
            display: self.describe(rel),
        }
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// Full object path of `rel`.
    pub fn path(&self, rel: &str) -> Path {
        let mut p = self.prefix.clone();
        for part in rel.split('/').filter(|s| !s.is_empty()) {
            p = p.clone().join(part);
        }
        p
    }

    /// Human-readable, redacted location of `rel` for messages.
    pub fn describe(&self, rel: &str) -> String {
        if rel.is_empty() {
            self.display.clone()
        } else {
            format!("{}/{}", self.display, rel.trim_start_matches('/'))
        }
    }

    fn storage_err(&self, rel: &str, e: object_store::Error) -> Error {
        match e {
            object_store::Error::NotFound { .. } => Error::NotFound(self.describe(rel)),
            source => Error::Storage {
                path: self.describe(rel),
                source,
            },
        }
    }

    /// Reads a whole object.
    pub async fn get(&self, rel: &str) -> Result<Bytes> {
        let r = self
            .store
            .get(&self.path(rel))
            .await
            .map_err(|e| self.storage_err(rel, e))?;
        r.bytes().await.map_err(|e| self.storage_err(rel, e))
    }

    /// Reads a whole object, `None` if it does not exist.
    pub async fn get_opt(&self, rel: &str) -> Result<Option<Bytes>> {
        match self.get(rel).await {
            Ok(b) => Ok(Some(b)),
            Err(Error::NotFound(_)) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Reads a byte range of an object.
    pub async fn get_range(&self, rel: &str, range: std::ops::Range<u64>) -> Result<Bytes> {
        self.store
            .get_range(&self.path(rel), range)
            .await
            .map_err(|e| self.storage_err(rel, e))
    }

    /// Reads the last `n` bytes of an object (the whole object if shorter).
    pub async fn get_suffix(&self, rel: &str, n: u64) -> Result<Bytes> {
        let opts = GetOptions {
            range: Some(GetRange::Suffix(n)),
            ..Default::default()
        };
        let r = self
            .store
            .get_opts(&self.path(rel), opts)
            .await
            .map_err(|e| self.storage_err(rel, e))?;
        r.bytes().await.map_err(|e| self.storage_err(rel, e))
    }

    /// Writes a whole object. object_store puts are atomic: readers see the
    /// old object, nothing, or the complete new one.
    pub async fn put(&self, rel: &str, bytes: impl Into<Bytes>) -> Result<()> {
        self.store
            .put(&self.path(rel), PutPayload::from_bytes(bytes.into()))
            .await
            .map(|_| ())
            .map_err(|e| self.storage_err(rel, e))
    }

    /// Deletes an object; a missing object is not an error.
    pub async fn delete(&self, rel: &str) -> Result<()> {
        match self.store.delete(&self.path(rel)).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(self.storage_err(rel, e)),
        }
    }

    /// When the object `rel` was last written (by the store's clock),
    /// `None` if it does not exist.
    pub async fn last_modified(&self, rel: &str) -> Result<Option<std::time::SystemTime>> {
        match self.store.head(&self.path(rel)).await {
            Ok(meta) => Ok(Some(meta.last_modified.into())),
            Err(object_store::Error::NotFound { .. }) => Ok(None),
            Err(e) => Err(self.storage_err(rel, e)),
        }
    }

    /// Names of the directories directly under this root, sorted.
    pub async fn list_dirs(&self) -> Result<Vec<String>> {
        let listed = self
            .store
            .list_with_delimiter(Some(&self.prefix))
            .await
            .map_err(|e| self.storage_err("", e))?;
        let mut out: Vec<String> = listed
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        out.sort();
        Ok(out)
    }

    /// Lists objects under `rel` recursively, as `(path relative to this
    /// root, last write, size)` sorted by path.
    pub async fn list_modified(
        &self,
        rel: &str,
    ) -> Result<Vec<(String, std::time::SystemTime, u64)>> {
        let base = self.path(rel);
        let prefix_len = self.prefix.parts().count();
        let metas: Vec<_> = self
            .store
            .list(Some(&base))
            .try_collect()
            .await
            .map_err(|e| self.storage_err(rel, e))?;
        let mut out: Vec<(String, std::time::SystemTime, u64)> = metas
            .into_iter()
            .map(|m| {
                let parts: Vec<String> = m
                    .location
                    .parts()
                    .skip(prefix_len)
                    .map(|p| p.as_ref().to_string())
                    .collect();
                (parts.join("/"), m.last_modified.into(), m.size)
            })
            .collect();
        out.sort();
        Ok(out)
    }

    /// Lists objects under `rel` recursively, as `(path relative to this
    /// root, size)` sorted by path.
    pub async fn list(&self, rel: &str) -> Result<Vec<(String, u64)>> {
        Ok(self
            .list_modified(rel)
            .await?
            .into_iter()
            .map(|(path, _, size)| (path, size))
            .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Store URLs open or fail naming what is wrong, never showing a secret.
    #[test]
    fn store_urls_open_or_name_what_is_wrong() {
        let cases = [
            ("memory:///idx", Ok("memory:///idx")),
            ("memory:///idx?", Ok("memory:///idx?")),
            ("ftp://host/x", Err("unsupported store scheme `ftp`")),
            ("memory:///idx?region=eu", Err("unknown field `region`")),
            (
                "s3://AKIAXXXX:supersecret@bucket/prefix?token=abc",
                Err("`s3://***:***@bucket/prefix?token=***`: unknown field `token`"),
            ),
        ];
        for (url, want) in cases {
            match (StoreRoot::open(url), want) {
                (Ok(root), Ok(want)) => assert_eq!(root.describe(""), want, "{url}"),
                (Err(e), Err(want)) => {
                    let e = e.to_string();
                    assert!(e.contains(want), "{url}: {e}");
                    assert!(!e.contains("supersecret") && !e.contains("AKIAXXXX"), "{e}");
                }
                (Ok(_), Err(want)) => panic!("{url}: opened, want {want}"),
                (Err(e), Ok(_)) => panic!("{url}: {e}"),
            }
        }
    }

    #[tokio::test]
    async fn memory_roundtrip_and_list() {
        let root = StoreRoot::open("memory:///idx").unwrap();
        root.put("a/b.bin", Bytes::from_static(b"hello"))
            .await
            .unwrap();
        assert_eq!(
            root.get("a/b.bin").await.unwrap(),
            Bytes::from_static(b"hello")
        );
        assert_eq!(
            root.get_suffix("a/b.bin", 3).await.unwrap(),
            Bytes::from_static(b"llo")
        );
        assert_eq!(
            root.get_suffix("a/b.bin", 100).await.unwrap(),
            Bytes::from_static(b"hello")
        );
        assert_eq!(
            root.list("a").await.unwrap(),
            vec![("a/b.bin".to_string(), 5)]
        );
        assert!(matches!(root.get("nope").await, Err(Error::NotFound(_))));
        assert_eq!(root.get_opt("nope").await.unwrap(), None);
    }
}
