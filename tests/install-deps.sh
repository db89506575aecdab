#!/usr/bin/env bash
# Debian packages the build and the tests need, installed when missing:
# mosquitto-clients (mosquitto_pub/sub, a real third-party client the tests
# publish with), libssl-dev + pkg-config (librdkafka's TLS to Kafka), a Java
# runtime (17+) and Maven (the real Apache Kafka cluster: kafka-cluster/pom.xml
# fetches the broker's jars from Maven Central into ~/.m2 and target/).
set -euo pipefail
missing=()
command -v mosquitto_pub >/dev/null 2>&1 || missing+=(mosquitto-clients)
command -v pkg-config >/dev/null 2>&1 || missing+=(pkg-config)
pkg-config --exists openssl 2>/dev/null || missing+=(libssl-dev)
command -v java >/dev/null 2>&1 || missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || missing+=(maven)
if [ ${#missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${missing[@]}"
fi
