//! Entry points of the fuzz targets in `fuzz/`, and a stable harness that runs the same
//! functions under `cargo test`, so that every build exercises them without a nightly
//! compiler. Not part of the API: hidden from the docs, and it may change at any time.
//!
//! An input is two shape bytes, then a byte stream as it would arrive on a link:
//! - byte 0: how the stream is split into reads (0: one read; n: reads of n bytes);
//! - byte 1: bits 0–1, how many descriptors wait in the receive FIFO before the first frame;
//!   bits 2–7, the `max_message` limit (0: the default; n: 5 × (n − 1) bytes, so that
//!   "over the limit" is within reach).

use std::os::fd::{FromRawFd, OwnedFd};

use crate::primary::reader::{Incoming, ReadEnd, Reader};
use crate::wire::content::ContentType;
use crate::wire::frame::{self, Decoder, Kind, FLAG_FD, MAX_CONTROL_BODY};

/// The pid the primary-side reader expects in the worker's hello.
pub const WORKER_PID: u32 = 4242;

struct Shape<'a> {
    chunk: usize,
    fds: usize,
    max_message: usize,
    stream: &'a [u8],
}

fn shape(data: &[u8]) -> Shape<'_> {
    let (c, s, stream) = match data {
        [c, s, rest @ ..] => (*c, *s, rest),
        _ => (0, 0, &[][..]),
    };
    Shape {
        chunk: if c == 0 { usize::MAX } else { usize::from(c) },
        fds: usize::from(s & 3),
        max_message: match s >> 2 {
            0 => crate::config::DEFAULT_MAX_MESSAGE,
            n => (usize::from(n) - 1) * 5,
        },
        stream,
    }
}

impl Shape<'_> {
    fn reads(&self) -> std::slice::Chunks<'_, u8> {
        self.stream
            .chunks(self.chunk.clamp(1, self.stream.len().max(1)))
    }
}

/// Descriptors that cost nothing to make and own nothing (eventfds).
fn spare_fds(n: usize) -> Vec<OwnedFd> {
    (0..n)
        .filter_map(|_| {
            // SAFETY: eventfd has no memory effects; a valid result is a new descriptor.
            let fd = unsafe { libc::eventfd(0, libc::EFD_CLOEXEC) };
            // SAFETY: just made, owned by nobody else.
            (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
        })
        .collect()
}

/// The frame decoder alone. Every frame it returns must be within its kind's limit, and
/// encoding it again must give back exactly the bytes it was decoded from.
pub fn decoder(data: &[u8]) {
    let s = shape(data);
    let mut d = Decoder::new(s.max_message);
    let mut consumed = 0;
    let mut again = Vec::new();
    for read in s.reads() {
        d.spare(read.len())[..read.len()].copy_from_slice(read);
        d.commit(read.len());
        loop {
            let f = match d.next_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break,
                Err(_) => return,
            };
            let limit = if f.kind == Kind::Message {
                s.max_message
            } else {
                MAX_CONTROL_BODY
            };
            assert!(f.body.len() <= limit, "{:?} body over its limit", f.kind);
            again.clear();
            // Only a message has a content type; any other kind's is `Raw`, which is 0.
            let flags = (if f.has_fd { FLAG_FD } else { 0 }) | f.content.flags();
            frame::encode(&mut again, f.kind, flags, f.body);
            assert_eq!(
                again,
                s.stream[consumed..consumed + again.len()],
                "a frame does not encode back to its bytes"
            );
            consumed += again.len();
            // The body codecs must take any bytes without panicking.
            let _ = frame::parse_hello(f.body);
            let mut body = f.body;
            while frame::take_str(&mut body).is_some() {}
            let mut body = f.body;
            let _ = frame::take_bytes::<8>(&mut body);
        }
        d.shrink();
    }
    assert_eq!(d.pending(), s.stream.len() - consumed);
    assert_eq!(d.cut_short().is_none(), consumed == s.stream.len());
}

/// The primary's reader of a worker's link (`Reader`), fed as reads would feed it, then the
/// end of the stream. It must never panic, deliver no message over the limit, and stop at the
/// first violation.
pub fn primary_reader(data: &[u8]) {
    let s = shape(data);
    let mut r = Reader::new(WORKER_PID as libc::pid_t, s.max_message);
    let mut fds = Some(spare_fds(s.fds));
    let mut out = Vec::new();
    for read in s.reads() {
        let end = r.feed(read, fds.take().into_iter().flatten(), &mut out);
        for m in out.drain(..) {
            if let Incoming::Message(data, _) = m {
                assert!(data.len() <= s.max_message, "message over the limit");
            }
        }
        match end {
            None => {}
            Some(ReadEnd::Violation(detail)) => {
                // Named, and without the error type's prefix (a log line adds it).
                assert!(!detail.is_empty() && !detail.starts_with("protocol error"));
                return;
            }
            Some(_) => panic!("decoding alone ended the stream without a violation"),
        }
    }
    match r.end_of_stream() {
        ReadEnd::Eof => assert_eq!(r.pending(), 0),
        ReadEnd::CutShort(_) => assert_ne!(r.pending(), 0),
        ReadEnd::Violation(_) => panic!("the end of a stream is a clean end or a cut frame"),
        ReadEnd::Drained | ReadEnd::Paused => panic!("the end of a stream is not 'drained'"),
    }
}

/// The worker's reader of its primary's link: the hello, then every frame, with the
/// descriptors of the input waiting in its FIFO.
pub fn worker_reader(data: &[u8]) {
    let s = shape(data);
    let _ = crate::worker::decode_stream(s.reads(), spare_fds(s.fds));
}

/// Inputs that reach past the hello in every target: valid streams in both directions, each
/// with a few shapes.
pub fn seeds() -> Vec<Vec<u8>> {
    let from_worker = {
        let mut w = frame::worker_hello(WORKER_PID);
        frame::encode(&mut w, Kind::Ready, 0, b"");
        frame::encode(&mut w, Kind::Heartbeat, 0, b"");
        frame::encode(&mut w, Kind::Message, 0, b"hello");
        frame::encode(&mut w, Kind::Message, ContentType::Json.flags(), b"{}");
        frame::encode(&mut w, Kind::ConnectionAck, 0, &7u64.to_le_bytes());
        frame::encode(&mut w, Kind::ConnectionClosed, 0, &7u64.to_le_bytes());
        let mut listen = 1u32.to_le_bytes().to_vec();
        listen.push(0);
        frame::put_str(&mut listen, "127.0.0.1:0");
        frame::encode(&mut w, Kind::Listen, 0, &listen);
        let mut unlisten = Vec::new();
        frame::put_str(&mut unlisten, "web");
        frame::encode(&mut w, Kind::Unlisten, 0, &unlisten);
        frame::encode(&mut w, Kind::Disconnect, 0, b"");
        w
    };
    let from_primary = {
        let mut p = frame::primary_hello(1024, 0, 1);
        frame::encode(&mut p, Kind::Message, 0, b"hello");
        frame::encode(&mut p, Kind::Message, ContentType::Text.flags(), b"hi");
        let mut conn = 9u64.to_le_bytes().to_vec();
        conn.push(1);
        frame::put_str(&mut conn, "web");
        frame::put_str(&mut conn, "127.0.0.1:5000");
        frame::encode(&mut p, Kind::Connection, FLAG_FD, &conn);
        let mut ok = 1u32.to_le_bytes().to_vec();
        ok.push(0);
        frame::put_str(&mut ok, "web");
        frame::put_str(&mut ok, "127.0.0.1:8080");
        frame::encode(&mut p, Kind::ListenResult, FLAG_FD, &ok);
        let mut failed = 2u32.to_le_bytes().to_vec();
        failed.push(1);
        frame::put_str(&mut failed, "address in use");
        frame::encode(&mut p, Kind::ListenResult, 0, &failed);
        frame::encode(&mut p, Kind::Disconnect, 0, b"");
        p
    };
    let mut out = Vec::new();
    for stream in [from_worker, from_primary] {
        for (chunk, setup) in [(0u8, 0u8), (1, 2), (7, 3 | (3 << 2)), (100, 2 | (40 << 2))] {
            let mut input = vec![chunk, setup];
            input.extend_from_slice(&stream);
            out.push(input);
        }
    }
    out
}

/// Mutations of the seeds, as a fuzzer makes them (bit flips, new bytes, cuts, copies,
/// splices, interesting lengths written over a header), from a fixed seed.
pub struct Mutator {
    state: u64,
    seeds: Vec<Vec<u8>>,
}

impl Mutator {
    pub fn new(seed: u64) -> Mutator {
        Mutator {
            state: seed | 1,
            seeds: seeds(),
        }
    }

    fn next(&mut self) -> u64 {
        self.state ^= self.state >> 12;
        self.state ^= self.state << 25;
        self.state ^= self.state >> 27;
        self.state.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }

    /// The next input: a seed changed in 1 to 8 places.
    pub fn input(&mut self) -> Vec<u8> {
        let pick = self.below(self.seeds.len());
        let mut v = self.seeds[pick].clone();
        for _ in 0..1 + self.below(8) {
            self.mutate(&mut v);
        }
        v
    }

    fn mutate(&mut self, v: &mut Vec<u8>) {
        const LENGTHS: [u32; 8] = [0, 1, 7, 8, 9, 4096, 4097, u32::MAX];
        let at = self.below(v.len());
        match self.below(8) {
            0 if !v.is_empty() => v[at] ^= 1 << self.below(8),
            1 if !v.is_empty() => v[at] = self.next() as u8,
            2 => {
                let n = 1 + self.below(8);
                let bytes: Vec<u8> = (0..n).map(|_| self.next() as u8).collect();
                v.splice(at..at, bytes);
            }
            3 => {
                let end = (at + 1 + self.below(16)).min(v.len());
                v.drain(at..end);
            }
            4 => {
                let end = (at + 1 + self.below(32)).min(v.len());
                let copy = v[at..end].to_vec();
                let to = self.below(v.len());
                v.splice(to..to, copy);
            }
            5 => v.truncate(at),
            6 => {
                let pick = self.below(self.seeds.len());
                let other = self.seeds[pick].clone();
                let from = self.below(other.len());
                v.truncate(at);
                v.extend_from_slice(&other[from..]);
            }
            _ if v.len() >= 4 => {
                let len = LENGTHS[self.below(LENGTHS.len())];
                let at = self.below(v.len() - 3);
                v[at..at + 4].copy_from_slice(&len.to_le_bytes());
            }
            _ => v.push(self.next() as u8),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::{Duration, Instant};

    /// Inputs per target: `RCLUSTER_FUZZ_INPUTS`, else enough for a few seconds unoptimized.
    fn inputs() -> usize {
        std::env::var("RCLUSTER_FUZZ_INPUTS")
            .ok()
            .and_then(|v| v.parse().ok())
            .unwrap_or(100_000)
    }

    fn run(target: fn(&[u8]), seed: u64) {
        for s in seeds() {
            target(&s);
        }
        let mut m = Mutator::new(seed);
        let n = inputs();
        let start = Instant::now();
        for _ in 0..n {
            let input = m.input();
            target(&input);
        }
        // Bounded in time as well as count, so that a slow machine fails loudly, not slowly.
        assert!(
            start.elapsed() < Duration::from_secs(120),
            "{n} inputs took too long"
        );
    }

    #[test]
    fn the_frame_decoder_survives_mutated_streams() {
        run(decoder, 0x5eed_0001);
    }

    #[test]
    fn the_primary_reader_survives_mutated_streams() {
        run(primary_reader, 0x5eed_0002);
    }

    #[test]
    fn the_worker_reader_survives_mutated_streams() {
        run(worker_reader, 0x5eed_0003);
    }

    /// `RCLUSTER_FUZZ_SEEDS=DIR cargo test -p rcluster-core fuzzing` writes the seeds as
    /// files into DIR (how `fuzz/seeds/` was made); without it, nothing.
    #[test]
    fn seeds_are_written_where_asked() {
        let Some(dir) = std::env::var_os("RCLUSTER_FUZZ_SEEDS") else {
            return;
        };
        let dir = std::path::PathBuf::from(dir);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, s) in seeds().iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i}")), s).unwrap();
        }
    }

    #[test]
    fn the_seeds_get_past_the_hello() {
        let s = seeds();
        let mut r = Reader::new(WORKER_PID as libc::pid_t, 1 << 20);
        let mut out = Vec::new();
        assert!(r.feed(&s[0][2..], [], &mut out).is_none());
        // Hello, Ready, two Messages, Ack, Closed, Listen, Unlisten, Disconnect (not the
        // heartbeat).
        assert_eq!(out.len(), 9);
        let events = crate::worker::decode_stream([&s[4][2..]], spare_fds(2)).unwrap();
        assert_eq!(events, 6);
    }
}
