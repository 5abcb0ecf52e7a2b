//! `rcluster`: run any program as a supervised cluster of workers.
//!
//! Argument parsing, signals and printing only; every supervision decision lives in
//! `rcluster-core`.

mod args;
mod client;
mod config_file;
mod log;
mod monit;
mod run;
mod signals;
mod verbs;

use clap::Parser;
use rcluster_core::{Dispatch, Error, Supervisor};

use args::{Cli, Command};

/// Exit status for invalid arguments or configuration (the same as clap uses).
const EXIT_USAGE: i32 = 2;

fn main() {
    let args = match config_file::expand(std::env::args_os().collect()) {
        Ok(a) => a,
        Err(msg) => {
            eprintln!("rcluster: error: {msg}");
            std::process::exit(EXIT_USAGE);
        }
    };
    let cli = Cli::parse_from(args);
    let outcome = match cli.command {
        Command::Run(run) => start(&run),
        verb => control(verb).map_err(|msg| (verbs::EXIT_REFUSED, msg)),
    };
    std::process::exit(match outcome {
        Ok(code) => code,
        Err((code, msg)) => {
            eprintln!("rcluster: error: {msg}");
            code
        }
    });
}

/// A verb for a running cluster, through its control socket.
fn control(verb: Command) -> verbs::Outcome {
    use serde_json::json;
    match verb {
        Command::Run(_) => unreachable!("handled by start"),
        Command::Ls { all } => verbs::ls(all),
        Command::Status { name, json } => verbs::status(&name, json),
        Command::Reload { name } => verbs::reload(&name),
        Command::Scale { name, workers } => {
            let req = json!({"cmd": "scale", "workers": workers});
            verbs::simple(&name, req, |r| {
                format!("{} -> {} workers", r["before"], r["workers"])
            })
        }
        Command::Restart { name, slot } => {
            let req = json!({"cmd": "restart", "slot": slot});
            verbs::simple(&name, req, |_| format!("restarting slot {slot}"))
        }
        Command::Signal { name, slot, signal } => {
            let req = json!({"cmd": "signal", "slot": slot, "signal": signal});
            verbs::simple(&name, req, |_| format!("sent {signal} to slot {slot}"))
        }
        Command::Stop { name } => verbs::stop(&name),
        Command::Logs {
            name,
            follow,
            lines,
        } => verbs::logs(&name, lines, follow),
        Command::Events { name } => verbs::events(&name),
        Command::Monit { name } => monit::monit(&name),
        Command::Metrics { name } => verbs::metrics(&name),
    }
}

fn start(args: &args::RunArgs) -> Result<i32, (i32, String)> {
    args.check().map_err(|msg| (EXIT_USAGE, msg))?;
    let mut config = args.to_config();
    // Sockets passed by a service manager (systemd's socket activation) are used instead of
    // binding: matched to --listen by name, then by address; the others are added.
    config
        .use_inherited_listeners(args.dispatch.unwrap_or(Dispatch::RoundRobin))
        .map_err(|e| (EXIT_USAGE, e.to_string()))?;
    // Before Supervisor::start: its thread must inherit the blocked mask, or a signal could be
    // delivered there and kill the process instead of reaching the signalfd.
    // As PID 1 (a container) or a subreaper, orphaned descendants become this process's
    // children; it reaps them on SIGCHLD, never the core's own (`reap_orphans`).
    let reaper = args.subreaper || std::process::id() == 1;
    if args.subreaper {
        // SAFETY: plain prctl on this process.
        if unsafe { libc::prctl(libc::PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) } != 0 {
            let e = std::io::Error::last_os_error();
            return Err((run::EXIT_FAILED, format!("--subreaper: {e}")));
        }
    }
    let extra: &[i32] = if reaper { &[libc::SIGCHLD] } else { &[] };
    let sigfd = signals::SignalFd::install(extra).map_err(|e| {
        (
            run::EXIT_FAILED,
            format!("cannot set up signal handling: {e}"),
        )
    })?;
    let sup = Supervisor::start(config).map_err(|e| match e {
        Error::Config { field, .. } => match args::flag_for(field) {
            Some(flag) => (EXIT_USAGE, format!("{e} (set by {flag})")),
            None => (EXIT_USAGE, e.to_string()),
        },
        // A listen address that cannot be used is a usage problem too: nothing was started.
        Error::Bind { ref addr, .. }
            if args
                .metrics
                .as_ref()
                .is_some_and(|m| m.to_string() == *addr) =>
        {
            (EXIT_USAGE, format!("{e} (set by --metrics)"))
        }
        Error::Bind { .. } => (EXIT_USAGE, format!("{e} (set by --listen)")),
        e => (run::EXIT_FAILED, e.to_string()),
    })?;
    let mut runner = run::Runner::new(sup, sigfd, reaper);
    runner.drain_delay = args.drain_delay;
    Ok(runner.run())
}
