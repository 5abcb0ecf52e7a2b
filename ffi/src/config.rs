//! `rcluster_config`: what a supervisor starts, built one setter at a time.
//!
//! Setters check what C hands in (NULL, UTF-8, enumeration values, address syntax) and apply
//! the core's rules to the values at once (`Config::check_values`, on a copy that is kept only
//! if they hold), so that the error points at the call that was wrong and names its argument;
//! `rcluster_supervisor_start` checks the program and directory too.

use std::ffi::c_char;
use std::time::Duration;

use rcluster_core::{Config, Error, Listener, Output, ReadyOn, RestartMode};

use crate::args::{self, handle_mut};
use crate::modes::*;
use crate::result::{guard, guard_void, rcluster_result, Fail};

/// A supervisor configuration (opaque). Made by `rcluster_config_new`, released by
/// `rcluster_config_free`. Not thread-safe: build it on one thread, then start any number of
/// supervisors from it (each takes a copy).
pub struct rcluster_config {
    pub(crate) inner: Config,
}

/// Runs a setter behind the panic boundary with the config checked for NULL.
fn set(
    func: &str,
    cfg: *mut rcluster_config,
    f: impl FnOnce(&mut Config) -> Result<(), Fail>,
) -> rcluster_result {
    guard(func, || {
        // SAFETY: the caller passes NULL or a live config that no other thread uses.
        let cfg = unsafe { handle_mut(cfg, "cfg") }?;
        f(&mut cfg.inner)
    })
}

/// The number of workers a configuration starts with: the CPUs of this process's affinity
/// mask, bounded by its cgroup v2 CPU quota (rounded up); at least 1. The command line, Node
/// and Python use the same default.
#[no_mangle]
pub extern "C" fn rcluster_default_workers() -> usize {
    let mut n = 1;
    guard_void("rcluster_default_workers", || {
        n = rcluster_core::default_workers();
    });
    n
}

/// Runs a setter on a copy of the config and keeps the copy only if the core's rules hold for
/// it. Every config starts valid and each setter keeps it so, so a broken rule is one of the
/// values this setter was given: `names` maps the core's field to the argument that set it.
fn set_checked(
    func: &str,
    cfg: *mut rcluster_config,
    names: &[(&str, &str)],
    f: impl FnOnce(&mut Config) -> Result<(), Fail>,
) -> rcluster_result {
    set_checked_as(func, cfg, names, rcluster_result::InvalidArgument, f)
}

/// As [`set_checked`], reporting a broken rule with `code` (listeners have always been
/// refused with `RCLUSTER_RESULT_CONFIG`, as their addresses are).
fn set_checked_as(
    func: &str,
    cfg: *mut rcluster_config,
    names: &[(&str, &str)],
    code: rcluster_result,
    f: impl FnOnce(&mut Config) -> Result<(), Fail>,
) -> rcluster_result {
    set(func, cfg, |c| {
        let mut copy = c.clone();
        f(&mut copy)?;
        copy.check_values().map_err(|e| argument(e, names, code))?;
        *c = copy;
        Ok(())
    })
}

/// An option's duration as C gives it; which durations an option takes is the core's rule.
fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// A core config error as a bad argument of the setter, named as C wrote it.
fn argument(e: Error, names: &[(&str, &str)], code: rcluster_result) -> Fail {
    let Error::Config {
        field,
        value,
        reason,
    } = &e
    else {
        return e.into();
    };
    let msg = match names.iter().find(|(f, _)| f == field) {
        Some((_, arg)) if arg != field => format!("argument `{arg}` ({field} = {value}): {reason}"),
        _ => format!("argument `{field}` = {value}: {reason}"),
    };
    Fail::new(code, msg)
}

/// Makes a configuration with the defaults: one worker per CPU this process may use (its
/// affinity mask, bounded by its cgroup's CPU quota; see `rcluster_default_workers`), ready on hello, restart always with
/// backoff 100 ms x2 up to 10 s, at most 10 restarts per 60 s, kill timeout 10 s,
/// ready timeout 30 s, messages up to 16 MiB, no listeners. The program must still be set
/// with `rcluster_config_set_argv`. On success `*out` is a new config; free it with
/// `rcluster_config_free` (a running supervisor does not need it any more).
///
/// # Safety
/// `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rcluster_config_new(out: *mut *mut rcluster_config) -> rcluster_result {
    guard("rcluster_config_new", || {
        let out = args::out(out, "out")?;
        let cfg = Box::new(rcluster_config {
            inner: Config::new(Vec::<std::ffi::OsString>::new()),
        });
        // SAFETY: checked non-NULL above.
        unsafe { args::put(out, Box::into_raw(cfg)) };
        Ok(())
    })
}

/// Releases a configuration. NULL is allowed and does nothing.
///
/// # Safety
/// `cfg` is NULL or a config from `rcluster_config_new` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn rcluster_config_free(cfg: *mut rcluster_config) {
    guard_void("rcluster_config_free", || {
        if !cfg.is_null() {
            // SAFETY: made by Box::into_raw in rcluster_config_new, freed once.
            drop(unsafe { Box::from_raw(cfg) });
        }
    })
}

/// Sets the number of worker slots, 1..=4096 (default: `rcluster_default_workers()`).
///
/// # Safety
/// `cfg` is NULL or a live config.
#[no_mangle]
pub unsafe extern "C" fn rcluster_config_set_workers(
    cfg: *mut rcluster_config,
    workers: usize,
) -> rcluster_result {
    set_checked("rcluster_config_set_workers", cfg, &[], |c| {
        c.workers = workers;
        Ok(())
    })
}

/// Sets the worker program and its arguments: `argc` strings at `argv`, program first, run
/// directly (no shell; a name without '/' is searched in PATH when the supervisor starts).
/// The strings are copied. They may hold any bytes but NUL (as execve takes them).
///
/// # Safety
/// `cfg` is NULL or a live config; `argv` is NULL or points to `argc` pointers, each NULL or
/// a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn rcluster_config_set_argv(
    cfg: *mut rcluster_config,
    argv: *const *const c_char,
    argc: usize,
) -> rcluster_result {
    set("rcluster_config_set_argv", cfg, |c| {
        if argv.is_null() {
            return Err(Fail::null("argv"));
        }
        if argc == 0 || argc > 1 << 20 {
            return Err(Fail::range(
                "argc",
                argc,
                "must be 1..=1048576 (the program, then its arguments)",
            ));
        }
        let mut v = Vec::with_capacity(argc);
        for i in 0..argc {
            // SAFETY: the caller promises `argc` readable pointers.
            let p = unsafe { *argv.add(i) };
            // SAFETY: the caller promises NUL-terminated strings (NULL is refused) that live
            // through the call.
            v.push(unsafe { args::bytes(p, &format!("argv[{i}]")) }?.to_owned());
        }
        c.argv = v;
        Ok(())
    })
}

/// Adds an environment variable for workers, on top of the primary's own environment.
/// The name must be non-empty and free of '='; both may hold any bytes but NUL.
///
/// # Safety
/// `cfg` is NULL or a live config; `name` and `value` are NULL or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn rcluster_config_add_env(
    cfg: *mut rcluster_config,
    name: *const c_char,
    value: *const c_char,
) -> rcluster_result {
    set_checked("rcluster_config_add_env", cfg, &[("env", "name")], |c| {
        // SAFETY: the caller promises NUL-terminated strings (NULL is refused) that live through
        // the call.
        let (k, v) = unsafe { (args::bytes(name, "name")?, args::bytes(value, "value")?) };
        c.env.push((k.to_owned(), v.to_owned()));
        Ok(())
    })
}

/// Sets the working directory of workers (default: the primary's). It must exist when the
/// supervisor starts. Any bytes but NUL.
///
/// # Safety
/// `cfg` is NULL or a live config; `dir` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn rcluster_config_set_cwd(
    cfg: *mut rcluster_config,
    dir: *const c_char,
) -> rcluster_result {
    set("rcluster_config_set_cwd", cfg, |c| {
        // SAFETY: the caller promises NUL-terminated strings (NULL is refused) that live through
        // the call.
        c.cwd = Some(unsafe { args::bytes(dir, "dir") }?.into());
        Ok(())
    })
}

/// Sets when a worker counts as ready: `RCLUSTER_READY_ON_SPAWN`, `_HELLO` (default) or
/// `_EXPLICIT`.
///
/// # Safety
/// `cfg` is NULL or a live config.
#[no_mangle]
pub unsafe extern "C" fn rcluster_config_set_ready_on(
    cfg: *mut rcluster_config,
    ready_on: rcluster_ready_on,
) -> rcluster_result {
    set("rcluster_config_set_ready_on", cfg, |c| {
        c.ready_on = match ready_on {
            RCLUSTER_READY_ON_SPAWN => ReadyOn::Spawn,
            RCLUSTER_READY_ON_HELLO => ReadyOn::Hello,
            RCLUSTER_READY_ON_EXPLICIT => ReadyOn::Explicit,
            _ => {
                return Err(Fail::range(
                    "ready_on",
                    ready_on,
                    "must be one of RCLUSTER_READY_ON_*",
                ))
            }
        };
        Ok(())
    })
}

/// Sets the timeouts, in milliseconds (1 ms ..= one year): `ready_ms` (a worker not ready
/// this long after spawn is killed; default 30000), `heartbeat_ms` (a ready worker silent this
/// long is killed; 0 turns the check off, the default) and `kill_ms` (grace between SIGTERM
/// and SIGKILL when stopping a worker; default 10000).
///
/// # Safety
/// `cfg` is NULL or a live config.
#[no_mangle]
pub unsafe extern "C" fn rcluster_config_set_timeouts(
    cfg: *mut rcluster_config,
    ready_ms: u64,
    heartbeat_ms: u64,
    kill_ms: u64,
) -> rcluster_result {
    let names = [
        ("ready_timeout", "ready_ms"),
        ("heartbeat_timeout", "heartbeat_ms"),
        ("kill_timeout", "kill_ms"),
    ];
    set_checked("rcluster_config_set_timeouts", cfg, &names, |c| {
        c.ready_timeout = millis(ready_ms);
        // 0 is how C says "no heartbeat check".
        c.heartbeat_timeout = (heartbeat_ms > 0).then(|| millis(heartbeat_ms));
        c.kill_timeout = millis(kill_ms);
        Ok(())
    })
}

/// Sets which exits restart a worker: `RCLUSTER_RESTART_ALWAYS` (default), `_ON_FAILURE` or
/// `_NEVER`.
///
/// # Safety
/// `cfg` is NULL or a live config.
#[no_mangle]
pub unsafe extern "C" fn rcluster_config_set_restart(
    cfg: *mut rcluster_config,
    mode: rcluster_restart_mode,
) -> rcluster_result {
    set("rcluster_config_set_restart", cfg, |c| {
        c.restart.mode = match mode {
            RCLUSTER_RESTART_ALWAYS => RestartMode::Always,
            RCLUSTER_RESTART_ON_FAILURE => RestartMode::OnFailure,
            RCLUSTER_RESTART_NEVER => RestartMode::Never,
            _ => {
                return Err(Fail::range(
                    "mode",
                    mode,
                    "must be one of RCLUSTER_RESTART_*",
                ))
            }
        };
        Ok(())
    })
}

/// Sets the restart backoff: the first delay `initial_ms` (0 ..= a year), multiplied by
/// `multiplier` (>= 1) after each consecutive failure up to `max_ms` (>= initial_ms), spread
/// by ±`jitter` (0..=1, a fraction); a worker that stayed up `min_uptime_ms` resets it.
/// Defaults: 100, 2.0, 10000, 0.1, 5000.
///
/// # Safety
/// `cfg` is NULL or a live config.
#[no_mangle]
pub unsafe extern "C" fn rcluster_config_set_backoff(
    cfg: *mut rcluster_config,
    initial_ms: u64,
    multiplier: f64,
    max_ms: u64,
    jitter: f64,
    min_uptime_ms: u64,
) -> rcluster_result {
    let names = [
        ("restart.backoff_initial", "initial_ms"),
        ("restart.backoff_multiplier", "multiplier"),
        ("restart.backoff_max", "max_ms"),
        ("restart.jitter", "jitter"),
        ("restart.min_uptime", "min_uptime_ms"),
    ];
    set_checked("rcluster_config_set_backoff", cfg, &names, |c| {
        let r = &mut c.restart;
        (r.backoff_initial, r.backoff_multiplier) = (millis(initial_ms), multiplier);
        (r.backoff_max, r.jitter) = (millis(max_ms), jitter);
        r.min_uptime = millis(min_uptime_ms);
        Ok(())
    })
}

/// Sets the intensity limit: more than `max_restarts` restarts of one slot within `window_ms`
/// (1 ms ..= a year) and the supervisor gives up on that slot (event `GAVE_UP`).
/// Defaults: 10 within 60000.
///
/// # Safety
/// `cfg` is NULL or a live config.
#[no_mangle]
pub unsafe extern "C" fn rcluster_config_set_restart_limit(
    cfg: *mut rcluster_config,
    max_restarts: u32,
    window_ms: u64,
) -> rcluster_result {
    let names = [("restart.window", "window_ms")];
    set_checked("rcluster_config_set_restart_limit", cfg, &names, |c| {
        c.restart.window = millis(window_ms);
        c.restart.max_restarts = max_restarts;
        Ok(())
    })
}

/// Adds an exit code that means "do not restart me" (e.g. a worker that cannot boot), 0..=255.
///
/// # Safety
/// `cfg` is NULL or a live config.
#[no_mangle]
pub unsafe extern "C" fn rcluster_config_add_no_restart_code(
    cfg: *mut rcluster_config,
    code: i32,
) -> rcluster_result {
    let names = [("restart.no_restart_codes", "code")];
    set_checked("rcluster_config_add_no_restart_code", cfg, &names, |c| {
        c.restart.no_restart_codes.push(code);
        Ok(())
    })
}

/// Sets message limits: `max_message`, the largest user message in bytes either way
/// (1 ..= 1 GiB; default 16 MiB), and `send_queue_limit`, the most bytes queued towards one
/// worker before `send` fails with `RCLUSTER_RESULT_QUEUE_FULL` (at least `max_message` + 8,
/// one message with its frame header; default 64 MiB).
///
/// # Safety
/// `cfg` is NULL or a live config.
#[no_mangle]
pub unsafe extern "C" fn rcluster_config_set_message_limits(
    cfg: *mut rcluster_config,
    max_message: usize,
    send_queue_limit: usize,
) -> rcluster_result {
    set_checked("rcluster_config_set_message_limits", cfg, &[], |c| {
        (c.max_message, c.send_queue_limit) = (max_message, send_queue_limit);
        Ok(())
    })
}

/// Sets `event_queue_limit`: the most bytes of user messages (each counted with a fixed
/// overhead) waiting for the host to take them (at least 4096; default 4 MiB). Beyond it,
/// workers that send messages are not read until the host has taken half of the queue (their
/// `send` blocks); lifecycle events are never held back.
///
/// # Safety
/// `cfg` is NULL or a live config.
#[no_mangle]
pub unsafe extern "C" fn rcluster_config_set_event_queue_limit(
    cfg: *mut rcluster_config,
    limit: usize,
) -> rcluster_result {
    let names = [("event_queue_limit", "limit")];
    set_checked("rcluster_config_set_event_queue_limit", cfg, &names, |c| {
        c.event_queue_limit = limit;
        Ok(())
    })
}

/// Sets where worker stdout/stderr go: `RCLUSTER_OUTPUT_INHERIT` (default) or `_PREFIX`.
///
/// # Safety
/// `cfg` is NULL or a live config.
#[no_mangle]
pub unsafe extern "C" fn rcluster_config_set_output(
    cfg: *mut rcluster_config,
    output: rcluster_output,
) -> rcluster_result {
    set("rcluster_config_set_output", cfg, |c| {
        c.output = match output {
            RCLUSTER_OUTPUT_INHERIT => Output::Inherit,
            RCLUSTER_OUTPUT_PREFIX => Output::Prefix,
            _ => {
                return Err(Fail::range(
                    "output",
                    output,
                    "must be one of RCLUSTER_OUTPUT_*",
                ))
            }
        };
        Ok(())
    })
}

/// Adds a listener the primary binds before anything starts. `name` (1..=255 bytes of UTF-8,
/// no ':') travels with each connection; NULL gives the default name by the listener's place,
/// `listen0`, `listen1`, ... (as the command line, Node and Python name theirs). `addr` is
/// `127.0.0.1:8080`, `[::1]:8080`, `:8080` (every IPv4 address) or `unix:/path/to.sock`; port
/// 0 lets the system choose (read it back with `rcluster_supervisor_listener`). `dispatch` is
/// one of `RCLUSTER_DISPATCH_*`.
///
/// # Safety
/// `cfg` is NULL or a live config; `name` and `addr` are NULL or NUL-terminated strings.
#[no_mangle]
pub unsafe extern "C" fn rcluster_config_add_listener(
    cfg: *mut rcluster_config,
    name: *const c_char,
    addr: *const c_char,
    dispatch: rcluster_dispatch,
) -> rcluster_result {
    let names = [("listeners.name", "name"), ("listeners.addr", "addr")];
    let code = rcluster_result::Config;
    set_checked_as("rcluster_config_add_listener", cfg, &names, code, |c| {
        // SAFETY: the caller promises NUL-terminated strings (NULL is refused, but for the
        // name) that live through the call.
        let addr = unsafe { args::utf8(addr, "addr")? };
        let name = match name.is_null() {
            true => rcluster_core::default_listener_name(c.listeners.len()),
            // SAFETY: as above.
            false => unsafe { args::utf8(name, "name")? }.to_owned(),
        };
        let dispatch = dispatch_from(dispatch)?;
        let addr = addr.parse()?;
        c.listeners.push(Listener::new(name, addr, dispatch));
        Ok(())
    })
}

/// Sets connection dispatch limits: `max_inflight`, the most connections one worker holds at
/// once (0: no limit, the default); `handoff_window`, the most handed and not yet acknowledged
/// per worker (1..=65536; default 64); `queue_limit`, the most waiting in the primary
/// (>= 1; default 4096); `queue_timeout_ms`, after which a waiting connection is closed
/// (1 ms ..= a year; default 10000).
///
/// # Safety
/// `cfg` is NULL or a live config.
#[no_mangle]
pub unsafe extern "C" fn rcluster_config_set_dispatch_limits(
    cfg: *mut rcluster_config,
    max_inflight: usize,
    handoff_window: usize,
    queue_limit: usize,
    queue_timeout_ms: u64,
) -> rcluster_result {
    let names = [("queue_timeout", "queue_timeout_ms")];
    set_checked("rcluster_config_set_dispatch_limits", cfg, &names, |c| {
        c.queue_timeout = millis(queue_timeout_ms);
        c.max_inflight = (max_inflight > 0).then_some(max_inflight);
        (c.handoff_window, c.queue_limit) = (handoff_window, queue_limit);
        Ok(())
    })
}

/// Sets how many workers a reload may start beyond the configured count at once (1..=4096;
/// default 1).
///
/// # Safety
/// `cfg` is NULL or a live config.
#[no_mangle]
pub unsafe extern "C" fn rcluster_config_set_max_surge(
    cfg: *mut rcluster_config,
    max_surge: usize,
) -> rcluster_result {
    set_checked("rcluster_config_set_max_surge", cfg, &[], |c| {
        c.max_surge = max_surge;
        Ok(())
    })
}

/// Sets the recycling limits: a worker whose resident memory exceeds `max_memory` bytes, or
/// that was handed `max_requests` connections plus a random 0..=`max_requests_jitter` of its
/// own, is replaced the way a reload replaces it (its replacement ready first), with exit
/// reason `RCLUSTER_EXIT_REASON_MEMORY` or `RCLUSTER_EXIT_REASON_MAX_REQUESTS`. 0 turns a
/// limit off (the default); a jitter without `max_requests` is refused.
///
/// # Safety
/// `cfg` is NULL or a live config.
#[no_mangle]
pub unsafe extern "C" fn rcluster_config_set_recycling(
    cfg: *mut rcluster_config,
    max_memory: u64,
    max_requests: u64,
    max_requests_jitter: u64,
) -> rcluster_result {
    set("rcluster_config_set_recycling", cfg, |c| {
        if max_requests == 0 && max_requests_jitter > 0 {
            return Err(Fail::range(
                "max_requests_jitter",
                max_requests_jitter,
                "has no effect without max_requests",
            ));
        }
        c.max_memory = (max_memory > 0).then_some(max_memory);
        c.max_requests = (max_requests > 0).then_some(max_requests);
        c.max_requests_jitter = max_requests_jitter;
        Ok(())
    })
}

/// Serves `/metrics` (Prometheus text), `/healthz` and `/readyz` over HTTP on `addr`
/// (`127.0.0.1:9100`, `[::1]:9100`, `:9100` or `unix:/path`) from the supervisor's loop
/// (docs/operations.md); NULL turns it off (the default). A bad address is refused with
/// `RCLUSTER_RESULT_CONFIG` naming `metrics`; one that cannot be bound fails
/// `rcluster_supervisor_start` with `RCLUSTER_RESULT_BIND`.
///
/// # Safety
/// `cfg` is NULL or a live config; `addr` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn rcluster_config_set_metrics(
    cfg: *mut rcluster_config,
    addr: *const c_char,
) -> rcluster_result {
    let code = rcluster_result::Config;
    set_checked_as("rcluster_config_set_metrics", cfg, &[], code, |c| {
        c.metrics = match addr.is_null() {
            true => None,
            // SAFETY: the caller promises a NUL-terminated string that lives through the call.
            false => Some(Config::address("metrics", unsafe {
                args::utf8(addr, "addr")?
            })?),
        };
        Ok(())
    })
}

/// Sets readiness over HTTP: `ready_min`, the fewest ready workers for `/readyz` to answer
/// 200 (1..=4096; default 1), and `drain_delay_ms`, how long `/readyz` fails before the stop
/// a stop signal begins (`rcluster_signals_handle`) so that a load balancer takes the
/// cluster out of rotation first (0, the default: stop at once; at most a year).
///
/// # Safety
/// `cfg` is NULL or a live config.
#[no_mangle]
pub unsafe extern "C" fn rcluster_config_set_readiness(
    cfg: *mut rcluster_config,
    ready_min: usize,
    drain_delay_ms: u64,
) -> rcluster_result {
    let names = [
        ("ready_min", "ready_min"),
        ("drain_delay", "drain_delay_ms"),
    ];
    set_checked("rcluster_config_set_readiness", cfg, &names, |c| {
        c.ready_min = ready_min;
        c.drain_delay = millis(drain_delay_ms);
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The C library accepts exactly the message limits the core accepts: a queue of one
    /// largest message and its frame header, and not a byte less.
    #[test]
    fn message_limits_are_accepted_exactly_as_the_core_accepts_them() {
        let mut cfg = std::ptr::null_mut();
        // SAFETY: `cfg` is a live local for the new handle; it is freed below.
        unsafe {
            assert_eq!(rcluster_config_new(&mut cfg), rcluster_result::Ok);
            let header = rcluster_core::frame::HEADER_LEN;
            assert_eq!(
                rcluster_config_set_message_limits(cfg, 64, 64 + header),
                rcluster_result::Ok
            );
            assert_eq!(
                rcluster_config_set_message_limits(cfg, 64, 64 + header - 1),
                rcluster_result::InvalidArgument
            );
            rcluster_config_free(cfg);
        }
    }

    /// A setter whose values break a core rule changes nothing, and its message names the
    /// C argument next to the core's field.
    #[test]
    fn refused_setter_changes_nothing_and_names_its_argument() {
        let mut cfg = std::ptr::null_mut();
        // SAFETY: `cfg` is a live local for the new handle; it is freed below.
        unsafe {
            assert_eq!(rcluster_config_new(&mut cfg), rcluster_result::Ok);
            let rc = rcluster_config_set_backoff(cfg, 5, 1.0, 7, 0.0, 400 * 86_400_000);
            assert_eq!(rc, rcluster_result::InvalidArgument);
            let msg = std::ffi::CStr::from_ptr(crate::result::rcluster_last_error());
            let msg = msg.to_str().unwrap();
            assert!(
                msg.contains("`min_uptime_ms` (restart.min_uptime = ") && msg.contains("a year"),
                "{msg}"
            );
            let kept = &(*cfg).inner.restart;
            assert_eq!(kept.backoff_initial, Duration::from_millis(100));
            assert_eq!(kept.backoff_max, Duration::from_secs(10));
            rcluster_config_free(cfg);
        }
    }
}
