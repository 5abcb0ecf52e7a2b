//! The fault-injection suite: misbehaving workers and hosts against a real cluster.
//!
//! Each module is one family of faults. Every test forks real workers, opens real sockets and
//! sends real signals; each is bounded in time and cleans up after itself. The answer to every
//! fault is the same: the cluster keeps serving, memory stays bounded, nothing leaks, no
//! accepted request is dropped, and the error names what was wrong.

mod connections;
mod flood;
mod lifetime;
mod output;
mod protocol;
mod reload;
mod signals;
