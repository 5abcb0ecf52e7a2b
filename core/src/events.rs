//! What the supervisor tells the host, and the queue that carries it.
//!
//! Events leave the loop through a queue with two ways to wait on it: a blocking
//! `next_event(timeout)`, and an eventfd that is readable while the queue may be non-empty,
//! for host loops (libuv, asyncio, epoll).
//!
//! The queue is bounded for user messages only: readers of worker sockets ask `room()` before
//! they decode messages and stop (pausing that worker, which then blocks in its own `send`)
//! when there is none. Lifecycle events are always queued: they are few, and a host must learn
//! of an exit even while a flood fills the queue.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

use crate::policy::ExitReason;
use crate::sys;
use crate::wire::content::ContentType;

/// A worker's lifecycle state.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WorkerState {
    /// Exec'd; has not said hello yet.
    Starting,
    /// Said hello; not ready yet.
    Online,
    /// Ready for work.
    Ready,
    /// Told to stop; finishing.
    Draining,
    /// Gone and reaped.
    Exited,
}

impl WorkerState {
    pub fn as_str(self) -> &'static str {
        match self {
            WorkerState::Starting => "starting",
            WorkerState::Online => "online",
            WorkerState::Ready => "ready",
            WorkerState::Draining => "draining",
            WorkerState::Exited => "exited",
        }
    }
}

/// How a worker process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ExitInfo {
    pub pid: u32,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: ExitReason,
}

/// Something that happened in the cluster.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A worker process was exec'd.
    Spawned { id: u32, pid: u32, generation: u32 },
    /// The worker library said hello.
    Online { id: u32, pid: u32 },
    /// The worker is ready for work.
    Ready { id: u32, pid: u32 },
    /// A user message from a worker, with its content type (`Raw` from a worker that does
    /// not set one).
    Message {
        id: u32,
        pid: u32,
        data: Vec<u8>,
        content: ContentType,
    },
    /// A pool worker answered a task: `data` is the TaskDone body (see `pool`, which reads
    /// these; a supervisor whose workers run no tasks never sees one).
    TaskDone { id: u32, pid: u32, data: Vec<u8> },
    /// A worker process ended and was reaped.
    Exit {
        id: u32,
        generation: u32,
        info: ExitInfo,
    },
    /// The worker program could not be started (exec failed).
    SpawnFailed { id: u32, error: String },
    /// The slot will be started again after `delay`.
    Restarting {
        id: u32,
        delay: Duration,
        attempt: u32,
    },
    /// The slot restarted too often within the window; it stays down.
    GaveUp {
        id: u32,
        restarts: u32,
        window: Duration,
    },
    /// Every slot has given up (or stays down by policy): nothing is running any more.
    AllDown,
    /// A worker broke the protocol; it is being killed.
    ProtocolError { id: u32, pid: u32, detail: String },
    /// A rolling reload to `generation` started.
    ReloadStarted { generation: u32 },
    /// Every slot runs `generation` now.
    ReloadDone { generation: u32 },
    /// The reload stopped; workers not yet replaced keep running.
    ReloadFailed { generation: u32, reason: String },
    /// The number of slots changed.
    Scaled { workers: usize },
    /// Accepting on `listener` failed (e.g. out of descriptors); it resumes shortly.
    AcceptPaused { listener: String, error: String },
    /// Output of worker slot `id` was dropped (`Output::Prefix`): the host's stdout or stderr
    /// did not take it fast enough (the buffer was full) or is gone (EPIPE). At most about one
    /// per slot a second; `lines` and `bytes` count what was dropped since the last one.
    OutputDropped { id: u32, lines: u64, bytes: u64 },
    /// Something went wrong that the supervisor carries on from; `detail` says what.
    Warning { detail: String },
    /// Worker `pid` of slot `id` reached a recycling limit (`reason`: `memory` for
    /// `max_memory`, `max_requests`): a replacement is starting, and the worker will be asked
    /// to stop once the replacement is ready. Its exit carries the same reason.
    Recycling {
        id: u32,
        pid: u32,
        reason: ExitReason,
    },
}

impl Event {
    /// The event's name, the same in every binding and in the docs (`spawned`, `gave_up`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            Event::Spawned { .. } => "spawned",
            Event::Online { .. } => "online",
            Event::Ready { .. } => "ready",
            Event::Message { .. } => "message",
            Event::TaskDone { .. } => "task_done",
            Event::Exit { .. } => "exit",
            Event::SpawnFailed { .. } => "spawn_failed",
            Event::Restarting { .. } => "restarting",
            Event::GaveUp { .. } => "gave_up",
            Event::AllDown => "all_down",
            Event::ProtocolError { .. } => "protocol_error",
            Event::ReloadStarted { .. } => "reload_started",
            Event::ReloadDone { .. } => "reload_done",
            Event::ReloadFailed { .. } => "reload_failed",
            Event::Scaled { .. } => "scaled",
            Event::AcceptPaused { .. } => "accept_paused",
            Event::OutputDropped { .. } => "output_dropped",
            Event::Warning { .. } => "warning",
            Event::Recycling { .. } => "recycling",
        }
    }
}

/// One worker process in a snapshot.
#[derive(Debug, Clone, PartialEq)]
pub struct WorkerInfo {
    pub id: u32,
    pub pid: u32,
    pub generation: u32,
    pub state: WorkerState,
    pub uptime: Duration,
    /// Restarts of this slot so far.
    pub restarts: u32,
    pub last_exit: Option<ExitInfo>,
}

/// How long `next_event` spins before sleeping: a reply that arrives within this window is
/// picked up without a futex wake-up, which on virtual machines costs tens of microseconds.
pub(crate) const SPIN: Duration = Duration::from_micros(50);

/// What a queued message costs beyond its bytes: the event in the queue and the allocation of
/// its data. Counting it keeps a flood of one-byte messages as bounded as one of large ones.
const MESSAGE_OVERHEAD: usize = 96;

/// What a user message of `len` bytes counts against `Config::event_queue_limit`.
pub(crate) fn message_cost(len: usize) -> usize {
    len + MESSAGE_OVERHEAD
}

fn cost(ev: &Event) -> usize {
    match ev {
        Event::Message { data, .. } => message_cost(data.len()),
        _ => 0,
    }
}

pub struct EventQueue {
    q: Mutex<Inner>,
    cv: Condvar,
    fd: sys::EventFd,
    /// Length of the queue, readable without the lock (for spinning).
    len: AtomicUsize,
    /// Somebody asked for the fd: only then is it kept in step with the queue, which costs a
    /// system call per batch and per emptying.
    fd_used: AtomicBool,
    /// `Config::event_queue_limit`: most message cost queued before readers pause.
    limit: usize,
    /// The cost of the messages queued (kept with the queue, readable without the lock).
    cost: AtomicUsize,
    /// A reader paused for want of room: the take that brings the queue down to half of
    /// `limit` reports it (`take_room_made`) so that the loop is woken to read again.
    wants_room: AtomicBool,
    /// User messages ever queued.
    messages: AtomicU64,
}

struct Inner {
    events: VecDeque<Event>,
    /// The fd is readable now: it is written and read only when this changes, not for every
    /// batch and every emptying.
    signalled: bool,
    waiters: usize,
    closed: bool,
}

impl EventQueue {
    /// A queue that holds messages costing up to `limit` (see `message_cost`).
    pub fn new(limit: usize) -> std::io::Result<EventQueue> {
        Ok(EventQueue {
            q: Mutex::new(Inner {
                events: VecDeque::new(),
                signalled: false,
                waiters: 0,
                closed: false,
            }),
            cv: Condvar::new(),
            fd: sys::EventFd::new()?,
            len: AtomicUsize::new(0),
            fd_used: AtomicBool::new(false),
            limit,
            cost: AtomicUsize::new(0),
            wants_room: AtomicBool::new(false),
            messages: AtomicU64::new(0),
        })
    }

    /// How much message cost may still be queued before readers must pause.
    pub fn room(&self) -> usize {
        self.limit.saturating_sub(self.cost.load(Ordering::SeqCst))
    }

    /// The queue is down to its low-water mark (half the limit): paused readers may go on.
    /// Resuming only there, not at the first free byte, makes each pause last for many
    /// messages instead of one.
    pub fn may_resume(&self) -> bool {
        self.cost.load(Ordering::SeqCst) <= self.limit / 2
    }

    /// A reader paused: the next take that reaches the low-water mark says so. The caller
    /// checks `may_resume` after this, so that a host that emptied the queue just before is
    /// not missed.
    pub fn want_room(&self) {
        self.wants_room.store(true, Ordering::SeqCst);
    }

    /// True once after a take that brought the queue to its low-water mark while a reader
    /// was paused: the taker then wakes the loop.
    pub fn take_room_made(&self) -> bool {
        self.wants_room.load(Ordering::Relaxed)
            && self.may_resume()
            && self.wants_room.swap(false, Ordering::SeqCst)
    }

    fn add_cost(&self, batch: &[Event]) {
        let (mut c, mut messages) = (0, 0);
        for k in batch.iter().map(cost).filter(|&k| k > 0) {
            c += k;
            messages += 1;
        }
        if c > 0 {
            self.cost.fetch_add(c, Ordering::SeqCst);
            self.messages.fetch_add(messages, Ordering::Relaxed);
        }
    }

    /// User messages queued for the host since the start (`rcluster_ipc_messages_total`).
    pub fn messages_queued(&self) -> u64 {
        self.messages.load(Ordering::Relaxed)
    }

    /// Called under the lock with an event just taken from the queue.
    fn took(&self, ev: &Event) {
        let c = cost(ev);
        if c > 0 {
            self.cost.fetch_sub(c, Ordering::SeqCst);
        }
    }

    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        if !self.fd_used.load(Ordering::Acquire) {
            let mut q = self.q.lock().unwrap();
            self.fd_used.store(true, Ordering::Release);
            self.sync_fd(&mut q);
        }
        self.fd.raw()
    }

    /// Makes the fd readable exactly when events wait (called under the lock, so that a
    /// producer and a consumer never lose a wake-up between them).
    fn sync_fd(&self, q: &mut Inner) {
        let want = !q.events.is_empty() || q.closed;
        if want != q.signalled && self.fd_used() {
            if want {
                self.fd.notify();
            } else {
                self.fd.clear();
            }
            q.signalled = want;
        }
    }

    fn fd_used(&self) -> bool {
        self.fd_used.load(Ordering::Acquire)
    }

    /// Adds events; one wake-up for the whole batch.
    pub fn push_all(&self, batch: &mut Vec<Event>) {
        if batch.is_empty() {
            return;
        }
        let mut q = self.q.lock().unwrap();
        self.add_cost(batch);
        q.events.extend(batch.drain(..));
        self.len.store(q.events.len(), Ordering::Release);
        self.sync_fd(&mut q);
        let waiters = q.waiters;
        drop(q);
        if waiters > 0 {
            self.cv.notify_all();
        }
    }

    /// No more events will come; wakes every waiter.
    pub fn close(&self) {
        let mut q = self.q.lock().unwrap();
        q.closed = true;
        q.signalled = true;
        self.fd.notify();
        drop(q);
        self.cv.notify_all();
    }

    /// Adds events that the caller takes at once with `try_pop` (a host thread that read them
    /// itself): the fd is not signalled for them, unless some are left after that `try_pop`.
    pub fn push_for_self(&self, batch: &mut Vec<Event>) {
        if batch.is_empty() {
            return;
        }
        let mut q = self.q.lock().unwrap();
        self.add_cost(batch);
        q.events.extend(batch.drain(..));
        self.len.store(q.events.len(), Ordering::Release);
    }

    pub fn try_pop(&self) -> Option<Event> {
        let mut q = self.q.lock().unwrap();
        let ev = q.events.pop_front();
        if let Some(ev) = &ev {
            self.took(ev);
        }
        self.len.store(q.events.len(), Ordering::Release);
        self.sync_fd(&mut q);
        ev
    }

    /// True once the supervisor has stopped (events may still wait).
    pub fn is_closed(&self) -> bool {
        self.q.lock().unwrap().closed
    }

    /// Waits up to `timeout` (forever if None) for the next event. None on timeout or when the
    /// supervisor has stopped and every event was taken.
    pub fn pop(&self, timeout: Option<Duration>) -> Option<Event> {
        let start = Instant::now();
        let deadline = timeout.map(|t| start + t);
        let spin_until = start + timeout.map_or(SPIN, |t| t.min(SPIN));
        loop {
            if self.len.load(Ordering::Acquire) > 0 {
                if let Some(ev) = self.try_pop() {
                    return Some(ev);
                }
            }
            if Instant::now() >= spin_until {
                break;
            }
            std::hint::spin_loop();
        }
        let mut q = self.q.lock().unwrap();
        loop {
            if let Some(ev) = q.events.pop_front() {
                self.took(&ev);
                self.len.store(q.events.len(), Ordering::Release);
                self.sync_fd(&mut q);
                return Some(ev);
            }
            if q.closed {
                return None;
            }
            let wait = match deadline {
                Some(d) => match d.checked_duration_since(Instant::now()) {
                    Some(w) if !w.is_zero() => Some(w),
                    _ => return None,
                },
                None => None,
            };
            q.waiters += 1;
            q = match wait {
                Some(w) => self.cv.wait_timeout(q, w).unwrap().0,
                None => self.cv.wait(q).unwrap(),
            };
            q.waiters -= 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(len: usize) -> Event {
        Event::Message {
            id: 0,
            pid: 1,
            data: vec![b'x'; len],
            content: ContentType::Raw,
        }
    }

    #[test]
    fn messages_use_up_room_and_lifecycle_events_do_not() {
        let q = EventQueue::new(4 * message_cost(10)).unwrap();
        q.push_all(&mut vec![message(10), message(10), Event::AllDown]);
        assert_eq!(q.room(), 2 * message_cost(10));
        q.push_all(&mut vec![message(10), message(10)]);
        assert_eq!(q.room(), 0);
        // Never held back, never counted.
        q.push_all(&mut vec![Event::Scaled { workers: 2 }]);
        assert_eq!(q.room(), 0);
        assert!(!q.may_resume());
        while q.try_pop().is_some() {}
        assert_eq!(q.room(), 4 * message_cost(10));
    }

    #[test]
    fn a_paused_reader_is_reported_once_when_the_queue_reaches_half() {
        let q = EventQueue::new(4 * message_cost(0)).unwrap();
        q.push_all(&mut (0..4).map(|_| message(0)).collect());
        q.want_room();
        assert!(q.try_pop().is_some());
        assert!(!q.take_room_made(), "three quarters full: not yet");
        assert!(q.pop(Some(Duration::ZERO)).is_some());
        assert!(q.take_room_made(), "half full: the loop is woken");
        assert!(q.try_pop().is_some());
        assert!(!q.take_room_made(), "once per pause");
    }
}
