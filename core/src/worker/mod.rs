//! The worker side: what a program running under rcluster uses to talk to its primary.
//!
//! `handshake` connects to the primary named by the environment; `rx` reads and decodes what
//! the primary sends; this file is the `Worker` handle and what it writes.

mod handshake;
mod rx;
pub mod shared;
#[cfg(test)]
mod tests;

pub(crate) use rx::decode_stream;
use rx::{Decoded, Rx};

use std::os::fd::{AsFd, AsRawFd, BorrowedFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::sys;
use crate::sys::listen::Dispatch;
pub use crate::sys::steer::TurnCounter;
use crate::wire::body;
use crate::wire::content::ContentType;
use crate::wire::frame::{self, Kind, FLAG_FD};

/// Something the primary told this worker.
#[derive(Debug, PartialEq, Eq)]
pub enum WorkerEvent {
    /// A user message, with its content type (`Raw` from a primary that does not set one).
    Message { data: Vec<u8>, content: ContentType },
    /// The primary asks this worker to finish its work and exit.
    Disconnect,
    /// The primary is gone (returned only when exiting on primary loss is turned off).
    PrimaryGone,
    /// A client connection the primary accepted for this worker (already acknowledged).
    Connection(Connection),
    /// A task from a pool: answer it with [`Worker::answer`] (or `answer_many`).
    Task(Task),
    /// The pool cancelled a task this worker took earlier and that waited here: drop it if
    /// it has not started, never answer it then; ignore this when it has started or was
    /// answered. A task still held by this library when its cancel arrives is dropped here,
    /// and neither event is seen (see [`Worker::poll_events`]).
    TaskCancelled(u64),
}

/// A task a pool gave this worker.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Task {
    /// Names the task in the answer; never 0.
    pub id: u64,
    /// Which function to run, as the submitter named it ("" when it named none).
    pub name: String,
    /// How the payload is encoded (`pool::CONTENT_*`).
    pub content: u8,
    pub payload: Vec<u8>,
}

/// A worker's answer to a task: its value (`ok`) or the error it raised, encoded as `content`
/// says.
#[derive(Debug, Clone, Copy)]
pub struct Answer<'a> {
    pub id: u64,
    pub ok: bool,
    pub content: u8,
    pub payload: &'a [u8],
}

/// A connection handed over by the primary. The socket is in blocking mode, as `accept(2)`
/// returns it; set it non-blocking for an event loop. When it is closed, report it with
/// [`Worker::connection_closed`] (a no-op unless the primary counts connections). Shut down
/// the write side before closing (`shutdown(SHUT_WR)`): until the primary has read the
/// acknowledgement it holds a copy, and a plain close would not end the connection.
#[derive(Debug)]
pub struct Connection {
    pub id: u64,
    pub fd: OwnedFd,
    /// The name of the listener it came in on.
    pub listener: String,
    /// The client's address (`IP:port`, or `unix`).
    pub peer: String,
}

impl PartialEq for Connection {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id
    }
}

impl Eq for Connection {}

/// A listener the primary holds for this worker (see [`Worker::listen`]).
#[derive(Debug)]
pub struct Listening {
    /// The name connections from it carry.
    pub name: String,
    /// The address it is bound to (a port 0 resolved).
    pub addr: String,
    /// In `shared` mode: the listening socket itself, to accept from.
    pub fd: Option<OwnedFd>,
    /// For a listener the kernel turns, asked for with [`Worker::listen_counting`]: call
    /// [`TurnCounter::done`] once per connection accepted from `fd`, when it is closed (or
    /// when it is accepted, to count only the accept queue).
    pub counter: Option<TurnCounter>,
}

/// This process's link to its primary. `Send + Sync`; reads and writes may happen on
/// different threads.
pub struct Worker {
    fd: OwnedFd,
    id: u32,
    generation: u32,
    max_message: usize,
    rx: Mutex<Rx>,
    tx: Mutex<Vec<u8>>,
    exit_on_primary_loss: AtomicBool,
    next_request: std::sync::atomic::AtomicU32,
    /// Connections whose close the primary wants to hear about. Its own lock: a thread blocked
    /// in `next_event` holds the receive side's.
    report_close: Mutex<std::collections::HashSet<u64>>,
}

impl Worker {
    /// Stable slot id, 0-based.
    pub fn id(&self) -> u32 {
        self.id
    }

    /// Generation: 1 at start, +1 on every reload.
    pub fn generation(&self) -> u32 {
        self.generation
    }

    /// How often to call [`Worker::heartbeat`] (`RCLUSTER_HEARTBEAT_MS`: a quarter of the
    /// primary's `heartbeat_timeout`); None when the primary does not check heartbeats.
    pub fn heartbeat_interval(&self) -> Option<Duration> {
        let ms: u64 = std::env::var("RCLUSTER_HEARTBEAT_MS").ok()?.parse().ok()?;
        (ms > 0).then(|| Duration::from_millis(ms))
    }

    /// Largest message the primary accepts.
    pub fn max_message(&self) -> usize {
        self.max_message
    }

    /// By default the process exits (status 0) when the primary disappears; turn that off to
    /// get `WorkerEvent::PrimaryGone` instead.
    pub fn set_exit_on_primary_loss(&self, exit: bool) {
        self.exit_on_primary_loss.store(exit, Ordering::Relaxed);
    }

    /// Tells the primary this worker is ready for work.
    pub fn ready(&self) -> Result<()> {
        self.write_frame(Kind::Ready, &[])
    }

    /// A sign of life; needed when the primary has a heartbeat timeout.
    pub fn heartbeat(&self) -> Result<()> {
        self.write_frame(Kind::Heartbeat, &[])
    }

    /// Sends a user message (`raw`) to the primary. Blocks while the socket is full.
    pub fn send(&self, data: &[u8]) -> Result<()> {
        self.send_as(ContentType::Raw, data)
    }

    /// Sends a user message of content type `content` to the primary; the limit counts
    /// `data` only. Blocks while the socket is full.
    pub fn send_as(&self, content: ContentType, data: &[u8]) -> Result<()> {
        if data.len() > self.max_message {
            return Err(Error::MessageTooLarge {
                size: data.len(),
                limit: self.max_message,
            });
        }
        self.write_frames(std::iter::once((Kind::Message, content.flags(), data)))
    }

    /// Sends several user messages to the primary, in order, with one write. Blocks while the
    /// socket is full. None is sent when one of them is too large.
    pub fn send_many(&self, messages: &[&[u8]]) -> Result<()> {
        self.send_many_as(ContentType::Raw, messages)
    }

    /// Sends several user messages of content type `content` to the primary, in order, with
    /// one write (see [`send_many`]).
    ///
    /// [`send_many`]: Worker::send_many
    pub fn send_many_as(&self, content: ContentType, messages: &[&[u8]]) -> Result<()> {
        if let Some(big) = messages.iter().find(|m| m.len() > self.max_message) {
            return Err(Error::MessageTooLarge {
                size: big.len(),
                limit: self.max_message,
            });
        }
        let flags = content.flags();
        self.write_frames(messages.iter().map(|m| (Kind::Message, flags, *m)))
    }

    /// Answers a task (see [`Task`]). Blocks while the socket is full.
    pub fn answer(&self, answer: &Answer<'_>) -> Result<()> {
        self.answer_many(std::slice::from_ref(answer))
    }

    /// Answers several tasks with one write: a batch of small tasks costs the primary one
    /// read. None is sent when one answer is larger than the message limit.
    pub fn answer_many(&self, answers: &[Answer<'_>]) -> Result<()> {
        if let Some(big) = answers.iter().find(|a| a.payload.len() > self.max_message) {
            return Err(Error::MessageTooLarge {
                size: big.payload.len(),
                limit: self.max_message,
            });
        }
        let bodies: Vec<Vec<u8>> = answers
            .iter()
            .map(|a| {
                let mut b = Vec::with_capacity(10 + a.payload.len());
                crate::wire::task::task_done(&mut b, a.id, a.ok, a.content, a.payload);
                b
            })
            .collect();
        self.write_frames(bodies.iter().map(|b| (Kind::TaskDone, 0, b)))
    }

    /// Tells the primary this worker cannot run tasks (its task code failed to load), with
    /// why: the pool fails its waiting tasks with that text rather than restarting the worker
    /// in a loop. Exit afterwards, with a code in `no_restart_codes`.
    pub fn boot_failed(&self, why: &str) -> Result<()> {
        let mut b = Vec::new();
        let why = &why.as_bytes()[..why.len().min(self.max_message)];
        crate::wire::task::task_done(&mut b, crate::wire::task::BOOT_FAILURE, false, 0, why);
        self.write_frame(Kind::TaskDone, &b)
    }

    /// Tells the primary that connection `id` is closed, making room for another.
    /// Only connections the primary counts (least-connections dispatch, `max_inflight`) are
    /// reported; for the others this costs nothing.
    pub fn connection_closed(&self, id: u64) -> Result<()> {
        if !self.report_close.lock().unwrap().remove(&id) {
            return Ok(());
        }
        self.write_frame(Kind::ConnectionClosed, &body::conn_id(id))
    }

    /// Tells the primary that this worker no longer takes connections of listener `name` (what
    /// `server.close()` means in a worker): it gives them to the other workers from now on.
    pub fn unlisten(&self, name: &str) -> Result<()> {
        self.write_frame(Kind::Unlisten, &body::listener_name(name))
    }

    /// Gives connection `id` back to the primary, with its socket (closed here once sent):
    /// this worker has no room for it (its server's `maxConnections`). The primary hands it to
    /// another worker, and hands this one none of that listener's until [`Worker::room`]. Its
    /// close is not reported. The primary knows the last connections it handed this worker
    /// (its handoff window's worth, 64 at least), and closes one it does not.
    pub fn give_back(&self, id: u64, fd: OwnedFd) -> Result<()> {
        self.report_close.lock().unwrap().remove(&id);
        let frame = (Kind::ConnectionBack, FLAG_FD, body::conn_id(id));
        self.send_frames(std::iter::once(frame), Some(fd.as_fd()))
    }

    /// Tells the primary this worker has room again for connections of listener `name`, after
    /// it gave one back: it hands it that listener's connections again.
    pub fn room(&self, name: &str) -> Result<()> {
        self.write_frame(Kind::Room, &body::listener_name(name))
    }

    /// Tells the primary this worker is going away on its own.
    pub fn disconnect(&self) -> Result<()> {
        self.write_frame(Kind::Disconnect, &[])
    }

    fn write_frame(&self, kind: Kind, body: &[u8]) -> Result<()> {
        self.write_frames(std::iter::once((kind, 0, body)))
    }

    /// Writes frames with one system call (more only while the socket is full).
    fn write_frames<B: AsRef<[u8]>>(
        &self,
        frames: impl Iterator<Item = (Kind, u8, B)>,
    ) -> Result<()> {
        self.send_frames(frames, None)
    }

    /// Writes `frames`, with `fd` attached to the first byte (the first frame carries it).
    fn send_frames<B: AsRef<[u8]>>(
        &self,
        frames: impl Iterator<Item = (Kind, u8, B)>,
        fd: Option<BorrowedFd<'_>>,
    ) -> Result<()> {
        let mut buf = self.tx.lock().unwrap();
        buf.clear();
        for (kind, flags, body) in frames {
            frame::encode(&mut buf, kind, flags, body.as_ref());
        }
        let mut off = match fd {
            Some(fd) => sys::send_with_fds(self.fd.as_raw_fd(), &buf, &[fd.as_raw_fd()], true)
                .map_err(|e| Error::io("sending to the primary", e))?,
            None => 0,
        };
        while off < buf.len() {
            match sys::send_blocking(self.fd.as_raw_fd(), &buf[off..]) {
                Ok(n) => off += n,
                Err(e) => return Err(Error::io("sending to the primary", e)),
            }
        }
        if buf.capacity() > 1 << 20 {
            *buf = Vec::with_capacity(4096);
        }
        Ok(())
    }

    /// A descriptor that is readable when events may be waiting: wait on it in a host loop,
    /// then call `try_next_event` until it returns None.
    pub fn as_raw_fd(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The next event if one is waiting.
    pub fn try_next_event(&self) -> Result<Option<WorkerEvent>> {
        self.next_event(Some(Duration::ZERO))
    }

    /// Waits up to `timeout` (forever if None) for the next event.
    pub fn next_event(&self, timeout: Option<Duration>) -> Result<Option<WorkerEvent>> {
        // The path of every message when events are taken one by one: no allocation but the
        // message's own (an empty `acks` allocates nothing).
        // An error met earlier comes after the events read before it (`take_event`).
        let mut rx = self.rx.lock().unwrap();
        let mut acks = Vec::new();
        let ev = self.take_event(&mut rx, timeout, &mut acks);
        self.ack(&acks)?;
        ev
    }

    /// Waits up to `first` (forever if None) for an event, then takes every other one that
    /// waits now, up to `max` in all, into `out`; returns how many. The connections among
    /// them are acknowledged together, in one write, before this returns: a batch of
    /// connections costs the primary one wake-up, not one each.
    pub fn next_events(
        &self,
        first: Option<Duration>,
        max: usize,
        out: &mut Vec<WorkerEvent>,
    ) -> Result<usize> {
        let mut rx = self.rx.lock().unwrap();
        let start = out.len();
        let mut acks = Vec::new();
        let taken = self.take_events(&mut rx, first, max, out, &mut acks);
        drop_cancelled(out, start);
        // Acknowledged before the application sees them: the primary keeps its copy until
        // then and gives the connection to another worker if this one dies first.
        if let Err(e) = self.ack(&acks) {
            out.truncate(start);
            return Err(e);
        }
        match taken {
            Ok(()) => Ok(out.len() - start),
            Err(e) if out.len() == start => Err(e),
            Err(e) => {
                rx.failed = Some(e);
                Ok(out.len() - start)
            }
        }
    }

    fn take_events(
        &self,
        rx: &mut Rx,
        first: Option<Duration>,
        max: usize,
        out: &mut Vec<WorkerEvent>,
        acks: &mut Vec<u64>,
    ) -> Result<()> {
        let mut wait = first;
        for _ in 0..max {
            let Some(ev) = self.take_event(rx, wait, acks)? else {
                break;
            };
            let gone = matches!(ev, WorkerEvent::PrimaryGone);
            out.push(ev);
            if gone {
                break;
            }
            wait = Some(Duration::ZERO);
        }
        Ok(())
    }

    /// Reads the socket now, without waiting (even when the last read emptied it), then
    /// takes up to `max` events into `out`, as `next_events` with a zero wait does. A worker
    /// that holds tasks it took, to start them in turn, calls this before it starts one that
    /// waited while others ran: a [`WorkerEvent::TaskCancelled`] among the events names a
    /// task it must drop. (One that reads tasks one at a time needs not: the library reads
    /// ahead before it hands out a task, and drops a task whose cancel it finds.)
    pub fn poll_events(&self, max: usize, out: &mut Vec<WorkerEvent>) -> Result<usize> {
        {
            let mut rx = self.rx.lock().unwrap();
            let mut acks = Vec::new();
            self.look_ahead(&mut rx, true, &mut acks);
            self.ack(&acks)?;
        }
        self.next_events(Some(Duration::ZERO), max, out)
    }

    /// One event: a kept one, else the next frame, waiting up to `wait` (forever if None).
    /// Before a task is handed out, what arrived behind it is read: a cancel of it drops it.
    fn take_event(
        &self,
        rx: &mut Rx,
        wait: Option<Duration>,
        acks: &mut Vec<u64>,
    ) -> Result<Option<WorkerEvent>> {
        let deadline = wait.map(|w| Instant::now() + w);
        // Each turn but the last drops a cancelled task: as many turns as tasks arrive.
        loop {
            let ev = match rx.pending.pop_front() {
                Some(ev) => ev,
                None => {
                    if let Some(e) = rx.failed.take() {
                        return Err(e);
                    }
                    let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
                    match self.read_frame(rx, left, acks)? {
                        Some(Decoded::Event(ev)) => ev,
                        Some(
                            Decoded::ListenResult { request, .. }
                            | Decoded::TurnCounter { request, .. },
                        ) => {
                            return Err(Error::Protocol(format!(
                                "answer to listen request {request}, which nobody is waiting for"
                            )))
                        }
                        None if rx.gone => return Ok(Some(self.primary_gone())),
                        None => return Ok(None),
                    }
                }
            };
            let WorkerEvent::Task(t) = ev else {
                return Ok(Some(ev));
            };
            let id = t.id;
            rx.pending.push_front(WorkerEvent::Task(t));
            self.look_ahead(rx, false, acks);
            if matches!(rx.pending.front(), Some(WorkerEvent::Task(t)) if t.id == id) {
                return Ok(rx.pending.pop_front());
            }
        }
    }

    /// Acknowledges connections, all in one write.
    fn ack(&self, ids: &[u64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.write_frames(
            ids.iter()
                .map(|&id| (Kind::ConnectionAck, 0, body::conn_id(id))),
        )
    }

    /// Asks the primary for a listener on `addr` (`127.0.0.1:8080`, `[::1]:0`, `unix:/path`),
    /// as `server.listen()` does in a Node cluster worker: the primary binds each address once
    /// and dispatches its connections to every worker that asked. Blocks until the answer;
    /// events that arrive meanwhile are kept for `next_event`.
    pub fn listen(&self, addr: &str, dispatch: Dispatch) -> Result<Listening> {
        self.listen_with_flags(addr, dispatch, 0)
    }

    /// As [`Worker::listen`], for a worker that accepts from its own socket of a listener the
    /// kernel turns and says when it is done with each connection ([`Listening::counter`]):
    /// the kernel then passes over this worker when it has more connections in hand than the
    /// next worker. A worker that asks so and does not count gets fewer and fewer connections.
    pub fn listen_counting(&self, addr: &str, dispatch: Dispatch) -> Result<Listening> {
        self.listen_with_flags(addr, dispatch, body::LISTEN_COUNTS)
    }

    fn listen_with_flags(&self, addr: &str, dispatch: Dispatch, flags: u8) -> Result<Listening> {
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let mut rx = self.rx.lock().unwrap();
        let frame = body::listen_with_flags(request, dispatch, addr, flags);
        self.write_frame(Kind::Listen, &frame)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        let mut counter = None;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut acks = Vec::new();
            let decoded = self.read_frame(&mut rx, Some(left), &mut acks)?;
            self.ack(&acks)?;
            match decoded {
                Some(Decoded::Event(ev)) => rx.pending.push_back(ev),
                Some(Decoded::TurnCounter {
                    request: r,
                    counter: c,
                }) if r == request => {
                    counter = Some(*c);
                }
                Some(Decoded::ListenResult { request: r, result }) if r == request => {
                    return (*result)
                        .map(|l| Listening { counter, ..l })
                        .map_err(|e| listen_refused(addr, e));
                }
                Some(
                    Decoded::ListenResult { request: r, .. }
                    | Decoded::TurnCounter { request: r, .. },
                ) => {
                    return Err(Error::Protocol(format!(
                        "answer to listen request {r}, expected {request}"
                    )));
                }
                None if rx.gone => {
                    return Err(Error::Protocol(
                        "the primary went away before answering listen".into(),
                    ))
                }
                None if left.is_zero() => {
                    return Err(Error::Protocol(format!(
                        "no answer to listen on {addr} within 30 s"
                    )))
                }
                None => {}
            }
        }
    }

    fn primary_gone(&self) -> WorkerEvent {
        if self.exit_on_primary_loss.load(Ordering::Relaxed) {
            std::process::exit(0);
        }
        WorkerEvent::PrimaryGone
    }
}

/// The primary's refusal of a listen request for `addr`, as this worker's error. When it is the
/// primary's own bind error, its text ("cannot listen on ADDR: REASON") names the address
/// already: the error is that one again, with the errno back when REASON is an OS error's
/// ("Address already in use (os error 98)"), rather than the text wrapped in a second "cannot
/// listen on". Any other refusal ("the supervisor is stopping") is the reason for `addr`.
fn listen_refused(addr: &str, text: String) -> Error {
    if let Some((at, reason)) = text
        .strip_prefix("cannot listen on ")
        .and_then(|rest| rest.rsplit_once(": "))
    {
        return Error::Bind {
            addr: at.to_string(),
            source: os_error(reason).unwrap_or_else(|| std::io::Error::other(reason.to_string())),
        };
    }
    Error::Bind {
        addr: addr.to_string(),
        source: std::io::Error::other(text),
    }
}

/// The OS error whose text `reason` is ("… (os error N)"), errno and all; None for any other.
fn os_error(reason: &str) -> Option<std::io::Error> {
    let (_, n) = reason.strip_suffix(')')?.rsplit_once("(os error ")?;
    let e = std::io::Error::from_raw_os_error(n.parse().ok()?);
    (e.to_string() == reason).then_some(e)
}

/// Removes from `out[start..]` the tasks whose cancel came in the same batch, and those
/// cancels: the application never sees a task cancelled before it took it.
fn drop_cancelled(out: &mut Vec<WorkerEvent>, start: usize) {
    let cancelled: Vec<u64> = out[start..]
        .iter()
        .filter_map(|e| match e {
            WorkerEvent::TaskCancelled(id) => Some(*id),
            _ => None,
        })
        .collect();
    if cancelled.is_empty() {
        return;
    }
    let taken: Vec<u64> = out[start..]
        .iter()
        .filter_map(|e| match e {
            WorkerEvent::Task(t) if cancelled.contains(&t.id) => Some(t.id),
            _ => None,
        })
        .collect();
    let mut i = start;
    out.retain(|e| {
        i += 1;
        i <= start
            || !matches!(e, WorkerEvent::Task(t) if taken.contains(&t.id))
                && !matches!(e, WorkerEvent::TaskCancelled(id) if taken.contains(id))
    });
}
