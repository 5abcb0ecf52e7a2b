//! Command-line arguments and their translation into a core `Config`.

use std::ffi::OsString;
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use rcluster_core::{
    default_listener_name, resolve_listen, Config, ControlMode, Dispatch, ListenAddr, Listener,
    Output, ReadyOn, RestartMode,
};

const ABOUT: &str = "Run any program as a supervised cluster of pre-forked workers.";

const LONG_ABOUT: &str = "\
Run any program as a supervised cluster of pre-forked workers.

rcluster starts N copies of a command, restarts the ones that exit according to a policy
(with exponential backoff and a limit), replaces them all one by one on SIGHUP, and prints
one line per lifecycle event on stderr.";

const AFTER_HELP: &str = "\
Examples:
  rcluster run -- sleep 300
      one worker per usable CPU running `sleep 300`, restarted whenever it exits
  rcluster run -w 4 --restart on-failure --max-restarts 3 -- ./server --port 8080
      four workers; a crash is retried at most 3 times per minute, a clean exit is final

A running cluster, by its name (--name; default: the program's base name), from any shell of
the same user, through its control socket (docs/control.md):
  rcluster ls;  rcluster status web [--json];  rcluster reload web;  rcluster scale web +1
  rcluster logs web -f (with --prefix-output);  rcluster monit web;  rcluster metrics web
  rcluster stop web

Signals (send them to the rcluster process):
  SIGINT, SIGTERM  stop gracefully: SIGTERM to every worker, SIGKILL after --kill-timeout;
                   a second SIGINT/SIGTERM kills the workers at once; with --drain-delay,
                   /readyz fails first and the stop begins after the delay
  SIGHUP           rolling reload: start a new worker, wait until it is ready, stop an old one;
                   a SIGHUP during a reload starts another reload once that one has ended
  SIGTTIN          one worker more
  SIGTTOU          one worker fewer (never below 1)

Exit status:
  0  stopped by SIGINT/SIGTERM, or every worker finished cleanly on its own (exit code 0, or
     a --no-restart-code)
  1  every worker went down on its own and at least one failed (or rcluster itself failed)
  2  invalid arguments or configuration (for example, a command that does not exist, or a
     --listen address already in use)";

const RUN_AFTER_HELP: &str = "\
DUR is a number with an optional unit: 500ms, 5s, 2m, 1h; a bare number means seconds.

Examples:
  rcluster run -- sleep 300
  rcluster run -w 4 --listen :8080 --dispatch shared -- ./server-with-socket-activation
  rcluster run -w 2 --ready explicit --listen 127.0.0.1:8080 -- ./hello-worker
  rcluster run --listen :8080=web --metrics :9100 --drain-delay 5s -- ./hello-worker
      probes and Prometheus metrics on :9100; under systemd, a passed socket named web is used

Signals: SIGINT/SIGTERM stop (twice: kill now), SIGHUP reloads, SIGTTIN/SIGTTOU scale by one.
Exit status: 0 after a requested stop, 1 when the cluster went down with failures, 2 on bad usage.";

#[derive(Parser, Debug)]
#[command(name = "rcluster", version, about = ABOUT, long_about = LONG_ABOUT, after_help = AFTER_HELP)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Start workers running CMD and supervise them until stopped
    #[command(after_help = RUN_AFTER_HELP, args_override_self = true)]
    Run(Box<RunArgs>),
    /// List the running clusters of this user (their control sockets); a socket left by a
    /// killed primary (nothing accepts on it) is removed and not listed
    Ls {
        /// List stale sockets too, marked stale, with what was done about them
        #[arg(short = 'a', long)]
        all: bool,
    },
    /// Show a running cluster's workers (a table; --json: the status object)
    Status {
        /// The cluster's name (or the path of its control socket)
        name: String,
        /// Print the status object as JSON
        #[arg(long)]
        json: bool,
    },
    /// Replace every worker of a running cluster, one by one (exit status 1 if it rolled back)
    Reload { name: String },
    /// Set the number of workers: N, +K or -K
    Scale {
        name: String,
        #[arg(allow_hyphen_values = true, value_name = "N|+K|-K")]
        workers: String,
    },
    /// Restart the worker of slot SLOT gracefully
    Restart { name: String, slot: u32 },
    /// Send a signal (TERM, USR2, 15, ...) to the worker of slot SLOT
    Signal {
        name: String,
        slot: u32,
        signal: String,
    },
    /// Stop a running cluster gracefully; returns once it has stopped
    Stop { name: String },
    /// Print the last lines of every worker's output (kept when the cluster reads it)
    Logs {
        name: String,
        /// Keep printing new lines
        #[arg(short = 'f', long)]
        follow: bool,
        /// Lines of history per worker
        #[arg(short = 'n', long = "lines", default_value_t = 20)]
        lines: usize,
    },
    /// Print the lifecycle events of a running cluster as they happen (JSON lines)
    Events { name: String },
    /// A live view of a running cluster's workers (q quits, +/- scale, r reloads)
    Monit { name: String },
    /// Print a running cluster's metrics in the Prometheus text format (what /metrics
    /// serves; --metrics need not be on)
    Metrics { name: String },
}

#[derive(Args, Debug)]
pub struct RunArgs {
    /// Number of workers [default: one per CPU rcluster may use: its CPU affinity, bounded by
    /// its cgroup's CPU quota]
    #[arg(short = 'w', long = "workers", value_name = "N")]
    pub workers: Option<usize>,

    /// Which exits are followed by a restart
    #[arg(long, value_enum, default_value_t = Restart::Always, value_name = "WHEN")]
    pub restart: Restart,

    /// How long a stopping worker may take before SIGKILL (SIGTERM comes at half, after the disconnect frame) [default: 10s]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub kill_timeout: Option<Duration>,

    /// When a worker counts as ready: at exec, when the worker library connects, or when it
    /// calls ready()
    #[arg(long, value_enum, default_value_t = Ready::Spawn, value_name = "WHEN")]
    pub ready: Ready,

    /// A worker not ready this long after start is killed [default: 30s]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub ready_timeout: Option<Duration>,

    /// Kill a ready worker that sends nothing for this long (off unless given)
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub heartbeat_timeout: Option<Duration>,

    /// Kill a worker that leaves a connection handed to it unacknowledged this long (it does
    /// not read its link), and give the connection to another worker [default: 5s]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub ack_timeout: Option<Duration>,

    /// First delay before restarting a failed worker; 0 restarts at once [default: 100ms]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub backoff_initial: Option<Duration>,

    /// Longest delay before a restart; 0 restarts at once [default: 10s]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub backoff_max: Option<Duration>,

    /// A worker up this long has its backoff reset [default: 5s]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub min_uptime: Option<Duration>,

    /// Give up on a worker slot after more than N restarts within --restart-window [default: 10]
    #[arg(long, value_name = "N")]
    pub max_restarts: Option<u32>,

    /// The window for --max-restarts [default: 60s]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub restart_window: Option<Duration>,

    /// Exit code meaning "do not restart me" (repeatable)
    #[arg(
        long = "no-restart-code",
        value_name = "CODE",
        allow_negative_numbers = true
    )]
    pub no_restart_codes: Vec<i32>,

    /// Largest IPC message in bytes, either direction [default: 16 MiB]
    #[arg(long, value_name = "BYTES")]
    pub max_message: Option<usize>,

    /// Most bytes of worker messages waiting in rcluster; beyond, workers that send are not
    /// read until it catches up [default: 4 MiB]
    #[arg(long, value_name = "BYTES")]
    pub event_queue_limit: Option<usize>,

    /// Extra environment variable for workers (repeatable)
    #[arg(long = "env", value_name = "K=V", value_parser = parse_env)]
    pub env: Vec<(OsString, OsString)>,

    /// Working directory of workers
    #[arg(long, value_name = "DIR")]
    pub cwd: Option<PathBuf>,

    /// Prefix every line workers print with "[id] " (lines that stdout/stderr cannot take in
    /// time are dropped, and counted in the log)
    #[arg(long)]
    pub prefix_output: bool,

    /// Listen on ADDR (127.0.0.1:8080, [::1]:8080, localhost:8080, :8080, unix:/path), named
    /// NAME for the workers (repeatable; default names listen0, listen1, ...). A host name is
    /// resolved once, at start, and every address it resolves to is bound (NAME, NAME-2, ...)
    #[arg(long = "listen", value_name = "ADDR[=NAME]", value_parser = parse_listen)]
    pub listen: Vec<(Vec<ListenAddr>, Option<String>)>,

    /// How connections reach workers: rr (the primary accepts and hands them out in turn),
    /// least-conn, sticky (same client address, same worker), shared (workers inherit the
    /// socket as LISTEN_FDS and accept themselves) [default: rr]
    #[arg(long, value_name = "MODE", value_parser = parse_dispatch)]
    pub dispatch: Option<Dispatch>,

    /// Share the --listen TCP addresses with other processes that listen there with
    /// SO_REUSEPORT (e.g. a second rcluster started with --share); without it, an address
    /// anything listens on already is refused (exit 2)
    #[arg(long)]
    pub share: bool,

    /// Most connections one worker holds at once; more wait in the primary
    #[arg(long, value_name = "N")]
    pub max_inflight: Option<usize>,

    /// During a reload, most workers started beyond -w at once [default: 1]
    #[arg(long, value_name = "N")]
    pub max_surge: Option<usize>,

    /// Serve /metrics (Prometheus), /healthz and /readyz over HTTP on ADDR (127.0.0.1:9100,
    /// :9100, unix:/path), from rcluster's own loop
    #[arg(long, value_name = "ADDR", value_parser = parse_metrics)]
    pub metrics: Option<ListenAddr>,

    /// Fewest ready workers for /readyz to answer 200 [default: 1]
    #[arg(long, value_name = "N")]
    pub ready_min: Option<usize>,

    /// On SIGTERM/SIGINT, fail /readyz at once and keep serving this long before stopping,
    /// so that a load balancer stops sending first [default: 0s]
    #[arg(long, value_name = "DUR", value_parser = parse_duration)]
    pub drain_delay: Option<Duration>,

    /// Round-robin in exact turns: without it, a connection whose turn falls on a worker busier
    /// than the next goes to the next
    #[arg(long)]
    pub strict_turns: bool,

    /// Adopt orphaned descendants (PR_SET_CHILD_SUBREAPER) and reap them, as rcluster does
    /// by itself when it runs as PID 1 (a container's init); the workers stay the
    /// supervisor's
    #[arg(long)]
    pub subreaper: bool,

    /// Replace a worker whose resident memory exceeds SIZE (512M, 2G, 65536K, or bytes) the
    /// way a reload replaces it: its replacement is ready before it drains (exit reason
    /// memory). Checked once a second
    #[arg(long, value_name = "SIZE", value_parser = parse_size)]
    pub max_memory: Option<u64>,

    /// Replace a worker once the primary has handed it N connections (plus
    /// --max-requests-jitter), the way a reload replaces it (exit reason max_requests).
    /// Connections workers accept themselves (--dispatch shared) are not counted
    #[arg(long, value_name = "N")]
    pub max_requests: Option<u64>,

    /// Add a random 0..=N to each worker's --max-requests, so that workers started together
    /// are not replaced together [default: 0]
    #[arg(long, value_name = "N")]
    pub max_requests_jitter: Option<u64>,

    /// The cluster's name: `rcluster status NAME` and the others find it by it [default: the
    /// program's base name, or NAME-PID when a cluster of that name runs already]
    #[arg(long, value_name = "NAME")]
    pub name: Option<String>,

    /// The control socket: on (if it can be made), off, or required (fail without it)
    #[arg(long, value_enum, default_value_t = Control::On, value_name = "WHEN")]
    pub control: Control,

    /// Read flags from a TOML file: each key is a long flag (`workers = 4`, `kill-timeout =
    /// "5s"`, `listen = [":8080"]`, `env = { K = "v" }`, `cmd = ["./server", "--port", "8080"]`);
    /// flags given on the command line win
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// The program to run and its arguments (put them after --)
    #[arg(value_name = "CMD", required = true, num_args = 1.., trailing_var_arg = true)]
    pub cmd: Vec<OsString>,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Restart {
    Always,
    OnFailure,
    Never,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Control {
    On,
    Off,
    Required,
}

#[derive(ValueEnum, Clone, Copy, Debug)]
pub enum Ready {
    Spawn,
    Hello,
    Explicit,
}

impl RunArgs {
    /// Combinations of flags that parse but make no sense: an error naming the flags.
    pub fn check(&self) -> Result<(), String> {
        // Under socket activation the passed sockets are listeners too.
        if self.listen.is_empty() && std::env::var_os("LISTEN_FDS").is_none() {
            for (given, flag) in [
                (self.dispatch.is_some(), "--dispatch"),
                (self.share, "--share"),
            ] {
                if given {
                    return Err(format!(
                        "{flag} applies to the addresses of --listen, and none is given"
                    ));
                }
            }
        }
        Ok(())
    }

    /// The core configuration; anything not given keeps the default of `Config::new`.
    pub fn to_config(&self) -> Config {
        let mut c = Config::new(self.cmd.iter().cloned());
        set(&mut c.workers, self.workers);
        c.ready_on = match self.ready {
            Ready::Spawn => ReadyOn::Spawn,
            Ready::Hello => ReadyOn::Hello,
            Ready::Explicit => ReadyOn::Explicit,
        };
        c.restart.mode = match self.restart {
            Restart::Always => RestartMode::Always,
            Restart::OnFailure => RestartMode::OnFailure,
            Restart::Never => RestartMode::Never,
        };
        set(&mut c.kill_timeout, self.kill_timeout);
        set(&mut c.ready_timeout, self.ready_timeout);
        c.heartbeat_timeout = self.heartbeat_timeout;
        if let Some(t) = self.ack_timeout {
            c.ack_timeout = Some(t);
        }
        set(&mut c.restart.backoff_initial, self.backoff_initial);
        set(&mut c.restart.backoff_max, self.backoff_max);
        set(&mut c.restart.min_uptime, self.min_uptime);
        set(&mut c.restart.max_restarts, self.max_restarts);
        set(&mut c.restart.window, self.restart_window);
        c.restart
            .no_restart_codes
            .clone_from(&self.no_restart_codes);
        if let Some(m) = self.max_message {
            c.set_max_message(m);
        }
        set(&mut c.event_queue_limit, self.event_queue_limit);
        c.env.clone_from(&self.env);
        c.cwd.clone_from(&self.cwd);
        c.output = if self.prefix_output {
            Output::Prefix
        } else {
            Output::Inherit
        };
        let dispatch = self.dispatch.unwrap_or(Dispatch::RoundRobin);
        // A host name that resolved to several addresses gives one listener per address:
        // NAME for the first, NAME-2, NAME-3, ... for the others.
        c.listeners = Vec::new();
        for (i, (addrs, name)) in self.listen.iter().enumerate() {
            let name = name.clone().unwrap_or_else(|| default_listener_name(i));
            for (k, addr) in addrs.iter().enumerate() {
                let name = if k == 0 {
                    name.clone()
                } else {
                    format!("{name}-{}", k + 1)
                };
                let mut l = Listener::new(name, addr.clone(), dispatch);
                l.share = self.share;
                c.listeners.push(l);
            }
        }
        c.name.clone_from(&self.name);
        c.control = match self.control {
            Control::On => ControlMode::On,
            Control::Off => ControlMode::Off,
            Control::Required => ControlMode::Required,
        };
        c.max_inflight = self.max_inflight;
        set(&mut c.max_surge, self.max_surge);
        c.metrics.clone_from(&self.metrics);
        c.strict_turns = self.strict_turns;
        set(&mut c.ready_min, self.ready_min);
        set(&mut c.drain_delay, self.drain_delay);
        c.max_memory = self.max_memory;
        c.max_requests = self.max_requests;
        set(&mut c.max_requests_jitter, self.max_requests_jitter);
        c
    }
}

/// The flag behind a core config field, so that errors from validation point at what to fix.
pub fn flag_for(field: &str) -> Option<&'static str> {
    Some(match field {
        "workers" => "--workers",
        "argv" => "CMD",
        "env" => "--env",
        "cwd" => "--cwd",
        "ready_timeout" => "--ready-timeout",
        "kill_timeout" => "--kill-timeout",
        "heartbeat_timeout" => "--heartbeat-timeout",
        "ack_timeout" => "--ack-timeout",
        "max_message" | "send_queue_limit" => "--max-message",
        "restart.backoff_initial" => "--backoff-initial",
        "restart.backoff_max" => "--backoff-max / --backoff-initial",
        "restart.min_uptime" => "--min-uptime",
        "restart.window" => "--restart-window",
        "restart.no_restart_codes" => "--no-restart-code",
        "listeners.name" | "listeners.addr" | "listen" => "--listen",
        "max_inflight" => "--max-inflight",
        "max_surge" => "--max-surge",
        "max_memory" => "--max-memory",
        "max_requests" => "--max-requests",
        "max_requests_jitter" => "--max-requests-jitter",
        "event_queue_limit" => "--event-queue-limit",
        "ready_min" => "--ready-min",
        "drain_delay" => "--drain-delay",
        "name" => "--name",
        _ => return None,
    })
}

/// `ADDR` or `ADDR=NAME`; a Unix path may itself contain '=', so only a last part without '/'
/// counts as a name. A host name is resolved here, once, into every address it stands for.
fn parse_listen(s: &str) -> Result<(Vec<ListenAddr>, Option<String>), String> {
    let (addr, name) = match s.rsplit_once('=') {
        Some((a, n)) if !n.is_empty() && !n.contains('/') => (a, Some(n.to_string())),
        _ => (s, None),
    };
    let addrs = resolve_listen(addr).map_err(|e| e.to_string())?;
    Ok((addrs, name))
}

fn parse_metrics(s: &str) -> Result<ListenAddr, String> {
    s.parse::<ListenAddr>().map_err(|e| e.to_string())
}

fn parse_dispatch(s: &str) -> Result<Dispatch, String> {
    s.parse::<Dispatch>().map_err(|e| e.to_string())
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

/// `500ms`, `5s`, `2m`, `1h`, or a bare number of seconds (fractions allowed). Which values
/// an option takes (more than 0, at most a year) is the core's rule, reported naming the flag.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let split = t
        .find(|c: char| !(c.is_ascii_digit() || c == '.'))
        .unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let scale = match unit.trim() {
        "ms" => 0.001,
        "" | "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => {
            return Err(
                "expected a number with an optional unit ms, s, m or h (e.g. 500ms, 5s, 2m)".into(),
            )
        }
    };
    let n: f64 = num.parse().map_err(|_| {
        "expected a number with an optional unit ms, s, m or h (e.g. 500ms, 5s, 2m)"
    })?;
    Duration::try_from_secs_f64(n * scale).map_err(|_| "duration is out of range".to_string())
}

/// A size in bytes: a number with an optional unit K, M or G (powers of 1024; a trailing B
/// and lower case are accepted: 512M, 512mb, 2G, 65536).
pub fn parse_size(s: &str) -> Result<u64, String> {
    const HOW: &str = "expected a size such as 512M, 2G, 65536K or a number of bytes";
    let t = s.trim().to_ascii_uppercase();
    let t = t.strip_suffix('B').unwrap_or(&t);
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let shift = match unit {
        "" => 0,
        "K" => 10,
        "M" => 20,
        "G" => 30,
        _ => return Err(HOW.into()),
    };
    let n: u64 = num.parse().map_err(|_| HOW)?;
    let bytes = n.checked_mul(1 << shift).ok_or("size is out of range")?;
    if bytes == 0 {
        return Err("must be more than 0".into());
    }
    Ok(bytes)
}

fn parse_env(s: &str) -> Result<(OsString, OsString), String> {
    match s.split_once('=') {
        Some((k, v)) => Ok((k.into(), v.into())),
        None => Err("expected NAME=VALUE".into()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_accept_units_and_bare_seconds() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("5s"), Ok(Duration::from_secs(5)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert_eq!(parse_duration("1.5"), Ok(Duration::from_millis(1500)));
    }

    #[test]
    fn sizes_take_k_m_g_units_and_bare_bytes() {
        assert_eq!(parse_size("512M"), Ok(512 << 20));
        assert_eq!(parse_size("2g"), Ok(2 << 30));
        assert_eq!(parse_size("64KB"), Ok(64 << 10));
        assert_eq!(parse_size("1000"), Ok(1000));
        for bad in [
            "",
            "0",
            "0M",
            "M",
            "5T",
            "1.5G",
            "-1",
            "99999999999999999999G",
        ] {
            assert!(parse_size(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn durations_reject_garbage() {
        for bad in ["", "5x", "ms", "-1s", "1..2s", "5 sec"] {
            assert!(parse_duration(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn env_needs_an_equals_sign_and_the_core_a_name() {
        assert_eq!(parse_env("A=b=c"), Ok(("A".into(), "b=c".into())));
        assert!(parse_env("A").is_err());
        let mut c = Config::new(["/bin/true"]);
        c.env.push(parse_env("=x").unwrap());
        let e = c.validate().unwrap_err().to_string();
        assert!(e.contains("env") && e.contains("name"), "{e}");
    }
}
