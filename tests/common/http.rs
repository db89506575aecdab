//! HTTP in tests. reqwest is the one client: probes and scrapes of the ops
//! endpoint ([`http_get`], [`http_until`]), one new connection per request
//! as a load balancer's probe opens one. [`FakeService`] is the one server:
//! hyper on 127.0.0.1:0 standing in for a service the proxy calls (the HTTP
//! auth hook), answering JSON requests as the test decides.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::{poll_until, PATIENCE};

/// GETs `http://{addr}{path}` on a connection of its own: (status, body),
/// or the error (refused, reset) as text.
pub async fn try_http_get(addr: SocketAddr, path: &str) -> Result<(u16, String), String> {
    let client = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .build()
        .map_err(|e| e.to_string())?;
    let r = client
        .get(format!("http://{addr}{path}"))
        .send()
        .await
        .map_err(|e| format!("GET {path}: {e}"))?;
    let status = r.status().as_u16();
    let body = r.text().await.map_err(|e| format!("GET {path}: {e}"))?;
    Ok((status, body))
}

/// [`try_http_get`] that must be answered within `limit`.
pub async fn http_get_within(addr: SocketAddr, path: &str, limit: Duration) -> (u16, String) {
    tokio::time::timeout(limit, try_http_get(addr, path))
        .await
        .unwrap_or_else(|_| panic!("GET {path} unanswered within {limit:?}"))
        .unwrap_or_else(|e| panic!("{e}"))
}

/// [`try_http_get`] that must be answered within [`PATIENCE`].
pub async fn http_get(addr: SocketAddr, path: &str) -> (u16, String) {
    http_get_within(addr, path, PATIENCE).await
}

/// Polls `path` until it answers `status` with a body containing `body`;
/// returns that body. Panics with the last answer after [`PATIENCE`].
pub async fn http_until(addr: SocketAddr, path: &str, status: u16, body: &str) -> String {
    let what = format!("GET {path} answering {status} {body:?}");
    poll_until(&what, PATIENCE, || async move {
        let (s, b) = http_get(addr, path).await;
        if s == status && b.contains(body) {
            Ok(b)
        } else {
            Err(format!("{s} {b:?}"))
        }
    })
    .await
}

/// How a [`FakeService`] answers a request's JSON body: (status, body).
type Answer = Arc<dyn Fn(&Value) -> (u16, String) + Send + Sync>;

/// A keep-alive HTTP/1.1 JSON service on 127.0.0.1:0 (hyper) answering
/// every request by `answer`, after `delay` (the simulated slow service).
/// Counts TCP connections and keeps every request body (JSON, or null).
pub struct FakeService {
    addr: SocketAddr,
    connections: Arc<AtomicUsize>,
    requests: Arc<Mutex<Vec<Value>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for FakeService {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl FakeService {
    pub async fn start(
        delay: Duration,
        answer: impl Fn(&Value) -> (u16, String) + Send + Sync + 'static,
    ) -> FakeService {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let answer: Answer = Arc::new(answer);
        let (conns, reqs) = (connections.clone(), requests.clone());
        let task = tokio::spawn(async move {
            while let Ok((stream, _)) = listener.accept().await {
                conns.fetch_add(1, Ordering::SeqCst);
                let (answer, reqs) = (answer.clone(), reqs.clone());
                let service = service_fn(move |req: Request<Incoming>| {
                    let (answer, reqs) = (answer.clone(), reqs.clone());
                    async move {
                        let body = req.into_body().collect().await?.to_bytes();
                        let req: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
                        reqs.lock().unwrap().push(req.clone());
                        if !delay.is_zero() {
                            // The simulated slow service.
                            tokio::time::sleep(delay).await;
                        }
                        let (status, text) = answer(&req);
                        let response = Response::builder()
                            .status(status)
                            .header("content-type", "application/json")
                            .body(Full::new(Bytes::from(text)))
                            .unwrap();
                        Ok::<_, hyper::Error>(response)
                    }
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(stream), service),
                );
            }
        });
        FakeService {
            addr,
            connections,
            requests,
            task,
        }
    }

    /// `http://{addr}{path}`.
    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Every request body so far, in arrival order.
    pub fn requests(&self) -> Vec<Value> {
        self.requests.lock().unwrap().clone()
    }

    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        self.connections.load(Ordering::SeqCst)
    }
}
