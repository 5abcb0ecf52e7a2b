//! The primary's end of one worker's IPC socket, shared by host threads (which send) and the
//! loop (which flushes what could not be written at once).
//!
//! Latency and throughput pull in opposite directions here: a lone message should be written
//! by the sending thread at once (no hop through the loop thread), while a stream of messages
//! should be coalesced into large writes (one syscall costs about as much as forty small
//! messages). So a message sent within `COALESCE` of the previous one is queued, and the loop
//! — woken once per batch — writes the batch. Except for an answer: a message sent after the
//! worker's last message was read is a turn of a conversation (request, reply, request …),
//! where a round trip can be shorter than `COALESCE`; queued, it would wait for the loop's
//! gathering and make the round trip bimodal (about 25 µs, or about 170 µs). Such a message
//! is written at once, which costs a stream at most one write per batch read from the worker.

use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::error::{Error, Result};
use crate::primary::reader::Reader;
use crate::sys;
use crate::wire::content::ContentType;
use crate::wire::frame::{self, Kind};

const COALESCE: Duration = Duration::from_micros(20);
/// How long the loop lets a stream of plain messages gather before writing it: one wake-up
/// and one write per gathering instead of one per few messages.
pub const GATHER: Duration = Duration::from_micros(50);
/// Gathering stops early once this much is queued.
const GATHER_BYTES: usize = 64 * 1024;

/// Wakes the loop thread and tells it which links have queued output.
pub struct Waker {
    fd: sys::EventFd,
    dirty: Mutex<Vec<Arc<Link>>>,
    pending: AtomicBool,
}

impl Waker {
    pub fn new() -> std::io::Result<Waker> {
        Ok(Waker {
            fd: sys::EventFd::new()?,
            dirty: Mutex::new(Vec::new()),
            pending: AtomicBool::new(false),
        })
    }

    pub fn raw(&self) -> RawFd {
        self.fd.raw()
    }

    /// Wakes the loop; cheap when a wake-up is already pending.
    pub fn wake(&self) {
        if !self.pending.swap(true, Ordering::AcqRel) {
            self.fd.notify();
        }
    }

    /// Called by the loop when it wakes: takes the links that want flushing.
    ///
    /// The fd is cleared before the flag: the other way round, a `wake` between the two would
    /// see the flag down, notify, and have its notification cleared, leaving the flag up with
    /// the fd silent, and from then on every `wake` would believe one was pending.
    pub fn take(&self, out: &mut Vec<Arc<Link>>) {
        self.fd.clear();
        self.pending.store(false, Ordering::Release);
        out.append(&mut self.dirty.lock().unwrap());
    }

    fn mark_dirty(&self, link: Arc<Link>) {
        self.dirty.lock().unwrap().push(link);
        self.wake();
    }
}

/// A descriptor to attach to a frame.
pub enum PassFd {
    /// Owned by the queue and closed once sent.
    Owned(OwnedFd),
    /// Owned by the caller, who keeps it open until the frame is sent or the link is
    /// closed (a handed-over client connection: the primary keeps its copy until the worker
    /// acknowledges, which it can only do after the frame went out). Sending needs no copy.
    Borrowed(RawFd),
}

impl PassFd {
    fn raw(&self) -> RawFd {
        match self {
            PassFd::Owned(fd) => fd.as_raw_fd(),
            PassFd::Borrowed(fd) => *fd,
        }
    }
}

struct Queue {
    /// Frames waiting to be written, in order.
    buf: Vec<u8>,
    /// Descriptors to attach, with the offset in `buf` of the frame each belongs to.
    fds: VecDeque<(usize, PassFd)>,
    /// The loop has been told to flush (is in the dirty list or holds data in flight).
    scheduled: bool,
    /// Bytes handed to the loop but not yet written.
    in_flight: usize,
    last_send: Instant,
    closed: bool,
}

/// Sizes a link is held to.
#[derive(Clone, Copy)]
pub struct Limits {
    /// Bytes queued for the worker at most.
    pub queue: usize,
    /// The largest message either way.
    pub message: usize,
}

/// A worker's IPC socket (primary end) with its outgoing queue.
pub struct Link {
    pub id: u32,
    /// The loop's key for the worker process at the other end.
    pub key: u64,
    pid: libc::pid_t,
    fd: OwnedFd,
    limit: usize,
    max_message: usize,
    queue: Mutex<Queue>,
    /// Only the loop touches this: bytes taken from `queue` and being written.
    flight: Mutex<Flight>,
    /// The incoming side: whoever reads the socket (the loop, or a host thread) holds this.
    pub reader: Mutex<Reader>,
    /// A message from the worker was read since the last send: the next send answers it.
    heard: AtomicBool,
}

#[derive(Default)]
struct Flight {
    buf: Vec<u8>,
    off: usize,
    fds: VecDeque<(usize, PassFd)>,
}

pub enum Flush {
    /// Everything written.
    Done,
    /// The socket is full; wait for it to become writable.
    Blocked,
    /// The peer is gone or the socket failed.
    Broken,
}

impl Link {
    pub fn new(id: u32, key: u64, fd: OwnedFd, pid: libc::pid_t, limits: Limits) -> Link {
        let Limits {
            queue: limit,
            message: max_message,
        } = limits;
        Link {
            reader: Mutex::new(Reader::new(pid, max_message)),
            id,
            key,
            pid,
            fd,
            limit,
            max_message,
            queue: Mutex::new(Queue {
                buf: Vec::new(),
                fds: VecDeque::new(),
                scheduled: false,
                in_flight: 0,
                last_send: Instant::now() - COALESCE,
                closed: false,
            }),
            flight: Mutex::new(Flight::default()),
            heard: AtomicBool::new(false),
        }
    }

    /// Reader side: the worker's messages were read, so the next send is an answer.
    pub fn heard_from(&self) {
        self.heard.store(true, Ordering::Relaxed);
    }

    /// Bytes queued towards the worker and not yet written (for the status).
    pub fn queued_bytes(&self) -> usize {
        let q = self.queue.lock().unwrap();
        q.buf.len() + q.in_flight
    }

    pub fn raw(&self) -> RawFd {
        self.fd.as_raw_fd()
    }

    /// Queues a user message (or writes it at once when the line is idle).
    pub fn send_message(
        self: &Arc<Self>,
        waker: &Waker,
        content: ContentType,
        body: &[u8],
    ) -> Result<()> {
        if body.len() > self.max_message {
            return Err(Error::MessageTooLarge {
                size: body.len(),
                limit: self.max_message,
            });
        }
        let size = frame::HEADER_LEN + body.len();
        self.enqueue(waker, size, None, |buf| {
            frame::encode(buf, Kind::Message, content.flags(), body)
        })
    }

    /// Queues several user messages in order, under one lock and with at most one write or
    /// wake-up: all of them, or none when they do not fit in the queue.
    pub fn send_messages(
        self: &Arc<Self>,
        waker: &Waker,
        content: ContentType,
        bodies: &[&[u8]],
    ) -> Result<()> {
        if let Some(big) = bodies.iter().find(|b| b.len() > self.max_message) {
            return Err(Error::MessageTooLarge {
                size: big.len(),
                limit: self.max_message,
            });
        }
        let size = bodies.iter().map(|b| frame::HEADER_LEN + b.len()).sum();
        self.enqueue(waker, size, None, |buf| {
            for body in bodies {
                frame::encode(buf, Kind::Message, content.flags(), body);
            }
        })
    }

    /// Queues frames of one kind whose bodies are already encoded (a pool's tasks), under one
    /// lock and with at most one write or wake-up: all of them, or none when they do not fit.
    pub fn send_bodies(
        self: &Arc<Self>,
        waker: &Waker,
        kind: Kind,
        bodies: &[Vec<u8>],
    ) -> Result<()> {
        let size = bodies.iter().map(|b| frame::HEADER_LEN + b.len()).sum();
        // A pool's scheduler batches tasks itself: its batch is written at once when nothing
        // waits in the queue, never left to gather (that would add the gathering time to
        // every round trip of a task).
        self.enqueue_as(waker, size, None, true, |buf| {
            for body in bodies {
                frame::encode(buf, kind, 0, body);
            }
        })
    }

    /// The pid of the worker process at the other end.
    pub fn pid(&self) -> libc::pid_t {
        self.pid
    }

    /// Queues any frame, optionally with a descriptor attached.
    pub fn send_frame(
        self: &Arc<Self>,
        waker: &Waker,
        kind: Kind,
        body: &[u8],
        fd: Option<PassFd>,
    ) -> Result<()> {
        let flags = if fd.is_some() { frame::FLAG_FD } else { 0 };
        let size = frame::HEADER_LEN + body.len();
        self.enqueue(waker, size, fd, |buf| frame::encode(buf, kind, flags, body))
    }

    /// Appends `size` bytes of frames (written by `encode`) to the queue, with `fd` attached
    /// to the first of them; writes them at once when the line is idle, else has the loop
    /// flush them.
    fn enqueue(
        self: &Arc<Self>,
        waker: &Waker,
        size: usize,
        fd: Option<PassFd>,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<()> {
        self.enqueue_as(waker, size, fd, false, encode)
    }

    /// `enqueue`; `eager`: written at once whenever the queue is empty, however recent the
    /// last send.
    fn enqueue_as(
        self: &Arc<Self>,
        waker: &Waker,
        size: usize,
        fd: Option<PassFd>,
        eager: bool,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<()> {
        let mut q = self.queue.lock().unwrap();
        if q.closed {
            return Err(Error::NoSuchWorker(self.id));
        }
        if q.buf.len() + q.in_flight + size > self.limit {
            return Err(Error::QueueFull {
                worker: self.id,
                limit: self.limit,
            });
        }
        let now = Instant::now();
        let answer = self.heard.swap(false, Ordering::Relaxed);
        let idle = !q.scheduled
            && q.buf.is_empty()
            && (eager || answer || now.duration_since(q.last_send) >= COALESCE);
        q.last_send = now;
        let start = q.buf.len();
        encode(&mut q.buf);
        if let Some(fd) = fd {
            q.fds.push_back((start, fd));
        }
        if idle && self.write_now(&mut q) {
            return Ok(());
        }
        if !q.scheduled {
            q.scheduled = true;
            drop(q);
            waker.mark_dirty(Arc::clone(self));
        }
        Ok(())
    }

    /// Tries to write the queue from the sending thread; true when all of it went out.
    fn write_now(&self, q: &mut MutexGuard<'_, Queue>) -> bool {
        let Queue { buf, fds, .. } = &mut **q;
        let mut off = 0;
        while off < buf.len() {
            match write_some(self.raw(), buf, off, fds) {
                Ok(n) => off += n,
                Err(_) => break,
            }
        }
        buf.drain(..off);
        for (at, _) in fds.iter_mut() {
            *at -= off;
        }
        buf.is_empty()
    }

    /// Loop side: true when what is queued is a stream of plain messages still gathering
    /// (no descriptor waits in it, and not much is queued yet), so the flush may wait
    /// [`GATHER`]. Senders do not wake the loop again meanwhile: it is still scheduled.
    pub fn may_gather(&self) -> bool {
        let q = self.queue.lock().unwrap();
        !q.closed && q.fds.is_empty() && q.buf.len() < GATHER_BYTES
    }

    /// Loop side: writes what is queued. Never blocks.
    pub fn flush(&self) -> Flush {
        let mut guard = self.flight.lock().unwrap();
        let f = &mut *guard;
        loop {
            if f.off == f.buf.len() {
                f.buf.clear();
                f.off = 0;
                let mut q = self.queue.lock().unwrap();
                q.in_flight = 0;
                if q.buf.is_empty() {
                    q.scheduled = false;
                    return Flush::Done;
                }
                std::mem::swap(&mut f.buf, &mut q.buf);
                std::mem::swap(&mut f.fds, &mut q.fds);
                q.in_flight = f.buf.len();
            }
            match write_some(self.raw(), &f.buf, f.off, &mut f.fds) {
                Ok(n) => {
                    f.off += n;
                    self.queue.lock().unwrap().in_flight = f.buf.len() - f.off;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => return Flush::Blocked,
                Err(_) => return Flush::Broken,
            }
        }
    }

    /// Marks the link dead; later sends fail with `NoSuchWorker`. Queued output is dropped.
    pub fn close(&self) {
        let mut q = self.queue.lock().unwrap();
        q.closed = true;
        q.buf = Vec::new();
        q.fds.clear();
        *self.flight.lock().unwrap() = Flight::default();
    }

    pub fn is_closed(&self) -> bool {
        self.queue.lock().unwrap().closed
    }
}

/// One non-blocking write from `buf[off..]`. The descriptors of the frames in it (up to
/// [`sys::FDS_PER_SEND`]) go attached to its first byte, so that each arrives with its frame
/// or before it, never after, and the frames of a burst of connections take one write. Once
/// any of the write went out, its descriptors did too, however short it was.
fn write_some(
    fd: RawFd,
    buf: &[u8],
    off: usize,
    fds: &mut VecDeque<(usize, PassFd)>,
) -> std::io::Result<usize> {
    if fds.is_empty() {
        return sys::send(fd, &buf[off..]);
    }
    let take = fds.len().min(sys::FDS_PER_SEND);
    // A write stops where the first frame whose descriptor does not fit begins.
    let end = fds.get(take).map_or(buf.len(), |(at, _)| *at);
    let mut pass = [0; sys::FDS_PER_SEND];
    for (slot, (_, p)) in pass.iter_mut().zip(fds.iter()) {
        *slot = p.raw();
    }
    let n = sys::send_with_fds(fd, &buf[off..end], &pass[..take], false)?;
    fds.drain(..take);
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::frame::Decoder;
    use std::io::{Read, Seek, Write};

    fn temp_file_with(text: &str) -> OwnedFd {
        let mut f = std::fs::File::from(tmp());
        f.write_all(text.as_bytes()).unwrap();
        f.rewind().unwrap();
        f.into()
    }

    fn tmp() -> OwnedFd {
        let path = std::env::temp_dir().join(format!(
            "rcluster-conn-{}-{:?}",
            std::process::id(),
            std::thread::current().id()
        ));
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(&path)
            .unwrap();
        std::fs::remove_file(&path).unwrap();
        f.into()
    }

    /// A worker link with the given limits on a socketpair: the primary's end, the worker's
    /// end, and a waker.
    fn link(queue: usize, message: usize) -> (Arc<Link>, OwnedFd, Waker) {
        let (a, b) = sys::socketpair().unwrap();
        sys::set_nonblocking(a.as_raw_fd(), true).unwrap();
        let link = Arc::new(Link::new(0, 1, a, 0, Limits { queue, message }));
        (link, b, Waker::new().unwrap())
    }

    /// Queues connection frame `i` ("conn i"), with a file that reads "file i" attached.
    fn send_connection(link: &Arc<Link>, waker: &Waker, i: usize) {
        let fd = temp_file_with(&format!("file {i}"));
        let body = format!("conn {i}");
        link.send_frame(
            waker,
            Kind::Connection,
            body.as_bytes(),
            Some(PassFd::Owned(fd)),
        )
        .unwrap();
    }

    /// Bytes waiting on the worker's end of the socketpair, without blocking.
    fn waiting(b: &OwnedFd) -> usize {
        let mut buf = [0u8; 4096];
        // SAFETY: `buf` is valid for its length for the duration of the call.
        let n = unsafe {
            libc::recv(
                b.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        n.max(0) as usize
    }

    /// A message sent right after the previous one waits for the loop (a stream is written
    /// in batches), unless a message from the worker was read in between: then it is an
    /// answer, and a round trip must not wait for the loop's gathering.
    #[test]
    fn an_answer_is_written_at_once_where_a_stream_waits_for_the_loop() {
        let (link, b, waker) = link(1 << 20, 1 << 16);
        let frame_len = frame::HEADER_LEN + 3;
        // The clock says the previous send was just now (whatever the machine's speed).
        let just_sent =
            || link.queue.lock().unwrap().last_send = Instant::now() + Duration::from_secs(60);

        just_sent();
        link.send_message(&waker, ContentType::Raw, b"one").unwrap();
        assert_eq!(
            waiting(&b),
            0,
            "a message of a stream was written without the loop"
        );
        assert!(matches!(link.flush(), Flush::Done));
        assert_eq!(waiting(&b), frame_len);

        just_sent();
        link.heard_from();
        link.send_message(&waker, ContentType::Raw, b"two").unwrap();
        assert_eq!(waiting(&b), frame_len, "an answer waited for the loop");

        // Hearing from the worker covers one send only: the next one is a stream again.
        just_sent();
        link.send_message(&waker, ContentType::Raw, b"333").unwrap();
        assert_eq!(waiting(&b), 0);
    }

    /// Frames with descriptors, interleaved with plain ones, arrive each with its own
    /// descriptor, whether written at once or coalesced and flushed by the loop.
    #[test]
    fn descriptors_travel_with_their_own_frames() {
        let (link, b, waker) = link(1 << 20, 1 << 16);
        for i in 0..6 {
            link.send_frame(&waker, Kind::Message, format!("plain {i}").as_bytes(), None)
                .unwrap();
            send_connection(&link, &waker, i);
        }
        // Most of these were coalesced: flush them as the loop would.
        assert!(matches!(link.flush(), Flush::Done));
        let mut d = Decoder::new(1 << 16);
        let mut fds = VecDeque::new();
        let mut got = Vec::new();
        while got.len() < 12 {
            let n = sys::recv_with_fds(b.as_raw_fd(), d.spare(4096), &mut fds, true).unwrap();
            d.commit(n);
            while let Some(f) = d.next_frame().unwrap() {
                let attached = if f.has_fd {
                    let fd = fds
                        .pop_front()
                        .expect("a frame with the fd flag came without its descriptor");
                    let mut text = String::new();
                    std::fs::File::from(fd).read_to_string(&mut text).unwrap();
                    Some(text)
                } else {
                    None
                };
                got.push((String::from_utf8_lossy(f.body).into_owned(), attached));
            }
        }
        assert!(fds.is_empty(), "descriptors without a frame");
        for i in 0..6 {
            assert_eq!(got[2 * i], (format!("plain {i}"), None));
            assert_eq!(
                got[2 * i + 1],
                (format!("conn {i}"), Some(format!("file {i}")))
            );
        }
    }

    /// Many frames with descriptors, more than one write may carry, with a large message
    /// among them that fills the socket: every frame still gets its own descriptor, in order,
    /// across short writes.
    #[test]
    fn a_burst_of_descriptors_survives_short_writes() {
        const FRAMES: usize = 3 * sys::FDS_PER_SEND + 5;
        let (link, b, waker) = link(8 << 20, 4 << 20);
        let big = vec![b'x'; 2 << 20];
        for i in 0..FRAMES {
            if i == 20 {
                link.send_frame(&waker, Kind::Message, &big, None).unwrap();
            }
            send_connection(&link, &waker, i);
        }
        let reader = std::thread::spawn(move || {
            let mut d = Decoder::new(4 << 20);
            let mut fds = VecDeque::new();
            let mut got = Vec::new();
            while got.len() < FRAMES {
                let n =
                    sys::recv_with_fds(b.as_raw_fd(), d.spare(1 << 16), &mut fds, true).unwrap();
                assert!(n > 0, "end of stream after {} frames", got.len());
                d.commit(n);
                while let Some(f) = d.next_frame().unwrap() {
                    if !f.has_fd {
                        assert_eq!(f.body.len(), 2 << 20);
                        continue;
                    }
                    let fd = fds
                        .pop_front()
                        .expect("a frame came without its descriptor");
                    let mut text = String::new();
                    std::fs::File::from(fd).read_to_string(&mut text).unwrap();
                    got.push((String::from_utf8_lossy(f.body).into_owned(), text));
                }
            }
            assert!(fds.is_empty(), "descriptors without a frame");
            got
        });
        let mut blocked = 0;
        for _ in 0..10_000 {
            match link.flush() {
                Flush::Done => break,
                Flush::Blocked => {
                    blocked += 1;
                    std::thread::sleep(Duration::from_millis(1));
                }
                Flush::Broken => panic!("the socket broke"),
            }
        }
        let got = reader.join().unwrap();
        assert!(
            blocked > 0,
            "the large message should have filled the socket"
        );
        for (i, (body, file)) in got.iter().enumerate() {
            assert_eq!(
                (body.as_str(), file.as_str()),
                (&*format!("conn {i}"), &*format!("file {i}"))
            );
        }
    }

    /// A wake that races with the loop's `take` is never lost: whenever a wake-up is pending,
    /// the fd says so.
    #[test]
    fn a_wake_during_take_is_never_lost() {
        let waker = Arc::new(Waker::new().unwrap());
        let done = Arc::new(AtomicBool::new(false));
        let waking = {
            let (waker, done) = (Arc::clone(&waker), Arc::clone(&done));
            std::thread::spawn(move || {
                let until = Instant::now() + Duration::from_millis(500);
                while Instant::now() < until {
                    for _ in 0..1000 {
                        waker.wake();
                    }
                }
                done.store(true, Ordering::Release);
            })
        };
        let mut out = Vec::new();
        let mut takes = 0u64;
        while !done.load(Ordering::Acquire) {
            if sys::poll_one(waker.raw(), libc::POLLIN, Some(Duration::from_millis(20))).unwrap() {
                waker.take(&mut out);
                takes += 1;
            }
        }
        waking.join().unwrap();
        if waker.pending.load(Ordering::Acquire) {
            assert!(
                sys::poll_one(waker.raw(), libc::POLLIN, Some(Duration::ZERO)).unwrap(),
                "a wake-up is pending but the fd is silent (after {takes} takes)"
            );
        }
        // And the loop hears the next one.
        waker.take(&mut out);
        waker.wake();
        assert!(sys::poll_one(waker.raw(), libc::POLLIN, Some(Duration::ZERO)).unwrap());
    }
}
