//! What the handle (host threads) and the loop thread share: the command queue and its
//! waker, the routes of messages, the event queue, the host's reading.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64};
use std::sync::mpsc::SyncSender;
use std::sync::{Arc, Condvar, Mutex, OnceLock, RwLock};
use std::time::Duration;

use crate::error::Result;
use crate::events::{EventQueue, WorkerInfo};
use crate::primary::host_read::HostRead;
use crate::primary::link::{Link, Waker};
use crate::sys::listen::ListenAddr;

/// What a host thread asks of the loop.
pub(crate) enum Command {
    Snapshot(SyncSender<Vec<WorkerInfo>>),
    Status(SyncSender<crate::primary::status::Status>),
    Scale(usize, SyncSender<Result<()>>),
    /// Scale by a step within 1..=MAX_WORKERS; the reply is the count before and after.
    ScaleBy(isize, SyncSender<Result<(usize, usize)>>),
    Restart(u32, SyncSender<Result<()>>),
    /// Send a signal to the worker(s) of a slot; the exit that follows is `Requested`.
    Kill(u32, i32, SyncSender<Result<()>>),
    Reload(SyncSender<Result<u32>>),
    Stop(Duration),
    /// A stop after `Config::drain_delay`, during which `/readyz` fails (a stop signal).
    Drain(Duration),
}

/// State shared by the handle (host threads) and the loop thread.
pub(crate) struct Shared {
    pub cmds: Mutex<VecDeque<Command>>,
    pub waker: Waker,
    /// Where a message to worker `id` goes: its current process's link.
    pub routes: RwLock<HashMap<u32, Arc<Link>>>,
    pub events: EventQueue,
    /// Worker sockets a host thread reads itself (see `host_read`).
    pub host: HostRead,
    pub max_message: usize,
    pub stopped: AtomicBool,
    /// Name and actual address of each listener (a port 0 resolved).
    pub bound: Vec<(String, ListenAddr)>,
    /// Set (and signalled) when the loop has ended, for `stop` callers that do not join it.
    pub done: (Mutex<bool>, Condvar),
    /// User messages the host queued to workers (`rcluster_ipc_messages_total`).
    pub messages_out: AtomicU64,
    /// A pool's counters for the status object, when a pool runs these workers.
    pub pool_status: OnceLock<PoolCounters>,
}

/// Reads a pool's counters (called by the loop; takes the pool's lock briefly).
pub(crate) type PoolCounters = Box<dyn Fn() -> crate::primary::status::PoolStatus + Send + Sync>;
