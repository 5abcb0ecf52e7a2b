use super::*;
use std::net::{SocketAddr, TcpStream};

/// A listening `SO_REUSEPORT` socket on 127.0.0.1:`port` (0: any), and its port.
fn listener(port: u16) -> (OwnedFd, u16) {
    let sa: SocketAddr = format!("127.0.0.1:{port}").parse().unwrap();
    let fd = crate::sys::listen::bind_reuseport(&sa).unwrap();
    let port = match crate::sys::listen::local_addr(
        fd.as_raw_fd(),
        &crate::sys::listen::ListenAddr::Tcp(sa),
    ) {
        crate::sys::listen::ListenAddr::Tcp(a) => a.port(),
        _ => unreachable!(),
    };
    (fd, port)
}

fn pending(fd: &OwnedFd) -> usize {
    let mut n = 0;
    while crate::sys::listen::accept(fd.as_raw_fd())
        .unwrap()
        .is_some()
    {
        n += 1;
    }
    n
}

fn steer() -> Option<Steer> {
    match Steer::new() {
        Ok(s) => Some(s),
        Err(e) if e.raw_os_error() == Some(libc::EPERM) => {
            eprintln!("skipped: loading a BPF program needs CAP_BPF ({e})");
            None
        }
        Err(e) => panic!("loading the program: {e}"),
    }
}

fn connect(port: u16, n: usize) -> Vec<TcpStream> {
    let clients = (0..n)
        .map(|_| TcpStream::connect(("127.0.0.1", port)).unwrap())
        .collect();
    std::thread::sleep(std::time::Duration::from_millis(50));
    clients
}

/// A program with the fallback attached and turns over new sockets of one port, one per entry
/// of `entries`: the program, the fallback, the turns' sockets and the port. None without
/// CAP_BPF.
fn turns(entries: &[u32]) -> Option<(Steer, OwnedFd, Vec<OwnedFd>, u16)> {
    let mut steer = steer()?;
    let (fallback, port) = listener(0);
    let socks: Vec<OwnedFd> = entries.iter().map(|_| listener(port).0).collect();
    steer.attach(fallback.as_raw_fd()).unwrap();
    let turn: Vec<(RawFd, u32)> = socks
        .iter()
        .zip(entries)
        .map(|(s, e)| (s.as_raw_fd(), *e))
        .collect();
    steer.set(&turn).unwrap();
    Some((steer, fallback, socks, port))
}

/// A worker that counts its accepts has been given `n` connections it has not taken.
fn busy(steer: &Steer, member: u32, n: i64) {
    steer
        .counts
        .get(member)
        .unwrap()
        .store(n, Ordering::Relaxed);
}

#[test]
fn a_busy_worker_is_passed_over_for_the_next_until_the_counts_are_even() {
    let Some((steer, fallback, socks, port)) = turns(&[3 | TRACKED, 7 | TRACKED]) else {
        return;
    };
    let [a, b] = socks.as_slice() else {
        unreachable!()
    };
    busy(&steer, 3, 5);
    let _c = connect(port, 10);
    // b takes every connection until it has as many waiting as a (5 + 1: ties go to the
    // turn's), then they alternate.
    assert_eq!([pending(&fallback), pending(a), pending(b)], [0, 2, 8]);
    assert_eq!((steer.count(3), steer.count(7)), (7, 8));

    // The worker took them all: both even again, strict turns.
    busy(&steer, 3, 0);
    busy(&steer, 7, 0);
    let _c = connect(port, 10);
    assert_eq!([pending(&fallback), pending(a), pending(b)], [0, 5, 5]);
}

#[test]
fn a_less_busy_worker_that_took_too_many_ahead_waits_for_its_turn() {
    let Some((steer, fallback, socks, port)) = turns(&[TRACKED, 1 | TRACKED]) else {
        return;
    };
    let [a, b] = socks.as_slice() else {
        unreachable!()
    };
    busy(&steer, 0, 50);
    let given = |m| steer.counts.given(m).unwrap();
    given(0).store(1000, Ordering::Relaxed);
    given(1).store(1000 + i64::from(MAX_LEAD), Ordering::Relaxed);
    let _c = connect(port, 10);
    // b is idle and a busy, but b is MAX_LEAD ahead: strict turns.
    assert_eq!([pending(&fallback), pending(a), pending(b)], [0, 5, 5]);
    assert_eq!(
        given(1).load(Ordering::Relaxed) - given(0).load(Ordering::Relaxed),
        i64::from(MAX_LEAD)
    );

    // One short of it: b takes one out of turn, and then waits again.
    given(1).store(
        given(0).load(Ordering::Relaxed) + i64::from(MAX_LEAD) - 1,
        Ordering::Relaxed,
    );
    let _c = connect(port, 3);
    assert_eq!([pending(&fallback), pending(a), pending(b)], [0, 1, 2]);

    // A member given to a new worker starts level with the one furthest ahead.
    steer.reset(0);
    assert_eq!(
        (steer.count(0), given(0).load(Ordering::Relaxed)),
        (0, given(1).load(Ordering::Relaxed))
    );
}

#[test]
fn a_worker_that_lies_about_its_count_gets_max_lead_more_and_no_more() {
    let Some((steer, fallback, socks, port)) = turns(&[TRACKED, 1 | TRACKED]) else {
        return;
    };
    let [a, b] = socks.as_slice() else {
        unreachable!()
    };
    // b's worker writes a count far below anything real (it is the workers' memory): it
    // looks less busy than a at every turn.
    busy(&steer, 1, -1_000_000);
    let n = 2 * MAX_LEAD as usize + 10;
    let _c = connect(port, n);
    let (got_a, got_b) = (pending(a), pending(b));
    assert_eq!(pending(&fallback), 0);
    assert_eq!(got_a + got_b, n);
    // b takes every connection until it is MAX_LEAD ahead; then the turns are strict.
    let lead = got_b as i64 - got_a as i64;
    assert!(
        (i64::from(MAX_LEAD) - 1..=i64::from(MAX_LEAD) + 1).contains(&lead),
        "a got {got_a}, b {got_b}"
    );
}

#[test]
fn turns_stay_even_over_workers_that_count_when_none_is_busier() {
    let Some((steer, fallback, socks, port)) = turns(&[TRACKED, 1 | TRACKED, 2 | TRACKED]) else {
        return;
    };
    // Nobody accepts: every count grows, by the same in each round.
    let _c = connect(port, 30);
    let got: Vec<usize> = socks.iter().map(pending).collect();
    assert_eq!((pending(&fallback), got), (0, vec![10, 10, 10]));
    assert_eq!((0..3).map(|m| steer.count(m)).collect::<Vec<_>>(), [10; 3]);
}

#[test]
fn a_worker_that_does_not_count_keeps_strict_turns() {
    // a does not count; b counts and looks busy; c counts and is idle.
    let Some((steer, fallback, socks, port)) = turns(&[0, 1 | TRACKED, 2 | TRACKED]) else {
        return;
    };
    let [a, b, c] = socks.as_slice() else {
        unreachable!()
    };
    busy(&steer, 1, 100);
    let _c = connect(port, 12);
    // a keeps every third connection; b's go to c; c's turn is c's (a, after it, does
    // not count, so no comparison).
    assert_eq!(
        [pending(&fallback), pending(a), pending(b), pending(c)],
        [0, 4, 0, 8]
    );
    assert_eq!(
        (steer.count(0), steer.count(1), steer.count(2)),
        (0, 100, 8)
    );
}

#[test]
fn a_turn_counter_takes_one_off_its_members_count() {
    let Some(steer) = steer() else { return };
    busy(&steer, 5, 3);
    let counter = TurnCounter::new(steer.counts_fd().unwrap(), 5).unwrap();
    counter.done();
    assert_eq!((steer.count(5), steer.count(4)), (2, 0));
    steer.reset(5);
    assert_eq!(steer.count(5), 0);
    assert!(TurnCounter::new(steer.counts_fd().unwrap(), MAX_SOCKETS).is_err());
}

#[test]
fn connections_take_turns_over_the_sockets_in_the_array() {
    let Some(mut steer) = steer() else { return };
    let (fallback, port) = listener(0);
    let (a, _) = listener(port);
    let (b, _) = listener(port);
    let (c, _) = listener(port);
    steer.attach(fallback.as_raw_fd()).unwrap();
    let mut clients = Vec::new();
    let mut connect = |n: usize| {
        for _ in 0..n {
            clients.push(TcpStream::connect(("127.0.0.1", port)).unwrap());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let counts = || [pending(&fallback), pending(&a), pending(&b), pending(&c)];

    steer
        .set(&[(a.as_raw_fd(), 0), (b.as_raw_fd(), 1), (c.as_raw_fd(), 2)])
        .unwrap();
    connect(30);
    assert_eq!(counts(), [0, 10, 10, 10]);

    // Two of three: the second socket gets nothing from now on.
    steer
        .set(&[(c.as_raw_fd(), 2), (a.as_raw_fd(), 0)])
        .unwrap();
    connect(20);
    assert_eq!(counts(), [0, 10, 0, 10]);

    // None taking turns: everything goes to the fallback socket, none to the others.
    steer.set(&[]).unwrap();
    connect(12);
    assert_eq!(counts(), [12, 0, 0, 0]);
}

#[test]
fn placed_counts_every_connection_a_member_socket_was_given_tracked_or_not() {
    let Some(mut steer) = steer() else { return };
    let (fallback, port) = listener(0);
    let (a, _) = listener(port);
    let (b, _) = listener(port);
    steer.attach(fallback.as_raw_fd()).unwrap();
    // a's worker counts (and is busy: b is preferred until even); b's worker does not.
    steer
        .set(&[(a.as_raw_fd(), 2 | TRACKED), (b.as_raw_fd(), 5)])
        .unwrap();
    busy(&steer, 2, 3);
    let _c = connect(port, 9);
    let (na, nb) = (pending(&a), pending(&b));
    assert_eq!((na + nb, pending(&fallback)), (9, 0));
    assert_eq!((steer.placed(2), steer.placed(5)), (na as u64, nb as u64));
    // With no socket taking turns, the fallback takes them, and nothing is placed.
    steer.set(&[]).unwrap();
    let _c = connect(port, 3);
    assert_eq!(pending(&fallback), 3);
    assert_eq!(steer.placed(2) + steer.placed(5), 9);
}

#[test]
fn a_share_map_says_which_member_is_ahead_of_the_active_ones() {
    use std::sync::atomic::Ordering::Relaxed;
    let map = Counts::anonymous().unwrap();
    let member = |m: u32| TurnCounter::new(map.fd.try_clone().unwrap(), m).unwrap();
    let (a, b, c) = (member(0), member(1), member(2));
    let join = |m: u32| map.share_since(m).unwrap().store(now_ms(), Relaxed);
    map.share_members().store(3, Relaxed);
    // Alone: never ahead, whatever it took.
    join(0);
    for _ in 0..20 {
        a.took();
    }
    assert!(!a.ahead(16));
    // Member 1 joins at 0: member 0 is 20 ahead of it. Active (it just joined), member 1
    // keeps its count however far behind: the others leave it its share.
    join(1);
    assert!(a.ahead(16) && !a.ahead(21));
    assert!(!b.ahead(16));
    assert_eq!(map.share_taken(1).unwrap().load(Relaxed), 0);
    // Idle for longer than ACTIVE_MS (stuck), it is moved up to 16 behind when it looks.
    let idle = now_ms() - ACTIVE_MS - 10;
    map.share_since(1).unwrap().store(idle, Relaxed);
    assert!(!b.ahead(16));
    assert_eq!(map.share_taken(1).unwrap().load(Relaxed), 4);
    join(1);
    assert!(a.ahead(16) && !a.ahead(17));
    b.took();
    assert!(!a.ahead(16) && a.ahead(15));
    // A member nobody holds is not waited for, whatever it took.
    assert_eq!(map.share_taken(2).unwrap().load(Relaxed), 0);
    assert_eq!(map.share_least(Some(0), now_ms()), Some(5));
    assert!(!c.ahead(1) && a.ahead(15));
    // Nor one that took nothing for longer than ACTIVE_MS: its worker is stuck.
    map.share_since(1)
        .unwrap()
        .store(now_ms() - ACTIVE_MS - 10, Relaxed);
    assert!(!a.ahead(1));
    assert_eq!(map.share_least(None, now_ms()), Some(20));
    map.share_since(1).unwrap().store(0, Relaxed);
    assert_eq!(map.share_least(Some(0), now_ms()), None);
    assert!(map.share_taken(MAX_SOCKETS).is_none());
}
