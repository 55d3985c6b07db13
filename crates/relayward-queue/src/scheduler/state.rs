//! The scheduler's in-memory index: due times, messages being worked on, destinations in
//! flight, and how a worker left a message.

use std::collections::{BTreeSet, HashMap, VecDeque};

use tokio::sync::oneshot;

use crate::control::{ControlOp, DeliveryError};
use crate::spool::QueueId;

pub(super) type OpReply = oneshot::Sender<Result<(), DeliveryError>>;

#[derive(Default)]
pub(super) struct Entry {
    /// Position in `State::due`, when waiting for a worker.
    pub(super) due: Option<i64>,
    /// Destination keys of the pending recipients, once known.
    pub(super) dests: Option<Vec<String>>,
    pub(super) running: bool,
    /// Waiting in `State::parked` for a destination slot; the due time it had.
    pub(super) parked: Option<(String, i64)>,
    pub(super) ops: Vec<(ControlOp, Option<OpReply>)>,
}

#[derive(Default)]
pub(super) struct State {
    pub(super) due: BTreeSet<(i64, QueueId)>,
    pub(super) entries: HashMap<QueueId, Entry>,
    /// Messages in flight per destination key.
    pub(super) active: HashMap<String, usize>,
    /// Messages due but waiting because their destination is at `max_per_destination`.
    pub(super) parked: HashMap<String, VecDeque<QueueId>>,
    pub(super) workers: usize,
}

impl State {
    pub(super) fn schedule(&mut self, id: QueueId, at: i64) {
        let entry = self.entries.entry(id).or_default();
        if let Some(old) = entry.due.take() {
            self.due.remove(&(old, id));
        }
        entry.due = Some(at);
        self.due.insert((at, id));
    }

    /// Takes the message out of the due index or the parked lists.
    pub(super) fn unschedule(&mut self, id: QueueId) {
        let Some(entry) = self.entries.get_mut(&id) else {
            return;
        };
        if let Some(old) = entry.due.take() {
            self.due.remove(&(old, id));
        }
        if let Some((dest, _)) = entry.parked.take() {
            if let Some(q) = self.parked.get_mut(&dest) {
                q.retain(|p| *p != id);
                if q.is_empty() {
                    self.parked.remove(&dest);
                }
            }
        }
    }

    pub(super) fn saturated<'a>(
        &self,
        dests: &'a [String],
        limit: &dyn Fn(&str) -> usize,
    ) -> Option<&'a String> {
        dests
            .iter()
            .find(|d| self.active.get(*d).copied().unwrap_or(0) >= limit(d))
    }

    pub(super) fn park(&mut self, id: QueueId, dest: String, due: i64) {
        if let Some(entry) = self.entries.get_mut(&id) {
            entry.parked = Some((dest.clone(), due));
            self.parked.entry(dest).or_default().push_back(id);
        }
    }

    pub(super) fn reserve(&mut self, dests: &[String]) {
        for d in dests {
            *self.active.entry(d.clone()).or_default() += 1;
        }
    }

    /// Frees the destination slots of a finished worker and reschedules messages parked on them.
    pub(super) fn release(&mut self, dests: &[String], limit: &dyn Fn(&str) -> usize) {
        for d in dests {
            let remaining = match self.active.get_mut(d) {
                Some(n) => {
                    *n = n.saturating_sub(1);
                    *n
                }
                None => 0,
            };
            if remaining == 0 {
                self.active.remove(d);
            }
            let mut free = limit(d).saturating_sub(remaining);
            while free > 0 {
                let Some(q) = self.parked.get_mut(d) else {
                    break;
                };
                let Some(id) = q.pop_front() else {
                    self.parked.remove(d);
                    break;
                };
                if q.is_empty() {
                    self.parked.remove(d);
                }
                let due = match self.entries.get_mut(&id) {
                    Some(e) => match e.parked.take() {
                        Some((_, due)) => due,
                        None => continue,
                    },
                    None => continue,
                };
                self.schedule(id, due);
                free -= 1;
            }
        }
    }
}

/// How a worker left a message.
pub(super) enum Finish {
    /// Gone from the spool.
    Removed,
    /// Next attempt at this time (ms); destinations of the pending recipients.
    Due(i64, Vec<String>),
    /// Held: no attempts until released.
    Held(Vec<String>),
    /// Not attempted: a destination is at its concurrency limit.
    Park(Vec<String>),
}
