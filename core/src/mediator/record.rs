//! A message as the store keeps it: what routing and redelivery need,
//! then the envelope's protobuf bytes, in one value of the `messages`
//! table. The layout (big-endian) is the store's own, versioned by its
//! first byte:
//!
//! | bytes | field |
//! | --- | --- |
//! | 1 | layout version (1) |
//! | 1 | priority rank (0 critical … 3 low) |
//! | 1 | flags: 1 dead-letter queue, 2 at most once |
//! | 4 | max retries |
//! | 8 | retry delay, ms |
//! | 8 | expires at, Unix ms (`i64::MIN`: never) |
//! | 8 | accepted at, Unix ms |
//! | … | the envelope (`anima.v1.RcsEnvelope`) |

use anima_protocol::pb::Priority;

const LAYOUT: u8 = 1;
const HEADER: usize = 31;
const DEAD_LETTER: u8 = 1;
const AT_MOST_ONCE: u8 = 2;

/// A priority's place in a subscriber's backlog: critical first (M6).
pub fn rank(priority: Priority) -> u8 {
    match priority {
        Priority::Critical => 0,
        Priority::High => 1,
        Priority::Normal | Priority::Unspecified => 2,
        Priority::Low => 3,
    }
}

/// How a message is to be delivered (from its quality of service).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Delivery {
    /// Its place in a backlog ([`rank`]).
    pub rank: u8,
    /// After its retries, to the dead-letter queue (else dropped, counted).
    pub dead_letter: bool,
    /// Handed out once, never again (`at_most_once`).
    pub at_most_once: bool,
    /// Redeliveries allowed after the first delivery.
    pub max_retries: u32,
    /// The delay before the first redelivery; it doubles for each next one.
    pub retry_delay_ms: u64,
    /// Past this instant (Unix ms) it is never delivered (M4).
    pub expires_ms: Option<i64>,
}

impl Delivery {
    /// Why a message handed out `attempts` times already is not to be
    /// handed out again at `now_ms`: `EXPIRED` (M4), or `MAX_RETRIES` (its
    /// retries spent, or an `at_most_once` message handed out before); `None`
    /// when it is delivered.
    pub fn over(&self, attempts: u32, now_ms: u64) -> Option<&'static str> {
        if self
            .expires_ms
            .is_some_and(|e| i128::from(e) <= i128::from(now_ms))
        {
            Some("EXPIRED")
        } else if attempts > self.max_retries || (self.at_most_once && attempts > 0) {
            Some("MAX_RETRIES")
        } else {
            None
        }
    }
}

/// A stored message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// How to deliver it.
    pub delivery: Delivery,
    /// When the store accepted it (Unix ms).
    pub accepted_ms: u64,
    /// The envelope's protobuf bytes.
    pub envelope: Vec<u8>,
}

impl Record {
    /// The stored bytes.
    pub fn encode(&self) -> Vec<u8> {
        let d = &self.delivery;
        let mut out = Vec::with_capacity(HEADER + self.envelope.len());
        out.push(LAYOUT);
        out.push(d.rank);
        out.push(
            if d.dead_letter { DEAD_LETTER } else { 0 }
                | if d.at_most_once { AT_MOST_ONCE } else { 0 },
        );
        out.extend_from_slice(&d.max_retries.to_be_bytes());
        out.extend_from_slice(&d.retry_delay_ms.to_be_bytes());
        out.extend_from_slice(&d.expires_ms.unwrap_or(i64::MIN).to_be_bytes());
        out.extend_from_slice(&self.accepted_ms.to_be_bytes());
        out.extend_from_slice(&self.envelope);
        out
    }

    /// Reads stored bytes; `None` when they are not a record of this layout.
    pub fn decode(bytes: &[u8]) -> Option<Record> {
        if bytes.len() < HEADER || bytes[0] != LAYOUT || bytes[1] > 3 {
            return None;
        }
        let u32_at = |i: usize| bytes.get(i..i + 4)?.try_into().ok().map(u32::from_be_bytes);
        let u64_at = |i: usize| bytes.get(i..i + 8)?.try_into().ok().map(u64::from_be_bytes);
        let expires = i64::from_be_bytes(bytes.get(15..23)?.try_into().ok()?);
        Some(Record {
            delivery: Delivery {
                rank: bytes[1],
                dead_letter: bytes[2] & DEAD_LETTER != 0,
                at_most_once: bytes[2] & AT_MOST_ONCE != 0,
                max_retries: u32_at(3)?,
                retry_delay_ms: u64_at(7)?,
                expires_ms: (expires != i64::MIN).then_some(expires),
            },
            accepted_ms: u64_at(23)?,
            envelope: bytes[HEADER..].to_vec(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn m4_m7_a_delivery_is_over_when_expired_or_its_retries_are_spent() {
        let d = Delivery {
            rank: 2,
            dead_letter: false,
            at_most_once: false,
            max_retries: 1,
            retry_delay_ms: 0,
            expires_ms: Some(1_000),
        };
        assert_eq!(d.over(0, 999), None);
        assert_eq!(d.over(1, 999), None, "one retry left");
        assert_eq!(d.over(2, 999), Some("MAX_RETRIES"));
        assert_eq!(d.over(0, 1_000), Some("EXPIRED"));
        let once = Delivery {
            at_most_once: true,
            max_retries: 5,
            expires_ms: None,
            ..d
        };
        assert_eq!(once.over(0, u64::MAX), None);
        assert_eq!(
            once.over(1, 0),
            Some("MAX_RETRIES"),
            "never handed out twice"
        );
    }

    #[test]
    fn m12_records_read_back_as_written() {
        for (expires_ms, dead_letter, at_most_once) in [
            (None, false, false),
            (Some(-5), true, false),
            (Some(i64::MAX), false, true),
        ] {
            let r = Record {
                delivery: Delivery {
                    rank: 3,
                    dead_letter,
                    at_most_once,
                    max_retries: 7,
                    retry_delay_ms: 1500,
                    expires_ms,
                },
                accepted_ms: 1_753_984_073_123,
                envelope: b"envelope bytes".to_vec(),
            };
            assert_eq!(Record::decode(&r.encode()), Some(r));
        }
        assert_eq!(Record::decode(&[1; 30]), None);
        assert_eq!(Record::decode(&[2; 40]), None);
    }
}
