//! The recording format of `--record` and `coinfeed replay`: every raw text frame the reader
//! read, with its receive time and connection generation, and every connection event, so a
//! replay can run the same pipeline and write the same lines. Pure: bytes in, records out.
//!
//! A file is a 16-byte header followed by records, appended one after another:
//!
//! ```text
//! header  "CFEEDREC" | version u32 LE (1) | flags u32 LE (0)
//! record  body length u32 LE | CRC-32 of the body u32 LE | body
//! body    kind u8 | generation u64 LE | time i64 LE (Unix ns) | payload
//!         kind 1 (frame):      payload = the frame's text, exactly as read (UTF-8)
//!         kind 2 (connection): payload = event u8 (1 connected, 2 disconnected, 3 connect failed)
//!                              | url length u16 LE | url | reason (the rest, UTF-8)
//! ```
//!
//! 25 bytes per frame beyond its text (a CoinAPI quote is ~250 bytes). Fixed-width fields keep
//! every record independent of the one before, so damage costs the records from the damaged
//! one on, never a misread: a length beyond `RECORD_BODY_MAX`, a checksum that does not match,
//! an unknown kind or a frame that is not UTF-8 stops the reading there and is reported with
//! its byte offset; a file cut short (the recorder was killed mid-write) ends at its last whole
//! record, reported as truncated.

use crate::config::limits::MAX_MESSAGE_BYTES;
use crate::output::ndjson::ConnectionEvent;

/// The first bytes of every recording.
pub const MAGIC: &[u8; 8] = b"CFEEDREC";
/// The format version this build writes and reads.
pub const VERSION: u32 = 1;
/// Header bytes before the first record.
pub const HEADER_BYTES: usize = 16;
/// Bytes before a record's body: its length and checksum.
const PREFIX_BYTES: usize = 8;
/// Bytes of a body before its payload: kind, generation, time.
const BODY_FIXED_BYTES: usize = 17;
/// The largest body a recording may hold: the largest frame the reader accepts plus its fields.
pub const RECORD_BODY_MAX: usize = MAX_MESSAGE_BYTES + 1024;

const KIND_FRAME: u8 = 1;
const KIND_CONNECTION: u8 = 2;

/// The file header, written first in every recording file.
pub fn header() -> [u8; HEADER_BYTES] {
    let mut h = [0u8; HEADER_BYTES];
    h[..8].copy_from_slice(MAGIC);
    h[8..12].copy_from_slice(&VERSION.to_le_bytes());
    h
}

/// One recorded event, borrowing its text from the file's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Record<'a> {
    /// A text frame as the reader read it (data, heartbeat, error or reconnect notice).
    Frame { recv_unix_ns: i128, generation: u64, text: &'a str },
    /// A connection line's event, as the reader wrote it.
    Connection { at_unix_ns: i128, generation: u64, event: ConnectionEvent, url: &'a str, reason: &'a str },
}

fn event_code(event: ConnectionEvent) -> u8 {
    match event {
        ConnectionEvent::Connected => 1,
        ConnectionEvent::Disconnected => 2,
        ConnectionEvent::ConnectFailed => 3,
    }
}

fn event_of(code: u8) -> Option<ConnectionEvent> {
    match code {
        1 => Some(ConnectionEvent::Connected),
        2 => Some(ConnectionEvent::Disconnected),
        3 => Some(ConnectionEvent::ConnectFailed),
        _ => None,
    }
}

/// Times outside i64 nanoseconds (years 1677..2262) are clamped: no clock gives them.
fn time_bits(unix_ns: i128) -> [u8; 8] {
    (unix_ns.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64).to_le_bytes()
}

/// Appends one record to `out`.
pub fn encode(record: &Record<'_>, out: &mut Vec<u8>) {
    let start = out.len();
    out.extend_from_slice(&[0u8; PREFIX_BYTES]);
    match record {
        Record::Frame { recv_unix_ns, generation, text } => {
            out.push(KIND_FRAME);
            out.extend_from_slice(&generation.to_le_bytes());
            out.extend_from_slice(&time_bits(*recv_unix_ns));
            out.extend_from_slice(text.as_bytes());
        }
        Record::Connection { at_unix_ns, generation, event, url, reason } => {
            out.push(KIND_CONNECTION);
            out.extend_from_slice(&generation.to_le_bytes());
            out.extend_from_slice(&time_bits(*at_unix_ns));
            out.push(event_code(*event));
            let url = &url.as_bytes()[..url.len().min(usize::from(u16::MAX))];
            out.extend_from_slice(&(url.len() as u16).to_le_bytes());
            out.extend_from_slice(url);
            out.extend_from_slice(reason.as_bytes());
        }
    }
    let body_len = out.len() - start - PREFIX_BYTES;
    let crc = crc32fast::hash(&out[start + PREFIX_BYTES..]);
    out[start..start + 4].copy_from_slice(&(body_len as u32).to_le_bytes());
    out[start + 4..start + 8].copy_from_slice(&crc.to_le_bytes());
}

/// Where and why reading stopped before the end of the bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Damage {
    /// Byte offset of the record (or header) that could not be read.
    pub offset: u64,
    pub problem: Problem,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Problem {
    /// Not a coinfeed recording (wrong magic).
    NotARecording,
    /// A recording of a format version (or with flags) this build does not read.
    Version(u32),
    Flags(u32),
    /// The bytes end inside a record (or the header): the recorder stopped mid-write.
    Truncated,
    /// A record's length is beyond `RECORD_BODY_MAX` or below its fixed fields.
    BadLength,
    /// A record's checksum does not match its body.
    Checksum,
    /// A record of a kind (or connection event) this build does not know.
    BadKind,
    /// A frame or text that is not UTF-8.
    NotUtf8,
}

impl std::fmt::Display for Damage {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let what = match self.problem {
            Problem::NotARecording => "not a coinfeed recording (no CFEEDREC header)".to_string(),
            Problem::Version(v) => format!("format version {v}, this build reads version {VERSION}"),
            Problem::Flags(v) => format!("format flags {v:#x}, this build reads none"),
            Problem::Truncated => "the file ends inside a record (cut short while it was written)".to_string(),
            Problem::BadLength => "a record length out of bounds".to_string(),
            Problem::Checksum => "a record whose checksum does not match".to_string(),
            Problem::BadKind => "a record of an unknown kind".to_string(),
            Problem::NotUtf8 => "a record whose text is not UTF-8".to_string(),
        };
        write!(f, "{what} at byte {}", self.offset)
    }
}

/// Checks a file's header; the records start at `HEADER_BYTES`.
pub fn check_header(bytes: &[u8]) -> Result<(), Damage> {
    let damage = |problem| Err(Damage { offset: 0, problem });
    if bytes.len() < HEADER_BYTES {
        return if MAGIC.starts_with(&bytes[..bytes.len().min(8)]) {
            damage(Problem::Truncated)
        } else {
            damage(Problem::NotARecording)
        };
    }
    if &bytes[..8] != MAGIC {
        return damage(Problem::NotARecording);
    }
    let version = u32::from_le_bytes([bytes[8], bytes[9], bytes[10], bytes[11]]);
    if version != VERSION {
        return damage(Problem::Version(version));
    }
    let flags = u32::from_le_bytes([bytes[12], bytes[13], bytes[14], bytes[15]]);
    if flags != 0 {
        return damage(Problem::Flags(flags));
    }
    Ok(())
}

/// Reads the record at `at` in `bytes`: the record and the offset of the next one, `Ok(None)`
/// at the clean end, or the damage.
pub fn decode(bytes: &[u8], at: usize) -> Result<Option<(Record<'_>, usize)>, Damage> {
    let rest = &bytes[at.min(bytes.len())..];
    if rest.is_empty() {
        return Ok(None);
    }
    let damage = |problem| Err(Damage { offset: at as u64, problem });
    if rest.len() < PREFIX_BYTES {
        return damage(Problem::Truncated);
    }
    let len = u32::from_le_bytes([rest[0], rest[1], rest[2], rest[3]]) as usize;
    if !(BODY_FIXED_BYTES..=RECORD_BODY_MAX).contains(&len) {
        return damage(Problem::BadLength);
    }
    let Some(body) = rest.get(PREFIX_BYTES..PREFIX_BYTES + len) else {
        return damage(Problem::Truncated);
    };
    if crc32fast::hash(body) != u32::from_le_bytes([rest[4], rest[5], rest[6], rest[7]]) {
        return damage(Problem::Checksum);
    }
    let u64_at = |i: usize| {
        let mut b = [0u8; 8];
        b.copy_from_slice(&body[i..i + 8]);
        b
    };
    let generation = u64::from_le_bytes(u64_at(1));
    let time = i128::from(i64::from_le_bytes(u64_at(9)));
    let payload = &body[BODY_FIXED_BYTES..];
    let next = at + PREFIX_BYTES + len;
    let record = match body[0] {
        KIND_FRAME => {
            let Ok(text) = std::str::from_utf8(payload) else { return damage(Problem::NotUtf8) };
            Record::Frame { recv_unix_ns: time, generation, text }
        }
        KIND_CONNECTION => {
            let (Some(event), Some(url_len)) = (
                payload.first().copied().and_then(event_of),
                payload.get(1..3).map(|b| u16::from_le_bytes([b[0], b[1]])),
            ) else {
                return damage(Problem::BadKind);
            };
            let Some(url) = payload.get(3..3 + usize::from(url_len)) else { return damage(Problem::BadLength) };
            let reason = &payload[3 + usize::from(url_len)..];
            let (Ok(url), Ok(reason)) = (std::str::from_utf8(url), std::str::from_utf8(reason)) else {
                return damage(Problem::NotUtf8);
            };
            Record::Connection { at_unix_ns: time, generation, event, url, reason }
        }
        _ => return damage(Problem::BadKind),
    };
    Ok(Some((record, next)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Vec<Record<'static>> {
        vec![
            Record::Connection {
                at_unix_ns: 1_700_000_000_000_000_000,
                generation: 1,
                event: ConnectionEvent::Connected,
                url: "ws://127.0.0.1:9/v1/",
                reason: "",
            },
            Record::Frame {
                recv_unix_ns: 1_700_000_000_123_456_789,
                generation: 1,
                text: r#"{"type":"trade","symbol_id":"A","price":0.10000000000000000000000000001}"#,
            },
            Record::Frame { recv_unix_ns: 1_700_000_000_200_000_000, generation: 1, text: r#"{"type":"hearbeat"}"# },
            Record::Connection {
                at_unix_ns: 1_700_000_001_000_000_000,
                generation: 1,
                event: ConnectionEvent::Disconnected,
                url: "ws://127.0.0.1:9/v1/",
                reason: "no message for 5.1s (stale timeout 5.0s) — ünïcode",
            },
        ]
    }

    fn file(records: &[Record<'_>]) -> Vec<u8> {
        let mut out = header().to_vec();
        for r in records {
            encode(r, &mut out);
        }
        out
    }

    /// Reads every record of a whole file: the records and the damage that stopped it, if any.
    fn read_all(bytes: &[u8]) -> (Vec<Record<'_>>, Option<Damage>) {
        if let Err(d) = check_header(bytes) {
            return (Vec::new(), Some(d));
        }
        let mut at = HEADER_BYTES;
        let mut out = Vec::new();
        loop {
            match decode(bytes, at) {
                Ok(Some((r, next))) => {
                    out.push(r);
                    at = next;
                }
                Ok(None) => return (out, None),
                Err(d) => return (out, Some(d)),
            }
        }
    }

    #[test]
    fn records_round_trip_exactly() {
        let bytes = file(&sample());
        let (records, damage) = read_all(&bytes);
        assert_eq!(damage, None);
        assert_eq!(records, sample());
        let frame_text = r#"{"type":"hearbeat"}"#;
        let mut one = Vec::new();
        encode(&Record::Frame { recv_unix_ns: 0, generation: 0, text: frame_text }, &mut one);
        assert_eq!(one.len(), 25 + frame_text.len(), "25 bytes beyond the text");
    }

    /// Proves a file cut anywhere reads exactly the whole records before the cut and reports
    /// a cut inside a record as truncation: what a recorder killed mid-write leaves.
    #[test]
    fn a_file_cut_anywhere_reads_up_to_the_cut() {
        let bytes = file(&sample());
        let ends: Vec<usize> = {
            let mut at = HEADER_BYTES;
            let mut v = vec![at];
            while let Ok(Some((_, next))) = decode(&bytes, at) {
                v.push(next);
                at = next;
            }
            v
        };
        for cut in 0..bytes.len() {
            let (records, damage) = read_all(&bytes[..cut]);
            let whole = ends.iter().filter(|&&e| e <= cut).count().saturating_sub(1);
            assert_eq!(records.len(), whole, "cut at {cut}");
            assert_eq!(records[..], sample()[..whole], "cut at {cut}");
            if ends.contains(&cut) {
                assert_eq!(damage, None, "a cut between records is a clean end (cut at {cut})");
            } else {
                assert_eq!(damage.map(|d| d.problem), Some(Problem::Truncated), "cut at {cut}");
            }
        }
    }

    /// Proves every flipped byte is caught (by the header check, a length bound or the
    /// checksum) and never read as a different record, and never panics.
    #[test]
    fn every_flipped_byte_is_reported_never_misread() {
        let good = file(&sample());
        for i in 0..good.len() {
            for flip in [0x01u8, 0x80, 0xff] {
                let mut bad = good.clone();
                bad[i] ^= flip;
                let (records, damage) = read_all(&bad);
                let damage = damage.unwrap_or_else(|| panic!("byte {i} ^ {flip:#x} went unnoticed"));
                assert!(records.iter().zip(sample()).all(|(a, b)| *a == b), "byte {i}: a record was misread");
                assert!(damage.offset as usize <= i, "byte {i}: damage reported after it ({damage})");
            }
        }
        let mut v2 = good.clone();
        v2[8] = 2;
        assert_eq!(read_all(&v2).1.map(|d| d.problem), Some(Problem::Version(2)));
        assert_eq!(read_all(b"{\"type\":\"trade\"}\n").1.map(|d| d.problem), Some(Problem::NotARecording));
    }
}
