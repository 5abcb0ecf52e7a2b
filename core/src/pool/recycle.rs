//! Replacing workers after `max_tasks_per_worker` (or above `max_worker_memory`), one at a time, with the replacement started
//! before the old worker retires: an extra slot (the spare) is added, the old worker keeps
//! running tasks until the spare is ready, then retires and restarts while the spare runs
//! tasks, and the spare goes once the old slot's new worker is ready. No task waits for a
//! start, and no two workers are replaced together (workers given equal shares of tasks reach
//! the limit together).

use std::time::{Duration, Instant};

use super::sched::{Sched, Slot};

/// How often one worker's memory is looked at, at most.
const MEMORY_EVERY: Duration = Duration::from_millis(100);

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
        let Some(s) = self.slots.get_mut(slot as usize) else {
            return;
        };
        let due = !s.ending
            && (self.max_tasks.is_some_and(|m| s.answered >= m)
                || self.max_memory.is_some_and(|m| over_memory(s, m)));
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

/// Whether the worker of `s` uses more than `limit` bytes of resident memory, looked at most
/// every `MEMORY_EVERY` (reading /proc costs a few microseconds, an answer may come every one).
fn over_memory(s: &mut Slot, limit: u64) -> bool {
    let now = Instant::now();
    if s.memory_checked.is_some_and(|t| now - t < MEMORY_EVERY) {
        return false;
    }
    s.memory_checked = Some(now);
    resident_bytes(s.pid).is_some_and(|rss| rss > limit)
}

/// Resident memory of process `pid` in bytes (the second field of /proc/PID/statm, in pages).
fn resident_bytes(pid: u32) -> Option<u64> {
    let statm = std::fs::read_to_string(format!("/proc/{pid}/statm")).ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf only reads a configuration value.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * u64::try_from(page).ok()?)
}
