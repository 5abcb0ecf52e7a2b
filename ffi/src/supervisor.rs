//! `rcluster_supervisor`: the primary side. Each export converts its arguments and calls the
//! core; the only state kept here is what C needs and the core has no notion of (the event
//! callback thread, stop threads started by the signal helper, C strings of the listeners).

use std::ffi::{c_char, c_int, c_void, CString};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{JoinHandle, ThreadId};
use std::time::Duration;

use rcluster_core::{Event, ListenAddr, Supervisor};

use crate::args::{self, handle};
use crate::config::rcluster_config;
use crate::event::{self, rcluster_event, rcluster_snapshot};
use crate::modes::{content_from, rcluster_content_type};
use crate::result::{guard, guard_void, rcluster_result, Fail, Res};

/// A running cluster (opaque). Made by `rcluster_supervisor_start`, released by
/// `rcluster_supervisor_free`. Thread-safe: every function may be called from any thread.
pub struct rcluster_supervisor {
    pub(crate) sup: Arc<Supervisor>,
    listeners: Vec<(String, CString, u16)>,
    pub(crate) kill_timeout: Duration,
    callback: Mutex<Option<CallbackThread>>,
    callback_set: AtomicBool,
    /// Threads running a `stop` begun by the signal helper; joined by stop and free.
    pub(crate) stoppers: Mutex<Vec<JoinHandle<()>>>,
}

struct CallbackThread {
    thread: JoinHandle<()>,
    id: ThreadId,
    /// Set by `rcluster_supervisor_free`: no callback may run after it returned.
    freed: Arc<AtomicBool>,
}

/// A function that receives every event when set with `rcluster_supervisor_set_callback`.
/// `ev` is valid only during the call (the library frees it afterwards; do not free it).
#[allow(non_camel_case_types)]
pub type rcluster_event_callback =
    Option<unsafe extern "C" fn(userdata: *mut c_void, ev: *const rcluster_event)>;

/// The user's pointer, moved to the callback thread. C promised it may be used there.
struct UserData(*mut c_void);
// SAFETY: `rcluster_supervisor_set_callback` documents that userdata is used on another thread.
unsafe impl Send for UserData {}

fn sup_ref<'a>(sup: *const rcluster_supervisor) -> Res<&'a rcluster_supervisor> {
    // SAFETY: every export documents that `sup` is NULL or a live supervisor.
    unsafe { handle(sup, "sup") }
}

/// Starts a cluster: validates `cfg` (every field; errors name the field and value), binds its
/// listeners (an address in use fails here, with nothing left running), starts the
/// supervisor thread and the workers, and returns at once; worker start-up is reported by
/// events. `cfg` is copied and may be freed or reused afterwards.
/// Errors: `CONFIG`, `BIND`, `SPAWN`, `IO`.
///
/// # Safety
/// `cfg` is NULL or a live config; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rcluster_supervisor_start(
    cfg: *const rcluster_config,
    out: *mut *mut rcluster_supervisor,
) -> rcluster_result {
    guard("rcluster_supervisor_start", || {
        // SAFETY: the caller passes a handle this library returned and has not freed, or NULL,
        // which `handle` refuses.
        let cfg = unsafe { handle(cfg, "cfg") }?;
        let out = args::out(out, "out")?;
        let config = cfg.inner.clone();
        let kill_timeout = config.kill_timeout;
        let sup = Supervisor::start(config)?;
        let listeners = sup
            .listeners()
            .iter()
            .map(|(name, addr)| {
                let port = match addr {
                    ListenAddr::Tcp(sa) => sa.port(),
                    ListenAddr::Unix(_) => 0,
                };
                (name.clone(), event::c_text(&addr.to_string()), port)
            })
            .collect();
        let handle = Box::new(rcluster_supervisor {
            sup: Arc::new(sup),
            listeners,
            kill_timeout,
            callback: Mutex::new(None),
            callback_set: AtomicBool::new(false),
            stoppers: Mutex::new(Vec::new()),
        });
        // SAFETY: `out` is non-null (checked above) and the caller promises it points to writable
        // memory for one value.
        unsafe { args::put(out, Box::into_raw(handle)) };
        Ok(())
    })
}

fn finish_threads(s: &rcluster_supervisor, freeing: bool) {
    let stoppers = std::mem::take(&mut *s.stoppers.lock().unwrap());
    for t in stoppers {
        let _ = t.join();
    }
    let mut slot = s.callback.lock().unwrap();
    let here = std::thread::current().id();
    if let Some(cb) = slot.as_ref() {
        if freeing {
            cb.freed.store(true, Ordering::Release);
        }
        // The callback may itself call stop (or, against the rules, free): it cannot wait
        // for its own thread, which ends on its own once the event queue is closed.
        if cb.id == here {
            return;
        }
    }
    if let Some(cb) = slot.take() {
        drop(slot);
        let _ = cb.thread.join();
    }
}

/// Stops every worker gracefully (a disconnect frame and SIGTERM to its process group), kills
/// what is left after `timeout_ms` (0: at once), and returns once every worker is reaped,
/// every descriptor the supervisor opened is closed and the event callback (if any) has seen
/// the last event. May be called again, from any thread, while a stop is under way: a shorter
/// timeout brings the kill forward. Events still queued can be read afterwards, until
/// `next_event` returns `RCLUSTER_RESULT_STOPPED`. May be called from the event callback.
///
/// # Safety
/// `sup` is NULL or a live supervisor.
#[no_mangle]
pub unsafe extern "C" fn rcluster_supervisor_stop(
    sup: *const rcluster_supervisor,
    timeout_ms: u64,
) -> rcluster_result {
    guard("rcluster_supervisor_stop", || {
        let s = sup_ref(sup)?;
        let timeout = args::millis(timeout_ms, "timeout_ms", true)?;
        s.sup.stop(timeout)?;
        finish_threads(s, false);
        Ok(())
    })
}

/// Stops the cluster if it runs (as `rcluster_supervisor_stop` with the configured kill
/// timeout) and releases the handle. NULL is allowed and does nothing. Must not be called from
/// the event callback, nor while another thread uses `sup`.
///
/// # Safety
/// `sup` is NULL or a supervisor from `rcluster_supervisor_start` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn rcluster_supervisor_free(sup: *mut rcluster_supervisor) {
    guard_void("rcluster_supervisor_free", || {
        if sup.is_null() {
            return;
        }
        // SAFETY: made by Box::into_raw in rcluster_supervisor_start, freed once.
        let s = unsafe { Box::from_raw(sup) };
        let _ = s.sup.stop(s.kill_timeout);
        finish_threads(&s, true);
    })
}

/// Sends a user message of `len` bytes to worker `worker_id` (`data` may be NULL when `len`
/// is 0). Never blocks: the message is queued for the supervisor thread. Errors:
/// `MESSAGE_TOO_LARGE`, `QUEUE_FULL` (the worker is not reading; retry later),
/// `NO_SUCH_WORKER`, `STOPPED`.
///
/// # Safety
/// `sup` is NULL or a live supervisor; `data` is NULL or points to `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn rcluster_supervisor_send(
    sup: *const rcluster_supervisor,
    worker_id: u32,
    data: *const u8,
    len: usize,
) -> rcluster_result {
    guard("rcluster_supervisor_send", || {
        let s = sup_ref(sup)?;
        // SAFETY: the caller promises `data` is readable for `len` bytes during the call (NULL
        // only with `len` 0).
        let data = unsafe { args::buffer(data, len, "data") }?;
        Ok(s.sup.send(worker_id, data)?)
    })
}

/// Like `rcluster_supervisor_send`, with the message's content type (`RCLUSTER_CONTENT_*`),
/// which the worker reads with the message. `INVALID_ARGUMENT` for a number that is no type;
/// `max_message` counts the `len` bytes only.
///
/// # Safety
/// `sup` is NULL or a live supervisor; `data` is NULL or points to `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn rcluster_supervisor_send_as(
    sup: *const rcluster_supervisor,
    worker_id: u32,
    content_type: rcluster_content_type,
    data: *const u8,
    len: usize,
) -> rcluster_result {
    guard("rcluster_supervisor_send_as", || {
        let s = sup_ref(sup)?;
        let content = content_from(content_type)?;
        // SAFETY: the caller promises `data` is readable for `len` bytes during the call (NULL
        // only with `len` 0).
        let data = unsafe { args::buffer(data, len, "data") }?;
        Ok(s.sup.send_as(worker_id, content, data)?)
    })
}

/// Sends a user message to every live worker; `*out_count` (optional: may be NULL) receives
/// how many it was queued for (workers whose queue is full are skipped).
///
/// # Safety
/// `sup` is NULL or a live supervisor; `data` is NULL or points to `len` readable bytes;
/// `out_count` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rcluster_supervisor_broadcast(
    sup: *const rcluster_supervisor,
    data: *const u8,
    len: usize,
    out_count: *mut usize,
) -> rcluster_result {
    guard("rcluster_supervisor_broadcast", || {
        let s = sup_ref(sup)?;
        // SAFETY: the caller promises `data` is readable for `len` bytes during the call (NULL
        // only with `len` 0).
        let data = unsafe { args::buffer(data, len, "data") }?;
        let n = s.sup.broadcast(data)?;
        if !out_count.is_null() {
            // SAFETY: `out_count` is non-null (checked above) and the caller promises it points to
            // writable memory for one value.
            unsafe { args::put(out_count, n) };
        }
        Ok(())
    })
}

/// Like `rcluster_supervisor_broadcast`, with the message's content type
/// (`RCLUSTER_CONTENT_*`). `INVALID_ARGUMENT` for a number that is no type.
///
/// # Safety
/// `sup` is NULL or a live supervisor; `data` is NULL or points to `len` readable bytes;
/// `out_count` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rcluster_supervisor_broadcast_as(
    sup: *const rcluster_supervisor,
    content_type: rcluster_content_type,
    data: *const u8,
    len: usize,
    out_count: *mut usize,
) -> rcluster_result {
    guard("rcluster_supervisor_broadcast_as", || {
        let s = sup_ref(sup)?;
        let content = content_from(content_type)?;
        // SAFETY: the caller promises `data` is readable for `len` bytes during the call (NULL
        // only with `len` 0).
        let data = unsafe { args::buffer(data, len, "data") }?;
        let n = s.sup.broadcast_as(content, data)?;
        if !out_count.is_null() {
            // SAFETY: `out_count` is non-null (checked above) and the caller promises it points to
            // writable memory for one value.
            unsafe { args::put(out_count, n) };
        }
        Ok(())
    })
}

fn take_event(s: &rcluster_supervisor, ev: Option<Event>) -> Res<*mut rcluster_event> {
    match ev {
        Some(ev) => Ok(event::into_c(ev)),
        None if s.sup.is_stopped() => Err(Fail::new(
            rcluster_result::Stopped,
            "the supervisor has stopped and every event was taken",
        )),
        None => Err(Fail::quiet(rcluster_result::Timeout)),
    }
}

fn no_callback(s: &rcluster_supervisor) -> Res {
    if s.callback_set.load(Ordering::Acquire) {
        return Err(Fail::new(
            rcluster_result::InvalidState,
            "a callback receives the events of this supervisor",
        ));
    }
    Ok(())
}

/// Waits up to `timeout_ms` milliseconds (negative: forever) for the next event. On success
/// `*out` is an event to release with `rcluster_event_free`. Returns `RCLUSTER_RESULT_TIMEOUT`
/// when none came in time, and `RCLUSTER_RESULT_STOPPED` once the supervisor has stopped and
/// every event was taken (the end of the stream). `INVALID_STATE` while a callback is set.
///
/// # Safety
/// `sup` is NULL or a live supervisor; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rcluster_supervisor_next_event(
    sup: *const rcluster_supervisor,
    timeout_ms: i64,
    out: *mut *mut rcluster_event,
) -> rcluster_result {
    guard("rcluster_supervisor_next_event", || {
        let s = sup_ref(sup)?;
        let out = args::out(out, "out")?;
        no_callback(s)?;
        let ev = take_event(s, s.sup.next_event(args::timeout(timeout_ms)))?;
        // SAFETY: `out` is non-null (checked above) and the caller promises it points to writable
        // memory for one value.
        unsafe { args::put(out, ev) };
        Ok(())
    })
}

/// The next event if one is waiting (`RCLUSTER_RESULT_TIMEOUT` if none), without blocking:
/// for host loops that wait on `rcluster_supervisor_event_fd`. Otherwise as `_next_event`.
///
/// # Safety
/// `sup` is NULL or a live supervisor; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rcluster_supervisor_try_next_event(
    sup: *const rcluster_supervisor,
    out: *mut *mut rcluster_event,
) -> rcluster_result {
    guard("rcluster_supervisor_try_next_event", || {
        let s = sup_ref(sup)?;
        let out = args::out(out, "out")?;
        no_callback(s)?;
        let ev = take_event(s, s.sup.try_next_event())?;
        // SAFETY: `out` is non-null (checked above) and the caller promises it points to writable
        // memory for one value.
        unsafe { args::put(out, ev) };
        Ok(())
    })
}

/// A descriptor that is readable while events may be waiting: add it to poll/epoll/libuv,
/// and when it is readable call `rcluster_supervisor_try_next_event` until it returns
/// `RCLUSTER_RESULT_TIMEOUT` (or `_STOPPED`). Do not read, write or close it; it stays valid
/// until `rcluster_supervisor_free`.
///
/// # Safety
/// `sup` is NULL or a live supervisor; `out_fd` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rcluster_supervisor_event_fd(
    sup: *const rcluster_supervisor,
    out_fd: *mut c_int,
) -> rcluster_result {
    guard("rcluster_supervisor_event_fd", || {
        let s = sup_ref(sup)?;
        let out = args::out(out_fd, "out_fd")?;
        // SAFETY: `out` is non-null (checked above) and the caller promises it points to writable
        // memory for one value.
        unsafe { args::put(out, s.sup.event_fd()) };
        Ok(())
    })
}

/// Delivers every event to `callback(userdata, ev)` instead of `next_event`. The callback runs
/// on a thread the library starts (named "rcluster-events"), one event at a time, in order,
/// until the supervisor has stopped and the last event was delivered; `userdata` is passed
/// through untouched, so whatever it points to must be safe to use from that thread.
/// From the callback you may call every function of the supervisor except
/// `rcluster_supervisor_free` (and `next_event` / `try_next_event`, which return
/// `INVALID_STATE` while a callback is set); a slow callback delays the events after it.
/// It can be set once (`INVALID_STATE` the second time); `callback` must not be NULL.
///
/// # Safety
/// `sup` is NULL or a live supervisor; `callback` is a valid function that does not unwind
/// (no C++ exception may leave it).
#[no_mangle]
pub unsafe extern "C" fn rcluster_supervisor_set_callback(
    sup: *const rcluster_supervisor,
    callback: rcluster_event_callback,
    userdata: *mut c_void,
) -> rcluster_result {
    guard("rcluster_supervisor_set_callback", || {
        let s = sup_ref(sup)?;
        let cb = callback.ok_or_else(|| Fail::null("callback"))?;
        let mut slot = s.callback.lock().unwrap();
        if s.callback_set.swap(true, Ordering::AcqRel) {
            return Err(Fail::new(
                rcluster_result::InvalidState,
                "a callback is already set",
            ));
        }
        let core = Arc::clone(&s.sup);
        let freed = Arc::new(AtomicBool::new(false));
        let gone = Arc::clone(&freed);
        let user = UserData(userdata);
        let thread = std::thread::Builder::new()
            .name("rcluster-events".into())
            .spawn(move || {
                let user = user;
                while let Some(ev) = core.next_event(None) {
                    if gone.load(Ordering::Acquire) {
                        continue;
                    }
                    let ev = event::into_c(ev);
                    // SAFETY: the caller promised a valid function; `ev` lives until freed.
                    unsafe { cb(user.0, ev) };
                    // SAFETY: `ev` came from `into_c` just above and is freed exactly once, after
                    // the callback.
                    unsafe { event::rcluster_event_free(ev) };
                }
            })
            .map_err(|e| {
                s.callback_set.store(false, Ordering::Release);
                Fail::new(
                    rcluster_result::Io,
                    format!("cannot start the callback thread: {e}"),
                )
            })?;
        let id = thread.thread().id();
        *slot = Some(CallbackThread { thread, id, freed });
        Ok(())
    })
}

/// Takes a snapshot of every worker process (and every slot without one). On success `*out`
/// is a snapshot to read with `rcluster_snapshot_len` / `_get` and release with
/// `rcluster_snapshot_free`.
///
/// # Safety
/// `sup` is NULL or a live supervisor; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rcluster_supervisor_snapshot(
    sup: *const rcluster_supervisor,
    out: *mut *mut rcluster_snapshot,
) -> rcluster_result {
    guard("rcluster_supervisor_snapshot", || {
        let s = sup_ref(sup)?;
        let out = args::out(out, "out")?;
        let workers = s.sup.snapshot()?.iter().map(event::info).collect();
        let snap = Box::new(rcluster_snapshot { workers });
        // SAFETY: `out` is non-null (checked above) and the caller promises it points to writable
        // memory for one value.
        unsafe { args::put(out, Box::into_raw(snap)) };
        Ok(())
    })
}

/// Starts a rolling reload: slot by slot, a new-generation worker must be ready before the old
/// one drains. `*out_generation` (optional: may be NULL) receives the new generation; progress
/// comes as RELOAD_STARTED / RELOAD_DONE / RELOAD_FAILED events.
///
/// # Safety
/// `sup` is NULL or a live supervisor; `out_generation` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rcluster_supervisor_reload(
    sup: *const rcluster_supervisor,
    out_generation: *mut u32,
) -> rcluster_result {
    guard("rcluster_supervisor_reload", || {
        let s = sup_ref(sup)?;
        let g = s.sup.reload()?;
        if !out_generation.is_null() {
            // SAFETY: `out_generation` is non-null (checked above) and the caller promises it
            // points to writable memory for one value.
            unsafe { args::put(out_generation, g) };
        }
        Ok(())
    })
}

/// Changes the number of worker slots (1..=4096); removed workers are stopped gracefully.
///
/// # Safety
/// `sup` is NULL or a live supervisor.
#[no_mangle]
pub unsafe extern "C" fn rcluster_supervisor_scale(
    sup: *const rcluster_supervisor,
    workers: usize,
) -> rcluster_result {
    guard("rcluster_supervisor_scale", || {
        let s = sup_ref(sup)?;
        Ok(s.sup.scale(workers)?)
    })
}

/// Stops worker `worker_id` gracefully and starts it again at once.
///
/// # Safety
/// `sup` is NULL or a live supervisor.
#[no_mangle]
pub unsafe extern "C" fn rcluster_supervisor_restart_worker(
    sup: *const rcluster_supervisor,
    worker_id: u32,
) -> rcluster_result {
    guard("rcluster_supervisor_restart_worker", || {
        let s = sup_ref(sup)?;
        Ok(s.sup.restart_worker(worker_id)?)
    })
}

/// Sends `signal` (1..=64) to the process of worker `worker_id`, and records it: if the
/// worker then exits, the exit's reason is `RCLUSTER_EXIT_REASON_REQUESTED`, not `CRASHED`.
/// The supervisor signals only a process it has not reaped, so a reused pid is never hit
/// (unlike `kill(pid, ...)` by the host). Not a stop: nothing follows a signal the worker
/// survives. `NO_SUCH_WORKER` for an unknown id, `INVALID_ARGUMENT` for a bad signal.
///
/// # Safety
/// `sup` is NULL or a live supervisor.
#[no_mangle]
pub unsafe extern "C" fn rcluster_supervisor_kill(
    sup: *const rcluster_supervisor,
    worker_id: u32,
    signal: c_int,
) -> rcluster_result {
    guard("rcluster_supervisor_kill", || {
        let s = sup_ref(sup)?;
        if !(1..=64).contains(&signal) {
            return Err(Fail::range(
                "signal",
                signal,
                "must be a signal number 1..=64",
            ));
        }
        Ok(s.sup.kill(worker_id, signal)?)
    })
}

/// The actual address of the listener named `name` (with the port the system chose for port
/// 0), e.g. "127.0.0.1:40123" or "unix:/run/app.sock". `*out_addr` stays valid until
/// `rcluster_supervisor_free`; `*out_port` (optional: may be NULL) receives the TCP port
/// (0 for a Unix socket). `INVALID_ARGUMENT` when no listener has that name.
///
/// # Safety
/// `sup` is NULL or a live supervisor; `name` is NULL or a NUL-terminated string; `out_addr`
/// is NULL or writable; `out_port` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rcluster_supervisor_listener(
    sup: *const rcluster_supervisor,
    name: *const c_char,
    out_addr: *mut *const c_char,
    out_port: *mut u16,
) -> rcluster_result {
    guard("rcluster_supervisor_listener", || {
        let s = sup_ref(sup)?;
        // SAFETY: the caller promises NUL-terminated strings (NULL is refused) that live through
        // the call.
        let name = unsafe { args::utf8(name, "name") }?;
        let out = args::out(out_addr, "out_addr")?;
        let (_, addr, port) = s
            .listeners
            .iter()
            .find(|(n, _, _)| n == name)
            .ok_or_else(|| Fail::range("name", format!("{name:?}"), "no listener has this name"))?;
        // SAFETY: `out` is non-null (checked above) and the caller promises it points to writable
        // memory for one value.
        unsafe { args::put(out, addr.as_ptr()) };
        if !out_port.is_null() {
            // SAFETY: `out_port` is non-null (checked above) and the caller promises it points to
            // writable memory for one value.
            unsafe { args::put(out_port, *port) };
        }
        Ok(())
    })
}
