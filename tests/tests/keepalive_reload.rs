//! Keep-alive clients across rolling reloads: a draining worker finishes the request in hand,
//! answers the next one with `Connection: close`, and closes only connections that stay
//! quiet, so a client that always has a request in flight never sees a failed request.

use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::process::{Child, ChildStderr, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc::{self, Receiver};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rcluster_tests::{bin_path, RuntimeDir};

const CLIENTS: usize = 50;
const RELOADS: u32 = 3;

/// What the client pool saw.
#[derive(Default)]
struct Tally {
    ok: AtomicU64,
    /// Responses whose status is not 2xx.
    non_2xx: AtomicU64,
    /// Connects, writes or reads that failed, or a connection that ended before its answer.
    socket_errors: AtomicU64,
    /// The first few failures, to say what went wrong.
    samples: Mutex<Vec<String>>,
}

impl Tally {
    fn error(&self, what: String) {
        self.socket_errors.fetch_add(1, Ordering::SeqCst);
        let mut s = self.samples.lock().unwrap();
        if s.len() < 10 {
            s.push(what);
        }
    }
}

/// `CLIENTS` keep-alive clients, each sending its next request as soon as the previous answer
/// is read (like `wrk`), reconnecting only after a `Connection: close` answer or an error.
fn start_clients(
    addr: SocketAddr,
    stop: &Arc<AtomicBool>,
    tally: &Arc<Tally>,
) -> Vec<JoinHandle<()>> {
    (0..CLIENTS)
        .map(|_| {
            let (stop, tally) = (Arc::clone(stop), Arc::clone(tally));
            std::thread::spawn(move || client(addr, &stop, &tally))
        })
        .collect()
}

fn client(addr: SocketAddr, stop: &AtomicBool, tally: &Tally) {
    let mut conn: Option<BufReader<TcpStream>> = None;
    while !stop.load(Ordering::SeqCst) {
        let mut c = match conn.take() {
            Some(c) => c,
            None => match TcpStream::connect_timeout(&addr, Duration::from_secs(10)) {
                Ok(s) => {
                    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
                    BufReader::new(s)
                }
                Err(e) => {
                    tally.error(format!("connect: {e}"));
                    std::thread::sleep(Duration::from_millis(10));
                    continue;
                }
            },
        };
        if let Err(e) = c.get_mut().write_all(b"GET / HTTP/1.1\r\nHost: t\r\n\r\n") {
            tally.error(format!("write: {e}"));
            continue;
        }
        match read_response(&mut c) {
            Ok((status, keep)) => {
                if (200..300).contains(&status) {
                    tally.ok.fetch_add(1, Ordering::SeqCst);
                } else {
                    tally.non_2xx.fetch_add(1, Ordering::SeqCst);
                }
                if keep {
                    conn = Some(c);
                }
            }
            Err(e) => tally.error(format!("read: {e}")),
        }
    }
}

/// Reads one response: its status and whether the connection stays open.
fn read_response(r: &mut BufReader<TcpStream>) -> io::Result<(u16, bool)> {
    let mut line = String::new();
    if r.read_line(&mut line)? == 0 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "connection closed before the answer",
        ));
    }
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| io::Error::other(format!("bad status line {line:?}")))?;
    let (mut len, mut keep) = (0usize, true);
    loop {
        line.clear();
        if r.read_line(&mut line)? == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed in the head",
            ));
        }
        let Some((name, value)) = line.trim_end().split_once(':') else {
            break;
        };
        match name.to_ascii_lowercase().as_str() {
            "content-length" => len = value.trim().parse().unwrap_or(0),
            "connection" => keep = !value.to_ascii_lowercase().contains("close"),
            _ => {}
        }
    }
    let mut body = vec![0; len];
    r.read_exact(&mut body)?;
    Ok((status, keep))
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The `rcluster` command's lines on stderr, from a reader thread.
fn lines(stderr: ChildStderr) -> Receiver<String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    rx
}

/// Waits for a line containing `what`; panics with what was seen after `within`.
fn wait_line(rx: &Receiver<String>, what: &str, within: Duration, seen: &mut Vec<String>) {
    let until = Instant::now() + within;
    loop {
        let left = until.saturating_duration_since(Instant::now());
        match rx.recv_timeout(left) {
            Ok(l) if l.contains(what) => {
                seen.push(l);
                return;
            }
            Ok(l) => seen.push(l),
            Err(_) => panic!(
                "no line with {what:?} within {within:?}; saw:\n{}",
                seen.join("\n")
            ),
        }
    }
}

struct Cli(Child);

impl Drop for Cli {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn signal(child: &Child, sig: libc::c_int) {
    // SAFETY: a signal to our own child, which has not been reaped yet.
    assert_eq!(unsafe { libc::kill(child.id() as i32, sig) }, 0);
}

#[test]
fn keep_alive_clients_of_the_rust_hello_worker_see_no_error_across_three_reloads() {
    hello_worker_under_keep_alive_load_across_reloads("rr");
}

/// In `shared` mode the worker accepts itself: a draining one must stop accepting before it
/// leaves, or a connection it accepts as it exits is lost.
#[test]
fn keep_alive_clients_of_the_rust_hello_worker_in_shared_mode_see_no_error_across_three_reloads() {
    hello_worker_under_keep_alive_load_across_reloads("shared");
}

fn hello_worker_under_keep_alive_load_across_reloads(dispatch: &str) {
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let runtime = RuntimeDir::new();
    let mut child = Command::new(bin_path("rcluster"))
        .env("XDG_RUNTIME_DIR", &runtime.0)
        .args([
            "run",
            "-w",
            "2",
            "--ready",
            "explicit",
            "--dispatch",
            dispatch,
        ])
        .args(["--listen", &listen, "--"])
        .arg(bin_path("hello-worker"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("rcluster runs");
    let rx = lines(child.stderr.take().unwrap());
    let cli = Cli(child);
    let mut seen = Vec::new();
    for _ in 0..2 {
        wait_line(&rx, ": ready", Duration::from_secs(10), &mut seen);
    }

    let (stop, tally) = (Arc::new(AtomicBool::new(false)), Arc::new(Tally::default()));
    let clients = start_clients(listen.parse().unwrap(), &stop, &tally);
    std::thread::sleep(Duration::from_millis(500));
    for g in 2..2 + RELOADS {
        let before = tally.ok.load(Ordering::SeqCst);
        signal(&cli.0, libc::SIGHUP);
        let done = format!("reload to gen {g} done");
        wait_line(&rx, &done, Duration::from_secs(15), &mut seen);
        // Requests keep flowing between reloads, so each reload happens under load.
        let until = Instant::now() + Duration::from_secs(5);
        while tally.ok.load(Ordering::SeqCst) < before + 2000 && Instant::now() < until {
            std::thread::sleep(Duration::from_millis(20));
        }
        std::thread::sleep(Duration::from_millis(300));
    }
    stop.store(true, Ordering::SeqCst);
    for c in clients {
        c.join().unwrap();
    }
    signal(&cli.0, libc::SIGTERM);
    // Every replaced worker finished its drain and exited 0, before any SIGTERM or SIGKILL.
    let exits: Vec<&String> = seen.iter().filter(|l| l.contains("exited")).collect();
    assert_eq!(exits.len(), 2 * RELOADS as usize, "exits: {exits:#?}");
    assert!(
        exits.iter().all(|l| l.contains("code 0, reason requested")),
        "a worker did not drain cleanly: {exits:#?}"
    );

    let (ok, errors, non_2xx) = (
        tally.ok.load(Ordering::SeqCst),
        tally.socket_errors.load(Ordering::SeqCst),
        tally.non_2xx.load(Ordering::SeqCst),
    );
    let samples = tally.samples.lock().unwrap().clone();
    assert!(ok > 1000, "only {ok} answers: the load did not run");
    assert_eq!(
        (errors, non_2xx),
        (0, 0),
        "{ok} answers, {errors} socket errors, {non_2xx} non-2xx; first errors: {samples:#?}"
    );
}
