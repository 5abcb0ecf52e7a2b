//! Signals to the primary: SIGTERM under load, SIGHUP, repeated signals.
//!
//! The mapping lives in the core (`Supervisor::on_signal`); every host only hands it the
//! signal numbers it receives. The `rcluster` command is such a host: it gets real signals
//! here, under load. The policy itself is checked through `on_signal` with real workers.

use std::io::{BufRead, BufReader};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcluster_core::{Event, SignalAction, Supervisor};
use rcluster_tests::{
    bin_path, http_exchange, test_worker, wait_for, wait_ready, worker_config, RuntimeDir,
};

const SIGTERM: i32 = libc::SIGTERM;

/// Waits for the end of the event stream (the loop has stopped); panics after `within`.
fn wait_stopped(sup: &Supervisor, within: Duration) -> Vec<Event> {
    let deadline = Instant::now() + within;
    let mut seen = Vec::new();
    while let Some(ev) = sup.next_event(Some(deadline.saturating_duration_since(Instant::now()))) {
        seen.push(ev);
        assert!(Instant::now() < deadline, "not stopped within {within:?}");
    }
    assert!(sup.is_stopped(), "not stopped within {within:?}: {seen:#?}");
    seen
}

#[test]
fn a_second_sigterm_kills_workers_that_ignore_the_first_and_a_third_changes_nothing() {
    let mut cfg = worker_config(2, &["ignore-term"]);
    cfg.kill_timeout = Duration::from_secs(30);
    let sup = Supervisor::start(cfg).unwrap();
    wait_ready(&sup, 2);
    let first = sup.on_signal(SIGTERM).unwrap();
    assert_eq!(
        first,
        SignalAction::Stop {
            kill_timeout: Duration::from_secs(30)
        }
    );
    assert!(sup.is_stopping());
    std::thread::sleep(Duration::from_millis(200));
    assert!(
        !sup.is_stopped(),
        "the workers ignore SIGTERM: still stopping"
    );
    let t0 = Instant::now();
    assert_eq!(sup.on_signal(libc::SIGINT).unwrap(), SignalAction::Kill);
    assert!(matches!(
        sup.on_signal(SIGTERM).unwrap(),
        SignalAction::Ignored(_)
    ));
    let events = wait_stopped(&sup, Duration::from_secs(10));
    assert!(t0.elapsed() < Duration::from_secs(5), "{:?}", t0.elapsed());
    let killed = events
        .iter()
        .filter(|e| matches!(e, Event::Exit { info, .. } if info.signal == Some(libc::SIGKILL)))
        .count();
    assert_eq!(killed, 2, "{events:#?}");
    assert_eq!(sup.stop_signal(), Some(SIGTERM));
    // `stop` returns at once: the loop has ended.
    sup.stop(Duration::from_secs(30)).unwrap();
}

#[test]
fn sighup_and_scaling_signals_during_a_stop_are_ignored() {
    let mut cfg = worker_config(1, &["ignore-term"]);
    cfg.kill_timeout = Duration::from_secs(30);
    let sup = Supervisor::start(cfg).unwrap();
    wait_ready(&sup, 1);
    // A stop asked for through the API counts as a stop for the mapping too.
    sup.begin_stop(Duration::from_secs(30));
    for sig in [libc::SIGHUP, libc::SIGTTIN, libc::SIGTTOU] {
        assert_eq!(
            sup.on_signal(sig).unwrap(),
            SignalAction::Ignored("the supervisor is stopping"),
            "{}",
            rcluster_core::signal_name(sig)
        );
    }
    // ...and a SIGTERM then kills now.
    assert_eq!(sup.on_signal(SIGTERM).unwrap(), SignalAction::Kill);
    let events = wait_stopped(&sup, Duration::from_secs(10));
    assert!(
        !events.iter().any(|e| matches!(
            e,
            Event::ReloadStarted { .. } | Event::Scaled { .. } | Event::Spawned { .. }
        )),
        "{events:#?}"
    );
    assert_eq!(sup.stop_signal(), None, "the API began this stop");
}

#[test]
fn sigttin_and_sigttou_step_by_one_from_the_loops_own_count_never_below_one() {
    let sup = Supervisor::start(worker_config(1, &["echo"])).unwrap();
    wait_ready(&sup, 1);
    // A count set through the API is the one the signals step from.
    sup.scale(3).unwrap();
    assert_eq!(
        sup.on_signal(libc::SIGTTIN).unwrap(),
        SignalAction::Scale { workers: 4 }
    );
    wait_for(&sup, Duration::from_secs(10), |e| {
        matches!(e, Event::Scaled { workers: 4 })
    });
    for n in [3, 2, 1] {
        assert_eq!(
            sup.on_signal(libc::SIGTTOU).unwrap(),
            SignalAction::Scale { workers: n }
        );
    }
    assert_eq!(
        sup.on_signal(libc::SIGTTOU).unwrap(),
        SignalAction::Ignored("already at 1 worker")
    );
    let live = |sup: &Supervisor| {
        sup.snapshot()
            .unwrap()
            .iter()
            .filter(|w| w.pid != 0)
            .map(|w| w.id)
            .collect::<Vec<_>>()
    };
    let deadline = Instant::now() + Duration::from_secs(10);
    while live(&sup) != [0] && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert_eq!(live(&sup), [0]);
    assert_eq!(
        sup.on_signal(libc::SIGUSR1).unwrap(),
        SignalAction::Ignored("not one of the signals rcluster handles")
    );
    sup.stop(Duration::from_secs(5)).unwrap();
}

#[test]
fn sighup_starts_a_rolling_reload_that_replaces_every_worker() {
    let sup = Supervisor::start(worker_config(2, &["echo"])).unwrap();
    wait_ready(&sup, 2);
    assert_eq!(
        sup.on_signal(libc::SIGHUP).unwrap(),
        SignalAction::Reload { generation: 2 }
    );
    wait_for(&sup, Duration::from_secs(15), |e| {
        matches!(e, Event::ReloadDone { generation: 2 })
    });
    assert!(sup.snapshot().unwrap().iter().all(|w| w.generation == 2));
    sup.stop(Duration::from_secs(5)).unwrap();
}

// ---- the `rcluster` command under load ----

/// The `rcluster` binary of this target directory; built when missing (`cargo nextest run -p
/// rcluster-tests` does not build other packages' binaries).
fn rcluster_binary() -> PathBuf {
    let worker = PathBuf::from(test_worker());
    let dir = worker.parent().expect("binary directory").to_path_buf();
    let path = dir.join("rcluster");
    if !path.exists() {
        build_rcluster(&dir);
    }
    PathBuf::from(bin_path("rcluster"))
}

fn build_rcluster(profile_dir: &Path) {
    let target_dir = profile_dir.parent().expect("target directory");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "rcluster", "--bin", "rcluster"])
        .env("CARGO_TARGET_DIR", target_dir)
        .stdin(Stdio::null())
        .stdout(Stdio::null());
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let mut child = cmd.spawn().expect("run cargo build");
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("building rcluster took longer than 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success(),
        "`cargo build -p rcluster` failed ({status})"
    );
}

/// What became of the requests of a load: answered, refused (nothing listened any more), or
/// failed after a connection was made, split by whether it began before the signal.
#[derive(Default)]
struct Outcomes {
    ok: AtomicUsize,
    refused: AtomicUsize,
    failed_in_flight: Mutex<Vec<String>>,
    failed_after: Mutex<Vec<String>>,
}

/// `clients` threads of requests, each on a connection of its own, until `done` (bounded by
/// count and time). `in_flight` counts requests under way; `signalled` splits the failures.
fn run_load(
    addr: SocketAddr,
    clients: usize,
    done: &Arc<AtomicBool>,
    signalled: &Arc<AtomicBool>,
    in_flight: &Arc<AtomicUsize>,
    out: &Arc<Outcomes>,
) -> Vec<std::thread::JoinHandle<()>> {
    (0..clients)
        .map(|_| {
            let (done, signalled) = (Arc::clone(done), Arc::clone(signalled));
            let (in_flight, out) = (Arc::clone(in_flight), Arc::clone(out));
            std::thread::spawn(move || {
                let deadline = Instant::now() + Duration::from_secs(25);
                for _ in 0..100_000 {
                    if done.load(Ordering::Acquire) || Instant::now() > deadline {
                        return;
                    }
                    let before = !signalled.load(Ordering::Acquire);
                    in_flight.fetch_add(1, Ordering::AcqRel);
                    let r = one_request(addr);
                    in_flight.fetch_sub(1, Ordering::AcqRel);
                    match r {
                        Ok(()) => drop(out.ok.fetch_add(1, Ordering::AcqRel)),
                        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => {
                            out.refused.fetch_add(1, Ordering::AcqRel);
                            std::thread::sleep(Duration::from_millis(5));
                        }
                        Err(e) if before => {
                            out.failed_in_flight.lock().unwrap().push(e.to_string())
                        }
                        Err(e) => out.failed_after.lock().unwrap().push(e.to_string()),
                    }
                }
            })
        })
        .collect()
}

fn one_request(addr: SocketAddr) -> std::io::Result<()> {
    let s = TcpStream::connect_timeout(&addr, Duration::from_secs(10))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    s.set_write_timeout(Some(Duration::from_secs(10)))?;
    http_exchange(s).map(drop)
}

struct Primary(Child);

impl Drop for Primary {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn rcluster_run_on_sigterm_under_load_exits_0_with_no_accepted_request_failed() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let runtime = RuntimeDir::new();
    let mut primary = Primary(
        Command::new(rcluster_binary())
            .env("XDG_RUNTIME_DIR", &runtime.0)
            .args(["run", "-w", "2", "--listen", &addr.to_string()])
            .args(["--ready", "explicit", "--kill-timeout", "10s", "--"])
            .args([test_worker().as_str(), "drain", "100"])
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rcluster"),
    );
    let log = Arc::new(Mutex::new(Vec::<String>::new()));
    let (stderr, sink) = (primary.0.stderr.take().unwrap(), Arc::clone(&log));
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
    });
    let deadline = Instant::now() + Duration::from_secs(15);
    while log
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains(": ready"))
        .count()
        < 2
    {
        assert!(
            Instant::now() < deadline,
            "not ready: {:?}",
            log.lock().unwrap()
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let (done, signalled) = (
        Arc::new(AtomicBool::new(false)),
        Arc::new(AtomicBool::new(false)),
    );
    let (in_flight, out) = (Arc::new(AtomicUsize::new(0)), Arc::new(Outcomes::default()));
    let clients = run_load(addr, 16, &done, &signalled, &in_flight, &out);
    std::thread::sleep(Duration::from_millis(800));
    let ok_before = out.ok.load(Ordering::Acquire);
    signalled.store(true, Ordering::Release);
    let at_signal = in_flight.load(Ordering::Acquire);
    // SAFETY: kill has no memory effects.
    assert_eq!(unsafe { libc::kill(primary.0.id() as i32, SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(s) = primary.0.try_wait().unwrap() {
            break s;
        }
        assert!(Instant::now() < deadline, "rcluster did not exit");
        std::thread::sleep(Duration::from_millis(10));
    };
    done.store(true, Ordering::Release);
    clients.into_iter().for_each(|c| c.join().unwrap());
    let (in_flight_failed, after_failed) = (
        out.failed_in_flight.lock().unwrap().clone(),
        out.failed_after.lock().unwrap().clone(),
    );
    println!(
        "rcluster SIGTERM: in flight {at_signal}, ok {}, failed in flight {}, failed after the \
         signal {}, refused {}",
        out.ok.load(Ordering::Acquire),
        in_flight_failed.len(),
        after_failed.len(),
        out.refused.load(Ordering::Acquire)
    );
    assert!(ok_before > 0, "the load got answers before the signal");
    assert!(at_signal > 0, "requests were in flight at the signal");
    assert_eq!(status.code(), Some(0), "log: {:?}", log.lock().unwrap());
    // Every request in flight at the signal was answered: the workers drained.
    assert_eq!(in_flight_failed, Vec::<String>::new());
    // A connection the kernel accepted after the signal must not be reset either (refused is
    // fine): this needs the core's stop to close its listeners before the drain.
    assert_eq!(after_failed, Vec::<String>::new());
}
