//! The slow references the fuzz targets hold coinfeed's parsers to, written independently of the
//! code under test: an exact decimal as a digit string, and a JSON object read as its list of
//! entries in order (duplicates kept, which serde_json's `Value` would silently merge).
//!
//! Nothing here is fast or clever on purpose: a reference that shares the tested code's tricks
//! shares its bugs.

use std::cmp::Ordering;
use std::fmt;

use serde::de::{Deserializer, MapAccess, Visitor};
use serde::Deserialize;
use serde_json::value::RawValue;

/// A number's value: `0` or `±0.d1d2…dn × 10^exp` with `d1 ≠ 0` and `dn ≠ 0`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decimal {
    Zero,
    NonZero { negative: bool, digits: Vec<u8>, exp: i128 },
}

/// Why the reference refuses a text (the same two answers coinfeed's key gives).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NotANumber,
    Unrepresentable,
}

/// Reads a JSON number (RFC 8259: `-? (0 | [1-9][0-9]*) (. [0-9]+)? ([eE] [+-]? [0-9]+)?`) into
/// its exact value, by walking the grammar one character at a time. Any exponent is accepted
/// (it is kept as a saturated i128; the bound is applied by `key_of`).
pub fn decimal(text: &str) -> Result<Decimal, Refusal> {
    let b = text.as_bytes();
    let mut i = 0;
    let negative = b.first() == Some(&b'-');
    if negative {
        i += 1;
    }
    let int_start = i;
    match b.get(i) {
        Some(b'0') => i += 1,
        Some(c) if c.is_ascii_digit() => {
            while b.get(i).is_some_and(u8::is_ascii_digit) {
                i += 1;
            }
        }
        _ => return Err(Refusal::NotANumber),
    }
    let int = &b[int_start..i];
    let mut frac: &[u8] = &[];
    if b.get(i) == Some(&b'.') {
        i += 1;
        let s = i;
        while b.get(i).is_some_and(u8::is_ascii_digit) {
            i += 1;
        }
        if i == s {
            return Err(Refusal::NotANumber);
        }
        frac = &b[s..i];
    }
    let mut exp: i128 = 0;
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        let mut exp_negative = false;
        if matches!(b.get(i), Some(b'+' | b'-')) {
            exp_negative = b[i] == b'-';
            i += 1;
        }
        let s = i;
        while let Some(c) = b.get(i).filter(|c| c.is_ascii_digit()) {
            // Saturate far beyond any bound: only "huge" matters past that.
            exp = (exp * 10 + i128::from(c - b'0')).min(1_000_000_000_000_000_000);
            i += 1;
        }
        if i == s {
            return Err(Refusal::NotANumber);
        }
        if exp_negative {
            exp = -exp;
        }
    }
    if i != b.len() {
        return Err(Refusal::NotANumber);
    }
    let mut all: Vec<u8> = int.iter().chain(frac).map(|d| d - b'0').collect();
    let leading = all.iter().take_while(|&&d| d == 0).count();
    if leading == all.len() {
        return Ok(Decimal::Zero);
    }
    all.drain(..leading);
    while all.last() == Some(&0) {
        all.pop();
    }
    // 0.(int frac) × 10^(int.len()) × 10^exp, with the leading zeros moved into the exponent.
    let exp = int.len() as i128 - leading as i128 + exp;
    Ok(Decimal::NonZero { negative, digits: all, exp })
}

/// What coinfeed's exact key must say of `text`: the value, or why it cannot be held (more
/// than 38 significant digits, or a leading-digit exponent beyond ±1,000,000).
pub fn key_of(text: &str) -> Result<Decimal, Refusal> {
    let d = decimal(text)?;
    if let Decimal::NonZero { digits, exp, .. } = &d {
        if digits.len() > 38 || exp.abs() > 1_000_000 {
            return Err(Refusal::Unrepresentable);
        }
    }
    Ok(d)
}

/// Numeric order of two exact values.
pub fn compare(a: &Decimal, b: &Decimal) -> Ordering {
    let class = |d: &Decimal| match d {
        Decimal::Zero => 0,
        Decimal::NonZero { negative: true, .. } => -1,
        Decimal::NonZero { negative: false, .. } => 1,
    };
    match (a, b) {
        (
            Decimal::NonZero { negative: na, digits: da, exp: ea },
            Decimal::NonZero { negative: nb, digits: db, exp: eb },
        ) if na == nb => {
            // Same sign: magnitude by exponent, then digit by digit (no trailing zeros, so a
            // prefix is the smaller number).
            let magnitude = ea.cmp(eb).then_with(|| da.cmp(db));
            if *na {
                magnitude.reverse()
            } else {
                magnitude
            }
        }
        _ => class(a).cmp(&class(b)),
    }
}

/// A JSON object's entries in the order written, duplicates kept, each value as its raw text
/// (so a nested object can be read as `Entries` in turn).
#[derive(Debug)]
pub struct Entries(pub Vec<(String, Box<RawValue>)>);

impl Entries {
    /// The raw text of `key` when it is given exactly once; `Err(())` when it is given twice.
    #[allow(clippy::result_unit_err)]
    pub fn once_raw(&self, key: &str) -> Result<Option<&RawValue>, ()> {
        let mut found = self.0.iter().filter(|(k, _)| k == key);
        let first = found.next().map(|(_, v)| &**v);
        if found.next().is_some() {
            return Err(());
        }
        Ok(first)
    }
}

/// A raw value that is a JSON string, unescaped. Numbers are never read through `Value` here:
/// serde_json refuses one beyond f64's range (`1e400`), which is still valid JSON text.
pub fn string(raw: &RawValue) -> Option<String> {
    serde_json::from_str(raw.get()).ok()
}

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Entries, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Entries, A::Error> {
                let mut out = Vec::new();
                while let Some((k, v)) = map.next_entry::<String, Box<RawValue>>()? {
                    out.push((k, v));
                }
                Ok(Entries(out))
            }
        }
        d.deserialize_map(V)
    }
}

/// `text` as one JSON object (serde_json's grammar and nesting limit), or `None`.
pub fn object(text: &[u8]) -> Option<Entries> {
    serde_json::from_slice::<Entries>(text).ok()
}

/// Splits fuzz input into parts at `sep`, at most `max` of them (the last takes the rest).
pub fn parts(data: &[u8], sep: u8, max: usize) -> Vec<&[u8]> {
    data.splitn(max, |&b| b == sep).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_reference_reads_numbers_exactly() {
        assert_eq!(decimal("67069.80000"), decimal("67069.8"));
        assert_eq!(decimal("1e-8"), decimal("0.00000001"));
        assert_eq!(decimal("-0.0e5"), Ok(Decimal::Zero));
        assert_eq!(decimal("01"), Err(Refusal::NotANumber));
        assert_eq!(key_of("1e1000001"), Err(Refusal::Unrepresentable));
        assert_eq!(compare(&decimal("-2").unwrap(), &decimal("-10").unwrap()), Ordering::Greater);
        assert_eq!(compare(&decimal("0.12").unwrap(), &decimal("0.123").unwrap()), Ordering::Less);
    }
}
