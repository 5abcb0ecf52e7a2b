//! `rcluster_worker`: the worker side, for programs started by an rcluster primary.

use std::ffi::{c_char, c_int, CString};
use std::os::fd::IntoRawFd;

use rcluster_core::{Answer, Worker, WorkerEvent};

use crate::args::{self, handle};
use crate::event::c_text;
use crate::modes::{content_from, rcluster_content_type, RCLUSTER_CONTENT_RAW};
use crate::result::{guard, guard_void, rcluster_result, Fail, Res};

/// This process's link to its primary (opaque). Made by `rcluster_worker_from_env`, released
/// by `rcluster_worker_free`. Thread-safe: one thread may wait in `next_event` while others
/// `send`, `heartbeat` or report closed connections.
pub struct rcluster_worker {
    inner: Worker,
}

/// What an `rcluster_worker_event` reports.
#[allow(non_camel_case_types)]
#[repr(u32)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum rcluster_worker_event_kind {
    /// A user message from the primary: `data`, `len`.
    Message = 1,
    /// The primary asks this worker to finish its work and exit.
    Disconnect = 2,
    /// A client connection the primary accepted for this worker: `connection_id`, `fd`,
    /// `listener`, `peer`.
    Connection = 3,
    /// The primary is gone (only after `rcluster_worker_set_exit_on_primary_loss(w, false)`;
    /// by default the process exits with status 0 instead).
    PrimaryGone = 4,
    /// A task of a pool: `task_id`, `name`, `content_type`, and its payload in `data`, `len`.
    /// Answer it with `rcluster_worker_answer`.
    Task = 5,
    /// The pool cancelled task `task_id`, which this worker took earlier (an event of kind
    /// `TASK`) and which waited here: drop it if it has not started, and never answer it
    /// then; ignore this when it has started or was answered. A worker that runs each task
    /// as soon as it takes it may ignore it: the library never hands out a task whose cancel
    /// arrived before it was taken.
    TaskCancelled = 6,
}

/// Something the primary told this worker. Read-only; `data`, `listener` and `peer` belong to
/// the event and stay valid until `rcluster_worker_event_free`.
#[repr(C)]
pub struct rcluster_worker_event {
    pub kind: rcluster_worker_event_kind,
    /// MESSAGE: the message bytes (not NUL-terminated; may contain NULs); NULL otherwise.
    pub data: *const u8,
    /// MESSAGE: the number of bytes at `data`.
    pub len: usize,
    /// CONNECTION: the id to pass to `rcluster_worker_connection_closed`.
    pub connection_id: u64,
    /// CONNECTION: the client socket, in blocking mode as accept(2) returns it, CLOEXEC.
    /// It belongs to the program from now on (freeing the event does not close it). When done,
    /// `shutdown(fd, SHUT_WR)` first (the primary holds a copy until it has read the
    /// acknowledgement, and a plain close would not end the connection), then `close(fd)` and
    /// `rcluster_worker_connection_closed`. -1 for other kinds.
    pub fd: c_int,
    /// CONNECTION: the name of the listener it came in on; NULL otherwise.
    pub listener: *const c_char,
    /// CONNECTION: the client's address ("IP:port", or "unix"); NULL otherwise.
    pub peer: *const c_char,
    /// MESSAGE: what the bytes are (`RCLUSTER_CONTENT_*`; RAW from a primary that sets no
    /// type). Last, so that programs built against an older header read the fields before it
    /// where they were.
    pub content_type: rcluster_content_type,
    /// TASK: the id to answer with; TASK_CANCELLED: the task to drop; 0 otherwise.
    pub task_id: u64,
    /// TASK: the function to run ("" for the default); NULL otherwise.
    pub name: *const c_char,
}

#[repr(C)]
struct Owned {
    view: rcluster_worker_event,
    data: Vec<u8>,
    listener: Option<CString>,
    peer: Option<CString>,
    name: Option<CString>,
}

fn into_c(ev: WorkerEvent) -> *mut rcluster_worker_event {
    use rcluster_worker_event_kind as K;
    let mut o = Box::new(Owned {
        view: rcluster_worker_event {
            kind: K::Disconnect,
            data: std::ptr::null(),
            len: 0,
            connection_id: 0,
            fd: -1,
            listener: std::ptr::null(),
            peer: std::ptr::null(),
            content_type: RCLUSTER_CONTENT_RAW,
            task_id: 0,
            name: std::ptr::null(),
        },
        data: Vec::new(),
        listener: None,
        peer: None,
        name: None,
    });
    match ev {
        WorkerEvent::Message { data, content } => {
            o.view.kind = K::Message;
            o.view.content_type = content as rcluster_content_type;
            o.data = data;
        }
        WorkerEvent::Disconnect => o.view.kind = K::Disconnect,
        WorkerEvent::PrimaryGone => o.view.kind = K::PrimaryGone,
        WorkerEvent::Task(t) => {
            o.view.kind = K::Task;
            o.view.task_id = t.id;
            o.view.content_type = rcluster_content_type::from(t.content);
            o.name = Some(c_text(&t.name));
            o.data = t.payload;
        }
        WorkerEvent::TaskCancelled(id) => {
            o.view.kind = K::TaskCancelled;
            o.view.task_id = id;
        }
        WorkerEvent::Connection(c) => {
            o.view.kind = K::Connection;
            o.view.connection_id = c.id;
            o.listener = Some(c_text(&c.listener));
            o.peer = Some(c_text(&c.peer));
            // Ownership of the socket passes to C here.
            o.view.fd = c.fd.into_raw_fd();
        }
    }
    // As for supervisor events: the heap buffers do not move with the Box.
    o.view.name = o.name.as_ref().map_or(std::ptr::null(), |t| t.as_ptr());
    if matches!(o.view.kind, K::Message | K::Task) {
        o.view.data = o.data.as_ptr();
        o.view.len = o.data.len();
    }
    o.view.listener = o.listener.as_ref().map_or(std::ptr::null(), |t| t.as_ptr());
    o.view.peer = o.peer.as_ref().map_or(std::ptr::null(), |t| t.as_ptr());
    Box::into_raw(o).cast()
}

pub(crate) fn worker_ref<'a>(w: *const rcluster_worker) -> Res<&'a Worker> {
    // SAFETY: every export documents that `w` is NULL or a live worker.
    Ok(&unsafe { handle(w, "w") }?.inner)
}

/// Connects to the primary named by the `RCLUSTER_*` environment (and says hello). On success
/// `*out` is the link, to release with `rcluster_worker_free`. `NOT_A_WORKER` when this
/// process was not started by an rcluster primary (run stand-alone then) or its environment is
/// malformed; `PROTOCOL` or `IO` when the handshake fails.
///
/// # Safety
/// `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rcluster_worker_from_env(
    out: *mut *mut rcluster_worker,
) -> rcluster_result {
    guard("rcluster_worker_from_env", || {
        let out = args::out(out, "out")?;
        let inner = Worker::from_env()?.ok_or_else(|| {
            Fail::new(
                rcluster_result::NotAWorker,
                "not started by an rcluster primary (no RCLUSTER_IPC_FD for this process)",
            )
        })?;
        // SAFETY: `out` is non-null (checked above) and the caller promises it points to writable
        // memory for one value.
        unsafe { args::put(out, Box::into_raw(Box::new(rcluster_worker { inner }))) };
        Ok(())
    })
}

/// Closes the link to the primary and releases the handle. NULL is allowed and does nothing.
/// The primary sees the link close; it treats the worker as gone once the process exits.
///
/// # Safety
/// `w` is NULL or a worker from `rcluster_worker_from_env` not yet freed, not in use by
/// another thread.
#[no_mangle]
pub unsafe extern "C" fn rcluster_worker_free(w: *mut rcluster_worker) {
    guard_void("rcluster_worker_free", || {
        if !w.is_null() {
            // SAFETY: made by Box::into_raw in rcluster_worker_from_env, freed once.
            drop(unsafe { Box::from_raw(w) });
        }
    })
}

/// This worker's slot id (0-based, stable across restarts) and generation (1 at start, +1 per
/// reload). Either out-parameter may be NULL if not wanted.
///
/// # Safety
/// `w` is NULL or a live worker; `out_id` and `out_generation` are NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rcluster_worker_identity(
    w: *const rcluster_worker,
    out_id: *mut u32,
    out_generation: *mut u32,
) -> rcluster_result {
    guard("rcluster_worker_identity", || {
        let w = worker_ref(w)?;
        if !out_id.is_null() {
            // SAFETY: `out_id` is non-null (checked above) and the caller promises it points to
            // writable memory for one value.
            unsafe { args::put(out_id, w.id()) };
        }
        if !out_generation.is_null() {
            // SAFETY: `out_generation` is non-null (checked above) and the caller promises it
            // points to writable memory for one value.
            unsafe { args::put(out_generation, w.generation()) };
        }
        Ok(())
    })
}

/// Tells the primary this worker is ready for work (needed with `RCLUSTER_READY_ON_EXPLICIT`;
/// harmless otherwise).
///
/// # Safety
/// `w` is NULL or a live worker.
#[no_mangle]
pub unsafe extern "C" fn rcluster_worker_ready(w: *const rcluster_worker) -> rcluster_result {
    guard("rcluster_worker_ready", || Ok(worker_ref(w)?.ready()?))
}

/// Answers task `task_id` (from an event of kind `TASK`): `ok` true, `data` is its value;
/// false, the error it raised; `content` says how it is encoded. Blocks while the socket is
/// full. `MESSAGE_TOO_LARGE` over the primary's limit.
///
/// # Safety
/// `w` is NULL or a live worker; `data` is readable for `len` bytes (or NULL with `len` 0).
#[no_mangle]
pub unsafe extern "C" fn rcluster_worker_answer(
    w: *const rcluster_worker,
    task_id: u64,
    ok: bool,
    content: u8,
    data: *const u8,
    len: usize,
) -> rcluster_result {
    guard("rcluster_worker_answer", || {
        let w = worker_ref(w)?;
        // SAFETY: the caller promises `data` is readable for `len` bytes.
        let payload = unsafe { args::buffer(data, len, "data") }?;
        Ok(w.answer(&Answer {
            id: task_id,
            ok,
            content,
            payload,
        })?)
    })
}

/// Tells a pool this worker cannot run tasks (what it needs failed to load), with `why`;
/// then exit with status 3, which a pool does not restart. Its waiting tasks end with status
/// `NO_WORKERS` and this text once no worker is left.
///
/// # Safety
/// `w` is NULL or a live worker; `why` is NULL or a NUL-terminated string.
#[no_mangle]
pub unsafe extern "C" fn rcluster_worker_boot_failed(
    w: *const rcluster_worker,
    why: *const c_char,
) -> rcluster_result {
    guard("rcluster_worker_boot_failed", || {
        let w = worker_ref(w)?;
        // SAFETY: the caller promises a NUL-terminated string.
        let why = unsafe { args::utf8(why, "why") }?;
        Ok(w.boot_failed(why)?)
    })
}

/// A sign of life; call it from the worker's event loop more often than the primary's
/// heartbeat timeout, so that a blocked loop is noticed.
///
/// # Safety
/// `w` is NULL or a live worker.
#[no_mangle]
pub unsafe extern "C" fn rcluster_worker_heartbeat(w: *const rcluster_worker) -> rcluster_result {
    guard("rcluster_worker_heartbeat", || {
        Ok(worker_ref(w)?.heartbeat()?)
    })
}

/// Sends a user message of `len` bytes to the primary (`data` may be NULL when `len` is 0).
/// Blocks while the socket is full. `MESSAGE_TOO_LARGE` beyond the primary's limit.
///
/// # Safety
/// `w` is NULL or a live worker; `data` is NULL or points to `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn rcluster_worker_send(
    w: *const rcluster_worker,
    data: *const u8,
    len: usize,
) -> rcluster_result {
    guard("rcluster_worker_send", || {
        let w = worker_ref(w)?;
        // SAFETY: the caller promises `data` is readable for `len` bytes during the call (NULL
        // only with `len` 0).
        let data = unsafe { args::buffer(data, len, "data") }?;
        Ok(w.send(data)?)
    })
}

/// Like `rcluster_worker_send`, with the message's content type (`RCLUSTER_CONTENT_*`), which
/// the primary reads with the message. `INVALID_ARGUMENT` for a number that is no type;
/// `max_message` counts the `len` bytes only.
///
/// # Safety
/// `w` is NULL or a live worker; `data` is NULL or points to `len` readable bytes.
#[no_mangle]
pub unsafe extern "C" fn rcluster_worker_send_as(
    w: *const rcluster_worker,
    content_type: rcluster_content_type,
    data: *const u8,
    len: usize,
) -> rcluster_result {
    guard("rcluster_worker_send_as", || {
        let w = worker_ref(w)?;
        let content = content_from(content_type)?;
        // SAFETY: the caller promises `data` is readable for `len` bytes during the call (NULL
        // only with `len` 0).
        let data = unsafe { args::buffer(data, len, "data") }?;
        Ok(w.send_as(content, data)?)
    })
}

/// Tells the primary that connection `connection_id` is closed, making room for another
/// (least-connections dispatch and max_inflight count open connections). Costs nothing when
/// the primary does not count them. Call it after closing the socket.
///
/// # Safety
/// `w` is NULL or a live worker.
#[no_mangle]
pub unsafe extern "C" fn rcluster_worker_connection_closed(
    w: *const rcluster_worker,
    connection_id: u64,
) -> rcluster_result {
    guard("rcluster_worker_connection_closed", || {
        Ok(worker_ref(w)?.connection_closed(connection_id)?)
    })
}

/// By default the process exits (status 0) when the primary disappears; pass false to get a
/// PRIMARY_GONE event instead.
///
/// # Safety
/// `w` is NULL or a live worker.
#[no_mangle]
pub unsafe extern "C" fn rcluster_worker_set_exit_on_primary_loss(
    w: *const rcluster_worker,
    exit: bool,
) -> rcluster_result {
    guard("rcluster_worker_set_exit_on_primary_loss", || {
        worker_ref(w)?.set_exit_on_primary_loss(exit);
        Ok(())
    })
}

/// The link's descriptor, readable when events may be waiting: add it to poll/epoll and call
/// `rcluster_worker_try_next_event` until it returns `RCLUSTER_RESULT_TIMEOUT`. Do not read,
/// write or close it.
///
/// # Safety
/// `w` is NULL or a live worker; `out_fd` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rcluster_worker_fd(
    w: *const rcluster_worker,
    out_fd: *mut c_int,
) -> rcluster_result {
    guard("rcluster_worker_fd", || {
        let w = worker_ref(w)?;
        let out = args::out(out_fd, "out_fd")?;
        // SAFETY: `out` is non-null (checked above) and the caller promises it points to writable
        // memory for one value.
        unsafe { args::put(out, w.as_raw_fd()) };
        Ok(())
    })
}

fn next(
    w: &Worker,
    timeout: Option<std::time::Duration>,
    out: *mut *mut rcluster_worker_event,
) -> Res {
    match w.next_event(timeout)? {
        Some(ev) => {
            // SAFETY: `out` is non-null (checked above) and the caller promises it points to
            // writable memory for one value.
            unsafe { args::put(out, into_c(ev)) };
            Ok(())
        }
        None => Err(Fail::quiet(rcluster_result::Timeout)),
    }
}

/// Waits up to `timeout_ms` milliseconds (negative: forever) for the next event from the
/// primary. On success `*out` is an event to release with `rcluster_worker_event_free`.
/// `RCLUSTER_RESULT_TIMEOUT` when none came in time. A connection is acknowledged to the
/// primary before it is returned.
///
/// # Safety
/// `w` is NULL or a live worker; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rcluster_worker_next_event(
    w: *const rcluster_worker,
    timeout_ms: i64,
    out: *mut *mut rcluster_worker_event,
) -> rcluster_result {
    guard("rcluster_worker_next_event", || {
        let w = worker_ref(w)?;
        let out = args::out(out, "out")?;
        next(w, args::timeout(timeout_ms), out)
    })
}

/// The next event if one is waiting (`RCLUSTER_RESULT_TIMEOUT` if none), without blocking.
///
/// # Safety
/// `w` is NULL or a live worker; `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rcluster_worker_try_next_event(
    w: *const rcluster_worker,
    out: *mut *mut rcluster_worker_event,
) -> rcluster_result {
    guard("rcluster_worker_try_next_event", || {
        let w = worker_ref(w)?;
        let out = args::out(out, "out")?;
        next(w, Some(std::time::Duration::ZERO), out)
    })
}

/// Releases a worker event. It does not close a connection's `fd` (that belongs to the
/// program). NULL is allowed and does nothing.
///
/// # Safety
/// `ev` is NULL or an event from this library not yet freed.
#[no_mangle]
pub unsafe extern "C" fn rcluster_worker_event_free(ev: *mut rcluster_worker_event) {
    guard_void("rcluster_worker_event_free", || {
        if !ev.is_null() {
            // SAFETY: made by `into_c` as a Box<Owned> whose first field is the view.
            drop(unsafe { Box::from_raw(ev.cast::<Owned>()) });
        }
    })
}
