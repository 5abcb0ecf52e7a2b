//! The loop's side of the status object (`status.rs`): built from the slot table and the
//! worker records when asked for.

use std::collections::BTreeMap;
use std::time::Instant;

use crate::events::WorkerState;
use crate::primary::status::{dispatch_name, LastExit, ListenerStatus, Status, WorkerStatus};
use crate::primary::Primary;
use crate::sys::procstat;

impl Primary {
    /// The status as of now. O(workers), two small `/proc` reads per worker.
    pub(crate) fn status(&self) -> Status {
        let now = self.clock.now();
        let mut workers: Vec<WorkerStatus> = self
            .procs
            .iter()
            .map(|(&key, p)| {
                let stat = p.stat.get_or_init(|| procstat::StatFile::open(p.pid));
                let usage = stat.as_ref().and_then(procstat::StatFile::usage);
                let (cpu_s, rss_bytes) = usage.unwrap_or((0.0, 0));
                let mut w = self.slot_status(p.slot, p.generation);
                w.pid = p.pid as u32;
                w.state = p.state.as_str().into();
                w.uptime_s = secs(now, p.spawned_at);
                w.cpu_s = cpu_s;
                w.rss_bytes = rss_bytes;
                w.connections_active =
                    (p.active.len() as u64).saturating_add(self.turns_in_hand(key));
                w.connections_total = p.connections_total;
                w.heartbeat_age_s = Some(secs(now, p.last_seen));
                w.queue_bytes = p.link.queued_bytes() as u64;
                w
            })
            .collect();
        for (id, slot) in self.slots.iter().enumerate().take(self.desired) {
            if !self.procs.values().any(|p| p.slot == id as u32) {
                workers.push(self.slot_status(id as u32, slot.generation));
            }
        }
        workers.sort_by_key(|w| (w.slot, w.generation, w.pid));
        Status {
            name: self.name.clone(),
            pid: std::process::id(),
            version: env!("CARGO_PKG_VERSION").into(),
            uptime_s: secs(now, self.started_at),
            generation: self.generation,
            workers_desired: self.desired,
            listeners: self.listener_status(),
            reloading: self.reload.is_some(),
            stopping: self.stop_deadline.is_some(),
            control: self.control_path.clone(),
            workers,
            pool: self.shared.pool_status.get().map(|counters| counters()),
        }
    }

    /// A slot's part of a worker's status (a slot with no process: all of it).
    fn slot_status(&self, id: u32, generation: u32) -> WorkerStatus {
        let slot = self.slots.get(id as usize);
        WorkerStatus {
            slot: id,
            pid: 0,
            generation,
            state: WorkerState::Exited.as_str().into(),
            uptime_s: 0.0,
            restarts: slot.map_or(0, |s| s.restarts),
            restarts_by_reason: slot.map_or_else(BTreeMap::new, |s| {
                s.counters
                    .restarts_by_reason
                    .iter()
                    .map(|(k, v)| (k.to_string(), *v))
                    .collect()
            }),
            last_exit: slot.and_then(|s| s.last_exit).map(|e| LastExit {
                pid: e.pid,
                code: e.code,
                signal: e.signal,
                reason: e.reason.as_str().into(),
            }),
            cpu_s: 0.0,
            rss_bytes: 0,
            connections_active: 0,
            connections_total: 0,
            heartbeat_age_s: None,
            queue_bytes: 0,
        }
    }

    fn listener_status(&self) -> Vec<ListenerStatus> {
        self.listeners
            .iter()
            .enumerate()
            .map(|(i, l)| ListenerStatus {
                name: l.name.clone(),
                address: l.addr.to_string(),
                dispatch: dispatch_name(l.dispatch).into(),
                queue_length: self.waiting.iter().filter(|w| w.listener == i).count(),
            })
            .collect()
    }
}

fn secs(now: Instant, since: Instant) -> f64 {
    now.saturating_duration_since(since).as_secs_f64()
}
