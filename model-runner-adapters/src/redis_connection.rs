//! What the Redis adapters ([`redis_cache`](crate::redis_cache),
//! [`redis_progress`](crate::redis_progress)) share, so both read a URL, connect and describe
//! failures the same way: the URL's query goes into the adapter's own `deny_unknown_fields`
//! parameters, the connection is a reconnecting [`ConnectionManager`], and no message ever
//! holds the URL's password (the URL is shown through [`redact_url`], server and client texts
//! through [`UrlSecrets`] and [`redact_urls_in`]).

use std::time::Duration;

use model_runner_core::redact::{UrlSecrets, redact_url, redact_urls_in};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::de::DeserializeOwned;

/// A connection to the server of a `redis://` URL, with the URL's parameters.
pub(crate) struct Connected<P> {
    /// The URL as errors and `Debug` show it (password redacted).
    pub shown: String,
    /// The URL's query, parsed.
    pub params: P,
    /// Reconnects by itself after the first connection.
    pub connection: ConnectionManager,
}

/// Why [`connect`] failed; each adapter maps it into its port's error.
pub(crate) enum ConnectError {
    /// The URL or its parameters are wrong: retrying will not help.
    Invalid(String),
    /// The server did not answer (retryable).
    Unavailable(String),
}

/// Connects to the server at `url` and parses its query into `P`; `expected` lists the
/// parameters `P` takes, for the error about an unknown one. An unreachable server fails at
/// once, so a misconfigured process fails on start.
pub(crate) async fn connect<P: DeserializeOwned>(
    url: &str,
    expected: &str,
) -> Result<Connected<P>, ConnectError> {
    let shown = redact_url(url);
    let (base, query) = url.split_once('?').unwrap_or((url, ""));
    let params: P = serde_urlencoded::from_str(query).map_err(|e| {
        ConnectError::Invalid(format!(
            "{shown}: bad parameters ({e}): expected {expected}"
        ))
    })?;
    // A server or parser text may quote the URL's parts: never its password.
    let secrets = UrlSecrets::of(base);
    let scrub = |e: &redis::RedisError| secrets.scrub(&e.to_string());
    let client = redis::Client::open(base)
        .map_err(|e| ConnectError::Invalid(format!("{shown}: {}", scrub(&e))))?;
    let config = ConnectionManagerConfig::new()
        .set_number_of_retries(2)
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(Duration::from_secs(5)));
    let connection = client
        .get_connection_manager_with_config(config)
        .await
        .map_err(|e| ConnectError::Unavailable(format!("{shown}: {}", scrub(&e))))?;
    Ok(Connected {
        shown,
        params,
        connection,
    })
}

/// A failed command, described for errors: `<shown URL>: <what>: <server text>`, redacted; and
/// whether it is transient (the server unreachable, slow or gone mid-command).
pub(crate) fn command_failed(shown: &str, what: &str, e: &redis::RedisError) -> (bool, String) {
    let message = format!("{shown}: {what}: {}", redact_urls_in(&e.to_string()));
    (
        e.is_io_error() || e.is_timeout() || e.is_connection_dropped(),
        message,
    )
}
