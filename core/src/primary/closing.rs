//! The first act of a graceful stop: stop accepting, without dropping a connection that a
//! client already counts as accepted.
//!
//! A connection is established by the kernel before anybody accepts it, so closing a listening
//! socket resets whatever waits in its queue. The stop therefore goes in three steps: keep new
//! connections out of every socket (they are refused, or their SYN is dropped and retried
//! until the socket is gone, then refused), accept and hand over what is already queued, and
//! only then let go of the sockets. The handoff frames go out before the DISCONNECT frames
//! that `begin_stop` sends next, and each worker's link keeps that order, so a draining worker
//! serves them like any other.

use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use super::Primary;
use crate::sys::listen::{self, Dispatch};

/// How long a stop waits at most for handshakes under way to complete (a client whose last
/// ACK is slower than this is reset, as before).
const LATE_HANDSHAKES: Duration = Duration::from_millis(200);
/// How often it looks meanwhile.
const LATE_HANDSHAKE_LOOK: Duration = Duration::from_millis(1);

impl Primary {
    /// Stops accepting on every listener: see the module's comment.
    pub(super) fn stop_accepting(&mut self) {
        self.refuse_new();
        // A handshake under way when SYNs were shut out completes later (its last ACK passes
        // the filter), and its connection lands in the queue after a drain: the socket's close
        // would reset it, though its client already counts it as accepted. So the queues are
        // drained until no handshake is under way on their ports, for a while at most.
        let until = Instant::now() + LATE_HANDSHAKES;
        loop {
            let under_way = self.handshakes_under_way();
            for i in 0..self.listeners.len() {
                let l = &self.listeners[i];
                if l.dispatch != Dispatch::Shared {
                    if let Some(fd) = l.fd.as_ref().map(|f| f.as_raw_fd()) {
                        self.accept_queued(i, fd);
                    }
                }
                for fd in self.unserved_members(i) {
                    self.accept_queued(i, fd);
                }
            }
            if under_way == 0 || Instant::now() >= until {
                break;
            }
            std::thread::sleep(LATE_HANDSHAKE_LOOK);
        }
        self.hand_out_all();
        self.let_go_of_listeners();
    }

    /// Connections in their handshake on the ports of the TCP listeners the primary accepts
    /// on itself (not those of a passed socket, which stays open for the next primary).
    fn handshakes_under_way(&self) -> usize {
        let ports: Vec<u16> = self
            .listeners
            .iter()
            .filter(|l| l.dispatch != Dispatch::Shared && !l.inherited)
            .filter_map(|l| match l.addr {
                listen::ListenAddr::Tcp(sa) => Some(sa.port()),
                listen::ListenAddr::Unix(_) => None,
            })
            .collect();
        if ports.is_empty() {
            return 0;
        }
        listen::handshakes_under_way(&ports)
    }

    fn refuse_new(&mut self) {
        // A passed socket keeps taking connections for the next primary (see `Bound`).
        for l in self.listeners.iter().filter(|l| !l.inherited) {
            let fds = l.fd.iter().map(|f| f.as_raw_fd());
            for fd in fds.chain(l.group.iter().flat_map(|g| g.member_fds())) {
                // Only fails on a kernel without socket filters; the stop then goes on as
                // before, resetting what reaches the socket before it is closed.
                let _ = listen::refuse_new_connections(fd, &l.addr);
            }
        }
    }

    /// Accepts everything queued on `fd`, a socket of listener `index` that only the primary
    /// accepts on; no limit but the socket's backlog.
    fn accept_queued(&mut self, index: usize, fd: RawFd) {
        let now = self.clock.now();
        while let Ok(Some((fd, peer))) = listen::accept(fd) {
            self.queue_accepted(index, fd, peer, now);
        }
    }

    /// Hands every waiting connection to a ready worker, past the handoff window and
    /// `max_inflight`: the primary is about to close what it holds, and a worker that drains
    /// serves it anyway.
    fn hand_out_all(&mut self) {
        self.handing_out_all = true;
        self.distribute();
        self.handing_out_all = false;
    }

    /// The primary's own sockets stop listening (kept open until the end, so that the
    /// address stays reserved); its copies of sockets that workers accept on (`shared`, the
    /// kernel's turns) are closed at once, so that each goes away with the last worker that
    /// holds it, not with the primary.
    fn let_go_of_listeners(&mut self) {
        for i in 0..self.listeners.len() {
            let l = &mut self.listeners[i];
            if let (true, Some(fd)) = (std::mem::take(&mut l.armed), &l.fd) {
                self.epoll.delete(fd.as_raw_fd());
            }
            if l.dispatch == Dispatch::Shared {
                l.fd = None;
            } else if l.inherited {
                // Its queue is the next primary's: only this copy goes.
                l.fd = None;
            } else if let Some(fd) = &l.fd {
                let _ = listen::stop_listening(fd.as_raw_fd());
            }
            self.let_go_of_members(i);
        }
    }
}
