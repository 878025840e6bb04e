//! The live training dashboard of `quill train --dashboard`: its state, its drawing (pure,
//! onto any ratatui backend), the hook that connects it to [`crate::train::Trainer::run`],
//! and the UI loop.
//!
//! Threads: training runs on the caller's thread and calls [`TrainHook::on_event`] for every
//! event; the hook forwards a copy over a channel and answers with the [`Control`] the user
//! asked for (pause = the hook blocks until resumed). The UI thread runs [`run_ui`]: it applies
//! the events to a [`DashboardState`], turns keys into [`Controls`] requests, generates samples
//! from the weights it is sent, and redraws at most once per frame interval (10 per second by
//! default), never per step, so training speed is unaffected.
//!
//! Samples come from the *current* weights: every `sample_every` steps the hook asks the
//! trainer for a copy of its weights ([`Control::Weights`]) and hands it to the UI, which
//! samples at each of a few temperatures ([`generate_samples`]); nothing goes through disk.
//!
//! Nothing here writes to stdout or stderr: the caller owns the terminal.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::mpsc::{Receiver, Sender, TryRecvError};
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use crossterm::event::{KeyCode, KeyEvent, KeyEventKind, KeyModifiers};
use ratatui::backend::Backend;
use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Style, Stylize};
use ratatui::symbols::{self, Marker};
use ratatui::text::{Line, Span};
use ratatui::widgets::{
    Axis, Block, Chart, Dataset, GraphType, LineGauge, Paragraph, Sparkline, Wrap,
};
use ratatui::{Frame, Terminal};

use crate::error::{Error, Result};
use crate::generate::batch::{self, GenConfig, SampleSpec};
use crate::generate::SamplingParams;
use crate::nn::model::Model;
use crate::tokenizer::Tokenizer;
use crate::train::metrics::RunMetrics;

use super::limits::TEMP_MAX;
use crate::train::{Control, Event, StepInfo};

/// Recent gradient norms kept for the sparkline.
const GRAD_HISTORY: usize = 240;

/// A (step, value) series bounded to `cap` points: each stored point is the mean of `bucket`
/// consecutive pushes; when the series is full, neighbouring pairs merge and `bucket` doubles.
/// Memory and drawing cost stay constant however long training runs.
#[derive(Clone, Debug, PartialEq)]
pub struct Series {
    points: Vec<(f64, f64)>,
    cap: usize,
    bucket: usize,
    acc: (f64, f64, usize),
}

impl Series {
    /// An empty series of at most `cap` points (rounded up to an even number >= 2).
    pub fn new(cap: usize) -> Self {
        Series {
            points: Vec::new(),
            cap: cap.max(2).next_multiple_of(2),
            bucket: 1,
            acc: (0.0, 0.0, 0),
        }
    }

    /// Adds a point.
    pub fn push(&mut self, x: f64, y: f64) {
        self.acc.0 += x;
        self.acc.1 += y;
        self.acc.2 += 1;
        if self.acc.2 >= self.bucket {
            let n = self.acc.2 as f64;
            self.points.push((self.acc.0 / n, self.acc.1 / n));
            self.acc = (0.0, 0.0, 0);
            if self.points.len() >= self.cap {
                self.points = self
                    .points
                    .chunks(2)
                    .map(|c| {
                        let n = c.len() as f64;
                        (
                            c.iter().map(|p| p.0).sum::<f64>() / n,
                            c.iter().map(|p| p.1).sum::<f64>() / n,
                        )
                    })
                    .collect();
                self.bucket *= 2;
            }
        }
    }

    /// The points, the mean of a partly filled last bucket included.
    pub fn points(&self) -> Vec<(f64, f64)> {
        let mut v = self.points.clone();
        if self.acc.2 > 0 {
            let n = self.acc.2 as f64;
            v.push((self.acc.0 / n, self.acc.1 / n));
        }
        v
    }

    /// Pushes averaged into each stored point.
    pub fn bucket(&self) -> usize {
        self.bucket
    }

    /// Whether nothing was pushed.
    pub fn is_empty(&self) -> bool {
        self.points.is_empty() && self.acc.2 == 0
    }
}

/// Averages consecutive points so that at most `max` remain.
fn thin(points: &[(f64, f64)], max: usize) -> Vec<(f64, f64)> {
    let max = max.max(2);
    if points.len() <= max {
        return points.to_vec();
    }
    let group = points.len().div_ceil(max);
    points
        .chunks(group)
        .map(|c| {
            let n = c.len() as f64;
            (
                c.iter().map(|p| p.0).sum::<f64>() / n,
                c.iter().map(|p| p.1).sum::<f64>() / n,
            )
        })
        .collect()
}

/// A generated sample shown in one pane.
#[derive(Clone, Debug, PartialEq)]
pub struct SampleText {
    /// Step of the weights it came from.
    pub step: u64,
    /// Temperature it was sampled at.
    pub temperature: f32,
    /// The text.
    pub text: String,
}

/// What a key asks for.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum Action {
    /// Pause (`true`) or resume (`false`) training.
    Pause(bool),
    /// Write `NAME-latest` now.
    SaveNow,
    /// Take a sample from the current weights now.
    SampleNow,
    /// A temperature changed: sample again from the same weights.
    Resample,
    /// Stop training (it validates and saves first).
    Quit,
    /// Ctrl-C: like [`Action::Quit`] the first time; the caller exits at once the second.
    Interrupt,
    /// Only the screen changed (e.g. another sample pane selected).
    Redraw,
}

/// Everything the dashboard shows, updated from training events and keys.
#[derive(Clone, Debug)]
pub struct DashboardState {
    /// Run name (checkpoint prefix).
    pub name: String,
    /// Parameter count (from [`Event::Start`]).
    pub params: usize,
    /// Windows per epoch.
    pub windows_per_epoch: usize,
    /// Planned total steps, when known.
    pub planned_steps: Option<u64>,
    /// The latest step's figures.
    pub last: Option<StepInfo>,
    /// Exponential moving average of the training loss (about 20 steps).
    pub smoothed_loss: Option<f64>,
    /// Training loss per step (bounded, averaged).
    pub train: Series,
    /// (step, validation loss) at each validation.
    pub val: Vec<(f64, f64)>,
    /// Best validation loss.
    pub best_val: Option<f64>,
    /// Recent gradient norms.
    pub grad_norms: VecDeque<f64>,
    /// Sample temperatures, one pane each.
    pub temperatures: Vec<f32>,
    /// The pane whose temperature the keys change.
    pub selected: usize,
    /// Latest sample of each pane.
    pub samples: Vec<Option<SampleText>>,
    /// Steps between samples (0: only on request).
    pub sample_every: u64,
    /// Training is paused.
    pub paused: bool,
    /// A stop was asked for; training is validating and saving.
    pub stopping: bool,
    /// Last status message (saves, warnings).
    pub status: String,
    /// Whether `status` is a warning.
    pub status_is_warning: bool,
    /// (progress, elapsed seconds) at this run's first step, for the ETA.
    run_origin: Option<(f64, f64)>,
    /// Seconds spent paused in this run.
    paused_secs: f64,
}

impl DashboardState {
    /// A fresh state; `temperatures` must not be empty (an empty list gets 0.8).
    pub fn new(name: &str, temperatures: &[f32], sample_every: u64) -> Self {
        let temperatures = if temperatures.is_empty() {
            vec![0.8]
        } else {
            temperatures
                .iter()
                .map(|t| {
                    if t.is_finite() {
                        t.clamp(0.0, TEMP_MAX)
                    } else {
                        0.8
                    }
                })
                .collect()
        };
        DashboardState {
            name: name.to_string(),
            params: 0,
            windows_per_epoch: 0,
            planned_steps: None,
            last: None,
            smoothed_loss: None,
            train: Series::new(1024),
            val: Vec::new(),
            best_val: None,
            grad_norms: VecDeque::with_capacity(GRAD_HISTORY),
            samples: vec![None; temperatures.len()],
            temperatures,
            selected: 0,
            sample_every,
            paused: false,
            stopping: false,
            status: String::new(),
            status_is_warning: false,
            run_origin: None,
            paused_secs: 0.0,
        }
    }

    /// Fills the loss charts with what earlier runs logged (when resuming).
    pub fn load_history(&mut self, m: &RunMetrics) {
        for r in &m.train {
            self.train.push(r.step as f64, r.loss);
        }
        self.val = m.val_points();
        self.best_val = self.val.iter().map(|p| p.1).reduce(f64::min);
    }

    fn set_status(&mut self, msg: String, warning: bool) {
        self.status = msg;
        self.status_is_warning = warning;
    }

    /// Applies a training event.
    pub fn apply(&mut self, e: &Event) {
        match e {
            Event::Start {
                params,
                windows_per_epoch,
                start_step,
                planned_steps,
                ..
            } => {
                self.params = *params;
                self.windows_per_epoch = *windows_per_epoch;
                self.planned_steps = *planned_steps;
                let msg = if *start_step > 0 {
                    format!("resumed at step {start_step}")
                } else {
                    "training started".to_string()
                };
                self.set_status(msg, false);
            }
            Event::Step(s) => {
                if s.loss.is_finite() {
                    self.smoothed_loss = Some(
                        self.smoothed_loss
                            .map_or(s.loss, |m| 0.95 * m + 0.05 * s.loss),
                    );
                    self.train.push(s.step as f64, s.loss);
                }
                if self.grad_norms.len() == GRAD_HISTORY {
                    self.grad_norms.pop_front();
                }
                self.grad_norms.push_back(s.grad_norm);
                if self.run_origin.is_none() {
                    self.run_origin = Some((s.progress.unwrap_or(0.0), s.elapsed_secs));
                }
                self.last = Some(s.clone());
            }
            Event::Eval {
                step,
                val_loss,
                best,
            } => {
                self.val.retain(|p| p.0 < *step as f64);
                self.val.push((*step as f64, *val_loss));
                if *best {
                    self.best_val = Some(*val_loss);
                }
                self.set_status(
                    format!(
                        "step {step}: val loss {val_loss:.4}{}",
                        if *best { " (best)" } else { "" }
                    ),
                    false,
                );
            }
            Event::Saved { path } => {
                let file = path
                    .file_name()
                    .map(|f| f.to_string_lossy().into_owned())
                    .unwrap_or_default();
                let step = self.last.as_ref().map_or(0, |s| s.step);
                self.set_status(format!("saved {file} at step {step}"), false);
            }
            Event::Warning(w) => self.set_status(format!("warning: {w}"), true),
            Event::Weights { .. } => {}
        }
    }

    /// Adds time spent paused (excluded from the ETA's rate).
    pub fn add_paused_secs(&mut self, secs: f64) {
        if secs.is_finite() && secs > 0.0 {
            self.paused_secs += secs;
        }
    }

    /// Seconds until the planned end, from this run's pace (pauses excluded), once it can be
    /// estimated.
    pub fn eta_secs(&self) -> Option<f64> {
        let s = self.last.as_ref()?;
        let p = s.progress?;
        let (p0, e0) = self.run_origin?;
        let active = s.elapsed_secs - e0 - self.paused_secs;
        let done = p - p0;
        if done <= 1e-9 || active < 0.5 {
            return None;
        }
        Some((1.0 - p).max(0.0) * active / done)
    }

    /// Stores freshly generated samples (one per temperature, in order).
    pub fn set_samples(&mut self, step: u64, texts: Vec<String>) {
        for (i, text) in texts.into_iter().enumerate() {
            if let Some(&temperature) = self.temperatures.get(i) {
                self.samples[i] = Some(SampleText {
                    step,
                    temperature,
                    text,
                });
            }
        }
    }

    fn change_temperature(&mut self, delta_tenths: i32) -> bool {
        let t = &mut self.temperatures[self.selected];
        let tenths = ((*t * 10.0).round() as i32 + delta_tenths).clamp(0, (TEMP_MAX * 10.0) as i32);
        let new = tenths as f32 / 10.0;
        let changed = new != *t;
        *t = new;
        changed
    }

    /// Turns a key into an action, updating the state's own part (pause flag, selected pane,
    /// temperatures, stopping). Keys: `p`/space pause/resume, `s` save now, `n` sample now,
    /// Tab/←/→ select a sample pane, `+`/`-`/↑/↓ its temperature, `q`/Esc quit (saves first),
    /// Ctrl-C interrupt.
    pub fn handle_key(&mut self, key: KeyEvent) -> Option<Action> {
        if key.kind == KeyEventKind::Release {
            return None;
        }
        if key.modifiers.contains(KeyModifiers::CONTROL)
            && matches!(key.code, KeyCode::Char('c') | KeyCode::Char('C'))
        {
            self.stopping = true;
            self.paused = false;
            self.set_status(
                "interrupted: validating and saving... (Ctrl-C again exits at once)".into(),
                true,
            );
            return Some(Action::Interrupt);
        }
        let n = self.temperatures.len();
        match key.code {
            KeyCode::Char('q') | KeyCode::Char('Q') | KeyCode::Esc => {
                if self.stopping {
                    return None;
                }
                self.stopping = true;
                self.paused = false;
                self.set_status("stopping: validating and saving...".into(), false);
                Some(Action::Quit)
            }
            KeyCode::Char('p') | KeyCode::Char(' ') if !self.stopping => {
                self.paused = !self.paused;
                let msg = if self.paused {
                    "paused (p resumes)"
                } else {
                    "resumed"
                };
                self.set_status(msg.into(), false);
                Some(Action::Pause(self.paused))
            }
            KeyCode::Char('s') if !self.stopping => {
                let msg = if self.paused {
                    "save requested: written when training resumes"
                } else {
                    "saving..."
                };
                self.set_status(msg.into(), false);
                Some(Action::SaveNow)
            }
            KeyCode::Char('n') if !self.stopping => {
                self.set_status("sampling from the current weights...".into(), false);
                Some(Action::SampleNow)
            }
            KeyCode::Tab | KeyCode::Right | KeyCode::Char('t') => {
                self.selected = (self.selected + 1) % n;
                Some(Action::Redraw)
            }
            KeyCode::BackTab | KeyCode::Left => {
                self.selected = (self.selected + n - 1) % n;
                Some(Action::Redraw)
            }
            KeyCode::Char('+') | KeyCode::Char('=') | KeyCode::Up => {
                self.change_temperature(1).then_some(Action::Resample)
            }
            KeyCode::Char('-') | KeyCode::Char('_') | KeyCode::Down => {
                self.change_temperature(-1).then_some(Action::Resample)
            }
            _ => None,
        }
    }

    /// Draws the whole dashboard into the frame.
    pub fn draw(&self, frame: &mut Frame) {
        let area = frame.area();
        let rows = Layout::vertical([
            Constraint::Length(1),
            Constraint::Percentage(48),
            Constraint::Length(2),
            Constraint::Min(4),
            Constraint::Length(1),
        ])
        .split(area);
        self.draw_header(frame, rows[0]);
        let body = Layout::horizontal([Constraint::Min(30), Constraint::Length(34)]).split(rows[1]);
        self.draw_chart(frame, body[0]);
        self.draw_stats(frame, body[1]);
        self.draw_gauges(frame, rows[2]);
        self.draw_samples(frame, rows[3]);
        self.draw_footer(frame, rows[4]);
    }

    fn draw_header(&self, frame: &mut Frame, area: Rect) {
        let mut spans = vec![
            Span::styled(" quill ", Style::new().bold().reversed()),
            Span::raw(format!(" {} ", self.name)).bold(),
        ];
        if let Some(s) = &self.last {
            let of = self
                .planned_steps
                .map(|p| format!("/{p}"))
                .unwrap_or_default();
            spans.push(Span::raw(format!(
                "  step {}{of}  epoch {:.2}",
                s.step, s.epoch
            )));
        } else {
            spans.push(Span::raw("  starting..."));
        }
        frame.render_widget(Line::from(spans), area);
        let (label, color) = if self.stopping {
            ("■ stopping ", Color::Red)
        } else if self.paused {
            ("‖ paused ", Color::Yellow)
        } else {
            ("● training ", Color::Green)
        };
        frame.render_widget(
            Line::from(Span::styled(label, Style::new().fg(color).bold()))
                .alignment(Alignment::Right),
            area,
        );
    }

    fn draw_chart(&self, frame: &mut Frame, area: Rect) {
        let block = Block::bordered().title(" loss (nats/token) ");
        let raw = thin(&self.train.points(), (area.width as usize * 2).max(8));
        let train = crate::plot::smooth(&raw, raw.len() / 30);
        if train.is_empty() && self.val.is_empty() {
            frame.render_widget(
                Paragraph::new("waiting for the first steps...").block(block),
                area,
            );
            return;
        }
        let all = || train.iter().chain(self.val.iter());
        let (mut x0, mut x1, mut y0, mut y1) = (
            f64::INFINITY,
            f64::NEG_INFINITY,
            f64::INFINITY,
            f64::NEG_INFINITY,
        );
        for &(x, y) in all() {
            x0 = x0.min(x);
            x1 = x1.max(x);
            y0 = y0.min(y);
            y1 = y1.max(y);
        }
        if x1 <= x0 {
            x1 = x0 + 1.0;
        }
        let pad = ((y1 - y0) * 0.05).max(0.01);
        let (y0, y1) = ((y0 - pad).max(0.0), y1 + pad);
        let mut datasets = vec![
            Dataset::default()
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(Style::new().fg(Color::DarkGray))
                .data(&raw),
            Dataset::default()
                .name("train")
                .marker(Marker::Braille)
                .graph_type(GraphType::Line)
                .style(Style::new().fg(Color::Cyan))
                .data(&train),
        ];
        if !self.val.is_empty() {
            datasets.push(
                Dataset::default()
                    .name("validation")
                    .marker(Marker::Braille)
                    .graph_type(GraphType::Line)
                    .style(Style::new().fg(Color::Yellow))
                    .data(&self.val),
            );
            datasets.push(
                Dataset::default()
                    .marker(Marker::Dot)
                    .graph_type(GraphType::Scatter)
                    .style(Style::new().fg(Color::Yellow).bold())
                    .data(&self.val),
            );
        }
        let step_label = |v: f64| format!("{:.0}", v);
        let chart = Chart::new(datasets)
            .block(block)
            .hidden_legend_constraints((Constraint::Ratio(1, 2), Constraint::Ratio(1, 2)))
            .x_axis(
                Axis::default()
                    .title("step")
                    .style(Style::new().fg(Color::Gray))
                    .bounds([x0, x1])
                    .labels([step_label(x0), step_label((x0 + x1) / 2.0), step_label(x1)]),
            )
            .y_axis(
                Axis::default()
                    .style(Style::new().fg(Color::Gray))
                    .bounds([y0, y1])
                    .labels([
                        format!("{y0:.2}"),
                        format!("{:.2}", (y0 + y1) / 2.0),
                        format!("{y1:.2}"),
                    ]),
            );
        frame.render_widget(chart, area);
    }

    fn draw_stats(&self, frame: &mut Frame, area: Rect) {
        let block = Block::bordered().title(" now ");
        let inner = block.inner(area);
        frame.render_widget(block, area);
        // The figures first; the sparkline takes what is left (nothing on a short screen).
        let parts = Layout::vertical([Constraint::Length(8), Constraint::Min(0)]).split(inner);
        let row = |k: &str, v: String| {
            Line::from(vec![
                Span::styled(format!("{k:<11}"), Style::new().fg(Color::Gray)),
                Span::raw(v).bold(),
            ])
        };
        let dash = || "-".to_string();
        let s = self.last.as_ref();
        let lines = vec![
            row(
                "loss",
                self.smoothed_loss
                    .map_or_else(dash, |l| format!("{l:.4} (avg)")),
            ),
            row(
                "val loss",
                self.val.last().map_or_else(dash, |v| {
                    format!(
                        "{:.4}{}",
                        v.1,
                        self.best_val
                            .map(|b| format!("  best {b:.4}"))
                            .unwrap_or_default()
                    )
                }),
            ),
            row(
                "tokens/s",
                s.map_or_else(dash, |s| fmt_count(s.tokens_per_s)),
            ),
            row("lr", s.map_or_else(dash, |s| format!("{:.2e}", s.lr))),
            row(
                "grad norm",
                s.map_or_else(dash, |s| format!("{:.3}", s.grad_norm)),
            ),
            row(
                "elapsed",
                s.map_or_else(dash, |s| fmt_duration(s.elapsed_secs)),
            ),
            row("ETA", self.eta_secs().map_or_else(dash, fmt_duration)),
            row(
                "params",
                if self.params > 0 {
                    fmt_count(self.params as f64)
                } else {
                    dash()
                },
            ),
        ];
        frame.render_widget(Paragraph::new(lines), parts[0]);
        let max = self.grad_norms.iter().copied().fold(0.0f64, f64::max);
        let scale = if max > 0.0 { 1000.0 / max } else { 0.0 };
        let bars: Vec<u64> = self
            .grad_norms
            .iter()
            .rev()
            .take(parts[1].width as usize)
            .rev()
            .map(|g| (g * scale).round() as u64)
            .collect();
        frame.render_widget(
            Sparkline::default()
                .block(Block::new().title(Span::styled(
                    format!("grad norm (max {max:.2})"),
                    Style::new().fg(Color::Gray),
                )))
                .style(Style::new().fg(Color::Magenta))
                .max(1000)
                .data(&bars),
            parts[1],
        );
    }

    fn draw_gauges(&self, frame: &mut Frame, area: Rect) {
        let rows = Layout::vertical([Constraint::Length(1), Constraint::Length(1)]).split(area);
        let s = self.last.as_ref();
        let run = s.and_then(|s| s.progress).unwrap_or(0.0).clamp(0.0, 1.0);
        let eta = self
            .eta_secs()
            .map(|e| format!(" ETA {}", fmt_duration(e)))
            .unwrap_or_default();
        frame.render_widget(
            LineGauge::default()
                .filled_style(Style::new().fg(Color::Green))
                .line_set(symbols::line::THICK)
                .ratio(run)
                .label(format!("run   {:>5.1}%{eta:<14}", run * 100.0)),
            rows[0],
        );
        let epoch = s.map_or(0.0, |s| s.epoch);
        frame.render_widget(
            LineGauge::default()
                .filled_style(Style::new().fg(Color::Blue))
                .line_set(symbols::line::THICK)
                .ratio(epoch.fract().clamp(0.0, 1.0))
                .label(format!(
                    "epoch {:<6}{:>5.1}%{:14}",
                    epoch.floor() as u64 + 1,
                    epoch.fract() * 100.0,
                    ""
                )),
            rows[1],
        );
    }

    fn draw_samples(&self, frame: &mut Frame, area: Rect) {
        let n = self.temperatures.len() as u32;
        let panes = Layout::horizontal((0..n).map(|_| Constraint::Ratio(1, n))).split(area);
        for (i, pane) in panes.iter().enumerate() {
            let t = self.temperatures[i];
            let sample = self.samples[i].as_ref();
            let title = match sample {
                Some(s) if s.temperature == t => {
                    format!(" sample T={t:.1} · step {} ", s.step)
                }
                Some(s) => format!(" sample T={t:.1} (shown: T={:.1}) ", s.temperature),
                None => format!(" sample T={t:.1} "),
            };
            let border = if i == self.selected {
                Style::new().fg(Color::Cyan)
            } else {
                Style::new().fg(Color::DarkGray)
            };
            let block = Block::bordered().title(title).border_style(border);
            let body = match sample {
                Some(s) => Paragraph::new(visible(&s.text)),
                None => Paragraph::new(match self.sample_every {
                    0 => "press n for a sample from the current weights".to_string(),
                    k => format!("first sample after step {k} (n: now)"),
                })
                .style(Style::new().fg(Color::DarkGray)),
            };
            frame.render_widget(body.wrap(Wrap { trim: false }).block(block), *pane);
        }
    }

    fn draw_footer(&self, frame: &mut Frame, area: Rect) {
        let keys = " p pause · s save · n sample · tab/+/- temperature · q quit ";
        let status_style = if self.status_is_warning {
            Style::new().fg(Color::Yellow)
        } else {
            Style::new().fg(Color::Gray)
        };
        frame.render_widget(
            Line::from(vec![
                Span::styled(keys, Style::new().reversed()),
                Span::styled(format!(" {}", self.status), status_style),
            ]),
            area,
        );
    }
}

/// Text made safe for a terminal cell grid: tabs become spaces, other control characters
/// (except newlines) are dropped.
fn visible(text: &str) -> String {
    text.chars()
        .filter_map(|c| match c {
            '\n' => Some('\n'),
            '\t' => Some(' '),
            c if c.is_control() => None,
            c => Some(c),
        })
        .collect()
}

/// 950, 12.3k, 1.25M.
fn fmt_count(v: f64) -> String {
    if v >= 1e6 {
        format!("{:.2}M", v / 1e6)
    } else if v >= 1e4 {
        format!("{:.1}k", v / 1e3)
    } else {
        format!("{v:.0}")
    }
}

/// h:mm:ss, or m:ss under an hour.
fn fmt_duration(secs: f64) -> String {
    let s = if secs.is_finite() {
        secs.max(0.0).round() as u64
    } else {
        0
    };
    let (h, m, s) = (s / 3600, s / 60 % 60, s % 60);
    if h > 0 {
        format!("{h}:{m:02}:{s:02}")
    } else {
        format!("{m}:{s:02}")
    }
}

/// One sample of up to `len` tokens per temperature, generated together by the engine
/// (sample i+1 under `seed`, from a line start); a sample ends early at end-of-text.
pub fn generate_samples(
    model: Arc<Model<f32>>,
    tok: &Tokenizer,
    temperatures: &[f32],
    len: usize,
    seed: u64,
) -> Result<Vec<String>> {
    let specs: Vec<SampleSpec> = temperatures
        .iter()
        .enumerate()
        .map(|(i, &temperature)| SampleSpec {
            id: i as u64 + 1,
            prime: 0,
            params: SamplingParams {
                temperature,
                ..SamplingParams::default()
            },
            seed,
        })
        .collect();
    let cfg = GenConfig {
        length: len.max(1),
        ..GenConfig::default()
    };
    let mut out = Vec::with_capacity(specs.len());
    batch::generate(
        &model,
        tok,
        &[Vec::new()],
        &specs,
        &cfg,
        &mut |o| {
            out.push(o.output.text);
            Ok(())
        },
        &mut |_| batch::Control::Continue,
    )?;
    Ok(out)
}

/// Requests shared between the UI thread and the training callback.
#[derive(Debug)]
pub struct Controls {
    paused: Mutex<bool>,
    resumed: Condvar,
    quit: AtomicBool,
    save_now: AtomicBool,
    sample_now: AtomicBool,
    interrupts: Arc<AtomicUsize>,
}

impl Controls {
    /// Controls sharing the interrupt counter of a Ctrl-C/SIGTERM handler (any count > 0
    /// stops training).
    pub fn new(interrupts: Arc<AtomicUsize>) -> Self {
        Controls {
            paused: Mutex::new(false),
            resumed: Condvar::new(),
            quit: AtomicBool::new(false),
            save_now: AtomicBool::new(false),
            sample_now: AtomicBool::new(false),
            interrupts,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, bool> {
        self.paused.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Pauses or resumes training.
    pub fn set_paused(&self, paused: bool) {
        *self.lock() = paused;
        self.resumed.notify_all();
    }

    /// Whether training is paused.
    pub fn is_paused(&self) -> bool {
        *self.lock()
    }

    /// Asks training to stop (validate, save, return); also ends a pause.
    pub fn request_quit(&self) {
        self.quit.store(true, Ordering::SeqCst);
        self.set_paused(false);
    }

    /// Counts an interrupt (Ctrl-C) and ends a pause; returns how many came before this one.
    pub fn interrupt(&self) -> usize {
        let before = self.interrupts.fetch_add(1, Ordering::SeqCst);
        self.set_paused(false);
        before
    }

    /// Whether an interrupt (key or signal) arrived.
    pub fn interrupted(&self) -> bool {
        self.interrupts.load(Ordering::SeqCst) > 0
    }

    /// Whether training should stop.
    pub fn stop_requested(&self) -> bool {
        self.quit.load(Ordering::SeqCst) || self.interrupted()
    }

    /// Asks for `NAME-latest` to be written after the current step.
    pub fn request_save(&self) {
        self.save_now.store(true, Ordering::SeqCst);
    }

    /// Asks for a sample from the weights after the current step.
    pub fn request_sample(&self) {
        self.sample_now.store(true, Ordering::SeqCst);
    }

    /// Blocks while paused; returns at once when not paused or when a stop was requested.
    /// Signal handlers cannot notify the condition variable, so it also wakes every 100 ms to
    /// look at the interrupt counter.
    pub fn wait_while_paused(&self) {
        let mut paused = self.lock();
        while *paused && !self.stop_requested() {
            paused = self
                .resumed
                .wait_timeout(paused, Duration::from_millis(100))
                .unwrap_or_else(|e| e.into_inner())
                .0;
        }
    }
}

/// Messages to the UI thread.
#[derive(Debug)]
pub enum Msg {
    /// A training event.
    Event(Event),
    /// Weights of `step` to sample from.
    Weights {
        /// Step of the weights.
        step: u64,
        /// The weights.
        model: Arc<Model<f32>>,
    },
    /// Training returned; the UI loop ends.
    Done,
}

/// The training side: pass [`TrainHook::on_event`] as the trainer's callback.
#[derive(Debug)]
pub struct TrainHook {
    tx: Sender<Msg>,
    controls: Arc<Controls>,
    sample_every: u64,
    last_sampled: Option<u64>,
}

impl TrainHook {
    /// A hook sending to the UI over `tx`, asking for a sample every `sample_every` steps
    /// (0: only on request).
    pub fn new(tx: Sender<Msg>, controls: Arc<Controls>, sample_every: u64) -> Self {
        TrainHook {
            tx,
            controls,
            sample_every,
            last_sampled: None,
        }
    }

    /// Asks the UI to sample from these weights now (e.g. those training resumes from).
    pub fn sample_weights(&self, step: u64, model: Arc<Model<f32>>) {
        let _ = self.tx.send(Msg::Weights { step, model });
    }

    /// Forwards the event and returns the user's request: [`Control::Stop`] after quit or an
    /// interrupt (or when the UI is gone), [`Control::Weights`] when a sample is due,
    /// [`Control::SaveNow`] for a save; blocks while paused. A pause that begins at a step
    /// first samples that step's weights (so the samples on screen show where training
    /// stands), then holds.
    pub fn on_event(&mut self, e: &Event) -> Control {
        let sent = match e {
            Event::Weights { step, model } => {
                self.last_sampled = Some(*step);
                self.tx.send(Msg::Weights {
                    step: *step,
                    model: Arc::clone(model),
                })
            }
            e => self.tx.send(Msg::Event(e.clone())),
        };
        if sent.is_err() {
            return Control::Stop;
        }
        // Only the answers to a step and to its weights are acted on.
        let actionable = matches!(e, Event::Step(_) | Event::Weights { .. });
        if let Event::Step(s) = e {
            let due = self.sample_every > 0 && s.step % self.sample_every == 0;
            let pause_sample = self.controls.is_paused() && self.last_sampled != Some(s.step);
            let asked = self.controls.sample_now.swap(false, Ordering::SeqCst);
            if due || pause_sample || asked {
                // Hold only once the weights of this step are on their way.
                return Control::Weights;
            }
        }
        self.controls.wait_while_paused();
        if self.controls.stop_requested() {
            return Control::Stop;
        }
        let save = self.controls.save_now.swap(false, Ordering::SeqCst);
        if save && actionable {
            Control::SaveNow
        } else {
            if save {
                // Keep the request for an event whose answer is acted on.
                self.controls.request_save();
            }
            Control::Continue
        }
    }

    /// Tells the UI that training has returned.
    pub fn finish(&self) {
        let _ = self.tx.send(Msg::Done);
    }
}

/// Input for [`run_ui`].
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Input {
    /// A key press.
    Key(KeyEvent),
    /// The terminal was resized.
    Resize,
}

/// Settings of [`run_ui`].
#[derive(Clone, Debug, PartialEq)]
pub struct UiOptions {
    /// Shortest time between two frames (after a key).
    pub frame_interval: Duration,
    /// Shortest time between two frames that only show new training figures.
    pub data_interval: Duration,
    /// Tokens per sample.
    pub sample_len: usize,
    /// Base seed of the samples (the step is added).
    pub seed: u64,
}

impl Default for UiOptions {
    /// At most 10 frames/s after keys and 4/s for training figures, 300-token samples,
    /// seed 0.
    fn default() -> Self {
        UiOptions {
            frame_interval: Duration::from_millis(100),
            data_interval: Duration::from_millis(250),
            sample_len: 300,
            seed: 0,
        }
    }
}

/// How [`run_ui`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum UiExit {
    /// Training finished (or stopped) and said [`Msg::Done`] (the last frame is drawn), or
    /// its side hung up (nothing more is drawn).
    Finished,
    /// A second Ctrl-C: the caller should exit at once.
    ForceQuit,
}

/// Ends a pause if the UI loop leaves (returns or panics), so training cannot stay blocked;
/// a panicking UI also stops training.
struct Release<'a>(&'a Controls);

impl Drop for Release<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.0.request_quit();
        } else {
            self.0.set_paused(false);
        }
    }
}

/// The UI loop: applies messages, handles input (`next_input(timeout)` waits up to `timeout`
/// for a key), samples from new weights and redraws at most once per frame interval. Returns
/// when training is done or on a second Ctrl-C.
pub fn run_ui<B: Backend>(
    terminal: &mut Terminal<B>,
    state: &mut DashboardState,
    rx: &Receiver<Msg>,
    controls: &Controls,
    tokenizer: &Tokenizer,
    next_input: &mut dyn FnMut(Duration) -> std::io::Result<Option<Input>>,
    opts: &UiOptions,
) -> Result<UiExit> {
    let _release = Release(controls);
    let mut weights: Option<(u64, Arc<Model<f32>>)> = None;
    let mut want_samples = false;
    // Bumped by `n` while paused, for a different sample from the same weights.
    let mut draws: u64 = 0;
    // `urgent`: the user did something; `stale`: only new training figures.
    let mut urgent = true;
    let mut stale = false;
    let mut last_draw: Option<Instant> = None;
    let mut pause_started: Option<Instant> = None;
    loop {
        let mut finished = false;
        loop {
            match rx.try_recv() {
                Ok(Msg::Event(e)) => {
                    state.apply(&e);
                    stale = true;
                }
                Ok(Msg::Weights { step, model }) => {
                    weights = Some((step, model));
                    want_samples = true;
                    urgent = true;
                }
                Ok(Msg::Done) => {
                    finished = true;
                    break;
                }
                // The training side is gone without saying so: it is unwinding from a panic,
                // and the panic hook has restored the terminal already. Draw nothing more.
                Err(TryRecvError::Disconnected) => return Ok(UiExit::Finished),
                Err(TryRecvError::Empty) => break,
            }
        }
        if controls.interrupted() && !state.stopping {
            state.stopping = true;
            state.paused = false;
            state.set_status("interrupted: validating and saving...".into(), true);
            urgent = true;
        }
        if want_samples {
            if let Some((step, model)) = &weights {
                match generate_samples(
                    Arc::clone(model),
                    tokenizer,
                    &state.temperatures,
                    opts.sample_len,
                    opts.seed.wrapping_add(*step).wrapping_add(draws << 32),
                ) {
                    Ok(texts) => state.set_samples(*step, texts),
                    Err(e) => state.set_status(format!("cannot sample: {e}"), true),
                }
            }
            want_samples = false;
            urgent = true;
        }
        if finished {
            // A sample due at the last step has been taken above: it is the final one.
            terminal.draw(|f| state.draw(f)).map_err(Error::Terminal)?;
            return Ok(UiExit::Finished);
        }
        let since = last_draw.map_or(Duration::MAX, |t| t.elapsed());
        if (urgent && since >= opts.frame_interval) || (stale && since >= opts.data_interval) {
            terminal.draw(|f| state.draw(f)).map_err(Error::Terminal)?;
            last_draw = Some(Instant::now());
            urgent = false;
            stale = false;
        }
        let since = last_draw.map_or(Duration::ZERO, |t| t.elapsed());
        let wait = if urgent {
            opts.frame_interval.saturating_sub(since)
        } else if stale {
            opts.data_interval.saturating_sub(since)
        } else {
            // Training events do not wake the input wait: look for them this often.
            opts.data_interval
        };
        match next_input(wait.max(Duration::from_millis(1))).map_err(Error::Terminal)? {
            Some(Input::Key(key)) => {
                match state.handle_key(key) {
                    Some(Action::Pause(true)) => {
                        controls.set_paused(true);
                        pause_started = Some(Instant::now());
                    }
                    Some(Action::Pause(false)) => {
                        controls.set_paused(false);
                        if let Some(t) = pause_started.take() {
                            state.add_paused_secs(t.elapsed().as_secs_f64());
                        }
                    }
                    Some(Action::SaveNow) => controls.request_save(),
                    Some(Action::SampleNow) => {
                        if state.paused && weights.is_some() {
                            // Paused: the weights do not change; draw another sample.
                            draws += 1;
                            want_samples = true;
                        } else {
                            controls.request_sample();
                        }
                    }
                    Some(Action::Resample) => want_samples = weights.is_some(),
                    Some(Action::Quit) => controls.request_quit(),
                    Some(Action::Interrupt) => {
                        if controls.interrupt() >= 1 {
                            return Ok(UiExit::ForceQuit);
                        }
                    }
                    Some(Action::Redraw) | None => {}
                }
                urgent = true;
            }
            Some(Input::Resize) => urgent = true,
            None => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testutil;

    use crate::tokenizer::TokenizerKind;

    use ratatui::backend::TestBackend;
    use std::sync::mpsc;

    fn step(step: u64, loss: f64, progress: f64, elapsed: f64) -> Event {
        Event::Step(StepInfo {
            step,
            epoch: step as f64 / 100.0,
            loss,
            lr: 1e-3,
            grad_norm: 0.5 + step as f64 / 1000.0,
            tokens_per_s: 12_345.0,
            progress: Some(progress),
            elapsed_secs: elapsed,
        })
    }

    fn start() -> Event {
        Event::Start {
            params: 123_456,
            train_tokens: 1000,
            val_tokens: 100,
            windows_per_epoch: 100,
            start_step: 0,
            planned_steps: Some(1000),
        }
    }

    fn key(c: char) -> KeyEvent {
        KeyEvent::new(KeyCode::Char(c), KeyModifiers::NONE)
    }

    fn ctrl_c() -> KeyEvent {
        KeyEvent::new(KeyCode::Char('c'), KeyModifiers::CONTROL)
    }

    fn screen(t: &Terminal<TestBackend>) -> String {
        let buf = t.backend().buffer();
        let w = buf.area.width as usize;
        buf.content()
            .chunks(w)
            .map(|row| row.iter().map(|c| c.symbol()).collect::<String>())
            .collect::<Vec<_>>()
            .join("\n")
    }

    fn tiny_model() -> (Arc<Model<f32>>, Tokenizer) {
        let tok = testutil::tokenizer(TokenizerKind::Char, "hello world\nhello there\n");
        (testutil::model(tok.vocab_size(), 4, 8, 1, 3), tok)
    }

    #[test]
    fn series_stays_bounded_and_keeps_the_mean() {
        let mut s = Series::new(8);
        for i in 0..1000 {
            s.push(i as f64, 2.0 * i as f64);
        }
        let p = s.points();
        assert!(p.len() <= 9, "{}", p.len());
        assert!(s.bucket() >= 128);
        // Every stored point is a mean of consecutive pushes, so y = 2x still holds.
        for (x, y) in &p {
            assert!((y - 2.0 * x).abs() < 1e-9, "{x} {y}");
        }
        assert!(p[0].0 < 100.0 && p.last().unwrap().0 > 900.0);
        assert!(Series::new(4).is_empty());
    }

    #[test]
    fn thin_averages_groups() {
        let pts: Vec<(f64, f64)> = (0..10).map(|i| (i as f64, i as f64)).collect();
        let t = thin(&pts, 5);
        assert_eq!(
            t,
            vec![(0.5, 0.5), (2.5, 2.5), (4.5, 4.5), (6.5, 6.5), (8.5, 8.5)]
        );
        assert_eq!(thin(&pts, 20), pts);
    }

    #[test]
    fn events_update_the_state() {
        let mut st = DashboardState::new("run", &[0.5, 1.0], 100);
        st.apply(&start());
        assert_eq!(st.params, 123_456);
        assert_eq!(st.planned_steps, Some(1000));
        st.apply(&step(1, 4.0, 0.001, 1.0));
        st.apply(&step(2, 2.0, 0.002, 2.0));
        assert_eq!(st.last.as_ref().unwrap().step, 2);
        let sm = st.smoothed_loss.unwrap();
        assert!((sm - (0.95 * 4.0 + 0.05 * 2.0)).abs() < 1e-12, "{sm}");
        assert_eq!(st.train.points(), vec![(1.0, 4.0), (2.0, 2.0)]);
        assert_eq!(st.grad_norms.len(), 2);

        st.apply(&Event::Eval {
            step: 2,
            val_loss: 3.0,
            best: true,
        });
        st.apply(&Event::Eval {
            step: 4,
            val_loss: 3.5,
            best: false,
        });
        assert_eq!(st.val, vec![(2.0, 3.0), (4.0, 3.5)]);
        assert_eq!(st.best_val, Some(3.0));
        st.apply(&Event::Saved {
            path: std::path::PathBuf::from("out/run-latest.safetensors"),
        });
        assert!(
            st.status.contains("run-latest.safetensors"),
            "{}",
            st.status
        );
        assert!(!st.status_is_warning);
        st.apply(&Event::Warning("careful".into()));
        assert!(st.status_is_warning && st.status.contains("careful"));
    }

    #[test]
    fn non_finite_losses_stay_out_of_the_chart() {
        let mut st = DashboardState::new("run", &[1.0], 0);
        st.apply(&step(1, f64::NAN, 0.0, 0.0));
        st.apply(&step(2, 1.0, 0.0, 0.0));
        assert_eq!(st.train.points(), vec![(2.0, 1.0)]);
        assert_eq!(st.smoothed_loss, Some(1.0));
    }

    #[test]
    fn eta_follows_the_pace_without_pauses() {
        let mut st = DashboardState::new("run", &[1.0], 0);
        st.apply(&step(1, 1.0, 0.10, 100.0));
        assert_eq!(st.eta_secs(), None);
        st.apply(&step(2, 1.0, 0.20, 110.0));
        // 10% in 10 s, 80% left: 80 s.
        assert!((st.eta_secs().unwrap() - 80.0).abs() < 1e-9);
        // 5 of those 10 s were a pause: the pace was really 10% per 5 s.
        st.add_paused_secs(5.0);
        assert!((st.eta_secs().unwrap() - 40.0).abs() < 1e-9);
    }

    #[test]
    fn history_from_the_metrics_log_fills_the_charts() {
        let log = "{\"kind\":\"train\",\"step\":10,\"loss\":3.0}\n\
                   {\"kind\":\"eval\",\"step\":10,\"train_loss\":3.0,\"val_loss\":2.9}\n\
                   {\"kind\":\"eval\",\"step\":20,\"train_loss\":2.0,\"val_loss\":2.5}\n";
        let m = RunMetrics::parse(log, std::path::Path::new("x-metrics.jsonl")).unwrap();
        let mut st = DashboardState::new("x", &[1.0], 0);
        st.load_history(&m);
        assert_eq!(st.train.points(), vec![(10.0, 3.0)]);
        assert_eq!(st.val, vec![(10.0, 2.9), (20.0, 2.5)]);
        assert_eq!(st.best_val, Some(2.5));
    }

    #[test]
    fn keys_map_to_actions() {
        let mut st = DashboardState::new("run", &[0.5, 1.0], 0);
        assert_eq!(st.handle_key(key('p')), Some(Action::Pause(true)));
        assert!(st.paused);
        assert_eq!(st.handle_key(key(' ')), Some(Action::Pause(false)));
        assert!(!st.paused);
        assert_eq!(st.handle_key(key('s')), Some(Action::SaveNow));
        assert_eq!(st.handle_key(key('n')), Some(Action::SampleNow));
        // Temperature of the selected pane, in tenths, clamped.
        assert_eq!(st.handle_key(key('+')), Some(Action::Resample));
        assert_eq!(st.temperatures, vec![0.6, 1.0]);
        assert_eq!(
            st.handle_key(KeyEvent::new(KeyCode::Tab, KeyModifiers::NONE)),
            Some(Action::Redraw)
        );
        assert_eq!(st.selected, 1);
        assert_eq!(st.handle_key(key('-')), Some(Action::Resample));
        assert_eq!(st.temperatures, vec![0.6, 0.9]);
        for _ in 0..(TEMP_MAX * 10.0) as usize {
            st.handle_key(key('+'));
        }
        assert_eq!(st.temperatures[1], TEMP_MAX);
        assert_eq!(st.handle_key(key('+')), None, "no change, no resample");
        assert_eq!(st.handle_key(key('x')), None);
        let mut release = key('p');
        release.kind = KeyEventKind::Release;
        assert_eq!(st.handle_key(release), None);
        assert!(!st.paused);

        assert_eq!(st.handle_key(key('p')), Some(Action::Pause(true)));
        assert_eq!(st.handle_key(key('q')), Some(Action::Quit));
        assert!(st.stopping && !st.paused, "quit ends a pause");
        assert_eq!(st.handle_key(key('q')), None);
        assert_eq!(st.handle_key(key('p')), None, "no pause while stopping");
        assert_eq!(st.handle_key(ctrl_c()), Some(Action::Interrupt));
    }

    #[test]
    fn screen_shows_figures_samples_and_state() {
        let mut st = DashboardState::new("shakespeare", &[0.5, 1.0], 100);
        st.apply(&start());
        for i in 1..=300u64 {
            st.apply(&step(
                i,
                4.0 - i as f64 / 100.0,
                i as f64 / 1000.0,
                i as f64,
            ));
        }
        st.apply(&Event::Eval {
            step: 200,
            val_loss: 2.25,
            best: true,
        });
        st.set_samples(
            300,
            vec!["ROMEO:\nBut soft".into(), "JULIET:\tO\u{7}h".into()],
        );
        let mut term = Terminal::new(TestBackend::new(110, 34)).unwrap();
        term.draw(|f| st.draw(f)).unwrap();
        let s = screen(&term);
        for want in [
            "shakespeare",
            "step 300/1000",
            "training",
            "loss (nats/token)",
            "train",
            "validation",
            "tokens/s",
            "12.3k",
            "1.00e-3",
            "2.2500  best 2.2500",
            "5:00",
            "ETA",
            "123.5k",
            "grad norm",
            "30.0%",
            "sample T=0.5 · step 300",
            "sample T=1.0 · step 300",
            "ROMEO:",
            "But soft",
            "JULIET: Oh",
            "q quit",
        ] {
            assert!(s.contains(want), "missing {want:?} in\n{s}");
        }
        // The chart has drawn its lines (braille cells).
        assert!(
            s.chars().any(|c| ('\u{2801}'..='\u{28FF}').contains(&c)),
            "{s}"
        );

        st.handle_key(key('p'));
        st.handle_key(key('+'));
        term.draw(|f| st.draw(f)).unwrap();
        let s = screen(&term);
        assert!(s.contains("paused"), "{s}");
        assert!(s.contains("T=0.6 (shown: T=0.5)"), "{s}");
    }

    #[test]
    fn screen_before_any_step_and_when_tiny() {
        let st = DashboardState::new("r", &[0.8], 50);
        let mut term = Terminal::new(TestBackend::new(80, 24)).unwrap();
        term.draw(|f| st.draw(f)).unwrap();
        let s = screen(&term);
        assert!(s.contains("waiting for the first steps"), "{s}");
        assert!(s.contains("first sample after step 50"), "{s}");
        // A very small terminal must not panic.
        let mut small = Terminal::new(TestBackend::new(12, 5)).unwrap();
        small.draw(|f| st.draw(f)).unwrap();
    }

    #[test]
    fn samples_are_generated_per_temperature_and_reproducible() {
        let (model, tok) = tiny_model();
        let a = generate_samples(model.clone(), &tok, &[0.0, 1.0], 40, 7).unwrap();
        let b = generate_samples(model.clone(), &tok, &[0.0, 1.0], 40, 7).unwrap();
        assert_eq!(a, b);
        assert_eq!(a.len(), 2);
        for s in &a {
            assert_eq!(s.chars().count(), 40, "{s:?}");
            assert!(s.chars().all(|c| "helo wrdt\n".contains(c)), "{s:?}");
        }
        // Greedy does not depend on the seed; sampling at T=1 does (with 40 draws).
        let c = generate_samples(model, &tok, &[0.0, 1.0], 40, 8).unwrap();
        assert_eq!(a[0], c[0]);
        assert_ne!(a[1], c[1]);
    }

    fn info(s: u64) -> Event {
        step(s, 1.0, 0.0, 0.0)
    }

    #[test]
    fn hook_asks_for_the_weights_when_a_sample_is_due_and_hands_them_over() {
        let (model, _) = tiny_model();
        let (tx, rx) = mpsc::channel();
        let controls = Arc::new(Controls::new(Arc::new(AtomicUsize::new(0))));
        let mut hook = TrainHook::new(tx, controls.clone(), 10);
        assert_eq!(hook.on_event(&info(9)), Control::Continue);
        assert_eq!(hook.on_event(&info(10)), Control::Weights);
        let weights = |step| Event::Weights {
            step,
            model: model.clone(),
        };
        assert_eq!(hook.on_event(&weights(10)), Control::Continue);
        assert_eq!(hook.on_event(&info(11)), Control::Continue);
        let msgs: Vec<Msg> = rx.try_iter().collect();
        let sampled: Vec<u64> = msgs
            .iter()
            .filter_map(|m| match m {
                Msg::Weights { step, .. } => Some(*step),
                _ => None,
            })
            .collect();
        assert_eq!(sampled, vec![10]);
        assert_eq!(
            msgs.iter().filter(|m| matches!(m, Msg::Event(_))).count(),
            3
        );

        // Keys: sample now, save now (a save asked during a non-step event waits for a step).
        controls.request_sample();
        assert_eq!(hook.on_event(&info(12)), Control::Weights);
        assert_eq!(hook.on_event(&weights(12)), Control::Continue);
        assert_eq!(hook.on_event(&info(13)), Control::Continue);
        controls.request_save();
        hook.on_event(&Event::Warning("w".into()));
        assert_eq!(hook.on_event(&info(14)), Control::SaveNow);
        assert_eq!(hook.on_event(&info(15)), Control::Continue);
        controls.request_quit();
        assert_eq!(hook.on_event(&info(16)), Control::Stop);
        drop(rx);
        let controls = Arc::new(Controls::new(Arc::new(AtomicUsize::new(0))));
        let (tx, rx) = mpsc::channel();
        let mut hook = TrainHook::new(tx, controls, 0);
        drop(rx);
        assert_eq!(hook.on_event(&info(1)), Control::Stop, "UI gone: stop");
    }

    #[test]
    fn pausing_at_a_step_samples_it_before_holding() {
        let (model, _) = tiny_model();
        let controls = Arc::new(Controls::new(Arc::new(AtomicUsize::new(0))));
        let (tx, rx) = mpsc::channel();
        let mut hook = TrainHook::new(tx, controls.clone(), 0);
        controls.set_paused(true);
        // Does not block: the step's weights go to the UI first.
        assert_eq!(hook.on_event(&info(7)), Control::Weights);
        // Then it holds, with the sample on its way, until resumed.
        let c2 = controls.clone();
        let ui = std::thread::spawn(move || {
            // Resume whatever happens, so a failed check cannot leave the hook waiting.
            let got = loop {
                match rx.recv_timeout(Duration::from_secs(10)) {
                    Ok(Msg::Event(_)) => continue,
                    other => break other,
                }
            };
            let held = c2.is_paused();
            c2.set_paused(false);
            assert!(matches!(got, Ok(Msg::Weights { step: 7, .. })), "{got:?}");
            assert!(held, "the hook holds while the sample is made");
            rx
        });
        let answer = hook.on_event(&Event::Weights { step: 7, model });
        let _rx = ui.join().unwrap();
        assert_eq!(answer, Control::Continue);
        assert_eq!(hook.on_event(&info(8)), Control::Continue);
    }

    #[test]
    fn hook_blocks_while_paused_until_resumed_or_interrupted() {
        let interrupts = Arc::new(AtomicUsize::new(0));
        let controls = Arc::new(Controls::new(interrupts.clone()));
        let (tx, _rx) = mpsc::channel();
        let mut hook = TrainHook::new(tx, controls.clone(), 0);
        controls.set_paused(true);
        let c2 = controls.clone();
        let t0 = Instant::now();
        let resumer = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(150));
            c2.set_paused(false);
        });
        let w = Event::Warning("w".into());
        assert_eq!(hook.on_event(&w), Control::Continue);
        assert!(t0.elapsed() >= Duration::from_millis(140));
        resumer.join().unwrap();

        // A signal handler only bumps the counter; the wait notices within ~100 ms.
        controls.set_paused(true);
        let i2 = interrupts.clone();
        std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(50));
            i2.fetch_add(1, Ordering::SeqCst);
        });
        assert_eq!(hook.on_event(&w), Control::Stop);
    }

    #[test]
    fn ui_loop_applies_events_samples_and_follows_keys() {
        let (model, tok) = tiny_model();
        let interrupts = Arc::new(AtomicUsize::new(0));
        let controls = Controls::new(interrupts.clone());
        let (tx, rx) = mpsc::channel();
        tx.send(Msg::Event(start())).unwrap();
        tx.send(Msg::Event(step(5, 3.0, 0.01, 1.0))).unwrap();
        tx.send(Msg::Weights { step: 5, model }).unwrap();
        let mut st = DashboardState::new("ui", &[0.0, 1.0], 5);
        let mut term = Terminal::new(TestBackend::new(100, 30)).unwrap();
        let mut keys = vec![
            Input::Key(key('p')),
            Input::Resize,
            Input::Key(key('s')),
            Input::Key(key('+')),
            Input::Key(key('p')),
        ]
        .into_iter();
        let opts = UiOptions {
            frame_interval: Duration::from_millis(1),
            data_interval: Duration::from_millis(1),
            sample_len: 20,
            seed: 1,
        };
        let mut saw_pause = false;
        let mut tx = Some(tx);
        let mut input = |_t: Duration| -> std::io::Result<Option<Input>> {
            let k = keys.next();
            if k.is_none() {
                if let Some(tx) = tx.take() {
                    tx.send(Msg::Done).unwrap();
                }
            }
            saw_pause |= controls.is_paused();
            Ok(k)
        };
        let exit = run_ui(&mut term, &mut st, &rx, &controls, &tok, &mut input, &opts).unwrap();
        assert_eq!(exit, UiExit::Finished);
        assert!(saw_pause);
        assert!(!controls.is_paused());
        assert!(controls.save_now.load(Ordering::SeqCst));
        assert_eq!(st.last.as_ref().unwrap().step, 5);
        // Samples were made at both temperatures, and again after `+` changed the first.
        let s0 = st.samples[0].as_ref().unwrap();
        assert_eq!((s0.step, s0.temperature), (5, 0.1));
        assert_eq!(s0.text.chars().count(), 20);
        assert!(st.samples[1].is_some());
        assert!(screen(&term).contains("sample T=0.1 · step 5"));
    }

    #[test]
    fn ui_loop_n_while_paused_draws_a_new_sample_from_the_same_weights() {
        let (model, tok) = tiny_model();
        let controls = Controls::new(Arc::new(AtomicUsize::new(0)));
        let (tx, rx) = mpsc::channel();
        tx.send(Msg::Weights {
            step: 3,
            model: model.clone(),
        })
        .unwrap();
        let opts = UiOptions {
            frame_interval: Duration::from_millis(1),
            data_interval: Duration::from_millis(1),
            sample_len: 30,
            seed: 9,
        };
        let first = generate_samples(model, &tok, &[1.0], 30, 9 + 3).unwrap();
        let mut st = DashboardState::new("ui", &[1.0], 0);
        let mut term = Terminal::new(TestBackend::new(80, 24)).unwrap();
        let mut keys = vec![Input::Key(key('p')), Input::Key(key('n'))].into_iter();
        let mut tx = Some(tx);
        let mut input = |_t: Duration| -> std::io::Result<Option<Input>> {
            let k = keys.next();
            if k.is_none() {
                if let Some(tx) = tx.take() {
                    tx.send(Msg::Done).unwrap();
                }
            }
            Ok(k)
        };
        run_ui(&mut term, &mut st, &rx, &controls, &tok, &mut input, &opts).unwrap();
        let shown = &st.samples[0].as_ref().unwrap().text;
        assert_eq!(shown.chars().count(), 30);
        assert_ne!(shown, &first[0]);
        assert!(
            !controls.sample_now.load(Ordering::SeqCst),
            "paused: no request to the trainer"
        );
    }

    #[test]
    fn ui_loop_draws_a_few_frames_per_second_not_one_per_step() {
        let (_model, tok) = tiny_model();
        let controls = Controls::new(Arc::new(AtomicUsize::new(0)));
        let (tx, rx) = mpsc::channel();
        let mut st = DashboardState::new("ui", &[1.0], 0);
        let mut term = Terminal::new(TestBackend::new(80, 24)).unwrap();
        let opts = UiOptions::default();
        let t0 = Instant::now();
        let mut sent = 0u64;
        let mut tx = Some(tx);
        // Training sends 100 steps per input poll (polls at most 10 ms apart), 60 times,
        // then finishes: however slow the machine, 6000 steps arrive.
        let mut input = |timeout: Duration| -> std::io::Result<Option<Input>> {
            std::thread::sleep(timeout.min(Duration::from_millis(10)));
            if let Some(t) = &tx {
                for _ in 0..100 {
                    sent += 1;
                    t.send(Msg::Event(step(sent, 2.0, 0.1, 1.0))).unwrap();
                }
                if sent >= 6000 {
                    t.send(Msg::Done).unwrap();
                    tx = None;
                }
            }
            Ok(None)
        };
        run_ui(&mut term, &mut st, &rx, &controls, &tok, &mut input, &opts).unwrap();
        let frames = term.get_frame().count();
        let secs = t0.elapsed().as_secs_f64();
        assert_eq!(sent, 6000);
        assert_eq!(st.last.as_ref().unwrap().step, sent);
        // 4 data frames/s plus the first and the last.
        assert!(
            frames as f64 <= secs * 4.0 + 3.0,
            "{frames} frames in {secs:.2} s"
        );
        assert!(frames >= 2, "{frames}");
    }

    #[test]
    fn ui_loop_draws_nothing_after_the_training_side_vanishes() {
        let (_model, tok) = tiny_model();
        let controls = Controls::new(Arc::new(AtomicUsize::new(0)));
        let mut st = DashboardState::new("ui", &[1.0], 0);
        let mut input = |_t: Duration| Ok(None);
        let opts = UiOptions::default();

        let (tx, rx) = mpsc::channel::<Msg>();
        drop(tx);
        let mut term = Terminal::new(TestBackend::new(40, 12)).unwrap();
        let exit = run_ui(&mut term, &mut st, &rx, &controls, &tok, &mut input, &opts).unwrap();
        assert_eq!(exit, UiExit::Finished);
        assert_eq!(term.get_frame().count(), 0);

        let (tx, rx) = mpsc::channel::<Msg>();
        tx.send(Msg::Done).unwrap();
        let mut term = Terminal::new(TestBackend::new(40, 12)).unwrap();
        run_ui(&mut term, &mut st, &rx, &controls, &tok, &mut input, &opts).unwrap();
        assert_eq!(term.get_frame().count(), 1, "the final frame");
    }

    #[test]
    fn ui_loop_takes_a_sample_due_at_the_last_step_before_finishing() {
        let (model, tok) = tiny_model();
        let controls = Controls::new(Arc::new(AtomicUsize::new(0)));
        let mut st = DashboardState::new("ui", &[0.5], 4);
        let (tx, rx) = mpsc::channel::<Msg>();
        tx.send(Msg::Weights { step: 4, model }).unwrap();
        tx.send(Msg::Done).unwrap();
        let mut term = Terminal::new(TestBackend::new(40, 12)).unwrap();
        let mut input = |_t: Duration| Ok(None);
        run_ui(
            &mut term,
            &mut st,
            &rx,
            &controls,
            &tok,
            &mut input,
            &UiOptions::default(),
        )
        .unwrap();
        assert_eq!(st.samples[0].as_ref().map(|s| s.step), Some(4));
    }

    #[test]
    fn ui_loop_second_ctrl_c_forces_quit() {
        let (_model, tok) = tiny_model();
        let interrupts = Arc::new(AtomicUsize::new(0));
        let controls = Controls::new(interrupts.clone());
        let (_tx, rx) = mpsc::channel();
        let mut st = DashboardState::new("ui", &[1.0], 0);
        let mut term = Terminal::new(TestBackend::new(80, 24)).unwrap();
        let mut keys = vec![Input::Key(ctrl_c()), Input::Key(ctrl_c())].into_iter();
        let mut input = |_t: Duration| Ok(keys.next());
        let exit = run_ui(
            &mut term,
            &mut st,
            &rx,
            &controls,
            &tok,
            &mut input,
            &UiOptions::default(),
        )
        .unwrap();
        assert_eq!(exit, UiExit::ForceQuit);
        assert_eq!(interrupts.load(Ordering::SeqCst), 2);
        assert!(controls.stop_requested());
    }

    #[test]
    fn formats() {
        assert_eq!(fmt_duration(59.6), "1:00");
        assert_eq!(fmt_duration(3725.0), "1:02:05");
        assert_eq!(fmt_duration(f64::NAN), "0:00");
        assert_eq!(fmt_count(950.0), "950");
        assert_eq!(fmt_count(12_345.0), "12.3k");
        assert_eq!(fmt_count(2_500_000.0), "2.50M");
        assert_eq!(visible("a\tb\u{1b}[31mc\nd"), "a b[31mc\nd");
    }
}
