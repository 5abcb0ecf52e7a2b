//! Signals arrive through a signalfd, so they are plain readable data for the main loop and
//! nothing ever runs in signal context.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use rcluster_core::HANDLED_SIGNALS as HANDLED;

pub struct SignalFd {
    fd: OwnedFd,
}

impl SignalFd {
    /// Blocks the handled signals in this thread and opens a signalfd for them. Must run before
    /// any other thread is started: threads inherit the mask, and a signal that is unblocked in
    /// some thread would be delivered there with its default action instead.
    /// `extra` are signals the command handles itself (SIGCHLD when it adopts orphans).
    pub fn install(extra: &[i32]) -> io::Result<SignalFd> {
        // SAFETY: sigset_t is plain data; it is initialised by sigemptyset before any other use.
        let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
        // SAFETY: `set` is a valid sigset_t; the signal numbers are valid.
        unsafe {
            libc::sigemptyset(&mut set);
            for &sig in HANDLED.iter().chain(extra) {
                libc::sigaddset(&mut set, sig);
            }
        }
        // SAFETY: `set` is initialised; the old mask is not needed.
        let rc = unsafe { libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
        if rc != 0 {
            return Err(io::Error::from_raw_os_error(rc));
        }
        // SAFETY: `set` is initialised; -1 asks for a new descriptor.
        let fd = unsafe { libc::signalfd(-1, &set, libc::SFD_CLOEXEC | libc::SFD_NONBLOCK) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: signalfd returned a fresh descriptor that nothing else owns.
        Ok(SignalFd {
            // SAFETY: the call just above returned this descriptor, which nothing else owns.
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
        })
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// The next pending signal, if any.
    pub fn try_read(&self) -> io::Result<Option<i32>> {
        // SAFETY: signalfd_siginfo is plain data.
        let mut info: libc::signalfd_siginfo = unsafe { std::mem::zeroed() };
        let size = std::mem::size_of::<libc::signalfd_siginfo>();
        loop {
            // SAFETY: `info` is a writable buffer of exactly `size` bytes.
            let n = unsafe {
                libc::read(
                    self.raw(),
                    (&mut info as *mut libc::signalfd_siginfo).cast(),
                    size,
                )
            };
            if n == size as isize {
                return Ok(Some(info.ssi_signo as i32));
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted if n < 0 => continue,
                io::ErrorKind::WouldBlock if n < 0 => return Ok(None),
                _ if n < 0 => return Err(err),
                _ => {
                    return Err(io::Error::new(
                        io::ErrorKind::UnexpectedEof,
                        "short read from signalfd",
                    ))
                }
            }
        }
    }
}

/// Waits until one of `fds` is readable (a negative fd is ignored). Returns which are.
pub fn poll_readable(fds: &[RawFd]) -> io::Result<Vec<bool>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|&fd| libc::pollfd {
            fd,
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    loop {
        // SAFETY: `pfds` is a valid array of pollfd of the given length.
        let rc = unsafe { libc::poll(pfds.as_mut_ptr(), pfds.len() as libc::nfds_t, -1) };
        if rc >= 0 {
            return Ok(pfds.iter().map(|p| p.revents != 0).collect());
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}
