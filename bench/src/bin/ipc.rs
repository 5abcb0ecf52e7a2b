//! IPC figures: a one-way stream of 32-byte messages (primary → worker) and round trips
//! (primary send → worker echo → primary `next_event`).
//!
//! Usage: `ipc [messages] [round_trips] [stream_repeats]` (defaults 2000000 50000 3).
//! Output lines mirror the anchors' (`stream: ... msg/s`, `rtt: p50 ... us p99 ... us`).
//!
//! After the figures come diagnostics (`rtt-diag:` lines, a fifth as many round trips each):
//! the round trip split into legs by CLOCK_MONOTONIC stamps from the worker, and the same
//! round trip with other ways of waiting for the reply, to show where the time goes. The
//! figure itself is taken in blocks that alternate with blocks of raw socketpair round trips
//! (a forked echo process, as in the anchor), so that both see the same machine: on a shared
//! virtual machine the raw figure alone moves by a factor of five between runs.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use rcluster_bench::{mono_ns, quantile, send_retrying, wait_ready, worker_path, MSG_SIZE};
use rcluster_core::{Config, Event, Supervisor};

const STOP_TIMEOUT: Duration = Duration::from_secs(5);
/// No single wait may hang the benchmark: a lost reply is a failure, not a slow figure.
const REPLY_TIMEOUT: Duration = Duration::from_secs(30);
const WARMUP_ROUND_TRIPS: usize = 1000;
/// Round trips per block when rcluster and the raw socketpair take turns.
const BLOCK: usize = 1000;

fn arg(i: usize, default: usize) -> usize {
    std::env::args().nth(i).map_or(default, |a| {
        a.parse()
            .unwrap_or_else(|_| panic!("argument {i} must be a number, got {a:?}"))
    })
}

fn start(mode: &str) -> Supervisor {
    let worker = worker_path();
    let mut cfg = Config::new([worker.as_os_str(), mode.as_ref()]);
    cfg.workers = 1;
    let sup = Supervisor::start(cfg).expect("starting the supervisor");
    wait_ready(&sup, 0, Duration::from_secs(10));
    sup
}

/// How the host waits for a reply.
#[derive(Clone, Copy, Debug)]
enum Wait {
    /// `next_event(timeout)`: what the figure uses.
    NextEvent,
    /// `poll` on `event_fd`, then `try_next_event`: how a host event loop waits.
    PollFd,
    /// `try_next_event` in a busy loop: the reply path without any wake-up of the host thread.
    Spin,
}

fn next_event(sup: &Supervisor, how: Wait, deadline: Instant) -> Option<Event> {
    loop {
        let left = deadline.checked_duration_since(Instant::now())?;
        match how {
            Wait::NextEvent => return sup.next_event(Some(left)),
            Wait::PollFd => {
                if let Some(ev) = sup.try_next_event() {
                    return Some(ev);
                }
                let mut pfd = libc::pollfd {
                    fd: sup.event_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                let ms = left.as_millis().clamp(1, i32::MAX as u128) as i32;
                // SAFETY: one valid pollfd for the duration of the call.
                unsafe { libc::poll(&mut pfd, 1, ms) };
            }
            Wait::Spin => {
                if let Some(ev) = sup.try_next_event() {
                    return Some(ev);
                }
                std::hint::spin_loop();
            }
        }
    }
}

/// The next user message from a worker; other events (none are expected) are skipped.
fn next_message(sup: &Supervisor, how: Wait) -> Vec<u8> {
    let deadline = Instant::now() + REPLY_TIMEOUT;
    loop {
        match next_event(sup, how, deadline) {
            Some(Event::Message { data, .. }) => return data,
            Some(Event::Exit { info, .. }) => panic!("the bench worker exited: {info:?}"),
            Some(_) => {}
            None => panic!("no reply from the worker within 30 s"),
        }
    }
}

/// One timed stream of `n` messages; the clock stops when the worker has counted them all.
fn stream_once(sup: &Supervisor, n: usize) -> f64 {
    let msg = [b'x'; MSG_SIZE];
    let t0 = Instant::now();
    for _ in 0..n {
        send_retrying(sup, 0, &msg).expect("sending to the count worker");
    }
    send_retrying(sup, 0, b"end").expect("sending end");
    let reply = next_message(sup, Wait::NextEvent);
    let dt = t0.elapsed().as_secs_f64();
    let got: usize = std::str::from_utf8(&reply)
        .ok()
        .and_then(|s| s.parse().ok())
        .expect("count worker answers a number");
    assert_eq!(got, n, "the worker counted {got} of {n} messages");
    dt
}

fn stream(n: usize, repeats: usize) {
    let sup = start("count");
    let mut rates = Vec::with_capacity(repeats);
    for _ in 0..repeats {
        let dt = stream_once(&sup, n);
        let rate = n as f64 / dt;
        println!("stream: {n} msgs of {MSG_SIZE} B in {dt:.3} s = {rate:.0} msg/s");
        rates.push(rate);
    }
    rates.sort_by(f64::total_cmp);
    println!(
        "stream median: {:.0} msg/s (of {repeats} runs)",
        quantile(&rates, 0.5)
    );
    sup.stop(STOP_TIMEOUT).expect("stopping the supervisor");
}

/// A forked process that echoes 32-byte frames over a socketpair: the anchor's round trip,
/// measured inside this process so that it can alternate with rcluster's. Forked before any
/// supervisor thread exists, so the child is single-threaded.
struct RawEcho {
    fd: OwnedFd,
    pid: libc::pid_t,
}

impl RawEcho {
    fn start() -> RawEcho {
        let mut sv = [0; 2];
        // SAFETY: sv is a valid out-array of two descriptors.
        assert_eq!(
            unsafe {
                libc::socketpair(
                    libc::AF_UNIX,
                    libc::SOCK_STREAM | libc::SOCK_CLOEXEC,
                    0,
                    sv.as_mut_ptr(),
                )
            },
            0
        );
        // SAFETY: no other thread exists yet; the child only makes raw syscalls and _exits.
        let pid = unsafe { libc::fork() };
        assert!(pid >= 0, "fork failed");
        if pid == 0 {
            // SAFETY: the child's own descriptors; buf outlives the calls.
            unsafe {
                libc::close(sv[0]);
                let mut buf = [0u8; MSG_SIZE];
                while read_full(sv[1], &mut buf)
                    && libc::write(sv[1], buf.as_ptr().cast(), MSG_SIZE) == MSG_SIZE as isize
                {
                }
                libc::_exit(0);
            }
        }
        // SAFETY: sv[1] is the child's end, not used again here; sv[0] is ours alone.
        unsafe { libc::close(sv[1]) };
        RawEcho {
            fd: unsafe { OwnedFd::from_raw_fd(sv[0]) },
            pid,
        }
    }

    fn round_trips(&self, n: usize, out: &mut Vec<f64>) {
        let msg = [b'r'; MSG_SIZE];
        let mut buf = [0u8; MSG_SIZE];
        for _ in 0..n {
            let a = Instant::now();
            // SAFETY: valid buffer and descriptor.
            let w = unsafe { libc::write(self.fd.as_raw_fd(), msg.as_ptr().cast(), MSG_SIZE) };
            assert!(
                w == MSG_SIZE as isize && read_full(self.fd.as_raw_fd(), &mut buf),
                "raw echo failed"
            );
            out.push(a.elapsed().as_secs_f64() * 1e6);
        }
    }

    fn stop(self) {
        let pid = self.pid;
        drop(self.fd);
        // SAFETY: reaps our own child, which exits on EOF.
        unsafe { libc::waitpid(pid, std::ptr::null_mut(), 0) };
    }
}

fn read_full(fd: libc::c_int, buf: &mut [u8]) -> bool {
    let mut got = 0;
    while got < buf.len() {
        // SAFETY: writes within buf.
        let r = unsafe { libc::read(fd, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        if r <= 0 {
            return false;
        }
        got += r as usize;
    }
    true
}

fn print_quantiles(label: &str, lat: &mut [f64]) {
    lat.sort_by(f64::total_cmp);
    println!(
        "{label}: p50 {:.1} us p90 {:.1} us p99 {:.1} us p99.9 {:.1} us ({} round trips)",
        quantile(lat, 0.5),
        quantile(lat, 0.9),
        quantile(lat, 0.99),
        quantile(lat, 0.999),
        lat.len()
    );
}

/// `rt` timed round trips after `warmup` untimed ones; latencies in microseconds.
fn round_trips(sup: &Supervisor, warmup: usize, rt: usize, how: Wait) -> Vec<f64> {
    let msg = [b'p'; MSG_SIZE];
    let mut lat = Vec::with_capacity(rt);
    for i in 0..warmup + rt {
        let a = Instant::now();
        sup.send(0, &msg).expect("sending to the echo worker");
        let reply = next_message(sup, how);
        let us = a.elapsed().as_secs_f64() * 1e6;
        assert_eq!(reply.len(), MSG_SIZE, "echo changed the message");
        if i >= warmup {
            lat.push(us);
        }
    }
    lat
}

/// Splits round trips into legs with the worker's stamps: host `send` call, send → worker
/// has the message, worker's turnaround, worker's send → `next_event` returns.
fn round_trip_legs(sup: &Supervisor, rt: usize) {
    let msg = [b'p'; MSG_SIZE];
    let mut legs: [Vec<f64>; 4] = Default::default();
    for i in 0..WARMUP_ROUND_TRIPS + rt {
        let t0 = mono_ns();
        sup.send(0, &msg).expect("sending to the echo worker");
        let t1 = mono_ns();
        let reply = next_message(sup, Wait::NextEvent);
        let t4 = mono_ns();
        let t2 = u64::from_le_bytes(reply[..8].try_into().expect("8 bytes"));
        let t3 = u64::from_le_bytes(reply[8..16].try_into().expect("8 bytes"));
        if i >= WARMUP_ROUND_TRIPS {
            for (leg, (from, to)) in legs
                .iter_mut()
                .zip([(t0, t1), (t0, t2), (t2, t3), (t3, t4)])
            {
                leg.push(to.saturating_sub(from) as f64 / 1e3);
            }
        }
    }
    let names = [
        "host send() call",
        "send -> worker has it",
        "worker turnaround",
        "worker send -> next_event returns",
    ];
    for (name, leg) in names.iter().zip(legs.iter_mut()) {
        leg.sort_by(f64::total_cmp);
        println!(
            "rtt-diag: leg {name}: p50 {:.1} us p90 {:.1} us",
            quantile(leg, 0.5),
            quantile(leg, 0.9)
        );
    }
}

/// Round trips in alternating blocks: rcluster with `next_event` (the figure), the raw
/// socketpair, and rcluster with the other ways of waiting (a fifth as many each).
fn rtt(rt: usize, raw: RawEcho) {
    let sup = start("echo");
    let ways = [Wait::PollFd, Wait::Spin];
    let mut ours = Vec::with_capacity(rt);
    let mut theirs = Vec::with_capacity(rt);
    let mut other: [Vec<f64>; 2] = Default::default();
    round_trips(&sup, WARMUP_ROUND_TRIPS, 0, Wait::NextEvent);
    raw.round_trips(WARMUP_ROUND_TRIPS, &mut Vec::new());
    let mut done = 0;
    while done < rt {
        let n = BLOCK.min(rt - done);
        ours.extend(round_trips(&sup, 0, n, Wait::NextEvent));
        raw.round_trips(n, &mut theirs);
        for (how, lat) in ways.iter().zip(other.iter_mut()) {
            lat.extend(round_trips(&sup, 0, n.div_ceil(5), *how));
        }
        done += n;
    }
    raw.stop();
    print_quantiles("rtt", &mut ours);
    print_quantiles(
        "rtt-diag: raw socketpair, interleaved with the above",
        &mut theirs,
    );
    println!(
        "rtt-diag: interleaved ratio p50 {:.2}x",
        quantile(&ours, 0.5) / quantile(&theirs, 0.5)
    );
    print_quantiles(
        "rtt-diag: wait by poll(event_fd) + try_next_event, interleaved",
        &mut other[0],
    );
    print_quantiles(
        "rtt-diag: wait by busy try_next_event, interleaved",
        &mut other[1],
    );
    sup.stop(STOP_TIMEOUT).expect("stopping the supervisor");
    let sup = start("echo-stamp");
    round_trip_legs(&sup, (rt / 5).max(1));
    sup.stop(STOP_TIMEOUT).expect("stopping the supervisor");
}

fn main() {
    let n = arg(1, 2_000_000);
    let rt = arg(2, 50_000);
    let repeats = arg(3, 3).max(1);
    let raw = RawEcho::start();
    stream(n, repeats);
    rtt(rt, raw);
}
