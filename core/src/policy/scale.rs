//! Scaling by a step (SIGTTIN / SIGTTOU, Node's `fork()`): the count the loop goes to.

use crate::config::MAX_WORKERS;

/// The new number of workers after a step of `delta`, within `1..=MAX_WORKERS`.
pub fn stepped(workers: usize, delta: isize) -> usize {
    workers.saturating_add_signed(delta).clamp(1, MAX_WORKERS)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_step_stays_within_one_and_max_workers() {
        assert_eq!(stepped(1, -1), 1);
        assert_eq!(stepped(2, -1), 1);
        assert_eq!(stepped(1, 1), 2);
        assert_eq!(stepped(MAX_WORKERS, 1), MAX_WORKERS);
    }
}
