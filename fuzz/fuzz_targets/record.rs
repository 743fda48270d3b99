//! Target for the recording reader (`ingest/record.rs`): any bytes, read as a recording file the
//! way replay reads one (the header, then record after record until the clean end or the
//! damage). Each record read must encode back to exactly the bytes it was read from, every step
//! must move forward, and a damage must name the offset where reading stopped.

#![no_main]

use coinfeed::ingest::record::{self, HEADER_BYTES, MAGIC};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    // An input that does not open with the magic would only test that check: it is read as the
    // records after a valid header.
    let with_header;
    let bytes = if data.starts_with(MAGIC) {
        data
    } else {
        with_header = [&record::header()[..], data].concat();
        &with_header[..]
    };
    if record::check_header(bytes).is_err() {
        return;
    }
    let mut at = HEADER_BYTES;
    let mut reencoded = Vec::new();
    loop {
        match record::decode(bytes, at) {
            Ok(None) => {
                assert_eq!(at, bytes.len());
                break;
            }
            Ok(Some((rec, next))) => {
                assert!(next > at && next <= bytes.len(), "{at} -> {next}");
                reencoded.clear();
                record::encode(&rec, &mut reencoded);
                assert_eq!(&reencoded[..], &bytes[at..next], "record at {at} does not encode back: {rec:?}");
                at = next;
            }
            Err(damage) => {
                assert_eq!(damage.offset, at as u64);
                assert!(!damage.to_string().is_empty());
                break;
            }
        }
    }
});
