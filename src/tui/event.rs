//! The one event channel the UI loop reads: terminal input (from an input thread), the
//! worker's tokens and state changes, and a quit request (Ctrl-C/SIGTERM from outside).
//! Ticks come from the loop's own receive timeout.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::Sender;
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use ratatui::crossterm::event;

use super::worker::WorkerEvent;

/// Everything the UI loop reacts to.
#[derive(Debug)]
pub enum AppEvent {
    /// A key, paste, resize, ... from the terminal.
    Input(event::Event),
    /// Something from the generation worker.
    Worker(WorkerEvent),
    /// Quit now (a signal, or the input thread failing).
    Quit,
}

/// The worker's event sink for the loop's channel: each event becomes an
/// [`AppEvent::Worker`]; false once the loop has gone.
pub fn worker_sink(tx: Sender<AppEvent>) -> impl FnMut(WorkerEvent) -> bool + Send + 'static {
    move |e| tx.send(AppEvent::Worker(e)).is_ok()
}

/// The thread reading terminal input; stops when asked or when the channel closes.
#[derive(Debug)]
pub struct InputThread {
    stop: Arc<AtomicBool>,
    handle: Option<JoinHandle<()>>,
}

impl InputThread {
    /// Starts reading crossterm events into `tx` (polling every 50 ms for the stop flag).
    pub fn spawn(tx: Sender<AppEvent>) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let flag = Arc::clone(&stop);
        let handle = std::thread::Builder::new()
            .name("quill-tui-input".into())
            .spawn(move || {
                while !flag.load(Ordering::Relaxed) {
                    let ev = match event::poll(Duration::from_millis(50)) {
                        Ok(false) => continue,
                        Ok(true) => event::read(),
                        Err(e) => Err(e),
                    };
                    let msg = match ev {
                        Ok(ev) => AppEvent::Input(ev),
                        Err(_) => AppEvent::Quit,
                    };
                    let quit = matches!(msg, AppEvent::Quit);
                    if tx.send(msg).is_err() || quit {
                        break;
                    }
                }
            })
            .ok();
        InputThread { stop, handle }
    }

    /// Stops the thread: it ends at its next look at the flag (within one poll interval).
    /// A terminal that went away (a closed SSH session, a killed tmux) can keep crossterm's
    /// poll from returning at all; the thread is then left behind instead of joined, so
    /// quill still exits.
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(h) = self.handle.take() {
            join_or_leave(h, Duration::from_millis(500));
        }
    }
}

/// Joins `h` if it finishes within `grace`; otherwise leaves it running (detached), to end
/// with the process.
pub fn join_or_leave(h: JoinHandle<()>, grace: Duration) {
    let deadline = std::time::Instant::now() + grace;
    while !h.is_finished() && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
    if h.is_finished() {
        let _ = h.join();
    }
}
