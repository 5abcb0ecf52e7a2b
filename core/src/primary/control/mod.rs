//! The control server: a Unix socket per named cluster, served by the supervisor's own loop
//! (no thread and no task per client), speaking the JSON protocol of `docs/control.md`.
//!
//! Everything a client can make the loop hold is bounded: the number of clients, the size of
//! a request, and what waits to be written to each (a client that does not read its stream
//! is dropped past `STREAM_LIMIT`). Writes never block the loop.

mod client;
pub(crate) mod logs;
pub(crate) mod path;
mod request;
mod serve;

use std::collections::BTreeMap;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::PathBuf;
use std::sync::{Arc, Mutex};

use serde_json::{json, Value};

use crate::config::{Config, ControlMode};
use crate::error::{Error, Result};
use crate::events::Event;
use crate::primary::Primary;
use client::{Client, Mode};
use path::Found;

/// Epoll tokens of the control socket (`CONTROL`) and its clients (`CONTROL | id`).
pub(crate) const CONTROL: u64 = 1 << 60;
/// The version in the hello; raised when a change would break a client of the old one.
pub const PROTOCOL_VERSION: u32 = 1;
/// Most clients at once; beyond, the oldest idle one makes room (or the new one is refused).
const MAX_CLIENTS: usize = 32;
/// Longest request line.
const MAX_REQUEST: usize = 64 * 1024;
/// Most bytes waiting for a client that asked for one reply (a status of 4096 workers fits).
const REPLY_LIMIT: usize = 8 << 20;
/// Most bytes waiting for a client that streams events or logs; past it, it is dropped.
const STREAM_LIMIT: usize = 1 << 20;
/// Refused clients are reported at most this often.
const REFUSAL_REPORT_EVERY: std::time::Duration = std::time::Duration::from_secs(1);
/// Names an unnamed cluster tries after its base name (NAME-PID, NAME-PID-2, ...).
const MAX_FALLBACKS: usize = 16;
/// Requests of one client served per turn of the loop.
const REQUESTS_PER_TURN: usize = 8;
/// Bytes read from one client per wake-up.
const READ_CHUNK: usize = 16 * 1024;

pub(crate) struct Control {
    listener: UnixListener,
    pub name: String,
    path: PathBuf,
    identity: Option<(u64, u64)>,
    clients: BTreeMap<u64, Client>,
    next_id: u64,
    /// The last lines of each worker, when the loop reads their output (`Output::Prefix`).
    pub logs: Option<logs::Tap>,
    /// Log lines before this one went to the followers.
    log_sent: u64,
    uid: u32,
    /// Refused clients not reported yet, and when the last report was.
    refused: u64,
    refused_said: Option<std::time::Instant>,
    /// Some client has requests waiting in its buffer (see `serve_requests`).
    backlog: bool,
}

impl Control {
    /// Claims the cluster's socket. Ok(None) when control is off, or when the socket cannot
    /// be made and it is not required (with the warning to give, once).
    pub fn open(cfg: &Config) -> Result<(Option<Control>, Option<String>)> {
        if cfg.control == ControlMode::Off {
            return Ok((None, None));
        }
        let explicit = cfg.name.is_some();
        let mut name = match &cfg.name {
            Some(n) => {
                path::check_name(n).map_err(|why| Error::config("name", n, why))?;
                n.clone()
            }
            None => path::sanitize(&cfg.resolved_name()),
        };
        let unavailable = |why: String| -> Result<(Option<Control>, Option<String>)> {
            if cfg.control == ControlMode::Required {
                return Err(Error::io(
                    "opening the control socket",
                    io::Error::other(why),
                ));
            }
            Ok((
                None,
                Some(format!(
                    "no control socket ({why}); the cluster runs without one"
                )),
            ))
        };
        let Some(dir) = cfg.control_dir.clone().or_else(path::control_dir) else {
            return unavailable("neither XDG_RUNTIME_DIR nor HOME is set".into());
        };
        if let Err(e) = path::prepare_dir(&dir) {
            return unavailable(format!("{}: {e}", dir.display()));
        }
        let mut sock = dir.join(format!("{name}.sock"));
        let conflict = |pid: Option<u32>, sock: &PathBuf| {
            let pid = pid.map_or_else(String::new, |p| format!(" (pid {p})"));
            format!(
                "a live cluster with this name runs{pid}, control socket {}",
                sock.display()
            )
        };
        // Two clusters claiming at once must not both take a stale socket over (the second
        // would remove the first one's fresh socket): claims in the folder take turns.
        let _turn = match path::lock_dir(&dir) {
            Ok(lock) => lock,
            Err(e) => return unavailable(format!("{}: {e}", dir.display())),
        };
        let base = name.clone();
        let mut tries = 0;
        let listener = loop {
            let pid = match path::probe(&sock) {
                Found::Live(pid) => pid,
                _ => match path::bind(&sock) {
                    Ok(l) => break l,
                    Err(e) if e.kind() == io::ErrorKind::AddrInUse => None,
                    Err(e) => return unavailable(format!("{}: {e}", sock.display())),
                },
            };
            // An unnamed cluster of a program that already runs under its base name takes
            // the name NAME-PID (then NAME-PID-2, ... for more in one process): running a
            // program twice is no mistake, naming two clusters alike is.
            tries += 1;
            if explicit || tries > MAX_FALLBACKS {
                return Err(Error::config("name", &name, conflict(pid, &sock)));
            }
            name = match tries {
                1 => format!("{base}-{}", std::process::id()),
                n => format!("{base}-{}-{n}", std::process::id()),
            };
            sock = dir.join(format!("{name}.sock"));
        };
        let logs = (cfg.output == crate::config::Output::Prefix)
            .then(|| Arc::new(Mutex::new(logs::LogRing::default())));
        Ok((
            Some(Control {
                listener,
                name,
                identity: path::identity(&sock),
                path: sock,
                clients: BTreeMap::new(),
                next_id: 1,
                logs,
                log_sent: 0,
                refused: 0,
                refused_said: None,
                backlog: false,
                // SAFETY: geteuid has no preconditions.
                uid: unsafe { libc::geteuid() },
            }),
            None,
        ))
    }

    pub fn path_string(&self) -> String {
        self.path.to_string_lossy().into_owned()
    }

    fn hello(&self) -> Value {
        json!({
            "hello": "rcluster",
            "protocol": PROTOCOL_VERSION,
            "version": env!("CARGO_PKG_VERSION"),
            "name": self.name,
            "pid": std::process::id(),
        })
    }

    /// Makes room for a new client: drops the oldest that has asked for nothing (closing
    /// its descriptor takes it out of the epoll set). False when every client is busy.
    fn make_room(&mut self) -> bool {
        if self.clients.len() < MAX_CLIENTS {
            return true;
        }
        let idle = self
            .clients
            .iter()
            .find(|(_, c)| c.mode == Mode::Idle && c.inbuf.is_empty() && c.out.is_empty())
            .map(|(id, _)| *id);
        idle.is_some_and(|id| self.clients.remove(&id).is_some())
    }
}

impl Drop for Control {
    fn drop(&mut self) {
        // Only if it is still ours: a cluster that took over a socket it thought stale must
        // not lose it to this one's end.
        if self.identity.is_some() && path::identity(&self.path) == self.identity {
            let _ = std::fs::remove_file(&self.path);
        }
    }
}

impl Primary {
    /// Puts the control socket in the loop's epoll set; says once why there is none.
    pub(crate) fn set_control(&mut self, control: Option<Control>, warning: Option<String>) {
        if let Some(detail) = warning {
            self.out.push(Event::Warning { detail });
        }
        let Some(c) = control else { return };
        let fd = c.listener.as_raw_fd();
        if let Err(e) = self.epoll.add(fd, libc::EPOLLIN as u32, CONTROL) {
            self.out.push(Event::Warning {
                detail: format!("no control socket (epoll_ctl: {e}); the cluster runs without one"),
            });
            return;
        }
        self.name.clone_from(&c.name);
        // The `metrics` verb reads the counters `/metrics` reads.
        self.ops.count();
        self.control_path = Some(c.path_string());
        self.control = Some(c);
    }

    /// A control descriptor is ready: the socket (`id` 0) or client `id`.
    pub(super) fn control_ready(&mut self, id: u64, flags: u32) {
        let Some(mut c) = self.control.take() else {
            return;
        };
        if id == 0 {
            self.control_accept(&mut c);
        } else {
            if flags & libc::EPOLLOUT as u32 != 0 {
                self.flush_client(&mut c, id);
            }
            if flags & (libc::EPOLLIN | libc::EPOLLHUP | libc::EPOLLERR) as u32 != 0 {
                self.read_client(&mut c, id);
            }
        }
        self.control = Some(c);
    }

    fn control_accept(&mut self, c: &mut Control) {
        // Bounded: a burst of connections cannot keep the loop here.
        for _ in 0..MAX_CLIENTS {
            let stream = match c.listener.accept() {
                Ok((s, _)) => s,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                // EMFILE and the like: the connection waits in the backlog; try next time.
                Err(_) => return,
            };
            if stream.set_nonblocking(true).is_err() {
                continue;
            }
            if let Some(why) = refusal(c.uid, &stream) {
                self.report_refusal(c, &why);
                let _ =
                    (&stream).write(format!("{}\n", json!({"ok": false, "error": why})).as_bytes());
                continue;
            }
            if !c.make_room() {
                let why = format!("too many control clients (limit {MAX_CLIENTS})");
                let _ =
                    (&stream).write(format!("{}\n", json!({"ok": false, "error": why})).as_bytes());
                continue;
            }
            let id = c.next_id;
            c.next_id += 1;
            let fd = stream.as_raw_fd();
            if self
                .epoll
                .add(fd, libc::EPOLLIN as u32, CONTROL | id)
                .is_err()
            {
                continue;
            }
            c.clients.insert(
                id,
                Client {
                    stream,
                    inbuf: Vec::new(),
                    out: Vec::new(),
                    off: 0,
                    mode: Mode::Idle,
                    polling_out: false,
                    closing: false,
                },
            );
            let hello = c.hello();
            self.send_client(c, id, &hello);
        }
    }

    /// Reports a refused client as a warning event, at most once a second (with how many
    /// were refused meanwhile): lifecycle events are never held back, so a stream of
    /// refused connections must not become a stream of events.
    fn report_refusal(&mut self, c: &mut Control, why: &str) {
        let now = self.clock.now();
        c.refused += 1;
        if c.refused_said
            .is_some_and(|t| now.duration_since(t) < REFUSAL_REPORT_EVERY)
        {
            return;
        }
        let more = match c.refused {
            1 => String::new(),
            n => format!(" ({} more refused since the last report)", n - 1),
        };
        self.out.push(Event::Warning {
            detail: format!("control socket: {why}{more}"),
        });
        c.refused = 0;
        c.refused_said = Some(now);
    }

    /// Last act of a stopping loop: tells the streaming clients, closes the socket.
    pub(super) fn close_control(&mut self) {
        let Some(mut c) = self.control.take() else {
            return;
        };
        let ids: Vec<u64> = c.clients.keys().copied().collect();
        for id in ids {
            // Best effort: a client that does not read misses it.
            self.send_client(&mut c, id, &json!({"ok": true, "stopped": true}));
        }
        drop(c);
    }
}

/// Why a client may not control this cluster, if it may not: only its own user and root.
fn refusal(uid: u32, stream: &UnixStream) -> Option<String> {
    match path::peer_cred(stream.as_raw_fd()) {
        Some(cred) if cred.uid == uid || cred.uid == 0 => None,
        Some(cred) => Some(format!(
            "refused a client of uid {} (pid {}): only uid {uid} and root may control this cluster",
            cred.uid, cred.pid
        )),
        None => Some("refused a client whose credentials cannot be read".into()),
    }
}
