//! The status of a running cluster, as `rcluster status --json`, `cluster.stats()` and the
//! metrics endpoint see it. The key names are a promise to scripts (see `docs/control.md`):
//! fields may be added, never renamed.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

use crate::sys::listen::Dispatch;

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
    /// The task counters, when this supervisor runs a pool's workers (absent otherwise).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool: Option<PoolStatus>,
}

/// A pool's counters in the status object (`rcluster_core::pool::PoolStats`, times in seconds).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct PoolStatus {
    /// Tasks waiting in the queue.
    pub queued: usize,
    /// Tasks given to a worker and not answered yet (running, or sent ahead).
    pub running: usize,
    pub completed: u64,
    pub failed: u64,
    /// Failed tasks by reason: error, crashed, timeout, cancelled, shutdown, no_workers.
    pub failed_by_reason: BTreeMap<String, u64>,
    pub retried: u64,
    pub requeued: u64,
    pub recycled: u64,
    pub workers_ready: usize,
    pub wait_total_s: f64,
    pub wait_max_s: f64,
    pub run_total_s: f64,
    pub run_max_s: f64,
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
