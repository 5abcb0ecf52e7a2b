//! Recycling: replacing a worker that used too much memory (`max_memory`) or served enough
//! connections (`max_requests`, spread by `max_requests_jitter` as gunicorn does), before it
//! becomes a problem. The loop replaces one slot at a time, the way a reload does; this file
//! decides which worker is due and in what order.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use super::{ExitReason, Jitter};

/// How often the loop reads the resident memory of every worker when `max_memory` is set.
/// One small `/proc` read per worker per period: a second is fine-grained enough for memory
/// that grows with load, and costs little even with thousands of workers.
pub const MEMORY_CHECK_PERIOD: Duration = Duration::from_secs(1);

/// The limits of the configuration, as the loop applies them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    /// Resident bytes above which a worker is replaced.
    pub max_memory: Option<u64>,
    /// Connections after which a worker is replaced (before jitter).
    pub max_requests: Option<u64>,
    /// Each worker's own limit is `max_requests + randint(0, max_requests_jitter)`.
    pub max_requests_jitter: u64,
}

impl Limits {
    /// The connection limit of a new worker: `max_requests` plus a random share of the
    /// jitter, so that workers started together (the first ones, a reload's) do not all
    /// reach their limit, and get replaced, at the same moment.
    pub fn request_limit(&self, jitter: &mut dyn Jitter) -> Option<u64> {
        let base = self.max_requests?;
        let spread = self.max_requests_jitter.saturating_add(1) as f64;
        // next() is in [0, 1): the product is in [0, jitter]; min() guards the rounding.
        let extra = ((jitter.next() * spread) as u64).min(self.max_requests_jitter);
        Some(base.saturating_add(extra))
    }

    /// Whether `rss` bytes are over `max_memory`.
    pub fn over_memory(&self, rss: u64) -> bool {
        self.max_memory.is_some_and(|m| rss > m)
    }

    /// Whether memory checks are due at all.
    pub fn checks_memory(&self) -> bool {
        self.max_memory.is_some()
    }
}

/// Whether a worker that has served `served` connections reached its `limit`.
pub fn served_enough(served: u64, limit: Option<u64>) -> bool {
    limit.is_some_and(|l| served >= l)
}

/// The worker processes waiting to be replaced, oldest request first, each once; and when
/// the next memory check is due.
#[derive(Debug, Default)]
pub struct Queue {
    due: VecDeque<(u64, ExitReason)>,
    next_memory_check: Option<Instant>,
    /// The warning that some connections are not counted was given.
    uncounted_said: bool,
}

impl Queue {
    /// Queues worker `key` for replacement; false when it already waits (the first reason
    /// stands: a worker over both limits is replaced once).
    pub fn push(&mut self, key: u64, reason: ExitReason) -> bool {
        if self.due.iter().any(|(k, _)| *k == key) {
            return false;
        }
        self.due.push_back((key, reason));
        true
    }

    /// The next worker to replace for which `still_there` holds; the ones for which it does
    /// not (gone, or replaced by a reload meanwhile) are dropped on the way.
    pub fn pop(&mut self, mut still_there: impl FnMut(u64) -> bool) -> Option<(u64, ExitReason)> {
        while let Some((key, reason)) = self.due.pop_front() {
            if still_there(key) {
                return Some((key, reason));
            }
        }
        None
    }

    pub fn contains(&self, key: u64) -> bool {
        self.due.iter().any(|(k, _)| *k == key)
    }

    /// True the first time only: whether to say that some connections are not counted.
    pub fn first_uncounted(&mut self) -> bool {
        !std::mem::replace(&mut self.uncounted_said, true)
    }

    /// Forgets every waiting worker (the supervisor is stopping).
    pub fn clear(&mut self) {
        self.due.clear();
    }

    /// Whether the memory of the workers should be read now; if so, the next check is
    /// planned one period later.
    pub fn memory_check_due(&mut self, limits: &Limits, now: Instant) -> bool {
        if !limits.checks_memory() {
            return false;
        }
        match self.next_memory_check {
            Some(t) if now < t => false,
            _ => {
                self.next_memory_check = Some(now + MEMORY_CHECK_PERIOD);
                true
            }
        }
    }

    /// When the loop must wake for the next memory check.
    pub fn next_check(&self) -> Option<Instant> {
        self.next_memory_check
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fixed(Vec<f64>);

    impl Jitter for Fixed {
        fn next(&mut self) -> f64 {
            self.0.remove(0)
        }
    }

    fn limits(max_requests: Option<u64>, jitter: u64) -> Limits {
        Limits {
            max_memory: None,
            max_requests,
            max_requests_jitter: jitter,
        }
    }

    #[test]
    fn request_limit_is_max_requests_plus_up_to_the_jitter_inclusive() {
        let l = limits(Some(100), 10);
        let mut j = Fixed(vec![0.0, 0.5, 0.999_999]);
        assert_eq!(l.request_limit(&mut j), Some(100));
        assert_eq!(l.request_limit(&mut j), Some(105));
        assert_eq!(l.request_limit(&mut j), Some(110));
    }

    #[test]
    fn request_limit_without_jitter_is_max_requests_and_none_without_max_requests() {
        assert_eq!(
            limits(Some(7), 0).request_limit(&mut Fixed(vec![0.9])),
            Some(7)
        );
        assert_eq!(limits(None, 5).request_limit(&mut Fixed(vec![])), None);
        let huge = limits(Some(u64::MAX), u64::MAX);
        assert_eq!(huge.request_limit(&mut Fixed(vec![0.9])), Some(u64::MAX));
    }

    #[test]
    fn jitter_spreads_the_limits_of_workers_started_together() {
        let l = limits(Some(1000), 100);
        let mut rng = crate::policy::XorShift::seeded();
        let got: std::collections::BTreeSet<u64> = (0..50)
            .map(|_| l.request_limit(&mut rng).unwrap())
            .collect();
        assert!(got.iter().all(|n| (1000..=1100).contains(n)), "{got:?}");
        assert!(
            got.len() > 10,
            "50 limits should not collide this much: {got:?}"
        );
    }

    #[test]
    fn a_worker_is_done_once_it_served_its_limit_and_never_without_one() {
        assert!(!served_enough(9, Some(10)));
        assert!(served_enough(10, Some(10)));
        assert!(served_enough(11, Some(10)));
        assert!(!served_enough(u64::MAX, None));
    }

    #[test]
    fn memory_is_over_only_strictly_above_the_limit() {
        let l = Limits {
            max_memory: Some(1000),
            ..Limits::default()
        };
        assert!(!l.over_memory(1000));
        assert!(l.over_memory(1001));
        assert!(!Limits::default().over_memory(u64::MAX));
    }

    #[test]
    fn queue_keeps_order_holds_each_worker_once_and_skips_the_gone() {
        let mut q = Queue::default();
        assert!(q.push(3, ExitReason::Memory));
        assert!(q.push(1, ExitReason::MaxRequests));
        assert!(!q.push(3, ExitReason::MaxRequests), "already waiting");
        assert!(q.push(2, ExitReason::MaxRequests));
        // Worker 1 was replaced by a reload meanwhile.
        assert_eq!(q.pop(|k| k != 1), Some((3, ExitReason::Memory)));
        assert_eq!(q.pop(|k| k != 1), Some((2, ExitReason::MaxRequests)));
        assert_eq!(q.pop(|_| true), None);
        assert!(!q.contains(3));
    }

    #[test]
    fn memory_is_checked_once_a_period_and_never_without_a_limit() {
        let t0 = Instant::now();
        let mut q = Queue::default();
        assert!(!q.memory_check_due(&Limits::default(), t0));
        assert_eq!(q.next_check(), None);
        let l = Limits {
            max_memory: Some(1 << 20),
            ..Limits::default()
        };
        assert!(q.memory_check_due(&l, t0));
        assert!(!q.memory_check_due(&l, t0 + MEMORY_CHECK_PERIOD / 2));
        assert_eq!(q.next_check(), Some(t0 + MEMORY_CHECK_PERIOD));
        assert!(q.memory_check_due(&l, t0 + MEMORY_CHECK_PERIOD));
        assert_eq!(q.next_check(), Some(t0 + 2 * MEMORY_CHECK_PERIOD));
    }
}
