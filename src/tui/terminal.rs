//! The terminal both UIs run in (`quill tui` and `quill train --dashboard`): raw mode, the
//! alternate screen, bracketed paste and a hidden cursor while a [`TerminalGuard`] lives, and
//! everything put back when it drops, when a thread panics ([`install_panic_hook`]) or when a
//! signal handler calls [`restore`].

use std::io::{stdout, Stdout};
use std::sync::atomic::{AtomicBool, Ordering};

use ratatui::backend::CrosstermBackend;
use ratatui::crossterm::{cursor, event, execute, terminal};
use ratatui::Terminal;

use crate::error::{Error, Result};

/// Whether a guard has the terminal (so [`restore`] knows there is something to undo).
static ACTIVE: AtomicBool = AtomicBool::new(false);

/// The terminal set up for a full-screen UI; restored on drop.
#[derive(Debug)]
pub struct TerminalGuard {
    _private: (),
}

impl TerminalGuard {
    /// Sets the terminal up and returns the guard with a ratatui terminal on stdout. On
    /// failure whatever was changed is put back.
    pub fn enter() -> Result<(Self, Terminal<CrosstermBackend<Stdout>>)> {
        terminal::enable_raw_mode().map_err(Error::Terminal)?;
        ACTIVE.store(true, Ordering::SeqCst);
        let guard = TerminalGuard { _private: () };
        execute!(
            stdout(),
            terminal::EnterAlternateScreen,
            event::EnableBracketedPaste,
            cursor::Hide
        )
        .map_err(Error::Terminal)?;
        let mut term = Terminal::new(CrosstermBackend::new(stdout())).map_err(Error::Terminal)?;
        term.clear().map_err(Error::Terminal)?;
        Ok((guard, term))
    }
}

impl Drop for TerminalGuard {
    fn drop(&mut self) {
        restore();
    }
}

/// Leaves the alternate screen and raw mode, shows the cursor; does nothing when no guard
/// has the terminal, so it is safe to call more than once and from a signal handler's thread.
pub fn restore() {
    if ACTIVE.swap(false, Ordering::SeqCst) {
        let _ = execute!(
            stdout(),
            event::DisableBracketedPaste,
            terminal::LeaveAlternateScreen,
            cursor::Show
        );
        let _ = terminal::disable_raw_mode();
    }
}

/// On a panic in any thread: restore the terminal first, so the message lands on the normal
/// screen, then the previous hook; with `exit`, end the process (code 101), for a UI that
/// cannot go on without the thread that panicked.
pub fn install_panic_hook(exit: bool) {
    let previous = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        restore();
        previous(info);
        if exit {
            std::process::exit(101);
        }
    }));
}
