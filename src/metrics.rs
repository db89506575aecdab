//! Every metric name the proxy records, in one place. Names use past tense
//! for events (`_total` counters) and nouns for gauges.

/// Gauge: connections currently open.
pub const CONNECTIONS: &str = "mqtt_connections";
/// Counter: connections closed, labelled by `reason`.
pub const CONNECTIONS_CLOSED: &str = "mqtt_connections_closed_total";
/// Counter: connections accepted, labelled by `listener`.
pub const CONNECTIONS_OPENED: &str = "mqtt_connections_opened_total";
/// Counter: PUBLISH packets received, labelled by `qos`.
pub const PUBLISH_RECEIVED: &str = "mqtt_publish_received_total";
/// Counter: PUBLISH packets refused (no route, reserved header name), labelled by `reason`.
pub const PUBLISH_REFUSED: &str = "mqtt_publish_refused_total";
/// Counter: records sent to the dead-letter topic.
pub const PUBLISH_DEAD_LETTERED: &str = "mqtt_publish_dead_lettered_total";
/// Counter: protocol violations that closed a connection.
pub const PROTOCOL_ERRORS: &str = "mqtt_protocol_errors_total";
/// Counter: QoS 1/2 records whose Kafka delivery failed.
pub const KAFKA_DELIVERY_FAILED: &str = "kafka_delivery_failed_total";
/// Counter: QoS 0 records lost because Kafka delivery failed.
pub const QOS0_DROPPED: &str = "kafka_qos0_dropped_total";
/// Counter: times a connection found the producer queue full and paused.
pub const KAFKA_QUEUE_FULL: &str = "kafka_queue_full_total";
/// Counter: librdkafka client-level errors (broker down, auth, …).
pub const KAFKA_CLIENT_ERRORS: &str = "kafka_client_errors_total";
/// Counter: command outcomes, labelled by `status` (delivered, expired, not_subscribed, dropped, invalid).
pub const COMMANDS: &str = "commands_total";
/// Counter: receipts, lifecycle or session records the producer could not take.
pub const JOURNAL_DROPPED: &str = "journal_records_dropped_total";
/// Counter: authentication outcomes at CONNECT, labelled by `method` and `result` (allow, deny, error).
pub const AUTH_DECISIONS: &str = "auth_decisions_total";
/// Counter: requests to the HTTP auth hook, labelled by `result` (allow, deny, error).
pub const AUTH_HTTP_REQUESTS: &str = "auth_http_requests_total";
/// Counter: HTTP auth hook answers taken from the cache.
pub const AUTH_HTTP_CACHE_HITS: &str = "auth_http_cache_hits_total";
/// Histogram: HTTP auth hook request time, in seconds.
pub const AUTH_HTTP_SECONDS: &str = "auth_http_request_seconds";
/// Counter: reloads of credential, key and certificate files, labelled by `file` and `result` (ok, error).
pub const FILE_RELOADS: &str = "file_reloads_total";
/// Counter: PUBLISH / SUBSCRIBE refused by an ACL, labelled by `action`.
pub const ACL_DENIED: &str = "acl_denied_total";
/// Counter: limits hit, labelled by `limit` (connect_rate, publish_rate, publish_bytes, awaiting_rel, topic_length).
pub const LIMITS_EXCEEDED: &str = "limits_exceeded_total";
/// Histogram: seconds from receiving a PUBLISH to Kafka acknowledging its record.
pub const KAFKA_PRODUCE_SECONDS: &str = "kafka_produce_seconds";
/// Gauge: records handed to the producer without an outcome yet.
pub const KAFKA_IN_FLIGHT: &str = "kafka_records_in_flight";
/// Histogram: seconds a connection spent not reading because the producer queue was full.
pub const KAFKA_BACKPRESSURE_SECONDS: &str = "kafka_backpressure_seconds";
/// Gauge: librdkafka queue depth in messages, labelled by `client`.
pub const KAFKA_QUEUE_MESSAGES: &str = "kafka_queue_messages";
/// Gauge: librdkafka queue depth in bytes, labelled by `client`.
pub const KAFKA_QUEUE_BYTES: &str = "kafka_queue_bytes";
/// Gauge: broker request round-trip time, labelled by `client`, `broker`, `quantile`.
pub const KAFKA_BROKER_RTT_SECONDS: &str = "kafka_broker_rtt_seconds";
/// Gauge: command consumer lag in records, labelled by `topic`.
pub const KAFKA_CONSUMER_LAG: &str = "kafka_consumer_lag";
/// Counter: records produced from PUBLISH packets, labelled by `kafka_topic` (the route).
pub const PUBLISH_ROUTED: &str = "mqtt_publish_routed_total";
/// Counter: bytes read from device sockets (after TLS).
pub const BYTES_RECEIVED: &str = "mqtt_bytes_received_total";
/// Counter: bytes written to device sockets (before TLS).
pub const BYTES_SENT: &str = "mqtt_bytes_sent_total";
/// Counter: records the embedded Kafka broker dropped under its retention limits, labelled by `topic`.
pub const EMBEDDED_KAFKA_RECORDS_DROPPED: &str = "embedded_kafka_records_dropped_total";
/// Gauge: client ids this replica owns (it is the one they last connected
/// to); pruned after `lifecycle.owner_max_age_ms`.
pub const SESSION_OWNERS: &str = "session_owners";
/// Gauge: 1 while the replica is ready (Kafka reachable, not draining).
pub const READY: &str = "proxy_ready";
