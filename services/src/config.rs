//! `model-runner.toml`: the long-lived configuration of a deployment, in one file.
//!
//! Flags and `MODEL_RUNNER_*` environment variables override the file; the file overrides the
//! built-in defaults. Any string may reference an environment variable as `${NAME}` (so a
//! password or token stays out of the file); an unset variable is an error naming the key.
//! Unknown keys are errors, so a typo is caught rather than ignored. `model-runner config
//! check FILE` validates a file and explains each error with its line and column;
//! `model-runner config show` prints the effective configuration with secrets redacted.
//!
//! The documented example, `deploy/model-runner.example.toml`, shows every key.

use std::collections::BTreeMap;
use std::path::Path;

use anyhow::{Context, bail};
use model_runner_core::Chain;
use model_runner_core::redact::redact_url;
use serde::{Deserialize, Serialize};

/// The whole file. Every key is optional.
#[derive(Debug, Clone, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Environment prefix of sink topics (`--env`).
    pub env: Option<String>,
    /// Run store URL (`--store`).
    pub store: Option<String>,
    /// Queue URL (`--queue`).
    pub queue: Option<String>,
    /// Sink URL (`--sink`).
    pub sink: Option<String>,
    /// The most blocks one run may cover (`--max-blocks-per-run`).
    pub max_blocks_per_run: Option<u64>,
    /// Board of live run progress (`--progress`): `redis://...` or `memory://`.
    pub progress: Option<String>,
    /// Block sources by chain name (`--chain NAME=URL`).
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub chains: BTreeMap<String, ChainConfig>,
    /// Realtime subscriptions (`--realtime CHAIN:MODEL`) of `all` and `scheduler`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub realtime: Vec<RealtimeConfig>,
    /// Backoff between attempts.
    pub retry: Option<RetryConfig>,
    /// Worker settings (`worker` and `all`).
    pub worker: Option<WorkerFileConfig>,
    /// API settings.
    pub api: Option<ApiFileConfig>,
}

/// One chain's block source.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ChainConfig {
    /// Source URL (`devnet://`, `file://`, `http(s)://`).
    pub url: String,
    /// Blocks realtime stays behind the head (reorg safety); `--confirmations` overrides.
    pub confirmations: Option<u64>,
    /// The deepest chain reorganisation realtime follows (default 128 blocks); a deeper one
    /// stops the subscription. `--max-reorg-depth` overrides.
    pub max_reorg_depth: Option<u64>,
}

/// One realtime subscription.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RealtimeConfig {
    /// Chain (must have a source in `[chains]` or `--chain`).
    pub chain: String,
    /// Model name.
    pub model: String,
    /// Longest realtime run, in blocks.
    pub max_blocks_per_run: Option<u64>,
    /// Queue for its runs instead of the routed `<chain>_realtime_<kind>` (a dedicated worker
    /// group; its workers must consume it with `--queues`).
    pub queue: Option<String>,
}

/// Backoff between attempts: `base_secs`, doubling, at most `max_secs`, ±`jitter`.
#[derive(Debug, Clone, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryConfig {
    /// Delay before the second attempt, seconds.
    pub base_secs: Option<f64>,
    /// Longest delay, seconds.
    pub max_secs: Option<f64>,
    /// Relative jitter, 0 to 1.
    pub jitter: Option<f64>,
}

/// Worker settings; each matches the worker flag of the same name.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WorkerFileConfig {
    /// `--concurrency`.
    pub concurrency: Option<usize>,
    /// `--lease-secs`.
    pub lease_secs: Option<u64>,
    /// `--shutdown-grace-secs`.
    pub shutdown_grace_secs: Option<u64>,
    /// `--max-attempts`.
    pub max_attempts: Option<u32>,
    /// `--queues` of `worker`.
    pub queues: Option<Vec<String>>,
}

/// API settings.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ApiFileConfig {
    /// Write tokens, comma-separated (added to `MODEL_RUNNER_API_TOKENS`); use `${VAR}`.
    pub write_tokens: Option<String>,
    /// `--api-open-reads`.
    pub open_reads: Option<bool>,
}

impl ConfigFile {
    /// Reads, parses, expands `${VAR}` references and checks `path`. Errors name the file and,
    /// for syntax and type errors, the line and column.
    pub fn load(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the config file {}", path.display()))?;
        Self::parse(&text, &path.display().to_string())
    }

    /// [`load`](Self::load) from text; `origin` names it in errors.
    pub fn parse(text: &str, origin: &str) -> anyhow::Result<Self> {
        let mut config: ConfigFile = toml::from_str(text)
            .map_err(|e| anyhow::anyhow!("{origin}: {}", e.to_string().trim_end()))?;
        config.expand(origin)?;
        config.check(origin)?;
        Ok(config)
    }

    /// Replaces `${NAME}` in every string by the environment variable `NAME`.
    fn expand(&mut self, origin: &str) -> anyhow::Result<()> {
        let expand = |key: &str, value: &mut String| -> anyhow::Result<()> {
            *value = expand_env(value).map_err(|name| {
                anyhow::anyhow!(
                    "{origin}: `{key}` refers to the environment variable {name}, which is not set"
                )
            })?;
            Ok(())
        };
        for (key, value) in [
            ("env", &mut self.env),
            ("store", &mut self.store),
            ("queue", &mut self.queue),
            ("sink", &mut self.sink),
            ("progress", &mut self.progress),
        ] {
            if let Some(v) = value {
                expand(key, v)?;
            }
        }
        for (name, chain) in &mut self.chains {
            expand(&format!("chains.{name}.url"), &mut chain.url)?;
        }
        if let Some(api) = &mut self.api
            && let Some(tokens) = &mut api.write_tokens
        {
            expand("api.write_tokens", tokens)?;
        }
        Ok(())
    }

    /// Checks what the types cannot: names, ranges and references between sections.
    fn check(&self, origin: &str) -> anyhow::Result<()> {
        for name in self.chains.keys() {
            Chain::new(name.clone())
                .map_err(|e| anyhow::anyhow!("{origin}: [chains.{name}]: {e}"))?;
        }
        // Only names and chains are checked: an empty store stands in for `abi_events`' registry.
        let models = model_runner_core::models::builtin_with_store(std::sync::Arc::new(
            model_runner_core::memory::MemoryRunStore::new(),
        ));
        for (i, r) in self.realtime.iter().enumerate() {
            let at = format!(
                "{origin}: [[realtime]] #{} ({}:{})",
                i + 1,
                r.chain,
                r.model
            );
            let chain = Chain::new(r.chain.clone()).map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
            models
                .get_for(&r.model, &chain)
                .map_err(|e| anyhow::anyhow!("{at}: {e}"))?;
            if r.max_blocks_per_run == Some(0) {
                bail!("{at}: max_blocks_per_run must be at least 1");
            }
            if let Some(q) = &r.queue
                && (q.is_empty() || q.len() > 255)
            {
                bail!("{at}: queue must have 1 to 255 characters");
            }
        }
        if self.max_blocks_per_run == Some(0) {
            bail!("{origin}: max_blocks_per_run must be at least 1");
        }
        if let Some(retry) = &self.retry {
            for (key, v) in [("base_secs", retry.base_secs), ("max_secs", retry.max_secs)] {
                if v.is_some_and(|v| !(v.is_finite() && v >= 0.0)) {
                    bail!("{origin}: retry.{key} must be a number of seconds, 0 or more");
                }
            }
            if retry.jitter.is_some_and(|j| !(0.0..=1.0).contains(&j)) {
                bail!("{origin}: retry.jitter must be between 0 and 1");
            }
        }
        if let Some(w) = &self.worker {
            if w.concurrency == Some(0) {
                bail!("{origin}: worker.concurrency must be at least 1");
            }
            if let Some(n) = w.max_attempts
                && let Err(e) = crate::submission::max_attempts(Some(n))
            {
                bail!("{origin}: worker.{e}");
            }
        }
        Ok(())
    }

    /// The configuration with every secret replaced by `***`, as TOML: URLs through the one
    /// redactor, tokens whole.
    pub fn redacted_toml(&self) -> String {
        let mut shown = self.clone();
        for url in [
            &mut shown.store,
            &mut shown.queue,
            &mut shown.sink,
            &mut shown.progress,
        ]
        .into_iter()
        .flatten()
        {
            *url = redact_url(url);
        }
        for chain in shown.chains.values_mut() {
            chain.url = redact_url(&chain.url);
        }
        if let Some(api) = &mut shown.api
            && let Some(tokens) = &mut api.write_tokens
        {
            *tokens = "***".into();
        }
        toml::to_string_pretty(&shown).unwrap_or_else(|e| format!("# cannot show: {e}\n"))
    }
}

/// `text` with each `${NAME}` replaced by the environment variable; `Err(NAME)` when unset.
fn expand_env(text: &str) -> Result<String, String> {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(start) = rest.find("${") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            return Ok(out);
        };
        let name = &after[..end];
        out.push_str(&std::env::var(name).map_err(|_| name.to_owned())?);
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The documented example parses (its variables pointed at one the test runner sets) and
    /// is shown with no secret.
    #[test]
    fn the_documented_example_is_valid_and_shown_redacted() {
        let secret = std::env::var("CARGO_PKG_NAME").unwrap();
        let example = include_str!("../../deploy/model-runner.example.toml")
            .replace("${PG_PASSWORD}", "${CARGO_PKG_NAME}")
            .replace("${AMQP_PASSWORD}", "${CARGO_PKG_NAME}")
            .replace("${INFURA_KEY}", "key0123456789abcdef${CARGO_PKG_NAME}")
            .replace("${MODEL_RUNNER_WRITE_TOKEN}", "${CARGO_PKG_NAME}");
        let config = ConfigFile::parse(&example, "example").unwrap();
        assert_eq!(config.realtime.len(), 2);
        assert_eq!(config.chains["ethereum"].confirmations, Some(12));
        assert!(config.store.as_deref().unwrap().contains(&secret));
        let shown = config.redacted_toml();
        assert!(!shown.contains(&secret), "{shown}");
        assert!(
            shown.contains("postgres://runner:***@db:5432/runs"),
            "{shown}"
        );
    }

    /// `progress` takes `${VAR}` like the other URLs and is shown without its password.
    #[test]
    fn the_progress_url_expands_variables_and_is_shown_redacted() {
        let secret = std::env::var("CARGO_PKG_NAME").unwrap();
        let config = ConfigFile::parse(
            "progress = \"redis://runner:${CARGO_PKG_NAME}@cache:6379/0\"\n",
            "f.toml",
        )
        .unwrap();
        assert_eq!(
            config.progress.as_deref(),
            Some(format!("redis://runner:{secret}@cache:6379/0").as_str())
        );
        let shown = config.redacted_toml();
        assert!(!shown.contains(&secret), "{shown}");
        assert!(
            shown.contains("progress = \"redis://runner:***@cache:6379/0\""),
            "{shown}"
        );
    }

    #[test]
    fn errors_name_the_line_column_and_key() {
        let err = ConfigFile::parse("env = \"prod\"\nstor = \"x\"\n", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("f.toml") && err.contains("line 2, column 1"),
            "{err}"
        );
        assert!(err.contains("unknown field `stor`"), "{err}");
        let err = ConfigFile::parse("[worker]\nconcurrency = \"eight\"\n", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2"), "{err}");
        let err = ConfigFile::parse("store = \"${NO_SUCH_VAR_42}\"\n", "f.toml")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("`store`") && err.contains("NO_SUCH_VAR_42"),
            "{err}"
        );
        let err = ConfigFile::parse(
            "[[realtime]]\nchain = \"ethereum\"\nmodel = \"nope\"\n",
            "f.toml",
        )
        .unwrap_err()
        .to_string();
        assert!(
            err.contains("[[realtime]] #1") && err.contains("nope"),
            "{err}"
        );
    }
}
