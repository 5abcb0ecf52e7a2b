//! How the cluster is seen from outside, without a daemon: the service manager's
//! notifications (`systemd`) and, opt-in, health, readiness and Prometheus metrics over HTTP
//! (`http`, `render`), all served by the loop itself, so that a loop that hangs fails its
//! health check and stops feeding the watchdog. The loop calls in when events go out
//! (`emit`), for its timers (`ops_timers`), and for the descriptors of the HTTP server
//! (`ops_ready`).

pub(crate) mod http;
pub(crate) mod process;
mod render;
pub(crate) mod systemd;

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use super::Primary;
use crate::error::Result;
use crate::events::{Event, WorkerState};
use crate::policy::ExitReason;
use http::{Answer, Route, Server};
use systemd::{Systemd, Turn};

/// Epoll tokens of the HTTP server: this bit, plus 0 for its listener and 1.. for clients.
pub(super) const OPS: u64 = 1 << 59;

/// The loop's state for being seen from outside.
#[derive(Default)]
pub(crate) struct Ops {
    systemd: Option<Systemd>,
    http: Option<Server>,
    counters: Counters,
    /// A stop signal came with `drain_delay`: when the stop begins, and its kill timeout.
    drain: Option<(Instant, Duration)>,
    /// When the kernel's turns are next looked at (see `harvest_turns_from`).
    harvest_at: Option<Instant>,
    /// Something can read the counters (the HTTP server, or the control socket's `metrics`
    /// verb): without a reader, messages and connections pass uncounted.
    counting: bool,
}

/// How often the connections the kernel's turns give workers are added up for
/// `max_requests`: a worker may overshoot its limit by what it accepts in this time.
const TURNS_PERIOD: Duration = Duration::from_millis(100);

/// What the metrics count, as the loop sees it happen.
#[derive(Default)]
struct Counters {
    /// Exits of each slot's workers by reason (a stop's own are not counted).
    restarts: BTreeMap<(u32, &'static str), u64>,
    /// Connections the primary handed to each slot, by listener index.
    dispatched: BTreeMap<(usize, u32), u64>,
    reloads_done: u64,
    reloads_failed: u64,
    reload_started: Option<Instant>,
    last_reload: Option<Duration>,
}

impl Ops {
    /// What the environment asks for (a service manager's socket); a problem with it is
    /// returned as a warning for the host, and the cluster runs anyway.
    pub fn from_env(now: Instant) -> (Ops, Option<Event>) {
        let (systemd, warning) = match Systemd::from_env(now) {
            Ok(s) => (s, None),
            Err(detail) => (None, Some(Event::Warning { detail })),
        };
        let ops = Ops {
            systemd,
            ..Ops::default()
        };
        (ops, warning)
    }

    /// When the next timer of this part is due.
    pub fn next_at(&self) -> Option<Instant> {
        let sd = self.systemd.as_ref().and_then(Systemd::next_at);
        let http = self.http.as_ref().and_then(Server::next_deadline);
        let drain = self.drain.map(|(at, _)| at);
        [sd, http, drain, self.harvest_at]
            .into_iter()
            .flatten()
            .min()
    }

    /// The counters have a reader from now on (`/metrics` or the control socket).
    pub fn count(&mut self) {
        self.counting = true;
    }

    /// A connection from listener `listener` was handed to worker slot `slot`.
    pub fn dispatched(&mut self, listener: usize, slot: u32) {
        self.dispatched_n(listener, slot, 1);
    }

    /// `n` connections from listener `listener` went to worker slot `slot` (handed by the
    /// primary, or placed in the worker's own socket by the kernel's turns).
    pub fn dispatched_n(&mut self, listener: usize, slot: u32, n: u64) {
        if self.counting {
            let c = self
                .counters
                .dispatched
                .entry((listener, slot))
                .or_default();
            *c = c.saturating_add(n);
        }
    }

    /// From now on the kernel's turns are looked at every `TURNS_PERIOD` (for
    /// `max_requests`: connections workers accept themselves reach no other part of the loop).
    pub fn harvest_turns_from(&mut self, now: Instant) {
        self.harvest_at.get_or_insert(now + TURNS_PERIOD);
    }
}

impl Primary {
    /// Starts the HTTP server of `Config::metrics`, if one is asked for.
    pub(super) fn start_metrics(&mut self) -> Result<()> {
        if let Some(addr) = self.cfg.metrics.clone() {
            self.ops.http = Some(Server::bind(&addr, &self.epoll, OPS)?);
            self.ops.count();
        }
        Ok(())
    }

    /// The HTTP server's actual address (a port 0 resolved).
    pub(crate) fn metrics_addr(&self) -> Option<crate::sys::listen::ListenAddr> {
        self.ops.http.as_ref().map(|s| s.addr.clone())
    }

    /// Workers ready for work (not draining).
    fn ready_count(&self) -> usize {
        self.procs
            .values()
            .filter(|p| p.state == WorkerState::Ready && p.stopping.is_none())
            .count()
    }

    /// A stop is under way or about to begin (a drain).
    fn stopping(&self) -> bool {
        self.stop_deadline.is_some() || self.ops.drain.is_some()
    }

    /// Hands the events gathered so far to the host, after the outside has seen them.
    pub(super) fn emit(&mut self) {
        self.count_events();
        self.ops_after_turn();
        self.shared.events.push_all(&mut self.out);
    }

    fn count_events(&mut self) {
        // Only a scrape reads the counters: without a reader, events pass uncounted.
        if !self.ops.counting {
            return;
        }
        let c = &mut self.ops.counters;
        for ev in &self.out {
            match ev {
                Event::Exit { id, info, .. } if info.reason != ExitReason::Shutdown => {
                    *c.restarts.entry((*id, info.reason.as_str())).or_default() += 1;
                }
                Event::ReloadStarted { .. } => c.reload_started = Some(Instant::now()),
                Event::ReloadDone { .. } | Event::ReloadFailed { .. } => {
                    if matches!(ev, Event::ReloadDone { .. }) {
                        c.reloads_done += 1;
                    } else {
                        c.reloads_failed += 1;
                    }
                    if let Some(t) = c.reload_started.take() {
                        c.last_reload = Some(t.elapsed());
                    }
                }
                _ => {}
            }
        }
    }

    /// Tells the service manager what changed since the last events went out. Counting ready
    /// workers costs one pass over them, so it is done only after lifecycle events or a stop.
    fn ops_after_turn(&mut self) {
        let Some(sd) = self.ops.systemd.as_ref() else {
            return;
        };
        let lifecycle = self
            .out
            .iter()
            .any(|e| !matches!(e, Event::Message { .. } | Event::OutputDropped { .. }));
        let stopping = self.stopping();
        let stop_news = stopping && !sd.stopping_said();
        if !lifecycle && !stop_news {
            return;
        }
        let turn = Turn {
            events: &self.out,
            ready: self.ready_count(),
            desired: self.desired,
            generation: self.generation,
            stopping,
        };
        let mut warnings = Vec::new();
        if let Some(sd) = self.ops.systemd.as_mut() {
            sd.after_turn(&turn, &mut warnings);
        }
        self.out.append(&mut warnings);
    }

    /// Timers of this part that are due: the watchdog, HTTP clients out of time, the end of
    /// a drain.
    pub(super) fn ops_timers(&mut self, now: Instant) {
        if let Some(sd) = self.ops.systemd.as_mut() {
            sd.tick(now, &mut self.out);
        }
        if let Some(http) = self.ops.http.as_mut() {
            if http.next_deadline().is_some_and(|d| now >= d) {
                http.expire(&self.epoll, now);
            }
        }
        if self.ops.harvest_at.is_some_and(|at| now >= at) {
            self.ops.harvest_at = Some(now + TURNS_PERIOD);
            for key in self.harvest_turns() {
                self.count_request(key);
            }
        }
        if let Some((at, timeout)) = self.ops.drain {
            if now >= at {
                self.ops.drain = None;
                // A stop asked for during the drain has begun already.
                if self.stop_deadline.is_none() {
                    self.begin_stop(timeout);
                }
                self.changed = true;
            }
        }
    }

    /// A stop signal with `drain_delay`: `/readyz` fails from now on, and the stop begins
    /// when the delay is over (at once if another stop comes first).
    pub(super) fn begin_drain(&mut self, timeout: Duration) {
        if self.stop_deadline.is_some() || self.ops.drain.is_some() {
            return;
        }
        if self.cfg.drain_delay.is_zero() {
            return self.begin_stop(timeout);
        }
        self.ops.drain = Some((self.clock.now() + self.cfg.drain_delay, timeout));
    }

    /// A descriptor of the HTTP server is ready.
    pub(super) fn ops_ready(&mut self, token: u64, flags: u32) {
        let Some(http) = self.ops.http.as_mut() else {
            return;
        };
        let now = self.clock.now();
        let route = match http.owns(token) {
            Some(None) => return http.accept(&self.epoll, now),
            Some(Some(i)) if flags & libc::EPOLLOUT as u32 != 0 => {
                return http.writable(&self.epoll, i)
            }
            Some(Some(i)) => match http.readable(&self.epoll, i) {
                Some(route) => (i, route),
                None => return,
            },
            None => return,
        };
        let answer = self.answer(route.1);
        if let Some(http) = self.ops.http.as_mut() {
            http.respond(&self.epoll, route.0, answer);
        }
    }

    fn answer(&mut self, route: Route) -> Answer {
        const TEXT: &str = "text/plain; charset=utf-8";
        let plain = |status, body: &str| Answer {
            status,
            content_type: TEXT,
            body: body.to_string(),
        };
        match route {
            // Answered by the loop itself: a loop that hangs does not answer.
            Route::Health => plain(200, "ok\n"),
            Route::Ready => self.readiness(),
            Route::Metrics => Answer {
                status: 200,
                content_type: "text/plain; version=0.0.4; charset=utf-8",
                body: self.render_metrics(),
            },
            Route::NotFound => plain(404, "not found: try /metrics, /healthz or /readyz\n"),
            Route::BadMethod => plain(405, "only GET and HEAD\n"),
            Route::Bad => plain(400, "bad request\n"),
        }
    }

    fn readiness(&self) -> Answer {
        let (ready, min) = (self.ready_count(), self.cfg.ready_min);
        let (status, body) = if self.stopping() {
            (503, "not ready: stopping\n".to_string())
        } else if ready < min {
            (
                503,
                format!("not ready: {ready} workers ready, {min} needed\n"),
            )
        } else {
            (
                200,
                format!("ready: {ready}/{} workers ready\n", self.desired),
            )
        };
        Answer {
            status,
            content_type: "text/plain; charset=utf-8",
            body,
        }
    }

    /// Closes the HTTP server (the loop's last act).
    pub(super) fn close_metrics(&mut self) {
        if let Some(mut http) = self.ops.http.take() {
            http.close_all(&self.epoll);
        }
    }
}
