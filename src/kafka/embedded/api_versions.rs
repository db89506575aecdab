//! Kafka request framing, just far enough for the embedded broker's
//! forwarder to serve ApiVersions v3/v4 in front of librdkafka's mock broker.
//! Pure functions on raw bytes, no I/O; [`super::forwarder`] drives them.
//!
//! The mock implements ApiVersions v0–v2 only. Asked for v3 or v4 it answers
//! error 35 in a body that is neither the v0 nor the flexible layout (a
//! one-byte array count with no tagged fields), which kafka-python cannot
//! decode and which Java reads as a 20-minute throttle. A real broker (see
//! `ApiVersionsRequest.json` / `ApiVersionsResponse.json` in Apache Kafka):
//! - answers v3+ in the flexible body layout, but always behind response
//!   header v0 (no header tagged fields), so a client can read it before it
//!   knows the broker's versions;
//! - answers a version newer than it serves with error 35
//!   (UNSUPPORTED_VERSION) in the v0 layout, listing only its own
//!   ApiVersions range, and the client retries with that (KIP-511).
//!
//! So the forwarder asks the mock with v2 and rewrites the answer into the v3
//! layout ([`plan`], [`translate_v2_response`]). Layouts, after the 4-byte
//! big-endian size prefix that frames every request and response:
//!
//! ```text
//! request header v1 (v0-2):  api_key i16, api_version i16, correlation_id i32,
//!                            client_id nullable string (i16 length, -1 = null)
//! request header v2 (v3+):   the same, then tagged fields (uvarint count, ...)
//! ApiVersions request v3+:   client_software_name, client_software_version
//!                            (compact strings), tagged fields
//! response header v0:        correlation_id i32
//! ApiVersions response v0:   error_code i16, api_keys [i32 count]{key, min, max: i16}
//! ApiVersions response v1-2: v0, then throttle_time_ms i32
//! ApiVersions response v3-4: error_code i16,
//!                            api_keys compact array (uvarint count + 1)
//!                              {key, min, max: i16, tagged fields},
//!                            throttle_time_ms i32, tagged fields
//! ```

use bytes::{BufMut, BytesMut};

/// Kafka's API key for ApiVersions.
pub const API_VERSIONS_KEY: i16 = 18;
/// The newest ApiVersions version the mock broker answers correctly.
pub const MOCK_MAX_VERSION: i16 = 2;
/// The newest ApiVersions version the forwarder serves (v3 and v4 share a
/// layout; v4 only changes how brokers report feature ranges, and the mock
/// reports no features).
pub const SERVED_MAX_VERSION: i16 = 4;
/// Kafka error code UNSUPPORTED_VERSION.
pub const UNSUPPORTED_VERSION: i16 = 35;
/// Bytes of the size prefix plus api_key and api_version: enough to tell an
/// ApiVersions request from anything else.
pub const REQUEST_PEEK_LEN: usize = 8;

/// A frame the forwarder cannot make sense of.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum WireError {
    /// The frame ends before a field it must hold.
    #[error("kafka frame truncated in {0}")]
    Truncated(&'static str),
    /// A length field that is negative where it may not be, or that
    /// disagrees with the frame's size.
    #[error("kafka frame has a bad {0}")]
    BadLength(&'static str),
}

/// The start of a request frame: its size and which API it calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RequestStart {
    /// Bytes after the size prefix.
    pub size: usize,
    /// The API key (18 for ApiVersions).
    pub api_key: i16,
    /// The version of that API the client chose.
    pub api_version: i16,
}

impl RequestStart {
    /// The whole frame's length, size prefix included.
    pub fn frame_len(&self) -> usize {
        4 + self.size
    }
}

/// Reads a request frame's size, api_key and api_version from its first
/// [`REQUEST_PEEK_LEN`] bytes; `None` until that many have arrived.
pub fn peek_request(buf: &[u8]) -> Option<Result<RequestStart, WireError>> {
    if buf.len() < REQUEST_PEEK_LEN {
        return None;
    }
    let size = i32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    // A request holds at least api_key, api_version and correlation_id.
    if size < 8 {
        return Some(Err(WireError::BadLength("request size")));
    }
    Some(Ok(RequestStart {
        size: size as usize,
        api_key: i16::from_be_bytes([buf[4], buf[5]]),
        api_version: i16::from_be_bytes([buf[6], buf[7]]),
    }))
}

/// What the forwarder does with one ApiVersions request.
#[derive(Debug, PartialEq, Eq)]
pub enum Plan {
    /// v0–v2: the mock answers these correctly; relay request and response
    /// unchanged.
    Relay,
    /// v3–v4: the v2 request now in the output buffer goes to the mock, and
    /// its answer goes through [`translate_v2_response`].
    Downgrade,
    /// Newer than the forwarder serves: the error response now in the output
    /// buffer goes straight back to the client, as a real broker's would.
    Refuse,
}

/// Decides what to do with the whole ApiVersions request `frame` (size
/// prefix included) and writes into `out` what the plan sends: the v2
/// request for [`Plan::Downgrade`], the answer for [`Plan::Refuse`].
pub fn plan(frame: &[u8], out: &mut BytesMut) -> Result<Plan, WireError> {
    let start = match peek_request(frame) {
        Some(r) => r?,
        None => return Err(WireError::Truncated("request header")),
    };
    if start.frame_len() != frame.len() {
        return Err(WireError::BadLength("request size"));
    }
    debug_assert_eq!(start.api_key, API_VERSIONS_KEY);
    if (0..=MOCK_MAX_VERSION).contains(&start.api_version) {
        return Ok(Plan::Relay);
    }
    // correlation_id and client_id sit at the same place in header v1 and v2.
    let correlation_id = frame
        .get(8..12)
        .ok_or(WireError::Truncated("correlation_id"))?;
    if start.api_version > SERVED_MAX_VERSION || start.api_version < 0 {
        let mut body = [0u8; 2 + 4 + 6];
        body[0..2].copy_from_slice(&UNSUPPORTED_VERSION.to_be_bytes());
        body[2..6].copy_from_slice(&1i32.to_be_bytes());
        body[6..8].copy_from_slice(&API_VERSIONS_KEY.to_be_bytes());
        body[8..10].copy_from_slice(&0i16.to_be_bytes());
        body[10..12].copy_from_slice(&SERVED_MAX_VERSION.to_be_bytes());
        out.put_i32((4 + body.len()) as i32);
        out.put_slice(correlation_id);
        out.put_slice(&body);
        return Ok(Plan::Refuse);
    }
    let id_len = frame
        .get(12..14)
        .map(|b| i16::from_be_bytes([b[0], b[1]]))
        .ok_or(WireError::Truncated("client_id"))?;
    let id_end = match id_len {
        -1 => 14,
        n if n >= 0 => 14 + n as usize,
        _ => return Err(WireError::BadLength("client_id")),
    };
    // The length and bytes of client_id, copied as they are; the v3 body
    // (client software name and version) has no v2 equivalent and is dropped.
    let client_id = frame
        .get(12..id_end)
        .ok_or(WireError::Truncated("client_id"))?;
    out.put_i32((2 + 2 + 4 + client_id.len()) as i32);
    out.put_i16(API_VERSIONS_KEY);
    out.put_i16(MOCK_MAX_VERSION);
    out.put_slice(correlation_id);
    out.put_slice(client_id);
    Ok(Plan::Downgrade)
}

/// Rewrites the mock's ApiVersions v2 response `frame` (size prefix
/// included) into the v3/v4 layout, into `out`. The API ranges are the
/// mock's own, except ApiVersions itself, which the forwarder serves up to
/// [`SERVED_MAX_VERSION`].
pub fn translate_v2_response(frame: &[u8], out: &mut BytesMut) -> Result<(), WireError> {
    let mut r = Reader { buf: frame, at: 0 };
    let size = r.i32("response size")?;
    if size < 0 || size as usize != frame.len() - 4 {
        return Err(WireError::BadLength("response size"));
    }
    let correlation_id = r.i32("correlation_id")?;
    let error_code = r.i16("error_code")?;
    let count = r.i32("api_keys count")?;
    if count < 0 || count as usize > (frame.len() - r.at) / 6 {
        return Err(WireError::BadLength("api_keys count"));
    }
    let count = count as usize;
    let keys_at = r.at;
    r.at += count * 6;
    let throttle_ms = r.i32("throttle_time_ms")?;

    let start = out.len();
    out.put_i32(0); // size, filled in below
    out.put_i32(correlation_id);
    out.put_i16(error_code);
    put_uvarint(out, count as u32 + 1);
    for entry in frame[keys_at..keys_at + count * 6].chunks_exact(6) {
        let key = i16::from_be_bytes([entry[0], entry[1]]);
        let min = i16::from_be_bytes([entry[2], entry[3]]);
        let mut max = i16::from_be_bytes([entry[4], entry[5]]);
        if key == API_VERSIONS_KEY {
            max = max.max(SERVED_MAX_VERSION);
        }
        out.put_i16(key);
        out.put_i16(min);
        out.put_i16(max);
        out.put_u8(0); // no tagged fields
    }
    out.put_i32(throttle_ms);
    out.put_u8(0); // no tagged fields (no supported or finalized features)
    let size = (out.len() - start - 4) as i32;
    out[start..start + 4].copy_from_slice(&size.to_be_bytes());
    Ok(())
}

/// Unsigned varint, as Kafka's compact encodings use (7 bits a byte, low first).
fn put_uvarint(out: &mut BytesMut, mut v: u32) {
    while v >= 0x80 {
        out.put_u8((v as u8 & 0x7f) | 0x80);
        v >>= 7;
    }
    out.put_u8(v as u8);
}

/// A bounds-checked big-endian cursor.
struct Reader<'a> {
    buf: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self, what: &'static str) -> Result<[u8; N], WireError> {
        let b = self
            .buf
            .get(self.at..self.at + N)
            .ok_or(WireError::Truncated(what))?;
        self.at += N;
        // The slice has exactly N bytes.
        Ok(b.try_into().unwrap_or([0; N]))
    }
    fn i16(&mut self, what: &'static str) -> Result<i16, WireError> {
        self.take::<2>(what).map(i16::from_be_bytes)
    }
    fn i32(&mut self, what: &'static str) -> Result<i32, WireError> {
        self.take::<4>(what).map(i32::from_be_bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A request frame: size prefix, then `rest`.
    fn framed(rest: &[u8]) -> Vec<u8> {
        let mut f = (rest.len() as i32).to_be_bytes().to_vec();
        f.extend_from_slice(rest);
        f
    }

    /// ApiVersions request header fields up to and including client_id.
    fn header(version: i16, correlation: i32, client_id: Option<&str>) -> Vec<u8> {
        let mut h = Vec::new();
        h.extend_from_slice(&18i16.to_be_bytes());
        h.extend_from_slice(&version.to_be_bytes());
        h.extend_from_slice(&correlation.to_be_bytes());
        match client_id {
            Some(id) => {
                h.extend_from_slice(&(id.len() as i16).to_be_bytes());
                h.extend_from_slice(id.as_bytes());
            }
            None => h.extend_from_slice(&(-1i16).to_be_bytes()),
        }
        h
    }

    /// A v3/v4 request: header v2 (no tagged fields), then the body with
    /// compact strings "apache-kafka-java" / "4.1.1" and no tagged fields.
    fn flexible_request(version: i16, correlation: i32, client_id: Option<&str>) -> Vec<u8> {
        let mut r = header(version, correlation, client_id);
        r.push(0);
        r.push(18);
        r.extend_from_slice(b"apache-kafka-java");
        r.push(6);
        r.extend_from_slice(b"4.1.1");
        r.push(0);
        framed(&r)
    }

    #[test]
    fn peek_needs_eight_bytes_and_reads_key_and_version() {
        let f = flexible_request(4, 1, Some("c"));
        for n in 0..REQUEST_PEEK_LEN {
            assert_eq!(peek_request(&f[..n]), None, "{n} bytes");
        }
        let s = peek_request(&f[..8]).unwrap().unwrap();
        assert_eq!((s.api_key, s.api_version, s.frame_len()), (18, 4, f.len()));
        // A Produce v9 request of 1000 bytes.
        let p = [0, 0, 3, 232, 0, 0, 0, 9];
        let s = peek_request(&p).unwrap().unwrap();
        assert_eq!((s.api_key, s.api_version, s.size), (0, 9, 1000));
        assert_eq!(
            peek_request(&[0, 0, 0, 7, 0, 18, 0, 3]),
            Some(Err(WireError::BadLength("request size")))
        );
        assert_eq!(
            peek_request(&[0xff, 0xff, 0xff, 0xff, 0, 18, 0, 3]),
            Some(Err(WireError::BadLength("request size")))
        );
    }

    #[test]
    fn old_versions_are_relayed_untouched() {
        for v in 0..=2 {
            let f = framed(&header(v, 7, Some("rdkafka")));
            let mut out = BytesMut::new();
            assert_eq!(plan(&f, &mut out), Ok(Plan::Relay), "v{v}");
            assert!(out.is_empty());
        }
    }

    #[test]
    fn v3_and_v4_become_v2_with_the_same_correlation_and_client_id() {
        for v in [3, 4] {
            let mut out = BytesMut::new();
            let f = flexible_request(v, 0x01020304, Some("console-consumer"));
            assert_eq!(plan(&f, &mut out), Ok(Plan::Downgrade));
            let mut want = framed(&header(2, 0x01020304, Some("console-consumer")));
            assert_eq!(&out[..], &want[..], "v{v}");
            // A null client_id stays null.
            out.clear();
            let f = flexible_request(v, 9, None);
            assert_eq!(plan(&f, &mut out), Ok(Plan::Downgrade));
            want = framed(&header(2, 9, None));
            assert_eq!(&out[..], &want[..]);
        }
    }

    #[test]
    fn newer_versions_are_refused_in_the_v0_layout_like_a_real_broker() {
        let mut out = BytesMut::new();
        let f = flexible_request(5, 42, Some("future"));
        assert_eq!(plan(&f, &mut out), Ok(Plan::Refuse));
        #[rustfmt::skip]
        let want: &[u8] = &[
            0, 0, 0, 16,     // size
            0, 0, 0, 42,     // correlation_id
            0, 35,           // UNSUPPORTED_VERSION
            0, 0, 0, 1,      // one api key
            0, 18, 0, 0, 0, 4, // ApiVersions 0..=4
        ];
        assert_eq!(&out[..], want);
    }

    #[test]
    fn malformed_requests_are_errors() {
        let mut out = BytesMut::new();
        // Size disagrees with the frame.
        let mut f = flexible_request(3, 1, Some("c"));
        f.push(0);
        assert_eq!(
            plan(&f, &mut out),
            Err(WireError::BadLength("request size"))
        );
        // client_id longer than the frame.
        let mut h = header(3, 1, None);
        h.extend_from_slice(&[0, 0]);
        let n = h.len();
        h[n - 4..n - 2].copy_from_slice(&50i16.to_be_bytes());
        assert_eq!(
            plan(&framed(&h), &mut out),
            Err(WireError::Truncated("client_id"))
        );
        // Negative client_id length other than -1.
        let mut h = header(3, 1, None);
        let n = h.len();
        h[n - 2..].copy_from_slice(&(-2i16).to_be_bytes());
        assert_eq!(
            plan(&framed(&h), &mut out),
            Err(WireError::BadLength("client_id"))
        );
        // Too short to hold a correlation id.
        assert_eq!(
            plan(&framed(&[0, 18, 0, 3]), &mut out),
            Err(WireError::BadLength("request size"))
        );
        assert_eq!(
            plan(&[0, 0, 0, 8], &mut out),
            Err(WireError::Truncated("request header"))
        );
    }

    /// The mock's v2 answer: Produce 0..=10, ApiVersions 0..=2, LeaveGroup 0..=2.
    fn mock_v2_response(correlation: i32, error: i16) -> Vec<u8> {
        let mut r = Vec::new();
        r.extend_from_slice(&correlation.to_be_bytes());
        r.extend_from_slice(&error.to_be_bytes());
        r.extend_from_slice(&3i32.to_be_bytes());
        for (k, min, max) in [(0i16, 0i16, 10i16), (18, 0, 2), (13, 0, 2)] {
            r.extend_from_slice(&k.to_be_bytes());
            r.extend_from_slice(&min.to_be_bytes());
            r.extend_from_slice(&max.to_be_bytes());
        }
        r.extend_from_slice(&0i32.to_be_bytes());
        framed(&r)
    }

    #[test]
    fn v2_response_becomes_the_flexible_layout() {
        let mut out = BytesMut::new();
        translate_v2_response(&mock_v2_response(0x0a0b0c0d, 0), &mut out).unwrap();
        #[rustfmt::skip]
        let want: &[u8] = &[
            0, 0, 0, 33,            // size
            0x0a, 0x0b, 0x0c, 0x0d, // correlation_id (response header v0)
            0, 0,                   // error_code
            4,                      // compact array: 3 entries + 1
            0, 0, 0, 0, 0, 10, 0,   // Produce 0..=10, no tags
            0, 18, 0, 0, 0, 4, 0,   // ApiVersions 0..=4: served by the forwarder
            0, 13, 0, 0, 0, 2, 0,   // LeaveGroup 0..=2
            0, 0, 0, 0,             // throttle_time_ms
            0,                      // no tagged fields
        ];
        assert_eq!(&out[..], want);
    }

    #[test]
    fn translation_keeps_error_codes_and_appends_to_the_buffer() {
        let mut out = BytesMut::from(&b"xy"[..]);
        translate_v2_response(&mock_v2_response(1, 7), &mut out).unwrap();
        assert_eq!(&out[..2], b"xy");
        assert_eq!(&out[2..6], &33i32.to_be_bytes());
        assert_eq!(&out[10..12], &7i16.to_be_bytes());
    }

    #[test]
    fn many_api_keys_take_a_multi_byte_varint() {
        let mut r = Vec::new();
        r.extend_from_slice(&1i32.to_be_bytes());
        r.extend_from_slice(&0i16.to_be_bytes());
        r.extend_from_slice(&200i32.to_be_bytes());
        for k in 0..200i16 {
            r.extend_from_slice(&k.to_be_bytes());
            r.extend_from_slice(&[0, 0, 0, 1]);
        }
        r.extend_from_slice(&0i32.to_be_bytes());
        let mut out = BytesMut::new();
        translate_v2_response(&framed(&r), &mut out).unwrap();
        // 201 = 0xc9: low 7 bits with the continuation bit, then 1.
        assert_eq!(&out[10..12], &[0xc9, 0x01]);
        assert_eq!(out.len(), 4 + 4 + 2 + 2 + 200 * 7 + 4 + 1);
    }

    #[test]
    fn malformed_responses_are_errors() {
        let good = mock_v2_response(1, 0);
        let mut out = BytesMut::new();
        for cut in [0, 3, 6, 9, 12, good.len() - 1] {
            let mut f = good[..cut].to_vec();
            if f.len() >= 4 {
                let size = (f.len() - 4) as i32;
                f[..4].copy_from_slice(&size.to_be_bytes());
            }
            assert!(translate_v2_response(&f, &mut out).is_err(), "cut at {cut}");
        }
        let mut f = good.clone();
        f[10..14].copy_from_slice(&1000i32.to_be_bytes());
        assert_eq!(
            translate_v2_response(&f, &mut out),
            Err(WireError::BadLength("api_keys count"))
        );
        let mut f = good;
        f[3] += 1;
        assert_eq!(
            translate_v2_response(&f, &mut out),
            Err(WireError::BadLength("response size"))
        );
    }
}
