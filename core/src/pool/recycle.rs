//! Replacing workers after `max_tasks_per_worker`, one at a time, with the replacement started
//! before the old worker retires: an extra slot (the spare) is added, the old worker keeps
//! running tasks until the spare is ready, then retires and restarts while the spare runs
//! tasks, and the spare goes once the old slot's new worker is ready. No task waits for a
//! start, and no two workers are replaced together (workers given equal shares of tasks reach
//! the limit together).

use super::sched::{Sched, Slot};

/// Where the replacement of one worker stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Recycle {
    Idle,
    /// `old` reached its limit; the `spare` slot is starting, and `old` runs tasks until it is
    /// ready.
    Spare {
        old: u32,
        spare: u32,
    },
    /// `old` takes no more tasks and restarts once its last one is answered; the spare (when
    /// one could be added) runs tasks meanwhile.
    Restart {
        old: u32,
        spare: Option<u32>,
    },
    /// `old` is back: the spare takes no more tasks and is removed once its last is answered.
    Retire {
        spare: u32,
    },
}

impl Sched {
    /// `slot` answered a task: when it reached its limit and no worker is being replaced,
    /// its replacement begins.
    pub(super) fn recycle_after_answer(&mut self, slot: u32) {
        let Some(s) = self.slots.get(slot as usize) else {
            return;
        };
        let due = self.max_tasks.is_some_and(|m| s.answered >= m) && !s.ending;
        if due && self.recycle == Recycle::Idle {
            self.recycle = match self.sup.scale_by(1) {
                Ok((before, after)) if after == before + 1 => {
                    self.slots.resize_with(after, Slot::default);
                    Recycle::Spare {
                        old: slot,
                        spare: before as u32,
                    }
                }
                // No room for one more worker: the old one is replaced in place.
                _ => {
                    self.retire(slot, true);
                    Recycle::Restart {
                        old: slot,
                        spare: None,
                    }
                }
            };
        }
        self.step_recycle();
    }

    /// Worker `slot` said it is ready: the spare takes over from the old worker, or the old
    /// slot's new worker from the spare.
    pub(super) fn recycle_on_ready(&mut self, slot: u32) {
        match self.recycle {
            Recycle::Spare { old, spare } if slot == spare => {
                self.retire(old, true);
                self.recycle = Recycle::Restart {
                    old,
                    spare: Some(spare),
                };
            }
            Recycle::Restart { old, spare } if slot == old => {
                self.recycle = match spare {
                    Some(spare) => {
                        self.retire(spare, false);
                        Recycle::Retire { spare }
                    }
                    None => Recycle::Idle,
                };
            }
            _ => {}
        }
        self.step_recycle();
    }

    /// Slot `slot` stays down (restarted too often): a spare that cannot start is removed
    /// and the old worker replaced in place; an old slot that cannot come back ends the
    /// replacement (the spare stays, as a worker like the others).
    pub(super) fn recycle_gave_up(&mut self, slot: u32) {
        match self.recycle {
            Recycle::Spare { old, spare } if slot == spare => {
                self.remove_spare(spare);
                self.retire(old, true);
                self.recycle = Recycle::Restart { old, spare: None };
            }
            Recycle::Restart { old, .. } if slot == old => self.recycle = Recycle::Idle,
            _ => {}
        }
        self.step_recycle();
    }

    /// Takes the next step that waits for no event: restarts the old worker once its last
    /// task is answered, removes the spare once its last task is answered.
    pub(super) fn step_recycle(&mut self) {
        if let Recycle::Restart { old, .. } = self.recycle {
            if let Some(s) = self.slots.get_mut(old as usize) {
                if s.recycle && s.ready && s.tasks.is_empty() {
                    s.ready = false;
                    s.recycle = false;
                    self.shared.inner.lock().unwrap().stats.recycled += 1;
                    let _ = self.sup.restart_worker(old);
                }
            }
        }
        if let Recycle::Retire { spare } = self.recycle {
            if self
                .slots
                .get(spare as usize)
                .is_none_or(|s| s.tasks.is_empty())
            {
                self.remove_spare(spare);
                self.recycle = Recycle::Idle;
            }
        }
    }

    /// Gives `slot` no more tasks; `restart`: it restarts once its last task is answered.
    fn retire(&mut self, slot: u32, restart: bool) {
        if let Some(s) = self.slots.get_mut(slot as usize) {
            s.ending = true;
            s.recycle = restart;
        }
    }

    /// Removes the spare slot (the last one): the supervisor stops its worker gracefully.
    fn remove_spare(&mut self, spare: u32) {
        if spare as usize + 1 == self.slots.len() {
            let _ = self.sup.scale_by(-1);
            self.slots.truncate(spare as usize);
        }
    }
}
