//! Gap detection for one stream: whether a sequenced message continues its (type, symbol_id)
//! stream. The per-symbol slots live in the worker's state table (`symbols.rs`), which also owns
//! the connection generation; this module decides one step.
//!
//! Pure: no IO, no clock.

use crate::wire::DataType;

/// Streams per symbol: one slot per data type.
pub const N_TYPES: usize = DataType::ALL.len();

/// Index of a data type in a per-symbol slot array. `DataType` is a field-less enum declared in
/// the same order as `DataType::ALL` (checked by a test), so the discriminant is the index.
pub fn slot(data_type: DataType) -> usize {
    data_type as usize
}

/// What one sequenced message means for its stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SeqOutcome {
    /// First message of this stream in this connection generation: nothing to compare with.
    First,
    /// Exactly the expected sequence.
    InOrder,
    /// Jumped forward: `missing` messages (`expected..received`) were lost.
    Gap { expected: u64, received: u64, missing: u64 },
    /// The same sequence as the last message.
    Duplicate { last: u64 },
    /// A step backwards. The stream is re-based at `received` (see `step`).
    Regression { last: u64, received: u64 },
    /// The message belongs to an older connection generation than the current one (a late frame
    /// of a dead connection): ignored, state untouched.
    Stale,
    /// The symbol is beyond the state table's bound: not tracked.
    Untracked,
}

/// Classifies `sequence` against the stream's last one and records it in `last`.
///
/// A step backwards re-bases the stream at the received sequence. Within one connection
/// messages arrive in order, so a regression means the server renumbered the stream; keeping
/// the old high mark would then hide every real gap until the new numbers caught up, which
/// loses data silently. If it was instead a single stray frame, re-basing costs one false gap
/// on the next message, i.e. one extra recovery request, which loses nothing.
pub fn step(last: &mut Option<u64>, sequence: u64) -> SeqOutcome {
    let Some(prev) = *last else {
        *last = Some(sequence);
        return SeqOutcome::First;
    };
    if sequence == prev {
        return SeqOutcome::Duplicate { last: prev };
    }
    *last = Some(sequence);
    if sequence < prev {
        return SeqOutcome::Regression { last: prev, received: sequence };
    }
    // sequence > prev, so prev < u64::MAX and the addition cannot overflow.
    let expected = prev + 1;
    if sequence == expected {
        SeqOutcome::InOrder
    } else {
        SeqOutcome::Gap { expected, received: sequence, missing: sequence - expected }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_follow_the_order_of_all() {
        // Proves the discriminant-as-index trick matches DataType::ALL, so no two types share a slot.
        for (i, t) in DataType::ALL.into_iter().enumerate() {
            assert_eq!(slot(t), i, "{}", t.as_str());
        }
    }

    #[test]
    fn sequences_are_classified() {
        // Proves each outcome of one stream, in a table: in order, gap with its missing count,
        // duplicate, regression (and the re-base after it), and the u64 extremes without overflow.
        let cases: &[(&[u64], SeqOutcome)] = &[
            (&[7], SeqOutcome::First),
            (&[7, 8], SeqOutcome::InOrder),
            (&[7, 8, 12], SeqOutcome::Gap { expected: 9, received: 12, missing: 3 }),
            (&[7, 9], SeqOutcome::Gap { expected: 8, received: 9, missing: 1 }),
            (&[7, 7], SeqOutcome::Duplicate { last: 7 }),
            (&[7, 8, 8], SeqOutcome::Duplicate { last: 8 }),
            (&[7, 8, 3], SeqOutcome::Regression { last: 8, received: 3 }),
            (&[7, 8, 3, 4], SeqOutcome::InOrder),
            (&[0, u64::MAX], SeqOutcome::Gap { expected: 1, received: u64::MAX, missing: u64::MAX - 1 }),
            (&[u64::MAX - 1, u64::MAX], SeqOutcome::InOrder),
            (&[u64::MAX, u64::MAX], SeqOutcome::Duplicate { last: u64::MAX }),
            (&[u64::MAX, 0], SeqOutcome::Regression { last: u64::MAX, received: 0 }),
        ];
        for (sequences, want) in cases {
            let mut last = None;
            let mut got = SeqOutcome::Untracked;
            for &s in *sequences {
                got = step(&mut last, s);
            }
            assert_eq!(got, *want, "{sequences:?}");
        }
    }
}
