//! What the supervisor tells the scheduler: workers that start and become ready, the answers
//! of their tasks (and from them, which tasks a worker runs now), and their exits, which fail
//! or requeue the tasks they held.

use std::time::{Duration, Instant};

use super::recycle::Recycle;
use super::sched::{Sched, Slot};
use super::types::{Outcome, TaskError, Value};
use crate::events::{Event, ExitInfo};
use crate::wire::task;

impl Sched {
    pub(super) fn on_event(&mut self, ev: Event) {
        match ev {
            Event::Spawned { id, pid, .. } => {
                if let Some(s) = self.slots.get_mut(id as usize) {
                    *s = Slot {
                        pid,
                        ..Slot::default()
                    };
                }
            }
            Event::Ready { id, pid } => {
                if let Some(s) = self.slots.get_mut(id as usize).filter(|s| s.pid == pid) {
                    s.ready = true;
                    s.started = true;
                    // A worker could start: an older start-up failure is no longer the news.
                    self.boot_error = None;
                    self.recycle_on_ready(id);
                }
            }
            Event::GaveUp { id, .. } => self.recycle_gave_up(id),
            Event::TaskDone { id, pid, data } => self.on_answer(id, pid, &data),
            Event::Exit { id, info, .. } => self.on_exit(id, info),
            Event::AllDown => self.all_down(),
            _ => {}
        }
    }

    pub(super) fn on_answer(&mut self, slot: u32, pid: u32, data: &[u8]) {
        // The reader checked that it parses.
        let Some(d) = task::parse_task_done(data) else {
            return;
        };
        if d.id == task::BOOT_FAILURE {
            let why = String::from_utf8_lossy(d.payload);
            self.boot_error = Some(format!("worker {slot} (pid {pid}) cannot start: {why}"));
            return;
        }
        // An answer to a task that already failed (timed out, cancelled) is dropped, and so is
        // one from a process the task was not given to.
        let given = self.slots.get(slot as usize).is_some_and(|s| s.pid == pid);
        if !given || self.running.get(&d.id).is_none_or(|r| r.slot != slot) {
            if given {
                self.late_answer(slot, d.id, Instant::now());
            }
            return;
        }
        let Some(r) = self.running.remove(&d.id) else {
            return;
        };
        let now = Instant::now();
        if r.cancelled {
            // Failed when it was cancelled; the worker ran it (or skipped it) all the same.
            self.task_left(r.slot, d.id, true);
            self.begin_next(slot, now);
            return;
        }
        if r.begun {
            self.learn_run(now - r.started);
        }
        let result = if d.ok {
            Ok(Value {
                content: d.content,
                payload: d.payload.to_vec(),
            })
        } else {
            Err(TaskError::Failed {
                content: d.content,
                payload: d.payload.to_vec(),
            })
        };
        self.done.push(Outcome {
            id: d.id,
            result,
            wait: r.started - r.queued_at,
            run: now - r.started,
        });
        self.task_left(r.slot, d.id, true);
        self.begin_next(slot, now);
    }

    /// The worker of `slot` starts its next prefetched tasks as running ones are answered
    /// (in the order they were sent, at most `conc` at once): their deadlines start now.
    /// An answer is written before its worker starts the next task (`docs/protocol.md` 5.8),
    /// so a deadline starts no earlier than its task does.
    pub(super) fn begin_next(&mut self, slot: u32, now: Instant) {
        let Some(s) = self.slots.get(slot as usize) else {
            return;
        };
        let mut begun = 0;
        for id in &s.tasks {
            if begun >= self.conc {
                break;
            }
            let Some(r) = self.running.get_mut(id) else {
                continue;
            };
            begun += 1;
            if r.begun {
                continue;
            }
            r.begun = true;
            r.started = now;
            // A cancelled task that its worker runs all the same keeps its deadline: a runaway
            // one would hold its worker for good.
            r.deadline = r.timeout.map(|t| now + t);
            let mut again = r.again.take();
            if let Some(p) = again.as_mut() {
                p.tries += 1;
            }
            r.again = again.filter(|p| p.options.idempotent);
        }
    }

    /// Counts one more task's run time into the average (the last few dozen weigh most).
    pub(super) fn learn_run(&mut self, run: Duration) {
        self.avg_run = Some(match self.avg_run {
            None => run,
            Some(avg) => (avg * 7 + run) / 8,
        });
    }

    /// Task `id` no longer runs on `slot`; `answered`: the worker answered it (a worker that
    /// reached `max_tasks_per_worker` is then replaced, see `recycle`).
    pub(super) fn task_left(&mut self, slot: u32, id: u64, answered: bool) {
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return;
        };
        s.tasks.retain(|&t| t != id);
        if answered {
            s.answered += 1;
            self.recycle_after_answer(slot);
        } else {
            self.step_recycle();
        }
    }

    pub(super) fn on_exit(&mut self, slot: u32, info: ExitInfo) {
        let Some(s) = self
            .slots
            .get_mut(slot as usize)
            .filter(|s| s.pid == info.pid)
        else {
            return;
        };
        let was_ready = s.started;
        let cause = s.kill_cause.take();
        let tasks = std::mem::take(&mut s.tasks);
        *s = Slot::default();
        if !was_ready && self.boot_error.is_none() {
            let how = match (info.signal, info.code) {
                (Some(sig), _) => {
                    format!(
                        "killed by signal {} ({sig})",
                        super::types::signal_name(sig)
                    )
                }
                (None, Some(c)) => format!("exit code {c}"),
                _ => "an unknown status".into(),
            };
            self.boot_error = Some(format!(
                "worker {slot} (pid {}) ended before it was ready ({how})",
                info.pid
            ));
        }
        let now = Instant::now();
        // Both go back first, in the order they were sent: the idempotent tasks it ran, then
        // those that waited in it.
        let mut retry = Vec::new();
        let mut waited = Vec::new();
        for id in tasks {
            let Some(r) = self.running.remove(&id) else {
                continue;
            };
            if r.cancelled {
                continue;
            }
            if !r.begun {
                // It waited in the worker and never ran: not an attempt; it runs elsewhere,
                // before anything still queued.
                waited.extend(r.again);
                continue;
            }
            if let Some(p) = r.again.filter(|p| p.tries < 2) {
                retry.push(p);
                self.shared.inner.lock().unwrap().stats.retried += 1;
                continue;
            }
            let e = TaskError::Crashed {
                worker: slot,
                pid: info.pid,
                code: info.code,
                signal: info.signal,
                cause: cause.clone(),
            };
            let (wait, run) = (r.started - r.queued_at, now - r.started);
            self.done.push(Outcome::failed(id, e, wait, run));
        }
        if !waited.is_empty() {
            self.shared.inner.lock().unwrap().stats.requeued += waited.len() as u64;
        }
        retry.extend(waited);
        self.again.splice(0..0, retry);
    }

    /// Every worker stopped for good: no queued task can run, and none will be taken.
    pub(super) fn all_down(&mut self) {
        self.recycle = Recycle::Idle;
        let why = self
            .boot_error
            .clone()
            .unwrap_or_else(|| "every worker stopped and none is restarted".into());
        self.shared.inner.lock().unwrap().broken = Some(why.clone());
        self.shared.room.notify_all();
        self.fail_queued(TaskError::NoWorkers(why));
    }
}
