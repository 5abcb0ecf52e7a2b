//! The primary runs out of descriptors while accepting: it pauses accepting (an event says so)
//! instead of spinning on a listener that stays readable, and serves the waiting connections
//! once descriptors are free again.
//!
//! The primary is this test process, so the test lowers its own RLIMIT_NOFILE and fills the
//! descriptor table. Limits are process-wide: this file holds exactly one test, so that no
//! other test shares the process while the table is full.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use rcluster_core::{Dispatch, Event, ListenAddr, Listener, Supervisor};
use rcluster_tests::*;

const CLIENTS: usize = 3;

fn cvt(r: libc::c_int) -> io::Result<libc::c_int> {
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Puts the soft descriptor limit back when dropped, also when the test fails.
struct RestoreLimit(libc::rlimit);

impl Drop for RestoreLimit {
    fn drop(&mut self) {
        // SAFETY: sets a limit from a valid struct.
        unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &self.0) };
    }
}

fn highest_open_fd() -> i32 {
    std::fs::read_dir("/proc/self/fd")
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .max()
        .unwrap()
}

/// CPU time (user + system) of this whole process so far.
fn cpu_time() -> Duration {
    // SAFETY: getrusage fills the struct it is given.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a live local rusage that getrusage fills.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| {
        Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64)
    };
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn tcp_socket() -> OwnedFd {
    // SAFETY: plain syscall; the fd is owned at once.
    let fd = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) })
        .unwrap();
    // SAFETY: the call just above returned this descriptor, which nothing else owns.
    unsafe { OwnedFd::from_raw_fd(fd) }
}

/// Connects a socket created earlier: connecting needs no new descriptor.
fn connect(fd: OwnedFd, to: SocketAddr) -> TcpStream {
    let SocketAddr::V4(to) = to else {
        panic!("IPv4 only")
    };
    let sin = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: to.port().to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(to.ip().octets()),
        },
        sin_zero: [0; 8],
    };
    // SAFETY: a valid sockaddr_in of the size given.
    cvt(unsafe {
        libc::connect(
            fd.as_raw_fd(),
            (&sin as *const libc::sockaddr_in).cast(),
            std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
        )
    })
    .unwrap();
    let s = TcpStream::from(fd);
    s.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    s.set_write_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    s
}

#[test]
fn accept_out_of_descriptors_pauses_without_spinning_and_recovers() {
    let mut cfg = worker_config(1, &["serve", "0"]);
    cfg.listeners = vec![Listener::new(
        "web",
        "127.0.0.1:0".parse().unwrap(),
        Dispatch::RoundRobin,
    )];
    let sup = Supervisor::start(cfg).unwrap();
    wait_ready(&sup, 1);
    let ListenAddr::Tcp(to) = listener_addr(&sup, "web") else {
        unreachable!()
    };
    assert_eq!(
        request(&listener_addr(&sup, "web")).unwrap().listener,
        "web"
    );

    // A low limit keeps the number of descriptors needed to fill the table small.
    // SAFETY: getrlimit fills the struct it is given.
    let mut old: libc::rlimit = unsafe { std::mem::zeroed() };
    // SAFETY: `old` is a live local rlimit that getrlimit fills.
    cvt(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut old) }).unwrap();
    let _restore = RestoreLimit(old);
    let soft = (highest_open_fd() as libc::rlim_t + 64).min(old.rlim_max);
    let low = libc::rlimit {
        rlim_cur: soft,
        rlim_max: old.rlim_max,
    };
    // SAFETY: `low` is a live local rlimit that setrlimit only reads.
    cvt(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &low) }).unwrap();

    let sockets: Vec<OwnedFd> = (0..CLIENTS).map(|_| tcp_socket()).collect();
    let mut filler = Vec::new();
    loop {
        // SAFETY: duplicates stdin's descriptor number; the copy is owned at once.
        match cvt(unsafe { libc::fcntl(0, libc::F_DUPFD_CLOEXEC, 0) }) {
            // SAFETY: the call just above returned this descriptor, which nothing else owns.
            Ok(fd) => filler.push(unsafe { OwnedFd::from_raw_fd(fd) }),
            Err(e) if e.raw_os_error() == Some(libc::EMFILE) => break,
            Err(e) => panic!("dup: {e}"),
        }
    }
    let clients: Vec<TcpStream> = sockets.into_iter().map(|s| connect(s, to)).collect();
    let ev = wait_for(&sup, Duration::from_secs(5), |e| {
        matches!(e, Event::AcceptPaused { .. })
    });
    let Event::AcceptPaused { listener, error } = ev else {
        unreachable!()
    };
    assert_eq!(listener, "web");
    assert!(error.contains("Too many open files"), "{error}");

    // While the table stays full, the loop retries now and then; it must not busy-wait.
    let (cpu_before, started) = (cpu_time(), Instant::now());
    let mut pauses = 0;
    while started.elapsed() < Duration::from_millis(600) {
        if let Some(Event::AcceptPaused { .. }) = sup.next_event(Some(Duration::from_millis(50))) {
            pauses += 1;
        }
    }
    let (cpu, wall) = (cpu_time() - cpu_before, started.elapsed());
    eprintln!("paused: {pauses} retries, {cpu:?} of CPU in {wall:?}");
    assert!(
        cpu < wall / 4,
        "{cpu:?} of CPU in {wall:?} while accepting was paused: the loop spins"
    );
    assert!(
        pauses <= 12,
        "{pauses} accept retries in {wall:?}: the pause is not a pause"
    );

    drop(filler);
    let replies: Vec<_> = clients
        .into_iter()
        .map(|c| http_exchange(&c).map(|b| Reply::parse(&b)))
        .collect();
    drop(_restore);
    sup.stop(Duration::from_secs(10)).unwrap();
    for (i, r) in replies.iter().enumerate() {
        assert!(
            matches!(r, Ok(Ok(reply)) if reply.listener == "web"),
            "client {i}: {r:?}"
        );
    }
}
