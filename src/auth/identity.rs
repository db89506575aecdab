//! The device id carried by a verified TLS client certificate: the subject
//! common name, or the first URI subject alternative name (SPIFFE-style
//! `spiffe://fleet/devices/dev-1`). rustls has already verified the chain,
//! validity and revocation before this runs; this only reads the name.

use x509_parser::prelude::*;

use super::config::CertIdentity;

/// Why a verified certificate yields no device id.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// The DER does not parse (rustls accepted it, so this is unexpected).
    #[error("client certificate does not parse: {0}")]
    Parse(String),
    /// The subject has no common name.
    #[error("client certificate has no subject common name")]
    NoCommonName,
    /// No URI subject alternative name.
    #[error("client certificate has no URI subject alternative name")]
    NoSanUri,
    /// The name is empty, not UTF-8, too long, or has characters a device id
    /// may not have.
    #[error("client certificate identity {0:?} is not a usable device id")]
    Unusable(String),
}

/// Reads the device id from a DER certificate.
pub fn device_id(der: &[u8], which: CertIdentity) -> Result<String, IdentityError> {
    let (_, cert) =
        X509Certificate::from_der(der).map_err(|e| IdentityError::Parse(e.to_string()))?;
    let id = match which {
        CertIdentity::Cn => {
            let cn = cert
                .subject()
                .iter_common_name()
                .next()
                .ok_or(IdentityError::NoCommonName)?;
            cn.as_str()
                .map_err(|_| IdentityError::Unusable("<non-UTF-8 common name>".into()))?
                .to_owned()
        }
        CertIdentity::SanUri => {
            let san = cert
                .subject_alternative_name()
                .map_err(|e| IdentityError::Parse(e.to_string()))?
                .ok_or(IdentityError::NoSanUri)?;
            san.value
                .general_names
                .iter()
                .find_map(|n| match n {
                    GeneralName::URI(uri) => Some((*uri).to_owned()),
                    _ => None,
                })
                .ok_or(IdentityError::NoSanUri)?
        }
    };
    if !usable(&id) {
        return Err(IdentityError::Unusable(id));
    }
    Ok(id)
}

/// A device id must be a non-empty MQTT string without control characters,
/// U+0000 or the wildcards `+` and `#`, since it becomes a Kafka key, a
/// header, and part of topic filters (ACL templates, command filters).
pub fn usable(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 65_535
        && !id.chars().any(|c| c.is_control() || c == '+' || c == '#')
}

#[cfg(test)]
mod tests {
    use super::*;
    use rcgen::{CertificateParams, DnType, KeyPair, SanType};

    fn cert(cn: Option<&str>, uri: Option<&str>) -> Vec<u8> {
        let mut params = CertificateParams::new(Vec::<String>::new()).unwrap();
        params.distinguished_name = rcgen::DistinguishedName::new();
        if let Some(cn) = cn {
            params.distinguished_name.push(DnType::CommonName, cn);
        }
        if let Some(uri) = uri {
            params
                .subject_alt_names
                .push(SanType::URI(uri.try_into().unwrap()));
        }
        let key = KeyPair::generate().unwrap();
        params.self_signed(&key).unwrap().der().to_vec()
    }

    #[test]
    fn common_name_and_san_uri() {
        let der = cert(Some("dev-1"), Some("spiffe://fleet/devices/dev-1"));
        assert_eq!(device_id(&der, CertIdentity::Cn).unwrap(), "dev-1");
        assert_eq!(
            device_id(&der, CertIdentity::SanUri).unwrap(),
            "spiffe://fleet/devices/dev-1"
        );
    }

    #[test]
    fn missing_names_are_errors() {
        let der = cert(None, None);
        assert_eq!(
            device_id(&der, CertIdentity::Cn),
            Err(IdentityError::NoCommonName)
        );
        assert_eq!(
            device_id(&der, CertIdentity::SanUri),
            Err(IdentityError::NoSanUri)
        );
        assert!(matches!(
            device_id(b"not a certificate", CertIdentity::Cn),
            Err(IdentityError::Parse(_))
        ));
    }

    #[test]
    fn control_characters_are_unusable() {
        let der = cert(Some("dev\n1"), None);
        assert!(matches!(
            device_id(&der, CertIdentity::Cn),
            Err(IdentityError::Unusable(_))
        ));
        assert!(!usable(""));
        assert!(!usable("a\u{0}b"));
        assert!(!usable("dev/#"));
        assert!(!usable("dev+1"));
        assert!(usable("dev-1"));
    }
}
