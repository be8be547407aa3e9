//! The delivery benchmark: the mailer sending an alert's queued messages
//! over SMTP into Postfix's `smtp-sink`, against Postfix's `smtp-source`
//! sending as many messages of the same size over as many sessions into the
//! same sink.
//!
//! Set up untimed: a fresh SQLite store with N members and an alert over 3
//! brands (every member in its audience), built by the audience job so the
//! N messages wait on the queue; the sink started on a free port. Herald's
//! figure: from the mailer's start until the send log holds N rows marked
//! sent — receiving, claiming, rendering the demo template with its CSS
//! inlined, sending through the SMTP transport's pool of `sessions`
//! connections (each pipelining its batch of the sends in flight: one
//! message's content in the same write as the next one's envelope),
//! confirming and acking. The reference: `smtp-source -d -s
//! <sessions> -m N -l <bytes>`, where `-d` keeps each session's connection
//! for its next message as Herald's pool does and `<bytes>` is the mean
//! size of Herald's rendered messages (smtp-source adds its own few headers
//! on top). The sink counts the messages it receives (`-c`); each phase must
//! deliver exactly N.

use std::collections::BTreeMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use herald_alerts::{
    AudienceJob, AudienceSettings, BuildOutcome, Composer, Mailer, MailerReport, MailerSettings,
    Recipient, Transports,
};
use herald_bus::{Bus, EmbeddedBus, QueueConfig};
use herald_core::{Clock, SystemClock};
use herald_mail::transport::{SmtpConfig, SmtpSecurity};
use herald_mail::TransportConfig;
use herald_store::brand_alerts::BrandAlert;
use herald_store::{SqliteDb, Store};
use serde::Serialize;
use sqlx::sqlite::SqliteConnectOptions;
use sqlx::{Connection, SqliteConnection};
use tokio::process::{Child, Command};
use tokio_util::sync::CancellationToken;

use super::dataset::{self, Dataset, DatasetSpec};
use super::{per_second, RunDir};

/// The issue's target: at least this share of smtp-source's rate.
const TARGET_RATIO: f64 = 0.8;
/// The mailer's default concurrency per SMTP session: each session
/// pipelines a batch of this many messages, one round trip each.
const SENDS_PER_SESSION: usize = 8;
/// The transport's name in the benchmark's configuration.
const TRANSPORT: &str = "smtp";
/// Signs the unsubscribe links; any 32 bytes do for a throwaway store.
const SIGNING_KEY: &[u8; 32] = b"herald-bench-unsubscribe-signing";
/// How many rendered messages the mean size is taken over.
const SIZE_SAMPLE: u64 = 100;
/// How often the send log is checked for the last confirmed send; bounds
/// the timing error of Herald's figure.
const POLL_EVERY: Duration = Duration::from_millis(20);
/// A phase that makes no progress for this long has failed.
const STALL_LIMIT: Duration = Duration::from_secs(60);
/// How long the sink may take to count a message it already acknowledged.
const SINK_COUNT_GRACE: Duration = Duration::from_secs(10);
/// The sink's listen backlog.
const SINK_BACKLOG: &str = "1024";
const ENVELOPE_FROM: &str = "alerts@herald.localhost";
const ENVELOPE_TO: &str = "member@example.com";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeliveryBenchOptions {
    /// Where to create the run's temporary folder (the system's temporary
    /// folder when `None`); removed after the run.
    pub dir: Option<PathBuf>,
    /// Messages each side sends.
    pub messages: u64,
    /// SMTP sessions: Herald's connection pool size and smtp-source's `-s`.
    pub sessions: u32,
    /// The mailer's `concurrency`; `None` uses 8 per session. The SMTP
    /// transport gives each pooled connection an equal batch of the sends
    /// in flight and pipelines it, one round trip per message; smtp-source
    /// has one message in flight per session.
    pub concurrency: Option<usize>,
    /// The mailer's `receive_batch`.
    pub receive_batch: usize,
}

impl Default for DeliveryBenchOptions {
    fn default() -> Self {
        let mailer = MailerSettings::default();
        Self {
            dir: None,
            messages: 10_000,
            sessions: u32::try_from(mailer.concurrency).unwrap_or(16),
            concurrency: None,
            receive_batch: mailer.receive_batch,
        }
    }
}

/// Rates in messages per second; the ratio is Herald / smtp-source, so 1.0
/// means as fast as Postfix's own generator.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryBenchReport {
    pub messages: u64,
    pub sessions: u32,
    pub concurrency: usize,
    pub receive_batch: usize,
    /// Mean size of Herald's rendered messages, headers included; passed to
    /// smtp-source as its payload length.
    pub message_bytes: usize,
    /// Generating the store and enqueuing (not measured).
    pub setup_secs: f64,
    pub herald_secs: f64,
    pub herald_per_sec: f64,
    /// CPU time (user + system) of the benchmark's process, which runs the
    /// mailer, over Herald's phase, per message; steadier than the rate
    /// on a machine shared with other work. `None` without `/proc`.
    pub herald_cpu_us_per_message: Option<f64>,
    pub source_secs: f64,
    pub source_per_sec: f64,
    pub ratio: f64,
    pub sink_received_from_herald: u64,
    pub sink_received_from_source: u64,
    /// Send-log rows marked sent.
    pub sent_in_send_log: u64,
    pub mailer_sent: u64,
    pub mailer_retried: u64,
    pub mailer_failed: u64,
    pub possible_duplicates: u64,
}

impl fmt::Display for DeliveryBenchReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "delivery benchmark: {} messages of {} bytes (the demo template rendered per member) \
             into Postfix smtp-sink over {} SMTP sessions; mailer concurrency {}, receive batch {}",
            self.messages, self.message_bytes, self.sessions, self.concurrency, self.receive_batch
        )?;
        writeln!(
            f,
            "store generated and audience enqueued in {:.1} s (not measured)",
            self.setup_secs
        )?;
        writeln!(f, "{:<40} {:>10} {:>12}", "sender", "seconds", "messages/s")?;
        writeln!(
            f,
            "{:<40} {:>10.2} {:>12.0}",
            "herald mailer (queue to sink)", self.herald_secs, self.herald_per_sec
        )?;
        writeln!(
            f,
            "{:<40} {:>10.2} {:>12.0}",
            format!(
                "smtp-source -d -s {} -l {}",
                self.sessions, self.message_bytes
            ),
            self.source_secs,
            self.source_per_sec
        )?;
        writeln!(
            f,
            "rate ratio herald/smtp-source: {:.2} (target at least {TARGET_RATIO})",
            self.ratio
        )?;
        if let Some(cpu) = self.herald_cpu_us_per_message {
            writeln!(f, "herald CPU (user + system) per message: {cpu:.0} µs")?;
        }
        write!(
            f,
            "sink received {} from Herald and {} from smtp-source; send log: {} sent \
             ({} retried, {} failed, {} possible duplicates)",
            self.sink_received_from_herald,
            self.sink_received_from_source,
            self.sent_in_send_log,
            self.mailer_retried,
            self.mailer_failed,
            self.possible_duplicates
        )
    }
}

/// The rounds of a run of the benchmark, each a Herald phase followed by
/// an smtp-source phase. On a machine shared with other work the rate of
/// either phase swings by a third from one second to the next, so one
/// round's ratio says little; the median of the rounds' ratios says more.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct DeliveryRounds(pub Vec<DeliveryBenchReport>);

impl DeliveryRounds {
    /// The median of the rounds' ratios (the mean of the middle two for an
    /// even count); `None` without rounds.
    pub fn median_ratio(&self) -> Option<f64> {
        let mut ratios: Vec<f64> = self.0.iter().map(|r| r.ratio).collect();
        ratios.sort_by(f64::total_cmp);
        let middle = ratios.len() / 2;
        match ratios.len() {
            0 => None,
            n if n % 2 == 1 => Some(ratios[middle]),
            _ => Some((ratios[middle - 1] + ratios[middle]) / 2.0),
        }
    }
}

impl fmt::Display for DeliveryRounds {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (round, report) in self.0.iter().enumerate() {
            writeln!(f, "round {} of {}", round + 1, self.0.len())?;
            writeln!(f, "{report}")?;
        }
        if let Some(median) = self.median_ratio() {
            let ratios: Vec<String> = self.0.iter().map(|r| format!("{:.2}", r.ratio)).collect();
            writeln!(
                f,
                "rate ratio herald/smtp-source per round: {}; median {median:.2} (target at least {TARGET_RATIO})",
                ratios.join(", ")
            )?;
        }
        Ok(())
    }
}

/// Runs `rounds` rounds of [`run_delivery_bench`], each on a fresh store
/// and sink.
pub async fn run_delivery_rounds(
    opts: DeliveryBenchOptions,
    rounds: u32,
) -> anyhow::Result<DeliveryRounds> {
    anyhow::ensure!(rounds >= 1, "rounds: must be at least 1");
    let mut reports = Vec::new();
    for _ in 0..rounds {
        reports.push(run_delivery_bench(opts.clone()).await?);
    }
    Ok(DeliveryRounds(reports))
}

/// Runs Herald's mailer, then smtp-source, into one smtp-sink.
pub async fn run_delivery_bench(opts: DeliveryBenchOptions) -> anyhow::Result<DeliveryBenchReport> {
    anyhow::ensure!(opts.messages >= 1, "messages: must be at least 1");
    anyhow::ensure!(opts.sessions >= 1, "sessions: must be at least 1");
    let concurrency = opts
        .concurrency
        .unwrap_or(opts.sessions as usize * SENDS_PER_SESSION);
    let settings = MailerSettings {
        concurrency,
        receive_batch: opts.receive_batch,
        default_transport: TRANSPORT.to_owned(),
        ..MailerSettings::default()
    };
    settings.validate()?;
    let sink_program = find_postfix_tool("smtp-sink")?;
    let source_program = find_postfix_tool("smtp-source")?;

    let dir = RunDir::create(opts.dir.as_deref())?;
    let setup = Instant::now();
    let db_path = dir.path().join("herald.db");
    let data = dataset::generate(
        &db_path,
        &DatasetSpec {
            members: opts.messages,
            brands: 3,
            affinities_per_member: 2,
            alert_brands: 3,
            threshold: 0.0,
            unsubscribed_percent: 0,
            suppressed_percent: 0,
            cadence_percent: 0,
        },
    )
    .await?;
    let clock: Arc<dyn Clock> = Arc::new(SystemClock);
    let db = SqliteDb::open(&db_path).await?;
    let store = Store::from_sqlite(db.clone(), clock.clone());
    let bus: Arc<dyn Bus> = Arc::new(EmbeddedBus::new(db));
    let alert = enqueue_audience(&store, &bus, &data, opts.messages).await?;
    let setup_secs = setup.elapsed().as_secs_f64();

    let mut sink = Sink::start(&sink_program, dir.path()).await?;
    let transports = Transports::build(
        &BTreeMap::from([(
            TRANSPORT.to_owned(),
            TransportConfig::Smtp(SmtpConfig {
                host: "127.0.0.1".to_owned(),
                port: Some(sink.port),
                security: SmtpSecurity::None,
                username: None,
                password: None,
                ca_file: None,
                pool_size: opts.sessions,
                rate_limit_per_second: None,
                timeout: Duration::from_secs(30),
            }),
        )]),
        TRANSPORT,
        dir.path(),
    )?;
    let composer = Arc::new(Composer::new(
        store.clone(),
        Arc::new(transports),
        &settings,
        SIGNING_KEY,
        clock.clone(),
    )?);
    let message_bytes = mean_message_size(&store, &composer, &data, &alert).await?;
    let mailer = Mailer::new(
        store.clone(),
        bus,
        composer,
        settings,
        QueueConfig::default(),
        clock,
    )?;

    let cpu_before = process_cpu();
    let herald = time_mailer(mailer, &db_path, &alert.id, opts.messages).await;
    let herald_cpu_us_per_message = cpu_before
        .zip(process_cpu())
        .map(|(before, after)| (after - before).as_secs_f64() * 1e6 / opts.messages as f64);
    store.close().await;
    let (herald_elapsed, mailer_report, sent_in_send_log) = herald?;
    let sink_received_from_herald = sink.wait_for_count(opts.messages).await?;

    let started = Instant::now();
    let source = Command::new(&source_program)
        .arg("-d")
        .args(["-s", &opts.sessions.to_string()])
        .args(["-m", &opts.messages.to_string()])
        .args(["-l", &message_bytes.to_string()])
        .args(["-f", ENVELOPE_FROM, "-t", ENVELOPE_TO])
        .arg(format!("127.0.0.1:{}", sink.port))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .await
        .with_context(|| format!("cannot run {}", source_program.display()))?;
    let source_elapsed = started.elapsed();
    anyhow::ensure!(
        source.status.success(),
        "smtp-source failed ({}): {}",
        source.status,
        String::from_utf8_lossy(&source.stderr).trim()
    );
    let sink_total = sink
        .wait_for_count(sink_received_from_herald + opts.messages)
        .await?;
    sink.stop().await;

    let sink_received_from_source = sink_total - sink_received_from_herald;
    for (who, received) in [
        ("Herald", sink_received_from_herald),
        ("smtp-source", sink_received_from_source),
    ] {
        anyhow::ensure!(
            received == opts.messages,
            "the sink received {received} messages from {who} instead of {}",
            opts.messages
        );
    }
    anyhow::ensure!(
        mailer_report.sent == opts.messages && mailer_report.failed == 0,
        "the mailer sent {} and failed {} of {} messages",
        mailer_report.sent,
        mailer_report.failed,
        opts.messages
    );
    anyhow::ensure!(
        sent_in_send_log == opts.messages,
        "the send log holds {sent_in_send_log} sent rows for {} messages",
        opts.messages
    );

    let herald_per_sec = per_second(opts.messages, herald_elapsed);
    let source_per_sec = per_second(opts.messages, source_elapsed);
    Ok(DeliveryBenchReport {
        messages: opts.messages,
        sessions: opts.sessions,
        concurrency,
        receive_batch: opts.receive_batch,
        message_bytes,
        setup_secs,
        herald_secs: herald_elapsed.as_secs_f64(),
        herald_per_sec,
        herald_cpu_us_per_message,
        source_secs: source_elapsed.as_secs_f64(),
        source_per_sec,
        ratio: herald_per_sec / source_per_sec,
        sink_received_from_herald,
        sink_received_from_source,
        sent_in_send_log,
        mailer_sent: mailer_report.sent,
        mailer_retried: mailer_report.retried,
        mailer_failed: mailer_report.failed,
        possible_duplicates: mailer_report.possible_duplicates,
    })
}

/// Builds the alert's audience so its messages wait on the queue.
async fn enqueue_audience(
    store: &Store,
    bus: &Arc<dyn Bus>,
    data: &Dataset,
    expected: u64,
) -> anyhow::Result<BrandAlert> {
    let job = AudienceJob::new(
        store.clone(),
        bus.clone(),
        AudienceSettings::default(),
        QueueConfig::default(),
        Arc::new(SystemClock),
    )?;
    match job.build(&data.alert_id, &CancellationToken::new()).await? {
        BuildOutcome::Finished(alert) if alert.build.enqueued == expected => Ok(*alert),
        BuildOutcome::Finished(alert) => anyhow::bail!(
            "the audience job enqueued {} messages instead of {expected}",
            alert.build.enqueued
        ),
        other => anyhow::bail!("the audience build did not finish: {other:?}"),
    }
}

/// The mean size of the first members' rendered messages, as sent.
async fn mean_message_size(
    store: &Store,
    composer: &Composer,
    data: &Dataset,
    alert: &BrandAlert,
) -> anyhow::Result<usize> {
    let content = composer
        .content(alert)
        .await
        .map_err(|e| anyhow::anyhow!("loading the alert's content: {e}"))?;
    let members = store.members();
    let mut total = 0;
    let mut count = 0;
    for i in 1..=SIZE_SAMPLE {
        let id = data.member_id(i);
        let Some(member) = members.get(&id).await? else {
            break;
        };
        let brand_ids: Vec<String> = members
            .affinities(&id)
            .await?
            .into_iter()
            .filter(|a| data.alert_brand_ids.contains(&a.brand_id) && a.score >= data.threshold)
            .map(|a| a.brand_id)
            .collect();
        let recipient = Recipient::from(&member);
        let email = composer.compose(alert, &content, &recipient, &brand_ids)?;
        total += email.formatted()?.len();
        count += 1;
    }
    anyhow::ensure!(count > 0, "no member to render a message for");
    Ok(total / count)
}

/// Runs the mailer until the send log holds `expected` sent rows; returns
/// the time that took, the mailer's own counts and the sent rows.
async fn time_mailer(
    mailer: Mailer,
    db_path: &Path,
    alert_id: &str,
    expected: u64,
) -> anyhow::Result<(Duration, MailerReport, u64)> {
    // A connection of its own, so watching takes nothing from the mailer's
    // reader pool.
    let mut watcher = SqliteConnection::connect_with(
        &SqliteConnectOptions::new()
            .filename(db_path)
            .read_only(true),
    )
    .await?;
    let stop = CancellationToken::new();
    let started = Instant::now();
    let mut running = tokio::spawn(mailer.run(stop.clone()));
    let mut sent = 0;
    let mut progressed = Instant::now();
    let outcome = loop {
        let now_sent = counted_sent(&mut watcher, alert_id).await?;
        if now_sent >= expected {
            break Ok(started.elapsed());
        }
        if now_sent > sent {
            sent = now_sent;
            progressed = Instant::now();
        } else if progressed.elapsed() > STALL_LIMIT {
            break Err(anyhow::anyhow!(
                "the mailer stalled at {sent} of {expected} messages sent"
            ));
        }
        tokio::select! {
            ended = &mut running => {
                let ended = ended.context("the mailer panicked")?;
                return Err(match ended {
                    Ok(report) => anyhow::anyhow!("the mailer stopped early: {report:?}"),
                    Err(e) => anyhow::anyhow!("the mailer failed: {e}"),
                });
            }
            () = tokio::time::sleep(POLL_EVERY) => {}
        }
    };
    stop.cancel();
    let report = running.await.context("the mailer panicked")??;
    let sent = sent_rows(&mut watcher, alert_id).await?;
    watcher.close().await?;
    Ok((outcome?, report, sent))
}

/// The alert's pre-aggregated sent counter: one row, where counting the
/// send log while it grows would take CPU from the mailer being measured.
async fn counted_sent(conn: &mut SqliteConnection, alert_id: &str) -> anyhow::Result<u64> {
    let count: Option<i64> =
        sqlx::query_scalar("SELECT sent FROM alert_send_counts WHERE alert_id = ?1")
            .bind(alert_id)
            .fetch_optional(conn)
            .await
            .context("reading the alert's sent counter")?;
    Ok(u64::try_from(count.unwrap_or(0))?)
}

/// The send log's sent rows, counted once after the run as a check of the
/// counter the run was timed by.
async fn sent_rows(conn: &mut SqliteConnection, alert_id: &str) -> anyhow::Result<u64> {
    let count: i64 =
        sqlx::query_scalar("SELECT count(*) FROM send_log WHERE alert_id = ?1 AND state = 'sent'")
            .bind(alert_id)
            .fetch_one(conn)
            .await
            .context("counting sent rows")?;
    Ok(u64::try_from(count)?)
}

/// A Postfix test program, from PATH or where distributions put it.
fn find_postfix_tool(name: &str) -> anyhow::Result<PathBuf> {
    let from_path = std::env::var_os("PATH")
        .map(|paths| std::env::split_paths(&paths).collect::<Vec<_>>())
        .unwrap_or_default();
    from_path
        .into_iter()
        .chain(["/usr/sbin", "/usr/local/sbin"].map(PathBuf::from))
        .map(|dir| dir.join(name))
        .find(|path| path.is_file())
        .with_context(|| {
            format!(
                "{name} was not found in PATH, /usr/sbin or /usr/local/sbin; it comes with \
                 Postfix (apt-get install postfix)"
            )
        })
}

/// A running `smtp-sink`, counting what it receives into a file.
struct Sink {
    child: Child,
    port: u16,
    counters: PathBuf,
}

impl Sink {
    async fn start(program: &Path, dir: &Path) -> anyhow::Result<Sink> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let counters = dir.join("smtp-sink.out");
        let out = std::fs::File::create(&counters)?;
        let mut command = Command::new(program);
        // smtp-sink refuses to run as root without a user to switch to.
        if effective_uid_is_root() {
            command.args(["-u", "nobody"]);
        }
        let mut child = command
            .arg("-c")
            .arg(format!("127.0.0.1:{port}"))
            .arg(SINK_BACKLOG)
            .stdin(Stdio::null())
            .stdout(out)
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .with_context(|| format!("cannot start {}", program.display()))?;
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            if let Some(status) = child.try_wait()? {
                anyhow::bail!("smtp-sink exited at once ({status}); is port {port} taken?");
            }
            if tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_ok()
            {
                break;
            }
            anyhow::ensure!(
                Instant::now() < deadline,
                "smtp-sink did not listen on port {port} within 5 s"
            );
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        Ok(Sink {
            child,
            port,
            counters,
        })
    }

    /// Messages received so far: the last `mesg=` counter the sink printed.
    fn received(&self) -> anyhow::Result<u64> {
        let text = std::fs::read_to_string(&self.counters)?;
        Ok(last_message_count(&text).unwrap_or(0))
    }

    /// Waits until the sink has counted `expected` messages (it prints its
    /// counters as sessions end); returns the count, which is below
    /// `expected` if the grace time ran out.
    async fn wait_for_count(&self, expected: u64) -> anyhow::Result<u64> {
        let deadline = Instant::now() + SINK_COUNT_GRACE;
        loop {
            let received = self.received()?;
            if received >= expected || Instant::now() >= deadline {
                return Ok(received);
            }
            tokio::time::sleep(POLL_EVERY).await;
        }
    }

    async fn stop(&mut self) {
        // The sink holds nothing worth a graceful stop; if it is already
        // gone, there is nothing left to do either.
        let _ = self.child.kill().await;
    }
}

/// The message counter of smtp-sink's `-c` output
/// (`sess=3 quit=3 mesg=1200\r`, repeated as it changes).
fn last_message_count(output: &str) -> Option<u64> {
    let start = output.rfind("mesg=")? + "mesg=".len();
    let digits: String = output[start..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect();
    digits.parse().ok()
}

/// User + system CPU time of this process so far, from `/proc/self/stat`
/// (in clock ticks of 1/100 s, Linux's fixed USER_HZ).
fn process_cpu() -> Option<Duration> {
    let stat = std::fs::read_to_string("/proc/self/stat").ok()?;
    // Fields after the command name, which is in parentheses and may
    // hold spaces: state is field 3, utime 14 and stime 15.
    let fields: Vec<&str> = stat[stat.rfind(')')? + 1..].split_whitespace().collect();
    let ticks = |i: usize| fields.get(i)?.parse::<u64>().ok();
    Some(Duration::from_millis((ticks(11)? + ticks(12)?) * 10))
}

fn effective_uid_is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status.lines().find_map(|l| l.strip_prefix("Uid:"))?;
            line.split_whitespace().nth(1).map(|uid| uid == "0")
        })
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn round(ratio: f64) -> DeliveryBenchReport {
        DeliveryBenchReport {
            messages: 1,
            sessions: 1,
            concurrency: 1,
            receive_batch: 1,
            message_bytes: 1,
            setup_secs: 0.0,
            herald_secs: 1.0,
            herald_per_sec: ratio,
            herald_cpu_us_per_message: None,
            source_secs: 1.0,
            source_per_sec: 1.0,
            ratio,
            sink_received_from_herald: 1,
            sink_received_from_source: 1,
            sent_in_send_log: 1,
            mailer_sent: 1,
            mailer_retried: 0,
            mailer_failed: 0,
            possible_duplicates: 0,
        }
    }

    #[test]
    fn the_median_ratio_is_the_middle_round_or_the_mean_of_the_middle_two() {
        let rounds = |ratios: &[f64]| DeliveryRounds(ratios.iter().map(|&r| round(r)).collect());
        assert_eq!(rounds(&[]).median_ratio(), None);
        assert_eq!(rounds(&[0.7]).median_ratio(), Some(0.7));
        assert_eq!(rounds(&[0.9, 0.5, 0.7]).median_ratio(), Some(0.7));
        assert_eq!(rounds(&[1.0, 0.25, 0.75, 0.5]).median_ratio(), Some(0.625));
        let text = rounds(&[0.9, 0.5, 0.7]).to_string();
        assert!(text.contains("round 3 of 3"), "{text}");
        assert!(
            text.contains("per round: 0.90, 0.50, 0.70; median 0.70"),
            "{text}"
        );
    }

    const REQUIRE_VAR: &str = "HERALD_REQUIRE_POSTFIX";

    /// The smoke test needs Postfix's test programs; without them it says
    /// why and passes, unless `HERALD_REQUIRE_POSTFIX=1`.
    fn postfix_available() -> bool {
        match find_postfix_tool("smtp-sink").and(find_postfix_tool("smtp-source")) {
            Ok(_) => true,
            Err(e) if std::env::var(REQUIRE_VAR).as_deref() == Ok("1") => {
                panic!("{REQUIRE_VAR}=1 but {e}")
            }
            Err(e) => {
                eprintln!("skipping the delivery benchmark test: {e}");
                false
            }
        }
    }

    /// Full size when `HERALD_BENCH_FULL=1`; 50 messages otherwise.
    fn options() -> DeliveryBenchOptions {
        if std::env::var("HERALD_BENCH_FULL").as_deref() == Ok("1") {
            DeliveryBenchOptions::default()
        } else {
            DeliveryBenchOptions {
                messages: 50,
                sessions: 4,
                ..DeliveryBenchOptions::default()
            }
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_message_reaches_the_sink_once_from_each_sender() {
        if !postfix_available() {
            return;
        }
        let parent = RunDir::create(None).unwrap();
        let opts = DeliveryBenchOptions {
            dir: Some(parent.path().to_path_buf()),
            ..options()
        };
        let report = run_delivery_bench(opts.clone()).await.unwrap();
        println!("{report}");
        assert_eq!(report.sink_received_from_herald, opts.messages);
        assert_eq!(report.sink_received_from_source, opts.messages);
        assert_eq!(report.sent_in_send_log, opts.messages);
        assert_eq!(report.mailer_sent, opts.messages);
        assert_eq!(report.possible_duplicates, 0);
        assert_eq!(
            report.concurrency,
            opts.sessions as usize * SENDS_PER_SESSION
        );
        // The demo template with its CSS inlined, headers and text part.
        assert!(report.message_bytes > 2_000, "{report:?}");
        assert!(report.herald_per_sec > 0.0 && report.source_per_sec > 0.0);
        assert!(report.to_string().contains("rate ratio herald/smtp-source"));
        assert!(report.herald_cpu_us_per_message.is_some(), "{report:?}");
        assert_eq!(std::fs::read_dir(parent.path()).unwrap().count(), 0);
    }

    #[tokio::test]
    async fn nonsense_options_are_refused_before_any_work() {
        for (opts, needle) in [
            (
                DeliveryBenchOptions {
                    messages: 0,
                    ..DeliveryBenchOptions::default()
                },
                "messages",
            ),
            (
                DeliveryBenchOptions {
                    sessions: 0,
                    ..DeliveryBenchOptions::default()
                },
                "sessions",
            ),
            (
                DeliveryBenchOptions {
                    concurrency: Some(0),
                    ..DeliveryBenchOptions::default()
                },
                "mailer.concurrency",
            ),
            (
                DeliveryBenchOptions {
                    receive_batch: 5_000,
                    ..DeliveryBenchOptions::default()
                },
                "mailer.receive_batch",
            ),
        ] {
            let err = run_delivery_bench(opts).await.unwrap_err().to_string();
            assert!(err.contains(needle), "{err}");
        }
    }

    /// The benchmark's (and the demo's) template goes out assembled, and
    /// exactly as the full render would have it.
    #[test]
    fn the_demo_template_is_assembled_exactly_as_it_renders() {
        use herald_mail::{PreparedAlert, RenderContext, Template, TemplateSource};

        let template = Arc::new(
            Template::compile(&TemplateSource {
                subject: "{{ alert.subject }}".to_owned(),
                html: crate::demo::DEMO_TEMPLATE_HTML.to_owned(),
                text: None,
            })
            .unwrap(),
        );
        let example = RenderContext::example();
        let prepared = PreparedAlert::new(
            template.clone(),
            example.alert.clone(),
            example.brands.clone(),
            example.sales.clone(),
        );
        assert!(prepared.is_fast());
        for first_name in [Some("Ada"), None, Some("O'Brien & <Co>"), Some("Mary Ann")] {
            let mut ctx = example.clone();
            ctx.member.first_name = first_name.map(str::to_owned);
            ctx.unsubscribe_url = format!("{}-{}", ctx.unsubscribe_url, "x".repeat(90));
            assert_eq!(
                prepared.render(&ctx.member, &ctx.unsubscribe_url).unwrap(),
                template.render(&ctx).unwrap(),
                "{first_name:?}"
            );
        }
    }

    #[test]
    fn the_sink_counter_is_read_from_its_last_line() {
        assert_eq!(last_message_count(""), None);
        assert_eq!(last_message_count("sess=1 quit=0 mesg=0\r"), Some(0));
        assert_eq!(
            last_message_count("sess=1 quit=1 mesg=9\rsess=4 quit=4 mesg=1200\r"),
            Some(1200)
        );
        assert_eq!(last_message_count("sess=4 quit=4 mesg=\r"), None);
    }

    #[test]
    fn a_missing_tool_names_the_package() {
        let err = find_postfix_tool("no-such-postfix-tool")
            .unwrap_err()
            .to_string();
        assert!(err.contains("apt-get install postfix"), "{err}");
    }
}
