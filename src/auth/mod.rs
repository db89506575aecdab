//! Who a device is and what it may touch. [`Authenticator`] runs the
//! configured methods in order at CONNECT — client certificate
//! ([`identity`]), password file ([`passwd`]), JWT ([`jwt`]), HTTP hook
//! ([`hook`]) — and yields the [`Identity`] whose device id becomes the
//! Kafka key and the session-table key. [`acl`] then decides each PUBLISH
//! topic and SUBSCRIBE filter. Credential files reload when they change
//! ([`watch`]). The `[auth]` section's types are in [`config`].
//!
//! Files: `mod.rs` (the authenticator), `config.rs`, `identity.rs`,
//! `passwd.rs`, `jwt/` (`mod.rs` the verifier, `keys.rs` key files and
//! JWKS), `hook/` (`mod.rs` the client, `cache.rs` its answer cache),
//! `acl.rs`, `watch.rs`.

pub mod acl;
pub mod config;
pub mod hook;
pub mod identity;
pub mod jwt;
pub mod passwd;
pub mod watch;

use std::net::SocketAddr;
use std::sync::Arc;

use self::config::{AuthConfig, AuthMethod, CertIdentity, OnError};
use crate::metrics as m;
use crate::mqtt::packet::{reason, return_code, Version};

use self::acl::Acl;
use self::hook::{HookAction, HookRequest, HookVerdict, HttpHook};
use self::jwt::JwtVerifier;
use self::passwd::{PasswordCheck, PasswordFile};

/// A credential source that cannot be loaded at start-up.
#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    /// The password file.
    #[error("auth.password.file: {0}")]
    Password(#[from] passwd::PasswdError),
    /// The JWT key or secret file.
    #[error("auth.jwt: {0}")]
    Jwt(#[from] jwt::JwtError),
    /// The HTTP hook client.
    #[error("auth.http: {0}")]
    Hook(#[from] hook::HookError),
}

/// What CONNECT and the TLS handshake offer as credentials.
#[derive(Debug, Clone, Copy)]
pub struct ConnectInfo<'a> {
    /// The client id (after assignment).
    pub client_id: &'a str,
    /// CONNECT user name.
    pub username: Option<&'a str>,
    /// CONNECT password.
    pub password: Option<&'a [u8]>,
    /// Source address.
    pub peer: SocketAddr,
    /// The verified client certificate (DER), TLS only.
    pub peer_cert: Option<&'a [u8]>,
    /// The common name of a client certificate verified by a load balancer
    /// that terminated TLS (PROXY protocol v2 SSL TLV).
    pub proxied_cn: Option<&'a str>,
}

/// Who a connection is, once authenticated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Identity {
    /// The device id: Kafka key, session-table key, `{device_id}` in ACLs.
    pub device_id: String,
    /// The method that decided (`certificate`, `password`, `jwt`, `http`, `none`).
    pub method: &'static str,
    /// When the connection must end because its credentials expired (JWT
    /// `exp` plus `auth.jwt.leeway_s`, seconds since the epoch).
    pub expires_at: Option<u64>,
}

/// Why a CONNECT is refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// Wrong or unusable credentials.
    BadCredentials(String),
    /// Credentials fine, access not granted (or nothing recognised the client).
    NotAuthorized(String),
    /// The auth service could not answer and `on_error = "deny"`.
    Unavailable(String),
}

impl Refusal {
    /// The CONNACK code for `version`.
    pub fn connack_code(&self, version: Version) -> u8 {
        match (self, version) {
            (Refusal::BadCredentials(_), Version::V5) => reason::BAD_USER_NAME_OR_PASSWORD,
            (Refusal::BadCredentials(_), Version::V311) => return_code::BAD_USERNAME_OR_PASSWORD,
            (Refusal::NotAuthorized(_), Version::V5) => reason::NOT_AUTHORIZED,
            (Refusal::NotAuthorized(_), Version::V311) => return_code::NOT_AUTHORIZED,
            (Refusal::Unavailable(_), Version::V5) => reason::SERVER_UNAVAILABLE,
            (Refusal::Unavailable(_), Version::V311) => return_code::SERVER_UNAVAILABLE,
        }
    }

    /// What to log.
    pub fn why(&self) -> &str {
        match self {
            Refusal::BadCredentials(w) | Refusal::NotAuthorized(w) | Refusal::Unavailable(w) => w,
        }
    }
}

/// One method's answer.
enum Verdict {
    Allow(Identity),
    Deny(Refusal),
    /// Not for this method (no certificate, unknown user, not a JWT).
    Pass,
}

/// The configured methods and ACL, shared by every connection.
pub struct Authenticator {
    methods: Vec<AuthMethod>,
    cert_identity: CertIdentity,
    password: Option<Arc<PasswordFile>>,
    jwt: Option<Arc<JwtVerifier>>,
    jwt_leeway_s: u64,
    /// The HTTP hook, when it is a method or authorizes topics.
    pub hook: Option<Arc<HttpHook>>,
    on_error: OnError,
    /// Ask the hook about each PUBLISH topic.
    pub hook_publish: bool,
    /// Ask the hook about each SUBSCRIBE filter.
    pub hook_subscribe: bool,
    /// Topic rules.
    pub acl: Acl,
}

impl Authenticator {
    /// Loads the credential files and builds the hook client.
    pub fn new(cfg: &AuthConfig) -> Result<Authenticator, AuthError> {
        let uses = |m: AuthMethod| cfg.methods.contains(&m);
        let password = if uses(AuthMethod::Password) {
            let file = PasswordFile::load(&cfg.password.file)?;
            tracing::info!(file = %cfg.password.file.display(), users = file.len(), "password file loaded");
            Some(Arc::new(file))
        } else {
            None
        };
        let jwt = if uses(AuthMethod::Jwt) {
            Some(Arc::new(JwtVerifier::load(&cfg.jwt)?))
        } else {
            None
        };
        let h = &cfg.http;
        let hook = if uses(AuthMethod::Http) || h.check_publish || h.check_subscribe {
            Some(Arc::new(HttpHook::new(h)?))
        } else {
            None
        };
        Ok(Authenticator {
            methods: cfg.methods.clone(),
            cert_identity: cfg.certificate.identity,
            password,
            jwt,
            jwt_leeway_s: cfg.jwt.leeway_s,
            hook,
            on_error: h.on_error,
            hook_publish: h.check_publish,
            hook_subscribe: h.check_subscribe,
            acl: Acl::new(&cfg.acl, cfg.enabled()),
        })
    }

    /// True when devices must authenticate.
    pub fn enabled(&self) -> bool {
        !self.methods.is_empty()
    }

    /// Re-reads the password and JWT key files if they changed (errors are
    /// logged by the loaders, and the old contents stay in force).
    pub fn reload_files(&self) {
        if let Some(p) = &self.password {
            let _ = p.reload_if_changed();
        }
        if let Some(j) = &self.jwt {
            let _ = j.reload_if_changed();
        }
    }

    /// Runs the methods in order. With authentication off, the device id is
    /// the client id.
    pub async fn authenticate(&self, info: &ConnectInfo<'_>) -> Result<Identity, Refusal> {
        if self.methods.is_empty() {
            return Ok(Identity {
                device_id: info.client_id.to_owned(),
                method: "none",
                expires_at: None,
            });
        }
        for method in &self.methods {
            let label = method_label(*method);
            let verdict = match method {
                AuthMethod::Certificate => self.by_certificate(info),
                AuthMethod::Password => self.by_password(info).await,
                AuthMethod::Jwt => self.by_jwt(info),
                AuthMethod::Http => self.by_hook(info).await,
            };
            match verdict {
                Verdict::Pass => continue,
                Verdict::Allow(id) => {
                    if !identity::usable(&id.device_id) {
                        metrics::counter!(m::AUTH_DECISIONS, "method" => label, "result" => "deny")
                            .increment(1);
                        return Err(Refusal::NotAuthorized(format!(
                            "{label}: device id {:?} is empty or has control characters",
                            id.device_id
                        )));
                    }
                    metrics::counter!(m::AUTH_DECISIONS, "method" => label, "result" => "allow")
                        .increment(1);
                    return Ok(id);
                }
                Verdict::Deny(r) => {
                    let result = if matches!(r, Refusal::Unavailable(_)) {
                        "error"
                    } else {
                        "deny"
                    };
                    metrics::counter!(m::AUTH_DECISIONS, "method" => label, "result" => result)
                        .increment(1);
                    return Err(r);
                }
            }
        }
        metrics::counter!(m::AUTH_DECISIONS, "method" => "none", "result" => "deny").increment(1);
        let why = "no authentication method recognised the client".to_owned();
        Err(if info.username.is_some() || info.password.is_some() {
            Refusal::BadCredentials(why)
        } else {
            Refusal::NotAuthorized(why)
        })
    }

    fn by_certificate(&self, info: &ConnectInfo<'_>) -> Verdict {
        let Some(der) = info.peer_cert else {
            // TLS terminated by a trusted balancer that verified the certificate.
            return match info.proxied_cn {
                Some(cn) => Verdict::Allow(Identity {
                    device_id: cn.to_owned(),
                    method: "certificate",
                    expires_at: None,
                }),
                None => Verdict::Pass,
            };
        };
        match identity::device_id(der, self.cert_identity) {
            Ok(device_id) => Verdict::Allow(Identity {
                device_id,
                method: "certificate",
                expires_at: None,
            }),
            Err(e) => Verdict::Deny(Refusal::NotAuthorized(e.to_string())),
        }
    }

    async fn by_password(&self, info: &ConnectInfo<'_>) -> Verdict {
        let (Some(file), Some(user)) = (&self.password, info.username) else {
            return Verdict::Pass;
        };
        let Some(password) = info.password else {
            // A known user without a password is refused, with no Argon2 run
            // to find that out; an unknown one passes on.
            return if file.has_user(user) {
                Verdict::Deny(Refusal::BadCredentials(format!(
                    "user {user:?} sent no password"
                )))
            } else {
                Verdict::Pass
            };
        };
        match file.verify(user, password).await {
            PasswordCheck::UnknownUser => Verdict::Pass,
            PasswordCheck::Mismatch => Verdict::Deny(Refusal::BadCredentials(format!(
                "wrong password for user {user:?}"
            ))),
            PasswordCheck::Ok => Verdict::Allow(Identity {
                device_id: user.to_owned(),
                method: "password",
                expires_at: None,
            }),
        }
    }

    fn by_jwt(&self, info: &ConnectInfo<'_>) -> Verdict {
        let (Some(verifier), Some(password)) = (&self.jwt, info.password) else {
            return Verdict::Pass;
        };
        if !JwtVerifier::looks_like_jwt(password) {
            return Verdict::Pass;
        }
        // looks_like_jwt accepted it, so it is ASCII.
        let token = String::from_utf8_lossy(password);
        match verifier.verify(&token) {
            Ok(claims) => Verdict::Allow(Identity {
                device_id: claims.device_id,
                method: "jwt",
                // The skew allowed at CONNECT is allowed on the live connection too.
                expires_at: Some(claims.expires_at.saturating_add(self.jwt_leeway_s)),
            }),
            Err(e) => Verdict::Deny(Refusal::BadCredentials(format!("JWT refused: {e}"))),
        }
    }

    async fn by_hook(&self, info: &ConnectInfo<'_>) -> Verdict {
        let Some(hook) = &self.hook else {
            return Verdict::Pass;
        };
        let peer = info.peer.to_string();
        let req = HookRequest {
            action: HookAction::Connect,
            client_id: info.client_id,
            username: info.username,
            password: info.password,
            device_id: None,
            peer: &peer,
            topic: None,
        };
        let fallback = || info.username.unwrap_or(info.client_id).to_owned();
        match hook.check(&req).await {
            HookVerdict::Allow { device_id } => Verdict::Allow(Identity {
                device_id: device_id.unwrap_or_else(fallback),
                method: "http",
                expires_at: None,
            }),
            HookVerdict::Deny { reason } => Verdict::Deny(Refusal::BadCredentials(format!(
                "auth service denied: {}",
                reason.as_deref().unwrap_or("no reason given")
            ))),
            HookVerdict::Unavailable(why) => match self.on_error {
                OnError::Deny => Verdict::Deny(Refusal::Unavailable(format!(
                    "auth service unavailable ({why}); auth.http.on_error = \"deny\""
                ))),
                OnError::Allow => {
                    tracing::warn!(%why, "auth service unavailable; letting the client in (auth.http.on_error = \"allow\")");
                    Verdict::Allow(Identity {
                        device_id: fallback(),
                        method: "http",
                        expires_at: None,
                    })
                }
            },
        }
    }

    /// What a hook outage means for a topic question.
    pub fn on_hook_error(&self) -> OnError {
        self.on_error
    }
}

fn method_label(m: AuthMethod) -> &'static str {
    match m {
        AuthMethod::Certificate => "certificate",
        AuthMethod::Password => "password",
        AuthMethod::Jwt => "jwt",
        AuthMethod::Http => "http",
    }
}
