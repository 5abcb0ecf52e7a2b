//! `rcluster monit NAME`: a live view of a running cluster, refreshed about once a second:
//! per worker its state, CPU (% over the last refresh), memory, connections and restarts.
//! Keys: q (or Esc, Ctrl-C) quits, + and - scale by one, r reloads.

use std::collections::HashMap;
use std::io::IsTerminal;
use std::time::{Duration, Instant};

use ratatui::crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers};
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Color, Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table};
use ratatui::{DefaultTerminal, Frame};
use rcluster_core::Status;
use serde_json::json;

use crate::client::Client;
use crate::verbs::{human_bytes, human_secs, Outcome};

const REFRESH: Duration = Duration::from_secs(1);

pub fn monit(name: &str) -> Outcome {
    if !std::io::stdout().is_terminal() {
        return Err("monit needs a terminal; use `rcluster status NAME --json` in scripts".into());
    }
    let mut client = Client::connect(name)?;
    let mut terminal = ratatui::try_init().map_err(|e| format!("terminal: {e}"))?;
    let result = run(&mut terminal, &mut client, name);
    ratatui::restore();
    result.map(|()| 0)
}

/// CPU seconds of each worker process at the previous refresh, to show a percentage.
struct View {
    status: Option<Status>,
    cpu: HashMap<u32, (f64, Instant)>,
    percent: HashMap<u32, f64>,
    note: String,
}

fn run(terminal: &mut DefaultTerminal, client: &mut Client, name: &str) -> Result<(), String> {
    let mut view = View {
        status: None,
        cpu: HashMap::new(),
        percent: HashMap::new(),
        note: String::new(),
    };
    loop {
        refresh(client, &mut view)?;
        terminal
            .draw(|f| draw(f, &view, name))
            .map_err(|e| format!("terminal: {e}"))?;
        let next = Instant::now() + REFRESH;
        while let Some(left) = next.checked_duration_since(Instant::now()) {
            if !event::poll(left).map_err(|e| format!("terminal: {e}"))? {
                break;
            }
            let Event::Key(k) = event::read().map_err(|e| format!("terminal: {e}"))? else {
                continue;
            };
            if k.kind != KeyEventKind::Press {
                continue;
            }
            let ctrl_c =
                k.code == KeyCode::Char('c') && k.modifiers.contains(KeyModifiers::CONTROL);
            let request = match k.code {
                _ if ctrl_c => return Ok(()),
                KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                KeyCode::Char('+') => json!({"cmd": "scale", "workers": "+1"}),
                KeyCode::Char('-') => json!({"cmd": "scale", "workers": "-1"}),
                KeyCode::Char('r') => json!({"cmd": "reload"}),
                _ => continue,
            };
            view.note = match client.ask(&request) {
                Ok(r) if r.get("generation").is_some() => {
                    // The reload streams its progress on this connection: a fresh one for
                    // the view, so that its events do not stand in for the next status.
                    *client = Client::connect(name)?;
                    format!("reloading to generation {}", r["generation"])
                }
                Ok(r) => format!("scaled {} -> {} workers", r["before"], r["workers"]),
                Err(e) => format!("refused: {e}"),
            };
            break;
        }
    }
}

fn refresh(client: &mut Client, view: &mut View) -> Result<(), String> {
    let reply = client.ask(&json!({"cmd": "status"}))?;
    let st: Status = serde_json::from_value(reply["status"].clone())
        .map_err(|e| format!("status object: {e}"))?;
    let now = Instant::now();
    let mut cpu = HashMap::new();
    for w in st.workers.iter().filter(|w| w.pid != 0) {
        if let Some((before, at)) = view.cpu.get(&w.pid) {
            let dt = now.duration_since(*at).as_secs_f64();
            if dt > 0.0 {
                view.percent
                    .insert(w.pid, (w.cpu_s - before).max(0.0) / dt * 100.0);
            }
        }
        cpu.insert(w.pid, (w.cpu_s, now));
    }
    view.percent.retain(|pid, _| cpu.contains_key(pid));
    view.cpu = cpu;
    view.status = Some(st);
    Ok(())
}

fn draw(f: &mut Frame, view: &View, name: &str) {
    let [head, body, foot] = Layout::vertical([
        Constraint::Length(2),
        Constraint::Min(3),
        Constraint::Length(1),
    ])
    .areas(f.area());
    let Some(st) = &view.status else { return };
    let ready = st.workers.iter().filter(|w| w.state == "ready").count();
    let rss: u64 = st.workers.iter().map(|w| w.rss_bytes).sum();
    let summary = format!(
        "{name}  pid {}  up {}  generation {}  {ready}/{} ready{}  workers' memory {}",
        st.pid,
        human_secs(st.uptime_s),
        st.generation,
        st.workers_desired,
        if st.reloading { "  reloading" } else { "" },
        human_bytes(rss),
    );
    let listeners: Vec<String> = st
        .listeners
        .iter()
        .map(|l| format!("{} ({})", l.address, l.dispatch))
        .collect();
    f.render_widget(
        Paragraph::new(vec![
            Line::from(summary),
            Line::from(format!("listening: {}", listeners.join(", "))),
        ]),
        head,
    );
    let rows = st.workers.iter().map(|w| {
        let colour = match w.state.as_str() {
            "ready" => Color::Green,
            "starting" | "online" => Color::Yellow,
            "draining" => Color::Cyan,
            _ => Color::Red,
        };
        let cpu = view
            .percent
            .get(&w.pid)
            .map_or_else(|| "-".into(), |p| format!("{p:.1}%"));
        Row::new(vec![
            w.slot.to_string(),
            if w.pid == 0 {
                "-".into()
            } else {
                w.pid.to_string()
            },
            w.generation.to_string(),
            w.state.clone(),
            if w.pid == 0 {
                "-".into()
            } else {
                human_secs(w.uptime_s)
            },
            cpu,
            human_bytes(w.rss_bytes),
            format!("{}/{}", w.connections_active, w.connections_total),
            w.restarts.to_string(),
            w.last_exit
                .as_ref()
                .map_or_else(String::new, |e| e.reason.clone()),
        ])
        .style(Style::default().fg(colour))
    });
    let widths = [
        Constraint::Length(5),
        Constraint::Length(8),
        Constraint::Length(4),
        Constraint::Length(9),
        Constraint::Length(8),
        Constraint::Length(7),
        Constraint::Length(9),
        Constraint::Length(11),
        Constraint::Length(9),
        Constraint::Min(10),
    ];
    let header = Row::new(vec![
        "SLOT",
        "PID",
        "GEN",
        "STATE",
        "UPTIME",
        "CPU",
        "MEM",
        "CONNS",
        "RESTARTS",
        "LAST EXIT",
    ])
    .style(Style::default().add_modifier(Modifier::BOLD));
    f.render_widget(
        Table::new(rows, widths)
            .header(header)
            .block(Block::bordered().title(" workers ")),
        body,
    );
    let keys = format!("q quit   + / - scale   r reload   {}", view.note);
    f.render_widget(Paragraph::new(keys), foot);
}
