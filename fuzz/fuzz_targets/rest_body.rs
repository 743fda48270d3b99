//! Differential target for the REST body parsers, every endpoint recovery calls: the first
//! byte picks the endpoint (trades history, trades latest, quotes current, ohlcv latest,
//! orderbooks current, an error answer), the rest is the body. `parse_records` must accept
//! exactly what serde_json reads as an array of objects or one object, and each record must be
//! the element's exact text; a history page's last time must be its last record's top-level
//! `time_exchange` (unescaped; none when it is given twice); an error body's message must be
//! serde_json's `error` (or `message`) string.

#![no_main]

use coinfeed::recovery::rest::{error_message, last_time_ns, parse_records};
use coinfeed::wire::parse_timestamp_ns;
use coinfeed_fuzz::{string, Entries};
use libfuzzer_sys::fuzz_target;
use serde_json::value::RawValue;
use serde_json::Value;

fuzz_target!(|data: &[u8]| {
    let Some((&endpoint, body)) = data.split_first() else { return };
    if endpoint % 6 == 5 {
        let want = serde_json::from_slice::<Value>(body).ok().and_then(|v| {
            let m = v.get("error").or_else(|| v.get("message"))?.as_str()?;
            Some(m.chars().take(200).collect::<String>())
        });
        assert_eq!(error_message(body), want, "{body:?}");
        return;
    }
    let got = parse_records(body);
    // serde_json's `Value` refuses a number beyond f64's range (`1e400`), valid JSON text that
    // the records keep as text: such a body is read as raw elements instead.
    let want: Option<Vec<Option<Value>>> = match serde_json::from_slice::<Value>(body) {
        Ok(Value::Array(items)) if items.iter().all(Value::is_object) => Some(items.into_iter().map(Some).collect()),
        Ok(one @ Value::Object(_)) => Some(vec![Some(one)]),
        Ok(_) => None,
        Err(_) => match serde_json::from_slice::<Vec<Box<RawValue>>>(body) {
            Ok(items) if items.iter().all(|i| i.get().starts_with('{')) => Some(vec![None; items.len()]),
            Ok(_) => None,
            Err(_) => serde_json::from_slice::<Box<RawValue>>(body)
                .ok()
                .filter(|one| one.get().starts_with('{'))
                .map(|_| vec![None]),
        },
    };
    match (&got, &want) {
        (Ok(records), Some(items)) => {
            assert_eq!(records.len(), items.len());
            for (r, item) in records.iter().zip(items) {
                // The exact text of the element: it parses back to the same value and holds no
                // whitespace at its ends (it is written out as it is).
                let text = r.get();
                if let Some(item) = item {
                    assert_eq!(&serde_json::from_str::<Value>(text).expect("record text"), item);
                }
                assert!(text.starts_with('{') && text.ends_with('}'), "{text:?}");
                assert!(body.windows(text.len()).any(|w| w == text.as_bytes()), "record text not in the body");
            }
        }
        (Err(_), None) => {}
        _ => panic!("{:?}: parse_records says {got:?}, serde_json says {want:?}", String::from_utf8_lossy(body)),
    }
    if endpoint % 6 == 0 {
        // History: the next page starts at the last record's exchange time.
        let Ok(records) = got else { return };
        let want = records.last().and_then(|r| {
            let entries = serde_json::from_str::<Entries>(r.get()).ok()?;
            // Given twice, it names no one time.
            let t = string(entries.once_raw("time_exchange").ok()??)?;
            parse_timestamp_ns(&t)
        });
        assert_eq!(last_time_ns(&records), want, "{:?}", records.last());
    }
});
