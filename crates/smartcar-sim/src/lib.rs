//! A faithful fake of the Smartcar v3 API as the contract notes (`docs/smartcar-v3.md` in the
//! smartcar-sync repository) describe it, for tests, the demo and benchmarks. It is its own crate
//! so that the daemon's production build carries none of it (`smartcar-sync` built with
//! `--no-default-features`), and it knows nothing of the client it fakes for. It can produce every shape and error the contract lists, so a client
//! proven against it has met each variant at least once.
//!
//! ```no_run
//! # async fn demo() -> std::io::Result<()> {
//! use smartcar_sim::{SimConfig, Simulator};
//! let sim = Simulator::start(SimConfig::default(), "127.0.0.1:0".parse().unwrap()).await?;
//! let api = sim.api_url(); // http://127.0.0.1:PORT/v3
//! # sim.shutdown().await; Ok(()) }
//! ```
//!
//! What to expect:
//! - Links in paged responses are relative to the API base (`/connections?…`,
//!   `/vehicles/{id}/signals?…`), like the contract's `links.self` example.
//! - Every third vehicle in creation order (the first user's first vehicle included) has one
//!   `ERROR` signal (`closure-sunroof`) and one `UNAVAILABLE` signal (`closure-reartrunk`).
//! - BEVs expose 12 signals, PHEVs 12, ICE vehicles 9 (real v3 codes); readings change once per
//!   `update_period` and are identical within it.
//! - The per-vehicle throttle covers every vehicle-scoped call (`/vehicles/{id}…`); forced
//!   vehicle errors cover the signals endpoints only.
//! - `SC-Unit-System: imperial` switches distances to miles.
//! - Payload variants (exact-to-the-bit values, camelCase codes, unit spellings, legacy bodies,
//!   odd `meta`s, error body shapes, `Retry-After` forms, link styles) are each behind a
//!   [`Variants`] field, so a daemon test meets each one end to end; `docs/smartcar-v3.md` maps
//!   every variant to its switch.

mod cli;
mod config;
mod counters;
mod delay;
mod errors;
mod fleet;
mod ids;
mod limits;
mod management;
mod readings;
mod served;
mod server;
mod shapes;
mod state;
mod webhook;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

pub use cli::{SimArgs, run_cli};
pub use config::{
    Behaviour, Bucket, ErrorBodyVariant, Faults, ForcedError, LinkStyle, PagingVariant,
    RetryAfterForm, SimConfig, TimestampFormat, UserIdLocation, Variants, VehicleAllowance,
    VehicleMode,
};
pub use counters::CounterSnapshot;
pub use served::ServedReading;
pub use state::AllowanceCall;

use state::{Inner, MAX_SECRETS, lock};

/// How long `shutdown` waits for open connections before dropping them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// A running simulator. Dropping it without [`Simulator::shutdown`] leaves the server task
/// running until the runtime ends.
pub struct Simulator {
    inner: Arc<Inner>,
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
    /// Pushes subscribed vehicles' readings (`SimConfig::webhook_url`).
    pusher: Option<JoinHandle<()>>,
}

impl Simulator {
    /// Binds `bind` (port 0 for any free port) and serves in a background task.
    pub async fn start(config: SimConfig, bind: SocketAddr) -> std::io::Result<Simulator> {
        let inner = Arc::new(Inner::new(config));
        let pusher = inner.webhook_url.clone().map(|url| {
            tokio::spawn(management::pusher(
                Arc::downgrade(&inner),
                url,
                inner.webhook_every,
            ))
        });
        let listener = tokio::net::TcpListener::bind(bind).await?;
        let addr = listener.local_addr()?;
        let (stop, stopped) = oneshot::channel::<()>();
        let app = server::router(inner.clone());
        let task = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(async move {
                let _ = stopped.await;
            });
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "simulator server stopped with an error");
            }
        });
        Ok(Simulator {
            inner,
            addr,
            stop: Some(stop),
            task,
            pusher,
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// `http://ADDR/oauth2/token`
    pub fn auth_url(&self) -> String {
        format!("http://{}/oauth2/token", self.addr)
    }

    /// `http://ADDR/v3`
    pub fn api_url(&self) -> String {
        format!("http://{}/v3", self.addr)
    }

    pub fn client_id(&self) -> String {
        self.inner.client_id.clone()
    }

    pub fn counters(&self) -> CounterSnapshot {
        self.inner.counters.snapshot()
    }

    /// Every access token issued and not yet forgotten: a test greps logs and databases for
    /// them to prove no token leaks.
    pub fn issued_tokens(&self) -> Vec<String> {
        lock(&self.inner.tokens).keys().cloned().collect()
    }

    pub fn reset_counters(&self) {
        self.inner.counters.reset();
    }

    /// Distinct SUCCESS readings served by `/signals`, the single signal endpoint or the webhook
    /// helper (empty when `record_served` is false).
    pub fn served_readings(&self) -> Vec<ServedReading> {
        lock(&self.inner.served).all()
    }

    /// Every user, in creation order (including users left without vehicles).
    pub fn user_ids(&self) -> Vec<String> {
        self.inner
            .fleet()
            .users
            .iter()
            .map(|u| u.id.clone())
            .collect()
    }

    /// The user's connected vehicles (live and simulated), in connection order.
    pub fn vehicles_of(&self, user_id: &str) -> Vec<String> {
        let fleet = self.inner.fleet();
        let Some(u) = fleet.user_by_id(user_id) else {
            return Vec::new();
        };
        fleet.users[u as usize]
            .vehicles
            .iter()
            .filter_map(|&i| fleet.view(i))
            .map(|v| ids::fmt_uuid(v.id))
            .collect()
    }

    /// The connection id of a vehicle (for `DELETE /connections/{id}`).
    pub fn connection_of(&self, vehicle_id: &str) -> Option<String> {
        self.inner
            .vehicle(vehicle_id)
            .map(|(v, _)| ids::fmt_uuid(v.connection_id))
    }

    /// A new live vehicle in that user's connections (the user is created if new).
    pub fn connect_vehicle(&self, user_id: &str) -> String {
        self.connect_vehicle_with_mode(user_id, VehicleMode::Live)
    }

    /// Like [`Simulator::connect_vehicle`]; simulated vehicles only show with
    /// `filter[vehicle.mode]=simulated`.
    pub fn connect_vehicle_with_mode(&self, user_id: &str, mode: VehicleMode) -> String {
        self.inner
            .fleet_mut()
            .connect(user_id, mode, Utc::now().timestamp_millis())
    }

    /// The vehicle vanishes from connections; its signals then answer 404 RESOURCE_NOT_FOUND.
    pub fn disconnect_vehicle(&self, vehicle_id: &str) -> bool {
        let mut fleet = self.inner.fleet_mut();
        match fleet.vehicle_by_id(vehicle_id) {
            Some(i) => fleet.disconnect(i),
            None => false,
        }
    }

    /// Every signals call (list and single) for the vehicle answers `e` until cleared with `None`.
    pub fn force_vehicle_error(&self, vehicle_id: &str, e: Option<ForcedError>) {
        let mut fleet = self.inner.fleet_mut();
        if let Some(i) = fleet.vehicle_by_id(vehicle_id) {
            fleet.vehicles[i as usize].forced = e;
        }
    }

    /// `true`: the vehicle's `/signals` answers 200 with `data: []`, as for a vehicle without a
    /// webhook subscription (§4).
    pub fn set_no_signals(&self, vehicle_id: &str, empty: bool) {
        let mut fleet = self.inner.fleet_mut();
        if let Some(i) = fleet.vehicle_by_id(vehicle_id) {
            fleet.vehicles[i as usize].no_signals = empty;
        }
    }

    /// The next `n` continuation pages of `/signals` (`page[number]` > 1) answer 404
    /// RESOURCE_NOT_FOUND, as an expired cursor would; later ones answer normally.
    pub fn fail_next_signal_pages(&self, n: u64) {
        self.inner.fail_continuation_pages(n);
    }

    /// From now on every `n`-th application-wide `/connections` page (no user or vehicle
    /// filter: a discovery's paging) answers 500, deterministically; 0 turns it off. A client
    /// paging through them meets a failure every `n` pages.
    pub fn fail_every_nth_app_connections_page(&self, n: u64) {
        self.inner.fail_every_nth_app_page(n);
    }

    pub fn set_faults(&self, faults: Faults) {
        *lock(&self.inner.faults) = faults;
    }

    /// Secret rotation at runtime; at most three stay live (the first three).
    pub fn set_client_secrets(&self, mut secrets: Vec<String>) {
        secrets.truncate(MAX_SECRETS);
        *lock(&self.inner.secrets) = secrets;
    }

    /// Replaces the application bucket (starting full) and lifts any app-wide Retry-After.
    pub fn set_app_bucket(&self, b: Option<Bucket>) {
        lock(&self.inner.app_limiter).set(b);
    }

    /// A §7 `VEHICLE_STATE` envelope (epoch-ms timestamps, fresh `eventId`, `triggers` in
    /// `data`) carrying the vehicle's current readings, which are recorded as served. `None` for
    /// an unknown or disconnected vehicle.
    pub fn vehicle_state_webhook(&self, vehicle_id: &str) -> Option<Vec<u8>> {
        webhook::vehicle_state(&self.inner, vehicle_id, false)
    }

    /// Like [`Simulator::vehicle_state_webhook`], with `triggers` at the top level instead.
    pub fn vehicle_state_webhook_top_level_triggers(&self, vehicle_id: &str) -> Option<Vec<u8>> {
        webhook::vehicle_state(&self.inner, vehicle_id, true)
    }

    /// A §7 `VEHICLE_ERROR` envelope (e.g. `"VEHICLE_STATE"`, `"ASLEEP"`).
    pub fn vehicle_error_webhook(
        &self,
        vehicle_id: &str,
        error_type: &str,
        code: &str,
        resolved: bool,
    ) -> Option<Vec<u8>> {
        webhook::vehicle_error(&self.inner, vehicle_id, error_type, code, resolved)
    }

    /// An unsigned `VERIFY` envelope carrying `challenge`.
    pub fn verify_webhook(&self, challenge: &str) -> Vec<u8> {
        webhook::verify(&self.inner, challenge)
    }

    /// The answer a `VERIFY` expects: hex HMAC-SHA256(management token, challenge).
    pub fn verify_answer(&self, challenge: &str) -> String {
        webhook::hmac_hex(self.inner.management_token.as_bytes(), challenge.as_bytes())
    }

    /// Hex HMAC-SHA256(management token, body): the `SC-Signature` header of a webhook.
    pub fn sign(&self, body: &[u8]) -> String {
        webhook::hmac_hex(self.inner.management_token.as_bytes(), body)
    }

    /// `http://ADDR/management/v3`: the Management API (webhook subscriptions, §8).
    pub fn management_url(&self) -> String {
        format!("http://{}/management/v3", self.addr)
    }

    /// The webhook id the simulator's envelopes carry in `meta.webhookId`.
    pub fn webhook_id(&self) -> String {
        ids::fmt_uuid(ids::uuid(self.inner.seed, ids::TAG_WEBHOOK, 0))
    }

    /// Every (vehicle id, webhook id) subscription, sorted.
    pub fn subscriptions(&self) -> Vec<(String, String)> {
        let fleet = self.inner.fleet();
        let mut out: Vec<(String, String)> = lock(&self.inner.subscriptions)
            .iter()
            .filter_map(|(&i, hooks)| Some((fleet.view(i)?, hooks)))
            .flat_map(|(v, hooks)| hooks.iter().map(move |h| (ids::fmt_uuid(v.id), h.clone())))
            .collect();
        out.sort();
        out
    }

    /// Subscribes a vehicle as the Management API would (a test's set-up).
    pub fn subscribe(&self, vehicle_id: &str, webhook_id: &str) -> bool {
        let Some(i) = self.inner.fleet().vehicle_by_id(vehicle_id) else {
            return false;
        };
        lock(&self.inner.subscriptions)
            .entry(i)
            .or_default()
            .insert(webhook_id.to_owned())
    }

    /// Fixes a vehicle's behaviour (`None`: back to its generated cycle).
    pub fn set_behaviour(&self, vehicle_id: &str, b: Option<Behaviour>) {
        let mut fleet = self.inner.fleet_mut();
        if let Some(i) = fleet.vehicle_by_id(vehicle_id) {
            fleet.vehicles[i as usize].set_behaviour(b);
        }
    }

    /// Every vehicle-scoped call the allowance saw, in arrival order (empty without one).
    pub fn allowance_calls(&self) -> Vec<AllowanceCall> {
        lock(&self.inner.allowance_log).calls.clone()
    }

    /// Stops accepting connections and waits (briefly) for open ones to finish.
    pub async fn shutdown(mut self) {
        if let Some(p) = self.pusher.take() {
            p.abort();
        }
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut self.task)
            .await
            .is_err()
        {
            self.task.abort();
        }
    }
}
