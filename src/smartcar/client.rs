//! The calls the daemon makes (contract §2–§4), each through the same gate: the shared rate
//! budget ([`crate::budget`]), the app pause, a fresh token, one retry after a 401.

use std::collections::HashSet;
use std::num::NonZeroU32;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, AtomicU32, Ordering};
use std::time::Duration;

use chrono::{DateTime, Utc};
use reqwest::{Method, StatusCode, Url};
use serde_json::Value;

use super::auth::{TokenProvider, describe_transport};
use super::error::{ApiError, ErrorKind};
use super::model::{Connection, ConnectionsPage, Signal, SignalsPage, VehicleInfo};
use crate::budget::Budget;
use crate::events::CallClass;

/// The largest page size seen anywhere; fewer round trips.
pub const PAGE_SIZE: i64 = 100;
/// A pager gives up after this many pages (a million connections) whatever the server says.
const MAX_PAGES: i64 = 10_000;
/// Signals of one vehicle fit in one page today; a few pages at most.
const MAX_SIGNAL_PAGES: usize = 50;

/// How the client reaches the API.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// e.g. `https://vehicle.api.smartcar.com/v3`
    pub api_url: String,
    pub request_timeout: Duration,
    /// `live` or `simulated` (`filter[vehicle.mode]`).
    pub vehicle_mode: String,
    /// The longest wait a `Retry-After` header can impose (`queue.max_retry_after`).
    pub max_retry_after: Duration,
    /// Requests in flight at most (`queue.concurrency`); 0 = no cap. The cap is on requests,
    /// not on jobs: a job's database work (claim, allowance count, commit) runs outside it, so
    /// the queue may run more jobs than this and still never has more requests out.
    pub max_in_flight: usize,
}

/// `[rate_limit]`: the application's bucket as Smartcar publishes it, shared by every process
/// (see [`crate::budget`]); the token endpoint is not metered.
#[derive(Debug, Clone, Copy)]
pub struct RateLimit {
    pub requests_per_minute: NonZeroU32,
    pub burst: NonZeroU32,
}

/// The signals of the pages received before a later page failed, with that failure.
#[derive(Debug)]
pub struct PartialSignals {
    pub received: Vec<Signal>,
    pub error: ApiError,
}

impl PartialSignals {
    fn none(error: ApiError) -> Self {
        PartialSignals {
            received: Vec::new(),
            error,
        }
    }
}

/// The Smartcar v3 client. Cheap to clone; share one per process.
#[derive(Clone)]
pub struct Client {
    inner: Arc<Inner>,
}

struct Inner {
    http: reqwest::Client,
    api_url: Url,
    timeout: Duration,
    vehicle_mode: String,
    max_retry_after: Duration,
    tokens: TokenProvider,
    budget: Option<Arc<Budget>>,
    /// Permits for requests in flight ([`ClientConfig::max_in_flight`]).
    in_flight: Option<tokio::sync::Semaphore>,
    /// Requests waiting for one of those permits, and a wake-up each time one gets it: the
    /// queue claims no more jobs while a full round already waits (see `queue::Runner`).
    waiting: std::sync::atomic::AtomicUsize,
    slot_taken: tokio::sync::Notify,
    /// [`ClientConfig::max_in_flight`].
    slots: usize,
    /// Epoch ms until which the whole application is paused (a 429 `SMARTCAR_API`). Checked
    /// after waiting for the limiter, right before sending, so no call leaves early.
    paused_until_ms: AtomicI64,
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("api_url", &self.inner.api_url.as_str())
            .finish_non_exhaustive()
    }
}

/// Counts a request waiting for a slot while it lives (a cancelled wait included); when it ends,
/// a backlogged queue is told.
struct WaitingForSlot<'a>(&'a Inner);

impl<'a> WaitingForSlot<'a> {
    fn new(inner: &'a Inner) -> Self {
        inner.waiting.fetch_add(1, Ordering::Relaxed);
        WaitingForSlot(inner)
    }
}

impl Drop for WaitingForSlot<'_> {
    fn drop(&mut self) {
        self.0.waiting.fetch_sub(1, Ordering::Relaxed);
        self.0.slot_taken.notify_one();
    }
}

/// The `User-Agent` every request carries.
pub fn user_agent() -> String {
    format!("smartcar-sync/{}", env!("CARGO_PKG_VERSION"))
}

/// An HTTP client with the daemon's defaults; shared by the token provider and the API client.
pub fn http_client(timeout: Duration) -> Result<reqwest::Client, reqwest::Error> {
    reqwest::Client::builder()
        .user_agent(user_agent())
        .timeout(timeout)
        .connect_timeout(timeout.min(Duration::from_secs(10)))
        .pool_idle_timeout(Duration::from_secs(60))
        .build()
}

impl Client {
    pub fn new(
        config: ClientConfig,
        http: reqwest::Client,
        tokens: TokenProvider,
        rate_limit: Option<RateLimit>,
    ) -> Result<Self, url::ParseError> {
        // A trailing slash makes `join` append rather than replace the last segment.
        let mut base = config.api_url.trim_end_matches('/').to_owned();
        base.push('/');
        Ok(Client {
            inner: Arc::new(Inner {
                http,
                api_url: Url::parse(&base)?,
                timeout: config.request_timeout,
                vehicle_mode: config.vehicle_mode,
                max_retry_after: config.max_retry_after,
                tokens,
                budget: rate_limit.map(Budget::new),
                in_flight: (config.max_in_flight > 0)
                    .then(|| tokio::sync::Semaphore::new(config.max_in_flight)),
                waiting: std::sync::atomic::AtomicUsize::new(0),
                slot_taken: tokio::sync::Notify::new(),
                slots: config.max_in_flight,
                paused_until_ms: AtomicI64::new(0),
            }),
        })
    }

    pub fn tokens(&self) -> &TokenProvider {
        &self.inner.tokens
    }

    /// Whether a full round of requests (as many as may be in flight) already waits for a
    /// slot: jobs claimed now would only wait behind them. Never true without a cap.
    pub fn requests_backlogged(&self) -> bool {
        let inner = &*self.inner;
        inner.in_flight.is_some() && inner.waiting.load(Ordering::Relaxed) >= inner.slots.max(1)
    }

    /// Resolves when a waiting request gets its slot (or at once if one did since the last
    /// call): the backlog may have shrunk.
    pub async fn request_slot_taken(&self) {
        self.inner.slot_taken.notified().await;
    }

    /// The shared rate budget this client keeps to (`None`: `requests_per_minute = 0`).
    pub fn budget(&self) -> Option<&Arc<Budget>> {
        self.inner.budget.as_ref()
    }

    /// Pauses every call of this process until `until` (a stored pause, or one just received).
    pub fn pause_until(&self, until: DateTime<Utc>) {
        self.inner
            .paused_until_ms
            .fetch_max(until.timestamp_millis(), Ordering::SeqCst);
    }

    /// The local pause, if it is still in force.
    pub fn paused_until(&self) -> Option<DateTime<Utc>> {
        let ms = self.inner.paused_until_ms.load(Ordering::SeqCst);
        let until = DateTime::from_timestamp_millis(ms)?;
        (until > Utc::now()).then_some(until)
    }

    /// One page of the user's connections (or the application's, with `user_id` `None`).
    pub async fn connections_page(
        &self,
        user_id: Option<&str>,
        page: i64,
    ) -> Result<ConnectionsPage, ApiError> {
        const EP: &str = "connections";
        let mut url = self.url(EP, "connections")?;
        {
            let mut q = url.query_pairs_mut();
            if let Some(u) = user_id {
                q.append_pair("filter[userId]", u);
            }
            if self.inner.vehicle_mode != "live" {
                q.append_pair("filter[vehicle.mode]", &self.inner.vehicle_mode);
            }
            q.append_pair("page[size]", &PAGE_SIZE.to_string());
            q.append_pair("page[number]", &page.to_string());
        }
        let (v, request_id) = self.get_json(EP, url, user_id).await?;
        ConnectionsPage::parse(&v).map_err(|e| malformed(EP, e, request_id))
    }

    /// Pages through connections; see [`ConnectionsPager`].
    pub fn connections(&self, user_id: Option<&str>) -> ConnectionsPager {
        self.connections_from(user_id, 1)
    }

    /// [`Client::connections`] starting at page `page` (1-based): a paged job resuming where
    /// an earlier attempt failed.
    pub fn connections_from(&self, user_id: Option<&str>, page: i64) -> ConnectionsPager {
        ConnectionsPager {
            client: self.clone(),
            user_id: user_id.map(str::to_owned),
            page: page.max(1),
            done: false,
            seen: HashSet::new(),
        }
    }

    /// Every signal of a vehicle, following `links.next` when the server pages them.
    pub async fn signals(&self, vehicle_id: &str, user_id: &str) -> Result<Vec<Signal>, ApiError> {
        self.signals_keeping_partial(vehicle_id, user_id)
            .await
            .map_err(|p| p.error)
    }

    /// [`Client::signals`], handing back the signals of the pages already received when a later
    /// page fails, so the caller can store them (nothing read is lost).
    ///
    /// A continuation page is followed only within the vehicle's own signals path: same origin,
    /// and the first page's path or a path below it (the query may differ). A root-relative link (`/vehicles/…`)
    /// is resolved against the API base, as the contract's links are. Anything else would send
    /// our token elsewhere and is refused. A failure on a continuation page is marked
    /// [`ApiError::continuation`]: a transient failure of this poll, never the vehicle's status.
    pub async fn signals_keeping_partial(
        &self,
        vehicle_id: &str,
        user_id: &str,
    ) -> Result<Vec<Signal>, PartialSignals> {
        self.signals_metered(vehicle_id, user_id, &AtomicU32::new(0))
            .await
    }

    /// [`Client::signals_keeping_partial`], adding to `sent` every request that left for the
    /// server (a retry after a 401 and every page count; a call stopped before sending does
    /// not): the vehicle's allowance is billed per request.
    pub async fn signals_metered(
        &self,
        vehicle_id: &str,
        user_id: &str,
        sent: &AtomicU32,
    ) -> Result<Vec<Signal>, PartialSignals> {
        const EP: &str = "signals";
        let first = self
            .url(EP, &format!("vehicles/{}/signals", encode(vehicle_id)))
            .map_err(PartialSignals::none)?;
        let mut url = first.clone();
        let mut out: Vec<Signal> = Vec::new();
        let mut seen = HashSet::new();
        for page_number in 0..MAX_SIGNAL_PAGES {
            let fail = |out: Vec<Signal>, e: ApiError| PartialSignals {
                received: out,
                error: if page_number == 0 {
                    e
                } else {
                    e.on_continuation()
                },
            };
            let (bytes, request_id) = match self
                .send(
                    EP,
                    Method::GET,
                    url.clone(),
                    Some(user_id),
                    None,
                    Some(sent),
                )
                .await
            {
                Ok(r) => r,
                Err(e) => return Err(fail(out, e)),
            };
            let page = match SignalsPage::parse_bytes(&bytes) {
                Ok(p) => p,
                Err(e) => return Err(fail(out, malformed(EP, e, request_id))),
            };
            out.extend(page.signals);
            let Some(next) = page.next else {
                return Ok(out);
            };
            let Some(next_url) = self.resolve_link(&next, &first) else {
                let e = malformed(
                    EP,
                    format!("links.next {next:?} leaves the vehicle's signals"),
                    request_id,
                );
                return Err(PartialSignals {
                    received: out,
                    error: e.on_continuation(),
                });
            };
            if next_url == url || !seen.insert(next_url.clone()) {
                let e = ApiError::new(ErrorKind::Runaway, EP)
                    .with_detail("links.next repeats a page")
                    .with_request_id(request_id);
                return Err(PartialSignals {
                    received: out,
                    error: e.on_continuation(),
                });
            }
            url = next_url;
        }
        Err(PartialSignals {
            received: out,
            error: ApiError::new(ErrorKind::Runaway, EP)
                .with_detail(format!("more than {MAX_SIGNAL_PAGES} signal pages"))
                .on_continuation(),
        })
    }

    /// `GET /vehicles/{id}`.
    pub async fn vehicle(&self, vehicle_id: &str, user_id: &str) -> Result<VehicleInfo, ApiError> {
        const EP: &str = "vehicle";
        let url = self.url(EP, &format!("vehicles/{}", encode(vehicle_id)))?;
        let (v, request_id) = self.get_json(EP, url, Some(user_id)).await?;
        VehicleInfo::parse(&v).map_err(|e| malformed(EP, e, request_id))
    }

    fn url(&self, endpoint: &'static str, path: &str) -> Result<Url, ApiError> {
        self.inner.api_url.join(path).map_err(|e| {
            ApiError::new(ErrorKind::Malformed, endpoint).with_detail(format!("bad url: {e}"))
        })
    }

    /// Resolves a `links.next`: absolute, `/v3/…`, or root-relative to the v3 base as in the
    /// contract's examples; `None` unless it stays on `first`'s origin and under its path (the
    /// same list of the same vehicle). Any other link would carry our token away, or page
    /// through something else.
    fn resolve_link(&self, link: &str, first: &Url) -> Option<Url> {
        let base = &self.inner.api_url;
        let link = link.trim();
        let url = if link.starts_with("http://") || link.starts_with("https://") {
            Url::parse(link).ok()?
        } else if link.starts_with(base.path()) {
            base.join(link).ok()?
        } else if link.starts_with('/') {
            base.join(link.trim_start_matches('/')).ok()?
        } else {
            // A link relative to the current page (`signals?page[number]=2`), as a browser
            // would resolve it.
            first.join(link).ok()?
        };
        // The signals path itself, or below it at a segment boundary (`…/signals/2`), never a
        // sibling such as `…/signals-other` or another vehicle.
        let prefix = first.path().trim_end_matches('/');
        let path = url.path().trim_end_matches('/');
        let within = path == prefix
            || path
                .strip_prefix(prefix)
                .is_some_and(|rest| rest.starts_with('/'));
        (url.origin() == first.origin() && within && url.fragment().is_none()).then_some(url)
    }

    /// GET with the full gate; returns the JSON body and the request id.
    async fn get_json(
        &self,
        endpoint: &'static str,
        url: Url,
        user_id: Option<&str>,
    ) -> Result<(Value, Option<String>), ApiError> {
        let (body, request_id) = self
            .send(endpoint, Method::GET, url, user_id, None, None)
            .await?;
        let v = serde_json::from_slice(&body)
            .map_err(|e| malformed(endpoint, format!("not JSON: {e}"), request_id.clone()))?;
        Ok((v, request_id))
    }

    /// One API request (vehicle or Management API) through the full gate: the shared rate
    /// budget, the app pause, the application token (one retry after a 401), the answer
    /// classified once for the metrics and the token's audit, and a 429 turned into a pause or
    /// a vehicle throttle. Returns the raw body of a success answer and the request id.
    /// `sent` counts the requests that left (the allowance corrects its count with it).
    async fn send(
        &self,
        endpoint: &'static str,
        method: Method,
        url: Url,
        user_id: Option<&str>,
        body: Option<&Value>,
        sent: Option<&AtomicU32>,
    ) -> Result<(Vec<u8>, Option<String>), ApiError> {
        let inner = &*self.inner;
        let mut reauthenticated = false;
        loop {
            // A request slot first, then a rate token: a token is never held while waiting.
            // Held until the answer's body is read (dropped at the end of this iteration).
            // (The semaphore is never closed, so `acquire` cannot fail.)
            let _slot = match &inner.in_flight {
                Some(s) => {
                    let waiting = WaitingForSlot::new(inner);
                    let permit = s.acquire().await.ok();
                    drop(waiting);
                    permit
                }
                None => None,
            };
            if let Some(budget) = &inner.budget {
                budget.acquire().await;
            }
            // After the limiter: a pause may have started while this call waited.
            if let Some(until) = self.paused_until() {
                return Err(ApiError::new(ErrorKind::Paused(until), endpoint));
            }
            let token = inner
                .tokens
                .get()
                .await
                .map_err(|e| ApiError::new(ErrorKind::Token(e), endpoint))?;
            let mut req = inner
                .http
                .request(method.clone(), url.clone())
                .bearer_auth(token.expose())
                .timeout(inner.timeout);
            if let Some(u) = user_id {
                req = req.header("sc-user-id", u);
            }
            if let Some(b) = body {
                req = req.json(b);
            }
            if let Some(sent) = sent {
                sent.fetch_add(1, Ordering::Relaxed);
            }
            let resp = match req.send().await {
                Ok(r) => r,
                Err(e) => return Err(self.transport_error(endpoint, &e)),
            };
            let status = resp.status();
            let headers = resp.headers().clone();
            let request_id = headers
                .get("sc-request-id")
                .and_then(|v| v.to_str().ok())
                .map(str::to_owned);
            let answer = match resp.bytes().await {
                Ok(b) => b,
                Err(e) => return Err(self.transport_error(endpoint, &e)),
            };
            // One classification of the answer, counted by the metrics and the token's audit.
            let class = CallClass::of_status(status.as_u16());
            crate::events::api_call(endpoint, class);
            inner.tokens.audit().call(&token.fingerprint, class);
            if status.is_success() {
                return Ok((answer.to_vec(), request_id));
            }
            let err = ApiError::from_response(
                endpoint,
                status.as_u16(),
                &headers,
                &answer,
                Utc::now(),
                inner.max_retry_after,
            );
            match status {
                // Drop that token (once, however many calls saw it fail), retry once.
                StatusCode::UNAUTHORIZED if !reauthenticated => {
                    inner.tokens.invalidate(token.generation);
                    reauthenticated = true;
                    continue;
                }
                StatusCode::TOO_MANY_REQUESTS => {
                    match err.action(Utc::now()) {
                        super::Action::PauseApp(until) => {
                            if let Some(budget) = &inner.budget {
                                budget.throttled_app(Utc::now());
                            }
                            // Stop this process's other workers before they send.
                            self.pause_until(until);
                            crate::events::rate_limited(
                                crate::events::RateScope::App,
                                until,
                                err.request_id.as_deref(),
                            );
                        }
                        super::Action::RetryAt(until) => {
                            if let Some(budget) = &inner.budget {
                                budget.throttled_vehicle();
                            }
                            crate::events::rate_limited(
                                crate::events::RateScope::Vehicle,
                                until,
                                err.request_id.as_deref(),
                            );
                        }
                        _ => {}
                    }
                }
                s if s.is_server_error() => {}
                _ => {}
            }
            return Err(err);
        }
    }

    /// `POST {management}/subscriptions` (contract §8): subscribes the vehicle to the webhook.
    /// `Ok(true)`: created (202); `Ok(false)`: it already existed (409).
    pub async fn subscribe(
        &self,
        management: &Url,
        webhook_id: &str,
        user_id: &str,
        vehicle_id: &str,
    ) -> Result<bool, ApiError> {
        const EP: &str = "subscriptions";
        let url = join_base(management, "subscriptions", EP)?;
        let body = serde_json::json!({"data": {"attributes": {
            "webhookId": webhook_id, "userId": user_id, "vehicleId": vehicle_id}}});
        match self
            .send(EP, Method::POST, url, None, Some(&body), None)
            .await
        {
            Ok(_) => Ok(true),
            Err(e) if e.status() == Some(409) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// `DELETE {management}/subscriptions/{webhookId}/vehicles/{vehicleId}`. `Ok(false)`: there
    /// was no such subscription (404), which is what was wanted.
    pub async fn unsubscribe(
        &self,
        management: &Url,
        webhook_id: &str,
        vehicle_id: &str,
    ) -> Result<bool, ApiError> {
        const EP: &str = "subscriptions";
        let path = format!(
            "subscriptions/{}/vehicles/{}",
            encode(webhook_id),
            encode(vehicle_id)
        );
        let url = join_base(management, &path, EP)?;
        match self.send(EP, Method::DELETE, url, None, None, None).await {
            Ok(_) => Ok(true),
            Err(e) if e.status() == Some(404) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn transport_error(&self, endpoint: &'static str, e: &reqwest::Error) -> ApiError {
        crate::events::api_call(endpoint, CallClass::NoAnswer);
        let kind = if e.is_timeout() {
            ErrorKind::Timeout
        } else {
            ErrorKind::Transport
        };
        ApiError::new(kind, endpoint).with_detail(describe_transport(e))
    }
}

fn malformed(endpoint: &'static str, e: impl ToString, request_id: Option<String>) -> ApiError {
    ApiError::new(ErrorKind::Malformed, endpoint)
        .with_detail(e.to_string())
        .with_request_id(request_id)
}

/// `base` (e.g. the Management API's `…/v3`) joined with `path`.
fn join_base(base: &Url, path: &str, endpoint: &'static str) -> Result<Url, ApiError> {
    let mut b = base.as_str().trim_end_matches('/').to_owned();
    b.push('/');
    Url::parse(&b).and_then(|u| u.join(path)).map_err(|e| {
        ApiError::new(ErrorKind::Malformed, endpoint).with_detail(format!("bad url: {e}"))
    })
}

/// Ids are opaque; keep them to one path segment.
fn encode(id: &str) -> String {
    url::form_urlencoded::byte_serialize(id.as_bytes()).collect()
}

/// Pages through `GET /connections` (contract §3). It ends on any last-page signal, and a server
/// that repeats a page or never ends cannot keep it going: a repeated page or more pages than
/// possible is an error.
pub struct ConnectionsPager {
    client: Client,
    user_id: Option<String>,
    page: i64,
    done: bool,
    /// Fingerprints of the pages seen so far (connection ids), to catch a repeated page.
    seen: HashSet<Vec<String>>,
}

impl ConnectionsPager {
    /// The next page, or `None` after the last.
    pub async fn next_page(&mut self) -> Option<Result<ConnectionsPage, ApiError>> {
        if self.done {
            return None;
        }
        let runaway = |detail: &str| {
            Some(Err(
                ApiError::new(ErrorKind::Runaway, "connections").with_detail(detail.to_owned())
            ))
        };
        if self.page > MAX_PAGES {
            self.done = true;
            return runaway("more pages than the cap allows");
        }
        let result = self
            .client
            .connections_page(self.user_id.as_deref(), self.page)
            .await;
        let page = match result {
            Ok(p) => p,
            Err(e) => {
                self.done = true;
                return Some(Err(e));
            }
        };
        let fingerprint: Vec<String> = page
            .connections
            .iter()
            .map(|c| c.connection_id.clone())
            .collect();
        if !fingerprint.is_empty() && !self.seen.insert(fingerprint) {
            self.done = true;
            return runaway(&format!("page {} repeats an earlier page", self.page));
        }
        if let (Some(total), Some(size)) = (page.total_count, page.page_size)
            && size > 0
            && self.page > total / size + 1
        {
            self.done = true;
            return runaway("more pages than totalCount allows");
        }
        self.done = page.is_last(self.page, PAGE_SIZE);
        self.page += 1;
        Some(Ok(page))
    }

    /// Every connection on every page.
    pub async fn collect_all(mut self) -> Result<Vec<Connection>, ApiError> {
        let mut all = Vec::new();
        while let Some(page) = self.next_page().await {
            all.extend(page?.connections);
        }
        Ok(all)
    }

    /// Pages fetched so far (counting from page 1, whatever the starting page).
    pub fn pages_fetched(&self) -> i64 {
        self.page - 1
    }

    /// The page the next call fetches.
    pub fn next_page_number(&self) -> i64 {
        self.page
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::smartcar::{SecretSource, TokenConfig};

    #[tokio::test]
    async fn links_resolve_only_within_the_vehicles_signals() {
        let http = http_client(Duration::from_secs(1)).unwrap();
        let secret = SecretSource::value(secrecy::SecretString::from("s".to_owned()));
        let cfg = TokenConfig::new("http://127.0.0.1:9/token".into(), "id".into(), secret);
        let stop = tokio_util::sync::CancellationToken::new();
        let tokens = TokenProvider::start(
            cfg,
            http.clone(),
            stop.clone(),
            &tokio_util::task::TaskTracker::new(),
        );
        let client = Client::new(
            ClientConfig {
                api_url: "https://api.example/v3".into(),
                request_timeout: Duration::from_secs(1),
                vehicle_mode: "live".into(),
                max_retry_after: Duration::from_secs(3600),
                max_in_flight: 0,
            },
            http,
            tokens,
            None,
        )
        .unwrap();
        let first = client.url("signals", "vehicles/v1/signals").unwrap();
        let want = "https://api.example/v3/vehicles/v1/signals?page[number]=2";
        for link in [
            "/vehicles/v1/signals?page[number]=2",
            "/v3/vehicles/v1/signals?page[number]=2",
            "https://api.example/v3/vehicles/v1/signals?page[number]=2",
            "signals?page[number]=2",
        ] {
            let got = client.resolve_link(link, &first).map(|u| u.to_string());
            assert_eq!(got.as_deref(), Some(want), "{link}");
        }
        assert!(
            client
                .resolve_link("/vehicles/v1/signals/2", &first)
                .is_some()
        );
        for link in [
            "https://evil.example/v3/vehicles/v1/signals?page[number]=2",
            "http://api.example/v3/vehicles/v1/signals?page[number]=2",
            "/vehicles/v2/signals?page[number]=2",
            "/vehicles/v1/signals-all?page[number]=2",
            "/vehicles/v1?page[number]=2",
            "/connections?page[number]=2",
            "/vehicles/v1/signals/../../v2/signals",
        ] {
            assert_eq!(client.resolve_link(link, &first), None, "{link}");
        }
        stop.cancel();
    }
}
