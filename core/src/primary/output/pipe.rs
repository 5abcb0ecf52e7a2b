//! Worker stdout/stderr, prefixed line by line with the worker id (`Output::Prefix`).
//!
//! The loop only reads the pipes: whole prefixed lines go into a bounded buffer (`Sink`), and
//! a thread of their own writes them to the host's fd 1 and 2. A host whose stdout is full (a
//! pipe nobody reads) then stalls that thread only, never reaping, heartbeats or dispatch;
//! what does not fit in the buffer meanwhile is dropped and counted, and the loop reports the
//! counts (`Event::OutputDropped`).

use std::collections::{BTreeMap, VecDeque};
use std::io;
use std::os::fd::{AsRawFd, OwnedFd, RawFd};
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::sys;

/// Lines longer than this are cut and written in pieces.
const MAX_LINE: usize = 64 * 1024;
/// Most bytes of output waiting for the host's stdout/stderr, over all workers.
pub const BUFFER_LIMIT: usize = 1 << 20;
/// Reads of one pipe per wake-up: a worker that writes without pause cannot keep the loop.
const READS_PER_PUMP: usize = 16;

/// The read end of one worker's stdout or stderr.
pub struct PrefixPipe {
    pub fd: OwnedFd,
    /// 1 for stdout, 2 for stderr: where the prefixed lines go.
    target: RawFd,
    id: u32,
    prefix: Vec<u8>,
    partial: Vec<u8>,
    /// Where the control server keeps the last lines of each worker (`logs`), if it runs.
    pub tap: Option<crate::primary::control::logs::Tap>,
    /// The worker's pid, for the lines of the tap (set once it is known).
    pub pid: u32,
}

impl PrefixPipe {
    pub fn new(fd: OwnedFd, target: RawFd, id: u32) -> PrefixPipe {
        PrefixPipe {
            fd,
            target,
            id,
            prefix: format!("[{id}] ").into_bytes(),
            partial: Vec::new(),
            tap: None,
            pid: 0,
        }
    }

    /// Reads what is available now, a bounded amount; false at EOF (or error). Never waits:
    /// a descendant of the worker may hold the write end open long after the worker is gone.
    pub fn pump(&mut self, sink: &Sink) -> bool {
        let mut buf = [0u8; 16 * 1024];
        for _ in 0..READS_PER_PUMP {
            match sys::read(self.fd.as_raw_fd(), &mut buf) {
                Ok(0) => return false,
                Ok(n) => self.take(&buf[..n], sink),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return true,
                Err(_) => return false,
            }
        }
        true
    }

    fn take(&mut self, mut data: &[u8], sink: &Sink) {
        let mut out = Vec::with_capacity(data.len() + 64);
        let mut lines = 0;
        while let Some(nl) = data.iter().position(|&b| b == b'\n') {
            self.tap_line(&data[..nl]);
            out.extend_from_slice(&self.prefix);
            out.append(&mut self.partial);
            out.extend_from_slice(&data[..=nl]);
            data = &data[nl + 1..];
            lines += 1;
        }
        self.partial.extend_from_slice(data);
        if self.partial.len() >= MAX_LINE {
            self.tap_line(&[]);
            out.extend_from_slice(&self.prefix);
            out.append(&mut self.partial);
            out.push(b'\n');
            lines += 1;
        }
        if lines > 0 {
            sink.push(self.id, self.target, out);
        }
    }

    /// Keeps a whole line (what is in `partial`, then `rest`) in the tap, if there is one.
    fn tap_line(&self, rest: &[u8]) {
        if let Some(tap) = &self.tap {
            let line = if self.partial.is_empty() {
                std::borrow::Cow::Borrowed(rest)
            } else {
                std::borrow::Cow::Owned([&self.partial[..], rest].concat())
            };
            let stream = self.target as u8;
            tap.lock().unwrap().push(self.id, self.pid, stream, &line);
        }
    }

    /// Passes on a last line without newline, if any.
    pub fn finish(&mut self, sink: &Sink) {
        if !self.partial.is_empty() {
            self.tap_line(&[]);
            let mut out = self.prefix.clone();
            out.append(&mut self.partial);
            out.push(b'\n');
            sink.push(self.id, self.target, out);
        }
    }
}

/// Lines of one worker for one target, in one piece; every line ends with '\n'.
struct Batch {
    id: u32,
    target: RawFd,
    data: Vec<u8>,
}

/// Lines and bytes of output dropped, per worker slot.
pub type Dropped = BTreeMap<u32, (u64, u64)>;

#[derive(Default)]
struct State {
    queue: VecDeque<Batch>,
    /// Bytes in `queue` plus the batch being written.
    bytes: usize,
    writing: bool,
    /// The writer waits for work.
    idle: bool,
    /// fd 1 or 2 failed for good (EPIPE, closed): what goes there is dropped at once.
    broken: [bool; 2],
    dropped: Dropped,
    /// No more output; the writer ends once the queue is written (or abandoned).
    closed: bool,
    /// Stop waiting for the host: what is still queued is dropped.
    abandoned: bool,
}

impl State {
    fn drop_lines(&mut self, id: u32, data: &[u8]) {
        let lines = data.split_inclusive(|&b| b == b'\n').count() as u64;
        let d = self.dropped.entry(id).or_default();
        d.0 += lines;
        d.1 += data.len() as u64;
    }
}

struct Inner {
    state: Mutex<State>,
    /// Signalled for the writer (work or close) and for `close` (the writer made progress).
    cv: Condvar,
}

/// The bounded buffer between the loop and the output thread.
#[derive(Clone)]
pub struct Sink(Arc<Inner>);

impl Sink {
    /// A buffer and the thread that writes it to fd 1 and 2.
    pub fn start() -> io::Result<Sink> {
        let sink = Sink::new();
        let writer = sink.clone();
        // Not joined: a write to a host's stdout that nobody reads may block for ever, and the
        // supervisor must still stop. The thread ends once the buffer is closed and written or
        // abandoned.
        std::thread::Builder::new()
            .name("rcluster-output".into())
            .spawn(move || writer.write_loop())?;
        Ok(sink)
    }

    fn new() -> Sink {
        Sink(Arc::new(Inner {
            state: Mutex::new(State::default()),
            cv: Condvar::new(),
        }))
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Queues whole lines of worker `id` for `target`; the lines that do not fit are dropped
    /// and counted (from the first that does not fit, so that no line of a worker overtakes
    /// another).
    fn push(&self, id: u32, target: RawFd, mut data: Vec<u8>) {
        let mut s = self.lock();
        let room = BUFFER_LIMIT.saturating_sub(s.bytes);
        if s.closed || s.broken[(target - 1) as usize & 1] {
            s.drop_lines(id, &data);
            return;
        }
        if data.len() > room {
            let cut = data[..room]
                .iter()
                .rposition(|&b| b == b'\n')
                .map_or(0, |i| i + 1);
            s.drop_lines(id, &data[cut..]);
            data.truncate(cut);
            if data.is_empty() {
                return;
            }
        }
        s.bytes += data.len();
        s.queue.push_back(Batch { id, target, data });
        if s.idle {
            s.idle = false;
            drop(s);
            self.0.cv.notify_all();
        }
    }

    /// True while output waits to be written or drops wait to be reported.
    pub fn busy(&self) -> bool {
        let s = self.lock();
        !s.queue.is_empty() || s.writing || !s.dropped.is_empty()
    }

    /// What was dropped since the last call.
    pub fn take_dropped(&self) -> Dropped {
        std::mem::take(&mut self.lock().dropped)
    }

    /// No more output comes. Waits up to `grace` for what is queued to be written, then
    /// abandons the rest (counted as dropped); returns every drop not taken yet.
    pub fn close(&self, grace: Duration) -> Dropped {
        let deadline = Instant::now() + grace;
        let mut s = self.lock();
        s.closed = true;
        self.0.cv.notify_all();
        while !s.queue.is_empty() || s.writing {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            s = self.0.cv.wait_timeout(s, left).unwrap().0;
        }
        s.abandoned = true;
        while let Some(b) = s.queue.pop_front() {
            s.bytes -= b.data.len();
            s.drop_lines(b.id, &b.data);
        }
        self.0.cv.notify_all();
        std::mem::take(&mut s.dropped)
    }

    fn write_loop(self) {
        block_sigpipe();
        let mut s = self.lock();
        loop {
            let Some(batch) = s.queue.pop_front() else {
                if s.closed {
                    return;
                }
                s.idle = true;
                s = self.0.cv.wait(s).unwrap_or_else(|e| e.into_inner());
                continue;
            };
            s.writing = true;
            drop(s);
            let result = write_all(batch.target, &batch.data, &self);
            s = self.lock();
            s.writing = false;
            s.bytes -= batch.data.len();
            if let Err(written) = result {
                // The line cut in the middle counts as dropped too.
                let start = batch.data[..written]
                    .iter()
                    .rposition(|&b| b == b'\n')
                    .map_or(0, |i| i + 1);
                s.drop_lines(batch.id, &batch.data[start..]);
                if !s.abandoned {
                    s.broken[(batch.target - 1) as usize & 1] = true;
                }
            }
            self.0.cv.notify_all();
        }
    }

    fn abandoned(&self) -> bool {
        self.lock().abandoned
    }
}

/// Blocks SIGPIPE in the calling thread only: a write to a closed stdout then fails with
/// EPIPE instead of killing a host that did not ignore the signal (a C program). The signal
/// stays pending on this thread and is discarded with it; no handler is installed.
fn block_sigpipe() {
    // SAFETY: sigset operations on a local set; pthread_sigmask changes this thread only.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGPIPE);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }
}

/// Writes `data` to the host's `fd`; on failure, how much was written. The host's stdout may
/// be non-blocking (Node makes a pipe so): EAGAIN waits for room, and O_NONBLOCK is never set
/// here, since the open file is the host's.
fn write_all(fd: RawFd, data: &[u8], sink: &Sink) -> Result<(), usize> {
    let mut done = 0;
    while done < data.len() {
        let rest = &data[done..];
        // SAFETY: rest is valid for its length.
        let n = unsafe { libc::write(fd, rest.as_ptr().cast(), rest.len()) };
        if n > 0 {
            done += n as usize;
            continue;
        }
        if n == 0 {
            return Err(done);
        }
        let err = io::Error::last_os_error();
        match err.kind() {
            io::ErrorKind::Interrupted => {}
            io::ErrorKind::WouldBlock => {
                if sink.abandoned() {
                    return Err(done);
                }
                // Bounded, so that an abandoned buffer is noticed.
                let _ = sys::poll_one(fd, libc::POLLOUT, Some(Duration::from_millis(100)));
            }
            _ => return Err(done),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A pipe whose read end is `PrefixPipe` input; returns (pipe, write end).
    fn pipe(id: u32) -> (PrefixPipe, OwnedFd) {
        let (r, w) = sys::pipe().unwrap();
        sys::set_nonblocking(r.as_raw_fd(), true).unwrap();
        (PrefixPipe::new(r, 1, id), w)
    }

    fn write(fd: &OwnedFd, data: &[u8]) {
        // SAFETY: data is valid for its length.
        let n = unsafe { libc::write(fd.as_raw_fd(), data.as_ptr().cast(), data.len()) };
        assert_eq!(n, data.len() as isize);
    }

    #[test]
    fn lines_beyond_the_buffer_are_dropped_whole_and_counted() {
        // No writer thread: nothing leaves the buffer.
        let sink = Sink::new();
        let (mut p, w) = pipe(7);
        let line = [b'x'; 1019]; // "[7] " + 1019 + "\n": 1024 bytes a line
        let lines = BUFFER_LIMIT / 1024 + 10;
        for _ in 0..lines {
            write(&w, &line);
            write(&w, b"\n");
            assert!(p.pump(&sink));
        }
        let dropped = sink.take_dropped();
        assert_eq!(dropped.get(&7), Some(&(10, 10 * 1024)));
        assert_eq!(sink.lock().bytes, BUFFER_LIMIT);
        // Closing without a writer abandons what is queued: every line is accounted for.
        let rest = sink.close(Duration::ZERO);
        assert_eq!(
            rest.get(&7).map(|d| d.0),
            Some((BUFFER_LIMIT / 1024) as u64)
        );
    }

    #[test]
    fn a_pipe_that_stays_open_is_read_without_waiting_and_a_last_partial_line_is_kept() {
        let sink = Sink::new();
        let (mut p, w) = pipe(0);
        write(&w, b"one\ntw");
        assert!(p.pump(&sink), "open, nothing more to read now");
        assert!(p.pump(&sink));
        drop(w);
        assert!(!p.pump(&sink), "EOF");
        p.finish(&sink);
        let s = sink.lock();
        let text: Vec<&[u8]> = s.queue.iter().map(|b| &b.data[..]).collect();
        assert_eq!(text, [&b"[0] one\n"[..], b"[0] tw\n"]);
    }
}
