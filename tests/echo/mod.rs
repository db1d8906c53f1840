//! The echo service the end-to-end tests serve and call
//! (`tests/proto/echo.proto`).
//!
//! Included by path (not as a crate) so that each package compiles it against
//! the SDK it links: the test harness and the `anima-fixture-module` binary
//! against the real `anima-module-sdk`, the `anima-faulty-module` binary
//! against its fault-injecting copy (`tests/faulty`). The including crate's
//! build script compiles the proto and writes `echo_descriptor.bin`.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use anima_module_sdk::LeaseContext;
use anima_protocol::PeerInfo;
use tokio_stream::Stream;
use tonic::{Request, Response, Status, Streaming};

/// Generated code for `tests/proto/echo.proto`.
pub mod pb {
    #![allow(missing_docs, clippy::all, clippy::pedantic)]
    tonic::include_proto!("anima.test.v1");
}

/// The encoded descriptor set of `tests/proto/echo.proto`.
pub const DESCRIPTORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/echo_descriptor.bin"));

/// The echo service: counts how often its handler bodies ran.
#[derive(Clone, Default)]
pub struct EchoService {
    /// Handler bodies entered.
    pub calls: Arc<AtomicUsize>,
    /// `Slow` handlers that ran to completion.
    pub completed: Arc<AtomicUsize>,
    /// When a `Slow` handler was last dropped before completing (halted).
    pub halted_at: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    /// Client-stream messages handed to the `Collect` and `Chat` handlers.
    pub received: Arc<AtomicUsize>,
    /// Ticks produced by `Watch` and `Chat`.
    pub ticks: Arc<AtomicUsize>,
}

/// Records when a handler future is dropped before it completes.
struct HaltGuard {
    halted_at: Arc<std::sync::Mutex<Option<std::time::Instant>>>,
    done: bool,
}

impl Drop for HaltGuard {
    fn drop(&mut self) {
        if !self.done {
            *self.halted_at.lock().unwrap_or_else(|p| p.into_inner()) =
                Some(std::time::Instant::now());
        }
    }
}

/// The lease's time left as a handler sees it now, in microseconds.
fn lease_left_us(lease: Option<&LeaseContext>) -> u64 {
    lease.map_or(0, |l| {
        u64::try_from(l.remaining().as_micros()).unwrap_or(u64::MAX)
    })
}

/// `Watch`'s response stream: one tick per interval, produced when polled.
struct Ticker {
    interval: tokio::time::Interval,
    seq: u64,
    count: u64,
    lease: Option<LeaseContext>,
    ticks: Arc<AtomicUsize>,
}

impl Stream for Ticker {
    type Item = Result<pb::Tick, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.count != 0 && self.seq >= self.count {
            return Poll::Ready(None);
        }
        if self.interval.poll_tick(cx).is_pending() {
            return Poll::Pending;
        }
        self.seq += 1;
        self.ticks.fetch_add(1, Ordering::SeqCst);
        Poll::Ready(Some(Ok(pb::Tick {
            seq: self.seq,
            lease_left_us: lease_left_us(self.lease.as_ref()),
            text: String::new(),
        })))
    }
}

type TickStream = Pin<Box<dyn Stream<Item = Result<pb::Tick, Status>> + Send + 'static>>;

impl EchoService {
    /// `Say` and `Shout`: counts the call and answers `echo` of the
    /// request's text.
    fn answer(
        &self,
        mut request: Request<pb::SayRequest>,
        echo: impl FnOnce(String) -> String,
    ) -> Result<Response<pb::SayReply>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let text = echo(std::mem::take(&mut request.get_mut().text));
        let peer = PeerInfo::of(&request)
            .cloned()
            .ok_or_else(|| Status::internal("no peer info"))?;
        // Per-lease tenant state: how many Say/Shout calls this lease made.
        let tenant_count = match LeaseContext::of(&request) {
            Some(ctx) => ctx.with_state(|n: &mut u64| {
                *n += 1;
                *n
            })?,
            None => 0,
        };
        Ok(Response::new(pb::SayReply {
            text,
            caller: peer.urn().to_string(),
            connection: peer.connection().get(),
            tenant_count,
        }))
    }
}

#[tonic::async_trait]
impl pb::echo_server::Echo for EchoService {
    async fn say(
        &self,
        request: Request<pb::SayRequest>,
    ) -> Result<Response<pb::SayReply>, Status> {
        self.answer(request, |text| text)
    }

    async fn shout(
        &self,
        request: Request<pb::SayRequest>,
    ) -> Result<Response<pb::SayReply>, Status> {
        self.answer(request, |text| text.to_uppercase())
    }

    async fn slow(
        &self,
        request: Request<pb::SlowRequest>,
    ) -> Result<Response<pb::SayReply>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut guard = HaltGuard {
            halted_at: self.halted_at.clone(),
            done: false,
        };
        tokio::time::sleep(Duration::from_millis(request.get_ref().millis)).await;
        guard.done = true;
        self.completed.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(pb::SayReply {
            text: "done".into(),
            ..Default::default()
        }))
    }

    async fn count(
        &self,
        _request: Request<pb::CountRequest>,
    ) -> Result<Response<pb::CountReply>, Status> {
        let load = |n: &AtomicUsize| n.load(Ordering::SeqCst) as u64;
        Ok(Response::new(pb::CountReply {
            calls: load(&self.calls),
            completed: load(&self.completed),
            received: load(&self.received),
            ticks: load(&self.ticks),
        }))
    }

    type WatchStream = TickStream;

    async fn watch(
        &self,
        request: Request<pb::WatchRequest>,
    ) -> Result<Response<Self::WatchStream>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let every = Duration::from_millis(request.get_ref().every_ms.max(1));
        let mut interval = tokio::time::interval(every);
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        Ok(Response::new(Box::pin(Ticker {
            interval,
            seq: 0,
            count: request.get_ref().count,
            lease: LeaseContext::of(&request).cloned(),
            ticks: self.ticks.clone(),
        })))
    }

    async fn collect(
        &self,
        request: Request<Streaming<pb::SayRequest>>,
    ) -> Result<Response<pb::CountReply>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let mut stream = request.into_inner();
        let mut received = 0;
        while stream.message().await?.is_some() {
            self.received.fetch_add(1, Ordering::SeqCst);
            received += 1;
        }
        Ok(Response::new(pb::CountReply {
            received,
            ..Default::default()
        }))
    }

    type ChatStream = TickStream;

    async fn chat(
        &self,
        request: Request<Streaming<pb::SayRequest>>,
    ) -> Result<Response<Self::ChatStream>, Status> {
        self.calls.fetch_add(1, Ordering::SeqCst);
        let lease = LeaseContext::of(&request).cloned();
        let (received, ticks) = (self.received.clone(), self.ticks.clone());
        let mut incoming = request.into_inner();
        // tonic's usual bidirectional shape: a task reads the request stream
        // and feeds the response stream through a channel.
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        tokio::spawn(async move {
            let mut seq = 0;
            loop {
                let answer = match incoming.message().await {
                    Ok(Some(message)) => {
                        received.fetch_add(1, Ordering::SeqCst);
                        ticks.fetch_add(1, Ordering::SeqCst);
                        seq += 1;
                        Ok(pb::Tick {
                            seq,
                            lease_left_us: lease_left_us(lease.as_ref()),
                            text: message.text,
                        })
                    }
                    Ok(None) => return,
                    Err(status) => Err(status),
                };
                let failed = answer.is_err();
                if tx.send(answer).await.is_err() || failed {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(
            tokio_stream::wrappers::ReceiverStream::new(rx),
        )))
    }
}
