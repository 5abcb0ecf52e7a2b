//! The public handle of the primary side. It owns the loop thread and talks to it through a
//! command queue plus a waker; everything here is `Send + Sync`.

use std::collections::{HashMap, VecDeque};
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{sync_channel, SyncSender};
use std::sync::{Arc, Condvar, Mutex, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use crate::config::{Config, MAX_WORKERS};
use crate::error::{Error, Result};
use crate::events::{Event, EventQueue, WorkerInfo, SPIN};
use crate::primary::host_read::HostRead;
use crate::primary::link::{Link, Waker};
use crate::primary::shared::{Command, Shared};
use crate::primary::signals::SignalState;
use crate::primary::{steered, Bound, Primary};
use crate::sys;
use crate::sys::listen::{self, ListenAddr};
use crate::wire::content::ContentType;

/// A running cluster of workers. Dropping it stops the cluster (with `kill_timeout`).
pub struct Supervisor {
    shared: Arc<Shared>,
    thread: Mutex<Option<JoinHandle<()>>>,
    kill_timeout: Duration,
    signals: SignalState,
    /// `Config::drain_delay`: a stop signal first drains this long.
    drain_delay: Duration,
    /// Where `/metrics`, `/healthz` and `/readyz` are served (`Config::metrics`).
    metrics: Option<ListenAddr>,
}

impl Supervisor {
    /// Validates `config`, starts the loop thread and the workers. Returns once the loop runs;
    /// worker start-up is reported by events.
    pub fn start(config: Config) -> Result<Supervisor> {
        // Refused up front: below the floor the first spawn would fail, or worse, a worker
        // would inherit the host's descriptors.
        sys::check_kernel(&sys::kernel_release()).map_err(|why| {
            Error::io(
                "checking the kernel",
                std::io::Error::new(std::io::ErrorKind::Unsupported, why),
            )
        })?;
        let program = config.validate()?;
        // Claimed before listeners are bound: a name in use fails `start` with nothing bound.
        let (control, control_warning) = crate::primary::control::Control::open(&config)?;
        // Bound before anything starts: an address in use fails `start` with nothing running.
        let mut listeners = Vec::with_capacity(config.listeners.len());
        let mut refused = None;
        for l in &config.listeners {
            if let Some(fd) = l.fd {
                listeners.push(Bound::inherited(l, fd)?);
                continue;
            }
            let turns = steered::wanted(&config, l.dispatch, &l.addr);
            let (fd, group) = steered::bind(&l.addr, l.dispatch, turns, l.share, &mut refused)
                .inspect_err(|_| {
                    listeners
                        .iter()
                        .filter(|b| !b.inherited)
                        .for_each(|b: &Bound| listen::unlink_unix(&b.addr))
                })?;
            let addr = listen::local_addr(std::os::fd::AsRawFd::as_raw_fd(&fd), &l.addr);
            let mut b = Bound::new(l.name.clone(), addr, fd, l.dispatch);
            b.group = group;
            listeners.push(b);
        }
        let shared = Arc::new(Shared {
            cmds: Mutex::new(VecDeque::new()),
            waker: Waker::new().map_err(|e| Error::io("eventfd", e))?,
            routes: RwLock::new(HashMap::new()),
            events: EventQueue::new(config.event_queue_limit)
                .map_err(|e| Error::io("eventfd", e))?,
            host: HostRead::new(),
            max_message: config.max_message,
            stopped: AtomicBool::new(false),
            bound: listeners
                .iter()
                .map(|b| (b.name.clone(), b.addr.clone()))
                .collect(),
            done: (Mutex::new(false), Condvar::new()),
            messages_out: AtomicU64::new(0),
            pool_status: std::sync::OnceLock::new(),
        });
        let (kill_timeout, drain_delay) = (config.kill_timeout, config.drain_delay);
        let mut primary = Primary::new(config, &program, Arc::clone(&shared), listeners, refused)?;
        primary.set_control(control, control_warning);
        let metrics = primary.metrics_addr();
        let thread = std::thread::Builder::new()
            .name("rcluster".into())
            .spawn(move || primary.run())
            .map_err(|e| Error::io("spawning the supervisor thread", e))?;
        Ok(Supervisor {
            shared,
            thread: Mutex::new(Some(thread)),
            kill_timeout,
            signals: SignalState::default(),
            drain_delay,
            metrics,
        })
    }

    fn command(&self, cmd: Command) -> Result<()> {
        // Checked under the queue's lock, which the loop holds when it marks itself stopped
        // and drops what is queued: a command is either queued before that (and its reply
        // sender dropped with the queue) or refused here, never left in a queue nobody reads.
        let mut cmds = self.shared.cmds.lock().unwrap();
        if self.shared.stopped.load(Ordering::Acquire) {
            return Err(Error::Stopped);
        }
        cmds.push_back(cmd);
        drop(cmds);
        self.shared.waker.wake();
        Ok(())
    }

    fn ask<T>(&self, make: impl FnOnce(SyncSender<T>) -> Command) -> Result<T> {
        let (tx, rx) = sync_channel(1);
        self.command(make(tx))?;
        rx.recv().map_err(|_| Error::Stopped)
    }

    /// Sends a user message (`raw`) to worker `id`. Fails at once with `MessageTooLarge`,
    /// `QueueFull` (the worker is not reading; retry later) or `NoSuchWorker`.
    pub fn send(&self, id: u32, data: &[u8]) -> Result<()> {
        self.send_as(id, ContentType::Raw, data)
    }

    /// Sends a user message of content type `content` to worker `id` (see [`send`]); the
    /// limit counts `data` only.
    ///
    /// [`send`]: Supervisor::send
    pub fn send_as(&self, id: u32, content: ContentType, data: &[u8]) -> Result<()> {
        if data.len() > self.shared.max_message {
            return Err(Error::MessageTooLarge {
                size: data.len(),
                limit: self.shared.max_message,
            });
        }
        let link = self.shared.routes.read().unwrap().get(&id).cloned();
        match link {
            Some(c) => c
                .send_message(&self.shared.waker, content, data)
                .inspect(|()| self.sent(1)),
            None if self.shared.stopped.load(Ordering::Acquire) => Err(Error::Stopped),
            None => Err(Error::NoSuchWorker(id)),
        }
    }

    /// The largest user message in bytes (`Config::max_message`).
    pub fn max_message(&self) -> usize {
        self.shared.max_message
    }

    /// Sends several user messages to worker `id`, in order, as one batch: one lock, and at
    /// most one write or wake-up of the loop for all of them. All are queued, or none (when one
    /// is too large or they do not fit in the queue).
    pub fn send_many(&self, id: u32, messages: &[&[u8]]) -> Result<()> {
        self.send_many_as(id, ContentType::Raw, messages)
    }

    /// Sends several user messages of content type `content` to worker `id` as one batch
    /// (see [`send_many`]).
    ///
    /// [`send_many`]: Supervisor::send_many
    pub fn send_many_as(&self, id: u32, content: ContentType, messages: &[&[u8]]) -> Result<()> {
        let link = self.shared.routes.read().unwrap().get(&id).cloned();
        match link {
            Some(c) => c
                .send_messages(&self.shared.waker, content, messages)
                .inspect(|()| self.sent(messages.len())),
            None if self.shared.stopped.load(Ordering::Acquire) => Err(Error::Stopped),
            None => Err(Error::NoSuchWorker(id)),
        }
    }

    /// Sends encoded task bodies (`wire::task`) as Task frames to worker `id`, in one batch,
    /// if its process is still `pid`: a pool never gives a task to the process that replaced
    /// the one it chose. Fails with `NoSuchWorker` when that process is gone, `QueueFull` when
    /// they do not fit in its queue (none is sent then).
    #[doc(hidden)]
    pub fn send_tasks(&self, id: u32, pid: u32, bodies: &[Vec<u8>]) -> Result<()> {
        let link = self.shared.routes.read().unwrap().get(&id).cloned();
        match link {
            Some(c) if c.pid() as u32 == pid => {
                c.send_bodies(&self.shared.waker, crate::wire::frame::Kind::Task, bodies)
            }
            _ if self.shared.stopped.load(Ordering::Acquire) => Err(Error::Stopped),
            _ => Err(Error::NoSuchWorker(id)),
        }
    }

    /// Tells worker `id`, if its process is still `pid`, that task `task` (sent to it and
    /// waiting there) is cancelled: the worker drops it unless it has started it. Fails as
    /// `send_tasks` does.
    #[doc(hidden)]
    pub fn send_task_cancel(&self, id: u32, pid: u32, task: u64) -> Result<()> {
        let body = crate::wire::task::task_cancel(task).to_vec();
        let link = self.shared.routes.read().unwrap().get(&id).cloned();
        match link {
            Some(c) if c.pid() as u32 == pid => c.send_bodies(
                &self.shared.waker,
                crate::wire::frame::Kind::TaskCancel,
                &[body],
            ),
            _ if self.shared.stopped.load(Ordering::Acquire) => Err(Error::Stopped),
            _ => Err(Error::NoSuchWorker(id)),
        }
    }

    /// Sends a user message (`raw`) to every live worker; returns how many it was queued for.
    /// Workers whose queue is full are skipped (they are not reading).
    pub fn broadcast(&self, data: &[u8]) -> Result<usize> {
        self.broadcast_as(ContentType::Raw, data)
    }

    /// Sends a user message of content type `content` to every live worker (see
    /// [`broadcast`]).
    ///
    /// [`broadcast`]: Supervisor::broadcast
    pub fn broadcast_as(&self, content: ContentType, data: &[u8]) -> Result<usize> {
        if data.len() > self.shared.max_message {
            return Err(Error::MessageTooLarge {
                size: data.len(),
                limit: self.shared.max_message,
            });
        }
        let links: Vec<Arc<Link>> = self
            .shared
            .routes
            .read()
            .unwrap()
            .values()
            .cloned()
            .collect();
        let n = links
            .iter()
            .filter(|c| c.send_message(&self.shared.waker, content, data).is_ok())
            .count();
        self.sent(n);
        Ok(n)
    }

    /// Counts messages queued to workers, for `/metrics` (only when it is served: the count
    /// is a shared counter on the hot path of every sending thread).
    fn sent(&self, n: usize) {
        if self.metrics.is_some() {
            self.shared
                .messages_out
                .fetch_add(n as u64, Ordering::Relaxed);
        }
    }

    /// Every worker process (and every slot that has none running), as of now.
    pub fn snapshot(&self) -> Result<Vec<WorkerInfo>> {
        self.ask(Command::Snapshot)
    }

    /// Makes the status object carry a pool's counters, read by `counters` (once per
    /// supervisor: a later call changes nothing).
    pub(crate) fn set_pool_status(&self, counters: crate::primary::shared::PoolCounters) {
        let _ = self.shared.pool_status.set(counters);
    }

    /// The cluster's status (the object of `rcluster status --json`), as of now.
    pub fn status(&self) -> Result<crate::primary::status::Status> {
        self.ask(Command::Status)
    }

    /// Changes the number of worker slots; removed workers are stopped gracefully.
    pub fn scale(&self, workers: usize) -> Result<()> {
        if workers == 0 || workers > MAX_WORKERS {
            return Err(Error::config(
                "workers",
                workers,
                format!("must be 1..={MAX_WORKERS}"),
            ));
        }
        self.ask(|tx| Command::Scale(workers, tx))?
    }

    /// Adds `delta` workers (removes them if negative), staying within `1..=MAX_WORKERS`;
    /// returns the number of worker slots before and after (equal at a bound). The step is
    /// taken by the loop from its own count, so concurrent steps and `scale` calls never lose
    /// one, and a host need not count workers itself (SIGTTIN/SIGTTOU, Node's `fork()`).
    pub fn scale_by(&self, delta: isize) -> Result<(usize, usize)> {
        self.ask(|tx| Command::ScaleBy(delta, tx))?
    }

    /// Stops worker `id` gracefully and starts it again at once.
    pub fn restart_worker(&self, id: u32) -> Result<()> {
        self.ask(|tx| Command::Restart(id, tx))?
    }

    /// Sends `signal` to the process of worker `id` (each of them while a reload runs two), as
    /// `kill(2)` would, and records that it was asked for: if the worker exits after it, the
    /// exit's reason is `requested`, not `crashed`. The loop sends it while the worker is
    /// unreaped, so its pid cannot have been reused. A signal the worker survives changes
    /// nothing else; this is no stop (no SIGKILL follows; see `restart_worker` for that).
    pub fn kill(&self, id: u32, signal: i32) -> Result<()> {
        if !(1..=64).contains(&signal) {
            return Err(Error::config(
                "signal",
                signal,
                "must be a signal number from 1 to 64",
            ));
        }
        self.ask(|tx| Command::Kill(id, signal, tx))?
    }

    /// Starts a rolling reload: one slot at a time, a new worker must be ready before the old
    /// one is stopped. Returns the new generation; progress comes as events.
    pub fn reload(&self) -> Result<u32> {
        self.ask(Command::Reload)?
    }

    /// Waits up to `timeout` for the next event (forever if None). None on timeout, or once the
    /// supervisor has stopped and every event was taken.
    pub fn next_event(&self, timeout: Option<Duration>) -> Option<Event> {
        let s = &*self.shared;
        if !s.host.is_on() {
            let ev = s.events.pop(timeout);
            self.made_room();
            return ev;
        }
        // A host asked for `event_fd`, so this thread reads the chatty workers itself too:
        // wait on that descriptor rather than on the queue alone.
        let start = Instant::now();
        let deadline = timeout.map(|t| start + t);
        // As the queue does: look for a while before sleeping, since a reply that comes
        // within that time then costs no wake-up.
        let spin_until = start + timeout.map_or(SPIN, |t| t.min(SPIN));
        loop {
            if let Some(ev) = self.try_next_event() {
                return Some(ev);
            }
            if s.events.is_closed() {
                return None;
            }
            let now = Instant::now();
            if now < spin_until {
                std::hint::spin_loop();
                continue;
            }
            let left = deadline.map(|d| d.saturating_duration_since(now));
            if left == Some(Duration::ZERO) {
                return None;
            }
            // An error (EINTR) just means: look again.
            let _ = sys::poll_one(self.event_fd(), libc::POLLIN, left);
        }
    }

    /// The next event if one is waiting.
    pub fn try_next_event(&self) -> Option<Event> {
        let s = &*self.shared;
        if let Some(ev) = s.events.try_pop() {
            self.made_room();
            return Some(ev);
        }
        // Whether or not this thread read a message, the loop may have queued one meanwhile.
        if s.host.is_on() {
            s.host.read(&s.events, &s.waker);
            let ev = s.events.try_pop();
            self.made_room();
            return ev;
        }
        None
    }

    /// The host took enough events for the workers paused by a full queue to be read again:
    /// wake the loop for them.
    fn made_room(&self) {
        if self.shared.events.take_room_made() {
            self.shared.waker.wake();
        }
    }

    /// A descriptor that is readable while events may be waiting: wait on it in a host loop,
    /// then call `try_next_event` until it returns None. Once it is asked for, the sockets of
    /// workers that send messages are read by that host thread too: a message then wakes the
    /// host directly, not the supervisor thread first; `next_event` then waits on it too.
    pub fn event_fd(&self) -> RawFd {
        self.shared.host.fd(&self.shared.events)
    }

    /// Stops every worker gracefully, killing what is left after `timeout`, and returns once
    /// all are reaped and every descriptor the loop opened is closed. It may be called again,
    /// from any thread, while a stop is under way: a shorter timeout then brings the kill
    /// forward (a second Ctrl-C), and every caller returns when the loop has ended.
    pub fn stop(&self, timeout: Duration) -> Result<()> {
        self.begin_stop(timeout);
        let thread = self.thread.lock().unwrap().take();
        if let Some(thread) = thread {
            return thread
                .join()
                .map_err(|_| Error::io("supervisor thread", std::io::Error::other("it panicked")));
        }
        let (lock, cv) = &self.shared.done;
        let _done = cv.wait_while(lock.lock().unwrap(), |done| !*done).unwrap();
        Ok(())
    }

    /// Asks for the stop `stop` makes, and returns at once: the events end (`next_event`
    /// returns None) once every worker is reaped, and `stop` then returns at once. Calling
    /// it again with a shorter timeout brings the kill forward.
    pub fn begin_stop(&self, timeout: Duration) {
        self.signals.note_stop();
        if !self.shared.stopped.load(Ordering::Acquire) {
            self.shared
                .cmds
                .lock()
                .unwrap()
                .push_back(Command::Stop(timeout));
            self.shared.waker.wake();
        }
    }

    /// The stop a stop signal begins (`on_signal`): after `Config::drain_delay`, during which
    /// `/readyz` fails and everything else goes on, so that a load balancer stops sending
    /// before the listeners close; without a delay, `begin_stop`.
    pub(crate) fn begin_drain(&self, timeout: Duration) {
        if self.drain_delay.is_zero() {
            return self.begin_stop(timeout);
        }
        self.signals.note_stop();
        if !self.shared.stopped.load(Ordering::Acquire) {
            self.shared
                .cmds
                .lock()
                .unwrap()
                .push_back(Command::Drain(timeout));
            self.shared.waker.wake();
        }
    }

    /// Where `/metrics`, `/healthz` and `/readyz` are served, with the port the system chose
    /// for port 0; None without `Config::metrics`.
    pub fn metrics_addr(&self) -> Option<&ListenAddr> {
        self.metrics.as_ref()
    }

    /// The grace a stopping worker gets before SIGKILL (`Config::kill_timeout`); `Drop` and
    /// a SIGINT/SIGTERM through `on_signal` stop with it.
    pub fn kill_timeout(&self) -> Duration {
        self.kill_timeout
    }

    pub(crate) fn signal_state(&self) -> &SignalState {
        &self.signals
    }

    /// Each listener's name and actual address (with the port the system chose for port 0).
    pub fn listeners(&self) -> &[(String, ListenAddr)] {
        &self.shared.bound
    }

    /// True once the loop has ended (after `stop`, or if it failed).
    pub fn is_stopped(&self) -> bool {
        self.shared.stopped.load(Ordering::Acquire)
    }
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        let _ = self.stop(self.kill_timeout);
    }
}
