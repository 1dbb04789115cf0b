//! How `watch` and the agent stop: the signals they catch, and the watchdog that ends them
//! when their event loop cannot act on one.

use std::{
    sync::atomic::{AtomicI32, Ordering},
    time::Duration,
};

/// How long the event loop has, after the first SIGINT/SIGTERM, to drain, report and exit by
/// itself. A final drain of a full ring into a file takes well under a second; what takes
/// longer is a loop blocked in a write nobody reads (`netmon watch | less` after Ctrl-C,
/// a stderr pipe its parent stopped reading), which no signal handled by the loop can end.
pub const GRACE: Duration = Duration::from_secs(10);

/// The first stop signal caught, 0 before any.
static CAUGHT: AtomicI32 = AtomicI32::new(0);

/// Resolves on Ctrl-C (SIGINT) or SIGTERM, and arms the watchdog. It registers for both at
/// once, so that a signal arriving during the slow start (attach, the first dump of every
/// namespace) stops netmon when its loop first turns instead of killing it mid-way. Call it
/// inside the runtime.
pub fn signal() -> impl std::future::Future<Output = ()> {
    use tokio::signal::unix::{SignalKind, signal};
    let int = signal(SignalKind::interrupt());
    let term = signal(SignalKind::terminate());
    arm_watchdog();
    async move {
        let (Ok(mut int), Ok(mut term)) = (int, term) else {
            return std::future::pending().await;
        };
        tokio::select! {
            _ = int.recv() => {}
            _ = term.recv() => {}
        }
    }
}

/// Beside tokio's handlers (the registry chains them), notes the first stop signal; a thread
/// then gives the loop [`GRACE`] and ends the process with 128 + the signal, as a shell would
/// report a death by that signal. `_exit`, not `exit`: flushing stdout is what may block.
fn arm_watchdog() {
    static ARMED: std::sync::Once = std::sync::Once::new();
    ARMED.call_once(|| {
        for sig in [libc::SIGINT, libc::SIGTERM] {
            // SAFETY: the action only does an atomic compare-exchange, which is
            // async-signal-safe.
            let registered = unsafe {
                signal_hook_registry::register(sig, move || {
                    let _ = CAUGHT.compare_exchange(0, sig, Ordering::SeqCst, Ordering::SeqCst);
                })
            };
            if registered.is_err() {
                return;
            }
        }
        let _ = std::thread::Builder::new()
            .name("stop-watchdog".into())
            .spawn(|| {
                let sig = loop {
                    std::thread::sleep(Duration::from_millis(100));
                    match CAUGHT.load(Ordering::SeqCst) {
                        0 => continue,
                        sig => break sig,
                    }
                };
                std::thread::sleep(GRACE);
                // SAFETY: ends the process without running destructors or flushing buffers;
                // the kernel detaches the programs and frees the maps with the last fd.
                unsafe { libc::_exit(128 + sig) };
            });
    });
}
