//! The gateway's length-prefix reader (`gateway::cap::MessageCap`): a caller's
//! request body, as HTTP/2 DATA frames cut anywhere, read through the cap
//! the gateway puts on every forwarded call.
//!
//! Input: `[limit, n, n chunk sizes…, stream…]`. The stream is cut into DATA
//! frames of the chunk sizes in turn (0: an empty frame; 255: a trailers
//! frame, which takes no bytes). Checked against a model that reads the
//! gRPC length prefixes (flag byte, `u32` big-endian length) of the whole
//! stream at once: every frame before the one that completes the first
//! prefix over the limit passes unchanged, that one fails with
//! `RESOURCE_EXHAUSTED` and the announced size is recorded; with no such
//! prefix, everything passes.

use std::collections::VecDeque;
use std::convert::Infallible;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::{Context, Poll, Waker};

use anima_core::gateway::cap::{MAX_MESSAGE_BYTES, MessageCap};
use bytes::Bytes;
use http_body::{Body as _, Frame};

use crate::fixtures::Cursor;

/// A body that yields prepared frames, always ready.
struct Frames(VecDeque<Frame<Bytes>>);

impl http_body::Body for Frames {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        Poll::Ready(self.0.pop_front().map(Ok))
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_empty()
    }
}

/// The cap for a selector byte: small limits, the gateway's, and the largest
/// a prefix can announce.
fn limit_of(b: u8) -> u64 {
    match b >> 6 {
        0 => u64::from(b & 63),
        1 => u64::from(b & 63) << 10,
        2 => MAX_MESSAGE_BYTES,
        _ => u64::from(u32::MAX) - u64::from(b & 63),
    }
}

/// The model: the index of the byte that completes the first prefix
/// announcing more than `limit`, and that size.
fn first_oversized(stream: &[u8], limit: u64) -> Option<(usize, u64)> {
    let mut at = 0usize;
    loop {
        let prefix = stream.get(at..at + 5)?;
        let size = u64::from(u32::from_be_bytes([
            prefix[1], prefix[2], prefix[3], prefix[4],
        ]));
        if size > limit {
            return Some((at + 4, size));
        }
        at = at.checked_add(5 + usize::try_from(size).ok()?)?;
    }
}

/// Runs one input.
pub fn run(data: &[u8]) {
    let mut input = Cursor(data);
    let Some(selector) = input.byte() else {
        return;
    };
    let limit = limit_of(selector);
    let n = usize::from(input.byte().unwrap_or(0));
    let sizes = input.take(n);
    let stream = input.0;

    // Cut the stream; each DATA frame's start offset, for the model.
    let mut frames = VecDeque::new();
    let mut starts = Vec::new();
    let mut at = 0;
    let mut turn = 0;
    while at < stream.len() {
        let size = match sizes.get(turn % sizes.len().max(1)) {
            // Empty and trailers frames take no bytes: bound them.
            Some(_) if turn > 2 * stream.len() + sizes.len() => stream.len() - at,
            Some(&255) => {
                turn += 1;
                frames.push_back(Frame::trailers(http::HeaderMap::new()));
                continue;
            }
            Some(&s) => usize::from(s),
            None => stream.len(),
        };
        turn += 1;
        let end = (at + size).min(stream.len());
        starts.push(at);
        frames.push_back(Frame::data(Bytes::copy_from_slice(&stream[at..end])));
        at = end;
    }

    let tripped = Arc::new(AtomicU64::new(0));
    let mut cap = MessageCap::new(
        tonic::body::Body::new(Frames(frames)),
        limit,
        tripped.clone(),
    );
    let mut cx = Context::from_waker(Waker::noop());
    let mut passed = 0usize;
    let mut failed = None;
    loop {
        match Pin::new(&mut cap).poll_frame(&mut cx) {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    passed += data.len();
                }
            }
            Poll::Ready(Some(Err(status))) => {
                failed = Some(status);
                break;
            }
            Poll::Ready(None) => break,
            Poll::Pending => panic!("a ready body was pending"),
        }
    }

    match first_oversized(stream, limit) {
        Some((byte, size)) => {
            let status = failed.unwrap_or_else(|| panic!("{size} > {limit} passed the cap"));
            assert_eq!(status.code(), tonic::Code::ResourceExhausted);
            assert_eq!(tripped.load(Ordering::SeqCst), size);
            // The failing frame is the one holding that byte; all before pass.
            let frame_start = starts
                .iter()
                .rev()
                .find(|&&s| s <= byte)
                .copied()
                .unwrap_or(0);
            assert_eq!(passed, frame_start, "bytes forwarded before the refusal");
        }
        None => {
            assert!(failed.is_none(), "refused within the limit: {failed:?}");
            assert_eq!(tripped.load(Ordering::SeqCst), 0);
            assert_eq!(passed, stream.len());
        }
    }
}

/// Message streams under and over each kind of limit, cut in several ways.
pub fn seeds() -> Vec<Vec<u8>> {
    let message = |flag: u8, len: u32, fill: usize| {
        let mut m = vec![flag];
        m.extend_from_slice(&len.to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, fill));
        m
    };
    let streams: Vec<(u8, Vec<u8>)> = vec![
        // limit 40: two fitting messages and an empty one, then one too big.
        (
            40,
            [message(0, 10, 10), message(0, 0, 0), message(1, 40, 40)].concat(),
        ),
        (40, [message(0, 10, 10), message(0, 41, 3)].concat()),
        (0, message(0, 1, 1)),
        (0, [message(0, 0, 0), message(0, 0, 0)].concat()),
        // 1 KiB limit; the gateway's 4 MiB; near u32::MAX.
        (0x41, [message(0, 1024, 1024), message(0, 1025, 0)].concat()),
        (0x80, message(0, 4 * 1024 * 1024 + 1, 0)),
        (0x80, message(0, 100, 100)),
        (0xc0, message(0, u32::MAX, 2)),
        (0xc1, message(0, u32::MAX, 2)),
        // A stream ending inside a prefix.
        (40, [message(0, 3, 3), vec![0, 0]].concat()),
    ];
    let cuts: [&[u8]; 5] = [&[], &[1], &[2, 3, 5], &[0, 4, 255, 7], &[64]];
    let mut seeds = Vec::new();
    for (limit, stream) in &streams {
        for cut in cuts {
            let mut seed = vec![*limit, u8::try_from(cut.len()).expect("short")];
            seed.extend_from_slice(cut);
            seed.extend_from_slice(stream);
            seeds.push(seed);
        }
    }
    seeds
}
