//! MQTT over WebSocket (section 6 of both specs), for browsers and mobile
//! clients: the HTTP upgrade on `listeners.ws.path` with subprotocol `mqtt`
//! (or the 3.1 draft's `mqttv3.1`), then [`WsStream`], which presents the
//! binary frames as a byte stream, so the connection task and its codec do
//! not know they run over WebSocket. MQTT packets may span frames and frames
//! may hold several packets [MQTT-6.0.0-2]; a text frame closes the
//! connection [MQTT-6.0.0-1].

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};

use bytes::{Buf, Bytes};
use futures::{Sink, Stream};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::{HeaderValue, StatusCode};
use tokio_tungstenite::tungstenite::protocol::WebSocketConfig;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::WebSocketStream;

/// Subprotocols accepted, in order of preference.
const SUBPROTOCOLS: [&str; 2] = ["mqtt", "mqttv3.1"];

/// Performs the upgrade: the path must be `path`; the `mqtt` subprotocol is
/// echoed when offered. `max_message` bounds one WebSocket message.
pub async fn accept<S>(stream: S, path: &str, max_message: usize) -> io::Result<WsStream<S>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let path = path.to_owned();
    // The callback's signature is tungstenite's; its error type is large.
    #[allow(clippy::result_large_err)]
    let check = move |req: &Request, mut resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != path {
            let mut err = ErrorResponse::new(Some(format!("MQTT is served on {path}\n")));
            *err.status_mut() = StatusCode::NOT_FOUND;
            return Err(err);
        }
        let offered: Vec<&str> = req
            .headers()
            .get_all("Sec-WebSocket-Protocol")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(|v| v.split(',').map(str::trim))
            .collect();
        if let Some(chosen) = SUBPROTOCOLS.iter().find(|p| offered.contains(p)) {
            resp.headers_mut()
                .insert("Sec-WebSocket-Protocol", HeaderValue::from_static(chosen));
        } else if !offered.is_empty() {
            let mut err = ErrorResponse::new(Some("subprotocol must be mqtt\n".into()));
            *err.status_mut() = StatusCode::BAD_REQUEST;
            return Err(err);
        }
        Ok(resp)
    };
    let config = WebSocketConfig {
        max_message_size: Some(max_message),
        max_frame_size: Some(max_message),
        ..WebSocketConfig::default()
    };
    let ws = tokio_tungstenite::accept_hdr_async_with_config(stream, check, Some(config))
        .await
        .map_err(|e| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("websocket upgrade: {e}"),
            )
        })?;
    Ok(WsStream {
        inner: ws,
        pending: Bytes::new(),
    })
}

/// A WebSocket connection as a byte stream.
pub struct WsStream<S> {
    inner: WebSocketStream<S>,
    /// Bytes of the last binary message not yet read.
    pending: Bytes,
}

impl<S: AsyncRead + AsyncWrite + Unpin> WsStream<S> {
    /// The underlying transport (TCP or TLS).
    pub fn get_ref(&self) -> &S {
        self.inner.get_ref()
    }
}

fn ws_err(e: tokio_tungstenite::tungstenite::Error) -> io::Error {
    io::Error::other(e)
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for WsStream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        loop {
            if !self.pending.is_empty() {
                let n = self.pending.len().min(buf.remaining());
                buf.put_slice(&self.pending[..n]);
                self.pending.advance(n);
                return Poll::Ready(Ok(()));
            }
            match Pin::new(&mut self.inner).poll_next(cx) {
                Poll::Pending => return Poll::Pending,
                // End of stream or a close frame: EOF.
                Poll::Ready(None) | Poll::Ready(Some(Ok(Message::Close(_)))) => {
                    return Poll::Ready(Ok(()))
                }
                Poll::Ready(Some(Ok(Message::Binary(data)))) => self.pending = Bytes::from(data),
                Poll::Ready(Some(Ok(Message::Text(_)))) => {
                    return Poll::Ready(Err(io::Error::new(
                        io::ErrorKind::InvalidData,
                        "text WebSocket frame: MQTT must be sent in binary frames [MQTT-6.0.0-1]",
                    )))
                }
                // tungstenite queues the pong itself; flushing sends it now
                // rather than with our next write. Pending is fine: it goes later.
                Poll::Ready(Some(Ok(Message::Ping(_) | Message::Pong(_) | Message::Frame(_)))) => {
                    let _ = Pin::new(&mut self.inner).poll_flush(cx);
                }
                Poll::Ready(Some(Err(e))) => return Poll::Ready(Err(ws_err(e))),
            }
        }
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for WsStream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match Pin::new(&mut self.inner).poll_ready(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(Err(e)) => return Poll::Ready(Err(ws_err(e))),
            Poll::Ready(Ok(())) => {}
        }
        // One message per write: the framed writer hands over whole batches.
        Pin::new(&mut self.inner)
            .start_send(Message::Binary(buf.to_vec()))
            .map_err(ws_err)?;
        Poll::Ready(Ok(buf.len()))
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx).map_err(ws_err)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_close(cx).map_err(ws_err)
    }
}
