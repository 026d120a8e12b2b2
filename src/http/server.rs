//! The accept loop: HTTP/1 with bounds on everything a client can hold.
//!
//! `axum::serve` sets no timeouts. A client could then keep a connection idle, dribble its
//! headers, or start a 1 MiB body and never finish it, each holding a socket, a task and a
//! buffer until the file-descriptor limit or memory ran out, and the webhooks Smartcar sends
//! would be the first to fail. Here:
//!
//! - **Headers** must arrive within `header_timeout`. hyper starts that timer when a connection
//!   opens and again whenever it goes idle after a response, so it is the keep-alive idle limit
//!   too.
//! - **Bodies** must arrive within `body_timeout` without stalling (408), and the bytes buffered
//!   at once over all connections are capped, with a share kept for small bodies (503 past it):
//!   see `body.rs`.
//! - **Connections** are capped per listener. Past the cap a new connection is closed at once
//!   rather than left in the kernel's backlog, where it would hold a descriptor and time out
//!   anyway. The cap also stays under the process's open-file limit, which start-up raises to
//!   its hard maximum, with room left for the database, the API client and the log.
//! - **Memory comes back**: after a flood of connections has drained, freed memory is handed back
//!   to the system (glibc keeps it in its arenas otherwise): see [`trim_after_floods`].
//! - **Shutdown**: the listener closes, requests in flight are answered (a webhook being stored
//!   is not cut), and connections still open after 10 s are dropped.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::server::graceful::GracefulShutdown;
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

use crate::config::HttpConfig;

/// Descriptors kept free for everything that is not an HTTP client.
const FD_RESERVE: u64 = 256;

/// How long requests in flight get to finish at shutdown.
const DRAIN: Duration = Duration::from_secs(10);

/// The bounds of one HTTP surface.
#[derive(Debug)]
pub struct ServerLimits {
    pub header_timeout: Duration,
    pub body_timeout: Duration,
    /// Connections open at once, per listener.
    pub max_connections: usize,
    /// Largest body (413 above).
    pub body_limit: usize,
    /// Bytes of large bodies buffered at once, over all connections: one permit a KiB.
    pub(super) body_budget: Arc<Semaphore>,
    /// The quarter of the budget kept for small bodies (see `body.rs`).
    pub(super) small_body_budget: Arc<Semaphore>,
}

impl ServerLimits {
    /// The configured bounds; the connection cap is lowered to fit the open-file limit.
    pub fn from_config(http: &HttpConfig) -> Self {
        let max_connections = fit_to_fd_limit(http.max_connections);
        ServerLimits {
            header_timeout: http.header_timeout,
            body_timeout: http.body_timeout,
            max_connections,
            body_limit: super::BODY_LIMIT,
            body_budget: Arc::new(Semaphore::new(
                (http.max_body_bytes_in_flight - http.max_body_bytes_in_flight / 4).div_ceil(1024),
            )),
            small_body_budget: Arc::new(Semaphore::new(
                (http.max_body_bytes_in_flight / 4).div_ceil(1024),
            )),
        }
    }
}

/// Raises the soft open-file limit to the hard one (once per process) and returns `wanted`,
/// lowered if the limit still cannot hold it with [`FD_RESERVE`] to spare.
fn fit_to_fd_limit(wanted: usize) -> usize {
    #[cfg(unix)]
    {
        let soft = match rlimit::increase_nofile_limit(u64::MAX) {
            Ok(n) => n,
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the open-file limit");
                return wanted;
            }
        };
        let fits = usize::try_from(soft.saturating_sub(FD_RESERVE).max(16)).unwrap_or(usize::MAX);
        if fits < wanted {
            tracing::warn!(
                open_file_limit = soft,
                max_connections = fits,
                "http.max_connections lowered to fit the open-file limit (raise LimitNOFILE)"
            );
        }
        wanted.min(fits)
    }
    #[cfg(not(unix))]
    wanted
}

/// Open connections at which a later drop counts as a flood having drained.
const FLOOD: usize = 256;

/// Every 5 s: when the connections open have fallen to under half of the most seen since the
/// last trim, and that was a flood ([`FLOOD`] or more), returns freed heap memory to the
/// system. Thousands of connections each leave buffers behind in glibc's arenas; without this
/// the process would keep their memory after they are gone.
async fn trim_after_floods(connections: Arc<Semaphore>, max: usize, shutdown: CancellationToken) {
    let mut peak = 0;
    let mut interval = tokio::time::interval(Duration::from_secs(5));
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            _ = interval.tick() => {}
        }
        let open = max.saturating_sub(connections.available_permits());
        peak = peak.max(open);
        if peak >= FLOOD && open < peak / 2 {
            release_free_memory();
            tracing::info!(
                peak,
                open,
                "connection flood drained: freed memory returned"
            );
            peak = open;
        }
    }
}

/// Returns free heap memory to the system (glibc's `malloc_trim`); a no-op elsewhere.
fn release_free_memory() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim only walks and trims the allocator's own free lists; it takes no
    // pointers from us and is safe to call from any thread at any time.
    unsafe {
        libc::malloc_trim(0);
    }
}

/// Serves `router` on `listener` within `limits` until `shutdown`.
pub async fn serve(
    listener: TcpListener,
    router: Router,
    limits: &ServerLimits,
    shutdown: CancellationToken,
) -> std::io::Result<()> {
    let mut builder = http1::Builder::new();
    builder
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout)
        // A connection's read buffer, and so the largest header block (431 past it): Smartcar's
        // headers are a few hundred bytes. Small, because every held connection has one.
        .max_buf_size(16 * 1024);
    let connections = Arc::new(Semaphore::new(limits.max_connections));
    tokio::spawn(trim_after_floods(
        connections.clone(),
        limits.max_connections,
        shutdown.clone(),
    ));
    let graceful = GracefulShutdown::new();
    let refused = AtomicU64::new(0);
    loop {
        let accepted = tokio::select! {
            _ = shutdown.cancelled() => break,
            accepted = listener.accept() => accepted,
        };
        let stream = match accepted {
            Ok((stream, _peer)) => stream,
            Err(e) => {
                // EMFILE and friends: the condition passes as connections close; don't spin.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(permit) = connections.clone().try_acquire_owned() else {
            // Closing it now frees the descriptor; the client sees a reset and may retry.
            let n = refused.fetch_add(1, Ordering::Relaxed);
            if n.is_power_of_two() {
                tracing::warn!(
                    max_connections = limits.max_connections,
                    refused = n + 1,
                    "connection refused: http.max_connections reached"
                );
            }
            drop(stream);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let service = TowerToHyperService::new(router.clone());
        let connection = graceful.watch(builder.serve_connection(TokioIo::new(stream), service));
        tokio::spawn(async move {
            // Errors here are the client's (reset, timeout, bad request): nothing to report.
            let _ = connection.await;
            drop(permit);
        });
    }
    drop(listener);
    if tokio::time::timeout(DRAIN, graceful.shutdown())
        .await
        .is_err()
    {
        tracing::warn!("HTTP connections still open after 10 s at shutdown: dropped");
    }
    Ok(())
}
