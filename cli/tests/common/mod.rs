//! What the command's test files share: the binary, the example worker, and a running
//! `rcluster` whose stderr is collected line by line.
#![allow(dead_code)] // each test file uses its own part

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const RCLUSTER: &str = env!("CARGO_BIN_EXE_rcluster");
pub const WAIT: Duration = Duration::from_secs(15);

/// hello-worker lives in another package, so `cargo test -p rcluster` does not build it; build
/// it into the same target directory when it is missing.
pub fn hello_worker_binary() -> PathBuf {
    let profile_dir = Path::new(RCLUSTER).parent().expect("binary directory");
    let path = profile_dir.join("hello-worker");
    if path.exists() {
        return path;
    }
    let target_dir = profile_dir.parent().expect("target directory");
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.args(["build", "-p", "rcluster-examples", "--bin", "hello-worker"])
        .env("CARGO_TARGET_DIR", target_dir);
    if profile_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .spawn()
        .expect("run cargo build");
    let deadline = Instant::now() + Duration::from_secs(600);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("building hello-worker took longer than 10 minutes");
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    assert!(
        status.success() && path.exists(),
        "`cargo build -p rcluster-examples` failed ({status}); cannot test hello-worker"
    );
    path
}

/// A runtime folder (`XDG_RUNTIME_DIR`) of its own for what a test starts, removed when
/// dropped. A primary a test kills leaves its control socket behind: it must be left here,
/// never in the user's real folder (`/run/rcluster`, `~/.rcluster`), where `rcluster ls`
/// would find it.
pub struct RuntimeDir(pub PathBuf);

impl RuntimeDir {
    pub fn new() -> RuntimeDir {
        static NEXT: AtomicUsize = AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, Ordering::Relaxed);
        let dir = std::env::temp_dir().join(format!("rcluster-rt-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("make a runtime folder");
        RuntimeDir(dir)
    }

    /// The control socket of cluster `name` started with this folder.
    pub fn sock(&self, name: &str) -> PathBuf {
        self.0.join("rcluster").join(format!("{name}.sock"))
    }

    /// Gives `cmd` this folder, unless the test gave it one already.
    pub fn apply(&self, cmd: &mut Command) {
        if !cmd.get_envs().any(|(k, _)| k == "XDG_RUNTIME_DIR") {
            cmd.env("XDG_RUNTIME_DIR", &self.0);
        }
    }
}

impl Default for RuntimeDir {
    fn default() -> Self {
        RuntimeDir::new()
    }
}

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `rcluster` with a runtime folder of its own (keep the folder while the command runs).
pub fn rcluster_command() -> (Command, RuntimeDir) {
    let rt = RuntimeDir::new();
    let mut cmd = Command::new(RCLUSTER);
    rt.apply(&mut cmd);
    (cmd, rt)
}

/// A running `rcluster`, killed when dropped.
pub struct Primary {
    pub child: Child,
    pub log: Arc<Mutex<Vec<String>>>,
    /// Dropped after the child is killed (fields drop after `Drop::drop`).
    pub runtime: RuntimeDir,
}

impl Primary {
    /// `rcluster ARGS`.
    pub fn start(args: &[&str]) -> Primary {
        let mut cmd = Command::new(RCLUSTER);
        cmd.args(args);
        Primary::spawn(cmd)
    }

    /// `cmd` (an `rcluster` command line, maybe behind a wrapper), stdin and stdout null.
    pub fn spawn(mut cmd: Command) -> Primary {
        let runtime = RuntimeDir::new();
        runtime.apply(&mut cmd);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn rcluster");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (stderr, sink) = (child.stderr.take().unwrap(), Arc::clone(&log));
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                sink.lock().unwrap().push(line);
            }
        });
        Primary {
            child,
            log,
            runtime,
        }
    }

    fn count(&self, needle: &str) -> usize {
        let log = self.log.lock().unwrap();
        log.iter().filter(|l| l.contains(needle)).count()
    }

    /// Waits for `n` log lines containing `needle`; fails early if rcluster exits first.
    pub fn wait_log(&mut self, needle: &str, n: usize) {
        let deadline = Instant::now() + WAIT;
        while self.count(needle) < n {
            if let Some(status) = self.child.try_wait().unwrap() {
                panic!(
                    "rcluster exited ({status}) before {n} × {needle:?}; log:\n{}",
                    self.log.lock().unwrap().join("\n")
                );
            }
            assert!(
                Instant::now() < deadline,
                "no {n} × {needle:?}; log:\n{}",
                self.log.lock().unwrap().join("\n")
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn wait_ready(&mut self, n: usize) {
        self.wait_log(": ready", n);
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: kill has no memory effects.
        unsafe { libc::kill(self.child.id() as i32, sig) };
    }

    pub fn wait_exit(&mut self) -> ExitStatus {
        let deadline = Instant::now() + WAIT;
        loop {
            if let Some(s) = self.child.try_wait().unwrap() {
                return s;
            }
            assert!(Instant::now() < deadline, "rcluster did not exit");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// SIGTERM, then waits for the exit.
    pub fn stop(&mut self) -> ExitStatus {
        self.signal(libc::SIGTERM);
        self.wait_exit()
    }

    /// Waits until every thread of the primary is stopped (state T): a stop signal takes
    /// effect asynchronously.
    pub fn wait_all_threads_stopped(&self) {
        let pid = self.child.id();
        let deadline = Instant::now() + WAIT;
        loop {
            let states: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
                .unwrap()
                .filter_map(|t| std::fs::read_to_string(t.ok()?.path().join("stat")).ok())
                .filter_map(|s| Some(s.rsplit_once(')')?.1.split_whitespace().next()?.to_string()))
                .collect();
            if states.iter().all(|s| s == "T") {
                return;
            }
            assert!(Instant::now() < deadline, "not stopped: {states:?}");
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

impl Drop for Primary {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
