//! The `rcluster` binary end to end: real processes, real signals, every wait bounded.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::process::{Command, ExitStatus, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::{hello_worker_binary, RuntimeDir, RCLUSTER};
const STEP: Duration = Duration::from_millis(20);
const EVENT_WAIT: Duration = Duration::from_secs(10);

/// A running `rcluster` whose stderr is collected line by line. Dropping it kills the primary
/// and every worker it reported, so a failed test leaves nothing behind.
/// A running `rcluster` (see `common::Primary`); its workers are killed with it.
struct Cluster(common::Primary);

impl std::ops::Deref for Cluster {
    type Target = common::Primary;
    fn deref(&self) -> &common::Primary {
        &self.0
    }
}

impl std::ops::DerefMut for Cluster {
    fn deref_mut(&mut self) -> &mut common::Primary {
        &mut self.0
    }
}

impl Cluster {
    fn start(args: &[&str]) -> Cluster {
        Cluster(common::Primary::start(args))
    }

    fn pid(&self) -> i32 {
        self.child.id() as i32
    }

    fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory effects.
        assert_eq!(unsafe { libc::kill(self.pid(), sig) }, 0, "kill rcluster");
    }

    fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    /// Waits until `pred` holds for the log; panics with the log after `EVENT_WAIT`.
    fn wait_for(&self, what: &str, pred: impl Fn(&[String]) -> bool) {
        let deadline = Instant::now() + EVENT_WAIT;
        while !pred(&self.log.lock().unwrap()) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(STEP);
        }
    }

    fn wait_for_count(&self, needle: &str, n: usize) {
        self.wait_for(&format!("{n} × {needle:?}"), |log| {
            log.iter().filter(|l| l.contains(needle)).count() >= n
        });
    }

    fn wait_exit(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                // Let the reader thread take the last lines.
                std::thread::sleep(Duration::from_millis(50));
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "rcluster did not exit within {limit:?}; log:\n{}",
                self.log_text()
            );
            std::thread::sleep(STEP);
        }
    }

    /// Pids from `spawned gen G` lines, optionally only of one generation.
    fn spawned(&self, generation: Option<u32>) -> Vec<u32> {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter_map(|l| {
                let (head, gen) = l.split_once(": spawned gen ")?;
                if generation.is_some_and(|g| gen.trim() != g.to_string()) {
                    return None;
                }
                head.rsplit_once(" pid ")?.1.parse().ok()
            })
            .collect()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            for pid in self.spawned(None) {
                if alive(pid) {
                    // SAFETY: kill has no memory effects; each worker leads its own group.
                    unsafe { libc::kill(-(pid as i32), libc::SIGKILL) };
                }
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// True while `pid` exists and is not a zombie.
fn alive(pid: u32) -> bool {
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .is_some_and(|(_, rest)| !rest.trim_start().starts_with('Z')),
        Err(_) => false,
    }
}

fn assert_all_gone(pids: &[u32]) {
    let deadline = Instant::now() + Duration::from_secs(5);
    while pids.iter().any(|&p| alive(p)) {
        assert!(
            Instant::now() < deadline,
            "workers still alive: {:?}",
            pids.iter().filter(|&&p| alive(p)).collect::<Vec<_>>()
        );
        std::thread::sleep(STEP);
    }
}

/// Runs rcluster to completion, killing it if it takes longer than `limit`.
fn run_to_end(args: &[&str], limit: Duration) -> (ExitStatus, String) {
    let mut c = Cluster::start(args);
    let status = c.wait_exit(limit);
    (status, c.log_text())
}

/// The workers `rcluster run` starts without `-w`: the core's default.
fn cpus() -> usize {
    rcluster_core::default_workers()
}

fn stops_with_exit_0_on(sig: i32) {
    let mut c = Cluster::start(&["run", "--", "sleep", "300"]);
    c.wait_for_count(": ready", cpus());
    let pids = c.spawned(None);
    assert_eq!(pids.len(), cpus(), "one worker per CPU by default");
    c.signal(sig);
    let status = c.wait_exit(Duration::from_secs(15));
    assert_eq!(status.code(), Some(0), "log:\n{}", c.log_text());
    assert_all_gone(&pids);
}

#[test]
fn sleep_runs_with_no_flags_and_sigterm_stops_it_with_exit_0_leaving_no_worker() {
    stops_with_exit_0_on(libc::SIGTERM);
}

#[test]
fn sleep_runs_with_no_flags_and_sigint_stops_it_with_exit_0_leaving_no_worker() {
    stops_with_exit_0_on(libc::SIGINT);
}

#[test]
fn a_second_sigterm_kills_workers_that_ignore_the_first() {
    let script = "trap '' TERM; while :; do sleep 1; done";
    let mut c = Cluster::start(&[
        "run",
        "-w",
        "2",
        "--kill-timeout",
        "60s",
        "--",
        "sh",
        "-c",
        script,
    ]);
    c.wait_for_count(": ready", 2);
    let pids = c.spawned(None);
    c.signal(libc::SIGTERM);
    c.wait_for("the stop notice", |log| {
        log.iter().any(|l| l.contains("stopping"))
    });
    std::thread::sleep(Duration::from_millis(300));
    assert!(
        c.child.try_wait().unwrap().is_none(),
        "stopped before the kill timeout; log:\n{}",
        c.log_text()
    );
    c.signal(libc::SIGTERM);
    let status = c.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "log:\n{}", c.log_text());
    assert_all_gone(&pids);
}

#[test]
fn sighup_replaces_every_worker_with_a_new_process() {
    let mut c = Cluster::start(&["run", "-w", "2", "--", "sh", "-c", "sleep 300"]);
    c.wait_for_count(": ready", 2);
    let old = c.spawned(Some(1));
    c.signal(libc::SIGHUP);
    c.wait_for_count("reload to gen 2 done", 1);
    let new = c.spawned(Some(2));
    assert_eq!(new.len(), 2, "log:\n{}", c.log_text());
    assert!(new.iter().all(|p| !old.contains(p)));
    assert_all_gone(&old);
    assert!(new.iter().all(|&p| alive(p)), "log:\n{}", c.log_text());
    c.signal(libc::SIGTERM);
    assert_eq!(c.wait_exit(Duration::from_secs(15)).code(), Some(0));
    assert_all_gone(&new);
}

#[test]
fn sigttin_adds_a_worker_and_sigttou_removes_one() {
    let mut c = Cluster::start(&["run", "-w", "1", "--", "sh", "-c", "sleep 300"]);
    c.wait_for_count(": ready", 1);
    c.signal(libc::SIGTTIN);
    c.wait_for_count("scaled to 2 workers", 1);
    c.wait_for_count(": ready", 2);
    let added = *c.spawned(None).last().unwrap();
    assert!(alive(added));
    c.signal(libc::SIGTTOU);
    c.wait_for_count("scaled to 1 worker", 1);
    c.wait_for_count("SIGTTOU: scaling to 1 worker", 1);
    assert!(
        !c.log_text().contains("1 workers"),
        "one worker is not plural; log:\n{}",
        c.log_text()
    );
    c.wait_for(&format!("exit of pid {added}"), |log| {
        log.iter()
            .any(|l| l.contains(&format!("pid {added}: killed")))
    });
    assert_all_gone(&[added]);
    c.signal(libc::SIGTTOU);
    c.wait_for_count("already at 1 worker", 1);
    c.signal(libc::SIGTERM);
    assert_eq!(c.wait_exit(Duration::from_secs(15)).code(), Some(0));
}

#[test]
fn nonexistent_command_is_reported_by_name_and_nothing_is_spawned() {
    let (status, log) = run_to_end(
        &["run", "--", "no-such-program-rcluster-test"],
        Duration::from_secs(10),
    );
    assert_eq!(status.code(), Some(2), "log:\n{log}");
    assert!(
        log.contains("rcluster: error:") && log.contains("no-such-program-rcluster-test"),
        "{log}"
    );
    assert!(!log.contains("spawned"), "{log}");
}

#[test]
fn cluster_whose_every_slot_gives_up_exits_1_by_itself() {
    let args = [
        "run",
        "-w",
        "2",
        "--backoff-initial",
        "10ms",
        "--backoff-max",
        "20ms",
        "--max-restarts",
        "2",
    ];
    let (status, log) = run_to_end(
        &[&args[..], &["--", "sh", "-c", "exit 1"]].concat(),
        Duration::from_secs(15),
    );
    assert_eq!(status.code(), Some(1), "log:\n{log}");
    assert_eq!(log.matches("gave up after 2 restarts").count(), 2, "{log}");
    assert!(log.contains("all workers are down"), "{log}");
}

#[test]
fn a_worker_that_breaks_the_protocol_is_logged_with_one_protocol_error_prefix() {
    // A frame of unknown kind 200 (octal 310), written straight on the link.
    let script = r#"printf '\000\000\000\000\310\000\000\000' >&"$RCLUSTER_IPC_FD"; sleep 30"#;
    let mut c = Cluster::start(&["run", "-w", "1", "--", "sh", "-c", script]);
    c.wait_for_count("reason protocol_error", 1);
    let log = c.log_text();
    assert!(
        log.contains(": protocol error: unknown frame kind 200"),
        "log:\n{log}"
    );
    assert!(
        !log.contains("protocol error: protocol error"),
        "the prefix is doubled; log:\n{log}"
    );
    c.signal(libc::SIGTERM);
    c.wait_exit(Duration::from_secs(15));
}

#[test]
fn workers_that_all_exit_cleanly_end_the_cluster_with_exit_0() {
    let (status, log) = run_to_end(
        &[
            "run",
            "-w",
            "2",
            "--restart",
            "on-failure",
            "--",
            "sh",
            "-c",
            "exit 0",
        ],
        Duration::from_secs(15),
    );
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    assert!(log.contains("all workers are down"), "{log}");
}

#[test]
fn help_explains_run_the_signals_and_the_exit_codes() {
    let out = rcluster_output(&["--help"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success());
    for word in [
        "run",
        "SIGINT",
        "SIGTERM",
        "SIGHUP",
        "SIGTTIN",
        "SIGTTOU",
        "Exit status",
        "Example",
    ] {
        assert!(text.contains(word), "--help lacks {word:?}:\n{text}");
    }
    let run_help =
        String::from_utf8_lossy(&rcluster_output(&["run", "--help"]).stdout).into_owned();
    for flag in [
        "--workers",
        "--restart",
        "--kill-timeout",
        "--ready",
        "--no-restart-code",
        "--prefix-output",
    ] {
        assert!(
            run_help.contains(flag),
            "run --help lacks {flag}:\n{run_help}"
        );
    }
}

#[test]
fn version_prints_the_package_version() {
    let out = rcluster_output(&["--version"]);
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).contains(env!("CARGO_PKG_VERSION")));
}

#[test]
fn bad_duration_exits_2_naming_the_flag_and_the_value() {
    let out = rcluster_output(&["run", "--kill-timeout", "5parsecs", "--", "sleep", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--kill-timeout") && err.contains("5parsecs"),
        "{err}"
    );
}

fn rcluster_output(args: &[&str]) -> Output {
    let runtime = RuntimeDir::new();
    let mut child = Command::new(RCLUSTER)
        .env("XDG_RUNTIME_DIR", &runtime.0)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rcluster");
    let stdout = read_all_in_background(child.stdout.take().unwrap());
    let stderr = read_all_in_background(child.stderr.take().unwrap());
    let mut c = Cluster(common::Primary {
        child,
        log: Arc::default(),
        runtime,
    });
    let status = c.wait_exit(Duration::from_secs(10));
    Output {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn read_all_in_background(mut r: impl Read + Send + 'static) -> std::thread::JoinHandle<Vec<u8>> {
    std::thread::spawn(move || {
        let mut buf = Vec::new();
        let _ = r.read_to_end(&mut buf);
        buf
    })
}

#[test]
fn hello_worker_under_rcluster_answers_http_200_on_loopback() {
    let worker = hello_worker_binary();
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let (w, a) = (worker.to_str().unwrap(), addr.as_str());
    let mut c = Cluster::start(&[
        "run",
        "-w",
        "2",
        "--ready",
        "explicit",
        "--heartbeat-timeout",
        "5s",
        "--",
        w,
        "--listen",
        a,
    ]);
    c.wait_for_count(": ready", 2);
    assert!(http_get_body(&addr).contains("Hello from worker"));
    c.signal(libc::SIGTERM);
    assert_eq!(
        c.wait_exit(Duration::from_secs(15)).code(),
        Some(0),
        "log:\n{}",
        c.log_text()
    );
}

#[test]
fn prefix_output_tags_every_worker_line_with_its_id() {
    let script = "echo out-$RCLUSTER_WORKER_ID; echo err-$RCLUSTER_WORKER_ID >&2; printf last-$RCLUSTER_WORKER_ID";
    let out = rcluster_output(&[
        "run",
        "-w",
        "2",
        "--restart",
        "never",
        "--prefix-output",
        "--",
        "sh",
        "-c",
        script,
    ]);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(0), "stderr:\n{stderr}");
    for id in 0..2 {
        assert!(
            stdout.contains(&format!("[{id}] out-{id}\n")),
            "stdout:\n{stdout}"
        );
        // A last line without a newline is still written, whole, when the worker exits.
        assert!(
            stdout.contains(&format!("[{id}] last-{id}\n")),
            "stdout:\n{stdout}"
        );
        assert!(
            stderr.contains(&format!("[{id}] err-{id}\n")),
            "stderr:\n{stderr}"
        );
    }
    assert!(
        !stdout.lines().any(|l| !l.starts_with('[')),
        "an unprefixed line:\n{stdout}"
    );
}

fn http_get_body(addr: &str) -> String {
    let mut conn = TcpStream::connect(addr).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    conn.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .unwrap();
    let mut reply = String::new();
    conn.read_to_string(&mut reply).expect("read the reply");
    assert!(reply.starts_with("HTTP/1.1 200 OK\r\n"), "{reply}");
    reply.split("\r\n\r\n").nth(1).unwrap_or("").to_string()
}

/// With the kernel's turns (loading their program needs root), a hello-worker behind
/// `--listen` asks for its own socket of the turn and accepts from it (the primary hands it
/// nothing), and counts the connections it has in hand, which the status reads.
#[test]
fn hello_workers_accept_their_own_turns_and_count_the_connections_in_hand() {
    let addr = free_port_addr();
    let mut c = two_hello_workers(&addr);
    let pids = worker_pids(&c.log_text());
    assert_eq!(pids.len(), 2, "log:\n{}", c.log_text());
    let environ = std::fs::read(format!("/proc/{}/environ", pids[0])).unwrap_or_default();
    if !String::from_utf8_lossy(&environ).contains("RCLUSTER_TURNS=") {
        eprintln!("skipped: no kernel turns here (the primary could not load their program)");
        return;
    }
    let port: u16 = addr.rsplit(':').next().unwrap().parse().unwrap();
    let listening = listening_inodes(port);
    for pid in &pids {
        assert!(
            socket_inodes(*pid).iter().any(|i| listening.contains(i)),
            "worker pid {pid} holds no listening socket of port {port}"
        );
    }

    // Four kept-alive connections, each answered once: four in hand, whoever has them.
    let mut conns: Vec<TcpStream> = (0..4).map(|_| keep_alive_exchange(&addr)).collect();
    let rt = &c.runtime;
    wait_in_hand(rt, 4);
    // A request more on each: still four.
    for conn in &mut conns {
        keep_alive_request(conn);
    }
    wait_in_hand(rt, 4);
    drop(conns);
    wait_in_hand(rt, 0);

    c.signal(libc::SIGTERM);
    assert_eq!(c.wait_exit(Duration::from_secs(15)).code(), Some(0));
}

/// A hello-worker that stops running (SIGSTOP) with connections the kernel's turns gave its
/// own socket, and is then killed: every one of them is answered, by the other worker or the
/// replacement, none reset.
#[test]
fn connections_waiting_in_a_killed_hello_workers_turn_socket_are_all_answered() {
    let addr = free_port_addr();
    let mut c = two_hello_workers(&addr);
    let pids = worker_pids(&c.log_text());
    let environ = std::fs::read(format!("/proc/{}/environ", pids[0])).unwrap_or_default();
    if !String::from_utf8_lossy(&environ).contains("RCLUSTER_TURNS=") {
        eprintln!("skipped: no kernel turns here (the primary could not load their program)");
        return;
    }
    let stopped = pids[0] as i32;
    // SAFETY: kill has no memory effects.
    assert_eq!(unsafe { libc::kill(stopped, libc::SIGSTOP) }, 0);
    // Requests sent, none read yet: whatever the turns gave the stopped worker waits there.
    let mut conns: Vec<TcpStream> = (0..20)
        .map(|_| {
            let mut conn = TcpStream::connect(&addr).expect("connect");
            conn.set_read_timeout(Some(Duration::from_secs(10)))
                .unwrap();
            conn.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
                .unwrap();
            conn
        })
        .collect();
    std::thread::sleep(Duration::from_millis(200));
    // The test means something only if the stopped worker was given some.
    let st = hello_status(&c.runtime);
    let waiting = st["workers"]
        .as_array()
        .and_then(|w| w.iter().find(|w| w["pid"].as_u64() == Some(pids[0] as u64)))
        .and_then(|w| w["connections_active"].as_u64());
    assert!(
        waiting.is_some_and(|n| n >= 1),
        "none waits for the stopped worker: {st}"
    );
    // SAFETY: as above.
    assert_eq!(unsafe { libc::kill(stopped, libc::SIGKILL) }, 0);
    for (i, conn) in conns.iter_mut().enumerate() {
        let mut reply = String::new();
        let read = conn.read_to_string(&mut reply);
        assert!(
            read.is_ok() && reply.starts_with("HTTP/1.1 200 OK\r\n"),
            "connection {i}: {read:?} {reply:?}; log:\n{}",
            c.log_text()
        );
    }
    c.signal(libc::SIGTERM);
    assert_eq!(c.wait_exit(Duration::from_secs(15)).code(), Some(0));
}

/// The pids of the workers the log says are ready.
fn worker_pids(log: &str) -> Vec<u32> {
    log.lines()
        .filter(|l| l.ends_with(": ready"))
        .filter_map(|l| l.split(" pid ").nth(1)?.split(':').next()?.parse().ok())
        .collect()
}

/// The inodes of the TCP sockets listening on `port` (IPv4).
fn listening_inodes(port: u16) -> Vec<u64> {
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    table
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let local_port = u16::from_str_radix(f.get(1)?.rsplit(':').next()?, 16).ok()?;
            (local_port == port && f.get(3) == Some(&"0A")).then(|| f.get(9)?.parse().ok())?
        })
        .collect()
}

/// The inodes of the sockets process `pid` holds.
fn socket_inodes(pid: u32) -> Vec<u64> {
    let Ok(dir) = std::fs::read_dir(format!("/proc/{pid}/fd")) else {
        return Vec::new();
    };
    dir.filter_map(|e| std::fs::read_link(e.ok()?.path()).ok())
        .filter_map(|l| {
            let l = l.to_string_lossy().into_owned();
            l.strip_prefix("socket:[")?.strip_suffix(']')?.parse().ok()
        })
        .collect()
}

/// A connection to `addr` that has been answered once and stays open.
fn keep_alive_exchange(addr: &str) -> TcpStream {
    let mut conn = TcpStream::connect(addr).expect("connect");
    conn.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    keep_alive_request(&mut conn);
    conn
}

/// One request on `conn`, and its whole answer (head and `Content-Length` body) read.
fn keep_alive_request(conn: &mut TcpStream) {
    conn.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut got = Vec::new();
    let mut buf = [0u8; 1024];
    loop {
        let n = conn.read(&mut buf).expect("read an answer");
        assert!(
            n > 0,
            "closed before answering: {:?}",
            String::from_utf8_lossy(&got)
        );
        got.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&got);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        assert!(head.starts_with("HTTP/1.1 200 OK"), "{head}");
        let len: usize = head
            .lines()
            .find_map(|l| l.strip_prefix("Content-Length: "))
            .and_then(|v| v.trim().parse().ok())
            .expect("a Content-Length");
        if body.len() >= len {
            return;
        }
    }
}

/// The status of cluster `hello-worker` (null when it does not answer).
fn hello_status(rt: &RuntimeDir) -> serde_json::Value {
    let mut cmd = Command::new(RCLUSTER);
    cmd.args(["status", "hello-worker", "--json"])
        .stdin(Stdio::null());
    rt.apply(&mut cmd);
    let out = cmd.output().unwrap();
    serde_json::from_slice(&out.stdout).unwrap_or_default()
}

/// Waits until the workers of cluster `hello-worker` have `n` connections in hand, by its
/// status (panics with the last status after 5 s).
fn wait_in_hand(rt: &RuntimeDir, n: u64) {
    let deadline = Instant::now() + Duration::from_secs(5);
    loop {
        let st = hello_status(rt);
        let active: u64 = st["workers"]
            .as_array()
            .map(|w| {
                w.iter()
                    .filter_map(|w| w["connections_active"].as_u64())
                    .sum()
            })
            .unwrap_or(u64::MAX);
        if active == n {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "not {n} connections in hand: {st}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn listen_flag_has_the_primary_dispatch_connections_to_every_worker() {
    let addr = free_port_addr();
    let listen = format!("{addr}=http");
    let mut c = two_hello_workers(&listen);
    let mut bodies: Vec<String> = (0..6).map(|_| http_get_body(&addr)).collect();
    bodies.sort();
    bodies.dedup();
    assert_eq!(
        bodies.len(),
        2,
        "round-robin should reach both workers: {bodies:?}"
    );
    c.signal(libc::SIGTERM);
    assert_eq!(
        c.wait_exit(Duration::from_secs(15)).code(),
        Some(0),
        "log:\n{}",
        c.log_text()
    );
}

#[test]
fn listen_on_an_address_in_use_exits_2_naming_it() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = rcluster_output(&["run", "-w", "1", "--listen", &addr, "--", "sleep", "300"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&addr) && stderr.contains("in use"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("spawned"),
        "a worker was started: {stderr}"
    );
}

/// Kills the processes whose pids a test's workers wrote to `file`, and removes it.
fn kill_pids_in(file: &Path) {
    for pid in std::fs::read_to_string(file)
        .unwrap_or_default()
        .split_whitespace()
    {
        // SAFETY: kill has no memory effects.
        unsafe { libc::kill(pid.parse().unwrap_or(0), libc::SIGKILL) };
    }
    let _ = std::fs::remove_file(file);
}

#[test]
fn worker_leaving_a_setsid_grandchild_on_its_output_is_reported_restarted_and_sigterm_still_stops()
{
    let pidfile = std::env::temp_dir().join(format!("rcluster-cli-setsid-{}", std::process::id()));
    let script = format!(
        "setsid sleep 30 & echo $! >> {}; echo hi; sleep 0.5; exit 1",
        pidfile.display()
    );
    let mut c = Cluster::start(&[
        "run",
        "-w",
        "1",
        "--prefix-output",
        "--",
        "sh",
        "-c",
        &script,
    ]);
    c.wait_for_count("exited with code 1", 2);
    c.wait_for_count("restarting", 2);
    c.signal(libc::SIGTERM);
    let status = c.wait_exit(Duration::from_secs(10));
    kill_pids_in(&pidfile);
    assert_eq!(status.code(), Some(0), "log:\n{}", c.log_text());
}

#[test]
fn output_that_a_full_stdout_cannot_take_is_reported_as_dropped_and_sigterm_still_stops() {
    let runtime = RuntimeDir::new();
    let mut child = Command::new(RCLUSTER)
        .env("XDG_RUNTIME_DIR", &runtime.0)
        .args(["run", "-w", "1", "--prefix-output", "--", "sh", "-c"])
        .arg("yes 'a line nobody reads' | head -n 100000; exec sleep 30")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn rcluster");
    // Kept open and never read: rcluster's stdout fills up.
    let _stdout = child.stdout.take().unwrap();
    let log = Arc::new(Mutex::new(Vec::new()));
    let (stderr, sink) = (child.stderr.take().unwrap(), Arc::clone(&log));
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let mut c = Cluster(common::Primary {
        child,
        log,
        runtime,
    });
    c.wait_for("output dropped", |log| {
        log.iter()
            .any(|l| l.contains("worker 0 pid ") && l.contains("output dropped: "))
    });
    c.signal(libc::SIGTERM);
    let status = c.wait_exit(Duration::from_secs(10));
    assert_eq!(status.code(), Some(0), "log:\n{}", c.log_text());
}

/// `rcluster run` with two hello-workers behind `listen`, once both are ready.
fn two_hello_workers(listen: &str) -> Cluster {
    let worker = hello_worker_binary();
    let c = Cluster::start(&[
        "run",
        "-w",
        "2",
        "--ready",
        "explicit",
        "--listen",
        listen,
        "--",
        worker.to_str().unwrap(),
    ]);
    c.wait_for_count(": ready", 2);
    c
}

fn free_port_addr() -> String {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    format!("127.0.0.1:{port}")
}

#[test]
fn second_rcluster_on_the_same_address_exits_2_naming_it() {
    let addr = free_port_addr();
    let first = Cluster::start(&["run", "-w", "1", "--listen", &addr, "--", "sleep", "300"]);
    first.wait_for_count(": ready", 1);
    let out = rcluster_output(&["run", "-w", "1", "--listen", &addr, "--", "sleep", "300"]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&addr) && stderr.contains("in use"),
        "{stderr}"
    );
    assert!(
        !stderr.contains("spawned"),
        "a worker was started: {stderr}"
    );
}

#[test]
fn two_rclusters_started_with_share_both_run_on_one_address() {
    let addr = free_port_addr();
    let args = [
        "run", "-w", "1", "--share", "--listen", &addr, "--", "sleep", "300",
    ];
    let mut first = Cluster::start(&args);
    first.wait_for_count(": ready", 1);
    let mut second = Cluster::start(&args);
    second.wait_for_count(": ready", 1);
    for c in [&mut first, &mut second] {
        c.signal(libc::SIGTERM);
        assert_eq!(
            c.wait_exit(Duration::from_secs(15)).code(),
            Some(0),
            "log:\n{}",
            c.log_text()
        );
    }
}

#[test]
fn unix_socket_left_by_a_killed_rcluster_does_not_block_the_next_start() {
    let dir = std::env::temp_dir().join(format!("rcluster-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("killed.sock");
    let _ = std::fs::remove_file(&path);
    let listen = format!("unix:{}", path.display());
    let args = ["run", "-w", "1", "--listen", &listen, "--", "sleep", "300"];
    let mut first = Cluster::start(&args);
    first.wait_for_count(": ready", 1);
    let pids = first.spawned(None);
    first.signal(libc::SIGKILL);
    first.wait_exit(Duration::from_secs(5));
    assert_all_gone(&pids);
    assert!(path.exists(), "a killed primary leaves its socket file");
    let mut second = Cluster::start(&args);
    second.wait_for_count(": ready", 1);
    std::os::unix::net::UnixStream::connect(&path).expect("the new cluster listens");
    second.signal(libc::SIGTERM);
    assert_eq!(
        second.wait_exit(Duration::from_secs(15)).code(),
        Some(0),
        "log:\n{}",
        second.log_text()
    );
    assert!(!path.exists(), "a clean stop removes the socket file");
}

/// One request with `Connection: close` on a new connection: Ok(true) answered, Ok(false)
/// never accepted (connect failed), Err accepted and then cut or reset.
fn one_request(addr: &std::net::SocketAddr) -> Result<bool, String> {
    let Ok(mut conn) = TcpStream::connect_timeout(addr, Duration::from_secs(4)) else {
        return Ok(false);
    };
    let limit = Some(Duration::from_secs(10));
    conn.set_read_timeout(limit).map_err(|e| e.to_string())?;
    conn.write_all(b"GET / HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n")
        .map_err(|e| e.to_string())?;
    let mut reply = String::new();
    conn.read_to_string(&mut reply).map_err(|e| e.to_string())?;
    if reply.starts_with("HTTP/1.1 200 OK\r\n") && reply.contains("Hello from worker") {
        Ok(true)
    } else {
        Err(format!("incomplete reply {reply:?}"))
    }
}

#[test]
fn sigterm_under_constant_load_fails_no_accepted_connection() {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    let addr = free_port_addr();
    let mut c = two_hello_workers(&addr);
    let sa: std::net::SocketAddr = addr.parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let ok = Arc::new(AtomicUsize::new(0));
    let failed = Arc::new(Mutex::new(Vec::new()));
    let clients: Vec<_> = (0..32)
        .map(|_| {
            let (stop, ok, failed) = (Arc::clone(&stop), Arc::clone(&ok), Arc::clone(&failed));
            std::thread::spawn(move || {
                let limit = Instant::now() + Duration::from_secs(25);
                while !stop.load(Ordering::SeqCst) && Instant::now() < limit {
                    match one_request(&sa) {
                        Ok(true) => drop(ok.fetch_add(1, Ordering::SeqCst)),
                        Ok(false) => std::thread::sleep(Duration::from_millis(5)),
                        Err(e) => failed.lock().unwrap().push(e),
                    }
                }
            })
        })
        .collect();
    let deadline = Instant::now() + EVENT_WAIT;
    while ok.load(Ordering::SeqCst) < 300 {
        assert!(Instant::now() < deadline, "the load got no answers");
        std::thread::sleep(STEP);
    }
    c.signal(libc::SIGTERM);
    let status = c.wait_exit(Duration::from_secs(15));
    std::thread::sleep(Duration::from_millis(300));
    stop.store(true, Ordering::SeqCst);
    for t in clients {
        t.join().unwrap();
    }
    assert_eq!(status.code(), Some(0), "log:\n{}", c.log_text());
    let failed = failed.lock().unwrap();
    assert!(
        failed.is_empty(),
        "{} accepted connections failed ({} answered): {:?}",
        failed.len(),
        ok.load(Ordering::SeqCst),
        &failed[..failed.len().min(5)]
    );
}

#[test]
fn workers_that_exit_with_a_no_restart_code_end_the_cluster_with_exit_0_and_reason_no_restart() {
    let (status, log) = run_to_end(
        &[
            "run",
            "-w",
            "2",
            "--no-restart-code",
            "3",
            "--",
            "sh",
            "-c",
            "exit 3",
        ],
        Duration::from_secs(15),
    );
    assert_eq!(status.code(), Some(0), "log:\n{log}");
    assert_eq!(
        log.matches("exited with code 3, reason no_restart").count(),
        2,
        "{log}"
    );
    assert!(!log.contains("restarting"), "{log}");
    assert!(log.contains("all workers are down"), "{log}");
}

/// A worker that speaks the protocol just enough to flood the primary with small messages.
const FLOOD_WORKER: &str = r#"
import os, struct
fd = int(os.environ["RCLUSTER_IPC_FD"])
def frame(kind, body):
    return struct.pack("<IBBH", len(body), kind, 0, 0) + body
def write_all(data):
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]
write_all(frame(1, struct.pack("<HHI", 1, 0, os.getpid())))
burst = frame(4, b"flood") * 1000
while True:
    write_all(burst)
"#;

/// The resident memory of process `pid`, in kB.
fn rss_kb(pid: i32) -> usize {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

#[test]
fn a_worker_flooding_messages_gets_a_short_log_bounded_memory_and_sigterm_acts_at_once() {
    let mut c = Cluster::start(&[
        "run",
        "-w",
        "1",
        "--kill-timeout",
        "2s",
        "--",
        "python3",
        "-c",
        FLOOD_WORKER,
    ]);
    c.wait_for("a message", |log| {
        log.iter().any(|l| l.contains(": message"))
    });
    std::thread::sleep(Duration::from_secs(3));
    let lines = c.log.lock().unwrap().len();
    let rss = rss_kb(c.pid());
    let asked = Instant::now();
    c.signal(libc::SIGTERM);
    c.wait_for("the stop", |log| {
        log.iter().any(|l| l.contains("SIGTERM: stopping"))
    });
    let noticed = asked.elapsed();
    let status = c.wait_exit(Duration::from_secs(10));
    let took = asked.elapsed();
    println!("flood under rcluster run: {lines} log lines in 3 s, RSS {rss} kB, SIGTERM noticed after {noticed:?}, exit after {took:?}");
    assert!(
        noticed < Duration::from_secs(2),
        "SIGTERM noticed only after {noticed:?}"
    );
    assert_eq!(status.code(), Some(0));
    assert!(lines < 300, "{lines} log lines in 3 s of flood");
    assert!(rss < 64 * 1024, "the primary uses {rss} kB");
}

#[test]
fn listen_on_a_host_name_binds_what_it_resolves_to_and_answers_there() {
    let port = free_port_addr().rsplit(':').next().unwrap().to_string();
    let listen = format!("localhost:{port}=http");
    let mut c = two_hello_workers(&listen);
    // localhost is 127.0.0.1 on every Linux resolver (and ::1 too on some, also bound then).
    assert!(http_get_body(&format!("127.0.0.1:{port}")).contains("Hello from worker"));
    c.signal(libc::SIGTERM);
    assert_eq!(
        c.wait_exit(Duration::from_secs(15)).code(),
        Some(0),
        "log:\n{}",
        c.log_text()
    );
}

#[test]
fn listen_on_a_host_name_that_does_not_resolve_exits_2_naming_it() {
    let out = rcluster_output(&[
        "run",
        "--listen",
        "no-such-host.invalid:8080",
        "--",
        "sleep",
        "1",
    ]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("no-such-host.invalid"), "{err}");
}

#[test]
fn zero_duration_exits_2_saying_it_must_be_more_than_zero() {
    let out = rcluster_output(&["run", "--kill-timeout", "0", "--", "sleep", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--kill-timeout") && err.contains("more than 0") && !err.contains("0ns"),
        "{err}"
    );
}

#[test]
fn dispatch_without_listen_exits_2_instead_of_being_ignored() {
    let out = rcluster_output(&["run", "--dispatch", "shared", "--", "sleep", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--dispatch") && err.contains("--listen"),
        "{err}"
    );
}

#[test]
fn no_restart_code_outside_an_exit_status_exits_2_naming_the_flag() {
    let out = rcluster_output(&["run", "--no-restart-code", "256", "--", "true"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--no-restart-code") && err.contains("256") && err.contains("0..=255"),
        "{err}"
    );
}

#[test]
fn min_uptime_longer_than_a_year_exits_2_naming_the_flag() {
    let out = rcluster_output(&["run", "--min-uptime", "9000h", "--", "true"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(
        err.contains("--min-uptime") && err.contains("at most a year"),
        "{err}"
    );
}

#[test]
fn without_w_one_worker_runs_per_cpu_of_the_affinity_mask() {
    // Under `taskset -c 0` only one CPU is usable, however many the machine has.
    let runtime = RuntimeDir::new();
    let mut child = Command::new("taskset")
        .env("XDG_RUNTIME_DIR", &runtime.0)
        .args([
            "-c",
            "0",
            RCLUSTER,
            "run",
            "--restart",
            "never",
            "--",
            "true",
        ])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn taskset (util-linux)");
    let stderr = read_all_in_background(child.stderr.take().unwrap());
    let mut c = Cluster(common::Primary {
        child,
        log: Arc::default(),
        runtime,
    });
    let status = c.wait_exit(Duration::from_secs(15));
    let log = String::from_utf8_lossy(&stderr.join().unwrap()).into_owned();
    assert_eq!(status.code(), Some(0), "{log}");
    assert_eq!(log.matches(": spawned").count(), 1, "{log}");
    assert!(
        log.contains("worker 0 ") && !log.contains("worker 1 "),
        "{log}"
    );
}

#[test]
fn bad_max_memory_exits_2_naming_the_flag_and_the_value() {
    let out = rcluster_output(&["run", "--max-memory", "5X", "--", "sleep", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--max-memory") && err.contains("5X"), "{err}");
}

#[test]
fn max_requests_jitter_without_max_requests_exits_2_naming_the_flag() {
    let out = rcluster_output(&["run", "--max-requests-jitter", "5", "--", "sleep", "1"]);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("--max-requests-jitter"), "{err}");
}

#[test]
fn max_requests_replaces_workers_after_their_connections_and_every_request_is_answered() {
    let addr = free_port_addr();
    let worker = hello_worker_binary();
    let mut c = Cluster::start(&[
        "run",
        "-w",
        "2",
        "--ready",
        "explicit",
        "--listen",
        &addr,
        "--max-requests",
        "3",
        "--max-requests-jitter",
        "1",
        "--",
        worker.to_str().unwrap(),
    ]);
    c.wait_for_count(": ready", 2);
    for _ in 0..16 {
        assert!(http_get_body(&addr).contains("Hello from worker"));
    }
    c.wait_for_count("recycling (max_requests)", 2);
    c.wait_for_count("reason max_requests", 2);
    c.signal(libc::SIGTERM);
    assert_eq!(
        c.wait_exit(Duration::from_secs(15)).code(),
        Some(0),
        "log:\n{}",
        c.log_text()
    );
}
