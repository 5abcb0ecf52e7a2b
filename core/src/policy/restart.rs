//! Restart decisions: pure logic, no processes, driven by an injectable clock and random source.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use crate::config::{RestartMode, RestartPolicy};

/// Why a worker exited.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ExitReason {
    /// It exited or died on its own with a failure (non-zero code or a signal).
    Crashed,
    /// It exited on its own with code 0.
    Exited,
    /// Stopped on request: `restart_worker`, `scale` down, or replaced by `reload`.
    Requested,
    /// It did not become ready within `ready_timeout`.
    ReadyTimeout,
    /// It sent nothing within `heartbeat_timeout`.
    Heartbeat,
    /// It used more memory than allowed.
    Memory,
    /// It broke the IPC protocol.
    ProtocolError,
    /// The supervisor is stopping.
    Shutdown,
    /// It exited on its own with a code listed in `no_restart_codes`: it asked not to be
    /// restarted (e.g. it cannot boot). A requested end, not a failure.
    NoRestart,
    /// Replaced after serving `max_requests` connections (plus its jitter). Not a failure.
    MaxRequests,
}

impl ExitReason {
    pub fn as_str(self) -> &'static str {
        match self {
            ExitReason::Crashed => "crashed",
            ExitReason::Exited => "exited",
            ExitReason::Requested => "requested",
            ExitReason::ReadyTimeout => "ready_timeout",
            ExitReason::Heartbeat => "heartbeat",
            ExitReason::Memory => "memory",
            ExitReason::ProtocolError => "protocol_error",
            ExitReason::Shutdown => "shutdown",
            ExitReason::NoRestart => "no_restart",
            ExitReason::MaxRequests => "max_requests",
        }
    }

    /// Exits that the restart policy treats as failures.
    pub fn is_failure(self) -> bool {
        matches!(
            self,
            ExitReason::Crashed
                | ExitReason::ReadyTimeout
                | ExitReason::Heartbeat
                | ExitReason::Memory
                | ExitReason::ProtocolError
        )
    }
}

impl std::fmt::Display for ExitReason {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

/// The clock the supervisor reads; tests drive a manual one.
pub trait Clock: Send {
    fn now(&self) -> Instant;
}

pub struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }
}

/// A source of jitter in [0, 1).
pub trait Jitter: Send {
    fn next(&mut self) -> f64;
}

/// xorshift64*, seeded from the clock and pid: jitter needs spread, not secrecy.
pub struct XorShift(u64);

impl XorShift {
    pub fn seeded() -> XorShift {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default();
        XorShift((t.as_nanos() as u64) ^ (u64::from(std::process::id()) << 32) | 1)
    }
}

impl Jitter for XorShift {
    fn next(&mut self) -> f64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        (self.0.wrapping_mul(0x2545_F491_4F6C_DD1D) >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// What to do with a slot whose worker just exited.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Start it again after this delay; `attempt` counts consecutive failures.
    Restart { delay: Duration, attempt: u32 },
    /// Leave it stopped: policy or exit code says so.
    Stay,
    /// Too many restarts within the window: stop trying and say so.
    GiveUp { restarts: u32 },
}

/// Per-slot memory of past exits.
#[derive(Debug, Default, Clone)]
pub struct History {
    restarts: VecDeque<Instant>,
    consecutive_failures: u32,
}

impl History {
    /// Decides about an exit that happened at `now` after `uptime`.
    pub fn decide(
        &mut self,
        policy: &RestartPolicy,
        reason: ExitReason,
        code: Option<i32>,
        uptime: Duration,
        now: Instant,
        jitter: &mut dyn Jitter,
    ) -> Decision {
        if uptime >= policy.min_uptime {
            self.consecutive_failures = 0;
        }
        if reason == ExitReason::NoRestart
            || code.is_some_and(|c| policy.no_restart_codes.contains(&c))
        {
            return Decision::Stay;
        }
        let wanted = match policy.mode {
            RestartMode::Always => true,
            RestartMode::OnFailure => reason.is_failure(),
            RestartMode::Never => false,
        };
        if !wanted {
            return Decision::Stay;
        }
        while let Some(&t) = self.restarts.front() {
            if now.duration_since(t) >= policy.window {
                self.restarts.pop_front();
            } else {
                break;
            }
        }
        if self.restarts.len() as u32 >= policy.max_restarts {
            return Decision::GiveUp {
                restarts: self.restarts.len() as u32,
            };
        }
        self.restarts.push_back(now);
        let delay = self.backoff(policy, jitter);
        self.consecutive_failures += 1;
        Decision::Restart {
            delay,
            attempt: self.consecutive_failures,
        }
    }

    fn backoff(&self, policy: &RestartPolicy, jitter: &mut dyn Jitter) -> Duration {
        let exp = policy
            .backoff_multiplier
            .powi(self.consecutive_failures.min(64) as i32);
        let base =
            (policy.backoff_initial.as_secs_f64() * exp).min(policy.backoff_max.as_secs_f64());
        let spread = 1.0 + policy.jitter * (2.0 * jitter.next() - 1.0);
        Duration::from_secs_f64((base * spread).clamp(0.0, policy.backoff_max.as_secs_f64()))
    }

    /// Forgets past failures (after an explicit restart or reload).
    pub fn reset(&mut self) {
        self.restarts.clear();
        self.consecutive_failures = 0;
    }

    pub fn restarts_in_window(&self) -> u32 {
        self.restarts.len() as u32
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(f64);
    impl Jitter for Fixed {
        fn next(&mut self) -> f64 {
            self.0
        }
    }

    /// One slot's history driven by a manual clock: each exit happens `uptime` after the last.
    struct Sim {
        now: Instant,
        policy: RestartPolicy,
        history: History,
        jitter: Fixed,
    }

    impl Sim {
        fn new(policy: RestartPolicy) -> Sim {
            Sim {
                now: Instant::now(),
                policy,
                history: History::default(),
                jitter: Fixed(0.5),
            }
        }

        fn exit(&mut self, reason: ExitReason, code: Option<i32>, uptime: Duration) -> Decision {
            self.now += uptime;
            self.history.decide(
                &self.policy,
                reason,
                code,
                uptime,
                self.now,
                &mut self.jitter,
            )
        }

        fn crash(&mut self, uptime: Duration) -> Decision {
            self.exit(ExitReason::Crashed, Some(1), uptime)
        }

        fn wait(&mut self, d: Duration) {
            self.now += d;
        }
    }

    const SHORT: Duration = Duration::from_millis(10);

    fn policy() -> RestartPolicy {
        RestartPolicy {
            backoff_initial: Duration::from_millis(100),
            backoff_multiplier: 2.0,
            backoff_max: Duration::from_secs(1),
            jitter: 0.0,
            min_uptime: Duration::from_secs(5),
            max_restarts: 5,
            window: Duration::from_secs(60),
            ..RestartPolicy::default()
        }
    }

    fn delay_ms(d: Decision) -> u128 {
        match d {
            Decision::Restart { delay, .. } => delay.as_millis(),
            other => panic!("expected a restart, got {other:?}"),
        }
    }

    #[test]
    fn backoff_doubles_up_to_the_max() {
        let mut sim = Sim::new(RestartPolicy {
            max_restarts: 100,
            ..policy()
        });
        let got: Vec<u128> = (0..6).map(|_| delay_ms(sim.crash(SHORT))).collect();
        assert_eq!(got, vec![100, 200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn backoff_resets_after_min_uptime() {
        let mut sim = Sim::new(policy());
        for _ in 0..3 {
            sim.crash(SHORT);
        }
        assert_eq!(delay_ms(sim.crash(Duration::from_secs(6))), 100);
    }

    #[test]
    fn too_many_restarts_in_the_window_gives_up() {
        let mut sim = Sim::new(policy());
        for _ in 0..5 {
            delay_ms(sim.crash(SHORT));
        }
        assert_eq!(sim.crash(SHORT), Decision::GiveUp { restarts: 5 });
    }

    #[test]
    fn restarts_older_than_the_window_are_forgotten() {
        let mut sim = Sim::new(policy());
        for _ in 0..5 {
            sim.crash(SHORT);
        }
        sim.wait(Duration::from_secs(61));
        assert!(matches!(sim.crash(SHORT), Decision::Restart { .. }));
    }

    #[test]
    fn no_restart_exit_code_is_honoured() {
        let mut sim = Sim::new(RestartPolicy {
            no_restart_codes: vec![3],
            ..policy()
        });
        assert_eq!(
            sim.exit(ExitReason::NoRestart, Some(3), SHORT),
            Decision::Stay
        );
        assert!(!ExitReason::NoRestart.is_failure());
        assert!(matches!(
            sim.exit(ExitReason::Crashed, Some(4), SHORT),
            Decision::Restart { .. }
        ));
    }

    #[test]
    fn on_failure_does_not_restart_a_clean_exit() {
        let mut sim = Sim::new(RestartPolicy {
            mode: RestartMode::OnFailure,
            ..policy()
        });
        assert_eq!(sim.exit(ExitReason::Exited, Some(0), SHORT), Decision::Stay);
        assert!(matches!(
            sim.exit(ExitReason::Heartbeat, None, SHORT),
            Decision::Restart { .. }
        ));
    }

    #[test]
    fn never_does_not_restart() {
        let mut sim = Sim::new(RestartPolicy {
            mode: RestartMode::Never,
            ..policy()
        });
        assert_eq!(sim.crash(SHORT), Decision::Stay);
    }

    #[test]
    fn jitter_spreads_the_delay_within_bounds() {
        let p = RestartPolicy {
            jitter: 0.5,
            ..policy()
        };
        let mut low = Sim::new(p.clone());
        low.jitter = Fixed(0.0);
        let mut high = Sim::new(p);
        high.jitter = Fixed(0.999);
        assert_eq!(delay_ms(low.crash(SHORT)), 50);
        assert_eq!(delay_ms(high.crash(SHORT)), 149);
        let mut rng = XorShift::seeded();
        assert!((0..1000)
            .map(|_| rng.next())
            .all(|x| (0.0..1.0).contains(&x)));
    }
}
