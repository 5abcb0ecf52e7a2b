//! Helpers shared by the end-to-end tests.

use std::io::{self, Read, Write};
use std::time::{Duration, Instant};

use rcluster_core::{Config, Event, ListenAddr, Supervisor};

pub mod procs;

/// Path of the test worker program built with this crate: next to the test binary's
/// `deps/` folder, where cargo puts the package's binaries.
pub fn test_worker() -> String {
    bin_path("rcluster-test-worker")
}

/// Path of a binary of this workspace, from inside a test.
pub fn bin_path(name: &str) -> String {
    let exe = std::env::current_exe().expect("current_exe");
    let dir = exe.parent().expect("exe dir");
    let dir = if dir.ends_with("deps") {
        dir.parent().unwrap()
    } else {
        dir
    };
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is not built (cargo builds it with the tests)",
        path.display()
    );
    path.to_string_lossy().into_owned()
}

/// A runtime folder (`XDG_RUNTIME_DIR`) of its own for an `rcluster run` a test starts,
/// removed when dropped: a primary the test kills leaves its control socket there, never in
/// the user's real folder (`/run/rcluster`, `~/.rcluster`).
pub struct RuntimeDir(pub std::path::PathBuf);

impl RuntimeDir {
    pub fn new() -> RuntimeDir {
        use std::sync::atomic::{AtomicUsize, Ordering};
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("rcluster-rt-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("make a runtime folder");
        RuntimeDir(dir)
    }
}

impl Default for RuntimeDir {
    fn default() -> Self {
        RuntimeDir::new()
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A config running the test worker with `args`, with short timeouts fit for tests.
pub fn worker_config(workers: usize, args: &[&str]) -> Config {
    let mut argv = vec![test_worker()];
    argv.extend(args.iter().map(|s| s.to_string()));
    let mut c = Config::new(argv);
    c.workers = workers;
    c.kill_timeout = Duration::from_secs(2);
    c.ready_timeout = Duration::from_secs(5);
    c.restart.backoff_initial = Duration::from_millis(20);
    c.restart.backoff_max = Duration::from_millis(200);
    c.restart.jitter = 0.0;
    c
}

/// Collects events until `pred` matches one (returned) or `within` passes (panics, listing
/// what was seen).
pub fn wait_for(sup: &Supervisor, within: Duration, mut pred: impl FnMut(&Event) -> bool) -> Event {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match sup.next_event(Some(left)) {
            Some(ev) if pred(&ev) => return ev,
            Some(ev) => seen.push(ev),
            None => panic!("no matching event within {within:?}; saw {seen:#?}"),
        }
    }
}

/// Waits until `n` workers are ready; returns their ids.
pub fn wait_ready(sup: &Supervisor, n: usize) -> Vec<u32> {
    let mut ids = Vec::new();
    while ids.len() < n {
        if let Event::Ready { id, .. } = wait_for(sup, Duration::from_secs(10), |e| {
            matches!(e, Event::Ready { .. })
        }) {
            ids.push(id);
        }
    }
    ids.sort();
    ids
}

/// True when a process with this pid exists (zombies included).
pub fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks existence.
    unsafe { libc::kill(pid as i32, 0) == 0 }
}

/// Children of this process that are zombies (exited, not reaped).
pub fn zombie_children() -> usize {
    let me = std::process::id().to_string();
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return 0;
    };
    dir.filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("stat")).ok())
        .filter(|stat| {
            // pid (comm) state ppid ...: comm may contain spaces, so split after the last ')'.
            let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
            let mut f = rest.split_whitespace();
            let state = f.next().unwrap_or("");
            let ppid = f.next().unwrap_or("");
            state == "Z" && ppid == me
        })
        .count()
}

/// Bound on every client read and write: a hung request fails instead of hanging the test.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// What a test worker in `serve`-like modes answers: "ID PID MAXCONC LISTENER".
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reply {
    pub id: u32,
    pub pid: u32,
    /// Most connections the worker ever held at once.
    pub maxconc: usize,
    pub listener: String,
}

impl Reply {
    pub fn parse(body: &str) -> io::Result<Reply> {
        let bad = || io::Error::new(io::ErrorKind::InvalidData, format!("bad body {body:?}"));
        let f: Vec<&str> = body.split_whitespace().collect();
        let [id, pid, maxconc, listener] = f[..] else {
            return Err(bad());
        };
        Ok(Reply {
            id: id.parse().map_err(|_| bad())?,
            pid: pid.parse().map_err(|_| bad())?,
            maxconc: maxconc.parse().map_err(|_| bad())?,
            listener: listener.to_string(),
        })
    }
}

/// Sends one HTTP request on `stream` and reads the response to the end; returns the body of
/// a 200 response. An empty or cut response is an error (`UnexpectedEof`).
pub fn http_exchange<S: Read + Write>(mut stream: S) -> io::Result<String> {
    stream.write_all(b"GET / HTTP/1.1\r\nHost: test\r\n\r\n")?;
    let mut response = Vec::new();
    stream.read_to_end(&mut response)?;
    let text = String::from_utf8_lossy(&response);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            format!("incomplete response {text:?}"),
        ));
    };
    if !head.starts_with("HTTP/1.1 200") {
        return Err(io::Error::other(format!("unexpected response {text:?}")));
    }
    Ok(body.to_string())
}

/// One request on a new connection to `addr` (TCP or Unix); returns the response body.
pub fn http_get(addr: &ListenAddr) -> io::Result<String> {
    match addr {
        ListenAddr::Tcp(sa) => {
            let s = std::net::TcpStream::connect_timeout(sa, CLIENT_TIMEOUT)?;
            s.set_read_timeout(Some(CLIENT_TIMEOUT))?;
            s.set_write_timeout(Some(CLIENT_TIMEOUT))?;
            http_exchange(s)
        }
        ListenAddr::Unix(path) => {
            let s = std::os::unix::net::UnixStream::connect(path)?;
            s.set_read_timeout(Some(CLIENT_TIMEOUT))?;
            s.set_write_timeout(Some(CLIENT_TIMEOUT))?;
            http_exchange(s)
        }
    }
}

/// One request to a test worker listening behind `addr`, parsed.
pub fn request(addr: &ListenAddr) -> io::Result<Reply> {
    Reply::parse(&http_get(addr)?)
}

/// The actual address of the supervisor's listener `name` (port 0 resolved).
pub fn listener_addr(sup: &Supervisor, name: &str) -> ListenAddr {
    sup.listeners()
        .iter()
        .find(|(n, _)| n == name)
        .map(|(_, a)| a.clone())
        .unwrap_or_else(|| panic!("no listener named {name}"))
}
