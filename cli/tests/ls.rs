//! `rcluster ls` and the sockets killed primaries leave behind.

use std::os::unix::net::{UnixListener, UnixStream};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{Primary, RuntimeDir, RCLUSTER, WAIT};

/// `rcluster run --name NAME -w 1 -- sleep 300` with its socket in `rt`, once the socket
/// answers.
fn start(rt: &RuntimeDir, name: &str) -> Primary {
    let mut cmd = Command::new(RCLUSTER);
    cmd.args(["run", "--name", name, "-w", "1", "--", "sleep", "300"]);
    rt.apply(&mut cmd);
    let mut p = Primary::spawn(cmd);
    p.wait_ready(1);
    let deadline = Instant::now() + WAIT;
    while UnixStream::connect(rt.sock(name)).is_err() {
        assert!(Instant::now() < deadline, "no control socket for {name}");
        std::thread::sleep(Duration::from_millis(20));
    }
    p
}

fn verb(rt: &RuntimeDir, args: &[&str]) -> Output {
    let mut cmd = Command::new(RCLUSTER);
    cmd.args(args).stdin(Stdio::null());
    rt.apply(&mut cmd);
    let out = cmd.output().unwrap();
    assert!(out.status.success() || args[0] != "ls", "{out:?}");
    out
}

fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// The names `ls` lists, in order.
fn listed(o: &Output) -> Vec<String> {
    stdout(o)
        .lines()
        .skip(1)
        .filter_map(|l| l.split_whitespace().next().map(str::to_string))
        .collect()
}

#[test]
fn ls_removes_the_socket_of_a_sigkilled_primary_and_lists_only_live_clusters() {
    let rt = RuntimeDir::new();
    let _alive = start(&rt, "alive");
    let mut dead = start(&rt, "dead");
    dead.child.kill().unwrap();
    dead.child.wait().unwrap();
    assert!(rt.sock("dead").exists(), "SIGKILL leaves the socket behind");

    let o = verb(&rt, &["status", "dead"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert_eq!(err.matches("stale").count(), 1, "{err}");
    assert_eq!(err.matches("dead.sock").count(), 1, "{err}");

    let o = verb(&rt, &["ls"]);
    assert_eq!(listed(&o), ["alive"], "{}", stdout(&o));
    assert!(!rt.sock("dead").exists(), "ls removes the stale socket");
    assert!(rt.sock("alive").exists());
    let o = verb(&rt, &["ls", "--all"]);
    assert_eq!(listed(&o), ["alive"], "{}", stdout(&o));
}

#[test]
fn ls_all_lists_stale_sockets_once_marked_and_keeps_what_is_not_a_socket() {
    let rt = RuntimeDir::new();
    let _alive = start(&rt, "alive");
    // A socket nothing accepts on (std does not unlink a socket file when it is closed),
    // and a file that is not a socket, both named like control sockets.
    drop(UnixListener::bind(rt.sock("gone")).unwrap());
    std::fs::write(rt.sock("odd"), b"not a socket").unwrap();

    let o = verb(&rt, &["ls", "--all"]);
    let out = stdout(&o);
    assert_eq!(listed(&o), ["alive", "gone", "odd"], "{out}");
    let line = |name: &str| {
        out.lines()
            .find(|l| l.starts_with(name))
            .unwrap()
            .to_string()
    };
    assert!(
        line("gone").contains("stale") && line("gone").contains("removed"),
        "{out}"
    );
    assert_eq!(line("gone").matches("gone.sock").count(), 1, "{out}");
    assert!(line("odd").contains("kept: it is not a socket"), "{out}");
    assert!(!rt.sock("gone").exists());
    assert!(rt.sock("odd").exists(), "only sockets are removed");

    let o = verb(&rt, &["ls"]);
    assert_eq!(listed(&o), ["alive"], "{}", stdout(&o));
}
