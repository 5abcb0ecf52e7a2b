//! Decisions without side effects: when and whether to restart a worker (`restart`), and which
//! worker gets a connection (`dispatch`). Pure logic over plain values and an injectable clock,
//! unit-tested without processes or sockets.

pub mod dispatch;
pub mod restart;

pub use restart::{Clock, Decision, ExitReason, History, Jitter, SystemClock, XorShift};
