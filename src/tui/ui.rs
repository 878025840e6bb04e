//! Drawing: a pure function of the [`App`] state (it only refreshes the layout cache in
//! [`App::view`]).
//!
//! ```text
//! ┌ small · output ──────────────────────┐┌ Parameters ──────────────────┐
//! │ generated text, wrapped, following   ││ temperature 0.80        t T  │
//! │ the stream                           │└──────────────────────────────┘
//! │                                      │┌ Next token · T 0.80 ─────────┐
//! │                                      ││ e     ██████▌         31.0%  │
//! └──────────────────────────────────────┘└──────────────────────────────┘
//! ┌ Prompt ─────────────────────────────────────────────────────────────┐
//! └─────────────────────────────────────────────────────────────────────┘
//!  hints or the last message
//!  status: model · tokenizer · parameters · tokens/s · state        ? help
//! ```
//! Under 80 columns the side panels give way to a one-line parameter strip; under
//! [`MIN_WIDTH`]×[`MIN_HEIGHT`] only a message is shown.

use ratatui::layout::{Alignment, Constraint, Layout, Rect};
use ratatui::style::{Color, Modifier, Style, Stylize};
use ratatui::text::{Line, Span};
use ratatui::widgets::{Block, Clear, List, ListItem, ListState, Paragraph, Wrap};
use ratatui::Frame;

use super::app::{Activity, App, Focus, Level, Popup};
use super::files::{human_size, Utc};
use super::text::push_display;

/// Smallest terminal the full screen is drawn in.
pub const MIN_WIDTH: u16 = 50;
/// Smallest terminal height the full screen is drawn in.
pub const MIN_HEIGHT: u16 = 12;
/// Width from which the side panels are shown.
pub const WIDE: u16 = 80;
/// Width of the side panels.
const SIDE: u16 = 32;
/// Height of the parameters panel.
const PARAMS_H: u16 = 15;

/// Every key, by section, as shown in the help popup.
pub const HELP: &[(&str, &[(&str, &str)])] = &[
    (
        "Generate",
        &[
            ("Enter g F5", "generate from the prompt"),
            ("Space", "pause / resume"),
            ("s Esc", "stop"),
            ("c", "continue from the state"),
            ("r", "regenerate, new seed"),
            ("x", "clear the text"),
        ],
    ),
    (
        "Parameters (live)",
        &[
            ("t T  - +", "temperature down / up"),
            ("k K", "top-k down / up"),
            ("p P", "top-p down / up"),
            ("m M", "min-p down / up"),
            ("a A", "repetition penalty - / +"),
            ("f F", "frequency penalty - / +"),
            ("b B", "presence penalty - / +"),
            ("8", "UTF-8 guard on/off (BPE)"),
            ("l L", "length down / up"),
            ("n N", "seed down / up"),
            ("[ ]", "speed (tokens/s) - / +"),
        ],
    ),
    (
        "View",
        &[
            ("v", "colours by probability"),
            ("u", "underline corpus copies"),
            ("d", "next-token panel on/off"),
            ("↑↓ PgUp/Dn", "scroll the text"),
            ("Home End", "top / follow the end"),
        ],
    ),
    (
        "Prompt",
        &[
            ("Tab i", "edit the prompt"),
            ("Esc Tab", "done editing"),
            ("F5 Alt-↵", "generate while editing"),
            ("Ctrl-U", "clear the prompt"),
        ],
    ),
    (
        "Files",
        &[
            ("w", "save the text (samples/)"),
            ("h", "history of this session"),
            ("o", "open another checkpoint"),
        ],
    ),
    ("Other", &[("? F1", "this help"), ("q Ctrl-C", "quit")]),
];

/// Lower bounds of the probability bands generated text is coloured by, most probable first;
/// below the last is a fifth band. The server's playground page colours by the same bands.
pub const PROB_BANDS: [f32; 4] = [0.8, 0.5, 0.25, 0.1];

/// The band (0..=4, see [`PROB_BANDS`]) of a token sampled with probability `p`; NaN is 4.
pub fn prob_band(p: f32) -> usize {
    PROB_BANDS
        .iter()
        .position(|&b| p >= b)
        .unwrap_or(PROB_BANDS.len())
}

/// Colour of a generated token sampled with probability `p`.
pub fn prob_colour(p: f32) -> Color {
    band_colour(prob_band(p))
}

/// Colour of band `b` of [`prob_band`] (`quill score --heatmap` colours by it too).
pub fn band_colour(b: usize) -> Color {
    [
        Color::Green,
        Color::LightGreen,
        Color::Yellow,
        Color::LightRed,
        Color::Red,
    ][b.min(PROB_BANDS.len())]
}

/// Draws the whole screen.
pub fn draw(frame: &mut Frame, app: &App) {
    let area = frame.area();
    if area.width < MIN_WIDTH || area.height < MIN_HEIGHT {
        draw_too_small(frame, area);
        return;
    }
    let prompt_h = (app.prompt.lines().len() as u16 + 2).clamp(3, 7);
    let [main, prompt, hints, status] = Layout::vertical([
        Constraint::Min(3),
        Constraint::Length(prompt_h),
        Constraint::Length(1),
        Constraint::Length(1),
    ])
    .areas(area);
    if area.width >= WIDE {
        let [out, side] =
            Layout::horizontal([Constraint::Min(20), Constraint::Length(SIDE)]).areas(main);
        draw_output(frame, app, out);
        let [params, dist] =
            Layout::vertical([Constraint::Length(PARAMS_H), Constraint::Min(0)]).areas(side);
        draw_params(frame, app, params);
        if app.show_dist {
            draw_dist(frame, app, dist);
        }
    } else {
        let [out, strip] =
            Layout::vertical([Constraint::Min(3), Constraint::Length(1)]).areas(main);
        draw_output(frame, app, out);
        draw_param_strip(frame, app, strip);
    }
    draw_prompt(frame, app, prompt);
    draw_hints(frame, app, hints);
    draw_status(frame, app, status);
    match &app.popup {
        None => {}
        Some(Popup::Help { scroll }) => draw_help(frame, area, *scroll),
        Some(Popup::History { selected }) => draw_history(frame, app, area, *selected),
        Some(Popup::Picker { entries, selected }) => {
            draw_picker(frame, app, area, entries, *selected)
        }
        Some(Popup::Save { path }) => {
            let r = centered(area, 72, 5);
            frame.render_widget(Clear, r);
            let block = Block::bordered()
                .title(" Save the text to ")
                .title_bottom(Line::from(" Enter save · Esc cancel ").right_aligned())
                .border_style(Style::new().fg(Color::Yellow));
            let inner = block.inner(r);
            frame.render_widget(block, r);
            let (_, col) = path.cursor();
            let w = inner.width as usize;
            let skip = (col + 1).saturating_sub(w);
            let shown: String = path.text().chars().skip(skip).collect();
            frame.render_widget(Paragraph::new(shown), inner.offset_y(1));
            frame.set_cursor_position((inner.x + (col - skip) as u16, inner.y + 1));
        }
    }
}

trait OffsetY {
    fn offset_y(self, dy: u16) -> Rect;
}

impl OffsetY for Rect {
    fn offset_y(self, dy: u16) -> Rect {
        let dy = dy.min(self.height);
        Rect::new(self.x, self.y + dy, self.width, self.height - dy)
    }
}

/// A `w`×`h` rectangle centred in `area` (clipped to it).
pub fn centered(area: Rect, w: u16, h: u16) -> Rect {
    let w = w.min(area.width);
    let h = h.min(area.height);
    Rect::new(
        area.x + (area.width - w) / 2,
        area.y + (area.height - h) / 2,
        w,
        h,
    )
}

fn draw_too_small(frame: &mut Frame, area: Rect) {
    let text = vec![
        Line::from("Terminal too small".bold()),
        Line::from(format!("{}×{}", area.width, area.height)),
        Line::from(format!("quill needs at least {MIN_WIDTH}×{MIN_HEIGHT}")),
        Line::from("Enlarge the window, or press q to quit."),
    ];
    let h = (text.len() as u16).min(area.height);
    let r = Rect::new(area.x, area.y + (area.height - h) / 2, area.width, h);
    frame.render_widget(
        Paragraph::new(text)
            .alignment(Alignment::Center)
            .wrap(Wrap { trim: true }),
        r,
    );
}

fn draw_output(frame: &mut Frame, app: &App, area: Rect) {
    let mut title = vec![Span::raw(format!(" {} ", app.model.name)).bold()];
    if app.colours {
        title.push(Span::raw("· colours ").fg(Color::Green));
    }
    if app.underline_copies {
        title.push(Span::raw("· copies ").fg(Color::Green).underlined());
    }
    let mut block = Block::bordered().title(Line::from(title));
    if app.scroll.is_some() {
        block = block.title_bottom(
            Line::from(" scrolled · End follows the text ")
                .right_aligned()
                .fg(Color::Yellow),
        );
    }
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let t = &app.transcript;
    if t.is_empty() {
        let hint = if app.activity == Activity::Generating {
            "..."
        } else {
            "Press Enter to generate, Tab to write a prompt first, ? for every key."
        };
        frame.render_widget(
            Paragraph::new(hint)
                .fg(Color::DarkGray)
                .wrap(Wrap { trim: true }),
            inner,
        );
        return;
    }
    let mut view = app.view.borrow_mut();
    view.width = inner.width;
    view.height = inner.height;
    let lines = view.wrapped.update(t, inner.width as usize);
    let h = inner.height as usize;
    let max_top = lines.len().saturating_sub(h);
    let top = app.scroll.unwrap_or(max_top).min(max_top);
    let text = t.text();
    let prompt_style = Style::new().add_modifier(Modifier::BOLD);
    let copied = app.copied_ranges();
    let style_at = |at: usize| -> Style {
        let st = match t.prob_at(at) {
            None if at < t.prompt_len() => prompt_style,
            Some(p) if app.colours => Style::new().fg(prob_colour(p)),
            _ => Style::new(),
        };
        // Ranges are few and sorted: a binary search per char.
        let i = copied.partition_point(|r| r.end <= at);
        if copied.get(i).is_some_and(|r| r.start <= at) {
            st.add_modifier(Modifier::UNDERLINED)
        } else {
            st
        }
    };
    let mut out = Vec::with_capacity(h);
    for &(s, e) in &lines[top..(top + h).min(lines.len())] {
        let mut spans = Vec::new();
        let mut buf = String::new();
        let mut cur: Option<Style> = None;
        for (i, c) in text[s..e].char_indices() {
            let st = style_at(s + i);
            if cur != Some(st) {
                if let Some(prev) = cur {
                    spans.push(Span::styled(std::mem::take(&mut buf), prev));
                }
                cur = Some(st);
            }
            push_display(c, &mut buf);
        }
        if let Some(prev) = cur {
            spans.push(Span::styled(buf, prev));
        }
        out.push(Line::from(spans));
    }
    frame.render_widget(Paragraph::new(out), inner);
}

fn fmt_top_k(k: Option<usize>) -> String {
    k.map_or("off".into(), |k| k.to_string())
}

fn fmt_top_p(p: f32) -> String {
    if p >= 1.0 {
        "off".into()
    } else {
        format!("{p:.2}")
    }
}

/// A control's value, or "off" at `off`.
fn fmt_off(v: f32, off: f32) -> String {
    if v == off {
        "off".into()
    } else {
        format!("{v:.2}")
    }
}

fn fmt_length(n: Option<usize>) -> String {
    n.map_or("no limit".into(), |n| n.to_string())
}

fn fmt_speed(s: Option<u32>) -> String {
    s.map_or("max".into(), |s| format!("{s}/s"))
}

fn fmt_temp(t: f32) -> String {
    if t <= 0.0 {
        "0.00 greedy".into()
    } else {
        format!("{t:.2}")
    }
}

fn draw_params(frame: &mut Frame, app: &App, area: Rect) {
    let s = &app.settings;
    let key = Style::new().fg(Color::DarkGray);
    let row = |name: &str, value: String, keys: &str| {
        Line::from(vec![
            Span::raw(format!(" {name:<12}")),
            Span::raw(format!("{value:<12}")).bold(),
            Span::styled(keys.to_string(), key),
        ])
    };
    let mut lines = vec![
        row("temperature", fmt_temp(s.sampling.temperature), "t T"),
        row("top-k", fmt_top_k(s.sampling.top_k), "k K"),
        row("top-p", fmt_top_p(s.sampling.top_p), "p P"),
        row("min-p", fmt_off(s.sampling.min_p, 0.0), "m M"),
        row(
            "repetition",
            fmt_off(s.sampling.repetition_penalty, 1.0),
            "a A",
        ),
        row(
            "frequency",
            fmt_off(s.sampling.frequency_penalty, 0.0),
            "f F",
        ),
        row("presence", fmt_off(s.sampling.presence_penalty, 0.0), "b B"),
        row(
            "utf-8 guard",
            if s.sampling.valid_utf8 { "on" } else { "off" }.into(),
            "8",
        ),
        row("length", fmt_length(s.length), "l L"),
        row("seed", app.seed.to_string(), "n N"),
        row("speed", fmt_speed(s.speed), "[ ]"),
        row(
            "colours",
            if app.colours { "on" } else { "off" }.into(),
            "v",
        ),
    ];
    if app.colours {
        let mut legend = vec![Span::raw(" ")];
        for (p, label) in [
            (0.9, "≥.8 "),
            (0.6, "≥.5 "),
            (0.3, "≥.25 "),
            (0.15, "≥.1 "),
            (0.0, "<.1"),
        ] {
            legend.push(Span::styled(format!("■{label}"), prob_colour(p)));
        }
        lines.push(Line::from(legend));
    }
    frame.render_widget(
        Paragraph::new(lines).block(Block::bordered().title(" Parameters ")),
        area,
    );
}

fn draw_param_strip(frame: &mut Frame, app: &App, area: Rect) {
    let s = &app.settings;
    let text = format!(
        " T {} · k {} · p {} · len {} · seed {} · {}",
        fmt_temp(s.sampling.temperature),
        fmt_top_k(s.sampling.top_k),
        fmt_top_p(s.sampling.top_p),
        fmt_length(s.length),
        app.seed,
        fmt_speed(s.speed)
    );
    frame.render_widget(Paragraph::new(text).fg(Color::Cyan), area);
}

/// A horizontal bar of `frac` (0..=1) of `width` cells, in eighths.
pub fn bar(frac: f32, width: usize) -> String {
    const PARTS: [&str; 8] = ["", "▏", "▎", "▍", "▌", "▋", "▊", "▉"];
    let eighths = (frac.clamp(0.0, 1.0) * (width * 8) as f32).round() as usize;
    let mut s = "█".repeat(eighths / 8);
    s.push_str(PARTS[eighths % 8]);
    s
}

fn draw_dist(frame: &mut Frame, app: &App, area: Rect) {
    let t = app.settings.sampling.temperature;
    let t_shown = if t > 0.0 { t } else { 1.0 };
    let block = Block::bordered().title(format!(" Next token · T {t_shown:.2} "));
    let inner = block.inner(area);
    frame.render_widget(block, area);
    if app.dist.is_empty() {
        frame.render_widget(
            Paragraph::new(" (after the first token)").fg(Color::DarkGray),
            inner,
        );
        return;
    }
    let tok_w = 7;
    let bar_w = (inner.width as usize).saturating_sub(tok_w + 9);
    let lines: Vec<Line> = app
        .dist
        .iter()
        .map(|(tok, p)| {
            let shown: String = Span::raw(tok.as_str())
                .content
                .chars()
                .take(tok_w - 1)
                .collect();
            let pad = tok_w.saturating_sub(Span::raw(shown.as_str()).width());
            Line::from(vec![
                Span::raw(format!(" {shown}{}", " ".repeat(pad))).bold(),
                Span::styled(format!("{:<bar_w$}", bar(*p, bar_w)), prob_colour(*p)),
                Span::raw(format!(" {:>5.1}%", p * 100.0)),
            ])
        })
        .collect();
    frame.render_widget(Paragraph::new(lines), inner);
}

fn draw_prompt(frame: &mut Frame, app: &App, area: Rect) {
    let editing = app.focus == Focus::Prompt;
    let block = if editing {
        Block::bordered()
            .title(" Prompt · editing ")
            .title_bottom(
                Line::from(" F5/Alt-Enter generate · Esc done · Ctrl-U clear ").right_aligned(),
            )
            .border_style(Style::new().fg(Color::Yellow))
    } else {
        Block::bordered().title(" Prompt · Tab to edit ")
    };
    let inner = block.inner(area);
    frame.render_widget(block, area);
    let lines = app.prompt.lines();
    let (row, col) = app.prompt.cursor();
    if !editing && app.prompt.text().is_empty() {
        frame.render_widget(
            Paragraph::new("(empty: the model starts from scratch)").fg(Color::DarkGray),
            inner,
        );
        return;
    }
    let h = inner.height as usize;
    let w = inner.width as usize;
    let top = (row + 1).saturating_sub(h);
    let left = (col + 1).saturating_sub(w);
    let shown: Vec<Line> = lines
        .iter()
        .skip(top)
        .take(h)
        .map(|l| {
            let mut s = String::new();
            l.chars().skip(left).for_each(|c| push_display(c, &mut s));
            Line::from(s)
        })
        .collect();
    frame.render_widget(Paragraph::new(shown), inner);
    if editing && app.popup.is_none() && inner.width > 0 && inner.height > 0 {
        let x = inner.x + (col - left).min(w.saturating_sub(1)) as u16;
        let y = inner.y + (row - top) as u16;
        frame.set_cursor_position((x, y));
    }
}

fn draw_hints(frame: &mut Frame, app: &App, area: Rect) {
    let line = if let Some(m) = &app.message {
        let colour = match m.level {
            Level::Info => Color::Cyan,
            Level::Warn => Color::Yellow,
            Level::Error => Color::Red,
        };
        Line::from(Span::styled(format!(" {}", m.text), colour))
    } else {
        let text = match (app.focus, app.activity) {
            (Focus::Prompt, _) => {
                " typing the prompt · Enter new line · F5 or Alt-Enter generate · Esc back to keys"
            }
            (_, Activity::Generating) => {
                " Space pause · s stop · t/T temperature · k/K top-k · p/P top-p · v colours"
            }
            (_, Activity::Paused) => " Space resume · s stop · t/T temperature · w save",
            (_, Activity::Loading) => " opening the checkpoint ...",
            (_, Activity::Idle) => {
                " Enter generate · c continue · r new seed · Tab prompt · w save · o open · h history"
            }
        };
        Line::from(Span::styled(text, Style::new().fg(Color::DarkGray)))
    };
    frame.render_widget(Paragraph::new(line), area);
}

/// Parameter count in short form: 58.3K, 3.21M.
pub fn human_count(n: usize) -> String {
    match n {
        n if n >= 1_000_000 => format!("{:.2}M", n as f64 / 1e6),
        n if n >= 1_000 => format!("{:.1}K", n as f64 / 1e3),
        n => n.to_string(),
    }
}

fn draw_status(frame: &mut Frame, app: &App, area: Rect) {
    let base = Style::new().bg(Color::DarkGray).fg(Color::White);
    let (dot, colour) = match app.activity {
        Activity::Idle => ("○", Color::Gray),
        Activity::Generating => ("●", Color::LightGreen),
        Activity::Paused => ("‖", Color::Yellow),
        Activity::Loading => ("…", Color::LightCyan),
    };
    let state = Span::styled(
        format!("{dot} {}", app.activity.label()),
        Style::new().fg(colour).add_modifier(Modifier::BOLD),
    );
    let name = Span::raw(format!(" {} ", app.model.name)).bold();
    let full = format!(
        "│ {} │ {} params │ {:.0} tok/s │ ",
        app.model.kind,
        human_count(app.model.params),
        app.rate
    );
    let short = format!("│ {:.0} tok/s │ ", app.rate);
    let room = area.width as usize;
    let need = name.width() + Span::raw(full.as_str()).width() + state.width() + 8;
    let middle = if need <= room { full } else { short };
    let left = Line::from(vec![name, Span::raw(middle), state]);
    frame.render_widget(Paragraph::new(left).style(base), area);
    frame.render_widget(
        Paragraph::new(Line::from(" ? help ").right_aligned()).style(base),
        Rect {
            x: area.x + area.width.saturating_sub(8),
            width: area.width.min(8),
            ..area
        },
    );
}

fn draw_help(frame: &mut Frame, area: Rect, scroll: u16) {
    let mut rows: Vec<Line> = Vec::new();
    // Row index where each section starts.
    let mut starts = Vec::new();
    for (section, keys) in HELP {
        starts.push(rows.len());
        rows.push(Line::from(Span::styled(
            section.to_string(),
            Style::new().fg(Color::Yellow).bold(),
        )));
        for (k, what) in keys.iter() {
            rows.push(Line::from(vec![
                Span::raw(format!("  {k:<11}")).bold(),
                Span::raw(what.to_string()),
            ]));
        }
    }
    let col_w = 38u16;
    let two = area.width >= 2 * col_w + 3;
    // Two columns split between sections, as close to the middle as possible.
    let half = rows.len() / 2;
    let split = if two {
        starts
            .iter()
            .copied()
            .min_by_key(|s| s.abs_diff(half))
            .unwrap_or(0)
    } else {
        rows.len()
    };
    let tallest = split.max(rows.len() - split) as u16;
    let w = if two { 2 * col_w + 3 } else { col_w + 2 };
    let r = centered(area, w, tallest + 2);
    frame.render_widget(Clear, r);
    let more = tallest + 2 > area.height;
    let block = Block::bordered()
        .title(" Keys · any key closes ")
        .border_style(Style::new().fg(Color::Cyan));
    let block = if more {
        block.title_bottom(Line::from(" ↑ ↓ scroll ").right_aligned())
    } else {
        block
    };
    let inner = block.inner(r);
    frame.render_widget(block, r);
    let right = rows.split_off(split);
    let [a, b] =
        Layout::horizontal([Constraint::Length(col_w + 1), Constraint::Min(0)]).areas(inner);
    frame.render_widget(Paragraph::new(rows).scroll((scroll, 0)), a);
    frame.render_widget(Paragraph::new(right).scroll((scroll, 0)), b);
}

fn draw_history(frame: &mut Frame, app: &App, area: Rect, selected: usize) {
    let r = centered(area, area.width.saturating_sub(8).max(40), area.height - 4);
    frame.render_widget(Clear, r);
    let block = Block::bordered()
        .title(" History of this session ")
        .title_bottom(Line::from(" ↑ ↓ select · Enter restore · Esc close ").right_aligned())
        .border_style(Style::new().fg(Color::Cyan));
    let inner = block.inner(r);
    frame.render_widget(block, r);
    let [list_area, preview] =
        Layout::vertical([Constraint::Percentage(50), Constraint::Min(1)]).areas(inner);
    let items: Vec<ListItem> = app
        .history
        .iter()
        .map(|h| {
            let (a, b) = (&h.settings, &h.settings_end);
            let change = |x: String, y: String| if x == y { x } else { format!("{x}→{y}") };
            let prompt: String = h
                .prompt
                .chars()
                .take(20)
                .collect::<String>()
                .replace('\n', "⏎");
            ListItem::new(format!(
                "#{:<3} {} {:<10} T {} k {} p {} len {} seed {} · {} tok · {} · {:?}",
                h.number,
                h.time,
                h.kind.label(),
                change(
                    fmt_temp(a.sampling.temperature),
                    fmt_temp(b.sampling.temperature)
                ),
                change(fmt_top_k(a.sampling.top_k), fmt_top_k(b.sampling.top_k)),
                change(fmt_top_p(a.sampling.top_p), fmt_top_p(b.sampling.top_p)),
                fmt_length(a.length),
                h.seed,
                h.tokens,
                h.model,
                prompt
            ))
        })
        .collect();
    let mut state = ListState::default().with_selected(Some(selected));
    frame.render_stateful_widget(
        List::new(items).highlight_style(Style::new().reversed()),
        list_area,
        &mut state,
    );
    if let Some(h) = app.history.get(selected) {
        let mut text = String::new();
        h.transcript.text().chars().for_each(|c| {
            if c == '\n' {
                text.push(c)
            } else {
                push_display(c, &mut text)
            }
        });
        let lines = text.lines().count() as u16;
        let skip = lines.saturating_sub(preview.height.saturating_sub(1));
        frame.render_widget(
            Paragraph::new(text)
                .block(
                    Block::new()
                        .borders(ratatui::widgets::Borders::TOP)
                        .title(" text "),
                )
                .wrap(Wrap { trim: false })
                .scroll((skip, 0)),
            preview,
        );
    }
}

fn draw_picker(
    frame: &mut Frame,
    app: &App,
    area: Rect,
    entries: &[super::files::CheckpointEntry],
    selected: usize,
) {
    let h = (entries.len() as u16 + 2)
        .min(area.height.saturating_sub(2))
        .max(3);
    let r = centered(area, area.width.saturating_sub(8).clamp(40, 100), h);
    frame.render_widget(Clear, r);
    let block = Block::bordered()
        .title(format!(
            " Open a checkpoint · {} ",
            app.checkpoints_dir.display()
        ))
        .title_bottom(Line::from(" ↑ ↓ select · Enter open · Esc close ").right_aligned())
        .border_style(Style::new().fg(Color::Cyan));
    let items: Vec<ListItem> = entries
        .iter()
        .map(|e| {
            let open = if e.path == app.model.path {
                "  (open)"
            } else {
                ""
            };
            ListItem::new(format!(
                "{}  {:>9}  {}{}",
                e.path.display(),
                human_size(e.size),
                Utc::from(e.modified).date_minute(),
                open
            ))
        })
        .collect();
    let mut state = ListState::default().with_selected(Some(selected));
    frame.render_stateful_widget(
        List::new(items)
            .block(block)
            .highlight_style(Style::new().reversed()),
        r,
        &mut state,
    );
}
