//! Recycling in the loop: a worker over `max_memory`, or past its `max_requests`, is replaced
//! the way a reload replaces one slot. A new worker of the slot's generation starts beside it;
//! once the new one is ready (and routed), the old one is asked to stop and drains. One slot at
//! a time: the next worker in the queue waits until the old worker of the step under way has
//! exited, so recycling never takes more than one worker's capacity away.
//!
//! A reload replaces every worker anyway: while one runs, no new step starts, and the workers
//! it replaced leave the queue (`recycle::Queue::pop` skips those that are no longer live).
//! A step already under way when a reload starts finishes on its own.

use crate::config::Config;
use crate::events::{Event, WorkerState};
use crate::policy::recycle::{served_enough, Limits};
use crate::policy::ExitReason;
use crate::sys::listen::Dispatch;
use crate::sys::procstat;

use super::Primary;
use std::time::Instant;

/// The slot being recycled.
pub(super) struct Step {
    slot: u32,
    /// The worker being replaced.
    old: u64,
    /// Its replacement; None once the old worker was asked to stop.
    new: Option<u64>,
    reason: ExitReason,
}

/// The recycling limits of `cfg`, as the policy takes them.
pub(super) fn limits(cfg: &Config) -> Limits {
    Limits {
        max_memory: cfg.max_memory,
        max_requests: cfg.max_requests,
        max_requests_jitter: cfg.max_requests_jitter,
    }
}

impl Primary {
    /// Queues worker `key` for replacement, once (not again while its step is under way).
    pub(super) fn queue_recycle(&mut self, key: u64, reason: ExitReason) {
        if self.recycling.as_ref().is_some_and(|s| s.old == key) {
            return;
        }
        if self.recycle.push(key, reason) {
            self.changed = true;
        }
    }

    /// Says once, at start, when a configured listener is shared: every worker accepts its
    /// connections itself, so they never pass the primary and `max_requests` cannot count them.
    pub(super) fn warn_uncounted(&mut self) {
        let shared: Vec<usize> = (0..self.listeners.len())
            .filter(|&i| self.listeners[i].dispatch == Dispatch::Shared)
            .collect();
        if let Some(&first) = shared.first() {
            self.warn_uncounted_once(first);
        }
    }

    /// Says, once in the cluster's life, that connections of listener `index` are accepted by
    /// workers themselves from a shared socket and so are not counted by `max_requests`. For a
    /// worker's own socket of a listener the kernel turns, the turns count them instead, and
    /// for a shared socket whose workers count what they take, the share map: they are looked
    /// at periodically from then on.
    pub(super) fn warn_uncounted_once(&mut self, index: usize) {
        if self.cfg.max_requests.is_none() {
            return;
        }
        if self.listeners[index].group.is_some() || self.listeners[index].shares.is_some() {
            // The kernel's turns count what they give each worker's socket, and the share map
            // what each worker takes: looked at periodically from now on.
            let now = self.clock.now();
            self.ops.harvest_turns_from(now);
            return;
        }
        if !self.recycle.first_uncounted() {
            return;
        }
        self.out.push(Event::Warning {
            detail: format!(
                "max_requests counts the connections the primary hands to workers and those \
                 the kernel's turns give them; those of listener {} are accepted by the \
                 workers themselves from a shared socket (dispatch shared) and are not counted",
                self.listeners[index].name
            ),
        });
    }

    /// A connection handed to worker `key` was acknowledged: queues it once it has served
    /// its share (`max_requests` and its jitter).
    pub(super) fn count_request(&mut self, key: u64) {
        let Some(p) = self.procs.get(&key) else {
            return;
        };
        if p.is_live() && served_enough(p.connections_total, p.request_limit) {
            self.queue_recycle(key, ExitReason::MaxRequests);
        }
    }

    /// Once a period, reads the resident memory of every ready worker and queues those over
    /// `max_memory`.
    fn check_memory(&mut self, now: Instant) {
        let limits = limits(&self.cfg);
        if !self.recycle.memory_check_due(&limits, now) {
            return;
        }
        let over: Vec<u64> = self
            .procs
            .iter()
            .filter(|(k, p)| {
                p.is_live() && p.state == WorkerState::Ready && !self.recycle.contains(**k)
            })
            .filter(|(_, p)| {
                // The file opened for the status serves here too: one read per check.
                let stat = p.stat.get_or_init(|| procstat::StatFile::open(p.pid));
                stat.as_ref()
                    .and_then(procstat::StatFile::usage)
                    .is_some_and(|(_, rss)| limits.over_memory(rss))
            })
            .map(|(k, _)| *k)
            .collect();
        for key in over {
            self.queue_recycle(key, ExitReason::Memory);
        }
    }

    /// Moves the step under way on, or starts the next one.
    pub(super) fn manage_recycling(&mut self, now: Instant) {
        if self.stop_deadline.is_some() {
            self.recycle.clear();
            self.recycling = None;
            return;
        }
        self.check_memory(now);
        if let Some(step) = self.recycling.take() {
            self.recycling = self.advance_recycle(step);
            if self.recycling.is_some() {
                return;
            }
        }
        if self.reload.is_none() {
            self.begin_recycle();
        }
    }

    fn begin_recycle(&mut self) {
        let (procs, desired) = (&self.procs, self.desired);
        let next = self.recycle.pop(|k| {
            procs
                .get(&k)
                .is_some_and(|p| p.is_live() && (p.slot as usize) < desired)
        });
        let Some((old, reason)) = next else { return };
        let (slot, pid) = (self.procs[&old].slot, self.procs[&old].pid);
        self.out.push(Event::Recycling {
            id: slot,
            pid: pid as u32,
            reason,
        });
        let generation = self.slots[slot as usize].generation;
        let new = self.spawn_worker(slot, generation);
        if new.is_none() {
            // No replacement (the spawn failed and said why): the worker is past its limit
            // all the same; it stops, and the slot restarts as after any requested stop.
            self.stop_worker(old, reason, true);
        }
        self.recycling = Some(Step {
            slot,
            old,
            new,
            reason,
        });
    }

    /// The step once it moved as far as it can; None when it is over (the old worker exited).
    fn advance_recycle(&mut self, mut step: Step) -> Option<Step> {
        if let Some(new) = step.new {
            match self.procs.get(&new) {
                Some(p) if p.state == WorkerState::Ready => {
                    self.stop_worker(step.old, step.reason, true);
                    step.new = None;
                }
                // A reload (or a scale down) took the slot over: it replaces the old worker.
                Some(p) if !p.is_live() => step.new = None,
                Some(_) => return Some(step),
                None => {
                    self.out.push(Event::Warning {
                        detail: format!(
                            "the replacement of worker {} (recycled for {}) exited before it \
                             was ready; the worker is stopped and its slot restarted",
                            step.slot, step.reason
                        ),
                    });
                    self.stop_worker(step.old, step.reason, true);
                    step.new = None;
                }
            }
        }
        self.procs.contains_key(&step.old).then_some(step)
    }
}
