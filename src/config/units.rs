//! The text of unit-bearing flag values, parsed: `parse_rotate` turns `--rotate`'s value
//! into a `Rotate` (a period such as `1h`, or a size such as `512MiB`) and refuses what is out of
//! range with a message that shows what would have been accepted. Pure: no IO, no clock; the
//! flag itself and its place in `ConfigError` belong to `config/mod.rs`.
//!
//! Sizes take both families of units because both are written in the wild: `KB`/`MB`/`GB`/`TB`
//! are powers of 1000 (what `df -H` and object-store quotas say), `KiB`/`MiB`/`GiB`/`TiB` powers
//! of 1024 (what `ls -lh` says). Units are case-sensitive (`mb` and `Mb` are refused rather than
//! guessed: a factor of 1000 or of 8 is too much to get wrong silently), and numbers are whole:
//! `1.5h` is refused with a hint to write `90m`.

/// When a rotating output file is finished and the next one begun.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rotate {
    /// On UTC boundaries: multiples of `seconds` since the Unix epoch.
    Every { seconds: u64 },
    /// Once a file holds `bytes` on disk (after compression), at the next batch boundary.
    Size { bytes: u64 },
}

/// The shortest period: one file per second is already more files than anyone wants to list.
pub const ROTATE_SECONDS_MIN: u64 = 1;
/// The longest period, a week: a longer one would mean a file open (as `.part`, invisible
/// downstream) for longer than anyone would wait to see its data.
pub const ROTATE_SECONDS_MAX: u64 = 7 * 86_400;
/// The smallest size, 64 KiB: about one compressed block of zstd, so a file is never mostly
/// framing, and below it a busy feed would finish (fsync, rename) files many times a second.
pub const ROTATE_BYTES_MIN: u64 = 64 << 10;
/// The largest size, 1 TiB: beyond any disk the output is likely to go to.
pub const ROTATE_BYTES_MAX: u64 = 1 << 40;

/// Each unit with its factor: seconds for times, bytes for sizes.
const TIME_UNITS: &[(&str, u64)] = &[("s", 1), ("m", 60), ("h", 3_600), ("d", 86_400)];
const SIZE_UNITS: &[(&str, u64)] = &[
    ("B", 1),
    ("KB", 1_000),
    ("MB", 1_000_000),
    ("GB", 1_000_000_000),
    ("TB", 1_000_000_000_000),
    ("KiB", 1 << 10),
    ("MiB", 1 << 20),
    ("GiB", 1 << 30),
    ("TiB", 1 << 40),
];

const TIME_EXAMPLES: &str = "30s, 15m, 1h, 1d";
const SIZE_EXAMPLES: &str = "64KiB, 512MiB, 1GiB";

/// Parses a rotation: a whole number followed by a time unit (`s`, `m`, `h`, `d`) or a size unit
/// (`B`, `KB`, `MB`, `GB`, `TB`, `KiB`, `MiB`, `GiB`, `TiB`), with nothing between or around
/// them. The error says what was wrong and shows examples.
pub fn parse_rotate(text: &str) -> Result<Rotate, String> {
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    let (number, unit) = text.split_at(digits);
    let neither = || format!("{text:?} is neither a time ({TIME_EXAMPLES}) nor a size ({SIZE_EXAMPLES})");
    if number.is_empty() {
        return Err(neither());
    }
    if unit.starts_with(['.', ',']) {
        return Err(format!("{text:?} is not a whole number of units: write e.g. 90m rather than 1.5h, or 1536MiB"));
    }
    let too_large = || format!("{text:?} is too large a number: at most {ROTATE_SECONDS_MAX}s or {ROTATE_BYTES_MAX}B");
    // The digits are ASCII and non-empty, so the only failure is overflow.
    let n: u64 = number.parse().map_err(|_| too_large())?;
    if let Some(&(_, factor)) = TIME_UNITS.iter().find(|(u, _)| *u == unit) {
        let seconds = n.checked_mul(factor).ok_or_else(too_large)?;
        if seconds < ROTATE_SECONDS_MIN {
            return Err(format!("{text:?} is too short a rotation period: at least 1s (e.g. {TIME_EXAMPLES})"));
        }
        if seconds > ROTATE_SECONDS_MAX {
            return Err(format!("{text:?} is too long a rotation period: at most 7d ({ROTATE_SECONDS_MAX}s)"));
        }
        return Ok(Rotate::Every { seconds });
    }
    if let Some(&(_, factor)) = SIZE_UNITS.iter().find(|(u, _)| *u == unit) {
        let bytes = n.checked_mul(factor).ok_or_else(too_large)?;
        if bytes < ROTATE_BYTES_MIN {
            return Err(format!(
                "{text:?} is too small a rotation size: at least 64KiB ({ROTATE_BYTES_MIN} bytes; e.g. {SIZE_EXAMPLES})"
            ));
        }
        if bytes > ROTATE_BYTES_MAX {
            return Err(format!("{text:?} is too large a rotation size: at most 1TiB ({ROTATE_BYTES_MAX} bytes)"));
        }
        return Ok(Rotate::Size { bytes });
    }
    if unit.is_empty() {
        return Err(format!("{text:?} has no unit: add one, e.g. {n}s for a time or {n}MiB for a size"));
    }
    Err(neither())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(text: &str, expected: Result<Rotate, &str>) {
        let got = parse_rotate(text);
        match (&got, expected) {
            (Ok(r), Ok(want)) => assert_eq!(*r, want, "{text:?}"),
            (Err(e), Err(part)) => assert!(e.contains(part), "{text:?}: the error {e:?} does not say {part:?}"),
            _ => panic!("{text:?}: got {got:?}, wanted {expected:?}"),
        }
    }

    /// Proves every unit means its factor, and the bounds are inclusive.
    #[test]
    fn good_inputs() {
        let every = |seconds| Ok(Rotate::Every { seconds });
        let size = |bytes| Ok(Rotate::Size { bytes });
        let cases: &[(&str, Result<Rotate, &str>)] = &[
            ("30s", every(30)),
            ("15m", every(900)),
            ("1h", every(3_600)),
            ("6h", every(21_600)),
            ("1d", every(86_400)),
            ("1s", every(1)),
            ("7d", every(604_800)),
            ("168h", every(604_800)),
            ("604800s", every(604_800)),
            ("0090m", every(5_400)),
            ("512MiB", size(512 << 20)),
            ("1GiB", size(1 << 30)),
            ("64KiB", size(65_536)),
            ("10MB", size(10_000_000)),
            ("1000000B", size(1_000_000)),
            ("65536B", size(65_536)),
            ("66KB", size(66_000)),
            ("2GB", size(2_000_000_000)),
            ("1TiB", size(1 << 40)),
            ("1TB", size(1_000_000_000_000)),
            ("1099511627776B", size(1 << 40)),
        ];
        for (text, expected) in cases {
            check(text, *expected);
        }
    }

    /// Proves what is refused and that each refusal says why, with examples where the input
    /// was not understood at all.
    #[test]
    fn bad_inputs() {
        let cases: &[(&str, &str)] = &[
            ("1x", r#""1x" is neither a time (30s, 15m, 1h, 1d) nor a size (64KiB, 512MiB, 1GiB)"#),
            ("", "is neither a time"),
            ("h", "is neither a time"),
            ("-1h", "is neither a time"),
            ("+1h", "is neither a time"),
            (" 1h", "is neither a time"),
            ("1h ", "is neither a time"),
            ("1 h", "is neither a time"),
            ("1H", "is neither a time"),
            ("1mb", "is neither a time"),
            ("1Mb", "is neither a time"),
            ("1hour", "is neither a time"),
            ("1h30m", "is neither a time"),
            ("1.5h", "not a whole number"),
            ("0,5d", "not a whole number"),
            ("60", "has no unit: add one, e.g. 60s for a time or 60MiB"),
            ("0s", "too short a rotation period: at least 1s"),
            ("0d", "too short"),
            ("8d", "too long a rotation period: at most 7d (604800s)"),
            ("604801s", "too long"),
            ("169h", "too long"),
            ("1KiB", "too small a rotation size: at least 64KiB (65536 bytes"),
            ("65535B", "too small"),
            ("64KB", "too small"),
            ("0B", "too small"),
            ("1025GiB", "too large a rotation size: at most 1TiB"),
            ("2TB", "too large a rotation size"),
            ("99999999999999999999s", "too large a number"),
            ("18446744073709551615d", "too large a number"),
            ("18446744073709551615TiB", "too large a number"),
        ];
        for (text, part) in cases {
            check(text, Err(part));
        }
    }
}
