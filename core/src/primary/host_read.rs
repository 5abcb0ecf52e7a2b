//! The host thread's reading of the workers that send messages (see `reader`): a host that
//! waits on `Supervisor::event_fd` reads their links itself, so that a message reaches it
//! with one wake-up, and forwards to the loop whatever else it read.

use std::collections::HashMap;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use crate::events::{Event, EventQueue};
use crate::primary::link::{Link, Waker};
use crate::primary::reader::{Incoming, ReadEnd};
use crate::sys::Epoll;

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
            let (queued_here, emptied_here) = self.read_link(&link, events, waker);
            queued |= queued_here;
            emptied &= emptied_here;
        }
        self.emptied.store(emptied && queued, Ordering::Release);
        queued
    }

    /// Reads one worker's socket: its messages go to `events`, everything else to the loop.
    /// Returns whether it queued a message and whether the read emptied the socket.
    fn read_link(&self, link: &Arc<Link>, events: &EventQueue, waker: &Waker) -> (bool, bool) {
        // When the loop is reading it right now, this waits (briefly) for it: what the loop
        // read is in the queue by then, for the caller to take.
        let mut reader = link.reader.lock().unwrap();
        let (frames, messages) = (reader.frames, reader.messages);
        let mut incoming = Vec::new();
        let end = reader.read(link.raw(), &mut incoming, events.room());
        let emptied = reader.emptied;
        let mut out = Vec::new();
        let mut rest = Vec::new();
        for m in incoming {
            match m {
                Incoming::Message(data, content) => out.push(Event::Message {
                    id: link.id,
                    pid: reader.pid as u32,
                    data,
                    content,
                }),
                Incoming::TaskDone(data) => out.push(Event::TaskDone {
                    id: link.id,
                    pid: reader.pid as u32,
                    data,
                }),
                other => rest.push(other),
            }
        }
        let queued = !out.is_empty();
        if queued {
            link.heard_from();
        }
        events.push_for_self(&mut out);
        // Heartbeats show up only as frames that were not messages.
        let others = reader.frames - frames > reader.messages - messages;
        let done = !matches!(end, ReadEnd::Drained);
        if others || !rest.is_empty() || done {
            if done {
                // End of file or a broken frame stays "readable", and so does a worker
                // paused for room: stop watching it here; the loop takes it over.
                self.remove(link);
            }
            self.forwarded.lock().unwrap().push(Forwarded {
                key: link.key,
                incoming: rest,
                end,
            });
            waker.wake();
        }
        (queued, emptied)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::events::message_cost;
    use crate::primary::link::Limits;
    use crate::sys;
    use crate::wire::content::ContentType;
    use crate::wire::frame::{self, Kind};
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
                    content: ContentType::Raw,
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
}
