//! Cutting one large file on several cores, with exactly the cuts of a
//! sequential pass.
//!
//! FastCDC is sequential: where a chunk ends depends on where it starts. But
//! the cut that follows a position depends only on that position and the
//! bytes after it, so a chain of cuts started at a guessed position is made
//! of true cuts from the first position the true chain also reaches: from
//! there on the two chains are the same. A chunk stream therefore hands
//! the later parts of each segment to other threads, which cut them from
//! their first byte as if a chunk started there ([`CutAhead`]). The stream
//! itself cuts from the segment's start as always; once its position is one
//! that a helper's chain passed through, it takes the helper's cuts instead
//! of computing them. With random data the chains meet after a chunk or two
//! (the minimum size skips most of the bytes where they could differ).
//!
//! Nothing waits on work that has not started: a job still queued when the
//! stream reaches its part is withdrawn and the stream cuts that part
//! itself, so a busy or missing helper costs speed, never progress.

use std::collections::HashMap;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};

use bytes::Bytes;

use crate::cdc::Chunker;

/// One part of a segment to cut ahead of the stream, shared by the stream
/// and the thread that runs it.
#[derive(Clone)]
pub struct CutAhead {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for CutAhead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CutAhead({}..{})", self.shared.from, self.shared.until)
    }
}

struct Shared {
    /// First offset of the part (in the segment).
    from: usize,
    /// The chain stops once it reaches this offset.
    until: usize,
    /// Whether the segment ends the input.
    eof: bool,
    state: Mutex<State>,
    done: Condvar,
}

enum State {
    /// Waiting for a thread; holds the segment until one takes it.
    Queued(Bytes),
    Running,
    /// The chain: each cut as (start, end) offsets in the segment.
    Done(Vec<(usize, usize)>),
    /// Withdrawn or collected; the segment is released.
    Gone,
}

impl CutAhead {
    pub(crate) fn new(segment: Bytes, from: usize, until: usize, eof: bool) -> Self {
        Self {
            shared: Arc::new(Shared {
                from,
                until,
                eof,
                state: Mutex::new(State::Queued(segment)),
                done: Condvar::new(),
            }),
        }
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.shared.state.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Cuts the part, unless the stream has withdrawn it or another thread
    /// took it. Pure CPU work that always finishes.
    pub fn run(&self, chunker: &Chunker) {
        let segment = {
            let mut state = self.lock();
            match std::mem::replace(&mut *state, State::Running) {
                State::Queued(segment) => segment,
                other => {
                    *state = other;
                    return;
                }
            }
        };
        let mut chain = Vec::new();
        let mut at = self.shared.from;
        while at < self.shared.until {
            match chunker.final_cut(&segment[at..], self.shared.eof) {
                Some(n) => {
                    chain.push((at, at + n));
                    at += n;
                }
                None => break,
            }
        }
        drop(segment);
        *self.lock() = State::Done(chain);
        self.shared.done.notify_all();
    }

    /// The part's chain: waits if a thread is cutting it, withdraws it (and
    /// returns nothing) if none has started.
    fn collect(&self) -> Vec<(usize, usize)> {
        let mut state = self
            .shared
            .done
            .wait_while(self.lock(), |state| matches!(state, State::Running))
            .unwrap_or_else(|p| p.into_inner());
        match std::mem::replace(&mut *state, State::Gone) {
            State::Done(chain) => chain,
            State::Queued(_) | State::Running | State::Gone => Vec::new(),
        }
    }

    /// Withdraws the part if no thread has started it, releasing the segment.
    fn withdraw(&self) {
        let mut state = self.lock();
        if matches!(*state, State::Queued(_)) {
            *state = State::Gone;
        }
    }
}

/// Where a stream hands parts to cut: returns `false` when nobody can take
/// the part now (the stream then cuts it itself).
pub type CutHelpers = Arc<dyn Fn(CutAhead) -> bool + Send + Sync>;

/// The parts of the stream's current segment that were handed out, and the
/// cuts collected from those the stream has reached.
#[derive(Default)]
pub(crate) struct AheadParts {
    pending: Vec<CutAhead>,
    /// Cut start → cut end, in segment offsets.
    known: HashMap<usize, usize>,
}

impl AheadParts {
    /// Hands out the later parts of a new segment (of `len` bytes, the stream
    /// at offset 0) to `helpers`: `parts` parts in all, the first one the
    /// stream's own. A part is at least `min_part` bytes. The parts of the
    /// previous segment must have been cleared.
    ///
    /// The stream's part is shorter than the others by half a part's
    /// minimum: the stream also reads the segment and cuts on until its
    /// chain meets the next one (measured: a segment of 16 MiB, halved, left
    /// the stream 61 % of the cuts with the default bounds).
    pub(crate) fn hand_out(
        &mut self,
        helpers: &CutHelpers,
        segment: &Bytes,
        eof: bool,
        parts: usize,
        min_part: usize,
    ) {
        debug_assert!(self.pending.is_empty() && self.known.is_empty());
        let len = segment.len();
        let parts = parts.min(len / min_part.max(1));
        if parts < 2 {
            return;
        }
        let own = (len / parts).saturating_sub(min_part / 2).max(min_part);
        let bounds: Vec<usize> = std::iter::once(0)
            .chain((0..parts).map(|i| own + (len - own) * i / (parts - 1)))
            .collect();
        for w in bounds.windows(2).skip(1) {
            // A chain runs a little past its part, so that the chain after
            // it has room to meet it.
            let until = (w[1] + min_part / 2).min(len);
            let job = CutAhead::new(segment.clone(), w[0], until, eof);
            if helpers(job.clone()) {
                self.pending.push(job);
            } else {
                job.withdraw();
            }
        }
    }

    /// The end of the cut that starts at `at`, if a helper found it. Collects
    /// the parts the stream has reached.
    pub(crate) fn cut_from(&mut self, at: usize) -> Option<usize> {
        while self
            .pending
            .first()
            .is_some_and(|part| part.shared.from <= at)
        {
            let part = self.pending.remove(0);
            self.known.extend(part.collect());
        }
        self.known.get(&at).copied()
    }

    /// Withdraws what no thread has started and forgets the rest.
    pub(crate) fn clear(&mut self) {
        for part in self.pending.drain(..) {
            part.withdraw();
        }
        self.known.clear();
    }
}

impl Drop for AheadParts {
    fn drop(&mut self) {
        self.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cdc::tests::SMALL;

    /// A withdrawn part lets go of its segment at once: a queue that is
    /// never drained cannot pin the pool.
    #[test]
    fn a_withdrawn_part_releases_its_segment() {
        let segment = Bytes::from(vec![1u8; 1000]);
        let part = CutAhead::new(segment.clone(), 500, 1000, true);
        assert!(!segment.is_unique());
        part.withdraw();
        assert!(segment.is_unique());
        part.run(&Chunker::new(SMALL, &[1; 32]));
        assert!(part.collect().is_empty());
    }
}
