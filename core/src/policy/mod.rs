//! Decisions without side effects: when and whether to restart a worker (`restart`), which
//! worker gets a connection (`dispatch`), how many workers a step of scaling leaves (`scale`),
//! which worker is due for replacement (`recycle`). Pure logic over plain values and an
//! injectable clock, unit-tested without processes or sockets.

pub mod dispatch;
pub mod recycle;
pub mod restart;
pub mod scale;

pub use restart::{Clock, Decision, ExitReason, History, Jitter, SystemClock, XorShift};
