//! Task pools with real worker processes (`rcluster-test-pool-worker`).

use std::collections::HashMap;
use std::time::{Duration, Instant};

use rcluster_core::pool::{Outcome, Pool, PoolConfig, TaskError, TaskOptions, WhenFull};
use rcluster_core::Error;
use rcluster_tests::bin_path;

fn config(workers: usize) -> PoolConfig {
    let mut c = PoolConfig::new([bin_path("rcluster-test-pool-worker")]);
    c.cluster.workers = workers;
    c.cluster.kill_timeout = Duration::from_secs(2);
    c.cluster.ready_timeout = Duration::from_secs(10);
    c.cluster.restart.backoff_initial = Duration::from_millis(20);
    c.cluster.restart.backoff_max = Duration::from_millis(200);
    c.cluster.restart.jitter = 0.0;
    c
}

fn named(name: &str) -> TaskOptions {
    TaskOptions {
        name: name.into(),
        ..TaskOptions::default()
    }
}

fn submit(pool: &Pool, name: &str, payload: &str) -> u64 {
    pool.submit(payload.as_bytes().to_vec(), named(name))
        .unwrap()
}

/// Takes outcomes until `n` arrived, by task id; panics after `within`.
fn collect(pool: &Pool, n: usize, within: Duration) -> HashMap<u64, Outcome> {
    let deadline = Instant::now() + within;
    let mut got = HashMap::new();
    while got.len() < n {
        let left = deadline.saturating_duration_since(Instant::now());
        match pool.next_outcome(Some(left)) {
            Some(o) => {
                got.insert(o.id, o);
            }
            None => panic!("{} of {n} outcomes within {within:?}", got.len()),
        }
    }
    got
}

fn value(o: &Outcome) -> String {
    match &o.result {
        Ok(v) => String::from_utf8_lossy(&v.payload).into_owned(),
        Err(e) => panic!("task {} failed: {e}", o.id),
    }
}

const LONG: Duration = Duration::from_secs(20);

#[test]
fn every_task_gets_its_own_result_in_order_or_out_of_order() {
    let mut c = config(2);
    c.concurrent_tasks_per_worker = 4;
    let pool = Pool::start(c).unwrap();
    // A slow task first: the quick ones behind it on the other worker finish before it.
    let slow = submit(&pool, "sleep", "300");
    let ids: Vec<u64> = (0..200)
        .map(|i| submit(&pool, "echo", &format!("v{i}")))
        .collect();
    let mut order = Vec::new();
    let deadline = Instant::now() + LONG;
    let mut got = HashMap::new();
    while got.len() < 201 && Instant::now() < deadline {
        if let Some(o) = pool.next_outcome(Some(Duration::from_secs(1))) {
            order.push(o.id);
            got.insert(o.id, o);
        }
    }
    assert_eq!(got.len(), 201);
    for (i, id) in ids.iter().enumerate() {
        assert_eq!(value(&got[id]), format!("v{i}"));
    }
    assert_eq!(value(&got[&slow]), "slept");
    assert_ne!(order[0], slow, "quick tasks overtake the slow one");
    let s = pool.stats();
    assert_eq!(
        (s.completed, s.failed(), s.queued, s.running),
        (201, 0, 0, 0)
    );
}

#[test]
fn a_task_that_exits_its_worker_fails_alone_naming_the_code_while_1000_others_succeed() {
    let pool = Pool::start(config(2)).unwrap();
    let mut ids = Vec::new();
    for i in 0..1000 {
        ids.push(submit(&pool, "echo", &i.to_string()));
        if i == 300 {
            ids.push(submit(&pool, "exit", "7"));
        }
    }
    let got = collect(&pool, 1001, LONG);
    let failed: Vec<&Outcome> = got.values().filter(|o| o.result.is_err()).collect();
    assert_eq!(failed.len(), 1, "only the exiting task fails");
    match &failed[0].result {
        Err(TaskError::Crashed {
            code: Some(7),
            signal: None,
            ..
        }) => {}
        other => panic!("expected a crash with code 7, got {other:?}"),
    }
    let msg = failed[0].result.as_ref().unwrap_err().to_string();
    assert!(msg.contains("exit code 7"), "{msg}");
    // The pool is still usable.
    let after = submit(&pool, "echo", "after");
    assert_eq!(value(&collect(&pool, 1, LONG)[&after]), "after");
    assert_eq!(pool.stats().failed_crashed, 1);
}

#[test]
fn a_task_that_kills_its_worker_with_sigsegv_fails_naming_the_signal() {
    let pool = Pool::start(config(1)).unwrap();
    let id = submit(&pool, "signal", &libc::SIGSEGV.to_string());
    let got = collect(&pool, 1, LONG);
    let e = got[&id].result.as_ref().unwrap_err();
    assert!(
        matches!(e, TaskError::Crashed { signal: Some(s), .. } if *s == libc::SIGSEGV),
        "{e:?}"
    );
    assert!(e.to_string().contains("SIGSEGV"), "{e}");
    let after = submit(&pool, "echo", "ok");
    assert_eq!(value(&collect(&pool, 1, LONG)[&after]), "ok");
}

#[test]
fn a_runaway_task_with_a_200ms_timeout_fails_within_250ms_and_the_others_are_unaffected() {
    let mut c = config(2);
    c.task_timeout = Some(Duration::from_millis(200));
    let pool = Pool::start(c).unwrap();
    // Both workers ready first, so that the timeout measures the task, not a start.
    let warm: Vec<u64> = (0..4).map(|_| submit(&pool, "sleep", "20")).collect();
    collect(&pool, warm.len(), LONG);
    let runaway = submit(&pool, "spin", "");
    let others: Vec<u64> = (0..50)
        .map(|i| submit(&pool, "echo", &i.to_string()))
        .collect();
    let got = collect(&pool, 51, LONG);
    let o = &got[&runaway];
    assert!(
        matches!(o.result, Err(TaskError::Timeout { .. })),
        "{:?}",
        o.result
    );
    assert!(o.run >= Duration::from_millis(200), "ran {:?}", o.run);
    assert!(
        o.run < Duration::from_millis(250),
        "rejected {:?} after its start",
        o.run
    );
    for id in others {
        assert!(got[&id].result.is_ok(), "{:?}", got[&id].result);
    }
    assert_eq!(pool.stats().failed_timeout, 1);
}

#[test]
fn cancelling_a_queued_task_removes_it_and_cancelling_a_running_one_replaces_its_worker() {
    let pool = Pool::start(config(1)).unwrap();
    let first = submit(&pool, "pid", "");
    let pid1 = value(&collect(&pool, 1, LONG)[&first]);
    let running = submit(&pool, "spin", "");
    let queued = submit(&pool, "echo", "never");
    let next = submit(&pool, "pid", "");
    // The queued one goes at once (from the queue, or from the worker it waits in behind the
    // spin task), without touching the worker.
    pool.cancel(queued);
    let got = collect(&pool, 1, LONG);
    assert!(matches!(got[&queued].result, Err(TaskError::Cancelled)));
    // Give the spin task time to reach the worker, then cancel it there.
    std::thread::sleep(Duration::from_millis(200));
    pool.cancel(running);
    let got = collect(&pool, 2, LONG);
    assert!(matches!(got[&running].result, Err(TaskError::Cancelled)));
    // The task queued behind it ran on the replacement, not on the worker being killed.
    let pid2 = value(&got[&next]);
    assert_ne!(pid1, pid2);
    assert_eq!(pool.stats().failed_cancelled, 2);
}

#[test]
fn a_full_queue_rejects_a_task_or_makes_the_submitter_wait_for_room() {
    let mut c = config(1);
    c.max_queue = 2;
    let pool = Pool::start(c).unwrap();
    let busy = submit(&pool, "sleep", "300");
    // The sleeping task may still be queued until the worker is ready, and the worker holds
    // one task more, sent ahead: wait until both are in it.
    let ahead = submit(&pool, "echo", "ahead");
    wait_running(&pool, 2);
    submit(&pool, "echo", "a");
    submit(&pool, "echo", "b");
    match pool.submit(b"c".to_vec(), named("echo")) {
        Err(Error::TaskQueueFull { limit: 2 }) => {}
        other => panic!("expected TaskQueueFull, got {other:?}"),
    }
    drop(pool);

    let mut c = config(1);
    c.max_queue = 1;
    c.when_full = WhenFull::Wait;
    let pool = Pool::start(c).unwrap();
    let t0 = Instant::now();
    submit(&pool, "sleep", "300");
    submit(&pool, "echo", "ahead");
    wait_running(&pool, 2);
    submit(&pool, "echo", "a");
    // Waits until the sleep ends and "a" leaves the queue.
    let last = submit(&pool, "echo", "b");
    assert!(
        t0.elapsed() >= Duration::from_millis(250),
        "{:?}",
        t0.elapsed()
    );
    let got = collect(&pool, 4, LONG);
    assert_eq!(value(&got[&last]), "b");
    let _ = (busy, ahead);
}

/// Waits until `n` tasks are in workers (running, or sent ahead).
fn wait_running(pool: &Pool, n: usize) {
    let deadline = Instant::now() + LONG;
    while pool.stats().running < n && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_eq!(pool.stats().running, n);
}

#[test]
fn a_worker_is_replaced_after_max_tasks_per_worker_and_no_task_fails() {
    let mut c = config(2);
    c.max_tasks_per_worker = Some(10);
    let pool = Pool::start(c).unwrap();
    // 100 tasks of 5 ms on 2 workers: time enough for replacements to start and take over.
    let ids: Vec<u64> = (0..100).map(|_| submit(&pool, "sleep", "5")).collect();
    let got = collect(&pool, ids.len(), LONG);
    assert!(got.values().all(|o| o.result.is_ok()));
    // A replacement advances as tasks are answered: on a loaded machine the first may still be
    // under way when those tasks are done, so tasks go on (in rounds of 20) until two are.
    // Still two workers. While one is replaced a spare stands in: three take tasks, and a
    // fourth process may be the old one leaving while its replacement starts. Once the
    // replacements are done, two are left. (Counting a round's distinct answering pids says
    // nothing: with 10 tasks each, both workers can be replaced within a round of 20.)
    let live = || {
        rcluster_tests::procs::children()
            .into_iter()
            .filter(|&pid| {
                rcluster_tests::procs::running(pid)
                    && std::fs::read_link(format!("/proc/{pid}/exe"))
                        .is_ok_and(|exe| exe.ends_with("rcluster-test-pool-worker"))
            })
            .collect::<Vec<u32>>()
    };
    let mut most = (live().len(), pool.stats().workers_ready);
    let mut total = 100;
    let deadline = Instant::now() + LONG;
    loop {
        let pids: Vec<u64> = (0..20).map(|_| submit(&pool, "pid", "")).collect();
        for _ in 0..2 {
            most = (
                most.0.max(live().len()),
                most.1.max(pool.stats().workers_ready),
            );
            collect(&pool, pids.len() / 2, LONG);
        }
        total += 20;
        if pool.stats().recycled >= 2 || Instant::now() > deadline {
            break;
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let s = pool.stats();
    assert_eq!((s.completed, s.failed()), (total, 0));
    assert!(s.recycled >= 2, "{s:?}");
    assert!(
        most.0 <= 4 && most.1 <= 3,
        "(processes, ready) at most {most:?}"
    );
    // The last replacement ends without more tasks; then two stay (seen three times in a
    // row: a worker being forked is not yet the pool worker's program).
    let deadline = Instant::now() + LONG;
    let mut twos = 0;
    while twos < 3 && Instant::now() < deadline {
        twos = if live().len() == 2 { twos + 1 } else { 0 };
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(live().len(), 2, "{:?}", live());
}

#[test]
fn workers_reaching_max_tasks_together_are_recycled_one_at_a_time_so_tasks_never_wait_for_a_start()
{
    let mut c = config(2);
    c.max_tasks_per_worker = Some(5);
    c.cluster
        .env
        .push(("POOL_WORKER_START_MS".into(), "400".into()));
    let pool = Pool::start(c).unwrap();
    // Both workers up (a start takes 400 ms), then 40 quick tasks: each worker reaches its
    // limit after a handful. Were both replaced at once, tasks would wait 400 ms for a start.
    let warm: Vec<u64> = (0..2).map(|_| submit(&pool, "sleep", "50")).collect();
    collect(&pool, warm.len(), LONG);
    let before = pool.stats();
    let t = Instant::now();
    let ids: Vec<u64> = (0..40).map(|_| submit(&pool, "pid", "")).collect();
    let got = collect(&pool, ids.len(), LONG);
    assert!(got.values().all(|o| o.result.is_ok()));
    let waited = got.values().map(|o| o.wait).max().unwrap();
    assert!(
        waited < Duration::from_millis(300),
        "a task waited {waited:?} (all 40 took {:?}); {:?}",
        t.elapsed(),
        pool.stats()
    );
    // The replacements happen meanwhile or after, with no task waiting for them.
    let deadline = Instant::now() + LONG;
    while pool.stats().recycled == before.recycled && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    assert!(
        pool.stats().recycled > before.recycled,
        "{:?}",
        pool.stats()
    );
}

#[test]
fn a_single_worker_is_replaced_after_max_tasks_by_one_started_beforehand_so_no_task_waits() {
    let mut c = config(1);
    c.max_tasks_per_worker = Some(5);
    c.cluster
        .env
        .push(("POOL_WORKER_START_MS".into(), "400".into()));
    let pool = Pool::start(c).unwrap();
    submit(&pool, "pid", "");
    collect(&pool, 1, LONG);
    // 24 tasks of 30 ms: the worker reaches its limit early on, and a start takes 400 ms.
    // Were it replaced only after it retired, the tasks would stop for that start.
    let ids: Vec<u64> = (0..24).map(|_| submit(&pool, "sleep", "30")).collect();
    let mut last = Instant::now();
    let mut longest_gap = Duration::ZERO;
    for _ in &ids {
        let o = pool.next_outcome(Some(LONG)).expect("an outcome");
        assert!(o.result.is_ok(), "{:?}", o.result);
        longest_gap = longest_gap.max(last.elapsed());
        last = Instant::now();
    }
    let s = pool.stats();
    assert!(s.recycled >= 1, "{s:?}");
    assert!(
        longest_gap < Duration::from_millis(300),
        "tasks stopped for {longest_gap:?}; {s:?}"
    );
}

#[test]
fn a_worker_above_max_worker_memory_after_a_task_is_replaced_and_no_task_fails() {
    let mut c = config(1);
    c.max_worker_memory = Some(64 << 20);
    let pool = Pool::start(c).unwrap();
    let before = submit(&pool, "pid", "");
    let pid1 = value(&collect(&pool, 1, LONG)[&before]);
    let grow = submit(&pool, "grow", "100");
    assert_eq!(value(&collect(&pool, 1, LONG)[&grow]), "grown");
    // The tasks after it run on its replacement once that is ready; none fails.
    let deadline = Instant::now() + LONG;
    let mut pid2 = pid1.clone();
    while pid2 == pid1 && Instant::now() < deadline {
        let id = submit(&pool, "pid", "");
        pid2 = value(&collect(&pool, 1, LONG)[&id]);
        std::thread::sleep(Duration::from_millis(10));
    }
    assert_ne!(pid1, pid2, "the worker above the limit was not replaced");
    let s = pool.stats();
    assert_eq!(s.failed(), 0);
    assert!(s.recycled >= 1, "{s:?}");
}

#[test]
fn stopping_with_tasks_queued_fails_them_with_shutdown_and_refuses_new_ones() {
    let pool = Pool::start(config(1)).unwrap();
    let running = submit(&pool, "sleep", "200");
    let queued: Vec<u64> = (0..20).map(|_| submit(&pool, "sleep", "200")).collect();
    let deadline = Instant::now() + LONG;
    while pool.stats().running == 0 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(10));
    }
    pool.stop(true, Duration::from_secs(5)).unwrap();
    let got = collect(&pool, 21, LONG);
    assert_eq!(value(&got[&running]), "slept", "the running task finishes");
    for id in queued {
        assert!(matches!(got[&id].result, Err(TaskError::Shutdown)));
    }
    assert!(matches!(
        pool.submit(Vec::new(), TaskOptions::default()),
        Err(Error::Stopped)
    ));
    assert!(pool.next_outcome(Some(Duration::from_millis(10))).is_none());
}

#[test]
fn a_worker_that_cannot_load_its_tasks_fails_them_with_its_reason_and_is_not_restarted() {
    let mut c = config(2);
    c.cluster
        .env
        .push(("POOL_WORKER_BOOT".into(), "fail".into()));
    let pool = Pool::start(c).unwrap();
    let id = submit(&pool, "echo", "x");
    let got = collect(&pool, 1, LONG);
    match &got[&id].result {
        Err(TaskError::NoWorkers(why)) => {
            assert!(why.contains("SyntaxError: Unexpected token"), "{why}")
        }
        other => panic!("expected NoWorkers, got {other:?}"),
    }
    match pool.submit(Vec::new(), TaskOptions::default()) {
        Err(Error::PoolBroken(why)) => assert!(why.contains("SyntaxError"), "{why}"),
        other => panic!("expected PoolBroken, got {other:?}"),
    }
}

#[test]
fn workers_that_crash_before_they_are_ready_end_the_pool_after_the_restart_limit_naming_the_exit() {
    let mut c = config(1);
    c.cluster
        .env
        .push(("POOL_WORKER_BOOT".into(), "crash".into()));
    c.cluster.restart.max_restarts = 2;
    let pool = Pool::start(c).unwrap();
    let id = submit(&pool, "echo", "x");
    let got = collect(&pool, 1, LONG);
    match &got[&id].result {
        Err(TaskError::NoWorkers(why)) => {
            assert!(why.contains("before it was ready (exit code 1)"), "{why}")
        }
        other => panic!("expected NoWorkers, got {other:?}"),
    }
    assert!(matches!(
        pool.submit(Vec::new(), TaskOptions::default()),
        Err(Error::PoolBroken(_))
    ));
}

#[test]
fn idempotent_tasks_on_a_worker_that_crashed_run_again_and_others_fail_as_crashed() {
    let mut c = config(1);
    c.concurrent_tasks_per_worker = 4;
    let pool = Pool::start(c).unwrap();
    // Ready first, so that the tasks below go out while the worker sleeps.
    submit(&pool, "echo", "");
    collect(&pool, 1, LONG);
    // While the worker sleeps, the three others reach it too; it exits at the first of them,
    // taking the two behind it down.
    let gate = submit(&pool, "sleep", "300");
    let crash = submit(&pool, "exit", "5");
    let again = pool
        .submit(
            b"again".to_vec(),
            TaskOptions {
                name: "echo".into(),
                idempotent: true,
                ..TaskOptions::default()
            },
        )
        .unwrap();
    let plain = submit(&pool, "sleep", "100");
    let got = collect(&pool, 4, LONG);
    assert_eq!(value(&got[&gate]), "slept");
    assert!(matches!(
        got[&crash].result,
        Err(TaskError::Crashed { code: Some(5), .. })
    ));
    // Run again on the replacement.
    assert_eq!(value(&got[&again]), "again");
    assert_eq!(pool.stats().retried, 1);
    // The sleep was behind the exit on the same worker.
    assert!(
        matches!(
            got[&plain].result,
            Err(TaskError::Crashed { code: Some(5), .. })
        ),
        "{:?}",
        got[&plain].result
    );
}

#[test]
fn an_idempotent_task_that_crashes_every_worker_it_runs_on_fails_after_its_second_try() {
    let pool = Pool::start(config(2)).unwrap();
    let id = pool
        .submit(
            b"9".to_vec(),
            TaskOptions {
                name: "exit".into(),
                idempotent: true,
                ..TaskOptions::default()
            },
        )
        .unwrap();
    let got = collect(&pool, 1, LONG);
    assert!(
        matches!(
            got[&id].result,
            Err(TaskError::Crashed { code: Some(9), .. })
        ),
        "{:?}",
        got[&id].result
    );
    let s = pool.stats();
    assert_eq!((s.retried, s.failed_crashed), (1, 1));
}

/// Not a test of behaviour: tiny-task throughput and idle latency of a Rust pool, printed
/// (`cargo nextest run -p rcluster-tests -E 'test(pool_figures)' --no-capture --run-ignored all`).
#[test]
#[ignore]
fn pool_figures() {
    for conc in [1, 32] {
        let mut c = config(2);
        c.concurrent_tasks_per_worker = conc;
        let pool = Pool::start(c).unwrap();
        for _ in 0..2 {
            submit(&pool, "echo", "w");
        }
        collect(&pool, 2, LONG);
        let n = 50_000;
        let t = Instant::now();
        for _ in 0..n {
            submit(&pool, "echo", "x");
        }
        collect(&pool, n, LONG);
        let rate = n as f64 / t.elapsed().as_secs_f64();
        let mut lat = Vec::new();
        for _ in 0..2000 {
            let t = Instant::now();
            submit(&pool, "echo", "x");
            collect(&pool, 1, LONG);
            lat.push(t.elapsed().as_micros());
        }
        lat.sort();
        println!(
            "conc {conc}: {rate:.0} tasks/s; idle p50 {} us p99 {} us",
            lat[1000], lat[1980]
        );
    }
}

/// A worker that answers a task it was not given (the next one, which another worker runs)
/// changes nothing: that task gets its own answer, the liar's own task times out alone, and the
/// pool goes on.
#[test]
fn a_worker_answering_a_task_it_was_not_given_is_ignored_and_only_its_own_task_fails() {
    let pool = Pool::start(config(2)).unwrap();
    let forger = pool
        .submit(
            Vec::new(),
            TaskOptions {
                timeout: Some(Duration::from_millis(300)),
                ..named("forge")
            },
        )
        .unwrap();
    // The forger has its task before the next is submitted, so that the task it names is
    // not one sent ahead to itself.
    std::thread::sleep(Duration::from_millis(200));
    let honest: Vec<u64> = (0..200)
        .map(|i| submit(&pool, "echo", &format!("value {i}")))
        .collect();
    assert_eq!(honest[0], forger + 1, "the forged answer names a real task");
    let got = collect(&pool, 201, LONG);
    for (i, id) in honest.iter().enumerate() {
        assert_eq!(value(&got[id]), format!("value {i}"), "task {id}");
    }
    assert!(
        matches!(got[&forger].result, Err(TaskError::Timeout { .. })),
        "{:?}",
        got[&forger].result.as_ref().err()
    );
    let after = submit(&pool, "echo", "after");
    assert_eq!(value(&collect(&pool, 1, LONG)[&after]), "after");
    pool.stop(true, Duration::from_secs(5)).unwrap();
}

/// Quick tasks first, so that the pool sends several tasks ahead to each worker.
fn warm_up(pool: &Pool) {
    let ids: Vec<u64> = (0..200).map(|_| submit(pool, "echo", "w")).collect();
    collect(pool, ids.len(), LONG);
}

#[test]
fn a_crash_with_tasks_waiting_in_the_worker_fails_only_the_running_task_and_the_others_run_elsewhere(
) {
    let pool = Pool::start(config(1)).unwrap();
    warm_up(&pool);
    // One submit for all, so that they reach the worker in one batch, behind the exit.
    let mut tasks = vec![
        (b"200".to_vec(), named("sleep")),
        (b"7".to_vec(), named("exit")),
    ];
    tasks.extend((0..20).map(|i| (format!("v{i}").into_bytes(), named("echo"))));
    let ids = pool.submit_batch(tasks).unwrap();
    let got = collect(&pool, ids.len(), LONG);
    assert_eq!(value(&got[&ids[0]]), "slept");
    assert!(
        matches!(
            got[&ids[1]].result,
            Err(TaskError::Crashed {
                code: Some(7),
                signal: None,
                ..
            })
        ),
        "{:?}",
        got[&ids[1]].result
    );
    for (i, id) in ids[2..].iter().enumerate() {
        assert_eq!(value(&got[id]), format!("v{i}"));
    }
    let s = pool.stats();
    assert_eq!((s.failed(), s.failed_crashed, s.retried), (1, 1, 0));
    assert!(
        s.requeued >= 1,
        "no task waited in the crashed worker: {s:?}"
    );
}

#[test]
fn a_timeout_of_a_running_task_does_not_fail_the_tasks_waiting_behind_it_in_its_worker() {
    let pool = Pool::start(config(1)).unwrap();
    warm_up(&pool);
    let mut tasks = vec![(
        Vec::new(),
        TaskOptions {
            timeout: Some(Duration::from_millis(300)),
            ..named("spin")
        },
    )];
    tasks.extend((0..20).map(|i| (format!("v{i}").into_bytes(), named("echo"))));
    let ids = pool.submit_batch(tasks).unwrap();
    let got = collect(&pool, ids.len(), LONG);
    assert!(
        matches!(got[&ids[0]].result, Err(TaskError::Timeout { .. })),
        "{:?}",
        got[&ids[0]].result
    );
    for (i, id) in ids[1..].iter().enumerate() {
        assert_eq!(value(&got[id]), format!("v{i}"));
    }
    let s = pool.stats();
    assert_eq!((s.failed(), s.failed_timeout), (1, 1));
    assert!(s.requeued >= 1, "no task waited behind the runaway: {s:?}");
}

#[test]
fn a_task_waiting_in_its_worker_has_its_timeout_counted_from_its_start_not_from_when_it_was_sent() {
    let mut c = config(1);
    c.task_timeout = Some(Duration::from_millis(700));
    let pool = Pool::start(c).unwrap();
    warm_up(&pool);
    // Sent together; each runs 400 ms, the second from when the first is answered, so
    // neither reaches 700 ms of its own, though the second ends 800 ms after it was sent.
    let ids = pool
        .submit_batch([
            (b"400".to_vec(), named("sleep")),
            (b"400".to_vec(), named("sleep")),
        ])
        .unwrap();
    let got = collect(&pool, 2, LONG);
    for id in &ids {
        assert_eq!(value(&got[id]), "slept");
    }
    assert!(
        got[&ids[1]].wait >= Duration::from_millis(350),
        "the second task waited {:?} before it started",
        got[&ids[1]].wait
    );
}

#[test]
fn cancelling_a_task_waiting_in_its_worker_leaves_the_worker_alive() {
    let pool = Pool::start(config(1)).unwrap();
    warm_up(&pool);
    let first = submit(&pool, "pid", "");
    let pid = value(&collect(&pool, 1, LONG)[&first]);
    let ids = pool
        .submit_batch([
            (b"400".to_vec(), named("sleep")),
            (b"x".to_vec(), named("echo")),
            (Vec::new(), named("pid")),
        ])
        .unwrap();
    // The sleep runs; the echo waits behind it in the worker (or still in the queue).
    std::thread::sleep(Duration::from_millis(150));
    pool.cancel(ids[1]);
    let got = collect(&pool, 3, LONG);
    assert!(
        matches!(got[&ids[1]].result, Err(TaskError::Cancelled)),
        "{:?}",
        got[&ids[1]].result
    );
    assert_eq!(value(&got[&ids[0]]), "slept");
    assert_eq!(
        value(&got[&ids[2]]),
        pid,
        "the same worker answers the next task"
    );
    let s = pool.stats();
    assert_eq!(
        (s.failed(), s.failed_cancelled, s.failed_crashed),
        (1, 1, 0)
    );
}

#[test]
fn recycling_after_max_tasks_with_tasks_sent_ahead_fails_none_and_moves_none() {
    let mut c = config(1);
    c.max_tasks_per_worker = Some(5);
    let pool = Pool::start(c).unwrap();
    // Tasks of some length, so that replacements are ready while tasks remain.
    let ids: Vec<u64> = (0..40).map(|_| submit(&pool, "sleep", "20")).collect();
    let got = collect(&pool, ids.len(), LONG);
    for id in &ids {
        assert_eq!(value(&got[id]), "slept");
    }
    let s = pool.stats();
    assert_eq!((s.completed, s.failed(), s.requeued), (40, 0, 0));
    assert!(s.recycled >= 1, "{s:?}");
}

#[test]
fn with_no_tasks_sent_ahead_a_cancelled_task_behind_a_running_one_never_runs() {
    let mut c = config(1);
    c.max_tasks_ahead = 0;
    let pool = Pool::start(c).unwrap();
    warm_up(&pool);
    let first = submit(&pool, "pid", "");
    let pid = value(&collect(&pool, 1, LONG)[&first]);
    let ids = pool
        .submit_batch([
            (b"300".to_vec(), named("sleep")),
            // Would end the worker if it ran.
            (b"9".to_vec(), named("exit")),
            (Vec::new(), named("pid")),
        ])
        .unwrap();
    wait_running(&pool, 1);
    assert!(
        pool.cancel(ids[1]),
        "the task was still in the pool's queue"
    );
    let got = collect(&pool, 3, LONG);
    assert!(matches!(got[&ids[1]].result, Err(TaskError::Cancelled)));
    assert_eq!(value(&got[&ids[2]]), pid);
    let s = pool.stats();
    assert_eq!((s.failed_cancelled, s.failed_crashed), (1, 0));
}

#[test]
fn the_control_socket_status_of_a_pool_carries_its_task_counters() {
    use std::io::{BufRead, BufReader, Write};
    let dir = std::env::temp_dir().join(format!("rcluster-pool-status-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let mut c = config(1);
    c.cluster.name = Some("tasks".into());
    c.cluster.control = rcluster_core::ControlMode::Required;
    c.cluster.control_dir = Some(dir.join("rcluster"));
    let pool = Pool::start(c).unwrap();
    let ids: Vec<u64> = (0..10)
        .map(|i| submit(&pool, "echo", &i.to_string()))
        .collect();
    let failed = submit(&pool, "fail", "no");
    collect(&pool, ids.len() + 1, LONG);
    let _ = failed;

    let s =
        std::os::unix::net::UnixStream::connect(dir.join("rcluster").join("tasks.sock")).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let mut w = s.try_clone().unwrap();
    let mut r = BufReader::new(s);
    let mut line = String::new();
    r.read_line(&mut line).unwrap(); // hello
    w.write_all(b"{\"cmd\":\"status\"}\n").unwrap();
    line.clear();
    r.read_line(&mut line).unwrap();
    let st: serde_json::Value = serde_json::from_str(&line).unwrap();
    let p = &st["status"]["pool"];
    assert_eq!(p["completed"], 10, "{st}");
    assert_eq!(p["failed"], 1, "{st}");
    assert_eq!(p["failed_by_reason"]["error"], 1, "{st}");
    assert_eq!(
        (p["queued"].clone(), p["running"].clone()),
        (0.into(), 0.into())
    );
    assert_eq!(p["workers_ready"], 1, "{st}");
    pool.stop(false, Duration::from_secs(5)).unwrap();
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn a_task_sent_ahead_and_cancelled_never_runs_and_its_worker_stays() {
    let pool = Pool::start(config(1)).unwrap();
    warm_up(&pool);
    let first = submit(&pool, "pid", "");
    let pid = value(&collect(&pool, 1, LONG)[&first]);
    let mark = std::env::temp_dir().join(format!("rcluster-cancelled-{}", std::process::id()));
    let _ = std::fs::remove_file(&mark);
    let ids = pool
        .submit_batch([
            (b"400".to_vec(), named("sleep")),
            // Would leave a file behind if it ran.
            (mark.to_str().unwrap().into(), named("touch")),
            (Vec::new(), named("pid")),
        ])
        .unwrap();
    // The touch waits in the worker behind the sleep.
    wait_running(&pool, 3);
    assert!(
        !pool.cancel(ids[1]),
        "the task was still in the pool's queue"
    );
    let got = collect(&pool, 3, LONG);
    assert_eq!(value(&got[&ids[0]]), "slept");
    assert!(matches!(got[&ids[1]].result, Err(TaskError::Cancelled)));
    assert_eq!(value(&got[&ids[2]]), pid);
    assert!(!mark.exists(), "the cancelled task ran");
    let s = pool.stats();
    assert_eq!(
        (s.failed(), s.failed_cancelled, s.running, s.requeued),
        (1, 1, 0, 0)
    );
}

#[test]
fn a_cancelled_task_its_worker_had_started_delays_the_clock_of_the_task_behind_it_until_its_answer()
{
    let mut c = config(1);
    c.cluster
        .env
        .push(("POOL_WORKER_IGNORE_CANCELS".into(), "1".into()));
    let pool = Pool::start(c).unwrap();
    warm_up(&pool);
    let ids = pool
        .submit_batch([
            (b"300".to_vec(), named("sleep")),
            // Cancelled while it waits; this worker runs it all the same (300 ms to 700 ms).
            (b"400".to_vec(), named("sleep")),
            // Runs from 700 ms to 900 ms: within its timeout counted from its true start, not
            // from the first task's answer (300 ms, which would end it at 800 ms).
            (
                b"200".to_vec(),
                TaskOptions {
                    timeout: Some(Duration::from_millis(500)),
                    ..named("sleep")
                },
            ),
        ])
        .unwrap();
    wait_running(&pool, 3);
    pool.cancel(ids[1]);
    let got = collect(&pool, 3, LONG);
    assert_eq!(value(&got[&ids[0]]), "slept");
    assert!(matches!(got[&ids[1]].result, Err(TaskError::Cancelled)));
    assert_eq!(value(&got[&ids[2]]), "slept");
    let s = pool.stats();
    assert_eq!(
        (s.failed(), s.failed_cancelled, s.failed_timeout, s.running),
        (1, 1, 0, 0)
    );
}

#[test]
fn stopping_with_cancel_queued_fails_the_tasks_waiting_in_a_worker_and_they_never_run() {
    let pool = Pool::start(config(1)).unwrap();
    warm_up(&pool);
    let mark = std::env::temp_dir().join(format!("rcluster-stopped-{}", std::process::id()));
    let _ = std::fs::remove_file(&mark);
    let ids = pool
        .submit_batch([
            (b"300".to_vec(), named("sleep")),
            (mark.to_str().unwrap().into(), named("touch")),
        ])
        .unwrap();
    wait_running(&pool, 2);
    pool.stop(true, Duration::from_secs(5)).unwrap();
    let got = collect(&pool, 2, LONG);
    assert_eq!(value(&got[&ids[0]]), "slept");
    assert!(matches!(got[&ids[1]].result, Err(TaskError::Shutdown)));
    // The worker would have started it right after the sleep, before it was stopped.
    std::thread::sleep(Duration::from_millis(200));
    assert!(!mark.exists(), "a task that failed with shutdown ran");
}
