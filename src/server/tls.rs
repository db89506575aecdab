//! TLS for the MQTT listener: the rustls server configuration, built once at
//! start-up (TLS 1.2 and 1.3 only), and development certificates generated
//! with rcgen when the configured files are missing and the config allows it.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::ServerConfig;

use crate::config::TlsListenerConfig;

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
    let certs = load_certs(&cfg.cert_path)?;
    let key = load_key(&cfg.key_path)?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13, &rustls::version::TLS12])?
        .with_no_client_auth()
        .with_single_cert(certs, key)?;
    Ok(Arc::new(config))
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
