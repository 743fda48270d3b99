//! The worker's full check of a frame, in one pass with no allocation: the whole text must be
//! one JSON object (RFC 8259 grammar, as serde_json accepts it), and the four fields the pipeline
//! relies on are taken out on the way. Every other value is validated and skipped.
//!
//! Why not serde_json: validation is the biggest per-message cost a worker has, and through a
//! derived struct a trade took 347 ns against 264 ns here (quote 377 against 271; best of
//! 7 × 500,000 on the project's VM). serde_json stays the reference: a test in `wire/mod.rs`
//! feeds both the same frames and 300,000 mutations of them and requires the same verdict and
//! the same fields.

use std::borrow::Cow;

/// Nesting deeper than this is refused (serde_json's limit is 128); CoinAPI's deepest message is
/// an order book: an object holding arrays of objects.
const MAX_DEPTH: usize = 128;

/// The fields `wire::decode` needs, borrowed where the frame has no escapes.
#[derive(Debug, PartialEq, Eq)]
pub struct Head<'a> {
    pub kind: Cow<'a, str>,
    pub symbol_id: Option<Cow<'a, str>>,
    pub sequence: Option<u64>,
    pub uuid: Option<Cow<'a, str>>,
    pub time_exchange: Option<Cow<'a, str>>,
    pub is_snapshot: Option<bool>,
}

/// Validates `text` as one JSON object and returns its head fields. `type` is required to be a
/// string; `symbol_id`, `uuid` and `time_exchange` are strings or null; `sequence` an unsigned
/// 64-bit integer or null; `is_snapshot` a boolean or null. A head field given twice is an error
/// (as with serde).
pub fn scan_object(text: &str) -> Result<Head<'_>, String> {
    let mut s = Scanner { b: text.as_bytes(), text, i: 0 };
    s.ws();
    if s.peek() != Some(b'{') {
        return Err(s.err("not a JSON object"));
    }
    s.i += 1;
    let (mut kind, mut symbol_id, mut sequence, mut uuid) = (None, None, None, None);
    let (mut time_exchange, mut is_snapshot) = (None, None);
    let mut seen = [false; HEAD_FIELDS.len()];
    s.ws();
    if s.peek() == Some(b'}') {
        s.i += 1;
    } else {
        loop {
            s.ws();
            let field = s.head_key()?;
            s.ws();
            if s.peek() != Some(b':') {
                return Err(s.err("expected ':'"));
            }
            s.i += 1;
            s.ws();
            match field {
                None => s.value(1)?,
                Some(f) => {
                    if std::mem::replace(&mut seen[f], true) {
                        return Err(format!("duplicate field `{}`", HEAD_FIELDS[f]));
                    }
                    match f {
                        0 => kind = Some(s.string()?),
                        1 => symbol_id = s.null_or(Scanner::string)?,
                        2 => sequence = s.null_or(Scanner::unsigned)?,
                        3 => uuid = s.null_or(Scanner::string)?,
                        4 => time_exchange = s.null_or(Scanner::string)?,
                        _ => is_snapshot = s.null_or(Scanner::boolean)?,
                    }
                }
            }
            s.ws();
            match s.peek() {
                Some(b',') => s.i += 1,
                Some(b'}') => {
                    s.i += 1;
                    break;
                }
                _ => return Err(s.err("expected ',' or '}'")),
            }
        }
    }
    s.ws();
    if s.i != s.b.len() {
        return Err(s.err("trailing characters"));
    }
    let kind = kind.ok_or_else(|| "missing field `type`".to_string())?;
    Ok(Head { kind, symbol_id, sequence, uuid, time_exchange, is_snapshot })
}

const HEAD_FIELDS: [&str; 6] = ["type", "symbol_id", "sequence", "uuid", "time_exchange", "is_snapshot"];

struct Scanner<'a> {
    b: &'a [u8],
    text: &'a str,
    i: usize,
}

impl<'a> Scanner<'a> {
    fn peek(&self) -> Option<u8> {
        self.b.get(self.i).copied()
    }

    fn err(&self, what: &str) -> String {
        match self.peek() {
            Some(c) if c.is_ascii() => format!("{what} at byte {} (found {:?})", self.i, char::from(c)),
            Some(c) => format!("{what} at byte {} (found byte 0x{c:02x})", self.i),
            None => format!("{what} at byte {} (end of text)", self.i),
        }
    }

    fn ws(&mut self) {
        while matches!(self.peek(), Some(b' ' | b'\n' | b'\r' | b'\t')) {
            self.i += 1;
        }
    }

    fn null_or<T>(&mut self, f: fn(&mut Self) -> Result<T, String>) -> Result<Option<T>, String> {
        if self.b[self.i..].starts_with(b"null") {
            self.i += 4;
            Ok(None)
        } else {
            f(self).map(Some)
        }
    }

    /// A top-level key: the index of the head field it names, if it does.
    fn head_key(&mut self) -> Result<Option<usize>, String> {
        let start = self.i;
        let escaped = self.skip_string()?;
        let raw = &self.b[start + 1..self.i - 1];
        if !escaped {
            return Ok(HEAD_FIELDS.iter().position(|f| f.as_bytes() == raw));
        }
        // Rare: a key with escapes is decoded first (serde_json refuses lone surrogates in it).
        let key = serde_json::from_str::<String>(&self.text[start..self.i])
            .map_err(|e| format!("bad key at byte {start}: {e}"))?;
        Ok(HEAD_FIELDS.iter().position(|f| *f == key))
    }

    /// A string value: borrowed without escapes, unescaped (by serde_json) with them.
    fn string(&mut self) -> Result<Cow<'a, str>, String> {
        let start = self.i;
        let escaped = self.skip_string()?;
        let raw = &self.text[start..self.i];
        if !escaped {
            return Ok(Cow::Borrowed(&raw[1..raw.len() - 1]));
        }
        // Rare: let serde_json decode the escapes (and refuse lone surrogates, as it does).
        serde_json::from_str::<String>(raw).map(Cow::Owned).map_err(|e| format!("bad string at byte {start}: {e}"))
    }

    /// Skips a string starting at its opening quote. True if it had escapes.
    fn skip_string(&mut self) -> Result<bool, String> {
        if self.peek() != Some(b'"') {
            return Err(self.err("expected a string"));
        }
        self.i += 1;
        let mut escaped = false;
        loop {
            self.i += plain_run(&self.b[self.i..]);
            match self.peek() {
                Some(b'"') => {
                    self.i += 1;
                    return Ok(escaped);
                }
                Some(b'\\') => {
                    escaped = true;
                    self.i += 1;
                    match self.peek() {
                        Some(b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't') => self.i += 1,
                        Some(b'u') => {
                            let hex = self.b.get(self.i + 1..self.i + 5);
                            if !hex.is_some_and(|h| h.iter().all(u8::is_ascii_hexdigit)) {
                                return Err(self.err("bad \\u escape"));
                            }
                            self.i += 5;
                        }
                        _ => return Err(self.err("bad escape")),
                    }
                }
                Some(_) => return Err(self.err("control character in a string")),
                None => return Err(self.err("unterminated string")),
            }
        }
    }

    /// An integer that fits `u64`: digits only (a sign, fraction or exponent is refused).
    fn unsigned(&mut self) -> Result<u64, String> {
        let start = self.i;
        let digits = self.b[start..].iter().take_while(|c| c.is_ascii_digit()).count();
        if digits == 0 || matches!(self.b.get(start + digits), Some(b'.' | b'e' | b'E')) {
            return Err(self.err("expected an unsigned integer"));
        }
        if digits > 1 && self.b[start] == b'0' {
            return Err(self.err("leading zero in a number"));
        }
        self.i += digits;
        self.text[start..self.i].parse().map_err(|_| format!("number at byte {start} does not fit 64 bits"))
    }

    fn boolean(&mut self) -> Result<bool, String> {
        match self.peek() {
            Some(b't') => self.literal(b"true").map(|()| true),
            Some(b'f') => self.literal(b"false").map(|()| false),
            _ => Err(self.err("expected a boolean")),
        }
    }

    /// Skips any JSON value.
    fn value(&mut self, depth: usize) -> Result<(), String> {
        match self.peek() {
            Some(b'"') => self.skip_string().map(|_| ()),
            Some(b'-' | b'0'..=b'9') => self.number(),
            Some(b'{') => self.container(depth, b'}', true),
            Some(b'[') => self.container(depth, b']', false),
            Some(b't') => self.literal(b"true"),
            Some(b'f') => self.literal(b"false"),
            Some(b'n') => self.literal(b"null"),
            _ => Err(self.err("expected a value")),
        }
    }

    fn literal(&mut self, word: &[u8]) -> Result<(), String> {
        if !self.b[self.i..].starts_with(word) {
            return Err(self.err("bad literal"));
        }
        self.i += word.len();
        Ok(())
    }

    /// `-? (0 | [1-9][0-9]*) (.[0-9]+)? ([eE][+-]?[0-9]+)?`, kept as text: only the grammar is
    /// checked, the value is never converted.
    fn number(&mut self) -> Result<(), String> {
        if self.peek() == Some(b'-') {
            self.i += 1;
        }
        match self.peek() {
            Some(b'0') => self.i += 1,
            Some(b'1'..=b'9') => self.digits(),
            _ => return Err(self.err("bad number")),
        }
        if self.peek() == Some(b'.') {
            self.i += 1;
            if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
                return Err(self.err("bad number fraction"));
            }
            self.digits();
        }
        if matches!(self.peek(), Some(b'e' | b'E')) {
            self.i += 1;
            if matches!(self.peek(), Some(b'+' | b'-')) {
                self.i += 1;
            }
            if !self.peek().is_some_and(|c| c.is_ascii_digit()) {
                return Err(self.err("bad number exponent"));
            }
            self.digits();
        }
        Ok(())
    }

    fn digits(&mut self) {
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.i += 1;
        }
    }

    /// An object (`keyed`) or array, from its opening bracket to its closing one.
    fn container(&mut self, depth: usize, close: u8, keyed: bool) -> Result<(), String> {
        if depth >= MAX_DEPTH {
            return Err(self.err(&format!("JSON nested deeper than {MAX_DEPTH}")));
        }
        self.i += 1;
        self.ws();
        if self.peek() == Some(close) {
            self.i += 1;
            return Ok(());
        }
        loop {
            self.ws();
            if keyed {
                // Nested keys are skipped like string values (as serde_json skips them).
                self.skip_string()?;
                self.ws();
                if self.peek() != Some(b':') {
                    return Err(self.err("expected ':'"));
                }
                self.i += 1;
                self.ws();
            }
            self.value(depth + 1)?;
            self.ws();
            match self.peek() {
                Some(b',') => self.i += 1,
                Some(c) if c == close => {
                    self.i += 1;
                    return Ok(());
                }
                _ => return Err(self.err("expected ',' or a closing bracket")),
            }
        }
    }
}

/// Length of the run of bytes that need no attention inside a string: everything but `"`, `\`
/// and control characters. Eight bytes at a time.
fn plain_run(b: &[u8]) -> usize {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    let mut i = 0;
    while let Some(chunk) = b.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(chunk);
        let x = u64::from_le_bytes(word);
        let quote = x ^ (LO * u64::from(b'"'));
        let backslash = x ^ (LO * u64::from(b'\\'));
        // A byte is flagged when it is zero (after the xor) or below 0x20; the lowest flag is
        // exact (borrows only run upwards), which is all that is needed.
        let flags = (quote.wrapping_sub(LO) & !quote
            | backslash.wrapping_sub(LO) & !backslash
            | x.wrapping_sub(LO * 0x20) & !x)
            & HI;
        if flags != 0 {
            return i + (flags.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < b.len() && !matches!(b[i], b'"' | b'\\' | 0..=0x1f) {
        i += 1;
    }
    i
}
