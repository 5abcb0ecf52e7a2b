//! How the cluster is seen from outside, without a daemon: the service manager's
//! notifications (`systemd`) and, opt-in, health, readiness and Prometheus metrics over HTTP,
//! all served by the loop itself. The loop calls in at two points: at the end of each turn,
//! with the events of that turn (`after_turn`), and for timers (`ops_timers`).

pub(crate) mod systemd;

use std::time::Instant;

use super::Primary;
use crate::events::{Event, WorkerState};
use systemd::{Systemd, Turn};

/// The loop's state for being seen from outside.
#[derive(Default)]
pub(crate) struct Ops {
    systemd: Option<Systemd>,
}

impl Ops {
    /// What the environment asks for (a service manager's socket); a problem with it is
    /// returned as a warning for the host, and the cluster runs anyway.
    pub fn from_env(now: Instant) -> (Ops, Option<Event>) {
        let (systemd, warning) = match Systemd::from_env(now) {
            Ok(s) => (s, None),
            Err(detail) => (None, Some(Event::Warning { detail })),
        };
        (Ops { systemd }, warning)
    }

    /// When the next timer of this part is due.
    pub fn next_at(&self) -> Option<Instant> {
        self.systemd.as_ref().and_then(Systemd::next_at)
    }
}

impl Primary {
    /// Workers ready for work (not draining).
    fn ready_count(&self) -> usize {
        self.procs
            .values()
            .filter(|p| p.state == WorkerState::Ready && p.stopping.is_none())
            .count()
    }

    /// Hands the events gathered so far to the host, after the outside has seen them.
    pub(super) fn emit(&mut self) {
        self.ops_after_turn();
        self.shared.events.push_all(&mut self.out);
    }

    /// Tells the outside what changed since the last events went out. Counting ready workers
    /// costs one pass over them, so it is done only after lifecycle events or a stop.
    fn ops_after_turn(&mut self) {
        let Some(sd) = self.ops.systemd.as_ref() else {
            return;
        };
        let lifecycle = self
            .out
            .iter()
            .any(|e| !matches!(e, Event::Message { .. } | Event::OutputDropped { .. }));
        let stopping = self.stop_deadline.is_some();
        let stop_news = stopping && !sd.stopping_said();
        if !lifecycle && !stop_news {
            return;
        }
        let turn = Turn {
            events: &self.out,
            ready: self.ready_count(),
            desired: self.desired,
            generation: self.generation,
            stopping,
        };
        let mut warnings = Vec::new();
        if let Some(sd) = self.ops.systemd.as_mut() {
            sd.after_turn(&turn, &mut warnings);
        }
        self.out.append(&mut warnings);
    }

    /// Timers of this part that are due.
    pub(super) fn ops_timers(&mut self, now: Instant) {
        if let Some(sd) = self.ops.systemd.as_mut() {
            sd.tick(now, &mut self.out);
        }
    }
}
