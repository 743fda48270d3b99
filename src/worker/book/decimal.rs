//! Exact decimal keys for book prices, read straight from JSON number text: never through f64.
//!
//! A key keeps up to 38 significant digits (CoinAPI sends up to 29), any scale and any exponent
//! spelling, and orders exactly as the numbers do: `67069.80000` and `67069.8` are one key, and
//! `1e-8` equals `0.00000001`. A number it cannot hold exactly (more significant digits, or an
//! exponent beyond ±1,000,000) is refused, never rounded.
//!
//! Pure: no IO, no clock.

/// Significant digits a key holds exactly: every one of them fits in a u128 (10^38 < 2^128).
pub const DIGITS_MAX: usize = 38;
/// Exponents (of the leading digit) a key holds.
const EXPONENT_MAX: i64 = 1_000_000;
/// 10^38 − 1: the largest 38-digit significand, to mirror negative keys.
const SIG_MAX: u128 = 99_999_999_999_999_999_999_999_999_999_999_999_999;

/// An exact decimal value, ordered by value. 24 bytes.
///
/// For a value `±0.d1d2…dn × 10^e` (d1 ≠ 0) the significand is `d1…dn` padded with zeros to 38
/// digits and the rank grows with `e` (mirrored for negatives), so the derived order of
/// (rank, significand) is the numeric order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Price {
    rank: i32,
    hi: u64,
    lo: u64,
}

/// Why a number text is not a key.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NumberError {
    /// Not a JSON number (a string, `null`, stray characters).
    NotANumber,
    /// More than `DIGITS_MAX` significant digits, or an exponent out of range: it cannot be
    /// held exactly.
    Unrepresentable,
}

impl NumberError {
    pub fn as_str(self) -> &'static str {
        match self {
            NumberError::NotANumber => "not a number",
            NumberError::Unrepresentable => "more digits than an exact key holds (38 significant)",
        }
    }
}

/// The sign of a number.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Sign {
    Negative,
    Zero,
    Positive,
}

/// The parts of a JSON number: sign, significant digits (no leading or trailing zeros) and the
/// exponent of the leading digit (`0.d1… × 10^exp`). `digits` is empty for zero.
struct Parts<'a> {
    negative: bool,
    /// Integer then fraction digits, as written.
    int: &'a [u8],
    frac: &'a [u8],
    exp: i64,
}

/// Splits a JSON number (RFC 8259 grammar) into its parts.
fn split(text: &[u8]) -> Result<Parts<'_>, NumberError> {
    let (negative, rest) = match text.strip_prefix(b"-") {
        Some(r) => (true, r),
        None => (false, text),
    };
    let int_len = rest.iter().take_while(|b| b.is_ascii_digit()).count();
    if int_len == 0 || (int_len > 1 && rest[0] == b'0') {
        return Err(NumberError::NotANumber);
    }
    let (int, mut rest) = rest.split_at(int_len);
    let mut frac: &[u8] = &[];
    if let Some(r) = rest.strip_prefix(b".") {
        let n = r.iter().take_while(|b| b.is_ascii_digit()).count();
        if n == 0 {
            return Err(NumberError::NotANumber);
        }
        frac = &r[..n];
        rest = &r[n..];
    }
    let mut exp = 0i64;
    if let Some(r) = rest.strip_prefix(b"e").or_else(|| rest.strip_prefix(b"E")) {
        let (neg, r) = match r.first() {
            Some(b'-') => (true, &r[1..]),
            Some(b'+') => (false, &r[1..]),
            _ => (false, r),
        };
        if r.is_empty() || !r.iter().all(u8::is_ascii_digit) {
            return Err(NumberError::NotANumber);
        }
        // Digits past the range only make it larger: saturate, then refuse below.
        for d in r {
            // Far beyond any frame's length, so no correction below can bring it back in range.
            exp = (exp * 10 + i64::from(d - b'0')).min(1 << 50);
        }
        if neg {
            exp = -exp;
        }
        rest = &[];
    }
    if !rest.is_empty() {
        return Err(NumberError::NotANumber);
    }
    Ok(Parts { negative, int, frac, exp })
}

/// The sign of a JSON number text, whatever its length (sizes need no exact key).
pub fn sign(text: &str) -> Result<Sign, NumberError> {
    let p = split(text.as_bytes())?;
    let nonzero = p.int.iter().chain(p.frac).any(|&d| d != b'0');
    Ok(match (nonzero, p.negative) {
        (false, _) => Sign::Zero,
        (true, true) => Sign::Negative,
        (true, false) => Sign::Positive,
    })
}

impl Price {
    /// The exact key of a JSON number text.
    pub fn parse(text: &str) -> Result<Price, NumberError> {
        let p = split(text.as_bytes())?;
        // All digits in one sequence; the point sits after `int.len()` of them.
        let all = || p.int.iter().chain(p.frac).copied();
        let lead = all().take_while(|&d| d == b'0').count();
        let total = p.int.len() + p.frac.len();
        if lead == total {
            return Ok(Price { rank: 0, hi: 0, lo: 0 });
        }
        let trail = all().rev().take_while(|&d| d == b'0').count();
        let n = total - lead - trail;
        if n > DIGITS_MAX {
            return Err(NumberError::Unrepresentable);
        }
        let mut sig: u128 = 0;
        for d in all().skip(lead).take(n) {
            sig = sig * 10 + u128::from(d - b'0');
        }
        for _ in n..DIGITS_MAX {
            sig *= 10;
        }
        // 0.d1d2… × 10^e: the leading digit sits `int.len() - lead` places before the point.
        let e = p.int.len() as i64 - lead as i64 + p.exp;
        if e.abs() > EXPONENT_MAX {
            return Err(NumberError::Unrepresentable);
        }
        // Ranks 1..=2·EXPONENT_MAX+1 for positives, mirrored for negatives; 0 is zero.
        let r = (e + EXPONENT_MAX + 1) as i32;
        let (rank, sig) = if p.negative { (-r, SIG_MAX - sig) } else { (r, sig) };
        Ok(Price { rank, hi: (sig >> 64) as u64, lo: sig as u64 })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn p(s: &str) -> Price {
        Price::parse(s).unwrap_or_else(|e| panic!("{s}: {e:?}"))
    }

    #[test]
    fn one_value_is_one_key_however_it_is_spelled() {
        assert_eq!(p("67069.80000"), p("67069.8"));
        assert_eq!(p("1e-8"), p("0.00000001"));
        assert_eq!(p("1.50E+2"), p("150"));
        assert_eq!(p("150"), p("15e1"));
        assert_eq!(p("0.000"), p("0"));
        assert_eq!(p("-0"), p("0"));
        assert_eq!(p("5872"), p("5872.0"));
        assert_ne!(p("67069.8"), p("67069.80000000000000000000001"));
    }

    #[test]
    fn keys_order_as_the_numbers() {
        let sorted = [
            "-1000",
            "-999.99",
            "-1",
            "-0.5",
            "-1e-8",
            "0",
            "1e-8",
            "0.00000002",
            "0.5",
            "0.99999",
            "1",
            "9.5",
            "10",
            "67009.375950596670472379501527",
            "67009.37595059667047237950153",
            "67069.8",
            "67069.80000000000000000000001",
            "1e30",
        ];
        for w in sorted.windows(2) {
            assert!(p(w[0]) < p(w[1]), "{} < {}", w[0], w[1]);
        }
    }

    /// Proves a key is exact for 29 and up to 38 significant digits, and refuses more instead of
    /// rounding (two numbers differing in the 39th digit would otherwise be one level).
    #[test]
    fn long_numbers_are_exact_or_refused() {
        let a = "1234567890.1234567890123456789"; // 29 digits
        let b = "1234567890.1234567890123456790";
        assert!(p(a) < p(b));
        let d38 = "1.2345678901234567890123456789012345678";
        assert!(p(d38) < p("1.2345678901234567890123456789012345679"));
        assert_eq!(Price::parse("1.23456789012345678901234567890123456789"), Err(NumberError::Unrepresentable));
        // Trailing zeros are not significant.
        assert!(Price::parse("1.2345678901234567890123456789012345678000000").is_ok());
        assert_eq!(Price::parse("1e99999999"), Err(NumberError::Unrepresentable));
    }

    #[test]
    fn only_json_numbers_are_keys() {
        for bad in ["", "-", "01", "1.", ".5", "1e", "1e+", "+1", "\"1\"", "null", "1 ", "0x10", "1.5.2", "--1"] {
            assert_eq!(Price::parse(bad), Err(NumberError::NotANumber), "{bad:?}");
        }
    }

    /// A slow exact reference: the value as (negative, integer digits, fraction digits) with no
    /// leading or trailing zeros, compared digit by digit.
    fn reference(text: &str) -> (bool, String, String) {
        let (neg, t) = text.strip_prefix('-').map_or((false, text), |t| (true, t));
        let (mantissa, exp) = match t.find(['e', 'E']) {
            Some(i) => (&t[..i], t[i + 1..].parse::<i64>().expect("exponent")),
            None => (t, 0),
        };
        let (int, frac) = mantissa.split_once('.').unwrap_or((mantissa, ""));
        let mut digits: String = format!("{int}{frac}");
        let mut point = int.len() as i64 + exp;
        while point < 0 {
            digits.insert(0, '0');
            point += 1;
        }
        while (digits.len() as i64) < point {
            digits.push('0');
        }
        let (i, f) = digits.split_at(point as usize);
        let (i, f) = (i.trim_start_matches('0').to_string(), f.trim_end_matches('0').to_string());
        let zero = i.is_empty() && f.is_empty();
        (neg && !zero, i, f)
    }

    fn reference_cmp(a: &str, b: &str) -> std::cmp::Ordering {
        let (na, ia, fa) = reference(a);
        let (nb, ib, fb) = reference(b);
        let magnitude = ia.len().cmp(&ib.len()).then_with(|| ia.cmp(&ib)).then_with(|| fa.cmp(&fb));
        match (na, nb) {
            (false, false) => magnitude,
            (true, true) => magnitude.reverse(),
            (false, true) => std::cmp::Ordering::Greater,
            (true, false) => std::cmp::Ordering::Less,
        }
    }

    /// A random JSON number of up to 38 significant digits, spelled any way JSON allows.
    fn random_number(rng: &mut fastrand::Rng) -> String {
        let digits: String = (0..rng.usize(1..=20)).map(|_| char::from(b'0' + rng.u8(0..10))).collect();
        let int = digits.trim_start_matches('0');
        let int = if int.is_empty() { "0" } else { int };
        let frac: String = (0..rng.usize(0..=18)).map(|_| char::from(b'0' + rng.u8(0..10))).collect();
        let mut s = String::new();
        if rng.u8(0..4) == 0 {
            s.push('-');
        }
        s.push_str(int);
        if !frac.is_empty() {
            s.push('.');
            s.push_str(&frac);
            s.extend(std::iter::repeat_n('0', rng.usize(0..4)));
        }
        if rng.u8(0..5) == 0 {
            s.push_str(["e", "E", "e+", "e-"][rng.usize(0..4)]);
            s.push_str(&rng.u8(0..30).to_string());
        }
        s
    }

    /// Proves the key orders and equates numbers exactly as their values do, against a slow
    /// digit-string reference, over 50,000 random pairs and their respellings.
    #[test]
    fn keys_agree_with_an_exact_reference() {
        let mut rng = fastrand::Rng::with_seed(10);
        for _ in 0..50_000 {
            let (a, b) = (random_number(&mut rng), random_number(&mut rng));
            let (ka, kb) = (p(&a), p(&b));
            assert_eq!(ka.cmp(&kb), reference_cmp(&a, &b), "{a} vs {b}");
            // The same value respelled: trailing zeros, and shifted into an exponent.
            let respelled = if a.contains(['e', 'E']) {
                a.clone()
            } else if a.contains('.') {
                format!("{a}000")
            } else {
                format!("{a}.0")
            };
            assert_eq!(p(&respelled), ka, "{a} = {respelled}");
            if !a.contains(['e', 'E']) {
                let (int, frac) = a.split_once('.').unwrap_or((&a, ""));
                let (neg, int) = int.strip_prefix('-').map_or(("", int), |i| ("-", i));
                let shifted = format!("{neg}0.{int}{frac}e{}", int.len());
                assert_eq!(p(&shifted), ka, "{a} = {shifted}");
            }
        }
    }

    #[test]
    fn signs() {
        assert_eq!(sign("0.000"), Ok(Sign::Zero));
        assert_eq!(sign("-0.0"), Ok(Sign::Zero));
        assert_eq!(sign("-0.5"), Ok(Sign::Negative));
        assert_eq!(sign("1e-8"), Ok(Sign::Positive));
        assert_eq!(sign("0.0000000000000000000000000000000000000000001"), Ok(Sign::Positive));
        assert_eq!(sign("abc"), Err(NumberError::NotANumber));
    }
}
