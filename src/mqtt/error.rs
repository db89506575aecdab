//! Protocol violations found by the codec or the connection task. Each cites
//! the normative statement it enforces, so a log line tells a device vendor
//! exactly what their client did wrong, and each maps to the MQTT 5.0 reason
//! code the proxy sends in its DISCONNECT before closing.

use super::packet::reason;

/// A violation of MQTT 3.1.1 / 5.0 by the client. The connection is closed
/// after it (5.0 clients first get a DISCONNECT with [`ProtocolError::reason_code`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// Remaining length longer than 4 bytes.
    #[error("malformed remaining length: more than 4 bytes [MQTT-1.5.5-1]")]
    MalformedRemainingLength,
    /// Remaining length beyond the configured maximum, seen in the fixed header.
    #[error(
        "packet of {size} bytes exceeds the maximum packet size of {max} bytes [MQTT-3.1.2-24]"
    )]
    PacketTooLarge {
        /// Size announced by the fixed header.
        size: usize,
        /// Configured maximum.
        max: usize,
    },
    /// Packet type 0 or (in 3.1.1) 15.
    #[error("reserved packet type {0} [MQTT-2.1.2]")]
    ReservedPacketType(u8),
    /// Fixed-header flags that the packet type reserves.
    #[error("reserved fixed-header flags {flags:#06b} on {packet} [MQTT-2.1.3-1]")]
    ReservedFlags {
        /// Packet type name.
        packet: &'static str,
        /// The low nibble of the first byte.
        flags: u8,
    },
    /// A packet only servers send.
    #[error("{0} is a server-to-client packet; a client must not send it")]
    ServerOnlyPacket(&'static str),
    /// The first packet was not CONNECT.
    #[error("first packet must be CONNECT, got {0} [MQTT-3.1.0-1]")]
    FirstPacketNotConnect(&'static str),
    /// CONNECT sent twice.
    #[error("second CONNECT on one connection [MQTT-3.1.0-2]")]
    SecondConnect,
    /// Protocol name other than "MQTT".
    #[error("protocol name {0:?} is not \"MQTT\" [MQTT-3.1.2-1]")]
    BadProtocolName(String),
    /// Protocol level other than 4 or 5.
    #[error(
        "unsupported protocol level {0}; only 4 (3.1.1) and 5 (5.0) are served [MQTT-3.1.2-2]"
    )]
    UnsupportedProtocolLevel(u8),
    /// CONNECT reserved flag set.
    #[error("CONNECT reserved flag is set [MQTT-3.1.2-3]")]
    ConnectReservedFlag,
    /// Will QoS / retain set without a will, or will QoS 3.
    #[error("inconsistent will flags [MQTT-3.1.2-11] [MQTT-3.1.2-13] [MQTT-3.1.2-14]")]
    WillFlags,
    /// 3.1.1 password without user name.
    #[error("password flag set without user name flag [MQTT-3.1.2-22]")]
    PasswordWithoutUsername,
    /// A field runs past the end of the packet.
    #[error("malformed {0}: a field runs past the end of the packet [MQTT-1.5]")]
    Truncated(&'static str),
    /// Bytes left after the last field.
    #[error("malformed {0}: bytes left after the last field")]
    TrailingBytes(&'static str),
    /// A string is not valid UTF-8.
    #[error("string is not well-formed UTF-8 [MQTT-1.5.4-1]")]
    InvalidUtf8,
    /// A string holds U+0000.
    #[error("string contains U+0000 [MQTT-1.5.4-2]")]
    NullCharacter,
    /// A string holds a control character or a Unicode non-character.
    #[error("string contains disallowed code point U+{0:04X} (control or non-character; MQTT 5.0 section 1.5.4)")]
    DisallowedCodePoint(u32),
    /// PUBLISH QoS bits are 3.
    #[error("PUBLISH with QoS 3 [MQTT-3.3.1-4]")]
    InvalidQoS,
    /// DUP set on a QoS 0 PUBLISH.
    #[error("DUP flag set on a QoS 0 PUBLISH [MQTT-3.3.1-2]")]
    DupOnQos0,
    /// Wildcard in a topic name.
    #[error("topic name {0:?} contains a wildcard [MQTT-3.3.2-2]")]
    WildcardInTopicName(String),
    /// Empty topic filter in SUBSCRIBE or UNSUBSCRIBE.
    #[error("empty topic filter [MQTT-4.7.3-1]")]
    EmptyTopicFilter,
    /// Empty topic name without a topic alias.
    #[error("empty topic name [MQTT-4.7.3-1]")]
    EmptyTopicName,
    /// Packet identifier 0 where one is required.
    #[error("packet identifier 0 [MQTT-2.2.1-3]")]
    PacketIdZero,
    /// Unknown property identifier.
    #[error("unknown property identifier {0:#04x} [MQTT-2.2.2-2]")]
    UnknownProperty(u8),
    /// A property not allowed on this packet type.
    #[error("property {id:#04x} is not allowed on {packet} [MQTT-2.2.2-2]")]
    PropertyNotAllowed {
        /// Property identifier.
        id: u8,
        /// Packet type name.
        packet: &'static str,
    },
    /// A property sent twice.
    #[error("property {0:#04x} included more than once [MQTT-2.2.2-2]")]
    DuplicateProperty(u8),
    /// A property value out of its range.
    #[error("property {0:#04x} has an invalid value [MQTT-3.1.2-21]")]
    InvalidPropertyValue(u8),
    /// More user properties than the configured cap.
    #[error("{count} user properties exceed the limit of {max}")]
    TooManyUserProperties {
        /// How many were sent (counted up to the point of refusal).
        count: usize,
        /// Configured maximum.
        max: usize,
    },
    /// SUBSCRIBE / UNSUBSCRIBE without any filter.
    #[error("{0} without any topic filter [MQTT-3.8.3-3] [MQTT-3.10.3-2]")]
    NoTopicFilter(&'static str),
    /// Reserved subscription option bits.
    #[error("reserved subscription option bits set [MQTT-3.8.3-5]")]
    SubscriptionOptions,
    /// A topic alias of 0 or above the maximum the proxy announced.
    #[error("topic alias {alias} outside 1..={max} [MQTT-3.3.2-8] [MQTT-3.3.2-9]")]
    TopicAliasInvalid {
        /// Alias sent by the client.
        alias: u16,
        /// Topic Alias Maximum the proxy announced.
        max: u16,
    },
    /// An empty topic with an alias that was never set.
    #[error("topic alias {0} used before it was set (MQTT 5.0 section 3.3.2.3.4)")]
    TopicAliasUnknown(u16),
    /// More unacknowledged QoS 1/2 PUBLISH than the Receive Maximum announced.
    #[error("more than {0} unacknowledged QoS 1/2 PUBLISH packets [MQTT-3.3.4-9]")]
    ReceiveMaximumExceeded(u16),
    /// AUTH without enhanced authentication having started.
    #[error("AUTH packet without an authentication method in CONNECT [MQTT-4.12.0-1]")]
    UnexpectedAuth,
    /// Payload format indicator says UTF-8 but the payload is not.
    #[error("payload format indicator is 1 but the payload is not UTF-8 [MQTT-3.3.2-4]")]
    PayloadNotUtf8,
}

impl ProtocolError {
    /// The MQTT 5.0 reason code for a DISCONNECT caused by this error.
    pub fn reason_code(&self) -> u8 {
        use ProtocolError::*;
        match self {
            PacketTooLarge { .. } => reason::PACKET_TOO_LARGE,
            WildcardInTopicName(_) | EmptyTopicName => reason::TOPIC_NAME_INVALID,
            TopicAliasInvalid { .. } => reason::TOPIC_ALIAS_INVALID,
            ReceiveMaximumExceeded(_) => reason::RECEIVE_MAXIMUM_EXCEEDED,
            PayloadNotUtf8 => reason::PAYLOAD_FORMAT_INVALID,
            UnsupportedProtocolLevel(_) => reason::UNSUPPORTED_PROTOCOL_VERSION,
            FirstPacketNotConnect(_)
            | SecondConnect
            | DupOnQos0
            | DuplicateProperty(_)
            | InvalidPropertyValue(_)
            | NoTopicFilter(_)
            | EmptyTopicFilter
            | TopicAliasUnknown(_)
            | UnexpectedAuth
            | ServerOnlyPacket(_)
            | PacketIdZero => reason::PROTOCOL_ERROR,
            TooManyUserProperties { .. } => reason::IMPLEMENTATION_SPECIFIC_ERROR,
            _ => reason::MALFORMED_PACKET,
        }
    }
}
