//! Round-robin listeners turned by the kernel (see `steer`): one socket per worker, the turns
//! kept to the workers that serve (ready, not stopping), the primary's own socket taking what
//! no turn places, and the sockets no worker listens on any more (gone, or closed its server)
//! served by the primary itself.

use std::collections::BTreeMap;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};

use super::metrics::Ops;
use super::process::Process;
use super::Primary;
use crate::config::Config;
use crate::events::{Event, WorkerState};
use crate::sys;
use crate::sys::listen::{self, Dispatch, ListenAddr};
use crate::sys::steer::{self, Steer};

/// Member sockets' tokens in the epoll set: this bit, the listener's index << 24 and the
/// member's index.
pub(super) const STEERED: u64 = 1 << 61;

/// The kernel's round-robin of one listener.
pub struct Group {
    steer: Steer,
    members: Vec<Member>,
    /// The sockets taking turns now, in order, with their entries (see `Steer::set`).
    turn: Vec<(RawFd, u32)>,
}

/// One socket of the group. It outlives its worker: a worker that dies (or stops listening)
/// leaves connections queued in it, which the primary accepts and hands over, and the next
/// worker to ask for the listener gets the socket, so that the group never grows past the most
/// workers at once.
struct Member {
    fd: OwnedFd,
    /// The worker listening on it; None while nobody does.
    worker: Option<u64>,
    /// In the primary's epoll set (no worker listens on it).
    armed: bool,
    /// Its worker takes one off the member's count per connection from it it is done with.
    counts: bool,
    /// What the program had placed in its socket (`Steer::placed`) when last looked at: what
    /// it placed since goes to the worker's count (`harvest_turns`).
    placed_seen: u64,
}

impl Group {
    /// A group around the listener `fd` (bound with `SO_REUSEPORT`); fails when the kernel
    /// does not let this process load the program.
    pub fn new(fd: RawFd) -> std::io::Result<Group> {
        let steer = Steer::new()?;
        steer.attach(fd)?;
        Ok(Group {
            steer,
            members: Vec::new(),
            turn: Vec::new(),
        })
    }
}

impl Group {
    /// Every socket of the group but the listener's own.
    pub(super) fn member_fds(&self) -> impl Iterator<Item = RawFd> + '_ {
        self.members.iter().map(|m| m.fd.as_raw_fd())
    }
}

/// Whether a listener of this kind would be turned by the kernel under `cfg`.
pub(crate) fn wanted(cfg: &Config, dispatch: Dispatch, addr: &ListenAddr) -> bool {
    cfg.kernel_round_robin
        && dispatch == Dispatch::RoundRobin
        && cfg.max_inflight.is_none()
        && matches!(addr, ListenAddr::Tcp(_))
}

/// Binds a listener, for the kernel's turns when `turns` says so and the kernel lets this
/// process load the program. `refused` keeps why it did not (and then no more tries are made).
/// With `share` the address may be shared with other processes, and is never turned by the
/// kernel: another process's program would take over the turns of the whole group.
pub(crate) fn bind(
    addr: &ListenAddr,
    dispatch: Dispatch,
    turns: bool,
    share: bool,
    refused: &mut Option<String>,
) -> crate::error::Result<(OwnedFd, Option<Group>)> {
    let fail = |e| crate::error::Error::Bind {
        addr: addr.to_string(),
        source: e,
    };
    if let (true, false, None, ListenAddr::Tcp(sa)) = (turns, share, &refused, addr) {
        // The group's sockets need SO_REUSEPORT, which would let this one join a group some
        // other process listens with: refuse an address in use first.
        listen::ensure_free(sa).map_err(fail)?;
        let fd = listen::bind_reuseport(sa).map_err(fail)?;
        match Group::new(fd.as_raw_fd()) {
            Ok(g) => return Ok((fd, Some(g))),
            // The socket is closed and bound again without SO_REUSEPORT: no other process
            // may join a group without a program.
            Err(e) => *refused = Some(e.to_string()),
        }
    }
    Ok((listen::bind(addr, dispatch, share)?, None))
}

impl Primary {
    /// Gives worker `key` a socket of listener `index`'s group (the one it has, a free one, or
    /// a new one) and returns a copy of it to send, with, for a worker that `counts` its
    /// connections, the count map and its member's index in it.
    pub(super) fn join_group(
        &mut self,
        index: usize,
        key: u64,
        counts: bool,
    ) -> Result<(OwnedFd, Option<(OwnedFd, u32)>), String> {
        let l = &mut self.listeners[index];
        let addr = l.addr.clone();
        let g = l.group.as_mut().expect("a kernel round-robin listener");
        let at = match g.members.iter().position(|m| m.worker == Some(key)) {
            Some(i) => i,
            None => match g.members.iter().position(|m| m.worker.is_none()) {
                Some(i) => i,
                None => {
                    let ListenAddr::Tcp(sa) = &addr else {
                        unreachable!("groups are TCP only")
                    };
                    let fd = listen::bind_reuseport(sa).map_err(|e| {
                        format!("binding another socket on {addr} for kernel round-robin: {e}")
                    })?;
                    g.members.push(Member {
                        fd,
                        worker: None,
                        armed: false,
                        counts: false,
                        placed_seen: 0,
                    });
                    g.members.len() - 1
                }
            },
        };
        if at >= steer::MAX_SOCKETS as usize {
            return Err(format!(
                "more than {} workers listening on {addr}",
                steer::MAX_SOCKETS
            ));
        }
        let copy = g.members[at]
            .fd
            .try_clone()
            .map_err(|e| format!("duplicating a listening socket: {e}"))?;
        let map = match counts {
            true => Some(
                g.steer
                    .counts_fd()
                    .map_err(|e| format!("duplicating the count map: {e}"))?,
            ),
            false => None,
        };
        // What the last worker left in the socket is not this one's: it starts even (and
        // below zero while it serves those, which only makes it preferred).
        g.steer.reset(at as u32);
        let placed = g.steer.placed(at as u32);
        let m = &mut g.members[at];
        // What the socket took before is the last worker's (harvested when it left).
        m.placed_seen = placed;
        m.worker = Some(key);
        m.counts = map.is_some();
        // From now on the worker accepts on it (perhaps blocking, on the shared file): the
        // primary stops at once, not at the next reconcile.
        if std::mem::take(&mut m.armed) {
            self.epoll.delete(m.fd.as_raw_fd());
        }
        self.changed = true;
        Ok((copy, map.map(|fd| (fd, at as u32))))
    }

    /// Worker `key` no longer listens on listener `index` (or on any, with None): its sockets
    /// leave the rotation, and the primary serves what comes to them; it leaves the shares of a
    /// `shared` listener too.
    pub(super) fn leave_groups(&mut self, key: u64, index: Option<usize>) {
        self.leave_shares(key, index);
        // What the kernel gave the worker's sockets until now is the worker's.
        self.harvest_turns();
        for (i, l) in self.listeners.iter_mut().enumerate() {
            if index.is_some_and(|x| x != i) {
                continue;
            }
            if let Some(g) = &mut l.group {
                for m in &mut g.members {
                    if m.worker == Some(key) {
                        m.worker = None;
                        self.changed = true;
                    }
                }
            }
        }
    }

    /// Adds the connections the kernel's turns gave each worker's own sockets since the last
    /// look to its `connections_total` and to the dispatched counters (the worker accepts
    /// them itself: they never pass the primary), and those workers took from a `shared`
    /// socket (`harvest_shares`). Returns the workers that got any, for `max_requests`. A few
    /// atomic reads per member; no system call.
    pub(super) fn harvest_turns(&mut self) -> Vec<u64> {
        let mut got = self.harvest_shares();
        for (i, l) in self.listeners.iter_mut().enumerate() {
            let Some(g) = l.group.as_mut() else { continue };
            for (at, m) in g.members.iter_mut().enumerate() {
                let placed = g.steer.placed(at as u32);
                let new = placed.saturating_sub(m.placed_seen);
                m.placed_seen = placed;
                credit(&mut self.procs, &mut self.ops, i, m.worker, new, &mut got);
            }
        }
        got
    }

    /// The connections the kernel's turns gave worker `key`'s own sockets that it has not
    /// closed yet (in hand, or waiting in its accept queue), for a worker that counts them
    /// (see `steer`); 0 for one that does not.
    pub(super) fn turns_in_hand(&self, key: u64) -> u64 {
        let groups = self.listeners.iter().filter_map(|l| l.group.as_ref());
        groups
            .flat_map(|g| {
                g.members
                    .iter()
                    .enumerate()
                    .filter(|(_, m)| m.worker == Some(key) && m.counts)
                    .map(|(at, _)| g.steer.count(at as u32).max(0) as u64)
            })
            // Saturating: the counts live in memory the workers write, and a worker may lie.
            .fold(0, u64::saturating_add)
    }

    /// A worker that takes its turns: ready, not stopping, still linked.
    fn serves(&self, key: Option<u64>) -> bool {
        key.and_then(|k| self.procs.get(&k)).is_some_and(|p| {
            p.state == WorkerState::Ready && p.stopping.is_none() && p.hello && p.ipc_open
        })
    }

    /// Brings every group's rotation and the primary's watch over its sockets in line with
    /// which workers serve (and with whether the primary may accept now). Cheap when nothing
    /// changed: no system call.
    pub(super) fn steer_groups(&mut self, may_accept: bool) {
        for i in 0..self.listeners.len() {
            let l = &self.listeners[i];
            // No worker ever asked (workers that take connections from the primary): nothing
            // to turn or watch, and this runs after every batch the primary accepts.
            let Some(g) = l.group.as_ref().filter(|g| !g.members.is_empty()) else {
                continue;
            };
            // Paused after EMFILE: the primary's watch of the group's sockets pauses too.
            let may_accept = may_accept && l.paused_until.is_none();
            let mut serving: Vec<(u64, (RawFd, u32))> = Vec::new();
            let mut arm: Vec<bool> = Vec::with_capacity(g.members.len());
            for (j, m) in g.members.iter().enumerate() {
                if self.serves(m.worker) {
                    // Strict turns: no member is compared with the next.
                    let tracked = m.counts && !self.cfg.strict_turns;
                    let entry = j as u32 | if tracked { steer::TRACKED } else { 0 };
                    serving.push((m.worker.unwrap_or_default(), (m.fd.as_raw_fd(), entry)));
                }
                // Only a socket no worker listens on: a starting or draining worker accepts
                // from its own (and the fallback slot keeps new connections off it meanwhile).
                arm.push(may_accept && m.worker.is_none());
            }
            // In the order of the workers' keys: the order they started in.
            serving.sort_unstable();
            let turn: Vec<(RawFd, u32)> = serving.into_iter().map(|(_, t)| t).collect();
            let g = self.listeners[i].group.as_mut().unwrap();
            if turn != g.turn {
                if let Err(e) = g.steer.set(&turn) {
                    // The kernel's hash goes on spreading connections over every socket of
                    // the group, each of which is served: slower to even out, nothing lost.
                    self.out.push(Event::Warning {
                        detail: format!("updating the kernel round-robin failed: {e}"),
                    });
                }
                g.turn = turn;
            }
            for (j, want) in arm.into_iter().enumerate() {
                let m = &mut g.members[j];
                if want == m.armed {
                    continue;
                }
                let token = STEERED | (i as u64) << 24 | j as u64;
                if want {
                    // Non-blocking is a flag of the open file, which the worker shared and may
                    // have cleared (a blocking accept loop): the loop must never block in
                    // accept.
                    if sys::set_nonblocking(m.fd.as_raw_fd(), true).is_err() {
                        continue;
                    }
                    m.armed = self
                        .epoll
                        .add(m.fd.as_raw_fd(), libc::EPOLLIN as u32, token)
                        .is_ok();
                } else {
                    self.epoll.delete(m.fd.as_raw_fd());
                    m.armed = false;
                }
            }
        }
    }

    /// A socket of a group whose worker does not serve has connections: the primary takes
    /// them, to hand them over like its own.
    pub(super) fn member_ready(&mut self, token: u64) {
        let index = ((token & !STEERED) >> 24) as usize;
        let member = (token & 0xff_ffff) as usize;
        let fd = self
            .listeners
            .get(index)
            .and_then(|l| l.group.as_ref())
            .and_then(|g| g.members.get(member))
            .filter(|m| m.worker.is_none())
            .map(|m| m.fd.as_raw_fd());
        if let Some(fd) = fd {
            self.accept_from(index, fd);
        }
    }

    /// The sockets of listener `index`'s group that no worker listens on (the primary accepts
    /// on them), made non-blocking: a worker that held one may have cleared the flag.
    pub(super) fn unserved_members(&self, index: usize) -> Vec<RawFd> {
        let Some(g) = self.listeners[index].group.as_ref() else {
            return Vec::new();
        };
        g.members
            .iter()
            .filter(|m| m.worker.is_none())
            .map(|m| m.fd.as_raw_fd())
            .filter(|&fd| sys::set_nonblocking(fd, true).is_ok())
            .collect()
    }

    /// At a stop: the group's sockets that no worker listens on stop listening, and the
    /// primary closes its copies of all of them (a worker's own goes away with the worker,
    /// after it accepted what was queued in it).
    pub(super) fn let_go_of_members(&mut self, index: usize) {
        let Some(g) = self.listeners[index].group.as_mut() else {
            return;
        };
        for m in g.members.drain(..) {
            if m.armed {
                self.epoll.delete(m.fd.as_raw_fd());
            }
            if m.worker.is_none() {
                let _ = listen::stop_listening(m.fd.as_raw_fd());
            }
        }
        g.turn.clear();
    }

    /// Takes every group's sockets out of the epoll set (at the end).
    pub(super) fn close_groups(&mut self) {
        for l in &mut self.listeners {
            if let Some(g) = &mut l.group {
                for m in &mut g.members {
                    if m.armed {
                        self.epoll.delete(m.fd.as_raw_fd());
                        m.armed = false;
                    }
                }
            }
        }
    }
}

/// Adds `new` connections of listener `index` that worker `key` took itself (from its own
/// socket of the kernel's turns, or from a shared one) to its `connections_total` and to the
/// dispatched counters, and notes it in `got` (for `max_requests`).
pub(super) fn credit(
    procs: &mut BTreeMap<u64, Process>,
    ops: &mut Ops,
    index: usize,
    key: Option<u64>,
    new: u64,
    got: &mut Vec<u64>,
) {
    let Some((k, p)) = key
        .filter(|_| new > 0)
        .and_then(|k| procs.get_mut(&k).map(|p| (k, p)))
    else {
        return;
    };
    // Saturating: the counts live in memory the workers write, and a worker may lie.
    p.connections_total = p.connections_total.saturating_add(new);
    ops.dispatched_n(index, p.slot, new);
    got.push(k);
}
