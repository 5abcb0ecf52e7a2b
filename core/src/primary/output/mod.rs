//! The loop's side of worker output (`Output::Prefix`): reading the pipes, the pipes that
//! descendants of a reaped worker still hold, and reports of dropped output.

pub(crate) mod pipe;

use std::collections::BTreeMap;
use std::io;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use crate::events::Event;
use crate::primary::Primary;
use pipe::{Dropped, PrefixPipe, Sink};

/// Most reaped workers whose pipes are kept open for their descendants; beyond it the oldest
/// are closed (their descendants then get EPIPE on their next write).
const MAX_ORPHANS: usize = 64;
/// Dropped output is reported at most this often.
const REPORT_EVERY: Duration = Duration::from_secs(1);
/// How long a stopping supervisor waits for the host's stdout to take what is queued.
const CLOSE_GRACE: Duration = Duration::from_secs(1);

pub(super) struct Outputs {
    sink: Option<Sink>,
    /// Pipes of reaped workers that a descendant (e.g. one that called setsid) still holds:
    /// read until EOF like any other, by the key of the worker they came from.
    orphans: BTreeMap<u64, [Option<PrefixPipe>; 2]>,
    /// When to look for dropped output next.
    pub report_at: Option<Instant>,
    last_report: Option<Instant>,
}

impl Outputs {
    /// With `prefix`, starts the thread that writes worker output to the host's stdout/stderr.
    pub fn new(prefix: bool) -> io::Result<Outputs> {
        Ok(Outputs {
            sink: if prefix { Some(Sink::start()?) } else { None },
            orphans: BTreeMap::new(),
            report_at: None,
            last_report: None,
        })
    }
}

impl Drop for Outputs {
    fn drop(&mut self) {
        // A loop that ended early (a panic) must not leave the output thread waiting.
        if let Some(sink) = &self.sink {
            sink.close(Duration::ZERO);
        }
    }
}

impl Primary {
    /// Reads worker `key`'s stdout (`which` 0) or stderr (1), live or reaped.
    pub(super) fn pump_output(&mut self, key: u64, which: usize) {
        let Some(sink) = self.outputs.sink.clone() else {
            return;
        };
        let pipes = match self.procs.get_mut(&key) {
            Some(p) => &mut p.pipes,
            None => match self.outputs.orphans.get_mut(&key) {
                Some(pipes) => pipes,
                None => return,
            },
        };
        let Some(pipe) = pipes[which].as_mut() else {
            return;
        };
        if !pipe.pump(&sink) {
            pipe.finish(&sink);
            self.epoll.delete(pipe.fd.as_raw_fd());
            pipes[which] = None;
            if pipes.iter().all(Option::is_none) {
                self.outputs.orphans.remove(&key);
            }
        }
        self.arm_output_report();
    }

    /// The pipes of reaped worker `key`: what is in them is read now; those a descendant
    /// still holds open stay watched until EOF, without waiting for it here.
    pub(super) fn release_pipes(&mut self, key: u64, mut pipes: [Option<PrefixPipe>; 2]) {
        let Some(sink) = self.outputs.sink.clone() else {
            return;
        };
        for slot in pipes.iter_mut() {
            if let Some(pipe) = slot.as_mut() {
                if !pipe.pump(&sink) {
                    pipe.finish(&sink);
                    self.epoll.delete(pipe.fd.as_raw_fd());
                    *slot = None;
                }
            }
        }
        self.arm_output_report();
        if pipes.iter().any(Option::is_some) {
            self.outputs.orphans.insert(key, pipes);
        }
        while self.outputs.orphans.len() > MAX_ORPHANS {
            if let Some((_, pipes)) = self.outputs.orphans.pop_first() {
                self.close_pipes(pipes, &sink);
            }
        }
    }

    fn close_pipes(&mut self, pipes: [Option<PrefixPipe>; 2], sink: &Sink) {
        for mut pipe in pipes.into_iter().flatten() {
            pipe.pump(sink);
            pipe.finish(sink);
            self.epoll.delete(pipe.fd.as_raw_fd());
        }
    }

    fn arm_output_report(&mut self) {
        if self.outputs.report_at.is_none() {
            let now = self.clock.now();
            let due = self.outputs.last_report.map_or(now, |t| t + REPORT_EVERY);
            self.outputs.report_at = Some(due.max(now));
        }
    }

    /// Reports output dropped since the last report, at most once per `REPORT_EVERY`, and
    /// looks again later while output is still on its way to the host.
    pub(super) fn report_output(&mut self, now: Instant) {
        if self.outputs.report_at.is_none_or(|t| now < t) {
            return;
        }
        let Some(sink) = self.outputs.sink.clone() else {
            self.outputs.report_at = None;
            return;
        };
        self.outputs.report_at = None;
        let dropped = sink.take_dropped();
        if !dropped.is_empty() {
            self.outputs.last_report = Some(now);
            self.push_dropped(dropped);
        }
        if sink.busy() {
            self.outputs.report_at = Some(now + REPORT_EVERY);
        }
    }

    fn push_dropped(&mut self, dropped: Dropped) {
        for (id, (lines, bytes)) in dropped {
            self.out.push(Event::OutputDropped { id, lines, bytes });
        }
    }

    /// Last act of a stopping loop: reads and closes the pipes descendants still hold, gives
    /// the host's stdout a moment to take what is queued, and reports what was dropped.
    pub(super) fn close_output(&mut self) {
        let Some(sink) = self.outputs.sink.clone() else {
            return;
        };
        let orphans = std::mem::take(&mut self.outputs.orphans);
        for pipes in orphans.into_values() {
            self.close_pipes(pipes, &sink);
        }
        let dropped = sink.close(CLOSE_GRACE);
        self.outputs.report_at = None;
        self.push_dropped(dropped);
    }
}
