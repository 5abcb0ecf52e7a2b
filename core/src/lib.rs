//! rcluster-core: a process supervisor for pre-forked servers.
//!
//! The primary side is [`Supervisor`]: it forks workers, watches them through pidfds on its own
//! thread, restarts them by policy and carries messages. The worker side is [`Worker`].
//! No process-wide signal handlers, no `waitpid(-1)`, no async runtime: it lives politely
//! inside somebody else's process (Node, CPython, a C program).

// Every unsafe block says why it is sound (`cargo clippy -- -D warnings` enforces it).
#![warn(clippy::undocumented_unsafe_blocks)]

// Layers, lowest first; a module may use only the ones above it in this list (checked by
// `tests/layers.rs`): `error`; `sys`; `wire`; `config`; `policy`; `events`; `primary` and
// `worker` (which do not use each other); `pool` and `fuzzing`.
mod config;
mod error;
mod events;
/// Entry points of the fuzz targets in `fuzz/` (not part of the API).
#[doc(hidden)]
pub mod fuzzing;
mod policy;
pub mod pool;
mod primary;
mod sys;
mod wire;
mod worker;

pub use wire::content::ContentType;
pub use wire::frame;

pub use config::{
    default_listener_name, default_workers, Config, ControlMode, Output, ReadyOn, RestartMode,
    RestartPolicy, DEFAULT_EVENT_QUEUE_LIMIT, DEFAULT_MAX_MESSAGE, MAX_DURATION, MAX_MAX_MESSAGE,
    MAX_WORKERS, MIN_EVENT_QUEUE_LIMIT,
};
pub use error::{Error, Result};
pub use events::{Event, ExitInfo, WorkerInfo, WorkerState};
pub use policy::{Clock, Decision, ExitReason, History, Jitter, SystemClock, XorShift};
pub use primary::control::path::{control_dir, remove_stale_socket, SocketKept};
pub use primary::signals::{signal_name, SignalAction, EXIT_AFTER_SIGNAL_STOP, HANDLED_SIGNALS};
pub use primary::status::{LastExit, ListenerStatus, PoolStatus, Status, WorkerStatus};
pub use primary::supervisor::Supervisor;
pub use sys::listen::{
    accept_connection, listener_has_queued, resolve_listen, Dispatch, ListenAddr, Listener,
};
pub use worker::shared::{Accepted, SharedAcceptor, DEFER_FOR};
pub use worker::{Answer, Connection, Listening, Task, TurnCounter, Worker, WorkerEvent};

/// Reaps every exited child of this process that no supervisor of it started, and returns how
/// many: the orphans a process adopts as PID 1 of a container or as a subreaper
/// (`PR_SET_CHILD_SUBREAPER`). The workers and helpers of every supervisor are left to it,
/// even one forked while this runs. The core never calls it itself: a host that adopts
/// orphans calls it when SIGCHLD arrives (the `rcluster` command does, as PID 1 or with
/// `--subreaper`).
pub fn reap_orphans() -> std::io::Result<usize> {
    sys::children::reap_orphans().map(|r| r.len())
}

/// Number of open descriptors of this process, for leak checks in tests and benchmarks.
pub fn open_fd_count() -> usize {
    sys::open_fd_count()
}
