//! The sentinel: a tiny process that ends every worker's process group when the primary dies.
//!
//! A worker has `PR_SET_PDEATHSIG`, but its own children do not: after a SIGKILL of the
//! primary they would be adopted by init and live on. The sentinel is forked (without exec)
//! when a supervisor starts and holds one end of a socket pair whose other end only the primary
//! holds (close-on-exec, so no worker inherits it). The primary writes "add pgid" when it forks
//! a worker and "remove pgid" once it has killed that group, before reaping its leader. When
//! the socket reaches end-of-file — the primary died, or the supervisor stopped and closed it —
//! the sentinel SIGKILLs every group it still knows, kills the cluster's cgroup if there is
//! one (which also ends descendants that left the group with `setsid`), and exits. A normal
//! stop reaps it through its pidfd.
//!
//! Between fork and `_exit` the sentinel makes only async-signal-safe calls on memory
//! allocated before the fork: the primary is multi-threaded, and a lock held by another thread
//! at fork time would never be released in the child.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU32, Ordering};

use crate::sys;

/// Most groups the sentinel tracks at once: every slot twice over (a reload surges new
/// workers while old ones drain), with room for workers that take long to die.
const CAPACITY: usize = 4 * crate::config::MAX_WORKERS;

const ADD: i32 = 1;
const REMOVE: i32 = 2;

pub struct Sentinel {
    pid: libc::pid_t,
    /// None where pidfd_open is refused (valgrind, which does not know it): a supervisor
    /// without workers still runs there, and the sentinel is then reaped by its pid.
    pidfd: Option<OwnedFd>,
    /// The write end; dropping it is what tells the sentinel to finish.
    tx: Option<OwnedFd>,
    cgroup: Option<Cgroup>,
}

impl Sentinel {
    /// Forks the sentinel, after creating the cluster's cgroup where the primary may.
    pub fn start() -> io::Result<Sentinel> {
        let cgroup = Cgroup::create();
        // A socket pair rather than a pipe, for MSG_NOSIGNAL; its end-of-file is the same.
        let (rx, tx) = sys::socketpair()?;
        let mut groups = vec![0 as libc::pid_t; CAPACITY];
        let setup = Setup {
            rx: rx.as_raw_fd(),
            kill: cgroup.as_ref().map_or(-1, |c| c.kill.as_raw_fd()),
            dir: cgroup.as_ref().map(|c| c.dir_c.as_ptr()),
            groups: groups.as_mut_ptr(),
        };
        // SAFETY: fork in a multi-threaded process; the child runs only `setup.run()`, which
        // makes async-signal-safe calls on memory prepared above and never returns.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            return Err(io::Error::last_os_error());
        }
        if pid == 0 {
            // SAFETY: see above.
            unsafe { setup.run() }
        }
        drop(rx);
        Ok(Sentinel {
            pid,
            pidfd: sys::pidfd_open(pid).ok(),
            tx: Some(tx),
            cgroup,
        })
    }

    /// `cgroup.procs` of the cluster's cgroup, which a worker writes itself into between fork
    /// and exec; -1 when there is no cgroup.
    pub fn cgroup_procs(&self) -> RawFd {
        self.cgroup.as_ref().map_or(-1, |c| c.procs.as_raw_fd())
    }

    /// A new worker group to end with the primary.
    pub fn add(&self, pgid: libc::pid_t) {
        self.tell(ADD, pgid);
    }

    /// A group the primary has killed and is about to reap: its number may be reused after.
    pub fn remove(&self, pgid: libc::pid_t) {
        self.tell(REMOVE, pgid);
    }

    fn tell(&self, op: i32, pgid: libc::pid_t) {
        let Some(tx) = &self.tx else { return };
        let mut rec = [0u8; 8];
        rec[..4].copy_from_slice(&op.to_ne_bytes());
        rec[4..].copy_from_slice(&pgid.to_ne_bytes());
        // A blocking send: the sentinel reads at once, so a full socket buffer would mean
        // thousands of records pending. MSG_NOSIGNAL: a sentinel that is gone (EPIPE) must not
        // raise SIGPIPE in the host; it simply no longer protects, and the workers still have
        // PDEATHSIG.
        let _ = sys::send_blocking(tx.as_raw_fd(), &rec);
    }
}

impl Drop for Sentinel {
    fn drop(&mut self) {
        // End of file: the sentinel kills what is left (nothing, after a clean stop, but the
        // cgroup's setsid escapees) and exits.
        drop(self.tx.take());
        match &self.pidfd {
            Some(fd) => drop(sys::wait_reap(fd.as_raw_fd())),
            // SAFETY: waits for this one child only (never -1).
            None => drop(unsafe { libc::waitpid(self.pid, std::ptr::null_mut(), 0) }),
        }
        if let Some(c) = &self.cgroup {
            // The sentinel removes it once empty; this covers a sentinel that gave up waiting.
            let _ = std::fs::remove_dir(&c.dir);
        }
    }
}

/// The cluster's own cgroup (v2), where the primary may create one: as root, or inside a
/// cgroup delegated to its user.
struct Cgroup {
    dir: PathBuf,
    dir_c: CString,
    procs: OwnedFd,
    kill: OwnedFd,
}

static CGROUPS: AtomicU32 = AtomicU32::new(0);

impl Cgroup {
    /// None when the primary cannot have one (no cgroup v2, no permission, a kernel before
    /// 5.14 without `cgroup.kill`): workers' `setsid` descendants are then not ended.
    fn create() -> Option<Cgroup> {
        let own = std::fs::read_to_string("/proc/self/cgroup").ok()?;
        let own = own.lines().find_map(|l| l.strip_prefix("0::"))?;
        let mount = cgroup2_mount()?;
        let n = CGROUPS.fetch_add(1, Ordering::Relaxed);
        let dir = PathBuf::from(format!(
            "{}{}/rcluster.{}.{n}",
            mount,
            own.trim_end_matches('/'),
            std::process::id()
        ));
        std::fs::create_dir(&dir).ok()?;
        let open = |name: &str| {
            std::fs::OpenOptions::new()
                .write(true)
                .open(dir.join(name))
                .map(OwnedFd::from)
        };
        match (open("cgroup.procs"), open("cgroup.kill")) {
            (Ok(procs), Ok(kill)) => Some(Cgroup {
                dir_c: CString::new(dir.as_os_str().as_bytes()).ok()?,
                dir,
                procs,
                kill,
            }),
            _ => {
                let _ = std::fs::remove_dir(&dir);
                None
            }
        }
    }
}

/// Where the cgroup v2 hierarchy is mounted (`/sys/fs/cgroup`, or `/sys/fs/cgroup/unified`
/// on hybrid systems).
fn cgroup2_mount() -> Option<String> {
    let info = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    info.lines().find_map(|l| {
        let (fields, fs) = l.split_once(" - ")?;
        if !fs.starts_with("cgroup2 ") {
            return None;
        }
        let f: Vec<&str> = fields.split(' ').collect();
        // Field 4 is the root of the mount inside the hierarchy: only a mount of the whole
        // hierarchy matches the paths in /proc/self/cgroup.
        (f.get(3) == Some(&"/")).then(|| f.get(4).map(|m| m.to_string()))?
    })
}

/// What the child needs, all allocated before fork.
struct Setup {
    rx: RawFd,
    kill: RawFd,
    dir: Option<*const libc::c_char>,
    groups: *mut libc::pid_t,
}

impl Setup {
    /// Runs in the sentinel. Async-signal-safe calls only.
    unsafe fn run(self) -> ! {
        // Its own group, and every signal ignored: a Ctrl-C (or any signal) sent to the
        // primary's process group must not end it before the primary, and a handler the host
        // installed must never run in this half-copied process.
        libc::setpgid(0, 0);
        let mut ign: libc::sigaction = std::mem::zeroed();
        ign.sa_sigaction = libc::SIG_IGN;
        for sig in 1..65 {
            if sig != libc::SIGKILL && sig != libc::SIGSTOP {
                libc::sigaction(sig, &ign, std::ptr::null_mut());
            }
        }
        // Hold nothing of the host's: its sockets, its pipes (a parent waiting for EOF on the
        // primary's stdout), another supervisor's sentinel socket.
        keep_only(self.rx, self.kill);
        let mut buf = [0u8; 512];
        let mut have = 0usize;
        loop {
            let n = libc::read(self.rx, buf.as_mut_ptr().add(have).cast(), buf.len() - have);
            if n < 0 && *libc::__errno_location() == libc::EINTR {
                continue;
            }
            if n <= 0 {
                break;
            }
            have += n as usize;
            let whole = have - have % 8;
            for rec in buf[..whole].chunks_exact(8) {
                let op = i32::from_ne_bytes([rec[0], rec[1], rec[2], rec[3]]);
                let pgid = i32::from_ne_bytes([rec[4], rec[5], rec[6], rec[7]]);
                self.apply(op, pgid);
            }
            buf.copy_within(whole..have, 0);
            have -= whole;
        }
        for i in 0..CAPACITY {
            let pgid = *self.groups.add(i);
            if pgid > 0 {
                libc::kill(-pgid, libc::SIGKILL);
            }
        }
        if self.kill >= 0 {
            libc::write(self.kill, b"1".as_ptr().cast(), 1);
        }
        if let Some(dir) = self.dir {
            // The cgroup can be removed once its last process has died: give them a second.
            let pause = libc::timespec {
                tv_sec: 0,
                tv_nsec: 5_000_000,
            };
            for _ in 0..200 {
                if libc::rmdir(dir) == 0 || *libc::__errno_location() != libc::EBUSY {
                    break;
                }
                libc::nanosleep(&pause, std::ptr::null_mut());
            }
        }
        libc::_exit(0)
    }

    unsafe fn apply(&self, op: i32, pgid: libc::pid_t) {
        let (find, put) = match op {
            ADD => (0, pgid),
            REMOVE => (pgid, 0),
            _ => return,
        };
        for i in 0..CAPACITY {
            let g = self.groups.add(i);
            if *g == find {
                *g = put;
                return;
            }
        }
    }
}

/// Closes every descriptor but `a` and `b` (-1 for none). Async-signal-safe.
unsafe fn keep_only(a: RawFd, b: RawFd) {
    let (lo, hi) = if b >= 0 && b < a { (b, a) } else { (a, b) };
    let close = |from: RawFd, to: libc::c_uint| {
        if (from as libc::c_uint) <= to {
            libc::syscall(libc::SYS_close_range, from as libc::c_uint, to, 0);
        }
    };
    if lo > 0 {
        close(0, lo as libc::c_uint - 1);
    }
    if hi > lo {
        close(lo + 1, hi as libc::c_uint - 1);
        close(hi + 1, libc::c_uint::MAX);
    } else {
        close(lo + 1, libc::c_uint::MAX);
    }
}
