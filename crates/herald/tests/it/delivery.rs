//! The outbound pipeline as a real process: `herald demo seed` loads data,
//! `herald serve` builds the demo alert's audience and mails it to a real
//! SMTP server (aiosmtpd, slowed down so a send is in flight when the process
//! is stopped), and the process is killed or stopped mid-way and started
//! again. Every eligible member must end with one send-log row and at least
//! one email; a SIGKILL may leave at most the in-flight sends duplicated, each
//! flagged as a possible duplicate; a SIGTERM leaves none.

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use sqlx::sqlite::{SqliteConnectOptions, SqlitePool};
use sqlx::Row;

use crate::helpers::herald_bin;

/// Sends in flight at once (`mailer.concurrency` and `mailer.receive_batch`):
/// the most duplicates one SIGKILL may cause.
const IN_FLIGHT: usize = 4;
/// SMTP connections: fewer than the sends in flight, so each connection
/// gets its sends as a batch.
const CONNECTIONS: usize = 2;

/// The capturing SMTP server of herald-mail's tests.
struct Sink {
    child: Child,
    dir: tempfile::TempDir,
    port: u16,
}

impl Sink {
    fn start(delay_secs: f64) -> Sink {
        let dir = tempfile::tempdir().unwrap();
        let script =
            Path::new(env!("CARGO_MANIFEST_DIR")).join("../herald-mail/tests/smtp_capture.py");
        let mut child = Command::new("python3")
            .arg(&script)
            .arg(dir.path())
            .args(["--delay", &delay_secs.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 runs the SMTP capture (pip install aiosmtpd)");
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let port = line
            .trim()
            .strip_prefix("PORT ")
            .unwrap_or_else(|| panic!("the SMTP capture did not start: {line:?}"))
            .parse()
            .unwrap();
        Sink { child, dir, port }
    }

    /// Member id of every captured message, in arrival order.
    fn member_ids(&self) -> Vec<String> {
        let mut files: Vec<PathBuf> = std::fs::read_dir(self.dir.path())
            .unwrap()
            .map(|e| e.unwrap().path())
            .filter(|p| p.extension().is_some_and(|e| e == "eml"))
            .collect();
        files.sort();
        files
            .iter()
            .map(|path| {
                let text = std::fs::read_to_string(path).unwrap();
                text.lines()
                    .find_map(|l| l.strip_prefix("X-Herald-Member-Id: "))
                    .unwrap_or_else(|| panic!("{} has no member id header", path.display()))
                    .trim()
                    .to_owned()
            })
            .collect()
    }

    fn count(&self) -> usize {
        std::fs::read_dir(self.dir.path())
            .unwrap()
            .filter(|e| {
                e.as_ref()
                    .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "eml"))
            })
            .count()
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A Herald installation in a temporary folder, configured to mail the sink.
struct Install {
    dir: tempfile::TempDir,
}

impl Install {
    fn new(sink: &Sink, audience_batch: u32) -> Install {
        let dir = tempfile::tempdir().unwrap();
        let port = TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let config = format!(
            r#"
[server]
listen = "127.0.0.1:{port}"

[store]
data_dir = "{data}"

[bus]
max_receives = 50

[mailer]
claim_ttl = "2s"
poll_wait = "200ms"
concurrency = {IN_FLIGHT}
receive_batch = {IN_FLIGHT}
retry_backoff = ["200ms"]
default_transport = "sink"

[audience]
poll_interval = "200ms"
batch_size = {audience_batch}

[transports.sink]
kind = "smtp"
host = "127.0.0.1"
port = {sink}
security = "none"
pool_size = {CONNECTIONS}
"#,
            data = dir.path().join("data").display(),
            sink = sink.port,
        );
        std::fs::write(dir.path().join("herald.toml"), config).unwrap();
        Install { dir }
    }

    fn command(&self) -> Command {
        let mut cmd = Command::new(herald_bin());
        for (key, _) in std::env::vars() {
            if key.starts_with("HERALD_") {
                cmd.env_remove(key);
            }
        }
        cmd.current_dir(self.dir.path());
        cmd
    }

    fn seed(&self, members: usize) {
        let output = self
            .command()
            .args([
                "demo",
                "seed",
                "--members",
                &members.to_string(),
                "--send-in",
                "0s",
            ])
            .output()
            .unwrap();
        assert!(
            output.status.success(),
            "demo seed failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    fn serve(&self) -> Child {
        self.command()
            .arg("serve")
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap()
    }

    async fn db(&self) -> SqlitePool {
        let options = SqliteConnectOptions::new()
            .filename(self.dir.path().join("data/herald.db"))
            .read_only(true);
        SqlitePool::connect_with(options).await.unwrap()
    }
}

fn signal(child: &Child, name: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The alert's eligible members, computed from the data directly rather than
/// through Herald's own audience query.
async fn eligible_members(db: &SqlitePool) -> BTreeSet<String> {
    sqlx::query(
        "SELECT m.id FROM members m, brand_alerts ba \
         WHERE m.status = 'active' \
           AND EXISTS (SELECT 1 FROM affinities a \
                       JOIN sales s ON s.brand_id = a.brand_id \
                       JOIN brand_alert_sales bas ON bas.sale_id = s.id AND bas.alert_id = ba.id \
                       WHERE a.member_id = m.id AND a.score >= ba.affinity_threshold) \
           AND NOT EXISTS (SELECT 1 FROM subscriptions x WHERE x.member_id = m.id \
                           AND x.email_type = 'brand_alerts' AND x.subscribed = 0) \
           AND NOT EXISTS (SELECT 1 FROM suppressions x WHERE x.address = m.email_normalized)",
    )
    .fetch_all(db)
    .await
    .unwrap()
    .iter()
    .map(|r| r.get::<String, _>(0))
    .collect()
}

async fn alert_state(db: &SqlitePool) -> (String, i64) {
    let row = sqlx::query("SELECT state, enqueued FROM brand_alerts")
        .fetch_one(db)
        .await
        .unwrap();
    (row.get(0), row.get(1))
}

async fn wait_until_sent(db: &SqlitePool, server: &mut Child) {
    let deadline = Instant::now() + Duration::from_secs(180);
    loop {
        if alert_state(db).await.0 == "sent" {
            return;
        }
        assert!(server.try_wait().unwrap().is_none(), "herald serve exited");
        assert!(Instant::now() < deadline, "the alert was not sent in time");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn wait_for_sink(sink: &Sink, at_least: usize) {
    let deadline = Instant::now() + Duration::from_secs(120);
    while sink.count() < at_least {
        assert!(
            Instant::now() < deadline,
            "the sink got {} of {at_least}",
            sink.count()
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// `(state, possible_duplicate)` of every send-log row, by member.
async fn send_log(db: &SqlitePool) -> BTreeMap<String, (String, bool)> {
    sqlx::query("SELECT member_id, state, possible_duplicate FROM send_log")
        .fetch_all(db)
        .await
        .unwrap()
        .iter()
        .map(|r| (r.get(0), (r.get(1), r.get::<i64, _>(2) == 1)))
        .collect()
}

/// Every eligible member has one sent row and at least one email; returns
/// the members that got more than one.
async fn check_exactly_once_or_flagged(db: &SqlitePool, sink: &Sink) -> Vec<String> {
    let eligible = eligible_members(db).await;
    assert!(
        eligible.len() > 50,
        "the demo audience is too small to test"
    );
    let log = send_log(db).await;
    assert_eq!(
        log.keys().cloned().collect::<BTreeSet<_>>(),
        eligible,
        "one send-log row per eligible member, none for others"
    );
    let not_sent: Vec<_> = log
        .iter()
        .filter(|(_, (state, _))| state != "sent")
        .collect();
    assert!(not_sent.is_empty(), "rows not sent: {not_sent:?}");

    let mut received: BTreeMap<String, usize> = BTreeMap::new();
    for member in sink.member_ids() {
        *received.entry(member).or_default() += 1;
    }
    assert_eq!(
        received.keys().cloned().collect::<BTreeSet<_>>(),
        eligible,
        "every eligible member, and nobody else, got the email"
    );
    let duplicated: Vec<String> = received
        .into_iter()
        .filter(|(_, n)| *n > 1)
        .map(|(member, n)| {
            assert_eq!(n, 2, "{member} got {n} copies");
            member
        })
        .collect();
    for member in &duplicated {
        assert!(
            log[member].1,
            "{member} got two copies but is not flagged as a possible duplicate"
        );
    }
    duplicated
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_mid_send_resends_at_most_the_in_flight_and_flags_them() {
    let sink = Sink::start(0.03);
    let install = Install::new(&sink, 200);
    install.seed(1000);
    let db = install.db().await;
    let eligible = eligible_members(&db).await.len();

    let mut kills = 0;
    for fraction in [4, 2] {
        let mut server = install.serve();
        wait_for_sink(&sink, eligible / fraction).await;
        signal(&server, "KILL");
        server.wait().unwrap();
        kills += 1;
    }
    let mut server = install.serve();
    wait_until_sent(&db, &mut server).await;
    signal(&server, "TERM");
    assert!(server.wait().unwrap().success());

    let duplicated = check_exactly_once_or_flagged(&db, &sink).await;
    assert!(
        duplicated.len() <= kills * IN_FLIGHT,
        "{} duplicates after {kills} kills with {IN_FLIGHT} sends in flight: {duplicated:?}",
        duplicated.len()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn sigterm_mid_send_then_restart_sends_no_duplicate() {
    let sink = Sink::start(0.03);
    let install = Install::new(&sink, 200);
    install.seed(1000);
    let db = install.db().await;
    let eligible = eligible_members(&db).await.len();

    let mut server = install.serve();
    wait_for_sink(&sink, eligible / 3).await;
    signal(&server, "TERM");
    assert!(server.wait().unwrap().success(), "graceful stop exits 0");
    let (state, _) = alert_state(&db).await;
    assert_eq!(state, "sending", "stopped mid-send");

    let mut server = install.serve();
    wait_until_sent(&db, &mut server).await;
    signal(&server, "TERM");
    assert!(server.wait().unwrap().success());

    let duplicated = check_exactly_once_or_flagged(&db, &sink).await;
    assert!(
        duplicated.is_empty(),
        "duplicates after a graceful stop: {duplicated:?}"
    );
    let flagged = send_log(&db).await.values().filter(|(_, dup)| *dup).count();
    assert_eq!(flagged, 0, "no possible duplicates after a graceful stop");
}

#[tokio::test(flavor = "multi_thread")]
async fn sigkill_during_the_audience_build_then_restart_enqueues_the_rest_once() {
    let sink = Sink::start(0.0);
    // Small batches make the build long enough to be killed in the middle.
    let install = Install::new(&sink, 5);
    install.seed(3000);
    let db = install.db().await;

    let mut server = install.serve();
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let (state, enqueued) = alert_state(&db).await;
        if state == "building" && enqueued > 0 {
            break;
        }
        assert_ne!(
            state, "sending",
            "the build finished before it could be killed"
        );
        assert!(Instant::now() < deadline, "the build never started");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    signal(&server, "KILL");
    server.wait().unwrap();
    let (state, _) = alert_state(&db).await;
    assert_eq!(state, "building", "killed mid-build");

    let mut server = install.serve();
    wait_until_sent(&db, &mut server).await;
    signal(&server, "TERM");
    assert!(server.wait().unwrap().success());

    let duplicated = check_exactly_once_or_flagged(&db, &sink).await;
    assert!(
        duplicated.len() <= IN_FLIGHT,
        "{} duplicates after one kill: {duplicated:?}",
        duplicated.len()
    );
    let audience: i64 = sqlx::query_scalar("SELECT audience_size FROM brand_alerts")
        .fetch_one(&db)
        .await
        .unwrap();
    assert_eq!(audience as usize, eligible_members(&db).await.len());
}
