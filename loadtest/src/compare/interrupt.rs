//! Ctrl-C and SIGTERM become a flag that every waiting loop polls, so the
//! run unwinds through its guards and every server it started is stopped.
//!
//! # Contract
//! * [`install`] starts one thread that waits for SIGINT or SIGTERM; the
//!   first sets [`interrupted`], the second exits the process with 130
//!   at once (if stopping the servers hangs).
//! * Servers and generators run in their own process groups, so a Ctrl-C
//!   typed in the terminal reaches only this process; the guards then stop
//!   them (SIGTERM, then SIGKILL).

use std::sync::atomic::{AtomicBool, Ordering};

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Whether SIGINT or SIGTERM arrived.
pub fn interrupted() -> bool {
    INTERRUPTED.load(Ordering::Relaxed)
}

/// Start the signal thread (once per process).
pub fn install() -> std::io::Result<()> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    // Register in this thread so that a signal arriving right after `install`
    // returns is already caught.
    let mut term = rt.block_on(async {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
    })?;
    let mut int = rt.block_on(async {
        tokio::signal::unix::signal(tokio::signal::unix::SignalKind::interrupt())
    })?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            rt.block_on(async move {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                INTERRUPTED.store(true, Ordering::Relaxed);
                eprintln!("sluice-compare: interrupted, stopping the servers (again to quit now)");
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                std::process::exit(130);
            });
        })?;
    Ok(())
}
