//! The primary's connection side: accepting on listeners, queueing, handing connections to
//! workers over IPC and taking them back from workers that die before acknowledging.

use std::collections::{HashSet, VecDeque};
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use super::steered::{self, Group};
use super::Primary;
use crate::events::{Event, WorkerState};
use crate::policy::dispatch::{self, Candidate, Choice, SlotState};
use crate::policy::ExitReason;
use crate::primary::link::PassFd;
use crate::primary::process::{Handed, Process, Waiting};
use crate::sys::listen::{self, Dispatch, ListenAddr};
use crate::wire::body;
use crate::wire::frame::Kind;

/// Listener tokens in the epoll set: this bit plus the listener's index.
pub(super) const LISTENER: u64 = 1 << 62;
/// How long accepting pauses after EMFILE/ENFILE, so that a full fd table is not a busy loop.
const ACCEPT_PAUSE: Duration = Duration::from_millis(100);
/// Most connections accepted from one listener per readiness event, so that one busy listener
/// does not starve the rest of the loop.
const ACCEPT_BATCH: usize = 256;
/// Fewest connections a worker's `recent` keeps (it keeps its handoff window's worth if more).
const RECENT_MIN: usize = 64;
/// Most connections a worker's `recent` keeps.
const RECENT_MAX: usize = 4096;

/// A listening socket of the primary.
pub struct Bound {
    pub name: String,
    pub addr: ListenAddr,
    /// None once a stop let go of a socket that workers hold too (`shared`).
    pub fd: Option<OwnedFd>,
    pub dispatch: Dispatch,
    /// In the epoll set right now.
    pub(super) armed: bool,
    pub(super) paused_until: Option<Instant>,
    /// The workers that asked for this listener at run time; None for a configured listener,
    /// which serves every worker.
    subscribers: Option<HashSet<u64>>,
    /// Workers that stopped listening on this configured listener (`unlisten`, a server they
    /// closed): the primary hands them none of its connections until they ask for it again.
    unlistened: HashSet<u64>,
    /// Workers that gave back one of its connections (their server had no room) and have not
    /// said they have room since: the primary hands them none of its connections until then.
    full: HashSet<u64>,
    /// The address as a worker asked for it (e.g. port 0), for matching later requests.
    requested: Option<String>,
    /// Round-robin turned by the kernel: the sockets of the workers.
    pub group: Option<Group>,
    /// `shared`, with workers that count what they take: their share map.
    pub shares: Option<super::shares::Shares>,
    /// Passed to the process by a service manager, which keeps it listening for the next
    /// primary: a stop neither refuses connections on it nor ends its listening nor removes
    /// its file.
    pub inherited: bool,
}

impl Bound {
    pub fn new(name: String, addr: ListenAddr, fd: OwnedFd, dispatch: Dispatch) -> Bound {
        Bound {
            name,
            addr,
            fd: Some(fd),
            dispatch,
            armed: false,
            paused_until: None,
            subscribers: None,
            unlistened: HashSet::new(),
            full: HashSet::new(),
            requested: None,
            group: None,
            shares: None,
            inherited: false,
        }
    }

    /// A listener over a duplicate of a passed socket (`Listener::fd`).
    pub fn inherited(
        l: &crate::sys::listen::Listener,
        fd: std::os::fd::RawFd,
    ) -> crate::error::Result<Bound> {
        let nonblocking = l.dispatch != Dispatch::Shared;
        let own = crate::sys::activation::duplicate(fd, nonblocking).map_err(|e| {
            crate::error::Error::Bind {
                addr: format!("{} (passed descriptor {fd})", l.addr),
                source: e,
            }
        })?;
        let mut b = Bound::new(l.name.clone(), l.addr.clone(), own, l.dispatch);
        b.inherited = true;
        Ok(b)
    }
}

struct Slots<'a>(&'a Primary);

impl SlotState for Slots<'_> {
    fn slot_count(&self) -> u32 {
        self.0.desired as u32
    }

    /// Down for good: no process at all (a draining one will be followed by its replacement)
    /// and no start planned.
    fn slot_down(&self, slot: u32) -> bool {
        let coming = self
            .0
            .slots
            .get(slot as usize)
            .is_some_and(|s| s.start_at.is_some() && !s.gave_up);
        !coming && !self.0.procs.values().any(|p| p.slot == slot)
    }
}

/// The live workers, straight from the process table: nothing is copied per connection.
struct Live<'a>(&'a Primary);

impl dispatch::Workers for Live<'_> {
    fn visit(&self, keys: dispatch::Keys, visit: &mut dyn FnMut(&Candidate) -> bool) {
        for (&key, p) in self.0.procs.range(keys) {
            if visit(&self.0.candidate(key, p)) {
                return;
            }
        }
    }
}

impl Primary {
    /// Puts dispatched listeners in the epoll set (or takes them out) to match whether the
    /// primary may accept: not while stopping, paused, or holding `queue_limit` connections.
    pub(super) fn arm_listeners(&mut self, now: Instant) {
        let may_accept = self.stop_deadline.is_none() && self.waiting.len() < self.cfg.queue_limit;
        for (i, l) in self.listeners.iter_mut().enumerate() {
            let Some(fd) = l.fd.as_ref().filter(|_| l.dispatch != Dispatch::Shared) else {
                continue;
            };
            if l.paused_until.is_some_and(|t| now >= t) {
                l.paused_until = None;
            }
            let want = may_accept && l.paused_until.is_none();
            if want && !l.armed {
                l.armed = self
                    .epoll
                    .add(fd.as_raw_fd(), libc::EPOLLIN as u32, LISTENER | i as u64)
                    .is_ok();
            } else if !want && l.armed {
                self.epoll.delete(fd.as_raw_fd());
                l.armed = false;
            }
        }
        self.steer_groups(may_accept);
    }

    /// An accepted connection joins the queue of those waiting for a worker.
    pub(super) fn queue_accepted(
        &mut self,
        index: usize,
        fd: OwnedFd,
        peer: crate::sys::listen::Peer,
        now: Instant,
    ) {
        let id = self.next_conn_id;
        self.next_conn_id += 1;
        self.waiting.push_back(Waiting {
            id,
            fd,
            listener: index,
            peer,
            since: now,
            handed: now,
        });
    }

    pub(super) fn accept_ready(&mut self, index: usize) {
        if let Some(fd) = self.listeners[index].fd.as_ref().map(|f| f.as_raw_fd()) {
            self.accept_from(index, fd);
        }
    }

    /// Accepts what waits on `fd` (listener `index`'s socket, or one of its group's) and hands
    /// it over.
    pub(super) fn accept_from(&mut self, index: usize, fd: std::os::fd::RawFd) {
        let now = self.clock.now();
        for _ in 0..ACCEPT_BATCH {
            if self.waiting.len() >= self.cfg.queue_limit {
                break;
            }
            let l = &mut self.listeners[index];
            match listen::accept(fd) {
                Ok(Some((fd, peer))) => self.queue_accepted(index, fd, peer, now),
                Ok(None) => break,
                Err(e) => {
                    // EMFILE/ENFILE/ENOBUFS/ENOMEM: the connection stays in the backlog; try
                    // again shortly instead of spinning on a listener that stays readable.
                    l.paused_until = Some(now + ACCEPT_PAUSE);
                    self.out.push(Event::AcceptPaused {
                        listener: l.name.clone(),
                        error: e.to_string(),
                    });
                    self.changed = true;
                    break;
                }
            }
        }
        self.distribute();
        self.arm_listeners(now);
    }

    /// A worker as the dispatcher sees it, as of now.
    fn candidate(&self, key: u64, p: &Process) -> Candidate {
        let (unacked, active) = (p.unacked.len(), p.active.len());
        let room = self.handing_out_all
            || (self.cfg.max_inflight.is_none_or(|m| unacked + active < m)
                && unacked < self.cfg.handoff_window);
        let ready = p.state == WorkerState::Ready && p.stopping.is_none() && p.hello && p.ipc_open;
        Candidate {
            key,
            slot: p.slot,
            unacked,
            active,
            has_room: room && ready,
            ahead: p.ahead,
        }
    }

    /// Hands waiting connections to workers with room, oldest first.
    pub(super) fn distribute(&mut self) {
        if self.waiting.is_empty() || self.stop_deadline.is_some() {
            self.queue_deadline = None;
            return;
        }
        // Expired connections are closed before anything is handed: a slot freed after the
        // timeout must not serve a client that was already given up on.
        let now = self.clock.now();
        let timeout = self.cfg.queue_timeout;
        self.waiting
            .retain(|w| now.duration_since(w.since) < timeout);
        let mut kept = self.hand_out(now);
        kept.append(&mut self.waiting);
        self.waiting = kept;
        // Connections left waiting need the loop's timer for `queue_timeout`; the oldest one
        // is at the front, except for sticky ones kept back, so take the minimum.
        self.queue_deadline = self.waiting.iter().map(|w| w.since + timeout).min();
        self.arm_listeners(now);
    }

    /// One pass over the waiting connections: each goes to the worker its listener's dispatch
    /// chooses, until none has room. Returns the ones kept back (sticky connections whose slot
    /// is full, in order); those after the pass stopped stay in `waiting`.
    fn hand_out(&mut self, now: Instant) -> VecDeque<Waiting> {
        // Workers whose queue refused a connection in this pass (full, or closing).
        let mut refused: Vec<u64> = Vec::new();
        let mut kept = VecDeque::new();
        let mut pass = dispatch::Pass::new(self.waiting.len(), self.desired, self.cpus)
            .strict_turns(self.cfg.strict_turns);
        while let Some(w) = self.waiting.pop_front() {
            let mode = self.listeners[w.listener].dispatch;
            let l = &self.listeners[w.listener];
            let allowed = |key: u64| {
                l.subscribers
                    .as_ref()
                    .is_none_or(|subs| subs.contains(&key))
                    && !l.unlistened.contains(&key)
                    && (l.full.is_empty() || !l.full.contains(&key))
                    && !refused.contains(&key)
            };
            let choice = pass.choose(
                mode,
                &Live(self),
                self.rr_cursor,
                w.peer.ip,
                &Slots(self),
                &allowed,
            );
            let Choice::Worker(key) = choice else {
                kept.push_back(w);
                if mode == Dispatch::Sticky {
                    continue; // Another client's slot may have room.
                }
                break;
            };
            match self.hand(key, w, now) {
                Ok(()) => {
                    pass.handed(key);
                    if mode != Dispatch::Sticky {
                        self.rr_cursor = key;
                    }
                }
                Err(w) => {
                    refused.push(key);
                    self.waiting.push_front(w);
                }
            }
        }
        for (key, change) in pass.ahead {
            if let Some(p) = self.procs.get_mut(&key) {
                p.ahead = p.ahead.saturating_add_signed(change);
            }
        }
        kept
    }

    /// Sends one connection to worker `key`, keeping the primary's copy until it is
    /// acknowledged. Gives the connection back if it cannot be sent.
    fn hand(&mut self, key: u64, mut w: Waiting, now: Instant) -> Result<(), Waiting> {
        let Some(p) = self.procs.get_mut(&key) else {
            return Err(w);
        };
        // Only least-connections and max_inflight count open connections: elsewhere the worker
        // is spared a close report per connection.
        let counted = self.listeners[w.listener].dispatch == Dispatch::LeastConnections
            || self.cfg.max_inflight.is_some();
        let body = body::connection(
            w.id,
            counted,
            &self.listeners[w.listener].name,
            &w.peer.text,
        );
        match p.link.send_frame(
            &self.shared.waker,
            Kind::Connection,
            &body,
            Some(PassFd::Borrowed(w.fd.as_raw_fd())),
        ) {
            Ok(()) => {
                w.handed = now;
                self.ops.dispatched(w.listener, p.slot);
                p.unacked.insert(w.id, w);
                if let Some(bound) = self.cfg.ack_timeout {
                    self.ack_check.get_or_insert(now + bound);
                }
                Ok(())
            }
            Err(_) => Err(w),
        }
    }

    /// Kills the workers that left a connection unacknowledged for `ack_timeout`: they do not
    /// read their link (a hung event loop), and the connections they never took are handed
    /// to other workers once they are reaped. Runs when the timer of the oldest handoff is
    /// due, so the scan over unacknowledged connections is rare.
    pub(super) fn check_acks(&mut self, now: Instant) {
        let Some(bound) = self.cfg.ack_timeout else {
            self.ack_check = None;
            return;
        };
        if self.ack_check.is_none_or(|t| now < t) {
            return;
        }
        let mut hung = Vec::new();
        let mut next: Option<Instant> = None;
        for (&key, p) in &self.procs {
            if p.stopping.as_ref().is_some_and(|s| s.killed) {
                continue;
            }
            let Some(oldest) = p.unacked.values().map(|w| w.handed).min() else {
                continue;
            };
            if now >= oldest + bound {
                hung.push(key);
            } else {
                next = Some(next.map_or(oldest + bound, |n| n.min(oldest + bound)));
            }
        }
        self.ack_check = next;
        for key in hung {
            self.stop_worker(key, ExitReason::Heartbeat, false);
        }
    }

    /// The worker has the connection: the primary lets go of its copy.
    pub(super) fn connection_acked(&mut self, key: u64, id: u64) -> Result<(), String> {
        let Some(p) = self.procs.get_mut(&key) else {
            return Ok(());
        };
        let Some(w) = p.unacked.remove(&id) else {
            return Err(format!(
                "acknowledgement of connection {id}, which was not handed to this worker"
            ));
        };
        p.connections_total += 1;
        // Counted until reported closed only where the worker was asked to report it.
        if self.cfg.max_inflight.is_some()
            || self.listeners[w.listener].dispatch == Dispatch::LeastConnections
        {
            p.active.insert(id);
        }
        // The socket is let go of here; what it takes to hand it on if the worker gives it
        // back is kept a while.
        if p.recent.len() >= self.cfg.handoff_window.clamp(RECENT_MIN, RECENT_MAX) {
            p.recent.pop_front();
        }
        p.recent.push_back(Handed {
            id,
            listener: w.listener,
            peer: w.peer,
            since: w.since,
        });
        self.count_request(key);
        Ok(())
    }

    /// The worker gives connection `id` back, with its socket `fd`: its server has no room
    /// (Node's `maxConnections`). The connection goes to the front of the queue, for another
    /// worker, and this one is handed none of its listener's until it says it has room, as
    /// Node's round-robin primary passes a connection a worker refused to the next. One the
    /// primary does not know as this worker's lately (never handed to it, or more than its
    /// `recent` ago) is closed: it ends as a refusal would. A descriptor that is no connection
    /// of the listener's kind breaks the protocol: it is not handed to another worker.
    pub(super) fn connection_back(&mut self, key: u64, id: u64, fd: OwnedFd) -> Result<(), String> {
        let Some(p) = self.procs.get_mut(&key) else {
            return Ok(());
        };
        let Some(at) = p.recent.iter().rposition(|h| h.id == id) else {
            return Ok(());
        };
        let Some(h) = p.recent.remove(at) else {
            return Ok(());
        };
        let l = &self.listeners[h.listener];
        if !listen::is_connection_for(fd.as_raw_fd(), &l.addr) {
            return Err(format!(
                "connection {id} given back with a descriptor that is not a connection of \
                 listener {} ({})",
                l.name, l.addr
            ));
        }
        p.active.remove(&id);
        p.connections_total = p.connections_total.saturating_sub(1);
        self.listeners[h.listener].full.insert(key);
        let now = self.clock.now();
        self.waiting.push_front(Waiting {
            id,
            fd,
            listener: h.listener,
            peer: h.peer,
            since: h.since,
            handed: now,
        });
        self.distribute();
        Ok(())
    }

    /// The worker has room again for connections of listener `name` (after it gave one back).
    /// An unknown name is ignored.
    pub(super) fn worker_room(&mut self, key: u64, name: &str) {
        let Some(index) = self.listeners.iter().position(|l| l.name == name) else {
            return;
        };
        self.listeners[index].full.remove(&key);
        self.distribute();
    }

    /// A worker acknowledged connections (one read's worth): it has room in its handoff window
    /// again, so connections that waited for room go now. Nothing else would hand them over
    /// when every client is waiting for an answer: no new connection arrives to wake the
    /// accept path, and they would sit in the queue until `queue_timeout` closed them.
    pub(super) fn acknowledged(&mut self) {
        if !self.waiting.is_empty() {
            self.distribute();
        }
    }

    /// The worker closed a connection: room for the next one.
    pub(super) fn connection_closed(&mut self, key: u64, id: u64) {
        if let Some(p) = self.procs.get_mut(&key) {
            // An unknown id is ignored: workers that never report closes are allowed.
            p.active.remove(&id);
        }
        self.distribute();
    }

    /// A worker asks for a listener: bind it once per address, and from then on dispatch its
    /// connections to every worker that asked. The answer goes back to the asking worker (with
    /// the socket itself in `shared` mode, and its own socket of the group for a round-robin
    /// listener the kernel turns).
    pub(super) fn worker_listen(
        &mut self,
        key: u64,
        request: u32,
        dispatch: Dispatch,
        addr: String,
        counts: bool,
    ) {
        if !self.procs.contains_key(&key) {
            return;
        }
        let result = self.find_or_bind(key, dispatch, &addr);
        // A listener turned by the kernel: this worker's own socket of its group.
        let mut counter = None;
        let result = result.and_then(|i| match self.listeners[i].group {
            Some(_) => self
                .join_group(i, key, counts)
                .map(|(fd, map)| {
                    counter = map;
                    (i, Some(fd))
                })
                .inspect_err(|_| {
                    if let Some(subs) = &mut self.listeners[i].subscribers {
                        subs.remove(&key);
                    }
                }),
            // `shared`, for a worker that counts what it takes: a member of the share map.
            None if counts && self.listeners[i].dispatch == Dispatch::Shared => {
                match self.join_shares(i, key) {
                    Ok(map) => counter = Some(map),
                    // It accepts from the socket anyway, without keeping level.
                    Err(e) => self.out.push(Event::Warning { detail: e }),
                }
                Ok((i, None))
            }
            None => Ok((i, None)),
        });
        if let Ok((i, _)) = &result {
            if self.listeners[*i].group.is_some() || self.listeners[*i].dispatch == Dispatch::Shared
            {
                self.warn_uncounted_once(*i);
            }
        }
        let Some(p) = self.procs.get(&key) else {
            return;
        };
        // The count map first, in an answer of its own: a frame carries one descriptor.
        if let Some((map, member)) = counter {
            let body = body::turn_counter(request, member);
            let _ = p.link.send_frame(
                &self.shared.waker,
                Kind::ListenResult,
                &body,
                Some(PassFd::Owned(map)),
            );
        }
        let (body, fd) = match result {
            Ok((i, member)) => {
                let l = &self.listeners[i];
                let body = body::listen_result(request, Ok((&l.name, &l.addr.to_string())));
                let fd = if let Some(fd) = member {
                    Some(PassFd::Owned(fd))
                } else if l.dispatch == Dispatch::Shared {
                    l.fd.as_ref()
                        .and_then(|f| f.try_clone().ok())
                        .map(PassFd::Owned)
                } else {
                    None
                };
                (body, fd)
            }
            Err(e) => (body::listen_result(request, Err(&e)), None),
        };
        let _ = p
            .link
            .send_frame(&self.shared.waker, Kind::ListenResult, &body, fd);
    }

    /// A worker closed its server on a listener: it gets no more of its connections.
    /// An unknown name is ignored (a listener that was never dispatched to it).
    pub(super) fn worker_unlisten(&mut self, key: u64, name: &str) {
        let Some(index) = self.listeners.iter().position(|l| l.name == name) else {
            return;
        };
        match &mut self.listeners[index].subscribers {
            Some(subs) => {
                subs.remove(&key);
            }
            None => {
                self.listeners[index].unlistened.insert(key);
            }
        }
        self.leave_groups(key, Some(index));
        // At once, not at the next reconcile: whatever the worker sends after this frame (a
        // message saying it closed, read maybe by a host thread) must find it out of the turns.
        self.arm_listeners(self.clock.now());
    }

    fn find_or_bind(&mut self, key: u64, dispatch: Dispatch, addr: &str) -> Result<usize, String> {
        if self.stop_deadline.is_some() {
            return Err("the supervisor is stopping".into());
        }
        // A listener of the configuration, by its name (names have no ':', addresses do): how
        // a worker asks for its own socket of one the kernel turns.
        if let Some(i) = self
            .listeners
            .iter()
            .position(|l| l.subscribers.is_none() && l.name == addr)
        {
            self.listeners[i].unlistened.remove(&key);
            return Ok(i);
        }
        let parsed: ListenAddr = addr
            .parse()
            .map_err(|e: crate::error::Error| e.to_string())?;
        let found = self
            .listeners
            .iter()
            .position(|l| l.requested.as_deref() == Some(addr) || l.addr == parsed);
        let index = match found {
            Some(i) => i,
            None => {
                let turns = steered::wanted(&self.cfg, dispatch, &parsed);
                let (fd, group) =
                    steered::bind(&parsed, dispatch, turns, false, &mut self.no_kernel_turns)
                        .map_err(|e| e.to_string())?;
                let actual = listen::local_addr(fd.as_raw_fd(), &parsed);
                let mut b = Bound::new(addr.to_string(), actual, fd, dispatch);
                b.group = group;
                b.subscribers = Some(HashSet::new());
                b.requested = Some(addr.to_string());
                self.listeners.push(b);
                self.arm_listeners(self.clock.now());
                self.listeners.len() - 1
            }
        };
        let l = &mut self.listeners[index];
        if let Some(subs) = &mut l.subscribers {
            subs.insert(key);
        }
        l.unlistened.remove(&key);
        Ok(index)
    }

    /// A worker is gone: connections it never acknowledged go to the front of the queue, to be
    /// handed to another worker (they never reached an application).
    pub(super) fn take_back(&mut self, key: u64, p: &mut Process) {
        for l in &mut self.listeners {
            if let Some(subs) = &mut l.subscribers {
                subs.remove(&key);
            }
            l.unlistened.remove(&key);
            l.full.remove(&key);
        }
        self.leave_groups(key, None);
        let mut back: Vec<Waiting> = p.unacked.drain().map(|(_, w)| w).collect();
        back.sort_by_key(|w| w.id);
        for w in back.into_iter().rev() {
            self.waiting.push_front(w);
        }
    }

    /// Closes connections that waited longer than `queue_timeout` (and sets the timer for the
    /// next one); returns when a paused listener resumes, if one is paused.
    pub(super) fn expire_waiting(&mut self, now: Instant) -> Option<Instant> {
        let timeout = self.cfg.queue_timeout;
        let before = self.waiting.len();
        self.waiting
            .retain(|w| now.duration_since(w.since) < timeout);
        if self.waiting.len() != before {
            self.arm_listeners(now);
        }
        self.queue_deadline = self.waiting.iter().map(|w| w.since + timeout).min();
        self.listeners.iter().filter_map(|l| l.paused_until).min()
    }

    /// Listening sockets workers inherit (`shared` dispatch), with their names.
    pub(super) fn shared_listeners(listeners: &[Bound]) -> Vec<(std::os::fd::RawFd, &str)> {
        listeners
            .iter()
            .filter(|l| l.dispatch == Dispatch::Shared && l.subscribers.is_none())
            .filter_map(|l| Some((l.fd.as_ref()?.as_raw_fd(), l.name.as_str())))
            .collect()
    }

    /// At the end: no connection is left half-handed, no socket file left behind.
    pub(super) fn close_listeners(&mut self) {
        self.waiting.clear();
        self.close_groups();
        for l in self.listeners.drain(..) {
            if let (true, Some(fd)) = (l.armed, &l.fd) {
                self.epoll.delete(fd.as_raw_fd());
            }
            if !l.inherited {
                listen::unlink_unix(&l.addr);
            }
        }
    }
}
