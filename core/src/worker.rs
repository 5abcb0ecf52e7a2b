//! The worker side: what a program running under rcluster uses to talk to its primary.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::frame::{self, Decoder, Kind};
use crate::sys;

/// Something the primary told this worker.
#[derive(Debug, PartialEq, Eq)]
pub enum WorkerEvent {
    /// A user message.
    Message(Vec<u8>),
    /// The primary asks this worker to finish its work and exit.
    Disconnect,
    /// The primary is gone (returned only when exiting on primary loss is turned off).
    PrimaryGone,
    /// A client connection the primary accepted for this worker (already acknowledged).
    Connection(Connection),
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

struct Rx {
    decoder: Decoder,
    fds: VecDeque<OwnedFd>,
    gone: bool,
    /// The last read returned less than it asked for (and brought no descriptor): the socket
    /// was empty then, so a non-blocking look for more can skip the system call once (a host
    /// loop hears of new bytes through the descriptor anyway).
    emptied: bool,
    /// Events that arrived while `listen` waited for its answer.
    pending: VecDeque<WorkerEvent>,
    /// An error met after a batch had taken events: reported by the next call, so that what
    /// was taken before it is not lost.
    failed: Option<Error>,
    /// Why the link cannot be read any more (descriptors and bytes were lost).
    broken: Option<String>,
}

/// A listener the primary holds for this worker (see [`Worker::listen`]).
#[derive(Debug)]
pub struct Listening {
    /// The name connections from it carry.
    pub name: String,
    /// The address it is bound to (a port 0 resolved).
    pub addr: String,
    /// In `shared` mode: the listening socket itself, to accept from.
    pub fd: Option<OwnedFd>,
}

/// What one frame from the primary is, to the application.
enum Decoded {
    Event(WorkerEvent),
    ListenResult {
        request: u32,
        result: std::result::Result<Listening, String>,
    },
}

/// What one frame from the primary is, before connections are acknowledged.
enum Raw {
    Decoded(Decoded),
    /// A connection, and whether the primary wants to hear when it closes.
    Connection(Connection, bool),
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

const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

/// Set by the first `Worker::from_env` that takes the link of this process.
static LINK_TAKEN: AtomicBool = AtomicBool::new(false);

fn env_u32(name: &str) -> Result<Option<u32>> {
    match std::env::var(name) {
        Err(std::env::VarError::NotPresent) => Ok(None),
        Err(_) => Err(Error::NotAWorker(format!("{name} is not valid UTF-8"))),
        Ok(v) => v
            .parse()
            .map(Some)
            .map_err(|_| Error::NotAWorker(format!("{name}={v:?} is not a number"))),
    }
}

impl Worker {
    /// Connects to the primary named by the `RCLUSTER_*` environment. `Ok(None)` when this
    /// process is not an rcluster worker (no such environment, or it was inherited from a
    /// worker by one of its children). The link has one owner: a second call in the same
    /// process fails (an `Io` error of kind `AlreadyExists`) and leaves the first Worker alone.
    pub fn from_env() -> Result<Option<Worker>> {
        let Some(fd) = env_u32("RCLUSTER_IPC_FD")? else {
            return Ok(None);
        };
        if env_u32("RCLUSTER_PID")? != Some(std::process::id()) {
            return Ok(None);
        }
        let id = env_u32("RCLUSTER_WORKER_ID")?
            .ok_or_else(|| Error::NotAWorker("RCLUSTER_WORKER_ID is missing".into()))?;
        let fd = fd as RawFd;
        // The link can have one owner only: a second Worker on the same number would close it
        // under the first when dropped (or, later, close whatever reused the number). Once
        // wrapped it stays taken, even when the handshake fails, since that closes it.
        if LINK_TAKEN.swap(true, Ordering::AcqRel) {
            return Err(Error::io(
                "Worker::from_env",
                std::io::Error::new(
                    std::io::ErrorKind::AlreadyExists,
                    format!(
                        "the link to the primary (RCLUSTER_IPC_FD={fd}) was already taken by an \
                         earlier call in this process; keep and share that Worker"
                    ),
                ),
            ));
        }
        // SAFETY: fcntl on an arbitrary number only queries it.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
            // Nothing was wrapped: the link is not taken, and a later call may try again.
            LINK_TAKEN.store(false, Ordering::Release);
            return Err(Error::NotAWorker(format!(
                "RCLUSTER_IPC_FD={fd} is not an open descriptor"
            )));
        }
        // SAFETY: the primary handed this descriptor to this process (RCLUSTER_PID matched);
        // from here on the Worker owns it.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // The worker's own children must not inherit the link.
        sys::set_cloexec(fd.as_raw_fd()).map_err(|e| Error::io("fcntl", e))?;
        Worker::handshake(fd, id)
    }

    fn handshake(fd: OwnedFd, id: u32) -> Result<Option<Worker>> {
        let mut rx = Rx {
            decoder: Decoder::new(frame::MAX_CONTROL_BODY),
            fds: VecDeque::new(),
            gone: false,
            emptied: false,
            pending: VecDeque::new(),
            failed: None,
            broken: None,
        };
        let deadline = Instant::now() + HELLO_TIMEOUT;
        let fields = loop {
            if let Some(f) = rx.decoder.next_frame()? {
                if f.kind != Kind::Hello {
                    return Err(Error::Protocol(format!(
                        "first frame from the primary is {:?}, expected Hello",
                        f.kind
                    )));
                }
                break frame::parse_hello(f.body)?;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero()
                || !sys::poll_one(fd.as_raw_fd(), libc::POLLIN, Some(left))
                    .map_err(|e| Error::io("poll", e))?
            {
                return Err(Error::Protocol(
                    "no hello from the primary within 5 s".into(),
                ));
            }
            let spare = rx.decoder.spare(4096);
            match sys::recv_with_fds(fd.as_raw_fd(), spare, &mut rx.fds, false) {
                Ok(0) => {
                    return Err(Error::Protocol(
                        "the primary closed the connection before its hello".into(),
                    ))
                }
                Ok(n) => rx.decoder.commit(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    return Err(Error::Protocol(e.to_string()))
                }
                Err(e) => return Err(Error::io("recvmsg", e)),
            }
        };
        let [max_message, hello_id, generation] = fields[..] else {
            return Err(Error::Protocol(format!(
                "primary hello has {} fields, expected 3",
                fields.len()
            )));
        };
        if hello_id != id {
            return Err(Error::Protocol(format!(
                "primary hello is for worker {hello_id}, RCLUSTER_WORKER_ID says {id}"
            )));
        }
        // Keep bytes that arrived after the hello; decode the rest with the real limit.
        let mut decoder = Decoder::new(max_message as usize);
        let rest = std::mem::replace(&mut rx.decoder, Decoder::new(0));
        rest.move_pending_into(&mut decoder);
        rx.decoder = decoder;
        let worker = Worker {
            fd,
            id,
            generation,
            max_message: max_message as usize,
            rx: Mutex::new(rx),
            tx: Mutex::new(Vec::with_capacity(4096)),
            exit_on_primary_loss: AtomicBool::new(true),
            next_request: std::sync::atomic::AtomicU32::new(1),
            report_close: Mutex::default(),
        };
        worker.write_frame(
            Kind::Hello,
            &frame::worker_hello(std::process::id())[frame::HEADER_LEN..],
        )?;
        Ok(Some(worker))
    }

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

    /// Sends a user message to the primary. Blocks while the socket is full.
    pub fn send(&self, data: &[u8]) -> Result<()> {
        if data.len() > self.max_message {
            return Err(Error::MessageTooLarge {
                size: data.len(),
                limit: self.max_message,
            });
        }
        self.write_frame(Kind::Message, data)
    }

    /// Sends several user messages to the primary, in order, with one write. Blocks while the
    /// socket is full. None is sent when one of them is too large.
    pub fn send_many(&self, messages: &[&[u8]]) -> Result<()> {
        if let Some(big) = messages.iter().find(|m| m.len() > self.max_message) {
            return Err(Error::MessageTooLarge {
                size: big.len(),
                limit: self.max_message,
            });
        }
        self.write_frames(messages.iter().map(|m| (Kind::Message, *m)))
    }

    /// Tells the primary that connection `id` is closed, making room for another.
    /// Only connections the primary counts (least-connections dispatch, `max_inflight`) are
    /// reported; for the others this costs nothing.
    pub fn connection_closed(&self, id: u64) -> Result<()> {
        if !self.report_close.lock().unwrap().remove(&id) {
            return Ok(());
        }
        self.write_frame(Kind::ConnectionClosed, &id.to_le_bytes())
    }

    /// Tells the primary that this worker no longer takes connections of listener `name` (what
    /// `server.close()` means in a worker): it gives them to the other workers from now on.
    pub fn unlisten(&self, name: &str) -> Result<()> {
        let mut body = Vec::with_capacity(2 + name.len());
        frame::put_str(&mut body, name);
        self.write_frame(Kind::Unlisten, &body)
    }

    /// Tells the primary this worker is going away on its own.
    pub fn disconnect(&self) -> Result<()> {
        self.write_frame(Kind::Disconnect, &[])
    }

    fn write_frame(&self, kind: Kind, body: &[u8]) -> Result<()> {
        self.write_frames(std::iter::once((kind, body)))
    }

    /// Writes frames with one system call (more only while the socket is full).
    fn write_frames<B: AsRef<[u8]>>(&self, frames: impl Iterator<Item = (Kind, B)>) -> Result<()> {
        let mut buf = self.tx.lock().unwrap();
        buf.clear();
        for (kind, body) in frames {
            frame::encode(&mut buf, kind, 0, body.as_ref());
        }
        let mut off = 0;
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
        let mut out = Vec::with_capacity(1);
        self.next_events(timeout, 1, &mut out)?;
        Ok(out.pop())
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
        if let Some(e) = rx.failed.take() {
            return Err(e);
        }
        let start = out.len();
        let mut acks = Vec::new();
        let taken = self.take_events(&mut rx, first, max, out, &mut acks);
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
            let ev = match rx.pending.pop_front() {
                Some(ev) => ev,
                None => match self.read_frame(rx, wait, acks)? {
                    Some(Decoded::Event(ev)) => ev,
                    Some(Decoded::ListenResult { request, .. }) => {
                        return Err(Error::Protocol(format!(
                            "answer to listen request {request}, which nobody is waiting for"
                        )))
                    }
                    None if rx.gone => self.primary_gone(),
                    None => return Ok(()),
                },
            };
            let gone = ev == WorkerEvent::PrimaryGone;
            out.push(ev);
            if gone {
                break;
            }
            wait = Some(Duration::ZERO);
        }
        Ok(())
    }

    /// Acknowledges connections, all in one write.
    fn ack(&self, ids: &[u64]) -> Result<()> {
        if ids.is_empty() {
            return Ok(());
        }
        self.write_frames(ids.iter().map(|id| (Kind::ConnectionAck, id.to_le_bytes())))
    }

    /// Asks the primary for a listener on `addr` (`127.0.0.1:8080`, `[::1]:0`, `unix:/path`),
    /// as `server.listen()` does in a Node cluster worker: the primary binds each address once
    /// and dispatches its connections to every worker that asked. Blocks until the answer;
    /// events that arrive meanwhile are kept for `next_event`.
    pub fn listen(&self, addr: &str, dispatch: crate::Dispatch) -> Result<Listening> {
        let request = self.next_request.fetch_add(1, Ordering::Relaxed);
        let mut body = request.to_le_bytes().to_vec();
        body.push(dispatch.to_u8());
        frame::put_str(&mut body, addr);
        let mut rx = self.rx.lock().unwrap();
        self.write_frame(Kind::Listen, &body)?;
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let mut acks = Vec::new();
            let decoded = self.read_frame(&mut rx, Some(left), &mut acks)?;
            self.ack(&acks)?;
            match decoded {
                Some(Decoded::Event(ev)) => rx.pending.push_back(ev),
                Some(Decoded::ListenResult { request: r, result }) if r == request => {
                    return result.map_err(|e| Error::Bind {
                        addr: addr.to_string(),
                        source: std::io::Error::other(e),
                    });
                }
                Some(Decoded::ListenResult { request: r, .. }) => {
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

    /// The next decoded frame, reading as needed for up to `timeout`; None on timeout or EOF.
    /// A connection's id goes to `acks`: the caller acknowledges it before anyone sees it.
    fn read_frame(
        &self,
        rx: &mut Rx,
        timeout: Option<Duration>,
        acks: &mut Vec<u64>,
    ) -> Result<Option<Decoded>> {
        let deadline = timeout.map(|t| Instant::now() + t);
        loop {
            if let Some(detail) = &rx.broken {
                return Err(Error::Protocol(detail.clone()));
            }
            if let Some(raw) = decode_one(rx)? {
                let (c, report) = match raw {
                    Raw::Decoded(d) => return Ok(Some(d)),
                    Raw::Connection(c, report) => (c, report),
                };
                if report {
                    self.report_close.lock().unwrap().insert(c.id);
                }
                acks.push(c.id);
                return Ok(Some(Decoded::Event(WorkerEvent::Connection(c))));
            }
            if rx.gone {
                return Ok(None);
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left == Some(Duration::ZERO) && std::mem::take(&mut rx.emptied) {
                return Ok(None);
            }
            if left != Some(Duration::ZERO)
                && !sys::poll_one(self.fd.as_raw_fd(), libc::POLLIN, left)
                    .map_err(|e| Error::io("poll", e))?
            {
                return Ok(None);
            }
            let Rx { decoder, fds, .. } = rx;
            let spare = decoder.spare(64 * 1024);
            let want = spare.len();
            let fds_before = fds.len();
            match sys::recv_with_fds(self.fd.as_raw_fd(), spare, fds, false) {
                Ok(0) => rx.gone = true,
                Ok(n) => {
                    rx.decoder.commit(n);
                    // A read that brought a descriptor stops at the end of the bytes it came
                    // with, whatever follows: short, but not proof that the socket is empty.
                    rx.emptied = n < want && rx.fds.len() == fds_before;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if left == Some(Duration::ZERO) {
                        return Ok(None);
                    }
                }
                // Descriptors were lost (MSG_CTRUNC), and the bytes of that read with them: the
                // stream cannot be followed any more. Close every descriptor that waits, and
                // fail every later read the same way.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    rx.fds.clear();
                    rx.broken = Some(e.to_string());
                }
                Err(_) => rx.gone = true,
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

fn decode_one(rx: &mut Rx) -> Result<Option<Raw>> {
    let Some(f) = rx.decoder.next_frame()? else {
        return Ok(None);
    };
    let mut fd = || {
        rx.fds
            .pop_front()
            .ok_or_else(|| Error::Protocol(format!("{:?} frame without its descriptor", f.kind)))
    };
    Ok(Some(match f.kind {
        Kind::Message => Raw::Decoded(Decoded::Event(WorkerEvent::Message(f.body.to_vec()))),
        Kind::Disconnect => Raw::Decoded(Decoded::Event(WorkerEvent::Disconnect)),
        Kind::Connection => {
            let fd = fd()?;
            let (id, report, listener, peer) = parse_connection(f.body)?;
            Raw::Connection(
                Connection {
                    id,
                    fd,
                    listener,
                    peer,
                },
                report,
            )
        }
        Kind::ListenResult => {
            let fd = if f.has_fd { Some(fd()?) } else { None };
            Raw::Decoded(parse_listen_result(f.body, fd)?)
        }
        other => {
            return Err(Error::Protocol(format!(
                "unexpected {other:?} frame from the primary"
            )))
        }
    }))
}

/// The worker's reading of a stream from its primary, without a socket, for the fuzz targets:
/// the handshake's decoding of the hello, the hand-over of what followed it to a decoder with
/// the hello's limit, then every frame, as `read_frame` takes them. `chunks` are the reads
/// (the stream split where a read would stop); `fds` descriptors wait in the FIFO first.
pub(crate) fn decode_stream<'a>(
    chunks: impl IntoIterator<Item = &'a [u8]>,
    fds: impl IntoIterator<Item = OwnedFd>,
) -> Result<usize> {
    let mut rx = Rx {
        decoder: Decoder::new(frame::MAX_CONTROL_BODY),
        fds: fds.into_iter().collect(),
        gone: false,
        emptied: false,
        pending: VecDeque::new(),
        failed: None,
        broken: None,
    };
    let mut hello = false;
    let mut events = 0;
    for chunk in chunks {
        rx.decoder.spare(chunk.len())[..chunk.len()].copy_from_slice(chunk);
        rx.decoder.commit(chunk.len());
        if !hello {
            let Some(f) = rx.decoder.next_frame()? else {
                continue;
            };
            if f.kind != Kind::Hello {
                return Err(Error::Protocol(format!("first frame is {:?}", f.kind)));
            }
            let [max_message, _, _] = frame::parse_hello(f.body)?[..] else {
                return Err(Error::Protocol("primary hello of the wrong size".into()));
            };
            let mut decoder = Decoder::new(max_message as usize);
            let rest = std::mem::replace(&mut rx.decoder, Decoder::new(0));
            rest.move_pending_into(&mut decoder);
            rx.decoder = decoder;
            hello = true;
        }
        while let Some(raw) = decode_one(&mut rx)? {
            events += 1;
            if let Raw::Decoded(Decoded::Event(WorkerEvent::Message(m))) = raw {
                assert!(
                    m.len() <= rx.decoder.max_message(),
                    "message over the limit"
                );
            }
        }
        rx.decoder.shrink();
    }
    Ok(events)
}

/// ListenResult body: u32 request id, u8 status (0 ok: name, address; 1 error: message).
fn parse_listen_result(mut body: &[u8], fd: Option<OwnedFd>) -> Result<Decoded> {
    let bad = || Error::Protocol("malformed ListenResult frame".into());
    let request = u32::from_le_bytes(frame::take_bytes::<4>(&mut body).ok_or_else(bad)?);
    let status = frame::take_bytes::<1>(&mut body).ok_or_else(bad)?[0];
    let first = frame::take_str(&mut body).ok_or_else(bad)?;
    let result = match status {
        0 => Ok(Listening {
            name: first,
            addr: frame::take_str(&mut body).ok_or_else(bad)?,
            fd,
        }),
        _ => Err(first),
    };
    Ok(Decoded::ListenResult { request, result })
}

/// Connection body: u64 id, u16 name length, name, u16 peer length, peer (all little-endian).
fn parse_connection(body: &[u8]) -> Result<(u64, bool, String, String)> {
    let bad = || {
        Error::Protocol(format!(
            "malformed connection frame of {} bytes",
            body.len()
        ))
    };
    let id = u64::from_le_bytes(body.get(..8).ok_or_else(bad)?.try_into().unwrap());
    let flags = *body.get(8).ok_or_else(bad)?;
    if flags & !1 != 0 {
        return Err(bad());
    }
    let mut rest = &body[9..];
    let mut text = || -> Result<String> {
        let len = u16::from_le_bytes(rest.get(..2).ok_or_else(bad)?.try_into().unwrap()) as usize;
        let s = rest.get(2..2 + len).ok_or_else(bad)?;
        rest = &rest[2 + len..];
        String::from_utf8(s.to_vec()).map_err(|_| bad())
    };
    let listener = text()?;
    let peer = text()?;
    Ok((id, flags & 1 != 0, listener, peer))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn linked() -> (OwnedFd, Worker) {
        let (primary, worker) = sys::socketpair().unwrap();
        sys::send(primary.as_raw_fd(), &frame::primary_hello(1024, 4, 2)).unwrap();
        let w = Worker::handshake(worker, 4).unwrap().unwrap();
        (primary, w)
    }

    #[test]
    fn handshake_reads_id_generation_and_limit_and_answers_hello() {
        let (primary, w) = linked();
        assert_eq!((w.id(), w.generation(), w.max_message()), (4, 2, 1024));
        let mut d = Decoder::new(1024);
        let mut fds = VecDeque::new();
        let n = sys::recv_with_fds(primary.as_raw_fd(), d.spare(4096), &mut fds, true).unwrap();
        d.commit(n);
        let f = d.next_frame().unwrap().unwrap();
        assert_eq!(f.kind, Kind::Hello);
        assert_eq!(
            frame::parse_hello(f.body).unwrap(),
            vec![std::process::id()]
        );
    }

    /// A read that brings a descriptor ends with that descriptor's frame: the frames behind it
    /// are taken by the next non-blocking call, without waiting for readiness again.
    #[test]
    fn connections_queued_behind_each_other_are_all_taken_without_waiting() {
        let (primary, w) = linked();
        for id in 1..=3u64 {
            send_connection(&primary, id);
        }
        let mut msg = Vec::new();
        frame::encode(&mut msg, Kind::Message, 0, b"after");
        sys::send(primary.as_raw_fd(), &msg).unwrap();
        for id in 1..=3u64 {
            match w.try_next_event().unwrap() {
                Some(WorkerEvent::Connection(c)) => assert_eq!(c.id, id),
                other => panic!("expected connection {id}, got {other:?}"),
            }
        }
        assert_eq!(
            w.try_next_event().unwrap(),
            Some(WorkerEvent::Message(b"after".to_vec()))
        );
        assert_eq!(w.try_next_event().unwrap(), None);
    }

    /// Queues a connection frame for `id` with a descriptor of its own, as the primary does.
    fn send_connection(primary: &OwnedFd, id: u64) {
        let (mine, _theirs) = sys::socketpair().unwrap();
        let mut body = id.to_le_bytes().to_vec();
        body.push(0);
        frame::put_str(&mut body, "http");
        frame::put_str(&mut body, "127.0.0.1:5000");
        let mut wire = Vec::new();
        frame::encode(&mut wire, Kind::Connection, frame::FLAG_FD, &body);
        sys::send_with_fds(primary.as_raw_fd(), &wire, &[mine.as_raw_fd()], false).unwrap();
    }

    /// The connections of one batch are acknowledged in one write, made before the batch is
    /// returned. The link is a packet socket here, so that each write is one packet.
    #[test]
    fn a_batch_of_connections_is_acknowledged_in_one_write_before_it_is_seen() {
        let mut fds = [0; 2];
        // SAFETY: fds has room for two descriptors.
        let rc = unsafe {
            libc::socketpair(
                libc::AF_UNIX,
                libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
                0,
                fds.as_mut_ptr(),
            )
        };
        assert_eq!(rc, 0);
        // SAFETY: both were just created and are owned by nobody else.
        let (primary, worker) =
            unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        sys::send(primary.as_raw_fd(), &frame::primary_hello(1024, 4, 2)).unwrap();
        let w = Worker::handshake(worker, 4).unwrap().unwrap();
        for id in 1..=3u64 {
            send_connection(&primary, id);
        }
        let mut out = Vec::new();
        assert_eq!(
            w.next_events(Some(Duration::ZERO), 16, &mut out).unwrap(),
            3
        );
        let ids: Vec<u64> = out
            .iter()
            .map(|ev| match ev {
                WorkerEvent::Connection(c) => c.id,
                other => panic!("expected a connection, got {other:?}"),
            })
            .collect();
        assert_eq!(ids, [1, 2, 3]);
        // Packets now waiting at the primary's end: the hello, then one with every ack.
        let mut packets = Vec::new();
        let mut buf = [0u8; 4096];
        loop {
            // SAFETY: buf is valid for its length.
            let n = unsafe {
                libc::recv(
                    primary.as_raw_fd(),
                    buf.as_mut_ptr().cast(),
                    buf.len(),
                    libc::MSG_DONTWAIT,
                )
            };
            if n <= 0 {
                break;
            }
            packets.push(buf[..n as usize].to_vec());
        }
        assert_eq!(packets.len(), 2, "hello and one write of acks");
        let mut d = Decoder::new(1024);
        d.spare(4096)[..packets[1].len()].copy_from_slice(&packets[1]);
        d.commit(packets[1].len());
        let mut acked = Vec::new();
        while let Some(f) = d.next_frame().unwrap() {
            assert_eq!(f.kind, Kind::ConnectionAck);
            acked.push(u64::from_le_bytes(f.body.try_into().unwrap()));
        }
        assert_eq!(acked, [1, 2, 3]);
    }

    #[test]
    fn worker_learns_that_the_primary_is_gone() {
        let (primary, w) = linked();
        w.set_exit_on_primary_loss(false);
        let mut msg = Vec::new();
        frame::encode(&mut msg, Kind::Message, 0, b"last words");
        sys::send(primary.as_raw_fd(), &msg).unwrap();
        drop(primary);
        let first = w.next_event(Some(Duration::from_secs(1))).unwrap();
        assert_eq!(first, Some(WorkerEvent::Message(b"last words".to_vec())));
        assert_eq!(
            w.next_event(Some(Duration::from_secs(1))).unwrap(),
            Some(WorkerEvent::PrimaryGone)
        );
    }

    #[test]
    fn worker_refuses_to_send_more_than_the_limit() {
        let (_primary, w) = linked();
        let e = w.send(&[0; 1025]).unwrap_err();
        assert!(matches!(
            e,
            Error::MessageTooLarge {
                size: 1025,
                limit: 1024
            }
        ));
    }

    /// Sends `bytes` with `count` copies of `fd` attached, in one sendmsg.
    fn send_many_fds(to: &OwnedFd, bytes: &[u8], fd: RawFd, count: usize) {
        let mut iov = libc::iovec {
            iov_base: bytes.as_ptr() as *mut _,
            iov_len: bytes.len(),
        };
        let data = (4 * count) as u32;
        // SAFETY: CMSG_SPACE only computes a size.
        let space_len = unsafe { libc::CMSG_SPACE(data) } as usize;
        let mut space = vec![0u64; space_len.div_ceil(8)];
        // SAFETY: the control message is built inside `space`, aligned and as large as
        // CMSG_SPACE asks for `count` descriptors.
        let n = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = space.as_mut_ptr().cast();
            msg.msg_controllen = space_len as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN(data) as _;
            let fds = libc::CMSG_DATA(cmsg).cast::<RawFd>();
            for i in 0..count {
                std::ptr::write_unaligned(fds.add(i), fd);
            }
            libc::sendmsg(to.as_raw_fd(), &msg, 0)
        };
        assert_eq!(n, bytes.len() as isize);
    }

    /// The primary never sends more descriptors at once than a worker has room for; if one
    /// did, the descriptors the kernel cut off are lost and the link cannot be followed.
    #[test]
    fn descriptors_overflowing_the_control_buffer_are_a_protocol_error_and_all_are_closed() {
        let (primary, w) = linked();
        let (probe, _keep) = sys::socketpair().unwrap();
        let mut wire = Vec::new();
        frame::encode(&mut wire, Kind::Message, 0, b"lost");
        send_many_fds(&primary, &wire, probe.as_raw_fd(), sys::FDS_PER_RECV + 40);
        let e = w.try_next_event().unwrap_err().to_string();
        assert!(
            e.starts_with("protocol error: ") && e.contains("MSG_CTRUNC"),
            "{e}"
        );
        assert!(
            w.rx.lock().unwrap().fds.is_empty(),
            "arrived descriptors are closed"
        );
        // The stream cannot be followed any more: later calls fail the same way.
        sys::send(primary.as_raw_fd(), &wire).unwrap();
        let again = w.try_next_event().unwrap_err().to_string();
        assert_eq!(again, e);
    }

    #[test]
    fn a_message_from_the_primary_over_max_message_is_a_protocol_error_from_its_header() {
        let (primary, w) = linked();
        // Only the header: the worker refuses the frame without waiting for its body.
        sys::send(
            primary.as_raw_fd(),
            &[1, 4, 0, 0, Kind::Message as u8, 0, 0, 0],
        )
        .unwrap();
        let e = w
            .next_event(Some(Duration::from_secs(5)))
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("Message frame of 1025 bytes exceeds the limit of 1024 bytes"),
            "{e}"
        );
    }

    #[test]
    fn primary_hello_for_another_worker_is_refused() {
        let (primary, worker) = sys::socketpair().unwrap();
        sys::send(primary.as_raw_fd(), &frame::primary_hello(1024, 9, 1)).unwrap();
        let e = Worker::handshake(worker, 4).err().unwrap().to_string();
        assert!(e.contains("worker 9") && e.contains("says 4"), "{e}");
    }
}
