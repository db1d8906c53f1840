//! Making a module's output safe to log.
//!
//! A module's stdout and stderr are untrusted: a line may carry colour codes
//! from its tracing output, cursor movement, window-title changes, invalid
//! UTF-8, or no newline at all. [`read_line`] reads one line of at most
//! [`MAX_LINE`] bytes (the rest of a longer line is read and dropped), and
//! [`clean`] removes every terminal control sequence and control character
//! but tab, so that what the Core logs is plain text.

use std::ops::RangeInclusive;

use tokio::io::{AsyncBufRead, AsyncBufReadExt};

/// The longest line the Core keeps from a module, in bytes; the rest of a
/// longer line is dropped and the kept part marked [`TRUNCATED`].
pub(crate) const MAX_LINE: usize = 8 * 1024;

/// Appended to a line cut at [`MAX_LINE`].
pub(crate) const TRUNCATED: &str = " …[truncated]";

/// One line read by [`read_line`].
#[derive(Debug, PartialEq, Eq)]
pub(crate) struct RawLine {
    /// Its first [`MAX_LINE`] bytes at most, without the line ending.
    pub(crate) bytes: Vec<u8>,
    /// Whether bytes past [`MAX_LINE`] were dropped.
    pub(crate) truncated: bool,
}

impl RawLine {
    /// The line as text fit to log: invalid UTF-8 replaced, control
    /// sequences removed ([`clean`]), marked when it was cut.
    pub(crate) fn to_log_text(&self) -> String {
        let mut text = clean(&String::from_utf8_lossy(&self.bytes));
        if self.truncated {
            text.push_str(TRUNCATED);
        }
        text
    }
}

/// Reads one line (ending at `\n`, or at the end of input) from `reader`,
/// keeping at most `max` bytes of it and reading past the rest. `None` at the
/// end of input. A trailing `\r` is removed.
pub(crate) async fn read_line<R: AsyncBufRead + Unpin>(
    reader: &mut R,
    max: usize,
) -> std::io::Result<Option<RawLine>> {
    let mut bytes = Vec::new();
    let mut truncated = false;
    let mut seen_any = false;
    loop {
        let buf = reader.fill_buf().await?;
        if buf.is_empty() {
            return Ok(seen_any.then(|| finish(bytes, truncated)));
        }
        seen_any = true;
        let (chunk, used, done) = match buf.iter().position(|&b| b == b'\n') {
            Some(i) => (&buf[..i], i + 1, true),
            None => (buf, buf.len(), false),
        };
        let room = max.saturating_sub(bytes.len());
        if chunk.len() > room {
            truncated = true;
        }
        bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
        reader.consume(used);
        if done {
            return Ok(Some(finish(bytes, truncated)));
        }
    }
}

/// Drops a trailing `\r` from a line read whole.
fn finish(mut bytes: Vec<u8>, truncated: bool) -> RawLine {
    if !truncated && bytes.last() == Some(&b'\r') {
        bytes.pop();
    }
    RawLine { bytes, truncated }
}

/// `line` without terminal control sequences: CSI (`ESC [` … final byte),
/// OSC, DCS, SOS, PM and APC strings (up to BEL or ST), other `ESC`
/// sequences, their 8-bit C1 forms, every other C0 or C1 control character
/// and DEL but tab, and the bidirectional embeddings, overrides and isolates
/// (U+202A–U+202E, U+2066–U+2069), which would make the rest of a log line
/// read in another order than it is written. A sequence cut off by the end
/// of the line is dropped whole. Plain text comes back unchanged.
pub(crate) fn clean(line: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut chars = line.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '\x1b' => match chars.next() {
                Some('[') => skip_csi(&mut chars),
                Some(']' | 'P' | 'X' | '^' | '_') => skip_string(&mut chars),
                Some(c) => skip_escape(c, &mut chars),
                None => {}
            },
            '\u{9b}' => skip_csi(&mut chars),
            '\u{9d}' | '\u{90}' | '\u{98}' | '\u{9e}' | '\u{9f}' => skip_string(&mut chars),
            '\t' => out.push(c),
            c if c.is_control() || is_bidi_control(c) => {}
            c => out.push(c),
        }
    }
    out
}

/// Whether `c` opens or closes a bidirectional embedding, override or
/// isolate.
fn is_bidi_control(c: char) -> bool {
    matches!(c, '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
}

/// Characters of the line being cleaned.
type Chars<'a> = std::iter::Peekable<std::str::Chars<'a>>;

/// Skips a CSI sequence's parameter and intermediate bytes and its final
/// byte. Anything else ends the sequence and is left to the caller.
fn skip_csi(chars: &mut Chars<'_>) {
    skip_to_final(chars, '\x20'..='\x3f', '\x40'..='\x7e');
}

/// Skips bytes in `middle`, then one byte in `last` (the sequence's final
/// byte); any other byte ends the sequence and is left to the caller.
fn skip_to_final(chars: &mut Chars<'_>, middle: RangeInclusive<char>, last: RangeInclusive<char>) {
    while let Some(&c) = chars.peek() {
        if middle.contains(&c) {
            chars.next();
        } else {
            if last.contains(&c) {
                chars.next();
            }
            return;
        }
    }
}

/// Skips a control string (OSC, DCS, SOS, PM, APC) up to and including its
/// terminator: BEL, ST (`ESC \` or U+009C); to the end of the line if none.
fn skip_string(chars: &mut Chars<'_>) {
    while let Some(c) = chars.next() {
        match c {
            '\x07' | '\u{9c}' => return,
            '\x1b' => {
                if chars.peek() == Some(&'\\') {
                    chars.next();
                }
                return;
            }
            _ => {}
        }
    }
}

/// Skips the rest of a two-or-more-byte `ESC` sequence whose first byte
/// after `ESC` is `first`: intermediate bytes, then one final byte.
fn skip_escape(first: char, chars: &mut Chars<'_>) {
    if !('\x20'..='\x2f').contains(&first) {
        // `first` was the final byte, or a stray character: dropped with
        // the ESC either way.
        return;
    }
    skip_to_final(chars, '\x20'..='\x2f', '\x30'..='\x7e');
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Passes `text` through [`read_line`] with `max`, collecting every line.
    async fn lines(text: &[u8], max: usize) -> Vec<RawLine> {
        let mut reader = tokio::io::BufReader::with_capacity(4, text);
        let mut out = Vec::new();
        while let Some(line) = read_line(&mut reader, max).await.unwrap() {
            out.push(line);
        }
        out
    }

    fn raw(bytes: &[u8], truncated: bool) -> RawLine {
        RawLine {
            bytes: bytes.to_vec(),
            truncated,
        }
    }

    #[test]
    fn bidirectional_overrides_and_isolates_are_removed() {
        // "admin" shown reversed by an override, an isolate around a name,
        // an embedding: the characters stay, the controls go. Right-to-left
        // text itself, and the plain marks (U+200E, U+200F), are kept.
        let line = "user \u{202e}nimda\u{202c} \u{2067}x\u{2069} \u{202a}y\u{202c}";
        assert_eq!(clean(line), "user nimda x y");
        assert_eq!(clean("שלום \u{200f}ok"), "שלום \u{200f}ok");
    }

    #[test]
    fn plain_text_is_unchanged() {
        for text in [
            "",
            "hello",
            "2026-12-01T10:00:00Z  INFO echo: listening on 127.0.0.1:4000",
            "tab\tseparated\tfields",
            "unicode: é ü 漢字 🙂 — and [brackets] ]not osc[",
        ] {
            assert_eq!(clean(text), text);
        }
    }

    #[test]
    fn tracing_colour_output_is_stripped() {
        let line = "\x1b[2m2026-12-01T10:00:00.123456Z\x1b[0m \x1b[32m INFO\x1b[0m \
                    \x1b[2mecho_module\x1b[0m\x1b[2m:\x1b[0m listening \x1b[3maddr\x1b[0m\x1b[2m=\x1b[0m127.0.0.1:4000";
        assert_eq!(
            clean(line),
            "2026-12-01T10:00:00.123456Z  INFO echo_module: listening addr=127.0.0.1:4000"
        );
        let line = "\x1b[1;31mERROR\x1b[0m \x1b[38;5;208mwarn\x1b[39m \x1b[38;2;1;2;3mrgb\x1b[m";
        assert_eq!(clean(line), "ERROR warn rgb");
    }

    #[test]
    fn cursor_and_screen_control_is_stripped() {
        assert_eq!(clean("a\x1b[2J\x1b[H\x1b[10;20Hb"), "ab");
        assert_eq!(clean("a\x1b[?25lb\x1b[?1049h"), "ab");
        assert_eq!(clean("over\rwrite\x08\x08\x7f"), "overwrite");
        assert_eq!(clean("bell\x07 nul\0 vt\x0b ff\x0c"), "bell nul vt ff");
    }

    #[test]
    fn osc_and_other_strings_are_stripped() {
        assert_eq!(clean("a\x1b]0;evil title\x07b"), "ab");
        assert_eq!(
            clean("a\x1b]8;;http://x.example/\x1b\\link\x1b]8;;\x1b\\b"),
            "alinkb"
        );
        assert_eq!(clean("a\x1bPq#0;2;0;0;0\x1b\\b"), "ab");
        assert_eq!(clean("a\x1b_apc\x1b\\b\x1b^pm\x07c\x1bXsos\x1b\\d"), "abcd");
    }

    #[test]
    fn other_escape_sequences_are_stripped() {
        assert_eq!(clean("a\x1bcb"), "ab", "RIS");
        assert_eq!(clean("a\x1b7b\x1b8c"), "abc", "save and restore cursor");
        assert_eq!(clean("a\x1b(0b\x1b(Bc"), "abc", "character sets");
        assert_eq!(clean("a\x1b#8b"), "ab", "screen alignment");
    }

    #[test]
    fn c1_controls_are_stripped() {
        assert_eq!(clean("a\u{9b}31mb\u{9b}0m"), "ab", "8-bit CSI");
        assert_eq!(clean("a\u{9d}0;title\u{9c}b"), "ab", "8-bit OSC and ST");
        assert_eq!(clean("a\u{85}b\u{8d}c"), "abc");
    }

    #[test]
    fn sequences_cut_off_at_end_of_line_are_dropped() {
        for (line, want) in [
            ("text\x1b", "text"),
            ("text\x1b[", "text"),
            ("text\x1b[38;5", "text"),
            ("text\x1b]0;title", "text"),
            ("text\x1b]0;title\x1b", "text"),
            ("text\x1b(", "text"),
            ("text\u{9b}1;2", "text"),
        ] {
            assert_eq!(clean(line), want, "{line:?}");
        }
    }

    #[test]
    fn malformed_sequences_never_let_escape_through() {
        // A CSI interrupted by another ESC: the second sequence is removed too.
        assert_eq!(clean("a\x1b[31\x1b[0mb"), "ab");
        // A CSI interrupted by a non-ASCII character keeps that character.
        assert_eq!(clean("a\x1b[3é"), "aé");
        // Every byte value after ESC, alone and followed by text.
        for b in 0u8..=0x7f {
            let line = format!("x\x1b{}y\x1b[{}z", b as char, b as char);
            let out = clean(&line);
            assert!(
                !out.chars().any(|c| c.is_control() && c != '\t'),
                "{line:?} -> {out:?}"
            );
        }
    }

    #[test]
    fn output_never_holds_control_characters() {
        // A deterministic mix of printable text, controls and sequence starts.
        let alphabet: Vec<char> = "a[];0?m\x1b\x07\\\u{9b}\u{9c}\u{9d}\r\t P_"
            .chars()
            .collect();
        let mut state = 0x2545_f491_u32;
        for _ in 0..2000 {
            let mut line = String::new();
            for _ in 0..(state % 24) {
                state ^= state << 13;
                state ^= state >> 17;
                state ^= state << 5;
                line.push(alphabet[state as usize % alphabet.len()]);
            }
            let out = clean(&line);
            assert!(
                !out.chars().any(|c| c.is_control() && c != '\t'),
                "{line:?} -> {out:?}"
            );
            assert!(out.len() <= line.len());
        }
    }

    #[tokio::test]
    async fn lines_are_read_whole_up_to_the_bound() {
        let got = lines(b"one\ntwo\r\n\nlast", 100).await;
        assert_eq!(
            got,
            [
                raw(b"one", false),
                raw(b"two", false),
                raw(b"", false),
                raw(b"last", false)
            ]
        );
        assert!(lines(b"", 100).await.is_empty());
    }

    #[tokio::test]
    async fn long_lines_are_cut_and_the_rest_skipped() {
        let got = lines(b"0123456789abcdef\nnext\n", 10).await;
        assert_eq!(got, [raw(b"0123456789", true), raw(b"next", false)]);
        assert_eq!(got[0].to_log_text(), format!("0123456789{TRUNCATED}"));
        let got = lines(b"0123456789\n", 10).await;
        assert_eq!(got, [raw(b"0123456789", false)]);
    }

    #[tokio::test]
    async fn invalid_utf8_and_escapes_become_plain_text() {
        let got = lines(b"\x1b[32m INFO\x1b[0m bad \xff\xfe byte\n", 100).await;
        assert_eq!(got[0].to_log_text(), " INFO bad \u{fffd}\u{fffd} byte");
        // A multi-byte character cut at the bound is replaced, not a panic.
        let got = lines("ab漢".as_bytes(), 4).await;
        assert_eq!(got[0].to_log_text(), format!("ab\u{fffd}{TRUNCATED}"));
    }
}
