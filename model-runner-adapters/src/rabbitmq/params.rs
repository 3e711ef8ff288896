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
//! `auth_mechanism`) are left in the URL handed to lapin; the ones above are taken out. The query
//! is read by `serde_urlencoded` into a `deny_unknown_fields` struct: any other parameter, a
//! repeated one, or a value that does not parse is an error naming the parameter; the URL in it
//! is shown through the core redactor.
//!
//! Example: `amqp://runner:secret@mq/%2f?queue_type=quorum&delivery_limit=5&consumer_timeout_ms=21600000&prefetch=32`.

use std::time::Duration;

use model_runner_core::ports::QueueError;

use super::{ADAPTER, AmqpOptions, InvalidUrl, QueueType, checked_url};

/// The query of an `amqp://` URL, as given: this adapter's parameters, then lapin's (passed
/// through). Values are checked by [`parse`], whose errors quote them.
#[derive(serde::Deserialize)]
#[serde(deny_unknown_fields)]
struct AmqpParams {
    queue_type: Option<String>,
    delivery_limit: Option<String>,
    consumer_timeout_ms: Option<String>,
    prefetch: Option<String>,
    connect_timeout_ms: Option<String>,
    confirm_timeout_ms: Option<String>,
    publisher_channels: Option<String>,
    connection_name: Option<String>,
    heartbeat: Option<String>,
    connection_timeout: Option<String>,
    frame_max: Option<String>,
    channel_max: Option<String>,
    auth_mechanism: Option<String>,
}

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
    let params: AmqpParams = serde_urlencoded::from_str(parsed.query().unwrap_or(""))
        .map_err(|e| invalid(format!("parameters: {e}")))?;
    let bad = |key: &str, value: &str, expected: &str| {
        invalid(format!("parameter `{key}={value}`: expected {expected}"))
    };
    let positive_ms = |key: &str, value: Option<String>| {
        value
            .map(|v| match v.parse::<u64>() {
                Ok(ms) if ms > 0 => Ok(Duration::from_millis(ms)),
                _ => Err(bad(key, &v, "a positive number of milliseconds")),
            })
            .transpose()
    };
    let mut options = AmqpOptions::default();
    let quorum = params
        .queue_type
        .map(|v| match v.as_str() {
            "classic" => Ok(false),
            "quorum" => Ok(true),
            _ => Err(bad("queue_type", &v, "`classic` or `quorum`")),
        })
        .transpose()?;
    let delivery_limit = params
        .delivery_limit
        .map(|v| match v.parse::<u32>() {
            Ok(n) if n > 0 => Ok(n),
            _ => Err(bad("delivery_limit", &v, "an integer from 1 to 4294967295")),
        })
        .transpose()?;
    if let Some(t) = positive_ms("consumer_timeout_ms", params.consumer_timeout_ms)? {
        options.consumer_timeout = Some(t);
    }
    if let Some(t) = positive_ms("connect_timeout_ms", params.connect_timeout_ms)? {
        options.connect_timeout = t;
    }
    if let Some(t) = positive_ms("confirm_timeout_ms", params.confirm_timeout_ms)? {
        options.confirm_timeout = t;
    }
    if let Some(v) = params.prefetch {
        match v.parse::<u16>() {
            Ok(n) if n > 0 => options.prefetch = Some(n),
            _ => return Err(bad("prefetch", &v, "an integer from 1 to 65535")),
        }
    }
    if let Some(v) = params.publisher_channels {
        options.publisher_channels = v
            .parse()
            .map_err(|_| bad("publisher_channels", &v, "a non-negative integer"))?;
    }
    match params.connection_name {
        Some(v) if v.is_empty() => return Err(bad("connection_name", &v, "a non-empty name")),
        Some(v) => options.connection_name = v,
        None => {}
    }
    let kept: Vec<(&str, String)> = [
        ("heartbeat", params.heartbeat),
        ("connection_timeout", params.connection_timeout),
        ("frame_max", params.frame_max),
        ("channel_max", params.channel_max),
        ("auth_mechanism", params.auth_mechanism),
    ]
    .into_iter()
    .filter_map(|(k, v)| v.map(|v| (k, v)))
    .collect();
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
            ("prefetch=4&prefetch=8", "duplicate field `prefetch`"),
            ("prefech=4", "unknown field `prefech`, expected one of"),
            ("x-delivery-limit=5", "unknown field `x-delivery-limit`"),
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
