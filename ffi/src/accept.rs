//! `rcluster_acceptor`: a worker's acceptor of a `shared` listening socket, one connection per
//! call, keeping level with the other workers through the listener's share map (protocol §5.7).

use std::ffi::{c_char, c_int};
use std::os::fd::{FromRawFd, IntoRawFd, OwnedFd};

use rcluster_core::{Accepted, SharedAcceptor};

use crate::args::{self, handle};
use crate::result::{guard, guard_void, rcluster_result, Fail};
use crate::worker::{rcluster_worker, worker_ref};

/// A worker's acceptor of one `shared` listening socket (opaque). Made by
/// `rcluster_acceptor_new`, released by `rcluster_acceptor_free`. Use it from one thread.
pub struct rcluster_acceptor {
    inner: SharedAcceptor,
}

/// Accepts from the socket of `shared` listener `listener` that this worker inherited at
/// `inherited_fd` (3 + its place in `LISTEN_FDNAMES`; `LISTEN_FDS` says how many). It asks the
/// primary for the listener by name (a round trip): the answer carries a copy of the socket
/// and the listener's share map, with which `rcluster_acceptor_next` keeps this worker's share
/// of the connections level with the other workers'. From a primary that gives none (an older
/// one), it accepts from `inherited_fd` itself whenever a connection waits.
///
/// On success `*out` is the acceptor, to release with `rcluster_acceptor_free`, and it owns
/// `inherited_fd` (closed now or by the free: do not close it); watch
/// `rcluster_acceptor_fd` instead. Refused arguments (`NULL_ARGUMENT`, `INVALID_UTF8`,
/// `INVALID_ARGUMENT` for a negative `inherited_fd`) leave `inherited_fd` the caller's; an
/// unusable socket (`IO`) is closed. It makes the socket non-blocking (a flag of the socket,
/// shared by every process that holds it).
///
/// # Safety
/// `w` is NULL or a live worker; `listener` is NULL or a NUL-terminated string; `out` is NULL
/// or writable.
#[no_mangle]
pub unsafe extern "C" fn rcluster_acceptor_new(
    w: *const rcluster_worker,
    listener: *const c_char,
    inherited_fd: c_int,
    out: *mut *mut rcluster_acceptor,
) -> rcluster_result {
    guard("rcluster_acceptor_new", || {
        let w = worker_ref(w)?;
        // SAFETY: the caller promises a NUL-terminated string.
        let name = unsafe { args::utf8(listener, "listener") }?;
        let out = args::out(out, "out")?;
        if inherited_fd < 0 {
            return Err(Fail::range(
                "inherited_fd",
                inherited_fd,
                "must be a descriptor (0 or more)",
            ));
        }
        // SAFETY: the caller hands the descriptor over once the arguments pass (above).
        let inherited = unsafe { OwnedFd::from_raw_fd(inherited_fd) };
        let inner = SharedAcceptor::of_listener(w, name, inherited)
            .map_err(|e| Fail::new(rcluster_result::Io, format!("fcntl: {e}")))?;
        let a = rcluster_acceptor { inner };
        // SAFETY: `out` is non-null (checked above) and the caller promises it points to writable
        // memory for one value.
        unsafe { args::put(out, Box::into_raw(Box::new(a))) };
        Ok(())
    })
}

/// Takes one connection, or says why not; call it once each time the socket is readable.
/// - `RCLUSTER_RESULT_OK`: `*out_fd` is a client connection (non-blocking, CLOEXEC), the
///   program's: close it when done (the primary holds no copy, and needs no report).
/// - `RCLUSTER_RESULT_TIMEOUT`: nothing waits (another worker took it).
/// - `RCLUSTER_RESULT_DEFERRED`: this worker is ahead of the others and leaves them the next
///   connection: stop watching the socket for about a millisecond, then look again. It takes
///   after 2 ms of this, or 16 looks, in a row.
/// - `RCLUSTER_RESULT_IO`: accept failed; `errno` is set to its error, which the message names.
///   For EMFILE, ENFILE, ENOBUFS and ENOMEM stop watching for about 100 ms (the connections
///   wait in the socket, or for another worker) rather than spin on a socket you cannot take from.
///
/// # Safety
/// `a` is NULL or a live acceptor; `out_fd` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rcluster_acceptor_next(
    a: *const rcluster_acceptor,
    out_fd: *mut c_int,
) -> rcluster_result {
    let mut errno = 0;
    let rc = guard("rcluster_acceptor_next", || {
        // SAFETY: the caller promises `a` is NULL or a live acceptor.
        let a = unsafe { handle(a, "a") }?;
        let out = args::out(out_fd, "out_fd")?;
        match a.inner.next() {
            Accepted::Connection(c) => {
                // SAFETY: `out` is non-null (checked above) and the caller promises it points to
                // writable memory for one value.
                unsafe { args::put(out, c.into_raw_fd()) };
                Ok(())
            }
            Accepted::Empty => Err(Fail::quiet(rcluster_result::Timeout)),
            Accepted::Deferred => Err(Fail::quiet(rcluster_result::Deferred)),
            Accepted::Failed(e) => {
                errno = e.raw_os_error().unwrap_or(libc::EIO);
                Err(Fail::new(
                    rcluster_result::Io,
                    format!("accept failed: {e}"),
                ))
            }
        }
    });
    if errno != 0 {
        // SAFETY: the calling thread's errno, set last so that nothing above overwrites it.
        unsafe { *libc::__errno_location() = errno };
    }
    rc
}

/// The listening socket's descriptor, to watch for readability (poll, epoll) and call
/// `rcluster_acceptor_next`. It belongs to the acceptor: do not accept from, read or close it.
///
/// # Safety
/// `a` is NULL or a live acceptor; `out_fd` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rcluster_acceptor_fd(
    a: *const rcluster_acceptor,
    out_fd: *mut c_int,
) -> rcluster_result {
    guard("rcluster_acceptor_fd", || {
        // SAFETY: the caller promises `a` is NULL or a live acceptor.
        let a = unsafe { handle(a, "a") }?;
        let out = args::out(out_fd, "out_fd")?;
        // SAFETY: `out` is non-null (checked above) and the caller promises it points to writable
        // memory for one value.
        unsafe { args::put(out, a.inner.fd()) };
        Ok(())
    })
}

/// Closes the listening socket and releases the acceptor. NULL is allowed and does nothing.
/// Connections still waiting in the socket are reset for their clients when no other process
/// holds it: at a drain, take them first (`rcluster_acceptor_next` until it returns
/// `RCLUSTER_RESULT_TIMEOUT`, taking after `RCLUSTER_RESULT_DEFERRED` too).
///
/// # Safety
/// `a` is NULL or an acceptor from `rcluster_acceptor_new` not yet freed, not in use by another
/// thread.
#[no_mangle]
pub unsafe extern "C" fn rcluster_acceptor_free(a: *mut rcluster_acceptor) {
    guard_void("rcluster_acceptor_free", || {
        if !a.is_null() {
            // SAFETY: made by Box::into_raw in rcluster_acceptor_new, freed once.
            drop(unsafe { Box::from_raw(a) });
        }
    })
}
