//! Ending tasks before their answer: cancels from the host, deadlines that pass, and a stop
//! that fails what is queued. A task that waits in its worker is dropped there (a `TaskCancel`
//! frame); a running one ends only with its worker.

use std::time::{Duration, Instant};

use super::sched::{Sched, DROPPED_KEPT};
use super::shared::Pending;
use super::types::{Outcome, TaskError};

impl Sched {
    pub(super) fn take_cancels(&mut self) {
        let ids = std::mem::take(&mut self.shared.inner.lock().unwrap().cancels);
        for id in ids {
            if let Some(at) = self.again.iter().position(|p| p.id == id) {
                let p = self.again.remove(at);
                let wait = p.queued_at.elapsed();
                self.done.push(Outcome::failed(
                    id,
                    TaskError::Cancelled,
                    wait,
                    Duration::ZERO,
                ));
                continue;
            }
            let Some(r) = self.running.get_mut(&id) else {
                continue;
            };
            if r.cancelled {
                continue;
            }
            if r.begun {
                self.end_running(id, TaskError::Cancelled, "a task on it was cancelled");
            } else {
                self.fail_waiting(id, TaskError::Cancelled);
            }
        }
    }

    /// Fails task `id`, which waits in its worker (sent ahead) and does not run yet, with `e`;
    /// its worker is not killed but told with a `TaskCancel` frame, and drops the task
    /// without answering (`docs/protocol.md` 5.8). When the frame cannot be queued, the task
    /// stays in its worker's list until answered: the worker may still run it (it starts its
    /// tasks in order, and the order must stay known).
    pub(super) fn fail_waiting(&mut self, id: u64, e: TaskError) {
        let Some(r) = self
            .running
            .get_mut(&id)
            .filter(|r| !r.begun && !r.cancelled)
        else {
            return;
        };
        let wait = r.started - r.queued_at;
        self.done.push(Outcome::failed(id, e, wait, Duration::ZERO));
        let slot = r.slot;
        let pid = self.slots[slot as usize].pid;
        if self.sup.send_task_cancel(slot, pid, id).is_err() {
            r.cancelled = true;
            r.again = None;
            return;
        }
        self.running.remove(&id);
        let dropped = &mut self.slots[slot as usize].dropped;
        if dropped.len() == DROPPED_KEPT {
            dropped.remove(0);
        }
        dropped.push(id);
        self.task_left(slot, id, false);
    }

    /// Worker `slot` answered task `id`, which it no longer holds for the pool. When that is a
    /// cancelled task it was told to drop, it had started it before the `TaskCancel` frame
    /// arrived: that task held one of its `conc` places until now, so the last task counted as
    /// running there in truth waited until now, and its clock starts now.
    pub(super) fn late_answer(&mut self, slot: u32, id: u64, now: Instant) {
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return;
        };
        let Some(at) = s.dropped.iter().position(|&d| d == id) else {
            return;
        };
        s.dropped.remove(at);
        let begun: Vec<u64> = s
            .tasks
            .iter()
            .filter(|t| self.running.get(t).is_some_and(|r| r.begun))
            .take(self.conc)
            .copied()
            .collect();
        if begun.len() < self.conc {
            return;
        }
        if let Some(r) = begun.last().and_then(|t| self.running.get_mut(t)) {
            r.started = now;
            r.deadline = r.timeout.map(|t| now + t);
        }
    }

    /// Fails running task `id` with `e` and kills its worker (the only way to stop it); the
    /// worker gets no task from now on, and is replaced.
    pub(super) fn end_running(&mut self, id: u64, e: TaskError, cause: &str) {
        let Some(r) = self.running.remove(&id) else {
            return;
        };
        let now = Instant::now();
        // A cancelled task failed when it was cancelled.
        if !r.cancelled {
            self.done.push(Outcome::failed(
                id,
                e,
                r.started - r.queued_at,
                now - r.started,
            ));
        }
        let slot = r.slot;
        self.task_left(slot, id, false);
        let s = &mut self.slots[slot as usize];
        s.ready = false;
        s.ending = true;
        s.recycle = false;
        s.kill_cause = Some(format!("killed by the pool: {cause}"));
        // Sent by the loop while that process is unreaped, so the signal reaches it.
        let _ = self.sup.kill(slot, libc::SIGKILL);
    }

    pub(super) fn expire(&mut self, now: Instant) {
        let late: Vec<(u64, Duration)> = self
            .running
            .iter()
            .filter(|(_, r)| r.deadline.is_some_and(|d| now >= d))
            .map(|(&id, r)| (id, r.deadline.unwrap_or(now) - r.started))
            .collect();
        for (id, after) in late {
            self.end_running(id, TaskError::Timeout { after }, "a task on it timed out");
        }
    }

    pub(super) fn fail_queued(&mut self, e: TaskError) {
        let now = Instant::now();
        let mut inner = self.shared.inner.lock().unwrap();
        let queued: Vec<Pending> = self.again.drain(..).chain(inner.queue.drain(..)).collect();
        drop(inner);
        for p in queued {
            self.done.push(Outcome::failed(
                p.id,
                e.clone(),
                now - p.queued_at,
                Duration::ZERO,
            ));
        }
        self.shared.room.notify_all();
    }
}
