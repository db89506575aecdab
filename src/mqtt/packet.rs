//! MQTT control packets as the proxy sees them: the packets a client may send
//! (decoded by [`super::codec`]) and the packets the proxy writes back
//! (encoded by [`super::encode`]). One type serves 3.1.1 and 5.0; fields that
//! exist only in 5.0 stay empty for 3.1.1.

use bytes::Bytes;

/// Protocol level negotiated by CONNECT.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Version {
    /// MQTT 3.1.1 (protocol level 4).
    V311,
    /// MQTT 5.0 (protocol level 5).
    V5,
}

impl Version {
    /// The protocol level byte carried in CONNECT.
    pub fn level(self) -> u8 {
        match self {
            Version::V311 => 4,
            Version::V5 => 5,
        }
    }
}

/// Quality of service of a PUBLISH.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum QoS {
    /// At most once.
    AtMostOnce = 0,
    /// At least once.
    AtLeastOnce = 1,
    /// Exactly once.
    ExactlyOnce = 2,
}

impl QoS {
    /// Maps the two QoS bits; 3 is not a QoS.
    pub fn from_bits(bits: u8) -> Option<QoS> {
        match bits {
            0 => Some(QoS::AtMostOnce),
            1 => Some(QoS::AtLeastOnce),
            2 => Some(QoS::ExactlyOnce),
            _ => None,
        }
    }
}

/// MQTT 5.0 properties (section 2.2.2). One struct for every packet type: the
/// decoder only fills the properties that the packet type allows, and refuses
/// duplicates, so a field here was present exactly once on the wire.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Properties {
    /// 0x01: 1 means the payload is UTF-8.
    pub payload_format_indicator: Option<u8>,
    /// 0x02: seconds until the message expires.
    pub message_expiry_interval: Option<u32>,
    /// 0x03: MIME type of the payload.
    pub content_type: Option<String>,
    /// 0x08: topic for a response (request/response pattern).
    pub response_topic: Option<String>,
    /// 0x09: correlation data for a response.
    pub correlation_data: Option<Bytes>,
    /// 0x0B: subscription identifier (SUBSCRIBE).
    pub subscription_identifier: Option<u32>,
    /// 0x11: session expiry interval in seconds.
    pub session_expiry_interval: Option<u32>,
    /// 0x12: client id the server assigned (CONNACK).
    pub assigned_client_identifier: Option<String>,
    /// 0x13: keep-alive the server imposes (CONNACK).
    pub server_keep_alive: Option<u16>,
    /// 0x15: enhanced authentication method.
    pub authentication_method: Option<String>,
    /// 0x16: enhanced authentication data.
    pub authentication_data: Option<Bytes>,
    /// 0x17: request problem information (0 or 1).
    pub request_problem_information: Option<u8>,
    /// 0x18: will delay interval in seconds.
    pub will_delay_interval: Option<u32>,
    /// 0x19: request response information (0 or 1).
    pub request_response_information: Option<u8>,
    /// 0x1A: response information (CONNACK).
    pub response_information: Option<String>,
    /// 0x1C: another server to use (CONNACK, DISCONNECT).
    pub server_reference: Option<String>,
    /// 0x1F: human-readable reason.
    pub reason_string: Option<String>,
    /// 0x21: receive maximum (flow control).
    pub receive_maximum: Option<u16>,
    /// 0x22: topic alias maximum.
    pub topic_alias_maximum: Option<u16>,
    /// 0x23: topic alias (PUBLISH).
    pub topic_alias: Option<u16>,
    /// 0x24: maximum QoS the server supports (CONNACK).
    pub maximum_qos: Option<u8>,
    /// 0x25: whether retain is available (CONNACK).
    pub retain_available: Option<u8>,
    /// 0x26: user properties, in wire order; the only repeatable property here.
    pub user_properties: Vec<(String, String)>,
    /// 0x27: maximum packet size the sender accepts.
    pub maximum_packet_size: Option<u32>,
    /// 0x28: whether wildcard subscriptions are available (CONNACK).
    pub wildcard_subscription_available: Option<u8>,
    /// 0x29: whether subscription identifiers are available (CONNACK).
    pub subscription_identifier_available: Option<u8>,
    /// 0x2A: whether shared subscriptions are available (CONNACK).
    pub shared_subscription_available: Option<u8>,
}

/// The will message carried by CONNECT.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Will {
    /// Topic the will is published to.
    pub topic: String,
    /// Will payload.
    pub payload: Bytes,
    /// QoS of the will.
    pub qos: QoS,
    /// Retain flag of the will.
    pub retain: bool,
    /// 5.0 will properties.
    pub properties: Properties,
}

/// CONNECT (section 3.1).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Connect {
    /// Protocol level of the connection.
    pub version: Version,
    /// Client identifier; may be empty (the server then assigns one).
    pub client_id: String,
    /// 3.1.1 clean session / 5.0 clean start.
    pub clean_start: bool,
    /// Keep-alive in seconds; 0 disables it.
    pub keep_alive: u16,
    /// Optional user name.
    pub username: Option<String>,
    /// Optional password (binary data).
    pub password: Option<Bytes>,
    /// Optional last will.
    pub will: Option<Will>,
    /// 5.0 CONNECT properties.
    pub properties: Properties,
}

/// PUBLISH (section 3.3).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Publish {
    /// DUP flag: this may be a redelivery.
    pub dup: bool,
    /// QoS of the message.
    pub qos: QoS,
    /// RETAIN flag.
    pub retain: bool,
    /// Topic name; empty only when a 5.0 topic alias stands for it.
    pub topic: String,
    /// Packet identifier; 0 for QoS 0.
    pub packet_id: u16,
    /// 5.0 PUBLISH properties.
    pub properties: Properties,
    /// Application payload, unchanged.
    pub payload: Bytes,
}

/// PUBACK, PUBREC, PUBREL and PUBCOMP share one shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ack {
    /// Packet identifier being acknowledged.
    pub packet_id: u16,
    /// 5.0 reason code; 0 (success) in 3.1.1.
    pub reason: u8,
    /// 5.0 properties.
    pub properties: Properties,
}

impl Properties {
    /// Properties carrying only `why` as the reason string, when the client
    /// may be sent one: a 5.0 client that did not set Request Problem
    /// Information to 0 [MQTT-3.1.2-29].
    pub fn reason(version: Version, problem_info: bool, why: &str) -> Properties {
        Properties {
            reason_string: (version == Version::V5 && problem_info).then(|| why.to_owned()),
            ..Properties::default()
        }
    }
}

impl Ack {
    /// A success acknowledgement with no properties.
    pub fn new(packet_id: u16, reason: u8) -> Ack {
        Ack {
            packet_id,
            reason,
            properties: Properties::default(),
        }
    }
}

/// One topic filter of a SUBSCRIBE with its options byte decoded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubscribeFilter {
    /// The topic filter.
    pub filter: String,
    /// Requested maximum QoS.
    pub qos: QoS,
    /// 5.0 no-local option.
    pub no_local: bool,
    /// 5.0 retain-as-published option.
    pub retain_as_published: bool,
    /// 5.0 retain handling (0, 1 or 2).
    pub retain_handling: u8,
}

/// SUBSCRIBE (section 3.8).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Subscribe {
    /// Packet identifier.
    pub packet_id: u16,
    /// 5.0 properties.
    pub properties: Properties,
    /// The filters, at least one.
    pub filters: Vec<SubscribeFilter>,
}

/// UNSUBSCRIBE (section 3.10).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Unsubscribe {
    /// Packet identifier.
    pub packet_id: u16,
    /// 5.0 properties.
    pub properties: Properties,
    /// The filters, at least one.
    pub filters: Vec<String>,
}

/// DISCONNECT (section 3.14) and AUTH (section 3.15): a reason code and properties.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Disconnect {
    /// 5.0 reason code; 0 for 3.1.1.
    pub reason: u8,
    /// 5.0 properties.
    pub properties: Properties,
}

/// CONNACK (section 3.2), written by the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConnAck {
    /// Session present flag.
    pub session_present: bool,
    /// 3.1.1 return code or 5.0 reason code.
    pub code: u8,
    /// 5.0 properties.
    pub properties: Properties,
}

/// SUBACK (section 3.9), written by the proxy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SubAck {
    /// Packet identifier of the SUBSCRIBE.
    pub packet_id: u16,
    /// 5.0 properties.
    pub properties: Properties,
    /// One return / reason code per filter.
    pub codes: Vec<u8>,
}

/// A decoded MQTT control packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Packet {
    /// CONNECT (client to server).
    Connect(Box<Connect>),
    /// CONNACK (server to client).
    ConnAck(ConnAck),
    /// PUBLISH (both directions).
    Publish(Publish),
    /// PUBACK (both directions).
    PubAck(Ack),
    /// PUBREC (both directions).
    PubRec(Ack),
    /// PUBREL (both directions).
    PubRel(Ack),
    /// PUBCOMP (both directions).
    PubComp(Ack),
    /// SUBSCRIBE (client to server).
    Subscribe(Subscribe),
    /// SUBACK (server to client).
    SubAck(SubAck),
    /// UNSUBSCRIBE (client to server).
    Unsubscribe(Unsubscribe),
    /// UNSUBACK (server to client); the codes are empty for 3.1.1.
    UnsubAck(SubAck),
    /// PINGREQ (client to server).
    PingReq,
    /// PINGRESP (server to client).
    PingResp,
    /// DISCONNECT (both directions in 5.0).
    Disconnect(Disconnect),
    /// AUTH (5.0 only).
    Auth(Disconnect),
}

impl Packet {
    /// Name of the packet type, for logs and errors.
    pub fn name(&self) -> &'static str {
        match self {
            Packet::Connect(_) => "CONNECT",
            Packet::ConnAck(_) => "CONNACK",
            Packet::Publish(_) => "PUBLISH",
            Packet::PubAck(_) => "PUBACK",
            Packet::PubRec(_) => "PUBREC",
            Packet::PubRel(_) => "PUBREL",
            Packet::PubComp(_) => "PUBCOMP",
            Packet::Subscribe(_) => "SUBSCRIBE",
            Packet::SubAck(_) => "SUBACK",
            Packet::Unsubscribe(_) => "UNSUBSCRIBE",
            Packet::UnsubAck(_) => "UNSUBACK",
            Packet::PingReq => "PINGREQ",
            Packet::PingResp => "PINGRESP",
            Packet::Disconnect(_) => "DISCONNECT",
            Packet::Auth(_) => "AUTH",
        }
    }
}

/// MQTT 5.0 reason codes the proxy writes (section 2.4).
pub mod reason {
    /// Success / normal disconnection / granted QoS 0.
    pub const SUCCESS: u8 = 0x00;
    /// No matching subscribers (PUBACK): accepted but nobody will get it.
    pub const NO_MATCHING_SUBSCRIBERS: u8 = 0x10;
    /// No subscription existed (UNSUBACK).
    pub const NO_SUBSCRIPTION_EXISTED: u8 = 0x11;
    /// Unspecified error.
    pub const UNSPECIFIED_ERROR: u8 = 0x80;
    /// Malformed packet.
    pub const MALFORMED_PACKET: u8 = 0x81;
    /// Protocol error.
    pub const PROTOCOL_ERROR: u8 = 0x82;
    /// Implementation specific error.
    pub const IMPLEMENTATION_SPECIFIC_ERROR: u8 = 0x83;
    /// Unsupported protocol version (CONNACK).
    pub const UNSUPPORTED_PROTOCOL_VERSION: u8 = 0x84;
    /// Client identifier not valid (CONNACK).
    pub const CLIENT_IDENTIFIER_NOT_VALID: u8 = 0x85;
    /// Bad user name or password (CONNACK).
    pub const BAD_USER_NAME_OR_PASSWORD: u8 = 0x86;
    /// Not authorized.
    pub const NOT_AUTHORIZED: u8 = 0x87;
    /// Server unavailable (CONNACK).
    pub const SERVER_UNAVAILABLE: u8 = 0x88;
    /// Server shutting down (DISCONNECT).
    pub const SERVER_SHUTTING_DOWN: u8 = 0x8B;
    /// Bad authentication method.
    pub const BAD_AUTHENTICATION_METHOD: u8 = 0x8C;
    /// Keep alive timeout (DISCONNECT).
    pub const KEEP_ALIVE_TIMEOUT: u8 = 0x8D;
    /// Session taken over (DISCONNECT).
    pub const SESSION_TAKEN_OVER: u8 = 0x8E;
    /// Topic filter invalid.
    pub const TOPIC_FILTER_INVALID: u8 = 0x8F;
    /// Topic name invalid.
    pub const TOPIC_NAME_INVALID: u8 = 0x90;
    /// Packet identifier not found (PUBREL/PUBCOMP).
    pub const PACKET_IDENTIFIER_NOT_FOUND: u8 = 0x92;
    /// Receive maximum exceeded.
    pub const RECEIVE_MAXIMUM_EXCEEDED: u8 = 0x93;
    /// Topic alias invalid.
    pub const TOPIC_ALIAS_INVALID: u8 = 0x94;
    /// Packet too large.
    pub const PACKET_TOO_LARGE: u8 = 0x95;
    /// Message rate too high (DISCONNECT).
    pub const MESSAGE_RATE_TOO_HIGH: u8 = 0x96;
    /// Quota exceeded.
    pub const QUOTA_EXCEEDED: u8 = 0x97;
    /// Payload format invalid.
    pub const PAYLOAD_FORMAT_INVALID: u8 = 0x99;
    /// QoS not supported.
    pub const QOS_NOT_SUPPORTED: u8 = 0x9B;
    /// Subscription identifiers not supported.
    pub const SUBSCRIPTION_IDENTIFIERS_NOT_SUPPORTED: u8 = 0xA1;
    /// Shared subscriptions not supported.
    pub const SHARED_SUBSCRIPTIONS_NOT_SUPPORTED: u8 = 0x9E;
    /// Use another server (DISCONNECT, with a Server Reference).
    pub const USE_ANOTHER_SERVER: u8 = 0x9C;
    /// Maximum connect time (here: the credentials expired).
    pub const MAXIMUM_CONNECT_TIME: u8 = 0xA0;
}

/// MQTT 3.1.1 CONNACK return codes (section 3.2.2.3).
pub mod return_code {
    /// Connection accepted.
    pub const ACCEPTED: u8 = 0x00;
    /// Unacceptable protocol version.
    pub const UNACCEPTABLE_PROTOCOL_VERSION: u8 = 0x01;
    /// Identifier rejected.
    pub const IDENTIFIER_REJECTED: u8 = 0x02;
    /// Server unavailable.
    pub const SERVER_UNAVAILABLE: u8 = 0x03;
    /// Bad user name or password.
    pub const BAD_USERNAME_OR_PASSWORD: u8 = 0x04;
    /// Not authorized.
    pub const NOT_AUTHORIZED: u8 = 0x05;
    /// SUBACK failure (3.1.1).
    pub const SUBACK_FAILURE: u8 = 0x80;
}
