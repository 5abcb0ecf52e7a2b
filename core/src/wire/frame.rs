//! IPC framing: the wire format shared by primary and worker (see `docs/protocol.md`).
//!
//! A frame is an 8-byte header — body length (u32 LE), kind (u8), flags (u8), two reserved
//! zero bytes — followed by the body. Flag bit 0 says one file descriptor travels with the frame
//! (SCM_RIGHTS, sent with the frame's first byte). Bits 1–3 of a `Message` frame's flags are
//! its content type (`content`); every other bit is zero.

use crate::error::{Error, Result};
use crate::wire::content::{ContentType, CONTENT_MASK};

pub const HEADER_LEN: usize = 8;
pub const PROTOCOL_VERSION: u16 = 1;
/// Largest body of a frame that is not a user message.
pub const MAX_CONTROL_BODY: usize = 4096;
pub const FLAG_FD: u8 = 1;

/// Frame kinds. Numbers are part of the protocol and never reused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    Hello = 1,
    Ready = 2,
    Heartbeat = 3,
    Message = 4,
    Disconnect = 5,
    Connection = 6,
    ConnectionAck = 7,
    ConnectionClosed = 8,
    Listen = 9,
    ListenResult = 10,
    Unlisten = 11,
    /// A task for a pool worker (primary to worker; body in `wire::task`).
    Task = 12,
    /// A pool worker's answer to a task (worker to primary; body in `wire::task`).
    TaskDone = 13,
    /// The primary cancelled a task it sent that waits in the worker (primary to worker;
    /// body: the task id, u64 LE).
    TaskCancel = 14,
    /// A connection the worker gives back: its server has no room for it (worker to primary,
    /// with the connection's socket; body: its id, u64 LE).
    ConnectionBack = 15,
    /// The worker has room again for connections of a listener it gave one back of (worker
    /// to primary; body: the listener's name, as `Unlisten`'s).
    Room = 16,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            1 => Kind::Hello,
            2 => Kind::Ready,
            3 => Kind::Heartbeat,
            4 => Kind::Message,
            5 => Kind::Disconnect,
            6 => Kind::Connection,
            7 => Kind::ConnectionAck,
            8 => Kind::ConnectionClosed,
            9 => Kind::Listen,
            10 => Kind::ListenResult,
            11 => Kind::Unlisten,
            12 => Kind::Task,
            13 => Kind::TaskDone,
            14 => Kind::TaskCancel,
            15 => Kind::ConnectionBack,
            16 => Kind::Room,
            _ => return None,
        })
    }

    fn takes_fd(self) -> bool {
        matches!(
            self,
            Kind::Connection | Kind::ListenResult | Kind::ConnectionBack
        )
    }

    /// Kinds that carry user bytes, held to the message limit (plus a task's own fields)
    /// rather than to `MAX_CONTROL_BODY`, and counted against the host's event queue.
    pub fn is_bulk(self) -> bool {
        matches!(self, Kind::Message | Kind::Task | Kind::TaskDone)
    }
}

/// Appends one frame to `out`.
pub fn encode(out: &mut Vec<u8>, kind: Kind, flags: u8, body: &[u8]) {
    let len = u32::try_from(body.len()).expect("frame body fits in u32");
    out.reserve(HEADER_LEN + body.len());
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&[kind as u8, flags, 0, 0]);
    out.extend_from_slice(body);
}

/// The hello a primary sends first: version, the message limit, the worker's id and generation.
pub fn primary_hello(max_message: u32, id: u32, generation: u32) -> Vec<u8> {
    let mut body = Vec::with_capacity(16);
    body.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes());
    body.extend_from_slice(&max_message.to_le_bytes());
    body.extend_from_slice(&id.to_le_bytes());
    body.extend_from_slice(&generation.to_le_bytes());
    let mut out = Vec::new();
    encode(&mut out, Kind::Hello, 0, &body);
    out
}

/// The hello a worker sends first: version and its pid.
pub fn worker_hello(pid: u32) -> Vec<u8> {
    let mut body = Vec::with_capacity(8);
    body.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    body.extend_from_slice(&0u16.to_le_bytes());
    body.extend_from_slice(&pid.to_le_bytes());
    let mut out = Vec::new();
    encode(&mut out, Kind::Hello, 0, &body);
    out
}

/// Checks a hello body's version; returns the u32 fields that follow it.
pub fn parse_hello(body: &[u8]) -> Result<Vec<u32>> {
    if body.len() < 4 || body.len() % 4 != 0 {
        return Err(Error::Protocol(format!(
            "hello body of {} bytes is malformed",
            body.len()
        )));
    }
    let version = u16::from_le_bytes([body[0], body[1]]);
    if body[2] != 0 || body[3] != 0 {
        return Err(Error::Protocol(
            "reserved bytes of the hello are not zero".into(),
        ));
    }
    if version != PROTOCOL_VERSION {
        return Err(Error::Protocol(format!(
            "peer speaks protocol version {version}, this side speaks {PROTOCOL_VERSION}"
        )));
    }
    Ok(body[4..]
        .chunks_exact(4)
        .map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

/// One decoded frame, borrowing its body from the decoder's buffer.
#[derive(Debug)]
pub struct Frame<'a> {
    pub kind: Kind,
    pub has_fd: bool,
    /// What a `Message` body is; `Raw` for every other kind.
    pub content: ContentType,
    pub body: &'a [u8],
}

/// Splits a byte stream into frames, enforcing the size limits.
///
/// The buffer is always initialized; `end` marks how much of it holds received bytes.
pub struct Decoder {
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max_message: usize,
}

impl Decoder {
    /// No memory until the first `spare` (which asks for what a read needs): a decoder made
    /// and dropped at once, or one that is replaced, costs no allocation.
    pub fn new(max_message: usize) -> Decoder {
        Decoder {
            buf: Vec::new(),
            start: 0,
            end: 0,
            max_message,
        }
    }

    /// The largest `Message` body this decoder accepts.
    pub fn max_message(&self) -> usize {
        self.max_message
    }

    /// Space to read into: at least `min` free bytes after the received ones.
    pub fn spare(&mut self, min: usize) -> &mut [u8] {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        } else if self.start > 0 && self.buf.len() - self.end < min {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.buf.len() - self.end < min {
            let want = (self.end + min).max(self.buf.len() * 2);
            self.buf.resize(want, 0);
        }
        &mut self.buf[self.end..]
    }

    /// Marks `n` bytes of the space given by `spare` as received.
    pub fn commit(&mut self, n: usize) {
        self.end += n;
        debug_assert!(self.end <= self.buf.len());
    }

    /// Received bytes not yet returned as frames.
    pub fn pending(&self) -> usize {
        self.end - self.start
    }

    /// Hands received-but-undecoded bytes to another decoder (one with other limits).
    pub fn move_pending_into(self, other: &mut Decoder) {
        let pending = &self.buf[self.start..self.end];
        other.spare(pending.len())[..pending.len()].copy_from_slice(pending);
        other.commit(pending.len());
    }

    /// Whether the next frame is a user message, once its header has arrived.
    pub fn next_is_message(&self) -> bool {
        self.end - self.start >= HEADER_LEN
            && Kind::from_u8(self.buf[self.start + 4]).is_some_and(Kind::is_bulk)
    }

    /// Gives memory back after a large message has passed.
    pub fn shrink(&mut self) {
        if self.start == self.end && self.buf.len() > 1 << 20 {
            self.buf = Vec::new();
            self.start = 0;
            self.end = 0;
        }
    }

    /// What the received-but-undecoded bytes are, when the stream ends with them: None when
    /// there are none, else which frame was cut short and how much of it arrived. Meant for
    /// after `next_frame` returned `Ok(None)` (so a whole header is a valid one).
    pub fn cut_short(&self) -> Option<String> {
        let avail = &self.buf[self.start..self.end];
        if avail.is_empty() {
            return None;
        }
        if avail.len() < HEADER_LEN {
            return Some(format!(
                "in the middle of a frame header ({} of its {HEADER_LEN} bytes)",
                avail.len()
            ));
        }
        let len = u32::from_le_bytes([avail[0], avail[1], avail[2], avail[3]]);
        let kind = Kind::from_u8(avail[4]).map_or("an unknown".into(), |k| format!("a {k:?}"));
        Some(format!(
            "in the middle of {kind} frame ({} of its {len} body bytes)",
            avail.len() - HEADER_LEN
        ))
    }

    /// The next complete frame, `Ok(None)` when more bytes are needed, or a protocol error.
    pub fn next_frame(&mut self) -> Result<Option<Frame<'_>>> {
        let avail = &self.buf[self.start..self.end];
        if avail.len() < HEADER_LEN {
            return Ok(None);
        }
        let len = u32::from_le_bytes([avail[0], avail[1], avail[2], avail[3]]) as usize;
        let (kind_byte, flags) = (avail[4], avail[5]);
        let kind = Kind::from_u8(kind_byte)
            .ok_or_else(|| Error::Protocol(format!("unknown frame kind {kind_byte}")))?;
        let allowed = if kind == Kind::Message {
            FLAG_FD | CONTENT_MASK
        } else {
            FLAG_FD
        };
        if avail[6] != 0 || avail[7] != 0 || flags & !allowed != 0 {
            return Err(Error::Protocol(format!(
                "reserved header bits set in a {kind:?} frame"
            )));
        }
        let content = if kind == Kind::Message {
            ContentType::from_flags(flags)?
        } else {
            ContentType::Raw
        };
        let has_fd = flags & FLAG_FD != 0;
        if has_fd && !kind.takes_fd() {
            return Err(Error::Protocol(format!(
                "a {kind:?} frame may not carry a file descriptor"
            )));
        }
        let limit = if kind == Kind::Message {
            self.max_message
        } else if kind.is_bulk() {
            self.max_message + crate::wire::task::OVERHEAD
        } else {
            MAX_CONTROL_BODY
        };
        if len > limit {
            return Err(Error::Protocol(format!(
                "{kind:?} frame of {len} bytes exceeds the limit of {limit} bytes"
            )));
        }
        if avail.len() < HEADER_LEN + len {
            return Ok(None);
        }
        let body_start = self.start + HEADER_LEN;
        self.start = body_start + len;
        Ok(Some(Frame {
            kind,
            has_fd,
            content,
            body: &self.buf[body_start..body_start + len],
        }))
    }
}

/// Appends a u16-length-prefixed string.
pub fn put_str(out: &mut Vec<u8>, s: &str) {
    let bytes = &s.as_bytes()[..s.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    out.extend_from_slice(bytes);
}

/// Reads a u16-length-prefixed UTF-8 string from the front of `body`, advancing it.
pub fn take_str(body: &mut &[u8]) -> Option<String> {
    let len = u16::from_le_bytes(body.get(..2)?.try_into().ok()?) as usize;
    let s = body.get(2..2 + len)?;
    let s = String::from_utf8(s.to_vec()).ok()?;
    *body = &body[2 + len..];
    Some(s)
}

/// Reads a little-endian integer of N bytes from the front of `body`, advancing it.
pub fn take_bytes<const N: usize>(body: &mut &[u8]) -> Option<[u8; N]> {
    let b: [u8; N] = body.get(..N)?.try_into().ok()?;
    *body = &body[N..];
    Some(b)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn feed(d: &mut Decoder, bytes: &[u8]) {
        d.spare(bytes.len())[..bytes.len()].copy_from_slice(bytes);
        d.commit(bytes.len());
    }

    #[test]
    fn frames_split_across_reads_are_reassembled() {
        let mut wire = Vec::new();
        encode(&mut wire, Kind::Message, 0, b"hello");
        encode(&mut wire, Kind::Ready, 0, b"");
        let mut d = Decoder::new(1024);
        feed(&mut d, &wire[..3]);
        assert!(d.next_frame().unwrap().is_none());
        feed(&mut d, &wire[3..]);
        let f = d.next_frame().unwrap().unwrap();
        assert_eq!((f.kind, f.body), (Kind::Message, &b"hello"[..]));
        assert_eq!(d.next_frame().unwrap().unwrap().kind, Kind::Ready);
        assert!(d.next_frame().unwrap().is_none());
    }

    #[test]
    fn oversized_message_is_a_protocol_error() {
        let mut wire = Vec::new();
        encode(&mut wire, Kind::Message, 0, &[0; 11]);
        let mut d = Decoder::new(10);
        feed(&mut d, &wire);
        assert!(d
            .next_frame()
            .unwrap_err()
            .to_string()
            .contains("exceeds the limit"));
    }

    #[test]
    fn unknown_kind_and_stray_fd_flag_are_protocol_errors() {
        let mut d = Decoder::new(10);
        feed(&mut d, &[0, 0, 0, 0, 99, 0, 0, 0]);
        assert!(d
            .next_frame()
            .unwrap_err()
            .to_string()
            .contains("unknown frame kind 99"));
        let mut d = Decoder::new(10);
        feed(&mut d, &[0, 0, 0, 0, Kind::Ready as u8, FLAG_FD, 0, 0]);
        assert!(d.next_frame().is_err());
    }

    #[test]
    fn message_frames_carry_their_content_type_and_other_kinds_none() {
        let mut wire = Vec::new();
        encode(&mut wire, Kind::Message, ContentType::Json.flags(), b"J{}");
        encode(&mut wire, Kind::Message, 0, b"J{}");
        let mut d = Decoder::new(10);
        feed(&mut d, &wire);
        let f = d.next_frame().unwrap().unwrap();
        assert_eq!((f.content, f.body), (ContentType::Json, &b"J{}"[..]));
        let f = d.next_frame().unwrap().unwrap();
        assert_eq!((f.content, f.body), (ContentType::Raw, &b"J{}"[..]));

        let mut d = Decoder::new(10);
        feed(
            &mut d,
            &[
                0,
                0,
                0,
                0,
                Kind::Ready as u8,
                ContentType::Text.flags(),
                0,
                0,
            ],
        );
        assert!(d.next_frame().unwrap_err().to_string().contains("reserved"));
    }

    #[test]
    fn message_of_an_unknown_content_type_is_a_protocol_error_naming_it() {
        let mut d = Decoder::new(10);
        feed(&mut d, &[0, 0, 0, 0, Kind::Message as u8, 6 << 1, 0, 0]);
        let err = d.next_frame().unwrap_err().to_string();
        assert!(err.contains("unknown message content type 6"), "{err}");
        let mut d = Decoder::new(10);
        feed(&mut d, &[0, 0, 0, 0, Kind::Message as u8, 0x10, 0, 0]);
        assert!(d.next_frame().unwrap_err().to_string().contains("reserved"));
    }

    #[test]
    fn hello_with_other_version_is_refused() {
        assert!(parse_hello(&[9, 0, 0, 0])
            .unwrap_err()
            .to_string()
            .contains("version 9"));
        let v = parse_hello(&primary_hello(5, 6, 7)[HEADER_LEN..]).unwrap();
        assert_eq!(v, vec![5, 6, 7]);
    }
}
