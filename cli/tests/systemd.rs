//! `rcluster run` under a service manager: the test's datagram socket is its `NOTIFY_SOCKET`.

use std::os::linux::net::SocketAddrExt;
use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{RuntimeDir, RCLUSTER};

/// Receives notifications into `got` until one has the line `key` (after index `from`);
/// returns its index. Panics with everything received after 10 s.
fn wait_line(rx: &UnixDatagram, got: &mut Vec<String>, from: usize, key: &str) -> usize {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut buf = [0u8; 4096];
    loop {
        if let Some(i) = got
            .iter()
            .skip(from)
            .position(|m| m.lines().any(|l| l == key))
        {
            return i + from;
        }
        assert!(
            Instant::now() < deadline,
            "no {key} after {from}; got {got:#?}"
        );
        if let Ok(n) = rx.recv(&mut buf) {
            got.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
}

#[test]
fn rcluster_run_notifies_ready_reloading_ready_stopping_and_the_watchdog_in_order() {
    let name = format!("rcluster-cli-notify-{}", std::process::id());
    let rx = UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(&name).unwrap()).unwrap();
    rx.set_read_timeout(Some(Duration::from_millis(100)))
        .unwrap();
    let runtime = RuntimeDir::new();
    let mut child = Command::new(RCLUSTER)
        .env("XDG_RUNTIME_DIR", &runtime.0)
        .args([
            "run",
            "-w",
            "2",
            "--kill-timeout",
            "2s",
            "--",
            "sleep",
            "300",
        ])
        .env("NOTIFY_SOCKET", format!("@{name}"))
        .env("WATCHDOG_USEC", "300000")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let pid = child.id() as i32;
    let mut got = Vec::new();
    let ready = wait_line(&rx, &mut got, 0, "READY=1");
    assert!(
        got[ready].contains("STATUS=2/2 workers ready, generation 1"),
        "{got:#?}"
    );
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(pid, libc::SIGHUP) };
    let reloading = wait_line(&rx, &mut got, ready + 1, "RELOADING=1");
    assert!(got[reloading].contains("MONOTONIC_USEC="), "{got:#?}");
    let ready_again = wait_line(&rx, &mut got, reloading + 1, "READY=1");
    // SAFETY: as above.
    unsafe { libc::kill(pid, libc::SIGTERM) };
    let stopping = wait_line(&rx, &mut got, ready_again + 1, "STOPPING=1");
    let watchdog = wait_line(&rx, &mut got, 0, "WATCHDOG=1");
    assert!(watchdog < stopping, "{got:#?}");
    let deadline = Instant::now() + Duration::from_secs(10);
    while child.try_wait().unwrap().is_none() {
        assert!(Instant::now() < deadline, "rcluster did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn workers_do_not_inherit_notify_socket_or_the_watchdog_variables() {
    let out = std::env::temp_dir().join(format!("rcluster-notify-env-{}", std::process::id()));
    let _ = std::fs::remove_file(&out);
    let script = format!(
        "printf '%s|%s|%s' \"${{NOTIFY_SOCKET-unset}}\" \"${{WATCHDOG_USEC-unset}}\" \
         \"${{WATCHDOG_PID-unset}}\" > {}.tmp && mv {0}.tmp {0}; exec sleep 300",
        out.display()
    );
    let runtime = RuntimeDir::new();
    let mut child = Command::new(RCLUSTER)
        .env("XDG_RUNTIME_DIR", &runtime.0)
        .args([
            "run",
            "-w",
            "1",
            "--kill-timeout",
            "2s",
            "--",
            "sh",
            "-c",
            &script,
        ])
        .env("NOTIFY_SOCKET", "@rcluster-nobody-listens")
        .env("WATCHDOG_USEC", "1000000")
        .env("WATCHDOG_PID", "1")
        .stdin(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    let seen = loop {
        if let Ok(text) = std::fs::read_to_string(&out) {
            break text;
        }
        assert!(Instant::now() < deadline, "the worker wrote nothing");
        std::thread::sleep(Duration::from_millis(20));
    };
    // SAFETY: kill has no memory effects.
    unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
    let _ = child.wait();
    let _ = std::fs::remove_file(&out);
    assert_eq!(seen, "unset|unset|unset");
}
