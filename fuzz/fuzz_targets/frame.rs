//! Differential target for the frame scanner and decoder: `wire::decode` (the one-pass
//! validator in `wire/json_scan.rs`) must give serde_json's verdict and the same head fields on
//! any text; a disagreement is a crash. `classify` and `scan_field` (the reader's cheap look)
//! must not panic on any bytes, and must find `type` where a compact frame puts it first.

#![no_main]

use std::borrow::Cow;

use coinfeed::wire::{self, DataType, Decoded, Reject};
use libfuzzer_sys::fuzz_target;
use serde::Deserialize;

/// serde_json's reading of the head: the same fields, the same types, duplicates refused.
#[derive(Debug, Deserialize)]
struct Head<'a> {
    #[serde(rename = "type", borrow)]
    kind: Cow<'a, str>,
    #[serde(default, borrow, deserialize_with = "optional_cow")]
    symbol_id: Option<Cow<'a, str>>,
    #[serde(default)]
    sequence: Option<u64>,
    #[serde(default, borrow, deserialize_with = "optional_cow")]
    uuid: Option<Cow<'a, str>>,
    #[serde(default, borrow, deserialize_with = "optional_cow")]
    time_exchange: Option<Cow<'a, str>>,
    #[serde(default)]
    is_snapshot: Option<bool>,
}

fn optional_cow<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<Cow<'de, str>>, D::Error> {
    Option::<Cow<'de, str>>::deserialize(d)
}

/// The reference: serde_json for JSON validity (an object, not a sequence), then the rules of
/// the protocol notes: a known type; a sequenced type needs a non-empty symbol_id and a
/// sequence; a trade needs a uuid.
fn reference(frame: &str) -> Result<Decoded<'_>, Reject> {
    let malformed = |m: &str| Err(Reject::Malformed(m.to_string()));
    if !frame.trim_start_matches([' ', '\t', '\n', '\r']).starts_with('{') {
        return malformed("not a JSON object");
    }
    let Ok(h) = serde_json::from_str::<Head<'_>>(frame) else { return malformed("serde_json refuses it") };
    let Some(data_type) = DataType::parse(&h.kind) else { return Err(Reject::UnknownType(h.kind.into_owned())) };
    if data_type.is_sequenced() && (h.symbol_id.as_deref().is_none_or(str::is_empty) || h.sequence.is_none()) {
        return malformed("sequenced type without symbol_id or sequence");
    }
    if data_type == DataType::Trade && h.uuid.is_none() {
        return malformed("trade without uuid");
    }
    Ok(Decoded {
        data_type,
        symbol_id: h.symbol_id,
        sequence: h.sequence,
        uuid: h.uuid,
        time_exchange: h.time_exchange,
        is_snapshot: h.is_snapshot,
    })
}

fuzz_target!(|data: &[u8]| {
    let kind = wire::classify(data);
    for key in [&b"type"[..], b"symbol_id", b"uuid"] {
        if let Some(v) = wire::scan_field(data, key) {
            // The value is a slice of the frame, never beyond it.
            assert!(v.len() <= data.len());
        }
    }
    let Ok(frame) = std::str::from_utf8(data) else { return };
    let (got, want) = (wire::decode(frame), reference(frame));
    match (&got, &want) {
        (Ok(a), Ok(b)) => assert_eq!(a, b, "{frame:?}"),
        (Err(Reject::Malformed(_)), Err(Reject::Malformed(_))) => {}
        (Err(Reject::UnknownType(a)), Err(Reject::UnknownType(b))) => assert_eq!(a, b, "{frame:?}"),
        _ => panic!("{frame:?}: decode says {got:?}, serde_json says {want:?}"),
    }
    // A valid frame that opens with a plain `"type":"…"` is classified by that type.
    if let (Ok(_), Some(rest)) = (&got, frame.strip_prefix("{\"type\":\"")) {
        if let Some(t) = rest.split('"').next().filter(|t| !t.contains('\\')) {
            let expected = match t {
                "hearbeat" | "heartbeat" => wire::FrameKind::Heartbeat,
                "error" => wire::FrameKind::Error,
                "reconnect" => wire::FrameKind::Reconnect,
                _ => wire::FrameKind::Data,
            };
            assert_eq!(kind, expected, "{frame:?}");
        }
    }
});
