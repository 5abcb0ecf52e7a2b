//! A very small HTTP/1.x server for the loop: it reads one request per connection (the
//! request line is all it looks at), answers it, and closes. Everything is bounded — clients
//! at once, request size, time to send a request and to take the answer — and nothing
//! blocks: a client that sends nothing or never reads costs one slot until its deadline.
//! No thread: the loop polls the sockets with everything else.

use std::io;
use std::os::fd::{AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::sys::listen::{self, Dispatch, ListenAddr};
use crate::sys::{self, Epoll};

/// Most clients served at once; a new one beyond takes the place of the oldest.
pub const MAX_CLIENTS: usize = 16;
/// Largest request head taken (request line and headers).
pub const MAX_REQUEST: usize = 8192;
/// A client has this long to send its request and take the answer.
pub const CLIENT_TIME: Duration = Duration::from_secs(5);

/// What a request asks for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    Health,
    Ready,
    Metrics,
    NotFound,
    /// Not GET or HEAD.
    BadMethod,
    /// Not an HTTP request line, or a head larger than `MAX_REQUEST`.
    Bad,
}

/// An answer to a request.
pub struct Answer {
    pub status: u16,
    pub content_type: &'static str,
    pub body: String,
}

struct Client {
    fd: OwnedFd,
    buf: Vec<u8>,
    /// The response being written, and how much of it went out.
    out: Option<(Vec<u8>, usize)>,
    /// HEAD: the answer goes without its body.
    head_only: bool,
    deadline: Instant,
}

pub struct Server {
    fd: OwnedFd,
    pub addr: ListenAddr,
    clients: Vec<Option<Client>>,
    /// The epoll token of the listener; client `i` is `token + 1 + i`.
    token: u64,
}

impl Server {
    /// Binds `addr` and adds the socket to `epoll` under `token` (clients take the tokens
    /// after it).
    pub fn bind(addr: &ListenAddr, epoll: &Epoll, token: u64) -> Result<Server> {
        let fd = listen::bind(addr, Dispatch::RoundRobin, false)?;
        let actual = listen::local_addr(fd.as_raw_fd(), addr);
        epoll
            .add(fd.as_raw_fd(), libc::EPOLLIN as u32, token)
            .map_err(|e| crate::error::Error::io("epoll_ctl", e))?;
        Ok(Server {
            fd,
            addr: actual,
            clients: (0..MAX_CLIENTS).map(|_| None).collect(),
            token,
        })
    }

    /// Whether `token` is one of this server's, and which client (None: the listener).
    pub fn owns(&self, token: u64) -> Option<Option<usize>> {
        let i = token.checked_sub(self.token)?;
        match i {
            0 => Some(None),
            i if (i as usize) <= MAX_CLIENTS => Some(Some(i as usize - 1)),
            _ => None,
        }
    }

    /// The earliest client deadline.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.clients.iter().flatten().map(|c| c.deadline).min()
    }

    /// Accepts what waits. When every slot is taken, the oldest client makes room: clients
    /// that hold a slot without finishing a request must not keep probes out.
    pub fn accept(&mut self, epoll: &Epoll, now: Instant) {
        // Bounded: a flood of connections is taken a batch per wake-up.
        for _ in 0..4 * MAX_CLIENTS {
            let Ok(Some((fd, _))) = listen::accept(self.fd.as_raw_fd()) else {
                return;
            };
            let i = match self.clients.iter().position(Option::is_none) {
                Some(i) => i,
                None => {
                    let oldest = (0..self.clients.len())
                        .min_by_key(|&i| self.clients[i].as_ref().map(|c| c.deadline))
                        .unwrap_or(0);
                    self.close(epoll, oldest);
                    oldest
                }
            };
            if sys::set_nonblocking(fd.as_raw_fd(), true).is_err()
                || epoll
                    .add(
                        fd.as_raw_fd(),
                        libc::EPOLLIN as u32,
                        self.token + 1 + i as u64,
                    )
                    .is_err()
            {
                continue;
            }
            self.clients[i] = Some(Client {
                fd,
                buf: Vec::new(),
                out: None,
                head_only: false,
                deadline: now + CLIENT_TIME,
            });
        }
    }

    /// Reads from client `i`; the route once its request head is complete.
    pub fn readable(&mut self, epoll: &Epoll, i: usize) -> Option<Route> {
        let c = self.clients.get_mut(i)?.as_mut()?;
        if c.out.is_some() {
            return None;
        }
        let mut chunk = [0u8; 2048];
        loop {
            match sys::read(c.fd.as_raw_fd(), &mut chunk) {
                Ok(0) => {
                    self.close(epoll, i);
                    return None;
                }
                Ok(n) => {
                    c.buf.extend_from_slice(&chunk[..n]);
                    if let Some(route) = parse(&c.buf, &mut c.head_only) {
                        return Some(route);
                    }
                    if c.buf.len() > MAX_REQUEST {
                        return Some(Route::Bad);
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return None,
                Err(_) => {
                    self.close(epoll, i);
                    return None;
                }
            }
        }
    }

    /// Sends `answer` to client `i` and closes it once it is all out.
    pub fn respond(&mut self, epoll: &Epoll, i: usize, answer: Answer) {
        let Some(c) = self.clients.get_mut(i).and_then(Option::as_mut) else {
            return;
        };
        let reason = match answer.status {
            200 => "OK",
            400 => "Bad Request",
            404 => "Not Found",
            405 => "Method Not Allowed",
            _ => "Service Unavailable",
        };
        let mut out = format!(
            "HTTP/1.1 {} {reason}\r\nContent-Type: {}\r\nContent-Length: {}\r\n\
             Cache-Control: no-store\r\nConnection: close\r\n\r\n",
            answer.status,
            answer.content_type,
            answer.body.len()
        )
        .into_bytes();
        if !c.head_only {
            out.extend_from_slice(answer.body.as_bytes());
        }
        c.buf = Vec::new();
        c.out = Some((out, 0));
        self.writable(epoll, i);
    }

    /// Writes what client `i` can take; closes it when done or gone.
    pub fn writable(&mut self, epoll: &Epoll, i: usize) {
        let Some(c) = self.clients.get_mut(i).and_then(Option::as_mut) else {
            return;
        };
        let Some((out, sent)) = c.out.as_mut() else {
            return;
        };
        while *sent < out.len() {
            match sys::send(c.fd.as_raw_fd(), &out[*sent..]) {
                Ok(n) => *sent += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    let token = self.token + 1 + i as u64;
                    let _ = epoll.modify(c.fd.as_raw_fd(), libc::EPOLLOUT as u32, token);
                    return;
                }
                Err(_) => break,
            }
        }
        self.close(epoll, i);
    }

    /// Closes the clients past their deadline.
    pub fn expire(&mut self, epoll: &Epoll, now: Instant) {
        for i in 0..self.clients.len() {
            if self.clients[i].as_ref().is_some_and(|c| now >= c.deadline) {
                self.close(epoll, i);
            }
        }
    }

    fn close(&mut self, epoll: &Epoll, i: usize) {
        if let Some(c) = self.clients[i].take() {
            epoll.delete(c.fd.as_raw_fd());
        }
    }

    /// Closes every client and the listener (a Unix socket's file is removed).
    pub fn close_all(&mut self, epoll: &Epoll) {
        for i in 0..self.clients.len() {
            self.close(epoll, i);
        }
        epoll.delete(self.fd.as_raw_fd());
        listen::unlink_unix(&self.addr);
    }
}

/// The route of a complete request head in `buf`; None while it is incomplete.
fn parse(buf: &[u8], head_only: &mut bool) -> Option<Route> {
    let end = buf.windows(4).position(|w| w == b"\r\n\r\n")?;
    let head = std::str::from_utf8(&buf[..end]).ok();
    let line = head.and_then(|h| h.lines().next()).unwrap_or("");
    let mut parts = line.split(' ');
    let (Some(method), Some(target), Some(version), None) =
        (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Some(Route::Bad);
    };
    if !version.starts_with("HTTP/1.") || !target.starts_with('/') {
        return Some(Route::Bad);
    }
    match method {
        "GET" => {}
        "HEAD" => *head_only = true,
        _ => return Some(Route::BadMethod),
    }
    let path = target.split('?').next().unwrap_or(target);
    Some(match path {
        "/healthz" => Route::Health,
        "/readyz" => Route::Ready,
        "/metrics" => Route::Metrics,
        _ => Route::NotFound,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn route(req: &str) -> Option<Route> {
        parse(req.as_bytes(), &mut false)
    }

    #[test]
    fn request_lines_route_by_path_and_bad_ones_are_refused() {
        assert_eq!(
            route("GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n"),
            Some(Route::Metrics)
        );
        assert_eq!(
            route("GET /readyz?verbose HTTP/1.0\r\n\r\n"),
            Some(Route::Ready)
        );
        assert_eq!(route("HEAD /healthz HTTP/1.1\r\n\r\n"), Some(Route::Health));
        assert_eq!(route("GET /nope HTTP/1.1\r\n\r\n"), Some(Route::NotFound));
        assert_eq!(
            route("POST /metrics HTTP/1.1\r\n\r\n"),
            Some(Route::BadMethod)
        );
        assert_eq!(route("GET /metrics\r\n\r\n"), Some(Route::Bad));
        assert_eq!(route("GET /metrics HTTP/1.1\r\nHost: x\r\n"), None);
    }
}
