//! The HTTP auth hook: asks an external service whether a CONNECT, a PUBLISH
//! topic or a SUBSCRIBE filter is allowed, and remembers the answers.
//! [`super`]'s authenticator calls [`HttpHook::check`] at CONNECT; the
//! session calls [`HttpHook::cached`] (then `check` on a miss) per PUBLISH
//! topic / SUBSCRIBE filter when `check_publish` / `check_subscribe` are on.
//!
//! # Wire protocol
//!
//! One `POST` to `auth.http.url` per question, `Content-Type:
//! application/json`, HTTP/1.1 over kept-alive connections:
//!
//! ```json
//! {
//!   "action":    "connect" | "publish" | "subscribe",
//!   "client_id": "the MQTT client id",
//!   "username":  "CONNECT user name" | null,
//!   "password":  "CONNECT password, when it is valid UTF-8" | null,
//!   "password_base64": "standard base64 with padding; present only when the password is not UTF-8 (then password is null)",
//!   "device_id": "the device id (publish/subscribe), or the certificate identity at connect" | null,
//!   "peer":      "ip:port of the device",
//!   "topic":     "topic name (publish) or filter (subscribe)" | null
//! }
//! ```
//!
//! Answers:
//!
//! | response | verdict |
//! |---|---|
//! | `200` with `{"result":"allow","device_id":"dev-1"}` (`device_id` optional) | allow; at CONNECT the device id, when given and not empty, becomes the identity |
//! | `200` with `{"result":"deny","reason":"why"}` (`reason` optional) | deny |
//! | `204` | allow |
//! | `401`, `403` | deny |
//! | any other status (redirects are not followed), a `200` body that is not the JSON above (unknown fields are ignored) or is over 64 KiB, a connect error, no complete answer within `timeout_ms` | unavailable: the caller applies `on_error` |
//!
//! # Why it pools and caches
//!
//! At 100k devices a short-lived HTTP connection per question leaves the
//! proxy's side of every closed connection in TIME_WAIT and runs out of
//! ephemeral ports during a reconnect storm. So the client is built once
//! and keeps up to `max_idle_connections` connections alive (TCP
//! keep-alive on, idle ones closed after 90 s), and that same number caps
//! the requests in flight: a burst waits for a pooled connection instead of
//! opening (and later closing) thousands of extra ones. Time spent waiting
//! for a connection counts against `timeout_ms`, the whole-question
//! deadline. `max_idle_connections = 0` is taken as 1. The bound is close,
//! not exact: hyper hands a finished connection back to the pool from a
//! task of its own, so on a multi-threaded runtime a question can now and
//! then miss it and open one more; such extras join the pool while it
//! has room.
//!
//! Allow answers are reused for `allow_cache_ttl_ms` and deny answers for
//! `deny_cache_ttl_ms` (`0` disables caching that answer); unavailable
//! answers never are. The cache key is every field of the question but
//! `peer` (a reconnect from a new source port reuses the answer); the
//! password is kept only as a 128-bit keyed digest (two std `RandomState`
//! hashers, SipHash today, with per-process random keys), never in clear. At most
//! `cache_max_entries` answers are kept: when full, expired ones are swept
//! out first, and if it is still full the new answer is simply not cached
//! (kept by `cache.rs` in a `moka` cache). Concurrent misses for the same
//! question each go to the service; they are not coalesced (a connection
//! handles its own packets in order, so that only happens across
//! connections sharing a key).

mod cache;

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use base64::Engine as _;
use serde::{Deserialize, Serialize};
use tokio::sync::Semaphore;

use self::cache::AnswerCache;
use crate::auth::config::HttpAuthConfig;
use crate::limits::LogThrottle;
use crate::metrics as m;

/// How long an idle pooled connection to the service is kept.
const POOL_IDLE_TIMEOUT: Duration = Duration::from_secs(90);
/// TCP keep-alive on connections to the service, so a silently dropped
/// connection is noticed instead of failing the next question.
const TCP_KEEPALIVE: Duration = Duration::from_secs(60);
/// Largest answer body read; a bigger one is unavailable.
const MAX_BODY_BYTES: usize = 64 * 1024;
/// At most one "no usable answer" warning per this interval.
const WARN_INTERVAL: Duration = Duration::from_secs(1);

/// Why the hook could not be built.
#[derive(Debug, thiserror::Error)]
pub enum HookError {
    /// `auth.http.url` is not an absolute `http://` or `https://` URL.
    #[error("auth hook url {url:?} is not usable: {reason}")]
    BadUrl {
        /// The configured URL.
        url: String,
        /// What is wrong with it.
        reason: String,
    },
    /// reqwest could not build the HTTP client (TLS backend, resolver).
    #[error("cannot build the auth hook http client: {0}")]
    Client(String),
}

/// What is being asked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum HookAction {
    /// May this client connect (and as which device)?
    Connect,
    /// May this device publish to this topic?
    Publish,
    /// May this device subscribe to this filter?
    Subscribe,
}

impl HookAction {
    /// The `action` value on the wire.
    fn wire_name(self) -> &'static str {
        match self {
            HookAction::Connect => "connect",
            HookAction::Publish => "publish",
            HookAction::Subscribe => "subscribe",
        }
    }
}

/// One question to the service. Borrowed, so asking costs no copies.
#[derive(Clone, Copy)]
pub struct HookRequest<'a> {
    /// What is being asked.
    pub action: HookAction,
    /// The MQTT client id.
    pub client_id: &'a str,
    /// The CONNECT user name, if any.
    pub username: Option<&'a str>,
    /// The CONNECT password (Connect only). Sent as `"password"` when it is
    /// valid UTF-8, else as standard base64 in `"password_base64"`; cached
    /// only as a keyed digest.
    pub password: Option<&'a [u8]>,
    /// The device id established at CONNECT (Publish/Subscribe), or the
    /// certificate identity at Connect if any.
    pub device_id: Option<&'a str>,
    /// Source address `ip:port`.
    pub peer: &'a str,
    /// Topic name (Publish) or filter (Subscribe).
    pub topic: Option<&'a str>,
}

impl fmt::Debug for HookRequest<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HookRequest")
            .field("action", &self.action)
            .field("client_id", &self.client_id)
            .field("username", &self.username)
            .field("password", &self.password.map(|_| "<redacted>"))
            .field("device_id", &self.device_id)
            .field("peer", &self.peer)
            .field("topic", &self.topic)
            .finish()
    }
}

/// The service's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HookVerdict {
    /// Allowed; the service may name the device id (used as the identity at
    /// Connect). An empty `device_id` on the wire reads as `None`.
    Allow {
        /// The device id the service assigned, if it named one.
        device_id: Option<String>,
    },
    /// Refused.
    Deny {
        /// The service's reason, for the log.
        reason: Option<String>,
    },
    /// No usable answer (timeout, connection refused, 5xx, unparsable body);
    /// the caller applies `on_error`. The text says which.
    Unavailable(String),
}

/// The HTTP auth hook: a pooled client plus an answer cache. `Send + Sync`;
/// build one at start-up and share it as `Arc<HttpHook>`.
pub struct HttpHook {
    /// Built once; owns the keep-alive pool.
    client: reqwest::Client,
    /// Where questions are POSTed.
    url: reqwest::Url,
    /// `url` with any password in it replaced, for logs and `Debug`.
    url_for_logs: String,
    /// Whole-question deadline, waiting for a connection included.
    timeout: Duration,
    /// Caps requests in flight at the pool size, so bursts reuse pooled
    /// connections instead of opening extra ones that end in TIME_WAIT.
    in_flight: Semaphore,
    /// Permits in `in_flight`, for messages.
    in_flight_max: usize,
    /// Allow and deny answers, by question.
    cache: AnswerCache,
    /// Rate limit for the "no usable answer" warning.
    unavailable_warn: LogThrottle,
}

impl fmt::Debug for HttpHook {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HttpHook")
            .field("url", &self.url_for_logs)
            .field("timeout", &self.timeout)
            .field("cache", &self.cache)
            .finish_non_exhaustive()
    }
}

/// The request body.
#[derive(Serialize)]
struct WireRequest<'a> {
    action: &'static str,
    client_id: &'a str,
    username: Option<&'a str>,
    password: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    password_base64: Option<String>,
    device_id: Option<&'a str>,
    peer: &'a str,
    topic: Option<&'a str>,
}

impl<'a> WireRequest<'a> {
    fn new(req: &HookRequest<'a>) -> Self {
        let (password, password_base64) = match req.password {
            None => (None, None),
            Some(bytes) => match std::str::from_utf8(bytes) {
                Ok(text) => (Some(text), None),
                Err(_) => (
                    None,
                    Some(base64::engine::general_purpose::STANDARD.encode(bytes)),
                ),
            },
        };
        WireRequest {
            action: req.action.wire_name(),
            client_id: req.client_id,
            username: req.username,
            password,
            password_base64,
            device_id: req.device_id,
            peer: req.peer,
            topic: req.topic,
        }
    }
}

/// The `200` answer body.
#[derive(Deserialize)]
struct WireAnswer {
    result: WireResult,
    #[serde(default)]
    device_id: Option<String>,
    #[serde(default)]
    reason: Option<String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "lowercase")]
enum WireResult {
    Allow,
    Deny,
}

impl HttpHook {
    /// Builds the pooled client and an empty cache. Does no I/O.
    pub fn new(cfg: &HttpAuthConfig) -> Result<HttpHook, HookError> {
        let bad_url = |reason: String| HookError::BadUrl {
            url: cfg.url.clone(),
            reason,
        };
        let url = reqwest::Url::parse(&cfg.url).map_err(|e| bad_url(e.to_string()))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(bad_url(format!(
                "scheme {:?} is not http or https",
                url.scheme()
            )));
        }
        if url.host_str().is_none_or(str::is_empty) {
            return Err(bad_url("no host".to_owned()));
        }
        let mut redacted = url.clone();
        if redacted.password().is_some() {
            // Fails only for URLs that cannot carry a password; this one does.
            let _ = redacted.set_password(Some("redacted"));
        }
        let url_for_logs = redacted.to_string();
        let timeout = Duration::from_millis(cfg.timeout_ms.max(1));
        // Zero idle connections would mean a fresh connection per question,
        // the TIME_WAIT storm this hook exists to avoid; keep at least one.
        let pool = cfg.max_idle_connections.max(1);
        let client = reqwest::Client::builder()
            .http1_only()
            .pool_max_idle_per_host(pool)
            .pool_idle_timeout(POOL_IDLE_TIMEOUT)
            .tcp_keepalive(TCP_KEEPALIVE)
            .tcp_nodelay(true)
            .connect_timeout(timeout)
            .timeout(timeout)
            // A redirected POST would resend the password elsewhere.
            .redirect(reqwest::redirect::Policy::none())
            // The service is addressed directly; HTTP_PROXY and friends in
            // the proxy's environment are not meant for it.
            .no_proxy()
            .user_agent(concat!("mqtt-kafka-proxy/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| HookError::Client(error_chain(&e)))?;
        Ok(HttpHook {
            client,
            url,
            url_for_logs,
            timeout,
            in_flight: Semaphore::new(pool),
            in_flight_max: pool,
            cache: AnswerCache::new(
                Duration::from_millis(cfg.allow_cache_ttl_ms),
                Duration::from_millis(cfg.deny_cache_ttl_ms),
                cfg.cache_max_entries,
            ),
            unavailable_warn: LogThrottle::new(WARN_INTERVAL),
        })
    }

    /// Answer from the cache without I/O, if a fresh one exists (used on the
    /// hot publish path).
    pub fn cached(&self, req: &HookRequest<'_>) -> Option<HookVerdict> {
        let password = self.cache.password_digest(req.password);
        self.cache.lookup(req, password, Instant::now())
    }

    /// Cached answer, or POST to the service (with `timeout_ms` as the
    /// whole-request deadline) and cache Allow for `allow_cache_ttl_ms` and
    /// Deny for `deny_cache_ttl_ms`; Unavailable is never cached.
    pub async fn check(&self, req: &HookRequest<'_>) -> HookVerdict {
        let password = self.cache.password_digest(req.password);
        if let Some(verdict) = self.cache.lookup(req, password, Instant::now()) {
            return verdict;
        }
        let verdict = self.ask(req).await;
        self.cache.store(req, password, &verdict, Instant::now());
        verdict
    }

    /// Entries currently cached (for tests/metrics).
    pub fn cache_len(&self) -> usize {
        self.cache.len()
    }

    /// One round trip under the whole-question deadline, with metrics and
    /// the rate-limited warning.
    async fn ask(&self, req: &HookRequest<'_>) -> HookVerdict {
        let started = Instant::now();
        let got_slot = AtomicBool::new(false);
        let verdict =
            match tokio::time::timeout(self.timeout, self.round_trip(req, &got_slot)).await {
                Ok(verdict) => verdict,
                Err(_) if got_slot.load(Ordering::Relaxed) => HookVerdict::Unavailable(format!(
                    "no answer within {} ms",
                    self.timeout.as_millis()
                )),
                Err(_) => HookVerdict::Unavailable(format!(
                    "no free connection to the service within {} ms (all {} busy)",
                    self.timeout.as_millis(),
                    self.in_flight_max
                )),
            };
        metrics::histogram!(m::AUTH_HTTP_SECONDS).record(started.elapsed().as_secs_f64());
        let result = match &verdict {
            HookVerdict::Allow { .. } => "allow",
            HookVerdict::Deny { reason } => {
                tracing::debug!(
                    action = ?req.action,
                    client_id = req.client_id,
                    reason = reason.as_deref(),
                    "auth hook denied"
                );
                "deny"
            }
            HookVerdict::Unavailable(why) => {
                if let Some(suppressed) = self.unavailable_warn.allow() {
                    tracing::warn!(
                        url = %self.url_for_logs,
                        action = ?req.action,
                        client_id = req.client_id,
                        error = %why,
                        suppressed,
                        "auth hook gave no usable answer"
                    );
                }
                "error"
            }
        };
        metrics::counter!(m::AUTH_HTTP_REQUESTS, "result" => result).increment(1);
        verdict
    }

    /// Waits for a connection slot, POSTs and reads the answer; sets
    /// `got_slot` once the slot is taken, so a timeout can say which part
    /// was slow. The caller bounds it with the deadline.
    async fn round_trip(&self, req: &HookRequest<'_>, got_slot: &AtomicBool) -> HookVerdict {
        // The semaphore is never closed, so this cannot fail; say so if it does.
        let Ok(_permit) = self.in_flight.acquire().await else {
            return HookVerdict::Unavailable("auth hook is shut down".to_owned());
        };
        got_slot.store(true, Ordering::Relaxed);
        let response = match self
            .client
            .post(self.url.clone())
            .json(&WireRequest::new(req))
            .send()
            .await
        {
            Ok(response) => response,
            // reqwest's own deadline (the same length) may fire first.
            Err(e) if e.is_timeout() => {
                return HookVerdict::Unavailable(format!(
                    "no answer within {} ms",
                    self.timeout.as_millis()
                ))
            }
            Err(e) if e.is_connect() => {
                return HookVerdict::Unavailable(format!(
                    "cannot connect to the service: {}",
                    error_chain(&e)
                ))
            }
            Err(e) => {
                return HookVerdict::Unavailable(format!("request failed: {}", error_chain(&e)))
            }
        };
        let status = response.status().as_u16();
        // Read every answer to its end: only a fully read response puts the
        // connection back in the pool.
        let body = read_body(response).await;
        match status {
            200 => match body {
                Ok(body) => parse_answer(&body),
                Err(why) => HookVerdict::Unavailable(why),
            },
            204 => HookVerdict::Allow { device_id: None },
            401 | 403 => HookVerdict::Deny { reason: None },
            other => HookVerdict::Unavailable(format!("unexpected status {other}")),
        }
    }
}

/// The whole body, up to [`MAX_BODY_BYTES`].
async fn read_body(mut response: reqwest::Response) -> Result<Vec<u8>, String> {
    let mut body = Vec::new();
    loop {
        match response.chunk().await {
            Ok(Some(chunk)) => {
                if body.len() + chunk.len() > MAX_BODY_BYTES {
                    return Err(format!("answer body over {MAX_BODY_BYTES} bytes"));
                }
                body.extend_from_slice(&chunk);
            }
            Ok(None) => return Ok(body),
            Err(e) => return Err(format!("reading the answer failed: {}", error_chain(&e))),
        }
    }
}

/// A `200` body: `{"result":"allow"|"deny", "device_id"?, "reason"?}`.
fn parse_answer(body: &[u8]) -> HookVerdict {
    match serde_json::from_slice::<WireAnswer>(body) {
        Ok(WireAnswer {
            result: WireResult::Allow,
            device_id,
            ..
        }) => HookVerdict::Allow {
            device_id: device_id.filter(|id| !id.is_empty()),
        },
        Ok(WireAnswer {
            result: WireResult::Deny,
            reason,
            ..
        }) => HookVerdict::Deny { reason },
        Err(e) => HookVerdict::Unavailable(format!(
            "200 answer is not {{\"result\":\"allow\"|\"deny\",...}}: {e}"
        )),
    }
}

/// An error and its sources, `outer: inner: root` (reqwest's own message
/// hides the cause, e.g. "connection refused").
fn error_chain(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{json, Value};
    use std::sync::atomic::AtomicUsize;
    use std::sync::{Arc, Mutex};
    use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
    use tokio::net::{TcpListener, TcpStream};
    use tokio::task::JoinHandle;

    type Handler = Arc<dyn Fn(&Value) -> (u16, String) + Send + Sync>;

    /// What the test server saw of one request.
    #[derive(Debug, Clone)]
    struct Seen {
        request_line: String,
        /// Lower-cased names.
        headers: Vec<(String, String)>,
        body: Value,
    }

    impl Seen {
        fn header(&self, name: &str) -> Option<&str> {
            self.headers
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, v)| v.as_str())
        }
    }

    /// A tiny keep-alive HTTP/1.1 server answering by a closure over the
    /// JSON body, counting TCP connections and requests.
    struct TestServer {
        url: String,
        connections: Arc<AtomicUsize>,
        requests: Arc<AtomicUsize>,
        seen: Arc<Mutex<Vec<Seen>>>,
        task: JoinHandle<()>,
    }

    impl Drop for TestServer {
        fn drop(&mut self) {
            self.task.abort();
        }
    }

    impl TestServer {
        async fn start(
            delay: Duration,
            handler: impl Fn(&Value) -> (u16, String) + Send + Sync + 'static,
        ) -> TestServer {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = listener.local_addr().unwrap();
            let connections = Arc::new(AtomicUsize::new(0));
            let requests = Arc::new(AtomicUsize::new(0));
            let seen = Arc::new(Mutex::new(Vec::new()));
            let handler: Handler = Arc::new(handler);
            let task = tokio::spawn({
                let connections = connections.clone();
                let requests = requests.clone();
                let seen = seen.clone();
                async move {
                    loop {
                        let Ok((stream, _)) = listener.accept().await else {
                            return;
                        };
                        connections.fetch_add(1, Ordering::SeqCst);
                        tokio::spawn(serve_connection(
                            stream,
                            handler.clone(),
                            delay,
                            requests.clone(),
                            seen.clone(),
                        ));
                    }
                }
            });
            TestServer {
                url: format!("http://{addr}/auth"),
                connections,
                requests,
                seen,
                task,
            }
        }

        fn connections(&self) -> usize {
            self.connections.load(Ordering::SeqCst)
        }

        fn requests(&self) -> usize {
            self.requests.load(Ordering::SeqCst)
        }

        fn last(&self) -> Seen {
            self.seen.lock().unwrap().last().cloned().unwrap()
        }
    }

    async fn serve_connection(
        stream: TcpStream,
        handler: Handler,
        delay: Duration,
        requests: Arc<AtomicUsize>,
        seen: Arc<Mutex<Vec<Seen>>>,
    ) -> std::io::Result<()> {
        let (read, mut write) = stream.into_split();
        let mut read = BufReader::new(read);
        let mut line = String::new();
        loop {
            line.clear();
            if read.read_line(&mut line).await? == 0 {
                return Ok(());
            }
            let request_line = line.trim_end().to_owned();
            let mut headers = Vec::new();
            let mut length = 0;
            loop {
                line.clear();
                if read.read_line(&mut line).await? == 0 {
                    return Ok(());
                }
                let header = line.trim_end();
                if header.is_empty() {
                    break;
                }
                let (name, value) = header.split_once(':').expect("header line");
                let (name, value) = (name.trim().to_ascii_lowercase(), value.trim().to_owned());
                if name == "content-length" {
                    length = value.parse().expect("content-length");
                }
                headers.push((name, value));
            }
            let mut body = vec![0; length];
            read.read_exact(&mut body).await?;
            let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            requests.fetch_add(1, Ordering::SeqCst);
            seen.lock().unwrap().push(Seen {
                request_line,
                headers,
                body: body.clone(),
            });
            if !delay.is_zero() {
                // A slow service, not synchronisation.
                tokio::time::sleep(delay).await;
            }
            let (status, text) = handler(&body);
            let head = if status == 204 {
                "HTTP/1.1 204 No Content\r\n\r\n".to_owned()
            } else {
                format!(
                    "HTTP/1.1 {status} Answer\r\ncontent-type: application/json\r\ncontent-length: {}\r\n\r\n",
                    text.len()
                )
            };
            write.write_all(head.as_bytes()).await?;
            write.write_all(text.as_bytes()).await?;
        }
    }

    fn config(url: &str) -> HttpAuthConfig {
        HttpAuthConfig {
            url: url.to_owned(),
            timeout_ms: 10_000,
            ..HttpAuthConfig::default()
        }
    }

    fn hook(url: &str) -> HttpHook {
        HttpHook::new(&config(url)).unwrap()
    }

    fn connect<'a>(client_id: &'a str, password: &'a [u8]) -> HookRequest<'a> {
        HookRequest {
            action: HookAction::Connect,
            client_id,
            username: Some("user"),
            password: Some(password),
            device_id: None,
            peer: "10.0.0.1:5555",
            topic: None,
        }
    }

    fn allow() -> (u16, String) {
        (200, r#"{"result":"allow"}"#.to_owned())
    }

    fn is_unavailable(v: &HookVerdict) -> bool {
        matches!(v, HookVerdict::Unavailable(_))
    }

    #[tokio::test]
    async fn allow_with_device_id_and_the_request_carries_every_field() {
        let server = TestServer::start(Duration::ZERO, |_| {
            (
                200,
                r#"{"result":"allow","device_id":"dev-7","extra":1}"#.to_owned(),
            )
        })
        .await;
        let hook = hook(&server.url);
        let verdict = hook.check(&connect("c1", b"secret")).await;
        assert_eq!(
            verdict,
            HookVerdict::Allow {
                device_id: Some("dev-7".to_owned())
            }
        );
        let seen = server.last();
        assert_eq!(seen.request_line, "POST /auth HTTP/1.1");
        assert_eq!(seen.header("content-type"), Some("application/json"));
        assert_eq!(
            seen.body,
            json!({
                "action": "connect",
                "client_id": "c1",
                "username": "user",
                "password": "secret",
                "device_id": null,
                "peer": "10.0.0.1:5555",
                "topic": null,
            })
        );
    }

    #[tokio::test]
    async fn publish_and_subscribe_send_topic_and_device_id() {
        let server = TestServer::start(Duration::ZERO, |_| allow()).await;
        let hook = hook(&server.url);
        for (action, name) in [
            (HookAction::Publish, "publish"),
            (HookAction::Subscribe, "subscribe"),
        ] {
            let req = HookRequest {
                action,
                client_id: "c1",
                username: None,
                password: None,
                device_id: Some("dev-1"),
                peer: "[::1]:4000",
                topic: Some("t/+/x"),
            };
            assert_eq!(
                hook.check(&req).await,
                HookVerdict::Allow { device_id: None }
            );
            assert_eq!(
                server.last().body,
                json!({
                    "action": name,
                    "client_id": "c1",
                    "username": null,
                    "password": null,
                    "device_id": "dev-1",
                    "peer": "[::1]:4000",
                    "topic": "t/+/x",
                })
            );
        }
    }

    #[tokio::test]
    async fn non_utf8_password_goes_as_base64() {
        let server = TestServer::start(Duration::ZERO, |_| allow()).await;
        let hook = hook(&server.url);
        hook.check(&connect("c1", &[0xff, 0x00, 0x41])).await;
        let body = server.last().body;
        assert_eq!(body["password"], Value::Null);
        assert_eq!(body["password_base64"], "/wBB");
    }

    #[tokio::test]
    async fn deny_via_json_carries_the_reason() {
        let server = TestServer::start(Duration::ZERO, |_| {
            (200, r#"{"result":"deny","reason":"banned"}"#.to_owned())
        })
        .await;
        let verdict = hook(&server.url).check(&connect("c1", b"pw")).await;
        assert_eq!(
            verdict,
            HookVerdict::Deny {
                reason: Some("banned".to_owned())
            }
        );
    }

    #[tokio::test]
    async fn no_content_is_allow() {
        let server = TestServer::start(Duration::ZERO, |_| (204, String::new())).await;
        let verdict = hook(&server.url).check(&connect("c1", b"pw")).await;
        assert_eq!(verdict, HookVerdict::Allow { device_id: None });
    }

    #[tokio::test]
    async fn unauthorized_and_forbidden_are_deny() {
        for status in [401, 403] {
            let server =
                TestServer::start(Duration::ZERO, move |_| (status, "nope".to_owned())).await;
            let verdict = hook(&server.url).check(&connect("c1", b"pw")).await;
            assert_eq!(verdict, HookVerdict::Deny { reason: None }, "{status}");
        }
    }

    #[tokio::test]
    async fn server_error_is_unavailable_and_not_cached() {
        let server = TestServer::start(Duration::ZERO, |_| (500, "{}".to_owned())).await;
        let hook = hook(&server.url);
        let req = connect("c1", b"pw");
        match hook.check(&req).await {
            HookVerdict::Unavailable(why) => assert!(why.contains("500"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(hook.cache_len(), 0);
        assert_eq!(hook.cached(&req), None);
        assert!(is_unavailable(&hook.check(&req).await));
        assert_eq!(server.requests(), 2);
    }

    #[tokio::test]
    async fn other_statuses_and_bad_bodies_are_unavailable() {
        for (status, body) in [
            (200, "not json"),
            (200, r#"{"result":"maybe"}"#),
            (200, r#"{"device_id":"d"}"#),
            (302, ""),
            (404, ""),
        ] {
            let server =
                TestServer::start(Duration::ZERO, move |_| (status, body.to_owned())).await;
            let verdict = hook(&server.url).check(&connect("c1", b"pw")).await;
            assert!(is_unavailable(&verdict), "{status} {body}: {verdict:?}");
        }
    }

    #[tokio::test]
    async fn oversized_body_is_unavailable() {
        let big = format!(
            r#"{{"result":"allow","reason":"{}"}}"#,
            "x".repeat(MAX_BODY_BYTES)
        );
        let server = TestServer::start(Duration::ZERO, move |_| (200, big.clone())).await;
        let verdict = hook(&server.url).check(&connect("c1", b"pw")).await;
        assert!(is_unavailable(&verdict), "{verdict:?}");
    }

    #[tokio::test]
    async fn slow_service_is_unavailable() {
        let server = TestServer::start(Duration::from_secs(2), |_| allow()).await;
        let hook = HttpHook::new(&HttpAuthConfig {
            timeout_ms: 200,
            ..config(&server.url)
        })
        .unwrap();
        match hook.check(&connect("c1", b"pw")).await {
            HookVerdict::Unavailable(why) => assert!(why.contains("200 ms"), "{why}"),
            other => panic!("{other:?}"),
        }
        assert_eq!(hook.cache_len(), 0);
    }

    #[tokio::test]
    async fn connection_refused_is_unavailable() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let hook = hook(&format!("http://{addr}/auth"));
        match hook.check(&connect("c1", b"pw")).await {
            HookVerdict::Unavailable(why) => assert!(why.contains("connect"), "{why}"),
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn allow_is_cached() {
        let server = TestServer::start(Duration::ZERO, |_| {
            (200, r#"{"result":"allow","device_id":"dev-1"}"#.to_owned())
        })
        .await;
        let hook = hook(&server.url);
        let req = connect("c1", b"pw");
        assert_eq!(hook.cached(&req), None);
        let first = hook.check(&req).await;
        assert_eq!(server.requests(), 1);
        assert_eq!(hook.check(&req).await, first);
        assert_eq!(hook.cached(&req), Some(first));
        assert_eq!(server.requests(), 1);
        assert_eq!(hook.cache_len(), 1);
    }

    #[tokio::test]
    async fn deny_is_cached() {
        let server = TestServer::start(Duration::ZERO, |_| (403, String::new())).await;
        let hook = hook(&server.url);
        let req = connect("c1", b"pw");
        let first = hook.check(&req).await;
        assert_eq!(first, HookVerdict::Deny { reason: None });
        assert_eq!(hook.check(&req).await, first);
        assert_eq!(hook.cached(&req), Some(first));
        assert_eq!(server.requests(), 1);
    }

    #[tokio::test]
    async fn every_field_is_part_of_the_key() {
        let server = TestServer::start(Duration::ZERO, |body| {
            if body["password"] == "good" {
                allow()
            } else {
                (403, String::new())
            }
        })
        .await;
        let hook = hook(&server.url);
        let good = connect("c1", b"good");
        let bad = connect("c1", b"bad");
        assert_eq!(
            hook.check(&good).await,
            HookVerdict::Allow { device_id: None }
        );
        assert_eq!(hook.check(&bad).await, HookVerdict::Deny { reason: None });
        assert_eq!(server.requests(), 2);
        assert_eq!(hook.cache_len(), 2);
        assert_eq!(hook.cached(&connect("c1", b"other")), None);
        assert_eq!(
            hook.cached(&HookRequest {
                password: None,
                ..good
            }),
            None
        );
        let variants = [
            HookRequest {
                client_id: "c2",
                ..good
            },
            HookRequest {
                username: None,
                ..good
            },
            HookRequest {
                device_id: Some("d"),
                ..good
            },
            HookRequest {
                topic: Some("t"),
                ..good
            },
            HookRequest {
                action: HookAction::Publish,
                ..good
            },
        ];
        for req in variants {
            assert_eq!(hook.cached(&req), None, "{req:?}");
        }
        // The peer is not part of the key: a reconnect from a new port reuses it.
        assert!(hook
            .cached(&HookRequest {
                peer: "10.0.0.2:1",
                ..good
            })
            .is_some());
    }

    #[tokio::test]
    async fn answers_expire_after_their_ttl() {
        let server = TestServer::start(Duration::ZERO, |body| {
            if body["client_id"] == "allowed" {
                allow()
            } else {
                (403, String::new())
            }
        })
        .await;
        let hook = HttpHook::new(&HttpAuthConfig {
            allow_cache_ttl_ms: 60_000,
            deny_cache_ttl_ms: 10_000,
            ..config(&server.url)
        })
        .unwrap();
        let allowed = connect("allowed", b"pw");
        let denied = connect("denied", b"pw");
        hook.check(&allowed).await;
        hook.check(&denied).await;
        let digest = hook.cache.password_digest(Some(b"pw"));
        let now = Instant::now();
        let later = |ms| now + Duration::from_millis(ms);
        assert!(hook.cache.lookup(&denied, digest, later(9_000)).is_some());
        assert!(hook.cache.lookup(&denied, digest, later(10_001)).is_none());
        assert_eq!(hook.cache_len(), 1, "expired entry removed on read");
        assert!(hook.cache.lookup(&allowed, digest, later(59_000)).is_some());
        assert!(hook.cache.lookup(&allowed, digest, later(60_001)).is_none());
        assert_eq!(hook.cache_len(), 0);
    }

    #[tokio::test]
    async fn zero_ttl_disables_caching() {
        let server = TestServer::start(Duration::ZERO, |_| allow()).await;
        let hook = HttpHook::new(&HttpAuthConfig {
            allow_cache_ttl_ms: 0,
            ..config(&server.url)
        })
        .unwrap();
        let req = connect("c1", b"pw");
        hook.check(&req).await;
        hook.check(&req).await;
        assert_eq!(server.requests(), 2);
        assert_eq!(hook.cache_len(), 0);
    }

    #[tokio::test]
    async fn full_cache_sweeps_expired_then_skips() {
        let hook = HttpHook::new(&HttpAuthConfig {
            cache_max_entries: 2,
            allow_cache_ttl_ms: 1_000,
            ..config("http://127.0.0.1:9/auth")
        })
        .unwrap();
        let allow = HookVerdict::Allow { device_id: None };
        // The cache's clock runs an hour ahead of moka's, so moka's own
        // eviction at the real deadlines cannot race this test's steps.
        let t0 = Instant::now() + Duration::from_secs(3600);
        let at = |ms| t0 + Duration::from_millis(ms);
        let (a, b, c, d) = (
            connect("a", b"pw"),
            connect("b", b"pw"),
            connect("c", b"pw"),
            connect("d", b"pw"),
        );
        let pw = hook.cache.password_digest(Some(b"pw"));
        hook.cache.store(&a, pw, &allow, at(0));
        hook.cache.store(&b, pw, &allow, at(500));
        hook.cache.store(&c, pw, &allow, at(600));
        assert_eq!(hook.cache_len(), 2);
        assert_eq!(hook.cache.full_skips(), 1);
        assert!(hook.cache.lookup(&c, pw, at(600)).is_none());
        // Refreshing a cached key is not growth.
        hook.cache.store(&b, pw, &allow, at(700));
        assert_eq!(hook.cache.full_skips(), 1);
        // `a` has expired by now: swept, and `d` fits.
        hook.cache.store(&d, pw, &allow, at(1_100));
        assert_eq!(hook.cache_len(), 2);
        assert!(hook.cache.lookup(&d, pw, at(1_100)).is_some());
        assert!(hook.cache.lookup(&b, pw, at(1_100)).is_some());
        assert_eq!(hook.cache.full_skips(), 1);
    }

    // The pooling tests run on the current-thread runtime, where hyper's
    // pool-return task always runs before the next question looks for an
    // idle connection; on a multi-threaded one the counts are only close
    // (see the module doc).
    #[tokio::test]
    async fn sequential_questions_share_one_connection() {
        let server = TestServer::start(Duration::ZERO, |_| allow()).await;
        let hook = hook(&server.url);
        for i in 0..50 {
            let id = format!("c{i}");
            let verdict = hook.check(&connect(&id, b"pw")).await;
            assert_eq!(verdict, HookVerdict::Allow { device_id: None });
        }
        assert_eq!(server.requests(), 50);
        assert_eq!(server.connections(), 1);
    }

    #[tokio::test]
    async fn concurrent_questions_stay_within_the_pool() {
        let server = TestServer::start(Duration::ZERO, |_| allow()).await;
        let hook = Arc::new(
            HttpHook::new(&HttpAuthConfig {
                max_idle_connections: 8,
                ..config(&server.url)
            })
            .unwrap(),
        );
        let tasks: Vec<_> = (0..50)
            .map(|i| {
                let hook = hook.clone();
                tokio::spawn(async move {
                    let id = format!("burst{i}");
                    hook.check(&connect(&id, b"pw")).await
                })
            })
            .collect();
        for task in tasks {
            assert_eq!(task.await.unwrap(), HookVerdict::Allow { device_id: None });
        }
        let opened = server.connections();
        assert!(opened <= 8, "{opened} connections for 8 slots");
        for i in 0..20 {
            let id = format!("after{i}");
            hook.check(&connect(&id, b"pw")).await;
        }
        assert_eq!(server.requests(), 70);
        assert_eq!(
            server.connections(),
            opened,
            "sequential batch reused the pool"
        );
    }

    #[test]
    fn bad_urls_are_refused() {
        for url in ["", "not a url", "ftp://host/auth", "unix:/tmp/sock"] {
            let err = HttpHook::new(&config(url)).unwrap_err();
            assert!(matches!(err, HookError::BadUrl { .. }), "{url}: {err}");
        }
        assert!(HttpHook::new(&config("https://auth.example:8443/check")).is_ok());
    }

    #[test]
    fn hook_is_shareable() {
        fn shareable<T: Send + Sync>() {}
        shareable::<HttpHook>();
    }

    #[test]
    fn debug_output_hides_secrets() {
        let hook = hook("http://svc:hunter2@127.0.0.1:9/auth");
        assert!(!format!("{hook:?}").contains("hunter2"));
        let req = connect("c1", b"hunter2");
        assert!(!format!("{req:?}").contains("hunter2"));
    }

    #[test]
    fn password_digest_is_stable_and_distinguishes() {
        let hook = hook("http://127.0.0.1:9/auth");
        let a = hook.cache.password_digest(Some(b"a"));
        assert_eq!(a, hook.cache.password_digest(Some(b"a")));
        assert_ne!(a, hook.cache.password_digest(Some(b"b")));
        assert_ne!(a, hook.cache.password_digest(Some(b"")));
        assert_eq!(hook.cache.password_digest(None), None);
    }
}
