//! Differential target for the exact decimal key (`worker/book/decimal.rs`): for up to three
//! number texts (the input split at newlines), `Price::parse` must accept exactly what the
//! slow digit-string reference (`coinfeed_fuzz::key_of`) can hold, refuse the rest for the same
//! reason, and order and equate every pair as their exact values; `sign` must agree with the
//! reference's sign on any JSON number, whatever its length.

#![no_main]

use coinfeed::worker::book::decimal::{sign, NumberError, Price, Sign};
use coinfeed_fuzz::{compare, decimal, key_of, parts, Decimal, Refusal};
use libfuzzer_sys::fuzz_target;

fn same_refusal(got: NumberError, want: Refusal) -> bool {
    matches!(
        (got, want),
        (NumberError::NotANumber, Refusal::NotANumber) | (NumberError::Unrepresentable, Refusal::Unrepresentable)
    )
}

fuzz_target!(|data: &[u8]| {
    let mut keys: Vec<(Price, Decimal, &str)> = Vec::new();
    for part in parts(data, b'\n', 3) {
        let Ok(text) = std::str::from_utf8(part) else { continue };
        let want_sign = decimal(text).map(|d| match d {
            Decimal::Zero => Sign::Zero,
            Decimal::NonZero { negative: true, .. } => Sign::Negative,
            Decimal::NonZero { negative: false, .. } => Sign::Positive,
        });
        match (sign(text), want_sign) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{text:?}"),
            (Err(NumberError::NotANumber), Err(Refusal::NotANumber)) => {}
            (got, want) => panic!("{text:?}: sign says {got:?}, the reference {want:?}"),
        }
        match (Price::parse(text), key_of(text)) {
            (Ok(key), Ok(value)) => keys.push((key, value, text)),
            (Err(got), Err(want)) if same_refusal(got, want) => {}
            (got, want) => panic!("{text:?}: Price::parse says {got:?}, the reference {want:?}"),
        }
    }
    for (ka, va, ta) in &keys {
        for (kb, vb, tb) in &keys {
            assert_eq!(ka.cmp(kb), compare(va, vb), "{ta:?} vs {tb:?}");
        }
    }
});
