//! PROXY protocol v1 (text) and v2 (binary) headers, as HAProxy, AWS NLB
//! and others send them ahead of the client's bytes, so the real client
//! address reaches logs, limits and the auth hook. Only listeners configured
//! with `proxy_protocol = true` read a header, and then every connection must
//! start with one: a missing or malformed header closes the connection.
//! The header is read exactly (never past its end), so the MQTT or TLS bytes
//! that follow stay in the socket. From a v2 header the TLS information of a
//! balancer that terminated TLS is kept: whether the client presented a
//! verified certificate, and its common name.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};

use tokio::io::{AsyncRead, AsyncReadExt};

const V2_SIGNATURE: [u8; 12] = *b"\r\n\r\n\0\r\nQUIT\n";
const V1_MAX: usize = 107;

/// What the header says about the client.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Proxied {
    /// The client's address; `None` for `UNKNOWN` (v1) or `LOCAL` (v2,
    /// health checks of the balancer itself): keep the socket's peer.
    pub source: Option<SocketAddr>,
    /// v2 `PP2_TYPE_SSL` with the client-certificate-verified flag and a
    /// `PP2_SUBTYPE_SSL_CN`: the common name the balancer verified.
    pub verified_cn: Option<String>,
}

/// A header that cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ProxyHeaderError {
    /// The socket failed or closed mid-header.
    #[error("reading the PROXY header: {0}")]
    Io(#[from] std::io::Error),
    /// The connection did not start with a PROXY v1 or v2 signature.
    #[error("no PROXY protocol header (listener has proxy_protocol = true)")]
    Missing,
    /// The header is malformed.
    #[error("malformed PROXY header: {0}")]
    Malformed(&'static str),
}

/// Reads one header from the start of `stream`.
pub async fn read_header<S: AsyncRead + Unpin>(
    stream: &mut S,
) -> Result<Proxied, ProxyHeaderError> {
    let mut first = [0u8; 5];
    stream.read_exact(&mut first).await?;
    if &first == b"PROXY" {
        return read_v1(stream).await;
    }
    if first[..] == V2_SIGNATURE[..5] {
        let mut rest = [0u8; 11];
        stream.read_exact(&mut rest).await?;
        if rest[..7] != V2_SIGNATURE[5..] {
            return Err(ProxyHeaderError::Missing);
        }
        let len = u16::from_be_bytes([rest[9], rest[10]]) as usize;
        let mut body = vec![0u8; len];
        stream.read_exact(&mut body).await?;
        return parse_v2(rest[7], rest[8], &body);
    }
    Err(ProxyHeaderError::Missing)
}

async fn read_v1<S: AsyncRead + Unpin>(stream: &mut S) -> Result<Proxied, ProxyHeaderError> {
    // Byte by byte: the line's length is unknown and nothing past "\r\n"
    // may be consumed. At most 107 bytes, once per connection.
    let mut line = b"PROXY".to_vec();
    while !line.ends_with(b"\r\n") {
        if line.len() >= V1_MAX {
            return Err(ProxyHeaderError::Malformed("v1 line longer than 107 bytes"));
        }
        line.push(stream.read_u8().await?);
    }
    parse_v1(&line[..line.len() - 2])
}

/// Parses a v1 line without its CRLF.
pub fn parse_v1(line: &[u8]) -> Result<Proxied, ProxyHeaderError> {
    let text =
        std::str::from_utf8(line).map_err(|_| ProxyHeaderError::Malformed("v1 not ASCII"))?;
    let parts: Vec<&str> = text.split(' ').collect();
    match parts.as_slice() {
        ["PROXY", "UNKNOWN", ..] => Ok(Proxied::default()),
        ["PROXY", family @ ("TCP4" | "TCP6"), src, _dst, sport, _dport] => {
            let ip: IpAddr = src
                .parse()
                .map_err(|_| ProxyHeaderError::Malformed("v1 source address"))?;
            if (*family == "TCP4") != ip.is_ipv4() {
                return Err(ProxyHeaderError::Malformed("v1 address family mismatch"));
            }
            let port: u16 = sport
                .parse()
                .map_err(|_| ProxyHeaderError::Malformed("v1 source port"))?;
            Ok(Proxied {
                source: Some(SocketAddr::new(ip, port)),
                verified_cn: None,
            })
        }
        _ => Err(ProxyHeaderError::Malformed("v1 fields")),
    }
}

/// Parses a v2 header from its version/command byte, family byte and body.
pub fn parse_v2(ver_cmd: u8, family: u8, body: &[u8]) -> Result<Proxied, ProxyHeaderError> {
    if ver_cmd >> 4 != 2 {
        return Err(ProxyHeaderError::Malformed("v2 version"));
    }
    match ver_cmd & 0x0F {
        0 => return Ok(Proxied::default()), // LOCAL
        1 => {}                             // PROXY
        _ => return Err(ProxyHeaderError::Malformed("v2 command")),
    }
    let (source, tlvs) = match family >> 4 {
        0 => (None, body), // AF_UNSPEC
        1 => {
            if body.len() < 12 {
                return Err(ProxyHeaderError::Malformed("v2 IPv4 addresses truncated"));
            }
            let ip = Ipv4Addr::new(body[0], body[1], body[2], body[3]);
            let port = u16::from_be_bytes([body[8], body[9]]);
            (Some(SocketAddr::new(ip.into(), port)), &body[12..])
        }
        2 => {
            if body.len() < 36 {
                return Err(ProxyHeaderError::Malformed("v2 IPv6 addresses truncated"));
            }
            let mut octets = [0u8; 16];
            octets.copy_from_slice(&body[..16]);
            let port = u16::from_be_bytes([body[32], body[33]]);
            (
                Some(SocketAddr::new(Ipv6Addr::from(octets).into(), port)),
                &body[36..],
            )
        }
        3 => (None, body.get(216..).unwrap_or(&[])), // AF_UNIX: no usable address
        _ => return Err(ProxyHeaderError::Malformed("v2 address family")),
    };
    Ok(Proxied {
        source,
        verified_cn: ssl_cn(tlvs)?,
    })
}

/// Walks TLVs for PP2_TYPE_SSL (0x20): client bit 0x01 (connected over
/// TLS), 0x02/0x04 (certificate presented), verify == 0 (verified); then
/// PP2_SUBTYPE_SSL_CN (0x22) among its sub-TLVs.
fn ssl_cn(mut tlvs: &[u8]) -> Result<Option<String>, ProxyHeaderError> {
    while !tlvs.is_empty() {
        if tlvs.len() < 3 {
            return Err(ProxyHeaderError::Malformed("v2 TLV truncated"));
        }
        let kind = tlvs[0];
        let len = u16::from_be_bytes([tlvs[1], tlvs[2]]) as usize;
        let value = tlvs
            .get(3..3 + len)
            .ok_or(ProxyHeaderError::Malformed("v2 TLV length"))?;
        tlvs = &tlvs[3 + len..];
        if kind != 0x20 {
            continue;
        }
        if value.len() < 5 {
            return Err(ProxyHeaderError::Malformed("v2 SSL TLV truncated"));
        }
        let client = value[0];
        let verify = u32::from_be_bytes([value[1], value[2], value[3], value[4]]);
        let cert_presented = client & 0x01 != 0 && client & 0x06 != 0;
        let mut sub = &value[5..];
        let mut cn = None;
        while sub.len() >= 3 {
            let k = sub[0];
            let l = u16::from_be_bytes([sub[1], sub[2]]) as usize;
            let v = sub
                .get(3..3 + l)
                .ok_or(ProxyHeaderError::Malformed("v2 SSL sub-TLV length"))?;
            if k == 0x22 {
                cn = Some(
                    String::from_utf8(v.to_vec())
                        .map_err(|_| ProxyHeaderError::Malformed("v2 SSL CN not UTF-8"))?,
                );
            }
            sub = &sub[3 + l..];
        }
        return Ok(cn.filter(|_| cert_presented && verify == 0));
    }
    Ok(None)
}

/// Encodes a v2 header (for tests and the load-test simulator).
pub fn encode_v2(source: SocketAddr, dest: SocketAddr, verified_cn: Option<&str>) -> Vec<u8> {
    let mut body = Vec::new();
    let family = match (source.ip(), dest.ip()) {
        (IpAddr::V4(s), IpAddr::V4(d)) => {
            body.extend_from_slice(&s.octets());
            body.extend_from_slice(&d.octets());
            0x11
        }
        (s, d) => {
            let v6 = |ip: IpAddr| match ip {
                IpAddr::V4(v4) => v4.to_ipv6_mapped(),
                IpAddr::V6(v6) => v6,
            };
            body.extend_from_slice(&v6(s).octets());
            body.extend_from_slice(&v6(d).octets());
            0x21
        }
    };
    body.extend_from_slice(&source.port().to_be_bytes());
    body.extend_from_slice(&dest.port().to_be_bytes());
    if let Some(cn) = verified_cn {
        let mut ssl = vec![0x01 | 0x02 | 0x04, 0, 0, 0, 0];
        ssl.push(0x22);
        ssl.extend_from_slice(&(cn.len() as u16).to_be_bytes());
        ssl.extend_from_slice(cn.as_bytes());
        body.push(0x20);
        body.extend_from_slice(&(ssl.len() as u16).to_be_bytes());
        body.extend_from_slice(&ssl);
    }
    let mut out = V2_SIGNATURE.to_vec();
    out.push(0x21);
    out.push(family);
    out.extend_from_slice(&(body.len() as u16).to_be_bytes());
    out.extend_from_slice(&body);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn read(bytes: &[u8]) -> (Result<Proxied, ProxyHeaderError>, Vec<u8>) {
        let mut cursor = std::io::Cursor::new(bytes.to_vec());
        let got = read_header(&mut cursor).await;
        let pos = cursor.position() as usize;
        (got, bytes[pos..].to_vec())
    }

    #[tokio::test]
    async fn v1_gives_the_source_and_leaves_the_rest() {
        let (got, rest) = read(b"PROXY TCP4 203.0.113.7 10.0.0.1 51234 1883\r\n\x10\x0c").await;
        assert_eq!(
            got.unwrap().source,
            Some("203.0.113.7:51234".parse().unwrap())
        );
        assert_eq!(rest, b"\x10\x0c");
        let (got, _) = read(b"PROXY TCP6 2001:db8::1 2001:db8::2 4000 1883\r\n").await;
        assert_eq!(
            got.unwrap().source,
            Some("[2001:db8::1]:4000".parse().unwrap())
        );
        let (got, _) = read(b"PROXY UNKNOWN\r\n").await;
        assert_eq!(got.unwrap().source, None);
    }

    #[tokio::test]
    async fn v2_gives_the_source_and_verified_cn() {
        let src: SocketAddr = "198.51.100.9:40000".parse().unwrap();
        let dst: SocketAddr = "10.0.0.1:8883".parse().unwrap();
        let mut bytes = encode_v2(src, dst, Some("dev-7"));
        bytes.extend_from_slice(b"MQTT");
        let (got, rest) = read(&bytes).await;
        let got = got.unwrap();
        assert_eq!(got.source, Some(src));
        assert_eq!(got.verified_cn.as_deref(), Some("dev-7"));
        assert_eq!(rest, b"MQTT");
        let (got, _) = read(&encode_v2(
            "[2001:db8::5]:7".parse().unwrap(),
            "[::1]:1".parse().unwrap(),
            None,
        ))
        .await;
        assert_eq!(
            got.unwrap().source,
            Some("[2001:db8::5]:7".parse().unwrap())
        );
    }

    #[tokio::test]
    async fn unverified_certificates_give_no_cn() {
        let mut bytes = encode_v2(
            "1.2.3.4:5".parse().unwrap(),
            "5.6.7.8:9".parse().unwrap(),
            Some("dev-7"),
        );
        // Set the verify field (after type, length and client byte of the SSL TLV) to non-zero.
        let ssl_at = 16 + 12;
        bytes[ssl_at + 3 + 1 + 3] = 1;
        let (got, _) = read(&bytes).await;
        assert_eq!(got.unwrap().verified_cn, None);
    }

    #[tokio::test]
    async fn malformed_and_missing_headers_are_errors() {
        for bad in [
            &b"\x10\x0c\x00\x04MQTT"[..],
            b"PROXY TCP4 1.2.3.4 5.6.7.8 99999 1\r\n",
            b"PROXY TCP4 2001:db8::1 5.6.7.8 1 1\r\n",
            b"PROXY TCP4 1.2.3.4\r\n",
            &[b'P'; 200][..],
        ] {
            assert!(
                read(bad).await.0.is_err(),
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
        let long = [b"PROXY ".as_slice(), &[b'1'; 200]].concat();
        assert!(matches!(
            read(&long).await.0,
            Err(ProxyHeaderError::Malformed(_))
        ));
        let mut v2 = encode_v2(
            "1.2.3.4:5".parse().unwrap(),
            "5.6.7.8:9".parse().unwrap(),
            None,
        );
        v2[12] = 0x31; // version 3
        assert!(read(&v2).await.0.is_err());
        // Truncated: the socket closes mid-header.
        let v2 = encode_v2(
            "1.2.3.4:5".parse().unwrap(),
            "5.6.7.8:9".parse().unwrap(),
            None,
        );
        assert!(matches!(
            read(&v2[..20]).await.0,
            Err(ProxyHeaderError::Io(_))
        ));
    }
}
