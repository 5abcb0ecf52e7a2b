//! The control protocol of `docs/control.md`, spoken by hand to an embedded primary
//! (`Config::control`), line by line.

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::time::Duration;

use rcluster_core::{ControlMode, Event, Output, Supervisor};
use rcluster_tests::{wait_for, wait_ready, worker_config};
use serde_json::{json, Value};

struct Conn {
    r: BufReader<UnixStream>,
    w: UnixStream,
}

impl Conn {
    fn open(path: &PathBuf) -> Conn {
        let s = UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        Conn {
            w: s.try_clone().unwrap(),
            r: BufReader::new(s),
        }
    }

    fn line(&mut self) -> Value {
        let mut l = String::new();
        self.r.read_line(&mut l).unwrap();
        serde_json::from_str(&l).unwrap_or_else(|e| panic!("{e}: {l:?}"))
    }

    fn ask(&mut self, req: &[u8]) -> Value {
        self.w.write_all(req).unwrap();
        self.w.write_all(b"\n").unwrap();
        self.line()
    }
}

/// A cluster of `echo` test workers with its socket in a folder of its own
/// (`Config::control_dir`).
fn cluster(tag: &str, workers: usize) -> (Supervisor, PathBuf, PathBuf) {
    let dir = std::env::temp_dir().join(format!("rcluster-proto-{tag}-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut cfg = worker_config(workers, &["echo"]);
    cfg.name = Some(tag.into());
    cfg.control = ControlMode::Required;
    cfg.control_dir = Some(dir.join("rcluster"));
    cfg.output = Output::Prefix;
    let sup = Supervisor::start(cfg).unwrap();
    wait_ready(&sup, workers);
    let sock = dir.join("rcluster").join(format!("{tag}.sock"));
    (sup, sock, dir)
}

#[test]
fn hello_then_one_reply_per_request_and_errors_that_name_what_was_wrong() {
    let (sup, sock, dir) = cluster("proto", 2);
    let mut c = Conn::open(&sock);
    let hello = c.line();
    assert_eq!(hello["hello"], "rcluster");
    assert_eq!(hello["protocol"], 1);
    assert_eq!(hello["name"], "proto");
    assert_eq!(hello["pid"], std::process::id());

    let st = c.ask(br#"{"cmd":"status"}"#);
    assert_eq!(st["ok"], true);
    assert_eq!(st["status"]["control"], json!(sock.to_string_lossy()));
    assert_eq!(st["status"]["workers"].as_array().unwrap().len(), 2);

    let bad = c.ask(br#"{"cmd":"fly"}"#);
    assert_eq!(bad["ok"], false);
    assert!(bad["error"].as_str().unwrap().contains("fly"), "{bad}");
    let bad = c.ask(b"not json");
    assert!(bad["error"].as_str().unwrap().contains("JSON"), "{bad}");
    let bad = c.ask(br#"{"cmd":"signal","slot":0,"signal":"NOPE"}"#);
    assert!(bad["error"].as_str().unwrap().contains("signal"), "{bad}");

    // Signal 15 by number: the exit that follows is `requested`.
    let ok = c.ask(br#"{"cmd":"signal","slot":0,"signal":15}"#);
    assert_eq!(
        (ok["ok"].clone(), ok["signal"].clone()),
        (json!(true), json!(15))
    );
    let ev = wait_for(&sup, Duration::from_secs(10), |e| {
        matches!(e, Event::Exit { id: 0, .. })
    });
    let Event::Exit { info, .. } = ev else {
        unreachable!()
    };
    assert_eq!(info.reason.as_str(), "requested");

    let ok = c.ask(br#"{"cmd":"scale","workers":"+1"}"#);
    assert_eq!(
        (ok["before"].clone(), ok["workers"].clone()),
        (json!(2), json!(3))
    );
    wait_for(&sup, Duration::from_secs(10), |e| {
        matches!(e, Event::Ready { id: 2, .. })
    });
    let bad = c.ask(br#"{"cmd":"scale","workers":0}"#);
    assert!(bad["error"].as_str().unwrap().contains("workers"), "{bad}");

    // A line longer than 64 KiB: an error, then the connection is closed.
    let mut long = Conn::open(&sock);
    long.line();
    long.w.write_all(&vec![b' '; 70 * 1024]).unwrap();
    let reply = long.line();
    assert!(
        reply["error"].as_str().unwrap().contains("longer than"),
        "{reply}"
    );
    let mut rest = String::new();
    assert_eq!(
        long.r.read_line(&mut rest).unwrap(),
        0,
        "closed after the error"
    );

    sup.stop(Duration::from_secs(5)).unwrap();
    assert!(!sock.exists(), "the socket is removed at stop");
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn logs_keep_the_last_lines_of_each_worker_with_slot_pid_and_stream() {
    let dir = std::env::temp_dir().join(format!("rcluster-proto-logs-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let script = "for i in 1 2 3 4 5 6; do echo out $RCLUSTER_WORKER_ID $i; done; \
                  echo err $RCLUSTER_WORKER_ID >&2; exec sleep 300";
    let mut cfg = rcluster_core::Config::new(["sh", "-c", script]);
    cfg.workers = 2;
    cfg.ready_on = rcluster_core::ReadyOn::Spawn;
    cfg.name = Some("logs".into());
    cfg.control = ControlMode::Required;
    cfg.control_dir = Some(dir.join("rcluster"));
    cfg.output = Output::Prefix;
    let sup = Supervisor::start(cfg).unwrap();
    let sock = dir.join("rcluster").join("logs.sock");
    let mut lines = Vec::new();
    // The lines arrive as the workers print them: ask until both workers' are there.
    for _ in 0..100 {
        let mut c = Conn::open(&sock);
        c.line();
        assert_eq!(c.ask(br#"{"cmd":"logs","lines":3}"#)["ok"], true);
        lines.clear();
        loop {
            let v = c.line();
            if v.get("end").is_some() {
                break;
            }
            lines.push(v["log"].clone());
        }
        if lines.len() == 6 {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(lines.len(), 6, "the last 3 lines of each worker: {lines:?}");
    for slot in 0..2u64 {
        let own: Vec<&Value> = lines.iter().filter(|l| l["slot"] == slot).collect();
        // The two pipes are read in either order: which lines, not their order across them.
        let mut texts: Vec<&str> = own.iter().map(|l| l["line"].as_str().unwrap()).collect();
        texts.sort();
        let err = format!("err {slot}");
        let (out5, out6) = (format!("out {slot} 5"), format!("out {slot} 6"));
        assert_eq!(texts, [err.as_str(), out5.as_str(), out6.as_str()]);
        let on_stderr: Vec<&&Value> = own.iter().filter(|l| l["stream"] == "stderr").collect();
        assert_eq!(on_stderr.len(), 1);
        assert_eq!(on_stderr[0]["line"], json!(err));
        assert!(own
            .iter()
            .all(|l| l["pid"].as_u64().unwrap() > 0 && l["pid"] == own[0]["pid"]));
    }
    sup.stop(Duration::from_secs(5)).unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn pipelined_requests_are_all_answered_in_order_a_few_per_turn() {
    let (sup, sock, dir) = cluster("pipelined", 1);
    let mut c = Conn::open(&sock);
    c.line();
    let mut burst = Vec::new();
    for i in 0..100 {
        // Alternating, so that the order of the replies shows.
        if i % 2 == 0 {
            burst.extend_from_slice(b"{\"cmd\":\"status\"}\n");
        } else {
            burst.extend_from_slice(b"{\"cmd\":\"restart\",\"slot\":9}\n");
        }
    }
    c.w.write_all(&burst).unwrap();
    // Another client is served meanwhile.
    let mut other = Conn::open(&sock);
    other.line();
    assert_eq!(other.ask(br#"{"cmd":"status"}"#)["ok"], true);
    for i in 0..100 {
        let v = c.line();
        if i % 2 == 0 {
            assert_eq!(v["ok"], true, "reply {i}: {v}");
            assert!(v.get("status").is_some(), "reply {i}: {v}");
        } else {
            assert_eq!(v["ok"], false, "reply {i}: {v}");
        }
    }
    sup.stop(Duration::from_secs(5)).unwrap();
    let _ = std::fs::remove_dir_all(dir);
}

#[test]
fn unnamed_clusters_of_one_program_in_one_process_take_name_pid_then_name_pid_2() {
    let dir = std::env::temp_dir().join(format!("rcluster-proto-unnamed-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let start = || {
        let mut cfg = worker_config(1, &["echo"]);
        cfg.control = ControlMode::Required;
        cfg.control_dir = Some(dir.join("rcluster"));
        Supervisor::start(cfg).unwrap()
    };
    let sups = [start(), start(), start()];
    let names: Vec<String> = sups.iter().map(|s| s.status().unwrap().name).collect();
    let pid = std::process::id();
    assert_eq!(
        names,
        [
            "rcluster-test-worker".to_string(),
            format!("rcluster-test-worker-{pid}"),
            format!("rcluster-test-worker-{pid}-2"),
        ]
    );
    for (s, n) in sups.iter().zip(&names) {
        assert!(dir.join("rcluster").join(format!("{n}.sock")).exists());
        s.stop(Duration::from_secs(5)).unwrap();
    }
    // A name given explicitly is never changed: a live one is an error naming it.
    let first = start();
    let mut cfg = worker_config(1, &["echo"]);
    cfg.control = ControlMode::On;
    cfg.control_dir = Some(dir.join("rcluster"));
    cfg.name = Some("rcluster-test-worker".into());
    let e = Supervisor::start(cfg).err().unwrap().to_string();
    assert!(
        e.contains("name") && e.contains("live cluster") && e.contains(&format!("pid {pid}")),
        "{e}"
    );
    first.stop(Duration::from_secs(5)).unwrap();
    let _ = std::fs::remove_dir_all(dir);
}
