//! `/metrics`: the cluster in the Prometheus text format (version 0.0.4). Labels are slots
//! and listener names, never pids, so that a series lives as long as the slot does.

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::Ordering;

use super::process::{self, Units};
use super::Primary;
use crate::events::WorkerState;
use crate::sys::procstat::StatFile;

const STATES: [WorkerState; 4] = [
    WorkerState::Starting,
    WorkerState::Online,
    WorkerState::Ready,
    WorkerState::Draining,
];

/// Writes `# HELP` and `# TYPE` of a metric family.
fn family(out: &mut String, name: &str, kind: &str, help: &str) {
    let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} {kind}");
}

/// A label value with `\`, `"` and newlines escaped.
fn label(v: &str) -> String {
    v.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

impl Primary {
    pub(crate) fn render_metrics(&mut self) -> String {
        let started = std::time::Instant::now();
        self.harvest_turns();
        let mut out = String::with_capacity(4096 + 256 * self.procs.len());
        self.render_workers(&mut out);
        self.render_traffic(&mut out);
        self.render_reloads(&mut out);
        render_process(&mut out);
        family(
            &mut out,
            "rcluster_scrape_duration_seconds",
            "gauge",
            "How long the loop took to build this answer (the /proc reads included).",
        );
        let _ = writeln!(
            out,
            "rcluster_scrape_duration_seconds {}",
            started.elapsed().as_secs_f64()
        );
        out
    }

    fn render_workers(&mut self, out: &mut String) {
        family(out, "rcluster_build_info", "gauge", "Version of rcluster.");
        let _ = writeln!(
            out,
            "rcluster_build_info{{version=\"{}\"}} 1",
            env!("CARGO_PKG_VERSION")
        );
        family(
            out,
            "rcluster_workers",
            "gauge",
            "Worker processes by state.",
        );
        for state in STATES {
            let n = self.procs.values().filter(|p| p.state == state).count();
            let _ = writeln!(out, "rcluster_workers{{state=\"{}\"}} {n}", state.as_str());
        }
        family(
            out,
            "rcluster_workers_desired",
            "gauge",
            "Worker slots wanted.",
        );
        let _ = writeln!(out, "rcluster_workers_desired {}", self.desired);
        family(
            out,
            "rcluster_worker_restarts_total",
            "counter",
            "Worker exits by slot and reason (a reload's, a restart's and a scale-down's are \
             requested); a stop's own exits are not counted.",
        );
        for ((slot, reason), n) in &self.ops.counters.restarts {
            let _ = writeln!(
                out,
                "rcluster_worker_restarts_total{{slot=\"{slot}\",reason=\"{reason}\"}} {n}"
            );
        }
        self.render_usage(out);
    }

    /// CPU and memory of each slot's processes (two while a reload replaces the slot's).
    fn render_usage(&self, out: &mut String) {
        // One pread of the worker's `/proc/PID/stat`, kept open with its record (the status
        // reads the same file): a scrape of many workers is mostly these reads.
        let mut by_slot: BTreeMap<u32, (f64, u64)> = BTreeMap::new();
        for p in self.procs.values() {
            let stat = p.stat.get_or_init(|| StatFile::open(p.pid));
            if let Some((cpu_s, rss)) = stat.as_ref().and_then(StatFile::usage) {
                let e = by_slot.entry(p.slot).or_default();
                e.0 += cpu_s;
                e.1 += rss;
            }
        }
        family(
            out,
            "rcluster_worker_cpu_seconds_total",
            "counter",
            "CPU time (user and system) of the slot's worker processes, in seconds.",
        );
        for (slot, (cpu, _)) in &by_slot {
            let _ = writeln!(
                out,
                "rcluster_worker_cpu_seconds_total{{slot=\"{slot}\"}} {cpu}"
            );
        }
        family(
            out,
            "rcluster_worker_resident_memory_bytes",
            "gauge",
            "Resident memory of the slot's worker processes, in bytes.",
        );
        for (slot, (_, rss)) in &by_slot {
            let _ = writeln!(
                out,
                "rcluster_worker_resident_memory_bytes{{slot=\"{slot}\"}} {rss}"
            );
        }
    }

    fn render_traffic(&self, out: &mut String) {
        let name = |i: usize| self.listeners.get(i).map(|l| label(&l.name));
        family(
            out,
            "rcluster_connections_dispatched_total",
            "counter",
            "Connections the primary handed to a worker, by listener and slot.",
        );
        for ((l, slot), n) in &self.ops.counters.dispatched {
            if let Some(l) = name(*l) {
                let _ = writeln!(
                    out,
                    "rcluster_connections_dispatched_total{{listener=\"{l}\",slot=\"{slot}\"}} {n}"
                );
            }
        }
        family(
            out,
            "rcluster_connections_active",
            "gauge",
            "Connections a worker holds: handed and not yet acknowledged, and, where the \
             primary learns of closes (least-connections, max_inflight), not yet closed; for \
             a worker that counts the kernel's turns, those not yet closed.",
        );
        let mut active: BTreeMap<u32, usize> = BTreeMap::new();
        for (&key, p) in &self.procs {
            let n = active.entry(p.slot).or_default();
            *n = n
                .saturating_add(p.unacked.len() + p.active.len())
                .saturating_add(self.turns_in_hand(key) as usize);
        }
        for (slot, n) in active {
            let _ = writeln!(out, "rcluster_connections_active{{slot=\"{slot}\"}} {n}");
        }
        family(
            out,
            "rcluster_dispatch_queue_length",
            "gauge",
            "Accepted connections waiting in the primary for a worker, by listener.",
        );
        let mut queued = vec![0usize; self.listeners.len()];
        for w in &self.waiting {
            if let Some(n) = queued.get_mut(w.listener) {
                *n += 1;
            }
        }
        for (i, n) in queued.into_iter().enumerate() {
            if let Some(l) = name(i) {
                let _ = writeln!(
                    out,
                    "rcluster_dispatch_queue_length{{listener=\"{l}\"}} {n}"
                );
            }
        }
        family(
            out,
            "rcluster_ipc_messages_total",
            "counter",
            "User messages between the host and workers: in (from workers), out (to workers).",
        );
        let (inn, outn) = (
            self.shared.events.messages_queued(),
            self.shared.messages_out.load(Ordering::Relaxed),
        );
        let _ = writeln!(out, "rcluster_ipc_messages_total{{direction=\"in\"}} {inn}");
        let _ = writeln!(
            out,
            "rcluster_ipc_messages_total{{direction=\"out\"}} {outn}"
        );
    }

    fn render_reloads(&self, out: &mut String) {
        let c = &self.ops.counters;
        family(
            out,
            "rcluster_reloads_total",
            "counter",
            "Rolling reloads that ended, by result.",
        );
        let _ = writeln!(
            out,
            "rcluster_reloads_total{{result=\"done\"}} {}\nrcluster_reloads_total{{result=\"failed\"}} {}",
            c.reloads_done, c.reloads_failed
        );
        family(
            out,
            "rcluster_reload_duration_seconds",
            "gauge",
            "How long the last rolling reload took, in seconds (0 before the first).",
        );
        let secs = c.last_reload.map_or(0.0, |d| d.as_secs_f64());
        let _ = writeln!(out, "rcluster_reload_duration_seconds {secs}");
    }
}

/// The standard `process_*` metrics of the primary.
fn render_process(out: &mut String) {
    let units = Units::get();
    let Some(u) = process::usage(0, units, &mut Vec::with_capacity(512)) else {
        return;
    };
    let fds = crate::sys::open_fd_count();
    let max = crate::sys::fd_limit();
    for (name, kind, help, value) in [
        (
            "process_cpu_seconds_total",
            "counter",
            "Total user and system CPU time spent in seconds.",
            u.cpu_s,
        ),
        (
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
            u.rss_bytes as f64,
        ),
        (
            "process_virtual_memory_bytes",
            "gauge",
            "Virtual memory size in bytes.",
            u.vsize_bytes as f64,
        ),
        (
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since unix epoch in seconds.",
            units.boot_time + u.start_s,
        ),
        (
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
            fds as f64,
        ),
        (
            "process_max_fds",
            "gauge",
            "Maximum number of open file descriptors.",
            max as f64,
        ),
    ] {
        family(out, name, kind, help);
        let _ = writeln!(out, "{name} {value}");
    }
}
