//! A pool worker for the end-to-end tests: each task's name says what to do with its payload.
//!
//! - `echo` (or no name): answers with the payload
//! - `pid`: answers with this process's pid (decimal text)
//! - `sleep`: sleeps the payload's milliseconds (decimal text), answers "slept"
//! - `spin`: loops forever (a runaway task)
//! - `exit`: exits with the payload's code
//! - `signal`: kills itself with the payload's signal number
//! - `fail`: answers with the payload as an error
//! - `touch`: creates the file named by the payload (a side effect to look for)
//! - `grow`: keeps the payload's number of MiB of memory for good (a leak), answers "grown"
//!
//! Tasks that wait in the socket are taken together and run in turn, one at a time; the
//! answers of quick tasks are written together (one write for a batch), and every answer held
//! is written before a task that may take time starts, as the protocol asks (the primary
//! starts a task's deadline when the answer before it arrives). A task held while others ran
//! is dropped when the pool cancelled it meanwhile (`TaskCancelled`).
//! With the environment variable `POOL_WORKER_BOOT=fail` it cannot start: it says why and
//! exits with `BOOT_FAILED_EXIT`; with `POOL_WORKER_BOOT=crash` it exits with code 1 before
//! it is ready. `POOL_WORKER_START_MS=N` makes it wait N ms before it says ready.
//! `POOL_WORKER_IGNORE_CANCELS=1` makes it run the tasks it holds even when they are
//! cancelled.

use std::collections::VecDeque;
use std::fs::File;
use std::time::{Duration, Instant};

use rcluster_core::pool::BOOT_FAILED_EXIT;
use rcluster_core::{Answer, Task, Worker, WorkerEvent};

fn main() {
    let w = match Worker::from_env() {
        Ok(Some(w)) => w,
        _ => std::process::exit(2),
    };
    match std::env::var("POOL_WORKER_BOOT").as_deref() {
        Ok("fail") => {
            w.boot_failed("tasks.js: SyntaxError: Unexpected token")
                .unwrap();
            std::process::exit(BOOT_FAILED_EXIT);
        }
        Ok("crash") => std::process::exit(1),
        _ => {}
    }
    // A worker that takes long to start (loading a large module).
    if let Ok(ms) = std::env::var("POOL_WORKER_START_MS") {
        std::thread::sleep(Duration::from_millis(ms.parse().unwrap_or(0)));
    }
    // A worker that runs the tasks it holds even when the pool cancels them (as one does
    // that started a task just before its cancel arrived).
    let ignore_cancels = std::env::var_os("POOL_WORKER_IGNORE_CANCELS").is_some();
    w.ready().unwrap();
    let mut held: VecDeque<WorkerEvent> = VecDeque::new();
    let mut answers: Vec<(u64, bool, Vec<u8>)> = Vec::new();
    let mut events = Vec::new();
    loop {
        if held.is_empty() {
            if w.next_events(None, 256, &mut events).is_err() {
                std::process::exit(0);
            }
            held.extend(events.drain(..));
        }
        let mut since = Instant::now();
        while let Some(ev) = held.pop_front() {
            match ev {
                WorkerEvent::Task(t) => {
                    let quick = matches!(t.name.as_str(), "" | "echo" | "pid" | "fail");
                    if !quick {
                        flush(&w, &mut answers);
                    }
                    answers.push(run(&t));
                    if !quick {
                        flush(&w, &mut answers);
                    }
                }
                WorkerEvent::TaskCancelled(id) if !ignore_cancels => drop_task(&mut held, id),
                WorkerEvent::Disconnect | WorkerEvent::PrimaryGone => {
                    flush(&w, &mut answers);
                    std::process::exit(0);
                }
                _ => {}
            }
            // The tasks held waited while this one ran: a cancel may have come for them.
            if !held.is_empty() && since.elapsed() >= Duration::from_millis(1) {
                if w.poll_events(256, &mut events).is_err() {
                    std::process::exit(0);
                }
                for ev in events.drain(..) {
                    match ev {
                        WorkerEvent::TaskCancelled(id) if !ignore_cancels => {
                            drop_task(&mut held, id)
                        }
                        ev => held.push_back(ev),
                    }
                }
                since = Instant::now();
            }
        }
        flush(&w, &mut answers);
    }
}

/// Drops task `id` if it is held and not started (a cancelled task never runs).
fn drop_task(held: &mut VecDeque<WorkerEvent>, id: u64) {
    held.retain(|e| !matches!(e, WorkerEvent::Task(t) if t.id == id));
}

fn number(t: &Task) -> u64 {
    String::from_utf8_lossy(&t.payload)
        .trim()
        .parse()
        .unwrap_or(0)
}

fn run(t: &Task) -> (u64, bool, Vec<u8>) {
    match t.name.as_str() {
        "" | "echo" => (t.id, true, t.payload.clone()),
        "pid" => (t.id, true, std::process::id().to_string().into_bytes()),
        "sleep" => {
            std::thread::sleep(Duration::from_millis(number(t)));
            (t.id, true, b"slept".to_vec())
        }
        "spin" => loop {
            std::hint::spin_loop();
        },
        "exit" => std::process::exit(number(t) as i32),
        "signal" => {
            let sig = number(t) as i32;
            // The Rust runtime handles SIGSEGV itself (stack overflows): back to the default
            // action first, as in a C program that faults.
            // SAFETY: resetting a disposition and raising a signal in this process only.
            unsafe {
                libc::signal(sig, libc::SIG_DFL);
                libc::raise(sig);
            }
            std::thread::sleep(Duration::from_secs(10));
            std::process::exit(99)
        }
        "fail" => (t.id, false, t.payload.clone()),
        "touch" => {
            let path = String::from_utf8_lossy(&t.payload).into_owned();
            File::create(&path).unwrap();
            (t.id, true, b"touched".to_vec())
        }
        // A lying worker: answers the task numbered one more than its own (given to someone
        // else, or to nobody yet) and never its own.
        "forge" => (t.id + 1, true, b"forged".to_vec()),
        "grow" => {
            // Memory the worker keeps (a leak): the payload's MiB, touched so that it counts.
            let block = vec![1u8; (number(t) as usize) << 20];
            std::mem::forget(block);
            (t.id, true, b"grown".to_vec())
        }
        other => (t.id, false, format!("no task named {other}").into_bytes()),
    }
}

fn flush(w: &Worker, answers: &mut Vec<(u64, bool, Vec<u8>)>) {
    if answers.is_empty() {
        return;
    }
    let list: Vec<Answer<'_>> = answers
        .iter()
        .map(|(id, ok, p)| Answer {
            id: *id,
            ok: *ok,
            content: 0,
            payload: p,
        })
        .collect();
    if w.answer_many(&list).is_err() {
        std::process::exit(0);
    }
    answers.clear();
}
