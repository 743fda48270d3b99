//! The levels of a `book` message: each entry's price and size as the exact number texts
//! CoinAPI wrote (borrowed, never converted), and the message's times as their raw JSON texts.
//!
//! Field order is not fixed, unknown fields are ignored, a missing side is empty. Called by the
//! worker only for `book` messages it keeps in a book, after `decode` validated the frame.
//!
//! Pure: no IO, no clock.

use serde::Deserialize;
use serde_json::value::RawValue;

/// The parts of a `book` message a book needs.
#[derive(Debug, Default)]
pub struct BookFields<'a> {
    pub bids: Vec<Level<'a>>,
    pub asks: Vec<Level<'a>>,
    /// Raw JSON texts (`"2026-…Z"` with its quotes), if present.
    pub time_exchange: Option<&'a str>,
    pub time_coinapi: Option<&'a str>,
}

/// One entry: number texts as written (checked to be numbers by the book, not here).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Level<'a> {
    pub price: &'a str,
    pub size: &'a str,
}

#[derive(Deserialize)]
struct RawLevel<'a> {
    #[serde(borrow)]
    price: &'a RawValue,
    #[serde(borrow)]
    size: &'a RawValue,
}

#[derive(Deserialize)]
struct RawBook<'a> {
    #[serde(borrow, default)]
    bids: Option<Vec<RawLevel<'a>>>,
    #[serde(borrow, default)]
    asks: Option<Vec<RawLevel<'a>>>,
    #[serde(borrow, default)]
    time_exchange: Option<&'a RawValue>,
    #[serde(borrow, default)]
    time_coinapi: Option<&'a RawValue>,
}

/// Reads the levels and times of a `book` message; `Err` says what is wrong (a side that is not
/// an array of `{price, size}` objects).
pub fn parse(frame: &str) -> Result<BookFields<'_>, String> {
    let raw: RawBook<'_> = serde_json::from_str(frame).map_err(|e| format!("book levels: {e}"))?;
    fn levels<'a>(v: Option<Vec<RawLevel<'a>>>) -> Vec<Level<'a>> {
        v.unwrap_or_default().into_iter().map(|l| Level { price: l.price.get(), size: l.size.get() }).collect()
    }
    Ok(BookFields {
        bids: levels(raw.bids),
        asks: levels(raw.asks),
        // Only strings are carried into a `book_top` line (any other value is treated as absent).
        time_exchange: raw.time_exchange.map(RawValue::get).filter(|t| t.starts_with('"')),
        time_coinapi: raw.time_coinapi.map(RawValue::get).filter(|t| t.starts_with('"')),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn levels_keep_their_exact_texts_in_any_field_order() {
        let f = parse(
            r#"{"asks":[{"size":0.20000000,"price":67069.80000}],"time_coinapi":"2026-01-01T00:00:00.0000001Z","bids":[{"price":67009.375950596670472379501527,"size":1e-8},{"price":"1","size":2}],"type":"book","symbol_id":"S","sequence":1,"is_snapshot":true}"#,
        )
        .expect("parse");
        assert_eq!(f.asks, vec![Level { price: "67069.80000", size: "0.20000000" }]);
        assert_eq!(f.bids[0], Level { price: "67009.375950596670472379501527", size: "1e-8" });
        // A string price is passed on as its text: the book refuses it as not a number.
        assert_eq!(f.bids[1].price, "\"1\"");
        assert_eq!(f.time_coinapi, Some("\"2026-01-01T00:00:00.0000001Z\""));
        assert_eq!(f.time_exchange, None);
    }

    #[test]
    fn a_missing_side_is_empty_and_a_bad_side_is_an_error() {
        let f = parse(r#"{"type":"book","bids":[{"price":1,"size":2}]}"#).expect("parse");
        assert!(f.asks.is_empty() && f.bids.len() == 1);
        assert!(parse(r#"{"bids":{"price":1}}"#).is_err());
        assert!(parse(r#"{"bids":[{"price":1}]}"#).is_err());
        assert!(parse(r#"{"bids":[1,2]}"#).is_err());
        let odd = parse("{\"time_coinapi\":[\n1],\"time_exchange\":null}").expect("parse");
        assert_eq!((odd.time_coinapi, odd.time_exchange), (None, None), "only strings are times");
    }
}
