//! Faults a broken or malicious endpoint could produce, for the client's "a hostile server
//! can't hurt us" tests: the bytes of each, written by hand. `ws` and `rest` decide when a fault
//! applies (like every other fault); this module only knows how to misbehave.
//!
//! WebSocket: a frame header announcing a payload of gigabytes ([`push_huge_frame_header`]),
//! a text frame that is not UTF-8 ([`push_invalid_utf8`]), a frame trickled a byte at a time
//! ([`trickle`]), and two upgrade answers that never make a usable head
//! ([`answer_upgrade`]: thousands of headers, or one header line without end). REST: a body
//! that never ends or is gigabytes long ([`stream_body`]), an answer trickled a byte at a time
//! ([`trickle`]); a deeply nested body and a redirect are ordinary responses built by `rest`.
//!
//! Every loop here writes through the socket's send timeout and checks the stop flag at least
//! every tick (`rest`'s 20 ms, through its `write_all` and `sleep_unless_stopped`), so shutdown still joins within a second, and ends when the client goes away.

use std::io::{self, Read};
use std::net::TcpStream;
use std::time::{Duration, Instant};

use super::gen;
use super::rest::{sleep_unless_stopped, write_all};
use super::{Shared, WsFault};

/// Bytes per write of an endless or huge body.
const BODY_CHUNK: usize = 64 * 1024;
/// How long an upgrade answer waits for the client's request head before answering anyway.
const REQUEST_WAIT: Duration = Duration::from_secs(5);

/// A text frame header announcing `len` payload bytes, then 16 of them; the rest never comes.
pub(crate) fn push_huge_frame_header(out: &mut Vec<u8>, len: u64) {
    out.push(0x80 | gen::OPCODE_TEXT);
    out.push(127);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&b"{\"type\":\"trade\",\""[..16]);
}

/// A complete text frame whose payload is not valid UTF-8 (a lone continuation byte and an
/// invalid lead byte inside otherwise plain JSON).
pub(crate) fn push_invalid_utf8(out: &mut Vec<u8>) {
    let payload: &[u8] = b"{\"type\":\"trade\",\"symbol_id\":\"BAD_\x80\xff\",\"sequence\":1}";
    gen::push_frame_header(out, gen::OPCODE_TEXT, payload.len());
    out.extend_from_slice(payload);
}

/// The frame a `TrickleFrame` fault sends: a heartbeat padded to `bytes` of payload (valid, so a
/// client that waited it out would just see a heartbeat).
pub(crate) fn trickle_frame(bytes: usize) -> Vec<u8> {
    let head = "{\"type\":\"hearbeat\",\"pad\":\"";
    let tail = "\"}";
    let pad = bytes.saturating_sub(head.len() + tail.len());
    let text = format!("{head}{}{tail}", "x".repeat(pad));
    let mut out = Vec::with_capacity(text.len() + 10);
    gen::push_text_frame(&mut out, &text);
    out
}

/// Writes `bytes` one byte every `interval`. `Err` with why it stopped early: the client left
/// (a write error) or the simulator is stopping.
pub(crate) fn trickle(shared: &Shared, tcp: &mut TcpStream, bytes: &[u8], interval: Duration) -> Result<(), String> {
    tcp.set_nonblocking(false).map_err(|e| format!("socket error: {e}"))?;
    for (i, byte) in bytes.iter().enumerate() {
        if i > 0 && !sleep_unless_stopped(shared, interval) {
            return Err("shutdown".to_string());
        }
        write_all(shared, tcp, std::slice::from_ref(byte))
            .map_err(|e| format!("trickle ended after {i} bytes: {e}"))?;
    }
    Ok(())
}

/// Answers an upgrade request with one of the hostile upgrade faults instead of a handshake,
/// and writes until the client gives up. Returns why it ended.
pub(crate) fn answer_upgrade(shared: &Shared, mut tcp: TcpStream, fault: &WsFault) -> String {
    if !read_request_head(shared, &mut tcp) {
        return "client left before its upgrade request was complete".to_string();
    }
    let start = "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n";
    let result = match fault {
        WsFault::UpgradeHeaderFlood { count } => {
            let mut head = start.to_string();
            for i in 0..*count {
                head.push_str(&format!("X-Flood-{i}: {i}\r\n"));
            }
            head.push_str("\r\n");
            write_all(shared, &mut tcp, head.as_bytes()).map(|()| format!("sent {count} extra headers"))
        }
        WsFault::UpgradeEndlessHeader => {
            let mut sent = 0u64;
            let chunk = vec![b'a'; BODY_CHUNK];
            let mut result = write_all(shared, &mut tcp, format!("{start}X-Endless: ").as_bytes());
            while result.is_ok() {
                result = write_all(shared, &mut tcp, &chunk);
                sent += chunk.len() as u64;
            }
            result
                .map(|()| String::new())
                .map_err(|e| io::Error::other(format!("after {sent} bytes of one header line: {e}")))
        }
        _ => Ok("not a hostile upgrade fault".to_string()),
    };
    let reason = match result {
        Ok(what) => {
            // Hold the socket: the client must be the one to give up.
            let held = super::hold(shared, tcp);
            format!("{what}; then {held}")
        }
        Err(e) => e.to_string(),
    };
    format!("hostile upgrade answer ended: {reason}")
}

/// A 200 whose body is `content_length` bytes of one JSON array (`None`: chunked, never ending),
/// written as fast as the client reads, until it is done, the client leaves or the simulator
/// stops. Returns why it ended.
pub(crate) fn stream_body(shared: &Shared, tcp: &mut TcpStream, content_length: Option<u64>) -> String {
    let framing = match content_length {
        Some(n) => format!("Content-Length: {n}"),
        None => "Transfer-Encoding: chunked".to_string(),
    };
    let head = format!("HTTP/1.1 200 OK\r\nContent-Type: application/json; charset=utf-8\r\n{framing}\r\n\r\n");
    if let Err(e) = write_all(shared, tcp, head.as_bytes()) {
        return format!("head not written: {e}");
    }
    // `[` then `{"a":0},` over and over: the start of a valid (and ever longer) record list.
    let unit = b"{\"a\":0},";
    let mut chunk = Vec::with_capacity(BODY_CHUNK + 16);
    chunk.push(b'[');
    while chunk.len() + unit.len() <= BODY_CHUNK {
        chunk.extend_from_slice(unit);
    }
    let mut sent: u64 = 0;
    loop {
        let piece: &[u8] = match content_length {
            Some(n) if sent >= n => return format!("all {n} bytes sent"),
            Some(n) => &chunk[..chunk.len().min(usize::try_from(n - sent).unwrap_or(usize::MAX))],
            None => &chunk,
        };
        let written = match content_length {
            Some(_) => write_all(shared, tcp, piece),
            None => write_all(shared, tcp, format!("{:x}\r\n", piece.len()).as_bytes())
                .and_then(|()| write_all(shared, tcp, piece))
                .and_then(|()| write_all(shared, tcp, b"\r\n")),
        };
        if let Err(e) = written {
            return format!("body ended after {sent} bytes: {e}");
        }
        sent += piece.len() as u64;
        // After the first chunk the body goes on with records only.
        if sent == piece.len() as u64 {
            chunk.remove(0);
            chunk.push(b' ');
        }
    }
}

/// Reads until the end of an HTTP request head (or `REQUEST_WAIT`); false if the client left.
fn read_request_head(shared: &Shared, tcp: &mut TcpStream) -> bool {
    let deadline = Instant::now() + REQUEST_WAIT;
    let mut head = Vec::new();
    let mut chunk = [0u8; 4096];
    while Instant::now() < deadline && !shared.stopping() && head.len() < 64 * 1024 {
        match tcp.read(&mut chunk) {
            Ok(0) => return false,
            Ok(n) => {
                head.extend_from_slice(&chunk[..n]);
                if memchr::memmem::find(&head, b"\r\n\r\n").is_some() {
                    return true;
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut | io::ErrorKind::Interrupted
                ) => {}
            Err(_) => return false,
        }
    }
    !shared.stopping()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hostile_frames_have_the_announced_shape() {
        let mut out = Vec::new();
        push_huge_frame_header(&mut out, 4 << 30);
        assert_eq!(&out[..2], &[0x81, 127]);
        assert_eq!(u64::from_be_bytes(out[2..10].try_into().expect("8 bytes")), 4 << 30);
        let mut bad = Vec::new();
        push_invalid_utf8(&mut bad);
        assert!(std::str::from_utf8(&bad[2..]).is_err());
        assert_eq!(usize::from(bad[1]), bad.len() - 2);
        let frame = trickle_frame(300);
        assert_eq!((frame[1], u16::from_be_bytes([frame[2], frame[3]])), (126, 300));
        let text = std::str::from_utf8(&frame[4..]).expect("utf-8");
        assert!(serde_json::from_str::<serde_json::Value>(text).is_ok(), "{text}");
    }
}
