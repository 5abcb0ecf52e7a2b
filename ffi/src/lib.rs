//! The C ABI of rcluster: `librcluster.so` / `librcluster.a`, declared in `include/rcluster.h`
//! (generated from this crate by cbindgen; run `ffi/header.sh`).
//!
//! Thin wrappers only: every decision is `rcluster-core`'s. Conventions, after rustls-ffi:
//! names are `rcluster_<object>_<verb>`; handles are opaque and released by `_free`
//! (`_free(NULL)` is harmless); every function returns a stable `rcluster_result` and writes
//! its out-parameters only on success; the detail of a failure is kept per thread for
//! `rcluster_last_error`; every export runs behind a panic boundary, so a bug in rcluster
//! becomes `RCLUSTER_RESULT_PANIC` instead of an abort of the host process.

#![allow(non_camel_case_types)]
// Every unsafe block says why it is sound (`cargo clippy -- -D warnings` enforces it).
#![warn(clippy::undocumented_unsafe_blocks)]

mod accept;
mod args;
mod config;
mod control;
mod event;
mod modes;
mod pool;
mod result;
mod signals;
mod supervisor;
mod worker;

use std::ffi::c_char;

pub use accept::*;
pub use config::*;
pub use event::*;
pub use modes::*;
pub use pool::*;
pub use result::*;
pub use signals::*;
pub use supervisor::*;
pub use worker::*;

/// The version of the library, "MAJOR.MINOR.PATCH", from the crate version. Compare it with
/// the `RCLUSTER_VERSION` macro of the header the program was compiled against. Never NULL.
#[no_mangle]
pub extern "C" fn rcluster_version() -> *const c_char {
    concat!(env!("CARGO_PKG_VERSION"), "\0").as_ptr().cast()
}
