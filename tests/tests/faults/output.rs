//! Faults of worker output: descendants holding the pipes, hosts whose stdout is full.

use std::io::{BufRead, BufReader, Read};
use std::os::fd::{FromRawFd, OwnedFd};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcluster_core::{Config, Dispatch, Event, ListenAddr, Listener, Output, ReadyOn, Supervisor};
use rcluster_tests::{bin_path, http_get, listener_addr, test_worker, wait_for};

/// A shell command line run by slot 0, while every other slot runs the test worker's `serve`.
fn slot0_runs(script: &str) -> Vec<String> {
    let line = format!(
        "if [ \"$RCLUSTER_WORKER_ID\" = 0 ]; then {script}; else exec {} serve 0; fi",
        test_worker()
    );
    vec!["sh".into(), "-c".into(), line]
}

/// CPU time (user + system) the supervisor thread of this process has used so far.
fn supervisor_thread_cpu() -> Duration {
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as u64;
    let mut ticks = 0;
    for task in std::fs::read_dir("/proc/self/task").unwrap().flatten() {
        let comm = std::fs::read_to_string(task.path().join("comm")).unwrap_or_default();
        if comm.trim() != "rcluster" {
            continue;
        }
        let stat = std::fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        // Fields after "(comm)": state is field 3, utime 14 and stime 15.
        let rest = stat.rsplit_once(')').map_or("", |(_, r)| r);
        let f: Vec<u64> = rest
            .split_whitespace()
            .map(|x| x.parse().unwrap_or(0))
            .collect();
        ticks += f[11] + f[12];
    }
    Duration::from_millis(ticks * 1000 / hz)
}

/// Stops `sup` on another thread; panics if that takes longer than `limit`.
fn stop_within(sup: Supervisor, limit: Duration) {
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let _ = sup.stop(Duration::from_secs(2));
        let _ = tx.send(());
    });
    rx.recv_timeout(limit)
        .unwrap_or_else(|_| panic!("stop did not return within {limit:?}"));
}

#[test]
fn worker_whose_setsid_grandchild_holds_its_output_is_reaped_and_restarted_without_stalling_the_loop(
) {
    let pidfile = std::env::temp_dir().join(format!("rcluster-grandchild-{}", std::process::id()));
    let script = format!(
        "setsid sleep 30 & echo $! > {}; echo hi; sleep 0.5; exit 1",
        pidfile.display()
    );
    let mut cfg = Config::new(slot0_runs(&script));
    cfg.workers = 2;
    cfg.output = Output::Prefix;
    cfg.ready_on = ReadyOn::Spawn;
    cfg.kill_timeout = Duration::from_secs(2);
    cfg.restart.backoff_initial = Duration::from_millis(20);
    cfg.restart.jitter = 0.0;
    let any = ListenAddr::Tcp("127.0.0.1:0".parse().unwrap());
    cfg.listeners = vec![Listener::new("http", any, Dispatch::RoundRobin)];
    let sup = Supervisor::start(cfg).unwrap();
    let addr = listener_addr(&sup, "http");
    let exited = |e: &Event| matches!(e, Event::Exit { id: 0, .. });
    wait_for(&sup, Duration::from_secs(10), exited);
    wait_for(&sup, Duration::from_secs(10), |e| {
        matches!(e, Event::Spawned { id: 0, .. })
    });
    // The second worker of slot 0 leaves a grandchild too, and is reaped as well.
    wait_for(&sup, Duration::from_secs(10), exited);
    for _ in 0..5 {
        let body = http_get(&addr).expect("the listener serves after the exit");
        assert!(body.starts_with("1 "), "served by worker 1: {body:?}");
    }
    let cpu = supervisor_thread_cpu();
    stop_within(sup, Duration::from_secs(10));
    for pid in std::fs::read_to_string(&pidfile)
        .unwrap_or_default()
        .split_whitespace()
    {
        // SAFETY: a plain kill of the sleep this test started.
        unsafe { libc::kill(pid.parse().unwrap_or(0), libc::SIGKILL) };
    }
    let _ = std::fs::remove_file(&pidfile);
    assert!(
        cpu < Duration::from_millis(500),
        "the supervisor thread used {cpu:?} of CPU: it spins"
    );
}

/// The output host (`rcluster-test-output-host`), its stderr collected line by line.
struct Host {
    child: Child,
    lines: Arc<Mutex<Vec<String>>>,
}

impl Host {
    fn start(seconds: f64, flags: &[&str], workers: usize, stdout: Stdio, argv: &[String]) -> Host {
        let mut child = Command::new(bin_path("rcluster-test-output-host"))
            .arg(seconds.to_string())
            .args(flags)
            .arg("--")
            .args(argv)
            .env("RCLUSTER_TEST_WORKERS", workers.to_string())
            .stdin(Stdio::null())
            .stdout(stdout)
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let err = child.stderr.take().unwrap();
        let lines = Arc::new(Mutex::new(Vec::new()));
        let sink = Arc::clone(&lines);
        std::thread::spawn(move || {
            for line in BufReader::new(err).lines().map_while(|l| l.ok()) {
                sink.lock().unwrap().push(line);
            }
        });
        Host { child, lines }
    }

    /// Waits for a stderr line containing `needle`; returns it.
    fn wait_line(&self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            if let Some(l) = self
                .lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
            {
                return l.clone();
            }
            assert!(
                Instant::now() < deadline,
                "no line with {needle:?} within {within:?}; host said {:#?}",
                self.lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn count(&self, needle: &str) -> usize {
        let lines = self.lines.lock().unwrap();
        lines.iter().filter(|l| l.contains(needle)).count()
    }

    fn addr(&self) -> ListenAddr {
        let line = self.wait_line("listening ", Duration::from_secs(10));
        ListenAddr::Tcp(line["listening ".len()..].parse().unwrap())
    }

    fn wait_exit(&mut self, within: Duration) -> std::process::ExitStatus {
        let deadline = Instant::now() + within;
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                return status;
            }
            assert!(
                Instant::now() < deadline,
                "the host did not exit within {within:?}; it said {:#?}",
                self.lines.lock().unwrap()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Lines (and bytes) of slot `id` the host reported as dropped.
    fn dropped(&self, id: u32) -> (u64, u64) {
        let prefix = format!("OutputDropped {{ id: {id}, lines: ");
        let lines = self.lines.lock().unwrap();
        let mut total = (0, 0);
        for l in lines.iter().filter_map(|l| l.strip_prefix(&prefix)) {
            let (n, rest) = l.split_once(", bytes: ").unwrap();
            total.0 += n.parse::<u64>().unwrap();
            total.1 += rest.trim_end_matches(" }").parse::<u64>().unwrap();
        }
        total
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn host_whose_stdout_nobody_reads_keeps_dispatching_and_reports_the_dropped_output() {
    let flood = "yes 'a line of worker output nobody reads' | head -n 200000; exit 3";
    let mut host = Host::start(8.0, &[], 2, Stdio::piped(), &slot0_runs(flood));
    // Kept open and never read: the host's stdout fills up.
    let _stdout = host.child.stdout.take().unwrap();
    let addr = host.addr();
    host.wait_line("Exit { id: 0", Duration::from_secs(10));
    let echoes = host.count("echo 1");
    for _ in 0..10 {
        let body = http_get(&addr).expect("the listener serves while stdout is full");
        assert!(body.starts_with("1 "), "served by worker 1: {body:?}");
    }
    // A second worker of slot 0 floods again and is reaped again.
    host.wait_line("Spawned { id: 0, pid", Duration::from_secs(10));
    let deadline = Instant::now() + Duration::from_secs(10);
    while host.count("Exit { id: 0") < 2 || host.count("echo 1") < echoes + 5 {
        assert!(
            Instant::now() < deadline,
            "{:#?}",
            host.lines.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    host.wait_line("OutputDropped { id: 0", Duration::from_secs(10));
    let status = host.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "host ended with {status}");
    host.wait_line("stopped", Duration::from_secs(5));
    let (lines, bytes) = host.dropped(0);
    // Whole lines of 41 bytes ("[0] " and the 37 of each), but for the last line of a worker
    // killed by the stop in the middle of writing it.
    assert!(lines > 0, "dropped output is reported");
    assert!(
        bytes <= lines * 41 && lines * 41 - bytes < 41,
        "dropped {lines} lines, {bytes} bytes"
    );
}

/// A pipe whose read end is closed already.
fn broken_pipe() -> OwnedFd {
    let mut fds = [0; 2];
    // SAFETY: pipe2 writes two descriptors into fds.
    assert_eq!(unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) }, 0);
    // SAFETY: both are ours, each owned once.
    let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    drop(r);
    w
}

#[test]
fn host_that_does_not_ignore_sigpipe_survives_worker_output_to_a_closed_stdout() {
    let talk = "echo one; echo two; sleep 0.2; exit 3";
    let mut host = Host::start(
        2.0,
        &["sigpipe"],
        2,
        broken_pipe().into(),
        &slot0_runs(talk),
    );
    let status = host.wait_exit(Duration::from_secs(15));
    assert!(
        status.success(),
        "host ended with {status}; it said {:#?}",
        host.lines.lock().unwrap()
    );
    host.wait_line("stopped", Duration::from_secs(5));
    assert!(host.count("Exit { id: 0") >= 2);
    let (lines, _) = host.dropped(0);
    assert!(lines >= 2, "dropped output is reported");
}

#[test]
fn host_with_a_non_blocking_stdout_gets_every_worker_line_or_a_count_of_the_dropped_ones() {
    const N: u64 = 20000;
    let argv = [
        "sh".into(),
        "-c".into(),
        format!("seq 1 {N}; exec sleep 30"),
    ];
    let mut host = Host::start(3.0, &["nonblocking"], 1, Stdio::piped(), &argv);
    let mut out = host.child.stdout.take().unwrap();
    // Read late, so that the host's stdout fills up and its writes fail with EAGAIN.
    let reader = std::thread::spawn(move || {
        std::thread::sleep(Duration::from_secs(1));
        let mut text = String::new();
        out.read_to_string(&mut text).unwrap();
        text
    });
    let status = host.wait_exit(Duration::from_secs(20));
    assert!(status.success(), "host ended with {status}");
    let text = reader.join().unwrap();
    let mut got = 0;
    let mut last = 0;
    for line in text.lines() {
        let n: u64 = line
            .strip_prefix("[0] ")
            .and_then(|n| n.parse().ok())
            .unwrap_or_else(|| panic!("a whole prefixed line: {line:?}"));
        assert!(n > last, "lines in order: {n} after {last}");
        last = n;
        got += 1;
    }
    let (dropped, _) = host.dropped(0);
    assert_eq!(
        got + dropped,
        N,
        "{got} lines written, {dropped} reported dropped"
    );
}
