//! Market-data generation for the simulator: symbol reference data, exact decimal and timestamp
//! formatting, and one generator per stream that produces CoinAPI frames as [`Template`]s with
//! holes for the sequence number (and the trade uuid tail), so the flood path only splices digits.
//!
//! Paced `book` and `book5/20/50` streams build their messages from their symbol's shared model
//! (see `book`); ring mode and `book_l3` keep a book per stream here.
//!
//! Trade streams also hand out the compact fields of every trade ([`RingTrades`], from
//! `market`), so the connection can append exactly what it sent (or withheld) to the trade store;
//! timestamps of trades are 100 ns ticks, formatted on the way out and parsed on the way in
//! (`history` queries) here.
//!
//! Everything here is pure: wall time comes in as an argument (or a `fn` clock), randomness from a
//! seeded `fastrand::Rng`; no IO, no threads. The WebSocket connection loop (`ws.rs`) decides what
//! to emit and when; the REST server (`rest.rs`) reuses the field formatting for its bodies. Wire
//! text is written by hand with `push_str`, never by serializing client types, so the simulator
//! stays an independent witness of the protocol.

use std::fmt::Write as _;
use std::sync::Arc;

use time::OffsetDateTime;

use parking_lot::Mutex;

use super::book::{self, BookModel, BookStream, OracleLink, ViewFaults};
use super::market::{RingTrades, TradeFields, TradeView, UUID_TAIL_MASK};

/// The symbols served when the caller names none: one per venue style the client must handle
/// (spot with USD, USDT and EUR quotes, a perpetual).
pub const DEFAULT_SYMBOLS: [&str; 5] = [
    "BITSTAMP_SPOT_BTC_USD",
    "COINBASE_SPOT_ETH_USD",
    "BINANCE_SPOT_SOL_USDT",
    "KRAKEN_SPOT_XRP_EUR",
    "BINANCEFTS_PERP_BTC_USDT",
];

/// Templates pre-generated per stream in flood mode. Large enough that splicing dominates the
/// cost, small enough that a ring (rebuilt at most once a second) keeps timestamps fresh.
pub(crate) const FLOOD_RING_LEN: usize = 128;

/// A flood ring older than this is rebuilt at its next wrap so timestamps stay within a second.
const RING_MAX_AGE: time::Duration = time::Duration::seconds(1);

/// Significant digits of the "long exact decimal" style: more than f64 can carry (~17), as many
/// as CoinAPI sends (~28).
const LONG_DIGITS: u32 = 28;

/// Wall clock used by generators; a plain `fn` so tests can pin time.
pub(crate) type Clock = fn() -> OffsetDateTime;

/// CoinAPI WebSocket data types the simulator generates. `asset`, `exchange` and `symbol` are
/// accepted in a hello but produce no data (metadata feeds are out of scope).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub(crate) enum DataType {
    Trade,
    Quote,
    Book,
    Book5,
    Book20,
    Book50,
    BookL3,
    Ohlcv,
    Exrate,
}

impl DataType {
    pub(crate) fn parse(name: &str) -> Option<DataType> {
        Some(match name {
            "trade" => DataType::Trade,
            "quote" => DataType::Quote,
            "book" => DataType::Book,
            "book5" => DataType::Book5,
            "book20" => DataType::Book20,
            "book50" => DataType::Book50,
            "book_l3" => DataType::BookL3,
            "ohlcv" => DataType::Ohlcv,
            "exrate" => DataType::Exrate,
            _ => return None,
        })
    }

    pub(crate) fn name(self) -> &'static str {
        match self {
            DataType::Trade => "trade",
            DataType::Quote => "quote",
            DataType::Book => "book",
            DataType::Book5 => "book5",
            DataType::Book20 => "book20",
            DataType::Book50 => "book50",
            DataType::BookL3 => "book_l3",
            DataType::Ohlcv => "ohlcv",
            DataType::Exrate => "exrate",
        }
    }

    /// `exrate` is the only type without `symbol_id` and `sequence`.
    pub(crate) fn is_sequenced(self) -> bool {
        self != DataType::Exrate
    }

    /// Types whose stream opens with a snapshot and continues with deltas.
    fn is_incremental(self) -> bool {
        matches!(self, DataType::Book | DataType::BookL3)
    }

    /// Levels per side of a snapshot: `book5/20/50` are capped by their N and by the configured
    /// depth; `book` and `book_l3` use the configured depth.
    pub(crate) fn depth(self, book_levels: usize) -> usize {
        let cap = match self {
            DataType::Book5 => 5,
            DataType::Book20 => 20,
            DataType::Book50 => 50,
            _ => usize::MAX,
        };
        book_levels.min(cap).max(1)
    }
}

/// Reference data for one served symbol. The simulator may split symbol ids (it owns them); the
/// client must not.
#[derive(Debug, Clone)]
pub(crate) struct SymbolInfo {
    pub(crate) id: String,
    /// The id as a JSON string literal (quoted and escaped once, spliced many times).
    pub(crate) id_json: String,
    /// Position in `Shared::symbols` (and in the trade store).
    pub(crate) index: usize,
    pub(crate) base: Option<String>,
    pub(crate) quote: Option<String>,
    /// Prices are integers in units of 10^-price_scale.
    pub(crate) price_scale: u32,
    pub(crate) ref_price: u64,
}

impl SymbolInfo {
    /// Reference data for `id`, at position `index` of the served symbols.
    pub(crate) fn new(id: &str, index: usize) -> SymbolInfo {
        let parts: Vec<&str> = id.split('_').collect();
        let (base, quote) =
            if parts.len() >= 4 { (Some(parts[2].to_string()), Some(parts[3].to_string())) } else { (None, None) };
        let perp = parts.get(1).is_some_and(|k| *k == "PERP");
        // Realistic magnitudes matter: they decide how many digits prices and sizes carry.
        let (price, scale): (f64, u32) = match base.as_deref() {
            Some("BTC") if perp => (64_000.0, 1),
            Some("BTC") => (64_000.0, 2),
            Some("ETH") => (3_400.0, 2),
            Some("SOL") => (150.0, 3),
            Some("XRP") => (0.52, 5),
            Some("DOGE") => (0.12, 6),
            _ => {
                let h = fnv1a(id.as_bytes());
                (1.0 + (h % 1000) as f64, 4)
            }
        };
        SymbolInfo {
            id: id.to_string(),
            id_json: json_string(id),
            index,
            base,
            quote,
            price_scale: scale,
            ref_price: (price * 10f64.powi(scale as i32)) as u64,
        }
    }
}

/// Writes `s` as a JSON string literal.
pub(crate) fn json_string(s: &str) -> String {
    serde_json::Value::String(s.to_string()).to_string()
}

pub(crate) fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h
}

/// Appends a CoinAPI timestamp: `2017-03-18T22:42:21.3763342Z` (UTC, 7 fractional digits).
pub(crate) fn push_time(out: &mut String, t: OffsetDateTime) {
    let t = t.to_offset(time::UtcOffset::UTC);
    let _ = write!(
        out,
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:07}Z",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.nanosecond() / 100
    );
}

pub(crate) fn time_string(t: OffsetDateTime) -> String {
    let mut s = String::with_capacity(28);
    push_time(&mut s, t);
    s
}

/// How a number is spelled. Every style is an exact decimal; a client that goes through f64
/// corrupts `Long`, and one that re-formats numbers changes `Padded` and `Exp`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum NumStyle {
    /// All `scale` fractional digits: `0.00210000`.
    Plain,
    /// Trailing zeros removed: `0.0021`, `3`.
    Trimmed,
    /// Extra trailing zeros: `770.000000000`.
    Padded(u32),
    /// Extra random digits up to ~28 significant digits: `0.0189885151556305438646080756`.
    Long,
    /// Exponent form: `1e-8`, `21E-4`.
    Exp,
}

fn pow10(n: u32) -> u128 {
    10u128.pow(n)
}

fn digit_count(m: u128) -> u32 {
    if m == 0 {
        1
    } else {
        m.ilog10() + 1
    }
}

/// Appends `m / 10^scale` exactly, with all `scale` fractional digits.
fn push_scaled(out: &mut String, m: u128, scale: u32) {
    let mut buf = itoa::Buffer::new();
    let digits = buf.format(m);
    let scale = scale as usize;
    if scale == 0 {
        out.push_str(digits);
    } else if digits.len() > scale {
        let (int, frac) = digits.split_at(digits.len() - scale);
        out.push_str(int);
        out.push('.');
        out.push_str(frac);
    } else {
        out.push_str("0.");
        for _ in 0..scale - digits.len() {
            out.push('0');
        }
        out.push_str(digits);
    }
}

fn strip_zeros(mut m: u128, mut scale: u32) -> (u128, u32) {
    while scale > 0 && m != 0 && m % 10 == 0 {
        m /= 10;
        scale -= 1;
    }
    (m, scale)
}

/// Appends the exact value `m / 10^scale` spelled in `style`. `extra` feeds the random digits of
/// `Long` (callers pass a hash when the spelling must be stable, e.g. book level prices).
pub(crate) fn push_number(out: &mut String, m: u128, scale: u32, style: NumStyle, extra: u128) {
    match style {
        NumStyle::Plain => push_scaled(out, m, scale),
        NumStyle::Trimmed => {
            let (m, s) = strip_zeros(m, scale);
            push_scaled(out, m, s);
        }
        NumStyle::Padded(k) => {
            let k = k.min(38 - digit_count(m).min(38)).min(12);
            push_scaled(out, m * pow10(k), scale + k);
        }
        NumStyle::Long => {
            if m == 0 {
                out.push('0');
                return;
            }
            let k = LONG_DIGITS.saturating_sub(digit_count(m)).clamp(1, 27);
            push_scaled(out, m * pow10(k) + extra % pow10(k), scale + k);
        }
        NumStyle::Exp => {
            let (m, s) = strip_zeros(m, scale);
            let mut buf = itoa::Buffer::new();
            out.push_str(buf.format(m));
            // Both exponent letters are legal JSON; mixing them catches hand-rolled parsers.
            out.push_str(if m % 2 == 0 { "E-" } else { "e-" });
            out.push_str(buf.format(s));
        }
    }
}

/// Random spelling for trade and quote prices.
fn price_style(rng: &mut fastrand::Rng) -> NumStyle {
    match rng.u8(0..100) {
        0..=79 => NumStyle::Plain,
        80..=87 => NumStyle::Padded(rng.u32(3..=9)),
        88..=97 => NumStyle::Long,
        _ => NumStyle::Exp,
    }
}

/// Random spelling for sizes and volumes.
fn size_style(rng: &mut fastrand::Rng) -> NumStyle {
    match rng.u8(0..100) {
        0..=59 => NumStyle::Trimmed,
        60..=74 => NumStyle::Plain,
        75..=84 => NumStyle::Padded(rng.u32(1..=9)),
        85..=94 => NumStyle::Long,
        _ => NumStyle::Exp,
    }
}

/// Sizes are integers in units of 1e-8.
const SIZE_SCALE: u32 = 8;

pub(crate) fn random_size(rng: &mut fastrand::Rng) -> u64 {
    match rng.u8(0..100) {
        // The smallest unit: spelled `1e-8` in the exponent style.
        0..=1 => 1,
        2..=59 => rng.u64(1..=100_000) * 100,
        60..=89 => rng.u64(1..=5_000_000) * 10,
        _ => rng.u64(1..=1_000) * 10_000_000,
    }
}

pub(crate) fn push_size(out: &mut String, size: u64, rng: &mut fastrand::Rng) {
    let style = size_style(rng);
    let extra = rng.u128(..);
    push_number(out, u128::from(size), SIZE_SCALE, style, extra);
}

fn push_price(out: &mut String, sym: &SymbolInfo, price: u64, rng: &mut fastrand::Rng) {
    let style = price_style(rng);
    let extra = rng.u128(..);
    push_number(out, u128::from(price), sym.price_scale, style, extra);
}

/// Book prices are keys: the same level must always have the same value, but CoinAPI spells a
/// value as the exchange wrote it, so the spelling varies from message to message: all `scale`
/// fractional digits (`67069.80`), trailing zeros trimmed (`67069.8`) or padded
/// (`67069.80000`). One level in 16 (a function of the price) has a `Long` value instead: 28
/// significant digits, the extra ones below one price unit, so distinct levels stay distinct and
/// ordered; it is spelled with 28 digits or with one more trailing zero (29).
pub(crate) fn push_level_price(out: &mut String, sym: &SymbolInfo, price: u64, rng: &mut fastrand::Rng) {
    let h = fnv1a(&price.to_le_bytes());
    if h % 16 == 0 {
        let start = out.len();
        push_number(out, u128::from(price), sym.price_scale, NumStyle::Long, u128::from(h));
        if rng.u8(0..4) == 0 && out[start..].contains('.') {
            out.push('0');
        }
        return;
    }
    let style = match rng.u8(0..100) {
        0..=69 => NumStyle::Plain,
        70..=84 => NumStyle::Trimmed,
        _ => NumStyle::Padded(rng.u32(1..=6)),
    };
    push_number(out, u128::from(price), sym.price_scale, style, 0);
}

/// The value of a book level's price as [`push_level_price`] spells it (any spelling), in
/// canonical form (see [`crate::canonical_decimal`]).
pub(crate) fn level_price_canonical(sym: &SymbolInfo, price: u64) -> String {
    let h = fnv1a(&price.to_le_bytes());
    let style = if h % 16 == 0 { NumStyle::Long } else { NumStyle::Trimmed };
    let mut s = String::with_capacity(32);
    push_number(&mut s, u128::from(price), sym.price_scale, style, u128::from(h));
    super::book::canonical_decimal(&s)
}

/// The canonical text of a size of `size` units of 1e-8 (its value without extra digits).
pub(crate) fn size_canonical(size: u64) -> String {
    let mut s = String::with_capacity(24);
    push_number(&mut s, u128::from(size), SIZE_SCALE, NumStyle::Trimmed, 0);
    s
}

/// One random walk step of at most a few price units, never reaching zero.
pub(crate) fn walk(mid: u64, rng: &mut fastrand::Rng) -> u64 {
    let step = rng.u64(0..=4);
    if rng.bool() {
        mid.saturating_add(step)
    } else {
        mid.saturating_sub(step).max(50)
    }
}

/// An index into [`TAKER_SIDES`], weighted as on a busy venue.
fn taker_side(rng: &mut fastrand::Rng) -> u8 {
    match rng.u8(0..100) {
        0..=44 => 0,
        45..=89 => 1,
        90..=94 => 2,
        95..=97 => 3,
        _ => 4,
    }
}

/// Quote and book times: the exchange time is a little earlier than CoinAPI's receive time.
pub(crate) fn times(now: OffsetDateTime, rng: &mut fastrand::Rng) -> (String, String) {
    let lag = time::Duration::microseconds(rng.i64(50..50_000));
    (time_string(now - lag), time_string(now))
}

/// Largest lag of a trade's `time_exchange` behind its `time_coinapi` (50 ms, in 100 ns
/// ticks). The lag is random per trade, so exchange times are not monotonic in stream order,
/// as on CoinAPI: a history window built from one of the two times needs a margin.
pub(crate) const EXCHANGE_JITTER_TICKS: i64 = 500_000;

/// 100 ns ticks since the Unix epoch: the resolution of CoinAPI's timestamps.
pub(crate) fn ticks(t: OffsetDateTime) -> i64 {
    (t.unix_timestamp_nanos() / 100) as i64
}

/// Appends the CoinAPI timestamp of `ticks` (see [`push_time`]).
pub(crate) fn push_ticks(out: &mut String, ticks: i64) {
    let t = OffsetDateTime::from_unix_timestamp_nanos(i128::from(ticks) * 100).unwrap_or(OffsetDateTime::UNIX_EPOCH);
    push_time(out, t);
}

/// Parses a CoinAPI request timestamp: `YYYY-MM-DDTHH:MM:SS`, then 0 to 9 fractional digits
/// after a `.`, then `Z` (UTC). Returns nanoseconds since the Unix epoch.
pub(crate) fn parse_time(s: &str) -> Option<i128> {
    let b = s.as_bytes();
    let digits = |from: usize, n: usize| -> Option<u32> {
        let part = b.get(from..from + n)?;
        part.iter().try_fold(0u32, |acc, c| c.is_ascii_digit().then(|| acc * 10 + u32::from(c - b'0')))
    };
    let sep = |at: usize, c: u8| b.get(at) == Some(&c);
    if !(sep(4, b'-') && sep(7, b'-') && sep(10, b'T') && sep(13, b':') && sep(16, b':')) {
        return None;
    }
    let year = i32::try_from(digits(0, 4)?).ok()?;
    let month = time::Month::try_from(u8::try_from(digits(5, 2)?).ok()?).ok()?;
    let day = u8::try_from(digits(8, 2)?).ok()?;
    let (hour, minute, second) =
        (u8::try_from(digits(11, 2)?).ok()?, u8::try_from(digits(14, 2)?).ok()?, u8::try_from(digits(17, 2)?).ok()?);
    let rest = b.get(19..)?;
    let (frac, tail) = match rest.split_first() {
        Some((b'.', after)) => {
            let n = after.iter().take_while(|c| c.is_ascii_digit()).count();
            if n == 0 || n > 9 {
                return None;
            }
            (&after[..n], &after[n..])
        }
        _ => (&rest[..0], rest),
    };
    if tail != b"Z" {
        return None;
    }
    let mut nanos: u32 = 0;
    for i in 0..9 {
        nanos = nanos * 10 + frac.get(i).map_or(0, |c| u32::from(c - b'0'));
    }
    let date = time::Date::from_calendar_date(year, month, day).ok()?;
    let t = time::Time::from_hms_nano(hour, minute, second, nanos).ok()?;
    Some(time::PrimitiveDateTime::new(date, t).assume_utc().unix_timestamp_nanos())
}

/// A new trade at `now`: `time_coinapi` is `now`, `time_exchange` up to
/// [`EXCHANGE_JITTER_TICKS`] earlier; price one walk step from `mid`, random size and side.
pub(crate) fn fresh_trade(sym: &SymbolInfo, mid: u64, now: OffsetDateTime, rng: &mut fastrand::Rng) -> TradeFields {
    let time_coinapi = ticks(now);
    let time_exchange = time_coinapi - rng.i64(0..=EXCHANGE_JITTER_TICKS);
    let price_units = walk(mid, rng);
    let mut numbers = String::with_capacity(48);
    push_price(&mut numbers, sym, price_units, rng);
    let price_len = numbers.len();
    // `size: 0` is a price marker on some venues; the client must not treat it as volume.
    if rng.u16(0..1000) == 0 {
        numbers.push('0');
    } else {
        push_size(&mut numbers, random_size(rng), rng);
    }
    TradeFields::new(time_exchange, time_coinapi, numbers, price_len, taker_side(rng))
}

/// Appends one trade object, compact (REST bodies are pretty-printed afterwards): `symbol_id`
/// first when given (the `trades` routes), then the CoinAPI REST trade fields; no `sequence`,
/// no `type`. `uuid` is written in lower case, as REST does.
pub(crate) fn push_rest_trade(out: &mut String, symbol_json: Option<&str>, t: &TradeView<'_>) {
    out.push('{');
    if let Some(id) = symbol_json {
        out.push_str("\"symbol_id\":");
        out.push_str(id);
        out.push(',');
    }
    out.push_str("\"time_exchange\":\"");
    push_ticks(out, t.time_exchange);
    out.push_str("\",\"time_coinapi\":\"");
    push_ticks(out, t.time_coinapi);
    out.push_str("\",\"uuid\":\"");
    push_uuid(out, t.uuid, false);
    out.push_str("\",\"price\":");
    out.push_str(t.price);
    out.push_str(",\"size\":");
    out.push_str(t.size);
    out.push_str(",\"taker_side\":\"");
    out.push_str(t.taker_side);
    out.push_str("\"}");
}

/// A random v4 uuid as 128 bits (version nibble 4, variant 10xx).
pub(crate) fn random_uuid(rng: &mut fastrand::Rng) -> u128 {
    let v = rng.u128(..);
    let v = (v & !(0xF << 76)) | (0x4 << 76);
    (v & !(0x3 << 62)) | (0x2 << 62)
}

const HEX_UPPER: &[u8; 16] = b"0123456789ABCDEF";
const HEX_LOWER: &[u8; 16] = b"0123456789abcdef";

/// Appends a uuid in its 8-4-4-4-12 form: upper case as the WebSocket docs show it, lower case
/// as REST sends it.
pub(crate) fn push_uuid(out: &mut String, v: u128, upper: bool) {
    let hex = if upper { HEX_UPPER } else { HEX_LOWER };
    for i in 0..32 {
        if matches!(i, 8 | 12 | 16 | 20) {
            out.push('-');
        }
        out.push(char::from(hex[((v >> ((31 - i) * 4)) & 0xF) as usize]));
    }
}

pub(crate) fn uuid_string(v: u128, upper: bool) -> String {
    let mut s = String::with_capacity(36);
    push_uuid(&mut s, v, upper);
    s
}

/// Width of the uuid tail spliced from the sequence number (the low 48 bits).
const UUID_TAIL_LEN: usize = 12;

fn uuid_tail(v: u64) -> [u8; UUID_TAIL_LEN] {
    let mut b = [0u8; UUID_TAIL_LEN];
    for (i, slot) in b.iter_mut().enumerate() {
        let shift = (UUID_TAIL_LEN - 1 - i) * 4;
        *slot = HEX_UPPER[((v >> shift) & 0xF) as usize];
    }
    b
}

/// One message payload with its holes removed: the sequence digits go at `seq_at`, the 12 hex
/// digits of the uuid tail at `uuid_at`. Splicing is all the flood path does per message.
#[derive(Debug, Clone)]
pub(crate) struct Template {
    text: String,
    seq_at: Option<usize>,
    uuid_at: Option<usize>,
}

/// Appends an unmasked, unfragmented server frame header (RFC 6455 §5.2).
pub(crate) fn push_frame_header(out: &mut Vec<u8>, opcode: u8, len: usize) {
    out.push(0x80 | opcode);
    if len < 126 {
        out.push(len as u8);
    } else if len <= usize::from(u16::MAX) {
        out.push(126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
}

pub(crate) const OPCODE_TEXT: u8 = 0x1;
pub(crate) const OPCODE_BINARY: u8 = 0x2;
pub(crate) const OPCODE_PING: u8 = 0x9;

/// Appends one complete text frame.
pub(crate) fn push_text_frame(out: &mut Vec<u8>, text: &str) {
    push_frame_header(out, OPCODE_TEXT, text.len());
    out.extend_from_slice(text.as_bytes());
}

impl Template {
    /// Appends the frame for this template with `seq` and `tail` spliced in; returns the offset of
    /// the payload in `out` (so the caller can record the exact text).
    pub(crate) fn write_frame(&self, out: &mut Vec<u8>, seq: u64, tail: u64) -> usize {
        let mut seq_buf = itoa::Buffer::new();
        let seq_digits = seq_buf.format(seq).as_bytes();
        let mut len = self.text.len();
        if self.seq_at.is_some() {
            len += seq_digits.len();
        }
        if self.uuid_at.is_some() {
            len += UUID_TAIL_LEN;
        }
        push_frame_header(out, OPCODE_TEXT, len);
        let start = out.len();
        let text = self.text.as_bytes();
        let mut from = 0;
        if let Some(at) = self.seq_at {
            out.extend_from_slice(&text[from..at]);
            out.extend_from_slice(seq_digits);
            from = at;
        }
        if let Some(at) = self.uuid_at {
            out.extend_from_slice(&text[from..at]);
            out.extend_from_slice(&uuid_tail(tail));
            from = at;
        }
        out.extend_from_slice(&text[from..]);
        start
    }
}

#[derive(Debug, Default)]
pub(crate) struct TemplateBuilder {
    pub(crate) text: String,
    seq_at: Option<usize>,
    uuid_at: Option<usize>,
}

impl TemplateBuilder {
    /// `{"type":"T","symbol_id":"S","sequence":<hole>`
    pub(crate) fn envelope(sym: &SymbolInfo, kind: DataType) -> TemplateBuilder {
        let mut b = TemplateBuilder::default();
        b.text.reserve(256);
        b.text.push_str("{\"type\":\"");
        b.text.push_str(kind.name());
        b.text.push_str("\",\"symbol_id\":");
        b.text.push_str(&sym.id_json);
        b.text.push_str(",\"sequence\":");
        b.seq_at = Some(b.text.len());
        b
    }

    pub(crate) fn times(&mut self, now: OffsetDateTime, rng: &mut fastrand::Rng) {
        let (exchange, coinapi) = times(now, rng);
        self.text.push_str(",\"time_exchange\":\"");
        self.text.push_str(&exchange);
        self.text.push_str("\",\"time_coinapi\":\"");
        self.text.push_str(&coinapi);
        self.text.push('"');
    }

    pub(crate) fn finish(self) -> Template {
        Template { text: self.text, seq_at: self.seq_at, uuid_at: self.uuid_at }
    }
}

/// A trade template: the uuid hole follows `uuid_head`. `padding` adds a long string field
/// (the `Oversized` fault).
fn trade_template(sym: &SymbolInfo, uuid_head: &str, t: &TradeFields, padding: usize) -> Template {
    let mut b = TemplateBuilder::envelope(sym, DataType::Trade);
    b.text.push_str(",\"time_exchange\":\"");
    push_ticks(&mut b.text, t.time_exchange);
    b.text.push_str("\",\"time_coinapi\":\"");
    push_ticks(&mut b.text, t.time_coinapi);
    b.text.push_str("\",\"uuid\":\"");
    b.text.push_str(uuid_head);
    b.uuid_at = Some(b.text.len());
    b.text.push_str("\",\"price\":");
    b.text.push_str(t.price());
    b.text.push_str(",\"size\":");
    b.text.push_str(t.size());
    b.text.push_str(",\"taker_side\":\"");
    b.text.push_str(t.taker_side());
    b.text.push('"');
    if padding > 0 {
        b.text.push_str(",\"padding\":\"");
        b.text.extend(std::iter::repeat_n('x', padding));
        b.text.push('"');
    }
    b.text.push('}');
    b.finish()
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Level {
    price: u64,
    size: u64,
}

/// Level-2 book state: asks ascending, bids descending (best first on both sides).
#[derive(Debug, Default, Clone)]
struct Book {
    asks: Vec<Level>,
    bids: Vec<Level>,
}

impl Book {
    fn seed(mid: u64, depth: usize, rng: &mut fastrand::Rng) -> Book {
        let spacing = 1 + mid / 20_000;
        let level = |i: u64, rng: &mut fastrand::Rng| (spacing * (i + 1), random_size(rng));
        let mut book = Book::default();
        for i in 0..depth as u64 {
            let (off, size) = level(i, rng);
            book.asks.push(Level { price: mid + off, size });
            let (off, size) = level(i, rng);
            book.bids.push(Level { price: mid.saturating_sub(off).max(1), size });
        }
        book.bids.dedup_by_key(|l| l.price);
        book
    }

    /// Applies 1–3 random changes and returns them per side, best first. A removed level is
    /// reported with size 0 and replaced beyond the worst level so the depth stays constant.
    fn random_delta(&mut self, rng: &mut fastrand::Rng) -> (Vec<Level>, Vec<Level>) {
        let mut asks = Vec::new();
        let mut bids = Vec::new();
        for _ in 0..rng.usize(1..=3) {
            let is_ask = rng.bool();
            let (side, changes) = if is_ask { (&mut self.asks, &mut asks) } else { (&mut self.bids, &mut bids) };
            if side.len() < 2 {
                continue;
            }
            let i = rng.usize(0..side.len());
            if rng.u8(0..100) < 80 {
                side[i].size = random_size(rng);
                changes.push(side[i]);
            } else {
                let removed = side.remove(i);
                changes.push(Level { price: removed.price, size: 0 });
                // A new level beyond the worst one (the removed level may have been the
                // worst) keeps the depth constant.
                let last = side[side.len() - 1].price;
                let worst = if is_ask { last.max(removed.price) } else { last.min(removed.price) };
                let step = rng.u64(1..=3);
                let price = if is_ask { worst + step } else { worst.saturating_sub(step) };
                if price > 0 {
                    let added = Level { price, size: random_size(rng) };
                    side.push(added);
                    changes.push(added);
                }
            }
        }
        for (changes, ascending) in [(&mut asks, true), (&mut bids, false)] {
            // One entry per price (the last change wins), best first.
            let mut dedup: Vec<Level> = Vec::with_capacity(changes.len());
            for l in changes.drain(..).rev() {
                if !dedup.iter().any(|d| d.price == l.price) {
                    dedup.push(l);
                }
            }
            dedup.sort_by_key(|l| l.price);
            if !ascending {
                dedup.reverse();
            }
            *changes = dedup;
        }
        (asks, bids)
    }
}

fn push_levels(out: &mut String, sym: &SymbolInfo, levels: &[Level], rng: &mut fastrand::Rng) {
    out.push('[');
    for (i, l) in levels.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"price\":");
        push_level_price(out, sym, l.price, rng);
        out.push_str(",\"size\":");
        if l.size == 0 {
            out.push('0');
        } else {
            push_size(out, l.size, rng);
        }
        out.push('}');
    }
    out.push(']');
}

#[derive(Debug, Clone)]
struct Order {
    id: u64,
    price: u64,
    size: u64,
}

/// Level-3 book state: one list of orders per side, best first.
#[derive(Debug, Default)]
struct L3Book {
    asks: Vec<Order>,
    bids: Vec<Order>,
    next_id: u64,
}

#[derive(Debug)]
struct L3Change {
    order: Order,
    update_type: &'static str,
}

impl L3Book {
    fn seed(mid: u64, depth: usize, rng: &mut fastrand::Rng) -> L3Book {
        let book = Book::seed(mid, depth, rng);
        let mut l3 = L3Book { next_id: rng.u64(1 << 40..1 << 44), ..L3Book::default() };
        for l in book.asks {
            let id = l3.new_id();
            l3.asks.push(Order { id, price: l.price, size: l.size });
        }
        for l in book.bids {
            let id = l3.new_id();
            l3.bids.push(Order { id, price: l.price, size: l.size });
        }
        l3
    }

    fn new_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }

    fn random_delta(&mut self, rng: &mut fastrand::Rng) -> (Vec<L3Change>, Vec<L3Change>) {
        let mut asks = Vec::new();
        let mut bids = Vec::new();
        let is_ask = rng.bool();
        let new_id = self.new_id();
        let (side, changes) = if is_ask { (&mut self.asks, &mut asks) } else { (&mut self.bids, &mut bids) };
        if side.is_empty() {
            return (asks, bids);
        }
        let i = rng.usize(0..side.len());
        match rng.u8(0..100) {
            0..=39 => {
                side[i].size = random_size(rng);
                changes.push(L3Change { order: side[i].clone(), update_type: "UPDATE" });
            }
            40..=59 => {
                side[i].size = (side[i].size / 2).max(1);
                changes.push(L3Change { order: side[i].clone(), update_type: "SUBTRACT" });
            }
            60..=69 => {
                side[0].size = (side[0].size / 3).max(1);
                changes.push(L3Change { order: side[0].clone(), update_type: "MATCH" });
            }
            _ => {
                // A cancel and a new order at the same price keep the depth constant.
                let old = side.remove(i);
                changes.push(L3Change { order: Order { size: 0, ..old }, update_type: "DELETE" });
                let added = Order { id: new_id, price: old.price, size: random_size(rng) };
                side.insert(i, added.clone());
                changes.push(L3Change { order: added, update_type: "ADD" });
            }
        }
        (asks, bids)
    }
}

fn push_l3(out: &mut String, sym: &SymbolInfo, entries: &[L3Change], rng: &mut fastrand::Rng) {
    out.push('[');
    for (i, e) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        let _ = write!(out, "{{\"id\":\"{:016x}\",\"price\":", e.order.id);
        push_level_price(out, sym, e.order.price, rng);
        out.push_str(",\"size\":");
        if e.order.size == 0 {
            out.push('0');
        } else {
            push_size(out, e.order.size, rng);
        }
        out.push_str(",\"update_type\":\"");
        out.push_str(e.update_type);
        out.push_str("\"}");
    }
    out.push(']');
}

/// Length in seconds of a CoinAPI period id (`1SEC`, `5MIN`, `1HRS`, `1DAY`, ...).
pub(crate) fn period_seconds(period_id: &str) -> Option<i64> {
    let split = period_id.find(|c: char| !c.is_ascii_digit())?;
    let (n, unit) = period_id.split_at(split);
    let n: i64 = n.parse().ok().filter(|n| *n > 0 && *n <= 1000)?;
    let unit_secs = match unit {
        "SEC" => 1,
        "MIN" => 60,
        "HRS" => 3600,
        "DAY" => 86_400,
        "MTH" => 30 * 86_400,
        "YRS" => 365 * 86_400,
        _ => return None,
    };
    Some(n * unit_secs)
}

/// One OHLCV bar being built.
#[derive(Debug, Clone)]
pub(crate) struct Bar {
    start: i64,
    open: u64,
    high: u64,
    low: u64,
    close: u64,
    volume: u64,
    trades: u64,
}

impl Bar {
    fn new(start: i64, price: u64) -> Bar {
        Bar { start, open: price, high: price, low: price, close: price, volume: 0, trades: 0 }
    }

    fn trade(&mut self, price: u64, size: u64) {
        self.high = self.high.max(price);
        self.low = self.low.min(price);
        self.close = price;
        self.volume += size;
        self.trades += 1;
    }
}

/// Appends the OHLCV fields shared by the WebSocket message and the REST array element, starting
/// with `"time_period_start"` (no leading comma).
fn push_bar(
    out: &mut String,
    sym: &SymbolInfo,
    bar: &Bar,
    period_secs: i64,
    close_time: OffsetDateTime,
    rng: &mut fastrand::Rng,
) {
    let start = OffsetDateTime::from_unix_timestamp(bar.start).unwrap_or(close_time);
    let end = start + time::Duration::seconds(period_secs);
    let open_time = start + time::Duration::milliseconds(rng.i64(0..=period_secs.min(60) * 10));
    let close_time = close_time.clamp(open_time, end);
    out.push_str("\"time_period_start\":\"");
    push_time(out, start);
    out.push_str("\",\"time_period_end\":\"");
    push_time(out, end);
    out.push_str("\",\"time_open\":\"");
    push_time(out, open_time);
    out.push_str("\",\"time_close\":\"");
    push_time(out, close_time);
    out.push_str("\",\"price_open\":");
    push_price(out, sym, bar.open, rng);
    out.push_str(",\"price_high\":");
    push_price(out, sym, bar.high, rng);
    out.push_str(",\"price_low\":");
    push_price(out, sym, bar.low, rng);
    out.push_str(",\"price_close\":");
    push_price(out, sym, bar.close, rng);
    out.push_str(",\"volume_traded\":");
    push_size(out, bar.volume.max(1), rng);
    let _ = write!(out, ",\"trades_count\":{}", bar.trades.max(1));
}

/// Kind-specific generator state.
#[derive(Debug)]
enum State {
    Trade,
    Quote,
    Book(Book),
    /// Paced `book`: a view of the symbol's shared model.
    SharedBook(Box<BookStream>),
    /// Paced `book5/20/50`: top-N snapshots of the symbol's shared model.
    SharedTop(Arc<Mutex<BookModel>>),
    L3(L3Book),
    Ohlcv {
        period_id: String,
        period_secs: i64,
        bar: Option<Bar>,
    },
    Exrate,
}

/// Everything needed to produce one stream's messages on one connection: sequence counter,
/// market state, the template ring, its trades, and the last trade sent.
#[derive(Debug)]
pub(crate) struct StreamGen {
    pub(crate) kind: DataType,
    sym: Arc<SymbolInfo>,
    /// Next sequence number to send (CoinAPI starts at 1 per connection).
    next_seq: u64,
    /// The uuid of this stream's trades without its tail (low 48 bits zero)...
    uuid_bits: u128,
    /// ...and its first 24 characters, upper case, as spliced into frames.
    uuid_head: String,
    rng: fastrand::Rng,
    mid: u64,
    depth: usize,
    state: State,
    /// Flood mode replays a ring of templates; paced mode builds every message fresh.
    ring_mode: bool,
    ring: Vec<Template>,
    ring_pos: usize,
    ring_built: Option<OffsetDateTime>,
    /// The next message must be a snapshot (stream start or resubscription).
    snapshot_due: bool,
    /// Trade streams: the fields of each template of `ring`, shared with the trade store.
    ring_trades: Option<Arc<RingTrades>>,
    /// (sequence, ring position) of the last trade sent, for `DuplicateTrade`...
    last_sent: Option<(u64, usize)>,
    /// ...and its fields once they are no longer in `ring_trades` (ring rebuilt, `Oversized`).
    last_sent_saved: Option<TradeFields>,
    /// Trades were withheld (or book deltas dropped) since the last message sent: the next one
    /// sent shows a sequence gap.
    withheld_gap: bool,
    /// Descriptions of model faults the shared book applied while this stream stepped it, for
    /// the connection to log (drained after every message).
    applied: Vec<String>,
}

/// What `emit` put into the buffer (or, for `withhold`, would have).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Emitted {
    /// Offset of the payload (the exact text) in the output buffer.
    pub(crate) start: usize,
    /// Whether a sequence number was consumed (so a pending gap was applied).
    pub(crate) sequenced: bool,
    /// The sequence number used (0 for `exrate`).
    pub(crate) seq: u64,
    /// The ring position of the template used (for the trade in [`StreamGen::ring_trades`]).
    pub(crate) pos: usize,
    /// Whether a frame was written (false: a withheld trade or a dropped book delta, whose
    /// sequence number was consumed all the same).
    pub(crate) written: bool,
}

impl StreamGen {
    /// `period_id` only matters for `ohlcv`; `ring_mode` selects flood replay.
    pub(crate) fn new(
        kind: DataType,
        sym: Arc<SymbolInfo>,
        book_levels: usize,
        period_id: &str,
        ring_mode: bool,
        mut rng: fastrand::Rng,
    ) -> StreamGen {
        let depth = kind.depth(book_levels);
        let mid = walk(sym.ref_price, &mut rng);
        let state = match kind {
            DataType::Trade => State::Trade,
            DataType::Quote => State::Quote,
            DataType::Book | DataType::Book5 | DataType::Book20 | DataType::Book50 => {
                State::Book(Book::seed(mid, depth, &mut rng))
            }
            DataType::BookL3 => State::L3(L3Book::seed(mid, depth, &mut rng)),
            DataType::Ohlcv => State::Ohlcv {
                period_id: period_id.to_string(),
                period_secs: period_seconds(period_id).unwrap_or(60),
                bar: None,
            },
            DataType::Exrate => State::Exrate,
        };
        let uuid_bits = random_uuid(&mut rng) & !UUID_TAIL_MASK;
        let mut uuid_head = uuid_string(uuid_bits, true);
        uuid_head.truncate(36 - UUID_TAIL_LEN);
        StreamGen {
            kind,
            sym,
            next_seq: 1,
            uuid_bits,
            uuid_head,
            rng,
            mid,
            depth,
            state,
            ring_mode,
            ring: Vec::new(),
            ring_pos: 0,
            ring_built: None,
            snapshot_due: true,
            ring_trades: None,
            last_sent: None,
            last_sent_saved: None,
            withheld_gap: false,
            applied: Vec::new(),
        }
    }

    /// A paced `book` or `book5/20/50` stream on the symbol's shared `model`: `book` keeps a view
    /// of it (see [`BookStream`]), whose messages go to `oracle` (when given); the others send
    /// top-N snapshots of it. Other kinds get [`StreamGen::new`]'s own state.
    pub(crate) fn new_shared(
        kind: DataType,
        sym: Arc<SymbolInfo>,
        book_levels: usize,
        model: Arc<Mutex<BookModel>>,
        snapshot_every: u64,
        oracle: Option<OracleLink>,
        rng: fastrand::Rng,
    ) -> StreamGen {
        let mut g = StreamGen::new(kind, sym, book_levels, "1MIN", false, rng);
        match kind {
            DataType::Book => {
                g.state = State::SharedBook(Box::new(BookStream::new(model, book_levels, snapshot_every, oracle)))
            }
            DataType::Book5 | DataType::Book20 | DataType::Book50 => g.state = State::SharedTop(model),
            _ => {}
        }
        g
    }

    /// Hands book faults waiting for this stream's symbol to a shared `book` stream (clearing
    /// what it took): `BookDeltasBeforeSnapshot` only while the stream has sent nothing since it
    /// (re)started. Other streams take nothing.
    pub(crate) fn absorb_book_faults(&mut self, faults: &mut ViewFaults) {
        if let State::SharedBook(stream) = &mut self.state {
            stream.absorb(faults);
        }
    }

    /// Whether model faults were applied by this stream's last messages (see `take_applied`).
    pub(crate) fn has_applied(&self) -> bool {
        !self.applied.is_empty()
    }

    /// Descriptions of the model faults applied while this stream stepped the shared book.
    pub(crate) fn take_applied(&mut self) -> Vec<String> {
        std::mem::take(&mut self.applied)
    }

    pub(crate) fn symbol(&self) -> &Arc<SymbolInfo> {
        &self.sym
    }

    /// The next message of an incremental stream is a fresh snapshot (resubscription).
    pub(crate) fn request_snapshot(&mut self) {
        if let State::SharedBook(stream) = &mut self.state {
            stream.request_snapshot();
        }
        if self.kind.is_incremental() {
            self.snapshot_due = true;
        }
    }

    /// An incremental stream (`book`, `book_l3`) starts over as CoinAPI restarts it after
    /// unsubscribe + subscribe: sequence 1 and a snapshot. Other kinds are left alone.
    pub(crate) fn restart(&mut self) {
        if let State::SharedBook(stream) = &mut self.state {
            stream.restart();
        }
        if self.kind.is_incremental() {
            self.next_seq = 1;
            self.snapshot_due = true;
        }
    }

    /// The trades of the current template ring (trade streams only): the trade of the message
    /// `emit` or `withhold` just produced is at `Emitted::pos`.
    pub(crate) fn ring_trades(&self) -> Option<&Arc<RingTrades>> {
        self.ring_trades.as_ref()
    }

    /// Whether trades were withheld since the last trade sent (cleared by the call).
    pub(crate) fn take_withheld_gap(&mut self) -> bool {
        std::mem::take(&mut self.withheld_gap)
    }

    fn take_seq(&mut self, gap: u64) -> u64 {
        let seq = self.next_seq.saturating_add(gap);
        self.next_seq = seq.saturating_add(1);
        seq
    }

    /// Moves to the next template (refilling the ring when needed) and takes its sequence.
    fn advance(&mut self, gap: u64, clock: Clock) -> Emitted {
        if self.ring_pos >= self.ring.len() || (self.snapshot_due && self.ring_mode) {
            self.refill(clock);
        }
        let sequenced = self.kind.is_sequenced();
        let seq = if sequenced { self.take_seq(gap) } else { 0 };
        let pos = self.ring_pos;
        self.ring_pos += 1;
        Emitted { start: 0, sequenced, seq, pos, written: true }
    }

    /// Appends the next data frame of this stream to `out`. `gap` sequence numbers are skipped
    /// first (only if this stream is sequenced; see `Emitted::sequenced`).
    pub(crate) fn emit(&mut self, out: &mut Vec<u8>, gap: u64, clock: Clock) -> Emitted {
        if matches!(self.state, State::SharedBook(_) | State::SharedTop(_)) {
            return self.emit_shared(out, gap, clock);
        }
        let mut e = self.advance(gap, clock);
        if let Some(t) = self.ring.get(e.pos) {
            e.start = t.write_frame(out, e.seq, e.seq);
        }
        if self.kind == DataType::Trade {
            self.last_sent = Some((e.seq, e.pos));
            self.last_sent_saved = None;
        }
        e
    }

    /// Generates the next message exactly as `emit` would, consuming its sequence number, but
    /// writes nothing (the `WithholdTrades` fault): the next message sent shows the jump.
    pub(crate) fn withhold(&mut self, clock: Clock) -> Emitted {
        let e = self.advance(0, clock);
        self.withheld_gap = true;
        Emitted { written: false, ..e }
    }

    /// `emit` for streams on a shared book: steps the model, writes the next message (or, for a
    /// dropped delta, nothing: the sequence number is consumed and the gap stays pending).
    fn emit_shared(&mut self, out: &mut Vec<u8>, gap: u64, clock: Clock) -> Emitted {
        let now = clock();
        let sym = Arc::clone(&self.sym);
        let template = match &mut self.state {
            State::SharedBook(stream) => stream.build(&sym, now, &mut self.rng, &mut self.applied),
            State::SharedTop(model) => {
                Some(book::top_snapshot(model, self.kind, &sym, self.depth, now, &mut self.rng, &mut self.applied))
            }
            _ => None,
        };
        match template {
            Some(t) => {
                let seq = self.take_seq(gap);
                let start = t.write_frame(out, seq, seq);
                if let State::SharedBook(stream) = &self.state {
                    stream.record(&sym, seq);
                }
                Emitted { start, sequenced: true, seq, pos: 0, written: true }
            }
            None => {
                let seq = self.take_seq(0);
                self.withheld_gap = true;
                Emitted { start: out.len(), sequenced: false, seq, pos: 0, written: false }
            }
        }
    }

    /// One trade generated while the connection is down (an outage): fresh fields at `now`,
    /// the next sequence number (never sent), and its uuid.
    pub(crate) fn outage_trade(&mut self, now: OffsetDateTime) -> (u128, TradeFields) {
        self.mid = walk(self.mid, &mut self.rng);
        let fields = fresh_trade(&self.sym, self.mid, now, &mut self.rng);
        let seq = self.take_seq(0);
        (self.uuid_bits | (u128::from(seq) & UUID_TAIL_MASK), fields)
    }

    /// Makes `ring[ring_pos]` valid: replays the ring when it is fresh, else builds a new one.
    fn refill(&mut self, clock: Clock) {
        let now = clock();
        if self.ring_mode {
            let fresh = self.ring_built.is_some_and(|b| now - b < RING_MAX_AGE);
            // Replay restarts at the ring's opening snapshot, which also serves a resubscription.
            if fresh && !self.ring.is_empty() {
                self.ring_pos = 0;
                self.snapshot_due = false;
                return;
            }
            // Every ring opens with a snapshot so that replaying it is a consistent book.
            self.snapshot_due = true;
        }
        // The last trade sent may be in the ring about to be replaced: keep its fields.
        if let (Some((_, pos)), None) = (self.last_sent, &self.last_sent_saved) {
            self.last_sent_saved = self.ring_trades.as_ref().and_then(|r| r.fields.get(pos)).cloned();
        }
        let n = if self.ring_mode { FLOOD_RING_LEN } else { 1 };
        let mut trades = Vec::with_capacity(if self.kind == DataType::Trade { n } else { 0 });
        self.ring.clear();
        for _ in 0..n {
            let (t, fields) = self.build(now);
            self.ring.push(t);
            trades.extend(fields);
        }
        if self.kind == DataType::Trade {
            self.ring_trades =
                Some(Arc::new(RingTrades { uuid_head: self.uuid_bits, fields: trades.into_boxed_slice() }));
        }
        if self.ring_mode {
            self.ring_built = Some(now);
        }
        self.ring_pos = 0;
    }

    /// Builds one message template from the current state, advancing it; for a trade, also
    /// returns its fields.
    fn build(&mut self, now: OffsetDateTime) -> (Template, Option<TradeFields>) {
        self.mid = walk(self.mid, &mut self.rng);
        let snapshot = std::mem::take(&mut self.snapshot_due);
        let sym = Arc::clone(&self.sym);
        let rng = &mut self.rng;
        let t = match &mut self.state {
            State::Trade => {
                let fields = fresh_trade(&sym, self.mid, now, rng);
                return (trade_template(&sym, &self.uuid_head, &fields, 0), Some(fields));
            }
            State::Quote => {
                let mut b = TemplateBuilder::envelope(&sym, self.kind);
                b.times(now, rng);
                let spread = rng.u64(1..=3);
                b.text.push_str(",\"ask_price\":");
                push_price(&mut b.text, &sym, self.mid + spread, rng);
                b.text.push_str(",\"ask_size\":");
                push_size(&mut b.text, random_size(rng), rng);
                b.text.push_str(",\"bid_price\":");
                push_price(&mut b.text, &sym, self.mid.saturating_sub(spread), rng);
                b.text.push_str(",\"bid_size\":");
                push_size(&mut b.text, random_size(rng), rng);
                b.text.push('}');
                b.finish()
            }
            State::Book(book) => {
                let full = snapshot || self.kind != DataType::Book;
                let (asks, bids) = if full {
                    if self.kind != DataType::Book {
                        // Top-N feeds still move between snapshots.
                        book.random_delta(rng);
                    }
                    (book.asks.clone(), book.bids.clone())
                } else {
                    book.random_delta(rng)
                };
                let mut b = TemplateBuilder::envelope(&sym, self.kind);
                b.times(now, rng);
                b.text.push_str(if full {
                    ",\"is_snapshot\":true,\"asks\":"
                } else {
                    ",\"is_snapshot\":false,\"asks\":"
                });
                push_levels(&mut b.text, &sym, &asks[..asks.len().min(self.depth)], rng);
                b.text.push_str(",\"bids\":");
                push_levels(&mut b.text, &sym, &bids[..bids.len().min(self.depth)], rng);
                b.text.push('}');
                b.finish()
            }
            // `emit` sends these through `emit_shared`; an empty message if ever reached.
            State::SharedBook(_) | State::SharedTop(_) => TemplateBuilder::envelope(&sym, self.kind).finish(),
            State::L3(l3) => {
                let (asks, bids) = if snapshot {
                    let as_adds = |orders: &[Order]| {
                        orders.iter().map(|o| L3Change { order: o.clone(), update_type: "ADD" }).collect::<Vec<_>>()
                    };
                    (as_adds(&l3.asks), as_adds(&l3.bids))
                } else {
                    l3.random_delta(rng)
                };
                let mut b = TemplateBuilder::envelope(&sym, self.kind);
                b.times(now, rng);
                b.text.push_str(if snapshot {
                    ",\"is_snapshot\":true,\"asks\":"
                } else {
                    ",\"is_snapshot\":false,\"asks\":"
                });
                push_l3(&mut b.text, &sym, &asks, rng);
                b.text.push_str(",\"bids\":");
                push_l3(&mut b.text, &sym, &bids, rng);
                b.text.push('}');
                b.finish()
            }
            State::Ohlcv { period_id, period_secs, bar } => {
                let ts = now.unix_timestamp();
                let start = ts - ts.rem_euclid(*period_secs);
                let bar = match bar {
                    Some(b) if b.start == start => b,
                    slot => slot.insert(Bar::new(start, self.mid)),
                };
                bar.trade(self.mid, random_size(rng));
                let mut b = TemplateBuilder::envelope(&sym, self.kind);
                b.text.push_str(",\"period_id\":");
                b.text.push_str(&json_string(period_id));
                b.text.push(',');
                push_bar(&mut b.text, &sym, bar, *period_secs, now, rng);
                b.text.push('}');
                b.finish()
            }
            State::Exrate => {
                let mut b = TemplateBuilder::default();
                b.text.push_str("{\"type\":\"exrate\",\"asset_id_base\":");
                b.text.push_str(&json_string(sym.base.as_deref().unwrap_or("BTC")));
                b.text.push_str(",\"asset_id_quote\":");
                b.text.push_str(&json_string(sym.quote.as_deref().unwrap_or("USD")));
                b.text.push_str(",\"rate_type\":\"BASE_ALL_CROSSES_TO_REF\",\"time\":\"");
                push_time(&mut b.text, now);
                b.text.push_str("\",\"rate\":");
                // Exchange rates are computed values: usually long decimals.
                let style = if rng.u8(0..4) == 0 { NumStyle::Plain } else { NumStyle::Long };
                let extra = rng.u128(..);
                push_number(&mut b.text, u128::from(self.mid), sym.price_scale, style, extra);
                b.text.push('}');
                b.finish()
            }
        };
        (t, None)
    }

    /// Resends the last trade sent with the same uuid and the next sequence number (exchanges
    /// do this). Returns `None` if this stream has sent no trade yet.
    pub(crate) fn duplicate_last_trade(&mut self, out: &mut Vec<u8>, gap: u64) -> Option<Emitted> {
        let (tail, pos) = self.last_sent?;
        let fields = match &self.last_sent_saved {
            Some(f) => f.clone(),
            None => self.ring_trades.as_ref()?.fields.get(pos)?.clone(),
        };
        let t = trade_template(&self.sym, &self.uuid_head, &fields, 0);
        let seq = self.take_seq(gap);
        let start = t.write_frame(out, seq, tail);
        Some(Emitted { start, sequenced: true, seq, pos, written: true })
    }

    /// A real trade of this stream (next sequence) padded with a long string field so the frame
    /// is about `bytes` long. Only meaningful on a trade stream. Also returns the trade's uuid
    /// and fields, for the trade store.
    pub(crate) fn oversized_trade(
        &mut self,
        out: &mut Vec<u8>,
        gap: u64,
        bytes: usize,
        now: OffsetDateTime,
    ) -> (Emitted, u128, TradeFields) {
        let fields = fresh_trade(&self.sym, self.mid, now, &mut self.rng);
        let plain = trade_template(&self.sym, &self.uuid_head, &fields, 0);
        let overhead = plain.text.len() + 20 + UUID_TAIL_LEN + ",\"padding\":\"\"".len();
        let t = trade_template(&self.sym, &self.uuid_head, &fields, bytes.saturating_sub(overhead).max(1));
        let seq = self.take_seq(gap);
        let start = t.write_frame(out, seq, seq);
        self.last_sent = Some((seq, 0));
        self.last_sent_saved = Some(fields.clone());
        let uuid = self.uuid_bits | (u128::from(seq) & UUID_TAIL_MASK);
        (Emitted { start, sequenced: true, seq, pos: 0, written: true }, uuid, fields)
    }
}

/// REST `quotes/current` body. `last_trade` is the object of the newest stored trade (see
/// [`push_rest_trade`], without `symbol_id`); without one a random trade stands in.
pub(crate) fn rest_quote(
    sym: &SymbolInfo,
    last_trade: Option<&str>,
    now: OffsetDateTime,
    rng: &mut fastrand::Rng,
) -> String {
    let mid = walk(sym.ref_price, rng);
    let mut out = String::with_capacity(512);
    out.push_str("{\"symbol_id\":");
    out.push_str(&sym.id_json);
    let (exchange, coinapi) = times(now, rng);
    let _ = write!(out, ",\"time_exchange\":\"{exchange}\",\"time_coinapi\":\"{coinapi}\",\"ask_price\":");
    push_price(&mut out, sym, mid + 1, rng);
    out.push_str(",\"ask_size\":");
    push_size(&mut out, random_size(rng), rng);
    out.push_str(",\"bid_price\":");
    push_price(&mut out, sym, mid.saturating_sub(1), rng);
    out.push_str(",\"bid_size\":");
    push_size(&mut out, random_size(rng), rng);
    out.push_str(",\"last_trade\":");
    match last_trade {
        Some(obj) => out.push_str(obj),
        None => {
            let t = fresh_trade(sym, mid, now, rng);
            let view = TradeView {
                uuid: random_uuid(rng),
                time_exchange: t.time_exchange,
                time_coinapi: t.time_coinapi,
                price: t.price(),
                size: t.size(),
                taker_side: t.taker_side(),
                streamed: false,
            };
            push_rest_trade(&mut out, None, &view);
        }
    }
    out.push('}');
    out
}

/// REST `orderbooks/current` body: these levels (price units, size units), best first.
pub(crate) fn rest_orderbook(
    sym: &SymbolInfo,
    asks: &[(u64, u64)],
    bids: &[(u64, u64)],
    now: OffsetDateTime,
    rng: &mut fastrand::Rng,
) -> String {
    let levels = |side: &[(u64, u64)]| side.iter().map(|&(price, size)| Level { price, size }).collect::<Vec<_>>();
    let mut out = String::with_capacity(128 + (asks.len() + bids.len()) * 40);
    out.push_str("{\"symbol_id\":");
    out.push_str(&sym.id_json);
    let (exchange, coinapi) = times(now, rng);
    let _ = write!(out, ",\"time_exchange\":\"{exchange}\",\"time_coinapi\":\"{coinapi}\",\"asks\":");
    push_levels(&mut out, sym, &levels(asks), rng);
    out.push_str(",\"bids\":");
    push_levels(&mut out, sym, &levels(bids), rng);
    out.push('}');
    out
}

/// REST `ohlcv/latest` body: `limit` bars of `period_secs`, newest (the open one) first.
pub(crate) fn rest_ohlcv(
    sym: &SymbolInfo,
    period_secs: i64,
    limit: usize,
    now: OffsetDateTime,
    rng: &mut fastrand::Rng,
) -> String {
    let ts = now.unix_timestamp();
    let current = ts - ts.rem_euclid(period_secs);
    let mut out = String::with_capacity(limit * 400 + 2);
    out.push('[');
    let mut price = walk(sym.ref_price, rng);
    for i in 0..limit as i64 {
        if i > 0 {
            out.push(',');
        }
        let start = current - i * period_secs;
        let mut bar = Bar::new(start, price);
        for _ in 0..rng.u8(1..=5) {
            price = walk(price, rng);
            bar.trade(price, random_size(rng));
        }
        let close =
            if i == 0 { now } else { OffsetDateTime::from_unix_timestamp(start + period_secs - 1).unwrap_or(now) };
        out.push('{');
        push_bar(&mut out, sym, &bar, period_secs, close, rng);
        out.push('}');
    }
    out.push(']');
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fixed_now() -> OffsetDateTime {
        OffsetDateTime::from_unix_timestamp_nanos(1_795_848_266_123_456_789).expect("valid fixed timestamp")
    }

    fn num(m: u128, scale: u32, style: NumStyle, extra: u128) -> String {
        let mut s = String::new();
        push_number(&mut s, m, scale, style, extra);
        s
    }

    /// Every number style spells the intended exact value.
    #[test]
    fn number_styles_are_exact() {
        assert_eq!(num(210_000, 8, NumStyle::Plain, 0), "0.00210000");
        assert_eq!(num(210_000, 8, NumStyle::Trimmed, 0), "0.0021");
        assert_eq!(num(300_000_000, 8, NumStyle::Trimmed, 0), "3");
        assert_eq!(num(770, 0, NumStyle::Padded(9), 0), "770.000000000");
        assert_eq!(num(1, 8, NumStyle::Exp, 0), "1e-8");
        assert_eq!(num(210_000, 8, NumStyle::Exp, 0), "21e-4");
        assert_eq!(num(6_412_345, 2, NumStyle::Plain, 0), "64123.45");
        let long = num(18_988, 6, NumStyle::Long, 515_563_054_386_460_807_560_000);
        assert!(long.starts_with("0.018988"), "{long}");
        let significant = long.trim_start_matches(['0', '.']);
        assert_eq!(significant.len(), 28, "{long}");
        assert_eq!(num(0, 8, NumStyle::Long, 5), "0");
    }

    /// Timestamps have CoinAPI's shape: UTC, 7 fractional digits.
    #[test]
    fn timestamps_have_seven_digits() {
        assert_eq!(time_string(fixed_now()), "2026-11-28T06:44:26.1234567Z");
    }

    fn parse(frame: &[u8]) -> serde_json::Value {
        // Skip the 2–10 byte frame header the generator wrote.
        let off = match frame[1] {
            126 => 4,
            127 => 10,
            _ => 2,
        };
        serde_json::from_slice(&frame[off..]).expect("generated frame is JSON")
    }

    /// Trades carry the CoinAPI fields in order, sequences start at 1, uuids are unique and
    /// upper case, and a duplicate repeats the uuid under the next sequence.
    #[test]
    fn trade_stream_fields_sequence_and_duplicate() {
        let sym = Arc::new(SymbolInfo::new("BITSTAMP_SPOT_BTC_USD", 0));
        let mut g = StreamGen::new(DataType::Trade, sym, 20, "1MIN", true, fastrand::Rng::with_seed(7));
        let mut uuids = std::collections::HashSet::new();
        for expect_seq in 1..=300u64 {
            let mut out = Vec::new();
            let e = g.emit(&mut out, 0, fixed_now);
            assert!(e.sequenced);
            let text = std::str::from_utf8(&out[e.start..]).expect("utf-8");
            let mut keys: Vec<&str> = text.split("\":").filter_map(|s| s.rsplit('"').next()).collect();
            keys.pop();
            assert_eq!(
                keys,
                [
                    "type",
                    "symbol_id",
                    "sequence",
                    "time_exchange",
                    "time_coinapi",
                    "uuid",
                    "price",
                    "size",
                    "taker_side"
                ]
            );
            let v = parse(&out);
            assert_eq!(v["sequence"].as_u64(), Some(expect_seq));
            let uuid = v["uuid"].as_str().expect("uuid").to_string();
            assert_eq!(uuid, uuid.to_ascii_uppercase());
            assert_eq!(uuid.len(), 36);
            assert!(uuids.insert(uuid), "uuid repeated");
        }
        let mut out = Vec::new();
        let e = g.duplicate_last_trade(&mut out, 0).expect("a trade was sent");
        let v: serde_json::Value = serde_json::from_slice(&out[e.start..]).expect("json");
        assert_eq!(v["sequence"].as_u64(), Some(301));
        assert!(uuids.contains(v["uuid"].as_str().expect("uuid")));
    }

    /// A `book` stream opens with a snapshot, continues with deltas, and a resubscription
    /// brings a new snapshot; `book5` is always a full snapshot of at most 5 levels.
    #[test]
    fn books_snapshot_then_deltas() {
        for ring_mode in [false, true] {
            let sym = Arc::new(SymbolInfo::new("COINBASE_SPOT_ETH_USD", 0));
            let mut g =
                StreamGen::new(DataType::Book, Arc::clone(&sym), 10, "1MIN", ring_mode, fastrand::Rng::with_seed(3));
            let mut snaps = Vec::new();
            for i in 0..20 {
                if i == 10 {
                    g.request_snapshot();
                }
                let mut out = Vec::new();
                g.emit(&mut out, 0, fixed_now);
                let v = parse(&out);
                snaps.push(v["is_snapshot"].as_bool().expect("is_snapshot"));
                if i == 0 {
                    assert_eq!(v["asks"].as_array().map(Vec::len), Some(10));
                }
            }
            assert!(snaps[0] && snaps[10], "{snaps:?}");
            assert_eq!(snaps.iter().filter(|s| **s).count(), 2, "{snaps:?}");

            let mut g5 = StreamGen::new(DataType::Book5, sym, 20, "1MIN", ring_mode, fastrand::Rng::with_seed(4));
            for _ in 0..5 {
                let mut out = Vec::new();
                g5.emit(&mut out, 0, fixed_now);
                let v = parse(&out);
                assert_eq!(v["is_snapshot"], serde_json::Value::Bool(true));
                assert!(v["bids"].as_array().map(Vec::len).unwrap_or(0) <= 5);
            }
        }
    }

    /// Over a few thousand trades every spelling a client must preserve shows up: long exact
    /// decimals (beyond f64), padded trailing zeros, and exponent forms.
    #[test]
    fn trades_use_every_number_spelling() {
        let sym = Arc::new(SymbolInfo::new("BINANCE_SPOT_SOL_USDT", 0));
        let mut g = StreamGen::new(DataType::Trade, sym, 20, "1MIN", false, fastrand::Rng::with_seed(11));
        let (mut long, mut padded, mut exp) = (false, false, false);
        for _ in 0..3000 {
            let mut out = Vec::new();
            let e = g.emit(&mut out, 0, fixed_now);
            let text = std::str::from_utf8(&out[e.start..]).expect("utf-8");
            for field in ["\"price\":", "\"size\":"] {
                let Some(at) = text.find(field) else { continue };
                let value: String = text[at + field.len()..].chars().take_while(|c| *c != ',' && *c != '}').collect();
                let digits = value.trim_start_matches(['0', '.']).replace('.', "");
                long |= digits.len() >= 20 && !value.contains(['e', 'E']);
                padded |= value.ends_with("000") && value.contains('.');
                exp |= value.contains(['e', 'E']);
            }
        }
        assert!(long && padded && exp, "long {long} padded {padded} exp {exp}");
    }

    /// exrate carries no sequence and ignores gaps; ohlcv uses the requested period.
    #[test]
    fn exrate_and_ohlcv_shapes() {
        let sym = Arc::new(SymbolInfo::new("KRAKEN_SPOT_XRP_EUR", 0));
        let mut g = StreamGen::new(DataType::Exrate, Arc::clone(&sym), 20, "1MIN", false, fastrand::Rng::with_seed(1));
        let mut out = Vec::new();
        let e = g.emit(&mut out, 5, fixed_now);
        assert!(!e.sequenced);
        let v = parse(&out);
        assert_eq!(v["asset_id_base"], "XRP");
        assert_eq!(v["asset_id_quote"], "EUR");
        assert!(v.get("sequence").is_none() && v.get("symbol_id").is_none());

        let mut g = StreamGen::new(DataType::Ohlcv, sym, 20, "5SEC", false, fastrand::Rng::with_seed(1));
        let mut out = Vec::new();
        g.emit(&mut out, 2, fixed_now);
        let v = parse(&out);
        assert_eq!(v["period_id"], "5SEC");
        assert_eq!(v["sequence"].as_u64(), Some(3));
        assert_eq!(v["time_period_start"], "2026-11-28T06:44:25.0000000Z");
        assert_eq!(v["time_period_end"], "2026-11-28T06:44:30.0000000Z");
    }

    /// Frame headers use the 7-bit, 16-bit and 64-bit length forms at their boundaries.
    #[test]
    fn frame_header_lengths() {
        for (len, header) in [
            (125usize, vec![0x81, 125]),
            (126, vec![0x81, 126, 0, 126]),
            (65_535, vec![0x81, 126, 0xFF, 0xFF]),
            (65_536, vec![0x81, 127, 0, 0, 0, 0, 0, 1, 0, 0]),
        ] {
            let mut out = Vec::new();
            push_frame_header(&mut out, OPCODE_TEXT, len);
            assert_eq!(out, header, "len {len}");
        }
    }

    #[test]
    fn period_ids() {
        assert_eq!(period_seconds("1SEC"), Some(1));
        assert_eq!(period_seconds("5MIN"), Some(300));
        assert_eq!(period_seconds("1HRS"), Some(3600));
        assert_eq!(period_seconds("1DAY"), Some(86_400));
        assert_eq!(period_seconds("MIN"), None);
        assert_eq!(period_seconds("0MIN"), None);
        assert_eq!(period_seconds("1WEEK"), None);
    }

    /// Request timestamps: 0 to 9 fractional digits and a `Z`; anything else is refused. Ticks
    /// format back to the same 7-digit text.
    #[test]
    fn parses_coinapi_times() {
        let base: i128 = 1_795_848_266 * 1_000_000_000;
        assert_eq!(parse_time("2026-11-28T06:44:26Z"), Some(base));
        assert_eq!(parse_time("2026-11-28T06:44:26.1Z"), Some(base + 100_000_000));
        assert_eq!(parse_time("2026-11-28T06:44:26.1234567Z"), Some(base + 123_456_700));
        assert_eq!(parse_time("2026-11-28T06:44:26.123456789Z"), Some(base + 123_456_789));
        assert_eq!(parse_time("1970-01-01T00:00:00Z"), Some(0));
        for bad in [
            "",
            "2026-11-28T06:44:26",
            "2026-11-28T06:44:26.Z",
            "2026-11-28T06:44:26.1234567890Z",
            "2026-11-28T06:44:26+00:00",
            "2026-11-28 06:44:26Z",
            "2026-02-30T06:44:26Z",
            "2026-11-28T24:00:00Z",
            "2026-11-28T06:44:26Zjunk",
            "2026-1-28T06:44:26Z",
            "２026-11-28T06:44:26Z",
        ] {
            assert_eq!(parse_time(bad), None, "{bad:?}");
        }
        let mut s = String::new();
        push_ticks(&mut s, ticks(fixed_now()));
        assert_eq!(s, "2026-11-28T06:44:26.1234567Z");
        assert_eq!(parse_time(&s).map(|n| n / 100), Some(i128::from(ticks(fixed_now()))));
    }

    /// A withheld trade takes its sequence number without writing anything, and the next trade
    /// sent shows the jump (once); the ring's trades are the frames' trades.
    #[test]
    fn withhold_consumes_sequences() {
        for ring_mode in [false, true] {
            let sym = Arc::new(SymbolInfo::new("BITSTAMP_SPOT_BTC_USD", 0));
            let mut g = StreamGen::new(DataType::Trade, sym, 20, "1MIN", ring_mode, fastrand::Rng::with_seed(5));
            let mut out = Vec::new();
            for _ in 0..3 {
                g.emit(&mut out, 0, fixed_now);
            }
            let before = out.len();
            let w = g.withhold(fixed_now);
            g.withhold(fixed_now);
            assert_eq!((w.seq, out.len()), (4, before), "nothing written");
            let e = g.emit(&mut out, 0, fixed_now);
            assert_eq!(e.seq, 6);
            assert!(g.take_withheld_gap() && !g.take_withheld_gap());
            let v: serde_json::Value = serde_json::from_slice(&out[e.start..]).expect("json");
            let f = &g.ring_trades().expect("a trade stream has ring trades").fields[e.pos];
            let mut te = String::new();
            push_ticks(&mut te, f.time_exchange);
            assert_eq!(v["time_exchange"], te);
            let text = std::str::from_utf8(&out[e.start..]).expect("utf-8");
            assert!(text.contains(&format!("\"price\":{},\"size\":{},", f.price(), f.size())), "{text}");
            let (uuid, _) = g.outage_trade(fixed_now());
            assert_eq!(uuid & UUID_TAIL_MASK, 7, "outage trades take sequence numbers too");
            assert_eq!(uuid_string(uuid, true)[..24], v["uuid"].as_str().expect("uuid")[..24]);
        }
    }

    /// `restart` starts a book over at sequence 1 with a snapshot, in paced and ring mode; it
    /// leaves other kinds alone.
    #[test]
    fn restart_starts_a_book_over() {
        for ring_mode in [false, true] {
            for kind in [DataType::Book, DataType::BookL3] {
                let sym = Arc::new(SymbolInfo::new("COINBASE_SPOT_ETH_USD", 0));
                let mut g = StreamGen::new(kind, sym, 5, "1MIN", ring_mode, fastrand::Rng::with_seed(9));
                for _ in 0..5 {
                    g.emit(&mut Vec::new(), 0, fixed_now);
                }
                g.restart();
                for (seq, snapshot) in [(1, true), (2, false)] {
                    let mut out = Vec::new();
                    g.emit(&mut out, 0, fixed_now);
                    let v = parse(&out);
                    assert_eq!(v["sequence"], seq, "{kind:?} ring {ring_mode}");
                    assert_eq!(v["is_snapshot"], snapshot, "{kind:?} ring {ring_mode}");
                }
            }
            let sym = Arc::new(SymbolInfo::new("COINBASE_SPOT_ETH_USD", 0));
            let mut q = StreamGen::new(DataType::Quote, sym, 5, "1MIN", ring_mode, fastrand::Rng::with_seed(9));
            q.emit(&mut Vec::new(), 0, fixed_now);
            q.restart();
            let mut out = Vec::new();
            q.emit(&mut out, 0, fixed_now);
            assert_eq!(parse(&out)["sequence"], 2);
        }
    }

    static CLOCK_NANOS: std::sync::atomic::AtomicI64 = std::sync::atomic::AtomicI64::new(1_795_848_266_000_000_000);

    fn moving_clock() -> OffsetDateTime {
        let nanos = CLOCK_NANOS.load(std::sync::atomic::Ordering::Relaxed);
        OffsetDateTime::from_unix_timestamp_nanos(i128::from(nanos)).expect("valid test time")
    }

    /// In ring mode a duplicate still repeats the last trade sent after its ring was replaced.
    #[test]
    fn duplicate_survives_a_ring_rebuild() {
        let sym = Arc::new(SymbolInfo::new("BITSTAMP_SPOT_BTC_USD", 0));
        let mut g = StreamGen::new(DataType::Trade, sym, 20, "1MIN", true, fastrand::Rng::with_seed(2));
        let mut out = Vec::new();
        let mut last = Emitted { start: 0, sequenced: true, seq: 0, pos: 0, written: true };
        for _ in 0..FLOOD_RING_LEN {
            last = g.emit(&mut out, 0, moving_clock);
        }
        let sent: serde_json::Value = serde_json::from_slice(&out[last.start..]).expect("json");
        CLOCK_NANOS.fetch_add(2_000_000_000, std::sync::atomic::Ordering::Relaxed);
        // The next message rebuilds the ring (older than a second); withhold it.
        g.withhold(moving_clock);
        let mut dup = Vec::new();
        let e = g.duplicate_last_trade(&mut dup, 0).expect("a trade was sent");
        let v: serde_json::Value = serde_json::from_slice(&dup[e.start..]).expect("json");
        assert_eq!(v["uuid"], sent["uuid"]);
        assert_eq!(v["price"].to_string(), sent["price"].to_string());
        assert_eq!(v["sequence"].as_u64(), Some(FLOOD_RING_LEN as u64 + 2));
    }
}
