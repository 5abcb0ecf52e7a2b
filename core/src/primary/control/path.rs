//! Where a cluster's control socket lives, and claiming it: a live cluster of the same name
//! is a conflict, a socket nobody accepts on (its primary was killed) is taken over.

use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::{Path, PathBuf};

/// Longest cluster name.
pub const MAX_NAME: usize = 64;
/// `sun_path` holds 108 bytes with the terminating NUL.
const MAX_PATH: usize = 107;

/// The folder of the control sockets of this user: `$XDG_RUNTIME_DIR/rcluster`, else
/// `/run/rcluster` for root, else `~/.rcluster`.
pub fn control_dir() -> Option<PathBuf> {
    if let Some(xdg) = std::env::var_os("XDG_RUNTIME_DIR").filter(|d| Path::new(d).is_absolute()) {
        return Some(Path::new(&xdg).join("rcluster"));
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return Some(PathBuf::from("/run/rcluster"));
    }
    let home = std::env::var_os("HOME").filter(|d| Path::new(d).is_absolute())?;
    Some(Path::new(&home).join(".rcluster"))
}

/// Why `name` cannot name a cluster, if it cannot: it becomes a file name.
pub fn check_name(name: &str) -> Result<(), String> {
    let ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-');
    if name.is_empty() || name.len() > MAX_NAME || name.starts_with('.') || !name.chars().all(ok) {
        return Err(format!(
            "must be 1..={MAX_NAME} characters of A-Z a-z 0-9 . _ -, not starting with '.'"
        ));
    }
    Ok(())
}

/// A default name made fit for a file name (a program may be called anything).
pub fn sanitize(name: &str) -> String {
    let mut s: String = name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-') {
                c
            } else {
                '_'
            }
        })
        .take(MAX_NAME)
        .collect();
    if s.is_empty() || s.starts_with('.') {
        s.insert(0, '_');
        s.truncate(MAX_NAME);
    }
    s
}

/// Makes `dir` (mode 0700) or checks the one that is there: it must be ours and private,
/// since whoever can write in it can put a socket of their own in a cluster's place.
pub fn prepare_dir(dir: &Path) -> io::Result<()> {
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)?;
    let meta = std::fs::symlink_metadata(dir)?;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !meta.is_dir() || meta.uid() != me {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!("{} is not a directory owned by uid {me}", dir.display()),
        ));
    }
    if meta.mode() & 0o077 != 0 {
        std::fs::set_permissions(dir, std::fs::Permissions::from_mode(0o700))?;
    }
    Ok(())
}

fn open_lock(dir: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    // std opens with O_CLOEXEC.
    std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .open(dir.join(".lock"))
}

/// Holds the folder's lock file (`.lock`, mode 0600) locked until dropped.
pub fn lock_dir(dir: &Path) -> io::Result<std::fs::File> {
    let f = open_lock(dir)?;
    loop {
        // SAFETY: flock on a descriptor this function owns; it blocks only while another
        // cluster is between its probe and its bind, a few system calls.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0 {
            return Ok(f);
        }
        let e = io::Error::last_os_error();
        if e.kind() != io::ErrorKind::Interrupted {
            return Err(e);
        }
    }
}

/// Takes the folder's lock (see `lock_dir`) without waiting more than about `patience`:
/// None when a claim holds it that long (something is wrong with that claim, and whoever
/// asks must not hang on it).
fn try_lock_dir(dir: &Path, patience: std::time::Duration) -> io::Result<Option<std::fs::File>> {
    let f = open_lock(dir)?;
    let deadline = std::time::Instant::now() + patience;
    loop {
        // SAFETY: flock on a descriptor this function owns.
        if unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
            return Ok(Some(f));
        }
        let e = io::Error::last_os_error();
        match e.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(5));
            }
            io::ErrorKind::WouldBlock => return Ok(None),
            _ => return Err(e),
        }
    }
}

/// Why a stale control socket was not removed by `remove_stale_socket`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SocketKept {
    /// Something accepts on it (again): a live cluster.
    Live,
    /// Not a socket file, or not this user's: not ours to remove.
    NotOurs(String),
    /// A cluster is claiming a socket in the folder right now (it holds the lock).
    Busy,
}

/// Removes the control socket at `path` if it is stale (nothing accepts on it: its primary
/// was killed) and ours to remove: a socket file of this user, checked again while holding
/// the lock that claims take (`DIR/.lock`), so that a cluster between its bind and its
/// listen, whose fresh socket refuses connections for a moment, is never mistaken for a
/// dead one. Ok(()) when it was removed (or was gone already).
pub fn remove_stale_socket(path: &Path) -> io::Result<std::result::Result<(), SocketKept>> {
    let Some(dir) = path.parent() else {
        return Ok(Err(SocketKept::NotOurs("it has no folder".into())));
    };
    let meta = match std::fs::symlink_metadata(path) {
        Ok(m) => m,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Ok(())),
        Err(e) => return Err(e),
    };
    use std::os::unix::fs::FileTypeExt;
    // SAFETY: geteuid has no preconditions.
    let me = unsafe { libc::geteuid() };
    if !meta.file_type().is_socket() {
        return Ok(Err(SocketKept::NotOurs("it is not a socket".into())));
    }
    if meta.uid() != me {
        return Ok(Err(SocketKept::NotOurs(format!(
            "it belongs to uid {}, not {me}",
            meta.uid()
        ))));
    }
    let Some(_turn) = try_lock_dir(dir, std::time::Duration::from_millis(500))? else {
        return Ok(Err(SocketKept::Busy));
    };
    match probe(path) {
        Found::Nothing => Ok(Ok(())),
        Found::Live(_) => Ok(Err(SocketKept::Live)),
        // The same file as checked above, not one a new cluster has put there since.
        Found::Stale if identity(path) == Some((meta.dev(), meta.ino())) => {
            match std::fs::remove_file(path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
                _ => Ok(Ok(())),
            }
        }
        Found::Stale => Ok(Err(SocketKept::Busy)),
    }
}

/// What is found at a socket path.
pub enum Found {
    Nothing,
    /// A socket file nobody accepts on.
    Stale,
    /// A live cluster; its pid when the kernel says.
    Live(Option<u32>),
}

pub fn probe(path: &Path) -> Found {
    if std::fs::symlink_metadata(path).is_err() {
        return Found::Nothing;
    }
    match UnixStream::connect(path) {
        Ok(s) => Found::Live(peer_cred(s.as_raw_fd()).map(|c| c.pid as u32)),
        Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => Found::Stale,
        // ENOENT: gone meanwhile; EAGAIN: a full backlog is a live listener.
        Err(e) if e.kind() == io::ErrorKind::NotFound => Found::Nothing,
        Err(_) => Found::Live(None),
    }
}

/// Binds the socket at `path` (0600), taking over a stale one; Err(Some(pid)) style
/// conflicts are reported by the caller through `probe`.
pub fn bind(path: &Path) -> io::Result<UnixListener> {
    if path.as_os_str().len() > MAX_PATH {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!(
                "{} is longer than a Unix socket path may be ({MAX_PATH} bytes)",
                path.display()
            ),
        ));
    }
    if let Found::Stale = probe(path) {
        std::fs::remove_file(path)?;
    }
    // std creates the socket with SOCK_CLOEXEC. The folder is 0700, so nobody else can
    // connect in the moment before the chmod.
    let l = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))?;
    l.set_nonblocking(true)?;
    Ok(l)
}

/// The identity of a socket file, to remove it at the end only if it is still ours.
pub fn identity(path: &Path) -> Option<(u64, u64)> {
    std::fs::symlink_metadata(path)
        .ok()
        .map(|m| (m.dev(), m.ino()))
}

/// The pid, uid and gid of the process at the other end of a Unix socket.
pub fn peer_cred(fd: std::os::fd::RawFd) -> Option<libc::ucred> {
    let mut cred = libc::ucred {
        pid: 0,
        uid: 0,
        gid: 0,
    };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: `cred` and `len` are valid for writes of the sizes given.
    let rc = unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_PEERCRED,
            (&mut cred as *mut libc::ucred).cast(),
            &mut len,
        )
    };
    (rc == 0).then_some(cred)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_that_are_not_plain_file_names_are_refused() {
        assert!(check_name("web-1.api_v2").is_ok());
        for bad in ["", ".hidden", "a/b", "a b", &"x".repeat(65)] {
            assert!(check_name(bad).is_err(), "{bad}");
        }
        assert_eq!(sanitize("my server"), "my_server");
        assert_eq!(sanitize(".x"), "_.x");
    }
}
