//! Loading JWT verification keys: the HS256 secret from `secret_file`, and
//! RS256 / ES256 public keys from `key_file` (one PEM key or certificate, or
//! a JWKS document read with `jsonwebtoken`'s [`Jwk`]). [`super::JwtVerifier`]
//! loads a [`KeySet`] at start-up and on every change of the files, and asks
//! it for the one key a token may be checked with.
//!
//! Every key is checked here against what `ring` will verify with (RSA size
//! and exponent, P-256 point size), so a useless key fails at load, naming
//! the file, not on every token.

use std::path::Path;

use base64::alphabet::URL_SAFE;
use base64::engine::general_purpose::{GeneralPurpose, GeneralPurposeConfig, URL_SAFE_NO_PAD};
use base64::engine::DecodePaddingMode;
use base64::Engine;
use jsonwebtoken::jwk::{AlgorithmParameters, EllipticCurve, Jwk, PublicKeyUse};
use jsonwebtoken::DecodingKey;
use serde::Deserialize;
use serde_json::Value;
use x509_parser::oid_registry::{OID_EC_P256, OID_KEY_TYPE_EC_PUBLIC_KEY, OID_PKCS1_RSAENCRYPTION};
use x509_parser::pem::Pem;
use x509_parser::prelude::FromDer;
use x509_parser::public_key::RSAPublicKey;
use x509_parser::x509::SubjectPublicKeyInfo;

use super::{Alg, JwtError};

/// Secrets shorter than this still work but are logged as weak (RFC 7518
/// §3.2: an HS256 key should be at least as long as the hash, 256 bits).
const MIN_SECRET_BYTES: usize = 32;

/// JWK fields are base64url; some issuers pad them, so padding is optional.
const JWK_B64: GeneralPurpose = GeneralPurpose::new(
    &URL_SAFE,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn bad_key(path: &Path, reason: impl Into<String>) -> JwtError {
    JwtError::BadKey {
        path: path.to_path_buf(),
        reason: reason.into(),
    }
}

/// One RS256 or ES256 verification key.
pub(super) struct PublicKey {
    /// JWKS `kid`; PEM keys have none.
    kid: Option<String>,
    /// The only algorithm this key verifies.
    alg: Alg,
    key: DecodingKey,
}

/// Everything loaded from `key_file` and `secret_file`; replaced whole on
/// reload. The default holds no key.
#[derive(Default)]
pub(super) struct KeySet {
    /// The HS256 secret: the only key HS256 ever uses.
    secret: Option<DecodingKey>,
    /// RS256 / ES256 keys.
    public: Vec<PublicKey>,
    /// The public keys came from a JWKS document, so `kid` selects among them;
    /// a PEM file holds one key and the token's `kid` is irrelevant.
    jwks: bool,
}

impl KeySet {
    pub(super) fn serves(&self, alg: Alg) -> bool {
        match alg {
            Alg::Hs256 => self.secret.is_some(),
            _ => self.public.iter().any(|k| k.alg == alg),
        }
    }

    /// The key for a token with this `alg` and `kid`, never one of another kind.
    pub(super) fn select(&self, alg: Alg, kid: Option<&str>) -> Result<&DecodingKey, JwtError> {
        let no_key = || JwtError::NoKey(alg.name().to_string());
        if alg == Alg::Hs256 {
            return self.secret.as_ref().ok_or_else(no_key);
        }
        let mut usable = self.public.iter().filter(|k| k.alg == alg);
        if !self.jwks {
            return usable.next().map(|k| &k.key).ok_or_else(no_key);
        }
        match kid {
            Some(kid) => usable
                .find(|k| k.kid.as_deref() == Some(kid))
                .map(|k| &k.key)
                .ok_or_else(|| JwtError::UnknownKey(kid.to_string())),
            None => {
                let usable: Vec<&PublicKey> = usable.collect();
                match usable.as_slice() {
                    [] => Err(no_key()),
                    [only] => Ok(&only.key),
                    several => Err(JwtError::KeyIdRequired(several.len())),
                }
            }
        }
    }
}

impl KeySet {
    /// Reads the files; an empty path is a file not configured.
    pub(super) fn load(key_file: &Path, secret_file: &Path) -> Result<KeySet, JwtError> {
        let secret = if secret_file.as_os_str().is_empty() {
            None
        } else {
            Some(load_secret(secret_file)?)
        };
        let (public, jwks) = if key_file.as_os_str().is_empty() {
            (Vec::new(), false)
        } else {
            load_public(key_file)?
        };
        Ok(KeySet {
            secret,
            public,
            jwks,
        })
    }
}

fn read(path: &Path) -> Result<Vec<u8>, JwtError> {
    std::fs::read(path).map_err(|source| JwtError::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn load_secret(path: &Path) -> Result<DecodingKey, JwtError> {
    let mut secret = read(path)?;
    if secret.ends_with(b"\r\n") {
        secret.truncate(secret.len() - 2);
    } else if secret.ends_with(b"\n") {
        secret.truncate(secret.len() - 1);
    }
    if secret.is_empty() {
        return Err(bad_key(path, "the HS256 secret is empty"));
    }
    if secret.len() < MIN_SECRET_BYTES {
        tracing::warn!(
            file = %path.display(),
            bytes = secret.len(),
            "HS256 secret is shorter than {MIN_SECRET_BYTES} bytes; it is easy to guess"
        );
    }
    Ok(DecodingKey::from_secret(&secret))
}

/// Reads `key_file`: the public keys, and whether they came from a JWKS.
fn load_public(path: &Path) -> Result<(Vec<PublicKey>, bool), JwtError> {
    let bytes = read(path)?;
    let first = bytes.iter().find(|b| !b.is_ascii_whitespace());
    if first == Some(&b'{') {
        Ok((parse_jwks(path, &bytes)?, true))
    } else {
        Ok((vec![parse_pem(path, &bytes)?], false))
    }
}

fn parse_pem(path: &Path, bytes: &[u8]) -> Result<PublicKey, JwtError> {
    let mut found = Vec::new();
    for block in Pem::iter_from_buffer(bytes) {
        let block = block.map_err(|e| bad_key(path, format!("unreadable PEM block: {e}")))?;
        let key = match block.label.as_str() {
            "PUBLIC KEY" => spki_key(&block.contents),
            "RSA PUBLIC KEY" => rsa_from_pkcs1(&block.contents).map(|k| (Alg::Rs256, k)),
            "CERTIFICATE" => match block.parse_x509() {
                Ok(cert) => spki_key(cert.public_key().raw),
                Err(e) => Err(format!("unreadable certificate: {e}")),
            },
            label if label.contains("PRIVATE KEY") => Err(format!(
                "holds a private key ({label}); give the public key (openssl pkey -pubout)"
            )),
            // Anything else (e.g. "EC PARAMETERS" from `openssl ecparam`) carries no key.
            _ => continue,
        };
        found.push(key.map_err(|reason| bad_key(path, reason))?);
    }
    match found.len() {
        0 => Err(bad_key(
            path,
            "no PEM PUBLIC KEY, RSA PUBLIC KEY or CERTIFICATE block, and not a JWKS document",
        )),
        1 => {
            let (alg, key) = found.remove(0);
            Ok(PublicKey {
                kid: None,
                alg,
                key,
            })
        }
        n => Err(bad_key(
            path,
            format!("holds {n} keys; use a JWKS document with a kid per key to serve several"),
        )),
    }
}

/// An RSA or EC P-256 key from a DER SubjectPublicKeyInfo.
fn spki_key(der: &[u8]) -> Result<(Alg, DecodingKey), String> {
    let (_, spki) =
        SubjectPublicKeyInfo::from_der(der).map_err(|e| format!("not a valid public key: {e}"))?;
    let oid = &spki.algorithm.algorithm;
    if *oid == OID_PKCS1_RSAENCRYPTION {
        rsa_from_pkcs1(&spki.subject_public_key.data).map(|k| (Alg::Rs256, k))
    } else if *oid == OID_KEY_TYPE_EC_PUBLIC_KEY {
        let curve = spki
            .algorithm
            .parameters
            .as_ref()
            .and_then(|p| p.as_oid().ok());
        if curve.as_ref() != Some(&OID_EC_P256) {
            let curve = curve.map_or_else(|| "unnamed".to_string(), |c| c.to_id_string());
            return Err(format!(
                "EC key on curve {curve}; ES256 needs P-256 (1.2.840.10045.3.1.7)"
            ));
        }
        ec_from_point(&spki.subject_public_key.data).map(|k| (Alg::Es256, k))
    } else {
        Err(format!(
            "unsupported key type {}; expected RSA or EC P-256",
            oid.to_id_string()
        ))
    }
}

/// An RS256 key from a PKCS#1 RSAPublicKey.
fn rsa_from_pkcs1(der: &[u8]) -> Result<DecodingKey, String> {
    let (_, key) =
        RSAPublicKey::from_der(der).map_err(|e| format!("not a valid RSA public key: {e}"))?;
    rsa_from_components(key.modulus, key.exponent)
}

/// An RS256 key from big-endian modulus and exponent, checked first.
fn rsa_from_components(n: &[u8], e: &[u8]) -> Result<DecodingKey, String> {
    let (n, e) = (strip_zeros(n), strip_zeros(e));
    check_rsa(n, e)?;
    Ok(DecodingKey::from_rsa_raw_components(n, e))
}

/// A big-endian integer without its leading zero bytes, as ring wants it.
fn strip_zeros(b: &[u8]) -> &[u8] {
    &b[b.iter().take_while(|&&x| x == 0).count()..]
}

/// Whether ring will verify with this modulus and exponent (big-endian,
/// no leading zeros).
fn check_rsa(n: &[u8], e: &[u8]) -> Result<(), String> {
    let bits = match n.first() {
        Some(top) => n.len() * 8 - top.leading_zeros() as usize,
        None => 0,
    };
    if !(2048..=8192).contains(&bits) {
        return Err(format!("RSA key has {bits} bits; RS256 needs 2048 to 8192"));
    }
    let exponent = (e.len() <= 8).then(|| e.iter().fold(0u64, |acc, &b| (acc << 8) | u64::from(b)));
    if !exponent.is_some_and(|x| x >= 3 && x % 2 == 1 && x < (1 << 33)) {
        return Err("RSA public exponent is not an odd number from 3 to 2^33".to_string());
    }
    Ok(())
}

/// An ES256 key from an uncompressed P-256 point (0x04 || x || y).
fn ec_from_point(point: &[u8]) -> Result<DecodingKey, String> {
    if point.len() != 65 || point[0] != 0x04 {
        return Err("EC public key is not an uncompressed P-256 point".to_string());
    }
    Ok(DecodingKey::from_ec_der(point))
}

/// A JWKS document. `JwkSet` would refuse the whole document for one key
/// that `jsonwebtoken` does not model (an unknown `kty`, `crv` or `alg`),
/// locking every device out; so each entry is read as a [`Jwk`] on its own,
/// and keys this proxy does not use are skipped (logged).
fn parse_jwks(path: &Path, bytes: &[u8]) -> Result<Vec<PublicKey>, JwtError> {
    let doc: Value = serde_json::from_slice(bytes)
        .map_err(|e| bad_key(path, format!("not a JSON document: {e}")))?;
    let entries = doc
        .get("keys")
        .and_then(Value::as_array)
        .ok_or_else(|| bad_key(path, "JWKS document has no \"keys\" array"))?;
    let mut keys: Vec<PublicKey> = Vec::new();
    for (i, entry) in entries.iter().enumerate() {
        let name = match entry.get("kid").and_then(Value::as_str) {
            Some(kid) => format!("key {kid:?}"),
            None => format!("key {i}"),
        };
        let jwk = match Jwk::deserialize(entry) {
            Ok(jwk) => jwk,
            // Meant for us but broken: an error, so a bad key rotation is
            // not silently ignored (on reload the old keys stay).
            Err(e) if meant_for_signing(entry) => {
                return Err(bad_key(path, format!("JWKS {name}: {e}")))
            }
            Err(e) => {
                tracing::warn!(file = %path.display(), key = %name, "skipping JWKS key: {e}");
                continue;
            }
        };
        let Some((alg, key)) =
            jwk_key(path, &jwk).map_err(|r| bad_key(path, format!("JWKS {name}: {r}")))?
        else {
            continue;
        };
        let kid = jwk.common.key_id;
        if let Some(kid) = &kid {
            if keys
                .iter()
                .any(|k| k.alg == alg && k.kid.as_ref() == Some(kid))
            {
                return Err(bad_key(
                    path,
                    format!("JWKS has two {} keys with kid {kid:?}", alg.name()),
                ));
            }
        }
        keys.push(PublicKey { kid, alg, key });
    }
    if keys.is_empty() {
        return Err(bad_key(
            path,
            "JWKS document holds no RS256 or ES256 signing key",
        ));
    }
    Ok(keys)
}

/// Whether a JWK that [`Jwk`] cannot read is of a kind this proxy verifies
/// with (RSA, or EC on P-256, for signing with RS256 / ES256): then it is a
/// broken key, not a foreign one.
fn meant_for_signing(entry: &Value) -> bool {
    let text = |name: &str| entry.get(name).and_then(Value::as_str);
    let alg = match (text("kty"), text("crv")) {
        (Some("RSA"), _) => "RS256",
        (Some("EC"), Some("P-256")) => "ES256",
        _ => return false,
    };
    text("use").is_none_or(|u| u == "sig") && text("alg").is_none_or(|a| a == alg)
}

/// One JWK as a verification key; `Ok(None)` for keys this proxy does not use
/// (logged), `Err` for a key of a usable kind that is broken.
fn jwk_key(path: &Path, jwk: &Jwk) -> Result<Option<(Alg, DecodingKey)>, String> {
    let skip = |why: String| {
        let kid = jwk.common.key_id.as_deref();
        tracing::warn!(file = %path.display(), kid, "skipping JWKS key: {why}");
        Ok(None)
    };
    match &jwk.common.public_key_use {
        None | Some(PublicKeyUse::Signature) => {}
        Some(other) => return skip(format!("use is {other:?}, not \"sig\"")),
    }
    let field = |name: &str, text: &str| -> Result<Vec<u8>, String> {
        JWK_B64
            .decode(text)
            .map_err(|e| format!("{name:?} is not base64url: {e}"))
    };
    // Checked, then rewritten as `from_jwk` reads them (unpadded, minimal
    // integers): some issuers pad, or keep a leading zero.
    let mut normal = jwk.clone();
    let alg = match &mut normal.algorithm {
        AlgorithmParameters::RSA(rsa) => {
            let (n, e) = (field("n", &rsa.n)?, field("e", &rsa.e)?);
            let (n, e) = (strip_zeros(&n), strip_zeros(&e));
            check_rsa(n, e)?;
            (rsa.n, rsa.e) = (URL_SAFE_NO_PAD.encode(n), URL_SAFE_NO_PAD.encode(e));
            Alg::Rs256
        }
        AlgorithmParameters::EllipticCurve(ec) if ec.curve == EllipticCurve::P256 => {
            let (x, y) = (field("x", &ec.x)?, field("y", &ec.y)?);
            if x.len() != 32 || y.len() != 32 {
                return Err("P-256 x and y must be 32 bytes each".to_string());
            }
            (ec.x, ec.y) = (URL_SAFE_NO_PAD.encode(x), URL_SAFE_NO_PAD.encode(y));
            Alg::Es256
        }
        AlgorithmParameters::EllipticCurve(ec) => {
            return skip(format!("EC curve {:?}; ES256 needs P-256", ec.curve))
        }
        // HS256 only ever uses secret_file, so a symmetric key here is never trusted.
        AlgorithmParameters::OctetKey(_) => {
            return skip("symmetric keys come only from secret_file".to_string())
        }
        AlgorithmParameters::OctetKeyPair(_) => {
            return skip("key type \"OKP\" is not RSA or EC".to_string())
        }
    };
    if let Some(declared) = jwk.common.key_algorithm {
        if declared.to_string() != alg.name() {
            return skip(format!("alg is {declared}, not {}", alg.name()));
        }
    }
    let key = DecodingKey::from_jwk(&normal).map_err(|e| format!("unusable key: {e}"))?;
    Ok(Some((alg, key)))
}
