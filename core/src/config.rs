//! Supervisor configuration and its validation.
//!
//! Validation runs before anything starts, so that a typo is an error naming the field, not a
//! worker that crash-loops.

use std::ffi::{OsStr, OsString};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::sys::activation::{self, Inherited};
use crate::sys::listen::{Dispatch, ListenAddr, Listener};
use crate::wire::frame;

mod limits;

use limits::{check_count, check_duration, Unit};
pub use limits::{MAX_DURATION, MAX_MAX_MESSAGE, MAX_WORKERS, MIN_EVENT_QUEUE_LIMIT};

// The sentinel (in `sys`, below this module) sizes its table for four groups per slot.
const _: () = assert!(crate::sys::sentinel::CAPACITY == 4 * MAX_WORKERS);
/// Default largest user message, in bytes (either direction).
pub const DEFAULT_MAX_MESSAGE: usize = 16 << 20;
/// Default `event_queue_limit`, in bytes: tens of thousands of small messages.
pub const DEFAULT_EVENT_QUEUE_LIMIT: usize = 4 << 20;

/// The number of workers of a cluster whose host gives no count (every host: the command line,
/// C, Node, Python, and `Config::new`): one per CPU this process may use — its affinity mask
/// (`taskset`, a cpuset), bounded by the CPU quota of its cgroup v2 (`cpu.max`, rounded up) —
/// as PM2's `-i max` and most pre-forked servers' advice; at least 1, at most `MAX_WORKERS`.
pub fn default_workers() -> usize {
    crate::sys::cpus::usable().clamp(1, MAX_WORKERS)
}

/// The name of a listener its host gave no name: `listen0`, `listen1`, ... by its place among
/// the listeners (the command line's, C's, Node's and Python's default alike).
pub fn default_listener_name(index: usize) -> String {
    format!("listen{index}")
}

/// When a worker counts as ready (eligible for work; ends `ready_timeout`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadyOn {
    /// As soon as the program has been exec'd: for programs that know nothing of rcluster.
    Spawn,
    /// When the worker library says hello (`Worker::from_env`).
    Hello,
    /// When the worker calls `ready()` explicitly.
    Explicit,
}

/// Whether a worker that exited is started again.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RestartMode {
    /// Restart after any exit the supervisor did not ask for.
    Always,
    /// Restart only after a failure: non-zero exit, a signal, or a kill by the supervisor
    /// for a timeout or a protocol error.
    OnFailure,
    /// Never restart on its own (an explicit `restart_worker` still does).
    Never,
}

/// Where worker stdout/stderr go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Output {
    /// Workers write straight to the primary's stdout/stderr.
    Inherit,
    /// Every line is prefixed with `[id] ` by the primary.
    Prefix,
}

impl std::str::FromStr for ReadyOn {
    type Err = Error;

    fn from_str(s: &str) -> Result<ReadyOn> {
        Ok(match s {
            "spawn" => ReadyOn::Spawn,
            "hello" => ReadyOn::Hello,
            "explicit" => ReadyOn::Explicit,
            _ => {
                return Err(Error::config(
                    "ready_on",
                    s,
                    "expected spawn, hello or explicit",
                ))
            }
        })
    }
}

impl std::str::FromStr for RestartMode {
    type Err = Error;

    /// `always`, `on-failure` (or `on_failure`), `never`.
    fn from_str(s: &str) -> Result<RestartMode> {
        Ok(match s {
            "always" => RestartMode::Always,
            "on-failure" | "on_failure" => RestartMode::OnFailure,
            "never" => RestartMode::Never,
            _ => {
                return Err(Error::config(
                    "restart.mode",
                    s,
                    "expected always, on-failure or never",
                ))
            }
        })
    }
}

impl std::str::FromStr for Output {
    type Err = Error;

    fn from_str(s: &str) -> Result<Output> {
        Ok(match s {
            "inherit" => Output::Inherit,
            "prefix" => Output::Prefix,
            _ => return Err(Error::config("output", s, "expected inherit or prefix")),
        })
    }
}

/// Whether the cluster listens on a control socket (`docs/control.md`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ControlMode {
    /// No control socket.
    Off,
    /// A control socket if it can be made; if not, the cluster runs anyway and says so once
    /// (an `Event::Warning`).
    On,
    /// A control socket, or `start` fails.
    Required,
}

impl std::str::FromStr for ControlMode {
    type Err = Error;

    fn from_str(s: &str) -> Result<ControlMode> {
        Ok(match s {
            "off" => ControlMode::Off,
            "on" => ControlMode::On,
            "required" => ControlMode::Required,
            _ => return Err(Error::config("control", s, "expected off, on or required")),
        })
    }
}

/// The restart policy: which exits restart, how fast, and when to give up.
#[derive(Debug, Clone, PartialEq)]
pub struct RestartPolicy {
    pub mode: RestartMode,
    /// First delay after a failure.
    pub backoff_initial: Duration,
    /// Each consecutive failure multiplies the delay by this.
    pub backoff_multiplier: f64,
    /// The delay never exceeds this.
    pub backoff_max: Duration,
    /// Random spread of the delay, as a fraction (0.1 = ±10%).
    pub jitter: f64,
    /// A worker that stayed up this long resets its backoff.
    pub min_uptime: Duration,
    /// More than this many restarts of one slot within `window` → give up on the slot.
    pub max_restarts: u32,
    pub window: Duration,
    /// Exit codes that mean "do not restart me" (e.g. a worker that cannot boot).
    pub no_restart_codes: Vec<i32>,
}

impl Default for RestartPolicy {
    fn default() -> Self {
        RestartPolicy {
            mode: RestartMode::Always,
            backoff_initial: Duration::from_millis(100),
            backoff_multiplier: 2.0,
            backoff_max: Duration::from_secs(10),
            jitter: 0.1,
            min_uptime: Duration::from_secs(5),
            max_restarts: 10,
            window: Duration::from_secs(60),
            no_restart_codes: Vec::new(),
        }
    }
}

/// Everything a supervisor needs to know. Build with [`Config::new`], adjust the public fields,
/// and hand it to [`crate::Supervisor::start`], which validates it first.
#[derive(Debug, Clone)]
pub struct Config {
    /// Number of worker slots, 1..=4096 (default: [`default_workers`], one per usable CPU).
    pub workers: usize,
    /// Program and arguments; run directly (no shell).
    pub argv: Vec<OsString>,
    /// Extra environment for workers, on top of the primary's own.
    pub env: Vec<(OsString, OsString)>,
    /// Working directory of workers (default: the primary's).
    pub cwd: Option<PathBuf>,
    pub ready_on: ReadyOn,
    /// A worker not ready this long after spawn is killed (reason `ready_timeout`).
    pub ready_timeout: Duration,
    /// When set, a worker silent for this long after becoming ready is killed (reason
    /// `heartbeat`). Any frame counts as a sign of life.
    pub heartbeat_timeout: Option<Duration>,
    /// A worker that leaves a connection handed to it unacknowledged this long is taken for
    /// hung (it does not read its link): it is killed (reason `heartbeat`) and the
    /// connections it never took go to other workers. Only workers that are given connections
    /// by the primary can be caught by it; the worker libraries acknowledge each connection
    /// as soon as their event loop reads it. None: connections wait for the worker however
    /// long it takes.
    pub ack_timeout: Option<Duration>,
    /// Grace between SIGTERM and SIGKILL when stopping a worker.
    pub kill_timeout: Duration,
    pub restart: RestartPolicy,
    /// Largest user message in bytes, either direction.
    pub max_message: usize,
    /// Most bytes queued towards one worker before `send` reports `QueueFull`.
    pub send_queue_limit: usize,
    /// Most bytes of user messages waiting in the host's event queue (each message counts
    /// its length plus a fixed overhead for its event). Once reached, the supervisor stops
    /// reading the workers that send messages (they block in `send`) until the host has
    /// taken half of the queue; lifecycle events (exit, ready, ...) are never held back.
    pub event_queue_limit: usize,
    pub output: Output,
    /// Sockets the primary binds; each chooses how its connections reach workers.
    pub listeners: Vec<Listener>,
    /// Most connections one worker holds at once (handed and not reported closed); the rest
    /// wait in the primary. None: no limit.
    pub max_inflight: Option<usize>,
    /// Most connections handed to one worker and not yet acknowledged.
    pub handoff_window: usize,
    /// Round-robin TCP listeners that workers ask for (`server.listen()` in a worker) are
    /// turned in the kernel when it allows (see `docs/operations.md`): each worker accepts
    /// from a socket of its own and the primary does nothing per connection. Off: the primary
    /// accepts every connection and hands it over.
    pub kernel_round_robin: bool,
    /// Round-robin in strict turns. Off (the default): a connection whose turn falls on a
    /// busy worker goes to the next one if that one is less busy (the kernel's turns compare
    /// how many connections wait in each worker's socket, the primary prefers a worker that
    /// has taken its last handoff), and the shares stay even over time. On: every connection
    /// goes to the worker whose turn it is.
    pub strict_turns: bool,
    /// Most connections waiting in the primary for a worker; more are closed at once.
    pub queue_limit: usize,
    /// A connection waiting longer than this in the primary is closed.
    pub queue_timeout: Duration,
    /// During a reload, most workers started beyond `workers` at once.
    pub max_surge: usize,
    /// Serve `/metrics` (Prometheus text), `/healthz` and `/readyz` over HTTP on this address,
    /// from the supervisor's loop. None (the default): no HTTP server.
    pub metrics: Option<ListenAddr>,
    /// Fewest ready workers for `/readyz` to answer 200.
    pub ready_min: usize,
    /// On a stop signal (`Supervisor::on_signal`), `/readyz` fails at once and the cluster
    /// keeps serving this long before it stops, so that a load balancer takes it out of
    /// rotation first. Zero (the default): stop at once.
    pub drain_delay: Duration,
    /// The cluster's name: its control socket is `NAME.sock` and `rcluster ls` shows it.
    /// None: the base name of the program (`argv[0]`).
    pub name: Option<String>,
    /// The control socket: `$XDG_RUNTIME_DIR/rcluster/NAME.sock` (else `/run/rcluster` for
    /// root, else `~/.rcluster`). A live cluster of the same name fails `start` when `name`
    /// is set; an unnamed one then takes `NAME-PID`.
    pub control: ControlMode,
    /// The folder of the control socket, instead of the one the rules above choose (for a
    /// host that keeps its sockets elsewhere, and for tests).
    pub control_dir: Option<PathBuf>,
    /// A worker whose resident memory (RSS, read from `/proc` once a second) exceeds this
    /// many bytes is replaced the way a reload replaces it (exit reason `memory`). None: no
    /// limit.
    pub max_memory: Option<u64>,
    /// A worker that has been handed this many connections (plus its share of
    /// `max_requests_jitter`) is replaced the way a reload replaces it (exit reason
    /// `max_requests`). Counts what the primary hands over; see `docs/operations.md`.
    /// None: no limit.
    pub max_requests: Option<u64>,
    /// Each worker's own limit is `max_requests + randint(0, max_requests_jitter)`, so that
    /// workers started together are not all replaced together.
    pub max_requests_jitter: u64,
}

impl Config {
    /// A configuration with defaults for everything but the command.
    pub fn new<I, S>(argv: I) -> Config
    where
        I: IntoIterator<Item = S>,
        S: Into<OsString>,
    {
        Config {
            workers: default_workers(),
            argv: argv.into_iter().map(Into::into).collect(),
            env: Vec::new(),
            cwd: None,
            ready_on: ReadyOn::Hello,
            ready_timeout: Duration::from_secs(30),
            heartbeat_timeout: None,
            ack_timeout: Some(Duration::from_secs(5)),
            kill_timeout: Duration::from_secs(10),
            restart: RestartPolicy::default(),
            max_message: DEFAULT_MAX_MESSAGE,
            send_queue_limit: 64 << 20,
            event_queue_limit: DEFAULT_EVENT_QUEUE_LIMIT,
            output: Output::Inherit,
            listeners: Vec::new(),
            max_inflight: None,
            handoff_window: 64,
            kernel_round_robin: true,
            strict_turns: false,
            queue_limit: 4096,
            queue_timeout: Duration::from_secs(10),
            max_surge: 1,
            metrics: None,
            ready_min: 1,
            drain_delay: Duration::ZERO,
            name: None,
            control: ControlMode::Off,
            control_dir: None,
            max_memory: None,
            max_requests: None,
            max_requests_jitter: 0,
        }
    }

    /// Sets `max_message`, and raises `send_queue_limit` to four such messages when it was
    /// below (the default's headroom: 64 MiB for 16 MiB), so that a larger limit alone is
    /// enough in every host. A host given a `send_queue_limit` too sets it afterwards.
    pub fn set_max_message(&mut self, bytes: usize) {
        self.max_message = bytes;
        self.send_queue_limit = self.send_queue_limit.max(bytes.saturating_mul(4));
    }

    /// `name`, or the base name of the program when it is not set.
    pub fn resolved_name(&self) -> String {
        if let Some(n) = &self.name {
            return n.clone();
        }
        let prog = self.argv.first().map(Path::new);
        let base = prog
            .and_then(|p| p.file_name())
            .map(|b| b.to_string_lossy());
        base.map_or_else(|| "rcluster".into(), |b| b.into_owned())
    }

    /// The checks `validate` makes of `max_message` and `send_queue_limit`, for a binding that
    /// refuses bad values when they are set: the error names the field.
    pub fn check_message_limits(max_message: usize, send_queue_limit: usize) -> Result<()> {
        check_count("max_message", max_message as u64)?;
        check_count("send_queue_limit", send_queue_limit as u64)?;
        if send_queue_limit < max_message + frame::HEADER_LEN {
            return Err(Error::config(
                "send_queue_limit",
                send_queue_limit,
                format!(
                    "must hold at least one largest message ({} bytes)",
                    max_message + frame::HEADER_LEN
                ),
            ));
        }
        Ok(())
    }

    /// A host's integer for the integer field `field` (named as in `Config`, `restart.`
    /// before a field of the restart policy), refused with the field's rule when it is out of
    /// range, negative included: for bindings whose numbers are signed or floating.
    pub fn count<T: TryFrom<i128>>(field: &'static str, value: i128) -> Result<T> {
        limits::count(field, value)
    }

    /// A host's number of seconds for the duration field `field`, refused with the field's
    /// rule when it is negative, not a number, zero where zero means nothing, or over a year.
    pub fn seconds(field: &'static str, secs: f64) -> Result<Duration> {
        limits::duration(field, secs, Unit::Seconds)
    }

    /// As [`Config::seconds`], for a host that counts in milliseconds.
    pub fn millis(field: &'static str, ms: f64) -> Result<Duration> {
        limits::duration(field, ms, Unit::Millis)
    }

    /// A host's address for the address field `field` (`metrics`): the forms of
    /// [`ListenAddr`] (`127.0.0.1:9100`, `[::1]:9100`, `:9100`, `unix:/path`), refused naming
    /// `field`.
    pub fn address(field: &'static str, s: &str) -> Result<ListenAddr> {
        s.parse::<ListenAddr>().map_err(|e| match e {
            Error::Config { value, reason, .. } => Error::Config {
                field,
                value,
                reason,
            },
            e => e,
        })
    }

    /// Checks every field; returns the program path the workers will exec.
    pub fn validate(&self) -> Result<PathBuf> {
        self.check_values()?;
        if let Some(cwd) = &self.cwd {
            if !cwd.is_dir() {
                return Err(Error::config("cwd", cwd, "is not a directory"));
            }
        }
        self.resolve_program()
    }

    /// Checks every rule that depends on the values alone (ranges, and fields that must agree
    /// with each other), not on the file system: what `validate` checks but the program and
    /// the working directory. A binding that refuses a bad value where it is set (the C
    /// library's setters) applies it to a copy and calls this.
    pub fn check_values(&self) -> Result<()> {
        check_count("workers", self.workers as u64)?;
        check_duration("ready_timeout", self.ready_timeout)?;
        check_duration("kill_timeout", self.kill_timeout)?;
        if let Some(hb) = self.heartbeat_timeout {
            check_duration("heartbeat_timeout", hb)?;
        }
        if let Some(t) = self.ack_timeout {
            check_duration("ack_timeout", t)?;
        }
        self.validate_restart()?;
        Config::check_message_limits(self.max_message, self.send_queue_limit)?;
        check_count("event_queue_limit", self.event_queue_limit as u64)?;
        for (k, v) in &self.env {
            if k.is_empty() || k.as_bytes().contains(&b'=') || k.as_bytes().contains(&0) {
                return Err(Error::config(
                    "env",
                    k,
                    "a variable name must be non-empty, without '=' or NUL",
                ));
            }
            if v.as_bytes().contains(&0) {
                return Err(Error::config("env", k, "value contains a NUL byte"));
            }
        }
        self.validate_listeners()?;
        self.validate_recycling()?;
        self.validate_dispatch()
    }

    fn validate_listeners(&self) -> Result<()> {
        for (i, l) in self.listeners.iter().enumerate() {
            if l.name.is_empty()
                || l.name.contains(':')
                || l.name.len() > 255
                || l.name.contains('\0')
            {
                return Err(Error::config(
                    "listeners.name",
                    &l.name,
                    "must be 1..=255 bytes without ':' or NUL",
                ));
            }
            if self.listeners[..i].iter().any(|o| o.name == l.name) {
                return Err(Error::config(
                    "listeners.name",
                    &l.name,
                    "is used by two listeners",
                ));
            }
            if self.listeners[..i].iter().any(|o| o.addr == l.addr) {
                return Err(Error::config(
                    "listeners.addr",
                    l.addr.to_string(),
                    "is given twice",
                ));
            }
        }
        Ok(())
    }

    fn validate_dispatch(&self) -> Result<()> {
        if let Some(n) = self.max_inflight {
            check_count("max_inflight", n as u64)?;
        }
        check_count("handoff_window", self.handoff_window as u64)?;
        check_count("queue_limit", self.queue_limit as u64)?;
        check_duration("queue_timeout", self.queue_timeout)?;
        check_count("ready_min", self.ready_min as u64)?;
        check_duration("drain_delay", self.drain_delay)?;
        check_count("max_surge", self.max_surge as u64)
    }

    fn validate_recycling(&self) -> Result<()> {
        if let Some(n) = self.max_memory {
            check_count("max_memory", n)?;
        }
        if let Some(n) = self.max_requests {
            check_count("max_requests", n)?;
        }
        check_count("max_requests_jitter", self.max_requests_jitter)?;
        if self.max_requests_jitter > 0 && self.max_requests.is_none() {
            return Err(Error::config(
                "max_requests_jitter",
                self.max_requests_jitter,
                "has no effect without max_requests",
            ));
        }
        Ok(())
    }

    fn validate_restart(&self) -> Result<()> {
        let r = &self.restart;
        if !(r.backoff_multiplier.is_finite() && r.backoff_multiplier >= 1.0) {
            return Err(Error::config(
                "restart.backoff_multiplier",
                r.backoff_multiplier,
                "must be a number >= 1",
            ));
        }
        if !(r.jitter.is_finite() && (0.0..=1.0).contains(&r.jitter)) {
            return Err(Error::config(
                "restart.jitter",
                r.jitter,
                "must be between 0 and 1",
            ));
        }
        if r.backoff_max < r.backoff_initial {
            return Err(Error::config(
                "restart.backoff_max",
                r.backoff_max,
                "must be >= restart.backoff_initial",
            ));
        }
        check_duration("restart.backoff_initial", r.backoff_initial)?;
        check_duration("restart.backoff_max", r.backoff_max)?;
        check_duration("restart.min_uptime", r.min_uptime)?;
        check_duration("restart.window", r.window)?;
        for &code in &r.no_restart_codes {
            check_count("restart.no_restart_codes", code)?;
        }
        Ok(())
    }

    /// Finds the program the way `execvp` would, so that a missing one is reported now.
    fn resolve_program(&self) -> Result<PathBuf> {
        let Some(prog) = self.argv.first() else {
            return Err(Error::config("argv", &self.argv, "must name a program"));
        };
        if self.argv.iter().any(|a| a.as_bytes().contains(&0)) {
            return Err(Error::config(
                "argv",
                &self.argv,
                "arguments must not contain NUL bytes",
            ));
        }
        if prog.is_empty() {
            return Err(Error::config("argv", prog, "the program name is empty"));
        }
        // A relative program path (and a relative PATH entry) means what it means to a shell
        // that ran `cd CWD && PROG`: relative to the worker's directory, made absolute here
        // so that the child's chdir cannot apply it a second time.
        let base = std::path::absolute(self.cwd.as_deref().unwrap_or(Path::new(".")))
            .map_err(|e| Error::config("cwd", &self.cwd, format!("cannot resolve: {e}")))?;
        if prog.as_bytes().contains(&b'/') {
            let path = base.join(prog);
            return check_executable(&path).map(|()| path);
        }
        let search = self
            .path_var()
            .unwrap_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin"));
        for dir in std::env::split_paths(&search) {
            let candidate = base.join(dir).join(prog);
            if check_executable(&candidate).is_ok() {
                return Ok(candidate);
            }
        }
        Err(Error::config("argv", prog, "program not found in PATH"))
    }

    /// Uses the listening sockets a service manager passed to this process (systemd's socket
    /// activation: `LISTEN_PID`, `LISTEN_FDS`, `LISTEN_FDNAMES`) instead of binding: each
    /// goes to the listener of its name (`FileDescriptorName=`), else to the listener of its
    /// address, else becomes a listener of its own (its name, or `listenN`) with `dispatch`.
    /// The sockets are taken the first time this is called in a process; returns how many
    /// were used. The CLI calls it; an embedding host calls it before `Supervisor::start`.
    pub fn use_inherited_listeners(&mut self, dispatch: Dispatch) -> Result<usize> {
        let inherited = activation::take_inherited()
            .map_err(|e| Error::config("listeners", "LISTEN_FDS", e.to_string()))?;
        let n = inherited.len();
        adopt(&mut self.listeners, inherited, dispatch);
        Ok(n)
    }

    fn path_var(&self) -> Option<OsString> {
        let own = self.env.iter().rev().find(|(k, _)| k == OsStr::new("PATH"));
        own.map(|(_, v)| v.clone())
            .or_else(|| std::env::var_os("PATH"))
    }
}

/// Gives each inherited socket to the listener of its name, else of its address, else to a
/// new listener.
fn adopt(listeners: &mut Vec<Listener>, inherited: Vec<Inherited>, dispatch: Dispatch) {
    for (i, sock) in inherited.into_iter().enumerate() {
        let by_name = sock.name.as_ref().and_then(|n| {
            listeners
                .iter()
                .position(|l| &l.name == n && l.fd.is_none())
        });
        let by_addr = || {
            listeners
                .iter()
                .position(|l| l.addr == sock.addr && l.fd.is_none())
        };
        if let Some(at) = by_name.or_else(by_addr) {
            let l = &mut listeners[at];
            l.addr = sock.addr;
            l.fd = Some(sock.fd);
            continue;
        }
        let mut name = sock.name.unwrap_or_else(|| format!("listen{i}"));
        // Two sockets of one systemd unit without names share the unit's name.
        if listeners.iter().any(|l| l.name == name) {
            name = format!("{name}-{}", i + 1);
        }
        let mut l = Listener::new(name, sock.addr, dispatch);
        l.fd = Some(sock.fd);
        listeners.push(l);
    }
}

fn check_executable(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path)
        .map_err(|e| Error::config("argv", path, format!("cannot use program: {e}")))?;
    if !meta.is_file() {
        return Err(Error::config("argv", path, "is not a regular file"));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(Error::config("argv", path, "is not executable"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_workers_is_rejected_naming_the_field() {
        let mut c = Config::new(["/bin/true"]);
        c.workers = 0;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("workers") && e.contains('0'), "{e}");
    }

    #[test]
    fn missing_program_is_rejected_before_start() {
        let e = Config::new(["no-such-program-xyz"])
            .validate()
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("argv") && e.contains("no-such-program-xyz"),
            "{e}"
        );
    }

    #[test]
    fn program_is_found_in_path() {
        let p = Config::new(["sh"]).validate().unwrap();
        assert!(p.ends_with("sh"));
    }

    #[test]
    fn non_executable_program_is_rejected() {
        let path = std::env::temp_dir().join(format!("rcluster-not-exec-{}", std::process::id()));
        std::fs::write(&path, "#!/bin/sh\n").unwrap();
        let e = Config::new([&path]).validate().unwrap_err().to_string();
        std::fs::remove_file(&path).unwrap();
        assert!(e.contains("not executable"), "{e}");
    }

    #[test]
    fn mode_names_parse_and_bad_ones_are_named() {
        assert_eq!("explicit".parse::<ReadyOn>().unwrap(), ReadyOn::Explicit);
        assert_eq!(
            "on_failure".parse::<RestartMode>().unwrap(),
            RestartMode::OnFailure
        );
        assert_eq!("prefix".parse::<Output>().unwrap(), Output::Prefix);
        let e = "soon".parse::<ReadyOn>().unwrap_err().to_string();
        assert!(e.contains("ready_on") && e.contains("soon"), "{e}");
        assert!("sometimes"
            .parse::<RestartMode>()
            .unwrap_err()
            .to_string()
            .contains("restart.mode"));
        assert!("loud"
            .parse::<Output>()
            .unwrap_err()
            .to_string()
            .contains("output"));
    }

    #[test]
    fn tiny_event_queue_limit_is_rejected_naming_the_field() {
        let mut c = Config::new(["/bin/true"]);
        c.event_queue_limit = 100;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("event_queue_limit") && e.contains("100"), "{e}");
    }

    #[test]
    fn a_larger_max_message_raises_the_queue_unless_it_is_set_after() {
        let mut c = Config::new(["/bin/true"]);
        c.set_max_message(100 << 20);
        assert_eq!(c.send_queue_limit, 400 << 20);
        c.validate().unwrap();
        c.set_max_message(1024);
        assert_eq!(c.send_queue_limit, 400 << 20, "never lowered");
        c.set_max_message(100 << 20);
        c.send_queue_limit = 64 << 20;
        assert!(c.validate().is_err());
    }

    #[test]
    fn inherited_sockets_go_to_the_listener_of_their_name_then_of_their_address() {
        use crate::sys::listen::ListenAddr;
        let tcp = |s: &str| ListenAddr::Tcp(s.parse().unwrap());
        let mut ls = vec![
            Listener::new("web", tcp("127.0.0.1:80"), Dispatch::RoundRobin),
            Listener::new("api", tcp("127.0.0.1:81"), Dispatch::Shared),
        ];
        let passed = vec![
            Inherited {
                name: Some("web".into()),
                addr: tcp("0.0.0.0:8080"),
                fd: 3,
            },
            Inherited {
                name: None,
                addr: tcp("127.0.0.1:81"),
                fd: 4,
            },
            Inherited {
                name: Some("web".into()),
                addr: tcp("127.0.0.1:9090"),
                fd: 5,
            },
        ];
        adopt(&mut ls, passed, Dispatch::Sticky);
        assert_eq!((ls[0].fd, &ls[0].addr), (Some(3), &tcp("0.0.0.0:8080")));
        assert_eq!(ls[1].fd, Some(4));
        assert_eq!(ls[1].dispatch, Dispatch::Shared);
        assert_eq!(ls.len(), 3);
        assert_eq!((ls[2].name.as_str(), ls[2].fd), ("web-3", Some(5)));
        assert_eq!(ls[2].dispatch, Dispatch::Sticky);
    }

    #[test]
    fn zero_recycling_limits_are_rejected_naming_the_field() {
        let mut c = Config::new(["/bin/true"]);
        c.max_memory = Some(0);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("max_memory"), "{e}");
        let mut c = Config::new(["/bin/true"]);
        c.max_requests = Some(0);
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("max_requests = 0"), "{e}");
        let mut c = Config::new(["/bin/true"]);
        c.max_requests_jitter = 5;
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("max_requests_jitter") && e.contains('5'), "{e}");
        c.max_requests = Some(100);
        c.max_memory = Some(64 << 20);
        c.validate().unwrap();
    }

    #[test]
    fn small_queue_limit_is_rejected() {
        let mut c = Config::new(["/bin/true"]);
        c.send_queue_limit = 10;
        assert!(c
            .validate()
            .unwrap_err()
            .to_string()
            .contains("send_queue_limit"));
    }
}
