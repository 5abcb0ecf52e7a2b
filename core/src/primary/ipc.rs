//! The loop's side of the worker links: reading frames and writing queued output.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Primary, IPC};
use crate::config::ReadyOn;
use crate::events::{Event, WorkerState};
use crate::policy::ExitReason;
use crate::primary::link::{Flush, Link};
use crate::primary::process::Process;
use crate::primary::reader::{Incoming, ReadEnd};

/// A worker that sent no message for this long is read by the loop alone again: its
/// acknowledgements and heartbeats need not wake the host.
const HOST_READ_IDLE: Duration = Duration::from_secs(1);
/// How often the loop reads the workers that the host reads.
const HOST_READ_TICK: Duration = Duration::from_millis(20);

/// What the loop waits for on a worker's socket.
fn ipc_events(p: &Process) -> u32 {
    let read = if p.host_read || p.paused {
        0
    } else {
        libc::EPOLLIN
    };
    let write = if p.out_armed { libc::EPOLLOUT } else { 0 };
    (read | write) as u32
}

impl Primary {
    /// Reads worker `key`, its messages as far as the host's event queue has room.
    pub(super) fn read_worker(&mut self, key: u64) {
        self.read_worker_within(key, None);
    }

    /// Reads everything worker `key` sent, room or not: for a worker that is gone or has
    /// closed its socket, whose last messages are bounded by the socket's buffer and must not
    /// be lost.
    pub(super) fn read_worker_to_end(&mut self, key: u64) {
        self.read_worker_within(key, Some(usize::MAX));
    }

    fn read_worker_within(&mut self, key: u64, room: Option<usize>) {
        let Some(p) = self.procs.get(&key) else {
            return;
        };
        let link = Arc::clone(&p.link);
        let mut reader = link.reader.lock().unwrap();
        // What a host thread read from this or any worker came first: act on it first.
        self.take_forwarded();
        let (frames, messages) = (reader.frames, reader.messages);
        let mut incoming = Vec::new();
        let room = room.unwrap_or_else(|| self.shared.events.room());
        let end = reader.read(link.raw(), &mut incoming, room);
        let seen = reader.frames != frames;
        let sent_messages = reader.messages != messages;
        if sent_messages {
            link.heard_from();
        }
        let quiet = reader
            .last_message
            .is_none_or(|t| t.elapsed() >= HOST_READ_IDLE);
        self.act_on(key, incoming, end, seen);
        // Delivered while the reader is held: a host thread reading the next messages of this
        // worker cannot overtake these.
        self.emit();
        drop(reader);
        let Some(p) = self.procs.get(&key) else {
            return;
        };
        if sent_messages && !p.host_read && !p.paused && p.ipc_open && self.shared.host.is_on() {
            self.set_host_read(key, true);
        } else if p.host_read && !sent_messages && quiet {
            self.set_host_read(key, false);
        }
    }

    /// Hands reading worker `key` to the host thread, or takes it back. While the host reads
    /// it, the loop does not wake when it is readable (that would only race the host for
    /// the same bytes): it reads it every `HOST_READ_TICK`, so that heartbeats and
    /// acknowledgements are seen even while the host is busy.
    fn set_host_read(&mut self, key: u64, on: bool) {
        let Some(p) = self.procs.get_mut(&key) else {
            return;
        };
        if p.host_read == on {
            return;
        }
        p.host_read = on;
        if on {
            self.shared.host.add(&p.link);
            self.host_tick
                .get_or_insert(self.clock.now() + HOST_READ_TICK);
        } else {
            self.shared.host.remove(&p.link);
        }
        if p.ipc_open {
            let _ = self
                .epoll
                .modify(p.link.raw(), ipc_events(p), key << 2 | IPC);
        }
    }

    /// Reads the workers the host reads too (see `set_host_read`).
    pub(super) fn host_read_tick(&mut self, now: Instant) {
        if self.host_tick.is_none_or(|t| now < t) {
            return;
        }
        let keys: Vec<u64> = self
            .procs
            .iter()
            .filter(|(_, p)| p.host_read)
            .map(|(&k, _)| k)
            .collect();
        for &key in &keys {
            self.read_worker(key);
        }
        let still = self.procs.values().any(|p| p.host_read);
        self.host_tick = still.then(|| now + HOST_READ_TICK);
    }

    /// Acts on what host threads read (all but the messages, which they delivered).
    pub(super) fn take_forwarded(&mut self) {
        if !self.shared.host.is_on() {
            return; // No host reads: nothing is forwarded (and no lock on this hot path).
        }
        let items = std::mem::take(&mut *self.shared.host.forwarded.lock().unwrap());
        for f in items {
            self.act_on(f.key, f.incoming, f.end, true);
        }
    }

    /// Acts on frames read from worker `key`; `seen`: it sent something (a sign of life).
    fn act_on(&mut self, key: u64, incoming: Vec<Incoming>, end: ReadEnd, seen: bool) {
        let Some(p) = self.procs.get_mut(&key) else {
            return;
        };
        if seen {
            p.last_seen = self.clock.now();
        }
        let (slot, pid) = (p.slot, p.pid as u32);
        // Messages and connection bookkeeping change no worker's lifecycle: no reconcile pass
        // (it is O(workers)) for them.
        let routine = incoming.iter().all(|m| {
            matches!(
                m,
                Incoming::Message(..)
                    | Incoming::TaskDone(_)
                    | Incoming::Ack(_)
                    | Incoming::Closed(_)
            )
        });
        if !routine || !matches!(end, ReadEnd::Drained) {
            self.changed = true;
        }
        let acked = incoming.iter().any(|m| matches!(m, Incoming::Ack(_)));
        for msg in incoming {
            if let Err(detail) = self.act_on_frame(key, slot, pid, msg) {
                return self.protocol_violation(key, detail);
            }
        }
        if acked {
            self.acknowledged();
        }
        self.act_on_end(key, end);
    }

    /// Acts on one frame of worker `key` (slot `slot`, process `pid`); an error is a breach
    /// of the protocol, after which nothing more of the worker is read.
    fn act_on_frame(&mut self, key: u64, slot: u32, pid: u32, msg: Incoming) -> Result<(), String> {
        match msg {
            Incoming::Hello => self.worker_hello(key, slot, pid),
            Incoming::Ready => self.mark_ready(key),
            Incoming::Message(data, content) => self.out.push(Event::Message {
                id: slot,
                pid,
                data,
                content,
            }),
            Incoming::TaskDone(data) => self.out.push(Event::TaskDone {
                id: slot,
                pid,
                data,
            }),
            Incoming::Disconnect => self.worker_disconnected(key),
            Incoming::Closed(id) => self.connection_closed(key, id),
            Incoming::Listen {
                request,
                dispatch,
                addr,
                counts,
            } => self.worker_listen(key, request, dispatch, addr, counts),
            Incoming::Unlisten(name) => self.worker_unlisten(key, &name),
            Incoming::Back(id, fd) => self.connection_back(key, id, fd)?,
            Incoming::Room(name) => self.worker_room(key, &name),
            Incoming::Ack(id) => self.connection_acked(key, id)?,
        }
        Ok(())
    }

    /// The worker's library said hello: online, and ready too if `ready_on` is `hello`.
    fn worker_hello(&mut self, key: u64, slot: u32, pid: u32) {
        if let Some(p) = self.procs.get_mut(&key) {
            p.hello = true;
            if p.state == WorkerState::Starting {
                p.state = WorkerState::Online;
            }
        }
        match self.cfg.ready_on {
            ReadyOn::Spawn => {}
            ReadyOn::Hello => {
                self.out.push(Event::Online { id: slot, pid });
                self.mark_ready(key);
            }
            ReadyOn::Explicit => self.out.push(Event::Online { id: slot, pid }),
        }
    }

    /// How the read of worker `key` ended: all read, paused for the host, or the link is over.
    fn act_on_end(&mut self, key: u64, end: ReadEnd) {
        match end {
            ReadEnd::Drained => {}
            ReadEnd::Paused => self.pause_worker(key),
            ReadEnd::Eof => self.close_ipc(key),
            ReadEnd::Violation(detail) => self.protocol_violation(key, detail),
            ReadEnd::CutShort(detail) => self.link_cut_short(key, detail),
        }
    }

    /// The worker's link ended in the middle of a frame: nothing more can be read from it.
    /// Whether that broke the protocol is decided when it is reaped (see `ReadEnd::CutShort`);
    /// a worker being stopped may be killed in the middle of any write.
    fn link_cut_short(&mut self, key: u64, detail: String) {
        self.close_ipc(key);
        if let Some(p) = self.procs.get_mut(&key) {
            if p.stopping.is_none() {
                p.cut_short = Some(detail);
            }
        }
    }

    /// The host's event queue has no room for worker `key`'s next message: stop reading it
    /// (it blocks in its own `send` once its socket is full) until the host has taken half of
    /// the queue. Only its frames wait, behind its messages and in order; every other worker
    /// is read as before, and its exit (seen through the pidfd) is reported at once.
    fn pause_worker(&mut self, key: u64) {
        let Some(p) = self.procs.get_mut(&key) else {
            return;
        };
        if p.paused {
            return;
        }
        p.paused = true;
        if p.host_read {
            p.host_read = false;
            self.shared.host.remove(&p.link);
        }
        if p.ipc_open {
            let _ = self
                .epoll
                .modify(p.link.raw(), ipc_events(p), key << 2 | IPC);
        }
        self.paused.push(key);
        // The loop looks at `may_resume` after every turn, so a host that emptied the queue
        // before this flag was up is not missed.
        self.shared.events.want_room();
    }

    /// The host's event queue is down to its low-water mark: read the paused workers again,
    /// first what their decoders hold.
    pub(super) fn resume_workers(&mut self) {
        let now = self.clock.now();
        for key in std::mem::take(&mut self.paused) {
            let Some(p) = self.procs.get_mut(&key) else {
                continue;
            };
            p.paused = false;
            // Its silence while paused was the primary's doing.
            p.last_seen = now;
            if p.ipc_open {
                let _ = self
                    .epoll
                    .modify(p.link.raw(), ipc_events(p), key << 2 | IPC);
                self.read_worker(key);
            }
        }
    }

    /// A worker broke the protocol: say so, stop reading it, and kill it at once.
    pub(super) fn protocol_violation(&mut self, key: u64, detail: String) {
        let Some(p) = self.procs.get(&key) else {
            return;
        };
        self.out.push(Event::ProtocolError {
            id: p.slot,
            pid: p.pid as u32,
            detail,
        });
        self.close_ipc(key);
        self.stop_worker(key, ExitReason::ProtocolError, false);
    }

    pub(super) fn close_ipc(&mut self, key: u64) {
        if let Some(p) = self.procs.get_mut(&key) {
            if p.ipc_open {
                p.ipc_open = false;
                self.epoll.delete(p.link.raw());
            }
            if p.host_read {
                p.host_read = false;
                self.shared.host.remove(&p.link);
            }
        }
    }

    pub(super) fn flush(&mut self, link: &Arc<Link>) {
        if link.is_closed() {
            return;
        }
        let key = link.key;
        let Some(p) = self
            .procs
            .get_mut(&key)
            .filter(|p| Arc::ptr_eq(&p.link, link))
        else {
            return;
        };
        let want_out = match link.flush() {
            Flush::Done => false,
            Flush::Blocked => true,
            Flush::Broken => {
                link.close();
                false
            }
        };
        if want_out != p.out_armed && p.ipc_open {
            p.out_armed = want_out;
            if self
                .epoll
                .modify(link.raw(), ipc_events(p), key << 2 | IPC)
                .is_err()
            {
                p.out_armed = !want_out;
            }
        }
    }
}
