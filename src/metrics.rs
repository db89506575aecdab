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
