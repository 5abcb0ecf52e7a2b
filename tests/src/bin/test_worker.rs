//! A worker with scriptable misbehaviour, for the end-to-end tests.
//!
//! `rcluster-test-worker MODE [ARGS]`:
//! - `echo`: ready, echoes every message, exits on disconnect; some messages are commands:
//!   `!malformed` (write a frame of unknown kind), `!too-big` (try to send max_message + 1
//!   bytes and answer with the error), `!exit N` (exit with code N)
//! - `echo-beat`: like echo, and heartbeats every 50 ms from a thread of its own
//! - `gen-fail`: like echo in generation 1; never ready in later generations
//! - `exit MS CODE`: ready, exits with CODE after MS milliseconds
//! - `never-ready`: says hello, never ready
//! - `ignore-term`: ready, ignores SIGTERM, sleeps
//! - `heartbeat MS`: ready, heartbeats every 50 ms for MS milliseconds, then hangs
//! - `malformed`: ready, then writes a frame of unknown kind
//! - `oversized`: ready, then writes a header announcing a 1 GiB message
//! - `flood MS [SLOT]`: ready, sends the messages "m0", "m1", ... without pause for MS
//!   milliseconds (blocking when the primary does not read), then "flood-done N" (N: how many
//!   it sent), then behaves like echo; with SLOT, only that slot floods, the others echo
//! - `count`: counts messages; a message "end" is answered with the count
//! - `env`: sends "id generation pid" and its RCLUSTER_* variables, then behaves like echo
//! - `serve MS`: like echo; every connection gets, after MS milliseconds, a one-line HTTP
//!   response whose body is "ID PID MAXCONC LISTENER" (MAXCONC: most connections it ever held
//!   at once); then the connection is closed and reported closed
//! - `inline US`: like `serve`, but every connection is served on the one thread that reads
//!   the IPC socket, taking US microseconds of work each: a single-threaded server (a Node
//!   worker), which reads its next handoffs only once it has served the connections before
//! - `drain MS`: like `serve MS`, but on disconnect it finishes the connections it holds before
//!   exiting, as a real server drains (plain `serve` exits at once)
//! - `leak KB MS`: like `drain MS`, and every connection leaves KB kilobytes allocated and
//!   written (resident) for the life of the worker: memory that grows with load
//! - `report MS`: like `serve MS`, and sends the message "conn PEER" for every connection it
//!   gets, right after the (automatic) acknowledgement
//! - `crash-on-connection ID`: the worker with slot ID reads its IPC socket raw and exits with
//!   code 3 at the first connection handed to it, without acknowledging it; other slots serve
//!   as in `serve 0`
//!
//! - `listen ADDR MODE [STALL]`: asks the primary for a listener on ADDR with dispatch MODE,
//!   sends "listening NAME ADDR" (or "listen-error MESSAGE"), then serves like `serve 0`; when
//!   the primary handed it a listening socket (shared mode, or round-robin turned by the
//!   kernel) the message ends in " own-socket" and it accepts on that socket itself, unless
//!   its slot is STALL (a worker too busy to accept). The message `!unlisten NAME` makes it
//!   tell the primary it stopped listening, answered by "unlistened". On disconnect it
//!   accepts what is still queued on its own socket and finishes every connection it holds
//!   before exiting, as a server that drains does
//! - `deaf-slot ID`: the worker with slot ID says ready and then never reads its IPC socket
//!   again (a hung event loop); other slots serve as in `serve 0`
//!
//! - `raw-first ID HEX`: the worker with slot ID writes the bytes HEX (hexadecimal) on its IPC
//!   socket before any hello, then sleeps; other slots behave like `echo`
//!
//! Commands that break the protocol on purpose (any mode that echoes): `!raw HEX` writes the
//! bytes HEX on the IPC socket behind the library's back; `!raw-fds N HEX` does so with N
//! copies of stdin attached (SCM_RIGHTS, one `sendmsg`); `!raw-segv HEX` writes them, then
//! dies of SIGSEGV (a crash in the middle of a write); `!raw-exit HEX` writes them, then
//! exits with code 0 (a worker that dies in the middle of a frame); `!from-env-again` calls
//! `Worker::from_env` a second time and answers with what it returned.
//!
//! `!full` makes it give back every connection it is handed (a server at its limit), answered
//! by "full"; `!room NAME` ends that and tells the primary it has room for listener NAME,
//! answered by "room N" (N: the connections it gave back so far); `!give-back ID` gives back a connection the primary never handed over
//! (a copy of stdin, as connection ID), answered by "gave back"; `!lie` makes it give back a
//! copy of stdin in the name of every connection it is handed, answered by "lying".
//!
//! In every mode that echoes, dispatched connections are served as in `serve 0`.

use std::io::{Read, Write};
use std::os::fd::{AsFd, FromRawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rcluster_core::{Connection, Worker, WorkerEvent};

static OPEN: AtomicUsize = AtomicUsize::new(0);
static MAX_OPEN: AtomicUsize = AtomicUsize::new(0);
/// Kilobytes each connection leaves allocated (`leak` mode).
static LEAK_KB: AtomicUsize = AtomicUsize::new(0);
/// Gives back every connection it is handed, as a server at its limit (`!full`, `!room`).
static FULL: AtomicBool = AtomicBool::new(false);
/// Gives back a copy of stdin in the name of every connection it is handed (`!lie`).
static LIE: AtomicBool = AtomicBool::new(false);
/// Connections given back so far.
static GAVE_BACK: AtomicUsize = AtomicUsize::new(0);

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("echo");
    let num = |i: usize| args.get(i).and_then(|s| s.parse::<u64>().ok()).unwrap_or(0);
    if mode == "raw-first" && std::env::var("RCLUSTER_WORKER_ID").ok() == args.get(1).cloned() {
        raw_write(&unhex(&args[2]));
    }
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
        "flood" if args.get(2).is_none_or(|s| s.parse() == Ok(w.id())) => {
            flood(&w, Duration::from_millis(num(1)))
        }
        "serve" => serve(&w, Duration::from_millis(num(1))),
        "inline" => inline(&w, Duration::from_micros(num(1))),
        // `listen ADDR MODE [STALLED_ID]`; `listen-counting`: asks with `listen_counting`, and
        // in `shared` mode counts each connection it takes in the share map; `listen-lying`:
        // as that, and worker 1 then writes i64::MAX and 0 in turn as its count;
        // `listen-repeat`: as `listen-counting`, after asking REPEATED_LISTENS times first.
        "listen" | "listen-counting" | "listen-lying" | "listen-repeat" => {
            if args[0] == "listen-lying" && w.id() == 1 {
                LYING.store(true, Ordering::SeqCst);
            }
            if args[0] == "listen-repeat" {
                // Asks again and again, as a worker in a loop would: it stays one member of
                // the share map, whatever the primary has to answer.
                let mode: rcluster_core::Dispatch = args[2].parse().unwrap();
                let members: std::collections::BTreeSet<u32> = (0..REPEATED_LISTENS)
                    .filter_map(|_| w.listen_counting(&args[1], mode).unwrap().counter)
                    .map(|c| c.member())
                    .collect();
                w.send(format!("members {members:?}").as_bytes()).unwrap();
            }
            let mode: rcluster_core::Dispatch = args[2].parse().unwrap();
            let stalled = args.get(3).is_some_and(|s| s.parse() == Ok(w.id()));
            let asked = match args[0].as_str() {
                "listen" => w.listen(&args[1], mode),
                _ => w.listen_counting(&args[1], mode),
            };
            match asked {
                Ok(mut l) => {
                    if let Some(c) = l.counter.take() {
                        *SHARES.lock().unwrap() = Some(c);
                    }
                    let own = if l.fd.is_some() { " own-socket" } else { "" };
                    w.send(format!("listening {} {}{own}", l.name, l.addr).as_bytes())
                        .unwrap();
                    if let Some(fd) = l.fd.filter(|_| !stalled) {
                        let own = fd.try_clone().unwrap();
                        let (w2, name) = (Arc::clone(&w), l.name.clone());
                        std::thread::spawn(move || accept_shared(&w2, fd, &name));
                        return listen_and_drain(&w, own, &l.name);
                    }
                }
                Err(e) => w.send(format!("listen-error {e}").as_bytes()).unwrap(),
            }
            echo(&w)
        }
        "echo-beat" => {
            let beat = Arc::clone(&w);
            std::thread::spawn(move || loop {
                let _ = beat.heartbeat();
                std::thread::sleep(Duration::from_millis(50));
            });
            echo(&w)
        }
        "drain" => drain(&w, Duration::from_millis(num(1))),
        "leak" => {
            LEAK_KB.store(num(1) as usize, Ordering::SeqCst);
            drain(&w, Duration::from_millis(num(2)))
        }
        "report" => report(&w, Duration::from_millis(num(1))),
        "crash-on-connection" if u64::from(w.id()) == num(1) => crash_on_connection(&w),
        "deaf-slot" if u64::from(w.id()) == num(1) => sleep_forever(),
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
            Some(WorkerEvent::Message { data: m, .. }) if m.starts_with(b"!") => command(w, &m),
            Some(WorkerEvent::Message { data, content }) => w.send_as(content, &data).unwrap(),
            // Tasks come from pools only (see `rcluster-test-pool-worker`).
            Some(WorkerEvent::Task(_) | WorkerEvent::TaskCancelled(_)) => {}
            Some(WorkerEvent::Disconnect) | Some(WorkerEvent::PrimaryGone) => std::process::exit(0),
            None => {}
        }
    }
}

fn inline(w: &Arc<Worker>, work: Duration) {
    loop {
        match w.next_event(None).unwrap() {
            Some(WorkerEvent::Connection(c)) => answer(w, c, work),
            Some(WorkerEvent::Message { data: m, .. }) if m.starts_with(b"!") => command(w, &m),
            Some(WorkerEvent::Message { data, content }) => w.send_as(content, &data).unwrap(),
            Some(WorkerEvent::Task(_) | WorkerEvent::TaskCancelled(_)) => {}
            Some(WorkerEvent::Disconnect) | Some(WorkerEvent::PrimaryGone) => std::process::exit(0),
            None => {}
        }
    }
}

/// Connections received and not yet closed; counted before the serving thread starts, so that
/// a disconnect right after a handoff cannot miss one.
static PENDING: AtomicUsize = AtomicUsize::new(0);

fn drain(w: &Arc<Worker>, delay: Duration) {
    loop {
        match w.next_event(None).unwrap() {
            Some(WorkerEvent::Connection(c)) => {
                PENDING.fetch_add(1, Ordering::SeqCst);
                let w = Arc::clone(w);
                std::thread::spawn(move || {
                    answer(&w, c, delay);
                    PENDING.fetch_sub(1, Ordering::SeqCst);
                });
            }
            Some(WorkerEvent::Message { data: m, .. }) if m.starts_with(b"!") => command(w, &m),
            Some(WorkerEvent::Message { data, content }) => w.send_as(content, &data).unwrap(),
            // Tasks come from pools only (see `rcluster-test-pool-worker`).
            Some(WorkerEvent::Task(_) | WorkerEvent::TaskCancelled(_)) => {}
            Some(WorkerEvent::Disconnect) | Some(WorkerEvent::PrimaryGone) => {
                // Every connection handed before the disconnect came before it on the socket,
                // so PENDING already counts them all.
                while PENDING.load(Ordering::SeqCst) > 0 {
                    std::thread::sleep(Duration::from_millis(5));
                }
                std::process::exit(0)
            }
            None => {}
        }
    }
}

fn report(w: &Arc<Worker>, delay: Duration) {
    loop {
        match w.next_event(None).unwrap() {
            Some(WorkerEvent::Connection(c)) => {
                w.send(format!("conn {}", c.peer).as_bytes()).unwrap();
                let w = Arc::clone(w);
                std::thread::spawn(move || answer(&w, c, delay));
            }
            Some(WorkerEvent::Message { data: m, .. }) if m.starts_with(b"!") => command(w, &m),
            Some(WorkerEvent::Message { data, content }) => w.send_as(content, &data).unwrap(),
            // Tasks come from pools only (see `rcluster-test-pool-worker`).
            Some(WorkerEvent::Task(_) | WorkerEvent::TaskCancelled(_)) => {}
            Some(WorkerEvent::Disconnect) | Some(WorkerEvent::PrimaryGone) => std::process::exit(0),
            None => {}
        }
    }
}

/// Reads frames straight from the IPC socket, bypassing the library (which acknowledges every
/// connection before returning it), and dies at the first connection frame: the primary must
/// then give that connection to another worker.
fn crash_on_connection(w: &Worker) -> ! {
    const DISCONNECT: u8 = 5;
    const CONNECTION: u8 = 6;
    let fd = w.as_raw_fd();
    let mut pending: Vec<u8> = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: reads into a buffer of the given size. Plain recv drops any descriptor that
        // came along, so this process never holds the client connection.
        let n = unsafe { libc::recv(fd, buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n <= 0 {
            let e = std::io::Error::last_os_error();
            match e.kind() {
                _ if n == 0 => {}
                std::io::ErrorKind::Interrupted => continue,
                std::io::ErrorKind::WouldBlock => {
                    let mut p = libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one valid pollfd.
                    unsafe { libc::poll(&mut p, 1, -1) };
                    continue;
                }
                _ => {}
            }
            std::process::exit(0);
        }
        pending.extend_from_slice(&buf[..n as usize]);
        while pending.len() >= 8 {
            match pending[4] {
                CONNECTION => std::process::exit(3),
                DISCONNECT => std::process::exit(0),
                _ => {}
            }
            let len = u32::from_le_bytes(pending[..4].try_into().unwrap()) as usize;
            if pending.len() < 8 + len {
                break;
            }
            pending.drain(..8 + len);
        }
    }
}

/// Accepts on a listening socket this worker holds itself (shared mode).
fn accept_shared(w: &Arc<Worker>, fd: std::os::fd::OwnedFd, name: &str) {
    let listener = std::net::TcpListener::from(fd);
    listener.set_nonblocking(false).unwrap();
    for (n, stream) in listener.incoming().enumerate() {
        let Ok(stream) = stream else {
            // The socket stopped listening (the primary shut it down): nothing more comes.
            std::thread::sleep(Duration::from_millis(5));
            continue;
        };
        if let Some(c) = &*SHARES.lock().unwrap() {
            c.took();
            if LYING.load(Ordering::SeqCst) {
                lie_in_share_map(c.member());
            }
        }
        serve_own(w, stream, name, u64::MAX - n as u64);
    }
}

/// `listen-repeat`: how many times the worker asks for the listener before it serves.
const REPEATED_LISTENS: usize = 300;

/// `listen-lying`: this worker writes nonsense into the share map.
static LYING: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);

/// Writes i64::MAX and 0 in turn as member `member`'s count, through a mapping of its own of
/// the share map (found among this process's descriptors), as a worker that lies would: each
/// jump up is a count the primary has not seen.
fn lie_in_share_map(member: u32) {
    static HIGH: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    let value = if HIGH.fetch_xor(true, Ordering::SeqCst) {
        0
    } else {
        i64::MAX
    };
    for entry in std::fs::read_dir("/proc/self/fd").unwrap().flatten() {
        let target = std::fs::read_link(entry.path()).unwrap_or_default();
        if !target.to_string_lossy().contains("rcluster-shares") {
            continue;
        }
        let fd: i32 = entry.file_name().to_string_lossy().parse().unwrap();
        // SAFETY: maps the share map's first 24 KiB shared, writes one aligned word inside
        // it, and unmaps it.
        unsafe {
            let base = libc::mmap(
                std::ptr::null_mut(),
                24576,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_SHARED,
                fd,
                0,
            );
            assert_ne!(base, libc::MAP_FAILED);
            *(base as *mut i64).add(1 + 2 * member as usize) = value;
            libc::munmap(base, 24576);
        }
        return;
    }
    panic!("no share map among this process's descriptors");
}

/// The share map of a `shared` listener asked for with `listen-counting`.
static SHARES: std::sync::Mutex<Option<rcluster_core::TurnCounter>> = std::sync::Mutex::new(None);

fn serve_own(w: &Arc<Worker>, stream: std::net::TcpStream, name: &str, id: u64) {
    let c = Connection {
        id,
        fd: stream.into(),
        listener: name.to_string(),
        peer: String::new(),
    };
    PENDING.fetch_add(1, Ordering::SeqCst);
    let w = Arc::clone(w);
    std::thread::spawn(move || {
        answer(&w, c, Duration::ZERO);
        PENDING.fetch_sub(1, Ordering::SeqCst);
    });
}

/// Serves like `serve 0` while its own socket is served by `accept_shared`; on disconnect,
/// accepts what is left in the socket's queue (the primary keeps new connections out of it by
/// then) and finishes every connection before exiting.
fn listen_and_drain(w: &Arc<Worker>, own: std::os::fd::OwnedFd, name: &str) {
    loop {
        match w.next_event(None).unwrap() {
            Some(WorkerEvent::Connection(c)) => {
                PENDING.fetch_add(1, Ordering::SeqCst);
                let w = Arc::clone(w);
                std::thread::spawn(move || {
                    answer(&w, c, Duration::ZERO);
                    PENDING.fetch_sub(1, Ordering::SeqCst);
                });
            }
            Some(WorkerEvent::Message { data: m, .. }) if m.starts_with(b"!") => command(w, &m),
            Some(WorkerEvent::Message { data, content }) => w.send_as(content, &data).unwrap(),
            // Tasks come from pools only (see `rcluster-test-pool-worker`).
            Some(WorkerEvent::Task(_) | WorkerEvent::TaskCancelled(_)) => {}
            Some(WorkerEvent::Disconnect) | Some(WorkerEvent::PrimaryGone) => {
                let listener = std::net::TcpListener::from(own);
                let _ = listener.set_nonblocking(true);
                let mut n = 0;
                // Twice: the accepting thread may be between taking a connection and counting
                // it in PENDING, and a handshake under way at the stop may land just after.
                for _ in 0..2 {
                    while let Ok((stream, _)) = listener.accept() {
                        let _ = stream.set_nonblocking(false);
                        serve_own(w, stream, name, n);
                        n += 1;
                    }
                    std::thread::sleep(Duration::from_millis(50));
                }
                let until = Instant::now() + Duration::from_secs(5);
                while PENDING.load(Ordering::SeqCst) > 0 && Instant::now() < until {
                    std::thread::sleep(Duration::from_millis(5));
                }
                std::process::exit(0)
            }
            None => {}
        }
    }
}

fn answer(w: &Worker, c: Connection, delay: Duration) {
    if LIE.load(Ordering::SeqCst) {
        // Keeps the connection, and gives back a copy of stdin in its name.
        let fd = std::io::stdin().as_fd().try_clone_to_owned().unwrap();
        w.give_back(c.id, fd).unwrap();
        return;
    }
    if FULL.load(Ordering::SeqCst) {
        w.give_back(c.id, c.fd).unwrap();
        GAVE_BACK.fetch_add(1, Ordering::SeqCst);
        return;
    }
    let open = OPEN.fetch_add(1, Ordering::SeqCst) + 1;
    MAX_OPEN.fetch_max(open, Ordering::SeqCst);
    let leak = LEAK_KB.load(Ordering::SeqCst);
    if leak > 0 {
        // Written, so that the pages are resident, and never freed.
        std::mem::forget(vec![1u8; leak * 1024]);
    }
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
    let _ = stream.shutdown(std::net::Shutdown::Write);
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
        ["!unlisten", name] => {
            w.unlisten(name).unwrap();
            w.send(b"unlistened").unwrap();
        }
        ["!listen", name] => match w.listen(name, rcluster_core::Dispatch::RoundRobin) {
            Ok(l) => w
                .send(format!("listening {} {}", l.name, l.addr).as_bytes())
                .unwrap(),
            Err(e) => w.send(format!("listen-error {e}").as_bytes()).unwrap(),
        },
        ["!burst", n] => {
            let texts: Vec<String> = (0..n.parse().unwrap()).map(|i| format!("b{i}")).collect();
            let parts: Vec<&[u8]> = texts.iter().map(|t| t.as_bytes()).collect();
            w.send_many(&parts).unwrap();
            let big = vec![0; w.max_message() + 1];
            let err = w.send_many(&[b"never sent", &big]).unwrap_err();
            w.send(err.to_string().as_bytes()).unwrap();
        }
        ["!full"] => {
            FULL.store(true, Ordering::SeqCst);
            w.send(b"full").unwrap();
        }
        ["!room", name] => {
            FULL.store(false, Ordering::SeqCst);
            w.room(name).unwrap();
            let gave = GAVE_BACK.load(Ordering::SeqCst);
            w.send(format!("room {gave}").as_bytes()).unwrap();
        }
        ["!lie"] => {
            LIE.store(true, Ordering::SeqCst);
            w.send(b"lying").unwrap();
        }
        ["!give-back", id] => {
            // A connection the primary never handed over: a copy of stdin, given back as one.
            let fd = std::io::stdin().as_fd().try_clone_to_owned().unwrap();
            w.give_back(id.parse().unwrap(), fd).unwrap();
            w.send(b"gave back").unwrap();
        }
        ["!raw", hex] => raw_write(&unhex(hex)),
        ["!raw-fds", n, hex] => raw_write_fds(&unhex(hex), n.parse().unwrap()),
        ["!raw-exit", hex] => raw_write_then_exit(&unhex(hex)),
        ["!raw-segv", hex] => raw_write_then_segv(&unhex(hex)),
        ["!from-env-again"] => {
            let text = match Worker::from_env() {
                Ok(Some(_)) => "second worker".to_string(),
                Ok(None) => "not a worker".to_string(),
                Err(e) => format!("error: {e}"),
            };
            w.send(text.as_bytes()).unwrap();
        }
        _ => w.send(format!("unknown command {cmd}").as_bytes()).unwrap(),
    }
}

fn flood(w: &Arc<Worker>, period: Duration) {
    let until = Instant::now() + period;
    let mut n: u64 = 0;
    let send = |text: String| {
        if w.send(text.as_bytes()).is_err() {
            std::process::exit(0); // The primary is gone or stopping.
        }
    };
    while Instant::now() < until {
        for _ in 0..64 {
            send(format!("m{n}"));
            n += 1;
        }
    }
    send(format!("flood-done {n}"));
    echo(w)
}

// --- Raw writes that break the protocol on purpose (`raw-first`, `!raw*` commands). ---

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).unwrap())
        .collect()
}

fn ipc_fd() -> i32 {
    std::env::var("RCLUSTER_IPC_FD").unwrap().parse().unwrap()
}

/// A worker that crashes while it writes: half a frame, then SIGSEGV.
fn raw_write_then_segv(bytes: &[u8]) -> ! {
    // SAFETY: writes from a valid buffer of the given length to the IPC socket; raise has no
    // memory effects.
    unsafe {
        libc::write(ipc_fd(), bytes.as_ptr().cast(), bytes.len());
        // Rust's runtime handles SIGSEGV (stack overflow checks) and returns from a raised one.
        libc::signal(libc::SIGSEGV, libc::SIG_DFL);
        libc::raise(libc::SIGSEGV);
    }
    unreachable!("SIGSEGV ends the process")
}

fn raw_write_then_exit(bytes: &[u8]) -> ! {
    // SAFETY: writes from a valid buffer of the given length to the IPC socket.
    let n = unsafe { libc::write(ipc_fd(), bytes.as_ptr().cast(), bytes.len()) };
    assert_eq!(n, bytes.len() as isize);
    std::process::exit(0)
}

/// Writes `bytes` with `count` copies of stdin attached in one `sendmsg`: more than the
/// primary has room for in one read makes it see `MSG_CTRUNC`.
fn raw_write_fds(bytes: &[u8], count: usize) -> ! {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut _,
        iov_len: bytes.len(),
    };
    let data = (4 * count) as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space_len = unsafe { libc::CMSG_SPACE(data) } as usize;
    let mut space = vec![0u64; space_len.div_ceil(8)];
    // SAFETY: the control message is built inside `space`, which is aligned and as large as
    // CMSG_SPACE asks for `count` descriptors.
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = space.as_mut_ptr().cast();
        msg.msg_controllen = space_len as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(data) as _;
        let fds = libc::CMSG_DATA(cmsg).cast::<i32>();
        for i in 0..count {
            std::ptr::write_unaligned(fds.add(i), 0);
        }
        libc::sendmsg(ipc_fd(), &msg, 0)
    };
    assert_eq!(
        n,
        bytes.len() as isize,
        "{}",
        std::io::Error::last_os_error()
    );
    sleep_forever()
}

fn count(w: &Worker) {
    let mut n: u64 = 0;
    loop {
        match w.next_event(None).unwrap() {
            Some(WorkerEvent::Message { data, .. }) if data == b"end" => {
                w.send(n.to_string().as_bytes()).unwrap()
            }
            Some(WorkerEvent::Message { .. }) => n += 1,
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
