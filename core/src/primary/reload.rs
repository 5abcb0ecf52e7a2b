//! Rolling reload: every slot gets a worker of the new generation, at most `max_surge` slots at
//! a time. In each slot the new worker must be ready before the old one is asked to stop, and
//! the slot is done once the old one has exited.
//!
//! A reload asked for while one runs (a deploy that lands mid-reload) is not merged into it:
//! the running one replaces workers with code that may already be out of date. It is queued
//! and starts, with a generation of its own, when the running one ends. One queued reload
//! is enough: it will run whatever is newest when it starts.

use std::collections::VecDeque;
use std::sync::Arc;

use super::Primary;
use crate::error::{Error, Result};
use crate::events::{Event, WorkerState};
use crate::policy::ExitReason;

pub(super) struct Reload {
    pub(super) generation: u32,
    pending: VecDeque<u32>,
    active: Vec<Step>,
}

struct Step {
    slot: u32,
    /// The slot's generation before, restored if the reload fails.
    prev: u32,
    /// The new worker; None once it is ready and the old ones were told to stop.
    new: Option<u64>,
}

impl Primary {
    /// Starts a reload, or queues one behind the reload under way; returns the generation it
    /// will roll out.
    pub(super) fn start_reload(&mut self) -> Result<u32> {
        if self.stop_deadline.is_some() {
            return Err(Error::Stopped);
        }
        if let Some(r) = &self.reload {
            // Only reloads change `generation`, so the queued one will get the next.
            self.reload_queued = true;
            return Ok(r.generation + 1);
        }
        Ok(self.begin_reload())
    }

    /// The reload under way ended: start the one queued behind it, if any.
    fn start_queued_reload(&mut self) {
        if std::mem::take(&mut self.reload_queued) {
            self.begin_reload();
            self.changed = true;
        }
    }

    /// The supervisor is stopping: the queued reload will not run.
    pub(super) fn drop_queued_reload(&mut self) {
        if std::mem::take(&mut self.reload_queued) {
            self.out.push(Event::ReloadFailed {
                generation: self.generation + 1,
                reason: "the supervisor is stopping".into(),
            });
        }
    }

    fn begin_reload(&mut self) -> u32 {
        self.generation += 1;
        self.reload = Some(Reload {
            generation: self.generation,
            pending: (0..self.desired as u32).collect(),
            active: Vec::new(),
        });
        self.out.push(Event::ReloadStarted {
            generation: self.generation,
        });
        self.generation
    }

    pub(super) fn step_reload(&mut self) {
        let Some(mut r) = self.reload.take() else {
            return;
        };
        if let Err((slot, reason)) = self.advance(&mut r) {
            return self.fail_reload(r, slot, reason);
        }
        while r.active.len() < self.cfg.max_surge {
            let Some(slot) = r.pending.pop_front() else {
                break;
            };
            if slot as usize >= self.desired {
                continue;
            }
            let s = &mut self.slots[slot as usize];
            let prev = s.generation;
            s.generation = r.generation;
            s.gave_up = false;
            s.start_at = None;
            s.history.reset();
            let Some(key) = self.spawn_worker(slot, r.generation) else {
                r.active.push(Step {
                    slot,
                    prev,
                    new: None,
                });
                let reason = format!(
                    "worker {slot} of generation {} could not be started",
                    r.generation
                );
                return self.fail_reload(r, slot, reason);
            };
            r.active.push(Step {
                slot,
                prev,
                new: Some(key),
            });
        }
        if r.active.is_empty() && r.pending.is_empty() {
            self.out.push(Event::ReloadDone {
                generation: r.generation,
            });
            return self.start_queued_reload();
        }
        self.reload = Some(r);
    }

    /// Moves every slot under way as far as it can go; the failing slot and why, if one failed.
    fn advance(&mut self, r: &mut Reload) -> std::result::Result<(), (u32, String)> {
        for step in r.active.iter_mut() {
            if let Some(key) = step.new {
                match self.procs.get(&key).map(|p| p.state) {
                    Some(WorkerState::Ready) => {
                        let old: Vec<u64> = self
                            .procs
                            .iter()
                            .filter(|(_, p)| p.slot == step.slot && p.generation < r.generation)
                            .map(|(k, _)| *k)
                            .collect();
                        for k in old {
                            self.stop_worker(k, ExitReason::Requested, true);
                        }
                        step.new = None;
                    }
                    Some(_) => {}
                    None => {
                        // Its exit, just reaped, says whether it was killed for being late.
                        let last = self.slots.get(step.slot as usize).and_then(|s| s.last_exit);
                        if last.is_some_and(|e| e.reason == ExitReason::ReadyTimeout) {
                            return Err((step.slot, self.missed_ready(step.slot, r.generation)));
                        }
                        let reason = format!(
                            "worker {} of generation {} exited before it was ready",
                            step.slot, r.generation
                        );
                        return Err((step.slot, reason));
                    }
                }
            }
        }
        let procs = &self.procs;
        r.active.retain(|s| {
            s.new.is_some()
                || procs
                    .values()
                    .any(|p| p.slot == s.slot && p.generation < r.generation)
        });
        Ok(())
    }

    fn missed_ready(&self, slot: u32, generation: u32) -> String {
        format!(
            "worker {slot} of generation {generation} missed its ready timeout \
             (ready_timeout = {:?}) and was killed",
            self.cfg.ready_timeout
        )
    }

    /// Ends a reload that cannot go on. Slots under way keep their old worker, if they still
    /// have one, and with it the old generation (so that the policy restarts it as before);
    /// their new workers that are not ready yet are stopped.
    fn fail_reload(&mut self, r: Reload, failed: u32, reason: String) {
        for step in &r.active {
            let old_live = self
                .procs
                .values()
                .find(|p| p.slot == step.slot && p.generation == step.prev && p.is_live());
            let Some(old) = old_live else { continue };
            let link = Arc::clone(&old.link);
            let s = &mut self.slots[step.slot as usize];
            s.generation = step.prev;
            s.start_at = None;
            self.shared.routes.write().unwrap().insert(step.slot, link);
            if let (Some(key), true) = (step.new, step.slot != failed) {
                self.stop_worker(key, ExitReason::Requested, true);
            }
        }
        self.out.push(Event::ReloadFailed {
            generation: r.generation,
            reason,
        });
        self.start_queued_reload();
    }
}
