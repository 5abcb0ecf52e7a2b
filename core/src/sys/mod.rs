//! Thin, safe wrappers over the Linux calls rcluster needs. Every fd is opened CLOEXEC.
//!
//! The layer under everything that touches the kernel: this file holds the plain calls; the
//! submodules bind listeners (`listen`), fork and exec workers (`spawn`), steer connections in
//! the kernel (`steer`, the kernel's turns) and end worker groups when the primary dies
//! (`sentinel`). Nothing here knows about workers' states or policy.

pub mod activation;
pub mod children;
pub mod cpus;
pub mod listen;
pub mod notify;
pub mod procstat;
pub mod sentinel;
pub mod spawn;
pub mod steer;

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

/// An integer option of socket `fd` at `SOL_SOCKET` (`SO_TYPE`, `SO_DOMAIN`, ...).
pub(crate) fn socket_option(fd: RawFd, opt: libc::c_int) -> io::Result<libc::c_int> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `v` and `len` are live locals of the sizes passed.
    cvt(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            opt,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    })?;
    Ok(v)
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
    // SAFETY: fcntl on a descriptor the caller owns; no memory is passed.
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
        // SAFETY: `info` is a live local siginfo_t for waitid to fill; the pidfd is the caller's.
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
    children::forget(pid);
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

/// Sends a signal to one process. The caller makes sure `pid` is its unreaped child.
pub fn signal(pid: libc::pid_t, sig: libc::c_int) -> io::Result<()> {
    // SAFETY: plain syscall; no memory is passed.
    cvt(unsafe { libc::kill(pid, sig) }).map(drop)
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
        // SAFETY: `buf` is a live slice of `buf.len()` bytes that send only reads.
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

/// How many descriptors one [`recv_with_fds`] has room for: its 256-byte control buffer less
/// the 16-byte header of the one control message they come in.
pub const FDS_PER_RECV: usize = (256 - 16) / 4;

/// Reads into `buf`; descriptors that arrive are appended to `fds` (CLOEXEC). 0 means EOF.
/// Descriptors cut off by a control buffer too small for them (`MSG_CTRUNC`) are an
/// `InvalidData` error: the bytes of that read are lost, the descriptors that did arrive are
/// in `fds`.
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
            // The caller closes what did arrive (it is in `fds`) along with the link.
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "file descriptors were lost: more arrived with one read than the {FDS_PER_RECV} \
                     there is room for (MSG_CTRUNC)"
                ),
            ));
        }
        Ok(n)
    }
}

/// Reads without blocking; 0 means EOF.
pub fn read(fd: RawFd, buf: &mut [u8]) -> io::Result<usize> {
    // SAFETY: `buf` is a live, exclusively borrowed slice of `buf.len()` bytes for read to fill.
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

/// True once the child behind `pidfd` has exited, without reaping it: it stays a zombie, so
/// its pid (and the process group named after it) cannot be reused until it is reaped.
pub fn has_exited(pidfd: RawFd) -> io::Result<bool> {
    // SAFETY: siginfo_t is plain data; waitid fills it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    retry(|| {
        // SAFETY: `info` is a live local siginfo_t for waitid to fill; the pidfd is the caller's.
        cvt(unsafe {
            libc::waitid(
                libc::P_PIDFD,
                pidfd as libc::id_t,
                &mut info,
                libc::WEXITED | libc::WNOHANG | libc::WNOWAIT,
            )
        })
    })?;
    // SAFETY: si_pid is valid for SIGCHLD-style siginfo filled by waitid (0: still running).
    Ok(unsafe { info.si_pid() } != 0)
}

/// Waits (blocking) until the child behind `pidfd` has exited, and reaps it.
pub fn wait_reap(pidfd: RawFd) -> io::Result<()> {
    // SAFETY: siginfo_t is plain data; waitid fills it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    retry(|| {
        // SAFETY: `info` is a live local siginfo_t for waitid to fill; the pidfd is the caller's.
        cvt(unsafe { libc::waitid(libc::P_PIDFD, pidfd as libc::id_t, &mut info, libc::WEXITED) })
    })?;
    // SAFETY: si_pid is valid for SIGCHLD-style siginfo filled by waitid.
    children::forget(unsafe { info.si_pid() });
    Ok(())
}

/// Reaps an exited group leader and the rest of its group: the group is killed first, while
/// the leader is still an unreaped zombie, because once it is reaped its pid may be given to
/// an unrelated process that then leads a group of the same number. `kill` is the seam for
/// tests; callers pass `kill_group`.
pub fn reap_group(
    pidfd: RawFd,
    pgid: libc::pid_t,
    kill: impl FnOnce(libc::pid_t, libc::c_int),
) -> io::Result<Option<WaitStatus>> {
    if !has_exited(pidfd)? {
        return Ok(None);
    }
    kill(pgid, libc::SIGKILL);
    try_reap(pidfd)
}

/// The soft limit on this process's open descriptors (RLIMIT_NOFILE).
pub fn fd_limit() -> u64 {
    // SAFETY: getrlimit fills the struct it is given.
    let mut l: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `l` is a live local rlimit that getrlimit fills.
    unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut l) };
    l.rlim_cur as u64
}

/// The running kernel's release string (`uname -r`).
pub fn kernel_release() -> String {
    // SAFETY: utsname is plain data; uname fills it with NUL-terminated strings.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is a live local utsname that uname fills.
    if unsafe { libc::uname(&mut u) } < 0 {
        return String::new();
    }
    // SAFETY: the kernel NUL-terminates the field.
    unsafe { std::ffi::CStr::from_ptr(u.release.as_ptr()) }
        .to_string_lossy()
        .into_owned()
}

/// What rcluster needs from the kernel, oldest first: (version, what needs it).
const KERNEL_NEEDS: &[((u32, u32), &str)] = &[
    ((5, 3), "pidfd_open (to watch workers without SIGCHLD)"),
    ((5, 4), "waitid(P_PIDFD) (to reap only its own workers)"),
    (
        (5, 11),
        "close_range(CLOSE_RANGE_CLOEXEC) (so that no descriptor of the host leaks into a worker)",
    ),
];

/// Checks a kernel release string against what rcluster needs; the error names the release
/// and every missing feature.
pub fn check_kernel(release: &str) -> Result<(), String> {
    let mut nums = release
        .split(|c: char| !c.is_ascii_digit())
        .map(|n| n.parse::<u32>().ok());
    let version = match (nums.next().flatten(), nums.next().flatten()) {
        (Some(major), Some(minor)) => (major, minor),
        // An unreadable release (a custom uname) is given the benefit of the doubt: the
        // calls themselves fail later with an error naming them.
        _ => return Ok(()),
    };
    let missing: Vec<String> = KERNEL_NEEDS
        .iter()
        .filter(|(need, _)| version < *need)
        .map(|((major, minor), what)| format!("{major}.{minor} for {what}"))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "Linux {release} is too old for rcluster, which needs 5.11 or newer; missing: {}",
        missing.join("; ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kernels_below_the_floor_are_refused_naming_what_is_missing() {
        assert_eq!(check_kernel("6.18.44-fc-v1272"), Ok(()));
        assert_eq!(check_kernel("5.11.0"), Ok(()));
        let e = check_kernel("5.10.0-28-amd64").unwrap_err();
        assert!(
            e.contains("5.10.0-28-amd64") && e.contains("close_range"),
            "{e}"
        );
        assert!(!e.contains("waitid"), "{e}");
        let e = check_kernel("5.3.18").unwrap_err();
        assert!(
            e.contains("waitid(P_PIDFD)") && e.contains("close_range"),
            "{e}"
        );
        let e = check_kernel("4.19.0").unwrap_err();
        assert!(e.contains("pidfd_open"), "{e}");
    }

    /// Forks a child that leads its own group and exits at once; returns its pid and pidfd
    /// once it is a zombie.
    fn exited_leader() -> (libc::pid_t, OwnedFd) {
        // SAFETY: the child only calls async-signal-safe functions and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: in the forked child of a test: setpgid and _exit are async-signal-safe, and
            // _exit never returns to code that could touch the parent's state.
            unsafe {
                libc::setpgid(0, 0);
                libc::_exit(7)
            }
        }
        // SAFETY: setpgid on the child just forked, which is ours; no memory is passed.
        unsafe { libc::setpgid(pid, pid) };
        let pidfd = pidfd_open(pid).unwrap();
        assert!(poll_one(
            pidfd.as_raw_fd(),
            libc::POLLIN,
            Some(Duration::from_secs(10))
        )
        .unwrap());
        (pid, pidfd)
    }

    #[test]
    fn group_is_killed_while_its_leader_is_still_an_unreaped_zombie() {
        let (pid, pidfd) = exited_leader();
        let mut leader_state = None;
        let status = reap_group(pidfd.as_raw_fd(), pid, |pgid, _| {
            // What the group's pid is at the moment of the kill: the leader's zombie
            // ('Z'), not gone (None) and possibly reused.
            leader_state = std::fs::read_to_string(format!("/proc/{pgid}/stat"))
                .ok()
                .and_then(|s| {
                    s.rsplit_once(')')
                        .map(|(_, r)| r.trim_start()[..1].to_string())
                });
        })
        .unwrap();
        assert_eq!(leader_state.as_deref(), Some("Z"));
        assert_eq!(status.and_then(|s| s.code), Some(7));
        assert!(
            std::fs::metadata(format!("/proc/{pid}")).is_err(),
            "leader not reaped"
        );
    }
}
