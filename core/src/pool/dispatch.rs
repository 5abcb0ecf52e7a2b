//! Giving queued tasks to workers: the least busy ready worker first, each worker's share of
//! a turn in one write.
//!
//! A worker gets more than the `conc` tasks it runs at once: a few more wait in it
//! (prefetched), so that when it answers one it starts the next at once instead of waiting a
//! round trip through the primary. It still runs at most `conc` at once, in the order they
//! were sent (`answers::begin_next`); one that waited in a worker that ended runs elsewhere.
//! How many wait ahead follows how long tasks run: about `AHEAD_FOR` of work, at least one,
//! at most `max_tasks_ahead`, so that short tasks travel in batches and long ones do not wait
//! behind each other in one worker while another is idle.

use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use super::sched::{Running, Sched};
use super::shared::Pending;
use crate::error::Error;
use crate::wire::task;

/// Tasks taken from the queue in one turn at most, so that answers are read in between.
const BATCH: usize = 4096;
/// About this much work (by the recent average run time) is sent ahead to one worker.
const AHEAD_FOR: Duration = Duration::from_millis(1);

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
        let limit: Vec<usize> = (0..self.slots.len()).map(|i| self.limit(i)).collect();
        let open: Vec<bool> = (0..self.slots.len()).map(|i| self.refills(i)).collect();
        for p in tasks {
            let pick = (0..self.slots.len())
                .filter(|&i| open[i] && load[i] < limit[i])
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
        (0..self.slots.len())
            .filter(|&i| self.refills(i))
            .map(|i| self.limit(i).saturating_sub(self.slots[i].tasks.len()))
            .sum()
    }

    /// Whether worker `slot` is given tasks now: it is open, and half or fewer of the tasks it
    /// may hold ahead are left in it. Topping a worker up in halves rather than after every
    /// answer sends its tasks in fewer, larger writes, and wakes it less often.
    fn refills(&self, slot: usize) -> bool {
        let s = &self.slots[slot];
        let ahead = self.limit(slot) - self.conc;
        s.open() && s.tasks.len().saturating_sub(self.conc) <= ahead / 2
    }

    /// Most tasks worker `slot` holds at once: the `conc` it runs and those sent ahead. A
    /// worker that will reach `max_tasks_per_worker` gets none ahead beyond its limit: those
    /// would wait in a worker that is about to be replaced.
    fn limit(&self, slot: usize) -> usize {
        let mut ahead = match self.avg_run {
            None => 1,
            Some(avg) => (AHEAD_FOR.as_nanos() / avg.as_nanos().max(1)) as usize,
        }
        .clamp(1, self.max_ahead.max(1))
        .min(self.max_ahead);
        if let Some(max) = self.max_tasks {
            let given = self.slots[slot].answered + self.conc as u64;
            ahead = ahead.min(max.saturating_sub(given) as usize);
        }
        self.conc + ahead
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
                for p in batch {
                    self.slots[slot as usize].tasks.push(p.id);
                    let timeout = p.options.timeout.or(self.timeout);
                    self.running.insert(
                        p.id,
                        Running {
                            slot,
                            queued_at: p.queued_at,
                            started: now,
                            begun: false,
                            timeout,
                            deadline: None,
                            cancelled: false,
                            again: Some(p),
                        },
                    );
                }
                self.begin_next(slot, now);
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
