//! A task pool in Rust: this one program is the primary and, started by it, each worker.
//! The primary submits 1,000 tasks ("square" of a number) and one that crashes its worker
//! ("crash": abort), then takes every outcome: exactly the crashing task fails, naming the
//! signal, and the pool carries on.
//!
//!   cargo run -p rcluster-examples --bin pool [workers]

use std::time::Duration;

use rcluster_core::pool::{Pool, PoolConfig, TaskError, TaskOptions};
use rcluster_core::{Answer, Worker, WorkerEvent};

const TASKS: u64 = 1000;

/// The worker: takes the tasks waiting, runs them, answers them in one write.
fn work(w: Worker) -> rcluster_core::Result<()> {
    w.ready()?;
    let mut events = Vec::new();
    loop {
        events.clear();
        w.next_events(None, 256, &mut events)?;
        let mut answers = Vec::new();
        for ev in events.drain(..) {
            match ev {
                WorkerEvent::Task(t) if t.name == "crash" => std::process::abort(),
                WorkerEvent::Task(t) => {
                    let x = u64::from_le_bytes(t.payload.try_into().unwrap_or_default());
                    answers.push((t.id, (x * x).to_le_bytes()));
                }
                WorkerEvent::Disconnect | WorkerEvent::PrimaryGone => return Ok(()),
                _ => {}
            }
        }
        let list: Vec<Answer<'_>> = answers
            .iter()
            .map(|(id, y)| Answer {
                id: *id,
                ok: true,
                content: 0,
                payload: y,
            })
            .collect();
        w.answer_many(&list)?;
    }
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    if let Some(w) = Worker::from_env()? {
        return Ok(work(w)?);
    }
    let mut cfg = PoolConfig::new([std::env::current_exe()?]);
    cfg.cluster.workers = std::env::args().nth(1).map_or(Ok(2), |n| n.parse())?;
    cfg.task_timeout = Some(Duration::from_secs(10));
    let pool = Pool::start(cfg)?;
    let named = |name: &str| TaskOptions {
        name: name.into(),
        ..TaskOptions::default()
    };
    let mut crash = 0;
    for i in 0..TASKS {
        if i == TASKS / 3 {
            crash = pool.submit(Vec::new(), named("crash"))?;
        }
        pool.submit(i.to_le_bytes().to_vec(), named("square"))?;
    }
    let (mut sum, mut ok, mut crashed) = (0u64, 0, 0);
    for _ in 0..=TASKS {
        let o = pool
            .next_outcome(Some(Duration::from_secs(20)))
            .ok_or("no outcome within 20 s")?;
        match o.result {
            Ok(v) => {
                sum += u64::from_le_bytes(v.payload.try_into().map_err(|_| "not 8 bytes")?);
                ok += 1;
            }
            Err(e @ TaskError::Crashed { .. }) if o.id == crash => {
                println!("task {}: {e}", o.id);
                crashed += 1;
            }
            Err(e) => return Err(format!("task {}: {e}", o.id).into()),
        }
    }
    println!(
        "{ok} tasks succeeded (sum of squares {sum}), {crashed} crashed; {:?}",
        pool.stats()
    );
    pool.stop(true, Duration::from_secs(5))?;
    assert_eq!(
        (ok, crashed, sum),
        (TASKS, 1, (TASKS - 1) * TASKS * (2 * TASKS - 1) / 6)
    );
    Ok(())
}
