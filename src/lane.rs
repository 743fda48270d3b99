//! One worker's input: a bounded crossbeam channel that carries frames in batches but is sized
//! and measured in frames.
//!
//! The reader hands frames over in batches (up to `MAX_BATCH_FRAMES`, fewer whenever the socket
//! has nothing more to read) because a hand-off per frame costs more than the work it hands off:
//! each one is a channel operation and often a thread wake-up. `--queue-capacity` keeps its
//! meaning — the most frames that can wait for one worker — through the channel's slot count,
//! and the depth counter here reports queued frames, not batches, to the health line and to the
//! reader's shedding.

use std::sync::atomic::{AtomicIsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crossbeam_channel::{Receiver, RecvTimeoutError, SendTimeoutError, Sender, TryRecvError, TrySendError};

use crate::worker::{Frame, WorkerInput};

/// Most frames in one hand-off. Large enough to make the per-batch cost vanish per frame, small
/// enough that a batch is a few tens of KiB.
pub const MAX_BATCH_FRAMES: usize = 64;

/// The batch size and slot count for a capacity of `capacity` frames: the slots times the batch
/// size never exceed the capacity, and batches are as large as that allows.
pub fn shape(capacity: usize) -> (usize, usize) {
    let capacity = capacity.max(1);
    let slots = capacity.div_ceil(MAX_BATCH_FRAMES);
    (capacity / slots, slots)
}

/// A new lane for `capacity` frames.
pub fn lane(capacity: usize) -> (LaneSender, LaneReceiver) {
    let (batch_frames, slots) = shape(capacity);
    let (tx, rx) = crossbeam_channel::bounded(slots);
    let depth = Arc::new(Depth { frames: AtomicIsize::new(0), capacity: batch_frames * slots });
    (LaneSender { tx, depth: Arc::clone(&depth), batch_frames }, LaneReceiver { rx, depth })
}

/// Frames in a lane: added by the reader after a send, subtracted by the worker after a receive,
/// so it can briefly read one batch high (a batch just taken) or low (a batch not yet counted);
/// reads are clamped to what the channel can actually hold.
#[derive(Debug)]
struct Depth {
    frames: AtomicIsize,
    capacity: usize,
}

impl Depth {
    fn get(&self) -> usize {
        (self.frames.load(Ordering::Relaxed).max(0) as usize).min(self.capacity)
    }
}

#[derive(Debug, Clone)]
pub struct LaneSender {
    tx: Sender<WorkerInput>,
    depth: Arc<Depth>,
    /// Frames per batch: a full batch is sent at once.
    pub batch_frames: usize,
}

impl LaneSender {
    /// Sends a batch of frames, waiting at most `wait` for a free slot. On failure the frames
    /// come back to the caller, which counts them as dropped.
    pub fn send_frames(&self, frames: Vec<Frame>, wait: Duration) -> Result<(), (Vec<Frame>, bool)> {
        let n = frames.len() as isize;
        let sent = match self.tx.try_send(WorkerInput::Frames(frames)) {
            Ok(()) => Ok(()),
            Err(TrySendError::Full(input)) => self.tx.send_timeout(input, wait),
            Err(TrySendError::Disconnected(input)) => Err(SendTimeoutError::Disconnected(input)),
        };
        match sent {
            Ok(()) => {
                self.depth.frames.fetch_add(n, Ordering::Relaxed);
                Ok(())
            }
            Err(e) => {
                let disconnected = matches!(e, SendTimeoutError::Disconnected(_));
                match e.into_inner() {
                    WorkerInput::Frames(frames) => Err((frames, disconnected)),
                    _ => Err((Vec::new(), disconnected)),
                }
            }
        }
    }

    /// Sends a control input (new connection, recovery result), waiting at most `wait`.
    pub fn send_control(&self, input: WorkerInput, wait: Duration) -> Result<(), SendTimeoutError<WorkerInput>> {
        self.tx.send_timeout(input, wait)
    }

    /// Frames queued and not yet taken by the worker.
    pub fn depth(&self) -> usize {
        self.depth.get()
    }

    /// A reader of this lane's depth that does not keep the lane open (a sender clone would).
    pub fn probe(&self) -> DepthProbe {
        DepthProbe(Arc::clone(&self.depth))
    }
}

/// Reads one lane's depth, for the health line.
#[derive(Debug)]
pub struct DepthProbe(Arc<Depth>);

impl DepthProbe {
    pub fn depth(&self) -> usize {
        self.0.get()
    }
}

#[derive(Debug)]
pub struct LaneReceiver {
    rx: Receiver<WorkerInput>,
    depth: Arc<Depth>,
}

impl LaneReceiver {
    pub fn try_recv(&self) -> Result<WorkerInput, TryRecvError> {
        self.rx.try_recv().inspect(|input| self.taken(input))
    }

    pub fn recv_timeout(&self, timeout: Duration) -> Result<WorkerInput, RecvTimeoutError> {
        self.rx.recv_timeout(timeout).inspect(|input| self.taken(input))
    }

    fn taken(&self, input: &WorkerInput) {
        if let WorkerInput::Frames(frames) = input {
            self.depth.frames.fetch_sub(frames.len() as isize, Ordering::Relaxed);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shape_never_holds_more_frames_than_the_capacity() {
        assert_eq!(shape(500), (62, 8));
        assert_eq!(shape(64), (64, 1));
        assert_eq!(shape(65), (32, 2));
        assert_eq!(shape(8), (8, 1));
        assert_eq!(shape(1), (1, 1));
        for capacity in 1..2_000 {
            let (batch, slots) = shape(capacity);
            assert!((1..=MAX_BATCH_FRAMES).contains(&batch));
            assert!(batch * slots <= capacity, "{capacity}: {batch} x {slots}");
            assert!(capacity - batch * slots < slots, "{capacity}: {batch} x {slots} wastes a batch");
        }
    }

    #[test]
    fn depth_counts_frames_in_and_out_and_a_full_lane_gives_the_frames_back() {
        let (tx, rx) = lane(4);
        let frame = || Frame { text: "{}".into(), recv_unix_ns: 0, generation: 1 };
        assert!(tx.send_frames(vec![frame(), frame(), frame()], Duration::ZERO).is_ok());
        assert_eq!(tx.depth(), 3);
        let (back, disconnected) = tx.send_frames(vec![frame()], Duration::from_millis(1)).expect_err("full");
        assert_eq!((back.len(), disconnected), (1, false));
        assert_eq!(tx.depth(), 3);
        assert!(matches!(rx.try_recv(), Ok(WorkerInput::Frames(f)) if f.len() == 3));
        assert_eq!(tx.depth(), 0);
        drop(rx);
        let (_, disconnected) = tx.send_frames(vec![frame()], Duration::ZERO).expect_err("gone");
        assert!(disconnected);
    }
}
