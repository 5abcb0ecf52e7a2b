//! One client of the control socket: its buffers, reading its requests and writing to it,
//! never blocking the loop.

use std::io::{self, Read, Write};
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;

use serde_json::{json, Value};

use super::{
    Control, CONTROL, MAX_REQUEST, READ_CHUNK, REPLY_LIMIT, REQUESTS_PER_TURN, STREAM_LIMIT,
};
use crate::events::Event;
use crate::primary::Primary;

#[derive(Clone, Copy, PartialEq, Debug)]
pub(super) enum Mode {
    /// Waits for a request.
    Idle,
    /// Streams lifecycle events.
    Events,
    /// Streams a reload's progress until it ends.
    Reload(u32),
    /// Streams new log lines.
    Follow,
}

pub(super) struct Client {
    pub(super) stream: UnixStream,
    pub(super) inbuf: Vec<u8>,
    pub(super) out: Vec<u8>,
    pub(super) off: usize,
    pub(super) mode: Mode,
    pub(super) polling_out: bool,
    /// Closed once what is queued is written.
    pub(super) closing: bool,
}

impl Primary {
    pub(super) fn read_client(&mut self, c: &mut Control, id: u64) {
        let mut buf = [0u8; READ_CHUNK];
        let Some(cl) = c.clients.get_mut(&id) else {
            return;
        };
        // Requests read already come first; meanwhile the socket is not read, so what is
        // held for a client that sends faster than it is served stays one read's worth.
        if has_request(cl) {
            return self.serve_requests(c, id);
        }
        let n = match (&cl.stream).read(&mut buf) {
            Ok(0) => return drop_client(c, id),
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => return,
            Err(_) => return drop_client(c, id),
        };
        if cl.mode != Mode::Idle || cl.closing {
            // A streaming client has asked for what it gets; more input is ignored.
            return;
        }
        cl.inbuf.extend_from_slice(&buf[..n]);
        self.serve_requests(c, id);
        if let Some(cl) = c.clients.get_mut(&id) {
            if !has_request(cl) && cl.inbuf.len() > MAX_REQUEST {
                cl.inbuf = Vec::new();
                let why = format!("request longer than {MAX_REQUEST} bytes");
                self.send_client(c, id, &json!({"ok": false, "error": why}));
                if let Some(cl) = c.clients.get_mut(&id) {
                    cl.closing = true;
                }
                self.flush_client(c, id);
            }
        }
    }

    /// Serves up to `REQUESTS_PER_TURN` of the requests client `id` has sent; if more wait,
    /// the loop comes back for them next turn (`control_tick`) instead of serving a flood of
    /// pipelined requests in one go.
    pub(super) fn serve_requests(&mut self, c: &mut Control, id: u64) {
        for _ in 0..REQUESTS_PER_TURN {
            let Some(cl) = c.clients.get_mut(&id).filter(|cl| has_request(cl)) else {
                return;
            };
            let nl = cl.inbuf.iter().position(|&b| b == b'\n').unwrap_or(0);
            let line: Vec<u8> = cl.inbuf.drain(..=nl).collect();
            self.control_request(c, id, &line[..nl]);
        }
        if c.clients.get(&id).is_some_and(has_request) {
            c.backlog = true;
            // The loop must not sleep while requests wait in a buffer.
            self.changed = true;
        }
    }

    /// Queues one JSON line for client `id` and writes what it can. A client past its
    /// limit is dropped (said once, as a warning).
    pub(super) fn send_client(&mut self, c: &mut Control, id: u64, v: &Value) {
        self.send_line(c, id, v.to_string());
    }

    /// `send_client` for a line of JSON already made (without its newline).
    pub(super) fn send_line(&mut self, c: &mut Control, id: u64, mut line: String) {
        let Some(cl) = c.clients.get_mut(&id) else {
            return;
        };
        let limit = if cl.mode == Mode::Idle {
            REPLY_LIMIT
        } else {
            STREAM_LIMIT
        };
        line.push('\n');
        if cl.out.len() - cl.off + line.len() > limit {
            self.out.push(Event::Warning {
                detail: format!(
                    "control socket: dropped a client that does not read ({limit} bytes waited for it)"
                ),
            });
            return drop_client(c, id);
        }
        cl.out.extend_from_slice(line.as_bytes());
        self.flush_client(c, id);
    }

    pub(super) fn flush_client(&mut self, c: &mut Control, id: u64) {
        let Some(cl) = c.clients.get_mut(&id) else {
            return;
        };
        while cl.off < cl.out.len() {
            match (&cl.stream).write(&cl.out[cl.off..]) {
                Ok(0) => return drop_client(c, id),
                Ok(n) => cl.off += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return drop_client(c, id),
            }
        }
        if cl.off == cl.out.len() {
            cl.out.clear();
            cl.off = 0;
            if cl.closing {
                return drop_client(c, id);
            }
        } else if cl.off > (64 << 10) && cl.off * 2 > cl.out.len() {
            cl.out.drain(..cl.off);
            cl.off = 0;
        }
        let want_out = !cl.out.is_empty();
        if want_out != cl.polling_out {
            let mut flags = libc::EPOLLIN as u32;
            if want_out {
                flags |= libc::EPOLLOUT as u32;
            }
            if self
                .epoll
                .modify(cl.stream.as_raw_fd(), flags, CONTROL | id)
                .is_ok()
            {
                cl.polling_out = want_out;
            }
        }
    }
}

/// A whole request waits in the client's buffer and the client may ask (it is not
/// streaming, nor being closed).
fn has_request(cl: &Client) -> bool {
    cl.mode == Mode::Idle && !cl.closing && cl.inbuf.contains(&b'\n')
}

pub(super) fn set_mode(c: &mut Control, id: u64, mode: Mode) {
    if let Some(cl) = c.clients.get_mut(&id) {
        cl.mode = mode;
    }
}

pub(super) fn drop_client(c: &mut Control, id: u64) {
    // Closing the descriptor takes it out of the epoll set.
    c.clients.remove(&id);
}
