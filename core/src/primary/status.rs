//! The status of a running cluster, as `rcluster status --json`, `cluster.stats()` and the
//! metrics endpoint see it. The key names are a promise to scripts (see `docs/control.md`):
//! fields may be added, never renamed.

use std::collections::BTreeMap;
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::events::WorkerState;
use crate::primary::Primary;
use crate::sys::listen::Dispatch;
use crate::sys::procstat;

/// One cluster, as of the moment the loop answered.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The cluster's name (`Config::name`): its control socket is `NAME.sock`.
    pub name: String,
    /// The primary's pid.
    pub pid: u32,
    /// rcluster's version.
    pub version: String,
    pub uptime_s: f64,
    /// The newest generation (raised by each reload).
    pub generation: u32,
    pub workers_desired: usize,
    pub listeners: Vec<ListenerStatus>,
    /// A rolling reload is under way.
    pub reloading: bool,
    /// The supervisor is stopping.
    #[serde(default)]
    pub stopping: bool,
    /// The control socket's path, when it listens.
    #[serde(default)]
    pub control: Option<String>,
    /// Every worker process, and every slot that has none running (state `exited`).
    pub workers: Vec<WorkerStatus>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ListenerStatus {
    pub name: String,
    pub address: String,
    /// `round-robin`, `least-connections`, `sticky` or `shared`.
    pub dispatch: String,
    /// Accepted connections waiting in the primary for a worker.
    #[serde(default)]
    pub queue_length: usize,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerStatus {
    pub slot: u32,
    /// 0 for a slot with no process.
    pub pid: u32,
    pub generation: u32,
    /// `starting`, `online`, `ready`, `draining` or `exited`.
    pub state: String,
    pub uptime_s: f64,
    /// Restarts of this slot so far, and by the reason of the exit that caused each.
    pub restarts: u32,
    pub restarts_by_reason: BTreeMap<String, u32>,
    pub last_exit: Option<LastExit>,
    /// CPU seconds (user + system) and resident memory, from `/proc`; 0 without a process.
    pub cpu_s: f64,
    pub rss_bytes: u64,
    /// Connections the primary handed to it that it holds now (counted where the worker
    /// reports closes: least-connections or `max_inflight`), and handed in all.
    pub connections_active: u64,
    pub connections_total: u64,
    /// Seconds since the worker last sent anything; None without a process.
    pub heartbeat_age_s: Option<f64>,
    /// Bytes queued towards the worker, not yet written to its socket.
    pub queue_bytes: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct LastExit {
    pub pid: u32,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: String,
}

impl Status {
    /// The status object as one line of JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).unwrap_or_else(|_| "{}".into())
    }

    /// Parses what `to_json` (or the control socket) gave.
    pub fn from_json(text: &str) -> crate::error::Result<Status> {
        serde_json::from_str(text)
            .map_err(|e| crate::error::Error::Protocol(format!("status object: {e}")))
    }
}

pub(crate) fn dispatch_name(d: Dispatch) -> &'static str {
    match d {
        Dispatch::RoundRobin => "round-robin",
        Dispatch::LeastConnections => "least-connections",
        Dispatch::Sticky => "sticky",
        Dispatch::Shared => "shared",
    }
}

/// What the loop counts per slot for the status, beyond what `Slot` keeps for the policy.
#[derive(Debug, Default, Clone)]
pub(crate) struct SlotCounters {
    pub restarts_by_reason: BTreeMap<&'static str, u32>,
}

impl Primary {
    /// The status as of now. O(workers), two small `/proc` reads per worker.
    pub(crate) fn status(&self) -> Status {
        let now = self.clock.now();
        let mut workers: Vec<WorkerStatus> = self
            .procs
            .values()
            .map(|p| {
                let (cpu_s, rss_bytes) = procstat::usage(p.pid).unwrap_or((0.0, 0));
                let mut w = self.slot_status(p.slot, p.generation);
                w.pid = p.pid as u32;
                w.state = p.state.as_str().into();
                w.uptime_s = secs(now, p.spawned_at);
                w.cpu_s = cpu_s;
                w.rss_bytes = rss_bytes;
                w.connections_active = p.active.len() as u64;
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
            control: self.control.as_ref().map(|c| c.path_string()),
            workers,
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
