//! Process lifetime: a primary killed outright, workers with children, failed spawns.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use rcluster_core::{Config, Event, ReadyOn, RestartMode, Supervisor};
use rcluster_tests::procs::{self, KillMarked, MARK_VAR};
use rcluster_tests::*;

/// The test worker behind `sh -c`, with `script` run first; every process carries `mark`.
fn shell_config(workers: usize, script: &str, mark: &str) -> Config {
    let mut cfg = worker_config(workers, &[]);
    cfg.argv = vec!["sh".into(), "-c".into(), script.into()];
    cfg.env.push((MARK_VAR.into(), mark.into()));
    cfg.restart.mode = RestartMode::Never;
    cfg
}

fn ready_pids(sup: &Supervisor, n: usize) -> Vec<u32> {
    let mut pids = Vec::new();
    while pids.len() < n {
        if let Event::Ready { pid, .. } = wait_for(sup, Duration::from_secs(10), |e| {
            matches!(e, Event::Ready { .. })
        }) {
            pids.push(pid);
        }
    }
    pids
}

/// Waits until group `pgid` has `n` running members; returns them.
fn wait_group(pgid: u32, n: usize) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let members = procs::group_members(pgid);
        if members.len() >= n {
            return members;
        }
        assert!(
            Instant::now() < deadline,
            "group {pgid} has {members:?}, wanted {n}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Waits up to a second (a SIGKILLed process still has to be scheduled to die) until none of
/// `pids` runs; returns those that still do.
fn still_running_after_a_second(pids: &[u32]) -> Vec<u32> {
    let deadline = Instant::now() + Duration::from_secs(1);
    loop {
        let left: Vec<u32> = pids
            .iter()
            .copied()
            .filter(|&p| procs::running(p))
            .collect();
        if left.is_empty() || Instant::now() > deadline {
            return left;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// A cgroup of the cluster's own is available here (root, or a delegated cgroup v2).
fn worker_in_own_cgroup(pid: u32) -> bool {
    procs::cgroup_of(pid).is_some_and(|c| c.contains("/rcluster."))
}

#[test]
fn primary_sigkilled_with_workers_that_have_children_leaves_nothing_within_a_second() {
    let mark = procs::new_mark("sigkill");
    let _cleanup = KillMarked(mark.clone());
    let script = format!(
        "trap '' TERM HUP INT; {}",
        procs::worker_with_children(&format!("{} echo", test_worker()))
    );
    let mut primary = Command::new(bin_path("rcluster-test-primary"))
        .args(["3", "sh", "-c", &script])
        .env(MARK_VAR, &mark)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(primary.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let workers: Vec<u32> = line
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    assert_eq!(workers.len(), 3, "{line:?}");
    for &w in &workers {
        wait_group(w, 2);
    }
    let cgroup = procs::cgroup_available();
    assert_eq!(worker_in_own_cgroup(workers[0]), cgroup);
    // Three workers, three group children, three setsid escapees and the sentinel.
    let deadline = Instant::now() + Duration::from_secs(10);
    while procs::marked(&mark).len() < 10 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    primary.kill().unwrap();
    let killed_at = Instant::now();
    primary.wait().unwrap();
    let grouped = || {
        workers
            .iter()
            .flat_map(|&w| procs::group_members(w))
            .collect::<Vec<_>>()
    };
    while !grouped().is_empty() && killed_at.elapsed() < Duration::from_secs(5) {
        std::thread::sleep(Duration::from_millis(5));
    }
    let took = killed_at.elapsed();
    assert_eq!(
        grouped(),
        Vec::<u32>::new(),
        "group members outlived the primary"
    );
    assert!(took < Duration::from_secs(1), "groups took {took:?} to die");
    if cgroup {
        let left = procs::wait_marked_gone(
            &mark,
            Duration::from_secs(1) - took.min(Duration::from_secs(1)),
        );
        assert!(
            left.is_ok(),
            "outlived the primary and its cgroup: {left:?}"
        );
    }
}

#[test]
fn worker_that_ignores_sigterm_and_has_children_is_killed_with_its_whole_group_after_kill_timeout()
{
    let mark = procs::new_mark("ignore-term");
    let _cleanup = KillMarked(mark.clone());
    // The shell's trap makes its children ignore SIGTERM too.
    let script = format!(
        "trap '' TERM; sleep 300 & sleep 300 & exec {} ignore-term",
        test_worker()
    );
    let mut cfg = shell_config(1, &script, &mark);
    cfg.kill_timeout = Duration::from_millis(1500);
    let sup = Supervisor::start(cfg).unwrap();
    let pid = ready_pids(&sup, 1)[0];
    let group = wait_group(pid, 3);
    let asked = Instant::now();
    sup.restart_worker(0).unwrap();
    // SIGTERM goes to the group at half of kill_timeout (750 ms), SIGKILL at 1.5 s.
    std::thread::sleep(Duration::from_millis(1000));
    let members = procs::group_members(pid).len();
    // On a machine so loaded that this thread slept past the kill, there is nothing to see.
    if asked.elapsed() < Duration::from_millis(1400) {
        assert_eq!(members, 3, "SIGTERM alone ended an ignoring group");
    }
    wait_for(
        &sup,
        Duration::from_secs(10),
        |e| matches!(e, Event::Exit { info, .. } if info.pid == pid),
    );
    let took = asked.elapsed();
    let left = still_running_after_a_second(&group);
    assert!(left.is_empty(), "{left:?} of the group outlived the kill");
    assert!(
        took >= Duration::from_millis(1500),
        "killed after {took:?}, before kill_timeout"
    );
    sup.stop(Duration::from_secs(1)).unwrap();
}

#[test]
fn children_of_a_worker_that_exits_on_its_own_are_killed_when_it_is_reaped() {
    let mark = procs::new_mark("exit");
    let _cleanup = KillMarked(mark.clone());
    let script = format!("sleep 300 & exec {} echo", test_worker());
    let sup = Supervisor::start(shell_config(1, &script, &mark)).unwrap();
    let pid = ready_pids(&sup, 1)[0];
    let group = wait_group(pid, 2);
    sup.send(0, b"!exit 0").unwrap();
    wait_for(
        &sup,
        Duration::from_secs(10),
        |e| matches!(e, Event::Exit { info, .. } if info.pid == pid && info.code == Some(0)),
    );
    let left = still_running_after_a_second(&group);
    assert!(left.is_empty(), "{left:?} outlived the worker's exit");
    sup.stop(Duration::from_secs(1)).unwrap();
}

#[test]
fn stop_ends_setsid_descendants_when_the_cluster_has_a_cgroup() {
    let mark = procs::new_mark("stop");
    let _cleanup = KillMarked(mark.clone());
    let script = format!("setsid sleep 300 & exec {} echo", test_worker());
    let sup = Supervisor::start(shell_config(2, &script, &mark)).unwrap();
    let pids = ready_pids(&sup, 2);
    if !procs::cgroup_available() {
        eprintln!("no cgroup of the cluster's own here: setsid descendants outlive a stop");
        return;
    }
    assert!(
        worker_in_own_cgroup(pids[0]),
        "a cgroup was possible, the workers are not in one"
    );
    let deadline = Instant::now() + Duration::from_secs(10);
    while procs::marked(&mark).len() < 4 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    let stopping = Instant::now();
    sup.stop(Duration::from_secs(2)).unwrap();
    let left = procs::wait_marked_gone(&mark, Duration::from_secs(1));
    assert!(left.is_ok(), "setsid descendants outlived stop: {left:?}");
    eprintln!("stop with setsid descendants took {:?}", stopping.elapsed());
}

#[test]
fn failing_spawn_leaves_no_zombie_and_no_descriptor() {
    // Executable, so validation passes, but exec fails: its interpreter does not exist.
    let dir = std::env::temp_dir().join(format!("rcluster-badinterp-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let prog = dir.join("prog");
    std::fs::write(&prog, "#!/nonexistent/interpreter\n").unwrap();
    std::fs::set_permissions(&prog, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let fds_before = rcluster_core::open_fd_count();
    let mut cfg = Config::new([&prog]);
    cfg.workers = 1;
    cfg.ready_on = ReadyOn::Spawn;
    cfg.restart.backoff_initial = Duration::from_millis(10);
    cfg.restart.backoff_max = Duration::from_millis(10);
    cfg.restart.max_restarts = 3;
    let sup = Supervisor::start(cfg).unwrap();
    let mut failures = 0;
    while failures < 3 {
        if let Event::SpawnFailed { error, .. } = wait_for(&sup, Duration::from_secs(10), |e| {
            matches!(e, Event::SpawnFailed { .. })
        }) {
            assert!(
                error.contains("prog") && error.contains("No such file"),
                "{error}"
            );
            failures += 1;
        }
    }
    assert_eq!(zombie_children(), 0, "a failed spawn left a zombie");
    sup.stop(Duration::from_secs(1)).unwrap();
    drop(sup);
    assert_eq!(
        rcluster_core::open_fd_count(),
        fds_before,
        "descriptors leaked"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn relative_program_in_a_relative_cwd_starts_as_cd_cwd_and_run_would() {
    let base = std::env::temp_dir().join(format!("rcluster-relcwd-{}", std::process::id()));
    let work = base.join("work");
    std::fs::create_dir_all(&work).unwrap();
    let prog = work.join("worker.sh");
    std::fs::write(&prog, format!("#!/bin/sh\nexec {} echo\n", test_worker())).unwrap();
    std::fs::set_permissions(&prog, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let mut primary = Command::new(bin_path("rcluster-test-primary"))
        .args(["1", "./worker.sh"])
        .current_dir(&base)
        .env("RCLUSTER_TEST_CWD", "work")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(primary.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let cwd = line
        .trim()
        .parse::<u32>()
        .ok()
        .and_then(|pid| std::fs::read_link(format!("/proc/{pid}/cwd")).ok());
    primary.kill().unwrap();
    primary.wait().unwrap();
    std::fs::remove_dir_all(&base).unwrap();
    assert_eq!(
        cwd,
        Some(work),
        "the worker did not start in work/: {line:?}"
    );
}

#[test]
fn start_on_a_kernel_below_the_floor_fails_naming_the_version_and_what_is_missing() {
    // setarch's UNAME26 personality makes uname report a 2.6 kernel to the primary.
    let out = Command::new("setarch")
        .args([std::env::consts::ARCH, "--uname-2.6"])
        .arg(bin_path("rcluster-test-primary"))
        .args(["1", &test_worker(), "echo"])
        .stdin(Stdio::null())
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(2), "started anyway: {text:?}");
    assert!(
        text.contains("start-failed") && text.contains("Linux 2.6") && text.contains("close_range"),
        "{text:?}"
    );
}

#[test]
fn stop_reaps_the_sentinel_and_every_worker_and_removes_the_cgroup() {
    let before = procs::children();
    let sup = Supervisor::start(worker_config(2, &["echo"])).unwrap();
    let pids = ready_pids(&sup, 2);
    // Two workers and the sentinel.
    assert_eq!(
        procs::children().len(),
        before.len() + 3,
        "{:?}",
        procs::children()
    );
    let cgroup = procs::cgroup_of(pids[0]).filter(|c| c.contains("/rcluster."));
    sup.stop(Duration::from_secs(2)).unwrap();
    assert_eq!(procs::children(), before, "left behind by stop");
    assert_eq!(zombie_children(), 0);
    if let Some(cg) = cgroup {
        let mounts = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        for m in mounts.lines().filter(|l| l.contains(" - cgroup2 ")) {
            let dir = format!("{}{cg}", m.split(' ').nth(4).unwrap());
            assert!(
                !std::path::Path::new(&dir).exists(),
                "{dir} is left after stop"
            );
        }
    }
}

#[test]
fn sentinel_outlasts_signals_meant_for_the_terminal_and_still_ends_the_groups() {
    let mark = procs::new_mark("sentinel");
    let _cleanup = KillMarked(mark.clone());
    let script = format!("sleep 300 & exec {} echo", test_worker());
    let mut primary = Command::new(bin_path("rcluster-test-primary"))
        .args(["1", "sh", "-c", &script])
        .env(MARK_VAR, &mark)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(primary.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let worker: u32 = line.trim().parse().unwrap();
    let group = wait_group(worker, 2);
    let sentinels: Vec<u32> = procs::marked(&mark)
        .into_iter()
        .filter(|&p| p != worker && procs::ppid(p) == Some(primary.id()))
        .collect();
    assert_eq!(sentinels.len(), 1, "{sentinels:?}");
    for sig in [
        libc::SIGINT,
        libc::SIGTERM,
        libc::SIGHUP,
        libc::SIGQUIT,
        libc::SIGTSTP,
    ] {
        // SAFETY: plain syscall on the sentinel this test started.
        unsafe { libc::kill(sentinels[0] as i32, sig) };
    }
    std::thread::sleep(Duration::from_millis(100));
    assert!(
        procs::running(sentinels[0]),
        "a terminal's signal ended the sentinel"
    );
    primary.kill().unwrap();
    primary.wait().unwrap();
    let left = still_running_after_a_second(&group);
    assert!(left.is_empty(), "{left:?} outlived the primary");
    assert!(
        still_running_after_a_second(&sentinels).is_empty(),
        "the sentinel outlived the primary"
    );
}

#[test]
fn sentinel_shares_the_primarys_memory_instead_of_holding_a_copy_of_it() {
    let before = procs::children();
    let sup = Supervisor::start(worker_config(1, &["echo"])).unwrap();
    let pids = ready_pids(&sup, 1);
    let sentinel: Vec<u32> = procs::children()
        .into_iter()
        .filter(|p| !before.contains(p) && !pids.contains(p))
        .collect();
    assert_eq!(sentinel.len(), 1, "{sentinel:?}");
    // A forked copy would keep every page of the host alive while the host writes its own.
    const KCMP_VM: libc::c_long = 1;
    // SAFETY: kcmp only compares two processes' kernel objects.
    let same = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            std::process::id() as libc::c_long,
            sentinel[0] as libc::c_long,
            KCMP_VM,
            0 as libc::c_long,
            0 as libc::c_long,
        )
    };
    let err = std::io::Error::last_os_error();
    sup.stop(Duration::from_secs(2)).unwrap();
    if same < 0 && err.raw_os_error() == Some(libc::ENOSYS) {
        eprintln!("no kcmp in this kernel: not checked");
        return;
    }
    assert_eq!(same, 0, "the sentinel has a memory of its own ({err})");
}
