#!/usr/bin/env bash
# Third-party Kafka clients that tests/clients.rs reads the embedded broker
# with, installed when missing (idempotent, safe to run on every test run):
#   kcat          Debian package (librdkafka's CLI)
#   kafka-python  latest from PyPI, into a venv at target/py-clients
#   kafkajs       pinned by tests/clients/package-lock.json (`npm ci` in a
#                 copy at target/js-clients, so no node_modules lands in tests/)
#   Java          the Apache Kafka console consumer comes from Maven jars
#                 (kafka-cluster fetches them); this script installs `java`
#                 and `mvn` when missing.
# Prints nothing on success when everything is already there.
set -euo pipefail
cd "$(dirname "$0")/.."
root="$PWD"

apt_missing=()
command -v kcat >/dev/null 2>&1 || apt_missing+=(kcat)
command -v java >/dev/null 2>&1 || apt_missing+=(openjdk-17-jre-headless)
command -v mvn >/dev/null 2>&1 || apt_missing+=(maven)
command -v node >/dev/null 2>&1 || apt_missing+=(nodejs)
command -v npm >/dev/null 2>&1 || apt_missing+=(npm)
command -v python3 >/dev/null 2>&1 || apt_missing+=(python3)
python3 -c 'import venv, ensurepip' >/dev/null 2>&1 || apt_missing+=(python3-venv)
if [ ${#apt_missing[@]} -gt 0 ]; then
  sudo=""
  [ "$(id -u)" = 0 ] || sudo="sudo"
  $sudo apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq "${apt_missing[@]}"
fi

# kafka-python: the newest release, so the tests catch what its newest
# protocol code trips on. Reinstalled only when the venv lacks it.
venv="$root/target/py-clients"
if ! "$venv/bin/python" -c 'import kafka' >/dev/null 2>&1; then
  python3 -m venv "$venv"
  "$venv/bin/pip" install -q --disable-pip-version-check --upgrade kafka-python
fi

# kafkajs at the version the lock file pins; reinstalled when the lock changes.
js="$root/target/js-clients"
if ! cmp -s "$root/tests/clients/package-lock.json" "$js/package-lock.json" \
  || [ ! -d "$js/node_modules/kafkajs" ]; then
  mkdir -p "$js"
  cp "$root/tests/clients/package.json" "$root/tests/clients/package-lock.json" "$js/"
  (cd "$js" && npm ci --silent --no-audit --no-fund)
fi
