//! Listening sockets bound by the primary: addresses, binding, accepting.

use std::ffi::CString;
use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::str::FromStr;

use crate::error::{Error, Result};

/// Where a listener listens.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ListenAddr {
    Tcp(SocketAddr),
    Unix(PathBuf),
}

impl FromStr for ListenAddr {
    type Err = Error;

    /// `127.0.0.1:8080`, `[::1]:8080`, `:8080` (all IPv4 addresses), `unix:/path/to.sock`, or
    /// `HOST:PORT` with a host name that resolves to exactly one address (resolved here, once;
    /// [`resolve_listen`] takes a name with several addresses).
    fn from_str(s: &str) -> Result<ListenAddr> {
        let mut addrs = resolve_listen(s)?;
        if addrs.len() > 1 {
            let all: Vec<String> = addrs.iter().map(ToString::to_string).collect();
            return Err(Error::config(
                "listen",
                s,
                format!(
                    "the host name resolves to {}: give one of them, or one listener for each",
                    all.join(" and ")
                ),
            ));
        }
        Ok(addrs.remove(0))
    }
}

/// Every address `s` stands for, each to be bound by a listener of its own: the forms of
/// [`ListenAddr`]'s `from_str`, and `HOST:PORT` with a host name, which is resolved now, once
/// (the system resolver: /etc/hosts, DNS), into its distinct addresses in the resolver's
/// order (`localhost:8080` is `127.0.0.1:8080` and, where the system maps it too,
/// `[::1]:8080`). Never empty.
pub fn resolve_listen(s: &str) -> Result<Vec<ListenAddr>> {
    const EXPECTED: &str = "expected HOST:PORT, [IPv6]:PORT, :PORT or unix:/path";
    if let Some(path) = s.strip_prefix("unix:") {
        return unix_addr(s, path).map(|a| vec![a]);
    }
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_string()
    };
    if let Ok(sa) = full.parse::<SocketAddr>() {
        return Ok(vec![ListenAddr::Tcp(sa)]);
    }
    // A host name: letters, digits, '-' and '.', then a numeric port. Anything else (an
    // unbracketed IPv6 address, a service name for the port) stays a syntax error.
    let Some((host, port)) = s.rsplit_once(':') else {
        return Err(Error::config("listen", s, EXPECTED));
    };
    let is_name = !host.is_empty()
        && host
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.');
    let Ok(port) = port.parse::<u16>() else {
        return Err(Error::config("listen", s, EXPECTED));
    };
    if !is_name {
        return Err(Error::config("listen", s, EXPECTED));
    }
    resolve_host(s, host, port)
}

/// `unix:PATH` (`s`, for errors) as an address: a path that fits `sockaddr_un`.
fn unix_addr(s: &str, path: &str) -> Result<ListenAddr> {
    if path.is_empty() {
        return Err(Error::config(
            "listen",
            s,
            "a Unix socket needs a path after 'unix:'",
        ));
    }
    if path.len() >= 108 {
        return Err(Error::config(
            "listen",
            s,
            "a Unix socket path must be shorter than 108 bytes",
        ));
    }
    Ok(ListenAddr::Unix(PathBuf::from(path)))
}

/// The distinct addresses the system resolver gives for `host` (of `s`, for errors), in its
/// order, each with `port`; never empty.
fn resolve_host(s: &str, host: &str, port: u16) -> Result<Vec<ListenAddr>> {
    let resolved = std::net::ToSocketAddrs::to_socket_addrs(&(host, port)).map_err(|e| {
        Error::config(
            "listen",
            s,
            format!("cannot resolve the host name {host}: {e}"),
        )
    })?;
    let mut addrs: Vec<ListenAddr> = Vec::new();
    for sa in resolved {
        let a = ListenAddr::Tcp(sa);
        if !addrs.contains(&a) {
            addrs.push(a);
        }
    }
    if addrs.is_empty() {
        return Err(Error::config(
            "listen",
            s,
            format!("the host name {host} resolves to no address"),
        ));
    }
    Ok(addrs)
}

impl fmt::Display for ListenAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ListenAddr::Tcp(a) => write!(f, "{a}"),
            ListenAddr::Unix(p) => write!(f, "unix:{}", p.display()),
        }
    }
}

/// How a listener's connections reach workers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dispatch {
    /// The primary accepts and hands connections to ready workers in turn.
    RoundRobin,
    /// The primary accepts and hands each connection to the worker with the fewest open ones.
    LeastConnections,
    /// The same client address always reaches the same worker slot.
    Sticky,
    /// Workers inherit the socket (fds 3.., `LISTEN_FDS`) and accept themselves.
    Shared,
}

impl Dispatch {
    /// The byte that names the mode in a LISTEN frame.
    pub fn to_u8(self) -> u8 {
        match self {
            Dispatch::RoundRobin => 0,
            Dispatch::LeastConnections => 1,
            Dispatch::Sticky => 2,
            Dispatch::Shared => 3,
        }
    }

    pub fn from_u8(b: u8) -> Option<Dispatch> {
        Some(match b {
            0 => Dispatch::RoundRobin,
            1 => Dispatch::LeastConnections,
            2 => Dispatch::Sticky,
            3 => Dispatch::Shared,
            _ => return None,
        })
    }
}

impl FromStr for Dispatch {
    type Err = Error;

    fn from_str(s: &str) -> Result<Dispatch> {
        Ok(match s {
            "rr" | "round-robin" => Dispatch::RoundRobin,
            "least-conn" | "least-connections" => Dispatch::LeastConnections,
            "sticky" => Dispatch::Sticky,
            "shared" => Dispatch::Shared,
            _ => {
                return Err(Error::config(
                    "dispatch",
                    s,
                    "expected rr, least-conn, sticky or shared",
                ))
            }
        })
    }
}

/// One listener of a supervisor.
#[derive(Debug, Clone, PartialEq)]
pub struct Listener {
    /// Name given to workers with each connection (and in `LISTEN_FDNAMES`).
    pub name: String,
    pub addr: ListenAddr,
    pub dispatch: Dispatch,
    /// Share the TCP address with other processes that bind it with `SO_REUSEPORT` too (a
    /// second cluster started with `share`, a server outside rcluster): the kernel spreads
    /// new connections over all of them. Off (the default), starting fails when anything else
    /// listens on the address, so that a second cluster cannot silently take the traffic.
    /// A shared listener is never turned by the kernel (see `Config::kernel_round_robin`).
    pub share: bool,
    /// An open listening socket to use instead of binding `addr`: one passed to this process
    /// by a service manager (see `Config::use_inherited_listeners`). The supervisor works on
    /// a duplicate and leaves the socket itself listening when it stops, so that clients
    /// wait in its queue for the next primary.
    pub fd: Option<RawFd>,
}

impl Listener {
    pub fn new(name: impl Into<String>, addr: ListenAddr, dispatch: Dispatch) -> Listener {
        Listener {
            name: name.into(),
            addr,
            dispatch,
            share: false,
            fd: None,
        }
    }
}

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

const BACKLOG: libc::c_int = 1024;

/// Binds and listens, CLOEXEC. The error names the address. A listener the primary accepts on
/// is non-blocking; a `shared` one stays blocking, because the flag belongs to the open file
/// that workers inherit and socket-activated servers expect a blocking socket, as systemd
/// hands them. With `share`, a TCP listener is bound with `SO_REUSEPORT`, next to whatever
/// else listens there with it; without, an address anything listens on is refused.
pub fn bind(addr: &ListenAddr, dispatch: Dispatch, share: bool) -> Result<OwnedFd> {
    let fail = |e: io::Error| Error::Bind {
        addr: addr.to_string(),
        source: e,
    };
    let nonblocking = dispatch != Dispatch::Shared;
    match addr {
        ListenAddr::Tcp(sa) => bind_tcp(sa, nonblocking, share).map_err(fail),
        ListenAddr::Unix(path) => bind_unix(path, nonblocking).map_err(fail),
    }
}

/// Fails with EADDRINUSE when anything listens on `sa`, even with `SO_REUSEPORT` (another
/// cluster's group of the kernel's turns, a server started with it): a socket bound without
/// it conflicts with every listener of the address. Binding a group's first socket with
/// `SO_REUSEPORT` would instead join theirs, and attaching our program would take their
/// traffic. Port 0 always gets a port of its own.
pub fn ensure_free(sa: &SocketAddr) -> io::Result<()> {
    if sa.port() == 0 {
        return Ok(());
    }
    let (storage, len) = sockaddr_from(sa);
    let probe = socket(storage.ss_family as libc::c_int, true)?;
    // Connections of an earlier run in TIME_WAIT are no conflict, as for the real bind.
    set_int_opt(probe.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if sa.is_ipv6() {
        set_int_opt(probe.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    // SAFETY: storage holds a valid sockaddr of `len` bytes.
    cvt(unsafe {
        libc::bind(
            probe.as_raw_fd(),
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    })
    .map(drop)
}

fn socket(domain: libc::c_int, nonblocking: bool) -> io::Result<OwnedFd> {
    let flags =
        libc::SOCK_STREAM | libc::SOCK_CLOEXEC | if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
    // SAFETY: plain syscall; the fd is owned right away.
    let fd = cvt(unsafe { libc::socket(domain, flags, 0) })?;
    // SAFETY: socket just returned this descriptor, which nothing else owns.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn set_int_opt(fd: RawFd, level: libc::c_int, opt: libc::c_int, v: libc::c_int) -> io::Result<()> {
    // SAFETY: passes a valid c_int of the size given.
    cvt(unsafe { libc::setsockopt(fd, level, opt, (&v as *const libc::c_int).cast(), 4) }).map(drop)
}

/// A non-blocking TCP listener with `SO_REUSEPORT`, one of a group on the same address (see
/// `steer`).
pub fn bind_reuseport(sa: &SocketAddr) -> io::Result<OwnedFd> {
    bind_tcp(sa, true, true)
}

fn bind_tcp(sa: &SocketAddr, nonblocking: bool, reuseport: bool) -> io::Result<OwnedFd> {
    let (storage, len) = sockaddr_from(sa);
    let fd = socket(storage.ss_family as libc::c_int, nonblocking)?;
    // Rebinding right after a restart of the primary must not fail on TIME_WAIT connections.
    set_int_opt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
    if reuseport {
        set_int_opt(fd.as_raw_fd(), libc::SOL_SOCKET, libc::SO_REUSEPORT, 1)?;
    }
    if sa.is_ipv6() {
        set_int_opt(fd.as_raw_fd(), libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, 1)?;
    }
    // SAFETY: storage holds a valid sockaddr of `len` bytes.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&storage as *const libc::sockaddr_storage).cast(),
            len,
        )
    })?;
    // SAFETY: listen on a descriptor `fd` owns; no memory is passed.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), BACKLOG) })?;
    Ok(fd)
}

fn bind_unix(path: &Path, nonblocking: bool) -> io::Result<OwnedFd> {
    let sun = sockaddr_un(path)?;
    let first = bind_unix_once(&sun, nonblocking);
    match first {
        Err(e) if e.raw_os_error() == Some(libc::EADDRINUSE) => {
            // A file is in the way: the socket of a primary that was killed (nothing removed
            // it) is taken over, as servers do; anything else is left alone.
            take_over_stale(path, &sun)?;
            bind_unix_once(&sun, nonblocking)
        }
        other => other,
    }
}

/// Removes the Unix socket file at `path` when nothing accepts on it any more; otherwise says
/// why it stays.
fn take_over_stale(path: &Path, sun: &(libc::sockaddr_un, libc::socklen_t)) -> io::Result<()> {
    use std::os::unix::fs::FileTypeExt;
    let meta = std::fs::symlink_metadata(path)?;
    if !meta.file_type().is_socket() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            "the path exists and is not a socket (left as it is)",
        ));
    }
    // Non-blocking, so that a live listener with a full backlog answers EAGAIN instead of
    // making us wait; only a refusal means nobody listens.
    let probe = socket(libc::AF_UNIX, true)?;
    // SAFETY: sun is a valid sockaddr_un of the given length.
    let r = unsafe {
        libc::connect(
            probe.as_raw_fd(),
            (&sun.0 as *const libc::sockaddr_un).cast(),
            sun.1,
        )
    };
    let refused = r < 0 && io::Error::last_os_error().raw_os_error() == Some(libc::ECONNREFUSED);
    if !refused {
        return Err(io::Error::new(
            io::ErrorKind::AddrInUse,
            "address in use: a live listener accepts on this socket",
        ));
    }
    std::fs::remove_file(path)
}

fn sockaddr_un(path: &Path) -> io::Result<(libc::sockaddr_un, libc::socklen_t)> {
    // SAFETY: sockaddr_un is plain data.
    let mut sun: libc::sockaddr_un = unsafe { std::mem::zeroed() };
    sun.sun_family = libc::AF_UNIX as libc::sa_family_t;
    let bytes = path.as_os_str().as_bytes();
    if bytes.len() >= sun.sun_path.len() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "path too long for a Unix socket",
        ));
    }
    for (d, s) in sun.sun_path.iter_mut().zip(bytes) {
        *d = *s as libc::c_char;
    }
    let len = (std::mem::size_of::<libc::sa_family_t>() + bytes.len() + 1) as libc::socklen_t;
    Ok((sun, len))
}

fn bind_unix_once(
    sun: &(libc::sockaddr_un, libc::socklen_t),
    nonblocking: bool,
) -> io::Result<OwnedFd> {
    let fd = socket(libc::AF_UNIX, nonblocking)?;
    // SAFETY: sun is a valid sockaddr_un of the given length.
    cvt(unsafe {
        libc::bind(
            fd.as_raw_fd(),
            (&sun.0 as *const libc::sockaddr_un).cast(),
            sun.1,
        )
    })?;
    // SAFETY: listen on a descriptor `fd` owns; no memory is passed.
    cvt(unsafe { libc::listen(fd.as_raw_fd(), BACKLOG) })?;
    Ok(fd)
}

/// Keeps new connections out of a listening socket while what is already queued in it can
/// still be accepted: the first step of a graceful stop. Closing the socket instead would
/// reset every connection in its queue, which clients already count as accepted.
///
/// TCP: a classic BPF socket filter that drops SYN segments (the client retries, and once the
/// socket is closed it is refused) and lets everything else through. Dropping every segment
/// would be simpler but loses more: the last ACK of a handshake under way would be dropped,
/// and a connection whose handshake completes while the filter goes on would inherit the
/// filter (a new connection's socket is a copy of the listener's) and never receive a byte.
/// The filter belongs to the socket, so it also holds for the copies workers have.
/// Unix: shut down for reading, after which connecting is refused and the queue stays
/// acceptable.
pub fn refuse_new_connections(fd: RawFd, addr: &ListenAddr) -> io::Result<()> {
    match addr {
        ListenAddr::Tcp(_) => attach_filter(fd, &mut drop_syn()),
        ListenAddr::Unix(_) => stop_listening(fd),
    }
}

/// The filter runs with the packet starting at the TCP header: byte 13 holds the flags.
fn drop_syn() -> [libc::sock_filter; 5] {
    const SYN: u32 = 0x02;
    const ACK: u32 = 0x10;
    let op = |code: u32, jt: u8, jf: u8, k: u32| libc::sock_filter {
        code: code as u16,
        jt,
        jf,
        k,
    };
    [
        op(libc::BPF_LD | libc::BPF_B | libc::BPF_ABS, 0, 0, 13), // A = flags
        op(libc::BPF_ALU | libc::BPF_AND | libc::BPF_K, 0, 0, SYN | ACK),
        op(libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K, 0, 1, SYN), // a SYN alone?
        op(libc::BPF_RET | libc::BPF_K, 0, 0, 0),                   // drop
        op(libc::BPF_RET | libc::BPF_K, 0, 0, u32::MAX),            // keep all of it
    ]
}

fn attach_filter(fd: RawFd, insns: &mut [libc::sock_filter]) -> io::Result<()> {
    let prog = libc::sock_fprog {
        len: insns.len() as u16,
        filter: insns.as_mut_ptr(),
    };
    // SAFETY: prog points at valid instructions for the duration of the call; the kernel
    // copies them.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_ATTACH_FILTER,
            (&prog as *const libc::sock_fprog).cast(),
            std::mem::size_of::<libc::sock_fprog>() as libc::socklen_t,
        )
    })
    .map(drop)
}

/// Makes a listening socket stop listening for every process that holds it (a TCP socket
/// leaves the listening state, its queue is reset; connecting to a Unix one is refused).
/// Only for sockets no worker accepts on.
pub fn stop_listening(fd: RawFd) -> io::Result<()> {
    // SAFETY: plain syscall on a descriptor we own.
    cvt(unsafe { libc::shutdown(fd, libc::SHUT_RD) }).map(drop)
}

/// How many TCP connections to one of `ports` on this host are in their handshake
/// (`SYN_RECV`), as `/proc/net/tcp` and `/proc/net/tcp6` list them; 0 where they cannot be
/// read.
pub fn handshakes_under_way(ports: &[u16]) -> usize {
    ["/proc/net/tcp", "/proc/net/tcp6"]
        .iter()
        .filter_map(|f| std::fs::read_to_string(f).ok())
        .map(|text| syn_recv_on(&text, ports))
        .sum()
}

/// The `SYN_RECV` entries (state `03`) of a `/proc/net/tcp` listing whose local port is one
/// of `ports`.
fn syn_recv_on(text: &str, ports: &[u16]) -> usize {
    text.lines()
        .skip(1)
        .filter(|line| {
            let mut f = line.split_whitespace();
            let (Some(_), Some(local), Some(_), Some(state)) =
                (f.next(), f.next(), f.next(), f.next())
            else {
                return false;
            };
            let port = local
                .rsplit(':')
                .next()
                .and_then(|p| u16::from_str_radix(p, 16).ok());
            state == "03" && port.is_some_and(|p| ports.contains(&p))
        })
        .count()
}

/// Whether listening socket `fd` has connections waiting to be accepted (looked at without
/// waiting). A worker that stops takes them before it closes or leaves its listener: closing a
/// listening socket resets the connections still queued in it, which the kernel had already
/// accepted for the clients.
pub fn listener_has_queued(fd: RawFd) -> bool {
    let mut pfd = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd for the duration of the call; a zero timeout never blocks.
    let n = unsafe { libc::poll(&mut pfd, 1, 0) };
    n == 1 && pfd.revents & libc::POLLIN != 0
}

/// Removes a Unix socket file the primary created.
pub fn unlink_unix(addr: &ListenAddr) {
    if let ListenAddr::Unix(path) = addr {
        if let Ok(c) = CString::new(path.as_os_str().as_bytes()) {
            // SAFETY: valid C string.
            unsafe { libc::unlink(c.as_ptr()) };
        }
    }
}

fn sockaddr_from(sa: &SocketAddr) -> (libc::sockaddr_storage, libc::socklen_t) {
    // SAFETY: sockaddr_storage is plain data, large enough for both families.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let len = match sa {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from_ne_bytes(a.ip().octets()),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: sockaddr_in fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin) };
            std::mem::size_of::<libc::sockaddr_in>()
        }
        SocketAddr::V6(a) => {
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
            };
            // SAFETY: sockaddr_in6 fits in sockaddr_storage.
            unsafe { std::ptr::write((&mut storage as *mut libc::sockaddr_storage).cast(), sin6) };
            std::mem::size_of::<libc::sockaddr_in6>()
        }
    };
    (storage, len as libc::socklen_t)
}

/// The peer of an accepted connection: its text form and the client address alone (no port),
/// which is what sticky dispatch hashes.
pub struct Peer {
    pub text: String,
    pub ip: Option<IpAddr>,
}

/// Accepts one connection from `listener` (CLOEXEC; non-blocking if asked), or None when none
/// is waiting. A connection reset while it waited is skipped for the next one. An interrupted
/// call is returned (`ErrorKind::Interrupted`): the caller decides whether to look again.
pub fn accept_connection(listener: RawFd, nonblocking: bool) -> io::Result<Option<OwnedFd>> {
    let flags = libc::SOCK_CLOEXEC | if nonblocking { libc::SOCK_NONBLOCK } else { 0 };
    loop {
        // SAFETY: accept4 on a descriptor the caller keeps open; no address is asked for.
        let fd =
            unsafe { libc::accept4(listener, std::ptr::null_mut(), std::ptr::null_mut(), flags) };
        if fd >= 0 {
            // SAFETY: a new descriptor from the kernel, owned from here on.
            return Ok(Some(unsafe { OwnedFd::from_raw_fd(fd) }));
        }
        let e = io::Error::last_os_error();
        match e.raw_os_error() {
            Some(libc::EAGAIN) => return Ok(None),
            Some(libc::ECONNABORTED | libc::EPROTO) => continue,
            _ => return Err(e),
        }
    }
}

/// Accepts one connection (blocking mode, CLOEXEC), or None when none is waiting.
pub fn accept(listener: RawFd) -> io::Result<Option<(OwnedFd, Peer)>> {
    // SAFETY: sockaddr_storage is plain data; accept4 writes at most `len` bytes into it.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // Without SOCK_NONBLOCK: the worker gets an ordinary blocking socket, as accept(2) gives.
    // SAFETY: `storage` and `len` are live locals; accept4 writes at most `len` bytes into
    // `storage` and the new length into `len`.
    let fd = unsafe {
        libc::accept4(
            listener,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
            libc::SOCK_CLOEXEC,
        )
    };
    if fd < 0 {
        let e = io::Error::last_os_error();
        return match e.kind() {
            io::ErrorKind::WouldBlock => Ok(None),
            // The connection went away before it was accepted: try the next one.
            _ if matches!(e.raw_os_error(), Some(libc::ECONNABORTED | libc::EPROTO)) => {
                accept(listener)
            }
            _ => Err(e),
        };
    }
    // SAFETY: a new fd from the kernel.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    Ok(Some((fd, peer_of(&storage))))
}

fn peer_of(storage: &libc::sockaddr_storage) -> Peer {
    match storage.ss_family as libc::c_int {
        libc::AF_INET => {
            // SAFETY: the family says it is a sockaddr_in.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = IpAddr::from(sin.sin_addr.s_addr.to_ne_bytes());
            let sa = SocketAddr::new(ip, u16::from_be(sin.sin_port));
            Peer {
                text: sa.to_string(),
                ip: Some(ip),
            }
        }
        libc::AF_INET6 => {
            // SAFETY: the family says it is a sockaddr_in6.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = IpAddr::from(sin6.sin6_addr.s6_addr);
            let sa = SocketAddr::new(ip, u16::from_be(sin6.sin6_port));
            Peer {
                text: sa.to_string(),
                ip: Some(ip),
            }
        }
        _ => Peer {
            text: "unix".into(),
            ip: None,
        },
    }
}

/// Whether `fd` is a connection as a listener on `addr` accepts them: a stream socket of its
/// family that does not listen (what a worker may give back as one).
pub fn is_connection_for(fd: RawFd, addr: &ListenAddr) -> bool {
    let family = match addr {
        ListenAddr::Tcp(SocketAddr::V4(_)) => libc::AF_INET,
        ListenAddr::Tcp(SocketAddr::V6(_)) => libc::AF_INET6,
        ListenAddr::Unix(_) => libc::AF_UNIX,
    };
    let option = |opt| super::socket_option(fd, opt).ok();
    option(libc::SO_TYPE) == Some(libc::SOCK_STREAM)
        && option(libc::SO_DOMAIN) == Some(family)
        && option(libc::SO_ACCEPTCONN) == Some(0)
}

/// The address a bound listener actually has (port 0 resolved).
pub fn local_addr(fd: RawFd, configured: &ListenAddr) -> ListenAddr {
    let ListenAddr::Tcp(_) = configured else {
        return configured.clone();
    };
    // SAFETY: as in accept.
    let mut storage: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` and `len` are live locals; getsockname writes at most `len` bytes
    // into `storage` and the length into `len`.
    if unsafe {
        libc::getsockname(
            fd,
            (&mut storage as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    } < 0
    {
        return configured.clone();
    }
    let peer = peer_of(&storage);
    peer.text
        .parse()
        .map(ListenAddr::Tcp)
        .unwrap_or_else(|_| configured.clone())
}

#[cfg(test)]
mod tests {

    #[test]
    fn handshakes_under_way_are_the_syn_recv_entries_of_the_ports_asked_for() {
        let text = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt
   0: 0100007F:1F90 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0 0 1
   1: 0100007F:1F90 0100007F:C350 03 00000000:00000000 02:00000064 00000000     0 0 0
   2: 00000000:1F90 0200007F:C351 03 00000000:00000000 02:00000064 00000000     0 0 0
   3: 0100007F:1F91 0100007F:C352 03 00000000:00000000 02:00000064 00000000     0 0 0
   4: 0100007F:C353 0100007F:1F90 03 00000000:00000000 02:00000064 00000000     0 0 0
   5: 0100007F:1F90 0100007F:C354 01 00000000:00000000 00:00000000 00000000     0 0 2
   6: garbage
";
        // Port 8080 (1F90): two in SYN_RECV; not the listening one, the established one, the
        // other port's, or a connection from 8080 elsewhere.
        assert_eq!(syn_recv_on(text, &[8080]), 2);
        assert_eq!(syn_recv_on(text, &[8080, 8081]), 3);
        assert_eq!(syn_recv_on(text, &[9]), 0);
        assert_eq!(syn_recv_on("", &[8080]), 0);
        // This host's own listing reads (a listener of this test, no handshake under way).
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let _c = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
        assert_eq!(handshakes_under_way(&[port]), 0);
    }
    use super::*;

    #[test]
    fn addresses_parse_and_bad_ones_are_named() {
        assert_eq!(
            "127.0.0.1:80".parse::<ListenAddr>().unwrap().to_string(),
            "127.0.0.1:80"
        );
        assert_eq!(
            "[::1]:80".parse::<ListenAddr>().unwrap().to_string(),
            "[::1]:80"
        );
        assert_eq!(
            ":80".parse::<ListenAddr>().unwrap().to_string(),
            "0.0.0.0:80"
        );
        assert_eq!(
            "unix:/tmp/x.sock"
                .parse::<ListenAddr>()
                .unwrap()
                .to_string(),
            "unix:/tmp/x.sock"
        );
        let e = "localhost:http"
            .parse::<ListenAddr>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("listen") && e.contains("localhost:http"), "{e}");
        let e = "no-such-host.invalid:80"
            .parse::<ListenAddr>()
            .unwrap_err()
            .to_string();
        assert!(e.contains("no-such-host.invalid"), "{e}");
        assert!("nope"
            .parse::<Dispatch>()
            .unwrap_err()
            .to_string()
            .contains("nope"));
    }

    #[test]
    fn a_host_name_resolves_once_to_its_loopback_addresses() {
        let addrs = resolve_listen("localhost:8080").unwrap();
        assert!(!addrs.is_empty());
        for a in &addrs {
            match a {
                ListenAddr::Tcp(sa) => assert!(sa.ip().is_loopback() && sa.port() == 8080, "{sa}"),
                ListenAddr::Unix(p) => panic!("{}", p.display()),
            }
        }
        assert_eq!(resolve_listen("127.0.0.1:80").unwrap().len(), 1);
    }

    #[test]
    fn accept_connection_gives_none_when_empty_and_the_blocking_mode_asked_for() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        let fd = l.as_raw_fd();
        assert!(accept_connection(fd, true).unwrap().is_none());
        let _a = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let _b = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        // SAFETY: F_GETFL on a live descriptor.
        let flags = |c: &OwnedFd| unsafe { libc::fcntl(c.as_raw_fd(), libc::F_GETFL) };
        let nb = accept_connection(fd, true)
            .unwrap()
            .expect("a connection waits");
        assert_ne!(flags(&nb) & libc::O_NONBLOCK, 0);
        let b = accept_connection(fd, false)
            .unwrap()
            .expect("a connection waits");
        assert_eq!(flags(&b) & libc::O_NONBLOCK, 0);
        // SAFETY: F_GETFD on a live descriptor.
        let fd_flags = unsafe { libc::fcntl(b.as_raw_fd(), libc::F_GETFD) };
        assert_ne!(fd_flags & libc::FD_CLOEXEC, 0);
        assert!(accept_connection(fd, true).unwrap().is_none());
    }

    #[test]
    fn refusing_new_connections_keeps_the_queued_ones_acceptable() {
        refuse_new_tcp("127.0.0.1:0");
        if std::net::TcpListener::bind("[::1]:0").is_ok() {
            refuse_new_tcp("[::1]:0");
        }
        refuse_new_unix();
    }

    fn refuse_new_tcp(addr: &str) {
        let tcp: ListenAddr = addr.parse().unwrap();
        let fd = bind(&tcp, Dispatch::RoundRobin, false).unwrap();
        let ListenAddr::Tcp(sa) = local_addr(fd.as_raw_fd(), &tcp) else {
            unreachable!()
        };
        let queued = std::net::TcpStream::connect(sa).unwrap();
        refuse_new_connections(fd.as_raw_fd(), &tcp).unwrap();
        let late = std::net::TcpStream::connect_timeout(&sa, std::time::Duration::from_millis(300));
        assert!(late.is_err(), "a connection got in after the filter");
        let (got, _) = accept(fd.as_raw_fd())
            .unwrap()
            .expect("the queued connection");
        assert!(accept(fd.as_raw_fd()).unwrap().is_none());
        // Only SYNs are dropped: the accepted connection carries data both ways.
        use std::io::{Read, Write};
        let mut server = std::net::TcpStream::from(got);
        let mut client = queued;
        client.write_all(b"ping").unwrap();
        let mut buf = [0u8; 4];
        server.read_exact(&mut buf).unwrap();
        server.write_all(b"pong").unwrap();
        client.read_exact(&mut buf).unwrap();
        assert_eq!(&buf, b"pong");
        stop_listening(fd.as_raw_fd()).unwrap();
        let e = std::net::TcpStream::connect(sa).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        drop((client, server));
    }

    fn refuse_new_unix() {
        let dir = std::env::temp_dir().join(format!("rcluster-listen-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join("refuse.sock");
        let _ = std::fs::remove_file(&path);
        let unix = ListenAddr::Unix(path.clone());
        let fd = bind(&unix, Dispatch::RoundRobin, false).unwrap();
        let _queued = std::os::unix::net::UnixStream::connect(&path).unwrap();
        refuse_new_connections(fd.as_raw_fd(), &unix).unwrap();
        let e = std::os::unix::net::UnixStream::connect(&path).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::ConnectionRefused);
        assert!(
            accept(fd.as_raw_fd()).unwrap().is_some(),
            "the queued connection"
        );
        unlink_unix(&unix);
    }

    #[test]
    fn address_in_use_is_an_error_naming_it() {
        let first = bind(&"127.0.0.1:0".parse().unwrap(), Dispatch::RoundRobin, false).unwrap();
        let taken = local_addr(first.as_raw_fd(), &"127.0.0.1:0".parse().unwrap());
        let e = bind(&taken, Dispatch::RoundRobin, false)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains(&taken.to_string()) && e.contains("in use"),
            "{e}"
        );
    }
}
