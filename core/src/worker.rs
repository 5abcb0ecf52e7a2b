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
/// [`Worker::connection_closed`] if the primary limits connections per worker
/// (`least-conn`, `max_inflight`).
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
}

const HELLO_TIMEOUT: Duration = Duration::from_secs(5);

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
    /// worker by one of its children).
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
        // SAFETY: fcntl on an arbitrary number only queries it.
        if unsafe { libc::fcntl(fd, libc::F_GETFD) } < 0 {
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

    /// Tells the primary that connection `id` is closed, making room for another.
    pub fn connection_closed(&self, id: u64) -> Result<()> {
        self.write_frame(Kind::ConnectionClosed, &id.to_le_bytes())
    }

    /// Tells the primary this worker is going away on its own.
    pub fn disconnect(&self) -> Result<()> {
        self.write_frame(Kind::Disconnect, &[])
    }

    fn write_frame(&self, kind: Kind, body: &[u8]) -> Result<()> {
        let mut buf = self.tx.lock().unwrap();
        buf.clear();
        frame::encode(&mut buf, kind, 0, body);
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
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut rx = self.rx.lock().unwrap();
        loop {
            if let Some(ev) = decode_one(&mut rx)? {
                if let WorkerEvent::Connection(c) = &ev {
                    // Acknowledged at once, before the application sees it: the primary keeps
                    // its copy until then and gives the connection to another worker if this
                    // one dies first.
                    self.write_frame(Kind::ConnectionAck, &c.id.to_le_bytes())?;
                }
                return Ok(Some(ev));
            }
            if rx.gone {
                return Ok(Some(self.primary_gone()));
            }
            let left = deadline.map(|d| d.saturating_duration_since(Instant::now()));
            if left != Some(Duration::ZERO)
                && !sys::poll_one(self.fd.as_raw_fd(), libc::POLLIN, left)
                    .map_err(|e| Error::io("poll", e))?
            {
                return Ok(None);
            }
            let Rx { decoder, fds, .. } = &mut *rx;
            let res = sys::recv_with_fds(self.fd.as_raw_fd(), decoder.spare(64 * 1024), fds, false);
            match res {
                Ok(0) => rx.gone = true,
                Ok(n) => rx.decoder.commit(n),
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if left == Some(Duration::ZERO) {
                        return Ok(None);
                    }
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

fn decode_one(rx: &mut Rx) -> Result<Option<WorkerEvent>> {
    let Some(f) = rx.decoder.next_frame()? else {
        return Ok(None);
    };
    Ok(Some(match f.kind {
        Kind::Message => WorkerEvent::Message(f.body.to_vec()),
        Kind::Disconnect => WorkerEvent::Disconnect,
        Kind::Connection => {
            let fd = rx
                .fds
                .pop_front()
                .ok_or_else(|| Error::Protocol("connection frame without its descriptor".into()))?;
            let (id, listener, peer) = parse_connection(f.body)?;
            WorkerEvent::Connection(Connection {
                id,
                fd,
                listener,
                peer,
            })
        }
        other => {
            return Err(Error::Protocol(format!(
                "unexpected {other:?} frame from the primary"
            )))
        }
    }))
}

/// Connection body: u64 id, u16 name length, name, u16 peer length, peer (all little-endian).
fn parse_connection(body: &[u8]) -> Result<(u64, String, String)> {
    let bad = || {
        Error::Protocol(format!(
            "malformed connection frame of {} bytes",
            body.len()
        ))
    };
    let id = u64::from_le_bytes(body.get(..8).ok_or_else(bad)?.try_into().unwrap());
    let mut rest = &body[8..];
    let mut text = || -> Result<String> {
        let len = u16::from_le_bytes(rest.get(..2).ok_or_else(bad)?.try_into().unwrap()) as usize;
        let s = rest.get(2..2 + len).ok_or_else(bad)?;
        rest = &rest[2 + len..];
        String::from_utf8(s.to_vec()).map_err(|_| bad())
    };
    let listener = text()?;
    let peer = text()?;
    Ok((id, listener, peer))
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

    #[test]
    fn primary_hello_for_another_worker_is_refused() {
        let (primary, worker) = sys::socketpair().unwrap();
        sys::send(primary.as_raw_fd(), &frame::primary_hello(1024, 9, 1)).unwrap();
        let e = Worker::handshake(worker, 4).err().unwrap().to_string();
        assert!(e.contains("worker 9") && e.contains("says 4"), "{e}");
    }
}
