//! One worker process as the loop sees it, and the client connections the primary holds for
//! the workers (waiting for one, or handed and not yet acknowledged).

use std::collections::{HashMap, HashSet, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::Arc;
use std::time::Instant;

use crate::events::WorkerState;
use crate::policy::ExitReason;
use crate::primary::link::Link;
use crate::primary::output::pipe::PrefixPipe;
use crate::sys::listen::Peer;

/// A connection the primary holds: waiting for a worker, or handed and not yet acknowledged.
pub struct Waiting {
    pub id: u64,
    pub fd: OwnedFd,
    pub listener: usize,
    pub peer: Peer,
    pub since: Instant,
    /// When it was last handed to a worker (for `ack_timeout`).
    pub handed: Instant,
}

/// A connection a worker acknowledged lately: what the primary needs to hand it to another
/// worker if this one gives it back (`ConnectionBack`), the socket then coming with it.
pub struct Handed {
    pub id: u64,
    pub listener: usize,
    pub peer: Peer,
    pub since: Instant,
}

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
    pub link: Arc<Link>,
    pub ipc_open: bool,
    /// Its socket is also read by the host thread (see `Shared::host`): it sends messages.
    pub host_read: bool,
    /// Not read until the host's event queue has room again (`ReadEnd::Paused`).
    pub paused: bool,
    pub out_armed: bool,
    pub hello: bool,
    pub state: WorkerState,
    pub spawned_at: Instant,
    pub ready_deadline: Option<Instant>,
    pub last_seen: Instant,
    pub stopping: Option<Stopping>,
    /// Its link ended in the middle of a frame, and why (see `ReadEnd::CutShort`).
    pub cut_short: Option<String>,
    pub pipes: [Option<PrefixPipe>; 2],
    /// Connections handed and not yet acknowledged; the primary keeps its copy until then.
    pub unacked: HashMap<u64, Waiting>,
    /// Connections acknowledged and not yet reported closed.
    pub active: HashSet<u64>,
    /// Connections round-robin gave it ahead of its turns (see `dispatch::Pass`).
    pub ahead: u32,
    /// The connections it acknowledged last, newest at the back (see `Handed`): as many as
    /// its handoff window, 64 at least.
    pub recent: VecDeque<Handed>,
    /// The host sent it a signal (`Supervisor::kill`): an exit of its own is `Requested`.
    pub kill_requested: bool,
    /// Connections it acknowledged, in all (for the status).
    pub connections_total: u64,
    /// Its `/proc/PID/stat`, opened by the first status that reads it.
    pub stat: std::cell::OnceCell<Option<crate::sys::procstat::StatFile>>,
    /// Connections after which it is recycled (`max_requests` plus its jitter), if any.
    pub request_limit: Option<u64>,
}

impl Process {
    pub fn pidfd_raw(&self) -> std::os::fd::RawFd {
        self.pidfd.as_raw_fd()
    }

    pub fn is_live(&self) -> bool {
        self.stopping.is_none() && self.state != WorkerState::Draining
    }
}
