//! `rcluster run --metrics`: Prometheus metrics, health and readiness over HTTP from the
//! supervisor's loop, and `--drain-delay` on SIGTERM.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

mod common;
use common::{hello_worker_binary, Primary, RuntimeDir, RCLUSTER, WAIT};

fn free_addr() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().to_string()
}

/// One GET on a new connection: status code and body; an error if no full answer comes
/// within `limit`.
fn get(addr: &str, path: &str, limit: Duration) -> std::io::Result<(u16, String)> {
    let sa: SocketAddr = addr.parse().unwrap();
    let mut s = TcpStream::connect_timeout(&sa, limit)?;
    s.set_read_timeout(Some(limit))?;
    s.set_write_timeout(Some(limit))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n"
    )?;
    let mut text = String::new();
    s.read_to_string(&mut text)?;
    let (head, body) = text
        .split_once("\r\n\r\n")
        .ok_or_else(|| std::io::Error::other(format!("no full answer: {text:?}")))?;
    let status = head
        .split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("no status: {head:?}")))?;
    Ok((status, body.to_string()))
}

/// A private virtual environment with `prometheus_client` from PyPI, made once in the
/// target directory. The tests run as separate processes, several at once: the first makes it
/// under a lock while the others wait (two making it in the same folder break each other's
/// `ensurepip`).
fn prometheus_python() -> PathBuf {
    use std::os::fd::AsRawFd;
    let target = Path::new(RCLUSTER).parent().unwrap().parent().unwrap();
    let venv = target.join("prometheus-venv");
    let python = venv.join("bin/python");
    let ready = venv.join(".installed");
    let lock = std::fs::File::create(target.join("prometheus-venv.lock")).unwrap();
    // SAFETY: flock on a descriptor this function owns; released when `lock` is closed.
    let rc = unsafe { libc::flock(lock.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(rc, 0, "flock: {}", std::io::Error::last_os_error());
    if !ready.exists() {
        let ok = Command::new("python3")
            .args(["-m", "venv"])
            .arg(&venv)
            .status()
            .is_ok_and(|s| s.success())
            && Command::new(&python)
                .args([
                    "-m",
                    "pip",
                    "install",
                    "--quiet",
                    "prometheus_client>=0.17,<1",
                ])
                .env("PIP_DISABLE_PIP_VERSION_CHECK", "1")
                .stdin(Stdio::null())
                .status()
                .is_ok_and(|s| s.success());
        assert!(
            ok,
            "cannot install prometheus_client from PyPI into {venv:?}"
        );
        std::fs::write(&ready, "").unwrap();
    }
    python
}

/// Every sample of `text` as the Prometheus client library parses it:
/// "name{k=v,...}" (labels sorted) → value, and each family's type.
fn parse_with_prometheus_client(text: &str) -> (BTreeMap<String, f64>, BTreeMap<String, String>) {
    const SCRIPT: &str = "
import sys
from prometheus_client.parser import text_string_to_metric_families
for fam in text_string_to_metric_families(sys.stdin.read()):
    print('family', fam.name, fam.type)
    for s in fam.samples:
        labels = ','.join(f'{k}={v}' for k, v in sorted(s.labels.items()))
        print('sample', s.name + '{' + labels + '}', repr(float(s.value)))
";
    let mut child = Command::new(prometheus_python())
        .args(["-c", SCRIPT])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "the parser refused:\n{text}");
    let (mut samples, mut types) = (BTreeMap::new(), BTreeMap::new());
    for line in String::from_utf8(out.stdout).unwrap().lines() {
        let f: Vec<&str> = line.split(' ').collect();
        match f[..] {
            ["family", name, kind] => drop(types.insert(name.to_string(), kind.to_string())),
            ["sample", key, value] => drop(samples.insert(key.to_string(), value.parse().unwrap())),
            _ => panic!("unexpected parser output {line:?}"),
        }
    }
    (samples, types)
}

#[test]
fn metrics_of_a_running_cluster_parse_with_the_prometheus_client_parser() {
    let (listen, metrics) = (free_addr(), free_addr());
    let worker = hello_worker_binary();
    let mut p = Primary::start(&[
        "run",
        "-w",
        "2",
        "--ready",
        "explicit",
        "--listen",
        &format!("{listen}=web"),
        "--metrics",
        &metrics,
        "--",
        worker.to_str().unwrap(),
    ]);
    p.wait_log(": ready", 2);
    for _ in 0..5 {
        let (status, _) = get(&listen, "/", WAIT).unwrap();
        assert_eq!(status, 200);
    }
    p.signal(libc::SIGHUP);
    p.wait_log("reload to gen 2 done", 1);
    let (status, text) = get(&metrics, "/metrics", WAIT).unwrap();
    assert_eq!(status, 200);
    let (samples, types) = parse_with_prometheus_client(&text);
    let value = |k: &str| {
        *samples
            .get(k)
            .unwrap_or_else(|| panic!("no {k} in\n{text}"))
    };
    assert_eq!(value("rcluster_workers{state=ready}"), 2.0);
    assert_eq!(value("rcluster_workers_desired{}"), 2.0);
    assert_eq!(value("rcluster_reloads_total{result=done}"), 1.0);
    assert_eq!(value("rcluster_build_info{version=0.1.0}"), 1.0);
    // The reload replaced each slot once, at its request.
    for slot in 0..2 {
        assert_eq!(
            value(&format!(
                "rcluster_worker_restarts_total{{reason=requested,slot={slot}}}"
            )),
            1.0
        );
        assert!(
            value(&format!(
                "rcluster_worker_resident_memory_bytes{{slot={slot}}}"
            )) > 0.0
        );
    }
    let dispatched: f64 = samples
        .iter()
        .filter(|(k, _)| k.starts_with("rcluster_connections_dispatched_total{listener=web,"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(dispatched, 5.0, "{text}");
    assert_eq!(value("rcluster_dispatch_queue_length{listener=web}"), 0.0);
    assert!(value("rcluster_reload_duration_seconds{}") > 0.0);
    assert!(value("process_resident_memory_bytes{}") > 0.0);
    assert!(value("process_open_fds{}") > 0.0);
    assert!(value("process_start_time_seconds{}") > 1.6e9);
    assert!(samples.contains_key("rcluster_ipc_messages_total{direction=in}"));
    assert_eq!(types["rcluster_worker_restarts"], "counter");
    assert_eq!(types["rcluster_workers"], "gauge");
    assert!(!text.contains("pid="), "a pid label: {text}");
    let (status, body) = get(&metrics, "/healthz", WAIT).unwrap();
    assert_eq!((status, body.as_str()), (200, "ok\n"));
    let (status, _) = get(&metrics, "/readyz", WAIT).unwrap();
    assert_eq!(status, 200);
    assert_eq!(get(&metrics, "/nothing", WAIT).unwrap().0, 404);
}

#[test]
fn metrics_verb_prints_the_prometheus_text_of_a_cluster_without_the_http_server() {
    let listen = free_addr();
    let worker = hello_worker_binary();
    let mut p = Primary::start(&[
        "run",
        "--name",
        "counted",
        "-w",
        "2",
        "--ready",
        "explicit",
        "--listen",
        &format!("{listen}=web"),
        "--",
        worker.to_str().unwrap(),
    ]);
    p.wait_log(": ready", 2);
    for _ in 0..7 {
        assert_eq!(get(&listen, "/", WAIT).unwrap().0, 200);
    }
    let out = Command::new(RCLUSTER)
        .args(["metrics", "counted"])
        .env("XDG_RUNTIME_DIR", &p.runtime.0)
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // The same lines as /metrics: a family's HELP and TYPE, then `name{labels} value`.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (series, value) = line.rsplit_once(' ').unwrap();
        assert!(
            series.starts_with("rcluster_") || series.starts_with("process_"),
            "{line}"
        );
        assert!(value.parse::<f64>().is_ok(), "{line}");
    }
    let (samples, _) = parse_with_prometheus_client(&text);
    assert_eq!(samples["rcluster_workers{state=ready}"], 2.0, "{text}");
    let dispatched: f64 = samples
        .iter()
        .filter(|(k, _)| k.starts_with("rcluster_connections_dispatched_total{listener=web,"))
        .map(|(_, v)| v)
        .sum();
    assert_eq!(dispatched, 7.0, "counted without --metrics:\n{text}");
}

#[test]
fn healthz_goes_unanswered_while_the_loop_is_stopped_and_answers_again_after() {
    let metrics = free_addr();
    let mut p = Primary::start(&[
        "run",
        "-w",
        "1",
        "--metrics",
        &metrics,
        "--",
        "sleep",
        "300",
    ]);
    p.wait_log(": ready", 1);
    assert_eq!(get(&metrics, "/healthz", WAIT).unwrap().0, 200);
    // The kernel still accepts the connection (the socket's queue), but nobody answers.
    p.signal(libc::SIGSTOP);
    p.wait_all_threads_stopped();
    let stuck = get(&metrics, "/healthz", Duration::from_millis(500));
    p.signal(libc::SIGCONT);
    assert!(stuck.is_err(), "answered while stopped: {stuck:?}");
    assert_eq!(get(&metrics, "/healthz", WAIT).unwrap().0, 200);
}

#[test]
fn slow_http_clients_beyond_the_limit_do_not_stop_healthz_from_being_answered() {
    let metrics = free_addr();
    let mut p = Primary::start(&[
        "run",
        "-w",
        "1",
        "--metrics",
        &metrics,
        "--",
        "sleep",
        "300",
    ]);
    p.wait_log(": ready", 1);
    // Clients that send nothing, more of them than are served at once, and one that sends
    // a request head far over the limit.
    let idle: Vec<TcpStream> = (0..40)
        .map(|_| TcpStream::connect(&metrics).unwrap())
        .collect();
    let mut big = TcpStream::connect(&metrics).unwrap();
    big.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
    let _ = big.write_all(&vec![b'a'; 64 << 10]);
    // A new client takes the place of the oldest idle one: the probe is answered at once.
    for _ in 0..3 {
        let started = Instant::now();
        let (status, _) = get(&metrics, "/healthz", Duration::from_secs(2)).unwrap();
        assert_eq!(status, 200);
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
    }
    drop(idle);
    let (status, _) = get(&metrics, "/metrics", WAIT).unwrap();
    assert_eq!(status, 200);
}

/// A request on a new connection to `addr`: Ok(true) served with 200, Ok(false) refused (the
/// listener had gone), Err when an accepted connection failed.
fn one_request(addr: &SocketAddr) -> Result<bool, String> {
    let mut s = match TcpStream::connect_timeout(addr, Duration::from_secs(5)) {
        Ok(s) => s,
        Err(e) if e.kind() == std::io::ErrorKind::ConnectionRefused => return Ok(false),
        Err(e) => return Err(format!("connect: {e}")),
    };
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .map_err(|e| format!("write: {e}"))?;
    let mut text = String::new();
    s.read_to_string(&mut text)
        .map_err(|e| format!("read: {e}"))?;
    if text.starts_with("HTTP/1.1 200") {
        Ok(true)
    } else {
        Err(format!("answer {text:?}"))
    }
}

#[test]
fn sigterm_with_drain_delay_fails_readyz_first_keeps_serving_and_fails_no_accepted_request() {
    let (listen, metrics) = (free_addr(), free_addr());
    let worker = hello_worker_binary();
    let mut p = Primary::start(&[
        "run",
        "-w",
        "2",
        "--ready",
        "explicit",
        "--listen",
        &listen,
        "--metrics",
        &metrics,
        "--drain-delay",
        "1s",
        "--kill-timeout",
        "5s",
        "--",
        worker.to_str().unwrap(),
    ]);
    p.wait_log(": ready", 2);
    assert_eq!(get(&metrics, "/readyz", WAIT).unwrap().0, 200);
    let sa: SocketAddr = listen.parse().unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let (served, failed) = (
        Arc::new(AtomicUsize::new(0)),
        Arc::new(Mutex::new(Vec::new())),
    );
    let load: Vec<_> = (0..2)
        .map(|_| {
            let (stop, served, failed) = (stop.clone(), served.clone(), failed.clone());
            std::thread::spawn(move || {
                // Bounded: at most 20 000 requests or until told to stop.
                for _ in 0..20_000 {
                    if stop.load(Ordering::Relaxed) {
                        return;
                    }
                    match one_request(&sa) {
                        Ok(true) => drop(served.fetch_add(1, Ordering::Relaxed)),
                        Ok(false) => return, // the listener is gone: the stop has begun
                        Err(e) => failed.lock().unwrap().push(e),
                    }
                }
            })
        })
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    p.signal(libc::SIGTERM);
    let signalled = Instant::now();
    // /readyz fails at once (as soon as the signal is taken: asked again until then), while
    // requests are still served.
    let (status, body) = loop {
        let (status, body) = get(&metrics, "/readyz", WAIT).unwrap();
        if status == 503 || signalled.elapsed() > Duration::from_millis(900) {
            break (status, body);
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(status, 503, "{body}");
    assert!(
        signalled.elapsed() < Duration::from_millis(900),
        "503 came only after {:?}",
        signalled.elapsed()
    );
    let at_503 = served.load(Ordering::Relaxed);
    std::thread::sleep(Duration::from_millis(500));
    assert!(
        served.load(Ordering::Relaxed) > at_503,
        "nothing served during the drain"
    );
    let status = p.wait_exit();
    stop.store(true, Ordering::Relaxed);
    for t in load {
        t.join().unwrap();
    }
    let failed = failed.lock().unwrap();
    assert!(
        failed.is_empty(),
        "{} failed, e.g. {:?}",
        failed.len(),
        failed.first()
    );
    assert!(
        signalled.elapsed() >= Duration::from_secs(1),
        "stopped before the drain delay"
    );
    assert_eq!(status.code(), Some(0), "{status}");
    assert!(served.load(Ordering::Relaxed) > 0);
}

#[test]
fn metrics_address_in_use_exits_2_naming_it_and_the_flag() {
    let taken = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let runtime = RuntimeDir::new();
    let out = Command::new(RCLUSTER)
        .env("XDG_RUNTIME_DIR", &runtime.0)
        .args(["run", "-w", "1", "--metrics", &addr, "--", "sleep", "300"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains(&addr) && stderr.contains("--metrics"),
        "{stderr}"
    );
}
