//! The operator's commands: `status`, `users list`, `vehicles list`, `jobs list|retry|cancel`,
//! each readable by a person and, with `--json`, by a script.
//!
//! Why a summary of fixed size: `status` must answer "is it working?" at a glance for a
//! 50-user demo and a 10,000-user fleet alike. It prints counts (the queue by state, vehicles
//! and users by age of their last poll or sync, vehicles by status) and the worst N of each list
//! (`--top`, default 10; `--all` for everything), all computed by aggregate SQL
//! ([`crate::store`]'s `ops` module), so neither its output nor its cost grows with the fleet.
//!
//! Why JSON has its own types here: the field names are a public interface (documented in the
//! README, one table per command), so they are spelled out once, below, rather than derived from
//! internal structs that may change. Times are RFC 3339 UTC strings with microseconds (the
//! precision both databases keep), absent values are `null`.

use std::process::ExitCode;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use crate::cli::out;
use crate::config::Config;
use crate::store::{
    DaemonRow, Freshness, JobFilter, JobKind, JobRow, JobState, Refusal, Retried, Store, UserRow,
    VehicleRow, VehicleStatus,
};

/// `status --top` when not given.
pub const DEFAULT_TOP: u64 = 10;

/// RFC 3339, UTC, microseconds: `2026-01-31T23:59:59.123456Z`.
fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(SecondsFormat::Micros, true)
}

fn opt_rfc3339(t: Option<DateTime<Utc>>) -> Option<String> {
    t.map(rfc3339)
}

/// A time for a table: `2026-01-31 23:59:59`, or `never`.
fn when(t: Option<DateTime<Utc>>) -> String {
    t.map(|t| t.format("%Y-%m-%d %H:%M:%S").to_string())
        .unwrap_or_else(|| "never".to_owned())
}

/// `42s`, `17m`, `5h`, `3d`: how long ago, for a person.
pub fn ago(d: chrono::Duration) -> String {
    let s = d.num_seconds().max(0);
    match s {
        0..=119 => format!("{s}s"),
        120..=7199 => format!("{}m", s / 60),
        7200..=172_799 => format!("{}h", s / 3600),
        _ => format!("{}d", s / 86_400),
    }
}

/// Prints `value` as pretty JSON on stdout.
fn print_json(value: &impl Serialize) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(value)?;
    out!("{text}")?;
    Ok(())
}

#[derive(Serialize)]
struct UserJson {
    user_id: String,
    source: &'static str,
    created_at: String,
    last_synced_at: Option<String>,
}

impl From<&UserRow> for UserJson {
    fn from(u: &UserRow) -> Self {
        UserJson {
            user_id: u.user_id.clone(),
            source: u.source.as_str(),
            created_at: rfc3339(u.created_at),
            last_synced_at: opt_rfc3339(u.last_synced_at),
        }
    }
}

#[derive(Serialize)]
struct VehicleJson {
    vehicle_id: String,
    user_id: String,
    connection_id: Option<String>,
    make: Option<String>,
    model: Option<String>,
    year: Option<i64>,
    powertrain_type: Option<String>,
    mode: Option<String>,
    permissions: Vec<String>,
    status: &'static str,
    status_reason: Option<String>,
    status_request_id: Option<String>,
    status_changed_at: String,
    blocked_until: Option<String>,
    first_seen_at: String,
    last_seen_at: String,
    last_polled_at: Option<String>,
}

impl From<&VehicleRow> for VehicleJson {
    fn from(v: &VehicleRow) -> Self {
        VehicleJson {
            vehicle_id: v.vehicle_id.clone(),
            user_id: v.user_id.clone(),
            connection_id: v.connection_id.clone(),
            make: v.make.clone(),
            model: v.model.clone(),
            year: v.year,
            powertrain_type: v.powertrain_type.clone(),
            mode: v.mode.clone(),
            permissions: v.permissions.clone(),
            status: v.status.as_str(),
            status_reason: v.status_reason.clone(),
            status_request_id: v.status_request_id.clone(),
            status_changed_at: rfc3339(v.status_changed_at),
            blocked_until: opt_rfc3339(v.blocked_until),
            first_seen_at: rfc3339(v.first_seen_at),
            last_seen_at: rfc3339(v.last_seen_at),
            last_polled_at: opt_rfc3339(v.last_polled_at),
        }
    }
}

#[derive(Serialize)]
struct JobJson {
    id: i64,
    kind: String,
    subject: String,
    state: String,
    attempts: i64,
    run_at: String,
    lease_until: Option<String>,
    last_error: Option<String>,
    last_request_id: Option<String>,
    note: Option<String>,
    created_at: String,
    updated_at: String,
    finished_at: Option<String>,
}

impl From<&JobRow> for JobJson {
    fn from(j: &JobRow) -> Self {
        JobJson {
            id: j.id,
            kind: j.kind.clone(),
            subject: j.subject.clone(),
            state: j.state.clone(),
            attempts: j.attempts,
            run_at: rfc3339(j.run_at),
            lease_until: opt_rfc3339(j.lease_until),
            last_error: j.last_error.clone(),
            last_request_id: j.last_request_id.clone(),
            note: j.note.clone(),
            created_at: rfc3339(j.created_at),
            updated_at: rfc3339(j.updated_at),
            finished_at: opt_rfc3339(j.finished_at),
        }
    }
}

#[derive(Serialize)]
struct FreshnessJson {
    under_1h: i64,
    under_6h: i64,
    under_24h: i64,
    over_24h: i64,
    never: i64,
}

impl From<Freshness> for FreshnessJson {
    fn from(f: Freshness) -> Self {
        FreshnessJson {
            under_1h: f.under_1h,
            under_6h: f.under_6h,
            under_24h: f.under_24h,
            over_24h: f.over_24h,
            never: f.never,
        }
    }
}

/// Jobs per state (every state present, zero or not).
#[derive(Serialize, Default, Clone, Copy)]
struct StateCounts {
    pending: i64,
    running: i64,
    done: i64,
    dead: i64,
}

impl StateCounts {
    fn add(&mut self, state: &str, n: i64) {
        match state {
            "pending" => self.pending += n,
            "running" => self.running += n,
            "done" => self.done += n,
            "dead" => self.dead += n,
            _ => {}
        }
    }
}

#[derive(Serialize)]
struct KindCounts {
    kind: &'static str,
    #[serde(flatten)]
    counts: StateCounts,
}

#[derive(Serialize)]
struct ProcessJson {
    daemon_id: String,
    kind: String,
    host: String,
    pid: i64,
    started_at: String,
    heartbeat_at: String,
    calls: i64,
    throttled_app: i64,
    throttled_vehicle: i64,
}

impl From<&DaemonRow> for ProcessJson {
    fn from(d: &DaemonRow) -> Self {
        ProcessJson {
            daemon_id: d.daemon_id.clone(),
            kind: d.kind.clone(),
            host: d.host.clone(),
            pid: d.pid,
            started_at: rfc3339(d.started_at),
            heartbeat_at: rfc3339(d.heartbeat_at),
            calls: d.calls,
            throttled_app: d.throttled_app,
            throttled_vehicle: d.throttled_vehicle,
        }
    }
}

/// The application's shared rate budget (`[rate_limit]`), as `status` shows it.
#[derive(Serialize)]
struct RateJson {
    /// Null: no limit configured.
    configured_per_minute: Option<u32>,
    configured_burst: Option<u32>,
    /// What all processes together use now: headroom × adaptive factor × configured.
    in_force_per_minute: Option<f64>,
    in_force_burst: Option<f64>,
    headroom: f64,
    adaptive_factor: f64,
    last_throttle_at: Option<String>,
    last_throttle_factor: Option<f64>,
    live_processes: usize,
    processes: Vec<ProcessJson>,
}

#[derive(Serialize)]
struct VehiclesSummary {
    total: i64,
    by_status: std::collections::BTreeMap<String, i64>,
    /// Pollable vehicles by the age of their last poll.
    freshness: FreshnessJson,
}

#[derive(Serialize)]
struct UsersSummary {
    total: i64,
    /// Users by the age of their last connections sync.
    freshness: FreshnessJson,
}

#[derive(Serialize)]
struct StatusJson {
    generated_at: String,
    database: String,
    /// Null for `--all`.
    top: Option<u64>,
    app_paused_until: Option<String>,
    /// Every pollable vehicle was polled since then; null if none is pollable.
    last_cycle: Option<String>,
    last_tick_connections: Option<String>,
    last_tick_signals: Option<String>,
    samples: i64,
    rate: RateJson,
    queue: StateCounts,
    queue_by_kind: Vec<KindCounts>,
    vehicles: VehiclesSummary,
    users: UsersSummary,
    stalest_vehicles: Vec<VehicleJson>,
    unconnected_vehicles: Vec<VehicleJson>,
    stalest_users: Vec<UserJson>,
    dead_jobs: Vec<JobJson>,
}

/// The shared rate budget: configured, in force now, and who shares it.
async fn rate(config: &Config, store: &Store, now: DateTime<Utc>) -> anyhow::Result<RateJson> {
    use crate::budget::{BURST_HEADROOM, RATE_HEADROOM, STALE_AFTER, adaptive_factor};
    let daemons = store.live_daemons(now, STALE_AFTER).await?;
    let throttle = store.last_app_throttle().await?;
    let factor = adaptive_factor(throttle, now);
    let rl = config.rate_limit();
    Ok(RateJson {
        configured_per_minute: rl.map(|r| r.requests_per_minute.get()),
        configured_burst: rl.map(|r| r.burst.get()),
        in_force_per_minute: rl
            .map(|r| f64::from(r.requests_per_minute.get()) * RATE_HEADROOM * factor),
        in_force_burst: rl.map(|r| f64::from(r.burst.get()) * BURST_HEADROOM),
        headroom: RATE_HEADROOM,
        adaptive_factor: factor,
        last_throttle_at: throttle.map(|(at, _)| rfc3339(at)),
        last_throttle_factor: throttle.map(|(_, f)| f),
        live_processes: daemons.len(),
        processes: daemons.iter().map(ProcessJson::from).collect(),
    })
}

fn print_rate(r: &RateJson, now: DateTime<Utc>) -> anyhow::Result<()> {
    match (r.configured_per_minute, r.configured_burst) {
        (Some(rpm), Some(burst)) => out!(
            "rate       configured {rpm}/min, burst {burst}; in force {:.1}/min (headroom {:.0} %, \
             adaptive factor {:.2}), burst {:.0}, split over {} live process(es)",
            r.in_force_per_minute.unwrap_or_default(),
            r.headroom * 100.0,
            r.adaptive_factor,
            r.in_force_burst.unwrap_or_default(),
            r.live_processes.max(1)
        )?,
        _ => out!("rate       no limit (rate_limit.requests_per_minute = 0)")?,
    }
    let at = r
        .last_throttle_at
        .as_deref()
        .and_then(|t| DateTime::parse_from_rfc3339(t).ok())
        .map(|t| t.with_timezone(&Utc));
    match (at, r.last_throttle_factor) {
        (Some(at), Some(f)) => out!(
            "throttle   last 429 SMARTCAR_API at {} ({} ago), sent at {f:.2} of the rate",
            at.format("%Y-%m-%d %H:%M:%S"),
            ago(now - at)
        )?,
        _ => out!("throttle   never")?,
    }
    out!(
        "processes  {} live: {}",
        r.processes.len(),
        r.processes
            .iter()
            .map(|d| format!(
                "{} {} on {} pid {} ({} calls, 429 app {} vehicle {})",
                d.daemon_id, d.kind, d.host, d.pid, d.calls, d.throttled_app, d.throttled_vehicle
            ))
            .collect::<Vec<_>>()
            .join("; ")
    )?;
    Ok(())
}

/// `status [--top N | --all] [--json]`.
pub async fn status(
    config: &Config,
    store: &Store,
    top: Option<u64>,
    json: bool,
) -> anyhow::Result<ExitCode> {
    let now = Utc::now();
    let mut queue = StateCounts::default();
    let mut by_kind: Vec<KindCounts> = JobKind::ALL
        .iter()
        .map(|k| KindCounts {
            kind: k.as_str(),
            counts: StateCounts::default(),
        })
        .collect();
    for (kind, state, n) in store.queue_counts().await? {
        queue.add(&state, n);
        if let Some(k) = by_kind.iter_mut().find(|k| k.kind == kind) {
            k.counts.add(&state, n);
        }
    }
    let by_status: std::collections::BTreeMap<String, i64> =
        store.vehicles_by_status().await?.into_iter().collect();
    let vehicle_freshness = store.vehicle_freshness(now).await?;
    let user_freshness = store.user_freshness(now).await?;
    let stalest_vehicles = store.stalest_vehicles(now, top).await?;
    let unconnected = store.unconnected_vehicles(top).await?;
    let stalest_users = store.stalest_users(top).await?;
    let (dead, dead_total) = store
        .list_jobs(&JobFilter {
            state: Some(JobState::Dead),
            kind: None,
            limit: top,
        })
        .await?;
    let paused_until = store.app_paused_until(now).await?;
    let last_cycle = store.oldest_poll_of_pollable(now).await?;
    let ticks = [
        ("connections", store.last_tick("connections").await?),
        ("signals", store.last_tick("signals").await?),
    ];
    let report = StatusJson {
        generated_at: rfc3339(now),
        database: crate::daemon::redact_url(&config.database.url),
        top,
        app_paused_until: opt_rfc3339(paused_until),
        last_cycle: opt_rfc3339(last_cycle.filter(|t| *t > DateTime::<Utc>::UNIX_EPOCH)),
        last_tick_connections: opt_rfc3339(ticks[0].1),
        last_tick_signals: opt_rfc3339(ticks[1].1),
        samples: store.sample_count().await?,
        rate: rate(config, store, now).await?,
        queue,
        queue_by_kind: by_kind,
        vehicles: VehiclesSummary {
            total: by_status.values().sum(),
            by_status,
            freshness: vehicle_freshness.into(),
        },
        users: UsersSummary {
            total: user_freshness.total(),
            freshness: user_freshness.into(),
        },
        stalest_vehicles: stalest_vehicles.iter().map(VehicleJson::from).collect(),
        unconnected_vehicles: unconnected.iter().map(VehicleJson::from).collect(),
        stalest_users: stalest_users.iter().map(UserJson::from).collect(),
        dead_jobs: dead.iter().map(JobJson::from).collect(),
    };
    if json {
        print_json(&report)?;
        return Ok(ExitCode::SUCCESS);
    }

    let r = &report;
    out!("database   {}", r.database)?;
    match paused_until {
        Some(until) => out!(
            "app pause  PAUSED until {} (a 429 from Smartcar)",
            until.format("%Y-%m-%d %H:%M:%S UTC")
        )?,
        None => out!("app pause  none")?,
    }
    match last_cycle {
        Some(t) if t > DateTime::<Utc>::UNIX_EPOCH => out!(
            "last cycle every pollable vehicle polled since {} ({} ago)",
            t.format("%Y-%m-%d %H:%M:%S"),
            ago(now - t)
        )?,
        Some(_) => out!("last cycle not complete: some pollable vehicle was never polled")?,
        None => out!("last cycle no pollable vehicle")?,
    }
    for (schedule, t) in ticks {
        out!("tick       {schedule:<12} last {}", when(t))?;
    }
    out!("samples    {}", r.samples)?;
    print_rate(&r.rate, now)?;

    out!()?;
    let row = |name: &str, c: &StateCounts| {
        format!(
            "{name:<20} {:>9} {:>9} {:>9} {:>9}",
            c.pending, c.running, c.done, c.dead
        )
    };
    out!(
        "{:<20} {:>9} {:>9} {:>9} {:>9}",
        "QUEUE",
        "pending",
        "running",
        "done",
        "dead"
    )?;
    for k in &r.queue_by_kind {
        out!("{}", row(k.kind, &k.counts))?;
    }
    out!("{}", row("total", &r.queue))?;

    out!()?;
    out!(
        "{:<20} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
        "FRESHNESS",
        "<1h",
        "1-6h",
        "6-24h",
        ">24h",
        "never",
        "total"
    )?;
    for (name, f) in [
        ("vehicles (polled)", vehicle_freshness),
        ("users (synced)", user_freshness),
    ] {
        out!(
            "{name:<20} {:>9} {:>9} {:>9} {:>9} {:>9} {:>9}",
            f.under_1h,
            f.under_6h,
            f.under_24h,
            f.over_24h,
            f.never,
            f.total()
        )?;
    }
    out!(
        "vehicles by status   {}",
        if r.vehicles.by_status.is_empty() {
            "none".to_owned()
        } else {
            r.vehicles
                .by_status
                .iter()
                .map(|(s, n)| format!("{s} {n}"))
                .collect::<Vec<_>>()
                .join(", ")
        }
    )?;

    let shown = |n: usize, total: i64| -> String {
        if n as i64 >= total {
            format!("all {total}")
        } else {
            format!("{n} of {total}")
        }
    };
    let pollable = vehicle_freshness.total();
    if !stalest_vehicles.is_empty() {
        out!()?;
        out!(
            "STALEST VEHICLES ({} pollable, never polled first)",
            shown(stalest_vehicles.len(), pollable)
        )?;
        out!("  {:<38} {:<38} LAST POLL", "VEHICLE", "USER")?;
        for v in &stalest_vehicles {
            out!(
                "  {:<38} {:<38} {}{}",
                v.vehicle_id,
                v.user_id,
                when(v.last_polled_at),
                v.last_polled_at
                    .map(|t| format!(" ({} ago)", ago(now - t)))
                    .unwrap_or_default()
            )?;
        }
    }
    let unconnected_total = r.vehicles.total - r.vehicles.by_status.get("connected").unwrap_or(&0);
    if !unconnected.is_empty() {
        out!()?;
        out!(
            "NOT CONNECTED ({}, latest change first)",
            shown(unconnected.len(), unconnected_total)
        )?;
        for v in &unconnected {
            out!(
                "  {:<38} {:<17} since {} {}{}",
                v.vehicle_id,
                v.status.as_str(),
                when(Some(v.status_changed_at)),
                v.status_reason.as_deref().unwrap_or(""),
                v.status_request_id
                    .as_deref()
                    .map(|r| format!(" [request id {r}]"))
                    .unwrap_or_default()
            )?;
        }
    }
    if !stalest_users.is_empty() {
        out!()?;
        out!(
            "STALEST USERS ({})",
            shown(stalest_users.len(), r.users.total)
        )?;
        for u in &stalest_users {
            out!(
                "  {:<38} {:<10} last sync {}",
                u.user_id,
                u.source.as_str(),
                when(u.last_synced_at)
            )?;
        }
    }
    if !dead.is_empty() {
        out!()?;
        out!(
            "DEAD JOBS ({}, latest first)",
            shown(dead.len(), dead_total)
        )?;
        for d in &dead {
            print_dead(d)?;
        }
        out!("  requeue: smartcar-sync jobs retry --dead (or ID…)")?;
    }
    if top.is_some() {
        out!()?;
        out!(
            "(at most {} a list: --top N, or --all)",
            top.unwrap_or_default()
        )?;
    }
    Ok(ExitCode::SUCCESS)
}

fn print_dead(d: &JobRow) -> anyhow::Result<()> {
    out!(
        "  #{} {}({}) after {} attempts at {}: {}{}",
        d.id,
        d.kind,
        d.subject,
        d.attempts,
        when(d.finished_at),
        d.last_error.as_deref().unwrap_or("?"),
        d.last_request_id
            .as_deref()
            .map(|r| format!(" [request id {r}]"))
            .unwrap_or_default()
    )?;
    Ok(())
}

/// `users list [--json]`.
pub async fn users_list(store: &Store, json: bool) -> anyhow::Result<()> {
    let users = store.list_users().await?;
    if json {
        return print_json(&users.iter().map(UserJson::from).collect::<Vec<_>>());
    }
    out!("{:<38} {:<10} {:<20} LAST SYNC", "USER", "SOURCE", "ADDED")?;
    for u in &users {
        out!(
            "{:<38} {:<10} {:<20} {}",
            u.user_id,
            u.source.as_str(),
            u.created_at.format("%Y-%m-%d %H:%M:%S"),
            when(u.last_synced_at)
        )?;
    }
    out!("{} users", users.len())?;
    Ok(())
}

/// `vehicles list [--status S] [--user U] [--json]`.
pub async fn vehicles_list(
    store: &Store,
    status: Option<VehicleStatus>,
    user: Option<&str>,
    json: bool,
) -> anyhow::Result<()> {
    let vehicles = store.find_vehicles(status, user).await?;
    if json {
        return print_json(&vehicles.iter().map(VehicleJson::from).collect::<Vec<_>>());
    }
    out!(
        "{:<38} {:<38} {:<24} {:<17} LAST POLL",
        "VEHICLE",
        "USER",
        "MAKE MODEL YEAR",
        "STATUS"
    )?;
    for v in &vehicles {
        let car = format!(
            "{} {} {}",
            v.make.as_deref().unwrap_or("?"),
            v.model.as_deref().unwrap_or("?"),
            v.year.map(|y| y.to_string()).unwrap_or_default()
        );
        out!(
            "{:<38} {:<38} {:<24} {:<17} {}",
            v.vehicle_id,
            v.user_id,
            car.chars().take(24).collect::<String>(),
            v.status.as_str(),
            when(v.last_polled_at)
        )?;
    }
    out!("{} vehicles", vehicles.len())?;
    Ok(())
}

/// `jobs list [--dead | --state S] [--kind K] [--limit N] [--json]`.
pub async fn jobs_list(store: &Store, filter: &JobFilter, json: bool) -> anyhow::Result<()> {
    let (jobs, total) = store.list_jobs(filter).await?;
    if json {
        return print_json(&jobs.iter().map(JobJson::from).collect::<Vec<_>>());
    }
    out!(
        "{:>8} {:<17} {:<38} {:<8} {:>8} {:<20} ERROR / NOTE",
        "ID",
        "KIND",
        "SUBJECT",
        "STATE",
        "ATTEMPTS",
        "RUN AT / FINISHED"
    )?;
    for j in &jobs {
        let at = j.finished_at.unwrap_or(j.run_at);
        let why = j
            .last_error
            .as_deref()
            .or(j.note.as_deref())
            .unwrap_or_default();
        let line = format!(
            "{:>8} {:<17} {:<38} {:<8} {:>8} {:<20} {why}{}",
            j.id,
            j.kind,
            j.subject,
            j.state,
            j.attempts,
            at.format("%Y-%m-%d %H:%M:%S"),
            j.last_request_id
                .as_deref()
                .map(|r| format!(" [request id {r}]"))
                .unwrap_or_default()
        );
        out!("{}", line.trim_end())?;
    }
    if total > jobs.len() as i64 {
        out!("{} of {total} jobs (newest first; --limit N)", jobs.len())?;
    } else {
        out!("{total} jobs")?;
    }
    Ok(())
}

/// Prints each refused id; the caller exits 1.
fn print_refusals(refused: &[Refusal], only: &str) {
    use std::io::Write as _;
    // Ignoring a closed stderr: the exit status still says it failed.
    let mut err = std::io::stderr().lock();
    for r in refused {
        let _ = match &r.state {
            None => writeln!(err, "error: job #{}: no such job", r.id),
            Some(state) => writeln!(err, "error: job #{} is {state}: {only}", r.id),
        };
    }
    let _ = writeln!(err, "error: nothing was changed");
}

/// `jobs retry ID… | --dead`.
pub async fn jobs_retry(store: &Store, ids: Option<&[i64]>) -> anyhow::Result<ExitCode> {
    match store.retry_dead_jobs(ids, Utc::now()).await? {
        Err(refused) => {
            print_refusals(&refused, "only dead jobs can be retried");
            Ok(ExitCode::FAILURE)
        }
        Ok(done) => {
            let mut requeued = 0;
            for d in &done {
                match d {
                    Retried::Requeued { id, kind, subject } => {
                        requeued += 1;
                        out!("#{id} {kind}({subject}): requeued, due now")?;
                    }
                    Retried::Superseded {
                        id,
                        kind,
                        subject,
                        open,
                    } => out!(
                        "#{id} {kind}({subject}): already queued as #{open}; dead record removed"
                    )?,
                }
            }
            out!(
                "{requeued} requeued, {} already queued",
                done.len() - requeued
            )?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// `jobs cancel ID…`.
pub async fn jobs_cancel(store: &Store, ids: &[i64]) -> anyhow::Result<ExitCode> {
    match store.cancel_jobs(ids).await? {
        Err(refused) => {
            print_refusals(&refused, "only pending or running jobs can be cancelled");
            Ok(ExitCode::FAILURE)
        }
        Ok(cancelled) => {
            for c in &cancelled {
                let what = if c.was == JobState::Running.as_str() {
                    "cancelled while running: its worker commits nothing"
                } else {
                    "cancelled"
                };
                out!("#{} {}({}): {what}", c.id, c.kind, c.subject)?;
            }
            out!("{} cancelled", cancelled.len())?;
            Ok(ExitCode::SUCCESS)
        }
    }
}
