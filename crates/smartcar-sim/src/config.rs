//! Configuration of the fake: fleet size, credentials, limits, faults and the response variants
//! the contract says a client must accept.

use std::time::Duration;

/// Everything that shapes one simulator instance. Runtime knobs (faults, secrets, bucket) can
/// also be changed later through [`super::Simulator`].
#[derive(Clone, Debug)]
pub struct SimConfig {
    /// Number of generated users.
    pub users: usize,
    /// Vehicles generated per user.
    pub vehicles_per_user: usize,
    /// Seed of the deterministic fleet: same seed, same ids, same readings.
    pub seed: u64,
    pub client_id: String,
    /// Accepted secrets; Smartcar allows up to three live at once (only the first three count).
    pub client_secrets: Vec<String>,
    pub token_lifetime: Duration,
    /// How often each reading changes.
    pub update_period: Duration,
    /// Added to every API call (not the token endpoint).
    pub latency: Duration,
    /// Application token bucket; `None` = unlimited.
    pub app_bucket: Option<Bucket>,
    /// Per-vehicle throttle: a call sooner than this after the previous admitted call to the same
    /// vehicle gets 429 RATE_LIMIT/VEHICLE.
    pub vehicle_min_interval: Option<Duration>,
    pub faults: Faults,
    pub variants: Variants,
    /// Keep every distinct SUCCESS reading served, so a test can compare the database with it.
    pub record_served: bool,
    /// Key of the webhook signature (the Application Management Token).
    pub management_token: String,
    /// Per-vehicle allowance (§6): past `calls` vehicle-scoped calls in one period, 430.
    pub allowance: Option<VehicleAllowance>,
    /// Fixed behaviours by creation order: a third parked, a third charging, a third driving
    /// (index % 3), instead of each vehicle's generated cycle.
    pub behaviour_thirds: bool,
    /// Where pushed `VEHICLE_STATE` webhooks go (`http://HOST:PORT/PATH`), for vehicles
    /// subscribed through the Management API (§8); `None`: nothing is pushed.
    pub webhook_url: Option<String>,
    /// How often each subscribed vehicle's readings are pushed.
    pub webhook_every: Duration,
}

/// A per-vehicle allowance: `calls` per period, periods aligned to the Unix epoch (period k
/// runs from k·period to (k+1)·period, wall clock).
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct VehicleAllowance {
    pub calls: u32,
    pub period: Duration,
}

/// A fixed vehicle behaviour (see `SimConfig::behaviour_thirds`, `Simulator::set_behaviour`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum Behaviour {
    /// Nothing changes: odometer, location and charge hold still.
    Parked,
    /// `charge-ischarging` true, state of charge rising.
    Charging,
    /// Odometer and location change with every update period.
    Driving,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            users: 3,
            vehicles_per_user: 2,
            seed: 1,
            client_id: "sim-client-id".to_owned(),
            client_secrets: vec!["sim-client-secret".to_owned()],
            token_lifetime: Duration::from_secs(3600),
            update_period: Duration::from_secs(60),
            latency: Duration::ZERO,
            app_bucket: None,
            vehicle_min_interval: None,
            faults: Faults::default(),
            variants: Variants::default(),
            record_served: true,
            management_token: "sim-management-token".to_owned(),
            allowance: None,
            behaviour_thirds: false,
            webhook_url: None,
            webhook_every: Duration::from_secs(10),
        }
    }
}

/// Application token bucket (§6): `capacity` requests, refilled continuously.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Bucket {
    pub capacity: f64,
    pub refill_per_second: f64,
}

impl Bucket {
    /// The documented default: 120 requests, refilling at 2 per minute.
    pub fn documented() -> Bucket {
        Bucket {
            capacity: 120.0,
            refill_per_second: 2.0 / 60.0,
        }
    }
}

/// Random faults, rolled once per API call (token endpoint excluded).
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Faults {
    /// Fraction answered 500, 502 (HTML body) or 503, equally.
    pub error_rate: f64,
    /// Fraction answered only after `slow_delay`.
    pub slow_rate: f64,
    pub slow_delay: Duration,
    /// Fraction answered 401 AUTHENTICATION as if the token had expired (it then is expired).
    pub expired_token_rate: f64,
}

/// Which of the documented shapes the fake produces.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Variants {
    pub paging: PagingVariant,
    /// Format of signals' `retrievedAt` / `oemUpdatedAt` (webhooks always use epoch ms).
    pub timestamps: TimestampFormat,
    pub year_as_string: bool,
    pub user_id_location: UserIdLocation,
    /// Single resources wrapped as `{"data": {…}}` (true, the default) or bare.
    pub wrapped_resources: bool,
    pub error_body: ErrorBodyVariant,
    /// `None`: all signals in one page; `Some(n)`: `n` per page with `links.next`.
    pub signals_page_size: Option<usize>,
    /// `Retry-After` as an HTTP date instead of whole seconds (same as
    /// `retry_after_form: RetryAfterForm::HttpDate`).
    pub retry_after_http_date: bool,
    /// The form of `Retry-After` on every 429 (overridden by `retry_after_http_date`).
    pub retry_after_form: RetryAfterForm,
    /// How a paged signals answer writes `links.next`.
    pub signals_link: LinkStyle,
    /// Every numeric `value` nudged so that it needs all 17 significant digits
    /// (`115071.50046584333`): a client that parses or re-serialises inexactly shows it.
    pub precise_values: bool,
    /// Signal codes and ids in camelCase (`chargeVoltage`, `tractionBatteryStateOfCharge`).
    pub camel_case_codes: bool,
    /// Units as other sources spell them: `percentage`, `km`, `mi`.
    pub unit_aliases: bool,
    /// State of charge as the legacy body `{"percentage": 75}`, with no `value` or `unit`.
    pub legacy_soc_body: bool,
    /// `closure-islocked` carries an empty `meta` (no `oemUpdatedAt`, no `retrievedAt`); such
    /// readings are not recorded as served (a client cannot key them).
    pub empty_meta: bool,
    /// `lowvoltagebattery-stateofcharge` carries an impossible `oemUpdatedAt`, by vehicle:
    /// `10000-01-01T00:00:00Z`, `+12345-01-01T00:00:00`, `-0001-01-01T00:00:00`, `8e15` ms,
    /// `9999-12-31T23:59:59Z`, `1999-12-31T23:59:59Z`. Not recorded as served.
    pub out_of_range_times: bool,
    /// Every signals answer and webhook carries one more signal whose code is 80 characters.
    pub overlong_code: bool,
    /// Webhook signals carry `meta.fetchedAt` instead of `meta.retrievedAt`.
    pub webhook_fetched_at: bool,
    /// Format of a webhook envelope's `meta.deliveredAt`.
    pub webhook_delivered_at: TimestampFormat,
}

impl Default for Variants {
    /// The shapes of the contract's examples; single resources wrapped (the JSON:API form).
    fn default() -> Self {
        Variants {
            paging: PagingVariant::Standard,
            timestamps: TimestampFormat::EpochMillis,
            year_as_string: false,
            user_id_location: UserIdLocation::Relationships,
            wrapped_resources: true,
            error_body: ErrorBodyVariant::V3,
            signals_page_size: None,
            retry_after_http_date: false,
            retry_after_form: RetryAfterForm::Seconds,
            signals_link: LinkStyle::RootRelative,
            precise_values: false,
            camel_case_codes: false,
            unit_aliases: false,
            legacy_soc_body: false,
            empty_meta: false,
            out_of_range_times: false,
            overlong_code: false,
            webhook_fetched_at: false,
            webhook_delivered_at: TimestampFormat::EpochMillis,
        }
    }
}

/// Paging metadata of `/connections` (§3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum PagingVariant {
    /// `meta.pageNumber/pageSize/totalCount`, links `self/first/prev/next/last` (null when none).
    #[default]
    Standard,
    /// `meta.page` instead of `meta.pageNumber`, `links.previous` instead of `links.prev`.
    Alternate,
    /// Totals in `meta` and no `links` object: the client must stop on `pageNumber*pageSize >= totalCount`.
    TotalsOnly,
    /// No `totalCount`; `links.next` present only while there is a next page.
    LinksOnly,
}

/// Timestamp encodings seen in signal metadata (§4).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum TimestampFormat {
    #[default]
    EpochMillis,
    EpochSeconds,
    Iso8601,
}

/// Where a connection carries its user id (§3).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum UserIdLocation {
    /// `relationships.user.data.id`
    #[default]
    Relationships,
    /// `attributes.user.id` only
    Attributes,
    Both,
}

/// Error body shape (§5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum ErrorBodyVariant {
    /// `{"errors":[{"status":"429",…,"meta":{"debug":{"requestId"}}}]}`
    #[default]
    V3,
    /// The smallest published v3 form: `{"errors":[{"status","code","title","detail"}]}` with
    /// `code` in snake case (`rate_limit`) and no type, resolution or request id.
    V3Minimal,
    /// Flat `{"type","code","description","statusCode","requestId","resolution"}`
    V2,
    /// Flat v2 with `"resolution": {"type": null}`.
    V2ResolutionTypeNull,
    /// Flat v2 with `"resolution": "RETRY_LATER"` (a bare string).
    V2ResolutionString,
    /// Flat v2 with `"resolution": null`.
    V2ResolutionNull,
    /// v1 `{"error","message","code"}`.
    V1,
}

/// The form of `Retry-After` (§5: whole seconds is the standard; the others occur).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum RetryAfterForm {
    /// Whole seconds, rounded up.
    #[default]
    Seconds,
    /// An IMF-fixdate (`Wed, 21 Oct 2015 07:28:09 GMT`).
    HttpDate,
    /// The absolute time in epoch milliseconds (`1731926100000`).
    EpochMillis,
    /// The absolute time in epoch seconds (`1731926100`).
    EpochSeconds,
}

/// How `links.next` of a paged signals answer is written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
pub enum LinkStyle {
    /// `/vehicles/{id}/signals?…`, relative to the API base (the contract's examples).
    #[default]
    RootRelative,
    /// `/v3/vehicles/{id}/signals?…`
    ApiPrefixed,
    /// `http://HOST/v3/vehicles/{id}/signals?…`
    Absolute,
    /// `http://127.0.0.2:PORT/v3/vehicles/{id}/signals?…`: another origin (must not be followed).
    ForeignOrigin,
    /// `/vehicles/{id}/signals/../../{other}/signals?…`-style: another vehicle's signals (must not
    /// be followed); written as `/vehicles/not-{id}/signals?…`.
    OtherVehicle,
}

/// An error every signals call of one vehicle answers (see `force_vehicle_error`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
pub enum ForcedError {
    /// 403 PERMISSION
    Permission,
    /// 404 RESOURCE_NOT_FOUND
    NotFound,
    /// 430 BILLING/VEHICLE_REQUEST_LIMIT
    Billing,
    /// 501 COMPATIBILITY/VEHICLE_NOT_CAPABLE
    Incompatible,
    /// 400 CONNECTED_SERVICES_ACCOUNT/ACCOUNT_ISSUE
    ConnectedServicesAccount,
    /// 409 VEHICLE_STATE/ASLEEP
    Asleep,
    /// 409 VEHICLE_STATE/UNREACHABLE
    Unreachable,
    /// 400 VALIDATION/PARAMETER
    Validation,
    /// 500 SERVER/INTERNAL
    Server,
    /// 503 UPSTREAM/RATE_LIMIT: the carmaker's limit
    UpstreamRateLimit,
    /// 504 UPSTREAM/TIMEOUT
    GatewayTimeout,
    /// 429 RATE_LIMIT/VEHICLE with `Retry-After: 2` (in the configured form) on every call
    VehicleRateLimit,
}

/// Whether a vehicle is visible by default (`live`) or only with `filter[vehicle.mode]=simulated`.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize)]
pub enum VehicleMode {
    #[default]
    Live,
    Simulated,
}

impl VehicleMode {
    pub(crate) fn as_str(self) -> &'static str {
        match self {
            VehicleMode::Live => "live",
            VehicleMode::Simulated => "simulated",
        }
    }
}
