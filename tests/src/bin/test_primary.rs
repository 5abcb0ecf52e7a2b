//! A primary for tests that must kill the primary itself:
//! `rcluster-test-primary N WORKER-PROGRAM ARGS…` starts N workers, prints their pids on one
//! line once all are ready, then waits to be killed. A failed spawn is printed as
//! "spawn-failed: ERROR" and ends it with code 1; a refused start as "start-failed: ERROR"
//! (code 2). `RCLUSTER_TEST_CWD`, when set, is the workers' `cwd`.

use std::io::Write;
use std::time::Duration;

use rcluster_core::{Config, Event, Supervisor};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args[0].parse().expect("worker count");
    let mut cfg = Config::new(&args[1..]);
    cfg.workers = n;
    cfg.cwd = std::env::var_os("RCLUSTER_TEST_CWD").map(Into::into);
    let sup = match Supervisor::start(cfg) {
        Ok(sup) => sup,
        Err(e) => {
            println!("start-failed: {e}");
            std::process::exit(2);
        }
    };
    let mut ready = 0;
    while ready < n {
        match sup.next_event(Some(Duration::from_secs(10))) {
            Some(Event::Ready { .. }) => ready += 1,
            Some(Event::SpawnFailed { error, .. }) => {
                println!("spawn-failed: {error}");
                std::process::exit(1);
            }
            Some(_) => {}
            None => panic!("workers not ready in time"),
        }
    }
    let pids: Vec<String> = sup
        .snapshot()
        .unwrap()
        .iter()
        .map(|w| w.pid.to_string())
        .collect();
    println!("{}", pids.join(" "));
    std::io::stdout().flush().unwrap();
    std::thread::sleep(Duration::from_secs(60));
}
