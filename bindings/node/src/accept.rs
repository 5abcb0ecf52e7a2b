//! A shared listening socket accepted from on the JS thread: the core's [`SharedAcceptor`]
//! (one connection per look, keeping level with the other workers) behind a libuv poll
//! handle, so that it looks once per turn of the event loop.
//!
//! It looks in the turn's check phase, after the turn's other I/O callbacks: a worker that
//! has a request to serve in this turn serves it first and leaves the next connection in the
//! socket meanwhile, for a worker that is free now. Taking it before would make it wait
//! behind that request (and behind a preemption of this worker, on a busy machine): p99 was
//! 4–5 % higher in alternated runs (bench/RESULTS.md).

use std::os::fd::IntoRawFd;
use std::rc::Rc;
use std::sync::Arc;

use napi::bindgen_prelude::*;
use napi::sys;
use napi_derive::napi;
use rcluster_core::{Accepted, SharedAcceptor};

use crate::error::from_napi;
use crate::watch::WatchSlot;
use crate::worker::NativeTurnCounter;

/// What the callback gets when this worker leaves the next connection to the others: it looks
/// again a moment later (JS waits, and watches again).
const DEFER: i32 = i32::MIN;

/// A descriptor, a negative errno, or [`DEFER`] (an empty socket does not reach JS).
fn as_number(a: Accepted) -> i32 {
    match a {
        Accepted::Connection(fd) => fd.into_raw_fd(),
        Accepted::Empty => -libc::EAGAIN,
        Accepted::Deferred => DEFER,
        Accepted::Failed(e) => -e.raw_os_error().unwrap_or(libc::EIO),
    }
}

/// A watcher of a shared listening socket that accepts one connection each time it is
/// readable, keeping level with the other workers when given the listener's share map.
#[napi]
pub struct NativeAcceptor {
    acceptor: Rc<SharedAcceptor>,
    watcher: WatchSlot,
}

#[napi]
impl NativeAcceptor {
    /// Accepts on `fd`, which stays the caller's (it is not closed here).
    #[napi(constructor)]
    pub fn new(fd: i32, counter: Option<&NativeTurnCounter>) -> napi::Result<Self> {
        let acceptor = SharedAcceptor::new(fd, counter.map(|c| Arc::clone(&c.inner)))
            .map_err(|e| napi::Error::from_reason(format!("shared listener fd {fd}: {e}")))?;
        Ok(NativeAcceptor {
            acceptor: Rc::new(acceptor),
            watcher: WatchSlot::default(),
        })
    }

    /// What the callback gets when the next connection is left to the other workers.
    #[napi(getter)]
    pub fn deferred(&self) -> i32 {
        DEFER
    }

    /// Calls `callback` with what one accept gave (a descriptor, a negative errno, or
    /// `deferred`) each time the socket is readable, until `stop`.
    #[napi(ts_args_type = "callback: (fd: number) => void")]
    pub fn watch(
        &mut self,
        env: Env,
        callback: Function<'_, sys::napi_value, ()>,
    ) -> napi::Result<(), &'static str> {
        let acceptor = Rc::clone(&self.acceptor);
        let produce = Box::new(move |env| {
            // SAFETY: called on the JS thread with its live env.
            let a = acceptor.next();
            if matches!(a, Accepted::Empty) {
                return Ok(None); // another worker took it first: nothing for JS
            }
            unsafe { i32::to_napi_value(env, as_number(a)) }
                .map(Some)
                .map_err(from_napi)
        });
        self.watcher
            .start(
                &env,
                self.acceptor.fd(),
                callback,
                produce,
                "rcluster:accept",
                true,
            )
            .map_err(from_napi)
    }

    #[napi]
    pub fn set_ref(&self, keep_alive: bool) {
        self.watcher.set_ref(keep_alive);
    }

    /// Stops watching (watch may start again); the listening socket stays open.
    #[napi]
    pub fn stop(&mut self) {
        self.watcher.close();
    }
}
