//! The worker side: this process's link to its primary, and the watcher of that link.

use std::cell::RefCell;
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::time::Duration;

use napi::bindgen_prelude::*;
use napi::sys;
use napi_derive::napi;
use rcluster_core::{
    Answer, ContentType, Dispatch, SharedAcceptor, TurnCounter, Worker, WorkerEvent,
};

use crate::accept::NativeAcceptor;
use crate::error::{from_napi, to_js};
use crate::message;
use crate::watch::WatchSlot;

/// A non-message event (`connection`, `disconnect`, `gone`) or a message that is neither JSON
/// nor v8 (`raw`, `text`, `binding`).
#[napi(object)]
pub struct NativeWorkerEvent {
    #[napi(js_name = "type")]
    pub kind: String,
    /// The connection's socket (non-blocking, owned by the receiver from now on).
    pub fd: Option<i32>,
    pub id: Option<f64>,
    pub listener: Option<String>,
    pub peer: Option<String>,
    pub data: Option<Either<String, Buffer>>,
    /// `task`: the function's name ("" for the default) and the payload's content type.
    pub name: Option<String>,
    pub content: Option<u32>,
}

#[napi(object)]
pub struct NativeListening {
    pub name: String,
    pub address: String,
    /// In `shared` mode, or for a round-robin listener the kernel turns, the listening socket
    /// to accept on.
    pub fd: Option<i32>,
    /// For a listener the kernel turns, asked for with `counts`: a counter waits in
    /// `takeTurnCounter()`.
    pub counter: bool,
}

/// The count of this worker's socket in the kernel's turns: `done()` once per connection
/// accepted from it, when the connection closes. Held by the JS that counts, and freed with it.
#[napi]
pub struct NativeTurnCounter {
    pub(crate) inner: std::sync::Arc<TurnCounter>,
}

#[napi]
impl NativeTurnCounter {
    #[napi]
    pub fn done(&self) {
        self.inner.done();
    }
}

fn simple(kind: &str) -> NativeWorkerEvent {
    NativeWorkerEvent {
        kind: kind.to_string(),
        fd: None,
        id: None,
        listener: None,
        peer: None,
        data: None,
        name: None,
        content: None,
    }
}

/// Hands a descriptor to JS. Not made non-blocking here: libuv does that itself when a handle
/// opens it (`uv_tcp_open`, `uv_pipe_open`), and two more system calls per connection for it
/// were measurable.
fn give_away(fd: OwnedFd) -> i32 {
    fd.into_raw_fd()
}

/// A JSON message is returned as a plain string and a v8 one as a Buffer (the common cases,
/// kept cheap); everything else as an object whose `type` is its kind (or content type).
type Item = Either3<String, Buffer, NativeWorkerEvent>;

fn to_item(ev: WorkerEvent) -> Item {
    match ev {
        WorkerEvent::Message { data, content } => match message::decode(content, data) {
            ("json", Either::A(s)) => Either3::A(s),
            ("v8", Either::B(b)) => Either3::B(b),
            (kind, data) => Either3::C(NativeWorkerEvent {
                data: Some(data),
                ..simple(kind)
            }),
        },
        WorkerEvent::Connection(c) => Either3::C(NativeWorkerEvent {
            fd: Some(give_away(c.fd)),
            id: Some(c.id as f64),
            listener: Some(c.listener),
            peer: Some(c.peer),
            ..simple("connection")
        }),
        WorkerEvent::Disconnect => Either3::C(simple("disconnect")),
        WorkerEvent::PrimaryGone => Either3::C(simple("gone")),
        // Only a pool's worker runtime (`lib/pool_worker.js`) gets tasks.
        WorkerEvent::Task(t) => Either3::C(NativeWorkerEvent {
            id: Some(t.id as f64),
            data: Some(Either::B(t.payload.into())),
            name: Some(t.name),
            content: Some(t.content as u32),
            ..simple("task")
        }),
        // A task taken earlier was cancelled: `lib/pool_worker.js` drops it if it waits.
        WorkerEvent::TaskCancelled(id) => Either3::C(NativeWorkerEvent {
            id: Some(id as f64),
            ..simple("cancel")
        }),
    }
}

/// Every event waiting, up to `max` (then a last item of type `more`), without blocking.
/// JSON messages that follow each other come as one string, their texts joined by newlines
/// (which JSON never contains unescaped): one JS string for a run of messages instead of one
/// each.
fn drain(worker: &Worker, max: usize) -> napi::Result<Vec<Item>, &'static str> {
    let mut events = Vec::new();
    let taken = worker
        .next_events(Some(Duration::ZERO), max, &mut events)
        .map_err(to_js)?;
    items(events, taken == max)
}

/// As `drain`, after reading the socket now (`Worker::poll_events`): for a pool worker about
/// to start a task that waited, so that a cancel that arrived meanwhile is seen.
fn poll(worker: &Worker, max: usize) -> napi::Result<Vec<Item>, &'static str> {
    let mut events = Vec::new();
    let taken = worker.poll_events(max, &mut events).map_err(to_js)?;
    items(events, taken == max)
}

fn items(events: Vec<WorkerEvent>, short: bool) -> napi::Result<Vec<Item>, &'static str> {
    let mut out = Vec::new();
    let mut json = String::new();
    for ev in events {
        if let WorkerEvent::Message { data, content } = &ev {
            if message::push_json(&mut json, *content, data) {
                continue;
            }
        }
        if !json.is_empty() {
            out.push(Either3::A(std::mem::take(&mut json)));
        }
        match ev {
            WorkerEvent::PrimaryGone => {
                out.push(Either3::C(simple("gone")));
                return Ok(out);
            }
            ev => out.push(to_item(ev)),
        }
    }
    if !json.is_empty() {
        out.push(Either3::A(json));
    }
    if short {
        // Stopped short: more may be waiting (in memory, where no descriptor tells).
        out.push(Either3::C(simple("more")));
    }
    Ok(out)
}

/// This process's link to its primary.
#[napi]
pub struct NativeWorker {
    inner: Rc<Worker>,
    watcher: WatchSlot,
    /// The counter of the last listen answer that had one, until JS takes it.
    counter: RefCell<Option<TurnCounter>>,
}

/// Whether the listening socket `fd` has connections waiting to be accepted (looked at without
/// waiting). A worker that stops keeps its listener open until this is false: closing a
/// listening socket resets the connections still queued in it, which the kernel had already
/// accepted for the clients.
#[napi]
pub fn listener_has_queued(fd: i32) -> bool {
    rcluster_core::listener_has_queued(fd)
}

/// Connects to the primary when this process is an rcluster worker; null otherwise.
#[napi]
pub fn attach_worker() -> napi::Result<Option<NativeWorker>, &'static str> {
    let Some(inner) = Worker::from_env().map_err(to_js)? else {
        return Ok(None);
    };
    // JS decides what a lost primary means (it emits 'disconnect', then exits).
    inner.set_exit_on_primary_loss(false);
    Ok(Some(NativeWorker {
        inner: Rc::new(inner),
        watcher: WatchSlot::default(),
        counter: RefCell::new(None),
    }))
}

#[napi]
impl NativeWorker {
    #[napi(getter)]
    pub fn id(&self) -> u32 {
        self.inner.id()
    }

    #[napi(getter)]
    pub fn generation(&self) -> u32 {
        self.inner.generation()
    }

    #[napi(getter)]
    pub fn max_message(&self) -> f64 {
        self.inner.max_message() as f64
    }

    /// Milliseconds between heartbeats, as the primary asks; null when it does not check them.
    #[napi(getter)]
    pub fn heartbeat_interval_ms(&self) -> Option<f64> {
        self.inner
            .heartbeat_interval()
            .map(|d| d.as_millis() as f64)
    }

    /// Sends a message of content type `content` (a `codec.CONTENT` number) to the primary;
    /// blocks only while the socket is full.
    #[napi]
    pub fn send(
        &self,
        content: u32,
        data: Either<String, Buffer>,
    ) -> napi::Result<(), &'static str> {
        let content = message::content(content)?;
        self.inner
            .send_as(content, message::bytes(&data))
            .map_err(to_js)
    }

    /// Sends JSON messages in one write: their texts joined by newlines.
    #[napi]
    pub fn send_json(&self, joined: String) -> napi::Result<(), &'static str> {
        self.inner
            .send_many_as(ContentType::Json, &message::json_batch(&joined))
            .map_err(to_js)
    }

    /// Answers tasks of a pool, all in one write: `ok[i]` says whether `payloads[i]` is the
    /// value of task `ids[i]` or the error it raised; every payload has content type
    /// `content`.
    #[napi]
    pub fn answer_many(
        &self,
        ids: Vec<f64>,
        ok: Vec<bool>,
        payloads: Vec<Buffer>,
        content: u32,
    ) -> napi::Result<(), &'static str> {
        let answers: Vec<Answer<'_>> = ids
            .iter()
            .zip(&ok)
            .zip(&payloads)
            .map(|((&id, &ok), p)| Answer {
                id: id as u64,
                ok,
                content: content as u8,
                payload: p,
            })
            .collect();
        self.inner.answer_many(&answers).map_err(to_js)
    }

    /// Tells a pool this worker cannot run tasks (its task file failed to load), and why.
    #[napi]
    pub fn boot_failed(&self, why: String) -> napi::Result<(), &'static str> {
        self.inner.boot_failed(&why).map_err(to_js)
    }

    #[napi]
    pub fn ready(&self) -> napi::Result<(), &'static str> {
        self.inner.ready().map_err(to_js)
    }

    #[napi]
    pub fn heartbeat(&self) -> napi::Result<(), &'static str> {
        self.inner.heartbeat().map_err(to_js)
    }

    #[napi]
    pub fn disconnect(&self) -> napi::Result<(), &'static str> {
        self.inner.disconnect().map_err(to_js)
    }

    #[napi]
    pub fn connection_closed(&self, id: f64) -> napi::Result<(), &'static str> {
        self.inner.connection_closed(id as u64).map_err(to_js)
    }

    /// Gives connection `id` back to the primary, with its socket `fd`, which is closed here
    /// whatever happens: this worker's server has no room for it (`maxConnections`). The
    /// primary hands it to another worker, and this one none of that listener's until `room`.
    #[napi]
    pub fn give_back(&self, id: f64, fd: i32) -> napi::Result<(), &'static str> {
        if fd < 0 {
            return Err(napi::Error::new(
                "ERR_RCLUSTER_FD",
                format!("connection {id}: fd {fd} must be a descriptor (0 or more)"),
            ));
        }
        // SAFETY: the descriptor of a connection the primary handed over, which JS gives away
        // here once and uses no more.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        self.inner.give_back(id as u64, socket).map_err(to_js)
    }

    /// This worker has room again for connections of listener `name`, after it gave one back.
    #[napi]
    pub fn room(&self, name: String) -> napi::Result<(), &'static str> {
        self.inner.room(&name).map_err(to_js)
    }

    /// Asks the primary for a listener on `address`. Blocks the JS thread for one round trip
    /// to the primary's loop thread (which binds), as Node's own `server.listen()` blocks in
    /// bind(2); events that arrive meanwhile are kept for `drain`. With `counts`, this worker
    /// promises to call `done()` on the counter (`takeTurnCounter()`, right after) when it
    /// closes each connection it accepted from the socket of a listener the kernel turns, and
    /// the kernel passes it over while it has more connections in hand than the next.
    #[napi]
    pub fn listen(
        &self,
        address: String,
        dispatch: String,
        counts: Option<bool>,
    ) -> napi::Result<NativeListening, &'static str> {
        let dispatch: Dispatch = dispatch.parse().map_err(to_js)?;
        let l = match counts {
            Some(true) => self.inner.listen_counting(&address, dispatch),
            _ => self.inner.listen(&address, dispatch),
        }
        .map_err(to_js)?;
        let counter = l.counter.is_some();
        // Kept for the next call only: one listen's counter at most waits here.
        *self.counter.borrow_mut() = l.counter;
        Ok(NativeListening {
            name: l.name,
            address: l.addr,
            fd: l.fd.map(give_away),
            counter,
        })
    }

    /// An acceptor of `shared` listener `name`, whose socket this process inherited at
    /// `inherited_fd` (taken over): the core asks the primary for the listener (one round
    /// trip, as `listen`), and accepts from the copy it answers with and keeps level through
    /// the share map; from an older primary, from the inherited socket.
    #[napi]
    pub fn accept_shared(
        &self,
        name: String,
        inherited_fd: i32,
    ) -> napi::Result<NativeAcceptor, &'static str> {
        if inherited_fd < 0 {
            return Err(napi::Error::new(
                "ERR_RCLUSTER_FD",
                format!("listener {name}: inherited fd {inherited_fd} must be 0 or more"),
            ));
        }
        // SAFETY: the listener's socket this process inherited; JS hands it over once.
        let inherited = unsafe { OwnedFd::from_raw_fd(inherited_fd) };
        SharedAcceptor::of_listener(&self.inner, &name, inherited)
            .map(NativeAcceptor::of)
            .map_err(|e| {
                napi::Error::new("ERR_RCLUSTER_FD", format!("shared listener {name}: {e}"))
            })
    }

    /// The counter of the last `listen` answer that came with one (null if none, or taken).
    #[napi]
    pub fn take_turn_counter(&self) -> Option<NativeTurnCounter> {
        self.counter
            .borrow_mut()
            .take()
            .map(|inner| NativeTurnCounter {
                inner: std::sync::Arc::new(inner),
            })
    }

    /// Tells the primary this worker closed its server on listener `name`.
    #[napi]
    pub fn unlisten(&self, name: String) -> napi::Result<(), &'static str> {
        self.inner.unlisten(&name).map_err(to_js)
    }

    /// Waits up to `timeout_ms` for one event, blocking the JS thread: only for the start-up
    /// handshake of `cluster`-style workers.
    #[napi]
    pub fn next_event(&self, timeout_ms: f64) -> napi::Result<Option<Item>, &'static str> {
        let timeout = Duration::from_secs_f64(timeout_ms.max(0.0) / 1000.0);
        Ok(self
            .inner
            .next_event(Some(timeout))
            .map_err(to_js)?
            .map(to_item))
    }

    /// Every event waiting, up to `max`; see [`drain`].
    #[napi(ts_return_type = "Array<string | Buffer | NativeWorkerEvent>")]
    pub fn drain(&self, max: u32) -> napi::Result<Vec<Item>, &'static str> {
        drain(&self.inner, max as usize)
    }

    /// As `drain`, after reading the socket now, even when the last read emptied it.
    #[napi(ts_return_type = "Array<string | Buffer | NativeWorkerEvent>")]
    pub fn poll(&self, max: u32) -> napi::Result<Vec<Item>, &'static str> {
        poll(&self.inner, max as usize)
    }

    /// Calls `callback` on the JS thread with the waiting events (up to [`message::BATCH`], as
    /// `drain` returns them) whenever some wait.
    #[napi(ts_args_type = "callback: (items: Array<string | Buffer | NativeWorkerEvent>) => void")]
    pub fn watch(
        &mut self,
        env: Env,
        callback: Function<'_, sys::napi_value, ()>,
    ) -> napi::Result<(), &'static str> {
        let fd = self.inner.as_raw_fd();
        let worker = Rc::clone(&self.inner);
        let produce = Box::new(move |env| {
            let items = drain(&worker, message::BATCH)?;
            // SAFETY: called on the JS thread with its live env.
            unsafe { Vec::to_napi_value(env, items) }
                .map(Some)
                .map_err(from_napi)
        });
        self.watcher
            .start(&env, fd, callback, produce, "rcluster:worker", false)
            .map_err(from_napi)
    }

    #[napi]
    pub fn set_ref(&self, keep_alive: bool) {
        self.watcher.set_ref(keep_alive);
    }

    #[napi]
    pub fn unwatch(&mut self) {
        self.watcher.close();
    }
}
