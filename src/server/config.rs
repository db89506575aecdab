//! `[listeners]`: where devices connect (TCP, TLS, WebSocket, secure
//! WebSocket), the TLS certificate and client-certificate settings.

use std::net::SocketAddr;
use std::path::PathBuf;

use serde::Deserialize;

/// The listeners.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ListenersConfig {
    /// Plain MQTT over TCP.
    pub tcp: TcpListenerConfig,
    /// MQTT over TLS.
    pub tls: TlsListenerConfig,
    /// MQTT over WebSocket.
    pub ws: WsListenerConfig,
    /// MQTT over WebSocket over TLS (the `tls` listener's certificate and
    /// client-certificate settings).
    pub wss: WsListenerConfig,
    /// Most connections this replica holds at once (all listeners); further
    /// connections wait in the kernel backlog. Default 15000 (the machine's
    /// open-file limit is 20000).
    pub max_connections: usize,
    /// Set SO_REUSEPORT so several replicas on one host share a port. Default false.
    pub reuse_port: bool,
}

impl Default for ListenersConfig {
    fn default() -> Self {
        ListenersConfig {
            tcp: TcpListenerConfig::default(),
            tls: TlsListenerConfig::default(),
            ws: WsListenerConfig {
                enabled: true,
                bind: SocketAddr::from(([0, 0, 0, 0], 8083)),
                path: "/mqtt".into(),
                proxy_protocol: false,
            },
            wss: WsListenerConfig {
                enabled: true,
                bind: SocketAddr::from(([0, 0, 0, 0], 8084)),
                path: "/mqtt".into(),
                proxy_protocol: false,
            },
            max_connections: 15_000,
            reuse_port: false,
        }
    }
}

/// Plain TCP listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TcpListenerConfig {
    /// Serve this listener. Default true.
    pub enabled: bool,
    /// Address to bind. Default `0.0.0.0:1883`.
    pub bind: SocketAddr,
    /// Every connection starts with a PROXY protocol v1 or v2 header (from
    /// a load balancer); without one it is closed. Default false.
    pub proxy_protocol: bool,
}

impl Default for TcpListenerConfig {
    fn default() -> Self {
        TcpListenerConfig {
            enabled: true,
            bind: SocketAddr::from(([0, 0, 0, 0], 1883)),
            proxy_protocol: false,
        }
    }
}

/// TLS listener.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct TlsListenerConfig {
    /// Serve this listener. Default true.
    pub enabled: bool,
    /// Address to bind. Default `0.0.0.0:8883`.
    pub bind: SocketAddr,
    /// Every connection starts with a PROXY protocol v1 or v2 header, before
    /// the TLS handshake. Default false.
    pub proxy_protocol: bool,
    /// PEM certificate chain, leaf first. Default `certs/server.crt`.
    pub cert_path: PathBuf,
    /// PEM private key (PKCS#8, PKCS#1 or SEC1). Default `certs/server.key`.
    pub key_path: PathBuf,
    /// When `cert_path` or `key_path` is missing, generate a development CA
    /// and server certificate there (and `ca.crt` beside them) instead of
    /// failing. Default true; set false in production.
    pub generate_dev_certs: bool,
    /// Client certificates: `none` (not asked for), `optional` (verified when
    /// presented) or `required` (the handshake fails without one). Default `none`.
    pub client_auth: ClientAuth,
    /// PEM file of the CA certificates that sign device certificates;
    /// required unless `client_auth = "none"`. Default empty.
    pub client_ca_path: PathBuf,
    /// PEM file of certificate revocation lists for device certificates;
    /// empty for none. Default empty.
    pub crl_path: PathBuf,
    /// How often the certificate, key, CA and CRL files are checked for
    /// changes; a change is loaded without a restart (new handshakes use it).
    /// Default 10000.
    pub reload_interval_ms: u64,
}

/// A WebSocket listener (`listeners.ws`: plain, default 8083;
/// `listeners.wss`: TLS, default 8084).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct WsListenerConfig {
    /// Serve this listener. Default true.
    pub enabled: bool,
    /// Address to bind.
    pub bind: SocketAddr,
    /// HTTP path of the upgrade. Default `/mqtt`.
    pub path: String,
    /// Connections start with a PROXY protocol header. Default false.
    pub proxy_protocol: bool,
}

/// Whether the TLS listener asks devices for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    /// No client certificates.
    #[default]
    None,
    /// Verified against `client_ca_path` when the device presents one.
    Optional,
    /// Every device must present a certificate signed by `client_ca_path`.
    Required,
}

impl Default for TlsListenerConfig {
    fn default() -> Self {
        TlsListenerConfig {
            enabled: true,
            bind: SocketAddr::from(([0, 0, 0, 0], 8883)),
            proxy_protocol: false,
            cert_path: "certs/server.crt".into(),
            key_path: "certs/server.key".into(),
            generate_dev_certs: true,
            client_auth: ClientAuth::None,
            client_ca_path: PathBuf::new(),
            crl_path: PathBuf::new(),
            reload_interval_ms: 10_000,
        }
    }
}
