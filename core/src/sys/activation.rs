//! Listening sockets handed to this process by whoever started it, by the socket-activation
//! convention of systemd (`sd_listen_fds(3)`): `LISTEN_PID` names this process, `LISTEN_FDS`
//! says how many descriptors from 3 on are sockets, `LISTEN_FDNAMES` names them
//! (colon-separated). The manager keeps the sockets open while this process restarts, so
//! clients that connect meanwhile wait in the kernel's queue instead of being refused.

use std::ffi::OsStr;
use std::io;
use std::os::fd::RawFd;
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};

use super::cvt;
use super::listen::{local_addr, ListenAddr};
use super::socket_option as sockopt;

/// The first descriptor passed (`SD_LISTEN_FDS_START`).
const FIRST: RawFd = 3;
/// Most descriptors taken: more is a malformed environment, not a real configuration.
const MOST: usize = 1024;

/// The sockets are taken once per process: they are the process's, not one supervisor's.
static TAKEN: AtomicBool = AtomicBool::new(false);

/// One listening socket passed to this process.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Inherited {
    /// Its name in `LISTEN_FDNAMES` (systemd's `FileDescriptorName=`), if one was given.
    pub name: Option<String>,
    /// Where it listens.
    pub addr: ListenAddr,
    /// The descriptor, left open for the life of the process (CLOEXEC from now on): a
    /// supervisor that uses it works on a duplicate of its own.
    pub fd: RawFd,
}

/// The listening sockets passed to this process, the first time it is called and only when
/// `LISTEN_PID` names this process; afterwards, and otherwise, none. A passed descriptor that
/// is not a listening stream socket is an error naming it.
pub fn take_inherited() -> io::Result<Vec<Inherited>> {
    let Some(count) = passed_count() else {
        return Ok(Vec::new());
    };
    if TAKEN.swap(true, Ordering::AcqRel) {
        return Ok(Vec::new());
    }
    let names: Vec<Option<String>> = std::env::var_os("LISTEN_FDNAMES")
        .map(|v| {
            v.as_bytes()
                .split(|&b| b == b':')
                .map(|n| Some(String::from_utf8_lossy(n).into_owned()).filter(|n| !n.is_empty()))
                .collect()
        })
        .unwrap_or_default();
    let mut out = Vec::with_capacity(count);
    for i in 0..count {
        let fd = FIRST + i as RawFd;
        // Not inherited by workers: the primary hands them the sockets it chooses.
        super::set_cloexec(fd)?;
        let addr = listening_addr(fd)?;
        out.push(Inherited {
            name: names.get(i).cloned().flatten(),
            addr,
            fd,
        });
    }
    Ok(out)
}

/// `LISTEN_FDS` when `LISTEN_PID` is this process.
fn passed_count() -> Option<usize> {
    let pid: u32 = std::env::var("LISTEN_PID").ok()?.trim().parse().ok()?;
    if pid != std::process::id() {
        return None;
    }
    let n: usize = std::env::var("LISTEN_FDS").ok()?.trim().parse().ok()?;
    Some(n.min(MOST))
}

/// The address a passed socket listens on; an error unless it is a listening stream socket.
fn listening_addr(fd: RawFd) -> io::Result<ListenAddr> {
    let not_listening = || {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("descriptor {fd} passed in LISTEN_FDS is not a listening stream socket"),
        )
    };
    if sockopt(fd, libc::SO_ACCEPTCONN).map_err(|_| not_listening())? != 1
        || sockopt(fd, libc::SO_TYPE)? != libc::SOCK_STREAM
    {
        return Err(not_listening());
    }
    match sockopt(fd, libc::SO_DOMAIN)? {
        libc::AF_UNIX => unix_path(fd).map(ListenAddr::Unix),
        // The configured address only stands in if getsockname fails; it cannot here.
        _ => Ok(local_addr(fd, &ListenAddr::Tcp(([0, 0, 0, 0], 0).into()))),
    }
}

/// The path of a Unix socket (an abstract one as `@name`).
fn unix_path(fd: RawFd) -> io::Result<PathBuf> {
    // SAFETY: sockaddr_un is plain data.
    let mut sa: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_un>() as libc::socklen_t;
    // SAFETY: `sa` and `len` are live locals; the kernel writes at most `len` bytes.
    cvt(unsafe { libc::getsockname(fd, (&mut sa as *mut libc::sockaddr_un).cast(), &mut len) })?;
    let path_len = (len as usize).saturating_sub(std::mem::size_of::<libc::sa_family_t>());
    let raw: Vec<u8> = sa.sun_path[..path_len.min(sa.sun_path.len())]
        .iter()
        .map(|&c| c as u8)
        .collect();
    let bytes = match raw.split_first() {
        Some((0, rest)) => [b"@", rest].concat(),
        _ => raw.split(|&b| b == 0).next().unwrap_or(&[]).to_vec(),
    };
    Ok(PathBuf::from(OsStr::from_bytes(&bytes)))
}

/// A descriptor of the process's own for a passed socket, CLOEXEC, non-blocking or not.
pub fn duplicate(fd: RawFd, nonblocking: bool) -> io::Result<std::os::fd::OwnedFd> {
    // SAFETY: plain syscall; the new descriptor is owned by nobody else.
    let new = cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, FIRST) })?;
    let owned = super::owned(new);
    // The flag belongs to the open file, which the manager and the next instance share: a
    // `shared` listener stays blocking, as socket-activated servers expect (see `bind`).
    super::set_nonblocking(new, nonblocking)?;
    Ok(owned)
}
