//! Exact level-2 order books, one per `book` symbol, kept by the worker that owns the symbol.
//!
//! Each side maps the exact decimal value of a price (`decimal::Price`, never f64) to the level's
//! original number texts, so a top-N view is byte-identical to what CoinAPI sent: `67069.80000`
//! and `67069.8` are one level, and the latest text wins. A snapshot replaces the book (built
//! aside, then swapped in: never merged); a delta sets each listed level's absolute size, and
//! size 0 removes it. A whole message is validated before any of it is applied: a negative size,
//! a snapshot level with a size ≤ 0 or a number that is not one (or not exactly representable)
//! rejects it, and the caller resyncs the book. Crossed or locked books are checked after whole
//! messages only (a message's intermediate states may cross).
//!
//! `BookState` adds what the worker needs around a book: whether it is whole (synced), the
//! resync it waits for, how long it has been crossed, and the last top-N view it wrote, so a
//! `book_top` line is written only when the view changed (or after a snapshot).
//!
//! Pure: no IO, no clock; times come in as arguments.

use std::collections::BTreeMap;

pub mod decimal;

use decimal::{NumberError, Price, Sign};

pub use crate::output::ndjson::ResyncReason;

/// One entry of a book message, as written: price and size number texts.
pub use crate::wire::book::Level as Entry;

/// One level's original texts, price then size, in one allocation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Level {
    text: Box<str>,
    price_len: u32,
}

impl Level {
    fn new(price: &str, size: &str) -> Level {
        let mut s = String::with_capacity(price.len() + size.len());
        s.push_str(price);
        s.push_str(size);
        Level { text: s.into_boxed_str(), price_len: price.len() as u32 }
    }

    pub fn price(&self) -> &str {
        &self.text[..self.price_len as usize]
    }

    pub fn size(&self) -> &str {
        &self.text[self.price_len as usize..]
    }
}

/// One side of a book. Bids are best when highest, asks when lowest.
#[derive(Debug, Default, Clone)]
pub struct Side {
    levels: BTreeMap<Price, Level>,
    /// Levels were trimmed since the last snapshot: the side may miss levels beyond its bound.
    trimmed: bool,
}

impl Side {
    pub fn len(&self) -> usize {
        self.levels.len()
    }

    pub fn is_empty(&self) -> bool {
        self.levels.is_empty()
    }

    /// Levels best first.
    pub fn best_first(&self, bids: bool) -> Box<dyn Iterator<Item = (&Price, &Level)> + '_> {
        if bids {
            Box::new(self.levels.iter().rev())
        } else {
            Box::new(self.levels.iter())
        }
    }

    /// The `depth`-th best price (1-based), `None` if the side holds fewer levels.
    fn nth_best(&self, depth: usize, bids: bool) -> Option<Price> {
        let n = depth.checked_sub(1)?;
        if bids {
            self.levels.keys().nth_back(n).copied()
        } else {
            self.levels.keys().nth(n).copied()
        }
    }

    fn best(&self, bids: bool) -> Option<&Price> {
        if bids {
            self.levels.keys().next_back()
        } else {
            self.levels.keys().next()
        }
    }

    /// Removes the worst levels beyond `max`; returns how many.
    fn trim(&mut self, max: usize, bids: bool) -> u64 {
        let mut n = 0;
        self.trimmed |= self.levels.len() > max;
        while self.levels.len() > max {
            if bids {
                self.levels.pop_first();
            } else {
                self.levels.pop_last();
            }
            n += 1;
        }
        n
    }
}

/// Why a whole book message was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rejection {
    /// A price that is not a number or cannot be held exactly.
    Price(NumberError),
    /// A size that is not a number.
    Size(NumberError),
    NegativeSize,
    /// A snapshot level with size 0 or less.
    SnapshotSizeNotPositive,
}

impl Rejection {
    pub fn as_str(self) -> &'static str {
        match self {
            Rejection::Price(NumberError::NotANumber) => "a price is not a number",
            Rejection::Price(NumberError::Unrepresentable) => "a price has more digits than an exact key holds",
            Rejection::Size(NumberError::NotANumber) => "a size is not a number",
            Rejection::Size(NumberError::Unrepresentable) => "a size is longer than a level keeps (64 characters)",
            Rejection::NegativeSize => "a negative size",
            Rejection::SnapshotSizeNotPositive => "a snapshot level with size <= 0",
        }
    }
}

/// An exact L2 book.
#[derive(Debug, Default, Clone)]
pub struct L2Book {
    pub bids: Side,
    pub asks: Side,
}

/// What applying one message did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// Worst levels removed to keep a side within its bound.
    pub trimmed: u64,
    /// The message touched a level within the top `depth` of its side (always true for a
    /// snapshot): the top-N view may have changed. A change strictly worse than the side's
    /// N-th best level before the message cannot change the top N, whatever else it does.
    pub touched_top: bool,
}

/// Longest price or size text a level keeps (CoinAPI's longest are about 31 characters): a
/// longer one is refused, so a level's memory stays bounded.
pub const NUMBER_TEXT_MAX: usize = 64;

fn parse_entries<'a>(
    entries: &[Entry<'a>],
    snapshot: bool,
    out: &mut Vec<(Price, Sign, Entry<'a>)>,
) -> Result<(), Rejection> {
    for e in entries {
        if e.price.len() > NUMBER_TEXT_MAX {
            return Err(Rejection::Price(NumberError::Unrepresentable));
        }
        if e.size.len() > NUMBER_TEXT_MAX {
            return Err(Rejection::Size(NumberError::Unrepresentable));
        }
        let price = Price::parse(e.price).map_err(Rejection::Price)?;
        let sign = decimal::sign(e.size).map_err(Rejection::Size)?;
        match sign {
            Sign::Negative => return Err(Rejection::NegativeSize),
            Sign::Zero if snapshot => return Err(Rejection::SnapshotSizeNotPositive),
            _ => {}
        }
        out.push((price, sign, *e));
    }
    Ok(())
}

impl L2Book {
    /// Replaces the book with a snapshot, or applies a delta, keeping at most `max_levels` per
    /// side; says whether the top `depth` levels may have changed. The message is checked whole
    /// first: on `Err` the book is unchanged.
    pub fn apply(
        &mut self,
        snapshot: bool,
        bids: &[Entry<'_>],
        asks: &[Entry<'_>],
        depth: usize,
        max_levels: usize,
    ) -> Result<Applied, Rejection> {
        let mut parsed_bids = Vec::with_capacity(bids.len());
        let mut parsed_asks = Vec::with_capacity(asks.len());
        parse_entries(bids, snapshot, &mut parsed_bids)?;
        parse_entries(asks, snapshot, &mut parsed_asks)?;
        if snapshot {
            // Trimmed while it is built (a snapshot only adds), so a huge one never holds more
            // than the bound.
            let mut fresh = L2Book::default();
            let mut trimmed = 0;
            for (side, parsed, is_bids) in [(&mut fresh.bids, parsed_bids, true), (&mut fresh.asks, parsed_asks, false)]
            {
                for (price, _, e) in parsed {
                    side.levels.insert(price, Level::new(e.price, e.size));
                    trimmed += side.trim(max_levels, is_bids);
                }
            }
            *self = fresh;
            return Ok(Applied { trimmed, touched_top: true });
        }
        // A delta is trimmed once it is whole: a level it adds may be kept by a removal later in
        // the same message.
        let mut touched_top = false;
        for (side, parsed, is_bids) in [(&mut self.bids, parsed_bids, true), (&mut self.asks, parsed_asks, false)] {
            if !touched_top && !parsed.is_empty() {
                touched_top = match side.nth_best(depth, is_bids) {
                    None => true,
                    Some(nth) => parsed.iter().any(|(p, _, _)| if is_bids { *p >= nth } else { *p <= nth }),
                };
            }
            for (price, sign, e) in parsed {
                if sign == Sign::Zero {
                    side.levels.remove(&price);
                } else {
                    side.levels.insert(price, Level::new(e.price, e.size));
                }
            }
        }
        let trimmed = self.bids.trim(max_levels, true) + self.asks.trim(max_levels, false);
        Ok(Applied { trimmed, touched_top })
    }

    /// Best bid ≥ best ask (crossed, or locked when equal).
    pub fn is_crossed(&self) -> bool {
        match (self.bids.best(true), self.asks.best(false)) {
            (Some(b), Some(a)) => b >= a,
            _ => false,
        }
    }

    /// Appends `"bids":[{"price":…,"size":…},…],"asks":[…]` with at most `depth` levels per side,
    /// best first, numbers as CoinAPI wrote them.
    pub fn render_top(&self, depth: usize, out: &mut Vec<u8>) {
        for (name, side, bids) in [(&b"\"bids\":["[..], &self.bids, true), (&b",\"asks\":["[..], &self.asks, false)] {
            out.extend_from_slice(name);
            for (i, (_, level)) in side.best_first(bids).take(depth).enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.extend_from_slice(b"{\"price\":");
                out.extend_from_slice(level.price().as_bytes());
                out.extend_from_slice(b",\"size\":");
                out.extend_from_slice(level.size().as_bytes());
                out.push(b'}');
            }
            out.push(b']');
        }
    }

    /// Levels on both sides.
    pub fn levels(&self) -> usize {
        self.bids.len() + self.asks.len()
    }
}

/// A book crossed for longer than this (after whole messages) is resynced.
pub const CROSS_RESYNC_NS: i128 = 3_000_000_000;
/// How long the first resubscription waits for its snapshot before asking again; doubled each
/// time, up to `RESYNC_WAIT_MAX_NS`.
pub const RESYNC_WAIT_NS: i128 = 10_000_000_000;
pub const RESYNC_WAIT_MAX_NS: i128 = 80_000_000_000;
/// Resubscriptions per resync before giving up (a snapshot CoinAPI sends by itself still heals
/// the book).
pub const RESYNC_ATTEMPTS_MAX: u32 = 4;

/// A resync in progress.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Resync {
    pub reason: ResyncReason,
    pub since_ns: i128,
    /// Resubscriptions asked for so far: 0 while none is needed yet (a new connection's own
    /// subscription brings the snapshot), or while one waits for its backoff.
    pub attempts: u32,
    /// When to ask (again) if no snapshot came; `None` once given up.
    pub retry_at_ns: Option<i128>,
    /// Waiting for the stream's first snapshot (its arrival gets no `book_synced` line).
    pub first: bool,
}

/// A book whole for this long ends a streak of resyncs: the next one is asked for at once.
pub const HEALTHY_NS: i128 = 60_000_000_000;

/// When a resync asks for its resubscription.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ask {
    /// At once (attempt 1).
    Now,
    /// After a backoff: the book was resynced recently and did not stay whole.
    Later,
}

/// The message that produced a book's current state: what its `book_top` line carries.
#[derive(Debug, Default, Clone)]
pub struct Produced {
    pub sequence: u64,
    /// Raw JSON texts (quoted strings as sent), or `null`.
    pub time_exchange: String,
    pub time_coinapi: String,
    pub recv_unix_ns: i128,
}

/// A `book` symbol's book and what the worker tracks around it.
#[derive(Debug, Default)]
pub struct BookState {
    pub book: L2Book,
    /// A snapshot was applied and nothing since made the book doubtful.
    pub synced: bool,
    pub resync: Option<Resync>,
    /// Since when the book has been crossed after whole messages.
    pub crossed_since: Option<i128>,
    /// The levels segment of the last `book_top` line written.
    last_top: Vec<u8>,
    /// Scratch for the segment of the current state.
    top: Vec<u8>,
    /// The next line is written even if the view did not change (after a snapshot).
    force: bool,
    /// A changed view waits for the end of its interval.
    pub pending: bool,
    /// The book has its (one) entry in the worker's `tops_due`.
    pub queued: bool,
    pub last_line_ns: Option<i128>,
    pub produced: Produced,
    /// Since when the book has been whole, if it is.
    pub synced_since_ns: Option<i128>,
    /// Resyncs in a row without `HEALTHY_NS` of being whole between them.
    pub streak: u32,
}

/// What one message did to a `BookState`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// Applied: the view changed (or a snapshot came) and may be written.
    Changed,
    /// Applied, nothing in the top N changed.
    Unchanged,
    /// A delta before any snapshot: discarded.
    BeforeSnapshot,
    Rejected(Rejection),
}

impl BookState {
    /// Applies one message (of a stream not withheld) and renders the top `depth` into the
    /// scratch view. `Changed` says whether it differs from the last line written.
    #[allow(clippy::too_many_arguments)]
    pub fn apply(
        &mut self,
        snapshot: bool,
        bids: &[Entry<'_>],
        asks: &[Entry<'_>],
        depth: usize,
        max_levels: usize,
        trimmed: &mut u64,
    ) -> Step {
        if !snapshot && !self.synced {
            return Step::BeforeSnapshot;
        }
        let touched = match self.book.apply(snapshot, bids, asks, depth, max_levels) {
            Ok(applied) => {
                *trimmed += applied.trimmed;
                applied.touched_top
            }
            Err(r) => return Step::Rejected(r),
        };
        if snapshot {
            self.synced = true;
            self.resync = None;
            self.force = true;
        }
        if !touched && !self.force {
            // The view is what the last line showed (or what a pending line will show).
            return Step::Unchanged;
        }
        self.top.clear();
        self.book.render_top(depth, &mut self.top);
        if self.view_changed() {
            Step::Changed
        } else {
            Step::Unchanged
        }
    }

    /// Whether a trimmed side has fewer levels than the output shows: levels may be missing
    /// from the view.
    pub fn trimmed_below(&self, depth: usize) -> bool {
        [&self.book.bids, &self.book.asks].iter().any(|side| side.trimmed && side.len() < depth)
    }

    /// A new book: it waits for its stream's first snapshot (asked for if it does not come).
    pub fn waiting_for_first_snapshot(now_ns: i128) -> BookState {
        let resync = Resync {
            reason: ResyncReason::NoSnapshot,
            since_ns: now_ns,
            attempts: 0,
            retry_at_ns: Some(now_ns + RESYNC_WAIT_NS),
            first: true,
        };
        BookState { resync: Some(resync), ..BookState::default() }
    }

    /// Whether the book has stayed whole long enough (or never needed a resync) for a quality
    /// problem — a lasting cross, a trimmed side — to be worth a resubscription; otherwise it
    /// is only flagged, so a venue whose book is always crossed cannot cause a resync storm.
    pub fn may_resync(&self, now_ns: i128) -> bool {
        self.streak == 0 || self.synced_since_ns.is_some_and(|since| now_ns - since >= HEALTHY_NS)
    }

    /// Marks the book doubtful until a snapshot (no more lines) and says when to resubscribe:
    /// at once (or `immediate`, when the caller asked already), or after a backoff when the
    /// book has not stayed whole since its last resync. Returns that and the crossed time
    /// that ends with it, in ms.
    pub fn begin_resync(&mut self, reason: ResyncReason, now_ns: i128, immediate: bool) -> (Ask, u64) {
        if self.synced_since_ns.is_some_and(|since| now_ns - since >= HEALTHY_NS) {
            self.streak = 0;
        }
        self.streak = self.streak.saturating_add(1);
        let ask = if immediate || self.streak == 1 { Ask::Now } else { Ask::Later };
        let (attempts, retry_at_ns) = match ask {
            Ask::Now => (1, now_ns + resync_wait_ns(1)),
            Ask::Later => (0, now_ns + resync_wait_ns(self.streak - 1)),
        };
        self.resync = Some(Resync { reason, since_ns: now_ns, attempts, retry_at_ns: Some(retry_at_ns), first: false });
        self.synced = false;
        self.pending = false;
        self.synced_since_ns = None;
        (ask, self.end_cross(now_ns))
    }

    /// The connection ended: the new one's subscription brings a fresh snapshot (no
    /// resubscription needed, none counted against the book). Returns the crossed time ended, in
    /// ms.
    pub fn reconnected(&mut self, now_ns: i128) -> u64 {
        let since_ns = self.resync.map_or(now_ns, |r| r.since_ns);
        let first = self.resync.is_some_and(|r| r.first);
        let reason = if self.synced {
            ResyncReason::Reconnect
        } else {
            self.resync.map_or(ResyncReason::Reconnect, |r| r.reason)
        };
        self.resync = Some(Resync { reason, since_ns, attempts: 0, retry_at_ns: Some(now_ns + RESYNC_WAIT_NS), first });
        self.synced = false;
        self.pending = false;
        self.synced_since_ns = None;
        self.end_cross(now_ns)
    }

    /// Ends a crossed period; returns how long it lasted, in ms (what `book_crossed_ms` adds).
    pub fn end_cross(&mut self, now_ns: i128) -> u64 {
        self.crossed_since.take().map_or(0, |since| ((now_ns - since).max(0) / 1_000_000) as u64)
    }

    /// The segment of the state rendered by the last `apply` (or `render`), for a line.
    pub fn view(&self) -> &[u8] {
        &self.top
    }

    /// Whether the rendered view differs from the last line written (or must be written anyway).
    pub fn view_changed(&self) -> bool {
        self.force || self.top != self.last_top
    }

    /// Re-renders the current state (the end of an interval).
    pub fn render(&mut self, depth: usize) {
        self.top.clear();
        self.book.render_top(depth, &mut self.top);
    }

    /// The view was written.
    pub fn written(&mut self, now_ns: i128) {
        std::mem::swap(&mut self.last_top, &mut self.top);
        self.force = false;
        self.pending = false;
        self.last_line_ns = Some(now_ns);
    }
}

/// The wait before resubscription attempt `attempt` (1-based) is retried.
pub fn resync_wait_ns(attempt: u32) -> i128 {
    let shift = attempt.saturating_sub(1).min(8);
    (RESYNC_WAIT_NS << shift).min(RESYNC_WAIT_MAX_NS)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn e<'a>(price: &'a str, size: &'a str) -> Entry<'a> {
        Entry { price, size }
    }

    fn top(book: &L2Book, depth: usize) -> String {
        let mut out = Vec::new();
        book.render_top(depth, &mut out);
        String::from_utf8(out).expect("utf8")
    }

    #[test]
    fn a_snapshot_replaces_and_deltas_set_absolute_sizes() {
        let mut b = L2Book::default();
        b.apply(true, &[e("100.0", "1"), e("99.5", "2")], &[e("101", "3"), e("102.25", "4")], 10, 1000).expect("ok");
        assert_eq!(
            top(&b, 10),
            r#""bids":[{"price":100.0,"size":1},{"price":99.5,"size":2}],"asks":[{"price":101,"size":3},{"price":102.25,"size":4}]"#
        );
        // Same level in another spelling: one level, the latest text wins; size 0 removes;
        // removing an absent level is a no-op.
        b.apply(false, &[e("100.00000", "5"), e("99.5", "0"), e("42", "0")], &[e("100.5", "1")], 10, 1000).expect("ok");
        assert_eq!(
            top(&b, 10),
            r#""bids":[{"price":100.00000,"size":5}],"asks":[{"price":100.5,"size":1},{"price":101,"size":3},{"price":102.25,"size":4}]"#
        );
        // A snapshot is never merged: levels it does not list are gone.
        b.apply(true, &[e("98", "1")], &[e("103", "1")], 10, 1000).expect("ok");
        assert_eq!(top(&b, 10), r#""bids":[{"price":98,"size":1}],"asks":[{"price":103,"size":1}]"#);
        assert_eq!(top(&b, 0), r#""bids":[],"asks":[]"#);
    }

    #[test]
    fn a_bad_message_is_refused_whole() {
        let mut b = L2Book::default();
        b.apply(true, &[e("100", "1")], &[e("101", "1")], 10, 1000).expect("ok");
        let before = top(&b, 10);
        // Trailing zeros keep the value exact, but not the memory of a level bounded.
        let long_price = format!("99.{}", "0".repeat(NUMBER_TEXT_MAX));
        let long_size = format!("1.{}", "0".repeat(NUMBER_TEXT_MAX));
        for (snapshot, bids, want) in [
            (false, vec![e("99", "1"), e("98", "-0.5")], Rejection::NegativeSize),
            (true, vec![e("99", "1"), e("98", "0")], Rejection::SnapshotSizeNotPositive),
            (false, vec![e("99", "1"), e("\"98\"", "1")], Rejection::Price(NumberError::NotANumber)),
            (
                false,
                vec![e("1.23456789012345678901234567890123456789", "1")],
                Rejection::Price(NumberError::Unrepresentable),
            ),
            (false, vec![e("99", "x")], Rejection::Size(NumberError::NotANumber)),
            (false, vec![e(&long_price, "1")], Rejection::Price(NumberError::Unrepresentable)),
            (false, vec![e("99", &long_size)], Rejection::Size(NumberError::Unrepresentable)),
        ] {
            assert_eq!(b.apply(snapshot, &bids, &[], 10, 1000), Err(want));
            assert_eq!(top(&b, 10), before, "a refused message changes nothing");
        }
    }

    #[test]
    fn crossed_and_locked_books_are_seen_after_whole_messages() {
        let mut b = L2Book::default();
        b.apply(true, &[e("100", "1")], &[e("101", "1")], 10, 1000).expect("ok");
        assert!(!b.is_crossed());
        // Locked: best bid equals best ask, however spelled.
        b.apply(false, &[e("101.000", "1")], &[], 10, 1000).expect("ok");
        assert!(b.is_crossed());
        // One message that sweeps the ask and moves the bid up: whole, it is not crossed.
        b.apply(false, &[e("101.000", "0"), e("101", "2")], &[e("101", "0"), e("102", "1")], 10, 1000).expect("ok");
        assert!(!b.is_crossed());
    }

    /// Proves the level bound holds and the worst levels go first.
    #[test]
    fn sides_are_trimmed_worst_first() {
        let mut b = L2Book::default();
        let bids: Vec<String> = (1..=10).map(|i| format!("{i}")).collect();
        let asks: Vec<String> = (11..=20).map(|i| format!("{i}")).collect();
        let bid_entries: Vec<Entry> = bids.iter().map(|p| e(p, "1")).collect();
        let ask_entries: Vec<Entry> = asks.iter().map(|p| e(p, "1")).collect();
        let applied = b.apply(true, &bid_entries, &ask_entries, 3, 3).expect("ok");
        assert_eq!(applied.trimmed, 14);
        assert!(b.bids.trimmed && b.asks.trimmed);
        assert_eq!(
            top(&b, 5),
            r#""bids":[{"price":10,"size":1},{"price":9,"size":1},{"price":8,"size":1}],"asks":[{"price":11,"size":1},{"price":12,"size":1},{"price":13,"size":1}]"#
        );
    }

    #[test]
    fn the_view_changes_only_when_the_top_n_does() {
        let mut s = BookState::default();
        let mut trimmed = 0;
        assert_eq!(s.apply(false, &[e("1", "1")], &[], 2, 100, &mut trimmed), Step::BeforeSnapshot);
        assert_eq!(
            s.apply(true, &[e("10", "1"), e("9", "1"), e("8", "1")], &[e("11", "1")], 2, 100, &mut trimmed),
            Step::Changed
        );
        s.written(0);
        // Level 8 is third: outside the top 2.
        assert_eq!(s.apply(false, &[e("8", "5")], &[], 2, 100, &mut trimmed), Step::Unchanged);
        assert_eq!(s.apply(false, &[e("9", "5")], &[], 2, 100, &mut trimmed), Step::Changed);
        s.written(1);
        // A snapshot always writes, even an identical one.
        assert_eq!(
            s.apply(true, &[e("10", "1"), e("9", "5"), e("8", "5")], &[e("11", "1")], 2, 100, &mut trimmed),
            Step::Changed
        );
        s.written(2);
        s.begin_resync(ResyncReason::Gap, 3, false);
        assert!(!s.synced);
        assert_eq!(s.apply(false, &[e("9", "1")], &[], 2, 100, &mut trimmed), Step::BeforeSnapshot);
    }

    #[test]
    fn resync_waits_back_off_to_a_bound() {
        assert_eq!(resync_wait_ns(1), RESYNC_WAIT_NS);
        assert_eq!(resync_wait_ns(2), 2 * RESYNC_WAIT_NS);
        assert_eq!(resync_wait_ns(30), RESYNC_WAIT_MAX_NS);
    }
}
