//! A symbol's trade gaps waiting for REST recovery: one time window per gap, and the trade ids
//! the stream delivered inside it.
//!
//! Trades are events, not state: what a gap lost comes back only from CoinAPI's trade history
//! over the gap's own time window, from the last trade written before it to the first one after
//! it, widened by `MARGIN_NS` on both sides (exchange times arrive slightly out of order, and
//! `time_coinapi` can precede `time_exchange`). The margins overlap what the stream delivered, so
//! every id the stream wrote inside the window is *pinned* in the window, from the symbol's recent
//! ids when the window opens and from the stream while it waits, and a recovered record whose id
//! is pinned is a duplicate. The pins live as long as the window, however long recovery takes,
//! so no overlap can be written twice because the symbol's recent-id memory moved on.
//!
//! A reconnect opens a window with no end: it closes at the first trade of the new connection
//! (or, for a symbol that trades no more, `OPEN_WINDOW_MAX_NS` after it opened).
//!
//! A closed window waits `SETTLE_NS` (receive time) before it is due for its request: the
//! stream's trades inside its trailing margin arrive and are pinned meanwhile, CoinAPI's history
//! has caught up with its end, and a further gap that overlaps it (a storm of gaps) is merged into
//! it rather than costing requests of its own.
//!
//! Bounds: `WINDOWS_PER_SYMBOL_MAX` windows per symbol, `PINS_PER_WINDOW_MAX` pins per window,
//! and a pin allowance per worker the caller passes in (`room`); a pin refused is counted.
//!
//! Pure: no IO, no clock; times come in as arguments.

use rustc_hash::FxHashSet;

/// Widening of a window on each side: far above the ~50 ms by which exchange and CoinAPI times
/// were seen to disagree, and small enough that the overlap stays a few trades per side.
pub const MARGIN_NS: i64 = 1_000_000_000;
/// A reconnect window still open this long after it opened is closed at that time.
pub const OPEN_WINDOW_MAX_NS: i128 = 10_000_000_000;
/// How long a closed window waits (receive time) before its request is due.
pub const SETTLE_NS: i128 = 1_000_000_000;
/// Gaps that keep merging into a window postpone its request at most this long after it was
/// first due, so a sustained storm still gets recovered in pieces.
pub const POSTPONE_MAX_NS: i128 = 10_000_000_000;
/// Gaps of one symbol waiting for recovery at once (overlapping gaps share one); a further gap
/// is reported as unrecovered.
pub const WINDOWS_PER_SYMBOL_MAX: usize = 16;
/// Stream ids pinned per window: a second of margin on each side of a very busy symbol.
pub const PINS_PER_WINDOW_MAX: usize = 20_000;

/// A window ready for its REST request: `[start_ns, end_ns)` in exchange time.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Closed {
    pub id: u64,
    pub start_ns: i64,
    pub end_ns: i64,
}

/// One gap of one symbol's trades.
#[derive(Debug)]
pub struct Window {
    pub id: u64,
    pub start_ns: i64,
    /// `None` while a reconnect window waits for the new connection's first trade.
    pub end_ns: Option<i64>,
    /// The connection generation whose first trade closes an open window.
    pub generation: u64,
    /// Receive time at which the window opened; then, once it has an end, when it is due (and
    /// when it was first due, which bounds how long merges can postpone it).
    pub opened_at_ns: i128,
    due_at_ns: Option<i128>,
    first_due_at_ns: Option<i128>,
    /// Its request has been asked for: it no longer grows.
    pub requested: bool,
    /// Trades lost by sequence numbers, when known (not across a reconnect).
    pub missing: Option<u64>,
    pinned: FxHashSet<u128>,
    /// REST pages answered, records they held, records written, records skipped as duplicates.
    pub pages: u32,
    pub records: u64,
    pub recovered: u64,
    pub duplicates: u64,
}

impl Window {
    fn contains(&self, time_ns: i64) -> bool {
        time_ns >= self.start_ns && self.end_ns.is_none_or(|end| time_ns < end)
    }

    /// Remembers `key` as delivered inside the window, if there is room; false if refused.
    pub fn pin(&mut self, key: u128, room: &mut usize) -> bool {
        if self.pinned.contains(&key) {
            return true;
        }
        if self.pinned.len() >= PINS_PER_WINDOW_MAX || *room == 0 {
            return false;
        }
        *room -= 1;
        self.pinned.insert(key);
        true
    }

    pub fn is_pinned(&self, key: u128) -> bool {
        self.pinned.contains(&key)
    }

    /// Ids pinned (what the window gives back to the worker's allowance when it goes).
    pub fn pins(&self) -> usize {
        self.pinned.len()
    }
}

/// Every trade gap of one symbol waiting for recovery. Empty (and unallocated) for almost every
/// symbol almost always.
#[derive(Debug, Default)]
pub struct TradeGaps {
    windows: Vec<Window>,
}

/// Why a window could not be opened.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct TooManyGaps;

impl TradeGaps {
    pub fn is_empty(&self) -> bool {
        self.windows.is_empty()
    }

    /// Opens a window over `[start_ns, end_ns)` (`end_ns` `None`: until the first trade of
    /// connection `generation`), pinning `delivered` (the symbol's recent ids with their trade
    /// times) that fall inside it; `new_id` names it. A gap that overlaps the newest window
    /// still waiting to be requested is merged into it instead. Returns the window's id and the
    /// pins refused.
    #[allow(clippy::too_many_arguments)]
    pub fn open(
        &mut self,
        new_id: u64,
        start_ns: i64,
        end_ns: Option<i64>,
        generation: u64,
        opened_at_ns: i128,
        missing: Option<u64>,
        delivered: impl Iterator<Item = (u128, i64)>,
        room: &mut usize,
    ) -> Result<(u64, u64), TooManyGaps> {
        let mergeable = self.windows.last_mut().filter(|w| {
            !w.requested
                && end_ns.is_some()
                && w.end_ns.is_some_and(|e| start_ns <= e)
                && w.start_ns <= end_ns.unwrap_or(i64::MAX)
        });
        let w = match mergeable {
            Some(w) => {
                w.start_ns = w.start_ns.min(start_ns);
                w.end_ns = w.end_ns.max(end_ns);
                w.missing = match (w.missing, missing) {
                    (Some(a), Some(b)) => Some(a.saturating_add(b)),
                    _ => None,
                };
                let first = w.first_due_at_ns.unwrap_or(opened_at_ns + SETTLE_NS);
                w.due_at_ns = Some((opened_at_ns + SETTLE_NS).min(first + POSTPONE_MAX_NS));
                w
            }
            None => {
                if self.windows.len() >= WINDOWS_PER_SYMBOL_MAX {
                    return Err(TooManyGaps);
                }
                self.windows.push(Window {
                    id: new_id,
                    start_ns,
                    end_ns,
                    generation,
                    opened_at_ns,
                    due_at_ns: end_ns.map(|_| opened_at_ns + SETTLE_NS),
                    first_due_at_ns: end_ns.map(|_| opened_at_ns + SETTLE_NS),
                    requested: false,
                    missing,
                    pinned: FxHashSet::default(),
                    pages: 0,
                    records: 0,
                    recovered: 0,
                    duplicates: 0,
                });
                self.windows.last_mut().expect("just pushed")
            }
        };
        let mut refused = 0;
        for (key, time) in delivered {
            if w.contains(time) && !w.pin(key, room) {
                refused += 1;
            }
        }
        Ok((w.id, refused))
    }

    /// A trade the stream delivered on connection `generation` at `time_ns` (id `key`, when it
    /// has one), received at `now_ns`: pinned in every window it falls in; it closes the open
    /// windows waiting for that connection (due `SETTLE_NS` later). Counts refused pins.
    pub fn stream_trade(
        &mut self,
        key: Option<u128>,
        time_ns: i64,
        generation: u64,
        now_ns: i128,
        room: &mut usize,
        refused: &mut u64,
    ) {
        for w in &mut self.windows {
            if w.end_ns.is_none() && generation >= w.generation {
                w.end_ns = Some(time_ns.saturating_add(MARGIN_NS).max(w.start_ns.saturating_add(1)));
                w.due_at_ns = Some(now_ns + SETTLE_NS);
                w.first_due_at_ns = w.due_at_ns;
            }
            if let Some(key) = key {
                if w.contains(time_ns) && !w.pin(key, room) {
                    *refused += 1;
                }
            }
        }
    }

    /// The windows due for their request at `now_ns` (marked requested): closed ones that have
    /// settled, and open ones that waited `OPEN_WINDOW_MAX_NS` for a trade (closed at `now_ns`:
    /// the symbol traded no more on the new connection).
    pub fn due(&mut self, now_ns: i128) -> Vec<Closed> {
        let mut due = Vec::new();
        for w in &mut self.windows {
            if w.requested {
                continue;
            }
            if w.end_ns.is_none() && now_ns - w.opened_at_ns >= OPEN_WINDOW_MAX_NS {
                let now = now_ns.clamp(i128::from(i64::MIN), i128::from(i64::MAX)) as i64;
                w.end_ns = Some(now.max(w.start_ns.saturating_add(1)));
                w.due_at_ns = Some(now_ns);
            }
            if let (Some(end), Some(at)) = (w.end_ns, w.due_at_ns) {
                if now_ns >= at {
                    w.requested = true;
                    due.push(Closed { id: w.id, start_ns: w.start_ns, end_ns: end });
                }
            }
        }
        due
    }

    /// Whether any window waits for its request.
    pub fn has_unrequested(&self) -> bool {
        self.windows.iter().any(|w| !w.requested)
    }

    pub fn get_mut(&mut self, id: u64) -> Option<&mut Window> {
        self.windows.iter_mut().find(|w| w.id == id)
    }

    /// Every window, emptying the set (the run is ending).
    pub fn drain(&mut self) -> Vec<Window> {
        std::mem::take(&mut self.windows)
    }

    pub fn remove(&mut self, id: u64) -> Option<Window> {
        let i = self.windows.iter().position(|w| w.id == id)?;
        // `remove`, not `swap_remove`: the newest window stays last, where a merge looks for it.
        let w = self.windows.remove(i);
        if self.windows.is_empty() {
            self.windows = Vec::new();
        }
        Some(w)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const S: i64 = 1_000_000_000;
    const SI: i128 = S as i128;

    /// Proves a sequence gap's window pins what the stream delivered inside it, before (from the
    /// recent ids) and after (from the stream), and nothing outside it; and that it is due only
    /// once it has settled.
    #[test]
    fn a_window_pins_the_stream_ids_inside_it_and_settles_before_its_request() {
        let mut gaps = TradeGaps::default();
        let mut room = 100;
        let delivered = [(1u128, 5 * S), (2, 9 * S), (3, 10 * S)];
        assert_eq!(gaps.open(7, 9 * S, Some(21 * S), 1, 0, Some(40), delivered.into_iter(), &mut room), Ok((7, 0)));
        let mut refused = 0;
        gaps.stream_trade(Some(4), 20 * S, 1, 10, &mut room, &mut refused);
        gaps.stream_trade(Some(5), 21 * S, 1, 10, &mut room, &mut refused);
        assert!(gaps.due(SETTLE_NS - 1).is_empty(), "not settled");
        assert_eq!(gaps.due(SETTLE_NS), vec![Closed { id: 7, start_ns: 9 * S, end_ns: 21 * S }]);
        assert!(gaps.due(10 * SETTLE_NS).is_empty(), "asked for once");
        let w = gaps.get_mut(7).expect("open");
        assert!(
            !w.is_pinned(1) && w.is_pinned(2) && w.is_pinned(3) && w.is_pinned(4) && !w.is_pinned(5),
            "end is exclusive"
        );
        assert_eq!((room, refused), (97, 0));
        assert_eq!(gaps.remove(7).map(|w| w.missing), Some(Some(40)));
        assert!(gaps.is_empty());
    }

    /// Proves overlapping gaps share one window (a storm costs one request), and a gap after
    /// the window was requested opens a new one.
    #[test]
    fn overlapping_gaps_merge_until_the_window_is_requested() {
        let mut gaps = TradeGaps::default();
        let mut room = 100;
        let none = std::iter::empty;
        assert_eq!(gaps.open(1, 10 * S, Some(12 * S), 1, 0, Some(3), none(), &mut room), Ok((1, 0)));
        assert_eq!(gaps.open(2, 11 * S, Some(13 * S), 1, SI / 2, Some(2), none(), &mut room), Ok((1, 0)));
        assert!(gaps.due(SETTLE_NS).is_empty(), "the merge restarted the settling");
        assert_eq!(gaps.due(SI / 2 + SETTLE_NS), vec![Closed { id: 1, start_ns: 10 * S, end_ns: 13 * S }]);
        assert_eq!(gaps.get_mut(1).and_then(|w| w.missing), Some(5));
        assert_eq!(gaps.open(3, 12 * S, Some(14 * S), 1, 2 * SI, Some(1), none(), &mut room), Ok((3, 0)));
    }

    /// Proves a storm that keeps merging into a window cannot postpone its request for more than
    /// `POSTPONE_MAX_NS`.
    #[test]
    fn a_sustained_storm_postpones_a_window_only_so_long() {
        let mut gaps = TradeGaps::default();
        let mut room = 100;
        let mut at = 0;
        while at < 2 * POSTPONE_MAX_NS {
            let t = (at / 1_000) as i64;
            gaps.open(1, t, Some(t + 2 * S), 1, at, Some(1), std::iter::empty(), &mut room).expect("room");
            if !gaps.due(at).is_empty() {
                break;
            }
            at += SI / 10;
        }
        assert!(at <= SETTLE_NS + POSTPONE_MAX_NS, "requested only after {at} ns of storm");
    }

    /// Proves a reconnect window closes at the first trade of the new connection (plus the
    /// margin), not at a late trade of the old one, or after `OPEN_WINDOW_MAX_NS` without one.
    #[test]
    fn a_reconnect_window_closes_at_the_new_connections_first_trade() {
        let mut gaps = TradeGaps::default();
        let mut room = 100;
        let mut refused = 0;
        gaps.open(1, 4 * S, None, 2, 0, None, std::iter::empty(), &mut room).expect("room");
        gaps.stream_trade(Some(9), 5 * S, 1, 0, &mut room, &mut refused);
        assert!(gaps.due(5 * SI).is_empty(), "a trade of the old connection does not close it");
        gaps.stream_trade(Some(10), 8 * S, 2, 6 * SI, &mut room, &mut refused);
        assert_eq!(gaps.due(6 * SI + SETTLE_NS), vec![Closed { id: 1, start_ns: 4 * S, end_ns: 9 * S }]);
        let w = gaps.get_mut(1).expect("still waiting for its answer");
        assert!(w.is_pinned(9) && w.is_pinned(10));

        gaps.open(2, 4 * S, None, 3, 1_000, None, std::iter::empty(), &mut room).expect("room");
        assert!(gaps.due(1_000 + OPEN_WINDOW_MAX_NS - 1).is_empty());
        assert_eq!(gaps.due(20 * SI), vec![Closed { id: 2, start_ns: 4 * S, end_ns: 20 * S }]);
    }

    /// Proves every bound: windows per symbol, pins per worker (counted when refused).
    #[test]
    fn windows_and_pins_are_bounded() {
        let mut gaps = TradeGaps::default();
        let mut room = 2;
        for id in 0..WINDOWS_PER_SYMBOL_MAX as u64 {
            // Disjoint windows, each requested, so none merges.
            let start = id as i64 * 10 * S;
            gaps.open(id, start, Some(start + S), 1, 0, None, std::iter::empty(), &mut room).expect("room");
            gaps.due(SETTLE_NS);
        }
        assert_eq!(gaps.open(99, 0, Some(S), 1, 0, None, std::iter::empty(), &mut room), Err(TooManyGaps));
        let mut refused = 0;
        gaps.stream_trade(Some(1), 10, 1, 0, &mut room, &mut refused);
        assert_eq!((room, refused), (1, 0), "one window holds time 10");
        gaps.stream_trade(Some(2), 10 * S + 1, 1, 0, &mut room, &mut refused);
        gaps.stream_trade(Some(3), 20 * S + 1, 1, 0, &mut room, &mut refused);
        assert_eq!((room, refused), (0, 1));
    }
}
