//! Accepting from a `shared` listening socket one connection at a time, keeping level with the
//! other workers through the listener's share map (protocol §5.7).
//!
//! An event loop that takes every waiting connection at once (libuv's server does) serves
//! them one after another: the last of a batch waits behind the others while another worker
//! sits idle before an empty socket. Taking one per turn leaves the rest in the socket, where
//! the first worker free takes the next. With the share map, a worker [`LEAD`] ahead of the
//! least active other leaves it the next connection, unless [`LONG_QUEUE`] or more wait
//! (nobody keeps up: everyone takes) or it has been leaving them for [`MAX_DEFER`] or
//! [`MAX_DEFERRALS`] looks in a row (the others are not taking: a connection never waits for
//! evenness for long). A worker that leaves a connection looks again [`DEFER_FOR`] later.
//!
//! A worker that counts the connections it has in hand ([`SharedAcceptor::count_in_hand`])
//! lets the others see when it is idle. While at most one connection waits, a worker leaves it
//! to an idle one whose turn comes first (it took fewer, or as many but longer ago): that one
//! was woken for it too and takes it at once, so the worker does not stop watching
//! ([`Accepted::Empty`]), for [`MAX_DEFER`] at most however often it looks, and gives up its
//! CPU at each such look (on a busy machine the idle one may be waiting for it). Requests that come
//! one after the other go to the workers in turn, as round-robin's would, and none waits
//! behind a busy worker. When an idle one did not take it within that time (its loop is busy
//! with something else), the worker waits for idle ones no more for [`IDLE_DISTRUST`].
//!
//! A worker that counts them and has [`IN_HAND_LEAD`] more connections in hand than another
//! that counts leaves it the next connection too, also while [`LONG_QUEUE`] or more wait but
//! not [`BATCH_QUEUE`] (every worker is taking, several a look), in a run of deferrals as for
//! [`LEAD`]; when the run ends, it takes, and waits for the others no more for
//! [`IDLE_DISTRUST`]. Connections that stay open, such as the kept-alive ones of a burst of
//! clients (wrk opening 50 at once), are spread evenly: by the order the workers looked in,
//! one took 45 of 50 in some runs. A worker whose last [`CLOSES_LATELY`] closes all came in
//! the last [`CLOSED_LATELY`] does not so: its connections are short (a new connection per
//! request), and the count in hand says how much waits for this turn, not for the run. Left to
//! a worker with fewer that was not running, connections waited while this worker's CPU sat
//! idle (Node workers, a new connection per request: 4 % fewer requests a second). One close
//! is not enough: wrk opens and closes one connection before its burst of 50.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::sys::listen::{accept_connection, Dispatch};
use crate::sys::steer::TurnCounter;
use crate::worker::{Listening, Worker};

/// Connections a worker may have taken beyond the one that took fewest before it lets the
/// others take the next. Over a run of N connections the shares differ by about this much.
pub const LEAD: u32 = 16;
/// Connections a worker counting them may have in hand beyond the one that has fewest before
/// it lets the others take the next, unless [`BATCH_QUEUE`] or more wait: kept-alive
/// connections that arrive together are spread evenly, not by which worker looked first.
pub const IN_HAND_LEAD: u32 = 4;
/// A worker whose last [`CLOSES_LATELY`] closes of connections came within this time leaves
/// none to the others for having more in hand ([`IN_HAND_LEAD`]): its connections are short.
/// Short itself: a burst of clients that come right after others left is still spread.
pub const CLOSED_LATELY: Duration = Duration::from_millis(5);
/// See [`CLOSED_LATELY`]: 800 closes a second or more.
pub const CLOSES_LATELY: usize = 4;
/// Connections waiting in the socket (a TCP listener's accept queue) from which every worker
/// takes, ahead or not.
pub const LONG_QUEUE: u32 = 16;
/// How long a worker leaves connections to the others in a row before it takes the next
/// anyway: the longest a connection waits for evenness.
pub const MAX_DEFER: Duration = Duration::from_millis(2);
/// Looks in a row that leave the next connection to the others, at most: a caller that looks
/// again at once (taking what waits before it closes the socket) takes after a few.
pub const MAX_DEFERRALS: u32 = 16;
/// How long a caller told [`Accepted::Deferred`] stops watching the socket before it looks
/// again. A quarter of this was tried for Node workers at light load: a worker back sooner is
/// told to wait again sooner, and the requests were no faster (bench/RESULTS.md).
pub const DEFER_FOR: Duration = Duration::from_millis(1);
/// How long a worker that waited in vain for an idle one to take a connection waits for idle
/// ones no more: an idle worker whose loop is stuck elsewhere costs one connection
/// [`MAX_DEFER`] in this time, and a worker that was merely slow to wake (a busy machine)
/// misses no more than the turn it was slow for.
pub const IDLE_DISTRUST: Duration = Duration::from_millis(20);
/// Connections waiting in the socket from which a worker takes several in one look (see
/// [`SharedAcceptor::more`]): so many wait that every worker is taking, and a connection
/// taken now rather than at the worker's next look waits for nobody who is free. Each look is
/// a turn of an event loop; at 200 clients, one connection a turn left Node workers 3 %
/// below Node's own accept loop (bench/RESULTS.md).
pub const BATCH_QUEUE: u32 = 64;
/// Connections taken in one look at most.
pub const MAX_BATCH: usize = 8;
/// Looks that took a connection between two looks at the socket's queue (a system call).
const QUEUE_LOOK_EVERY: u32 = 8;

/// `TCP_LISTEN` of the kernel's TCP states (not in libc).
const TCP_LISTEN: u8 = 10;

/// What one look at the socket gave.
#[derive(Debug)]
pub enum Accepted {
    /// A connection (non-blocking, close-on-exec).
    Connection(OwnedFd),
    /// Nothing waits (another worker took it first), or an idle worker whose turn it is is
    /// taking it: the caller keeps watching the socket.
    Empty,
    /// This worker is ahead: it leaves the next connection to the others and looks again a
    /// moment later (the caller stops watching the socket for [`DEFER_FOR`] or a little more).
    Deferred,
    /// accept failed: EMFILE, ENFILE, ENOBUFS or ENOMEM mean the caller should pause.
    Failed(io::Error),
}

/// A worker's acceptor of one `shared` listening socket: one the caller keeps open
/// ([`SharedAcceptor::new`]) or its own ([`SharedAcceptor::owning`],
/// [`SharedAcceptor::of_listener`]), closed with the acceptor.
#[derive(Debug)]
pub struct SharedAcceptor {
    fd: RawFd,
    /// The socket, when the acceptor owns it: kept to be closed with it.
    _socket: Option<OwnedFd>,
    counter: Option<Arc<TurnCounter>>,
    /// Since when it has been leaving connections to the others, and when it last did, in
    /// microseconds after `epoch`; 0 while it takes.
    deferring_since: AtomicU64,
    deferred_at: AtomicU64,
    deferrals: AtomicU32,
    epoch: Instant,
    /// Looks that took a connection, and what the last look at the queue said to take more.
    taken: AtomicU32,
    batch: AtomicU32,
    /// It counts the connections it took and has not closed in the share map.
    in_hand: AtomicBool,
    /// Until when (microseconds after `epoch`) it waits for idle ones no more.
    distrust_until: AtomicU64,
    /// When (microseconds after `epoch`) the last [`CLOSES_LATELY`] connections it took were
    /// closed (0: not yet), a ring; and where in it the next goes.
    closed_at: [AtomicU64; CLOSES_LATELY],
    closes: AtomicU32,
    listened: bool,
    /// The address the primary said the listener is bound to ("" when it was not asked).
    address: String,
}

impl SharedAcceptor {
    /// Accepts on `fd`; with `counter` (the listener's share map), keeping level. Makes the
    /// socket non-blocking: several workers wake for one connection, and those that find it
    /// gone must not wait in accept. (The flag is the socket's, for every process holding it.)
    pub fn new(fd: RawFd, counter: Option<Arc<TurnCounter>>) -> io::Result<SharedAcceptor> {
        crate::sys::set_nonblocking(fd, true)?;
        Ok(SharedAcceptor {
            fd,
            _socket: None,
            counter,
            deferring_since: AtomicU64::new(0),
            deferred_at: AtomicU64::new(0),
            deferrals: AtomicU32::new(0),
            epoch: Instant::now(),
            taken: AtomicU32::new(0),
            batch: AtomicU32::new(0),
            in_hand: AtomicBool::new(false),
            distrust_until: AtomicU64::new(0),
            closed_at: Default::default(),
            closes: AtomicU32::new(0),
            listened: false,
            address: String::new(),
        })
    }

    /// Accepts on `socket`, which it closes when dropped; see [`SharedAcceptor::new`].
    pub fn owning(
        socket: OwnedFd,
        counter: Option<Arc<TurnCounter>>,
    ) -> io::Result<SharedAcceptor> {
        let mut a = SharedAcceptor::new(socket.as_raw_fd(), counter)?;
        a._socket = Some(socket);
        Ok(a)
    }

    /// Accepts from the socket of `shared` listener `name` that this worker inherited
    /// (`inherited`, taken over). Asks the primary for the listener by name (a round trip):
    /// its answer carries a copy of the socket (`inherited` is closed then) and the
    /// listener's share map. From a primary that gives neither (an older one), it accepts
    /// from `inherited` whenever a connection waits. The caller tells the primary when it no
    /// longer listens ([`Worker::unlisten`]) if [`SharedAcceptor::listened`].
    pub fn of_listener(
        worker: &Worker,
        name: &str,
        inherited: OwnedFd,
    ) -> io::Result<SharedAcceptor> {
        let (socket, counter, listened, address) =
            match worker.listen_counting(name, Dispatch::Shared) {
                Ok(Listening {
                    fd: Some(copy),
                    counter,
                    addr,
                    ..
                }) => (copy, counter.map(Arc::new), true, addr),
                Ok(l) => (inherited, None, true, l.addr),
                Err(_) => (inherited, None, false, String::new()),
            };
        let mut a = SharedAcceptor::owning(socket, counter)?;
        a.listened = listened;
        a.address = address;
        Ok(a)
    }

    /// Whether the primary knows this worker listens ([`SharedAcceptor::of_listener`] asked
    /// it and it answered).
    pub fn listened(&self) -> bool {
        self.listened
    }

    /// The address the listener is bound to, as the primary said ([`SharedAcceptor::of_listener`]);
    /// "" when it did not say.
    pub fn address(&self) -> &str {
        &self.address
    }

    pub fn fd(&self) -> RawFd {
        self.fd
    }

    /// Whether it keeps level with the other workers (it has the listener's share map).
    pub fn keeps_level(&self) -> bool {
        self.counter.is_some()
    }

    /// Turns Nagle's algorithm off for the connections accepted from now on: sets
    /// `TCP_NODELAY` on the listening socket, which every connection accepted from it inherits,
    /// so that a server that wants it (Node's `http` servers do by default) makes no system
    /// call per connection for it. False for a socket that is not TCP (a Unix socket has no
    /// such delay). The option is the socket's: every worker accepting from it gets it, and it
    /// stays set; a server sharing the listener that did not ask for it gets it as well.
    pub fn no_delay(&self) -> io::Result<bool> {
        let on: libc::c_int = 1;
        // SAFETY: an int option and its length; the kernel reads no more.
        let rc = unsafe {
            libc::setsockopt(
                self.fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&on as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if rc == 0 {
            return Ok(true);
        }
        match io::Error::last_os_error() {
            e if matches!(
                e.raw_os_error(),
                Some(libc::EOPNOTSUPP | libc::ENOPROTOOPT | libc::EINVAL)
            ) =>
            {
                Ok(false)
            }
            e => Err(e),
        }
    }

    /// From now on, counts in the share map the connections it took and the caller has not
    /// closed yet: the caller calls [`SharedAcceptor::closed`] once for each connection it got
    /// from [`SharedAcceptor::next`]. While it has none in hand, a worker that took more
    /// leaves it the next connection. False (and nothing counted) without a share map, or with
    /// the share map of an older primary.
    pub fn count_in_hand(&self) -> bool {
        let counting = self.counter.as_ref().is_some_and(|c| c.count_in_hand());
        self.in_hand.store(counting, Ordering::Relaxed);
        counting
    }

    /// One connection that [`SharedAcceptor::next`] gave is closed (with
    /// [`SharedAcceptor::count_in_hand`]; nothing otherwise).
    pub fn closed(&self) {
        if let (true, Some(c)) = (self.in_hand.load(Ordering::Relaxed), &self.counter) {
            c.released();
            let i = self.closes.fetch_add(1, Ordering::Relaxed) as usize % CLOSES_LATELY;
            self.closed_at[i].store(self.micros(), Ordering::Relaxed);
        }
    }

    /// Takes one connection, or says why not.
    pub fn next(&self) -> Accepted {
        if let Some(c) = &self.counter {
            if c.ahead(LEAD) && queued(self.fd) < LONG_QUEUE {
                if self.may_defer(true) {
                    return Accepted::Deferred;
                }
            } else if self.in_hand.load(Ordering::Relaxed)
                && c.ahead_in_hand(IN_HAND_LEAD)
                && !self.closed_lately()
                && self.trusts_idle()
                && queued(self.fd) < BATCH_QUEUE
            {
                // It stops watching for a moment: on a busy machine, one that kept looking
                // would take the CPU the other needs to catch up (a burst split 16/34 so).
                if self.may_defer(true) {
                    return Accepted::Deferred;
                }
                // Left for MAX_DEFER and still ahead: the one with fewer is not taking.
                self.distrust();
            } else if c.behind_idle() && self.trusts_idle() && queued(self.fd) <= 1 {
                // The idle one was woken for it too and takes it at once: this one keeps
                // watching (no pause), and looks again as often as it is woken meanwhile.
                if self.may_defer(false) {
                    // On a busy machine, the idle one may be waiting for this CPU.
                    // SAFETY: no arguments; gives up the CPU for a moment.
                    unsafe { libc::sched_yield() };
                    return Accepted::Empty;
                }
                // Left for MAX_DEFER and still here: that one is not watching.
                self.distrust();
            }
        }
        self.deferring_since.store(0, Ordering::Relaxed);
        match accept_one(self.fd) {
            Ok(Some(c)) => {
                if let Some(counter) = &self.counter {
                    counter.took();
                    if self.in_hand.load(Ordering::Relaxed) {
                        counter.holds();
                    }
                }
                Accepted::Connection(c)
            }
            Ok(None) => Accepted::Empty,
            Err(e) => Accepted::Failed(e),
        }
    }
}

impl SharedAcceptor {
    /// Whether it may leave the next connection to the others: it has not been doing so for
    /// [`MAX_DEFER`] already, or (`counting` looks) for [`MAX_DEFERRALS`] looks. A run of
    /// deferrals ends when it takes one, or when it looked at nothing for longer than
    /// `MAX_DEFER` (the others took what came meanwhile).
    fn may_defer(&self, counting: bool) -> bool {
        let max = MAX_DEFER.as_micros() as u64;
        let now = self.micros();
        let mut since = self.deferring_since.load(Ordering::Relaxed);
        let mut looks = self.deferrals.load(Ordering::Relaxed);
        if since == 0 || now - self.deferred_at.load(Ordering::Relaxed) > max {
            since = now;
            looks = 0;
            self.deferring_since.store(now, Ordering::Relaxed);
        }
        self.deferred_at.store(now, Ordering::Relaxed);
        self.deferrals.store(looks + 1, Ordering::Relaxed);
        now - since < max && (!counting || looks < MAX_DEFERRALS)
    }

    /// Microseconds since `epoch`, at least 1 (0 means "not deferring").
    fn micros(&self) -> u64 {
        (self.epoch.elapsed().as_micros() as u64).max(1)
    }

    /// For [`IDLE_DISTRUST`] from now, it leaves no connection to another worker that is idle
    /// or has fewer in hand: such a wait was in vain.
    fn distrust(&self) {
        let until = self.micros() + IDLE_DISTRUST.as_micros() as u64;
        self.distrust_until.store(until, Ordering::Relaxed);
    }

    /// Whether the last [`CLOSES_LATELY`] connections it took were all closed in the last
    /// [`CLOSED_LATELY`].
    fn closed_lately(&self) -> bool {
        let oldest = self
            .closed_at
            .iter()
            .map(|t| t.load(Ordering::Relaxed))
            .min();
        oldest.is_some_and(|at| {
            at != 0 && self.micros().saturating_sub(at) < CLOSED_LATELY.as_micros() as u64
        })
    }

    /// Whether it may leave a connection to an idle worker: no such wait was in vain lately.
    fn trusts_idle(&self) -> bool {
        self.micros() >= self.distrust_until.load(Ordering::Relaxed)
    }

    /// How many more connections to take in this look, after [`SharedAcceptor::next`] gave
    /// one: up to `MAX_BATCH - 1` while [`BATCH_QUEUE`] or more wait, else none. The queue is
    /// looked at every [`QUEUE_LOOK_EVERY`] calls; in between the last answer holds.
    pub fn more(&self) -> usize {
        let n = self.taken.fetch_add(1, Ordering::Relaxed);
        if n % QUEUE_LOOK_EVERY == 0 {
            let long = queued(self.fd) >= BATCH_QUEUE;
            let batch = if long { MAX_BATCH as u32 - 1 } else { 0 };
            self.batch.store(batch, Ordering::Relaxed);
        }
        self.batch.load(Ordering::Relaxed) as usize
    }
}

/// One accept (non-blocking, CLOEXEC); None when nothing waits.
fn accept_one(fd: RawFd) -> io::Result<Option<OwnedFd>> {
    loop {
        match accept_connection(fd, true) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            other => return other,
        }
    }
}

/// How many connections wait in TCP listener `fd`'s accept queue; 0 for another kind of
/// socket (or when the kernel does not say).
fn queued(fd: RawFd) -> u32 {
    // SAFETY: a zeroed tcp_info and its length; the kernel writes at most that much.
    unsafe {
        let mut info: libc::tcp_info = std::mem::zeroed();
        let mut len = std::mem::size_of::<libc::tcp_info>() as libc::socklen_t;
        let rc = libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        );
        // For a listening socket the kernel reports its accept queue's length here.
        if rc == 0 && info.tcpi_state == TCP_LISTEN {
            info.tcpi_unacked
        } else {
            0
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::steer::{now_ms, Counts};
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsRawFd;

    /// `n` clients connected to `addr`, given time to reach its accept queue.
    fn waiting(addr: std::net::SocketAddr, n: u32) -> Vec<TcpStream> {
        let clients = (0..n).map(|_| TcpStream::connect(addr).unwrap()).collect();
        std::thread::sleep(Duration::from_millis(50));
        clients
    }

    #[test]
    fn a_worker_ahead_leaves_connections_to_the_others_for_a_while_then_takes_one() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let map = Counts::anonymous().unwrap();
        map.share_members()
            .store(2, std::sync::atomic::Ordering::Relaxed);
        for m in 0..2 {
            map.share_since(m)
                .unwrap()
                .store(now_ms(), std::sync::atomic::Ordering::Relaxed);
        }
        let member = |m| Arc::new(TurnCounter::new(map.fd.try_clone().unwrap(), m).unwrap());
        let a = SharedAcceptor::new(listener.as_raw_fd(), Some(member(0))).unwrap();
        assert!(matches!(a.next(), Accepted::Empty));
        let _clients = waiting(addr, LEAD + 3);
        // Level with member 1 up to LEAD: it takes.
        for _ in 0..LEAD {
            assert!(matches!(a.next(), Accepted::Connection(_)));
        }
        // Ahead by LEAD, with 2 waiting (fewer than LONG_QUEUE): it leaves the next one to
        // the others for MAX_DEFER, then takes it. (Member 1 took one just now: it is active,
        // however slowly this test runs.)
        map.share_since(1)
            .unwrap()
            .store(now_ms(), std::sync::atomic::Ordering::Relaxed);
        // A caller that looks again sooner than DEFER_FOR still waits MAX_DEFER.
        let started = Instant::now();
        let deferrals = deferrals_until_taken(&a, DEFER_FOR / 5);
        assert!(
            deferrals >= 1 && started.elapsed() >= MAX_DEFER,
            "{deferrals}"
        );
        // A new run of deferrals starts with the next connection; one that looks again at
        // once (a drain before closing) takes after MAX_DEFERRALS looks.
        assert!(deferrals_until_taken(&a, Duration::ZERO) >= 1);
        // One that looked at nothing for longer than MAX_DEFER (the others took what came)
        // starts a new run too, rather than taking at once.
        std::thread::sleep(MAX_DEFER * 2);
        assert!(matches!(a.next(), Accepted::Deferred));
        // Without the share map, it just takes.
        let plain = SharedAcceptor::new(listener.as_raw_fd(), None).unwrap();
        assert!(matches!(plain.next(), Accepted::Connection(_)));
        assert!(matches!(plain.next(), Accepted::Empty));
    }

    /// Whether `TCP_NODELAY` is set on `fd`.
    fn nodelay(fd: RawFd) -> bool {
        let mut on: libc::c_int = 0;
        let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
        // SAFETY: an int option and its length.
        let rc = unsafe {
            libc::getsockopt(
                fd,
                libc::IPPROTO_TCP,
                libc::TCP_NODELAY,
                (&mut on as *mut libc::c_int).cast(),
                &mut len,
            )
        };
        assert_eq!(rc, 0, "{}", io::Error::last_os_error());
        on != 0
    }

    #[test]
    fn connections_accepted_after_no_delay_have_nagle_off_without_a_call_each() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let a = SharedAcceptor::new(listener.as_raw_fd(), None).unwrap();
        let _first = waiting(addr, 1);
        let Accepted::Connection(before) = a.next() else {
            panic!("no connection")
        };
        assert!(!nodelay(before.as_raw_fd()), "Nagle is on by default");
        assert!(a.no_delay().unwrap());
        let _later = waiting(addr, 2);
        for _ in 0..2 {
            let Accepted::Connection(c) = a.next() else {
                panic!("no connection")
            };
            assert!(nodelay(c.as_raw_fd()), "inherited from the listener");
        }
        // A Unix socket has no Nagle: nothing to set, and no error.
        let path = std::env::temp_dir().join(format!("rcluster-nodelay-{}", std::process::id()));
        let _ = std::fs::remove_file(&path);
        let unix = std::os::unix::net::UnixListener::bind(&path).unwrap();
        let u = SharedAcceptor::new(unix.as_raw_fd(), None).unwrap();
        assert!(!u.no_delay().unwrap());
        std::fs::remove_file(&path).unwrap();
    }

    /// A listener, its share map with two members that joined just now, and an acceptor of
    /// each.
    fn two_members() -> (TcpListener, Counts, SharedAcceptor, SharedAcceptor) {
        use std::sync::atomic::Ordering::Relaxed;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let map = Counts::anonymous().unwrap();
        map.share_members().store(2, Relaxed);
        for m in 0..2 {
            map.share_since(m).unwrap().store(now_ms(), Relaxed);
        }
        let member = |m| Arc::new(TurnCounter::new(map.fd.try_clone().unwrap(), m).unwrap());
        let a = SharedAcceptor::new(listener.as_raw_fd(), Some(member(0))).unwrap();
        let b = SharedAcceptor::new(listener.as_raw_fd(), Some(member(1))).unwrap();
        (listener, map, a, b)
    }

    /// Member `m` took its last connection a while ago (more than a tick of the coarse clock).
    fn quiet(map: &Counts, m: u32) {
        map.share_since(m)
            .unwrap()
            .store(now_ms() - 20, std::sync::atomic::Ordering::Relaxed);
    }

    /// The connection `x` takes at this look (panics when it takes none).
    fn take(x: &SharedAcceptor) -> OwnedFd {
        match x.next() {
            Accepted::Connection(c) => c,
            other => panic!("took nothing: {other:?}"),
        }
    }

    #[test]
    fn a_worker_leaves_the_next_connection_to_an_idle_one_whose_turn_it_is() {
        use std::sync::atomic::Ordering::Relaxed;
        let (listener, map, a, b) = two_members();
        let addr = listener.local_addr().unwrap();
        let c1 = waiting(addr, 1);
        // Neither counts what it has in hand: the first to look takes.
        drop((c1, take(&a)));
        // B counts, and has nothing in hand: A, which took more, leaves it the next one and
        // keeps watching (Empty: no pause). It is still there for B.
        quiet(&map, 1);
        assert!(b.count_in_hand());
        assert!(b.count_in_hand(), "a second call keeps counting");
        let _c2 = waiting(addr, 1);
        assert!(matches!(a.next(), Accepted::Empty));
        let second = take(&b);
        assert_eq!(
            map.share_in_hand(1).unwrap().load(Relaxed),
            2,
            "one in hand"
        );
        // Level now, B holding one: A takes the next.
        let _c3 = waiting(addr, 1);
        drop(take(&a));
        // B closes its connection: idle again, and behind.
        drop(second);
        b.closed();
        b.closed(); // one more than it took: never below "none in hand"
        assert_eq!(map.share_in_hand(1).unwrap().load(Relaxed), 1);
        // Two waiting: B takes one, A the other, without waiting.
        let _c4 = waiting(addr, 2);
        drop(take(&a));
        quiet(&map, 1);
        // One waiting, and B does not take it (its loop is busy elsewhere): A, looking again
        // as often as it can (woken again and again), leaves it to B for MAX_DEFER however
        // many looks that is, then takes it, and for IDLE_DISTRUST waits for B no more.
        let started = Instant::now();
        let mut looks = 0;
        loop {
            match a.next() {
                Accepted::Empty => looks += 1,
                Accepted::Connection(_) => break,
                other => panic!("after {looks} looks: {other:?}"),
            }
            assert!(
                started.elapsed() < Duration::from_secs(1),
                "still leaving it"
            );
        }
        assert!(started.elapsed() >= MAX_DEFER, "{looks}");
        // The next one, as soon as it is in the queue: A takes it.
        let _c5 = TcpStream::connect(addr).unwrap();
        let arrived = Instant::now();
        while queued(listener.as_raw_fd()) == 0 {
            assert!(arrived.elapsed() < Duration::from_secs(1), "never queued");
        }
        drop(take(&a));
        std::thread::sleep(IDLE_DISTRUST);
        // As many taken, B longer ago: B's turn. B taking it ends A's wait.
        map.share_taken(1).unwrap().store(3, Relaxed);
        map.share_taken(0).unwrap().store(3, Relaxed);
        map.share_since(0).unwrap().store(now_ms(), Relaxed);
        map.share_since(1).unwrap().store(now_ms() - 20, Relaxed);
        let _c6 = waiting(addr, 1);
        assert!(matches!(a.next(), Accepted::Empty));
        drop(take(&b));
        // A member whose worker left (the primary set its words to 0) is not waited for.
        map.share_in_hand(1).unwrap().store(0, Relaxed);
        std::thread::sleep(MAX_DEFER * 2);
        let _c7 = waiting(addr, 1);
        drop(take(&a));
        // A map without the words (an older primary's) counts nothing.
        let old = TurnCounter::new(old_map(), 0).unwrap();
        assert!(!old.count_in_hand());
    }

    #[test]
    fn a_worker_with_more_in_hand_leaves_connections_to_one_with_fewer_even_at_a_long_queue() {
        use std::sync::atomic::Ordering::Relaxed;
        let (listener, map, a, b) = two_members();
        let addr = listener.local_addr().unwrap();
        assert!(a.count_in_hand() && b.count_in_hand());
        // A burst of kept-alive clients: so many wait that the lead in connections taken
        // does not hold (LONG_QUEUE).
        let _clients = waiting(addr, LONG_QUEUE + IN_HAND_LEAD + 8);
        let mut kept = Vec::new();
        for _ in 0..IN_HAND_LEAD {
            kept.push(take(&a));
        }
        // IN_HAND_LEAD in hand beyond B's none: A leaves the next one to B (and stops
        // watching for a moment), LONG_QUEUE or more waiting.
        assert!(queued(listener.as_raw_fd()) >= LONG_QUEUE);
        assert!(matches!(a.next(), Accepted::Deferred));
        kept.push(take(&b));
        // B has one now: A may take again, up to IN_HAND_LEAD beyond it.
        kept.push(take(&a));
        assert_eq!(
            map.share_in_hand(0).unwrap().load(Relaxed),
            1 + IN_HAND_LEAD as i64 + 1
        );
        // B takes no more (its loop is busy elsewhere): A leaves it the next one for
        // MAX_DEFER, then takes it, and for IDLE_DISTRUST waits for B no more.
        let started = Instant::now();
        let deferrals = deferrals_until_taken(&a, DEFER_FOR / 5);
        assert!(
            deferrals >= 1 && started.elapsed() >= MAX_DEFER,
            "{deferrals}"
        );
        kept.push(take(&a));
        // Its connections closing bring A level again: it takes at once, trusted or not.
        std::thread::sleep(IDLE_DISTRUST);
        for _ in 0..4 {
            a.closed();
        }
        kept.push(take(&a));
        // None closed lately: the rule holds again (see the test below).
        std::thread::sleep(CLOSED_LATELY);
        // One that does not count what it has in hand is not waited for.
        map.share_in_hand(1).unwrap().store(0, Relaxed);
        kept.push(take(&a));
        kept.push(take(&a));
        // B counting again with none in hand, A far ahead: with BATCH_QUEUE waiting, every
        // worker is taking, and A takes too (it would idle while they wait).
        map.share_in_hand(1).unwrap().store(1, Relaxed);
        let _crowd = waiting(addr, BATCH_QUEUE);
        assert!(queued(listener.as_raw_fd()) >= BATCH_QUEUE);
        kept.push(take(&a));
        assert!(kept.len() >= 10);
    }

    #[test]
    fn a_worker_does_not_wait_for_an_idle_one_that_took_a_connection_a_moment_ago() {
        use std::sync::atomic::Ordering::Relaxed;
        let (listener, map, a, b) = two_members();
        let addr = listener.local_addr().unwrap();
        assert!(a.count_in_hand() && b.count_in_hand());
        let _c1 = waiting(addr, 1);
        drop(take(&a));
        a.closed();
        // B has nothing in hand and took fewer, but it took one in this tick of the clock:
        // between the requests of a busy run, not idle. A takes the next at once.
        let mut kept = vec![waiting(addr, 1)];
        for tried in 0.. {
            let tick = now_ms();
            map.share_since(1).unwrap().store(tick, Relaxed);
            let next = a.next();
            if now_ms() == tick {
                assert!(matches!(next, Accepted::Connection(_)), "{next:?}");
                break;
            }
            // The tick ended in between (B quiet then): clear the queue and look again.
            if !matches!(next, Accepted::Connection(_)) {
                drop(take(&b));
            }
            assert!(tried < 5, "no look came within a tick of the clock");
            kept.push(waiting(addr, 1));
        }
        // B writes a time to come as its last (a worker lying in the map): never quiet, so
        // never waited for.
        map.share_since(1).unwrap().store(i64::MAX, Relaxed);
        let _lie = waiting(addr, 1);
        drop(take(&a));
        a.closed();
        // The same a while later, B having taken fewer: B is idle, and A leaves it the next.
        map.share_taken(1).unwrap().store(0, Relaxed);
        quiet(&map, 1);
        let _c3 = waiting(addr, 1);
        assert!(matches!(a.next(), Accepted::Empty));
        drop(take(&b));
    }

    #[test]
    fn a_worker_whose_connections_close_takes_the_next_though_it_has_more_in_hand() {
        use std::sync::atomic::Ordering::Relaxed;
        let (listener, map, a, b) = two_members();
        assert!(a.count_in_hand() && b.count_in_hand());
        let _clients = waiting(listener.local_addr().unwrap(), IN_HAND_LEAD + 8);
        let mut kept: Vec<OwnedFd> = (0..IN_HAND_LEAD).map(|_| take(&a)).collect();
        let hold = |n: u32| {
            map.share_in_hand(0)
                .unwrap()
                .store(1 + i64::from(n), Relaxed)
        };
        // A holds IN_HAND_LEAD + 1, B none, and one of A's closes (as wrk's first connection
        // before its burst does): A, still IN_HAND_LEAD ahead, leaves the next one to B.
        hold(IN_HAND_LEAD + 1);
        a.closed();
        assert!(matches!(a.next(), Accepted::Deferred));
        // A new connection per request: CLOSES_LATELY of A's connections close, A still
        // IN_HAND_LEAD ahead. A takes the next at once: what it holds is this moment's
        // backlog, and B may not be running to take it.
        for tried in 0.. {
            let since = Instant::now();
            for _ in 0..CLOSES_LATELY {
                a.closed();
            }
            hold(IN_HAND_LEAD);
            let next = a.next();
            if since.elapsed() < CLOSED_LATELY {
                assert!(matches!(next, Accepted::Connection(_)), "{next:?}");
                break;
            }
            // Preempted for longer than CLOSED_LATELY in between: again.
            assert!(
                tried < 5,
                "no look came within {CLOSED_LATELY:?} of the closes"
            );
        }
        // None closed lately: A leaves the next one to B, as for kept-alive connections.
        std::thread::sleep(CLOSED_LATELY);
        hold(IN_HAND_LEAD);
        assert!(matches!(a.next(), Accepted::Deferred));
        kept.push(take(&b));
    }

    /// Looks of `a` until it takes a connection, `pause` apart: how many were deferred (never
    /// more than MAX_DEFERRALS in a row).
    fn deferrals_until_taken(a: &SharedAcceptor, pause: Duration) -> u32 {
        let mut looks = 0;
        loop {
            match a.next() {
                Accepted::Deferred => looks += 1,
                Accepted::Connection(_) => return looks,
                other => panic!("after {looks} deferrals: {other:?}"),
            }
            assert!(
                looks <= MAX_DEFERRALS,
                "still deferring after {looks} looks"
            );
            std::thread::sleep(pause);
        }
    }

    /// A share map of the size an older primary made (no words for connections in hand).
    fn old_map() -> OwnedFd {
        // SAFETY: a new descriptor, owned from here on.
        let fd = unsafe { libc::memfd_create(c"old".as_ptr(), libc::MFD_CLOEXEC) };
        assert!(fd >= 0);
        // SAFETY: as above.
        let fd = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd) };
        // SAFETY: resizes the memfd owned here.
        assert_eq!(unsafe { libc::ftruncate(fd.as_raw_fd(), 24 * 1024) }, 0);
        fd
    }

    #[test]
    fn a_worker_takes_several_connections_a_look_only_while_a_long_queue_waits() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        let a = SharedAcceptor::new(listener.as_raw_fd(), None).unwrap();
        let few = waiting(addr, 3);
        assert!(matches!(a.next(), Accepted::Connection(_)));
        assert_eq!(a.more(), 0, "3 waiting: one a look");
        while matches!(a.next(), Accepted::Connection(_)) {}
        drop(few);
        let many = waiting(addr, BATCH_QUEUE + 8);
        // The queue is looked at again after QUEUE_LOOK_EVERY calls: until then, one a look.
        for _ in 1..QUEUE_LOOK_EVERY {
            assert!(matches!(a.next(), Accepted::Connection(_)));
            assert_eq!(a.more(), 0);
        }
        assert!(matches!(a.next(), Accepted::Connection(_)));
        assert_eq!(
            a.more(),
            MAX_BATCH - 1,
            "BATCH_QUEUE waiting: several a look"
        );
        drop(many);
    }
}
