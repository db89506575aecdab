#!/bin/bash
# Creates the Kafka topics the proxy reads and writes (the shipped config.toml's
# routes, dead letters, commands, receipts, retained commands, lifecycle and
# sessions). Idempotent (--if-not-exists). Run by the topic-init service of
# deploy/docker-compose.yml inside the apache/kafka image.
set -euo pipefail

bootstrap=${BOOTSTRAP_SERVERS:-kafka:9092}
partitions=${PARTITIONS:-6}
replication=${REPLICATION_FACTOR:-1}
topics_sh=${KAFKA_TOPICS_SH:-/opt/kafka/bin/kafka-topics.sh}

for i in $(seq 1 60); do
    if "$topics_sh" --bootstrap-server "$bootstrap" --list >/dev/null 2>&1; then
        break
    fi
    echo "create-topics: waiting for Kafka at $bootstrap ($i)"
    sleep 2
done

create() {
    local topic=$1
    shift
    "$topics_sh" --bootstrap-server "$bootstrap" --create --if-not-exists \
        --topic "$topic" --partitions "$partitions" --replication-factor "$replication" "$@"
}

# Device data (routes in config.toml) and records that matched no route.
create iot.events
create iot.snapshots
create iot.deadletter
# Commands to devices and their outcome receipts.
create iot.commands
create iot.command-receipts
# Desired state: latest command per device and MQTT topic.
create iot.retained-commands --config cleanup.policy=compact
# connected / disconnected records.
create iot.lifecycle
# Which replica holds which client id (session takeover across replicas).
create iot.sessions --config cleanup.policy=compact

"$topics_sh" --bootstrap-server "$bootstrap" --describe --exclude-internal | grep -E '^Topic:' || true
echo "create-topics: done"
