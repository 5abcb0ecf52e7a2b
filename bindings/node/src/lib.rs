//! Node binding of rcluster: a thin native layer over `rcluster-core`. The JS in `lib/` builds
//! the public API (EventEmitter, Promises, the `cluster`-compatible facade) on top of it.

// napi-derive registers exports only outside `cfg(test)`; a test build sees them as unused.
#![cfg_attr(test, allow(dead_code))]

mod accept;
mod error;
mod message;
mod pool;
mod primary;
mod watch;
mod worker;
