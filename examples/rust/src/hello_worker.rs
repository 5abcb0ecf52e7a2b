//! A tiny HTTP/1.1 server written with the rcluster worker library.
//!
//! Where its connections come from:
//! - under rcluster with a dispatched listener (`--listen` of `rcluster run`): the primary
//!   accepts and hands each connection over IPC;
//! - under rcluster in `shared` mode: it inherits the listening socket (`LISTEN_FDS`, the
//!   systemd convention) and accepts itself;
//! - under rcluster with a listener the kernel turns (`rr` where the primary may load the
//!   turns' program, `RCLUSTER_TURNS`): it asks the primary for its own socket of the turn and
//!   accepts itself, counting the connections it has in hand so that the kernel passes over it
//!   while it is busier than the next worker;
//! - alone, or given `--listen` itself: it binds that address with SO_REUSEPORT.
//!
//! Under rcluster it says ready, sends heartbeats, and on a disconnect request drains: the
//! request in hand is finished, the next request on a kept-alive connection is answered with
//! `Connection: close`, connections that stay quiet are closed, and it exits 0.

use std::collections::HashMap;
use std::io::{self, BufRead, BufReader, Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rcluster_core::{listener_has_queued, Connection, TurnCounter, Worker, WorkerEvent};

mod listen;
use listen::{bind_reuseport, inherited_listener, turned_listener};

const USAGE: &str = "usage: hello-worker [--listen ADDR]   (default 127.0.0.1:8080)";
/// Longest wait for in-flight requests after the primary asks this worker to leave.
const DRAIN_MAX: Duration = Duration::from_secs(3);
/// An idle keep-alive connection is closed after this, so it does not pin a thread forever.
const IDLE_TIMEOUT: Duration = Duration::from_secs(30);
/// While draining, a kept-alive connection with no request for this long is closed. Closing
/// one sooner races its client, which may be sending its next request at that very moment
/// and would see the connection fail instead of an answer with `Connection: close`.
const IDLE_GRACE: Duration = Duration::from_millis(500);
const MAX_LINE: u64 = 8192;

/// Connections being served, so that a drain can close the idle keep-alive ones.
struct Open {
    draining: AtomicBool,
    /// The clock of the `idle` marks.
    epoch: Instant,
    next_key: AtomicU64,
    conns: Mutex<HashMap<u64, (TcpStream, Arc<AtomicU64>)>>,
    /// The thread of the accept loop, when this worker accepts itself, and whether that loop
    /// has stopped: a drain interrupts its blocking accept and waits for it (see `drain`).
    accepter: Mutex<Option<libc::pthread_t>>,
    accept_stopped: AtomicBool,
    /// The listener whose turn socket this worker accepts from: the primary is told when it
    /// no longer does, and may give the socket to the next worker.
    turned: Mutex<Option<String>>,
}

/// Busy: a request is being read or answered. Otherwise the connection waits for a next
/// request since that many milliseconds after `Open::epoch`, plus one.
const BUSY: u64 = 0;

impl Open {
    fn new() -> Open {
        Open {
            draining: AtomicBool::new(false),
            epoch: Instant::now(),
            next_key: AtomicU64::new(0),
            conns: Mutex::new(HashMap::new()),
            accepter: Mutex::new(None),
            accept_stopped: AtomicBool::new(false),
            turned: Mutex::new(None),
        }
    }

    fn now(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64 + 1
    }

    /// Registers a connection; its key and its idle mark.
    fn add(&self, stream: &TcpStream) -> (u64, Arc<AtomicU64>) {
        let key = self.next_key.fetch_add(1, Ordering::SeqCst);
        // A new connection waits for its first request: as quiet as one between requests.
        let idle = Arc::new(AtomicU64::new(self.now()));
        if let Ok(copy) = stream.try_clone() {
            self.conns
                .lock()
                .unwrap()
                .insert(key, (copy, Arc::clone(&idle)));
        }
        (key, idle)
    }

    fn remove(&self, key: u64) {
        self.conns.lock().unwrap().remove(&key);
    }
}

fn main() {
    let (addr, explicit) = parse_args().unwrap_or_else(|msg| fail(&msg));
    let worker = Worker::from_env()
        .unwrap_or_else(|e| fail(&e.to_string()))
        .map(Arc::new);
    // Under rcluster without an inherited socket or a turn of its own, connections are
    // dispatched by the primary, which holds the address: binding it here too would fail.
    let open = Arc::new(Open::new());
    let listener = match (inherited_listener(), &worker) {
        (Some(l), _) => Some(Own::shared(l)),
        (None, Some(w)) => turned_listener(w).map(|t| {
            *open.turned.lock().unwrap() = Some(t.name);
            Own::turned(t.listener, t.counter)
        }),
        (None, None) => None,
    };
    let listener = match listener {
        Some(l) => Some(l),
        None if worker.is_some() && !explicit => None,
        None => {
            Some(Own::shared(bind_reuseport(addr).unwrap_or_else(|e| {
                fail(&format!("cannot listen on {addr}: {e}"))
            })))
        }
    };
    let id = worker.as_ref().map_or(0, |w| w.id());
    let body: Arc<str> = format!("Hello from worker {id} (pid {})\n", std::process::id()).into();
    if let Some(w) = &worker {
        w.ready().unwrap_or_else(|e| fail(&e.to_string()));
        let hb = Arc::clone(w);
        let every = w.heartbeat_interval().unwrap_or(Duration::from_secs(1));
        std::thread::spawn(move || {
            while hb.heartbeat().is_ok() {
                std::thread::sleep(every);
            }
        });
    }
    match listener {
        Some(listener) => {
            if let Some(w) = worker {
                let (body, open) = (Arc::clone(&body), Arc::clone(&open));
                std::thread::spawn(move || watch_primary(&w, &open, &body));
            }
            accept_loop(listener, &open, &body)
        }
        None => watch_primary(&worker.expect("checked above"), &open, &body),
    }
}

/// The socket this worker accepts from itself.
struct Own {
    listener: TcpListener,
    /// Whether it is this worker's own socket of a turn (non-blocking, waited for in poll).
    turn: bool,
    /// A turn socket's count of the connections in hand (one off as each closes), when the
    /// primary gave one.
    counter: Option<Arc<TurnCounter>>,
}

impl Own {
    /// A socket every worker accepts from, with a blocking accept: the kernel wakes one waiting
    /// worker per connection, the one that has waited longest.
    fn shared(listener: TcpListener) -> Own {
        Own {
            listener,
            turn: false,
            counter: None,
        }
    }

    /// This worker's own socket of a turn. The primary holds it too and accepts from it, non-
    /// blocking, once this worker has gone: it stays non-blocking, and the loop waits in poll.
    fn turned(listener: TcpListener, counter: Option<TurnCounter>) -> Own {
        // The flag is the open socket's, shared with the primary, which wants it set too.
        if let Err(e) = listener.set_nonblocking(true) {
            fail(&format!("the turn's listening socket: {e}"));
        }
        Own {
            listener,
            turn: true,
            counter: counter.map(Arc::new),
        }
    }

    /// The next connection; None when interrupted (a drain) or when nothing waits after all.
    /// From a turn socket it waits in poll when nothing waits, unless `now` (then it only
    /// looks). Under load the queue is seldom empty: one accept per connection, no poll.
    fn accept(&self, now: bool) -> Option<TcpStream> {
        let fd = self.listener.as_raw_fd();
        let mut polled = now || !self.turn;
        loop {
            match rcluster_core::accept_connection(fd, false) {
                Ok(Some(c)) => return Some(TcpStream::from(c)),
                Ok(None) if !polled => {
                    polled = true;
                    let mut p = libc::pollfd {
                        fd,
                        events: libc::POLLIN,
                        revents: 0,
                    };
                    // SAFETY: one live pollfd. Interrupted (a drain): back to the caller.
                    if unsafe { libc::poll(&mut p, 1, -1) } < 0 {
                        return None;
                    }
                }
                // Nothing after all, or interrupted (a drain): back to the caller.
                Ok(None) => return None,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => return None,
                // Out of descriptors: back off.
                Err(_) if !now => {
                    std::thread::sleep(Duration::from_millis(10));
                    return None;
                }
                Err(_) => return None,
            }
        }
    }

    /// Takes what still waits in a turn socket, at a drain. The primary has taken this worker
    /// out of the turn before asking it to leave, and accepts from no socket while it stops:
    /// a connection left here would be reset. The queue is looked at twice, a millisecond
    /// apart, for a connection the kernel placed as the turn changed.
    fn take_the_rest(&self, open: &Arc<Open>, body: &Arc<str>) {
        if !self.turn {
            return;
        }
        for _ in 0..2 {
            // Bounded: at most what the accept queue holds, and a few interruptions.
            for _ in 0..4096 {
                match self.accept(true) {
                    Some(stream) => self.serve_apart(stream, open, body),
                    None if listener_has_queued(self.listener.as_raw_fd()) => continue,
                    None => break,
                }
            }
            std::thread::sleep(Duration::from_millis(1));
        }
    }

    /// Serves `stream` on its own thread; a connection of a turn socket counts as in hand until
    /// it closes.
    fn serve_apart(&self, stream: TcpStream, open: &Arc<Open>, body: &Arc<str>) {
        // Registered before the loop can see the drain: a drain that waits for this loop to
        // stop then waits for this connection too.
        let (key, idle) = open.add(&stream);
        // Counted until it closes, not only while it waits to be accepted: a kept-alive
        // connection is load too, and counting only the queue let one worker take most of
        // a burst of new connections while the other was not running.
        let (open, body, counter) = (Arc::clone(open), Arc::clone(body), self.counter.clone());
        std::thread::spawn(move || {
            serve(stream, &body, &open, &idle);
            open.remove(key);
            if let Some(c) = counter {
                c.done();
            }
        });
    }
}

/// Accepts until the worker drains. The accept (or the poll before it) is blocking, and the
/// listening socket may be shared with other processes (so it cannot be shut down from here):
/// a drain interrupts it with SIGUSR1, whose handler does nothing but make the call fail with
/// EINTR (std's accept would retry it).
fn accept_loop(own: Own, open: &Arc<Open>, body: &Arc<str>) -> ! {
    interrupt_on_sigusr1();
    // SAFETY: pthread_self has no preconditions.
    *open.accepter.lock().unwrap() = Some(unsafe { libc::pthread_self() });
    while !open.draining.load(Ordering::SeqCst) {
        if let Some(stream) = own.accept(false) {
            own.serve_apart(stream, open, body);
        }
    }
    own.take_the_rest(open, body);
    open.accept_stopped.store(true, Ordering::SeqCst);
    // The drain ends the process once the connections in hand are done.
    loop {
        std::thread::park();
    }
}

extern "C" fn on_sigusr1(_: libc::c_int) {}

fn interrupt_on_sigusr1() {
    // SAFETY: a handler that does nothing, installed without SA_RESTART so that it interrupts
    // a blocking accept; `act` is fully initialised (zeroed, then the fields that matter).
    unsafe {
        let mut act: libc::sigaction = std::mem::zeroed();
        act.sa_sigaction = on_sigusr1 as extern "C" fn(libc::c_int) as libc::sighandler_t;
        libc::sigemptyset(&mut act.sa_mask);
        libc::sigaction(libc::SIGUSR1, &act, std::ptr::null_mut());
    }
}

/// Stops the accept loop, if this worker has one, and waits until it has (or `until`).
fn stop_accepting(open: &Open, until: Instant) {
    let Some(thread) = *open.accepter.lock().unwrap() else {
        return;
    };
    // Again and again: a signal that comes just before the thread enters accept interrupts
    // nothing.
    while !open.accept_stopped.load(Ordering::SeqCst) && Instant::now() < until {
        // SAFETY: the accept thread never ends, so its id stays valid.
        unsafe { libc::pthread_kill(thread, libc::SIGUSR1) };
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn fail(msg: &str) -> ! {
    eprintln!("hello-worker: {msg}");
    std::process::exit(1)
}

/// The address to bind, and whether it was given (rather than the default).
fn parse_args() -> Result<(SocketAddr, bool), String> {
    let mut addr = "127.0.0.1:8080".to_string();
    let mut explicit = false;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--listen" => {
                addr = args.next().ok_or(USAGE)?;
                explicit = true;
            }
            "-h" | "--help" => {
                println!("{USAGE}");
                std::process::exit(0);
            }
            _ => match a.strip_prefix("--listen=") {
                Some(v) => {
                    addr = v.to_string();
                    explicit = true;
                }
                None => return Err(format!("unexpected argument {a:?}\n{USAGE}")),
            },
        }
    }
    let addr = addr
        .parse()
        .map_err(|_| format!("--listen: {addr:?} is not an address like 127.0.0.1:8080"))?;
    Ok((addr, explicit))
}

fn watch_primary(w: &Arc<Worker>, open: &Arc<Open>, body: &Arc<str>) -> ! {
    let mut batch = Vec::new();
    loop {
        // Everything waiting, in one go: its connections are acknowledged in one write.
        if let Err(e) = w.next_events(None, 64, &mut batch) {
            fail(&e.to_string());
        }
        for ev in batch.drain(..) {
            match ev {
                WorkerEvent::Connection(c) => take(w, open, c, body),
                // Tasks come from pools only (see `pool.rs`).
                WorkerEvent::Message { .. }
                | WorkerEvent::Task(_)
                | WorkerEvent::TaskCancelled(_) => {}
                WorkerEvent::Disconnect => drain(w, open),
                WorkerEvent::PrimaryGone => std::process::exit(0),
            }
        }
    }
}

/// Serves a dispatched connection on its own thread and reports it closed at the end.
fn take(w: &Arc<Worker>, open: &Arc<Open>, c: Connection, body: &Arc<str>) {
    let stream = TcpStream::from(c.fd);
    let (key, idle) = open.add(&stream);
    let (w, open, body) = (Arc::clone(w), Arc::clone(open), Arc::clone(body));
    std::thread::spawn(move || {
        serve(stream, &body, &open, &idle);
        open.remove(key);
        let _ = w.connection_closed(c.id);
    });
}

/// No new connections come after a disconnect request (and a worker that accepts itself stops
/// accepting before it counts what is left). Every connection ends after its next
/// answer (sent with `Connection: close`); one that stays without a request for
/// `IDLE_GRACE` is closed; whatever is left at `DRAIN_MAX` is cut when the process exits.
fn drain(w: &Worker, open: &Open) -> ! {
    open.draining.store(true, Ordering::SeqCst);
    let until = Instant::now() + DRAIN_MAX;
    stop_accepting(open, until);
    // The accept loop took what waited in this worker's turn socket before it stopped (the
    // primary took this worker out of the turn first). The primary may give the socket to the
    // next worker now.
    if let Some(name) = open.turned.lock().unwrap().take() {
        let _ = w.unlisten(&name);
    }
    let grace = IDLE_GRACE.as_millis() as u64;
    while Instant::now() < until {
        let conns = open.conns.lock().unwrap();
        if conns.is_empty() {
            break;
        }
        let now = open.now();
        for (stream, idle) in conns.values() {
            let since = idle.load(Ordering::SeqCst);
            if since != BUSY && now.saturating_sub(since) >= grace {
                // Wakes the thread blocked reading it, which then closes the connection.
                let _ = stream.shutdown(Shutdown::Both);
            }
        }
        drop(conns);
        std::thread::sleep(Duration::from_millis(5));
    }
    std::process::exit(0)
}

/// Answers requests until the client closes, asks to close, or the worker drains. `idle`
/// marks since when a kept-alive connection waits for its next request (`BUSY` otherwise).
fn serve(stream: TcpStream, body: &str, open: &Open, idle: &AtomicU64) {
    let _ = stream.set_read_timeout(Some(IDLE_TIMEOUT));
    let Ok(read_half) = stream.try_clone() else {
        return;
    };
    let mut reader = BufReader::new(read_half);
    let mut out = stream;
    while let Ok(Some(asked_close)) = read_request(&mut reader, idle) {
        let close = asked_close || open.draining.load(Ordering::SeqCst);
        let connection = if close { "close" } else { "keep-alive" };
        let head = format!(
            "HTTP/1.1 200 OK\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: {}\r\nConnection: {connection}\r\n\r\n",
            body.len()
        );
        if out.write_all(format!("{head}{body}").as_bytes()).is_err() {
            return;
        }
        if close {
            // The FIN goes out now even if the primary still holds its copy of the socket
            // (it lets go once it has read the acknowledgement).
            let _ = out.shutdown(Shutdown::Write);
            return;
        }
        idle.store(open.now(), Ordering::SeqCst);
    }
}

/// Reads one request and discards its body, marking the connection busy from its first
/// byte. Some(true) when the connection should close after the response; None at end of
/// stream.
fn read_request(r: &mut BufReader<TcpStream>, idle: &AtomicU64) -> io::Result<Option<bool>> {
    if r.fill_buf()?.is_empty() {
        return Ok(None);
    }
    idle.store(BUSY, Ordering::SeqCst);
    let mut line = String::new();
    while line.trim().is_empty() {
        line.clear();
        if r.by_ref().take(MAX_LINE).read_line(&mut line)? == 0 {
            return Ok(None);
        }
    }
    let mut close = line.trim_end().ends_with("HTTP/1.0");
    let mut body_len = 0u64;
    loop {
        line.clear();
        if r.by_ref().take(MAX_LINE).read_line(&mut line)? == 0 {
            return Ok(None);
        }
        let Some((name, value)) = line.trim_end().split_once(':') else {
            break;
        };
        let value = value.trim().to_ascii_lowercase();
        match name.to_ascii_lowercase().as_str() {
            "connection" => {
                close = value.contains("close") || (close && !value.contains("keep-alive"))
            }
            "content-length" => body_len = value.parse().unwrap_or(0),
            _ => {}
        }
    }
    io::copy(&mut r.by_ref().take(body_len), &mut io::sink())?;
    Ok(Some(close))
}
