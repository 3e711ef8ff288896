# syntax=docker/dockerfile:1
# model-runner with every server adapter (PostgreSQL, RabbitMQ, JSON-RPC, Kafka, Parquet/S3):
#
#   docker build -t ghcr.io/example/model-runner:latest .
#   docker run --rm ghcr.io/example/model-runner:latest --help
#
# The manifests in deploy/kubernetes/ run this image as `model-runner <command>`.

# --- build ----------------------------------------------------------------------------------
# The Rust version is the workspace's rust-version (Cargo.toml); bookworm matches the runtime's
# glibc.
FROM rust:1.94-bookworm AS build
# Native parts of the `servers` build, none linked from the system at run time except zlib:
# - rdkafka-sys (feature `kafka`) builds the bundled librdkafka with its own ./configure and
#   make (rdkafka 0.39's default features: libz, no cmake-build, no ssl/sasl, so neither
#   libssl-dev nor libsasl2-dev is needed; add them with the `kafka-tls` feature);
# - libz-sys finds the system zlib through pkg-config;
# - aws-lc-sys (rustls) may build with cmake; zstd-sys, libmimalloc-sys, libsqlite3-sys use cc.
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential cmake pkg-config zlib1g-dev perl python3 \
 && rm -rf /var/lib/apt/lists/*
WORKDIR /src
COPY . .
# The README's release build with every server adapter; --locked builds Cargo.lock's versions.
RUN --mount=type=cache,target=/usr/local/cargo/registry \
    --mount=type=cache,target=/src/target \
    cargo build --release --locked -p model-runner --features servers \
 && cp target/release/model-runner /usr/local/bin/model-runner

# --- runtime --------------------------------------------------------------------------------
FROM debian:12-slim
# ca-certificates: TLS to S3, JSON-RPC nodes, amqps:// and postgres with sslmode.
RUN apt-get update \
 && apt-get install -y --no-install-recommends ca-certificates zlib1g \
 && rm -rf /var/lib/apt/lists/* \
 && groupadd --gid 10001 model-runner \
 && useradd --uid 10001 --gid 10001 --no-create-home --home-dir /nonexistent \
      --shell /usr/sbin/nologin model-runner
COPY --from=build /usr/local/bin/model-runner /usr/local/bin/model-runner
# A writable directory for the embedded defaults (sqlite://model-runner.db, file://sink) when
# the image runs without server URLs; the Kubernetes manifests use servers and a read-only root.
WORKDIR /var/lib/model-runner
RUN chown model-runner:model-runner /var/lib/model-runner
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001
# Exec form: model-runner is PID 1 and receives SIGTERM itself (graceful shutdown).
ENTRYPOINT ["model-runner"]
CMD ["--help"]
