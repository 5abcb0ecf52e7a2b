//! A shared listening socket accepted from on the JS thread: the core's [`SharedAcceptor`]
//! (one connection per look, keeping level with the other workers; several while a long queue
//! waits) behind a libuv poll handle, so that it looks once per turn of the event loop.
//!
//! It looks in the turn's check phase, after the turn's other I/O callbacks: a worker that
//! has a request to serve in this turn serves it first and leaves the next connection in the
//! socket meanwhile, for a worker that is free now. Taking it before would make it wait
//! behind that request (and behind a preemption of this worker, on a busy machine): p99 was
//! 4–5 % higher in alternated runs (bench/RESULTS.md).

use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};
use std::rc::Rc;
use std::sync::Arc;

use napi::bindgen_prelude::*;
use napi::sys;
use napi_derive::napi;
use rcluster_core::{Accepted, SharedAcceptor, DEFER_FOR};

use crate::error::from_napi;
use crate::watch::WatchSlot;
use crate::worker::NativeTurnCounter;

/// What the callback gets when this worker leaves the next connection to the others: it looks
/// again a moment later (JS waits, and watches again).
const DEFER: i32 = i32::MIN;

/// A descriptor, a negative errno, or [`DEFER`] (an empty socket does not reach JS). While a
/// long queue waits, the callback gets an array of descriptors instead (see
/// `SharedAcceptor::more`).
fn as_number(a: Accepted) -> i32 {
    match a {
        Accepted::Connection(fd) => fd.into_raw_fd(),
        Accepted::Empty => -libc::EAGAIN,
        Accepted::Deferred => DEFER,
        Accepted::Failed(e) => -e.raw_os_error().unwrap_or(libc::EIO),
    }
}

/// A watcher of a shared listening socket that accepts one connection each time it is
/// readable, keeping level with the other workers when given the listener's share map. It owns
/// the socket: `close()` stops it and closes the socket.
#[napi]
pub struct NativeAcceptor {
    /// None once closed. The only strong reference: the watcher's callback holds a weak one.
    acceptor: Option<Rc<SharedAcceptor>>,
    watcher: WatchSlot,
}

impl NativeAcceptor {
    pub(crate) fn of(acceptor: SharedAcceptor) -> NativeAcceptor {
        NativeAcceptor {
            acceptor: Some(Rc::new(acceptor)),
            watcher: WatchSlot::default(),
        }
    }

    fn open(&self) -> napi::Result<&Rc<SharedAcceptor>, &'static str> {
        self.acceptor
            .as_ref()
            .ok_or_else(|| napi::Error::new("ERR_RCLUSTER_CLOSED", "the acceptor is closed"))
    }
}

#[napi]
impl NativeAcceptor {
    /// Accepts on `fd` (a listen answer's socket), which it takes over: `close()` closes it.
    #[napi(constructor)]
    pub fn new(fd: i32, counter: Option<&NativeTurnCounter>) -> napi::Result<Self, &'static str> {
        if fd < 0 {
            return Err(napi::Error::new(
                "ERR_RCLUSTER_FD",
                format!("shared listener fd {fd}: must be a descriptor (0 or more)"),
            ));
        }
        // SAFETY: the listen answer gave this descriptor away to JS, which hands it over here
        // once, and closes it no more.
        let socket = unsafe { OwnedFd::from_raw_fd(fd) };
        let acceptor = SharedAcceptor::owning(socket, counter.map(|c| Arc::clone(&c.inner)))
            .map_err(|e| {
                napi::Error::new("ERR_RCLUSTER_FD", format!("shared listener fd {fd}: {e}"))
            })?;
        Ok(NativeAcceptor::of(acceptor))
    }

    /// The listening socket (-1 once closed).
    #[napi(getter)]
    pub fn fd(&self) -> i32 {
        self.acceptor.as_ref().map_or(-1, |a| a.fd())
    }

    /// The address the primary said the listener is bound to ("" when it did not say).
    #[napi(getter)]
    pub fn address(&self) -> String {
        self.acceptor
            .as_ref()
            .map_or(String::new(), |a| a.address().to_string())
    }

    /// Whether the primary knows this worker listens (tell it `unlisten` when done).
    #[napi(getter)]
    pub fn listened(&self) -> bool {
        self.acceptor.as_ref().is_some_and(|a| a.listened())
    }

    /// How long to stop watching after the next connection was left to the other workers,
    /// in milliseconds (the core's `DEFER_FOR`).
    #[napi(getter)]
    pub fn defer_ms(&self) -> f64 {
        DEFER_FOR.as_secs_f64() * 1000.0
    }

    /// From now on counts the connections this worker took and has not closed in the share
    /// map (`closed()` once per connection), so that the others leave it the next one while it
    /// has none. False without a share map (nothing is counted then).
    #[napi]
    pub fn count_in_hand(&self) -> bool {
        self.acceptor.as_ref().is_some_and(|a| a.count_in_hand())
    }

    /// One connection this acceptor gave is closed (after `countInHand()`).
    #[napi]
    pub fn closed(&self) {
        if let Some(a) = &self.acceptor {
            a.closed();
        }
    }

    /// Turns Nagle's algorithm off for the connections accepted from now on, on the listening
    /// socket (they inherit it): no system call per connection. False for a socket that is not
    /// TCP, and once closed.
    #[napi]
    pub fn no_delay(&self) -> napi::Result<bool, &'static str> {
        let Some(a) = &self.acceptor else {
            return Ok(false);
        };
        a.no_delay().map_err(|e| {
            napi::Error::new(
                "ERR_RCLUSTER_FD",
                format!("TCP_NODELAY on listener fd {}: {e}", a.fd()),
            )
        })
    }

    /// What the callback gets when the next connection is left to the other workers.
    #[napi(getter)]
    pub fn deferred(&self) -> i32 {
        DEFER
    }

    /// Calls `callback` with what one look gave (a descriptor, several in an array while a
    /// long queue waits, a negative errno, or `deferred`) each time the socket is readable,
    /// until `stop`.
    #[napi(ts_args_type = "callback: (fd: number | number[]) => void")]
    pub fn watch(
        &mut self,
        env: Env,
        callback: Function<'_, sys::napi_value, ()>,
    ) -> napi::Result<(), &'static str> {
        // Weak: `close()` closes the socket at once, not when libuv frees the watcher.
        let acceptor = Rc::downgrade(self.open()?);
        let fd = self.fd();
        let produce = Box::new(move |env| {
            let Some(acceptor) = acceptor.upgrade() else {
                return Ok(None); // closed
            };
            let a = acceptor.next();
            if matches!(a, Accepted::Empty) {
                return Ok(None); // another worker took it first: nothing for JS
            }
            let more = match a {
                Accepted::Connection(_) => acceptor.more(),
                _ => 0,
            };
            if more == 0 {
                // SAFETY: called on the JS thread with its live env.
                return unsafe { i32::to_napi_value(env, as_number(a)) }
                    .map(Some)
                    .map_err(from_napi);
            }
            // A long queue: several connections this turn, as an array of descriptors.
            let mut fds = vec![as_number(a)];
            while fds.len() <= more {
                match acceptor.next() {
                    c @ Accepted::Connection(_) => fds.push(as_number(c)),
                    _ => break,
                }
            }
            // SAFETY: called on the JS thread with its live env.
            unsafe { Vec::<i32>::to_napi_value(env, fds) }
                .map(Some)
                .map_err(from_napi)
        });
        self.watcher
            .start(&env, fd, callback, produce, "rcluster:accept", true)
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

    /// Stops watching and closes the listening socket.
    #[napi]
    pub fn close(&mut self) {
        self.watcher.close();
        self.acceptor = None;
    }
}
