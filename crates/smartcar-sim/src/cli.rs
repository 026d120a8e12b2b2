//! `smartcar-sim` (and `smartcar-sync simulate`): run the fake on a fixed address for demos and
//! benchmarks.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::Context;

use super::Simulator;
use super::config::{
    Bucket, ErrorBodyVariant, Faults, LinkStyle, PagingVariant, RetryAfterForm, SimConfig,
    TimestampFormat, UserIdLocation, Variants, VehicleAllowance,
};

/// `writeln!` to stdout, returning the `io::Result`: a closed pipe is not a panic.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)
    }};
}

/// Options of `smartcar-sim` / `smartcar-sync simulate`.
#[derive(Clone, Debug, clap::Args)]
pub struct SimArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8090")]
    pub listen: SocketAddr,
    #[arg(long, default_value_t = 3)]
    pub users: usize,
    #[arg(long, default_value_t = 2)]
    pub vehicles_per_user: usize,
    #[arg(long, default_value_t = 1)]
    pub seed: u64,
    #[arg(long, default_value = "sim-client-id")]
    pub client_id: String,
    /// Accepted client secret (repeat for up to three).
    #[arg(long = "client-secret", default_value = "sim-client-secret")]
    pub client_secrets: Vec<String>,
    #[arg(long, default_value_t = 3600)]
    pub token_lifetime_secs: u64,
    /// Seconds between changes of each reading.
    #[arg(long, default_value_t = 60.0)]
    pub update_period_secs: f64,
    /// Added to every API call.
    #[arg(long, default_value_t = 0)]
    pub latency_ms: u64,
    /// Application bucket capacity (omit for unlimited).
    #[arg(long)]
    pub bucket_capacity: Option<f64>,
    /// Application bucket refill per second (default: the documented 2 per minute).
    #[arg(long, default_value_t = 2.0 / 60.0)]
    pub bucket_refill_per_second: f64,
    /// Per-vehicle minimum interval between calls.
    #[arg(long)]
    pub vehicle_min_interval_ms: Option<u64>,
    #[arg(long, default_value_t = 0.0)]
    pub error_rate: f64,
    #[arg(long, default_value_t = 0.0)]
    pub slow_rate: f64,
    #[arg(long, default_value_t = 2000)]
    pub slow_delay_ms: u64,
    #[arg(long, default_value_t = 0.0)]
    pub expired_token_rate: f64,
    #[arg(long, value_enum, default_value_t = PagingVariant::Standard)]
    pub paging: PagingVariant,
    #[arg(long, value_enum, default_value_t = TimestampFormat::EpochMillis)]
    pub timestamps: TimestampFormat,
    #[arg(long)]
    pub year_as_string: bool,
    #[arg(long, value_enum, default_value_t = UserIdLocation::Relationships)]
    pub user_id_location: UserIdLocation,
    /// Single resources without the `{"data": …}` wrapper.
    #[arg(long)]
    pub unwrapped: bool,
    #[arg(long, value_enum, default_value_t = ErrorBodyVariant::V3)]
    pub error_body: ErrorBodyVariant,
    /// Page the signals list with this many per page.
    #[arg(long)]
    pub signals_page_size: Option<usize>,
    #[arg(long)]
    pub retry_after_http_date: bool,
    /// Form of `Retry-After` on 429s.
    #[arg(long, value_enum, default_value_t = RetryAfterForm::Seconds)]
    pub retry_after_form: RetryAfterForm,
    /// How a paged signals answer writes `links.next`.
    #[arg(long, value_enum, default_value_t = LinkStyle::RootRelative)]
    pub signals_link: LinkStyle,
    /// Numeric values that need all 17 significant digits.
    #[arg(long)]
    pub precise_values: bool,
    /// Signal codes in camelCase.
    #[arg(long)]
    pub camel_case_codes: bool,
    /// Units spelled `percentage`, `km`, `mi`.
    #[arg(long)]
    pub unit_aliases: bool,
    /// State of charge as `{"percentage": N}`.
    #[arg(long)]
    pub legacy_soc_body: bool,
    /// `closure-islocked` with an empty `meta`.
    #[arg(long)]
    pub empty_meta: bool,
    /// `lowvoltagebattery-stateofcharge` with an impossible `oemUpdatedAt`.
    #[arg(long)]
    pub out_of_range_times: bool,
    /// One extra signal with an 80-character code in every answer and webhook.
    #[arg(long)]
    pub overlong_code: bool,
    /// Webhook signals with `meta.fetchedAt` instead of `retrievedAt`.
    #[arg(long)]
    pub webhook_fetched_at: bool,
    /// Format of a webhook's `meta.deliveredAt`.
    #[arg(long, value_enum, default_value_t = TimestampFormat::EpochMillis)]
    pub webhook_delivered_at: TimestampFormat,
    /// Do not keep the record of served readings (saves memory on long runs).
    #[arg(long)]
    pub no_record: bool,
    #[arg(long, default_value = "sim-management-token")]
    pub management_token: String,
    /// Per-vehicle allowance: calls per `--allowance-period-secs` (430 past it; omit for none).
    #[arg(long)]
    pub allowance_calls: Option<u32>,
    #[arg(long, default_value_t = 30 * 86_400)]
    pub allowance_period_secs: u64,
    /// A third of the vehicles parked, a third charging, a third driving.
    #[arg(long)]
    pub behaviour_thirds: bool,
    /// Push VEHICLE_STATE webhooks for subscribed vehicles to this URL.
    #[arg(long)]
    pub webhook_url: Option<String>,
    #[arg(long, default_value_t = 10)]
    pub webhook_every_secs: u64,
}

impl SimArgs {
    pub fn to_config(&self) -> SimConfig {
        SimConfig {
            users: self.users,
            vehicles_per_user: self.vehicles_per_user,
            seed: self.seed,
            client_id: self.client_id.clone(),
            client_secrets: self.client_secrets.clone(),
            token_lifetime: Duration::from_secs(self.token_lifetime_secs),
            update_period: Duration::from_secs_f64(self.update_period_secs.max(0.001)),
            latency: Duration::from_millis(self.latency_ms),
            app_bucket: self.bucket_capacity.map(|capacity| Bucket {
                capacity,
                refill_per_second: self.bucket_refill_per_second,
            }),
            vehicle_min_interval: self.vehicle_min_interval_ms.map(Duration::from_millis),
            faults: Faults {
                error_rate: self.error_rate,
                slow_rate: self.slow_rate,
                slow_delay: Duration::from_millis(self.slow_delay_ms),
                expired_token_rate: self.expired_token_rate,
            },
            variants: Variants {
                paging: self.paging,
                timestamps: self.timestamps,
                year_as_string: self.year_as_string,
                user_id_location: self.user_id_location,
                wrapped_resources: !self.unwrapped,
                error_body: self.error_body,
                signals_page_size: self.signals_page_size,
                retry_after_http_date: self.retry_after_http_date,
                retry_after_form: self.retry_after_form,
                signals_link: self.signals_link,
                precise_values: self.precise_values,
                camel_case_codes: self.camel_case_codes,
                unit_aliases: self.unit_aliases,
                legacy_soc_body: self.legacy_soc_body,
                empty_meta: self.empty_meta,
                out_of_range_times: self.out_of_range_times,
                overlong_code: self.overlong_code,
                webhook_fetched_at: self.webhook_fetched_at,
                webhook_delivered_at: self.webhook_delivered_at,
            },
            record_served: !self.no_record,
            management_token: self.management_token.clone(),
            allowance: self.allowance_calls.map(|calls| VehicleAllowance {
                calls,
                period: Duration::from_secs(self.allowance_period_secs.max(1)),
            }),
            behaviour_thirds: self.behaviour_thirds,
            webhook_url: self.webhook_url.clone(),
            webhook_every: Duration::from_secs(self.webhook_every_secs.max(1)),
        }
    }
}

/// Runs the simulator until Ctrl-C, then prints the counters.
pub async fn run_cli(args: SimArgs) -> anyhow::Result<()> {
    let config = args.to_config();
    // A closed stdout must not stop a running server: output errors are ignored.
    let sim = Simulator::start(config, args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let _ = out!("Smartcar simulator listening on {}", sim.addr());
    let _ = out!("  auth URL:      {}", sim.auth_url());
    let _ = out!("  API URL:       {}", sim.api_url());
    let _ = out!("  client id:     {}", args.client_id);
    let _ = out!("  client secret: {}", args.client_secrets.join(", "));
    let users = sim.user_ids();
    let _ = out!("  users:         {}", users.len());
    for u in users.iter().take(5) {
        let _ = out!("    {u}  ({} vehicles)", sim.vehicles_of(u).len());
    }
    let _ = out!("Ctrl-C to stop.");
    tokio::signal::ctrl_c()
        .await
        .context("cannot listen for Ctrl-C")?;
    let counters = serde_json::to_string_pretty(&sim.counters())?;
    let _ = out!("{counters}");
    sim.shutdown().await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use clap::{CommandFactory, Parser};

    use super::*;

    #[derive(Parser)]
    struct Cmd {
        #[command(flatten)]
        sim: SimArgs,
    }

    #[test]
    fn args_parse_into_a_config() {
        Cmd::command().debug_assert();
        let Ok(cmd) = Cmd::try_parse_from([
            "x",
            "--paging",
            "links-only",
            "--client-secret",
            "a",
            "--client-secret",
            "b",
            "--bucket-capacity",
            "120",
            "--unwrapped",
        ]) else {
            panic!("parse failed")
        };
        let c = cmd.sim.to_config();
        assert_eq!(c.variants.paging, PagingVariant::LinksOnly);
        assert_eq!(c.client_secrets, vec!["a", "b"]);
        assert!(!c.variants.wrapped_resources);
        assert_eq!(c.app_bucket.map(|b| b.capacity), Some(120.0));
        assert_eq!(cmd.sim.listen.port(), 8090);
        let Ok(default) = Cmd::try_parse_from(["x"]) else {
            panic!("parse failed")
        };
        assert_eq!(
            default.sim.to_config().client_secrets,
            vec!["sim-client-secret"]
        );
    }
}
