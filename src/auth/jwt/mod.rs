//! JWT authentication: a device puts a signed token in the CONNECT password,
//! and [`JwtVerifier`] checks it against the configured keys — an HS256
//! secret (`secret_file`) and/or RS256 / ES256 public keys (`key_file`: one
//! PEM key or certificate, or a JWKS document). It sits between the
//! [`Authenticator`](super) and the token: the authenticator asks
//! [`JwtVerifier::looks_like_jwt`] whether the method applies, then
//! [`JwtVerifier::verify`] yields the device id and the `exp` at which the
//! connection must end. Key files reload when they change ([`super::watch`]).
//!
//! Algorithm confusion is shut out by construction: the header's `alg` must
//! be in the configured list, and it picks a key *kind* — HS256 only ever uses
//! the secret file, RS256 only RSA keys, ES256 only P-256 keys — so a public
//! key can never be used as an HMAC secret, and `none` is never accepted.
//! Key files are read in `keys.rs`.

mod keys;

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use base64::engine::general_purpose::URL_SAFE_NO_PAD;
use base64::Engine;
use jsonwebtoken::errors::ErrorKind;
use jsonwebtoken::{Algorithm, Validation};
use serde_json::{Map, Value};

use self::keys::KeySet;
use crate::auth::config::JwtAuthConfig;
use crate::auth::watch::Reloader;

/// Largest accepted `leeway_s`. The clock-skew allowance is subtracted from
/// the current time inside `jsonwebtoken`, so an absurd value would underflow;
/// a day is already far beyond any real skew.
const MAX_LEEWAY_S: u64 = 86_400;

/// Why keys could not be loaded, or why a token was refused. The `verify`
/// refusals say what was wrong with the token; they never carry key material.
#[derive(Debug, thiserror::Error)]
pub enum JwtError {
    /// A key or secret file could not be read.
    #[error("cannot read jwt key file {path}: {source}")]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O failure.
        source: std::io::Error,
    },
    /// A key or secret file was read but holds no usable key.
    #[error("bad jwt key file {path}: {reason}")]
    BadKey {
        /// The file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    /// The JWT settings themselves cannot work (no key files, unknown
    /// algorithm name, leeway out of range).
    #[error("jwt configuration: {0}")]
    Config(String),
    /// Keys loaded, but none serves an allowed algorithm, so no token could
    /// ever pass.
    #[error("no loaded jwt key serves an allowed algorithm ({0})")]
    NoUsableKey(String),
    /// The token is not a well-formed JWS compact serialization.
    #[error("malformed token: {0}")]
    Malformed(String),
    /// The token names a `kid` the key set does not hold for its algorithm.
    #[error("no key with kid {0:?} for the token's algorithm")]
    UnknownKey(String),
    /// The token has no `kid` and several keys could verify it.
    #[error("token has no kid and {0} keys could verify it")]
    KeyIdRequired(usize),
    /// The token's algorithm is allowed but no key of that kind is loaded
    /// (e.g. HS256 without `secret_file`).
    #[error("no key configured for {0}")]
    NoKey(String),
    /// The token's `alg` is not in the configured list (`none` never is).
    #[error("algorithm {0:?} is not allowed")]
    AlgorithmNotAllowed(String),
    /// `exp` is in the past (beyond the leeway).
    #[error("token has expired")]
    Expired,
    /// `nbf` is in the future (beyond the leeway).
    #[error("token is not valid yet (nbf in the future)")]
    NotYetValid,
    /// `iss` is not the configured issuer.
    #[error("token issuer is not the configured one")]
    WrongIssuer,
    /// `aud` does not contain the configured audience.
    #[error("token audience does not include the configured one")]
    WrongAudience,
    /// A required claim is absent or not of a usable type (`exp`, `iss`,
    /// `aud` when configured, the device id claim).
    #[error("token has no usable {0:?} claim")]
    MissingClaim(String),
    /// The device id claim is present but cannot be a device id.
    #[error("token claim {claim:?} {reason}")]
    BadClaim {
        /// The claim name.
        claim: String,
        /// What is wrong with its value.
        reason: String,
    },
    /// The signature does not match the header and payload under the key.
    #[error("token signature does not verify")]
    BadSignature,
}

impl JwtError {
    /// The file a load error is about, for the log line.
    fn path(&self) -> Option<&Path> {
        match self {
            JwtError::Read { path, .. } | JwtError::BadKey { path, .. } => Some(path),
            _ => None,
        }
    }
}

/// Verified token facts the proxy needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Claims {
    /// The device id, from the configured claim (a string claim; a number is
    /// taken as its decimal text; other types refused).
    pub device_id: String,
    /// `exp`, when the connection must end (seconds since the Unix epoch).
    /// Tokens without `exp` are refused.
    pub expires_at: u64,
}

/// The algorithms this proxy verifies. Each maps to exactly one key kind.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Alg {
    Hs256,
    Rs256,
    Es256,
}

impl Alg {
    fn parse(name: &str) -> Option<Alg> {
        match name {
            "HS256" => Some(Alg::Hs256),
            "RS256" => Some(Alg::Rs256),
            "ES256" => Some(Alg::Es256),
            _ => None,
        }
    }

    fn name(self) -> &'static str {
        match self {
            Alg::Hs256 => "HS256",
            Alg::Rs256 => "RS256",
            Alg::Es256 => "ES256",
        }
    }

    fn library(self) -> Algorithm {
        match self {
            Alg::Hs256 => Algorithm::HS256,
            Alg::Rs256 => Algorithm::RS256,
            Alg::Es256 => Algorithm::ES256,
        }
    }
}

/// keys swap atomically on reload while verifications continue.
pub struct JwtVerifier {
    key_file: PathBuf,
    secret_file: PathBuf,
    /// One prepared validation per allowed algorithm; an algorithm absent
    /// here is refused before any key is looked at.
    validations: Vec<(Alg, Validation)>,
    device_id_claim: String,
    /// Current keys. The lock is held only to clone or replace the `Arc`,
    /// never while a signature is checked.
    keys: RwLock<Arc<KeySet>>,
    /// Versions of the key files last loaded.
    reloader: Reloader,
}

impl fmt::Debug for JwtVerifier {
    // By hand: the key set holds the HS256 secret, which must not reach logs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let algorithms: Vec<&str> = self.validations.iter().map(|(a, _)| a.name()).collect();
        f.debug_struct("JwtVerifier")
            .field("key_file", &self.key_file)
            .field("secret_file", &self.secret_file)
            .field("algorithms", &algorithms)
            .field("device_id_claim", &self.device_id_claim)
            .finish_non_exhaustive()
    }
}

impl JwtVerifier {
    /// Loads keys: `key_file` is either a PEM public key (RSA "PUBLIC KEY" /
    /// "RSA PUBLIC KEY" → RS256, EC P-256 "PUBLIC KEY" → ES256), a PEM
    /// certificate (its public key is used; the certificate is not otherwise
    /// checked), or a JWKS JSON document (first non-space character `{`; keys
    /// selected by the token's `kid`; a token without `kid` uses the one key
    /// usable for its algorithm, if there is exactly one). `secret_file` is the
    /// HS256 secret (raw bytes, one trailing "\n" or "\r\n" stripped; empty
    /// refused). Either may be empty but not both, and at least one allowed
    /// algorithm must have a key.
    pub fn load(cfg: &JwtAuthConfig) -> Result<JwtVerifier, JwtError> {
        if cfg.key_file.as_os_str().is_empty() && cfg.secret_file.as_os_str().is_empty() {
            return Err(JwtError::Config(
                "key_file or secret_file must be set".to_string(),
            ));
        }
        if cfg.leeway_s > MAX_LEEWAY_S {
            return Err(JwtError::Config(format!(
                "leeway_s {} is more than {MAX_LEEWAY_S}",
                cfg.leeway_s
            )));
        }
        if cfg.device_id_claim.is_empty() {
            return Err(JwtError::Config("device_id_claim is empty".to_string()));
        }
        let mut validations = Vec::new();
        for name in &cfg.algorithms {
            let alg = Alg::parse(name).ok_or_else(|| {
                JwtError::Config(format!(
                    "algorithm {name:?} is not one of HS256, RS256, ES256"
                ))
            })?;
            if !validations.iter().any(|(a, _)| *a == alg) {
                validations.push((alg, validation(alg, cfg)));
            }
        }
        if validations.is_empty() {
            return Err(JwtError::Config("algorithms is empty".to_string()));
        }
        // Stamp before reading, so a change during the read shows on the next poll.
        let reloader = Reloader::new("jwt_keys", [cfg.key_file.clone(), cfg.secret_file.clone()]);
        let verifier = JwtVerifier {
            key_file: cfg.key_file.clone(),
            secret_file: cfg.secret_file.clone(),
            validations,
            device_id_claim: cfg.device_id_claim.clone(),
            keys: RwLock::new(Arc::new(KeySet::default())),
            reloader,
        };
        let keys = verifier.load_keys()?;
        *verifier.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
        Ok(verifier)
    }

    /// Re-reads `key_file` / `secret_file` when [`Reloader`] says they
    /// changed. `Ok(true)`: new tokens are checked against the new keys;
    /// `Err`: the old keys stay (logged with the file's name), and the same
    /// broken version is not retried until the file changes again.
    pub fn reload_if_changed(&self) -> Result<bool, JwtError> {
        let apply = |keys: KeySet| {
            // A poisoned lock still holds a whole `Arc`: a panic cannot leave it half-written.
            *self.keys.write().unwrap_or_else(|e| e.into_inner()) = Arc::new(keys);
            tracing::info!(
                key_file = %self.key_file.display(),
                secret_file = %self.secret_file.display(),
                "JWT key files changed; new tokens are checked against them"
            );
        };
        self.reloader
            .reload_if_changed(|| self.load_keys(), apply)
            .inspect_err(|e| {
                let file = e.path().unwrap_or(&self.key_file).display().to_string();
                tracing::error!(%file, error = %e, "JWT key file changed but cannot be loaded; keeping the previous keys");
            })
    }

    /// Cheap syntactic check: three base64url segments separated by '.', the
    /// first decoding to a JSON object with a string "alg". Decides whether
    /// this method applies to a password at all; proves nothing.
    pub fn looks_like_jwt(password: &[u8]) -> bool {
        let mut parts = password.split(|&b| b == b'.');
        let (Some(header), Some(payload), Some(signature), None) =
            (parts.next(), parts.next(), parts.next(), parts.next())
        else {
            return false;
        };
        // The signature may be empty (an unsigned token is still a JWT, refused by `verify`).
        let b64url = |s: &[u8]| {
            s.iter()
                .all(|&b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
        };
        if header.is_empty() || payload.is_empty() || !b64url(payload) || !b64url(signature) {
            return false;
        }
        decode_header(header).is_some_and(|h| h.get("alg").is_some_and(Value::is_string))
    }

    /// Verifies the signature (only algorithms in `cfg.algorithms` and with a
    /// key of the matching kind), `exp` (required), `nbf` (if present), `iss`
    /// / `aud` when configured (`aud` may be a string or an array in the
    /// token; a configured one must then be present), all with
    /// `cfg.leeway_s`; returns the claims.
    pub fn verify(&self, token: &str) -> Result<Claims, JwtError> {
        let (alg_name, kid) = parse_header(token)?;
        let Some((alg, validation)) = self.validations.iter().find(|(a, _)| a.name() == alg_name)
        else {
            return Err(JwtError::AlgorithmNotAllowed(alg_name));
        };
        // Clone the Arc out: no lock is held while the signature is checked.
        let keys = Arc::clone(&self.keys.read().unwrap_or_else(|e| e.into_inner()));
        let key = keys.select(*alg, kid.as_deref())?;
        let data = jsonwebtoken::decode::<Map<String, Value>>(token, key, validation)
            .map_err(|e| refusal(e, *alg))?;
        claims_from(&data.claims, &self.device_id_claim)
    }

    fn load_keys(&self) -> Result<KeySet, JwtError> {
        let keys = KeySet::load(&self.key_file, &self.secret_file)?;
        if !self.validations.iter().any(|(a, _)| keys.serves(*a)) {
            let names: Vec<&str> = self.validations.iter().map(|(a, _)| a.name()).collect();
            return Err(JwtError::NoUsableKey(names.join(", ")));
        }
        Ok(keys)
    }
}

fn validation(alg: Alg, cfg: &JwtAuthConfig) -> Validation {
    let mut v = Validation::new(alg.library());
    v.leeway = cfg.leeway_s;
    v.validate_exp = true;
    v.validate_nbf = true;
    // jsonwebtoken checks iss / aud only when present; a configured one must be there.
    let mut required = vec!["exp"];
    if !cfg.issuer.is_empty() {
        v.set_issuer(&[&cfg.issuer]);
        required.push("iss");
    }
    if cfg.audience.is_empty() {
        // Otherwise jsonwebtoken refuses every token that carries an `aud`.
        v.validate_aud = false;
    } else {
        v.set_audience(&[&cfg.audience]);
        required.push("aud");
    }
    v.set_required_spec_claims(&required);
    v
}

fn decode_header(segment: &[u8]) -> Option<Map<String, Value>> {
    let json = URL_SAFE_NO_PAD.decode(segment).ok()?;
    match serde_json::from_slice(&json).ok()? {
        Value::Object(map) => Some(map),
        _ => None,
    }
}

/// The header's `alg` and `kid`, read by hand so `none` and unknown names get
/// a clear refusal rather than a parse error.
fn parse_header(token: &str) -> Result<(String, Option<String>), JwtError> {
    let malformed = |why: &str| JwtError::Malformed(why.to_string());
    let mut parts = token.split('.');
    let (Some(header), Some(_), Some(_), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed("expected three dot-separated segments"));
    };
    let header = decode_header(header.as_bytes())
        .ok_or_else(|| malformed("header is not a base64url JSON object"))?;
    // RFC 7515 §4.1.11: extensions listed in `crit` must be understood; none are.
    if header.contains_key("crit") {
        return Err(malformed(
            "header lists crit extensions, which are not supported",
        ));
    }
    let alg = match header.get("alg") {
        Some(Value::String(alg)) => alg.clone(),
        _ => return Err(malformed("header has no alg string")),
    };
    let kid = match header.get("kid") {
        None => None,
        Some(Value::String(kid)) => Some(kid.clone()),
        Some(_) => return Err(malformed("header kid is not a string")),
    };
    Ok((alg, kid))
}

fn refusal(e: jsonwebtoken::errors::Error, alg: Alg) -> JwtError {
    match e.kind() {
        ErrorKind::InvalidSignature => JwtError::BadSignature,
        ErrorKind::ExpiredSignature => JwtError::Expired,
        ErrorKind::ImmatureSignature => JwtError::NotYetValid,
        ErrorKind::InvalidIssuer => JwtError::WrongIssuer,
        ErrorKind::InvalidAudience => JwtError::WrongAudience,
        ErrorKind::MissingRequiredClaim(claim) => JwtError::MissingClaim(claim.clone()),
        ErrorKind::InvalidAlgorithm => JwtError::AlgorithmNotAllowed(alg.name().to_string()),
        _ => JwtError::Malformed(e.to_string()),
    }
}

/// A NumericDate as jsonwebtoken reads it (integer, or a float rounded).
fn numeric_date(v: &Value) -> Option<u64> {
    v.as_u64().or_else(|| {
        v.as_f64()
            .filter(|f| f.is_finite() && *f >= 0.0 && *f < u64::MAX as f64)
            .map(|f| f.round() as u64)
    })
}

fn claims_from(claims: &Map<String, Value>, device_claim: &str) -> Result<Claims, JwtError> {
    let bad = |reason: &str| JwtError::BadClaim {
        claim: device_claim.to_string(),
        reason: reason.to_string(),
    };
    let device_id = match claims.get(device_claim) {
        None | Some(Value::Null) => return Err(JwtError::MissingClaim(device_claim.to_string())),
        Some(Value::String(s)) if s.is_empty() => return Err(bad("is empty")),
        Some(Value::String(s)) => s.clone(),
        Some(Value::Number(n)) => match (n.as_u64(), n.as_i64()) {
            (Some(u), _) => u.to_string(),
            (None, Some(i)) => i.to_string(),
            _ => return Err(bad("is a number but not an integer")),
        },
        Some(_) => return Err(bad("is neither a string nor a number")),
    };
    let expires_at = claims
        .get("exp")
        .and_then(numeric_date)
        .ok_or_else(|| JwtError::MissingClaim("exp".to_string()))?;
    Ok(Claims {
        device_id,
        expires_at,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use jsonwebtoken::{EncodingKey, Header};
    use serde_json::json;
    use std::time::{SystemTime, UNIX_EPOCH};
    use x509_parser::pem::Pem;
    use x509_parser::prelude::FromDer;
    use x509_parser::public_key::RSAPublicKey;

    const RSA_PRIVATE: &str = include_str!("../../../tests/fixtures/jwt/test-only-rsa-private.pem");
    const RSA_PUBLIC: &str = include_str!("../../../tests/fixtures/jwt/test-only-rsa-public.pem");
    const RSA_PUBLIC_PKCS1: &str =
        include_str!("../../../tests/fixtures/jwt/test-only-rsa-public-pkcs1.pem");
    const SECRET: &[u8] = b"a-test-only-hs256-secret-of-32-bytes!";

    fn now() -> u64 {
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap()
            .as_secs()
    }

    /// Key files in a temp dir, plus a config pointing at them.
    struct Setup {
        dir: tempfile::TempDir,
        cfg: JwtAuthConfig,
    }

    impl Setup {
        fn new(key: Option<&[u8]>, secret: Option<&[u8]>) -> Setup {
            let dir = tempfile::tempdir().unwrap();
            let mut cfg = JwtAuthConfig {
                leeway_s: 0,
                ..JwtAuthConfig::default()
            };
            if let Some(key) = key {
                cfg.key_file = dir.path().join("keys");
                std::fs::write(&cfg.key_file, key).unwrap();
            }
            if let Some(secret) = secret {
                cfg.secret_file = dir.path().join("secret");
                std::fs::write(&cfg.secret_file, secret).unwrap();
            }
            Setup { dir, cfg }
        }

        fn verifier(&self) -> JwtVerifier {
            JwtVerifier::load(&self.cfg).unwrap()
        }
    }

    fn claims(sub: &str) -> Value {
        json!({ "sub": sub, "exp": now() + 600 })
    }

    fn sign(alg: Algorithm, kid: Option<&str>, key: &EncodingKey, claims: &Value) -> String {
        let mut header = Header::new(alg);
        header.kid = kid.map(str::to_string);
        jsonwebtoken::encode(&header, claims, key).unwrap()
    }

    fn hs(claims: &Value) -> String {
        sign(
            Algorithm::HS256,
            None,
            &EncodingKey::from_secret(SECRET),
            claims,
        )
    }

    fn rs(claims: &Value) -> String {
        let key = EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap();
        sign(Algorithm::RS256, None, &key, claims)
    }

    fn es(kp: &rcgen::KeyPair, kid: Option<&str>, claims: &Value) -> String {
        let key = EncodingKey::from_ec_pem(kp.serialize_pem().as_bytes()).unwrap();
        sign(Algorithm::ES256, kid, &key, claims)
    }

    fn b64(bytes: &[u8]) -> String {
        URL_SAFE_NO_PAD.encode(bytes)
    }

    fn ec_jwk(kp: &rcgen::KeyPair, kid: &str) -> Value {
        let point = kp.public_key_raw();
        assert_eq!(point.len(), 65);
        json!({ "kty": "EC", "crv": "P-256", "kid": kid, "use": "sig",
                "x": b64(&point[1..33]), "y": b64(&point[33..]) })
    }

    fn rsa_jwk(kid: &str) -> Value {
        let pem = Pem::iter_from_buffer(RSA_PUBLIC_PKCS1.as_bytes())
            .next()
            .unwrap()
            .unwrap();
        let (_, key) = RSAPublicKey::from_der(&pem.contents).unwrap();
        let n: Vec<u8> = key
            .modulus
            .iter()
            .copied()
            .skip_while(|&b| b == 0)
            .collect();
        json!({ "kty": "RSA", "kid": kid, "alg": "RS256", "n": b64(&n), "e": b64(key.exponent) })
    }

    #[test]
    fn verifier_is_send_and_sync() {
        fn check<T: Send + Sync>() {}
        check::<JwtVerifier>();
    }

    #[test]
    fn hs256_is_accepted_and_yields_the_claims() {
        for file in [
            SECRET.to_vec(),
            [SECRET, b"\n"].concat(),
            [SECRET, b"\r\n"].concat(),
        ] {
            let s = Setup::new(None, Some(&file));
            let exp = now() + 600;
            let token = hs(&json!({ "sub": "dev-1", "exp": exp }));
            let got = s.verifier().verify(&token).unwrap();
            assert_eq!(
                got,
                Claims {
                    device_id: "dev-1".into(),
                    expires_at: exp
                }
            );
        }
        // Only one line ending is stripped: the secret with "\n" is a different secret.
        let s = Setup::new(None, Some(&[SECRET, b"\n\n"].concat()));
        assert!(matches!(
            s.verifier().verify(&hs(&claims("d"))),
            Err(JwtError::BadSignature)
        ));
    }

    #[test]
    fn an_empty_secret_is_refused() {
        let s = Setup::new(None, Some(b"\r\n"));
        assert!(matches!(
            JwtVerifier::load(&s.cfg),
            Err(JwtError::BadKey { .. })
        ));
    }

    #[test]
    fn rs256_is_accepted_from_spki_and_pkcs1_pem() {
        for pem in [RSA_PUBLIC, RSA_PUBLIC_PKCS1] {
            let s = Setup::new(Some(pem.as_bytes()), None);
            let got = s.verifier().verify(&rs(&claims("dev-rsa"))).unwrap();
            assert_eq!(got.device_id, "dev-rsa");
        }
    }

    #[test]
    fn es256_is_accepted_from_a_public_key_and_a_certificate() {
        let kp = rcgen::KeyPair::generate().unwrap();
        let cert = rcgen::CertificateParams::new(vec!["issuer.test".to_string()])
            .unwrap()
            .self_signed(&kp)
            .unwrap();
        for pem in [kp.public_key_pem(), cert.pem()] {
            let s = Setup::new(Some(pem.as_bytes()), None);
            let got = s
                .verifier()
                .verify(&es(&kp, None, &claims("dev-ec")))
                .unwrap();
            assert_eq!(got.device_id, "dev-ec");
        }
    }

    #[test]
    fn key_files_that_cannot_serve_are_refused_at_load() {
        let p384 = rcgen::KeyPair::generate_for(&rcgen::PKCS_ECDSA_P384_SHA384).unwrap();
        let cases: Vec<(String, &str)> = vec![
            (RSA_PRIVATE.to_string(), "private key"),
            (p384.public_key_pem(), "P-256"),
            (format!("{RSA_PUBLIC}{RSA_PUBLIC}"), "2 keys"),
            ("not a key".to_string(), "no PEM"),
            ("{\"keys\": []}".to_string(), "no RS256 or ES256"),
            (
                "{\"keys\": [{\"kty\": \"oct\", \"k\": \"c2VjcmV0\"}]}".to_string(),
                "no RS256",
            ),
            ("{ not json".to_string(), "not a JSON"),
        ];
        for (file, expect) in cases {
            let s = Setup::new(Some(file.as_bytes()), None);
            match JwtVerifier::load(&s.cfg) {
                Err(e @ JwtError::BadKey { .. }) => {
                    assert!(e.to_string().contains(expect), "{e} lacks {expect:?}")
                }
                other => panic!("{expect}: got {other:?}"),
            }
        }
    }

    #[test]
    fn configurations_that_cannot_work_are_refused() {
        let s = Setup::new(None, None);
        assert!(matches!(
            JwtVerifier::load(&s.cfg),
            Err(JwtError::Config(_))
        ));
        let mut s = Setup::new(None, Some(SECRET));
        s.cfg.algorithms = vec!["RS256".into()];
        assert!(matches!(
            JwtVerifier::load(&s.cfg),
            Err(JwtError::NoUsableKey(_))
        ));
        s.cfg.algorithms = vec!["none".into()];
        assert!(matches!(
            JwtVerifier::load(&s.cfg),
            Err(JwtError::Config(_))
        ));
        s.cfg.algorithms = vec!["HS256".into()];
        s.cfg.leeway_s = u64::MAX;
        assert!(matches!(
            JwtVerifier::load(&s.cfg),
            Err(JwtError::Config(_))
        ));
        s.cfg.leeway_s = 0;
        s.cfg.secret_file = s.dir.path().join("missing");
        assert!(matches!(
            JwtVerifier::load(&s.cfg),
            Err(JwtError::Read { .. })
        ));
    }

    #[test]
    fn jwks_selects_the_key_by_kid() {
        let a = rcgen::KeyPair::generate().unwrap();
        let b = rcgen::KeyPair::generate().unwrap();
        let jwks = json!({ "keys": [
            ec_jwk(&a, "a"),
            ec_jwk(&b, "b"),
            rsa_jwk("r"),
            { "kty": "oct", "kid": "sym", "k": b64(SECRET) },
            { "kty": "EC", "crv": "P-256", "kid": "enc", "use": "enc", "x": "", "y": "" },
        ]});
        let s = Setup::new(Some(jwks.to_string().as_bytes()), None);
        let v = s.verifier();
        let c = claims("dev-jwks");
        assert_eq!(
            v.verify(&es(&a, Some("a"), &c)).unwrap().device_id,
            "dev-jwks"
        );
        assert_eq!(
            v.verify(&es(&b, Some("b"), &c)).unwrap().device_id,
            "dev-jwks"
        );
        assert!(matches!(
            v.verify(&es(&b, Some("a"), &c)),
            Err(JwtError::BadSignature)
        ));
        assert!(matches!(
            v.verify(&es(&a, Some("zz"), &c)),
            Err(JwtError::UnknownKey(k)) if k == "zz"
        ));
        assert!(matches!(
            v.verify(&es(&a, None, &c)),
            Err(JwtError::KeyIdRequired(2))
        ));
        // The RSA key is the only RS256 one: a token without kid finds it.
        assert!(v.verify(&rs(&c)).is_ok());
        // The symmetric JWK is never used for HS256.
        let hs_with_kid = sign(
            Algorithm::HS256,
            Some("sym"),
            &EncodingKey::from_secret(SECRET),
            &c,
        );
        assert!(matches!(
            v.verify(&hs_with_kid),
            Err(JwtError::NoKey(alg)) if alg == "HS256"
        ));
    }

    #[test]
    fn jwks_tolerates_padding_and_foreign_keys_but_not_broken_ones() {
        let kp = rcgen::KeyPair::generate().unwrap();
        let mut ec = ec_jwk(&kp, "padded");
        // 32 bytes are 43 base64url characters: one "=" pads them.
        ec["x"] = json!(format!("{}=", ec["x"].as_str().unwrap()));
        let mut rsa = rsa_jwk("zero");
        // A leading zero byte on the modulus, as some issuers write it.
        let n = URL_SAFE_NO_PAD.decode(rsa["n"].as_str().unwrap()).unwrap();
        rsa["n"] = json!(b64(&[&[0u8][..], &n].concat()));
        let jwks = json!({ "keys": [
            ec,
            rsa,
            { "kty": "XYZ", "kid": "future" },
            { "kty": "EC", "crv": "secp256k1", "kid": "k1", "x": "AA", "y": "AA" },
        ]});
        let v = Setup::new(Some(jwks.to_string().as_bytes()), None).verifier();
        let c = claims("dev");
        assert_eq!(
            v.verify(&es(&kp, Some("padded"), &c)).unwrap().device_id,
            "dev"
        );
        assert!(v.verify(&rs(&c)).is_ok());
        // A key of a kind the proxy verifies with, but broken: refused at
        // load, naming the key.
        let broken = json!({ "keys": [
            ec_jwk(&kp, "fine"),
            { "kty": "RSA", "kid": "half", "e": "AQAB" },
        ]});
        let s = Setup::new(Some(broken.to_string().as_bytes()), None);
        match JwtVerifier::load(&s.cfg) {
            Err(e @ JwtError::BadKey { .. }) => assert!(e.to_string().contains("\"half\""), "{e}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn time_claims_are_checked_with_leeway() {
        let mut s = Setup::new(None, Some(SECRET));
        let v = s.verifier();
        let t = now();
        assert!(matches!(
            v.verify(&hs(&json!({ "sub": "d", "exp": t - 100 }))),
            Err(JwtError::Expired)
        ));
        assert!(matches!(
            v.verify(&hs(&json!({ "sub": "d", "exp": t + 600, "nbf": t + 100 }))),
            Err(JwtError::NotYetValid)
        ));
        assert!(matches!(
            v.verify(&hs(&json!({ "sub": "d" }))),
            Err(JwtError::MissingClaim(c)) if c == "exp"
        ));
        assert!(matches!(
            v.verify(&hs(&json!({ "sub": "d", "exp": "tomorrow" }))),
            Err(JwtError::MissingClaim(c)) if c == "exp"
        ));
        s.cfg.leeway_s = 300;
        let v = s.verifier();
        assert!(v
            .verify(&hs(&json!({ "sub": "d", "exp": t - 100 })))
            .is_ok());
        assert!(v
            .verify(&hs(&json!({ "sub": "d", "exp": t + 600, "nbf": t + 100 })))
            .is_ok());
    }

    #[test]
    fn issuer_and_audience_are_checked_when_configured() {
        let mut s = Setup::new(None, Some(SECRET));
        s.cfg.issuer = "https://issuer.test".into();
        s.cfg.audience = "mqtt-proxy".into();
        let v = s.verifier();
        let exp = now() + 600;
        let token = |iss: Value, aud: Value| {
            let mut c = json!({ "sub": "d", "exp": exp });
            if !iss.is_null() {
                c["iss"] = iss;
            }
            if !aud.is_null() {
                c["aud"] = aud;
            }
            v.verify(&hs(&c))
        };
        let iss = json!("https://issuer.test");
        assert!(token(iss.clone(), json!("mqtt-proxy")).is_ok());
        assert!(token(iss.clone(), json!(["other", "mqtt-proxy"])).is_ok());
        assert!(matches!(
            token(json!("https://evil.test"), json!("mqtt-proxy")),
            Err(JwtError::WrongIssuer)
        ));
        assert!(matches!(
            token(Value::Null, json!("mqtt-proxy")),
            Err(JwtError::MissingClaim(c)) if c == "iss"
        ));
        assert!(matches!(
            token(iss.clone(), json!("other")),
            Err(JwtError::WrongAudience)
        ));
        assert!(matches!(
            token(iss.clone(), json!(["other", "more"])),
            Err(JwtError::WrongAudience)
        ));
        assert!(matches!(
            token(iss, Value::Null),
            Err(JwtError::MissingClaim(c)) if c == "aud"
        ));
        // Not configured: any iss / aud passes.
        let v = Setup::new(None, Some(SECRET)).verifier();
        let c = json!({ "sub": "d", "exp": exp, "iss": "x", "aud": ["y"] });
        assert!(v.verify(&hs(&c)).is_ok());
    }

    #[test]
    fn the_device_id_comes_from_the_configured_claim() {
        let mut s = Setup::new(None, Some(SECRET));
        s.cfg.device_id_claim = "device".into();
        let v = s.verifier();
        let exp = now() + 600;
        let with =
            |value: Value| v.verify(&hs(&json!({ "sub": "s", "exp": exp, "device": value })));
        assert_eq!(with(json!("dev-7")).unwrap().device_id, "dev-7");
        assert_eq!(with(json!(42)).unwrap().device_id, "42");
        assert_eq!(with(json!(-3)).unwrap().device_id, "-3");
        for refused in [json!(1.5), json!(true), json!(["a"]), json!({}), json!("")] {
            assert!(
                matches!(with(refused.clone()), Err(JwtError::BadClaim { .. })),
                "{refused}"
            );
        }
        assert!(matches!(
            v.verify(&hs(&json!({ "sub": "s", "exp": exp }))),
            Err(JwtError::MissingClaim(c)) if c == "device"
        ));
    }

    #[test]
    fn a_tampered_token_fails_its_signature() {
        let s = Setup::new(Some(RSA_PUBLIC.as_bytes()), Some(SECRET));
        let v = s.verifier();
        // Change a character in the middle of the signature (the last one
        // carries padding bits, whose change would be a base64 error instead).
        let token = rs(&claims("d"));
        let mid = token.rfind('.').unwrap() + 20;
        let mut bytes = token.into_bytes();
        bytes[mid] = if bytes[mid] == b'A' { b'B' } else { b'A' };
        let tampered = String::from_utf8(bytes).unwrap();
        assert!(matches!(v.verify(&tampered), Err(JwtError::BadSignature)));
        // Swap in another payload under the original signature.
        let good = hs(&claims("d"));
        let other = hs(&claims("admin"));
        let parts: Vec<&str> = good.split('.').collect();
        let swapped = format!(
            "{}.{}.{}",
            parts[0],
            other.split('.').nth(1).unwrap(),
            parts[2]
        );
        assert!(matches!(v.verify(&swapped), Err(JwtError::BadSignature)));
    }

    #[test]
    fn algorithms_outside_the_list_are_refused() {
        let mut s = Setup::new(Some(RSA_PUBLIC.as_bytes()), Some(SECRET));
        s.cfg.algorithms = vec!["RS256".into()];
        let v = s.verifier();
        assert!(v.verify(&rs(&claims("d"))).is_ok());
        assert!(matches!(
            v.verify(&hs(&claims("d"))),
            Err(JwtError::AlgorithmNotAllowed(a)) if a == "HS256"
        ));
        let other = sign(
            Algorithm::RS512,
            None,
            &EncodingKey::from_rsa_pem(RSA_PRIVATE.as_bytes()).unwrap(),
            &claims("d"),
        );
        assert!(matches!(
            v.verify(&other),
            Err(JwtError::AlgorithmNotAllowed(a)) if a == "RS512"
        ));
    }

    #[test]
    fn alg_none_is_never_accepted() {
        let v = Setup::new(Some(RSA_PUBLIC.as_bytes()), Some(SECRET)).verifier();
        let payload = b64(claims("d").to_string().as_bytes());
        for header in [r#"{"alg":"none","typ":"JWT"}"#, r#"{"alg":"None"}"#] {
            let header = b64(header.as_bytes());
            for token in [
                format!("{header}.{payload}."),
                format!("{header}.{payload}.c2ln"),
            ] {
                assert!(JwtVerifier::looks_like_jwt(token.as_bytes()));
                assert!(matches!(
                    v.verify(&token),
                    Err(JwtError::AlgorithmNotAllowed(_))
                ));
            }
        }
    }

    #[test]
    fn a_public_key_is_never_an_hmac_secret() {
        let token = sign(
            Algorithm::HS256,
            None,
            &EncodingKey::from_secret(RSA_PUBLIC.as_bytes()),
            &claims("d"),
        );
        // RSA key only: there is no HS256 key at all.
        let v = Setup::new(Some(RSA_PUBLIC.as_bytes()), None).verifier();
        assert!(matches!(
            v.verify(&token),
            Err(JwtError::NoKey(a)) if a == "HS256"
        ));
        // With a secret too, HS256 uses the secret and nothing else.
        let v = Setup::new(Some(RSA_PUBLIC.as_bytes()), Some(SECRET)).verifier();
        assert!(matches!(v.verify(&token), Err(JwtError::BadSignature)));
        // Nor does ES256 reach the RSA key.
        let kp = rcgen::KeyPair::generate().unwrap();
        assert!(matches!(
            v.verify(&es(&kp, None, &claims("d"))),
            Err(JwtError::NoKey(a)) if a == "ES256"
        ));
    }

    #[test]
    fn unusual_headers_are_malformed() {
        let v = Setup::new(None, Some(SECRET)).verifier();
        let payload = b64(claims("d").to_string().as_bytes());
        let crit = b64(br#"{"alg":"HS256","crit":["exp"],"exp":1}"#);
        for token in [
            "hunter2".to_string(),
            "a.b.c.d".to_string(),
            format!("{crit}.{payload}.c2ln"),
            format!("{}.{payload}.c2ln", b64(br#"{"alg":"HS256","kid":7}"#)),
            format!("{}.{payload}.c2ln", b64(b"[1]")),
        ] {
            assert!(
                matches!(v.verify(&token), Err(JwtError::Malformed(_))),
                "{token}"
            );
        }
    }

    #[test]
    fn looks_like_jwt_tells_tokens_from_passwords() {
        let token = hs(&claims("d"));
        assert!(JwtVerifier::looks_like_jwt(token.as_bytes()));
        let header = b64(br#"{"alg":"HS256"}"#);
        let cases: Vec<(Vec<u8>, bool)> = vec![
            (b"hunter2".to_vec(), false),
            (b"".to_vec(), false),
            (b"a.b.c".to_vec(), false),
            (b"correct.horse.battery".to_vec(), false),
            (format!("{header}.e30.c2ln").into_bytes(), true),
            (format!("{header}.e30.").into_bytes(), true),
            (format!("{header}..c2ln").into_bytes(), false),
            (format!("{header}.e30.c2ln.x").into_bytes(), false),
            (format!("{header}.e3=.c2ln").into_bytes(), false),
            (
                format!("{}.e30.c2ln", b64(br#"{"typ":"JWT"}"#)).into_bytes(),
                false,
            ),
            (
                format!("{}.e30.c2ln", b64(br#"{"alg":1}"#)).into_bytes(),
                false,
            ),
            (format!("{}.e30.c2ln", b64(b"\"alg\"")).into_bytes(), false),
            (vec![0xff, b'.', b'a', b'.', b'b'], false),
        ];
        for (password, expect) in cases {
            assert_eq!(
                JwtVerifier::looks_like_jwt(&password),
                expect,
                "{}",
                String::from_utf8_lossy(&password)
            );
        }
    }

    #[test]
    fn a_changed_key_file_reloads_and_a_broken_one_keeps_the_old_keys() {
        let s = Setup::new(Some(RSA_PUBLIC.as_bytes()), None);
        let v = s.verifier();
        let old = rs(&claims("d"));
        assert!(v.verify(&old).is_ok());
        assert!(!v.reload_if_changed().unwrap());

        // A different key (an EC one: a different size, so the change shows).
        let kp = rcgen::KeyPair::generate().unwrap();
        std::fs::write(&s.cfg.key_file, kp.public_key_pem()).unwrap();
        assert!(v.reload_if_changed().unwrap());
        assert!(matches!(v.verify(&old), Err(JwtError::NoKey(_))));
        let new = es(&kp, None, &claims("d"));
        assert!(v.verify(&new).is_ok());

        // A broken file: the error is reported once, the EC key stays.
        std::fs::write(
            &s.cfg.key_file,
            "-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n",
        )
        .unwrap();
        assert!(matches!(
            v.reload_if_changed(),
            Err(JwtError::BadKey { .. })
        ));
        assert!(v.verify(&new).is_ok());
        assert!(matches!(v.verify(&old), Err(JwtError::NoKey(_))));
        assert!(!v.reload_if_changed().unwrap());

        // Removed: also an error that keeps the keys.
        std::fs::remove_file(&s.cfg.key_file).unwrap();
        assert!(matches!(v.reload_if_changed(), Err(JwtError::Read { .. })));
        assert!(v.verify(&new).is_ok());
    }

    #[test]
    fn a_changed_secret_reloads() {
        let s = Setup::new(None, Some(SECRET));
        let v = s.verifier();
        let old = hs(&claims("d"));
        assert!(v.verify(&old).is_ok());
        let other: &[u8] = b"another-test-only-secret-that-is-longer-than-the-first\n";
        std::fs::write(&s.cfg.secret_file, other).unwrap();
        assert!(v.reload_if_changed().unwrap());
        assert!(matches!(v.verify(&old), Err(JwtError::BadSignature)));
        let new = sign(
            Algorithm::HS256,
            None,
            &EncodingKey::from_secret(other.strip_suffix(b"\n").unwrap()),
            &claims("d"),
        );
        assert!(v.verify(&new).is_ok());
    }

    #[test]
    fn debug_does_not_show_the_secret() {
        let v = Setup::new(None, Some(SECRET)).verifier();
        let shown = format!("{v:?}");
        assert!(
            !shown.contains(std::str::from_utf8(SECRET).unwrap()),
            "{shown}"
        );
        assert!(shown.contains("HS256"));
    }
}
