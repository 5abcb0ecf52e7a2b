//! Accepting on a shared listening socket one connection per turn of the event loop.
//!
//! libuv's own server accepts every connection waiting in the socket at once, then serves them
//! one after another: the worker that wakes first takes a batch, and the last of it waits
//! behind the others while another worker sits idle before an empty socket. Taking one per
//! turn leaves the rest in the socket, where the first worker free takes the next.
//!
//! With the listener's share map (see `TurnCounter::ahead`), a worker that took `LEAD` more
//! connections than the one that took fewest leaves the next one to the others, unless the
//! socket holds `LONG_QUEUE` or more (nobody keeps up: everyone takes) or it already left two
//! in a row (the others are not taking: a connection never waits for evenness for long).

use std::cell::Cell;
use std::os::fd::RawFd;
use std::rc::Rc;

use napi::bindgen_prelude::*;
use napi::sys;
use napi_derive::napi;
use rcluster_core::TurnCounter;

use crate::error::from_napi;
use crate::watch::WatchSlot;
use crate::worker::NativeTurnCounter;

/// Connections a worker may have taken beyond the one that took fewest before it lets the
/// others take the next. Over a run of N connections the shares differ by about this much.
const LEAD: u32 = 16;
/// Connections waiting in the socket (a TCP listener's accept queue) from which every worker
/// takes, ahead or not.
const LONG_QUEUE: u32 = 16;
/// Connections left to the others in a row after which a worker takes the next anyway.
const MAX_DEFERRALS: u32 = 2;
/// `TCP_LISTEN` of the kernel's TCP states (not in libc).
const TCP_LISTEN: u8 = 10;
/// What the callback gets when this worker leaves the next connection to the others: it looks
/// again a moment later (JS waits, and watches again).
const DEFER: i32 = i32::MIN;

/// One accept: a connection's descriptor (non-blocking, close-on-exec, owned by the caller),
/// or a negative errno (`-EAGAIN` when another worker took it first).
fn accept_one(fd: RawFd) -> i32 {
    loop {
        // SAFETY: accept4 on a descriptor the caller keeps open; no address is asked for.
        let c = unsafe {
            libc::accept4(
                fd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_NONBLOCK | libc::SOCK_CLOEXEC,
            )
        };
        if c >= 0 {
            return c;
        }
        let e = std::io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO);
        // A connection reset while it waited is gone; the next one may be there.
        if e != libc::EINTR && e != libc::ECONNABORTED {
            return -e;
        }
    }
}

/// How many connections wait in TCP listener `fd`'s accept queue; 0 for another kind of
/// socket (or when the kernel does not say).
fn queued(fd: RawFd) -> u32 {
    // SAFETY: a zeroed tcp_info and its length; the kernel writes at most that much.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        // For a listening socket the kernel reports its accept queue's length here.
        if rc == 0 && info.tcpi_state == TCP_LISTEN {
            info.tcpi_unacked
        } else {
            0
        }
    }
}

struct Gate {
    fd: RawFd,
    counter: Option<Rc<TurnCounter>>,
    deferrals: Cell<u32>,
}

impl Gate {
    fn next(&self) -> i32 {
        if let Some(c) = &self.counter {
            if self.deferrals.get() < MAX_DEFERRALS && c.ahead(LEAD) && queued(self.fd) < LONG_QUEUE
            {
                self.deferrals.set(self.deferrals.get() + 1);
                return DEFER;
            }
        }
        self.deferrals.set(0);
        let got = accept_one(self.fd);
        if got >= 0 {
            if let Some(c) = &self.counter {
                c.took();
            }
        }
        got
    }
}

/// A watcher of a shared listening socket that accepts one connection each time it is
/// readable, keeping level with the other workers when given the listener's share map.
#[napi]
pub struct NativeAcceptor {
    gate: Rc<Gate>,
    watcher: WatchSlot,
}

#[napi]
impl NativeAcceptor {
    /// Accepts on `fd`, which stays the caller's (it is not closed here).
    #[napi(constructor)]
    pub fn new(fd: i32, counter: Option<&NativeTurnCounter>) -> Self {
        NativeAcceptor {
            gate: Rc::new(Gate {
                fd,
                counter: counter.map(|c| Rc::clone(&c.inner)),
                deferrals: Cell::new(0),
            }),
            watcher: WatchSlot::default(),
        }
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
        let gate = Rc::clone(&self.gate);
        let produce = Box::new(move |env| {
            // SAFETY: called on the JS thread with its live env.
            unsafe { i32::to_napi_value(env, gate.next()) }.map_err(from_napi)
        });
        self.watcher
            .start(&env, self.gate.fd, callback, produce, "rcluster:accept")
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
