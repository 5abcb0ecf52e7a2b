//! Thin, safe wrappers over the Linux calls rcluster needs. Every fd is opened CLOEXEC.

use std::collections::VecDeque;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

fn cvt_size(r: isize) -> io::Result<usize> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r as usize)
    }
}

/// Repeats a call interrupted by a signal (the host may have handlers without SA_RESTART).
fn retry<T>(mut f: impl FnMut() -> io::Result<T>) -> io::Result<T> {
    loop {
        match f() {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

fn owned(fd: libc::c_int) -> OwnedFd {
    // SAFETY: called only with a fd just returned by the kernel and owned by nobody else.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

pub fn timeout_ms(t: Option<Duration>) -> libc::c_int {
    match t {
        None => -1,
        // Round up so that a 100 µs timeout does not become a busy 0 ms poll.
        Some(d) => d.as_micros().div_ceil(1000).min(i32::MAX as u128) as libc::c_int,
    }
}

pub struct Epoll {
    fd: OwnedFd,
}

/// The kernel has no epoll_pwait2: sub-millisecond waits round up to 1 ms.
static NO_PWAIT2: AtomicBool = AtomicBool::new(false);

impl Epoll {
    pub fn new() -> io::Result<Epoll> {
        // SAFETY: plain syscall.
        let fd = cvt(unsafe { libc::epoll_create1(libc::EPOLL_CLOEXEC) })?;
        Ok(Epoll { fd: owned(fd) })
    }

    fn ctl(&self, op: libc::c_int, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        let mut ev = libc::epoll_event { events, u64: token };
        // SAFETY: ev is a valid epoll_event for the duration of the call.
        cvt(unsafe { libc::epoll_ctl(self.fd.as_raw_fd(), op, fd, &mut ev) }).map(drop)
    }

    pub fn add(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_ADD, fd, events, token)
    }

    pub fn modify(&self, fd: RawFd, events: u32, token: u64) -> io::Result<()> {
        self.ctl(libc::EPOLL_CTL_MOD, fd, events, token)
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    pub fn delete(&self, fd: RawFd) {
        // Failure means the fd was never added; nothing to undo.
        let _ = self.ctl(libc::EPOLL_CTL_DEL, fd, 0, 0);
    }

    pub fn wait(
        &self,
        out: &mut Vec<libc::epoll_event>,
        timeout: Option<Duration>,
    ) -> io::Result<()> {
        out.clear();
        let cap = out.capacity().max(64);
        out.reserve(cap);
        let fd = self.fd.as_raw_fd();
        // SAFETY: the kernel writes at most `cap` events into the reserved space.
        let wait_ms = |out: &mut Vec<libc::epoll_event>| unsafe {
            libc::epoll_wait(fd, out.as_mut_ptr(), cap as i32, timeout_ms(timeout))
        };
        let n = match timeout {
            // A wait shorter than a millisecond, or not a whole number of them (a stream of
            // messages gathering for 50 µs), needs epoll_pwait2 (Linux 5.11); without it,
            // the wait is rounded up to whole milliseconds.
            Some(d) if d.subsec_nanos() % 1_000_000 != 0 && !NO_PWAIT2.load(Ordering::Relaxed) => {
                let ts = libc::timespec {
                    tv_sec: d.as_secs().min(i32::MAX as u64) as libc::time_t,
                    tv_nsec: d.subsec_nanos() as libc::c_long,
                };
                // SAFETY: as above; `ts` outlives the call and no signal mask is passed.
                let r = unsafe {
                    libc::syscall(
                        libc::SYS_epoll_pwait2,
                        fd,
                        out.as_mut_ptr(),
                        cap as libc::c_int,
                        &ts as *const libc::timespec,
                        std::ptr::null::<libc::sigset_t>(),
                        0usize,
                    )
                } as libc::c_int;
                if r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS) {
                    NO_PWAIT2.store(true, Ordering::Relaxed);
                    wait_ms(out)
                } else {
                    r
                }
            }
            _ => wait_ms(out),
        };
        match cvt(n) {
            Ok(n) => {
                // SAFETY: n events were initialized by the kernel.
                unsafe { out.set_len(n as usize) };
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => Ok(()),
            Err(e) => Err(e),
        }
    }
}

/// A counter fd: readable while signalled. Used to wake the loop and to tell host loops
/// that events are waiting.
pub struct EventFd {
    fd: OwnedFd,
}

impl EventFd {
    pub fn new() -> io::Result<EventFd> {
        // SAFETY: plain syscall.
        let fd = cvt(unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) })?;
        Ok(EventFd { fd: owned(fd) })
    }

    pub fn notify(&self) {
        let one: u64 = 1;
        // SAFETY: writes 8 bytes from a valid u64. EAGAIN (counter saturated) still leaves it
        // readable, which is all a notification means.
        unsafe { libc::write(self.fd.as_raw_fd(), (&one as *const u64).cast(), 8) };
    }

    pub fn clear(&self) {
        let mut v: u64 = 0;
        // SAFETY: reads 8 bytes into a valid u64; EAGAIN means it was already clear.
        unsafe { libc::read(self.fd.as_raw_fd(), (&mut v as *mut u64).cast(), 8) };
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }
}

pub fn socketpair() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    cvt(unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    })?;
    Ok((owned(fds[0]), owned(fds[1])))
}

pub fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    cvt(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) })?;
    Ok((owned(fds[0]), owned(fds[1])))
}

pub fn set_nonblocking(fd: RawFd, on: bool) -> io::Result<()> {
    // SAFETY: fcntl on a fd the caller owns.
    let flags = cvt(unsafe { libc::fcntl(fd, libc::F_GETFL) })?;
    let flags = if on {
        flags | libc::O_NONBLOCK
    } else {
        flags & !libc::O_NONBLOCK
    };
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFL, flags) }).map(drop)
}

pub fn set_cloexec(fd: RawFd) -> io::Result<()> {
    // SAFETY: fcntl on a fd the caller owns.
    cvt(unsafe { libc::fcntl(fd, libc::F_SETFD, libc::FD_CLOEXEC) }).map(drop)
}

/// Moves the calling thread (only it: Linux schedules threads, not processes) from the
/// normal policy to `SCHED_BATCH`. True when it did; a thread under any other policy (one the
/// host chose: real-time, idle, batch already) is left as it is.
pub fn enter_batch_scheduling() -> bool {
    let param = zero_sched_param();
    // SAFETY: plain syscalls on the calling thread with a valid parameter block.
    unsafe {
        libc::sched_getscheduler(0) == libc::SCHED_OTHER
            && libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) == 0
    }
}

/// Back to the normal policy, in a child forked by a thread that entered batch scheduling
/// (a policy survives fork and exec; `SCHED_RESET_ON_FORK` resets only real-time ones).
/// Async-signal-safe.
pub fn leave_batch_scheduling() {
    let param = zero_sched_param();
    // SAFETY: plain syscall on the calling thread with a valid parameter block.
    unsafe { libc::sched_setscheduler(0, libc::SCHED_OTHER, &param) };
}

/// A priority-0 parameter block. Not a struct literal: musl's `sched_param` has more fields
/// than glibc's (so that the static musl build of the command compiles); all are zero here.
fn zero_sched_param() -> libc::sched_param {
    // SAFETY: sched_param is plain integers, for which all-zero is a valid value.
    unsafe { std::mem::zeroed() }
}

pub fn pidfd_open(pid: libc::pid_t) -> io::Result<OwnedFd> {
    // SAFETY: plain syscall; pidfds are always CLOEXEC.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid, 0) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(owned(fd as libc::c_int))
}

/// How a process ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WaitStatus {
    pub code: Option<i32>,
    pub signal: Option<i32>,
}

/// Reaps the child behind `pidfd` if it has exited. Only this child: never `waitpid(-1)`.
pub fn try_reap(pidfd: RawFd) -> io::Result<Option<WaitStatus>> {
    // SAFETY: siginfo_t is plain data; waitid fills it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    retry(|| {
        cvt(unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG,
            )
        })
    })?;
    // SAFETY: si_pid/si_status are valid for SIGCHLD-style siginfo filled by waitid.
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(match info.si_code {
        libc::CLD_EXITED => WaitStatus {
            code: Some(status),
            signal: None,
        },
        _ => WaitStatus {
            code: None,
            signal: Some(status),
        },
    }))
}

/// Sends a signal to a whole process group (the worker and its children).
pub fn kill_group(pgid: libc::pid_t, sig: libc::c_int) {
    // SAFETY: plain syscall. ESRCH (already gone) is fine.
    unsafe { libc::kill(-pgid, sig) };
}

/// Writes without blocking and without SIGPIPE (the host may not ignore it).
pub fn send(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    retry(|| {
        // SAFETY: buf is valid for len bytes.
        cvt_size(unsafe {
            libc::send(
                fd,
                buf.as_ptr().cast(),
                buf.len(),
                libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT,
            )
        })
    })
}

/// Blocking variant of `send` for the worker side.
pub fn send_blocking(fd: RawFd, buf: &[u8]) -> io::Result<usize> {
    retry(|| {
        cvt_size(unsafe { libc::send(fd, buf.as_ptr().cast(), buf.len(), libc::MSG_NOSIGNAL) })
    })
}

/// Most descriptors attached to one write: [`recv_with_fds`] has room for 60 per read.
pub const FDS_PER_SEND: usize = 16;

/// Sends `buf` with up to [`FDS_PER_SEND`] descriptors attached; they all arrive with the
/// first byte, in order, even when only part of `buf` is written.
pub fn send_with_fds(fd: RawFd, buf: &[u8], pass: &[RawFd], blocking: bool) -> io::Result<usize> {
    assert!(!pass.is_empty() && pass.len() <= FDS_PER_SEND);
    let mut iov = libc::iovec {
        iov_base: buf.as_ptr() as *mut _,
        iov_len: buf.len(),
    };
    // CMSG_SPACE of FDS_PER_SEND descriptors, 8-byte aligned.
    let mut space = [0u64; (16 + 4 * FDS_PER_SEND).div_ceil(8)];
    let bytes = (4 * pass.len()) as u32;
    // SAFETY: msghdr/cmsghdr are built inside `space`, which is large and aligned enough for
    // FDS_PER_SEND descriptors (asserted above).
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = space.as_mut_ptr().cast();
        msg.msg_controllen = libc::CMSG_SPACE(bytes) as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(bytes) as _;
        let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
        for (i, &p) in pass.iter().enumerate() {
            std::ptr::write_unaligned(data.add(i), p);
        }
        let flags = libc::MSG_NOSIGNAL | if blocking { 0 } else { libc::MSG_DONTWAIT };
        retry(|| cvt_size(libc::sendmsg(fd, &msg, flags)))
    }
}

/// Reads into `buf`; descriptors that arrive are appended to `fds` (CLOEXEC). 0 means EOF.
pub fn recv_with_fds(
    fd: RawFd,
    buf: &mut [u8],
    fds: &mut VecDeque<OwnedFd>,
    blocking: bool,
) -> io::Result<usize> {
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    let mut space = [0u64; 256 / 8];
    // SAFETY: the control buffer is aligned and its size given; the kernel writes within it.
    unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = space.as_mut_ptr().cast();
        msg.msg_controllen = std::mem::size_of_val(&space) as _;
        let flags = libc::MSG_CMSG_CLOEXEC | if blocking { 0 } else { libc::MSG_DONTWAIT };
        let n = retry(|| cvt_size(libc::recvmsg(fd, &mut msg, flags)))?;
        // Descriptors that did not fit were closed by the kernel: the stream's fd bookkeeping
        // is lost, so the peer must be treated as broken (after keeping what did arrive).
        let truncated = msg.msg_flags & libc::MSG_CTRUNC != 0;
        let mut cmsg = libc::CMSG_FIRSTHDR(&msg);
        while !cmsg.is_null() {
            if (*cmsg).cmsg_level == libc::SOL_SOCKET && (*cmsg).cmsg_type == libc::SCM_RIGHTS {
                let data = libc::CMSG_DATA(cmsg).cast::<RawFd>();
                let count = ((*cmsg).cmsg_len as usize - libc::CMSG_LEN(0) as usize) / 4;
                for i in 0..count {
                    fds.push_back(owned(std::ptr::read_unaligned(data.add(i))));
                }
            }
            cmsg = libc::CMSG_NXTHDR(&msg, cmsg);
        }
        if truncated {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "too many file descriptors in one read",
            ));
        }
        Ok(n)
    }
}

/// Reads without blocking; 0 means EOF.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    retry(|| cvt_size(unsafe { libc::read(fd, buf.as_mut_ptr().cast(), buf.len()) }))
}

/// Waits until `fd` has one of `events`; false on timeout.
pub fn poll_one(fd: RawFd, events: libc::c_short, timeout: Option<Duration>) -> io::Result<bool> {
    let mut p = libc::pollfd {
        fd,
        events,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    let n = retry(|| cvt(unsafe { libc::poll(&mut p, 1, timeout_ms(timeout)) }))?;
    Ok(n > 0)
}

/// Number of open descriptors of this process (for leak checks).
pub fn open_fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count().saturating_sub(1))
        .unwrap_or(0)
}
