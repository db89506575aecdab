"""Reads a topic from the beginning with kafka-python and prints each record
as one line: key<TAB>name=value,...<TAB>value. Used by tests/clients.rs.

usage: consume.py BOOTSTRAP TOPIC COUNT TIMEOUT_S
Exits 0 once COUNT records are printed, 1 on timeout or error.
"""

import logging
import sys
import time

from kafka import KafkaConsumer


def text(b):
    return "" if b is None else b.decode("utf-8", "replace")


def main():
    # kafka-python's own warnings (decode errors, retries) go to stderr.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    bootstrap, topic, count, timeout_s = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])
    consumer = KafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=None,
        auto_offset_reset="earliest",
        enable_auto_commit=False,
        consumer_timeout_ms=int(timeout_s * 1000),
    )
    deadline = time.monotonic() + timeout_s
    seen = 0
    for m in consumer:
        headers = ",".join(f"{k}={text(v)}" for k, v in (m.headers or []))
        print(f"{text(m.key)}\t{headers}\t{text(m.value)}", flush=True)
        seen += 1
        if seen >= count or time.monotonic() > deadline:
            break
    consumer.close()
    if seen < count:
        print(f"kafka-python: got {seen} of {count} records", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
