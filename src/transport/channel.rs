//! The channel of one dialled connection: HTTP/2 straight onto the
//! connection's task, without tonic's request buffer.
//!
//! tonic's `Channel` puts a `tower::buffer::Buffer` in front of every
//! connection (for its reconnecting and balancing channels): each call is
//! handed to a worker task, which hands it to the connection's task. A
//! connection of [`ClientTls::dial_addr`](super::ClientTls::dial_addr) never
//! reconnects, so that hop buys nothing; on a multi-threaded runtime it cost
//! a wake-up of another worker thread on most calls. [`PeerChannel`] gives
//! the request to hyper's HTTP/2 client directly, from the caller's task.
//!
//! What tonic's channel adds to a request, this adds too: the origin
//! (`:scheme` and `:authority`), a `user-agent`, and the caller's
//! `grpc-timeout` enforced on the client's side as well (the call fails
//! `CANCELLED`, "Timeout expired", as tonic's does).

use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll, ready};
use std::time::Duration;

use http::uri::{Authority, PathAndQuery, Scheme};
use http::{HeaderValue, Request, Response, Uri};
use hyper::client::conn::http2::SendRequest;
use tonic::body::Body;
use tower::Service;

/// The `:authority` of every request: the peer is identified by its
/// certificate's URN, not by a host name.
const AUTHORITY: &str = "anima.peer";

/// The `user-agent` of every request.
const USER_AGENT: &str = concat!("anima/", env!("CARGO_PKG_VERSION"));

/// The errors a call on a [`PeerChannel`] can fail with: a
/// [`tonic::ConnectError`] (the connection had closed), hyper's (it closed or
/// was reset during the call), or [`tonic::TimeoutExpired`]. tonic's
/// generated clients turn each into a `Status` as they do for its own
/// channel's.
pub type ChannelError = Box<dyn std::error::Error + Send + Sync>;

/// A gRPC channel over one dialled HTTP/2 connection; clone it freely, all
/// clones share the connection. Use it with any generated client:
/// `EchoClient::new(connection.channel())`.
///
/// When the connection ends, calls fail `UNAVAILABLE`; it is not dialled
/// again (a lease is bound to its connection).
#[derive(Clone)]
pub struct PeerChannel {
    send: SendRequest<Body>,
}

impl PeerChannel {
    pub(super) fn new(send: SendRequest<Body>) -> Self {
        PeerChannel { send }
    }

    /// Whether the connection has closed: every call from now on fails
    /// `UNAVAILABLE`.
    pub fn is_closed(&self) -> bool {
        self.send.is_closed()
    }
}

impl fmt::Debug for PeerChannel {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PeerChannel")
            .field("closed", &self.send.is_closed())
            .finish()
    }
}

impl Service<Request<Body>> for PeerChannel {
    type Response = Response<Body>;
    type Error = ChannelError;
    type Future = ResponseFuture;

    /// Always ready: HTTP/2 queues a stream past the server's limit itself,
    /// and a closed connection is the call's error (`UNAVAILABLE`), not the
    /// channel's (a generated client would report that as `UNKNOWN`, and a
    /// `LeasedChannel` could no longer answer with its lease's reason).
    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        if self.send.is_closed() {
            return ResponseFuture::failed(closed());
        }
        if let Err(e) = set_origin(request.uri_mut()) {
            return ResponseFuture::failed(e);
        }
        request
            .headers_mut()
            .entry(http::header::USER_AGENT)
            .or_insert(HeaderValue::from_static(USER_AGENT));
        let timeout = grpc_timeout(request.headers());
        ResponseFuture {
            state: State::Sent {
                response: Box::pin(self.send.send_request(request)),
                timeout: timeout.map(|t| Box::pin(tokio::time::sleep(t))),
            },
        }
    }
}

/// The answer of one call on a [`PeerChannel`].
pub struct ResponseFuture {
    state: State,
}

type Sent = Pin<Box<dyn Future<Output = hyper::Result<Response<hyper::body::Incoming>>> + Send>>;

enum State {
    Sent {
        response: Sent,
        timeout: Option<Pin<Box<tokio::time::Sleep>>>,
    },
    Failed(Option<ChannelError>),
}

impl ResponseFuture {
    fn failed(error: ChannelError) -> Self {
        ResponseFuture {
            state: State::Failed(Some(error)),
        }
    }
}

impl fmt::Debug for ResponseFuture {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ResponseFuture").finish_non_exhaustive()
    }
}

impl Future for ResponseFuture {
    type Output = Result<Response<Body>, ChannelError>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match &mut self.get_mut().state {
            State::Failed(error) => Poll::Ready(Err(error
                .take()
                .unwrap_or_else(|| "polled after completion".into()))),
            State::Sent { response, timeout } => {
                if let Poll::Ready(answer) = response.as_mut().poll(cx) {
                    return Poll::Ready(match answer {
                        Ok(r) => Ok(r.map(Body::new)),
                        // Closed before the request went out.
                        Err(e) if e.is_closed() => Err(closed()),
                        Err(e) => Err(e.into()),
                    });
                }
                if let Some(sleep) = timeout {
                    ready!(sleep.as_mut().poll(cx));
                    return Poll::Ready(Err(tonic::TimeoutExpired(()).into()));
                }
                Poll::Pending
            }
        }
    }
}

/// A call on a connection that has closed: `UNAVAILABLE` to tonic's
/// clients, as a failed dial is.
fn closed() -> ChannelError {
    Box::new(tonic::ConnectError(Box::new(std::io::Error::new(
        std::io::ErrorKind::NotConnected,
        "connection closed; dial again to open a new connection and lease",
    ))))
}

/// Gives a request's URI (a path, from a generated client) the channel's
/// scheme and authority.
fn set_origin(uri: &mut Uri) -> Result<(), ChannelError> {
    let mut parts = std::mem::take(uri).into_parts();
    parts.scheme = Some(Scheme::HTTP);
    parts.authority = Some(Authority::from_static(AUTHORITY));
    if parts.path_and_query.is_none() {
        parts.path_and_query = Some(PathAndQuery::from_static("/"));
    }
    *uri = Uri::from_parts(parts)?;
    Ok(())
}

/// The `grpc-timeout` in `headers`, if there is a valid one (see
/// [`parse_grpc_timeout`]); an invalid one is the server's to refuse.
pub fn grpc_timeout(headers: &http::HeaderMap) -> Option<Duration> {
    parse_grpc_timeout(headers.get("grpc-timeout")?.to_str().ok()?)
}

/// A `grpc-timeout` value as gRPC over HTTP/2 writes it: 1 to 8 ASCII digits
/// and a unit (`H`, `M`, `S`, `m`, `u`, `n`); `None` for anything else (a
/// sign, a space, a ninth digit, another unit).
pub fn parse_grpc_timeout(text: &str) -> Option<Duration> {
    let (digits, unit) = text.as_bytes().split_at(text.len().checked_sub(1)?);
    if digits.is_empty() || digits.len() > 8 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n = digits
        .iter()
        .fold(0u64, |n, d| n * 10 + u64::from(d - b'0'));
    match unit {
        b"H" => Some(Duration::from_secs(n * 3600)),
        b"M" => Some(Duration::from_secs(n * 60)),
        b"S" => Some(Duration::from_secs(n)),
        b"m" => Some(Duration::from_millis(n)),
        b"u" => Some(Duration::from_micros(n)),
        b"n" => Some(Duration::from_nanos(n)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_reads_every_unit_and_refuses_the_rest() {
        let cases = [
            ("2H", Duration::from_secs(7200)),
            ("3M", Duration::from_secs(180)),
            ("4S", Duration::from_secs(4)),
            ("250m", Duration::from_millis(250)),
            ("2500m", Duration::from_millis(2500)),
            ("99999999u", Duration::from_micros(99_999_999)),
            ("99999999H", Duration::from_secs(99_999_999 * 3600)),
            ("7n", Duration::from_nanos(7)),
            ("0m", Duration::ZERO),
        ];
        for (text, expected) in cases {
            assert_eq!(parse_grpc_timeout(text), Some(expected), "{text}");
        }
        for bad in [
            "",
            "m",
            "S",
            "10",
            "10s",
            "1x",
            "123456789m",
            "-1m",
            "+1S",
            "1.5S",
            " 1S",
            "1 S",
            "1é",
        ] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
        let mut h = http::HeaderMap::new();
        assert_eq!(grpc_timeout(&h), None);
        h.insert("grpc-timeout", HeaderValue::from_static("50m"));
        assert_eq!(grpc_timeout(&h), Some(Duration::from_millis(50)));
    }

    /// A channel to a bare HTTP/2 server, in memory, whose handler never
    /// answers; the server's task is returned to end it.
    async fn channel_to_a_silent_server() -> (PeerChannel, tokio::task::JoinHandle<()>) {
        use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
        let (client, server) = tokio::io::duplex(64 * 1024);
        let serving = tokio::spawn(async move {
            let silent = hyper::service::service_fn(|_: Request<hyper::body::Incoming>| {
                std::future::pending::<Result<Response<Body>, std::convert::Infallible>>()
            });
            let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(server), silent)
                .await;
        });
        let (send, connection) = hyper::client::conn::http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(TokioIo::new(client))
            .await
            .unwrap();
        tokio::spawn(connection);
        (PeerChannel::new(send), serving)
    }

    fn request(timeout: Option<&'static str>) -> Request<Body> {
        let mut request = Request::new(Body::empty());
        *request.uri_mut() = Uri::from_static("/x.v1.X/Do");
        if let Some(t) = timeout {
            request
                .headers_mut()
                .insert("grpc-timeout", HeaderValue::from_static(t));
        }
        request
    }

    #[tokio::test]
    async fn a_call_ends_at_its_grpc_timeout_on_the_clients_side() {
        let (mut channel, _serving) = channel_to_a_silent_server().await;
        let started = tokio::time::Instant::now();
        let e = channel.call(request(Some("50m"))).await.unwrap_err();
        assert!(e.downcast_ref::<tonic::TimeoutExpired>().is_some(), "{e}");
        assert!(started.elapsed() >= Duration::from_millis(50));
        assert_eq!(tonic::Status::from_error(e).code(), tonic::Code::Cancelled);
    }

    #[tokio::test]
    async fn a_call_on_a_closed_connection_is_unavailable() {
        let (mut channel, serving) = channel_to_a_silent_server().await;
        serving.abort();
        let _ = serving.await;
        tokio::time::timeout(Duration::from_secs(5), async {
            while !channel.is_closed() {
                tokio::task::yield_now().await;
            }
        })
        .await
        .expect("the connection closes when the server goes");
        std::future::poll_fn(|cx| channel.poll_ready(cx))
            .await
            .expect("always ready: the call says what went wrong");
        let e = channel.call(request(None)).await.unwrap_err();
        assert!(e.downcast_ref::<tonic::ConnectError>().is_some(), "{e}");
        assert_eq!(
            tonic::Status::from_error(e).code(),
            tonic::Code::Unavailable
        );
    }

    #[test]
    fn the_origin_is_added_to_a_path() {
        let mut uri = Uri::from_static("/anima.test.v1.Echo/Say");
        set_origin(&mut uri).unwrap();
        assert_eq!(uri.to_string(), "http://anima.peer/anima.test.v1.Echo/Say");
    }
}
