//! Python binding of rcluster: the native half of the `rcluster` package.
//!
//! Thin on purpose: every decision is the core's, the Python half (`python/rcluster`) gives it
//! a Pythonic shape. Files mirror the core's modules; errors are converted in `errors.rs` only.
//! Every call that may block releases the GIL.

use pyo3::prelude::*;

mod accept;
mod config;
mod errors;
mod events;
mod message;
mod pool;
mod supervisor;
mod wait;
mod worker;

#[pymodule]
fn _rcluster(m: &Bound<'_, PyModule>) -> PyResult<()> {
    m.add_class::<supervisor::PySupervisor>()?;
    m.add_class::<worker::PyWorker>()?;
    m.add_class::<events::PyEvent>()?;
    m.add_class::<events::PyWorkerInfo>()?;
    m.add_class::<events::PyExitInfo>()?;
    m.add_class::<pool::PyPool>()?;
    m.add_class::<accept::PySharedAcceptor>()?;
    m.add("ACCEPT_DEFERRED", accept::DEFERRED)?;
    m.add(
        "ACCEPT_DEFER_SECONDS",
        rcluster_core::DEFER_FOR.as_secs_f64(),
    )?;
    m.add("CONTENT_PICKLE", rcluster_core::pool::CONTENT_PICKLE)?;
    m.add("BOOT_FAILED_EXIT", rcluster_core::pool::BOOT_FAILED_EXIT)?;
    m.add("MAX_WORKERS", rcluster_core::MAX_WORKERS)?;
    m.add("DEFAULT_MAX_MESSAGE", rcluster_core::DEFAULT_MAX_MESSAGE)?;
    m.add_function(wrap_pyfunction!(open_fd_count, m)?)?;
    m.add_function(wrap_pyfunction!(default_workers, m)?)?;
    Ok(())
}

/// Number of open descriptors of this process (for leak checks in tests).
#[pyfunction]
fn open_fd_count() -> usize {
    rcluster_core::open_fd_count()
}

/// The number of workers a supervisor given no count runs: one per CPU this process may use
/// (its affinity mask, bounded by its cgroup's CPU quota), decided by the core.
#[pyfunction]
fn default_workers() -> usize {
    rcluster_core::default_workers()
}
