//! The store's journal (`[mediator] sync_interval`): the messages accepted
//! since the database's last fsync, appended to a file beside it with one
//! `write` before their publishers are answered. A `write` reaches the
//! kernel, so a `kill -9` of the Core loses none of them; a power loss may
//! lose what the next fsync (at most one interval later) had not yet made
//! durable. [`Store::open_journaled`](super::Store::open_journaled) puts
//! the journal's messages back into the database.
//!
//! A frame (big-endian) is a 4-byte length, the first 8 bytes of the
//! SHA-256 of what follows, then:
//!
//! | bytes | field |
//! | --- | --- |
//! | 8 | sequence number |
//! | 1 | 1: `exactly_once` |
//! | 2 + n | `message_id` |
//! | 2 | subscriptions |
//! | (2 + n) each | subscription |
//! | … | the stored record ([`Record`](super::super::record::Record)) |
//!
//! Reading stops at the first frame that is cut short or whose hash does
//! not match: the tail of a `write` the process did not finish, never
//! answered.

use std::fs::{File, OpenOptions};
use std::io::{self, Read as _, Write as _};
use std::path::{Path, PathBuf};

use ring::digest::{SHA256, digest};

/// A frame's length and hash.
const FRAME: usize = 12;
/// The largest frame read back: an envelope at the mediator's limits and
/// its subscriptions, with room to spare.
const MAX_FRAME: usize = 16 << 20;

/// One message read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct Entry {
    pub(super) seq: u64,
    pub(super) exactly_once: bool,
    pub(super) message_id: String,
    pub(super) subscriptions: Vec<String>,
    pub(super) record: Vec<u8>,
}

/// The journal file, open for appending.
#[derive(Debug)]
pub(super) struct Journal {
    file: File,
    path: PathBuf,
    /// Bytes in the file.
    len: u64,
}

impl Journal {
    /// Opens (or creates, 0600) `path` and reads back every whole frame.
    pub(super) fn open(path: &Path) -> io::Result<(Journal, Vec<Entry>)> {
        let mut options = OpenOptions::new();
        options.read(true).append(true).create(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut options, 0o600);
        let mut file = options.open(path)?;
        let mut bytes = Vec::new();
        file.read_to_end(&mut bytes)?;
        let entries = read(&bytes);
        let journal = Journal {
            file,
            path: path.to_owned(),
            len: bytes.len() as u64,
        };
        Ok((journal, entries))
    }

    /// Bytes in the journal.
    pub(super) fn len(&self) -> u64 {
        self.len
    }

    /// Appends `frames` (from [`frame`]) with one `write`.
    pub(super) fn append(&mut self, frames: &[u8]) -> io::Result<()> {
        if let Err(e) = self.file.write_all(frames) {
            // Whatever part was written belongs to publishes that are told
            // of the failure: it must not be read back.
            self.file.set_len(self.len)?;
            return Err(e);
        }
        self.len += frames.len() as u64;
        Ok(())
    }

    /// Drops the frames from `len` on (appended by a transaction that did
    /// not commit).
    pub(super) fn truncate(&mut self, len: u64) -> io::Result<()> {
        self.file.set_len(len)?;
        self.len = len;
        Ok(())
    }

    /// Where the journal is.
    pub(super) fn path(&self) -> &Path {
        &self.path
    }
}

/// One message as [`frame`] writes it.
#[derive(Debug, Clone, Copy)]
pub(super) struct Framed<'a> {
    pub(super) seq: u64,
    pub(super) exactly_once: bool,
    pub(super) message_id: &'a str,
    pub(super) subscriptions: &'a [String],
    /// The stored record's bytes.
    pub(super) record: &'a [u8],
}

/// Appends one message's frame to `out`; refused (and nothing appended)
/// when a string, the subscriptions or the frame pass what a frame holds.
pub(super) fn frame(out: &mut Vec<u8>, m: &Framed<'_>) -> io::Result<()> {
    let start = out.len();
    let result = frame_at(out, start, m);
    if result.is_err() {
        out.truncate(start);
    }
    result
}

fn frame_at(out: &mut Vec<u8>, start: usize, m: &Framed<'_>) -> io::Result<()> {
    out.extend_from_slice(&[0; FRAME]);
    out.extend_from_slice(&m.seq.to_be_bytes());
    out.push(u8::from(m.exactly_once));
    text(out, m.message_id)?;
    out.extend_from_slice(&short(m.subscriptions.len())?.to_be_bytes());
    for s in m.subscriptions {
        text(out, s)?;
    }
    out.extend_from_slice(m.record);
    let body = start + FRAME;
    let len = out.len() - body;
    if len > MAX_FRAME {
        return Err(too_long());
    }
    let hash = digest(&SHA256, &out[body..]);
    let len = u32::try_from(len).map_err(|_| too_long())?;
    out[start..start + 4].copy_from_slice(&len.to_be_bytes());
    out[start + 4..body].copy_from_slice(&hash.as_ref()[..8]);
    Ok(())
}

/// A string with its 2-byte length.
fn text(out: &mut Vec<u8>, s: &str) -> io::Result<()> {
    out.extend_from_slice(&short(s.len())?.to_be_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn short(n: usize) -> io::Result<u16> {
    u16::try_from(n).map_err(|_| too_long())
}

fn too_long() -> io::Error {
    io::Error::new(
        io::ErrorKind::InvalidInput,
        "a message too large for the store's journal",
    )
}

/// Every whole frame of `bytes`, in order.
fn read(mut bytes: &[u8]) -> Vec<Entry> {
    let mut entries = Vec::new();
    while let Some((entry, rest)) = next(bytes) {
        entries.push(entry);
        bytes = rest;
    }
    entries
}

/// The frame at the start of `bytes` and what follows it.
fn next(bytes: &[u8]) -> Option<(Entry, &[u8])> {
    let len = u32::from_be_bytes(bytes.get(..4)?.try_into().ok()?) as usize;
    if len > MAX_FRAME {
        return None;
    }
    let body = bytes.get(FRAME..FRAME + len)?;
    if digest(&SHA256, body).as_ref()[..8] != bytes[4..FRAME] {
        return None;
    }
    let mut r = Reader(body);
    let seq = u64::from_be_bytes(r.take(8)?.try_into().ok()?);
    let exactly_once = r.take(1)? == [1];
    let message_id = r.text()?;
    let n = u16::from_be_bytes(r.take(2)?.try_into().ok()?);
    let subscriptions = (0..n).map(|_| r.text()).collect::<Option<Vec<_>>>()?;
    let entry = Entry {
        seq,
        exactly_once,
        message_id,
        subscriptions,
        record: r.0.to_vec(),
    };
    Some((entry, &bytes[FRAME + len..]))
}

impl Entry {
    /// This entry as [`frame`] writes it.
    pub(super) fn framed(&self) -> Framed<'_> {
        Framed {
            seq: self.seq,
            exactly_once: self.exactly_once,
            message_id: &self.message_id,
            subscriptions: &self.subscriptions,
            record: &self.record,
        }
    }
}

struct Reader<'a>(&'a [u8]);

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        let (head, rest) = (self.0.get(..n)?, self.0.get(n..)?);
        self.0 = rest;
        Some(head)
    }

    fn text(&mut self) -> Option<String> {
        let n = u16::from_be_bytes(self.take(2)?.try_into().ok()?);
        String::from_utf8(self.take(usize::from(n))?.to_vec()).ok()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(seq: u64) -> Entry {
        Entry {
            seq,
            exactly_once: seq.is_multiple_of(2),
            message_id: format!("id-{seq}"),
            subscriptions: vec!["urn:anima:module:a#X".into(), "urn:anima:module:b#X".into()],
            record: vec![1, 2, 3, u8::try_from(seq).unwrap_or(0)],
        }
    }

    fn framed(entries: &[Entry]) -> Vec<u8> {
        let mut out = Vec::new();
        for e in entries {
            frame(&mut out, &e.framed()).expect("frame");
        }
        out
    }

    #[test]
    fn m12_frames_read_back_as_written_and_a_cut_or_damaged_tail_is_not_read() {
        let entries: Vec<Entry> = (1..=3).map(entry).collect();
        let bytes = framed(&entries);
        assert_eq!(read(&bytes), entries);
        // Cut anywhere inside the last frame: the first two are read.
        let last = framed(&entries[..2]).len();
        for cut in last..bytes.len() {
            assert_eq!(read(&bytes[..cut]), entries[..2], "cut at {cut}");
        }
        // A flipped bit in the last frame's body: the first two are read.
        let mut damaged = bytes.clone();
        let end = damaged.len() - 1;
        damaged[end] ^= 1;
        assert_eq!(read(&damaged), entries[..2]);
        // Zeros (a length of 0 with a wrong hash) stop the reading.
        let mut zeros = framed(&entries[..1]);
        zeros.extend_from_slice(&[0; 64]);
        assert_eq!(read(&zeros), entries[..1]);
    }

    #[test]
    fn m12_a_frame_too_large_is_refused_and_leaves_nothing() {
        let mut out = framed(&[entry(1)]);
        let before = out.clone();
        let long = "x".repeat(70_000);
        let mut too_long = Entry {
            message_id: long.clone(),
            subscriptions: Vec::new(),
            ..entry(2)
        };
        assert!(frame(&mut out, &too_long.framed()).is_err());
        too_long.message_id = "id".into();
        too_long.subscriptions = vec![long];
        assert!(frame(&mut out, &too_long.framed()).is_err());
        assert_eq!(out, before);
    }

    #[test]
    fn m12_a_journal_reopened_reads_what_was_appended_and_truncated_is_gone() {
        let dir = tempfile::tempdir().expect("dir");
        let path = dir.path().join("j");
        let (mut j, read_back) = Journal::open(&path).expect("open");
        assert!(read_back.is_empty());
        j.append(&framed(&[entry(1)])).expect("append");
        let mark = j.len();
        j.append(&framed(&[entry(2)])).expect("append");
        drop(j);
        let (mut j, read_back) = Journal::open(&path).expect("reopen");
        assert_eq!(read_back, vec![entry(1), entry(2)]);
        j.truncate(mark).expect("truncate");
        j.append(&framed(&[entry(3)])).expect("append");
        drop(j);
        let (j, read_back) = Journal::open(&path).expect("reopen");
        assert_eq!(read_back, vec![entry(1), entry(3)]);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt as _;
            let mode = std::fs::metadata(j.path())
                .expect("meta")
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }
}
