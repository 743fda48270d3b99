//! The simulator's level-2 order books: one market model per symbol ([`BookModel`]), shared by
//! every paced `book` and `book5/20/50` stream of every connection and by REST
//! `orderbooks/current`; the per-stream view ([`BookStream`]) that turns the model's changes into
//! a `book` stream's snapshots and deltas; the book faults; and the oracle log ([`OracleLog`])
//! with the digest that tests compare a client's book with ([`book_top_digest`] over
//! [`canonical_decimal`] text).
//!
//! # Model
//!
//! A model holds price levels per side (price in units of 10^-scale, size in units of 1e-8) and
//! evolves one step each time a book-family stream of its symbol is due to emit: 1–3 random
//! changes (a new size, or a removal replaced beyond the worst level so the depth stays
//! constant, or now and then a new level inside the spread that pushes the worst one out), or
//! one pending model fault (`BookCross`, `BookSweep`, `BookLevelFlood`) instead. Every changed
//! level is appended to a bounded change log.
//!
//! # Views
//!
//! A `book` stream's view is exactly what it has sent: the levels a client holds after applying
//! its messages, with the canonical text of the last spelling sent for each. A snapshot lists the
//! model's top `book_levels` per side and replaces the view; a delta lists the levels changed in
//! the model since the stream's previous message whose size now differs from the view (absolute
//! size, 0 = removed), at most [`DELTA_LEVELS_MAX`] per message (the rest follow in the next
//! ones), best first per side. When the model holds no more than `book_levels` levels per side
//! (always, but after a `BookLevelFlood`) the view after each message is the model. A view that
//! fell further behind than the change log reaches gets a snapshot instead of a delta.
//!
//! Nothing here does IO or sleeps; wall time comes in as arguments, except that the model reads
//! `Instant::now()` for the end of a `BookCross`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;
use time::OffsetDateTime;

use super::gen::{self, DataType, SymbolInfo, Template, TemplateBuilder};
use super::{describe, BookOracleEntry, WsFault};

/// Levels per `book` delta message at most; a larger change (a level flood) is spread over
/// several messages.
pub(crate) const DELTA_LEVELS_MAX: usize = 200;

/// Levels per side a model holds at most (a `BookLevelFlood` is cut to fit).
pub(crate) const MODEL_SIDE_MAX: usize = 20_000;

/// Changes kept in a model's log: more than a full flood of both sides.
const LOG_CAPACITY: usize = 1 << 17;

/// Model faults waiting to be applied, per symbol, before new ones are dropped.
const MODEL_FAULTS_MAX: usize = 1000;

/// Percent of random changes that put a new level inside the spread.
const IMPROVE_PERCENT: u8 = 8;

/// Percent of random changes that set a new size; the rest remove a level.
const RESIZE_PERCENT: u8 = 80;

/// Exponents beyond this magnitude are not expanded by [`canonical_decimal`].
const CANONICAL_EXP_MAX: i64 = 1000;

/// The size spelled by `BookNegativeSize`.
const NEGATIVE_SIZE_TEXT: &str = "-0.5";

/// One side of a book. `Ask < Bid`, which orders the view's backlog.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Side {
    Ask,
    Bid,
}

/// One symbol's L2 market: levels per side, the change log, pending model faults.
#[derive(Debug)]
pub(crate) struct BookModel {
    /// `SimConfig::book_levels`: the depth random changes work in and snapshots show.
    depth: usize,
    asks: BTreeMap<u64, u64>,
    bids: BTreeMap<u64, u64>,
    /// Changes logged so far; `log` holds the last ones, versions `version - log.len()..version`.
    version: u64,
    log: VecDeque<(Side, u64)>,
    faults: VecDeque<WsFault>,
    /// An active `BookCross`: the crossed bid's price and when it is removed.
    cross: Option<(u64, Instant)>,
    ref_price: u64,
    rng: fastrand::Rng,
}

impl BookModel {
    /// A model of `depth` levels per side around the symbol's reference price.
    pub(crate) fn new(sym: &SymbolInfo, depth: usize, mut rng: fastrand::Rng) -> BookModel {
        let depth = depth.max(1);
        let mid = gen::walk(sym.ref_price, &mut rng);
        let spacing = 1 + mid / 20_000;
        let mut model = BookModel {
            depth,
            asks: BTreeMap::new(),
            bids: BTreeMap::new(),
            version: 0,
            log: VecDeque::new(),
            faults: VecDeque::new(),
            cross: None,
            ref_price: mid,
            rng,
        };
        for i in 0..depth as u64 {
            let off = spacing * (i + 1);
            let size = gen::random_size(&mut model.rng);
            model.asks.insert(mid + off, size);
            let size = gen::random_size(&mut model.rng);
            if mid > off {
                model.bids.insert(mid - off, size);
            }
        }
        model
    }

    fn levels(&self, side: Side) -> &BTreeMap<u64, u64> {
        match side {
            Side::Ask => &self.asks,
            Side::Bid => &self.bids,
        }
    }

    fn levels_mut(&mut self, side: Side) -> &mut BTreeMap<u64, u64> {
        match side {
            Side::Ask => &mut self.asks,
            Side::Bid => &mut self.bids,
        }
    }

    /// Sets a level's size (0 removes it) and logs the change.
    fn set(&mut self, side: Side, price: u64, size: u64) {
        if size == 0 {
            self.levels_mut(side).remove(&price);
        } else {
            self.levels_mut(side).insert(price, size);
        }
        self.version += 1;
        self.log.push_back((side, price));
        if self.log.len() > LOG_CAPACITY {
            self.log.pop_front();
        }
    }

    fn log_start(&self) -> u64 {
        self.version - self.log.len() as u64
    }

    /// The changes logged after version `seen`, or `None` if the log no longer reaches back.
    fn changes_since(&self, seen: u64) -> Option<impl Iterator<Item = &(Side, u64)>> {
        let from = seen.checked_sub(self.log_start())?;
        Some(self.log.iter().skip(usize::try_from(from).unwrap_or(usize::MAX)))
    }

    pub(crate) fn best(&self, side: Side) -> Option<u64> {
        match side {
            Side::Ask => self.asks.keys().next().copied(),
            Side::Bid => self.bids.keys().next_back().copied(),
        }
    }

    fn worst(&self, side: Side) -> Option<u64> {
        match side {
            Side::Ask => self.asks.keys().next_back().copied(),
            Side::Bid => self.bids.keys().next().copied(),
        }
    }

    fn nth_best(&self, side: Side, i: usize) -> Option<u64> {
        match side {
            Side::Ask => self.asks.keys().nth(i).copied(),
            Side::Bid => self.bids.keys().nth_back(i).copied(),
        }
    }

    /// The best `n` levels of a side, best first, as (price, size).
    pub(crate) fn top(&self, side: Side, n: usize) -> Vec<(u64, u64)> {
        match side {
            Side::Ask => self.asks.iter().take(n).map(|(p, s)| (*p, *s)).collect(),
            Side::Bid => self.bids.iter().rev().take(n).map(|(p, s)| (*p, *s)).collect(),
        }
    }

    pub(crate) fn size(&self, side: Side, price: u64) -> Option<u64> {
        self.levels(side).get(&price).copied()
    }

    /// Levels held: (bids, asks).
    pub(crate) fn len(&self) -> (usize, usize) {
        (self.bids.len(), self.asks.len())
    }

    /// Queues a model fault (`BookCross`, `BookSweep`, `BookLevelFlood`) for the next step.
    pub(crate) fn inject(&mut self, fault: WsFault) {
        if self.faults.len() < MODEL_FAULTS_MAX {
            self.faults.push_back(fault);
        } else {
            log::warn!("sim book fault queue full ({MODEL_FAULTS_MAX}): fault dropped");
        }
    }

    /// One step of the market: the end of an active cross, else the next pending model fault
    /// (a `BookSweep` waits while a cross is active), else random changes. The description of
    /// each fault applied is pushed to `applied`.
    pub(crate) fn step(&mut self, now: Instant, applied: &mut Vec<String>) {
        if let Some((price, until)) = self.cross {
            if now >= until {
                self.cross = None;
                self.set(Side::Bid, price, 0);
                return;
            }
        }
        let ready = match self.faults.front() {
            Some(WsFault::BookSweep { .. }) => self.cross.is_none(),
            Some(_) => true,
            None => false,
        };
        if ready {
            if let Some(fault) = self.faults.pop_front() {
                applied.push(describe(&fault));
                if self.apply(fault, now) {
                    return;
                }
            }
        }
        self.random_changes();
    }

    /// Applies a model fault; whether it changed the book.
    fn apply(&mut self, fault: WsFault, now: Instant) -> bool {
        match fault {
            WsFault::BookCross { duration, .. } => {
                let until = now.checked_add(duration).unwrap_or_else(|| super::instant_after(duration));
                if let Some((_, end)) = &mut self.cross {
                    *end = (*end).max(until);
                    return false;
                }
                let Some(ask) = self.best(Side::Ask) else {
                    return false;
                };
                self.cross = Some((ask, until));
                let size = gen::random_size(&mut self.rng);
                self.set(Side::Bid, ask, size);
                true
            }
            WsFault::BookSweep { .. } => {
                let Some(ask) = self.best(Side::Ask).filter(|_| self.asks.len() >= 2) else {
                    log::warn!("sim BookSweep ignored: fewer than two asks");
                    return false;
                };
                let size = gen::random_size(&mut self.rng);
                self.set(Side::Ask, ask, 0);
                self.set(Side::Bid, ask, size);
                true
            }
            WsFault::BookLevelFlood { levels, .. } => {
                let room_asks = MODEL_SIDE_MAX.saturating_sub(self.asks.len());
                let room_bids = MODEL_SIDE_MAX.saturating_sub(self.bids.len());
                let want = levels.min(room_asks + room_bids);
                let worst_bid = self.worst(Side::Bid).unwrap_or(self.ref_price);
                // Bid prices stay at 1 or above.
                let free_below = usize::try_from(worst_bid.saturating_sub(1)).unwrap_or(usize::MAX);
                let bids = (want / 2).min(room_bids).min(free_below);
                let asks = (want - bids).min(room_asks);
                let worst_ask = self.worst(Side::Ask).or(self.best(Side::Bid)).unwrap_or(self.ref_price);
                for i in 1..=asks as u64 {
                    let size = gen::random_size(&mut self.rng);
                    self.set(Side::Ask, worst_ask.saturating_add(i), size);
                }
                for i in 1..=bids as u64 {
                    let size = gen::random_size(&mut self.rng);
                    self.set(Side::Bid, worst_bid - i, size);
                }
                asks + bids > 0
            }
            _ => false,
        }
    }

    /// Levels random changes leave alone while a cross is on: the crossed bid, and the asks at
    /// or below it (so the book stays crossed).
    fn protected(&self, side: Side, price: u64) -> bool {
        match self.cross {
            Some((cross, _)) => match side {
                Side::Bid => price == cross,
                Side::Ask => price <= cross,
            },
            None => false,
        }
    }

    fn random_changes(&mut self) {
        for _ in 0..self.rng.usize(1..=3) {
            let side = if self.rng.bool() { Side::Ask } else { Side::Bid };
            let len = self.levels(side).len();
            if len < 2 {
                continue;
            }
            let roll = self.rng.u8(0..100);
            if roll < IMPROVE_PERCENT {
                self.improve(side);
                continue;
            }
            let i = self.rng.usize(0..len.min(self.depth));
            let Some(price) = self.nth_best(side, i) else {
                continue;
            };
            if self.protected(side, price) {
                continue;
            }
            if roll < RESIZE_PERCENT {
                let size = gen::random_size(&mut self.rng);
                self.set(side, price, size);
                continue;
            }
            self.set(side, price, 0);
            // A new level beyond the worst one (the removed level may have been the worst)
            // keeps the depth constant.
            let Some(last) = self.worst(side) else {
                continue;
            };
            let step = self.rng.u64(1..=3);
            let added = match side {
                Side::Ask => last.max(price).saturating_add(step),
                Side::Bid => last.min(price).saturating_sub(step),
            };
            if added > 0 && self.levels(side).len() < MODEL_SIDE_MAX {
                let size = gen::random_size(&mut self.rng);
                self.set(side, added, size);
            }
        }
    }

    /// A new level strictly inside the spread; the worst level of that side goes, so the depth
    /// stays `depth`. Only on a side that holds at most `depth` levels (flooded levels stay)
    /// and never while a cross is on.
    fn improve(&mut self, side: Side) {
        if self.cross.is_some() || self.levels(side).len() > self.depth {
            return;
        }
        let (Some(bid), Some(ask)) = (self.best(Side::Bid), self.best(Side::Ask)) else {
            return;
        };
        if ask <= bid.saturating_add(1) {
            return;
        }
        let price = self.rng.u64(bid + 1..ask);
        let size = gen::random_size(&mut self.rng);
        self.set(side, price, size);
        if self.levels(side).len() > self.depth {
            if let Some(worst) = self.worst(side) {
                self.set(side, worst, 0);
            }
        }
    }
}

/// Appends a `book5/20/50` message: one model step, then the model's top `depth` per side.
pub(crate) fn top_snapshot(
    model: &Mutex<BookModel>,
    kind: DataType,
    sym: &SymbolInfo,
    depth: usize,
    now: OffsetDateTime,
    rng: &mut fastrand::Rng,
    applied: &mut Vec<String>,
) -> Template {
    let (asks, bids) = {
        let mut m = model.lock();
        m.step(Instant::now(), applied);
        (m.top(Side::Ask, depth), m.top(Side::Bid, depth))
    };
    let mut b = TemplateBuilder::envelope(sym, kind);
    b.times(now, rng);
    b.text.push_str(",\"is_snapshot\":true,\"asks\":");
    let entries = |side: &[(u64, u64)]| side.iter().map(|&(p, s)| (p, Entry::Size(s))).collect::<Vec<_>>();
    push_side(&mut b.text, sym, &entries(&asks), rng, |_, _, _| {});
    b.text.push_str(",\"bids\":");
    push_side(&mut b.text, sym, &entries(&bids), rng, |_, _, _| {});
    b.text.push('}');
    b.finish()
}

/// A level's size in a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Entry {
    /// Absolute size in units of 1e-8; 0 removes the level.
    Size(u64),
    /// The `BookNegativeSize` fault's [`NEGATIVE_SIZE_TEXT`].
    Negative,
}

/// Appends `[{"price":..,"size":..},...]`, calling `written(price, price_text, size_text)` with
/// the exact text of each level.
fn push_side(
    out: &mut String,
    sym: &SymbolInfo,
    entries: &[(u64, Entry)],
    rng: &mut fastrand::Rng,
    mut written: impl FnMut(u64, &str, &str),
) {
    out.push('[');
    for (i, &(price, entry)) in entries.iter().enumerate() {
        if i > 0 {
            out.push(',');
        }
        out.push_str("{\"price\":");
        let price_at = out.len();
        gen::push_level_price(out, sym, price, rng);
        let price_end = out.len();
        out.push_str(",\"size\":");
        let size_at = out.len();
        match entry {
            Entry::Size(0) => out.push('0'),
            Entry::Size(size) => gen::push_size(out, size, rng),
            Entry::Negative => out.push_str(NEGATIVE_SIZE_TEXT),
        }
        written(price, &out[price_at..price_end], &out[size_at..]);
        out.push('}');
    }
    out.push(']');
}

/// One level of a view: its size in the model's units and the canonical text last sent.
#[derive(Debug, Clone)]
struct ViewLevel {
    size: u64,
    price_text: String,
    size_text: String,
}

/// What one `book` stream has sent: the book a client that applied it exactly holds.
#[derive(Debug, Default)]
struct BookView {
    asks: BTreeMap<u64, ViewLevel>,
    bids: BTreeMap<u64, ViewLevel>,
    /// Model version up to which changes have been moved into `backlog`.
    seen: u64,
    /// Levels changed in the model and not yet sent (or found unchanged).
    backlog: BTreeSet<(Side, u64)>,
    /// A snapshot was sent since the stream (re)started.
    synced: bool,
}

impl BookView {
    fn side(&self, side: Side) -> &BTreeMap<u64, ViewLevel> {
        match side {
            Side::Ask => &self.asks,
            Side::Bid => &self.bids,
        }
    }

    fn side_mut(&mut self, side: Side) -> &mut BTreeMap<u64, ViewLevel> {
        match side {
            Side::Ask => &mut self.asks,
            Side::Bid => &mut self.bids,
        }
    }

    fn apply(&mut self, side: Side, price: u64, size: u64, price_text: String, size_text: String) {
        if size == 0 {
            self.side_mut(side).remove(&price);
        } else {
            self.side_mut(side).insert(price, ViewLevel { size, price_text, size_text });
        }
    }

    /// [`book_top_digest`] of the best `depth` levels per side.
    fn digest(&self, depth: usize) -> u64 {
        fn pair(l: &ViewLevel) -> (&str, &str) {
            (l.price_text.as_str(), l.size_text.as_str())
        }
        // The texts are canonical already.
        digest_canonical(self.bids.values().rev().take(depth).map(pair), self.asks.values().take(depth).map(pair))
    }

    /// Best bid at or above best ask (prices are compared in units: the value order).
    fn crossed(&self) -> bool {
        match (self.bids.keys().next_back(), self.asks.keys().next()) {
            (Some(bid), Some(ask)) => bid >= ask,
            _ => false,
        }
    }
}

/// Book faults waiting for one connection's `book` stream of one symbol.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct ViewFaults {
    /// `BookSnapshot`: the next message is a snapshot.
    pub(crate) snapshot: bool,
    /// `BookDropDeltas`: deltas still to drop.
    pub(crate) drop: u64,
    /// `BookNegativeSize`: the next delta carries a negative size.
    pub(crate) negative: bool,
    /// `BookDeltasBeforeSnapshot`: deltas to send before the snapshot of the next (re)start.
    pub(crate) pre_snapshot: u64,
}

impl ViewFaults {
    pub(crate) fn is_empty(&self) -> bool {
        *self == ViewFaults::default()
    }
}

/// Where a `book` stream's oracle entries go: the log and the stream's connection number.
#[derive(Debug, Clone)]
pub(crate) struct OracleLink {
    pub(crate) log: Arc<OracleLog>,
    pub(crate) conn: u64,
}

/// A paced `book` stream of one connection on its symbol's shared model.
#[derive(Debug)]
pub(crate) struct BookStream {
    model: Arc<Mutex<BookModel>>,
    view: BookView,
    depth: usize,
    oracle: Option<OracleLink>,
    /// `SimConfig::book_snapshot_every` (0 = never).
    snapshot_every: u64,
    /// Deltas sent or dropped since the last snapshot.
    since_snapshot: u64,
    /// Faults taken from the connection, being worked off.
    faults: ViewFaults,
    /// Nothing built since the stream (re)started.
    fresh: bool,
}

impl BookStream {
    pub(crate) fn new(
        model: Arc<Mutex<BookModel>>,
        depth: usize,
        snapshot_every: u64,
        oracle: Option<OracleLink>,
    ) -> BookStream {
        BookStream {
            model,
            view: BookView::default(),
            depth: depth.max(1),
            oracle,
            snapshot_every,
            since_snapshot: 0,
            faults: ViewFaults::default(),
            fresh: true,
        }
    }

    /// Starts over (unsubscribe + subscribe): an empty view, a snapshot next.
    pub(crate) fn restart(&mut self) {
        self.view = BookView::default();
        self.since_snapshot = 0;
        self.fresh = true;
    }

    pub(crate) fn request_snapshot(&mut self) {
        self.faults.snapshot = true;
    }

    /// Takes the connection's waiting faults for this symbol (see `StreamGen::absorb_book_faults`).
    pub(crate) fn absorb(&mut self, waiting: &mut ViewFaults) {
        self.faults.snapshot |= std::mem::take(&mut waiting.snapshot);
        self.faults.negative |= std::mem::take(&mut waiting.negative);
        self.faults.drop = self.faults.drop.saturating_add(std::mem::take(&mut waiting.drop));
        if self.fresh && waiting.pre_snapshot > 0 {
            self.faults.pre_snapshot = std::mem::take(&mut waiting.pre_snapshot);
        }
    }

    /// Steps the model and builds the next message; `None` for a dropped delta (the view took
    /// it, nothing is sent).
    pub(crate) fn build(
        &mut self,
        sym: &SymbolInfo,
        now: OffsetDateTime,
        rng: &mut fastrand::Rng,
        applied: &mut Vec<String>,
    ) -> Option<Template> {
        let model_arc = Arc::clone(&self.model);
        let mut model = model_arc.lock();
        let before = model.version;
        model.step(Instant::now(), applied);
        self.fresh = false;
        let mut b = TemplateBuilder::envelope(sym, DataType::Book);
        b.times(now, rng);
        if self.faults.pre_snapshot > 0 && !self.view.synced {
            // What a client must discard: this step's changes, the view stays empty.
            self.faults.pre_snapshot -= 1;
            let mut changed: BTreeSet<(Side, u64)> = BTreeSet::new();
            if let Some(changes) = model.changes_since(before) {
                changed.extend(changes.copied());
            }
            let pick = |side: Side| {
                let prices = changed.iter().filter(|(s, _)| *s == side).map(|(_, p)| *p);
                let entries = prices.map(|p| (p, Entry::Size(model.size(side, p).unwrap_or(0))));
                let mut v: Vec<(u64, Entry)> = entries.collect();
                if side == Side::Bid {
                    v.reverse();
                }
                v.truncate(DELTA_LEVELS_MAX / 2);
                v
            };
            let (asks, bids) = (pick(Side::Ask), pick(Side::Bid));
            b.text.push_str(",\"is_snapshot\":false,\"asks\":");
            push_side(&mut b.text, sym, &asks, rng, |_, _, _| {});
            b.text.push_str(",\"bids\":");
            push_side(&mut b.text, sym, &bids, rng, |_, _, _| {});
            b.text.push('}');
            return Some(b.finish());
        }
        let every = self.snapshot_every > 0 && self.since_snapshot >= self.snapshot_every;
        let lost = self.view.seen < model.log_start();
        if !self.view.synced || self.faults.snapshot || every || lost {
            self.faults.snapshot = false;
            self.since_snapshot = 0;
            let mut view = BookView { seen: model.version, synced: true, ..BookView::default() };
            let asks: Vec<(u64, Entry)> =
                model.top(Side::Ask, self.depth).into_iter().map(|(p, s)| (p, Entry::Size(s))).collect();
            let bids: Vec<(u64, Entry)> =
                model.top(Side::Bid, self.depth).into_iter().map(|(p, s)| (p, Entry::Size(s))).collect();
            drop(model);
            b.text.push_str(",\"is_snapshot\":true,\"asks\":");
            push_side(&mut b.text, sym, &asks, rng, |price, pt, st| {
                let size = size_of(&asks, price);
                view.apply(Side::Ask, price, size, canonical_decimal(pt), canonical_decimal(st));
            });
            b.text.push_str(",\"bids\":");
            push_side(&mut b.text, sym, &bids, rng, |price, pt, st| {
                let size = size_of(&bids, price);
                view.apply(Side::Bid, price, size, canonical_decimal(pt), canonical_decimal(st));
            });
            b.text.push('}');
            self.view = view;
            return Some(b.finish());
        }
        // A delta: the backlog's levels whose size differs from the view, best first.
        if let Some(changes) = model.changes_since(self.view.seen) {
            self.view.backlog.extend(changes.copied());
        }
        self.view.seen = model.version;
        let (mut asks, mut bids) = (Vec::new(), Vec::new());
        let mut settled = Vec::new();
        for side in [Side::Ask, Side::Bid] {
            let keys = self.view.backlog.range((side, 0)..=(side, u64::MAX)).map(|(_, p)| *p);
            let keys: Box<dyn Iterator<Item = u64>> = match side {
                Side::Ask => Box::new(keys),
                Side::Bid => Box::new(keys.rev()),
            };
            let list = if side == Side::Ask { &mut asks } else { &mut bids };
            for price in keys {
                let size = model.size(side, price).unwrap_or(0);
                if self.view.side(side).get(&price).map_or(0, |l| l.size) == size {
                    settled.push((side, price));
                } else if list.len() < DELTA_LEVELS_MAX {
                    list.push((price, Entry::Size(size)));
                } else {
                    break;
                }
            }
        }
        drop(model);
        let n_asks = asks.len().min((DELTA_LEVELS_MAX / 2).max(DELTA_LEVELS_MAX.saturating_sub(bids.len())));
        asks.truncate(n_asks);
        bids.truncate(DELTA_LEVELS_MAX - n_asks);
        for key in settled {
            self.view.backlog.remove(&key);
        }
        for (side, list) in [(Side::Ask, &asks), (Side::Bid, &bids)] {
            for (price, _) in list {
                self.view.backlog.remove(&(side, *price));
            }
        }
        self.since_snapshot += 1;
        if self.faults.drop > 0 {
            self.faults.drop -= 1;
            for (side, list) in [(Side::Ask, &asks), (Side::Bid, &bids)] {
                for &(price, entry) in list {
                    let size = match entry {
                        Entry::Size(s) => s,
                        Entry::Negative => continue,
                    };
                    let texts = (gen::level_price_canonical(sym, price), gen::size_canonical(size));
                    self.view.apply(side, price, size, texts.0, texts.1);
                }
            }
            return None;
        }
        if std::mem::take(&mut self.faults.negative) && !self.add_negative(&mut asks, &mut bids, rng) {
            // Nothing to corrupt yet: the next delta carries it.
            self.faults.negative = true;
        }
        let view = &mut self.view;
        b.text.push_str(",\"is_snapshot\":false,\"asks\":");
        push_side(&mut b.text, sym, &asks, rng, |price, pt, st| {
            if let Some(size) = positive_size(&asks, price) {
                view.apply(Side::Ask, price, size, canonical_decimal(pt), canonical_decimal(st));
            }
        });
        b.text.push_str(",\"bids\":");
        push_side(&mut b.text, sym, &bids, rng, |price, pt, st| {
            if let Some(size) = positive_size(&bids, price) {
                view.apply(Side::Bid, price, size, canonical_decimal(pt), canonical_decimal(st));
            }
        });
        b.text.push('}');
        Some(b.finish())
    }

    /// Adds a negative-size entry for a level the view holds (one of the best three of a
    /// side) that the delta does not list, at its place in best-first order.
    fn add_negative(
        &self,
        asks: &mut Vec<(u64, Entry)>,
        bids: &mut Vec<(u64, Entry)>,
        rng: &mut fastrand::Rng,
    ) -> bool {
        let first = if rng.bool() { Side::Ask } else { Side::Bid };
        let other = if first == Side::Ask { Side::Bid } else { Side::Ask };
        for side in [first, other] {
            let list = if side == Side::Ask { &mut *asks } else { &mut *bids };
            let candidates: Vec<u64> = match side {
                Side::Ask => self.view.asks.keys().take(3).copied().collect(),
                Side::Bid => self.view.bids.keys().rev().take(3).copied().collect(),
            };
            let Some(price) = candidates.into_iter().find(|p| list.iter().all(|(q, _)| q != p)) else {
                continue;
            };
            let at = list.iter().position(|(q, _)| if side == Side::Ask { *q > price } else { *q < price });
            list.insert(at.unwrap_or(list.len()), (price, Entry::Negative));
            return true;
        }
        false
    }

    /// Appends the oracle entry of the message just sent with `sequence`.
    pub(crate) fn record(&self, sym: &SymbolInfo, sequence: u64) {
        let Some(link) = &self.oracle else {
            return;
        };
        if !link.log.enabled() {
            return;
        }
        let digests = link.log.depths.iter().map(|d| self.view.digest(*d)).collect();
        link.log.push(BookOracleEntry {
            conn: link.conn,
            symbol_id: sym.id.clone(),
            sequence,
            digests,
            crossed: self.view.crossed(),
        });
    }
}

fn size_of(entries: &[(u64, Entry)], price: u64) -> u64 {
    positive_size(entries, price).unwrap_or(0)
}

/// The size an entry sets (0 for a removal), `None` for a negative-size entry (ignored).
fn positive_size(entries: &[(u64, Entry)], price: u64) -> Option<u64> {
    match entries.iter().find(|(p, _)| *p == price) {
        Some((_, Entry::Size(s))) => Some(*s),
        _ => None,
    }
}

/// The oracle log: one [`BookOracleEntry`] per `book` message sent, at most `limit`.
#[derive(Debug)]
pub(crate) struct OracleLog {
    depths: Vec<usize>,
    limit: usize,
    entries: Mutex<Vec<BookOracleEntry>>,
    dropped: AtomicU64,
}

impl OracleLog {
    pub(crate) fn new(depths: Vec<usize>, limit: usize) -> OracleLog {
        OracleLog { depths, limit, entries: Mutex::new(Vec::new()), dropped: AtomicU64::new(0) }
    }

    pub(crate) fn enabled(&self) -> bool {
        !self.depths.is_empty()
    }

    fn push(&self, entry: BookOracleEntry) {
        let mut entries = self.entries.lock();
        if entries.len() < self.limit {
            entries.push(entry);
        } else {
            self.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }

    pub(crate) fn snapshot(&self) -> Vec<BookOracleEntry> {
        self.entries.lock().clone()
    }

    pub(crate) fn dropped(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}

/// FNV-1a 64 state.
struct Fnv(u64);

impl Fnv {
    fn new() -> Fnv {
        Fnv(0xcbf2_9ce4_8422_2325)
    }

    fn write(&mut self, bytes: &[u8]) {
        for b in bytes {
            self.0 ^= u64::from(*b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

/// The digest of the top of an order book, as the simulator's oracle log
/// ([`Sim::book_oracle`](crate::Sim::book_oracle)) records it: `bids` and `asks` best first
/// (bids descending, asks ascending), each `(price text, size text)` as JSON number text; the
/// caller passes at most D levels per side for depth D (fewer when the side has fewer).
///
/// Exactly: FNV-1a 64 (offset basis `0xcbf29ce484222325`, prime `0x100000001b3`) over the bytes
/// of `B "|" A`, where `B` is, for each bid in order, `canonical_decimal(price) "="
/// canonical_decimal(size) ";"`, and `A` the same for the asks. An empty book hashes `"|"`.
/// Spelling does not matter (`67069.80000` and `67069.8` give the same digest); order does.
pub fn book_top_digest(bids: &[(&str, &str)], asks: &[(&str, &str)]) -> u64 {
    let canonical = |levels: &[(&str, &str)]| {
        levels.iter().map(|(p, s)| (canonical_decimal(p), canonical_decimal(s))).collect::<Vec<_>>()
    };
    let (bids, asks) = (canonical(bids), canonical(asks));
    digest_canonical(
        bids.iter().map(|(p, s)| (p.as_str(), s.as_str())),
        asks.iter().map(|(p, s)| (p.as_str(), s.as_str())),
    )
}

/// [`book_top_digest`] of levels whose texts are canonical already.
fn digest_canonical<'a>(
    bids: impl Iterator<Item = (&'a str, &'a str)>,
    asks: impl Iterator<Item = (&'a str, &'a str)>,
) -> u64 {
    let mut h = Fnv::new();
    let side = |h: &mut Fnv, levels: &mut dyn Iterator<Item = (&'a str, &'a str)>| {
        for (price, size) in levels {
            h.write(price.as_bytes());
            h.write(b"=");
            h.write(size.as_bytes());
            h.write(b";");
        }
    };
    side(&mut h, &mut { bids });
    h.write(b"|");
    side(&mut h, &mut { asks });
    h.0
}

/// JSON number text as a plain decimal: no exponent, no leading zeros, no trailing fractional
/// zeros, no trailing `.`, `-` only for a nonzero value (`-0` is `0`). `67069.80000` is
/// `67069.8`, `5872` stays `5872`, `1e-8` is `0.00000001`, `1.50E+2` is `150`, `0.000` is `0`,
/// `-0.50` is `-0.5`.
///
/// Beyond JSON it also accepts leading zeros (`007`), a missing integer part (`.5`) or fraction
/// (`5.`). Anything else (not a number, or an exponent beyond ±1000) is returned unchanged.
pub fn canonical_decimal(text: &str) -> String {
    if is_canonical(text) {
        return text.to_string();
    }
    parse_canonical(text).unwrap_or_else(|| text.to_string())
}

/// Whether `text` is already what [`canonical_decimal`] makes of it (the common case, cheaply).
fn is_canonical(text: &str) -> bool {
    let b = text.as_bytes();
    let unsigned = b.strip_prefix(b"-").unwrap_or(b);
    let (int, frac) = match unsigned.iter().position(|c| *c == b'.') {
        Some(dot) => (&unsigned[..dot], Some(&unsigned[dot + 1..])),
        None => (unsigned, None),
    };
    let digits = |s: &[u8]| !s.is_empty() && s.iter().all(u8::is_ascii_digit);
    if !digits(int) || (int[0] == b'0' && int.len() > 1) {
        return false;
    }
    match frac {
        Some(f) => digits(f) && f.last() != Some(&b'0'),
        // `0` is canonical, `-0` is not.
        None => !(int == b"0" && unsigned.len() != b.len()),
    }
}

fn parse_canonical(text: &str) -> Option<String> {
    let b = text.as_bytes();
    let mut i = 0;
    let negative = b.first() == Some(&b'-');
    if negative {
        i = 1;
    }
    let digits_from = |i: &mut usize| {
        let start = *i;
        while *i < b.len() && b[*i].is_ascii_digit() {
            *i += 1;
        }
        &text[start..*i]
    };
    let int = digits_from(&mut i);
    let mut frac = "";
    if b.get(i) == Some(&b'.') {
        i += 1;
        frac = digits_from(&mut i);
    }
    if int.is_empty() && frac.is_empty() {
        return None;
    }
    let mut exp: i64 = 0;
    if matches!(b.get(i), Some(b'e' | b'E')) {
        i += 1;
        let exp_negative = b.get(i) == Some(&b'-');
        if matches!(b.get(i), Some(b'+' | b'-')) {
            i += 1;
        }
        let digits = digits_from(&mut i);
        if digits.is_empty() {
            return None;
        }
        for d in digits.bytes() {
            exp = exp.saturating_mul(10).saturating_add(i64::from(d - b'0'));
        }
        if exp_negative {
            exp = -exp;
        }
    }
    if i != b.len() || exp.abs() > CANONICAL_EXP_MAX {
        return None;
    }
    let all: String = [int, frac].concat();
    let lead = all.len() - all.trim_start_matches('0').len();
    let digits = all[lead..].trim_end_matches('0');
    if digits.is_empty() {
        return Some("0".to_string());
    }
    // Digits of `digits` before the decimal point (may be negative or beyond its length).
    let point = int.len() as i64 - lead as i64 + exp;
    let n = digits.len() as i64;
    let mut out = String::with_capacity(digits.len() + 4);
    if negative {
        out.push('-');
    }
    if point <= 0 {
        out.push_str("0.");
        out.extend(std::iter::repeat_n('0', usize::try_from(-point).unwrap_or(0)));
        out.push_str(digits);
    } else if point >= n {
        out.push_str(digits);
        out.extend(std::iter::repeat_n('0', usize::try_from(point - n).unwrap_or(0)));
    } else {
        let split = usize::try_from(point).unwrap_or(0);
        out.push_str(&digits[..split]);
        out.push('.');
        out.push_str(&digits[split..]);
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    #[test]
    fn canonical_decimal_examples() {
        for (text, canonical) in [
            ("67069.80000", "67069.8"),
            ("67069.8", "67069.8"),
            ("5872", "5872"),
            ("1e-8", "0.00000001"),
            ("21E-4", "0.0021"),
            ("1.50E+2", "150"),
            ("1.5e2", "150"),
            ("0.000", "0"),
            ("0", "0"),
            ("-0", "0"),
            ("-0.000e5", "0"),
            ("-0.50", "-0.5"),
            ("007.10", "7.1"),
            ("1200", "1200"),
            ("12e3", "12000"),
            ("0.0189885151556305438646080756", "0.0189885151556305438646080756"),
            ("67009.375950596670472379501527", "67009.375950596670472379501527"),
            (".5", "0.5"),
            ("5.", "5"),
            // Not numbers, or too large an exponent: unchanged.
            ("", ""),
            ("-", "-"),
            ("abc", "abc"),
            ("1e", "1e"),
            ("1.2.3", "1.2.3"),
            ("1e5000", "1e5000"),
            ("1e99999999999999999999999", "1e99999999999999999999999"),
        ] {
            assert_eq!(canonical_decimal(text), canonical, "{text:?}");
            assert_eq!(canonical_decimal(canonical), canonical, "idempotent on {canonical:?}");
        }
    }

    /// The digest is FNV-1a 64 of `bids "|" asks` with `price=size;` per level, over canonical
    /// text: spelling does not matter, order and sides do.
    #[test]
    fn digest_format() {
        let mut h = Fnv::new();
        h.write(b"100.5=2;|101=0.00000001;");
        assert_eq!(book_top_digest(&[("100.50", "2.000")], &[("101", "1e-8")]), h.0);
        let mut empty = Fnv::new();
        empty.write(b"|");
        assert_eq!(book_top_digest(&[], &[]), empty.0);
        let a = book_top_digest(&[("100.5", "2")], &[("101", "1")]);
        assert_ne!(a, book_top_digest(&[("101", "1")], &[("100.5", "2")]));
        assert_ne!(
            book_top_digest(&[("100", "1"), ("99", "1")], &[]),
            book_top_digest(&[("99", "1"), ("100", "1")], &[])
        );
    }

    fn model(levels: usize, seed: u64) -> BookModel {
        BookModel::new(&SymbolInfo::new("BITSTAMP_SPOT_BTC_USD", 0), levels, fastrand::Rng::with_seed(seed))
    }

    fn crossed(m: &BookModel) -> bool {
        matches!((m.best(Side::Bid), m.best(Side::Ask)), (Some(b), Some(a)) if b >= a)
    }

    /// Random steps keep both sides at their depth, prices positive and the book uncrossed.
    #[test]
    fn random_steps_keep_depth_and_order() {
        let mut m = model(20, 1);
        let mut applied = Vec::new();
        for _ in 0..50_000 {
            m.step(Instant::now(), &mut applied);
            assert_eq!(m.len(), (20, 20));
            assert!(!crossed(&m));
        }
        assert!(m.bids.keys().all(|p| *p > 0));
        assert!(applied.is_empty());
        assert!(m.log.len() <= LOG_CAPACITY);
    }

    /// A cross holds until its end while random steps go on; a sweep leaves the book uncrossed
    /// with the old best ask as best bid; a flood adds distinct levels up to the cap.
    #[test]
    fn model_faults() {
        let mut m = model(10, 2);
        let mut applied = Vec::new();
        let t0 = Instant::now();
        m.inject(WsFault::BookCross { symbol_id: String::new(), duration: Duration::from_secs(10) });
        m.step(t0, &mut applied);
        assert!(crossed(&m));
        for _ in 0..2000 {
            m.step(t0, &mut applied);
            assert!(crossed(&m));
        }
        m.step(t0 + Duration::from_secs(11), &mut applied);
        assert!(!crossed(&m));
        assert_eq!(applied.len(), 1);

        let ask = m.best(Side::Ask);
        m.inject(WsFault::BookSweep { symbol_id: String::new() });
        let before = m.version;
        m.step(t0, &mut applied);
        assert_eq!(m.version - before, 2, "one step of two changes");
        assert_eq!(m.best(Side::Bid), ask);
        assert!(m.best(Side::Ask) > ask && !crossed(&m));

        let (bids, asks) = m.len();
        m.inject(WsFault::BookLevelFlood { symbol_id: String::new(), levels: 1000 });
        m.step(t0, &mut applied);
        assert_eq!(m.len(), (bids + 500, asks + 500));
        m.inject(WsFault::BookLevelFlood { symbol_id: String::new(), levels: usize::MAX });
        m.step(t0, &mut applied);
        assert_eq!(m.len(), (MODEL_SIDE_MAX, MODEL_SIDE_MAX));
        for _ in 0..1000 {
            m.step(t0, &mut applied);
        }
        assert!(m.len().0 <= MODEL_SIDE_MAX && m.len().1 <= MODEL_SIDE_MAX);
    }

    /// Two streams on one model, each message applied by an exact consumer, agree with the
    /// model after their own message (the model has `book_levels` levels per side).
    #[test]
    fn two_views_of_one_model() {
        let sym = SymbolInfo::new("KRAKEN_SPOT_XRP_EUR", 0);
        let shared = Arc::new(Mutex::new(BookModel::new(&sym, 8, fastrand::Rng::with_seed(4))));
        let log = Arc::new(OracleLog::new(vec![8], 1_000_000));
        let mut streams: Vec<BookStream> = (0..2)
            .map(|conn| {
                let link = OracleLink { log: Arc::clone(&log), conn };
                BookStream::new(Arc::clone(&shared), 8, 0, Some(link))
            })
            .collect();
        let mut rng = fastrand::Rng::with_seed(5);
        let mut applied = Vec::new();
        let now = OffsetDateTime::UNIX_EPOCH;
        for i in 0..3000u64 {
            let s = &mut streams[(i % 3 % 2) as usize];
            assert!(s.build(&sym, now, &mut rng, &mut applied).is_some());
            s.record(&sym, i);
            let model = shared.lock();
            let view_top: Vec<(u64, u64)> = s.view.asks.iter().map(|(p, l)| (*p, l.size)).collect();
            assert_eq!(view_top, model.top(Side::Ask, 8));
            let view_top: Vec<(u64, u64)> = s.view.bids.iter().rev().map(|(p, l)| (*p, l.size)).collect();
            assert_eq!(view_top, model.top(Side::Bid, 8));
        }
        assert_eq!(log.snapshot().len(), 3000);
    }
}
