//! Connection dispatch with real clients: listeners bound by the primary, connections handed to
//! workers (round-robin, least-connections, sticky) or accepted by the workers themselves
//! (shared), through crashes, restarts, reloads and scaling.
//!
//! Clients are plain blocking sockets in threads, on loopback only, with bounded counts and a
//! timeout on every read and write. The test worker answers each connection with
//! "ID PID MAXCONC LISTENER" (see `tests/src/bin/test_worker.rs`).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::io;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::os::fd::FromRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rcluster_core::{
    Config, Dispatch, Error, Event, ExitReason, ListenAddr, Listener, ReadyOn, RestartMode,
    Supervisor, WorkerState,
};
use rcluster_tests::*;

const WAIT: Duration = Duration::from_secs(10);

fn loopback_listener(dispatch: Dispatch) -> Listener {
    Listener::new("web", "127.0.0.1:0".parse().unwrap(), dispatch)
}

/// Starts the cluster of `cfg`, whose listener is named "web"; returns once every worker is
/// ready, with the listener's actual address.
fn cluster(cfg: Config) -> (Supervisor, ListenAddr) {
    let workers = cfg.workers;
    let sup = Supervisor::start(cfg).unwrap();
    wait_ready(&sup, workers);
    let addr = listener_addr(&sup, "web");
    (sup, addr)
}

/// Test workers running `args` behind one loopback listener "web" on a port the system picks.
fn config(workers: usize, args: &[&str], dispatch: Dispatch) -> Config {
    let mut cfg = worker_config(workers, args);
    cfg.listeners = vec![loopback_listener(dispatch)];
    cfg
}

fn tcp(addr: &ListenAddr) -> SocketAddr {
    match addr {
        ListenAddr::Tcp(sa) => *sa,
        other => panic!("not a TCP address: {other}"),
    }
}

/// One request on a new TCP connection; also returns the client's port, which is how the
/// worker (and the primary) name the connection's peer.
fn request_with_port(addr: SocketAddr) -> (u16, io::Result<Reply>) {
    let stream = match TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT) {
        Ok(s) => s,
        Err(e) => return (0, Err(e)),
    };
    let port = stream.local_addr().map_or(0, |a| a.port());
    let result = (|| {
        stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
        stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
        Reply::parse(&http_exchange(&stream)?)
    })();
    (port, result)
}

/// A TCP connection from a chosen loopback source address (std cannot bind before connect).
fn connect_from(source: Ipv4Addr, to: SocketAddr) -> io::Result<TcpStream> {
    let cvt = |r: libc::c_int| {
        if r < 0 {
            Err(io::Error::last_os_error())
        } else {
            Ok(r)
        }
    };
    let sin = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    };
    let SocketAddr::V4(to) = to else {
        return Err(io::Error::other("IPv4 only"));
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: plain syscalls on a socket owned by the TcpStream from here on.
    unsafe {
        let fd = cvt(libc::socket(
            libc::AF_INET,
            libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
            0,
        ))?;
        let stream = TcpStream::from_raw_fd(fd);
        let local = sin(source, 0);
        cvt(libc::bind(
            fd,
            (&local as *const libc::sockaddr_in).cast(),
            len,
        ))?;
        let remote = sin(*to.ip(), to.port());
        cvt(libc::connect(
            fd,
            (&remote as *const libc::sockaddr_in).cast(),
            len,
        ))?;
        stream.set_read_timeout(Some(CLIENT_TIMEOUT))?;
        stream.set_write_timeout(Some(CLIENT_TIMEOUT))?;
        Ok(stream)
    }
}

struct Outcome {
    port: u16,
    result: io::Result<Reply>,
}

/// Client threads, each making requests one after the other on new connections until told to
/// stop or `per_thread` requests are done.
struct Load {
    stop: Arc<AtomicBool>,
    ok: Arc<AtomicUsize>,
    threads: Vec<JoinHandle<Vec<Outcome>>>,
}

impl Load {
    fn start(addr: SocketAddr, threads: usize, per_thread: usize) -> Load {
        let stop = Arc::new(AtomicBool::new(false));
        let ok = Arc::new(AtomicUsize::new(0));
        let threads = (0..threads)
            .map(|_| {
                let (stop, ok) = (Arc::clone(&stop), Arc::clone(&ok));
                std::thread::spawn(move || {
                    let mut out = Vec::new();
                    while !stop.load(Ordering::Relaxed) && out.len() < per_thread {
                        let (port, result) = request_with_port(addr);
                        if result.is_ok() {
                            ok.fetch_add(1, Ordering::Relaxed);
                        }
                        out.push(Outcome { port, result });
                    }
                    out
                })
            })
            .collect();
        Load { stop, ok, threads }
    }

    fn successes(&self) -> usize {
        self.ok.load(Ordering::Relaxed)
    }

    /// Waits until `n` requests succeeded in all, or `within` passed (then false).
    fn wait_successes(&self, n: usize, within: Duration) -> bool {
        let deadline = Instant::now() + within;
        while self.successes() < n {
            if Instant::now() >= deadline || self.threads.iter().all(|t| t.is_finished()) {
                return false;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        true
    }

    fn finish(mut self) -> Vec<Outcome> {
        self.stop.store(true, Ordering::Relaxed);
        std::mem::take(&mut self.threads)
            .into_iter()
            .flat_map(|t| t.join().expect("client thread"))
            .collect()
    }
}

impl Drop for Load {
    fn drop(&mut self) {
        // Also on a failed assertion: client threads end within one request.
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn failures(outcomes: &[Outcome]) -> Vec<String> {
    outcomes
        .iter()
        .filter_map(|o| {
            o.result
                .as_ref()
                .err()
                .map(|e| format!("port {}: {e}", o.port))
        })
        .collect()
}

fn pid_of(sup: &Supervisor, id: u32) -> u32 {
    sup.snapshot()
        .unwrap()
        .iter()
        .find(|w| w.id == id && w.state == WorkerState::Ready)
        .unwrap_or_else(|| panic!("worker {id} is not ready"))
        .pid
}

/// A fresh directory for Unix sockets and marker files, removed when dropped.
struct TempDir(PathBuf);

impl TempDir {
    fn new(tag: &str) -> TempDir {
        static N: AtomicUsize = AtomicUsize::new(0);
        let dir = std::env::temp_dir().join(format!(
            "rcluster-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        std::fs::create_dir_all(&dir).unwrap();
        TempDir(dir)
    }

    fn path(&self) -> &Path {
        &self.0
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

#[test]
fn round_robin_reaches_every_worker_evenly() {
    let (sup, addr) = cluster(config(4, &["serve", "0"], Dispatch::RoundRobin));
    let mut per_pid: HashMap<u32, usize> = HashMap::new();
    let mut ids = HashSet::new();
    for i in 0..400 {
        let r = request(&addr).unwrap_or_else(|e| panic!("request {i} failed: {e}"));
        assert_eq!(r.listener, "web");
        *per_pid.entry(r.pid).or_default() += 1;
        ids.insert(r.id);
    }
    sup.stop(WAIT).unwrap();
    assert_eq!(ids, HashSet::from([0, 1, 2, 3]), "{per_pid:?}");
    assert!(
        per_pid.values().all(|&n| (96..=104).contains(&n)),
        "uneven round-robin: {per_pid:?}"
    );
}

/// A worker SIGKILLed in the middle of concurrent requests: the only connections that may fail
/// are those it had already acknowledged (they reached it and died with it). Everything it had
/// been handed but not acknowledged must be given to another worker.
///
/// The workers (`report`) send "conn PEER" right after acknowledging each connection, so the
/// test knows which connections reached the victim. A connection acknowledged in the instant
/// before its report could be sent is the one failure that report cannot explain: the worker
/// handles connections one at a time, so there is at most one.
#[test]
fn killed_worker_fails_no_connection_it_had_not_acknowledged() {
    let (sup, addr) = cluster(config(3, &["report", "20"], Dispatch::RoundRobin));
    let victim = pid_of(&sup, 1);
    let load = Load::start(tcp(&addr), 6, 400);
    assert!(load.wait_successes(60, WAIT), "load did not get going");
    // SAFETY: signals a child of this process.
    assert_eq!(unsafe { libc::kill(victim as i32, libc::SIGKILL) }, 0);
    let at_kill = load.successes();
    assert!(
        load.wait_successes(at_kill + 150, WAIT),
        "requests stalled after the kill"
    );
    let outcomes = load.finish();
    let mut reached_victim = HashSet::new();
    let deadline = Instant::now() + WAIT;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match sup.next_event(Some(left)) {
            Some(Event::Message { pid, data, .. }) if pid == victim => {
                let text = String::from_utf8_lossy(&data).into_owned();
                let port = text.rsplit(':').next().and_then(|p| p.parse::<u16>().ok());
                reached_victim.insert(port.expect("conn report with a port"));
            }
            Some(Event::Exit { info, .. }) if info.pid == victim => {
                assert_eq!(info.signal, Some(libc::SIGKILL));
                break;
            }
            Some(_) => {}
            None => panic!("no exit event for the killed worker {victim}"),
        }
    }
    sup.stop(WAIT).unwrap();
    let failed: Vec<&Outcome> = outcomes.iter().filter(|o| o.result.is_err()).collect();
    let unexplained: Vec<String> = failed
        .iter()
        .filter(|o| !reached_victim.contains(&o.port))
        .map(|o| format!("port {}: {}", o.port, o.result.as_ref().unwrap_err()))
        .collect();
    eprintln!(
        "{} requests, {} failed, {} reached the killed worker",
        outcomes.len(),
        failed.len(),
        reached_victim.len()
    );
    assert!(
        unexplained.len() <= 1,
        "connections that never reached the killed worker failed: {unexplained:#?}"
    );
}

/// Deterministic form of the above: worker 0 dies at the first connection handed to it,
/// without acknowledging it. The client must not notice.
#[test]
fn connection_handed_to_a_worker_that_dies_before_acknowledging_is_served_by_another() {
    let mut cfg = config(2, &["crash-on-connection", "0"], Dispatch::RoundRobin);
    cfg.restart.mode = RestartMode::Never;
    let (sup, addr) = cluster(cfg);
    let survivor = pid_of(&sup, 1);
    for i in 0..10 {
        let r = request(&addr).unwrap_or_else(|e| panic!("request {i} failed: {e}"));
        assert_eq!((r.id, r.pid), (1, survivor), "request {i}");
    }
    // Round-robin starts with worker 0, so the first request went there and killed it.
    let exit = wait_for(&sup, WAIT, |e| matches!(e, Event::Exit { .. }));
    assert!(
        matches!(exit, Event::Exit { id: 0, info, .. } if info.code == Some(3)),
        "{exit:?}"
    );
    sup.stop(WAIT).unwrap();
}

#[test]
fn reload_under_continuous_load_fails_no_request_five_times_in_a_row() {
    // `drain` finishes the connections it holds when told to stop, as any server that
    // supports graceful reloads does; plain `serve` would drop them by exiting at once.
    // Each request takes 20 ms, so that old workers hold requests when they are told to go.
    let mut cfg = config(2, &["drain", "20"], Dispatch::RoundRobin);
    cfg.ready_on = ReadyOn::Explicit;
    let (sup, addr) = cluster(cfg);
    let load = Load::start(tcp(&addr), 4, 100_000);
    let mut during_reloads = 0;
    for round in 1..=5 {
        // Some requests between reloads too, served by the last generation alone.
        let between = load.successes() + 20;
        assert!(load.wait_successes(between, WAIT), "requests stalled");
        let before = load.successes();
        let generation = sup.reload().unwrap();
        assert_eq!(generation, round + 1);
        let ev = wait_for(&sup, Duration::from_secs(20), |e| {
            matches!(e, Event::ReloadDone { .. } | Event::ReloadFailed { .. })
        });
        assert_eq!(ev, Event::ReloadDone { generation }, "round {round}");
        during_reloads += load.successes() - before;
    }
    let outcomes = load.finish();
    eprintln!(
        "{} requests, {during_reloads} of them while reloading",
        outcomes.len()
    );
    let snapshot = sup.snapshot().unwrap();
    sup.stop(WAIT).unwrap();
    let failed = failures(&outcomes);
    assert!(
        failed.is_empty(),
        "{} of {} requests failed: {failed:#?}",
        failed.len(),
        outcomes.len()
    );
    assert!(
        during_reloads >= 5,
        "only {during_reloads} requests ran while reloading"
    );
    assert!(snapshot.iter().all(|w| w.generation == 6), "{snapshot:#?}");
}

#[test]
fn reload_whose_new_generation_never_gets_ready_fails_and_old_workers_keep_serving() {
    let mut cfg = config(2, &["gen-fail"], Dispatch::RoundRobin);
    cfg.ready_on = ReadyOn::Explicit;
    cfg.ready_timeout = Duration::from_millis(800);
    let (sup, addr) = cluster(cfg);
    let old: HashSet<u32> = [pid_of(&sup, 0), pid_of(&sup, 1)].into();
    sup.reload().unwrap();
    // While the new worker fails to get ready, and after.
    let started = Instant::now();
    while started.elapsed() < Duration::from_millis(300) {
        let r = request(&addr).unwrap();
        assert!(old.contains(&r.pid), "served by {r:?}, not an old worker");
    }
    let ev = wait_for(&sup, WAIT, |e| matches!(e, Event::ReloadFailed { .. }));
    let Event::ReloadFailed { generation, reason } = ev else {
        unreachable!()
    };
    assert_eq!(generation, 2);
    assert!(reason.contains("ready"), "{reason}");
    let mut served = HashSet::new();
    for _ in 0..20 {
        let r = request(&addr).unwrap();
        assert!(old.contains(&r.pid), "served by {r:?}, not an old worker");
        served.insert(r.pid);
    }
    assert_eq!(served, old);
    let live: Vec<_> = sup
        .snapshot()
        .unwrap()
        .into_iter()
        .filter(|w| w.state == WorkerState::Ready)
        .map(|w| (w.pid, w.generation))
        .collect();
    sup.stop(WAIT).unwrap();
    assert_eq!(live.len(), 2, "{live:?}");
    assert!(
        live.iter().all(|(p, g)| old.contains(p) && *g == 1),
        "{live:?}"
    );
}

#[test]
fn sticky_client_reaches_the_replacement_of_its_restarted_slot() {
    let (sup, addr) = cluster(config(4, &["serve", "0"], Dispatch::Sticky));
    let first = request(&addr).unwrap();
    for i in 1..100 {
        let r = request(&addr).unwrap_or_else(|e| panic!("request {i} failed: {e}"));
        assert_eq!((r.id, r.pid), (first.id, first.pid), "request {i}");
    }
    sup.restart_worker(first.id).unwrap();
    let ready = wait_for(
        &sup,
        WAIT,
        |e| matches!(e, Event::Ready { id, .. } if *id == first.id),
    );
    let Event::Ready { pid: new_pid, .. } = ready else {
        unreachable!()
    };
    assert_ne!(new_pid, first.pid);
    for i in 0..20 {
        let r = request(&addr).unwrap_or_else(|e| panic!("request {i} failed: {e}"));
        assert_eq!(
            (r.id, r.pid),
            (first.id, new_pid),
            "request {i} after the restart"
        );
    }
    sup.stop(WAIT).unwrap();
}

/// While its slot restarts, a sticky client waits for the slot's replacement instead of being
/// sent to another slot (what `dispatch::sticky` intends: "Its slot is restarting ... wait").
/// A slow request keeps the old worker draining, so the restart takes a while.
#[test]

fn sticky_client_waits_for_its_slot_while_it_restarts() {
    let (sup, addr) = cluster(config(4, &["drain", "400"], Dispatch::Sticky));
    let first = request(&addr).unwrap();
    let slow = {
        let addr = addr.clone();
        std::thread::spawn(move || request(&addr))
    };
    std::thread::sleep(Duration::from_millis(100));
    sup.restart_worker(first.id).unwrap();
    // Made at once: the old worker is draining, its replacement not started yet.
    let during = request(&addr).unwrap();
    let slow = slow.join().unwrap().unwrap();
    sup.stop(WAIT).unwrap();
    assert_eq!(
        slow.pid, first.pid,
        "the draining worker finished its request"
    );
    assert_eq!(
        during.id, first.id,
        "a request during the restart changed slot"
    );
    assert_ne!(
        during.pid, first.pid,
        "a request reached the stopped worker"
    );
}

#[test]
fn sticky_spreads_client_addresses_over_slots() {
    let (sup, addr) = cluster(config(4, &["serve", "0"], Dispatch::Sticky));
    let to = tcp(&addr);
    let mut slot_of: BTreeMap<Ipv4Addr, u32> = BTreeMap::new();
    for last in 1..=16u8 {
        let source = Ipv4Addr::new(127, 0, 0, last);
        for i in 0..3 {
            let stream = connect_from(source, to).unwrap();
            let r = Reply::parse(&http_exchange(&stream).unwrap()).unwrap();
            let slot = *slot_of.entry(source).or_insert(r.id);
            assert_eq!(r.id, slot, "{source} moved from slot {slot} on request {i}");
        }
    }
    sup.stop(WAIT).unwrap();
    let slots: HashSet<u32> = slot_of.values().copied().collect();
    assert!(
        slots.len() > 1,
        "16 addresses all went to one slot: {slot_of:?}"
    );
}

/// The next message a worker sends, as text.
fn next_text(sup: &Supervisor) -> String {
    match wait_for(sup, WAIT, |e| matches!(e, Event::Message { .. })) {
        Event::Message { data, .. } => String::from_utf8_lossy(&data).into_owned(),
        _ => unreachable!(),
    }
}

fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd").unwrap().count()
}

#[test]
fn a_connection_a_full_worker_gives_back_goes_to_another_and_it_gets_none_until_it_has_room() {
    let (sup, addr) = cluster(config(2, &["serve", "0"], Dispatch::RoundRobin));
    let fds = open_fds();
    sup.send(0, b"!full").unwrap();
    assert_eq!(next_text(&sup), "full");
    // Worker 0 gives back what it is handed: worker 1 serves everything.
    let ids: Vec<u32> = (0..8).map(|_| request(&addr).unwrap().id).collect();
    assert_eq!(ids, [1; 8], "every request goes to the worker with room");
    sup.send(0, b"!room web").unwrap();
    // It gave back one, and was handed none after it (round-robin would have handed it 4).
    assert_eq!(next_text(&sup), "room 1");
    let ids: Vec<u32> = (0..8).map(|_| request(&addr).unwrap().id).collect();
    let taken = ids.iter().filter(|&&id| id == 0).count();
    assert!(
        (2..=6).contains(&taken),
        "with room again it takes its turns: {ids:?}"
    );
    // The primary kept no copy of the connections that went back and forth.
    assert_eq!(open_fds(), fds);
    sup.stop(WAIT).unwrap();
}

#[test]
fn a_connection_every_worker_gives_back_waits_for_the_first_with_room() {
    let (sup, addr) = cluster(config(2, &["serve", "0"], Dispatch::RoundRobin));
    for id in 0..2 {
        sup.send(id, b"!full").unwrap();
        assert_eq!(next_text(&sup), "full");
    }
    let client = std::thread::spawn(move || {
        let asked = Instant::now();
        let reply = request(&addr);
        (reply, asked.elapsed())
    });
    std::thread::sleep(Duration::from_millis(400));
    assert!(
        !client.is_finished(),
        "a connection no worker had room for was answered or dropped"
    );
    sup.send(1, b"!room web").unwrap();
    // Each gave it back once, and was handed nothing more while full (no back and forth).
    assert_eq!(next_text(&sup), "room 1");
    let (reply, took) = client.join().unwrap();
    assert_eq!(reply.unwrap().id, 1, "served by the worker that had room");
    assert!(took >= Duration::from_millis(400), "{took:?}");
    sup.stop(WAIT).unwrap();
}

#[test]
fn a_connection_given_back_that_the_primary_never_handed_over_is_closed_and_nothing_else() {
    let (sup, addr) = cluster(config(2, &["serve", "0"], Dispatch::RoundRobin));
    let fds = open_fds();
    sup.send(0, b"!give-back 987654").unwrap();
    assert_eq!(next_text(&sup), "gave back");
    // The worker is not cut off, and the descriptor it sent is not kept.
    let ids: Vec<u32> = (0..4).map(|_| request(&addr).unwrap().id).collect();
    assert!(ids.contains(&0), "{ids:?}");
    assert_eq!(open_fds(), fds);
    assert!(sup
        .status()
        .unwrap()
        .workers
        .iter()
        .all(|w| w.restarts == 0));
    sup.stop(WAIT).unwrap();
}

#[test]
fn a_worker_that_gives_back_something_else_in_a_connections_name_is_cut_off_and_the_others_serve() {
    let (sup, addr) = cluster(config(2, &["serve", "0"], Dispatch::RoundRobin));
    sup.send(0, b"!lie").unwrap();
    assert_eq!(next_text(&sup), "lying");
    // Its turn comes within two connections; what it gives back is not a socket.
    let _ = request(&addr);
    let _ = request(&addr);
    let detail = match wait_for(&sup, WAIT, |e| matches!(e, Event::ProtocolError { .. })) {
        Event::ProtocolError { id, detail, .. } => {
            assert_eq!(id, 0);
            detail
        }
        _ => unreachable!(),
    };
    assert!(
        detail.contains("connection") && detail.contains("not a connection of listener web"),
        "{detail}"
    );
    // The other worker (and the liar's replacement) serve on.
    for _ in 0..4 {
        request(&addr).unwrap();
    }
    sup.stop(WAIT).unwrap();
}

#[test]
fn max_inflight_one_makes_connections_wait_in_the_primary() {
    let mut cfg = config(1, &["serve", "300"], Dispatch::RoundRobin);
    cfg.max_inflight = Some(1);
    let (sup, addr) = cluster(cfg);
    let started = Instant::now();
    let clients: Vec<_> = (0..3)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || request(&addr))
        })
        .collect();
    let replies: Vec<Reply> = clients
        .into_iter()
        .map(|c| c.join().unwrap().unwrap())
        .collect();
    let took = started.elapsed();
    sup.stop(WAIT).unwrap();
    assert!(
        replies.iter().all(|r| r.maxconc == 1),
        "the worker held more than one connection: {replies:?}"
    );
    assert!(
        took >= Duration::from_millis(850),
        "three 300 ms requests one at a time took only {took:?}"
    );
}

#[test]

fn connection_waiting_longer_than_queue_timeout_is_closed_by_the_primary() {
    let mut cfg = config(1, &["serve", "1500"], Dispatch::RoundRobin);
    cfg.max_inflight = Some(1);
    cfg.queue_timeout = Duration::from_millis(200);
    let (sup, addr) = cluster(cfg);
    let busy = {
        let addr = addr.clone();
        std::thread::spawn(move || request(&addr))
    };
    // Let the first connection reach the worker, so that the second one has to wait.
    std::thread::sleep(Duration::from_millis(200));
    let started = Instant::now();
    let waiting = http_get(&addr);
    let took = started.elapsed();
    let first = busy.join().unwrap();
    sup.stop(WAIT).unwrap();
    assert!(
        waiting.is_err(),
        "a connection queued past queue_timeout got a response after {took:?}: {waiting:?}"
    );
    assert!(
        took < Duration::from_millis(1000),
        "the queued connection was closed only after {took:?}, queue_timeout is 200 ms"
    );
    assert!(first.is_ok(), "{first:?}");
}

/// Worker A holds two slow connections (clients that have not sent their request yet), worker
/// B none: every new connection must go to B. Round-robin would send half of them to A.
#[test]
fn least_connections_avoids_a_worker_busy_with_slow_connections() {
    let (sup, addr) = cluster(config(2, &["serve", "0"], Dispatch::LeastConnections));
    let to = tcp(&addr);
    let open = || {
        let s = TcpStream::connect_timeout(&to, CLIENT_TIMEOUT).unwrap();
        s.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        s.set_write_timeout(Some(CLIENT_TIMEOUT)).unwrap();
        // Give the primary time to hand it over before the next one arrives.
        std::thread::sleep(Duration::from_millis(100));
        s
    };
    // Equal counts go to the lower worker: A, then B, then A again.
    let slow_a1 = open();
    let slow_b = open();
    let slow_a2 = open();
    let b = Reply::parse(&http_exchange(&slow_b).unwrap()).unwrap();
    // B reports each close after the client has its answer: the next connection must not
    // come before the report (a loaded machine delays it), or B counts as busy as A.
    let b_idle = || {
        let deadline = Instant::now() + WAIT;
        while Instant::now() < deadline {
            let st = sup.status().unwrap();
            if st
                .workers
                .iter()
                .any(|w| w.pid == b.pid && w.connections_active == 0)
            {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        panic!("worker B's closes were not reported within {WAIT:?}");
    };
    let mut to_b = 0;
    for i in 0..20 {
        b_idle();
        let r = request(&addr).unwrap_or_else(|e| panic!("request {i} failed: {e}"));
        assert_eq!(
            r.pid, b.pid,
            "request {i} went to the worker holding two connections"
        );
        to_b += 1;
    }
    let a1 = Reply::parse(&http_exchange(&slow_a1).unwrap()).unwrap();
    let a2 = Reply::parse(&http_exchange(&slow_a2).unwrap()).unwrap();
    sup.stop(WAIT).unwrap();
    assert_eq!(a1.pid, a2.pid);
    assert_ne!(a1.pid, b.pid);
    assert_eq!(to_b, 20);
}

#[test]
fn unix_socket_listener_serves_and_its_file_is_removed_on_stop() {
    let dir = TempDir::new("unix");
    let path = dir.path().join("web.sock");
    let mut cfg = worker_config(2, &["serve", "0"]);
    cfg.listeners = vec![Listener::new(
        "web",
        ListenAddr::Unix(path.clone()),
        Dispatch::RoundRobin,
    )];
    let (sup, addr) = cluster(cfg);
    assert_eq!(addr, ListenAddr::Unix(path.clone()));
    let mut ids = HashSet::new();
    for _ in 0..10 {
        let r = request(&addr).unwrap();
        assert_eq!(r.listener, "web");
        ids.insert(r.id);
    }
    assert_eq!(ids, HashSet::from([0, 1]));
    assert!(path.exists());
    sup.stop(WAIT).unwrap();
    assert!(!path.exists(), "{} left behind", path.display());
}

#[test]
fn ipv6_loopback_listener_serves() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("note: ::1 is not available on this machine; skipping the IPv6 listener test");
        return;
    }
    let mut cfg = worker_config(2, &["serve", "0"]);
    cfg.listeners = vec![Listener::new(
        "web6",
        "[::1]:0".parse().unwrap(),
        Dispatch::RoundRobin,
    )];
    let sup = Supervisor::start(cfg).unwrap();
    wait_ready(&sup, 2);
    let addr = listener_addr(&sup, "web6");
    assert!(matches!(&addr, ListenAddr::Tcp(sa) if sa.is_ipv6() && sa.port() != 0));
    let mut ids = HashSet::new();
    for _ in 0..10 {
        let r = request(&addr).unwrap();
        assert_eq!(r.listener, "web6");
        ids.insert(r.id);
    }
    sup.stop(WAIT).unwrap();
    assert_eq!(ids, HashSet::from([0, 1]));
}

/// The interpreter behind `python3`, resolved once, so that the worker is python itself and
/// not a wrapper script that would run it as a child (LISTEN_PID names the worker's pid).
fn python3() -> Option<String> {
    let out = std::process::Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .ok()?;
    let path = String::from_utf8(out.stdout).ok()?.trim().to_string();
    (out.status.success() && !path.is_empty()).then_some(path)
}

/// A cluster of `tests/python/listen_fds_server.py`, a program that knows nothing of rcluster,
/// only socket activation: it checks LISTEN_PID/LISTEN_FDS/LISTEN_FDNAMES and where the IPC
/// descriptor is, then accepts on fd 3 itself. None (after a note) without python3.
fn socket_activated_cluster(workers: usize) -> Option<(Supervisor, ListenAddr)> {
    let Some(python) = python3() else {
        eprintln!("note: python3 is not available; skipping this socket activation test");
        return None;
    };
    let script = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("python")
        .join("listen_fds_server.py");
    let mut cfg = Config::new([python, script.to_string_lossy().into_owned()]);
    cfg.workers = workers;
    cfg.ready_on = ReadyOn::Spawn;
    cfg.kill_timeout = Duration::from_secs(2);
    // A server that cannot start must fail the test, not be restarted behind its back.
    cfg.restart.mode = RestartMode::Never;
    cfg.listeners = vec![loopback_listener(Dispatch::Shared)];
    Some(cluster(cfg))
}

/// The fields of a listen_fds_server answer after its pid.
fn activation_fields(body: &str) -> (u32, Vec<String>) {
    let mut f = body.split_whitespace();
    let pid = f.next().and_then(|p| p.parse().ok()).expect("a pid first");
    (pid, f.map(str::to_string).collect())
}

#[test]
fn shared_mode_serves_an_unmodified_socket_activation_program() {
    let Some((sup, addr)) = socket_activated_cluster(3) else {
        return;
    };
    let pids: HashSet<u32> = sup.snapshot().unwrap().iter().map(|w| w.pid).collect();
    let mut served: HashMap<u32, usize> = HashMap::new();
    // The kernel balances among the accepting processes, not necessarily evenly: ask until two
    // have answered (python start-up is slow, so the first answers may all come from one).
    for i in 0..200 {
        let body = http_get(&addr).unwrap_or_else(|e| panic!("request {i} failed: {e}"));
        let (pid, fields) = activation_fields(&body);
        assert_eq!(fields[..4], ["fds=1", "names=web", "ipc=4", "ok"], "{body}");
        assert!(pids.contains(&pid), "answer from {pid}, not a worker");
        *served.entry(pid).or_default() += 1;
        if served.len() > 1 && i >= 20 {
            break;
        }
        if i % 20 == 19 {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let exits = std::iter::from_fn(|| sup.try_next_event())
        .filter(|e| matches!(e, Event::Exit { .. }))
        .count();
    sup.stop(WAIT).unwrap();
    assert_eq!(exits, 0, "a socket-activated worker exited");
    assert!(served.len() > 1, "only one worker answered: {served:?}");
}

/// systemd hands sockets over in blocking mode (unless `NonBlocking=yes`), and programs written
/// for it may simply call accept(): a non-blocking socket makes that fail with EAGAIN.
#[test]

fn shared_mode_hands_over_the_listening_socket_in_blocking_mode() {
    let Some((sup, addr)) = socket_activated_cluster(1) else {
        return;
    };
    let body = http_get(&addr).unwrap();
    sup.stop(WAIT).unwrap();
    let (_, fields) = activation_fields(&body);
    assert_eq!(
        fields.last().map(String::as_str),
        Some("blocking=yes"),
        "{body}"
    );
}

#[test]
fn address_in_use_fails_start_naming_it_with_nothing_started() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let taken_addr = taken.local_addr().unwrap();
    let dir = TempDir::new("in-use");
    let marker = dir.path().join("started");
    let sock = dir.path().join("first.sock");
    let mut cfg = Config::new([
        "sh".to_string(),
        "-c".to_string(),
        format!("touch '{}'; sleep 5", marker.display()),
    ]);
    cfg.workers = 1;
    cfg.ready_on = ReadyOn::Spawn;
    cfg.kill_timeout = Duration::from_secs(1);
    // The first listener binds fine; the second cannot: the first must be undone too.
    cfg.listeners = vec![
        Listener::new(
            "first",
            ListenAddr::Unix(sock.clone()),
            Dispatch::RoundRobin,
        ),
        Listener::new("web", ListenAddr::Tcp(taken_addr), Dispatch::RoundRobin),
    ];
    let err = match Supervisor::start(cfg) {
        Ok(sup) => {
            sup.stop(WAIT).unwrap();
            panic!("started on an address in use");
        }
        Err(e) => e,
    };
    assert!(matches!(err, Error::Bind { .. }), "{err:?}");
    let text = err.to_string();
    assert!(
        text.contains(&taken_addr.to_string()) && text.contains("in use"),
        "{text}"
    );
    // A worker would have created the marker right away.
    std::thread::sleep(Duration::from_millis(300));
    assert!(!marker.exists(), "a worker was started");
    assert!(
        !sock.exists(),
        "the first listener's socket file was left behind"
    );
    drop(taken);
}

/// Scaling 3 → 1 while every worker holds a slow request: the removed workers finish theirs
/// (`drain` mode), and connections made meanwhile go only to the worker that stays.
#[test]
fn scale_down_drains_removed_workers_and_sends_new_connections_to_the_rest() {
    let mut cfg = config(3, &["drain", "600"], Dispatch::RoundRobin);
    // Room for the drain before SIGTERM (half of kill_timeout).
    cfg.kill_timeout = Duration::from_secs(4);
    let (sup, addr) = cluster(cfg);
    let slow: Vec<_> = (0..3)
        .map(|_| {
            let addr = addr.clone();
            let t = std::thread::spawn(move || request(&addr));
            // One at a time, so that round-robin gives each worker one.
            std::thread::sleep(Duration::from_millis(50));
            t
        })
        .collect();
    sup.scale(1).unwrap();
    // Concurrent, since each takes as long as the slow ones.
    let quick: Vec<_> = (0..6)
        .map(|_| {
            let addr = addr.clone();
            std::thread::spawn(move || request(&addr))
        })
        .collect();
    let quick: Vec<Reply> = quick
        .into_iter()
        .map(|t| t.join().unwrap().expect("request after scaling down"))
        .collect();
    let slow: Vec<Reply> = slow
        .into_iter()
        .map(|t| {
            t.join()
                .unwrap()
                .expect("in-flight request of a removed worker")
        })
        .collect();
    let mut exits = Vec::new();
    while exits.len() < 2 {
        if let Event::Exit { id, info, .. } =
            wait_for(&sup, WAIT, |e| matches!(e, Event::Exit { .. }))
        {
            exits.push((id, info.code, info.reason));
        }
    }
    sup.stop(WAIT).unwrap();
    let slow_ids: HashSet<u32> = slow.iter().map(|r| r.id).collect();
    assert_eq!(slow_ids, HashSet::from([0, 1, 2]), "{slow:?}");
    assert!(
        quick.iter().all(|r| r.id == 0),
        "a removed worker got a new connection: {quick:?}"
    );
    exits.sort_by_key(|e| e.0);
    assert_eq!(
        exits,
        vec![
            (1, Some(0), ExitReason::Requested),
            (2, Some(0), ExitReason::Requested)
        ]
    );
}

/// 200 clients at once, each making three requests on new connections, against two workers
/// that serve one connection at a time on the thread that reads their link (as a Node worker
/// does): more connections than the workers' handoff windows hold wait in the primary, and
/// each must be handed over as soon as a worker acknowledges an earlier one, not left until
/// some other client happens to connect (or `queue_timeout` closes it).
#[test]
fn connections_beyond_the_handoff_windows_move_on_when_workers_acknowledge() {
    let (sup, addr) = cluster(config(2, &["inline", "500"], Dispatch::RoundRobin));
    let to = tcp(&addr);
    let clients: Vec<JoinHandle<Vec<Result<Duration, String>>>> = (0..200)
        .map(|_| {
            std::thread::spawn(move || {
                (0..3)
                    .map(|_| {
                        let t = Instant::now();
                        match request_with_port(to).1 {
                            Ok(_) => Ok(t.elapsed()),
                            Err(e) => Err(format!("{e} after {:?}", t.elapsed())),
                        }
                    })
                    .collect()
            })
        })
        .collect();
    let outcomes: Vec<_> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    sup.stop(WAIT).unwrap();
    let failed: Vec<&String> = outcomes.iter().filter_map(|o| o.as_ref().err()).collect();
    assert!(
        failed.is_empty(),
        "{} of 600 failed: {failed:?}",
        failed.len()
    );
    let slowest = outcomes.iter().flatten().max().unwrap();
    // 600 requests of 0.5 ms on two workers: a third of a second of work. A connection left
    // in the queue waits for the next connect or for `queue_timeout` (10 s).
    assert!(
        *slowest < Duration::from_secs(3),
        "a request took {slowest:?}"
    );
}
