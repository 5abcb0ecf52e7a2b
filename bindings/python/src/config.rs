//! Keyword arguments → core `Config`. Only conversion happens here: every value is checked by
//! the core, whose errors name the field; mode names are parsed by the core too. A Python
//! number the field's type cannot hold (a negative count, a negative number of seconds) goes
//! through the core's conversions (`Config::count`, `Config::seconds`), which refuse it with
//! the field's own rule.

use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::PathBuf;
use std::time::Duration;

use pyo3::prelude::*;

use crate::errors::to_py;
use rcluster_core::{Config, Dispatch, ListenAddr, Listener};

use crate::errors::{config_error, IntoPyResult};

/// Seconds (a Python float) for a wait or a stop, not an option: any duration a float gives.
pub fn wait_seconds(field: &str, s: f64) -> PyResult<Duration> {
    Duration::try_from_secs_f64(s)
        .map_err(|_| config_error(field, s, "must be a finite, non-negative number of seconds"))
}

/// Seconds (a Python float) as the duration of the option `field`, by the field's rule.
fn seconds(field: &'static str, s: f64) -> PyResult<Duration> {
    Config::seconds(field, s).py()
}

fn opt_seconds(field: &'static str, s: Option<f64>, into: &mut Duration) -> PyResult<()> {
    if let Some(s) = s {
        *into = seconds(field, s)?;
    }
    Ok(())
}

/// A Python int as the integer of `field`, by the field's rule (negative ones included).
fn count<T: TryFrom<i128>>(field: &'static str, v: i64) -> PyResult<T> {
    Config::count(field, i128::from(v)).py()
}

fn opt_count<T: TryFrom<i128>>(field: &'static str, v: Option<i64>, into: &mut T) -> PyResult<()> {
    if let Some(v) = v {
        *into = count(field, v)?;
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
    pub max_restarts: Option<i64>,
    #[pyo3(default)]
    pub window: Option<f64>,
    #[pyo3(default)]
    pub no_restart_codes: Option<Vec<i64>>,
}

/// (name, address, dispatch, share) of a listener; no name: the core's default.
pub type ListenerArgs = (Option<String>, String, String, bool);

/// Everything `Supervisor(...)` accepts, already in plain types (the Python half normalises).
#[derive(FromPyObject)]
#[pyo3(from_item_all)]
pub struct ConfigArgs {
    pub argv: Vec<Vec<u8>>,
    #[pyo3(default)]
    pub workers: Option<i64>,
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
    pub max_message: Option<i64>,
    #[pyo3(default)]
    pub send_queue_limit: Option<i64>,
    #[pyo3(default)]
    pub event_queue_limit: Option<i64>,
    #[pyo3(default)]
    pub output: Option<String>,
    /// (name, address, dispatch, share) of each listener; no name: the core's default.
    #[pyo3(default)]
    pub listeners: Option<Vec<ListenerArgs>>,
    #[pyo3(default)]
    pub max_inflight: Option<i64>,
    #[pyo3(default)]
    pub handoff_window: Option<i64>,
    #[pyo3(default)]
    pub queue_limit: Option<i64>,
    #[pyo3(default)]
    pub queue_timeout: Option<f64>,
    #[pyo3(default)]
    pub max_surge: Option<i64>,
    /// Seconds; None turns the bound off (the Python half always passes it).
    #[pyo3(default)]
    pub ack_timeout: Option<f64>,
    /// The cluster's name (its control socket is NAME.sock).
    #[pyo3(default)]
    pub name: Option<String>,
    /// `off`, `on` or `required`.
    #[pyo3(default)]
    pub control: Option<String>,
    #[pyo3(default)]
    pub max_memory: Option<i64>,
    #[pyo3(default)]
    pub max_requests: Option<i64>,
    #[pyo3(default)]
    pub max_requests_jitter: Option<i64>,
    /// The address of `/metrics`, `/healthz` and `/readyz`.
    #[pyo3(default)]
    pub metrics: Option<String>,
    /// Seconds.
    #[pyo3(default)]
    pub drain_delay: Option<f64>,
    #[pyo3(default)]
    pub ready_min: Option<i64>,
}

fn os(b: Vec<u8>) -> OsString {
    OsString::from_vec(b)
}

impl ConfigArgs {
    pub fn into_config(self) -> PyResult<Config> {
        let mut c = Config::new(self.argv.into_iter().map(os));
        opt_count("workers", self.workers, &mut c.workers)?;
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
            c.set_max_message(count("max_message", m)?);
        }
        opt_count(
            "send_queue_limit",
            self.send_queue_limit,
            &mut c.send_queue_limit,
        )?;
        opt_count(
            "event_queue_limit",
            self.event_queue_limit,
            &mut c.event_queue_limit,
        )?;
        if let Some(o) = &self.output {
            c.output = o.parse().map_err(to_py)?;
        }
        for (i, (name, addr, dispatch, share)) in
            self.listeners.unwrap_or_default().into_iter().enumerate()
        {
            let name = name.unwrap_or_else(|| rcluster_core::default_listener_name(i));
            let addr: ListenAddr = addr.parse().py()?;
            let dispatch: Dispatch = dispatch.parse().py()?;
            let mut listener = Listener::new(name, addr, dispatch);
            listener.share = share;
            c.listeners.push(listener);
        }
        c.ack_timeout = match self.ack_timeout {
            Some(t) => Some(seconds("ack_timeout", t)?),
            None => None,
        };
        c.max_inflight = match self.max_inflight {
            Some(n) => Some(count("max_inflight", n)?),
            None => None,
        };
        opt_count("handoff_window", self.handoff_window, &mut c.handoff_window)?;
        opt_count("queue_limit", self.queue_limit, &mut c.queue_limit)?;
        opt_seconds("queue_timeout", self.queue_timeout, &mut c.queue_timeout)?;
        opt_count("max_surge", self.max_surge, &mut c.max_surge)?;
        c.name = self.name;
        if let Some(mode) = &self.control {
            c.control = mode.parse().map_err(to_py)?;
        }
        c.max_memory = self
            .max_memory
            .map(|v| count("max_memory", v))
            .transpose()?;
        c.max_requests = self
            .max_requests
            .map(|v| count("max_requests", v))
            .transpose()?;
        opt_count(
            "max_requests_jitter",
            self.max_requests_jitter,
            &mut c.max_requests_jitter,
        )?;
        if let Some(addr) = &self.metrics {
            c.metrics = Some(Config::address("metrics", addr).py()?);
        }
        opt_seconds("drain_delay", self.drain_delay, &mut c.drain_delay)?;
        opt_count("ready_min", self.ready_min, &mut c.ready_min)?;
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
    opt_count("restart.max_restarts", r.max_restarts, &mut p.max_restarts)?;
    opt_seconds("restart.window", r.window, &mut p.window)?;
    if let Some(codes) = r.no_restart_codes {
        p.no_restart_codes = codes
            .into_iter()
            .map(|c| count("restart.no_restart_codes", c))
            .collect::<PyResult<_>>()?;
    }
    Ok(())
}
