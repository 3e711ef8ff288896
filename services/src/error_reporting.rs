//! Error reporting to Sentry (feature `sentry`): with `SENTRY_DSN` set, the engine's reports
//! reach Sentry as events: failed attempts (a model or source panic included, with its message)
//! and dead-lettered runs, each with the run's fields (run id, model, version, chain, range,
//! attempt). Other warnings and errors travel as breadcrumbs of the next report.
//!
//! A report is a log event the engine marks with the field `report = true`; this module's
//! tracing layer turns exactly those into Sentry events. Secrets are scrubbed before sending:
//! every URL in a message, an exception or an extra value goes through the one redactor.

use model_runner_core::redact::redact_urls_in;
use sentry::integrations::tracing::{BreadcrumbLayer, ErrorLayer};
use sentry::protocol::{Event, Value};
use tracing_subscriber::Layer;
use tracing_subscriber::filter::filter_fn;

/// Starts the Sentry client when `SENTRY_DSN` is set (`None` otherwise); reports are sent while
/// the guard lives and flushed when it is dropped.
pub fn init() -> Option<sentry::ClientInitGuard> {
    let dsn = std::env::var("SENTRY_DSN").ok().filter(|d| !d.is_empty())?;
    let mut options = sentry::ClientOptions::default();
    options.release = sentry::release_name!();
    options.environment = std::env::var("MODEL_RUNNER_ENV").ok().map(Into::into);
    options.before_send = Some(std::sync::Arc::new(|event| Some(scrub(event))));
    Some(sentry::init((dsn, options)))
}

/// The tracing layer: events with a `report` field become Sentry events; other warnings and
/// errors become breadcrumbs (sent with the next report); the rest is ignored.
pub fn layer<S>() -> impl Layer<S>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    let reported = |md: &tracing::Metadata<'_>| md.fields().field("report").is_some();
    BreadcrumbLayer::new()
        .with_filter(filter_fn(move |md| {
            md.is_event() && *md.level() <= tracing::Level::WARN && !reported(md)
        }))
        .and_then(ErrorLayer::new().with_filter(filter_fn(move |md| reported(md))))
}

/// `event` with every URL in its message, exceptions and extra values redacted.
pub fn scrub(mut event: Event<'static>) -> Event<'static> {
    if let Some(m) = &mut event.message {
        *m = redact_urls_in(m);
    }
    if let Some(logentry) = &mut event.logentry {
        logentry.message = redact_urls_in(&logentry.message);
    }
    for exception in event.exception.values.iter_mut() {
        if let Some(v) = &mut exception.value {
            *v = redact_urls_in(v);
        }
    }
    for value in event.extra.values_mut() {
        scrub_value(value);
    }
    for crumb in event.breadcrumbs.values.iter_mut() {
        if let Some(m) = &mut crumb.message {
            *m = redact_urls_in(m);
        }
        for value in crumb.data.values_mut() {
            scrub_value(value);
        }
    }
    event
}

fn scrub_value(value: &mut Value) {
    match value {
        Value::String(s) => *s = redact_urls_in(s),
        Value::Array(items) => items.iter_mut().for_each(scrub_value),
        Value::Object(map) => map.values_mut().for_each(scrub_value),
        _ => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_in_every_part_of_an_event_are_redacted() {
        let mut event = Event {
            message: Some("cannot connect to postgres://u:hunter2@db/x".into()),
            ..Default::default()
        };
        event.extra.insert(
            "error".into(),
            Value::String("amqp://g:hunter2@mq/%2f refused".into()),
        );
        event.exception.values.push(sentry::protocol::Exception {
            value: Some("https://node/v3/hunter2keyhunter2key123".into()),
            ..Default::default()
        });
        let scrubbed = scrub(event);
        let text = serde_json::to_string(&scrubbed).unwrap();
        assert!(!text.contains("hunter2"), "{text}");
        assert!(text.contains("postgres://u:***@db/x"), "{text}");
    }
}
