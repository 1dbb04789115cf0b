//! The terminal while `netmon top` runs: raw mode and the alternate screen, given back on every
//! way out (normal return, error, panic, SIGTERM/SIGINT/SIGHUP).

use std::{
    io::{self, Stdout},
    sync::{
        Once,
        atomic::{AtomicBool, Ordering},
    },
    time::Duration,
};

use ratatui::{
    Terminal,
    backend::CrosstermBackend,
    crossterm::{
        cursor, execute,
        terminal::{self, EnterAlternateScreen, LeaveAlternateScreen},
    },
};

static STOP: AtomicBool = AtomicBool::new(false);
static HOOKS: Once = Once::new();

extern "C" fn on_signal(_: libc::c_int) {
    // Only an atomic store: all that is safe in a signal handler. The loop sees it within a
    // tick and leaves through the normal path, which restores the terminal.
    STOP.store(true, Ordering::SeqCst);
}

/// Makes SIGTERM, SIGINT and SIGHUP ask the loop to stop instead of killing the process with
/// the terminal left raw.
pub fn catch_signals() {
    for sig in [libc::SIGTERM, libc::SIGINT, libc::SIGHUP] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { libc::signal(sig, on_signal as *const () as libc::sighandler_t) };
    }
}

/// Whether a signal asked to stop.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Puts the terminal back: cooked mode, main screen, visible cursor. Safe to call twice.
pub fn restore() {
    let _ = terminal::disable_raw_mode();
    let _ = execute!(io::stdout(), LeaveAlternateScreen, cursor::Show);
}

/// The terminal in raw mode on the alternate screen, for as long as this lives.
pub struct Screen {
    pub terminal: Terminal<CrosstermBackend<Stdout>>,
}

impl Screen {
    pub fn enter() -> io::Result<Self> {
        HOOKS.call_once(|| {
            let previous = std::panic::take_hook();
            std::panic::set_hook(Box::new(move |info| {
                // Restore first, or the panic message lands on the alternate screen and is
                // wiped with it.
                restore();
                previous(info);
            }));
            spawn_watchdog();
        });
        terminal::enable_raw_mode()?;
        let screen = (|| {
            execute!(io::stdout(), EnterAlternateScreen, cursor::Hide)?;
            let mut terminal = Terminal::new(CrosstermBackend::new(io::stdout()))?;
            terminal.clear()?;
            Ok(Self { terminal })
        })();
        if screen.is_err() {
            restore();
        }
        screen
    }
}

/// How long the loop has to leave by itself once asked to stop.
const GRACE: Duration = Duration::from_millis(500);

/// Ends the process if a stop request is not honoured in time. crossterm 0.29 reads a hung-up
/// terminal in a loop that never returns (`read` gives 0, not `WouldBlock`, in
/// src/event/source/unix/mio.rs), so once the terminal is gone (tmux killed, ssh dropped) the
/// event loop never looks at [`stop_requested`] again and would spin on `read` for ever. The
/// watchdog also notices the hang-up itself (POLLHUP on stdin), for when no SIGHUP comes.
fn spawn_watchdog() {
    let spawned = std::thread::Builder::new()
        .name("top-watchdog".into())
        .spawn(|| {
            loop {
                std::thread::sleep(Duration::from_millis(100));
                if stdin_hung_up() {
                    STOP.store(true, Ordering::SeqCst);
                }
                if stop_requested() {
                    std::thread::sleep(GRACE);
                    restore();
                    std::process::exit(0);
                }
            }
        });
    // Without the watchdog, top still works; only a hung-up terminal is not noticed.
    drop(spawned);
}

fn stdin_hung_up() -> bool {
    let mut fd = libc::pollfd {
        fd: libc::STDIN_FILENO,
        events: 0,
        revents: 0,
    };
    // SAFETY: one valid pollfd, no wait; POLLHUP is reported even with no events asked for.
    let n = unsafe { libc::poll(&mut fd, 1, 0) };
    n > 0 && fd.revents & (libc::POLLHUP | libc::POLLERR | libc::POLLNVAL) != 0
}

impl Drop for Screen {
    fn drop(&mut self) {
        restore();
    }
}
