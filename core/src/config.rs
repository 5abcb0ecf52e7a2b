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
use crate::sys::listen::Listener;
use crate::wire::frame;

/// Most workers one supervisor runs.
pub const MAX_WORKERS: usize = 4096;
// The sentinel (in `sys`, below this module) sizes its table for four groups per slot.
const _: () = assert!(crate::sys::sentinel::CAPACITY == 4 * MAX_WORKERS);
/// Default largest user message, in bytes (either direction).
pub const DEFAULT_MAX_MESSAGE: usize = 16 << 20;
/// Largest `max_message` that may be configured.
pub const MAX_MAX_MESSAGE: usize = 1 << 30;
/// Default `event_queue_limit`, in bytes: tens of thousands of small messages.
pub const DEFAULT_EVENT_QUEUE_LIMIT: usize = 4 << 20;
/// Smallest `event_queue_limit` that may be configured.
pub const MIN_EVENT_QUEUE_LIMIT: usize = 4096;

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
    /// Number of worker slots, 1..=4096.
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
    /// Most connections waiting in the primary for a worker; more are closed at once.
    pub queue_limit: usize,
    /// A connection waiting longer than this in the primary is closed.
    pub queue_timeout: Duration,
    /// During a reload, most workers started beyond `workers` at once.
    pub max_surge: usize,
    /// The cluster's name: its control socket is `NAME.sock` and `rcluster ls` shows it.
    /// None: the base name of the program (`argv[0]`).
    pub name: Option<String>,
    /// The control socket: `$XDG_RUNTIME_DIR/rcluster/NAME.sock` (else `/run/rcluster` for
    /// root, else `~/.rcluster`). A live cluster of the same name fails `start` when `name`
    /// is set; an unnamed one then takes `NAME-PID`.
    pub control: ControlMode,
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
            workers: 1,
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
            queue_limit: 4096,
            queue_timeout: Duration::from_secs(10),
            max_surge: 1,
            name: None,
            control: ControlMode::Off,
            max_memory: None,
            max_requests: None,
            max_requests_jitter: 0,
        }
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
        if max_message == 0 || max_message > MAX_MAX_MESSAGE {
            return Err(Error::config(
                "max_message",
                max_message,
                format!("must be 1..={MAX_MAX_MESSAGE}"),
            ));
        }
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

    /// Checks every field; returns the program path the workers will exec.
    pub fn validate(&self) -> Result<PathBuf> {
        if self.workers == 0 || self.workers > MAX_WORKERS {
            return Err(Error::config(
                "workers",
                self.workers,
                format!("must be 1..={MAX_WORKERS}"),
            ));
        }
        validate_duration("ready_timeout", self.ready_timeout)?;
        validate_duration("kill_timeout", self.kill_timeout)?;
        if let Some(hb) = self.heartbeat_timeout {
            validate_duration("heartbeat_timeout", hb)?;
        }
        if let Some(t) = self.ack_timeout {
            validate_duration("ack_timeout", t)?;
        }
        self.validate_restart()?;
        Config::check_message_limits(self.max_message, self.send_queue_limit)?;
        if self.event_queue_limit < MIN_EVENT_QUEUE_LIMIT {
            return Err(Error::config(
                "event_queue_limit",
                self.event_queue_limit,
                format!("must be at least {MIN_EVENT_QUEUE_LIMIT} bytes"),
            ));
        }
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
        if let Some(cwd) = &self.cwd {
            if !cwd.is_dir() {
                return Err(Error::config("cwd", cwd, "is not a directory"));
            }
        }
        self.resolve_program()
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
        if self.max_inflight == Some(0) {
            return Err(Error::config(
                "max_inflight",
                0,
                "must be at least 1 (or unset)",
            ));
        }
        if self.handoff_window == 0 || self.handoff_window > 65536 {
            return Err(Error::config(
                "handoff_window",
                self.handoff_window,
                "must be 1..=65536",
            ));
        }
        if self.queue_limit == 0 {
            return Err(Error::config(
                "queue_limit",
                self.queue_limit,
                "must be at least 1",
            ));
        }
        validate_duration("queue_timeout", self.queue_timeout)?;
        if self.max_surge == 0 || self.max_surge > MAX_WORKERS {
            return Err(Error::config(
                "max_surge",
                self.max_surge,
                format!("must be 1..={MAX_WORKERS}"),
            ));
        }
        Ok(())
    }

    fn validate_recycling(&self) -> Result<()> {
        if self.max_memory == Some(0) {
            return Err(Error::config(
                "max_memory",
                0,
                "must be at least 1 byte (or unset)",
            ));
        }
        if self.max_requests == Some(0) {
            return Err(Error::config(
                "max_requests",
                0,
                "must be at least 1 (or unset)",
            ));
        }
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
        if r.window.is_zero() {
            return Err(Error::config("restart.window", r.window, "must be > 0"));
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

    fn path_var(&self) -> Option<OsString> {
        let own = self.env.iter().rev().find(|(k, _)| k == OsStr::new("PATH"));
        own.map(|(_, v)| v.clone())
            .or_else(|| std::env::var_os("PATH"))
    }
}

fn validate_duration(field: &'static str, d: Duration) -> Result<()> {
    if d.is_zero() {
        return Err(Error::config(field, d, "must be > 0"));
    }
    if d > Duration::from_secs(365 * 24 * 3600) {
        return Err(Error::config(field, d, "must be at most a year"));
    }
    Ok(())
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
