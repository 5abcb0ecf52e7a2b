use super::*;
use crate::wire::frame::Decoder;
use std::collections::VecDeque;
use std::os::fd::FromRawFd;

fn linked() -> (OwnedFd, Worker) {
    let (primary, worker) = sys::socketpair().unwrap();
    sys::send(primary.as_raw_fd(), &frame::primary_hello(1024, 4, 2)).unwrap();
    let w = Worker::handshake(worker, 4).unwrap().unwrap();
    (primary, w)
}

#[test]
fn handshake_reads_id_generation_and_limit_and_answers_hello() {
    let (primary, w) = linked();
    assert_eq!((w.id(), w.generation(), w.max_message()), (4, 2, 1024));
    let mut d = Decoder::new(1024);
    let mut fds = VecDeque::new();
    let n = sys::recv_with_fds(primary.as_raw_fd(), d.spare(4096), &mut fds, true).unwrap();
    d.commit(n);
    let f = d.next_frame().unwrap().unwrap();
    assert_eq!(f.kind, Kind::Hello);
    assert_eq!(
        frame::parse_hello(f.body).unwrap(),
        vec![std::process::id()]
    );
}

/// A read that brings a descriptor ends with that descriptor's frame: the frames behind it
/// are taken by the next non-blocking call, without waiting for readiness again.
#[test]
fn connections_queued_behind_each_other_are_all_taken_without_waiting() {
    let (primary, w) = linked();
    for id in 1..=3u64 {
        send_connection(&primary, id);
    }
    let mut msg = Vec::new();
    frame::encode(&mut msg, Kind::Message, ContentType::Text.flags(), b"after");
    sys::send(primary.as_raw_fd(), &msg).unwrap();
    for id in 1..=3u64 {
        match w.try_next_event().unwrap() {
            Some(WorkerEvent::Connection(c)) => assert_eq!(c.id, id),
            other => panic!("expected connection {id}, got {other:?}"),
        }
    }
    assert_eq!(
        w.try_next_event().unwrap(),
        Some(WorkerEvent::Message {
            data: b"after".to_vec(),
            content: ContentType::Text
        })
    );
    assert_eq!(w.try_next_event().unwrap(), None);
}

/// Queues a connection frame for `id` with a descriptor of its own, as the primary does.
fn send_connection(primary: &OwnedFd, id: u64) {
    let (mine, _theirs) = sys::socketpair().unwrap();
    let mut body = id.to_le_bytes().to_vec();
    body.push(0);
    frame::put_str(&mut body, "http");
    frame::put_str(&mut body, "127.0.0.1:5000");
    let mut wire = Vec::new();
    frame::encode(&mut wire, Kind::Connection, frame::FLAG_FD, &body);
    sys::send_with_fds(primary.as_raw_fd(), &wire, &[mine.as_raw_fd()], false).unwrap();
}

/// The connections of one batch are acknowledged in one write, made before the batch is
/// returned. The link is a packet socket here, so that each write is one packet.
#[test]
fn a_batch_of_connections_is_acknowledged_in_one_write_before_it_is_seen() {
    let mut fds = [0; 2];
    // SAFETY: fds has room for two descriptors.
    let rc = unsafe {
        libc::socketpair(
            libc::AF_UNIX,
            libc::SOCK_SEQPACKET | libc::SOCK_CLOEXEC,
            0,
            fds.as_mut_ptr(),
        )
    };
    assert_eq!(rc, 0);
    // SAFETY: both were just created and are owned by nobody else.
    let (primary, worker) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
    sys::send(primary.as_raw_fd(), &frame::primary_hello(1024, 4, 2)).unwrap();
    let w = Worker::handshake(worker, 4).unwrap().unwrap();
    for id in 1..=3u64 {
        send_connection(&primary, id);
    }
    let mut out = Vec::new();
    assert_eq!(
        w.next_events(Some(Duration::ZERO), 16, &mut out).unwrap(),
        3
    );
    let ids: Vec<u64> = out
        .iter()
        .map(|ev| match ev {
            WorkerEvent::Connection(c) => c.id,
            other => panic!("expected a connection, got {other:?}"),
        })
        .collect();
    assert_eq!(ids, [1, 2, 3]);
    // Packets now waiting at the primary's end: the hello, then one with every ack.
    let mut packets = Vec::new();
    let mut buf = [0u8; 4096];
    loop {
        // SAFETY: buf is valid for its length.
        let n = unsafe {
            libc::recv(
                primary.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                libc::MSG_DONTWAIT,
            )
        };
        if n <= 0 {
            break;
        }
        packets.push(buf[..n as usize].to_vec());
    }
    assert_eq!(packets.len(), 2, "hello and one write of acks");
    let mut d = Decoder::new(1024);
    d.spare(4096)[..packets[1].len()].copy_from_slice(&packets[1]);
    d.commit(packets[1].len());
    let mut acked = Vec::new();
    while let Some(f) = d.next_frame().unwrap() {
        assert_eq!(f.kind, Kind::ConnectionAck);
        acked.push(u64::from_le_bytes(f.body.try_into().unwrap()));
    }
    assert_eq!(acked, [1, 2, 3]);
}

#[test]
fn worker_learns_that_the_primary_is_gone() {
    let (primary, w) = linked();
    w.set_exit_on_primary_loss(false);
    let mut msg = Vec::new();
    frame::encode(&mut msg, Kind::Message, 0, b"last words");
    sys::send(primary.as_raw_fd(), &msg).unwrap();
    drop(primary);
    let first = w.next_event(Some(Duration::from_secs(1))).unwrap();
    assert_eq!(
        first,
        Some(WorkerEvent::Message {
            data: b"last words".to_vec(),
            content: ContentType::Raw
        })
    );
    assert_eq!(
        w.next_event(Some(Duration::from_secs(1))).unwrap(),
        Some(WorkerEvent::PrimaryGone)
    );
}

#[test]
fn worker_refuses_to_send_more_than_the_limit() {
    let (_primary, w) = linked();
    let e = w.send(&[0; 1025]).unwrap_err();
    assert!(matches!(
        e,
        Error::MessageTooLarge {
            size: 1025,
            limit: 1024
        }
    ));
}

/// Sends `bytes` with `count` copies of `fd` attached, in one sendmsg.
fn send_many_fds(to: &OwnedFd, bytes: &[u8], fd: RawFd, count: usize) {
    let mut iov = libc::iovec {
        iov_base: bytes.as_ptr() as *mut _,
        iov_len: bytes.len(),
    };
    let data = (4 * count) as u32;
    // SAFETY: CMSG_SPACE only computes a size.
    let space_len = unsafe { libc::CMSG_SPACE(data) } as usize;
    let mut space = vec![0u64; space_len.div_ceil(8)];
    // SAFETY: the control message is built inside `space`, aligned and as large as
    // CMSG_SPACE asks for `count` descriptors.
    let n = unsafe {
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = space.as_mut_ptr().cast();
        msg.msg_controllen = space_len as _;
        let cmsg = libc::CMSG_FIRSTHDR(&msg);
        (*cmsg).cmsg_level = libc::SOL_SOCKET;
        (*cmsg).cmsg_type = libc::SCM_RIGHTS;
        (*cmsg).cmsg_len = libc::CMSG_LEN(data) as _;
        let fds = libc::CMSG_DATA(cmsg).cast::<RawFd>();
        for i in 0..count {
            std::ptr::write_unaligned(fds.add(i), fd);
        }
        libc::sendmsg(to.as_raw_fd(), &msg, 0)
    };
    assert_eq!(n, bytes.len() as isize);
}

/// The primary never sends more descriptors at once than a worker has room for; if one
/// did, the descriptors the kernel cut off are lost and the link cannot be followed.
#[test]
fn descriptors_overflowing_the_control_buffer_are_a_protocol_error_and_all_are_closed() {
    let (primary, w) = linked();
    let (probe, _keep) = sys::socketpair().unwrap();
    let mut wire = Vec::new();
    frame::encode(&mut wire, Kind::Message, 0, b"lost");
    send_many_fds(&primary, &wire, probe.as_raw_fd(), sys::FDS_PER_RECV + 40);
    let e = w.try_next_event().unwrap_err().to_string();
    assert!(
        e.starts_with("protocol error: ") && e.contains("MSG_CTRUNC"),
        "{e}"
    );
    assert!(
        w.rx.lock().unwrap().fds.is_empty(),
        "arrived descriptors are closed"
    );
    // The stream cannot be followed any more: later calls fail the same way.
    sys::send(primary.as_raw_fd(), &wire).unwrap();
    let again = w.try_next_event().unwrap_err().to_string();
    assert_eq!(again, e);
}

#[test]
fn a_message_from_the_primary_over_max_message_is_a_protocol_error_from_its_header() {
    let (primary, w) = linked();
    // Only the header: the worker refuses the frame without waiting for its body.
    sys::send(
        primary.as_raw_fd(),
        &[1, 4, 0, 0, Kind::Message as u8, 0, 0, 0],
    )
    .unwrap();
    let e = w
        .next_event(Some(Duration::from_secs(5)))
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("Message frame of 1025 bytes exceeds the limit of 1024 bytes"),
        "{e}"
    );
}

#[test]
fn primary_hello_for_another_worker_is_refused() {
    let (primary, worker) = sys::socketpair().unwrap();
    sys::send(primary.as_raw_fd(), &frame::primary_hello(1024, 9, 1)).unwrap();
    let e = Worker::handshake(worker, 4).err().unwrap().to_string();
    assert!(e.contains("worker 9") && e.contains("says 4"), "{e}");
}

/// A worker that asks to count its connections gets the count map in an answer of status 2
/// before the answer itself, and takes one off its member's count per connection done.
#[test]
fn a_worker_that_counts_gets_the_count_map_with_its_listen_answer() {
    let (primary, w) = linked();
    let asking = std::thread::spawn(move || {
        let l = w.listen_counting("127.0.0.1:0", Dispatch::RoundRobin);
        (w, l)
    });
    // The LISTEN frame (after the worker's hello), with its flags byte.
    let mut d = Decoder::new(1024);
    let mut fds = VecDeque::new();
    let request = loop {
        let n = sys::recv_with_fds(primary.as_raw_fd(), d.spare(4096), &mut fds, true).unwrap();
        d.commit(n);
        let mut found = None;
        while let Some(f) = d.next_frame().unwrap() {
            if f.kind == Kind::Listen {
                let (request, _, addr, flags) = body::parse_listen_with_flags(f.body).unwrap();
                assert_eq!((addr.as_str(), flags), ("127.0.0.1:0", body::LISTEN_COUNTS));
                found = Some(request);
            }
        }
        if let Some(r) = found {
            break r;
        }
    };
    // A stand-in for the BPF map: memory of the same size, shared the same way.
    // SAFETY: a new descriptor, owned here.
    let map = unsafe {
        let fd = libc::memfd_create(c"counts".as_ptr(), libc::MFD_CLOEXEC);
        assert!(fd >= 0);
        OwnedFd::from_raw_fd(fd)
    };
    assert_eq!(
        // SAFETY: resizes the memfd this test owns.
        unsafe { libc::ftruncate(map.as_raw_fd(), 16384) },
        0
    );
    let mut wire = Vec::new();
    frame::encode(
        &mut wire,
        Kind::ListenResult,
        frame::FLAG_FD,
        &body::turn_counter(request, 3),
    );
    sys::send_with_fds(primary.as_raw_fd(), &wire, &[map.as_raw_fd()], false).unwrap();
    let mut wire = Vec::new();
    let answer = body::listen_result(request, Ok(("web", "127.0.0.1:5000")));
    frame::encode(&mut wire, Kind::ListenResult, 0, &answer);
    sys::send(primary.as_raw_fd(), &wire).unwrap();

    let (_w, listening) = asking.join().unwrap();
    let listening = listening.unwrap();
    assert_eq!(listening.name, "web");
    let counter = listening.counter.expect("the count map");
    assert_eq!(counter.member(), 3);
    counter.done();
    counter.done();
    let mut count = [0u8; 8];
    // SAFETY: reads 8 bytes into a buffer of 8.
    let n = unsafe { libc::pread(map.as_raw_fd(), count.as_mut_ptr().cast(), 8, 3 * 8) };
    assert_eq!((n, i64::from_ne_bytes(count)), (8, -2));
}

fn send_task(primary: &OwnedFd, id: u64) {
    let mut body = Vec::new();
    crate::wire::task::task(&mut body, id, 0, "", b"x");
    let mut out = Vec::new();
    frame::encode(&mut out, Kind::Task, 0, &body);
    sys::send(primary.as_raw_fd(), &out).unwrap();
}

fn send_cancel(primary: &OwnedFd, id: u64) {
    let mut out = Vec::new();
    frame::encode(
        &mut out,
        Kind::TaskCancel,
        0,
        &crate::wire::task::task_cancel(id),
    );
    sys::send(primary.as_raw_fd(), &out).unwrap();
}

fn task_id(ev: Option<WorkerEvent>) -> u64 {
    match ev {
        Some(WorkerEvent::Task(t)) => t.id,
        other => panic!("expected a task, got {other:?}"),
    }
}

#[test]
fn a_worker_reading_tasks_one_by_one_never_sees_a_task_whose_cancel_arrived_first() {
    let (primary, w) = linked();
    for id in 1..=3 {
        send_task(&primary, id);
    }
    assert_eq!(
        task_id(w.next_event(Some(Duration::from_secs(5))).unwrap()),
        1
    );
    // Task 2 waits in the library (read with task 1) when its cancel arrives.
    send_cancel(&primary, 2);
    std::thread::sleep(Duration::from_millis(5));
    assert_eq!(task_id(w.try_next_event().unwrap()), 3);
    // A cancel of a task already handed out is the application's to follow.
    send_cancel(&primary, 1);
    assert_eq!(
        w.next_event(Some(Duration::from_secs(5))).unwrap(),
        Some(WorkerEvent::TaskCancelled(1))
    );
    assert_eq!(w.try_next_event().unwrap(), None);
}

#[test]
fn a_batch_holds_no_task_whose_cancel_came_with_it_and_poll_events_reads_cancels_at_once() {
    let (primary, w) = linked();
    for id in 1..=3 {
        send_task(&primary, id);
    }
    send_cancel(&primary, 2);
    let mut out = Vec::new();
    w.next_events(Some(Duration::from_secs(5)), 16, &mut out)
        .unwrap();
    let ids: Vec<u64> = out.drain(..).map(|e| task_id(Some(e))).collect();
    assert_eq!(ids, [1, 3]);
    // Read at once, even right after a read that emptied the socket.
    send_cancel(&primary, 3);
    w.poll_events(16, &mut out).unwrap();
    assert_eq!(out, [WorkerEvent::TaskCancelled(3)]);
}

#[test]
fn a_malformed_task_cancel_is_a_protocol_error() {
    let (primary, w) = linked();
    let mut out = Vec::new();
    frame::encode(&mut out, Kind::TaskCancel, 0, &[1, 2, 3]);
    sys::send(primary.as_raw_fd(), &out).unwrap();
    let e = w.next_event(Some(Duration::from_secs(5))).unwrap_err();
    assert!(e.to_string().contains("malformed TaskCancel"), "{e}");
}

#[test]
fn a_listen_refused_by_the_primary_names_the_address_once_and_keeps_the_errno() {
    // The primary's own bind error: its text again, not wrapped in a second "cannot listen on".
    let bind = Error::Bind {
        addr: "0.0.0.0:8000".into(),
        source: std::io::Error::from_raw_os_error(libc::EADDRINUSE),
    };
    let e = listen_refused("0.0.0.0:8000", bind.to_string());
    assert_eq!(e.to_string(), bind.to_string());
    assert_eq!(e.to_string().matches("0.0.0.0:8000").count(), 1, "{e}");
    let Error::Bind { addr, source } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(addr, "0.0.0.0:8000");
    assert_eq!(source.raw_os_error(), Some(libc::EADDRINUSE));

    // An address with colons and words, and a reason that is no OS error's.
    let text = "cannot listen on [::1]:8000 (passed descriptor 3): not a socket: it is a pipe";
    let e = listen_refused("[::1]:8000", text.to_string());
    assert_eq!(e.to_string(), text);
    let Error::Bind { source, .. } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(source.raw_os_error(), None);

    // "(os error N)" that is not the OS's text for N stays text.
    let e = listen_refused("a:1", "cannot listen on a:1: odd (os error 98)".into());
    let Error::Bind { source, .. } = &e else {
        panic!("{e:?}")
    };
    assert_eq!(source.raw_os_error(), None);
    assert_eq!(e.to_string(), "cannot listen on a:1: odd (os error 98)");

    // Any other refusal: its reason, for the address asked for.
    let e = listen_refused("127.0.0.1:9", "the supervisor is stopping".into());
    assert_eq!(
        e.to_string(),
        "cannot listen on 127.0.0.1:9: the supervisor is stopping"
    );
}
