//! A primary for tests that must kill the primary itself:
//! `rcluster-test-primary N WORKER-PROGRAM ARGS…` starts N workers, prints their pids on one
//! line once all are ready, then waits to be killed.

use std::io::Write;
use std::time::Duration;

use rcluster_core::{Config, Event, Supervisor};

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let n: usize = args[0].parse().expect("worker count");
    let mut cfg = Config::new(&args[1..]);
    cfg.workers = n;
    let sup = Supervisor::start(cfg).expect("start");
    let mut ready = 0;
    while ready < n {
        match sup.next_event(Some(Duration::from_secs(10))) {
            Some(Event::Ready { .. }) => ready += 1,
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
