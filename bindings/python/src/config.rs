//! Keyword arguments → core `Config`. Only conversion happens here: every value is checked by
//! `Config::validate` in the core, whose errors name the field; mode names are parsed by the
//! core too. What the core cannot see (a negative number of seconds) is rejected here, naming
//! the field too.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::time::Duration;

use pyo3::prelude::*;

use crate::errors::to_py;
use rcluster_core::{Config, Dispatch, ListenAddr, Listener};

use crate::errors::{config_error, IntoPyResult};

/// Seconds (a Python float) as a Duration; the field is named when the value is not one.
pub fn seconds(field: &str, s: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| config_error(field, s, "must be a finite, non-negative number of seconds"))
}

fn opt_seconds(field: &str, s: Option<f64>, into: &mut Duration) -> PyResult<()> {
    if let Some(s) = s {
        *into = seconds(field, s)?;
    }
    Ok(())
}

/// The restart policy fields, in seconds where they are durations.
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
pub struct RestartArgs {
    pub mode: String,
    #[pyo3(default)]
    pub backoff_initial: Option<f64>,
    #[pyo3(default)]
    pub backoff_multiplier: Option<f64>,
    #[pyo3(default)]
    pub backoff_max: Option<f64>,
    #[pyo3(default)]
    pub jitter: Option<f64>,
    #[pyo3(default)]
    pub min_uptime: Option<f64>,
    #[pyo3(default)]
    pub max_restarts: Option<u32>,
    #[pyo3(default)]
    pub window: Option<f64>,
    #[pyo3(default)]
    pub no_restart_codes: Option<Vec<i32>>,
}

/// Everything `Supervisor(...)` accepts, already in plain types (the Python half normalises).
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
pub struct ConfigArgs {
    pub argv: Vec<Vec<u8>>,
    #[pyo3(default)]
    pub workers: Option<usize>,
    #[pyo3(default)]
    pub env: Option<Vec<(Vec<u8>, Vec<u8>)>>,
    #[pyo3(default)]
    pub cwd: Option<Vec<u8>>,
    #[pyo3(default)]
    pub ready_on: Option<String>,
    #[pyo3(default)]
    pub ready_timeout: Option<f64>,
    #[pyo3(default)]
    pub heartbeat_timeout: Option<f64>,
    #[pyo3(default)]
    pub kill_timeout: Option<f64>,
    #[pyo3(default)]
    pub restart: Option<RestartArgs>,
    #[pyo3(default)]
    pub max_message: Option<usize>,
    #[pyo3(default)]
    pub send_queue_limit: Option<usize>,
    #[pyo3(default)]
    pub event_queue_limit: Option<usize>,
    #[pyo3(default)]
    pub output: Option<String>,
    /// (name, address, dispatch, share) of each listener.
    #[pyo3(default)]
    pub listeners: Option<Vec<(String, String, String, bool)>>,
    #[pyo3(default)]
    pub max_inflight: Option<usize>,
    #[pyo3(default)]
    pub handoff_window: Option<usize>,
    #[pyo3(default)]
    pub queue_limit: Option<usize>,
    #[pyo3(default)]
    pub queue_timeout: Option<f64>,
    #[pyo3(default)]
    pub max_surge: Option<usize>,
    /// Seconds; 0 turns the bound off.
    #[pyo3(default)]
    pub ack_timeout: Option<f64>,
    #[pyo3(default)]
    pub max_memory: Option<u64>,
    #[pyo3(default)]
    pub max_requests: Option<u64>,
    #[pyo3(default)]
    pub max_requests_jitter: Option<u64>,
}

fn os(b: Vec<u8>) -> OsString {
    OsString::from_vec(b)
}

impl ConfigArgs {
    pub fn into_config(self) -> PyResult<Config> {
        let mut c = Config::new(self.argv.into_iter().map(os));
        if let Some(n) = self.workers {
            c.workers = n;
        }
        if let Some(env) = self.env {
            c.env = env.into_iter().map(|(k, v)| (os(k), os(v))).collect();
        }
        c.cwd = self.cwd.map(|p| PathBuf::from(os(p)));
        if let Some(r) = &self.ready_on {
            c.ready_on = r.parse().map_err(to_py)?;
        }
        opt_seconds("ready_timeout", self.ready_timeout, &mut c.ready_timeout)?;
        if let Some(hb) = self.heartbeat_timeout {
            c.heartbeat_timeout = Some(seconds("heartbeat_timeout", hb)?);
        }
        opt_seconds("kill_timeout", self.kill_timeout, &mut c.kill_timeout)?;
        if let Some(r) = self.restart {
            apply_restart(&mut c, r)?;
        }
        if let Some(m) = self.max_message {
            c.max_message = m;
        }
        if let Some(m) = self.send_queue_limit {
            c.send_queue_limit = m;
        }
        if let Some(m) = self.event_queue_limit {
            c.event_queue_limit = m;
        }
        if let Some(o) = &self.output {
            c.output = o.parse().map_err(to_py)?;
        }
        for (name, addr, dispatch, share) in self.listeners.unwrap_or_default() {
            let addr: ListenAddr = addr.parse().py()?;
            let dispatch: Dispatch = dispatch.parse().py()?;
            let mut listener = Listener::new(name, addr, dispatch);
            listener.share = share;
            c.listeners.push(listener);
        }
        match self.ack_timeout {
            Some(0.0) => c.ack_timeout = None,
            Some(t) => c.ack_timeout = Some(seconds("ack_timeout", t)?),
            None => {}
        }
        c.max_inflight = self.max_inflight;
        if let Some(w) = self.handoff_window {
            c.handoff_window = w;
        }
        if let Some(q) = self.queue_limit {
            c.queue_limit = q;
        }
        opt_seconds("queue_timeout", self.queue_timeout, &mut c.queue_timeout)?;
        if let Some(s) = self.max_surge {
            c.max_surge = s;
        }
        c.max_memory = self.max_memory;
        c.max_requests = self.max_requests;
        if let Some(j) = self.max_requests_jitter {
            c.max_requests_jitter = j;
        }
        Ok(c)
    }
}

fn apply_restart(c: &mut Config, r: RestartArgs) -> PyResult<()> {
    let p = &mut c.restart;
    p.mode = r.mode.parse().map_err(to_py)?;
    opt_seconds(
        "restart.backoff_initial",
        r.backoff_initial,
        &mut p.backoff_initial,
    )?;
    if let Some(m) = r.backoff_multiplier {
        p.backoff_multiplier = m;
    }
    opt_seconds("restart.backoff_max", r.backoff_max, &mut p.backoff_max)?;
    if let Some(j) = r.jitter {
        p.jitter = j;
    }
    opt_seconds("restart.min_uptime", r.min_uptime, &mut p.min_uptime)?;
    if let Some(m) = r.max_restarts {
        p.max_restarts = m;
    }
    opt_seconds("restart.window", r.window, &mut p.window)?;
    if let Some(codes) = r.no_restart_codes {
        p.no_restart_codes = codes;
    }
    Ok(())
}
