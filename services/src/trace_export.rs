//! OpenTelemetry export (feature `otlp`): with `OTEL_EXPORTER_OTLP_ENDPOINT` set (the standard
//! variable, e.g. `http://collector:4318`), the process's spans at `info` and above (one per run
//! with its run id, model, version, chain, range and attempt; one per API request) are exported
//! over OTLP/HTTP (protobuf) in batches from a thread of their own. The standard `OTEL_*`
//! variables (headers, timeouts) apply; the service name is `model-runner`.

use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::LevelFilter;

/// Spans are exported while this lives; dropping it flushes and stops the exporter.
#[derive(Debug)]
pub struct Export(SdkTracerProvider);

impl Drop for Export {
    fn drop(&mut self) {
        if let Err(e) = self.0.shutdown() {
            eprintln!("OpenTelemetry export did not flush: {e}");
        }
    }
}

/// The exporter and its tracing layer, when `OTEL_EXPORTER_OTLP_ENDPOINT` is set.
pub fn layer<S>() -> anyhow::Result<Option<(Export, impl Layer<S>)>>
where
    S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
{
    if std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT").map_or(true, |e| e.is_empty()) {
        return Ok(None);
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| anyhow::anyhow!("setting up the OTLP exporter: {e}"))?;
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(
            Resource::builder()
                .with_service_name("model-runner")
                .build(),
        )
        .build();
    let tracer = provider.tracer("model-runner");
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_filter(LevelFilter::INFO);
    Ok(Some((Export(provider), layer)))
}
