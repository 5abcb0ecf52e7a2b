//! Reading a worker's IPC socket on the primary side: frames in, what they mean out.
//!
//! The loop thread reads every worker. A host thread that waits on `Supervisor::event_fd`
//! reads the workers that send messages, too, so that a message reaches the host with one
//! wake-up (of the host) instead of two (the loop's, then the host's). Both go through the
//! one `Reader` of the socket, under its lock, so frames are decoded once and in order.

use std::collections::{HashMap, VecDeque};
use std::os::fd::{OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

use crate::events::{message_cost, Event, EventQueue};
use crate::primary::link::{Link, Waker};
use crate::sys::listen::Dispatch;
use crate::sys::{self, Epoll};
use crate::wire::body;
use crate::wire::frame::{self, Decoder, Frame, Kind};

/// What one frame from a worker means to the loop.
pub enum Incoming {
    Hello,
    Ready,
    Message(Vec<u8>),
    Disconnect,
    /// The worker has connection `id` (the primary may close its copy).
    Ack(u64),
    /// The worker closed connection `id`.
    Closed(u64),
    /// The worker asks for a listener on `addr` (what `server.listen()` in a worker means).
    Listen {
        request: u32,
        dispatch: Dispatch,
        addr: String,
    },
    /// The worker stopped listening on the listener of this name (`server.close()`).
    Unlisten(String),
}

/// Reading stopped because of this.
pub enum ReadEnd {
    /// Nothing more for now.
    Drained,
    /// The worker closed its end.
    Eof,
    /// The worker broke the protocol.
    Violation(String),
    /// The worker's end closed in the middle of a frame. A worker that dies of a signal while
    /// it writes leaves that (a crash, not a protocol error); one that exits on its own after
    /// half a frame broke the protocol. Which of the two only its exit status tells.
    CutShort(String),
    /// The next frame is a message and the host's event queue has no room for it: the worker
    /// is not read until there is (it stays in the decoder, the rest in the socket).
    Paused,
}

/// Reads at most this much per readiness event, so one chatty worker cannot starve the others.
const READ_BUDGET: usize = 4 << 20;

/// The decoding state of one worker's socket.
pub struct Reader {
    pid: libc::pid_t,
    decoder: Decoder,
    /// Descriptors received but not yet claimed by a frame.
    rx_fds: VecDeque<OwnedFd>,
    /// The worker said Hello (its first frame must be that).
    hello: bool,
    /// Frames decoded so far; any frame is a sign of life.
    pub frames: u64,
    /// User messages decoded so far.
    pub messages: u64,
    /// When the last user message was read.
    pub last_message: Option<Instant>,
    /// The last read left the socket empty (it returned less than it asked for).
    emptied: bool,
}

impl Reader {
    pub fn new(pid: libc::pid_t, max_message: usize) -> Reader {
        Reader {
            pid,
            decoder: Decoder::new(max_message),
            rx_fds: VecDeque::new(),
            hello: false,
            frames: 0,
            messages: 0,
            last_message: None,
            emptied: false,
        }
    }

    /// Reads available bytes from `fd` and decodes frames into `out`, messages only while
    /// their cost (`events::message_cost`) fits in `room`: at the first message that does
    /// not, it stops with `Paused`. Other frames before that one are decoded whatever the room.
    pub fn read(&mut self, fd: RawFd, out: &mut Vec<Incoming>, room: usize) -> ReadEnd {
        let before = self.messages;
        let end = self.read_frames(fd, out, room);
        if self.messages != before {
            self.last_message = Some(Instant::now());
        }
        end
    }

    fn read_frames(&mut self, fd: RawFd, out: &mut Vec<Incoming>, mut room: usize) -> ReadEnd {
        // Frames left in the decoder by a pause come first.
        if let Some(end) = self.decode(out, &mut room) {
            return end;
        }
        let mut budget = READ_BUDGET;
        loop {
            let spare = self.decoder.spare(64 * 1024);
            let want = spare.len();
            let n = match sys::recv_with_fds(fd, spare, &mut self.rx_fds, false) {
                Ok(0) => {
                    return self
                        .decode(out, &mut room)
                        .unwrap_or_else(|| self.end_of_stream())
                }
                Ok(n) => n,
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return ReadEnd::Drained,
                // Descriptors were lost (MSG_CTRUNC): the worker sent some, which it may not,
                // and the bytes of that read are gone with them. Close what did arrive.
                Err(e) if e.kind() == std::io::ErrorKind::InvalidData => {
                    self.rx_fds.clear();
                    return ReadEnd::Violation(e.to_string());
                }
                Err(_) => return ReadEnd::Eof,
            };
            self.decoder.commit(n);
            if let Some(end) = self.decode(out, &mut room) {
                return end;
            }
            budget = budget.saturating_sub(n);
            // (A read that brings a descriptor stops early; workers send none, and one that
            // does is cut off below.)
            self.emptied = n < want;
            if n < want || budget == 0 {
                return ReadEnd::Drained;
            }
        }
    }

    /// The worker closed its end: a clean end, unless it stopped in the middle of a frame
    /// (the rest of which can never come).
    pub(crate) fn end_of_stream(&self) -> ReadEnd {
        match self.decoder.cut_short() {
            None => ReadEnd::Eof,
            Some(part) => ReadEnd::CutShort(format!("the worker closed its link {part}")),
        }
    }

    /// Received bytes not yet decoded.
    pub(crate) fn pending(&self) -> usize {
        self.decoder.pending()
    }

    /// Decodes the bytes `data` as if one read had brought them (and `fds` with them), for the
    /// fuzz targets: the same path as `read` without a socket.
    pub(crate) fn feed(
        &mut self,
        data: &[u8],
        fds: impl IntoIterator<Item = OwnedFd>,
        out: &mut Vec<Incoming>,
    ) -> Option<ReadEnd> {
        self.rx_fds.extend(fds);
        self.decoder.spare(data.len())[..data.len()].copy_from_slice(data);
        self.decoder.commit(data.len());
        let mut room = usize::MAX;
        self.decode(out, &mut room)
    }

    fn decode(&mut self, out: &mut Vec<Incoming>, room: &mut usize) -> Option<ReadEnd> {
        loop {
            if *room == 0 && self.decoder.next_is_message() {
                self.emptied = false;
                return Some(ReadEnd::Paused);
            }
            let frame = match self.decoder.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(e) => return Some(violation(e)),
            };
            self.frames += 1;
            if !self.hello && frame.kind != Kind::Hello {
                return Some(ReadEnd::Violation(format!(
                    "first frame is {:?}, expected Hello",
                    frame.kind
                )));
            }
            let msg = match frame.kind {
                Kind::Hello if self.hello => {
                    return Some(ReadEnd::Violation("second Hello".into()))
                }
                Kind::Hello => match check_hello(frame.body, self.pid) {
                    Ok(()) => {
                        self.hello = true;
                        Incoming::Hello
                    }
                    Err(end) => return Some(end),
                },
                Kind::Heartbeat if frame.body.is_empty() => continue,
                Kind::Message => {
                    self.messages += 1;
                    *room = room.saturating_sub(message_cost(frame.body.len()));
                    Incoming::Message(frame.body.to_vec())
                }
                _ => match control(&frame) {
                    Ok(msg) => msg,
                    Err(detail) => return Some(ReadEnd::Violation(detail)),
                },
            };
            out.push(msg);
        }
        self.decoder.shrink();
        if !self.rx_fds.is_empty() {
            self.rx_fds.clear();
            return Some(ReadEnd::Violation("worker sent a file descriptor".into()));
        }
        None
    }
}

/// A worker's hello must carry its pid, and nothing else.
fn check_hello(body: &[u8], pid: libc::pid_t) -> Result<(), ReadEnd> {
    match frame::parse_hello(body) {
        Ok(fields) if fields == [pid as u32] => Ok(()),
        Ok(fields) => Err(ReadEnd::Violation(format!(
            "worker hello must carry its pid {pid} and nothing else, got {fields:?}"
        ))),
        Err(e) => Err(violation(e)),
    }
}

/// What a frame from a worker other than a hello, a heartbeat or a message means, or why it
/// breaks the protocol.
fn control(frame: &Frame<'_>) -> Result<Incoming, String> {
    let malformed = || {
        format!(
            "malformed {:?} frame of {} bytes",
            frame.kind,
            frame.body.len()
        )
    };
    match frame.kind {
        Kind::Ready | Kind::Heartbeat | Kind::Disconnect if !frame.body.is_empty() => Err(format!(
            "{:?} frame with a {}-byte body (must be empty)",
            frame.kind,
            frame.body.len()
        )),
        Kind::Ready => Ok(Incoming::Ready),
        Kind::Disconnect => Ok(Incoming::Disconnect),
        Kind::ConnectionAck | Kind::ConnectionClosed if frame.has_fd => {
            Err(format!("{:?} frame with a descriptor", frame.kind))
        }
        Kind::ConnectionAck | Kind::ConnectionClosed => match body::parse_conn_id(frame.body) {
            Some(id) if frame.kind == Kind::ConnectionAck => Ok(Incoming::Ack(id)),
            Some(id) => Ok(Incoming::Closed(id)),
            None => Err(format!(
                "{:?} frame body must be an 8-byte id, got {} bytes",
                frame.kind,
                frame.body.len()
            )),
        },
        Kind::Unlisten if !frame.has_fd => body::parse_unlisten(frame.body)
            .map(Incoming::Unlisten)
            .ok_or_else(malformed),
        Kind::Listen if !frame.has_fd => body::parse_listen(frame.body)
            .map(|(request, dispatch, addr)| Incoming::Listen {
                request,
                dispatch,
                addr,
            })
            .ok_or_else(malformed),
        other => Err(format!("unexpected {other:?} frame from a worker")),
    }
}

/// A decoding error as the detail of a violation: its text without the error type's
/// "protocol error: " prefix, which whoever shows the event adds itself.
fn violation(e: crate::error::Error) -> ReadEnd {
    match e {
        crate::error::Error::Protocol(detail) => ReadEnd::Violation(detail),
        other => ReadEnd::Violation(other.to_string()),
    }
}

/// The token of the event queue's descriptor in the host's epoll set.
const EVENTS: u64 = u64::MAX;

/// What a host thread read that only the loop can act on (everything but user messages).
pub struct Forwarded {
    pub key: u64,
    pub incoming: Vec<Incoming>,
    pub end: ReadEnd,
}

/// Reading by the host thread. Off until the host asks for `event_fd`; then the loop adds the
/// socket of each worker that sends messages to `epoll`, which is that descriptor.
pub struct HostRead {
    /// Made when a host first asks for `event_fd`: until then, no descriptor. None when it
    /// could not be made (no memory): the host then waits on the event queue alone.
    epoll: OnceLock<Option<Epoll>>,
    links: Mutex<HashMap<u64, Arc<Link>>>,
    /// How many sockets are in `epoll`: none, and reading costs no system call.
    count: AtomicUsize,
    /// The last `read` left every socket it read empty: the next one (the caller's check
    /// that nothing more waits) can skip the system call; new bytes make the fd readable.
    emptied: AtomicBool,
    /// In the order read; the loop takes them before it reads the same sockets itself.
    pub forwarded: Mutex<Vec<Forwarded>>,
}

impl HostRead {
    pub fn new() -> HostRead {
        HostRead {
            epoll: OnceLock::new(),
            links: Mutex::new(HashMap::new()),
            count: AtomicUsize::new(0),
            emptied: AtomicBool::new(false),
            forwarded: Mutex::new(Vec::new()),
        }
    }

    /// The descriptor a host loop waits on: readable when events may be waiting. Without
    /// memory for an epoll set, the event queue's own descriptor (and no reading here).
    pub fn fd(&self, events: &EventQueue) -> RawFd {
        let queue = events.raw_fd();
        let epoll = self.epoll.get_or_init(|| {
            let watch = |ep: Epoll| {
                ep.add(queue, libc::EPOLLIN as u32, EVENTS)?;
                Ok::<_, std::io::Error>(ep)
            };
            Epoll::new().and_then(watch).ok()
        });
        epoll.as_ref().map_or(queue, Epoll::raw)
    }

    fn epoll(&self) -> Option<&Epoll> {
        self.epoll.get().and_then(Option::as_ref)
    }

    pub fn is_on(&self) -> bool {
        self.epoll().is_some()
    }

    /// Loop side: the host reads this worker's socket too, from now on.
    pub fn add(&self, link: &Arc<Link>) {
        let Some(epoll) = self.epoll() else {
            return;
        };
        if epoll
            .add(link.raw(), libc::EPOLLIN as u32, link.key)
            .is_ok()
        {
            self.links
                .lock()
                .unwrap()
                .insert(link.key, Arc::clone(link));
            self.count.fetch_add(1, Ordering::AcqRel);
        }
    }

    /// The host no longer reads this socket.
    pub fn remove(&self, link: &Link) {
        if self.links.lock().unwrap().remove(&link.key).is_some() {
            if let Some(epoll) = self.epoll() {
                epoll.delete(link.raw());
            }
            self.count.fetch_sub(1, Ordering::AcqRel);
        }
    }

    /// Host side: reads the worker sockets that are readable, without waiting. Messages go to
    /// `events` at once (while the socket's reader is held, so nothing read later overtakes
    /// them), for the caller to take with `try_pop`; everything else goes to the loop, woken
    /// through `waker`. True when it queued a message. A worker whose messages find no room
    /// in `events` is handed back to the loop, which pauses it (see `ReadEnd::Paused`).
    pub fn read(&self, events: &EventQueue, waker: &Waker) -> bool {
        if self.count.load(Ordering::Acquire) == 0 {
            return false;
        }
        let Some(epoll) = self.epoll() else {
            return false;
        };
        if self.emptied.swap(false, Ordering::AcqRel) {
            return false;
        }
        let mut ready = Vec::with_capacity(16);
        if epoll.wait(&mut ready, Some(Duration::ZERO)).is_err() {
            return false;
        }
        let mut queued = false;
        let mut emptied = !ready.is_empty();
        for ev in ready {
            let key = ev.u64;
            if key == EVENTS {
                continue;
            }
            let Some(link) = self.links.lock().unwrap().get(&key).cloned() else {
                continue;
            };
            // When the loop is reading it right now, this waits (briefly) for it: what the loop
            // read is in the queue by then, for the caller to take.
            let mut reader = link.reader.lock().unwrap();
            let (frames, messages) = (reader.frames, reader.messages);
            let mut incoming = Vec::new();
            let end = reader.read(link.raw(), &mut incoming, events.room());
            emptied &= reader.emptied;
            let mut out = Vec::new();
            let mut rest = Vec::new();
            for m in incoming {
                match m {
                    Incoming::Message(data) => out.push(Event::Message {
                        id: link.id,
                        pid: reader.pid as u32,
                        data,
                    }),
                    other => rest.push(other),
                }
            }
            queued |= !out.is_empty();
            events.push_for_self(&mut out);
            // Heartbeats show up only as frames that were not messages.
            let others = reader.frames - frames > reader.messages - messages;
            let done = !matches!(end, ReadEnd::Drained);
            if others || !rest.is_empty() || done {
                if done {
                    // End of file or a broken frame stays "readable", and so does a worker
                    // paused for room: stop watching it here; the loop takes it over.
                    self.remove(&link);
                }
                self.forwarded.lock().unwrap().push(Forwarded {
                    key: link.key,
                    incoming: rest,
                    end,
                });
                waker.wake();
            }
        }
        self.emptied.store(emptied && queued, Ordering::Release);
        queued
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::primary::link::Limits;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_host_thread_takes_the_messages_and_forwards_the_rest_in_order() {
        let (primary, worker) = sys::socketpair().unwrap();
        sys::set_nonblocking(primary.as_raw_fd(), true).unwrap();
        let limits = Limits {
            queue: 1 << 20,
            message: 1 << 16,
        };
        let link = Arc::new(Link::new(3, 7, primary, 4242, limits));
        let events = EventQueue::new(1 << 20).unwrap();
        let waker = Waker::new().unwrap();
        let host = HostRead::new();
        assert!(!host.is_on(), "off until a host asks for event_fd");
        let fd = host.fd(&events);
        assert_ne!(fd, events.raw_fd(), "the host waits on an epoll set");
        host.add(&link);

        let mut wire = frame::worker_hello(4242);
        frame::encode(&mut wire, Kind::Message, 0, b"a");
        frame::encode(&mut wire, Kind::Heartbeat, 0, b"");
        frame::encode(&mut wire, Kind::ConnectionAck, 0, &9u64.to_le_bytes());
        frame::encode(&mut wire, Kind::Message, 0, b"b");
        sys::send_blocking(worker.as_raw_fd(), &wire).unwrap();
        assert!(
            sys::poll_one(fd, libc::POLLIN, Some(Duration::from_secs(5))).unwrap(),
            "the host's descriptor is readable when a worker wrote"
        );
        assert!(host.read(&events, &waker));
        for want in [&b"a"[..], b"b"] {
            match events.try_pop() {
                Some(Event::Message {
                    id: 3,
                    pid: 4242,
                    data,
                }) => assert_eq!(data, want),
                other => panic!("expected message {want:?}, got {other:?}"),
            }
        }
        assert!(events.try_pop().is_none());
        let forwarded = std::mem::take(&mut *host.forwarded.lock().unwrap());
        assert_eq!(forwarded.len(), 1);
        let f = &forwarded[0];
        assert_eq!(f.key, 7);
        assert!(matches!(
            f.incoming[..],
            [Incoming::Hello, Incoming::Ack(9)]
        ));
        assert!(matches!(f.end, ReadEnd::Drained));
        assert!(
            sys::poll_one(waker.raw(), libc::POLLIN, Some(Duration::ZERO)).unwrap(),
            "the loop is woken for what only it can act on"
        );

        // Right after a read that emptied the socket, the check for more is free (no call).
        assert!(!host.read(&events, &waker));
        // The worker is gone: the loop hears of it, and the host stops watching the socket.
        drop(worker);
        assert!(sys::poll_one(fd, libc::POLLIN, Some(Duration::from_secs(5))).unwrap());
        assert!(!host.read(&events, &waker));
        let forwarded = std::mem::take(&mut *host.forwarded.lock().unwrap());
        assert!(matches!(
            forwarded[..],
            [Forwarded {
                key: 7,
                end: ReadEnd::Eof,
                ..
            }]
        ));
        assert_eq!(host.count.load(Ordering::Acquire), 0);
        assert!(!sys::poll_one(fd, libc::POLLIN, Some(Duration::ZERO)).unwrap());
    }

    #[test]
    fn a_reader_without_room_stops_at_the_next_message_and_resumes_there_in_order() {
        let (primary, worker) = sys::socketpair().unwrap();
        sys::set_nonblocking(primary.as_raw_fd(), true).unwrap();
        let mut wire = frame::worker_hello(4242);
        frame::encode(&mut wire, Kind::Message, 0, b"a");
        frame::encode(&mut wire, Kind::Message, 0, b"b");
        frame::encode(&mut wire, Kind::Ready, 0, b"");
        sys::send_blocking(worker.as_raw_fd(), &wire).unwrap();
        let mut reader = Reader::new(4242, 1 << 16);
        let mut out = Vec::new();
        // Room for one message: "a" fits, "b" and the Ready behind it wait.
        let end = reader.read(primary.as_raw_fd(), &mut out, 1);
        assert!(matches!(end, ReadEnd::Paused));
        assert!(matches!(&out[..], [Incoming::Hello, Incoming::Message(a)] if a == b"a"));
        out.clear();
        let end = reader.read(primary.as_raw_fd(), &mut out, 0);
        assert!(matches!(end, ReadEnd::Paused));
        assert!(out.is_empty(), "no room: nothing is decoded");
        let end = reader.read(primary.as_raw_fd(), &mut out, usize::MAX);
        assert!(matches!(end, ReadEnd::Drained));
        assert!(matches!(&out[..], [Incoming::Message(b), Incoming::Ready] if b == b"b"));
    }

    #[test]
    fn a_host_thread_hands_a_worker_without_room_back_to_the_loop() {
        let (primary, worker) = sys::socketpair().unwrap();
        sys::set_nonblocking(primary.as_raw_fd(), true).unwrap();
        let limits = Limits {
            queue: 1 << 20,
            message: 1 << 16,
        };
        let link = Arc::new(Link::new(3, 7, primary, 4242, limits));
        let events = EventQueue::new(message_cost(1)).unwrap();
        let waker = Waker::new().unwrap();
        let host = HostRead::new();
        let fd = host.fd(&events);
        host.add(&link);
        let mut wire = frame::worker_hello(4242);
        for body in [b"a", b"b", b"c"] {
            frame::encode(&mut wire, Kind::Message, 0, body);
        }
        sys::send_blocking(worker.as_raw_fd(), &wire).unwrap();
        assert!(sys::poll_one(fd, libc::POLLIN, Some(Duration::from_secs(5))).unwrap());
        assert!(host.read(&events, &waker));
        assert!(matches!(events.try_pop(), Some(Event::Message { data, .. }) if data == b"a"));
        assert!(events.try_pop().is_none(), "one message fitted");
        let forwarded = std::mem::take(&mut *host.forwarded.lock().unwrap());
        assert!(matches!(
            forwarded[..],
            [Forwarded {
                key: 7,
                end: ReadEnd::Paused,
                ..
            }]
        ));
        assert_eq!(
            host.count.load(Ordering::Acquire),
            0,
            "the host no longer reads it"
        );
    }

    /// Reads what `frames` become at the primary, after the worker's hello.
    fn read(frames: &[(Kind, &[u8])]) -> (Vec<Incoming>, ReadEnd) {
        let (primary, worker) = sys::socketpair().unwrap();
        sys::set_nonblocking(primary.as_raw_fd(), true).unwrap();
        let mut wire = frame::worker_hello(4242);
        for (kind, body) in frames {
            frame::encode(&mut wire, *kind, 0, body);
        }
        sys::send_blocking(worker.as_raw_fd(), &wire).unwrap();
        let mut reader = Reader::new(4242, 1 << 16);
        let mut out = Vec::new();
        let end = reader.read(primary.as_raw_fd(), &mut out, usize::MAX);
        (out, end)
    }

    #[test]
    fn descriptors_overflowing_the_control_buffer_are_a_violation_and_all_are_closed() {
        let (primary, worker) = sys::socketpair().unwrap();
        sys::set_nonblocking(primary.as_raw_fd(), true).unwrap();
        let wire = frame::worker_hello(4242);
        // One descriptor more than a read has room for, sent 16 at a time would not do it:
        // the kernel hands a read the descriptors of one send only. So one send of them all.
        let (probe, _keep) = sys::socketpair().unwrap();
        let count = sys::FDS_PER_RECV + 1;
        // SAFETY: CMSG_SPACE is arithmetic on its argument; it reads no memory.
        let space = unsafe { libc::CMSG_SPACE((4 * count) as u32) } as usize;
        let mut control = vec![0u64; space.div_ceil(8)];
        let mut iov = libc::iovec {
            iov_base: wire.as_ptr() as *mut _,
            iov_len: wire.len(),
        };
        // SAFETY: the control message is built inside `control`, aligned and large enough.
        let sent = unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = &mut iov;
            msg.msg_iovlen = 1;
            msg.msg_control = control.as_mut_ptr().cast();
            msg.msg_controllen = space as _;
            let cmsg = libc::CMSG_FIRSTHDR(&msg);
            (*cmsg).cmsg_level = libc::SOL_SOCKET;
            (*cmsg).cmsg_type = libc::SCM_RIGHTS;
            (*cmsg).cmsg_len = libc::CMSG_LEN((4 * count) as u32) as _;
            let fds = libc::CMSG_DATA(cmsg).cast::<RawFd>();
            for i in 0..count {
                std::ptr::write_unaligned(fds.add(i), probe.as_raw_fd());
            }
            libc::sendmsg(worker.as_raw_fd(), &msg, 0)
        };
        assert_eq!(sent, wire.len() as isize);
        let mut reader = Reader::new(4242, 1 << 16);
        let mut out = Vec::new();
        match reader.read(primary.as_raw_fd(), &mut out, usize::MAX) {
            ReadEnd::Violation(detail) => assert!(detail.contains("MSG_CTRUNC"), "{detail}"),
            _ => panic!("descriptors lost in a read must be a protocol violation"),
        }
        assert!(
            reader.rx_fds.is_empty(),
            "the descriptors that arrived are closed"
        );
    }

    #[test]
    fn an_end_of_stream_in_the_middle_of_a_frame_is_a_cut_frame_naming_it() {
        let (primary, worker) = sys::socketpair().unwrap();
        sys::set_nonblocking(primary.as_raw_fd(), true).unwrap();
        let mut wire = frame::worker_hello(4242);
        frame::encode(&mut wire, Kind::Message, 0, &[1; 10]);
        wire.truncate(wire.len() - 3);
        sys::send_blocking(worker.as_raw_fd(), &wire).unwrap();
        drop(worker);
        let mut reader = Reader::new(4242, 1 << 16);
        let mut out = Vec::new();
        // The first read may stop short of the end of the stream; the second meets it.
        let mut end = reader.read(primary.as_raw_fd(), &mut out, usize::MAX);
        if matches!(end, ReadEnd::Drained) {
            end = reader.read(primary.as_raw_fd(), &mut out, usize::MAX);
        }
        match end {
            ReadEnd::CutShort(detail) => assert_eq!(
                detail,
                "the worker closed its link in the middle of a Message frame (7 of its 10 body bytes)"
            ),
            _ => panic!("a frame cut short by the end of the stream must be reported as such"),
        }
        assert!(matches!(out[..], [Incoming::Hello]));
    }

    #[test]
    fn an_unlisten_frame_names_its_listener_and_nothing_else() {
        let mut body = Vec::new();
        frame::put_str(&mut body, "web");
        let (out, end) = read(&[(Kind::Unlisten, &body)]);
        assert!(matches!(&out[..], [Incoming::Hello, Incoming::Unlisten(n)] if n == "web"));
        assert!(matches!(end, ReadEnd::Drained));

        body.push(0);
        let (_, end) = read(&[(Kind::Unlisten, &body)]);
        match end {
            ReadEnd::Violation(detail) => assert!(detail.contains("Unlisten"), "{detail}"),
            _ => panic!("a trailing byte must be a protocol violation"),
        }
    }
}
