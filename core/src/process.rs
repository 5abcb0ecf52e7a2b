//! One worker process as the loop sees it, and reading its IPC socket.

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

use crate::conn::Conn;
use crate::events::WorkerState;
use crate::frame::{self, Decoder, Kind};
use crate::listen::Dispatch;
use crate::output::PrefixPipe;
use crate::policy::ExitReason;
use crate::primary::Waiting;
use crate::sys;

/// A stop in progress: why, and when SIGTERM and SIGKILL follow.
pub struct Stopping {
    /// None when the worker itself said it is leaving: its exit status tells the reason.
    pub reason: Option<ExitReason>,
    /// When SIGTERM goes to the group, if it has not gone yet.
    pub term_at: Option<Instant>,
    pub kill_at: Instant,
    pub killed: bool,
}

pub struct Process {
    pub slot: u32,
    pub generation: u32,
    pub pid: libc::pid_t,
    pub pidfd: OwnedFd,
    pub conn: Arc<Conn>,
    pub decoder: Decoder,
    /// Descriptors received but not yet claimed by a frame.
    pub rx_fds: VecDeque<OwnedFd>,
    pub ipc_open: bool,
    /// Frames decoded so far; any frame is a sign of life.
    pub frames: u64,
    pub out_armed: bool,
    pub hello: bool,
    pub state: WorkerState,
    pub spawned_at: Instant,
    pub ready_deadline: Option<Instant>,
    pub last_seen: Instant,
    pub stopping: Option<Stopping>,
    pub pipes: [Option<PrefixPipe>; 2],
    /// Connections handed and not yet acknowledged; the primary keeps its copy until then.
    pub unacked: HashMap<u64, Waiting>,
    /// Connections acknowledged and not yet reported closed.
    pub active: HashSet<u64>,
}

/// What one frame from a worker means to the loop.
pub enum Incoming {
    Hello,
    Ready,
    Message(Vec<u8>),
    Disconnect,
    /// The worker has connection `id` (the primary may close its copy).
    Ack(u64),
    /// The worker closed connection `id`.
    Closed(u64),
    /// The worker asks for a listener on `addr` (what `server.listen()` in a worker means).
    Listen {
        request: u32,
        dispatch: Dispatch,
        addr: String,
    },
}

/// Reading stopped because of this.
pub enum ReadEnd {
    /// Nothing more for now.
    Drained,
    /// The worker closed its end.
    Eof,
    /// The worker broke the protocol.
    Violation(String),
}

/// Reads at most this much per readiness event, so one chatty worker cannot starve the others.
const READ_BUDGET: usize = 4 << 20;

impl Process {
    /// Reads available bytes and decodes frames into `out`.
    pub fn read_ipc(&mut self, out: &mut Vec<Incoming>) -> ReadEnd {
        let mut budget = READ_BUDGET;
        loop {
            let spare = self.decoder.spare(64 * 1024);
            let want = spare.len();
            let n = match sys::recv_with_fds(self.conn.raw(), spare, &mut self.rx_fds, false) {
                Ok(0) => return self.decode(out).unwrap_or(ReadEnd::Eof),
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return ReadEnd::Drained,
                Err(_) => return ReadEnd::Eof,
            };
            self.decoder.commit(n);
            if let Some(end) = self.decode(out) {
                return end;
            }
            budget = budget.saturating_sub(n);
            if n < want || budget == 0 {
                return ReadEnd::Drained;
            }
        }
    }

    fn decode(&mut self, out: &mut Vec<Incoming>) -> Option<ReadEnd> {
        loop {
            let frame = match self.decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Some(ReadEnd::Violation(e.to_string())),
            };
            self.frames += 1;
            if !self.hello && frame.kind != Kind::Hello {
                return Some(ReadEnd::Violation(format!(
                    "first frame is {:?}, expected Hello",
                    frame.kind
                )));
            }
            let msg = match frame.kind {
                Kind::Hello if self.hello => {
                    return Some(ReadEnd::Violation("second Hello".into()))
                }
                Kind::Hello => {
                    match frame::parse_hello(frame.body) {
                        Ok(fields) if fields == [self.pid as u32] => {
                            self.hello = true;
                            Incoming::Hello
                        }
                        Ok(fields) => {
                            let detail = format!("worker hello must carry its pid {} and nothing else, got {fields:?}", self.pid);
                            return Some(ReadEnd::Violation(detail));
                        }
                        Err(e) => return Some(ReadEnd::Violation(e.to_string())),
                    }
                }
                Kind::Ready | Kind::Heartbeat | Kind::Disconnect if !frame.body.is_empty() => {
                    let detail = format!(
                        "{:?} frame with a {}-byte body (must be empty)",
                        frame.kind,
                        frame.body.len()
                    );
                    return Some(ReadEnd::Violation(detail));
                }
                Kind::Ready => Incoming::Ready,
                Kind::Heartbeat => continue,
                Kind::Message => Incoming::Message(frame.body.to_vec()),
                Kind::Disconnect => Incoming::Disconnect,
                Kind::ConnectionAck | Kind::ConnectionClosed if frame.has_fd => {
                    return Some(ReadEnd::Violation(format!(
                        "{:?} frame with a descriptor",
                        frame.kind
                    )));
                }
                Kind::ConnectionAck | Kind::ConnectionClosed => {
                    match crate::primary::conn_id(frame.body) {
                        Some(id) if frame.kind == Kind::ConnectionAck => Incoming::Ack(id),
                        Some(id) => Incoming::Closed(id),
                        None => {
                            let detail = format!(
                                "{:?} frame body must be an 8-byte id, got {} bytes",
                                frame.kind,
                                frame.body.len()
                            );
                            return Some(ReadEnd::Violation(detail));
                        }
                    }
                }
                Kind::Listen if !frame.has_fd => match parse_listen(frame.body) {
                    Some((request, dispatch, addr)) => Incoming::Listen {
                        request,
                        dispatch,
                        addr,
                    },
                    None => {
                        return Some(ReadEnd::Violation(format!(
                            "malformed Listen frame of {} bytes",
                            frame.body.len()
                        )))
                    }
                },
                other => {
                    return Some(ReadEnd::Violation(format!(
                        "unexpected {other:?} frame from a worker"
                    )))
                }
            };
            out.push(msg);
        }
        self.decoder.shrink();
        if !self.rx_fds.is_empty() {
            self.rx_fds.clear();
            return Some(ReadEnd::Violation("worker sent a file descriptor".into()));
        }
        None
    }

    pub fn pidfd_raw(&self) -> std::os::fd::RawFd {
        self.pidfd.as_raw_fd()
    }

    pub fn is_live(&self) -> bool {
        self.stopping.is_none() && self.state != WorkerState::Draining
    }
}

/// Listen body: u32 request id, u8 dispatch mode, u16-prefixed address text.
fn parse_listen(mut body: &[u8]) -> Option<(u32, Dispatch, String)> {
    let request = u32::from_le_bytes(frame::take_bytes::<4>(&mut body)?);
    let dispatch = Dispatch::from_u8(frame::take_bytes::<1>(&mut body)?[0])?;
    let addr = frame::take_str(&mut body)?;
    body.is_empty().then_some((request, dispatch, addr))
}
