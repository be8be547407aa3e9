//! `herald jobs ...` as an operator uses it, and two `herald serve --roles
//! scheduler` processes sharing one store while the leader is killed.

use std::collections::BTreeMap;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use herald::app::Backends;
use herald::config::Config;
use serde_json::Value;

use crate::helpers::herald_bin;

fn herald_cmd(dir: &std::path::Path) -> Command {
    let mut cmd = Command::new(herald_bin());
    for (key, _) in std::env::vars() {
        if key.starts_with("HERALD_") {
            cmd.env_remove(key);
        }
    }
    cmd.current_dir(dir)
        .env("HERALD_STORE__DATA_DIR", dir.join("data"));
    cmd
}

fn jobs(dir: &std::path::Path, args: &[&str]) -> Output {
    herald_cmd(dir)
        .arg("jobs")
        .args(args)
        .output()
        .expect("herald runs")
}

fn json(out: &Output) -> Value {
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("JSON on stdout")
}

const NIGHTLY: &str = r#"
schedule = { kind = "cron", expression = "30 2 * * *", time_zone = "Europe/Paris" }
[[tasks]]
name = "hello"
run = { kind = "shell", command = ["/bin/echo", "hello"] }
"#;

#[tokio::test]
async fn jobs_commands_list_trigger_pause_and_cancel() {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("processes");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::write(folder.join("nightly.toml"), NIGHTLY).unwrap();
    let mut config = Config::defaults();
    config.store.data_dir = dir.path().join("data");
    let backends = Backends::open(&config).await.unwrap();
    let loaded = herald_scheduler::files::load(&backends.store, Some(&folder))
        .await
        .unwrap();
    assert_eq!(loaded, ["nightly", "brand-alerts"]);
    backends.close().await;

    let list = json(&jobs(dir.path(), &["list"]));
    let names: Vec<&str> = list
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["name"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["brand-alerts", "nightly"]);
    let shown = json(&jobs(dir.path(), &["show", "brand-alerts"]));
    assert_eq!(
        shown["spec"]["tasks"][0]["run"]["job"],
        "brand-alerts.build-due"
    );
    assert_eq!(shown["source"], "file");

    let run = json(&jobs(dir.path(), &["trigger", "nightly"]));
    assert_eq!(run["state"], "queued");
    let id = run["id"].as_str().unwrap().to_owned();
    assert!(run.get("token").is_none(), "the run token is not printed");
    let runs = json(&jobs(dir.path(), &["runs", "nightly"]));
    assert_eq!(runs[0]["id"], id.as_str());
    let detail = json(&jobs(dir.path(), &["run-show", &id]));
    assert_eq!(detail["tasks"][0]["task"], "hello");

    assert_eq!(
        json(&jobs(dir.path(), &["pause", "nightly"]))["paused"],
        true
    );
    assert_eq!(
        json(&jobs(dir.path(), &["resume", "nightly"]))["paused"],
        false
    );
    assert_eq!(
        json(&jobs(dir.path(), &["cancel", &id]))["state"],
        "cancelled"
    );

    for args in [
        &["show", "nope"][..],
        &["trigger", "nope"],
        &["run-show", "nope"],
        &["cancel", &id],
    ] {
        let out = jobs(dir.path(), args);
        assert!(!out.status.success(), "{args:?}");
        assert!(!String::from_utf8_lossy(&out.stderr).is_empty());
    }
}

/// One shell task per scheduled second that records its start, then runs
/// for a while; retried once if interrupted.
fn takeover_process(starts: &std::path::Path) -> String {
    format!(
        r#"
schedule = {{ kind = "continuous", interval = "1s" }}
overlap = "skip"
[[tasks]]
name = "work"
max_attempts = 3
backoff = {{ base = "1s", exponent = 1.0, cap = "1s" }}
run = {{ kind = "shell", command = ["/bin/sh", "-c", "echo \"$HERALD_RUN_ID $HERALD_ATTEMPT\" >> {}; sleep 4"] }}
"#,
        starts.display()
    )
}

/// A scheduler process logging to `log`, so a failure can say what it did.
fn serve_scheduler(dir: &std::path::Path, store_url: Option<&str>, log: &std::path::Path) -> Child {
    let mut cmd = herald_cmd(dir);
    cmd.args(["serve", "--roles", "scheduler"])
        .env("HERALD_SERVER__LISTEN", "127.0.0.1:0")
        .env("HERALD_SCHEDULER__PROCESS_DIR", dir.join("processes"))
        .env("HERALD_SCHEDULER__LEASE_TTL", "3s")
        .env("HERALD_SCHEDULER__RENEW_EVERY", "1s")
        .env("HERALD_SCHEDULER__TICK_INTERVAL", "100ms")
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(log).unwrap());
    if let Some(url) = store_url {
        cmd.env("HERALD_STORE__URL", url)
            .env("HERALD_BUS__BACKEND", "postgres");
    }
    cmd.spawn().unwrap()
}

/// `(run id, attempt)` of every start recorded so far.
fn starts(path: &std::path::Path) -> Vec<(String, u32)> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let (run, attempt) = l.split_once(' ')?;
            Some((run.to_owned(), attempt.parse().ok()?))
        })
        .collect()
}

async fn leader_pid(store: &herald_store::Store) -> Option<u32> {
    let lease = store.leases().current("scheduler").await.ok()??;
    lease
        .holder
        .strip_prefix("scheduler-pid")?
        .split('-')
        .next()?
        .parse()
        .ok()
}

async fn kill_the_leader_mid_run(store_url: Option<String>) {
    let dir = tempfile::tempdir().unwrap();
    let folder = dir.path().join("processes");
    std::fs::create_dir_all(&folder).unwrap();
    let starts_file = dir.path().join("starts");
    std::fs::write(folder.join("work.toml"), takeover_process(&starts_file)).unwrap();
    let mut config = Config::defaults();
    config.store.data_dir = dir.path().join("data");
    if let Some(url) = &store_url {
        config.store.url = url.clone();
        config.bus.backend = herald::config::BusBackend::Postgres;
    }
    // The test reads the lease and the runs through a store of its own.
    let backends = Backends::open(&config).await.unwrap();
    let store = backends.store.clone();
    let logs = [dir.path().join("first.log"), dir.path().join("second.log")];
    let mut first = serve_scheduler(dir.path(), store_url.as_deref(), &logs[0]);
    let mut second = serve_scheduler(dir.path(), store_url.as_deref(), &logs[1]);

    let deadline = Instant::now() + Duration::from_secs(60);
    let leader = loop {
        assert!(Instant::now() < deadline, "no run started");
        if let (Some(pid), false) = (leader_pid(&store).await, starts(&starts_file).is_empty()) {
            break pid;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let (interrupted_run, _) = starts(&starts_file)[0].clone();
    let (leader_child, other, other_log) = if leader == first.id() {
        (&mut first, &mut second, &logs[1])
    } else {
        assert_eq!(leader, second.id(), "the leader is one of ours");
        (&mut second, &mut first, &logs[0])
    };
    let killed_at = Instant::now();
    leader_child.kill().unwrap();
    leader_child.wait().unwrap();

    // The survivor takes over and retries the interrupted task.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(status) = other.try_wait().unwrap() {
            panic!(
                "the survivor exited ({status}); its log:\n{}",
                std::fs::read_to_string(other_log).unwrap_or_default()
            );
        }
        assert!(
            Instant::now() < deadline,
            "the interrupted task was not retried: {:?}",
            starts(&starts_file)
        );
        if starts(&starts_file)
            .iter()
            .any(|(run, attempt)| *run == interrupted_run && *attempt == 2)
        {
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let took = killed_at.elapsed();
    eprintln!("the interrupted task started again {took:?} after the leader was killed");
    assert_eq!(leader_pid(&store).await, Some(other.id()));
    assert!(
        took < Duration::from_secs(12),
        "takeover and retry took {took:?}; the lease lasts 3s and the backoff 1s"
    );
    let detail = store
        .processes()
        .run(&interrupted_run)
        .await
        .unwrap()
        .unwrap();
    assert!(
        detail.attempts[0]
            .error
            .as_deref()
            .unwrap_or_default()
            .contains("interrupted"),
        "{:?}",
        detail.attempts
    );

    let _ = other.kill();
    let _ = other.wait();
    // No scheduled time ran twice, and no attempt of a run started twice.
    let runs = store
        .processes()
        .runs("work", herald_store::page::PageRequest::first(1000))
        .await
        .unwrap()
        .items;
    let mut per_time: BTreeMap<i64, usize> = BTreeMap::new();
    for run in &runs {
        *per_time
            .entry(run.scheduled_for.unwrap().millis())
            .or_default() += 1;
    }
    assert!(per_time.values().all(|n| *n == 1), "{per_time:?}");
    let mut seen = std::collections::BTreeSet::new();
    for start in starts(&starts_file) {
        assert!(seen.insert(start.clone()), "{start:?} started twice");
    }
    backends.close().await;
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_leader_hands_over_on_sqlite() {
    kill_the_leader_mid_run(None).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn killing_the_leader_hands_over_on_postgres() {
    let Ok(base) = std::env::var("HERALD_TEST_DATABASE_URL") else {
        assert!(
            std::env::var("HERALD_REQUIRE_POSTGRES").as_deref() != Ok("1"),
            "HERALD_REQUIRE_POSTGRES=1 but HERALD_TEST_DATABASE_URL is not set"
        );
        eprintln!("skipped: HERALD_TEST_DATABASE_URL is not set");
        return;
    };
    let schema = format!("herald_jobs_{}", uuid::Uuid::new_v4().simple());
    let pool = sqlx::PgPool::connect(&base).await.unwrap();
    sqlx::query(&format!("CREATE SCHEMA {schema}"))
        .execute(&pool)
        .await
        .unwrap();
    pool.close().await;
    let separator = if base.contains('?') { '&' } else { '?' };
    kill_the_leader_mid_run(Some(format!(
        "{base}{separator}options=-c%20search_path%3D{schema}"
    )))
    .await;
}
