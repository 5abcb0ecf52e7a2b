//! What the control server does for each request, and the streams (events, a reload's
//! progress, log lines) it feeds every turn.

use serde_json::{json, Value};

use super::client::{set_mode, Mode};
use super::request::{self, Request, Scale};
use super::Control;
use crate::error::{Error, Result};
use crate::events::Event;
use crate::primary::Primary;

impl Primary {
    pub(super) fn control_request(&mut self, c: &mut Control, id: u64, line: &[u8]) {
        // A request may change what is wanted: the loop reconciles after it.
        self.changed = true;
        let req = match request::parse(line) {
            Ok(r) => r,
            Err(why) => return self.send_client(c, id, &json!({"ok": false, "error": why})),
        };
        let reply = match req {
            Request::Status => {
                self.harvest_turns();
                let st = self.status();
                // Written straight from the struct: no tree of values for a large status.
                let line = format!("{{\"ok\":true,\"status\":{}}}", st.to_json());
                return self.send_line(c, id, line);
            }
            Request::Reload => match self.start_reload() {
                Ok(generation) => {
                    set_mode(c, id, Mode::Reload(generation));
                    json!({"ok": true, "generation": generation})
                }
                Err(e) => json!({"ok": false, "error": e.to_string()}),
            },
            Request::Scale(s) => {
                let reply = self.control_scale(s);
                if let Some(tap) = &c.logs {
                    tap.lock().unwrap().retain_slots(self.desired);
                }
                reply
            }
            Request::Restart(slot) => result(self.restart(slot), json!({"slot": slot})),
            Request::Signal(slot, sig) => {
                let r = if (1..=64).contains(&sig) {
                    self.kill(slot, sig)
                } else {
                    Err(Error::config(
                        "signal",
                        sig,
                        "must be a signal number from 1 to 64",
                    ))
                };
                result(r, json!({"slot": slot, "signal": sig}))
            }
            Request::Stop => {
                self.begin_stop(self.cfg.kill_timeout);
                json!({"ok": true, "stopping": true})
            }
            Request::Events => {
                set_mode(c, id, Mode::Events);
                json!({"ok": true, "streaming": "events"})
            }
            Request::Logs { lines, follow } => return self.control_logs(c, id, lines, follow),
            // The text of `/metrics`, whether or not the HTTP server runs.
            Request::Metrics => json!({"ok": true, "metrics": self.render_metrics()}),
        };
        self.send_client(c, id, &reply);
    }

    pub(super) fn control_scale(&mut self, s: Scale) -> Value {
        let before = self.desired;
        let r = match s {
            Scale::To(n) if n == 0 || n > crate::config::MAX_WORKERS => Err(Error::config(
                "workers",
                n,
                format!("must be 1..={}", crate::config::MAX_WORKERS),
            )),
            Scale::To(n) => self.scale(n),
            Scale::By(d) => self.scale_by(d).map(|_| ()),
        };
        result(r, json!({"before": before, "workers": self.desired}))
    }

    pub(super) fn control_logs(&mut self, c: &mut Control, id: u64, lines: usize, follow: bool) {
        let Some(tap) = c.logs.clone() else {
            let why = "worker output is not kept: the cluster does not read it \
                       (start it with output = prefix, `rcluster run --prefix-output`)";
            return self.send_client(c, id, &json!({"ok": false, "error": why}));
        };
        // Lines that came this turn go to the followers first, so that the history below
        // and the stream after it neither repeat nor miss one.
        self.forward_logs(c);
        let history = tap.lock().unwrap().history(lines);
        self.send_client(c, id, &json!({"ok": true, "follow": follow}));
        for l in &history {
            self.send_client(c, id, &request::line_json(l));
        }
        if follow {
            set_mode(c, id, Mode::Follow);
        } else {
            self.send_client(c, id, &json!({"ok": true, "end": true}));
        }
    }

    /// Called every turn, before the events go to the host: passes them (and new log lines)
    /// to the clients that stream.
    pub(in crate::primary) fn control_tick(&mut self) {
        let Some(mut c) = self.control.take() else {
            return;
        };
        if std::mem::take(&mut c.backlog) {
            let ids: Vec<u64> = c.clients.keys().copied().collect();
            for id in ids {
                self.serve_requests(&mut c, id);
            }
        }
        if c.clients
            .values()
            .any(|cl| matches!(cl.mode, Mode::Events | Mode::Reload(_)))
        {
            let events: Vec<(Value, Option<ReloadEnd>)> = self
                .out
                .iter()
                .filter_map(|ev| {
                    let end = match ev {
                        Event::ReloadDone { generation } => Some((*generation, None)),
                        Event::ReloadFailed { generation, reason } => {
                            Some((*generation, Some(reason.clone())))
                        }
                        _ => None,
                    };
                    request::event_json(ev).map(|v| (v, end))
                })
                .collect();
            for (v, end) in &events {
                self.stream_event(&mut c, v, end.as_ref());
            }
        }
        // Without followers, lines are not looked at here: the first follower catches up
        // through `forward_logs` when it asks.
        if c.clients.values().any(|cl| cl.mode == Mode::Follow) {
            self.forward_logs(&mut c);
        }
        self.control = Some(c);
    }

    pub(super) fn stream_event(&mut self, c: &mut Control, v: &Value, end: Option<&ReloadEnd>) {
        let ids: Vec<(u64, Mode)> = c
            .clients
            .iter()
            .filter(|(_, cl)| matches!(cl.mode, Mode::Events | Mode::Reload(_)))
            .map(|(id, cl)| (*id, cl.mode))
            .collect();
        for (id, mode) in ids {
            self.send_client(c, id, v);
            let Mode::Reload(g) = mode else { continue };
            let Some((generation, failed)) = end.filter(|(generation, _)| *generation == g) else {
                continue;
            };
            let outcome = match failed {
                None => {
                    json!({"ok": true, "done": true, "outcome": "done", "generation": generation})
                }
                Some(reason) => json!({
                    "ok": false, "done": true, "outcome": "rolled_back",
                    "generation": generation, "error": reason,
                }),
            };
            self.send_client(c, id, &outcome);
            set_mode(c, id, Mode::Idle);
        }
    }

    pub(super) fn forward_logs(&mut self, c: &mut Control) {
        let Some(tap) = c.logs.clone() else { return };
        let (lines, lost, next) = {
            let ring = tap.lock().unwrap();
            if ring.next_seq() == c.log_sent {
                return;
            }
            let (lines, lost) = ring.since(c.log_sent);
            (lines, lost, ring.next_seq())
        };
        c.log_sent = next;
        let ids: Vec<u64> = c
            .clients
            .iter()
            .filter(|(_, cl)| cl.mode == Mode::Follow)
            .map(|(id, _)| *id)
            .collect();
        for id in ids {
            if lost > 0 {
                self.send_client(c, id, &json!({"lost": lost}));
            }
            for l in &lines {
                self.send_client(c, id, &request::line_json(l));
            }
        }
    }
}

/// A reload ended: its generation, and why it failed if it did.
type ReloadEnd = (u32, Option<String>);

fn result(r: Result<()>, mut ok: Value) -> Value {
    match r {
        Ok(()) => {
            ok["ok"] = Value::Bool(true);
            ok
        }
        Err(e) => json!({"ok": false, "error": e.to_string()}),
    }
}
