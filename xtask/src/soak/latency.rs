//! End-to-end latency for the soak run: parsing a line's CoinAPI `recv_time` into Unix
//! nanoseconds by hand, and a fixed-size log-scale histogram that records a latency without
//! allocating and answers percentiles at the end. Reading lines and deciding which ones to
//! measure is left to `soak.rs`.

use std::time::{SystemTime, UNIX_EPOCH};

/// Smallest latency the histogram resolves; anything below lands in the first bucket.
const LOWEST_NS: f64 = 1_000.0;
/// Largest latency the histogram resolves; anything above lands in the last bucket (the exact
/// maximum is kept separately, so the report still shows it).
const HIGHEST_NS: f64 = 10_000_000_000.0;
/// Each bucket is 2% wider than the one before, so a percentile is off by at most 2%.
const GROWTH: f64 = 1.02;

/// Unix time in nanoseconds from a CoinAPI timestamp such as `2026-11-28T06:44:26.1234567Z`
/// (UTC, 0 to 9 fractional digits). `None` for anything else.
pub fn unix_ns_from_coinapi_time(s: &[u8]) -> Option<i64> {
    if s.len() < 20 || s[4] != b'-' || s[7] != b'-' || s[10] != b'T' || s[13] != b':' || s[16] != b':' {
        return None;
    }
    let year = digits(&s[0..4])?;
    let month = digits(&s[5..7])?;
    let day = digits(&s[8..10])?;
    let (hour, minute, second) = (digits(&s[11..13])?, digits(&s[14..16])?, digits(&s[17..19])?);
    if !(1..=12).contains(&month) || !(1..=31).contains(&day) || hour > 23 || minute > 59 || second > 60 {
        return None;
    }
    let mut fraction_ns = 0;
    match &s[19..] {
        b"Z" => {}
        [b'.', fraction @ .., b'Z'] if (1..=9).contains(&fraction.len()) => {
            fraction_ns = digits(fraction)? * 10_i64.pow(9 - fraction.len() as u32);
        }
        _ => return None,
    }
    let days = days_from_civil(year, month, day);
    Some(((days * 24 + hour) * 60 + minute) * 60_000_000_000 + second * 1_000_000_000 + fraction_ns)
}

/// The wall clock now, in Unix nanoseconds (the clock `recv_time` was taken from).
pub fn now_unix_ns() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos() as i64)
}

fn digits(s: &[u8]) -> Option<i64> {
    s.iter().try_fold(0_i64, |n, &b| b.is_ascii_digit().then(|| n * 10 + i64::from(b - b'0')))
}

/// Days since 1970-01-01 of a proleptic Gregorian date (Howard Hinnant's `days_from_civil`).
fn days_from_civil(year: i64, month: i64, day: i64) -> i64 {
    let y = if month <= 2 { year - 1 } else { year };
    let era = y.div_euclid(400);
    let year_of_era = y - era * 400;
    let day_of_year = (153 * (if month > 2 { month - 3 } else { month + 9 }) + 2) / 5 + day - 1;
    let day_of_era = year_of_era * 365 + year_of_era / 4 - year_of_era / 100 + day_of_year;
    era * 146_097 + day_of_era - 719_468
}

/// Latencies from 1 µs to 10 s in buckets 2% apart (814 counters, allocated once).
#[derive(Debug, Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max_ns: u64,
}

impl Histogram {
    pub fn new() -> Histogram {
        let n_buckets = ((HIGHEST_NS / LOWEST_NS).ln() / GROWTH.ln()).ceil() as usize;
        Histogram { counts: vec![0; n_buckets], total: 0, max_ns: 0 }
    }

    pub fn record(&mut self, latency_ns: u64) {
        let i = if (latency_ns as f64) < LOWEST_NS * GROWTH {
            0
        } else {
            (((latency_ns as f64 / LOWEST_NS).ln() / GROWTH.ln()) as usize).min(self.counts.len() - 1)
        };
        self.counts[i] += 1;
        self.total += 1;
        self.max_ns = self.max_ns.max(latency_ns);
    }

    pub fn count(&self) -> u64 {
        self.total
    }

    pub fn max_ns(&self) -> Option<u64> {
        (self.total > 0).then_some(self.max_ns)
    }

    /// The latency at or below which a fraction `q` of the values lie: the upper edge of the
    /// bucket holding that value (never above the exact maximum). `None` when empty.
    pub fn quantile_ns(&self, q: f64) -> Option<u64> {
        assert!((0.0..=1.0).contains(&q), "quantile {q} outside 0..=1");
        if self.total == 0 {
            return None;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, n) in self.counts.iter().enumerate() {
            seen += n;
            if seen >= rank {
                let upper_edge = LOWEST_NS * GROWTH.powi(i as i32 + 1);
                return Some((upper_edge as u64).min(self.max_ns));
            }
        }
        Some(self.max_ns)
    }
}

/// `412 µs`, `1.25 ms`, `2.10 s`.
pub fn format_ns(ns: u64) -> String {
    match ns {
        0..=999_999 => format!("{} µs", ns / 1_000),
        1_000_000..=999_999_999 => format!("{:.2} ms", ns as f64 / 1e6),
        _ => format!("{:.2} s", ns as f64 / 1e9),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn coinapi_times_parse_to_unix_nanoseconds() {
        let check =
            |s: &str, expected: Option<i64>| assert_eq!(unix_ns_from_coinapi_time(s.as_bytes()), expected, "{s}");
        check("1970-01-01T00:00:00Z", Some(0));
        check("1970-01-01T00:00:01.5Z", Some(1_500_000_000));
        // 2026-11-28T06:44:26Z is 1795848266 (date -u -d ... +%s).
        check("2026-11-28T06:44:26.1234567Z", Some(1_795_848_266_123_456_700));
        check("2024-02-29T23:59:59.999999999Z", Some(1_709_251_199_999_999_999));
        check("2026-11-28 06:44:26Z", None);
        check("2026-11-28T06:44:26.Z", None);
        check("2026-13-28T06:44:26Z", None);
        check("2026-11-28T06:44:26.1234567", None);
    }

    #[test]
    fn percentiles_are_within_two_percent() {
        let mut h = Histogram::new();
        assert_eq!(h.quantile_ns(0.5), None);
        for us in 1..=1_000_u64 {
            h.record(us * 1_000);
        }
        let p50 = h.quantile_ns(0.5).expect("not empty") as f64;
        assert!((p50 / 500_000.0 - 1.0).abs() <= 0.021, "{p50}");
        let p999 = h.quantile_ns(0.999).expect("not empty") as f64;
        assert!((p999 / 999_000.0 - 1.0).abs() <= 0.021, "{p999}");
        assert_eq!(h.quantile_ns(1.0), Some(1_000_000));
        h.record(60_000_000_000);
        assert_eq!(h.max_ns(), Some(60_000_000_000));
        assert_eq!(h.count(), 1_001);
    }
}
