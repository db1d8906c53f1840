//! A cap on the size of each gRPC message a caller streams through the
//! gateway, read from the messages' own length prefixes as the bytes pass:
//! nothing is buffered, and an oversized message is refused before its body
//! is forwarded to the module.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::task::Poll;

use bytes::Buf as _;
use tonic::body::Body;

use super::observe::{Polled, Watch, Watched};

/// The largest message the gateway forwards: tonic's default decoding
/// limit, which modules built with our SDK enforce too.
pub const MAX_MESSAGE_BYTES: u64 = 4 * 1024 * 1024;

/// Where the parser is in the length-prefixed message stream.
#[derive(Debug, Clone, Copy)]
enum State {
    /// Reading the 5-byte prefix (flag + big-endian length): bytes so far.
    Prefix { have: usize, len: [u8; 4] },
    /// Inside a message body: bytes left.
    Body(u64),
}

/// A request body capped per message: it fails (and records the size in
/// `tripped`) as soon as a message prefix announces more than `limit` bytes.
pub type MessageCap = Watched<SizeCap>;

impl MessageCap {
    /// Caps `inner` at `limit` bytes per message; `tripped` receives the
    /// announced size of the first message over the limit.
    pub fn new(inner: Body, limit: u64, tripped: Arc<AtomicU64>) -> Self {
        Watched::wrap(inner, SizeCap::new(limit, tripped))
    }
}

/// What a [`MessageCap`] watches its body with: the messages' length
/// prefixes, read as the bytes pass.
pub struct SizeCap {
    state: State,
    limit: u64,
    tripped: Arc<AtomicU64>,
}

impl SizeCap {
    fn new(limit: u64, tripped: Arc<AtomicU64>) -> Self {
        SizeCap {
            state: State::Prefix {
                have: 0,
                len: [0; 4],
            },
            limit,
            tripped,
        }
    }

    /// Advances the parser over `data`; `Err(size)` for an oversized message.
    fn scan(&mut self, mut data: &[u8]) -> Result<(), u64> {
        while !data.is_empty() {
            match &mut self.state {
                State::Body(left) => {
                    let take = (*left).min(data.len() as u64);
                    *left -= take;
                    data.advance(take as usize);
                    if *left == 0 {
                        self.state = State::Prefix {
                            have: 0,
                            len: [0; 4],
                        };
                    }
                }
                State::Prefix { have, len } => {
                    // Byte 0 is the compression flag; bytes 1..5 the length.
                    if *have > 0 {
                        len[*have - 1] = data[0];
                    }
                    *have += 1;
                    data.advance(1);
                    if *have == 5 {
                        let size = u64::from(u32::from_be_bytes(*len));
                        if size > self.limit {
                            return Err(size);
                        }
                        self.state = if size == 0 {
                            State::Prefix {
                                have: 0,
                                len: [0; 4],
                            }
                        } else {
                            State::Body(size)
                        };
                    }
                }
            }
        }
        Ok(())
    }
}

impl Watch for SizeCap {
    fn see(&mut self, polled: &Polled) -> Result<(), tonic::Status> {
        if let Poll::Ready(Some(Ok(frame))) = polled
            && let Some(data) = frame.data_ref()
            && let Err(size) = self.scan(data)
        {
            self.tripped.store(size, Ordering::SeqCst);
            return Err(too_large(size, self.limit));
        }
        Ok(())
    }
}

/// The status a caller gets for a message over the limit.
pub(crate) fn too_large(size: u64, limit: u64) -> tonic::Status {
    tonic::Status::resource_exhausted(format!(
        "a message of {size} bytes exceeds the gateway's limit of {limit} bytes"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cap(limit: u64) -> SizeCap {
        SizeCap::new(limit, Arc::new(AtomicU64::new(0)))
    }

    fn message(len: usize) -> Vec<u8> {
        let mut m = vec![0u8];
        m.extend_from_slice(&(len as u32).to_be_bytes());
        m.extend(std::iter::repeat_n(7u8, len));
        m
    }

    #[test]
    fn messages_within_the_limit_pass_whatever_the_chunking() {
        let mut stream = message(10);
        stream.extend(message(0));
        stream.extend(message(100));
        for chunk in [1, 2, 3, 5, 7, 64, stream.len()] {
            let mut c = cap(100);
            for piece in stream.chunks(chunk) {
                assert_eq!(c.scan(piece), Ok(()), "chunk {chunk}");
            }
        }
    }

    #[test]
    fn an_oversized_prefix_is_refused_before_its_body() {
        // Only the prefix of a 101-byte message: refused already.
        let prefix = &message(101)[..5];
        for chunk in [1, 2, 5] {
            let mut c = cap(100);
            let result: Result<Vec<()>, u64> = prefix.chunks(chunk).map(|p| c.scan(p)).collect();
            assert_eq!(result, Err(101), "chunk {chunk}");
        }
        // A second message over the limit after a good one.
        let mut stream = message(100);
        stream.extend(&message(4096)[..5]);
        assert_eq!(cap(100).scan(&stream), Err(4096));
    }
}
