//! The service manager's notification socket (`sd_notify(3)`), spoken without libsystemd:
//! one datagram of `KEY=VALUE` lines per notification to the socket `NOTIFY_SOCKET` names
//! (a path, or an abstract name written with a leading '@').

use std::ffi::OsString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::time::Duration;

use super::{cvt, cvt_size, owned, retry};

/// Where notifications go, with the socket they are sent from.
pub struct Notifier {
    fd: OwnedFd,
    addr: libc::sockaddr_un,
    len: libc::socklen_t,
}

impl Notifier {
    /// A notifier for the socket `NOTIFY_SOCKET` names; None when it is unset or empty (not
    /// run by a service manager that listens).
    pub fn from_env() -> io::Result<Option<Notifier>> {
        match std::env::var_os("NOTIFY_SOCKET") {
            Some(s) if !s.is_empty() => Notifier::to(&s).map(Some),
            _ => Ok(None),
        }
    }

    /// A notifier for `name`: a socket path, or `@name` for an abstract socket.
    pub fn to(name: &OsString) -> io::Result<Notifier> {
        let bytes = name.as_bytes();
        // SAFETY: sockaddr_un is plain data; all zeroes is a valid (empty) value.
        let mut addr: libc::sockaddr_un = unsafe { std::mem::zeroed() };
        addr.sun_family = libc::AF_UNIX as libc::sa_family_t;
        if bytes.len() >= addr.sun_path.len() || !matches!(bytes.first(), Some(b'/' | b'@')) {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "NOTIFY_SOCKET={} is neither an absolute path nor an abstract name (@name) \
                     shorter than 108 bytes",
                    name.to_string_lossy()
                ),
            ));
        }
        for (d, s) in addr.sun_path.iter_mut().zip(bytes) {
            *d = *s as libc::c_char;
        }
        // An abstract name starts with a NUL byte and is as long as given (no terminator).
        let abstract_name = bytes[0] == b'@';
        if abstract_name {
            addr.sun_path[0] = 0;
        }
        let path_len = bytes.len() + usize::from(!abstract_name);
        let len = (std::mem::size_of::<libc::sa_family_t>() + path_len) as libc::socklen_t;
        // SAFETY: plain syscall.
        let fd =
            cvt(unsafe { libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
        Ok(Notifier {
            fd: owned(fd),
            addr,
            len,
        })
    }

    /// Sends one notification (`READY=1`, `STATUS=...`, several lines at once). Never blocks:
    /// a manager that does not read its socket loses the notification, not the loop's time.
    pub fn send(&self, message: &str) -> io::Result<()> {
        let flags = libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL;
        retry(|| {
            // SAFETY: the buffer and the address are valid for the call's duration.
            cvt_size(unsafe {
                libc::sendto(
                    self.fd.as_raw_fd(),
                    message.as_ptr().cast(),
                    message.len(),
                    flags,
                    (&self.addr as *const libc::sockaddr_un).cast(),
                    self.len,
                )
            })
        })
        .map(drop)
    }
}

/// How often the manager wants `WATCHDOG=1` from this process (`WATCHDOG_USEC`), when it asks
/// this process for it: `WATCHDOG_PID`, when set, must name this process (a host that forked
/// helpers before starting the cluster keeps its children from answering for it).
pub fn watchdog_interval() -> Option<Duration> {
    let usec: u64 = std::env::var("WATCHDOG_USEC").ok()?.parse().ok()?;
    if usec == 0 {
        return None;
    }
    if let Ok(pid) = std::env::var("WATCHDOG_PID") {
        if pid.parse::<u32>().ok()? != std::process::id() {
            return None;
        }
    }
    Some(Duration::from_micros(usec))
}

/// `CLOCK_MONOTONIC` in microseconds, as `MONOTONIC_USEC` of a `RELOADING=1` wants it.
pub fn monotonic_usec() -> u64 {
    // SAFETY: timespec is plain data, written by the call.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid clock id and pointer.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000 + ts.tv_nsec as u64 / 1000
}

#[cfg(test)]
mod tests {
    use super::*;

    fn receiver(name: &[u8]) -> OwnedFd {
        let n = Notifier::to(&OsString::from(std::ffi::OsStr::from_bytes(name))).unwrap();
        // SAFETY: plain syscalls; the address comes from a Notifier built for this name.
        unsafe {
            let fd = libc::socket(libc::AF_UNIX, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0);
            let rc = libc::bind(fd, (&n.addr as *const libc::sockaddr_un).cast(), n.len);
            assert_eq!(rc, 0, "{}", io::Error::last_os_error());
            owned(fd)
        }
    }

    fn recv(fd: &OwnedFd) -> String {
        let mut buf = [0u8; 256];
        let n = super::super::read(fd.as_raw_fd(), &mut buf).unwrap();
        String::from_utf8_lossy(&buf[..n]).into_owned()
    }

    #[test]
    fn notification_reaches_an_abstract_socket_named_with_at() {
        let name = format!("@rcluster-notify-test-{}", std::process::id());
        let rx = receiver(name.as_bytes());
        let n = Notifier::to(&name.into()).unwrap();
        n.send("READY=1\nSTATUS=ok").unwrap();
        assert_eq!(recv(&rx), "READY=1\nSTATUS=ok");
    }

    #[test]
    fn notification_reaches_a_socket_path() {
        let path = std::env::temp_dir().join(format!("rcluster-notify-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let rx = receiver(path.as_os_str().as_bytes());
        Notifier::to(&path.clone().into_os_string())
            .unwrap()
            .send("STOPPING=1")
            .unwrap();
        assert_eq!(recv(&rx), "STOPPING=1");
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn relative_notify_socket_is_refused_naming_it() {
        let e = Notifier::to(&"relative.sock".into()).err().unwrap();
        assert!(e.to_string().contains("NOTIFY_SOCKET=relative.sock"), "{e}");
    }
}
