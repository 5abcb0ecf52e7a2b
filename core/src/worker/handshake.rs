//! Connecting to the primary: the environment it set, and the hello exchange.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use super::{Rx, Worker};
use crate::error::{Error, Result};
use crate::sys;
use crate::wire::frame::{self, Decoder, Kind};

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

    pub(super) fn handshake(fd: OwnedFd, id: u32) -> Result<Option<Worker>> {
        let mut rx = Rx::new();
        let fields = read_hello(&fd, &mut rx)?;
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
}

/// Reads the primary's hello, which it wrote before the worker ran, and returns its fields;
/// what arrived after it stays in `rx`'s decoder.
fn read_hello(fd: &OwnedFd, rx: &mut Rx) -> Result<Vec<u32>> {
    let deadline = Instant::now() + HELLO_TIMEOUT;
    loop {
        if let Some(f) = rx.decoder.next_frame()? {
            if f.kind != Kind::Hello {
                return Err(Error::Protocol(format!(
                    "first frame from the primary is {:?}, expected Hello",
                    f.kind
                )));
            }
            return frame::parse_hello(f.body);
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
    }
}
