//! How the Redis adapters ([`redis_cache`](crate::redis_cache),
//! [`redis_progress`](crate::redis_progress)) turn a failure into their port's error, so that
//! both classify it the same way: a bad URL or parameter is [`Failure::Invalid`], a server that
//! cannot be reached, or that went away or was too slow during a command, is
//! [`Failure::Unavailable`] (retryable), any other failed command [`Failure::Backend`]. Each
//! adapter's port error says what each kind is in that port ([`RedisPortError`]); the messages
//! come redacted from [`redis_connection`](crate::redis_connection).

use serde::de::DeserializeOwned;

use crate::redis_connection::{ConnectError, Connected, command_failed, connect};

/// What kind of failure a Redis adapter reports.
pub(crate) enum Failure {
    /// The URL or its parameters are wrong: retrying will not help.
    Invalid,
    /// The server is unreachable, slow or went away (retryable).
    Unavailable,
    /// Any other failure of a command.
    Backend,
}

/// A port's error, as a Redis adapter of that port reports it.
pub(crate) trait RedisPortError {
    /// The port's error for a failure of `kind`, described by `message` (redacted).
    fn of(kind: Failure, message: String) -> Self;
}

/// [`connect`], with its failure as the port's error `E`.
pub(crate) async fn connect_for<P: DeserializeOwned, E: RedisPortError>(
    url: &str,
    expected: &str,
) -> Result<Connected<P>, E> {
    connect(url, expected).await.map_err(|e| match e {
        ConnectError::Invalid(message) => E::of(Failure::Invalid, message),
        ConnectError::Unavailable(message) => E::of(Failure::Unavailable, message),
    })
}

/// The port's error `E` for the failed command `what` on the server shown as `shown`
/// (see [`command_failed`]): `Unavailable` when transient, else `Backend`.
pub(crate) fn command_error<E: RedisPortError>(
    shown: &str,
    what: &str,
    e: &redis::RedisError,
) -> E {
    let (transient, message) = command_failed(shown, what, e);
    let kind = if transient {
        Failure::Unavailable
    } else {
        Failure::Backend
    };
    E::of(kind, message)
}
