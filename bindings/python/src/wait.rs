//! Blocking waits that stay responsive to Ctrl-C.
//!
//! CPython runs signal handlers only on the main thread and only between bytecodes, so a wait
//! that holds on in native code for minutes would hide a SIGINT for minutes. Waits are cut into
//! short slices with the GIL released, and `check_signals` runs between slices: a
//! KeyboardInterrupt surfaces within one slice.

use std::time::{Duration, Instant};

use pyo3::prelude::*;

use crate::config::wait_seconds;

/// Longest time spent in native code before pending signals are looked at.
const SLICE: Duration = Duration::from_millis(100);

/// Calls `attempt(slice)` with the GIL released until it gives `Some`, `timeout` (seconds;
/// None = forever) passes, or `finished()` says nothing more can come.
pub fn sliced<T, F, D>(
    py: Python<'_>,
    timeout: Option<f64>,
    mut attempt: F,
    finished: D,
) -> PyResult<Option<T>>
where
    T: Send,
    F: FnMut(Duration) -> PyResult<Option<T>> + Send,
    D: Fn() -> bool,
{
    let deadline = match timeout {
        Some(t) => Some(Instant::now() + wait_seconds("timeout", t)?),
        None => None,
    };
    loop {
        let slice = match deadline {
            Some(d) => d.saturating_duration_since(Instant::now()).min(SLICE),
            None => SLICE,
        };
        if let Some(v) = py.allow_threads(|| attempt(slice))? {
            return Ok(Some(v));
        }
        if finished() || deadline.is_some_and(|d| Instant::now() >= d) {
            return Ok(None);
        }
        py.check_signals()?;
    }
}
