//! `[auth]`: the authentication methods in order, their credential
//! sources, the HTTP hook and the ACL rules.

use std::path::PathBuf;

use serde::Deserialize;

pub use super::acl::{AclAction, AclRule, Permission};

/// An authentication method, tried in the order of `auth.methods`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AuthMethod {
    /// The verified TLS client certificate (`listeners.tls.client_auth`).
    Certificate,
    /// User name and password against `auth.password.file`.
    Password,
    /// A JWT in the password field.
    Jwt,
    /// An external HTTP service.
    Http,
}

/// Authentication and authorization.
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AuthConfig {
    /// Methods tried in order; the first that recognises the client decides
    /// (allow or deny), one that does not (no certificate, unknown user, not
    /// a JWT) passes to the next; if none recognises it, it is refused. Empty:
    /// authentication off, the device id is the client id. Default empty.
    pub methods: Vec<AuthMethod>,
    /// How often the password file and JWT key files are checked for
    /// changes. Default 10000.
    pub reload_interval_ms: u64,
    /// Certificate identity.
    pub certificate: CertificateAuthConfig,
    /// Password file.
    pub password: PasswordAuthConfig,
    /// JWT verification.
    pub jwt: JwtAuthConfig,
    /// HTTP auth hook.
    pub http: HttpAuthConfig,
    /// Publish / subscribe rules, first match wins. Nothing matching: denied
    /// when authentication is on, allowed when it is off. Default empty.
    pub acl: Vec<AclRule>,
}

impl Default for AuthConfig {
    fn default() -> Self {
        AuthConfig {
            methods: Vec::new(),
            reload_interval_ms: 10_000,
            certificate: CertificateAuthConfig::default(),
            password: PasswordAuthConfig::default(),
            jwt: JwtAuthConfig::default(),
            http: HttpAuthConfig::default(),
            acl: Vec::new(),
        }
    }
}

impl AuthConfig {
    /// True when devices must authenticate.
    pub fn enabled(&self) -> bool {
        !self.methods.is_empty()
    }
}

/// Which part of a client certificate is the device id.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum CertIdentity {
    /// The subject's common name.
    #[default]
    Cn,
    /// The first URI subject alternative name (e.g. `spiffe://fleet/dev-1`).
    SanUri,
}

/// Certificate authentication.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct CertificateAuthConfig {
    /// Where the device id comes from: `cn` or `san_uri`. Default `cn`.
    pub identity: CertIdentity,
}

/// Password authentication.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize, Default)]
#[serde(deny_unknown_fields, default)]
pub struct PasswordAuthConfig {
    /// `user:argon2-hash` lines, written by `mqtt-kafka-proxy passwd FILE
    /// USER`; the user name is the device id. Default empty.
    pub file: PathBuf,
}

/// JWT authentication: the token is the CONNECT password.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JwtAuthConfig {
    /// PEM public key (RSA or EC) or a JWKS document, for RS256 / ES256.
    /// Default empty.
    pub key_file: PathBuf,
    /// File holding the HS256 shared secret (trailing newline ignored).
    /// Default empty.
    pub secret_file: PathBuf,
    /// Accepted algorithms (`HS256`, `RS256`, `ES256`). Default all three;
    /// only those with a key configured can succeed.
    pub algorithms: Vec<String>,
    /// Required `iss`; empty: not checked. Default empty.
    pub issuer: String,
    /// Required `aud` (one of the token's); empty: not checked. Default empty.
    pub audience: String,
    /// Claim holding the device id. Default `sub`.
    pub device_id_claim: String,
    /// Clock skew allowed for `exp` and `nbf`, in seconds. Default 30.
    pub leeway_s: u64,
}

impl Default for JwtAuthConfig {
    fn default() -> Self {
        JwtAuthConfig {
            key_file: PathBuf::new(),
            secret_file: PathBuf::new(),
            algorithms: vec!["HS256".into(), "RS256".into(), "ES256".into()],
            issuer: String::new(),
            audience: String::new(),
            device_id_claim: "sub".into(),
            leeway_s: 30,
        }
    }
}

/// What the proxy does when the auth service cannot answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnError {
    /// Refuse (CONNACK 0x88 server unavailable / 3.1.1 0x03).
    #[default]
    Deny,
    /// Let the client in (fail open).
    Allow,
}

/// HTTP auth hook.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpAuthConfig {
    /// URL POSTed a JSON request per decision. Default empty.
    pub url: String,
    /// Per-request deadline. Default 1000.
    pub timeout_ms: u64,
    /// How long an allow answer is reused. Default 60000.
    pub allow_cache_ttl_ms: u64,
    /// How long a deny answer is reused. Default 10000.
    pub deny_cache_ttl_ms: u64,
    /// Most cached answers. Default 100000.
    pub cache_max_entries: usize,
    /// When the service is down, slow or answers 5xx. Default `deny`.
    pub on_error: OnError,
    /// Also ask for each PUBLISH topic (cached per device and topic). Default false.
    pub check_publish: bool,
    /// Also ask for each SUBSCRIBE filter. Default false.
    pub check_subscribe: bool,
    /// Keep-alive connections kept to the service, which is also the most
    /// requests in flight at once (more wait for a free one). Default 64.
    pub max_idle_connections: usize,
}

impl Default for HttpAuthConfig {
    fn default() -> Self {
        HttpAuthConfig {
            url: String::new(),
            timeout_ms: 1000,
            allow_cache_ttl_ms: 60_000,
            deny_cache_ttl_ms: 10_000,
            cache_max_entries: 100_000,
            on_error: OnError::Deny,
            check_publish: false,
            check_subscribe: false,
            max_idle_connections: 64,
        }
    }
}
