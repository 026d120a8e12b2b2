//! The process's lifecycle, in one place: the signals it obeys (SIGTERM/SIGINT stop it, SIGHUP
//! reloads its secrets) and what it tells systemd (`READY=1`, `RELOADING=1`, `WATCHDOG=1`,
//! `STOPPING=1`). Shutdown itself is one `CancellationToken` that every task listens to.

use std::path::PathBuf;
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use crate::config::Config;

/// Cancels `token` on SIGTERM or SIGINT.
pub fn cancel_on_signals(token: CancellationToken) {
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        let term = async {
            match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                Ok(mut s) => {
                    s.recv().await;
                }
                Err(_) => std::future::pending::<()>().await,
            }
        };
        #[cfg(not(unix))]
        let term = std::future::pending::<()>();
        tokio::select! {
            _ = ctrl_c => tracing::info!("SIGINT: stopping"),
            _ = term => tracing::info!("SIGTERM: stopping"),
        }
        token.cancel();
    });
}

/// On SIGHUP, re-reads the configuration (file and environment) and applies its reloadable
/// parts, the secrets; a configuration that no longer validates is refused and the running one
/// kept.
pub fn reload_on_sighup(
    path: PathBuf,
    must_exist: bool,
    reloader: crate::daemon::Reloader,
    shutdown: CancellationToken,
) {
    #[cfg(unix)]
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let mut hup = match signal(SignalKind::hangup()) {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP: reload needs a restart");
                return;
            }
        };
        loop {
            tokio::select! {
                _ = shutdown.cancelled() => return,
                got = hup.recv() => if got.is_none() { return },
            }
            tracing::info!(config = %path.display(), "SIGHUP: reloading");
            notify(&[sd_notify::NotifyState::Reloading]);
            match Config::load(&path, must_exist, |k| std::env::var(k).ok()) {
                Ok(config) => reloader.apply(&config),
                Err(e) => tracing::error!(error = %e,
                    "reload refused: the configuration is not valid; keeping the running one"),
            }
            notify(&[sd_notify::NotifyState::Ready]);
        }
    });
    #[cfg(not(unix))]
    let _ = (path, must_exist, reloader, shutdown);
}

/// Tells systemd (when it supervises us: `$NOTIFY_SOCKET`); a no-op otherwise.
pub fn notify(state: &[sd_notify::NotifyState]) {
    if let Err(e) = sd_notify::notify(false, state) {
        tracing::warn!(error = %e, "cannot notify systemd");
    }
}

/// `WATCHDOG=1` at half of `WatchdogSec` while the runtime is responsive (a stalled runtime
/// stops the pings and systemd restarts the service), and `STOPPING=1` as shutdown begins.
pub async fn systemd_notify(shutdown: CancellationToken) {
    let mut usec = 0;
    let watchdog = sd_notify::watchdog_enabled(false, &mut usec)
        .then(|| Duration::from_micros(usec / 2).max(Duration::from_millis(50)));
    match watchdog {
        Some(period) => {
            let mut interval = tokio::time::interval(period);
            loop {
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = interval.tick() => notify(&[sd_notify::NotifyState::Watchdog]),
                }
            }
        }
        None => shutdown.cancelled().await,
    }
    notify(&[sd_notify::NotifyState::Stopping]);
}
