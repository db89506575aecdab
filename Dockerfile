# mqtt-kafka-proxy container image.
#
#   docker build -t mqtt-kafka-proxy .
#   docker run --rm -p 1883:1883 -p 9090:9090 mqtt-kafka-proxy      # embedded, non-durable Kafka
#   docker run --rm -e MQTT_KAFKA_PROXY__KAFKA__BOOTSTRAP_SERVERS=kafka:9092 ... mqtt-kafka-proxy
#
# Every config key can be overridden with MQTT_KAFKA_PROXY__SECTION__KEY=value
# (a *_FILE suffix reads the value from a file, for mounted secrets). A full
# stack (Kafka, three replicas, HAProxy, Prometheus, Grafana) is in
# deploy/docker-compose.yml, Kubernetes manifests in deploy/k8s/.
# deploy/check.sh lints this file with hadolint.

# ---------------------------------------------------------------------------
# Build stage. rdkafka's default features build the bundled librdkafka with its
# own ./configure + make (a C toolchain, make, perl; zlib linked from the
# system); cmake is only needed if rdkafka's `cmake-build` feature is ever
# turned on, and is installed so that switch does not break the image.
FROM rust:1-bookworm AS builder
# Unpinned apt packages (DL3008): the base images are floating tags, and
# bookworm's security updates replace the exact versions, so a pin would break
# the build rather than make it reproducible.
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends build-essential cmake pkg-config zlib1g-dev libssl-dev \
    && rm -rf /var/lib/apt/lists/*
WORKDIR /build

# Dependencies first, against stub sources, so this layer (the slow part:
# librdkafka and ~300 crates) is reused until Cargo.toml or Cargo.lock change.
# load-tests is a workspace member: its manifest and a stub are needed for the
# workspace to resolve, but it is not built.
COPY Cargo.toml Cargo.lock ./
COPY load-tests/Cargo.toml load-tests/Cargo.toml
RUN mkdir -p src load-tests/src \
    && echo 'fn main() {}' > src/main.rs \
    && : > src/lib.rs \
    && echo 'fn main() {}' > load-tests/src/main.rs \
    && cargo build --release --locked -p mqtt-kafka-proxy

# The real sources. config.toml is compiled in (--print-default-config).
# COPY keeps the files' own modification times, which can be older than the
# stub build; touching the crate roots makes cargo rebuild the crate.
COPY config.toml ./
COPY src ./src
RUN touch src/main.rs src/lib.rs \
    && cargo build --release --locked -p mqtt-kafka-proxy \
    && ./target/release/mqtt-kafka-proxy --check-config --config config.toml

# ---------------------------------------------------------------------------
# Runtime stage: glibc, zlib, libssl3 (librdkafka's TLS to Kafka; installed
# with ca-certificates, which depends on openssl) and CA certificates; MQTT
# TLS is rustls and librdkafka is linked in statically.
FROM debian:bookworm-slim
# hadolint ignore=DL3008
RUN apt-get update \
    && apt-get install -y --no-install-recommends ca-certificates libssl3 \
    && rm -rf /var/lib/apt/lists/* \
    && groupadd --system --gid 10001 proxy \
    && useradd --system --uid 10001 --gid 10001 --no-create-home \
        --home-dir /var/lib/mqtt-kafka-proxy --shell /usr/sbin/nologin proxy \
    && install -d -o 10001 -g 10001 -m 0750 /var/lib/mqtt-kafka-proxy /var/lib/mqtt-kafka-proxy/certs
COPY --from=builder /build/target/release/mqtt-kafka-proxy /usr/local/bin/mqtt-kafka-proxy
COPY config.toml /etc/mqtt-kafka-proxy/config.toml

# Logs: one JSON object per line on stdout.
#
# TLS (8883) and WebSocket/TLS (8084): the shipped config generates a
# development CA and server certificate when the files are missing. In the
# image they go to /var/lib/mqtt-kafka-proxy/certs (writable by the proxy
# user; with a read-only root filesystem mount a volume there), so the image
# starts with no setup. Production: mount the real certificate and key, point
# ..._TLS__CERT_PATH / ..._TLS__KEY_PATH at them and set
# MQTT_KAFKA_PROXY__LISTENERS__TLS__GENERATE_DEV_CERTS=false, so a missing
# file is a start-up error rather than a silently generated certificate. Or,
# with TLS terminated elsewhere, turn the listeners off:
# MQTT_KAFKA_PROXY__LISTENERS__TLS__ENABLED=false and ..._WSS__ENABLED=false.
ENV MQTT_KAFKA_PROXY__LOG__FORMAT=json \
    MQTT_KAFKA_PROXY__LISTENERS__TLS__CERT_PATH=/var/lib/mqtt-kafka-proxy/certs/server.crt \
    MQTT_KAFKA_PROXY__LISTENERS__TLS__KEY_PATH=/var/lib/mqtt-kafka-proxy/certs/server.key \
    MQTT_KAFKA_PROXY__LISTENERS__TLS__GENERATE_DEV_CERTS=true

WORKDIR /var/lib/mqtt-kafka-proxy
# Numeric, so Kubernetes' runAsNonRoot can verify it.
USER 10001:10001

# MQTT/TCP, MQTT/TLS, MQTT/WebSocket, MQTT/WebSocket+TLS, ops (/metrics, /healthz, /readyz).
EXPOSE 1883 8883 8083 8084 9090

# SIGTERM: /readyz turns 503 (for shutdown.readiness_grace_ms), the listeners
# close, clients are disconnected over shutdown.disconnect_spread_ms, in-flight
# records are flushed (bounded by shutdown.drain_timeout_ms); exit 0 when
# nothing was left undrained. Give the container a stop timeout above
# readiness_grace_ms + drain_timeout_ms (docker stop -t / stop_grace_period /
# terminationGracePeriodSeconds).
STOPSIGNAL SIGTERM

# Liveness of the process via the ops endpoint, with bash's /dev/tcp (slim
# has no curl). Assumes the default ops.bind port 9090.
HEALTHCHECK --interval=10s --timeout=3s --start-period=30s --retries=3 \
    CMD ["bash", "-c", "exec 3<>/dev/tcp/127.0.0.1/9090 && printf 'GET /healthz HTTP/1.0\\r\\n\\r\\n' >&3 && head -n 1 <&3 | grep -q ' 200 '"]

ENTRYPOINT ["mqtt-kafka-proxy", "--config", "/etc/mqtt-kafka-proxy/config.toml"]
