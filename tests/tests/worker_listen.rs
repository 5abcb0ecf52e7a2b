//! Listeners that workers ask for at run time, as `server.listen()` does in a Node cluster
//! worker: the primary binds each address once and dispatches to every worker that asked.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use rcluster_core::{Event, Supervisor};
use rcluster_tests::*;

fn text(ev: &Event) -> String {
    match ev {
        Event::Message { data, .. } => String::from_utf8_lossy(data).into_owned(),
        other => panic!("not a message: {other:?}"),
    }
}

fn get(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    out.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
}

fn listening(sup: &Supervisor, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            text(&wait_for(sup, Duration::from_secs(10), |e| {
                matches!(e, Event::Message { .. })
            }))
        })
        .collect()
}

#[test]
fn workers_asking_for_the_same_address_share_one_listener() {
    let sup = Supervisor::start(worker_config(2, &["listen", "127.0.0.1:0", "rr"])).unwrap();
    let answers = listening(&sup, 2);
    let addrs: Vec<&str> = answers
        .iter()
        .map(|a| a.split(' ').nth(2).unwrap())
        .collect();
    assert!(
        answers.iter().all(|a| a.starts_with("listening ")),
        "{answers:?}"
    );
    assert_eq!(
        addrs[0], addrs[1],
        "port 0 must mean one shared port, as in a Node cluster"
    );
    assert!(!addrs[0].ends_with(":0"));
    let mut workers: Vec<String> = (0..20)
        .map(|_| get(addrs[0]).split(' ').next().unwrap().to_string())
        .collect();
    workers.sort();
    workers.dedup();
    assert_eq!(
        workers,
        vec!["0", "1"],
        "both workers that asked get connections"
    );
}

#[test]
fn a_bind_error_goes_back_to_the_asking_worker() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let sup = Supervisor::start(worker_config(1, &["listen", &addr, "rr"])).unwrap();
    let answer = listening(&sup, 1).remove(0);
    assert!(
        answer.starts_with("listen-error") && answer.contains(&addr) && answer.contains("in use"),
        "{answer}"
    );
    // The worker and the primary carry on.
    sup.send(0, b"still fine").unwrap();
    wait_for(
        &sup,
        Duration::from_secs(5),
        |e| matches!(e, Event::Message { data, .. } if data == b"still fine"),
    );
}

#[test]
fn a_shared_listener_asked_for_at_run_time_is_handed_to_the_worker() {
    let sup = Supervisor::start(worker_config(1, &["listen", "127.0.0.1:0", "shared"])).unwrap();
    let answer = listening(&sup, 1).remove(0);
    let addr = answer.split(' ').nth(2).unwrap().to_string();
    let body = get(&addr);
    assert!(body.starts_with("0 "), "{body}");
}

#[test]
fn a_restarted_worker_asking_again_gets_the_same_listener() {
    let sup = Supervisor::start(worker_config(1, &["listen", "127.0.0.1:0", "rr"])).unwrap();
    let first = listening(&sup, 1).remove(0);
    sup.restart_worker(0).unwrap();
    let second = listening(&sup, 1).remove(0);
    assert_eq!(
        first, second,
        "the address must survive the worker's restart"
    );
    let addr = second.split(' ').nth(2).unwrap();
    assert!(get(addr).starts_with("0 "));
}
