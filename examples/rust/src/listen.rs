//! The listening socket of a worker that accepts itself: inherited (socket activation), its own
//! socket of a listener the kernel turns, or bound here with SO_REUSEPORT.

use std::io;
use std::mem::size_of;
use std::net::{SocketAddr, TcpListener};
use std::os::fd::{FromRawFd, OwnedFd};

use rcluster_core::{Dispatch, TurnCounter, Worker};

/// Socket activation: fd 3 when `LISTEN_PID` names this process.
pub fn inherited_listener() -> Option<TcpListener> {
    let ours = std::env::var("LISTEN_PID").ok()?.parse::<u32>().ok()? == std::process::id();
    let count: u32 = std::env::var("LISTEN_FDS").ok()?.parse().ok()?;
    if !ours || count == 0 {
        return None;
    }
    // Programs this one starts must not think the sockets are meant for them.
    for var in ["LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"] {
        std::env::remove_var(var);
    }
    // SAFETY: by the socket-activation convention fd 3 is a listening socket handed to us.
    let listener = unsafe { TcpListener::from_raw_fd(3) };
    // The primary may share it in non-blocking mode; this server uses blocking accept.
    listener.set_nonblocking(false).ok()?;
    Some(listener)
}

/// This worker's own socket of a listener the kernel turns, from the primary.
pub struct Turned {
    pub name: String,
    pub listener: TcpListener,
    pub counter: Option<TurnCounter>,
}

/// Asks the primary for this worker's socket of the first listener the kernel turns
/// (`RCLUSTER_TURNS`, names joined by ':'). None when there is none, or the primary gives no
/// socket (it then hands over every connection itself).
pub fn turned_listener(w: &Worker) -> Option<Turned> {
    let turns = std::env::var("RCLUSTER_TURNS").ok()?;
    let name = turns.split(':').find(|n| !n.is_empty())?.to_string();
    let listening = w.listen_counting(&name, Dispatch::RoundRobin).ok()?;
    Some(Turned {
        name,
        listener: TcpListener::from(listening.fd?),
        counter: listening.counter,
    })
}

pub fn bind_reuseport(addr: SocketAddr) -> io::Result<TcpListener> {
    let family = if addr.is_ipv4() {
        libc::AF_INET
    } else {
        libc::AF_INET6
    };
    // SAFETY: plain socket creation; the result is checked.
    let fd = cvt(unsafe { libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: a fresh descriptor nothing else owns.
    let sock = unsafe { OwnedFd::from_raw_fd(fd) };
    let one: libc::c_int = 1;
    for opt in [libc::SO_REUSEADDR, libc::SO_REUSEPORT] {
        let len = size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: `one` outlives the call and `len` is its size.
        cvt(unsafe {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                opt,
                (&one as *const libc::c_int).cast(),
                len,
            )
        })?;
    }
    let (storage, len) = to_sockaddr(addr);
    // SAFETY: `storage` holds a sockaddr of `len` bytes for this family.
    cvt(unsafe { libc::bind(fd, (&storage as *const libc::sockaddr_storage).cast(), len) })?;
    // SAFETY: a bound stream socket.
    cvt(unsafe { libc::listen(fd, 1024) })?;
    Ok(TcpListener::from(sock))
}

fn to_sockaddr(addr: SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data for which all-zero is valid.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match addr {
        SocketAddr::V4(a) => {
            // SAFETY: sockaddr_storage is large and aligned enough for any sockaddr.
            let sin = unsafe {
                &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in>()
            };
            sin.sin_family = libc::AF_INET as libc::sa_family_t;
            sin.sin_port = a.port().to_be();
            sin.sin_addr.s_addr = u32::from(*a.ip()).to_be();
            size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            // SAFETY: as above.
            let sin6 = unsafe {
                &mut *(&mut storage as *mut libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            sin6.sin6_family = libc::AF_INET6 as libc::sa_family_t;
            sin6.sin6_port = a.port().to_be();
            sin6.sin6_addr.s6_addr = a.ip().octets();
            sin6.sin6_scope_id = a.scope_id();
            size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}
