//! Reading a worker's IPC socket on the primary side: frames in, what they mean out.
//!
//! The loop thread reads every worker. A host thread that waits on `Supervisor::event_fd`
//! reads the workers that send messages, too (`host_read`), so that a message reaches the
//! host with one wake-up (of the host) instead of two (the loop's, then the host's). Both go
//! through the one `Reader` of the socket, under its lock, so frames are decoded once and in
//! order.

use std::collections::VecDeque;
use std::os::fd::{OwnedFd, RawFd};
use std::time::Instant;

use crate::events::message_cost;
use crate::sys;
use crate::sys::listen::Dispatch;
use crate::wire::body;
use crate::wire::content::ContentType;
use crate::wire::frame::{self, Decoder, Frame, Kind};

/// What one frame from a worker means to the loop.
pub enum Incoming {
    Hello,
    Ready,
    Message(Vec<u8>, ContentType),
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
        /// It takes one off its count in the kernel's turns per connection it is done with.
        counts: bool,
    },
    /// The worker stopped listening on the listener of this name (`server.close()`).
    Unlisten(String),
    /// The worker gives connection `id` back, with its socket: its server has no room.
    Back(u64, OwnedFd),
    /// The worker has room again for connections of the listener of this name.
    Room(String),
    /// A pool worker's answer to a task (the TaskDone body, checked to parse).
    TaskDone(Vec<u8>),
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
    pub(super) pid: libc::pid_t,
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
    pub(super) emptied: bool,
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
            // (A read that brings a descriptor stops early: only a connection given back
            // brings one, which is rare, and one with any other frame is cut off below.)
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
                    Incoming::Message(frame.body.to_vec(), frame.content)
                }
                Kind::ConnectionBack => {
                    let Some(id) = body::parse_conn_id(frame.body) else {
                        return Some(ReadEnd::Violation(format!(
                            "ConnectionBack frame body must be an 8-byte id, got {} bytes",
                            frame.body.len()
                        )));
                    };
                    // The descriptor came with the frame's first byte, or before it.
                    match self.rx_fds.pop_front().filter(|_| frame.has_fd) {
                        Some(fd) => Incoming::Back(id, fd),
                        None => {
                            return Some(ReadEnd::Violation(
                                "ConnectionBack frame without its descriptor".into(),
                            ))
                        }
                    }
                }
                Kind::TaskDone if !frame.has_fd => {
                    if crate::wire::task::parse_task_done(frame.body).is_none() {
                        return Some(ReadEnd::Violation(format!(
                            "malformed TaskDone frame of {} bytes",
                            frame.body.len()
                        )));
                    }
                    self.messages += 1;
                    *room = room.saturating_sub(message_cost(frame.body.len()));
                    Incoming::TaskDone(frame.body.to_vec())
                }
                _ => match control(&frame) {
                    Ok(msg) => msg,
                    Err(detail) => return Some(ReadEnd::Violation(detail)),
                },
            };
            out.push(msg);
        }
        self.decoder.shrink();
        // A descriptor may wait for the rest of its frame (it came with the first byte), as
        // many as one write may carry; any other is one no frame claimed.
        let waits = self.decoder.pending() > 0 && self.rx_fds.len() <= sys::FDS_PER_SEND;
        if !self.rx_fds.is_empty() && !waits {
            self.rx_fds.clear();
            return Some(ReadEnd::Violation(
                "worker sent a file descriptor with a frame other than ConnectionBack".into(),
            ));
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
        Kind::Unlisten if !frame.has_fd => body::parse_listener_name(frame.body)
            .map(Incoming::Unlisten)
            .ok_or_else(malformed),
        Kind::Room if !frame.has_fd => body::parse_listener_name(frame.body)
            .map(Incoming::Room)
            .ok_or_else(malformed),
        Kind::Listen if !frame.has_fd => body::parse_listen_with_flags(frame.body)
            .map(|(request, dispatch, addr, flags)| Incoming::Listen {
                request,
                dispatch,
                addr,
                counts: flags & body::LISTEN_COUNTS != 0,
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

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsRawFd;

    #[test]
    fn a_reader_without_room_stops_at_the_next_message_and_resumes_there_in_order() {
        let (primary, worker) = sys::socketpair().unwrap();
        sys::set_nonblocking(primary.as_raw_fd(), true).unwrap();
        let mut wire = frame::worker_hello(4242);
        frame::encode(&mut wire, Kind::Message, 0, b"a");
        frame::encode(&mut wire, Kind::Message, ContentType::Json.flags(), b"b");
        frame::encode(&mut wire, Kind::Ready, 0, b"");
        sys::send_blocking(worker.as_raw_fd(), &wire).unwrap();
        let mut reader = Reader::new(4242, 1 << 16);
        let mut out = Vec::new();
        // Room for one message: "a" fits, "b" and the Ready behind it wait.
        let end = reader.read(primary.as_raw_fd(), &mut out, 1);
        assert!(matches!(end, ReadEnd::Paused));
        assert!(
            matches!(&out[..], [Incoming::Hello, Incoming::Message(a, ContentType::Raw)] if a == b"a")
        );
        out.clear();
        let end = reader.read(primary.as_raw_fd(), &mut out, 0);
        assert!(matches!(end, ReadEnd::Paused));
        assert!(out.is_empty(), "no room: nothing is decoded");
        let end = reader.read(primary.as_raw_fd(), &mut out, usize::MAX);
        assert!(matches!(end, ReadEnd::Drained));
        assert!(matches!(
            &out[..],
            [Incoming::Message(b, ContentType::Json), Incoming::Ready] if b == b"b"
        ));
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

    #[test]
    fn a_connection_given_back_brings_its_descriptor_even_when_it_waits_for_its_frame() {
        let (primary, worker) = sys::socketpair().unwrap();
        sys::set_nonblocking(primary.as_raw_fd(), true).unwrap();
        sys::send_blocking(worker.as_raw_fd(), &frame::worker_hello(4242)).unwrap();
        let mut wire = Vec::new();
        frame::encode(
            &mut wire,
            Kind::ConnectionBack,
            frame::FLAG_FD,
            &7u64.to_le_bytes(),
        );
        frame::encode(&mut wire, Kind::Room, 0, &body::listener_name("web"));
        let (given, _keep) = sys::socketpair().unwrap();
        // The descriptor comes with the first 3 bytes of the header; the rest follows.
        let sent = sys::send_with_fds(worker.as_raw_fd(), &wire[..3], &[given.as_raw_fd()], true);
        assert_eq!(sent.unwrap(), 3);
        let mut reader = Reader::new(4242, 1 << 16);
        let mut out = Vec::new();
        let end = reader.read(primary.as_raw_fd(), &mut out, usize::MAX);
        assert!(
            matches!(end, ReadEnd::Drained),
            "a descriptor waiting for its frame is fine"
        );
        assert!(matches!(out[..], [Incoming::Hello]));
        sys::send_blocking(worker.as_raw_fd(), &wire[3..]).unwrap();
        out.clear();
        let end = reader.read(primary.as_raw_fd(), &mut out, usize::MAX);
        assert!(matches!(end, ReadEnd::Drained));
        match &out[..] {
            [Incoming::Back(7, fd), Incoming::Room(name)] => {
                assert_ne!(fd.as_raw_fd(), given.as_raw_fd());
                assert_eq!(name, "web");
            }
            _ => panic!("expected the connection back with its descriptor, then room"),
        }
    }

    #[test]
    fn a_connection_given_back_without_its_descriptor_is_a_violation() {
        let (_, end) = read(&[(Kind::ConnectionBack, &7u64.to_le_bytes())]);
        match end {
            ReadEnd::Violation(detail) => assert!(detail.contains("ConnectionBack"), "{detail}"),
            _ => panic!("a connection given back without a descriptor must be a violation"),
        }
    }

    #[test]
    fn a_descriptor_sent_with_a_message_is_still_a_violation() {
        let (primary, worker) = sys::socketpair().unwrap();
        sys::set_nonblocking(primary.as_raw_fd(), true).unwrap();
        let mut wire = frame::worker_hello(4242);
        frame::encode(&mut wire, Kind::Message, 0, b"hi");
        let (probe, _keep) = sys::socketpair().unwrap();
        sys::send_with_fds(worker.as_raw_fd(), &wire, &[probe.as_raw_fd()], true).unwrap();
        let mut reader = Reader::new(4242, 1 << 16);
        let mut out = Vec::new();
        match reader.read(primary.as_raw_fd(), &mut out, usize::MAX) {
            ReadEnd::Violation(detail) => {
                assert!(detail.contains("worker sent a file descriptor"), "{detail}")
            }
            _ => panic!("a descriptor no frame claims must be a violation"),
        }
        assert!(reader.rx_fds.is_empty(), "and it is closed");
    }
}
