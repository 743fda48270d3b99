//! The wall clock, read in one place. Times in the pipeline are nanoseconds since the Unix epoch
//! (`i128`, the unit of `Frame::recv_unix_ns` and of every timestamp written). Only thread shells
//! read it (the reader stamps frames, the recovery thread stamps answers, idle workers tick);
//! pure modules take time as an argument, so a replay of recorded frames can be deterministic.

use std::time::{SystemTime, UNIX_EPOCH};

/// Wall-clock now in nanoseconds since the Unix epoch (0 if the clock is before 1970).
pub fn unix_now_ns() -> i128 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as i128).unwrap_or(0)
}

/// Whole seconds since the Unix epoch of a nanosecond time.
pub fn unix_seconds(unix_ns: i128) -> u64 {
    u64::try_from(unix_ns.div_euclid(1_000_000_000)).unwrap_or(0)
}
