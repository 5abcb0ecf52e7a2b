//! The loop's side of the worker links: reading frames, writing queued output, and worker
//! stdout/stderr.

use std::os::fd::AsRawFd;
use std::sync::Arc;

use super::{Primary, IPC};
use crate::config::ReadyOn;
use crate::conn::{Conn, Flush};
use crate::events::{Event, WorkerState};
use crate::policy::ExitReason;
use crate::process::{Incoming, ReadEnd};

impl Primary {
    pub(super) fn read_worker(&mut self, key: u64) {
        let mut incoming = Vec::new();
        let Some(p) = self.procs.get_mut(&key) else {
            return;
        };
        let frames = p.frames;
        let end = p.read_ipc(&mut incoming);
        let (slot, pid) = (p.slot, p.pid as u32);
        if p.frames != frames {
            p.last_seen = self.clock.now();
        }
        // Messages and connection bookkeeping change no worker's lifecycle: no reconcile pass
        // (it is O(workers)) for them.
        let routine = incoming.iter().all(|m| {
            matches!(
                m,
                Incoming::Message(_) | Incoming::Ack(_) | Incoming::Closed(_)
            )
        });
        if !routine || !matches!(end, ReadEnd::Drained) {
            self.changed = true;
        }
        for msg in incoming {
            match msg {
                Incoming::Hello => {
                    if let Some(p) = self.procs.get_mut(&key) {
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
                Incoming::Ready => self.mark_ready(key),
                Incoming::Message(data) => self.out.push(Event::Message {
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
                } => self.worker_listen(key, request, dispatch, addr),
                Incoming::Ack(id) => {
                    if let Err(detail) = self.connection_acked(key, id) {
                        return self.protocol_violation(key, detail);
                    }
                }
            }
        }
        match end {
            ReadEnd::Drained => {}
            ReadEnd::Eof => self.close_ipc(key),
            ReadEnd::Violation(detail) => self.protocol_violation(key, detail),
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
                self.epoll.delete(p.conn.raw());
            }
        }
    }

    pub(super) fn flush(&mut self, conn: &Arc<Conn>) {
        if conn.is_closed() {
            return;
        }
        let key = conn.key;
        let Some(p) = self
            .procs
            .get_mut(&key)
            .filter(|p| Arc::ptr_eq(&p.conn, conn))
        else {
            return;
        };
        let want_out = match conn.flush() {
            Flush::Done => false,
            Flush::Blocked => true,
            Flush::Broken => {
                conn.close();
                false
            }
        };
        if want_out != p.out_armed && p.ipc_open {
            let events = libc::EPOLLIN as u32 | if want_out { libc::EPOLLOUT as u32 } else { 0 };
            if self
                .epoll
                .modify(conn.raw(), events, key << 2 | IPC)
                .is_ok()
            {
                p.out_armed = want_out;
            }
        }
    }

    pub(super) fn pump_output(&mut self, key: u64, which: usize) {
        let Some(p) = self.procs.get_mut(&key) else {
            return;
        };
        let Some(pipe) = p.pipes[which].as_mut() else {
            return;
        };
        if !pipe.pump() {
            pipe.finish();
            self.epoll.delete(pipe.fd.as_raw_fd());
            p.pipes[which] = None;
        }
    }
}
