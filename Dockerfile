# Multi-stage build: compile with the Rust toolchain (librdkafka is built from
# source by rdkafka-sys), run on a slim Debian as a non-root user.
FROM rust:1-bookworm AS build
WORKDIR /src
RUN apt-get update && apt-get install -y --no-install-recommends cmake && rm -rf /var/lib/apt/lists/*
COPY . .
RUN cargo build --release --bin mqtt-kafka-proxy

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --home /app proxy
WORKDIR /app
COPY --from=build /src/target/release/mqtt-kafka-proxy /usr/local/bin/mqtt-kafka-proxy
COPY config.toml /app/config.toml
RUN mkdir -p /app/certs && chown -R proxy /app
USER proxy
EXPOSE 1883 8883 9092
# Until the HTTP health endpoints land, "healthy" means the MQTT port accepts.
HEALTHCHECK --interval=10s --timeout=3s CMD bash -c '</dev/tcp/127.0.0.1/1883' || exit 1
ENTRYPOINT ["mqtt-kafka-proxy"]
CMD ["--config", "/app/config.toml"]
