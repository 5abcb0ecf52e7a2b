//! Starting a worker: fork + exec with an exact fd layout, own process group, PDEATHSIG.
//!
//! Everything the child needs (argv, envp, paths) is built before `fork`; between `fork` and
//! `execve` the child only makes async-signal-safe calls, because the primary is multi-threaded
//! and any lock (malloc's included) may be held by a thread that does not exist in the child.

use std::ffi::{CString, OsString};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::OsStrExt;
use std::path::Path;

use crate::sys;
use crate::sys::sentinel::Sentinel;

/// The fixed part of every spawn, prepared once per supervisor.
pub struct Exec {
    path: CString,
    argv: Vec<CString>,
    env: Vec<CString>,
    cwd: Option<CString>,
    /// Ends every worker group (and the cluster's cgroup) with the primary.
    pub sentinel: Sentinel,
    /// The forking thread runs under `SCHED_BATCH` where the host had the normal policy:
    /// children go back to the normal one.
    pub unbatch: bool,
}

/// Environment variables rcluster sets itself; inherited values are dropped so that a
/// supervisor running inside a worker does not confuse its own workers.
const OWN_VARS: &[&str] = &[
    "RCLUSTER_HEARTBEAT_MS",
    "RCLUSTER_PID",
    "RCLUSTER_WORKER_ID",
    "RCLUSTER_GENERATION",
    "RCLUSTER_IPC_FD",
    "RCLUSTER_TURNS",
    "LISTEN_FDS",
    "LISTEN_PID",
    "LISTEN_FDNAMES",
    // The service manager's: notifications and the watchdog are the primary's to send.
    "NOTIFY_SOCKET",
    "WATCHDOG_USEC",
    "WATCHDOG_PID",
];

fn cstring(bytes: &[u8]) -> CString {
    // Config validation rejected NUL bytes already.
    CString::new(bytes).expect("validated: no NUL bytes")
}

impl Exec {
    pub fn new(
        path: &Path,
        argv: &[OsString],
        env: &[(OsString, OsString)],
        cwd: Option<&Path>,
    ) -> io::Result<Exec> {
        let mut vars: Vec<(OsString, OsString)> = std::env::vars_os()
            .filter(|(k, _)| !OWN_VARS.iter().any(|o| k == o))
            .collect();
        for (k, v) in env {
            vars.retain(|(ek, _)| ek != k);
            vars.push((k.clone(), v.clone()));
        }
        let env = vars
            .iter()
            .map(|(k, v)| {
                let mut kv = k.as_bytes().to_vec();
                kv.push(b'=');
                kv.extend_from_slice(v.as_bytes());
                cstring(&kv)
            })
            .collect();
        // Absolute, so that a host that changes its own directory later does not move
        // where its workers start (`Config::validate` resolved the program against it).
        let cwd = cwd.map(|c| std::path::absolute(c).unwrap_or_else(|_| c.to_path_buf()));
        Ok(Exec {
            path: cstring(path.as_os_str().as_bytes()),
            argv: argv.iter().map(|a| cstring(a.as_bytes())).collect(),
            env,
            cwd: cwd.map(|c| cstring(c.as_os_str().as_bytes())),
            sentinel: Sentinel::start()?,
            unbatch: false,
        })
    }
}

/// What one spawn needs beyond `Exec`.
pub struct Request<'a> {
    pub id: u32,
    pub generation: u32,
    /// Listening sockets the worker inherits (`shared` dispatch), with their names: they
    /// become fds 3.. as socket activation expects.
    pub shared: &'a [(RawFd, &'a str)],
    /// Child end of the IPC socketpair.
    pub ipc: OwnedFd,
    /// Write ends of stdout/stderr pipes, when output is prefixed.
    pub stdout: Option<OwnedFd>,
    pub stderr: Option<OwnedFd>,
}

/// The first fd number of a worker's inherited sockets: listening sockets of `shared` mode
/// (as socket activation expects), then the IPC socket.
pub const FIRST_FD: RawFd = 3;

/// `close_range` flag (Linux 5.11): mark the range close-on-exec instead of closing it.
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;

/// A forked worker that the loop has not taken yet. Dropping it kills its group and reaps it,
/// so that every error after the fork leaves neither a running worker nor a zombie.
pub struct Forked<'a> {
    pid: libc::pid_t,
    sentinel: &'a Sentinel,
    armed: bool,
}

impl<'a> Forked<'a> {
    fn new(pid: libc::pid_t, sentinel: &'a Sentinel) -> Forked<'a> {
        sentinel.add(pid);
        Forked {
            pid,
            sentinel,
            armed: true,
        }
    }

    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// The loop owns the worker from now on (its pidfd will tell when to reap it).
    pub fn keep(mut self) -> libc::pid_t {
        self.armed = false;
        self.pid
    }
}

impl Drop for Forked<'_> {
    fn drop(&mut self) {
        if !self.armed {
            return;
        }
        abandon(self.pid, self.sentinel);
    }
}

/// Kills the group of a forked worker that nobody will take, and reaps it.
pub fn abandon(pid: libc::pid_t, sentinel: &Sentinel) {
    // The group is killed while its leader is unreaped, so its number cannot have been
    // reused (see `sys::reap_group`).
    sys::kill_group(pid, libc::SIGKILL);
    sentinel.remove(pid);
    // SAFETY: waits for this one child only (never -1); it was just killed.
    unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    super::children::forget(pid);
}

/// Forks and execs one worker. Returns it once `execve` has succeeded.
pub fn spawn<'a>(exec: &'a Exec, req: Request) -> io::Result<Forked<'a>> {
    let ipc_fd = FIRST_FD + req.shared.len() as RawFd;
    let env_strings = worker_env(&req, ipc_fd);
    // The child writes its own pid into these after fork (the buffers are already allocated,
    // so that needs no allocation): a worker's children inherit the environment, and
    // RCLUSTER_PID / LISTEN_PID tell them that it is not theirs.
    let mut pid_var = *b"RCLUSTER_PID=\0\0\0\0\0\0\0\0\0\0\0\0";
    let mut listen_pid_var = *b"LISTEN_PID=\0\0\0\0\0\0\0\0\0\0\0\0";
    let pid_ptr = pid_var.as_mut_ptr();
    let listen_pid_ptr = listen_pid_var.as_mut_ptr();
    let listen_pid = (!req.shared.is_empty()).then_some(listen_pid_ptr.cast_const());
    let (argv, envp) = exec_arrays(exec, &env_strings, pid_ptr.cast_const(), listen_pid);

    let (err_r, err_w) = sys::pipe()?;
    let moves = fd_moves(&req, ipc_fd);
    let parent = std::process::id() as libc::pid_t;
    let child = ChildSetup {
        path: exec.path.as_ptr(),
        argv: argv.as_ptr(),
        envp: envp.as_ptr(),
        cwd: exec.cwd.as_ref().map_or(std::ptr::null(), |c| c.as_ptr()),
        moves,
        err_w: err_w.as_raw_fd(),
        parent,
        // SAFETY: both offsets are within their 25- and 23-byte buffers.
        pid_digits: unsafe { [pid_ptr.add(13), listen_pid_ptr.add(11)] },
        floor: ipc_fd + 1,
        unbatch: exec.unbatch,
        cgroup_procs: exec.sentinel.cgroup_procs(),
    };

    let forking = super::children::Forking::start();
    // SAFETY: fork in a multi-threaded process; the child runs only `child.run()`, which makes
    // async-signal-safe calls on memory prepared above and never returns.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // SAFETY: see above.
        unsafe { child.run() }
    }
    forking.done(pid);
    if pid < 0 {
        return Err(io::Error::last_os_error());
    }
    // Known to the sentinel before it can have children of its own.
    let forked = Forked::new(pid, &exec.sentinel);
    // Also set the group from this side, so that a signal sent to the group right after
    // spawn cannot miss a child that has not run its own setpgid yet. EACCES after the
    // child's exec is harmless: it did it itself.
    // SAFETY: plain syscall on our own child.
    unsafe { libc::setpgid(pid, pid) };
    drop(err_w);
    drop(req);
    exec_result(&err_r, forked)
}

/// The NULL-terminated `argv` and `envp` arrays of `execve`, made before fork (the child may
/// not allocate): the program's, then rcluster's variables, then the two the child completes
/// with its pid (`LISTEN_PID` only for a worker that inherits listeners). They point into
/// `exec`, `env` and the pid buffers, which must outlive them.
fn exec_arrays(
    exec: &Exec,
    env: &[CString],
    pid_var: *const u8,
    listen_pid_var: Option<*const u8>,
) -> (Vec<*const libc::c_char>, Vec<*const libc::c_char>) {
    let mut envp: Vec<*const libc::c_char> =
        exec.env.iter().chain(env).map(|c| c.as_ptr()).collect();
    envp.push(pid_var.cast());
    if let Some(p) = listen_pid_var {
        envp.push(p.cast());
    }
    envp.push(std::ptr::null());
    let mut argv: Vec<*const libc::c_char> = exec.argv.iter().map(|c| c.as_ptr()).collect();
    argv.push(std::ptr::null());
    (argv, envp)
}

/// The variables rcluster sets for a worker, apart from the pids the child writes itself.
fn worker_env(req: &Request, ipc_fd: RawFd) -> Vec<CString> {
    let mut env = vec![
        cstring(format!("RCLUSTER_WORKER_ID={}", req.id).as_bytes()),
        cstring(format!("RCLUSTER_GENERATION={}", req.generation).as_bytes()),
        cstring(format!("RCLUSTER_IPC_FD={ipc_fd}").as_bytes()),
    ];
    if !req.shared.is_empty() {
        let names: Vec<&str> = req.shared.iter().map(|(_, n)| *n).collect();
        env.push(cstring(
            format!("LISTEN_FDS={}", req.shared.len()).as_bytes(),
        ));
        env.push(cstring(
            format!("LISTEN_FDNAMES={}", names.join(":")).as_bytes(),
        ));
    }
    env
}

/// Source fd → target fd in the child: shared listeners from 3, then IPC, and stdout/stderr
/// pipes at 1 and 2 when prefixing.
fn fd_moves(req: &Request, ipc_fd: RawFd) -> Vec<(RawFd, RawFd)> {
    let mut moves: Vec<(RawFd, RawFd)> = Vec::with_capacity(req.shared.len() + 3);
    for (i, (fd, _)) in req.shared.iter().enumerate() {
        moves.push((*fd, FIRST_FD + i as RawFd));
    }
    moves.push((req.ipc.as_raw_fd(), ipc_fd));
    if let Some(o) = &req.stdout {
        moves.push((o.as_raw_fd(), 1));
    }
    if let Some(e) = &req.stderr {
        moves.push((e.as_raw_fd(), 2));
    }
    moves
}

/// Waits for the child's exec: the child writes errno to `err_r` if exec failed; end-of-file
/// (the write end is CLOEXEC) means exec succeeded. On an error `forked` is dropped: the
/// child (exiting with 127) is reaped.
fn exec_result<'a>(err_r: &OwnedFd, forked: Forked<'a>) -> io::Result<Forked<'a>> {
    let mut buf = [0u8; 4];
    let n = loop {
        match sys::read(err_r.as_raw_fd(), &mut buf) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
            r => break r,
        }
    };
    match n {
        Ok(4) => Err(io::Error::from_raw_os_error(i32::from_ne_bytes(buf))),
        Ok(_) => Ok(forked),
        Err(e) => Err(e),
    }
}

struct ChildSetup {
    path: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
    cwd: *const libc::c_char,
    moves: Vec<(RawFd, RawFd)>,
    err_w: RawFd,
    parent: libc::pid_t,
    /// Room for the decimal pid (and its NUL) inside RCLUSTER_PID and LISTEN_PID.
    pid_digits: [*mut u8; 2],
    /// The lowest fd number above every target.
    floor: RawFd,
    unbatch: bool,
    /// `cgroup.procs` of the cluster's cgroup, or -1.
    cgroup_procs: RawFd,
}

impl ChildSetup {
    /// Runs in the child between fork and exec. Async-signal-safe calls only, and no
    /// allocation: the functions below are plain calls on this stack.
    unsafe fn run(mut self) -> ! {
        reset_signals();
        libc::setpgid(0, 0);
        // Into the cluster's cgroup before anything can fork: then even a descendant that
        // leaves the group with setsid is ended with the cluster. Best effort: where the
        // move is refused, the group (and PDEATHSIG) still hold. Done before the fd moves,
        // which may reuse this descriptor's number.
        if self.cgroup_procs >= 0 {
            libc::write(self.cgroup_procs, b"0".as_ptr().cast(), 1);
        }
        if self.unbatch {
            sys::leave_batch_scheduling();
        }
        for digits in self.pid_digits {
            write_decimal(digits, libc::getpid() as u32);
        }
        // PDEATHSIG fires when the forking *thread* exits: the supervisor thread lives until
        // every worker is reaped, so it is the right one. Re-check the parent to close the race
        // with a primary that died before prctl.
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
        if libc::getppid() != self.parent {
            libc::_exit(1);
        }
        let err_w = self.place_fds();
        if !self.cwd.is_null() && libc::chdir(self.cwd) < 0 {
            fail(err_w);
        }
        libc::execve(self.path, self.argv, self.envp);
        fail(err_w)
    }

    /// Puts every descriptor the worker inherits at its number and marks every other one
    /// close-on-exec; returns where the exec-error pipe is now.
    unsafe fn place_fds(&mut self) -> RawFd {
        // Move every source fd above all targets first so that no dup2 clobbers a source.
        let floor = self.floor;
        let mut err_w = self.err_w;
        if err_w < floor {
            err_w = libc::fcntl(err_w, libc::F_DUPFD_CLOEXEC, floor);
            if err_w < 0 {
                libc::_exit(127);
            }
        }
        // The child's copy of the vector: changing it allocates nothing.
        let moves = &mut self.moves[..];
        for m in moves.iter_mut().filter(|m| m.0 < floor) {
            m.0 = libc::fcntl(m.0, libc::F_DUPFD_CLOEXEC, floor);
            if m.0 < 0 {
                fail(err_w);
            }
        }
        for &(src, dst) in moves.iter() {
            if libc::dup2(src, dst) < 0 {
                fail(err_w);
            }
        }
        // Workers inherit the host's stdin/stdout/stderr even where the host marked them
        // close-on-exec for its own children (libuv does so in Node).
        for fd in 0..3 {
            let flags = libc::fcntl(fd, libc::F_GETFD);
            if flags >= 0 && flags & libc::FD_CLOEXEC != 0 {
                libc::fcntl(fd, libc::F_SETFD, flags & !libc::FD_CLOEXEC);
            }
        }
        // The host may hold descriptors without CLOEXEC (a jobserver pipe, a library's log
        // file): none of them may leak into a worker. Marking them CLOEXEC rather than closing
        // them keeps the exec-error pipe usable until exec.
        if libc::syscall(
            libc::SYS_close_range,
            floor as libc::c_uint,
            libc::c_uint::MAX,
            CLOSE_RANGE_CLOEXEC,
        ) < 0
        {
            fail(err_w);
        }
        err_w
    }
}

/// In the child: a fresh signal state, an empty mask and default dispositions (SIG_IGN would
/// survive exec).
unsafe fn reset_signals() {
    let mut set: libc::sigset_t = std::mem::zeroed();
    libc::sigemptyset(&mut set);
    libc::pthread_sigmask(libc::SIG_SETMASK, &set, std::ptr::null_mut());
    let mut dfl: libc::sigaction = std::mem::zeroed();
    dfl.sa_sigaction = libc::SIG_DFL;
    for sig in 1..65 {
        if sig != libc::SIGKILL && sig != libc::SIGSTOP {
            libc::sigaction(sig, &dfl, std::ptr::null_mut());
        }
    }
}

/// In the child: tells the parent why exec could not happen (errno on the exec-error pipe),
/// and exits 127.
unsafe fn fail(err_w: RawFd) -> ! {
    let errno = *libc::__errno_location();
    let bytes = errno.to_ne_bytes();
    libc::write(err_w, bytes.as_ptr().cast(), 4);
    libc::_exit(127)
}

/// Writes `n` in decimal followed by NUL; the caller provides at least 11 bytes.
/// Async-signal-safe: no allocation, no locks.
unsafe fn write_decimal(out: *mut u8, mut n: u32) {
    let mut digits = [0u8; 10];
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in 0..len {
        *out.add(i) = digits[len - 1 - i];
    }
    *out.add(len) = 0;
}
