//! The main thread's loop: signals in, API calls out, events printed. Every decision about
//! workers, and what each signal means, is the core's; this only translates.

use std::collections::HashMap;

use rcluster_core::{signal_name, Event, SignalAction, Supervisor, EXIT_AFTER_SIGNAL_STOP};

use crate::log::EventLog;
use crate::signals::{self, SignalFd};

/// Exit status when the cluster finished cleanly on its own.
pub const EXIT_OK: i32 = 0;
/// Exit status when the cluster went down on its own with failures.
pub const EXIT_FAILED: i32 = 1;
/// Most events handled per turn of the main loop: under a flood of messages the queue is never
/// empty, and a signal must still be read within a turn.
const EVENTS_PER_TURN: usize = 256;

pub struct Runner {
    sup: Supervisor,
    sigfd: SignalFd,
    log: EventLog,
    /// Whether the latest exit of each slot was a failure.
    failed: HashMap<u32, bool>,
    gave_up: bool,
    /// Reaps adopted orphans on SIGCHLD (PID 1, `--subreaper`).
    reaper: bool,
    /// `--drain-delay`, for the log.
    pub drain_delay: Option<std::time::Duration>,
}

impl Runner {
    pub fn new(sup: Supervisor, sigfd: SignalFd, reaper: bool) -> Runner {
        Runner {
            sup,
            sigfd,
            log: EventLog::default(),
            failed: HashMap::new(),
            gave_up: false,
            reaper,
            drain_delay: None,
        }
    }

    /// Runs until the supervisor has stopped; returns the process exit status.
    pub fn run(mut self) -> i32 {
        loop {
            let ready = match signals::poll_readable(&[self.sigfd.raw(), self.sup.event_fd()]) {
                Ok(r) => r,
                Err(e) => {
                    self.log.note(&format!("poll failed: {e}; stopping"));
                    return self.finish();
                }
            };
            if ready[0] {
                self.take_signals();
            }
            if ready[1] {
                for _ in 0..EVENTS_PER_TURN {
                    let Some(ev) = self.sup.try_next_event() else {
                        break;
                    };
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
        if sig == libc::SIGCHLD {
            return self.reap_orphans();
        }
        let name = signal_name(sig);
        let note = match self.sup.on_signal(sig) {
            Ok(SignalAction::Stop { kill_timeout }) => format!(
                "{name}: stopping{} (kill timeout {}; send again to kill now)",
                match self.drain_delay {
                    Some(d) if !d.is_zero() => format!(" after draining {}", crate::log::human(d)),
                    _ => String::new(),
                },
                crate::log::human(kill_timeout)
            ),
            Ok(SignalAction::Kill) => format!("{name} again: killing the workers now"),
            Ok(SignalAction::Reload { generation }) => {
                format!("{name}: reloading to gen {generation}")
            }
            Ok(SignalAction::Scale { workers }) => format!(
                "{name}: scaling to {}",
                crate::log::count(workers, "worker")
            ),
            Ok(SignalAction::Ignored(why)) => format!("{name} ignored: {why}"),
            Err(e) => format!("{name} refused: {e}"),
        };
        self.log.note(&note);
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
            Event::AllDown => self.sup.begin_stop(self.sup.kill_timeout()),
            _ => {}
        }
    }

    fn reap_orphans(&mut self) {
        if let Err(e) = rcluster_core::reap_orphans() {
            self.log
                .note(&format!("reaping orphaned processes failed: {e}"));
        }
    }

    fn finish(mut self) -> i32 {
        // Returns at once when the loop has ended; otherwise (poll failed) it stops it first.
        let _ = self.sup.stop(self.sup.kill_timeout());
        while let Some(ev) = self.sup.try_next_event() {
            self.on_event(ev);
        }
        if self.reaper {
            self.reap_orphans();
        }
        self.log.flush();
        if self.sup.stop_signal().is_some() {
            EXIT_AFTER_SIGNAL_STOP
        } else if self.gave_up || self.failed.values().any(|&f| f) {
            EXIT_FAILED
        } else {
            EXIT_OK
        }
    }
}
