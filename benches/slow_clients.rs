//! Held connections: while 2,000 hostile connections stay open, signed webhooks are still
//! answered fast, the daemon's memory stays bounded, and it comes back afterwards.
//!
//! ```sh
//! cargo bench --bench slow_clients     # SLOW_CLIENTS (default 2000), HOLD_SECS (default 30)
//! ```
//!
//! The daemon is the release binary running `run` with its shipped HTTP bounds (header and body
//! timeouts of 10 s, 4,096 connections, 8 MiB of bodies in flight), against a simulator whose
//! application bucket equals the daemon's configuration (the documented 120, refilling 2 a
//! minute) and that fails 5 % of calls. The attacker is this process. It keeps SLOW_CLIENTS
//! connections open for HOLD_SECS, reconnecting each one the daemon cuts: a third idle, a third
//! dribbling headers a byte a second, a third sending 512 KiB of a 1 MiB − 1 body and stopping.
//! Meanwhile a signed VEHICLE_STATE webhook is posted every 250 ms on a fresh connection.

mod common;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{DaemonConfig, Res, Table};
use smartcar_sim::{Bucket, Faults, SimConfig};
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

#[tokio::main]
async fn main() -> Res<()> {
    let clients = env_u64("SLOW_CLIENTS", 2000) as usize;
    let hold = Duration::from_secs(env_u64("HOLD_SECS", 30));
    println!("slow-clients bench on {}", common::machine());
    println!("daemon: {}", common::binary());
    // The attacker needs its own descriptors.
    let _ = rlimit::increase_nofile_limit(u64::MAX);
    let t = run(clients, hold).await?;
    println!("{}", t.render());
    println!(
        "\n{}; load average now {}",
        if t.all_met() {
            "every target met"
        } else {
            "some targets MISSED"
        },
        common::load()
    );
    Ok(())
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|n| n.parse().ok())
        })
        .unwrap_or(0)
}

/// One hostile connection, reopened whenever the daemon cuts it, until `stop`.
async fn hold_one(addr: String, kind: usize, stop: Arc<AtomicBool>, cuts: Arc<AtomicU64>) {
    while !stop.load(Ordering::Relaxed) {
        let Ok(mut c) = TcpStream::connect(&addr).await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        let held = async {
            match kind {
                // Idle: connect and say nothing.
                0 => {
                    let mut b = [0u8; 1];
                    let _ = tokio::io::AsyncReadExt::read(&mut c, &mut b).await;
                }
                // Headers, a byte a second.
                1 => {
                    for byte in b"POST /webhooks/smartcar HTTP/1.1\r\nHost: x\r\nX-Slow: "
                        .iter()
                        .cycle()
                    {
                        if c.write_all(&[*byte]).await.is_err() {
                            break;
                        }
                        tokio::time::sleep(Duration::from_secs(1)).await;
                    }
                }
                // Half a large body, then nothing.
                _ => {
                    let head = format!(
                        "POST /webhooks/smartcar HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                        1024 * 1024 - 1
                    );
                    if c.write_all(head.as_bytes()).await.is_ok()
                        && c.write_all(&vec![b' '; 512 * 1024]).await.is_ok()
                    {
                        let mut b = [0u8; 256];
                        while let Ok(n) = tokio::io::AsyncReadExt::read(&mut c, &mut b).await {
                            if n == 0 {
                                break;
                            }
                        }
                    }
                }
            }
        };
        tokio::select! {
            _ = held => { cuts.fetch_add(1, Ordering::Relaxed); }
            _ = async { while !stop.load(Ordering::Relaxed) {
                tokio::time::sleep(Duration::from_millis(200)).await;
            } } => {}
        }
    }
}

async fn run(clients: usize, hold: Duration) -> Res<Table> {
    let dir = tempfile::tempdir()?;
    let sim = common::simulator(SimConfig {
        users: 5,
        vehicles_per_user: 2,
        app_bucket: Some(Bucket::documented()),
        faults: Faults {
            error_rate: 0.05,
            ..Faults::default()
        },
        record_served: false,
        ..SimConfig::default()
    })
    .await?;
    let mut config = DaemonConfig::new(&format!(
        "sqlite://{}",
        dir.path().join("bench.db").display()
    ));
    // The daemon's documented bucket, as the simulator's.
    config.requests_per_minute = 2;
    config.burst = 120;
    let path = config.write(dir.path(), &sim)?;
    let port = std::net::TcpListener::bind("127.0.0.1:0")?
        .local_addr()?
        .port();
    let addr = format!("127.0.0.1:{port}");
    let text = std::fs::read_to_string(&path)?
        .replacen("\nlisten = \"\"\n", &format!("\nlisten = \"{addr}\"\n"), 1)
        .replace(
            "[smartcar]\n",
            &format!(
                "[smartcar]\nmanagement_token = \"{}\"\n",
                SimConfig::default().management_token
            ),
        );
    std::fs::write(&path, text)?;
    let daemon = common::spawn_daemon(&path, &["run"], "warn", "daemon")?;
    let http = reqwest::Client::builder()
        .pool_max_idle_per_host(0)
        .timeout(Duration::from_secs(10))
        .build()?;
    let base = format!("http://{addr}");
    let started = Instant::now();
    loop {
        if http.get(format!("{base}/healthz")).send().await.is_ok() {
            break;
        }
        if started.elapsed() > Duration::from_secs(30) || !daemon.is_running() {
            let err = std::fs::read_to_string(&daemon.stderr).unwrap_or_default();
            return Err(format!("the daemon did not start: {err}").into());
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let baseline = rss_kib(daemon.pid);
    let vehicle = sim.vehicles_of(&sim.user_ids()[0])[0].clone();

    let stop = Arc::new(AtomicBool::new(false));
    let cuts = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for i in 0..clients {
        tasks.push(tokio::spawn(hold_one(
            addr.clone(),
            i % 3,
            stop.clone(),
            cuts.clone(),
        )));
        if i % 100 == 99 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut latencies = Vec::new();
    let mut failed = 0;
    let mut peak = 0;
    let attack_until = Instant::now() + hold;
    while Instant::now() < attack_until {
        let body = sim.vehicle_state_webhook(&vehicle).ok_or("no vehicle")?;
        let sig = sim.sign(&body);
        let t = Instant::now();
        let ok = http
            .post(format!("{base}/webhooks/smartcar"))
            .header("SC-Signature", sig)
            .body(body)
            .send()
            .await
            .is_ok_and(|r| r.status().is_success());
        if ok {
            latencies.push(t.elapsed());
        } else {
            failed += 1;
        }
        peak = peak.max(rss_kib(daemon.pid));
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let open_connections = std::fs::read_dir(format!("/proc/{}/fd", daemon.pid))
        .map(|d| d.count())
        .unwrap_or(0);
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        let _ = t.await;
    }
    // Bodies and connections are released as soon as the sockets close.
    tokio::time::sleep(Duration::from_secs(15)).await;
    let after = rss_kib(daemon.pid);
    daemon.signal("TERM")?;
    let (stats, _, stderr) = daemon.wait().await?;
    sim.shutdown().await;

    latencies.sort();
    let max = latencies.last().copied().unwrap_or_default();
    let p50 = latencies
        .get(latencies.len() / 2)
        .copied()
        .unwrap_or_default();
    let mut t = Table::new(format!(
        "{clients} held connections for {}s: signed webhooks, memory",
        hold.as_secs()
    ));
    t.info("hostile connections held open", clients);
    t.info(
        "descriptors the daemon had open at the end of the attack",
        open_connections,
    );
    t.info(
        "hostile connections the daemon cut (and reopened)",
        cuts.load(Ordering::Relaxed),
    );
    t.check(
        "signed webhooks answered 2xx",
        format!("{} of {}", latencies.len(), latencies.len() + failed),
        "all",
        failed == 0 && !latencies.is_empty(),
    );
    t.info("webhook latency p50", format!("{} ms", p50.as_millis()));
    t.check(
        "webhook latency max",
        format!("{} ms", max.as_millis()),
        "< 1000 ms",
        max < Duration::from_secs(1),
    );
    t.info("RSS before", common::mib(baseline));
    t.check(
        "RSS peak during the attack",
        common::mib(peak),
        "< 100 MiB",
        peak < 100 * 1024,
    );
    t.check(
        "RSS 15 s after the attack",
        common::mib(after),
        "<= before + 16 MiB",
        after <= baseline + 16 * 1024,
    );
    t.check(
        "daemon exit on SIGTERM",
        format!("{:?}", stats.status.and_then(|s| s.code())),
        "0",
        stats.status.is_some_and(|s| s.success()),
    );
    if !stats.status.is_some_and(|s| s.success()) {
        eprintln!("{stderr}");
    }
    Ok(t)
}
