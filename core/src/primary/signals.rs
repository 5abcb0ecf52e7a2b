//! What each process signal means to a cluster, decided once for every host.
//!
//! The core installs no signal handler (the host owns signals): the `rcluster` command reads
//! them from a signalfd, the C helper too, Node from `process.on` listeners, Python from
//! `signal.signal` handlers. Each of them only hands the signal number to
//! [`Supervisor::on_signal`], which applies the one policy below and says what it did, so
//! that the host can log it. Nothing here blocks for longer than a command round trip to the
//! loop: a stop is only asked for, and ends when the event queue does.

use std::sync::atomic::{AtomicBool, AtomicI32, Ordering};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::primary::supervisor::Supervisor;

/// The signals [`Supervisor::on_signal`] gives a meaning to: SIGINT and SIGTERM stop
/// gracefully (a second one kills the workers now), SIGHUP reloads, SIGTTIN and SIGTTOU add
/// or remove one worker.
pub const HANDLED_SIGNALS: [i32; 5] = [
    libc::SIGINT,
    libc::SIGTERM,
    libc::SIGHUP,
    libc::SIGTTIN,
    libc::SIGTTOU,
];

/// The exit status of a program that lives for its cluster once the cluster has stopped
/// after a SIGINT/SIGTERM: 0. The operator asked for the stop, so it is a success, as for
/// systemd (`SuccessExitStatus` need not list 143) and for `docker stop` (no error status).
/// A host that goes on after the stop (a Node or Python program) just ends normally.
pub const EXIT_AFTER_SIGNAL_STOP: i32 = 0;

/// What [`Supervisor::on_signal`] did with a signal.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SignalAction {
    /// The first SIGINT/SIGTERM: a graceful stop began, with `kill_timeout` as the grace.
    /// Keep taking events until there are none left (`next_event` returns None), then end
    /// with [`EXIT_AFTER_SIGNAL_STOP`]; `stop` returns at once by then.
    Stop { kill_timeout: Duration },
    /// A second SIGINT/SIGTERM while stopping: the workers left are killed now.
    Kill,
    /// SIGHUP: a rolling reload to `generation` began (or was under way already).
    Reload { generation: u32 },
    /// SIGTTIN/SIGTTOU: the cluster now wants `workers` workers.
    Scale { workers: usize },
    /// Nothing was done, for the reason given (meant for the host's log).
    Ignored(&'static str),
}

/// Per-supervisor state of the policy: whether a stop is under way and what started it.
#[derive(Debug, Default)]
pub(crate) struct SignalState {
    /// A stop was asked for, by a signal or through the API.
    stopping: AtomicBool,
    /// A SIGINT/SIGTERM during the stop brought the kill forward.
    killing: AtomicBool,
    /// The signal that started the stop; 0 when none did.
    stopped_by: AtomicI32,
}

impl SignalState {
    /// Notes a stop asked for through the API: a SIGINT/SIGTERM from then on kills now.
    pub(crate) fn note_stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }
}

impl Supervisor {
    /// Applies rcluster's signal mapping to `signo`, a signal the host received; the host
    /// only forwards signal numbers, from any thread (never from a signal handler: this
    /// takes locks). SIGINT/SIGTERM begin a graceful stop (returns at once); a second one
    /// during the stop kills the workers now; SIGHUP starts a rolling reload; SIGTTIN and
    /// SIGTTOU scale by one within `1..=MAX_WORKERS`. During a stop everything but
    /// SIGINT/SIGTERM is ignored. An error only when the loop refuses for another reason.
    pub fn on_signal(&self, signo: i32) -> Result<SignalAction> {
        let state = self.signal_state();
        match signo {
            libc::SIGINT | libc::SIGTERM => Ok(self.on_stop_signal(signo)),
            _ if !HANDLED_SIGNALS.contains(&signo) => Ok(SignalAction::Ignored(
                "not one of the signals rcluster handles",
            )),
            _ if state.stopping.load(Ordering::Acquire) || self.is_stopped() => {
                Ok(SignalAction::Ignored("the supervisor is stopping"))
            }
            libc::SIGHUP => stopping_is_ignored(
                self.reload()
                    .map(|generation| SignalAction::Reload { generation }),
            ),
            _ => {
                let delta = if signo == libc::SIGTTIN { 1 } else { -1 };
                stopping_is_ignored(self.scale_step(delta))
            }
        }
    }

    /// True once a stop was asked for (by a signal or through the API), before and after
    /// the loop has ended.
    pub fn is_stopping(&self) -> bool {
        self.signal_state().stopping.load(Ordering::Acquire) || self.is_stopped()
    }

    /// The signal whose delivery started the stop, if one did (for the host's exit status).
    pub fn stop_signal(&self) -> Option<i32> {
        match self.signal_state().stopped_by.load(Ordering::Acquire) {
            0 => None,
            s => Some(s),
        }
    }

    fn on_stop_signal(&self, signo: i32) -> SignalAction {
        let state = self.signal_state();
        if self.is_stopped() {
            return SignalAction::Ignored("the supervisor has stopped");
        }
        if !state.stopping.swap(true, Ordering::AcqRel) {
            state.stopped_by.store(signo, Ordering::Release);
            let kill_timeout = self.kill_timeout();
            self.begin_drain(kill_timeout);
            return SignalAction::Stop { kill_timeout };
        }
        // A stop is under way (asked for by an earlier signal or through the API): bring the
        // kill forward, once; later signals change nothing.
        if state.killing.swap(true, Ordering::AcqRel) {
            return SignalAction::Ignored("the workers are being killed already");
        }
        self.begin_stop(Duration::ZERO);
        SignalAction::Kill
    }

    fn scale_step(&self, delta: isize) -> Result<SignalAction> {
        let (before, after) = self.scale_by(delta)?;
        if before == after {
            return Ok(SignalAction::Ignored(if delta < 0 {
                "already at 1 worker"
            } else {
                "already at MAX_WORKERS workers"
            }));
        }
        Ok(SignalAction::Scale { workers: after })
    }
}

/// A reload or scale refused because the loop is stopping is not an error for a signal.
fn stopping_is_ignored(r: Result<SignalAction>) -> Result<SignalAction> {
    match r {
        Err(Error::Stopped) => Ok(SignalAction::Ignored("the supervisor is stopping")),
        other => other,
    }
}

/// The conventional name of a handled signal ("SIGTERM"), or "signal" for any other.
pub fn signal_name(signo: i32) -> &'static str {
    match signo {
        libc::SIGINT => "SIGINT",
        libc::SIGTERM => "SIGTERM",
        libc::SIGHUP => "SIGHUP",
        libc::SIGTTIN => "SIGTTIN",
        libc::SIGTTOU => "SIGTTOU",
        _ => "signal",
    }
}
