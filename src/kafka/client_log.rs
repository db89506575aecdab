//! librdkafka's own log lines and error events, forwarded to `tracing`
//! (target `librdkafka`) by the producer's and the command consumer's
//! contexts. Two things differ from rdkafka's default forwarding:
//!
//! - A line that misleads during an outage says what is happening instead:
//!   a broker that accepts TCP connections and answers nothing (hung,
//!   SIGSTOPped, overloaded) makes librdkafka blame "broker version < 0.10"
//!   for the unanswered ApiVersion request of every new connection.
//! - Once the proxy's Kafka watch has logged "kafka unreachable" (one line
//!   that says what devices experience), the per-broker connection noise
//!   that follows (request timeouts, connection failures, "all brokers
//!   down") drops to debug. Errors that are not about reachability (SASL,
//!   TLS, fatal producer errors) stay at their level.

use rdkafka::config::RDKafkaLogLevel;
use rdkafka::error::RDKafkaErrorCode;

/// librdkafka's hint on a failed ApiVersion request (rdkafka_broker.c).
const VERSION_HINT: &str =
    ": probably due to broker version < 0.10 (see api.version.request configuration)";
/// librdkafka's hints on a connection closed during the ApiVersion request.
const CLOSED_HINTS: [&str; 2] = [
    ": requesting ApiVersion: might be caused by incorrect security.protocol configuration (connecting to a SSL listener?) or broker version is < 0.10 (see api.version.request)",
    ": requesting ApiVersion: might be caused by broker version < 0.10 (see api.version.request)",
];

/// The line to log instead of a misleading librdkafka line, if it is one.
pub fn rewrite(message: &str) -> Option<String> {
    if let Some(hint) = message.find(VERSION_HINT) {
        const FAILED: &str = "ApiVersionRequest failed: ";
        let start = message[..hint].rfind(FAILED)?;
        let (prefix, error) = (&message[..start], &message[start + FAILED.len()..hint]);
        let rest = &message[hint + VERSION_HINT.len()..];
        let cause = if error.contains("Timed out") {
            "the broker accepted the connection but answered nothing: it is hung (e.g. stopped), overloaded, or the network path to it stalls"
        } else {
            "the broker broke the connection before answering: it is restarting or shutting down, or the port is not a Kafka listener for this security.protocol"
        };
        return Some(format!(
            "{prefix}no answer to the first request on a new connection (ApiVersion: {error}){rest}: {cause} (not a broker-version problem)"
        ));
    }
    CLOSED_HINTS.iter().find_map(|hint| {
        let at = message.find(hint)?;
        Some(format!(
            "{}: the connection closed before the broker answered its first request (ApiVersion): the broker is restarting or shutting down, or the port is a TLS listener and security.protocol is not SSL/SASL_SSL{}",
            &message[..at],
            &message[at + hint.len()..]
        ))
    })
}

/// Whether a librdkafka log line only restates that brokers do not answer.
fn is_reachability_noise(level: RDKafkaLogLevel, facility: &str) -> bool {
    matches!(
        level,
        RDKafkaLogLevel::Warning | RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info
    ) && matches!(facility, "FAIL" | "REQTMOUT")
}

/// Whether a librdkafka error event only restates that brokers do not answer.
pub fn is_reachability_error(code: Option<RDKafkaErrorCode>) -> bool {
    matches!(
        code,
        Some(
            RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::AllBrokersDown
                | RDKafkaErrorCode::OperationTimedOut
        )
    )
}

/// Forwards one librdkafka log line. `outage_reported`: the Kafka watch has
/// already said that Kafka is unreachable.
pub fn forward(level: RDKafkaLogLevel, facility: &str, message: &str, outage_reported: bool) {
    let rewritten = rewrite(message);
    let line = rewritten.as_deref().unwrap_or(message);
    if outage_reported && is_reachability_noise(level, facility) {
        tracing::debug!(target: "librdkafka", "librdkafka: {facility} {line}");
        return;
    }
    match level {
        RDKafkaLogLevel::Emerg
        | RDKafkaLogLevel::Alert
        | RDKafkaLogLevel::Critical
        | RDKafkaLogLevel::Error => {
            tracing::error!(target: "librdkafka", "librdkafka: {facility} {line}")
        }
        RDKafkaLogLevel::Warning => {
            tracing::warn!(target: "librdkafka", "librdkafka: {facility} {line}")
        }
        RDKafkaLogLevel::Notice | RDKafkaLogLevel::Info => {
            tracing::info!(target: "librdkafka", "librdkafka: {facility} {line}")
        }
        RDKafkaLogLevel::Debug => {
            tracing::debug!(target: "librdkafka", "librdkafka: {facility} {line}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn misleading_lines_say_what_happens() {
        // As librdkafka 2.12 writes them (rdkafka_broker.c), thread prefix included.
        let cases = [
            (
                "[thrd:127.0.0.1:39123/bootstrap]: 127.0.0.1:39123/1: ApiVersionRequest failed: Local: Timed out: probably due to broker version < 0.10 (see api.version.request configuration) (after 10004ms in state APIVERSION_QUERY)",
                "[thrd:127.0.0.1:39123/bootstrap]: 127.0.0.1:39123/1: no answer to the first request on a new connection (ApiVersion: Local: Timed out) (after 10004ms in state APIVERSION_QUERY): the broker accepted the connection but answered nothing: it is hung (e.g. stopped), overloaded, or the network path to it stalls (not a broker-version problem)",
            ),
            (
                "b/2: ApiVersionRequest failed: Local: Broker transport failure: probably due to broker version < 0.10 (see api.version.request configuration)",
                "b/2: no answer to the first request on a new connection (ApiVersion: Local: Broker transport failure): the broker broke the connection before answering: it is restarting or shutting down, or the port is not a Kafka listener for this security.protocol (not a broker-version problem)",
            ),
            (
                "b/1: Disconnected: connection closed by peer: receive 0 after POLLIN: requesting ApiVersion: might be caused by incorrect security.protocol configuration (connecting to a SSL listener?) or broker version is < 0.10 (see api.version.request) (after 3ms in state APIVERSION_QUERY)",
                "b/1: Disconnected: connection closed by peer: receive 0 after POLLIN: the connection closed before the broker answered its first request (ApiVersion): the broker is restarting or shutting down, or the port is a TLS listener and security.protocol is not SSL/SASL_SSL (after 3ms in state APIVERSION_QUERY)",
            ),
        ];
        for (raw, want) in cases {
            let got = rewrite(raw).unwrap_or_else(|| panic!("not rewritten: {raw}"));
            assert_eq!(got, want);
            assert!(!got.contains("0.10"), "{got}");
        }
    }

    #[test]
    fn other_lines_are_left_alone() {
        for line in [
            "b/1: Connect to ipv4#127.0.0.1:9092 failed: Connection refused (after 0ms in state CONNECT)",
            "b/1: SASL authentication error: Authentication failed during authentication due to invalid credentials with SASL mechanism SCRAM-SHA-512",
            "Timed out 1 in-flight, 0 retry-queued, 0 out-queue, 0 partially-sent requests",
        ] {
            assert_eq!(rewrite(line), None, "{line}");
        }
    }

    #[test]
    fn only_reachability_noise_is_demoted() {
        assert!(is_reachability_noise(RDKafkaLogLevel::Warning, "REQTMOUT"));
        assert!(is_reachability_noise(RDKafkaLogLevel::Warning, "FAIL"));
        assert!(!is_reachability_noise(RDKafkaLogLevel::Error, "FAIL"));
        assert!(!is_reachability_noise(RDKafkaLogLevel::Warning, "SASL"));
        assert!(is_reachability_error(Some(
            RDKafkaErrorCode::AllBrokersDown
        )));
        assert!(!is_reachability_error(Some(
            RDKafkaErrorCode::Authentication
        )));
        assert!(!is_reachability_error(Some(RDKafkaErrorCode::Resolve)));
    }
}
