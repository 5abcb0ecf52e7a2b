//! The verbs that act on a running cluster (`rcluster status|reload|scale|...`) against a
//! real `rcluster run` primary, through its control socket. Each test has a runtime folder of
//! its own (XDG_RUNTIME_DIR), so that names never meet across tests.

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const RCLUSTER: &str = env!("CARGO_BIN_EXE_rcluster");
const WAIT: Duration = Duration::from_secs(10);

/// A runtime folder of its own for one test, removed at the end.
struct Runtime(PathBuf);

impl Runtime {
    fn new(tag: &str) -> Runtime {
        let dir = std::env::temp_dir().join(format!("rcluster-ctl-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Runtime(dir)
    }

    fn sock(&self, name: &str) -> PathBuf {
        self.0.join("rcluster").join(format!("{name}.sock"))
    }

    fn cmd(&self, args: &[&str]) -> Command {
        let mut c = Command::new(RCLUSTER);
        c.args(args)
            .env("XDG_RUNTIME_DIR", &self.0)
            .stdin(Stdio::null());
        c
    }

    /// Runs a verb to its end (bounded).
    fn verb(&self, args: &[&str]) -> Output {
        let child = self
            .cmd(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        wait_output(child, WAIT)
    }

    /// Starts `rcluster ARGS` with its log collected (no wait).
    fn start_no_socket(&self, args: &[&str]) -> Cluster {
        let mut child = self
            .cmd(args)
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap();
        let log = Arc::new(Mutex::new(Vec::new()));
        let (stderr, sink) = (child.stderr.take().unwrap(), Arc::clone(&log));
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Cluster { child, log }
    }

    /// Starts `rcluster run ARGS` and waits until its control socket answers.
    fn start(&self, name: &str, args: &[&str]) -> Cluster {
        let c = self.start_no_socket(&[&["run", "--name", name][..], args].concat());
        let deadline = Instant::now() + WAIT;
        while UnixStream::connect(self.sock(name)).is_err() {
            assert!(
                Instant::now() < deadline,
                "no control socket; log:\n{}",
                c.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        c
    }
}

impl Drop for Runtime {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

struct Cluster {
    child: Child,
    log: Arc<Mutex<Vec<String>>>,
}

impl Cluster {
    fn log(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }

    fn wait_log(&self, needle: &str) {
        let deadline = Instant::now() + WAIT;
        while !self.log().contains(needle) {
            assert!(
                Instant::now() < deadline,
                "no {needle:?} in log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn wait_exit(&mut self) -> std::process::ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(
                Instant::now() < deadline,
                "rcluster did not exit; log:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn rss_kb(&self) -> usize {
        let s = std::fs::read_to_string(format!("/proc/{}/status", self.child.id())).unwrap();
        let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
        line.split_whitespace().nth(1).unwrap().parse().unwrap()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        if matches!(self.child.try_wait(), Ok(None)) {
            // SIGTERM stops the workers too; SIGKILL if that takes too long.
            // SAFETY: kill has no memory effects.
            unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while matches!(self.child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

fn wait_output(mut child: Child, limit: Duration) -> Output {
    let deadline = Instant::now() + limit;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!(
                "verb did not finish within {limit:?}: {:?}",
                child.wait_with_output()
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

fn status_json(rt: &Runtime, name: &str) -> serde_json::Value {
    let o = rt.verb(&["status", name, "--json"]);
    assert!(o.status.success(), "{}", text(&o));
    serde_json::from_slice(&o.stdout).unwrap()
}

/// Waits until the status says `n` workers are ready (and no more processes run).
fn wait_ready(rt: &Runtime, name: &str, n: usize) -> serde_json::Value {
    let deadline = Instant::now() + WAIT;
    loop {
        let st = status_json(rt, name);
        let workers = st["workers"].as_array().unwrap();
        if workers.len() == n && workers.iter().all(|w| w["state"] == "ready") {
            return st;
        }
        assert!(Instant::now() < deadline, "not {n} ready: {st}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn pids(st: &serde_json::Value) -> Vec<u64> {
    let w = st["workers"].as_array().unwrap();
    w.iter().map(|w| w["pid"].as_u64().unwrap()).collect()
}

const TALKER: &str = "echo hello $RCLUSTER_WORKER_ID; exec sleep 300";

#[test]
fn ls_status_scale_restart_signal_logs_and_stop_act_on_a_running_cli_cluster() {
    let rt = Runtime::new("verbs");
    let mut c = rt.start(
        "verbs",
        &["-w", "2", "--prefix-output", "--", "sh", "-c", TALKER],
    );
    let st = wait_ready(&rt, "verbs", 2);
    assert_eq!(st["name"], "verbs");
    assert_eq!(st["pid"], c.child.id());
    for key in [
        "version",
        "uptime_s",
        "generation",
        "workers_desired",
        "listeners",
        "reloading",
    ] {
        assert!(st.get(key).is_some(), "{key} missing: {st}");
    }

    let ls = rt.verb(&["ls"]);
    assert!(
        ls.status.success() && text(&ls).contains("verbs"),
        "{}",
        text(&ls)
    );
    assert!(text(&ls).contains("2/2"), "{}", text(&ls));

    let table = rt.verb(&["status", "verbs"]);
    let t = text(&table);
    assert!(
        t.contains("SLOT") && t.contains("ready") && t.contains("MB"),
        "{t}"
    );
    assert!(
        !t.contains('\x1b'),
        "no colour when stdout is not a terminal: {t:?}"
    );

    let o = rt.verb(&["scale", "verbs", "+1"]);
    assert!(o.status.success(), "{}", text(&o));
    let st = wait_ready(&rt, "verbs", 3);
    let o = rt.verb(&["scale", "verbs", "-2"]);
    assert!(o.status.success(), "{}", text(&o));
    let st1 = wait_ready(&rt, "verbs", 1);
    assert_eq!(pids(&st1)[0], pids(&st)[0]);
    let o = rt.verb(&["scale", "verbs", "2"]);
    assert!(o.status.success(), "{}", text(&o));
    let st = wait_ready(&rt, "verbs", 2);

    let before = pids(&st);
    let o = rt.verb(&["restart", "verbs", "0"]);
    assert!(o.status.success(), "{}", text(&o));
    let o = rt.verb(&["signal", "verbs", "1", "TERM"]);
    assert!(o.status.success(), "{}", text(&o));
    let deadline = Instant::now() + WAIT;
    let st = loop {
        let st = wait_ready(&rt, "verbs", 2);
        let now = pids(&st);
        if now[0] != before[0] && now[1] != before[1] {
            break st;
        }
        assert!(Instant::now() < deadline, "not replaced: {st}");
    };
    assert_eq!(st["workers"][1]["last_exit"]["reason"], "requested", "{st}");
    assert_eq!(
        st["workers"][1]["last_exit"]["signal"],
        libc::SIGTERM,
        "{st}"
    );

    let o = rt.verb(&["restart", "verbs", "7"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains('7'), "{}", text(&o));

    let logs = rt.verb(&["logs", "verbs", "-n", "50"]);
    let l = text(&logs);
    assert!(l.contains("hello 0") && l.contains("hello 1"), "{l}");

    let o = rt.verb(&["stop", "verbs"]);
    assert!(
        o.status.success() && text(&o).contains("stopped"),
        "{}",
        text(&o)
    );
    assert!(c.wait_exit().success());
    assert!(
        !rt.sock("verbs").exists(),
        "the socket is removed at the end"
    );
    let o = rt.verb(&["status", "verbs"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("does not exist"), "{}", text(&o));
}

#[test]
fn reload_prints_progress_per_slot_and_exits_1_when_it_rolls_back() {
    let rt = Runtime::new("reload");
    // A program that is gone by the time of the second reload: its workers cannot start.
    let prog = rt.0.join("w");
    std::fs::copy("/bin/sleep", &prog).unwrap();
    let _c = rt.start("reload", &["-w", "2", "--", prog.to_str().unwrap(), "300"]);
    wait_ready(&rt, "reload", 2);
    let o = rt.verb(&["reload", "reload"]);
    let t = text(&o);
    assert!(o.status.success(), "{t}");
    for want in [
        "slot 0: started",
        "slot 1: started",
        "ready",
        "generation 2",
    ] {
        assert!(t.contains(want), "{want:?} missing in {t}");
    }
    let st = wait_ready(&rt, "reload", 2);
    let gen2 = pids(&st);

    std::fs::remove_file(&prog).unwrap();
    let o = rt.verb(&["reload", "reload"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("rolled back") && t.contains("could not be started"),
        "{t}"
    );
    let st = wait_ready(&rt, "reload", 2);
    assert_eq!(pids(&st), gen2, "the old workers keep serving");
}

#[test]
fn events_streams_lifecycle_events_as_json_lines() {
    let rt = Runtime::new("events");
    let _c = rt.start("events", &["-w", "1", "--", "sleep", "300"]);
    wait_ready(&rt, "events", 1);
    let mut ev = rt
        .cmd(&["events", "events"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // Read on a thread of its own, so that waiting for a line is bounded: a restart made
    // before the stream was set up shows in it never, and the next restart is asked for.
    let lines = BufReader::new(ev.stdout.take().unwrap()).lines();
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in lines.map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let deadline = Instant::now() + WAIT;
    let mut seen: Vec<String> = Vec::new();
    let both =
        |seen: &[String]| seen.iter().any(|e| e == "exit") && seen.iter().any(|e| e == "spawned");
    while Instant::now() < deadline && !both(&seen) {
        assert!(rt.verb(&["restart", "events", "0"]).status.success());
        while let Ok(line) = rx.recv_timeout(Duration::from_secs(1)) {
            let v: serde_json::Value = serde_json::from_str(&line).unwrap();
            seen.push(v["event"].as_str().unwrap_or("").to_string());
            if both(&seen) {
                break;
            }
        }
    }
    let _ = ev.kill();
    let _ = ev.wait();
    assert!(
        seen.contains(&"exit".into()) && seen.contains(&"spawned".into()),
        "{seen:?}"
    );
}

#[test]
fn logs_follow_passes_new_lines_on() {
    let rt = Runtime::new("follow");
    let script =
        "i=0; while [ $i -lt 200 ]; do echo tick $i; i=$((i+1)); sleep 0.05; done; exec sleep 300";
    let _c = rt.start(
        "follow",
        &["-w", "1", "--prefix-output", "--", "sh", "-c", script],
    );
    let mut f = rt
        .cmd(&["logs", "follow", "-f", "-n", "1"])
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(f.stdout.take().unwrap()).lines();
    let mut ticks = Vec::new();
    for _ in 0..5 {
        let line = lines.next().unwrap().unwrap();
        ticks.push(line.rsplit(' ').next().unwrap().parse::<u32>().unwrap());
    }
    let _ = f.kill();
    let _ = f.wait();
    assert!(
        ticks.windows(2).all(|w| w[1] == w[0] + 1),
        "in order, none missed: {ticks:?}"
    );
}

#[test]
fn a_client_of_another_uid_is_refused_and_the_refusal_is_logged() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        println!("skipped: needs root to run a client as nobody");
        return;
    }
    let rt = Runtime::new("uid");
    let c = rt.start("uid", &["-w", "1", "--", "sleep", "300"]);
    // Open the folder and the socket to everyone, so that only the credentials check stands
    // between nobody and the cluster.
    let mode = |p: &Path, m| std::fs::set_permissions(p, std::fs::Permissions::from_mode(m));
    mode(&rt.0, 0o755).unwrap();
    mode(&rt.0.join("rcluster"), 0o755).unwrap();
    mode(&rt.sock("uid"), 0o777).unwrap();
    let child = Command::new("setpriv")
        .args([
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            RCLUSTER,
            "status",
        ])
        .arg(rt.sock("uid"))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let o = wait_output(child, WAIT);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(
        text(&o).contains("refused a client of uid 65534"),
        "{}",
        text(&o)
    );
    c.wait_log("refused a client of uid 65534");
    // The cluster's own user still gets in.
    wait_ready(&rt, "uid", 1);
}

#[test]
fn silent_huge_and_unread_clients_cost_a_bounded_buffer_and_status_still_answers() {
    let rt = Runtime::new("abuse");
    // One worker prints without pause: a follower that never reads falls behind at once.
    let c = rt.start(
        "abuse",
        &[
            "-w",
            "1",
            "--prefix-output",
            "--",
            "sh",
            "-c",
            "exec yes 'a line of output that fills the pipe'",
        ],
    );
    wait_ready(&rt, "abuse", 1);
    let sock = rt.sock("abuse");
    let rss_before = c.rss_kb();
    // Silent clients: connected, never a byte.
    let silent: Vec<UnixStream> = (0..8)
        .map(|_| UnixStream::connect(&sock).unwrap())
        .collect();
    // A follower that never reads.
    let mut deaf = UnixStream::connect(&sock).unwrap();
    deaf.write_all(b"{\"cmd\":\"logs\",\"follow\":true}\n")
        .unwrap();
    // 10 MB without a newline.
    let big = std::thread::spawn({
        let sock = sock.clone();
        move || {
            let mut s = UnixStream::connect(&sock).unwrap();
            s.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
            let chunk = vec![b'x'; 64 * 1024];
            let mut sent = 0;
            while sent < 10 << 20 {
                match s.write(&chunk) {
                    Ok(n) => sent += n,
                    Err(_) => break,
                }
            }
            let mut reply = String::new();
            let _ = s.read_to_string(&mut reply);
            (sent, reply)
        }
    });
    let (sent, reply) = big.join().unwrap();
    assert!(
        sent < 10 << 20 || reply.contains("longer than"),
        "the 10 MB request is cut short: sent {sent}, reply {reply:?}"
    );
    c.wait_log("dropped a client that does not read");
    // Still serving, promptly, while all that happened.
    let t = Instant::now();
    let st = status_json(&rt, "abuse");
    assert_eq!(st["workers"][0]["state"], "ready");
    assert!(
        t.elapsed() < Duration::from_secs(2),
        "status took {:?}",
        t.elapsed()
    );
    let rss_after = c.rss_kb();
    assert!(
        rss_after < rss_before + 16 * 1024,
        "primary RSS grew from {rss_before} kB to {rss_after} kB"
    );
    drop((silent, deaf));
}

#[test]
fn a_stale_socket_left_by_a_killed_primary_is_taken_over() {
    let rt = Runtime::new("stale");
    let mut c = rt.start("stale", &["-w", "1", "--", "sleep", "300"]);
    wait_ready(&rt, "stale", 1);
    c.child.kill().unwrap();
    c.child.wait().unwrap();
    assert!(
        rt.sock("stale").exists(),
        "SIGKILL leaves the socket behind"
    );
    let o = rt.verb(&["status", "stale"]);
    assert!(text(&o).contains("stale"), "{}", text(&o));
    let c2 = rt.start("stale", &["-w", "1", "--", "sleep", "300"]);
    let st = wait_ready(&rt, "stale", 1);
    assert_eq!(st["pid"], c2.child.id());
}

#[test]
fn a_second_live_cluster_with_the_same_name_exits_2_naming_it() {
    let rt = Runtime::new("dup");
    let c = rt.start("dup", &["-w", "1", "--", "sleep", "300"]);
    let o = rt.verb(&["run", "--name", "dup", "-w", "1", "--", "sleep", "300"]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(
        t.contains("dup") && t.contains("live cluster") && t.contains("--name"),
        "{t}"
    );
    assert!(t.contains(&format!("pid {}", c.child.id())), "{t}");
    wait_ready(&rt, "dup", 1);
}

#[test]
fn an_unnamed_cluster_of_a_program_that_runs_already_is_named_with_its_pid() {
    let rt = Runtime::new("unnamed");
    let run = |rt: &Runtime| {
        rt.cmd(&["run", "-w", "1", "--", "sleep", "300"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    };
    let mut a = run(&rt);
    let deadline = Instant::now() + WAIT;
    while !rt.sock("sleep").exists() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut b = run(&rt);
    let other = format!("sleep-{}", b.id());
    while !rt.sock(&other).exists() {
        assert!(Instant::now() < deadline, "no {other}.sock");
        std::thread::sleep(Duration::from_millis(20));
    }
    let ls = text(&rt.verb(&["ls"]));
    for p in [&mut a, &mut b] {
        // SAFETY: kill has no memory effects.
        unsafe { libc::kill(p.id() as i32, libc::SIGTERM) };
        p.wait().unwrap();
    }
    assert!(ls.contains("sleep ") && ls.contains(&other), "{ls}");
}

#[test]
fn run_config_file_sets_every_flag_by_key_and_a_bad_key_exits_2_naming_its_line() {
    let rt = Runtime::new("config");
    let file = rt.0.join("app.toml");
    std::fs::write(
        &file,
        "# the web cluster\nname = \"fromfile\"\nworkers = 3\nkill_timeout = \"2s\"\ncmd = [\"sleep\", \"300\"]\n",
    )
    .unwrap();
    let mut child = rt
        .cmd(&["run", "--config", file.to_str().unwrap(), "-w", "2"])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + WAIT;
    while !rt.sock("fromfile").exists() {
        assert!(Instant::now() < deadline, "no socket named by the file");
        std::thread::sleep(Duration::from_millis(20));
    }
    // The command line's -w 2 wins over the file's workers = 3.
    let st = wait_ready(&rt, "fromfile", 2);
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    child.wait().unwrap();
    assert_eq!(st["workers_desired"], 2);

    std::fs::write(
        &file,
        "workers = 2\nmax_surge = \"lots\"\ncmd = [\"sleep\", \"1\"]\n",
    )
    .unwrap();
    let o = rt.verb(&["run", "--config", file.to_str().unwrap()]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(2), "{t}");
    assert!(t.contains("app.toml:2: key `max_surge`"), "{t}");
}

#[test]
fn monit_in_a_terminal_scales_on_plus_and_quits_on_q_and_refuses_a_pipe() {
    let rt = Runtime::new("monit");
    let _c = rt.start("monit", &["-w", "1", "--", "sleep", "300"]);
    wait_ready(&rt, "monit", 1);
    let o = rt.verb(&["monit", "monit"]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("needs a terminal"), "{}", text(&o));
    if Command::new("script").arg("--version").output().is_err() {
        println!("skipped the terminal part: no `script` (util-linux) to make one");
        return;
    }
    // `script` runs monit on a pseudo-terminal and passes it what is written to its stdin.
    let mut child = Command::new("script")
        // A pseudo-terminal made from a pipe has no size: give it one to draw in.
        .args([
            "-qfec",
            &format!("stty cols 120 rows 30; {RCLUSTER} monit monit"),
            "/dev/null",
        ])
        .env("XDG_RUNTIME_DIR", &rt.0)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let mut keys = child.stdin.take().unwrap();
    std::thread::sleep(Duration::from_millis(500));
    keys.write_all(b"+").unwrap();
    wait_ready(&rt, "monit", 2);
    keys.write_all(b"q").unwrap();
    let o = wait_output(child, WAIT);
    assert!(o.status.success(), "monit quits on q with status 0");
    let screen = String::from_utf8_lossy(&o.stdout);
    assert!(
        screen.contains("SLOT") && screen.contains("ready"),
        "{screen}"
    );
}

#[test]
fn without_a_usable_socket_folder_the_cluster_runs_and_says_so_once_unless_control_is_required() {
    let rt = Runtime::new("nofolder");
    // A file where the socket folder should be: the folder cannot be made.
    std::fs::write(rt.0.join("rcluster"), b"not a folder").unwrap();
    let c = rt.start_no_socket(&["run", "-w", "1", "--", "sleep", "300"]);
    c.wait_log("ready");
    c.wait_log("no control socket");
    assert_eq!(
        c.log().matches("no control socket").count(),
        1,
        "{}",
        c.log()
    );
    let o = rt.verb(&[
        "run",
        "--control",
        "required",
        "-w",
        "1",
        "--",
        "sleep",
        "300",
    ]);
    let t = text(&o);
    assert_eq!(o.status.code(), Some(1), "{t}");
    assert!(
        t.contains("control socket") && t.contains("rcluster"),
        "{t}"
    );
}

#[test]
fn unnamed_clusters_started_at_once_over_a_stale_socket_each_get_a_live_one() {
    let rt = Runtime::new("race");
    let dir = rt.0.join("rcluster");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).unwrap();
    // A socket file nothing accepts on, as a killed primary leaves.
    drop(std::os::unix::net::UnixListener::bind(dir.join("sleep.sock")).unwrap());
    let mut children: Vec<Child> = (0..4)
        .map(|_| {
            rt.cmd(&["run", "-w", "1", "--", "sleep", "300"])
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .unwrap()
        })
        .collect();
    let deadline = Instant::now() + WAIT;
    let mut answered = Vec::new();
    while answered.len() < 4 && Instant::now() < deadline {
        answered = std::fs::read_dir(&dir)
            .unwrap()
            .filter_map(|e| {
                let p = e.ok()?.path();
                (p.extension()? == "sock").then_some(p)
            })
            .filter_map(|p| {
                let o = rt.verb(&["status", p.to_str().unwrap(), "--json"]);
                let v: serde_json::Value = serde_json::from_slice(&o.stdout).ok()?;
                v["pid"].as_u64()
            })
            .collect();
        std::thread::sleep(Duration::from_millis(50));
    }
    for c in &mut children {
        // SAFETY: kill has no memory effects.
        unsafe { libc::kill(c.id() as i32, libc::SIGTERM) };
        c.wait().unwrap();
    }
    answered.sort();
    answered.dedup();
    let mut want: Vec<u64> = children.iter().map(|c| c.id() as u64).collect();
    want.sort();
    assert_eq!(
        answered, want,
        "each cluster answers on a socket of its own"
    );
}
