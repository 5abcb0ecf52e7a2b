//! Socket activation of the primary: listening sockets passed by a service manager
//! (`LISTEN_FDS`) are used instead of binding, so clients wait in the kernel while the
//! primary restarts.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::{hello_worker_binary, Primary, RuntimeDir, RCLUSTER, WAIT};

/// A running primary whose stderr is collected; dropping it kills it.
/// `rcluster run` with `fd` passed as descriptor 3, named `web`, the way systemd passes a
/// socket: `LISTEN_PID` is set by the shell that then becomes rcluster.
fn activated(fd: i32, listen: &str) -> Command {
    let worker = hello_worker_binary();
    let mut cmd = Command::new("sh");
    cmd.args([
        "-c",
        "export LISTEN_PID=$$ LISTEN_FDS=1 LISTEN_FDNAMES=web; exec \"$@\"",
        "sh",
    ])
    .args([
        RCLUSTER,
        "run",
        "-w",
        "2",
        "--ready",
        "explicit",
        "--kill-timeout",
        "5s",
    ])
    .args(["--listen", listen, "--", worker.to_str().unwrap()]);
    // SAFETY: dup2 is async-signal-safe; `fd` stays open in the parent during the spawn.
    unsafe {
        cmd.pre_exec(move || {
            if libc::dup2(fd, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    cmd
}

fn get(stream: &mut TcpStream) -> String {
    stream.set_read_timeout(Some(WAIT)).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    response
}

fn send_request(addr: &str) -> TcpStream {
    let mut s = TcpStream::connect(addr).unwrap();
    s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    s
}

#[test]
fn connection_made_while_the_primary_is_down_is_served_after_it_restarts() {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    // Above 3, so that dup2 onto 3 always makes a copy without CLOEXEC.
    // SAFETY: plain syscall; the copy is closed with `passed` below.
    let passed = unsafe { libc::fcntl(listener.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    assert!(passed >= 10);
    let listen = format!("{addr}=web");

    let mut first = Primary::spawn(activated(passed, &listen));
    first.wait_ready(2);
    let body = get(&mut send_request(&addr));
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    first.stop();

    // Nobody runs: the connection waits in the socket's queue.
    let mut waiting = send_request(&addr);
    let mut second = Primary::spawn(activated(passed, &listen));
    second.wait_ready(2);
    let body = get(&mut waiting);
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    second.stop();
    // SAFETY: `passed` is ours and no longer used.
    unsafe { libc::close(passed) };
}

#[test]
fn passed_unix_socket_outlives_a_stop_and_the_next_primary_serves_on_it() {
    let dir = std::env::temp_dir().join(format!("rcluster-activation-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("web.sock");
    let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
    // SAFETY: plain syscall; the copy is closed below.
    let passed = unsafe { libc::fcntl(listener.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 10) };
    assert!(passed >= 10);
    let listen = format!("unix:{}=web", path.display());
    let ask = |path: &Path| {
        let mut s = std::os::unix::net::UnixStream::connect(path).unwrap();
        s.set_read_timeout(Some(WAIT)).unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .unwrap();
        s
    };
    let read = |mut s: std::os::unix::net::UnixStream| {
        let mut text = String::new();
        s.read_to_string(&mut text).unwrap();
        text
    };

    let mut first = Primary::spawn(activated(passed, &listen));
    first.wait_ready(2);
    assert!(read(ask(&path)).starts_with("HTTP/1.1 200"));
    first.stop();
    assert!(path.exists(), "the stop removed the passed socket's file");
    let waiting = ask(&path);
    let mut second = Primary::spawn(activated(passed, &listen));
    second.wait_ready(2);
    let body = read(waiting);
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    second.stop();
    // SAFETY: `passed` is ours and no longer used.
    unsafe { libc::close(passed) };
    drop(listener);
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn rcluster_under_systemd_socket_activate_serves_on_the_socket_it_was_given() {
    let Ok(tool) = which("systemd-socket-activate") else {
        eprintln!("systemd-socket-activate is not installed (apt package systemd): not run");
        return;
    };
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let addr = format!("127.0.0.1:{port}");
    let worker = hello_worker_binary();
    // The tool passes its program a few variables only (PATH, HOME, ...): the runtime folder
    // goes by -E, or a killed rcluster would leave its socket in the real one.
    let runtime = RuntimeDir::new();
    let mut cmd = Command::new(tool);
    cmd.env("XDG_RUNTIME_DIR", &runtime.0)
        .arg("-E")
        .arg(format!("XDG_RUNTIME_DIR={}", runtime.0.display()))
        .args(["-l", &addr, "--fdname=web", RCLUSTER, "run", "-w", "1"])
        .args(["--ready", "explicit", "--", worker.to_str().unwrap()]);
    let mut p = Primary::spawn(cmd);
    // The tool starts its program when the first client connects; that client is served.
    let deadline = Instant::now() + WAIT;
    let mut first = loop {
        match TcpStream::connect(&addr) {
            Ok(s) => break s,
            Err(e) => assert!(Instant::now() < deadline, "cannot connect: {e}"),
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    first
        .write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        .unwrap();
    let body = get(&mut first);
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    p.wait_ready(1);
    let body = get(&mut send_request(&addr));
    assert!(body.starts_with("HTTP/1.1 200"), "{body}");
    p.stop();
}

fn which(name: &str) -> Result<PathBuf, ()> {
    let path = std::env::var_os("PATH").ok_or(())?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.exists())
        .ok_or(())
}
