//! Configuration: `config.toml`, then the environment on top, validated as a whole.
//!
//! Every key has a default (the commented `config.toml` at the repository root lists them). An
//! unknown key or a bad value is a [`ConfigError`] naming the key; the CLI exits with status 78
//! (`EX_CONFIG`) on it. Secrets are `SecretString`s: `Debug` of the config shows none of them.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use secrecy::{ExposeSecret, SecretString};
use serde::Deserialize;

use crate::smartcar::SecretSource;

/// A configuration problem, naming the key (`queue.concurrency`) and what is wrong with it.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: not valid TOML: {message}")]
    Syntax { path: PathBuf, message: String },
    #[error("{key}: {message}")]
    Invalid { key: String, message: String },
}

fn invalid(key: &str, message: impl Into<String>) -> ConfigError {
    ConfigError::Invalid {
        key: key.to_owned(),
        message: message.into(),
    }
}

/// The whole configuration after layering and validation.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub smartcar: SmartcarConfig,
    pub database: DatabaseConfig,
    pub schedule: ScheduleConfig,
    pub rate_limit: RateLimitConfig,
    pub queue: QueueConfig,
    pub log: LogConfig,
    pub http: HttpConfig,
    pub connect: ConnectConfig,
    pub retention: RetentionConfig,
    pub storage: StorageConfig,
    pub budget: BudgetConfig,
    pub webhooks: WebhooksConfig,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct SmartcarConfig {
    pub auth_url: String,
    pub api_url: String,
    pub client_id: String,
    /// Allowed, but prefer `SMARTCAR_CLIENT_SECRET` or `client_secret_file`.
    pub client_secret: Option<SecretString>,
    /// A file holding the secret (systemd: `$CREDENTIALS_DIRECTORY/client_secret`); re-read on
    /// every token request, so rotating it needs no restart.
    pub client_secret_file: Option<PathBuf>,
    /// The application management token, key of webhook signatures.
    pub management_token: Option<SecretString>,
    pub management_token_file: Option<PathBuf>,
    /// The Management API (webhook subscriptions, contract §8).
    pub management_url: String,
    /// `live` or `simulated`.
    pub vehicle_mode: String,
    #[serde(with = "duration_str")]
    pub request_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DatabaseConfig {
    /// `sqlite://path` (embedded default) or `postgres://…`.
    pub url: String,
    /// Pool size; a SQLite file gets one connection more, kept for writes.
    pub max_connections: u32,
    #[serde(with = "duration_str")]
    pub statement_timeout: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ScheduleConfig {
    /// 6-field cron (seconds first), UTC: page every user's connections.
    pub connections: String,
    /// 6-field cron (seconds first), UTC: poll every connected vehicle's signals.
    pub signals: String,
    /// Page the application-wide connections to discover users on each connections tick.
    pub discover_users: bool,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RateLimitConfig {
    /// Steady rate for all API calls of this process (token endpoint excluded); 0 disables.
    pub requests_per_minute: u32,
    pub burst: u32,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct QueueConfig {
    /// Requests in flight at most; the queue runs `queue::WORKERS_PER_REQUEST` times as many jobs.
    pub concurrency: usize,
    pub max_attempts: u32,
    #[serde(with = "duration_str")]
    pub shutdown_grace: Duration,
    /// How long a claim lasts without a heartbeat; a dead worker's job is retaken after it.
    #[serde(with = "duration_str")]
    pub lease: Duration,
    #[serde(with = "duration_str")]
    pub backoff_min: Duration,
    #[serde(with = "duration_str")]
    pub backoff_max: Duration,
    /// Done jobs are deleted after this long (dead ones are kept for `status`).
    #[serde(with = "duration_str")]
    pub keep_done: Duration,
    /// The longest wait a `Retry-After` header (or a throttled vehicle's growing backoff) can
    /// impose; a larger or far-future value is capped to it.
    #[serde(with = "duration_str")]
    pub max_retry_after: Duration,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (human, for a terminal) or `json` (for a log pipeline).
    pub format: LogFormat,
    /// A tracing filter, e.g. `info` or `smartcar_sync=debug`.
    pub level: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct HttpConfig {
    /// The public listener: webhooks, the Connect callback and `/healthz`; empty turns the
    /// server off.
    pub listen: String,
    /// The admin listener: `/metrics`, `/readyz`, `/healthz` and issuing Connect URLs.
    /// Loopback by default; empty serves those routes on `listen` instead.
    pub admin_listen: String,
    /// Lets an application that builds its own Connect URLs sign `state` itself
    /// (`NONCE.EXPIRES.HMAC`); such a state is still single-use and expiring.
    pub connect_state_secret: Option<SecretString>,
    /// VERIFY is answered only this long after start or SIGHUP; `0s` never answers it.
    #[serde(with = "duration_str")]
    pub verify_window: Duration,
    /// A client must send a request's headers within this (also the keep-alive idle limit).
    #[serde(with = "duration_str")]
    pub header_timeout: Duration,
    /// A client must send a request's whole body within this.
    #[serde(with = "duration_str")]
    pub body_timeout: Duration,
    /// Connections open at once per listener; more are closed at accept.
    pub max_connections: usize,
    /// Request body bytes buffered at once, over all connections; past it a request gets 503.
    pub max_body_bytes_in_flight: usize,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct ConnectConfig {
    /// Smartcar Connect's authorization URL.
    pub authorize_url: String,
    /// The redirect URI registered with Smartcar: where `/connect/callback` is reached.
    pub redirect_uri: String,
    /// The permissions asked for, space-separated.
    pub scope: String,
    /// How long an issued Connect URL (its `state`) stays valid.
    #[serde(with = "duration_str")]
    pub state_ttl: Duration,
    /// New users the Connect callback may register per rolling hour.
    pub max_new_users_per_hour: u32,
}

/// `[budget]`: each vehicle's allowance of API calls per billing period (contract §6), and how
/// the planner ([`crate::plan`]) spends it.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct BudgetConfig {
    /// Calls per vehicle per period; 0 = unlimited (the planner is off, the signals cron polls
    /// every vehicle on every tick as before).
    pub calls_per_vehicle: u32,
    /// `"month"` (calendar month, UTC) or a duration (`"60s"`), aligned to the Unix epoch.
    pub period: String,
    /// The shortest gap between two polls of one vehicle.
    #[serde(with = "duration_str")]
    pub min_interval: Duration,
    /// Share of the allowance kept back for retries and on-demand calls (`"10%"` or `0.1`).
    pub reserve: Reserve,
}

/// `[webhooks]`: the webhook whose subscriptions the connections sync keeps (contract §8).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WebhooksConfig {
    /// The webhook's id (Smartcar's Dashboard creates webhooks); empty: no subscriptions kept.
    pub webhook_id: String,
}

/// A share between 0 and 1, written `"10%"` or `0.1`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Reserve(pub f64);

impl<'de> Deserialize<'de> for Reserve {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Num(f64),
        }
        let v = match Raw::deserialize(d)? {
            Raw::Num(n) => n,
            Raw::Text(s) => {
                let t = s.trim();
                match t.strip_suffix('%') {
                    Some(p) => p.trim().parse::<f64>().map(|n| n / 100.0),
                    None => t.parse::<f64>(),
                }
                .map_err(|_| {
                    serde::de::Error::custom(format!("{s:?} is not a share (e.g. \"10%\")"))
                })?
            }
        };
        Ok(Reserve(v))
    }
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            // A typical plan's figure (contract §6): a daemon installed with the defaults fits
            // it rather than getting 430s from day 10 on. Set your plan's number, or 0.
            calls_per_vehicle: 500,
            period: "month".into(),
            min_interval: Duration::from_secs(30 * 60),
            reserve: Reserve(0.1),
        }
    }
}

#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RetentionConfig {
    /// Drop samples older than this (e.g. `400d`); empty keeps everything.
    pub samples: String,
}

/// `[storage]`: how samples are kept (PostgreSQL).
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StorageConfig {
    /// Readings younger than this stay in the hot table (unique key, cheap repeats); hourly
    /// housekeeping moves older ones to the compact cold table. SQLite: unused.
    #[serde(with = "duration_str")]
    pub hot_window: Duration,
}

impl Default for StorageConfig {
    fn default() -> Self {
        StorageConfig {
            hot_window: Duration::from_secs(2 * 86_400),
        }
    }
}

impl Default for SmartcarConfig {
    fn default() -> Self {
        SmartcarConfig {
            auth_url: "https://iam.smartcar.com/oauth2/token".into(),
            api_url: "https://vehicle.api.smartcar.com/v3".into(),
            client_id: String::new(),
            client_secret: None,
            client_secret_file: None,
            management_token: None,
            management_token_file: None,
            management_url: "https://management.api.smartcar.com/v3".into(),
            vehicle_mode: "live".into(),
            request_timeout: Duration::from_secs(30),
        }
    }
}

impl Default for DatabaseConfig {
    fn default() -> Self {
        DatabaseConfig {
            url: "sqlite://smartcar-sync.db".into(),
            max_connections: 8,
            statement_timeout: Duration::from_secs(30),
        }
    }
}

impl Default for ScheduleConfig {
    fn default() -> Self {
        ScheduleConfig {
            connections: "0 0 * * * *".into(),
            signals: "0 */30 * * * *".into(),
            discover_users: true,
        }
    }
}

impl Default for RateLimitConfig {
    fn default() -> Self {
        // Smartcar's documented application bucket: 120 requests, refilling 2 per minute.
        RateLimitConfig {
            requests_per_minute: 2,
            burst: 120,
        }
    }
}

impl Default for QueueConfig {
    fn default() -> Self {
        QueueConfig {
            concurrency: 4,
            max_attempts: 8,
            shutdown_grace: Duration::from_secs(30),
            lease: Duration::from_secs(120),
            backoff_min: Duration::from_secs(2),
            backoff_max: Duration::from_secs(600),
            keep_done: Duration::from_secs(7 * 86_400),
            max_retry_after: Duration::from_secs(3600),
        }
    }
}

impl Default for LogConfig {
    fn default() -> Self {
        LogConfig {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

impl Default for HttpConfig {
    fn default() -> Self {
        HttpConfig {
            listen: "127.0.0.1:8080".into(),
            admin_listen: "127.0.0.1:9090".into(),
            connect_state_secret: None,
            verify_window: Duration::from_secs(3600),
            header_timeout: Duration::from_secs(10),
            body_timeout: Duration::from_secs(10),
            max_connections: 4096,
            max_body_bytes_in_flight: 8 * 1024 * 1024,
        }
    }
}

impl Default for ConnectConfig {
    fn default() -> Self {
        ConnectConfig {
            authorize_url: "https://connect.smartcar.com/oauth/authorize".into(),
            redirect_uri: String::new(),
            scope: "read_vehicle_info read_odometer read_battery read_charge read_location".into(),
            state_ttl: Duration::from_secs(3600),
            max_new_users_per_hour: 60,
        }
    }
}

/// The environment variables that override the file.
pub mod env {
    pub const DATABASE_URL: &str = "DATABASE_URL";
    pub const CLIENT_ID: &str = "SMARTCAR_CLIENT_ID";
    pub const CLIENT_SECRET: &str = "SMARTCAR_CLIENT_SECRET";
    pub const MANAGEMENT_TOKEN: &str = "SMARTCAR_MANAGEMENT_TOKEN";
    pub const LOG_FORMAT: &str = "SMARTCAR_SYNC_LOG_FORMAT";
    pub const LOG_LEVEL: &str = "SMARTCAR_SYNC_LOG";
    /// systemd's `LoadCredential=` directory: `client_secret` and `management_token` files.
    pub const CREDENTIALS_DIRECTORY: &str = "CREDENTIALS_DIRECTORY";
}

impl Config {
    /// Reads `path` (a missing file at the default path means "all defaults"), applies the
    /// environment through `getenv`, and validates.
    pub fn load(
        path: &Path,
        must_exist: bool,
        getenv: impl Fn(&str) -> Option<String>,
    ) -> Result<Config, ConfigError> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound && !must_exist => String::new(),
            Err(source) => {
                return Err(ConfigError::Read {
                    path: path.to_owned(),
                    source,
                });
            }
        };
        let mut config = Config::parse(&text, path)?;
        config.apply_env(getenv);
        config.validate()?;
        Ok(config)
    }

    /// Parses TOML text; an unknown key or a wrongly typed value names its full key.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let table: toml::Table =
            text.parse()
                .map_err(|e: toml::de::Error| ConfigError::Syntax {
                    path: path.to_owned(),
                    message: e.message().to_owned(),
                })?;
        serde_path_to_error::deserialize(toml::Value::Table(table)).map_err(|e| {
            let key = e.path().to_string();
            let inner = e.into_inner().message().to_owned();
            // serde's path may stop at the table for an unknown field; name the field itself.
            let key = match unknown_field(&inner) {
                Some(field) if key == "." => field,
                Some(field) if key != field && !key.ends_with(&format!(".{field}")) => {
                    format!("{key}.{field}")
                }
                _ => key,
            };
            invalid(&key, inner)
        })
    }

    fn apply_env(&mut self, getenv: impl Fn(&str) -> Option<String>) {
        let set = |v: Option<String>| v.filter(|s| !s.is_empty());
        if let Some(v) = set(getenv(env::DATABASE_URL)) {
            self.database.url = v;
        }
        if let Some(v) = set(getenv(env::CLIENT_ID)) {
            self.smartcar.client_id = v;
        }
        // A secret variable that is set but empty is an error (validate names it), not
        // "unset": `SMARTCAR_MANAGEMENT_TOKEN=$UNSET_VAR` must not mean "sign with nothing".
        if let Some(v) = getenv(env::CLIENT_SECRET) {
            self.smartcar.client_secret = Some(SecretString::from(v));
        }
        if let Some(v) = getenv(env::MANAGEMENT_TOKEN) {
            self.smartcar.management_token = Some(SecretString::from(v));
        }
        if let Some(dir) = set(getenv(env::CREDENTIALS_DIRECTORY)) {
            let dir = PathBuf::from(dir);
            let secret = dir.join("client_secret");
            if self.smartcar.client_secret_file.is_none() && secret.exists() {
                self.smartcar.client_secret_file = Some(secret);
            }
            let mgmt = dir.join("management_token");
            if self.smartcar.management_token_file.is_none() && mgmt.exists() {
                self.smartcar.management_token_file = Some(mgmt);
            }
        }
        if let Some(v) = set(getenv(env::LOG_FORMAT)) {
            match v.as_str() {
                "json" => self.log.format = LogFormat::Json,
                "text" => self.log.format = LogFormat::Text,
                _ => {}
            }
        }
        if let Some(v) = set(getenv(env::LOG_LEVEL)) {
            self.log.level = v;
        }
    }

    /// Checks every value that has a shape beyond its type.
    pub fn validate(&self) -> Result<(), ConfigError> {
        let s = &self.smartcar;
        for (key, url) in [
            ("smartcar.auth_url", &s.auth_url),
            ("smartcar.api_url", &s.api_url),
            ("smartcar.management_url", &s.management_url),
        ] {
            match reqwest::Url::parse(url) {
                Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
                Ok(_) => return Err(invalid(key, "must be an http(s) URL")),
                Err(e) => return Err(invalid(key, format!("not a URL: {e}"))),
            }
        }
        if !matches!(s.vehicle_mode.as_str(), "live" | "simulated") {
            return Err(invalid(
                "smartcar.vehicle_mode",
                "must be \"live\" or \"simulated\"",
            ));
        }
        if s.request_timeout.is_zero() {
            return Err(invalid("smartcar.request_timeout", "must be more than 0"));
        }
        validate_secrets(self)?;
        validate_database_url(&self.database.url)?;
        if self.database.max_connections == 0 {
            return Err(invalid("database.max_connections", "must be at least 1"));
        }
        for (key, expr) in [
            ("schedule.connections", &self.schedule.connections),
            ("schedule.signals", &self.schedule.signals),
        ] {
            crate::schedule::parse_cron(expr).map_err(|e| invalid(key, e))?;
        }
        if self.rate_limit.requests_per_minute > 0 && self.rate_limit.burst == 0 {
            return Err(invalid("rate_limit.burst", "must be at least 1"));
        }
        let q = &self.queue;
        if q.concurrency == 0 || q.concurrency > 1024 {
            return Err(invalid("queue.concurrency", "must be between 1 and 1024"));
        }
        if q.max_attempts == 0 {
            return Err(invalid("queue.max_attempts", "must be at least 1"));
        }
        if q.lease < Duration::from_secs(1) {
            return Err(invalid("queue.lease", "must be at least 1s"));
        }
        if q.backoff_min.is_zero() || q.backoff_max < q.backoff_min {
            return Err(invalid(
                "queue.backoff_max",
                "backoff_min must be > 0 and backoff_max >= backoff_min",
            ));
        }
        if q.max_retry_after < Duration::from_secs(1)
            || q.max_retry_after > Duration::from_secs(30 * 86_400)
        {
            return Err(invalid(
                "queue.max_retry_after",
                "must be between 1s and 30d",
            ));
        }
        let h = &self.http;
        for (key, addr) in [
            ("http.listen", &h.listen),
            ("http.admin_listen", &h.admin_listen),
        ] {
            if !addr.is_empty() && SocketAddr::from_str(addr).is_err() {
                return Err(invalid(key, "must be ADDRESS:PORT, or empty"));
            }
        }
        if !h.listen.is_empty() && h.listen == h.admin_listen {
            return Err(invalid(
                "http.admin_listen",
                "must differ from http.listen (leave it empty to share that listener)",
            ));
        }
        if h.header_timeout.is_zero() || h.body_timeout.is_zero() {
            return Err(invalid(
                "http.header_timeout",
                "header_timeout and body_timeout must be more than 0",
            ));
        }
        if h.max_connections == 0 {
            return Err(invalid("http.max_connections", "must be at least 1"));
        }
        // Three quarters hold large bodies: at least one full-size body must fit there.
        if h.max_body_bytes_in_flight / 4 * 3 < crate::http::BODY_LIMIT {
            return Err(invalid(
                "http.max_body_bytes_in_flight",
                format!(
                    "must be at least {} bytes (one full-size body in three quarters of it)",
                    crate::http::BODY_LIMIT / 3 * 4 + 4
                ),
            ));
        }
        let c = &self.connect;
        match reqwest::Url::parse(&c.authorize_url) {
            Ok(u) if u.scheme() == "http" || u.scheme() == "https" => {}
            _ => return Err(invalid("connect.authorize_url", "must be an http(s) URL")),
        }
        if !c.redirect_uri.is_empty() && reqwest::Url::parse(&c.redirect_uri).is_err() {
            return Err(invalid("connect.redirect_uri", "must be an absolute URL"));
        }
        if c.state_ttl < Duration::from_secs(60) || c.state_ttl > Duration::from_secs(86_400) {
            return Err(invalid("connect.state_ttl", "must be between 1m and 1d"));
        }
        if !self.retention.samples.is_empty() {
            parse_duration(&self.retention.samples).map_err(|e| invalid("retention.samples", e))?;
        }
        if self.storage.hot_window < Duration::from_secs(3600)
            || self.storage.hot_window > Duration::from_secs(3650 * 86_400)
        {
            return Err(invalid(
                "storage.hot_window",
                "must be between 1h and 3650d",
            ));
        }
        let b = &self.budget;
        crate::plan::Period::parse(&b.period).map_err(|e| invalid("budget.period", e))?;
        if b.min_interval < Duration::from_secs(1) {
            return Err(invalid("budget.min_interval", "must be at least 1s"));
        }
        if !(0.0..=0.9).contains(&b.reserve.0) || b.reserve.0.is_nan() {
            return Err(invalid(
                "budget.reserve",
                "must be between 0% and 90% (e.g. \"10%\")",
            ));
        }
        let w = &self.webhooks.webhook_id;
        if !w.is_empty() && !crate::ids::is_valid(w) {
            return Err(invalid("webhooks.webhook_id", "not a valid id"));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| invalid("log.level", e.to_string()))?;
        Ok(())
    }

    /// Whether credentials were given at all (`check-config` and `run` need them).
    pub fn require_credentials(&self) -> Result<(), ConfigError> {
        if self.smartcar.client_id.is_empty() {
            return Err(invalid(
                "smartcar.client_id",
                format!("missing (set it in the file or {})", env::CLIENT_ID),
            ));
        }
        if self.smartcar.client_secret.is_none() && self.smartcar.client_secret_file.is_none() {
            return Err(invalid(
                "smartcar.client_secret",
                format!(
                    "missing (set {} or smartcar.client_secret_file)",
                    env::CLIENT_SECRET
                ),
            ));
        }
        Ok(())
    }

    /// Where the client secret comes from: a file wins over a value (it can be rotated).
    pub fn client_secret_source(&self) -> SecretSource {
        match (
            &self.smartcar.client_secret_file,
            &self.smartcar.client_secret,
        ) {
            (Some(path), _) => SecretSource::File(path.clone()),
            (None, Some(secret)) => SecretSource::value(secret.clone()),
            (None, None) => SecretSource::value(SecretString::from(String::new())),
        }
    }

    /// Where the webhook key comes from, if configured.
    pub fn management_token_source(&self) -> Option<SecretSource> {
        match (
            &self.smartcar.management_token_file,
            &self.smartcar.management_token,
        ) {
            (Some(path), _) => Some(SecretSource::File(path.clone())),
            (None, Some(t)) => Some(SecretSource::value(t.clone())),
            (None, None) => None,
        }
    }

    /// The limiter's quota, or `None` when `requests_per_minute = 0` (no limit).
    pub fn rate_limit(&self) -> Option<crate::smartcar::RateLimit> {
        Some(crate::smartcar::RateLimit {
            requests_per_minute: NonZeroU32::new(self.rate_limit.requests_per_minute)?,
            burst: NonZeroU32::new(self.rate_limit.burst)?,
        })
    }

    /// The allowance planner's settings, or `None` when `calls_per_vehicle = 0` (unlimited).
    pub fn allowance(&self) -> Option<crate::plan::Allowance> {
        let b = &self.budget;
        Some(crate::plan::Allowance {
            calls: NonZeroU32::new(b.calls_per_vehicle)?,
            period: crate::plan::Period::parse(&b.period).ok()?,
            min_interval: b.min_interval,
            reserve: b.reserve.0,
        })
    }

    /// Where to keep webhook subscriptions: both a management token and `[webhooks]
    /// webhook_id` configured (without the token, pushed readings could not be verified).
    pub fn subscriptions(&self) -> Option<crate::jobs::Subscriptions> {
        if self.webhooks.webhook_id.is_empty() || self.management_token_source().is_none() {
            return None;
        }
        Some(crate::jobs::Subscriptions {
            management_url: reqwest::Url::parse(&self.smartcar.management_url).ok()?,
            webhook_id: self.webhooks.webhook_id.clone(),
        })
    }

    /// `[retention] samples` as a duration, if set.
    pub fn sample_retention(&self) -> Option<Duration> {
        parse_duration(&self.retention.samples).ok()
    }
}

impl Config {
    /// Files holding a secret that other users may read: the client secret and management
    /// token files, and the configuration file itself when it holds a secret (a secret key, or
    /// a database URL with a password). Each comes with the key that names it.
    pub fn world_readable_secrets(&self, config_path: &Path) -> Vec<(&'static str, PathBuf)> {
        let mut out = Vec::new();
        let s = &self.smartcar;
        for (key, path) in [
            ("smartcar.client_secret_file", &s.client_secret_file),
            ("smartcar.management_token_file", &s.management_token_file),
        ] {
            if let Some(path) = path
                && world_readable(path)
            {
                out.push((key, path.clone()));
            }
        }
        if world_readable(config_path)
            && let Ok(text) = std::fs::read_to_string(config_path)
            && let Ok(file) = Config::parse(&text, config_path)
        {
            let url_password = reqwest::Url::parse(&file.database.url).is_ok_and(|u| {
                u.password().is_some() || u.query_pairs().any(|(k, _)| k == "password")
            });
            if file.smartcar.client_secret.is_some()
                || file.smartcar.management_token.is_some()
                || file.http.connect_state_secret.is_some()
                || url_password
            {
                out.push(("--config", config_path.to_owned()));
            }
        }
        out
    }
}

/// Whether users other than the owner and group may read `path`.
fn world_readable(path: &Path) -> bool {
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::metadata(path).is_ok_and(|m| m.permissions().mode() & 0o004 != 0)
    }
    #[cfg(not(unix))]
    {
        let _ = path;
        false
    }
}

/// Every secret, from whichever source: set means non-empty. A file source must be readable
/// and hold something other than white space. The message names the key, never the value.
fn validate_secrets(c: &Config) -> Result<(), ConfigError> {
    let s = &c.smartcar;
    for (key, value, var) in [
        (
            "smartcar.client_secret",
            &s.client_secret,
            Some(env::CLIENT_SECRET),
        ),
        (
            "smartcar.management_token",
            &s.management_token,
            Some(env::MANAGEMENT_TOKEN),
        ),
        (
            "http.connect_state_secret",
            &c.http.connect_state_secret,
            None,
        ),
    ] {
        if let Some(v) = value
            && v.expose_secret().trim().is_empty()
        {
            let from = var.map(|v| format!(" (or {v})")).unwrap_or_default();
            return Err(invalid(
                key,
                format!("is empty{from}: set a real secret, or remove the key"),
            ));
        }
    }
    for (key, path) in [
        ("smartcar.client_secret_file", &s.client_secret_file),
        ("smartcar.management_token_file", &s.management_token_file),
    ] {
        if let Some(path) = path {
            SecretSource::File(path.clone())
                .read()
                .map_err(|e| invalid(key, e))?;
        }
    }
    Ok(())
}

/// `database.url` must be a SQLite or PostgreSQL URL that parses. The message never shows the
/// URL (it may hold a password), only what is wrong with it.
fn validate_database_url(url: &str) -> Result<(), ConfigError> {
    const KEY: &str = "database.url";
    if url.starts_with("sqlite:") {
        return sqlx::sqlite::SqliteConnectOptions::from_str(url)
            .map(|_| ())
            .map_err(|_| invalid(KEY, "is not a valid SQLite URL (sqlite://PATH)"));
    }
    if !(url.starts_with("postgres://") || url.starts_with("postgresql://")) {
        return Err(invalid(KEY, "must start with sqlite: or postgres://"));
    }
    if let Err(e) = reqwest::Url::parse(url) {
        // url's parse errors are fixed phrases ("invalid port number"), never the input.
        return Err(invalid(
            KEY,
            format!(
                "is not a valid PostgreSQL URL: {e} (percent-encode special characters in the \
                 password, e.g. # as %23)"
            ),
        ));
    }
    sqlx::postgres::PgConnectOptions::from_str(url)
        .map(|_| ())
        .map_err(|_| invalid(KEY, "is not a valid PostgreSQL URL"))
}

/// serde's "unknown field `x`, expected …" names the field only in its message.
fn unknown_field(message: &str) -> Option<String> {
    let rest = message.strip_prefix("unknown field `")?;
    Some(rest.split('`').next()?.to_owned())
}

/// Parses `250ms`, `30s`, `10m`, `1h`, `400d`, or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let split = s
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a duration (e.g. 30s, 10m, 1h, 400d)"))?;
    let secs = match unit.trim() {
        "ms" => n / 1000.0,
        "" | "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        "d" => n * 86_400.0,
        other => return Err(format!("unknown unit {other:?} (use ms, s, m, h or d)")),
    };
    Duration::try_from_secs_f64(secs).map_err(|e| e.to_string())
}

/// `"30s"`-style durations in the file.
mod duration_str {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer};

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Raw {
            Text(String),
            Secs(u64),
        }
        match Raw::deserialize(d)? {
            Raw::Text(s) => super::parse_duration(&s).map_err(serde::de::Error::custom),
            Raw::Secs(n) => Ok(Duration::from_secs(n)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<Config, ConfigError> {
        let c = Config::parse(text, Path::new("config.toml"))?;
        c.validate()?;
        Ok(c)
    }

    #[test]
    fn the_shipped_config_toml_is_valid_and_equals_the_defaults() {
        let text = include_str!("../config.toml");
        let c = parse(text).unwrap();
        let d = Config::default();
        assert_eq!(c.schedule.signals, d.schedule.signals);
        assert_eq!(c.queue.concurrency, d.queue.concurrency);
        assert_eq!(c.rate_limit.burst, d.rate_limit.burst);
        assert_eq!(c.database.url, d.database.url);
        assert_eq!(c.http.admin_listen, d.http.admin_listen);
        assert_eq!(c.http.verify_window, d.http.verify_window);
        assert_eq!(c.http.max_connections, d.http.max_connections);
        assert_eq!(
            c.http.max_body_bytes_in_flight,
            d.http.max_body_bytes_in_flight
        );
        assert_eq!(c.connect.scope, d.connect.scope);
        assert_eq!(c.budget.calls_per_vehicle, d.budget.calls_per_vehicle);
        assert_eq!(c.budget.period, d.budget.period);
        assert_eq!(c.budget.min_interval, d.budget.min_interval);
        assert_eq!(c.budget.reserve, d.budget.reserve);
        assert_eq!(c.webhooks.webhook_id, d.webhooks.webhook_id);
        assert_eq!(c.smartcar.management_url, d.smartcar.management_url);
        assert!(c.allowance().is_some(), "an allowance by default");
        assert_eq!(
            c.connect.max_new_users_per_hour,
            d.connect.max_new_users_per_hour
        );
    }

    #[test]
    fn the_budget_keys_are_validated_and_named() {
        for (text, key) in [
            ("[budget]\nperiod = \"weekly\"\n", "budget.period"),
            ("[budget]\nreserve = \"95%\"\n", "budget.reserve"),
            ("[budget]\nreserve = \"lots\"\n", "budget.reserve"),
            ("[budget]\nmin_interval = \"0s\"\n", "budget.min_interval"),
            (
                "[budget]\ncalls_per_vehicle = -1\n",
                "budget.calls_per_vehicle",
            ),
            ("[webhooks]\nwebhook_id = \"a b\"\n", "webhooks.webhook_id"),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.starts_with(key), "{text}: {e}");
        }
        let c = parse("[budget]\nreserve = \"25%\"\nperiod = \"60s\"\n").unwrap();
        assert_eq!(c.budget.reserve, Reserve(0.25));
        assert_eq!(
            c.allowance().map(|a| a.period),
            Some(crate::plan::Period::Every(Duration::from_secs(60)))
        );
        assert!(parse("[budget]\nreserve = 0.05\n").is_ok());
        let c = parse("[budget]\ncalls_per_vehicle = 0\n").unwrap();
        assert!(c.allowance().is_none(), "0 = unlimited");
    }

    #[test]
    fn an_empty_or_blank_secret_is_an_error_naming_its_key() {
        for (text, key) in [
            (
                "[smartcar]\nclient_secret = \"\"\n",
                "smartcar.client_secret",
            ),
            (
                "[smartcar]\nmanagement_token = \" \\n\"\n",
                "smartcar.management_token",
            ),
            (
                "[http]\nconnect_state_secret = \"\"\n",
                "http.connect_state_secret",
            ),
        ] {
            let e = parse(text).unwrap_err().to_string();
            assert!(e.starts_with(&format!("{key}:")), "{e}");
        }
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("token");
        std::fs::write(&file, "\r\n").unwrap();
        let text = format!(
            "[smartcar]\nmanagement_token_file = {:?}\n",
            file.display().to_string()
        );
        let e = parse(&text).unwrap_err().to_string();
        assert!(e.starts_with("smartcar.management_token_file:"), "{e}");
        let missing = format!(
            "[smartcar]\nclient_secret_file = {:?}\n",
            "/nonexistent/secret"
        );
        let e = parse(&missing).unwrap_err().to_string();
        assert!(e.starts_with("smartcar.client_secret_file:"), "{e}");
        // From the environment too: set but empty is not "unset".
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "").unwrap();
        let e = Config::load(&path, true, |k| {
            (k == env::MANAGEMENT_TOKEN).then(String::new)
        })
        .unwrap_err()
        .to_string();
        assert!(e.starts_with("smartcar.management_token:"), "{e}");
        assert!(e.contains(env::MANAGEMENT_TOKEN), "{e}");
    }

    #[test]
    fn an_unparsable_database_url_is_named_without_its_password() {
        for url in [
            "postgres://dbuser:S3cretPw#x@h/db",
            "postgres://dbuser:S3cretPw@h:notaport/db",
            "postgresql://u:S3cretPw@[bad/db",
        ] {
            let e = parse(&format!("[database]\nurl = {url:?}\n"))
                .unwrap_err()
                .to_string();
            assert!(e.starts_with("database.url:"), "{e}");
            assert!(!e.contains("S3cretPw"), "{e}");
        }
        assert!(parse("[database]\nurl = \"postgres://u:p%23w@h/db\"\n").is_ok());
    }

    #[test]
    fn an_unknown_key_is_named_with_its_table() {
        let e = parse("[queue]\nconcurency = 4\n").unwrap_err().to_string();
        assert!(e.starts_with("queue.concurency:"), "{e}");
        let e = parse("colour = 1\n").unwrap_err().to_string();
        assert!(e.starts_with("colour:"), "{e}");
    }

    #[test]
    fn a_bad_value_is_named() {
        let e = parse("[queue]\nconcurrency = \"many\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("queue.concurrency:"), "{e}");
        let e = parse("[schedule]\nsignals = \"every now and then\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("schedule.signals:"), "{e}");
        let e = parse("[queue]\nshutdown_grace = \"3 fortnights\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("queue.shutdown_grace:"), "{e}");
        let e = parse("[database]\nurl = \"mysql://x\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("database.url:"), "{e}");
    }

    #[test]
    fn the_environment_overrides_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("c.toml");
        std::fs::write(&path, "[database]\nurl = \"sqlite://a.db\"\n").unwrap();
        let c = Config::load(&path, true, |k| match k {
            "DATABASE_URL" => Some("sqlite://b.db".into()),
            "SMARTCAR_CLIENT_SECRET" => Some("s3cr3t-value".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(c.database.url, "sqlite://b.db");
        assert!(!format!("{c:?}").contains("s3cr3t-value"));
    }

    #[test]
    fn durations_parse() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(
            parse_duration("400d"),
            Ok(Duration::from_secs(400 * 86_400))
        );
        assert!(parse_duration("soon").is_err());
    }
}
