//! Authentication end to end: client certificates (mTLS, CRLs, SAN URIs),
//! the password file written by `mqtt-kafka-proxy passwd`, JWTs (HS256,
//! RS256, ES256, JWKS) including expiry of a live connection, the HTTP auth
//! hook (allow, deny, slow, down, cached, pooled, per-topic), and TLS
//! certificate reloading. Each test starts a real proxy on port 0 against its
//! embedded Kafka broker and talks to it over real sockets: rumqttc,
//! `mosquitto_pub`, tokio-rustls and hand-built CONNECTs where the exact
//! CONNACK / PUBACK / DISCONNECT code matters. Records are read back with a
//! real Kafka consumer to check the key is the authenticated identity.

use std::cell::RefCell;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::common::*;
use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine as _;
use bytes::Bytes;
use jsonwebtoken::{Algorithm, EncodingKey, Header};
use mqtt_kafka_proxy::config::{
    AclAction, AclRule, AuthMethod, CertIdentity, ClientAuth, OnError, Permission, RouteConfig,
};
use mqtt_kafka_proxy::mqtt::packet::{
    self as mp, reason, return_code, Packet, Properties, Publish, Version,
};
use serde_json::{json, Value};
use tokio::io::AsyncWriteExt;

const V311: Version = Version::V311;
const V5: Version = Version::V5;

// ---------------------------------------------------------------------------
// The raw MQTT client (common::Raw) over TCP or TLS, for exact reason codes.
// ---------------------------------------------------------------------------

/// One connection to the proxy, TCP or TLS, speaking bytes built by the
/// proxy's encoder.
type Wire = Raw<Box<dyn Io>>;

/// A raw client over plain TCP.
async fn tcp_wire(port: u16) -> Wire {
    let s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("TCP connect to the proxy");
    Raw {
        stream: Box::new(s),
    }
}

fn connect_with_credentials(
    v: Version,
    id: &str,
    user: Option<&str>,
    pass: Option<&[u8]>,
) -> Vec<u8> {
    let mut c = connect_packet(id, v, 0);
    c.username = user.map(Into::into);
    c.password = pass.map(Bytes::copy_from_slice);
    connect_packet_bytes(c)
}

/// Sends CONNECT and returns the CONNACK code, or why no CONNACK came. A
/// refusal must be followed by the close with nothing more written.
async fn connack(
    w: &mut Wire,
    v: Version,
    id: &str,
    user: Option<&str>,
    pass: Option<&[u8]>,
) -> Result<u8, String> {
    w.send(&connect_with_credentials(v, id, user, pass)).await;
    let (b1, body) = next_packet(w).await?;
    assert_eq!(b1, 0x20, "CONNACK expected, got {b1:#04x} {body:02x?}");
    let code = body[1];
    if code != 0 {
        let rest = w.read_to_close().await;
        assert!(
            rest.is_empty(),
            "a refused CONNECT ({code:#04x}) is followed by the close only; got {rest:02x?}"
        );
    }
    Ok(code)
}

/// CONNECT over a fresh TCP connection; the CONNACK code.
async fn tcp_connack(port: u16, v: Version, id: &str, user: Option<&str>, pass: &[u8]) -> u8 {
    let mut w = tcp_wire(port).await;
    connack(&mut w, v, id, user, Some(pass))
        .await
        .unwrap_or_else(|e| panic!("no CONNACK for {id:?}: {e}"))
}

/// A connected raw TCP session; panics unless the CONNECT is accepted.
async fn tcp_session(port: u16, v: Version, id: &str, user: Option<&str>, pass: &[u8]) -> Wire {
    let mut w = tcp_wire(port).await;
    let code = connack(&mut w, v, id, user, Some(pass))
        .await
        .unwrap_or_else(|e| panic!("no CONNACK for {id:?}: {e}"));
    assert_eq!(code, 0, "CONNECT of {id:?} accepted");
    w
}

/// The code a refusal gets in each protocol version.
fn code(v: Version, v311: u8, v5: u8) -> u8 {
    match v {
        Version::V311 => v311,
        Version::V5 => v5,
    }
}

/// Publishes at QoS 1 and returns the PUBACK reason (3.1.1: always 0), or
/// what came instead (the close, with anything written before it).
async fn publish_qos1(
    w: &mut Wire,
    v: Version,
    topic: &str,
    payload: &[u8],
    id: u16,
) -> Result<u8, String> {
    let p = Publish {
        dup: false,
        qos: mp::QoS::AtLeastOnce,
        retain: false,
        topic: topic.into(),
        packet_id: id,
        properties: Properties::default(),
        payload: Bytes::copy_from_slice(payload),
    };
    w.send(&encode(&Packet::Publish(p), v)).await;
    loop {
        match next_packet(w).await {
            Ok((0x40, body)) if body[..2] == id.to_be_bytes() => {
                return Ok(body.get(2).copied().unwrap_or(reason::SUCCESS));
            }
            Ok((0xE0, body)) => {
                return Err(format!("DISCONNECT {body:02x?}"));
            }
            Ok(_) => {}
            Err(e) => return Err(e),
        }
    }
}

/// Reads `iot.events` until a record with `payload` is there; returns all read.
async fn events_until(t: &TestProxy, payload: &'static [u8]) -> Vec<Rec> {
    events_with(t, &[payload]).await
}

/// Reads `iot.events` until a record with each of `payloads` is there.
async fn events_with(t: &TestProxy, payloads: &[&'static [u8]]) -> Vec<Rec> {
    let payloads = payloads.to_vec();
    consume_until(&t.bootstrap(), "iot.events", move |r| {
        payloads.iter().all(|p| r.iter().any(|x| x.value == *p))
    })
    .await
}

/// The key of the record carrying `payload` in `iot.events`.
async fn key_of(t: &TestProxy, payload: &'static [u8]) -> String {
    let recs = events_until(t, payload).await;
    recs.into_iter()
        .find(|r| r.value == payload)
        .map(|r| r.key)
        .unwrap()
}

fn acl(permission: Permission, action: AclAction, topic: &str) -> AclRule {
    AclRule {
        permission,
        action,
        topic: topic.into(),
    }
}

/// Every topic allowed: for tests about identity, not about ACLs (with
/// authentication on, no matching rule means deny).
fn allow_all() -> Vec<AclRule> {
    vec![acl(Permission::Allow, AclAction::All, "#")]
}

fn now_s() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Runs `mosquitto_pub` with `args` (host and port included by the caller).
async fn mosquitto_pub(args: &[&str]) -> std::process::Output {
    let out = tokio::time::timeout(
        PATIENCE,
        tokio::process::Command::new("mosquitto_pub")
            .args(args)
            .kill_on_drop(true)
            .output(),
    )
    .await
    .expect("mosquitto_pub finishes")
    .expect("mosquitto_pub runs (apt-get install mosquitto-clients)");
    out
}

// ---------------------------------------------------------------------------
// PKI: a CA, device and server certificates, CRLs (rcgen), and TLS clients
// (tokio-rustls) that show what the server presented.
// ---------------------------------------------------------------------------

struct Ca {
    cert: rcgen::Certificate,
    key: rcgen::KeyPair,
    /// The CA certificate as PEM on disk.
    path: PathBuf,
}

/// A certificate with its key, as PEM in memory and on disk.
struct Issued {
    cert_pem: String,
    key_pem: String,
    cert_path: PathBuf,
    key_path: PathBuf,
    der: Vec<u8>,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Ca {
        use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("{name} test CA"));
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let key = KeyPair::generate().unwrap();
        let cert = params.self_signed(&key).unwrap();
        let path = dir.join(format!("{name}-ca.crt"));
        std::fs::write(&path, cert.pem()).unwrap();
        Ca { cert, key, path }
    }

    fn issue(&self, dir: &Path, file: &str, params: rcgen::CertificateParams) -> Issued {
        let key = rcgen::KeyPair::generate().unwrap();
        let cert = params.signed_by(&key, &self.cert, &self.key).unwrap();
        let cert_path = dir.join(format!("{file}.crt"));
        let key_path = dir.join(format!("{file}.key"));
        std::fs::write(&cert_path, cert.pem()).unwrap();
        std::fs::write(&key_path, key.serialize_pem()).unwrap();
        Issued {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
            cert_path,
            key_path,
            der: cert.der().to_vec(),
        }
    }

    /// A device certificate (client auth) with common name `cn`, an optional
    /// URI SAN and serial number `serial` (for CRLs).
    fn device(&self, dir: &Path, cn: &str, uri: Option<&str>, serial: u64) -> Issued {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose, SanType};
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        params.distinguished_name.push(DnType::CommonName, cn);
        if let Some(uri) = uri {
            params
                .subject_alt_names
                .push(SanType::URI(uri.try_into().unwrap()));
        }
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.serial_number = Some(serial.into());
        self.issue(dir, &format!("device-{serial}"), params)
    }

    /// A server certificate for `localhost` / 127.0.0.1.
    fn server(&self, dir: &Path, serial: u64) -> Issued {
        use rcgen::{CertificateParams, DnType, ExtendedKeyUsagePurpose};
        let mut params =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        params
            .distinguished_name
            .push(DnType::CommonName, format!("server {serial}"));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        params.serial_number = Some(serial.into());
        self.issue(dir, &format!("server-{serial}"), params)
    }

    /// A CRL signed by this CA revoking `serials`.
    fn crl(&self, serials: &[u64]) -> String {
        use rcgen::{
            date_time_ymd, CertificateRevocationListParams, KeyIdMethod, RevocationReason,
            RevokedCertParams,
        };
        let params = CertificateRevocationListParams {
            this_update: date_time_ymd(2024, 1, 1),
            next_update: date_time_ymd(2099, 1, 1),
            crl_number: 1u64.into(),
            issuing_distribution_point: None,
            revoked_certs: serials
                .iter()
                .map(|s| RevokedCertParams {
                    serial_number: (*s).into(),
                    revocation_time: date_time_ymd(2024, 6, 1),
                    reason_code: Some(RevocationReason::KeyCompromise),
                    invalidity_date: None,
                })
                .collect(),
            key_identifier_method: KeyIdMethod::Sha256,
        };
        params
            .signed_by(&self.cert, &self.key)
            .unwrap()
            .pem()
            .unwrap()
    }
}

/// A rustls client trusting the CA files `roots`, presenting `client` if given.
fn tls_client(roots: &[&Path], client: Option<&Issued>) -> Arc<rustls::ClientConfig> {
    let mut store = rustls::RootCertStore::empty();
    for path in roots {
        let pem = std::fs::read(path).unwrap();
        for cert in rustls_pemfile::certs(&mut pem.as_slice()) {
            store.add(cert.unwrap()).unwrap();
        }
    }
    // Explicit provider: more than one may be compiled in through features.
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_root_certificates(store);
    let config = match client {
        None => builder.with_no_client_auth(),
        Some(id) => {
            let certs = rustls_pemfile::certs(&mut id.cert_pem.as_bytes())
                .collect::<Result<Vec<_>, _>>()
                .unwrap();
            let key = rustls_pemfile::private_key(&mut id.key_pem.as_bytes())
                .unwrap()
                .unwrap();
            builder.with_client_auth_cert(certs, key).unwrap()
        }
    };
    Arc::new(config)
}

/// TLS handshake with the proxy as `localhost`; the connection and the leaf
/// certificate the proxy presented, or the handshake error.
async fn tls_wire(port: u16, config: Arc<rustls::ClientConfig>) -> Result<(Wire, Vec<u8>), String> {
    let tcp = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("TCP connect to the TLS listener");
    let name = rustls::pki_types::ServerName::try_from("localhost").unwrap();
    let tls = tokio::time::timeout(
        PATIENCE,
        tokio_rustls::TlsConnector::from(config).connect(name, tcp),
    )
    .await
    .expect("TLS handshake ends within patience")
    .map_err(|e| e.to_string())?;
    let leaf = tls.get_ref().1.peer_certificates().unwrap()[0].to_vec();
    Ok((
        Raw {
            stream: Box::new(tls),
        },
        leaf,
    ))
}

/// TLS handshake, then CONNECT: the CONNACK code, or why none came (with
/// TLS 1.3 a refused client certificate shows as an alert on the first read).
async fn mtls_connack(
    port: u16,
    config: Arc<rustls::ClientConfig>,
    v: Version,
    id: &str,
    user: Option<&str>,
    pass: Option<&[u8]>,
) -> Result<(Wire, u8), String> {
    let (mut w, _) = tls_wire(port, config).await?;
    let code = connack(&mut w, v, id, user, pass).await?;
    Ok((w, code))
}

/// A rumqttc transport over TLS trusting `ca`, presenting `client`.
fn rumqttc_mtls(ca: &Path, client: &Issued) -> rumqttc::Transport {
    rumqttc::Transport::tls_with_config(rumqttc::TlsConfiguration::Simple {
        ca: std::fs::read(ca).unwrap(),
        alpn: None,
        client_auth: Some((
            client.cert_pem.clone().into_bytes(),
            client.key_pem.clone().into_bytes(),
        )),
    })
}

fn mtls_required(c: &mut mqtt_kafka_proxy::Config, client_ca: &Path) {
    c.listeners.tls.client_auth = ClientAuth::Required;
    c.listeners.tls.client_ca_path = client_ca.to_owned();
    c.auth.methods = vec![AuthMethod::Certificate];
}

// ---------------------------------------------------------------------------
// Client certificates.
// ---------------------------------------------------------------------------

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_the_key_is_the_certificate_cn_not_the_client_id_or_topic() {
    let pki = tempfile::tempdir().unwrap();
    let ca = Ca::new(pki.path(), "devices");
    let dev_a = ca.device(pki.path(), "dev-A", None, 10);
    let ca_path = ca.path.clone();
    let t = TestProxy::start_with(|c| {
        mtls_required(c, &ca_path);
        c.auth.acl = allow_all();
        // Even a route that keys by the topic's device level must not let the
        // topic choose the key once devices authenticate.
        c.routes[0] = RouteConfig {
            filter: "devices/{device_id}/events/#".into(),
            kafka_topic: "iot.events".into(),
            key: "{device_id}".into(),
        };
    })
    .await;

    // rumqttc with dev-A's certificate, calling itself dev-B, writing under
    // dev-B's topic: the record is dev-A's.
    let mut o = rumqttc::MqttOptions::new("dev-B", "localhost", t.tls_port());
    o.set_keep_alive(Duration::from_secs(30));
    o.set_transport(rumqttc_mtls(&t.ca_path(), &dev_a));
    let mut c = v4_connect(o).await;
    c.client
        .publish(
            "devices/dev-B/events/x",
            rumqttc::QoS::AtLeastOnce,
            false,
            "spoofed",
        )
        .await
        .unwrap();
    c.pubacks(1).await;
    let mut o = rumqttc::MqttOptions::new("spoof-B", "localhost", t.tls_port());
    o.set_transport(rumqttc_mtls(&t.ca_path(), &dev_a));
    let mut c2 = v4_connect(o).await;
    c2.client
        .publish(
            "devices/dev-A/events/x",
            rumqttc::QoS::AtLeastOnce,
            false,
            "own-topic",
        )
        .await
        .unwrap();
    c2.pubacks(1).await;
    let recs = events_with(&t, &[b"spoofed", b"own-topic"]).await;
    for payload in [&b"spoofed"[..], b"own-topic"] {
        let r = recs.iter().find(|r| r.value == payload).unwrap();
        assert_eq!(
            r.key, "dev-A",
            "record {payload:?}: key is the certificate CN"
        );
    }
    assert!(
        recs.iter().all(|r| r.key != "dev-B" && r.key != "spoof-B"),
        "no record under the claimed client id: {recs:?}"
    );
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_acl_keeps_a_device_out_of_another_devices_topics() {
    let pki = tempfile::tempdir().unwrap();
    let ca = Ca::new(pki.path(), "devices");
    let dev_a = ca.device(pki.path(), "dev-A", None, 10);
    let ca_path = ca.path.clone();
    let t = TestProxy::start_with(|c| {
        mtls_required(c, &ca_path);
        c.auth.acl = vec![acl(
            Permission::Allow,
            AclAction::Publish,
            "devices/{device_id}/#",
        )];
    })
    .await;
    let client = tls_client(&[&t.ca_path()], Some(&dev_a));

    // 5.0: the foreign topic gets PUBACK 0x87 and the connection carries on.
    let (mut w, code) = mtls_connack(t.tls_port(), client.clone(), V5, "dev-B", None, None)
        .await
        .expect("dev-A's certificate is accepted");
    assert_eq!(code, 0);
    let got = publish_qos1(&mut w, V5, "devices/dev-B/events/x", b"intrusion-5", 1).await;
    assert_eq!(
        got,
        Ok(reason::NOT_AUTHORIZED),
        "5.0 PUBACK for dev-B's topic"
    );
    let got = publish_qos1(&mut w, V5, "devices/dev-A/events/x", b"own-5", 2).await;
    assert_eq!(got, Ok(reason::SUCCESS), "its own topic still works");

    // 3.1.1: no way to say no but to close.
    let (mut w, code) = mtls_connack(t.tls_port(), client, V311, "dev-B", None, None)
        .await
        .expect("dev-A's certificate is accepted");
    assert_eq!(code, 0);
    let got = publish_qos1(&mut w, V311, "devices/dev-B/events/x", b"intrusion-311", 1).await;
    assert!(
        got.is_err(),
        "3.1.1 publish to dev-B's topic closes: {got:?}"
    );
    assert!(
        w.read_to_close().await.is_empty(),
        "closed with nothing written"
    );

    let recs = events_until(&t, b"own-5").await;
    assert!(
        recs.iter()
            .all(|r| r.key == "dev-A" && !r.value.starts_with(b"intrusion")),
        "nothing refused reached Kafka, nothing under dev-B: {recs:?}"
    );
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_required_refuses_missing_foreign_and_revoked_certificates() {
    let pki = tempfile::tempdir().unwrap();
    let ca = Ca::new(pki.path(), "devices");
    let other = Ca::new(pki.path(), "other");
    let good = ca.device(pki.path(), "dev-good", None, 20);
    let revoked = ca.device(pki.path(), "dev-revoked", None, 21);
    let foreign = other.device(pki.path(), "dev-foreign", None, 22);
    let crl = pki.path().join("devices.crl");
    std::fs::write(&crl, ca.crl(&[21])).unwrap();
    let (ca_path, crl_path) = (ca.path.clone(), crl.clone());
    let t = TestProxy::start_with(|c| {
        mtls_required(c, &ca_path);
        c.listeners.tls.crl_path = crl_path;
    })
    .await;
    let port = t.tls_port();
    let server_ca = t.ca_path();

    // The control: a good certificate under the same CA and CRL connects.
    let ok = mtls_connack(
        port,
        tls_client(&[&server_ca], Some(&good)),
        V5,
        "dev-good",
        None,
        None,
    )
    .await;
    assert_eq!(ok.map(|(_, c)| c), Ok(0), "a valid, unrevoked certificate");

    let cases: [(&str, Option<&Issued>, &str); 3] = [
        ("no client certificate", None, "CertificateRequired"),
        ("certificate from another CA", Some(&foreign), "UnknownCA"),
        ("revoked certificate", Some(&revoked), "CertificateRevoked"),
    ];
    for (case, cert, alert) in cases {
        for v in [V311, V5] {
            let got = mtls_connack(
                port,
                tls_client(&[&server_ca], cert),
                v,
                "intruder",
                None,
                None,
            )
            .await
            .map(|(_, c)| c);
            let Err(err) = got else {
                panic!("{case} ({v:?}): no CONNACK at all, got {got:?}");
            };
            assert!(
                err.contains(alert),
                "{case} ({v:?}): TLS alert {alert} expected, got {err:?}"
            );
        }
    }
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_san_uri_identity_is_the_key() {
    let pki = tempfile::tempdir().unwrap();
    let ca = Ca::new(pki.path(), "devices");
    let uri = "spiffe://fleet/devices/dev-U";
    let dev = ca.device(pki.path(), "not-the-id", Some(uri), 30);
    let no_uri = ca.device(pki.path(), "dev-plain", None, 31);
    let ca_path = ca.path.clone();
    let t = TestProxy::start_with(|c| {
        mtls_required(c, &ca_path);
        c.auth.certificate.identity = CertIdentity::SanUri;
        c.auth.acl = allow_all();
    })
    .await;
    let (mut w, code) = mtls_connack(
        t.tls_port(),
        tls_client(&[&t.ca_path()], Some(&dev)),
        V5,
        "client-u",
        None,
        None,
    )
    .await
    .unwrap();
    assert_eq!(code, 0);
    let got = publish_qos1(&mut w, V5, "devices/dev-U/events/x", b"san-uri", 1).await;
    assert_eq!(got, Ok(0));
    assert_eq!(key_of(&t, b"san-uri").await, uri);

    // A valid certificate without a URI SAN carries no identity in this mode.
    let got = mtls_connack(
        t.tls_port(),
        tls_client(&[&t.ca_path()], Some(&no_uri)),
        V5,
        "client-plain",
        None,
        None,
    )
    .await
    .map(|(_, c)| c);
    assert_eq!(
        got,
        Ok(reason::NOT_AUTHORIZED),
        "no URI SAN: not authorized"
    );
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mtls_optional_without_a_certificate_falls_through_to_the_password() {
    let pki = tempfile::tempdir().unwrap();
    let ca = Ca::new(pki.path(), "devices");
    let dev = ca.device(pki.path(), "dev-cert", None, 40);
    let passwd = pki.path().join("passwd");
    mqtt_kafka_proxy::auth::passwd::set_entry(&passwd, "dev-pw", b"s3cret").unwrap();
    let (ca_path, pw) = (ca.path.clone(), passwd.clone());
    let t = TestProxy::start_with(|c| {
        c.listeners.tls.client_auth = ClientAuth::Optional;
        c.listeners.tls.client_ca_path = ca_path;
        c.auth.methods = vec![AuthMethod::Certificate, AuthMethod::Password];
        c.auth.password.file = pw;
        c.auth.acl = allow_all();
    })
    .await;
    let port = t.tls_port();
    let anonymous = tls_client(&[&t.ca_path()], None);

    // No certificate, right password: the user name is the device.
    let (mut w, code) = mtls_connack(
        port,
        anonymous.clone(),
        V5,
        "pw-client",
        Some("dev-pw"),
        Some(b"s3cret"),
    )
    .await
    .expect("handshake without a certificate in optional mode");
    assert_eq!(code, 0);
    assert_eq!(
        publish_qos1(&mut w, V5, "devices/dev-pw/events/x", b"by-password", 1).await,
        Ok(0)
    );
    // No certificate, wrong password: refused by the password method.
    let got = mtls_connack(
        port,
        anonymous.clone(),
        V5,
        "pw-client",
        Some("dev-pw"),
        Some(b"wrong"),
    )
    .await
    .map(|(_, c)| c);
    assert_eq!(got, Ok(reason::BAD_USER_NAME_OR_PASSWORD));
    // No certificate, no credentials: nothing recognises it.
    let got = mtls_connack(port, anonymous, V311, "nobody", None, None)
        .await
        .map(|(_, c)| c);
    assert_eq!(got, Ok(return_code::NOT_AUTHORIZED));
    // A certificate decides first, whatever user name comes with it.
    let (mut w, code) = mtls_connack(
        port,
        tls_client(&[&t.ca_path()], Some(&dev)),
        V5,
        "cert-client",
        Some("dev-pw"),
        Some(b"wrong"),
    )
    .await
    .expect("certificate accepted");
    assert_eq!(code, 0);
    assert_eq!(
        publish_qos1(&mut w, V5, "devices/dev-cert/events/x", b"by-cert", 1).await,
        Ok(0)
    );
    assert_eq!(key_of(&t, b"by-password").await, "dev-pw");
    assert_eq!(key_of(&t, b"by-cert").await, "dev-cert");
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_with_a_client_certificate() {
    let pki = tempfile::tempdir().unwrap();
    let ca = Ca::new(pki.path(), "devices");
    let dev = ca.device(pki.path(), "dev-mosq", None, 50);
    let ca_path = ca.path.clone();
    let t = TestProxy::start_with(|c| {
        mtls_required(c, &ca_path);
        c.auth.acl = allow_all();
    })
    .await;
    let port = t.tls_port().to_string();
    let server_ca = t.ca_path();
    let (server_ca, cert, key) = (
        server_ca.to_str().unwrap(),
        dev.cert_path.to_str().unwrap(),
        dev.key_path.to_str().unwrap(),
    );
    let base = [
        "-h",
        "localhost",
        "-p",
        &port,
        "-V",
        "mqttv311",
        "-q",
        "1",
        "--cafile",
        server_ca,
        "-t",
        "devices/dev-mosq/events/m",
    ];
    let mut args = base.to_vec();
    args.extend([
        "-i",
        "mosq-client",
        "--cert",
        cert,
        "--key",
        key,
        "-m",
        "mosquitto-mtls",
    ]);
    let out = mosquitto_pub(&args).await;
    assert!(
        out.status.success(),
        "mosquitto_pub with a certificate: {out:?}"
    );
    // Without a certificate the handshake fails.
    let mut args = base.to_vec();
    args.extend(["-i", "mosq-anon", "-m", "anonymous"]);
    let out = mosquitto_pub(&args).await;
    assert!(
        !out.status.success(),
        "mosquitto_pub without a certificate: {out:?}"
    );
    let recs = events_until(&t, b"mosquitto-mtls").await;
    assert!(recs.iter().all(|r| r.value != b"anonymous"));
    let r = recs.iter().find(|r| r.value == b"mosquitto-mtls").unwrap();
    assert_eq!(r.key, "dev-mosq", "key is the certificate CN");
    assert_eq!(r.header("mqtt.client_id").as_deref(), Some("mosq-client"));
    t.proxy.shutdown().await;
}

// ---------------------------------------------------------------------------
// Password file.
// ---------------------------------------------------------------------------

/// `mqtt-kafka-proxy passwd FILE USER` with the password on standard input.
async fn passwd(file: &Path, user: &str, password: &str) {
    use std::process::Stdio;
    let mut child = tokio::process::Command::new(env!("CARGO_BIN_EXE_mqtt-kafka-proxy"))
        .arg("passwd")
        .arg(file)
        .arg(user)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut stdin = child.stdin.take().unwrap();
    stdin
        .write_all(format!("{password}\n").as_bytes())
        .await
        .unwrap();
    drop(stdin);
    let out = tokio::time::timeout(PATIENCE, child.wait_with_output())
        .await
        .expect("passwd finishes")
        .unwrap();
    assert!(out.status.success(), "passwd {user}: {out:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_file_from_the_passwd_subcommand() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    passwd(&file, "sensor-7", "correct horse").await;
    passwd(&file, "sensor-8", "battery staple").await;
    let text = std::fs::read_to_string(&file).unwrap();
    assert!(
        !text.contains("correct horse") && text.contains("sensor-7:$argon2"),
        "the file holds argon2 hashes, not passwords: {text}"
    );
    let f = file.clone();
    let t = TestProxy::start_with(|c| {
        c.auth.methods = vec![AuthMethod::Password];
        c.auth.password.file = f;
        c.auth.acl = allow_all();
    })
    .await;
    let port = t.tcp_port();

    // A real client whose client id is not its user name.
    let mut o = v4_options("some-client-id", port);
    o.set_credentials("sensor-7", "correct horse");
    let mut c = v4_connect(o).await;
    c.client
        .publish(
            "devices/sensor-7/events/t",
            rumqttc::QoS::AtLeastOnce,
            false,
            "by-rumqttc",
        )
        .await
        .unwrap();
    c.pubacks(1).await;

    for v in [V311, V5] {
        let mut w = tcp_session(port, v, "raw-client", Some("sensor-8"), b"battery staple").await;
        let payload: &'static [u8] = if v == V5 { b"raw-5" } else { b"raw-311" };
        assert_eq!(
            publish_qos1(&mut w, v, "devices/x/events/t", payload, 1).await,
            Ok(0)
        );
        let cases: [(&str, Option<&str>, &[u8], u8); 4] = [
            (
                "wrong password",
                Some("sensor-7"),
                b"wrong horse",
                code(
                    v,
                    return_code::BAD_USERNAME_OR_PASSWORD,
                    reason::BAD_USER_NAME_OR_PASSWORD,
                ),
            ),
            (
                "another user's password",
                Some("sensor-8"),
                b"correct horse",
                code(
                    v,
                    return_code::BAD_USERNAME_OR_PASSWORD,
                    reason::BAD_USER_NAME_OR_PASSWORD,
                ),
            ),
            (
                "unknown user",
                Some("sensor-9"),
                b"correct horse",
                code(
                    v,
                    return_code::BAD_USERNAME_OR_PASSWORD,
                    reason::BAD_USER_NAME_OR_PASSWORD,
                ),
            ),
            (
                "empty password",
                Some("sensor-7"),
                b"",
                code(
                    v,
                    return_code::BAD_USERNAME_OR_PASSWORD,
                    reason::BAD_USER_NAME_OR_PASSWORD,
                ),
            ),
        ];
        for (case, user, pass, want) in cases {
            let got = tcp_connack(port, v, "raw-client", user, pass).await;
            assert_eq!(got, want, "{case} ({v:?})");
        }
        // A known user name with no password field at all.
        let mut w = tcp_wire(port).await;
        let got = connack(&mut w, v, "raw-client", Some("sensor-7"), None).await;
        assert_eq!(
            got,
            Ok(code(
                v,
                return_code::BAD_USERNAME_OR_PASSWORD,
                reason::BAD_USER_NAME_OR_PASSWORD
            )),
            "known user without a password ({v:?})"
        );
        // No user name (and so, in 3.1.1, no password either).
        let mut w = tcp_wire(port).await;
        let got = connack(&mut w, v, "anonymous", None, None).await;
        assert_eq!(
            got,
            Ok(code(v, return_code::NOT_AUTHORIZED, reason::NOT_AUTHORIZED)),
            "no user name ({v:?})"
        );
    }
    let recs = consume(&t.bootstrap(), "iot.events", 3).await;
    for (payload, key) in [
        (&b"by-rumqttc"[..], "sensor-7"),
        (b"raw-311", "sensor-8"),
        (b"raw-5", "sensor-8"),
    ] {
        let r = recs.iter().find(|r| r.value == payload).unwrap();
        assert_eq!(r.key, key, "record {payload:?} keyed by the user name");
    }
    let r = recs.iter().find(|r| r.value == b"by-rumqttc").unwrap();
    assert_eq!(
        r.header("mqtt.client_id").as_deref(),
        Some("some-client-id")
    );
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mosquitto_pub_with_a_password() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    passwd(&file, "mosq-user", "pa55word").await;
    let f = file.clone();
    let t = TestProxy::start_with(|c| {
        c.auth.methods = vec![AuthMethod::Password];
        c.auth.password.file = f;
        c.auth.acl = allow_all();
    })
    .await;
    let port = t.tcp_port().to_string();
    let base = [
        "-h",
        "127.0.0.1",
        "-p",
        &port,
        "-q",
        "1",
        "-i",
        "mosq-pw",
        "-u",
        "mosq-user",
        "-t",
        "devices/mosq-user/events/m",
    ];
    for (version, payload) in [("mqttv311", "mosq-311"), ("mqttv5", "mosq-5")] {
        let mut args = base.to_vec();
        args.extend(["-V", version, "-P", "pa55word", "-m", payload]);
        let out = mosquitto_pub(&args).await;
        assert!(out.status.success(), "right password ({version}): {out:?}");
        let mut args = base.to_vec();
        args.extend(["-V", version, "-P", "wrong", "-m", "wrong-password"]);
        let out = mosquitto_pub(&args).await;
        assert!(!out.status.success(), "wrong password ({version}): {out:?}");
    }
    let recs = consume_until(&t.bootstrap(), "iot.events", |r| {
        r.iter().any(|x| x.value == b"mosq-311") && r.iter().any(|x| x.value == b"mosq-5")
    })
    .await;
    assert!(recs.iter().all(|r| r.key == "mosq-user"), "{recs:?}");
    assert!(recs.iter().all(|r| r.value != b"wrong-password"));
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn password_file_reload_lets_a_new_user_in_without_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("passwd");
    passwd(&file, "first", "one-one-one").await;
    let f = file.clone();
    let t = TestProxy::start_with(|c| {
        c.auth.methods = vec![AuthMethod::Password];
        c.auth.password.file = f;
        c.auth.reload_interval_ms = 50;
        c.auth.acl = allow_all();
    })
    .await;
    let port = t.tcp_port();
    assert_eq!(
        tcp_connack(port, V5, "second", Some("second"), b"two-two-two").await,
        reason::BAD_USER_NAME_OR_PASSWORD,
        "not in the file yet"
    );
    passwd(&file, "second", "two-two-two").await;
    eventually_async("the new user can connect", || async move {
        tcp_connack(port, V5, "second", Some("second"), b"two-two-two").await == 0
    })
    .await;
    // The first user is untouched, and a changed password takes effect too.
    assert_eq!(
        tcp_connack(port, V311, "first", Some("first"), b"one-one-one").await,
        0
    );
    passwd(&file, "first", "one-changed").await;
    eventually_async("the old password stops working", || async move {
        tcp_connack(port, V311, "first", Some("first"), b"one-one-one").await
            == return_code::BAD_USERNAME_OR_PASSWORD
    })
    .await;
    assert_eq!(
        tcp_connack(port, V311, "first", Some("first"), b"one-changed").await,
        0
    );
    t.proxy.shutdown().await;
}

// ---------------------------------------------------------------------------
// JWT.
// ---------------------------------------------------------------------------

fn jwt(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
    let header = Header {
        alg,
        kid: kid.map(Into::into),
        ..Header::default()
    };
    jsonwebtoken::encode(&header, claims, key).unwrap()
}

const HS_SECRET: &[u8] = b"a-test-only-secret-of-at-least-32-bytes!";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_hs256_key_is_sub_and_bad_tokens_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, [HS_SECRET, b"\n"].concat()).unwrap();
    let s = secret.clone();
    let t = TestProxy::start_with(|c| {
        c.auth.methods = vec![AuthMethod::Jwt];
        c.auth.jwt.secret_file = s;
        c.auth.jwt.issuer = "https://issuer.test".into();
        c.auth.jwt.audience = "mqtt-proxy".into();
        c.auth.jwt.leeway_s = 0;
        c.auth.acl = allow_all();
    })
    .await;
    let port = t.tcp_port();
    let key = EncodingKey::from_secret(HS_SECRET);
    let exp = now_s() + 600;
    let good =
        json!({"sub": "jwt-dev-1", "iss": "https://issuer.test", "aud": "mqtt-proxy", "exp": exp});
    let token = jwt(Algorithm::HS256, None, &key, &good);
    for v in [V311, V5] {
        let mut w = tcp_session(port, v, "not-the-device", Some("jwt"), token.as_bytes()).await;
        let payload: &'static [u8] = if v == V5 { b"jwt-5" } else { b"jwt-311" };
        assert_eq!(
            publish_qos1(&mut w, v, "devices/other/events/x", payload, 1).await,
            Ok(0)
        );
    }
    let with = |k: &str, val: Value| {
        let mut c = good.clone();
        c[k] = val;
        c
    };
    let mut no_aud = good.clone();
    no_aud.as_object_mut().unwrap().remove("aud");
    let bad = [
        (
            "expired",
            jwt(
                Algorithm::HS256,
                None,
                &key,
                &with("exp", json!(now_s() - 120)),
            ),
        ),
        (
            "wrong audience",
            jwt(
                Algorithm::HS256,
                None,
                &key,
                &with("aud", json!("someone-else")),
            ),
        ),
        (
            "wrong issuer",
            jwt(
                Algorithm::HS256,
                None,
                &key,
                &with("iss", json!("https://evil.test")),
            ),
        ),
        ("no audience", jwt(Algorithm::HS256, None, &key, &no_aud)),
        (
            "wrong secret",
            jwt(
                Algorithm::HS256,
                None,
                &EncodingKey::from_secret(b"another-secret-another-secret-0123"),
                &good,
            ),
        ),
        (
            "not yet valid",
            jwt(
                Algorithm::HS256,
                None,
                &key,
                &with("nbf", json!(now_s() + 3600)),
            ),
        ),
    ];
    for (case, token) in &bad {
        for v in [V311, V5] {
            let got = tcp_connack(port, v, "jwt-bad", Some("jwt"), token.as_bytes()).await;
            let want = code(
                v,
                return_code::BAD_USERNAME_OR_PASSWORD,
                reason::BAD_USER_NAME_OR_PASSWORD,
            );
            assert_eq!(got, want, "{case} ({v:?})");
        }
    }
    let recs = consume(&t.bootstrap(), "iot.events", 2).await;
    assert!(
        recs.iter().all(|r| r.key == "jwt-dev-1"),
        "key is the sub claim: {recs:?}"
    );
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_rs256_with_a_custom_device_id_claim() {
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt");
    let public = fixtures.join("test-only-rsa-public.pem");
    let private = std::fs::read(fixtures.join("test-only-rsa-private.pem")).unwrap();
    let key = EncodingKey::from_rsa_pem(&private).unwrap();
    let p = public.clone();
    let t = TestProxy::start_with(|c| {
        c.auth.methods = vec![AuthMethod::Jwt];
        c.auth.jwt.key_file = p;
        c.auth.jwt.algorithms = vec!["RS256".into()];
        c.auth.jwt.device_id_claim = "device".into();
        c.auth.acl = allow_all();
    })
    .await;
    let port = t.tcp_port();
    let exp = now_s() + 600;
    let token = jwt(
        Algorithm::RS256,
        None,
        &key,
        &json!({"sub": "not-the-device", "device": "rsa-dev", "exp": exp}),
    );
    let mut w = tcp_session(port, V5, "rsa-client", Some("jwt"), token.as_bytes()).await;
    assert_eq!(
        publish_qos1(&mut w, V5, "devices/rsa-dev/events/x", b"rs256", 1).await,
        Ok(0)
    );
    assert_eq!(key_of(&t, b"rs256").await, "rsa-dev");

    let public_pem = std::fs::read(&public).unwrap();
    let bad = [
        (
            "no device claim",
            jwt(
                Algorithm::RS256,
                None,
                &key,
                &json!({"sub": "x", "exp": exp}),
            ),
        ),
        (
            "no exp",
            jwt(Algorithm::RS256, None, &key, &json!({"device": "rsa-dev"})),
        ),
        (
            // Algorithm confusion: the public key used as an HMAC secret.
            "HS256 signed with the public key",
            jwt(
                Algorithm::HS256,
                None,
                &EncodingKey::from_secret(&public_pem),
                &json!({"device": "rsa-dev", "exp": exp}),
            ),
        ),
    ];
    for (case, token) in &bad {
        let got = tcp_connack(port, V5, "rsa-bad", Some("jwt"), token.as_bytes()).await;
        assert_eq!(got, reason::BAD_USER_NAME_OR_PASSWORD, "{case}");
    }
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_es256_with_a_pem_public_key() {
    let dir = tempfile::tempdir().unwrap();
    let kp = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let other = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let public = dir.path().join("es256.pem");
    std::fs::write(&public, kp.public_key_pem()).unwrap();
    let p = public.clone();
    let t = TestProxy::start_with(|c| {
        c.auth.methods = vec![AuthMethod::Jwt];
        c.auth.jwt.key_file = p;
        c.auth.acl = allow_all();
    })
    .await;
    let port = t.tcp_port();
    let claims = json!({"sub": "ec-dev", "exp": now_s() + 600});
    let key = EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap();
    let token = jwt(Algorithm::ES256, None, &key, &claims);
    let mut w = tcp_session(port, V311, "ec-client", Some("jwt"), token.as_bytes()).await;
    assert_eq!(
        publish_qos1(&mut w, V311, "devices/ec-dev/events/x", b"es256", 1).await,
        Ok(0)
    );
    assert_eq!(key_of(&t, b"es256").await, "ec-dev");
    let forged = jwt(
        Algorithm::ES256,
        None,
        &EncodingKey::from_ec_pem(other.serialize_pem().as_bytes()).unwrap(),
        &claims,
    );
    assert_eq!(
        tcp_connack(port, V311, "ec-forged", Some("jwt"), forged.as_bytes()).await,
        return_code::BAD_USERNAME_OR_PASSWORD,
        "signed by another key"
    );
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_jwks_selects_the_key_by_kid() {
    use x509_parser::prelude::FromDer;
    let dir = tempfile::tempdir().unwrap();
    let ec1 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let ec2 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P256_SHA256).unwrap();
    let b64 = |b: &[u8]| URL_SAFE_NO_PAD.encode(b);
    let ec_jwk = |kp: &rcgen::KeyPair, kid: &str| {
        let point = kp.public_key_raw();
        assert_eq!(point.len(), 65, "uncompressed P-256 point");
        json!({"kty": "EC", "crv": "P-256", "kid": kid, "use": "sig", "alg": "ES256",
               "x": b64(&point[1..33]), "y": b64(&point[33..])})
    };
    let fixtures = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/jwt");
    let rsa_pub = std::fs::read(fixtures.join("test-only-rsa-public.pem")).unwrap();
    let (_, pem) = x509_parser::pem::parse_x509_pem(&rsa_pub).unwrap();
    let (_, spki) = x509_parser::x509::SubjectPublicKeyInfo::from_der(&pem.contents).unwrap();
    let Ok(x509_parser::public_key::PublicKey::RSA(rsa)) = spki.parsed() else {
        panic!("the fixture is an RSA key");
    };
    let rsa_jwk = json!({"kty": "RSA", "kid": "rsa-1", "alg": "RS256",
                         "n": b64(rsa.modulus), "e": b64(rsa.exponent)});
    let jwks = json!({"keys": [ec_jwk(&ec1, "ec-1"), ec_jwk(&ec2, "ec-2"), rsa_jwk]});
    let path = dir.path().join("jwks.json");
    std::fs::write(&path, jwks.to_string()).unwrap();
    let p = path.clone();
    let t = TestProxy::start_with(|c| {
        c.auth.methods = vec![AuthMethod::Jwt];
        c.auth.jwt.key_file = p;
    })
    .await;
    let port = t.tcp_port();
    let exp = now_s() + 600;
    let k1 = EncodingKey::from_ec_pem(ec1.serialize_pem().as_bytes()).unwrap();
    let k2 = EncodingKey::from_ec_pem(ec2.serialize_pem().as_bytes()).unwrap();
    let rsa = EncodingKey::from_rsa_pem(
        &std::fs::read(fixtures.join("test-only-rsa-private.pem")).unwrap(),
    )
    .unwrap();
    let claims = json!({"sub": "jwks-dev", "exp": exp});
    let cases = [
        (
            "ec-1 signed by ec-1",
            jwt(Algorithm::ES256, Some("ec-1"), &k1, &claims),
            0,
        ),
        (
            "ec-2 signed by ec-2",
            jwt(Algorithm::ES256, Some("ec-2"), &k2, &claims),
            0,
        ),
        (
            "rsa-1",
            jwt(Algorithm::RS256, Some("rsa-1"), &rsa, &claims),
            0,
        ),
        (
            "kid ec-1 but signed by ec-2",
            jwt(Algorithm::ES256, Some("ec-1"), &k2, &claims),
            reason::BAD_USER_NAME_OR_PASSWORD,
        ),
        (
            "unknown kid",
            jwt(Algorithm::ES256, Some("ec-9"), &k1, &claims),
            reason::BAD_USER_NAME_OR_PASSWORD,
        ),
        (
            "no kid with two ES256 keys",
            jwt(Algorithm::ES256, None, &k1, &claims),
            reason::BAD_USER_NAME_OR_PASSWORD,
        ),
        (
            "RSA kid on an ES256 token",
            jwt(Algorithm::ES256, Some("rsa-1"), &k1, &claims),
            reason::BAD_USER_NAME_OR_PASSWORD,
        ),
    ];
    for (case, token, want) in &cases {
        let got = tcp_connack(port, V5, "jwks-client", Some("jwt"), token.as_bytes()).await;
        assert_eq!(got, *want, "{case}");
    }
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn jwt_expiry_ends_a_live_connection() {
    let dir = tempfile::tempdir().unwrap();
    let secret = dir.path().join("secret");
    std::fs::write(&secret, HS_SECRET).unwrap();
    let s = secret.clone();
    let t = TestProxy::start_with(|c| {
        c.auth.methods = vec![AuthMethod::Jwt];
        c.auth.jwt.secret_file = s;
        c.auth.jwt.leeway_s = 0;
        c.auth.acl = allow_all();
    })
    .await;
    let port = t.tcp_port();
    let key = EncodingKey::from_secret(HS_SECRET);
    let exp = now_s() + 2;
    // Two devices, or the second connection would take the first one over.
    let token5 = jwt(
        Algorithm::HS256,
        None,
        &key,
        &json!({"sub": "short-5", "exp": exp}),
    );
    let token311 = jwt(
        Algorithm::HS256,
        None,
        &key,
        &json!({"sub": "short-311", "exp": exp}),
    );
    let mut v5 = tcp_session(port, V5, "client-5", Some("jwt"), token5.as_bytes()).await;
    let mut v311 = tcp_session(port, V311, "client-311", Some("jwt"), token311.as_bytes()).await;
    // Usable until it expires.
    assert_eq!(
        publish_qos1(&mut v5, V5, "devices/short-5/events/x", b"before-exp", 1).await,
        Ok(0)
    );
    let (rest5, rest311) = tokio::join!(v5.read_to_close(), v311.read_to_close());
    let closed_at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs_f64();
    assert!(
        closed_at >= exp as f64 - 0.05,
        "closed at {closed_at}, before exp {exp}"
    );
    let p = parse_packets(&rest5);
    assert_eq!(
        p.iter().map(|p| p.0).collect::<Vec<_>>(),
        [0xE0],
        "5.0: one DISCONNECT then close; got {rest5:02x?}"
    );
    assert_eq!(
        p[0].1.first().copied(),
        Some(reason::MAXIMUM_CONNECT_TIME),
        "DISCONNECT reason 0xA0"
    );
    assert!(
        rest311.is_empty(),
        "3.1.1: closed, nothing written: {rest311:02x?}"
    );
    assert_eq!(key_of(&t, b"before-exp").await, "short-5");
    t.proxy.shutdown().await;
}

// ---------------------------------------------------------------------------
// HTTP auth hook: a fake HTTP service in the test (common::FakeService).
// ---------------------------------------------------------------------------

fn hook_config(c: &mut mqtt_kafka_proxy::Config, url: &str) {
    c.auth.methods = vec![AuthMethod::Http];
    c.auth.http.url = url.to_owned();
    c.auth.acl = allow_all();
}

/// Allows `good` as device `hook-dev-1`, denies `bad` in JSON, `forbidden`
/// with 403, `nameless` without naming a device.
fn decide_by_user(req: &Value) -> (u16, String) {
    match req["username"].as_str() {
        Some("good") if req["password"] == "pw" => (
            200,
            json!({"result": "allow", "device_id": "hook-dev-1"}).to_string(),
        ),
        Some("nameless") => (204, String::new()),
        Some("forbidden") => (403, String::new()),
        _ => (200, json!({"result": "deny", "reason": "nope"}).to_string()),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_hook_allow_names_the_device_and_deny_refuses() {
    let hook = FakeService::start(Duration::ZERO, decide_by_user).await;
    let url = hook.url("/auth");
    let t = TestProxy::start_with(|c| hook_config(c, &url)).await;
    let port = t.tcp_port();
    for v in [V311, V5] {
        let mut w = tcp_session(port, v, "hook-client", Some("good"), b"pw").await;
        let payload: &'static [u8] = if v == V5 { b"hook-5" } else { b"hook-311" };
        assert_eq!(
            publish_qos1(&mut w, v, "devices/x/events/x", payload, 1).await,
            Ok(0)
        );
        let bad = code(
            v,
            return_code::BAD_USERNAME_OR_PASSWORD,
            reason::BAD_USER_NAME_OR_PASSWORD,
        );
        assert_eq!(tcp_connack(port, v, "c", Some("good"), b"wrong").await, bad);
        assert_eq!(tcp_connack(port, v, "c", Some("bad"), b"pw").await, bad);
        assert_eq!(
            tcp_connack(port, v, "c", Some("forbidden"), b"pw").await,
            bad
        );
    }
    let mut w = tcp_session(port, V5, "nameless-client", Some("nameless"), b"pw").await;
    assert_eq!(
        publish_qos1(&mut w, V5, "devices/x/events/x", b"hook-nameless", 1).await,
        Ok(0)
    );
    assert_eq!(key_of(&t, b"hook-5").await, "hook-dev-1");
    assert_eq!(key_of(&t, b"hook-311").await, "hook-dev-1");
    assert_eq!(
        key_of(&t, b"hook-nameless").await,
        "nameless",
        "204 names no device: the user name is the device id"
    );
    // What the service was asked.
    let first = &hook.requests()[0];
    assert_eq!(first["action"], "connect");
    assert_eq!(first["client_id"], "hook-client");
    assert_eq!(first["username"], "good");
    assert_eq!(first["password"], "pw");
    assert!(
        first["peer"].as_str().unwrap().starts_with("127.0.0.1:"),
        "{first}"
    );
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_hook_slow_service_with_on_error_deny_is_server_unavailable() {
    let hook = FakeService::start(Duration::from_millis(1500), decide_by_user).await;
    let url = hook.url("/auth");
    let t = TestProxy::start_with(|c| {
        hook_config(c, &url);
        c.auth.http.timeout_ms = 200;
        c.auth.http.on_error = OnError::Deny;
    })
    .await;
    let port = t.tcp_port();
    let started = Instant::now();
    for v in [V311, V5] {
        let got = tcp_connack(port, v, "slow", Some("good"), b"pw").await;
        assert_eq!(
            got,
            code(
                v,
                return_code::SERVER_UNAVAILABLE,
                reason::SERVER_UNAVAILABLE
            ),
            "{v:?}"
        );
    }
    assert!(
        started.elapsed() < Duration::from_millis(2 * 1400),
        "each refusal came at the timeout, not after the slow answer: {:?}",
        started.elapsed()
    );
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_hook_slow_service_with_on_error_allow_lets_devices_in() {
    let hook = FakeService::start(Duration::from_millis(1500), decide_by_user).await;
    let url = hook.url("/auth");
    let t = TestProxy::start_with(|c| {
        hook_config(c, &url);
        c.auth.http.timeout_ms = 200;
        c.auth.http.on_error = OnError::Allow;
    })
    .await;
    // Even the user the service would deny: nobody could ask it.
    let mut w = tcp_session(t.tcp_port(), V5, "fail-open", Some("bad"), b"pw").await;
    assert_eq!(
        publish_qos1(&mut w, V5, "devices/x/events/x", b"fail-open", 1).await,
        Ok(0)
    );
    assert_eq!(
        key_of(&t, b"fail-open").await,
        "bad",
        "no answer: the user name is the device id"
    );
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_hook_down_is_server_unavailable() {
    let url = format!("http://127.0.0.1:{}/auth", free_port());
    let t = TestProxy::start_with(|c| hook_config(c, &url)).await;
    for v in [V311, V5] {
        let got = tcp_connack(t.tcp_port(), v, "down", Some("good"), b"pw").await;
        assert_eq!(
            got,
            code(
                v,
                return_code::SERVER_UNAVAILABLE,
                reason::SERVER_UNAVAILABLE
            ),
            "{v:?}"
        );
    }
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_hook_answers_are_cached_and_connections_pooled() {
    let hook = FakeService::start(Duration::ZERO, decide_by_user).await;
    let url = hook.url("/auth");
    let t = TestProxy::start_with(|c| hook_config(c, &url)).await;
    let port = t.tcp_port();
    // The same question twice: asked once.
    for _ in 0..2 {
        assert_eq!(
            tcp_connack(port, V5, "cached", Some("good"), b"pw").await,
            0
        );
    }
    assert_eq!(hook.requests().len(), 1, "second answer from the cache");
    // A deny is cached too.
    for _ in 0..2 {
        assert_eq!(
            tcp_connack(port, V5, "cached", Some("bad"), b"pw").await,
            reason::BAD_USER_NAME_OR_PASSWORD
        );
    }
    assert_eq!(hook.requests().len(), 2, "deny answer from the cache");
    // Different client ids are different questions, over one connection.
    const N: usize = 8;
    for i in 0..N {
        assert_eq!(
            tcp_connack(port, V311, &format!("pooled-{i}"), Some("good"), b"pw").await,
            0
        );
    }
    assert_eq!(hook.requests().len(), 2 + N, "one question per client id");
    assert_eq!(
        hook.connections(),
        1,
        "every question over one kept-alive connection"
    );
    t.proxy.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn http_hook_decides_each_publish_topic_once() {
    let hook = FakeService::start(Duration::ZERO, |req: &Value| {
        let allow = match req["action"].as_str() {
            Some("connect") => true,
            Some("publish") => req["topic"].as_str().unwrap_or("").ends_with("/ok"),
            _ => false,
        };
        let result = if allow { "allow" } else { "deny" };
        (200, json!({"result": result}).to_string())
    })
    .await;
    let url = hook.url("/auth");
    let t = TestProxy::start_with(|c| {
        hook_config(c, &url);
        c.auth.http.check_publish = true;
    })
    .await;
    let port = t.tcp_port();
    let publishes = |r: &[Value]| r.iter().filter(|q| q["action"] == "publish").count();

    let mut w = tcp_session(port, V5, "topic-dev", Some("topic-dev"), b"pw").await;
    assert_eq!(
        publish_qos1(&mut w, V5, "devices/topic-dev/events/ok", b"allowed-1", 1).await,
        Ok(0)
    );
    assert_eq!(
        publish_qos1(&mut w, V5, "devices/topic-dev/events/no", b"denied-1", 2).await,
        Ok(reason::NOT_AUTHORIZED)
    );
    assert_eq!(publishes(&hook.requests()), 2);
    assert_eq!(
        publish_qos1(&mut w, V5, "devices/topic-dev/events/ok", b"allowed-2", 3).await,
        Ok(0)
    );
    assert_eq!(
        publish_qos1(&mut w, V5, "devices/topic-dev/events/no", b"denied-2", 4).await,
        Ok(reason::NOT_AUTHORIZED)
    );
    assert_eq!(
        publishes(&hook.requests()),
        2,
        "repeated topics answered from the cache"
    );
    let asked = hook
        .requests()
        .into_iter()
        .find(|q| q["action"] == "publish")
        .unwrap();
    assert_eq!(asked["topic"], "devices/topic-dev/events/ok");
    assert_eq!(asked["device_id"], "topic-dev");

    // 3.1.1 cannot refuse a PUBLISH: the connection closes.
    let mut w = tcp_session(port, V311, "topic-311", Some("topic-311"), b"pw").await;
    assert_eq!(
        publish_qos1(
            &mut w,
            V311,
            "devices/topic-311/events/ok",
            b"allowed-311",
            1
        )
        .await,
        Ok(0)
    );
    let got = publish_qos1(
        &mut w,
        V311,
        "devices/topic-311/events/no",
        b"denied-311",
        2,
    )
    .await;
    assert!(got.is_err(), "3.1.1 denied publish closes: {got:?}");

    let recs = events_with(&t, &[b"allowed-1", b"allowed-2", b"allowed-311"]).await;
    assert!(
        recs.iter().all(|r| !r.value.starts_with(b"denied")),
        "no denied message reached Kafka: {recs:?}"
    );
    t.proxy.shutdown().await;
}

// ---------------------------------------------------------------------------
// TLS certificate reload.
// ---------------------------------------------------------------------------

/// Points the `live` symlink in `dir` at `version` atomically, the way
/// Kubernetes rotates a mounted secret, so the proxy never sees a certificate
/// from one version with the key of another.
fn point_live_at(dir: &Path, version: &str) {
    let tmp = dir.join("live.tmp");
    let _ = std::fs::remove_file(&tmp);
    std::os::unix::fs::symlink(dir.join(version), &tmp).unwrap();
    std::fs::rename(&tmp, dir.join("live")).unwrap();
}

/// Writes `issued` as `dir/version/server.{crt,key}`.
fn stage(dir: &Path, version: &str, issued: &Issued) {
    let v = dir.join(version);
    std::fs::create_dir_all(&v).unwrap();
    std::fs::write(v.join("server.crt"), &issued.cert_pem).unwrap();
    std::fs::write(v.join("server.key"), &issued.key_pem).unwrap();
}

/// Serves `garbage` to every reader that opens the FIFO at `path` until
/// stopped; counts the readers. The simulated broken key file: each open by
/// the proxy is an observable event, so the test knows the reload was tried.
struct BrokenKeyFile {
    served: Arc<AtomicUsize>,
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl BrokenKeyFile {
    fn start(path: &Path, garbage: &'static [u8]) -> BrokenKeyFile {
        let made = std::process::Command::new("mkfifo")
            .arg(path)
            .status()
            .unwrap();
        assert!(made.success(), "mkfifo {}", path.display());
        let (served, stop) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let (s, st, path) = (served.clone(), stop.clone(), path.to_owned());
        let thread = std::thread::spawn(move || {
            use std::io::Write;
            use std::os::unix::fs::OpenOptionsExt;
            // O_NONBLOCK (Linux): opening for write fails with ENXIO until a
            // reader has the FIFO open, so this never blocks.
            const O_NONBLOCK: i32 = 0o4000;
            while !st.load(Ordering::SeqCst) {
                match std::fs::OpenOptions::new()
                    .write(true)
                    .custom_flags(O_NONBLOCK)
                    .open(&path)
                {
                    Ok(mut f) => {
                        let _ = f.write_all(garbage);
                        s.fetch_add(1, Ordering::SeqCst);
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(2)),
                }
            }
        });
        BrokenKeyFile {
            served,
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for BrokenKeyFile {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::SeqCst);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn tls_certificate_reload_serves_the_new_certificate_and_survives_a_broken_key() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let ca = Ca::new(d, "server");
    let a = ca.server(d, 1);
    let b = ca.server(d, 2);
    let c_cert = ca.server(d, 3);
    let later = ca.server(d, 4);
    stage(d, "v1", &a);
    stage(d, "v2", &b);
    stage(d, "v4", &later);
    point_live_at(d, "v1");
    let live = d.join("live");
    let t = TestProxy::start_with(|c| {
        c.listeners.tls.cert_path = live.join("server.crt");
        c.listeners.tls.key_path = live.join("server.key");
        c.listeners.tls.generate_dev_certs = false;
        c.listeners.tls.reload_interval_ms = 50;
    })
    .await;
    let port = t.tls_port();
    let client = tls_client(&[&ca.path], None);

    let (mut old, leaf) = tls_wire(port, client.clone()).await.unwrap();
    assert_eq!(leaf, a.der, "certificate A served at start");
    assert_eq!(connack(&mut old, V5, "long-lived", None, None).await, Ok(0));

    point_live_at(d, "v2");
    let seen = RefCell::new(Vec::new());
    let b_der = &b.der;
    eventually_async("certificate B served", || {
        let (client, seen) = (client.clone(), &seen);
        async move {
            let leaf = tls_wire(port, client).await.map(|(_, l)| l);
            let done = leaf.as_ref() == Ok(b_der);
            seen.borrow_mut().push(leaf);
            done
        }
    })
    .await;
    assert!(
        seen.borrow()
            .iter()
            .all(|l| l.as_ref() == Ok(&a.der) || l.as_ref() == Ok(&b.der)),
        "every handshake during the switch served A or B"
    );
    // The connection made before the switch is still up.
    assert_eq!(
        publish_qos1(
            &mut old,
            V5,
            "devices/long-lived/events/x",
            b"after-reload",
            1
        )
        .await,
        Ok(0)
    );

    // Version 3: a good certificate with a key file that reads as garbage.
    let v3 = d.join("v3");
    std::fs::create_dir_all(&v3).unwrap();
    std::fs::write(v3.join("server.crt"), &c_cert.cert_pem).unwrap();
    let broken = BrokenKeyFile::start(
        &v3.join("server.key"),
        b"-----BEGIN PRIVATE KEY-----\nnot base64!\n",
    );
    point_live_at(d, "v3");
    let served = broken.served.clone();
    eventually("the proxy reads the broken key file", || {
        served.load(Ordering::SeqCst) > 0
    })
    .await;
    let leaf = tls_wire(port, client.clone()).await.map(|(_, l)| l);
    assert_eq!(leaf.as_ref(), Ok(&b.der), "broken key: B still served");
    // A later good version is still picked up, and until then B is served.
    point_live_at(d, "v4");
    let seen = RefCell::new(Vec::new());
    let later_der = &later.der;
    eventually_async("certificate D served after the broken one", || {
        let (client, seen) = (client.clone(), &seen);
        async move {
            let leaf = tls_wire(port, client).await.map(|(_, l)| l);
            let done = leaf.as_ref() == Ok(later_der);
            seen.borrow_mut().push(leaf);
            done
        }
    })
    .await;
    drop(broken);
    let seen = seen.into_inner();
    assert!(
        seen.iter()
            .all(|l| l.as_ref() == Ok(&b.der) || l.as_ref() == Ok(&later.der)),
        "never the certificate with the broken key, never a failed handshake: {:?}",
        seen.iter()
            .map(|l| l.as_ref().map(|_| "cert"))
            .collect::<Vec<_>>()
    );
    assert_eq!(
        publish_qos1(&mut old, V5, "devices/long-lived/events/x", b"after-two", 2).await,
        Ok(0),
        "the first connection outlived both reloads"
    );
    assert_eq!(key_of(&t, b"after-two").await, "long-lived");
    t.proxy.shutdown().await;
}
