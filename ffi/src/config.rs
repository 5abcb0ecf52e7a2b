//! `rcluster_config`: what a supervisor starts, built one setter at a time.
//!
//! Setters check what they can see alone (NULL, ranges, UTF-8, address syntax) so that the
//! error points at the call that was wrong; `rcluster_supervisor_start` checks the whole.

use std::ffi::c_char;

use rcluster_core::{Config, Listener, Output, ReadyOn, RestartMode, MAX_WORKERS};

use crate::args::{self, handle_mut, millis};
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

/// Makes a configuration with the defaults: 1 worker, ready on hello, restart always with
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

/// Sets the number of worker slots, 1..=4096.
///
/// # Safety
/// `cfg` is NULL or a live config.
#[no_mangle]
pub unsafe extern "C" fn rcluster_config_set_workers(
    cfg: *mut rcluster_config,
    workers: usize,
) -> rcluster_result {
    set("rcluster_config_set_workers", cfg, |c| {
        if workers == 0 || workers > MAX_WORKERS {
            return Err(Fail::range(
                "workers",
                workers,
                &format!("must be 1..={MAX_WORKERS}"),
            ));
        }
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
    set("rcluster_config_add_env", cfg, |c| {
        // SAFETY: the caller promises NUL-terminated strings (NULL is refused) that live through
        // the call.
        let (k, v) = unsafe { (args::bytes(name, "name")?, args::bytes(value, "value")?) };
        if k.is_empty() || k.as_encoded_bytes().contains(&b'=') {
            return Err(Fail::range(
                "name",
                format!("{k:?}"),
                "a variable name must be non-empty and without '='",
            ));
        }
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
    set("rcluster_config_set_timeouts", cfg, |c| {
        let ready = millis(ready_ms, "ready_ms", false)?;
        let heartbeat = millis(heartbeat_ms, "heartbeat_ms", true)?;
        let kill = millis(kill_ms, "kill_ms", false)?;
        c.ready_timeout = ready;
        c.heartbeat_timeout = (!heartbeat.is_zero()).then_some(heartbeat);
        c.kill_timeout = kill;
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
    set("rcluster_config_set_backoff", cfg, |c| {
        let initial = millis(initial_ms, "initial_ms", true)?;
        let max = millis(max_ms, "max_ms", true)?;
        let min_uptime = millis(min_uptime_ms, "min_uptime_ms", true)?;
        if !(multiplier.is_finite() && multiplier >= 1.0) {
            return Err(Fail::range(
                "multiplier",
                multiplier,
                "must be a number >= 1",
            ));
        }
        if !(jitter.is_finite() && (0.0..=1.0).contains(&jitter)) {
            return Err(Fail::range("jitter", jitter, "must be between 0 and 1"));
        }
        if max < initial {
            return Err(Fail::range("max_ms", max_ms, "must be >= initial_ms"));
        }
        let r = &mut c.restart;
        (r.backoff_initial, r.backoff_multiplier, r.backoff_max) = (initial, multiplier, max);
        (r.jitter, r.min_uptime) = (jitter, min_uptime);
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
    set("rcluster_config_set_restart_limit", cfg, |c| {
        c.restart.window = millis(window_ms, "window_ms", false)?;
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
    set("rcluster_config_add_no_restart_code", cfg, |c| {
        if !(0..=255).contains(&code) {
            return Err(Fail::range("code", code, "an exit code is 0..=255"));
        }
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
    set("rcluster_config_set_message_limits", cfg, |c| {
        // The core's own check, so that the two cannot disagree; refused here as a bad
        // argument, as every setter refuses one.
        Config::check_message_limits(max_message, send_queue_limit)
            .map_err(|e| Fail::new(rcluster_result::InvalidArgument, e.to_string()))?;
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
    set("rcluster_config_set_event_queue_limit", cfg, |c| {
        if limit < rcluster_core::MIN_EVENT_QUEUE_LIMIT {
            return Err(Fail::range(
                "event_queue_limit",
                limit,
                "must be at least 4096 bytes",
            ));
        }
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
/// no ':') travels with each connection; `addr` is `127.0.0.1:8080`, `[::1]:8080`, `:8080`
/// (every IPv4 address) or `unix:/path/to.sock`; port 0 lets the system choose (read it back
/// with `rcluster_supervisor_listener`). `dispatch` is one of `RCLUSTER_DISPATCH_*`.
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
    set("rcluster_config_add_listener", cfg, |c| {
        // SAFETY: the caller promises NUL-terminated strings (NULL is refused) that live through
        // the call.
        let (name, addr) = unsafe { (args::utf8(name, "name")?, args::utf8(addr, "addr")?) };
        let dispatch = dispatch_from(dispatch)?;
        let addr = addr.parse()?;
        let mut check = Config::new(["/"]);
        check.listeners = c.listeners.clone();
        check.listeners.push(Listener::new(name, addr, dispatch));
        // The core's listener rules (names, duplicates), applied now so the error points here.
        if let Err(e @ rcluster_core::Error::Config { field, .. }) = check.validate() {
            if field.starts_with("listeners") {
                return Err(e.into());
            }
        }
        c.listeners = check.listeners;
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
    set("rcluster_config_set_dispatch_limits", cfg, |c| {
        if handoff_window == 0 || handoff_window > 65536 {
            return Err(Fail::range(
                "handoff_window",
                handoff_window,
                "must be 1..=65536",
            ));
        }
        if queue_limit == 0 {
            return Err(Fail::range("queue_limit", 0, "must be at least 1"));
        }
        c.queue_timeout = millis(queue_timeout_ms, "queue_timeout_ms", false)?;
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
    set("rcluster_config_set_max_surge", cfg, |c| {
        if max_surge == 0 || max_surge > MAX_WORKERS {
            return Err(Fail::range(
                "max_surge",
                max_surge,
                &format!("must be 1..={MAX_WORKERS}"),
            ));
        }
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
}
