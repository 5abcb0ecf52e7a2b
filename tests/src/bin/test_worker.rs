//! A worker with scriptable misbehaviour, for the end-to-end tests.
//!
//! `rcluster-test-worker MODE [ARGS]`:
//! - `echo`: ready, echoes every message, exits on disconnect; some messages are commands:
//!   `!malformed` (write a frame of unknown kind), `!too-big` (try to send max_message + 1
//!   bytes and answer with the error), `!exit N` (exit with code N)
//! - `gen-fail`: like echo in generation 1; never ready in later generations
//! - `exit MS CODE`: ready, exits with CODE after MS milliseconds
//! - `never-ready`: says hello, never ready
//! - `ignore-term`: ready, ignores SIGTERM, sleeps
//! - `heartbeat MS`: ready, heartbeats every 50 ms for MS milliseconds, then hangs
//! - `malformed`: ready, then writes a frame of unknown kind
//! - `oversized`: ready, then writes a header announcing a 1 GiB message
//! - `count`: counts messages; a message "end" is answered with the count
//! - `env`: sends "id generation pid" and its RCLUSTER_* variables, then behaves like echo
//! - `serve MS`: like echo; every connection gets, after MS milliseconds, a one-line HTTP
//!   response whose body is "ID PID MAXCONC LISTENER" (MAXCONC: most connections it ever held
//!   at once); then the connection is closed and reported closed
//!
//! In every mode that echoes, dispatched connections are served as in `serve 0`.

use std::io::{Read, Write};
use std::os::fd::FromRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcluster_core::{Connection, Worker, WorkerEvent};

static OPEN: AtomicUsize = AtomicUsize::new(0);
static MAX_OPEN: AtomicUsize = AtomicUsize::new(0);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("echo");
    let num = |i: usize| args.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    let w = Arc::new(
        Worker::from_env()
            .expect("worker handshake")
            .expect("run under rcluster"),
    );
    match mode {
        "never-ready" => sleep_forever(),
        "gen-fail" if w.generation() > 1 => sleep_forever(),
        "ignore-term" => {
            // SAFETY: ignoring a signal is async-signal-safe and process-wide by intent.
            unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
            w.ready().unwrap();
            sleep_forever()
        }
        _ => w.ready().unwrap(),
    }
    match mode {
        "exit" => {
            std::thread::sleep(Duration::from_millis(num(1)));
            std::process::exit(num(2) as i32);
        }
        "heartbeat" => {
            let until = Instant::now() + Duration::from_millis(num(1));
            while Instant::now() < until {
                w.heartbeat().unwrap();
                std::thread::sleep(Duration::from_millis(50));
            }
            sleep_forever()
        }
        "malformed" => raw_write(&[1, 0, 0, 0, 200, 0, 0, 0, 0]),
        "oversized" => raw_write(&[0, 0, 0, 64, 4, 0, 0, 0]),
        "count" => count(&w),
        "serve" => serve(&w, Duration::from_millis(num(1))),
        "env" => {
            let vars: Vec<String> = std::env::vars()
                .filter(|(k, _)| k.starts_with("RCLUSTER_"))
                .map(|(k, v)| format!("{k}={v}"))
                .collect();
            let fds = std::fs::read_dir("/proc/self/fd")
                .map(|d| d.count())
                .unwrap_or(0);
            let text = format!(
                "{} {} {} fds={} {}",
                w.id(),
                w.generation(),
                std::process::id(),
                fds,
                vars.join(" ")
            );
            w.send(text.as_bytes()).unwrap();
            echo(&w)
        }
        _ => echo(&w),
    }
}

fn echo(w: &Arc<Worker>) {
    serve(w, Duration::ZERO)
}

fn serve(w: &Arc<Worker>, delay: Duration) {
    loop {
        match w.next_event(None).unwrap() {
            Some(WorkerEvent::Connection(c)) => {
                let w = Arc::clone(w);
                std::thread::spawn(move || answer(&w, c, delay));
            }
            Some(WorkerEvent::Message(m)) if m.starts_with(b"!") => command(w, &m),
            Some(WorkerEvent::Message(m)) => w.send(&m).unwrap(),
            Some(WorkerEvent::Disconnect) | Some(WorkerEvent::PrimaryGone) => std::process::exit(0),
            None => {}
        }
    }
}

fn answer(w: &Worker, c: Connection, delay: Duration) {
    let open = OPEN.fetch_add(1, Ordering::SeqCst) + 1;
    MAX_OPEN.fetch_max(open, Ordering::SeqCst);
    let mut stream = std::net::TcpStream::from(c.fd);
    let mut request = Vec::new();
    let mut buf = [0u8; 1024];
    while !request.windows(4).any(|w| w == b"\r\n\r\n") {
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => request.extend_from_slice(&buf[..n]),
        }
    }
    std::thread::sleep(delay);
    let body = format!(
        "{} {} {} {}",
        w.id(),
        std::process::id(),
        MAX_OPEN.load(Ordering::SeqCst),
        c.listener
    );
    let reply = format!(
        "HTTP/1.1 200 OK\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.write_all(reply.as_bytes());
    drop(stream);
    OPEN.fetch_sub(1, Ordering::SeqCst);
    let _ = w.connection_closed(c.id);
}

fn command(w: &Worker, cmd: &[u8]) {
    let cmd = String::from_utf8_lossy(cmd);
    match cmd.split_whitespace().collect::<Vec<_>>()[..] {
        ["!malformed"] => raw_write(&[1, 0, 0, 0, 200, 0, 0, 0, 0]),
        ["!too-big"] => {
            let err = w.send(&vec![0; w.max_message() + 1]).unwrap_err();
            w.send(err.to_string().as_bytes()).unwrap();
        }
        ["!exit", code] => std::process::exit(code.parse().unwrap()),
        _ => w.send(format!("unknown command {cmd}").as_bytes()).unwrap(),
    }
}

fn count(w: &Worker) {
    let mut n: u64 = 0;
    loop {
        match w.next_event(None).unwrap() {
            Some(WorkerEvent::Message(m)) if m == b"end" => {
                w.send(n.to_string().as_bytes()).unwrap()
            }
            Some(WorkerEvent::Message(_)) => n += 1,
            Some(_) => std::process::exit(0),
            None => {}
        }
    }
}

fn raw_write(bytes: &[u8]) -> ! {
    let fd: i32 = std::env::var("RCLUSTER_IPC_FD").unwrap().parse().unwrap();
    // SAFETY: the IPC fd stays open for the life of the process; ManuallyDrop keeps it so.
    let mut f = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(fd) });
    f.write_all(bytes).unwrap();
    sleep_forever()
}

fn sleep_forever() -> ! {
    loop {
        std::thread::sleep(Duration::from_secs(3600));
    }
}
