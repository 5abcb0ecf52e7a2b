//! The sentinel: a tiny process that ends every worker's process group when the primary dies.
//!
//! A worker has `PR_SET_PDEATHSIG`, but its own children do not: after a SIGKILL of the
//! primary they would be adopted by init and live on. The sentinel is started (no exec)
//! when a supervisor starts and holds one end of a socket pair whose other end only the primary
//! holds (close-on-exec, so no worker inherits it). The primary writes "add pgid" when it forks
//! a worker and "remove pgid" once it has killed that group, before reaping its leader. When
//! the socket reaches end-of-file — the primary died, or the supervisor stopped and closed it —
//! the sentinel SIGKILLs every group it still knows, kills the cluster's cgroup if there is
//! one (which also ends descendants that left the group with `setsid`), and exits. A normal
//! stop reaps it through its pidfd.
//!
//! The sentinel shares the primary's memory (`clone(CLONE_VM)`) rather than a copy of it: a
//! forked copy would keep every page the host has at start-up for as long as the cluster runs,
//! and a host that writes its heap (reference counts in CPython, a moving collector in V8)
//! would soon pay for it twice. Sharing memory with a multi-threaded host, the sentinel must
//! touch nothing but what was allocated for it (its stack, its table, its settings) and may not
//! call into libc, whose wrappers write `errno` in the forking thread's thread-local storage:
//! it makes raw system calls only. Where that is not possible (another architecture, or a
//! `clone` that is refused, or valgrind, which does not support it), it is forked instead, and
//! runs the same code.

mod cgroup;
mod raw;

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;

use crate::sys;
use cgroup::Cgroup;

/// Most groups the sentinel tracks at once: every slot twice over (a reload surges new
/// workers while old ones drain), with room for workers that take long to die. Four times
/// `config::MAX_WORKERS`, written out because `sys` sits below `config`; `config` checks the
/// two agree when it compiles.
pub const CAPACITY: usize = 4 * 4096;

const ADD: i32 = 1;
const REMOVE: i32 = 2;

pub struct Sentinel {
    pid: libc::pid_t,
    /// What the sentinel reads and writes while it runs; freed only once it has been reaped.
    _memory: Option<(Box<Setup>, Vec<libc::pid_t>, Stack)>,
    /// None where pidfd_open is refused (valgrind, which does not know it): a supervisor
    /// without workers still runs there, and the sentinel is then reaped by its pid.
    pidfd: Option<OwnedFd>,
    /// The write end; dropping it is what tells the sentinel to finish.
    tx: Option<OwnedFd>,
    cgroup: Option<Cgroup>,
}

impl Sentinel {
    /// Starts the sentinel, after creating the cluster's cgroup where the primary may.
    pub fn start() -> io::Result<Sentinel> {
        let cgroup = Cgroup::create();
        // A socket pair rather than a pipe, for MSG_NOSIGNAL; its end-of-file is the same.
        let (rx, tx) = sys::socketpair()?;
        let mut groups = vec![0 as libc::pid_t; CAPACITY];
        let setup = Box::new(Setup {
            rx: rx.as_raw_fd(),
            kill: cgroup.as_ref().map_or(-1, |c| c.kill.as_raw_fd()),
            dir: cgroup
                .as_ref()
                .map_or(std::ptr::null(), |c| c.dir_c.as_ptr()),
            groups: groups.as_mut_ptr(),
        });
        let stack = Stack::new()?;
        let pid = launch(&setup, &stack)?;
        drop(rx);
        Ok(Sentinel {
            pid,
            _memory: Some((setup, groups, stack)),
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
            None => {
                // SAFETY: waits for this one child only (never -1).
                unsafe { libc::waitpid(self.pid, std::ptr::null_mut(), 0) };
                crate::sys::children::forget(self.pid);
            }
        }
    }
}

/// Valgrind supports `clone` only as threads and fork do, and ends the whole program at any
/// other use instead of failing the call: there the sentinel is forked. Valgrind preloads its
/// own libraries, which is how it is recognized.
fn under_valgrind() -> bool {
    std::env::var_os("LD_PRELOAD")
        .is_some_and(|v| v.as_bytes().windows(9).any(|w| w == b"vgpreload"))
}

/// The sentinel's stack: its own mapping, with a guard page below it.
struct Stack {
    base: *mut libc::c_void,
    len: usize,
}

// SAFETY: a plain mapping, owned by the Sentinel that frees it.
unsafe impl Send for Stack {}
// SAFETY: a plain mapping, owned by the Sentinel that frees it; nothing in it is shared
// with another thread while it is read.
unsafe impl Sync for Stack {}

impl Stack {
    const LEN: usize = 256 << 10;

    fn new() -> io::Result<Stack> {
        // SAFETY: a fresh private mapping; the lowest page becomes the guard.
        unsafe {
            let base = libc::mmap(
                std::ptr::null_mut(),
                Self::LEN,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            );
            if base == libc::MAP_FAILED {
                return Err(io::Error::last_os_error());
            }
            libc::mprotect(base, 4096, libc::PROT_NONE);
            Ok(Stack {
                base,
                len: Self::LEN,
            })
        }
    }

    fn top(&self) -> *mut libc::c_void {
        // SAFETY: one past the end of the mapping, which is 16-byte aligned.
        unsafe { self.base.cast::<u8>().add(self.len).cast() }
    }
}

impl Drop for Stack {
    fn drop(&mut self) {
        // SAFETY: unmaps the mapping made in `new`, which nobody uses any more.
        unsafe { libc::munmap(self.base, self.len) };
    }
}

/// What the sentinel needs, all allocated before it starts.
struct Setup {
    rx: RawFd,
    kill: RawFd,
    /// The cgroup's directory (NUL-terminated), or null.
    dir: *const libc::c_char,
    groups: *mut libc::pid_t,
}

// SAFETY: plain settings read by the sentinel; the pointers stay valid while it runs.
unsafe impl Send for Setup {}
// SAFETY: plain settings read by the sentinel; the pointers stay valid while it runs and
// nobody writes through them meanwhile.
unsafe impl Sync for Setup {}

/// Starts the sentinel process running `setup` (on `stack` when it shares this memory, or in
/// a forked copy where it cannot) with every signal blocked, and returns its pid. `setup`, the
/// memory it points to and `stack` must live until the sentinel is reaped.
fn launch(setup: &Setup, stack: &Stack) -> io::Result<libc::pid_t> {
    // No signal may reach a handler of the host in the sentinel before it has ignored
    // them all: blocked here, the mask is inherited, and the sentinel unblocks them.
    // SAFETY: sigset manipulation on local variables; the mask is restored below.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: sigfillset and pthread_sigmask write only the local sets `all` and `old`.
    unsafe {
        let mut all: libc::sigset_t = std::mem::zeroed();
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    let mut pid = -1;
    let forking = crate::sys::children::Forking::start();
    if raw::SHARED_MEMORY && !under_valgrind() {
        // SAFETY: the child runs `entry` on its own stack and touches only `setup`,
        // `groups` and that stack, all kept alive until it is reaped (see `Drop`).
        pid = unsafe {
            libc::clone(
                entry,
                stack.top(),
                libc::CLONE_VM | libc::SIGCHLD,
                (setup as *const Setup).cast_mut().cast(),
            )
        };
    }
    if pid < 0 {
        // SAFETY: fork in a multi-threaded process; the child runs only `setup.run()`,
        // which makes raw system calls on memory prepared above and never returns.
        pid = unsafe { libc::fork() };
        if pid == 0 {
            // SAFETY: this is the forked child, which runs only `setup.run()`: raw
            // system calls on memory prepared before the fork, and it never returns.
            unsafe { setup.run() }
        }
    }
    let err = io::Error::last_os_error();
    forking.done(pid);
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    if pid < 0 {
        return Err(err);
    }
    Ok(pid)
}

extern "C" fn entry(setup: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `setup` is the Box that `Sentinel` keeps alive until the sentinel is reaped.
    unsafe { (*setup.cast::<Setup>()).run() }
}

impl Setup {
    /// Runs in the sentinel: raw system calls only (see the module's comment). The functions
    /// below are plain calls on the sentinel's own stack.
    unsafe fn run(&self) -> ! {
        // Its own group, and every signal ignored: a Ctrl-C (or any signal) sent to the
        // primary's process group must not end it before the primary, and a handler the host
        // installed must never run in it. Then the signals blocked by the parent are let in.
        raw::call(libc::SYS_setpgid, 0, 0, 0, 0);
        ignore_signals();
        // Hold nothing of the host's: its sockets, its pipes (a parent waiting for EOF on the
        // primary's stdout), another supervisor's sentinel socket.
        keep_only(self.rx, self.kill);
        self.follow();
        self.end_everything();
        raw::call(libc::SYS_exit_group, 0, 0, 0, 0);
        // exit_group does not return.
        loop {
            std::hint::spin_loop();
        }
    }

    /// Applies the primary's "add" and "remove" records until its end of the socket closes.
    unsafe fn follow(&self) {
        let mut buf = [0u8; 512];
        let mut have = 0usize;
        loop {
            let n = raw::call(
                libc::SYS_read,
                self.rx as usize,
                buf.as_mut_ptr().add(have) as usize,
                buf.len() - have,
                0,
            );
            if n == -(libc::EINTR as isize) {
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
    }

    /// SIGKILLs every group still known, kills the cluster's cgroup, and removes it once its
    /// last process has died.
    unsafe fn end_everything(&self) {
        for i in 0..CAPACITY {
            let pgid = *self.groups.add(i);
            if pgid > 0 {
                raw::call(
                    libc::SYS_kill,
                    (-pgid) as usize,
                    libc::SIGKILL as usize,
                    0,
                    0,
                );
            }
        }
        if self.kill >= 0 {
            raw::call(
                libc::SYS_write,
                self.kill as usize,
                b"1".as_ptr() as usize,
                1,
                0,
            );
        }
        if !self.dir.is_null() {
            // The cgroup can be removed once its last process has died: give them a second.
            let pause = libc::timespec {
                tv_sec: 0,
                tv_nsec: 5_000_000,
            };
            for _ in 0..200 {
                let r = raw::call(
                    libc::SYS_unlinkat,
                    libc::AT_FDCWD as usize,
                    self.dir as usize,
                    libc::AT_REMOVEDIR as usize,
                    0,
                );
                if r != -(libc::EBUSY as isize) {
                    break;
                }
                raw::call(libc::SYS_nanosleep, &pause as *const _ as usize, 0, 0, 0);
            }
        }
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

/// In the sentinel: every signal ignored (but the two that cannot be), and none blocked.
unsafe fn ignore_signals() {
    let ignore: [usize; 4] = [libc::SIG_IGN, 0, 0, 0];
    for sig in 1..65 {
        if sig != libc::SIGKILL as usize && sig != libc::SIGSTOP as usize {
            raw::call(libc::SYS_rt_sigaction, sig, ignore.as_ptr() as usize, 0, 8);
        }
    }
    let none: u64 = 0;
    raw::call(
        libc::SYS_rt_sigprocmask,
        libc::SIG_SETMASK as usize,
        &none as *const u64 as usize,
        0,
        8,
    );
}

/// Closes every descriptor but `a` and `b` (-1 for none). Raw system calls only.
unsafe fn keep_only(a: RawFd, b: RawFd) {
    let (lo, hi) = if b >= 0 && b < a { (b, a) } else { (a, b) };
    let close = |from: RawFd, to: libc::c_uint| {
        if (from as libc::c_uint) <= to {
            raw::call(libc::SYS_close_range, from as usize, to as usize, 0, 0);
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
