#!/usr/bin/env bash
# Debian packages the build and the tests need, installed when missing:
# mosquitto-clients (mosquitto_pub/sub, a real third-party client the tests
# publish with), libssl-dev + pkg-config (librdkafka's TLS to Kafka).
set -euo pipefail
missing=()
command -v mosquitto_pub >/dev/null 2>&1 || missing+=(mosquitto-clients)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
