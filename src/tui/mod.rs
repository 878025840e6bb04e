//! The terminal UI (`quill tui`): interactive generation with live sampling controls.
//!
//! Structure (after ratatui's templates):
//! * [`app::App`] owns all state; keys, pastes, worker events and ticks change it, and key
//!   handlers return the [`worker::Command`]s to send;
//! * [`ui::draw`] is a function of that state;
//! * one [`event::AppEvent`] channel is fed by the input thread ([`event::InputThread`]), the
//!   worker ([`worker::WorkerHandle`]) and signal handlers; [`run`] reads it, with a receive
//!   timeout as the tick, and redraws at most every [`FRAME`] (only what changed is written,
//!   so nothing flickers).
//!
//! Setting the terminal up and restoring it (also on panic and signals) is the binary's job
//! (`src/cli/tui.rs`); [`run`] works on any ratatui backend, tests use `TestBackend`.

pub mod app;
pub mod dashboard;
pub mod editor;
pub mod event;
pub mod files;
pub mod limits;
pub mod terminal;
pub mod text;
pub mod ui;
pub mod worker;

use std::sync::mpsc::{Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

use ratatui::backend::Backend;
use ratatui::Terminal;

use crate::error::{Error, Result};

pub use app::{App, Options};
pub use event::{worker_sink, AppEvent, InputThread};
pub use worker::{Command, ModelInfo, Settings, WorkerEvent, WorkerHandle};

/// Shortest time between two frames.
pub const FRAME: Duration = Duration::from_millis(16);
/// Tick period (tokens/s meter, message expiry).
pub const TICK: Duration = Duration::from_millis(250);

fn term_err(e: std::io::Error) -> Error {
    Error::io("terminal", e)
}

/// Handles one event; returns whether the screen may have changed.
pub fn dispatch(app: &mut App, worker: &WorkerHandle, ev: AppEvent) -> bool {
    match ev {
        AppEvent::Input(ev) => {
            for cmd in app.handle_event(&ev) {
                worker.send(cmd);
            }
        }
        AppEvent::Worker(ev) => app.handle_worker(ev),
        AppEvent::Quit => {
            app.should_quit = true;
            worker.send(Command::Quit);
        }
    }
    true
}

/// The UI loop: draws, waits for events (or the tick), handles them, until the user quits
/// or every sender of `events` is gone.
pub fn run<B: Backend>(
    terminal: &mut Terminal<B>,
    app: &mut App,
    worker: &WorkerHandle,
    events: &Receiver<AppEvent>,
) -> Result<()> {
    let mut dirty = true;
    let mut last_draw: Option<Instant> = None;
    let mut next_tick = Instant::now() + TICK;
    loop {
        let now = Instant::now();
        if now >= next_tick {
            app.on_tick(now);
            next_tick = now + TICK;
            dirty = true;
        }
        // The frame limit holds while running; on the way out the last state is drawn
        // whatever the limit, so the final frame always matches the state.
        if dirty && (app.should_quit || last_draw.is_none_or(|t| now.duration_since(t) >= FRAME)) {
            terminal.draw(|f| ui::draw(f, app)).map_err(term_err)?;
            last_draw = Some(now);
            dirty = false;
        }
        if app.should_quit {
            return Ok(());
        }
        let deadline = match (dirty, last_draw) {
            (true, Some(t)) => (t + FRAME).min(next_tick),
            _ => next_tick,
        };
        match events.recv_timeout(deadline.saturating_duration_since(Instant::now())) {
            Ok(ev) => {
                dirty |= dispatch(app, worker, ev);
                // Whatever else is waiting, for at most a frame's time.
                let until = Instant::now() + FRAME;
                while !app.should_quit && Instant::now() < until {
                    match events.try_recv() {
                        Ok(ev) => dirty |= dispatch(app, worker, ev),
                        Err(_) => break,
                    }
                }
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return Ok(()),
        }
    }
}
