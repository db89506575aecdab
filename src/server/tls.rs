//! TLS for the MQTT listener: the rustls server configuration (TLS 1.2 and
//! 1.3 only, ring's AEAD suites with forward secrecy), optional client
//! certificate verification against a CA bundle and CRLs (mTLS), reloading
//! of the certificate, key, CA and CRL files when they change
//! ([`TlsReloader`]), and development certificates generated with rcgen when
//! the configured files are missing and the config allows it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use std::sync::RwLock;

use rustls::pki_types::{CertificateDer, CertificateRevocationListDer, PrivateKeyDer};
use rustls::server::WebPkiClientVerifier;
use rustls::{RootCertStore, ServerConfig};

use super::config::{ClientAuth, TlsListenerConfig};
use crate::auth::watch::Reloader;

/// Why the TLS listener cannot be set up.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The certificate or key file is missing and generation is off.
    #[error("TLS certificate {cert} or key {key} not found (set listeners.tls.generate_dev_certs = true to generate development ones)")]
    Missing {
        /// Configured certificate path.
        cert: PathBuf,
        /// Configured key path.
        key: PathBuf,
    },
    /// Reading or writing a file failed.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: PathBuf,
        /// Why.
        source: io::Error,
    },
    /// The PEM holds no certificate or no key.
    #[error("{0}: no PEM certificate or private key found")]
    Empty(PathBuf),
    /// rustls refused the certificate/key pair.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    /// The client CA bundle or CRL file cannot be used.
    #[error("{path}: {reason}")]
    ClientVerifier {
        /// The CA or CRL file.
        path: PathBuf,
        /// Why.
        reason: String,
    },
    /// Certificate generation failed.
    #[error("generating development certificates: {0}")]
    Generate(#[from] rcgen::Error),
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> TlsError + '_ {
    move |source| TlsError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Builds the rustls server configuration, generating development
/// certificates first if the files are missing and `generate_dev_certs` is set.
pub fn server_config(cfg: &TlsListenerConfig) -> Result<Arc<ServerConfig>, TlsError> {
    if !cfg.cert_path.exists() || !cfg.key_path.exists() {
        if !cfg.generate_dev_certs {
            return Err(TlsError::Missing {
                cert: cfg.cert_path.clone(),
                key: cfg.key_path.clone(),
            });
        }
        let ca = generate_dev_certs(&cfg.cert_path, &cfg.key_path)?;
        tracing::warn!(
            ca = %ca.display(),
            cert = %cfg.cert_path.display(),
            key = %cfg.key_path.display(),
            "generated development TLS certificates; clients must trust the CA file; do not use in production"
        );
    }
    build(cfg)
}

/// Builds the configuration from the files as they are now.
fn build(cfg: &TlsListenerConfig) -> Result<Arc<ServerConfig>, TlsError> {
    let certs = load_certs(&cfg.cert_path)?;
    let key = load_key(&cfg.key_path)?;
    // ring's default suites: TLS 1.3 AES-GCM / ChaCha20-Poly1305 and TLS 1.2
    // ECDHE with AEAD only; no CBC, no RSA key exchange, nothing below 1.2.
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = ServerConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?;
    let config = match cfg.client_auth {
        ClientAuth::None => builder.with_no_client_auth(),
        mode => builder.with_client_cert_verifier(client_verifier(cfg, mode, provider)?),
    }
    .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
}

fn client_verifier(
    cfg: &TlsListenerConfig,
    mode: ClientAuth,
    provider: Arc<rustls::crypto::CryptoProvider>,
) -> Result<Arc<dyn rustls::server::danger::ClientCertVerifier>, TlsError> {
    let ca_path = &cfg.client_ca_path;
    let mut roots = RootCertStore::empty();
    for cert in load_certs(ca_path)? {
        roots.add(cert).map_err(|e| TlsError::ClientVerifier {
            path: ca_path.clone(),
            reason: format!("not a usable CA certificate: {e}"),
        })?;
    }
    let mut builder = WebPkiClientVerifier::builder_with_provider(Arc::new(roots), provider);
    if !cfg.crl_path.as_os_str().is_empty() {
        let pem = fs::read(&cfg.crl_path).map_err(io_err(&cfg.crl_path))?;
        let crls = rustls_pemfile::crls(&mut pem.as_slice())
            .collect::<Result<Vec<CertificateRevocationListDer<'static>>, _>>()
            .map_err(io_err(&cfg.crl_path))?;
        if crls.is_empty() {
            return Err(TlsError::ClientVerifier {
                path: cfg.crl_path.clone(),
                reason: "no PEM X509 CRL found".into(),
            });
        }
        builder = builder.with_crls(crls);
    }
    if mode == ClientAuth::Optional {
        builder = builder.allow_unauthenticated();
    }
    builder.build().map_err(|e| TlsError::ClientVerifier {
        path: ca_path.clone(),
        reason: e.to_string(),
    })
}

/// The live TLS configuration: new handshakes use whatever was loaded last;
/// [`TlsReloader::reload_if_changed`] swaps in a new one when the files
/// change, and keeps the old one (logging why) when the new files are bad.
pub struct TlsReloader {
    cfg: TlsListenerConfig,
    current: RwLock<Arc<ServerConfig>>,
    reloader: Reloader,
}

impl TlsReloader {
    /// Loads the configuration (generating development certificates if
    /// allowed and missing).
    pub fn new(cfg: &TlsListenerConfig) -> Result<TlsReloader, TlsError> {
        let config = server_config(cfg)?;
        Ok(TlsReloader {
            reloader: Reloader::new("tls", watched(cfg)),
            cfg: cfg.clone(),
            current: RwLock::new(config),
        })
    }

    /// The configuration for the next handshake.
    pub fn config(&self) -> Arc<ServerConfig> {
        // A poisoned lock still holds a valid configuration: a panic cannot leave it half-written.
        self.current
            .read()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Rebuilds the configuration if any of its files changed. `Ok(true)`:
    /// new handshakes use the new files; `Err`: they keep using the old ones.
    pub fn reload_if_changed(&self) -> Result<bool, TlsError> {
        let apply = |config: Arc<ServerConfig>| {
            *self.current.write().unwrap_or_else(|e| e.into_inner()) = config;
            tracing::info!(cert = %self.cfg.cert_path.display(), "TLS certificate files changed; new handshakes use them");
        };
        self.reloader
            .reload_if_changed(|| build(&self.cfg), apply)
            .inspect_err(|e| {
                tracing::error!(error = %e, "TLS certificate files changed but cannot be loaded; keeping the previous ones")
            })
    }
}

fn watched(cfg: &TlsListenerConfig) -> Vec<PathBuf> {
    vec![
        cfg.cert_path.clone(),
        cfg.key_path.clone(),
        cfg.client_ca_path.clone(),
        cfg.crl_path.clone(),
    ]
}

fn load_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let pem = fs::read(path).map_err(io_err(path))?;
    let certs = rustls_pemfile::certs(&mut pem.as_slice())
        .collect::<Result<Vec<_>, _>>()
        .map_err(io_err(path))?;
    if certs.is_empty() {
        return Err(TlsError::Empty(path.to_owned()));
    }
    Ok(certs)
}

fn load_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    let pem = fs::read(path).map_err(io_err(path))?;
    rustls_pemfile::private_key(&mut pem.as_slice())
        .map_err(io_err(path))?
        .ok_or_else(|| TlsError::Empty(path.to_owned()))
}

/// Generates a development CA (`ca.crt`/`ca.key` beside the certificate) and
/// a server certificate for `localhost`, `127.0.0.1` and `::1` signed by it.
/// Returns the CA certificate's path. Key files are written with mode 0600.
pub fn generate_dev_certs(cert_path: &Path, key_path: &Path) -> Result<PathBuf, TlsError> {
    use rcgen::{BasicConstraints, CertificateParams, DnType, IsCa, KeyPair, KeyUsagePurpose};

    let dir = cert_path.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(dir).map_err(io_err(dir))?;
    let ca_cert_path = dir.join("ca.crt");
    let ca_key_path = dir.join("ca.key");

    let mut ca_params = CertificateParams::new(Vec::<String>::new())?;
    ca_params
        .distinguished_name
        .push(DnType::CommonName, "mqtt-kafka-proxy development CA");
    ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca_params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca_params.self_signed(&ca_key)?;

    let mut params = CertificateParams::new(vec![
        "localhost".to_string(),
        "127.0.0.1".to_string(),
        "::1".to_string(),
    ])?;
    params
        .distinguished_name
        .push(DnType::CommonName, "mqtt-kafka-proxy development server");
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &ca_cert, &ca_key)?;

    write_file(&ca_cert_path, ca_cert.pem().as_bytes(), false)?;
    write_file(&ca_key_path, ca_key.serialize_pem().as_bytes(), true)?;
    write_file(cert_path, cert.pem().as_bytes(), false)?;
    write_file(key_path, key.serialize_pem().as_bytes(), true)?;
    Ok(ca_cert_path)
}

fn write_file(path: &Path, data: &[u8], private: bool) -> Result<(), TlsError> {
    use std::io::Write;
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    if private {
        use std::os::unix::fs::OpenOptionsExt;
        opts.mode(0o600);
    }
    #[cfg(not(unix))]
    let _ = private;
    let mut f = opts.open(path).map_err(io_err(path))?;
    f.write_all(data).map_err(io_err(path))
}
