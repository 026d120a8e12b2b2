//! The reference client: what this machine allows *any* client in (b), measured in the same hour
//! as the daemon.
//!
//! (b)'s efficiency is the daemon's and the machine's together: the simulator, the database and
//! the daemon share two cores whose speed changes by more than two times within an hour, and a
//! call the simulator should answer in 20 ms waits for a CPU first. To tell the two apart, this
//! client makes the same calls as a `sync-once` of (b) — discovery, every user's connections,
//! every vehicle's signals, each injected 5xx retried — with the daemon's own API client
//! (`smartcar_sync::smartcar::Client`: its token provider, request slots and parsing), and
//! nothing else: no database, no queue, no allowance count, no backoff (a failed call is retried
//! at once), and discovery's pages fetched in parallel once the first tells how many there are.
//! It runs as a separate process, as the daemon does (this bench's own executable, started again
//! with [`ENV`] set), against a simulator configured exactly as for the daemon.
//!
//! Its efficiency is therefore a ceiling for the hour: a daemon that also stores what it reads
//! cannot do better, and `daemon ÷ reference` is the part of the gap that is the daemon's.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use secrecy::SecretString;
use smartcar_sync::smartcar::client::{PAGE_SIZE, http_client};
use smartcar_sync::smartcar::{
    ApiError, Client, ClientConfig, ConnectionsPage, SecretSource, TokenConfig, TokenProvider,
};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use crate::common::{Res, SECRET};

/// Set (to `auth_url api_url client_id concurrency`) in the child process: run the reference
/// client instead of the bench.
pub const ENV: &str = "BENCH_REFERENCE_CLIENT";

/// Attempts per call before the reference run gives up (2 % of calls fail, independently).
const ATTEMPTS: u32 = 20;

/// What the child prints on its last line of stdout, read back by [`parse`].
#[derive(Debug, Clone, Copy)]
pub struct Outcome {
    /// From the first call to the last answer read; the token is fetched before the clock
    /// starts (a millisecond on loopback; the daemon's refresher fetches it at start-up).
    pub seconds: f64,
    pub calls: u64,
    pub signals_calls: u64,
}

pub fn parse(stdout: &str) -> Option<Outcome> {
    let line = stdout.lines().rev().find(|l| l.starts_with("reference:"))?;
    let mut seconds = None;
    let mut calls = None;
    let mut signals_calls = None;
    for word in line.split_whitespace() {
        if let Some((k, v)) = word.split_once('=') {
            match k {
                "seconds" => seconds = v.parse().ok(),
                "calls" => calls = v.parse().ok(),
                "signals_calls" => signals_calls = v.parse().ok(),
                _ => {}
            }
        }
    }
    Some(Outcome {
        seconds: seconds?,
        calls: calls?,
        signals_calls: signals_calls?,
    })
}

/// The child: make the cycle's calls, print the [`Outcome`].
pub async fn run_child(spec: &str) -> Res<()> {
    let args: Vec<&str> = spec.split_whitespace().collect();
    let [auth_url, api_url, client_id, concurrency] = args[..] else {
        return Err(
            format!("{ENV}: want `auth_url api_url client_id concurrency`, got {spec:?}").into(),
        );
    };
    let timeout = Duration::from_secs(10);
    let http = http_client(timeout)?;
    let secret = SecretSource::value(SecretString::from(SECRET.to_owned()));
    let mut token_config = TokenConfig::new(auth_url.to_owned(), client_id.to_owned(), secret);
    token_config.request_timeout = timeout;
    let stop = CancellationToken::new();
    let tracker = TaskTracker::new();
    let tokens = TokenProvider::start(token_config, http.clone(), stop.clone(), &tracker);
    let client = Client::new(
        ClientConfig {
            api_url: api_url.to_owned(),
            request_timeout: timeout,
            vehicle_mode: "live".into(),
            max_retry_after: Duration::from_secs(60),
            max_in_flight: concurrency.parse()?,
        },
        http,
        tokens,
        None,
    )?;
    // The token first, outside the clock.
    client
        .tokens()
        .get()
        .await
        .map_err(|e| format!("token: {e}"))?;
    let counts = Arc::new(Counts::default());
    let started = Instant::now();

    // Discovery: page 1, then the rest at once when the first page says how many there are.
    let first = retry(&counts, || client.connections_page(None, 1)).await?;
    let mut users: HashSet<String> = HashSet::new();
    let mut pages = JoinSet::new();
    let more = match (first.total_count, first.page_size) {
        (Some(total), Some(size)) if size > 0 => (2..=(total + size - 1) / size).collect(),
        _ => Vec::new(),
    };
    for page in more {
        let (client, counts) = (client.clone(), counts.clone());
        pages.spawn(async move { retry(&counts, || client.connections_page(None, page)).await });
    }
    // A user whose vehicles straddle two pages is synced once.
    let mut polls = JoinSet::new();
    let mut start_new = |page: &ConnectionsPage, polls: &mut JoinSet<Res<()>>| {
        for user in page.connections.iter().filter_map(|c| c.user_id.as_ref()) {
            if users.insert(user.clone()) {
                polls.spawn(user_cycle(client.clone(), counts.clone(), user.clone()));
            }
        }
    };
    start_new(&first, &mut polls);
    while let Some(page) = pages.join_next().await {
        start_new(&page??, &mut polls);
    }
    while let Some(done) = polls.join_next().await {
        done??;
    }
    let seconds = started.elapsed().as_secs_f64();
    stop.cancel();
    println!(
        "reference: seconds={seconds:.3} calls={} signals_calls={}",
        counts.calls.load(Ordering::Relaxed),
        counts.signals.load(Ordering::Relaxed)
    );
    Ok(())
}

#[derive(Default)]
struct Counts {
    calls: AtomicU64,
    signals: AtomicU64,
}

/// One user's connections, then each of their vehicles' signals, all at once (the client's
/// request slots keep at most `concurrency` in flight).
async fn user_cycle(client: Client, counts: Arc<Counts>, user: String) -> Res<()> {
    // One page: a (b) user has 5 vehicles, and a page holds 100.
    let page = retry(&counts, || client.connections_page(Some(&user), 1)).await?;
    if !page.is_last(1, PAGE_SIZE) {
        return Err(format!("user {user}: more than one page of connections").into());
    }
    let mut signals = JoinSet::new();
    for c in page.connections {
        let (client, counts, user) = (client.clone(), counts.clone(), user.clone());
        signals.spawn(async move {
            let read = retry(&counts, || {
                counts.signals.fetch_add(1, Ordering::Relaxed);
                client.signals(&c.vehicle_id, &user)
            })
            .await?;
            Ok::<usize, Box<dyn std::error::Error + Send + Sync>>(read.len())
        });
    }
    while let Some(done) = signals.join_next().await {
        done??;
    }
    Ok(())
}

/// `call` until it succeeds, at once after each failure (the daemon waits a backoff; a
/// ceiling does not).
async fn retry<T, F, Fut>(counts: &Counts, mut call: F) -> Res<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<T, ApiError>>,
{
    let mut last = None;
    for _ in 0..ATTEMPTS {
        counts.calls.fetch_add(1, Ordering::Relaxed);
        match call().await {
            Ok(v) => return Ok(v),
            Err(e) => last = Some(e),
        }
    }
    Err(format!("{ATTEMPTS} attempts failed; the last: {last:?}").into())
}
