//! The main thread's loop: signals in, API calls out, events printed. Every decision about
//! workers is the core's; this only translates.

use std::collections::HashMap;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use rcluster_core::{Event, Supervisor};

use crate::log::EventLog;
use crate::signals::{self, SignalFd};

/// Exit status after a stop asked for by a signal, or a cluster that finished cleanly.
pub const EXIT_OK: i32 = 0;
/// Exit status when the cluster went down on its own with failures.
pub const EXIT_FAILED: i32 = 1;

struct Stopping {
    thread: JoinHandle<()>,
    by_signal: bool,
    forced: bool,
}

pub struct Runner {
    sup: Arc<Supervisor>,
    sigfd: SignalFd,
    log: EventLog,
    kill_timeout: Duration,
    workers: usize,
    stopping: Option<Stopping>,
    /// Whether the latest exit of each slot was a failure.
    failed: HashMap<u32, bool>,
    gave_up: bool,
}

impl Runner {
    pub fn new(sup: Supervisor, sigfd: SignalFd, kill_timeout: Duration, workers: usize) -> Runner {
        Runner {
            sup: Arc::new(sup),
            sigfd,
            log: EventLog::default(),
            kill_timeout,
            workers,
            stopping: None,
            failed: HashMap::new(),
            gave_up: false,
        }
    }

    /// Runs until the supervisor has stopped; returns the process exit status.
    pub fn run(mut self) -> i32 {
        loop {
            let ready = match signals::poll_readable(&[self.sigfd.raw(), self.sup.event_fd()]) {
                Ok(r) => r,
                Err(e) => {
                    self.log.note(&format!("poll failed: {e}; stopping"));
                    self.begin_stop(false);
                    return self.finish();
                }
            };
            if ready[0] {
                self.take_signals();
            }
            if ready[1] {
                while let Some(ev) = self.sup.try_next_event() {
                    self.on_event(ev);
                }
                // The queue is closed and drained: the loop thread is ending.
                if self.sup.is_stopped() {
                    return self.finish();
                }
            }
        }
    }

    fn take_signals(&mut self) {
        loop {
            match self.sigfd.try_read() {
                Ok(Some(sig)) => self.on_signal(sig),
                Ok(None) => return,
                Err(e) => {
                    self.log.note(&format!("reading signals failed: {e}"));
                    return;
                }
            }
        }
    }

    fn on_signal(&mut self, sig: i32) {
        let name = signals::name(sig);
        match sig {
            libc::SIGINT | libc::SIGTERM if self.stopping.is_some() => self.force_stop(name),
            libc::SIGINT | libc::SIGTERM => {
                let grace = crate::log::human(self.kill_timeout);
                self.log.note(&format!(
                    "{name}: stopping (kill timeout {grace}; send again to kill now)"
                ));
                self.begin_stop(true);
            }
            _ if self.stopping.is_some() => self.log.note(&format!("{name} ignored: stopping")),
            libc::SIGHUP => match self.sup.reload() {
                Ok(generation) => self
                    .log
                    .note(&format!("{name}: reloading to gen {generation}")),
                Err(e) => self.log.note(&format!("{name}: reload refused: {e}")),
            },
            libc::SIGTTIN => self.scale_to(self.workers + 1, name),
            libc::SIGTTOU if self.workers > 1 => self.scale_to(self.workers - 1, name),
            libc::SIGTTOU => self
                .log
                .note(&format!("{name} ignored: already at 1 worker")),
            _ => {}
        }
    }

    fn scale_to(&mut self, n: usize, name: &str) {
        match self.sup.scale(n) {
            Ok(()) => {
                self.workers = n;
                self.log.note(&format!(
                    "{name}: scaling to {}",
                    crate::log::count(n, "worker")
                ));
            }
            Err(e) => self.log.note(&format!("{name}: scale refused: {e}")),
        }
    }

    /// `stop` blocks until every worker is reaped, so it runs on its own thread while this one
    /// keeps printing events and watching for a second signal.
    fn begin_stop(&mut self, by_signal: bool) {
        if self.stopping.is_some() {
            return;
        }
        let sup = Arc::clone(&self.sup);
        let timeout = self.kill_timeout;
        let thread = std::thread::spawn(move || {
            let _ = sup.stop(timeout);
        });
        self.stopping = Some(Stopping {
            thread,
            by_signal,
            forced: false,
        });
    }

    /// A second stop with no grace brings the kill forward; it blocks like the first, so it
    /// runs on a thread of its own too.
    fn force_stop(&mut self, name: &str) {
        let Some(s) = self.stopping.as_mut() else {
            return;
        };
        if s.forced {
            return;
        }
        s.forced = true;
        self.log
            .note(&format!("{name} again: killing the workers now"));
        let sup = Arc::clone(&self.sup);
        std::thread::spawn(move || {
            let _ = sup.stop(Duration::ZERO);
        });
    }

    fn on_event(&mut self, ev: Event) {
        self.log.print(&ev);
        match ev {
            Event::Exit { id, info, .. } => {
                self.failed.insert(id, info.reason.is_failure());
            }
            Event::SpawnFailed { id, .. } => {
                self.failed.insert(id, true);
            }
            Event::GaveUp { .. } => self.gave_up = true,
            Event::Scaled { workers } => self.workers = workers,
            Event::AllDown if self.stopping.is_none() => self.begin_stop(false),
            _ => {}
        }
    }

    fn finish(mut self) -> i32 {
        let by_signal = match self.stopping.take() {
            Some(s) => {
                let _ = s.thread.join();
                s.by_signal
            }
            None => {
                // The loop ended without being asked to (it should not); reap what is left.
                let _ = self.sup.stop(self.kill_timeout);
                false
            }
        };
        while let Some(ev) = self.sup.try_next_event() {
            self.on_event(ev);
        }
        if by_signal || !(self.gave_up || self.failed.values().any(|&f| f)) {
            EXIT_OK
        } else {
            EXIT_FAILED
        }
    }
}
