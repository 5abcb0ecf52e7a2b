//! Supervisor events and snapshots as C sees them: plain read-only structs whose pointers are
//! owned by the library until the matching `_free`.
//!
//! An event is one allocation holding a `#[repr(C)]` view followed by the bytes it points to,
//! so C reads fields directly (`ev->kind`, `ev->data`) instead of calling an accessor per
//! field. The library only ever appends fields, which keeps old programs working, because C
//! never allocates or copies these structs.

use std::ffi::{c_char, CString};

use rcluster_core::{Event, ExitInfo, ExitReason, WorkerInfo, WorkerState};

use crate::args::{self, handle};
use crate::modes::{rcluster_content_type, RCLUSTER_CONTENT_RAW};
use crate::result::{guard, guard_void, rcluster_result, Fail};

/// What an `rcluster_event` reports. Fields that do not apply to a kind are 0 / NULL.
#[allow(non_camel_case_types)]
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum rcluster_event_kind {
    /// A worker process was exec'd: `worker_id`, `pid`, `generation`.
    Spawned = 1,
    /// The worker library said hello: `worker_id`, `pid`.
    Online = 2,
    /// The worker is ready for work: `worker_id`, `pid`.
    Ready = 3,
    /// A user message from a worker: `worker_id`, `pid`, `data`, `len`.
    Message = 4,
    /// A worker process ended and was reaped: `worker_id`, `generation`, `pid`, `exit_code`,
    /// `exit_signal`, `exit_reason`.
    Exit = 5,
    /// The worker program could not be started: `worker_id`, `text` (why).
    SpawnFailed = 6,
    /// The slot will be started again: `worker_id`, `delay_ms`, `count` (the attempt).
    Restarting = 7,
    /// The slot restarted too often and stays down: `worker_id`, `count` (restarts),
    /// `window_ms`.
    GaveUp = 8,
    /// Every slot is down for good: nothing runs any more.
    AllDown = 9,
    /// A worker broke the protocol and is being killed: `worker_id`, `pid`, `text`.
    ProtocolError = 10,
    /// A rolling reload started: `generation`.
    ReloadStarted = 11,
    /// Every slot runs `generation` now.
    ReloadDone = 12,
    /// The reload stopped, old workers keep serving: `generation`, `text` (why).
    ReloadFailed = 13,
    /// The number of slots changed: `workers`.
    Scaled = 14,
    /// Accepting paused (e.g. out of descriptors), it resumes shortly: `listener`, `text`.
    AcceptPaused = 15,
    /// Worker output was dropped (prefixed output only): the host's stdout or stderr did not
    /// take it fast enough, or is gone. `worker_id`, `lines`, `bytes` (since the last such
    /// event; at most about one per worker a second).
    OutputDropped = 16,
    /// Something went wrong that the supervisor carries on from: `text` says what.
    Warning = 17,
    /// A worker reached a recycling limit (max_memory, max_requests) and is being replaced:
    /// `worker_id`, `pid` (the worker replaced), `exit_reason` (`MEMORY` or
    /// `MAX_REQUESTS`, the reason its exit will carry).
    Recycling = 18,
}

/// Why a worker exited (`rcluster_event.exit_reason`, `rcluster_worker_info.last_exit_reason`).
#[allow(non_camel_case_types)]
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum rcluster_exit_reason {
    /// No exit (the field does not apply).
    None = 0,
    /// Exited on its own with a non-zero code, or died of a signal.
    Crashed = 1,
    /// Exited on its own with code 0.
    Exited = 2,
    /// Stopped on request: restart_worker, scale down, replaced by reload.
    Requested = 3,
    /// Not ready within the ready timeout.
    ReadyTimeout = 4,
    /// Silent longer than the heartbeat timeout.
    Heartbeat = 5,
    /// Over its memory limit (max_memory): replaced by a new worker.
    Memory = 6,
    /// Sent a malformed or oversized frame.
    ProtocolError = 7,
    /// The supervisor is stopping.
    Shutdown = 8,
    /// Exited on its own with a code listed in no_restart_codes: a requested end.
    NoRestart = 9,
    /// Served its max_requests (plus jitter): replaced by a new worker.
    MaxRequests = 10,
}

/// A worker's lifecycle state in a snapshot.
#[allow(non_camel_case_types)]
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum rcluster_worker_state {
    /// Exec'd; has not said hello yet.
    Starting = 1,
    /// Said hello; not ready yet.
    Online = 2,
    /// Ready for work.
    Ready = 3,
    /// Told to stop; finishing.
    Draining = 4,
    /// Gone and reaped (a slot waiting for its restart).
    Exited = 5,
}

/// Something that happened in the cluster. Read-only; `data` and `text` belong to the event
/// and stay valid until `rcluster_event_free`.
#[repr(C)]
pub struct rcluster_event {
    pub kind: rcluster_event_kind,
    /// The worker slot (0-based), when the event concerns one.
    pub worker_id: u32,
    /// The worker's process id, when known.
    pub pid: u32,
    /// The worker's generation (SPAWNED, EXIT) or the reload's (RELOAD_*).
    pub generation: u32,
    /// MESSAGE: the message bytes (not NUL-terminated; may contain NULs); NULL otherwise.
    pub data: *const u8,
    /// MESSAGE: the number of bytes at `data`.
    pub len: usize,
    /// SPAWN_FAILED, PROTOCOL_ERROR, RELOAD_FAILED, ACCEPT_PAUSED, WARNING: a NUL-terminated
    /// explanation; NULL otherwise.
    pub text: *const c_char,
    /// ACCEPT_PAUSED: the listener's name; NULL otherwise.
    pub listener: *const c_char,
    /// EXIT: the exit code, or -1 when the process died of a signal (or it is unknown).
    pub exit_code: i32,
    /// EXIT: the signal that killed the process, or 0.
    pub exit_signal: i32,
    /// EXIT: why it exited.
    pub exit_reason: rcluster_exit_reason,
    /// RESTARTING: the delay before the restart, in milliseconds.
    pub delay_ms: u64,
    /// RESTARTING: the attempt number; GAVE_UP: the restarts within the window.
    pub count: u32,
    /// GAVE_UP: the window, in milliseconds.
    pub window_ms: u64,
    /// SCALED: the new number of slots.
    pub workers: usize,
    /// OUTPUT_DROPPED: the number of lines dropped.
    pub lines: u64,
    /// OUTPUT_DROPPED: the number of bytes dropped.
    pub bytes: u64,
    /// MESSAGE: what the bytes are (`RCLUSTER_CONTENT_*`; RAW from a worker that sets no
    /// type). Last, so that programs built against an older header read the fields before it
    /// where they were.
    pub content_type: rcluster_content_type,
}

/// The allocation behind an `rcluster_event*`: the view first, so the two pointers are equal.
#[repr(C)]
struct Owned {
    view: rcluster_event,
    data: Vec<u8>,
    text: Option<CString>,
    listener: Option<CString>,
}

pub(crate) fn exit_reason(r: ExitReason) -> rcluster_exit_reason {
    match r {
        ExitReason::Crashed => rcluster_exit_reason::Crashed,
        ExitReason::Exited => rcluster_exit_reason::Exited,
        ExitReason::Requested => rcluster_exit_reason::Requested,
        ExitReason::ReadyTimeout => rcluster_exit_reason::ReadyTimeout,
        ExitReason::Heartbeat => rcluster_exit_reason::Heartbeat,
        ExitReason::Memory => rcluster_exit_reason::Memory,
        ExitReason::ProtocolError => rcluster_exit_reason::ProtocolError,
        ExitReason::Shutdown => rcluster_exit_reason::Shutdown,
        ExitReason::NoRestart => rcluster_exit_reason::NoRestart,
        ExitReason::MaxRequests => rcluster_exit_reason::MaxRequests,
    }
}

/// Text from the core for C: interior NULs (which a path could hold) become "\0".
pub(crate) fn c_text(s: &str) -> CString {
    CString::new(s.replace('\0', "\\0")).unwrap_or_default()
}

fn blank(kind: rcluster_event_kind) -> rcluster_event {
    rcluster_event {
        kind,
        worker_id: 0,
        pid: 0,
        generation: 0,
        data: std::ptr::null(),
        len: 0,
        text: std::ptr::null(),
        listener: std::ptr::null(),
        exit_code: 0,
        exit_signal: 0,
        exit_reason: rcluster_exit_reason::None,
        delay_ms: 0,
        count: 0,
        window_ms: 0,
        workers: 0,
        lines: 0,
        bytes: 0,
        content_type: RCLUSTER_CONTENT_RAW,
    }
}

fn ms(d: std::time::Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

/// Converts a core event into a heap event for C; the caller owns the pointer.
pub(crate) fn into_c(ev: Event) -> *mut rcluster_event {
    use rcluster_event_kind as K;
    let mut o = Box::new(Owned {
        view: blank(K::AllDown),
        data: Vec::new(),
        text: None,
        listener: None,
    });
    let v = &mut o.view;
    match ev {
        Event::Spawned {
            id,
            pid,
            generation,
        } => (v.kind, v.worker_id, v.pid, v.generation) = (K::Spawned, id, pid, generation),
        Event::Online { id, pid } => (v.kind, v.worker_id, v.pid) = (K::Online, id, pid),
        Event::Ready { id, pid } => (v.kind, v.worker_id, v.pid) = (K::Ready, id, pid),
        Event::Message {
            id,
            pid,
            data,
            content,
        } => {
            (v.kind, v.worker_id, v.pid) = (K::Message, id, pid);
            v.content_type = content as rcluster_content_type;
            o.data = data;
        }
        Event::Exit {
            id,
            generation,
            info,
        } => {
            (v.kind, v.worker_id, v.generation, v.pid) = (K::Exit, id, generation, info.pid);
            v.exit_code = info.code.unwrap_or(-1);
            v.exit_signal = info.signal.unwrap_or(0);
            v.exit_reason = exit_reason(info.reason);
        }
        Event::SpawnFailed { id, error } => {
            (v.kind, v.worker_id) = (K::SpawnFailed, id);
            o.text = Some(c_text(&error));
        }
        Event::Restarting { id, delay, attempt } => {
            (v.kind, v.worker_id, v.delay_ms, v.count) = (K::Restarting, id, ms(delay), attempt)
        }
        Event::GaveUp {
            id,
            restarts,
            window,
        } => (v.kind, v.worker_id, v.count, v.window_ms) = (K::GaveUp, id, restarts, ms(window)),
        Event::AllDown => v.kind = K::AllDown,
        Event::ProtocolError { id, pid, detail } => {
            (v.kind, v.worker_id, v.pid) = (K::ProtocolError, id, pid);
            o.text = Some(c_text(&detail));
        }
        Event::ReloadStarted { generation } => {
            (v.kind, v.generation) = (K::ReloadStarted, generation)
        }
        Event::ReloadDone { generation } => (v.kind, v.generation) = (K::ReloadDone, generation),
        Event::ReloadFailed { generation, reason } => {
            (v.kind, v.generation) = (K::ReloadFailed, generation);
            o.text = Some(c_text(&reason));
        }
        Event::Scaled { workers } => (v.kind, v.workers) = (K::Scaled, workers),
        Event::AcceptPaused { listener, error } => {
            v.kind = K::AcceptPaused;
            o.listener = Some(c_text(&listener));
            o.text = Some(c_text(&error));
        }
        Event::OutputDropped { id, lines, bytes } => {
            (v.kind, v.worker_id, v.lines, v.bytes) = (K::OutputDropped, id, lines, bytes)
        }
        Event::Warning { detail } => {
            v.kind = K::Warning;
            o.text = Some(c_text(&detail));
        }
        Event::Recycling { id, pid, reason } => {
            (v.kind, v.worker_id, v.pid) = (K::Recycling, id, pid);
            v.exit_reason = exit_reason(reason);
        }
        // Pools are not in the C API yet: a task answer only comes from a worker that
        // should not send one.
        Event::TaskDone { id, .. } => {
            v.kind = K::Warning;
            o.text = Some(c_text(&format!(
                "worker {id} sent a task answer, but no pool runs"
            )));
        }
    }
    // The pointers are taken last: the Vec and CStrings keep their heap buffers when the Box
    // is turned into a raw pointer, so they stay valid until `rcluster_event_free`.
    if o.view.kind == K::Message {
        o.view.data = o.data.as_ptr();
        o.view.len = o.data.len();
    }
    o.view.text = o.text.as_ref().map_or(std::ptr::null(), |t| t.as_ptr());
    o.view.listener = o.listener.as_ref().map_or(std::ptr::null(), |t| t.as_ptr());
    Box::into_raw(o).cast()
}

/// Releases an event from `rcluster_supervisor_next_event` / `_try_next_event`. NULL is
/// allowed and does nothing. Do not free an event passed to a callback: the library does.
///
/// # Safety
/// `ev` is NULL or an event returned by this library and not yet freed.
#[no_mangle]
pub unsafe extern "C" fn rcluster_event_free(ev: *mut rcluster_event) {
    guard_void("rcluster_event_free", || {
        if !ev.is_null() {
            // SAFETY: made by `into_c` as a Box<Owned> whose first field is the view.
            drop(unsafe { Box::from_raw(ev.cast::<Owned>()) });
        }
    })
}

/// The fixed name of an exit reason ("crashed", "requested", ...); never NULL.
#[no_mangle]
pub extern "C" fn rcluster_exit_reason_text(reason: u32) -> *const c_char {
    let text: &'static std::ffi::CStr = match reason {
        1 => c"crashed",
        2 => c"exited",
        3 => c"requested",
        4 => c"ready_timeout",
        5 => c"heartbeat",
        6 => c"memory",
        7 => c"protocol_error",
        8 => c"shutdown",
        9 => c"no_restart",
        10 => c"max_requests",
        0 => c"none",
        _ => c"unknown",
    };
    text.as_ptr()
}

/// One worker process (or a slot without one) in a snapshot. Plain data: copy it freely.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct rcluster_worker_info {
    /// The slot id, 0-based, stable across restarts.
    pub id: u32,
    /// The process id (0 when the slot has no process).
    pub pid: u32,
    pub generation: u32,
    pub state: rcluster_worker_state,
    /// Milliseconds since the process was spawned.
    pub uptime_ms: u64,
    /// Restarts of this slot so far.
    pub restarts: u32,
    /// How the slot's previous process ended (`RCLUSTER_EXIT_REASON_NONE` if none did);
    /// its code is -1 when it died of a signal, its signal 0 when it did not.
    pub last_exit_reason: rcluster_exit_reason,
    pub last_exit_code: i32,
    pub last_exit_signal: i32,
}

/// The workers of a cluster at one moment (opaque). Made by `rcluster_supervisor_snapshot`,
/// released by `rcluster_snapshot_free`.
pub struct rcluster_snapshot {
    pub(crate) workers: Vec<rcluster_worker_info>,
}

fn state(s: WorkerState) -> rcluster_worker_state {
    match s {
        WorkerState::Starting => rcluster_worker_state::Starting,
        WorkerState::Online => rcluster_worker_state::Online,
        WorkerState::Ready => rcluster_worker_state::Ready,
        WorkerState::Draining => rcluster_worker_state::Draining,
        WorkerState::Exited => rcluster_worker_state::Exited,
    }
}

pub(crate) fn info(w: &WorkerInfo) -> rcluster_worker_info {
    let last: Option<&ExitInfo> = w.last_exit.as_ref();
    rcluster_worker_info {
        id: w.id,
        pid: w.pid,
        generation: w.generation,
        state: state(w.state),
        uptime_ms: ms(w.uptime),
        restarts: w.restarts,
        last_exit_reason: last.map_or(rcluster_exit_reason::None, |e| exit_reason(e.reason)),
        last_exit_code: last.and_then(|e| e.code).unwrap_or(-1),
        last_exit_signal: last.and_then(|e| e.signal).unwrap_or(0),
    }
}

/// The number of entries in a snapshot.
///
/// # Safety
/// `snap` is NULL or a live snapshot; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rcluster_snapshot_len(
    snap: *const rcluster_snapshot,
    out: *mut usize,
) -> rcluster_result {
    guard("rcluster_snapshot_len", || {
        // SAFETY: the caller passes a handle this library returned and has not freed, or NULL,
        // which `handle` refuses.
        let snap = unsafe { handle(snap, "snap") }?;
        let out = args::out(out, "out")?;
        // SAFETY: `out` is non-null (checked above) and the caller promises it points to writable
        // memory for one value.
        unsafe { args::put(out, snap.workers.len()) };
        Ok(())
    })
}

/// Copies entry `index` (0 ..< len) of a snapshot into `*out`.
///
/// # Safety
/// `snap` is NULL or a live snapshot; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rcluster_snapshot_get(
    snap: *const rcluster_snapshot,
    index: usize,
    out: *mut rcluster_worker_info,
) -> rcluster_result {
    guard("rcluster_snapshot_get", || {
        // SAFETY: the caller passes a handle this library returned and has not freed, or NULL,
        // which `handle` refuses.
        let snap = unsafe { handle(snap, "snap") }?;
        let out = args::out(out, "out")?;
        let w = snap.workers.get(index).ok_or_else(|| {
            Fail::range(
                "index",
                index,
                &format!("the snapshot has {} entries", snap.workers.len()),
            )
        })?;
        // SAFETY: `out` is non-null (checked above) and the caller promises it points to writable
        // memory for one value.
        unsafe { args::put(out, *w) };
        Ok(())
    })
}

/// Releases a snapshot. NULL is allowed and does nothing.
///
/// # Safety
/// `snap` is NULL or a snapshot from `rcluster_supervisor_snapshot` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn rcluster_snapshot_free(snap: *mut rcluster_snapshot) {
    guard_void("rcluster_snapshot_free", || {
        if !snap.is_null() {
            // SAFETY: made by Box::into_raw in rcluster_supervisor_snapshot, freed once.
            drop(unsafe { Box::from_raw(snap) });
        }
    })
}
