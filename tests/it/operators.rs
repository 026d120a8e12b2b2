//! The operator's commands as an operator runs them (the binary as a child process), once per
//! database backend: `status` stays a fixed-size summary at any fleet size, `--json` is parsed
//! and its fields asserted, `jobs retry` and `jobs cancel` change exactly what they say in the
//! database (and nothing when refused), `sync-once` shows progress when not on a terminal, and
//! the generated man pages and completions cover every command.

use std::path::Path;
use std::time::Duration;

use chrono::{DateTime, Utc};
use serde_json::Value;
use smartcar_sim::SimConfig;
use smartcar_sync::store::{JobKind, StoreError};

use crate::support::{self, TestDb};

/// Runs the binary with `args`; returns (exit status, stdout, stderr).
async fn run(config: &Path, args: &[&str]) -> (Option<i32>, String, String) {
    let out = support::child(config, args, "warn")
        .output()
        .await
        .expect("run the binary");
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Runs the binary and parses its stdout as JSON; it must exit 0.
async fn json(config: &Path, args: &[&str]) -> Value {
    let (code, stdout, stderr) = run(config, args).await;
    assert_eq!(code, Some(0), "{args:?}: {stderr}");
    serde_json::from_str(&stdout).unwrap_or_else(|e| panic!("{args:?}: not JSON ({e}): {stdout}"))
}

/// A time as both backends accept it in SQL text (SQLite's stored format, a valid PostgreSQL
/// timestamptz literal).
fn ts(t: DateTime<Utc>) -> String {
    t.format("%Y-%m-%dT%H:%M:%S%.6fZ").to_string()
}

/// Runs statements on the test database, whichever backend.
async fn sql(db: &TestDb, statements: &[String]) {
    if db.backend == "sqlite" {
        let pool = sqlx::sqlite::SqlitePool::connect(&db.url).await.unwrap();
        for s in statements {
            sqlx::query(s)
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("{s}: {e}"));
        }
        pool.close().await;
    } else {
        let pool = sqlx::postgres::PgPool::connect(&db.url).await.unwrap();
        for s in statements {
            sqlx::query(s)
                .execute(&pool)
                .await
                .unwrap_or_else(|e| panic!("{s}: {e}"));
        }
        pool.close().await;
    }
}

/// Inserts a job row as the queue would have left it; returns nothing (ids are read back).
fn insert_job(
    kind: &str,
    subject: &str,
    state: &str,
    error: Option<&str>,
    at: DateTime<Utc>,
) -> String {
    let finished = if state == "dead" || state == "done" {
        format!("'{}'", ts(at))
    } else {
        "NULL".to_owned()
    };
    let error = error.map_or("NULL".to_owned(), |e| format!("'{e}'"));
    format!(
        "INSERT INTO jobs (kind, subject, state, run_at, attempts, last_error, last_request_id, \
         created_at, updated_at, finished_at) VALUES ('{kind}', '{subject}', '{state}', '{t}', \
         {attempts}, {error}, {rid}, '{t}', '{t}', {finished})",
        t = ts(at),
        attempts = if state == "dead" { 10 } else { 0 },
        rid = if state == "dead" { "'req-1'" } else { "NULL" },
    )
}

/// Every value under a key ending in `_at` or `_until` is null or an RFC 3339 UTC time.
fn assert_times(v: &Value, path: &str) {
    match v {
        Value::Object(m) => {
            for (k, x) in m {
                let p = format!("{path}.{k}");
                if k.ends_with("_at") || k.ends_with("_until") || k == "last_cycle" {
                    if let Some(s) = x.as_str() {
                        assert!(s.ends_with('Z'), "{p}: {s}");
                        DateTime::parse_from_rfc3339(s).unwrap_or_else(|e| panic!("{p}: {s}: {e}"));
                    } else {
                        assert!(x.is_null(), "{p}: {x}");
                    }
                }
                assert_times(x, &p);
            }
        }
        Value::Array(a) => a.iter().for_each(|x| assert_times(x, path)),
        _ => {}
    }
}

fn ids(v: &Value) -> Vec<i64> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|j| j["id"].as_i64().unwrap())
        .collect()
}

#[tokio::test]
async fn status_is_a_fixed_size_summary_with_freshness_worst_lists_and_json() {
    for db in support::databases().await {
        let b = db.backend;
        let sim = support::simulator(SimConfig {
            users: 12,
            vehicles_per_user: 2,
            update_period: support::READINGS_HOLD_STILL,
            ..SimConfig::default()
        })
        .await;
        let config = support::config(&sim, &db.url);
        let path = support::write_config(db.dir.path(), &config, "");
        // A full cycle, not on a terminal: plain progress lines on stderr, summary on stdout.
        let (code, stdout, stderr) = run(&path, &["sync-once"]).await;
        assert_eq!(code, Some(0), "{b}: {stderr}");
        assert!(stdout.starts_with("sync-once: "), "{b}: {stdout}");
        assert!(
            stderr.contains("sync-once ["),
            "{b}: progress lines: {stderr}"
        );
        assert!(
            stderr.contains("polling signals: 0 jobs open"),
            "{b}: {stderr}"
        );
        assert!(!stderr.contains('\x1b'), "{b}: no terminal codes in a log");

        // Shape the fleet: ages of last polls and syncs, two vehicles not connected, 12 dead
        // jobs.
        let store = db.store().await;
        let mut vehicles: Vec<String> = store
            .list_vehicles()
            .await
            .unwrap()
            .into_iter()
            .map(|v| v.vehicle_id)
            .collect();
        vehicles.sort();
        let users: Vec<String> = store
            .list_users()
            .await
            .unwrap()
            .into_iter()
            .map(|u| u.user_id)
            .collect();
        assert_eq!((vehicles.len(), users.len()), (24, 12), "{b}");
        let now = Utc::now();
        let ago = |h: i64| ts(now - chrono::Duration::hours(h));
        let mut stmts = Vec::new();
        let set_poll = |v: &str, t: String| {
            format!("UPDATE vehicles SET last_polled_at = {t} WHERE vehicle_id = '{v}'")
        };
        // 3 never, 4 at 2 h, 5 at 10 h, 6 at 30 h, 2 not pollable, 4 fresh.
        for (i, v) in vehicles.iter().enumerate() {
            match i {
                0..=2 => stmts.push(set_poll(v, "NULL".into())),
                3..=6 => stmts.push(set_poll(v, format!("'{}'", ago(2)))),
                7..=11 => stmts.push(set_poll(v, format!("'{}'", ago(10)))),
                12..=17 => stmts.push(set_poll(v, format!("'{}'", ago(30)))),
                18 | 19 => stmts.push(format!(
                    "UPDATE vehicles SET status = 'permission_denied', \
                     status_reason = 'PERMISSION' WHERE vehicle_id = '{v}'"
                )),
                _ => {}
            }
        }
        stmts.push(format!(
            "UPDATE users SET last_synced_at = NULL WHERE user_id = '{}'",
            users[0]
        ));
        stmts.push(format!(
            "UPDATE users SET last_synced_at = '{}' WHERE user_id IN ('{}', '{}')",
            ago(30),
            users[1],
            users[2]
        ));
        for i in 0..12 {
            stmts.push(insert_job(
                "poll_signals",
                &format!("dead-{i}"),
                "dead",
                Some("HTTP 500"),
                now - chrono::Duration::minutes(60 - i),
            ));
        }
        sql(&db, &stmts).await;

        let s = json(&path, &["status", "--json"]).await;
        assert_times(&s, "status");
        assert_eq!(s["top"], 10, "{b}");
        assert_eq!(s["queue"]["dead"], 12, "{b}");
        assert!(s["queue"]["done"].as_i64().unwrap() >= 24 + 12, "{b}: {s}");
        let kinds: Vec<&str> = s["queue_by_kind"]
            .as_array()
            .unwrap()
            .iter()
            .map(|k| k["kind"].as_str().unwrap())
            .collect();
        assert_eq!(
            kinds,
            ["discover_users", "sync_connections", "poll_signals"]
        );
        assert_eq!(s["vehicles"]["total"], 24, "{b}");
        assert_eq!(s["vehicles"]["by_status"]["connected"], 22, "{b}");
        assert_eq!(s["vehicles"]["by_status"]["permission_denied"], 2, "{b}");
        let f = &s["vehicles"]["freshness"];
        assert_eq!(
            [
                &f["under_1h"],
                &f["under_6h"],
                &f["under_24h"],
                &f["over_24h"],
                &f["never"]
            ],
            [4, 4, 5, 6, 3],
            "{b}: {f}"
        );
        let f = &s["users"]["freshness"];
        assert_eq!(s["users"]["total"], 12);
        assert_eq!(
            [&f["under_1h"], &f["over_24h"], &f["never"]],
            [9, 2, 1],
            "{b}: {f}"
        );
        // The worst first: never polled, then the oldest.
        let stalest = s["stalest_vehicles"].as_array().unwrap();
        assert_eq!(stalest.len(), 10, "{b}");
        assert!(
            stalest[..3].iter().all(|v| v["last_polled_at"].is_null()),
            "{b}"
        );
        assert!(
            stalest[3..9]
                .iter()
                .all(|v| v["vehicle_id"].as_str() >= Some(vehicles[12].as_str()))
        );
        let unconnected = s["unconnected_vehicles"].as_array().unwrap();
        assert_eq!(unconnected.len(), 2, "{b}");
        assert_eq!(unconnected[0]["status"], "permission_denied");
        assert_eq!(unconnected[0]["status_reason"], "PERMISSION");
        let stalest_users = s["stalest_users"].as_array().unwrap();
        assert_eq!(stalest_users.len(), 10);
        assert_eq!(stalest_users[0]["user_id"], users[0].as_str());
        assert!(stalest_users[0]["last_synced_at"].is_null());
        let dead = s["dead_jobs"].as_array().unwrap();
        assert_eq!(dead.len(), 10, "{b}");
        assert_eq!(dead[0]["subject"], "dead-11", "newest first");
        assert_eq!(dead[0]["last_error"], "HTTP 500");
        assert_eq!(dead[0]["last_request_id"], "req-1");
        assert_eq!(dead[0]["attempts"], 10);
        // The shared rate budget is part of the summary.
        assert!(s["rate"]["adaptive_factor"].is_number(), "{b}: {s}");
        assert!(s["rate"]["processes"].is_array());
        assert!(s["app_paused_until"].is_null());
        assert!(s["samples"].as_i64().unwrap() > 0);

        let s = json(&path, &["status", "--json", "--top", "2"]).await;
        assert_eq!(s["stalest_vehicles"].as_array().unwrap().len(), 2);
        assert_eq!(s["dead_jobs"].as_array().unwrap().len(), 2);
        let s = json(&path, &["status", "--json", "--all"]).await;
        assert!(s["top"].is_null());
        assert_eq!(s["stalest_vehicles"].as_array().unwrap().len(), 22);
        assert_eq!(s["stalest_users"].as_array().unwrap().len(), 12);
        assert_eq!(s["dead_jobs"].as_array().unwrap().len(), 12);

        let (code, text, stderr) = run(&path, &["status"]).await;
        assert_eq!(code, Some(0), "{b}: {stderr}");
        for want in [
            "QUEUE",
            "FRESHNESS",
            "vehicles (polled)",
            "STALEST VEHICLES (10 of 22 pollable",
            "NOT CONNECTED (all 2",
            "STALEST USERS (10 of 12)",
            "DEAD JOBS (10 of 12",
            "rate ",
        ] {
            assert!(text.contains(want), "{b}: {want:?} in\n{text}");
        }
        let (code, _, _) = run(&path, &["status", "--top", "3", "--all"]).await;
        assert_eq!(code, Some(2), "{b}: --top and --all conflict");
        store.close().await;
        sim.shutdown().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn status_output_does_not_grow_with_a_10000_user_fleet() {
    for db in support::databases().await {
        let b = db.backend;
        let store = db.store().await;
        let now = ts(Utc::now() - chrono::Duration::hours(3));
        // 10,000 users with 3 vehicles each, made inside the database.
        let (users, vehicles) = if b == "sqlite" {
            (
                format!(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 10000) \
                     INSERT INTO users (user_id, source, created_at, last_synced_at) \
                     SELECT 'u-' || i, 'cli', '{now}', '{now}' FROM n"
                ),
                format!(
                    "WITH RECURSIVE n(i) AS (SELECT 1 UNION ALL SELECT i + 1 FROM n WHERE i < 30000) \
                     INSERT INTO vehicles (vehicle_id, user_id, status, status_changed_at, \
                     first_seen_at, last_seen_at, last_polled_at) \
                     SELECT 'v-' || i, 'u-' || (1 + i % 10000), 'connected', '{now}', '{now}', \
                     '{now}', '{now}' FROM n"
                ),
            )
        } else {
            (
                format!(
                    "INSERT INTO users (user_id, source, created_at, last_synced_at) \
                     SELECT 'u-' || i, 'cli', '{now}', '{now}' FROM generate_series(1, 10000) i"
                ),
                format!(
                    "INSERT INTO vehicles (vehicle_id, user_id, status, status_changed_at, \
                     first_seen_at, last_seen_at, last_polled_at) \
                     SELECT 'v-' || i, 'u-' || (1 + i % 10000), 'connected', '{now}', '{now}', \
                     '{now}', '{now}' FROM generate_series(1, 30000) i"
                ),
            )
        };
        sql(&db, &[users, vehicles]).await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, format!("[database]\nurl = \"{}\"\n", db.url)).unwrap();
        let started = std::time::Instant::now();
        let (code, text, stderr) = run(&path, &["status"]).await;
        let took = started.elapsed();
        assert_eq!(code, Some(0), "{b}: {stderr}");
        let lines = text.lines().count();
        assert!(lines <= 60, "{b}: {lines} lines:\n{text}");
        assert!(text.contains("STALEST USERS (10 of 10000)"), "{b}: {text}");
        assert!(
            text.contains("STALEST VEHICLES (10 of 30000 pollable"),
            "{b}: {text}"
        );
        assert!(took < Duration::from_secs(20), "{b}: status took {took:?}");
        let s = json(&path, &["status", "--json"]).await;
        assert_eq!(s["users"]["total"], 10000);
        assert_eq!(s["vehicles"]["freshness"]["under_6h"], 30000);
        assert!(
            serde_json::to_string(&s).unwrap().len() < 64 * 1024,
            "{b}: the JSON summary stays small"
        );
        eprintln!("{b}: status over 10,000 users / 30,000 vehicles: {lines} lines in {took:?}");
        store.close().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn users_and_vehicles_list_print_json_and_filter_by_status_and_user() {
    for db in support::databases().await {
        let b = db.backend;
        let sim = support::simulator(SimConfig {
            users: 3,
            vehicles_per_user: 2,
            update_period: support::READINGS_HOLD_STILL,
            ..SimConfig::default()
        })
        .await;
        let config = support::config(&sim, &db.url);
        let path = support::write_config(db.dir.path(), &config, "");
        let (code, _, stderr) = run(&path, &["sync-once"]).await;
        assert_eq!(code, Some(0), "{b}: {stderr}");

        let users = json(&path, &["users", "list", "--json"]).await;
        assert_times(&users, "users");
        let users = users.as_array().unwrap().clone();
        assert_eq!(users.len(), 3, "{b}");
        for u in &users {
            let keys: Vec<&str> = u.as_object().unwrap().keys().map(String::as_str).collect();
            assert_eq!(keys.len(), 4, "{keys:?}");
            for k in ["user_id", "source", "created_at", "last_synced_at"] {
                assert!(keys.contains(&k), "{b}: {k} in {keys:?}");
            }
            assert_eq!(u["source"], "discovery");
            assert!(u["last_synced_at"].is_string());
        }

        let all = json(&path, &["vehicles", "list", "--json"]).await;
        assert_times(&all, "vehicles");
        let all = all.as_array().unwrap().clone();
        assert_eq!(all.len(), 6, "{b}");
        let v = &all[0];
        for k in [
            "vehicle_id",
            "user_id",
            "connection_id",
            "make",
            "model",
            "year",
            "powertrain_type",
            "mode",
            "permissions",
            "status",
            "status_reason",
            "status_request_id",
            "status_changed_at",
            "blocked_until",
            "first_seen_at",
            "last_seen_at",
            "last_polled_at",
        ] {
            assert!(v.get(k).is_some(), "{b}: {k} in {v}");
        }
        assert!(v["permissions"].is_array());
        assert!(v["year"].is_i64());
        assert!(v["blocked_until"].is_null());

        let target = all[1]["vehicle_id"].as_str().unwrap().to_owned();
        sql(
            &db,
            &[format!(
                "UPDATE vehicles SET status = 'billing_limited' WHERE vehicle_id = '{target}'"
            )],
        )
        .await;
        let limited = json(
            &path,
            &["vehicles", "list", "--status", "billing_limited", "--json"],
        )
        .await;
        let limited = limited.as_array().unwrap();
        assert_eq!(limited.len(), 1, "{b}");
        assert_eq!(limited[0]["vehicle_id"], target.as_str());
        let user = users[0]["user_id"].as_str().unwrap();
        let theirs = json(&path, &["vehicles", "list", "--user", user, "--json"]).await;
        let theirs = theirs.as_array().unwrap();
        assert_eq!(theirs.len(), 2, "{b}");
        assert!(theirs.iter().all(|v| v["user_id"] == user));
        let none = json(
            &path,
            &[
                "vehicles",
                "list",
                "--user",
                user,
                "--status",
                "incompatible",
                "--json",
            ],
        )
        .await;
        assert_eq!(none, Value::Array(Vec::new()));
        let (code, text, _) = run(&path, &["vehicles", "list", "--user", user]).await;
        assert_eq!(code, Some(0));
        assert!(text.ends_with("2 vehicles\n"), "{b}: {text}");

        // Bad arguments are clap's: exit 2, with the reason.
        let (code, _, stderr) = run(&path, &["vehicles", "list", "--status", "parked"]).await;
        assert_eq!(code, Some(2), "{b}");
        assert!(stderr.contains("possible values"), "{stderr}");
        let (code, _, stderr) = run(&path, &["vehicles", "list", "--user", "a\nb"]).await;
        assert_eq!(code, Some(2), "{b}");
        assert!(stderr.contains("not valid"), "{stderr}");
        sim.shutdown().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn jobs_retry_requeues_only_dead_jobs_and_refuses_anything_else_whole() {
    for db in support::databases().await {
        let b = db.backend;
        let store = db.store().await;
        let now = Utc::now();
        let min = |m: i64| now - chrono::Duration::minutes(m);
        sql(
            &db,
            &[
                insert_job(
                    "poll_signals",
                    "v-a",
                    "dead",
                    Some("HTTP 500 boom"),
                    min(50),
                ),
                insert_job("poll_signals", "v-b", "dead", None, min(40)),
                insert_job("poll_signals", "v-c", "dead", Some("old"), min(30)),
                insert_job("poll_signals", "v-c", "pending", None, min(1)),
                insert_job("sync_connections", "u-e", "done", None, min(20)),
                // Two dead jobs of one subject: the newer is requeued, the older removed.
                insert_job("poll_signals", "v-f", "dead", Some("first"), min(15)),
                insert_job("poll_signals", "v-f", "dead", Some("second"), min(10)),
            ],
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, format!("[database]\nurl = \"{}\"\n", db.url)).unwrap();
        let all = json(&path, &["jobs", "list", "--json"]).await;
        assert_times(&all, "jobs");
        let all = all.as_array().unwrap().clone();
        assert_eq!(all.len(), 7, "{b}");
        let id = |subject: &str, state: &str| {
            all.iter()
                .filter(|j| j["subject"] == subject && j["state"] == state)
                .map(|j| j["id"].as_i64().unwrap())
                .collect::<Vec<_>>()
        };
        let (a, bb, c) = (
            id("v-a", "dead")[0],
            id("v-b", "dead")[0],
            id("v-c", "dead")[0],
        );
        let c_open = id("v-c", "pending")[0];
        let done = id("u-e", "done")[0];
        let f = id("v-f", "dead");
        let (f_new, f_old) = (f[0].max(f[1]), f[0].min(f[1]));
        let dead_before = ids(&json(&path, &["jobs", "list", "--dead", "--json"]).await);
        assert_eq!(dead_before.len(), 5, "{b}");
        assert!(dead_before.windows(2).all(|w| w[0] > w[1]), "newest first");

        // A done job, or an unknown id, refuses the whole command: nothing changes.
        let (code, _, stderr) =
            run(&path, &["jobs", "retry", &a.to_string(), &done.to_string()]).await;
        assert_eq!(code, Some(1), "{b}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "job #{done} is done: only dead jobs can be retried"
            )),
            "{stderr}"
        );
        assert!(stderr.contains("nothing was changed"));
        let (code, _, stderr) = run(&path, &["jobs", "retry", "987654"]).await;
        assert_eq!(code, Some(1), "{b}");
        assert!(stderr.contains("job #987654: no such job"), "{stderr}");
        assert_eq!(
            ids(&json(&path, &["jobs", "list", "--dead", "--json"]).await),
            dead_before
        );
        // Not a number, or ids with --dead: clap's exit 2.
        assert_eq!(run(&path, &["jobs", "retry", "abc"]).await.0, Some(2));
        assert_eq!(
            run(&path, &["jobs", "retry", "--dead", "1"]).await.0,
            Some(2)
        );
        assert_eq!(run(&path, &["jobs", "retry"]).await.0, Some(2));
        assert_eq!(
            run(&path, &["jobs", "list", "--state", "stuck"]).await.0,
            Some(2)
        );

        // One by id.
        let (code, stdout, stderr) = run(&path, &["jobs", "retry", &a.to_string()]).await;
        assert_eq!(code, Some(0), "{b}: {stderr}");
        assert!(
            stdout.contains(&format!("#{a} poll_signals(v-a): requeued")),
            "{stdout}"
        );
        let job = store.job(a).await.unwrap().unwrap();
        assert_eq!(job.state, "pending", "{b}");
        assert_eq!(job.attempts, 0);
        assert!(job.run_at <= Utc::now() && job.run_at >= now - chrono::Duration::seconds(5));
        assert_eq!(job.last_error, None);
        assert_eq!(job.last_request_id, None);
        assert_eq!(job.finished_at, None);
        assert_eq!(
            job.note.as_deref(),
            Some("requeued by an operator after: HTTP 500 boom [request id req-1]"),
            "{b}"
        );

        // Every dead job; one whose subject already has an open job is not run twice.
        let (code, stdout, stderr) = run(&path, &["jobs", "retry", "--dead"]).await;
        assert_eq!(code, Some(0), "{b}: {stderr}");
        assert!(
            stdout.contains(&format!(
                "#{c} poll_signals(v-c): already queued as #{c_open}"
            )),
            "{stdout}"
        );
        assert!(
            stdout.contains(&format!(
                "#{f_old} poll_signals(v-f): already queued as #{f_new}"
            )),
            "{stdout}"
        );
        assert!(stdout.contains("2 requeued, 2 already queued"), "{stdout}");
        assert_eq!(store.job(bb).await.unwrap().unwrap().state, "pending");
        assert_eq!(store.job(f_new).await.unwrap().unwrap().state, "pending");
        assert!(
            store.job(c).await.unwrap().is_none(),
            "{b}: superseded dead record removed"
        );
        assert!(store.job(f_old).await.unwrap().is_none());
        assert_eq!(store.job(c_open).await.unwrap().unwrap().state, "pending");
        assert_eq!(
            json(&path, &["jobs", "list", "--dead", "--json"]).await,
            Value::Array(vec![])
        );
        let pending = json(
            &path,
            &[
                "jobs",
                "list",
                "--state",
                "pending",
                "--kind",
                "poll_signals",
                "--json",
            ],
        )
        .await;
        let mut got = ids(&pending);
        got.sort();
        let mut want = vec![a, bb, c_open, f_new];
        want.sort();
        assert_eq!(got, want, "{b}");
        assert_eq!(
            ids(&json(&path, &["jobs", "list", "--limit", "2", "--json"]).await).len(),
            2
        );
        let (code, text, _) = run(&path, &["jobs", "list", "--limit", "2"]).await;
        assert_eq!(code, Some(0));
        assert!(text.contains("2 of 5 jobs"), "{b}: {text}");
        // Nothing dead left: --dead is a no-op that succeeds.
        let (code, stdout, _) = run(&path, &["jobs", "retry", "--dead"]).await;
        assert_eq!(code, Some(0));
        assert!(stdout.contains("0 requeued"), "{stdout}");
        // A requeued job is claimed like any other.
        let claimed = store
            .claim("test", Utc::now(), Duration::from_secs(30), 10)
            .await
            .unwrap();
        assert!(
            claimed
                .iter()
                .any(|j| j.id == a && j.kind == JobKind::PollSignals),
            "{b}"
        );
        store.close().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn jobs_cancel_deletes_pending_jobs_and_fences_out_a_running_one() {
    for db in support::databases().await {
        let b = db.backend;
        let store = db.store().await;
        let now = Utc::now();
        let running_id = store
            .enqueue(JobKind::PollSignals, "v-run", now)
            .await
            .unwrap();
        let claimed = store
            .claim("worker", now, Duration::from_secs(60), 1)
            .await
            .unwrap();
        assert_eq!(claimed.len(), 1);
        let running = claimed[0].clone();
        assert_eq!(running.id, running_id);
        let later = now + chrono::Duration::hours(1);
        let pending = store
            .enqueue(JobKind::SyncConnections, "u-p", later)
            .await
            .unwrap();
        sql(
            &db,
            &[insert_job("poll_signals", "v-dead", "dead", Some("x"), now)],
        )
        .await;
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.toml");
        std::fs::write(&path, format!("[database]\nurl = \"{}\"\n", db.url)).unwrap();
        let dead = ids(&json(&path, &["jobs", "list", "--dead", "--json"]).await)[0];

        // A dead job cannot be cancelled, and the whole command changes nothing.
        let (code, _, stderr) = run(
            &path,
            &["jobs", "cancel", &pending.to_string(), &dead.to_string()],
        )
        .await;
        assert_eq!(code, Some(1), "{b}: {stderr}");
        assert!(
            stderr.contains(&format!(
                "job #{dead} is dead: only pending or running jobs can be cancelled"
            )),
            "{stderr}"
        );
        assert!(store.job(pending).await.unwrap().is_some());
        let (code, _, stderr) = run(&path, &["jobs", "cancel", "424242"]).await;
        assert_eq!(code, Some(1));
        assert!(stderr.contains("no such job"));
        assert_eq!(run(&path, &["jobs", "cancel"]).await.0, Some(2));

        let (code, stdout, stderr) = run(
            &path,
            &[
                "jobs",
                "cancel",
                &pending.to_string(),
                &running_id.to_string(),
            ],
        )
        .await;
        assert_eq!(code, Some(0), "{b}: {stderr}");
        assert!(
            stdout.contains(&format!("#{pending} sync_connections(u-p): cancelled")),
            "{stdout}"
        );
        assert!(
            stdout.contains(&format!(
                "#{running_id} poll_signals(v-run): cancelled while running"
            )),
            "{stdout}"
        );
        assert!(store.job(pending).await.unwrap().is_none(), "{b}");
        assert!(store.job(running_id).await.unwrap().is_none(), "{b}");
        // The worker that held the running job can neither extend its lease nor commit.
        assert!(
            !store.extend_lease(&running, Utc::now()).await.unwrap(),
            "{b}"
        );
        assert!(matches!(
            store.complete(&running).await,
            Err(StoreError::LeaseLost { .. })
        ));
        // The dead job is untouched.
        assert_eq!(store.job(dead).await.unwrap().unwrap().state, "dead");
        store.close().await;
        db.cleanup().await;
    }
}

#[tokio::test]
async fn generated_man_pages_and_completions_cover_every_command() {
    let dir = tempfile::tempdir().unwrap();
    let out = tokio::process::Command::new(env!("CARGO_BIN_EXE_smartcar-sync"))
        .arg("generate-assets")
        .arg(dir.path())
        .env_remove("SMARTCAR_SYNC_CONFIG")
        .output()
        .await
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let read = |p: &str| {
        let text =
            std::fs::read_to_string(dir.path().join(p)).unwrap_or_else(|e| panic!("{p}: {e}"));
        assert!(!text.trim().is_empty(), "{p} is empty");
        text
    };
    let man = read("man/smartcar-sync.1");
    assert!(man.starts_with(".ie") || man.contains(".TH"), "roff: {man}");
    for command in [
        "run",
        "sync\\-once",
        "status",
        "jobs",
        "users",
        "vehicles",
        "migrate",
    ] {
        assert!(man.contains(command), "{command} in the man page");
    }
    assert!(!man.contains("generate"), "the hidden command stays hidden");
    let retry = read("man/smartcar-sync-jobs-retry.1");
    assert!(retry.contains("\\-\\-dead"), "{retry}");
    let status = read("man/smartcar-sync-status.1");
    assert!(
        status.contains("\\-\\-json") && status.contains("\\-\\-top"),
        "{status}"
    );
    for file in [
        "completions/smartcar-sync.bash",
        "completions/_smartcar-sync",
        "completions/smartcar-sync.fish",
    ] {
        let text = read(file);
        for word in [
            "sync-once",
            "status",
            "jobs",
            "retry",
            "cancel",
            "json",
            "needs_reconnect",
        ] {
            assert!(text.contains(word), "{word} in {file}");
        }
    }
    let listed = String::from_utf8_lossy(&out.stdout);
    assert!(listed.lines().count() >= 15, "{listed}");
}
