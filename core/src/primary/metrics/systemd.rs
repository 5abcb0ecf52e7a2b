//! What the loop tells a service manager (`NOTIFY_SOCKET`): ready once the first generation
//! is, reloading and ready again around each reload, stopping, a one-line status, and the
//! watchdog's keep-alive, sent by the loop itself so that a loop that hangs stops sending it.

use std::time::{Duration, Instant};

use crate::events::Event;
use crate::sys::notify::{self, Notifier};

pub(crate) struct Systemd {
    notifier: Notifier,
    ready_said: bool,
    stopping_said: bool,
    reloading: bool,
    status: String,
    /// How often `WATCHDOG=1` goes out (half the manager's timeout), and when next.
    watchdog: Option<(Duration, Instant)>,
    /// A send failed once and the host was told; later failures are not repeated.
    failed_said: bool,
}

/// What the loop knows about the cluster at the end of a turn.
pub(crate) struct Turn<'a> {
    pub events: &'a [Event],
    pub ready: usize,
    pub desired: usize,
    pub generation: u32,
    pub stopping: bool,
}

impl Systemd {
    /// From the environment the manager set; None when no manager listens. An unusable
    /// `NOTIFY_SOCKET` is an error the loop reports once.
    pub fn from_env(now: Instant) -> Result<Option<Systemd>, String> {
        let notifier = match Notifier::from_env() {
            Ok(Some(n)) => n,
            Ok(None) => return Ok(None),
            Err(e) => return Err(format!("not notifying the service manager: {e}")),
        };
        Ok(Some(Systemd {
            notifier,
            ready_said: false,
            stopping_said: false,
            reloading: false,
            status: String::new(),
            watchdog: notify::watchdog_interval().map(|every| (every / 2, now)),
            failed_said: false,
        }))
    }

    pub fn stopping_said(&self) -> bool {
        self.stopping_said
    }

    /// When the watchdog wants its next keep-alive.
    pub fn next_at(&self) -> Option<Instant> {
        self.watchdog.map(|(_, at)| at)
    }

    /// Sends the keep-alive when it is due.
    pub fn tick(&mut self, now: Instant, warnings: &mut Vec<Event>) {
        if let Some((every, at)) = self.watchdog {
            if now >= at {
                self.watchdog = Some((every, now + every));
                self.send("WATCHDOG=1", warnings);
            }
        }
    }

    /// Tells the manager what changed in this turn; `warnings` gets a send failure, once.
    pub fn after_turn(&mut self, turn: &Turn, warnings: &mut Vec<Event>) {
        for ev in turn.events {
            match ev {
                Event::ReloadStarted { generation } if !turn.stopping => {
                    self.reloading = true;
                    let msg = format!(
                        "RELOADING=1\nMONOTONIC_USEC={}\nSTATUS=reloading to generation {generation}",
                        notify::monotonic_usec()
                    );
                    self.status.clear();
                    self.send(&msg, warnings);
                }
                Event::ReloadDone { .. } | Event::ReloadFailed { .. } if self.reloading => {
                    self.reloading = false;
                    if self.ready_said && !turn.stopping {
                        self.send("READY=1", warnings);
                    }
                }
                _ => {}
            }
        }
        if turn.stopping && !self.stopping_said {
            self.stopping_said = true;
            self.status = "stopping".into();
            self.send("STOPPING=1\nSTATUS=stopping", warnings);
            return;
        }
        if turn.stopping {
            return;
        }
        let mut msg = String::new();
        if !self.ready_said && !self.reloading && turn.ready >= turn.desired {
            self.ready_said = true;
            msg.push_str("READY=1\n");
        }
        let status = format!(
            "{}/{} workers ready, generation {}{}",
            turn.ready,
            turn.desired,
            turn.generation,
            if self.reloading { ", reloading" } else { "" }
        );
        if status != self.status {
            msg.push_str("STATUS=");
            msg.push_str(&status);
            self.status = status;
        }
        if !msg.is_empty() {
            self.send(msg.trim_end(), warnings);
        }
    }

    fn send(&mut self, msg: &str, warnings: &mut Vec<Event>) {
        if let Err(e) = self.notifier.send(msg) {
            if !std::mem::replace(&mut self.failed_said, true) {
                warnings.push(Event::Warning {
                    detail: format!("notifying the service manager failed: {e}"),
                });
            }
        }
    }
}
