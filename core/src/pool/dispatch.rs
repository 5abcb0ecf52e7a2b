//! Giving queued tasks to workers: the least busy ready worker first, each worker's share of
//! a turn in one write.

use std::sync::atomic::Ordering;
use std::time::Instant;

use super::sched::{Running, Sched};
use super::shared::Pending;
use crate::error::Error;
use crate::wire::task;

/// Tasks taken from the queue in one turn at most, so that answers are read in between.
const BATCH: usize = 4096;

impl Sched {
    /// Gives queued tasks to the least busy ready workers, each worker's share in one write.
    pub(super) fn dispatch(&mut self, now: Instant) {
        let room = self.capacity();
        if room == 0 {
            return;
        }
        let unread = self.shared.inner.lock().unwrap().outcomes.len() + self.done.len();
        if unread >= self.shared.outcome_limit {
            self.shared.held.store(true, Ordering::Release);
            return;
        }
        let want = room.min(BATCH).min(self.shared.outcome_limit - unread);
        let mut tasks: Vec<Pending> = Vec::with_capacity(want.min(1024));
        // Tasks to run again come first: they were queued before anything still queued.
        let n = want.min(self.again.len());
        tasks.extend(self.again.drain(..n));
        if tasks.len() < want {
            let mut inner = self.shared.inner.lock().unwrap();
            let n = (want - tasks.len()).min(inner.queue.len());
            tasks.extend(inner.queue.drain(..n));
            drop(inner);
            if n > 0 {
                self.shared.room.notify_all();
            }
        }
        if tasks.is_empty() {
            return;
        }
        let mut batches: Vec<(u32, Vec<Pending>)> = Vec::new();
        let mut load: Vec<usize> = self.slots.iter().map(|s| s.tasks.len()).collect();
        for p in tasks {
            let pick = (0..self.slots.len())
                .filter(|&i| self.slots[i].ready && !self.slots[i].ending && load[i] < self.conc)
                .min_by_key(|&i| load[i])
                .expect("capacity counted a worker with room");
            load[pick] += 1;
            match batches.iter_mut().find(|(s, _)| *s == pick as u32) {
                Some((_, b)) => b.push(p),
                None => batches.push((pick as u32, vec![p])),
            }
        }
        for (slot, batch) in batches {
            self.send(slot, batch, now);
        }
    }

    /// How many more tasks the ready workers take.
    fn capacity(&self) -> usize {
        self.slots
            .iter()
            .filter(|s| s.takes(self.conc))
            .map(|s| self.conc - s.tasks.len())
            .sum()
    }

    fn send(&mut self, slot: u32, batch: Vec<Pending>, now: Instant) {
        let pid = self.slots[slot as usize].pid;
        let bodies: Vec<Vec<u8>> = batch
            .iter()
            .map(|p| {
                let mut b = Vec::with_capacity(10 + p.options.name.len() + p.payload.len());
                task::task(&mut b, p.id, p.options.content, &p.options.name, &p.payload);
                b
            })
            .collect();
        match self.sup.send_tasks(slot, pid, &bodies) {
            Ok(()) => {
                for mut p in batch {
                    p.tries += 1;
                    let deadline = p.options.timeout.or(self.timeout).map(|t| now + t);
                    self.slots[slot as usize].tasks.push(p.id);
                    let id = p.id;
                    let queued_at = p.queued_at;
                    let again = p.options.idempotent.then_some(p);
                    self.running.insert(
                        id,
                        Running {
                            slot,
                            queued_at,
                            started: now,
                            deadline,
                            again,
                        },
                    );
                }
            }
            Err(e) => {
                // That process is gone (its exit event is on its way) or not reading: the
                // tasks go back to the front of the queue, in order.
                if matches!(e, Error::NoSuchWorker(_) | Error::Stopped) {
                    self.slots[slot as usize].ready = false;
                }
                let mut inner = self.shared.inner.lock().unwrap();
                for p in batch.into_iter().rev() {
                    inner.queue.push_front(p);
                }
            }
        }
    }
}
