//! The one error type of rcluster. Every message names what was wrong.

use std::fmt;
use std::io;

/// Everything that can go wrong in rcluster, each with enough detail to act on.
#[derive(Debug)]
pub enum Error {
    /// A configuration value is invalid. `field` is the option name, `value` what was given.
    Config {
        field: &'static str,
        value: String,
        reason: String,
    },
    /// A listening socket could not be bound.
    Bind { addr: String, source: io::Error },
    /// The worker program could not be started.
    Spawn { program: String, source: io::Error },
    /// A message is larger than the configured limit; it was not sent.
    MessageTooLarge { size: usize, limit: usize },
    /// The outgoing queue of a worker is full (it is not reading); try again later.
    QueueFull { worker: u32, limit: usize },
    /// No live worker has this id.
    NoSuchWorker(u32),
    /// The supervisor has been stopped (or its thread is gone).
    Stopped,
    /// The peer broke the IPC protocol.
    Protocol(String),
    /// Not running under an rcluster primary, or its environment is malformed.
    NotAWorker(String),
    /// An operating-system call failed; `op` says which.
    Io { op: &'static str, source: io::Error },
    /// A pool's queue holds `max_queue` tasks; the task was not queued.
    TaskQueueFull { limit: usize },
    /// No worker of the pool can run tasks any more; the text says why.
    PoolBroken(String),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn config(
        field: &'static str,
        value: impl fmt::Debug,
        reason: impl Into<String>,
    ) -> Self {
        Error::Config {
            field,
            value: format!("{value:?}"),
            reason: reason.into(),
        }
    }

    pub(crate) fn io(op: &'static str, source: io::Error) -> Self {
        Error::Io { op, source }
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Error::Config { field, value, reason } => {
                write!(f, "invalid config: {field} = {value}: {reason}")
            }
            Error::Bind { addr, source } => write!(f, "cannot listen on {addr}: {source}"),
            Error::Spawn { program, source } => write!(f, "cannot start worker program {program:?}: {source}"),
            Error::MessageTooLarge { size, limit } => {
                write!(f, "message too large: {size} bytes, the limit is {limit} bytes")
            }
            Error::QueueFull { worker, limit } => write!(
                f,
                "outgoing queue of worker {worker} is full ({limit} bytes queued); the worker is not reading"
            ),
            Error::NoSuchWorker(id) => write!(f, "no live worker with id {id}"),
            Error::Stopped => write!(f, "the supervisor is stopped"),
            Error::Protocol(detail) => write!(f, "protocol error: {detail}"),
            Error::NotAWorker(detail) => write!(f, "not an rcluster worker: {detail}"),
            Error::Io { op, source } => write!(f, "{op} failed: {source}"),
            Error::TaskQueueFull { limit } => {
                write!(f, "the pool's task queue is full ({limit} tasks, max_queue)")
            }
            Error::PoolBroken(why) => write!(f, "the pool cannot run tasks: {why}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Error::Spawn { source, .. } | Error::Io { source, .. } | Error::Bind { source, .. } => {
                Some(source)
            }
            _ => None,
        }
    }
}
