//! The primary side: a core `Supervisor` and the watcher of its event descriptor.

use std::sync::Arc;
use std::time::Duration;

use napi::bindgen_prelude::*;
use napi::sys;
use napi_derive::napi;
use rcluster_core::{
    Config, ContentType, Dispatch, Event, ListenAddr, Listener, SignalAction, Supervisor,
};

use crate::error::{from_napi, invalid, option_error, to_js};
use crate::message;
use crate::watch::WatchSlot;

/// Options as `lib/options.js` normalised them: durations in milliseconds, unset fields keep
/// the core's defaults.
#[napi(object)]
pub struct NativeOptions {
    pub workers: Option<f64>,
    pub argv: Vec<String>,
    pub env: Vec<Vec<String>>,
    pub cwd: Option<String>,
    pub ready_on: Option<String>,
    pub ready_timeout: Option<f64>,
    pub heartbeat_timeout: Option<f64>,
    pub kill_timeout: Option<f64>,
    pub restart: Option<String>,
    pub backoff_initial: Option<f64>,
    pub backoff_multiplier: Option<f64>,
    pub backoff_max: Option<f64>,
    pub jitter: Option<f64>,
    pub min_uptime: Option<f64>,
    pub max_restarts: Option<f64>,
    pub window: Option<f64>,
    pub no_restart_codes: Option<Vec<f64>>,
    pub max_message: Option<f64>,
    pub send_queue_limit: Option<f64>,
    pub event_queue_limit: Option<f64>,
    pub output: Option<String>,
    pub listeners: Vec<NativeListener>,
    pub max_inflight: Option<f64>,
    pub handoff_window: Option<f64>,
    pub kernel_round_robin: Option<bool>,
    pub strict_turns: Option<bool>,
    pub queue_limit: Option<f64>,
    pub queue_timeout: Option<f64>,
    pub max_surge: Option<f64>,
    /// Milliseconds.
    pub ack_timeout: Option<f64>,
    /// True: no bound on unacknowledged handoffs (`ackTimeout: null`).
    pub no_ack_timeout: Option<bool>,
    /// The cluster's name (its control socket is NAME.sock).
    pub name: Option<String>,
    /// `off`, `on` or `required`.
    pub control: Option<String>,
    /// Bytes of resident memory over which a worker is recycled.
    pub max_memory: Option<f64>,
    /// Connections after which a worker is recycled.
    pub max_requests: Option<f64>,
    pub max_requests_jitter: Option<f64>,
    /// The address of `/metrics`, `/healthz` and `/readyz`.
    pub metrics: Option<String>,
    /// Milliseconds `/readyz` fails before a stop signal's stop begins.
    pub drain_delay: Option<f64>,
    /// Fewest ready workers for `/readyz` to answer 200.
    pub ready_min: Option<f64>,
}

#[napi(object)]
pub struct NativeListener {
    /// None: the core's default name for its place (`listen0`, ...).
    pub name: Option<String>,
    pub address: String,
    pub dispatch: String,
    pub share: bool,
}

/// One event of the cluster; which fields are set depends on `type`.
#[napi(object)]
pub struct NativeEvent {
    #[napi(js_name = "type")]
    pub kind: String,
    pub id: Option<u32>,
    pub pid: Option<u32>,
    pub generation: Option<u32>,
    pub code: Option<i32>,
    pub signal: Option<i32>,
    pub reason: Option<String>,
    pub delay: Option<f64>,
    pub attempt: Option<u32>,
    pub restarts: Option<u32>,
    pub window: Option<f64>,
    pub error: Option<String>,
    pub workers: Option<u32>,
    pub listener: Option<String>,
    /// `output-dropped`: lines and bytes of worker output dropped (numbers: exact up to 2^53).
    pub lines: Option<f64>,
    pub bytes: Option<f64>,
    pub encoding: Option<String>,
    pub data: Option<Either<String, Buffer>>,
}

#[napi(object)]
pub struct NativeWorkerInfo {
    pub id: u32,
    pub pid: u32,
    pub generation: u32,
    pub state: String,
    pub uptime: f64,
    pub restarts: u32,
    pub last_exit_code: Option<i32>,
    pub last_exit_signal: Option<i32>,
    pub last_exit_reason: Option<String>,
}

/// The number of workers a cluster started with no `workers` option runs: one per CPU this
/// process may use (affinity mask and cgroup quota), decided by the core.
#[napi]
pub fn default_workers() -> u32 {
    rcluster_core::default_workers() as u32
}

/// A wait in milliseconds (not an option): a negative one waits not at all.
fn wait_ms(v: f64) -> Duration {
    Duration::from_secs_f64(v.max(0.0) / 1000.0)
}

/// A JS number of milliseconds for a duration field; the core's rule decides what it takes.
fn ms(field: &'static str, v: Option<f64>) -> napi::Result<Option<Duration>, &'static str> {
    v.map(|v| Config::millis(field, v))
        .transpose()
        .map_err(option_error)
}

/// A JS integer (options.js checked that it is one) for an integer field; the core's rule
/// decides its range, negative numbers included.
fn count<T: TryFrom<i128>>(
    field: &'static str,
    v: Option<f64>,
) -> napi::Result<Option<T>, &'static str> {
    v.map(|v| Config::count(field, v as i128))
        .transpose()
        .map_err(option_error)
}

fn build_config(o: NativeOptions) -> napi::Result<Config, &'static str> {
    let mut c = Config::new(o.argv);
    set(&mut c.workers, count("workers", o.workers)?);
    for pair in o.env {
        let [k, v] = <[String; 2]>::try_from(pair).map_err(|p| {
            invalid(format!(
                "options.env entry {p:?} is not a [name, value] pair"
            ))
        })?;
        c.env.push((k.into(), v.into()));
    }
    c.cwd = o.cwd.map(Into::into);
    if let Some(r) = o.ready_on.as_deref() {
        c.ready_on = r.parse().map_err(option_error)?;
    }
    set(&mut c.ready_timeout, ms("ready_timeout", o.ready_timeout)?);
    c.heartbeat_timeout = ms("heartbeat_timeout", o.heartbeat_timeout)?;
    set(&mut c.kill_timeout, ms("kill_timeout", o.kill_timeout)?);
    set(
        &mut c.ack_timeout,
        ms("ack_timeout", o.ack_timeout)?.map(Some),
    );
    if o.no_ack_timeout == Some(true) {
        c.ack_timeout = None;
    }
    if let Some(m) = o.restart.as_deref() {
        c.restart.mode = m.parse().map_err(option_error)?;
    }
    let r = &mut c.restart;
    set(
        &mut r.backoff_initial,
        ms("restart.backoff_initial", o.backoff_initial)?,
    );
    set(&mut r.backoff_multiplier, o.backoff_multiplier);
    set(
        &mut r.backoff_max,
        ms("restart.backoff_max", o.backoff_max)?,
    );
    set(&mut r.jitter, o.jitter);
    set(&mut r.min_uptime, ms("restart.min_uptime", o.min_uptime)?);
    set(
        &mut r.max_restarts,
        count("restart.max_restarts", o.max_restarts)?,
    );
    set(&mut r.window, ms("restart.window", o.window)?);
    if let Some(codes) = o.no_restart_codes {
        r.no_restart_codes = codes
            .into_iter()
            .map(|code| count("restart.no_restart_codes", Some(code)).map(Option::unwrap))
            .collect::<napi::Result<_, _>>()?;
    }
    if let Some(m) = count("max_message", o.max_message)? {
        c.set_max_message(m);
    }
    set(
        &mut c.send_queue_limit,
        count("send_queue_limit", o.send_queue_limit)?,
    );
    set(
        &mut c.event_queue_limit,
        count("event_queue_limit", o.event_queue_limit)?,
    );
    if let Some(out) = o.output.as_deref() {
        c.output = out.parse().map_err(option_error)?;
    }
    for (i, l) in o.listeners.into_iter().enumerate() {
        let addr: ListenAddr = l.address.parse().map_err(to_js)?;
        let dispatch: Dispatch = l.dispatch.parse().map_err(to_js)?;
        let name = l
            .name
            .unwrap_or_else(|| rcluster_core::default_listener_name(i));
        let mut listener = Listener::new(name, addr, dispatch);
        listener.share = l.share;
        c.listeners.push(listener);
    }
    c.max_inflight = count("max_inflight", o.max_inflight)?;
    set(
        &mut c.handoff_window,
        count("handoff_window", o.handoff_window)?,
    );
    set(&mut c.kernel_round_robin, o.kernel_round_robin);
    set(&mut c.strict_turns, o.strict_turns);
    set(&mut c.queue_limit, count("queue_limit", o.queue_limit)?);
    set(&mut c.queue_timeout, ms("queue_timeout", o.queue_timeout)?);
    set(&mut c.max_surge, count("max_surge", o.max_surge)?);
    c.max_memory = count("max_memory", o.max_memory)?;
    c.max_requests = count("max_requests", o.max_requests)?;
    set(
        &mut c.max_requests_jitter,
        count("max_requests_jitter", o.max_requests_jitter)?,
    );
    if let Some(addr) = o.metrics.as_deref() {
        c.metrics = Some(Config::address("metrics", addr).map_err(option_error)?);
    }
    set(&mut c.drain_delay, ms("drain_delay", o.drain_delay)?);
    set(&mut c.ready_min, count("ready_min", o.ready_min)?);
    c.name = o.name;
    if let Some(mode) = o.control {
        c.control = mode
            .parse()
            .map_err(|e| invalid(format!("options.control: {e}")))?;
    }
    Ok(c)
}

fn set<T>(field: &mut T, value: Option<T>) {
    if let Some(v) = value {
        *field = v;
    }
}

fn event(kind: &str) -> NativeEvent {
    NativeEvent {
        kind: kind.to_string(),
        id: None,
        pid: None,
        generation: None,
        code: None,
        signal: None,
        reason: None,
        delay: None,
        attempt: None,
        restarts: None,
        window: None,
        error: None,
        workers: None,
        listener: None,
        lines: None,
        bytes: None,
        encoding: None,
        data: None,
    }
}

fn to_event(ev: Event) -> NativeEvent {
    // Node's events are spelled with dashes, and `spawn` as in the API.
    let kind = match ev.kind() {
        "spawned" => "spawn".to_string(),
        k => k.replace('_', "-"),
    };
    match ev {
        Event::Spawned {
            id,
            pid,
            generation,
        } => NativeEvent {
            id: Some(id),
            pid: Some(pid),
            generation: Some(generation),
            ..event(&kind)
        },
        Event::Online { id, pid } => NativeEvent {
            id: Some(id),
            pid: Some(pid),
            ..event(&kind)
        },
        Event::Ready { id, pid } => NativeEvent {
            id: Some(id),
            pid: Some(pid),
            ..event(&kind)
        },
        Event::Message {
            id,
            pid,
            data,
            content,
        } => {
            let (encoding, data) = message::decode(content, data);
            NativeEvent {
                id: Some(id),
                pid: Some(pid),
                encoding: Some(encoding.to_string()),
                data: Some(data),
                ..event(&kind)
            }
        }
        Event::Exit {
            id,
            generation,
            info,
        } => NativeEvent {
            id: Some(id),
            pid: Some(info.pid),
            generation: Some(generation),
            code: info.code,
            signal: info.signal,
            reason: Some(info.reason.as_str().to_string()),
            ..event(&kind)
        },
        Event::SpawnFailed { id, error } => NativeEvent {
            id: Some(id),
            error: Some(error),
            ..event(&kind)
        },
        Event::Restarting { id, delay, attempt } => NativeEvent {
            id: Some(id),
            delay: Some(delay.as_secs_f64() * 1000.0),
            attempt: Some(attempt),
            ..event(&kind)
        },
        Event::GaveUp {
            id,
            restarts,
            window,
        } => NativeEvent {
            id: Some(id),
            restarts: Some(restarts),
            window: Some(window.as_secs_f64() * 1000.0),
            ..event(&kind)
        },
        Event::AllDown => event("all-down"),
        Event::ProtocolError { id, pid, detail } => NativeEvent {
            id: Some(id),
            pid: Some(pid),
            error: Some(detail),
            ..event(&kind)
        },
        Event::ReloadStarted { generation } => NativeEvent {
            generation: Some(generation),
            ..event(&kind)
        },
        Event::ReloadDone { generation } => NativeEvent {
            generation: Some(generation),
            ..event(&kind)
        },
        Event::ReloadFailed { generation, reason } => NativeEvent {
            generation: Some(generation),
            reason: Some(reason),
            ..event(&kind)
        },
        Event::Scaled { workers } => NativeEvent {
            workers: Some(workers as u32),
            ..event(&kind)
        },
        Event::AcceptPaused { listener, error } => NativeEvent {
            listener: Some(listener),
            error: Some(error),
            ..event(&kind)
        },
        Event::OutputDropped { id, lines, bytes } => NativeEvent {
            id: Some(id),
            lines: Some(lines as f64),
            bytes: Some(bytes as f64),
            ..event(&kind)
        },
        Event::Warning { detail } => NativeEvent {
            error: Some(detail),
            ..event(&kind)
        },
        Event::Recycling { id, pid, reason } => NativeEvent {
            id: Some(id),
            pid: Some(pid),
            reason: Some(reason.as_str().to_string()),
            ..event(&kind)
        },
        // Only pools read task answers; a cluster's host hears who sent one.
        Event::TaskDone { id, pid, .. } => NativeEvent {
            id: Some(id),
            pid: Some(pid),
            ..event(&kind)
        },
    }
}

/// An item of `drain`: a run of JSON messages from one worker process is three items, its
/// `id`, its `pid` and one string of their texts joined by newlines (which JSON never
/// contains unescaped), so that a busy worker costs a few values per wake-up and not an
/// object per message; every other event is an object.
type Item = Either3<u32, String, NativeEvent>;

fn drain(sup: &Supervisor, max: usize) -> Vec<Item> {
    let mut out = Vec::new();
    // The worker process of the run being built, and its texts.
    let mut run: Option<(u32, u32)> = None;
    let mut texts = String::new();
    let end_run = |out: &mut Vec<Item>, run: &mut Option<(u32, u32)>, texts: &mut String| {
        if let Some((id, pid)) = run.take() {
            let texts = std::mem::take(texts);
            out.extend([Either3::A(id), Either3::A(pid), Either3::B(texts)]);
        }
    };
    let mut taken = 0;
    while taken < max {
        let Some(ev) = sup.try_next_event() else {
            break;
        };
        taken += 1;
        if let Event::Message {
            id,
            pid,
            data,
            content,
        } = &ev
        {
            if run != Some((*id, *pid)) {
                end_run(&mut out, &mut run, &mut texts);
            }
            if message::push_json(&mut texts, *content, data) {
                run = Some((*id, *pid));
                continue;
            }
        }
        end_run(&mut out, &mut run, &mut texts);
        out.push(Either3::C(to_event(ev)));
    }
    end_run(&mut out, &mut run, &mut texts);
    if taken == max {
        // Stopped short: more may be waiting.
        out.push(Either3::C(event("more")));
    }
    out
}

/// What the core did with a signal (`Supervisor::on_signal`): `action` is `stop`, `kill`,
/// `reload`, `scale` or `ignored`, with the field that goes with it.
#[napi(object)]
pub struct NativeSignalAction {
    pub action: String,
    pub kill_timeout: Option<f64>,
    pub generation: Option<u32>,
    pub workers: Option<u32>,
    pub reason: Option<String>,
}

fn to_signal_action(a: SignalAction) -> NativeSignalAction {
    let mut out = NativeSignalAction {
        action: String::new(),
        kill_timeout: None,
        generation: None,
        workers: None,
        reason: None,
    };
    out.action = match a {
        SignalAction::Stop { kill_timeout } => {
            out.kill_timeout = Some(kill_timeout.as_secs_f64() * 1000.0);
            "stop"
        }
        SignalAction::Kill => "kill",
        SignalAction::Reload { generation } => {
            out.generation = Some(generation);
            "reload"
        }
        SignalAction::Scale { workers } => {
            out.workers = Some(workers as u32);
            "scale"
        }
        SignalAction::Ignored(why) => {
            out.reason = Some(why.to_string());
            "ignored"
        }
    }
    .to_string();
    out
}

/// A running supervisor (the primary side of a cluster).
#[napi]
pub struct NativeSupervisor {
    inner: Arc<Supervisor>,
    watcher: WatchSlot,
}

#[napi]
impl NativeSupervisor {
    #[napi(constructor)]
    pub fn new(options: NativeOptions) -> napi::Result<Self, &'static str> {
        let config = build_config(options)?;
        let inner = Supervisor::start(config).map_err(option_error)?;
        Ok(NativeSupervisor {
            inner: Arc::new(inner),
            watcher: WatchSlot::default(),
        })
    }

    /// Sends a message of content type `content` (a `codec.CONTENT` number) to worker `id`.
    #[napi]
    pub fn send(
        &self,
        id: u32,
        content: u32,
        data: Either<String, Buffer>,
    ) -> napi::Result<(), &'static str> {
        let content = message::content(content)?;
        self.inner
            .send_as(id, content, message::bytes(&data))
            .map_err(to_js)
    }

    /// The largest message body in bytes.
    #[napi(getter)]
    pub fn max_message(&self) -> f64 {
        self.inner.max_message() as f64
    }

    /// Sends JSON messages to worker `id` in one batch: their texts joined by newlines.
    #[napi]
    pub fn send_json(&self, id: u32, joined: String) -> napi::Result<(), &'static str> {
        self.inner
            .send_many_as(id, ContentType::Json, &message::json_batch(&joined))
            .map_err(to_js)
    }

    /// Sends a message of content type `content` to every live worker; returns how many it
    /// was queued for.
    #[napi]
    pub fn broadcast(
        &self,
        content: u32,
        data: Either<String, Buffer>,
    ) -> napi::Result<u32, &'static str> {
        let content = message::content(content)?;
        self.inner
            .broadcast_as(content, message::bytes(&data))
            .map(|n| n as u32)
            .map_err(to_js)
    }

    #[napi]
    pub fn snapshot(&self) -> napi::Result<Vec<NativeWorkerInfo>, &'static str> {
        let list = self.inner.snapshot().map_err(to_js)?;
        Ok(list
            .into_iter()
            .map(|w| NativeWorkerInfo {
                id: w.id,
                pid: w.pid,
                generation: w.generation,
                state: w.state.as_str().to_string(),
                uptime: w.uptime.as_secs_f64() * 1000.0,
                restarts: w.restarts,
                last_exit_code: w.last_exit.and_then(|e| e.code),
                last_exit_signal: w.last_exit.and_then(|e| e.signal),
                last_exit_reason: w.last_exit.map(|e| e.reason.as_str().to_string()),
            })
            .collect())
    }

    #[napi]
    pub fn scale(&self, workers: f64) -> napi::Result<(), &'static str> {
        let workers = Config::count("workers", workers as i128).map_err(to_js)?;
        self.inner.scale(workers).map_err(to_js)
    }

    /// Adds `delta` worker slots (removes them if negative) within 1..=4096, counted by the
    /// core; returns [before, after].
    #[napi]
    pub fn scale_by(&self, delta: i32) -> napi::Result<Vec<u32>, &'static str> {
        let (before, after) = self.inner.scale_by(delta as isize).map_err(to_js)?;
        Ok(vec![before as u32, after as u32])
    }

    #[napi]
    pub fn restart_worker(&self, id: u32) -> napi::Result<(), &'static str> {
        self.inner.restart_worker(id).map_err(to_js)
    }

    /// Sends a signal (a number) to worker `id` through the core, which records it: the exit
    /// that follows is `requested`, and a pid the core has reaped is never signalled.
    #[napi]
    pub fn kill(&self, id: u32, signal: i32) -> napi::Result<(), &'static str> {
        self.inner.kill(id, signal).map_err(to_js)
    }

    /// Starts a rolling reload; returns the new generation.
    #[napi]
    pub fn reload(&self) -> napi::Result<u32, &'static str> {
        self.inner.reload().map_err(to_js)
    }

    /// Hands a signal the process received to the core, which decides what it means
    /// (the `rcluster` command's mapping); never blocks for a stop.
    #[napi]
    pub fn on_signal(&self, signo: i32) -> napi::Result<NativeSignalAction, &'static str> {
        self.inner
            .on_signal(signo)
            .map(to_signal_action)
            .map_err(to_js)
    }

    /// Stops every worker off the JS thread; the promise resolves once all are reaped.
    #[napi]
    pub fn stop(&self, timeout_ms: f64) -> AsyncTask<StopTask> {
        AsyncTask::new(StopTask {
            sup: Arc::clone(&self.inner),
            timeout: wait_ms(timeout_ms),
        })
    }

    /// The status object as JSON, read off the JS thread.
    #[napi]
    pub fn status_json(&self) -> AsyncTask<StatusTask> {
        AsyncTask::new(StatusTask {
            sup: Arc::clone(&self.inner),
        })
    }

    /// Waits up to `timeout_ms` for the next event, blocking the JS thread: only for the
    /// short, synchronous waits of `cluster.fork()` (the spawn takes a millisecond or two).
    #[napi]
    pub fn next_event(&self, timeout_ms: f64) -> Option<NativeEvent> {
        self.inner
            .next_event(Some(wait_ms(timeout_ms)))
            .map(to_event)
    }

    /// Every waiting event, up to `max` (then a last item of type `more`); see [`Item`].
    #[napi(ts_return_type = "Array<number | string | NativeEvent>")]
    pub fn drain(&self, max: u32) -> Vec<Item> {
        drain(&self.inner, max as usize)
    }

    /// Calls `callback` on the JS thread with the waiting events (up to [`message::BATCH`], as
    /// `drain` returns them) whenever some wait.
    #[napi(ts_args_type = "callback: (items: Array<number | string | NativeEvent>) => void")]
    pub fn watch(
        &mut self,
        env: Env,
        callback: Function<'_, sys::napi_value, ()>,
    ) -> napi::Result<(), &'static str> {
        let fd = self.inner.event_fd();
        let sup = Arc::clone(&self.inner);
        let produce = Box::new(move |env| {
            // SAFETY: called on the JS thread with its live env.
            unsafe { Vec::to_napi_value(env, drain(&sup, message::BATCH)) }
                .map(Some)
                .map_err(from_napi)
        });
        self.watcher
            .start(&env, fd, callback, produce, "rcluster:primary", false)
            .map_err(from_napi)
    }

    /// Whether the watcher keeps the process alive.
    #[napi]
    pub fn set_ref(&self, keep_alive: bool) {
        self.watcher.set_ref(keep_alive);
    }

    #[napi]
    pub fn unwatch(&mut self) {
        self.watcher.close();
    }

    #[napi]
    pub fn is_stopped(&self) -> bool {
        self.inner.is_stopped()
    }

    /// Each configured listener's name and actual address (a port 0 resolved).
    #[napi]
    pub fn listeners(&self) -> Vec<Vec<String>> {
        self.inner
            .listeners()
            .iter()
            .map(|(name, addr)| vec![name.clone(), addr.to_string()])
            .collect()
    }
}

pub struct StatusTask {
    sup: Arc<Supervisor>,
}

impl Task for StatusTask {
    type Output = String;
    type JsValue = String;

    fn compute(&mut self) -> Result<String> {
        self.sup
            .status()
            .map(|s| s.to_json())
            .map_err(|e| Error::new(Status::GenericFailure, e.to_string()))
    }

    fn resolve(&mut self, _env: Env, output: String) -> Result<String> {
        Ok(output)
    }
}

pub struct StopTask {
    sup: Arc<Supervisor>,
    timeout: Duration,
}

impl Task for StopTask {
    type Output = ();
    type JsValue = ();

    fn compute(&mut self) -> Result<()> {
        self.sup
            .stop(self.timeout)
            .map_err(|e| Error::new(Status::GenericFailure, e.to_string()))
    }

    fn resolve(&mut self, _env: Env, _output: ()) -> Result<()> {
        Ok(())
    }
}
