//! Reading the link to the primary: the bytes and descriptors that arrive, and what each
//! frame means to the worker.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::{Connection, Listening, Worker, WorkerEvent};
use crate::error::{Error, Result};
use crate::sys;
use crate::sys::steer::TurnCounter;
use crate::wire::body;
use crate::wire::frame::{self, Decoder, Kind};

pub(super) struct Rx {
    pub(super) decoder: Decoder,
    pub(super) fds: VecDeque<OwnedFd>,
    pub(super) gone: bool,
    /// The last read returned less than it asked for (and brought no descriptor): the socket
    /// was empty then, so a non-blocking look for more can skip the system call once (a host
    /// loop hears of new bytes through the descriptor anyway).
    pub(super) emptied: bool,
    /// Events that arrived while `listen` waited for its answer.
    pub(super) pending: VecDeque<WorkerEvent>,
    /// An error met after a batch had taken events: reported by the next call, so that what
    /// was taken before it is not lost.
    pub(super) failed: Option<Error>,
    /// Why the link cannot be read any more (descriptors and bytes were lost).
    pub(super) broken: Option<String>,
    /// When the socket was last read (see `look_ahead`).
    pub(super) read_at: Instant,
}

impl Rx {
    /// Before the hello: its limit is that of control frames until the primary's is known.
    pub(super) fn new() -> Rx {
        Rx {
            decoder: Decoder::new(frame::MAX_CONTROL_BODY),
            fds: VecDeque::new(),
            gone: false,
            emptied: false,
            pending: VecDeque::new(),
            failed: None,
            broken: None,
            read_at: Instant::now(),
        }
    }
}

/// What one frame from the primary is, to the application. The rare answers are boxed: a
/// `Decoded` is moved several times for every message, and a larger one made the message
/// stream measurably slower.
pub(super) enum Decoded {
    Event(WorkerEvent),
    ListenResult {
        request: u32,
        result: Box<std::result::Result<Listening, String>>,
    },
    /// The count map of the kernel's turns, before the answer to listen request `request`.
    TurnCounter {
        request: u32,
        counter: Box<TurnCounter>,
    },
}

/// What one frame from the primary is, before connections are acknowledged.
enum Raw {
    Decoded(Decoded),
    /// A connection, and whether the primary wants to hear when it closes.
    Connection(Connection, bool),
}

impl Worker {
    /// The next decoded frame, reading as needed for up to `timeout`; None on timeout or EOF.
    /// A connection's id goes to `acks`: the caller acknowledges it before anyone sees it.
    pub(super) fn read_frame(
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
            if let Some(d) = self.take_decoded(rx, acks)? {
                return Ok(Some(d));
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
            if !self.receive(rx, left == Some(Duration::ZERO)) {
                return Ok(None);
            }
        }
    }

    /// The next frame already read, if one is whole; a connection's id goes to `acks`.
    fn take_decoded(&self, rx: &mut Rx, acks: &mut Vec<u64>) -> Result<Option<Decoded>> {
        let (c, report) = match decode_one(rx)? {
            None => return Ok(None),
            Some(Raw::Decoded(d)) => return Ok(Some(d)),
            Some(Raw::Connection(c, report)) => (c, report),
        };
        if report {
            self.report_close.lock().unwrap().insert(c.id);
        }
        acks.push(c.id);
        Ok(Some(Decoded::Event(WorkerEvent::Connection(c))))
    }

    /// Reads once from the link into `rx`; false when nothing was there and `no_wait` says
    /// not to look again.
    fn receive(&self, rx: &mut Rx, no_wait: bool) -> bool {
        let Rx { decoder, fds, .. } = rx;
        let spare = decoder.spare(64 * 1024);
        let want = spare.len();
        let fds_before = fds.len();
        rx.read_at = Instant::now();
        match sys::recv_with_fds(self.fd.as_raw_fd(), spare, fds, false) {
            Ok(0) => rx.gone = true,
            Ok(n) => {
                rx.decoder.commit(n);
                // A read that brought a descriptor stops at the end of the bytes it came
                // with, whatever follows: short, but not proof that the socket is empty.
                rx.emptied = n < want && rx.fds.len() == fds_before;
            }
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return !no_wait,
            // Descriptors were lost (MSG_CTRUNC), and the bytes of that read with them: the
            // stream cannot be followed any more. Close every descriptor that waits, and
            // fail every later read the same way.
            Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                rx.fds.clear();
                rx.broken = Some(e.to_string());
            }
            Err(_) => rx.gone = true,
        }
        true
    }
}

/// A task taken from the socket longer ago than this is handed out only after the socket was
/// read again, so that a `TaskCancel` frame that arrived meanwhile drops it.
const LOOK_AFTER: Duration = Duration::from_millis(1);
/// Events kept ahead of the application at most: beyond, the socket is not read ahead (what
/// stays in it holds the primary back), so memory stays bounded whatever it sends. A pool
/// sends a worker at most `max_tasks_ahead` tasks beyond those it runs.
const AHEAD_LIMIT: usize = 256;

impl Worker {
    /// Takes every whole frame already read into `rx.pending`, applying cancels to the tasks
    /// there; when `read` (or the last read is older than `LOOK_AFTER`), reads the socket
    /// once first, without waiting. An error stops it and waits in `rx.failed`, after the
    /// events before it.
    pub(super) fn look_ahead(&self, rx: &mut Rx, read: bool, acks: &mut Vec<u64>) {
        self.absorb(rx, acks);
        let stale = read || rx.read_at.elapsed() >= LOOK_AFTER;
        if stale && rx.pending.len() < AHEAD_LIMIT && !rx.gone && rx.broken.is_none() {
            self.receive(rx, true);
            self.absorb(rx, acks);
        }
    }

    fn absorb(&self, rx: &mut Rx, acks: &mut Vec<u64>) {
        while rx.failed.is_none() && rx.pending.len() < AHEAD_LIMIT {
            match self.take_decoded(rx, acks) {
                Ok(None) => break,
                Ok(Some(Decoded::Event(ev))) => keep(rx, ev),
                Ok(Some(
                    Decoded::ListenResult { request, .. } | Decoded::TurnCounter { request, .. },
                )) => {
                    rx.failed = Some(Error::Protocol(format!(
                        "answer to listen request {request}, which nobody is waiting for"
                    )));
                }
                Err(e) => rx.failed = Some(e),
            }
        }
    }
}

/// Keeps `ev` for the application; a cancel of a task kept here removes that task instead
/// (the application never sees either).
fn keep(rx: &mut Rx, ev: WorkerEvent) {
    if let WorkerEvent::TaskCancelled(id) = ev {
        let at = rx
            .pending
            .iter()
            .position(|e| matches!(e, WorkerEvent::Task(t) if t.id == id));
        if let Some(at) = at {
            rx.pending.remove(at);
            return;
        }
    }
    rx.pending.push_back(ev);
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
        Kind::Message => Raw::Decoded(Decoded::Event(WorkerEvent::Message {
            data: f.body.to_vec(),
            content: f.content,
        })),
        Kind::Disconnect => Raw::Decoded(Decoded::Event(WorkerEvent::Disconnect)),
        Kind::Task => {
            let t = crate::wire::task::parse_task(f.body).ok_or_else(|| {
                Error::Protocol(format!("malformed Task frame of {} bytes", f.body.len()))
            })?;
            Raw::Decoded(Decoded::Event(WorkerEvent::Task(super::Task {
                id: t.id,
                name: t.name.to_string(),
                content: t.content,
                payload: t.payload.to_vec(),
            })))
        }
        Kind::TaskCancel => {
            let id = crate::wire::task::parse_task_cancel(f.body).ok_or_else(|| {
                Error::Protocol(format!(
                    "malformed TaskCancel frame of {} bytes",
                    f.body.len()
                ))
            })?;
            Raw::Decoded(Decoded::Event(WorkerEvent::TaskCancelled(id)))
        }
        Kind::Connection => {
            let fd = fd()?;
            let c = body::parse_connection(f.body).ok_or_else(|| {
                Error::Protocol(format!(
                    "malformed connection frame of {} bytes",
                    f.body.len()
                ))
            })?;
            Raw::Connection(
                Connection {
                    id: c.id,
                    fd,
                    listener: c.listener,
                    peer: c.peer,
                },
                c.report_close,
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
    let mut rx = Rx::new();
    rx.fds.extend(fds);
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
            if let Raw::Decoded(Decoded::Event(WorkerEvent::Message { data, .. })) = raw {
                assert!(
                    data.len() <= rx.decoder.max_message(),
                    "message over the limit"
                );
            }
        }
        rx.decoder.shrink();
    }
    Ok(events)
}

/// A ListenResult frame as the worker's answer to `listen`, or the count map before it.
fn parse_listen_result(body: &[u8], fd: Option<OwnedFd>) -> Result<Decoded> {
    if let Some((request, member)) = body::parse_turn_counter(body) {
        let fd = fd.ok_or_else(|| {
            Error::Protocol("ListenResult frame with a count map but no descriptor".into())
        })?;
        let counter = TurnCounter::new(fd, member)
            .map_err(|e| Error::Protocol(format!("mapping the count map of a listener: {e}")))?;
        return Ok(Decoded::TurnCounter {
            request,
            counter: Box::new(counter),
        });
    }
    let (request, result) = body::parse_listen_result(body)
        .ok_or_else(|| Error::Protocol("malformed ListenResult frame".into()))?;
    let result = result.map(|(name, addr)| Listening {
        name,
        addr,
        fd,
        counter: None,
    });
    Ok(Decoded::ListenResult {
        request,
        result: Box::new(result),
    })
}
