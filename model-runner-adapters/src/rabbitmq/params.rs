//! [`AmqpOptions`] from the query of an `amqp://` URL, for the services' `--queue` flag.
//!
//! | parameter | value | sets |
//! |---|---|---|
//! | `queue_type` | `classic` (default) or `quorum` | [`AmqpOptions::queue_type`] |
//! | `delivery_limit` | integer ≥ 1; needs `queue_type=quorum` | the quorum queues' `x-delivery-limit` |
//! | `consumer_timeout_ms` | integer ≥ 1 | [`AmqpOptions::consumer_timeout`] |
//! | `prefetch` | 1 ..= 65535 | [`AmqpOptions::prefetch`] |
//! | `connect_timeout_ms` | integer ≥ 1 | [`AmqpOptions::connect_timeout`] |
//! | `confirm_timeout_ms` | integer ≥ 1 | [`AmqpOptions::confirm_timeout`] |
//! | `publisher_channels` | integer | [`AmqpOptions::publisher_channels`] |
//! | `connection_name` | text | [`AmqpOptions::connection_name`] |
//!
//! lapin's own parameters (`heartbeat`, `connection_timeout`, `frame_max`, `channel_max`,
//! `auth_mechanism`) are left in the URL handed to lapin; the ones above are taken out. Any other
//! parameter, a repeated one, or a value that does not parse is an error naming the parameter;
//! the URL in it has its password replaced by `***`.
//!
//! Example: `amqp://runner:secret@mq/%2f?queue_type=quorum&delivery_limit=5&consumer_timeout_ms=21600000&prefetch=32`.

use std::collections::HashSet;
use std::time::Duration;

use model_runner_core::ports::QueueError;

use super::{ADAPTER, AmqpOptions, InvalidUrl, QueueType, checked_url};

/// The parameters this module reads.
const OWN: &[&str] = &[
    "queue_type",
    "delivery_limit",
    "consumer_timeout_ms",
    "prefetch",
    "connect_timeout_ms",
    "confirm_timeout_ms",
    "publisher_channels",
    "connection_name",
];

/// The parameters lapin reads, passed through.
const LAPIN: &[&str] = &[
    "heartbeat",
    "connection_timeout",
    "frame_max",
    "channel_max",
    "auth_mechanism",
];

/// Splits `url` into the URL for lapin (without this adapter's parameters) and the options its
/// parameters set over [`AmqpOptions::default`]. See the module docs.
pub(super) fn parse(url: &str) -> Result<(String, AmqpOptions), QueueError> {
    // Checks the scheme and host, and gives the redacted form for errors.
    let redacted = checked_url(url)?;
    let shown = redacted.split('?').next().unwrap_or(&redacted).to_owned();
    let invalid = |reason: String| QueueError::Backend {
        adapter: ADAPTER,
        source: Box::new(InvalidUrl {
            url: shown.clone(),
            reason,
        }),
    };
    let mut parsed = url::Url::parse(url).map_err(|e| invalid(e.to_string()))?;
    let mut options = AmqpOptions::default();
    let mut seen = HashSet::new();
    let mut kept: Vec<(String, String)> = Vec::new();
    let mut quorum = None::<bool>;
    let mut delivery_limit = None::<u32>;
    for (key, value) in parsed.query_pairs() {
        let (key, value) = (key.into_owned(), value.into_owned());
        if !seen.insert(key.clone()) {
            return Err(invalid(format!("parameter `{key}` is given twice")));
        }
        if LAPIN.contains(&key.as_str()) {
            kept.push((key, value));
            continue;
        }
        let bad =
            |expected: &str| invalid(format!("parameter `{key}={value}`: expected {expected}"));
        let positive_ms = || match value.parse::<u64>() {
            Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
            _ => Err(bad("a positive number of milliseconds")),
        };
        match key.as_str() {
            "queue_type" => {
                quorum = Some(match value.as_str() {
                    "classic" => false,
                    "quorum" => true,
                    _ => return Err(bad("`classic` or `quorum`")),
                });
            }
            "delivery_limit" => match value.parse::<u32>() {
                Ok(n) if n > 0 => delivery_limit = Some(n),
                _ => return Err(bad("an integer from 1 to 4294967295")),
            },
            "consumer_timeout_ms" => options.consumer_timeout = Some(positive_ms()?),
            "connect_timeout_ms" => options.connect_timeout = positive_ms()?,
            "confirm_timeout_ms" => options.confirm_timeout = positive_ms()?,
            "prefetch" => match value.parse::<u16>() {
                Ok(n) if n > 0 => options.prefetch = Some(n),
                _ => return Err(bad("an integer from 1 to 65535")),
            },
            "publisher_channels" => {
                options.publisher_channels =
                    value.parse().map_err(|_| bad("a non-negative integer"))?;
            }
            "connection_name" if !value.is_empty() => options.connection_name = value,
            "connection_name" => return Err(bad("a non-empty name")),
            _ => {
                return Err(invalid(format!(
                    "unknown parameter `{key}`; accepted: {}, and lapin's {}",
                    OWN.join(", "),
                    LAPIN.join(", ")
                )));
            }
        }
    }
    options.queue_type = match (quorum, delivery_limit) {
        (Some(true), delivery_limit) => QueueType::Quorum { delivery_limit },
        (_, Some(_)) => {
            return Err(invalid(
                "parameter `delivery_limit` needs `queue_type=quorum` (classic queues have no delivery limit)"
                    .to_owned(),
            ));
        }
        (_, None) => QueueType::Classic,
    };
    if kept.is_empty() {
        parsed.set_query(None);
    } else {
        parsed.query_pairs_mut().clear().extend_pairs(kept);
    }
    Ok((parsed.to_string(), options))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_parameters_is_the_default() {
        let (url, o) = parse("amqp://guest:guest@127.0.0.1:5672/%2f").unwrap();
        assert_eq!(url, "amqp://guest:guest@127.0.0.1:5672/%2f");
        let d = AmqpOptions::default();
        assert_eq!(o.queue_type, d.queue_type);
        assert_eq!(o.prefetch, None);
        assert_eq!(o.consumer_timeout, None);
    }

    #[test]
    fn every_parameter_is_read_and_stripped() {
        let (url, o) = parse(
            "amqp://u:p@mq:5672/%2f?queue_type=quorum&delivery_limit=5&consumer_timeout_ms=3600000\
             &prefetch=32&heartbeat=10&connect_timeout_ms=1500&confirm_timeout_ms=2500\
             &publisher_channels=0&connection_name=worker-1",
        )
        .unwrap();
        assert_eq!(url, "amqp://u:p@mq:5672/%2f?heartbeat=10");
        assert_eq!(
            o.queue_type,
            QueueType::Quorum {
                delivery_limit: Some(5)
            }
        );
        assert_eq!(o.consumer_timeout, Some(Duration::from_secs(3600)));
        assert_eq!(o.prefetch, Some(32));
        assert_eq!(o.connect_timeout, Duration::from_millis(1500));
        assert_eq!(o.confirm_timeout, Duration::from_millis(2500));
        assert_eq!(o.publisher_channels, 0);
        assert_eq!(o.connection_name, "worker-1");
        let (_, o) = parse("amqps://mq/?queue_type=quorum").unwrap();
        assert_eq!(
            o.queue_type,
            QueueType::Quorum {
                delivery_limit: None
            }
        );
        let (url, o) = parse("amqp://mq/%2f?queue_type=classic").unwrap();
        assert_eq!(
            (url.as_str(), o.queue_type),
            ("amqp://mq/%2f", QueueType::Classic)
        );
    }

    #[test]
    fn bad_parameters_are_named_without_the_password() {
        for (query, named) in [
            ("queue_type=stream", "queue_type=stream"),
            ("queue_type=quorum&delivery_limit=0", "delivery_limit=0"),
            ("queue_type=quorum&delivery_limit=-1", "delivery_limit=-1"),
            ("queue_type=quorum&delivery_limit=x", "delivery_limit=x"),
            ("delivery_limit=5", "needs `queue_type=quorum`"),
            (
                "queue_type=classic&delivery_limit=5",
                "needs `queue_type=quorum`",
            ),
            ("consumer_timeout_ms=0", "consumer_timeout_ms=0"),
            ("consumer_timeout_ms=1h", "consumer_timeout_ms=1h"),
            ("prefetch=0", "prefetch=0"),
            ("prefetch=65536", "prefetch=65536"),
            ("connect_timeout_ms=", "connect_timeout_ms="),
            ("confirm_timeout_ms=1.5", "confirm_timeout_ms=1.5"),
            ("publisher_channels=-2", "publisher_channels=-2"),
            ("connection_name=", "connection_name="),
            ("prefetch=4&prefetch=8", "`prefetch` is given twice"),
            ("prefech=4", "unknown parameter `prefech`"),
            ("x-delivery-limit=5", "unknown parameter `x-delivery-limit`"),
        ] {
            let err = parse(&format!("amqp://guest:hunter2@mq/%2f?{query}")).unwrap_err();
            assert!(
                matches!(err, QueueError::Backend { .. }),
                "{query}: {err:?}"
            );
            let shown = err.to_string();
            assert!(shown.contains(named), "{query}: {shown}");
            assert!(shown.contains("guest:***@mq"), "{query}: {shown}");
            assert!(!shown.contains("hunter2"), "{query}: {shown}");
        }
        let err = parse("http://guest:hunter2@mq/?prefetch=1")
            .unwrap_err()
            .to_string();
        assert!(err.contains("scheme") && !err.contains("hunter2"), "{err}");
    }
}
