//! The opt-in signal helper for C programs that own their process: SIGINT/SIGTERM stop,
//! SIGHUP reloads, SIGTTIN/SIGTTOU add or remove a worker — the `rcluster` command's mapping,
//! which the core decides (`Supervisor::on_signal`); this only reads and forwards.
//!
//! Signals are blocked and read from a signalfd, so nothing ever runs in signal context and
//! the program decides when they are handled (from its own loop), as gunicorn's arbiter does.

use std::ffi::c_int;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use crate::args::{self, handle};
use crate::result::{guard, guard_void, rcluster_result, Fail, Res};
use crate::supervisor::rcluster_supervisor;

use rcluster_core::{SignalAction, HANDLED_SIGNALS as HANDLED};

/// The signal helper (opaque). Made by `rcluster_signals_new`, released by
/// `rcluster_signals_free`.
pub struct rcluster_signals {
    fd: OwnedFd,
    set: libc::sigset_t,
}

fn handled_set() -> libc::sigset_t {
    // SAFETY: sigset_t is plain data, initialised by sigemptyset before use; the signal
    // numbers are valid.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for sig in HANDLED {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Blocks SIGINT, SIGTERM, SIGHUP, SIGTTIN and SIGTTOU in the calling thread and opens a
/// signalfd for them; `rcluster_signals_handle` then turns each into an API call.
/// Call it first thing in `main`, before `rcluster_supervisor_start` and before starting any
/// thread: threads inherit the signal mask, and a signal not blocked in some thread is
/// delivered there with its default action (ending the process). Installs no handler.
///
/// # Safety
/// `out` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rcluster_signals_new(out: *mut *mut rcluster_signals) -> rcluster_result {
    guard("rcluster_signals_new", || {
        let out = args::out(out, "out")?;
        let set = handled_set();
        // SAFETY: `set` is initialised; the old mask is not needed.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(Fail::new(
                rcluster_result::Io,
                format!("pthread_sigmask: {}", std::io::Error::from_raw_os_error(rc)),
            ));
        }
        // SAFETY: `set` is initialised; -1 asks for a new descriptor.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            return Err(Fail::new(rcluster_result::Io, format!("signalfd: {e}")));
        }
        let s = Box::new(rcluster_signals {
            // SAFETY: a fresh descriptor that nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            set,
        });
        // SAFETY: `out` is non-null (checked above) and the caller promises it points to writable
        // memory for one value.
        unsafe { args::put(out, Box::into_raw(s)) };
        Ok(())
    })
}

/// Closes the signalfd and unblocks the five signals in the calling thread (other threads keep
/// their masks). NULL is allowed and does nothing.
///
/// # Safety
/// `sigs` is NULL or a helper from `rcluster_signals_new` not yet freed.
#[no_mangle]
pub unsafe extern "C" fn rcluster_signals_free(sigs: *mut rcluster_signals) {
    guard_void("rcluster_signals_free", || {
        if sigs.is_null() {
            return;
        }
        // SAFETY: made by Box::into_raw in rcluster_signals_new, freed once.
        let s = unsafe { Box::from_raw(sigs) };
        // SAFETY: `s.set` was initialised by handled_set.
        unsafe { libc::pthread_sigmask(libc::SIG_UNBLOCK, &s.set, std::ptr::null_mut()) };
    })
}

/// A descriptor readable while signals are pending: poll it beside the supervisor's event fd
/// and call `rcluster_signals_handle` when it is readable. Do not read or close it.
///
/// # Safety
/// `sigs` is NULL or a live helper; `out_fd` is NULL or writable.
#[no_mangle]
pub unsafe extern "C" fn rcluster_signals_fd(
    sigs: *const rcluster_signals,
    out_fd: *mut c_int,
) -> rcluster_result {
    guard("rcluster_signals_fd", || {
        // SAFETY: the caller passes a handle this library returned and has not freed, or NULL,
        // which `handle` refuses.
        let s = unsafe { handle(sigs, "sigs") }?;
        let out = args::out(out_fd, "out_fd")?;
        // SAFETY: `out` is non-null (checked above) and the caller promises it points to writable
        // memory for one value.
        unsafe { args::put(out, s.fd.as_raw_fd()) };
        Ok(())
    })
}

fn read_signal(s: &rcluster_signals) -> Res<Option<c_int>> {
    // SAFETY: signalfd_siginfo is plain data.
    let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
    let size = std::mem::size_of::<libc::signalfd_siginfo>();
    loop {
        // SAFETY: `info` is a writable buffer of exactly `size` bytes.
        let n = unsafe {
            libc::read(
                s.fd.as_raw_fd(),
                (&mut info as *mut libc::signalfd_siginfo).cast(),
                size,
            )
        };
        if n == size as isize {
            return Ok(Some(info.ssi_signo as c_int));
        }
        let e = std::io::Error::last_os_error();
        match e.kind() {
            std::io::ErrorKind::Interrupted if n < 0 => continue,
            std::io::ErrorKind::WouldBlock if n < 0 => return Ok(None),
            _ => {
                return Err(Fail::new(
                    rcluster_result::Io,
                    format!("reading the signalfd: {e}"),
                ))
            }
        }
    }
}

/// The core decides what the signal means (the `rcluster` command's mapping); a signal that
/// changes nothing is reported as refused, with the core's reason.
fn act(s: &rcluster_supervisor, sig: c_int) -> Res {
    let name = rcluster_core::signal_name(sig);
    match s.sup.on_signal(sig) {
        Ok(SignalAction::Ignored(why)) => {
            let code = if s.sup.is_stopping() {
                rcluster_result::Stopped
            } else {
                rcluster_result::InvalidState
            };
            Err(Fail::new(code, format!("{name} ignored: {why}")))
        }
        // Scaling by one is counted by the core (`Supervisor::on_signal`).
        Ok(_) => Ok(()),
        Err(e) => {
            let f = Fail::from(e);
            Err(Fail::new(f.code, format!("{name}: {}", f.msg)))
        }
    }
}

/// Reads one pending signal and acts on `sup`: SIGINT/SIGTERM start a graceful stop with the
/// configured kill timeout and return at once (a second one kills the workers now; keep
/// reading events until `RCLUSTER_RESULT_STOPPED`); SIGHUP starts a rolling reload; SIGTTIN
/// adds a worker; SIGTTOU removes one (never the last). The mapping is the core's, the same
/// for the `rcluster` command, Node and Python.
/// On success `*out_signal` (optional: may be NULL) receives the signal number.
/// `RCLUSTER_RESULT_TIMEOUT` when no signal is pending; call it until then when the fd is
/// readable. When the action is refused (a reload or scale during a stop, SIGTTOU at one
/// worker) the signal is consumed and the error says why.
///
/// # Safety
/// `sigs` is NULL or a live helper; `sup` is NULL or a live supervisor; `out_signal` is NULL
/// or writable.
#[no_mangle]
pub unsafe extern "C" fn rcluster_signals_handle(
    sigs: *const rcluster_signals,
    sup: *const rcluster_supervisor,
    out_signal: *mut c_int,
) -> rcluster_result {
    guard("rcluster_signals_handle", || {
        // SAFETY: the caller passes a handle this library returned and has not freed, or NULL,
        // which `handle` refuses.
        let sigs = unsafe { handle(sigs, "sigs") }?;
        // SAFETY: the caller passes a handle this library returned and has not freed, or NULL,
        // which `handle` refuses.
        let s = unsafe { handle(sup, "sup") }?;
        let Some(sig) = read_signal(sigs)? else {
            return Err(Fail::quiet(rcluster_result::Timeout));
        };
        act(s, sig)?;
        if !out_signal.is_null() {
            // SAFETY: `out_signal` is non-null (checked above) and the caller promises it points
            // to writable memory for one value.
            unsafe { args::put(out_signal, sig) };
        }
        Ok(())
    })
}
