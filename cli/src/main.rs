//! `rcluster`: run any program as a supervised cluster of workers.
//!
//! Argument parsing, signals and printing only; every supervision decision lives in
//! `rcluster-core`.

mod args;
mod log;
mod run;
mod signals;

use clap::Parser;
use rcluster_core::{Dispatch, Error, Supervisor};

use args::{Cli, Command};

/// Exit status for invalid arguments or configuration (the same as clap uses).
const EXIT_USAGE: i32 = 2;

fn main() {
    let cli = Cli::parse();
    let Command::Run(run) = cli.command;
    std::process::exit(match start(&run) {
        Ok(code) => code,
        Err((code, msg)) => {
            eprintln!("rcluster: error: {msg}");
            code
        }
    });
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
